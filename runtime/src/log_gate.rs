//! Rate limit for repeated log lines: a failing peer must not fill the disk with the
//! same warning, and the operator must still learn how many were left out.
//!
//! The first event passes; then at most one per interval, each reporting how many were
//! suppressed since the previous one. Pure: the caller passes the clock reading
//! (`now_ms` from its [`Clock`](crate::clock::Clock)).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LogGate {
    interval_ms: u64,
    next_ms: u64,
    suppressed: u64,
}

impl LogGate {
    /// One line per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        LogGate {
            interval_ms,
            next_ms: 0,
            suppressed: 0,
        }
    }

    /// One line per `interval`.
    pub fn every(interval: Duration) -> Self {
        LogGate::new(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX))
    }

    /// `Some(suppressed since the last line)` when this event should be logged now.
    /// A clock that steps backwards holds lines back until it passes the last one's
    /// interval again: never a flood.
    pub fn check(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms >= self.next_ms {
            self.next_ms = now_ms.saturating_add(self.interval_ms);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Events held back since the last line that passed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // From agent/src/ship/shipper.rs.
    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let mut g = LogGate::new(100);
        assert_eq!(g.check(1000), Some(0));
        assert_eq!(g.check(1050), None);
        assert_eq!(g.check(1099), None);
        assert_eq!(g.suppressed(), 2);
        assert_eq!(g.check(1100), Some(2));
        assert_eq!(g.check(1150), None);
        assert_eq!(g.check(5000), Some(1));
    }

    #[test]
    fn the_first_event_passes_even_at_time_zero() {
        // The rule engine's gate let its first line through at any time.
        let mut g = LogGate::every(Duration::from_secs(10));
        assert_eq!(g.check(0), Some(0));
        assert_eq!(g.check(9_999), None);
        assert_eq!(g.check(10_000), Some(1));
    }

    proptest! {
        #[test]
        fn at_most_one_line_per_interval_and_nothing_is_lost(
            interval in 1u64..10_000,
            steps in prop::collection::vec(0u64..5_000, 1..200),
        ) {
            let mut g = LogGate::new(interval);
            let mut now = 0u64;
            let mut passed: Vec<u64> = Vec::new();
            let mut reported = 0u64;
            for s in &steps {
                now += s;
                if let Some(n) = g.check(now) {
                    if let Some(last) = passed.last() {
                        prop_assert!(now - last >= interval, "two lines within one interval");
                    }
                    passed.push(now);
                    reported += n;
                }
            }
            prop_assert!(!passed.is_empty(), "the first event always passes");
            // Every event is either logged or counted in a later line or still pending.
            prop_assert_eq!(passed.len() as u64 + reported + g.suppressed(), steps.len() as u64);
        }
    }
}
