//! What the handler threads know about the leases of the events they are about to start.
//!
//! The DB thread claims and extends leases; handler threads start events. A worker that was
//! stopped (SIGSTOP, a VM pause, a long outage) may wake up with queued events whose leases
//! ran out meanwhile, and which another worker may already have delivered. Before a handler
//! starts an event it asks this clock, and an event whose lease is known lost, or has expired
//! by this worker's own monotonic clock, is given back instead of delivered a second time.
//!
//! Invariant: the expiry computed here is never later than the one in the database. A claim's
//! lease runs from when the database executed it, which is after the worker sent it; the
//! same holds for an extension, which covers every event held when it was sent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) struct LeaseClock {
    lease: Duration,
    base: Instant,
    /// When the last successful extension was sent, in nanoseconds since `base` (0: never).
    extended: AtomicU64,
    /// Claims (id, token) an extension found taken over by another worker.
    lost: Mutex<HashSet<(i64, i32)>>,
    any_lost: AtomicBool,
}

impl LeaseClock {
    pub fn new(lease: Duration) -> LeaseClock {
        LeaseClock {
            lease,
            base: Instant::now(),
            extended: AtomicU64::new(0),
            lost: Mutex::new(HashSet::new()),
            any_lost: AtomicBool::new(false),
        }
    }

    /// An extension sent at `sent` succeeded for every event held then (except those
    /// reported with `lost`).
    pub fn extended(&self, sent: Instant) {
        let ns = u64::try_from(sent.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.extended.fetch_max(ns, Ordering::SeqCst);
    }

    /// These claims belong to another worker now.
    pub fn lost(&self, claims: impl IntoIterator<Item = (i64, i32)>) {
        let mut set = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        set.extend(claims);
        self.any_lost.store(!set.is_empty(), Ordering::SeqCst);
    }

    /// The claim ended (finished or given back): forget it.
    pub fn forget(&self, id: i64, token: i32) {
        if self.any_lost.load(Ordering::SeqCst) {
            let mut set = self.lost.lock().unwrap_or_else(|e| e.into_inner());
            set.remove(&(id, token));
            self.any_lost.store(!set.is_empty(), Ordering::SeqCst);
        }
    }

    /// None when the event claimed at `claim_sent` (id, token) may start now; otherwise why
    /// not. An event with less than a tenth of its lease left is not started either: it
    /// would most likely be taken over while it runs.
    pub fn refuse_start(
        &self,
        id: i64,
        token: i32,
        claim_sent: Instant,
        now: Instant,
    ) -> Option<String> {
        if self.any_lost.load(Ordering::SeqCst)
            && self
                .lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(id, token))
        {
            return Some("its lease was taken over by another worker".into());
        }
        let ext = self.extended.load(Ordering::SeqCst);
        let mut from = claim_sent;
        if ext > 0 {
            from = from.max(self.base + Duration::from_nanos(ext));
        }
        let expiry = from + self.lease;
        if now + self.lease / 10 >= expiry {
            let late = now.saturating_duration_since(expiry);
            return Some(format!(
                "its lease expired by this worker's clock ({:.1}s ago; was the process stopped?)",
                late.as_secs_f64()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn a_fresh_claim_may_start() {
        let c = LeaseClock::new(LEASE);
        let t = Instant::now();
        assert_eq!(c.refuse_start(1, 1, t, t + Duration::from_secs(5)), None);
    }

    #[test]
    fn an_expired_claim_may_not() {
        let c = LeaseClock::new(LEASE);
        let t = Instant::now();
        assert!(c.refuse_start(1, 1, t, t + LEASE).is_some());
        // Within the last tenth of the lease: not started either.
        assert!(c.refuse_start(1, 1, t, t + LEASE * 95 / 100).is_some());
    }

    #[test]
    fn an_extension_moves_the_expiry_for_earlier_claims() {
        let c = LeaseClock::new(LEASE);
        let t = Instant::now();
        c.extended(t + Duration::from_secs(20));
        assert_eq!(c.refuse_start(1, 1, t, t + Duration::from_secs(40)), None);
        assert!(c
            .refuse_start(1, 1, t, t + Duration::from_secs(50))
            .is_some());
        // An older extension does not move it back.
        c.extended(t + Duration::from_secs(1));
        assert_eq!(c.refuse_start(1, 1, t, t + Duration::from_secs(40)), None);
    }

    #[test]
    fn a_lost_claim_may_not_start_until_forgotten() {
        let c = LeaseClock::new(LEASE);
        let t = Instant::now();
        c.lost([(7, 2)]);
        assert!(c.refuse_start(7, 2, t, t).is_some());
        assert_eq!(
            c.refuse_start(7, 3, t, t),
            None,
            "a newer claim is not lost"
        );
        c.forget(7, 2);
        assert_eq!(c.refuse_start(7, 2, t, t), None);
    }
}
