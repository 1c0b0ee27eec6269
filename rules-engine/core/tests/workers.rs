//! The set of transitions does not depend on the number of workers, including rule
//! changes in the middle of the stream.

mod common;
use common::*;
use linewatch_rules_core::replay::{replay, ReplayOptions};
use linewatch_rules_core::{LatePolicy, WatermarkConfig};
use std::time::Duration;

fn run(
    input: &str,
    rules: &[std::sync::Arc<linewatch_rules_core::Rule>],
    workers: usize,
    late_policy: LatePolicy,
) -> (String, u64, u64) {
    let mut out = Vec::new();
    let summary = replay(
        rules.to_vec(),
        input.as_bytes(),
        &mut out,
        ReplayOptions {
            workers,
            watermark: WatermarkConfig::with(Duration::from_secs(1), Duration::from_secs(60)),
            late_policy,
            advance_every: 16,
            flush_every: 512,
            ..ReplayOptions::default()
        },
        &mut |_| {},
    )
    .expect("replay runs");
    (
        String::from_utf8(out).expect("utf-8"),
        summary.transitions,
        summary.late,
    )
}

#[test]
fn identical_transitions_for_1_2_and_8_workers() {
    let mut rng = Rng(7);
    let equipment = 40;
    let rules: Vec<_> = (0..equipment)
        .map(|e| {
            compile(&krones_rule(
                &format!("rule-{e}"),
                &format!("eq-{e}"),
                1,
                "20s",
            ))
        })
        .collect();
    let stream = krones_stream(&mut rng, equipment, 20_000, 1_700_000_000_000, 50);
    let mut lines: Vec<String> = stream.into_iter().map(|(_, l)| l).collect();
    // Rule changes mid-stream: an update with another hold, a delete, a re-add.
    let control = |script: &str| serde_json::json!({ "$rule": { "script": script } }).to_string();
    lines.insert(5_000, control(&krones_rule("rule-3", "eq-3", 2, "5s")));
    lines.insert(
        8_000,
        serde_json::json!({ "$rule": { "delete": "rule-5" } }).to_string(),
    );
    lines.insert(12_000, control(&krones_rule("rule-5", "eq-5", 1, "1m")));
    lines.insert(13_000, control(&krones_rule("rule-7", "eq-7", 1, "1m"))); // stale: ignored
                                                                            // Late points (a minute old), which the `apply` policy evaluates at the watermark.
    for i in 0..50usize {
        let at = 2_000 + i * 300;
        let ts = 1_700_000_000_000 + at as u64 * 50 - 60_000;
        let e = i % equipment;
        let line = point_json(
            "gw",
            &format!("src-{}", e / 10),
            &format!("eq-{e}"),
            "pressure",
            ts,
            "3.4",
        )
        // Backfill: its own lane, so its numbers are not taken for resends of the live ones.
        .replace(r#""meta":{"#, r#""meta":{"flags":["Bfl"],"#);
        lines.insert(at, line);
    }
    let input = lines.join("\n");

    for policy in [LatePolicy::DeadLetter, LatePolicy::Apply] {
        let (one, n1, late) = run(&input, &rules, 1, policy);
        assert!(
            n1 > 100,
            "the workload should produce transitions, got {n1}"
        );
        assert_eq!(late, 50);
        for workers in [2, 8] {
            let (many, n, _) = run(&input, &rules, workers, policy);
            assert_eq!(n, n1, "{workers} workers, {policy:?}");
            assert!(one == many, "{workers} workers, {policy:?}: output differs");
        }
    }
}
