//! The webhook target fails: 500s for a while are retried until it answers 200, and
//! then every event arrives with the same ids (a retry resends the same body); a 400 is
//! not retried: the event lands in the dead-letter store, `dead-letters replay`
//! delivers it and empties the list.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use rules_common::*;
use std::collections::BTreeSet;
use std::time::Duration;

const RULE: &str = "wh-machines";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_500_then_dead_letters_400_and_replays_it() {
    let env = Env::start("rules-webhook", 1).await;
    let machines = scenario::machines("wh", 3);
    let script = machine_rule(RULE, 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    env.receiver.set_status(500);

    let mut svc = RulesService::start(env.config(), env.dir());
    svc.publish_text("rule-v1.rhai", &script, 1).await;
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 200);
    feed.heartbeats(&machines, step_time(base, 200) + 3000);
    env.put(&mut feed).await;
    let want = env
        .oracle(&feed, std::slice::from_ref(&rule_file), "phase1")
        .await;
    assert!(want.len() >= 10, "oracle: {} transitions", want.len());

    // The target is down: the service keeps retrying (several 500s), and keeps running.
    env.receiver
        .wait_for("several 500 answers", Duration::from_secs(20), |r| {
            let n = r.requests().iter().filter(|q| q.status == 500).count();
            if n >= 8 {
                Ok(())
            } else {
                Err(format!("{n} answered 500; {}", r.describe_last(3)))
            }
        })
        .await;
    svc.assert_running();
    env.receiver.set_status(200);
    let ids = ids_of(&want);
    env.receiver.wait_ids(&ids, Duration::from_secs(30)).await;
    env.receiver
        .settle(Duration::from_millis(800), Duration::from_secs(5))
        .await;
    let got = details(&env.receiver.accepted_unique());
    assert_same_transitions(&got, &want);
    // Every copy of an event (failed attempts included) has the same body: same id, same bytes.
    let mut by_id: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    for r in env.receiver.requests() {
        let id = r
            .event_id()
            .unwrap_or_else(|| panic!("no id in {}", r.describe()));
        by_id.entry(id).or_default().push(r.body.clone());
    }
    for (id, bodies) in &by_id {
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "event {id} was sent with different bodies"
        );
    }
    let got_ids: BTreeSet<&String> = by_id.keys().collect();
    let want_ids: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(got_ids, want_ids, "ids over all attempts = the oracle's");
    let m = svc.scrape();
    assert!(
        m.sum(
            "linewatch_rules_webhook_retries_total",
            &[("target", "recv")]
        ) >= 7.0,
        "retries are visible in the metrics: {}",
        m.describe("linewatch_rules_webhook_")
    );

    // Phase 2: the next event is answered 400 (a client error: never retried).
    let before = env.receiver.request_count();
    env.receiver.fail_next(400, 1);
    machine_cycle(&mut feed, &machines, base, 240, 400);
    feed.heartbeats(&machines, step_time(base, 400) + 3000);
    env.put(&mut feed).await;
    let want_all = env.oracle(&feed, &[rule_file], "phase2").await;
    let rejected = env
        .receiver
        .wait_for("a request answered 400", Duration::from_secs(20), |r| {
            r.requests()
                .into_iter()
                .skip(before)
                .find(|q| q.status == 400)
                .ok_or_else(|| format!("none yet; {}", r.describe_last(3)))
        })
        .await;
    let rejected_id = rejected.event_id().expect("the 400'd request has an id");
    // Everything else of phase 2 arrives; the rejected one is not retried.
    let others: Vec<String> = ids_of(&want_all)
        .into_iter()
        .filter(|i| *i != rejected_id)
        .collect();
    env.receiver
        .wait_ids(&others, Duration::from_secs(30))
        .await;
    env.receiver
        .settle(Duration::from_millis(800), Duration::from_secs(5))
        .await;
    let copies = env
        .receiver
        .requests()
        .iter()
        .filter(|q| q.event_id().as_deref() == Some(rejected_id.as_str()))
        .count();
    assert_eq!(copies, 1, "a 400 is not retried");

    let listed = wait_dead_letters(&svc, 1).await;
    assert_eq!(listed[0]["id"], rejected_id.as_str(), "{listed:?}");
    assert_eq!(listed[0]["target"], "recv", "{listed:?}");
    assert_eq!(listed[0]["event"]["id"], rejected_id.as_str(), "{listed:?}");

    let res = svc.dead_letters_replay(Some("recv")).await;
    res.expect_code(0);
    let replayed: Vec<_> = env
        .receiver
        .accepted()
        .into_iter()
        .filter(|q| q.event_id().as_deref() == Some(rejected_id.as_str()))
        .collect();
    assert_eq!(replayed.len(), 1, "the replay delivered it: {res}");
    assert_eq!(
        replayed[0].body, rejected.body,
        "the replay sends the same body"
    );
    let after = svc.dead_letters_list().await;
    after.expect_code(0);
    assert!(
        after.ndjson().is_empty(),
        "the list is empty after the replay: {after}"
    );

    // The replayed dead letter arrives last: compare as sets, ordered per key by sequence.
    let mut got = details(&env.receiver.accepted_unique());
    got.sort_by_key(|t| {
        (
            t["ruleId"].to_string(),
            t["equipmentId"].to_string(),
            t["sequence"].as_u64(),
        )
    });
    assert_same_transitions(&got, &want_all);
    eprintln!(
        "webhook failures: {} transitions, {} requests in all",
        want_all.len(),
        env.receiver.request_count()
    );
}

/// Polls `dead-letters list` until it shows `n` entries.
async fn wait_dead_letters(svc: &RulesService, n: usize) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    loop {
        let res = svc.dead_letters_list().await;
        res.expect_code(0);
        let entries = res.ndjson();
        if entries.len() >= n {
            return entries;
        }
        if start.elapsed() > linewatch_testkit::wait::scaled(Duration::from_secs(10)) {
            panic!(
                "waiting for {n} dead letters: {res}\nlog:\n{}",
                svc.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
