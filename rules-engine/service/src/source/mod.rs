//! The Kinesis source: reads every shard of a stream in lineage order, de-aggregates
//! KPL records, and hands the engine batches of raw user records with positions.
//!
//! * [`config`]: the `[kinesis]` section;
//! * [`shards`]: positions and the pure lineage scheduler;
//! * [`kinesis`]: ListShards, one reader task per shard, back-off;
//! * [`metrics`]: Prometheus families.
//!
//! Parsing data points (and dead-lettering bad ones) is the engine's job: a
//! [`SourceRecord`] is just bytes with where they came from. See `docs/kinesis-source.md`.

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
