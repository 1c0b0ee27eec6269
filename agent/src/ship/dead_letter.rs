//! The dead-letter file: records Kinesis can never take (over 1 MiB, or a partition
//! key it refuses), one NDJSON line each, so nothing is dropped silently.
//!
//! Line: `{"reason":"oversize","at":<ms>,"partitionKey":"<key>","id":<buffer id>,"bytes":<n>,"data":<point>}`.
//! `data` is the point's JSON itself when the record is compact JSON; otherwise a
//! string, with `"dataEncoding":"utf8"` (text that is not JSON) or `"base64"` (not UTF-8).

use super::queue::{DeadLetterReason, DeadLetterRecord};
use crate::config::{BufferConfig, KinesisConfig};
use crate::telemetry::metrics::Metrics;
use base64::Engine as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot write dead-letter file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dead-letter write task failed: {0}")]
    Task(String),
}

/// Appends dead letters durably. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetter {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    metrics: Metrics,
    /// Serialises appends from this process so lines never interleave.
    lock: Mutex<()>,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl DeadLetter {
    pub fn new(path: PathBuf, metrics: Metrics) -> Self {
        DeadLetter {
            inner: Arc::new(Inner {
                path,
                metrics,
                lock: Mutex::new(()),
            }),
        }
    }

    /// `kinesis.dead_letter_path`, or `<buffer.path>/dead-letter.ndjson`.
    pub fn path_from_config(buffer: &BufferConfig, kinesis: &KinesisConfig) -> PathBuf {
        kinesis
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| buffer.path.join("dead-letter.ndjson"))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends one line per record and fsyncs, then counts them. Blocking I/O.
    pub fn append_blocking(
        &self,
        records: &[DeadLetterRecord],
        at_ms: u64,
    ) -> Result<(), DeadLetterError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = &self.inner.path;
        let io = |source| DeadLetterError::Io {
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        for r in records {
            text.push_str(&encode_line(r, at_ms));
            text.push('\n');
        }
        // A poisoned lock only means another append panicked; the file is still usable.
        let _guard = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let existed = path.exists();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        if !existed {
            // Make the new directory entry durable too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        for r in records {
            let reason = r.reason.as_str();
            self.inner.metrics.count_dead_letter(reason, 1);
            self.inner.metrics.count_dropped(reason, 1);
        }
        Ok(())
    }

    /// [`Self::append_blocking`] on the blocking pool.
    pub async fn append(
        &self,
        records: Vec<DeadLetterRecord>,
        at_ms: u64,
    ) -> Result<(), DeadLetterError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(&records, at_ms))
            .await
            .map_err(|e| DeadLetterError::Task(e.to_string()))?
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One dead-letter line (without the newline).
pub fn encode_line(r: &DeadLetterRecord, at_ms: u64) -> String {
    let rec = &r.record.record;
    let mut line = format!(
        "{{\"reason\":{},\"at\":{at_ms},\"partitionKey\":{},\"id\":{},\"bytes\":{}",
        json_str(r.reason.as_str()),
        json_str(&rec.partition_key),
        rec.id,
        r.record.size(),
    );
    if let DeadLetterReason::Oversize { limit, .. } = r.reason {
        line.push_str(&format!(",\"limit\":{limit}"));
    }
    line.push_str(",\"data\":");
    let data = &rec.data;
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    if is_json && !data.iter().any(|b| *b == b'\n' || *b == b'\r') {
        // Compact JSON goes in as it is: the point exactly as it would have been sent.
        line.push_str(&String::from_utf8_lossy(data));
    } else if is_json {
        // Pretty-printed JSON would break the one-line-per-record format: re-encode compactly.
        match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) => line.push_str(&v.to_string()),
            Err(_) => line.push_str(&json_str(&String::from_utf8_lossy(data))),
        }
    } else {
        match std::str::from_utf8(data) {
            Ok(text) => {
                line.push_str(&json_str(text));
                line.push_str(",\"dataEncoding\":\"utf8\"");
            }
            Err(_) => {
                line.push_str(&json_str(
                    &base64::engine::general_purpose::STANDARD.encode(data),
                ));
                line.push_str(",\"dataEncoding\":\"base64\"");
            }
        }
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::StoredRecord;
    use crate::ship::queue::QueuedRecord;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn dead(id: u64, data: &[u8], reason: DeadLetterReason) -> DeadLetterRecord {
        DeadLetterRecord {
            record: Arc::new(QueuedRecord::new(StoredRecord {
                id,
                created_at: 0,
                partition_key: "eq-1".into(),
                data: data.to_vec(),
            })),
            reason,
        }
    }

    fn oversize() -> DeadLetterReason {
        DeadLetterReason::Oversize {
            bytes: 10,
            limit: 5,
        }
    }

    #[test]
    fn lines_embed_json_points_and_encode_everything_else() {
        let point = br#"{"version":1,"tag":"t","value":1.5}"#;
        let line = encode_line(&dead(7, point, oversize()), 1234);
        assert_eq!(
            line,
            r#"{"reason":"oversize","at":1234,"partitionKey":"eq-1","id":7,"bytes":39,"limit":5,"data":{"version":1,"tag":"t","value":1.5}}"#
        );

        let v: serde_json::Value =
            serde_json::from_str(&encode_line(&dead(1, b"not json", oversize()), 1)).unwrap();
        assert_eq!(v["data"], "not json");
        assert_eq!(v["dataEncoding"], "utf8");

        let raw = [0xff, 0x00, 0xfe];
        let v: serde_json::Value = serde_json::from_str(&encode_line(
            &dead(1, &raw, DeadLetterReason::InvalidPartitionKey),
            1,
        ))
        .unwrap();
        assert_eq!(v["reason"], "invalid_partition_key");
        assert_eq!(v["dataEncoding"], "base64");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, raw);

        let pretty = b"{\n  \"a\": 1\n}";
        let line = encode_line(&dead(1, pretty, oversize()), 1);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn appends_lines_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("dead-letter.ndjson");
        let metrics = Metrics::default();
        let dl = DeadLetter::new(path.clone(), metrics.clone());
        dl.append_blocking(&[dead(1, b"{}", oversize())], 10)
            .unwrap();
        dl.append_blocking(
            &[
                dead(2, b"{}", oversize()),
                dead(3, b"{}", DeadLetterReason::InvalidPartitionKey),
            ],
            20,
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);

        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"linewatch_agent_dead_letters_total{reason="oversize"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"linewatch_agent_dropped_total{reason="oversize"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"linewatch_agent_dead_letters_total{reason="invalid_partition_key"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn unwritable_path_is_an_error_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let metrics = Metrics::default();
        let dl = DeadLetter::new(blocker.join("dead-letter.ndjson"), metrics.clone());
        let err = dl
            .append_blocking(&[dead(1, b"{}", oversize())], 1)
            .unwrap_err();
        assert!(err.to_string().contains("dead-letter.ndjson"), "{err}");
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(!out.contains("reason=\"oversize\""));
    }

    #[test]
    fn default_path_is_inside_the_buffer_directory() {
        let cfg = crate::config::Config::parse(
            r#"gateway_id = "gw"
               [buffer]
               path = "/var/lib/linewatch/buffer"
               [kinesis]
               stream = "s""#,
        )
        .unwrap();
        assert_eq!(
            DeadLetter::path_from_config(&cfg.buffer, &cfg.kinesis),
            PathBuf::from("/var/lib/linewatch/buffer/dead-letter.ndjson")
        );
    }
}
