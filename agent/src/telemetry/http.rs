//! `/metrics` (Prometheus text) and `/healthz` (JSON) on the configured address.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What `/healthz` reports; filled by the app from live state.
pub trait Health: Send + Sync + 'static {
    /// `(healthy, details as JSON)`.
    fn check(&self) -> (bool, serde_json::Value);
}

struct AppState {
    registry: Registry,
    health: Arc<dyn Health>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Bind now (so a taken port is a start-up error), serve until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<dyn Health>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let state = Arc::new(AppState { registry, health });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    tracing::info!(%addr, "serving /metrics and /healthz");
    Ok(tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
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
