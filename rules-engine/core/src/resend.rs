//! Drops the agent's resends. An agent that cannot know whether Kinesis took a call
//! (a timeout, a lost response) sends it again, so the stream may hold a point twice,
//! byte for byte, under the same `(gatewayId, sourceId, sequenceNumber)`.
//!
//! What this relies on: the agent numbers a source's points strictly upwards, and the
//! points of one lane — one source's points for one equipment, live or backfill (flag
//! `Bfl`) — arrive in the order they were numbered, except for resent slices. That
//! holds because a lane is one partition key (one shard, read parents first after a
//! reshard), and the agent keeps a key's later points behind a failed one. So per
//! lane a high-water mark plus a window of the last [`WINDOW`] numbers below it is
//! enough: a number above the mark is new, one in the window is new unless its bit
//! is set, one below the window is a resend. Memory: two words per lane, and lanes
//! not seen for a while are forgotten with their sender.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Sequence numbers below a lane's highest that are remembered one by one.
pub const WINDOW: u64 = 64;

/// One lane's mark and window, with its key (for the checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lane {
    pub gateway_id: Option<String>,
    pub source_id: String,
    pub equipment_id: String,
    pub backfill: bool,
    /// The highest sequence number seen.
    pub high: u64,
    /// Bit `i` set: `high − 1 − i` was seen.
    pub seen: u64,
    /// Clock reading of the last point.
    pub last_seen: u64,
}

impl Lane {
    /// Records `seq`; false when it was seen before (a resend).
    fn admit(&mut self, seq: u64) -> bool {
        if seq > self.high {
            let shift = seq - self.high;
            // The old mark becomes bit `shift − 1`; what falls off the window is forgotten.
            self.seen = match shift {
                1..WINDOW => (self.seen << shift) | (1 << (shift - 1)),
                WINDOW => 1 << (WINDOW - 1),
                _ => 0,
            };
            self.high = seq;
            return true;
        }
        let below = self.high - seq;
        if below == 0 || below > WINDOW {
            return false;
        }
        let bit = 1u64 << (below - 1);
        let new = self.seen & bit == 0;
        self.seen |= bit;
        new
    }
}

/// The lanes of every sender, for [`crate::sequencer::Sequencer`].
#[derive(Debug, Clone, Default)]
pub struct ResendFilter {
    lanes: Vec<Lane>,
    lookup: HashMap<Box<str>, u32>,
    /// Reused to build lookup keys without allocating per point.
    key: String,
    last: Option<usize>,
    /// No lane was seen before this (a lower bound: lanes only get newer), so a
    /// prune before it has nothing to do and costs nothing.
    oldest: u64,
    /// Resends dropped since start.
    dropped: u64,
}

/// Serialisable state of a [`ResendFilter`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResendSnapshot {
    pub lanes: Vec<Lane>,
}

/// Where a point belongs.
#[derive(Debug, Clone, Copy)]
pub struct LaneOf<'a> {
    pub gateway_id: Option<&'a str>,
    pub source_id: &'a str,
    pub equipment_id: &'a str,
    pub backfill: bool,
}

impl ResendFilter {
    pub fn restore(snap: ResendSnapshot) -> ResendFilter {
        let mut f = ResendFilter {
            lanes: snap.lanes,
            ..ResendFilter::default()
        };
        f.rebuild();
        f.oldest = f.lanes.iter().map(|l| l.last_seen).min().unwrap_or(0);
        f
    }

    pub fn snapshot(&self) -> ResendSnapshot {
        ResendSnapshot {
            lanes: self.lanes.clone(),
        }
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Resends dropped since start (not checkpointed: a metric's counter).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records point `seq` of `lane` at clock `now`; false when it is a resend.
    pub fn admit(&mut self, lane: LaneOf<'_>, seq: u64, now: u64) -> bool {
        let (i, created) = self.index(lane, seq, now);
        let l = &mut self.lanes[i];
        l.last_seen = l.last_seen.max(now);
        let new = created || l.admit(seq);
        if !new {
            self.dropped += 1;
        }
        new
    }

    /// Forgets lanes not seen since `before` (their senders are forgotten too).
    pub fn prune(&mut self, before: u64) {
        if before <= self.oldest {
            return;
        }
        let n = self.lanes.len();
        self.lanes.retain(|l| l.last_seen >= before);
        if self.lanes.len() != n {
            self.rebuild();
        }
        self.oldest = self
            .lanes
            .iter()
            .map(|l| l.last_seen)
            .min()
            .unwrap_or(before);
    }

    /// The lane's index, and whether it was made for this point.
    fn index(&mut self, lane: LaneOf<'_>, seq: u64, now: u64) -> (usize, bool) {
        // Points come in runs of one lane (a Kinesis batch of one key): compare first.
        if let Some(l) = self.last.and_then(|i| self.lanes.get(i)) {
            if l.source_id == lane.source_id
                && l.equipment_id == lane.equipment_id
                && l.backfill == lane.backfill
                && l.gateway_id.as_deref() == lane.gateway_id
            {
                return (self.last.unwrap_or_default(), false);
            }
        }
        write_key(&mut self.key, lane);
        let (i, created) = match self.lookup.get(self.key.as_str()) {
            Some(&i) => (i as usize, false),
            None => {
                let i = self.lanes.len();
                self.lanes.push(Lane {
                    gateway_id: lane.gateway_id.map(str::to_owned),
                    source_id: lane.source_id.to_owned(),
                    equipment_id: lane.equipment_id.to_owned(),
                    backfill: lane.backfill,
                    high: seq,
                    seen: 0,
                    last_seen: now,
                });
                self.lookup.insert(self.key.as_str().into(), i as u32);
                (i, true)
            }
        };
        self.last = Some(i);
        (i, created)
    }

    fn rebuild(&mut self) {
        self.lookup.clear();
        for (i, l) in self.lanes.iter().enumerate() {
            write_key(
                &mut self.key,
                LaneOf {
                    gateway_id: l.gateway_id.as_deref(),
                    source_id: &l.source_id,
                    equipment_id: &l.equipment_id,
                    backfill: l.backfill,
                },
            );
            self.lookup.insert(self.key.as_str().into(), i as u32);
        }
        self.last = None;
    }
}

/// Ids are never empty and hold no NUL (the data point's checks), so NUL separates them.
fn write_key(key: &mut String, lane: LaneOf<'_>) {
    key.clear();
    key.push_str(lane.gateway_id.unwrap_or(""));
    key.push('\0');
    key.push_str(lane.source_id);
    key.push('\0');
    key.push_str(lane.equipment_id);
    key.push(if lane.backfill { '\u{1}' } else { '\0' });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lane(eq: &str) -> LaneOf<'_> {
        LaneOf {
            gateway_id: Some("gw"),
            source_id: "plc",
            equipment_id: eq,
            backfill: false,
        }
    }

    #[test]
    fn a_resent_slice_is_dropped_and_the_lane_flows_on() {
        let mut f = ResendFilter::default();
        let admitted: Vec<bool> = [1, 2, 3, 4, 2, 3, 4, 5, 6]
            .into_iter()
            .map(|s| f.admit(lane("filler"), s, 0))
            .collect();
        assert_eq!(
            admitted,
            [true, true, true, true, false, false, false, true, true]
        );
        assert_eq!(f.dropped(), 3);
    }

    #[test]
    fn lanes_are_apart_a_gap_is_not_a_resend_and_the_checkpoint_keeps_them() {
        let mut f = ResendFilter::default();
        // One source numbers across equipments: each lane sees gaps, never resends.
        assert!(f.admit(lane("filler"), 1, 0));
        assert!(f.admit(lane("capper"), 2, 0));
        assert!(f.admit(lane("filler"), 3, 0));
        let backfill = LaneOf {
            backfill: true,
            ..lane("filler")
        };
        assert!(
            f.admit(backfill, 2, 0),
            "the backfill lane has its own order"
        );
        let mut g = ResendFilter::restore(f.snapshot());
        assert!(!g.admit(lane("filler"), 3, 0));
        assert!(!g.admit(lane("capper"), 2, 0));
        assert!(g.admit(lane("filler"), 4, 0));
        assert_eq!(g.lanes(), 3);
    }

    #[test]
    fn within_the_window_a_late_number_is_new_once_and_below_it_a_resend() {
        let mut f = ResendFilter::default();
        assert!(f.admit(lane("e"), 100, 0));
        assert!(f.admit(lane("e"), 100 + WINDOW, 0));
        assert!(f.admit(lane("e"), 101, 0), "inside the window, unseen");
        assert!(!f.admit(lane("e"), 101, 0));
        assert!(
            !f.admit(lane("e"), 100, 0),
            "the old mark, at the window's edge"
        );
        assert!(!f.admit(lane("e"), 99, 0), "below the window");
    }

    #[test]
    fn lanes_not_seen_are_pruned() {
        let mut f = ResendFilter::default();
        f.admit(lane("a"), 1, 10);
        f.admit(lane("b"), 2, 20);
        f.prune(15);
        assert_eq!(f.lanes(), 1);
        assert!(!f.admit(lane("b"), 2, 30));
        assert!(f.admit(lane("a"), 1, 30), "forgotten: starts afresh");
    }

    proptest! {
        /// Any numbering, resent in slices that repeat up to WINDOW recent points:
        /// exactly the first copy of each number passes.
        #[test]
        fn exactly_first_copies_pass(
            steps in proptest::collection::vec(1u64..5, 1..200),
            resends in proptest::collection::vec((0usize..200, 1usize..=WINDOW as usize), 0..10),
        ) {
            let mut seqs = Vec::new();
            let mut s = 0;
            for d in steps {
                s += d;
                seqs.push(s);
            }
            // Stream: each resend repeats the `len` numbers before position `at`.
            let mut stream = Vec::new();
            for (i, &seq) in seqs.iter().enumerate() {
                for &(at, len) in &resends {
                    if at == i {
                        stream.extend_from_slice(&seqs[i.saturating_sub(len)..i]);
                    }
                }
                stream.push(seq);
            }
            let mut f = ResendFilter::default();
            let passed: Vec<u64> = stream.iter().copied().filter(|&q| f.admit(lane("e"), q, 0)).collect();
            prop_assert_eq!(&passed, &seqs);
            prop_assert_eq!(f.dropped() as usize, stream.len() - seqs.len());
        }
    }
}
