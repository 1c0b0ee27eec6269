//! Two gateways, one rule over a machine on each; gateway B's uplink is down for a
//! while, and when it returns it sends a heartbeat declaring its backlog
//! (`meta.lowWatermark`), its live points, then the backlog (`Bfl`), as an agent that
//! ships live data first does. The records go into a real Kinesis endpoint
//! (kinesalite) and `linewatch-rules run` reads them; B's silence is real wall-clock
//! idleness.
//!
//! * `watermark.scope = "equipment"`: B's machine waits for B alone, so its backlog is
//!   on time and the webhook gets exactly the transitions of the same points without
//!   any outage (the replay oracle), nothing late.
//! * `watermark.scope = "global"` (the twin): the watermark moved on with gateway A
//!   while B was idle, so B's backlog is late and dead-lettered, and what it would have
//!   changed on B's machine during the outage never reaches the webhook.

mod rules_common;

use linewatch_e2e::rules::RulesService;
use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::{Feed, Point};
use linewatch_testkit::metrics::Scrape;
use rules_common::*;
use std::time::Duration;

const RULE: &str = "outage-machines";
/// Steps (100 ms of event time each): both gateways, then B down, then both again.
const DOWN_FROM: u64 = 100;
const DOWN_TO: u64 = 200;
const END: u64 = 300;

struct Outage {
    env: Env,
    feed: Feed,
    rule_file: std::path::PathBuf,
    base: u64,
    /// The three puts: before, during (A only) and after the outage.
    before: Vec<Point>,
    during: Vec<Point>,
    after: Vec<Point>,
}

fn with_meta(p: &mut Point, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value = serde_json::from_str(&p.json).expect("a feed point is JSON");
    f(v["meta"].as_object_mut().expect("meta"));
    p.json = v.to_string();
}

/// The points in event-time order (the feed, numbered as an agent reads them), and
/// how the outage splits them into puts.
async fn scenario(test: &str) -> Outage {
    let env = Env::start(test, 1).await;
    let machines = scenario::machines("m", 2);
    let (a, b) = (&machines[0..1], &machines[1..2]);
    assert_ne!(a[0].gateway, b[0].gateway, "one machine per gateway");
    let rule_file = env.rule_file("rule.rhai", &machine_rule(RULE, 1, &machines, 80.0, "1s"));
    let base = base_time();
    let mut feed = Feed::new();
    let (mut before, mut during, mut after, mut backlog) = (vec![], vec![], vec![], vec![]);
    for step in 0..END {
        if step == DOWN_TO {
            // Back: B's first record declares that it still has points from the
            // outage's start on.
            feed.heartbeat(&b[0], step_time(base, step));
        }
        machine_cycle(&mut feed, a, base, step, step + 1);
        machine_cycle(&mut feed, b, base, step, step + 1);
        let made = feed.take();
        for mut p in made {
            let of_b = p.equipment_id == b[0].id;
            if step < DOWN_FROM {
                before.push(p);
            } else if step < DOWN_TO && of_b {
                with_meta(&mut p, |m| {
                    m.insert("flags".into(), serde_json::json!(["Bfl"]));
                });
                backlog.push(p);
            } else if step < DOWN_TO {
                during.push(p);
            } else {
                if step == DOWN_TO && of_b && p.json.contains("$heartbeat") {
                    let low = step_time(base, DOWN_FROM);
                    with_meta(&mut p, |m| {
                        m.insert("lowWatermark".into(), low.into());
                    });
                }
                after.push(p);
            }
        }
    }
    // The backlog behind the live data, then heartbeats past the end without a
    // backlog, so the last points and holds are evaluated.
    after.extend(backlog);
    feed.heartbeats(&machines, step_time(base, END) + 3000);
    after.extend(feed.take());
    Outage {
        env,
        feed,
        rule_file,
        base,
        before,
        during,
        after,
    }
}

/// Runs the service under `scope` through the outage; returns it and the scenario.
async fn run(test: &str, scope: &str) -> (Outage, RulesService) {
    let o = scenario(test).await;
    let mut cfg = o.env.config();
    cfg.watermark.idle_timeout = "2s".into();
    cfg.watermark
        .extra
        .insert("scope".into(), toml::Value::String(scope.into()));
    let mut svc = RulesService::start(cfg, o.env.dir());
    let res = svc.publish(&o.rule_file, None, None, "10s").await;
    res.expect_code(0);
    assert_eq!(res.json()["status"], "accepted", "{res}");

    let records = |n: usize| {
        move |m: &Scrape| {
            let got = m.sum("linewatch_rules_records_total", &[]);
            if got >= n as f64 {
                Ok(())
            } else {
                Err(format!("{got} of {n} records read"))
            }
        }
    };
    o.env.kinesis.put_points(STREAM, &o.before).await;
    svc.wait_metrics(
        "the points before the outage read",
        Duration::from_secs(30),
        records(o.before.len()),
    )
    .await;
    // B is down: only A's points come, until the engine sees B idle (wall clock).
    o.env.kinesis.put_points(STREAM, &o.during).await;
    svc.wait_metrics("gateway B idle", Duration::from_secs(30), |m| {
        let idle = m.sum("linewatch_rules_senders", &[("state", "idle")]);
        if idle >= 1.0 {
            Ok(())
        } else {
            Err(format!("{idle} idle senders"))
        }
    })
    .await;
    o.env.kinesis.put_points(STREAM, &o.after).await;
    let total = o.before.len() + o.during.len() + o.after.len();
    svc.wait_metrics("every record read", Duration::from_secs(30), records(total))
        .await;
    (o, svc)
}

/// Transitions of the second machine (gateway B) with an event time in the outage.
fn of_b_in_outage(details: &[serde_json::Value], base: u64) -> usize {
    of_b_in(details, base, DOWN_FROM..DOWN_TO)
}

/// Transitions of the second machine with an event time in `steps`.
fn of_b_in(details: &[serde_json::Value], base: u64, steps: std::ops::Range<u64>) -> usize {
    let window = step_time(base, steps.start)..step_time(base, steps.end);
    details
        .iter()
        .filter(|d| d["equipmentId"] == "m-1")
        .filter(|d| d["eventTime"].as_u64().is_some_and(|t| window.contains(&t)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_equipment_a_returning_gateways_backlog_is_on_time() {
    let (o, mut svc) = run("rules-outage-equipment", "equipment").await;
    let want = o
        .env
        .oracle(&o.feed, std::slice::from_ref(&o.rule_file), "points")
        .await;
    assert!(
        of_b_in_outage(&want, o.base) >= 2,
        "the rule must change state on B's machine during the outage: {want:?}"
    );
    let got = o
        .env
        .receiver
        .wait_unique(want.len(), Duration::from_secs(40))
        .await;
    o.env
        .receiver
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    // Compared per (rule, equipment): across machines the order follows each clock.
    assert_same_transitions(&details(&got), &want);
    let m = svc.scrape();
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    assert_eq!(m.get("linewatch_rules_resent_points_total"), 0.0);
    assert_eq!(m.get("linewatch_rules_equipment_clocks"), 2.0);
    assert_eq!(
        m.get("linewatch_rules_transitions_total"),
        want.len() as f64
    );
    eprintln!(
        "outage, equipment scope: {} transitions ({} of B's machine during the outage), none late",
        want.len(),
        of_b_in_outage(&want, o.base)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globally_the_same_backlog_is_late_and_its_transitions_are_lost() {
    let (o, mut svc) = run("rules-outage-global", "global").await;
    let backlog: Vec<&Point> = o
        .after
        .iter()
        .filter(|p| p.json.contains("\"Bfl\""))
        .collect();
    // The watermark trails A's last point of the outage by maxOutOfOrderness (1 s =
    // 10 steps): B's backlog older than that is late; its last second may be in time.
    let lost_before = step_time(o.base, DOWN_TO - 12);
    let surely_late = backlog.iter().filter(|p| p.timestamp < lost_before).count();
    // Every record was read when `run` returns: the count is final.
    let late = svc.scrape().sum(
        "linewatch_rules_late_points_total",
        &[("sender", "gw-b/plc-m-1")],
    );
    assert!(
        late >= surely_late as f64 && late <= backlog.len() as f64,
        "{late} late; {surely_late} of the {} backlog points are older than the watermark",
        backlog.len()
    );
    let want = o
        .env
        .oracle(&o.feed, std::slice::from_ref(&o.rule_file), "points")
        .await;
    let of_a = want.iter().filter(|d| d["equipmentId"] == "m-0").count();
    // A's machine is untouched: its transitions all come.
    o.env
        .receiver
        .wait_unique(of_a, Duration::from_secs(40))
        .await;
    o.env
        .receiver
        .settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    let got = details(&o.env.receiver.requests());
    // What B's points during the outage would have caused is lost (a hold timer set
    // before the outage may still fire in it: timers follow the watermark, not B).
    let lost = DOWN_FROM..DOWN_TO - 12;
    let (got_b, want_b) = (
        of_b_in(&got, o.base, lost.clone()),
        of_b_in(&want, o.base, lost),
    );
    assert!(
        want_b >= 2 && got_b < want_b,
        "B's outage is lost globally: {got_b} of {want_b} transitions"
    );
    let machine = |ds: &[serde_json::Value], id: &str| -> Vec<serde_json::Value> {
        ds.iter()
            .filter(|d| d["equipmentId"] == id)
            .cloned()
            .collect()
    };
    assert_same_transitions(&machine(&got, "m-0"), &machine(&want, "m-0"));
    let m = svc.scrape();
    assert_eq!(m.get("linewatch_rules_equipment_clocks"), 0.0);
    eprintln!(
        "outage, global scope: {late} of {} backlog points late, {of_a} of A's transitions delivered, {got_b} of B's {want_b} in the outage",
        backlog.len(),
    );
}
