//! The service's decisions, without I/O: raw records, rule messages and clock ticks
//! in; transitions, rule statuses and dead letters out. The run loop
//! (`service::run`) owns the sockets, files and timers around it; this type is
//! driven the same way in tests, with an injected clock.

use crate::eval::{Diagnostic, EvaluatorSnapshot, Partition};
use crate::lifecycle::{ChangeOutcome, RuleChange};
use crate::rule::{Limits, Rule, Sandbox};
use crate::sequencer::{Admission, Sequencer, SequencerConfig, SequencerSnapshot, Step};
use crate::transition::Transition;
use crate::workers::{PoolError, WorkerPool};
use linewatch_schemas::{DataPoint, DataPointError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub sequencer: SequencerConfig,
    pub workers: usize,
    pub limits: Limits,
    /// The rules this instance owns (`--partition I/N`).
    pub partition: Partition,
}

/// A rule as it arrived on the control topic: what a checkpoint keeps to rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedRule {
    pub version: u64,
    pub script: String,
}

/// The current state of one rule for one equipment, for `GET /states`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    pub state: String,
    /// Event time of the transition into it (unknown after a restore from an old checkpoint).
    pub since: Option<u64>,
    pub sequence: u64,
}

/// Everything of the engine that a checkpoint keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSnapshot {
    pub rules: BTreeMap<String, LoadedRule>,
    pub evaluator: EvaluatorSnapshot,
    pub sequencer: SequencerSnapshot,
    /// `ruleId` → `equipmentId` → state.
    pub states: BTreeMap<String, BTreeMap<String, StateView>>,
}

/// What became of one raw record.
#[derive(Debug)]
pub enum RecordOutcome {
    /// Waiting for the watermark.
    Buffered,
    Heartbeat,
    /// Not a data point: dead-letter it.
    Invalid(DataPointError),
    /// At or below the watermark on arrival. `applied`: evaluated at once under the
    /// `apply` policy; otherwise dead-letter it.
    Late {
        sender: String,
        timestamp: u64,
        watermark: u64,
        applied: bool,
    },
    /// The agent sent this point again (its sender's sequence number was seen in
    /// its lane): dropped, to be counted for `sender`.
    Resend {
        sender: String,
    },
    /// Event time beyond the record's arrival clock plus `maxFutureSkew`: refused
    /// (dead-letter it), counted for its sender, the watermark untouched.
    Future {
        sender: String,
        timestamp: u64,
        bound: u64,
    },
}

/// The highest rule version: 2^53 − 1, so every JSON reader (JavaScript numbers are
/// doubles) keeps it exact, and a next version always exists below `u64::MAX`.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// What applying a message from the control topic did; published on the status topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleUpdate {
    /// The rule is another instance's (`--partition`): nothing to do or say.
    NotOwned,
    /// The same version again (a retained message re-delivered after a reconnect or
    /// a restart): nothing changed and nothing is published.
    Unchanged {
        version: u64,
    },
    Applied(ChangeOutcome),
    /// A version not higher than the loaded one.
    Stale(ChangeOutcome),
    NotFound(ChangeOutcome),
    Rejected {
        version: Option<u64>,
        error: String,
    },
}

/// Transitions and diagnostics produced since the last tick.
#[derive(Debug, Default)]
pub struct TickOutput {
    pub watermark: Option<u64>,
    pub transitions: Vec<Transition>,
    pub diagnostics: Vec<Diagnostic>,
}

pub struct Engine {
    cfg: EngineConfig,
    seq: Sequencer,
    pool: WorkerPool,
    compiler: RuleCompiler,
    /// Load-time memory estimate of each loaded rule (the all-rules budget).
    footprints: BTreeMap<String, u64>,
    rules: BTreeMap<String, LoadedRule>,
    states: BTreeMap<String, BTreeMap<String, StateView>>,
    /// Rules quarantined for their time budget → why (from the evaluators' diagnostics
    /// and the checkpoint).
    quarantined: BTreeMap<String, String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules.len())
            .field("buffered", &self.seq.buffered())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        Ok(Engine {
            seq: Sequencer::new(cfg.sequencer),
            pool: WorkerPool::scoped(cfg.workers, cfg.limits.clone(), cfg.sequencer.scope)?,
            compiler: RuleCompiler {
                sandbox: Arc::new(Sandbox::new(cfg.limits.clone())),
            },
            footprints: BTreeMap::new(),
            rules: BTreeMap::new(),
            states: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            cfg,
        })
    }

    /// Rebuild from a checkpoint: recompile its rules, then put back their state.
    /// Returns the engine and the ids of rules that could not be rebuilt (with why).
    pub fn restore(
        cfg: EngineConfig,
        snap: EngineSnapshot,
    ) -> Result<(Engine, Vec<(String, String)>), EngineError> {
        let mut engine = Engine::new(cfg)?;
        let mut problems = Vec::new();
        let at = snap.sequencer.now_event;
        for (id, loaded) in snap.rules {
            if !engine.cfg.partition.owns(&id) {
                // Checkpointed under another partition count: not ours any more.
                continue;
            }
            match engine.compiler.compile(&id, loaded.version, &loaded.script) {
                Ok(rule) => {
                    engine.footprints.insert(id.clone(), rule.footprint().bytes);
                    engine.pool.apply(RuleChange::Upsert(Arc::new(rule)), at)?;
                    engine.rules.insert(id, loaded);
                }
                Err(e) => problems.push((id, e)),
            }
        }
        let skipped = engine.pool.restore(&snap.evaluator)?;
        for r in &snap.evaluator.rules {
            let current = engine.rules.get(&r.rule_id).map(|l| l.version);
            if let (Some(why), Some(v)) = (&r.quarantined, current) {
                if v == r.version {
                    engine.quarantined.insert(r.rule_id.clone(), why.clone());
                }
            }
        }
        for id in skipped {
            if engine.rules.contains_key(&id) {
                problems.push((id, "state not restored: version changed".into()));
            }
        }
        engine.seq = Sequencer::restore(engine.cfg.sequencer, snap.sequencer);
        engine.states = snap
            .states
            .into_iter()
            .filter(|(id, _)| engine.rules.contains_key(id))
            .collect();
        Ok((engine, problems))
    }

    /// The engine's state for a checkpoint. Call [`Engine::tick`] first so that no
    /// output is pending: the checkpoint must not contain effects whose transitions
    /// were not handed on yet.
    pub fn snapshot(&mut self) -> Result<EngineSnapshot, EngineError> {
        Ok(EngineSnapshot {
            rules: self.rules.clone(),
            evaluator: self.pool.snapshot()?,
            sequencer: self.seq.snapshot(),
            states: self.states.clone(),
        })
    }

    pub fn partition(&self) -> Partition {
        self.cfg.partition
    }

    pub fn rules(&self) -> &BTreeMap<String, LoadedRule> {
        &self.rules
    }

    pub fn states(&self) -> &BTreeMap<String, BTreeMap<String, StateView>> {
        &self.states
    }

    /// Rules quarantined for exceeding their time budget, with why.
    pub fn quarantined(&self) -> &BTreeMap<String, String> {
        &self.quarantined
    }

    pub fn sequencer(&self) -> &Sequencer {
        &self.seq
    }

    /// How far event time has come: the watermark, or in the `equipment` scope the
    /// most advanced equipment clock (a clock held by an offline gateway is its own
    /// affair; [`crate::clocks::EquipmentClocks::range`] has the lowest).
    pub fn progress(&self) -> Option<u64> {
        match self.seq.clocks() {
            Some(c) => c.range().map(|(_, hi)| hi),
            None => self.seq.watermark(),
        }
    }

    pub fn stats(&self) -> crate::eval::EvalStats {
        self.pool.stats()
    }

    /// One raw record from the stream, arrived at wall-clock `now` (ms); no future
    /// bound (see [`Engine::on_record_arrived`]).
    pub fn on_record(&mut self, data: &[u8], now: u64) -> Result<RecordOutcome, EngineError> {
        self.on_record_arrived(data, now, None)
    }

    /// One raw record, read at wall-clock `now`, that arrived in the stream at
    /// `arrival` (the record's ApproximateArrivalTimestamp; the caller falls back to
    /// `now`). The future bound is measured from `arrival`, so reading the same
    /// records again refuses the same points.
    pub fn on_record_arrived(
        &mut self,
        data: &[u8],
        now: u64,
        arrival: Option<u64>,
    ) -> Result<RecordOutcome, EngineError> {
        let point = match DataPoint::from_json(data) {
            Ok(p) => p,
            Err(e) => return Ok(RecordOutcome::Invalid(e)),
        };
        // Named like `SenderState::name`, so logs and metrics agree.
        let sender = match &point.meta.gateway_id {
            Some(g) => format!("{g}/{}", point.meta.source_id),
            None => point.meta.source_id.clone(),
        };
        let timestamp = point.timestamp;
        Ok(match self.seq.push_arrived(point, now, arrival) {
            Admission::Buffered => RecordOutcome::Buffered,
            Admission::Future { bound, .. } => RecordOutcome::Future {
                sender,
                timestamp,
                bound,
            },
            Admission::Heartbeat => RecordOutcome::Heartbeat,
            Admission::Resend { .. } => RecordOutcome::Resend { sender },
            Admission::DeadLetter { watermark, .. } => RecordOutcome::Late {
                sender,
                timestamp,
                watermark,
                applied: false,
            },
            Admission::Apply { point, at } => {
                self.pool.on_late_point(point.into(), at)?;
                RecordOutcome::Late {
                    sender,
                    timestamp,
                    watermark: at,
                    applied: true,
                }
            }
        })
    }

    /// A message from the control topic for `rule_id`: `Some((version, script))`
    /// adds or updates the rule, `None` deletes it. Applied at the event time the
    /// rules have reached.
    pub fn on_rule(
        &mut self,
        rule_id: &str,
        message: Option<(u64, &str)>,
    ) -> Result<RuleUpdate, EngineError> {
        if !self.cfg.partition.owns(rule_id) {
            return Ok(RuleUpdate::NotOwned);
        }
        let at = self.seq.event_now();
        let Some((version, script)) = message else {
            let outcome = self.pool.apply(
                RuleChange::Delete {
                    id: rule_id.to_owned(),
                },
                at,
            )?;
            self.rules.remove(rule_id);
            self.footprints.remove(rule_id);
            self.states.remove(rule_id);
            self.quarantined.remove(rule_id);
            return Ok(match outcome {
                ChangeOutcome::NotFound { .. } => RuleUpdate::NotFound(outcome),
                _ => RuleUpdate::Applied(outcome),
            });
        };
        let compiled = self.compiler.prepare(rule_id, version, script, Some(self));
        self.apply_compiled(compiled)
    }

    /// The compiler of this engine's rules, to compile off the thread that drives the
    /// engine ([`RuleCompiler::prepare`]); [`Engine::apply_compiled`] applies the result.
    pub fn compiler(&self) -> RuleCompiler {
        self.compiler.clone()
    }

    /// Apply a rule compiled by [`RuleCompiler::prepare`] (on any thread). Cheap unless
    /// the compiler skipped a message it believed unchanged and it is not: then it
    /// compiles here.
    pub fn apply_compiled(&mut self, c: CompiledRule) -> Result<RuleUpdate, EngineError> {
        let CompiledRule {
            rule_id,
            version,
            script,
            result,
        } = c;
        let rule_id = rule_id.as_str();
        if !self.cfg.partition.owns(rule_id) {
            return Ok(RuleUpdate::NotOwned);
        }
        if let Some(loaded) = self.rules.get(rule_id) {
            if loaded.version == version && loaded.script == script {
                return Ok(RuleUpdate::Unchanged { version });
            }
        }
        let result = match result {
            Some(r) => r,
            None => self.compiler.compile(rule_id, version, &script),
        };
        let rule = match result {
            Ok(rule) => rule,
            Err(error) => {
                return Ok(RuleUpdate::Rejected {
                    version: Some(version),
                    error,
                })
            }
        };
        let bytes = rule.footprint().bytes;
        let others: u64 = self
            .footprints
            .iter()
            .filter(|(id, _)| id.as_str() != rule_id)
            .map(|(_, b)| *b)
            .sum();
        let max = self.cfg.limits.max_total_rule_bytes;
        if others.saturating_add(bytes) > max
            && self.rules.get(rule_id).is_none_or(|l| l.version < version)
        {
            return Ok(RuleUpdate::Rejected {
                version: Some(version),
                error: format!(
                    "sandbox limit: all rules together would need about {} bytes (this one {bytes}), the limit is {max}",
                    others.saturating_add(bytes)
                ),
            });
        }
        let script = script.as_str();
        let at = self.seq.event_now();
        let equipment: BTreeSet<String> = rule.equipment().iter().cloned().collect();
        let outcome = self.pool.apply(RuleChange::Upsert(Arc::new(rule)), at)?;
        if !outcome.applied() {
            return Ok(RuleUpdate::Stale(outcome));
        }
        self.rules.insert(
            rule_id.to_owned(),
            LoadedRule {
                version,
                script: script.to_owned(),
            },
        );
        // A new version starts out of quarantine.
        self.quarantined.remove(rule_id);
        self.footprints.insert(rule_id.to_owned(), bytes);
        if let Some(states) = self.states.get_mut(rule_id) {
            // Equipment dropped by an update have no state any more.
            states.retain(|e, _| equipment.contains(e));
        }
        Ok(RuleUpdate::Applied(outcome))
    }

    /// After the retained rules arrived at start-up: rules of the checkpoint whose
    /// retained message is gone were deleted while this instance was down.
    pub fn forget_missing(
        &mut self,
        present: &BTreeSet<String>,
    ) -> Result<Vec<ChangeOutcome>, EngineError> {
        let gone: Vec<String> = self
            .rules
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        let mut outcomes = Vec::new();
        for id in gone {
            if let RuleUpdate::Applied(o) = self.on_rule(&id, None)? {
                outcomes.push(o);
            }
        }
        Ok(outcomes)
    }

    /// Recompute the watermark at wall-clock `now`, evaluate what it released, fire
    /// due holds, and collect the output.
    pub fn tick(&mut self, now: u64) -> Result<TickOutput, EngineError> {
        if self.seq.step(now) {
            release(&mut self.seq, &mut self.pool)?;
        }
        let out = self.pool.flush()?;
        for d in &out.diagnostics {
            if d.kind == crate::eval::DiagnosticKind::RuleQuarantined {
                self.quarantined
                    .insert(d.rule_id.clone(), d.message.clone());
            }
        }
        for t in &out.transitions {
            self.states.entry(t.rule_id.clone()).or_default().insert(
                t.equipment_id.clone(),
                StateView {
                    state: t.state.clone(),
                    since: Some(t.event_time),
                    sequence: t.sequence,
                },
            );
        }
        Ok(TickOutput {
            watermark: self.progress(),
            transitions: out.transitions,
            diagnostics: out.diagnostics,
        })
    }

    /// After [`Engine::restore`], at arrival clock `now`: undo a watermark poisoned
    /// by a future point in a checkpoint written before the future bound (or under a
    /// wider one). See [`Sequencer::repair_future`].
    pub fn repair_future(&mut self, now: u64) -> (crate::watermark::FutureRepair, usize) {
        self.seq.repair_future(now)
    }
}

/// Evaluate what the sequencer's clocks released, in order, and bring the rules'
/// holds to each clock.
pub(crate) fn release(seq: &mut Sequencer, pool: &mut WorkerPool) -> Result<(), PoolError> {
    while let Some(step) = seq.next_step() {
        match step {
            Step::Point(p) => {
                let at = p.timestamp;
                pool.on_point(p, at)?;
            }
            Step::Reached {
                equipment: None,
                to,
            } => pool.advance(to)?,
            Step::Reached {
                equipment: Some(e),
                to,
            } => pool.advance_equipment(&e, to)?,
        }
    }
    Ok(())
}

/// A rule message compiled by [`RuleCompiler::prepare`], ready for [`Engine::apply_compiled`].
#[derive(Debug)]
pub struct CompiledRule {
    pub rule_id: String,
    pub version: u64,
    pub script: String,
    /// `None`: not compiled, because it looked like the loaded version (a retained
    /// message delivered again); the engine compiles it if it is not.
    result: Option<Result<Rule, String>>,
}

impl CompiledRule {
    /// Compiled here, without an error (`false` also when the compile was skipped).
    pub fn compiled_ok(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }
}

/// Compiles rule messages for an [`Engine`] on any thread (rule compilation can take
/// milliseconds; the thread driving the engine must not wait for it). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuleCompiler {
    sandbox: Arc<Sandbox>,
}

impl RuleCompiler {
    /// Compile `script` as `rule_id` at `version`. With `loaded` (what the engine
    /// holds, when the caller knows), a message identical to the loaded rule is not
    /// compiled again.
    pub fn prepare(
        &self,
        rule_id: &str,
        version: u64,
        script: &str,
        loaded: Option<&Engine>,
    ) -> CompiledRule {
        let same = loaded
            .and_then(|e| e.rules.get(rule_id))
            .is_some_and(|l| l.version == version && l.script == script);
        self.prepare_unless(rule_id, version, script, same)
    }

    /// Like [`RuleCompiler::prepare`], when the caller tracks what is loaded itself:
    /// `same_as_loaded` skips the compile.
    pub fn prepare_unless(
        &self,
        rule_id: &str,
        version: u64,
        script: &str,
        same_as_loaded: bool,
    ) -> CompiledRule {
        CompiledRule {
            rule_id: rule_id.to_owned(),
            version,
            script: script.to_owned(),
            result: (!same_as_loaded).then(|| self.compile(rule_id, version, script)),
        }
    }

    fn compile(&self, rule_id: &str, version: u64, script: &str) -> Result<Rule, String> {
        if version == 0 {
            return Err("version must be at least 1".into());
        }
        if version > MAX_VERSION {
            return Err(format!(
                "version {version} is above the maximum {MAX_VERSION} (2^53 - 1, exact in every JSON reader)"
            ));
        }
        let rule = Rule::compile(&self.sandbox, script, &format!("rule topic {rule_id}"))
            .map_err(|e| e.to_string())?;
        if rule.id() != rule_id {
            return Err(format!(
                "the script's id `{}` is not the topic's rule id `{rule_id}`",
                rule.id()
            ));
        }
        Ok(rule.with_version(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::WatermarkScope;
    use crate::watermark::WatermarkConfig;
    use proptest::prelude::*;
    use std::time::Duration;

    const HOT: &str = r#"#{ id: "hot", equipment: ["e1", "e2"],
        groups: [ #{ name: "t", tags: ["temp"], hold: 3000,
                     state: |v| if v.temp > 50 { "WARNING" } else { "OK" } } ] }"#;

    fn script(id: &str, limit: i64) -> String {
        format!(
            r#"#{{ id: "{id}", equipment: ["e1", "e2"],
               groups: [ #{{ name: "t", tags: ["temp"],
                            state: |v| if v.temp > {limit} {{ "WARNING" }} else {{ "OK" }} }} ] }}"#
        )
    }

    fn cfg(partition: Partition, workers: usize) -> EngineConfig {
        cfg_in(partition, workers, WatermarkScope::Global)
    }

    fn cfg_in(partition: Partition, workers: usize, scope: WatermarkScope) -> EngineConfig {
        EngineConfig {
            sequencer: SequencerConfig {
                watermark: WatermarkConfig::with(
                    Duration::from_millis(500),
                    Duration::from_secs(3600),
                ),
                scope,
                ..SequencerConfig::default()
            },
            workers,
            limits: Limits::default(),
            partition,
        }
    }

    fn record(equipment: &str, ts: u64, temp: i64, seq: u64) -> Vec<u8> {
        serde_json::json!({"version":1,"timestamp":ts,"equipmentId":equipment,"tag":"temp",
            "value":temp,"quality":"Ok",
            "meta":{"sequenceNumber":seq,"flags":[],"createdAt":ts,"sourceId":"plc","gatewayId":"gw"}})
        .to_string()
        .into_bytes()
    }

    /// A stream of temperatures for two equipment, one point per 400 ms.
    fn stream(values: &[i64]) -> Vec<Vec<u8>> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let e = if i % 2 == 0 { "e1" } else { "e2" };
                record(e, 1_000 + 400 * i as u64, *v, i as u64)
            })
            .collect()
    }

    fn run(engine: &mut Engine, records: &[Vec<u8>], out: &mut Vec<String>) {
        for (i, r) in records.iter().enumerate() {
            engine.on_record(r, 0).unwrap();
            if i % 3 == 0 {
                let t = engine.tick(0).unwrap();
                out.extend(t.transitions.into_iter().map(|t| t.transition_id));
            }
        }
        let t = engine.tick(0).unwrap();
        out.extend(t.transitions.into_iter().map(|t| t.transition_id));
    }

    fn loaded(partition: Partition, workers: usize, rules: &[(&str, String)]) -> Engine {
        loaded_in(cfg(partition, workers), rules)
    }

    fn loaded_in(cfg: EngineConfig, rules: &[(&str, String)]) -> Engine {
        let mut e = Engine::new(cfg).unwrap();
        for (id, s) in rules {
            let u = e.on_rule(id, Some((1, s))).unwrap();
            assert!(
                matches!(u, RuleUpdate::Applied(_) | RuleUpdate::NotOwned),
                "{u:?}"
            );
        }
        e
    }

    #[test]
    fn points_become_transitions_and_states() {
        let mut e = loaded(Partition::ALL, 1, &[("hot", HOT.to_owned())]);
        let mut out = Vec::new();
        let mut values = vec![10, 10];
        values.extend([60; 12]);
        values.extend([10, 10]);
        run(&mut e, &stream(&values), &mut out);
        assert_eq!(
            out,
            [
                "hot/e1/1000/1",
                "hot/e2/1400/1",
                "hot/e1/4800/2",
                "hot/e2/5200/2"
            ],
            "first state at once, WARNING after the 3 s hold"
        );
        assert_eq!(e.states()["hot"]["e1"].state, "WARNING");
        assert_eq!(e.states()["hot"]["e2"].sequence, 2);
    }

    #[test]
    fn invalid_records_and_late_points_are_reported() {
        let mut e = loaded(Partition::ALL, 1, &[("hot", HOT.to_owned())]);
        assert!(matches!(
            e.on_record(b"{not json", 0).unwrap(),
            RecordOutcome::Invalid(_)
        ));
        e.on_record(&record("e1", 10_000, 1, 1), 0).unwrap();
        e.tick(0).unwrap();
        match e.on_record(&record("e1", 2_000, 1, 2), 0).unwrap() {
            RecordOutcome::Late {
                sender,
                watermark,
                applied,
                ..
            } => {
                assert_eq!(sender, "gw/plc");
                assert_eq!(watermark, 9_500);
                assert!(!applied);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rule_messages_follow_the_lifecycle() {
        let mut e = loaded(Partition::ALL, 1, &[]);
        let s1 = script("r", 50);
        assert!(matches!(
            e.on_rule("r", Some((1, &s1))).unwrap(),
            RuleUpdate::Applied(ChangeOutcome::Added { version: 1, .. })
        ));
        // A re-delivery of the same message changes nothing and says nothing.
        assert_eq!(
            e.on_rule("r", Some((1, &s1))).unwrap(),
            RuleUpdate::Unchanged { version: 1 }
        );
        assert!(matches!(
            e.on_rule("r", Some((1, &script("r", 60)))).unwrap(),
            RuleUpdate::Stale(_)
        ));
        assert!(matches!(
            e.on_rule("r", Some((2, &script("r", 60)))).unwrap(),
            RuleUpdate::Applied(ChangeOutcome::Updated { from: 1, to: 2, .. })
        ));
        match e.on_rule("x", Some((1, &s1))).unwrap() {
            RuleUpdate::Rejected { error, .. } => assert!(error.contains("`r`"), "{error}"),
            other => panic!("{other:?}"),
        }
        match e.on_rule("b", Some((1, "#{ id: \"b\", "))).unwrap() {
            RuleUpdate::Rejected { error, .. } => assert!(error.contains("b"), "{error}"),
            other => panic!("{other:?}"),
        }
        let mut out = Vec::new();
        run(&mut e, &stream(&[70, 70, 70]), &mut out);
        assert!(e.states().contains_key("r"));
        assert!(matches!(
            e.on_rule("r", None).unwrap(),
            RuleUpdate::Applied(ChangeOutcome::Deleted { version: 2, .. })
        ));
        assert!(!e.states().contains_key("r") && e.rules().is_empty());
        assert!(matches!(
            e.on_rule("r", None).unwrap(),
            RuleUpdate::NotFound(_)
        ));
    }

    #[test]
    fn versions_are_capped_at_2_pow_53_minus_1() {
        let mut e = loaded(Partition::ALL, 1, &[]);
        let s1 = script("r", 50);
        match e.on_rule("r", Some((u64::MAX, &s1))).unwrap() {
            RuleUpdate::Rejected { error, .. } => {
                assert!(error.contains("9007199254740991"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            e.on_rule("r", Some((MAX_VERSION, &s1))).unwrap(),
            RuleUpdate::Applied(_)
        ));
        // In the script too.
        let over = s1.replacen("id: \"r\",", "id: \"r\", version: 9007199254740992,", 1);
        assert!(over.contains("9007199254740992"));
        assert!(matches!(
            e.on_rule("r", Some((1, &over))).unwrap(),
            RuleUpdate::Rejected { .. }
        ));
    }

    #[test]
    fn acceptance_depends_on_the_text_only() {
        // A top level that needs time: with a zero evaluation budget (the most loaded
        // machine) it is accepted exactly as with a generous one.
        let slow_top = format!(
            "let n = 0; while n < 5000 {{ n += 1; }}\n{}",
            script("slow-top", 50)
        );
        for budget in [Duration::ZERO, Duration::from_secs(60)] {
            let mut c = cfg(Partition::ALL, 1);
            c.limits.eval_deadline = budget;
            let mut e = Engine::new(c).unwrap();
            let u = e.on_rule("slow-top", Some((1, &slow_top))).unwrap();
            assert!(
                matches!(u, RuleUpdate::Applied(_)),
                "budget {budget:?}: {u:?}"
            );
            // And a checkpoint restores it under any budget.
            let snap = e.snapshot().unwrap();
            let mut c = cfg(Partition::ALL, 1);
            c.limits.eval_deadline = Duration::ZERO;
            let (r, problems) = Engine::restore(c, snap).unwrap();
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(r.rules().len(), 1);
        }
        // Over the operation limit it is rejected, always.
        let endless = format!("loop {{ }}\n{}", script("endless", 50));
        let mut e = loaded(Partition::ALL, 1, &[]);
        assert!(matches!(
            e.on_rule("endless", Some((1, &endless))).unwrap(),
            RuleUpdate::Rejected { .. }
        ));
    }

    #[test]
    fn a_future_record_is_refused_by_its_arrival_time() {
        let mut e = loaded(Partition::ALL, 1, &[("hot", HOT.to_owned())]);
        e.on_record_arrived(&record("e1", 10_000, 1, 1), 0, Some(10_000))
            .unwrap();
        match e
            .on_record_arrived(&record("e1", 32_503_680_000_000, 99, 2), 0, Some(10_000))
            .unwrap()
        {
            RecordOutcome::Future { sender, bound, .. } => {
                assert_eq!(sender, "gw/plc");
                assert_eq!(bound, 310_000);
            }
            other => panic!("{other:?}"),
        }
        e.tick(0).unwrap();
        assert_eq!(e.sequencer().watermark(), Some(9_500));
        assert!(matches!(
            e.on_record_arrived(&record("e1", 11_000, 1, 3), 0, Some(11_000))
                .unwrap(),
            RecordOutcome::Buffered
        ));
    }

    #[test]
    fn rules_missing_after_a_restart_are_forgotten() {
        let mut e = loaded(
            Partition::ALL,
            1,
            &[("a", script("a", 1)), ("b", script("b", 2))],
        );
        let present = BTreeSet::from(["a".to_owned()]);
        let gone = e.forget_missing(&present).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(e.rules().keys().collect::<Vec<_>>(), ["a"]);
    }

    fn rule_set() -> Vec<(String, String)> {
        (0..6)
            .map(|i| {
                (
                    format!("rule-{i}"),
                    script(&format!("rule-{i}"), 20 + 10 * i),
                )
            })
            .collect()
    }

    fn as_refs(rules: &[(String, String)]) -> Vec<(&str, String)> {
        rules.iter().map(|(a, b)| (a.as_str(), b.clone())).collect()
    }

    #[test]
    fn partitions_together_emit_what_one_instance_emits() {
        let rules = rule_set();
        let input = stream(&[10, 30, 50, 70, 90, 10, 60, 40, 80, 20]);
        let mut whole = Vec::new();
        run(
            &mut loaded(Partition::ALL, 1, &as_refs(&rules)),
            &input,
            &mut whole,
        );
        let mut parts = Vec::new();
        for index in 0..2 {
            let p = Partition { index, count: 2 };
            let mut e = loaded(p, 1, &as_refs(&rules));
            assert!(!e.rules().is_empty(), "both partitions own rules");
            run(&mut e, &input, &mut parts);
        }
        whole.sort();
        parts.sort();
        assert_eq!(whole, parts);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A checkpoint at any point, restored into a new engine (any worker count,
        /// either watermark scope, the checkpoint's or the other), continues exactly
        /// as if nothing had happened. (One sender: both scopes decide the same.)
        #[test]
        fn restore_continues_exactly(
            values in proptest::collection::vec(0i64..100, 4..40),
            cut in any::<proptest::sample::Index>(),
            workers in 1usize..4,
            before_per_equipment in any::<bool>(),
            after_per_equipment in any::<bool>(),
        ) {
            let scope = |e: bool| if e { WatermarkScope::Equipment } else { WatermarkScope::Global };
            let rules = rule_set();
            let mut hot = rules.clone();
            hot.push(("hot".into(), HOT.into()));
            let input = stream(&values);
            let mut straight = Vec::new();
            run(&mut loaded(Partition::ALL, 1, &as_refs(&hot)), &input, &mut straight);

            let cut = cut.index(input.len());
            let before = cfg_in(Partition::ALL, workers, scope(before_per_equipment));
            let mut first = loaded_in(before, &as_refs(&hot));
            let mut resumed = Vec::new();
            run(&mut first, &input[..cut], &mut resumed);
            let snap = first.snapshot().unwrap();
            drop(first);
            let json = serde_json::to_vec(&snap).unwrap();
            let snap: EngineSnapshot = serde_json::from_slice(&json).unwrap();
            let after = cfg_in(Partition::ALL, workers, scope(after_per_equipment));
            let (mut second, problems) = Engine::restore(after, snap).unwrap();
            prop_assert!(problems.is_empty(), "{:?}", problems);
            run(&mut second, &input[cut..], &mut resumed);
            prop_assert_eq!(straight, resumed);
        }
    }

    #[test]
    fn the_all_rules_memory_budget_rejects_with_the_figure_and_keeps_the_rest() {
        let mut c = cfg(Partition::ALL, 1);
        let one = Rule::compile(&Sandbox::new(Limits::default()), &script("a", 1), "x")
            .unwrap()
            .footprint()
            .bytes;
        c.limits.max_total_rule_bytes = one * 2 + one / 2;
        let mut e = Engine::new(c).unwrap();
        for id in ["a", "b"] {
            let s = script(id, 1);
            assert!(matches!(
                e.on_rule(id, Some((1, &s))).unwrap(),
                RuleUpdate::Applied(_)
            ));
        }
        let s = script("c", 1);
        match e.on_rule("c", Some((1, &s))).unwrap() {
            RuleUpdate::Rejected { error, .. } => {
                assert!(error.contains("all rules together"), "{error}");
                assert!(
                    error.contains(&format!("the limit is {}", one * 2 + one / 2)),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A new version of a loaded rule replaces its share, and a delete frees it.
        let s = script("b", 2);
        assert!(matches!(
            e.on_rule("b", Some((2, &s))).unwrap(),
            RuleUpdate::Applied(_)
        ));
        e.on_rule("a", None).unwrap();
        let s = script("c", 1);
        assert!(matches!(
            e.on_rule("c", Some((1, &s))).unwrap(),
            RuleUpdate::Applied(_)
        ));
        assert_eq!(e.rules().keys().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn a_rule_compiled_elsewhere_applies_like_one_compiled_here() {
        let mut e = Engine::new(cfg(Partition::ALL, 1)).unwrap();
        let compiler = e.compiler();
        let s = script("a", 1);
        let c = std::thread::spawn(move || compiler.prepare_unless("a", 3, &s, false))
            .join()
            .unwrap();
        assert!(c.compiled_ok());
        assert!(matches!(
            e.apply_compiled(c).unwrap(),
            RuleUpdate::Applied(_)
        ));
        // Skipped as "same as loaded": unchanged, nothing compiled.
        let same = e.compiler().prepare_unless("a", 3, &script("a", 1), true);
        assert_eq!(
            e.apply_compiled(same).unwrap(),
            RuleUpdate::Unchanged { version: 3 }
        );
        // Skipped wrongly (it is not the loaded one): the engine compiles it itself.
        let newer = e.compiler().prepare_unless("a", 4, &script("a", 9), true);
        assert!(matches!(
            e.apply_compiled(newer).unwrap(),
            RuleUpdate::Applied(_)
        ));
        assert_eq!(e.rules()["a"].version, 4);
    }
}
