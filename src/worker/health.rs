//! Route health: tells a destination outage from a bad event, per route. A route is *up*
//! until [`TRIP`] deliveries in a row end `Unavailable` (connection refused, 503, a broker that
//! is down: the destination, not the event); then it is *paused*: its events wait in the table
//! without using attempts (the claim leaves its types out), and one *probe* event is tried at
//! growing intervals ([`PROBE_FIRST`] doubling to [`PROBE_MAX`], with jitter). Any delivery
//! on the route (the probe's or a straggler's) resumes it at once; any other answer from the
//! destination (a retry, a rejection) does too, since the destination is reachable.
//!
//! A single poison event does not pause its route while other events get through: their
//! deliveries between its failures reset the count, and until the route pauses an
//! `Unavailable` outcome is a failed attempt like a retry, so it goes dead as before. An event
//! that fails alone (nothing else to deliver) cannot be told from an outage: after [`TRIP`]
//! failures the route pauses and the event waits for a probe, not for `dead` (one event during
//! a quiet hour must not die of a broker restart); the next event that gets through resumes the
//! route, and the poison event goes on failing among deliveries.
//!
//! Pure code: the caller passes the time and a random source, and does the logging and the
//! claims. Invariant: a paused route has at most one probe in flight.

use crate::backoff::Backoff;
use std::time::{Duration, Instant};

/// `Unavailable` outcomes in a row that pause a route.
pub(crate) const TRIP: u32 = 5;
/// The first probe comes this long after the pause; the wait doubles up to [`PROBE_MAX`].
pub(crate) const PROBE_FIRST: Duration = Duration::from_secs(1);
pub(crate) const PROBE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Up,
    /// Paused since `since`; the next probe is due at `probe_at`; `round`: probes so far.
    Paused {
        since: Instant,
        probe_at: Instant,
        round: u32,
    },
    /// A probe (event `id`) is in flight.
    Probing {
        since: Instant,
        round: u32,
        id: i64,
    },
}

#[derive(Debug, Clone)]
struct Route {
    state: State,
    /// `Unavailable` outcomes in a row while up (any answer from the destination resets it).
    failures: u32,
    /// Events given back while paused (since the pause).
    held: u64,
    /// Time spent paused before the current pause (seconds).
    paused_before: f64,
}

/// What the caller should log and do.
#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    /// The route just paused (log a WARNING, leave its types out of the claims).
    Paused,
    /// The route is up again after `paused_for`, `held` events having waited meanwhile.
    Resumed { paused_for: Duration, held: u64 },
}

/// What becomes of an event that ended `Unavailable`.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The route is up: a failed attempt, like a retry.
    Charge,
    /// The route is paused: give the event back without using an attempt, due again after
    /// this long (the next probe).
    Hold(Duration),
}

pub(crate) struct Health {
    routes: Vec<Route>,
    rng: fastrand::Rng,
}

impl Health {
    pub fn new(routes: usize) -> Health {
        Health {
            routes: vec![
                Route {
                    state: State::Up,
                    failures: 0,
                    held: 0,
                    paused_before: 0.0,
                };
                routes
            ],
            rng: fastrand::Rng::new(),
        }
    }

    #[cfg(test)]
    fn with_seed(routes: usize, seed: u64) -> Health {
        let mut h = Health::new(routes);
        h.rng = fastrand::Rng::with_seed(seed);
        h
    }

    /// Event `id` of route `r` ended `Unavailable` at `now`.
    pub fn unavailable(&mut self, r: usize, id: i64, now: Instant) -> (Verdict, Option<Change>) {
        let Some(route) = self.routes.get(r) else {
            return (Verdict::Charge, None);
        };
        match route.state.clone() {
            State::Up => {
                let route = &mut self.routes[r];
                route.failures += 1;
                if route.failures < TRIP {
                    return (Verdict::Charge, None);
                }
                route.failures = 0;
                let wait = self.wait(1);
                let route = &mut self.routes[r];
                route.held = 1;
                route.state = State::Paused {
                    since: now,
                    probe_at: now + wait,
                    round: 1,
                };
                (Verdict::Hold(wait), Some(Change::Paused))
            }
            State::Paused { probe_at, .. } => {
                self.routes[r].held += 1;
                (Verdict::Hold(probe_at.saturating_duration_since(now)), None)
            }
            State::Probing {
                since,
                round,
                id: probe,
            } => {
                self.routes[r].held += 1;
                if probe != id {
                    // A straggler: the probe decides.
                    return (Verdict::Hold(self.wait(round)), None);
                }
                let wait = self.wait(round + 1);
                self.routes[r].state = State::Paused {
                    since,
                    probe_at: now + wait,
                    round: round + 1,
                };
                (Verdict::Hold(wait), None)
            }
        }
    }

    /// The destination of route `r` answered (a delivery, or a retry or rejection of the
    /// event itself): it is reachable.
    pub fn answered(&mut self, r: usize, now: Instant) -> Option<Change> {
        let route = self.routes.get_mut(r)?;
        route.failures = 0;
        let since = match route.state {
            State::Up => return None,
            State::Paused { since, .. } | State::Probing { since, .. } => since,
        };
        route.state = State::Up;
        let paused_for = now.saturating_duration_since(since);
        route.paused_before += paused_for.as_secs_f64();
        Some(Change::Resumed {
            paused_for,
            held: std::mem::take(&mut route.held),
        })
    }

    /// Whether an event of route `r` (not the probe) must be given back instead of started,
    /// and after how long.
    pub fn hold(&mut self, r: usize, id: i64, now: Instant) -> Option<Duration> {
        let route = self.routes.get_mut(r)?;
        let wait = match route.state {
            State::Up => return None,
            State::Probing { id: probe, .. } if probe == id => return None,
            State::Paused { probe_at, .. } => probe_at.saturating_duration_since(now),
            State::Probing { round, .. } => {
                route.held += 1;
                return Some(self.wait(round));
            }
        };
        route.held += 1;
        Some(wait.max(Duration::from_millis(100)))
    }

    /// A route whose probe is due, if any.
    pub fn probe_due(&self, now: Instant) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| matches!(r.state, State::Paused { probe_at, .. } if probe_at <= now))
    }

    /// Event `id` of route `r` ended neither delivered nor `Unavailable` (a retry of the
    /// event itself, say): if it was the probe, the next one comes after a longer wait. `id`
    /// -1: the probe claim found only another route's event; the same wait again.
    pub fn probe_ended(&mut self, r: usize, id: i64, now: Instant) {
        let Some(route) = self.routes.get(r) else {
            return;
        };
        let (since, round) = match route.state {
            State::Probing {
                since,
                round,
                id: probe,
            } if probe == id => (since, round + 1),
            State::Paused { since, round, .. } if id == -1 => (since, round),
            _ => return,
        };
        let wait = self.wait(round);
        self.routes[r].state = State::Paused {
            since,
            probe_at: now + wait,
            round,
        };
    }

    /// The probe claim for route `r` took event `id` of that route.
    pub fn probing(&mut self, r: usize, id: i64) {
        if let Some(route) = self.routes.get_mut(r) {
            if let State::Paused { since, round, .. } = route.state {
                route.state = State::Probing { since, round, id };
            }
        }
    }

    /// The probe claim for route `r` found no event of it: nothing waits, so the route is
    /// up again (the next events will tell).
    pub fn nothing_to_probe(&mut self, r: usize, now: Instant) -> Option<Change> {
        self.answered(r, now)
    }

    /// The routes paused or probing (their types are left out of the claims).
    pub fn paused(&self) -> Vec<usize> {
        (0..self.routes.len())
            .filter(|&i| self.routes[i].state != State::Up)
            .collect()
    }

    pub fn is_paused(&self, r: usize) -> bool {
        self.routes.get(r).is_some_and(|r| r.state != State::Up)
    }

    /// The earliest probe due (for the DB thread's sleep).
    pub fn next_probe(&self) -> Option<Instant> {
        self.routes
            .iter()
            .filter_map(|r| match r.state {
                State::Paused { probe_at, .. } => Some(probe_at),
                _ => None,
            })
            .min()
    }

    /// Seconds route `r` has spent paused, the current pause included.
    pub fn paused_seconds(&self, r: usize, now: Instant) -> f64 {
        let Some(route) = self.routes.get(r) else {
            return 0.0;
        };
        let current = match route.state {
            State::Up => 0.0,
            State::Paused { since, .. } | State::Probing { since, .. } => {
                now.saturating_duration_since(since).as_secs_f64()
            }
        };
        route.paused_before + current
    }

    /// The wait before probe number `round`: PROBE_FIRST doubling to PROBE_MAX, ±25 %.
    fn wait(&mut self, round: u32) -> Duration {
        Backoff {
            base: PROBE_FIRST,
            max: PROBE_MAX,
        }
        .delay(round.max(1), &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_run_of_unavailable_pauses_the_route_and_only_then_stops_charging() {
        let mut h = Health::with_seed(2, 1);
        let t = Instant::now();
        for id in 1..TRIP as i64 {
            assert_eq!(h.unavailable(0, id, t), (Verdict::Charge, None));
        }
        let (v, c) = h.unavailable(0, 99, t);
        assert_eq!(c, Some(Change::Paused));
        assert!(matches!(v, Verdict::Hold(d) if d >= S * 3 / 4 && d <= S * 5 / 4));
        assert!(h.is_paused(0) && !h.is_paused(1));
        assert_eq!(h.paused(), vec![0]);
        // The rest of the wave is held, free.
        assert!(matches!(h.unavailable(0, 100, t).0, Verdict::Hold(_)));
        assert!(h.hold(0, 101, t).is_some());
        assert!(h.hold(1, 102, t).is_none(), "other routes flow");
    }

    #[test]
    fn deliveries_between_failures_keep_a_poison_event_from_pausing_its_route() {
        let mut h = Health::with_seed(1, 2);
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(h.unavailable(0, 7, t), (Verdict::Charge, None));
            assert_eq!(h.answered(0, t), None);
        }
        assert!(!h.is_paused(0));
    }

    #[test]
    fn a_lone_event_failing_in_a_row_pauses_its_route_instead_of_going_dead() {
        let mut h = Health::with_seed(1, 5);
        let t = Instant::now();
        for _ in 1..TRIP {
            assert_eq!(h.unavailable(0, 7, t), (Verdict::Charge, None));
        }
        let (v, c) = h.unavailable(0, 7, t);
        assert!(matches!(v, Verdict::Hold(_)) && c == Some(Change::Paused));
    }

    #[test]
    fn probes_come_at_growing_intervals_until_one_succeeds() {
        let mut h = Health::with_seed(1, 3);
        let t0 = Instant::now();
        for id in 0..TRIP as i64 {
            h.unavailable(0, id, t0);
        }
        let mut t = t0;
        let mut waits = Vec::new();
        for round in 0..8 {
            let due = h.next_probe().unwrap();
            assert!(h.probe_due(due - Duration::from_millis(1)).is_none());
            assert_eq!(h.probe_due(due), Some(0));
            waits.push(due - t);
            t = due;
            h.probing(0, 1000 + round);
            assert!(h.next_probe().is_none(), "one probe in flight");
            assert!(h.hold(0, 1000 + round, t).is_none(), "the probe runs");
            assert!(h.hold(0, 5, t).is_some(), "others wait");
            let (v, c) = h.unavailable(0, 1000 + round, t);
            assert!(matches!(v, Verdict::Hold(_)) && c.is_none());
        }
        assert!(waits[1] > waits[0] && waits[3] > waits[1]);
        assert!(waits.iter().all(|w| *w <= PROBE_MAX * 5 / 4), "{waits:?}");
        assert!(waits[7] >= PROBE_MAX * 3 / 4, "{waits:?}");
        let due = h.next_probe().unwrap();
        h.probing(0, 77);
        let later = due + 3 * S;
        match h.answered(0, later) {
            Some(Change::Resumed { paused_for, held }) => {
                assert_eq!(paused_for, later - t0);
                assert!(held >= 8);
            }
            other => panic!("{other:?}"),
        }
        assert!(!h.is_paused(0) && h.hold(0, 5, later).is_none());
        assert!((h.paused_seconds(0, later + S) - (later - t0).as_secs_f64()).abs() < 1e-6);
    }

    #[test]
    fn a_probe_that_finds_nothing_resumes_the_route() {
        let mut h = Health::with_seed(1, 4);
        let t = Instant::now();
        for id in 0..TRIP as i64 {
            h.unavailable(0, id, t);
        }
        let due = h.next_probe().unwrap();
        assert!(matches!(
            h.nothing_to_probe(0, due),
            Some(Change::Resumed { .. })
        ));
        assert!(h.paused().is_empty());
    }
}
