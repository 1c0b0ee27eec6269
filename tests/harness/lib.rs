//! Test harness: starts real peers on 127.0.0.1 and the programs under test.
//!
//! - [`kinesis`]: kinesalite (npm) wrapped to bind loopback, stream set-up, reading every record;
//! - [`modbus`]: the pymodbus filling-machine PLC (`tests/sim/modbus_plc.py`) and its control port;
//! - [`agent`]: the `linewatch-agent` process, its TOML config, its `/metrics`;
//! - [`points`]: decoding and checking what arrived (schema, gaps, duplicates, order);
//! - [`proxy`]: a TCP proxy that can lose responses (unknown outcomes);
//! - [`rules`]: the `linewatch-rules` service and commands; [`feed`]: hand-made points into
//!   Kinesis, SplitShard; [`receiver`]: the webhook receiver; [`mqtt`]: the broker;
//! - [`wait`]: polls with deadlines; [`process`]: children killed on drop; [`ports`]: free ports.
//!
//! Fixtures panic with a clear message (and the peer's log tail) when something does not
//! come up: that is how a test fails. The Kinesis client functions return typed errors,
//! because the `lw-kinesis` tool uses them too.

pub mod agent;
pub mod feed;
pub mod http;
pub mod kinesis;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod paths;
pub mod points;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod rules;
pub mod scenario;
pub mod wait;

/// A per-test scratch directory, kept (and its path printed) when the test fails
/// so the peers' logs can be read; removed when it passes.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    #[track_caller]
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("linewatch-e2e-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        Scratch { dir: Some(dir) }
    }

    pub fn path(&self) -> &std::path::Path {
        match &self.dir {
            Some(d) => d.path(),
            None => std::path::Path::new("."),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "test failed: logs and buffer kept in {}",
                    d.keep().display()
                );
            }
        }
    }
}
