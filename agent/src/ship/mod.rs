//! Kinesis shipper: reads durable points from the buffer, sends them with
//! PutRecords, and removes them from the buffer only once Kinesis accepted them.
//!
//! `queue` decides what goes into a call, `request` packs it into entries (`aggregate`:
//! KPL aggregated records), `pacing` decides when a call may go (the shards'
//! records/s and bytes/s), `kinesis` talks to the SDK, `shipper` is the I/O loop
//! around them. `config` is the `[kinesis]` table.

use crate::buffer::{BufferError, StoredRecord};
use std::sync::Arc;

/// What the shipper needs from the disk buffer (implemented by `buffer::Buffer`).
pub trait RecordStore: Send + Sync + 'static {
    /// Durable (committed) records with an id greater than `after` (all when `None`),
    /// oldest first, at most `max`. Records handed out here are not evicted by the
    /// overflow policy: the shipper owns them until it removes them.
    /// Reads the live lane: ids outside the backfill ranges.
    fn read_after(&self, after: Option<u64>, max: usize) -> Result<Vec<StoredRecord>, BufferError>;
    /// The backfill lane's records with an id greater than `after`, oldest first, at
    /// most `max` (held like [`Self::read_after`]'s).
    fn read_backfill_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BufferError>;
    /// Moves every stored live record not handed out yet to the backfill lane, and
    /// makes that durable before it returns (a record keeps its lane across a crash).
    /// Returns the id range marked, `None` when there was nothing to move.
    fn open_backfill(&self) -> Result<Option<(u64, u64)>, BufferError>;
    /// Records stored in the backfill lane.
    fn backfill_records(&self) -> u64;
    /// Forget records Kinesis accepted (or that went to the dead-letter file), and
    /// make that durable (one flush per call: callers pass a whole batch).
    fn remove(&self, ids: &[u64]) -> Result<(), BufferError>;
    /// `created_at` of the oldest buffered record, for the age metric.
    fn oldest_created_at(&self) -> Option<u64>;
    /// Notified after each commit that made new records durable.
    fn committed(&self) -> Arc<tokio::sync::Notify>;
}

pub mod aggregate;
pub mod config;
pub mod dead_letter;
pub mod kinesis;
pub mod lanes;
pub mod pacing;
pub mod queue;
pub mod request;
pub mod shipper;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use aggregate::KplAggregator;
pub use config::{Aggregation, KinesisConfig, PartitionKey};
pub use dead_letter::{DeadLetter, DeadLetterError};
pub use kinesis::{KinesisClient, PutRecordsApi};
pub use pacing::Pacer;
pub use queue::{
    Applied, Batch, CallOutcome, CallStatus, DeadLetterReason, DeadLetterRecord, QueueCapacity,
    QueuedRecord, Readiness, RecordResult, ShipQueue,
};
pub use request::{BatchLimits, Encoder, OnePerRecord, RequestEntry};
pub use shipper::{run_shipper, ShipperOptions};
