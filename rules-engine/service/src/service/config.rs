//! `linewatch-rules run --config FILE`: the service's TOML configuration.
//! Sections of the source, control and output modules are their own types; this
//! file ties them together and checks what spans sections.

use crate::control::ControlConfig;
use crate::output::{self, WebhookConfig};
use crate::source::KinesisSourceConfig;
use linewatch_rules_core::eval::Partition;
use linewatch_rules_core::sequencer::{LatePolicy, SequencerConfig};
use linewatch_rules_core::transition::EventSource;
use linewatch_rules_core::watermark::WatermarkConfig;
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
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n  {}", problems.len(), problems.to_strings().join("\n  "))]
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
}

impl Default for WatermarkSection {
    fn default() -> Self {
        WatermarkSection {
            max_out_of_orderness: default_max_ooo(),
            idle_timeout: default_idle_timeout(),
            advance_interval: default_advance_interval(),
            late_policy: LatePolicy::default(),
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
        let cfg: ServiceConfig = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.problems()
            .into_result()
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        Ok(cfg)
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
            },
            late_policy: self.watermark.late_policy,
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
        assert!(err.contains("has 2 problem(s):\n  kinesis.stream: must not be empty\n  mqtt.port: must be 1 to 65535"), "{err}");
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
