//! The KPL aggregated records the real agent writes (`kinesis.aggregation = "kpl"`, the
//! default), read raw from kinesalite and checked by an implementation nobody here wrote:
//! AWS's `aws-kinesis-agg` (PyPI), through `tests/sim/kpl_decode.py`. Per record: the
//! magic, the MD5 trailer over the protobuf body, a partition key table of exactly the
//! record's own key, every sub-record naming index 0 and no explicit hash key or tags,
//! the library's deaggregator yielding the same user records, and its aggregator
//! re-encoding them to the very same bytes. Across the stream: the user records, in
//! order, are the agent's data points (schema-valid, equipmentId = the record's key,
//! every sequence number once, in order), and equal what the kit's Rust reader unpacks.

mod common;

use common::*;
use linewatch_schemas::kpl::KPL_MAGIC;
use linewatch_testkit::kinesis::{KinesisPeer, RawRecord};
use linewatch_testkit::paths;
use linewatch_testkit::points;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::Duration;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from kpl_decode.py"))
        .collect()
}

/// Runs `tests/sim/kpl_decode.py` on one raw record; its JSON report.
#[track_caller]
fn python_decode(dir: &std::path::Path, r: &RawRecord) -> Json {
    let file = dir.join("record.bin");
    std::fs::write(&file, &r.data).expect("writing the record for the decoder");
    let out = std::process::Command::new(paths::venv_python())
        .arg(paths::sim_dir().join("kpl_decode.py"))
        .arg(&file)
        .arg(&r.partition_key)
        .output()
        .expect("running kpl_decode.py");
    assert!(
        out.status.success(),
        "kpl_decode.py failed on record {} ({}; is aws-kinesis-agg installed? \
         scripts/install-peers.sh):\n{}{}",
        r.sequence_number,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kpl_decode.py prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_records_decode_with_aws_kinesis_agg_byte_for_byte() {
    let (scratch, k, sim) = kinesalite_and_plc("kpl-format", 2).await;
    let mut agent = start_filling_agent(scratch.path(), &k.endpoint(), &sim.address());
    // ~250 points/s over two keys with a 100 ms linger: every call packs many points.
    wait_points(&k, "the agent ships", 600).await;
    let read = agent
        .scrape()
        .sum("linewatch_agent_points_read_total", &[("source", SOURCE)]);
    wait_stream(
        &k,
        "every point read so far",
        Duration::from_secs(30),
        |p| {
            let n = seqs_of(p, SOURCE).len() as f64;
            if n >= read {
                Ok(())
            } else {
                Err(format!("{n} distinct sequence numbers of {read}"))
            }
        },
    )
    .await;
    agent.terminate(Duration::from_secs(20));

    let raw = k.read_all_raw(STREAM).await;
    let unpacked = points::decode(&k.read_all(STREAM).await);
    // The kit's reader (Rust, linewatch_schemas::kpl) groups by Kinesis sequence number.
    let mut rust_subs: BTreeMap<(String, String), Vec<Vec<u8>>> = BTreeMap::new();
    for p in &unpacked {
        rust_subs
            .entry((p.shard_id.clone(), p.kinesis_seq.clone()))
            .or_default()
            .push(p.raw.clone());
    }

    let mut aggregated = 0usize;
    let mut plain = 0usize;
    let mut most_subs = 0usize;
    // Every user record as the independent decoder sees it, in stream order.
    let mut user_records: Vec<linewatch_testkit::kinesis::StreamRecord> = Vec::new();
    for r in &raw {
        let at = format!(
            "record {} in {} (key {})",
            r.sequence_number, r.shard_id, r.partition_key
        );
        if !r.data.starts_with(&KPL_MAGIC) {
            // A call's only point of a key goes plain, as the KPL does: its JSON as is.
            plain += 1;
            user_records.push(linewatch_testkit::kinesis::StreamRecord {
                shard_id: r.shard_id.clone(),
                sequence_number: r.sequence_number.clone(),
                sub_sequence: 0,
                partition_key: r.partition_key.clone(),
                data: r.data.clone(),
            });
            continue;
        }
        aggregated += 1;
        let d = python_decode(scratch.path(), r);
        assert_eq!(d["magic"], "f3899ac2", "{at}: magic");
        assert_eq!(d["magic"], d["library_magic"], "{at}: the library's magic");
        assert_eq!(d["md5_trailer"], d["md5_computed"], "{at}: MD5 trailer");
        assert_eq!(
            d["md5_trailer"].as_str(),
            Some(hex(&r.data[r.data.len() - 16..]).as_str()),
            "{at}: the trailer is the last 16 bytes"
        );
        assert_eq!(
            d["partition_key_table"],
            serde_json::json!([r.partition_key]),
            "{at}: the table holds exactly the record's own key"
        );
        assert_eq!(d["explicit_hash_key_table"], serde_json::json!([]), "{at}");
        let subs = d["records"].as_array().expect("records");
        assert!(
            subs.len() >= 2,
            "{at}: a single point goes plain, not aggregated"
        );
        most_subs = most_subs.max(subs.len());
        let deagg = d["deaggregated"].as_array().expect("deaggregated");
        assert_eq!(deagg.len(), subs.len(), "{at}: the library's deaggregator");
        let mut datas = Vec::new();
        for (i, (s, u)) in subs.iter().zip(deagg).enumerate() {
            assert_eq!(s["partition_key_index"], 0, "{at} sub-record {i}");
            assert_eq!(
                s["explicit_hash_key_index"],
                Json::Null,
                "{at} sub-record {i}"
            );
            assert_eq!(s["tags"], 0, "{at} sub-record {i}");
            assert_eq!(
                u["partition_key"].as_str(),
                Some(r.partition_key.as_str()),
                "{at} #{i}"
            );
            assert_eq!(u["sub_sequence"], i, "{at} #{i}");
            assert_eq!(u["aggregated"], true, "{at} #{i}");
            assert_eq!(u["data_hex"], s["data_hex"], "{at} #{i}");
            let data = unhex(s["data_hex"].as_str().expect("data_hex"));
            user_records.push(linewatch_testkit::kinesis::StreamRecord {
                shard_id: r.shard_id.clone(),
                sequence_number: r.sequence_number.clone(),
                sub_sequence: i as u32,
                partition_key: r.partition_key.clone(),
                data: data.clone(),
            });
            datas.push(data);
        }
        // AWS's own aggregator, given the same user records, writes the same bytes.
        assert_eq!(
            d["reencoded_hex"].as_str(),
            Some(hex(&r.data).as_str()),
            "{at}: aws-kinesis-agg re-encodes the user records to other bytes"
        );
        assert_eq!(
            rust_subs.get(&(r.shard_id.clone(), r.sequence_number.clone())),
            Some(&datas),
            "{at}: the kit's Rust reader unpacks other user records"
        );
    }
    assert!(
        aggregated >= 5 && most_subs >= 10,
        "the agent should aggregate: {aggregated} aggregated records (most {most_subs} points), {plain} plain"
    );

    // The user records are the agent's data points, every one once, in order per key.
    let pts = points::decode(&user_records);
    assert_eq!(
        pts.len(),
        unpacked.len(),
        "the Python and Rust decoders count alike"
    );
    for (a, b) in pts.iter().zip(&unpacked) {
        assert_eq!(
            a.raw, b.raw,
            "user record {} / {}",
            a.kinesis_seq, a.sub_sequence
        );
    }
    points::check_order_per_equipment(&pts).unwrap_or_else(|e| panic!("order: {e}"));
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dups.copies, 0, "no failure was injected: no duplicate");
    let seqs = seqs_of(&pts, SOURCE);
    assert_eq!(seqs.first(), Some(&1), "from the first point");
    assert!(
        seqs.len() as f64 >= read,
        "{} points in the stream, {read} read before the stop",
        seqs.len()
    );
    eprintln!(
        "kpl format: {aggregated} aggregated records (up to {most_subs} points), {plain} plain, {} points",
        pts.len()
    );
}
