//! Exponential backoff, one type for every retry loop in both programs.
//!
//! The un-jittered step after `n` consecutive failures is `min(max, initial · 2ⁿ)`.
//! A [`Jitter`] mode turns the step into the delay, and an optional floor keeps the
//! delay from going below a minimum (e.g. the 200 ms a Kinesis shard's call rate
//! allows). Jitter spreads the retries of many clients that failed together (after a
//! network outage or a broker restart) so they do not come back in lock-step (AWS
//! Architecture Blog, "Exponential Backoff and Jitter").
//!
//! Pure: randomness is passed in, either as a `fastrand::Rng` (seed it in tests) or as
//! a unit draw in `[0, 1]` for callers that keep their own random source.
//! [`BackoffPolicy`] is stateless ("the delay after the n-th failure", for callers that
//! count attempts themselves, like the webhook retry); [`Backoff`] counts failures.

use std::time::Duration;

/// How the step becomes a delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the step (local retries where nobody else competes, e.g. a disk commit).
    None,
    /// Uniform in `[0, step]`: the most spread, the shortest mean wait ("full jitter").
    Full,
    /// Uniform in `[step / 2, step]`: spread, but never much below the step ("equal jitter").
    Equal,
    /// Uniform in `[step · (1 − f), step · (1 + f)]`, e.g. `Proportional(0.25)` for ±25 %.
    /// May exceed `max` by the fraction; `f` is clamped to `[0, 1]`.
    Proportional(f64),
}

impl Jitter {
    /// The delay for `step` and a unit draw `unit` in `[0, 1]` (clamped).
    pub fn apply(self, step: Duration, unit: f64) -> Duration {
        let u = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        match self {
            Jitter::None => step,
            Jitter::Full => step.mul_f64(u),
            Jitter::Equal => step.mul_f64(0.5 + 0.5 * u),
            Jitter::Proportional(f) => {
                let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
                step.mul_f64((1.0 - f) + 2.0 * f * u)
            }
        }
    }
}

/// The parameters of a backoff, without state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// The first step. Clamped to `max` so the step never exceeds `max`.
    pub initial: Duration,
    /// The largest step.
    pub max: Duration,
    pub jitter: Jitter,
    /// No delay is shorter than this (zero: no floor).
    pub floor: Duration,
}

impl BackoffPolicy {
    /// `initial` is clamped to `max`; no floor.
    pub fn new(initial: Duration, max: Duration, jitter: Jitter) -> Self {
        BackoffPolicy {
            initial: initial.min(max),
            max,
            jitter,
            floor: Duration::ZERO,
        }
    }

    /// The same policy with a floor under every delay.
    pub fn with_floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// The un-jittered step after `failures` consecutive failures: `min(max, initial · 2^failures)`.
    pub fn step(&self, failures: u32) -> Duration {
        let initial = self.initial.as_nanos();
        // 2^failures overflows quickly; anything past 2^64 is past any sane max anyway.
        let grown = initial.saturating_mul(1u128 << failures.min(64));
        Duration::from_nanos(u64::try_from(grown.min(self.max.as_nanos())).unwrap_or(u64::MAX))
    }

    /// The delay after `failures` consecutive failures, for a unit draw in `[0, 1]`.
    pub fn delay_at(&self, failures: u32, unit: f64) -> Duration {
        self.jitter.apply(self.step(failures), unit).max(self.floor)
    }

    /// The delay after `failures` consecutive failures, drawn from `rng`. `Full` draws
    /// whole nanoseconds in `[0, step]` (top included); the other modes draw a unit.
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let step = self.step(failures);
        let d = match self.jitter {
            Jitter::None => step,
            Jitter::Full => {
                let top = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rng.u64(0..=top))
            }
            j => j.apply(step, rng.f64()),
        };
        d.max(self.floor)
    }
}

/// A [`BackoffPolicy`] plus the count of consecutive failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let d = self.policy.delay(self.failures, rng);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// [`Backoff::next_delay`] with a unit draw in `[0, 1]` instead of a generator.
    pub fn next_delay_at(&mut self, unit: f64) -> Duration {
        let d = self.policy.delay_at(self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Upper bound of the next delay before jitter: the policy's step at the current count.
    pub fn ceiling(&self) -> Duration {
        self.policy.step(self.failures)
    }

    /// After a success the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    // From agent/src/ship/backoff.rs (full jitter, the shipper).
    #[test]
    fn ceiling_doubles_up_to_max_and_reset_starts_over() {
        let mut b = Backoff::new(BackoffPolicy::new(MS(100), MS(1000), Jitter::Full));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.ceiling(), MS(100));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn full_jitter_draws_from_the_whole_range() {
        let mut b = Backoff::new(BackoffPolicy::new(MS(10_000), MS(10_000), Jitter::Full));
        let mut rng = fastrand::Rng::with_seed(1);
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay(&mut rng)).collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 40,
            "full jitter draws from the whole range"
        );
        assert!(delays.iter().any(|d| *d < MS(5_000)));
        assert!(delays.iter().any(|d| *d > MS(5_000)));
    }

    #[test]
    fn the_shippers_draw_is_kept_exactly() {
        // The shipper drew `rng.u64(0..=ceiling_ns)`; the same seed gives the same delays.
        let p = BackoffPolicy::new(MS(100), MS(30_000), Jitter::Full);
        let (mut a, mut b) = (fastrand::Rng::with_seed(42), fastrand::Rng::with_seed(42));
        for n in 0..12 {
            let ceiling = u64::try_from(p.step(n).as_nanos()).unwrap();
            assert_eq!(p.delay(n, &mut a), Duration::from_nanos(b.u64(0..=ceiling)));
        }
    }

    #[test]
    fn initial_above_max_is_clamped_to_max() {
        let p = BackoffPolicy::new(MS(5_000), MS(1_000), Jitter::None);
        assert_eq!(p.step(0), MS(1_000));
        assert_eq!(p.step(u32::MAX), MS(1_000));
    }

    // From agent/src/sources/modbus/client.rs (upper-half jitter, never below initial).
    #[test]
    fn equal_jitter_with_a_floor_doubles_up_to_the_max_and_resets() {
        let policy = BackoffPolicy::new(MS(100), MS(1000), Jitter::Equal).with_floor(MS(100));
        let mut b = Backoff::new(policy);
        let top: Vec<u128> = (0..6).map(|_| b.next_delay_at(1.0).as_millis()).collect();
        assert_eq!(top, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay_at(0.0), MS(100));
        assert_eq!(b.next_delay_at(0.0), MS(100));
        assert_eq!(b.next_delay_at(0.0), MS(200));
    }

    // From rules-engine/src/source/kinesis.rs (full jitter, floored at the poll interval).
    #[test]
    fn full_jitter_with_a_floor_is_capped_and_paced() {
        let p = BackoffPolicy::new(MS(200), MS(10_000), Jitter::Full).with_floor(MS(200));
        assert_eq!(p.delay_at(0, 0.0), MS(200));
        assert_eq!(p.delay_at(3, 0.5), MS(800));
        assert_eq!(p.delay_at(30, 0.999_999), MS(10_000).mul_f64(0.999_999));
        assert!(p.delay_at(u32::MAX, 1.0) <= MS(10_000));
        for a in 0..20 {
            assert!(p.delay_at(a, 0.25) <= p.delay_at(a + 1, 0.25));
        }
    }

    // From rules-engine/src/output/retry.rs (stateless; attempt n is `n - 1` failures).
    #[test]
    fn stateless_steps_double_up_to_the_max() {
        let p = BackoffPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(600),
            Jitter::Full,
        );
        let c: Vec<u64> = (1..=12).map(|a| p.step(a - 1).as_secs()).collect();
        assert_eq!(c, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(p.step(u32::MAX), p.max);
        // Full jitter at its top equals the step; at 0 it retries at once.
        assert_eq!(
            p.delay_at(2, 0.999_999_999),
            Duration::from_secs(4).mul_f64(0.999_999_999)
        );
        assert_eq!(p.delay_at(2, 0.0), Duration::ZERO);
    }

    // From rules-engine/src/control/client.rs (±25 % around a doubling step).
    #[test]
    fn proportional_jitter_spreads_around_the_step() {
        let mut b = Backoff::new(BackoffPolicy::new(
            MS(250),
            Duration::from_secs(30),
            Jitter::Proportional(0.25),
        ));
        assert_eq!(b.next_delay_at(0.0), MS(250).mul_f64(0.75));
        assert_eq!(b.next_delay_at(0.5), MS(500));
        assert_eq!(b.next_delay_at(1.0), MS(1000).mul_f64(1.25));
        for _ in 0..20 {
            b.next_delay_at(0.5);
        }
        assert_eq!(b.next_delay_at(1.0), Duration::from_secs(30).mul_f64(1.25));
        b.reset();
        assert_eq!(b.next_delay_at(0.5), MS(250));
    }

    // The agent's buffer commit retry (no jitter).
    #[test]
    fn no_jitter_is_the_step() {
        let mut b = Backoff::new(BackoffPolicy::new(MS(50), MS(5_000), Jitter::None));
        let mut rng = fastrand::Rng::with_seed(3);
        let d: Vec<u128> = (0..9).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(d, vec![50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(Jitter::None.apply(MS(7), 0.3), MS(7));
    }

    #[test]
    fn unit_outside_zero_one_is_clamped() {
        for j in [Jitter::Full, Jitter::Equal, Jitter::Proportional(0.25)] {
            assert_eq!(j.apply(MS(100), -3.0), j.apply(MS(100), 0.0), "{j:?}");
            assert_eq!(j.apply(MS(100), 7.0), j.apply(MS(100), 1.0), "{j:?}");
            assert_eq!(j.apply(MS(100), f64::NAN), j.apply(MS(100), 0.0), "{j:?}");
        }
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            (0.0f64..=1.0).prop_map(Jitter::Proportional),
        ]
    }

    /// Bounds of one delay for a step, per mode (floor aside).
    fn bounds(j: Jitter, step: Duration) -> (Duration, Duration) {
        match j {
            Jitter::None => (step, step),
            Jitter::Full => (Duration::ZERO, step),
            Jitter::Equal => (step / 2, step),
            Jitter::Proportional(f) => (step.mul_f64(1.0 - f), step.mul_f64(1.0 + f)),
        }
    }

    proptest! {
        #[test]
        fn delay_stays_within_its_modes_bounds_and_the_step_never_shrinks(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..600_000,
            floor_ms in 0u64..1_000,
            failures in 0usize..200,
            j in jitter(),
            seed: u64,
        ) {
            let max = MS(max_ms);
            let floor = MS(floor_ms);
            let p = BackoffPolicy::new(MS(initial_ms), max, j).with_floor(floor);
            let mut b = Backoff::new(p);
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut last = Duration::ZERO;
            let slack = Duration::from_micros(1); // f64 rounding of mul_f64
            for n in 0..failures {
                let step = b.ceiling();
                prop_assert!(step <= max);
                prop_assert!(step >= last, "the step never shrinks before a reset");
                let exp = MS(initial_ms.min(max_ms)).saturating_mul(1u32 << n.min(31));
                prop_assert!(step <= exp);
                let (lo, hi) = bounds(j, step);
                let d = b.next_delay(&mut rng);
                prop_assert!(d >= floor, "{d:?} below the floor {floor:?}");
                prop_assert!(d + slack >= lo.max(floor), "{d:?} below {lo:?}");
                prop_assert!(d <= hi.max(floor) + slack, "{d:?} above {hi:?}");
                last = step;
            }
            prop_assert_eq!(b.failures() as usize, failures);
            b.reset();
            prop_assert_eq!(b.ceiling(), MS(initial_ms.min(max_ms)));
        }

        #[test]
        fn unit_draws_are_monotone_and_bounded(
            step_ms in 0u64..100_000,
            u in 0.0f64..=1.0, v in 0.0f64..=1.0,
            j in jitter(),
        ) {
            let step = MS(step_ms);
            let (a, b) = (j.apply(step, u.min(v)), j.apply(step, u.max(v)));
            prop_assert!(a <= b, "a larger draw never waits less");
            let (lo, hi) = bounds(j, step);
            let slack = Duration::from_micros(1);
            prop_assert!(a + slack >= lo && b <= hi + slack);
        }

        #[test]
        fn seeded_draws_repeat(seed: u64, j in jitter(), n in 0u32..40) {
            let p = BackoffPolicy::new(MS(100), MS(60_000), j);
            let (mut a, mut b) = (fastrand::Rng::with_seed(seed), fastrand::Rng::with_seed(seed));
            prop_assert_eq!(p.delay(n, &mut a), p.delay(n, &mut b));
        }

        // From agent/src/sources/modbus/client.rs.
        #[test]
        fn equal_jitter_with_floor_stays_within_bounds_and_grows(
            initial_ms in 1u64..5_000, extra_ms in 0u64..60_000,
            draws in prop::collection::vec(0f64..1.0, 1..40),
        ) {
            let (initial, max) = (MS(initial_ms), MS(initial_ms + extra_ms));
            let mut b = Backoff::new(BackoffPolicy::new(initial, max, Jitter::Equal).with_floor(initial));
            let mut ceiling = initial;
            for u in draws {
                let d = b.next_delay_at(u);
                prop_assert!(d >= initial && d <= max, "{d:?} outside {initial:?}..{max:?}");
                // Never above the un-jittered exponential step.
                prop_assert!(d <= ceiling + Duration::from_micros(1), "{d:?} above {ceiling:?}");
                ceiling = (ceiling * 2).min(max);
            }
        }
    }
}
