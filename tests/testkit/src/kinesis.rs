//! Kinesis from the test's side: a client for local endpoints, stream set-up, reading
//! every record, PutRecords of data points, SplitShard; and [`KinesisPeer`], what every
//! local Kinesis implementation the kit launches offers (`peers::kinesalite`,
//! `peers::kinesis_local`).

use crate::wait;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Dummy credentials: local endpoints do not check signatures, but the SDK signs.
pub const ACCESS_KEY_ID: &str = "linewatch-test";
pub const SECRET_ACCESS_KEY: &str = "linewatch-test-secret";
pub const REGION: &str = "eu-central-1";

#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    #[error("{op} on {endpoint}: {message}")]
    Call {
        op: &'static str,
        endpoint: String,
        message: String,
    },
    #[error("stream {stream} not ACTIVE after {waited:?} (last status {status})")]
    NotActive {
        stream: String,
        waited: Duration,
        status: String,
    },
}

fn call_err<E: std::error::Error>(op: &'static str, endpoint: &str, e: E) -> KinesisError {
    // DisplayErrorContext walks the source chain: "connection refused" rather than "dispatch failure".
    KinesisError::Call {
        op,
        endpoint: endpoint.to_owned(),
        message: aws_sdk_kinesis::error::DisplayErrorContext(e).to_string(),
    }
}

/// A Kinesis client for `endpoint` (e.g. `http://127.0.0.1:4567`) with static dummy credentials.
pub fn client(endpoint: &str) -> Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "linewatch-e2e",
        ))
        .build();
    Client::from_conf(conf)
}

/// One record read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub shard_id: String,
    pub sequence_number: String,
    /// Index of this user record inside a KPL aggregated record (0 for a plain one).
    pub sub_sequence: u32,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Creates `stream` with `shards` shards and waits (up to `timeout`) until it is ACTIVE.
/// An already existing stream is fine.
pub async fn create_stream(
    client: &Client,
    endpoint: &str,
    stream: &str,
    shards: i32,
    timeout: Duration,
) -> Result<(), KinesisError> {
    let res = client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await;
    if let Err(e) = res {
        let in_use = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        if !in_use {
            return Err(call_err("CreateStream", endpoint, e));
        }
    }
    wait_active(client, endpoint, stream, timeout).await
}

/// Polls until `stream` is ACTIVE (after a create or a reshard), up to `timeout`.
pub async fn wait_active(
    client: &Client,
    endpoint: &str,
    stream: &str,
    timeout: Duration,
) -> Result<(), KinesisError> {
    let start = Instant::now();
    loop {
        let status = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| call_err("DescribeStreamSummary", endpoint, e))?
            .stream_description_summary
            .map(|s| s.stream_status);
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(KinesisError::NotActive {
                stream: stream.to_owned(),
                waited: start.elapsed(),
                status: format!("{status:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a stream shard by shard, keeping an iterator per shard, so it can be polled
/// for new records (the `tail` tool) or drained once ([`read_all`]).
pub struct StreamReader {
    client: Client,
    endpoint: String,
    stream: String,
    /// shard id → next iterator (`None` once a closed shard is fully read).
    iterators: BTreeMap<String, Option<String>>,
}

impl StreamReader {
    /// Starts at the oldest record of every shard (TRIM_HORIZON).
    pub async fn from_start(
        client: &Client,
        endpoint: &str,
        stream: &str,
    ) -> Result<StreamReader, KinesisError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = client.list_shards();
            req = match &next {
                Some(token) => req.next_token(token),
                None => req.stream_name(stream),
            };
            let out = req
                .send()
                .await
                .map_err(|e| call_err("ListShards", endpoint, e))?;
            shards.extend(
                out.shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.shard_id),
            );
            next = out.next_token;
            if next.is_none() {
                break;
            }
        }
        let mut iterators = BTreeMap::new();
        for shard in shards {
            let it = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .map_err(|e| call_err("GetShardIterator", endpoint, e))?
                .shard_iterator;
            iterators.insert(shard, it);
        }
        Ok(StreamReader {
            client: client.clone(),
            endpoint: endpoint.to_owned(),
            stream: stream.to_owned(),
            iterators,
        })
    }

    /// One GetRecords round over every shard: the records that arrived since the last poll.
    pub async fn poll(&mut self) -> Result<Vec<StreamRecord>, KinesisError> {
        let mut out = Vec::new();
        for (shard, iterator) in self.iterators.iter_mut() {
            // Keep reading a shard while it returns full pages, so one poll catches up.
            while let Some(it) = iterator.clone() {
                let res = self
                    .client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .map_err(|e| call_err("GetRecords", &self.endpoint, e))?;
                let n = res.records.len();
                for r in res.records {
                    // The user records, as a KCL consumer sees them: an aggregated record
                    // unpacked (one that does not unpack is kept whole, for the test to see).
                    let key = r.partition_key.unwrap_or_default();
                    let data = r.data.into_inner();
                    match linewatch_schemas::kpl::deaggregate(&data, &key) {
                        Ok(users) => out.extend(users.into_iter().map(|u| StreamRecord {
                            shard_id: shard.clone(),
                            sequence_number: r.sequence_number.clone(),
                            sub_sequence: u.sub_sequence,
                            partition_key: u.partition_key,
                            data: u.data,
                        })),
                        Err(_) => out.push(StreamRecord {
                            shard_id: shard.clone(),
                            sequence_number: r.sequence_number,
                            sub_sequence: 0,
                            partition_key: key,
                            data,
                        }),
                    }
                }
                *iterator = res.next_shard_iterator;
                if n == 0 || res.millis_behind_latest.unwrap_or(0) == 0 && n < 10_000 {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }
}

/// Every record in `stream`, from all shards, each shard in its own order.
pub async fn read_all(
    client: &Client,
    endpoint: &str,
    stream: &str,
) -> Result<Vec<StreamRecord>, KinesisError> {
    let mut reader = StreamReader::from_start(client, endpoint, stream).await?;
    let mut all = Vec::new();
    loop {
        let batch = reader.poll().await?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

/// One Kinesis record exactly as GetRecords returned it: an aggregated record is not
/// unpacked (tests that check the wire format themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Every record of `stream` as stored, shard by shard in shard order, each shard in its
/// own order (like [`read_all`], without de-aggregation).
pub async fn read_all_raw(
    client: &Client,
    endpoint: &str,
    stream: &str,
) -> Result<Vec<RawRecord>, KinesisError> {
    let mut out = Vec::new();
    for shard in list_shards(client, endpoint, stream).await? {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&shard.shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| call_err("GetShardIterator", endpoint, e))?
            .shard_iterator;
        while let Some(it) = iterator {
            let res = client
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .map_err(|e| call_err("GetRecords", endpoint, e))?;
            let n = res.records.len();
            out.extend(res.records.into_iter().map(|r| RawRecord {
                shard_id: shard.shard_id.clone(),
                sequence_number: r.sequence_number,
                partition_key: r.partition_key.unwrap_or_default(),
                data: r.data.into_inner(),
            }));
            iterator = res.next_shard_iterator;
            if n == 0 {
                break;
            }
        }
    }
    Ok(out)
}

/// PutRecords of `points` in order, ≤ 500 per call, partition key = equipmentId.
///
/// A record Kinesis refuses is an error (not retried): resending only the failed
/// records would reorder a key, and kinesalite does not throttle anyway.
pub async fn put_points(
    client: &Client,
    endpoint: &str,
    stream: &str,
    points: &[crate::feed::Point],
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
    wait_active(client, endpoint, stream, timeout).await?;
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

/// A running local Kinesis implementation: its endpoint and log, and the helpers every
/// test uses on it (they panic with the server's log tail).
pub trait KinesisPeer {
    /// `http://127.0.0.1:PORT`
    fn endpoint(&self) -> String;

    /// The last `lines` lines of the server's log.
    fn log_tail(&self, lines: usize) -> String;

    fn client(&self) -> Client {
        client(&self.endpoint())
    }

    /// Creates `stream` and waits until it is ACTIVE; panics with the server log otherwise.
    #[track_caller]
    fn create_stream(&self, stream: &str, shards: i32) -> impl std::future::Future<Output = ()> {
        let caller = std::panic::Location::caller();
        let stream = stream.to_owned();
        async move {
            let res = create_stream(
                &self.client(),
                &self.endpoint(),
                &stream,
                shards,
                wait::scaled(Duration::from_secs(20)),
            )
            .await;
            if let Err(e) = res {
                panic!(
                    "creating stream {stream} (at {caller}): {e}\nserver log:\n{}",
                    self.log_tail(20)
                );
            }
        }
    }

    /// Every record of `stream` (panics if the server cannot be read).
    fn read_all(&self, stream: &str) -> impl std::future::Future<Output = Vec<StreamRecord>> {
        async move {
            match read_all(&self.client(), &self.endpoint(), stream).await {
                Ok(r) => r,
                Err(e) => panic!("reading {stream}: {e}\nserver log:\n{}", self.log_tail(20)),
            }
        }
    }

    /// Every record of `stream` as stored, aggregated records not unpacked (panics if
    /// the server cannot be read).
    fn read_all_raw(&self, stream: &str) -> impl std::future::Future<Output = Vec<RawRecord>> {
        async move {
            match read_all_raw(&self.client(), &self.endpoint(), stream).await {
                Ok(r) => r,
                Err(e) => panic!(
                    "reading {stream} raw: {e}\nserver log:\n{}",
                    self.log_tail(20)
                ),
            }
        }
    }

    /// PutRecords of `points` (partition key = equipmentId); panics with the server log.
    fn put_points(
        &self,
        stream: &str,
        points: &[crate::feed::Point],
    ) -> impl std::future::Future<Output = ()> {
        async move {
            if let Err(e) = put_points(&self.client(), &self.endpoint(), stream, points).await {
                panic!(
                    "putting {} points: {e}\nserver log:\n{}",
                    points.len(),
                    self.log_tail(20)
                );
            }
        }
    }
}
