//! Watermark + reorder buffer + late-point policy: turns data points in arrival
//! order into data points in event-time order. Pure; the caller passes the clock.

use crate::reading::Reading;
use crate::reorder::ReorderBuffer;
use crate::watermark::{WatermarkConfig, WatermarkSnapshot, WatermarkTracker};
use linewatch_schemas::DataPoint;
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequencerConfig {
    pub watermark: WatermarkConfig,
    pub late_policy: LatePolicy,
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
    /// Late under [`LatePolicy::Apply`]: evaluate it now, at event time `at`.
    Apply { point: DataPoint, at: u64 },
}

#[derive(Debug, Clone)]
pub struct Sequencer {
    tracker: WatermarkTracker,
    buffer: ReorderBuffer<Reading>,
    policy: LatePolicy,
    /// Event time the rules have been brought to: the last released point or the
    /// watermark, whichever is later. Rule changes are applied at this time.
    now_event: u64,
}

/// Serialisable state of a [`Sequencer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SequencerSnapshot {
    pub watermark: WatermarkSnapshot,
    pub buffer: ReorderBuffer<Reading>,
    pub now_event: u64,
}

impl Sequencer {
    pub fn new(cfg: SequencerConfig) -> Self {
        Sequencer {
            tracker: WatermarkTracker::new(cfg.watermark),
            buffer: ReorderBuffer::new(),
            policy: cfg.late_policy,
            now_event: 0,
        }
    }

    pub fn restore(cfg: SequencerConfig, snap: SequencerSnapshot) -> Self {
        Sequencer {
            tracker: WatermarkTracker::restore(cfg.watermark, snap.watermark),
            buffer: snap.buffer,
            policy: cfg.late_policy,
            now_event: snap.now_event,
        }
    }

    pub fn snapshot(&self) -> SequencerSnapshot {
        SequencerSnapshot {
            watermark: self.tracker.snapshot(),
            buffer: self.buffer.clone(),
            now_event: self.now_event,
        }
    }

    pub fn tracker(&self) -> &WatermarkTracker {
        &self.tracker
    }

    pub fn watermark(&self) -> Option<u64> {
        self.tracker.watermark()
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Event time the rules have reached (for applying rule changes).
    pub fn event_now(&self) -> u64 {
        self.now_event
    }

    /// A point arrived at clock `now`.
    pub fn push(&mut self, point: DataPoint, now: u64) -> Admission {
        let late = self.tracker.observe(
            point.meta.gateway_id.as_deref(),
            &point.meta.source_id,
            point.timestamp,
            now,
        );
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

    /// Recompute the watermark at clock `now`; returns it if it moved. Release the
    /// points it passed with [`Sequencer::pop_released`], then bring the rules'
    /// timers to it.
    pub fn advance(&mut self, now: u64) -> Option<u64> {
        let w = self.tracker.advance(now)?;
        self.now_event = self.now_event.max(w);
        Some(w)
    }

    /// End of input: the watermark moves to the highest event time seen.
    pub fn finish(&mut self) -> Option<u64> {
        let w = self.tracker.finish()?;
        self.now_event = self.now_event.max(w);
        Some(w)
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
            watermark: WatermarkConfig {
                max_out_of_orderness: Duration::from_millis(ooo),
                idle_timeout: Duration::from_millis(idle),
            },
            late_policy: policy,
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
