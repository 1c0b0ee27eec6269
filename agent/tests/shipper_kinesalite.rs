//! The shipper against a real Kinesis-compatible server (kinesalite from npm), started
//! by the test kit on 127.0.0.1 and a free port.
//!
//! kinesalite is installed in `tests/peers/node_modules` by `scripts/install-peers.sh`.
//! Without it the test is skipped with a message, unless `CI` is set, where it fails.

use linewatch_agent::buffer::StoredRecord;
use linewatch_agent::config::KinesisConfig;
use linewatch_agent::ship::testing::FakeStore;
use linewatch_agent::ship::{run_shipper, DeadLetter, KinesisClient, ShipperOptions};
use linewatch_agent::telemetry::metrics::Metrics;
use linewatch_runtime::clock::SystemClock;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_testkit::kinesis::{self, KinesisPeer};
use linewatch_testkit::paths;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::wait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// kinesalite from the test kit, or `None` (skipped) when it is not installed and CI is not set.
fn start_kinesalite(dir: &std::path::Path) -> Option<Kinesalite> {
    let installed = paths::peers_dir().join("node_modules/kinesalite").is_dir();
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "kinesalite is not installed (run scripts/install-peers.sh) and CI is set"
        );
        eprintln!("SKIPPED: kinesalite not found (run scripts/install-peers.sh)");
        return None;
    }
    Some(Kinesalite::start(KinesaliteOptions::default(), dir))
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait::until(what, timeout, async || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_to_kinesalite_in_order_per_key_with_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = start_kinesalite(dir.path()) else {
        return;
    };
    let stream = "linewatch-ship-test";
    let cfg: KinesisConfig = toml::from_str(&format!(
        r#"stream = "{stream}"
           region = "{}"
           endpoint_url = "{}"
           access_key_id = "AKIDLOCAL"
           secret_access_key = "local"
           linger = "50ms"
           backoff_initial = "20ms"
           backoff_max = "200ms"
           request_timeout = "5s""#,
        kinesis::REGION,
        server.endpoint()
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

    server.create_stream(stream, 2).await;

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
    let records = server.read_all(stream).await;
    let total = records.len();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.data).expect("JSON data");
        assert_eq!(v["equipmentId"].as_str(), Some(r.partition_key.as_str()));
        per_key
            .entry(r.partition_key.clone())
            .or_default()
            .push(v["id"].as_u64().unwrap());
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
