//! The control channel every Python sim here shares (`tests/sim/*.py`): JSON lines on a
//! TCP port, one request per line, one reply per line, `{"ok": true, ...}` or
//! `{"ok": false, "error": ...}`. Each sim's launcher wraps one [`Sim`]: the process
//! and its [`SimControl`].

use crate::process::{ManagedProcess, ProcessSpec, Ready};
use crate::{paths, ports, wait};
use serde_json::{json, Value as Json};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A running Python sim on 127.0.0.1 (killed when dropped).
pub struct Sim {
    port: u16,
    process: ManagedProcess,
    control: SimControl,
}

impl Sim {
    /// Starts `tests/sim/<script>.py --port P --control-port C <args>` and waits until
    /// it listens on `P` (within `ready`) and answers a ping on `C`.
    #[track_caller]
    pub fn start(
        name: &str,
        script: &str,
        port: Option<u16>,
        args: Vec<OsString>,
        ready: Duration,
        log_dir: &Path,
    ) -> Sim {
        let port = port.unwrap_or_else(ports::free_port);
        let control_port = ports::free_port();
        let log = log_dir.join(format!("{script}-{port}.log"));
        let process = ProcessSpec::new(name, paths::venv_python(), &log)
            .arg(paths::sim_dir().join(format!("{script}.py")))
            .args(["--port", &port.to_string()])
            .args(["--control-port", &control_port.to_string()])
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .ready(Ready::Listening(port), ready)
            .start();
        let mut sim = Sim {
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

    /// Sends one control request; panics with the sim's log if it fails.
    #[track_caller]
    pub fn request(&mut self, req: Json) -> Json {
        self.control.request(req, &self.process)
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.process.signal(libc::SIGCONT);
    }

    /// Stops the sim (the peer "goes away"); its port becomes free.
    pub fn stop(&mut self) {
        self.control.disconnect();
        // A paused process would not see SIGTERM.
        self.process.signal(libc::SIGCONT);
        self.process.stop(Duration::from_secs(5));
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Launchers deref to their [`Sim`] for the calls every sim answers.
macro_rules! deref_sim {
    ($launcher:ty) => {
        impl std::ops::Deref for $launcher {
            type Target = $crate::peers::sim_control::Sim;
            fn deref(&self) -> &Self::Target {
                &self.sim
            }
        }
        impl std::ops::DerefMut for $launcher {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.sim
            }
        }
    };
}
pub(crate) use deref_sim;

/// A (re)connecting client of a sim's control port.
pub struct SimControl {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl SimControl {
    pub fn new(port: u16) -> SimControl {
        SimControl { port, conn: None }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forgets the connection (the sim restarted); the next request connects again.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Waits until the sim answers a ping, failing early if `process` exits.
    #[track_caller]
    pub fn wait_ready(&mut self, process: &mut ManagedProcess) {
        let what = format!(
            "{} answering on its control port {}",
            process.name(),
            self.port
        );
        wait::until_blocking(&what, Duration::from_secs(30), || {
            process.assert_running();
            self.try_request(&json!({"op": "ping"})).map(|_| ())
        });
    }

    /// One request; a failure drops the connection so the next one starts afresh.
    pub fn try_request(&mut self, req: &Json) -> Result<Json, String> {
        let r = self.exchange(req);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// One request; panics with the sim's log if it fails.
    #[track_caller]
    pub fn request(&mut self, req: Json, process: &ManagedProcess) -> Json {
        match self.try_request(&req) {
            Ok(r) => r,
            Err(e) => panic!(
                "{} control: {e}\nits log:\n{}",
                process.name(),
                process.log_tail(30)
            ),
        }
    }

    fn exchange(&mut self, req: &Json) -> Result<Json, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, self.port).into(),
                Duration::from_secs(1),
            )
            .map_err(|e| format!("control connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().ok_or("no control connection")?;
        let mut line = req.to_string();
        line.push('\n');
        conn.get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("control write: {e}"))?;
        let mut reply = String::new();
        conn.read_line(&mut reply)
            .map_err(|e| format!("control read: {e}"))?;
        let reply: Json =
            serde_json::from_str(&reply).map_err(|e| format!("control reply {reply:?}: {e}"))?;
        if reply["ok"] == Json::Bool(true) {
            Ok(reply)
        } else {
            Err(format!("refused {req}: {}", reply["error"]))
        }
    }
}
