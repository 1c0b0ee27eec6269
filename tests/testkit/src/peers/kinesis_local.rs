//! kinesis-local (npm; kinesis-mock compiled to JavaScript): a second Kinesis
//! implementation, independent of kinesalite, so a behaviour the tests rely on is not an
//! accident of one mock. Started through `tests/peers/kinesis-local-loopback.js`, which
//! binds it to 127.0.0.1 (it binds 0.0.0.0 by itself). In memory only.

use crate::kinesis::KinesisPeer;
use crate::paths;
use crate::ports;
use crate::process::{ManagedProcess, ProcessSpec, Ready};
use std::path::Path;
use std::time::Duration;

/// A kinesis-local server on 127.0.0.1 (killed when dropped). It serves plain HTTP on
/// [`KinesisLocal::port`] and HTTPS (self-signed) on another free port the tests ignore.
pub struct KinesisLocal {
    port: u16,
    process: ManagedProcess,
}

impl KinesisLocal {
    /// Starts kinesis-local on free ports; `log_dir` receives `kinesis-local.log`.
    #[track_caller]
    pub fn start(log_dir: &Path) -> KinesisLocal {
        paths::node_package("kinesis-local");
        let port = ports::free_port();
        let tls_port = ports::free_port();
        let process = ProcessSpec::new("kinesis-local", "node", &log_dir.join("kinesis-local.log"))
            .current_dir(paths::peers_dir())
            .arg(paths::peers_dir().join("kinesis-local-loopback.js"))
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            .env("LOG_LEVEL", "WARN")
            .ready(Ready::Listening(port), Duration::from_secs(30))
            .start();
        KinesisLocal { port, process }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM, then SIGKILL); its streams are gone.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

impl KinesisPeer for KinesisLocal {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
