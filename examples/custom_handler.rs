//! A binary with compiled-in handlers on top of the Dispatchbox library.
//!
//! It is the whole `dispatchbox` command line (supervisor, `--processes`, `migrate`, `stats`,
//! `--route` for the built-in targets) plus these routes:
//! - `demo.ok`     → delivered (prints `handled <id>` on stdout)
//! - `demo.reject` → permanent failure: the event goes straight to `dead`
//! - `demo.flaky`  → fails on the first attempt, succeeds on the next
//! - `demo.panic`  → the handler panics; Dispatchbox records a failed attempt and carries on
//! - `demo.slow`   → takes 20 ms, then prints the event's JSON line (like `stdout`)
//!
//! Build and run: `cargo run --example custom_handler -- --dsn ... --drain`

use dispatchbox::{Event, Handler, Outcome, Pattern, Router};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

/// A handler with state would hold it here (an HTTP client, a connection pool, ...).
struct Demo;

impl Handler for Demo {
    fn handle(&self, event: &Event) -> Outcome {
        match event.event_type.as_deref() {
            Some("demo.ok") => {
                let mut out = std::io::stdout().lock();
                match writeln!(out, "handled {}", event.id).and_then(|_| out.flush()) {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => Outcome::Retry(e.to_string()),
                }
            }
            Some("demo.reject") => Outcome::Permanent("rejected by the demo handler".into()),
            Some("demo.flaky") if event.attempt < 2 => {
                Outcome::Retry("flaky: first try fails".into())
            }
            Some("demo.flaky") => Outcome::Delivered,
            Some("demo.panic") => panic!("demo handler exploded on event {}", event.id),
            Some("demo.slow") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{}", event.to_json_line()).and_then(|_| out.flush()) {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => Outcome::Abort(e.to_string()),
                }
            }
            _ => Outcome::Retry("no demo behaviour for this type".into()),
        }
    }
}

fn main() -> ExitCode {
    let mut routes = Router::new();
    let demo: Arc<dyn Handler> = Arc::new(Demo);
    match Pattern::parse("demo.*") {
        Ok(p) => routes.add(p, "demo", demo),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    dispatchbox::main_with(routes)
}
