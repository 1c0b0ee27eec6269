//! The Kinesis source: reads every shard of a stream in lineage order, de-aggregates
//! KPL records, and hands the engine batches of raw user records with positions.
//!
//! * [`config`]: the `[kinesis]` section;
//! * [`shards`]: positions and the pure lineage scheduler;
//! * [`kinesis`]: ListShards, one reader task per shard, back-off;
//! * [`metrics`]: Prometheus families.
//!
//! Parsing data points (and dead-lettering bad ones) is the engine's job: a
//! [`SourceRecord`] is just bytes with where they came from. A Kinesis record that yields
//! no user record at all is a [`PoisonedRecord`]: handed on for the dead-letter file, so
//! a shard never stops on it. See `docs/kinesis-source.md`.

pub mod config;
pub mod kinesis;
pub mod metrics;
pub mod shards;

pub use config::{KinesisSourceConfig, StartPosition};
pub use kinesis::{KinesisSource, SourceError};
pub use metrics::SourceMetrics;
pub use shards::{ShardInfo, ShardPosition, ShardPositions};

/// Records read from one shard in one GetRecords call, de-aggregated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBatch {
    pub shard_id: String,
    pub records: Vec<SourceRecord>,
    /// Kinesis records that yield no user record (e.g. a KPL aggregate of zero records):
    /// the consumer dead-letters them; the position is already past them.
    pub poisoned: Vec<PoisonedRecord>,
    /// The shard's position after this batch: `Finished` when the shard is closed and
    /// fully read (sent even with no records — its children wait for it).
    pub position: ShardPosition,
    pub millis_behind_latest: Option<i64>,
}

/// One user record. The sub-records of an aggregated Kinesis record share its
/// sequence number and are always in the same batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub sequence_number: String,
    /// Index inside an aggregated record (0 for a plain record).
    pub sub_sequence: u32,
    pub partition_key: String,
    /// ApproximateArrivalTimestamp, milliseconds since the Unix epoch.
    pub arrival_ms: Option<u64>,
    pub data: Vec<u8>,
}

/// A Kinesis record the source cannot turn into user records. It never stops the shard:
/// it is handed on to be dead-lettered, with its raw bytes, and reading goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonedRecord {
    /// The record as read (`sub_sequence` 0, `data` the raw Kinesis bytes).
    pub record: SourceRecord,
    /// Why it yields nothing.
    pub reason: String,
}
