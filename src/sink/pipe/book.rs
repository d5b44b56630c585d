//! The books of one `pipe:` process: the events written to it and not answered yet (the
//! *outstanding* ones), in the order they were written, each with where its line starts in
//! the byte stream sent to the process and when its answer is due. Pure code.
//!
//! Invariants: at most `window` events are outstanding; an event leaves the books exactly
//! once, answered or settled when the process ends (`close`); once closed, nothing enters.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

struct Pending<R> {
    reply: R,
    /// Tells this entry from an older one of the same id in `order`.
    seq: u64,
    /// Offset of the event's line in the bytes written to the process.
    start: u64,
}

/// Why an event was not admitted; the reply comes back with it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The process ended (or is ending): send the event to another one.
    Closed,
    /// The same event id is outstanding already.
    Duplicate,
}

/// An outstanding event the process ended with.
pub(super) struct Unanswered<R> {
    pub reply: R,
    pub start: u64,
}

pub(super) struct Book<R> {
    window: usize,
    pending: HashMap<i64, Pending<R>>,
    /// (seq, id, due) in the order written; entries already answered are skipped lazily.
    order: VecDeque<(u64, i64, Instant)>,
    seq: u64,
    closed: bool,
}

impl<R> Book<R> {
    pub fn new(window: usize) -> Book<R> {
        Book {
            window: window.max(1),
            pending: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            closed: false,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// A writer must wait before admitting another event.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.window
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Records event `id`, whose line starts at byte `start` and whose answer is due by
    /// `due`. The caller waits while `is_full`; admitting past the window is allowed (a
    /// writer that raced the window check) but never happens in the worker.
    pub fn admit(
        &mut self,
        id: i64,
        reply: R,
        start: u64,
        due: Instant,
    ) -> Result<(), (R, Refused)> {
        if self.closed {
            return Err((reply, Refused::Closed));
        }
        if self.pending.contains_key(&id) {
            return Err((reply, Refused::Duplicate));
        }
        self.seq += 1;
        self.pending.insert(
            id,
            Pending {
                reply,
                seq: self.seq,
                start,
            },
        );
        self.order.push_back((self.seq, id, due));
        Ok(())
    }

    /// The answer for `id` came: its reply, or None when `id` is not outstanding (a
    /// protocol error: an id never sent, or answered already).
    pub fn answer(&mut self, id: i64) -> Option<R> {
        let p = self.pending.remove(&id)?;
        self.prune();
        Some(p.reply)
    }

    /// The oldest outstanding event whose answer was due by `now`.
    pub fn overdue(&mut self, now: Instant) -> Option<i64> {
        self.prune();
        self.order
            .front()
            .filter(|(_, _, due)| *due <= now)
            .map(|(_, id, _)| *id)
    }

    /// When the oldest outstanding answer is due.
    pub fn next_due(&mut self) -> Option<Instant> {
        self.prune();
        self.order.front().map(|(_, _, due)| *due)
    }

    /// The process ended: nothing enters any more; returns what was outstanding, in the
    /// order written.
    pub fn close(&mut self) -> Vec<Unanswered<R>> {
        self.closed = true;
        let mut out = Vec::with_capacity(self.pending.len());
        for (seq, id, _) in std::mem::take(&mut self.order) {
            if self.pending.get(&id).is_some_and(|p| p.seq == seq) {
                if let Some(p) = self.pending.remove(&id) {
                    out.push(Unanswered {
                        reply: p.reply,
                        start: p.start,
                    });
                }
            }
        }
        out
    }

    /// Drops answered entries from the front of `order`.
    fn prune(&mut self) {
        while let Some((seq, id, _)) = self.order.front() {
            if self.pending.get(id).is_some_and(|p| p.seq == *seq) {
                return;
            }
            self.order.pop_front();
        }
    }
}

/// Whether the process began reading the line that starts at `start`, given the bytes
/// `written` to it and the bytes still `unread` in its stdin pipe when it ended. An event it
/// never read cannot have been delivered: it is given back without using an attempt.
pub(super) fn was_read(start: u64, written: u64, unread: u64) -> bool {
    start < written.saturating_sub(unread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn answers_in_any_order_leave_the_books_once() {
        let t = Instant::now();
        let mut b = Book::new(3);
        for (i, id) in [10, 11, 12].into_iter().enumerate() {
            assert!(b.admit(id, id * 100, i as u64 * 20, t).is_ok());
        }
        assert!(b.is_full());
        assert_eq!(b.answer(11), Some(1100));
        assert!(!b.is_full());
        assert_eq!(b.answer(11), None, "answered twice");
        assert_eq!(b.answer(99), None, "never sent");
        assert_eq!(b.answer(12), Some(1200));
        assert_eq!(b.len(), 1);
        assert_eq!(b.answer(10), Some(1000));
        assert_eq!(b.len(), 0);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn the_oldest_unanswered_event_is_the_one_overdue() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Book::new(10);
        b.admit(1, (), 0, t + s).unwrap();
        b.admit(2, (), 10, t + 2 * s).unwrap();
        assert_eq!(b.overdue(t), None);
        assert_eq!(b.overdue(t + s), Some(1));
        b.answer(1);
        assert_eq!(b.next_due(), Some(t + 2 * s));
        assert_eq!(b.overdue(t + s), None);
        // The same id sent again after its answer gets its own due time.
        b.admit(1, (), 20, t + 3 * s).unwrap();
        b.answer(2);
        assert_eq!(b.next_due(), Some(t + 3 * s));
    }

    #[test]
    fn a_closed_book_returns_what_was_outstanding_and_admits_nothing() {
        let t = Instant::now();
        let mut b = Book::new(10);
        b.admit(5, "a", 0, t).unwrap();
        b.admit(6, "b", 30, t).unwrap();
        b.admit(7, "c", 60, t).unwrap();
        b.answer(6);
        assert_eq!(b.admit(5, "dup", 90, t), Err(("dup", Refused::Duplicate)));
        let left: Vec<(&str, u64)> = b.close().into_iter().map(|u| (u.reply, u.start)).collect();
        assert_eq!(left, vec![("a", 0), ("c", 60)]);
        assert_eq!(b.admit(8, "d", 90, t), Err(("d", Refused::Closed)));
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn an_event_counts_as_read_once_its_first_byte_left_the_pipe() {
        // Lines at 0..30, 30..60, 60..90; 90 written, 40 still in the pipe: the process read
        // 50 bytes, so the first two lines were (at least partly) read, the third was not.
        assert!(was_read(0, 90, 40));
        assert!(was_read(30, 90, 40));
        assert!(!was_read(60, 90, 40));
        // Nothing read at all (it died at start-up).
        assert!(!was_read(0, 90, 90));
        // Everything read.
        assert!(was_read(60, 90, 0));
    }
}
