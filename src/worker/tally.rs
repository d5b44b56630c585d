//! What became of the events this worker claimed, told: the INFO summaries (at the end of a
//! drain, at a clean stop, and every [`REPORT_EVERY`] in daemon mode when anything happened),
//! the one WARN line per event that goes dead, and whether any went dead (the child's exit
//! code: 6 after a clean end with deaths, under `--fail-on-dead`).
//!
//! Nothing is counted here: the figures are [`Totals`] of the per-route counts that
//! `counters` keeps for the metrics, each claim labelled once by `outcomes::label`. So the
//! summary lines, `/metrics` and the exit code always agree. Line texts are built by pure
//! functions; the DB thread logs them.

use crate::handler::Outcome;
use crate::metrics::counts::{Counts, Label};
use crate::{debug, error};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// In daemon mode, a summary of the last interval is logged this often (when anything
/// happened in it), at the first wake-up after the interval.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Events that went dead in this worker process, as of its last `counters` report (one
/// worker per process); read by the child's entry point for its exit code.
static DEAD: AtomicU64 = AtomicU64::new(0);

/// The totals `t` were reported: they are the process's figures from now on.
pub(super) fn publish(t: Totals) {
    DEAD.store(t.dead, Relaxed);
}

/// Whether an event went dead in this worker process (as of its last report).
pub(crate) fn went_dead() -> bool {
    DEAD.load(Relaxed) > 0
}

/// What became of this worker's claims, summed over its routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    pub released: u64,
    pub deferred: u64,
}

impl Totals {
    /// The sums of `c`'s per-route counts.
    pub fn of(c: &Counts) -> Totals {
        let sum = |l: Label| c.routes.values().map(|r| r.count(l)).sum();
        Totals {
            delivered: sum(Label::Delivered),
            retried: sum(Label::Retried),
            dead: sum(Label::Dead),
            released: sum(Label::Released),
            deferred: sum(Label::Deferred),
        }
    }

    fn minus(self, o: Totals) -> Totals {
        Totals {
            delivered: self.delivered.saturating_sub(o.delivered),
            retried: self.retried.saturating_sub(o.retried),
            dead: self.dead.saturating_sub(o.dead),
            released: self.released.saturating_sub(o.released),
            deferred: self.deferred.saturating_sub(o.deferred),
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

/// When the summaries were logged, and the totals they had then.
pub(crate) struct Tally {
    started: Instant,
    last_report: (Instant, Totals),
}

impl Tally {
    pub fn new(now: Instant) -> Tally {
        Tally {
            started: now,
            last_report: (now, Totals::default()),
        }
    }

    /// The drain's summary: `drained: ...` since the worker started (`all`: the totals now).
    pub fn drained(&self, now: Instant, all: Totals) -> String {
        format!("drained: {}", all.describe(now - self.started))
    }

    /// A clean stop's summary: `stopped: ...` since the worker started.
    pub fn stopped(&self, now: Instant, all: Totals) -> String {
        format!("stopped: {}", all.describe(now - self.started))
    }

    /// Daemon mode: the last interval's summary, once [`REPORT_EVERY`] has passed since the
    /// last one and anything happened meanwhile (`all`: the totals now).
    pub fn periodic(&mut self, now: Instant, all: Totals) -> Option<String> {
        let (since, before) = self.last_report;
        if now.saturating_duration_since(since) < REPORT_EVERY {
            return None;
        }
        self.last_report = (now, all);
        let d = all.minus(before);
        (d != Totals::default()).then(|| format!("summary: {}", d.describe(now - since)))
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
    use crate::log::EventOutcome as O;
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

    fn totals(delivered: u64, retried: u64, dead: u64, released: u64, deferred: u64) -> Totals {
        Totals {
            delivered,
            retried,
            dead,
            released,
            deferred,
        }
    }

    #[test]
    fn totals_sum_the_routes() {
        let mut c = Counts::default();
        for (route, l) in [
            ("stdout", Label::Delivered),
            ("stdout", Label::Released),
            ("exec:x", Label::Dead),
            ("exec:x", Label::Retried),
            ("exec:x", Label::Dead),
            ("exec:y", Label::Deferred),
        ] {
            c.count(route, l);
        }
        assert_eq!(Totals::of(&c), totals(1, 1, 2, 1, 1));
    }

    #[test]
    fn summaries() {
        let t = Instant::now();
        let mut tally = Tally::new(t);
        let all = totals(1, 1, 2, 2, 1);
        assert_eq!(
            tally.drained(t + Duration::from_secs(2), all),
            "drained: 1 delivered, 1 retried, 2 dead, 2 released, 1 deferred, 2 events/s over 2.0 s"
        );
        assert_eq!(
            tally.stopped(t + Duration::from_secs(2), all),
            "stopped: 1 delivered, 1 retried, 2 dead, 2 released, 1 deferred, 2 events/s over 2.0 s"
        );
        assert_eq!(tally.periodic(t + Duration::from_secs(59), all), None);
        let line = tally.periodic(t + Duration::from_secs(60), all).unwrap();
        assert!(line.starts_with("summary: 1 delivered,"), "{line}");
        // Nothing happened since: no line.
        assert_eq!(tally.periodic(t + Duration::from_secs(130), all), None);
        let later = totals(2, 1, 2, 2, 1);
        let line = tally.periodic(t + Duration::from_secs(200), later).unwrap();
        assert_eq!(
            line,
            "summary: 1 delivered, 0 retried, 0 dead, 0 released, 0 events/s over 70.0 s"
        );
    }

    #[test]
    fn went_dead_follows_the_last_report() {
        publish(totals(3, 0, 0, 1, 0));
        assert!(!went_dead());
        publish(totals(3, 0, 1, 1, 0));
        assert!(went_dead());
        publish(Totals::default());
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
