//! The webhook as a [`Target`]: one POST per event, classified by HTTP status.

use super::config::ResolvedWebhook;
use super::encoder::encode;
use super::service::{attempt, build_client, classify, error_chain, AttemptResult};
use crate::output::outbox::PendingEvent;
use crate::output::retry::RetryPolicy;
use crate::output::target::{Target, Verdict};
use std::sync::Arc;

/// A webhook target ready to deliver: its resolved config and, once prepared, its client.
#[derive(Debug)]
pub struct WebhookTarget {
    cfg: ResolvedWebhook,
    client: Option<reqwest::Client>,
}

impl WebhookTarget {
    pub fn new(cfg: ResolvedWebhook) -> Self {
        WebhookTarget { cfg, client: None }
    }

    pub fn config(&self) -> &ResolvedWebhook {
        &self.cfg
    }
}

impl Target for WebhookTarget {
    type Outcome = AttemptResult;

    fn name(&self) -> &str {
        self.cfg.name()
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn destination(&self) -> String {
        linewatch_runtime::redact::url(&self.cfg.config.url)
    }

    fn max_pending(&self) -> usize {
        self.cfg.config.max_pending
    }

    fn policy(&self) -> RetryPolicy {
        self.cfg.config.retry_policy()
    }

    async fn prepare(&mut self) -> Result<(), String> {
        if self.client.is_none() {
            let client = build_client(&self.cfg.config).map_err(|e| error_chain(&e))?;
            self.client = Some(client);
        }
        Ok(())
    }

    async fn deliver(&self, batch: &[Arc<PendingEvent>], now_ms: u64) -> AttemptResult {
        let (Some(client), Some(body)) = (&self.client, encode(batch)) else {
            return AttemptResult::NotSent("the HTTP client is not built".into());
        };
        attempt(client, &self.cfg, body, now_ms / 1000).await
    }

    fn classify(&self, outcome: &AttemptResult) -> Verdict {
        classify(outcome)
    }

    fn status(&self, outcome: &AttemptResult) -> Option<u16> {
        outcome.status()
    }

    fn may_have_arrived(&self, outcome: &AttemptResult) -> bool {
        outcome.may_have_arrived()
    }
}
