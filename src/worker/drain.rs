//! `--drain`: whether a worker that claimed nothing and holds nothing is done. Finished unless
//! an event is due (rows another transaction holds locked, which the claim skipped) or leased
//! by another worker: a leased event completes or, if its worker died, comes due when the
//! lease expires. Foreign leases are waited for up to the latest expiry seen the first time,
//! capped at this worker's own `--lease` (a poison row leased until 'infinity', or a year, must
//! not hold a cron run), so live workers extending theirs cannot keep it alive.
//!
//! While it waits (for foreign leases or row-locked due rows), it looks again every
//! [`DrainWatch::recheck_in`] — a few tens of ms, not a poll interval — so that a drain ends
//! within about that long of the other workers' last completion. Completions send no
//! notification (a trigger on every completion would cost every event), and this wait only
//! happens at the very end of a drain, so short re-checks are the cheap honest way. Their
//! cost is bounded: the interval is at least 4 times what the last check took (the check
//! reads the claim index, which right after a big drain still holds the done rows' dead
//! entries: ~25 ms for 100,000 here, less on later looks once they are marked dead), at
//! most 100 ms.
//!
//! Pure: the caller asks the database (`store::remaining_work`) and passes the answer and the
//! time. Each thing waited for is said once, not per poll.

use crate::info;
use crate::store::RemainingWork;
use std::time::{Duration, Instant};

/// A locked-rows wait is said again this often.
const LOCKED_REPORT_EVERY: Duration = Duration::from_secs(30);
/// While waiting, look again this often at the least...
const RECHECK_MIN: Duration = Duration::from_millis(20);
/// ...and at least this many times as long as the last look took (the looks keep at most a
/// fifth of one server connection busy)...
const RECHECK_COST_FACTOR: u32 = 4;
/// ...but never less often than this.
const RECHECK_MAX: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub(super) struct DrainWatch {
    /// Events leased by other workers are waited for until then.
    wait_until: Option<Instant>,
    /// Due rows have been seen unclaimable (row-locked) since then.
    locked_since: Option<Instant>,
    locked_reported_at: Option<Instant>,
    /// Waiting (the last `finished` said no): how long the look took.
    waiting: Option<Duration>,
}

/// What the worker is configured with that the decision needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct DrainLimits {
    pub lease: Duration,
    pub poll_interval: Duration,
}

impl DrainWatch {
    /// Work turned up: a later "nothing due" starts a fresh wait for leases.
    pub fn work_found(&mut self) {
        self.wait_until = None;
        self.waiting = None;
    }

    /// While waiting for other workers' leases or locked rows: when to look again (at most
    /// `poll`). None: not waiting.
    pub fn recheck_in(&self, poll: Duration) -> Option<Duration> {
        self.waiting.map(|took| {
            (took * RECHECK_COST_FACTOR)
                .clamp(RECHECK_MIN, RECHECK_MAX)
                .min(poll)
        })
    }

    /// Like `finished`, noting how long the look at the remaining work took (`took`).
    pub fn finished_after(
        &mut self,
        work: &RemainingWork,
        took: Duration,
        now: Instant,
        limits: DrainLimits,
        claimed_total: u64,
    ) -> bool {
        let done = self.finished(work, now, limits, claimed_total);
        self.waiting = (!done).then_some(took);
        done
    }

    /// True when the drain is over, given what is left (`claimed_total`: for the last line).
    pub fn finished(
        &mut self,
        work: &RemainingWork,
        now: Instant,
        limits: DrainLimits,
        claimed_total: u64,
    ) -> bool {
        if work.due > 0 {
            self.locked(work.due, now);
            return false;
        }
        self.locked_since = None;
        let leased_for = work.leased_for.filter(|_| work.leased > 0);
        let wait_until = match (self.wait_until, leased_for) {
            (Some(t), _) => Some(t),
            (None, Some(secs)) => {
                let t =
                    now + Self::lease_wait(secs, work.leased, limits.lease) + limits.poll_interval;
                self.wait_until = Some(t);
                Some(t)
            }
            (None, None) => None,
        };
        if leased_for.is_some() && wait_until.is_some_and(|t| now < t) {
            return false;
        }
        if work.leased > 0 {
            info!(
                "nothing is due any more ({claimed_total} events claimed by this worker); \
                 {} event(s) still leased by other workers are left to them",
                work.leased
            );
        } else {
            info!("nothing is due any more ({claimed_total} events claimed by this worker)");
        }
        true
    }

    /// Due, yet the claim found nothing: SKIP LOCKED passed over them. Said once it persists
    /// for a second look, then every 30 s.
    fn locked(&mut self, due: i64, now: Instant) {
        let since = *self.locked_since.get_or_insert(now);
        let say = since < now
            && self
                .locked_reported_at
                .is_none_or(|t| now.duration_since(t) >= LOCKED_REPORT_EVERY);
        if say {
            self.locked_reported_at = Some(now);
            info!(
                "{due} due event(s) could not be claimed for {:.1}s: another transaction holds \
                 their rows locked (a long UPDATE or SELECT ... FOR UPDATE?); waiting for it",
                now.duration_since(since).as_secs_f64()
            );
        }
    }

    /// How long to wait for `leased` foreign leases, the longest of which ends in `secs`
    /// (may be NaN or infinite): at most `lease`.
    fn lease_wait(secs: f64, leased: i64, lease: Duration) -> Duration {
        let cap = lease.as_secs_f64();
        let secs = if secs.is_nan() { cap } else { secs.max(0.0) };
        if secs > cap {
            let longest = if secs.is_finite() {
                format!("{secs:.0}s")
            } else {
                "for ever (next_run_at = 'infinity')".to_string()
            };
            info!(
                "nothing due; {leased} event(s) are leased by other workers, the longest for \
                 {longest}: waiting at most --lease ({cap}s) for them"
            );
        } else {
            info!("nothing due; waiting up to {secs:.1}s for {leased} event(s) leased by other workers");
        }
        Duration::from_secs_f64(secs.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DrainLimits = DrainLimits {
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_secs(1),
    };

    fn work(due: i64, leased: i64, leased_for: Option<f64>) -> RemainingWork {
        RemainingWork {
            due,
            leased,
            leased_for,
        }
    }

    #[test]
    fn nothing_left_is_drained() {
        let mut d = DrainWatch::default();
        assert!(d.finished(&work(0, 0, None), Instant::now(), LIMITS, 5));
    }

    #[test]
    fn a_waiting_drain_looks_again_soon_but_not_costly_often() {
        let mut d = DrainWatch::default();
        let t = Instant::now();
        let poll = Duration::from_secs(1);
        assert_eq!(d.recheck_in(poll), None);
        assert!(!d.finished_after(&work(0, 2, Some(10.0)), ms(1), t, LIMITS, 0));
        assert_eq!(d.recheck_in(poll), Some(ms(20)));
        assert!(!d.finished_after(&work(0, 2, Some(10.0)), ms(10), t, LIMITS, 0));
        assert_eq!(d.recheck_in(poll), Some(ms(40)));
        assert_eq!(
            d.recheck_in(ms(30)),
            Some(ms(30)),
            "never later than a poll"
        );
        assert!(!d.finished_after(&work(0, 2, Some(10.0)), ms(80), t, LIMITS, 0));
        assert_eq!(d.recheck_in(poll), Some(ms(100)), "at most 100 ms");
        assert!(d.finished_after(&work(0, 0, None), ms(1), t, LIMITS, 0));
        assert_eq!(d.recheck_in(poll), None);
        assert!(!d.finished_after(&work(1, 0, None), ms(1), t, LIMITS, 0));
        d.work_found();
        assert_eq!(d.recheck_in(poll), None);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn locked_due_rows_are_waited_for() {
        let mut d = DrainWatch::default();
        let t = Instant::now();
        assert!(!d.finished(&work(3, 0, None), t, LIMITS, 0));
        assert!(!d.finished(&work(3, 0, None), t + Duration::from_secs(1), LIMITS, 0));
        assert!(d.finished(&work(0, 0, None), t + Duration::from_secs(2), LIMITS, 0));
    }

    #[test]
    fn foreign_leases_are_waited_for_up_to_the_first_expiry_seen() {
        let mut d = DrainWatch::default();
        let t = Instant::now();
        assert!(!d.finished(&work(0, 2, Some(10.0)), t, LIMITS, 0));
        // Extended meanwhile by their live worker: the first expiry still counts.
        let later = t + Duration::from_secs(10);
        assert!(!d.finished(&work(0, 2, Some(25.0)), later, LIMITS, 0));
        assert!(d.finished(
            &work(0, 2, Some(25.0)),
            later + LIMITS.poll_interval,
            LIMITS,
            0
        ));
        // New work resets the wait.
        d.work_found();
        assert!(!d.finished(&work(0, 1, Some(5.0)), later, LIMITS, 0));
    }

    #[test]
    fn a_lease_for_ever_is_waited_for_at_most_our_lease() {
        for secs in [f64::INFINITY, f64::NAN, 1e9] {
            let mut d = DrainWatch::default();
            let t = Instant::now();
            assert!(!d.finished(&work(0, 1, Some(secs)), t, LIMITS, 0));
            let end = t + LIMITS.lease + LIMITS.poll_interval;
            assert!(!d.finished(
                &work(0, 1, Some(secs)),
                end - Duration::from_millis(1),
                LIMITS,
                0
            ));
            assert!(d.finished(&work(0, 1, Some(secs)), end, LIMITS, 0));
        }
    }
}
