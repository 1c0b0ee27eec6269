//! Abuse of event time against `linewatch-rules run` (kinesalite, Mosquitto, a webhook
//! receiver, all real processes): a point stamped in the year 3000 with an honest
//! sender's ids, and a sender whose clock is frozen, must not take the watermark — and
//! with it every rule — along.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::{Equipment, Feed};
use linewatch_testkit::ports;
use rules_common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// 3000-01-01T00:00:00Z.
const YEAR_3000: u64 = 32_503_680_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_3000_point_poisons_nothing_after_a_restart_nor_when_the_stream_is_read_again() {
    let env = Env::start("rules-abuse-future", 1).await;
    let machines = scenario::machines("fut", 2);
    let script = machine_rule("future", 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish(&rule_file, None, None, "10s")
        .await
        .expect_code(0);

    // What the honest points alone give (the oracle sees no poison).
    let base = base_time();
    let mut honest = Feed::new();
    machine_cycle(&mut honest, &machines, base, 0, 300);
    honest.heartbeats(&machines, step_time(base, 300) + 3000);
    let want = env
        .oracle(&honest, std::slice::from_ref(&rule_file), "honest")
        .await;
    let upto = |step: u64| -> Vec<String> {
        want.iter()
            .filter(|t| t["eventTime"].as_u64().unwrap_or(u64::MAX) <= step_time(base, step))
            .map(event_id_of)
            .collect()
    };
    assert!(
        upto(100).len() >= 2 && upto(180).len() > upto(100).len(),
        "the scenario changes state often"
    );

    // The same points, in three puts, the poison after the first.
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 100);
    env.put(&mut feed).await;
    // The poison, from the honest senders of both machines (their gatewayId/sourceId).
    let mut poison = Feed::new();
    poison.value(&machines[0], "temperature", YEAR_3000, json!(99.0));
    poison.heartbeat(&machines[1], YEAR_3000);
    env.kinesis.put_points(STREAM, &poison.take()).await;
    machine_cycle(&mut feed, &machines, base, 100, 200);
    env.put(&mut feed).await;
    // Before the fix the watermark went to the year 3000 here: every hold fired, and
    // every honest point after the poison was dead-lettered as late.
    env.receiver
        .wait_ids(&upto(180), Duration::from_secs(40))
        .await;
    let m = svc.scrape();
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    for eq in &machines {
        assert_eq!(
            m.sum(
                "linewatch_rules_future_points_total",
                &[("sender", &eq.sender())]
            ),
            1.0,
            "{}",
            eq.sender()
        );
    }
    assert_eq!(
        m.sum(
            "linewatch_rules_dead_letters_total",
            &[("reason", "future")]
        ),
        2.0
    );
    let dead = std::fs::read_to_string(env.dir().join("state/dead-letters/points.ndjson"))
        .expect("the points dead-letter file");
    assert_eq!(
        dead.lines()
            .filter(|l| l.contains(r#""reason":"future""#))
            .count(),
        2,
        "{dead}"
    );
    assert!(
        dead.contains("max_future_skew"),
        "the reason names the bound: {dead}"
    );

    // Restart on the checkpoint: the rest of the honest points give the rest.
    svc.terminate(Duration::from_secs(20));
    svc.start_again();
    machine_cycle(&mut feed, &machines, base, 200, 300);
    feed.heartbeats(&machines, step_time(base, 300) + 3000);
    env.put(&mut feed).await;
    let got = env
        .receiver
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    assert_same_transitions(&details(&got), &want);
    assert_eq!(svc.scrape().get("linewatch_rules_late_points_total"), 0.0);
    svc.terminate(Duration::from_secs(20));

    // A fresh instance re-reading the whole stream from trim_horizon decides the same:
    // the bound is measured from each record's arrival time, not from the wall clock.
    let mut again = env.config();
    again.instance_id = "t2".into();
    again.state_dir = env.dir().join("state-again");
    again.http.listen = format!("127.0.0.1:{}", ports::free_port());
    again.webhooks[0].url = env.receiver.url("/again");
    let mut second = RulesService::start_named("rules-again", again, env.dir(), None);
    let wanted = want.len();
    let again_got = env
        .receiver
        .wait_for("the re-read's transitions", Duration::from_secs(40), |r| {
            let mut seen = std::collections::HashSet::new();
            let reqs: Vec<_> = r
                .accepted()
                .into_iter()
                .filter(|q| q.path == "/again" && seen.insert(q.event_id()))
                .collect();
            if reqs.len() >= wanted {
                Ok(reqs)
            } else {
                Err(format!("{} of {wanted} on /again", reqs.len()))
            }
        })
        .await;
    assert_same_transitions(&details(&again_got), &want);
    let m = second.scrape();
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    assert_eq!(
        m.sum(
            "linewatch_rules_dead_letters_total",
            &[("reason", "future")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_clock_sender_stalls_transitions_no_longer_than_stall_after() {
    let env = Env::start("rules-abuse-frozen", 1).await;
    let machines = scenario::machines("frz", 2);
    let script = machine_rule("frozen", 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    let mut cfg = env.config();
    cfg.watermark
        .extra
        .insert("stall_after".into(), toml::Value::String("3s".into()));
    let mut svc = RulesService::start(cfg, env.dir());
    svc.publish(&rule_file, None, None, "10s")
        .await
        .expect_code(0);

    // A sender that keeps sending one point with the same old stamp, forever.
    let frozen = Equipment::new("frz-x", "gw-frozen", "plc-frozen");
    let base = base_time();
    let stuck_at = base + 50;
    let frozen_points = async {
        let mut f = Feed::new();
        for _ in 0..40 {
            f.value(&frozen, "temperature", stuck_at, json!(70.0));
            env.kinesis.put_points(STREAM, &f.take()).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let honest = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut feed = Feed::new();
        machine_cycle(&mut feed, &machines, base, 0, 200);
        feed.heartbeats(&machines, step_time(base, 200) + 3000);
        env.put(&mut feed).await;
        let put_at = Instant::now();
        let want = env
            .oracle(&feed, std::slice::from_ref(&rule_file), "honest")
            .await;
        // Before the fix nothing came while the frozen sender kept sending (it held the
        // watermark at its stamp); now it stops counting after stall_after.
        let got = env
            .receiver
            .wait_unique(want.len(), Duration::from_secs(12))
            .await;
        (want, got, put_at.elapsed())
    };
    let ((want, got, took), ()) = tokio::join!(honest, frozen_points);
    assert_same_transitions(&details(&got), &want);
    eprintln!("frozen sender: the honest transitions came {took:.1?} after their points");

    let m = svc.scrape();
    assert_eq!(
        m.sum("linewatch_rules_senders", &[("state", "stalled")]),
        1.0,
        "the frozen sender is reported as stalled"
    );
    let (code, body) = svc.get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "degraded", "{health}");
    let degraded = health["degraded"].to_string();
    assert!(
        degraded.contains("gw-frozen/plc-frozen") && degraded.contains("stalled"),
        "{health}"
    );
    // Its points are late now: counted for it, never evaluated.
    assert!(
        m.sum(
            "linewatch_rules_late_points_total",
            &[("sender", "gw-frozen/plc-frozen")]
        ) > 0.0
    );
}
