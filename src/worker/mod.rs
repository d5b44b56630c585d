//! One worker process: a DB thread that owns the connection, and a fixed pool of handler
//! threads inside `std::thread::scope`, wired with two `mpsc` channels.
//!
//! ```text
//!  DB thread: claim ──jobs──▶ handler threads ──inbox (results)──▶ DB thread: complete
//!             extend leases of in-flight events, release unstarted ones at shutdown
//! ```
//! Invariants: no transaction is open while a handler runs (every statement autocommits);
//! at most `threads + batch_size` events are claimed and not yet finished, so no event waits
//! in the queue long enough for its lease to matter; results not yet written survive a lost
//! connection; at shutdown unstarted events are released (attempt given back) and all results
//! are written before the process exits.

use crate::backoff::reconnect_delay;
use crate::complete::Completer;
use crate::config::Config;
use crate::dsn::{Attempt, Connector};
use crate::error::{
    classify_connect, describe_pg, is_read_only, is_transient, read_only_message, ConnectFault,
    Error, Result,
};
use crate::handler::{Event, Handler, Outcome, Router, TypeFilter};
use crate::lease_clock::LeaseClock;
use crate::store::{self, ClaimArgs, Claimed, Conn};
use crate::{debug, error, info, warn};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the DB thread waits for arrives here.
#[derive(Debug)]
pub enum Msg {
    /// A handler finished an event.
    Done {
        id: i64,
        token: i32,
        outcome: Outcome,
    },
    /// A claimed event that no handler started before shutdown.
    Unstarted { id: i64, token: i32 },
    /// A queued event not started because its lease is lost or expired (see `LeaseClock`).
    Stale { id: i64, token: i32, why: String },
    /// Stop claiming, finish running handlers (bounded), write results, release the rest.
    Stop,
    /// Stop waiting for running handlers.
    StopNow,
}

/// How a worker ended (the process exit code follows from it).
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `--drain` and nothing was due any more.
    Drained,
    /// Stopped on request, every result written.
    Stopped,
}

struct Job {
    event: Event,
    token: i32,
    handler: Arc<dyn Handler>,
    /// When the claim that leased it was sent (its lease runs from a later instant).
    claim_sent: Instant,
}

/// A unique name for this worker incarnation: written to `locked_by` and used as fence.
pub fn owner_id(index: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:w{index}:{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Builds the router from compiled-in routes plus `--route`s (`*=stdout` when both are empty).
pub fn build_router(cfg: &Config, compiled: &Router) -> Result<Router> {
    let opts = crate::sink::SinkOptions {
        exec_timeout: cfg.exec_timeout,
        stdout_lock: cfg.stdout_lock.clone(),
    };
    let mut router = compiled.clone();
    let mut routes = cfg.routes.clone();
    if routes.is_empty() && router.is_empty() {
        routes.push(("*".into(), "stdout".into()));
    }
    let from = cfg.route_source;
    for (pattern, target) in &routes {
        let p = crate::handler::Pattern::parse(pattern)
            .map_err(|e| Error::Usage(format!("{from}: {e}")))?;
        if compiled.has(&p) {
            return Err(Error::Usage(format!(
                "{from} {pattern}={target}: this binary has a compiled-in route for `{p}`, \
                 which would take precedence; remove the route or use another pattern"
            )));
        }
        let h = crate::sink::build(target, &opts)
            .map_err(|e| Error::Usage(format!("{from} {pattern}={target}: {e}")))?;
        router.add(p, target.clone(), h);
    }
    Ok(router)
}

/// How one bounded connection attempt ended.
#[allow(clippy::large_enum_variant)] // one per connection attempt, moved once
enum Connected {
    Client(postgres::Client),
    Failed(postgres::Error),
    /// The attempt did not end within the connector's attempt limit: the server accepted the
    /// connection (the driver bounds the TCP connect itself) but did not answer.
    NoAnswer(Duration),
    /// `stop()` said so while waiting.
    Stopped,
}

/// One attempt (or the wait for the one still in flight), bounded by the connector's attempt
/// limit; `stop()` is asked every few tenths of a second.
fn connect_once(connector: &Connector, stop: &mut dyn FnMut() -> bool) -> Connected {
    let limit = connector.attempt_limit();
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Connected::NoAnswer(limit);
        }
        match connector.poll(left.min(Duration::from_millis(100))) {
            Attempt::Done(Ok(c)) => return Connected::Client(c),
            Attempt::Done(Err(e)) => return Connected::Failed(e),
            Attempt::Pending if stop() => return Connected::Stopped,
            Attempt::Pending => {}
        }
    }
}

/// The line for an attempt that got no answer.
fn no_answer(limit: Duration) -> String {
    format!(
        "the server accepted the connection but did not answer within {:.0}s",
        limit.as_secs_f64()
    )
}

/// The error for a connection attempt that retrying will not fix, or `None` if it may.
fn connect_refusal(what: &str, e: &postgres::Error) -> Option<Error> {
    match classify_connect(e) {
        ConnectFault::Transient => None,
        ConnectFault::ReadOnly => Some(Error::Database(read_only_message(what))),
        ConnectFault::NotPostgres => Some(Error::Database(format!(
            "{what}: the server did not answer like a PostgreSQL server (wrong port?): {}",
            describe_pg(e)
        ))),
        ConnectFault::Refused => Some(Error::Database(format!("{what}: {}", describe_pg(e)))),
    }
}

/// Connects, retrying transient failures until `deadline`; authentication and other
/// non-transient refusals fail at once. `pause(d)` waits between attempts and returns true
/// when the wait was cut short by a stop request (then `Ok(None)`); `pause(0)` is also asked
/// while an attempt is waiting for a silent server.
pub fn connect_until(
    connector: &Connector,
    deadline: Instant,
    what: &str,
    pause: &mut dyn FnMut(Duration) -> bool,
) -> Result<Option<postgres::Client>> {
    let mut rng = fastrand::Rng::new();
    let mut failures = 0u32;
    loop {
        let why = match connect_once(connector, &mut || pause(Duration::ZERO)) {
            Connected::Client(c) => return Ok(Some(c)),
            Connected::Stopped => return Ok(None),
            Connected::Failed(e) => {
                if let Some(refusal) = connect_refusal(what, &e) {
                    return Err(refusal);
                }
                describe_pg(&e)
            }
            Connected::NoAnswer(limit) => no_answer(limit),
        };
        failures += 1;
        if failures == 1 {
            warn!("{what}: {why}; retrying");
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Unreachable(format!(
                "{what}: {why} (gave up after {failures} attempt(s))"
            )));
        }
        let wait = reconnect_delay(failures, Duration::from_secs(2), &mut rng);
        if pause(wait.min(deadline - now)) {
            return Ok(None);
        }
    }
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

/// A transient error that leaves the session usable.
fn is_statement_level(e: &postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("55P03" | "57014" | "40001" | "40P01")
    )
}

/// Waits `d` for a stop request on the inbox; true when one came.
fn stop_requested(inbox: &Receiver<Msg>, d: Duration) -> bool {
    match inbox.recv_timeout(d) {
        Ok(Msg::Stop | Msg::StopNow) | Err(RecvTimeoutError::Disconnected) => true,
        Ok(_) | Err(RecvTimeoutError::Timeout) => false,
    }
}

/// Connects, checks the table, reports unrouted types, prepares the statements.
/// `Ok(None)`: told to stop meanwhile.
fn start_up(
    cfg: &Config,
    connector: &Connector,
    deadline: Instant,
    filter: &TypeFilter,
    inbox: &Receiver<Msg>,
) -> Result<Option<Conn>> {
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
    let conn = Conn::prepare(client, &cfg.table, cfg.lease).map_err(|e| {
        if is_transient(&e) {
            Error::Postgres(e)
        } else {
            Error::Database(format!("cannot prepare statements: {}", describe_pg(&e)))
        }
    })?;
    Ok(Some(conn))
}

/// Runs one worker until it drains (`--drain`) or is told to stop through `inbox`.
/// `tx` is a sender of the same channel, handed to the handler threads. `on_ready` is called
/// once start-up succeeded (connected, table checked, statements prepared).
pub fn run(
    cfg: &Config,
    router: &Router,
    index: u32,
    tx: Sender<Msg>,
    inbox: Receiver<Msg>,
    on_ready: &mut dyn FnMut(),
) -> Result<Ended> {
    let mut connector = cfg.dsn.connector()?;
    connector.cap_attempt_timeout(cfg.connect_timeout);
    let deadline = Instant::now() + cfg.connect_timeout;
    let filter = router.type_filter();
    let mut rng = fastrand::Rng::new();
    let mut failures = 0;
    // A connection lost during start-up (server restarting, backend terminated) is retried
    // like a failed connect, within --connect-timeout.
    let conn = loop {
        match start_up(cfg, &connector, deadline, &filter, &inbox) {
            Ok(Some(conn)) => break conn,
            Ok(None) => {
                info!("stopped during start-up");
                return Ok(Ended::Stopped);
            }
            Err(Error::Postgres(e)) if is_transient(&e) && Instant::now() < deadline => {
                failures += 1;
                if failures == 1 {
                    warn!(
                        "connection lost during start-up ({}); retrying",
                        describe_pg(&e)
                    );
                }
                let wait = reconnect_delay(failures, Duration::from_secs(2), &mut rng);
                if stop_requested(&inbox, wait) {
                    info!("stopped during start-up");
                    return Ok(Ended::Stopped);
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
    };
    let owner = owner_id(index);
    info!(
        "worker ready: table {}, routes {}, batch {}, threads {}, lease {}s, owner {owner}",
        cfg.table,
        router.describe(),
        cfg.batch_size,
        cfg.threads,
        cfg.lease.as_secs_f64()
    );
    on_ready();

    let stopping = AtomicBool::new(false);
    let clock = LeaseClock::new(cfg.lease);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Mutex::new(job_rx);

    std::thread::scope(|s| {
        for t in 0..cfg.threads {
            let tx = tx.clone();
            let job_rx = &job_rx;
            let stopping = &stopping;
            let clock = &clock;
            std::thread::Builder::new()
                .name(format!("handler-{t}"))
                .spawn_scoped(s, move || handler_loop(job_rx, tx, stopping, clock))
                .map_err(Error::Io)?;
        }
        drop(tx);
        let mut db = DbThread {
            cfg,
            router,
            filter,
            owner,
            connector,
            conn: Some(conn),
            inbox,
            job_tx: Some(job_tx),
            job_rx: &job_rx,
            stopping: &stopping,
            clock: &clock,
            in_flight: HashMap::new(),
            completer: Completer::new(cfg.max_attempts, cfg.backoff),
            to_release: Vec::new(),
            rng: fastrand::Rng::new(),
            idle_until: None,
            next_extend: Instant::now() + cfg.lease / 3,
            reconnect_at: None,
            connecting_since: None,
            outage_since: None,
            failures: 0,
            statement_failures: 0,
            retry_at: None,
            stop_deadline: None,
            claimed_total: 0,
            drain_wait_until: None,
            drain_notes: DrainNotes::default(),
            batch_sends: 0,
            failure: None,
            deferrals: Default::default(),
        };
        let result = db.run();
        if let Err(e) = &result {
            db.fail_stop(e);
        }
        result
    })
}

fn handler_loop(
    jobs: &Mutex<Receiver<Job>>,
    tx: Sender<Msg>,
    stopping: &AtomicBool,
    clock: &LeaseClock,
) {
    loop {
        // Only one idle thread waits inside recv() at a time; the rest wait for the lock.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        if stopping.load(Ordering::SeqCst) {
            let _ = tx.send(Msg::Unstarted {
                id: job.event.id,
                token: job.token,
            });
            continue;
        }
        // A worker that was stopped (SIGSTOP, a paused VM) must not deliver what another
        // worker has taken over meanwhile.
        if let Some(why) =
            clock.refuse_start(job.event.id, job.token, job.claim_sent, Instant::now())
        {
            let _ = tx.send(Msg::Stale {
                id: job.event.id,
                token: job.token,
                why,
            });
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| job.handler.handle(&job.event)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                Outcome::Retry(format!("handler panicked: {msg}"))
            });
        match &outcome {
            Outcome::Delivered => {}
            Outcome::Abort(e) => error!("event {}: {e}; stopping this worker", job.event.id),
            // The DB thread reports deferrals (once per episode).
            Outcome::Defer(_) => {}
            Outcome::Retry(e) | Outcome::Permanent(e) => debug!(
                "event {} ({}) attempt {} failed: {e}",
                job.event.id,
                job.event.event_type.as_deref().unwrap_or("-"),
                job.token
            ),
        }
        if tx
            .send(Msg::Done {
                id: job.event.id,
                token: job.token,
                outcome,
            })
            .is_err()
        {
            return;
        }
    }
}

/// The worker exits with handlers still running: the `exec:` commands they wait for must not
/// run on (their events will be delivered again once the lease expires).
fn kill_exec_commands() {
    let n = crate::sink::exec::kill_running();
    if n > 0 {
        warn!("killed {n} `exec:` command(s) still running (with their process groups)");
    }
}

/// An event claimed by this worker and not finished yet.
struct Held {
    token: i32,
    since: Instant,
    /// Already reported as running unusually long.
    reported: bool,
    /// An extension found the lease taken over: not extended again, its result not written.
    lost: bool,
}

/// A handler running longer than this is reported (once): it may be stuck, and its event
/// stays leased for as long as it runs.
fn long_running(lease: Duration) -> Duration {
    (lease * 10).max(Duration::from_secs(300))
}

struct DbThread<'a> {
    cfg: &'a Config,
    router: &'a Router,
    filter: TypeFilter,
    owner: String,
    connector: Connector,
    conn: Option<Conn>,
    inbox: Receiver<Msg>,
    job_tx: Option<Sender<Job>>,
    job_rx: &'a Mutex<Receiver<Job>>,
    stopping: &'a AtomicBool,
    clock: &'a LeaseClock,
    /// Claimed and handed to the pool, no result yet: id → token.
    in_flight: HashMap<i64, Held>,
    completer: Completer,
    to_release: Vec<(i64, i32)>,
    rng: fastrand::Rng,
    /// Nothing was due: do not claim again before this.
    idle_until: Option<Instant>,
    next_extend: Instant,
    reconnect_at: Option<Instant>,
    /// When the connection attempt now waited for began (see `reconnect`).
    connecting_since: Option<Instant>,
    outage_since: Option<Instant>,
    failures: u32,
    /// Statement-level failures (timeouts, deadlocks) in a row, for their retry pause.
    statement_failures: u32,
    /// After a statement-level failure: no statement before this.
    retry_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    claimed_total: u64,
    /// `--drain` found nothing due: events leased at that moment are waited for until then.
    drain_wait_until: Option<Instant>,
    drain_notes: DrainNotes,
    /// How often the results now in the completer were sent without an answer (a reply lost
    /// with the connection): above 1, some may have been written already.
    batch_sends: u32,
    /// A handler aborted (its destination is gone): stop, then exit 1 with this message.
    failure: Option<String>,
    /// Events handlers gave back for a local reason, and the claim pause that follows.
    deferrals: crate::defer::Deferrals,
}

/// What a drain has said about what it waits for (each said once, not per poll).
#[derive(Default)]
struct DrainNotes {
    /// Due rows have been seen unclaimable (row-locked) since then.
    locked_since: Option<Instant>,
    locked_reported_at: Option<Instant>,
}

enum Step {
    Continue,
    Finished(Ended),
}

impl DbThread<'_> {
    fn run(&mut self) -> Result<Ended> {
        loop {
            // Absorb everything that has arrived.
            while let Ok(msg) = self.inbox.try_recv() {
                self.absorb(msg);
            }
            if let Step::Finished(e) = self.step()? {
                return Ok(e);
            }
            let wait = self
                .next_wake()
                .map(|t| t.saturating_duration_since(Instant::now()));
            match wait {
                Some(d) if d.is_zero() => {}
                Some(d) => match self.inbox.recv_timeout(d) {
                    Ok(msg) => self.absorb(msg),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Only reachable through the library with every sender dropped.
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(d),
                },
                None => match self.inbox.recv() {
                    Ok(msg) => self.absorb(msg),
                    Err(_) => self.begin_stop(),
                },
            }
        }
    }

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Done { id, token, outcome } => {
                let lost = self.in_flight.get(&id).is_some_and(|h| h.lost);
                if !self.take_in_flight(id, token) {
                    // A result for an older claim of the same event: that claim is void.
                    return;
                }
                if lost {
                    info!(
                        "event {id} (attempt {token}) finished after another worker took its \
                         lease over; its result is not written (the other claim decides)"
                    );
                    return;
                }
                if let Outcome::Abort(why) = outcome {
                    self.to_release.push((id, token));
                    if self.failure.is_none() {
                        self.failure = Some(why);
                    }
                    self.begin_stop();
                } else if let Outcome::Defer(why) = outcome {
                    self.defer(id, token, &why);
                } else {
                    if outcome == Outcome::Delivered {
                        self.deferrals.delivered();
                    }
                    self.completer.push(id, token, outcome);
                }
            }
            Msg::Unstarted { id, token } => {
                if self.take_in_flight(id, token) {
                    self.to_release.push((id, token));
                }
            }
            Msg::Stale { id, token, why } => {
                if self.take_in_flight(id, token) {
                    warn!("event {id} (attempt {token}) not started: {why}; giving it back");
                    // Fenced: a no-op when another worker holds it now.
                    self.to_release.push((id, token));
                }
            }
            Msg::Stop => self.begin_stop(),
            Msg::StopNow => {
                if self.stop_deadline.is_none() {
                    self.begin_stop();
                }
                info!("stopping now: not waiting for running handlers");
                self.stop_deadline = Some(Instant::now());
            }
        }
    }

    /// A handler could not try the event for a local reason: give it back without using an
    /// attempt, due again after a pause during which this worker claims nothing.
    fn defer(&mut self, id: i64, token: i32, why: &str) {
        if self.deferrals.deferred(id, Instant::now(), &mut self.rng) {
            warn!(
                "event {id}: {why}; not the event's fault: giving it back without using an \
                 attempt and pausing claims until deliveries succeed again (further events \
                 deferred meanwhile are logged at debug level)"
            );
        } else {
            debug!("event {id}: {why}; given back without using an attempt");
        }
        self.to_release.push((id, token));
    }

    /// Removes the event from `in_flight` if this claim (id and token) is the one held.
    fn take_in_flight(&mut self, id: i64, token: i32) -> bool {
        if self.in_flight.get(&id).is_some_and(|h| h.token == token) {
            self.in_flight.remove(&id);
            self.clock.forget(id, token);
            true
        } else {
            false
        }
    }

    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        info!(
            "stopping: no new claims; waiting up to {}s for {} claimed event(s) in flight",
            self.cfg.shutdown_timeout.as_secs_f64(),
            self.in_flight.len()
        );
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_deadline = Some(Instant::now() + self.cfg.shutdown_timeout);
        // Take back what no thread has started. If an idle thread holds the lock inside
        // recv(), the queue is empty; threads check `stopping` themselves after recv().
        if let Ok(rx) = self.job_rx.try_lock() {
            while let Ok(job) = rx.try_recv() {
                if self.take_in_flight(job.event.id, job.token) {
                    self.to_release.push((job.event.id, job.token));
                }
            }
        }
        // Idle threads exit once the queue is closed and empty.
        self.job_tx = None;
    }

    /// One pass: keep the connection, write results, extend leases, release, claim.
    fn step(&mut self) -> Result<Step> {
        let now = Instant::now();
        let stopping = self.stop_deadline.is_some();
        if self.conn.is_none() && self.reconnect_at.is_none_or(|t| t <= now) {
            self.reconnect()?;
        }
        if self.usable(now) {
            // When a claim is due now, the results ride along with it instead.
            let must_flush = !self.completer.is_empty()
                && (stopping || !self.can_claim(now))
                && (stopping
                    || self.in_flight.is_empty()
                    || self.completer.due_at().is_some_and(|t| t <= now));
            if must_flush {
                self.db(|w| w.flush())?;
            }
            if self.usable(now) && !self.to_release.is_empty() {
                self.db(|w| w.release())?;
            }
            if self.usable(now) && !self.in_flight.is_empty() && self.next_extend <= now {
                self.db(|w| w.extend())?;
            }
        }

        if stopping {
            let everything_written = self.completer.is_empty() && self.to_release.is_empty();
            if self.in_flight.is_empty() && everything_written {
                if let Some(why) = self.failure.take() {
                    return Err(Error::Other(format!("worker stopped: {why}")));
                }
                info!("stopped cleanly; all results written");
                return Ok(Step::Finished(Ended::Stopped));
            }
            if self.stop_deadline.is_some_and(|t| t <= now)
                && (everything_written || self.conn.is_none())
            {
                self.abandon();
            }
            return Ok(Step::Continue);
        }

        if self.usable(now) && self.can_claim(now) {
            let claimed = self.db(|w| w.claim())?;
            if claimed == Some(0) {
                if self.cfg.drain && self.in_flight.is_empty() && self.completer.is_empty() {
                    if let Some(ended) = self.drain_check(now)? {
                        return Ok(Step::Finished(ended));
                    }
                }
                self.idle_until = Some(now + self.cfg.poll_interval);
            }
        }
        Ok(Step::Continue)
    }

    /// `--drain` claimed nothing and holds nothing. Finished unless an event is due (a retry
    /// that came due meanwhile, or rows another transaction holds locked) or leased by another
    /// worker: a leased event completes or, if its worker died, comes due when the lease
    /// expires. Foreign leases are waited for up to the latest expiry seen the first time,
    /// capped at this worker's own `--lease` (a poison row leased until 'infinity', or a year,
    /// must not hold a cron run), so live workers extending theirs cannot keep it alive.
    fn drain_check(&mut self, now: Instant) -> Result<Option<Ended>> {
        if self.deferrals.drain_must_wait(now) {
            return Ok(None);
        }
        let (table, filter) = (self.cfg.table.clone(), self.filter.clone());
        let Some(work) =
            self.db(|w| store::remaining_work(&mut w.conn().client, &table, &filter))?
        else {
            return Ok(None);
        };
        if work.due > 0 {
            // Due, yet the claim found nothing: SKIP LOCKED passed over them. Said once it
            // persists for a second look, then every 30 s.
            let notes = &mut self.drain_notes;
            let since = *notes.locked_since.get_or_insert(now);
            let say = since < now
                && notes
                    .locked_reported_at
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30));
            if say {
                notes.locked_reported_at = Some(now);
                info!(
                    "{} due event(s) could not be claimed for {:.1}s: another transaction holds \
                     their rows locked (a long UPDATE or SELECT ... FOR UPDATE?); waiting for it",
                    work.due,
                    now.duration_since(since).as_secs_f64()
                );
            }
            return Ok(None);
        }
        self.drain_notes.locked_since = None;
        let leased_for = work.leased_for.filter(|_| work.leased > 0);
        let wait_until = match (self.drain_wait_until, leased_for) {
            (Some(t), _) => Some(t),
            (None, Some(secs)) => {
                let cap = self.cfg.lease.as_secs_f64();
                let secs = if secs.is_nan() { cap } else { secs.max(0.0) };
                if secs > cap {
                    let longest = if secs.is_finite() {
                        format!("{secs:.0}s")
                    } else {
                        "for ever (next_run_at = 'infinity')".to_string()
                    };
                    info!(
                        "nothing due; {} event(s) are leased by other workers, the longest for \
                         {longest}: waiting at most --lease ({cap}s) for them",
                        work.leased
                    );
                } else {
                    info!(
                        "nothing due; waiting up to {secs:.1}s for {} event(s) leased by other \
                         workers",
                        work.leased
                    );
                }
                let t = now + Duration::from_secs_f64(secs.min(cap)) + self.cfg.poll_interval;
                self.drain_wait_until = Some(t);
                Some(t)
            }
            (None, None) => None,
        };
        if leased_for.is_some() && wait_until.is_some_and(|t| now < t) {
            return Ok(None);
        }
        if work.leased > 0 {
            info!(
                "drained: nothing is due any more ({} events claimed by this worker); {} event(s) \
                 still leased by other workers are left to them",
                self.claimed_total, work.leased
            );
        } else {
            info!(
                "drained: nothing is due any more ({} events claimed by this worker)",
                self.claimed_total
            );
        }
        Ok(Some(Ended::Drained))
    }

    /// The worker is ending with an error (a database refusal mid-run): make the handler
    /// threads take nothing new, give back what is queued (best effort), and if handlers are
    /// still running, exit without waiting for them (their events stay leased).
    fn fail_stop(&mut self, e: &Error) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(rx) = self.job_rx.try_lock() {
            while let Ok(job) = rx.try_recv() {
                if self.take_in_flight(job.event.id, job.token) {
                    self.to_release.push((job.event.id, job.token));
                }
            }
        }
        self.job_tx = None;
        if !self.to_release.is_empty() && self.conn.is_some() {
            let _ = self.release();
        }
        if !self.in_flight.is_empty() {
            error!("{e}");
            warn!(
                "exiting with {} handler(s) still running; their events stay leased until the lease expires",
                self.in_flight.len()
            );
            kill_exec_commands();
            std::process::exit(i32::from(e.exit_code()));
        }
    }

    /// The shutdown wait is over but handlers still run: their events stay leased and are
    /// taken over by another worker after the lease expires. Exits the process (the scope
    /// would otherwise join the running handler threads).
    fn abandon(&mut self) -> ! {
        if !self.in_flight.is_empty() {
            warn!(
                "{} handler(s) still running at the shutdown deadline; their events stay leased \
                 and will be retried after the lease ({}s) expires",
                self.in_flight.len(),
                self.cfg.lease.as_secs_f64()
            );
            kill_exec_commands();
        }
        let mut code = crate::error::exit::OK;
        if !self.completer.is_empty() || !self.to_release.is_empty() {
            error!(
                "database unreachable at shutdown: {} result(s) not written; those events \
                 will be delivered again after their lease expires",
                self.completer.len() + self.to_release.len()
            );
            code = crate::error::exit::UNREACHABLE;
        }
        if let Some(why) = self.failure.take() {
            error!("worker stopped: {why}");
            code = crate::error::exit::FAILURE;
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(i32::from(code));
    }

    /// Connected, and not pausing after a statement-level failure.
    fn usable(&self, now: Instant) -> bool {
        self.conn.is_some() && self.retry_at.is_none_or(|t| t <= now)
    }

    fn can_claim(&self, now: Instant) -> bool {
        if self.job_tx.is_none()
            || self.idle_until.is_some_and(|t| t > now)
            || self.deferrals.claims_paused(now)
        {
            return false;
        }
        let limit = self.cfg.threads + self.cfg.batch_size as usize;
        limit - self.in_flight.len().min(limit) >= self.cfg.batch_size as usize
    }

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.conn.is_none() {
            at(self.reconnect_at.unwrap_or(now));
        } else if let Some(t) = self.retry_at.filter(|t| *t > now) {
            at(t);
        } else {
            if let Some(t) = self.completer.due_at() {
                at(t);
            }
            if !self.to_release.is_empty() {
                at(now);
            }
            if !self.in_flight.is_empty() {
                at(self.next_extend);
            }
            if self.stop_deadline.is_none() && self.can_claim(now) {
                at(now);
            } else if self.stop_deadline.is_none() && self.job_tx.is_some() {
                if let Some(t) = self.idle_until {
                    at(t);
                }
                if let Some(t) = self.deferrals.paused_until().filter(|t| *t > now) {
                    at(t);
                }
            }
        }
        if let Some(t) = self.stop_deadline {
            at(t);
        }
        wake
    }

    /// Runs a database operation; a transient failure drops the connection (kept work is
    /// retried after reconnecting), anything else ends the worker.
    fn db<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, postgres::Error>,
    ) -> Result<Option<T>> {
        match op(self) {
            Ok(v) => {
                self.failures = 0;
                self.statement_failures = 0;
                Ok(Some(v))
            }
            // The statement failed but the session is fine (lock or statement timeout,
            // serialization failure, deadlock): keep the connection, try again after a pause
            // that grows while the failures go on (a flat pause would livelock a statement
            // that keeps timing out), and say so at the 1st, 2nd, 4th, 8th... failure.
            Err(e) if !e.is_closed() && is_statement_level(&e) => {
                self.statement_failures += 1;
                let n = self.statement_failures;
                if n.is_power_of_two() {
                    warn!(
                        "statement failed ({}); retrying ({n} in a row)",
                        describe_pg(&e)
                    );
                }
                let pause = reconnect_delay(n, Duration::from_secs(5), &mut self.rng);
                self.retry_at = Some(Instant::now() + pause);
                Ok(None)
            }
            Err(e) if is_transient(&e) => {
                self.lost_connection(&describe_pg(&e));
                Ok(None)
            }
            Err(e) if is_read_only(&e) => Err(Error::Database(read_only_message(
                "database refused a statement",
            ))),
            Err(e) => Err(Error::Database(format!(
                "database refused a statement: {}",
                describe_pg(&e)
            ))),
        }
    }

    fn lost_connection(&mut self, why: &str) {
        if self.outage_since.is_none() {
            warn!(
                "lost the database connection ({why}); reconnecting, keeping {} unwritten result(s)",
                self.completer.len() + self.to_release.len()
            );
            self.outage_since = Some(Instant::now());
        }
        self.conn = None;
        self.failures += 1;
        self.reconnect_at = Some(
            Instant::now() + reconnect_delay(self.failures, Duration::from_secs(5), &mut self.rng),
        );
    }

    /// Advances the reconnection without blocking the loop for long: the attempt runs on the
    /// connector's thread, and while it waits (for a server that accepted the connection and
    /// is silent, say) the loop goes on reading the inbox, so a stop request is seen at once.
    fn reconnect(&mut self) -> Result<()> {
        let started = *self.connecting_since.get_or_insert_with(Instant::now);
        let limit = self.connector.attempt_limit();
        let why = match self.connector.poll(Duration::from_millis(50)) {
            Attempt::Pending if started.elapsed() < limit => {
                self.reconnect_at = Some(Instant::now());
                return Ok(());
            }
            Attempt::Pending => no_answer(limit),
            Attempt::Done(Err(e)) => match connect_refusal("cannot reconnect", &e) {
                Some(refusal) => return Err(refusal),
                None => describe_pg(&e),
            },
            Attempt::Done(Ok(client)) => match self.open(client) {
                Ok(()) => {
                    self.connecting_since = None;
                    return Ok(());
                }
                Err(Error::Postgres(e)) if is_transient(&e) => describe_pg(&e),
                Err(e) => return Err(e),
            },
        };
        self.connecting_since = None;
        self.lost_connection(&why);
        let outage = self.outage_since.map(|t| t.elapsed()).unwrap_or_default();
        if self.cfg.drain && outage > self.cfg.connect_timeout {
            return Err(Error::Unreachable(format!(
                "database unreachable for {:.0}s: {why}",
                outage.as_secs_f64()
            )));
        }
        Ok(())
    }

    /// A new connection: session settings, read-only check, statements.
    fn open(&mut self, mut client: postgres::Client) -> Result<()> {
        open_session(&mut client, self.cfg.lease, "cannot reconnect")?;
        let conn = Conn::prepare(client, &self.cfg.table, self.cfg.lease).map_err(|e| {
            if is_transient(&e) {
                Error::Postgres(e)
            } else {
                Error::Database(format!("cannot prepare statements: {}", describe_pg(&e)))
            }
        })?;
        self.conn = Some(conn);
        self.reconnect_at = None;
        if let Some(since) = self.outage_since.take() {
            info!(
                "reconnected after {:.1}s; writing {} kept result(s)",
                since.elapsed().as_secs_f64(),
                self.completer.len() + self.to_release.len()
            );
        }
        // Leases may have run out during the outage: extend what is still ours now.
        self.next_extend = Instant::now();
        Ok(())
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("called only while connected")
    }

    fn flush(&mut self) -> Result<(), postgres::Error> {
        let owner = self.owner.clone();
        let n = self.completer.len();
        self.batch_sends += 1;
        let written = {
            let batch = self.completer.batch();
            let conn = self.conn.as_mut().expect("called only while connected");
            conn.complete(&owner, batch)?
        };
        self.written(written, n)
    }

    /// The database accepted a batch of `n` results, `written` of which were still ours.
    /// After a lost reply, the rest may simply have been written by the first send: those are
    /// counted and not reported as lost.
    fn written(&mut self, written: u64, n: usize) -> Result<(), postgres::Error> {
        let mut missing = n.saturating_sub(written as usize);
        if missing > 0 && self.batch_sends > 1 {
            let table = self.cfg.table.clone();
            let batch = self.completer.batch();
            let conn = self.conn.as_mut().expect("called only while connected");
            let already = conn.already_written(&table, batch)?;
            let already = usize::try_from(already).unwrap_or(0).min(missing);
            if already > 0 {
                info!(
                    "{already} result(s) had already been written before the connection was \
                     lost (the reply was lost, not the write)"
                );
            }
            missing -= already;
        }
        if missing > 0 {
            warn!(
                "{missing} of {n} result(s) were not applied: the event's lease had passed to \
                 another claim"
            );
        }
        self.batch_sends = 0;
        debug!("wrote {written} result(s)");
        self.completer.clear();
        if self.in_flight.is_empty() {
            // The pipeline is empty: look for work again now rather than after the poll.
            self.idle_until = None;
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), postgres::Error> {
        let owner = self.owner.clone();
        let held = std::mem::take(&mut self.to_release);
        let delays: Vec<f64> = held
            .iter()
            .map(|(id, _)| self.deferrals.delay(*id))
            .collect();
        match self.conn().release(&owner, &held, &delays) {
            Ok(n) => {
                let deferred = delays.iter().filter(|d| **d > 0.0).count();
                if deferred == 0 {
                    info!("released {n} unstarted event(s): claimable again at once");
                } else {
                    debug!("gave back {n} event(s), {deferred} of them deferred");
                }
                self.deferrals.released(held.iter().map(|(id, _)| *id));
                Ok(())
            }
            Err(e) => {
                self.to_release = held;
                Err(e)
            }
        }
    }

    fn extend(&mut self) -> Result<(), postgres::Error> {
        let owner = self.owner.clone();
        let held: Vec<(i64, i32)> = self
            .in_flight
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(k, h)| (*k, h.token))
            .collect();
        let limit = long_running(self.cfg.lease);
        for (id, h) in self.in_flight.iter_mut() {
            if !h.reported && h.since.elapsed() > limit {
                h.reported = true;
                warn!(
                    "event {id} (attempt {}) has been in flight for {:.0}s; its lease is kept \
                     while its handler runs — is the handler stuck?",
                    h.token,
                    h.since.elapsed().as_secs_f64()
                );
            }
        }
        let lease = self.cfg.lease;
        let sent = Instant::now();
        let kept = if held.is_empty() {
            Vec::new()
        } else {
            self.conn().extend(&owner, &held, lease)?
        };
        self.clock.extended(sent);
        debug!("extended the lease of {} in-flight event(s)", kept.len());
        if kept.len() < held.len() {
            let kept: std::collections::HashSet<i64> = kept.into_iter().collect();
            let lost: Vec<(i64, i32)> = held
                .into_iter()
                .filter(|(id, _)| !kept.contains(id))
                .collect();
            for (id, _) in &lost {
                if let Some(h) = self.in_flight.get_mut(id) {
                    h.lost = true;
                }
            }
            warn!(
                "{} in-flight event(s) were taken over by another worker before their lease \
                 could be extended (this worker was cut off longer than --lease); queued ones \
                 will not be started, running ones' results will not be written",
                lost.len()
            );
            self.clock.lost(lost);
        }
        self.next_extend = Instant::now() + lease / 3;
        Ok(())
    }

    /// Claims the next batch; pending results ride along in the same statement.
    fn claim(&mut self) -> Result<usize, postgres::Error> {
        let owner = self.owner.clone();
        let filter = self.filter.clone();
        let args = ClaimArgs {
            n: self.cfg.batch_size,
            lease: self.cfg.lease,
            owner: &owner,
            filter: &filter,
            max_attempts: self.cfg.max_attempts,
        };
        let sent = Instant::now();
        let claimed = if self.completer.is_empty() {
            self.conn().claim(&args)?
        } else {
            let n = self.completer.len();
            self.batch_sends += 1;
            let (written, claimed) = {
                let batch = self.completer.batch();
                let conn = self.conn.as_mut().expect("called only while connected");
                conn.complete_and_claim(batch, &args)?
            };
            self.written(written, n)?;
            claimed
        };
        let count = claimed.len();
        if count > 0 {
            // Work turned up: a later "nothing due" starts a fresh wait for leases.
            self.drain_wait_until = None;
        }
        if self.in_flight.is_empty() {
            self.next_extend = Instant::now() + self.cfg.lease / 3;
        }
        for c in claimed {
            self.dispatch(c, sent);
        }
        if count > 0 {
            debug!("claimed {count} event(s)");
        }
        Ok(count)
    }

    fn dispatch(&mut self, c: Claimed, claim_sent: Instant) {
        if c.exhausted {
            warn!(
                "event {} ({}) is dead: {}",
                c.event.id,
                c.event.event_type.as_deref().unwrap_or("-"),
                c.dead_reason.as_deref().unwrap_or("attempts exhausted")
            );
            return;
        }
        self.claimed_total += 1;
        let Some(handler) = self.router.route(c.event.event_type.as_deref()).cloned() else {
            // The claim filter only takes routed types; this cannot normally happen.
            self.completer.push(
                c.event.id,
                c.token,
                Outcome::Retry("no route for this event type".into()),
            );
            return;
        };
        self.in_flight.insert(
            c.event.id,
            Held {
                token: c.token,
                since: Instant::now(),
                reported: false,
                lost: false,
            },
        );
        let job = Job {
            token: c.token,
            event: c.event,
            handler,
            claim_sent,
        };
        let sent = match &self.job_tx {
            Some(tx) => tx.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        };
        if let Err(job) = sent {
            // No handler thread will take it: give the event back.
            self.in_flight.remove(&job.event.id);
            self.to_release.push((job.event.id, job.token));
        }
    }
}
