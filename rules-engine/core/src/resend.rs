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
//! is set, one below the window is a resend. The lanes live in their sender's
//! [`crate::watermark::SenderState`] (found by the tracker's lookup anyway): two
//! words and the equipment id per lane, checkpointed and forgotten with the sender.

use serde::{Deserialize, Serialize};

/// Sequence numbers below a lane's highest that are remembered one by one.
pub const WINDOW: u64 = 64;

/// One lane of a sender: its mark and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lane {
    pub equipment_id: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// The highest sequence number seen.
    pub high: u64,
    /// Bit `i` set: `high − 1 − i` was seen.
    #[serde(default)]
    pub seen: u64,
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

/// Records point `seq` of lane (`equipment_id`, `backfill`) among one sender's
/// `lanes`; false when it is a resend. A sender feeds few equipments: a scan.
///
/// `newer`: the point's event time is past everything its sender sent before. A resend
/// repeats a point already seen, so it never is; such a point with a number its lane
/// has passed comes from a sender that numbers afresh (a gateway reinstalled under the
/// same ids): the lane starts again from it instead of dropping everything it sends.
pub fn admit(
    lanes: &mut Vec<Lane>,
    equipment_id: &str,
    backfill: bool,
    seq: u64,
    newer: bool,
) -> bool {
    match lanes
        .iter_mut()
        .find(|l| l.backfill == backfill && l.equipment_id == equipment_id)
    {
        Some(l) => {
            if l.admit(seq) {
                return true;
            }
            if newer {
                l.high = seq;
                l.seen = 0;
            }
            newer
        }
        None => {
            lanes.push(Lane {
                equipment_id: equipment_id.to_owned(),
                backfill,
                high: seq,
                seen: 0,
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_resent_slice_is_dropped_and_the_lane_flows_on() {
        let mut lanes = Vec::new();
        let admitted: Vec<bool> = [1, 2, 3, 4, 2, 3, 4, 5, 6]
            .into_iter()
            .map(|s| admit(&mut lanes, "filler", false, s, false))
            .collect();
        assert_eq!(
            admitted,
            [true, true, true, true, false, false, false, true, true]
        );
    }

    #[test]
    fn lanes_are_apart_and_a_gap_is_not_a_resend() {
        let mut lanes = Vec::new();
        // One source numbers across equipments: each lane sees gaps, never resends.
        assert!(admit(&mut lanes, "filler", false, 1, false));
        assert!(admit(&mut lanes, "capper", false, 2, false));
        assert!(admit(&mut lanes, "filler", false, 3, false));
        assert!(
            admit(&mut lanes, "filler", true, 2, false),
            "the backfill lane has its own order"
        );
        assert!(!admit(&mut lanes, "filler", false, 3, false));
        assert!(!admit(&mut lanes, "capper", false, 2, false));
        assert!(admit(&mut lanes, "filler", false, 4, false));
        assert_eq!(lanes.len(), 3);
    }

    #[test]
    fn a_sender_numbering_afresh_with_newer_points_is_not_a_resend() {
        let mut lanes = Vec::new();
        assert!(admit(&mut lanes, "e", false, 5_000, false));
        // A reinstalled gateway starts at 1 again, with new readings.
        assert!(admit(&mut lanes, "e", false, 1, true));
        assert!(admit(&mut lanes, "e", false, 2, false));
        // Its resends are still dropped.
        assert!(!admit(&mut lanes, "e", false, 2, false));
    }

    #[test]
    fn within_the_window_a_late_number_is_new_once_and_below_it_a_resend() {
        let mut lanes = Vec::new();
        assert!(admit(&mut lanes, "e", false, 100, false));
        assert!(admit(&mut lanes, "e", false, 100 + WINDOW, false));
        assert!(
            admit(&mut lanes, "e", false, 101, false),
            "inside the window, unseen"
        );
        assert!(!admit(&mut lanes, "e", false, 101, false));
        assert!(
            !admit(&mut lanes, "e", false, 100, false),
            "the old mark, at the window's edge"
        );
        assert!(
            !admit(&mut lanes, "e", false, 99, false),
            "below the window"
        );
        assert!(
            admit(&mut lanes, "e", false, u64::MAX, false),
            "a jump clears the window"
        );
        assert!(!admit(&mut lanes, "e", false, 101 + WINDOW, false));
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
            let mut lanes = Vec::new();
            let passed: Vec<u64> = stream.iter().copied().filter(|&q| admit(&mut lanes, "e", false, q, false)).collect();
            prop_assert_eq!(&passed, &seqs);
        }
    }
}
