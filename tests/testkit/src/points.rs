//! Decoding what the agent shipped, and the checks every test applies to it:
//! schema validity, gaps and duplicates of sequence numbers, order per equipment.

use crate::kinesis::StreamRecord;
use linewatch_schemas::{DataPoint, DATAPOINT_V1_SCHEMA};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

/// One Kinesis record decoded as a data point.
#[derive(Debug, Clone)]
pub struct Shipped {
    pub shard_id: String,
    pub partition_key: String,
    /// The record's position in its shard (Kinesis sequence number).
    pub kinesis_seq: String,
    /// Its index inside a KPL aggregated record (0 for a plain record).
    pub sub_sequence: u32,
    pub raw: Vec<u8>,
    pub json: Json,
    pub point: DataPoint,
}

impl Shipped {
    /// `(gatewayId, sourceId)`: the scope of `meta.sequenceNumber`.
    pub fn source_key(&self) -> (String, String) {
        (
            self.point.meta.gateway_id.clone().unwrap_or_default(),
            self.point.meta.source_id.clone(),
        )
    }
    pub fn seq(&self) -> u64 {
        self.point.meta.sequence_number
    }
    pub fn is_heartbeat(&self) -> bool {
        self.point.is_heartbeat()
    }
}

/// The data point v1 JSON Schema (`schemas/datapoint.v1.schema.json`), compiled once.
fn schema() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Json = serde_json::from_str(DATAPOINT_V1_SCHEMA)
            .unwrap_or_else(|e| panic!("datapoint.v1.schema.json is not JSON: {e}"));
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("datapoint.v1.schema.json is not a valid schema: {e}"))
    })
}

/// Validates one JSON document against the data point schema; all errors, with paths.
pub fn validate_schema(doc: &Json) -> Result<(), String> {
    let errors: Vec<String> = schema()
        .iter_errors(doc)
        .map(|e| format!("{}: {}", e.instance_path(), e))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Decodes every record: JSON, schema-valid, and accepted by `DataPoint::from_json`.
/// Panics naming the first record that is not.
#[track_caller]
pub fn decode(records: &[StreamRecord]) -> Vec<Shipped> {
    records
        .iter()
        .map(|r| match decode_one(r) {
            Ok(s) => s,
            Err(e) => panic!(
                "record {} in {} (partition key {}) is not a valid data point: {e}\nrecord: {}",
                r.sequence_number,
                r.shard_id,
                r.partition_key,
                String::from_utf8_lossy(&r.data)
            ),
        })
        .collect()
}

fn decode_one(r: &StreamRecord) -> Result<Shipped, String> {
    let json: Json = serde_json::from_slice(&r.data).map_err(|e| format!("not JSON: {e}"))?;
    validate_schema(&json).map_err(|e| format!("schema: {e}"))?;
    let point = DataPoint::from_json(&r.data).map_err(|e| format!("DataPoint::from_json: {e}"))?;
    Ok(Shipped {
        shard_id: r.shard_id.clone(),
        partition_key: r.partition_key.clone(),
        kinesis_seq: r.sequence_number.clone(),
        sub_sequence: r.sub_sequence,
        raw: r.data.clone(),
        json,
        point,
    })
}

/// Distinct sequence numbers per `(gatewayId, sourceId)`.
pub fn sequences(points: &[Shipped]) -> BTreeMap<(String, String), BTreeSet<u64>> {
    let mut out: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    for p in points {
        out.entry(p.source_key()).or_default().insert(p.seq());
    }
    out
}

/// Missing ranges (inclusive) between the smallest and the largest number of `set`.
pub fn gaps(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut prev: Option<u64> = None;
    for &s in set {
        if let Some(p) = prev {
            if s > p + 1 {
                out.push((p + 1, s - 1));
            }
        }
        prev = Some(s);
    }
    out
}

/// Every source's sequence numbers are contiguous from its smallest to its largest.
pub fn check_no_gaps(points: &[Shipped]) -> Result<(), String> {
    let mut problems = Vec::new();
    for ((gw, src), set) in sequences(points) {
        let g = gaps(&set);
        if !g.is_empty() {
            problems.push(format!(
                "{gw}/{src}: {} numbers {}..={} present, missing {}",
                set.len(),
                set.first().copied().unwrap_or(0),
                set.last().copied().unwrap_or(0),
                describe_ranges(&g)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// `a..=b, c` (at most 10 ranges, then a count).
pub fn describe_ranges(ranges: &[(u64, u64)]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(10)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect();
    if ranges.len() > 10 {
        parts.push(format!("... ({} ranges)", ranges.len()));
    }
    parts.join(", ")
}

/// What [`check_duplicates`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Duplicates {
    /// Records that repeat an earlier `(gateway, source, sequenceNumber)`.
    pub copies: usize,
    /// Resent slices: maximal runs of copies, adjacent in their shard, that repeat
    /// adjacent earlier records in the same order. Each resent batch gives at least one
    /// (more if other records were interleaved), so scattered duplicates give many:
    /// tests compare this with the number of calls whose outcome was unknown.
    pub runs: usize,
}

/// Duplicates are allowed only as whole resent batches: a repeated
/// `(gateway, source, sequenceNumber)` must be byte-identical to the first copy (a
/// number is never reused for another reading; an error otherwise). The copies are
/// counted in slices that each repeat a contiguous run of earlier records in order
/// ([`Duplicates::runs`]); the caller bounds that by the failed calls it caused.
pub fn check_duplicates(points: &[Shipped]) -> Result<Duplicates, String> {
    let mut by_shard: BTreeMap<&str, Vec<&Shipped>> = BTreeMap::new();
    for p in points {
        by_shard.entry(p.shard_id.as_str()).or_default().push(p);
    }
    let mut found = Duplicates::default();
    for (shard, records) in by_shard {
        let mut first: HashMap<(String, String, u64), usize> = HashMap::new();
        // (index of the copy, index of the original)
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, p) in records.iter().enumerate() {
            let (gw, src) = p.source_key();
            let key = (gw, src, p.seq());
            match first.get(&key) {
                None => {
                    first.insert(key, i);
                }
                Some(&o) => {
                    if records[o].raw != p.raw {
                        return Err(format!(
                            "{shard}: sequence number {}/{}/{} reused for different content:\n  first: {}\n  again: {}",
                            key.0,
                            key.1,
                            key.2,
                            String::from_utf8_lossy(&records[o].raw),
                            String::from_utf8_lossy(&p.raw)
                        ));
                    }
                    copies.push((i, o));
                }
            }
        }
        found.copies += copies.len();
        // A resent batch repeats a contiguous slice of earlier records, in order. Two
        // resends in a row (the same batch lost twice) are two slices back to back.
        let mut prev: Option<(usize, usize)> = None;
        for &(i, o) in &copies {
            let continues = prev.is_some_and(|(pi, po)| i == pi + 1 && o == po + 1);
            if !continues {
                found.runs += 1;
            }
            prev = Some((i, o));
        }
    }
    Ok(found)
}

/// Order per equipment: in each shard, ignoring resent copies, the points of one
/// `(equipment, source, lane)` have strictly increasing sequence numbers and non-decreasing
/// timestamps; every record's partition key is its `equipmentId`.
pub fn check_order_per_equipment(points: &[Shipped]) -> Result<(), String> {
    let mut seen: BTreeSet<(String, String, u64)> = BTreeSet::new();
    let mut last: HashMap<(String, String, String), (u64, u64)> = HashMap::new();
    for p in points {
        if p.partition_key != p.point.equipment_id {
            return Err(format!(
                "partition key {:?} is not the equipmentId {:?}",
                p.partition_key, p.point.equipment_id
            ));
        }
        let (gw, src) = p.source_key();
        if !seen.insert((gw.clone(), src.clone(), p.seq())) {
            continue; // a resent copy; check_duplicates judges those
        }
        // Per lane: the backfill (`Bfl`) is sent behind live data, each in its own order.
        let lane = if p.point.meta.flags.contains(linewatch_schemas::Flag::Bfl) {
            "/backfill"
        } else {
            ""
        };
        let key = (
            p.shard_id.clone(),
            p.point.equipment_id.clone(),
            format!("{src}{lane}"),
        );
        if let Some(&(seq, ts)) = last.get(&key) {
            if p.seq() <= seq || p.point.timestamp < ts {
                return Err(format!(
                    "out of order for equipment {} source {}: (seq {seq}, ts {ts}) then (seq {}, ts {})",
                    key.1,
                    key.2,
                    p.seq(),
                    p.point.timestamp
                ));
            }
        }
        last.insert(key, (p.seq(), p.point.timestamp));
    }
    Ok(())
}

/// First copies only, in stream order.
pub fn unique(points: &[Shipped]) -> Vec<&Shipped> {
    let mut seen = BTreeSet::new();
    points
        .iter()
        .filter(|p| {
            let (gw, src) = p.source_key();
            seen.insert((gw, src, p.seq()))
        })
        .collect()
}

/// Points of `tag` (first copies), in stream order.
pub fn of_tag<'a>(points: &'a [Shipped], tag: &str) -> Vec<&'a Shipped> {
    unique(points)
        .into_iter()
        .filter(|p| p.point.tag == tag)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::StreamRecord;

    fn rec(shard: &str, seq: u64, value: f64) -> StreamRecord {
        let p = format!(
            r#"{{"version":1,"timestamp":{},"equipmentId":"eq","tag":"t","value":{value},"quality":"Ok",
               "meta":{{"sequenceNumber":{seq},"createdAt":1,"sourceId":"s","gatewayId":"g"}}}}"#,
            1000 + seq
        );
        StreamRecord {
            shard_id: shard.into(),
            sequence_number: seq.to_string(),
            sub_sequence: 0,
            partition_key: "eq".into(),
            data: p.into_bytes(),
        }
    }

    fn pts(v: &[(u64, f64)]) -> Vec<Shipped> {
        decode(&v.iter().map(|&(s, x)| rec("sh", s, x)).collect::<Vec<_>>())
    }

    #[test]
    fn gaps_are_found() {
        let p = pts(&[(1, 0.0), (2, 0.0), (5, 0.0), (6, 0.0), (8, 0.0)]);
        let e = check_no_gaps(&p).unwrap_err();
        assert!(e.contains("missing 3..=4, 7"), "{e}");
        assert!(check_no_gaps(&pts(&[(3, 0.0), (4, 0.0)])).is_ok());
    }

    #[test]
    fn a_resent_batch_is_accepted() {
        let p = pts(&[(1, 1.0), (2, 2.0), (3, 3.0), (2, 2.0), (3, 3.0), (4, 4.0)]);
        let d = check_duplicates(&p).unwrap();
        assert_eq!(d, Duplicates { copies: 2, runs: 1 });
        assert!(check_order_per_equipment(&p).is_ok());
    }

    #[test]
    fn scattered_duplicates_count_as_many_slices_and_changed_ones_are_refused() {
        // 3 then 1: two slices, where one batch resend would give one.
        let p = pts(&[(1, 1.0), (2, 2.0), (3, 3.0), (3, 3.0), (1, 1.0)]);
        assert_eq!(check_duplicates(&p).unwrap().runs, 2);
        // The same batch resent twice in a row: two slices back to back.
        let p = pts(&[
            (1, 1.0),
            (2, 2.0),
            (1, 1.0),
            (2, 2.0),
            (1, 1.0),
            (2, 2.0),
            (3, 3.0),
        ]);
        assert_eq!(
            check_duplicates(&p).unwrap(),
            Duplicates { copies: 4, runs: 2 }
        );
        let p = pts(&[(1, 1.0), (2, 2.0), (2, 2.5)]);
        assert!(check_duplicates(&p).unwrap_err().contains("reused"));
    }

    #[test]
    fn order_is_checked_per_equipment() {
        let p = pts(&[(1, 1.0), (3, 1.0), (2, 1.0)]);
        assert!(check_order_per_equipment(&p).is_err());
    }

    #[test]
    #[should_panic(expected = "not a valid data point")]
    fn schema_violations_panic_with_the_record() {
        let mut r = rec("sh", 1, 1.0);
        r.data = br#"{"version":1,"timestamp":-5}"#.to_vec();
        decode(&[r]);
    }
}
