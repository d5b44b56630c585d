//! The supervisor's board: what the workers reported, summed per worker slot and over the
//! whole process tree, each slot's `process_*` figures, and whether every slot is ready:
//! it runs a child that reported `ready` and whose last report says its database
//! connection is up. The report readers (one per child,
//! in `supervisor::spawn`) write to it through a [`Tap`]; the HTTP threads read snapshots.
//!
//! A slot's children are its incarnations: each gets a `Tap` when it is started, and its
//! reports are cumulative since *its* start. The board keeps the last report of every
//! incarnation whose report pipe is open, and folds it into the slot's `base` when the pipe
//! closes (the child is gone). A slot's total is `base` plus its live incarnations' last
//! reports, so a restarted worker starting from 0 never makes a total go down.
//!
//! Invariants: every cumulative number in a snapshot is at least what any earlier snapshot
//! showed; the lock is held only to copy or add numbers, never across I/O.

use super::counts::Counts;
use super::process::ProcessStats;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Board {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: Vec<SlotBook>,
    stopping: bool,
    next_incarnation: u64,
    /// Rows the supervisor's retention removed (`--retain-done`).
    retained: u64,
}

#[derive(Default)]
struct SlotBook {
    /// The sum of the incarnations that are gone (their in-flight gauge dropped).
    base: Counts,
    /// Incarnations whose report pipe is open: their last report, and whether they said
    /// `ready`.
    live: BTreeMap<u64, (Counts, bool)>,
    /// Children started in this slot.
    starts: u64,
}

/// How many slots are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Workers {
    /// A child runs and has reported ready.
    pub ready: u64,
    /// A child runs and has not reported ready yet.
    pub starting: u64,
    /// No child runs (waiting for a restart, or finished).
    pub down: u64,
    /// Of the ready ones: whose database connection is down now.
    pub disconnected: u64,
    /// The longest of those outages so far, in microseconds (0: none).
    pub disconnected_us: u64,
}

/// A copy of the board at one instant.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub total: Counts,
    pub workers: Workers,
    /// Children started, restarts included.
    pub starts: u64,
    pub stopping: bool,
    /// Done rows removed by `--retain-done` (deleted or moved to the archive).
    pub retained: u64,
    /// The `process_*` figures of each slot's running child, by slot.
    pub processes: Vec<(usize, ProcessStats)>,
}

impl Snapshot {
    /// Every slot runs a ready child connected to the database, and the supervisor is not
    /// stopping (`/readyz`).
    pub(crate) fn ready(&self) -> bool {
        let w = &self.workers;
        !self.stopping && w.starting == 0 && w.down == 0 && w.disconnected == 0
    }
}

/// One child's connection to the board, held by its report reader; dropping it (the reader
/// saw the pipe close: the child is gone) retires the incarnation.
pub(crate) struct Tap {
    board: Arc<Board>,
    slot: usize,
    incarnation: u64,
}

impl Board {
    pub(crate) fn new(slots: usize) -> Arc<Board> {
        let board = Board::default();
        board.lock().slots = (0..slots).map(|_| SlotBook::default()).collect();
        Arc::new(board)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only sums are kept under the lock: a panic elsewhere cannot leave them half-made.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A child is starting in `slot`.
    pub(crate) fn tap(self: &Arc<Board>, slot: usize) -> Tap {
        let mut s = self.lock();
        let incarnation = s.next_incarnation;
        s.next_incarnation += 1;
        if let Some(book) = s.slots.get_mut(slot) {
            book.starts += 1;
            book.live.insert(incarnation, (Counts::default(), false));
        }
        Tap {
            board: Arc::clone(self),
            slot,
            incarnation,
        }
    }

    /// The supervisor is stopping (not ready from now on).
    pub(crate) fn stopping(&self) {
        self.lock().stopping = true;
    }

    /// The supervisor's retention removed `n` more rows.
    pub(crate) fn retained(&self, n: u64) {
        self.lock().retained += n;
    }

    /// The workers' claim statements so far and the events they returned, summed like the
    /// snapshot's (never less than an earlier answer), without copying the rest: the
    /// retention's measure of the workers' load, read several times a second.
    pub(crate) fn claims(&self) -> (u64, u64) {
        let s = self.lock();
        let all = s
            .slots
            .iter()
            .flat_map(|b| std::iter::once(&b.base).chain(b.live.values().map(|(c, _)| c)));
        all.fold((0, 0), |(n, e), c| {
            (n.saturating_add(c.claims), e.saturating_add(c.claimed))
        })
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        let mut snap = Snapshot {
            stopping: s.stopping,
            retained: s.retained,
            ..Snapshot::default()
        };
        for (slot, book) in s.slots.iter().enumerate() {
            snap.total.add(&book.base);
            snap.starts += book.starts;
            for (counts, _) in book.live.values() {
                snap.total.add(counts);
            }
            let w = &mut snap.workers;
            match book.live.values().last() {
                Some((c, true)) => {
                    w.ready += 1;
                    if c.db_down > 0 {
                        w.disconnected += 1;
                        w.disconnected_us = w.disconnected_us.max(c.db_down_us);
                    }
                }
                Some((_, false)) => w.starting += 1,
                None => w.down += 1,
            }
            let newest = book.live.values().last();
            if let Some(p) = newest.and_then(|(c, _)| c.process) {
                snap.processes.push((slot, p));
            }
        }
        snap
    }

    fn with_live(&self, slot: usize, incarnation: u64, f: impl FnOnce(&mut (Counts, bool))) {
        let mut s = self.lock();
        if let Some(live) = s
            .slots
            .get_mut(slot)
            .and_then(|b| b.live.get_mut(&incarnation))
        {
            f(live);
        }
    }
}

impl Tap {
    pub(crate) fn ready(&self) {
        self.board
            .with_live(self.slot, self.incarnation, |(_, ready)| *ready = true);
    }

    /// The child's latest counts (cumulative since it started).
    pub(crate) fn counts(&self, newer: &Counts) {
        self.board
            .with_live(self.slot, self.incarnation, |(c, _)| c.merge_max(newer));
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let mut s = self.board.lock();
        if let Some(book) = s.slots.get_mut(self.slot) {
            if let Some((mut last, _)) = book.live.remove(&self.incarnation) {
                last.clear_gauges();
                book.base.add(&last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::counts::Label;
    use super::*;

    fn delivered(n: u64) -> Counts {
        let mut c = Counts::default();
        for _ in 0..n {
            c.count("stdout", Label::Delivered);
        }
        c.in_flight = 1;
        c
    }

    fn total(b: &Board) -> u64 {
        b.snapshot()
            .total
            .routes
            .get("stdout")
            .map_or(0, |r| r.count(Label::Delivered))
    }

    #[test]
    fn a_restarted_worker_adds_to_its_slot_and_totals_never_go_down() {
        let b = Board::new(2);
        let first = b.tap(0);
        let other = b.tap(1);
        assert_eq!(b.snapshot().workers.starting, 2);
        assert!(!b.snapshot().ready());
        first.ready();
        other.ready();
        assert!(b.snapshot().ready());
        first.counts(&delivered(5));
        other.counts(&delivered(2));
        assert_eq!(total(&b), 7);
        assert_eq!(b.snapshot().total.in_flight, 2);
        // Slot 0's child dies (SIGKILL) and a new one starts from 0, possibly before the
        // old one's pipe is seen closed.
        let second = b.tap(0);
        second.counts(&delivered(1));
        assert_eq!(total(&b), 8);
        assert_eq!(b.claims(), (0, 0));
        let mut claims = delivered(1);
        (claims.claims, claims.claimed) = (3, 25);
        second.counts(&claims);
        assert_eq!(b.claims(), (3, 25));
        drop(first);
        assert_eq!(total(&b), 8);
        assert_eq!(
            b.snapshot().total.in_flight,
            2,
            "the dead child's gauge is gone"
        );
        assert_eq!(b.snapshot().workers.starting, 1);
        second.ready();
        second.counts(&delivered(4));
        assert_eq!(total(&b), 11);
        assert_eq!(b.snapshot().starts, 3);
        drop(second);
        assert_eq!(b.snapshot().workers.down, 1);
        assert!(!b.snapshot().ready());
        assert_eq!(total(&b), 11);
    }

    #[test]
    fn a_worker_without_its_database_is_not_ready_until_it_reconnects() {
        let b = Board::new(2);
        let (first, other) = (b.tap(0), b.tap(1));
        first.ready();
        other.ready();
        let mut down = delivered(1);
        down.db_down = 1;
        down.db_down_us = 3_000_000;
        down.process = crate::metrics::process::ProcessStats::of_self();
        other.counts(&down);
        let snap = b.snapshot();
        assert!(!snap.ready());
        assert_eq!((snap.workers.ready, snap.workers.disconnected), (2, 1));
        assert_eq!(snap.workers.disconnected_us, 3_000_000);
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].0, 1, "by slot");
        let mut up = delivered(2);
        up.process = down.process;
        other.counts(&up);
        assert!(b.snapshot().ready());
        assert_eq!(b.snapshot().workers.disconnected, 0);
        drop(other);
        assert!(
            b.snapshot().processes.is_empty(),
            "a gone child has no figures"
        );
        drop(first);
    }

    #[test]
    fn stopping_is_not_ready() {
        let b = Board::new(1);
        let t = b.tap(0);
        t.ready();
        assert!(b.snapshot().ready());
        b.stopping();
        assert!(!b.snapshot().ready());
        assert_eq!(b.snapshot().workers.ready, 1);
    }
}
