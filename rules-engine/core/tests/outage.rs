//! A gateway's uplink goes down and comes back: what each watermark scope makes of
//! its backlog. Two gateways, one equipment and one rule each; gateway B's points of
//! an outage window reach the stream only when it is over, live data first (with a
//! heartbeat declaring the backlog's `lowWatermark`) or oldest first. The baseline is
//! the same points with no outage at all.

mod common;

use common::{compile, Rng};
use linewatch_rules_core::replay::{replay, ReplayOptions, ReplaySummary};
use linewatch_rules_core::{LatePolicy, WatermarkScope};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

const T0: u64 = 1_732_180_000_000;
const SEC: u64 = 1_000;

fn rule(id: &str, equipment: &str, hold: &str) -> String {
    format!(
        r#"#{{ id: "{id}", equipment: "{equipment}",
  groups: [ #{{ name: "hot", tags: ["temp"], hold: "{hold}",
               state: |v| if v.temp > 80.0 {{ "WARNING" }} else {{ "OK" }} }} ] }}"#
    )
}

/// One point as the agent writes it; `backfill` marks a backlog point.
#[derive(Debug, Clone)]
struct Point {
    gateway: &'static str,
    equipment: &'static str,
    ts: u64,
    temp: f64,
    seq: u64,
}

/// Sequence numbers as the agent gives them, in reading order: even for readings,
/// so a heartbeat made right after reading `p` can be numbered `p.seq + 1`.
fn next_seq() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) * 2
}

fn data_line(p: &Point, backfill: bool) -> String {
    let flags = if backfill { r#","flags":["Bfl"]"# } else { "" };
    format!(
        // Never a whole number (`.x5`): JSON readers would make it an integer.
        r#"{{"version":1,"timestamp":{},"equipmentId":"{}","tag":"temp","value":{:.2},"quality":"Ok","meta":{{"sequenceNumber":{}{flags},"createdAt":{},"sourceId":"plc","gatewayId":"{}"}}}}"#,
        p.ts,
        p.equipment,
        p.temp + 0.05,
        p.seq,
        p.ts,
        p.gateway
    )
}

/// The heartbeat a gateway makes right after reading `after` (numbered next), or
/// (`before`) just before it, at its time.
fn heartbeat_line(after: &Point, low: Option<u64>) -> String {
    heartbeat_numbered(after, after.seq + 1, low)
}

fn heartbeat_before(p: &Point, low: Option<u64>) -> String {
    heartbeat_numbered(p, p.seq - 1, low)
}

fn heartbeat_numbered(after: &Point, seq: u64, low: Option<u64>) -> String {
    let low = low.map_or(String::new(), |l| format!(r#","lowWatermark":{l}"#));
    format!(
        r#"{{"version":1,"timestamp":{ts},"equipmentId":"{}","tag":"$heartbeat","value":null,"quality":"Ok","meta":{{"sequenceNumber":{},"flags":["Wmk"]{low},"createdAt":{ts},"sourceId":"plc","gatewayId":"{}"}}}}"#,
        after.equipment,
        seq,
        after.gateway,
        ts = after.ts,
    )
}

/// `seconds` of one reading per second per gateway; temperatures cross 80 now and
/// then (a random walk), so the rules change state and hold.
fn readings(rng: &mut Rng, seconds: u64) -> Vec<Point> {
    let mut temp = [75.0f64, 75.0];
    let mut out = Vec::new();
    for s in 0..seconds {
        for (i, (gateway, equipment)) in
            [("gw-a", "eq-a"), ("gw-b", "eq-b")].into_iter().enumerate()
        {
            temp[i] = (temp[i] + (rng.below(61) as f64 - 30.0) / 10.0).clamp(60.0, 100.0);
            out.push(Point {
                gateway,
                equipment,
                ts: T0 + s * SEC + i as u64,
                temp: temp[i],
                seq: next_seq(),
            });
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Return {
    /// Live data first; heartbeats declare the backlog; it drains `rate` per second.
    LiveFirst { rate: usize, declare: bool },
    /// The whole backlog, oldest first, then live data.
    OldestFirst,
}

/// The stream as the engine reads it: gateway B's points in `[from, to)` held back
/// until `to`, then sent as `how` says; every gateway's heartbeat every 5 s.
fn with_outage(points: &[Point], from: u64, to: u64, how: Return) -> String {
    let mut lines = Vec::new();
    let mut backlog: std::collections::VecDeque<&Point> = points
        .iter()
        .filter(|p| p.gateway == "gw-b" && p.ts >= from && p.ts < to)
        .collect();
    let mut returned = false;
    for p in points {
        let held = p.gateway == "gw-b" && p.ts >= from && p.ts < to;
        if held {
            continue;
        }
        if p.gateway == "gw-b" && p.ts >= to && !returned {
            returned = true;
            match how {
                Return::OldestFirst => {
                    for b in backlog.drain(..) {
                        lines.push(data_line(b, true));
                    }
                }
                // On reconnect, before the first live reading: the backlog's start.
                Return::LiveFirst { declare, .. } => {
                    let low = backlog.front().map(|b| b.ts);
                    if declare {
                        lines.push(heartbeat_before(p, low));
                    }
                }
            }
        }
        lines.push(data_line(p, false));
        if let (true, Return::LiveFirst { rate, declare }) = (returned, how) {
            if p.gateway == "gw-b" {
                for b in backlog.drain(..rate.min(backlog.len())) {
                    lines.push(data_line(b, true));
                }
                if (p.ts - T0) % (5 * SEC) < 2 {
                    let low = if declare {
                        backlog.front().map(|b| b.ts)
                    } else {
                        None
                    };
                    lines.push(heartbeat_line(p, low));
                }
            }
        }
        if p.gateway == "gw-a" && (p.ts - T0) % (5 * SEC) < 2 {
            lines.push(heartbeat_line(p, None));
        }
    }
    // What is left of the backlog when the live data ends.
    for b in backlog.drain(..) {
        lines.push(data_line(b, true));
    }
    lines.join("\n")
}

fn in_order(points: &[Point]) -> String {
    points
        .iter()
        .map(|p| data_line(p, false))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(
    input: &str,
    scope: WatermarkScope,
    late: LatePolicy,
) -> (Vec<serde_json::Value>, ReplaySummary) {
    run_held(input, scope, late, "5s")
}

fn run_held(
    input: &str,
    scope: WatermarkScope,
    late: LatePolicy,
    hold: &str,
) -> (Vec<serde_json::Value>, ReplaySummary) {
    let rules = vec![
        compile(&rule("r-a", "eq-a", hold)),
        compile(&rule("r-b", "eq-b", hold)),
    ];
    let opts = ReplayOptions {
        scope,
        late_policy: late,
        progress_every: 0,
        ..ReplayOptions::default()
    };
    let mut out = Vec::new();
    let summary =
        replay(rules, input.as_bytes(), &mut out, opts, &mut |_| {}).expect("replay runs");
    let mut ts: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    ts.sort_by_key(|t| {
        (
            t["ruleId"].as_str().unwrap_or("").to_owned(),
            t["sequence"].as_u64(),
        )
    });
    (ts, summary)
}

fn of_rule<'a>(ts: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    ts.iter().filter(|t| t["ruleId"] == id).collect()
}

#[test]
fn per_equipment_the_backlog_is_on_time_and_the_result_is_as_if_there_was_no_outage() {
    let points = readings(&mut Rng(7), 30 * 60);
    let (from, to) = (T0 + 10 * 60 * SEC, T0 + 20 * 60 * SEC);
    let (baseline, _) = run(
        &in_order(&points),
        WatermarkScope::Global,
        LatePolicy::DeadLetter,
    );
    assert!(
        of_rule(&baseline, "r-b").len() >= 10,
        "the data must make rule r-b change state often: {}",
        of_rule(&baseline, "r-b").len()
    );
    let during = |ts: &[serde_json::Value]| {
        of_rule(ts, "r-b")
            .into_iter()
            .filter(|t| (from..to).contains(&t["eventTime"].as_u64().unwrap_or(0)))
            .count()
    };
    assert!(
        during(&baseline) > 0,
        "r-b changes state during the outage window"
    );

    for how in [
        Return::LiveFirst {
            rate: 3,
            declare: true,
        },
        Return::OldestFirst,
    ] {
        let input = with_outage(&points, from, to, how);
        let (got, summary) = run(&input, WatermarkScope::Equipment, LatePolicy::DeadLetter);
        assert_eq!(summary.late, 0, "{how:?}: {:?}", summary.late_by_sender);
        assert_eq!(summary.resends, 0, "{how:?}");
        assert_eq!(
            got, baseline,
            "{how:?}: per equipment, as if there had been no outage"
        );
    }

    // The global scope: the watermark moved on with gateway A, so B's backlog is
    // late and dead-lettered, and r-b's changes in the outage are lost.
    let input = with_outage(
        &points,
        from,
        to,
        Return::LiveFirst {
            rate: 3,
            declare: true,
        },
    );
    let (global, summary) = run(&input, WatermarkScope::Global, LatePolicy::DeadLetter);
    assert!(summary.late >= 500, "late: {}", summary.late);
    assert_eq!(
        summary.late_by_sender.keys().collect::<Vec<_>>(),
        ["gw-b/plc"]
    );
    assert_eq!(
        of_rule(&global, "r-a"),
        of_rule(&baseline, "r-a"),
        "A is not touched"
    );
    assert_eq!(
        during(&global),
        0,
        "B's changes in the outage are lost globally"
    );

    // Per equipment, but live data first without declaring the backlog: B's first
    // live point moves its clock past the backlog, which is then late.
    let input = with_outage(
        &points,
        from,
        to,
        Return::LiveFirst {
            rate: 3,
            declare: false,
        },
    );
    let (_, summary) = run(&input, WatermarkScope::Equipment, LatePolicy::DeadLetter);
    assert!(
        summary.late >= 500,
        "late without lowWatermark: {}",
        summary.late
    );
}

#[test]
fn late_points_applied_anyway_mark_their_transitions_late() {
    let points = readings(&mut Rng(11), 30 * 60);
    let (from, to) = (T0 + 10 * 60 * SEC, T0 + 20 * 60 * SEC);
    let input = with_outage(&points, from, to, Return::OldestFirst);
    // No hold: a change the late point causes is its own, not a hold's completing
    // later on the clock.
    let (got, summary) = run_held(&input, WatermarkScope::Global, LatePolicy::Apply, "0s");
    assert!(summary.late >= 500, "late: {}", summary.late);
    let late: Vec<_> = got.iter().filter(|t| t["late"] == true).collect();
    assert!(!late.is_empty(), "some transitions come from late points");
    assert!(
        late.iter().all(|t| t["ruleId"] == "r-b"),
        "only B's points were late"
    );
    let on_time = got.iter().filter(|t| t.get("late").is_none()).count();
    assert_eq!(on_time + late.len(), got.len(), "`late` is absent or true");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any outage window, any drain rate, either order of return: per equipment the
    /// transitions are exactly those of the same points without the outage.
    #[test]
    fn per_equipment_any_outage_gives_the_uninterrupted_result(
        seed in any::<u64>(),
        start in 60u64..400,
        length in 31u64..300,
        rate in 1usize..6,
        oldest_first in any::<bool>(),
    ) {
        let points = readings(&mut Rng(seed), 12 * 60);
        let (from, to) = (T0 + start * SEC, T0 + (start + length) * SEC);
        let how = if oldest_first { Return::OldestFirst } else { Return::LiveFirst { rate, declare: true } };
        let (baseline, _) = run(&in_order(&points), WatermarkScope::Global, LatePolicy::DeadLetter);
        let (got, summary) = run(&with_outage(&points, from, to, how), WatermarkScope::Equipment, LatePolicy::DeadLetter);
        prop_assert_eq!(summary.late, 0);
        prop_assert_eq!(summary.resends, 0);
        prop_assert_eq!(got, baseline);
    }
}
