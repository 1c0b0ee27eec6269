//! An HTTP proxy on 127.0.0.1 in front of a Kinesis endpoint that fails chosen entries of
//! PutRecords calls the way Kinesis does (per entry, `ErrorCode`
//! `ProvisionedThroughputExceededException`), while the rest of the call really is
//! written.
//!
//! A failed entry is taken out of the request before it is forwarded, so the server
//! never writes it; its error is put back at its index in the server's answer (and
//! `FailedRecordCount` raised). The client sees an exact partial failure: what it was
//! told failed is not in the stream, what it was told succeeded is. A test can then
//! demand no loss and no duplicate at all, rather than "duplicates as resent batches".
//!
//! Speaks HTTP/1.1 with `Content-Length` requests (what the AWS SDK sends) and
//! `Content-Length` or chunked answers; keep-alive connections are followed request by
//! request.

use crate::proxy::listen;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The error Kinesis gives a throttled entry.
pub const THROTTLED: &str = "ProvisionedThroughputExceededException";

#[derive(Default)]
struct Plan {
    /// Partition key whose entries fail, and in how many more calls.
    key: Option<String>,
    calls_left: u64,
}

#[derive(Default)]
struct Shared {
    plan: Mutex<Plan>,
    put_calls: AtomicU64,
    failed_calls: AtomicU64,
    failed_entries: AtomicU64,
}

/// Forwards 127.0.0.1:`port()` to an upstream Kinesis port; stops when dropped.
pub struct PutRecordsProxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl PutRecordsProxy {
    /// Starts forwarding to 127.0.0.1:`upstream_port`. Needs a tokio runtime.
    #[track_caller]
    pub fn start(upstream_port: u16) -> impl std::future::Future<Output = PutRecordsProxy> {
        let caller = std::panic::Location::caller();
        async move {
            let shared = Arc::new(Shared::default());
            let conn_shared = shared.clone();
            let (port, task) = listen(caller, upstream_port, move |client, upstream| {
                serve(client, upstream, conn_shared.clone())
            })
            .await;
            PutRecordsProxy { port, shared, task }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// In each of the next `calls` PutRecords calls that hold an entry of
    /// `partition_key` and at least one other entry, that key's entries fail as
    /// throttled (and are not written). Calls with only that key pass untouched, so
    /// the server never sees an empty request.
    pub fn fail_key(&self, partition_key: &str, calls: u64) {
        let mut plan = self.shared.plan.lock().unwrap_or_else(|e| e.into_inner());
        plan.key = Some(partition_key.to_owned());
        plan.calls_left = calls;
    }

    /// Calls still to fail under the current plan.
    pub fn calls_left(&self) -> u64 {
        self.shared
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls_left
    }

    /// PutRecords calls seen.
    pub fn put_calls(&self) -> u64 {
        self.shared.put_calls.load(Ordering::SeqCst)
    }

    /// Calls in which entries were failed.
    pub fn failed_calls(&self) -> u64 {
        self.shared.failed_calls.load(Ordering::SeqCst)
    }

    /// Entries failed (never forwarded).
    pub fn failed_entries(&self) -> u64 {
        self.shared.failed_entries.load(Ordering::SeqCst)
    }
}

impl Drop for PutRecordsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP message: the head's lines (start line first) and the body.
struct Message {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Serialised with `Content-Length` of the (possibly new) body, never chunked.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        out.push_str(&self.head[0]);
        out.push_str("\r\n");
        for l in self.head.iter().skip(1) {
            let name = l.split_once(':').map(|(k, _)| k.trim()).unwrap_or("");
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Reads one message; `None` at a clean end of the connection or on garbage.
async fn read_message<R: tokio::io::AsyncRead + Unpin>(rd: &mut BufReader<R>) -> Option<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            if head.is_empty() {
                continue;
            }
            break;
        }
        head.push(line);
    }
    let mut msg = Message {
        head,
        body: Vec::new(),
    };
    if msg
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            rd.read_line(&mut size).await.ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            rd.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            msg.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = msg.header("content-length").unwrap_or("0").parse().ok()?;
        msg.body = vec![0u8; len];
        rd.read_exact(&mut msg.body).await.ok()?;
    }
    Some(msg)
}

async fn serve(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_rd, mut client_wr) = client.into_split();
    let (server_rd, mut server_wr) = server.into_split();
    let (mut client_rd, mut server_rd) = (BufReader::new(client_rd), BufReader::new(server_rd));
    while let Some(mut req) = read_message(&mut client_rd).await {
        let is_put = req
            .header("x-amz-target")
            .is_some_and(|t| t.ends_with(".PutRecords"));
        let mut failed: Vec<usize> = Vec::new();
        if is_put {
            shared.put_calls.fetch_add(1, Ordering::SeqCst);
            failed = take_failed_entries(&mut req, &shared);
        }
        if server_wr.write_all(&req.to_bytes()).await.is_err() {
            return;
        }
        let Some(mut resp) = read_message(&mut server_rd).await else {
            return;
        };
        if !failed.is_empty() {
            put_back_errors(&mut resp, &failed);
        }
        if client_wr.write_all(&resp.to_bytes()).await.is_err() {
            return;
        }
    }
}

/// Applies the plan to one PutRecords request: removes the failed entries from its body
/// and returns their indexes (in the original request).
fn take_failed_entries(req: &mut Message, shared: &Shared) -> Vec<usize> {
    let mut plan = shared.plan.lock().unwrap_or_else(|e| e.into_inner());
    let Some(key) = plan.key.clone().filter(|_| plan.calls_left > 0) else {
        return Vec::new();
    };
    let Ok(mut body) = serde_json::from_slice::<Json>(&req.body) else {
        return Vec::new();
    };
    let Some(records) = body.get_mut("Records").and_then(Json::as_array_mut) else {
        return Vec::new();
    };
    let failed: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["PartitionKey"].as_str() == Some(key.as_str()))
        .map(|(i, _)| i)
        .collect();
    if failed.is_empty() || failed.len() == records.len() {
        return Vec::new();
    }
    let mut i = 0;
    records.retain(|_| {
        let keep = !failed.contains(&i);
        i += 1;
        keep
    });
    req.body = serde_json::to_vec(&body).unwrap_or_default();
    plan.calls_left -= 1;
    shared.failed_calls.fetch_add(1, Ordering::SeqCst);
    shared
        .failed_entries
        .fetch_add(failed.len() as u64, Ordering::SeqCst);
    failed
}

/// Puts a throttling error at each `failed` index of a PutRecords answer.
fn put_back_errors(resp: &mut Message, failed: &[usize]) {
    let Ok(mut body) = serde_json::from_slice::<Json>(&resp.body) else {
        return; // not a PutRecords answer (an error): the client sees it as is
    };
    let Some(records) = body.get_mut("Records").and_then(Json::as_array_mut) else {
        return;
    };
    for &i in failed {
        let error = serde_json::json!({
            "ErrorCode": THROTTLED,
            "ErrorMessage": "Rate exceeded for shard (injected by the test proxy)",
        });
        records.insert(i.min(records.len()), error);
    }
    let n = body["FailedRecordCount"].as_u64().unwrap_or(0) + failed.len() as u64;
    body["FailedRecordCount"] = n.into();
    resp.body = serde_json::to_vec(&body).unwrap_or_default();
}
