//! Points/s from stored buffer records to encoded PutRecords requests, on one core.
//!
//! `cargo bench -p linewatch-agent --bench ship_encode`
//!
//! Measured per point: decode the stored value (as read from sled), queue it, pick it
//! into a batch and its entries (one point each), build the SDK
//! `PutRecordsRequestEntry`/`PutRecordsInput`, write the JSON request body (base64
//! data, as the SDK's awsJson1.1 protocol sends it) and apply an all-accepted outcome. Not measured: the network, request signing, sled itself.

use base64::Engine as _;
use linewatch_agent::buffer::StoredRecord;
use linewatch_agent::config::PartitionKey;
use linewatch_agent::ship::kinesis::{queued_record, request_entries};
use linewatch_agent::ship::{
    BatchLimits, CallOutcome, OnePerRecord, QueueCapacity, RecordResult, ShipQueue,
};
use linewatch_schemas::{DataPoint, Flags, Meta, Quality, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

const POINTS: usize = 200_000;
const ROUNDS: usize = 3;
const EQUIPMENTS: usize = 50;

fn stored_values() -> Vec<(u64, Vec<u8>)> {
    let equipments: Vec<String> = (0..EQUIPMENTS)
        .map(|i| format!("84068f2f-3f39-4b9c-a995-{:012x}", i))
        .collect();
    (0..POINTS)
        .map(|i| {
            let equipment = &equipments[i % EQUIPMENTS];
            let point = DataPoint {
                version: 1,
                timestamp: 1_732_180_000_000 + i as u64,
                equipment_id: equipment.clone(),
                tag: "water_temperature".into(),
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
            let data = point.to_json();
            let id = i as u64 + 1;
            (
                id,
                StoredRecord::encode_value(1_732_180_000_150, equipment, &data),
            )
        })
        .collect()
}

/// The awsJson1.1 body of one PutRecords call.
fn encode_body(
    stream: &str,
    input: &aws_sdk_kinesis::operation::put_records::PutRecordsInput,
    out: &mut String,
) {
    out.clear();
    out.push_str("{\"Records\":[");
    for (i, e) in input.records().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"Data\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(e.data().as_ref(), out);
        out.push_str("\",\"PartitionKey\":");
        out.push_str(&serde_json::Value::from(e.partition_key().unwrap_or_default()).to_string());
        out.push('}');
    }
    out.push_str("],\"StreamName\":");
    out.push_str(&serde_json::Value::from(stream).to_string());
    out.push('}');
}

struct Round {
    elapsed: Duration,
    calls: usize,
    body_bytes: usize,
    shipped: usize,
}

fn round(values: &[(u64, Vec<u8>)]) -> Round {
    let limits = BatchLimits::default();
    let mut queue = ShipQueue::new(QueueCapacity::for_limits(&limits));
    let mut encoder = OnePerRecord::default();
    let mut rng = fastrand::Rng::with_seed(1);
    let mut body = String::with_capacity(2 * 1024 * 1024);
    let (mut next, mut calls, mut body_bytes, mut shipped) = (0usize, 0usize, 0usize, 0usize);
    let started = Instant::now();
    while shipped < values.len() {
        // What the shipper's store read would hand over.
        let want = queue.wants(&limits);
        for (id, value) in values.iter().skip(next).take(want) {
            let rec =
                StoredRecord::decode(&StoredRecord::key(*id), value).expect("valid stored record");
            queue
                .push(queued_record(rec, PartitionKey::EquipmentId, &mut rng), 0)
                .expect("ids increase");
            next += 1;
        }
        let batch = queue.next_batch(&limits, &mut encoder);
        let entries = request_entries(&batch.entries).expect("entries build");
        let input = aws_sdk_kinesis::operation::put_records::PutRecordsInput::builder()
            .stream_name("linewatch")
            .set_records(Some(entries))
            .build()
            .expect("input builds");
        encode_body("linewatch", &input, &mut body);
        body_bytes += black_box(&body).len();
        calls += 1;
        let applied = queue.apply(
            &batch,
            &CallOutcome::Records(vec![RecordResult::Accepted; batch.len()]),
        );
        shipped += applied.accepted.len();
    }
    Round {
        elapsed: started.elapsed(),
        calls,
        body_bytes,
        shipped,
    }
}

fn main() {
    let values = stored_values();
    let data_bytes: usize = values.iter().map(|(_, v)| v.len()).sum();
    let mut best: Option<Round> = None;
    for _ in 0..ROUNDS {
        let r = round(&values);
        assert_eq!(r.shipped, POINTS);
        if best.as_ref().is_none_or(|b| r.elapsed < b.elapsed) {
            best = Some(r);
        }
    }
    let Some(best) = best else {
        return;
    };
    let per_sec = POINTS as f64 / best.elapsed.as_secs_f64();
    println!(
        "ship-encode: {per_sec:.0} points/s (best of {ROUNDS} rounds of {POINTS} points, one core)"
    );
    println!(
        "ship-encode: {} PutRecords calls, {:.0} points/call, {:.0} request body bytes/point, {:.0} stored bytes/point",
        best.calls,
        POINTS as f64 / best.calls as f64,
        best.body_bytes as f64 / POINTS as f64,
        data_bytes as f64 / POINTS as f64
    );
}
