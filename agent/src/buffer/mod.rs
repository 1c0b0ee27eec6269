//! Crash-safe disk buffer on sled.
//!
//! - [`record`]: the stored form of one point (shared with the shipper).
//! - [`policy`]: the pure overflow decision (`drop_oldest` / `reject_new`).
//! - [`store`]: [`Buffer`], the sled-backed store with group commits.
//! - [`writer`]: the task that normalises readings and group-commits them.
//!
//! `docs/buffer.md` describes the format, durability and recovery.

pub mod backfill;
pub mod policy;
pub mod record;
pub mod store;
pub mod writer;

pub use record::{RecordDecodeError, StoredRecord};
pub use store::{
    Buffer, BufferStats, CommitOutcome, MovedAside, NewRecord, OpenReport, FORMAT_VERSION,
};
pub use writer::run_writer;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Decode(#[from] RecordDecodeError),
    #[error("buffer I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Another process (or another `Buffer` in this one) has the directory open.
    #[error("buffer {path} is in use: {detail}")]
    Locked {
        path: std::path::PathBuf,
        detail: String,
    },
    /// The buffer could not be opened for a reason moving it aside would not fix
    /// (permissions, a full or read-only disk), or a fresh one could not be created.
    #[error("cannot open buffer {path}: {cause}")]
    Open {
        path: std::path::PathBuf,
        cause: String,
    },
    /// A blocking buffer call panicked or its task was cancelled.
    #[error("buffer task failed: {0}")]
    Task(String),
    /// The commit's records are in the buffer but the flush failed: they are not
    /// durable yet. Do not commit them again; [`Buffer::sync`] retries the flush.
    #[error("buffer records written but not made durable: {source}")]
    NotDurable {
        source: sled::Error,
        /// What the commit did (absent when the failed flush came from `sync`).
        outcome: Option<Box<CommitOutcome>>,
    },
}
