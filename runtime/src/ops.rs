//! The operations HTTP server: `/metrics` (Prometheus), `/healthz`, and whatever
//! routes a program adds (the rule engine's `/rules` and `/states`).
//!
//! It listens on the configured address only (default loopback in both programs: ops
//! data is not for the plant network) and binds before it returns, so a port already
//! taken is a start-up error naming the address rather than a log line nobody reads.
//! It stops, finishing requests in flight, when the shutdown token is cancelled.

use crate::shutdown::CancellationToken;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

/// The content type of `/metrics`: prometheus-client writes OpenMetrics text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` reports, asked on every request: `(healthy, details as JSON)`.
/// Healthy answers 200, otherwise 503; the details are the body either way.
pub trait Health: Send + Sync + 'static {
    fn check(&self) -> (bool, serde_json::Value);
}

impl<F> Health for F
where
    F: Fn() -> (bool, serde_json::Value) + Send + Sync + 'static,
{
    fn check(&self) -> (bool, serde_json::Value) {
        self()
    }
}

/// The ops address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics and /healthz: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A running server.
#[derive(Debug)]
pub struct Serving {
    /// The bound address (the real port when the configured one was 0).
    pub local_addr: SocketAddr,
    /// Ends after shutdown, once requests in flight are answered.
    pub task: tokio::task::JoinHandle<()>,
}

struct AppState {
    registry: Registry,
    health: Arc<dyn Health>,
}

/// Binds `addr` now, then serves `/metrics` from `registry`, `/healthz` from `health`
/// and the program's `routes` (a stateless `Router`, e.g. `Router::new().route(..)
/// .with_state(view)`) until `shutdown` is cancelled. Call inside the runtime.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<dyn Health>,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<Serving, BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let state = Arc::new(AppState { registry, health });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(routes);
    tracing::info!(addr = %local_addr, "serving the ops endpoints (/metrics, /healthz)");
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "ops server stopped");
        }
    });
    Ok(Serving { local_addr, task })
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics failed: {e}"),
        ),
    }
}

async fn healthz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let (ok, details) = s.health.check();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 GET; returns (status, content type, body).
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let ctype = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or("")
            .to_owned();
        (status, ctype, body.to_owned())
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn serves_metrics_health_and_the_programs_routes_until_shutdown() {
        let mut registry = Registry::default();
        let c = Counter::<u64>::default();
        registry.register("lw_test_things", "Things", c.clone());
        c.inc_by(3);
        let healthy = Arc::new(AtomicBool::new(false));
        let h = Arc::clone(&healthy);
        let health: Arc<dyn Health> = Arc::new(move || {
            let ok = h.load(Ordering::SeqCst);
            (
                ok,
                serde_json::json!({ "phase": if ok { "running" } else { "starting" } }),
            )
        });
        let routes = Router::new().route("/rules", get(|| async { "[]" }));
        let shutdown = CancellationToken::new();
        let s = serve(loopback(), registry, health, routes, shutdown.clone())
            .await
            .unwrap();
        assert!(s.local_addr.ip().is_loopback());

        let (code, ctype, body) = http_get(s.local_addr, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(ctype, METRICS_CONTENT_TYPE);
        assert!(body.contains("lw_test_things_total 3"), "{body}");

        let (code, _, body) = http_get(s.local_addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("starting"), "{body}");
        healthy.store(true, Ordering::SeqCst);
        let (code, ctype, body) = http_get(s.local_addr, "/healthz").await;
        assert_eq!((code, ctype.as_str()), (200, "application/json"));
        assert!(body.contains("running"), "{body}");

        assert_eq!(http_get(s.local_addr, "/rules").await.2, "[]");
        assert_eq!(http_get(s.local_addr, "/nope").await.0, 404);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), s.task)
            .await
            .expect("stops on the token")
            .unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_start_up_error_naming_the_address() {
        let taken = std::net::TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(
            addr,
            Registry::default(),
            Arc::new(|| (true, serde_json::Value::Null)),
            Router::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.addr, addr);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
