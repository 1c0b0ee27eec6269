//! Kinesis: a client for local endpoints, stream set-up, reading every record, and
//! the kinesalite peer (bound to 127.0.0.1, optionally on disk so it survives a restart).

use crate::paths;
use crate::ports;
use crate::process::ChildGuard;
use crate::wait;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
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
                    out.push(StreamRecord {
                        shard_id: shard.clone(),
                        sequence_number: r.sequence_number,
                        partition_key: r.partition_key.unwrap_or_default(),
                        data: r.data.into_inner(),
                    });
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

/// Options of a [`Kinesalite`] peer.
#[derive(Debug, Clone, Default)]
pub struct KinesaliteOptions {
    /// LevelDB directory: streams and records survive [`Kinesalite::stop`] / [`Kinesalite::start_again`].
    /// `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
}

/// A kinesalite server on 127.0.0.1 (killed when dropped).
pub struct Kinesalite {
    port: u16,
    opts: KinesaliteOptions,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Kinesalite {
    /// Starts kinesalite on a free port; `log_dir` receives `kinesalite.log`.
    #[track_caller]
    pub fn start(opts: KinesaliteOptions, log_dir: &Path) -> Kinesalite {
        let mut k = Kinesalite {
            port: ports::free_port(),
            opts,
            log: log_dir.join("kinesalite.log"),
            child: None,
        };
        k.start_again();
        k
    }

    /// (Re)starts the server on the same port and data directory.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kinesalite is already running");
        let node = paths::node_with_kinesalite();
        let mut cmd = Command::new(node);
        cmd.current_dir(paths::peers_dir())
            .arg(paths::peers_dir().join("kinesalite-local.js"))
            .args(["--port", &self.port.to_string()]);
        if let Some(dir) = &self.opts.data_dir {
            cmd.arg("--path").arg(dir);
        }
        let mut child = ChildGuard::spawn("kinesalite", cmd, &self.log);
        let port = self.port;
        wait::until_blocking(
            &format!("kinesalite listening on 127.0.0.1:{port}"),
            Duration::from_secs(20),
            || {
                if let Some(status) = child.try_exit() {
                    panic!(
                        "kinesalite exited at start ({status}):\n{}",
                        child.log_tail(30)
                    );
                }
                if ports::is_listening(port) {
                    Ok(())
                } else {
                    Err("not listening yet".into())
                }
            },
        );
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM: the LevelDB store is closed cleanly) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop_with(libc::SIGTERM, Duration::from_secs(5));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        client(&self.endpoint())
    }

    /// Creates `stream` and waits until it is ACTIVE; panics with the server log otherwise.
    #[track_caller]
    pub fn create_stream(
        &self,
        stream: &str,
        shards: i32,
    ) -> impl std::future::Future<Output = ()> + '_ {
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
                    "creating stream {stream} (at {caller}): {e}\nkinesalite log:\n{}",
                    self.log_tail(20)
                );
            }
        }
    }

    /// Every record of `stream` (panics if the server cannot be read).
    pub async fn read_all(&self, stream: &str) -> Vec<StreamRecord> {
        match read_all(&self.client(), &self.endpoint(), stream).await {
            Ok(r) => r,
            Err(e) => panic!(
                "reading {stream}: {e}\nkinesalite log:\n{}",
                self.log_tail(20)
            ),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }
}
