//! The delivery task of one target, and the replay of dead letters.
//!
//! One task per target delivers that target's FIFO in order: the head is retried until it
//! is delivered or dead-lettered before the next event is sent, so a target sees
//! transitions in the order the engine emitted them. Targets do not wait for each other.
//! Attempt counts live in memory: after a restart an event's count starts again, while its
//! age still counts from `created_at_ms`.

use crate::output::config::{ResolvedWebhook, WebhookConfig, WebhookConfigError};
use crate::output::dead_letter::{DeadLetter, DeadLetterError, DeadLetterStore};
use crate::output::encoder::request::build_request;
use crate::output::metrics::{target as labels, DeadLabels, OutputMetrics};
use crate::output::outbox::{Outbox, PendingEvent};
use crate::output::retry::{self, AttemptResult, DeadReason, Decision, RetryPolicy};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use uuid::Uuid;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often gauges are refreshed while a task waits.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// At most one failure log line per target per this interval; the rest are counted.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for repeated log lines.
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new() -> Self {
        LogLimit {
            last: None,
            suppressed: 0,
        }
    }
    /// `Some(suppressed since the last line)` if a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The in-memory attempt state of the head event.
#[derive(Debug, Clone)]
struct Current {
    id: Uuid,
    attempts: u32,
    first_attempt_ms: u64,
    last_attempt_ms: u64,
    last: Option<AttemptResult>,
}

impl Current {
    fn new(id: Uuid) -> Self {
        Current {
            id,
            attempts: 0,
            first_attempt_ms: 0,
            last_attempt_ms: 0,
            last: None,
        }
    }
}

/// The HTTP client of a target: no redirects (a 3xx is a configuration problem to
/// surface, not to follow), connect bounded by the request timeout.
pub fn build_client(cfg: &WebhookConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .build()
}

/// `e` with its sources, for logs and dead-letter entries.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// One POST of `body` to the target; never fails, the outcome says how it went.
pub async fn attempt(
    client: &reqwest::Client,
    target: &ResolvedWebhook,
    body: &str,
    now_unix_s: u64,
) -> AttemptResult {
    let req = match build_request(client, target, body, now_unix_s) {
        Ok(r) => r,
        Err(e) => return AttemptResult::Network(format!("building the request: {e}")),
    };
    match client.execute(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry::parse_retry_after);
            // Read the (small) answer so the connection can be reused; bounded by the timeout.
            let _ = resp.bytes().await;
            AttemptResult::Status {
                status,
                retry_after,
            }
        }
        Err(e) if e.is_timeout() => AttemptResult::Timeout,
        Err(e) => AttemptResult::Network(error_chain(&e)),
    }
}

fn shutting_down(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves when shutdown is requested (or its sender is gone).
async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

struct Task {
    cfg: ResolvedWebhook,
    name: String,
    policy: RetryPolicy,
    outbox: Arc<Outbox>,
    dead: DeadLetterStore,
    metrics: OutputMetrics,
    shutdown: watch::Receiver<bool>,
    current: Option<Current>,
    fail_log: LogLimit,
    evict_log: LogLimit,
}

/// Delivers `cfg`'s queue of `outbox` until `shutdown` turns true (or its sender is
/// dropped). Undelivered events stay in the outbox for the next start.
pub async fn run_target(
    cfg: ResolvedWebhook,
    outbox: Arc<Outbox>,
    dead: DeadLetterStore,
    metrics: OutputMetrics,
    shutdown: watch::Receiver<bool>,
) {
    let name = cfg.name().to_string();
    let mut task = Task {
        policy: RetryPolicy::from_config(&cfg.config),
        cfg,
        name,
        outbox,
        dead,
        metrics,
        shutdown,
        current: None,
        fail_log: LogLimit::new(),
        evict_log: LogLimit::new(),
    };
    tracing::info!(target_name = %task.name, url = %task.cfg.config.url, "webhook delivery started");
    let client = loop {
        match build_client(&task.cfg.config) {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(target_name = %task.name, error = %error_chain(&e), "cannot build the HTTP client; retrying in 30s");
                if !task.pause(Duration::from_secs(30)).await {
                    return;
                }
            }
        }
    };
    task.run(&client).await;
    task.refresh_gauges();
    tracing::info!(target_name = %task.name, pending = task.outbox.pending(&task.name), "webhook delivery stopped");
}

impl Task {
    /// Sleeps `d`; `false` if shutdown came first.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !shutting_down(&self.shutdown),
            _ = shutdown_signal(&mut self.shutdown) => false,
        }
    }

    fn refresh_gauges(&self) {
        let l = labels(&self.name);
        self.metrics
            .pending
            .get_or_create(&l)
            .set(self.outbox.pending(&self.name) as i64);
        let age = self
            .outbox
            .oldest_created_at_ms(&self.name)
            .map_or(0.0, |c| now_ms().saturating_sub(c) as f64 / 1000.0);
        self.metrics
            .oldest_pending_age_seconds
            .get_or_create(&l)
            .set(age);
    }

    async fn run(&mut self, client: &reqwest::Client) {
        loop {
            if shutting_down(&self.shutdown) {
                return;
            }
            if !self.drain_evicted().await {
                return;
            }
            self.refresh_gauges();
            let Some(ev) = self.outbox.head(&self.name) else {
                self.current = None;
                let outbox = self.outbox.clone();
                tokio::select! {
                    _ = outbox.changed(&self.name) => {}
                    _ = shutdown_signal(&mut self.shutdown) => return,
                }
                continue;
            };
            if self.current.as_ref().is_none_or(|c| c.id != ev.id) {
                self.current = Some(Current::new(ev.id));
            }
            let start = now_ms();
            let Some(result) = self.attempt(client, &ev, start).await else {
                return;
            };
            let now = now_ms();
            let cur = self.current.get_or_insert_with(|| Current::new(ev.id));
            cur.last = Some(result.clone());
            let attempts = cur.attempts;
            let first = cur.first_attempt_ms;
            match retry::decide(
                &self.policy,
                &result,
                attempts,
                ev.created_at_ms,
                now,
                fastrand::f64(),
            ) {
                Decision::Delivered => {
                    self.outbox.complete(&self.name, ev.id);
                    let l = labels(&self.name);
                    self.metrics.delivered.get_or_create(&l).inc();
                    self.metrics
                        .delivery_latency_seconds
                        .get_or_create(&l)
                        .observe(now.saturating_sub(first) as f64 / 1000.0);
                    tracing::debug!(target_name = %self.name, event_id = %ev.id, attempts, "delivered");
                    self.current = None;
                }
                Decision::DeadLetter(reason) => {
                    if !self.dead_letter(&ev, reason).await {
                        return;
                    }
                }
                Decision::Retry(delay) => {
                    self.metrics
                        .retries
                        .get_or_create(&labels(&self.name))
                        .inc();
                    if let Some(suppressed) = self.fail_log.allow() {
                        tracing::warn!(
                            target_name = %self.name,
                            event_id = %ev.id,
                            status = result.status(),
                            error = %result,
                            attempt = attempts,
                            next_delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                            pending = self.outbox.pending(&self.name),
                            suppressed,
                            "webhook delivery failed; will retry"
                        );
                    }
                    if !self.back_off(ev.id, delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// One attempt at the head; `None` on shutdown (the event stays queued).
    async fn attempt(
        &mut self,
        client: &reqwest::Client,
        ev: &PendingEvent,
        now: u64,
    ) -> Option<AttemptResult> {
        if let Some(cur) = self.current.as_mut() {
            cur.attempts += 1;
            if cur.first_attempt_ms == 0 {
                cur.first_attempt_ms = now;
            }
            cur.last_attempt_ms = now;
        }
        self.metrics
            .attempts
            .get_or_create(&labels(&self.name))
            .inc();
        let cfg = self.cfg.clone();
        tokio::select! {
            r = attempt(client, &cfg, &ev.body, now / 1000) => Some(r),
            _ = shutdown_signal(&mut self.shutdown) => None,
        }
    }

    /// Waits out a retry delay, promptly ending on shutdown or when the head was evicted
    /// meanwhile. `false` on shutdown.
    async fn back_off(&mut self, id: Uuid, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        let outbox = self.outbox.clone();
        loop {
            let tick = (until - tokio::time::Instant::now()).min(GAUGE_REFRESH);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = outbox.changed(&self.name) => {
                    if outbox.head(&self.name).map(|e| e.id) != Some(id) {
                        return true;
                    }
                }
                _ = shutdown_signal(&mut self.shutdown) => return false,
            }
            self.refresh_gauges();
            if tokio::time::Instant::now() >= until {
                return true;
            }
        }
    }

    /// Writes events evicted by `max_pending` to the store. `false` on shutdown.
    async fn drain_evicted(&mut self) -> bool {
        for ev in self.outbox.evicted(&self.name) {
            if let Some(suppressed) = self.evict_log.allow() {
                tracing::warn!(
                    target_name = %self.name,
                    event_id = %ev.id,
                    max_pending = self.cfg.config.max_pending,
                    suppressed,
                    "outbox full: oldest pending event goes to the dead-letter store"
                );
            }
            if !self.dead_letter(&ev, DeadReason::OutboxFull).await {
                return false;
            }
        }
        true
    }

    /// Stores `ev` as a dead letter and takes it off the queue. A failing store is retried
    /// (the event is kept meanwhile); `false` on shutdown before it could be written.
    async fn dead_letter(&mut self, ev: &Arc<PendingEvent>, reason: DeadReason) -> bool {
        let now = now_ms();
        let cur = self.current.as_ref().filter(|c| c.id == ev.id);
        let (attempts, first, last) = cur.map_or((0, now, now), |c| {
            if c.attempts == 0 {
                (0, now, now)
            } else {
                (c.attempts, c.first_attempt_ms, c.last_attempt_ms)
            }
        });
        let last_result = cur.and_then(|c| c.last.clone());
        let status = last_result.as_ref().and_then(AttemptResult::status);
        let error = last_result
            .as_ref()
            .filter(|r| r.status().is_none())
            .map(|r| r.to_string());
        let dl = DeadLetter::new(
            &self.name,
            ev,
            reason.as_str(),
            status,
            error,
            attempts,
            first,
            last,
        );
        let mut wait = Duration::from_secs(1);
        loop {
            let store = self.dead.clone();
            let entry = dl.clone();
            let res = tokio::task::spawn_blocking(move || store.put(&entry))
                .await
                .unwrap_or_else(|e| {
                    Err(DeadLetterError::Io {
                        op: "write",
                        path: self.dead.dir().to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match res {
                Ok(path) => {
                    if reason != DeadReason::OutboxFull {
                        tracing::warn!(
                            target_name = %self.name,
                            event_id = %ev.id,
                            transition_id = %ev.transition_id,
                            reason = reason.as_str(),
                            status,
                            attempts,
                            path = %path.display(),
                            "webhook event dead-lettered"
                        );
                    }
                    break;
                }
                Err(e) => {
                    self.metrics
                        .dead_letter_errors
                        .get_or_create(&labels(&self.name))
                        .inc();
                    tracing::error!(
                        target_name = %self.name,
                        event_id = %ev.id,
                        error = %e,
                        retry_in = %humantime::format_duration(wait),
                        "cannot write the dead-letter entry; the event stays pending"
                    );
                    if !self.pause(wait).await {
                        return false;
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.outbox.complete(&self.name, ev.id);
        self.metrics
            .dead_letters
            .get_or_create(&DeadLabels {
                target: self.name.clone(),
                reason: reason.label().to_string(),
            })
            .inc();
        if self.current.as_ref().is_some_and(|c| c.id == ev.id) {
            self.current = None;
        }
        true
    }
}

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
    let store = DeadLetterStore::open(store_dir)?;
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
        let now = now_ms();
        let result = attempt(client, cfg, &e.body(), now / 1000).await;
        if retry::classify(&result) == retry::Class::Delivered {
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
