//! Metrics and health, served by the supervisor when `--metrics-addr` is given: one HTTP
//! listener for the whole process tree.
//!
//! ```text
//!  worker ──counters report (protocol, ~1/s)──▶ supervisor's report reader ──▶ board
//!  scrape ──▶ http thread ──▶ board snapshot + backlog (own connection) ──▶ expose ──▶ text
//! ```
//! The rooms: `counts` is the value a worker reports (also used by the worker's counting,
//! `worker::counters`); `board` sums the reports per worker slot across restarts and knows
//! readiness; `backlog` queries the outbox backlog on the supervisor's own connection;
//! `expose` writes the Prometheus text format; `http` is HTTP/1.1 as the small server speaks
//! it, `server` its connections.
//!
//! Endpoints: `GET /metrics`, `GET /healthz` (200 while the supervisor runs: about the
//! process tree only), `GET /readyz` (200 when every worker slot runs a child that reported
//! ready and whose last report says its database connection is up, and the supervisor is
//! not stopping; 503 otherwise). `process` reads the `process_*` figures.
//!
//! Invariant: nothing the server does can hold up a worker or the supervisor's loop — workers
//! only write reports to a pipe that a reader thread drains, and the loop only touches the
//! board (a short lock) to say it is stopping.

mod backlog;
pub(crate) mod board;
pub(crate) mod counts;
mod expose;
mod http;
pub(crate) mod process;
mod server;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::info;
use board::Board;
use http::Response;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Binds `--metrics-addr` and serves it on threads of its own. A bind failure (address in
/// use, bad host) is a usage error: exit 2 before any worker starts.
pub(crate) fn start(cfg: &Config, addr: &str, board: &Arc<Board>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::Usage(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let local = listener.local_addr()?;
    let poller = backlog::Poller::start(cfg)?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let board = Arc::clone(board);
    let app = move |path: &str| route(path, &board, &poller, started);
    // Health checks are answered at once, never queued behind scrapes or slow clients.
    server::serve(listener, Arc::new(app), &["/healthz", "/readyz"])?;
    info!("serving metrics on http://{local}/metrics (and /healthz, /readyz)");
    Ok(())
}

fn route(path: &str, board: &Board, poller: &backlog::Poller, started: f64) -> Response {
    match path {
        "/metrics" => {
            let p = expose::Process {
                version: env!("CARGO_PKG_VERSION"),
                start_time: started,
                stats: process::ProcessStats::of_self(),
            };
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: expose::render(&board.snapshot(), poller.get(), &p),
            }
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let snap = board.snapshot();
            let w = snap.workers;
            let offline = if w.disconnected > 0 {
                format!(
                    "; {} without a database connection (for {:.0}s)",
                    w.disconnected,
                    w.disconnected_us as f64 / 1e6
                )
            } else {
                String::new()
            };
            let detail = format!(
                "workers ready {}, starting {}, down {}{offline}{}\n",
                w.ready,
                w.starting,
                w.down,
                if snap.stopping { "; stopping" } else { "" }
            );
            if snap.ready() {
                Response::text(200, format!("ready: {detail}"))
            } else {
                Response::text(503, format!("not ready: {detail}"))
            }
        }
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}
