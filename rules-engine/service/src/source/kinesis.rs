//! The I/O side of the source: ListShards, one reader task per readable shard,
//! back-off on throttling and network errors.
//!
//! A coordinator owns the shard list and the lineage state. A reader sends its
//! shard's `Finished` batch on the engine's channel and only then tells the
//! coordinator, which only then starts the children: the child's first batch is
//! queued behind the parent's last one, so per-key order holds across a reshard.

use super::config::{InvalidPositionPolicy, KinesisSourceConfig, StartPosition, MIN_POLL_INTERVAL};
use super::metrics::{ShardLabel, SourceMetrics};
use super::shards::{plan, readable, Plan, ReadFrom, ShardInfo, ShardPosition, ShardPositions};
use super::{PoisonedRecord, SourceBatch, SourceRecord};
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use linewatch_runtime::aws::{AwsError, AwsTimeouts};
use linewatch_runtime::problems::Problems;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::{BackoffPolicy, Jitter};
use linewatch_schemas::kpl;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Each call gets this long (a full GetRecords page is up to 10 MiB); connecting at
/// most 3 s of it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off after a failed call: full jitter over `BASE * 2^attempt`, at most `CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kinesis source configuration: {0}")]
    Config(Problems),
    #[error("kinesis source: {0}")]
    Aws(#[from] AwsError),
}

/// Reads a Kinesis stream; see the module documentation.
pub struct KinesisSource {
    client: Client,
    cfg: KinesisSourceConfig,
    metrics: SourceMetrics,
    listing: watch::Sender<Arc<BTreeSet<String>>>,
    problems: SourceProblems,
    caught_up: watch::Sender<Arc<BTreeSet<String>>>,
}

/// Problems the readers found that `/healthz` must show (e.g. a rejected checkpoint).
pub type SourceProblems = Arc<std::sync::Mutex<BTreeSet<String>>>;

impl std::fmt::Debug for KinesisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisSource")
            .field("stream", &self.cfg.stream)
            .finish_non_exhaustive()
    }
}

impl KinesisSource {
    /// Checks `cfg` and builds the client: region, endpoint and credentials from `cfg`,
    /// the standard AWS chain for what is absent. Makes no call to Kinesis.
    pub async fn new(
        cfg: &KinesisSourceConfig,
        metrics: SourceMetrics,
    ) -> Result<Self, SourceError> {
        cfg.check().into_result().map_err(SourceError::Config)?;
        // The runtime's loader: SDK retries off (the source backs off itself, and counts
        // and logs every failure), a timeout on every call, the deprecated key warned of.
        let sdk = cfg
            .aws
            .load("kinesis", AwsTimeouts::per_call(CALL_TIMEOUT))
            .await?;
        Ok(Self::from_client(Client::new(&sdk), cfg.clone(), metrics))
    }

    /// Wraps a client built elsewhere (it should have SDK retries disabled).
    pub fn from_client(client: Client, cfg: KinesisSourceConfig, metrics: SourceMetrics) -> Self {
        KinesisSource {
            client,
            cfg,
            metrics,
            listing: watch::Sender::new(Arc::new(BTreeSet::new())),
            problems: SourceProblems::default(),
            caught_up: watch::Sender::new(Arc::new(BTreeSet::new())),
        }
    }

    /// The ids of the shards the stream listed last (empty until the first ListShards),
    /// for [`ShardPositions::forget_unlisted`]. Updated before any new shard is read.
    pub fn listed_shards(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.listing.subscribe()
    }

    /// The shards whose last GetRecords answered `MillisBehindLatest` 0: read up to the
    /// tip. Updated after that call's batch was handed on, so a consumer that sees a shard
    /// here has every record read so far in its channel (`capture --until` stops on it).
    pub fn caught_up(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.caught_up.subscribe()
    }

    /// What the readers found wrong so far (shared; read it at any time).
    pub fn problems(&self) -> SourceProblems {
        Arc::clone(&self.problems)
    }

    /// Reads until `shutdown` is cancelled or `tx` is closed.
    /// `start` holds checkpointed positions; they win over `cfg.start`. Kinesis errors
    /// are logged, counted and retried, never returned: a missing stream is waited for.
    /// `rng` draws the backoff jitter (each shard reader gets a fork of it).
    pub async fn run(
        self,
        start: ShardPositions,
        tx: mpsc::Sender<SourceBatch>,
        shutdown: CancellationToken,
        mut rng: fastrand::Rng,
    ) -> Result<(), SourceError> {
        let stream = self.cfg.stream.clone();
        let fresh = start.is_empty();
        let mut positions = start;
        // The readers stop with the coordinator, whyever it stops.
        let readers_stop = shutdown.child_token();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<ReaderEvent>();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<String, AbortHandle> = HashMap::new();
        let mut task_shard: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut first_listing = true;
        let mut list_failures = 0u32;
        let mut next_list = Instant::now();
        info!(stream = %stream, start = ?self.cfg.start, checkpointed_shards = positions.len(), "kinesis source starting");

        'outer: loop {
            if Instant::now() >= next_list {
                let listed = tokio::select! {
                    r = list_shards(&self.client, &stream) => r,
                    _ = shutdown.cancelled() => break 'outer,
                };
                match listed {
                    Err(e) => {
                        self.metrics.error("ListShards", e.kind.label());
                        if e.kind == ErrorKind::Throttled {
                            self.metrics.throttled("ListShards");
                        }
                        let wait = backoff(list_failures, rng.f64());
                        list_failures = list_failures.saturating_add(1);
                        if e.kind == ErrorKind::NotFound {
                            warn!(stream = %stream, retry_in = ?wait, "kinesis stream not found; waiting for it: {}", e.message);
                        } else {
                            warn!(stream = %stream, kind = e.kind.label(), retry_in = ?wait, "ListShards failed: {}", e.message);
                        }
                        next_list = Instant::now() + wait;
                    }
                    Ok(shards) => {
                        if list_failures > 0 {
                            info!(stream = %stream, shards = shards.len(), "ListShards works again");
                        }
                        list_failures = 0;
                        let ids: BTreeSet<String> = shards.iter().map(|s| s.id.clone()).collect();
                        // Before any new reader starts, so the engine never prunes a shard it reads.
                        self.listing.send_replace(Arc::new(ids.clone()));
                        positions.forget_unlisted(&ids);
                        running.retain(|id, handle| {
                            let keep = ids.contains(id);
                            if !keep {
                                info!(stream = %stream, shard = %id, "shard no longer listed (trimmed); stop reading it");
                                handle.abort();
                            }
                            keep
                        });
                        // Skipped shards may make their children readable: repeat until stable.
                        loop {
                            let mut skipped = false;
                            for shard in readable(&shards, &positions) {
                                if running.contains_key(&shard.id) {
                                    continue;
                                }
                                match plan(
                                    shard,
                                    &positions,
                                    self.cfg.start,
                                    first_listing && fresh,
                                ) {
                                    Plan::SkipAsFinished => {
                                        debug!(stream = %stream, shard = %shard.id, "closed shard before `latest`: not read");
                                        let batch = SourceBatch {
                                            shard_id: shard.id.clone(),
                                            records: Vec::new(),
                                            poisoned: Vec::new(),
                                            position: ShardPosition::Finished,
                                            millis_behind_latest: None,
                                        };
                                        self.metrics.batches.inc();
                                        tokio::select! {
                                            r = tx.send(batch) => if r.is_err() { break 'outer },
                                            _ = shutdown.cancelled() => break 'outer,
                                        }
                                        positions.set(shard.id.clone(), ShardPosition::Finished);
                                        skipped = true;
                                    }
                                    Plan::Read(from) => {
                                        info!(stream = %stream, shard = %shard.id, from = ?from, "reading shard");
                                        let reader = Reader {
                                            client: self.client.clone(),
                                            stream: stream.clone(),
                                            shard_id: shard.id.clone(),
                                            from,
                                            max_records: self.cfg.max_records,
                                            poll_interval: self.cfg.poll_interval,
                                            metrics: self.metrics.clone(),
                                            tx: tx.clone(),
                                            stop: readers_stop.clone(),
                                            events: event_tx.clone(),
                                            rng: rng.fork(),
                                            start: self.cfg.start,
                                            on_invalid: self.cfg.on_invalid_position,
                                            problems: Arc::clone(&self.problems),
                                            caught_up: self.caught_up.clone(),
                                        };
                                        let handle = tasks.spawn(reader.run());
                                        task_shard.insert(handle.id(), shard.id.clone());
                                        running.insert(shard.id.clone(), handle);
                                    }
                                }
                            }
                            if !skipped {
                                break;
                            }
                        }
                        first_listing = false;
                        next_list = Instant::now() + self.cfg.shard_discovery_interval;
                    }
                }
            }

            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = event_rx.recv() => match ev {
                    Some(ReaderEvent::Finished(id)) => {
                        info!(stream = %stream, shard = %id, "shard finished");
                        running.remove(&id);
                        positions.set(id, ShardPosition::Finished);
                        // Its children may be readable now (and may not be listed yet).
                        next_list = Instant::now();
                    }
                    Some(ReaderEvent::ConsumerGone) | None => {
                        debug!(stream = %stream, "batch receiver dropped; stopping");
                        break;
                    }
                },
                Some(joined) = tasks.join_next_with_id() => {
                    let id = match &joined { Ok((id, ())) => *id, Err(e) => e.id() };
                    if let Some(shard) = task_shard.remove(&id) {
                        if let Err(e) = joined {
                            if e.is_panic() {
                                error!(stream = %stream, shard = %shard, "shard reader panicked; restarting it: {e}");
                                // Unlike `Finished`, the shard stays readable: a new reader resumes it.
                                if running.get(&shard).is_some_and(|h| h.id() == id) {
                                    running.remove(&shard);
                                }
                                next_list = Instant::now() + BACKOFF_BASE;
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(next_list) => {}
            }
        }

        readers_stop.cancel();
        while tasks.join_next().await.is_some() {}
        info!(stream = %stream, "kinesis source stopped");
        Ok(())
    }
}

/// What a reader tells the coordinator.
#[derive(Debug)]
enum ReaderEvent {
    /// The shard's `Finished` batch is on the engine's channel.
    Finished(String),
    /// The engine's channel is closed.
    ConsumerGone,
}

/// Sleeps `d` unless stopped first; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => stop.is_cancelled(),
        _ = stop.cancelled() => true,
    }
}

/// Full-jitter exponential back-off: uniform in `[0, min(CAP, BASE * 2^attempt))`, but
/// never below the 200 ms a shard's call rate allows. `unit` is a random number in [0, 1).
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    BackoffPolicy::new(BACKOFF_BASE, BACKOFF_CAP, Jitter::Full)
        .with_floor(MIN_POLL_INTERVAL)
        .delay_at(attempt, unit)
}

/// What went wrong with a call, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Throttled,
    ExpiredIterator,
    NotFound,
    /// The request names something the stream does not have, e.g. a sequence number of
    /// another (deleted and recreated) stream.
    InvalidArgument,
    Network,
    Service,
    Other,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::ExpiredIterator => "expired_iterator",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Network => "network",
            ErrorKind::Service => "service",
            ErrorKind::Other => "other",
        }
    }

    /// From a Kinesis error code.
    pub fn of_code(code: Option<&str>) -> ErrorKind {
        match code {
            Some(
                "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "KMSThrottlingException"
                | "ThrottlingException",
            ) => ErrorKind::Throttled,
            Some("ExpiredIteratorException") => ErrorKind::ExpiredIterator,
            Some("ResourceNotFoundException") => ErrorKind::NotFound,
            Some("InvalidArgumentException") => ErrorKind::InvalidArgument,
            Some("InternalFailureException" | "InternalFailure" | "ServiceUnavailable") => {
                ErrorKind::Service
            }
            _ => ErrorKind::Other,
        }
    }
}

#[derive(Debug)]
struct CallError {
    kind: ErrorKind,
    message: String,
}

fn call_error<E, R>(err: SdkError<E, R>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let kind = match &err {
        SdkError::ServiceError(s) => ErrorKind::of_code(s.err().code()),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Network,
        SdkError::ResponseError(_) => ErrorKind::Service,
        _ => ErrorKind::Other,
    };
    // DisplayErrorContext walks the source chain ("connection refused", not "dispatch failure").
    CallError {
        kind,
        message: DisplayErrorContext(err).to_string(),
    }
}

/// Every shard of the stream (ListShards, paginated).
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, CallError> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        // A NextToken call must not name the stream.
        let req = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = req.send().await.map_err(call_error)?;
        out.extend(page.shards.unwrap_or_default().into_iter().map(|s| {
            ShardInfo {
                closed: s
                    .sequence_number_range
                    .as_ref()
                    .is_some_and(|r| r.ending_sequence_number.is_some()),
                id: s.shard_id,
                parent: s.parent_shard_id,
                adjacent_parent: s.adjacent_parent_shard_id,
            }
        }));
        next = page.next_token;
        if next.is_none() {
            return Ok(out);
        }
    }
}

/// Reads one shard until it is finished (or the source stops).
struct Reader {
    client: Client,
    stream: String,
    shard_id: String,
    from: ReadFrom,
    max_records: u32,
    poll_interval: Duration,
    metrics: SourceMetrics,
    tx: mpsc::Sender<SourceBatch>,
    stop: CancellationToken,
    events: mpsc::UnboundedSender<ReaderEvent>,
    rng: fastrand::Rng,
    start: StartPosition,
    on_invalid: InvalidPositionPolicy,
    problems: SourceProblems,
    caught_up: watch::Sender<Arc<BTreeSet<String>>>,
}

/// Counts the shard as open while a reader holds it (also when the task is aborted).
struct OpenShard {
    metrics: SourceMetrics,
    shard: String,
}

impl Drop for OpenShard {
    fn drop(&mut self) {
        self.metrics.open_shards.dec();
        self.metrics.millis_behind_latest.remove(&ShardLabel {
            shard: self.shard.clone(),
        });
    }
}

impl Reader {
    async fn run(mut self) {
        // A copy: `self` stays borrowed by the calls raced against it.
        let stop = self.stop.clone();
        // The last delivered sequence number: a new iterator (after expiry) starts after it.
        let mut last_seq: Option<String> = match &self.from {
            ReadFrom::AfterSequence(s) => Some(s.clone()),
            _ => None,
        };
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        let mut open: Option<OpenShard> = None;
        // Never more than 5 calls per second on this shard.
        let mut next_call = Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if sleep_or_stop(next_call.saturating_duration_since(Instant::now()), &stop).await {
                return;
            }
            next_call = Instant::now() + MIN_POLL_INTERVAL;

            let Some(it) = iterator.take() else {
                let from = match &last_seq {
                    Some(s) => ReadFrom::AfterSequence(s.clone()),
                    None => self.from.clone(),
                };
                let res = tokio::select! {
                    r = self.get_iterator(&from) => r,
                    _ = stop.cancelled() => return,
                };
                match res {
                    Ok(Some(it)) => {
                        failures = 0;
                        iterator = Some(it);
                        if open.is_none() {
                            self.metrics.open_shards.inc();
                            open = Some(OpenShard {
                                metrics: self.metrics.clone(),
                                shard: self.shard_id.clone(),
                            });
                        }
                    }
                    Ok(None) => {
                        warn!(stream = %self.stream, shard = %self.shard_id, "GetShardIterator returned no iterator; retrying");
                        next_call = Instant::now()
                            + self.failed("GetShardIterator", ErrorKind::Other, &mut failures);
                    }
                    Err(e) if e.kind == ErrorKind::InvalidArgument => {
                        if let ReadFrom::AfterSequence(seq) = &from {
                            // Retrying cannot help: the stream does not know this position.
                            self.metrics.invalid_positions.inc();
                            self.metrics.error("GetShardIterator", e.kind.label());
                            let restart = self.on_invalid == InvalidPositionPolicy::Restart;
                            let problem = format!(
                                "shard {}: the stream rejected the checkpointed position after {seq} ({}); {}",
                                self.shard_id,
                                e.message,
                                if restart { format!("restarted from kinesis.start = {:?}", self.start) } else { "not read (kinesis.on_invalid_position = \"fail\")".to_owned() }
                            );
                            error!(stream = %self.stream, shard = %self.shard_id, sequence = %seq, policy = ?self.on_invalid, "{problem}");
                            self.problems
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(problem);
                            if !restart {
                                return;
                            }
                            last_seq = None;
                            self.from = ReadFrom::from_start(self.start);
                        } else {
                            let wait = self.failed("GetShardIterator", e.kind, &mut failures);
                            warn!(stream = %self.stream, shard = %self.shard_id, from = ?from, retry_in = ?wait, "GetShardIterator rejected: {}", e.message);
                            next_call = Instant::now() + wait;
                        }
                    }
                    Err(e) => {
                        let wait = self.failed("GetShardIterator", e.kind, &mut failures);
                        warn!(stream = %self.stream, shard = %self.shard_id, from = ?from, kind = e.kind.label(), retry_in = ?wait, "GetShardIterator failed: {}", e.message);
                        next_call = Instant::now() + wait;
                    }
                }
                continue;
            };

            let res = tokio::select! {
                r = self.client.get_records().shard_iterator(&it).limit(self.max_records as i32).send() => r,
                _ = stop.cancelled() => return,
            };
            let out = match res {
                Ok(out) => out,
                Err(e) => {
                    let e = call_error(e);
                    if e.kind == ErrorKind::ExpiredIterator {
                        // Iterators live 5 minutes; a long back-pressure stall outlives one.
                        self.metrics.error("GetRecords", e.kind.label());
                        info!(stream = %self.stream, shard = %self.shard_id, after = ?last_seq, "shard iterator expired; getting a new one");
                    } else {
                        let wait = self.failed("GetRecords", e.kind, &mut failures);
                        warn!(stream = %self.stream, shard = %self.shard_id, kind = e.kind.label(), retry_in = ?wait, "GetRecords failed: {}", e.message);
                        next_call = Instant::now() + wait;
                        // A throttled or failed call leaves the iterator valid.
                        iterator = Some(it);
                    }
                    continue;
                }
            };
            failures = 0;

            let n = out.records.len();
            let finished = out.next_shard_iterator.is_none();
            let millis_behind = out.millis_behind_latest;
            if let Some(ms) = millis_behind {
                self.metrics
                    .millis_behind_latest
                    .get_or_create(&ShardLabel {
                        shard: self.shard_id.clone(),
                    })
                    .set(ms);
            }
            if let Some(batch) = page_batch(
                &self.stream,
                &self.shard_id,
                out.records,
                &mut last_seq,
                finished,
                millis_behind,
                &self.metrics,
            ) {
                let count = batch.records.len() as u64;
                // Counted before the send, so a consumer never sees a batch the metrics miss.
                self.metrics.batches.inc();
                self.metrics.records.inc_by(count);
                // Bounded channel: waiting here is the back-pressure.
                let sent = tokio::select! {
                    r = self.tx.send(batch) => r.is_ok(),
                    _ = stop.cancelled() => return,
                };
                if !sent {
                    let _ = self.events.send(ReaderEvent::ConsumerGone);
                    return;
                }
            }
            // After the batch was handed on: whoever sees the shard caught up has it all.
            let at_tip = millis_behind == Some(0);
            self.caught_up.send_if_modified(|set| {
                if at_tip == set.contains(&self.shard_id) {
                    return false;
                }
                let mut next = (**set).clone();
                if at_tip {
                    next.insert(self.shard_id.clone());
                } else {
                    next.remove(&self.shard_id);
                }
                *set = Arc::new(next);
                true
            });
            if finished {
                let _ = self
                    .events
                    .send(ReaderEvent::Finished(self.shard_id.clone()));
                return;
            }
            iterator = out.next_shard_iterator;
            // Behind (or a full page): read on at the shard's rate limit; caught up: wait.
            let behind = millis_behind.is_some_and(|ms| ms > 0) || n >= self.max_records as usize;
            if !behind {
                next_call = Instant::now() + self.poll_interval;
            }
        }
    }

    /// Counts a failed call and returns how long to wait before the next one.
    fn failed(&mut self, operation: &str, kind: ErrorKind, failures: &mut u32) -> Duration {
        self.metrics.error(operation, kind.label());
        if kind == ErrorKind::Throttled {
            self.metrics.throttled(operation);
        }
        let wait = backoff(*failures, self.rng.f64());
        *failures = failures.saturating_add(1);
        wait
    }

    async fn get_iterator(&self, from: &ReadFrom) -> Result<Option<String>, CallError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard_id);
        let req = match from {
            ReadFrom::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            ReadFrom::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            ReadFrom::AtTimestamp(t) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*t)),
            ReadFrom::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s),
        };
        let out = req.send().await.map_err(call_error)?;
        Ok(out.shard_iterator)
    }
}

/// One GetRecords page as the batch to hand on, `None` when there is nothing to send
/// (an empty page of an open shard). `last_seq` is the last sequence number handed on
/// (a new iterator starts after it). The batch's position is after the page's last
/// Kinesis record, whether it yielded user records or was poisoned: a record that
/// yields nothing is dead-lettered once and never read again.
#[allow(clippy::too_many_arguments)]
fn page_batch(
    stream: &str,
    shard: &str,
    page: Vec<aws_sdk_kinesis::types::Record>,
    last_seq: &mut Option<String>,
    finished: bool,
    millis_behind_latest: Option<i64>,
    metrics: &SourceMetrics,
) -> Option<SourceBatch> {
    if page.is_empty() && !finished {
        return None;
    }
    let mut records = Vec::with_capacity(page.len());
    let mut poisoned = Vec::new();
    for r in page {
        metrics.kinesis_records.inc();
        *last_seq = Some(r.sequence_number.clone());
        expand(stream, shard, r, &mut records, &mut poisoned, metrics);
    }
    let position = match (&*last_seq, finished) {
        (_, true) => ShardPosition::Finished,
        (Some(s), false) => ShardPosition::After(s.clone()),
        // Not reached: a non-empty page set `last_seq`. Should it be, the shard reads on
        // from where it was rather than stopping.
        (None, false) => return None,
    };
    Some(SourceBatch {
        shard_id: shard.to_owned(),
        records,
        poisoned,
        position,
        millis_behind_latest,
    })
}

/// Appends the user records of one Kinesis record (several if it is KPL-aggregated);
/// a record that yields none goes to `poisoned`.
fn expand(
    stream: &str,
    shard: &str,
    r: aws_sdk_kinesis::types::Record,
    out: &mut Vec<SourceRecord>,
    poisoned: &mut Vec<PoisonedRecord>,
    metrics: &SourceMetrics,
) {
    let arrival_ms = r
        .approximate_arrival_timestamp
        .and_then(|t| t.to_millis().ok())
        .and_then(|ms| u64::try_from(ms).ok());
    let partition_key = r.partition_key.unwrap_or_default();
    let data = r.data.into_inner();
    let sequence_number = r.sequence_number;
    let raw = |partition_key, data| SourceRecord {
        sequence_number: sequence_number.clone(),
        sub_sequence: 0,
        partition_key,
        arrival_ms,
        data,
    };
    match kpl::deaggregate(&data, &partition_key) {
        Ok(users) if users.is_empty() => {
            metrics.poisoned_records.inc();
            let reason = "KPL aggregated record holds no user record".to_owned();
            warn!(stream, shard, sequence_number = %sequence_number, "{reason}; dead-lettering it and reading on");
            poisoned.push(PoisonedRecord {
                record: raw(partition_key, data),
                reason,
            });
        }
        Ok(users) => out.extend(users.into_iter().map(|u| SourceRecord {
            sequence_number: sequence_number.clone(),
            sub_sequence: u.sub_sequence,
            partition_key: u.partition_key,
            arrival_ms,
            data: u.data,
        })),
        Err(e) => {
            // Delivered raw: the engine dead-letters it (as not a data point) with the bytes kept.
            metrics.kpl_errors.inc();
            warn!(stream, shard, sequence_number = %sequence_number, "KPL record does not de-aggregate; delivering it as one raw record: {e}");
            out.push(raw(partition_key, data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_paced() {
        assert_eq!(backoff(0, 0.0), MIN_POLL_INTERVAL);
        assert_eq!(backoff(3, 0.5), Duration::from_millis(800));
        assert_eq!(backoff(30, 0.999_999), BACKOFF_CAP.mul_f64(0.999_999));
        assert!(backoff(u32::MAX, 1.0) <= BACKOFF_CAP);
        for a in 0..20 {
            assert!(backoff(a, 0.25) <= backoff(a + 1, 0.25));
        }
    }

    #[test]
    fn backoff_delays_follow_the_seed() {
        let delays = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..10).map(|a| backoff(a, rng.f64())).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(delays(42), delays(43));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            ErrorKind::of_code(Some("ProvisionedThroughputExceededException")),
            ErrorKind::Throttled
        );
        assert_eq!(
            ErrorKind::of_code(Some("LimitExceededException")),
            ErrorKind::Throttled
        );
        assert_eq!(
            ErrorKind::of_code(Some("ExpiredIteratorException")),
            ErrorKind::ExpiredIterator
        );
        assert_eq!(
            ErrorKind::of_code(Some("ResourceNotFoundException")),
            ErrorKind::NotFound
        );
        assert_eq!(ErrorKind::of_code(None), ErrorKind::Other);
    }

    fn record(seq: &str, data: Vec<u8>) -> aws_sdk_kinesis::types::Record {
        aws_sdk_kinesis::types::Record::builder()
            .sequence_number(seq)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .build()
            .unwrap()
    }

    #[test]
    fn a_page_of_only_an_empty_kpl_record_is_dead_lettered_and_passed() {
        // Magic + MD5 of an empty body: a valid aggregate of zero user records.
        let empty = kpl::frame(&[]);
        assert_eq!(kpl::deaggregate(&empty, "k"), Ok(vec![]));
        let metrics = SourceMetrics::new();
        let mut last = None;
        let batch = page_batch(
            "s",
            "shard-0",
            vec![record("100", empty.clone())],
            &mut last,
            false,
            Some(0),
            &metrics,
        )
        .expect("a batch carries the poisoned record");
        assert!(batch.records.is_empty());
        assert_eq!(batch.poisoned.len(), 1);
        assert_eq!(batch.poisoned[0].record.sequence_number, "100");
        assert_eq!(batch.poisoned[0].record.data, empty);
        assert!(
            batch.poisoned[0].reason.contains("no user record"),
            "{}",
            batch.poisoned[0].reason
        );
        // The checkpoint moves past it, and so does a new iterator.
        assert_eq!(batch.position, ShardPosition::After("100".into()));
        assert_eq!(last.as_deref(), Some("100"));
        assert_eq!(metrics.poisoned_records.get(), 1);

        // Between good records, the position is after the last Kinesis record.
        let good = |n: u8| record(&format!("20{n}"), format!("{{\"n\":{n}}}").into_bytes());
        let batch = page_batch(
            "s",
            "shard-0",
            vec![
                good(1),
                record("202", empty),
                good(3),
                record("204", kpl::frame(&[])),
            ],
            &mut last,
            false,
            None,
            &metrics,
        )
        .unwrap();
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.poisoned.len(), 2);
        assert_eq!(batch.position, ShardPosition::After("204".into()));
        assert_eq!(metrics.poisoned_records.get(), 3);

        // An empty page of an open shard sends nothing; of a closed one, `Finished`.
        assert!(page_batch("s", "shard-0", vec![], &mut last, false, None, &metrics).is_none());
        let done = page_batch("s", "shard-0", vec![], &mut last, true, None, &metrics).unwrap();
        assert_eq!(done.position, ShardPosition::Finished);
    }

    #[test]
    fn expand_deaggregates_and_keeps_bad_kpl_raw() {
        use aws_sdk_kinesis::primitives::Blob;
        let metrics = SourceMetrics::new();
        let rec = |data: Vec<u8>| {
            aws_sdk_kinesis::types::Record::builder()
                .sequence_number("49")
                .partition_key("outer")
                .data(Blob::new(data))
                .approximate_arrival_timestamp(DateTime::from_millis(1_700_000_000_123))
                .build()
                .unwrap()
        };
        let mut out = Vec::new();
        let packed = kpl::aggregate(&[("a", None, b"1"), ("b", None, b"2")]);
        expand(
            "s",
            "shard",
            rec(packed),
            &mut out,
            &mut Vec::new(),
            &metrics,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].sub_sequence, out[1].partition_key.as_str()),
            (1, "b")
        );
        assert_eq!(out[0].arrival_ms, Some(1_700_000_000_123));
        assert!(out.iter().all(|r| r.sequence_number == "49"));

        // Magic + good MD5 + a body that does not decode.
        let bad = kpl::frame(&[0x1a, 0x64, 0x08, 0x00]);
        out.clear();
        expand(
            "s",
            "shard",
            rec(bad.clone()),
            &mut out,
            &mut Vec::new(),
            &metrics,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, bad);
        assert_eq!(metrics.kpl_errors.get(), 1);
    }
}
