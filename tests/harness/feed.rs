//! Hand-made data points (schema v1) for the rule engine, put into Kinesis with
//! partition key = `equipmentId`, and resharding (SplitShard) of a stream.
//!
//! A [`Feed`] numbers points per sender (`gatewayId/sourceId`) like an agent would and
//! keeps every point it made, so the same points can be given to the engine's replay
//! command as the expected-output oracle ([`Feed::write_ndjson`]).

use crate::kinesis::KinesisError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A piece of equipment and the sender (gateway, source) that reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Equipment {
    pub id: String,
    pub gateway: String,
    pub source: String,
}

impl Equipment {
    pub fn new(id: &str, gateway: &str, source: &str) -> Equipment {
        Equipment {
            id: id.to_owned(),
            gateway: gateway.to_owned(),
            source: source.to_owned(),
        }
    }

    /// The watermark's sender key.
    pub fn sender(&self) -> String {
        format!("{}/{}", self.gateway, self.source)
    }
}

/// One data point, serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub equipment_id: String,
    pub timestamp: u64,
    pub json: String,
}

/// Makes points and remembers them (see the module docs).
#[derive(Debug, Default)]
pub struct Feed {
    seqs: HashMap<(String, String), u64>,
    all: Vec<Point>,
    /// Index in `all` of the first point not yet taken by [`Feed::take`].
    taken: usize,
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    fn next_seq(&mut self, eq: &Equipment) -> u64 {
        let s = self
            .seqs
            .entry((eq.gateway.clone(), eq.source.clone()))
            .or_insert(0);
        *s += 1;
        *s
    }

    /// A point of `tag` = `value` (JSON number, bool or string), quality Ok.
    pub fn value(&mut self, eq: &Equipment, tag: &str, ts: u64, value: serde_json::Value) {
        let seq = self.next_seq(eq);
        let p = json!({
            "version": 1, "timestamp": ts, "equipmentId": eq.id, "tag": tag,
            "value": value, "quality": "Ok",
            "meta": {"sequenceNumber": seq, "createdAt": ts + 5, "sourceId": eq.source,
                     "gatewayId": eq.gateway}
        });
        self.push(eq, ts, p);
    }

    /// A heartbeat (`$heartbeat`, value null, flag `Wmk`): the sender's clock reached `ts`.
    pub fn heartbeat(&mut self, eq: &Equipment, ts: u64) {
        let seq = self.next_seq(eq);
        let p = json!({
            "version": 1, "timestamp": ts, "equipmentId": eq.id, "tag": "$heartbeat",
            "value": null, "quality": "Ok",
            "meta": {"sequenceNumber": seq, "flags": ["Wmk"], "createdAt": ts + 5,
                     "sourceId": eq.source, "gatewayId": eq.gateway}
        });
        self.push(eq, ts, p);
    }

    /// A heartbeat at `ts` from every sender of `equipment` (once per sender).
    pub fn heartbeats(&mut self, equipment: &[Equipment], ts: u64) {
        let mut done = std::collections::HashSet::new();
        for eq in equipment {
            if done.insert(eq.sender()) {
                self.heartbeat(eq, ts);
            }
        }
    }

    fn push(&mut self, eq: &Equipment, ts: u64, p: serde_json::Value) {
        self.all.push(Point {
            equipment_id: eq.id.clone(),
            timestamp: ts,
            json: p.to_string(),
        });
    }

    /// Every point made so far, in the order made.
    pub fn all(&self) -> &[Point] {
        &self.all
    }

    /// The points made since the last `take`.
    pub fn take(&mut self) -> Vec<Point> {
        let out = self.all[self.taken..].to_vec();
        self.taken = self.all.len();
        out
    }

    /// Every point made so far as NDJSON (the replay oracle's input).
    #[track_caller]
    pub fn write_ndjson(&self, path: &Path) {
        let mut text = String::new();
        for p in &self.all {
            text.push_str(&p.json);
            text.push('\n');
        }
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

fn call_err<E: std::error::Error>(op: &'static str, endpoint: &str, e: E) -> KinesisError {
    KinesisError::Call {
        op,
        endpoint: endpoint.to_owned(),
        message: aws_sdk_kinesis::error::DisplayErrorContext(e).to_string(),
    }
}

/// PutRecords of `points` in order, ≤ 500 per call, partition key = equipmentId.
///
/// A record Kinesis refuses is an error (not retried): resending only the failed
/// records would reorder a key, and kinesalite does not throttle anyway.
pub async fn put_points(
    client: &Client,
    endpoint: &str,
    stream: &str,
    points: &[Point],
) -> Result<(), KinesisError> {
    for chunk in points.chunks(500) {
        let entries = chunk
            .iter()
            .map(|p| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&p.equipment_id)
                    .data(Blob::new(p.json.as_bytes()))
                    .build()
                    .map_err(|e| call_err("PutRecords (building an entry)", endpoint, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| call_err("PutRecords", endpoint, e))?;
        if out.failed_record_count.unwrap_or(0) > 0 {
            let first = out
                .records
                .iter()
                .find(|r| r.error_code.is_some())
                .map(|r| format!("{:?}: {:?}", r.error_code, r.error_message))
                .unwrap_or_default();
            return Err(KinesisError::Call {
                op: "PutRecords",
                endpoint: endpoint.to_owned(),
                message: format!(
                    "{} of {} records failed (first: {first})",
                    out.failed_record_count.unwrap_or(0),
                    chunk.len()
                ),
            });
        }
    }
    Ok(())
}

/// A shard of a stream as ListShards reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parent: Option<String>,
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
    /// Closed shards (split or merged) have an ending sequence number.
    pub open: bool,
}

/// Every shard of `stream`, open and closed.
pub async fn list_shards(
    client: &Client,
    endpoint: &str,
    stream: &str,
) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| call_err("ListShards", endpoint, e))?;
        for s in out.shards.unwrap_or_default() {
            let range = s.hash_key_range.as_ref();
            let parse = |v: Option<&str>| v.and_then(|v| v.parse::<u128>().ok()).unwrap_or(0);
            shards.push(ShardInfo {
                open: s
                    .sequence_number_range
                    .as_ref()
                    .is_none_or(|r| r.ending_sequence_number.is_none()),
                starting_hash_key: parse(range.map(|r| r.starting_hash_key.as_str())),
                ending_hash_key: parse(range.map(|r| r.ending_hash_key.as_str())),
                parent: s.parent_shard_id,
                shard_id: s.shard_id,
            });
        }
        next = out.next_token;
        if next.is_none() {
            return Ok(shards);
        }
    }
}

/// Splits `shard` (or the first open shard) in the middle of its hash range, waits until
/// the stream is ACTIVE again and returns the two children.
pub async fn split_shard(
    client: &Client,
    endpoint: &str,
    stream: &str,
    shard: Option<&str>,
    timeout: Duration,
) -> Result<(String, String), KinesisError> {
    let shards = list_shards(client, endpoint, stream).await?;
    let target = shards
        .iter()
        .find(|s| s.open && shard.is_none_or(|id| id == s.shard_id))
        .ok_or_else(|| KinesisError::Call {
            op: "SplitShard",
            endpoint: endpoint.to_owned(),
            message: format!(
                "no open shard {} in {stream} (shards: {shards:?})",
                shard.unwrap_or("<any>")
            ),
        })?;
    let mid = target.starting_hash_key + (target.ending_hash_key - target.starting_hash_key) / 2;
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&target.shard_id)
        .new_starting_hash_key((mid + 1).to_string())
        .send()
        .await
        .map_err(|e| call_err("SplitShard", endpoint, e))?;
    crate::kinesis::wait_active(client, endpoint, stream, timeout).await?;
    let children: Vec<String> = list_shards(client, endpoint, stream)
        .await?
        .into_iter()
        .filter(|s| s.parent.as_deref() == Some(target.shard_id.as_str()))
        .map(|s| s.shard_id)
        .collect();
    match children.as_slice() {
        [a, b] => Ok((a.clone(), b.clone())),
        other => Err(KinesisError::Call {
            op: "SplitShard",
            endpoint: endpoint.to_owned(),
            message: format!(
                "expected two children of {}, found {other:?}",
                target.shard_id
            ),
        }),
    }
}
