//! The outbox backlog for `/metrics` (`dispatchbox_outbox_due`, `…_oldest_due_age_seconds`,
//! `…_dead`), queried by the supervisor on a connection of its own, on demand and
//! rate-limited, and whether that works (`…_scrape_success`, `…_last_success_timestamp_seconds`).
//!
//! Why here and not in a worker: the workers' DB threads stay on the claim path only (no
//! extra statement on any worker, however many there are), there is one query per
//! supervisor rather than one per worker, nothing runs when nobody scrapes, and the numbers
//! do not depend on a worker being alive (a crash-looping worker is exactly when the backlog
//! matters). The cost is one more connection, opened at the first scrape and kept.
//!
//! Invariant: a scrape never waits on the database for longer than `WAIT`: the query runs on
//! this module's thread; a scrape that finds the last result older than `FRESH` asks for a
//! new one and waits at most `WAIT`, then shows what is known. The gauges are never stale:
//! a result older than `STALE`, or one that a failed query has followed, is not shown at all
//! (the success gauge says 0 meanwhile). The query runs at most once per `FRESH`, whatever
//! the scrape rate.

use super::expose::{Backlog, BacklogView};
use crate::config::{Config, Table};
use crate::connect::{Attempt, Connector};
use crate::error::{describe_pg, Result};
use crate::{info, store, warn};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

const FRESH: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(1);
/// Three refresh intervals: a result this old means the queries stopped ending (a server
/// that accepts and never answers).
const STALE: Duration = Duration::from_secs(15);
/// Connection attempts and the query's statement timeout.
const DB_LIMIT: Duration = Duration::from_secs(5);

/// The scrapers' side.
pub(crate) struct Poller {
    last: Arc<(Mutex<Last>, Condvar)>,
    ask: Mutex<Sender<()>>,
}

#[derive(Default)]
struct Last {
    /// The last result and when it was taken (also as wall-clock time, for the timestamp).
    values: Option<(Backlog, Instant, SystemTime)>,
    /// When the last query (successful or not) ended.
    tried: Option<Instant>,
    /// The last query that ended failed.
    failed: bool,
}

impl Last {
    /// What a scrape may show of it at `now`.
    fn view(&self, now: Instant) -> BacklogView {
        BacklogView {
            fresh: self
                .values
                .filter(|(_, at, _)| !self.failed && now.saturating_duration_since(*at) < STALE)
                .map(|(v, _, _)| v),
            last_success: self.values.map(|(_, _, wall)| wall),
        }
    }
}

impl Poller {
    /// Starts the querying thread (it connects at the first request).
    pub(crate) fn start(cfg: &Config) -> Result<Poller> {
        let mut connector = cfg.dsn.connector()?;
        connector.cap_attempt_timeout(DB_LIMIT);
        let last: Arc<(Mutex<Last>, Condvar)> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let mut q = Querier {
            connector,
            table: cfg.table.clone(),
            client: None,
            failing: false,
            last: Arc::clone(&last),
        };
        std::thread::Builder::new()
            .name("metrics-backlog".into())
            .spawn(move || q.serve(&rx))?;
        Ok(Poller {
            last,
            ask: Mutex::new(tx),
        })
    }

    /// The backlog for a scrape: fresh if it can be had within `WAIT`.
    pub(crate) fn get(&self) -> BacklogView {
        let (lock, cond) = &*self.last;
        let asked = Instant::now();
        let mut last = lock_ignoring_poison(lock);
        if last.tried.is_none_or(|t| t.elapsed() >= FRESH) {
            if let Ok(tx) = self.ask.lock() {
                let _ = tx.send(());
            }
            while last.tried.is_none_or(|t| t < asked) {
                let left = WAIT.saturating_sub(asked.elapsed());
                if left.is_zero() {
                    break;
                }
                last = match cond.wait_timeout(last, left) {
                    Ok((g, _)) => g,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
        }
        last.view(Instant::now())
    }
}

fn lock_ignoring_poison(m: &Mutex<Last>) -> MutexGuard<'_, Last> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The querying thread's side.
struct Querier {
    connector: Connector,
    table: Table,
    client: Option<postgres::Client>,
    /// The last query failed (warned once per streak).
    failing: bool,
    last: Arc<(Mutex<Last>, Condvar)>,
}

impl Querier {
    fn serve(&mut self, asks: &Receiver<()>) {
        while asks.recv().is_ok() {
            while asks.try_recv().is_ok() {}
            let recent = lock_ignoring_poison(&self.last.0)
                .tried
                .is_some_and(|t| t.elapsed() < FRESH);
            if !recent {
                let got = self.query();
                let mut last = lock_ignoring_poison(&self.last.0);
                last.failed = got.is_none();
                if let Some(v) = got {
                    last.values = Some((v, Instant::now(), SystemTime::now()));
                }
                last.tried = Some(Instant::now());
            }
            self.last.1.notify_all();
        }
    }

    fn query(&mut self) -> Option<Backlog> {
        let result = self.connect().and_then(|()| {
            let Some(client) = self.client.as_mut() else {
                return Err("not connected".to_string());
            };
            store::backlog(client, &self.table).map_err(|e| {
                self.client = None;
                describe_pg(&e)
            })
        });
        match result {
            Ok(row) => {
                if std::mem::take(&mut self.failing) {
                    info!("metrics: the backlog query works again");
                }
                Some(Backlog {
                    due: row.due,
                    oldest_due_age: row.oldest_due_age,
                    dead: row.dead,
                })
            }
            Err(why) => {
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(
                        "metrics: cannot query the outbox backlog ({why}); its gauges are left \
                         out and dispatchbox_outbox_scrape_success is 0 until it works"
                    );
                }
                None
            }
        }
    }

    fn connect(&mut self) -> std::result::Result<(), String> {
        if self.client.is_none() {
            let mut client = match self.connector.poll(self.connector.attempt_limit()) {
                Attempt::Done(Ok(c)) => c,
                Attempt::Done(Err(e)) => return Err(describe_pg(&e)),
                Attempt::Pending => return Err("no answer from the server".into()),
            };
            store::session_settings(&mut client, DB_LIMIT).map_err(|e| describe_pg(&e))?;
            self.client = Some(client);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_shown_only_while_fresh_and_not_followed_by_a_failure() {
        let t0 = Instant::now();
        let b = Backlog {
            due: 3,
            oldest_due_age: 1.5,
            dead: 2,
        };
        let wall = SystemTime::now();
        let mut last = Last::default();
        assert_eq!(last.view(t0).fresh, None);
        assert_eq!(last.view(t0).last_success, None);
        last.values = Some((b, t0, wall));
        assert_eq!(last.view(t0 + FRESH).fresh, Some(b));
        assert_eq!(last.view(t0 + STALE).fresh, None, "too old");
        last.failed = true;
        let view = last.view(t0 + Duration::from_millis(10));
        assert_eq!(view.fresh, None, "a failed query followed");
        assert_eq!(view.last_success, Some(wall));
    }
}
