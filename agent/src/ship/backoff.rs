//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
//! and Jitter"): after the n-th consecutive failure wait a uniform random time in
//! `[0, min(max, initial · 2^n)]`. Full jitter spreads the retries of many gateways
//! that failed together (e.g. after a network outage). Pure: the caller passes the
//! random source in.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// `initial` is clamped to `max`, so the ceiling never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial: initial.min(max),
            max,
            failures: 0,
        }
    }

    /// Upper bound of the next delay: `min(max, initial · 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let initial = self.initial.as_nanos();
        // 2^failures overflows quickly; anything past 2^64 is past any sane max anyway.
        let grown = initial.saturating_mul(1u128 << self.failures.min(64));
        Duration::from_nanos(u64::try_from(grown.min(self.max.as_nanos())).unwrap_or(u64::MAX))
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        self.failures = self.failures.saturating_add(1);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }

    /// After a success the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_up_to_max_and_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn delays_are_jittered() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let mut rng = fastrand::Rng::with_seed(1);
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay(&mut rng)).collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 40,
            "full jitter draws from the whole range"
        );
        assert!(delays.iter().any(|d| *d < Duration::from_secs(5)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(5)));
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling_or_max(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..600_000,
            failures in 0usize..200,
            seed: u64,
        ) {
            let max = Duration::from_millis(max_ms);
            let mut b = Backoff::new(Duration::from_millis(initial_ms), max);
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut last_ceiling = Duration::ZERO;
            for n in 0..failures {
                let ceiling = b.ceiling();
                prop_assert!(ceiling <= max);
                prop_assert!(ceiling >= last_ceiling, "the ceiling never shrinks before a reset");
                let exp = Duration::from_millis(initial_ms.min(max_ms)).saturating_mul(1u32 << n.min(31));
                prop_assert!(ceiling <= exp);
                let d = b.next_delay(&mut rng);
                prop_assert!(d <= ceiling);
                last_ceiling = ceiling;
            }
            b.reset();
            prop_assert_eq!(b.ceiling(), Duration::from_millis(initial_ms.min(max_ms)));
        }
    }
}
