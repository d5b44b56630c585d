//! Which sweep of the primary key `--retain-done` goes on with (for `retain`): pure
//! bookkeeping, the time and the workers' load given; unit-tested.
//!
//! A quick sweep stops at the first row created within the retention (`retain` finds that
//! bound): it reads the old rows only. A full sweep, once per `full_every`, reads the whole
//! table, for rows whose `created_at` is out of id order. A sweep that a pass left unfinished
//! is the next pass's. While the workers are busy (their claims come back full: `pace`),
//! retention goes at its floor's pace, which a full sweep would spend mostly on young rows
//! it cannot remove: so a full sweep is not started then, and one under way is set aside
//! (quick sweeps go on) and resumed where it stopped at the first pass that finds the
//! workers idle.
//!
//! Invariants: at most one sweep is under way and at most one is set aside, and that one is
//! full; a full sweep, once started, is finished (set aside, never dropped) before another
//! starts; full sweeps start at least `full_every` apart (from the start or the resumption of
//! the last one).

use std::time::{Duration, Instant};

/// Where a sweep is: the next span starts after `after`; it ends at `below` (a quick sweep)
/// or at the end of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sweep {
    pub after: i64,
    pub below: i64,
    pub full: bool,
}

impl Sweep {
    /// A quick sweep up to `below` (None: no row is young, the whole table).
    pub(super) fn quick(below: Option<i64>) -> Sweep {
        Sweep {
            after: i64::MIN,
            below: below.unwrap_or(i64::MAX),
            full: false,
        }
    }

    fn full() -> Sweep {
        Sweep {
            after: i64::MIN,
            below: i64::MAX,
            full: true,
        }
    }
}

/// What a pass does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pick {
    /// Go on with this sweep (or start this full one).
    Go(Sweep),
    /// Start a quick sweep (its bound is for the caller to find).
    Quick,
}

#[derive(Debug)]
pub(super) struct Sweeps {
    full_every: Duration,
    /// The sweep under way (a pass stopped before its end).
    current: Option<Sweep>,
    /// A full sweep set aside while the workers are busy.
    parked: Option<Sweep>,
    /// When the last full sweep started or was resumed (None: none yet).
    last_full: Option<Instant>,
}

impl Sweeps {
    pub(super) fn new(full_every: Duration) -> Sweeps {
        Sweeps {
            full_every,
            current: None,
            parked: None,
            last_full: None,
        }
    }

    /// The sweep for a pass starting at `now`, the workers `busy` or not.
    pub(super) fn pick(&mut self, now: Instant, busy: bool) -> Pick {
        if busy && self.current.is_some_and(|s| s.full) {
            self.parked = self.current.take();
        }
        if let Some(s) = self.current.take() {
            return Pick::Go(s);
        }
        if busy {
            return Pick::Quick;
        }
        if let Some(s) = self.parked.take() {
            self.last_full = Some(now);
            return Pick::Go(s);
        }
        let due = self
            .last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= self.full_every);
        if !due {
            return Pick::Quick;
        }
        self.last_full = Some(now);
        Pick::Go(Sweep::full())
    }

    /// A pass stopped `sweep` before its end (its budget, or a failure): the next pass's.
    pub(super) fn stopped(&mut self, sweep: Sweep) {
        self.current = Some(sweep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(600);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn idle_full_sweeps_once_per_interval_and_quick_ones_between() {
        let t0 = Instant::now();
        let mut s = Sweeps::new(EVERY);
        let full = Sweep::full();
        assert_eq!(
            s.pick(t0, false),
            Pick::Go(full),
            "the first pass: a full sweep"
        );
        // It ended within the pass; the next ones are quick until the interval is over.
        assert_eq!(s.pick(at(t0, 10), false), Pick::Quick);
        let quick = Sweep {
            after: 40,
            ..Sweep::quick(Some(99))
        };
        s.stopped(quick);
        assert_eq!(s.pick(at(t0, 20), false), Pick::Go(quick), "resumed");
        assert_eq!(s.pick(at(t0, 600), false), Pick::Go(full));
    }

    #[test]
    fn busy_workers_set_a_full_sweep_aside_until_they_are_idle() {
        let t0 = Instant::now();
        let mut s = Sweeps::new(EVERY);
        // Busy from the start (a drain): no full sweep yet, quick ones.
        assert_eq!(s.pick(t0, true), Pick::Quick);
        let quick = Sweep {
            after: 7,
            ..Sweep::quick(Some(9))
        };
        s.stopped(quick);
        assert_eq!(
            s.pick(at(t0, 10), true),
            Pick::Go(quick),
            "a quick one goes on"
        );
        assert_eq!(s.pick(at(t0, 20), false), Pick::Go(Sweep::full()));
        let half = Sweep {
            after: 5000,
            ..Sweep::full()
        };
        s.stopped(half);
        // The load comes back: set aside, quick sweeps meanwhile, even once another is due.
        assert_eq!(s.pick(at(t0, 30), true), Pick::Quick);
        assert_eq!(s.pick(at(t0, 40), true), Pick::Quick);
        assert_eq!(s.pick(at(t0, 700), true), Pick::Quick);
        // Idle again: the one set aside, where it stopped, before any new one.
        assert_eq!(s.pick(at(t0, 710), false), Pick::Go(half));
        assert_eq!(s.pick(at(t0, 720), false), Pick::Quick, "resumed at 710 s");
        assert_eq!(s.pick(at(t0, 1309), false), Pick::Quick);
        assert_eq!(s.pick(at(t0, 1310), false), Pick::Go(Sweep::full()));
    }
}
