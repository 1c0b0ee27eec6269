//! The scriptable OPC UA server (`tests/sim/opcua_server.py`, the asyncua server from
//! PyPI) and its control channel (a line-JSON TCP port: write values with a status and
//! timestamps, read them back, list the namespaces).

use super::sim_control::{deref_sim, Sim};
use serde_json::{json, Value as Json};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The two namespaces the server registers (see the script's header).
pub const FILLER_NS: &str = "urn:linewatch:filler";
pub const LABELLER_NS: &str = "urn:linewatch:labeller";

/// How the server is started.
#[derive(Debug, Clone)]
pub struct UaOptions {
    /// Port to listen on; `None` picks a free one (a restart passes the old one).
    pub port: Option<u16>,
    /// Order in which the namespaces are registered: the order decides their indexes.
    pub namespaces: Vec<String>,
    /// `none`, `secure` (Basic256Sha256 Sign / SignAndEncrypt only) or `both`.
    pub security: &'static str,
    /// `(user, password)` accepted for username login.
    pub users: Vec<(String, String)>,
    /// Where the server keeps its certificate and key (created once, kept over restarts).
    pub pki: Option<PathBuf>,
    /// Extra `Bench.i` Double variables, changed `bench_hz` times a second.
    pub bench: usize,
    pub bench_hz: f64,
}

impl Default for UaOptions {
    fn default() -> Self {
        UaOptions {
            port: None,
            namespaces: vec![FILLER_NS.into(), LABELLER_NS.into()],
            security: "none",
            users: Vec::new(),
            pki: None,
            bench: 0,
            bench_hz: 0.0,
        }
    }
}

/// One value to write: `node` is the script's name (`Filler.Double`).
#[derive(Debug, Clone)]
pub struct UaWrite {
    pub node: String,
    pub value: Json,
    /// A `StatusCodes` name; `None` is Good.
    pub status: Option<String>,
    /// ms since the epoch; `Some(None)` writes no timestamp, `None` writes "now".
    pub source_timestamp: Option<Option<u64>>,
    pub server_timestamp: Option<Option<u64>>,
}

pub fn write(node: &str, value: impl Into<Json>) -> UaWrite {
    UaWrite {
        node: node.to_owned(),
        value: value.into(),
        status: None,
        source_timestamp: None,
        server_timestamp: None,
    }
}

impl UaWrite {
    pub fn status(mut self, status: &str) -> Self {
        self.status = Some(status.to_owned());
        self
    }
    pub fn source_ts(mut self, ms: Option<u64>) -> Self {
        self.source_timestamp = Some(ms);
        self
    }
    pub fn server_ts(mut self, ms: Option<u64>) -> Self {
        self.server_timestamp = Some(ms);
        self
    }
    fn to_json(&self) -> Json {
        let mut j = json!({"node": self.node, "value": self.value});
        if let Some(s) = &self.status {
            j["status"] = json!(s);
        }
        if let Some(t) = self.source_timestamp {
            j["source_timestamp"] = json!(t);
        }
        if let Some(t) = self.server_timestamp {
            j["server_timestamp"] = json!(t);
        }
        j
    }
}

/// A running OPC UA server on 127.0.0.1 (killed when dropped).
pub struct UaServer {
    sim: Sim,
}
deref_sim!(UaServer);

impl UaServer {
    /// Starts the server and waits until its control port answers a ping.
    #[track_caller]
    pub fn start(opts: UaOptions, log_dir: &Path) -> UaServer {
        let users: Vec<String> = opts.users.iter().map(|(u, p)| format!("{u}:{p}")).collect();
        let mut args: Vec<OsString> = [
            ("--namespaces", opts.namespaces.join(",")),
            ("--security", opts.security.to_owned()),
            ("--users", users.join(",")),
            ("--bench", opts.bench.to_string()),
            ("--bench-hz", opts.bench_hz.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.into(), v.into()])
        .collect();
        if let Some(pki) = &opts.pki {
            args.extend(["--pki".into(), pki.into()]);
        }
        UaServer {
            // asyncua loads its whole standard address space first: slow on a busy machine.
            sim: Sim::start(
                "opcua server",
                "opcua_server",
                opts.port,
                args,
                Duration::from_secs(90),
                log_dir,
            ),
        }
    }

    /// `opc.tcp://127.0.0.1:PORT/linewatch/`, as the agent's `endpoint` key wants it.
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/linewatch/", self.port())
    }

    /// Writes all values at once.
    #[track_caller]
    pub fn set(&mut self, writes: &[UaWrite]) {
        let writes: Vec<Json> = writes.iter().map(UaWrite::to_json).collect();
        self.request(json!({"op": "set", "writes": writes}));
    }

    #[track_caller]
    pub fn get(&mut self, node: &str) -> Json {
        self.request(json!({"op": "get", "node": node}))
    }

    /// The server's namespace array (index → URI).
    #[track_caller]
    pub fn namespaces(&mut self) -> Vec<String> {
        let r = self.request(json!({"op": "namespaces"}));
        r["namespaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}
