//! The DB thread's link to the database: the connection (none during an outage), reconnection
//! with backoff, and what a failed statement means — statement-level (the session is fine:
//! pause, then retry), transient (the connection is gone: reconnect, keep the work), or fatal
//! (the worker ends).
//!
//! Invariant: a statement runs only through [`Link::with`], which runs it only while connected
//! and not pausing, and classifies its failure; work the caller keeps (results, releases) is
//! never dropped here — a lost connection only says how much is kept.

use super::open_session;
use crate::backoff::reconnect_delay;
use crate::config::Config;
use crate::connect::{connect_refusal, no_answer};
use crate::connect::{Attempt, Connector};
use crate::error::{describe_pg, is_read_only, is_transient, read_only_message, Error, Result};
use crate::store::Conn;
use crate::{info, warn};
use postgres::error::SqlState;
use std::time::{Duration, Instant};

/// Prepares this worker's statements on a new connection.
pub(super) fn prepare(client: postgres::Client, cfg: &Config) -> Result<Conn> {
    Conn::prepare_with(client, &cfg.table, cfg.lease, cfg.order, cfg.on_done).map_err(|e| {
        if is_transient(&e) {
            Error::Postgres(e)
        } else {
            Error::Database(format!("cannot prepare statements: {}", describe_pg(&e)))
        }
    })
}

/// A transient error that leaves the session usable: lock or statement timeout, serialization
/// failure, deadlock.
fn is_statement_level(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        [
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(c)
    })
}

pub(super) struct Link<'a> {
    cfg: &'a Config,
    connector: Connector,
    conn: Option<Conn>,
    reconnect_at: Option<Instant>,
    /// When the connection attempt now waited for began (see `reconnect`).
    connecting_since: Option<Instant>,
    outage_since: Option<Instant>,
    failures: u32,
    /// Statement-level failures (timeouts, deadlocks) in a row, for their retry pause.
    statement_failures: u32,
    /// After a statement-level failure: no statement before this.
    retry_at: Option<Instant>,
    /// Statements and connection attempts that failed, for the metrics.
    errors: u64,
    rng: fastrand::Rng,
}

impl<'a> Link<'a> {
    pub fn new(cfg: &'a Config, connector: Connector, conn: Conn) -> Link<'a> {
        Link {
            cfg,
            connector,
            conn: Some(conn),
            reconnect_at: None,
            connecting_since: None,
            outage_since: None,
            failures: 0,
            statement_failures: 0,
            retry_at: None,
            errors: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Statements and connection attempts that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Since when the connection has been down (None: connected).
    pub fn down_since(&self) -> Option<Instant> {
        self.conn
            .is_none()
            .then(|| self.outage_since.unwrap_or_else(Instant::now))
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connected, and not pausing after a statement-level failure.
    pub fn usable(&self, now: Instant) -> bool {
        self.conn.is_some() && self.retry_at.is_none_or(|t| t <= now)
    }

    /// Disconnected, and the pause before the next attempt is over.
    pub fn reconnect_due(&self, now: Instant) -> bool {
        self.conn.is_none() && self.reconnect_at.is_none_or(|t| t <= now)
    }

    /// No statement can run before this (None: one can run now).
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        if self.conn.is_none() {
            Some(self.reconnect_at.unwrap_or(now))
        } else {
            self.retry_at.filter(|t| *t > now)
        }
    }

    /// Runs a statement if connected: `Ok(None)` when not connected or when it failed in a
    /// way worth retrying — a transient failure drops the connection (`unwritten` results
    /// and releases are kept by the caller, and retried after reconnecting); anything else
    /// ends the worker.
    pub fn with<T>(
        &mut self,
        unwritten: usize,
        op: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<Option<T>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let result = op(conn);
        if result.is_err() {
            self.errors += 1;
        }
        match result {
            Ok(v) => {
                self.failures = 0;
                self.statement_failures = 0;
                Ok(Some(v))
            }
            // The statement failed but the session is fine: keep the connection, try again
            // after a pause that grows while the failures go on (a flat pause would livelock a
            // statement that keeps timing out), and say so at the 1st, 2nd, 4th, 8th... failure.
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
                self.lost(&describe_pg(&e), unwritten);
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

    /// Runs a statement if connected, as a last attempt while ending: its failure is not
    /// looked at.
    pub fn last_try<T>(
        &mut self,
        op: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Option<T> {
        self.conn.as_mut().and_then(|c| op(c).ok())
    }

    fn lost(&mut self, why: &str, unwritten: usize) {
        if self.outage_since.is_none() {
            warn!(
                "lost the database connection ({why}); reconnecting, keeping {unwritten} \
                 unwritten result(s)"
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
    /// True when connected again (leases may have run out meanwhile: extend them now).
    pub fn reconnect(&mut self, unwritten: usize) -> Result<bool> {
        let started = *self.connecting_since.get_or_insert_with(Instant::now);
        let limit = self.connector.attempt_limit();
        let why = match self.connector.poll(Duration::from_millis(50)) {
            Attempt::Pending if started.elapsed() < limit => {
                self.reconnect_at = Some(Instant::now());
                return Ok(false);
            }
            Attempt::Pending => no_answer(limit),
            Attempt::Done(Err(e)) => match connect_refusal("cannot reconnect", &e) {
                Some(refusal) => return Err(refusal),
                None => describe_pg(&e),
            },
            Attempt::Done(Ok(client)) => match self.open(client, unwritten) {
                Ok(()) => {
                    self.connecting_since = None;
                    return Ok(true);
                }
                Err(Error::Postgres(e)) if is_transient(&e) => describe_pg(&e),
                Err(e) => return Err(e),
            },
        };
        self.connecting_since = None;
        self.errors += 1;
        self.lost(&why, unwritten);
        let outage = self.outage_since.map(|t| t.elapsed()).unwrap_or_default();
        if self.cfg.drain && outage > self.cfg.connect_timeout {
            return Err(Error::Unreachable(format!(
                "database unreachable for {:.0}s: {why}",
                outage.as_secs_f64()
            )));
        }
        Ok(false)
    }

    /// A new connection: session settings, read-only check, statements.
    fn open(&mut self, mut client: postgres::Client, unwritten: usize) -> Result<()> {
        open_session(&mut client, self.cfg.lease, "cannot reconnect")?;
        self.conn = Some(prepare(client, self.cfg)?);
        self.reconnect_at = None;
        if let Some(since) = self.outage_since.take() {
            info!(
                "reconnected after {:.1}s; writing {unwritten} kept result(s)",
                since.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_level_codes_are_the_drivers_constants() {
        // The codes the strings used to name.
        assert_eq!(SqlState::LOCK_NOT_AVAILABLE.code(), "55P03");
        assert_eq!(SqlState::QUERY_CANCELED.code(), "57014");
        assert_eq!(SqlState::T_R_SERIALIZATION_FAILURE.code(), "40001");
        assert_eq!(SqlState::T_R_DEADLOCK_DETECTED.code(), "40P01");
    }
}
