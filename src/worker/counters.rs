//! The worker's side of the metrics: what the DB thread tells it (claims, each claim's route,
//! how each ended and how long its handler ran) summed into a `metrics::counts::Counts`, sent
//! to the supervisor as a `counters` report about every second and once at exit.
//!
//! An event is counted once per claim, when the DB thread learns how the claim ended, under
//! the label `outcomes::label` gives it (one rule per outcome): the handler's result
//! (counted when recorded, before it is written), a give-back (counted when decided, before
//! the release is written), or dead at claim time. These are the worker's only counts of
//! outcomes: `tally`'s summaries and the exit code read their [`Counters::totals`].
//!
//! Each report also carries the worker's gauges of now: events in flight, whether its database
//! connection is down and since when (the supervisor's readiness), and the process's own
//! `process_*` figures (read on the reporting thread, off the claim path).
//!
//! Invariant: the numbers only grow (see `Counts`). The DB thread never waits on the
//! supervisor for a periodic report: it leaves the latest counts in an outbox that a thread
//! of their own writes to the report pipe (a supervisor that is stopped, SIGSTOP, and lets
//! the pipe fill up blocks only that thread; a newer report replaces one not written yet).
//! Only the report at exit is written by the DB thread itself, so that it is out before the
//! process ends.

use super::ids::{id_map, IdMap};
use super::outcomes::{self, Ending};
use super::tally::Totals;
use crate::metrics::counts::{Counts, Label};
use crate::metrics::process::ProcessStats;
use crate::protocol::Report;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the counts are reported.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What the DB thread knows of now, for a report.
pub(super) struct Gauges {
    pub in_flight: usize,
    /// Failed statements and connection attempts so far.
    pub db_errors: u64,
    /// How long the database connection has been down (None: connected).
    pub db_down: Option<Duration>,
}

pub(super) struct Counters<'a> {
    counts: Counts,
    /// The route of each claim in flight: id → (token, route target).
    routes: IdMap<(i32, &'a str)>,
    next_report: Instant,
    /// Where reports go (none: counted, not sent).
    send: Option<fn(Report)>,
    /// The periodic reports' way out (none: sent on the DB thread, if no thread could start).
    outbox: Option<Arc<Outbox>>,
}

/// The latest counts not written yet, for the reporting thread.
#[derive(Default)]
struct Outbox {
    latest: Mutex<Option<Counts>>,
    posted: Condvar,
}

impl Outbox {
    fn post(&self, c: Counts) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        self.posted.notify_one();
    }

    /// The reporting thread: writes whatever is latest, for the rest of the process's life.
    fn run(&self, send: fn(Report)) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = latest.take() {
                drop(latest);
                send(with_process(c));
                latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            latest = self.posted.wait(latest).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The report of `c`, with this process's figures as of now.
fn with_process(mut c: Counts) -> Report {
    c.process = ProcessStats::of_self();
    Report::Counters(Box::new(c))
}

impl<'a> Counters<'a> {
    pub fn new(now: Instant) -> Counters<'a> {
        Counters {
            counts: Counts::default(),
            routes: id_map(),
            next_report: now,
            send: None,
            outbox: None,
        }
    }

    /// Reports go to `send` from now on.
    pub fn send_to(&mut self, send: fn(Report)) {
        self.send = Some(send);
        let outbox = Arc::new(Outbox::default());
        let o = Arc::clone(&outbox);
        let started = std::thread::Builder::new()
            .name("reports".into())
            .spawn(move || o.run(send));
        // Without a thread (EAGAIN), the DB thread writes them itself.
        self.outbox = started.is_ok().then_some(outbox);
    }

    /// A claim statement ran and returned `n` events.
    pub fn claimed(&mut self, n: usize) {
        self.counts.claims += 1;
        self.counts.claimed += n as u64;
    }

    /// A claimed event goes to a handler of `route`.
    pub fn dispatched(&mut self, id: i64, token: i32, route: &'a str) {
        self.routes.insert(id, (token, route));
    }

    /// The claim found the event's attempts used up (dead without a handler run).
    pub fn dead_at_claim(&mut self, route: &str) {
        if let Some(o) = outcomes::label(&Ending::DeadAtClaim) {
            self.counts.count(route, o);
        }
    }

    /// The claim (id, token) ended so (`took`: how long its handler ran, if one did): counts
    /// its label (the rule is `outcomes::label`) and returns it; None when it is not this
    /// claim's to count (not dispatched with this token, void, lease lost).
    pub fn ended(
        &mut self,
        id: i64,
        token: i32,
        ending: &Ending<'_>,
        took: Option<Duration>,
    ) -> Option<Label> {
        let route = self.take(id, token)?;
        if let Some(took) = took {
            self.counts.observe(route, took);
        }
        let outcome = outcomes::label(ending)?;
        self.counts.count(route, outcome);
        Some(outcome)
    }

    /// The totals of every route's labels so far, for the summaries and the exit code.
    pub fn totals(&self) -> Totals {
        Totals::of(&self.counts)
    }

    fn take(&mut self, id: i64, token: i32) -> Option<&'a str> {
        match self.routes.get(&id) {
            Some((t, route)) if *t == token => {
                let route = *route;
                self.routes.remove(&id);
                Some(route)
            }
            _ => None,
        }
    }

    /// The counts so far (as the next report carries them).
    #[cfg(test)]
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// When the next report is due.
    pub fn report_at(&self) -> Instant {
        self.next_report
    }

    /// Route `route`'s health now (see `health`), for the next report.
    pub fn route_health(&mut self, route: &str, paused: bool, paused_for: Duration) {
        self.counts.route_health(route, paused, paused_for);
    }

    /// Sends the counts if a report is due (`force`: at exit, whenever), with the gauges of
    /// now: `db_down` is how long the database connection has been down (None: connected).
    pub fn report(&mut self, now: Instant, gauges: Gauges, force: bool) {
        if !force && now < self.next_report {
            return;
        }
        self.next_report = now + REPORT_EVERY;
        self.counts.in_flight = gauges.in_flight as u64;
        self.counts.db_errors = gauges.db_errors;
        self.counts.db_down = u64::from(gauges.db_down.is_some());
        self.counts.db_down_us = gauges
            .db_down
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let counts = self.counts.clone();
        match (&self.outbox, self.send) {
            (Some(outbox), _) if !force => outbox.post(counts),
            (_, Some(send)) => send(with_process(counts)),
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::ledger::Finished;

    static SENT: Mutex<Vec<Report>> = Mutex::new(Vec::new());

    fn sent() -> Vec<Report> {
        SENT.lock().unwrap().clone()
    }

    #[test]
    fn each_claim_is_counted_once_by_its_token() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0);
        c.send_to(|r| SENT.lock().unwrap().push(r));
        c.claimed(3);
        c.dispatched(1, 1, "stdout");
        c.dispatched(2, 1, "stdout");
        c.dispatched(3, 4, "exec:x");
        let ms = Duration::from_millis(2);
        let done = |finished| Ending::Finished {
            attempt: Label::Delivered,
            finished,
        };
        let counted = c.ended(1, 1, &done(&Finished::Recorded), Some(ms));
        assert_eq!(counted, Some(Label::Delivered));
        let again = c.ended(1, 1, &done(&Finished::Recorded), Some(ms));
        assert_eq!(again, None, "twice: void");
        let other = c.ended(2, 9, &done(&Finished::Void), Some(ms));
        assert_eq!(other, None, "another token");
        let unstarted = Ending::Unstarted { ours: true };
        assert_eq!(c.ended(2, 1, &unstarted, None), Some(Label::Released));
        let lost = c.ended(3, 4, &done(&Finished::LeaseLost), Some(ms));
        assert_eq!(lost, None);
        c.dead_at_claim("exec:x");
        let gauges = |down| Gauges {
            in_flight: 0,
            db_errors: 2,
            db_down: down,
        };
        c.report(t0, gauges(None), false); // by the reporting thread
        c.report(t0, gauges(None), false); // not due again yet
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let down = Some(Duration::from_millis(2500));
        c.report(t0, gauges(down), true); // at exit: at once, on this thread
        let sent = sent();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let (Report::Counters(counts), Report::Counters(last)) = (&sent[0], &sent[1]) else {
            panic!("{sent:?}")
        };
        assert_eq!((counts.db_down, counts.db_down_us), (0, 0));
        assert_eq!((last.db_down, last.db_down_us), (1, 2_500_000));
        for c in [counts, last] {
            assert!(c.process.is_some_and(|p| p.resident_bytes > 0), "{c:?}");
        }
        assert_eq!(counts.routes, last.routes);
        let stdout = &counts.routes["stdout"];
        assert_eq!(stdout.count(Label::Delivered), 1);
        assert_eq!(stdout.count(Label::Released), 1);
        assert_eq!(stdout.runs(), 1);
        let exec = &counts.routes["exec:x"];
        assert_eq!(exec.count(Label::Dead), 1, "only the one dead at claim");
        assert_eq!(exec.runs(), 1, "its handler did run");
        assert_eq!((counts.claims, counts.claimed, counts.db_errors), (1, 3, 2));
    }
}
