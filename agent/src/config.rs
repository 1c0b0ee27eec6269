//! The gateway configuration (TOML). `firmware-config/reference.md` documents every key.
//!
//! Loading is two steps: serde parses (unknown keys are errors, so a typo is never
//! silently ignored), then [`Config::validate`] checks what types cannot, naming
//! the key path of every problem.

pub use crate::sources::config::SourceConfig;
// The `[kinesis]` table lives next to the shipper that uses it.
pub use crate::ship::config::{
    KinesisConfig, PartitionKey, KINESIS_MAX_CALL_BYTES, KINESIS_MAX_RECORDS,
    KINESIS_MAX_RECORD_BYTES,
};
// Problems are collected, each naming its key path; the log format is `text` or `json`.
use linewatch_runtime::config::load_all;
pub use linewatch_runtime::logging::LogFormat;
pub use linewatch_runtime::{Problem, Problems};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found: TOML syntax, types, unknown or missing keys, validation
    /// (displayed joined by `; `; each problem knows its key path and line).
    #[error("{path}: {problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this gateway; written to every point as `meta.gatewayId`.
    pub gateway_id: String,
    /// Threads of the async runtime. Gateways are small; two keep polling and
    /// shipping apart without taking the whole box.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    pub buffer: BufferConfig,
    pub kinesis: KinesisConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of `/metrics` and `/healthz`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// `text` or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `linewatch_agent=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: default_metrics_listen(),
            log_format: LogFormat::Text,
            log_level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Upper bound of buffered point bytes; the overflow policy applies beyond it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub overflow: OverflowPolicy,
    /// Group commit: points are made durable together at most this long after they were read.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Group commit: commit early once this many points wait.
    #[serde(default = "default_commit_max_points")]
    pub commit_max_points: usize,
    /// sled page cache, bytes. Small by default: gateways have little RAM.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// How long `open` waits for the buffer's file lock (held by an agent that
    /// is still exiting, e.g. during a service restart) before giving up.
    #[serde(default = "default_lock_wait", with = "humantime_serde")]
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Keep the newest data: evict the oldest unshipped points.
    #[default]
    DropOldest,
    /// Keep the oldest data: refuse new points while full.
    RejectNew,
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_log_level() -> String {
    "info".into()
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_commit_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_commit_max_points() -> usize {
    10_000
}
fn default_lock_wait() -> Duration {
    Duration::from_secs(10)
}

fn default_cache_bytes() -> u64 {
    4 * 1024 * 1024
}
impl Config {
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or(2)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parse and validate configuration text. Every problem is reported, type errors
    /// and validation alike, each with its key path and line
    /// ([`linewatch_runtime::config::load_all`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: PathBuf::new(),
            problems,
        };
        let loaded = load_all::<Config>(text).map_err(invalid)?;
        let found = loaded.value.validate();
        loaded.finish(text, found).map_err(invalid)
    }

    /// What works but should change (a deprecated key), each naming its key.
    /// `check` prints them; `run` logs them when it builds the Kinesis client.
    pub fn warnings(&self) -> Problems {
        let mut p = self.kinesis.aws.warnings("kinesis");
        for (i, s) in self.sources.iter().enumerate() {
            s.warnings(&format!("sources[{i}]"), &mut p);
        }
        p
    }

    pub fn validate(&self) -> Problems {
        let mut p = Problems::new();
        check_id(&mut p, "gateway_id", &self.gateway_id);
        if self.worker_threads == Some(0) {
            p.push("worker_threads", "must be at least 1");
        }
        let b = &self.buffer;
        if b.max_bytes < 1024 * 1024 {
            p.push("buffer.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if b.commit_interval.is_zero() {
            p.push("buffer.commit_interval", "must be greater than zero");
        }
        if b.commit_max_points == 0 {
            p.push("buffer.commit_max_points", "must be at least 1");
        }
        self.kinesis.validate("kinesis", &mut p);
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("sources[{i}]");
            if !seen.insert(s.id().to_owned()) {
                p.push(
                    format!("{key}.id"),
                    format!("duplicate source id {:?}", s.id()),
                );
            }
            s.validate(&key, &mut p);
        }
        p
    }
}

/// Ids end up in data points and Kinesis partition keys: non-empty, ≤ 256 chars.
pub fn check_id(p: &mut Problems, key: &str, v: &str) {
    if v.is_empty() {
        p.push(key, "must not be empty");
    } else if v.chars().count() > 256 {
        p.push(key, "must be at most 256 characters");
    }
}
