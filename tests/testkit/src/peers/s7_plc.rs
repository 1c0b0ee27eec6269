//! The simulated S7 CPU (`tests/sim/s7_plc.py`: the real Snap7 server from
//! python-snap7 2.1.0) and its control channel (a line-JSON TCP port: write bytes
//! into DB/M/I/Q/T/C, read them back, count the items and connections served).

use super::sim_control::{deref_sim, Sim};
use serde_json::{json, Value as Json};
use std::path::Path;
use std::time::Duration;

/// A memory area of the simulated CPU, as the sim's control channel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Db(u16),
    Markers,
    Inputs,
    Outputs,
    Timers,
    Counters,
}

impl Area {
    fn to_json(self, req: &mut serde_json::Map<String, Json>) {
        let (area, db) = match self {
            Area::Db(n) => ("DB", n),
            Area::Markers => ("M", 0),
            Area::Inputs => ("I", 0),
            Area::Outputs => ("Q", 0),
            Area::Timers => ("T", 0),
            Area::Counters => ("C", 0),
        };
        req.insert("area".into(), json!(area));
        req.insert("db".into(), json!(db));
    }
}

/// Bytes to write at `offset` of `area` (a timer or counter is 2 bytes at number × 2).
#[derive(Debug, Clone)]
pub struct S7Write {
    pub area: Area,
    pub offset: u32,
    pub bytes: Vec<u8>,
}

pub fn write(area: Area, offset: u32, bytes: impl Into<Vec<u8>>) -> S7Write {
    S7Write {
        area,
        offset,
        bytes: bytes.into(),
    }
}

impl S7Write {
    fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        self.area.to_json(&mut m);
        m.insert("offset".into(), json!(self.offset));
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        m.insert("hex".into(), json!(hex));
        Json::Object(m)
    }
}

/// How the simulated CPU is laid out.
#[derive(Debug, Clone)]
pub struct S7Options {
    /// Data blocks: (number, size in bytes).
    pub dbs: Vec<(u16, u32)>,
    /// Sizes of the marker, input and output areas.
    pub markers: u32,
    pub inputs: u32,
    pub outputs: u32,
    /// The largest PDU the server grants.
    pub pdu: u16,
    /// Port to listen on; `None` picks a free one (pass the old one to restart in place).
    pub port: Option<u16>,
}

impl Default for S7Options {
    fn default() -> Self {
        S7Options {
            dbs: vec![(1, 512), (2, 512)],
            markers: 256,
            inputs: 256,
            outputs: 256,
            pdu: 480,
            port: None,
        }
    }
}

/// A running simulated S7 CPU on 127.0.0.1 (killed when dropped).
pub struct S7Sim {
    sim: Sim,
}
deref_sim!(S7Sim);

impl S7Sim {
    /// Starts the simulator and waits until its control port answers a ping.
    #[track_caller]
    pub fn start(opts: &S7Options, log_dir: &Path) -> S7Sim {
        let mut args: Vec<String> = [
            ("--m", opts.markers),
            ("--i", opts.inputs),
            ("--q", opts.outputs),
            ("--pdu", opts.pdu.into()),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect();
        for (n, size) in &opts.dbs {
            args.extend(["--db".to_owned(), format!("{n}:{size}")]);
        }
        S7Sim {
            sim: Sim::start(
                "s7 sim",
                "s7_plc",
                opts.port,
                args.into_iter().map(Into::into).collect(),
                Duration::from_secs(30),
                log_dir,
            ),
        }
    }

    /// `127.0.0.1:PORT`, as the agent's `address` key takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Writes all at once (under the server's area locks: no read sees half of them).
    #[track_caller]
    pub fn set(&mut self, writes: &[S7Write]) {
        let writes: Vec<Json> = writes.iter().map(S7Write::to_json).collect();
        self.request(json!({"op": "set", "writes": writes}));
    }

    /// Reads `size` bytes back.
    #[track_caller]
    pub fn get(&mut self, area: Area, offset: u32, size: u32) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        area.to_json(&mut m);
        m.insert("op".into(), json!("get"));
        m.insert("offset".into(), json!(offset));
        m.insert("size".into(), json!(size));
        let hex = self.request(Json::Object(m))["hex"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect()
    }

    /// What the server counted: `reads` (read-var items served), `clients` (connections).
    #[track_caller]
    pub fn stats(&mut self) -> Json {
        self.request(json!({"op": "stats"}))
    }
}
