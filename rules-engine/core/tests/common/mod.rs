//! Helpers shared by the integration tests.
#![allow(dead_code)]

use linewatch_rules_core::{Limits, Rule, Sandbox};
use std::sync::Arc;

/// A small deterministic generator (SplitMix64): tests must not depend on luck.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Sequence numbers as an agent gives them: strictly increasing, so a repeated
/// timestamp is not mistaken for a resend (the engine drops those).
fn next_sequence() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn point_json(
    gateway: &str,
    source: &str,
    equipment: &str,
    tag: &str,
    ts: u64,
    value: &str,
) -> String {
    let seq = next_sequence();
    format!(
        r#"{{"version":1,"timestamp":{ts},"equipmentId":"{equipment}","tag":"{tag}","value":{value},"quality":"Ok","meta":{{"sequenceNumber":{seq},"createdAt":{ts},"sourceId":"{source}","gatewayId":"{gateway}"}}}}"#
    )
}

pub fn heartbeat_json(gateway: &str, source: &str, ts: u64) -> String {
    let seq = next_sequence();
    format!(
        r#"{{"version":1,"timestamp":{ts},"equipmentId":"-","tag":"$heartbeat","value":null,"quality":"Ok","meta":{{"sequenceNumber":{seq},"flags":["Wmk"],"createdAt":{ts},"sourceId":"{source}","gatewayId":"{gateway}"}}}}"#
    )
}

/// A Krones-style two-group rule for one equipment, four tags.
pub fn krones_rule(id: &str, equipment: &str, version: u64, hold: &str) -> String {
    format!(
        r#"#{{ id: "{id}", version: {version}, equipment: "{equipment}",
  groups: [
    #{{ name: "production", weight: 1, tags: ["machine_state", "product"],
       state: |v| if v.machine_state == "RUNNING" && v.product == "1L" {{ "ACTIVE" }} else {{ "IDLE" }} }},
    #{{ name: "thermal", weight: 3, tags: ["water_temperature", "pressure"], hold: "{hold}",
       state: |v| if v.water_temperature > 80.0 && v.pressure > 2.5 {{ "WARNING" }} else {{ () }} }},
  ] }}"#
    )
}

/// Replays `input` (NDJSON) and returns each output line (a transition or an event) as JSON.
pub fn replay_json(
    rules: Vec<Arc<Rule>>,
    input: &str,
    opts: linewatch_rules_core::replay::ReplayOptions,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    linewatch_rules_core::replay::replay(rules, input.as_bytes(), &mut out, opts, &mut |_| {})
        .expect("replay runs");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON value per line"))
        .collect()
}

pub fn compile(src: &str) -> Arc<Rule> {
    Arc::new(Rule::compile(&Sandbox::new(Limits::default()), src, "test").expect("rule compiles"))
}

/// Krones-style data: `equipment` machines, one reading of one tag per step, each
/// step `step_ms` apart (distinct timestamps), senders = one per 10 machines.
pub fn krones_stream(
    rng: &mut Rng,
    equipment: usize,
    steps: usize,
    t0: u64,
    step_ms: u64,
) -> Vec<(u64, String)> {
    let mut temp = vec![75.0f64; equipment];
    let mut pres = vec![2.3f64; equipment];
    let mut running = vec![true; equipment];
    let mut out = Vec::with_capacity(steps);
    for i in 0..steps {
        let ts = t0 + i as u64 * step_ms;
        let e = rng.below(equipment as u64) as usize;
        let eq = format!("eq-{e}");
        let sender = format!("src-{}", e / 10);
        let line = match rng.below(4) {
            0 => {
                if rng.chance(2) {
                    running[e] = !running[e];
                }
                let s = if running[e] { "RUNNING" } else { "STOPPED" };
                point_json("gw", &sender, &eq, "machine_state", ts, &format!("\"{s}\""))
            }
            1 => point_json("gw", &sender, &eq, "product", ts, "\"1L\""),
            2 => {
                temp[e] = (temp[e] + (rng.below(41) as f64 - 20.0) / 10.0).clamp(60.0, 95.0);
                point_json(
                    "gw",
                    &sender,
                    &eq,
                    "water_temperature",
                    ts,
                    &format!("{:.1}", temp[e]),
                )
            }
            _ => {
                pres[e] = (pres[e] + (rng.below(21) as f64 - 10.0) / 50.0).clamp(1.5, 3.5);
                point_json(
                    "gw",
                    &sender,
                    &eq,
                    "pressure",
                    ts,
                    &format!("{:.2}", pres[e]),
                )
            }
        };
        out.push((ts, line));
    }
    out
}
