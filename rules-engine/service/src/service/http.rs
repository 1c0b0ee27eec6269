//! Operations endpoints: `/metrics` (Prometheus), `/healthz`, `/rules`, `/states`.
//! The run loop publishes an [`OpsView`] after every tick; handlers only read it.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use linewatch_rules_core::engine::StateView;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Starting,
    /// Waiting for the retained rules before reading data.
    SyncingRules,
    Running,
    Stopping,
}

/// What the endpoints show, refreshed by the run loop.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpsView {
    pub phase: Phase,
    pub instance: String,
    pub partition: String,
    pub mqtt_connected: bool,
    pub watermark: Option<u64>,
    /// Wall clock (ms) of the last checkpoint written.
    pub last_checkpoint: Option<u64>,
    /// Why the instance is not healthy, if it is not.
    pub problems: Vec<String>,
    #[serde(skip)]
    pub rules: Vec<RuleView>,
    #[serde(skip)]
    pub states: Vec<StateRow>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub rule_id: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRow {
    pub rule_id: String,
    pub equipment_id: String,
    #[serde(flatten)]
    pub state: StateView,
}

impl OpsView {
    pub fn new(instance: String, partition: String) -> OpsView {
        OpsView {
            phase: Phase::Starting,
            instance,
            partition,
            mqtt_connected: false,
            watermark: None,
            last_checkpoint: None,
            problems: Vec::new(),
            rules: Vec::new(),
            states: Vec::new(),
        }
    }

    pub fn set_states(&mut self, states: &BTreeMap<String, BTreeMap<String, StateView>>) {
        self.states = states
            .iter()
            .flat_map(|(rule, per)| {
                per.iter().map(move |(equipment, s)| StateRow {
                    rule_id: rule.clone(),
                    equipment_id: equipment.clone(),
                    state: s.clone(),
                })
            })
            .collect();
    }
}

pub type SharedView = Arc<RwLock<OpsView>>;

struct AppState {
    registry: Registry,
    view: SharedView,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics and /healthz: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bind now (a taken port is a start-up error), serve until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    view: SharedView,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let state = Arc::new(AppState { registry, view });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/rules", get(rules))
        .route("/states", get(states))
        .with_state(state);
    tracing::info!(%addr, "serving /metrics /healthz /rules /states");
    Ok(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "operations server stopped");
        }
    }))
}

fn read(view: &SharedView) -> std::sync::RwLockReadGuard<'_, OpsView> {
    // A panic elsewhere must not take the endpoints down with it.
    view.read().unwrap_or_else(|p| p.into_inner())
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

/// 200 while running with nothing wrong; 503 with the reasons otherwise.
async fn healthz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let view = read(&s.view).clone();
    let ok = view.phase == Phase::Running && view.problems.is_empty();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(view))
}

async fn rules(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(read(&s.view).rules.clone())
}

async fn states(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(read(&s.view).states.clone())
}
