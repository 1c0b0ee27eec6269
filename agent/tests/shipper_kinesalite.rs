//! The shipper against a real Kinesis-compatible server (kinesalite from npm), started
//! here on 127.0.0.1 and a free port.
//!
//! kinesalite is looked up in `$KINESALITE_NODE_MODULES`, `tests/peers/node_modules`
//! (where `scripts/install-peers.sh` puts it) and `/tmp/kl/node_modules`. Without it the
//! test is skipped with a message, unless `CI` is set, where it fails.

use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use linewatch_agent::buffer::StoredRecord;
use linewatch_agent::clock::SystemClock;
use linewatch_agent::config::KinesisConfig;
use linewatch_agent::ship::testing::FakeStore;
use linewatch_agent::ship::{run_shipper, DeadLetter, KinesisClient, ShipperOptions};
use linewatch_agent::telemetry::metrics::Metrics;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn kinesalite_modules() -> Option<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var_os("KINESALITE_NODE_MODULES").map(PathBuf::from),
        Some(workspace.join("tests/peers/node_modules")),
        Some(PathBuf::from("/tmp/kl/node_modules")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("kinesalite").is_dir())
}

/// A kinesalite process, killed on drop.
struct Kinesalite {
    child: Child,
    port: u16,
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_kinesalite() -> Option<Kinesalite> {
    let Some(modules) = kinesalite_modules() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kinesalite is not installed (run scripts/install-peers.sh) and CI is set"
        );
        eprintln!("SKIPPED: kinesalite not found (run scripts/install-peers.sh or set KINESALITE_NODE_MODULES)");
        return None;
    };
    // Port 0: the OS picks a free port; the script prints it once listening.
    let script = format!(
        "const k = require({:?}); \
         const s = k({{createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100}}); \
         s.listen(0, '127.0.0.1', function () {{ console.log(s.address().port); }});",
        modules.join("kinesalite").display().to_string()
    );
    let mut child = Command::new("node")
        .arg("-e")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("kinesalite listens within 20 s");
    let port = line.trim().parse().expect("kinesalite prints its port");
    Some(Kinesalite { child, port })
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_to_kinesalite_in_order_per_key_with_dead_letters() {
    let Some(server) = start_kinesalite() else {
        return;
    };
    let stream = "linewatch-ship-test";
    let cfg: KinesisConfig = toml::from_str(&format!(
        r#"stream = "{stream}"
           region = "us-east-1"
           endpoint_url = "http://127.0.0.1:{}"
           access_key_id = "AKIDLOCAL"
           secret_access_key = "local"
           linger = "50ms"
           backoff_initial = "20ms"
           backoff_max = "200ms"
           request_timeout = "5s""#,
        server.port
    ))
    .unwrap();
    let client = KinesisClient::from_config(&cfg).await.expect("client");

    // 3 equipments × 700 points, plus one record over the 1 MiB limit.
    let keys = ["eq-a", "eq-b", "eq-c"];
    let store = FakeStore::new();
    let mut oversize_id = 0;
    store.insert((1..=2101u64).map(|id| {
        let key = keys[(id % 3) as usize];
        let data = if id == 1000 {
            oversize_id = id;
            vec![b'x'; 1024 * 1024]
        } else {
            format!("{{\"id\":{id},\"equipmentId\":\"{key}\"}}").into_bytes()
        };
        StoredRecord {
            id,
            created_at: 1,
            partition_key: key.into(),
            data,
        }
    }));

    let dir = tempfile::tempdir().unwrap();
    let dead_path = dir.path().join("dead-letter.ndjson");
    let metrics = Metrics::default();
    let shutdown = CancellationToken::new();
    // The stream does not exist yet: calls fail as a whole (ResourceNotFound), nothing is removed.
    let opts = ShipperOptions {
        cfg: cfg.clone(),
        dead_letter: DeadLetter::new(dead_path.clone(), metrics.clone()),
        clock: Arc::new(SystemClock),
        metrics: metrics.clone(),
        rng: fastrand::Rng::with_seed(1),
    };
    let task = tokio::spawn(run_shipper(
        Arc::clone(&store),
        client.clone(),
        opts,
        shutdown.clone(),
    ));
    wait_for("a failed call", Duration::from_secs(20), || {
        metrics.put_records_errors.get() >= 2
    })
    .await;
    assert_eq!(metrics.records_shipped.get(), 0);
    // Nothing left the buffer (except, perhaps, the oversize record, to the dead-letter file).
    assert!(store.len() >= 2100);

    let sdk = client.sdk();
    sdk.create_stream()
        .stream_name(stream)
        .shard_count(2)
        .send()
        .await
        .expect("create stream");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = sdk
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe");
        if s.stream_description_summary().map(|d| d.stream_status()) == Some(&StreamStatus::Active)
        {
            break;
        }
        assert!(Instant::now() < deadline, "stream never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    wait_for("the buffer to drain", Duration::from_secs(60), || {
        store.is_empty()
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("shipper stops")
        .unwrap();
    assert_eq!(metrics.records_shipped.get(), 2100);

    // Read everything back, shard by shard (records of one key share a shard, in order).
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut total = 0;
    let shards = sdk
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("list shards");
    for shard in shards.shards() {
        let mut iterator = sdk
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator()
            .map(str::to_owned);
        while let Some(it) = iterator {
            let out = sdk
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .expect("get records");
            if out.records().is_empty() {
                break;
            }
            for r in out.records() {
                let v: serde_json::Value =
                    serde_json::from_slice(r.data().as_ref()).expect("JSON data");
                let key = r.partition_key().expect("partition key");
                assert_eq!(v["equipmentId"].as_str(), Some(key));
                per_key
                    .entry(key.to_owned())
                    .or_default()
                    .push(v["id"].as_u64().unwrap());
                total += 1;
            }
            iterator = out.next_shard_iterator().map(str::to_owned);
        }
    }
    assert_eq!(
        total, 2100,
        "every record once (no call had an unknown outcome)"
    );
    for key in keys {
        let ids = &per_key[key];
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, &sorted, "{key} in id order");
        // 2101 ids spread over 3 keys, minus the oversize one: 700 each.
        assert_eq!(ids.len(), 700);
    }

    let dead = std::fs::read_to_string(&dead_path).expect("dead-letter file");
    let line: serde_json::Value = serde_json::from_str(dead.trim_end()).unwrap();
    assert_eq!(line["id"].as_u64(), Some(oversize_id));
    assert_eq!(line["reason"], "oversize");
}
