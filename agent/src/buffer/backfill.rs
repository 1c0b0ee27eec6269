//! Which buffered ids are the backfill: the records that were waiting when the
//! uplink fell behind, shipped behind live data (see `ship/lanes.rs`).
//!
//! A pure set of disjoint, ascending id ranges. The buffer persists it in a metadata
//! key, so a record keeps its lane across restarts: a record sent in one lane and
//! resent in the other after a crash would escape the rule engine's resend drop,
//! which numbers each lane apart.

use crate::ship::lanes::Lane;

/// Disjoint id ranges `(lo, hi)` (inclusive), ascending, none adjacent to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillRanges {
    ranges: Vec<(u64, u64)>,
}

impl BackfillRanges {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether `id` is a backfill id.
    pub fn contains(&self, id: u64) -> bool {
        // The first range that ends at or after `id`.
        let i = self.ranges.partition_point(|&(_, hi)| hi < id);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= id)
    }

    /// The first backfill id at or after `id`, if any.
    pub fn next_at_or_after(&self, id: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, hi)| hi < id);
        self.ranges.get(i).map(|&(lo, _)| lo.max(id))
    }

    /// The end of the range holding `id` (`None`: `id` is not backfill).
    pub fn end_of(&self, id: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, hi)| hi < id);
        self.ranges
            .get(i)
            .and_then(|&(lo, hi)| (lo <= id).then_some(hi))
    }

    /// Whether `id` is read in `lane`.
    pub fn in_lane(&self, lane: Lane, id: u64) -> bool {
        self.contains(id) == (lane == Lane::Backfill)
    }

    /// The first id of `lane` at or after `id` (`None`: no more).
    pub fn next_in_lane(&self, lane: Lane, id: u64) -> Option<u64> {
        match lane {
            Lane::Backfill => self.next_at_or_after(id),
            Lane::Live => {
                let mut id = id;
                while let Some(end) = self.end_of(id) {
                    id = end.checked_add(1)?;
                }
                Some(id)
            }
        }
    }

    /// Adds `lo..=hi`, merging what it overlaps or touches.
    pub fn add(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        let (mut lo, mut hi) = (lo, hi);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b.saturating_add(1) < lo {
                out.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        out.sort_unstable();
        self.ranges = out;
    }

    /// Forgets the ids below `first` (they are no longer stored). Returns whether
    /// anything changed.
    pub fn forget_below(&mut self, first: u64) -> bool {
        let before = self.ranges.clone();
        self.ranges.retain(|&(_, hi)| hi >= first);
        if let Some(r) = self.ranges.first_mut() {
            r.0 = r.0.max(first);
        }
        before != self.ranges
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The persisted form: each range as two u64 BE.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.ranges.len() * 16);
        for &(lo, hi) in &self.ranges {
            v.extend_from_slice(&lo.to_be_bytes());
            v.extend_from_slice(&hi.to_be_bytes());
        }
        v
    }

    /// Reads [`Self::encode`]'s form; anything malformed is refused.
    pub fn decode(bytes: &[u8]) -> Result<BackfillRanges, &'static str> {
        if !bytes.len().is_multiple_of(16) {
            return Err("backfill ranges: length is not a multiple of 16");
        }
        let mut out = BackfillRanges::default();
        for pair in bytes.chunks_exact(16) {
            let lo = u64::from_be_bytes(pair[..8].try_into().expect("8 bytes"));
            let hi = u64::from_be_bytes(pair[8..].try_into().expect("8 bytes"));
            if lo > hi {
                return Err("backfill ranges: a range ends before it starts");
            }
            out.add(lo, hi);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The ranges hold exactly the ids added and not forgotten, stay disjoint and
        /// ascending, and survive their persisted form.
        #[test]
        fn ranges_are_the_set_of_ids_added(
            ops in proptest::collection::vec((0u64..200, 0u64..20, any::<bool>()), 0..40),
        ) {
            let mut r = BackfillRanges::default();
            let mut model = BTreeSet::new();
            for (lo, len, forget) in ops {
                if forget {
                    r.forget_below(lo);
                    model.retain(|&id| id >= lo);
                } else {
                    r.add(lo, lo + len);
                    model.extend(lo..=lo + len);
                }
            }
            for id in 0..230 {
                prop_assert_eq!(r.contains(id), model.contains(&id), "id {}", id);
                prop_assert_eq!(r.next_at_or_after(id), model.range(id..).next().copied());
                prop_assert_eq!(r.in_lane(Lane::Live, id), !model.contains(&id));
                let next_live = (id..).find(|i| !model.contains(i));
                prop_assert_eq!(r.next_in_lane(Lane::Live, id), next_live);
            }
            for w in r.ranges().windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "disjoint, apart: {:?}", r.ranges());
            }
            prop_assert_eq!(BackfillRanges::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn end_of_names_the_range_holding_an_id() {
        let mut r = BackfillRanges::default();
        r.add(10, 20);
        r.add(30, 40);
        assert_eq!(r.end_of(15), Some(20));
        assert_eq!(r.end_of(25), None);
        assert_eq!(r.end_of(30), Some(40));
    }

    #[test]
    fn malformed_persisted_ranges_are_refused() {
        assert!(BackfillRanges::decode(&[0; 15]).is_err());
        let mut bad = 5u64.to_be_bytes().to_vec();
        bad.extend_from_slice(&4u64.to_be_bytes());
        assert!(BackfillRanges::decode(&bad).is_err());
    }
}
