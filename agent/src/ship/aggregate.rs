//! KPL aggregation: many points in one Kinesis record, in the format the KPL writes and
//! the KCL (and the rule engine) unpack. Pure; an [`Encoder`] like [`OnePerRecord`].
//!
//! The aggregation key is the partition key (the equipment id by default): every point
//! of an aggregated record shares it, so the record lands on that key's shard, a
//! consumer reading any shard finds each key whole there, and no explicit hash key is
//! needed. At most one entry per key goes in a call: Kinesis may accept a later entry
//! of a call and refuse an earlier one, and two entries of one key in one call would
//! let the later overtake. With one per key, the queue's rule (a failed key resends
//! only its failed records before anything later) keeps every key in order, inside
//! and across aggregated records.
//!
//! An entry of a single point is sent as that point's plain JSON (as the KPL does),
//! which also covers a point too large to aggregate within the 1 MiB record limit.
//!
//! [`OnePerRecord`]: super::request::OnePerRecord

use super::queue::QueuedRecord;
use super::request::{BatchLimits, Encoder, RequestEntry};
use linewatch_schemas::kpl;
use std::collections::HashMap;
use std::sync::Arc;

/// Packs the points of one call into KPL aggregated records, one per partition key.
#[derive(Debug, Default)]
pub struct KplAggregator {
    limits: BatchLimits,
    entries: Vec<Open>,
    /// Per lane (an aggregated record never mixes lanes, so its ids stay in order):
    /// the open entry of each key.
    by_key: [HashMap<String, usize>; 2],
    /// The call's size as Kinesis counts it (data + partition key of every entry).
    bytes: usize,
}

#[derive(Debug)]
struct Open {
    records: Vec<Arc<QueuedRecord>>,
    /// Size of the aggregated record so far (what `kpl::aggregate` will build).
    kpl_bytes: usize,
    /// Holds a point too large to aggregate: sent plain, takes nothing more.
    plain: bool,
}

impl KplAggregator {
    fn entry_size(key: &str, kpl_bytes: usize) -> usize {
        kpl_bytes + key.len()
    }
}

impl Encoder for KplAggregator {
    fn begin(&mut self, limits: &BatchLimits) {
        self.limits = *limits;
        self.entries.clear();
        self.by_key.iter_mut().for_each(HashMap::clear);
        self.bytes = 0;
    }

    fn offer(&mut self, record: &Arc<QueuedRecord>) -> bool {
        let key = record.partition_key.as_str();
        let data_len = record.record.data.len();
        let lane = record.lane.index();
        if let Some(&i) = self.by_key[lane].get(key) {
            let open = &self.entries[i];
            if open.plain {
                return false;
            }
            let grown = open.kpl_bytes + kpl::sub_record_len(data_len);
            let added = grown - open.kpl_bytes;
            if Self::entry_size(key, grown) > self.limits.max_entry_bytes()
                || self.bytes + added > self.limits.max_bytes()
            {
                return false;
            }
            let open = &mut self.entries[i];
            open.kpl_bytes = grown;
            open.records.push(Arc::clone(record));
            self.bytes += added;
            return true;
        }
        if self.entries.len() >= self.limits.max_entries() {
            return false;
        }
        let kpl_bytes = kpl::single_key_size(key.len(), [data_len]);
        let (size, plain) = if Self::entry_size(key, kpl_bytes) <= self.limits.max_entry_bytes() {
            (Self::entry_size(key, kpl_bytes), false)
        } else {
            // Too big to wrap: plain, if it fits at all (else the queue dead-letters it).
            (record.size(), true)
        };
        if size > self.limits.max_entry_bytes() || self.bytes + size > self.limits.max_bytes() {
            return false;
        }
        self.bytes += size;
        self.by_key[lane].insert(key.to_owned(), self.entries.len());
        self.entries.push(Open {
            records: vec![Arc::clone(record)],
            kpl_bytes,
            plain,
        });
        true
    }

    fn is_full(&self) -> bool {
        // Entries at the limit can still grow: only the call's bytes end it for sure.
        self.bytes >= self.limits.max_bytes()
    }

    fn finish(&mut self) -> Vec<RequestEntry> {
        self.by_key.iter_mut().for_each(HashMap::clear);
        self.bytes = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|open| match open.records.as_slice() {
                [one] => RequestEntry::single(Arc::clone(one)),
                records => {
                    let key = records[0].partition_key.clone();
                    let subs: Vec<(&str, Option<&str>, &[u8])> = records
                        .iter()
                        .map(|r| (key.as_str(), None, r.record.data.as_slice()))
                        .collect();
                    let data = kpl::aggregate(&subs);
                    debug_assert_eq!(data.len(), open.kpl_bytes);
                    let ids = records.iter().map(|r| r.record.id).collect();
                    RequestEntry::encoded(key, data, ids)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A point of at least `len` bytes that starts with its id (so each is distinct).
    fn rec(id: u64, key: &str, len: usize) -> Arc<QueuedRecord> {
        let mut data = format!("{id}:").into_bytes();
        data.resize(len.max(data.len()), b'x');
        Arc::new(QueuedRecord::new(StoredRecord {
            id,
            created_at: 0,
            partition_key: key.to_owned(),
            data,
        }))
    }

    /// The live lane goes first with higher ids: an aggregated record per (lane, key)
    /// keeps each record's ids in order.
    #[test]
    fn lanes_of_one_key_aggregate_apart() {
        let mut e = KplAggregator::default();
        e.begin(&BatchLimits::default());
        let backfill = |id| {
            let r = (*rec(id, "a", 20)).clone();
            let data = r.record.data.clone();
            Arc::new(r.in_backfill(data, id))
        };
        for r in [rec(10, "a", 20), rec(11, "a", 20), backfill(2), backfill(3)] {
            assert!(e.offer(&r));
        }
        let entries = e.finish();
        let ids: Vec<&[u64]> = entries.iter().map(|e| e.record_ids()).collect();
        assert_eq!(ids, [&[10, 11][..], &[2, 3][..]]);
    }

    #[test]
    fn points_of_a_key_share_one_record_and_singles_stay_plain() {
        let mut e = KplAggregator::default();
        e.begin(&BatchLimits::default());
        for (id, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
            assert!(e.offer(&rec(id, key, 20)));
        }
        let entries = e.finish();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].partition_key(), "a");
        assert_eq!(entries[0].record_ids(), &[1, 3, 4]);
        let subs = kpl::deaggregate(entries[0].data(), "a").unwrap();
        let datas: Vec<&[u8]> = subs.iter().map(|s| s.data.as_slice()).collect();
        assert_eq!(
            datas,
            vec![
                rec(1, "a", 20).record.data.as_slice(),
                rec(3, "a", 20).record.data.as_slice(),
                rec(4, "a", 20).record.data.as_slice()
            ]
        );
        // One point alone goes as it is stored.
        assert_eq!(entries[1].record_ids(), &[2]);
        assert_eq!(entries[1].data(), rec(2, "b", 20).record.data.as_slice());
    }

    #[test]
    fn a_point_too_big_to_wrap_goes_plain_and_takes_nothing_more() {
        let max = 1024 * 1024;
        let mut e = KplAggregator::default();
        e.begin(&BatchLimits::default());
        let big = rec(1, "k", max - 1 - 10);
        assert!(e.offer(&big), "fits plain");
        assert!(!e.offer(&rec(2, "k", 5)), "its key is closed for this call");
        assert!(e.offer(&rec(3, "other", 5)));
        let entries = e.finish();
        assert_eq!(entries[0].data(), big.record.data.as_slice());
    }

    proptest! {
        /// Within the limits; at most one entry per key; each entry unpacks to exactly
        /// the points taken for its key, in offer order; and an empty call takes any
        /// point the queue would not dead-letter (progress).
        #[test]
        fn limits_order_and_content(
            recs in proptest::collection::vec((0usize..5, 0usize..3000), 1..200),
            max_entries in 1usize..8,
            max_bytes in 64usize..40_000,
            max_entry_bytes in 64usize..20_000,
        ) {
            let limits = BatchLimits::new(max_entries, max_bytes, max_entry_bytes);
            let mut e = KplAggregator::default();
            e.begin(&limits);
            let keys = ["eq-a", "eq-b", "line-1/eq-c", "d", "eq-e"];
            let mut taken: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
            let mut taken_ids = Vec::new();
            for (i, (k, len)) in recs.iter().enumerate() {
                let r = rec(i as u64 + 1, keys[*k], *len);
                if e.offer(&r) {
                    taken.entry(keys[*k]).or_default().push(r.record.data.clone());
                    taken_ids.push(r.record.id);
                }
            }
            let entries = e.finish();
            prop_assert!(entries.len() <= limits.max_entries());
            prop_assert!(entries.iter().map(|x| x.size()).sum::<usize>() <= limits.max_bytes());
            let mut seen_keys = std::collections::HashSet::new();
            let mut ids = Vec::new();
            for entry in &entries {
                prop_assert!(entry.size() <= limits.max_entry_bytes());
                prop_assert!(seen_keys.insert(entry.partition_key().to_owned()), "one entry per key");
                let subs = kpl::deaggregate(entry.data(), entry.partition_key()).unwrap();
                let datas: Vec<Vec<u8>> = subs.into_iter().map(|s| s.data).collect();
                prop_assert_eq!(&datas, &taken[entry.partition_key()]);
                ids.extend_from_slice(entry.record_ids());
            }
            ids.sort_unstable();
            prop_assert_eq!(ids, taken_ids);
            for (i, (k, len)) in recs.iter().enumerate() {
                e.begin(&limits);
                let r = rec(i as u64 + 1, keys[*k], *len);
                prop_assert_eq!(e.offer(&r), r.size() <= limits.max_entry_bytes());
            }
        }
    }
}
