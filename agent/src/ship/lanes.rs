//! Live first, the backlog behind it: the decisions of the shipper's two lanes.
//!
//! When the uplink falls behind (the oldest live record waiting for Kinesis is older
//! than `backfill_after`), every buffered record not yet handed out moves to the
//! **backfill lane** (the buffer records the id range durably). From then on newly read
//! points go in the **live lane**, which fills each call first; the backfill spends
//! only what the shard's budget holds above a reserve kept for live data
//! (`backfill_share`). Per partition key, each lane keeps id order on its own.
//!
//! A backfill record is sent with the flag `Bfl`; a live heartbeat sent while a
//! backfill remains declares `meta.lowWatermark`: the oldest event time still unsent,
//! so the rule engine holds the gateway's rules below it until the backlog is in.
//!
//! Pure: bytes in, bytes out, the clock reading passed in.

use linewatch_schemas::{DataPoint, Flag};
use std::time::Duration;

/// The lane a record is read and sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Live,
    Backfill,
}

impl Lane {
    /// Index into per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::Live => 0,
            Lane::Backfill => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Backfill => "backfill",
        }
    }
}

/// The lanes' settings (`[kinesis] backfill_after`, `backfill_share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LanePolicy {
    /// A live record waiting this long means the uplink fell behind. `None`: one lane.
    pub backfill_after: Option<Duration>,
    /// Share of the shard's budget the backfill may use; the rest is kept for live data.
    pub backfill_share: f64,
}

impl LanePolicy {
    /// Whether to move the waiting records to the backfill lane, given when the
    /// oldest live record not yet accepted was made.
    pub fn should_open_backfill(&self, now_ms: u64, oldest_live_created: Option<u64>) -> bool {
        let (Some(after), Some(created)) = (self.backfill_after, oldest_live_created) else {
            return false;
        };
        now_ms.saturating_sub(created) >= after.as_millis() as u64
    }

    /// The share of one second's budget kept for live data.
    pub fn live_reserve(&self) -> f64 {
        (1.0 - self.backfill_share).clamp(0.0, 1.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("buffered record is not a data point: {0}")]
pub struct NotADataPoint(pub String);

/// A backfill record as sent: `Bfl` added to its flags. Returns the new data and the
/// point's event time.
pub fn mark_backfill(data: &[u8]) -> Result<(Vec<u8>, u64), NotADataPoint> {
    let mut p = DataPoint::from_json(data).map_err(|e| NotADataPoint(e.to_string()))?;
    p.meta.flags.insert(Flag::Bfl);
    // Backfill heartbeats are history: they declare nothing about what is unsent.
    p.meta.low_watermark = None;
    Ok((p.to_json(), p.timestamp))
}

/// Cheap test before parsing: heartbeats carry the `Wmk` flag.
pub fn may_be_heartbeat(data: &[u8]) -> bool {
    data.windows(5).any(|w| w == b"\"Wmk\"")
}

/// A live heartbeat as sent while the backfill's oldest unsent event time is `low`
/// (`None`: no backfill left). Returns `None` when the data stays as it is (not a
/// heartbeat, or it already says so). `low` is capped at the heartbeat's own time, as
/// the contract requires (a heartbeat older than the backlog holds its sender below
/// its own time, which is just as safe).
pub fn declare_low_watermark(data: &[u8], low: Option<u64>) -> Option<Vec<u8>> {
    if !may_be_heartbeat(data) {
        return None;
    }
    let mut p = DataPoint::from_json(data).ok()?;
    if !p.is_heartbeat() || p.meta.flags.contains(Flag::Bfl) {
        return None;
    }
    let low = low.map(|l| l.min(p.timestamp));
    if p.meta.low_watermark == low {
        return None;
    }
    p.meta.low_watermark = low;
    Some(p.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(flags: &str, ts: u64) -> Vec<u8> {
        format!(
            r#"{{"version":1,"equipmentId":"m-1","tag":"{tag}","value":{value},"quality":"Ok","timestamp":{ts},"meta":{{"sourceId":"plc","gatewayId":"gw","sequenceNumber":7,"createdAt":{ts},"flags":[{flags}]}}}}"#,
            tag = if flags.contains("Wmk") { "$heartbeat" } else { "temp" },
            value = if flags.contains("Wmk") { "null" } else { "1.5" },
        )
        .into_bytes()
    }

    #[test]
    fn a_backfill_record_is_flagged_and_keeps_everything_else() {
        let (data, ts) = mark_backfill(&point(r#""Fst""#, 1_000)).unwrap();
        let p = DataPoint::from_json(&data).unwrap();
        assert_eq!(ts, 1_000);
        assert!(p.meta.flags.contains(Flag::Bfl) && p.meta.flags.contains(Flag::Fst));
        assert_eq!(p.meta.sequence_number, 7);
        assert_eq!(
            p.value,
            DataPoint::from_json(&point(r#""Fst""#, 1_000))
                .unwrap()
                .value
        );
        assert!(mark_backfill(b"not json").is_err());
    }

    #[test]
    fn live_heartbeats_declare_the_backlog_and_others_stay_as_they_are() {
        let hb = point(r#""Wmk""#, 5_000);
        let declared = declare_low_watermark(&hb, Some(2_000)).unwrap();
        let p = DataPoint::from_json(&declared).unwrap();
        assert_eq!(p.meta.low_watermark, Some(2_000));
        p.validate().unwrap();
        // Capped at its own time: a heartbeat from before the backlog.
        let old = DataPoint::from_json(&declare_low_watermark(&hb, Some(9_000)).unwrap()).unwrap();
        assert_eq!(old.meta.low_watermark, Some(5_000));
        old.validate().unwrap();
        // Backlog gone: the declaration is taken off again.
        let cleared = declare_low_watermark(&declared, None).unwrap();
        assert_eq!(
            DataPoint::from_json(&cleared).unwrap().meta.low_watermark,
            None
        );
        assert_eq!(declare_low_watermark(&hb, None), None, "nothing to change");
        assert_eq!(
            declare_low_watermark(&point(r#""Fst""#, 5_000), Some(1)),
            None
        );
        let (bfl_hb, _) = mark_backfill(&hb).unwrap();
        assert_eq!(
            declare_low_watermark(&bfl_hb, Some(1)),
            None,
            "backfill says nothing"
        );
    }

    proptest! {
        #[test]
        fn the_backfill_opens_exactly_when_the_oldest_live_record_waited_long_enough(
            now in 0u64..1_000_000, created in proptest::option::of(0u64..1_000_000), after_ms in 1u64..60_000,
        ) {
            let p = LanePolicy { backfill_after: Some(Duration::from_millis(after_ms)), backfill_share: 0.8 };
            let want = created.is_some_and(|c| now.saturating_sub(c) >= after_ms);
            prop_assert_eq!(p.should_open_backfill(now, created), want);
            let off = LanePolicy { backfill_after: None, ..p };
            prop_assert!(!off.should_open_backfill(now, created));
        }
    }
}
