//! OPC UA metrics per source (the shared ones — points read, read errors,
//! connected — are the driver's).

use crate::telemetry::metrics::SourceLabel;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Default, Debug)]
pub struct OpcUaMetrics {
    /// Monitored items the server accepted in the current session.
    pub monitored_items: Family<SourceLabel, Gauge>,
    /// Nodes the server or the agent rejected in the current session.
    pub rejected_nodes: Family<SourceLabel, Gauge>,
    /// Data change notifications received.
    pub data_changes: Family<SourceLabel, Counter>,
    /// Sessions opened (the first one, and every reconnect).
    pub sessions: Family<SourceLabel, Counter>,
    /// Sessions rebuilt because neither data nor a keep-alive came in time.
    pub watchdog_trips: Family<SourceLabel, Counter>,
    /// 0 down, 1 connecting, 2 active.
    pub session_state: Family<SourceLabel, Gauge>,
    /// Seconds since the last publish response (data or keep-alive).
    pub keep_alive_age_seconds: Family<SourceLabel, Gauge<f64, AtomicU64>>,
}

pub const STATE_DOWN: i64 = 0;
pub const STATE_CONNECTING: i64 = 1;
pub const STATE_ACTIVE: i64 = 2;

impl OpcUaMetrics {
    /// Under the agent's prefix: `linewatch_agent_opcua_…`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("opcua");
        r.register(
            "monitored_items",
            "Monitored items accepted in the current session",
            self.monitored_items.clone(),
        );
        r.register(
            "rejected_nodes",
            "Nodes rejected in the current session (unknown, access denied, unmappable)",
            self.rejected_nodes.clone(),
        );
        r.register(
            "data_changes",
            "Data change notifications received",
            self.data_changes.clone(),
        );
        r.register(
            "sessions",
            "Sessions opened, first and reconnects",
            self.sessions.clone(),
        );
        r.register(
            "watchdog_trips",
            "Sessions rebuilt because no data change nor keep-alive came in time",
            self.watchdog_trips.clone(),
        );
        r.register(
            "session_state",
            "0 down, 1 connecting, 2 active",
            self.session_state.clone(),
        );
        r.register(
            "keep_alive_age_seconds",
            "Seconds since the last publish response",
            self.keep_alive_age_seconds.clone(),
        );
    }
}

/// One source's handles.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    pub monitored_items: Gauge,
    pub rejected_nodes: Gauge,
    pub data_changes: Counter,
    pub sessions: Counter,
    pub watchdog_trips: Counter,
    pub session_state: Gauge,
    pub keep_alive_age_seconds: Gauge<f64, AtomicU64>,
}

impl SourceMetrics {
    pub fn new(m: &OpcUaMetrics, label: &SourceLabel) -> SourceMetrics {
        SourceMetrics {
            monitored_items: m.monitored_items.get_or_create(label).clone(),
            rejected_nodes: m.rejected_nodes.get_or_create(label).clone(),
            data_changes: m.data_changes.get_or_create(label).clone(),
            sessions: m.sessions.get_or_create(label).clone(),
            watchdog_trips: m.watchdog_trips.get_or_create(label).clone(),
            session_state: m.session_state.get_or_create(label).clone(),
            keep_alive_age_seconds: m.keep_alive_age_seconds.get_or_create(label).clone(),
        }
    }
}
