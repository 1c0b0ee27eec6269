//! The Kinesis source against a real kinesalite on 127.0.0.1 (started by the test kit).
//!
//! Needs `tests/peers/node_modules` (`bash scripts/install-peers.sh`).

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::Client;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use linewatch_rules::source::metrics::{ErrorLabels, OperationLabel};
use linewatch_rules::source::{
    KinesisSource, KinesisSourceConfig, ShardPosition, ShardPositions, SourceBatch, SourceMetrics,
    SourceRecord, StartPosition,
};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_schemas::kpl;
use linewatch_testkit::kinesis::{self, KinesisPeer};
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::Scratch;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const REGION: &str = kinesis::REGION;
const KEY_ID: &str = kinesis::ACCESS_KEY_ID;
const SECRET: &str = kinesis::SECRET_ACCESS_KEY;
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// kinesalite, from the test kit

/// kinesalite on a free port (closed shards count against its shard limit: 100), its
/// log in the returned scratch dir.
fn start_kinesalite(test: &str) -> (Scratch, Kinesalite) {
    let scratch = Scratch::new(test);
    let k = Kinesalite::start(
        KinesaliteOptions {
            shard_limit: Some(100),
            ..Default::default()
        },
        scratch.path(),
    );
    (scratch, k)
}

/// The source's config for `stream` on `k`, with quick polls.
fn source_config(k: &Kinesalite, stream: &str) -> KinesisSourceConfig {
    let mut c = KinesisSourceConfig::new(stream);
    c.aws.region = Some(REGION.into());
    c.aws.endpoint_url = Some(k.endpoint());
    c.aws.access_key_id = Some(KEY_ID.into());
    c.aws.secret_access_key = Some(SECRET.into());
    c.poll_interval = Duration::from_millis(200);
    c.shard_discovery_interval = Duration::from_secs(1);
    c
}

// ---------------------------------------------------------------------------------------
// stream helpers

async fn wait_active(k: &Kinesalite, stream: &str) {
    kinesis::wait_active(&k.client(), &k.endpoint(), stream, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", k.log_tail(20)));
}

/// Puts one record; returns (shard id, sequence number).
async fn put(client: &Client, stream: &str, key: &str, data: &[u8]) -> (String, String) {
    let out = client
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutRecord: {e:?}"));
    (out.shard_id, out.sequence_number)
}

/// Puts `per_key` records for each of `keys` keys, numbered from `from`: data `k3:17`.
async fn put_numbered(
    client: &Client,
    stream: &str,
    keys: usize,
    from: usize,
    per_key: usize,
) -> Vec<String> {
    let mut all = Vec::new();
    for n in from..from + per_key {
        for k in 0..keys {
            let data = format!("k{k}:{n}");
            put(client, stream, &format!("k{k}"), data.as_bytes()).await;
            all.push(data);
        }
    }
    all
}

fn seq_key(seq: &str) -> (usize, &str) {
    // Sequence numbers are decimal strings of varying length.
    (seq.len(), seq)
}

struct Running {
    rx: mpsc::Receiver<SourceBatch>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: SourceMetrics,
}

async fn run_source(cfg: KinesisSourceConfig, start: ShardPositions) -> Running {
    let metrics = SourceMetrics::new();
    let source = KinesisSource::new(&cfg, metrics.clone())
        .await
        .expect("source builds");
    let (tx, rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let stop_rx = stop.clone();
    let task = tokio::spawn(async move {
        source
            .run(start, tx, stop_rx, fastrand::Rng::with_seed(7))
            .await
            .expect("run");
    });
    Running {
        rx,
        stop,
        task,
        metrics,
    }
}

impl Running {
    /// Receives batches until `done(all so far)` holds.
    async fn until(
        &mut self,
        batches: &mut Vec<SourceBatch>,
        what: &str,
        done: impl Fn(&[SourceBatch]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(batches) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(b)) => batches.push(b),
                Ok(None) => panic!("source ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; got {} records in {} batches",
                    records(batches).count(),
                    batches.len()
                ),
            }
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        drop(self.rx);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("source stops within 10s")
            .expect("source task did not panic");
    }
}

fn records(batches: &[SourceBatch]) -> impl Iterator<Item = (&str, &SourceRecord)> {
    batches
        .iter()
        .flat_map(|b| b.records.iter().map(move |r| (b.shard_id.as_str(), r)))
}

fn datas(batches: &[SourceBatch]) -> Vec<String> {
    records(batches)
        .map(|(_, r)| String::from_utf8(r.data.clone()).unwrap())
        .collect()
}

/// Checks every key's numbers arrive strictly increasing and returns them per key.
fn per_key_order(batches: &[SourceBatch]) -> BTreeMap<String, Vec<usize>> {
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for d in datas(batches) {
        let (k, n) = d.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let v = seen.entry(k.to_owned()).or_default();
        if let Some(&last) = v.last() {
            assert!(n > last, "key {k}: {n} delivered after {last}");
        }
        v.push(n);
    }
    seen
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_shard_with_positions() {
    let (_scratch, k) = start_kinesalite("reads_every_shard_with_positions");
    k.create_stream("multi", 4).await;
    let client = k.client();
    let mut puts: HashMap<String, (String, String)> = HashMap::new();
    for i in 0..120 {
        let data = format!("k{}:{}", i % 12, i / 12);
        let at = put(&client, "multi", &format!("k{}", i % 12), data.as_bytes()).await;
        puts.insert(data, at);
    }
    let shards_used: BTreeSet<&String> = puts.values().map(|(s, _)| s).collect();
    assert!(
        shards_used.len() >= 2,
        "keys spread over shards: {shards_used:?}"
    );

    let mut cfg = source_config(&k, "multi");
    cfg.max_records = 7; // several batches per shard
    let mut src = run_source(cfg, ShardPositions::new()).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "120 records", |b| records(b).count() >= 120)
        .await;

    let got = datas(&batches);
    assert_eq!(got.len(), 120, "no record twice");
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        puts.keys().collect::<BTreeSet<_>>()
    );
    for (shard, r) in records(&batches) {
        let (put_shard, put_seq) = &puts[std::str::from_utf8(&r.data).unwrap()];
        assert_eq!(
            (shard, r.sequence_number.as_str()),
            (put_shard.as_str(), put_seq.as_str())
        );
        assert_eq!(r.sub_sequence, 0);
        assert!(r.arrival_ms.is_some());
        assert_eq!(
            r.partition_key,
            std::str::from_utf8(&r.data)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        );
    }
    // Each batch's position is its last record; positions move forward per shard.
    let mut positions = ShardPositions::new();
    for b in &batches {
        assert!(b.records.len() <= 7);
        let last = b.records.last().expect("open shards send no empty batches");
        assert_eq!(
            b.position,
            ShardPosition::After(last.sequence_number.clone())
        );
        if let Some(ShardPosition::After(prev)) = positions.get(&b.shard_id) {
            assert!(seq_key(&b.records[0].sequence_number) > seq_key(prev));
        }
        positions.apply(b);
    }
    assert_eq!(positions.len(), shards_used.len());
    per_key_order(&batches);
    assert_eq!(src.metrics.records.get(), 120);
    assert_eq!(src.metrics.open_shards.get(), 4);
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_records_arrive_deaggregated() {
    let (_scratch, k) = start_kinesalite("aggregated_records_arrive_deaggregated");
    k.create_stream("agg", 1).await;
    let client = k.client();
    let mut expected = Vec::new();
    for batch in 0..3 {
        let datas: Vec<String> = (0..5).map(|i| format!("k{i}:{batch}")).collect();
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let subs: Vec<(&str, Option<&str>, &[u8])> = keys
            .iter()
            .zip(&datas)
            .map(|(k, d)| (k.as_str(), None, d.as_bytes()))
            .collect();
        let (_, seq) = put(&client, "agg", "outer-key", &kpl::aggregate(&subs)).await;
        for (i, (k, d)) in keys.iter().zip(&datas).enumerate() {
            expected.push((seq.clone(), i as u32, k.clone(), d.clone()));
        }
    }
    let (_, seq) = put(&client, "agg", "plain", b"plain:0").await;
    expected.push((seq, 0, "plain".into(), "plain:0".into()));

    let mut src = run_source(source_config(&k, "agg"), ShardPositions::new()).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "16 user records", |b| {
        records(b).count() >= 16
    })
    .await;
    let got: Vec<(String, u32, String, String)> = records(&batches)
        .map(|(_, r)| {
            (
                r.sequence_number.clone(),
                r.sub_sequence,
                r.partition_key.clone(),
                String::from_utf8(r.data.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // A checkpoint never falls inside an aggregated record.
    for b in &batches {
        let last = b.records.last().unwrap();
        assert_eq!(
            b.position,
            ShardPosition::After(last.sequence_number.clone())
        );
    }
    assert_eq!(src.metrics.kinesis_records.get(), 4);
    assert_eq!(src.metrics.records.get(), 16);
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kpl_record_of_zero_user_records_is_dead_lettered_and_the_shard_reads_on() {
    let (_scratch, k) = start_kinesalite(
        "a_kpl_record_of_zero_user_records_is_dead_lettered_and_the_shard_reads_on",
    );
    k.create_stream("poison", 1).await;
    let client = k.client();
    // Magic + MD5 of an empty body: de-aggregates to nothing.
    let (_, poisoned_seq) = put(&client, "poison", "bad", &kpl::frame(&[])).await;
    let (_, good_seq) = put(&client, "poison", "k0", b"k0:1").await;

    let mut cfg = source_config(&k, "poison");
    // A page of the poisoned record alone: the case that stopped the shard.
    cfg.max_records = 1;
    let mut src = run_source(cfg, ShardPositions::new()).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "the good point after the poisoned one", |b| {
        records(b).count() >= 1
    })
    .await;
    assert_eq!(datas(&batches), vec!["k0:1".to_string()]);
    let poisoned: Vec<_> = batches.iter().flat_map(|b| &b.poisoned).collect();
    assert_eq!(poisoned.len(), 1, "{poisoned:?}");
    assert_eq!(poisoned[0].record.sequence_number, poisoned_seq);
    assert_eq!(poisoned[0].record.data, kpl::frame(&[]));
    assert_eq!(poisoned[0].record.partition_key, "bad");
    // The position moved past both: a restart reads neither again.
    assert_eq!(
        batches.last().unwrap().position,
        ShardPosition::After(good_seq)
    );
    assert_eq!(src.metrics.poisoned_records.get(), 1);
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_keep_per_key_order() {
    let (_scratch, k) = start_kinesalite("split_and_merge_keep_per_key_order");
    k.create_stream("reshard", 1).await;
    let client = k.client();
    let mut all = put_numbered(&client, "reshard", 8, 0, 10).await;

    let mut cfg = source_config(&k, "reshard");
    cfg.max_records = 5; // the parent takes a while to drain
    let mut src = run_source(cfg, ShardPositions::new()).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "the first parent batch", |b| !b.is_empty())
        .await;
    assert!(records(&batches).count() < 80, "split happens mid-read");

    // Split shard 0 in the middle of the hash range: children 1 and 2.
    client
        .split_shard()
        .stream_name("reshard")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap_or_else(|e| panic!("SplitShard: {e:?}\n{}", k.log_tail(20)));
    wait_active(&k, "reshard").await;
    all.extend(put_numbered(&client, "reshard", 8, 10, 10).await);

    // Merge the children back: shard 3 with parents 1 and 2.
    client
        .merge_shards()
        .stream_name("reshard")
        .shard_to_merge("shardId-000000000001")
        .adjacent_shard_to_merge("shardId-000000000002")
        .send()
        .await
        .unwrap_or_else(|e| panic!("MergeShards: {e:?}\n{}", k.log_tail(20)));
    wait_active(&k, "reshard").await;
    all.extend(put_numbered(&client, "reshard", 8, 20, 10).await);

    src.until(&mut batches, "240 records", |b| records(b).count() >= 240)
        .await;
    let got = datas(&batches);
    assert_eq!(got.len(), 240);
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        all.iter().collect::<BTreeSet<_>>()
    );
    let order = per_key_order(&batches);
    assert!(order.values().all(|v| *v == (0..30).collect::<Vec<_>>()));

    // Lineage: a parent's Finished batch comes before any batch of its children.
    let index_of_finished = |shard: &str| {
        batches
            .iter()
            .position(|b| b.shard_id == shard && b.position == ShardPosition::Finished)
            .unwrap_or_else(|| panic!("{shard} never finished"))
    };
    let first_batch_of = |shard: &str| batches.iter().position(|b| b.shard_id == shard);
    let p0 = index_of_finished("shardId-000000000000");
    let (p1, p2) = (
        index_of_finished("shardId-000000000001"),
        index_of_finished("shardId-000000000002"),
    );
    for child in ["shardId-000000000001", "shardId-000000000002"] {
        assert!(
            first_batch_of(child).unwrap() > p0,
            "{child} before its parent"
        );
    }
    assert!(first_batch_of("shardId-000000000003").unwrap() > p1.max(p2));
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_positions_loses_and_repeats_nothing() {
    let (_scratch, k) = start_kinesalite("restart_from_positions_loses_and_repeats_nothing");
    k.create_stream("restart", 2).await;
    let client = k.client();
    let mut all = put_numbered(&client, "restart", 6, 0, 15).await;

    let mut cfg = source_config(&k, "restart");
    cfg.max_records = 4;
    let mut src = run_source(cfg.clone(), ShardPositions::new()).await;
    let mut first = Vec::new();
    src.until(&mut first, "some records", |b| records(b).count() >= 30)
        .await;
    // Only what the engine received counts; batches still in the channel are lost with it.
    src.stop().await;
    let mut positions = ShardPositions::new();
    for b in &first {
        positions.apply(b);
    }
    let json = serde_json::to_string(&positions).unwrap();
    let positions: ShardPositions = serde_json::from_str(&json).unwrap();

    all.extend(put_numbered(&client, "restart", 6, 15, 5).await);
    let mut src = run_source(cfg, positions).await;
    let mut second = Vec::new();
    let want: BTreeSet<String> = all.iter().cloned().collect();
    let seen_first: BTreeSet<String> = datas(&first).into_iter().collect();
    src.until(&mut second, "the rest", |b| {
        let mut seen = seen_first.clone();
        seen.extend(datas(b));
        seen == want
    })
    .await;
    let mut every = datas(&first);
    every.extend(datas(&second));
    assert_eq!(every.len(), all.len(), "no record repeated");
    let mut both = first.clone();
    both.extend(second);
    let order = per_key_order(&both);
    assert!(order.values().all(|v| *v == (0..20).collect::<Vec<_>>()));
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_after_existing_records() {
    let (_scratch, k) = start_kinesalite("latest_starts_after_existing_records");
    k.create_stream("latest", 1).await;
    let client = k.client();
    put_numbered(&client, "latest", 4, 0, 5).await;
    // A closed parent and two open children, all holding old records.
    client
        .split_shard()
        .stream_name("latest")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await
        .unwrap_or_else(|e| panic!("SplitShard: {e:?}\n{}", k.log_tail(20)));
    wait_active(&k, "latest").await;
    put_numbered(&client, "latest", 4, 5, 5).await;

    let mut cfg = source_config(&k, "latest");
    cfg.start = StartPosition::Latest;
    let mut src = run_source(cfg, ShardPositions::new()).await;
    // Both children hold a LATEST iterator before new records go in.
    let deadline = Instant::now() + DEADLINE;
    while src.metrics.open_shards.get() < 2 {
        assert!(Instant::now() < deadline, "shards not opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = put_numbered(&client, "latest", 4, 10, 3).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "the new records", |b| {
        records(b).count() >= new.len()
    })
    .await;
    let got: BTreeSet<String> = datas(&batches).into_iter().collect();
    assert_eq!(got, new.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(records(&batches).count(), 12);
    // The closed parent is not read, but reported finished (its children depend on it).
    assert_eq!(batches[0].shard_id, "shardId-000000000000");
    assert_eq!(batches[0].position, ShardPosition::Finished);
    assert!(batches[0].records.is_empty());
    assert!(batches[1..]
        .iter()
        .all(|b| b.shard_id != "shardId-000000000000"));
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_stream_that_does_not_exist_yet() {
    let (_scratch, k) = start_kinesalite("waits_for_a_stream_that_does_not_exist_yet");
    let mut src = run_source(source_config(&k, "later"), ShardPositions::new()).await;
    let not_found = || {
        let mut reg = prometheus_client::registry::Registry::default();
        src.metrics.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        text
    };
    let deadline = Instant::now() + DEADLINE;
    while !not_found().contains(
        r#"linewatch_rules_kinesis_errors_total{operation="ListShards",kind="not_found"}"#,
    ) {
        assert!(
            Instant::now() < deadline,
            "no not_found error counted:\n{}",
            not_found()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!src.task.is_finished(), "the source keeps going");
    k.create_stream("later", 1).await;
    let data = put_numbered(&k.client(), "later", 3, 0, 2).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "records after the stream appeared", |b| {
        records(b).count() >= data.len()
    })
    .await;
    assert_eq!(datas(&batches).len(), 6);
    src.stop().await;
}

// ---------------------------------------------------------------------------------------
// Throttling and iterator expiry: kinesalite never throttles, so a small HTTP server on
// 127.0.0.1 answers the Kinesis JSON protocol with a scripted sequence of replies.

#[derive(Default)]
struct Script {
    get_records_calls: usize,
    /// `(type, starting sequence number)` of every GetShardIterator request.
    iterator_requests: Vec<(String, Option<String>)>,
}

async fn scripted_kinesis(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let ok = |b: serde_json::Value| {
        (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            b.to_string(),
        )
    };
    let err = |t: &str| {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            serde_json::json!({"__type": t, "message": "scripted"}).to_string(),
        )
    };
    let mut s = script.lock().unwrap();
    match target.as_str() {
        "Kinesis_20131202.ListShards" => ok(serde_json::json!({"Shards": [{
            "ShardId": "shardId-000000000000",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "340282366920938463463374607431768211455"},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"}
        }]})),
        "Kinesis_20131202.GetShardIterator" => {
            s.iterator_requests.push((
                req["ShardIteratorType"].as_str().unwrap_or("").to_owned(),
                req["StartingSequenceNumber"].as_str().map(str::to_owned),
            ));
            ok(serde_json::json!({"ShardIterator": format!("it-{}", s.iterator_requests.len())}))
        }
        "Kinesis_20131202.GetRecords" => {
            s.get_records_calls += 1;
            let record = |seq: &str, data: &str| {
                serde_json::json!({
                    "SequenceNumber": seq, "PartitionKey": "k", "Data": data,
                    "ApproximateArrivalTimestamp": 1_700_000_000.5
                })
            };
            let page = |records: Vec<serde_json::Value>| {
                serde_json::json!({
                    "Records": records, "NextShardIterator": "it-next", "MillisBehindLatest": 0
                })
            };
            match s.get_records_calls {
                1 => ok(page(vec![record("5", "cmVjLTU=")])),
                2 => err("ProvisionedThroughputExceededException"),
                3 => err("LimitExceededException"),
                4 => err("ExpiredIteratorException"),
                5 => ok(page(vec![record("6", "cmVjLTY=")])),
                _ => ok(page(vec![])),
            }
        }
        other => err(&format!("UnknownOperation {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_expired_iterators_are_retried() {
    let script = Arc::new(Mutex::new(Script::default()));
    let app = Router::new()
        .route("/", post(scripted_kinesis))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The deprecated key (the rule engine's old `endpoint`) still reaches the endpoint.
    let mut cfg: KinesisSourceConfig = toml::from_str(&format!(
        r#"stream = "scripted"
           region = "{REGION}"
           endpoint = "http://{addr}"
           access_key_id = "{KEY_ID}"
           secret_access_key = "{SECRET}""#
    ))
    .unwrap();
    assert_eq!(cfg.aws.warnings("kinesis").len(), 1);
    cfg.poll_interval = Duration::from_millis(200);
    let mut src = run_source(cfg, ShardPositions::new()).await;
    let mut batches = Vec::new();
    src.until(&mut batches, "both records", |b| records(b).count() >= 2)
        .await;
    assert_eq!(datas(&batches), ["rec-5", "rec-6"]);
    assert_eq!(batches[0].records[0].arrival_ms, Some(1_700_000_000_500));
    assert_eq!(batches[1].position, ShardPosition::After("6".into()));
    {
        let s = script.lock().unwrap();
        // The expired iterator is replaced by one after the last delivered record.
        assert_eq!(
            s.iterator_requests,
            [
                ("TRIM_HORIZON".to_owned(), None),
                ("AFTER_SEQUENCE_NUMBER".to_owned(), Some("5".to_owned())),
            ]
        );
    }
    let m = &src.metrics;
    let errors = |kind: &str| {
        m.errors
            .get_or_create(&ErrorLabels {
                operation: "GetRecords".into(),
                kind: kind.into(),
            })
            .get()
    };
    assert_eq!(errors("throttled"), 2);
    assert_eq!(errors("expired_iterator"), 1);
    assert_eq!(
        m.throttles
            .get_or_create(&OperationLabel {
                operation: "GetRecords".into()
            })
            .get(),
        2
    );
    src.stop().await;
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A checkpoint whose positions belong to another stream (a second kinesalite, as after a
/// stream was deleted and recreated): the stream rejects them. `restart` reads the shard
/// again from `kinesis.start` and says so; `fail` leaves it unread; both report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_position_the_stream_rejects_is_reported_and_handled_by_policy() {
    use linewatch_rules::source::config::InvalidPositionPolicy;
    let (_s1, old) = start_kinesalite("rejected_position_old");
    let created = unix_secs();
    old.create_stream("points", 1).await;
    let (shard, seq) = put(&old.client(), "points", "k", b"old").await;
    let mut positions = ShardPositions::new();
    positions.set(shard.clone(), ShardPosition::After(seq));
    drop(old);
    // kinesalite encodes the shard's creation second in its sequence numbers: a stream
    // created in the same second would take the old position as its own.
    let deadline = Instant::now() + DEADLINE;
    while unix_secs() < created + 2 {
        assert!(Instant::now() < deadline, "the clock does not advance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for policy in [InvalidPositionPolicy::Restart, InvalidPositionPolicy::Fail] {
        let (_s2, k) = start_kinesalite("rejected_position_new");
        k.create_stream("points", 1).await;
        put(&k.client(), "points", "k", b"new-1").await;
        put(&k.client(), "points", "k", b"new-2").await;
        let mut cfg = source_config(&k, "points");
        cfg.start = StartPosition::TrimHorizon;
        cfg.on_invalid_position = policy;
        let metrics = SourceMetrics::new();
        let source = KinesisSource::new(&cfg, metrics.clone()).await.unwrap();
        let problems = source.problems();
        let (tx, mut rx) = mpsc::channel(4);
        let stop = linewatch_runtime::shutdown::CancellationToken::new();
        let task = tokio::spawn(source.run(
            positions.clone(),
            tx,
            stop.clone(),
            fastrand::Rng::with_seed(3),
        ));
        let deadline = Instant::now() + DEADLINE;
        while problems.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{policy:?}: no problem reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reported: Vec<String> = problems.lock().unwrap().iter().cloned().collect();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            reported[0].contains(&shard),
            "names the shard: {reported:?}"
        );
        assert_eq!(metrics.invalid_positions.get(), 1);
        match policy {
            InvalidPositionPolicy::Restart => {
                assert!(reported[0].contains("restarted from kinesis.start"));
                let mut got = Vec::new();
                while datas(&got).len() < 2 {
                    let b = tokio::time::timeout_at(deadline.into(), rx.recv())
                        .await
                        .expect("the restarted shard delivers")
                        .expect("source runs");
                    got.push(b);
                }
                assert_eq!(datas(&got), vec!["new-1".to_owned(), "new-2".to_owned()]);
            }
            InvalidPositionPolicy::Fail => {
                assert!(reported[0].contains("on_invalid_position"));
                // The shard is not read: nothing arrives within a few polls.
                let r = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
                assert!(r.is_err(), "nothing read from a rejected shard: {r:?}");
            }
        }
        stop.cancel();
        drop(rx);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
