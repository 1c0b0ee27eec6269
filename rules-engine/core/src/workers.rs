//! N evaluation workers, keyed by rule: a rule belongs to worker
//! `fnv1a(ruleId) % N`; a point goes only to the workers owning a rule that reads
//! its (equipment, tag); every rule change and every watermark step goes to every
//! worker (the broadcast pattern). With one worker everything runs inline on the
//! caller's thread.
//!
//! Output is collected at [`WorkerPool::flush`] and sorted canonically, so the
//! transitions do not depend on N as long as flushes happen at the same steps.

use crate::eval::{owner_of, EvalStats, Evaluator, EvaluatorSnapshot, Output, Partition};
use crate::lifecycle::{decide, ChangeOutcome, Decision, RuleChange};
use crate::pairmap::PairMap;
use crate::reading::Reading;
use crate::rule::{Limits, Rule};
use crate::sequencer::WatermarkScope;
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Upper bound on workers: routing keeps a bit per worker.
pub const MAX_WORKERS: usize = 64;
/// Messages per channel send; amortises the hand-off.
const BATCH: usize = 256;
/// Batches in flight per worker before the router waits (back-pressure).
const QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
    #[error("cannot start worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("workers must be between 1 and {MAX_WORKERS}, not {0}")]
    BadCount(usize),
}

enum Msg {
    /// A point at event time `at`; `late`: one that arrived after its clock passed it.
    Point(Arc<Reading>, u64, bool),
    Advance(u64),
    AdvanceEquipment(Arc<str>, u64),
    Change(RuleChange, u64),
    Barrier,
    /// Like a barrier, and the reply carries the worker's state.
    Snapshot,
    Restore(Arc<EvaluatorSnapshot>),
}

struct Reply {
    output: Output,
    stats: EvalStats,
    snapshot: Option<EvaluatorSnapshot>,
}

struct Worker {
    tx: Option<SyncSender<Vec<Msg>>>,
    rx: Receiver<Reply>,
    batch: Vec<Msg>,
    thread: Option<JoinHandle<()>>,
}

struct Threads {
    workers: Vec<Worker>,
    /// Every loaded rule, for versions and routing.
    directory: HashMap<String, Arc<Rule>>,
    /// (equipment, tag) → the workers with a reader.
    route: PairMap<RouteEntry>,
    stats: Vec<EvalStats>,
}

#[derive(Default)]
struct RouteEntry {
    mask: u64,
    /// Readers per worker, to know when a bit can be cleared.
    counts: Vec<(u8, u32)>,
}

enum Kind {
    Inline(Box<Evaluator>),
    Threads(Threads),
}

pub struct WorkerPool {
    kind: Kind,
    out: Output,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    pub fn new(workers: usize, limits: Limits) -> Result<Self, PoolError> {
        Self::scoped(workers, limits, WatermarkScope::Global)
    }

    /// Evaluators for the given watermark scope (see [`Evaluator::per_equipment`]).
    pub fn scoped(
        workers: usize,
        limits: Limits,
        scope: WatermarkScope,
    ) -> Result<Self, PoolError> {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(PoolError::BadCount(workers));
        }
        let scoped = move |e: Evaluator| match scope {
            WatermarkScope::Global => e,
            WatermarkScope::Equipment => e.per_equipment(),
        };
        if workers == 1 {
            return Ok(WorkerPool {
                kind: Kind::Inline(Box::new(scoped(Evaluator::new(limits)))),
                out: Output::default(),
            });
        }
        let mut ws = Vec::with_capacity(workers);
        for index in 0..workers {
            let (tx, rx_in) = sync_channel::<Vec<Msg>>(QUEUE);
            let (tx_out, rx) = sync_channel::<Reply>(1);
            let limits = limits.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rules-worker-{index}"))
                .spawn(move || {
                    let eval = scoped(Evaluator::with_partition(
                        limits,
                        Partition {
                            index,
                            count: workers,
                        },
                    ));
                    worker_loop(eval, rx_in, tx_out)
                })
                .map_err(PoolError::Spawn)?;
            ws.push(Worker {
                tx: Some(tx),
                rx,
                batch: Vec::with_capacity(BATCH),
                thread: Some(thread),
            });
        }
        Ok(WorkerPool {
            kind: Kind::Threads(Threads {
                workers: ws,
                directory: HashMap::new(),
                route: PairMap::default(),
                stats: vec![EvalStats::default(); workers],
            }),
            out: Output::default(),
        })
    }

    pub fn workers(&self) -> usize {
        match &self.kind {
            Kind::Inline(_) => 1,
            Kind::Threads(t) => t.workers.len(),
        }
    }

    /// Apply a rule change at event time `at`, on every worker.
    pub fn apply(&mut self, change: RuleChange, at: u64) -> Result<ChangeOutcome, PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => {
                Ok(e.apply(&change, at, &mut self.out)
                    .unwrap_or(ChangeOutcome::NotFound {
                        rule_id: change.rule_id().to_owned(),
                    }))
            }
            Kind::Threads(t) => {
                let outcome = t.directory_apply(&change);
                for i in 0..t.workers.len() {
                    t.send(i, Msg::Change(change.clone(), at))?;
                }
                Ok(outcome)
            }
        }
    }

    /// Evaluate a point at event time `at` (its timestamp, or the watermark for a late
    /// point applied under the `apply` policy).
    pub fn on_point(&mut self, point: Reading, at: u64) -> Result<(), PoolError> {
        self.route_point(point, at, false)
    }

    /// A point that arrived after its clock passed it, evaluated anyway at `at` (the
    /// `apply` late policy): the transitions it causes are marked late.
    pub fn on_late_point(&mut self, point: Reading, at: u64) -> Result<(), PoolError> {
        self.route_point(point, at, true)
    }

    fn route_point(&mut self, point: Reading, at: u64, late: bool) -> Result<(), PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => {
                e.on_point_marked(&point, at, late, &mut self.out);
                Ok(())
            }
            Kind::Threads(t) => {
                let Some(mask) = t.route.get(&point.equipment_id, &point.tag).map(|r| r.mask)
                else {
                    return Ok(());
                };
                let point = Arc::new(point);
                let mut bits = mask;
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    t.send(i, Msg::Point(Arc::clone(&point), at, late))?;
                }
                Ok(())
            }
        }
    }

    /// Event time reached `to`: every worker fires its holds due by then.
    pub fn advance(&mut self, to: u64) -> Result<(), PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => {
                e.advance(to, &mut self.out);
                Ok(())
            }
            Kind::Threads(t) => {
                for i in 0..t.workers.len() {
                    t.send(i, Msg::Advance(to))?;
                }
                Ok(())
            }
        }
    }

    /// The `equipment` scope: `equipment_id`'s clock reached `to`.
    pub fn advance_equipment(&mut self, equipment_id: &Arc<str>, to: u64) -> Result<(), PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => {
                e.advance_equipment(equipment_id, to, &mut self.out);
                Ok(())
            }
            Kind::Threads(t) => {
                for i in 0..t.workers.len() {
                    t.send(i, Msg::AdvanceEquipment(Arc::clone(equipment_id), to))?;
                }
                Ok(())
            }
        }
    }

    /// Everything produced so far, in canonical order. With threads, waits until
    /// every worker has processed everything sent before.
    pub fn flush(&mut self) -> Result<Output, PoolError> {
        let mut out = std::mem::take(&mut self.out);
        if let Kind::Threads(t) = &mut self.kind {
            for i in 0..t.workers.len() {
                t.send(i, Msg::Barrier)?;
                t.push(i)?;
            }
            for (i, w) in t.workers.iter_mut().enumerate() {
                let mut reply = w.rx.recv().map_err(|_| PoolError::WorkerDied(i))?;
                out.append(&mut reply.output);
                t.stats[i] = reply.stats;
            }
        }
        out.sort();
        Ok(out)
    }

    /// The state of every rule, for a checkpoint. With threads this is a barrier:
    /// output produced meanwhile is kept for the next [`WorkerPool::flush`].
    pub fn snapshot(&mut self) -> Result<EvaluatorSnapshot, PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => Ok(e.snapshot()),
            Kind::Threads(t) => {
                for i in 0..t.workers.len() {
                    t.send(i, Msg::Snapshot)?;
                    t.push(i)?;
                }
                let mut rules = Vec::new();
                for (i, w) in t.workers.iter_mut().enumerate() {
                    let mut reply = w.rx.recv().map_err(|_| PoolError::WorkerDied(i))?;
                    self.out.append(&mut reply.output);
                    t.stats[i] = reply.stats;
                    rules.extend(reply.snapshot.map(|s| s.rules).unwrap_or_default());
                }
                rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
                Ok(EvaluatorSnapshot { rules })
            }
        }
    }

    /// Put back checkpointed state of the loaded rules (see [`Evaluator::restore`]).
    /// Returns the ids of snapshot rules that are not loaded with the same version.
    pub fn restore(&mut self, snapshot: &EvaluatorSnapshot) -> Result<Vec<String>, PoolError> {
        match &mut self.kind {
            Kind::Inline(e) => Ok(e.restore(snapshot)),
            Kind::Threads(t) => {
                let skipped = snapshot
                    .rules
                    .iter()
                    .filter(|r| t.directory.get(&r.rule_id).map(|d| d.version()) != Some(r.version))
                    .map(|r| r.rule_id.clone())
                    .collect();
                let shared = Arc::new(snapshot.clone());
                for i in 0..t.workers.len() {
                    t.send(i, Msg::Restore(Arc::clone(&shared)))?;
                }
                Ok(skipped)
            }
        }
    }

    /// Evaluation counters summed over workers (as of the last flush for threads).
    pub fn stats(&self) -> EvalStats {
        match &self.kind {
            Kind::Inline(e) => e.stats(),
            Kind::Threads(t) => t.stats.iter().fold(EvalStats::default(), |a, s| EvalStats {
                points: a.points + s.points,
                routed: a.routed + s.routed,
                group_evaluations: a.group_evaluations + s.group_evaluations,
                unchanged: a.unchanged + s.unchanged,
                group_errors: a.group_errors + s.group_errors,
                deadline_hits: a.deadline_hits + s.deadline_hits,
                over_budget: a.over_budget + s.over_budget,
                quarantined: a.quarantined + s.quarantined,
                timers_fired: a.timers_fired + s.timers_fired,
                transitions: a.transitions + s.transitions,
            }),
        }
    }

    /// The single evaluator, when running inline (for inspection in tests).
    pub fn inline(&self) -> Option<&Evaluator> {
        match &self.kind {
            Kind::Inline(e) => Some(e),
            Kind::Threads(_) => None,
        }
    }
}

impl Threads {
    fn send(&mut self, i: usize, msg: Msg) -> Result<(), PoolError> {
        self.workers[i].batch.push(msg);
        if self.workers[i].batch.len() >= BATCH {
            self.push(i)?;
        }
        Ok(())
    }

    fn push(&mut self, i: usize) -> Result<(), PoolError> {
        let w = &mut self.workers[i];
        if w.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut w.batch, Vec::with_capacity(BATCH));
        w.tx.as_ref()
            .ok_or(PoolError::WorkerDied(i))?
            .send(batch)
            .map_err(|_| PoolError::WorkerDied(i))
    }

    /// Keep the router's copy of the rule set in step, with the same decisions the
    /// workers make.
    fn directory_apply(&mut self, change: &RuleChange) -> ChangeOutcome {
        let id = change.rule_id().to_owned();
        let n = self.workers.len();
        let loaded = self.directory.get(&id).map(|r| r.version());
        match (decide(loaded, change), change) {
            (Decision::Add, RuleChange::Upsert(rule)) => {
                route_add(&mut self.route, rule, owner_of(&id, n));
                self.directory.insert(id.clone(), Arc::clone(rule));
                ChangeOutcome::Added {
                    rule_id: id,
                    version: rule.version(),
                }
            }
            (Decision::Update { from }, RuleChange::Upsert(rule)) => {
                let w = owner_of(&id, n);
                let (kept, reset) = match self.directory.insert(id.clone(), Arc::clone(rule)) {
                    Some(old) => {
                        route_remove(&mut self.route, &old, w);
                        group_diff(&old, rule)
                    }
                    None => (Vec::new(), Vec::new()),
                };
                route_add(&mut self.route, rule, w);
                ChangeOutcome::Updated {
                    rule_id: id,
                    from,
                    to: rule.version(),
                    kept,
                    reset,
                }
            }
            (Decision::Delete { version }, _) => {
                if let Some(old) = self.directory.remove(&id) {
                    route_remove(&mut self.route, &old, owner_of(&id, n));
                }
                ChangeOutcome::Deleted {
                    rule_id: id,
                    version,
                }
            }
            (Decision::Stale { loaded, offered }, _) => ChangeOutcome::IgnoredStaleVersion {
                rule_id: id,
                loaded,
                offered,
            },
            _ => ChangeOutcome::NotFound { rule_id: id },
        }
    }
}

/// Which groups of `new` keep their state from `old` (same name and definition).
fn group_diff(old: &Rule, new: &Rule) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::new();
    let mut reset = Vec::new();
    for (g, f) in new.groups().iter().zip(&new.fingerprints) {
        let same = old
            .groups()
            .iter()
            .zip(&old.fingerprints)
            .any(|(o, of)| o.name == g.name && of == f);
        if same {
            kept.push(g.name.clone());
        } else {
            reset.push(g.name.clone());
        }
    }
    (kept, reset)
}

fn route_add(route: &mut PairMap<RouteEntry>, rule: &Rule, worker: usize) {
    for e in rule.equipment() {
        for t in rule.tags() {
            let r = route.get_or_insert_with(e, t, RouteEntry::default);
            r.mask |= 1 << worker;
            match r.counts.iter_mut().find(|(w, _)| *w as usize == worker) {
                Some((_, c)) => *c += 1,
                None => r.counts.push((worker as u8, 1)),
            }
        }
    }
}

fn route_remove(route: &mut PairMap<RouteEntry>, rule: &Rule, worker: usize) {
    for e in rule.equipment() {
        for t in rule.tags() {
            let Some(r) = route.get_mut(e, t) else {
                continue;
            };
            if let Some(pos) = r.counts.iter().position(|(w, _)| *w as usize == worker) {
                r.counts[pos].1 -= 1;
                if r.counts[pos].1 == 0 {
                    r.counts.swap_remove(pos);
                    r.mask &= !(1 << worker);
                }
            }
            if r.counts.is_empty() {
                route.remove(e, t);
            }
        }
    }
}

fn worker_loop(mut eval: Evaluator, rx: Receiver<Vec<Msg>>, tx: SyncSender<Reply>) {
    let mut out = Output::default();
    while let Ok(batch) = rx.recv() {
        for msg in batch {
            match msg {
                Msg::Point(p, at, late) => eval.on_point_marked(&p, at, late, &mut out),
                Msg::Advance(to) => eval.advance(to, &mut out),
                Msg::AdvanceEquipment(e, to) => eval.advance_equipment(&e, to, &mut out),
                Msg::Change(change, at) => {
                    eval.apply(&change, at, &mut out);
                }
                Msg::Restore(snapshot) => {
                    // Rules of other workers are simply not found here.
                    eval.restore(&snapshot);
                }
                msg @ (Msg::Barrier | Msg::Snapshot) => {
                    let reply = Reply {
                        output: std::mem::take(&mut out),
                        stats: eval.stats(),
                        snapshot: matches!(msg, Msg::Snapshot).then(|| eval.snapshot()),
                    };
                    if tx.send(reply).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if let Kind::Threads(t) = &mut self.kind {
            for w in &mut t.workers {
                // Closing the channel ends the worker's loop.
                w.tx.take();
            }
            for w in &mut t.workers {
                if let Some(h) = w.thread.take() {
                    let _ = h.join();
                }
            }
        }
    }
}
