//! Rules change while data flows, without a restart: an update (higher version) takes
//! effect at the watermark, a delete stops the rule's transitions, and a broken rule is
//! rejected on its status topic while the other rules keep producing transitions.
//!
//! The oracle gets the same changes as `{"$rule":…}` lines between the phases: each
//! change is made once the service's watermark has reached the end of a phase, which
//! is where the replay applies a line read there.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use rules_common::*;
use serde_json::{json, Value};
use std::time::Duration;

const MAIN: &str = "lc-main";
const OTHER: &str = "lc-other";

fn ndjson(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_delete_and_a_broken_rule_while_data_flows() {
    let env = Env::start("rules-lifecycle", 1).await;
    let machines = scenario::machines("lc", 3);
    let v1 = machine_rule(MAIN, 1, &machines, 80.0, "1s");
    // v2: the hot group warns from 70 °C; the running group is unchanged (keeps its state).
    let v2 = machine_rule(MAIN, 2, &machines, 70.0, "1s");
    let other = machine_rule(OTHER, 1, &machines[..2], 85.0, "500ms");
    let (v1_file, other_file) = (
        env.rule_file("v1.rhai", &v1),
        env.rule_file("other.rhai", &other),
    );

    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish_text("main-v1.rhai", &v1, 1).await;
    svc.publish_text("other-v1.rhai", &other, 1).await;

    let base = base_time();
    let mut feed = Feed::new();
    // Phase A; its trailing heartbeats put the watermark exactly at hb_a - 1 s.
    machine_cycle(&mut feed, &machines, base, 0, 100);
    let hb_a = step_time(base, 100);
    feed.heartbeats(&machines, hb_a);
    let phase_a = feed.all().len();
    env.put(&mut feed).await;
    wait_watermark(&mut svc, hb_a - 1000).await;

    // The update, and a script that does not compile, published under its own id.
    let st = svc.publish_text("main-v2.rhai", &v2, 2).await;
    assert_eq!(st["version"], 2, "{st}");
    let broken = env.rule_file("broken.rhai", scenario::BROKEN_RULE);
    let res = svc.publish(&broken, Some(1), Some("broken"), "10s").await;
    res.expect_code(1);
    let st = res.json();
    assert_eq!(st["status"], "rejected", "{res}");
    assert!(
        st["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a rejection carries the error: {res}"
    );
    let retained = env
        .broker
        .wait_json(
            &svc.config().status_topic("broken"),
            Duration::from_secs(5),
            |v| v["status"] == "rejected",
        )
        .await;
    assert!(
        retained["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{retained}"
    );

    // Phase B under v2; then the delete at hb_b - 1 s.
    machine_cycle(&mut feed, &machines, base, 100, 200);
    let hb_b = step_time(base, 200);
    feed.heartbeats(&machines, hb_b);
    let phase_b = feed.all().len();
    env.put(&mut feed).await;
    wait_watermark(&mut svc, hb_b - 1000).await;
    let del = svc.delete(MAIN).await;
    del.expect_code(0);
    assert_eq!(del.json()["status"], "deleted", "{del}");

    // Phase C: only the other rule remains.
    machine_cycle(&mut feed, &machines, base, 200, 300);
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;

    // The oracle: the same points with the same changes at the same places.
    let points: Vec<String> = feed.all().iter().map(|p| p.json.clone()).collect();
    // The replay recomputes its watermark every 64 lines: repeating a phase's closing
    // heartbeats (harmless, same times) makes it reach hb - 1 s before the change line,
    // as the service's had when the change was published.
    let settle = |end: usize| -> Vec<String> {
        let hbs = &points[end - machines.len()..end];
        hbs.iter().cycle().take(66).cloned().collect()
    };
    let mut lines = points[..phase_a].to_vec();
    lines.extend(settle(phase_a));
    lines.push(json!({"$rule": {"script": v2}}).to_string());
    lines.extend_from_slice(&points[phase_a..phase_b]);
    lines.extend(settle(phase_b));
    lines.push(json!({"$rule": {"delete": MAIN}}).to_string());
    lines.extend_from_slice(&points[phase_b..]);
    let input = env.dir().join("lifecycle.ndjson");
    std::fs::write(&input, ndjson(&lines)).expect("write oracle input");
    let want =
        linewatch_e2e::rules::oracle(&[v1_file.clone(), other_file.clone()], &input, "1s", "30s")
            .await;
    // Without the update, phase B would differ: the update is observable.
    let without_update = env.oracle(&feed, &[v1_file, other_file], "no-update").await;
    let main_in = |ts: &[Value], from: u64, to: u64| -> Vec<String> {
        ts.iter()
            .filter(|t| t["ruleId"] == MAIN)
            .filter(|t| (from..to).contains(&t["eventTime"].as_u64().unwrap_or(0)))
            .map(|t| t["transitionId"].to_string())
            .collect()
    };
    assert_ne!(
        main_in(&want, hb_a - 1000, hb_b),
        main_in(&without_update, hb_a - 1000, hb_b),
        "v2 should change the rule's transitions in phase B (scenario check)"
    );

    env.receiver
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    env.receiver
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    let got = details(&env.receiver.accepted_unique());
    assert_same_transitions(&got, &want);
    assert_eq!(got.len(), want.len());

    // v2 from the update on, nothing of lc-main after the delete, lc-other throughout.
    for t in got.iter().filter(|t| t["ruleId"] == MAIN) {
        let at = t["eventTime"].as_u64().unwrap_or(0);
        let version = t["ruleVersion"].as_u64().unwrap_or(0);
        assert!(at <= hb_b - 1000, "{MAIN} transition after its delete: {t}");
        if at < hb_a - 1000 {
            assert_eq!(version, 1, "a transition before the update is from v1: {t}");
        } else if at > hb_a - 1000 {
            assert_eq!(version, 2, "a transition after the update is from v2: {t}");
        }
    }
    let late_other = got
        .iter()
        .filter(|t| t["ruleId"] == OTHER && t["eventTime"].as_u64() > Some(hb_b))
        .count();
    assert!(
        late_other > 0,
        "{OTHER} keeps producing transitions after the broken rule and the delete"
    );
    assert!(
        got.iter().all(|t| t["ruleId"] != "broken"),
        "the broken rule produced nothing"
    );
    let m = svc.scrape();
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    eprintln!(
        "lifecycle: {} transitions equal to the oracle ({} of {MAIN}, {late_other} of {OTHER} after the delete)",
        got.len(),
        got.iter().filter(|t| t["ruleId"] == MAIN).count()
    );
}

/// Waits until the service's watermark is at least `at` (ms).
async fn wait_watermark(svc: &mut RulesService, at: u64) {
    svc.wait_metrics(
        &format!("the watermark at {at}"),
        Duration::from_secs(20),
        |m| {
            let w = m.get("linewatch_rules_watermark_ms");
            if w >= at as f64 {
                Ok(())
            } else {
                Err(format!("watermark {w} ({} ms short)", at as f64 - w))
            }
        },
    )
    .await
}
