//! The completer's buffer: handler results waiting to be written, grouped into one statement
//! per flush. Flushes on size, on age (a few milliseconds) and always before exit.
//!
//! Invariant: a result leaves this buffer only after the database accepted the batch; on a
//! lost connection the batch stays here and is written after reconnecting (the fencing in the
//! statement drops it if the lease was taken over meanwhile). It counts how often the batch
//! was sent: a batch sent more than once may have been written by a send whose reply was lost.
//! Every handler's reason (exec, pipe, webhook, compiled-in) becomes `last_error` here, through
//! `store::stored_error` (control characters escaped, cut at 2000 bytes).

use crate::backoff::Backoff;
use crate::handler::Outcome;
use crate::store::{stored_error, Completion, Status};
use std::time::{Duration, Instant};

/// Flush when this many results wait.
pub(super) const FLUSH_MAX: usize = 1000;
/// ... or when the oldest has waited this long. This is also the window in which a crash
/// after a successful delivery leads to a redelivery, so it stays short.
pub(super) const FLUSH_DELAY: Duration = Duration::from_millis(3);

pub(super) struct Completer {
    pending: Vec<Completion>,
    oldest: Option<Instant>,
    max_attempts: i32,
    backoff: Backoff,
    rng: fastrand::Rng,
    /// How often the results now here were sent without an answer (a reply lost with the
    /// connection) — plus one while a send is under way.
    sends: u32,
}

impl Completer {
    pub fn new(max_attempts: i32, backoff: Backoff) -> Completer {
        Completer {
            pending: Vec::new(),
            oldest: None,
            max_attempts,
            backoff,
            rng: fastrand::Rng::new(),
            sends: 0,
        }
    }

    /// Turns a handler outcome into the row's next state: done, retry with backoff, or dead
    /// (permanent failure, or the attempt that just failed was the last one allowed).
    pub fn push(&mut self, id: i64, token: i32, outcome: Outcome) {
        // Reaching the completer, the destination's unavailability is a failed attempt (the
        // DB thread gives the event back instead while its route is paused).
        let outcome = match outcome {
            Outcome::Unavailable(e, Some(after)) => Outcome::RetryAfter(e, after),
            Outcome::Unavailable(e, None) => Outcome::Retry(e),
            o => o,
        };
        let (status, delay, error) = match outcome {
            Outcome::Delivered => (Status::Done, 0.0, None),
            Outcome::Permanent(e) => (Status::Dead, 0.0, Some(e)),
            Outcome::Retry(e)
            | Outcome::RetryAfter(e, _)
            | Outcome::Abort(e)
            | Outcome::Defer(e)
                if token >= self.max_attempts =>
            {
                (Status::Dead, 0.0, Some(e))
            }
            // The destination said when: that delay instead of the backoff (shorter or
            // longer), capped at --retry-backoff-max.
            Outcome::RetryAfter(e, after) => {
                let d = after.min(self.backoff.max);
                (Status::Retry, d.as_secs_f64(), Some(e))
            }
            // The worker turns Abort and Defer into a release before they get here; count
            // them as a failed attempt should one ever arrive.
            Outcome::Retry(e)
            | Outcome::Abort(e)
            | Outcome::Defer(e)
            | Outcome::Unavailable(e, _) => {
                let attempt = u32::try_from(token.max(1)).unwrap_or(1);
                let d = self.backoff.delay(attempt, &mut self.rng).as_secs_f64();
                (Status::Retry, d, Some(e))
            }
        };
        self.pending.push(Completion {
            id,
            token,
            status,
            delay,
            error: error.map(stored_error),
        });
        self.oldest.get_or_insert_with(Instant::now);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the buffer must be flushed at the latest (None when empty).
    pub fn due_at(&self) -> Option<Instant> {
        if self.pending.len() >= FLUSH_MAX {
            return Some(Instant::now());
        }
        self.oldest.map(|t| t + FLUSH_DELAY)
    }

    pub fn batch(&self) -> &[Completion] {
        &self.pending
    }

    /// The batch is being sent (alone, or riding along with a claim).
    pub fn sending(&mut self) {
        self.sends += 1;
    }

    /// True when an earlier send of this batch got no answer: some of its results may have
    /// been written then.
    pub fn sent_before(&self) -> bool {
        self.sends > 1
    }

    /// The database accepted the whole batch.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.oldest = None;
        self.sends = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completer() -> Completer {
        Completer::new(
            3,
            Backoff {
                base: Duration::from_secs(10),
                max: Duration::from_secs(100),
            },
        )
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let mut c = completer();
        c.push(1, 1, Outcome::Delivered);
        c.push(2, 1, Outcome::Retry("boom".into()));
        c.push(3, 3, Outcome::Retry("last".into()));
        c.push(4, 1, Outcome::Permanent("rejected".into()));
        let b = c.batch();
        assert_eq!((b[0].status, b[0].error.as_deref()), (Status::Done, None));
        assert_eq!(
            (b[1].status, b[1].error.as_deref()),
            (Status::Retry, Some("boom"))
        );
        assert!(b[1].delay >= 7.5 && b[1].delay < 12.5, "{}", b[1].delay);
        assert_eq!(
            (b[2].status, b[2].error.as_deref()),
            (Status::Dead, Some("last"))
        );
        assert_eq!(
            (b[3].status, b[3].error.as_deref()),
            (Status::Dead, Some("rejected"))
        );
        assert!(c.due_at().is_some());
        c.sending();
        assert!(!c.sent_before());
        c.sending();
        assert!(c.sent_before(), "a second send after a lost reply");
        c.clear();
        assert!(!c.sent_before());
        assert!(c.is_empty() && c.due_at().is_none());
    }

    #[test]
    fn second_retry_waits_twice_as_long() {
        let mut c = completer();
        c.push(1, 2, Outcome::Retry("x".into()));
        let d = c.batch()[0].delay;
        assert!((15.0..25.0).contains(&d), "{d}");
    }

    #[test]
    fn retry_after_sets_the_delay_up_to_the_cap() {
        let mut c = completer();
        c.push(
            1,
            1,
            Outcome::RetryAfter("busy".into(), Duration::from_secs(60)),
        );
        c.push(
            2,
            1,
            Outcome::RetryAfter("soon".into(), Duration::from_secs(1)),
        );
        c.push(
            3,
            1,
            Outcome::RetryAfter("later".into(), Duration::from_secs(100_000)),
        );
        c.push(
            4,
            3,
            Outcome::RetryAfter("last".into(), Duration::from_secs(60)),
        );
        let b = c.batch();
        assert_eq!((b[0].status, b[0].delay), (Status::Retry, 60.0));
        assert_eq!(b[1].delay, 1.0, "shorter than the backoff, as asked");
        assert_eq!(b[2].delay, 100.0, "capped at --retry-backoff-max");
        assert_eq!(b[3].status, Status::Dead, "attempts used up");
    }
}
