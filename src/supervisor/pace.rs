//! How fast `--retain-done` goes (for `retain`): it yields to delivery. Pure decisions, the
//! time given; unit-tested.
//!
//! The load is read off what the workers report anyway (their `counters`, about once a
//! second each, summed on the supervisor's board): a claim always asks for `--batch-size`
//! events and is made only when that many slots are free, so claims that come back full mean
//! the outbox has a backlog and the workers deliver as fast as they can. [`Watch`] calls the
//! workers busy when the claims reported since its last look returned at least half a batch
//! each on average, and idle when they returned less, or when no claim was reported for
//! [`QUIET`] (nothing to claim at a long poll interval, or every slot taken by slow handlers:
//! then the database is not what limits delivery). Until the first claims are reported (the
//! workers are starting; a drain begins at once) it says busy, for at most [`UNHEARD`].
//! (With `--order`, claims can come back short beside a backlog, its events held back behind
//! their aggregates': retention may then go at its idle pace, as it always did.)
//!
//! [`next`] turns the load into the next statement: idle, a span of [`SPAN`] ids followed by
//! a pause of [`PAUSE`] times the statement's duration (a third of the database time it
//! could take, enough to work off a backlog of old rows in reasonable time); busy, a span of
//! [`BUSY_SPAN`] ids (shorter row locks and CPU bursts) at most once per [`BUSY_EVERY`] and
//! followed by a pause of at least [`BUSY_PAUSE`] times its duration. That is the floor that
//! keeps a table under permanent load trimmed and costs delivery next to nothing: never
//! starved (a statement a second while a span takes up to 50 ms, so up to 500 old rows a
//! second while a pass runs; after a pause of 100 s at worst, since the statement limit is
//! 5 s), and never more than a twenty-first of one connection's time while the workers need
//! the database.
//!
//! Invariants: a verdict changes only on what the workers reported (or on their silence);
//! the next statement is never earlier than its pause after the last one allows; a busy
//! statement reads at most [`BUSY_SPAN`] ids.

use std::time::{Duration, Instant};

/// Ids read per statement (and transaction), at most, while the workers are idle.
pub(super) const SPAN: i64 = 5000;
/// The same while they are busy.
pub(super) const BUSY_SPAN: i64 = 500;
/// Idle: after each statement, a pause this many times as long as the statement took.
const PAUSE: u32 = 2;
/// Busy: the same, and statements start at least [`BUSY_EVERY`] apart.
const BUSY_PAUSE: u32 = 20;
const BUSY_EVERY: Duration = Duration::from_secs(1);
/// No claim reported for this long: idle (the workers report every second).
const QUIET: Duration = Duration::from_secs(3);
/// Busy until the first claims are reported, for at most this long (workers connecting).
const UNHEARD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Load {
    /// The workers claim less than they could (or nothing): retention at its own pace.
    Idle,
    /// Their claims come back full (a backlog): retention yields.
    Busy,
}

/// The workers' load, from their cumulative claim counts.
#[derive(Debug)]
pub(super) struct Watch {
    batch: u64,
    /// Claim statements and the events they returned, at the last look that saw new ones.
    seen: (u64, u64),
    /// When those were seen (at first: when watching began).
    since: Instant,
    /// Silence for this long means idle: [`UNHEARD`] until the first claims, then [`QUIET`].
    quiet: Duration,
    load: Load,
}

impl Watch {
    pub(super) fn new(batch_size: u32, now: Instant) -> Watch {
        Watch {
            batch: u64::from(batch_size.max(1)),
            seen: (0, 0),
            since: now,
            quiet: UNHEARD,
            load: Load::Busy,
        }
    }

    /// The load at `now`, given the workers' claim statements so far and the events those
    /// returned (cumulative, summed over the workers).
    pub(super) fn observe(&mut self, now: Instant, claims: u64, claimed: u64) -> Load {
        let calls = claims.saturating_sub(self.seen.0);
        if calls > 0 {
            let events = claimed.saturating_sub(self.seen.1);
            self.load = if events.saturating_mul(2) >= calls.saturating_mul(self.batch) {
                Load::Busy
            } else {
                Load::Idle
            };
            self.seen = (claims, claimed);
            self.since = now;
            self.quiet = QUIET;
        } else if now.saturating_duration_since(self.since) >= self.quiet {
            self.load = Load::Idle;
        }
        self.load
    }
}

/// A statement of retention: when it started and how long it took.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ran {
    pub at: Instant,
    pub took: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Run a statement over at most this many ids now.
    Run(i64),
    /// Not before this long (ask again then, or sooner: the load may change meanwhile).
    Wait(Duration),
}

/// The next statement at `now` under `load`, after `last` (None: the first).
pub(super) fn next(load: Load, last: Option<Ran>, now: Instant) -> Step {
    let (span, gap) = match (load, last) {
        (_, None) => return Step::Run(span_for(load)),
        (Load::Idle, Some(r)) => (SPAN, r.took * (1 + PAUSE)),
        (Load::Busy, Some(r)) => (BUSY_SPAN, BUSY_EVERY.max(r.took * (1 + BUSY_PAUSE))),
    };
    let since = now.saturating_duration_since(last.map_or(now, |r| r.at));
    match gap.checked_sub(since) {
        Some(wait) if !wait.is_zero() => Step::Wait(wait),
        _ => Step::Run(span),
    }
}

fn span_for(load: Load) -> i64 {
    match load {
        Load::Idle => SPAN,
        Load::Busy => BUSY_SPAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds (whole numbers: exact arithmetic).
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_claims_are_busy_short_ones_idle_and_silence_idle() {
        let t0 = Instant::now();
        let mut w = Watch::new(100, t0);
        assert_eq!(w.observe(t0, 0, 0), Load::Busy, "nothing heard yet: yield");
        assert_eq!(
            w.observe(t0 + ms(10000), 0, 0),
            Load::Busy,
            "workers starting"
        );
        // A backlog: 40 claims of 100.
        assert_eq!(w.observe(t0 + ms(11000), 40, 4000), Load::Busy);
        // No new report yet: the verdict holds.
        assert_eq!(w.observe(t0 + ms(11500), 40, 4000), Load::Busy);
        // The backlog runs out: 10 claims returned 300 events (30 each, under half a batch).
        assert_eq!(w.observe(t0 + ms(12000), 50, 4300), Load::Idle);
        // A trickle: many claims of a few events.
        assert_eq!(w.observe(t0 + ms(13000), 250, 4500), Load::Idle);
        // Half a batch on average is busy.
        assert_eq!(w.observe(t0 + ms(14000), 252, 4600), Load::Busy);
        // Silence (no claims: long poll, or every slot taken by slow handlers).
        assert_eq!(w.observe(t0 + ms(16900), 252, 4600), Load::Busy);
        assert_eq!(w.observe(t0 + QUIET + ms(14000), 252, 4600), Load::Idle);
    }

    #[test]
    fn workers_never_heard_from_are_idle_after_a_while() {
        let t0 = Instant::now();
        let mut w = Watch::new(10, t0);
        assert_eq!(w.observe(t0 + ms(29000), 0, 0), Load::Busy);
        assert_eq!(w.observe(t0 + UNHEARD, 0, 0), Load::Idle);
        // Batch size 1: every claim that returns an event is full.
        let mut one = Watch::new(1, t0);
        assert_eq!(one.observe(t0 + ms(1000), 5, 3), Load::Busy);
        assert_eq!(one.observe(t0 + ms(2000), 9, 4), Load::Idle);
    }

    #[test]
    fn idle_retention_keeps_its_pace_and_busy_retention_takes_small_spans_a_second_apart() {
        let t0 = Instant::now();
        assert_eq!(next(Load::Idle, None, t0), Step::Run(SPAN));
        assert_eq!(next(Load::Busy, None, t0), Step::Run(BUSY_SPAN));
        let ran = Some(Ran {
            at: t0,
            took: ms(100),
        });
        // Idle: a pause twice as long as the statement, after it.
        assert_eq!(next(Load::Idle, ran, t0 + ms(100)), Step::Wait(ms(200)));
        assert_eq!(next(Load::Idle, ran, t0 + ms(300)), Step::Run(SPAN));
        // Busy: 20 times as long (a twentieth of the time at most).
        assert_eq!(next(Load::Busy, ran, t0 + ms(300)), Step::Wait(ms(1800)));
        assert_eq!(next(Load::Busy, ran, t0 + ms(2100)), Step::Run(BUSY_SPAN));
        // A short statement: at most one a second (the floor's pace).
        let quick = Some(Ran {
            at: t0,
            took: ms(10),
        });
        assert_eq!(next(Load::Busy, quick, t0 + ms(500)), Step::Wait(ms(500)));
        assert_eq!(
            next(Load::Busy, quick, t0 + BUSY_EVERY),
            Step::Run(BUSY_SPAN)
        );
        assert_eq!(next(Load::Idle, quick, t0 + ms(500)), Step::Run(SPAN));
    }

    #[test]
    fn never_starved_even_by_the_slowest_statement() {
        let t0 = Instant::now();
        // A statement at the statement limit (5 s): the next one, busy, 100 s later.
        let slow = Some(Ran {
            at: t0,
            took: ms(5000),
        });
        assert_eq!(next(Load::Busy, slow, t0 + ms(104900)), Step::Wait(ms(100)));
        assert_eq!(
            next(Load::Busy, slow, t0 + ms(105000)),
            Step::Run(BUSY_SPAN)
        );
        // A clock that went nowhere (the same instant): waits, never underflows.
        assert!(matches!(next(Load::Busy, slow, t0), Step::Wait(_)));
    }
}
