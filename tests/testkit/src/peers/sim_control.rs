//! The control channel every Python sim here shares (`tests/sim/*.py`): JSON lines on a
//! TCP port, one request per line, one reply per line, `{"ok": true, ...}` or
//! `{"ok": false, "error": ...}`. The sims' launchers hold one [`SimControl`] each.

use crate::process::ManagedProcess;
use crate::wait;
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

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
