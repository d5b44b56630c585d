//! One worker process: a DB thread that owns the connection, and a fixed pool of handler
//! threads inside `std::thread::scope`, wired with two `mpsc` channels.
//!
//! ```text
//!  DB thread: claim ──jobs──▶ handler threads ──inbox (results)──▶ DB thread: complete
//!             extend leases of in-flight events, release unstarted ones at shutdown
//! ```
//! Invariants: no transaction is open while a handler runs (every statement autocommits);
//! at most `threads + 2 × batch_size` events (plus the windows of streaming routes, `pipe:`)
//! are claimed and not yet finished, the second batch only while no event waits for a thread
//! of its own, so no event waits in the queue long enough for its lease to matter; results not yet written survive a lost
//! connection; at shutdown unstarted events are released (attempt given back) and all results
//! are written before the process exits.
//!
//! The rooms: this file starts the worker up (connect, check the table, prepare) and wires
//! the scope; `pool` runs the handler threads; `db_thread` is the DB thread's loop, which
//! sequences `ledger` (the books: in flight, to release, to complete, to extend; pure),
//! `link` (the connection: reconnect, transient vs fatal), `round_trips` (one function per
//! statement: complete, release, extend, claim) and `drain` (when `--drain` is done).
//! `listen` forwards the table's notifications to the DB thread (claim at once, not at the
//! next poll), `complete` batches results, `lease_clock` tells handler threads whether a
//! lease is still theirs, `defer` keeps the books on deferred events, `health` on each
//! route's health (up, paused for an outage, probing) and `outage` acts on it, `outcomes` labels how each
//! claim ended (one rule per outcome), `counters` counts those labels per route (the metrics'
//! and the only count), `tally` tells them (the summaries, the dead-event warnings, the exit code).
//!
//! Ending: every ending is a value that `run` returns ([`Ended`] or the error) and the entry
//! point maps to an exit code, with one exception. A scope joins its threads when it ends, and
//! the worker abandons handlers precisely because they may never return (the shutdown deadline
//! passed, or a fatal error came while they ran): leaving the scope then could hang for ever.
//! In that one case `run` calls the entry point's `exit` (a `fn(u8) -> !`), which ends the
//! process with those threads still in it; with no handler running, `Ended::Abandoned` is
//! returned like any other ending. Detached handler threads would let `run` always return,
//! but would give up the scope (threads borrowing the worker's state, joined on every other
//! path) for the sake of the one path on which the process ends anyway.

mod complete;
mod counters;
mod db_thread;
mod defer;
mod drain;
mod health;
mod ids;
mod lease_clock;
mod ledger;
mod limits;
mod link;
mod listen;
mod outage;
mod outcomes;
mod pool;
mod round_trips;
pub(crate) mod tally;

use crate::backoff::reconnect_delay;
use crate::config::{Config, Notify};
use crate::connect::{connect_until, Connector};
use crate::error::{describe_pg, is_read_only, is_transient, read_only_message, Error, Result};
use crate::handler::{Outcome, Router, TypeFilter};
use crate::protocol::Report;
use crate::store::{self, Conn};
use crate::{debug, info, warn};
use db_thread::DbThread;
use lease_clock::LeaseClock;
use link::Link;
use pool::Pool;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Everything the DB thread waits for arrives here.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A handler finished an event.
    Done(Done),
    /// A batch handler finished a claim's events for its route (in claim order).
    Batch(Vec<Done>),
    /// A claimed event that no handler started before shutdown.
    Unstarted { id: i64, token: i32 },
    /// A queued event not started because its lease is lost or expired (see `LeaseClock`).
    Stale {
        id: i64,
        token: i32,
        tag: Tag,
        why: String,
    },
    /// Stop claiming, finish running handlers (bounded), write results, release the rest.
    Stop,
    /// Stop waiting for running handlers.
    StopNow,
    /// A notification: events were inserted (see `listen`). Claim now if a batch fits.
    Woken,
}

/// How a handler finished an event (its type and aggregate: for the log lines about it).
#[derive(Debug)]
pub(crate) struct Done {
    pub id: i64,
    pub token: i32,
    pub tag: Tag,
    pub outcome: Outcome,
    /// How long the handler ran.
    pub took: Duration,
}

/// An event's type and aggregate, carried back to the DB thread for its log lines (whose
/// JSON form names them: `log::EventFields`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tag {
    pub event_type: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
}

impl Tag {
    pub fn of(e: &crate::handler::Event) -> Tag {
        Tag {
            event_type: e.event_type.clone(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
        }
    }

    /// The log fields of event `id`, attempt `token`, with this type and aggregate.
    pub fn fields(&self, id: i64, token: i32) -> crate::log::EventFields<'_> {
        crate::log::EventFields::id(id)
            .event_type(self.event_type.as_deref())
            .aggregate(self.aggregate_type.as_deref(), self.aggregate_id.as_deref())
            .attempt(token)
    }
}

/// How a worker ended (the process exit code follows from it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// `--drain` and nothing was due any more.
    Drained,
    /// Stopped on request, every result written.
    Stopped,
    /// Handlers were left running or results unwritten (said in the log): exit with `code`;
    /// `why` is the error to report to the supervisor when the code is not 0.
    Abandoned { code: u8, why: Option<String> },
}

/// A unique name for this worker incarnation: written to `locked_by` and used as fence.
pub(crate) fn owner_id(index: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:w{index}:{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// After connecting: the session's settings, then refuse a read-only server (a standby, or
/// `default_transaction_read_only`) at once instead of failing on the first write.
pub fn open_session(client: &mut postgres::Client, lease: Duration, what: &str) -> Result<()> {
    let map = |e: postgres::Error| {
        if is_read_only(&e) {
            Error::Database(read_only_message(what))
        } else {
            Error::Postgres(e)
        }
    };
    store::session_settings(client, lease).map_err(map)?;
    if store::is_read_only(client).map_err(map)? {
        return Err(Error::Database(read_only_message(what)));
    }
    Ok(())
}

/// Waits `d` for a stop request on the inbox; true when one came.
fn stop_requested(inbox: &Receiver<Msg>, d: Duration) -> bool {
    match inbox.recv_timeout(d) {
        Ok(Msg::Stop | Msg::StopNow) | Err(RecvTimeoutError::Disconnected) => true,
        Ok(_) | Err(RecvTimeoutError::Timeout) => false,
    }
}

/// Connects, checks the table, reports unrouted types, prepares the statements; says
/// whether to LISTEN (`--notify`, and for `auto` whether the table has the trigger).
/// `Ok(None)`: told to stop meanwhile.
fn start_up(
    cfg: &Config,
    connector: &Connector,
    deadline: Instant,
    filter: &TypeFilter,
    inbox: &Receiver<Msg>,
) -> Result<Option<(Conn, bool)>> {
    let Some(mut client) = connect_until(
        connector,
        deadline,
        &format!("cannot connect to {}", cfg.dsn.redacted()),
        &mut |d| stop_requested(inbox, d),
    )?
    else {
        return Ok(None);
    };
    open_session(
        &mut client,
        cfg.lease,
        &format!("database {}", cfg.dsn.redacted()),
    )?;
    store::check_table(&mut client, &cfg.table)?;
    if cfg.order != crate::config::Order::Unordered
        && !store::has_ordered_index(&mut client, &cfg.table)?
    {
        warn!(
            "--ordered: table {} has no index on (aggregate_type, aggregate_id, id): every \
             claim scans for earlier events; run `dispatchbox migrate --ordered`",
            cfg.table
        );
    }
    if cfg.order == (crate::config::Order::ByAggregate { dead_blocks: true }) {
        let (n, first) = store::held_back(&mut client, &cfg.table, 3)?;
        if let Some(line) = round_trips::held_back_line(n, &first) {
            warn!("{line}");
        }
    }
    match store::unrouted(&mut client, &cfg.table, filter) {
        Ok(list) if !list.is_empty() => {
            let shown: Vec<String> = list.iter().map(|(t, n)| format!("{t} ({n})")).collect();
            warn!(
                "events of types no route here takes are waiting and stay pending for another worker: {}",
                shown.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => debug!("could not list unrouted event types: {e}"),
    }
    match store::never_due(&mut client, &cfg.table) {
        Ok(0) => {}
        Ok(n) => warn!(
            "{n} pending/retry event(s) in {} have next_run_at NULL and will never be due: \
             set next_run_at = now() to have them delivered",
            cfg.table
        ),
        Err(e) => debug!("could not count events without next_run_at: {e}"),
    }
    let listen = match cfg.notify {
        Notify::Off => false,
        Notify::Auto => store::has_notify_trigger(&mut client, &cfg.table).unwrap_or(false),
        Notify::On => {
            if !store::has_notify_trigger(&mut client, &cfg.table).unwrap_or(true) {
                warn!(
                    "--notify on, but table {} has no notify trigger: only NOTIFYs sent by \
                     producers themselves wake this worker; `dispatchbox migrate --notify on` \
                     installs the trigger",
                    cfg.table
                );
            }
            true
        }
    };
    Ok(Some((link::prepare(client, cfg)?, listen)))
}

/// Start-up, retried: a connection lost during start-up (server restarting, backend
/// terminated) is retried like a failed connect, within --connect-timeout. `Ok(None)`: told
/// to stop meanwhile.
fn start(
    cfg: &Config,
    connector: &Connector,
    filter: &TypeFilter,
    inbox: &Receiver<Msg>,
) -> Result<Option<(Conn, bool)>> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let mut rng = fastrand::Rng::new();
    let mut failures = 0;
    loop {
        match start_up(cfg, connector, deadline, filter, inbox) {
            Ok(conn) => return Ok(conn),
            Err(Error::Postgres(e)) if is_transient(&e) && Instant::now() < deadline => {
                failures += 1;
                if failures == 1 {
                    warn!(
                        "connection lost during start-up ({}); retrying",
                        describe_pg(&e)
                    );
                }
                let wait = reconnect_delay(failures, Duration::from_secs(2), &mut rng);
                if stop_requested(inbox, wait) {
                    return Ok(None);
                }
            }
            Err(Error::Postgres(e)) if is_transient(&e) => {
                return Err(Error::Unreachable(format!(
                    "database unreachable during start-up: {}",
                    describe_pg(&e)
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs one worker until it drains (`--drain`) or is told to stop through `inbox`.
/// `tx` is a sender of the same channel, handed to the handler threads. `report` sends a
/// report to the supervisor: `ready` once start-up succeeded (connected, table checked,
/// statements prepared), then `counters` about every second and at the end. `exit` ends the
/// process when handlers are abandoned while still running (see the module header); every
/// other ending is returned.
pub(crate) fn run(
    cfg: &Config,
    router: &Router,
    index: u32,
    tx: Sender<Msg>,
    inbox: Receiver<Msg>,
    report: fn(Report),
    exit: fn(&Ended) -> !,
) -> Result<Ended> {
    let mut connector = cfg.dsn.connector()?;
    connector.cap_attempt_timeout(cfg.connect_timeout);
    let Some((conn, listen)) = start(cfg, &connector, &router.type_filter(), &inbox)? else {
        info!("stopped during start-up");
        return Ok(Ended::Stopped);
    };
    // A drain does not listen: it ends when nothing is due, and it looks again promptly
    // while other workers' leases run out (see `drain`).
    let listen = listen && !cfg.drain;
    let owner = owner_id(index);
    info!(
        "worker ready: table {}, routes {}, batch {}, threads {}, lease {}s, poll {}s{}, \
         owner {owner}",
        cfg.table,
        router.describe(),
        cfg.batch_size,
        cfg.threads,
        cfg.lease.as_secs_f64(),
        cfg.poll_interval.as_secs_f64(),
        if listen { " + notifications" } else { "" }
    );
    report(Report::Ready);

    // Not joined: dropped at the end of `run`, it ends at its next look at the stop flag.
    let _listener = if listen {
        listen::spawn(cfg, tx.clone())
    } else {
        None
    };
    let (jobs, shared) = pool::channel(LeaseClock::new(cfg.lease));
    std::thread::scope(|s| {
        pool::spawn(s, &shared, cfg.threads, &tx)?;
        drop(tx);
        let link = Link::new(cfg, connector, conn);
        let pool = Pool::new(jobs, &shared);
        let mut db =
            DbThread::new(cfg, router, owner, inbox, link, pool, &shared.clock).reporting(report);
        let ended = db.run();
        db.report_counters(true);
        if let Ok(abandoned @ Ended::Abandoned { .. }) = &ended {
            if db.handlers_running() {
                // Leaving the scope would wait for them, maybe for ever.
                exit(abandoned);
            }
        }
        ended
    })
}
