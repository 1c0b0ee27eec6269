//! A webhook receiver on 127.0.0.1: records every request (headers, body, arrival order)
//! and answers what the test programs (a fixed [`Answer`], "500 for the next k requests",
//! a status per path, a `Retry-After`, or never).
//!
//! It runs its own single-threaded tokio runtime on a background thread, so it keeps
//! answering whatever the test's runtime is doing, and stops when dropped.

use crate::wait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One request as it arrived, with the status it was answered with.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival order, from 0.
    pub seq: usize,
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with; 0 if it was never answered ([`Answer::Hang`]).
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`None` if it is not JSON).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The envelope's `id`, if the body is an object with a string `id`.
    pub fn event_id(&self) -> Option<String> {
        self.json()?.get("id")?.as_str().map(str::to_owned)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Answered 2xx: the sender may consider it delivered.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `POST /path id=… status` — for failure messages.
    pub fn describe(&self) -> String {
        let id = self.event_id().unwrap_or_else(|| "-".into());
        let tid = self
            .json()
            .and_then(|j| j.pointer("/detail/transitionId").cloned())
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!(
            "#{} {} {} → {} id={id} {tid}",
            self.seq, self.method, self.path, self.status
        )
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// The status with a `Retry-After: SECONDS` header.
    RetryAfter(u16, u64),
    /// Never answers (the connection stays open until the receiver stops).
    Hang,
}

impl Answer {
    fn status(self) -> u16 {
        match self {
            Answer::Status(c) | Answer::RetryAfter(c, _) => c,
            Answer::Hang => 0,
        }
    }
}

impl Default for Answer {
    fn default() -> Self {
        Answer::Status(200)
    }
}

#[derive(Debug, Default)]
struct Program {
    default: Answer,
    /// Answers for the next requests, consumed first.
    next: std::collections::VecDeque<Answer>,
    per_path: HashMap<String, Answer>,
    /// How long to wait before answering (a slow consumer keeps deliveries in flight).
    delay: Duration,
}

impl Program {
    fn answer(&mut self, path: &str) -> Answer {
        if let Some(a) = self.next.pop_front() {
            return a;
        }
        self.per_path.get(path).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Default)]
struct Shared {
    program: Program,
    requests: Vec<Request>,
}

/// The running receiver (stopped when dropped).
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicking handler cannot leave the log half-written: recover the data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// Starts on a free port of 127.0.0.1, answering 200 to everything.
    #[track_caller]
    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    /// Starts on 127.0.0.1:`port` (0: a free one), answering 200 to everything; e.g. a
    /// receiver that appears where connections were refused so far.
    #[track_caller]
    pub fn start_on(port: u16) -> Receiver {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("receiver: cannot bind 127.0.0.1:{port}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("receiver: no local address: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("receiver: cannot make the listener non-blocking: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("e2e-receiver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("receiver: cannot build a runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("receiver: cannot adopt the listener: {e}");
                            return;
                        }
                    };
                    let app = axum::Router::new().fallback(handle).with_state(state);
                    // Not a graceful shutdown: a request left hanging must not hold up the drop.
                    tokio::select! {
                        res = axum::serve(listener, app) => {
                            if let Err(e) = res {
                                eprintln!("receiver: server error: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                rt.shutdown_background();
            })
            .unwrap_or_else(|e| panic!("receiver: cannot spawn its thread: {e}"));
        Receiver {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer `code` from now on (after any queued [`Receiver::fail_next`] answers),
    /// on paths without their own status.
    pub fn set_status(&self, code: u16) {
        self.set_answer(Answer::Status(code));
    }

    /// Answer `answer` from now on (after any queued answers), on paths without their own.
    pub fn set_answer(&self, answer: Answer) {
        lock(&self.shared).program.default = answer;
    }

    /// Answer the next `k` requests (any path) with `code`, then as before.
    pub fn fail_next(&self, code: u16, k: usize) {
        self.answer_next(std::iter::repeat_n(Answer::Status(code), k));
    }

    /// Answer the next requests (any path) with `answers`, in order, then as before.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.shared).program.next.extend(answers);
    }

    /// Answer `code` on `path` (after any queued [`Receiver::fail_next`] answers).
    pub fn set_path_status(&self, path: &str, code: u16) {
        lock(&self.shared)
            .program
            .per_path
            .insert(path.to_owned(), Answer::Status(code));
    }

    /// Wait `delay` before answering each request (recorded on arrival).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared).program.delay = delay;
    }

    /// Queued "next" answers not used yet.
    pub fn pending_failures(&self) -> usize {
        lock(&self.shared).program.next.len()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared).requests.clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared).requests.len()
    }

    /// Requests answered 2xx, in arrival order (duplicates included).
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(Request::accepted)
            .collect()
    }

    /// The first accepted copy of each event id, in arrival order.
    pub fn accepted_unique(&self) -> Vec<Request> {
        let mut seen = HashSet::new();
        self.accepted()
            .into_iter()
            .filter(|r| r.event_id().is_some_and(|id| seen.insert(id)))
            .collect()
    }

    /// Accepted requests grouped by event id (every copy), for duplicate checks.
    pub fn accepted_by_id(&self) -> BTreeMap<String, Vec<Request>> {
        let mut m: BTreeMap<String, Vec<Request>> = BTreeMap::new();
        for r in self.accepted() {
            if let Some(id) = r.event_id() {
                m.entry(id).or_default().push(r);
            }
        }
        m
    }

    /// A short listing of the last `n` requests, for failure messages.
    pub fn describe_last(&self, n: usize) -> String {
        let all = self.requests();
        let lines: Vec<String> = all[all.len().saturating_sub(n)..]
            .iter()
            .map(Request::describe)
            .collect();
        format!("{} requests; last:\n  {}", all.len(), lines.join("\n  "))
    }

    /// Waits until at least `n` distinct event ids were accepted; returns the first copy
    /// of each, in arrival order.
    #[track_caller]
    pub fn wait_unique(
        &self,
        n: usize,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Vec<Request>> + '_ {
        self.wait_for(
            &format!("{n} distinct events accepted by the receiver"),
            timeout,
            move |r| {
                let u = r.accepted_unique();
                if u.len() >= n {
                    Ok(u)
                } else {
                    Err(format!(
                        "{} distinct accepted; {}",
                        u.len(),
                        r.describe_last(5)
                    ))
                }
            },
        )
    }

    /// Waits until every id of `ids` was accepted at least once.
    #[track_caller]
    pub fn wait_ids<'a>(
        &'a self,
        ids: &'a [String],
        timeout: Duration,
    ) -> impl std::future::Future<Output = Vec<Request>> + 'a {
        self.wait_for(
            &format!("{} given event ids accepted", ids.len()),
            timeout,
            move |r| {
                let got: HashSet<String> =
                    r.accepted().iter().filter_map(Request::event_id).collect();
                let missing: Vec<&String> = ids.iter().filter(|i| !got.contains(*i)).collect();
                if missing.is_empty() {
                    Ok(r.accepted_unique())
                } else {
                    Err(format!(
                        "{} of {} missing (first {:?}); {}",
                        missing.len(),
                        ids.len(),
                        missing.first(),
                        r.describe_last(5)
                    ))
                }
            },
        )
    }

    /// Polls `check` on the receiver until it returns `Ok`.
    #[track_caller]
    pub fn wait_for<'a, T: 'a>(
        &'a self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Receiver) -> Result<T, String> + 'a,
    ) -> impl std::future::Future<Output = T> + 'a {
        wait::until(what, timeout, async move || check(self))
    }

    /// Blocks until no request arrived for `quiet` (at most `timeout`); for "nothing more
    /// comes" checks. Returns the number of requests at that point.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) -> usize {
        let start = Instant::now();
        let mut last_count = self.request_count();
        let mut last_change = Instant::now();
        while start.elapsed() < wait::scaled(timeout) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let c = self.request_count();
            if c != last_count {
                last_count = c;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
        last_count
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Mutex<Shared>>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    // Up to 16 MiB: an envelope is a few KiB; anything bigger is recorded truncated-by-error.
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(b) => b.to_vec(),
        Err(e) => format!("<unreadable body: {e}>").into_bytes(),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_owned();
    let (answer, delay) = {
        let mut s = lock(&shared);
        let answer = s.program.answer(&path);
        let seq = s.requests.len();
        s.requests.push(Request {
            seq,
            at: Instant::now(),
            method: parts.method.to_string(),
            path,
            headers,
            body,
            status: answer.status(),
        });
        (answer, s.program.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = answer.status();
    let code = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let text = format!("e2e receiver: {status}\n");
    match answer {
        Answer::Status(_) => axum::response::IntoResponse::into_response((code, text)),
        Answer::RetryAfter(_, secs) => axum::response::IntoResponse::into_response((
            code,
            [("retry-after", secs.to_string())],
            text,
        )),
        Answer::Hang => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(addr: SocketAddr, path: &str, body: &str) -> u16 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status")
    }

    #[test]
    fn records_and_answers_as_programmed() {
        let r = Receiver::start();
        assert_eq!(post(r.addr(), "/events", r#"{"id":"a"}"#), 200);
        r.fail_next(500, 2);
        assert_eq!(post(r.addr(), "/events", r#"{"id":"b"}"#), 500);
        assert_eq!(post(r.addr(), "/events", r#"{"id":"b"}"#), 500);
        assert_eq!(post(r.addr(), "/events", r#"{"id":"b"}"#), 200);
        r.set_path_status("/bad", 400);
        assert_eq!(post(r.addr(), "/bad", r#"{"id":"c"}"#), 400);
        r.set_status(503);
        assert_eq!(post(r.addr(), "/events", r#"{"id":"d"}"#), 503);
        r.set_status(200);
        assert_eq!(post(r.addr(), "/events", r#"{"id":"a"}"#), 200);

        let all = r.requests();
        assert_eq!(all.len(), 7);
        assert_eq!(all[0].header("content-type"), Some("application/json"));
        assert_eq!(all[1].status, 500);
        assert_eq!(all[4].path, "/bad");
        let ids: Vec<String> = r
            .accepted_unique()
            .iter()
            .filter_map(Request::event_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(r.accepted_by_id()["a"].len(), 2);
    }

    #[test]
    fn retry_after_and_a_hang_are_answered_and_the_drop_does_not_wait_for_the_hang() {
        use std::io::{Read, Write};
        let r = Receiver::start();
        r.answer_next([Answer::RetryAfter(503, 7), Answer::Hang]);
        let mut s = std::net::TcpStream::connect(r.addr()).expect("connect");
        write!(
            s,
            "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.to_ascii_lowercase().contains("retry-after: 7"), "{out}");
        let mut hung = std::net::TcpStream::connect(r.addr()).expect("connect");
        write!(hung, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        hung.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(hung.read(&mut buf).is_err(), "a hang never answers");
        assert_eq!(r.requests()[1].status, 0);
        let start = Instant::now();
        drop(r);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the drop waited for the hang"
        );
    }
}
