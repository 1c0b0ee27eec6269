//! The JSON Schema file and the Rust type must agree: everything the type writes
//! validates, and what one rejects the other rejects too, naming the same field.

use linewatch_schemas::{DataPoint, Flag, Flags, Meta, Quality, Value, DATAPOINT_V1_SCHEMA};
use proptest::prelude::*;
use serde_json::json;

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(DATAPOINT_V1_SCHEMA).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Schema errors as (instance path, message), e.g. ("/meta/flags/1", "...").
fn schema_errors(v: &jsonschema::Validator, instance: &serde_json::Value) -> Vec<(String, String)> {
    v.iter_errors(instance)
        .map(|e| (e.instance_path().to_string(), e.to_string()))
        .collect()
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        (-1e12f64..1e12).prop_map(Value::Float),
        "[ -~]{0,40}".prop_map(Value::String),
    ]
}

fn arb_point() -> impl Strategy<Value = DataPoint> {
    (
        0u64..4_000_000_000_000,
        "[a-z0-9-]{1,40}",
        "[a-z_]{1,20}",
        arb_value(),
        prop_oneof![
            Just(Quality::Ok),
            Just(Quality::Uncertain),
            Just(Quality::Bad)
        ],
        any::<u64>(),
        proptest::collection::vec(
            prop_oneof![
                Just(Flag::Fst),
                Just(Flag::Lst),
                Just(Flag::Syn),
                Just(Flag::Ats),
                Just(Flag::Bfl)
            ],
            0..4,
        ),
        proptest::option::of("[a-z]{1,10}"),
        proptest::option::of("[ -~]{0,30}"),
        any::<bool>(),
    )
        .prop_map(
            |(ts, eq, tag, value, quality, seq, flags, gw, raw, null_bad)| {
                let (value, quality) = if null_bad {
                    (Value::Null, Quality::Bad)
                } else {
                    (value, quality)
                };
                DataPoint {
                    version: 1,
                    timestamp: ts,
                    equipment_id: eq,
                    tag,
                    value,
                    quality,
                    meta: Meta {
                        sequence_number: seq,
                        flags: flags.into_iter().collect::<Flags>(),
                        created_at: ts + 5,
                        source_id: "filling_machine".into(),
                        gateway_id: gw,
                        raw_quality: raw,
                        low_watermark: None,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_point_the_type_writes_validates(p in arb_point()) {
        let v = validator();
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        let errs = schema_errors(&v, &json);
        prop_assert!(errs.is_empty(), "{json} rejected by the schema: {errs:?}");
        prop_assert_eq!(DataPoint::from_json(&p.to_json()).unwrap(), p);
    }
}

#[test]
fn heartbeat_with_null_value_is_valid_in_both() {
    let hb = json!({"version":1,"timestamp":5,"equipmentId":"e","tag":"$heartbeat","value":null,"quality":"Ok",
        "meta":{"sequenceNumber":1,"flags":["Wmk"],"createdAt":6,"sourceId":"s"}});
    assert!(schema_errors(&validator(), &hb).is_empty());
    assert!(DataPoint::from_json(hb.to_string().as_bytes())
        .unwrap()
        .is_heartbeat());
}

fn base() -> serde_json::Value {
    json!({"version":1,"timestamp":1732180000123u64,"equipmentId":"84068f2f-3f39-4b9c-a995-d2a84d878689",
        "tag":"water_temperature","value":13.45,"quality":"Ok",
        "meta":{"sequenceNumber":123,"flags":["Fst"],"createdAt":1732180000150u64,"sourceId":"filling_machine"}})
}

/// Each case: a mutation, the field the Rust error must name, the schema's instance path.
#[test]
fn invalid_points_are_rejected_by_both_naming_the_field() {
    type Mutate = fn(&mut serde_json::Value);
    let cases: Vec<(&str, Mutate, &str, &str)> = vec![
        (
            "missing tag",
            |p| {
                p.as_object_mut().unwrap().remove("tag");
            },
            "tag",
            "",
        ),
        (
            "missing meta.sourceId",
            |p| {
                p["meta"].as_object_mut().unwrap().remove("sourceId");
            },
            "meta.sourceId",
            "/meta",
        ),
        (
            "timestamp is a string",
            |p| p["timestamp"] = json!("yesterday"),
            "timestamp",
            "/timestamp",
        ),
        (
            "negative timestamp",
            |p| p["timestamp"] = json!(-5),
            "timestamp",
            "/timestamp",
        ),
        (
            "bad quality",
            |p| p["quality"] = json!("Good"),
            "quality",
            "/quality",
        ),
        (
            "malformed flag",
            |p| p["meta"]["flags"] = json!(["Fst", "XYZ"]),
            "meta.flags[1]",
            "/meta/flags/1",
        ),
        (
            "lowWatermark on a reading",
            |p| p["meta"]["lowWatermark"] = json!(1),
            "meta.lowWatermark",
            "/meta/flags",
        ),
        (
            "value is an object",
            |p| p["value"] = json!({"a": 1}),
            "value",
            "/value",
        ),
        (
            "sequence number negative",
            |p| p["meta"]["sequenceNumber"] = json!(-1),
            "meta.sequenceNumber",
            "/meta/sequenceNumber",
        ),
        (
            "null value with quality Ok",
            |p| p["value"] = json!(null),
            "value",
            "",
        ),
        (
            "empty equipmentId",
            |p| p["equipmentId"] = json!(""),
            "equipmentId",
            "/equipmentId",
        ),
        (
            "wrong version",
            |p| p["version"] = json!(2),
            "version",
            "/version",
        ),
    ];
    let v = validator();
    for (name, mutate, rust_field, schema_path) in cases {
        let mut p = base();
        mutate(&mut p);
        let rust = DataPoint::from_json(p.to_string().as_bytes())
            .expect_err(&format!("{name}: the Rust type accepted {p}"));
        assert_eq!(rust.field(), Some(rust_field), "{name}: {rust}");
        assert!(
            rust.to_string().contains(rust_field),
            "{name}: message {rust} should name {rust_field}"
        );
        let errs = schema_errors(&v, &p);
        assert!(!errs.is_empty(), "{name}: the schema accepted {p}");
        assert!(
            errs.iter().any(|(path, _)| path == schema_path),
            "{name}: schema errors {errs:?} should include path {schema_path:?}"
        );
    }
}

#[test]
fn a_backfill_heartbeat_with_a_low_watermark_and_a_later_flag_is_valid_in_both() {
    let hb = json!({"version":1,"timestamp":5000,"equipmentId":"e","tag":"$heartbeat","value":null,"quality":"Ok",
        "meta":{"sequenceNumber":1,"flags":["Wmk","Bfl","Qrs"],"createdAt":6000,"sourceId":"s","lowWatermark":1200}});
    assert!(schema_errors(&validator(), &hb).is_empty());
    let p = DataPoint::from_json(hb.to_string().as_bytes()).unwrap();
    assert_eq!(p.meta.low_watermark, Some(1200));
    assert!(p.meta.flags.contains(Flag::Bfl) && p.is_heartbeat());
}

#[test]
fn unknown_fields_are_accepted_by_both() {
    let mut p = base();
    p["site"] = json!("plant-3");
    p["meta"]["firmware"] = json!({"rev": 7});
    p["meta"]["gatewayId"] = json!("gw-1");
    p["meta"]["rawQuality"] = json!("0x00");
    assert!(schema_errors(&validator(), &p).is_empty());
    let dp = DataPoint::from_json(p.to_string().as_bytes()).unwrap();
    assert_eq!(dp.meta.gateway_id.as_deref(), Some("gw-1"));
}

#[test]
fn syntax_errors_are_reported_not_panicked() {
    for bad in ["", "{", "[1,2]", "null", "{\"version\":1,}"] {
        assert!(DataPoint::from_json(bad.as_bytes()).is_err(), "{bad:?}");
    }
}
