//! `[kinesis]`: which stream to read, where to start, and how often to poll.

use serde::{Deserialize, Deserializer};
use std::time::{Duration, SystemTime};

/// Kinesis allows 5 GetRecords calls per second per shard (shared by every consumer).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// GetRecords returns at most this many records.
pub const MAX_RECORDS_LIMIT: u32 = 10_000;

/// The `[kinesis]` section of the service configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    pub stream: String,
    /// Else `AWS_REGION` / the AWS profile.
    #[serde(default)]
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:4567` for kinesalite.
    #[serde(default)]
    pub endpoint: Option<String>,
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
    /// Static credentials (both or neither); else the standard AWS chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
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
    /// A configuration for `stream` with every default.
    pub fn new(stream: impl Into<String>) -> Self {
        KinesisSourceConfig {
            stream: stream.into(),
            region: None,
            endpoint: None,
            start: StartPosition::default(),
            on_invalid_position: InvalidPositionPolicy::default(),
            poll_interval: default_poll_interval(),
            max_records: default_max_records(),
            shard_discovery_interval: default_discovery(),
            access_key_id: None,
            secret_access_key: None,
        }
    }

    /// Problems with the values, each naming its key; empty when the section is usable.
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.stream.trim().is_empty() {
            p.push("kinesis.stream: must not be empty".to_owned());
        } else if self.stream.len() > 128
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            p.push(format!(
                "kinesis.stream: {:?} is not a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -)",
                self.stream
            ));
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            p.push("kinesis.region: must not be empty (leave it out to use the AWS chain)".into());
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                p.push(format!(
                    "kinesis.endpoint: {e:?} must start with http:// or https://"
                ));
            }
        }
        if self.poll_interval < MIN_POLL_INTERVAL {
            p.push(format!(
                "kinesis.poll_interval: must be at least {} (Kinesis allows 5 GetRecords/s per shard), got {}",
                humantime::format_duration(MIN_POLL_INTERVAL),
                humantime::format_duration(self.poll_interval)
            ));
        }
        if self.max_records == 0 || self.max_records > MAX_RECORDS_LIMIT {
            p.push(format!(
                "kinesis.max_records: must be 1..={MAX_RECORDS_LIMIT}, got {}",
                self.max_records
            ));
        }
        if self.shard_discovery_interval < Duration::from_secs(1) {
            p.push(format!(
                "kinesis.shard_discovery_interval: must be at least 1s (ListShards allows 1000 calls/s per account, shared), got {}",
                humantime::format_duration(self.shard_discovery_interval)
            ));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => p.push(
                "kinesis.secret_access_key: missing (access_key_id is set; give both or neither)"
                    .into(),
            ),
            (None, Some(_)) => p.push(
                "kinesis.access_key_id: missing (secret_access_key is set; give both or neither)"
                    .into(),
            ),
            _ => {}
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
        assert!(c.check().is_empty(), "{:?}", c.check());
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
        c.access_key_id = Some("k".into());
        c.endpoint = Some("127.0.0.1:4567".into());
        let p = c.check();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[1].starts_with("kinesis.poll_interval: must be at least 200ms"),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.starts_with("kinesis.max_records")));
        assert!(p.iter().any(|m| m.starts_with("kinesis.secret_access_key")));
        assert!(p.iter().any(|m| m.starts_with("kinesis.endpoint")));
        c = KinesisSourceConfig::new("no spaces allowed");
        assert!(c.check()[0].starts_with("kinesis.stream"));
    }
}
