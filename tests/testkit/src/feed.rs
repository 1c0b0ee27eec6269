//! Hand-made data points (schema v1) for the rule engine, put into Kinesis with
//! partition key = `equipmentId` ([`crate::kinesis::put_points`]).
//!
//! A [`Feed`] numbers points per sender (`gatewayId/sourceId`) like an agent would and
//! keeps every point it made, so the same points can be given to the engine's replay
//! command as the expected-output oracle ([`Feed::write_ndjson`]).

use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// A piece of equipment and the sender (gateway, source) that reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Equipment {
    pub id: String,
    pub gateway: String,
    pub source: String,
}

impl Equipment {
    pub fn new(id: &str, gateway: &str, source: &str) -> Equipment {
        Equipment {
            id: id.to_owned(),
            gateway: gateway.to_owned(),
            source: source.to_owned(),
        }
    }

    /// The watermark's sender key.
    pub fn sender(&self) -> String {
        format!("{}/{}", self.gateway, self.source)
    }
}

/// One data point, serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub equipment_id: String,
    pub timestamp: u64,
    pub json: String,
}

/// Makes points and remembers them (see the module docs).
#[derive(Debug, Default)]
pub struct Feed {
    seqs: HashMap<(String, String), u64>,
    all: Vec<Point>,
    /// Index in `all` of the first point not yet taken by [`Feed::take`].
    taken: usize,
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    fn next_seq(&mut self, eq: &Equipment) -> u64 {
        let s = self
            .seqs
            .entry((eq.gateway.clone(), eq.source.clone()))
            .or_insert(0);
        *s += 1;
        *s
    }

    /// A point of `tag` = `value` (JSON number, bool or string), quality Ok.
    pub fn value(&mut self, eq: &Equipment, tag: &str, ts: u64, value: serde_json::Value) {
        let seq = self.next_seq(eq);
        let p = json!({
            "version": 1, "timestamp": ts, "equipmentId": eq.id, "tag": tag,
            "value": value, "quality": "Ok",
            "meta": {"sequenceNumber": seq, "createdAt": ts + 5, "sourceId": eq.source,
                     "gatewayId": eq.gateway}
        });
        self.push(eq, ts, p);
    }

    /// A heartbeat (`$heartbeat`, value null, flag `Wmk`): the sender's clock reached `ts`.
    pub fn heartbeat(&mut self, eq: &Equipment, ts: u64) {
        let seq = self.next_seq(eq);
        let p = json!({
            "version": 1, "timestamp": ts, "equipmentId": eq.id, "tag": "$heartbeat",
            "value": null, "quality": "Ok",
            "meta": {"sequenceNumber": seq, "flags": ["Wmk"], "createdAt": ts + 5,
                     "sourceId": eq.source, "gatewayId": eq.gateway}
        });
        self.push(eq, ts, p);
    }

    /// A heartbeat at `ts` from every sender of `equipment` (once per sender).
    pub fn heartbeats(&mut self, equipment: &[Equipment], ts: u64) {
        let mut done = std::collections::HashSet::new();
        for eq in equipment {
            if done.insert(eq.sender()) {
                self.heartbeat(eq, ts);
            }
        }
    }

    fn push(&mut self, eq: &Equipment, ts: u64, p: serde_json::Value) {
        self.all.push(Point {
            equipment_id: eq.id.clone(),
            timestamp: ts,
            json: p.to_string(),
        });
    }

    /// Every point made so far, in the order made.
    pub fn all(&self) -> &[Point] {
        &self.all
    }

    /// The points made since the last `take`.
    pub fn take(&mut self) -> Vec<Point> {
        let out = self.all[self.taken..].to_vec();
        self.taken = self.all.len();
        out
    }

    /// Every point made so far as NDJSON (the replay oracle's input).
    #[track_caller]
    pub fn write_ndjson(&self, path: &Path) {
        let mut text = String::new();
        for p in &self.all {
            text.push_str(&p.json);
            text.push('\n');
        }
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
