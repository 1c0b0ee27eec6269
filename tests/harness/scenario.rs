//! Scenarios for the rule engine tests: machines, a rule over them, and a deterministic
//! stream of readings that makes the rule change state often (running/idle, and
//! overheating that lasts longer than the hold).

use linewatch_testkit::feed::{Equipment, Feed};
use serde_json::json;

/// Event-time spacing of one step of [`machine_cycle`].
pub const STEP_MS: u64 = 100;

/// `n` machines, alternately on gateways `gw-a` and `gw-b`, each with its own source
/// (so a sender's points share one partition key, hence one shard, hence their order).
pub fn machines(prefix: &str, n: usize) -> Vec<Equipment> {
    (0..n)
        .map(|i| {
            let gw = if i % 2 == 0 { "gw-a" } else { "gw-b" };
            Equipment::new(&format!("{prefix}-{i}"), gw, &format!("plc-{prefix}-{i}"))
        })
        .collect()
}

/// The ids of `equipment`, as a Rhai array literal.
fn rhai_ids(equipment: &[Equipment]) -> String {
    let ids: Vec<String> = equipment.iter().map(|e| format!("{:?}", e.id)).collect();
    format!("[{}]", ids.join(", "))
}

/// A rule over `equipment`: ACTIVE while `speed > 0` (else IDLE, weight 1), WARNING
/// while `temperature > hot_above` for at least `hold` (weight 3, abstains otherwise).
pub fn machine_rule(
    id: &str,
    version: u64,
    equipment: &[Equipment],
    hot_above: f64,
    hold: &str,
) -> String {
    format!(
        r#"// e2e: machine state and overheating.
#{{
    id: {id:?},
    version: {version},
    equipment: {eq},
    states: ["OK", "IDLE", "ACTIVE", "WARNING", "ERROR"],
    groups: [
        #{{ name: "running", weight: 1, tags: ["speed"],
           state: |v| if v.speed > 0.0 {{ "ACTIVE" }} else {{ "IDLE" }} }},
        #{{ name: "hot", weight: 3, tags: ["temperature"], hold: {hold:?},
           state: |v| if v.temperature > {hot_above:.1} {{ "WARNING" }} else {{ () }} }},
    ],
}}
"#,
        eq = rhai_ids(equipment),
    )
}

/// A script the engine must reject (it does not compile).
pub const BROKEN_RULE: &str = "#{ id: \"broken\", equipment: \"x\", groups: [ #{ name: ";

/// Readings for steps `from..to` of every machine: `temperature` every step, `speed`
/// every 5th. Machine `i`'s points are `7·i` ms after the step time, so no two machines
/// share a timestamp (the order between machines is then the same however the shards
/// are interleaved).
///
/// Temperature is a triangle wave (60–90 °C, period 50 steps, above 80 °C for ~1.7 s);
/// speed runs for 80 steps and stops for 40. Each machine is phase-shifted.
pub fn machine_cycle(feed: &mut Feed, equipment: &[Equipment], base: u64, from: u64, to: u64) {
    for step in from..to {
        for (i, eq) in equipment.iter().enumerate() {
            let i = i as u64;
            let ts = base + step * STEP_MS + 7 * i;
            let phase = (step + 17 * i) % 50;
            let tri = phase.abs_diff(25);
            feed.value(eq, "temperature", ts, json!(60.0 + tri as f64 * 1.2));
            if step % 5 == 0 {
                let running = ((step + 13 * i) / 40) % 3 != 2;
                feed.value(eq, "speed", ts, json!(if running { 1200.0 } else { 0.0 }));
            }
        }
    }
}

/// Event time of step `step` (machine 0).
pub fn step_time(base: u64, step: u64) -> u64 {
    base + step * STEP_MS
}

/// A base event time: now minus ten minutes, rounded to a second (realistic, and far
/// from any boundary the engine might check).
pub fn base_time() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1_800_000_000_000);
    (now - 600_000) / 1000 * 1000
}
