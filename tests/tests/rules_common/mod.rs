//! Shared by the rule engine tests (`rules_*.rs`): the peers of one test, checks of
//! the EventBridge envelope, and comparison with the replay oracle.
#![allow(dead_code)] // each test binary uses a different part

use linewatch_e2e::agent::{modbus_source, tag, unreachable_address, AgentConfig, Tag};
use linewatch_e2e::programs;
use linewatch_e2e::rules::{self, RulesConfig};
use linewatch_rules_core::Transition;
use linewatch_testkit::feed::Feed;
pub use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::Kinesalite;
use linewatch_testkit::peers::modbus_plc::{coil, reg, ModbusSim, SimOptions};
use linewatch_testkit::peers::mosquitto::{self, Broker, RetainedCleanup};
use linewatch_testkit::peers::webhook_receiver::{Receiver, Request};
use linewatch_testkit::process::{ManagedProcess, ProcessSpec, Ready};
use linewatch_testkit::Scratch;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const STREAM: &str = "points";

/// The peers of one test: kinesalite with a stream, the broker, a receiver, a topic prefix.
pub struct Env {
    /// Clears every retained message under `prefix` when the test ends, passed or
    /// failed (declared first: dropped while the broker is still up).
    _retained: RetainedCleanup,
    pub scratch: Scratch,
    pub kinesis: Kinesalite,
    pub broker: Broker,
    pub receiver: Receiver,
    pub prefix: String,
}

impl Env {
    pub async fn start(test: &str, shards: i32) -> Env {
        let scratch = Scratch::new(test);
        let kinesis = Kinesalite::start(Default::default(), scratch.path());
        kinesis.create_stream(STREAM, shards).await;
        let broker = Broker::start(scratch.path());
        let prefix = mosquitto::unique_prefix(test);
        Env {
            _retained: broker.retained_cleanup(&prefix),
            receiver: Receiver::start(),
            prefix,
            kinesis,
            broker,
            scratch,
        }
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// A service config for this env, posting to `/events` of the receiver.
    pub fn config(&self) -> RulesConfig {
        RulesConfig::new(
            self.dir(),
            &self.kinesis.endpoint(),
            STREAM,
            self.broker.port(),
            &self.prefix,
            &self.receiver.url("/events"),
        )
    }

    /// PutRecords of the points `feed` made since the last put.
    pub async fn put(&self, feed: &mut Feed) {
        self.kinesis.put_points(STREAM, &feed.take()).await;
    }

    /// Writes `script` to a file in the scratch dir (for the oracle); returns its path.
    pub fn rule_file(&self, name: &str, script: &str) -> PathBuf {
        let p = self.dir().join(name);
        std::fs::write(&p, script).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    }

    /// The oracle's transitions for every point `feed` made and `rules`.
    pub async fn oracle(&self, feed: &Feed, rules: &[PathBuf], name: &str) -> Vec<Value> {
        let input = self.dir().join(format!("{name}.ndjson"));
        feed.write_ndjson(&input);
        rules::oracle(rules, &input, "1s", "30s").await
    }
}

/// The event id the engine must give a transition (`detail`): uuid v5 of its transitionId.
#[track_caller]
pub fn event_id_of(detail: &Value) -> String {
    let t: Transition = serde_json::from_value(detail.clone())
        .unwrap_or_else(|e| panic!("not a transition ({e}): {detail}"));
    t.event_id().to_string()
}

/// The event ids of the oracle's transitions, in order.
pub fn ids_of(transitions: &[Value]) -> Vec<String> {
    transitions.iter().map(event_id_of).collect()
}

/// Checks one webhook body is a complete EventBridge envelope for `account`/`region`.
pub fn check_envelope(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("the body is not a JSON object")?;
    let want: BTreeSet<&str> = [
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    ]
    .into();
    let have: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    if have != want {
        return Err(format!("envelope keys {have:?}, expected {want:?}"));
    }
    let s = |k: &str| body[k].as_str().unwrap_or("<not a string>");
    for (k, v) in [
        ("version", "0"),
        ("detail-type", "Rule State Changed"),
        ("source", "linewatch.rules"),
        ("account", rules::ACCOUNT),
        ("region", rules::REGION),
    ] {
        if s(k) != v {
            return Err(format!("{k} is {:?}, expected {v:?}", body[k]));
        }
    }
    let detail = &body["detail"];
    for k in [
        "ruleId",
        "ruleVersion",
        "equipmentId",
        "previousState",
        "state",
        "eventTime",
        "sequence",
        "transitionId",
        "groups",
        "values",
    ] {
        if detail.get(k).is_none() {
            return Err(format!("detail has no {k}: {detail}"));
        }
    }
    let expected_id = event_id_of(detail);
    if s("id") != expected_id {
        return Err(format!(
            "id {} is not uuid v5 of transitionId {} ({expected_id})",
            s("id"),
            detail["transitionId"]
        ));
    }
    let rule = detail["ruleId"].as_str().unwrap_or("");
    if body["resources"] != serde_json::json!([format!("linewatch:rule/{rule}")]) {
        return Err(format!("resources {}", body["resources"]));
    }
    let time = humantime::parse_rfc3339(s("time"))
        .map_err(|e| format!("time {:?} is not RFC 3339: {e}", s("time")))?;
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let event_time = detail["eventTime"].as_u64().ok_or("eventTime not a u64")?;
    if secs != event_time / 1000 {
        return Err(format!(
            "time {} is not eventTime {event_time} (to the second)",
            s("time")
        ));
    }
    Ok(())
}

/// The `detail` of each request (first copies), failing on a body that is not an envelope.
#[track_caller]
pub fn details(reqs: &[Request]) -> Vec<Value> {
    reqs.iter()
        .map(|r| {
            let body = r
                .json()
                .unwrap_or_else(|| panic!("request {} body is not JSON", r.describe()));
            if let Err(e) = check_envelope(&body) {
                panic!("request {}: {e}\nbody: {body}", r.describe());
            }
            body["detail"].clone()
        })
        .collect()
}

/// (ruleId, equipmentId) → transitionIds, in the given order.
pub fn per_key(transitions: &[Value]) -> BTreeMap<(String, String), Vec<String>> {
    let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for t in transitions {
        let key = (
            t["ruleId"].as_str().unwrap_or("").to_owned(),
            t["equipmentId"].as_str().unwrap_or("").to_owned(),
        );
        m.entry(key)
            .or_default()
            .push(t["transitionId"].as_str().unwrap_or("").to_owned());
    }
    m
}

/// Panics (showing the first difference) unless `got` equals `want` per (rule, equipment),
/// in order, and every transition is equal as JSON to the oracle's.
#[track_caller]
pub fn assert_same_transitions(got: &[Value], want: &[Value]) {
    let (g, w) = (per_key(got), per_key(want));
    for key in g.keys().chain(w.keys()).collect::<BTreeSet<_>>() {
        let (gs, ws) = (
            g.get(key).cloned().unwrap_or_default(),
            w.get(key).cloned().unwrap_or_default(),
        );
        if gs != ws {
            let i = gs.iter().zip(&ws).take_while(|(a, b)| a == b).count();
            panic!(
                "transitions of {key:?} differ from the oracle at #{i}: got {:?}, oracle {:?}\n(got {} vs {} transitions; got all: {:?})",
                gs.get(i),
                ws.get(i),
                gs.len(),
                ws.len(),
                gs
            );
        }
    }
    let by_id: BTreeMap<&str, &Value> = want
        .iter()
        .map(|t| (t["transitionId"].as_str().unwrap_or(""), t))
        .collect();
    for t in got {
        let id = t["transitionId"].as_str().unwrap_or("");
        if by_id.get(id) != Some(&t) {
            panic!(
                "transition {id} differs from the oracle's:\n got    {t}\n oracle {}",
                by_id.get(id).map(|v| v.to_string()).unwrap_or_default()
            );
        }
    }
}

/// `linewatch-agent run` on `cfg` with `kinesis_keys` (TOML lines, e.g. `aggregation =
/// "kpl"`) added to its `[kinesis]` table, which the harness's config does not model.
#[track_caller]
pub fn start_agent(
    cfg: &AgentConfig,
    dir: &Path,
    name: &str,
    kinesis_keys: &str,
) -> ManagedProcess {
    let toml = cfg.to_toml();
    assert!(toml.contains("[kinesis]\n"), "{toml}");
    let toml = toml.replacen("[kinesis]\n", &format!("[kinesis]\n{kinesis_keys}\n"), 1);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("writing the agent config");
    ProcessSpec::new(name, programs::agent(), &dir.join(format!("{name}.log")))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .ready(
            Ready::Http {
                addr: cfg.metrics_addr(),
                path: "/metrics".into(),
            },
            Duration::from_secs(30),
        )
        .metrics(cfg.metrics_addr(), "linewatch_agent_")
        .start()
}

/// A copy of an agent's buffer directory (sled's files), to drain it more than once.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a buffer copy");
    for e in std::fs::read_dir(from).expect("reading the buffer dir") {
        let e = e.expect("a buffer dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copying a buffer file");
        }
    }
}

/// Waits until `agent` has read `n` more points of `source` than `before`; returns the
/// new count.
pub async fn polls(agent: &mut ManagedProcess, source: &str, before: f64, n: f64) -> f64 {
    agent
        .wait_metrics(
            "the agent to poll the held values",
            Duration::from_secs(30),
            |s| {
                let read = s.sum("linewatch_agent_points_read_total", &[("source", source)]);
                if read >= before + n {
                    Ok(read)
                } else {
                    Err(format!("{read} points read"))
                }
            },
        )
        .await
}

/// The Modbus tags [`running_hot_rule`] reads: `water_temperature` (register 0, f32)
/// and `running` (coil 0).
pub fn running_hot_tags() -> Vec<Tag> {
    vec![
        tag("water_temperature", "holding_register", 0, "f32"),
        tag("running", "coil", 0, "bool"),
    ]
}

/// A rule for one filler fed by the harness's Modbus tags: `running` (ACTIVE/IDLE) and
/// `water_temperature` above 80 held for 1 s (WARNING, the heavier group).
pub fn running_hot_rule(id: &str, equipment: &str) -> String {
    format!(
        r#"// e2e: running/idle, and overheating held for 1 s.
#{{
    id: {id:?},
    version: 1,
    equipment: [{equipment:?}],
    states: ["OK", "IDLE", "ACTIVE", "WARNING", "ERROR"],
    groups: [
        #{{ name: "running", weight: 1, tags: ["running"],
           state: |v| if v.running == true {{ "ACTIVE" }} else {{ "IDLE" }} }},
        #{{ name: "hot", weight: 3, tags: ["water_temperature"], hold: "1s",
           state: |v| if v.water_temperature > 80.0 {{ "WARNING" }} else {{ () }} }},
    ],
}}
"#
    )
}

/// Phase 1 of the drain tests: an agent (with `kinesis_keys`) polls the Modbus sim every
/// 100 ms for `equipment`'s `water_temperature` (register 0, f32) and `running` (coil 0)
/// while Kinesis is unreachable, and the `steps` — (temperature, running, polls held) —
/// are set one after another; every point stays in its buffer. Returns the agent's
/// config (whose buffer the test drains) and the readings taken.
pub async fn buffer_scenario(
    dir: &Path,
    source: &str,
    equipment: &str,
    kinesis_keys: &str,
    steps: &[(f64, bool, f64)],
) -> (AgentConfig, f64) {
    let mut sim = ModbusSim::start(SimOptions::default(), dir);
    let unreachable = format!("http://{}", unreachable_address());
    let mut cfg = AgentConfig::new(dir, &unreachable, "nowhere");
    cfg.sources.push(modbus_source(
        source,
        &sim.address(),
        equipment,
        "100ms",
        running_hot_tags(),
    ));
    let mut producer = start_agent(&cfg, dir, "agent-producer", kinesis_keys);
    let mut read = 0.0;
    for &(temp, running, held) in steps {
        sim.set(&[reg(0, "f32", temp), coil(0, running)]);
        read = polls(&mut producer, source, read, 2.0 * held).await;
    }
    producer.terminate(Duration::from_secs(20));
    (cfg, read)
}
