//! The simulated S7 CPU (`tests/sim/s7_plc.py`: the real Snap7 server from
//! python-snap7 2.1.0) and its control channel (a line-JSON TCP port: write bytes
//! into DB/M/I/Q/T/C, read them back, count the items and connections served).

use super::sim_control::SimControl;
use crate::paths;
use crate::ports;
use crate::process::{ManagedProcess, ProcessSpec, Ready};
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
    port: u16,
    process: ManagedProcess,
    control: SimControl,
}

impl S7Sim {
    /// Starts the simulator and waits until its control port answers a ping.
    #[track_caller]
    pub fn start(opts: &S7Options, log_dir: &Path) -> S7Sim {
        let port = opts.port.unwrap_or_else(ports::free_port);
        let control_port = ports::free_port();
        let log = log_dir.join(format!("s7-sim-{port}.log"));
        let mut spec = ProcessSpec::new("s7 sim", paths::venv_python(), &log)
            .arg(paths::sim_dir().join("s7_plc.py"))
            .args(["--port", &port.to_string()])
            .args(["--control-port", &control_port.to_string()])
            .args(["--m", &opts.markers.to_string()])
            .args(["--i", &opts.inputs.to_string()])
            .args(["--q", &opts.outputs.to_string()])
            .args(["--pdu", &opts.pdu.to_string()]);
        for (n, size) in &opts.dbs {
            spec = spec.args(["--db", &format!("{n}:{size}")]);
        }
        let process = spec
            .env("PYTHONUNBUFFERED", "1")
            .ready(Ready::Listening(port), Duration::from_secs(30))
            .start();
        let mut sim = S7Sim {
            port,
            process,
            control: SimControl::new(control_port),
        };
        sim.control.wait_ready(&mut sim.process);
        sim
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as the agent's `address` key takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends one control request; panics with the sim's log if it fails.
    #[track_caller]
    pub fn request(&mut self, req: Json) -> Json {
        self.control.request(req, &self.process)
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

    /// Stops the simulator (the PLC "goes away"); its port becomes free.
    pub fn stop(&mut self) {
        self.control.disconnect();
        self.process.stop(Duration::from_secs(5));
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
