//! The rule engine under test: `linewatch-rules run` (its TOML config, the process,
//! `/healthz`, `/metrics`, `/rules`, `/states`), its control commands (`publish`, `delete`,
//! `dead-letters`) and the `replay` command used as the oracle of expected transitions.

use crate::programs;
use linewatch_testkit::process::{ManagedProcess, ProcessSpec, Ready};
use linewatch_testkit::{http, ports, wait};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `linewatch-rules run`'s configuration, as the harness writes it.
#[derive(Debug, Clone, Serialize)]
pub struct RulesConfig {
    pub instance_id: String,
    pub workers: u32,
    pub state_dir: PathBuf,
    pub checkpoint_interval: String,
    pub watermark: Watermark,
    pub events: Events,
    pub kinesis: Kinesis,
    pub mqtt: Mqtt,
    pub webhooks: Vec<Webhook>,
    pub http: Http,
    /// Other sections (`rules`, `health`, `metrics`), written as given.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Watermark {
    pub max_out_of_orderness: String,
    pub idle_timeout: String,
    pub advance_interval: String,
    pub late_policy: String,
    /// Any other key of `[watermark]` (e.g. `stall_after`), written as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Events {
    pub account: String,
    pub region: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kinesis {
    pub stream: String,
    pub region: String,
    pub endpoint_url: String,
    pub start: String,
    pub poll_interval: String,
    /// How often the shard list is re-read (children of a split appear then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_discovery_interval: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    pub topic_prefix: String,
    pub retained_wait: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `mqtt.keep_alive` (humantime); the service's default when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    pub auth: MqttAuth,
    /// The author's secret key `publish`/`delete` sign with (`--key`); not in the file.
    #[serde(skip)]
    pub author_key: Option<PathBuf>,
}

/// `[mqtt.auth]`: by default a fresh author key is trusted and statuses are signed.
#[derive(Debug, Clone, Serialize)]
pub struct MqttAuth {
    pub trusted_keys: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_public_key: Option<PathBuf>,
    pub accept_unsigned: bool,
}

/// An instance id of its own per test (the prefix is unique): the MQTT client id is
/// made from it, and two services with one client id on a shared broker would throw
/// each other off in turn (tests of one binary run side by side).
fn instance_for(topic_prefix: &str) -> String {
    let id: String = topic_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // At most 64 characters; the prefix ends in its unique part.
    let start = id.len().saturating_sub(60);
    format!("t-{}", &id[start..])
}

/// `dir/keys/{name}.key` and `.pub`, made by `linewatch-rules keygen` unless they exist.
#[track_caller]
pub fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys");
    let stem = keys.join(name);
    let (secret, public) = (stem.with_extension("key"), stem.with_extension("pub"));
    if secret.exists() && public.exists() {
        return (secret, public);
    }
    if let Err(e) = std::fs::create_dir_all(&keys) {
        panic!("cannot create {}: {e}", keys.display());
    }
    let out = std::process::Command::new(programs::rules())
        .arg("keygen")
        .arg(&stem)
        .output()
        .unwrap_or_else(|e| panic!("cannot run linewatch-rules keygen: {e}"));
    if !out.status.success() {
        panic!(
            "linewatch-rules keygen {} failed: {}",
            stem.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (secret, public)
}

#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub backoff_initial: String,
    pub backoff_max: String,
    /// Any other key of a webhook target (e.g. `max_attempts`), written as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Http {
    pub listen: String,
}

/// Account and region of the envelopes the tests expect.
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "local-1";

impl RulesConfig {
    /// A config reading `stream` at `kinesis_endpoint` from the start, rules under
    /// `topic_prefix` on the broker at `mqtt_port`, posting to `webhook_url` (target
    /// "recv"); state in `dir/state`, ops HTTP on a free port; quick intervals.
    pub fn new(
        dir: &Path,
        kinesis_endpoint: &str,
        stream: &str,
        mqtt_port: u16,
        topic_prefix: &str,
        webhook_url: &str,
    ) -> RulesConfig {
        let (author_key, author_pub) = key_pair(dir, "author");
        let (engine_key, engine_pub) = key_pair(dir, "engine");
        RulesConfig {
            instance_id: instance_for(topic_prefix),
            workers: 1,
            state_dir: dir.join("state"),
            checkpoint_interval: "200ms".into(),
            watermark: Watermark {
                max_out_of_orderness: "1s".into(),
                idle_timeout: "30s".into(),
                advance_interval: "50ms".into(),
                late_policy: "dead-letter".into(),
                extra: BTreeMap::new(),
            },
            events: Events {
                account: ACCOUNT.into(),
                region: REGION.into(),
            },
            kinesis: Kinesis {
                stream: stream.to_owned(),
                region: linewatch_testkit::kinesis::REGION.into(),
                endpoint_url: kinesis_endpoint.to_owned(),
                start: "trim_horizon".into(),
                poll_interval: "200ms".into(),
                shard_discovery_interval: Some("1s".into()),
                access_key_id: linewatch_testkit::kinesis::ACCESS_KEY_ID.into(),
                secret_access_key: linewatch_testkit::kinesis::SECRET_ACCESS_KEY.into(),
            },
            mqtt: Mqtt {
                host: "127.0.0.1".into(),
                port: mqtt_port,
                topic_prefix: topic_prefix.to_owned(),
                retained_wait: "3s".into(),
                username: None,
                password_env: None,
                keep_alive: None,
                auth: MqttAuth {
                    trusted_keys: vec![author_pub],
                    status_key: Some(engine_key),
                    status_public_key: Some(engine_pub),
                    accept_unsigned: false,
                },
                author_key: Some(author_key),
            },
            webhooks: vec![Webhook {
                name: "recv".into(),
                url: webhook_url.to_owned(),
                backoff_initial: "100ms".into(),
                backoff_max: "1s".into(),
                extra: BTreeMap::new(),
            }],
            http: Http {
                listen: format!("127.0.0.1:{}", ports::free_port()),
            },
            sections: BTreeMap::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        crate::to_toml("rules config", self)
    }

    #[track_caller]
    pub fn http_addr(&self) -> SocketAddr {
        crate::listen_addr("http.listen", &self.http.listen)
    }

    /// The retained status topic of a rule.
    pub fn status_topic(&self, rule_id: &str) -> String {
        format!("{}/status/{rule_id}", self.mqtt.topic_prefix)
    }

    /// The retained rule topic of a rule.
    pub fn rule_topic(&self, rule_id: &str) -> String {
        format!("{}/rules/{rule_id}", self.mqtt.topic_prefix)
    }
}

/// What a short-lived `linewatch-rules` command printed and how it ended.
#[derive(Debug)]
pub struct CommandResult {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandResult {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as one JSON value (e.g. the status `publish` prints).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout of {self} is not one JSON value: {e}"))
    }

    /// stdout as NDJSON.
    #[track_caller]
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a line of {self} is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Panics with the output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        if self.status.code() != Some(code) {
            panic!("expected exit code {code}: {self}");
        }
        self
    }
}

impl std::fmt::Display for CommandResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`linewatch-rules {}` ({})\n--- stdout:\n{}\n--- stderr:\n{}",
            self.args.join(" "),
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `linewatch-rules ARGS` to completion (killed after `timeout`, which panics).
#[track_caller]
pub fn run_cli<'a>(
    args: &'a [String],
    timeout: Duration,
) -> impl std::future::Future<Output = CommandResult> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let mut cmd = tokio::process::Command::new(programs::rules());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start linewatch-rules {args:?}: {e}"));
        match tokio::time::timeout(wait::scaled(timeout), child.wait_with_output()).await {
            Ok(Ok(o)) => CommandResult {
                args: args.to_vec(),
                status: o.status,
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Ok(Err(e)) => panic!("linewatch-rules {args:?} (at {caller}): {e}"),
            Err(_) => panic!(
                "linewatch-rules {args:?} (at {caller}) did not finish within {timeout:?} (killed)"
            ),
        }
    }
}

/// The replay oracle: the transitions (`detail` objects) `linewatch-rules replay` gives
/// for the `rules` files over the NDJSON `input`, with the service's watermark settings.
#[track_caller]
pub fn oracle<'a>(
    rules: &'a [PathBuf],
    input: &'a Path,
    max_out_of_orderness: &'a str,
    idle_timeout: &'a str,
) -> impl std::future::Future<Output = Vec<serde_json::Value>> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let mut args = vec!["replay".to_owned(), "--rules".to_owned()];
        args.extend(rules.iter().map(|p| p.display().to_string()));
        args.extend([
            "--input".to_owned(),
            input.display().to_string(),
            "--max-out-of-orderness".to_owned(),
            max_out_of_orderness.to_owned(),
            "--idle-timeout".to_owned(),
            idle_timeout.to_owned(),
            "--progress-every".to_owned(),
            "0".to_owned(),
        ]);
        let res = run_cli(&args, Duration::from_secs(60)).await;
        if !res.status.success() || res.stderr.contains("late:") {
            panic!("the replay oracle (at {caller}) failed or saw late points: {res}");
        }
        res.ndjson()
    }
}

/// A running `linewatch-rules run` (killed when dropped): a [`ManagedProcess`] (all of
/// its methods: `kill`, `terminate`, `start_again`, `log_tail`, ...) with the config.
pub struct RulesService {
    config: RulesConfig,
    config_path: PathBuf,
    dir: PathBuf,
    process: ManagedProcess,
}

impl RulesService {
    /// Writes `config` to `dir/rules.toml` and starts the service (see [`RulesService::start_named`]).
    #[track_caller]
    pub fn start(config: RulesConfig, dir: &Path) -> RulesService {
        RulesService::start_named("rules", config, dir, None)
    }

    /// Writes `config` to `dir/{name}.toml`, starts `run --config … [--partition P]` with
    /// its log in `dir/{name}.log`, and waits until `/healthz` answers 200.
    #[track_caller]
    pub fn start_named(
        name: &str,
        config: RulesConfig,
        dir: &Path,
        partition: Option<&str>,
    ) -> RulesService {
        let config_path = dir.join(format!("{name}.toml"));
        if let Err(e) = std::fs::write(&config_path, config.to_toml()) {
            panic!("cannot write {}: {e}", config_path.display());
        }
        let mut spec = ProcessSpec::new(name, programs::rules(), &dir.join(format!("{name}.log")))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .ready(
                Ready::Http {
                    addr: config.http_addr(),
                    path: "/healthz".into(),
                },
                Duration::from_secs(30),
            )
            .metrics(config.http_addr(), "linewatch_rules_");
        if let Some(p) = partition {
            spec = spec.arg("--partition").arg(p);
        }
        // Debug logs of the engine help when a test fails; the log stays in the scratch dir.
        if std::env::var_os("RUST_LOG").is_none() {
            spec = spec.env("RUST_LOG", "info,linewatch_rules=debug");
        }
        RulesService {
            config,
            config_path,
            dir: dir.to_owned(),
            process: spec.start(),
        }
    }

    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `GET path` on the ops HTTP port: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http::get(self.config.http_addr(), path)
    }

    /// `GET path` as JSON (`/rules`, `/states`).
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        match self.get(path)? {
            (200, body) => {
                serde_json::from_str(&body).map_err(|e| format!("{path}: not JSON ({e}): {body}"))
            }
            (code, body) => Err(format!("{path} answered {code}: {body}")),
        }
    }

    fn config_args(&self) -> Vec<String> {
        vec![
            "--config".to_owned(),
            self.config_path.display().to_string(),
        ]
    }

    /// `--config FILE` and, when the config has an author key, `--key KEY`.
    pub fn control_args(&self) -> Vec<String> {
        let mut args = self.config_args();
        if let Some(key) = &self.config.mqtt.author_key {
            args.extend(["--key".to_owned(), key.display().to_string()]);
        }
        args
    }

    /// `publish SCRIPT --config … [--version N] [--id ID] --wait WAIT`.
    #[track_caller]
    pub fn publish<'a>(
        &'a self,
        script: &'a Path,
        version: Option<u64>,
        id: Option<&'a str>,
        wait_for: &'a str,
    ) -> impl std::future::Future<Output = CommandResult> + 'a {
        let mut args = vec!["publish".to_owned(), script.display().to_string()];
        args.extend(self.control_args());
        if let Some(v) = version {
            args.extend(["--version".to_owned(), v.to_string()]);
        }
        if let Some(id) = id {
            args.extend(["--id".to_owned(), id.to_owned()]);
        }
        args.extend(["--wait".to_owned(), wait_for.to_owned()]);
        async move { run_cli(&args, Duration::from_secs(60)).await }
    }

    /// Writes `script` to `dir/{file}` and publishes it as `version` (the message's
    /// version wins over the script's; keep them equal so the oracle agrees); panics
    /// unless it is accepted (exit 0). Returns the status JSON.
    #[track_caller]
    pub fn publish_text<'a>(
        &'a self,
        file: &'a str,
        script: &'a str,
        version: u64,
    ) -> impl std::future::Future<Output = serde_json::Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let path = self.dir.join(file);
            std::fs::write(&path, script)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            let res = self.publish(&path, Some(version), None, "10s").await;
            if res.code() != Some(0) {
                panic!(
                    "publishing {file} (at {caller}) was not accepted: {res}\n{} log:\n{}",
                    self.name(),
                    self.log_tail(30)
                );
            }
            res.json()
        }
    }

    /// `delete RULE_ID --config …`.
    pub async fn delete(&self, rule_id: &str) -> CommandResult {
        let mut args = vec!["delete".to_owned(), rule_id.to_owned()];
        args.extend(self.control_args());
        run_cli(&args, Duration::from_secs(30)).await
    }

    /// `dead-letters list --config …` (the service may be running or not).
    pub async fn dead_letters_list(&self) -> CommandResult {
        let mut args = vec!["dead-letters".to_owned(), "list".to_owned()];
        args.extend(self.config_args());
        run_cli(&args, Duration::from_secs(30)).await
    }

    /// `dead-letters replay --config … [--target NAME]`.
    pub async fn dead_letters_replay(&self, target: Option<&str>) -> CommandResult {
        let mut args = vec!["dead-letters".to_owned(), "replay".to_owned()];
        args.extend(self.config_args());
        if let Some(t) = target {
            args.extend(["--target".to_owned(), t.to_owned()]);
        }
        run_cli(&args, Duration::from_secs(60)).await
    }
}

crate::deref_to_process!(RulesService);

/// A file name no other call in this process returned (for scripts written by tests).
pub fn unique_file(stem: &str, ext: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{stem}-{}.{ext}", N.fetch_add(1, Ordering::Relaxed))
}
