//! The writer task: readings → normalised, encoded points → group commits.
//!
//! Points wait in memory until the group is committed: at most `commit_interval`
//! after the first of them arrived, or as soon as `commit_max_points` wait. That
//! in-memory group is the loss window on a power cut (see `docs/buffer.md`).
//!
//! A failed commit keeps its points and is retried with backoff; meanwhile the
//! writer stops reading the channel, so sources feel the back-pressure instead
//! of the writer growing without bound.

use super::store::{Buffer, BufferStats, CommitOutcome, NewRecord};
use super::BufferError;
use crate::config::BufferConfig;
use crate::normalize::Normalizer;
use crate::sources::ReadingBatch;
use crate::telemetry::metrics::Metrics;
use linewatch_runtime::clock::SharedClock;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::{Backoff, BackoffPolicy, Jitter};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

/// Longest wait between retries of a failed commit.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Shortest wait between retries (also when `commit_interval` is tiny).
const MIN_RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Commit attempts made during shutdown before giving up on the points in memory.
const SHUTDOWN_ATTEMPTS: u32 = 3;
/// How often the buffer gauges are refreshed while nothing is committed (the
/// shipper removes records in between).
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// What the writer needs from the buffer; the real one is [`Buffer`], tests
/// substitute one that fails on demand.
pub(crate) trait CommitTarget: Send + Sync + 'static {
    fn commit(
        &self,
        records: &[NewRecord],
        sequences: &[(String, u64)],
    ) -> Result<CommitOutcome, BufferError>;
    fn sync(&self) -> Result<(), BufferError>;
    fn stats(&self) -> BufferStats;
}

impl CommitTarget for Buffer {
    fn commit(
        &self,
        records: &[NewRecord],
        sequences: &[(String, u64)],
    ) -> Result<CommitOutcome, BufferError> {
        Buffer::commit(
            self,
            records,
            sequences.iter().map(|(s, n)| (s.as_str(), *n)),
        )
    }
    fn sync(&self) -> Result<(), BufferError> {
        Buffer::sync(self)
    }
    fn stats(&self) -> BufferStats {
        Buffer::stats(self)
    }
}

/// Run until `shutdown` fires or every sender is gone; then drain what is
/// already in the channel, commit it, and return.
pub async fn run_writer(
    rx: mpsc::Receiver<ReadingBatch>,
    buffer: Arc<Buffer>,
    normalizer: Normalizer,
    clock: SharedClock,
    cfg: BufferConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    run_writer_with(rx, buffer, normalizer, clock, cfg, metrics, shutdown).await
}

pub(crate) async fn run_writer_with<T: CommitTarget>(
    mut rx: mpsc::Receiver<ReadingBatch>,
    target: Arc<T>,
    normalizer: Normalizer,
    clock: SharedClock,
    cfg: BufferConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut w = Writer {
        pending: Vec::with_capacity(cfg.commit_max_points.min(65_536)),
        first_pending_at: None,
        unsynced: false,
        target,
        normalizer,
        clock,
        cfg,
        metrics,
    };
    w.refresh_gauges();
    let mut gauges = tokio::time::interval(GAUGE_REFRESH);
    gauges.set_missed_tick_behavior(MissedTickBehavior::Delay);

    // Every source gone (or none configured: an agent draining a buffer it was
    // handed): keep the gauges fresh until shutdown instead of stopping.
    let mut senders_gone = false;
    loop {
        let due = w.first_pending_at.map(|t| t + w.cfg.commit_interval);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until_opt(due), if due.is_some() => {
                if !w.commit_with_retry(Some(&shutdown)).await {
                    break;
                }
            }
            msg = rx.recv(), if !senders_gone => match msg {
                Some(batch) => {
                    w.add(&batch);
                    if w.pending.len() >= w.cfg.commit_max_points
                        && !w.commit_with_retry(Some(&shutdown)).await
                    {
                        break;
                    }
                }
                None => {
                    debug!("all reading senders closed; the writer only refreshes its gauges now");
                    senders_gone = true;
                    if !w.commit_with_retry(Some(&shutdown)).await {
                        break;
                    }
                }
            },
            _ = gauges.tick() => w.refresh_gauges(),
        }
    }

    // Shutdown: take what sources already handed over, refuse anything newer.
    rx.close();
    while let Some(batch) = rx.recv().await {
        w.add(&batch);
        if w.pending.len() >= w.cfg.commit_max_points {
            w.commit_with_retry(None).await;
        }
    }
    w.commit_with_retry(None).await;
    w.refresh_gauges();
    info!(
        lost = w.pending.len(),
        unsynced = w.unsynced,
        "buffer writer stopped"
    );
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Writer<T> {
    target: Arc<T>,
    normalizer: Normalizer,
    clock: SharedClock,
    cfg: BufferConfig,
    metrics: Metrics,
    /// Encoded points waiting for the next group commit.
    pending: Vec<NewRecord>,
    /// When the oldest pending point arrived: the commit is due `commit_interval` later.
    first_pending_at: Option<Instant>,
    /// Records were stored but their flush failed: a `sync` is owed.
    unsynced: bool,
}

impl<T: CommitTarget> Writer<T> {
    fn add(&mut self, batch: &ReadingBatch) {
        if batch.is_empty() {
            return;
        }
        let now_ms = self.clock.now_ms();
        let mut invalid = 0u64;
        for reading in batch {
            let point = self.normalizer.normalize(reading, now_ms);
            // The normaliser makes values valid; ids come from the validated
            // config. Checking anyway keeps `to_json` (which refuses invalid
            // points) from ever being reached with one.
            if let Err(e) = point.validate() {
                invalid += 1;
                if invalid == 1 {
                    warn!(source = %reading.source_id, tag = %reading.tag, error = %e, "dropping invalid data point");
                }
                continue;
            }
            let json = point.to_json();
            self.pending.push(NewRecord::new(
                point.meta.created_at,
                &point.equipment_id,
                &json,
            ));
        }
        if invalid > 0 {
            self.metrics.count_dropped("invalid_point", invalid);
        }
        if self.first_pending_at.is_none() && !self.pending.is_empty() {
            self.first_pending_at = Some(Instant::now());
        }
    }

    /// Commit the pending points, retrying with backoff until it works. With a
    /// shutdown token, returns `false` as soon as it fires (the caller then
    /// drains and tries again); without one, gives up after a few attempts.
    async fn commit_with_retry(&mut self, shutdown: Option<&CancellationToken>) -> bool {
        // No jitter: a local disk has nobody to collide with. Doubles from the commit
        // interval (within the bounds) up to the longest wait.
        let initial = self
            .cfg
            .commit_interval
            .clamp(MIN_RETRY_BACKOFF, MAX_RETRY_BACKOFF);
        let mut backoff =
            Backoff::new(BackoffPolicy::new(initial, MAX_RETRY_BACKOFF, Jitter::None));
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if self.try_commit().await {
                return true;
            }
            // Without jitter the draw is unused.
            let delay = backoff.next_delay_at(0.0);
            match shutdown {
                None if attempt >= SHUTDOWN_ATTEMPTS => {
                    error!(
                        lost = self.pending.len(),
                        attempts = attempt,
                        "giving up committing buffered points at shutdown; they are lost"
                    );
                    return false;
                }
                None => tokio::time::sleep(delay).await,
                Some(token) => {
                    tokio::select! {
                        _ = token.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One attempt: owed sync first, then the pending points. `true` when nothing is left to do.
    async fn try_commit(&mut self) -> bool {
        if self.unsynced {
            let target = Arc::clone(&self.target);
            match blocking(move || target.sync()).await {
                Ok(()) => self.unsynced = false,
                Err(e) => {
                    error!(error = %e, "disk buffer flush failed; will retry");
                    return false;
                }
            }
        }
        if self.pending.is_empty() {
            self.first_pending_at = None;
            return true;
        }

        let records = std::mem::take(&mut self.pending);
        let sequences: Vec<(String, u64)> = self
            .normalizer
            .sequences()
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
        let target = Arc::clone(&self.target);
        let (mut records, result) = match tokio::task::spawn_blocking(move || {
            let r = catch_unwind(AssertUnwindSafe(|| target.commit(&records, &sequences)));
            (records, r)
        })
        .await
        {
            Ok((records, Ok(result))) => (records, result),
            Ok((records, Err(_panic))) => {
                error!(
                    points = records.len(),
                    "disk buffer commit panicked; will retry"
                );
                self.pending = records;
                return false;
            }
            Err(e) => {
                // Only when the runtime shuts down under us: the points went with the task.
                error!(error = %e, "disk buffer commit task did not complete; points lost");
                self.first_pending_at = None;
                return true;
            }
        };

        match result {
            Ok(outcome) => {
                self.after_commit(records.len(), &outcome);
                records.clear();
                self.pending = records;
                self.first_pending_at = None;
                true
            }
            Err(BufferError::NotDurable { source, outcome }) => {
                // Stored, so never commit these again (that would duplicate them);
                // only the flush is owed.
                if let Some(outcome) = outcome {
                    self.after_commit(records.len(), &outcome);
                }
                records.clear();
                self.pending = records;
                self.first_pending_at = None;
                self.unsynced = true;
                error!(error = %source, "disk buffer flush failed after a commit; will retry the flush");
                false
            }
            Err(e) => {
                error!(error = %e, points = records.len(), "disk buffer commit failed; will retry");
                self.pending = records;
                false
            }
        }
    }

    fn after_commit(&self, offered: usize, outcome: &CommitOutcome) {
        self.metrics.buffer_commits.inc();
        let dropped = outcome.dropped_oldest();
        let rejected = outcome.rejected_new();
        if dropped > 0 {
            self.metrics.count_dropped("overflow_drop_oldest", dropped);
        }
        if rejected > 0 {
            self.metrics.count_dropped("overflow_reject_new", rejected);
        }
        // One line per commit at most, however many points it cost.
        if dropped > 0 || rejected > 0 {
            warn!(
                max_bytes = self.cfg.max_bytes,
                evicted_oldest = outcome.evicted_records,
                dropped_incoming = outcome.dropped_incoming,
                rejected_new = rejected,
                accepted = outcome.accepted,
                offered,
                "disk buffer full: points dropped by the overflow policy"
            );
        }
        self.refresh_gauges();
    }

    fn refresh_gauges(&self) {
        let s = self.target.stats();
        self.metrics
            .buffer_records
            .set(i64::try_from(s.records).unwrap_or(i64::MAX));
        self.metrics
            .buffer_bytes
            .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
    }
}

/// Run a blocking buffer call off the async threads; a panic or a cancelled
/// task becomes an error rather than taking the writer down.
async fn blocking<F>(f: F) -> Result<(), BufferError>
where
    F: FnOnce() -> Result<(), BufferError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(f))).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(BufferError::Task("buffer call panicked".into())),
        Err(e) => Err(BufferError::Task(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;
    use crate::config::OverflowPolicy;
    use crate::ship::RecordStore;
    use crate::sources::Reading;
    use crate::telemetry::metrics::ReasonLabel;
    use linewatch_runtime::clock::ManualClock;
    use linewatch_schemas::{DataPoint, Flags, Quality, Value};
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    const EQUIPMENT: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";

    fn cfg(dir: &Path, interval: Duration, max_points: usize) -> BufferConfig {
        BufferConfig {
            path: dir.join("buffer"),
            max_bytes: 1 << 30,
            overflow: OverflowPolicy::DropOldest,
            commit_interval: interval,
            commit_max_points: max_points,
            cache_bytes: 1 << 20,
            lock_wait: Duration::from_secs(5),
        }
    }

    fn readings(source: &str, n: usize) -> ReadingBatch {
        (0..n)
            .map(|i| Reading {
                source_id: source.into(),
                equipment_id: EQUIPMENT.into(),
                tag: format!("tag_{i}").into(),
                value: Value::Float(i as f64 + 0.5),
                quality: Quality::Ok,
                source_timestamp: None,
                flags: Flags::empty(),
                raw_quality: None,
            })
            .collect()
    }

    /// Poll `cond` until it holds or the deadline passes.
    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn points(buffer: &Buffer) -> Vec<(StoredRecord, DataPoint)> {
        buffer
            .read_after(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| {
                let p = DataPoint::from_json(&r.data).unwrap();
                (r, p)
            })
            .collect()
    }

    fn dropped(m: &Metrics, reason: &str) -> u64 {
        m.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .get()
    }

    struct Running {
        tx: mpsc::Sender<ReadingBatch>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        metrics: Metrics,
    }

    impl Running {
        async fn stop(self) -> Metrics {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("writer stops")
                .unwrap();
            self.metrics
        }
    }

    fn start<T: CommitTarget>(
        target: Arc<T>,
        normalizer: Normalizer,
        cfg: BufferConfig,
    ) -> Running {
        let (tx, rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let clock: SharedClock = Arc::new(ManualClock::new(1_732_180_000_000));
        let task = tokio::spawn(run_writer_with(
            rx,
            target,
            normalizer,
            clock,
            cfg,
            metrics.clone(),
            shutdown.clone(),
        ));
        Running {
            tx,
            shutdown,
            task,
            metrics,
        }
    }

    #[tokio::test]
    async fn commits_after_the_interval_with_numbered_points_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_millis(30), 10_000);
        let (buffer, _) = Buffer::open(&c).unwrap();
        let buffer = Arc::new(buffer);
        let w = start(
            Arc::clone(&buffer),
            Normalizer::new("gw-7", HashMap::new()),
            c,
        );
        w.tx.send(readings("filler", 3)).await.unwrap();

        let notified = buffer.committed();
        tokio::time::timeout(Duration::from_secs(10), notified.notified())
            .await
            .expect("a commit within the interval");
        // Metrics follow the commit that notified.
        wait_for("the commit metric", || w.metrics.buffer_commits.get() == 1).await;
        let got = points(&buffer);
        assert_eq!(got.len(), 3);
        for (i, (rec, p)) in got.iter().enumerate() {
            assert_eq!(rec.partition_key, EQUIPMENT);
            assert_eq!(rec.created_at, 1_732_180_000_000);
            assert_eq!(p.meta.sequence_number, i as u64 + 1);
            assert_eq!(p.meta.gateway_id.as_deref(), Some("gw-7"));
            assert_eq!(p.tag, format!("tag_{i}"));
        }
        assert_eq!(w.metrics.buffer_commits.get(), 1);
        assert_eq!(w.metrics.buffer_records.get(), 3);
        assert_eq!(w.metrics.buffer_bytes.get() as u64, buffer.stats().bytes);
        assert_eq!(buffer.sequences().unwrap()["filler"], 4);
        w.stop().await;
    }

    #[tokio::test]
    async fn commits_at_max_points_without_waiting_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_secs(3600), 5);
        let (buffer, _) = Buffer::open(&c).unwrap();
        let buffer = Arc::new(buffer);
        let w = start(
            Arc::clone(&buffer),
            Normalizer::new("gw", HashMap::new()),
            c,
        );
        w.tx.send(readings("s", 2)).await.unwrap();
        w.tx.send(readings("s", 3)).await.unwrap();
        wait_for("the early commit", || buffer.stats().durable_id == 5).await;
        assert_eq!(w.metrics.buffer_commits.get(), 1);
        w.stop().await;
    }

    #[tokio::test]
    async fn shutdown_drains_the_channel_and_a_restart_continues_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_secs(3600), 10_000);
        {
            let (buffer, _) = Buffer::open(&c).unwrap();
            let buffer = Arc::new(buffer);
            let w = start(
                Arc::clone(&buffer),
                Normalizer::new("gw", HashMap::new()),
                c.clone(),
            );
            for _ in 0..3 {
                w.tx.send(readings("s", 4)).await.unwrap();
            }
            // Nothing is due (1 h interval): only the shutdown path can commit these.
            let metrics = w.stop().await;
            assert_eq!(metrics.buffer_records.get(), 12);
            assert_eq!(points(&buffer).len(), 12);
        }
        let (buffer, report) = Buffer::open(&c).unwrap();
        assert_eq!(report.records, 12);
        let buffer = Arc::new(buffer);
        let w = start(
            Arc::clone(&buffer),
            Normalizer::new("gw", report.sequences),
            c,
        );
        w.tx.send(readings("s", 2)).await.unwrap();
        w.stop().await;
        let seqs: Vec<u64> = points(&buffer)
            .iter()
            .map(|(_, p)| p.meta.sequence_number)
            .collect();
        assert_eq!(seqs, (1..=14).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn overflow_drops_are_counted_by_policy() {
        for (policy, reason) in [
            (OverflowPolicy::RejectNew, "overflow_reject_new"),
            (OverflowPolicy::DropOldest, "overflow_drop_oldest"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut c = cfg(dir.path(), Duration::from_millis(10), 10);
            c.max_bytes = 4_000;
            c.overflow = policy;
            let (buffer, _) = Buffer::open(&c).unwrap();
            let buffer = Arc::new(buffer);
            let w = start(
                Arc::clone(&buffer),
                Normalizer::new("gw", HashMap::new()),
                c,
            );
            for _ in 0..10 {
                w.tx.send(readings("s", 10)).await.unwrap();
            }
            let metrics = w.stop().await;
            let kept = buffer.stats().records;
            assert!(buffer.stats().bytes <= 4_000);
            assert!(kept > 0 && kept < 100, "{policy:?}: kept {kept}");
            assert_eq!(dropped(&metrics, reason) + kept, 100, "{policy:?}");
            let seqs: Vec<u64> = points(&buffer)
                .iter()
                .map(|(_, p)| p.meta.sequence_number)
                .collect();
            match policy {
                // The oldest points stay, the newest were refused.
                OverflowPolicy::RejectNew => assert_eq!(seqs, (1..=kept).collect::<Vec<_>>()),
                OverflowPolicy::DropOldest => {
                    assert_eq!(seqs, (100 - kept + 1..=100).collect::<Vec<_>>())
                }
            }
        }
    }

    /// A target that fails on demand and records what it stored.
    #[derive(Default)]
    struct Flaky {
        commit_failures: Mutex<u32>,
        /// The first successful commit stores its records but reports a failed flush.
        not_durable_once: Mutex<bool>,
        sync_failures: Mutex<u32>,
        attempts: Mutex<Vec<Instant>>,
        syncs: Mutex<u32>,
        stored: Mutex<Vec<Vec<u8>>>,
    }

    impl CommitTarget for Flaky {
        fn commit(
            &self,
            records: &[NewRecord],
            _sequences: &[(String, u64)],
        ) -> Result<CommitOutcome, BufferError> {
            self.attempts.lock().unwrap().push(Instant::now());
            let mut fails = self.commit_failures.lock().unwrap();
            if *fails > 0 {
                *fails -= 1;
                return Err(BufferError::Sled(sled::Error::Unsupported(
                    "disk on fire".into(),
                )));
            }
            self.stored
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| r.value().to_vec()));
            let outcome = CommitOutcome {
                accepted: records.len(),
                ..Default::default()
            };
            let mut nd = self.not_durable_once.lock().unwrap();
            if *nd {
                *nd = false;
                return Err(BufferError::NotDurable {
                    source: sled::Error::Unsupported("fsync failed".into()),
                    outcome: Some(Box::new(outcome)),
                });
            }
            Ok(outcome)
        }
        fn sync(&self) -> Result<(), BufferError> {
            *self.syncs.lock().unwrap() += 1;
            let mut fails = self.sync_failures.lock().unwrap();
            if *fails > 0 {
                *fails -= 1;
                return Err(BufferError::NotDurable {
                    source: sled::Error::Unsupported("fsync failed".into()),
                    outcome: None,
                });
            }
            Ok(())
        }
        fn stats(&self) -> BufferStats {
            BufferStats::default()
        }
    }

    fn stored_sequences(f: &Flaky) -> Vec<u64> {
        f.stored
            .lock()
            .unwrap()
            .iter()
            .map(|v| {
                let r = StoredRecord::decode(&StoredRecord::key(0), v).unwrap();
                DataPoint::from_json(&r.data).unwrap().meta.sequence_number
            })
            .collect()
    }

    #[tokio::test]
    async fn a_failed_commit_is_retried_with_backoff_and_loses_nothing() {
        let flaky = Arc::new(Flaky {
            commit_failures: Mutex::new(3),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_millis(10), 10_000);
        let w = start(Arc::clone(&flaky), Normalizer::new("gw", HashMap::new()), c);
        w.tx.send(readings("s", 5)).await.unwrap();
        wait_for("the retried commit", || {
            flaky.stored.lock().unwrap().len() == 5
        })
        .await;
        w.stop().await;

        assert_eq!(
            stored_sequences(&flaky),
            vec![1, 2, 3, 4, 5],
            "stored once, in order"
        );
        let attempts = flaky.attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 4);
        // Backoff, not a spin: each wait at least the minimum, and growing.
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g >= MIN_RETRY_BACKOFF), "{gaps:?}");
        assert!(gaps[2] >= MIN_RETRY_BACKOFF * 4, "{gaps:?}");
    }

    #[tokio::test]
    async fn a_failed_flush_is_retried_as_a_sync_without_committing_twice() {
        let flaky = Arc::new(Flaky {
            not_durable_once: Mutex::new(true),
            sync_failures: Mutex::new(2),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_millis(10), 10_000);
        let w = start(Arc::clone(&flaky), Normalizer::new("gw", HashMap::new()), c);
        w.tx.send(readings("s", 3)).await.unwrap();
        wait_for("the flush to succeed", || *flaky.syncs.lock().unwrap() == 3).await;
        w.tx.send(readings("s", 2)).await.unwrap();
        wait_for("the next commit", || {
            flaky.stored.lock().unwrap().len() == 5
        })
        .await;
        let metrics = w.stop().await;
        assert_eq!(stored_sequences(&flaky), vec![1, 2, 3, 4, 5]);
        assert_eq!(flaky.attempts.lock().unwrap().len(), 2);
        assert_eq!(metrics.buffer_commits.get(), 2);
    }

    #[tokio::test]
    async fn a_commit_that_keeps_failing_gives_up_at_shutdown() {
        let flaky = Arc::new(Flaky {
            commit_failures: Mutex::new(u32::MAX),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), Duration::from_millis(10), 10_000);
        let w = start(Arc::clone(&flaky), Normalizer::new("gw", HashMap::new()), c);
        w.tx.send(readings("s", 1)).await.unwrap();
        wait_for("a first attempt", || {
            !flaky.attempts.lock().unwrap().is_empty()
        })
        .await;
        w.stop().await; // returns (bounded attempts), does not hang
        assert!(flaky.stored.lock().unwrap().is_empty());
    }
}
