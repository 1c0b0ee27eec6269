//! kinesalite (npm), through `tests/peers/kinesalite-local.js`, which binds 127.0.0.1
//! only; optionally on disk so streams survive a restart.

use crate::kinesis::KinesisPeer;
use crate::paths;
use crate::ports;
use crate::process::{ManagedProcess, ProcessSpec, Ready};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of a [`Kinesalite`] peer.
#[derive(Debug, Clone, Default)]
pub struct KinesaliteOptions {
    /// LevelDB directory: streams and records survive [`Kinesalite::stop`] /
    /// [`Kinesalite::start_again`]. `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Open plus closed shards allowed (kinesalite's default is 10; reshard tests need more).
    pub shard_limit: Option<u32>,
}

impl KinesaliteOptions {
    /// Streams kept in `dir` (LevelDB), so they survive a stop and start.
    pub fn on_disk(dir: PathBuf) -> KinesaliteOptions {
        KinesaliteOptions {
            data_dir: Some(dir),
            ..KinesaliteOptions::default()
        }
    }
}

/// A kinesalite server on 127.0.0.1 (killed when dropped).
pub struct Kinesalite {
    port: u16,
    process: ManagedProcess,
}

impl Kinesalite {
    /// Starts kinesalite on a free port; `log_dir` receives `kinesalite.log`.
    #[track_caller]
    pub fn start(opts: KinesaliteOptions, log_dir: &Path) -> Kinesalite {
        paths::node_package("kinesalite");
        let port = ports::free_port();
        let mut spec = ProcessSpec::new("kinesalite", "node", &log_dir.join("kinesalite.log"))
            .current_dir(paths::peers_dir())
            .arg(paths::peers_dir().join("kinesalite-local.js"))
            .args(["--port", &port.to_string()])
            .ready(Ready::Listening(port), Duration::from_secs(20));
        if let Some(dir) = &opts.data_dir {
            spec = spec.arg("--path").arg(dir);
        }
        if let Some(n) = opts.shard_limit {
            spec = spec.args(["--shardLimit", &n.to_string()]);
        }
        Kinesalite {
            port,
            process: spec.start(),
        }
    }

    /// Starts the server again on the same port and data directory.
    #[track_caller]
    pub fn start_again(&mut self) {
        self.process.start_again();
    }

    /// Stops the server (SIGTERM: the LevelDB store is closed cleanly) and waits for the exit.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl KinesisPeer for Kinesalite {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
