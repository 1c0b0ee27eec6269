//! The full-buffer scenario both overflow tests share.
//!
//! Kinesis is down from the start and the buffer holds 1 MiB. A PLC with 100 registers
//! polled every 20 ms fills it in about a second and keeps pushing. Register 0 then
//! takes a marker value (the newest reading before the PLC goes away), the PLC is
//! stopped, Kinesis comes back and the buffer drains, and the PLC returns so fresh
//! points follow. Up to the newest sequence number `max` in the stream, every number
//! is either in the stream or counted as dropped.

use super::*;
use linewatch_e2e::agent::{modbus_source, Agent, AgentConfig};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::modbus_plc::{reg, ModbusSim, SimOptions};
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::Scratch;
use std::collections::BTreeSet;
use std::time::Duration;

pub const MAX_BYTES: u64 = 1024 * 1024;
pub const MARKER: u64 = 4242;
const AFTER: u64 = 5151;

pub struct Outcome {
    /// Points counted under `dropped{reason=...}` for the policy.
    pub dropped: u64,
    /// The most `buffer_bytes` seen while full.
    pub peak_bytes: f64,
    pub pts: Vec<Shipped>,
    /// Distinct sequence numbers of the source in the stream.
    pub seqs: BTreeSet<u64>,
    /// Whether the marker (newest reading while full) reached the stream.
    pub marker_shipped: bool,
    /// `put_records_errors` at the end: calls that failed as a whole.
    pub failed_calls: f64,
    pub _scratch: Scratch,
}

pub async fn run(policy: &str) -> Outcome {
    let scratch = Scratch::new(&format!("overflow-{policy}"));
    let mut k = Kinesalite::start(
        KinesaliteOptions::on_disk(scratch.path().join("kinesalite-db")),
        scratch.path(),
    );
    k.create_stream(STREAM, 1).await;
    k.stop();

    let mut sim = ModbusSim::start(SimOptions::default(), scratch.path());
    sim.set(&[reg(0, "u16", 1)]);
    let sim_port = sim.port();
    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.buffer.max_bytes = MAX_BYTES;
    cfg.buffer.overflow = policy.to_owned();
    cfg.sources.push(modbus_source(
        SOURCE,
        &sim.address(),
        FILLER,
        "20ms",
        many_u16_tags(100),
    ));
    let mut agent = Agent::start(cfg, scratch.path());

    let reason = format!("overflow_{policy}");
    let mut peak_bytes: f64 = 0.0;
    agent
        .wait_metrics(
            "the full buffer to drop points",
            Duration::from_secs(60),
            |s| {
                peak_bytes = peak_bytes.max(s.get("linewatch_agent_buffer_bytes"));
                let d = counter(s, "linewatch_agent_dropped_total", "reason", &reason);
                if d >= 3000.0 {
                    Ok(())
                } else {
                    Err(format!("dropped{{reason={reason}}} {d}"))
                }
            },
        )
        .await;

    // The newest reading while full: wait until the agent has polled it twice.
    let reads = sim.total_reads();
    sim.set(&[reg(0, "u16", MARKER)]);
    linewatch_testkit::wait::until(
        "the agent to read the marker",
        Duration::from_secs(10),
        async || {
            let now = sim.total_reads();
            if now >= reads + 2 {
                Ok(())
            } else {
                Err(format!("{} reads since", now - reads))
            }
        },
    )
    .await;
    sim.stop();
    agent
        .wait_metrics(
            "the source to notice the PLC is gone",
            Duration::from_secs(20),
            |s| {
                peak_bytes = peak_bytes.max(s.get("linewatch_agent_buffer_bytes"));
                let c = counter(s, "linewatch_agent_source_connected", "source", SOURCE);
                if c == 0.0 {
                    Ok(())
                } else {
                    Err(format!("source_connected {c}"))
                }
            },
        )
        .await;

    k.start_again();
    agent
        .wait_metrics("the buffer to drain", Duration::from_secs(60), |s| {
            let n = s.get("linewatch_agent_buffer_records");
            if n == 0.0 {
                Ok(())
            } else {
                Err(format!("buffer_records {n}"))
            }
        })
        .await;

    // The PLC comes back with a new value: points after the overflow follow.
    let mut sim = ModbusSim::start(
        SimOptions {
            port: Some(sim_port),
            ..SimOptions::default()
        },
        scratch.path(),
    );
    sim.set(&[reg(0, "u16", AFTER)]);
    let pts = wait_stream(
        &k,
        "points read after the PLC returned",
        Duration::from_secs(60),
        |p| {
            let seen = points::of_tag(p, "r000")
                .iter()
                .any(|x| x.json["value"] == AFTER);
            if seen {
                Ok(p.to_vec())
            } else {
                Err(format!("no r000 = {AFTER} yet"))
            }
        },
    )
    .await;
    let end = agent.scrape();
    let dropped = counter(&end, "linewatch_agent_dropped_total", "reason", &reason) as u64;
    let failed_calls = end.get("linewatch_agent_put_records_errors_total");
    agent.assert_running();

    let marker_shipped = points::of_tag(&pts, "r000")
        .iter()
        .any(|x| x.json["value"] == MARKER);
    Outcome {
        dropped,
        peak_bytes,
        seqs: seqs_of(&pts, SOURCE),
        pts,
        marker_shipped,
        failed_calls,
        _scratch: scratch,
    }
}

/// Checks both policies share: the buffer stayed within `max_bytes`, every number up
/// to the newest shipped one is shipped or counted as dropped, and the dropped ones
/// form one contiguous run. Returns that run.
pub fn check_accounting(o: &Outcome) -> (u64, u64) {
    assert!(
        o.peak_bytes <= MAX_BYTES as f64,
        "buffer_bytes {} exceeded max_bytes {MAX_BYTES}",
        o.peak_bytes
    );
    let max = o.seqs.last().copied().unwrap_or(0);
    let missing = max - o.seqs.len() as u64;
    let gaps = points::gaps(&o.seqs);
    let first = o.seqs.first().copied().unwrap_or(0);
    let (lo, hi) = match (first, gaps.as_slice()) {
        (1, [(lo, hi)]) => (*lo, *hi),
        (f, []) if f > 1 => (1, f - 1),
        _ => panic!(
            "dropped points must be one contiguous run; present from {first}, missing {}",
            points::describe_ranges(&gaps)
        ),
    };
    assert_eq!(
        missing, o.dropped,
        "every sequence number up to {max} is shipped or counted: {missing} missing ({lo}..={hi}), \
         {} counted as dropped",
        o.dropped
    );
    let dups = points::check_duplicates(&o.pts).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dups.runs as f64 <= o.failed_calls,
        "duplicates only from resent batches: {} slices, {} failed calls",
        dups.runs,
        o.failed_calls
    );
    points::check_order_per_equipment(&o.pts).unwrap_or_else(|e| panic!("order: {e}"));
    (lo, hi)
}
