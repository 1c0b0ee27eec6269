//! Fuzzing the two parsers every record from Kinesis goes through: the data point
//! (JSON) and the KPL aggregate (magic, protobuf, MD5). Whatever the bytes, each returns
//! a value or an error — never a panic — and what it accepts is consistent.
//! Bounded for CI; `LINEWATCH_FUZZ_CASES=100000 cargo test -p linewatch-schemas --test
//! fuzz_inputs` runs longer.

#[path = "../../tests/fuzz/mutate.rs"]
mod mutate;

use linewatch_schemas::kpl::{aggregate, deaggregate, frame};
use linewatch_schemas::DataPoint;
use proptest::prelude::*;

fn point_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"version":1,"timestamp":1764680000000,"equipmentId":"filler-1","tag":"temperature","value":81.5,"quality":"Ok","meta":{"sequenceNumber":7,"createdAt":1764680000005,"sourceId":"plc-1","gatewayId":"gw-1"}}"#,
        r#"{"version":1,"timestamp":1764680000000,"equipmentId":"filler-1","tag":"$heartbeat","value":null,"quality":"Ok","flags":["Wmk"],"meta":{"sequenceNumber":8,"createdAt":1764680000005,"sourceId":"plc-1"}}"#,
        r#"{"version":1,"timestamp":1764680000000,"equipmentId":"palletiser","tag":"state","value":"RUNNING","quality":"Uncertain","flags":["Fst","Ats"],"meta":{"sequenceNumber":1,"createdAt":1764680000000,"sourceId":"mb","rawQuality":"code 9"}}"#,
        r#"{"version":1,"timestamp":1,"equipmentId":"e","tag":"arr","value":[1,2.5,true,"x"],"quality":"Bad","flags":["Syn"],"meta":{"sequenceNumber":2,"createdAt":1,"sourceId":"s"}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn kpl_seeds() -> Vec<Vec<u8>> {
    let points = point_seeds();
    let one: Vec<(&str, Option<&str>, &[u8])> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                if i % 2 == 0 { "filler-1" } else { "palletiser" },
                None,
                p.as_slice(),
            )
        })
        .collect();
    let with_ehk = vec![(
        "k",
        Some("170141183460469231731687303715884105728"),
        &b"x"[..],
    )];
    vec![aggregate(&one), aggregate(&with_ehk), aggregate(&[])]
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn a_data_point_parses_or_is_an_error(bytes in mutate::inputs(point_seeds())) {
        if let Ok(p) = DataPoint::from_json(&bytes) {
            // What it accepts it can write back and read again to the same point.
            let again = serde_json::to_vec(&p).expect("an accepted point serialises");
            let back = DataPoint::from_json(&again);
            prop_assert!(back.is_ok(), "{:?} from {}", back, String::from_utf8_lossy(&again));
        }
    }

    #[test]
    fn a_kpl_record_decodes_or_is_an_error(bytes in mutate::inputs(kpl_seeds())) {
        if let Ok(records) = deaggregate(&bytes, "outer") {
            prop_assert!(records.len() <= bytes.len().max(1));
        }
    }

    /// Mutations behind a valid MD5: the protobuf decoder itself gets garbage.
    #[test]
    fn a_kpl_body_with_a_valid_digest_decodes_or_is_an_error(
        body in mutate::mutated(kpl_seeds().iter().map(|r| r[4..r.len() - 16].to_vec()).collect())
    ) {
        let _ = deaggregate(&frame(&body), "outer");
    }
}
