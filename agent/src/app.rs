//! Wires sources, normaliser, buffer, shipper and telemetry together, and stops
//! them in an order that loses nothing: sources first, then the writer drains and
//! commits what they read, then the shipper finishes (or leaves) its batch.

use crate::buffer::{Buffer, BufferError};
use crate::config::Config;
use crate::normalize::Normalizer;
use crate::ship::{self, RecordStore};
use crate::sources::{self, LinkPhase, ReadingBatch, SourceContext, SourceStatus};
use crate::telemetry::metrics::Metrics;
use linewatch_runtime::aws::AwsError;
use linewatch_runtime::clock::{SharedClock, SystemClock};
use linewatch_runtime::ops::{self, Health};
use linewatch_runtime::shutdown::CancellationToken;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("opening the buffer: {0}")]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Telemetry(#[from] ops::BindError),
    #[error("building the Kinesis client: {0}")]
    Kinesis(#[from] AwsError),
}

/// Readings in flight between sources and the writer, at most: about 30 MB. A batch
/// is one poll, so the channel's length in batches follows the tag count; a bound in
/// batches alone let 10,000-tag polls queue a gigabyte while the writer fell behind.
const READINGS_IN_FLIGHT: usize = 256 * 1024;

/// The reading channel's length in batches for `tags` tags in all.
fn reading_channel_batches(tags: usize) -> usize {
    (READINGS_IN_FLIGHT / tags.max(1)).clamp(8, 1024)
}

pub async fn run(mut cfg: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let (buffer, report) = Buffer::open(&cfg.buffer)?;
    let buffer = Arc::new(buffer);
    tracing::info!(
        gateway = %cfg.gateway_id,
        path = %cfg.buffer.path.display(),
        records = report.records,
        bytes = report.bytes,
        "buffer open"
    );

    let alive = Arc::new(Liveness::default());
    // One status per source: its driver writes it, `/healthz` reads it.
    let statuses: Vec<(String, SourceStatus)> = cfg
        .sources
        .iter()
        .map(|s| (s.id().to_owned(), SourceStatus::default()))
        .collect();
    let health = Arc::new(AgentHealth {
        sources: statuses.clone(),
        store: buffer.clone(),
        clock: clock.clone(),
        alive: alive.clone(),
    });
    let telemetry_stop = CancellationToken::new();
    // `/metrics` and `/healthz` only: the agent adds no routes of its own.
    let ops_server = ops::serve(
        cfg.telemetry.listen,
        registry,
        health,
        Default::default(),
        telemetry_stop.clone(),
    )
    .await?;

    // Writer: normalises and group-commits everything the sources read.
    let tags = cfg.sources.iter().map(|s| s.tag_count()).sum();
    let (tx, rx) = mpsc::channel::<ReadingBatch>(reading_channel_batches(tags));
    let normalizer = Normalizer::new(cfg.gateway_id.clone(), buffer.sequences()?);
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn({
        let (buffer, clock, metrics, bcfg, stop, alive) = (
            buffer.clone(),
            clock.clone(),
            metrics.clone(),
            cfg.buffer.clone(),
            writer_stop.clone(),
            alive.clone(),
        );
        async move {
            let _dead_on_exit = MarkDead(alive, |l| &l.writer);
            crate::buffer::writer::run_writer(rx, buffer, normalizer, clock, bcfg, metrics, stop)
                .await;
        }
    });

    // Shipper: durable records to Kinesis.
    let client = ship::kinesis::KinesisClient::from_config(&cfg.kinesis).await?;
    let dead_letter = ship::dead_letter::DeadLetter::new(
        cfg.kinesis
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| cfg.buffer.path.join("dead-letter.ndjson")),
        metrics.clone(),
    );
    let shipper_stop = CancellationToken::new();
    let shipper = tokio::spawn({
        let (buffer, kcfg, clock, metrics, stop, alive) = (
            buffer.clone(),
            cfg.kinesis.clone(),
            clock.clone(),
            metrics.clone(),
            shipper_stop.clone(),
            alive.clone(),
        );
        // The shipper's randomness (jitter, random keys) is seeded from the OS here only.
        let opts = ship::ShipperOptions {
            cfg: kcfg,
            dead_letter,
            clock,
            metrics,
            rng: fastrand::Rng::new(),
        };
        async move {
            let _dead_on_exit = MarkDead(alive, |l| &l.shipper);
            ship::run_shipper(buffer, client, opts, stop).await;
        }
    });

    // Sources: each on its own task; a failing PLC never stops the others.
    let sources_stop = CancellationToken::new();
    let mut source_tasks = JoinSet::new();
    // Moved, not cloned: with thousands of tags the configuration is megabytes,
    // and each source keeps only what it needs of it.
    let source_cfgs = std::mem::take(&mut cfg.sources);
    let source_count = source_cfgs.len();
    for (source, (_, status)) in source_cfgs.into_iter().zip(statuses) {
        let ctx = SourceContext {
            readings: tx.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            shutdown: sources_stop.clone(),
            status,
            rng: fastrand::Rng::new(),
        };
        source_tasks.spawn(sources::start(source, ctx));
    }
    drop(tx);
    tracing::info!(
        sources = source_count,
        stream = %cfg.kinesis.stream,
        "agent running"
    );

    shutdown.cancelled().await;
    sources_stop.cancel();
    while source_tasks.join_next().await.is_some() {}
    tracing::info!("sources stopped; committing the buffer");
    writer_stop.cancel();
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "writer task failed");
    }
    shipper_stop.cancel();
    if let Err(e) = shipper.await {
        tracing::error!(error = %e, "shipper task failed");
    }
    telemetry_stop.cancel();
    let _ = ops_server.task.await;
    tracing::info!(records_left = buffer.stats().records, "agent stopped");
    Ok(())
}

struct Liveness {
    writer: AtomicBool,
    shipper: AtomicBool,
}

/// Marks its task dead when dropped: when it returns, and when it panics (the task's
/// future is dropped while unwinding), so `/healthz` never reports a dead shipper or
/// writer as running.
struct MarkDead(Arc<Liveness>, fn(&Liveness) -> &AtomicBool);

impl Drop for MarkDead {
    fn drop(&mut self) {
        (self.1)(&self.0).store(false, Ordering::SeqCst);
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            writer: AtomicBool::new(true),
            shipper: AtomicBool::new(true),
        }
    }
}

struct AgentHealth {
    sources: Vec<(String, SourceStatus)>,
    store: Arc<Buffer>,
    clock: SharedClock,
    alive: Arc<Liveness>,
}

impl Health for AgentHealth {
    /// Healthy while the writer and shipper run. A disconnected PLC or a down
    /// uplink is reported but is not the agent being unhealthy: it is what the
    /// buffer is for.
    fn check(&self) -> (bool, serde_json::Value) {
        let writer = self.alive.writer.load(Ordering::SeqCst);
        let shipper = self.alive.shipper.load(Ordering::SeqCst);
        let sources: serde_json::Map<String, serde_json::Value> = self
            .sources
            .iter()
            .map(|(id, status)| {
                let s = status.snapshot();
                let connected = s.state == LinkPhase::Connected;
                (
                    id.clone(),
                    serde_json::json!({
                        "connected": connected,
                        "state": s.state,
                        "lastError": s.last_error,
                        "lastGoodReadMs": s.last_good_read_ms,
                    }),
                )
            })
            .collect();
        let stats = self.store.stats();
        let oldest_age_ms = self
            .store
            .oldest_created_at()
            .map(|t| self.clock.now_ms().saturating_sub(t));
        let ok = writer && shipper;
        (
            ok,
            serde_json::json!({
                "status": if ok { "ok" } else { "failing" },
                "writer": writer,
                "shipper": shipper,
                "buffer": { "records": stats.records, "bytes": stats.bytes, "oldestUnshippedAgeMs": oldest_age_ms },
                "sources": sources,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_channel_holds_a_bounded_number_of_readings() {
        assert_eq!(reading_channel_batches(0), 1024);
        assert_eq!(reading_channel_batches(100), 1024);
        assert_eq!(reading_channel_batches(10_000), 26);
        assert_eq!(reading_channel_batches(1_000_000), 8);
        for tags in [1, 300, 1_000, 10_000, 32_768] {
            assert!(reading_channel_batches(tags) * tags <= READINGS_IN_FLIGHT);
        }
    }

    /// A task that panics is marked dead, as one that returns is.
    #[tokio::test]
    async fn a_panicking_task_is_marked_dead() {
        let alive = Arc::new(Liveness::default());
        let task = tokio::spawn({
            let alive = alive.clone();
            async move {
                let _dead_on_exit = MarkDead(alive, |l| &l.shipper);
                tokio::task::yield_now().await;
                panic!("a shipper bug");
            }
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(!alive.shipper.load(Ordering::SeqCst));
        assert!(
            alive.writer.load(Ordering::SeqCst),
            "the other task is untouched"
        );
    }
}
