//! Readings become data points v1: event time, createdAt, per-source sequence numbers.
//!
//! The [`Normalizer`] is pure: the caller passes the clock reading, and the
//! sequence counters it starts from (restored from the disk buffer, which stores
//! them in the same atomic group commit as the points, so a restart continues
//! exactly after the last durable point).

use crate::sources::Reading;
use linewatch_schemas::{DataPoint, Flag, Meta, Quality, Value, DATAPOINT_VERSION};
use std::collections::HashMap;
use std::sync::Arc;

/// Turns [`Reading`]s into [`DataPoint`]s and numbers them per source.
#[derive(Debug, Clone)]
pub struct Normalizer {
    gateway_id: String,
    /// Next sequence number to hand out, per `sourceId`.
    next: HashMap<Arc<str>, u64>,
}

impl Normalizer {
    /// `restored` maps a source id to the next sequence number to use (as persisted
    /// by the buffer). Sequence numbers start at 1; a restored 0 is read as 1.
    pub fn new(gateway_id: impl Into<String>, restored: HashMap<String, u64>) -> Self {
        let next = restored
            .into_iter()
            .map(|(source, next)| (Arc::<str>::from(source), next.max(1)))
            .collect();
        Normalizer {
            gateway_id: gateway_id.into(),
            next,
        }
    }

    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The sequence number the next point of `source` will get.
    pub fn next_sequence(&self, source: &str) -> u64 {
        self.next.get(source).copied().unwrap_or(1)
    }

    /// Next sequence number per source, for persisting with the points.
    pub fn sequences(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.next.iter().map(|(s, n)| (&**s, *n))
    }

    /// Build the data point for `r`, read at `now_ms` (the agent's clock).
    ///
    /// Never panics: a value JSON cannot carry (NaN, ±inf) becomes null with
    /// quality `Bad`, and a null value with any other quality becomes `Bad` too
    /// (outside heartbeats), so every point produced passes `DataPoint::validate`'s
    /// value rules.
    pub fn normalize(&mut self, r: &Reading, now_ms: u64) -> DataPoint {
        let sequence_number = self.take_sequence(&r.source_id);

        let mut flags = r.flags;
        let timestamp = match r.source_timestamp {
            Some(ts) => ts,
            None => {
                flags.insert(Flag::Ats);
                now_ms
            }
        };

        let mut value = r.value.clone();
        let mut quality = r.quality;
        let mut raw_quality = r.raw_quality.clone();
        if let Value::Float(f) = value {
            if !f.is_finite() {
                value = Value::Null;
                quality = Quality::Bad;
                raw_quality = Some(explain(raw_quality, &format!("non-finite value {f}")));
            }
        }
        if value.is_null() && quality != Quality::Bad && !flags.contains(Flag::Wmk) {
            quality = Quality::Bad;
            raw_quality = Some(explain(raw_quality, "no value"));
        }

        DataPoint {
            version: DATAPOINT_VERSION,
            timestamp,
            equipment_id: r.equipment_id.to_string(),
            tag: r.tag.to_string(),
            value,
            quality,
            meta: Meta {
                sequence_number,
                flags,
                created_at: now_ms,
                source_id: r.source_id.to_string(),
                gateway_id: Some(self.gateway_id.clone()),
                raw_quality,
                low_watermark: None,
            },
        }
    }

    fn take_sequence(&mut self, source: &Arc<str>) -> u64 {
        let slot = match self.next.get_mut(&**source) {
            Some(slot) => slot,
            None => self.next.entry(Arc::clone(source)).or_insert(1),
        };
        let seq = *slot;
        // u64 will not run out (10^6 points/s for 500,000 years); saturate rather than wrap.
        *slot = seq.saturating_add(1);
        seq
    }
}

/// Keep the protocol's own status and say what the agent changed.
fn explain(raw: Option<String>, what: &str) -> String {
    match raw {
        Some(raw) if !raw.is_empty() => format!("{raw}; {what}"),
        _ => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linewatch_schemas::Flags;
    use proptest::prelude::*;

    fn reading(source: &str, value: Value, ts: Option<u64>) -> Reading {
        Reading {
            source_id: source.into(),
            equipment_id: "84068f2f-3f39-4b9c-a995-d2a84d878689".into(),
            tag: "water_temperature".into(),
            value,
            quality: Quality::Ok,
            source_timestamp: ts,
            flags: Flags::empty(),
            raw_quality: None,
        }
    }

    #[test]
    fn fills_agent_fields_and_flags_agent_timestamps() {
        let mut n = Normalizer::new("gw-1", HashMap::new());
        let p = n.normalize(&reading("filler", Value::Float(13.45), None), 1_000);
        assert_eq!(p.timestamp, 1_000);
        assert!(p.meta.flags.contains(Flag::Ats));
        assert_eq!(p.meta.created_at, 1_000);
        assert_eq!(p.meta.gateway_id.as_deref(), Some("gw-1"));
        assert_eq!(p.meta.source_id, "filler");
        assert_eq!(p.meta.sequence_number, 1);
        assert_eq!(p.quality, Quality::Ok);
        p.validate().unwrap();

        let p = n.normalize(&reading("filler", Value::Float(1.0), Some(900)), 1_010);
        assert_eq!(p.timestamp, 900);
        assert!(!p.meta.flags.contains(Flag::Ats));
        assert_eq!(p.meta.created_at, 1_010);
        assert_eq!(p.meta.sequence_number, 2);
    }

    #[test]
    fn keeps_source_flags() {
        let mut n = Normalizer::new("gw", HashMap::new());
        let mut r = reading("s", Value::Int(1), None);
        r.flags = Flags::empty().with(Flag::Fst);
        let p = n.normalize(&r, 5);
        assert!(p.meta.flags.contains(Flag::Fst));
        assert!(p.meta.flags.contains(Flag::Ats));
    }

    #[test]
    fn non_finite_becomes_bad_null() {
        let mut n = Normalizer::new("gw", HashMap::new());
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let p = n.normalize(&reading("s", Value::Float(f), None), 5);
            assert_eq!(p.value, Value::Null);
            assert_eq!(p.quality, Quality::Bad);
            let raw = p.meta.raw_quality.clone().unwrap();
            assert!(raw.contains("non-finite"), "{raw}");
            p.validate().unwrap();
            // Serialising must not panic either.
            DataPoint::from_json(&p.to_json()).unwrap();
        }
    }

    #[test]
    fn non_finite_keeps_the_protocol_status() {
        let mut n = Normalizer::new("gw", HashMap::new());
        let mut r = reading("s", Value::Float(f64::NAN), None);
        r.quality = Quality::Uncertain;
        r.raw_quality = Some("0x40".into());
        let p = n.normalize(&r, 5);
        assert_eq!(
            p.meta.raw_quality.as_deref(),
            Some("0x40; non-finite value NaN")
        );
    }

    #[test]
    fn null_without_bad_quality_becomes_bad_unless_heartbeat() {
        let mut n = Normalizer::new("gw", HashMap::new());
        let p = n.normalize(&reading("s", Value::Null, None), 5);
        assert_eq!(p.quality, Quality::Bad);
        p.validate().unwrap();

        let mut hb = reading("s", Value::Null, Some(4));
        hb.tag = linewatch_schemas::HEARTBEAT_TAG.into();
        hb.flags = Flags::empty().with(Flag::Wmk);
        let p = n.normalize(&hb, 5);
        assert_eq!(p.quality, Quality::Ok);
        assert!(p.meta.raw_quality.is_none());
        p.validate().unwrap();
    }

    #[test]
    fn restored_counters_continue_and_zero_means_one() {
        let restored = HashMap::from([("a".to_owned(), 41), ("z".to_owned(), 0)]);
        let mut n = Normalizer::new("gw", restored);
        assert_eq!(
            n.normalize(&reading("a", Value::Int(1), None), 1)
                .meta
                .sequence_number,
            41
        );
        assert_eq!(
            n.normalize(&reading("z", Value::Int(1), None), 1)
                .meta
                .sequence_number,
            1
        );
        assert_eq!(
            n.normalize(&reading("new", Value::Int(1), None), 1)
                .meta
                .sequence_number,
            1
        );
        let mut seqs: Vec<_> = n.sequences().map(|(s, v)| (s.to_owned(), v)).collect();
        seqs.sort();
        assert_eq!(
            seqs,
            vec![("a".into(), 42), ("new".into(), 2), ("z".into(), 2)]
        );
        assert_eq!(n.next_sequence("a"), 42);
        assert_eq!(n.next_sequence("unknown"), 1);
    }

    proptest! {
        /// Per source, sequence numbers are strictly increasing, start at 1, and
        /// survive a simulated restart (persist `sequences()`, build a new normaliser
        /// from it) without reuse.
        #[test]
        fn strictly_increasing_and_never_reused_across_restarts(
            ops in proptest::collection::vec((0usize..4, any::<bool>()), 1..300)
        ) {
            let sources = ["a", "b", "c", "d"];
            let mut n = Normalizer::new("gw", HashMap::new());
            let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
            for (i, (src, restart)) in ops.into_iter().enumerate() {
                if restart {
                    let persisted: HashMap<String, u64> =
                        n.sequences().map(|(s, v)| (s.to_owned(), v)).collect();
                    n = Normalizer::new("gw", persisted);
                }
                let p = n.normalize(&reading(sources[src], Value::Int(i as i64), None), i as u64);
                seen.entry(sources[src]).or_default().push(p.meta.sequence_number);
            }
            for (_, seqs) in seen {
                prop_assert_eq!(seqs[0], 1);
                for w in seqs.windows(2) {
                    // Strictly increasing, and with no gap: nothing was dropped here.
                    prop_assert_eq!(w[1], w[0] + 1);
                }
            }
        }

        #[test]
        fn never_panics_and_output_validates(
            f in any::<f64>(),
            ts in proptest::option::of(0u64..4_000_000_000_000),
            now in 0u64..4_000_000_000_000,
        ) {
            let mut n = Normalizer::new("gw", HashMap::new());
            let p = n.normalize(&reading("s", Value::Float(f), ts), now);
            prop_assert!(p.validate().is_ok());
            prop_assert_eq!(p.timestamp, ts.unwrap_or(now));
            prop_assert_eq!(p.meta.flags.contains(Flag::Ats), ts.is_none());
        }
    }
}
