//! PutRecords requests: the Kinesis limits of one call, the entries it carries, and
//! the [`Encoder`] that packs queued records into entries. Pure.
//!
//! An entry is one Kinesis record. It carries the buffer ids of every point it
//! holds: Kinesis answers per entry, and that answer applies to all of its ids
//! (accepted: they all leave the buffer; failed: they are all resent). Today's
//! encoder, [`OnePerRecord`], puts one point in each entry; an aggregating encoder
//! (many points per Kinesis record, the KPL format) implements the same trait.

use super::config::{KINESIS_MAX_CALL_BYTES, KINESIS_MAX_RECORDS, KINESIS_MAX_RECORD_BYTES};
use super::queue::QueuedRecord;
use std::sync::Arc;

/// Size limits of one PutRecords call, as Kinesis counts them (data + partition key bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    max_entries: usize,
    max_bytes: usize,
    max_entry_bytes: usize,
    /// Buffered points a call is "full" at: `max_entries` with one point per entry;
    /// more with aggregation, where bytes and keys are the real limits.
    max_points: usize,
}

/// Points a KPL call is full at: at 10,000 points/s that is two calls a second,
/// and the queue (twice this) stays a few MB.
pub const KPL_POINTS_PER_CALL: usize = 5_000;

impl BatchLimits {
    /// Clamps to the Kinesis limits; an entry may never be larger than a whole call,
    /// so every record that is not dead-lettered fits an empty request (progress).
    pub fn new(max_entries: usize, max_bytes: usize, max_entry_bytes: usize) -> Self {
        let max_entries = max_entries.clamp(1, KINESIS_MAX_RECORDS);
        let max_bytes = max_bytes.clamp(1, KINESIS_MAX_CALL_BYTES);
        let max_entry_bytes = max_entry_bytes
            .clamp(1, KINESIS_MAX_RECORD_BYTES)
            .min(max_bytes);
        BatchLimits {
            max_entries,
            max_bytes,
            max_entry_bytes,
            max_points: max_entries,
        }
    }

    /// A call counts as full at `points` buffered points (never fewer than its entries).
    pub fn with_points(mut self, points: usize) -> Self {
        self.max_points = points.max(self.max_entries);
        self
    }

    pub fn from_config(cfg: &super::config::KinesisConfig) -> Self {
        let limits = BatchLimits::new(
            cfg.max_batch_records,
            cfg.max_batch_bytes,
            KINESIS_MAX_RECORD_BYTES,
        );
        match cfg.aggregation {
            super::config::Aggregation::Kpl => limits.with_points(KPL_POINTS_PER_CALL),
            super::config::Aggregation::None => limits,
        }
    }

    /// Entries (Kinesis records) per call.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
    /// Bytes per call.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
    /// Bytes per entry.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }
    /// Buffered points a call is full at.
    pub fn max_points(&self) -> usize {
        self.max_points
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits::new(
            KINESIS_MAX_RECORDS,
            KINESIS_MAX_CALL_BYTES,
            KINESIS_MAX_RECORD_BYTES,
        )
    }
}

/// One entry of a PutRecords call: a partition key, the bytes Kinesis stores, and
/// the buffer ids of the points in it (in id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEntry {
    body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// One point sent as it is stored: shares the queue's copy (no allocation).
    Single(Arc<QueuedRecord>),
    /// Bytes an encoder built from several points.
    Encoded {
        partition_key: String,
        data: Vec<u8>,
        record_ids: Vec<u64>,
    },
}

impl RequestEntry {
    /// One point, its data unchanged.
    pub fn single(record: Arc<QueuedRecord>) -> Self {
        RequestEntry {
            body: Body::Single(record),
        }
    }

    /// An entry an encoder built; `record_ids` are the points it holds, in id order.
    pub fn encoded(partition_key: String, data: Vec<u8>, record_ids: Vec<u64>) -> Self {
        debug_assert!(record_ids.windows(2).all(|w| w[0] < w[1]));
        RequestEntry {
            body: Body::Encoded {
                partition_key,
                data,
                record_ids,
            },
        }
    }

    pub fn partition_key(&self) -> &str {
        match &self.body {
            Body::Single(r) => &r.partition_key,
            Body::Encoded { partition_key, .. } => partition_key,
        }
    }

    pub fn data(&self) -> &[u8] {
        match &self.body {
            Body::Single(r) => &r.record.data,
            Body::Encoded { data, .. } => data,
        }
    }

    /// Buffer ids of the points in this entry, in id order.
    pub fn record_ids(&self) -> &[u64] {
        match &self.body {
            Body::Single(r) => std::slice::from_ref(&r.record.id),
            Body::Encoded { record_ids, .. } => record_ids,
        }
    }

    /// Size as Kinesis counts it against its limits: data plus partition key bytes.
    pub fn size(&self) -> usize {
        self.data().len() + self.partition_key().len()
    }
}

/// Packs the records of one call into entries.
///
/// The queue calls [`begin`](Encoder::begin), then offers records in send order
/// (id order, with the per-key ordering rule already applied), then takes the
/// entries with [`finish`](Encoder::finish). Contract:
/// - the entries respect `limits` (entries and bytes per call, bytes per entry);
/// - a record that is not a dead letter (see `queue::dead_letter_reason`) is always
///   taken by an empty request, so the queue makes progress;
/// - within one partition key, entries and the ids in them keep the offered order.
pub trait Encoder {
    /// Starts an empty request under `limits`.
    fn begin(&mut self, limits: &BatchLimits);
    /// Takes `record` if the request still has room for it; `false` leaves the
    /// request unchanged (the queue then holds back the rest of its key).
    fn offer(&mut self, record: &Arc<QueuedRecord>) -> bool;
    /// Nothing more can fit: the queue stops offering.
    fn is_full(&self) -> bool;
    /// The request's entries, in request order; the encoder is empty again.
    fn finish(&mut self) -> Vec<RequestEntry>;
}

impl<E: Encoder + ?Sized> Encoder for Box<E> {
    fn begin(&mut self, limits: &BatchLimits) {
        (**self).begin(limits)
    }
    fn offer(&mut self, record: &Arc<QueuedRecord>) -> bool {
        (**self).offer(record)
    }
    fn is_full(&self) -> bool {
        (**self).is_full()
    }
    fn finish(&mut self) -> Vec<RequestEntry> {
        (**self).finish()
    }
}

/// One point per Kinesis record, its stored JSON unchanged.
#[derive(Debug, Default)]
pub struct OnePerRecord {
    limits: BatchLimits,
    entries: Vec<RequestEntry>,
    bytes: usize,
}

impl Encoder for OnePerRecord {
    fn begin(&mut self, limits: &BatchLimits) {
        self.limits = *limits;
        self.entries.clear();
        self.bytes = 0;
    }

    fn offer(&mut self, record: &Arc<QueuedRecord>) -> bool {
        let size = record.size();
        if self.is_full()
            || size > self.limits.max_entry_bytes
            || self.bytes + size > self.limits.max_bytes
        {
            return false;
        }
        self.bytes += size;
        self.entries.push(RequestEntry::single(Arc::clone(record)));
        true
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.limits.max_entries
    }

    fn finish(&mut self) -> Vec<RequestEntry> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;
    use proptest::prelude::*;

    fn rec(id: u64, key: &str, len: usize) -> Arc<QueuedRecord> {
        Arc::new(QueuedRecord::new(StoredRecord {
            id,
            created_at: 0,
            partition_key: key.to_owned(),
            data: vec![b'x'; len],
        }))
    }

    #[test]
    fn limits_are_clamped_to_kinesis() {
        let l = BatchLimits::new(10_000, usize::MAX, usize::MAX);
        assert_eq!(l.max_entries(), 500);
        assert_eq!(l.max_bytes(), 5 * 1024 * 1024);
        assert_eq!(l.max_entry_bytes(), 1024 * 1024);
        let l = BatchLimits::new(0, 10, 100);
        assert_eq!(
            (l.max_entries(), l.max_bytes(), l.max_entry_bytes()),
            (1, 10, 10)
        );
    }

    #[test]
    fn entries_carry_key_data_and_ids() {
        let single = RequestEntry::single(rec(7, "eq-1", 3));
        assert_eq!(single.partition_key(), "eq-1");
        assert_eq!(single.data(), b"xxx");
        assert_eq!(single.record_ids(), &[7]);
        assert_eq!(single.size(), 7);
        let many = RequestEntry::encoded("eq-2".into(), b"ab".to_vec(), vec![3, 5, 9]);
        assert_eq!(many.record_ids(), &[3, 5, 9]);
        assert_eq!(many.size(), 6);
    }

    #[test]
    fn one_per_record_stops_at_each_limit() {
        let mut e = OnePerRecord::default();
        // Entries per call.
        e.begin(&BatchLimits::new(2, 1000, 1000));
        assert!(e.offer(&rec(1, "a", 1)));
        assert!(!e.is_full());
        assert!(e.offer(&rec(2, "a", 1)));
        assert!(e.is_full());
        assert!(!e.offer(&rec(3, "a", 1)));
        let ids: Vec<u64> = e
            .finish()
            .iter()
            .flat_map(|x| x.record_ids().to_vec())
            .collect();
        assert_eq!(ids, vec![1, 2]);
        // Bytes per call: a record that does not fit is refused, a smaller one still fits.
        e.begin(&BatchLimits::new(10, 20, 20));
        assert!(e.offer(&rec(1, "a", 14)));
        assert!(!e.offer(&rec(2, "b", 9)));
        assert!(e.offer(&rec(3, "c", 4)));
        assert_eq!(e.finish().len(), 2);
        // Bytes per entry.
        e.begin(&BatchLimits::new(10, 100, 10));
        assert!(!e.offer(&rec(1, "a", 10)));
        assert!(e.finish().is_empty(), "finish empties the request");
    }

    proptest! {
        #[test]
        fn one_per_record_respects_limits_and_takes_any_fitting_record_when_empty(
            sizes in proptest::collection::vec(1usize..60, 1..100),
            max_entries in 1usize..10,
            max_bytes in 1usize..200,
            max_entry_bytes in 1usize..100,
        ) {
            let limits = BatchLimits::new(max_entries, max_bytes, max_entry_bytes);
            let mut e = OnePerRecord::default();
            e.begin(&limits);
            let mut offered = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let r = rec(i as u64 + 1, "k", len);
                if e.offer(&r) {
                    offered.push(r.id());
                }
            }
            let entries = e.finish();
            prop_assert!(entries.len() <= limits.max_entries());
            prop_assert!(entries.iter().map(|x| x.size()).sum::<usize>() <= limits.max_bytes());
            prop_assert!(entries.iter().all(|x| x.size() <= limits.max_entry_bytes()));
            let ids: Vec<u64> = entries.iter().flat_map(|x| x.record_ids().to_vec()).collect();
            prop_assert_eq!(ids, offered, "entries in offered order");
            // Progress: a record within the per-entry limit always fits an empty request.
            for (i, &len) in sizes.iter().enumerate() {
                e.begin(&limits);
                let r = rec(i as u64 + 1, "k", len);
                prop_assert_eq!(e.offer(&r), r.size() <= limits.max_entry_bytes());
            }
        }
    }
}
