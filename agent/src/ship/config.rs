//! The `[kinesis]` table of the agent's configuration: where the shipper sends, and
//! how it batches, waits and retries. `firmware-config/reference.md` documents the keys.

use crate::config::Problems;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// PutRecords limits: entries per call, bytes per call, bytes per entry (data + key).
pub const KINESIS_MAX_RECORDS: usize = 500;
pub const KINESIS_MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
pub const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Kinesis accepts partition keys of 1 to 256 Unicode characters.
pub const KINESIS_MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    pub stream: String,
    /// AWS region; the standard AWS chain is used when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// e.g. `http://127.0.0.1:4567` for a local endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials; otherwise the standard AWS chain (env, profile, IMDS...).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub partition_key: PartitionKey,
    /// How long a batch may wait to fill before it is sent.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Per-call timeout; an expired call has an unknown outcome and is resent whole.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// NDJSON file for records Kinesis can never take (e.g. over 1 MiB). Default: `<buffer.path>/dead-letter.ndjson`.
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKey {
    /// Per-equipment order in the stream.
    #[default]
    EquipmentId,
    /// Spread load over shards; order is left to the consumer's watermark.
    Random,
}

fn default_linger() -> Duration {
    Duration::from_millis(250)
}
fn default_max_batch_records() -> usize {
    KINESIS_MAX_RECORDS
}
fn default_max_batch_bytes() -> usize {
    KINESIS_MAX_CALL_BYTES
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

impl KinesisConfig {
    /// What types cannot check; `table` is the key path of this table (`kinesis`).
    pub fn validate(&self, table: &str, p: &mut Problems) {
        if self.stream.is_empty() || self.stream.len() > 128 {
            p.push(format!("{table}.stream"), "must be 1 to 128 characters");
        }
        if !(1..=KINESIS_MAX_RECORDS).contains(&self.max_batch_records) {
            p.push(
                format!("{table}.max_batch_records"),
                format!("must be 1 to {KINESIS_MAX_RECORDS} (the PutRecords limit)"),
            );
        }
        if !(KINESIS_MAX_RECORD_BYTES..=KINESIS_MAX_CALL_BYTES).contains(&self.max_batch_bytes) {
            p.push(
                format!("{table}.max_batch_bytes"),
                format!("must be {KINESIS_MAX_RECORD_BYTES} to {KINESIS_MAX_CALL_BYTES} (the PutRecords limit)"),
            );
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            p.push(
                format!("{table}.access_key_id"),
                "access_key_id and secret_access_key go together",
            );
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(
                    format!("{table}.endpoint_url"),
                    "must start with http:// or https://",
                );
            }
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            p.push(
                format!("{table}.backoff_initial"),
                format!("must be greater than zero and at most {table}.backoff_max"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn the_example_configurations_still_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-config/examples");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!cfg.kinesis.stream.is_empty());
                loaded += 1;
            }
        }
        assert!(loaded > 0, "no examples in {}", dir.display());
    }

    #[test]
    fn kinesis_problems_name_their_keys() {
        let cfg: super::KinesisConfig = toml::from_str(
            r#"stream = ""
               max_batch_records = 501
               max_batch_bytes = 10
               access_key_id = "AKID"
               endpoint_url = "127.0.0.1:4567"
               backoff_initial = "1m"
               backoff_max = "1s""#,
        )
        .unwrap();
        let mut p = crate::config::Problems::default();
        cfg.validate("kinesis", &mut p);
        let keys: Vec<&str> = p.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "kinesis.stream",
                "kinesis.max_batch_records",
                "kinesis.max_batch_bytes",
                "kinesis.access_key_id",
                "kinesis.endpoint_url",
                "kinesis.backoff_initial"
            ]
        );
        assert!(toml::from_str::<super::KinesisConfig>("stream = \"s\"\nstrem = \"t\"").is_err());
    }
}
