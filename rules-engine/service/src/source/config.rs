//! `[kinesis]`: which stream to read, where to start, and how often to poll, next to the
//! AWS connection keys both programs share (`region`, `endpoint_url`, credentials; see
//! `linewatch_runtime::aws`). The old `endpoint` key still works and warns.

use linewatch_runtime::aws::AwsConnection;
use linewatch_runtime::config::Split;
use linewatch_runtime::problems::Problems;
use serde::{Deserialize, Deserializer};
use std::time::{Duration, SystemTime};

/// Kinesis allows 5 GetRecords calls per second per shard (shared by every consumer).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// GetRecords returns at most this many records.
pub const MAX_RECORDS_LIMIT: u32 = 10_000;

/// The `[kinesis]` section of the service configuration. Deserializing it reads the
/// whole table (the AWS keys into `aws`, the rest into the source's own fields), every
/// unknown key still rejected.
// `remote = "Self"`: the derive becomes an inherent `deserialize` of the source's own keys
// (`aws` is skipped, so not among them); the trait impl below adds the AWS keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// Region, endpoint and credentials: the same keys as the agent's `[kinesis]`.
    #[serde(skip)]
    pub aws: AwsConnection,
    pub stream: String,
    /// Where shards without a checkpointed position start.
    #[serde(default)]
    pub start: StartPosition,
    /// What to do when the stream rejects a checkpointed position (the stream was deleted
    /// and recreated, or the checkpoint belongs to another stream).
    #[serde(default)]
    pub on_invalid_position: InvalidPositionPolicy,
    /// Pause between GetRecords calls on a shard that is caught up.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// `Limit` of each GetRecords call.
    #[serde(default = "default_max_records")]
    pub max_records: u32,
    /// How often ListShards looks for new shards (also done whenever a shard finishes).
    #[serde(default = "default_discovery", with = "humantime_serde")]
    pub shard_discovery_interval: Duration,
}

/// The source's own keys, as a type `Split` can learn the field names of.
struct OwnKeys(KinesisSourceConfig);

impl<'de> Deserialize<'de> for OwnKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KinesisSourceConfig::deserialize(d).map(OwnKeys)
    }
}

impl<'de> Deserialize<'de> for KinesisSourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Split { common, specific } = Split::<AwsConnection, OwnKeys>::deserialize(d)?;
        let mut cfg = specific.0;
        cfg.aws = common;
        Ok(cfg)
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_records() -> u32 {
    MAX_RECORDS_LIMIT
}
fn default_discovery() -> Duration {
    Duration::from_secs(10)
}

impl KinesisSourceConfig {
    /// Defaults for everything but the stream name.
    pub fn new(stream: impl Into<String>) -> Self {
        KinesisSourceConfig {
            aws: AwsConnection::default(),
            stream: stream.into(),
            start: StartPosition::default(),
            on_invalid_position: InvalidPositionPolicy::default(),
            poll_interval: default_poll_interval(),
            max_records: default_max_records(),
            shard_discovery_interval: default_discovery(),
        }
    }

    /// Every problem with the values, each naming its full key (`kinesis.…`); empty when
    /// the section is usable.
    pub fn check(&self) -> Problems {
        let mut p = Problems::new();
        if self.stream.trim().is_empty() {
            p.push("kinesis.stream", "must not be empty");
        } else if self.stream.len() > 128
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            p.push(
                "kinesis.stream",
                format!(
                    "{:?} is not a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -)",
                    self.stream
                ),
            );
        }
        p.extend(self.aws.validate("kinesis"));
        if self.poll_interval < MIN_POLL_INTERVAL {
            p.push(
                "kinesis.poll_interval",
                format!(
                    "must be at least {} (Kinesis allows 5 GetRecords/s per shard), got {}",
                    humantime::format_duration(MIN_POLL_INTERVAL),
                    humantime::format_duration(self.poll_interval)
                ),
            );
        }
        if self.max_records == 0 || self.max_records > MAX_RECORDS_LIMIT {
            p.push(
                "kinesis.max_records",
                format!("must be 1..={MAX_RECORDS_LIMIT}, got {}", self.max_records),
            );
        }
        if self.shard_discovery_interval < Duration::from_secs(1) {
            p.push(
                "kinesis.shard_discovery_interval",
                format!(
                    "must be at least 1s (ListShards allows 1000 calls/s per account, shared), got {}",
                    humantime::format_duration(self.shard_discovery_interval)
                ),
            );
        }
        p
    }
}

/// `start`: where a shard without a checkpointed position is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The oldest record still in the stream.
    #[default]
    TrimHorizon,
    /// Only records written after the source started.
    Latest,
    /// Records that arrived at or after this time (AT_TIMESTAMP).
    AtTimestamp(SystemTime),
}

/// `kinesis.on_invalid_position`. Either way the shard is named in an `error` log line,
/// counted (`linewatch_rules_source_invalid_positions_total`) and listed in `/healthz`
/// problems until the service restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidPositionPolicy {
    /// Read the shard again from `kinesis.start`, as if it had no checkpoint.
    #[default]
    Restart,
    /// Stop reading that shard; an operator decides (e.g. clears the checkpoint).
    Fail,
}

impl std::str::FromStr for StartPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trim_horizon" => Ok(StartPosition::TrimHorizon),
            "latest" => Ok(StartPosition::Latest),
            other => parse_rfc3339(other)
                .map(StartPosition::AtTimestamp)
                .map_err(|e| {
                    format!(
                        "kinesis.start: expected \"trim_horizon\", \"latest\" or an RFC 3339 time \
                         (2026-01-31T12:00:00Z), got {other:?} ({e})"
                    )
                }),
        }
    }
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// RFC 3339 with `Z` or a numeric offset (`+02:00`); humantime alone only knows UTC.
fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let b = s.as_bytes();
    let n = b.len();
    if n > 6 && matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':' && s.is_char_boundary(n - 6) {
        let sign = if b[n - 6] == b'+' { 1 } else { -1 };
        let hh: u64 = s[n - 5..n - 3].parse().map_err(|_| "bad offset hours")?;
        let mm: u64 = s[n - 2..].parse().map_err(|_| "bad offset minutes")?;
        if hh > 23 || mm > 59 {
            return Err("offset out of range".into());
        }
        let local =
            humantime::parse_rfc3339(&format!("{}Z", &s[..n - 6])).map_err(|e| e.to_string())?;
        let offset = Duration::from_secs(hh * 3600 + mm * 60);
        // Local time = UTC + offset, so UTC = local - offset.
        return if sign > 0 {
            local.checked_sub(offset)
        } else {
            local.checked_add(offset)
        }
        .ok_or_else(|| "time out of range".to_owned());
    }
    humantime::parse_rfc3339(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<KinesisSourceConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn defaults() {
        let c = parse(r#"stream = "s""#).unwrap();
        assert_eq!(c, KinesisSourceConfig::new("s"));
        assert_eq!(c.start, StartPosition::TrimHorizon);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.max_records, 10_000);
        assert_eq!(c.shard_discovery_interval, Duration::from_secs(10));
        assert!(c.check().is_empty(), "{}", c.check());
    }

    #[test]
    fn start_positions() {
        let at = |s: &str| parse(&format!("stream = \"s\"\nstart = \"{s}\"")).map(|c| c.start);
        assert_eq!(at("latest").unwrap(), StartPosition::Latest);
        assert_eq!(at("trim_horizon").unwrap(), StartPosition::TrimHorizon);
        let utc = at("2026-01-31T12:00:00Z").unwrap();
        assert_eq!(
            utc,
            StartPosition::AtTimestamp(humantime::parse_rfc3339("2026-01-31T12:00:00Z").unwrap())
        );
        assert_eq!(at("2026-01-31T14:00:00+02:00").unwrap(), utc);
        assert_eq!(at("2026-01-31T11:30:00-00:30").unwrap(), utc);
        let err = at("yesterday").unwrap_err().to_string();
        assert!(
            err.contains("kinesis.start") && err.contains("yesterday"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("stream = \"s\"\npoll_intervall = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("poll_intervall"), "{err}");
    }

    #[test]
    fn check_names_the_key() {
        let mut c = KinesisSourceConfig::new("s");
        c.poll_interval = Duration::from_millis(100);
        c.max_records = 20_000;
        c.aws.access_key_id = Some("k".into());
        c.aws.endpoint_url = Some("127.0.0.1:4567".into());
        let p = c.check();
        assert_eq!(
            crate::service::config::problem_keys(&p),
            vec![
                "kinesis.endpoint_url",
                "kinesis.secret_access_key",
                "kinesis.poll_interval",
                "kinesis.max_records"
            ],
            "{p}"
        );
        assert!(
            p.as_slice()[2]
                .message
                .starts_with("must be at least 200ms"),
            "{p}"
        );
        c = KinesisSourceConfig::new("no spaces allowed");
        assert_eq!(c.check().as_slice()[0].key, "kinesis.stream");
    }

    #[test]
    fn the_aws_keys_are_the_agents() {
        // Routed by name: the AWS keys to `aws`, the rest to the source's own fields.
        let c = parse("stream = \"s\"\nregion = \"eu-central-1\"\nendpoint_url = \"http://127.0.0.1:4567\"\npoll_interval = \"500ms\"").unwrap();
        assert_eq!(c.aws.region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.aws.endpoint_url(), Some("http://127.0.0.1:4567"));
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert!(c.check().is_empty(), "{}", c.check());
        assert!(c.aws.warnings("kinesis").is_empty());
        let err = parse("stream = \"s\"\nendpoint_ur = \"http://x\"").unwrap_err();
        assert!(err.to_string().contains("endpoint_ur"), "{err}");
        let err = parse("stream = \"s\"\npoll_interval = 3").unwrap_err();
        assert!(err.to_string().contains("poll_interval"), "{err}");
    }

    #[test]
    fn the_old_endpoint_key_still_works_and_warns() {
        let c = parse("stream = \"s\"\nendpoint = \"http://127.0.0.1:4567\"").unwrap();
        assert_eq!(c.aws.endpoint_url(), Some("http://127.0.0.1:4567"));
        assert!(c.check().is_empty(), "{}", c.check());
        let w = c.aws.warnings("kinesis");
        assert_eq!(w.as_slice()[0].key, "kinesis.endpoint");
        assert!(w.to_string().contains("deprecated"), "{w}");
        let both =
            parse("stream = \"s\"\nendpoint = \"http://a\"\nendpoint_url = \"http://b\"").unwrap();
        assert_eq!(
            both.check().as_slice()[0].key,
            "kinesis.endpoint",
            "giving both is a problem"
        );
    }
}
