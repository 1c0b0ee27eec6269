//! Shared by the `agent_opcua_*` tests: an agent whose config has one OPC UA source
//! (the harness's typed config knows Modbus only: the OPC UA table is written as TOML
//! here), kinesalite, and waiting on the stream.
#![allow(dead_code)]

use linewatch_e2e::agent::AgentConfig;
use linewatch_e2e::programs;
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::opcua_server::FILLER_NS;
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::process::{ManagedProcess, ProcessSpec, Ready};
use linewatch_testkit::wait;
use linewatch_testkit::Scratch;
use std::path::Path;
use std::time::Duration;

pub const STREAM: &str = "linewatch";
pub const SOURCE: &str = "filler_ua";
pub const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";

/// A tag of the filler namespace by its script name (`Filler.Double` → tag `double`).
pub fn filler_tag(node: &str) -> String {
    let name = node.trim_start_matches("Filler.").to_lowercase();
    format!("{{ name = \"{name}\", node_id = \"nsu={FILLER_NS};s={node}\" }}")
}

/// One `[[sources]]` table of type opcua: `keys` are extra source keys (TOML lines),
/// `groups` the `[[sources.groups]]` tables.
pub fn ua_source(endpoint: &str, pki: &Path, keys: &str, groups: &str) -> String {
    format!(
        "\n[[sources]]\ntype = \"opcua\"\nid = \"{SOURCE}\"\nequipment_id = \"{FILLER}\"\nendpoint = \"{endpoint}\"\npki_dir = \"{}\"\ntimeout = \"2s\"\nreconnect_initial = \"200ms\"\nreconnect_max = \"1s\"\nheartbeat_interval = \"500ms\"\n{keys}\n{groups}\n",
        pki.display()
    )
}

/// A subscribed group of `tags` (inline tables), publishing every `publishing`.
pub fn group(name: &str, publishing: &str, extra: &str, tags: &[String]) -> String {
    format!(
        "[[sources.groups]]\nname = \"{name}\"\npublishing_interval = \"{publishing}\"\n{extra}\ntags = [\n  {}\n]\n",
        tags.join(",\n  ")
    )
}

pub struct UaAgent {
    pub process: ManagedProcess,
    pub config: AgentConfig,
}

impl std::ops::Deref for UaAgent {
    type Target = ManagedProcess;
    fn deref(&self) -> &ManagedProcess {
        &self.process
    }
}
impl std::ops::DerefMut for UaAgent {
    fn deref_mut(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}

/// Writes the config (the harness's base plus `sources`) and starts `linewatch-agent run`.
#[track_caller]
pub fn start_agent(
    dir: &Path,
    kinesis_endpoint: &str,
    sources: &str,
    env: &[(&str, &str)],
) -> UaAgent {
    let config = AgentConfig::new(dir, kinesis_endpoint, STREAM);
    let text = format!("{}\n{sources}", base_toml(&config));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let mut spec = ProcessSpec::new("linewatch-agent", programs::agent(), &dir.join("agent.log"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .ready(
            Ready::Http {
                addr: config.metrics_addr(),
                path: "/metrics".into(),
            },
            Duration::from_secs(30),
        )
        .metrics(config.metrics_addr(), "linewatch_agent_");
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    UaAgent {
        process: spec.start(),
        config,
    }
}

/// The harness's config as TOML without its (empty, Modbus-typed) `sources` array, so
/// `[[sources]]` tables can follow.
pub fn base_toml(config: &AgentConfig) -> String {
    config
        .to_toml()
        .lines()
        .filter(|l| l.trim() != "sources = []")
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn kinesalite(scratch: &Scratch) -> Kinesalite {
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 1).await;
    k
}

/// Reads and decodes the whole stream until `check` accepts it.
#[track_caller]
pub fn wait_stream<'a, T: 'a>(
    k: &'a Kinesalite,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&[Shipped]) -> Result<T, String> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    wait::until(what, timeout, async move || {
        let records = k.read_all(STREAM).await;
        let pts = points::decode(&records);
        check(&pts).map_err(|e| format!("{e} ({} records so far)", records.len()))
    })
}

/// The data points (not heartbeats) of `tag`.
pub fn of<'a>(pts: &'a [Shipped], tag: &str) -> Vec<&'a Shipped> {
    points::of_tag(pts, tag)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
