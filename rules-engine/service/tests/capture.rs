//! `linewatch-rules capture` against a real kinesalite on 127.0.0.1: what was put (plain
//! records and a KPL aggregate) is what the file holds, and `replay` of the captured file
//! gives the transitions a replay of the points themselves gives.
//!
//! Needs `tests/peers/node_modules` (`bash scripts/install-peers.sh`).

#[path = "../../core/tests/common/mod.rs"]
mod common;
use aws_sdk_kinesis::primitives::Blob;
use common::point_json;
use linewatch_schemas::kpl;
use linewatch_testkit::kinesis::{self, KinesisPeer};
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::Scratch;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const STREAM: &str = "capture-points";
const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linewatch-rules"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules")
}

fn config(dir: &Path, k: &Kinesalite) -> std::path::PathBuf {
    let path = dir.join("service.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[kinesis]\nstream = \"{STREAM}\"\nregion = \"{}\"\nendpoint_url = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npoll_interval = \"200ms\"\nshard_discovery_interval = \"1s\"\n[mqtt]\n[mqtt.auth]\naccept_unsigned = true\n",
            dir.join("state").display(),
            kinesis::REGION,
            k.endpoint(),
            kinesis::ACCESS_KEY_ID,
            kinesis::SECRET_ACCESS_KEY,
        ),
    )
    .expect("write config");
    path
}

/// The Krones scenario: ACTIVE at t0, WARNING once hot and pressurised for 5 minutes,
/// plus points of another machine (another partition key, likely another shard).
fn points() -> Vec<String> {
    let t0 = 1_732_180_000_000u64;
    let mut p = vec![
        point_json("gw", "filler", FILLER, "machine_state", t0, "\"RUNNING\""),
        point_json("gw", "filler", FILLER, "product", t0, "\"1L\""),
        point_json(
            "gw",
            "filler",
            FILLER,
            "water_temperature",
            t0 + 1_000,
            "85.0",
        ),
    ];
    for i in 0..40u64 {
        p.push(point_json(
            "gw",
            "filler",
            FILLER,
            "pressure",
            t0 + 2_000 + i * 10_000,
            "3.0",
        ));
        p.push(point_json(
            "gw",
            "labeller",
            "labeller-1",
            "speed",
            t0 + 2_000 + i * 10_000,
            "12",
        ));
    }
    p
}

fn replay(input: &Path) -> Output {
    bin()
        .arg("replay")
        .arg("--rules")
        .arg(examples())
        .arg("--input")
        .arg(input)
        .args(["--max-out-of-orderness", "1h"])
        .output()
        .expect("replay runs")
}

fn transitions(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_writes_what_was_put_and_replay_agrees() {
    let scratch = Scratch::new("capture");
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 2).await;
    let client = k.client();
    let all = points();
    // Three filler points (all[3], all[5], all[7]) in one KPL aggregate under the filler's
    // key; the rest one record each, in order per partition key (the equipment id, as the
    // agent sends them).
    let plain_head = &all[..3];
    let aggregated = [&all[3], &all[5], &all[7]];
    let plain_tail: Vec<&String> = all[3..]
        .iter()
        .enumerate()
        .filter(|(i, _)| ![0, 2, 4].contains(i))
        .map(|(_, p)| p)
        .collect();
    let put = |key: String, data: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .put_record()
                .stream_name(STREAM)
                .partition_key(key)
                .data(Blob::new(data))
                .send()
                .await
                .unwrap_or_else(|e| panic!("PutRecord: {e:?}"));
        }
    };
    let key_of = |p: &str| {
        let v: serde_json::Value = serde_json::from_str(p).expect("json");
        v["equipmentId"].as_str().unwrap_or_default().to_owned()
    };
    for p in plain_head {
        put(key_of(p), p.as_bytes().to_vec()).await;
    }
    let agg: Vec<(&str, Option<&str>, &[u8])> = aggregated
        .iter()
        .map(|p| (FILLER, None, p.as_bytes()))
        .collect();
    put(FILLER.to_owned(), kpl::aggregate(&agg)).await;
    for p in plain_tail {
        put(key_of(p.as_str()), p.as_bytes().to_vec()).await;
    }

    let cfg = config(scratch.path(), &k);
    let captured = scratch.path().join("captured.ndjson");
    let mut child = bin()
        .arg("capture")
        .arg("--config")
        .arg(&cfg)
        .args(["--until", "now", "--progress-every", "200ms", "--output"])
        .arg(&captured)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("capture starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "capture --until now must end once the stream is read\n{}",
            k.log_tail(20)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("capture: "), "progress on stderr: {stderr}");
    assert!(
        stderr.contains(&format!("done: {} points", all.len())),
        "{stderr}"
    );

    // The same points, each once, in the order put per partition key.
    let lines: Vec<String> = std::fs::read_to_string(&captured)
        .expect("captured file")
        .lines()
        .map(str::to_owned)
        .collect();
    let per_key = |ps: &[String]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in ps {
            m.entry(key_of(p)).or_default().push(p.clone());
        }
        m
    };
    assert_eq!(per_key(&lines), per_key(&all));

    // replay of the capture = replay of the points.
    let direct = scratch.path().join("direct.ndjson");
    let mut f = std::fs::File::create(&direct).expect("create");
    for p in &all {
        writeln!(f, "{p}").expect("write");
    }
    drop(f);
    let want = transitions(&replay(&direct));
    assert!(
        want.iter().any(|t| t.contains("\"WARNING\"")),
        "the scenario reaches WARNING: {want:?}"
    );
    assert_eq!(transitions(&replay(&captured)), want);
}
