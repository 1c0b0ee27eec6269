//! The shipper task: keeps the [`ShipQueue`] topped up from the buffer, sends
//! PutRecords calls one at a time, removes what Kinesis accepted from the buffer, and
//! backs off on failures. Decisions live in the queue and the backoff; this is the
//! I/O loop around them.

use super::backoff::Backoff;
use super::dead_letter::DeadLetter;
use super::kinesis::{queued_record, KinesisClient, PutRecordsApi};
use super::queue::{
    Applied, Batch, BatchLimits, CallOutcome, CallStatus, DeadLetterRecord, QueueCapacity,
    Readiness, RecordResult, ShipQueue,
};
use super::RecordStore;
use crate::clock::SharedClock;
use crate::config::KinesisConfig;
use crate::telemetry::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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

/// Ships buffered records to Kinesis until `shutdown` is cancelled.
///
/// On shutdown an in-flight call is finished (bounded by `request_timeout`) and what
/// it accepted is removed from the buffer; everything else stays in the buffer.
pub async fn run_shipper<S: RecordStore>(
    store: Arc<S>,
    client: KinesisClient,
    cfg: KinesisConfig,
    dead_letter: DeadLetter,
    clock: SharedClock,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    run_shipper_with(store, client, cfg, dead_letter, clock, metrics, shutdown).await
}

/// [`run_shipper`] against any [`PutRecordsApi`] (tests use a scripted fake).
pub async fn run_shipper_with<S: RecordStore, K: PutRecordsApi>(
    store: Arc<S>,
    api: K,
    cfg: KinesisConfig,
    dead_letter: DeadLetter,
    clock: SharedClock,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let limits = BatchLimits::from_config(&cfg);
    let shipper = Shipper {
        queue: ShipQueue::new(QueueCapacity::for_limits(&limits)),
        backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
        rng: fastrand::Rng::new(),
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
    shipper.run(shutdown).await
}

/// Rate limit for repetitive warnings: the first one passes, then one per interval,
/// each reporting how many were suppressed in between. Pure.
#[derive(Debug)]
struct LogGate {
    interval_ms: u64,
    next_ms: u64,
    suppressed: u64,
}

impl LogGate {
    fn new(interval_ms: u64) -> Self {
        LogGate {
            interval_ms,
            next_ms: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when this event should be logged.
    fn check(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms >= self.next_ms {
            self.next_ms = now_ms.saturating_add(self.interval_ms);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Shipper<S, K> {
    store: Arc<S>,
    api: K,
    cfg: KinesisConfig,
    limits: BatchLimits,
    queue: ShipQueue,
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
            max_records = self.limits.max_records(),
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
            self.top_up().await;
            self.update_age();

            let now = self.clock.now_ms();
            let wait = match self.queue.readiness(&self.limits, now, linger_ms) {
                Readiness::Send => {
                    if let Some(delay) = self.send_once().await {
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

    /// Reads more records from the store when the queue wants them.
    async fn top_up(&mut self) {
        let want = self.queue.wants(&self.limits);
        if want == 0 {
            return;
        }
        let after = self.queue.last_pushed();
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || store.read_after(after, want)).await;
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
            let rec = queued_record(r, self.cfg.partition_key, &mut self.rng);
            if let Err(e) = self.queue.push(rec, now) {
                warn!(error = %e, "skipping a record the buffer returned out of order");
            }
        }
    }

    fn update_age(&self) {
        let now = self.clock.now_ms();
        let age = self
            .store
            .oldest_created_at()
            .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        self.metrics.oldest_unshipped_age_seconds.set(age);
    }

    /// One PutRecords call (plus dead letters found on the way). Returns the backoff
    /// delay when something was not accepted.
    async fn send_once(&mut self) -> Option<Duration> {
        let Batch {
            records,
            dead_letters,
        } = self.queue.next_batch(&self.limits);
        if !dead_letters.is_empty() {
            self.write_dead_letters(dead_letters).await;
        }
        if records.is_empty() {
            return None;
        }
        let batch = Batch {
            records,
            dead_letters: Vec::new(),
        };
        self.metrics.put_records_calls.inc();
        let guard = self.cfg.request_timeout + CALL_GUARD;
        let outcome = match tokio::time::timeout(guard, self.api.put_records(&batch.records)).await
        {
            Ok(outcome) => outcome,
            Err(_) => CallOutcome::Unknown {
                error: format!("no answer within {} ms", guard.as_millis()),
            },
        };
        let applied = self.queue.apply(&batch, &outcome);
        self.count(&applied);
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
                records = batch.len(),
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
                records = batch.len(),
                bytes = batch.bytes(),
                throttled,
                error = %error,
                suppressed,
                "PutRecords failed, nothing written; resending"
            ),
            CallOutcome::Unknown { error } => warn!(
                stream,
                records = batch.len(),
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
                    records = batch.len(),
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
    use crate::buffer::{BufferError, StoredRecord};
    use crate::clock::{ManualClock, SystemClock};
    use std::collections::{BTreeMap, HashSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::sync::{Notify, Semaphore};

    // ---- an in-memory RecordStore ----

    #[derive(Default)]
    struct MemStore {
        records: Mutex<BTreeMap<u64, StoredRecord>>,
        next_id: Mutex<u64>,
        notify: Arc<Notify>,
        /// Ids Kinesis accepted; removing anything else is a bug.
        accepted: Arc<Mutex<HashSet<u64>>>,
        dead_ok: Mutex<HashSet<u64>>,
        bad_removals: Mutex<Vec<u64>>,
        fail_reads: AtomicUsize,
        fail_removes: AtomicUsize,
    }

    impl MemStore {
        fn append(&self, items: &[(&str, Vec<u8>)]) -> Vec<u64> {
            let mut ids = Vec::new();
            {
                let mut recs = self.records.lock().unwrap();
                let mut next = self.next_id.lock().unwrap();
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

        fn len(&self) -> usize {
            self.records.lock().unwrap().len()
        }
    }

    fn io_error() -> BufferError {
        BufferError::Io {
            path: "mem".into(),
            source: std::io::Error::other("injected"),
        }
    }

    impl RecordStore for MemStore {
        fn read_after(
            &self,
            after: Option<u64>,
            max: usize,
        ) -> Result<Vec<StoredRecord>, BufferError> {
            if self.fail_reads.load(Ordering::SeqCst) > 0 {
                self.fail_reads.fetch_sub(1, Ordering::SeqCst);
                return Err(io_error());
            }
            let recs = self.records.lock().unwrap();
            let start = after.map_or(0, |a| a + 1);
            Ok(recs
                .range(start..)
                .take(max)
                .map(|(_, r)| r.clone())
                .collect())
        }

        fn remove(&self, ids: &[u64]) -> Result<(), BufferError> {
            if self.fail_removes.load(Ordering::SeqCst) > 0 {
                self.fail_removes.fetch_sub(1, Ordering::SeqCst);
                return Err(io_error());
            }
            let accepted = self.accepted.lock().unwrap();
            let dead = self.dead_ok.lock().unwrap();
            let mut recs = self.records.lock().unwrap();
            for id in ids {
                if !accepted.contains(id) && !dead.contains(id) {
                    self.bad_removals.lock().unwrap().push(*id);
                }
                recs.remove(id);
            }
            Ok(())
        }

        fn oldest_created_at(&self) -> Option<u64> {
            self.records
                .lock()
                .unwrap()
                .values()
                .map(|r| r.created_at)
                .min()
        }

        fn committed(&self) -> Arc<Notify> {
            Arc::clone(&self.notify)
        }
    }

    // ---- a scripted Kinesis ----

    type Script = Box<dyn Fn(usize, &[Arc<QueuedRecord>]) -> CallOutcome + Send + Sync>;

    struct FakeKinesis {
        script: Script,
        calls: Mutex<Vec<Vec<u64>>>,
        keys: Mutex<Vec<String>>,
        /// Ids in the order Kinesis wrote them (duplicates included).
        written: Mutex<Vec<u64>>,
        accepted: Arc<Mutex<HashSet<u64>>>,
        /// When set, each call waits for a permit (tests hold calls in flight).
        gate: Option<Arc<Semaphore>>,
        started: Notify,
    }

    use crate::ship::queue::QueuedRecord;

    impl FakeKinesis {
        fn new(store: &MemStore, script: Script) -> Arc<Self> {
            Arc::new(FakeKinesis {
                script,
                calls: Mutex::default(),
                keys: Mutex::default(),
                written: Mutex::default(),
                accepted: Arc::clone(&store.accepted),
                gate: None,
                started: Notify::new(),
            })
        }
        fn calls(&self) -> Vec<Vec<u64>> {
            self.calls.lock().unwrap().clone()
        }
        fn written(&self) -> Vec<u64> {
            self.written.lock().unwrap().clone()
        }
    }

    impl PutRecordsApi for Arc<FakeKinesis> {
        fn stream(&self) -> &str {
            "fake"
        }

        async fn put_records(&self, records: &[Arc<QueuedRecord>]) -> CallOutcome {
            self.started.notify_waiters();
            if let Some(gate) = &self.gate {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(records.iter().map(|r| r.id()).collect());
                calls.len() - 1
            };
            self.keys
                .lock()
                .unwrap()
                .extend(records.iter().map(|r| r.partition_key.clone()));
            let outcome = (self.script)(n, records);
            let mut written = self.written.lock().unwrap();
            let mut accepted = self.accepted.lock().unwrap();
            match &outcome {
                CallOutcome::Records(results) => {
                    for (r, res) in records.iter().zip(results) {
                        if *res == RecordResult::Accepted {
                            written.push(r.id());
                            accepted.insert(r.id());
                        }
                    }
                }
                // The fake's timeouts happen after Kinesis wrote everything.
                CallOutcome::Unknown { .. } => {
                    for r in records {
                        written.push(r.id());
                        accepted.insert(r.id());
                    }
                }
                CallOutcome::NotWritten { .. } => {}
            }
            outcome
        }
    }

    fn accept_all() -> Script {
        Box::new(|_, recs| CallOutcome::Records(vec![RecordResult::Accepted; recs.len()]))
    }

    /// Test defaults (short linger and backoff), overridden by `extra` lines.
    fn config(extra: &str) -> KinesisConfig {
        let mut text = String::from("stream = \"s\"\n");
        for (key, value) in [
            ("linger", "\"20ms\""),
            ("backoff_initial", "\"1ms\""),
            ("backoff_max", "\"5ms\""),
        ] {
            if !extra.lines().any(|l| l.starts_with(key)) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra);
        toml::from_str(&text).unwrap()
    }

    struct Running {
        store: Arc<MemStore>,
        kinesis: Arc<FakeKinesis>,
        metrics: Metrics,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
        dead_path: std::path::PathBuf,
    }

    fn start(
        store: Arc<MemStore>,
        kinesis: Arc<FakeKinesis>,
        cfg: KinesisConfig,
        clock: SharedClock,
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let dead_path = dir.path().join("dead-letter.ndjson");
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_shipper_with(
            Arc::clone(&store),
            Arc::clone(&kinesis),
            cfg,
            DeadLetter::new(dead_path.clone(), metrics.clone()),
            clock,
            metrics.clone(),
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

    #[test]
    fn log_gate_lets_one_through_per_interval_and_counts_the_rest() {
        let mut g = LogGate::new(100);
        assert_eq!(g.check(1000), Some(0));
        assert_eq!(g.check(1050), None);
        assert_eq!(g.check(1099), None);
        assert_eq!(g.check(1100), Some(2));
        assert_eq!(g.check(1150), None);
        assert_eq!(g.check(5000), Some(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ships_everything_and_removes_only_accepted_records() {
        let store = Arc::new(MemStore::default());
        // Each record fails the first time it is sent when its id is a multiple of 4.
        let seen = Mutex::new(HashSet::new());
        let kinesis = FakeKinesis::new(
            &store,
            Box::new(move |_, recs| {
                let mut seen = seen.lock().unwrap();
                CallOutcome::Records(
                    recs.iter()
                        .map(|r| {
                            if seen.insert(r.id()) && r.id() % 4 == 0 {
                                RecordResult::Throttled
                            } else {
                                RecordResult::Accepted
                            }
                        })
                        .collect(),
                )
            }),
        );
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 10"),
            system(),
        );
        store.append(&points(&["a", "b", "c"], 100));
        wait_for("the buffer to drain", || r.store.len() == 0).await;

        let written = r.kinesis.written();
        let mut sorted = written.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=100).collect::<Vec<_>>(),
            "every record written exactly once"
        );
        assert!(
            r.store.bad_removals.lock().unwrap().is_empty(),
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
        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(
            &store,
            Box::new(|n, recs| {
                if n < 3 {
                    CallOutcome::NotWritten {
                        throttled: n == 0,
                        error: "ResourceNotFoundException".into(),
                    }
                } else {
                    CallOutcome::Records(vec![RecordResult::Accepted; recs.len()])
                }
            }),
        );
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 7"),
            system(),
        );
        store.append(&points(&["a", "b"], 40));
        wait_for("the buffer to drain", || r.store.len() == 0).await;
        let written = r.kinesis.written();
        assert_eq!(written, (1..=40).collect::<Vec<_>>(), "in order, once each");
        assert_eq!(r.metrics.put_records_errors.get(), 3);
        assert_eq!(r.metrics.records_throttled.get(), 7);
        assert_eq!(r.metrics.records_failed.get(), 21);
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_outcomes_resend_the_batch() {
        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(
            &store,
            Box::new(|n, recs| {
                if n == 0 {
                    CallOutcome::Unknown {
                        error: "timeout".into(),
                    }
                } else {
                    CallOutcome::Records(vec![RecordResult::Accepted; recs.len()])
                }
            }),
        );
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 5"),
            system(),
        );
        store.append(&points(&["a"], 12));
        wait_for("the buffer to drain", || r.store.len() == 0).await;
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
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversize_records_go_to_the_dead_letter_file() {
        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(&store, accept_all());
        let r = start(Arc::clone(&store), kinesis, config(""), system());
        let big = vec![b'x'; 1024 * 1024];
        let ids = store.append(&[("a", b"{}".to_vec()), ("a", big), ("a", b"{}".to_vec())]);
        store.dead_ok.lock().unwrap().insert(ids[1]);
        wait_for("the buffer to drain", || r.store.len() == 0).await;
        assert_eq!(r.kinesis.written(), vec![ids[0], ids[2]]);
        let text = std::fs::read_to_string(&r.dead_path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["reason"], "oversize");
        assert_eq!(line["id"], ids[1]);
        assert_eq!(line["partitionKey"], "a");
        assert_eq!(line["dataEncoding"], "utf8");
        assert!(r.store.bad_removals.lock().unwrap().is_empty());
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_batch_waits_for_linger_and_a_full_one_does_not() {
        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(&store, accept_all());
        let r = start(
            Arc::clone(&store),
            kinesis,
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

        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(&store, accept_all());
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 100\nlinger = \"300ms\""),
            system(),
        );
        store.append(&points(&["a", "b"], 3));
        wait_for("the lingering batch", || r.store.len() == 0).await;
        assert_eq!(
            r.kinesis.calls(),
            vec![vec![1, 2, 3]],
            "one call after linger"
        );
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_errors_are_retried() {
        let store = Arc::new(MemStore::default());
        store.fail_reads.store(2, Ordering::SeqCst);
        store.fail_removes.store(2, Ordering::SeqCst);
        let kinesis = FakeKinesis::new(&store, accept_all());
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 3"),
            system(),
        );
        store.append(&points(&["a"], 9));
        wait_for("the buffer to drain", || r.store.len() == 0).await;
        assert_eq!(
            r.kinesis.written(),
            (1..=9).collect::<Vec<_>>(),
            "nothing resent"
        );
        stop(r).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_the_call_in_flight_and_leaves_the_rest() {
        let store = Arc::new(MemStore::default());
        let gate = Arc::new(Semaphore::new(0));
        let mut kinesis = FakeKinesis::new(&store, accept_all());
        Arc::get_mut(&mut kinesis).unwrap().gate = Some(Arc::clone(&gate));
        let watch = Arc::clone(&kinesis);
        let started = watch.started.notified();
        tokio::pin!(started);
        started.as_mut().enable();
        let r = start(
            Arc::clone(&store),
            kinesis,
            config("max_batch_records = 4"),
            system(),
        );
        store.append(&points(&["a"], 10));
        tokio::time::timeout(Duration::from_secs(10), started)
            .await
            .expect("a call starts");
        r.shutdown.cancel();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!r.task.is_finished(), "waits for the call in flight");
        gate.add_permits(100);
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
        assert_eq!(store.len(), 6, "accepted records removed, the rest stay");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_while_idle_or_backing_off_is_prompt() {
        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(&store, accept_all());
        let r = start(Arc::clone(&store), kinesis, config(""), system());
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop(r).await;

        let store = Arc::new(MemStore::default());
        let kinesis = FakeKinesis::new(
            &store,
            Box::new(|_, _| CallOutcome::NotWritten {
                throttled: true,
                error: "slow down".into(),
            }),
        );
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
        let store = Arc::new(MemStore::default());
        let gate = Arc::new(Semaphore::new(0));
        let mut kinesis = FakeKinesis::new(&store, accept_all());
        Arc::get_mut(&mut kinesis).unwrap().gate = Some(Arc::clone(&gate));
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
        gate.add_permits(100);
        wait_for("the buffer to drain", || r.store.len() == 0).await;
        let keys = r.kinesis.keys.lock().unwrap().clone();
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| k.len() == 32 && k != "equipment-1"));
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 3);
        wait_for("the age metric to reset", || {
            r.metrics.oldest_unshipped_age_seconds.get() == 0.0
        })
        .await;
        stop(r).await;
    }
}
