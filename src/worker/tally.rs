//! What became of the events this worker claimed: delivered, retried, dead, released (given
//! back unstarted, attempt not counted) and deferred (given back for a local reason), the
//! one WARN line per event that goes dead, and the INFO summaries (at the end of a drain, and
//! every [`REPORT_EVERY`] in daemon mode when anything happened).
//!
//! The counts are process-wide atomics ([`COUNTS`]: one worker per process) so that other
//! threads can read them (the child's exit code: 6 after a clean end with deaths; metrics).
//! Counted when the verdict is recorded (a handler's result queued for writing, or a claim
//! that found the attempts used up) and when a release was written. Line texts are built by
//! pure functions; the DB thread logs them.

use crate::handler::Outcome;
use crate::store::{Completion, Status};
use crate::{debug, error};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// In daemon mode, a summary of the last interval is logged this often (when anything
/// happened in it), at the first wake-up after the interval.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The running totals of this process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
    deferred: AtomicU64,
}

/// This worker process's counts.
pub(crate) static COUNTS: Counters = Counters {
    delivered: AtomicU64::new(0),
    retried: AtomicU64::new(0),
    dead: AtomicU64::new(0),
    released: AtomicU64::new(0),
    deferred: AtomicU64::new(0),
};

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    pub released: u64,
    pub deferred: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        Counts {
            delivered: self.delivered.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead: self.dead.load(Relaxed),
            released: self.released.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
        }
    }
}

impl Counts {
    fn minus(self, o: Counts) -> Counts {
        Counts {
            delivered: self.delivered - o.delivered,
            retried: self.retried - o.retried,
            dead: self.dead - o.dead,
            released: self.released - o.released,
            deferred: self.deferred - o.deferred,
        }
    }

    /// Events that had an attempt (delivered, failed, or found dead at the claim).
    fn handled(self) -> u64 {
        self.delivered + self.retried + self.dead
    }

    /// `N delivered, M retried, K dead, R released[, D deferred], X events/s over T s`.
    fn describe(self, over: Duration) -> String {
        let secs = over.as_secs_f64();
        let rate = if secs > 0.0 {
            self.handled() as f64 / secs
        } else {
            0.0
        };
        let deferred = if self.deferred > 0 {
            format!(", {} deferred", self.deferred)
        } else {
            String::new()
        };
        format!(
            "{} delivered, {} retried, {} dead, {} released{deferred}, {rate:.0} events/s over {secs:.1} s",
            self.delivered, self.retried, self.dead, self.released
        )
    }
}

/// Who is dead and why, for the WARN line.
pub(crate) struct DeadEvent<'a> {
    pub id: i64,
    pub event_type: Option<&'a str>,
    /// The route target that had it (`stdout`, `exec:...`, a compiled-in handler's name).
    pub route: Option<&'a str>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub reason: &'a str,
}

/// `event 7 (type order.created, route stdout, attempt 3 of 5) is dead: <reason>`.
pub(crate) fn dead_line(d: &DeadEvent<'_>) -> String {
    format!(
        "event {} (type {}, route {}, attempt {} of {}) is dead: {}",
        d.id,
        d.event_type.unwrap_or("-"),
        d.route.unwrap_or("-"),
        d.attempts,
        d.max_attempts,
        d.reason
    )
}

/// The DB thread's view: the counters plus when the last summary was logged.
pub(crate) struct Tally<'a> {
    counters: &'a Counters,
    started: Instant,
    last_report: (Instant, Counts),
}

impl<'a> Tally<'a> {
    pub fn new(counters: &'a Counters, now: Instant) -> Tally<'a> {
        Tally {
            counters,
            started: now,
            last_report: (now, counters.snapshot()),
        }
    }

    /// A handler's result was queued for writing as `c`: counts it, and returns whether it
    /// is dead (the caller logs [`dead_line`]).
    pub fn recorded(&self, c: &Completion) -> bool {
        let n = match c.status {
            Status::Done => &self.counters.delivered,
            Status::Retry => &self.counters.retried,
            Status::Dead => &self.counters.dead,
        };
        n.fetch_add(1, Relaxed);
        c.status == Status::Dead
    }

    /// The claim marked an event dead (its attempts were used up).
    pub fn exhausted(&self) {
        self.counters.dead.fetch_add(1, Relaxed);
    }

    /// A release was written: `released` given back at once, `deferred` after a pause.
    pub fn released(&self, released: u64, deferred: u64) {
        self.counters.released.fetch_add(released, Relaxed);
        self.counters.deferred.fetch_add(deferred, Relaxed);
    }

    /// The drain's summary: `drained: ...` since the worker started.
    pub fn drained(&self, now: Instant) -> String {
        let all = self.counters.snapshot();
        format!("drained: {}", all.describe(now - self.started))
    }

    /// Daemon mode: the last interval's summary, once [`REPORT_EVERY`] has passed since the
    /// last one and anything happened meanwhile.
    pub fn periodic(&mut self, now: Instant) -> Option<String> {
        let (since, before) = self.last_report;
        if now.saturating_duration_since(since) < REPORT_EVERY {
            return None;
        }
        let all = self.counters.snapshot();
        self.last_report = (now, all);
        let d = all.minus(before);
        (d != Counts::default()).then(|| format!("summary: {}", d.describe(now - since)))
    }
}

/// A handler's failed attempt, as it came back: DEBUG (the error is stored in `last_error`),
/// or ERROR for an abort.
pub(super) fn failure_logged(
    outcome: &Outcome,
    id: i64,
    event_type: Option<&str>,
    token: i32,
    about: crate::log::EventFields<'_>,
) {
    use crate::log::Outcome as O;
    let (e, o) = match outcome {
        Outcome::Delivered => return,
        Outcome::Abort(e) => {
            error!(event: about.outcome(O::Abort), "event {id}: {e}; stopping this worker");
            return;
        }
        // Reported as the DB thread decides on it (once per episode).
        Outcome::Defer(_) => return,
        Outcome::Retry(e) | Outcome::RetryAfter(e, _) => (e, O::Retry),
        Outcome::Permanent(e) => (e, O::Permanent),
        Outcome::Unavailable(e, _) => (e, O::Unavailable),
    };
    debug!(
        event: about.outcome(o),
        "event {id} ({}) attempt {token} failed: {e}",
        event_type.unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(id: i64, status: Status) -> Completion {
        Completion {
            id,
            token: 1,
            status,
            delay: 0.0,
            error: None,
        }
    }

    #[test]
    fn counts_and_summaries() {
        let counters = Counters::default();
        let t = Instant::now();
        let mut tally = Tally::new(&counters, t);
        assert!(!tally.recorded(&completion(1, Status::Done)));
        assert!(!tally.recorded(&completion(2, Status::Retry)));
        assert!(tally.recorded(&completion(3, Status::Dead)));
        tally.exhausted();
        tally.released(2, 1);
        let c = counters.snapshot();
        assert_eq!(
            (c.delivered, c.retried, c.dead, c.released, c.deferred),
            (1, 1, 2, 2, 1)
        );
        assert_eq!(
            tally.drained(t + Duration::from_secs(2)),
            "drained: 1 delivered, 1 retried, 2 dead, 2 released, 1 deferred, 2 events/s over 2.0 s"
        );
        assert_eq!(tally.periodic(t + Duration::from_secs(59)), None);
        let line = tally.periodic(t + Duration::from_secs(60)).unwrap();
        assert!(line.starts_with("summary: 1 delivered,"), "{line}");
        // Nothing happened since: no line.
        assert_eq!(tally.periodic(t + Duration::from_secs(130)), None);
        tally.recorded(&completion(4, Status::Done));
        let line = tally.periodic(t + Duration::from_secs(200)).unwrap();
        assert_eq!(
            line,
            "summary: 1 delivered, 0 retried, 0 dead, 0 released, 0 events/s over 70.0 s"
        );
    }

    #[test]
    fn dead_line_names_everything() {
        let d = DeadEvent {
            id: 7,
            event_type: Some("order.created"),
            route: Some("exec:/bin/notify"),
            attempts: 3,
            max_attempts: 5,
            reason: "rejected",
        };
        assert_eq!(
            dead_line(&d),
            "event 7 (type order.created, route exec:/bin/notify, attempt 3 of 5) is dead: rejected"
        );
    }
}
