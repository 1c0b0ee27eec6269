//! Replaying dead letters: each selected entry is POSTed once to its webhook.

use super::config::{ResolvedWebhook, WebhookConfig, WebhookConfigError};
use super::service::{attempt, build_client, classify, error_chain};
use crate::output::dead_letter::{DeadLetterError, DeadLetterStore};
use crate::output::target::Verdict;
use linewatch_runtime::{Clock, SystemClock};
use std::path::Path;
use uuid::Uuid;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Entries selected.
    pub selected: usize,
    /// Delivered and removed from the store.
    pub delivered: usize,
    /// Attempted, not delivered; kept with the reason updated.
    pub failed: usize,
    /// Kept because their target is no longer configured: `(target, entries)`.
    pub unknown_targets: Vec<(String, usize)>,
    /// Requested ids that are not in the store (for the selected target, if any).
    pub not_found: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] DeadLetterError),
    #[error(transparent)]
    Config(#[from] WebhookConfigError),
    #[error("webhook {target:?}: cannot build the HTTP client: {message}")]
    Client { target: String, message: String },
}

/// POSTs each selected dead letter once to its target (with that target's auth).
/// Delivered entries are removed; failed ones are kept with `reason = "replay failed"`
/// and the attempt recorded. `ids` empty selects every entry (of `target`, if given).
pub async fn replay(
    store_dir: &Path,
    targets: &[WebhookConfig],
    target: Option<&str>,
    ids: &[Uuid],
) -> Result<ReplayReport, ReplayError> {
    let store = DeadLetterStore::existing(store_dir);
    let mut entries = store.list(target)?;
    let mut report = ReplayReport::default();
    if !ids.is_empty() {
        entries.retain(|e| ids.contains(&e.id));
        report.not_found = ids
            .iter()
            .filter(|id| !entries.iter().any(|e| e.id == **id))
            .copied()
            .collect();
    }
    report.selected = entries.len();
    // Resolve (secrets from the environment) only the targets that are needed.
    let mut resolved: Vec<(ResolvedWebhook, reqwest::Client)> = Vec::new();
    for e in &entries {
        if resolved.iter().any(|(r, _)| r.name() == e.target) {
            continue;
        }
        if let Some(cfg) = targets.iter().find(|t| t.name == e.target) {
            let r = cfg.resolve()?;
            let client = build_client(cfg).map_err(|err| ReplayError::Client {
                target: cfg.name.clone(),
                message: error_chain(&err),
            })?;
            resolved.push((r, client));
        }
    }
    for mut e in entries {
        let Some((cfg, client)) = resolved.iter().find(|(r, _)| r.name() == e.target) else {
            match report
                .unknown_targets
                .iter_mut()
                .find(|(t, _)| *t == e.target)
            {
                Some((_, n)) => *n += 1,
                None => report.unknown_targets.push((e.target.clone(), 1)),
            }
            continue;
        };
        let now = SystemClock.now_ms();
        let result = attempt(client, cfg, &e.body(), now / 1000).await;
        if classify(&result) == Verdict::Done {
            store.remove(&e.target, e.id)?;
            report.delivered += 1;
            tracing::info!(target_name = %e.target, event_id = %e.id, "dead letter replayed");
        } else {
            e.reason = "replay failed".into();
            e.status = result.status();
            e.error = result.status().is_none().then(|| result.to_string());
            e.attempts += 1;
            e.last_attempt_at = now;
            store.put(&e)?;
            report.failed += 1;
            tracing::warn!(target_name = %e.target, event_id = %e.id, error = %result, "replay failed; entry kept");
        }
    }
    Ok(report)
}
