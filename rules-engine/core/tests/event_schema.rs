//! Every event the engine builds validates against `schemas/state-change-event.v1.schema.json`,
//! and the schema rejects what a consumer must not accept (so it is not vacuous).

mod common;
use common::*;
use linewatch_rules_core::replay::ReplayOptions;
use linewatch_rules_core::{EventSource, WatermarkConfig};
use linewatch_schemas::STATE_CHANGE_EVENT_V1_SCHEMA;
use std::time::Duration;

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(STATE_CHANGE_EVENT_V1_SCHEMA).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Events of a replay of the Krones-style rule (with and without a hold) over a random stream.
fn events() -> Vec<serde_json::Value> {
    let rules = vec![
        compile(&krones_rule("r-hold", "eq-1", 3, "2s")),
        compile(&krones_rule("r-now", "eq-2", 1, "0s")),
    ];
    let mut rng = Rng(42);
    let input: Vec<String> = krones_stream(&mut rng, 4, 4_000, 1_732_180_000_000, 250)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let opts = ReplayOptions {
        watermark: WatermarkConfig::with(Duration::from_secs(1), Duration::from_secs(30)),
        events: Some(EventSource {
            account: "123456789012".into(),
            region: "eu-central-1".into(),
        }),
        ..ReplayOptions::default()
    };
    replay_json(rules, &input.join("\n"), opts)
}

#[test]
fn every_event_validates_and_the_schema_rejects_broken_ones() {
    let v = validator();
    let events = events();
    assert!(
        events.len() > 10,
        "the stream causes transitions: {}",
        events.len()
    );
    assert!(
        events
            .iter()
            .any(|e| e["detail"]["previousState"].is_null()),
        "a first state is among them"
    );
    for e in &events {
        let errors: Vec<String> = v.iter_errors(e).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{e}: {errors:?}");
    }

    let mut bad = events[0].clone();
    bad["detail"]["sequence"] = serde_json::json!(0);
    assert!(!v.is_valid(&bad), "sequence starts at 1");
    let mut bad = events[0].clone();
    bad["id"] = serde_json::json!("not-a-uuid");
    assert!(!v.is_valid(&bad));
    let mut bad = events[0].clone();
    bad["detail"]
        .as_object_mut()
        .unwrap()
        .remove("transitionId");
    assert!(!v.is_valid(&bad));
    let mut bad = events[0].clone();
    bad["detail"]["values"] = serde_json::json!({"t": [1, 2]});
    assert!(!v.is_valid(&bad), "values are scalars");
    // Unknown fields are accepted (forward compatibility).
    let mut extra = events[0].clone();
    extra["detail"]["somethingNew"] = serde_json::json!(1);
    assert!(v.is_valid(&extra));
}
