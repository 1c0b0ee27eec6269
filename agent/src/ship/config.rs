//! The `[kinesis]` table of the agent's configuration: where the shipper sends, and
//! how it batches, waits and retries. `firmware-config/reference.md` documents the keys.
//!
//! The AWS connection keys (`region`, `endpoint_url`, credentials) are the runtime's
//! [`AwsConnection`], the same keys the rule engine reads; the rest are the shipper's.
//! Both are read from the one table with [`Split`], so a misspelt key is still refused.

use linewatch_runtime::aws::AwsConnection;
use linewatch_runtime::config::Split;
use linewatch_runtime::Problems;
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::time::Duration;

/// PutRecords limits: entries per call, bytes per call, bytes per entry (data + key).
pub const KINESIS_MAX_RECORDS: usize = 500;
pub const KINESIS_MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
pub const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Kinesis accepts partition keys of 1 to 256 Unicode characters.
pub const KINESIS_MAX_PARTITION_KEY_CHARS: usize = 256;

// `remote = "Self"`: the derive writes an inherent `KinesisConfig::deserialize` that reads
// the shipper's own keys only (`aws` is skipped); the `Deserialize` impl below reads the
// whole table through `Split`. Keeps one list of fields without `flatten`, which would
// silently turn `deny_unknown_fields` off.
#[derive(Debug, Clone, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct KinesisConfig {
    /// `region`, `endpoint_url`, `access_key_id`, `secret_access_key` (or
    /// `secret_access_key_env`); absent ones come from the standard AWS chain.
    /// Secrets are redacted in `Debug`.
    #[serde(skip)]
    pub aws: AwsConnection,
    pub stream: String,
    #[serde(default)]
    pub partition_key: PartitionKey,
    /// How points are packed into Kinesis records.
    #[serde(default)]
    pub aggregation: Aggregation,
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
    /// Pacing to the stream's shards (1,000 records/s and 1 MiB/s each).
    #[serde(default)]
    pub shards: Shards,
    /// A live point waiting this long for Kinesis means the uplink fell behind: the
    /// waiting points move to the backfill lane, shipped behind live data. `0s`: one
    /// lane, oldest first.
    #[serde(default = "default_backfill_after", with = "humantime_serde")]
    pub backfill_after: Duration,
    /// Share of the shard budget the backfill may use (paced streams); the rest is
    /// kept for live data.
    #[serde(default = "default_backfill_share")]
    pub backfill_share: f64,
}

/// `shards`: how many shards' worth the shipper may send per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shards {
    /// Ask the stream (DescribeStreamSummary) at start; unpaced if that is refused.
    #[default]
    Auto,
    /// No pacing: send as fast as Kinesis accepts, back off when it throttles.
    Off,
    /// This many shards' worth (the share of the stream the gateway may fill).
    Count(u32),
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(0) => Err(serde::de::Error::custom(
                "shards must be at least 1 (or \"auto\", or \"off\")",
            )),
            Raw::Count(n) => Ok(Shards::Count(n)),
            Raw::Word(w) if w == "auto" => Ok(Shards::Auto),
            Raw::Word(w) if w == "off" => Ok(Shards::Off),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "shards must be a number of shards, \"auto\" or \"off\", not {w:?}"
            ))),
        }
    }
}

/// The shipper's own keys of `[kinesis]`, as the specific half of the split.
struct ShipperKeys(KinesisConfig);

impl<'de> Deserialize<'de> for ShipperKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KinesisConfig::deserialize(d).map(ShipperKeys)
    }
}

impl<'de> Deserialize<'de> for KinesisConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Split {
            common,
            specific: ShipperKeys(mut cfg),
        } = Split::<AwsConnection, ShipperKeys>::deserialize(d)?;
        cfg.aws = common;
        Ok(cfg)
    }
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

/// `aggregation`: many points per Kinesis record, or one each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// KPL aggregated records, one per partition key per call: fewer records against
    /// the shard's 1,000 records/s, the points of a key together and in order.
    #[default]
    Kpl,
    /// One point per Kinesis record, its JSON as stored (consumers that cannot unpack KPL).
    None,
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

fn default_backfill_after() -> Duration {
    Duration::from_secs(10)
}

fn default_backfill_share() -> f64 {
    0.8
}

impl KinesisConfig {
    /// The shipper's lane settings.
    pub fn lanes(&self) -> super::lanes::LanePolicy {
        super::lanes::LanePolicy {
            backfill_after: (!self.backfill_after.is_zero()).then_some(self.backfill_after),
            backfill_share: self.backfill_share,
        }
    }

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
        // The connection keys: the runtime's checks (endpoint scheme, both credentials or neither).
        p.extend(self.aws.validate(table));
        if !(self.backfill_share > 0.0 && self.backfill_share <= 1.0) {
            p.push(
                format!("{table}.backfill_share"),
                "must be greater than 0 and at most 1",
            );
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
    fn a_deprecated_endpoint_key_loads_with_a_warning_naming_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../firmware-config/examples/filling-machine.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let cfg = Config::parse(&text).unwrap();
        assert!(cfg.warnings().is_empty());
        let old = text.replace(
            "region = \"eu-central-1\"",
            "region = \"eu-central-1\"\nendpoint = \"http://127.0.0.1:4567\"",
        );
        let cfg = Config::parse(&old).unwrap();
        assert_eq!(
            cfg.kinesis.aws.endpoint_url(),
            Some("http://127.0.0.1:4567")
        );
        let w = cfg.warnings();
        assert_eq!(
            w.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["kinesis.endpoint"]
        );
        assert!(w.to_string().contains("endpoint_url"), "{w}");
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
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        // The connection keys are checked by the runtime's `AwsConnection`: an id
        // without a secret names the missing `secret_access_key`.
        assert_eq!(
            keys,
            vec![
                "kinesis.stream",
                "kinesis.max_batch_records",
                "kinesis.max_batch_bytes",
                "kinesis.endpoint_url",
                "kinesis.secret_access_key",
                "kinesis.backoff_initial"
            ]
        );
        assert!(p.to_string().contains(
            "kinesis.secret_access_key: missing (access_key_id is set; give both or neither)"
        ));
        assert!(toml::from_str::<super::KinesisConfig>("stream = \"s\"\nstrem = \"t\"").is_err());
    }

    #[test]
    fn shards_is_a_count_auto_or_off() {
        let shards = |v: &str| {
            toml::from_str::<super::KinesisConfig>(&format!("stream = \"s\"\n{v}"))
                .map(|c| c.shards)
                .map_err(|e| e.to_string())
        };
        assert_eq!(shards(""), Ok(super::Shards::Auto));
        assert_eq!(shards("shards = 4"), Ok(super::Shards::Count(4)));
        assert_eq!(shards("shards = \"off\""), Ok(super::Shards::Off));
        for bad in ["shards = 0", "shards = \"many\"", "shards = -1"] {
            let e = shards(bad).unwrap_err();
            assert!(e.contains("shards"), "{bad}: {e}");
        }
    }

    #[test]
    fn connection_and_shipper_keys_share_the_table_and_typos_are_refused() {
        let cfg: super::KinesisConfig = toml::from_str(
            r#"stream = "s"
               region = "eu-central-1"
               endpoint_url = "http://127.0.0.1:4567"
               access_key_id = "AKID"
               secret_access_key = "hunter2"
               linger = "1s""#,
        )
        .unwrap();
        assert_eq!(cfg.stream, "s");
        assert_eq!(cfg.linger, std::time::Duration::from_secs(1));
        assert_eq!(cfg.aws.region.as_deref(), Some("eu-central-1"));
        assert_eq!(cfg.aws.endpoint_url(), Some("http://127.0.0.1:4567"));
        let mut p = crate::config::Problems::default();
        cfg.validate("kinesis", &mut p);
        assert!(p.is_empty(), "{p}");
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2"),
            "the secret is redacted: {shown}"
        );
        for typo in ["endpoint_ur = \"http://x\"", "lingr = \"1s\""] {
            let e = toml::from_str::<super::KinesisConfig>(&format!("stream = \"s\"\n{typo}"))
                .unwrap_err()
                .to_string();
            let key = typo.split(' ').next().unwrap();
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
        }
        let e = toml::from_str::<super::KinesisConfig>("stream = \"s\"\nlinger = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("linger"), "a mistyped key is named: {e}");
    }
}
