//! The global, idle-aware watermark. Pure: every call gets the clock reading `now`
//! from the caller, so the same arrivals and the same clock give the same watermark.
//!
//! Per sender: the highest event time seen and the clock reading when last seen. On
//! [`WatermarkTracker::advance`]: `watermark = max(previous, min(highest) −
//! maxOutOfOrderness)` over the senders that count, which are those
//! * seen within `idleTimeout` of `now` (active), and
//! * not already behind the watermark (`highest − maxOutOfOrderness ≥ watermark`).
//!
//! The second condition refines the plain min-over-senders rule: a sender returning from idle
//! (or a new sender starting in the past) can only deliver late points until it
//! catches up, so letting it hold the watermark would stall every rule for nothing —
//! the Flink "split waking from idle stalls the watermark" problem. It counts again
//! once it has caught up. When no sender counts, the watermark holds; it never jumps
//! to the maximum.

use crate::pairmap::PairMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The injected clock is the runtime's (one trait for both programs); re-exported here
/// so `linewatch_rules_core::watermark::Clock` keeps naming it.
pub use linewatch_runtime::clock::{Clock, ManualClock, SharedClock, SystemClock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkConfig {
    #[serde(with = "duration_text")]
    pub max_out_of_orderness: Duration,
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_orderness: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What the tracker knows about one sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SenderState {
    pub gateway_id: Option<String>,
    pub source_id: String,
    /// Highest event time seen (data or heartbeat).
    pub highest: u64,
    /// Clock reading of the last arrival.
    pub last_seen: u64,
    pub points: u64,
    pub late: u64,
}

impl SenderState {
    /// `gatewayId/sourceId`, or `sourceId` alone when the point had no gateway.
    pub fn name(&self) -> String {
        match &self.gateway_id {
            Some(g) => format!("{g}/{}", self.source_id),
            None => self.source_id.clone(),
        }
    }
}

/// Serialisable state of a [`WatermarkTracker`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkSnapshot {
    pub watermark: Option<u64>,
    pub senders: Vec<SenderState>,
}

#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    max_ooo: u64,
    idle: u64,
    watermark: Option<u64>,
    senders: Vec<SenderState>,
    /// (gateway — "" when absent, gateway ids are never empty — , source) → index.
    lookup: PairMap<u32>,
    /// Index of the sender of the previous point.
    last: usize,
}

impl WatermarkTracker {
    pub fn new(cfg: WatermarkConfig) -> Self {
        WatermarkTracker {
            max_ooo: cfg.max_out_of_orderness.as_millis() as u64,
            idle: cfg.idle_timeout.as_millis() as u64,
            watermark: None,
            senders: Vec::new(),
            lookup: PairMap::default(),
            last: 0,
        }
    }

    pub fn restore(cfg: WatermarkConfig, snap: WatermarkSnapshot) -> Self {
        let mut t = Self::new(cfg);
        t.watermark = snap.watermark;
        for s in snap.senders {
            let i = t.senders.len() as u32;
            *t.lookup.get_or_insert_with(
                s.gateway_id.as_deref().unwrap_or(""),
                &s.source_id,
                || i,
            ) = i;
            t.senders.push(s);
        }
        t
    }

    pub fn snapshot(&self) -> WatermarkSnapshot {
        WatermarkSnapshot {
            watermark: self.watermark,
            senders: self.senders.clone(),
        }
    }

    /// The watermark: every point at or below it is late. `None` before the first
    /// advance with an active sender.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    pub fn senders(&self) -> &[SenderState] {
        &self.senders
    }

    /// Late points per sender name, senders without late points left out.
    pub fn late_counts(&self) -> BTreeMap<String, u64> {
        self.senders
            .iter()
            .filter(|s| s.late > 0)
            .map(|s| (s.name(), s.late))
            .collect()
    }

    /// Is `ts` late, i.e. at or below the watermark?
    pub fn is_late(&self, ts: u64) -> bool {
        self.watermark.is_some_and(|w| ts <= w)
    }

    /// A point (or heartbeat) with event time `ts` arrived from a sender at clock
    /// `now`. Returns whether it is late; a late point still shows the sender alive.
    pub fn observe(
        &mut self,
        gateway_id: Option<&str>,
        source_id: &str,
        ts: u64,
        now: u64,
    ) -> bool {
        let late = self.is_late(ts);
        let i = self.sender_index(gateway_id, source_id);
        let s = &mut self.senders[i];
        s.highest = s.highest.max(ts);
        s.last_seen = s.last_seen.max(now);
        s.points += 1;
        if late {
            s.late += 1;
        }
        late
    }

    fn sender_index(&mut self, gateway_id: Option<&str>, source_id: &str) -> usize {
        // Points come in runs from one sender (a Kinesis batch, a PLC poll): compare
        // with the previous sender before hashing.
        if let Some(last) = self.senders.get(self.last) {
            if last.source_id == source_id && last.gateway_id.as_deref() == gateway_id {
                return self.last;
            }
        }
        let gw = gateway_id.unwrap_or("");
        if let Some(&i) = self.lookup.get(gw, source_id) {
            self.last = i as usize;
            return i as usize;
        }
        let i = self.senders.len();
        self.senders.push(SenderState {
            gateway_id: gateway_id.map(str::to_owned),
            source_id: source_id.to_owned(),
            highest: 0,
            last_seen: 0,
            points: 0,
            late: 0,
        });
        self.lookup.get_or_insert_with(gw, source_id, || i as u32);
        self.last = i;
        i
    }

    /// The candidate before taking the maximum with the previous watermark, if any
    /// sender counts at clock `now`.
    pub fn candidate(&self, now: u64) -> Option<u64> {
        self.senders
            .iter()
            .filter(|s| now.saturating_sub(s.last_seen) <= self.idle)
            .map(|s| s.highest.saturating_sub(self.max_ooo))
            .filter(|c| self.watermark.is_none_or(|w| *c >= w))
            .min()
    }

    /// Recompute at clock `now`. Returns the new watermark if it moved.
    pub fn advance(&mut self, now: u64) -> Option<u64> {
        let c = self.candidate(now)?;
        match self.watermark {
            Some(w) if c <= w => None,
            _ => {
                self.watermark = Some(c);
                self.watermark
            }
        }
    }

    /// End of input: move the watermark to the highest event time seen, so every
    /// buffered point is released and every hold due by then fires.
    pub fn finish(&mut self) -> Option<u64> {
        let max = self.senders.iter().map(|s| s.highest).max()?;
        match self.watermark {
            Some(w) if max <= w => None,
            _ => {
                self.watermark = Some(max);
                self.watermark
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(ooo: u64, idle: u64) -> WatermarkConfig {
        WatermarkConfig {
            max_out_of_orderness: Duration::from_millis(ooo),
            idle_timeout: Duration::from_millis(idle),
        }
    }

    #[test]
    fn slowest_active_sender_holds_it_back() {
        let mut t = WatermarkTracker::new(cfg(10, 1000));
        t.observe(Some("gw"), "a", 100, 0);
        t.observe(Some("gw"), "b", 50, 0);
        assert_eq!(t.advance(0), Some(40));
        t.observe(Some("gw"), "b", 200, 10);
        assert_eq!(t.advance(10), Some(90));
        assert!(t.is_late(90));
        assert!(!t.is_late(91));
    }

    #[test]
    fn idle_sender_stops_holding_and_all_idle_holds() {
        let mut t = WatermarkTracker::new(cfg(0, 100));
        t.observe(None, "a", 1000, 0);
        t.observe(None, "b", 10, 0);
        assert_eq!(t.advance(0), Some(10));
        t.observe(None, "a", 2000, 150);
        // b last seen at 0, now 150 > idle 100: a alone counts.
        assert_eq!(t.advance(150), Some(2000));
        // Everyone idle: hold, do not jump.
        assert_eq!(t.advance(10_000), None);
        assert_eq!(t.watermark(), Some(2000));
        // b returns with old data: late, counted, and it does not stall a.
        assert!(t.observe(None, "b", 20, 10_000));
        t.observe(None, "a", 2500, 10_000);
        assert_eq!(t.advance(10_000), Some(2500));
        assert_eq!(t.late_counts(), BTreeMap::from([("b".to_string(), 1)]));
    }

    #[test]
    fn finish_moves_to_the_highest_seen() {
        let mut t = WatermarkTracker::new(cfg(5_000, 100));
        t.observe(None, "a", 10_000, 0);
        assert_eq!(t.advance(0), Some(5_000));
        assert_eq!(t.finish(), Some(10_000));
        assert_eq!(t.finish(), None);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut t = WatermarkTracker::new(cfg(5, 100));
        t.observe(Some("g"), "a", 100, 1);
        t.advance(1);
        let snap = t.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let back: WatermarkSnapshot = serde_json::from_str(&json).unwrap();
        let mut r = WatermarkTracker::restore(cfg(5, 100), back);
        assert_eq!(r.watermark(), Some(95));
        assert!(!r.observe(Some("g"), "a", 120, 2));
        assert_eq!(r.senders().len(), 1);
    }

    /// One arrival: sender, event time, clock step.
    fn arrivals() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
        proptest::collection::vec((0u8..4, 0u64..5_000, 0u64..300), 1..200)
    }

    proptest! {
        #[test]
        fn never_decreases_and_never_passes_a_counting_sender(
            steps in arrivals(), ooo in 0u64..500, idle in 1u64..1_000,
        ) {
            let mut t = WatermarkTracker::new(cfg(ooo, idle));
            let mut now = 0;
            let mut prev = None;
            for (s, ts, dt) in steps {
                now += dt;
                t.observe(None, &s.to_string(), ts, now);
                let before = t.watermark();
                let counting: Vec<u64> = t.senders().iter()
                    .filter(|x| now - x.last_seen <= idle)
                    .map(|x| x.highest.saturating_sub(ooo))
                    .filter(|c| before.is_none_or(|w| *c >= w))
                    .collect();
                if let Some(w) = t.advance(now) {
                    // It moved: to no more than any counting sender allows.
                    for c in &counting {
                        prop_assert!(w <= *c);
                    }
                    // And never past an active sender's highest − ooo that it had not passed.
                    for x in t.senders().iter().filter(|x| now - x.last_seen <= idle) {
                        prop_assert!(w <= x.highest.saturating_sub(ooo) || before.is_some_and(|b| b > x.highest.saturating_sub(ooo)));
                    }
                }
                prop_assert!(t.watermark() >= prev);
                prev = t.watermark();
            }
        }

        #[test]
        fn idle_sender_is_ignored_and_late_when_it_returns(
            fast in proptest::collection::vec(1u64..50, 5..50), idle in 10u64..100,
        ) {
            let mut t = WatermarkTracker::new(cfg(0, idle));
            t.observe(None, "slow", 1, 0);
            let mut now = 0;
            let mut ts = 1;
            for step in fast {
                now += step;
                ts += step;
                t.observe(None, "fast", ts, now);
                t.advance(now);
            }
            if now > idle {
                // The slow sender is idle: the watermark follows the fast one.
                prop_assert_eq!(t.watermark(), Some(ts));
                prop_assert!(t.observe(None, "slow", 2, now));
                prop_assert_eq!(t.late_counts().get("slow").copied(), Some(1));
            } else {
                prop_assert_eq!(t.watermark(), Some(1));
            }
        }
    }
}
