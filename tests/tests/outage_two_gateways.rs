//! An outage end to end, every part a real process: two gateways, each a
//! `linewatch-agent` polling its own pymodbus server, feed `linewatch-rules run`
//! (equipment scope) through kinesalite; the engine posts to a webhook receiver. Gateway
//! B's uplink is cut for about 15 s (a proxy drops its connections; nothing reaches
//! Kinesis) while A keeps running, and both machines keep changing state.
//!
//! * During the cut, A's rule keeps emitting: its transitions of that time reach the
//!   webhook before B is back.
//! * After the cut, B ships live data first and its backlog (`Bfl`) behind it, its
//!   heartbeats declaring the backlog; nothing is dead-lettered as late.
//! * The webhook receives exactly the transitions `linewatch-rules replay` computes over
//!   the union of both gateways' points sorted by event time (up to where both clocks
//!   have passed).
//! * The reorder buffer's size during B's drain is sampled and reported.

mod rules_common;

use linewatch_e2e::agent::{modbus_source, AgentConfig};
use linewatch_e2e::rules::{self, RulesService};
use linewatch_schemas::Flag;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::modbus_plc::{coil, reg, ModbusSim, SimOptions};
use linewatch_testkit::points;
use linewatch_testkit::process::ManagedProcess;
use linewatch_testkit::proxy::FaultProxy;
use linewatch_testkit::wait;
use rules_common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const A_EQ: &str = "5b1f0f52-7d0c-4a57-9a3e-0c1d9a6e2b01";
const B_EQ: &str = "5b1f0f52-7d0c-4a57-9a3e-0c1d9a6e2b02";
const SOURCE: &str = "plc";

/// One cycle of a machine: (water temperature, running, polls held). The hot step
/// outlasts the rule's 1 s hold; 100 ms polls.
const CYCLE: [(f64, bool, f64); 4] = [
    (60.0, true, 10.0),
    (88.0, true, 22.0),
    (65.0, false, 10.0),
    (60.0, true, 10.0),
];

fn gateway(dir: &Path, name: &str, endpoint: &str, sim: &ModbusSim, eq: &str) -> AgentConfig {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("a gateway dir");
    let mut cfg = AgentConfig::new(&dir, endpoint, STREAM);
    cfg.gateway_id = format!("gw-{name}");
    let mut source = modbus_source(SOURCE, &sim.address(), eq, "100ms", running_hot_tags());
    source.heartbeat_interval = Some("250ms".into());
    cfg.sources.push(source);
    cfg
}

/// The two PLCs, driven through [`CYCLE`] step by step.
struct Line<'a> {
    sims: [&'a mut ModbusSim; 2],
    step: usize,
    read_a: f64,
}

impl Line<'_> {
    /// `n` steps, each held for its polls of gateway A; B runs a step behind.
    async fn run(&mut self, agent_a: &mut ManagedProcess, n: usize) {
        for _ in 0..n {
            let (ta, ra, held) = CYCLE[self.step % CYCLE.len()];
            let (tb, rb, _) = CYCLE[(self.step + CYCLE.len() - 1) % CYCLE.len()];
            self.sims[0].set(&[reg(0, "f32", ta), coil(0, ra)]);
            self.sims[1].set(&[reg(0, "f32", tb), coil(0, rb)]);
            self.read_a = polls(agent_a, SOURCE, self.read_a, 2.0 * held).await;
            self.step += 1;
        }
    }
}

/// Transitions at or before `cutoff` (event time).
fn until(ts: &[Value], cutoff: u64) -> Vec<Value> {
    ts.iter()
        .filter(|d| d["eventTime"].as_u64().is_some_and(|t| t <= cutoff))
        .cloned()
        .collect()
}

fn of(ts: &[Value], eq: &str) -> Vec<Value> {
    ts.iter()
        .filter(|d| d["equipmentId"] == eq)
        .cloned()
        .collect()
}

/// What one run of the scenario left: the peers (still up), the replay's transitions
/// up to `cutoff`, and what was seen on the way.
struct Outage {
    env: Env,
    svc: RulesService,
    want: Vec<Value>,
    cutoff: u64,
    cut: std::ops::Range<u64>,
    /// A's transitions of the cut at the webhook before B was back.
    a_during: usize,
    /// B's transitions of the cut in the replay.
    b_in_cut: usize,
    backlog: usize,
    peak_buffered: f64,
    live_delay: f64,
}

/// Transitions of `eq` with an event time in `window`.
fn in_window(ts: &[Value], eq: &str, window: &std::ops::Range<u64>) -> usize {
    of(ts, eq)
        .iter()
        .filter(|d| d["eventTime"].as_u64().is_some_and(|t| window.contains(&t)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_gateway_returns_in_time_and_the_webhook_gets_the_sorted_replay() {
    let mut o = scenario("outage-two-gateways", "equipment").await;
    let got = wait::until(
        "the webhook to hold the replay's transitions",
        Duration::from_secs(40),
        async || {
            let got = until(&details(&o.env.receiver.requests()), o.cutoff);
            let unique: HashSet<String> = got.iter().map(event_id_of).collect();
            if unique.len() >= o.want.len() {
                Ok(got)
            } else {
                Err(format!("{} of {}", unique.len(), o.want.len()))
            }
        },
    )
    .await;
    assert_same_transitions(&got, &o.want);
    let m = o.svc.scrape();
    assert_eq!(
        m.get("linewatch_rules_late_points_total"),
        0.0,
        "nothing late"
    );
    assert_eq!(m.sum("linewatch_rules_dead_letters_total", &[]), 0.0);
    assert!(o.live_delay < 2.0, "B's live delay {} s", o.live_delay);
    eprintln!(
        "two gateways, equipment scope: B cut {:.1} s, {} backlog points, {} transitions as the replay ({} of B's machine during the cut, {} of A's arrived during it), none late; reorder buffer peak {} points; B's live delay {:.3} s",
        (o.cut.end - o.cut.start) as f64 / 1000.0,
        o.backlog,
        o.want.len(),
        o.b_in_cut,
        o.a_during,
        o.peak_buffered,
        o.live_delay,
    );
}

/// The same outage under the global watermark (what Krones runs): A's points moved the
/// watermark on while B was idle, so B's backlog is late, dead-lettered, and what it
/// would have changed on B's machine never reaches the webhook. A's machine is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_global_watermark_the_same_backlog_is_late_and_lost() {
    let mut o = scenario("outage-two-gateways-global", "global").await;
    let want_a = of(&o.want, A_EQ);
    let got = wait::until(
        "the webhook to hold A's transitions",
        Duration::from_secs(40),
        async || {
            let got = until(&details(&o.env.receiver.requests()), o.cutoff);
            let a: HashSet<String> = of(&got, A_EQ).iter().map(event_id_of).collect();
            if a.len() >= want_a.len() {
                Ok(got)
            } else {
                Err(format!("{} of A's {}", a.len(), want_a.len()))
            }
        },
    )
    .await;
    assert_same_transitions(&of(&got, A_EQ), &want_a);
    let m = o.svc.scrape();
    let late = m.sum(
        "linewatch_rules_late_points_total",
        &[("sender", "gw-b/plc")],
    );
    assert!(late > 0.0, "B's backlog is late globally");
    let b_got = in_window(&got, B_EQ, &o.cut);
    assert!(
        b_got < o.b_in_cut,
        "B's changes during the cut are lost: {b_got} of {} reached the webhook",
        o.b_in_cut
    );
    eprintln!(
        "two gateways, global scope: {late} of B's {} backlog points late; {b_got} of B's {} transitions of the cut delivered; A's {} all delivered",
        o.backlog,
        o.b_in_cut,
        want_a.len()
    );
}

async fn scenario(test: &str, scope: &str) -> Outage {
    let env = Env::start(test, 1).await;
    let dir = env.dir().to_owned();
    let mut cfg = env.config();
    cfg.watermark.idle_timeout = "3s".into();
    cfg.watermark
        .extra
        .insert("scope".into(), toml::Value::String(scope.into()));
    let mut svc = RulesService::start(cfg, &dir);
    let rule_files: Vec<_> = [("outage-a", A_EQ), ("outage-b", B_EQ)]
        .iter()
        .map(|(id, eq)| env.rule_file(&format!("{id}.rhai"), &running_hot_rule(id, eq)))
        .collect();
    for f in &rule_files {
        let res = svc.publish(f, None, None, "10s").await;
        res.expect_code(0);
        assert_eq!(res.json()["status"], "accepted", "{res}");
    }

    let mut sim_a = ModbusSim::start(SimOptions::default(), &dir);
    let mut sim_b = ModbusSim::start(SimOptions::default(), &dir);
    let proxy = FaultProxy::start(env.kinesis.port()).await;
    let cfg_a = gateway(&dir, "a", &env.kinesis.endpoint(), &sim_a, A_EQ);
    let cfg_b = gateway(&dir, "b", &proxy.endpoint(), &sim_b, B_EQ);
    let keys = "backfill_after = \"2s\"";
    let mut agent_a = start_agent(&cfg_a, &dir.join("a"), "agent-a", keys);
    let mut agent_b = start_agent(&cfg_b, &dir.join("b"), "agent-b", keys);

    // Both machines run the cycle, B a step behind A; A's polls pace the test.
    let mut line = Line {
        sims: [&mut sim_a, &mut sim_b],
        step: 0,
        read_a: 0.0,
    };
    line.run(&mut agent_a, 4).await;

    // B's uplink is down for three cycles.
    proxy.cut(true);
    let cut_at = points_now();
    line.run(&mut agent_a, 12).await;
    let restored_at = points_now();
    // A kept emitting: its transitions of the cut are at the webhook already.
    let a_during: Vec<Value> = of(&details(&env.receiver.requests()), A_EQ)
        .into_iter()
        .filter(|d| {
            d["eventTime"]
                .as_u64()
                .is_some_and(|t| (cut_at..restored_at).contains(&t))
        })
        .collect();
    assert!(
        a_during.len() >= 4,
        "A's rule kept emitting during B's cut: {} transitions",
        a_during.len()
    );
    proxy.cut(false);

    // B drains while both keep running; sample the reorder buffer meanwhile.
    let mut peak_buffered = 0.0f64;
    {
        let run = line.run(&mut agent_a, 8);
        tokio::pin!(run);
        loop {
            tokio::select! {
                _ = &mut run => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    peak_buffered = peak_buffered.max(svc.scrape().get("linewatch_rules_reorder_buffered"));
                }
            }
        }
    }
    let b_metrics = agent_b
        .wait_metrics("B's backlog in", Duration::from_secs(60), |s| {
            if s.get("linewatch_agent_backfill_records") == 0.0
                && s.get("linewatch_agent_backfill_shipped_total") > 0.0
            {
                Ok(s.clone())
            } else {
                Err(format!(
                    "backfill_records {}, shipped {}",
                    s.get("linewatch_agent_backfill_records"),
                    s.get("linewatch_agent_backfill_shipped_total")
                ))
            }
        })
        .await;
    agent_a.terminate(Duration::from_secs(20));
    agent_b.terminate(Duration::from_secs(20));

    // The stream: every point of both gateways, B's backlog flagged.
    let pts = points::decode(&env.kinesis.read_all(STREAM).await);
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    let first_copies = points::unique(&pts);
    let backlog = first_copies
        .iter()
        .filter(|p| p.point.meta.flags.contains(Flag::Bfl))
        .count();
    assert!(
        backlog >= 100,
        "B's backlog is flagged: {backlog} Bfl points"
    );
    assert!(
        first_copies
            .iter()
            .filter(|p| p.point.meta.flags.contains(Flag::Bfl))
            .all(|p| p.point.meta.gateway_id.as_deref() == Some("gw-b")),
        "only B had a backlog"
    );

    // The oracle: the union of both gateways' points, sorted by event time.
    let mut sorted: Vec<_> = first_copies.clone();
    sorted.sort_by_key(|p| p.point.timestamp);
    let mut ndjson = String::new();
    for p in &sorted {
        ndjson.push_str(&String::from_utf8_lossy(&p.raw));
        ndjson.push('\n');
    }
    let input = dir.join("union.ndjson");
    std::fs::write(&input, ndjson).expect("writing the oracle input");
    let want_all = rules::oracle(&rule_files, &input, "1s", "30s").await;
    // Up to where both equipment clocks have passed: a hold's length behind the last
    // points of the slower gateway.
    let last_of = |gw: &str| {
        first_copies
            .iter()
            .filter(|p| p.point.meta.gateway_id.as_deref() == Some(gw))
            .map(|p| p.point.timestamp)
            .max()
            .expect("points of each gateway")
    };
    let cutoff = last_of("gw-a").min(last_of("gw-b")) - 3_000;
    let want = until(&want_all, cutoff);
    let cut = cut_at..restored_at;
    let b_in_cut = in_window(&want, B_EQ, &cut);
    assert!(
        b_in_cut >= 4,
        "B's machine changed state during its cut: {b_in_cut} transitions"
    );
    assert!(
        peak_buffered < first_copies.len() as f64,
        "the reorder buffer stayed below the stream: {peak_buffered}"
    );
    Outage {
        live_delay: b_metrics.get("linewatch_agent_live_delay_seconds"),
        env,
        svc,
        want,
        cutoff,
        cut,
        a_during: a_during.len(),
        b_in_cut,
        backlog,
        peak_buffered,
    }
}

/// The wall clock in ms: the agents stamp points with it.
fn points_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}
