//! How well the shipper fills a Kinesis shard: the real shipper task (queue, KPL
//! aggregation, pacing, backoff) over an in-memory buffer, against a Kinesis that
//! accepts everything at once, in real time. The shard's limits are the pacer's
//! (1,000 records/s and 1 MiB/s): what is measured is how close the shipper runs to
//! them, what a record carries and how many calls it makes.
//!
//! `cargo bench -p linewatch-agent --bench ship_shard`
//!
//! 1. Backlog drain into one shard, aggregation `kpl` vs `none`: points/s, records/s,
//!    points per record, bytes/s as a share of 1 MiB/s, bytes per point.
//! 2. A live gateway, 10,000 tags at 1 Hz for 10 s: PutRecords calls/s and what a
//!    call carries, unpaced and paced to 4 shards.

use linewatch_agent::ship::testing::FakeStore;
use linewatch_agent::ship::{
    run_shipper, CallOutcome, DeadLetter, KinesisConfig, PutRecordsApi, RecordResult, RequestEntry,
    ShipperOptions,
};
use linewatch_agent::telemetry::metrics::Metrics;
use linewatch_runtime::clock::SystemClock;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_schemas::{DataPoint, Flags, Meta, Quality, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EQUIPMENTS: usize = 100;
const MIB: f64 = 1_048_576.0;

/// One call as Kinesis would count it.
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    records: usize,
    points: usize,
    /// Data + partition keys (what the shard's 1 MiB/s counts).
    bytes: usize,
    /// The awsJson1.1 body: base64 data, keys, JSON punctuation.
    wire: usize,
}

#[derive(Clone, Default)]
struct CountingKinesis {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl PutRecordsApi for CountingKinesis {
    fn stream(&self) -> &str {
        "bench"
    }

    async fn put_records(&self, entries: &[RequestEntry]) -> CallOutcome {
        let call = Call {
            at: Instant::now(),
            records: entries.len(),
            points: entries.iter().map(|e| e.record_ids().len()).sum(),
            bytes: entries.iter().map(RequestEntry::size).sum(),
            wire: entries
                .iter()
                .map(|e| e.data().len().div_ceil(3) * 4 + e.partition_key().len() + 32)
                .sum::<usize>()
                + 40,
        };
        self.calls.lock().expect("calls").push(call);
        CallOutcome::Records(vec![RecordResult::Accepted; entries.len()])
    }

    async fn open_shards(&self) -> Result<u32, String> {
        Err("set shards in the bench's config".into())
    }
}

fn point(i: usize) -> (String, Vec<u8>) {
    let equipment = format!("84068f2f-3f39-4b9c-a995-{:012x}", i % EQUIPMENTS);
    let p = DataPoint {
        version: 1,
        timestamp: 1_732_180_000_000 + i as u64,
        equipment_id: equipment.clone(),
        tag: format!("tag_{}", i % 100),
        value: Value::Float(13.45 + (i % 100) as f64 / 10.0),
        quality: Quality::Ok,
        meta: Meta {
            sequence_number: i as u64,
            flags: Flags::default(),
            created_at: 1_732_180_000_150 + i as u64,
            source_id: "filling_machine".into(),
            gateway_id: Some("gw-line-7".into()),
            raw_quality: None,
            low_watermark: None,
        },
    };
    (equipment, p.to_json())
}

fn config(aggregation: &str, shards: &str) -> KinesisConfig {
    toml::from_str(&format!(
        "stream = \"bench\"\naggregation = \"{aggregation}\"\nshards = {shards}"
    ))
    .expect("bench config")
}

/// Runs the shipper over `store` until `done` says so; returns its calls.
async fn ship(
    store: Arc<FakeStore>,
    cfg: KinesisConfig,
    feed: impl std::future::Future<Output = ()>,
    total: usize,
) -> Vec<Call> {
    let kinesis = CountingKinesis::default();
    let metrics = Metrics::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_shipper(
        Arc::clone(&store),
        kinesis.clone(),
        ShipperOptions {
            cfg,
            dead_letter: DeadLetter::new(dir.path().join("dl.ndjson"), metrics.clone()),
            clock: Arc::new(SystemClock),
            metrics,
            rng: fastrand::Rng::with_seed(1),
        },
        shutdown.clone(),
    ));
    feed.await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let shipped: usize = kinesis
            .calls
            .lock()
            .expect("calls")
            .iter()
            .map(|c| c.points)
            .sum();
        if shipped >= total {
            break;
        }
        assert!(Instant::now() < deadline, "shipped {shipped} of {total}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await.expect("shipper");
    let calls = kinesis.calls.lock().expect("calls").clone();
    calls
}

fn append(store: &FakeStore, from: usize, n: usize) {
    let pts: Vec<(String, Vec<u8>)> = (from..from + n).map(point).collect();
    let items: Vec<(&str, Vec<u8>)> = pts.iter().map(|(k, d)| (k.as_str(), d.clone())).collect();
    store.append(&items);
}

struct Totals {
    secs: f64,
    calls: usize,
    records: usize,
    points: usize,
    bytes: usize,
    wire: usize,
}

fn totals(calls: &[Call], skip_first: bool) -> Totals {
    // The first call spends the full bucket at once; a drain's rate is what follows.
    let start = calls.first().map(|c| c.at).expect("calls");
    let end = calls.last().map(|c| c.at).expect("calls");
    let counted = if skip_first { &calls[1..] } else { calls };
    Totals {
        secs: (end - start).as_secs_f64(),
        calls: calls.len(),
        records: counted.iter().map(|c| c.records).sum(),
        points: counted.iter().map(|c| c.points).sum(),
        bytes: counted.iter().map(|c| c.bytes).sum(),
        wire: counted.iter().map(|c| c.wire).sum(),
    }
}

async fn drain(aggregation: &str, points: usize) {
    let store = FakeStore::new();
    append(&store, 0, points);
    let calls = ship(store, config(aggregation, "1"), async {}, points).await;
    let t = totals(&calls, true);
    println!(
        "ship-shard drain aggregation={aggregation:<4}: {:>7.0} points/s into one shard, {:>5.0} records/s, \
         {:>6.1} points/record, {:.3} MiB/s = {:>5.1} % of the shard's 1 MiB/s, {:.0} B/point counted, {:.0} B/point on the wire \
         ({} points, {} calls, {:.1} s)",
        t.points as f64 / t.secs,
        t.records as f64 / t.secs,
        t.points as f64 / t.records as f64,
        t.bytes as f64 / t.secs / MIB,
        100.0 * t.bytes as f64 / t.secs / MIB,
        t.bytes as f64 / t.points as f64,
        t.wire as f64 / t.points as f64,
        points,
        t.calls,
        t.secs,
    );
}

async fn live(shards: &str, tags: usize, seconds: usize) {
    let store = FakeStore::new();
    let feeder = Arc::clone(&store);
    let feed = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for s in 0..seconds {
            tick.tick().await;
            append(&feeder, s * tags, tags);
        }
    };
    let calls = ship(store, config("kpl", shards), feed, tags * seconds).await;
    let t = totals(&calls, false);
    println!(
        "ship-shard live {tags} tags at 1 Hz, shards={shards:<5}: {:.1} PutRecords calls/s, {:.0} points/call, \
         {:.1} records/call, {:.2} MiB/s, {:.0} B/point on the wire ({} calls in {:.1} s)",
        t.calls as f64 / t.secs.max(1.0),
        t.points as f64 / t.calls as f64,
        t.records as f64 / t.calls as f64,
        t.bytes as f64 / t.secs.max(1.0) / MIB,
        t.wire as f64 / t.points as f64,
        t.calls,
        t.secs,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        drain("none", 12_000).await;
        drain("kpl", 60_000).await;
        live("\"off\"", 10_000, 10).await;
        live("4", 10_000, 10).await;
    });
}
