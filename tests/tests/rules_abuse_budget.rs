//! Rules that cost too much, against `linewatch-rules run` (kinesalite, Mosquitto, a
//! webhook receiver, all real processes): a rule whose every call runs slow built-ins
//! is quarantined (a published decision) while the other rules keep their latency, and
//! whether a rule is accepted depends on its text only, never on how loaded the
//! machine is.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use rules_common::*;
use std::time::{Duration, Instant};

/// Reads what the fast rule reads; every call runs thousands of string built-ins on
/// strings just under the size limit (each call well within the operation limit).
fn slow_rule(equipment: &str) -> String {
    format!(
        r#"#{{ id: "slow", equipment: {equipment}, groups: [
    #{{ name: "burn", tags: ["temperature"], state: |v| {{
        let s = ""; s.pad(4000, "x");
        let n = 0;
        for i in 0..1500 {{ s.replace("x", "y"); s.replace("y", "x"); n += s.len(); }}
        if n > 0 && v.temperature > 0.0 {{ "OK" }} else {{ "IDLE" }}
    }} }} ] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_builtin_rule_is_quarantined_and_the_other_rules_keep_their_latency() {
    let env = Env::start("rules-abuse-slow", 1).await;
    let machines = scenario::machines("slo", 2);
    let fast_file = env.rule_file("fast.rhai", &machine_rule("fast", 1, &machines, 80.0, "1s"));
    let ids: Vec<String> = machines.iter().map(|m| format!("{:?}", m.id)).collect();
    let slow_file = env.rule_file("slow.rhai", &slow_rule(&format!("[{}]", ids.join(", "))));
    let mut cfg = env.config();
    cfg.sections.insert(
        "rules".into(),
        toml::Value::Table(toml::toml! {
            eval_budget = "5ms"
            quarantine_after = 3
        }),
    );
    let mut svc = RulesService::start(cfg, env.dir());
    svc.publish(&fast_file, None, None, "10s")
        .await
        .expect_code(0);
    svc.publish(&slow_file, None, None, "10s")
        .await
        .expect_code(0);

    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 20);
    env.put(&mut feed).await;
    // The decision is published on the rule's status topic (retained).
    let topic = svc.config().status_topic("slow");
    let status = env
        .broker
        .wait_json(&topic, Duration::from_secs(30), |v| {
            v["status"] == "quarantined"
        })
        .await;
    assert_eq!(status["version"], 1, "{status}");
    let why = status["error"].as_str().unwrap_or("");
    assert!(
        why.contains("from event time") && why.contains("5 ms budget"),
        "{status}"
    );
    let m = svc.scrape();
    assert_eq!(m.get("linewatch_rules_rules_quarantined"), 1.0);
    assert!(m.get("linewatch_rules_evaluations_over_budget_total") >= 3.0);
    let (code, body) = svc.get("/healthz").expect("healthz");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (code, &health["status"]),
        (200, &serde_json::json!("degraded")),
        "{health}"
    );
    assert!(
        health["degraded"].to_string().contains("rule slow"),
        "{health}"
    );

    // The rest of the stream: the fast rule's transitions come as quickly as if the
    // slow rule were not there (it is no longer evaluated).
    let put_at = Instant::now();
    machine_cycle(&mut feed, &machines, base, 20, 300);
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;
    let want = env.oracle(&feed, &[fast_file], "fast").await;
    let fast_of =
        |r: &linewatch_testkit::peers::webhook_receiver::Receiver| -> Vec<serde_json::Value> {
            details(&r.accepted_unique())
                .into_iter()
                .filter(|d| d["ruleId"] == "fast")
                .collect()
        };
    let got = env
        .receiver
        .wait_for(
            "the fast rule's transitions",
            Duration::from_secs(10),
            |r| {
                let got = fast_of(r);
                if got.len() >= want.len() {
                    Ok(got)
                } else {
                    Err(format!("{} of {}", got.len(), want.len()))
                }
            },
        )
        .await;
    let took = put_at.elapsed();
    assert_same_transitions(&got, &want);
    eprintln!(
        "slow rule quarantined; the fast rule's {} transitions came within {took:.1?}",
        want.len()
    );
    // 280 steps × 2 machines of temperature would cost the slow rule ≥ 5 ms each.
    assert!(
        svc.scrape()
            .get("linewatch_rules_evaluations_over_budget_total")
            < 20.0,
        "the quarantined rule is not evaluated any more"
    );

    // The decision survives a restart (it is in the checkpoint, not recomputed).
    svc.terminate(Duration::from_secs(20));
    svc.start_again();
    svc.wait_metrics("the quarantine restored", Duration::from_secs(10), |m| {
        if m.get("linewatch_rules_rules_quarantined") == 1.0 {
            Ok(())
        } else {
            Err("not quarantined".into())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_is_accepted_or_rejected_by_its_text_alone_whatever_the_load() {
    let env = Env::start("rules-abuse-compile", 1).await;
    let mut cfg = env.config();
    // A budget of 1 ms stands for a loaded machine: the top level below takes longer
    // than that in this (unoptimised) build, which rejected it before.
    cfg.sections.insert(
        "rules".into(),
        toml::Value::Table(toml::toml! { eval_budget = "1ms" }),
    );
    let mut svc = RulesService::start(cfg, env.dir());
    let heavy = r#"let limits = []; let i = 0;
while i < 8000 { i += 1; }
for n in 0..60 { limits.push(n * 1.5); }
#{ id: "heavy-top", equipment: "m-1", groups: [
    #{ name: "t", tags: ["temperature"], state: |v| if v.temperature > 80.0 { "WARNING" } else { "OK" } } ] }
"#;
    for version in 1..=3 {
        let status = svc.publish_text("heavy.rhai", heavy, version).await;
        assert_eq!(status["status"], "accepted", "{status}");
    }
    // Over the operation limit: rejected every time, for the same reason (`--id`: past
    // the CLI's own check, which is just as deterministic, to the engine).
    let endless = r#"loop { }
#{ id: "endless-top", equipment: "m-1", groups: [ #{ name: "t", tags: ["x"], state: |v| "OK" } ] }"#;
    let path = env.rule_file("endless.rhai", endless);
    let mut reasons = Vec::new();
    for version in 1..=3 {
        let res = svc
            .publish(&path, Some(version), Some("endless-top"), "10s")
            .await;
        res.expect_code(1);
        reasons.push(res.json()["error"].as_str().unwrap_or("").to_owned());
    }
    assert!(reasons[0].contains("too many operations"), "{reasons:?}");
    assert!(reasons.iter().all(|r| *r == reasons[0]), "{reasons:?}");

    // A version no next one can follow is refused with a clear status.
    let res = svc
        .publish(
            &env.rule_file("max.rhai", heavy),
            Some(u64::MAX),
            None,
            "10s",
        )
        .await;
    res.expect_code(1);
    let status = res.json();
    assert_eq!(status["status"], "rejected", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or("")
            .contains("9007199254740991"),
        "{status}"
    );

    // The checkpoint's rule comes back at a restart, under the same tight budget.
    svc.terminate(Duration::from_secs(20));
    svc.start_again();
    let rules = svc.get_json("/rules").expect("/rules");
    assert_eq!(
        rules,
        serde_json::json!([{ "ruleId": "heavy-top", "version": 3 }]),
        "{}",
        svc.log_tail(20)
    );
    assert!(!svc.log().contains("not restored"), "{}", svc.log_tail(20));
}
