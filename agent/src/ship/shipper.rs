//! The shipper task: keeps the [`ShipQueue`] topped up from the buffer, sends
//! PutRecords calls one at a time, removes what Kinesis accepted from the buffer, and
//! backs off on failures. Decisions live in the queue, the lanes' policy and the
//! backoff; this is the I/O loop around them.

use super::aggregate::KplAggregator;
use super::config::Aggregation;
use super::config::{KinesisConfig, Shards};
use super::dead_letter::DeadLetter;
use super::kinesis::{queued_record, PutRecordsApi};
use super::lanes::{self, Lane, LanePolicy};
use super::pacing::Pacer;
use super::queue::{
    Applied, Batch, CallOutcome, CallStatus, DeadLetterRecord, QueueCapacity, Readiness,
    RecordResult, ShipQueue,
};
use super::request::{BatchLimits, Encoder, OnePerRecord};
use super::RecordStore;
use crate::telemetry::metrics::Metrics;
use linewatch_runtime::clock::SharedClock;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::{Backoff, BackoffPolicy, Jitter, LogGate};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// Upper bound of a wait when nothing is queued (new data also wakes the loop).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// At most one warning per kind of trouble in this interval; the rest are counted.
const LOG_INTERVAL_MS: u64 = 10_000;
/// How soon a dead-letter write that failed is tried again.
const DEAD_LETTER_RETRY_MS: u64 = 30_000;
/// Extra time over `request_timeout` before the shipper gives up on a call itself
/// (the SDK's own timeout should always fire first).
const CALL_GUARD: Duration = Duration::from_secs(5);
/// With `shards = "auto"`: how often the shard count is asked again (resharding),
/// and how soon after a failed ask.
const SHARD_REFRESH_MS: u64 = 600_000;
const SHARD_RETRY_MS: u64 = 60_000;
/// How often the shipper asks whether the uplink fell behind (see `lanes.rs`).
const BACKFILL_CHECK_MS: u64 = 1_000;
/// Without pacing, the longest a withheld backfill waits before it is offered again.
const BACKFILL_WAIT: Duration = Duration::from_millis(50);

/// Everything the shipper needs besides the store and Kinesis.
pub struct ShipperOptions {
    pub cfg: KinesisConfig,
    pub dead_letter: DeadLetter,
    pub clock: SharedClock,
    pub metrics: Metrics,
    /// Backoff jitter and random partition keys. The caller seeds it: the program from
    /// the OS where it starts, tests with a fixed seed, so decisions can be replayed.
    pub rng: fastrand::Rng,
}

/// Ships buffered records to Kinesis ([`KinesisClient`](super::KinesisClient), or a
/// fake in tests) until
/// `shutdown` is cancelled.
///
/// On shutdown an in-flight call is finished (bounded by `request_timeout`) and what
/// it accepted is removed from the buffer; everything else stays in the buffer.
pub async fn run_shipper<S: RecordStore, K: PutRecordsApi>(
    store: Arc<S>,
    api: K,
    opts: ShipperOptions,
    shutdown: CancellationToken,
) {
    let ShipperOptions {
        cfg,
        dead_letter,
        clock,
        metrics,
        rng,
    } = opts;
    let limits = BatchLimits::from_config(&cfg);
    let mut shipper = Shipper {
        lanes: cfg.lanes(),
        next_backfill_check_ms: 0,
        declaring: false,
        mark_log: LogGate::new(LOG_INTERVAL_MS),
        queue: ShipQueue::new(QueueCapacity::for_limits(&limits)),
        pacer: None,
        next_shard_query_ms: 0,
        encoder: match cfg.aggregation {
            Aggregation::Kpl => Box::<KplAggregator>::default(),
            Aggregation::None => Box::<OnePerRecord>::default() as Box<dyn Encoder + Send>,
        },
        // Full jitter: uniform in [0, step]. Many gateways that lost the uplink together
        // must not come back in lock-step.
        backoff: Backoff::new(BackoffPolicy::new(
            cfg.backoff_initial,
            cfg.backoff_max,
            Jitter::Full,
        )),
        rng,
        limits,
        store,
        api,
        cfg,
        dead_letter,
        clock,
        metrics,
        pending_removals: Vec::new(),
        pending_dead: Vec::new(),
        retry_dead_at_ms: 0,
        call_log: LogGate::new(LOG_INTERVAL_MS),
        store_log: LogGate::new(LOG_INTERVAL_MS),
        failed_calls: 0,
    };
    if let Shards::Count(n) = shipper.cfg.shards {
        shipper.set_pacer(Some(Pacer::for_shards(n)));
    }
    shipper.run(shutdown).await
}

struct Shipper<S, K> {
    lanes: LanePolicy,
    next_backfill_check_ms: u64,
    /// Live heartbeats declare a backlog (or did, until the last pass).
    declaring: bool,
    mark_log: LogGate,
    store: Arc<S>,
    api: K,
    cfg: KinesisConfig,
    /// Per call; capped to what the pacer's buckets can pay for.
    limits: BatchLimits,
    queue: ShipQueue,
    /// `None`: unpaced (`shards = "off"`, or the count is not known yet).
    pacer: Option<Pacer>,
    /// `shards = "auto"`: when to ask the stream for its shard count next.
    next_shard_query_ms: u64,
    /// Packs records into entries: KPL aggregated records or one point each.
    encoder: Box<dyn Encoder + Send>,
    backoff: Backoff,
    rng: fastrand::Rng,
    dead_letter: DeadLetter,
    clock: SharedClock,
    metrics: Metrics,
    /// Accepted (or dead-lettered) ids whose removal from the store has not succeeded yet.
    pending_removals: Vec<u64>,
    /// Dead letters whose write failed; they stay in the store until written.
    pending_dead: Vec<DeadLetterRecord>,
    retry_dead_at_ms: u64,
    call_log: LogGate,
    store_log: LogGate,
    /// Consecutive calls with a failure, for the "recovered" log line.
    failed_calls: u64,
}

impl<S: RecordStore, K: PutRecordsApi> Shipper<S, K> {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(
            stream = self.api.stream(),
            max_entries = self.limits.max_entries(),
            max_bytes = self.limits.max_bytes(),
            linger_ms = self.cfg.linger.as_millis() as u64,
            "shipper started"
        );
        let committed = self.store.committed();
        let linger_ms = u64::try_from(self.cfg.linger.as_millis()).unwrap_or(u64::MAX);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Registered before reading, so a commit between the read and the wait still wakes us.
            let notified = committed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            self.flush_removals().await;
            self.retry_dead_letters().await;
            self.refresh_shards().await;
            self.top_up().await;
            self.check_backfill().await;
            self.declare_low_watermark();
            self.update_age();

            let now = self.clock.now_ms();
            let wait = match self.queue.readiness(&self.limits, now, linger_ms) {
                Readiness::Send => {
                    if let Some(delay) = self.send_once(&shutdown).await {
                        debug!(
                            stream = self.api.stream(),
                            delay_ms = delay.as_millis() as u64,
                            "backing off"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    continue;
                }
                Readiness::WaitUntil(at) => {
                    Duration::from_millis(at.saturating_sub(now)).min(IDLE_TICK)
                }
                Readiness::Idle => IDLE_TICK,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.flush_removals().await;
        info!(
            stream = self.api.stream(),
            queued = self.queue.len(),
            unremoved = self.pending_removals.len(),
            "shipper stopped; unshipped records stay in the buffer"
        );
    }

    /// Reads more records of both lanes from the store when the queue wants them.
    async fn top_up(&mut self) {
        self.top_up_lane(Lane::Live).await;
        self.top_up_lane(Lane::Backfill).await;
    }

    async fn top_up_lane(&mut self, lane: Lane) {
        let want = self.queue.wants_in(lane, &self.limits);
        if want == 0 || (lane == Lane::Backfill && self.store.backfill_records() == 0) {
            return;
        }
        let after = self.queue.last_pushed_in(lane);
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || match lane {
            Lane::Live => store.read_after(after, want),
            Lane::Backfill => store.read_backfill_after(after, want),
        })
        .await;
        let now = self.clock.now_ms();
        let records = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                if let Some(suppressed) = self.store_log.check(now) {
                    warn!(error = %e, suppressed, "cannot read the buffer; retrying");
                }
                return;
            }
            Err(e) => {
                if let Some(suppressed) = self.store_log.check(now) {
                    warn!(error = %e, suppressed, "buffer read task failed; retrying");
                }
                return;
            }
        };
        for r in records {
            let mut rec = queued_record(r, self.cfg.partition_key, &mut self.rng);
            if lane == Lane::Backfill {
                match lanes::mark_backfill(&rec.record.data) {
                    Ok((data, event_time)) => rec = rec.in_backfill(data, event_time),
                    Err(e) => {
                        // Sent as it is, in its lane: the engine reports what it is.
                        if let Some(suppressed) = self.mark_log.check(now) {
                            warn!(id = rec.id(), error = %e, suppressed, "cannot flag a backfill record; sending it unflagged");
                        }
                        rec.lane = Lane::Backfill;
                    }
                }
            }
            if let Err(e) = self.queue.push(rec, now) {
                warn!(error = %e, lane = lane.as_str(), "skipping a record the buffer returned out of order");
            }
        }
    }

    /// When the oldest live record has waited `backfill_after`, moves every record
    /// not yet read to the backfill lane, so points read from now on go first.
    async fn check_backfill(&mut self) {
        let now = self.clock.now_ms();
        if now < self.next_backfill_check_ms {
            return;
        }
        self.next_backfill_check_ms = now.saturating_add(BACKFILL_CHECK_MS);
        if !self
            .lanes
            .should_open_backfill(now, self.queue.oldest_created(Lane::Live))
        {
            return;
        }
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.open_backfill()).await {
            Ok(Ok(Some((from, to)))) => {
                self.metrics.backfill_opened.inc();
                info!(
                    stream = self.api.stream(),
                    from,
                    to,
                    "uplink behind: buffered points move to the backfill lane, new points go first"
                );
                self.top_up_lane(Lane::Backfill).await;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                if let Some(suppressed) = self.store_log.check(now) {
                    warn!(error = %e, suppressed, "cannot open the backfill lane; retrying");
                }
            }
            Err(e) => {
                if let Some(suppressed) = self.store_log.check(now) {
                    warn!(error = %e, suppressed, "backfill task failed; retrying");
                }
            }
        }
    }

    /// Live heartbeats declare the backfill's oldest unsent event time while any
    /// backfill remains (0, holding everything, when none of it could be read yet).
    fn declare_low_watermark(&mut self) {
        let pending = self.queue.lane_len(Lane::Backfill) > 0 || self.store.backfill_records() > 0;
        let low = pending.then(|| self.queue.backfill_low().unwrap_or(0));
        // Without a backlog, heartbeats are left alone (no pass over the queue) once
        // every declaration was taken off.
        if low.is_none() && !self.declaring {
            return;
        }
        self.queue.declare_low_watermark(low);
        self.declaring = low.is_some();
    }

    fn update_age(&self) {
        let now = self.clock.now_ms();
        let age = self
            .store
            .oldest_created_at()
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        self.metrics.oldest_unshipped_age_seconds.set(age);
        let backfill_age = self
            .queue
            .oldest_created(Lane::Backfill)
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        self.metrics.backfill_oldest_age_seconds.set(backfill_age);
        self.metrics
            .backfill_records
            .set(i64::try_from(self.store.backfill_records()).unwrap_or(i64::MAX));
    }

    /// `shards = "auto"`: learn (and every few minutes re-learn) the stream's open
    /// shards. A refused ask leaves the shipper unpaced and is retried later.
    async fn refresh_shards(&mut self) {
        let now = self.clock.now_ms();
        if self.cfg.shards != Shards::Auto || now < self.next_shard_query_ms {
            return;
        }
        let ask = tokio::time::timeout(self.cfg.request_timeout, self.api.open_shards()).await;
        let now = self.clock.now_ms();
        match ask.unwrap_or_else(|_| Err("no answer".into())) {
            Ok(n) => {
                self.next_shard_query_ms = now.saturating_add(SHARD_REFRESH_MS);
                if self.pacer.as_ref().map(Pacer::shards) != Some(n) {
                    info!(
                        stream = self.api.stream(),
                        shards = n,
                        "pacing to the stream's open shards"
                    );
                    // A new count starts at the full budget; throttling lowers it again.
                    self.set_pacer(Some(Pacer::for_shards(n)));
                }
            }
            Err(error) => {
                self.next_shard_query_ms = now.saturating_add(SHARD_RETRY_MS);
                if self.pacer.is_none() {
                    warn!(
                        stream = self.api.stream(),
                        error = %error,
                        "cannot count the stream's shards (DescribeStreamSummary); shipping unpaced, set kinesis.shards to pace"
                    );
                }
            }
        }
    }

    fn set_pacer(&mut self, pacer: Option<Pacer>) {
        let configured = BatchLimits::from_config(&self.cfg);
        self.limits = match &pacer {
            Some(p) => {
                let (records, bytes) = p.max_call();
                BatchLimits::new(
                    configured.max_entries().min(records),
                    configured.max_bytes().min(bytes),
                    configured.max_entry_bytes(),
                )
                .with_points(configured.max_points())
            }
            None => configured,
        };
        self.metrics
            .pacing_shards
            .set(pacer.as_ref().map_or(0, |p| i64::from(p.shards())));
        self.pacer = pacer;
        self.update_pace_metric();
    }

    fn update_pace_metric(&self) {
        let rate = self.pacer.as_ref().map_or(0.0, |p| p.rate().1);
        self.metrics.pacing_bytes_per_second.set(rate);
    }

    /// One PutRecords call (plus dead letters found on the way). Returns the backoff
    /// delay when something was not accepted.
    async fn send_once(&mut self, shutdown: &CancellationToken) -> Option<Duration> {
        let now = self.clock.now_ms();
        let reserve = self.lanes.live_reserve();
        // The backfill spends what the budget holds above the live reserve; unpaced,
        // it leaves that share of each call.
        let allowance = match &mut self.pacer {
            Some(p) => p.above_reserve(reserve, now),
            None => (
                (self.limits.max_points() as f64 * self.lanes.backfill_share).ceil() as usize,
                (self.limits.max_bytes() as f64 * self.lanes.backfill_share) as usize,
            ),
        };
        let Batch {
            entries,
            dead_letters,
            withheld_backfill,
        } = self
            .queue
            .next_batch_within(&self.limits, &mut self.encoder, allowance);
        if !dead_letters.is_empty() {
            self.write_dead_letters(dead_letters).await;
        }
        if entries.is_empty() {
            // Only backfill waits, for the budget above the reserve.
            return withheld_backfill.then(|| match &mut self.pacer {
                Some(p) => p
                    .reserve_delay(reserve, 1_024, now)
                    .max(Duration::from_millis(1)),
                None => BACKFILL_WAIT,
            });
        }
        let batch = Batch {
            entries,
            dead_letters: Vec::new(),
            withheld_backfill,
        };
        if let Some(pacer) = &mut self.pacer {
            let wait = pacer.delay(batch.len(), batch.bytes(), self.clock.now_ms());
            if !wait.is_zero() {
                self.metrics.pacing_wait_seconds.inc_by(wait.as_secs_f64());
                tokio::select! {
                    // The batch's records stay in the buffer; nothing was sent.
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            pacer.spend(batch.len(), batch.bytes(), self.clock.now_ms());
        }
        self.metrics.put_records_calls.inc();
        let guard = self.cfg.request_timeout + CALL_GUARD;
        let outcome = match tokio::time::timeout(guard, self.api.put_records(&batch.entries)).await
        {
            Ok(outcome) => outcome,
            Err(_) => CallOutcome::Unknown {
                error: format!("no answer within {} ms", guard.as_millis()),
            },
        };
        let applied = self.queue.apply(&batch, &outcome);
        if let Some(pacer) = &mut self.pacer {
            let throttled = applied.throttled > 0
                || matches!(
                    outcome,
                    CallOutcome::NotWritten {
                        throttled: true,
                        ..
                    }
                );
            if throttled {
                pacer.on_throttled(self.clock.now_ms());
            } else if applied.call == CallStatus::Completed {
                pacer.on_accepted();
            }
            self.update_pace_metric();
        }
        self.count(&applied);
        if applied.accepted_backfill > 0 {
            self.metrics
                .backfill_shipped
                .inc_by(applied.accepted_backfill as u64);
        }
        if let Some(created) = applied.oldest_live_accepted {
            let delay = self.clock.now_ms().saturating_sub(created) as f64 / 1000.0;
            self.metrics.live_delay_seconds.set(delay);
        }
        self.log_outcome(&batch, &outcome, &applied);
        if !applied.accepted.is_empty() {
            self.pending_removals.extend_from_slice(&applied.accepted);
            self.flush_removals().await;
        }
        if applied.back_off {
            Some(self.backoff.next_delay(&mut self.rng))
        } else {
            self.backoff.reset();
            None
        }
    }

    fn count(&self, a: &Applied) {
        let m = &self.metrics;
        m.records_shipped.inc_by(a.accepted.len() as u64);
        m.records_failed.inc_by(a.retrying as u64);
        m.records_throttled.inc_by(a.throttled as u64);
        if a.call != CallStatus::Completed {
            m.put_records_errors.inc();
        }
    }

    fn log_outcome(&mut self, batch: &Batch, outcome: &CallOutcome, a: &Applied) {
        let stream = self.api.stream();
        if !a.back_off {
            if self.failed_calls > 0 {
                info!(
                    stream,
                    failed_calls = self.failed_calls,
                    "PutRecords succeeding again"
                );
                self.failed_calls = 0;
            }
            debug!(
                stream,
                records = batch.records(),
                entries = batch.len(),
                bytes = batch.bytes(),
                "PutRecords accepted"
            );
            return;
        }
        self.failed_calls += 1;
        let Some(suppressed) = self.call_log.check(self.clock.now_ms()) else {
            return;
        };
        match outcome {
            CallOutcome::NotWritten { throttled, error } => warn!(
                stream,
                records = batch.records(),
                entries = batch.len(),
                bytes = batch.bytes(),
                throttled,
                error = %error,
                suppressed,
                "PutRecords failed, nothing written; resending"
            ),
            CallOutcome::Unknown { error } => warn!(
                stream,
                records = batch.records(),
                entries = batch.len(),
                bytes = batch.bytes(),
                error = %error,
                suppressed,
                "PutRecords outcome unknown; resending the whole batch (duplicates possible)"
            ),
            CallOutcome::Records(results) => {
                let code = results.iter().find_map(|r| match r {
                    RecordResult::Failed { code } => Some(code.as_str()),
                    _ => None,
                });
                warn!(
                    stream,
                    records = batch.records(),
                    entries = batch.len(),
                    accepted = a.accepted.len(),
                    throttled = a.throttled,
                    internal_failures = a.internal_failures,
                    other_failures = a.other_failures,
                    other_code = code.unwrap_or(""),
                    suppressed,
                    "PutRecords refused some records; resending them"
                )
            }
        }
    }

    /// Removes accepted ids from the store; on failure keeps them for the next round.
    async fn flush_removals(&mut self) {
        if self.pending_removals.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.pending_removals);
        let store = Arc::clone(&self.store);
        let task_ids = ids.clone();
        let result = tokio::task::spawn_blocking(move || store.remove(&task_ids)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if let Some(suppressed) = self.store_log.check(self.clock.now_ms()) {
            warn!(
                error = %error,
                records = ids.len(),
                suppressed,
                "cannot remove shipped records from the buffer; retrying (a restart now would resend them)"
            );
        }
        self.pending_removals = ids;
    }

    async fn write_dead_letters(&mut self, records: Vec<DeadLetterRecord>) {
        let now = self.clock.now_ms();
        for d in &records {
            warn!(
                id = d.record.id(),
                partition_key = %d.record.record.partition_key,
                bytes = d.record.size(),
                reason = d.reason.as_str(),
                path = %self.dead_letter.path().display(),
                "record can never be sent to Kinesis; writing it to the dead-letter file"
            );
        }
        let ids: Vec<u64> = records.iter().map(|d| d.record.id()).collect();
        match self.dead_letter.append(records.clone(), now).await {
            Ok(()) => {
                self.pending_removals.extend_from_slice(&ids);
                self.flush_removals().await;
            }
            Err(e) => {
                error!(
                    error = %e,
                    records = records.len(),
                    "cannot write dead letters; they stay in the buffer and are retried"
                );
                self.pending_dead.extend(records);
                self.retry_dead_at_ms = now.saturating_add(DEAD_LETTER_RETRY_MS);
            }
        }
    }

    async fn retry_dead_letters(&mut self) {
        if self.pending_dead.is_empty() || self.clock.now_ms() < self.retry_dead_at_ms {
            return;
        }
        let records = std::mem::take(&mut self.pending_dead);
        self.write_dead_letters(records).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;
    use crate::ship::testing::{CallState, FakeKinesis, FakeStore, Reply};
    use linewatch_runtime::clock::{Clock, ManualClock, SystemClock};
    use linewatch_schemas::{DataPoint, Flag};
    use std::collections::HashSet;
    use std::time::Instant;

    /// Test defaults (short linger and backoff; one point per record, which the
    /// per-record tests below count), overridden by `extra` lines.
    fn config(extra: &str) -> KinesisConfig {
        let mut text = String::from("stream = \"s\"\n");
        for (key, value) in [
            ("aggregation", "\"none\""),
            ("linger", "\"20ms\""),
            ("backoff_initial", "\"1ms\""),
            ("backoff_max", "\"5ms\""),
            // One lane: the fake store's records are made at time 1, so every one of
            // them would look like a backlog. The lanes' tests set it.
            ("backfill_after", "\"0s\""),
        ] {
            if !extra.lines().any(|l| l.starts_with(key)) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra);
        toml::from_str(&text).unwrap()
    }

    struct Running {
        store: Arc<FakeStore>,
        kinesis: FakeKinesis,
        metrics: Metrics,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
        dead_path: std::path::PathBuf,
    }

    fn start(
        store: Arc<FakeStore>,
        kinesis: FakeKinesis,
        cfg: KinesisConfig,
        clock: SharedClock,
    ) -> Running {
        store.check_removals_against(&kinesis);
        let dir = tempfile::tempdir().unwrap();
        let dead_path = dir.path().join("dead-letter.ndjson");
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let opts = ShipperOptions {
            cfg,
            dead_letter: DeadLetter::new(dead_path.clone(), metrics.clone()),
            clock,
            metrics: metrics.clone(),
            rng: fastrand::Rng::with_seed(42),
        };
        let task = tokio::spawn(run_shipper(
            Arc::clone(&store),
            kinesis.clone(),
            opts,
            shutdown.clone(),
        ));
        Running {
            store,
            kinesis,
            metrics,
            shutdown,
            task,
            _dir: dir,
            dead_path,
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(r: Running) {
        r.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), r.task)
            .await
            .expect("shipper stops")
            .expect("shipper does not panic");
    }

    fn points(keys: &[&'static str], n: usize) -> Vec<(&'static str, Vec<u8>)> {
        (0..n)
            .map(|i| (keys[i % keys.len()], format!("{{\"i\":{i}}}").into_bytes()))
            .collect()
    }

    fn system() -> SharedClock {
        Arc::new(SystemClock)
    }

    /// KPL: a call carries one aggregated record per key; a throttled record resends
    /// all of its points, before anything later of its key; every point is written
    /// once and leaves the buffer only once accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kpl_packs_each_key_into_one_record_and_resends_a_failed_one_whole() {
        let store = FakeStore::new();
        let kinesis = FakeKinesis::new();
        // The record holding point 5 (key "b") is throttled twice.
        kinesis.fail_record(5, 2, RecordResult::Throttled);
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("aggregation = \"kpl\""),
            system(),
        );
        store.append(&points(&["a", "b", "c"], 300));
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        let mut written = r.kinesis.written();
        written.sort_unstable();
        assert_eq!(written, (1..=300).collect::<Vec<_>>(), "each point once");
        assert!(r.store.bad_removals().is_empty());
        for call in r.kinesis.call_log() {
            let mut keys = call.keys.clone();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), call.keys.len(), "one entry per key per call");
        }
        // Fewer Kinesis records than points: 300 points in a handful of records.
        let entries: usize = r.kinesis.call_log().iter().map(|c| c.keys.len()).sum();
        assert!(entries < 30, "{entries} records for 300 points");
        // Key "b" (ids 2, 5, 8, ...) is written in id order despite the throttling.
        let b: Vec<u64> = r
            .kinesis
            .written()
            .into_iter()
            .filter(|i| i % 3 == 2)
            .collect();
        let mut sorted = b.clone();
        sorted.sort_unstable();
        assert_eq!(b, sorted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ships_everything_and_removes_only_accepted_records() {
        let store = FakeStore::new();
        // Each record fails the first time it is sent when its id is a multiple of 4.
        let kinesis = FakeKinesis::new();
        for id in (4..=100).step_by(4) {
            kinesis.fail_record(id, 1, RecordResult::Throttled);
        }
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 10"),
            system(),
        );
        store.append(&points(&["a", "b", "c"], 100));
        wait_for("the buffer to drain", || r.store.is_empty()).await;

        let written = r.kinesis.written();
        let mut sorted = written.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=100).collect::<Vec<_>>(),
            "every record written exactly once"
        );
        assert!(
            r.store.bad_removals().is_empty(),
            "removed before Kinesis accepted"
        );
        assert!(r.kinesis.calls().iter().all(|c| c.len() <= 10));
        // A later record of a key is never sent after an earlier one failed, until that one is in.
        let calls = r.kinesis.calls();
        for (n, call) in calls.iter().enumerate() {
            for &b in call {
                for a in (1..b).filter(|a| a % 3 == b % 3) {
                    let a_in_earlier = calls[..n].iter().any(|c| c.contains(&a));
                    let a_here_before_b = call.iter().take_while(|&&x| x != b).any(|&x| x == a);
                    assert!(
                        a_in_earlier || a_here_before_b,
                        "{b} sent before {a} was ever sent"
                    );
                }
            }
        }
        assert_eq!(r.metrics.records_shipped.get(), 100);
        assert_eq!(r.metrics.records_failed.get(), 25);
        assert_eq!(r.metrics.records_throttled.get(), 25);
        assert_eq!(r.metrics.put_records_errors.get(), 0);
        assert_eq!(
            r.metrics.put_records_calls.get(),
            r.kinesis.calls().len() as u64
        );
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_call_failures_back_off_and_keep_per_key_order() {
        let store = FakeStore::new();
        let kinesis = FakeKinesis::scripted(|n, _| {
            if n < 3 {
                Reply::NotWritten {
                    throttled: n == 0,
                    error: "ResourceNotFoundException".into(),
                }
            } else {
                Reply::Default
            }
        });
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 7"),
            system(),
        );
        store.append(&points(&["a", "b"], 40));
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        let written = r.kinesis.written();
        assert_eq!(written, (1..=40).collect::<Vec<_>>(), "in order, once each");
        assert_eq!(r.metrics.put_records_errors.get(), 3);
        assert_eq!(r.metrics.records_throttled.get(), 7);
        assert_eq!(r.metrics.records_failed.get(), 21);
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_outcomes_resend_the_batch() {
        let store = FakeStore::new();
        // The first call is written but its answer is lost.
        let kinesis = FakeKinesis::scripted(|n, _| {
            if n == 0 {
                Reply::LostResponse
            } else {
                Reply::Default
            }
        });
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 5"),
            system(),
        );
        store.append(&points(&["a"], 12));
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        let first_call = r.kinesis.calls()[0].clone();
        let written = r.kinesis.written();
        assert_eq!(
            written.len(),
            12 + first_call.len(),
            "duplicates only for the unknown call"
        );
        let mut dupes: Vec<u64> = written.clone();
        dupes.sort_unstable();
        dupes.dedup();
        assert_eq!(dupes, (1..=12).collect::<Vec<_>>());
        assert_eq!(r.metrics.put_records_errors.get(), 1);
        assert!(matches!(
            r.kinesis.call_log()[0].state,
            CallState::Answered(CallOutcome::Unknown { .. })
        ));
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversize_records_go_to_the_dead_letter_file() {
        let store = FakeStore::new();
        let r = start(Arc::clone(&store), FakeKinesis::new(), config(""), system());
        let big = vec![b'x'; 1024 * 1024];
        // Allowed before it exists (ids start at 1), so the shipper cannot race the test.
        store.allow_removal(2);
        let ids = store.append(&[("a", b"{}".to_vec()), ("a", big), ("a", b"{}".to_vec())]);
        assert_eq!(ids, vec![1, 2, 3]);
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        assert_eq!(r.kinesis.written(), vec![ids[0], ids[2]]);
        let text = std::fs::read_to_string(&r.dead_path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["reason"], "oversize");
        assert_eq!(line["id"], ids[1]);
        assert_eq!(line["partitionKey"], "a");
        assert_eq!(line["dataEncoding"], "utf8");
        assert!(r.store.bad_removals().is_empty());
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_batch_waits_for_linger_and_a_full_one_does_not() {
        let store = FakeStore::new();
        let r = start(
            Arc::clone(&store),
            FakeKinesis::new(),
            config("max_batch_records = 2\nlinger = \"1h\""),
            system(),
        );
        store.append(&points(&["a", "b"], 5));
        wait_for("two full batches", || r.store.len() == 1).await;
        assert_eq!(
            r.kinesis.calls(),
            vec![vec![1, 2], vec![3, 4]],
            "the fifth record lingers"
        );
        stop(r).await;

        let store = FakeStore::new();
        let r = start(
            Arc::clone(&store),
            FakeKinesis::new(),
            config("max_batch_records = 100\nlinger = \"300ms\""),
            system(),
        );
        store.append(&points(&["a", "b"], 3));
        wait_for("the lingering batch", || r.store.is_empty()).await;
        assert_eq!(
            r.kinesis.calls(),
            vec![vec![1, 2, 3]],
            "one call after linger"
        );
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_errors_are_retried() {
        let store = FakeStore::new();
        store.fail_reads(2);
        store.fail_removes(2);
        let r = start(
            Arc::clone(&store),
            FakeKinesis::new(),
            config("max_batch_records = 3"),
            system(),
        );
        store.append(&points(&["a"], 9));
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        assert_eq!(
            r.kinesis.written(),
            (1..=9).collect::<Vec<_>>(),
            "nothing resent"
        );
        stop(r).await;
    }

    // Paused time on one thread: the test's sleep returns only once every other task
    // is idle, i.e. the shipper has seen the cancellation and parked at its wait point.
    #[tokio::test(start_paused = true)]
    async fn shutdown_finishes_the_call_in_flight_and_leaves_the_rest() {
        let store = FakeStore::new();
        let kinesis = FakeKinesis::new();
        kinesis.hold_calls();
        let r = start(
            Arc::clone(&store),
            kinesis.clone(),
            config("max_batch_records = 4"),
            system(),
        );
        store.append(&points(&["a"], 10));
        tokio::time::timeout(Duration::from_secs(10), kinesis.wait_for_calls(1))
            .await
            .expect("a call starts");
        r.shutdown.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = kinesis.call_log();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].state,
            CallState::InFlight,
            "the shipper waits for the call in flight instead of dropping it"
        );
        assert!(!r.task.is_finished());
        kinesis.release(100);
        let Running {
            store,
            kinesis,
            task,
            ..
        } = r;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            kinesis.calls(),
            vec![vec![1, 2, 3, 4]],
            "no new call after shutdown"
        );
        assert!(matches!(
            kinesis.call_log()[0].state,
            CallState::Answered(_)
        ));
        assert_eq!(store.len(), 6, "accepted records removed, the rest stay");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_while_idle_or_backing_off_is_prompt() {
        let store = FakeStore::new();
        let r = start(Arc::clone(&store), FakeKinesis::new(), config(""), system());
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop(r).await;

        let store = FakeStore::new();
        let kinesis = FakeKinesis::scripted(|_, _| Reply::NotWritten {
            throttled: true,
            error: "slow down".into(),
        });
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("backoff_initial = \"1h\"\nbackoff_max = \"1h\""),
            system(),
        );
        store.append(&points(&["a"], 1));
        wait_for("a failed call", || r.metrics.put_records_errors.get() > 0).await;
        let stopping = Instant::now();
        stop(r).await;
        assert!(stopping.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_partition_keys_and_age_metric() {
        let store = FakeStore::new();
        let kinesis = FakeKinesis::new();
        kinesis.hold_calls();
        let clock = ManualClock::new(61_001);
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("partition_key = \"random\"\nlinger = \"0ms\""),
            Arc::new(clock),
        );
        store.append(&points(&["equipment-1"], 3));
        // created_at is 1 ms: the oldest record is 61 s old while its call is held.
        wait_for("the age metric", || {
            r.metrics.oldest_unshipped_age_seconds.get() == 61.0
        })
        .await;
        r.kinesis.release(100);
        wait_for("the buffer to drain", || r.store.is_empty()).await;
        let keys = r.kinesis.keys();
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| k.len() == 32 && k != "equipment-1"));
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 3);
        wait_for("the age metric to reset", || {
            r.metrics.oldest_unshipped_age_seconds.get() == 0.0
        })
        .await;
        stop(r).await;
    }

    /// The delays a shipper slept between calls against a Kinesis that always
    /// throttles, read off paused time (each call starts when the previous backoff ends).
    async fn backoff_delays(seed: u64) -> Vec<Duration> {
        let store = FakeStore::new();
        let kinesis = FakeKinesis::scripted(|_, _| Reply::NotWritten {
            throttled: true,
            error: "slow down".into(),
        });
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let opts = ShipperOptions {
            cfg: config("backoff_initial = \"100ms\"\nbackoff_max = \"10s\"\nlinger = \"0ms\""),
            dead_letter: DeadLetter::new(dir.path().join("dl.ndjson"), metrics.clone()),
            clock: system(),
            metrics,
            rng: fastrand::Rng::with_seed(seed),
        };
        store.append(&points(&["a"], 1));
        let task = tokio::spawn(run_shipper(
            Arc::clone(&store),
            kinesis.clone(),
            opts,
            shutdown.clone(),
        ));
        let mut starts = Vec::new();
        for n in 1..=8 {
            tokio::time::timeout(Duration::from_secs(60), kinesis.wait_for_calls(n))
                .await
                .expect("the next call starts");
            starts.push(tokio::time::Instant::now());
        }
        shutdown.cancel();
        task.await.unwrap();
        starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Milliseconds of tokio's (paused) time: the pacer's refill follows the sleeps.
    struct TokioClock(tokio::time::Instant);

    impl linewatch_runtime::clock::Clock for TokioClock {
        fn now_ms(&self) -> u64 {
            self.0.elapsed().as_millis() as u64
        }
    }

    const MIB: f64 = 1_048_576.0;

    /// 40 points of 100,000 bytes through a shipper paced to one shard: the calls'
    /// start times, the shipper's metrics and the byte size of each call.
    async fn paced_drain(kinesis: FakeKinesis, calls: usize) -> (Vec<f64>, Metrics, Vec<usize>) {
        let store = FakeStore::new();
        let t0 = tokio::time::Instant::now();
        let r = start(
            Arc::clone(&store),
            kinesis.clone(),
            config("shards = 1"),
            Arc::new(TokioClock(t0)),
        );
        let big: Vec<(&'static str, Vec<u8>)> =
            (0..40).map(|_| ("a", vec![b'x'; 100_000])).collect();
        store.append(&big);
        let mut starts = Vec::new();
        for n in 1..=calls {
            tokio::time::timeout(Duration::from_secs(60), kinesis.wait_for_calls(n))
                .await
                .expect("the next call starts");
            starts.push(t0.elapsed().as_secs_f64());
        }
        wait_for("the buffer to drain", || store.is_empty()).await;
        assert_eq!(kinesis.call_log().len(), calls);
        let sizes = kinesis
            .call_log()
            .iter()
            .map(|c| c.entries.iter().map(|ids| ids.len() * 100_001).sum())
            .collect();
        let metrics = r.metrics.clone();
        stop(r).await;
        (starts, metrics, sizes)
    }

    /// A data point's JSON, as the writer stores it.
    fn data_point(key: &str, ts: u64, seq: u64, heartbeat: bool) -> Vec<u8> {
        let (tag, value, flags) = if heartbeat {
            ("$heartbeat", "null", r#""Wmk""#)
        } else {
            ("temp", "1.5", "")
        };
        format!(
            r#"{{"version":1,"equipmentId":"{key}","tag":"{tag}","value":{value},"quality":"Ok","timestamp":{ts},"meta":{{"sourceId":"plc","sequenceNumber":{seq},"createdAt":{ts},"flags":[{flags}]}}}}"#
        )
        .into_bytes()
    }

    /// The uplink fell behind with 200 points buffered an hour ago: the 40 already
    /// read stay live, the rest move to the backfill lane (flagged `Bfl`); points
    /// made afterwards go before the backfill; each lane keeps its keys in id order;
    /// live heartbeats declare the backfill's oldest unsent event time, and stop
    /// once it is in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_points_overtake_the_backlog_which_is_flagged_and_declared() {
        let store = FakeStore::new();
        let now = SystemClock.now_ms();
        let old = now - 3_600_000;
        let key = |id: u64| if id.is_multiple_of(2) { "a" } else { "b" };
        store.insert((1..=200).map(|id| StoredRecord {
            id,
            created_at: old + id,
            partition_key: key(id).into(),
            data: data_point(key(id), old + id, id, false),
        }));
        let kinesis = FakeKinesis::new();
        kinesis.hold_calls();
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 10\nbackfill_after = \"1s\""),
            system(),
        );
        wait_for("the backfill opened", || {
            r.metrics.backfill_opened.get() == 1
        })
        .await;
        assert_eq!(store.backfill_records(), 160, "ids 41..=200");
        let fresh = SystemClock.now_ms();
        store.insert((201..=211).map(|id| StoredRecord {
            id,
            created_at: fresh,
            partition_key: key(id).into(),
            data: data_point(key(id), fresh + id, id, id == 211),
        }));
        r.kinesis.release(10_000);
        wait_for("the buffer to drain", || r.store.is_empty()).await;

        // Who went where, in write order (every call was accepted whole).
        let mut sent: Vec<(u64, DataPoint)> = Vec::new();
        for call in r.kinesis.call_log() {
            for (ids, data) in call.entries.iter().zip(&call.data) {
                sent.push((ids[0], DataPoint::from_json(data).unwrap()));
            }
        }
        let mut ids: Vec<u64> = sent.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=211).collect::<Vec<_>>(), "each point once");
        for (id, p) in &sent {
            let backfill = (41..=200).contains(id);
            assert_eq!(p.meta.flags.contains(Flag::Bfl), backfill, "point {id}");
        }
        let pos = |want: u64| sent.iter().position(|(id, _)| *id == want).unwrap();
        let last_fresh = (201..=211).map(pos).max().unwrap();
        assert!(
            last_fresh < pos(120),
            "live points went after the backfill's middle: {last_fresh} vs {}",
            pos(120)
        );
        for lane in [1..=40, 41..=200, 201..=211] {
            for k in ["a", "b"] {
                let order: Vec<u64> = sent
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| lane.contains(id) && key(*id) == k)
                    .collect();
                assert!(order.windows(2).all(|w| w[0] < w[1]), "{k}: {order:?}");
            }
        }
        // The heartbeat went out while backfill was unsent: it declared at most the
        // oldest event time still to come.
        let hb = pos(211);
        let low = sent[hb]
            .1
            .meta
            .low_watermark
            .expect("a backlog was declared");
        let unsent_min = sent[hb..]
            .iter()
            .filter(|(id, _)| (41..=200).contains(id))
            .map(|(_, p)| p.timestamp)
            .min()
            .expect("backfill after the heartbeat");
        assert!(
            low <= unsent_min,
            "declared {low}, still unsent from {unsent_min}"
        );
        sent[hb].1.validate().unwrap();
        assert_eq!(r.metrics.backfill_shipped.get(), 160);

        // Drained: a heartbeat now declares nothing.
        let later = SystemClock.now_ms();
        store.insert([StoredRecord {
            id: 212,
            created_at: later,
            partition_key: "a".into(),
            data: data_point("a", later, 212, true),
        }]);
        wait_for("the last heartbeat", || {
            r.store.is_empty() && r.kinesis.written().len() == 212
        })
        .await;
        let last = r.kinesis.call_log().last().unwrap().data[0].clone();
        let last = DataPoint::from_json(&last).unwrap();
        assert!(last.is_heartbeat() && last.meta.low_watermark.is_none());
        stop(r).await;
    }

    /// 4 MB against 1 MiB/s: the first MiB goes at once (a full bucket), the rest
    /// at the shard's rate, each call at most one bucket, nothing lost or reordered.
    #[tokio::test(start_paused = true)]
    async fn a_paced_backlog_fills_one_shard_and_never_exceeds_it() {
        let kinesis = FakeKinesis::new();
        let (starts, metrics, sizes) = paced_drain(kinesis.clone(), 4).await;
        assert_eq!(kinesis.written(), (1..=40).collect::<Vec<_>>());
        assert!(sizes.iter().all(|&b| b as f64 <= MIB), "{sizes:?}");
        let mut sent = 0.0;
        for (i, &t) in starts.iter().enumerate() {
            sent += sizes[i] as f64;
            assert!(sent <= MIB * (t + 1.0) + 1.0, "{sent} bytes by {t} s");
        }
        let last = *starts.last().unwrap();
        // The first second's bucket is free; the rest needs the shard's rate.
        let needed = (sent - MIB) / MIB;
        assert!(
            last >= needed - 0.01,
            "done at {last} s: faster than the shard"
        );
        assert!(
            last <= needed / 0.9,
            "done at {last} s: under 90 % of the shard ({needed} s)"
        );
        assert_eq!(metrics.pacing_shards.get(), 1);
        assert!(metrics.pacing_wait_seconds.get() > 0.0);
    }

    /// A throttled call halves the pace; each accepted one wins back 5 %.
    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_pace_instead_of_retrying_at_once() {
        let kinesis = FakeKinesis::scripted(|n, _| {
            if n == 0 {
                Reply::NotWritten {
                    throttled: true,
                    error: "ProvisionedThroughputExceededException".into(),
                }
            } else {
                Reply::Default
            }
        });
        let (starts, metrics, sizes) = paced_drain(kinesis.clone(), 5).await;
        assert_eq!(kinesis.written(), (1..=40).collect::<Vec<_>>());
        // The resend waited for its MiB at half the rate (≈ 1.9 s), not a backoff's few ms.
        assert!(starts[1] >= 1.8, "resent after {} s", starts[1]);
        let accepted = sizes.len() - 1;
        assert_eq!(accepted, 4, "{sizes:?}");
        let want = (0.5 + 0.05 * accepted as f64) * MIB;
        assert!((metrics.pacing_bytes_per_second.get() - want).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_makes_the_same_backoff_decisions() {
        let a = backoff_delays(7).await;
        let b = backoff_delays(7).await;
        let c = backoff_delays(8).await;
        assert_eq!(a.len(), 7);
        assert_eq!(a, b, "same seed, same delays");
        assert_ne!(a, c, "another seed draws other delays");
        // Full jitter under a doubling ceiling: 100 ms, 200 ms, 400 ms...
        for (n, d) in a.iter().enumerate() {
            assert!(*d <= Duration::from_millis(100 << n), "delay {n}: {d:?}");
        }
    }
}
