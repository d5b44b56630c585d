//! Retry delays: exponential growth from a base, capped, with jitter. Pure functions.
//!
//! `delay(attempt)` for the n-th failed attempt (1-based) is `base * 2^(n-1)`, capped at `max`,
//! then scaled by a random factor in [0.75, 1.25) (still capped) so that events that failed
//! together do not all come due in the same instant.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Deterministic part of the delay after failed attempt `attempt` (1-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let factor = 1u64 << exp;
        let secs = self.base.as_secs_f64() * factor as f64;
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// The delay with jitter: nominal × a factor in [0.75, 1.25), never above `max`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let nominal = self.nominal(attempt).as_secs_f64();
        let jittered = nominal * (0.75 + rng.f64() * 0.5);
        Duration::from_secs_f64(jittered.min(self.max.as_secs_f64()))
    }
}

/// Reconnect / restart pacing: 100 ms doubling to `cap`, with full jitter in [50 %, 100 %].
pub fn reconnect_delay(failures: u32, cap: Duration, rng: &mut fastrand::Rng) -> Duration {
    let nominal = Backoff {
        base: Duration::from_millis(100),
        max: cap,
    }
    .nominal(failures.max(1));
    nominal.mul_f64(0.5 + rng.f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(base: u64, max: u64) -> Backoff {
        Backoff {
            base: Duration::from_secs(base),
            max: Duration::from_secs(max),
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let b = b(30, 3600);
        assert_eq!(b.nominal(1), Duration::from_secs(30));
        assert_eq!(b.nominal(2), Duration::from_secs(60));
        assert_eq!(b.nominal(3), Duration::from_secs(120));
        assert_eq!(b.nominal(7), Duration::from_secs(1920));
        assert_eq!(b.nominal(8), Duration::from_secs(3600));
        assert_eq!(b.nominal(1000), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = b(30, 3600);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..12 {
            let nominal = b.nominal(attempt).as_secs_f64();
            for _ in 0..500 {
                let d = b.delay(attempt, &mut rng).as_secs_f64();
                assert!(
                    d >= nominal * 0.75 - 1e-9,
                    "attempt {attempt}: {d} < 0.75 × {nominal}"
                );
                assert!(
                    d < nominal * 1.25 + 1e-9,
                    "attempt {attempt}: {d} ≥ 1.25 × {nominal}"
                );
                assert!(d <= 3600.0 + 1e-9);
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let b = b(30, 3600);
        let mut rng = fastrand::Rng::with_seed(1);
        let a = b.delay(1, &mut rng);
        let c = b.delay(1, &mut rng);
        assert_ne!(a, c);
    }

    #[test]
    fn zero_base_means_immediate_retry() {
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(b(0, 3600).delay(4, &mut rng), Duration::ZERO);
    }

    #[test]
    fn reconnect_delay_is_bounded() {
        let mut rng = fastrand::Rng::with_seed(9);
        for n in 1..40 {
            let d = reconnect_delay(n, Duration::from_secs(5), &mut rng);
            assert!(d <= Duration::from_secs(5));
            assert!(d >= Duration::from_millis(50));
        }
    }
}
