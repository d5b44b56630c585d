//! How many claimed events a worker may hold: the handler threads' worth, plus a batch, plus
//! (claiming ahead) a second batch while no event waits for a thread of its own.
//!
//! Invariant: a claim is made only when a whole batch fits under the limit.

use crate::backoff::Backoff;
use crate::config::Config;
use std::time::Duration;

/// The ledger's limits (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Events the worker runs at once: the handler threads, plus the windows of streaming
    /// handlers (`pipe:`), which hold events in flight without a thread each.
    pub threads: usize,
    pub batch_size: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub max_attempts: i32,
    pub backoff: Backoff,
}

impl Limits {
    /// `window`: the routes' streaming windows (`Router::window`).
    pub fn of(cfg: &Config, window: usize) -> Limits {
        Limits {
            threads: cfg.threads + window,
            batch_size: cfg.batch_size as usize,
            lease: cfg.lease,
            poll_interval: cfg.poll_interval,
            max_attempts: cfg.max_attempts,
            backoff: cfg.backoff,
        }
    }

    /// Whether a whole batch fits beside `in_flight` claimed, unfinished events, `alone` of
    /// which were handed over one per job (waiting for a thread of their own). Room is
    /// `threads + batch_size`, and one batch more as long as no event waits for a thread: the
    /// next claim then runs while the last batch is handled (a route that takes a claim's
    /// events together, `stdout` or `pipe:`, has it in one thread at once), so the connection
    /// never idles while handlers work. Events handed over alone (webhook, `exec:`) beyond
    /// the threads are a queue, and claiming ahead of a queue would only hold leases another
    /// worker could use.
    pub fn room_for_a_batch(&self, in_flight: usize, alone: usize) -> bool {
        let batch = self.batch_size;
        let ahead = if alone <= self.threads { batch } else { 0 };
        let limit = self.threads + batch + ahead;
        limit - in_flight.min(limit) >= batch
    }
}
