//! The run loop: wires the Kinesis source, the control topic, the engine, the
//! checkpoint store, the webhook targets and the operations endpoints.
//!
//! One task owns the engine. It waits for the retained rules first, then takes, in
//! this priority: shutdown, the advance tick (watermark, holds, output), the
//! checkpoint tick, control messages, and record batches. A checkpoint is taken
//! between batches, after a tick, so it is a consistent cut: the engine's state,
//! the positions of every record it has seen, and every transition it produced
//! that a target has not acknowledged yet.

use super::checkpoint::{CheckpointError, CheckpointStore};
use super::config::{parse_partition, ServiceConfig};
use super::dead_points::PointDeadLetters;
use super::http::{self, OpsView, Phase, RuleView, SharedView};
use super::metrics::{
    EngineMetrics, OutcomeLabel, ReasonLabel, SenderLabels, StateLabel, StatusLabel,
};
use crate::control::auth::{self, Trust};
use crate::control::intake::{self, Intake, IntakeSetup};
use crate::control::{self, ControlEvent, ControlHandle, ControlMetrics, RuleStatus, StatusKind};
use crate::output::{
    self, DeadLetterStore, DeliveryContext, Outbox, OutboxSnapshot, OutputMetrics, PendingEvent,
    WebhookTarget,
};
use crate::source::{KinesisSource, ShardPositions, SourceBatch, SourceMetrics, SourceRecord};
use linewatch_rules_core::engine::{
    CompiledRule, Engine, EngineConfig, EngineError, EngineSnapshot, RecordOutcome, RuleUpdate,
};
use linewatch_rules_core::eval::DiagnosticKind;
use linewatch_rules_core::eval::{EvalStats, Partition};
use linewatch_rules_core::lifecycle::ChangeOutcome;
use linewatch_rules_core::transition::EventSource;
use linewatch_rules_core::watermark::SenderStatus;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::{SharedClock, SystemClock};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Cp = super::checkpoint::Checkpoint<EngineSnapshot, ShardPositions, OutboxSnapshot>;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Http(#[from] http::BindError),
    #[error("{0}")]
    Start(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct RunOptions {
    /// `--partition I/N`; wins over the config file's `partition`.
    pub partition: Option<Partition>,
    /// The wall clock every decision of the run loop and the deliveries reads.
    pub clock: SharedClock,
    /// Seeds every jitter of the run (delivery retries, MQTT reconnects, Kinesis
    /// backoff): one seed, one sequence of delays.
    pub seed: u64,
}

impl Default for RunOptions {
    /// The system clock and a seed from the OS (through fastrand's OS-seeded generator):
    /// the binary's edge. Tests pass a manual clock or a fixed seed instead.
    fn default() -> Self {
        RunOptions {
            partition: None,
            clock: Arc::new(SystemClock),
            seed: fastrand::u64(..),
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("partition", &self.partition)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

fn partition_text(p: Partition) -> String {
    format!("{}/{}", p.index, p.count)
}

/// Run until `shutdown` is cancelled; then tick, checkpoint and stop the tasks.
pub async fn run(
    cfg: ServiceConfig,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let clock = opts.clock.clone();
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let partition = match (opts.partition, cfg.partition.as_deref()) {
        (Some(p), _) => p,
        (None, Some(text)) => parse_partition(text).map_err(ServiceError::Start)?,
        (None, None) => Partition::ALL,
    };
    let instance = cfg.instance_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "rules".into());
        format!("{host}-{}", std::process::id())
    });
    let mk_dir = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|source| ServiceError::Io {
            what: "cannot create",
            path: path.to_owned(),
            source,
        })
    };
    mk_dir(&cfg.state_dir)?;
    mk_dir(&cfg.webhook_dead_letter_dir())?;

    // Metrics of every part, one registry.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = EngineMetrics::default();
    metrics.register(&mut registry);
    let source_metrics = SourceMetrics::default();
    source_metrics.register(&mut registry);
    let control_metrics = ControlMetrics::default();
    control_metrics.register(&mut registry);
    let output_metrics = OutputMetrics::default();
    output_metrics.register(&mut registry);

    // State: the last checkpoint, or a fresh start.
    let mut store = CheckpointStore::open(&cfg.checkpoint_dir(), Duration::from_secs(10))?;
    let loaded: Option<Cp> = match store.load() {
        Ok(cp) => cp,
        Err(e @ CheckpointError::Corrupt { .. }) => {
            drop(store);
            let aside = cfg
                .state_dir
                .join(format!("checkpoint.corrupt-{}", clock.now_ms()));
            std::fs::rename(cfg.checkpoint_dir(), &aside).map_err(|source| ServiceError::Io {
                what: "cannot move aside the unreadable checkpoint",
                path: cfg.checkpoint_dir(),
                source,
            })?;
            tracing::error!(error = %e, moved_to = %aside.display(),
                "checkpoint unreadable: moved it aside, starting from the configured start position");
            metrics.checkpoint_failures.inc();
            store = CheckpointStore::open(&cfg.checkpoint_dir(), Duration::from_secs(10))?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    let engine_cfg = EngineConfig {
        sequencer: cfg.sequencer(),
        workers: cfg.workers,
        limits: cfg.limits(),
        partition,
    };
    let outbox = Outbox::new(&cfg.webhooks);
    let (engine, positions, outbox) = match loaded {
        Some(cp) => {
            let (mut engine, problems) = Engine::restore(engine_cfg, cp.engine)?;
            for (rule, why) in problems {
                tracing::warn!(rule, why, "rule from the checkpoint not restored");
            }
            // A checkpoint written before the future bound may carry a watermark
            // dragged ahead by a far-future point: put it back (docs/rules.md).
            let (repair, dropped) = engine.repair_future(clock.now_ms());
            if !repair.is_empty() || dropped > 0 {
                tracing::warn!(
                    watermark_was = ?repair.watermark_was,
                    watermark_now = ?engine.sequencer().watermark(),
                    senders_forgotten = ?repair.senders_forgotten,
                    buffered_points_dropped = dropped,
                    "the checkpoint's watermark was beyond the future bound; repaired"
                );
            }
            tracing::info!(
                checkpoint = cp.sequence,
                written_at = cp.written_at,
                rules = engine.rules().len(),
                "resuming from the checkpoint"
            );
            let report = outbox.restore(cp.outbox);
            tracing::info!(?report, "undelivered events restored");
            (engine, cp.positions, outbox)
        }
        None => (Engine::new(engine_cfg)?, ShardPositions::default(), outbox),
    };
    let outbox = Arc::new(outbox);

    let view: SharedView = Arc::new(RwLock::new(OpsView::new(
        instance.clone(),
        partition_text(partition),
    )));
    let http_task = http::serve(cfg.http.listen, registry, view.clone(), shutdown.clone()).await?;

    // Webhook targets, each its own task.
    let dead = DeadLetterStore::open(cfg.webhook_dead_letter_dir())
        .map_err(|e| ServiceError::Start(format!("webhook dead-letter store: {e}")))?;
    let mut tasks = Vec::new();
    for hook in &cfg.webhooks {
        let hook = hook
            .resolve()
            .map_err(|e| ServiceError::Start(format!("webhooks `{}`: {e}", hook.name)))?;
        let cx = DeliveryContext {
            outbox: outbox.clone(),
            dead: dead.clone(),
            metrics: output_metrics.clone(),
            clock: clock.clone(),
            rng: rng.fork(),
            shutdown: shutdown.clone(),
        };
        tasks.push(tokio::spawn(output::run_target(
            WebhookTarget::new(hook),
            cx,
        )));
    }

    // Who may change rules.
    let trust = load_trust(&cfg.mqtt.auth)?;
    // The control topic: rules first, then data.
    let client_id = cfg.mqtt.client_id.clone().unwrap_or_else(|| {
        format!(
            "linewatch-rules-{instance}-p{}of{}",
            partition.index, partition.count
        )
    });
    let (control, control_events) =
        control::start(&cfg.mqtt, client_id, control_metrics.clone(), rng.fork())
            .await
            .map_err(|e| ServiceError::Start(format!("control topic: {e}")))?;
    let accept_unsigned = trust.accept_unsigned();
    let (mut control_rx, intake_task) = intake::spawn(
        control_events,
        IntakeSetup {
            trust,
            compiler: engine.compiler(),
            partition,
            loaded: engine
                .rules()
                .iter()
                .map(|(id, r)| (id.clone(), r.version, r.script.clone()))
                .collect(),
            metrics: control_metrics,
        },
    );

    let mut lp = Loop {
        engine,
        metrics,
        view,
        control,
        outbox,
        events: cfg.event_source(),
        instance,
        dead_points: PointDeadLetters::new(cfg.points_dead_letter_file()),
        max_point_bytes: cfg.max_point_bytes,
        clock: clock.clone(),
        last_stats: EvalStats::default(),
        last_checkpoint: None,
        sender_labels: SenderLabels::new(cfg.metrics.max_sender_labels),
        max_lag_ms: cfg.health.max_watermark_lag.as_millis() as u64,
        pending_statuses: Vec::new(),
        last_pruned: 0,
    };
    lp.set_phase(Phase::SyncingRules);
    let mut present = BTreeSet::new();
    // The wait is bounded by `retained_wait` from here, whatever the broker sends and
    // however long compiling takes: rules still arriving apply while data flows.
    let sync_deadline = tokio::time::Instant::now() + cfg.mqtt.retained_wait;
    // `Some(complete)` once the retained rules are in (or the wait is over); `None` on shutdown.
    let synced = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            _ = tokio::time::sleep_until(sync_deadline) => {
                tracing::warn!(rules = lp.engine.rules().len(), "stopped waiting for retained rules after retained_wait; going on with what is loaded, the rest applies as it arrives");
                break Some(false);
            }
            item = control_rx.recv() => match item {
                Some(Intake::Event(ControlEvent::InitialSyncDone { rules, timed_out })) => {
                    if timed_out {
                        tracing::warn!(rules, "stopped waiting for retained rules (retained_wait); going on with what arrived");
                    } else {
                        tracing::info!(rules, "retained rules received");
                    }
                    break Some(!timed_out);
                }
                Some(item) => {
                    match &item {
                        Intake::Upsert { compiled, .. } => { present.insert(compiled.rule_id.clone()); }
                        Intake::Delete { rule_id, .. } => { present.remove(rule_id); }
                        _ => {}
                    }
                    lp.on_intake(item).await?;
                }
                None => return Err(ServiceError::Start("the control topic task stopped".into())),
            },
        }
    };
    let synced = synced.map(|complete| !complete);
    if let Some(timed_out) = synced {
        // Only a complete view of the retained rules says which ones were deleted
        // while this instance was down; after a timeout (broker unreachable) the
        // checkpoint's rules stay, and a deletion takes effect when it arrives.
        // With signed rules, a rule goes only by a signed delete: a retained message
        // that vanished (anyone may clear one) deletes nothing.
        let deleted = if timed_out || !accept_unsigned {
            Vec::new()
        } else {
            lp.engine.forget_missing(&present)?
        };
        for outcome in deleted {
            tracing::info!(?outcome, "rule deleted while this instance was down");
            lp.publish(RuleStatus::from_outcome(
                outcome,
                lp.instance.clone(),
                lp.clock.now_ms(),
            ))
            .await;
        }
        lp.refresh_view();
        lp.set_phase(Phase::Running);

        let (tx, mut batches) = mpsc::channel::<SourceBatch>(16);
        let source = KinesisSource::new(&cfg.kinesis, source_metrics)
            .await
            .map_err(|e| ServiceError::Start(format!("kinesis source: {e}")))?;
        let mut positions = positions;
        // Shards trimmed from the stream are dropped from the positions at checkpoints.
        let listed = source.listed_shards();
        let source_problems = source.problems();
        let source_task =
            tokio::spawn(source.run(positions.clone(), tx, shutdown.clone(), rng.fork()));

        let mut advance = tokio::time::interval(cfg.watermark.advance_interval);
        advance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoint = tokio::time::interval(cfg.checkpoint_interval);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checkpoint.tick().await;
        let (mut control_open, mut source_open) = (true, true);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = advance.tick() => {
                    lp.tick()?;
                    lp.publish_pending().await;
                    let found: Vec<String> = source_problems
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned()
                        .collect();
                    for p in found {
                        lp.view_problem(&p);
                    }
                }
                _ = checkpoint.tick() => {
                    let current = listed.borrow().clone();
                    if !current.is_empty() {
                        positions.forget_unlisted(&current);
                    }
                    lp.checkpoint(&mut store, &positions)?;
                }
                ev = control_rx.recv(), if control_open => match ev {
                    Some(ev) => lp.on_intake(ev).await?,
                    None => {
                        // Keep processing data with the rules loaded.
                        tracing::error!("the control topic task stopped; rule changes are not received any more");
                        lp.view_problem("control topic task stopped");
                        control_open = false;
                    }
                },
                batch = batches.recv(), if source_open => match batch {
                    Some(batch) => {
                        lp.on_batch(&batch)?;
                        positions.apply(&batch);
                    }
                    None => {
                        tracing::error!("the Kinesis source stopped");
                        lp.view_problem("kinesis source stopped");
                        source_open = false;
                    }
                },
            }
        }
        lp.set_phase(Phase::Stopping);
        lp.tick()?;
        lp.checkpoint(&mut store, &positions)?;
        match tokio::time::timeout(Duration::from_secs(10), source_task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the Kinesis source ended with an error"),
            Err(_) => tracing::warn!("the Kinesis source did not stop within 10 s"),
            _ => {}
        }
    }
    lp.control.shutdown().await;
    intake_task.abort();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("stopped");
    Ok(())
}

struct Loop {
    engine: Engine,
    metrics: EngineMetrics,
    view: SharedView,
    control: ControlHandle,
    outbox: Arc<Outbox>,
    events: EventSource,
    instance: String,
    dead_points: PointDeadLetters,
    max_point_bytes: usize,
    last_stats: EvalStats,
    last_checkpoint: Option<u64>,
    clock: SharedClock,
    sender_labels: SenderLabels,
    /// `/healthz` is degraded above this watermark lag.
    max_lag_ms: u64,
    /// Statuses decided during a tick (quarantines), published after it.
    pending_statuses: Vec<RuleStatus>,
    last_pruned: u64,
}

impl Loop {
    fn set_phase(&self, phase: Phase) {
        self.view.write().unwrap_or_else(|p| p.into_inner()).phase = phase;
    }

    fn view_problem(&self, problem: &str) {
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        if !v.problems.iter().any(|p| p == problem) {
            v.problems.push(problem.to_owned());
        }
    }

    async fn on_intake(&mut self, item: Intake) -> Result<(), ServiceError> {
        match item {
            Intake::Upsert { compiled, .. } => self.on_compiled(compiled).await,
            Intake::Delete {
                rule_id, version, ..
            } => self.on_delete(&rule_id, version).await,
            Intake::Refused {
                rule_id,
                version,
                error,
            } => {
                self.count_change("rejected");
                self.publish(RuleStatus::rejected(
                    &rule_id,
                    version,
                    error,
                    self.instance.clone(),
                    self.clock.now_ms(),
                ))
                .await;
                Ok(())
            }
            Intake::Event(ev) => self.on_control(ev).await,
        }
    }

    fn count_change(&self, label: &'static str) {
        self.metrics
            .rule_changes
            .get_or_create(&StatusLabel { status: label })
            .inc();
    }

    async fn on_control(&mut self, ev: ControlEvent) -> Result<(), ServiceError> {
        match ev {
            ControlEvent::Rule { rule_id, .. } => {
                // The intake turns these into Intake items; never here.
                tracing::debug!(rule = rule_id, "unverified rule event ignored");
            }
            ControlEvent::Connected => {
                self.view
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .mqtt_connected = true;
            }
            ControlEvent::Disconnected { error } => {
                tracing::warn!(%error, "control topic disconnected; rules loaded stay in force");
                self.view
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .mqtt_connected = false;
            }
            ControlEvent::Malformed { topic, error } => {
                // The control task logged and counted it; the author learns on the
                // status topic, if the topic names a rule this instance owns.
                let rule_id = self
                    .control
                    .topics()
                    .rule_id_of(&topic)
                    .ok()
                    .map(str::to_owned);
                if let Some(rule_id) = rule_id.filter(|id| self.engine.partition().owns(id)) {
                    let status = RuleStatus::rejected(
                        &rule_id,
                        None,
                        error,
                        self.instance.clone(),
                        self.clock.now_ms(),
                    );
                    self.count_change("rejected");
                    self.publish(status).await;
                }
            }
            ControlEvent::InitialSyncDone { .. } => {}
        }
        Ok(())
    }

    async fn on_compiled(&mut self, compiled: CompiledRule) -> Result<(), ServiceError> {
        let rule_id = compiled.rule_id.clone();
        let update = self.engine.apply_compiled(compiled)?;
        self.on_update(&rule_id, update).await
    }

    /// A delete up to `version` (`None`: any) leaves a newer rule alone: an old signed
    /// delete replayed after a re-publish changes nothing.
    async fn on_delete(&mut self, rule_id: &str, version: Option<u64>) -> Result<(), ServiceError> {
        if let (Some(offered), Some(loaded)) = (version, self.engine.rules().get(rule_id)) {
            if loaded.version > offered {
                let outcome = ChangeOutcome::IgnoredStaleVersion {
                    rule_id: rule_id.to_owned(),
                    loaded: loaded.version,
                    offered,
                };
                return self.on_update(rule_id, RuleUpdate::Stale(outcome)).await;
            }
        }
        let update = self.engine.on_rule(rule_id, None)?;
        self.on_update(rule_id, update).await
    }

    async fn on_update(&mut self, rule_id: &str, update: RuleUpdate) -> Result<(), ServiceError> {
        let at = self.clock.now_ms();
        let status = match update {
            RuleUpdate::NotOwned | RuleUpdate::Unchanged { .. } => None,
            RuleUpdate::Applied(o) | RuleUpdate::Stale(o) | RuleUpdate::NotFound(o) => {
                Some(RuleStatus::from_outcome(o, self.instance.clone(), at))
            }
            RuleUpdate::Rejected { version, error } => {
                tracing::warn!(rule = rule_id, ?version, %error, "rule rejected");
                Some(RuleStatus::rejected(
                    rule_id,
                    version,
                    error,
                    self.instance.clone(),
                    at,
                ))
            }
        };
        if let Some(status) = status {
            let label = match status.status {
                StatusKind::Accepted => "accepted",
                StatusKind::Rejected => "rejected",
                StatusKind::Deleted => "deleted",
                StatusKind::Ignored => "ignored",
                StatusKind::NotFound => "not_found",
                StatusKind::Quarantined => "quarantined",
            };
            tracing::info!(rule = rule_id, version = ?status.version, status = label, "rule change");
            self.metrics
                .rule_changes
                .get_or_create(&StatusLabel { status: label })
                .inc();
            self.publish(status).await;
        }
        self.refresh_view();
        Ok(())
    }

    async fn publish(&self, status: RuleStatus) {
        self.control.publish_status(&status).await;
    }

    async fn publish_pending(&mut self) {
        for status in std::mem::take(&mut self.pending_statuses) {
            self.metrics
                .rule_changes
                .get_or_create(&StatusLabel {
                    status: "quarantined",
                })
                .inc();
            self.publish(status).await;
        }
    }

    fn on_batch(&mut self, batch: &SourceBatch) -> Result<(), ServiceError> {
        let now = self.clock.now_ms();
        for p in &batch.poisoned {
            // The source has moved past it; keep its bytes for a look.
            self.dead_point(now, &batch.shard_id, &p.record, "poisoned", &p.reason);
            self.metrics
                .dead_letters
                .get_or_create(&ReasonLabel { reason: "poisoned" })
                .inc();
        }
        for rec in &batch.records {
            if rec.data.len() > self.max_point_bytes {
                let why = format!(
                    "{} bytes, over max_point_bytes ({})",
                    rec.data.len(),
                    self.max_point_bytes
                );
                self.metrics
                    .records
                    .get_or_create(&OutcomeLabel {
                        outcome: "oversized",
                    })
                    .inc();
                self.metrics
                    .dead_letters
                    .get_or_create(&ReasonLabel {
                        reason: "oversized",
                    })
                    .inc();
                self.dead_point(now, &batch.shard_id, rec, "oversized", &why);
                continue;
            }
            // The record's own arrival time bounds its event time, so re-reading the
            // stream refuses the same points; the wall clock only when it has none.
            let arrival = rec.arrival_ms.unwrap_or(now);
            let outcome = self
                .engine
                .on_record_arrived(&rec.data, now, Some(arrival))?;
            let label = match &outcome {
                RecordOutcome::Future { .. } => "future",
                RecordOutcome::Buffered => "point",
                RecordOutcome::Heartbeat => "heartbeat",
                RecordOutcome::Resend { .. } => "resend",
                RecordOutcome::Invalid(_) => "invalid",
                RecordOutcome::Late { applied: true, .. } => "late_applied",
                RecordOutcome::Late { applied: false, .. } => "late_dropped",
            };
            self.metrics
                .records
                .get_or_create(&OutcomeLabel { outcome: label })
                .inc();
            match outcome {
                RecordOutcome::Invalid(e) => {
                    self.dead_point(now, &batch.shard_id, rec, "invalid", &e.to_string());
                    self.metrics
                        .dead_letters
                        .get_or_create(&ReasonLabel { reason: "invalid" })
                        .inc();
                }
                RecordOutcome::Late {
                    sender,
                    timestamp,
                    watermark,
                    applied,
                } => {
                    self.metrics
                        .late
                        .get_or_create(&self.sender_labels.label(&sender))
                        .inc();
                    if !applied {
                        let why = format!(
                            "late: timestamp {timestamp} at or below the watermark {watermark} (sender {sender})"
                        );
                        self.dead_point(now, &batch.shard_id, rec, "late", &why);
                        self.metrics
                            .dead_letters
                            .get_or_create(&ReasonLabel { reason: "late" })
                            .inc();
                    }
                }
                RecordOutcome::Future {
                    sender,
                    timestamp,
                    bound,
                } => {
                    self.metrics
                        .future
                        .get_or_create(&self.sender_labels.label(&sender))
                        .inc();
                    let why = format!(
                        "future: timestamp {timestamp} beyond the record's arrival time {arrival} plus watermark.max_future_skew ({bound}) (sender {sender})"
                    );
                    self.dead_point(now, &batch.shard_id, rec, "future", &why);
                    self.metrics
                        .dead_letters
                        .get_or_create(&ReasonLabel { reason: "future" })
                        .inc();
                }
                RecordOutcome::Resend { sender } => {
                    self.metrics
                        .resends
                        .get_or_create(&self.sender_labels.label(&sender))
                        .inc();
                }
                RecordOutcome::Buffered | RecordOutcome::Heartbeat => {}
            }
        }
        self.dead_points.flush();
        Ok(())
    }

    /// Dead-letters one record within the file's budget; counts what it leaves out.
    fn dead_point(
        &mut self,
        now: u64,
        shard: &str,
        rec: &SourceRecord,
        reason: &'static str,
        error: &str,
    ) {
        if !self.dead_points.put(now, shard, rec, reason, error) {
            self.metrics
                .dead_letters_suppressed
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// Advance the watermark, hand transitions to the outbox, refresh metrics.
    fn tick(&mut self) -> Result<(), ServiceError> {
        let now = self.clock.now_ms();
        // Records what a dead-letter flood left out once its window is over.
        self.dead_points.roll(now);
        self.dead_points.flush();
        let out = self.engine.tick(now)?;
        for t in &out.transitions {
            tracing::debug!(transition = %t.transition_id, state = %t.state, "transition");
            self.outbox
                .push(PendingEvent::from_transition(t, &self.events, now));
        }
        self.metrics
            .transitions
            .inc_by(out.transitions.len() as u64);
        for d in &out.diagnostics {
            tracing::warn!(rule = %d.rule_id, group = %d.group, equipment = %d.equipment_id,
                line = ?d.line, kind = ?d.kind, message = %d.message, "rule diagnostic");
            if d.kind == DiagnosticKind::RuleQuarantined {
                self.pending_statuses.push(RuleStatus::quarantined(
                    &d.rule_id,
                    d.rule_version,
                    d.event_time,
                    &d.message,
                    self.instance.clone(),
                    now,
                ));
            }
        }
        self.metrics
            .diagnostics
            .inc_by(out.diagnostics.len() as u64);
        self.update_metrics(now, out.watermark);
        if !out.transitions.is_empty() {
            self.refresh_view();
        }
        self.view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .watermark = out.watermark;
        Ok(())
    }

    fn update_metrics(&mut self, now: u64, watermark: Option<u64>) {
        let m = &self.metrics;
        let seq = self.engine.sequencer();
        if let Some(w) = watermark {
            m.watermark_ms.set(w as i64);
            m.watermark_lag_seconds
                .set(now.saturating_sub(w) as f64 / 1000.0);
        }
        m.reorder_buffered.set(seq.buffered() as i64);
        if let Some(clocks) = seq.clocks() {
            m.equipment_clocks.set(clocks.len() as i64);
            if let Some((lo, _)) = clocks.range() {
                m.equipment_clock_lowest_ms.set(lo as i64);
            }
        }
        let tracker = seq.tracker();
        let (mut active, mut idle, mut one_off) = (0, 0, 0);
        let mut degraded = Vec::new();
        let mut stalled = 0usize;
        for s in tracker.senders() {
            match tracker.status(s, now) {
                SenderStatus::Active => active += 1,
                SenderStatus::Idle => idle += 1,
                SenderStatus::OneOff => one_off += 1,
                SenderStatus::Stalled => {
                    stalled += 1;
                    // Named up to a few; the count says the rest.
                    if stalled <= 10 {
                        degraded.push(format!(
                            "sender {} stalled: still sending, event time stuck at {} for {} s",
                            s.name(),
                            s.highest,
                            now.saturating_sub(s.advanced_at) / 1000
                        ));
                    }
                }
            }
        }
        if stalled > 10 {
            degraded.push(format!("{} more stalled senders", stalled - 10));
        }
        for (state, n) in [
            ("active", active),
            ("idle", idle),
            ("one_off", one_off),
            ("stalled", stalled),
        ] {
            m.senders.get_or_create(&StateLabel { state }).set(n as i64);
        }
        let pruned = tracker.pruned();
        m.senders_pruned
            .inc_by(pruned.saturating_sub(self.last_pruned));
        self.last_pruned = pruned;
        let quarantined = self.engine.quarantined();
        m.rules_quarantined.set(quarantined.len() as i64);
        for (rule, why) in quarantined {
            degraded.push(format!("rule {rule} {why}"));
        }
        if let Some(w) = watermark {
            let lag = now.saturating_sub(w);
            if lag > self.max_lag_ms {
                degraded.push(format!(
                    "watermark lag {} s above health.max_watermark_lag {} s",
                    lag / 1000,
                    self.max_lag_ms / 1000
                ));
            }
        }
        self.view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .degraded = degraded;
        m.rules_loaded.set(self.engine.rules().len() as i64);
        let s = self.engine.stats();
        let l = self.last_stats;
        m.group_evaluations
            .inc_by(s.group_evaluations.saturating_sub(l.group_evaluations));
        m.evaluation_errors
            .inc_by(s.group_errors.saturating_sub(l.group_errors));
        m.timers_fired
            .inc_by(s.timers_fired.saturating_sub(l.timers_fired));
        m.over_budget
            .inc_by(s.over_budget.saturating_sub(l.over_budget));
        self.last_stats = s;
        if let Some(at) = self.last_checkpoint {
            m.checkpoint_age_seconds
                .set(now.saturating_sub(at) as f64 / 1000.0);
        }
    }

    fn refresh_view(&self) {
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        v.rules = self
            .engine
            .rules()
            .iter()
            .map(|(id, r)| RuleView {
                rule_id: id.clone(),
                version: r.version,
            })
            .collect();
        v.set_states(self.engine.states());
    }

    /// Tick (so no output is pending), then write engine state, positions and the
    /// outbox in one atomic checkpoint. A failure is logged and retried next time:
    /// nothing is lost, the restart point just stays older.
    fn checkpoint(
        &mut self,
        store: &mut CheckpointStore,
        positions: &ShardPositions,
    ) -> Result<(), ServiceError> {
        self.tick()?;
        let started = Instant::now();
        let snapshot = self.engine.snapshot()?;
        let outbox = self.outbox.snapshot();
        let now = self.clock.now_ms();
        match store.save(&snapshot, positions, &outbox, now) {
            Ok(bytes) => {
                self.metrics
                    .checkpoint_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.checkpoint_bytes.set(bytes as i64);
                self.metrics.checkpoint_written_bytes.inc_by(bytes as u64);
                if let Some(disk) = store.size_on_disk() {
                    self.metrics
                        .checkpoint_disk_bytes
                        .set(i64::try_from(disk).unwrap_or(i64::MAX));
                }
                self.metrics.checkpoint_age_seconds.set(0.0);
                self.last_checkpoint = Some(now);
                self.view
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_checkpoint = Some(now);
            }
            Err(e) => {
                self.metrics.checkpoint_failures.inc();
                tracing::error!(error = %e, "checkpoint failed; will retry at the next interval");
            }
        }
        Ok(())
    }
}

/// The trusted author keys of `[mqtt.auth]`, read now: a missing or unreadable key is
/// a start-up error, not a rule rejected later.
fn load_trust(cfg: &control::AuthConfig) -> Result<Trust, ServiceError> {
    let mut keys = Vec::new();
    for path in &cfg.trusted_keys {
        let key = auth::read_public_key(path)
            .map_err(|e| ServiceError::Start(format!("mqtt.auth.trusted_keys: {e}")))?;
        tracing::info!(key = %key.to_hex(), file = %path.display(), "trusting rule author key");
        keys.push(key);
    }
    if cfg.accept_unsigned {
        tracing::warn!("mqtt.auth.accept_unsigned = true: UNSIGNED RULES ARE ACCEPTED; anyone who can publish on the broker can add, change and delete rules (local demos only)");
    }
    Ok(Trust::new(keys, cfg.accept_unsigned))
}
