//! Two instances splitting the rules (`--partition 0/2`, `--partition 1/2`, own
//! state_dirs and receivers) together emit exactly the events one instance owning every
//! rule emits — and both own some.

mod rules_common;

use linewatch_e2e::rules::{RulesConfig, RulesService};
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_rules_core::eval::owner_of;
use linewatch_testkit::feed::Feed;
use linewatch_testkit::peers::webhook_receiver::Receiver;
use rules_common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Two rule ids owned by each of the two partitions (by the engine's own hash).
fn rule_ids() -> Vec<String> {
    let (mut p0, mut p1) = (Vec::new(), Vec::new());
    for n in 0.. {
        let id = format!("part-r{n}");
        match owner_of(&id, 2) {
            0 if p0.len() < 2 => p0.push(id),
            1 if p1.len() < 2 => p1.push(id),
            _ => {}
        }
        if p0.len() == 2 && p1.len() == 2 {
            break;
        }
    }
    p0.into_iter().chain(p1).collect()
}

fn instance(env: &Env, name: &str, receiver: &Receiver) -> RulesConfig {
    let mut c = env.config();
    c.instance_id = name.to_owned();
    c.state_dir = env.dir().join(format!("state-{name}"));
    c.webhooks[0].url = receiver.url("/events");
    c
}

async fn wait_rules(svc: &mut RulesService, n: f64) {
    svc.wait_metrics(
        &format!("{n} rules loaded"),
        Duration::from_secs(15),
        |m| match m.get("linewatch_rules_rules_loaded") {
            v if v == n => Ok(()),
            v => Err(format!("rules_loaded {v}")),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitions_emit_exactly_what_one_instance_emits() {
    let env = Env::start("rules-partitions", 1).await;
    let machines = scenario::machines("p", 4);
    let ids = rule_ids();
    // Different equipment subsets and thresholds, so every rule has its own transitions.
    let scripts: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let eq = &machines[i % 2..];
            machine_rule(id, 1, eq, 78.0 + 2.0 * i as f64, "1s")
        })
        .collect();
    let files: Vec<_> = ids
        .iter()
        .zip(&scripts)
        .map(|(id, s)| env.rule_file(&format!("{id}.rhai"), s))
        .collect();

    let (recv0, recv1) = (Receiver::start(), Receiver::start());
    let mut all =
        RulesService::start_named("all", instance(&env, "all", &env.receiver), env.dir(), None);
    let mut p0 =
        RulesService::start_named("p0", instance(&env, "p0", &recv0), env.dir(), Some("0/2"));
    let mut p1 =
        RulesService::start_named("p1", instance(&env, "p1", &recv1), env.dir(), Some("1/2"));
    for (i, s) in scripts.iter().enumerate() {
        all.publish_text(&format!("pub-{i}.rhai"), s, 1).await;
    }
    wait_rules(&mut all, 4.0).await;
    wait_rules(&mut p0, 2.0).await;
    wait_rules(&mut p1, 2.0).await;

    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 250);
    feed.heartbeats(&machines, step_time(base, 250) + 3000);
    env.put(&mut feed).await;
    let want = env.oracle(&feed, &files, "points").await;
    let want_ids = ids_of(&want);

    env.receiver
        .wait_ids(&want_ids, Duration::from_secs(40))
        .await;
    // Each partition gets the oracle's events of the rules it owns.
    let owned = |p: usize| -> Vec<String> {
        want.iter()
            .filter(|t| owner_of(t["ruleId"].as_str().unwrap_or(""), 2) == p)
            .map(event_id_of)
            .collect()
    };
    let (want0, want1) = (owned(0), owned(1));
    assert!(
        !want0.is_empty() && !want1.is_empty(),
        "both partitions own transitions"
    );
    recv0.wait_ids(&want0, Duration::from_secs(20)).await;
    recv1.wait_ids(&want1, Duration::from_secs(20)).await;
    for r in [&env.receiver, &recv0, &recv1] {
        r.settle(Duration::from_millis(800), Duration::from_secs(5))
            .await;
    }

    let set = |r: &Receiver| -> BTreeSet<String> {
        r.accepted().iter().filter_map(|q| q.event_id()).collect()
    };
    let (s_all, s0, s1) = (set(&env.receiver), set(&recv0), set(&recv1));
    assert!(
        s0.is_disjoint(&s1),
        "an event from both partitions: {:?}",
        s0.intersection(&s1).collect::<Vec<_>>()
    );
    let union: BTreeSet<String> = s0.union(&s1).cloned().collect();
    assert_eq!(union, s_all, "partitions together = one instance");
    assert_eq!(
        s_all,
        want_ids.iter().cloned().collect::<BTreeSet<_>>(),
        "one instance = the oracle"
    );
    // Same bodies from both sides.
    assert_same_transitions(&details(&env.receiver.accepted_unique()), &want);
    let mut parts = details(&recv0.accepted_unique());
    parts.extend(details(&recv1.accepted_unique()));
    assert_same_transitions(&parts, &want);
    eprintln!(
        "partitions: {} events = {} (0/2) + {} (1/2); rules {ids:?}",
        s_all.len(),
        s0.len(),
        s1.len()
    );
}
