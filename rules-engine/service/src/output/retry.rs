//! What to do after an attempt: pure, with the time and the jitter passed in.
//!
//! The target classifies its outcome ([`Verdict`]); this module adds the limits every
//! target shares, as EventBridge API destinations do: a retryable failure is retried with
//! exponential backoff and full jitter until `max_attempts` or `max_age`, then
//! dead-lettered; what the target rejects is dead-lettered at once.

use super::target::Verdict;
use linewatch_runtime::{BackoffPolicy, Jitter};
use std::time::Duration;

/// Why an event went to the dead-letter store; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// A status that retrying cannot fix.
    Rejected,
    MaxAttempts,
    MaxAge,
    /// `max_pending` was reached and this was the oldest event.
    OutboxFull,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Rejected => "rejected",
            DeadReason::MaxAttempts => "max attempts",
            DeadReason::MaxAge => "max age",
            DeadReason::OutboxFull => "outbox full",
        }
    }
    /// For metric labels.
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::Rejected => "rejected",
            DeadReason::MaxAttempts => "max_attempts",
            DeadReason::MaxAge => "max_age",
            DeadReason::OutboxFull => "outbox_full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The delays: doubling from `initial` to `max`, full jitter.
    pub fn backoff(&self) -> BackoffPolicy {
        BackoffPolicy::new(self.initial, self.max, Jitter::Full)
    }

    /// Upper bound of the delay after the `attempts`-th failure: `initial × 2^(attempts-1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        self.backoff().step(attempts.saturating_sub(1))
    }
}

/// After an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    DeadLetter(DeadReason),
}

/// Decide after the `attempts`-th attempt (counting from 1) of a batch whose oldest event
/// was created at `created_at_ms` ended with `verdict` at `now_ms`. `jitter` in `[0, 1)`
/// draws the delay uniformly below the backoff ceiling ("full jitter"). A delay the target
/// asked for (`Retry { after: Some(..) }`) is used instead, capped at the backoff maximum.
/// The delay never reaches past the age limit, so the last attempt happens at it.
pub fn decide(
    policy: &RetryPolicy,
    verdict: Verdict,
    attempts: u32,
    created_at_ms: u64,
    now_ms: u64,
    jitter: f64,
) -> Decision {
    let after = match verdict {
        Verdict::Done => return Decision::Delivered,
        Verdict::DeadLetter => return Decision::DeadLetter(DeadReason::Rejected),
        Verdict::Retry { after } => after,
    };
    if attempts >= policy.max_attempts {
        return Decision::DeadLetter(DeadReason::MaxAttempts);
    }
    let age = Duration::from_millis(now_ms.saturating_sub(created_at_ms));
    if age >= policy.max_age {
        return Decision::DeadLetter(DeadReason::MaxAge);
    }
    let delay = match after {
        Some(after) => after.min(policy.max),
        None => policy
            .backoff()
            .delay_at(attempts.saturating_sub(1), jitter),
    };
    Decision::Retry(delay.min(policy.max_age - age))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_attempts: 3,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_verdict_decides_and_the_limits_apply_to_retries_only() {
        let p = policy();
        assert_eq!(
            decide(&p, Verdict::Done, 99, 0, 999_999, 0.5),
            Decision::Delivered
        );
        assert_eq!(
            decide(&p, Verdict::DeadLetter, 1, 0, 0, 0.5),
            Decision::DeadLetter(DeadReason::Rejected)
        );
        let retry = Verdict::Retry { after: None };
        assert_eq!(
            decide(&p, retry, 2, 0, 0, 0.5),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            decide(&p, retry, 3, 0, 0, 0.5),
            Decision::DeadLetter(DeadReason::MaxAttempts)
        );
        assert_eq!(
            decide(&p, retry, 1, 0, 60_000, 0.5),
            Decision::DeadLetter(DeadReason::MaxAge)
        );
        let asked = Verdict::Retry {
            after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            decide(&p, asked, 1, 0, 0, 0.0),
            Decision::Retry(Duration::from_secs(7))
        );
    }
}
