//! Operations endpoints: the runtime's ops server (`/metrics`, `/healthz`) with the
//! engine's own routes, `/rules` and `/states`, merged in. The run loop publishes an
//! [`OpsView`] after every tick; `/healthz` and the routes only read it.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use linewatch_rules_core::engine::StateView;
use linewatch_runtime::ops::{self, Health};
use linewatch_runtime::shutdown::CancellationToken;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

pub use linewatch_runtime::ops::BindError;

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
    /// `ok` or `degraded` (running, but something needs a look: see `degraded`).
    pub status: &'static str,
    /// Stalled senders, quarantined rules, a watermark lag over the threshold. Still
    /// 200: restarting would not help, an alert should fire.
    pub degraded: Vec<String>,
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
            status: "ok",
            degraded: Vec::new(),
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

/// `/healthz`: 200 while running with nothing wrong; 503 otherwise. The view (phase,
/// problems, watermark, ...) is the body either way.
struct ViewHealth(SharedView);

impl Health for ViewHealth {
    fn check(&self) -> (bool, serde_json::Value) {
        let mut view = read(&self.0).clone();
        let ok = view.phase == Phase::Running && view.problems.is_empty();
        view.status = match (ok, view.degraded.is_empty()) {
            (false, _) => "unhealthy",
            (true, true) => "ok",
            (true, false) => "degraded",
        };
        let details = serde_json::to_value(&view)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        (ok, details)
    }
}

/// Binds now (a taken port is a start-up error), serves until `shutdown` is cancelled.
/// The task ends once requests in flight are answered.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    view: SharedView,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let routes = Router::new()
        .route("/rules", get(rules))
        .route("/states", get(states))
        .with_state(view.clone());
    let health: Arc<dyn Health> = Arc::new(ViewHealth(view));
    let serving = ops::serve(addr, registry, health, routes, shutdown).await?;
    Ok(serving.task)
}

fn read(view: &SharedView) -> std::sync::RwLockReadGuard<'_, OpsView> {
    // A panic elsewhere must not take the endpoints down with it.
    view.read().unwrap_or_else(|p| p.into_inner())
}

async fn rules(State(view): State<SharedView>) -> impl IntoResponse {
    Json(read(&view).rules.clone())
}

async fn states(State(view): State<SharedView>) -> impl IntoResponse {
    Json(read(&view).states.clone())
}
