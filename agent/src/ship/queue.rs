//! The shipper's decisions, as a pure state machine: which buffered records go into
//! the next PutRecords call, and what a call's outcome means for each of them.
//!
//! No I/O and no clock calls: the caller passes `now_ms` in and performs the call.
//!
//! Ordering rule (per partition key K): records of K are sent in id order. Once a
//! record of K failed, only the failed records of K are resent (still in id order)
//! until every one of them was accepted; later records of K wait. Other keys flow on.
//! A record of K that does not fit the batch being built keeps every later record of
//! K out of that batch. While a record of K is in flight, no other record of K is
//! handed out, so concurrent batches could never reorder a key either.
//!
//! The queue decides which records go and in what order; an [`Encoder`] packs them
//! into PutRecords entries (one point each today, many once aggregation plugs in).
//! Kinesis answers per entry and [`ShipQueue::apply`] spreads that answer over the
//! entry's ids, so the rule above holds per record however records are packed: a
//! failed entry fails all its ids, which are resent before anything later of the key.
//! `wants` and `readiness` count records against the limits' points per call: the
//! entries-per-call limit with one point per entry, more with KPL aggregation (where
//! a call is really bounded by its bytes and keys), so an aggregated call is not sent
//! a tenth full.
//!
//! Two lanes ([`Lane`]): the rule above holds per (lane, key), and a call takes live
//! records first, then backfill records up to the allowance the caller passes (what
//! the shard's budget holds above the live reserve).

use super::config::KINESIS_MAX_PARTITION_KEY_CHARS;
use super::lanes::{self, Lane};
use super::request::{BatchLimits, Encoder, RequestEntry};
use crate::buffer::StoredRecord;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// How much the queue holds before it stops asking the store for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCapacity {
    pub records: usize,
    pub bytes: usize,
}

impl QueueCapacity {
    /// Room for a few batches: enough to fill the next call while keys are blocked by
    /// failures, small enough for a gateway's memory.
    pub fn for_limits(limits: &BatchLimits) -> Self {
        QueueCapacity {
            records: limits
                .max_entries()
                .saturating_mul(4)
                .max(limits.max_points().saturating_mul(2)),
            bytes: limits.max_bytes().saturating_mul(2),
        }
    }
}

/// A buffered record with the partition key it is sent under (the equipment id, or a
/// random key when `partition_key = "random"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    pub record: StoredRecord,
    pub partition_key: String,
    pub lane: Lane,
    /// The point's event time, known for backfill records (their data is parsed to
    /// add `Bfl`): the low watermark heartbeats declare is the least of them.
    pub event_time: Option<u64>,
}

impl QueuedRecord {
    /// Sent under the record's own key (the equipment id).
    pub fn new(record: StoredRecord) -> Self {
        let partition_key = record.partition_key.clone();
        Self::with_key(record, partition_key)
    }

    pub fn with_key(record: StoredRecord, partition_key: String) -> Self {
        QueuedRecord {
            record,
            partition_key,
            lane: Lane::Live,
            event_time: None,
        }
    }

    /// The same record in the backfill lane, its data already marked.
    pub fn in_backfill(mut self, data: Vec<u8>, event_time: u64) -> Self {
        self.record.data = data;
        self.lane = Lane::Backfill;
        self.event_time = Some(event_time);
        self
    }

    pub fn id(&self) -> u64 {
        self.record.id
    }

    /// Size as Kinesis counts it against its limits: data plus partition key bytes.
    pub fn size(&self) -> usize {
        self.record.data.len() + self.partition_key.len()
    }
}

/// Why a record can never be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Data + partition key exceed the per-record limit.
    Oversize { bytes: usize, limit: usize },
    /// Empty or longer than 256 characters: Kinesis would reject the whole call.
    InvalidPartitionKey,
}

impl DeadLetterReason {
    /// Stable name for the dead-letter file and the metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::Oversize { .. } => "oversize",
            DeadLetterReason::InvalidPartitionKey => "invalid_partition_key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub record: Arc<QueuedRecord>,
    pub reason: DeadLetterReason,
}

/// One PutRecords call to make, plus records taken out as dead letters on the way.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The call's entries in request order; the ids of one key are in id order.
    pub entries: Vec<RequestEntry>,
    /// Removed from the queue for good: write them to the dead-letter file.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Backfill records could have gone but the allowance was spent.
    pub withheld_backfill: bool,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Entries (Kinesis records) in the call.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Buffered records (points) in the call.
    pub fn records(&self) -> usize {
        self.entries.iter().map(|e| e.record_ids().len()).sum()
    }
    /// Bytes as Kinesis counts them.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.size()).sum()
    }
    /// Every record id of the call, entry by entry.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .flat_map(|e| e.record_ids().iter().copied())
    }
}

/// Kinesis' answer for one entry of a call that succeeded (it applies to every id
/// in the entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordResult {
    Accepted,
    /// `ProvisionedThroughputExceededException`.
    Throttled,
    /// `InternalFailure`.
    InternalFailure,
    /// Any other error code (kept for the log).
    Failed {
        code: String,
    },
}

/// What became of a whole PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The call succeeded: one result per entry, in request order.
    Records(Vec<RecordResult>),
    /// The call failed and Kinesis wrote none of it (4xx, throttling of the call,
    /// connection refused).
    NotWritten { throttled: bool, error: String },
    /// The call may have been written in part or whole (timeout after sending,
    /// connection dropped, 5xx): everything is resent, so duplicates are possible.
    Unknown { error: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// Kinesis answered per record.
    Completed,
    NotWritten,
    Unknown,
}

/// What [`ShipQueue::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Ids Kinesis accepted (every id of every accepted entry), in id order:
    /// remove them from the store.
    pub accepted: Vec<u64>,
    /// Records (ids) not accepted; they stay queued and are resent.
    pub retrying: usize,
    /// Of `retrying`: throttled (per record, or the whole call was throttled).
    pub throttled: usize,
    /// Of `retrying`: per-record `InternalFailure`.
    pub internal_failures: usize,
    /// Of `retrying`: other per-record error codes, and whole-call failures that were not throttling.
    pub other_failures: usize,
    pub call: CallStatus,
    /// Some record was not accepted: wait before the next call.
    pub back_off: bool,
    /// Of `accepted`: backfill records.
    pub accepted_backfill: usize,
    /// `created_at` of the oldest live record accepted.
    pub oldest_live_accepted: Option<u64>,
}

/// When the next call should go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A full batch, a retry, a dead letter to write, or linger expired.
    Send,
    /// A partial batch waits for more records until this time (ms).
    WaitUntil(u64),
    /// Nothing can be sent.
    Idle,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("record {id} pushed after record {last}: the store must hand out each lane's records in increasing id order")]
pub struct OutOfOrder {
    pub id: u64,
    pub last: u64,
}

#[derive(Debug)]
struct Slot {
    rec: Arc<QueuedRecord>,
    enqueued_at_ms: u64,
    failed: bool,
    in_flight: bool,
    /// Live heartbeat candidate: its declared low watermark follows the backfill.
    heartbeat: bool,
    /// What its data declares now (the agent writes heartbeats declaring none).
    declared_low: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyState {
    queued: usize,
    failed: usize,
    in_flight: usize,
}

/// Records read from the store that Kinesis has not accepted yet, in id order.
#[derive(Debug)]
pub struct ShipQueue {
    entries: BTreeMap<u64, Slot>,
    /// Per lane: the keys' states.
    keys: [HashMap<String, KeyState>; 2],
    bytes: usize,
    /// Per lane: records and bytes held.
    lane_len: [usize; 2],
    lane_bytes: [usize; 2],
    last_pushed: [Option<u64>; 2],
    capacity: QueueCapacity,
    /// The last call failed whole (not written, or its outcome unknown).
    calls_failing: bool,
}

impl ShipQueue {
    pub fn new(capacity: QueueCapacity) -> Self {
        ShipQueue {
            entries: BTreeMap::new(),
            keys: [HashMap::new(), HashMap::new()],
            bytes: 0,
            lane_len: [0; 2],
            lane_bytes: [0; 2],
            last_pushed: [None; 2],
            capacity,
            calls_failing: false,
        }
    }

    /// Records held in `lane`.
    pub fn lane_len(&self, lane: Lane) -> usize {
        self.lane_len[lane.index()]
    }

    /// When the oldest record of `lane` held here was made (its `created_at`).
    pub fn oldest_created(&self, lane: Lane) -> Option<u64> {
        self.entries
            .values()
            .filter(|e| e.rec.lane == lane)
            .map(|e| e.rec.record.created_at)
            .min()
    }

    /// The least event time of the backfill records held (`created_at` where the
    /// event time is unknown).
    pub fn backfill_low(&self) -> Option<u64> {
        self.entries
            .values()
            .filter(|e| e.rec.lane == Lane::Backfill)
            .map(|e| e.rec.event_time.unwrap_or(e.rec.record.created_at))
            .min()
    }

    /// Has every live heartbeat not in flight declare `low` (see
    /// [`lanes::declare_low_watermark`]). Returns how many changed.
    pub fn declare_low_watermark(&mut self, low: Option<u64>) -> usize {
        let mut changed = 0;
        for e in self.entries.values_mut() {
            if !e.heartbeat || e.in_flight || e.rec.lane != Lane::Live || e.declared_low == low {
                continue;
            }
            e.declared_low = low;
            let Some(data) = lanes::declare_low_watermark(&e.rec.record.data, low) else {
                continue;
            };
            let mut rec = (*e.rec).clone();
            rec.record.data = data;
            let (old, new) = (e.rec.size(), rec.size());
            self.bytes = self.bytes + new - old;
            let lb = &mut self.lane_bytes[Lane::Live.index()];
            *lb = *lb + new - old;
            e.rec = Arc::new(rec);
            changed += 1;
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Bytes held (data + partition keys).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Highest live id ever pushed: where the next live read starts.
    pub fn last_pushed(&self) -> Option<u64> {
        self.last_pushed[Lane::Live.index()]
    }
    /// Highest id ever pushed in `lane`.
    pub fn last_pushed_in(&self, lane: Lane) -> Option<u64> {
        self.last_pushed[lane.index()]
    }
    /// Records waiting for a retry after a failure.
    pub fn failed(&self) -> usize {
        self.keys
            .iter()
            .flat_map(|k| k.values())
            .map(|k| k.failed)
            .sum()
    }
    /// Records handed out in a batch whose outcome is not applied yet.
    pub fn in_flight(&self) -> usize {
        self.keys
            .iter()
            .flat_map(|k| k.values())
            .map(|k| k.in_flight)
            .sum()
    }

    /// Adds a record read from the store. Ids must increase within its lane.
    pub fn push(&mut self, rec: QueuedRecord, now_ms: u64) -> Result<(), OutOfOrder> {
        let id = rec.id();
        let lane = rec.lane.index();
        if let Some(last) = self.last_pushed[lane] {
            if id <= last {
                return Err(OutOfOrder { id, last });
            }
        }
        self.last_pushed[lane] = Some(id);
        self.bytes += rec.size();
        self.lane_len[lane] += 1;
        self.lane_bytes[lane] += rec.size();
        self.keys[lane]
            .entry(rec.partition_key.clone())
            .or_default()
            .queued += 1;
        let heartbeat = rec.lane == Lane::Live && lanes::may_be_heartbeat(&rec.record.data);
        self.entries.insert(
            id,
            Slot {
                rec: Arc::new(rec),
                enqueued_at_ms: now_ms,
                failed: false,
                in_flight: false,
                heartbeat,
                declared_low: None,
            },
        );
        Ok(())
    }

    /// How many more live records to read from the store now (0: enough queued).
    pub fn wants(&self, limits: &BatchLimits) -> usize {
        self.wants_in(Lane::Live, limits)
    }

    /// How many more records of `lane` to read from the store now; each lane has the
    /// whole capacity, so a backlog never keeps live records from being read.
    pub fn wants_in(&self, lane: Lane, limits: &BatchLimits) -> usize {
        let (len, bytes) = (self.lane_len[lane.index()], self.lane_bytes[lane.index()]);
        if len >= self.capacity.records || bytes >= self.capacity.bytes {
            return 0;
        }
        // Whole calls fail (the uplink is down): what the lane holds is enough until
        // one succeeds. Whatever is read now is stuck in this lane, ahead of what comes
        // after the link returns; left in the buffer it can still move to the backfill.
        if self.calls_failing && len > 0 {
            return 0;
        }
        // Records of blocked keys do not count: they cannot fill the next call. While
        // calls fail (retries queued) a call's worth of entries is enough: reading more
        // would only pin more of the buffer against its overflow policy.
        let (sendable, sendable_bytes, _, retrying) = self.sendable_summary(limits, Some(lane));
        let full_at = if retrying {
            limits.max_entries()
        } else {
            limits.max_points()
        };
        if sendable >= full_at || sendable_bytes >= limits.max_bytes() {
            return 0;
        }
        self.capacity.records - len
    }

    /// Whether to send now, given how long a partial batch may wait (`linger_ms`).
    pub fn readiness(&self, limits: &BatchLimits, now_ms: u64, linger_ms: u64) -> Readiness {
        let (count, bytes, oldest, urgent) = self.sendable_summary(limits, None);
        if urgent || count >= limits.max_points() || bytes >= limits.max_bytes() {
            return Readiness::Send;
        }
        match oldest {
            None => Readiness::Idle,
            Some(t) => {
                let deadline = t.saturating_add(linger_ms);
                if now_ms >= deadline {
                    Readiness::Send
                } else {
                    Readiness::WaitUntil(deadline)
                }
            }
        }
    }

    /// (count, bytes, oldest enqueue time, urgent) over records eligible for a batch
    /// (of `lane` only, when given).
    /// Urgent: a retry (it already waited its backoff) or a dead letter to write.
    fn sendable_summary(
        &self,
        limits: &BatchLimits,
        lane: Option<Lane>,
    ) -> (usize, usize, Option<u64>, bool) {
        let mut count = 0;
        let mut bytes = 0;
        let mut oldest: Option<u64> = None;
        let mut urgent = false;
        for e in self.entries.values() {
            if e.in_flight || lane.is_some_and(|l| l != e.rec.lane) {
                continue;
            }
            if dead_letter_reason(&e.rec, limits).is_some() {
                urgent = true;
                continue;
            }
            if !self.eligible(e) {
                continue;
            }
            urgent |= e.failed;
            count += 1;
            bytes += e.rec.size();
            oldest = Some(oldest.map_or(e.enqueued_at_ms, |o| o.min(e.enqueued_at_ms)));
        }
        (count, bytes, oldest, urgent)
    }

    /// The static part of the ordering rule (per-batch blocking comes on top).
    fn eligible(&self, e: &Slot) -> bool {
        if e.in_flight {
            return false;
        }
        let ks = self.keys[e.rec.lane.index()]
            .get(&e.rec.partition_key)
            .copied()
            .unwrap_or_default();
        if ks.in_flight > 0 {
            return false;
        }
        // A key with failures sends only its failed records; every never-sent record of
        // a key has a higher id than its failed ones, because keys are sent in id order.
        ks.failed == 0 || e.failed
    }

    /// Picks the next call's records (marking them in flight), has `encoder` pack them
    /// into entries, and takes out dead letters. No limit on the backfill.
    pub fn next_batch<E: Encoder + ?Sized>(
        &mut self,
        limits: &BatchLimits,
        encoder: &mut E,
    ) -> Batch {
        self.next_batch_within(limits, encoder, (usize::MAX, usize::MAX))
    }

    /// [`Self::next_batch`], live records first, then backfill records while they fit
    /// `allowance` (records, bytes).
    pub fn next_batch_within<E: Encoder + ?Sized>(
        &mut self,
        limits: &BatchLimits,
        encoder: &mut E,
        allowance: (usize, usize),
    ) -> Batch {
        let mut chosen: Vec<u64> = Vec::new();
        let mut dead: Vec<(u64, DeadLetterReason)> = Vec::new();
        let mut withheld_backfill = false;
        encoder.begin(limits);
        for lane in [Lane::Live, Lane::Backfill] {
            let (mut spent_records, mut spent_bytes) = (0usize, 0usize);
            let mut blocked: HashSet<&str> = HashSet::new();
            for (&id, e) in &self.entries {
                if e.in_flight || e.rec.lane != lane {
                    continue;
                }
                if let Some(reason) = dead_letter_reason(&e.rec, limits) {
                    dead.push((id, reason));
                    continue;
                }
                if encoder.is_full() {
                    // Keep scanning only for dead letters would cost a full pass; they
                    // are found by a later call.
                    break;
                }
                let key = e.rec.partition_key.as_str();
                if blocked.contains(key) || !self.eligible(e) {
                    continue;
                }
                if lane == Lane::Backfill
                    && (spent_records >= allowance.0
                        || spent_bytes.saturating_add(e.rec.size()) > allowance.1)
                {
                    withheld_backfill = true;
                    break;
                }
                if !encoder.offer(&e.rec) {
                    // Later records of this key must not overtake it.
                    blocked.insert(key);
                    continue;
                }
                spent_records += 1;
                spent_bytes += e.rec.size();
                chosen.push(id);
            }
        }

        let mut batch = Batch {
            entries: encoder.finish(),
            dead_letters: Vec::new(),
            withheld_backfill,
        };
        debug_assert_eq!(
            batch.records(),
            chosen.len(),
            "the encoder packs every record it took"
        );
        for (id, reason) in dead {
            if let Some(e) = self.remove_entry(id) {
                batch.dead_letters.push(DeadLetterRecord {
                    record: e.rec,
                    reason,
                });
            }
        }
        for id in chosen {
            if let Some(e) = self.entries.get_mut(&id) {
                e.in_flight = true;
                if let Some(ks) = self.keys[e.rec.lane.index()].get_mut(&e.rec.partition_key) {
                    ks.in_flight += 1;
                }
            }
        }
        batch
    }

    /// Applies a call's outcome to the records of `batch`: each entry's result applies
    /// to every id in it, so an id leaves the queue only when its entry was accepted.
    pub fn apply(&mut self, batch: &Batch, outcome: &CallOutcome) -> Applied {
        let mut applied = Applied {
            accepted: Vec::new(),
            retrying: 0,
            throttled: 0,
            internal_failures: 0,
            other_failures: 0,
            call: CallStatus::Completed,
            back_off: false,
            accepted_backfill: 0,
            oldest_live_accepted: None,
        };
        // One result per entry is the contract; anything else is treated as unknown.
        let per_entry: Option<&[RecordResult]> = match outcome {
            CallOutcome::Records(results) if results.len() == batch.entries.len() => Some(results),
            CallOutcome::Records(_) | CallOutcome::Unknown { .. } => {
                applied.call = CallStatus::Unknown;
                None
            }
            CallOutcome::NotWritten { .. } => {
                applied.call = CallStatus::NotWritten;
                None
            }
        };
        let whole_call_throttled = matches!(
            outcome,
            CallOutcome::NotWritten {
                throttled: true,
                ..
            }
        );

        for (i, entry) in batch.entries.iter().enumerate() {
            let result = per_entry.and_then(|r| r.get(i));
            for &id in entry.record_ids() {
                let in_flight = self.entries.get(&id).is_some_and(|e| e.in_flight);
                if !in_flight {
                    // Not ours (already applied, or never handed out): ignore.
                    continue;
                }
                match result {
                    Some(RecordResult::Accepted) => {
                        if let Some(e) = self.remove_entry(id) {
                            debug_assert!(e.in_flight);
                            match e.rec.lane {
                                Lane::Backfill => applied.accepted_backfill += 1,
                                Lane::Live => {
                                    let c = e.rec.record.created_at;
                                    applied.oldest_live_accepted =
                                        Some(applied.oldest_live_accepted.map_or(c, |o| o.min(c)));
                                }
                            }
                        }
                        applied.accepted.push(id);
                    }
                    other => {
                        match other {
                            Some(RecordResult::Throttled) => applied.throttled += 1,
                            Some(RecordResult::InternalFailure) => applied.internal_failures += 1,
                            Some(RecordResult::Failed { .. }) => applied.other_failures += 1,
                            Some(RecordResult::Accepted) => {}
                            None if whole_call_throttled => applied.throttled += 1,
                            None => applied.other_failures += 1,
                        }
                        applied.retrying += 1;
                        self.mark_failed(id);
                    }
                }
            }
        }
        applied.accepted.sort_unstable();
        self.calls_failing = applied.call != CallStatus::Completed;
        applied.back_off = applied.retrying > 0 || applied.call != CallStatus::Completed;
        applied
    }

    fn mark_failed(&mut self, id: u64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let Some(ks) = self.keys[e.rec.lane.index()].get_mut(&e.rec.partition_key) else {
            return;
        };
        if e.in_flight {
            e.in_flight = false;
            ks.in_flight = ks.in_flight.saturating_sub(1);
        }
        if !e.failed {
            e.failed = true;
            ks.failed += 1;
        }
    }

    fn remove_entry(&mut self, id: u64) -> Option<Slot> {
        let e = self.entries.remove(&id)?;
        self.bytes = self.bytes.saturating_sub(e.rec.size());
        let lane = e.rec.lane.index();
        self.lane_len[lane] = self.lane_len[lane].saturating_sub(1);
        self.lane_bytes[lane] = self.lane_bytes[lane].saturating_sub(e.rec.size());
        let key = e.rec.partition_key.as_str();
        let keys = &mut self.keys[lane];
        if let Some(ks) = keys.get_mut(key) {
            if e.in_flight {
                ks.in_flight = ks.in_flight.saturating_sub(1);
            }
            if e.failed {
                ks.failed = ks.failed.saturating_sub(1);
            }
            ks.queued = ks.queued.saturating_sub(1);
            if ks.queued == 0 {
                keys.remove(key);
            }
        }
        Some(e)
    }
}

/// A record Kinesis can never take, and why.
pub fn dead_letter_reason(rec: &QueuedRecord, limits: &BatchLimits) -> Option<DeadLetterReason> {
    let key = &rec.partition_key;
    if key.is_empty() || key.chars().count() > KINESIS_MAX_PARTITION_KEY_CHARS {
        return Some(DeadLetterReason::InvalidPartitionKey);
    }
    let bytes = rec.size();
    if bytes > limits.max_entry_bytes() {
        return Some(DeadLetterReason::Oversize {
            bytes,
            limit: limits.max_entry_bytes(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::request::OnePerRecord;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn rec(id: u64, key: &str, len: usize) -> QueuedRecord {
        QueuedRecord::new(StoredRecord {
            id,
            created_at: id,
            partition_key: key.to_owned(),
            data: vec![b'x'; len],
        })
    }

    fn queue() -> ShipQueue {
        ShipQueue::new(QueueCapacity {
            records: 1000,
            bytes: 1 << 30,
        })
    }

    fn push_all(q: &mut ShipQueue, recs: &[(u64, &str, usize)]) {
        for &(id, key, len) in recs {
            q.push(rec(id, key, len), 0).unwrap();
        }
    }

    fn ids(b: &Batch) -> Vec<u64> {
        b.ids().collect()
    }

    /// The next batch, one point per entry.
    fn next(q: &mut ShipQueue, limits: &BatchLimits) -> Batch {
        q.next_batch(limits, &mut OnePerRecord::default())
    }

    fn accept_all(n: usize) -> CallOutcome {
        CallOutcome::Records(vec![RecordResult::Accepted; n])
    }

    #[test]
    fn batches_follow_id_order_and_record_limit() {
        let mut q = queue();
        push_all(
            &mut q,
            &[(1, "a", 10), (2, "b", 10), (3, "a", 10), (4, "c", 10)],
        );
        let limits = BatchLimits::new(3, 1000, 1000);
        let b = next(&mut q, &limits);
        assert_eq!(ids(&b), vec![1, 2, 3]);
        let applied = q.apply(&b, &accept_all(3));
        assert_eq!(applied.accepted, vec![1, 2, 3]);
        assert!(!applied.back_off);
        assert_eq!(ids(&next(&mut q, &limits)), vec![4]);
    }

    #[test]
    fn byte_limit_counts_data_and_key() {
        let mut q = queue();
        // Each record is 9 data + 1 key byte = 10.
        push_all(&mut q, &[(1, "a", 9), (2, "b", 9), (3, "c", 9)]);
        let b = next(&mut q, &BatchLimits::new(500, 29, 29));
        assert_eq!(ids(&b), vec![1, 2]);
        assert_eq!(b.bytes(), 20);
    }

    #[test]
    fn a_record_that_does_not_fit_holds_back_its_key_only() {
        let mut q = queue();
        push_all(
            &mut q,
            &[(1, "a", 9), (2, "a", 25), (3, "a", 5), (4, "b", 5)],
        );
        let b = next(&mut q, &BatchLimits::new(500, 30, 30));
        // 2 does not fit after 1; 3 must not overtake it; b flows on.
        assert_eq!(ids(&b), vec![1, 4]);
        q.apply(&b, &accept_all(2));
        let b = next(&mut q, &BatchLimits::new(500, 60, 60));
        assert_eq!(ids(&b), vec![2, 3]);
    }

    #[test]
    fn oversize_and_bad_keys_become_dead_letters_not_retries() {
        let mut q = queue();
        let long_key = "k".repeat(257);
        q.push(rec(1, "a", 5), 0).unwrap();
        q.push(rec(2, "a", 200), 0).unwrap();
        q.push(rec(3, "", 5), 0).unwrap();
        q.push(rec(4, &long_key, 5), 0).unwrap();
        q.push(rec(5, "a", 5), 0).unwrap();
        let limits = BatchLimits::new(500, 1000, 100);
        let b = next(&mut q, &limits);
        assert_eq!(ids(&b), vec![1, 5]);
        let dead: Vec<(u64, &str)> = b
            .dead_letters
            .iter()
            .map(|d| (d.record.id(), d.reason.as_str()))
            .collect();
        assert_eq!(
            dead,
            vec![
                (2, "oversize"),
                (3, "invalid_partition_key"),
                (4, "invalid_partition_key")
            ]
        );
        assert_eq!(
            b.dead_letters[0].reason,
            DeadLetterReason::Oversize {
                bytes: 201,
                limit: 100
            }
        );
        q.apply(&b, &accept_all(2));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_key_with_a_failure_resends_only_its_failed_records_until_they_are_accepted() {
        let mut q = queue();
        push_all(
            &mut q,
            &[
                (1, "a", 1),
                (2, "b", 1),
                (3, "a", 1),
                (4, "b", 1),
                (5, "a", 1),
            ],
        );
        let limits = BatchLimits::new(4, 1000, 1000);
        let b = next(&mut q, &limits);
        assert_eq!(ids(&b), vec![1, 2, 3, 4]);
        let applied = q.apply(
            &b,
            &CallOutcome::Records(vec![
                RecordResult::Throttled,
                RecordResult::Accepted,
                RecordResult::InternalFailure,
                RecordResult::Accepted,
            ]),
        );
        assert_eq!(applied.accepted, vec![2, 4]);
        assert_eq!(
            (
                applied.retrying,
                applied.throttled,
                applied.internal_failures
            ),
            (2, 1, 1)
        );
        assert!(applied.back_off);
        push_all(&mut q, &[(6, "b", 1), (7, "a", 1)]);
        // a: only the failed 1 and 3; 5 and 7 wait. b flows on.
        let b = next(&mut q, &limits);
        assert_eq!(ids(&b), vec![1, 3, 6]);
        // 1 fails again, 3 accepted: a stays blocked until 1 is in.
        let applied = q.apply(
            &b,
            &CallOutcome::Records(vec![
                RecordResult::Failed { code: "X".into() },
                RecordResult::Accepted,
                RecordResult::Accepted,
            ]),
        );
        assert_eq!(applied.other_failures, 1);
        assert_eq!(ids(&next(&mut q, &limits)), vec![1]);
    }

    #[test]
    fn once_the_failed_records_are_in_the_key_flows_again() {
        let mut q = queue();
        push_all(&mut q, &[(1, "a", 1), (2, "a", 1)]);
        let limits = BatchLimits::new(1, 1000, 1000);
        let b = next(&mut q, &limits);
        q.apply(&b, &CallOutcome::Records(vec![RecordResult::Throttled]));
        assert_eq!(q.failed(), 1);
        let b = next(&mut q, &limits);
        assert_eq!(ids(&b), vec![1]);
        q.apply(&b, &accept_all(1));
        assert_eq!(q.failed(), 0);
        assert_eq!(ids(&next(&mut q, &limits)), vec![2]);
    }

    #[test]
    fn whole_call_failures_resend_everything() {
        for (outcome, status, throttled) in [
            (
                CallOutcome::NotWritten {
                    throttled: true,
                    error: "slow down".into(),
                },
                CallStatus::NotWritten,
                2,
            ),
            (
                CallOutcome::NotWritten {
                    throttled: false,
                    error: "ResourceNotFound".into(),
                },
                CallStatus::NotWritten,
                0,
            ),
            (
                CallOutcome::Unknown {
                    error: "timeout".into(),
                },
                CallStatus::Unknown,
                0,
            ),
            // One result for two records breaks the contract: treated as unknown.
            (accept_all(1), CallStatus::Unknown, 0),
        ] {
            let mut q = queue();
            push_all(&mut q, &[(1, "a", 1), (2, "b", 1), (3, "a", 1)]);
            let limits = BatchLimits::new(2, 1000, 1000);
            let b = next(&mut q, &limits);
            assert_eq!(ids(&b), vec![1, 2]);
            let applied = q.apply(&b, &outcome);
            assert_eq!(applied.call, status);
            assert!(applied.accepted.is_empty());
            assert_eq!(applied.retrying, 2);
            assert_eq!(applied.throttled, throttled);
            assert!(applied.back_off);
            // 3 waits behind the failed 1.
            assert_eq!(ids(&next(&mut q, &limits)), vec![1, 2]);
        }
    }

    #[test]
    fn in_flight_records_block_their_key_and_are_not_handed_out_twice() {
        let mut q = queue();
        push_all(
            &mut q,
            &[(1, "a", 1), (2, "b", 1), (3, "a", 1), (4, "c", 1)],
        );
        let limits = BatchLimits::new(2, 1000, 1000);
        let first = next(&mut q, &limits);
        assert_eq!(ids(&first), vec![1, 2]);
        assert_eq!(q.in_flight(), 2);
        let second = next(&mut q, &limits);
        assert_eq!(ids(&second), vec![4]);
        // Applying a batch twice changes nothing the second time.
        assert_eq!(q.apply(&first, &accept_all(2)).accepted, vec![1, 2]);
        assert_eq!(q.apply(&first, &accept_all(2)).accepted, Vec::<u64>::new());
    }

    #[test]
    fn push_rejects_ids_that_do_not_increase() {
        let mut q = queue();
        q.push(rec(5, "a", 1), 0).unwrap();
        assert_eq!(
            q.push(rec(5, "a", 1), 0),
            Err(OutOfOrder { id: 5, last: 5 })
        );
        assert_eq!(
            q.push(rec(3, "a", 1), 0),
            Err(OutOfOrder { id: 3, last: 5 })
        );
        assert_eq!(q.len(), 1);
        assert_eq!(q.last_pushed(), Some(5));
    }

    #[test]
    fn readiness_lingers_for_partial_batches_only() {
        let limits = BatchLimits::new(3, 1000, 100);
        let mut q = queue();
        assert_eq!(q.readiness(&limits, 0, 250), Readiness::Idle);
        q.push(rec(1, "a", 1), 1000).unwrap();
        q.push(rec(2, "b", 1), 1100).unwrap();
        assert_eq!(q.readiness(&limits, 1100, 250), Readiness::WaitUntil(1250));
        assert_eq!(q.readiness(&limits, 1250, 250), Readiness::Send);
        q.push(rec(3, "c", 1), 1200).unwrap();
        assert_eq!(
            q.readiness(&limits, 1200, 250),
            Readiness::Send,
            "a full batch goes at once"
        );

        // A retry does not linger (the backoff already delayed it).
        let mut q = queue();
        q.push(rec(1, "a", 1), 1000).unwrap();
        let b = next(&mut q, &limits);
        assert_eq!(
            q.readiness(&limits, 1000, 250),
            Readiness::Idle,
            "only in-flight records"
        );
        q.apply(&b, &CallOutcome::Unknown { error: "t".into() });
        assert_eq!(q.readiness(&limits, 1000, 250), Readiness::Send);

        // Neither does a dead letter.
        let mut q = queue();
        q.push(rec(1, "a", 500), 1000).unwrap();
        assert_eq!(q.readiness(&limits, 1000, 250), Readiness::Send);
    }

    /// Live records go first; backfill ones follow while the allowance lasts; each
    /// lane keeps its own id order for one key; a failed live record blocks only its
    /// lane; while whole calls fail a lane reads no more.
    #[test]
    fn live_goes_first_and_the_backfill_spends_only_its_allowance() {
        let mut q = queue();
        for id in 1..=10 {
            let r = rec(id, "a", 10);
            let data = r.record.data.clone();
            q.push(r.in_backfill(data, id), 0).unwrap();
        }
        push_all(&mut q, &[(11, "a", 10), (12, "a", 10), (13, "b", 10)]);
        let limits = BatchLimits::new(500, 10_000, 1000);
        let b = q.next_batch_within(&limits, &mut OnePerRecord::default(), (3, usize::MAX));
        assert_eq!(ids(&b), vec![11, 12, 13, 1, 2, 3]);
        assert!(b.withheld_backfill);
        // Live 11 fails, the rest is taken (12 too, in the same call: the reorder no
        // client can prevent); 11 goes again first, and its failure never held the
        // backfill of the same key.
        let results: Vec<RecordResult> = ids(&b)
            .iter()
            .map(|&id| {
                if id == 11 {
                    RecordResult::Throttled
                } else {
                    RecordResult::Accepted
                }
            })
            .collect();
        let applied = q.apply(&b, &CallOutcome::Records(results));
        assert_eq!(applied.accepted_backfill, 3);
        assert_eq!(applied.oldest_live_accepted, Some(12));
        let b = q.next_batch_within(&limits, &mut OnePerRecord::default(), (100, usize::MAX));
        assert_eq!(ids(&b), vec![11, 4, 5, 6, 7, 8, 9, 10]);
        assert!(!b.withheld_backfill);
        q.apply(
            &b,
            &CallOutcome::NotWritten {
                throttled: false,
                error: "down".into(),
            },
        );
        assert_eq!(q.wants_in(Lane::Live, &limits), 0, "the uplink is down");
        assert_eq!(q.backfill_low(), Some(4));
    }

    #[test]
    fn wants_more_while_blocked_records_cannot_fill_a_batch() {
        let limits = BatchLimits::new(2, 1000, 1000);
        let mut q = ShipQueue::new(QueueCapacity {
            records: 5,
            bytes: 1000,
        });
        assert_eq!(q.wants(&limits), 5);
        push_all(&mut q, &[(1, "a", 1), (2, "a", 1)]);
        assert_eq!(q.wants(&limits), 0, "a full batch is queued");
        let b = next(&mut q, &BatchLimits::new(1, 1000, 1000));
        q.apply(&b, &CallOutcome::Records(vec![RecordResult::Throttled]));
        // Only 1 is sendable now (2 waits behind it): read more so other keys can flow.
        assert_eq!(q.wants(&limits), 3);
        push_all(&mut q, &[(3, "a", 1), (4, "a", 1), (5, "a", 1)]);
        assert_eq!(q.wants(&limits), 0, "capacity reached");
    }

    // ---- simulation against a model of Kinesis ----

    /// Packs the records of one key into shared entries (at most `max_ids` each), the
    /// way an aggregating encoder would: many ids per entry.
    struct Grouping {
        max_ids: usize,
        limits: BatchLimits,
        entries: Vec<(String, Vec<u8>, Vec<u64>)>,
        open: HashMap<String, usize>,
        bytes: usize,
    }

    impl Grouping {
        fn new(max_ids: usize) -> Self {
            Grouping {
                max_ids,
                limits: BatchLimits::default(),
                entries: Vec::new(),
                open: HashMap::new(),
                bytes: 0,
            }
        }
    }

    impl Encoder for Grouping {
        fn begin(&mut self, limits: &BatchLimits) {
            self.limits = *limits;
            self.entries.clear();
            self.open.clear();
            self.bytes = 0;
        }

        fn offer(&mut self, r: &Arc<QueuedRecord>) -> bool {
            let data = r.record.data.len();
            if let Some(&i) = self.open.get(&r.partition_key) {
                let (key, bytes, ids) = &mut self.entries[i];
                if ids.len() < self.max_ids
                    && key.len() + bytes.len() + data <= self.limits.max_entry_bytes()
                    && self.bytes + data <= self.limits.max_bytes()
                {
                    bytes.extend_from_slice(&r.record.data);
                    ids.push(r.id());
                    self.bytes += data;
                    return true;
                }
            }
            let size = r.size();
            if self.entries.len() >= self.limits.max_entries()
                || size > self.limits.max_entry_bytes()
                || self.bytes + size > self.limits.max_bytes()
            {
                return false;
            }
            self.open
                .insert(r.partition_key.clone(), self.entries.len());
            self.entries
                .push((r.partition_key.clone(), r.record.data.clone(), vec![r.id()]));
            self.bytes += size;
            true
        }

        fn is_full(&self) -> bool {
            false
        }

        fn finish(&mut self) -> Vec<RequestEntry> {
            self.open.clear();
            self.bytes = 0;
            std::mem::take(&mut self.entries)
                .into_iter()
                .map(|(k, d, ids)| RequestEntry::encoded(k, d, ids))
                .collect()
        }
    }

    #[test]
    fn a_multi_id_entry_is_accepted_or_retried_as_a_whole() {
        let mut q = queue();
        // Odd ids are key "a", even ids key "b".
        for id in 1..=5 {
            q.push(rec(id, ["b", "a"][(id % 2) as usize], 1), 0)
                .unwrap();
        }
        let limits = BatchLimits::new(10, 1000, 1000);
        let mut enc = Grouping::new(2);
        let b = q.next_batch(&limits, &mut enc);
        let entries: Vec<Vec<u64>> = b.entries.iter().map(|e| e.record_ids().to_vec()).collect();
        assert_eq!(entries, vec![vec![1, 3], vec![2, 4], vec![5]]);
        assert_eq!((b.len(), b.records()), (3, 5));
        let applied = q.apply(
            &b,
            &CallOutcome::Records(vec![
                RecordResult::Throttled,
                RecordResult::Accepted,
                RecordResult::Accepted,
            ]),
        );
        assert_eq!(applied.accepted, vec![2, 4, 5]);
        assert_eq!((applied.retrying, applied.throttled), (2, 2));
        assert_eq!(q.failed(), 2);
        // Both ids of the failed entry come back, in order, and nothing later of "a".
        push_all(&mut q, &[(6, "a", 1)]);
        let b = q.next_batch(&limits, &mut enc);
        assert_eq!(ids(&b), vec![1, 3]);
        // An answer that does not match the entries is unknown: every id is retried.
        let applied = q.apply(&b, &accept_all(2));
        assert_eq!(applied.call, CallStatus::Unknown);
        assert!(applied.accepted.is_empty());
        assert_eq!(applied.retrying, 2);
    }

    #[derive(Debug, Clone, Copy)]
    enum Model {
        /// Kinesis accepts any random subset of a call's entries.
        RandomSubset,
        /// Per key, Kinesis accepts a prefix of the call's entries of that key (a shard
        /// that starts throttling keeps throttling for the rest of the call).
        KeyPrefix,
    }

    #[derive(Debug, Clone)]
    struct Scenario {
        records: Vec<(u8, usize)>,
        max_records: usize,
        max_bytes: usize,
        accept_percent: u64,
        seed: u64,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (
            proptest::collection::vec(
                (0u8..4, prop_oneof![20 => 1usize..40, 1 => 41usize..80]),
                1..120,
            ),
            1usize..8,
            40usize..200,
            20u64..95,
            any::<u64>(),
        )
            .prop_map(
                |(records, max_records, max_bytes, accept_percent, seed)| Scenario {
                    records,
                    max_records,
                    max_bytes,
                    accept_percent,
                    seed,
                },
            )
    }

    #[derive(Default)]
    struct Outcome {
        /// Client-reported acceptances, in order.
        client_accepted: Vec<u64>,
        dead: BTreeSet<u64>,
        /// Kinesis' first write of each id: (call number, id), in stream order.
        first_writes: Vec<(usize, u64)>,
        /// Calls in which an id was sent and not written.
        failed_in_call: BTreeSet<(usize, u64)>,
    }

    /// Runs the queue (packing with `encoder`) against a simulated store and Kinesis
    /// until everything is accepted or dead-lettered, checking the per-call invariants
    /// on the way.
    fn simulate(
        s: &Scenario,
        model: Model,
        encoder: &mut dyn Encoder,
    ) -> Result<Outcome, TestCaseError> {
        let mut rng = fastrand::Rng::with_seed(s.seed);
        let keys = ["k0", "k1", "k2", "k3"];
        let max_entry_bytes = 40;
        let limits = BatchLimits::new(s.max_records, s.max_bytes, max_entry_bytes);
        let mut q = ShipQueue::new(QueueCapacity::for_limits(&limits));
        let store: Vec<QueuedRecord> = s
            .records
            .iter()
            .enumerate()
            .map(|(i, &(k, len))| rec(i as u64 + 1, keys[usize::from(k)], len))
            .collect();
        let key_of = |id: u64| store[(id - 1) as usize].partition_key.clone();
        let mut next_read = 0usize;
        let mut out = Outcome::default();
        let mut written: BTreeSet<u64> = BTreeSet::new();
        let mut reported: BTreeSet<u64> = BTreeSet::new();

        for call in 0..20_000usize {
            // The store hands out records in chunks, as commits make them durable.
            let want = q.wants(&limits).min(rng.usize(0..=8));
            for r in store.iter().skip(next_read).take(want) {
                q.push(r.clone(), call as u64)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                next_read += 1;
            }
            if next_read == store.len() && q.is_empty() {
                return Ok(out);
            }
            let batch = q.next_batch(&limits, encoder);
            for d in &batch.dead_letters {
                prop_assert!(dead_letter_reason(&d.record, &limits).is_some());
                prop_assert!(out.dead.insert(d.record.id()), "dead-lettered twice");
            }
            // Limits.
            prop_assert!(batch.len() <= limits.max_entries());
            prop_assert!(batch.bytes() <= limits.max_bytes());
            for e in &batch.entries {
                prop_assert!(e.size() <= max_entry_bytes);
                prop_assert!(!e.record_ids().is_empty());
                for id in e.record_ids() {
                    prop_assert_eq!(key_of(*id), e.partition_key());
                    prop_assert!(!reported.contains(id), "sent {} after it was accepted", id);
                }
            }
            // Sender invariant: every earlier record of the key is accepted, dead, or
            // earlier in this very call.
            let in_batch: Vec<u64> = batch.ids().collect();
            let mut unique = in_batch.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), in_batch.len(), "an id twice in one call");
            for (pos, &b) in in_batch.iter().enumerate() {
                let key = key_of(b);
                for a in 1..b {
                    if key_of(a) == key {
                        prop_assert!(
                            reported.contains(&a)
                                || out.dead.contains(&a)
                                || in_batch[..pos].contains(&a),
                            "record {b} sent while earlier {a} of key {key} was pending"
                        );
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            // Kinesis, per entry. After many calls it stops failing so every run ends.
            let p = if call > 5_000 { 100 } else { s.accept_percent };
            let accepts: Vec<bool> = match model {
                Model::RandomSubset => batch.entries.iter().map(|_| rng.u64(0..100) < p).collect(),
                Model::KeyPrefix => {
                    let mut broken: HashSet<String> = HashSet::new();
                    batch
                        .entries
                        .iter()
                        .map(|e| {
                            let ok = !broken.contains(e.partition_key()) && rng.u64(0..100) < p;
                            if !ok {
                                broken.insert(e.partition_key().to_owned());
                            }
                            ok
                        })
                        .collect()
                }
            };
            let mut kinesis_writes = |out: &mut Outcome, write: bool| {
                for (e, &ok) in batch.entries.iter().zip(&accepts) {
                    for &id in e.record_ids() {
                        if ok && write {
                            if written.insert(id) {
                                out.first_writes.push((call, id));
                            }
                        } else {
                            out.failed_in_call.insert((call, id));
                        }
                    }
                }
            };
            let roll = if call > 5_000 { 99 } else { rng.u64(0..100) };
            let outcome = if roll < 5 {
                kinesis_writes(&mut out, false);
                CallOutcome::NotWritten {
                    throttled: roll < 2,
                    error: "call failed".into(),
                }
            } else if roll < 10 {
                // Timed out: Kinesis may have written some (per the model), the client cannot know.
                kinesis_writes(&mut out, true);
                CallOutcome::Unknown {
                    error: "timeout".into(),
                }
            } else {
                kinesis_writes(&mut out, true);
                CallOutcome::Records(
                    accepts
                        .iter()
                        .map(|&ok| {
                            if ok {
                                RecordResult::Accepted
                            } else {
                                match rng.u8(0..3) {
                                    0 => RecordResult::Throttled,
                                    1 => RecordResult::InternalFailure,
                                    _ => RecordResult::Failed {
                                        code: "Other".into(),
                                    },
                                }
                            }
                        })
                        .collect(),
                )
            };
            let applied = q.apply(&batch, &outcome);
            // Accepted exactly when Kinesis accepted the entry holding the id.
            let mut expect: Vec<u64> = match &outcome {
                CallOutcome::Records(rs) => batch
                    .entries
                    .iter()
                    .zip(rs)
                    .filter(|(_, r)| **r == RecordResult::Accepted)
                    .flat_map(|(e, _)| e.record_ids().iter().copied())
                    .collect(),
                _ => Vec::new(),
            };
            expect.sort_unstable();
            prop_assert_eq!(&applied.accepted, &expect);
            prop_assert_eq!(applied.retrying, batch.records() - expect.len());
            for id in &applied.accepted {
                prop_assert!(reported.insert(*id), "{} reported accepted twice", id);
                prop_assert!(
                    written.contains(id),
                    "{} acknowledged before Kinesis wrote it",
                    id
                );
                out.client_accepted.push(*id);
            }
        }
        Err(TestCaseError::fail("did not drain"))
    }

    fn check_nothing_lost(s: &Scenario, out: &Outcome) -> Result<(), TestCaseError> {
        let all: BTreeSet<u64> = (1..=s.records.len() as u64).collect();
        let accepted: BTreeSet<u64> = out.client_accepted.iter().copied().collect();
        prop_assert_eq!(
            accepted.len(),
            out.client_accepted.len(),
            "acknowledged once each"
        );
        prop_assert!(accepted.is_disjoint(&out.dead));
        let union: BTreeSet<u64> = accepted.union(&out.dead).copied().collect();
        prop_assert_eq!(&union, &all, "every record is accepted or dead-lettered");
        // Only oversize records (the only invalid kind here) are dead.
        for id in &out.dead {
            prop_assert!(s.records[(*id - 1) as usize].1 + 2 > 40);
        }
        // Everything the client believes accepted was written by Kinesis.
        let written: BTreeSet<u64> = out.first_writes.iter().map(|(_, id)| *id).collect();
        prop_assert!(accepted.is_subset(&written));
        Ok(())
    }

    /// First writes per key are in id order, except where Kinesis itself failed an
    /// earlier record and accepted a later one of the same call.
    fn check_random_subset_order(s: &Scenario, out: &Outcome) -> Result<(), TestCaseError> {
        let key_of = |id: u64| s.records[(id - 1) as usize].0;
        let first_call: HashMap<u64, usize> =
            out.first_writes.iter().map(|&(c, id)| (id, c)).collect();
        for (i, &(cb, b)) in out.first_writes.iter().enumerate() {
            for &(_, a) in &out.first_writes[i + 1..] {
                if a < b && key_of(a) == key_of(b) {
                    prop_assert!(
                        out.failed_in_call.contains(&(cb, a)),
                        "{} written (call {}) before earlier {} (call {}) without both being in one call",
                        b, cb, a, first_call[&a]
                    );
                }
            }
        }
        Ok(())
    }

    fn check_first_writes_in_id_order(s: &Scenario, out: &Outcome) -> Result<(), TestCaseError> {
        for k in 0u8..4 {
            let order: Vec<u64> = out
                .first_writes
                .iter()
                .map(|&(_, id)| id)
                .filter(|id| s.records[(*id - 1) as usize].0 == k)
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            prop_assert_eq!(order, sorted, "key k{}", k);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_subset_model_loses_nothing_and_reorders_only_inside_a_call(s in scenario()) {
            let out = simulate(&s, Model::RandomSubset, &mut OnePerRecord::default())?;
            check_nothing_lost(&s, &out)?;
            check_random_subset_order(&s, &out)?;
        }

        #[test]
        fn key_prefix_model_keeps_first_writes_in_id_order_per_key(s in scenario()) {
            let out = simulate(&s, Model::KeyPrefix, &mut OnePerRecord::default())?;
            check_nothing_lost(&s, &out)?;
            check_first_writes_in_id_order(&s, &out)?;
        }

        // Entries that carry several ids: each id is acknowledged exactly once, only
        // after Kinesis accepted its entry, and the ordering guarantees still hold.
        #[test]
        fn multi_id_entries_acknowledge_every_id_once_and_only_after_its_entry(
            s in scenario(),
            max_ids in 1usize..6,
        ) {
            let out = simulate(&s, Model::RandomSubset, &mut Grouping::new(max_ids))?;
            check_nothing_lost(&s, &out)?;
            check_random_subset_order(&s, &out)?;
            let out = simulate(&s, Model::KeyPrefix, &mut Grouping::new(max_ids))?;
            check_nothing_lost(&s, &out)?;
            check_first_writes_in_id_order(&s, &out)?;
        }

        #[test]
        fn bytes_and_counts_stay_consistent(ops in proptest::collection::vec((0u8..3, 1usize..30, 0u8..4), 1..200)) {
            let limits = BatchLimits::new(4, 60, 25);
            let mut q = queue();
            let mut id = 0;
            for (op, len, k) in ops {
                match op {
                    0 => { id += 1; q.push(rec(id, ["a", "b", "c", "d"][usize::from(k)], len), 0).unwrap(); }
                    1 => {
                        let b = next(&mut q, &limits);
                        let results = b.entries.iter().map(|e| if e.record_ids()[0] % 2 == u64::from(k % 2) { RecordResult::Accepted } else { RecordResult::Throttled }).collect();
                        q.apply(&b, &CallOutcome::Records(results));
                    }
                    _ => { let b = next(&mut q, &limits); q.apply(&b, &CallOutcome::Unknown { error: String::new() }); }
                }
                let bytes: usize = q.entries.values().map(|e| e.rec.size()).sum();
                prop_assert_eq!(q.bytes(), bytes);
                prop_assert_eq!(q.failed(), q.entries.values().filter(|e| e.failed).count());
                prop_assert_eq!(q.in_flight(), 0);
                let queued: usize = q.keys.iter().flat_map(|k| k.values()).map(|k| k.queued).sum();
                prop_assert_eq!(queued, q.len());
            }
        }
    }
}
