//! In-memory fakes of the shipper's two edges, for tests (`testing` feature):
//! [`FakeStore`] (a [`RecordStore`]) and [`FakeKinesis`] (a [`PutRecordsApi`]).
//!
//! `FakeKinesis` answers every entry "accepted" unless told otherwise: per-record
//! failures planned by id ([`FakeKinesis::fail_record`]), or a script that answers
//! whole calls ([`FakeKinesis::scripted`]), including lost responses (Kinesis wrote
//! the entries, the client sees an unknown outcome). It logs every call, can hold
//! calls until released, and tells a [`FakeStore`] which ids it accepted so the
//! store can flag a removal that came before Kinesis' acceptance.

use super::kinesis::PutRecordsApi;
use super::queue::{CallOutcome, RecordResult};
use super::request::RequestEntry;
use super::RecordStore;
use crate::buffer::backfill::BackfillRanges;
use crate::buffer::{BufferError, StoredRecord};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has failed already; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected() -> BufferError {
    BufferError::Io {
        path: "fake-store".into(),
        source: std::io::Error::other("injected failure"),
    }
}

/// A [`RecordStore`] in memory, with injectable read and remove failures.
#[derive(Default)]
pub struct FakeStore {
    records: Mutex<BTreeMap<u64, StoredRecord>>,
    next_id: Mutex<u64>,
    notify: Arc<Notify>,
    /// When set: the ids Kinesis accepted; removing any other id is recorded as bad.
    acked: Mutex<Option<Arc<Mutex<HashSet<u64>>>>>,
    allowed: Mutex<HashSet<u64>>,
    bad_removals: Mutex<Vec<u64>>,
    removed: Mutex<Vec<u64>>,
    fail_reads: AtomicUsize,
    fail_removes: AtomicUsize,
    backfill: Mutex<BackfillRanges>,
    /// Highest id read in the live lane, and in the backfill lane.
    live_read: Mutex<u64>,
    backfill_read: Mutex<u64>,
}

impl FakeStore {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeStore::default())
    }

    /// Commits one record per `(partition key, data)` with the next ids (created_at 1)
    /// and wakes the shipper. Returns the ids.
    pub fn append(&self, items: &[(&str, Vec<u8>)]) -> Vec<u64> {
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut recs = lock(&self.records);
            let mut next = lock(&self.next_id);
            for (key, data) in items {
                *next += 1;
                recs.insert(
                    *next,
                    StoredRecord {
                        id: *next,
                        created_at: 1,
                        partition_key: (*key).into(),
                        data: data.clone(),
                    },
                );
                ids.push(*next);
            }
        }
        self.notify.notify_waiters();
        ids
    }

    /// Commits records with the ids they carry (later appends continue after the highest).
    pub fn insert(&self, records: impl IntoIterator<Item = StoredRecord>) {
        {
            let mut recs = lock(&self.records);
            let mut next = lock(&self.next_id);
            for r in records {
                *next = (*next).max(r.id);
                recs.insert(r.id, r);
            }
        }
        self.notify.notify_waiters();
    }

    /// Records still buffered.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From now on a removal of an id `kinesis` has not accepted is recorded in
    /// [`bad_removals`](Self::bad_removals) (ids passed to `allow_removal` excepted).
    pub fn check_removals_against(&self, kinesis: &FakeKinesis) {
        *lock(&self.acked) = Some(Arc::clone(&kinesis.inner.accepted));
    }

    /// `id` may be removed without Kinesis accepting it (a dead letter).
    pub fn allow_removal(&self, id: u64) {
        lock(&self.allowed).insert(id);
    }

    /// Ids removed before Kinesis accepted them: a bug in the shipper.
    pub fn bad_removals(&self) -> Vec<u64> {
        lock(&self.bad_removals).clone()
    }

    /// Every id removed, in removal order.
    pub fn removed(&self) -> Vec<u64> {
        lock(&self.removed).clone()
    }

    /// The next `n` reads fail.
    pub fn fail_reads(&self, n: usize) {
        self.fail_reads.store(n, Ordering::SeqCst);
    }

    /// The next `n` removals fail (and remove nothing).
    pub fn fail_removes(&self, n: usize) {
        self.fail_removes.store(n, Ordering::SeqCst);
    }
}

/// Takes one of `n` pending injected failures, if any.
fn take_failure(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl RecordStore for FakeStore {
    fn read_after(&self, after: Option<u64>, max: usize) -> Result<Vec<StoredRecord>, BufferError> {
        if take_failure(&self.fail_reads) {
            return Err(injected());
        }
        let start = after.map_or(0, |a| a.saturating_add(1));
        let backfill = lock(&self.backfill).clone();
        let out: Vec<StoredRecord> = lock(&self.records)
            .range(start..)
            .filter(|(id, _)| !backfill.contains(**id))
            .take(max)
            .map(|(_, r)| r.clone())
            .collect();
        if let Some(last) = out.last() {
            let mut read = lock(&self.live_read);
            *read = (*read).max(last.id);
        }
        Ok(out)
    }

    fn read_backfill_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BufferError> {
        if take_failure(&self.fail_reads) {
            return Err(injected());
        }
        let start = after.map_or(0, |a| a.saturating_add(1));
        let backfill = lock(&self.backfill).clone();
        let out: Vec<StoredRecord> = lock(&self.records)
            .range(start..)
            .filter(|(id, _)| backfill.contains(**id))
            .take(max)
            .map(|(_, r)| r.clone())
            .collect();
        if let Some(last) = out.last() {
            let mut read = lock(&self.backfill_read);
            *read = (*read).max(last.id);
        }
        Ok(out)
    }

    fn open_backfill(&self) -> Result<Option<(u64, u64)>, BufferError> {
        // Past both lanes' marks, as the buffer (a record below the backfill's mark
        // would never be read).
        let lo = (*lock(&self.live_read))
            .max(*lock(&self.backfill_read))
            .saturating_add(1);
        let hi = *lock(&self.next_id);
        let mut backfill = lock(&self.backfill);
        let moving = lock(&self.records)
            .range(lo..)
            .any(|(id, _)| !backfill.contains(*id));
        if lo > hi || !moving {
            return Ok(None);
        }
        backfill.add(lo, hi);
        Ok(Some((lo, hi)))
    }

    fn backfill_records(&self) -> u64 {
        let backfill = lock(&self.backfill).clone();
        lock(&self.records)
            .keys()
            .filter(|id| backfill.contains(**id))
            .count() as u64
    }

    fn remove(&self, ids: &[u64]) -> Result<(), BufferError> {
        if take_failure(&self.fail_removes) {
            return Err(injected());
        }
        let acked = lock(&self.acked).clone();
        let mut recs = lock(&self.records);
        for id in ids {
            if let Some(acked) = &acked {
                if !lock(acked).contains(id) && !lock(&self.allowed).contains(id) {
                    lock(&self.bad_removals).push(*id);
                }
            }
            recs.remove(id);
            lock(&self.removed).push(*id);
        }
        Ok(())
    }

    fn oldest_created_at(&self) -> Option<u64> {
        lock(&self.records).values().map(|r| r.created_at).min()
    }

    fn committed(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }
}

/// How the fake answers one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Per entry: accepted, unless a failure planned with
    /// [`FakeKinesis::fail_record`] applies to one of its ids.
    Default,
    /// These results, one per entry; accepted entries are written.
    PerEntry(Vec<RecordResult>),
    /// Refused as a whole; nothing written.
    NotWritten { throttled: bool, error: String },
    /// Kinesis writes what [`Reply::Default`] would accept, then the response is lost:
    /// the client sees an unknown outcome.
    LostResponse,
    /// Nothing written and no answer (e.g. the connection dropped before sending).
    Unknown,
}

/// Where a logged call is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallState {
    /// Started, not answered yet (held, or running).
    InFlight,
    Answered(CallOutcome),
    /// The shipper dropped the call before it was answered.
    Dropped,
}

/// One call as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The record ids of each entry, in request order.
    pub entries: Vec<Vec<u64>>,
    /// The partition key of each entry.
    pub keys: Vec<String>,
    /// The data of each entry, as sent.
    pub data: Vec<Vec<u8>>,
    pub state: CallState,
}

type Script = Box<dyn FnMut(usize, &[RequestEntry]) -> Reply + Send>;

struct Inner {
    script: Mutex<Option<Script>>,
    /// Planned per-record failures: id → (failures left, result).
    planned: Mutex<HashMap<u64, (usize, RecordResult)>>,
    calls: Mutex<Vec<Call>>,
    written: Mutex<Vec<u64>>,
    accepted: Arc<Mutex<HashSet<u64>>>,
    gate: Mutex<Option<Arc<Semaphore>>>,
    changed: Notify,
}

/// A scriptable [`PutRecordsApi`]. Cheap to clone: clones share the log.
#[derive(Clone)]
pub struct FakeKinesis {
    inner: Arc<Inner>,
}

impl Default for FakeKinesis {
    fn default() -> Self {
        FakeKinesis {
            inner: Arc::new(Inner {
                script: Mutex::new(None),
                planned: Mutex::default(),
                calls: Mutex::default(),
                written: Mutex::default(),
                accepted: Arc::default(),
                gate: Mutex::new(None),
                changed: Notify::new(),
            }),
        }
    }
}

impl FakeKinesis {
    /// Accepts everything (until told otherwise).
    pub fn new() -> Self {
        FakeKinesis::default()
    }

    /// Answers call `n` (0-based) with `script(n, entries)`.
    pub fn scripted(script: impl FnMut(usize, &[RequestEntry]) -> Reply + Send + 'static) -> Self {
        let fake = FakeKinesis::default();
        *lock(&fake.inner.script) = Some(Box::new(script));
        fake
    }

    /// The next `times` entries holding record `id` get `result` instead of being accepted.
    pub fn fail_record(&self, id: u64, times: usize, result: RecordResult) {
        lock(&self.inner.planned).insert(id, (times, result));
    }

    /// From now on calls wait (logged as in flight) until [`release`](Self::release)d.
    pub fn hold_calls(&self) {
        *lock(&self.inner.gate) = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` held calls (or future ones) through.
    pub fn release(&self, n: usize) {
        if let Some(gate) = lock(&self.inner.gate).as_ref() {
            gate.add_permits(n);
        }
    }

    /// The call log.
    pub fn call_log(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// The record ids of each call, flattened over its entries.
    pub fn calls(&self) -> Vec<Vec<u64>> {
        lock(&self.inner.calls)
            .iter()
            .map(|c| c.entries.iter().flatten().copied().collect())
            .collect()
    }

    /// Partition keys of every entry sent, in order.
    pub fn keys(&self) -> Vec<String> {
        lock(&self.inner.calls)
            .iter()
            .flat_map(|c| c.keys.iter().cloned())
            .collect()
    }

    /// Record ids in the order Kinesis wrote them (duplicates included).
    pub fn written(&self) -> Vec<u64> {
        lock(&self.inner.written).clone()
    }

    /// Waits until at least `n` calls have started.
    pub async fn wait_for_calls(&self, n: usize) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&self.inner.calls).len() >= n {
                return;
            }
            changed.await;
        }
    }

    /// The default answer for one entry (consumes planned failures of its ids).
    fn default_result(&self, entry: &RequestEntry) -> RecordResult {
        let mut planned = lock(&self.inner.planned);
        let mut result = RecordResult::Accepted;
        for id in entry.record_ids() {
            if let Some((left, r)) = planned.get_mut(id) {
                if *left > 0 {
                    *left -= 1;
                    if result == RecordResult::Accepted {
                        result = r.clone();
                    }
                }
            }
        }
        result
    }

    fn write(&self, entries: &[RequestEntry], results: &[RecordResult]) {
        let mut written = lock(&self.inner.written);
        let mut accepted = lock(&self.inner.accepted);
        for (e, r) in entries.iter().zip(results) {
            if *r == RecordResult::Accepted {
                written.extend_from_slice(e.record_ids());
                accepted.extend(e.record_ids().iter().copied());
            }
        }
    }

    fn answer(&self, n: usize, entries: &[RequestEntry]) -> CallOutcome {
        let reply = match lock(&self.inner.script).as_mut() {
            Some(script) => script(n, entries),
            None => Reply::Default,
        };
        let defaults =
            || -> Vec<RecordResult> { entries.iter().map(|e| self.default_result(e)).collect() };
        match reply {
            Reply::Default => {
                let results = defaults();
                self.write(entries, &results);
                CallOutcome::Records(results)
            }
            Reply::PerEntry(results) => {
                self.write(entries, &results);
                CallOutcome::Records(results)
            }
            Reply::NotWritten { throttled, error } => CallOutcome::NotWritten { throttled, error },
            Reply::LostResponse => {
                self.write(entries, &defaults());
                CallOutcome::Unknown {
                    error: "response lost".into(),
                }
            }
            Reply::Unknown => CallOutcome::Unknown {
                error: "no answer".into(),
            },
        }
    }
}

/// Marks a call dropped unless it was answered.
struct InFlight<'a> {
    fake: &'a FakeKinesis,
    n: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut calls = lock(&self.fake.inner.calls);
        if let Some(c) = calls.get_mut(self.n) {
            if c.state == CallState::InFlight {
                c.state = CallState::Dropped;
            }
        }
        drop(calls);
        self.fake.inner.changed.notify_waiters();
    }
}

impl PutRecordsApi for FakeKinesis {
    fn stream(&self) -> &str {
        "fake"
    }

    async fn put_records(&self, entries: &[RequestEntry]) -> CallOutcome {
        let n = {
            let mut calls = lock(&self.inner.calls);
            calls.push(Call {
                entries: entries.iter().map(|e| e.record_ids().to_vec()).collect(),
                keys: entries
                    .iter()
                    .map(|e| e.partition_key().to_owned())
                    .collect(),
                data: entries.iter().map(|e| e.data().to_vec()).collect(),
                state: CallState::InFlight,
            });
            calls.len() - 1
        };
        let guard = InFlight { fake: self, n };
        self.inner.changed.notify_waiters();
        let gate = lock(&self.inner.gate).clone();
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let outcome = self.answer(n, entries);
        if let Some(c) = lock(&self.inner.calls).get_mut(n) {
            c.state = CallState::Answered(outcome.clone());
        }
        drop(guard);
        outcome
    }

    /// No shard map: an `auto` pacing leaves the shipper unpaced (a test that
    /// wants pacing sets `shards` in the config).
    async fn open_shards(&self) -> Result<u32, String> {
        Err("the fake has no shards to count".into())
    }
}
