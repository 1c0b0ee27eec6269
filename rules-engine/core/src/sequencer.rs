//! Watermark + reorder buffer + late-point policy: turns data points in arrival
//! order into data points in event-time order. Pure; the caller passes the clock.

use crate::clocks::{ClockSnapshot, EquipmentClocks, Reached};
use crate::reading::Reading;
use crate::reorder::ReorderBuffer;
use crate::watermark::{
    FutureRepair, Numbered, Observation, WatermarkConfig, WatermarkSnapshot, WatermarkTracker,
};
use linewatch_schemas::{DataPoint, Flag};
use serde::{Deserialize, Serialize};

/// What happens to a point that arrives at or below the watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    /// Not evaluated; handed back to the caller for its dead-letter output.
    #[default]
    DeadLetter,
    /// Evaluated at once, as of the current watermark (history is not rewritten:
    /// holds and transitions never go back in time).
    Apply,
}

/// Whose senders hold a rule back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatermarkScope {
    /// One watermark for the whole stream: every active sender holds every rule.
    #[default]
    Global,
    /// One clock per equipment, from the senders of that equipment's points (see
    /// [`crate::clocks`]): a rule's run for an equipment waits only for them.
    Equipment,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequencerConfig {
    pub watermark: WatermarkConfig,
    pub late_policy: LatePolicy,
    #[serde(default)]
    pub scope: WatermarkScope,
}

/// One step of releasing what the clocks passed (see [`Sequencer::next_step`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Evaluate this point at its own event time.
    Point(Reading),
    /// Event time reached `to`: for every rule (`equipment: None`, the global
    /// scope) or for the rules' runs of one equipment.
    Reached {
        equipment: Option<std::sync::Arc<str>>,
        to: u64,
    },
}

/// What became of a pushed point.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Waiting for the watermark.
    Buffered,
    /// A heartbeat: it moved its sender, there is nothing to evaluate.
    Heartbeat,
    /// Late under [`LatePolicy::DeadLetter`]: the caller dead-letters it.
    DeadLetter { point: DataPoint, watermark: u64 },
    /// Late under [`LatePolicy::Apply`]: evaluate it now, at event time `at` (the
    /// clock it was late for).
    Apply { point: DataPoint, at: u64 },
    /// Event time beyond its arrival clock plus the allowed skew: refused whatever
    /// the late policy, for the caller's dead-letter output; nothing else changed.
    Future { point: DataPoint, bound: u64 },
    /// Its sender's sequence number was seen before in its lane: the agent sent it
    /// again (see [`crate::resend`]). Dropped; nothing else changed.
    Resend { point: DataPoint },
}

#[derive(Debug, Clone)]
pub struct Sequencer {
    tracker: WatermarkTracker,
    buffer: ReorderBuffer<Reading>,
    policy: LatePolicy,
    /// Event time the rules have been brought to: the last released point or the
    /// watermark, whichever is later. Rule changes are applied at this time.
    now_event: u64,
    /// The `equipment` scope's clocks (and their buffers); `None` in the global scope.
    clocks: Option<EquipmentClocks>,
    /// Global scope: the watermark the last advance moved to, until its release ends.
    releasing: Option<u64>,
}

/// Serialisable state of a [`Sequencer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequencerSnapshot {
    pub watermark: WatermarkSnapshot,
    pub buffer: ReorderBuffer<Reading>,
    pub now_event: u64,
    /// The `equipment` scope's clocks; empty in the global scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clocks: Vec<ClockSnapshot>,
}

impl Sequencer {
    pub fn new(cfg: SequencerConfig) -> Self {
        Sequencer {
            tracker: WatermarkTracker::new(cfg.watermark),
            buffer: ReorderBuffer::new(),
            policy: cfg.late_policy,
            now_event: 0,
            clocks: (cfg.scope == WatermarkScope::Equipment).then(EquipmentClocks::default),
            releasing: None,
        }
    }

    /// From a checkpoint. A checkpoint of the other scope is taken over: the
    /// senders as they were, its buffered points under the new scope's clocks.
    pub fn restore(cfg: SequencerConfig, snap: SequencerSnapshot) -> Self {
        let tracker = WatermarkTracker::restore(cfg.watermark, snap.watermark);
        let mut seq = Sequencer {
            clocks: None,
            buffer: snap.buffer,
            policy: cfg.late_policy,
            now_event: snap.now_event,
            releasing: None,
            tracker,
        };
        let mut moved: Vec<Reading> = Vec::new();
        match cfg.scope {
            WatermarkScope::Global => {
                let mut clocks = EquipmentClocks::restore(snap.clocks, &seq.tracker);
                clocks.finish(u64::MAX);
                while let Some(step) = clocks.pop_released() {
                    if let Ok(p) = step {
                        moved.push(p);
                    }
                }
                for p in moved {
                    seq.buffer.push(p.timestamp, p);
                }
            }
            WatermarkScope::Equipment => {
                let mut clocks = EquipmentClocks::restore(snap.clocks, &seq.tracker);
                while let Some((_, p)) = seq.buffer.pop_through(u64::MAX) {
                    let i = clocks.index(&p.equipment_id);
                    clocks.push(i, p);
                }
                seq.clocks = Some(clocks);
            }
        }
        seq
    }

    pub fn snapshot(&self) -> SequencerSnapshot {
        SequencerSnapshot {
            watermark: self.tracker.snapshot(),
            buffer: self.buffer.clone(),
            now_event: self.now_event,
            clocks: self
                .clocks
                .as_ref()
                .map(|c| c.snapshot(&self.tracker))
                .unwrap_or_default(),
        }
    }

    /// The `equipment` scope's clocks (`None` in the global scope).
    pub fn clocks(&self) -> Option<&EquipmentClocks> {
        self.clocks.as_ref()
    }

    pub fn tracker(&self) -> &WatermarkTracker {
        &self.tracker
    }

    pub fn watermark(&self) -> Option<u64> {
        self.tracker.watermark()
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.clocks.as_ref().map_or(0, EquipmentClocks::buffered)
    }

    /// Event time the rules have reached (for applying rule changes).
    pub fn event_now(&self) -> u64 {
        self.now_event
    }

    /// A point arrived at clock `now`, with no arrival clock of its own (no future
    /// bound).
    pub fn push(&mut self, point: DataPoint, now: u64) -> Admission {
        self.push_arrived(point, now, None)
    }

    /// A point arrived at clock `now`; `arrival` is the arrival clock the future
    /// bound is measured from (the record's, so that re-reading decides the same).
    pub fn push_arrived(&mut self, point: DataPoint, now: u64, arrival: Option<u64>) -> Admission {
        let seen = self.tracker.observe_numbered(
            point.meta.gateway_id.as_deref(),
            &point.meta.source_id,
            Some(Numbered {
                equipment_id: &point.equipment_id,
                backfill: point.meta.flags.contains(Flag::Bfl),
                sequence_number: point.meta.sequence_number,
            }),
            point.timestamp,
            now,
            arrival,
        );
        let late = match seen {
            Observation::Resend => return Admission::Resend { point },
            Observation::Future { bound } => return Admission::Future { point, bound },
            Observation::Late => true,
            Observation::OnTime => false,
        };
        // A backfill heartbeat is history: it says nothing about what is unsent now.
        if point.is_heartbeat() && !point.meta.flags.contains(Flag::Bfl) {
            self.tracker.declare_low_watermark(point.meta.low_watermark);
        }
        if let Some(clocks) = &mut self.clocks {
            return Self::admit_to_clock(clocks, &mut self.tracker, self.policy, point);
        }
        if point.is_heartbeat() {
            return Admission::Heartbeat;
        }
        if !late {
            self.buffer.push(point.timestamp, Reading::from(point));
            return Admission::Buffered;
        }
        let watermark = self.tracker.watermark().unwrap_or(point.timestamp);
        match self.policy {
            LatePolicy::DeadLetter => Admission::DeadLetter { point, watermark },
            LatePolicy::Apply => Admission::Apply {
                point,
                at: watermark,
            },
        }
    }

    /// The `equipment` scope: lateness and buffering by the point's equipment clock
    /// (the tracker judged it by the global watermark, which does not apply here).
    fn admit_to_clock(
        clocks: &mut EquipmentClocks,
        tracker: &mut WatermarkTracker,
        policy: LatePolicy,
        point: DataPoint,
    ) -> Admission {
        let i = clocks.index(&point.equipment_id);
        clocks.fed_by(i, tracker, tracker.last_sender());
        if point.is_heartbeat() {
            return Admission::Heartbeat;
        }
        let late_globally = tracker.is_late(point.timestamp);
        let late = clocks.is_late(i, point.timestamp);
        if late != late_globally {
            tracker.recount_late(late);
        }
        if !late {
            clocks.push(i, Reading::from(point));
            return Admission::Buffered;
        }
        let at = clocks.at(i).unwrap_or(point.timestamp);
        match policy {
            LatePolicy::DeadLetter => Admission::DeadLetter {
                point,
                watermark: at,
            },
            LatePolicy::Apply => Admission::Apply { point, at },
        }
    }

    /// Recompute the watermark at clock `now`; returns it if it moved. Release the
    /// points it passed with [`Sequencer::pop_released`], then bring the rules'
    /// timers to it. Global scope only; [`Sequencer::step`] serves both.
    pub fn advance(&mut self, now: u64) -> Option<u64> {
        let w = self.tracker.advance(now)?;
        self.now_event = self.now_event.max(w);
        Some(w)
    }

    /// Recompute the clocks at clock reading `now`; then take what they released
    /// with [`Sequencer::next_step`] until it returns `None`. Returns whether any
    /// clock moved. Either scope.
    pub fn step(&mut self, now: u64) -> bool {
        let global = self.advance(now);
        match &mut self.clocks {
            None => {
                self.releasing = global.or(self.releasing);
                self.releasing.is_some()
            }
            Some(clocks) => {
                let moved = clocks.advance(&self.tracker, now);
                if let Some((_, hi)) = clocks.range() {
                    self.now_event = self.now_event.max(hi);
                }
                moved
            }
        }
    }

    /// After [`Sequencer::step`] or [`Sequencer::finish`]: the next point to evaluate,
    /// in event-time order per clock, then each clock that moved.
    pub fn next_step(&mut self) -> Option<Step> {
        match &mut self.clocks {
            None => {
                let w = self.releasing?;
                if let Some((_, p)) = self.buffer.pop_through(w) {
                    return Some(Step::Point(p));
                }
                self.buffer.shrink();
                self.releasing = None;
                Some(Step::Reached {
                    equipment: None,
                    to: w,
                })
            }
            Some(clocks) => Some(match clocks.pop_released()? {
                Ok(p) => Step::Point(p),
                Err(Reached { equipment_id, to }) => Step::Reached {
                    equipment: Some(equipment_id),
                    to,
                },
            }),
        }
    }

    /// After a restore at arrival clock `now`: undo a watermark poisoned by a future
    /// point before the bound existed (see [`WatermarkTracker::repair_future`]).
    /// Buffered points beyond the bound are dropped (returned as their count): they
    /// are the poison, and a reading keeps no sender to dead-letter them under.
    pub fn repair_future(&mut self, now: u64) -> (FutureRepair, usize) {
        let repair = self.tracker.repair_future(now);
        let bound = self.tracker.future_bound(now);
        let mut dropped = 0;
        if self.buffer.latest().is_some_and(|l| l > bound) {
            let mut kept = ReorderBuffer::new();
            while let Some((ts, r)) = self.buffer.pop_through(u64::MAX) {
                if ts > bound {
                    dropped += 1;
                } else {
                    kept.push(ts, r);
                }
            }
            self.buffer = kept;
        }
        if self.now_event > bound {
            self.now_event = self.tracker.watermark().unwrap_or(now).min(bound);
        }
        if let Some(clocks) = &mut self.clocks {
            dropped += clocks.repair_future(bound, self.tracker.watermark());
        }
        (repair, dropped)
    }

    /// End of input: the watermark (every clock) moves to the highest event time
    /// seen; take the release with [`Sequencer::next_step`].
    pub fn finish(&mut self) -> Option<u64> {
        let w = self.tracker.finish();
        if let Some(w) = w {
            self.now_event = self.now_event.max(w);
            self.releasing = Some(w);
        }
        if let (Some(clocks), Some(max)) = (&mut self.clocks, self.tracker.highest()) {
            clocks.finish(max);
        }
        w
    }

    /// Next point passed by the watermark, in event-time order.
    pub fn pop_released(&mut self) -> Option<Reading> {
        let w = self.tracker.watermark()?;
        match self.buffer.pop_through(w) {
            Some((_, p)) => Some(p),
            None => {
                self.buffer.shrink();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linewatch_schemas::{Flag, Flags, Meta, Quality, Value};
    use proptest::prelude::*;
    use std::time::Duration;

    fn point(source: &str, ts: u64, n: u64, heartbeat: bool) -> DataPoint {
        DataPoint {
            version: 1,
            timestamp: ts,
            equipment_id: "e".into(),
            tag: if heartbeat {
                "$heartbeat".into()
            } else {
                "t".into()
            },
            value: if heartbeat {
                Value::Null
            } else {
                Value::Int(n as i64)
            },
            quality: Quality::Ok,
            meta: Meta {
                sequence_number: n,
                flags: if heartbeat {
                    Flags::empty().with(Flag::Wmk)
                } else {
                    Flags::empty()
                },
                created_at: ts,
                source_id: source.into(),
                gateway_id: None,
                raw_quality: None,
                low_watermark: None,
            },
        }
    }

    /// The test's points carry their arrival number as value.
    fn arrival(r: &Reading) -> u64 {
        match r.value {
            Value::Int(n) => n as u64,
            _ => u64::MAX,
        }
    }

    fn seq(ooo: u64, idle: u64, policy: LatePolicy) -> Sequencer {
        Sequencer::new(SequencerConfig {
            watermark: WatermarkConfig::with(
                Duration::from_millis(ooo),
                Duration::from_millis(idle),
            ),
            late_policy: policy,
            scope: WatermarkScope::Global,
        })
    }

    #[test]
    fn heartbeats_advance_a_sender_without_being_released() {
        let mut s = seq(0, 1_000, LatePolicy::DeadLetter);
        assert_eq!(s.push(point("a", 10, 1, false), 0), Admission::Buffered);
        assert_eq!(s.push(point("b", 5, 2, false), 0), Admission::Buffered);
        assert_eq!(s.advance(0), Some(5));
        assert_eq!(s.pop_released().map(|p| p.timestamp), Some(5));
        assert_eq!(s.pop_released(), None);
        // b has no data, but its heartbeat says its clock reached 20.
        assert_eq!(s.push(point("b", 20, 3, true), 1), Admission::Heartbeat);
        assert_eq!(s.advance(1), Some(10));
        assert_eq!(s.pop_released().map(|p| p.timestamp), Some(10));
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_resent_point_is_dropped_and_changes_nothing_while_a_backfill_lane_is_apart() {
        let mut s = seq(0, 1_000, LatePolicy::DeadLetter);
        assert_eq!(s.push(point("a", 10, 1, false), 0), Admission::Buffered);
        assert_eq!(s.push(point("a", 20, 2, false), 0), Admission::Buffered);
        let highest = |s: &Sequencer| s.tracker().senders()[0].highest;
        let before = (s.watermark(), highest(&s));
        // The agent sent 1 and 2 again: byte-identical copies.
        assert!(matches!(
            s.push(point("a", 10, 1, false), 0),
            Admission::Resend { .. }
        ));
        assert!(matches!(
            s.push(point("a", 20, 2, false), 0),
            Admission::Resend { .. }
        ));
        assert_eq!((s.watermark(), highest(&s)), before);
        assert_eq!(s.buffered(), 2);
        assert_eq!(s.tracker().senders()[0].resent, 2);
        // The same number in the backfill lane is that lane's own.
        let mut backfill = point("a", 15, 2, false);
        backfill.meta.flags.insert(Flag::Bfl);
        assert_eq!(s.push(backfill, 0), Admission::Buffered);
        // The checkpoint keeps the lanes: a resend after a restore is still one.
        let mut r = Sequencer::restore(
            SequencerConfig {
                watermark: WatermarkConfig::with(Duration::ZERO, Duration::from_millis(1_000)),
                late_policy: LatePolicy::DeadLetter,
                scope: WatermarkScope::Global,
            },
            s.snapshot(),
        );
        assert!(matches!(
            r.push(point("a", 20, 2, false), 0),
            Admission::Resend { .. }
        ));
        assert_eq!(r.push(point("a", 30, 3, false), 0), Admission::Buffered);
    }

    fn on(source: &str, equipment: &str, ts: u64, n: u64, heartbeat: bool) -> DataPoint {
        let mut p = point(source, ts, n, heartbeat);
        p.equipment_id = equipment.into();
        p
    }

    fn per_equipment(ooo: u64, idle: u64) -> Sequencer {
        Sequencer::new(SequencerConfig {
            watermark: WatermarkConfig::with(
                Duration::from_millis(ooo),
                Duration::from_millis(idle),
            ),
            late_policy: LatePolicy::DeadLetter,
            scope: WatermarkScope::Equipment,
        })
    }

    /// Every step until the release ends, as (equipment or "*", time) for clocks and
    /// ("point", timestamp) for points.
    fn released(s: &mut Sequencer, now: u64) -> Vec<(String, u64)> {
        s.step(now);
        let mut out = Vec::new();
        while let Some(step) = s.next_step() {
            out.push(match step {
                Step::Point(p) => (format!("point {}", p.equipment_id), p.timestamp),
                Step::Reached { equipment, to } => {
                    (equipment.map_or("*".to_owned(), |e| e.to_string()), to)
                }
            });
        }
        out.sort();
        out
    }

    #[test]
    fn per_equipment_a_slow_sender_holds_back_only_its_own_equipment() {
        let mut s = per_equipment(0, 10_000);
        assert_eq!(s.push(on("a", "ea", 100, 1, false), 0), Admission::Buffered);
        assert_eq!(s.push(on("b", "eb", 10, 1, false), 0), Admission::Buffered);
        assert_eq!(
            released(&mut s, 0),
            [
                ("ea".to_owned(), 100),
                ("eb".to_owned(), 10),
                ("point ea".to_owned(), 100),
                ("point eb".to_owned(), 10),
            ]
        );
        // The global minimum is b's; a's equipment did not wait for it.
        assert_eq!(s.watermark(), Some(10));
        let clocks = s.clocks().expect("equipment scope");
        assert_eq!(
            (clocks.clock_of("ea"), clocks.clock_of("eb")),
            (Some(100), Some(10))
        );
        // A point of a's equipment at 50 is late for it; one of b's at 50 is not.
        assert!(matches!(
            s.push(on("a", "ea", 50, 2, false), 0),
            Admission::DeadLetter { watermark: 100, .. }
        ));
        assert_eq!(s.push(on("b", "eb", 50, 2, false), 0), Admission::Buffered);
        assert_eq!(s.tracker().late_counts().get("a"), Some(&1));
        assert_eq!(s.tracker().late_counts().get("b"), None);
    }

    #[test]
    fn a_declared_low_watermark_holds_its_sender_below_the_backlog() {
        let mut s = per_equipment(0, 10_000);
        s.push(on("b", "eb", 10, 1, false), 0);
        released(&mut s, 0);
        // Back with live data and a heartbeat: points from 50 on are still to come.
        let mut hb = on("b", "eb", 200, 2, true);
        hb.meta.low_watermark = Some(50);
        assert_eq!(s.push(hb, 1), Admission::Heartbeat);
        assert_eq!(s.push(on("b", "eb", 200, 3, false), 1), Admission::Buffered);
        assert_eq!(released(&mut s, 1), [("eb".to_owned(), 49)]);
        let mut backlog = on("b", "eb", 50, 1, false);
        backlog.meta.flags.insert(Flag::Bfl);
        assert_eq!(s.push(backlog, 1), Admission::Buffered, "on time");
        // A heartbeat of the backlog declares nothing, but the backlog has come up to
        // its time (less maxOutOfOrderness, 0 here): the wait rises with the drain.
        let mut old_hb = on("b", "eb", 60, 2, true);
        old_hb.meta.flags.insert(Flag::Bfl);
        assert_eq!(s.push(old_hb, 1), Admission::Heartbeat);
        assert_eq!(
            released(&mut s, 1),
            [("eb".to_owned(), 59), ("point eb".to_owned(), 50)]
        );
        // The backlog is gone: a heartbeat without the field lets the clock go on.
        assert_eq!(s.push(on("b", "eb", 201, 4, true), 2), Admission::Heartbeat);
        assert_eq!(
            released(&mut s, 2),
            [("eb".to_owned(), 201), ("point eb".to_owned(), 200)]
        );
    }

    #[test]
    fn a_sender_back_from_idle_waits_the_grace_for_its_backlog_declaration() {
        let mut s = per_equipment(0, 1_000);
        s.push(on("b", "eb", 10, 1, false), 0);
        released(&mut s, 0);
        // Back after an outage; its live point comes before any heartbeat (another
        // shard). For firstSeenGrace (5 s) it counts only as far as before.
        assert_eq!(
            s.push(on("b", "eb", 9_000, 2, false), 5_000),
            Admission::Buffered
        );
        assert_eq!(released(&mut s, 5_000), Vec::<(String, u64)>::new());
        let mut hb = on("b", "eb", 9_000, 3, true);
        hb.meta.low_watermark = Some(20);
        s.push(hb, 6_000);
        assert_eq!(released(&mut s, 6_000), [("eb".to_owned(), 19)]);
        let mut backlog = on("b", "eb", 20, 1, false);
        backlog.meta.flags.insert(Flag::Bfl);
        assert_eq!(s.push(backlog, 6_000), Admission::Buffered, "on time");
        // Without a declaration the grace ends and the clock follows the live data.
        let mut t = per_equipment(0, 3_000);
        t.push(on("c", "ec", 10, 1, false), 0);
        released(&mut t, 0);
        t.push(on("c", "ec", 9_000, 2, false), 5_000);
        t.push(on("c", "ec", 9_500, 3, false), 7_000);
        t.push(on("c", "ec", 9_600, 4, false), 9_000);
        assert_eq!(released(&mut t, 9_000), Vec::<(String, u64)>::new());
        t.push(on("c", "ec", 9_700, 5, false), 10_001);
        assert_eq!(
            released(&mut t, 10_001),
            [
                ("ec".to_owned(), 9_700),
                ("point ec".to_owned(), 9_000),
                ("point ec".to_owned(), 9_500),
                ("point ec".to_owned(), 9_600),
                ("point ec".to_owned(), 9_700),
            ]
        );
        // Any heartbeat ends the wait: it would have declared a backlog if there was one.
        let mut u = per_equipment(0, 3_000);
        u.push(on("d", "ed", 10, 1, false), 0);
        released(&mut u, 0);
        u.push(on("d", "ed", 9_000, 2, false), 5_000);
        u.push(on("d", "ed", 9_000, 3, true), 5_100);
        assert_eq!(
            released(&mut u, 5_100),
            [("ed".to_owned(), 9_000), ("point ed".to_owned(), 9_000)]
        );
    }

    #[test]
    fn late_points_follow_the_policy() {
        let mut s = seq(0, 1_000, LatePolicy::DeadLetter);
        s.push(point("a", 100, 1, false), 0);
        s.advance(0);
        assert!(matches!(
            s.push(point("a", 100, 2, false), 0),
            Admission::DeadLetter { watermark: 100, .. }
        ));
        let mut s = seq(0, 1_000, LatePolicy::Apply);
        s.push(point("a", 100, 1, false), 0);
        s.advance(0);
        assert!(matches!(
            s.push(point("a", 50, 2, false), 0),
            Admission::Apply { at: 100, .. }
        ));
        assert_eq!(s.tracker().late_counts().get("a"), Some(&1));
    }

    #[test]
    fn a_future_point_is_refused_whatever_the_policy_and_changes_nothing() {
        for policy in [LatePolicy::DeadLetter, LatePolicy::Apply] {
            let mut s = seq(0, 1_000, policy);
            assert_eq!(
                s.push_arrived(point("a", 100, 1, false), 0, Some(100)),
                Admission::Buffered
            );
            // Year 3000 from the same sender, arriving at 100.
            let far = 32_503_680_000_000;
            assert!(matches!(
                s.push_arrived(point("a", far, 2, false), 0, Some(100)),
                Admission::Future { bound, .. } if bound == 100 + 300_000
            ));
            assert_eq!(s.advance(0), Some(100));
            // Honest points after it are on time.
            assert_eq!(
                s.push_arrived(point("a", 200, 3, false), 0, Some(200)),
                Admission::Buffered
            );
            assert_eq!(s.advance(0), Some(200));
            assert_eq!(s.tracker().senders()[0].future, 1);
            assert_eq!(s.tracker().senders()[0].highest, 200);
        }
    }

    #[test]
    fn repair_undoes_a_poisoned_checkpoint() {
        // What an engine without the bound checkpointed after a year-3000 point.
        let mut s = seq(0, 1_000, LatePolicy::DeadLetter);
        s.push(point("honest", 1_000, 1, false), 0);
        s.push(point("honest", 2_000, 2, false), 0);
        s.advance(0);
        while s.pop_released().is_some() {}
        let far = 32_503_680_000_000;
        s.push(point("liar", far, 3, false), 0);
        s.push(point("honest", far, 4, false), 0);
        s.advance(0);
        while s.pop_released().is_some() {}
        s.push(point("liar", far + 1, 5, false), 0);
        assert_eq!(s.watermark(), Some(far));
        let snap = serde_json::to_string(&s.snapshot()).unwrap();
        let mut r = Sequencer::restore(
            SequencerConfig::default(),
            serde_json::from_str(&snap).unwrap(),
        );
        let (repair, dropped) = r.repair_future(10_000);
        assert_eq!(repair.watermark_was, Some(far));
        assert_eq!(repair.senders_forgotten, ["honest", "liar"]);
        assert_eq!(dropped, 1, "the buffered future point");
        assert_eq!(r.watermark(), None);
        assert!(r.event_now() <= 10_000 + 300_000);
        // Honest points are on time again and move the watermark.
        assert_eq!(
            r.push_arrived(point("honest", 9_000, 6, false), 10_000, Some(10_000)),
            Admission::Buffered
        );
        assert_eq!(r.advance(10_000), Some(7_000));
        // A clean checkpoint is left alone.
        assert!(r.repair_future(10_000).0.is_empty());
    }

    proptest! {
        #[test]
        fn released_in_event_time_order_stably_and_nothing_lost(
            arrivals in proptest::collection::vec((0u8..3, 0u64..2_000, 0u64..50, any::<bool>()), 1..300),
            ooo in 0u64..300,
            idle in 1u64..500,
        ) {
            let mut s = seq(ooo, idle, LatePolicy::DeadLetter);
            let mut now = 0;
            let mut buffered = 0;
            let mut released: Vec<(u64, u64)> = Vec::new();
            for (n, (src, ts, dt, hb)) in arrivals.into_iter().enumerate() {
                now += dt;
                let before = s.watermark();
                match s.push(point(&src.to_string(), ts, n as u64, hb), now) {
                    Admission::Buffered => {
                        prop_assert!(before.is_none_or(|w| ts > w));
                        buffered += 1;
                    }
                    Admission::DeadLetter { watermark, .. } => prop_assert!(ts <= watermark),
                    Admission::Heartbeat => prop_assert!(hb),
                    Admission::Apply { .. } => prop_assert!(false, "policy is dead-letter"),
                    Admission::Future { .. } => prop_assert!(false, "no arrival clock, no bound"),
                    Admission::Resend { .. } => prop_assert!(false, "every number is new"),
                }
                if n % 3 == 0 {
                    if let Some(w) = s.advance(now) {
                        while let Some(p) = s.pop_released() {
                            prop_assert!(p.timestamp <= w);
                            released.push((p.timestamp, arrival(&p)));
                        }
                    }
                }
            }
            s.finish();
            while let Some(p) = s.pop_released() {
                released.push((p.timestamp, arrival(&p)));
            }
            // Sorted by time, ties in arrival order (arrival number = sequence here).
            let mut sorted = released.clone();
            sorted.sort();
            prop_assert_eq!(&released, &sorted);
            prop_assert_eq!(released.len(), buffered);
        }
    }
}
