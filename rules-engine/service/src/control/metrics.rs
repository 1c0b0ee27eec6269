//! The control topic's Prometheus metrics (`linewatch_control_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `rule` (a script), `delete` (empty payload), `malformed`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `queued`, `dropped` (the status queue was full) or `failed`.
    pub result: String,
}

/// Cloning is cheap: the metric types are `Arc`s inside.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// Messages received on the rule topics, by kind.
    pub messages: Family<KindLabel, Counter>,
    /// Messages that were not a rule or a delete, by reason (`topic`, `payload`).
    pub malformed: Family<ReasonLabel, Counter>,
    /// Lost connections and failed connection attempts (each followed by a retry).
    pub reconnects: Counter,
    /// 1 while connected to the broker.
    pub connected: Gauge,
    /// Status messages handed to the MQTT client, or failed to be.
    pub statuses: Family<ResultLabel, Counter>,
    /// Rule messages refused as not authorised, by reason (`unsigned`, `bad_signature`).
    pub refused: Family<ReasonLabel, Counter>,
    /// Unsigned rule messages let through by `accept_unsigned`.
    pub unsigned_accepted: Counter,
}

impl ControlMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("linewatch_control");
        r.register(
            "messages",
            "Messages received on the rule topics, by kind (rule, delete, malformed)",
            self.messages.clone(),
        );
        r.register(
            "malformed",
            "Rule topic messages that were neither a rule nor a delete, by reason",
            self.malformed.clone(),
        );
        r.register(
            "reconnects",
            "Lost MQTT connections and failed connection attempts",
            self.reconnects.clone(),
        );
        r.register(
            "connected",
            "1 while connected to the MQTT broker",
            self.connected.clone(),
        );
        r.register(
            "statuses",
            "Status messages queued for publishing (result=queued), dropped on a full queue (dropped) or not publishable (failed)",
            self.statuses.clone(),
        );
        r.register(
            "refused",
            "Rule messages refused as not authorised (unsigned, bad_signature)",
            self.refused.clone(),
        );
        r.register(
            "unsigned_accepted",
            "Unsigned rule messages accepted because mqtt.auth.accept_unsigned is on",
            self.unsigned_accepted.clone(),
        );
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub(crate) fn message(&self, kind: &str) {
        self.messages
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub(crate) fn malformed(&self, reason: &str) {
        self.message("malformed");
        self.malformed
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub(crate) fn status(&self, result: &str) {
        self.statuses
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}
