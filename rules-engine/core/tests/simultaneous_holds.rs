//! Simultaneous hold deadlines: when several groups of one rule reach their hold deadline at
//! the same event time, all take their new state and the rule is ranked once — never a
//! zero-length transition in between. Points stamped T come after the deadlines at T.

mod common;
use common::*;
use linewatch_rules_core::replay::ReplayOptions;
use linewatch_rules_core::WatermarkConfig;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const T0: u64 = 1_732_180_000_000;
const STEP: u64 = 1_000;
/// Off the points' grid, so a transition off the grid can only come from a deadline.
const HOLD_MS: u64 = 2_500;

/// Two groups with the same hold: `a` votes WARNING, `b` votes ERROR, both OK otherwise.
fn rule() -> String {
    format!(
        r#"#{{ id: "two-holds", equipment: "eq", states: ["OK", "WARNING", "ERROR"],
  groups: [
    #{{ name: "a", weight: 1, tags: ["a"], hold: {HOLD_MS},
       state: |v| if v.a > 0 {{ "WARNING" }} else {{ "OK" }} }},
    #{{ name: "b", weight: 1, tags: ["b"], hold: {HOLD_MS},
       state: |v| if v.b > 0 {{ "ERROR" }} else {{ "OK" }} }},
  ] }}"#
    )
}

/// Transitions as (eventTime, previousState, state).
fn run(lines: &[String]) -> Vec<(u64, Option<String>, String)> {
    let mut input = lines.join("\n");
    // A heartbeat far ahead brings the watermark past every pending deadline.
    input.push('\n');
    input.push_str(&heartbeat_json("gw", "src", T0 + 1_000 * STEP));
    let opts = ReplayOptions {
        watermark: WatermarkConfig::with(Duration::ZERO, Duration::from_secs(3600)),
        ..ReplayOptions::default()
    };
    replay_json(vec![compile(&rule())], &input, opts)
        .into_iter()
        .map(|t| {
            (
                t["eventTime"].as_u64().expect("eventTime"),
                t["previousState"].as_str().map(str::to_owned),
                t["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn points(steps: &[(bool, bool)]) -> Vec<String> {
    steps
        .iter()
        .enumerate()
        .flat_map(|(i, &(a, b))| {
            let ts = T0 + i as u64 * STEP;
            [
                point_json("gw", "src", "eq", "a", ts, if a { "1" } else { "0" }),
                point_json("gw", "src", "eq", "b", ts, if b { "1" } else { "0" }),
            ]
        })
        .collect()
}

#[test]
fn both_deadlines_at_once_rank_once() {
    // Both raw states change at T0 + 5 s; both holds end at T0 + 7.5 s.
    let mut steps = vec![(false, false); 5];
    steps.extend(vec![(true, true); 5]);
    let got = run(&points(&steps));
    let due = T0 + 5 * STEP + HOLD_MS;
    assert_eq!(
        got,
        vec![
            (T0, None, "OK".to_owned()),
            (due, Some("OK".to_owned()), "ERROR".to_owned()),
        ],
        "ranked one group at a time it would pass through WARNING at {due}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn at_most_one_transition_per_deadline_time(
        steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..4), 1..40)
    ) {
        // Mostly both flip together (the case under test), sometimes one alone.
        let mut state = (false, false);
        let mut flips = Vec::new();
        for (fa, fb, together) in steps {
            if together > 0 {
                if fa { state = (!state.0, !state.1); }
            } else {
                if fa { state.0 = !state.0; }
                if fb { state.1 = !state.1; }
            }
            flips.push(state);
        }
        let got = run(&points(&flips));
        let mut per_time: BTreeMap<u64, usize> = BTreeMap::new();
        for (t, _, _) in &got {
            if !(t - T0).is_multiple_of(STEP) {
                *per_time.entry(*t).or_default() += 1;
            }
        }
        for (t, n) in per_time {
            prop_assert_eq!(n, 1, "{} transitions at deadline {}: {:?}", n, t, got);
        }
        // Consecutive transitions always change the state (no A → A).
        for w in got.windows(2) {
            prop_assert_eq!(w[1].1.as_deref(), Some(w[0].2.as_str()));
            prop_assert_ne!(&w[1].2, &w[0].2);
        }
    }
}
