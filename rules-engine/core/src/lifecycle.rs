//! Rule changes and what applying one did.

use crate::rule::Rule;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A change to the rule set, applied at a point of the stream.
#[derive(Debug, Clone)]
pub enum RuleChange {
    /// Add a rule, or replace it if this version is higher than the loaded one.
    Upsert(Arc<Rule>),
    /// Remove a rule, its state and its timers.
    Delete { id: String },
}

impl RuleChange {
    pub fn rule_id(&self) -> &str {
        match self {
            RuleChange::Upsert(r) => r.id(),
            RuleChange::Delete { id } => id,
        }
    }
}

/// The result of applying a [`RuleChange`]; the service publishes it on the status topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum ChangeOutcome {
    #[serde(rename_all = "camelCase")]
    Added { rule_id: String, version: u64 },
    /// `kept`: groups whose definition did not change and kept their state;
    /// `reset`: new or changed groups, which start fresh.
    #[serde(rename_all = "camelCase")]
    Updated {
        rule_id: String,
        from: u64,
        to: u64,
        kept: Vec<String>,
        reset: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Deleted { rule_id: String, version: u64 },
    /// The offered version is not higher than the loaded one: nothing changed.
    #[serde(rename_all = "camelCase")]
    IgnoredStaleVersion {
        rule_id: String,
        loaded: u64,
        offered: u64,
    },
    /// Delete of a rule that is not loaded.
    #[serde(rename_all = "camelCase")]
    NotFound { rule_id: String },
}

impl ChangeOutcome {
    /// Did the rule set change?
    pub fn applied(&self) -> bool {
        matches!(
            self,
            ChangeOutcome::Added { .. }
                | ChangeOutcome::Updated { .. }
                | ChangeOutcome::Deleted { .. }
        )
    }
}

/// What to do with a change, given the version loaded now (if any). Shared by the
/// evaluator and the worker router, so both always agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Add,
    Update { from: u64 },
    Delete { version: u64 },
    Stale { loaded: u64, offered: u64 },
    NotFound,
}

pub(crate) fn decide(loaded: Option<u64>, change: &RuleChange) -> Decision {
    match (change, loaded) {
        (RuleChange::Upsert(_), None) => Decision::Add,
        (RuleChange::Upsert(r), Some(v)) if r.version() > v => Decision::Update { from: v },
        (RuleChange::Upsert(r), Some(v)) => Decision::Stale {
            loaded: v,
            offered: r.version(),
        },
        (RuleChange::Delete { .. }, Some(v)) => Decision::Delete { version: v },
        (RuleChange::Delete { .. }, None) => Decision::NotFound,
    }
}
