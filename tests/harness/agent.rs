//! The agent under test: its configuration (written as TOML), the process, its metrics.

use crate::programs;
use linewatch_testkit::kinesis;
use linewatch_testkit::process::{ManagedProcess, ProcessSpec, Ready};
use linewatch_testkit::{http, ports};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// The agent's configuration, as the harness writes it. Optional keys are left out
/// when `None`, so the agent's own defaults apply.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    pub gateway_id: String,
    pub telemetry: Telemetry,
    pub buffer: Buffer,
    pub kinesis: Kinesis,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<ModbusSource>,
    /// TOML appended as written (e.g. `[[sources]]` tables of other protocols).
    #[serde(skip)]
    pub extra_toml: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Telemetry {
    pub listen: String,
    pub log_level: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Buffer {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub overflow: String,
    pub commit_interval: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kinesis {
    pub stream: String,
    pub region: String,
    pub endpoint_url: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub linger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_initial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_after: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModbusSource {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub address: String,
    pub unit_id: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equipment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_initial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    pub groups: Vec<Group>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    pub interval: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tag {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equipment_id: Option<String>,
    pub area: String,
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub byte_order: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub word_order: Option<String>,
    /// Code → name (`map = { 1 = "RUNNING" }`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<std::collections::BTreeMap<String, String>>,
    /// Report by exception (`deadband_absolute`, `max_silence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadband_absolute: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_silence: Option<String>,
}

/// A tag with no scaling, big-endian: `tag("water_temperature", "holding_register", 0, "f32")`.
pub fn tag(name: &str, area: &str, address: u16, data_type: &str) -> Tag {
    Tag {
        name: name.to_owned(),
        equipment_id: None,
        area: area.to_owned(),
        address,
        data_type: data_type.to_owned(),
        scale: None,
        offset: None,
        byte_order: None,
        word_order: None,
        map: None,
        deadband_absolute: None,
        max_silence: None,
    }
}

impl Tag {
    pub fn scaled(mut self, scale: f64, offset: f64) -> Tag {
        self.scale = Some(scale);
        self.offset = Some(offset);
        self
    }
    pub fn equipment(mut self, equipment_id: &str) -> Tag {
        self.equipment_id = Some(equipment_id.to_owned());
        self
    }
    /// Names for codes: `.mapped(&[(1, "RUNNING")])`.
    pub fn mapped(mut self, codes: &[(i64, &str)]) -> Tag {
        self.map = Some(
            codes
                .iter()
                .map(|(c, n)| (c.to_string(), (*n).to_owned()))
                .collect(),
        );
        self
    }
    /// Report by exception: send only moves beyond `deadband`, and an unchanged
    /// value again after `max_silence` (humantime) when given.
    pub fn deadband(mut self, deadband: f64, max_silence: Option<&str>) -> Tag {
        self.deadband_absolute = Some(deadband);
        self.max_silence = max_silence.map(str::to_owned);
        self
    }
    pub fn orders(mut self, byte_order: &str, word_order: &str) -> Tag {
        self.byte_order = Some(byte_order.to_owned());
        self.word_order = Some(word_order.to_owned());
        self
    }
}

/// A Modbus source polling one group of `tags` every `interval` (humantime, e.g. `"100ms"`),
/// reconnecting quickly (tests should not wait out production backoffs).
pub fn modbus_source(
    id: &str,
    address: &str,
    equipment_id: &str,
    interval: &str,
    tags: Vec<Tag>,
) -> ModbusSource {
    ModbusSource {
        kind: "modbus".into(),
        id: id.to_owned(),
        address: address.to_owned(),
        unit_id: 1,
        equipment_id: Some(equipment_id.to_owned()),
        timeout: Some("1s".into()),
        reconnect_initial: Some("100ms".into()),
        reconnect_max: Some("1s".into()),
        heartbeat_interval: None,
        groups: vec![Group {
            name: "main".into(),
            interval: interval.to_owned(),
            tags,
        }],
    }
}

impl AgentConfig {
    /// A config shipping to `kinesis_endpoint`/`stream`, its buffer and metrics port fresh,
    /// quick linger and backoff. Add sources before starting.
    pub fn new(dir: &Path, kinesis_endpoint: &str, stream: &str) -> AgentConfig {
        AgentConfig {
            gateway_id: "gw-e2e".into(),
            telemetry: Telemetry {
                listen: format!("127.0.0.1:{}", ports::free_port()),
                log_level: "info,linewatch_agent=debug".into(),
            },
            buffer: Buffer {
                path: dir.join("buffer"),
                max_bytes: 64 * 1024 * 1024,
                overflow: "drop_oldest".into(),
                commit_interval: "50ms".into(),
            },
            kinesis: Kinesis {
                stream: stream.to_owned(),
                region: kinesis::REGION.into(),
                endpoint_url: kinesis_endpoint.to_owned(),
                access_key_id: kinesis::ACCESS_KEY_ID.into(),
                secret_access_key: kinesis::SECRET_ACCESS_KEY.into(),
                linger: "100ms".into(),
                request_timeout: Some("3s".into()),
                backoff_initial: Some("50ms".into()),
                backoff_max: Some("500ms".into()),
                backfill_after: None,
            },
            sources: Vec::new(),
            extra_toml: String::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        let mut text = crate::to_toml("agent config", self);
        text.push_str(&self.extra_toml);
        text
    }

    #[track_caller]
    pub fn metrics_addr(&self) -> SocketAddr {
        crate::listen_addr("telemetry.listen", &self.telemetry.listen)
    }
}

/// A running `linewatch-agent run` (killed when dropped): a [`ManagedProcess`] (all of
/// its methods: `kill`, `terminate`, `start_again`, `log_tail`, ...) with the config.
pub struct Agent {
    config: AgentConfig,
    config_path: PathBuf,
    process: ManagedProcess,
}

impl Agent {
    /// Writes `config` to `dir/agent.toml`, starts the agent and waits until `/metrics` answers.
    #[track_caller]
    pub fn start(config: AgentConfig, dir: &Path) -> Agent {
        let config_path = dir.join("agent.toml");
        if let Err(e) = std::fs::write(&config_path, config.to_toml()) {
            panic!("cannot write {}: {e}", config_path.display());
        }
        let process =
            ProcessSpec::new("linewatch-agent", programs::agent(), &dir.join("agent.log"))
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .ready(
                    Ready::Http {
                        addr: config.metrics_addr(),
                        path: "/metrics".into(),
                    },
                    Duration::from_secs(30),
                )
                .metrics(config.metrics_addr(), "linewatch_agent_")
                .start();
        Agent {
            config,
            config_path,
            process,
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `/healthz`: status code and body.
    pub fn health(&self) -> Result<(u16, String), String> {
        http::get(self.config.metrics_addr(), "/healthz")
    }
}

crate::deref_to_process!(Agent);

/// What a short-lived agent command printed and how it ended.
#[derive(Debug)]
pub struct CommandResult {
    pub status: ExitStatus,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs `linewatch-agent check --config FILE` on `text` (written to `dir/check.toml`).
#[track_caller]
pub fn check_config(text: &str, dir: &Path) -> CommandResult {
    let path = dir.join("check.toml");
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    run_agent(&["check", "--config"], &path, dir, Duration::from_secs(20))
}

/// Runs the agent binary with `args` followed by `path`, for commands that end on their
/// own (`check`, or `run` on a bad config); panics if it is still running after `timeout`.
#[track_caller]
pub fn run_agent(args: &[&str], path: &Path, dir: &Path, timeout: Duration) -> CommandResult {
    let log = dir.join(format!(
        "agent-{}.log",
        args.first().copied().unwrap_or("cmd")
    ));
    let _ = std::fs::remove_file(&log);
    let mut child = ProcessSpec::new("linewatch-agent", programs::agent(), &log)
        .args(args)
        .arg(path)
        .start();
    let status = child.wait_exit(timeout);
    // The log without the kit's run marker: just what the command printed.
    let output = child.log();
    let output = output
        .split_once('\n')
        .map_or(output.as_str(), |(_, rest)| rest)
        .to_owned();
    CommandResult { status, output }
}

/// 127.0.0.1:PORT with nothing listening: a PLC that is not there.
pub fn unreachable_address() -> String {
    SocketAddr::from((Ipv4Addr::LOCALHOST, ports::free_port())).to_string()
}
