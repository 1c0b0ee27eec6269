//! The one managed-process type: every peer and every program under test runs as a
//! [`ManagedProcess`]. Output goes to a log file (in the test's scratch dir), start-up
//! waits for a readiness condition with a deadline, failures carry the log tail, stopping
//! is SIGTERM then SIGKILL, and the child never outlives the test (killed on drop; on
//! Linux the kernel also kills it if the test process dies first).

use crate::{http, metrics::Scrape, ports, wait};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// When a freshly spawned process counts as up.
#[derive(Debug, Clone)]
pub enum Ready {
    /// As soon as it is spawned (callers wait on their own condition with
    /// [`ManagedProcess::wait_until`]).
    Spawned,
    /// Something accepts TCP connections on 127.0.0.1:port.
    Listening(u16),
    /// `GET path` on `addr` answers 200.
    Http { addr: SocketAddr, path: String },
}

impl Ready {
    fn check(&self) -> Result<(), String> {
        match self {
            Ready::Spawned => Ok(()),
            Ready::Listening(port) if ports::is_listening(*port) => Ok(()),
            Ready::Listening(port) => Err(format!("127.0.0.1:{port} not listening yet")),
            Ready::Http { addr, path } => match http::get(*addr, path)? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("GET {path} answered {code}: {body}")),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Ready::Spawned => "spawned".into(),
            Ready::Listening(port) => format!("listening on 127.0.0.1:{port}"),
            Ready::Http { addr, path } => format!("answering GET {path} 200 on {addr}"),
        }
    }
}

/// What to run; kept so the process can be started again the same way.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    log: PathBuf,
    ready: Ready,
    ready_timeout: Duration,
    metrics: Option<(SocketAddr, String)>,
}

impl ProcessSpec {
    /// `program` named `name` in messages, both output streams appended to `log`.
    pub fn new(name: &str, program: impl Into<PathBuf>, log: &Path) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            log: log.to_owned(),
            ready: Ready::Spawned,
            ready_timeout: Duration::from_secs(30),
            metrics: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The readiness condition and how long (scaled, see [`wait::scaled`]) to wait for it.
    pub fn ready(mut self, ready: Ready, timeout: Duration) -> Self {
        self.ready = ready;
        self.ready_timeout = timeout;
        self
    }

    /// Its Prometheus endpoint (`GET /metrics` on `addr`), for [`ManagedProcess::scrape`]
    /// and [`ManagedProcess::wait_metrics`]; failure messages list the samples whose
    /// names start with `prefix`.
    pub fn metrics(mut self, addr: SocketAddr, prefix: &str) -> Self {
        self.metrics = Some((addr, prefix.to_owned()));
        self
    }

    /// Spawns it and waits until it is ready; panics with the log tail otherwise.
    #[track_caller]
    pub fn start(self) -> ManagedProcess {
        let mut p = ManagedProcess {
            spec: self,
            child: None,
            runs: 0,
        };
        p.start_again();
        p
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        cmd
    }
}

/// A child process of the test (see the module docs).
pub struct ManagedProcess {
    spec: ProcessSpec,
    child: Option<Child>,
    runs: u32,
}

impl ManagedProcess {
    /// Starts the process again from the same spec (after [`kill`](Self::kill),
    /// [`stop`](Self::stop) or [`terminate`](Self::terminate)); a marker line in the log
    /// separates the runs.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.spec.name
        );
        self.runs += 1;
        let name = &self.spec.name;
        let log = &self.spec.log;
        let mut out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: cannot open log {}: {e}", log.display()));
        let marker = format!("===== linewatch-testkit: {name} run {} =====\n", self.runs);
        let _ = std::io::Write::write_all(&mut out, marker.as_bytes());
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{name}: cannot clone log handle: {e}"));
        let mut cmd = self.spec.command();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        self.child = Some(child);
        let ready = self.spec.ready.clone();
        if matches!(ready, Ready::Spawned) {
            return; // a command may well have exited already
        }
        let what = format!("{name} {}", ready.describe());
        let timeout = self.spec.ready_timeout;
        wait::until_blocking(&what, timeout, || {
            self.assert_running();
            ready.check()
        });
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the running process in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.spec.log, lines)
    }

    /// The whole log so far (every run).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.spec.log).unwrap_or_default()).into_owned()
    }

    /// `Some(status)` once the child has exited (it stays reaped; `None` if not started).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Started and not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Panics with the log tail if the process has exited or was stopped.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if self.child.is_none() {
            panic!("{} is not running (stopped by the test)", self.spec.name);
        }
        if let Some(status) = self.try_exit() {
            panic!(
                "{} exited unexpectedly ({status}); last log lines:\n{}",
                self.spec.name,
                self.log_tail(60)
            );
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; the child is not reaped yet
            // (we hold its `Child`), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout` (scaled). Returns the
    /// exit status, or `None` if it had to be killed (or was not running).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Like [`stop`](Self::stop) with another first signal.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit() {
            self.child = None;
            return Some(status);
        }
        self.signal(signal);
        let timeout = wait::scaled(timeout);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.try_exit() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// SIGTERM and wait for a clean exit; panics (after SIGKILL) with the log tail if
    /// that takes longer than `timeout`.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if self.child.is_none() {
            panic!("terminate: {} is not running", self.spec.name);
        }
        match self.stop(timeout) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {timeout:?} of SIGTERM (killed)\nlog:\n{}",
                self.spec.name,
                self.log_tail(60)
            ),
        }
    }

    /// SIGKILL and reap: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the process exits on its own (a command); panics with the log tail
    /// after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.spec.name);
        let status = wait::until_blocking(&what, timeout, || {
            self.try_exit().ok_or_else(|| self.log_tail(10))
        });
        self.child = None;
        status
    }

    /// Polls `check` until it returns `Ok`. Panics at once if the process exits, and
    /// after `timeout` (scaled) with the last `Err`; both messages carry the log tail.
    #[track_caller]
    pub fn wait_until<'a, T: 'a>(
        &'a mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut ManagedProcess) -> Result<T, String> + 'a,
    ) -> impl std::future::Future<Output = T> + 'a {
        let caller = std::panic::Location::caller();
        let what = what.to_owned();
        async move {
            let timeout = wait::scaled(timeout);
            let start = Instant::now();
            loop {
                if let Some(status) = self.try_exit() {
                    panic!(
                        "waiting for {what} (at {caller}): {} exited ({status})\nlog:\n{}",
                        self.spec.name,
                        self.log_tail(60)
                    );
                }
                let last = match check(self) {
                    Ok(v) => return v,
                    Err(e) => e,
                };
                if start.elapsed() >= timeout {
                    panic!(
                        "timed out after {:.1?} waiting for: {what}\n  (waited at {caller})\n  last seen: {last}\n{} log:\n{}",
                        start.elapsed(),
                        self.spec.name,
                        self.log_tail(60)
                    );
                }
                tokio::time::sleep(wait::POLL).await;
            }
        }
    }

    #[track_caller]
    fn metrics_endpoint(&self) -> (SocketAddr, String) {
        match &self.spec.metrics {
            Some(m) => m.clone(),
            None => panic!(
                "{} has no metrics endpoint (ProcessSpec::metrics)",
                self.spec.name
            ),
        }
    }

    /// One scrape of its `/metrics`.
    #[track_caller]
    pub fn try_scrape(&self) -> Result<Scrape, String> {
        scrape(self.metrics_endpoint().0)
    }

    /// One scrape of its `/metrics`; panics with the log if it is not running or fails.
    #[track_caller]
    pub fn scrape(&mut self) -> Scrape {
        self.assert_running();
        match self.try_scrape() {
            Ok(s) => s,
            Err(e) => panic!(
                "scraping {}: {e}\nlog:\n{}",
                self.spec.name,
                self.log_tail(40)
            ),
        }
    }

    /// Polls its `/metrics` until `check` accepts a scrape; panics after `timeout` with the
    /// last `Err`, the process's metrics and its log tail (at once if it exits).
    #[track_caller]
    pub fn wait_metrics<'a, T: 'a>(
        &'a mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Scrape) -> Result<T, String> + 'a,
    ) -> impl std::future::Future<Output = T> + 'a {
        let (addr, prefix) = self.metrics_endpoint();
        self.wait_until(what, timeout, move |_| {
            let s = scrape(addr)?;
            check(&s).map_err(|e| format!("{e}\n  metrics: {}", s.describe(&prefix)))
        })
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scrape of `GET /metrics` on `addr`.
pub fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    match http::get(addr, "/metrics")? {
        (200, body) => Ok(Scrape::parse(&body)),
        (code, body) => Err(format!("/metrics answered {code}: {body}")),
    }
}

/// Linux: the kernel SIGKILLs the child when the spawning thread exits, so a test
/// process killed by a timeout leaves no peer behind.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Last `lines` lines of a text file ("" if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
