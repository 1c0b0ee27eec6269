//! The engine's own Prometheus metrics (the source, control and output modules
//! register theirs next to these).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderLabel {
    pub sender: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Caps the distinct `sender` label values: the first `max` senders get their own
/// series, later ones share `other` (120,000 fake sender ids must not make `/metrics`
/// 32 MB). A sender keeps the label it got first.
#[derive(Debug)]
pub struct SenderLabels {
    max: usize,
    known: std::collections::HashSet<String>,
}

pub const OTHER_SENDERS: &str = "other";

impl SenderLabels {
    pub fn new(max: usize) -> SenderLabels {
        SenderLabels {
            max,
            known: std::collections::HashSet::new(),
        }
    }

    pub fn label(&mut self, sender: &str) -> SenderLabel {
        if self.known.contains(sender) {
            return SenderLabel {
                sender: sender.to_owned(),
            };
        }
        if self.known.len() < self.max {
            self.known.insert(sender.to_owned());
            return SenderLabel {
                sender: sender.to_owned(),
            };
        }
        SenderLabel {
            sender: OTHER_SENDERS.to_owned(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// Records read from the stream, by what became of them.
    pub records: Family<OutcomeLabel, Counter>,
    pub late: Family<SenderLabel, Counter>,
    pub future: Family<SenderLabel, Counter>,
    pub resends: Family<SenderLabel, Counter>,
    pub senders: Family<StateLabel, Gauge>,
    pub senders_pruned: Counter,
    pub over_budget: Counter,
    pub rules_quarantined: Gauge,
    pub watermark_ms: Gauge,
    pub watermark_lag_seconds: Gauge<f64, AtomicU64>,
    pub equipment_clocks: Gauge,
    pub equipment_clock_lowest_ms: Gauge,
    pub reorder_buffered: Gauge,
    pub rules_loaded: Gauge,
    pub rule_changes: Family<StatusLabel, Counter>,
    pub group_evaluations: Counter,
    pub evaluation_errors: Counter,
    pub timers_fired: Counter,
    pub transitions: Counter,
    pub diagnostics: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub dead_letters_suppressed: Family<ReasonLabel, Counter>,
    pub checkpoint_duration: Histogram,
    pub checkpoint_age_seconds: Gauge<f64, AtomicU64>,
    pub checkpoint_bytes: Gauge,
    pub checkpoint_written_bytes: Counter,
    pub checkpoint_disk_bytes: Gauge,
    pub checkpoint_failures: Counter,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            records: Family::default(),
            late: Family::default(),
            future: Family::default(),
            resends: Family::default(),
            senders: Family::default(),
            senders_pruned: Counter::default(),
            over_budget: Counter::default(),
            rules_quarantined: Gauge::default(),
            watermark_ms: Gauge::default(),
            watermark_lag_seconds: Gauge::default(),
            equipment_clocks: Gauge::default(),
            equipment_clock_lowest_ms: Gauge::default(),
            reorder_buffered: Gauge::default(),
            rules_loaded: Gauge::default(),
            rule_changes: Family::default(),
            group_evaluations: Counter::default(),
            evaluation_errors: Counter::default(),
            timers_fired: Counter::default(),
            transitions: Counter::default(),
            diagnostics: Counter::default(),
            dead_letters: Family::default(),
            dead_letters_suppressed: Family::default(),
            checkpoint_duration: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            checkpoint_age_seconds: Gauge::default(),
            checkpoint_bytes: Gauge::default(),
            checkpoint_written_bytes: Counter::default(),
            checkpoint_disk_bytes: Gauge::default(),
            checkpoint_failures: Counter::default(),
        }
    }
}

impl EngineMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("linewatch_rules");
        r.register(
            "records",
            "Records read from Kinesis, by outcome (point, heartbeat, invalid, late_dropped, late_applied, future, resend, oversized)",
            self.records.clone(),
        );
        r.register(
            "late_points",
            "Points at or below the watermark on arrival, per sender",
            self.late.clone(),
        );
        r.register(
            "future_points",
            "Points refused for an event time beyond their arrival time plus watermark.max_future_skew, per sender",
            self.future.clone(),
        );
        r.register(
            "resent_points",
            "Points dropped because the agent sent them again (sequence number already seen in the sender's lane), per sender",
            self.resends.clone(),
        );
        r.register(
            "senders",
            "Senders known to the watermark, by state (active, idle, one_off, stalled)",
            self.senders.clone(),
        );
        r.register(
            "senders_pruned",
            "Senders forgotten after watermark.prune_after without a point",
            self.senders_pruned.clone(),
        );
        r.register(
            "evaluations_over_budget",
            "Condition-group evaluations that took longer than rules.eval_budget",
            self.over_budget.clone(),
        );
        r.register(
            "rules_quarantined",
            "Rules quarantined for exceeding their time budget",
            self.rules_quarantined.clone(),
        );
        r.register(
            "watermark_ms",
            "The watermark (watermark.scope = \"equipment\": the most advanced equipment clock), ms since the Unix epoch",
            self.watermark_ms.clone(),
        );
        r.register(
            "equipment_clocks",
            "Equipment with their own event-time clock (watermark.scope = \"equipment\")",
            self.equipment_clocks.clone(),
        );
        r.register(
            "equipment_clock_lowest_ms",
            "The least advanced equipment clock (watermark.scope = \"equipment\"), ms since the Unix epoch",
            self.equipment_clock_lowest_ms.clone(),
        );
        r.register(
            "watermark_lag_seconds",
            "Wall clock minus the watermark",
            self.watermark_lag_seconds.clone(),
        );
        r.register(
            "reorder_buffered",
            "Points waiting for the watermark",
            self.reorder_buffered.clone(),
        );
        r.register(
            "rules_loaded",
            "Rules this instance owns",
            self.rules_loaded.clone(),
        );
        r.register(
            "rule_changes",
            "Control-topic messages applied, by status",
            self.rule_changes.clone(),
        );
        r.register(
            "group_evaluations",
            "Condition-group evaluations",
            self.group_evaluations.clone(),
        );
        r.register(
            "evaluation_errors",
            "Condition-group evaluations that failed",
            self.evaluation_errors.clone(),
        );
        r.register(
            "timers_fired",
            "Hold timers fired",
            self.timers_fired.clone(),
        );
        r.register(
            "transitions",
            "State transitions emitted",
            self.transitions.clone(),
        );
        r.register(
            "diagnostics",
            "Rule diagnostics (errors in groups) reported",
            self.diagnostics.clone(),
        );
        r.register(
            "dead_letters",
            "Records dead-lettered, by reason (written to the points dead-letter file or, over its budget, suppressed)",
            self.dead_letters.clone(),
        );
        r.register(
            "dead_letters_suppressed",
            "Dead-lettered records not written to the file because a flood exceeded its budget (1,000 per reason per second), by reason",
            self.dead_letters_suppressed.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Time to write one checkpoint",
            self.checkpoint_duration.clone(),
        );
        r.register(
            "checkpoint_age_seconds",
            "Age of the last checkpoint written",
            self.checkpoint_age_seconds.clone(),
        );
        r.register(
            "checkpoint_bytes",
            "Size of the last checkpoint",
            self.checkpoint_bytes.clone(),
        );
        r.register(
            "checkpoint_written_bytes",
            "Bytes of checkpoints written since start (its rate is the checkpoint's growth)",
            self.checkpoint_written_bytes.clone(),
        );
        r.register(
            "checkpoint_disk_bytes",
            "Bytes the checkpoint store takes on disk",
            self.checkpoint_disk_bytes.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoints that could not be written",
            self.checkpoint_failures.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_labels_are_capped_with_an_other_bucket() {
        let mut l = SenderLabels::new(2);
        assert_eq!(l.label("a").sender, "a");
        assert_eq!(l.label("b").sender, "b");
        assert_eq!(l.label("c").sender, OTHER_SENDERS);
        assert_eq!(l.label("a").sender, "a");
        assert_eq!(l.label("d").sender, OTHER_SENDERS);
    }
}
