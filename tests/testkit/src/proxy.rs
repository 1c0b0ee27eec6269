//! A TCP proxy on 127.0.0.1 that can lose responses: the request reaches the server
//! (Kinesis accepts the batch) but the client never hears back — an unknown outcome,
//! the one case where the agent must resend a whole batch. It can also corrupt one
//! response (a malformed answer from a PLC), or cut the link altogether (a gateway's
//! uplink down: open connections drop, new ones close unanswered, nothing reaches
//! the server).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Default)]
struct Shared {
    lose_responses: AtomicBool,
    lost: AtomicU64,
    /// 0: off; n: flip the bits of byte n − 1 of the next response chunk that long.
    corrupt_at: AtomicU64,
    corrupted: AtomicU64,
    cut: AtomicBool,
    cut_changed: tokio::sync::Notify,
}

/// Forwards 127.0.0.1:`port()` to an upstream port; stops when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding to 127.0.0.1:`upstream_port`. Needs a tokio runtime.
    #[track_caller]
    pub fn start(upstream_port: u16) -> impl std::future::Future<Output = FaultProxy> {
        let caller = std::panic::Location::caller();
        async move {
            let shared = Arc::new(Shared::default());
            let conn_shared = shared.clone();
            let (port, task) = listen(caller, upstream_port, move |client, upstream| {
                forward(client, upstream, conn_shared.clone())
            })
            .await;
            FaultProxy { port, shared, task }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// While on, every response is swallowed and its connection cut.
    pub fn lose_responses(&self, on: bool) {
        self.shared.lose_responses.store(on, Ordering::SeqCst);
    }

    /// Swallows responses until `n` have been lost (within `timeout`), then forwards
    /// them again.
    #[track_caller]
    pub fn lose_responses_until(
        &self,
        n: u64,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + '_ {
        let what = format!("{n} lost responses");
        self.lose_responses(true);
        let waited = crate::wait::until(&what, timeout, async move || {
            let lost = self.responses_lost();
            if lost >= n {
                Ok(())
            } else {
                Err(format!("{lost} lost"))
            }
        });
        async move {
            waited.await;
            self.lose_responses(false);
        }
    }

    /// While on, the link is down: every open connection drops and new ones are
    /// closed before a byte is forwarded.
    pub fn cut(&self, on: bool) {
        self.shared.cut.store(on, Ordering::SeqCst);
        self.shared.cut_changed.notify_waiters();
    }

    /// The next response chunk longer than `offset` bytes reaches the client with
    /// byte `offset` inverted (once): a malformed answer from a live server.
    pub fn corrupt_next_response(&self, offset: usize) {
        self.shared
            .corrupt_at
            .store(offset as u64 + 1, Ordering::SeqCst);
    }

    /// Responses corrupted so far.
    pub fn responses_corrupted(&self) -> u64 {
        self.shared.corrupted.load(Ordering::SeqCst)
    }

    /// Responses swallowed so far.
    pub fn responses_lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1 on a free port and hands every accepted connection, with the
/// upstream address, to `serve`, until the returned task is aborted (which aborts
/// every connection too). Shared by the test kit's proxies.
pub(crate) async fn listen<F, Fut>(
    caller: &std::panic::Location<'_>,
    upstream_port: u16,
    serve: F,
) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap_or_else(|e| panic!("proxy (at {caller}): cannot bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("proxy: no local address: {e}"))
        .port();
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        conns.spawn(serve(client, upstream));
                    }
                    Err(_) => continue,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    (port, task)
}

/// Returns once the link is cut.
async fn until_cut(shared: &Shared) {
    loop {
        let changed = shared.cut_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.cut.load(Ordering::SeqCst) {
            return;
        }
        changed.await;
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    if shared.cut.load(Ordering::SeqCst) {
        return;
    }
    // Upstream down: close the client too (like a refused connection, but after accept).
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    };
    let responses = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if shared.lose_responses.load(Ordering::SeqCst) {
                // The server has done the work; the client learns nothing.
                shared.lost.fetch_add(1, Ordering::SeqCst);
                break;
            }
            let at = shared.corrupt_at.load(Ordering::SeqCst);
            if at > 0
                && n as u64 >= at
                && shared
                    .corrupt_at
                    .compare_exchange(at, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                buf[at as usize - 1] ^= 0xFF;
                shared.corrupted.fetch_add(1, Ordering::SeqCst);
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends first ends the connection (both halves drop here).
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
        _ = until_cut(&shared) => {}
    }
}
