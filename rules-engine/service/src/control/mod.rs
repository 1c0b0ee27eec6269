//! The MQTT control topic: rules in, status out.
//!
//! * [`message`]: topic names, the rule and status payloads (pure);
//! * [`auth`]: signed rules and statuses, key files (Ed25519);
//! * [`intake`]: verify and compile rule messages off the engine's task;
//! * [`sync`]: when the retained rules have all arrived after start-up (pure);
//! * [`config`]: the `[mqtt]` table;
//! * [`client`]: the connection — subscribes, reconnects, emits [`ControlEvent`]s,
//!   publishes [`RuleStatus`]es;
//! * [`metrics`]: the `linewatch_control_*` metrics.
//!
//! The engine decides what a message does (compile, version check, apply); this
//! module only carries messages. Formats and semantics: `docs/control-topic.md`.

pub mod auth;
pub mod client;
pub mod config;
pub mod intake;
pub mod message;
pub mod metrics;
pub mod sync;

pub use client::{start, ControlHandle};
pub use config::{AuthConfig, ControlConfig, TlsConfig};
pub use message::{
    check_rule_id, DeleteMessage, RuleMessage, RulePayload, RuleStatus, StatusKind, Topics,
};
pub use metrics::ControlMetrics;

/// What the control connection tells the engine, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// A rule message: an upsert adds or replaces the rule (at its version), a delete
    /// removes it. Not verified yet (the engine checks signatures). `retained`:
    /// delivered because of the subscription (the stored state) rather than published
    /// just now.
    Rule {
        rule_id: String,
        payload: RulePayload,
        retained: bool,
    },
    /// A message on the rule topics that is neither: bad topic or bad payload. The
    /// rule id, when the topic has a valid one, is `Topics::rule_id_of(topic)`.
    Malformed { topic: String, error: String },
    /// Sent exactly once, after the first subscription's retained messages have
    /// arrived (`timed_out: false`), or at `retained_wait` (`timed_out: true`).
    /// `rules`: rules received until then.
    InitialSyncDone { rules: usize, timed_out: bool },
    /// Connected (again) to the broker; the subscription follows.
    Connected,
    /// The connection was lost or could not be made; retrying with backoff.
    Disconnected { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control topic configuration: {0}")]
    Config(String),
}
