//! Wake-ups by notification: a second connection, owned by a small thread of its own, that
//! LISTENs on the table's channel and turns every notification into `Msg::Woken` on the DB
//! thread's inbox. The DB thread keeps a single wait (its inbox, with a deadline), so a stop
//! request, a handler's result, a lease to extend, the poll deadline and a notification all
//! end the same wait, whichever comes first.
//!
//! Why a second connection rather than LISTEN on the DB thread's own: a `postgres::Client`
//! belongs to one thread, and while it blocks in the driver's notification wait nothing else
//! can wake that thread — not a stop request, not a handler's result. Waiting on the driver
//! only while nothing is in flight would still leave stops waiting up to a poll interval
//! (or needing a timer slice that turns the idle wait into a busy one), and a notification
//! that arrives while handlers run would not be seen until they finish. The price is one
//! more connection per worker, idle but for notifications.
//!
//! Invariants: the listener never sends a query after LISTEN (an idle worker's only queries
//! are its polls); polling goes on whatever happens here, so a lost listener costs latency,
//! never events. After every (re)connection it wakes the DB thread once, for whatever was
//! inserted while nobody listened. A lost connection is re-established with backoff.

use super::Msg;
use crate::backoff::reconnect_delay;
use crate::config::{Config, Table};
use crate::connect::{no_answer, Attempt, Connector};
use crate::error::describe_pg;
use crate::store;
use crate::{debug, info, warn};
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting listener looks at its stop flag (it costs no query).
const STOP_CHECK: Duration = Duration::from_secs(2);
/// The longest pause between reconnection attempts.
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// The running listener; dropping it tells the thread to end (it is not joined: it ends at
/// its next look at the flag, or with the process).
pub(super) struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the listener thread. `None` (logged): no thread could be started; polling only.
pub(super) fn spawn(cfg: &Config, tx: Sender<Msg>) -> Option<Listener> {
    let connector = match cfg.dsn.connector() {
        Ok(mut c) => {
            c.cap_attempt_timeout(cfg.connect_timeout);
            c
        }
        Err(e) => {
            warn!("cannot set up the LISTEN connection ({e}); waking by polling only");
            return None;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let run = Run {
        connector,
        table: cfg.table.clone(),
        poll: cfg.poll_interval,
        tx,
        stop: stop.clone(),
    };
    match std::thread::Builder::new()
        .name("listen".into())
        .spawn(move || run.run())
    {
        Ok(_) => Some(Listener { stop }),
        Err(e) => {
            warn!("cannot start the LISTEN thread ({e}); waking by polling only");
            None
        }
    }
}

struct Run {
    connector: Connector,
    table: Table,
    poll: Duration,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
}

/// Why a listening session ended.
enum SessionEnd {
    /// Told to stop, or the DB thread is gone.
    Stop,
    Lost(String),
}

impl Run {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(self) {
        let mut rng = fastrand::Rng::new();
        let (mut failures, mut was_lost) = (0u32, false);
        while !self.stopping() {
            let why = match self.open() {
                Ok(mut client) => {
                    if was_lost {
                        info!("LISTEN connection re-established: waking on notifications again");
                    } else {
                        debug!(
                            "listening on channel {}",
                            store::notify_channel(&self.table)
                        );
                    }
                    failures = 0;
                    // Whatever was inserted while nobody listened.
                    if self.tx.send(Msg::Woken).is_err() {
                        return;
                    }
                    match self.listen(&mut client) {
                        SessionEnd::Stop => return,
                        SessionEnd::Lost(why) => why,
                    }
                }
                Err(why) => why,
            };
            if self.stopping() {
                return;
            }
            failures += 1;
            if failures == 1 {
                warn!(
                    "LISTEN connection lost or refused ({why}); waking by polling (every {}s) \
                     until it is back",
                    self.poll.as_secs_f64()
                );
            }
            was_lost = true;
            self.pause(reconnect_delay(failures, RECONNECT_CAP, &mut rng));
        }
    }

    /// Connects and LISTENs.
    fn open(&self) -> Result<postgres::Client, String> {
        let limit = self.connector.attempt_limit();
        let started = std::time::Instant::now();
        let mut client = loop {
            match self.connector.poll(STOP_CHECK.min(limit)) {
                Attempt::Done(Ok(c)) => break c,
                Attempt::Done(Err(e)) => return Err(describe_pg(&e)),
                Attempt::Pending if self.stopping() => return Err("stopping".into()),
                // The attempt stays in flight; the next call waits for it again.
                Attempt::Pending if started.elapsed() >= limit => return Err(no_answer(limit)),
                Attempt::Pending => {}
            }
        };
        store::listen(&mut client, &self.table).map_err(|e| describe_pg(&e))?;
        Ok(client)
    }

    /// Forwards notifications until the session ends or the thread is told to stop. Those
    /// already buffered together are forwarded as one wake-up.
    fn listen(&self, client: &mut postgres::Client) -> SessionEnd {
        loop {
            let next = client.notifications().timeout_iter(STOP_CHECK).next();
            if self.stopping() {
                return SessionEnd::Stop;
            }
            match next {
                Ok(Some(_)) => {
                    // Take (without waiting) what else has arrived meanwhile.
                    let more = client.notifications().iter().count().unwrap_or(0);
                    if more > 0 {
                        debug!("{} notifications in one wake-up", more + 1);
                    }
                    if self.tx.send(Msg::Woken).is_err() {
                        return SessionEnd::Stop;
                    }
                }
                Err(e) => return SessionEnd::Lost(describe_pg(&e)),
                Ok(None) if client.is_closed() => {
                    return SessionEnd::Lost("connection closed".into())
                }
                Ok(None) => {}
            }
        }
    }

    /// Sleeps `d`, looking at the stop flag now and then.
    fn pause(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !self.stopping() {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }
}
