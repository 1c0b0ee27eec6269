//! Events waiting for delivery: one FIFO per target (of any kind), shared by the engine
//! (which pushes) and the delivery tasks (which take a batch from the head and complete
//! it).
//!
//! An event leaves a target's queue only when it was delivered or written to the
//! dead-letter store. The queues are part of the engine's checkpoint ([`Outbox::snapshot`] /
//! [`Outbox::restore`]), so what was not delivered before a crash is sent again, with the
//! same ids. [`Queues`] is the pure logic; [`Outbox`] adds a lock and the wake-ups.

use super::target::QueueSpec;
use linewatch_rules_core::transition::{EventSource, Transition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use uuid::Uuid;

/// One event on its way to the targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingEvent {
    pub id: Uuid,
    pub transition_id: String,
    /// The JSON envelope, sent as is.
    #[serde(with = "arc_str")]
    pub body: Arc<str>,
    /// When the engine emitted it (ms since the epoch); the age limit counts from here,
    /// across restarts.
    pub created_at_ms: u64,
}

impl PendingEvent {
    /// The envelope of `t`. Its JSON has sorted keys (a canonical form), so a copy read
    /// back from the dead-letter store re-serialises to the very same bytes.
    pub fn from_transition(t: &Transition, src: &EventSource, now_ms: u64) -> Self {
        let event = t.to_event(src);
        // An `Event` has string keys only; serialising it cannot fail.
        let value = serde_json::to_value(&event).expect("an Event serialises");
        PendingEvent {
            id: event.id,
            transition_id: t.transition_id.clone(),
            body: value.to_string().into(),
            created_at_ms: now_ms,
        }
    }
}

mod arc_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

/// The outbox in the checkpoint. Each event is stored once however many targets wait
/// for it; the targets list ids in delivery order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxSnapshot {
    pub version: u32,
    pub events: Vec<PendingEvent>,
    pub targets: BTreeMap<String, TargetSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSnapshot {
    /// Oldest first.
    pub pending: Vec<Uuid>,
    /// Pushed out by `max_pending`, not yet in the dead-letter store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<Uuid>,
}

pub const SNAPSHOT_VERSION: u32 = 1;

/// What [`Queues::restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Events back in a queue, over all targets.
    pub restored: usize,
    /// Targets in the snapshot that are no longer configured, with their event counts.
    pub dropped_targets: Vec<(String, usize)>,
    /// Ids listed by a target with no event in the snapshot (a damaged snapshot).
    pub missing_events: usize,
}

#[derive(Debug)]
struct TargetQueue {
    name: String,
    max_pending: usize,
    queue: VecDeque<Arc<PendingEvent>>,
    evicted: VecDeque<Arc<PendingEvent>>,
}

impl TargetQueue {
    fn enforce_limit(&mut self) -> usize {
        let mut n = 0;
        while self.queue.len() > self.max_pending {
            if let Some(old) = self.queue.pop_front() {
                self.evicted.push_back(old);
                n += 1;
            }
        }
        n
    }
}

/// The pure queue logic: per-target FIFOs with a bound that evicts the oldest.
#[derive(Debug)]
pub struct Queues {
    targets: Vec<TargetQueue>,
}

impl Queues {
    /// `(target name, max_pending)` per target.
    pub fn new(targets: &[(String, usize)]) -> Self {
        Queues {
            targets: targets
                .iter()
                .map(|(name, max)| TargetQueue {
                    name: name.clone(),
                    max_pending: (*max).max(1),
                    queue: VecDeque::new(),
                    evicted: VecDeque::new(),
                })
                .collect(),
        }
    }

    fn target(&self, name: &str) -> Option<&TargetQueue> {
        self.targets.iter().find(|t| t.name == name)
    }

    fn target_mut(&mut self, name: &str) -> Option<&mut TargetQueue> {
        self.targets.iter_mut().find(|t| t.name == name)
    }

    pub fn target_names(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|t| t.name.as_str())
    }

    /// Enqueue for every target; returns how many events were evicted (over all targets).
    pub fn push(&mut self, ev: Arc<PendingEvent>) -> usize {
        self.targets
            .iter_mut()
            .map(|t| {
                t.queue.push_back(ev.clone());
                t.enforce_limit()
            })
            .sum()
    }

    pub fn head(&self, target: &str) -> Option<Arc<PendingEvent>> {
        self.target(target)?.queue.front().cloned()
    }

    /// Up to `max` events from the head of `target`'s queue, oldest first (they stay
    /// queued until [`complete`](Self::complete)d).
    pub fn batch(&self, target: &str, max: usize) -> Vec<Arc<PendingEvent>> {
        self.target(target)
            .map(|t| t.queue.iter().take(max).cloned().collect())
            .unwrap_or_default()
    }

    /// `id` was delivered or dead-lettered for `target`: it leaves the queue (or the
    /// evicted list). Returns whether it was there.
    pub fn complete(&mut self, target: &str, id: Uuid) -> bool {
        let Some(t) = self.target_mut(target) else {
            return false;
        };
        if t.queue.front().is_some_and(|e| e.id == id) {
            t.queue.pop_front();
            return true;
        }
        if let Some(i) = t.evicted.iter().position(|e| e.id == id) {
            t.evicted.remove(i);
            return true;
        }
        if let Some(i) = t.queue.iter().position(|e| e.id == id) {
            t.queue.remove(i);
            return true;
        }
        false
    }

    /// Events evicted by the bound, oldest first, still to be written to the dead-letter
    /// store (then [`complete`](Self::complete) them).
    pub fn evicted(&self, target: &str) -> Vec<Arc<PendingEvent>> {
        self.target(target)
            .map(|t| t.evicted.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn pending(&self, target: &str) -> usize {
        self.target(target).map_or(0, |t| t.queue.len())
    }

    pub fn oldest_created_at_ms(&self, target: &str) -> Option<u64> {
        self.target(target)?.queue.front().map(|e| e.created_at_ms)
    }

    pub fn snapshot(&self) -> OutboxSnapshot {
        let mut seen = HashSet::new();
        let mut events = Vec::new();
        let mut targets = BTreeMap::new();
        for t in &self.targets {
            let mut ids = |q: &VecDeque<Arc<PendingEvent>>| -> Vec<Uuid> {
                q.iter()
                    .map(|e| {
                        if seen.insert(e.id) {
                            events.push(PendingEvent::clone(e));
                        }
                        e.id
                    })
                    .collect()
            };
            let evicted = ids(&t.evicted);
            let pending = ids(&t.queue);
            targets.insert(t.name.clone(), TargetSnapshot { pending, evicted });
        }
        OutboxSnapshot {
            version: SNAPSHOT_VERSION,
            events,
            targets,
        }
    }

    /// Replace the queues with a snapshot's. Targets no longer configured are dropped
    /// (reported); new targets start empty; the bound applies at once.
    pub fn restore(&mut self, snap: OutboxSnapshot) -> RestoreReport {
        let events: HashMap<Uuid, Arc<PendingEvent>> = snap
            .events
            .into_iter()
            .map(|e| (e.id, Arc::new(e)))
            .collect();
        let mut report = RestoreReport::default();
        for t in &mut self.targets {
            t.queue.clear();
            t.evicted.clear();
        }
        for (name, ts) in snap.targets {
            let Some(t) = self.targets.iter_mut().find(|t| t.name == name) else {
                report
                    .dropped_targets
                    .push((name, ts.pending.len() + ts.evicted.len()));
                continue;
            };
            let mut fill = |ids: Vec<Uuid>, into: &mut VecDeque<Arc<PendingEvent>>| {
                for id in ids {
                    match events.get(&id) {
                        Some(e) => {
                            into.push_back(e.clone());
                            report.restored += 1;
                        }
                        None => report.missing_events += 1,
                    }
                }
            };
            fill(ts.evicted, &mut t.evicted);
            fill(ts.pending, &mut t.queue);
            t.enforce_limit();
        }
        report
    }
}

/// The shared outbox: [`Queues`] behind a lock, and a wake-up per target.
#[derive(Debug)]
pub struct Outbox {
    queues: Mutex<Queues>,
    wakers: HashMap<String, Notify>,
}

impl Outbox {
    /// One queue per target, of any kind, each with its own bound.
    pub fn new<Q: Into<QueueSpec>>(targets: impl IntoIterator<Item = Q>) -> Self {
        let t: Vec<(String, usize)> = targets
            .into_iter()
            .map(|q| {
                let q = q.into();
                (q.name, q.max_pending)
            })
            .collect();
        Outbox {
            wakers: t.iter().map(|(n, _)| (n.clone(), Notify::new())).collect(),
            queues: Mutex::new(Queues::new(&t)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The queues stay consistent across a panic elsewhere (every change is one step).
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        for n in self.wakers.values() {
            n.notify_one();
        }
    }

    pub fn targets(&self) -> Vec<String> {
        self.lock().target_names().map(String::from).collect()
    }

    /// Enqueue for every target and wake their tasks.
    pub fn push(&self, ev: PendingEvent) {
        self.push_all([ev]);
    }

    /// Several events under one lock, in order.
    pub fn push_all(&self, evs: impl IntoIterator<Item = PendingEvent>) {
        let evicted: usize = {
            let mut q = self.lock();
            evs.into_iter().map(|e| q.push(Arc::new(e))).sum()
        };
        if evicted > 0 {
            tracing::debug!(
                evicted,
                "outbox full: oldest events go to the dead-letter store"
            );
        }
        self.wake_all();
    }

    pub fn pending(&self, target: &str) -> usize {
        self.lock().pending(target)
    }

    pub fn head(&self, target: &str) -> Option<Arc<PendingEvent>> {
        self.lock().head(target)
    }

    /// See [`Queues::batch`].
    pub fn batch(&self, target: &str, max: usize) -> Vec<Arc<PendingEvent>> {
        self.lock().batch(target, max)
    }

    /// See [`Queues::complete`].
    pub fn complete(&self, target: &str, id: Uuid) -> bool {
        self.lock().complete(target, id)
    }

    pub fn evicted(&self, target: &str) -> Vec<Arc<PendingEvent>> {
        self.lock().evicted(target)
    }

    pub fn oldest_created_at_ms(&self, target: &str) -> Option<u64> {
        self.lock().oldest_created_at_ms(target)
    }

    /// Resolves after a push (or restore) since the last wake-up of `target`'s task. A
    /// push before the call is not lost: `Notify` keeps one permit.
    pub async fn changed(&self, target: &str) {
        match self.wakers.get(target) {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    pub fn snapshot(&self) -> OutboxSnapshot {
        self.lock().snapshot()
    }

    /// Replace the contents with a checkpoint's; logs what could not be restored.
    pub fn restore(&self, snap: OutboxSnapshot) -> RestoreReport {
        if snap.version != SNAPSHOT_VERSION {
            tracing::warn!(
                version = snap.version,
                expected = SNAPSHOT_VERSION,
                "outbox snapshot of another version; reading it anyway"
            );
        }
        let report = self.lock().restore(snap);
        for (target, events) in &report.dropped_targets {
            tracing::warn!(
                target_name = %target,
                events,
                "webhook no longer configured: its undelivered events are dropped"
            );
        }
        if report.missing_events > 0 {
            tracing::error!(
                missing = report.missing_events,
                "outbox snapshot lists events it does not contain; they are lost"
            );
        }
        tracing::info!(restored = report.restored, "outbox restored");
        self.wake_all();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(n: u128) -> Arc<PendingEvent> {
        Arc::new(PendingEvent {
            id: Uuid::from_u128(n),
            transition_id: format!("r/e/{n}/1"),
            body: format!("{{\"n\":{n}}}").into(),
            created_at_ms: n as u64,
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        /// Deliver the head of target i.
        Deliver(usize),
        /// Write target i's evicted events to the dead-letter store.
        DrainEvicted(usize),
        SnapshotRestore,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            3 => (0usize..3).prop_map(Op::Deliver),
            1 => (0usize..3).prop_map(Op::DrainEvicted),
            1 => Just(Op::SnapshotRestore),
        ]
    }

    proptest! {
        /// Against a model: per-target FIFO, bound respected by evicting the oldest, and no
        /// event lost (each is delivered, dead-lettered, pending or evicted) across
        /// snapshot/restore.
        #[test]
        fn queues_behave_like_the_model(ops in proptest::collection::vec(op(), 1..200),
                                         limits in proptest::collection::vec(1usize..6, 3)) {
            let names = ["a", "b", "c"];
            let cfg: Vec<(String, usize)> =
                names.iter().zip(&limits).map(|(n, l)| (n.to_string(), *l)).collect();
            let mut q = Queues::new(&cfg);
            let mut model: Vec<VecDeque<u128>> = vec![VecDeque::new(); 3];
            let mut model_evicted: Vec<Vec<u128>> = vec![vec![]; 3];
            let mut next = 0u128;
            for op in ops {
                match op {
                    Op::Push => {
                        q.push(ev(next));
                        for (i, m) in model.iter_mut().enumerate() {
                            m.push_back(next);
                            while m.len() > limits[i] {
                                model_evicted[i].push(m.pop_front().unwrap());
                            }
                        }
                        next += 1;
                    }
                    Op::Deliver(i) => {
                        let head = q.head(names[i]).map(|e| e.id.as_u128());
                        prop_assert_eq!(head, model[i].front().copied());
                        if let Some(h) = head {
                            prop_assert!(q.complete(names[i], Uuid::from_u128(h)));
                            model[i].pop_front();
                        }
                    }
                    Op::DrainEvicted(i) => {
                        let ev: Vec<u128> =
                            q.evicted(names[i]).iter().map(|e| e.id.as_u128()).collect();
                        prop_assert_eq!(&ev, &model_evicted[i]);
                        for id in ev {
                            prop_assert!(q.complete(names[i], Uuid::from_u128(id)));
                        }
                        model_evicted[i].clear();
                    }
                    Op::SnapshotRestore => {
                        let snap = q.snapshot();
                        // Bodies shared by targets are stored once.
                        let unique: HashSet<Uuid> = snap.events.iter().map(|e| e.id).collect();
                        prop_assert_eq!(unique.len(), snap.events.len());
                        let json = serde_json::to_string(&snap).unwrap();
                        let mut fresh = Queues::new(&cfg);
                        let r = fresh.restore(serde_json::from_str(&json).unwrap());
                        prop_assert_eq!(r.missing_events, 0);
                        q = fresh;
                    }
                }
                for i in 0..3 {
                    prop_assert_eq!(q.pending(names[i]), model[i].len());
                    prop_assert!(q.pending(names[i]) <= limits[i]);
                }
            }
        }
    }

    #[test]
    fn restore_drops_unknown_targets_and_starts_new_ones_empty() {
        let mut q = Queues::new(&[("old".into(), 10), ("kept".into(), 10)]);
        for n in 0..3 {
            q.push(ev(n));
        }
        let snap = q.snapshot();
        assert_eq!(snap.events.len(), 3);
        let mut r = Queues::new(&[("kept".into(), 2), ("new".into(), 10)]);
        let report = r.restore(snap);
        assert_eq!(report.dropped_targets, vec![("old".to_string(), 3)]);
        assert_eq!(r.pending("new"), 0);
        // The smaller bound evicts the oldest at once.
        assert_eq!(r.pending("kept"), 2);
        assert_eq!(r.head("kept").unwrap().id, Uuid::from_u128(1));
        assert_eq!(r.evicted("kept")[0].id, Uuid::from_u128(0));
    }

    #[test]
    fn batch_hands_out_the_oldest_events_and_leaves_them_queued() {
        let mut q = Queues::new(&[("t".into(), 10)]);
        assert!(q.batch("t", 3).is_empty());
        for n in 1..=5 {
            q.push(ev(n));
        }
        let ids = |b: Vec<Arc<PendingEvent>>| b.iter().map(|e| e.id.as_u128()).collect::<Vec<_>>();
        assert_eq!(ids(q.batch("t", 3)), vec![1, 2, 3]);
        assert_eq!(ids(q.batch("t", 99)), vec![1, 2, 3, 4, 5]);
        assert_eq!(q.pending("t"), 5);
        for e in q.batch("t", 2) {
            assert!(q.complete("t", e.id));
        }
        assert_eq!(ids(q.batch("t", 3)), vec![3, 4, 5]);
        assert!(q.batch("unknown", 3).is_empty());
    }

    #[test]
    fn complete_of_an_evicted_in_flight_head_removes_it_from_the_evicted_list() {
        let mut q = Queues::new(&[("t".into(), 1)]);
        q.push(ev(1));
        let head = q.head("t").unwrap();
        q.push(ev(2)); // evicts 1 while it is being delivered
        assert!(q.complete("t", head.id));
        assert!(q.evicted("t").is_empty());
        assert_eq!(q.head("t").unwrap().id, Uuid::from_u128(2));
    }

    #[test]
    fn from_transition_is_deterministic_and_canonical() {
        let t = Transition {
            rule_id: "r".into(),
            rule_version: 1,
            equipment_id: "e".into(),
            previous_state: None,
            state: "ON".into(),
            event_time: 1_000,
            sequence: 1,
            transition_id: linewatch_rules_core::transition::transition_id("r", "e", 1_000, 1),
            groups: vec![],
            values: Default::default(),
            late: false,
        };
        let src = EventSource {
            account: "1".into(),
            region: "x".into(),
        };
        let a = PendingEvent::from_transition(&t, &src, 5);
        let b = PendingEvent::from_transition(&t, &src, 6);
        assert_eq!(a.id, t.event_id());
        assert_eq!(a.body, b.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["id"], t.event_id().to_string());
        assert_eq!(
            v.to_string(),
            &*a.body,
            "re-serialising gives the same bytes"
        );
    }
}
