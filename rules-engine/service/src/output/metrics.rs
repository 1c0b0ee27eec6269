//! Per-target delivery metrics (`linewatch_rules_webhook_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabels {
    pub target: String,
    /// `rejected`, `max_attempts`, `max_age`, `outbox_full`.
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms … ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

#[derive(Clone, Debug)]
pub struct OutputMetrics {
    pub delivered: Family<TargetLabels, Counter>,
    pub attempts: Family<TargetLabels, Counter>,
    pub retries: Family<TargetLabels, Counter>,
    pub dead_letters: Family<DeadLabels, Counter>,
    /// Errors writing the dead-letter store (the event stays in the outbox).
    pub dead_letter_errors: Family<TargetLabels, Counter>,
    pub pending: Family<TargetLabels, Gauge>,
    pub oldest_pending_age_seconds: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    /// From the first attempt to the 2xx, retries included.
    pub delivery_latency_seconds: Family<TargetLabels, Histogram, fn() -> Histogram>,
}

impl Default for OutputMetrics {
    fn default() -> Self {
        OutputMetrics {
            delivered: Family::default(),
            attempts: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            dead_letter_errors: Family::default(),
            pending: Family::default(),
            oldest_pending_age_seconds: Family::default(),
            delivery_latency_seconds: Family::new_with_constructor(latency_histogram),
        }
    }
}

pub(crate) fn target(t: &str) -> TargetLabels {
    TargetLabels {
        target: t.to_string(),
    }
}

impl OutputMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("linewatch_rules_webhook");
        r.register(
            "delivered",
            "Events delivered (2xx) per target",
            self.delivered.clone(),
        );
        r.register(
            "attempts",
            "POST attempts per target",
            self.attempts.clone(),
        );
        r.register(
            "retries",
            "Attempts that failed and will be retried",
            self.retries.clone(),
        );
        r.register(
            "dead_letters",
            "Events written to the dead-letter store, by reason",
            self.dead_letters.clone(),
        );
        r.register(
            "dead_letter_errors",
            "Failed writes to the dead-letter store (retried; the event is kept)",
            self.dead_letter_errors.clone(),
        );
        r.register(
            "pending",
            "Events waiting for delivery per target",
            self.pending.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest event waiting for the target (0 when none)",
            self.oldest_pending_age_seconds.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From the first attempt to delivery, retries included",
            self.delivery_latency_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_target_labels() {
        let m = OutputMetrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.delivered.get_or_create(&target("ops")).inc();
        m.dead_letters
            .get_or_create(&DeadLabels {
                target: "ops".into(),
                reason: "rejected".into(),
            })
            .inc();
        m.delivery_latency_seconds
            .get_or_create(&target("ops"))
            .observe(0.02);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
        assert!(
            s.contains("linewatch_rules_webhook_delivered_total{target=\"ops\"} 1"),
            "{s}"
        );
        assert!(s.contains(
            "linewatch_rules_webhook_dead_letters_total{target=\"ops\",reason=\"rejected\"} 1"
        ));
        assert!(
            s.contains("linewatch_rules_webhook_delivery_latency_seconds_count{target=\"ops\"} 1")
        );
    }
}
