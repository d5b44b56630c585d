//! Connecting: a [`Connector`] runs each attempt on a helper thread with a deadline and keeps
//! at most one attempt in flight; [`connect_until`] retries transient failures until a
//! deadline and fails at once on a refusal (authentication, a read-only server, something
//! that is not PostgreSQL).
//!
//! Invariant: a caller never blocks longer than an attempt's limit on one attempt, and a long
//! outage costs at most one thread and one socket per connector.

use crate::backoff::reconnect_delay;
use crate::error::{classify_connect, describe_pg, read_only_message, ConnectFault, Error, Result};
use crate::warn;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A ready-to-use driver configuration plus, when TLS may be used, its connector, and the
/// connection attempt in flight. Cheap to clone; clones share the attempt in flight.
///
/// The driver's `connect_timeout` bounds only the TCP connect, not the TLS, start-up and
/// authentication exchange that follows: a server that accepts the connection and never
/// answers would block its caller for ever. So each attempt runs on a helper thread and the
/// caller waits for it with a deadline ([`Connector::poll`]). At most one attempt is in flight
/// per connector: while a stuck attempt's thread still waits, the next caller waits on that
/// same attempt (and takes its client if it succeeds after all) instead of starting another,
/// so a long outage costs at most one thread and one socket.
#[derive(Clone)]
pub struct Connector {
    config: postgres::Config,
    /// `None`: sslmode=disable, or only unix sockets: no TLS set-up at all. Otherwise set up
    /// on first use (building a native-tls connector reads the system's CA bundle, ~45 ms).
    tls: Option<crate::dsn::LazyTls>,
    in_flight: Arc<Mutex<Option<InFlight>>>,
}

type Attempted = Result<postgres::Client, postgres::Error>;

struct InFlight {
    result: mpsc::Receiver<Attempted>,
}

/// What [`Connector::poll`] found.
#[allow(clippy::large_enum_variant)] // one per connection attempt, moved once
pub enum Attempt {
    /// The attempt ended: connected, or the driver's error.
    Done(Attempted),
    /// Still connecting (or waiting for a server that accepted the connection and is silent).
    Pending,
}

impl Connector {
    /// `tls`: `None` when no TLS is to be set up at all (sslmode=disable, or only unix
    /// sockets).
    /// The server's NOTICE and WARNING messages on every connection become log lines.
    pub(crate) fn new(mut config: postgres::Config, tls: Option<crate::dsn::LazyTls>) -> Connector {
        config.notice_callback(crate::log::server_notice);
        Connector {
            config,
            tls,
            in_flight: Arc::default(),
        }
    }
    /// Bounds each connection attempt by `limit` (at least a second), so that
    /// `--connect-timeout 2` is not stretched by the 10 s per-attempt default.
    pub fn cap_attempt_timeout(&mut self, limit: Duration) {
        let limit = limit.max(Duration::from_secs(1));
        if self.config.get_connect_timeout().is_none_or(|t| *t > limit) {
            self.config.connect_timeout(limit);
        }
    }

    /// How long one whole attempt (TCP, TLS, start-up, authentication) may take: the DSN's
    /// `connect_timeout` for each host the driver may try, as libpq bounds each host, plus a
    /// second so that a TCP connect that times out is reported as the driver's error.
    pub fn attempt_limit(&self) -> Duration {
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len())
            .max(1) as u32;
        per_host * hosts + Duration::from_secs(1)
    }

    /// Waits up to `wait` for the attempt in flight, starting one if there is none.
    pub fn poll(&self, wait: Duration) -> Attempt {
        let mut slot = match self.in_flight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let attempt = match slot.take() {
            Some(a) => a,
            None => match self.start() {
                Ok(a) => a,
                Err(e) => {
                    // No thread (EAGAIN): connect on this one; unbounded, but still connecting.
                    crate::debug!("cannot start a connection thread ({e}); connecting inline");
                    return Attempt::Done(self.connect_here());
                }
            },
        };
        match attempt.result.recv_timeout(wait) {
            Ok(result) => Attempt::Done(result),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                *slot = Some(attempt);
                Attempt::Pending
            }
            // The thread died without an answer (it panicked): try again on the next call.
            Err(mpsc::RecvTimeoutError::Disconnected) => Attempt::Pending,
        }
    }

    fn start(&self) -> std::io::Result<InFlight> {
        let (tx, rx) = mpsc::channel();
        let me = Connector {
            config: self.config.clone(),
            tls: self.tls.clone(),
            in_flight: Arc::new(Mutex::new(None)),
        };
        std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || {
                // The receiver may be gone (the caller gave up and exited): nothing to do.
                let _ = tx.send(me.connect_here());
            })?;
        Ok(InFlight { result: rx })
    }

    fn connect_here(&self) -> Attempted {
        match &self.tls {
            None => self.config.connect(postgres::NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
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
pub(crate) fn no_answer(limit: Duration) -> String {
    format!(
        "the server accepted the connection but did not answer within {:.0}s",
        limit.as_secs_f64()
    )
}

/// The error for a connection attempt that retrying will not fix, or `None` if it may.
pub(crate) fn connect_refusal(what: &str, e: &postgres::Error) -> Option<Error> {
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
