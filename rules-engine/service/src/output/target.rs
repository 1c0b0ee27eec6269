//! What every delivery target is to the delivery task: something that takes a batch of
//! encoded events and says, for each outcome, whether to retry, dead-letter or move on.
//!
//! A target kind (the webhook today; a Kinesis stream or EventBridge `PutEvents` later)
//! implements [`Target`]; the delivery task ([`super::delivery::run_target`]), the
//! outbox, the retry policy and the dead-letter store are the same for every kind.

use super::outbox::PendingEvent;
use super::retry::RetryPolicy;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What the target says about one delivery attempt of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every event of the batch was accepted.
    Done,
    /// A transient failure: try the same batch again, after `after` if the target asked
    /// for a delay (e.g. `Retry-After`), otherwise after the policy's backoff.
    Retry { after: Option<Duration> },
    /// Retrying cannot help (e.g. an HTTP 4xx): the batch goes to the dead-letter store.
    DeadLetter,
}

/// One delivery target. Implementations do the I/O of one attempt and classify its
/// outcome; they keep no retry state (the delivery task does).
pub trait Target: Send + Sync + 'static {
    /// How an attempt ended, as the target sees it (an HTTP status, a network error…).
    type Outcome: Clone + std::fmt::Display + Send + Sync + 'static;

    /// Unique among the configured targets: the outbox queue, the metrics label and the
    /// dead-letter folder.
    fn name(&self) -> &str;

    /// For logs: `webhook`, `kinesis`, ….
    fn kind(&self) -> &'static str;

    /// Where events go, for logs (a URL, a stream name); no secrets.
    fn destination(&self) -> String;

    /// Events per attempt, at least 1 (a webhook takes one; `PutEvents` takes 10).
    fn max_batch(&self) -> usize {
        1
    }

    /// Events waiting for this target; beyond it the oldest goes to the dead-letter store.
    fn max_pending(&self) -> usize;

    /// Backoff and give-up limits.
    fn policy(&self) -> RetryPolicy;

    /// Gets the target ready (builds a client); retried by the task while it fails.
    fn prepare(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// One attempt at delivering `batch` (oldest first, never empty, at most
    /// [`max_batch`](Self::max_batch) events) at `now_ms` (ms since the epoch, from the
    /// task's clock). Never fails: the outcome says how it went.
    fn deliver(
        &self,
        batch: &[Arc<PendingEvent>],
        now_ms: u64,
    ) -> impl Future<Output = Self::Outcome> + Send;

    /// Retry, dead-letter or done: the target's reading of its own outcome.
    fn classify(&self, outcome: &Self::Outcome) -> Verdict;

    /// The status code the target answered with, kept in dead-letter entries.
    fn status(&self, _outcome: &Self::Outcome) -> Option<u16> {
        None
    }

    /// Whether a failed attempt may still have reached the target (a timeout, a broken
    /// connection): its retry may then deliver a duplicate, which consumers drop by the
    /// event id. False when nothing left the process (a refused connect).
    fn may_have_arrived(&self, _outcome: &Self::Outcome) -> bool {
        true
    }
}

/// What the outbox needs to know of a target: its queue's name and bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub max_pending: usize,
}

impl QueueSpec {
    pub fn new(name: impl Into<String>, max_pending: usize) -> Self {
        QueueSpec {
            name: name.into(),
            max_pending,
        }
    }

    /// The queue of a built target.
    pub fn of<T: Target>(target: &T) -> Self {
        QueueSpec::new(target.name(), target.max_pending())
    }
}
