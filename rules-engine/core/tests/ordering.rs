//! Arrival order does not matter within maxOutOfOrderness: a shuffled input gives
//! exactly the same transitions as the ordered one.

mod common;
use common::*;
use linewatch_rules_core::replay::{replay, ReplayEvent, ReplayOptions};
use linewatch_rules_core::WatermarkConfig;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

const OOO_MS: u64 = 2_000;

fn run(lines: &[String], rules: &[Arc<linewatch_rules_core::Rule>], idle_ms: u64) -> (String, u64) {
    let input = lines.join("\n");
    let mut out = Vec::new();
    let mut late = 0;
    replay(
        rules.to_vec(),
        input.as_bytes(),
        &mut out,
        ReplayOptions {
            watermark: WatermarkConfig::with(
                Duration::from_millis(OOO_MS),
                Duration::from_millis(idle_ms),
            ),
            advance_every: 8,
            flush_every: 64,
            ..ReplayOptions::default()
        },
        &mut |e| {
            if let ReplayEvent::Late { .. } = e {
                late += 1;
            }
        },
    )
    .expect("replay runs");
    (String::from_utf8(out).expect("utf-8"), late)
}

fn rules() -> Vec<Arc<linewatch_rules_core::Rule>> {
    (0..6)
        .map(|e| {
            compile(&krones_rule(
                &format!("rule-{e}"),
                &format!("eq-{e}"),
                1,
                "3s",
            ))
        })
        .collect()
}

/// Kinesis keeps one partition key's records in order, and a lane (one source's
/// points for one equipment) is one key: arrivals are shuffled across lanes only.
/// Each lane keeps its arrival slots and fills them in its original order; the
/// k-th slot's delay stays within maxOutOfOrderness of the k-th point.
fn in_order_per_lane(arrivals: Vec<String>) -> Vec<String> {
    let lane = |l: &str| {
        let v: serde_json::Value = serde_json::from_str(l).expect("test line is JSON");
        (
            v["meta"]["sourceId"].to_string(),
            v["equipmentId"].to_string(),
        )
    };
    let mut ordered: std::collections::HashMap<_, Vec<String>> = std::collections::HashMap::new();
    let mut sorted = arrivals.clone();
    sorted.sort_by_key(|l| {
        let v: serde_json::Value = serde_json::from_str(l).expect("test line is JSON");
        v["timestamp"].as_u64()
    });
    for l in sorted.into_iter().rev() {
        ordered.entry(lane(&l)).or_default().push(l);
    }
    arrivals
        .iter()
        .map(|l| {
            ordered
                .get_mut(&lane(l))
                .and_then(Vec::pop)
                .expect("a slot per point")
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn shuffle_within_max_out_of_orderness_gives_the_same_transitions(
        seed in any::<u64>(),
        steps in 50usize..600,
        idle_ms in prop_oneof![Just(500u64), Just(60_000u64)],
    ) {
        let rules = rules();
        let mut rng = Rng(seed);
        let stream = krones_stream(&mut rng, 6, steps, 1_700_000_000_000, 100);
        let ordered: Vec<String> = stream.iter().map(|(_, l)| l.clone()).collect();
        // Each point is delayed by less than maxOutOfOrderness, then arrivals are
        // sorted by delayed time: every point arrives after all points more than
        // OOO_MS older than itself, never after a newer one by OOO_MS or more.
        let mut delayed: Vec<(u64, usize, String)> = stream
            .into_iter()
            .enumerate()
            .map(|(i, (ts, l))| (ts + rng.below(OOO_MS), i, l))
            .collect();
        delayed.sort();
        let shuffled = in_order_per_lane(delayed.into_iter().map(|(_, _, l)| l).collect());

        let (a, late_a) = run(&ordered, &rules, idle_ms);
        let (b, late_b) = run(&shuffled, &rules, idle_ms);
        prop_assert_eq!(late_a, 0);
        prop_assert_eq!(late_b, 0);
        prop_assert!(a == b, "transitions differ:\n{}\n---\n{}", a, b);
    }
}
