//! The DB thread's books: which claims are in flight (id → token, since when, lease lost?),
//! which events are to be released (given back) and after what delay, which results wait to
//! be completed, when leases are extended next, whether a claim may be made now, and when the
//! DB thread must wake up next.
//!
//! Pure code: the caller passes the time, runs the statements and logs; the tests below need
//! no database. The one shared piece is the `LeaseClock`, which the ledger keeps up to date
//! for the handler threads (they ask it before starting an event).
//!
//! Invariants: at most `threads + 2 × batch_size` events are claimed and unfinished (a claim
//! is made only when a whole batch fits, and a second batch only while no event waits for a
//! handler thread of its own: see [`Limits::room_for_a_batch`]); a result or a release leaves
//! the books only after the database accepted it (`results_written`, `released`); a claim
//! leaves `in_flight` once, and only for the token it was claimed with (news about an older
//! claim of the same event is void).

use super::complete::Completer;
use super::defer::Deferrals;
use super::ids::{id_map, IdMap};
use super::lease_clock::LeaseClock;
use super::limits::Limits;
use crate::handler::Outcome;
use std::time::{Duration, Instant};

/// An event claimed by this worker and not finished yet.
struct Held {
    token: i32,
    since: Instant,
    /// Already reported as running unusually long.
    reported: bool,
    /// Handed over alone (a job of its own, waiting for a free handler thread), not with
    /// its claim's other events of a batched or streaming route.
    alone: bool,
    /// An extension found the lease taken over: not extended again, its result not written.
    lost: bool,
}

/// What a handler's result meant for the books.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// Not the claim held now (a result for an older claim of the same event): void.
    Void,
    /// The lease had passed to another worker: the result is not written.
    LeaseLost,
    /// The handler aborted (its destination is gone): the event is to be released, and the
    /// worker stops.
    Aborted(String),
    /// The handler could not try it for a local reason: the event is to be released after a
    /// pause. `warn`: this starts an episode worth a warning.
    Deferred { why: String, warn: bool },
    /// The result waits to be completed.
    Recorded,
}

/// A handler running longer than this is reported (once): it may be stuck, and its event
/// stays leased for as long as it runs.
fn long_running(lease: Duration) -> Duration {
    (lease * 10).max(Duration::from_secs(300))
}

pub(super) struct Ledger<'a> {
    limits: Limits,
    clock: &'a LeaseClock,
    /// Claimed and handed to the pool, no result yet.
    in_flight: IdMap<Held>,
    /// How many of them were handed over alone (`Held::alone`).
    alone: usize,
    /// To be given back: (id, token).
    to_release: Vec<(i64, i32)>,
    results: Completer,
    /// Events handlers gave back for a local reason, and the claim pause that follows.
    deferrals: Deferrals,
    next_extend: Instant,
    /// Nothing was due: do not claim again before this.
    idle_until: Option<Instant>,
    /// Stopping: no claims; running handlers are waited for until then.
    stop_deadline: Option<Instant>,
    claimed_total: u64,
    rng: fastrand::Rng,
}

impl<'a> Ledger<'a> {
    pub fn new(limits: Limits, clock: &'a LeaseClock, now: Instant) -> Ledger<'a> {
        Ledger {
            limits,
            clock,
            in_flight: id_map(),
            alone: 0,
            to_release: Vec::new(),
            results: Completer::new(limits.max_attempts, limits.backoff),
            deferrals: Deferrals::default(),
            next_extend: now + limits.lease / 3,
            idle_until: None,
            stop_deadline: None,
            claimed_total: 0,
            rng: fastrand::Rng::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn claimed_total(&self) -> u64 {
        self.claimed_total
    }

    /// Results and releases not written yet.
    pub fn unwritten(&self) -> usize {
        self.results.len() + self.to_release.len()
    }

    pub fn results(&self) -> &Completer {
        &self.results
    }

    /// Claimed nothing is unfinished and no result waits (what `--drain` needs to end).
    pub fn holds_nothing(&self) -> bool {
        self.in_flight.is_empty() && self.results.is_empty()
    }

    /// Every result and release was written.
    pub fn all_written(&self) -> bool {
        self.results.is_empty() && self.to_release.is_empty()
    }

    // ---- claim ----

    /// True when a whole batch fits (`Limits::room_for_a_batch`) and nothing holds claims
    /// back (stopping, idle after finding nothing due, paused after deferrals).
    pub fn can_claim(&self, now: Instant) -> bool {
        if self.stop_deadline.is_some()
            || self.idle_until.is_some_and(|t| t > now)
            || self.deferrals.claims_paused(now)
        {
            return false;
        }
        self.limits
            .room_for_a_batch(self.in_flight.len(), self.alone)
    }

    /// A claim returned (before its events are dispatched).
    pub fn claim_returned(&mut self, now: Instant) {
        if self.in_flight.is_empty() {
            self.next_extend = now + self.limits.lease / 3;
        }
    }

    /// A claim found nothing due: do not look again before the poll interval (plus up to
    /// 10 % jitter, so that workers started together do not poll in step), unless woken.
    pub fn nothing_due(&mut self, now: Instant) {
        let jitter = self.limits.poll_interval.mul_f64(self.rng.f64() * 0.1);
        self.idle_until = Some(now + self.limits.poll_interval + jitter);
    }

    /// Do not claim again before `now + d` (unless woken).
    pub fn idle_for(&mut self, now: Instant, d: Duration) {
        self.idle_until = Some(now + d);
    }

    /// A notification says events were inserted: the idle wait is over (a claim is made as
    /// soon as a whole batch fits and claims are not paused).
    pub fn woken(&mut self) {
        self.idle_until = None;
    }

    /// A claimed event goes to the handler threads, `alone` (a job of its own) or with its
    /// claim's other events for a batched or streaming route.
    pub fn dispatched(&mut self, id: i64, token: i32, now: Instant, alone: bool) {
        self.claimed_total += 1;
        let held = Held {
            token,
            since: now,
            reported: false,
            lost: false,
            alone,
        };
        if let Some(old) = self.in_flight.insert(id, held) {
            self.alone -= usize::from(old.alone);
        }
        self.alone += usize::from(alone);
    }

    /// A claimed event no route here takes (the claim filter prevents it normally).
    pub fn unroutable(&mut self, id: i64, token: i32) {
        self.claimed_total += 1;
        self.results.push(
            id,
            token,
            Outcome::Retry("no route for this event type".into()),
        );
    }

    // ---- finish ----

    /// A handler finished the claim (id, token) with `outcome`.
    pub fn finished(&mut self, id: i64, token: i32, outcome: Outcome, now: Instant) -> Finished {
        let lost = self.in_flight.get(&id).is_some_and(|h| h.lost);
        if !self.take(id, token) {
            return Finished::Void;
        }
        if lost {
            return Finished::LeaseLost;
        }
        match outcome {
            Outcome::Abort(why) => {
                self.to_release.push((id, token));
                Finished::Aborted(why)
            }
            Outcome::Defer(why) => {
                let warn = self.deferrals.deferred(id, now, &mut self.rng);
                self.to_release.push((id, token));
                Finished::Deferred { why, warn }
            }
            outcome => {
                if outcome == Outcome::Delivered {
                    self.deferrals.delivered();
                }
                self.results.push(id, token, outcome);
                Finished::Recorded
            }
        }
    }

    /// The claim (id, token) waits for its route (an outage, see `health`): released without
    /// using an attempt, due again after `wait`. False when it is not the claim held now.
    pub fn hold(&mut self, id: i64, token: i32, wait: Duration) -> bool {
        if self.take(id, token) {
            self.deferrals.wait(id, wait);
            self.to_release.push((id, token));
            true
        } else {
            false
        }
    }

    /// The claim (id, token) was not started (stopping, a stale lease, no thread took it):
    /// it is to be released. False when it is not the claim held now.
    pub fn give_back(&mut self, id: i64, token: i32) -> bool {
        if self.take(id, token) {
            self.to_release.push((id, token));
            true
        } else {
            false
        }
    }

    /// Whether (id, token) is the claim held now.
    pub fn holds(&self, id: i64, token: i32) -> bool {
        self.in_flight
            .get(&id)
            .is_some_and(|h| h.token == token && !h.lost)
    }

    /// Removes the claim from `in_flight` if this token is the one held.
    fn take(&mut self, id: i64, token: i32) -> bool {
        if self.in_flight.get(&id).is_some_and(|h| h.token == token) {
            if let Some(h) = self.in_flight.remove(&id) {
                self.alone -= usize::from(h.alone);
            }
            self.clock.forget(id, token);
            true
        } else {
            false
        }
    }

    // ---- complete ----

    /// The results are due to be written on their own now: not when a claim is about to
    /// carry them, and while handlers run only once the oldest has waited its few ms.
    pub fn must_flush(&self, now: Instant) -> bool {
        let stopping = self.stop_deadline.is_some();
        !self.results.is_empty()
            && (stopping || !self.can_claim(now))
            && (stopping
                || self.in_flight.is_empty()
                || self.results.due_at().is_some_and(|t| t <= now))
    }

    /// The results are being sent.
    pub fn sending_results(&mut self) {
        self.results.sending();
    }

    /// The database accepted the results.
    pub fn results_written(&mut self) {
        self.results.clear();
        if self.in_flight.is_empty() {
            // The pipeline is empty: look for work again now rather than after the poll.
            self.idle_until = None;
        }
    }

    // ---- release ----

    pub fn to_release(&self) -> &[(i64, i32)] {
        &self.to_release
    }

    /// Seconds each event in `to_release` waits before it is due again (0: at once).
    pub fn release_delays(&self) -> Vec<f64> {
        self.to_release
            .iter()
            .map(|(id, _)| self.deferrals.delay(*id))
            .collect()
    }

    /// The database accepted the release of `to_release`.
    pub fn released(&mut self) {
        let held = std::mem::take(&mut self.to_release);
        self.deferrals.released(held.iter().map(|(id, _)| *id));
    }

    // ---- extend ----

    pub fn extend_due(&self, now: Instant) -> bool {
        !self.in_flight.is_empty() && self.next_extend <= now
    }

    /// Extend at once (after reconnecting: leases may have run out during the outage).
    pub fn extend_now(&mut self, now: Instant) {
        self.next_extend = now;
    }

    /// The claims to extend: every one in flight whose lease is not known lost.
    pub fn to_extend(&self) -> Vec<(i64, i32)> {
        self.in_flight
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(k, h)| (*k, h.token))
            .collect()
    }

    /// Claims in flight for unusually long, each reported once: (id, token, for how long).
    pub fn overdue(&mut self, now: Instant) -> Vec<(i64, i32, Duration)> {
        let limit = long_running(self.limits.lease);
        let mut late = Vec::new();
        for (id, h) in self.in_flight.iter_mut() {
            let running = now.saturating_duration_since(h.since);
            if !h.reported && running > limit {
                h.reported = true;
                late.push((*id, h.token, running));
            }
        }
        late
    }

    /// An extension of `held`, sent at `sent`, kept the leases of `kept`; the others were
    /// taken over by another worker: returned, and never started or written.
    pub fn extended(
        &mut self,
        held: Vec<(i64, i32)>,
        kept: Vec<i64>,
        sent: Instant,
        now: Instant,
    ) -> Vec<(i64, i32)> {
        self.clock.extended(sent);
        let mut lost = Vec::new();
        if kept.len() < held.len() {
            let kept: std::collections::HashSet<i64> = kept.into_iter().collect();
            lost = held
                .into_iter()
                .filter(|(id, _)| !kept.contains(id))
                .collect();
            for (id, _) in &lost {
                if let Some(h) = self.in_flight.get_mut(id) {
                    h.lost = true;
                }
            }
            self.clock.lost(lost.iter().copied());
        }
        self.next_extend = now + self.limits.lease / 3;
        lost
    }

    // ---- drain, stop ----

    /// `--drain` found nothing due: deferred events may still come due.
    pub fn drain_must_wait(&self, now: Instant) -> bool {
        self.deferrals.drain_must_wait(now)
    }

    pub fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Stop claiming; running handlers are waited for until `deadline` (moved by a second,
    /// more urgent request).
    pub fn stop(&mut self, deadline: Instant) {
        self.stop_deadline = Some(deadline);
    }

    /// Stopping and the wait for running handlers is over.
    pub fn stop_overdue(&self, now: Instant) -> bool {
        self.stop_deadline.is_some_and(|t| t <= now)
    }

    // ---- wake ----

    /// When the DB thread must next act (None: only a message can give it work). `blocked`:
    /// no statement can run before then (disconnected, or pausing after a failed statement).
    pub fn next_wake(&self, now: Instant, blocked: Option<Instant>) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(t) = blocked {
            at(t);
        } else {
            if let Some(t) = self.results.due_at() {
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
            } else if self.stop_deadline.is_none() {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;

    const LEASE: Duration = Duration::from_secs(30);
    const POLL: Duration = Duration::from_millis(500);

    fn limits(threads: usize, batch_size: usize) -> Limits {
        Limits {
            threads,
            batch_size,
            lease: LEASE,
            poll_interval: POLL,
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn claims_only_while_a_whole_batch_fits() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(2, 3), &clock, t);
        assert!(l.can_claim(t));
        for id in 0..3 {
            l.dispatched(id, 1, t, true);
        }
        // 3 of 5 slots used (no batch ahead: one event waits for a thread): 2 free, less
        // than a batch.
        assert!(!l.can_claim(t));
        assert_eq!(l.finished(0, 1, Outcome::Delivered, t), Finished::Recorded);
        assert!(l.can_claim(t), "3 slots free again");
        assert_eq!(l.claimed_total(), 3);

        // Nothing due: idle for the poll interval.
        l.nothing_due(t);
        assert!(!l.can_claim(t + POLL - ms(1)) && l.can_claim(t + POLL + POLL / 10));
        // A notification ends the idle wait.
        l.woken();
        assert!(l.can_claim(t));
        l.nothing_due(t);
        // A stop ends claiming for good.
        l.stop(t + Duration::from_secs(10));
        assert!(!l.can_claim(t + POLL));
    }

    #[test]
    fn a_second_batch_is_claimed_ahead_unless_events_wait_for_a_thread() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        // A batched route: its claim is one job, taken at once.
        let mut l = Ledger::new(limits(2, 3), &clock, t);
        (0..3).for_each(|id| l.dispatched(id, 1, t, false));
        assert!(l.can_claim(t), "the next batch while this one is handled");
        (3..6).for_each(|id| l.dispatched(id, 1, t, false));
        assert!(!l.can_claim(t), "never a third: 6 of 2 + 2 × 3");
        assert_eq!(l.finished(0, 1, Outcome::Delivered, t), Finished::Recorded);
        assert!(l.can_claim(t), "5 in flight, a batch fits in 8");

        // A route with a job per event: 3 events for 2 threads, one waits for a thread.
        let mut l = Ledger::new(limits(2, 3), &clock, t);
        (0..3).for_each(|id| l.dispatched(id, 1, t, true));
        assert!(!l.can_claim(t), "no claim ahead of a queue");
        assert_eq!(l.finished(9, 1, Outcome::Delivered, t), Finished::Void);
        assert!(!l.can_claim(t), "a void result frees nothing");
        assert!(l.give_back(1, 1));
        assert!(l.can_claim(t), "every event left has a thread: claim ahead");
        (3..6).for_each(|id| l.dispatched(id, 1, t, true));
        assert!(!l.can_claim(t));
        // The same event claimed again under a new token replaces the old claim's count.
        l.dispatched(3, 2, t, false);
        assert_eq!(l.finished(3, 1, Outcome::Delivered, t), Finished::Void);
        (0..6).for_each(|id| {
            l.finished(id, 1, Outcome::Delivered, t);
        });
        assert!(l.finished(3, 2, Outcome::Delivered, t) == Finished::Recorded);
        assert_eq!((l.in_flight(), l.alone), (0, 0));
    }

    #[test]
    fn a_result_for_another_token_is_void() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 4), &clock, t);
        l.dispatched(7, 2, t, true);
        assert_eq!(l.finished(7, 1, Outcome::Delivered, t), Finished::Void);
        assert_eq!(l.finished(8, 1, Outcome::Delivered, t), Finished::Void);
        assert!(!l.give_back(7, 3));
        assert_eq!(l.in_flight(), 1);
        assert!(l.results().is_empty());
        assert_eq!(
            l.finished(7, 2, Outcome::Retry("x".into()), t),
            Finished::Recorded
        );
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.results().len(), 1);
        // Once taken, the same claim is void.
        assert_eq!(l.finished(7, 2, Outcome::Delivered, t), Finished::Void);
    }

    #[test]
    fn aborted_and_deferred_events_are_released() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 4), &clock, t);
        for id in 1..=3 {
            l.dispatched(id, 1, t, true);
        }
        assert_eq!(
            l.finished(1, 1, Outcome::Abort("gone".into()), t),
            Finished::Aborted("gone".into())
        );
        assert_eq!(
            l.finished(2, 1, Outcome::Defer("EMFILE".into()), t),
            Finished::Deferred {
                why: "EMFILE".into(),
                warn: true
            }
        );
        assert!(!l.can_claim(t), "claims pause after a deferral");
        assert_eq!(l.to_release(), &[(1, 1), (2, 1)]);
        let delays = l.release_delays();
        assert_eq!(delays[0], 0.0);
        assert!(delays[1] > 0.0);
        assert!(l.results().is_empty() && !l.all_written());
        l.released();
        assert!(l.to_release().is_empty() && l.all_written());
    }

    #[test]
    fn lost_claims_are_not_extended_and_their_results_not_written() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 4), &clock, t);
        l.dispatched(1, 1, t, true);
        l.dispatched(2, 5, t, true);
        assert!(!l.extend_due(t) && l.extend_due(t + LEASE / 3));
        let mut held = l.to_extend();
        held.sort();
        assert_eq!(held, [(1, 1), (2, 5)]);
        let later = t + LEASE / 3;
        let lost = l.extended(held, vec![1], later, later);
        assert_eq!(lost, [(2, 5)]);
        assert!(!l.extend_due(later));
        assert!(l.extend_due(later + LEASE / 3));
        assert_eq!(l.to_extend(), [(1, 1)]);
        // The handler threads are told: a queued job of the lost claim is not started.
        assert!(clock.refuse_start(2, 5, later, later).is_some());
        assert_eq!(
            l.finished(2, 5, Outcome::Delivered, later),
            Finished::LeaseLost
        );
        assert!(l.results().is_empty());
        assert_eq!(clock.refuse_start(2, 5, later, later), None, "forgotten");
    }

    #[test]
    fn unstarted_claims_are_given_back_at_stop() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(1, 3), &clock, t);
        for id in 1..=4 {
            l.dispatched(id, 1, t, true);
        }
        l.stop(t + Duration::from_secs(5));
        assert!(l.stopping() && !l.stop_overdue(t));
        // Three were still queued when the pool closed; the running one finishes.
        for id in 2..=4 {
            assert!(l.give_back(id, 1));
        }
        assert_eq!(l.finished(1, 1, Outcome::Delivered, t), Finished::Recorded);
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.to_release().len(), 3);
        assert_eq!(l.unwritten(), 4);
        assert!(l.must_flush(t), "stopping: results are written at once");
        l.sending_results();
        l.results_written();
        l.released();
        assert!(l.all_written() && l.holds_nothing());
        assert!(l.stop_overdue(t + Duration::from_secs(5)));
    }

    #[test]
    fn results_ride_along_with_a_due_claim() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 2), &clock, t);
        l.dispatched(1, 1, t, true);
        l.dispatched(2, 1, t, true);
        l.finished(1, 1, Outcome::Delivered, t);
        assert!(l.can_claim(t));
        assert!(!l.must_flush(t), "the next claim carries them");
        l.nothing_due(t);
        // Handlers still run: wait for the flush delay.
        assert!(!l.must_flush(t));
        assert!(l.must_flush(t + ms(10)));
        l.finished(2, 1, Outcome::Delivered, t);
        assert!(l.must_flush(t), "nothing in flight: write now");
        l.results_written();
        assert!(
            l.can_claim(t),
            "an empty pipeline looks for work again at once"
        );
    }

    #[test]
    fn next_wake() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 2), &clock, t);
        assert_eq!(l.next_wake(t, None), Some(t), "a claim is due");
        assert_eq!(l.next_wake(t, Some(t + ms(70))), Some(t + ms(70)));
        l.nothing_due(t);
        let idle = l.next_wake(t, None).unwrap();
        assert!(
            idle >= t + POLL && idle <= t + POLL + POLL / 10,
            "jitter: up to 10 %"
        );
        l.dispatched(1, 1, t, true);
        l.dispatched(2, 1, t, true);
        l.dispatched(3, 1, t, true);
        assert_eq!(l.next_wake(t, None), Some(idle));
        l.finished(1, 1, Outcome::Delivered, t);
        let due = l.results().due_at().unwrap();
        assert_eq!(l.next_wake(t, None), Some(due));
        l.results_written();
        assert!(l.give_back(2, 1));
        assert_eq!(l.next_wake(t, None), Some(t), "a release is due");
        l.released();
        l.stop(t + Duration::from_secs(2));
        // Stopping: the extension of the one still running, or the deadline.
        assert_eq!(l.next_wake(t, None), Some(t + Duration::from_secs(2)));
        assert_eq!(
            l.next_wake(t, Some(t + Duration::from_secs(9))),
            Some(t + Duration::from_secs(2))
        );
        // Stopping with nothing held: only the deadline.
        assert!(l.give_back(3, 1));
        l.released();
        assert_eq!(l.next_wake(t, None), Some(t + Duration::from_secs(2)));
    }

    #[test]
    fn long_running_claims_are_reported_once() {
        let clock = LeaseClock::new(LEASE);
        let t = Instant::now();
        let mut l = Ledger::new(limits(4, 2), &clock, t);
        l.dispatched(1, 3, t, true);
        assert!(l.overdue(t + Duration::from_secs(299)).is_empty());
        let late = t + Duration::from_secs(301);
        assert_eq!(l.overdue(late), [(1, 3, Duration::from_secs(301))]);
        assert!(l.overdue(late).is_empty());
    }
}
