//! The worker's books on deferred events. A handler that could not even try an event for a
//! local reason (out of file descriptors, processes or memory) returns `Outcome::Defer`: the
//! event is given back without using an attempt and comes due again after a short pause, and
//! the worker pauses claiming. The pause grows while deferrals go on and is reset by a
//! delivery; one warning per episode (an episode ends with a delivery; at most one warning a
//! minute even if deliveries and deferrals alternate).
//!
//! Pure bookkeeping: the caller passes the time and does the I/O.

use super::ids::IdMap;
use crate::backoff::reconnect_delay;
use std::time::{Duration, Instant};

/// The claim pause (and the deferred event's wait) grows up to this.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// At most one warning this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// `--drain` waits this much longer than the latest deferred event's pause (the release is
/// written a little after the pause was chosen).
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Deferrals {
    /// Deferrals since the last delivery.
    streak: u32,
    /// No claims before this.
    paused_until: Option<Instant>,
    /// When the last deferred event is due again at the latest (for `--drain`).
    due_by: Option<Instant>,
    /// Deferred events whose release is not written yet: id → seconds until due again.
    delays: IdMap<f64>,
    in_episode: bool,
    warned_at: Option<Instant>,
}

impl Deferrals {
    /// Event `id` was deferred at `now`. True when this starts an episode worth a warning.
    pub fn deferred(&mut self, id: i64, now: Instant, rng: &mut fastrand::Rng) -> bool {
        let until = match self.paused_until {
            // Already pausing (the other events of the same wave): wait out the same pause.
            Some(t) if t > now => t,
            // Claims resumed and still fail: a longer pause than the last one.
            _ => {
                self.streak = self.streak.saturating_add(1);
                let t = now + reconnect_delay(self.streak, MAX_PAUSE, rng);
                self.paused_until = Some(t);
                t
            }
        };
        let due = until + DRAIN_MARGIN;
        self.due_by = Some(self.due_by.map_or(due, |t| t.max(due)));
        self.delays
            .insert(id, until.duration_since(now).as_secs_f64().max(0.001));
        let warn = !self.in_episode
            && self
                .warned_at
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        self.in_episode = true;
        if warn {
            self.warned_at = Some(now);
        }
        warn
    }

    /// Event `id` is to be due again after `wait`, without a claim pause (its route is paused,
    /// not the worker).
    pub fn wait(&mut self, id: i64, wait: Duration) {
        self.delays.insert(id, wait.as_secs_f64().max(0.001));
    }

    /// An event was delivered: the shortage is over.
    pub fn delivered(&mut self) {
        self.streak = 0;
        self.in_episode = false;
    }

    /// Claims wait until then (None, or a time already past: claim).
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    pub fn claims_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| t > now)
    }

    /// Seconds the released event `id` waits before it is due again (0: at once).
    pub fn delay(&self, id: i64) -> f64 {
        self.delays.get(&id).copied().unwrap_or(0.0)
    }

    /// These events' releases were written.
    pub fn released(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.delays.remove(&id);
        }
    }

    /// `--drain` found nothing due: deferred events may still come due.
    pub fn drain_must_wait(&self, now: Instant) -> bool {
        self.due_by.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_until_a_delivery_and_warns_once_per_episode() {
        let mut d = Deferrals::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let t0 = Instant::now();
        assert!(!d.claims_paused(t0) && !d.drain_must_wait(t0));
        assert!(d.deferred(1, t0, &mut rng), "the first deferral warns");
        assert!(d.claims_paused(t0) && d.drain_must_wait(t0));
        let first = d.paused_until().unwrap() - t0;
        assert!(first <= Duration::from_millis(100), "{first:?}");
        assert!(d.delay(1) > 0.0 && d.delay(2) == 0.0);
        // The rest of the wave waits out the same pause, without a warning.
        for id in 2..10 {
            assert!(!d.deferred(id, t0, &mut rng), "one warning per episode");
        }
        assert_eq!(d.paused_until().unwrap() - t0, first);
        assert_eq!(d.delay(9), d.delay(1));
        // Claims resumed after each pause and failed again: the pause grows, up to the cap.
        let mut t = t0;
        for id in 10..16 {
            t = d.paused_until().unwrap();
            assert!(!d.claims_paused(t));
            assert!(!d.deferred(id, t, &mut rng));
        }
        let third = Duration::from_millis(200);
        assert!(
            d.paused_until().unwrap() - t > third && d.paused_until().unwrap() - t <= MAX_PAUSE
        );
        assert!(!d.claims_paused(t + MAX_PAUSE));
        assert!(d.drain_must_wait(t) && !d.drain_must_wait(t + MAX_PAUSE + DRAIN_MARGIN));

        d.released([1, 2]);
        assert_eq!(d.delay(1), 0.0);
        assert!(d.delay(3) > 0.0);

        // A delivery ends the episode and resets the pause; warnings stay rate-limited.
        d.delivered();
        let t1 = t + Duration::from_secs(10);
        assert!(!d.deferred(20, t1, &mut rng), "a minute has not passed");
        assert!(d.paused_until().unwrap() - t1 <= Duration::from_millis(100));
        d.delivered();
        let t2 = t0 + WARN_EVERY;
        assert!(t2 > t1 + MAX_PAUSE);
        assert!(
            d.deferred(21, t2, &mut rng),
            "a new episode a minute later warns"
        );
    }
}
