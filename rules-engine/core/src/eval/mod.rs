//! Evaluation of rules over data points in event-time order: the latest values per
//! (rule, equipment), condition groups with holds, ranking and transitions.
//!
//! An [`Evaluator`] is one worker's share of the rules. It does no I/O and reads no
//! clock: the caller passes the event time of every step, so the same steps give the
//! same transitions.

pub mod hold;
pub mod rank;
mod state;

pub use state::{EvaluatorSnapshot, RuleSnapshot};

use crate::lifecycle::{decide, ChangeOutcome, Decision, RuleChange};
use crate::pairmap::PairMap;
use crate::reading::Reading;
use crate::rule::{explain, FailureKind, Limits, Rule, Sandbox, ScriptFailure};
use crate::transition::{transition_id, GroupExplanation, PendingExplanation, Transition};
use hold::{HoldState, Vote};
use linewatch_schemas::Value;
use rhai::{CallFnOptions, Dynamic, ImmutableString, Map, Scope};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Something the engine wants an operator to know about a rule at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    pub rule_id: String,
    pub rule_version: u64,
    pub equipment_id: String,
    pub group: String,
    /// Line of the script, when known.
    pub line: Option<usize>,
    pub event_time: u64,
    pub kind: DiagnosticKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DiagnosticKind {
    /// One evaluation failed and was ignored: the group keeps its state and is
    /// evaluated again on its next point. Script errors and the wall-clock deadline.
    /// Reported once per distinct message until the group evaluates cleanly again.
    GroupError,
    /// The group hit a deterministic sandbox limit (operations, sizes, depth) and is
    /// disabled until the rule is updated; it keeps the state it had, and a pending
    /// hold is dropped.
    GroupDisabled,
    /// The rule's evaluations exceeded the time budget `quarantineAfter` times in a
    /// row: the whole rule is no longer evaluated (its states stay, pending holds are
    /// dropped) until a new version is loaded. A decision, kept in the checkpoint and
    /// published on the rule's status topic, never recomputed (it depends on load).
    RuleQuarantined,
}

/// What evaluation produced; the caller drains it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub transitions: Vec<Transition>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.diagnostics.is_empty()
    }
    pub fn append(&mut self, other: &mut Output) {
        self.transitions.append(&mut other.transitions);
        self.diagnostics.append(&mut other.diagnostics);
    }
    /// Put the contents in the engine's canonical order (event time, rule, equipment,
    /// sequence), which does not depend on how the rules were split over workers.
    pub fn sort(&mut self) {
        self.transitions
            .sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        self.diagnostics.sort_by(|a, b| {
            (
                a.event_time,
                &a.rule_id,
                &a.equipment_id,
                &a.group,
                &a.message,
            )
                .cmp(&(
                    b.event_time,
                    &b.rule_id,
                    &b.equipment_id,
                    &b.group,
                    &b.message,
                ))
        });
    }
}

/// Counters, for benchmarks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalStats {
    pub points: u64,
    /// Points that updated at least one rule's value.
    pub routed: u64,
    pub group_evaluations: u64,
    /// Readers skipped because the value was the same as the latest one.
    pub unchanged: u64,
    pub group_errors: u64,
    /// Evaluations stopped by the wall-clock deadline (also counted in `group_errors`).
    #[serde(default)]
    pub deadline_hits: u64,
    /// Evaluations that took longer than the budget (stopped or not).
    #[serde(default)]
    pub over_budget: u64,
    /// Rules quarantined for exceeding the budget.
    #[serde(default)]
    pub quarantined: u64,
    pub timers_fired: u64,
    pub transitions: u64,
}

/// Which rules a worker owns: those whose id hashes to `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    pub fn owns(&self, rule_id: &str) -> bool {
        self.count <= 1 || owner_of(rule_id, self.count) == self.index
    }
}

/// The worker that owns a rule. FNV-1a: stable across runs, platforms and versions,
/// so every instance of the service splits rules the same way.
pub fn owner_of(rule_id: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// The readers of one (equipment, tag), inline for the common case of one or two.
type Readers = SmallVec<[Reader; 2]>;

/// (deadline, slot, equipment index, group index): ordered by deadline first.
type TimerKey = (u64, u32, u16, u16);

/// Hold timers per event-time domain: one domain in the global scope, one per
/// equipment in the `equipment` scope, so each fires on its own clock.
#[derive(Default)]
struct Timers {
    sets: Vec<BTreeSet<TimerKey>>,
}

impl Timers {
    fn new() -> Self {
        Timers {
            sets: vec![BTreeSet::new()],
        }
    }

    fn insert(&mut self, domain: u32, key: TimerKey) {
        self.sets[domain as usize].insert(key);
    }

    fn remove(&mut self, domain: u32, key: &TimerKey) {
        self.sets[domain as usize].remove(key);
    }

    fn len(&self) -> usize {
        self.sets.iter().map(BTreeSet::len).sum()
    }
}

/// The `equipment` scope's domains: an equipment's number and how far its clock
/// has brought the rules.
#[derive(Default)]
struct Domains {
    by_id: HashMap<String, u32>,
    now: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Reader {
    slot: u32,
    equip: u16,
    /// Index into the rule's tags.
    tag: u16,
}

struct Instance {
    rule: Arc<Rule>,
    equipment: Vec<EquipState>,
    budget: Budget,
}

/// A rule's record against the time budget.
#[derive(Default)]
struct Budget {
    /// Evaluations over the budget in a row.
    overruns: u32,
    /// Why the rule is quarantined, once it is.
    quarantined: Option<String>,
}

#[derive(Default)]
struct EquipState {
    /// Its event-time domain (0 in the global scope).
    domain: u32,
    /// Latest value per rule tag, as handed to Rhai.
    values: Vec<Option<Dynamic>>,
    groups: Vec<GroupState>,
    /// Index of the winning state.
    current: Option<u16>,
    /// The winning state's name when an update removed it from the state list, so the
    /// next transition can still say where it came from.
    orphan_current: Option<String>,
    sequence: u64,
}

#[derive(Default, Clone)]
struct GroupState {
    hold: HoldState,
    disabled: Option<String>,
    last_error: Option<String>,
}

/// One worker's rules and their state.
pub struct Evaluator {
    sandbox: Sandbox,
    partition: Partition,
    by_id: HashMap<String, u32>,
    slots: Vec<Option<Instance>>,
    free: Vec<u32>,
    /// (equipment, tag) → readers: a point costs only what the rules reading it cost.
    index: PairMap<Readers>,
    timers: Timers,
    /// `None`: the global scope, every equipment in domain 0.
    domains: Option<Domains>,
    scores: Vec<Option<u64>>,
    scope: Scope<'static>,
    stats: EvalStats,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("partition", &self.partition)
            .field("rules", &self.by_id.len())
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

struct Cx<'a> {
    sandbox: &'a Sandbox,
    scope: &'a mut Scope<'static>,
    timers: &'a mut Timers,
    scores: &'a mut Vec<Option<u64>>,
    stats: &'a mut EvalStats,
    out: &'a mut Output,
}

impl Evaluator {
    pub fn new(limits: Limits) -> Self {
        Self::with_partition(limits, Partition::ALL)
    }

    pub fn with_partition(limits: Limits, partition: Partition) -> Self {
        Evaluator {
            sandbox: Sandbox::new(limits),
            partition,
            by_id: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            index: PairMap::default(),
            timers: Timers::new(),
            domains: None,
            scores: Vec::new(),
            scope: Scope::new(),
            stats: EvalStats::default(),
        }
    }

    /// Under the `equipment` watermark scope: each equipment's holds fire on its own
    /// clock ([`Evaluator::advance_equipment`]). Set before any rule is added.
    pub fn per_equipment(mut self) -> Self {
        self.domains = Some(Domains::default());
        self
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The domain of `equipment_id`, made when new (rules being added).
    fn intern_domain(&mut self, equipment_id: &str) -> u32 {
        let Some(d) = &mut self.domains else {
            return 0;
        };
        if let Some(&i) = d.by_id.get(equipment_id) {
            return i;
        }
        // Domain 0 stays the global one: equipment start at 1.
        let i = self.timers.sets.len() as u32;
        self.timers.sets.push(BTreeSet::new());
        d.now.resize(i as usize + 1, 0);
        d.by_id.insert(equipment_id.to_owned(), i);
        i
    }

    /// The domain of `equipment_id`; `None` if no rule here reads it.
    fn domain_of(&self, equipment_id: &str) -> Option<u32> {
        match &self.domains {
            None => Some(0),
            Some(d) => d.by_id.get(equipment_id).copied(),
        }
    }

    /// Event time domain `d` has reached, `at` when unknown (the global scope).
    fn domain_now(&self, d: u32, at: u64) -> u64 {
        match &self.domains {
            Some(ds) => match ds.now.get(d as usize) {
                Some(&n) if n > 0 => n,
                _ => at,
            },
            None => at,
        }
    }

    fn reach(&mut self, d: u32, t: u64) {
        if let Some(ds) = &mut self.domains {
            if let Some(n) = ds.now.get_mut(d as usize) {
                *n = (*n).max(t);
            }
        }
    }

    pub fn stats(&self) -> EvalStats {
        self.stats
    }

    pub fn rule_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn rule(&self, id: &str) -> Option<&Arc<Rule>> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_ref().map(|i| &i.rule)
    }

    /// Pending hold timers (all rules).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The current state of a rule for one of its equipment.
    pub fn current_state(&self, rule_id: &str, equipment_id: &str) -> Option<&str> {
        let inst = self.slots[*self.by_id.get(rule_id)? as usize].as_ref()?;
        let e = inst.rule.equipment.iter().position(|e| e == equipment_id)?;
        let cur = inst.equipment[e].current?;
        Some(inst.rule.shape.states[cur as usize].as_str())
    }

    /// Does any rule of this worker read this tag of this equipment?
    pub fn reads(&self, equipment_id: &str, tag: &str) -> bool {
        self.index.contains(equipment_id, tag)
    }

    /// Apply a rule change at event time `at` (timers due by then fire first).
    /// `None` if the rule belongs to another worker's partition.
    pub fn apply(
        &mut self,
        change: &RuleChange,
        at: u64,
        out: &mut Output,
    ) -> Option<ChangeOutcome> {
        let id = change.rule_id();
        if !self.partition.owns(id) {
            return None;
        }
        // Per equipment, every domain has fired through its own clock already.
        if self.domains.is_none() {
            self.fire_due(0, at, out);
        }
        let slot = self.by_id.get(id).copied();
        let loaded = slot.and_then(|s| self.slots[s as usize].as_ref().map(|i| i.rule.version));
        let outcome = match (decide(loaded, change), change, slot) {
            (Decision::Add, RuleChange::Upsert(rule), _) => {
                self.add(Arc::clone(rule));
                ChangeOutcome::Added {
                    rule_id: id.to_owned(),
                    version: rule.version,
                }
            }
            (Decision::Update { from }, RuleChange::Upsert(rule), Some(slot)) => {
                let (kept, reset) = self.update(slot, Arc::clone(rule), at, out);
                ChangeOutcome::Updated {
                    rule_id: id.to_owned(),
                    from,
                    to: rule.version,
                    kept,
                    reset,
                }
            }
            (Decision::Delete { version }, _, Some(slot)) => {
                self.remove(slot);
                self.by_id.remove(id);
                ChangeOutcome::Deleted {
                    rule_id: id.to_owned(),
                    version,
                }
            }
            (Decision::Stale { loaded, offered }, _, _) => ChangeOutcome::IgnoredStaleVersion {
                rule_id: id.to_owned(),
                loaded,
                offered,
            },
            _ => ChangeOutcome::NotFound {
                rule_id: id.to_owned(),
            },
        };
        tracing::debug!(rule = id, ?outcome, at, "rule change applied");
        Some(outcome)
    }

    /// A data point, evaluated at event time `at` (its timestamp, or later for a late
    /// point applied under the `apply` policy). Hold deadlines up to `at` fire first.
    pub fn on_point(&mut self, p: &Reading, at: u64, out: &mut Output) {
        self.stats.points += 1;
        let Some(domain) = self.domain_of(&p.equipment_id) else {
            return;
        };
        self.reach(domain, at);
        self.fire_due(domain, at, out);
        let Evaluator {
            sandbox,
            slots,
            index,
            timers,
            scores,
            scope,
            stats,
            ..
        } = self;
        let Some(readers) = index.get(&p.equipment_id, &p.tag) else {
            return;
        };
        stats.routed += 1;
        let mut cx = Cx {
            sandbox,
            scope,
            timers,
            scores,
            stats,
            out,
        };
        for r in readers {
            let Some(Instance {
                rule,
                equipment,
                budget,
            }) = slots[r.slot as usize].as_mut()
            else {
                continue;
            };
            let eq = &mut equipment[r.equip as usize];
            let value = &mut eq.values[r.tag as usize];
            // Group functions are pure functions of their values: an unchanged value
            // cannot change a vote, so it costs no evaluation.
            if value.as_ref().is_some_and(|d| same_value(d, &p.value)) {
                cx.stats.unchanged += 1;
                continue;
            }
            *value = Some(to_dynamic(&p.value));
            if budget.quarantined.is_some() {
                continue;
            }
            let mut changed = false;
            for &g in &rule.shape.tag_groups[r.tag as usize] {
                changed |= eval_group(&mut cx, rule, eq, budget, r.slot, r.equip, g, at);
                if budget.quarantined.is_some() {
                    break;
                }
            }
            if budget.quarantined.is_some() {
                drop_timers(cx.timers, rule, equipment, r.slot);
                continue;
            }
            if changed {
                rank(&mut cx, rule, &mut equipment[r.equip as usize], r.equip, at);
            }
        }
    }

    /// [`Self::on_point`]; with `late`, the transitions the point causes are marked
    /// late (it arrived after its clock had passed it).
    pub fn on_point_marked(&mut self, p: &Reading, at: u64, late: bool, out: &mut Output) {
        let before = out.transitions.len();
        self.on_point(p, at, out);
        if late {
            for t in &mut out.transitions[before..] {
                t.late = true;
            }
        }
    }

    /// Event time has reached `to` (the watermark) for every rule: fire hold deadlines
    /// up to it (in every domain).
    pub fn advance(&mut self, to: u64, out: &mut Output) {
        for d in 0..self.timers.sets.len() as u32 {
            self.reach(d, to);
            self.fire_due(d, to, out);
        }
    }

    /// The `equipment` scope: `equipment_id`'s clock reached `to`; fire its rules'
    /// hold deadlines up to it. In the global scope, the same as [`Self::advance`].
    pub fn advance_equipment(&mut self, equipment_id: &str, to: u64, out: &mut Output) {
        if self.domains.is_none() {
            return self.advance(to, out);
        }
        if let Some(d) = self.domain_of(equipment_id) {
            self.reach(d, to);
            self.fire_due(d, to, out);
        }
    }

    fn fire_due(&mut self, domain: u32, t: u64, out: &mut Output) {
        let Evaluator {
            sandbox,
            slots,
            timers,
            scores,
            scope,
            stats,
            ..
        } = self;
        let d = domain as usize;
        while let Some(&(deadline, slot, equip, group)) = timers.sets[d].first() {
            if deadline > t {
                break;
            }
            timers.sets[d].pop_first();
            let Some(Instance {
                rule, equipment, ..
            }) = slots[slot as usize].as_mut()
            else {
                continue;
            };
            let eq = &mut equipment[equip as usize];
            let mut changed = eq.groups[group as usize].hold.fire();
            stats.timers_fired += 1;
            // Every group of this rule and equipment due at the same instant, then one
            // ranking: no transient winner in between.
            while let Some(&(d2, s2, e2, g2)) = timers.sets[d].first() {
                if (d2, s2, e2) != (deadline, slot, equip) {
                    break;
                }
                timers.sets[d].pop_first();
                changed |= eq.groups[g2 as usize].hold.fire();
                stats.timers_fired += 1;
            }
            if changed {
                let mut cx = Cx {
                    sandbox,
                    scope,
                    timers,
                    scores,
                    stats,
                    out,
                };
                rank(&mut cx, rule, eq, equip, deadline);
            }
        }
    }

    fn alloc_slot(&mut self, inst: Instance) -> u32 {
        match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(inst);
                s
            }
            None => {
                self.slots.push(Some(inst));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn add(&mut self, rule: Arc<Rule>) {
        let equipment = rule
            .equipment
            .iter()
            .map(|e| {
                let domain = self.intern_domain(e);
                fresh_equipment(&rule, domain)
            })
            .collect();
        let id = rule.id.clone();
        let slot = self.alloc_slot(Instance {
            rule: Arc::clone(&rule),
            equipment,
            budget: Budget::default(),
        });
        self.index_add(&rule, slot);
        self.by_id.insert(id, slot);
    }

    fn remove(&mut self, slot: u32) {
        if let Some(inst) = self.slots[slot as usize].take() {
            self.index_remove(&inst.rule, slot);
            remove_timers(&mut self.timers, &inst, slot);
            self.free.push(slot);
        }
        // Slots at the end can go for good, so churn does not leave a long tail.
        while matches!(self.slots.last(), Some(None)) {
            let last = (self.slots.len() - 1) as u32;
            self.slots.pop();
            self.free.retain(|&s| s != last);
        }
        if self.slots.capacity() > 64 && self.slots.len() * 4 < self.slots.capacity() {
            self.slots.shrink_to_fit();
            self.free.shrink_to_fit();
        }
    }

    /// Replace the rule in `slot` with a higher version. Groups whose definition is
    /// unchanged keep their state; the others start fresh and are evaluated at `at`
    /// from the latest values the rule already holds.
    fn update(
        &mut self,
        slot: u32,
        rule: Arc<Rule>,
        at: u64,
        out: &mut Output,
    ) -> (Vec<String>, Vec<String>) {
        let Some(old) = self.slots[slot as usize].take() else {
            return (Vec::new(), Vec::new());
        };
        self.index_remove(&old.rule, slot);
        remove_timers(&mut self.timers, &old, slot);

        let mapping: Vec<Option<usize>> = rule
            .shape
            .groups
            .iter()
            .zip(&rule.fingerprints)
            .map(|(ng, nf)| {
                old.rule
                    .shape
                    .groups
                    .iter()
                    .zip(&old.rule.fingerprints)
                    .position(|(og, of)| og.name == ng.name && of == nf)
            })
            .collect();
        let remap = |v: Vote| -> Option<Vote> {
            match v {
                None => Some(None),
                Some(i) => rule
                    .shape
                    .state_index(&old.rule.shape.states[i as usize])
                    .map(Some),
            }
        };
        let mut equipment = Vec::with_capacity(rule.equipment.len());
        for e in &rule.equipment {
            let domain = self.intern_domain(e);
            let Some(oe) = old.rule.equipment.iter().position(|x| x == e) else {
                equipment.push(fresh_equipment(&rule, domain));
                continue;
            };
            let o = &old.equipment[oe];
            let values = rule
                .shape
                .tags
                .iter()
                .map(|t| {
                    let i = old.rule.shape.tags.iter().position(|x| x == t)?;
                    o.values[i].clone()
                })
                .collect();
            let groups = mapping
                .iter()
                .map(|m| {
                    let Some(og) = *m else {
                        return GroupState::default();
                    };
                    let gs = &o.groups[og];
                    let held = |h: Option<hold::Held>| -> Option<Option<hold::Held>> {
                        match h {
                            None => Some(None),
                            Some(h) => remap(h.vote).map(|vote| Some(hold::Held { vote, ..h })),
                        }
                    };
                    match (held(gs.hold.effective), held(gs.hold.pending)) {
                        (Some(effective), Some(pending)) => GroupState {
                            hold: HoldState { effective, pending },
                            // An update is the author's chance to fix a disabled group.
                            disabled: None,
                            last_error: None,
                        },
                        // A state it was in is gone from the list: start over.
                        _ => GroupState::default(),
                    }
                })
                .collect();
            let (current, orphan_current) = match o.current {
                Some(c) => match remap(Some(c)) {
                    Some(nc) => (nc, None),
                    None => (None, Some(old.rule.shape.states[c as usize].clone())),
                },
                None => (None, o.orphan_current.clone()),
            };
            equipment.push(EquipState {
                domain,
                values,
                groups,
                current,
                orphan_current,
                sequence: o.sequence,
            });
        }
        let kept = rule
            .shape
            .groups
            .iter()
            .zip(&mapping)
            .filter(|(_, m)| m.is_some())
            .map(|(g, _)| g.name.clone())
            .collect();
        let reset = rule
            .shape
            .groups
            .iter()
            .zip(&mapping)
            .filter(|(_, m)| m.is_none())
            .map(|(g, _)| g.name.clone())
            .collect();

        // A new version starts with a clean record (out of quarantine).
        self.slots[slot as usize] = Some(Instance {
            rule: Arc::clone(&rule),
            equipment,
            budget: Budget::default(),
        });
        self.index_add(&rule, slot);
        // Each equipment's run is brought up to date at its own domain's time.
        let ats: Vec<u64> = equipment_domains(&self.slots[slot as usize])
            .map(|d| self.domain_now(d, at))
            .collect();
        let Evaluator {
            sandbox,
            slots,
            timers,
            scores,
            scope,
            stats,
            ..
        } = self;
        let Some(Instance {
            rule,
            equipment,
            budget,
        }) = slots[slot as usize].as_mut()
        else {
            return (kept, reset);
        };
        let mut cx = Cx {
            sandbox,
            scope,
            timers,
            scores,
            stats,
            out,
        };
        for (e, eq) in equipment.iter_mut().enumerate() {
            let at = ats[e];
            for (g, gs) in eq.groups.iter().enumerate() {
                if let Some(d) = gs.hold.deadline(rule.shape.groups[g].hold_ms) {
                    cx.timers.insert(eq.domain, (d, slot, e as u16, g as u16));
                }
            }
            for (g, m) in mapping.iter().enumerate() {
                if budget.quarantined.is_none()
                    && (m.is_none() || eq.groups[g].hold.effective.is_none())
                {
                    eval_group(&mut cx, rule, eq, budget, slot, e as u16, g as u16, at);
                }
            }
            // Weights or severities may have changed even if no vote did.
            rank(&mut cx, rule, eq, e as u16, at);
        }
        if budget.quarantined.is_some() {
            drop_timers(cx.timers, rule, equipment, slot);
        }
        (kept, reset)
    }

    fn index_add(&mut self, rule: &Rule, slot: u32) {
        for (e, equipment) in rule.equipment.iter().enumerate() {
            for (t, tag) in rule.shape.tags.iter().enumerate() {
                self.index
                    .get_or_insert_with(equipment, tag, Readers::new)
                    .push(Reader {
                        slot,
                        equip: e as u16,
                        tag: t as u16,
                    });
            }
        }
    }

    fn index_remove(&mut self, rule: &Rule, slot: u32) {
        for equipment in &rule.equipment {
            for tag in &rule.shape.tags {
                if let Some(readers) = self.index.get_mut(equipment, tag) {
                    readers.retain(|r| r.slot != slot);
                    if readers.is_empty() {
                        self.index.remove(equipment, tag);
                    } else if readers.spilled() && readers.len() * 4 < readers.capacity() {
                        readers.shrink_to_fit();
                    }
                }
            }
        }
    }
}

/// The domain of each equipment of the rule in `slot` (none for an empty slot).
fn equipment_domains(inst: &Option<Instance>) -> impl Iterator<Item = u32> + '_ {
    inst.iter()
        .flat_map(|i| i.equipment.iter().map(|e| e.domain))
}

fn fresh_equipment(rule: &Rule, domain: u32) -> EquipState {
    EquipState {
        domain,
        values: vec![None; rule.shape.tags.len()],
        groups: vec![GroupState::default(); rule.shape.groups.len()],
        ..EquipState::default()
    }
}

/// A quarantined rule: no timer of it fires, no pending change survives.
fn drop_timers(timers: &mut Timers, rule: &Rule, equipment: &mut [EquipState], slot: u32) {
    for (e, eq) in equipment.iter_mut().enumerate() {
        let domain = eq.domain;
        for (g, gs) in eq.groups.iter_mut().enumerate() {
            if let Some(d) = gs.hold.deadline(rule.shape.groups[g].hold_ms) {
                timers.remove(domain, &(d, slot, e as u16, g as u16));
            }
            gs.hold.cancel();
        }
    }
}

fn remove_timers(timers: &mut Timers, inst: &Instance, slot: u32) {
    for (e, eq) in inst.equipment.iter().enumerate() {
        for (g, gs) in eq.groups.iter().enumerate() {
            if let Some(d) = gs.hold.deadline(inst.rule.shape.groups[g].hold_ms) {
                timers.remove(eq.domain, &(d, slot, e as u16, g as u16));
            }
        }
    }
}

/// Evaluate one group at event time `at`. Returns whether its effective vote changed.
/// Counts the call against the rule's budget; the call that makes the rule
/// quarantined sets `budget.quarantined` (the caller drops its timers).
#[allow(clippy::too_many_arguments)]
fn eval_group(
    cx: &mut Cx<'_>,
    rule: &Rule,
    eq: &mut EquipState,
    budget: &mut Budget,
    slot: u32,
    equip: u16,
    g: u16,
    at: u64,
) -> bool {
    let group = &rule.shape.groups[g as usize];
    let gs = &mut eq.groups[g as usize];
    if gs.disabled.is_some() {
        return false;
    }
    if group.tags.iter().any(|&t| eq.values[t as usize].is_none()) {
        return false;
    }
    cx.stats.group_evaluations += 1;
    let map = value_map(group, &eq.values);
    let (called, over) = call_group(cx, rule, g, map);
    if over {
        cx.stats.over_budget += 1;
        budget.overruns += 1;
        let limits = cx.sandbox.limits();
        if limits.quarantine_after > 0 && budget.overruns >= limits.quarantine_after {
            let message = format!(
                "quarantined: {} evaluations in a row over the {} ms budget; publish a new version to evaluate it again",
                budget.overruns,
                limits.eval_deadline.as_millis()
            );
            budget.quarantined = Some(message.clone());
            cx.stats.quarantined += 1;
            tracing::debug!(rule = %rule.id, "{message}");
            cx.out.diagnostics.push(Diagnostic {
                rule_id: rule.id.clone(),
                rule_version: rule.version,
                equipment_id: rule.equipment[equip as usize].clone(),
                group: group.name.clone(),
                line: group.line,
                event_time: at,
                kind: DiagnosticKind::RuleQuarantined,
                message,
            });
            return false;
        }
    } else {
        budget.overruns = 0;
    }
    let result = called.and_then(|d| to_vote(rule, group, d));
    let vote = match result {
        Ok(v) => {
            gs.last_error = None;
            v
        }
        Err(f) => {
            cx.stats.group_errors += 1;
            let kind = match f.kind {
                FailureKind::Limit => {
                    gs.disabled = Some(f.message.clone());
                    if let Some(d) = gs.hold.deadline(group.hold_ms) {
                        cx.timers.remove(eq.domain, &(d, slot, equip, g));
                    }
                    gs.hold.cancel();
                    DiagnosticKind::GroupDisabled
                }
                // Not the script's fault alone (a CPU stall): this point only, and
                // nothing in the checkpoint, so a replay is not changed by it.
                FailureKind::Deadline => {
                    cx.stats.deadline_hits += 1;
                    DiagnosticKind::GroupError
                }
                FailureKind::Runtime => DiagnosticKind::GroupError,
            };
            if gs.last_error.as_deref() != Some(f.message.as_str()) {
                gs.last_error = Some(f.message.clone());
                // Reported through `Output::diagnostics`; the log is for debugging.
                tracing::debug!(
                    rule = %rule.id,
                    group = %group.name,
                    equipment = %rule.equipment[equip as usize],
                    line = f.line,
                    "{}",
                    f.message
                );
                cx.out.diagnostics.push(Diagnostic {
                    rule_id: rule.id.clone(),
                    rule_version: rule.version,
                    equipment_id: rule.equipment[equip as usize].clone(),
                    group: group.name.clone(),
                    line: f.line.or(group.line),
                    event_time: at,
                    kind,
                    message: f.message,
                });
            }
            return false;
        }
    };
    let effect = gs.hold.observe(vote, at, group.hold_ms);
    if effect.old_deadline != effect.new_deadline {
        if let Some(d) = effect.old_deadline {
            cx.timers.remove(eq.domain, &(d, slot, equip, g));
        }
        if let Some(d) = effect.new_deadline {
            cx.timers.insert(eq.domain, (d, slot, equip, g));
        }
    }
    effect.changed
}

/// The `v` a group function receives: a fresh map of the group's latest values.
/// Fresh on every call, so a script that writes to it cannot change what it sees
/// next time; building it touches only memory that is hot anyway.
fn value_map(group: &crate::rule::Group, values: &[Option<Dynamic>]) -> Dynamic {
    let mut map = Map::new();
    for (&t, key) in group.tags.iter().zip(&group.keys) {
        let v = values[t as usize].clone().unwrap_or(Dynamic::UNIT);
        map.insert(key.as_str().into(), v);
    }
    Dynamic::from_map(map)
}

/// Call a group's function; also says whether the call went over the time budget.
fn call_group(
    cx: &mut Cx<'_>,
    rule: &Rule,
    g: u16,
    map: Dynamic,
) -> (Result<Dynamic, ScriptFailure>, bool) {
    let group = &rule.shape.groups[g as usize];
    let scope = &mut *cx.scope;
    let (result, over) = cx.sandbox.with_deadline(|engine| {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        if group.captures {
            let mut args = rule.curry[g as usize].clone();
            args.push(map);
            engine.call_fn_with_options::<Dynamic>(
                options,
                scope,
                &rule.shape.ast,
                &group.function,
                args,
            )
        } else {
            engine.call_fn_with_options::<Dynamic>(
                options,
                scope,
                &rule.shape.ast,
                &group.function,
                (map,),
            )
        }
    });
    let result = result.map_err(|e| {
        let mut f = explain(&e);
        f.line = f.line.or(group.line);
        f
    });
    (result, over)
}

fn to_vote(rule: &Rule, group: &crate::rule::Group, d: Dynamic) -> Result<Vote, ScriptFailure> {
    if d.is_unit() {
        return Ok(None);
    }
    let fail = |message: String| ScriptFailure {
        kind: FailureKind::Runtime,
        line: group.line,
        message,
    };
    if d.is_string() {
        let s: ImmutableString = d.into_immutable_string().unwrap_or_default();
        return rule.shape.state_index(&s).map(Some).ok_or_else(|| {
            fail(format!(
                "returned \"{s}\", which is not one of the rule's states {:?}",
                rule.shape.states
            ))
        });
    }
    Err(fail(format!(
        "returned a value of type {}; a group must return a state name or () to abstain",
        d.type_name()
    )))
}

/// Rank the rule's votes for one equipment; a new winner is a transition at `at`.
fn rank(cx: &mut Cx<'_>, rule: &Rule, eq: &mut EquipState, equip: u16, at: u64) {
    let votes = eq
        .groups
        .iter()
        .zip(&rule.shape.groups)
        .filter_map(|(gs, g)| Some((gs.hold.effective?.vote?, g.weight)));
    let Some(winner) = rank::winner(votes, rule.shape.states.len(), cx.scores) else {
        return;
    };
    if eq.current == Some(winner) {
        return;
    }
    let previous_state = match eq.current {
        Some(c) => Some(rule.shape.states[c as usize].clone()),
        None => eq.orphan_current.take(),
    };
    eq.current = Some(winner);
    eq.sequence += 1;
    cx.stats.transitions += 1;
    let equipment_id = rule.equipment[equip as usize].clone();
    let state_name = |v: Vote| v.map(|i| rule.shape.states[i as usize].clone());
    let groups = rule
        .shape
        .groups
        .iter()
        .zip(&eq.groups)
        .map(|(g, gs)| GroupExplanation {
            name: g.name.clone(),
            state: gs.hold.effective.and_then(|h| state_name(h.vote)),
            weight: g.weight,
            since: gs.hold.effective.map(|h| h.since),
            pending: gs.hold.pending.map(|p| PendingExplanation {
                state: state_name(p.vote),
                since: p.since,
                due: p.since.saturating_add(g.hold_ms),
            }),
            error: gs.disabled.clone(),
        })
        .collect();
    let mut values = BTreeMap::new();
    for (g, gs) in rule.shape.groups.iter().zip(&eq.groups) {
        if gs.hold.effective.and_then(|h| h.vote) == Some(winner) {
            for &t in &g.tags {
                let v = eq.values[t as usize]
                    .as_ref()
                    .map_or(Value::Null, from_dynamic);
                values.insert(rule.shape.tags[t as usize].clone(), v);
            }
        }
    }
    cx.out.transitions.push(Transition {
        transition_id: transition_id(&rule.id, &equipment_id, at, eq.sequence),
        rule_id: rule.id.clone(),
        rule_version: rule.version,
        equipment_id,
        previous_state,
        state: rule.shape.states[winner as usize].clone(),
        event_time: at,
        sequence: eq.sequence,
        groups,
        values,
        late: false,
    });
}

pub(crate) fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Int(i) => Dynamic::from_int(*i),
        // Beyond i64: Rhai has no u64, a float keeps comparisons meaningful.
        Value::UInt(u) => Dynamic::from_float(*u as f64),
        Value::Float(f) => Dynamic::from_float(*f),
        Value::String(s) => Dynamic::from(ImmutableString::from(s.as_str())),
    }
}

pub(crate) fn from_dynamic(d: &Dynamic) -> Value {
    if let Ok(f) = d.as_float() {
        Value::Float(f)
    } else if let Ok(i) = d.as_int() {
        Value::Int(i)
    } else if let Ok(b) = d.as_bool() {
        Value::Bool(b)
    } else if d.is_string() {
        Value::String(d.clone().into_string().unwrap_or_default())
    } else {
        Value::Null
    }
}

fn same_value(d: &Dynamic, v: &Value) -> bool {
    match v {
        Value::Null => d.is_unit(),
        Value::Bool(b) => d.as_bool() == Ok(*b),
        Value::Int(i) => d.as_int() == Ok(*i),
        Value::UInt(u) => d
            .as_float()
            .is_ok_and(|f| f.to_bits() == (*u as f64).to_bits()),
        Value::Float(f) => d.as_float().is_ok_and(|x| x.to_bits() == f.to_bits()),
        Value::String(s) => d
            .read_lock::<ImmutableString>()
            .is_some_and(|x| x.as_str() == s.as_str()),
    }
}

#[cfg(test)]
mod tests;
