//! `linewatch-rules run --config FILE`: the service's TOML configuration.
//! Sections of the source, control and output modules are their own types; this
//! file ties them together and checks what spans sections.

use crate::control::ControlConfig;
use crate::output::{self, WebhookConfig};
use crate::source::KinesisSourceConfig;
use linewatch_rules_core::eval::Partition;
use linewatch_rules_core::rule::Limits;
use linewatch_rules_core::sequencer::{LatePolicy, SequencerConfig, WatermarkScope};
use linewatch_rules_core::transition::EventSource;
use linewatch_rules_core::watermark::{self, WatermarkConfig};
use linewatch_rules_core::workers::MAX_WORKERS;
use linewatch_runtime::problems::Problems;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem: TOML syntax, types, unknown or missing keys, validation; each with
    /// its key path and line.
    #[error("{} problem(s):\n  {}", problems.len(), problems.render(&path.display().to_string()).join("\n  "))]
    Invalid { path: PathBuf, problems: Problems },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Names this instance in status messages, logs and the MQTT client id.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Evaluation threads; rules are split among them by a hash of their id.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Checkpoints (`checkpoint/`) and dead letters (`dead-letters/`) live here.
    pub state_dir: PathBuf,
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// `I/N`: own the rules whose id hashes to I of N. `--partition` overrides it.
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub watermark: WatermarkSection,
    #[serde(default)]
    pub events: EventsSection,
    pub kinesis: KinesisSourceConfig,
    pub mqtt: ControlConfig,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub http: HttpSection,
    /// Largest data point (one user record, after KPL de-aggregation) evaluated; a
    /// larger one is dead-lettered as `oversized` so a huge value cannot flow into
    /// rule state, webhook bodies and the saved outbox.
    #[serde(default = "default_max_point_bytes")]
    pub max_point_bytes: usize,
    #[serde(default)]
    pub rules: RulesSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// The time budget of rule evaluations (the other sandbox limits are fixed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    /// Wall-clock budget of one group evaluation, from the start of the call.
    #[serde(default = "default_eval_budget", with = "humantime_serde")]
    pub eval_budget: Duration,
    /// Evaluations of one rule in a row over the budget before it is quarantined; 0: never.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
}

impl Default for RulesSection {
    fn default() -> Self {
        RulesSection {
            eval_budget: default_eval_budget(),
            quarantine_after: default_quarantine_after(),
        }
    }
}

/// When `/healthz` says `degraded` (still 200: the instance works, something needs a look).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Wall clock minus the watermark above this: degraded.
    #[serde(default = "default_max_watermark_lag", with = "humantime_serde")]
    pub max_watermark_lag: Duration,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            max_watermark_lag: default_max_watermark_lag(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Distinct `sender` label values per metric; later senders share `other`.
    #[serde(default = "default_max_sender_labels")]
    pub max_sender_labels: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            max_sender_labels: default_max_sender_labels(),
        }
    }
}

/// Far above any real data point (a few hundred bytes), far below Kinesis' 1 MiB.
pub const DEFAULT_MAX_POINT_BYTES: usize = 64 * 1024;

fn default_max_point_bytes() -> usize {
    DEFAULT_MAX_POINT_BYTES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSection {
    #[serde(default = "default_max_ooo", with = "humantime_serde")]
    pub max_out_of_orderness: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often the watermark is recomputed, released points evaluated and due
    /// holds fired; also the longest a transition waits before it is handed on.
    #[serde(default = "default_advance_interval", with = "humantime_serde")]
    pub advance_interval: Duration,
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// `global`: one watermark over every sender of the stream; `equipment`: each
    /// equipment's rules wait only for the senders of that equipment's points.
    #[serde(default)]
    pub scope: WatermarkScope,
    /// An event time beyond the record's arrival time plus this is refused.
    #[serde(default = "watermark::default_future_skew", with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// A sender still sending whose event time has not advanced for this long stops
    /// holding the watermark back (a frozen clock; reported as degraded).
    #[serde(default = "watermark::default_stall_after", with = "humantime_serde")]
    pub stall_after: Duration,
    /// A sender seen once holds the watermark back at most this long.
    #[serde(
        default = "watermark::default_first_seen_grace",
        with = "humantime_serde"
    )]
    pub first_seen_grace: Duration,
    /// A sender back from idle holds event time where it was for this long, or until
    /// its first heartbeat, which declares its backlog if it has one.
    #[serde(default = "watermark::default_resume_grace", with = "humantime_serde")]
    pub resume_grace: Duration,
    /// Senders silent this long are forgotten (at least `idle_timeout`).
    #[serde(default = "watermark::default_prune_after", with = "humantime_serde")]
    pub prune_after: Duration,
}

impl Default for WatermarkSection {
    fn default() -> Self {
        WatermarkSection {
            max_out_of_orderness: default_max_ooo(),
            idle_timeout: default_idle_timeout(),
            advance_interval: default_advance_interval(),
            late_policy: LatePolicy::default(),
            scope: WatermarkScope::default(),
            max_future_skew: watermark::default_future_skew(),
            stall_after: watermark::default_stall_after(),
            first_seen_grace: watermark::default_first_seen_grace(),
            resume_grace: watermark::default_resume_grace(),
            prune_after: watermark::default_prune_after(),
        }
    }
}

/// The envelope's `account` and `region`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    #[serde(default = "default_account")]
    pub account: String,
    #[serde(default = "default_region")]
    pub region: String,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            account: default_account(),
            region: default_region(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `/metrics`, `/healthz`, `/rules`, `/states`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_listen(),
        }
    }
}

fn default_workers() -> usize {
    1
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_max_ooo() -> Duration {
    Duration::from_secs(2)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_advance_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_eval_budget() -> Duration {
    Limits::default().eval_deadline
}
fn default_quarantine_after() -> u32 {
    Limits::default().quarantine_after
}
fn default_max_watermark_lag() -> Duration {
    Duration::from_secs(60)
}
fn default_max_sender_labels() -> usize {
    100
}
fn default_account() -> String {
    "000000000000".into()
}
fn default_region() -> String {
    "local".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}

/// `I/N` with `0 <= I < N <= 1024`.
pub fn parse_partition(s: &str) -> Result<Partition, String> {
    let err = || format!("`{s}` is not a partition `I/N` with 0 <= I < N <= 1024");
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let index: usize = i.trim().parse().map_err(|_| err())?;
    let count: usize = n.trim().parse().map_err(|_| err())?;
    if count == 0 || count > 1024 || index >= count {
        return Err(err());
    }
    Ok(Partition { index, count })
}

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates configuration text, reporting every problem at once, each
    /// with its key path and line ([`linewatch_runtime::config::load_all`]).
    pub fn parse(text: &str) -> Result<ServiceConfig, Problems> {
        let loaded = linewatch_runtime::config::load_all::<ServiceConfig>(text)?;
        let found = loaded.value.problems();
        loaded.finish(text, found)
    }

    /// Everything wrong with the configuration, every problem, each naming its full key.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        if self.workers == 0 || self.workers > MAX_WORKERS {
            p.push(
                "workers",
                format!("must be 1 to {MAX_WORKERS}, not {}", self.workers),
            );
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                p.push(
                    "instance_id",
                    format!("`{id}` must be 1-64 characters of A-Z a-z 0-9 - _ ."),
                );
            }
        }
        if !(256..=1024 * 1024).contains(&self.max_point_bytes) {
            p.push(
                "max_point_bytes",
                format!(
                    "must be 256 to 1048576 (Kinesis' record limit), not {}",
                    self.max_point_bytes
                ),
            );
        }
        if self.checkpoint_interval < Duration::from_millis(10) {
            p.push("checkpoint_interval", "must be at least 10ms");
        }
        if let Some(part) = &self.partition {
            if let Err(e) = parse_partition(part) {
                p.push("partition", e);
            }
        }
        let w = &self.watermark;
        if w.idle_timeout.is_zero() {
            p.push("watermark.idle_timeout", "must be more than 0");
        }
        if w.advance_interval < Duration::from_millis(1)
            || w.advance_interval > Duration::from_secs(60)
        {
            p.push("watermark.advance_interval", "must be between 1ms and 60s");
        }
        if w.prune_after < w.idle_timeout {
            p.push(
                "watermark.prune_after",
                "must be at least watermark.idle_timeout (forgetting a sender may not change a decision)",
            );
        }
        if w.stall_after.is_zero() {
            p.push("watermark.stall_after", "must be more than 0");
        }
        if self.rules.eval_budget < Duration::from_millis(1)
            || self.rules.eval_budget > Duration::from_secs(10)
        {
            p.push("rules.eval_budget", "must be between 1ms and 10s");
        }
        if self.metrics.max_sender_labels == 0 {
            p.push("metrics.max_sender_labels", "must be at least 1");
        }
        if self.events.account.is_empty() {
            p.push("events.account", "must not be empty");
        }
        if self.events.region.is_empty() {
            p.push("events.region", "must not be empty");
        }
        p.extend(self.kinesis.check());
        p.extend(self.mqtt.check());
        p.extend(self.mqtt.check_engine());
        p.extend(output::check_all(&self.webhooks));
        p
    }

    pub fn sequencer(&self) -> SequencerConfig {
        SequencerConfig {
            watermark: WatermarkConfig {
                max_out_of_orderness: self.watermark.max_out_of_orderness,
                idle_timeout: self.watermark.idle_timeout,
                max_future_skew: self.watermark.max_future_skew,
                stall_after: self.watermark.stall_after,
                first_seen_grace: self.watermark.first_seen_grace,
                resume_grace: self.watermark.resume_grace,
                prune_after: self.watermark.prune_after,
            },
            late_policy: self.watermark.late_policy,
            scope: self.watermark.scope,
        }
    }

    /// The sandbox limits: the defaults with the configured time budget.
    pub fn limits(&self) -> Limits {
        Limits {
            eval_deadline: self.rules.eval_budget,
            quarantine_after: self.rules.quarantine_after,
            ..Limits::default()
        }
    }

    pub fn event_source(&self) -> EventSource {
        EventSource {
            account: self.events.account.clone(),
            region: self.events.region.clone(),
        }
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.state_dir.join("checkpoint")
    }

    pub fn webhook_dead_letter_dir(&self) -> PathBuf {
        self.state_dir.join("dead-letters").join("webhooks")
    }

    /// Invalid and late records (NDJSON).
    pub fn points_dead_letter_file(&self) -> PathBuf {
        self.state_dir.join("dead-letters").join("points.ndjson")
    }
}

/// The keys of `p`, in order, for tests (the runtime's `Problems` has no such view).
#[cfg(test)]
pub(crate) fn problem_keys(p: &Problems) -> Vec<&str> {
    p.iter().map(|p| p.key.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_and_reject_nonsense() {
        assert_eq!(parse_partition("1/3"), Ok(Partition { index: 1, count: 3 }));
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2", "0/2000"] {
            assert!(parse_partition(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_full_key() {
        let cfg: ServiceConfig = toml::from_str(
            r#"
            workers = 0
            instance_id = "a b"
            state_dir = "/tmp/x"
            checkpoint_interval = "1ms"
            partition = "2/2"
            [watermark]
            idle_timeout = "0s"
            [events]
            account = ""
            [kinesis]
            stream = ""
            [mqtt]
            port = 0
            auth.accept_unsigned = true
            [[webhooks]]
            name = "a"
            url = "ftp://x"
            [[webhooks]]
            name = "a"
            url = "http://x"
            "#,
        )
        .unwrap();
        let p = cfg.problems();
        assert_eq!(
            problem_keys(&p),
            vec![
                "workers",
                "instance_id",
                "checkpoint_interval",
                "partition",
                "watermark.idle_timeout",
                "events.account",
                "kinesis.stream",
                "mqtt.port",
                "webhooks[0].url",
                "webhooks[1].name",
            ]
        );
        assert!(p.iter().all(|p| !p.message.is_empty()), "{p}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "state_dir = \"/tmp/x\"\n[kinesis]\nstream = \"\"\n[mqtt]\nport = 0\nauth.accept_unsigned = true\n",
        )
        .unwrap();
        let err = ServiceConfig::load(file.path()).unwrap_err().to_string();
        let f = file.path().display();
        assert!(
            err.contains(&format!(
                "2 problem(s):\n  {f}:3: kinesis.stream: must not be empty\n  {f}:5: mqtt.port: must be 1 to 65535"
            )),
            "{err}"
        );
    }

    #[test]
    fn type_errors_typos_and_validation_are_reported_together_with_lines() {
        let text = "state_dir = \"/tmp/x\"\nworkers = 0\n[kinesis]\nstream = \"s\"\nregion = \"r\"\npoll_intervall = \"1s\"\n[mqtt]\nport = 70000\nauth = { accept_unsigned = true }\n[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"\n";
        let p = ServiceConfig::parse(text).expect_err("four problems");
        let shown: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.line.unwrap_or(0), p))
            .collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("2: workers: must be 1 to"),
            "{shown:#?}"
        );
        assert_eq!(
            shown[1],
            "6: kinesis.poll_intervall: unknown key `poll_intervall`: did you mean `poll_interval`?"
        );
        assert!(
            shown[2].starts_with("8: mqtt.port: invalid value: integer `70000`"),
            "{shown:#?}"
        );
        assert!(shown[3].starts_with("12: webhooks[0].url:"), "{shown:#?}");
    }

    #[test]
    fn the_bounds_on_time_and_budgets_are_configured_and_checked() {
        let base = "state_dir = \"/tmp/x\"\n[kinesis]\nstream = \"s\"\n[mqtt]\nauth = { accept_unsigned = true }\n";
        let cfg: ServiceConfig = toml::from_str(base).unwrap();
        let w = cfg.sequencer().watermark;
        assert_eq!(w.max_future_skew, Duration::from_secs(300));
        assert_eq!(cfg.limits().eval_deadline, Duration::from_millis(50));
        assert!(cfg.problems().is_empty(), "{}", cfg.problems());
        let cfg: ServiceConfig = toml::from_str(&format!(
            "{base}[watermark]\nmax_future_skew = \"1m\"\nstall_after = \"0s\"\nidle_timeout = \"30s\"\nprune_after = \"10s\"\n\
             [rules]\neval_budget = \"0ms\"\nquarantine_after = 2\n[health]\nmax_watermark_lag = \"5s\"\n\
             [metrics]\nmax_sender_labels = 0\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.sequencer().watermark.max_future_skew,
            Duration::from_secs(60)
        );
        assert_eq!(cfg.limits().quarantine_after, 2);
        assert_eq!(
            problem_keys(&cfg.problems()),
            vec![
                "watermark.prune_after",
                "watermark.stall_after",
                "rules.eval_budget",
                "metrics.max_sender_labels"
            ]
        );
    }

    #[test]
    fn the_example_config_loads_without_deprecated_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/service.toml");
        let cfg = ServiceConfig::load(&path).unwrap();
        assert_eq!(
            cfg.kinesis.aws.endpoint_url.as_deref(),
            Some("http://127.0.0.1:4567")
        );
        assert!(cfg.kinesis.aws.warnings("kinesis").is_empty());
    }
}
