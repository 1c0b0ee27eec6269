//! Ingest benchmark: readings → normalise → encode (JSON) → buffer group commit
//! (sled, flushed), on one thread; then bytes on disk per buffered point.
//!
//! Run: `cargo bench -p linewatch-agent --bench ingest`
//! Knobs: `INGEST_POINTS` (default 1,000,000), `INGEST_COMMIT` (points per
//! commit, default 10,000), `INGEST_CACHE` (sled cache bytes, default 4 MiB).

use linewatch_agent::buffer::{Buffer, NewRecord};
use linewatch_agent::config::{BufferConfig, OverflowPolicy};
use linewatch_agent::normalize::Normalizer;
use linewatch_agent::sources::Reading;
use linewatch_schemas::{Flags, Quality, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TAGS: usize = 10_000;
/// Points per group commit (the agent's default `commit_max_points`).
const COMMIT_POINTS: usize = 10_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const EQUIPMENT: usize = 40;

fn main() {
    let points: usize = env_or("INGEST_POINTS", 1_000_000);
    let commit_points: usize = env_or("INGEST_COMMIT", COMMIT_POINTS).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = BufferConfig {
        path: dir.path().join("buffer"),
        // Large enough that nothing is evicted: this measures the append path.
        max_bytes: 64 * 1024 * 1024 * 1024,
        overflow: OverflowPolicy::DropOldest,
        commit_interval: Duration::from_millis(200),
        commit_max_points: commit_points,
        // The agent's default page cache.
        cache_bytes: env_or("INGEST_CACHE", 4 * 1024 * 1024),
        lock_wait: std::time::Duration::from_secs(5),
    };
    let (buffer, _) = Buffer::open(&cfg).expect("open buffer");

    // One poll of every tag: realistic names, ids and values (Modbus: no source
    // timestamp, so the agent stamps it and sets Ats).
    let equipment: Vec<Arc<str>> = (0..EQUIPMENT)
        .map(|e| {
            Arc::from(format!(
                "84068f2f-3f39-4b9c-a995-{:012x}",
                0xd2a8_4d87_8600u64 + e as u64
            ))
        })
        .collect();
    let sources: Vec<Arc<str>> = (0..EQUIPMENT / 4)
        .map(|s| Arc::from(format!("filling_machine_{s}")))
        .collect();
    let poll: Vec<Reading> = (0..TAGS)
        .map(|t| Reading {
            source_id: Arc::clone(&sources[t % sources.len()]),
            equipment_id: Arc::clone(&equipment[t % EQUIPMENT]),
            tag: Arc::from(format!("water_temperature_{t:05}")),
            value: match t % 4 {
                0 => Value::Float(13.45 + t as f64 / 100.0),
                1 => Value::Int(t as i64 * 7),
                2 => Value::Bool(t % 8 == 1),
                _ => Value::Float(2.5e-3 * t as f64),
            },
            quality: Quality::Ok,
            source_timestamp: None,
            flags: Flags::empty(),
            raw_quality: None,
        })
        .collect();

    let mut normalizer = Normalizer::new("gateway-bench", HashMap::new());
    let mut pending: Vec<NewRecord> = Vec::with_capacity(commit_points);
    let mut now_ms = 1_732_180_000_000u64;
    let mut commit_time = Duration::ZERO;
    let mut logical_bytes = 0u64;
    let mut done = 0usize;

    let start = Instant::now();
    while done < points {
        for r in poll.iter().take(points - done) {
            let p = normalizer.normalize(r, now_ms);
            // As the writer does: never hand `to_json` an invalid point.
            if p.validate().is_err() {
                continue;
            }
            let json = p.to_json();
            pending.push(NewRecord::new(p.meta.created_at, &p.equipment_id, &json));
            if pending.len() == commit_points {
                let t1 = Instant::now();
                commit(&buffer, &mut pending, &normalizer, &mut logical_bytes);
                commit_time += t1.elapsed();
            }
        }
        done += poll.len().min(points - done);
        now_ms += 1_000;
        if !pending.is_empty() {
            let t1 = Instant::now();
            commit(&buffer, &mut pending, &normalizer, &mut logical_bytes);
            commit_time += t1.elapsed();
        }
    }
    let elapsed = start.elapsed();
    let encode_time = elapsed.saturating_sub(commit_time);

    let secs = elapsed.as_secs_f64();
    println!(
        "ingest: {:.0} points/s ({} points, {:.2} s; commits of {}, {} tags, one thread)",
        done as f64 / secs,
        done,
        secs,
        commit_points,
        TAGS
    );
    println!(
        "ingest: normalise+encode {:.2} s ({:.0} points/s), buffer commit incl. fsync {:.2} s ({:.0} points/s)",
        encode_time.as_secs_f64(),
        done as f64 / encode_time.as_secs_f64(),
        commit_time.as_secs_f64(),
        done as f64 / commit_time.as_secs_f64()
    );

    buffer.sync().expect("flush");
    let stats = buffer.stats();
    drop(buffer);
    let on_disk = dir_size(&cfg.path);
    println!(
        "disk: {:.1} bytes on disk per buffered point ({} points, {} bytes in {}); logical {:.1} bytes/point (key + record)",
        on_disk as f64 / stats.records.max(1) as f64,
        stats.records,
        on_disk,
        cfg.path.display(),
        logical_bytes as f64 / stats.records.max(1) as f64,
    );
}

fn commit(buffer: &Buffer, pending: &mut Vec<NewRecord>, n: &Normalizer, logical: &mut u64) {
    let out = buffer.commit(pending, n.sequences()).expect("commit");
    assert_eq!(
        out.accepted,
        pending.len(),
        "nothing may be dropped in this benchmark"
    );
    *logical += pending.iter().map(NewRecord::size).sum::<u64>();
    pending.clear();
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
