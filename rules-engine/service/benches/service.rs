//! `cargo bench -p linewatch-rules --bench service` — the service's engine on one core:
//! raw Kinesis records (JSON) through parsing, the watermark, the reorder buffer and
//! 1,000 rules, with a tick (watermark, holds, output) every 1,000 records; then the
//! checkpoint: snapshot + encode + one atomic sled write + flush, its size, and the
//! time to restore it (recompiling every rule).
//!
//! Environment: `LW_BENCH_RECORDS` (default 1,000,000), `LW_BENCH_RULES` (default 1,000).

use linewatch_rules::service::checkpoint::CheckpointStore;
use linewatch_rules_core::engine::{Engine, EngineConfig, EngineSnapshot};
use linewatch_rules_core::eval::Partition;
use linewatch_rules_core::{Limits, SequencerConfig, WatermarkConfig};
use std::time::{Duration, Instant};

const T0: u64 = 1_732_180_000_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this thread (the machine is shared; wall time would count others).
fn cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn rule(i: usize) -> String {
    format!(
        r#"#{{ id: "filler-{i}", equipment: "eq-{i}",
            groups: [
              #{{ name: "production", weight: 1, tags: ["machine_state", "product"],
                 state: |v| if v.machine_state == "RUNNING" && v.product == "1L" {{ "ACTIVE" }} else {{ "IDLE" }} }},
              #{{ name: "thermal", weight: 3, tags: ["water_temperature", "pressure"], hold: "5s",
                 state: |v| if v.water_temperature > 80.0 && v.pressure > 2.5 {{ "WARNING" }} else {{ () }} }} ] }}"#
    )
}

fn record(equipment: usize, ts: u64, seq: u64, tag: &str, value: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"version":1,"timestamp":ts,"equipmentId":format!("eq-{equipment}"),
        "tag":tag,"value":value,"quality":"Ok",
        "meta":{"sequenceNumber":seq,"flags":[],"createdAt":ts,"sourceId":"plc","gatewayId":format!("gw-{}", equipment % 20)}})
    .to_string()
    .into_bytes()
}

fn main() {
    let n_records = env_or("LW_BENCH_RECORDS", 1_000_000);
    let n_rules = env_or("LW_BENCH_RULES", 1_000);
    let cfg = EngineConfig {
        sequencer: SequencerConfig {
            watermark: WatermarkConfig::with(Duration::from_secs(2), Duration::from_secs(3600)),
            ..SequencerConfig::default()
        },
        workers: 1,
        limits: Limits::default(),
        partition: Partition::ALL,
    };
    let mut engine = Engine::new(cfg.clone()).expect("engine");
    let started = Instant::now();
    for i in 0..n_rules {
        let script = rule(i);
        engine
            .on_rule(&format!("filler-{i}"), Some((1, &script)))
            .expect("rule");
    }
    println!(
        "loaded {n_rules} rules in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // 1,000 equipment-ticks per second of event time, tags cycling.
    let tags = ["machine_state", "product", "water_temperature", "pressure"];
    let records: Vec<Vec<u8>> = (0..n_records)
        .map(|i| {
            let eq = i % n_rules;
            let ts = T0 + (i / n_rules) as u64 * 250 + (eq % 250) as u64;
            let tag = tags[(i / n_rules) % 4];
            let hot = (i / (n_rules * 400)) % 2 == 1;
            let value = match tag {
                "machine_state" => serde_json::json!("RUNNING"),
                "product" => serde_json::json!("1L"),
                "water_temperature" => serde_json::json!(if hot { 85.0 } else { 20.0 }),
                _ => serde_json::json!(if hot { 3.0 } else { 1.0 }),
            };
            record(eq, ts, i as u64, tag, value)
        })
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum();

    let cpu0 = cpu_secs();
    let wall = Instant::now();
    let mut transitions = 0usize;
    for (i, r) in records.iter().enumerate() {
        engine.on_record(r, 0).expect("record");
        if i % 1000 == 999 {
            transitions += engine.tick(0).expect("tick").transitions.len();
        }
    }
    transitions += engine.tick(0).expect("tick").transitions.len();
    let cpu = cpu_secs() - cpu0;
    println!(
        "engine: {n_records} records ({:.0} B avg) through {n_rules} rules: {:.0} records/s (CPU), {:.0} records/s (wall), {transitions} transitions",
        bytes as f64 / n_records as f64,
        n_records as f64 / cpu,
        n_records as f64 / wall.elapsed().as_secs_f64(),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = CheckpointStore::open(&dir.path().join("cp"), Duration::ZERO).expect("store");
    let positions = std::collections::BTreeMap::from([(
        "shardId-000000000000",
        "49590338271490256608559692538361571095921575989136588898",
    )]);
    let outbox: Vec<String> = Vec::new();
    let mut best = f64::MAX;
    let mut size = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let snap = engine.snapshot().expect("snapshot");
        size = store.save(&snap, &positions, &outbox, 1).expect("save");
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "checkpoint: {n_rules} rules, {} points buffered: {:.1} ms (snapshot + encode + sled write + flush, best of 5), {:.1} KiB, {:.0} B/rule",
        engine.sequencer().buffered(),
        best * 1e3,
        size as f64 / 1024.0,
        size as f64 / n_rules as f64
    );
    let snap: EngineSnapshot = engine.snapshot().expect("snapshot");
    drop(engine);
    let t = Instant::now();
    let (restored, problems) = Engine::restore(cfg, snap).expect("restore");
    println!(
        "restore: {} rules in {:.0} ms ({} problems)",
        restored.rules().len(),
        t.elapsed().as_secs_f64() * 1e3,
        problems.len()
    );
}
