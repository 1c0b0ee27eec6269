//! [`Buffer`]: the sled-backed disk buffer.
//!
//! One sled tree holds everything, so a group commit is one atomic `apply_batch`
//! followed by one flush:
//!
//! - points, in **chunks** of up to [`chunk::MAX_POINTS`]: key = the id of the
//!   chunk's first point (u64 big-endian, see [`StoredRecord::key`]), value = for
//!   each point its id offset, its length and its [`StoredRecord`] value. Every
//!   point keeps its own id (ids increase in append order); removing some points
//!   of a chunk rewrites it without them. Chunks exist because sled costs about
//!   15 µs per key on a gateway-class CPU: one key per point caps ingest near
//!   60,000 points/s, sixteen per key passes 700,000;
//! - metadata: keys starting with [`META`] (eight 0xFF bytes, then a kind byte),
//!   which sort after every chunk key: the format version, the next id, the
//!   next sequence number per source, and the backfill id ranges.
//!
//! Two lanes read the points: the live lane (every id outside the backfill ranges)
//! and the backfill lane (the ids inside them), each with its own handed-out mark.
//!
//! Points and sequence counters therefore become durable together: after a crash
//! the next sequence number continues exactly after the last durable point.

use super::backfill::BackfillRanges;
use super::policy::{self, Usage};
use super::{BufferError, StoredRecord};
use crate::config::{BufferConfig, OverflowPolicy};
use crate::ship::lanes::Lane;
use linewatch_runtime::clock::{Clock, SystemClock};
use std::collections::HashMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

/// Version of the on-disk layout; a buffer with another version is moved aside.
pub const FORMAT_VERSION: u32 = 1;

const TREE_NAME: &[u8] = b"linewatch-buffer";
/// Prefix of every metadata key; sorts after every 8-byte chunk key.
const META: [u8; 8] = [0xFF; 8];
const KIND_VERSION: u8 = b'v';
const KIND_NEXT_ID: u8 = b'i';
const KIND_SEQUENCE: u8 = b's';
const KIND_BACKFILL: u8 = b'b';
/// Logical per-point overhead counted against `max_bytes` (the 8-byte id; on
/// disk it is the chunk entry header of the same size).
const KEY_BYTES: u64 = 8;

fn meta_key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(META.len() + 1 + rest.len());
    k.extend_from_slice(&META);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

fn record_size(value_len: usize) -> u64 {
    KEY_BYTES + value_len as u64
}

/// The chunk codec: several points per sled entry.
pub(crate) mod chunk {
    /// Points per chunk at most.
    pub const MAX_POINTS: usize = 16;
    /// Close a chunk before it grows past this (unless it is a single point):
    /// sled splits leaves at 17 entries and writes pages over ~128 KiB to
    /// separate blob files, so 17 × 6 KiB keeps leaves inline.
    pub const MAX_BYTES: usize = 6 * 1024;
    /// Per entry: id offset (u32 BE) · value length (u32 BE).
    pub const ENTRY_HEADER: usize = 8;

    /// Append one point to a chunk being built.
    pub fn push(buf: &mut Vec<u8>, offset: u32, value: &[u8]) {
        buf.extend_from_slice(&offset.to_be_bytes());
        // A stored value over 4 GiB cannot be built on a gateway; if it ever
        // were, the length would not match and the chunk would read as malformed
        // (removed with an error) rather than panic.
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(value);
    }

    /// Re-encode a chunk from some of its entries (after removals).
    pub fn encode(base: u64, entries: &[(u64, &[u8])]) -> Vec<u8> {
        let len = entries.iter().map(|(_, v)| ENTRY_HEADER + v.len()).sum();
        let mut buf = Vec::with_capacity(len);
        for (id, v) in entries {
            // Entries come from a decoded chunk with this base: the offset fits.
            push(&mut buf, u32::try_from(id - base).unwrap_or(u32::MAX), v);
        }
        buf
    }

    /// `(id, stored value)` of every point, in id order; an error for anything
    /// this codec did not write. Never panics.
    pub fn decode<'a>(key: &[u8], bytes: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, &'static str> {
        let base = u64::from_be_bytes(key.try_into().map_err(|_| "chunk key is not 8 bytes")?);
        let mut out = Vec::with_capacity(MAX_POINTS);
        let mut rest = bytes;
        let mut last: Option<u64> = None;
        while !rest.is_empty() {
            if rest.len() < ENTRY_HEADER {
                return Err("chunk entry header cut off");
            }
            let (head, tail) = rest.split_at(ENTRY_HEADER);
            let offset = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            if tail.len() < len {
                return Err("chunk entry runs past the end");
            }
            let id = base
                .checked_add(u64::from(offset))
                .ok_or("chunk entry id overflows")?;
            if last.is_some_and(|l| id <= l) {
                return Err("chunk entry ids not increasing");
            }
            last = Some(id);
            let (value, tail) = tail.split_at(len);
            out.push((id, value));
            rest = tail;
        }
        if out.is_empty() {
            return Err("empty chunk");
        }
        Ok(out)
    }
}

/// A point ready to be committed: its stored value, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    value: Vec<u8>,
}

impl NewRecord {
    /// `data` is the Kinesis record data (the data point's JSON).
    pub fn new(created_at: u64, partition_key: &str, data: &[u8]) -> Self {
        NewRecord {
            value: StoredRecord::encode_value(created_at, partition_key, data),
        }
    }

    /// The encoded stored value (see [`StoredRecord`]).
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Logical size counted against `max_bytes`: 8 (id) + stored value bytes.
    pub fn size(&self) -> u64 {
        record_size(self.value.len())
    }
}

/// What one group commit did. Drops are split by policy for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Incoming records stored.
    pub accepted: usize,
    /// Ids given to the stored records (inclusive), when any were stored.
    pub ids: Option<(u64, u64)>,
    /// `drop_oldest`: incoming records that could not fit even after evicting
    /// everything evictable (the oldest of the batch).
    pub dropped_incoming: usize,
    /// `drop_oldest`: buffered records evicted to make room, and their bytes.
    pub evicted_records: u64,
    pub evicted_bytes: u64,
    /// `reject_new`: incoming records refused (the newest of the batch).
    pub rejected: usize,
}

impl CommitOutcome {
    /// Points lost under `drop_oldest` (reason `overflow_drop_oldest`).
    pub fn dropped_oldest(&self) -> u64 {
        self.evicted_records + self.dropped_incoming as u64
    }

    /// Points lost under `reject_new` (reason `overflow_reject_new`).
    pub fn rejected_new(&self) -> u64 {
        self.rejected as u64
    }
}

/// A buffer that could not be opened and was renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    pub from: PathBuf,
    pub to: PathBuf,
    pub cause: String,
}

/// What [`Buffer::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Points recovered.
    pub records: u64,
    /// Their logical bytes.
    pub bytes: u64,
    /// Next sequence number per source, for `Normalizer::new`.
    pub sequences: HashMap<String, u64>,
    /// Set when the old buffer was unusable and a fresh one was created.
    pub moved_aside: Option<MovedAside>,
    /// Undecodable chunks found and removed.
    pub malformed_removed: u64,
}

/// Counters kept in memory (rebuilt by a scan at open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub records: u64,
    /// Logical bytes (8 + stored value per point): what `max_bytes` bounds.
    pub bytes: u64,
    /// Of those, handed out to the shipper and not yet removed (never evicted).
    pub held_records: u64,
    pub held_bytes: u64,
    /// Highest durable id (0 when nothing was ever committed).
    pub durable_id: u64,
    /// Id the next stored record gets.
    pub next_id: u64,
    /// Undecodable chunks removed since open (at open or when read).
    pub malformed_removed: u64,
    /// Of `records`: those in the backfill lane.
    pub backfill_records: u64,
}

#[derive(Debug)]
struct State {
    next_id: u64,
    /// Ids up to here are flushed (ids start at 1, so 0 is "none").
    durable_id: u64,
    /// Highest live-lane id handed to the shipper: this and older live records are
    /// not evictable.
    handed_out: u64,
    records: u64,
    bytes: u64,
    held_records: u64,
    held_bytes: u64,
    malformed_removed: u64,
    backfill: BackfillRanges,
    /// Highest backfill id handed to the shipper (held: backfill ids up to it).
    backfill_handed: u64,
    backfill_records: u64,
    /// Of `held_records`: backfill records.
    backfill_held: u64,
    /// Highest id [`open_backfill`](crate::ship::RecordStore::open_backfill) has
    /// looked at since the backfill last emptied (or the buffer opened).
    backfill_scanned: u64,
}

impl State {
    /// Handed to the shipper (by its lane's mark), so not evictable.
    fn held(&self, id: u64) -> bool {
        if self.backfill.contains(id) {
            id <= self.backfill_handed
        } else {
            id <= self.handed_out
        }
    }
}

/// The disk buffer. Shared as `Arc<Buffer>` between the writer and the shipper.
pub struct Buffer {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    max_bytes: u64,
    policy: OverflowPolicy,
    /// Every change to the tree happens under this lock, so the counters, the
    /// handed-out mark and the chunks always agree.
    state: Mutex<State>,
    /// Serialises commits so ids become durable in order.
    commit_lock: Mutex<()>,
    committed: Arc<Notify>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Why an open attempt failed.
enum OpenFailure {
    /// Moving the directory aside would not help (or is not ours to do).
    Fatal(BufferError),
    /// The buffer's content is unusable: move it aside and start fresh.
    Unusable(String),
}

/// Chunks that may hold ids >= `start`, in key order: the chunk whose key is
/// the last at or before `start`, then every later one.
fn chunks_from(
    tree: &sled::Tree,
    start: u64,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let key = StoredRecord::key(start);
    let first = tree.range(..=key).next_back();
    let rest = tree.range::<[u8; 8], _>((Bound::Excluded(key), Bound::Excluded(META)));
    first.into_iter().chain(rest)
}

impl Buffer {
    /// Open (or create) the buffer at `cfg.path`.
    ///
    /// A buffer that cannot be opened (corrupt files, a wrong format version, a
    /// sled error or panic) is renamed to `<path>.corrupt-<unix-ms>`, logged at
    /// `error`, and replaced by a fresh one; the report says so. Errors that
    /// moving aside would not fix (locked by another process, permissions, a full
    /// or read-only disk) are returned instead.
    pub fn open(cfg: &BufferConfig) -> Result<(Buffer, OpenReport), BufferError> {
        Self::open_at(cfg, SystemClock.now_ms())
    }

    /// [`Buffer::open`] with the clock reading used to name a moved-aside buffer.
    pub fn open_at(cfg: &BufferConfig, now_ms: u64) -> Result<(Buffer, OpenReport), BufferError> {
        let cause = match attempt_open_waiting(cfg) {
            Ok(opened) => return Ok(opened),
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Unusable(cause)) => cause,
        };
        let to = aside_path(&cfg.path, now_ms);
        std::fs::rename(&cfg.path, &to).map_err(|source| BufferError::Io {
            path: cfg.path.clone(),
            source,
        })?;
        error!(
            path = %cfg.path.display(),
            moved_to = %to.display(),
            %cause,
            "disk buffer cannot be opened: moved it aside, starting with a fresh empty buffer \
             (points in the old one will not be shipped)"
        );
        match attempt_open(cfg) {
            Ok((buffer, mut report)) => {
                report.moved_aside = Some(MovedAside {
                    from: cfg.path.clone(),
                    to,
                    cause,
                });
                Ok((buffer, report))
            }
            Err(OpenFailure::Fatal(e)) => Err(e),
            Err(OpenFailure::Unusable(cause)) => Err(BufferError::Open {
                path: cfg.path.clone(),
                cause: format!("a fresh buffer is unusable too: {cause}"),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> BufferStats {
        let s = self.lock_state();
        BufferStats {
            records: s.records,
            bytes: s.bytes,
            held_records: s.held_records,
            held_bytes: s.held_bytes,
            durable_id: s.durable_id,
            next_id: s.next_id,
            malformed_removed: s.malformed_removed,
            backfill_records: s.backfill_records,
        }
    }

    /// Bytes sled uses on disk (includes log overhead and not yet reclaimed space).
    pub fn disk_bytes(&self) -> Result<u64, BufferError> {
        Ok(self.db.size_on_disk()?)
    }

    /// The persisted next sequence number per source.
    pub fn sequences(&self) -> Result<HashMap<String, u64>, BufferError> {
        read_sequences(&self.tree)
    }

    /// One group commit: apply the overflow policy (evicting the oldest records
    /// not handed to the shipper), append `records` and store `sequences` (next
    /// sequence number per source) in one atomic batch, flush, then make the new
    /// records visible to [`read_after`](crate::ship::RecordStore::read_after)
    /// and notify [`committed`](crate::ship::RecordStore::committed).
    ///
    /// Blocking (it fsyncs): call it from `spawn_blocking`.
    ///
    /// On `Err(NotDurable)` the records are stored but not yet durable; do not
    /// commit them again ([`Buffer::sync`] or the next commit makes them durable).
    /// On any other error nothing was stored and the same records may be retried.
    pub fn commit<S: AsRef<str>>(
        &self,
        records: &[NewRecord],
        sequences: impl IntoIterator<Item = (S, u64)>,
    ) -> Result<CommitOutcome, BufferError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = {
            let mut st = self.lock_state();
            let sizes: Vec<u64> = records.iter().map(NewRecord::size).collect();
            let usage = Usage {
                used: st.bytes,
                held: st.held_bytes,
                max_bytes: self.max_bytes,
            };
            let adm = policy::admit(usage, &sizes, self.policy);

            let mut batch = sled::Batch::default();
            let (evicted_records, evicted_bytes, evicted_backfill) =
                self.plan_eviction(&st, adm.evict_bytes, &mut batch)?;

            let accepted = &records[adm.drop_front..adm.drop_front + adm.accept];
            let first_id = st.next_id;
            let accepted_bytes: u64 = sizes[adm.drop_front..adm.drop_front + adm.accept]
                .iter()
                .sum();
            append_chunks(&mut batch, first_id, accepted);
            let next_id = first_id + accepted.len() as u64;
            batch.insert(meta_key(KIND_NEXT_ID, &[]), &next_id.to_be_bytes());
            for (source, next) in sequences {
                batch.insert(
                    meta_key(KIND_SEQUENCE, source.as_ref().as_bytes()),
                    &next.to_be_bytes(),
                );
            }
            // Nothing is counted until the batch is in: a failed apply leaves the
            // state untouched and the caller retries with the same records.
            self.tree.apply_batch(batch)?;

            st.next_id = next_id;
            st.records = st.records.saturating_sub(evicted_records) + accepted.len() as u64;
            st.bytes = st.bytes.saturating_sub(evicted_bytes) + accepted_bytes;
            st.backfill_records = st.backfill_records.saturating_sub(evicted_backfill);
            CommitOutcome {
                accepted: accepted.len(),
                ids: (!accepted.is_empty()).then(|| (first_id, next_id - 1)),
                dropped_incoming: adm.drop_front,
                evicted_records,
                evicted_bytes,
                rejected: adm.reject_back,
            }
        };
        if let Err(e) = self.sync() {
            return Err(match e {
                BufferError::NotDurable { source, .. } => BufferError::NotDurable {
                    source,
                    outcome: Some(Box::new(outcome)),
                },
                other => other,
            });
        }
        debug!(
            accepted = outcome.accepted,
            evicted = outcome.evicted_records,
            dropped = outcome.dropped_incoming,
            rejected = outcome.rejected,
            "buffer commit"
        );
        Ok(outcome)
    }

    /// Flush, then make everything stored so far visible to the shipper.
    /// Fails with [`BufferError::NotDurable`].
    pub fn sync(&self) -> Result<(), BufferError> {
        let target = self.lock_state().next_id - 1;
        self.tree
            .flush()
            .map_err(|source| BufferError::NotDurable {
                source,
                outcome: None,
            })?;
        let raised = {
            let mut st = self.lock_state();
            let raised = target > st.durable_id;
            st.durable_id = st.durable_id.max(target);
            raised
        };
        if raised {
            self.committed.notify_one();
        }
        Ok(())
    }

    /// Evict the oldest points not handed out (of either lane) until `want` bytes
    /// are freed: adds chunk removals/rewrites to `batch`, returns (points, bytes,
    /// backfill points) evicted.
    fn plan_eviction(
        &self,
        st: &State,
        want: u64,
        batch: &mut sled::Batch,
    ) -> Result<(u64, u64, u64), BufferError> {
        let (mut n, mut freed, mut backfill) = (0u64, 0u64, 0u64);
        if want == 0 {
            return Ok((0, 0, 0));
        }
        let live_from = st.handed_out.saturating_add(1);
        let from = st
            .backfill
            .next_in_lane(Lane::Backfill, st.backfill_handed.saturating_add(1))
            .map_or(live_from, |b| b.min(live_from));
        for item in chunks_from(&self.tree, from) {
            let (key, bytes) = item?;
            let Ok(entries) = chunk::decode(&key, &bytes) else {
                // Left for read_after to remove and recount; it cannot be sized here.
                continue;
            };
            let mut keep = Vec::with_capacity(entries.len());
            let mut evicted_here = false;
            for (id, value) in entries {
                if id >= from && !st.held(id) && freed < want {
                    n += 1;
                    freed += record_size(value.len());
                    backfill += u64::from(st.backfill.contains(id));
                    evicted_here = true;
                } else {
                    keep.push((id, value));
                }
            }
            if evicted_here {
                if keep.is_empty() {
                    batch.remove(key);
                } else {
                    let base = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
                    batch.insert(key, chunk::encode(base, &keep));
                }
            }
            if freed >= want {
                break;
            }
        }
        Ok((n, freed, backfill))
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state is plain counters, updated after the fallible step: a panic
        // elsewhere while holding the lock cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Id of the oldest stored point.
    fn first_id(&self) -> Result<Option<u64>, BufferError> {
        let Some(item) = self.tree.range(..META).next() else {
            return Ok(None);
        };
        let (key, value) = item?;
        Ok(chunk::decode(&key, &value)
            .ok()
            .and_then(|e| e.first().map(|(id, _)| *id)))
    }

    /// Durable records of `lane` with an id greater than `after`, oldest first.
    fn read_lane(
        &self,
        lane: Lane,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BufferError> {
        let mut st = self.lock_state();
        let start = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
        };
        let mark = match lane {
            Lane::Live => st.handed_out,
            Lane::Backfill => st.backfill_handed,
        };
        if max == 0 || st.durable_id == 0 || start > st.durable_id {
            return Ok(Vec::new());
        }
        let durable = st.durable_id;
        let mut out = Vec::with_capacity(max.min(1024));
        let mut malformed = Vec::new();
        // Points of this lane between its handed-out mark and `start` (a caller
        // that skips ahead) become the shipper's too: scan them for their sizes.
        let Some(scan_from) = st
            .backfill
            .next_in_lane(lane, start.min(mark.saturating_add(1)))
        else {
            return Ok(Vec::new());
        };
        let (mut crossing_n, mut crossing_bytes) = (0u64, 0u64);
        // Each pass reads chunks from `pos` until the other lane's ids begin; the
        // next pass starts past them (the ranges are few, so the passes are too).
        let mut pos = scan_from;
        'passes: loop {
            let mut jump = None;
            'chunks: for item in chunks_from(&self.tree, pos) {
                let (key, bytes) = item?;
                if key.as_ref() > &StoredRecord::key(durable)[..] {
                    break 'passes;
                }
                let entries = match chunk::decode(&key, &bytes) {
                    Ok(e) => e,
                    Err(reason) => {
                        warn!(path = %self.path.display(), reason, "undecodable buffer chunk");
                        malformed.push(key);
                        continue;
                    }
                };
                // Decode this chunk's wanted records first: a chunk is used whole or
                // (when a record in it is damaged) removed whole.
                let wanted = |id: u64| {
                    id >= start && id >= pos && id <= durable && st.backfill.in_lane(lane, id)
                };
                let decoded: Result<Vec<Option<StoredRecord>>, _> = entries
                    .iter()
                    .map(|(id, v)| {
                        if wanted(*id) {
                            StoredRecord::decode(&StoredRecord::key(*id), v).map(Some)
                        } else {
                            Ok(None)
                        }
                    })
                    .collect();
                let decoded = match decoded {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(path = %self.path.display(), error = %e, "undecodable buffer record");
                        malformed.push(key);
                        continue;
                    }
                };
                for ((id, value), record) in entries.into_iter().zip(decoded) {
                    if id < pos {
                        continue;
                    }
                    if id > durable {
                        break 'passes;
                    }
                    if !st.backfill.in_lane(lane, id) {
                        jump = st.backfill.next_in_lane(lane, id);
                        break 'chunks;
                    }
                    // Counted now, applied only if something is handed out: every id
                    // scanned is then at most the last one handed out.
                    if id > mark {
                        crossing_n += 1;
                        crossing_bytes += record_size(value.len());
                    }
                    if let Some(r) = record {
                        out.push(r);
                        if out.len() >= max {
                            break 'passes;
                        }
                    }
                }
            }
            match jump {
                Some(next) => pos = next,
                None => break,
            }
        }
        if let Some(last) = out.last().map(|r| r.id) {
            if last > mark {
                st.held_records += crossing_n;
                st.held_bytes += crossing_bytes;
                match lane {
                    Lane::Live => st.handed_out = last,
                    Lane::Backfill => {
                        st.backfill_held += crossing_n;
                        st.backfill_handed = last;
                    }
                }
            }
        }
        if !malformed.is_empty() {
            self.drop_malformed(&mut st, malformed)?;
        }
        Ok(out)
    }

    /// Remove chunks that do not decode (found while running: sled handed back
    /// bytes we did not write), then recount, since their points are unknown.
    fn drop_malformed(&self, st: &mut State, keys: Vec<sled::IVec>) -> Result<(), BufferError> {
        let mut batch = sled::Batch::default();
        let count = keys.len() as u64;
        for k in keys {
            batch.remove(k);
        }
        self.tree.apply_batch(batch)?;
        st.malformed_removed += count;
        error!(path = %self.path.display(), count, "removed undecodable chunks from the disk buffer");
        let (mut records, mut bytes, mut held_records, mut held_bytes) = (0, 0, 0, 0);
        let (mut backfill, mut backfill_held) = (0, 0);
        for item in self.tree.range(..META) {
            let (key, value) = item?;
            for (id, v) in chunk::decode(&key, &value).unwrap_or_default() {
                records += 1;
                bytes += record_size(v.len());
                let in_backfill = st.backfill.contains(id);
                backfill += u64::from(in_backfill);
                if st.held(id) {
                    held_records += 1;
                    held_bytes += record_size(v.len());
                    backfill_held += u64::from(in_backfill);
                }
            }
        }
        (st.records, st.bytes, st.held_records, st.held_bytes) =
            (records, bytes, held_records, held_bytes);
        st.backfill_records = backfill;
        st.backfill_held = backfill_held;
        Ok(())
    }
}

/// Add `records` (ids from `first_id`) to `batch` as chunks.
fn append_chunks(batch: &mut sled::Batch, first_id: u64, records: &[NewRecord]) {
    let mut buf: Vec<u8> = Vec::new();
    let mut base = first_id;
    let mut in_chunk = 0usize;
    for (i, r) in records.iter().enumerate() {
        let id = first_id + i as u64;
        let entry = chunk::ENTRY_HEADER + r.value.len();
        if in_chunk > 0 && (in_chunk == chunk::MAX_POINTS || buf.len() + entry > chunk::MAX_BYTES) {
            batch.insert(&StoredRecord::key(base)[..], std::mem::take(&mut buf));
            in_chunk = 0;
        }
        if in_chunk == 0 {
            base = id;
            buf.reserve(chunk::MAX_BYTES.max(entry));
        }
        // id - base < MAX_POINTS, so the offset fits.
        chunk::push(&mut buf, (id - base) as u32, &r.value);
        in_chunk += 1;
    }
    if in_chunk > 0 {
        batch.insert(&StoredRecord::key(base)[..], buf);
    }
}

impl crate::ship::RecordStore for Buffer {
    fn read_after(&self, after: Option<u64>, max: usize) -> Result<Vec<StoredRecord>, BufferError> {
        self.read_lane(Lane::Live, after, max)
    }

    fn read_backfill_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BufferError> {
        self.read_lane(Lane::Backfill, after, max)
    }

    fn open_backfill(&self) -> Result<Option<(u64, u64)>, BufferError> {
        let mut st = self.lock_state();
        // Every stored live record past both lanes' marks moves to the backfill lane
        // (one below the backfill's mark would never be read by either lane).
        let lo = st.handed_out.max(st.backfill_handed).saturating_add(1);
        let hi = st.next_id.saturating_sub(1);
        if lo > hi {
            return Ok(None);
        }
        // Ids from `lo` up to the last range's end are backfill already: count only
        // the records committed since, so repeated opens during an outage stay cheap.
        let scan_from = lo.max(st.backfill_scanned.saturating_add(1));
        let mut moving = 0u64;
        for item in chunks_from(&self.tree, scan_from) {
            let (key, bytes) = item?;
            let Ok(entries) = chunk::decode(&key, &bytes) else {
                continue;
            };
            moving += entries
                .iter()
                .filter(|(id, _)| (scan_from..=hi).contains(id) && !st.backfill.contains(*id))
                .count() as u64;
        }
        st.backfill_scanned = hi;
        if moving == 0 {
            return Ok(None);
        }
        let mut ranges = st.backfill.clone();
        ranges.add(lo, hi);
        if let Some(first) = self.first_id()? {
            ranges.forget_below(first);
        }
        // Durable before any of them is handed out: a record keeps its lane across a crash.
        self.tree
            .insert(meta_key(KIND_BACKFILL, &[]), ranges.encode())?;
        self.tree.flush()?;
        st.backfill = ranges;
        st.backfill_records += moving;
        info!(
            path = %self.path.display(),
            from = lo,
            to = hi,
            records = moving,
            "buffered records moved to the backfill lane"
        );
        Ok(Some((lo, hi)))
    }

    fn backfill_records(&self) -> u64 {
        self.lock_state().backfill_records
    }

    fn remove(&self, ids: &[u64]) -> Result<(), BufferError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        {
            let mut st = self.lock_state();
            let mut batch = sled::Batch::default();
            let (mut n, mut bytes, mut held_n, mut held_bytes) = (0u64, 0u64, 0u64, 0u64);
            let (mut backfill_n, mut backfill_held_n) = (0u64, 0u64);
            let mut i = 0;
            while i < ids.len() {
                let Some(item) = self.tree.range(..=StoredRecord::key(ids[i])).next_back() else {
                    i += 1;
                    continue;
                };
                let (key, value) = item?;
                let Ok(entries) = chunk::decode(&key, &value) else {
                    i += 1;
                    continue;
                };
                let chunk_last = entries.last().map_or(0, |(id, _)| *id);
                // Ids past this chunk's last point are not in it (gone already);
                // never touch a chunk twice in one batch.
                let end = i + ids[i..].partition_point(|id| *id <= chunk_last);
                if end == i {
                    i += 1;
                    continue;
                }
                let doomed = &ids[i..end];
                let mut keep = Vec::with_capacity(entries.len());
                for (id, v) in entries {
                    if doomed.binary_search(&id).is_ok() {
                        let size = record_size(v.len());
                        n += 1;
                        bytes += size;
                        let in_backfill = st.backfill.contains(id);
                        backfill_n += u64::from(in_backfill);
                        if st.held(id) {
                            held_n += 1;
                            held_bytes += size;
                            backfill_held_n += u64::from(in_backfill);
                        }
                    } else {
                        keep.push((id, v));
                    }
                }
                if keep.is_empty() {
                    batch.remove(key);
                } else {
                    let base = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
                    batch.insert(key, chunk::encode(base, &keep));
                }
                i = end;
            }
            // The backfill is gone: forget its ranges with the last of it (every
            // later id is live, so nothing changes lanes).
            let backfill_gone = backfill_n > 0 && backfill_n >= st.backfill_records;
            if backfill_gone {
                batch.remove(meta_key(KIND_BACKFILL, &[]));
            }
            self.tree.apply_batch(batch)?;
            if backfill_gone {
                st.backfill.clear();
                st.backfill_handed = 0;
                st.backfill_scanned = 0;
            }
            st.backfill_records = st.backfill_records.saturating_sub(backfill_n);
            st.backfill_held = st.backfill_held.saturating_sub(backfill_held_n);
            st.records = st.records.saturating_sub(n);
            st.bytes = st.bytes.saturating_sub(bytes);
            st.held_records = st.held_records.saturating_sub(held_n);
            st.held_bytes = st.held_bytes.saturating_sub(held_bytes);
        }
        self.tree.flush()?;
        Ok(())
    }

    fn oldest_created_at(&self) -> Option<u64> {
        let (key, value) = self.tree.range(..META).next()?.ok()?;
        let entries = chunk::decode(&key, &value).ok()?;
        let (_, first) = entries.first()?;
        let head: [u8; 8] = first.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(head))
    }

    fn committed(&self) -> Arc<Notify> {
        Arc::clone(&self.committed)
    }
}

/// `<path>.corrupt-<unix-ms>`, with a counter if that exists already.
fn aside_path(path: &Path, now_ms: u64) -> PathBuf {
    let base = path.as_os_str().to_owned();
    let mut n = 0u32;
    loop {
        let mut p = base.clone();
        p.push(format!(".corrupt-{now_ms}"));
        if n > 0 {
            p.push(format!("-{n}"));
        }
        let p = PathBuf::from(p);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// [`attempt_open`], retried while the lock is held, up to `cfg.lock_wait`.
/// sled releases its lock only when the last handle to the files is gone,
/// which a previous owner (an exiting process, or a just-dropped `Buffer`
/// whose background I/O is finishing) may still hold for a moment.
fn attempt_open_waiting(cfg: &BufferConfig) -> Result<(Buffer, OpenReport), OpenFailure> {
    let deadline = std::time::Instant::now() + cfg.lock_wait;
    let mut logged = false;
    loop {
        match attempt_open(cfg) {
            Err(OpenFailure::Fatal(BufferError::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::warn!(
                        path = %cfg.path.display(),
                        wait = ?cfg.lock_wait,
                        "disk buffer is locked by another owner; waiting for it to be released"
                    );
                    logged = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn attempt_open(cfg: &BufferConfig) -> Result<(Buffer, OpenReport), OpenFailure> {
    // sled creates its `db` file on open; a non-empty one that holds no format
    // marker afterwards means the old content was lost or is not ours.
    let had_data = std::fs::metadata(cfg.path.join("db"))
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    match catch_unwind(AssertUnwindSafe(|| open_inner(cfg, had_data))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(OpenFailure::Unusable(format!(
                "sled panicked while opening: {msg}"
            )))
        }
    }
}

fn classify(path: &Path, e: sled::Error) -> OpenFailure {
    if let sled::Error::Io(io) = &e {
        use std::io::ErrorKind as K;
        let msg = io.to_string();
        if msg.contains("could not acquire lock") || io.kind() == K::WouldBlock {
            return OpenFailure::Fatal(BufferError::Locked {
                path: path.to_owned(),
                detail: msg,
            });
        }
        let no_space = io.raw_os_error() == Some(libc::ENOSPC);
        if no_space
            || matches!(
                io.kind(),
                K::PermissionDenied | K::ReadOnlyFilesystem | K::StorageFull | K::OutOfMemory
            )
        {
            return OpenFailure::Fatal(BufferError::Open {
                path: path.to_owned(),
                cause: msg,
            });
        }
    }
    OpenFailure::Unusable(format!("sled error: {e}"))
}

fn open_inner(cfg: &BufferConfig, had_data: bool) -> Result<(Buffer, OpenReport), OpenFailure> {
    let path = &cfg.path;
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache_bytes)
        // We decide durability (group commits); no background flush thread.
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(|e| classify(path, e))?;
    let tree = db.open_tree(TREE_NAME).map_err(|e| classify(path, e))?;
    let sled_err = |e: sled::Error| classify(path, e);

    match tree.get(meta_key(KIND_VERSION, &[])).map_err(sled_err)? {
        Some(v) => {
            let version = <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes);
            match version {
                Ok(FORMAT_VERSION) => {}
                Ok(other) => {
                    return Err(OpenFailure::Unusable(format!(
                        "buffer format version {other}, this agent reads version {FORMAT_VERSION}"
                    )))
                }
                Err(_) => {
                    return Err(OpenFailure::Unusable(
                        "malformed format version marker".into(),
                    ))
                }
            }
        }
        None => {
            if had_data || !tree.is_empty() {
                return Err(OpenFailure::Unusable(
                    "no linewatch buffer format marker in an existing sled database".into(),
                ));
            }
            tree.insert(meta_key(KIND_VERSION, &[]), &FORMAT_VERSION.to_be_bytes())
                .map_err(sled_err)?;
            tree.flush().map_err(sled_err)?;
            info!(path = %path.display(), version = FORMAT_VERSION, "created a new disk buffer");
        }
    }

    // Rebuild the in-memory counters; collect chunks that do not decode (as a
    // chunk, or any record in it).
    let (mut records, mut bytes, mut last_id) = (0u64, 0u64, 0u64);
    let mut first_id = None;
    let mut backfill = match tree.get(meta_key(KIND_BACKFILL, &[])).map_err(sled_err)? {
        Some(v) => BackfillRanges::decode(&v).unwrap_or_else(|reason| {
            // Losing the lanes costs at most duplicates downstream, never points.
            error!(path = %path.display(), reason, "backfill ranges unreadable; every point is live");
            BackfillRanges::default()
        }),
        None => BackfillRanges::default(),
    };
    let mut backfill_records = 0u64;
    let mut malformed = Vec::new();
    for item in tree.range(..META) {
        let (k, v) = item.map_err(sled_err)?;
        let checked = chunk::decode(&k, &v).and_then(|entries| {
            for (id, value) in &entries {
                StoredRecord::decode(&StoredRecord::key(*id), value).map_err(|e| e.reason)?;
            }
            Ok(entries)
        });
        match checked {
            Ok(entries) => {
                records += entries.len() as u64;
                bytes += entries
                    .iter()
                    .map(|(_, v)| record_size(v.len()))
                    .sum::<u64>();
                last_id = entries.last().map_or(last_id, |(id, _)| *id);
                first_id = first_id.or(entries.first().map(|(id, _)| *id));
                if !backfill.is_empty() {
                    backfill_records += entries
                        .iter()
                        .filter(|(id, _)| backfill.contains(*id))
                        .count() as u64;
                }
            }
            Err(reason) => {
                warn!(path = %path.display(), reason, "undecodable buffer chunk");
                // Its ids were given out once; never give them again.
                if let Ok(id) = <[u8; 8]>::try_from(k.as_ref()) {
                    last_id = last_id.max(u64::from_be_bytes(id));
                }
                malformed.push(k);
            }
        }
    }
    let malformed_removed = malformed.len() as u64;
    if !malformed.is_empty() {
        let mut batch = sled::Batch::default();
        for k in malformed {
            batch.remove(k);
        }
        tree.apply_batch(batch).map_err(sled_err)?;
        tree.flush().map_err(sled_err)?;
        error!(path = %path.display(), count = malformed_removed, "removed undecodable chunks from the disk buffer");
    }

    let stored_next = match tree.get(meta_key(KIND_NEXT_ID, &[])).map_err(sled_err)? {
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
        None => 0,
    };
    let next_id = stored_next.max(last_id + 1).max(1);
    backfill.forget_below(first_id.unwrap_or(next_id));
    let sequences = read_sequences(&tree).map_err(|e| match e {
        BufferError::Sled(e) => classify(path, e),
        other => OpenFailure::Unusable(other.to_string()),
    })?;

    let state = State {
        next_id,
        // Everything recovered from disk is durable.
        durable_id: next_id - 1,
        handed_out: 0,
        records,
        bytes,
        held_records: 0,
        held_bytes: 0,
        malformed_removed,
        backfill,
        backfill_handed: 0,
        backfill_records,
        backfill_held: 0,
        backfill_scanned: 0,
    };
    info!(
        path = %path.display(),
        records,
        bytes,
        sources = sequences.len(),
        "opened disk buffer"
    );
    let report = OpenReport {
        records,
        bytes,
        sequences,
        moved_aside: None,
        malformed_removed,
    };
    let buffer = Buffer {
        db,
        tree,
        path: path.clone(),
        max_bytes: cfg.max_bytes,
        policy: cfg.overflow,
        state: Mutex::new(state),
        commit_lock: Mutex::new(()),
        committed: Arc::new(Notify::new()),
    };
    Ok((buffer, report))
}

fn read_sequences(tree: &sled::Tree) -> Result<HashMap<String, u64>, BufferError> {
    let prefix = meta_key(KIND_SEQUENCE, &[]);
    let mut out = HashMap::new();
    for item in tree.scan_prefix(&prefix) {
        let (k, v) = item?;
        let source = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        match <[u8; 8]>::try_from(v.as_ref()) {
            Ok(b) => {
                out.insert(source, u64::from_be_bytes(b));
            }
            // Never written by us; restarting the source at 1 would reuse numbers,
            // so refuse to guess.
            Err(_) => {
                return Err(BufferError::Decode(super::RecordDecodeError {
                    id: 0,
                    reason: "sequence counter is not 8 bytes",
                }))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::RecordStore;
    use std::time::Duration;

    fn cfg(dir: &Path, max_bytes: u64, overflow: OverflowPolicy) -> BufferConfig {
        BufferConfig {
            path: dir.join("buffer"),
            max_bytes,
            overflow,
            commit_interval: Duration::from_millis(200),
            commit_max_points: 10_000,
            cache_bytes: 1024 * 1024,
            lock_wait: Duration::from_secs(5),
        }
    }

    /// A record whose logical size is exactly `size` bytes (key 8 + header 10 + pk 1 + data).
    fn rec(created_at: u64, size: usize) -> NewRecord {
        let data = vec![b'x'; size - 8 - 10 - 1];
        let r = NewRecord::new(created_at, "e", &data);
        assert_eq!(r.size(), size as u64);
        r
    }

    fn ids(recs: &[StoredRecord]) -> Vec<u64> {
        recs.iter().map(|r| r.id).collect()
    }

    fn no_seqs() -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    #[test]
    fn commit_read_remove_and_reopen_keeps_records_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let (b, report) = Buffer::open(&c).unwrap();
            assert_eq!(report.records, 0);
            assert!(report.moved_aside.is_none());
            assert!(b.read_after(None, 10).unwrap().is_empty());

            let out = b
                .commit(
                    &[rec(10, 100), rec(11, 100), rec(12, 100)],
                    [("a", 4u64), ("b", 2)],
                )
                .unwrap();
            assert_eq!(out.accepted, 3);
            assert_eq!(out.ids, Some((1, 3)));
            assert_eq!(b.stats().records, 3);
            assert_eq!(b.stats().bytes, 300);
            assert_eq!(b.oldest_created_at(), Some(10));

            let got = b.read_after(None, 2).unwrap();
            assert_eq!(ids(&got), vec![1, 2]);
            assert_eq!(got[0].created_at, 10);
            assert_eq!(got[0].partition_key, "e");
            assert_eq!(ids(&b.read_after(Some(2), 10).unwrap()), vec![3]);
            assert!(b.read_after(Some(3), 10).unwrap().is_empty());
            assert!(b.read_after(Some(u64::MAX), 10).unwrap().is_empty());

            b.remove(&[1]).unwrap();
            assert_eq!(b.stats().records, 2);
            assert_eq!(b.oldest_created_at(), Some(11));
            b.commit(&[rec(13, 100)], [("a", 5u64)]).unwrap();
        }
        let (b, report) = Buffer::open(&c).unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(report.bytes, 300);
        assert_eq!(
            report.sequences,
            HashMap::from([("a".into(), 5), ("b".into(), 2)])
        );
        assert_eq!(b.sequences().unwrap(), report.sequences);
        // Everything recovered is durable and readable; ids continue after the last.
        assert_eq!(ids(&b.read_after(None, 10).unwrap()), vec![2, 3, 4]);
        let out = b.commit(&[rec(14, 100)], no_seqs()).unwrap();
        assert_eq!(out.ids, Some((5, 5)));
    }

    #[test]
    fn ids_are_not_reused_after_the_buffer_empties_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let (b, _) = Buffer::open(&c).unwrap();
            b.commit(&[rec(1, 50), rec(2, 50)], no_seqs()).unwrap();
            b.remove(&[1, 2]).unwrap();
            assert_eq!(b.stats().records, 0);
            assert_eq!(b.oldest_created_at(), None);
        }
        let (b, _) = Buffer::open(&c).unwrap();
        assert_eq!(
            b.commit(&[rec(3, 50)], no_seqs()).unwrap().ids,
            Some((3, 3))
        );
    }

    #[test]
    fn commit_notifies_even_when_nobody_waits_yet() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = Buffer::open(&cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest)).unwrap();
        let notify = b.committed();
        b.commit(&[rec(1, 50)], no_seqs()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), notify.notified())
                .await
                .expect("the commit left a permit");
        });
    }

    #[test]
    fn drop_oldest_evicts_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = Buffer::open(&cfg(dir.path(), 1000, OverflowPolicy::DropOldest)).unwrap();
        let first: Vec<_> = (0..10).map(|i| rec(i, 100)).collect();
        assert_eq!(b.commit(&first, no_seqs()).unwrap().dropped_oldest(), 0);
        assert_eq!(b.stats().bytes, 1000);

        let out = b
            .commit(&[rec(10, 100), rec(11, 100), rec(12, 100)], no_seqs())
            .unwrap();
        assert_eq!(out.accepted, 3);
        assert_eq!(out.evicted_records, 3);
        assert_eq!(out.evicted_bytes, 300);
        assert_eq!(out.dropped_oldest(), 3);
        assert_eq!(out.rejected_new(), 0);
        let s = b.stats();
        assert_eq!((s.records, s.bytes), (10, 1000));
        // The three oldest are gone; the newest are kept.
        let got = b.read_after(None, 100).unwrap();
        assert_eq!(ids(&got), (4..=13).collect::<Vec<_>>());

        // A batch larger than the whole buffer keeps its newest part.
        let dir2 = tempfile::tempdir().unwrap();
        let (b2, _) = Buffer::open(&cfg(dir2.path(), 1000, OverflowPolicy::DropOldest)).unwrap();
        let big: Vec<_> = (0..15).map(|i| rec(i, 100)).collect();
        let out = b2.commit(&big, no_seqs()).unwrap();
        assert_eq!((out.dropped_incoming, out.accepted), (5, 10));
        assert_eq!(b2.oldest_created_at(), Some(5));
    }

    #[test]
    fn reject_new_refuses_and_counts_and_never_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = Buffer::open(&cfg(dir.path(), 1000, OverflowPolicy::RejectNew)).unwrap();
        let first: Vec<_> = (0..8).map(|i| rec(i, 100)).collect();
        b.commit(&first, [("s", 9u64)]).unwrap();
        let out = b
            .commit(
                &[rec(8, 100), rec(9, 100), rec(10, 100), rec(11, 100)],
                [("s", 13u64)],
            )
            .unwrap();
        assert_eq!((out.accepted, out.rejected, out.evicted_records), (2, 2, 0));
        assert_eq!(out.rejected_new(), 2);
        assert_eq!(out.dropped_oldest(), 0);
        assert_eq!(b.stats().bytes, 1000);
        assert_eq!(b.oldest_created_at(), Some(0));
        // Numbers of refused points are consumed, never reused.
        assert_eq!(b.sequences().unwrap()["s"], 13);
        // Room again once the shipper removes some.
        b.read_after(None, 2).unwrap();
        b.remove(&[1, 2]).unwrap();
        assert_eq!(b.commit(&[rec(12, 100)], no_seqs()).unwrap().accepted, 1);
    }

    #[test]
    fn handed_out_records_are_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = Buffer::open(&cfg(dir.path(), 1000, OverflowPolicy::DropOldest)).unwrap();
        let first: Vec<_> = (0..10).map(|i| rec(i, 100)).collect();
        b.commit(&first, no_seqs()).unwrap();
        // The shipper takes 1..=3 (in flight).
        assert_eq!(ids(&b.read_after(None, 3).unwrap()), vec![1, 2, 3]);
        assert_eq!((b.stats().held_records, b.stats().held_bytes), (3, 300));

        let out = b.commit(&[rec(10, 100), rec(11, 100)], no_seqs()).unwrap();
        assert_eq!(out.evicted_records, 2);
        let all = ids(&b.read_after(None, 100).unwrap());
        assert_eq!(all, vec![1, 2, 3, 6, 7, 8, 9, 10, 11, 12]);

        // Only 7 records' worth can ever be evicted now (everything was handed out
        // by the read above); a new batch cannot push the held ones out.
        let out = b.commit(&[rec(12, 100)], no_seqs()).unwrap();
        assert_eq!(
            (out.accepted, out.dropped_incoming, out.evicted_records),
            (0, 1, 0)
        );
        assert_eq!(ids(&b.read_after(None, 3).unwrap()), vec![1, 2, 3]);

        // Once acknowledged, their space is free again.
        b.remove(&[1, 2, 3]).unwrap();
        let s = b.stats();
        assert_eq!((s.records, s.held_records, s.held_bytes), (7, 7, 700));
        assert_eq!(b.commit(&[rec(13, 100)], no_seqs()).unwrap().accepted, 1);
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_a_fresh_buffer_starts() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let (b, _) = Buffer::open(&c).unwrap();
            b.commit(&[rec(1, 100)], [("a", 2u64)]).unwrap();
        }
        for entry in std::fs::read_dir(&c.path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
            }
        }
        let (b, report) = Buffer::open_at(&c, 1_732_180_000_123).unwrap();
        let moved = report.moved_aside.expect("moved aside");
        assert_eq!(moved.from, c.path);
        assert_eq!(
            moved.to,
            dir.path().join("buffer.corrupt-1732180000123"),
            "cause: {}",
            moved.cause
        );
        assert!(moved.to.is_dir(), "the old buffer is kept for inspection");
        assert_eq!(report.records, 0);
        assert!(report.sequences.is_empty());
        // The fresh buffer works.
        assert_eq!(b.commit(&[rec(2, 100)], no_seqs()).unwrap().accepted, 1);
    }

    #[test]
    fn a_wrong_format_version_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let db = sled::Config::new().path(&c.path).open().unwrap();
            let t = db.open_tree(TREE_NAME).unwrap();
            t.insert(meta_key(KIND_VERSION, &[]), &99u32.to_be_bytes())
                .unwrap();
            t.flush().unwrap();
        }
        let (_b, report) = Buffer::open_at(&c, 7).unwrap();
        let moved = report.moved_aside.expect("moved aside");
        assert!(moved.cause.contains("version 99"), "{}", moved.cause);
        // Twice in the same millisecond: the second gets its own name.
        drop(_b);
        {
            let db = sled::Config::new().path(&c.path).open().unwrap();
            let t = db.open_tree(TREE_NAME).unwrap();
            t.insert(meta_key(KIND_VERSION, &[]), &98u32.to_be_bytes())
                .unwrap();
            t.flush().unwrap();
        }
        let (_b, report) = Buffer::open_at(&c, 7).unwrap();
        assert_eq!(
            report.moved_aside.unwrap().to,
            dir.path().join("buffer.corrupt-7-1")
        );
    }

    #[test]
    fn a_sled_database_that_is_not_ours_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let db = sled::Config::new().path(&c.path).open().unwrap();
            db.insert(b"something", b"else").unwrap();
            db.flush().unwrap();
        }
        let (_b, report) = Buffer::open_at(&c, 8).unwrap();
        assert!(report.moved_aside.is_some());
    }

    #[test]
    fn a_locked_buffer_is_an_error_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        c.lock_wait = Duration::from_millis(200);
        let (_held, _) = Buffer::open(&c).unwrap();
        let started = std::time::Instant::now();
        let err = Buffer::open(&c).unwrap_err();
        assert!(
            started.elapsed() >= c.lock_wait,
            "waited for the lock first"
        );
        assert!(matches!(err, BufferError::Locked { .. }), "{err}");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "nothing moved aside");
    }

    #[test]
    fn undecodable_records_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 1 << 20, OverflowPolicy::DropOldest);
        {
            let (b, _) = Buffer::open(&c).unwrap();
            b.commit(&[rec(1, 100), rec(2, 100)], no_seqs()).unwrap();
            // A value too short for its header, under a valid id.
            b.tree
                .insert(StoredRecord::key(3), &[1u8, 2, 3][..])
                .unwrap();
            b.tree.flush().unwrap();
        }
        let (b, report) = Buffer::open(&c).unwrap();
        assert_eq!(report.malformed_removed, 1);
        assert_eq!(report.records, 2);
        assert_eq!(ids(&b.read_after(None, 10).unwrap()), vec![1, 2]);
        assert_eq!(
            b.commit(&[rec(3, 100)], no_seqs()).unwrap().ids,
            Some((4, 4))
        );
    }

    /// Damage sled's data file the ways a bad flash card or a cut write might:
    /// sled refuses, panics (caught), silently recovers an empty database (caught
    /// by the missing format marker) — then the old buffer is moved aside — or
    /// recovers a consistent prefix. Never a panic, and a working buffer after.
    #[test]
    fn damaged_data_file_is_moved_aside_whatever_sled_makes_of_it() {
        for damage in ["garbage", "truncated", "zeroed_tail", "bit_flips"] {
            let dir = tempfile::tempdir().unwrap();
            let c = cfg(dir.path(), 1 << 30, OverflowPolicy::DropOldest);
            {
                let (b, _) = Buffer::open(&c).unwrap();
                for i in 0..30u64 {
                    let recs: Vec<_> = (0..100).map(|j| rec(i * 100 + j, 220)).collect();
                    b.commit(&recs, [("a", i + 1)]).unwrap();
                }
            }
            let db = c.path.join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            let len = bytes.len();
            match damage {
                "garbage" => bytes = vec![0x5a; len],
                "truncated" => bytes.truncate(len / 3),
                "zeroed_tail" => bytes[len / 2..].fill(0),
                _ => (0..len).step_by(997).for_each(|i| bytes[i] ^= 0xff),
            }
            std::fs::write(&db, &bytes).unwrap();

            let (b, report) = Buffer::open_at(&c, 42).unwrap();
            match &report.moved_aside {
                Some(moved) => {
                    assert_eq!(moved.to, dir.path().join("buffer.corrupt-42"), "{damage}");
                    assert!(moved.to.join("db").is_file(), "{damage}");
                    assert_eq!(report.records, 0, "{damage}");
                }
                // A cut-off or zeroed log tail is what a torn write looks like:
                // sled may recover a prefix of whole batches (its checksums stop
                // at the damage). Then points and counters must still agree.
                None if damage != "garbage" => {
                    let seq = report.sequences.get("a").copied().unwrap_or(0);
                    assert_eq!(report.records, seq * 100, "{damage}: {report:?}");
                }
                None => panic!("{damage}: not moved aside: {report:?}"),
            }
            assert_eq!(
                b.commit(&[rec(1, 100)], no_seqs()).unwrap().accepted,
                1,
                "{damage}"
            );
        }
    }

    const CRASH_DIR_ENV: &str = "LINEWATCH_BUFFER_CRASH_CHILD_DIR";

    /// The child of `points_and_counters_agree_after_kill_9`: commits forever
    /// (bounded by time) and reports each commit on stdout.
    #[test]
    #[ignore = "run by points_and_counters_agree_after_kill_9 in a child process"]
    fn crash_child() {
        use std::io::Write;
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let c = cfg(Path::new(&dir), 1 << 30, OverflowPolicy::DropOldest);
        let (b, _) = Buffer::open(&c).unwrap();
        let mut next = HashMap::from([("a", 1u64), ("b", 1u64)]);
        let stop = std::time::Instant::now() + Duration::from_secs(60);
        let mut n = 0u64;
        while std::time::Instant::now() < stop {
            let mut recs = Vec::new();
            for i in 0..50 {
                let src = if i % 3 == 0 { "b" } else { "a" };
                let seq = next[src];
                next.insert(src, seq + 1);
                recs.push(NewRecord::new(seq, src, format!("{src}:{seq}").as_bytes()));
            }
            b.commit(&recs, next.iter().map(|(s, n)| (*s, *n))).unwrap();
            n += 1;
            let mut out = std::io::stdout().lock();
            writeln!(out, "committed {n}").unwrap();
            out.flush().unwrap();
        }
    }

    /// A real crash: a child process commits in a loop and is killed with
    /// SIGKILL at an arbitrary point. After reopening, every source's stored
    /// counter is exactly one past its last stored point, and its points are
    /// 1, 2, 3, ... without a gap: commits are atomic with their counters.
    #[test]
    fn points_and_counters_agree_after_kill_9() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "buffer::store::tests::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Wait (with a deadline) until the child has committed a few times, then kill it mid-loop.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(n) = line.strip_prefix("committed ") {
                    if tx.send(n.parse::<u64>().unwrap_or(0)).is_err() {
                        break;
                    }
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < 30 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(n) => seen = n,
                Err(e) => {
                    let _ = child.kill();
                    panic!("child did not commit 30 times in time ({e}), got {seen}");
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        let c = cfg(dir.path(), 1 << 30, OverflowPolicy::DropOldest);
        let (b, report) = Buffer::open(&c).unwrap();
        assert!(report.moved_aside.is_none());
        assert!(report.records >= 30 * 50, "{report:?}");
        assert_eq!(
            report.records % 50,
            0,
            "only whole commits survive: {report:?}"
        );
        let mut last: HashMap<String, u64> = HashMap::new();
        for r in b.read_after(None, usize::MAX).unwrap() {
            let text = String::from_utf8(r.data).unwrap();
            let (src, seq) = text.split_once(':').unwrap();
            let seq: u64 = seq.parse().unwrap();
            let prev = last.insert(src.to_owned(), seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "gap or reuse in {src}");
        }
        for (src, l) in &last {
            assert_eq!(
                report.sequences[src],
                l + 1,
                "counter of {src} disagrees with its points"
            );
        }
    }

    /// The chunk codec round-trips and never panics on bytes it did not write.
    mod chunk_codec {
        use super::super::chunk;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trips(base in 0u64..1 << 40, gaps in proptest::collection::vec((1u64..4, proptest::collection::vec(any::<u8>(), 0..64)), 1..16)) {
                let mut id = base;
                let mut entries = Vec::new();
                for (i, (gap, v)) in gaps.iter().enumerate() {
                    if i > 0 { id += gap; }
                    entries.push((id, v.as_slice()));
                }
                let bytes = chunk::encode(base, &entries);
                let back = chunk::decode(&base.to_be_bytes(), &bytes).unwrap();
                prop_assert_eq!(back, entries);
            }

            #[test]
            fn arbitrary_bytes_are_an_error_or_a_valid_chunk(key in proptest::collection::vec(any::<u8>(), 0..10), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Ok(entries) = chunk::decode(&key, &bytes) {
                    prop_assert!(!entries.is_empty());
                    prop_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
                }
            }
        }
    }

    /// Model-based: random commits, reads, removals and reopens against a plain
    /// map. Ids, sizes, created_at, held accounting, drop counts and the bound
    /// must match the model after every step, whatever the chunk layout does.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            Commit(Vec<usize>),
            /// A read of the live lane, or of the backfill lane.
            Read {
                backfill: bool,
                after: Option<u64>,
                max: usize,
            },
            Remove {
                held: Vec<proptest::sample::Index>,
                other: Vec<u64>,
            },
            Reopen,
            OpenBackfill,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => proptest::collection::vec(0usize..300, 0..40).prop_map(Op::Commit),
                3 => (proptest::option::of(0u64..200), 1usize..40).prop_map(|(after, max)| Op::Read { backfill: false, after, max }),
                3 => (proptest::collection::vec(any::<proptest::sample::Index>(), 0..30),
                      proptest::collection::vec(0u64..200, 0..3))
                    .prop_map(|(held, other)| Op::Remove { held, other }),
                1 => Just(Op::Reopen),
                1 => Just(Op::OpenBackfill),
                2 => (proptest::option::of(0u64..200), 1usize..40).prop_map(|(after, max)| Op::Read { backfill: true, after, max }),
            ]
        }

        #[derive(Default)]
        struct Model {
            /// id -> (size, created_at)
            records: BTreeMap<u64, (u64, u64)>,
            next_id: u64,
            handed_out: u64,
            /// Ids of the backfill lane, and its handed-out mark.
            backfill: std::collections::BTreeSet<u64>,
            backfill_handed: u64,
        }

        impl Model {
            fn bytes(&self) -> u64 {
                self.records.values().map(|(s, _)| s).sum()
            }
            fn is_held(&self, id: u64) -> bool {
                if self.backfill.contains(&id) {
                    id <= self.backfill_handed
                } else {
                    id <= self.handed_out
                }
            }
            fn held(&self) -> (u64, u64) {
                let held: Vec<u64> = self
                    .records
                    .iter()
                    .filter(|(id, _)| self.is_held(**id))
                    .map(|(_, (s, _))| *s)
                    .collect();
                (held.len() as u64, held.iter().sum())
            }
            fn stored_backfill(&self) -> u64 {
                self.records
                    .keys()
                    .filter(|id| self.backfill.contains(id))
                    .count() as u64
            }
            /// The lane's records after `after`, at most `max`.
            fn lane(&self, backfill: bool, after: Option<u64>, max: usize) -> Vec<(u64, u64)> {
                self.records
                    .range(after.map_or(0, |a| a + 1)..)
                    .filter(|(id, _)| self.backfill.contains(id) == backfill)
                    .take(max)
                    .map(|(id, (_, c))| (*id, *c))
                    .collect()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

            #[test]
            fn buffer_matches_a_simple_model(
                ops in proptest::collection::vec(op(), 1..40),
                drop_oldest: bool,
            ) {
                let policy = if drop_oldest { OverflowPolicy::DropOldest } else { OverflowPolicy::RejectNew };
                let max_bytes = 6_000;
                let dir = tempfile::tempdir().unwrap();
                let c = cfg(dir.path(), max_bytes, policy);
                let (mut b, _) = Buffer::open(&c).unwrap();
                let mut m = Model { next_id: 1, ..Model::default() };
                let mut created = 0u64;

                for op in ops {
                    match op {
                        Op::Commit(lens) => {
                            let stamps: Vec<u64> = lens.iter().map(|_| { created += 1; created }).collect();
                            let recs: Vec<NewRecord> = lens.iter().zip(&stamps)
                                .map(|(l, c)| NewRecord::new(*c, "e", &vec![b'd'; *l]))
                                .collect();
                            let sizes: Vec<u64> = recs.iter().map(NewRecord::size).collect();
                            let (_, held_b) = m.held();
                            let adm = policy::admit(Usage { used: m.bytes(), held: held_b, max_bytes }, &sizes, policy);
                            // Model eviction: oldest not handed out first.
                            let (mut ev_n, mut freed) = (0u64, 0u64);
                            let evictable: Vec<u64> = m.records.keys().filter(|id| !m.is_held(**id)).copied().collect();
                            for id in evictable {
                                if freed >= adm.evict_bytes { break; }
                                let (s, _) = m.records.remove(&id).unwrap();
                                freed += s;
                                ev_n += 1;
                            }
                            let first = m.next_id;
                            for (i, r) in recs[adm.drop_front..adm.drop_front + adm.accept].iter().enumerate() {
                                m.records.insert(first + i as u64, (r.size(), stamps[adm.drop_front + i]));
                            }
                            m.next_id += adm.accept as u64;

                            let out = b.commit(&recs, no_seqs()).unwrap();
                            prop_assert_eq!(out.accepted, adm.accept);
                            prop_assert_eq!(out.dropped_incoming, adm.drop_front);
                            prop_assert_eq!(out.rejected, adm.reject_back);
                            prop_assert_eq!(out.evicted_records, ev_n);
                            prop_assert_eq!(out.evicted_bytes, freed);
                            if adm.accept > 0 {
                                prop_assert!(m.bytes() <= max_bytes);
                            }
                        }
                        Op::Read { backfill, after, max } => {
                            let want = m.lane(backfill, after, max);
                            let read = if backfill { b.read_backfill_after(after, max) } else { b.read_after(after, max) };
                            let got: Vec<(u64, u64)> = read.unwrap()
                                .into_iter().map(|r| (r.id, r.created_at)).collect();
                            prop_assert_eq!(&got, &want);
                            if let Some((last, _)) = want.last() {
                                let mark = if backfill { &mut m.backfill_handed } else { &mut m.handed_out };
                                *mark = (*mark).max(*last);
                            }
                        }
                        Op::Remove { held, other } => {
                            let held_ids: Vec<u64> = m.records.keys().filter(|id| m.is_held(**id)).copied().collect();
                            let mut ids: Vec<u64> = if held_ids.is_empty() { Vec::new() } else {
                                held.iter().map(|i| held_ids[i.index(held_ids.len())]).collect()
                            };
                            ids.extend(other);
                            let before = m.stored_backfill();
                            for id in &ids { m.records.remove(id); }
                            // The last of the backfill gone: its ranges go with it.
                            if before > 0 && m.stored_backfill() == 0 {
                                m.backfill.clear();
                                m.backfill_handed = 0;
                            }
                            b.remove(&ids).unwrap();
                        }
                        Op::OpenBackfill => {
                            let (lo, hi) = (m.handed_out.max(m.backfill_handed) + 1, m.next_id - 1);
                            let moving = m.records.range(lo..).any(|(id, _)| !m.backfill.contains(id));
                            let got = b.open_backfill().unwrap();
                            if moving && lo <= hi {
                                prop_assert_eq!(got, Some((lo, hi)));
                                m.backfill.extend(lo..=hi);
                            } else {
                                prop_assert_eq!(got, None);
                            }
                        }
                        Op::Reopen => {
                            drop(b);
                            let (nb, report) = Buffer::open(&c).unwrap();
                            b = nb;
                            prop_assert_eq!(report.records, m.records.len() as u64);
                            prop_assert_eq!(report.bytes, m.bytes());
                            m.handed_out = 0;
                            m.backfill_handed = 0;
                        }
                    }
                    let s = b.stats();
                    let (held_n, held_b) = m.held();
                    prop_assert_eq!(s.records, m.records.len() as u64);
                    prop_assert_eq!(s.bytes, m.bytes());
                    prop_assert_eq!((s.held_records, s.held_bytes), (held_n, held_b));
                    prop_assert_eq!(s.next_id, m.next_id);
                    prop_assert_eq!(s.backfill_records, m.stored_backfill());
                    prop_assert_eq!(b.oldest_created_at(), m.records.values().next().map(|(_, c)| *c));
                }
            }
        }
    }
}
