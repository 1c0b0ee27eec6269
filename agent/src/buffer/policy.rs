//! The overflow decision: which incoming records fit under `max_bytes`, and how
//! much of the oldest buffered data must go to make room. Pure; the store applies it.
//!
//! Records the shipper holds (handed out, not yet acknowledged by Kinesis) are
//! never evicted: they may already be in flight, and dropping them would make
//! the drop count lie.

use crate::config::OverflowPolicy;

/// The buffer's state as far as admission is concerned (logical bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of every record in the buffer.
    pub used: u64,
    /// Of those, bytes the shipper holds (not evictable).
    pub held: u64,
    pub max_bytes: u64,
}

impl Usage {
    /// Bytes that may be evicted: buffered and not held by the shipper.
    pub fn evictable(&self) -> u64 {
        self.used.saturating_sub(self.held)
    }
}

/// What to do with one group commit.
///
/// The incoming records are split into three runs, in order:
/// `drop_front` (the oldest incoming, dropped by `drop_oldest`), `accept`
/// (stored), `reject_back` (the newest incoming, refused by `reject_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admission {
    pub drop_front: usize,
    pub accept: usize,
    pub reject_back: usize,
    /// Evict at least this many bytes of the oldest evictable records before
    /// appending. Always at most [`Usage::evictable`], so whole-record eviction
    /// can always reach it.
    pub evict_bytes: u64,
}

impl Admission {
    /// Incoming records not stored.
    pub fn refused(&self) -> usize {
        self.drop_front + self.reject_back
    }
}

/// Decide a group commit of records of `incoming` sizes (oldest first).
///
/// - `RejectNew` keeps the oldest data: it evicts nothing and accepts the longest
///   prefix of `incoming` that fits in the free space.
/// - `DropOldest` keeps the newest data: it accepts the longest suffix of
///   `incoming` that fits once everything evictable is gone, and evicts just
///   enough of the oldest buffered bytes to make room. It also brings an
///   over-full buffer (e.g. `max_bytes` lowered between runs) back under the bound.
pub fn admit(usage: Usage, incoming: &[u64], policy: OverflowPolicy) -> Admission {
    match policy {
        OverflowPolicy::RejectNew => {
            let free = usage.max_bytes.saturating_sub(usage.used);
            let (accept, _) = fitting_run(incoming.iter().copied(), free);
            Admission {
                drop_front: 0,
                accept,
                reject_back: incoming.len() - accept,
                evict_bytes: 0,
            }
        }
        OverflowPolicy::DropOldest => {
            let room = usage.max_bytes.saturating_sub(usage.held);
            let (accept, accepted_bytes) = fitting_run(incoming.iter().rev().copied(), room);
            // accepted_bytes <= max - held, hence the eviction is <= used - held.
            let evict_bytes = usage
                .used
                .saturating_add(accepted_bytes)
                .saturating_sub(usage.max_bytes)
                .min(usage.evictable());
            Admission {
                drop_front: incoming.len() - accept,
                accept,
                reject_back: 0,
                evict_bytes,
            }
        }
    }
}

/// Length and byte sum of the longest leading run of `sizes` within `limit`.
fn fitting_run(sizes: impl Iterator<Item = u64>, limit: u64) -> (usize, u64) {
    let mut n = 0;
    let mut sum = 0u64;
    for s in sizes {
        match sum.checked_add(s) {
            Some(next) if next <= limit => {
                sum = next;
                n += 1;
            }
            _ => break,
        }
    }
    (n, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(used: u64, held: u64, max_bytes: u64) -> Usage {
        Usage {
            used,
            held,
            max_bytes,
        }
    }

    #[test]
    fn everything_fits() {
        for p in [OverflowPolicy::RejectNew, OverflowPolicy::DropOldest] {
            let a = admit(usage(10, 0, 100), &[10, 20], p);
            assert_eq!(
                a,
                Admission {
                    drop_front: 0,
                    accept: 2,
                    reject_back: 0,
                    evict_bytes: 0
                }
            );
        }
    }

    #[test]
    fn reject_new_keeps_the_oldest() {
        let a = admit(usage(80, 0, 100), &[10, 10, 10], OverflowPolicy::RejectNew);
        assert_eq!((a.accept, a.reject_back, a.evict_bytes), (2, 1, 0));
    }

    #[test]
    fn drop_oldest_evicts_just_enough() {
        let a = admit(usage(80, 0, 100), &[10, 10, 10], OverflowPolicy::DropOldest);
        assert_eq!((a.drop_front, a.accept, a.evict_bytes), (0, 3, 10));
    }

    #[test]
    fn drop_oldest_cannot_evict_held_records() {
        // 90 of 100 bytes are in flight: only 10 bytes of the newest incoming fit.
        let a = admit(
            usage(95, 90, 100),
            &[10, 10, 10],
            OverflowPolicy::DropOldest,
        );
        assert_eq!((a.drop_front, a.accept, a.evict_bytes), (2, 1, 5));
    }

    #[test]
    fn drop_oldest_shrinks_an_over_full_buffer() {
        let a = admit(usage(150, 20, 100), &[], OverflowPolicy::DropOldest);
        assert_eq!(a.evict_bytes, 50);
        let a = admit(usage(150, 20, 100), &[], OverflowPolicy::RejectNew);
        assert_eq!(a.evict_bytes, 0);
    }

    fn any_policy() -> impl Strategy<Value = OverflowPolicy> {
        prop_oneof![
            Just(OverflowPolicy::DropOldest),
            Just(OverflowPolicy::RejectNew)
        ]
    }

    /// A consistent buffer state: held <= used.
    fn any_usage() -> impl Strategy<Value = Usage> {
        (0u64..10_000, 0u64..10_000, 1u64..10_000).prop_map(|(a, b, max_bytes)| Usage {
            used: a.max(b),
            held: a.min(b),
            max_bytes,
        })
    }

    proptest! {
        #[test]
        fn counts_add_up_and_eviction_is_possible(
            u in any_usage(),
            incoming in proptest::collection::vec(1u64..2_000, 0..40),
            p in any_policy(),
        ) {
            let a = admit(u, &incoming, p);
            prop_assert_eq!(a.drop_front + a.accept + a.reject_back, incoming.len());
            prop_assert!(a.evict_bytes <= u.evictable());
        }

        #[test]
        fn never_above_max_after_applying(
            u in any_usage(),
            incoming in proptest::collection::vec(1u64..2_000, 0..40),
            p in any_policy(),
        ) {
            let a = admit(u, &incoming, p);
            let accepted: u64 = incoming[a.drop_front..a.drop_front + a.accept].iter().sum();
            let after = u.used - a.evict_bytes + accepted;
            match p {
                // Never grows past the bound; a buffer already over it (max lowered
                // between runs) takes nothing new.
                OverflowPolicy::RejectNew => prop_assert!(after <= u.max_bytes.max(u.used)),
                // Always back under the bound, unless the shipper alone holds more.
                OverflowPolicy::DropOldest => prop_assert!(after <= u.max_bytes.max(u.held)),
            }
            if u.used >= u.max_bytes && p == OverflowPolicy::RejectNew {
                prop_assert_eq!(a.accept, 0);
            }
        }

        #[test]
        fn reject_new_never_evicts_and_refuses_only_what_does_not_fit(
            u in any_usage(),
            incoming in proptest::collection::vec(1u64..2_000, 0..40),
        ) {
            let a = admit(u, &incoming, OverflowPolicy::RejectNew);
            prop_assert_eq!(a.evict_bytes, 0);
            prop_assert_eq!(a.drop_front, 0);
            if a.reject_back > 0 {
                let with_next: u64 = incoming[..=a.accept].iter().sum();
                prop_assert!(u.used + with_next > u.max_bytes);
            }
        }

        #[test]
        fn drop_oldest_drops_only_what_cannot_fit_after_evicting_everything(
            u in any_usage(),
            incoming in proptest::collection::vec(1u64..2_000, 0..40),
        ) {
            let a = admit(u, &incoming, OverflowPolicy::DropOldest);
            prop_assert_eq!(a.reject_back, 0);
            if a.drop_front > 0 {
                // The newest dropped one would not fit even with every evictable byte gone.
                let with_next: u64 = incoming[a.drop_front - 1..].iter().sum();
                prop_assert!(u.held + with_next > u.max_bytes);
            }
            // It evicts no more than needed.
            let accepted: u64 = incoming[a.drop_front..].iter().sum();
            if a.evict_bytes > 0 {
                prop_assert_eq!(u.used - a.evict_bytes + accepted, u.max_bytes.max(u.held));
            }
        }
    }
}
