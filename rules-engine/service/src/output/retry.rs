//! What to do after an attempt: pure, with the time and the jitter passed in.
//!
//! Follows EventBridge API destinations: 2xx is delivered; 429, 5xx and network errors
//! (timeouts, refused or reset connections) are retried with exponential backoff and full
//! jitter until `max_attempts` or `max_age`; anything else (3xx, other 4xx, 1xx) cannot get
//! better by retrying and goes to the dead-letter store at once.

use std::time::Duration;

/// How an attempt ended, as far as the retry policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The target answered with this status; `retry_after` is its `Retry-After` in seconds.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Network(String),
}

impl AttemptResult {
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptResult::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptResult::Status { status, .. } => write!(f, "HTTP {status}"),
            AttemptResult::Timeout => f.write_str("timeout"),
            AttemptResult::Network(e) => write!(f, "network error: {e}"),
        }
    }
}

/// The class of an attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Delivered,
    Retryable,
    /// Retrying cannot help.
    Rejected,
}

pub fn classify(r: &AttemptResult) -> Class {
    match r {
        AttemptResult::Status { status, .. } => match status {
            200..=299 => Class::Delivered,
            429 | 500..=599 => Class::Retryable,
            _ => Class::Rejected,
        },
        AttemptResult::Timeout | AttemptResult::Network(_) => Class::Retryable,
    }
}

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
    pub fn from_config(c: &crate::output::config::WebhookConfig) -> Self {
        RetryPolicy {
            initial: c.backoff_initial,
            max: c.backoff_max,
            max_attempts: c.max_attempts,
            max_age: c.max_age,
        }
    }

    /// Upper bound of the delay after the `attempts`-th failure: `initial × 2^(attempts-1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
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

/// Decide after the `attempts`-th attempt (counting from 1) of an event created at
/// `created_at_ms` ended with `result` at `now_ms`. `jitter` in `[0, 1)` draws the delay
/// uniformly below the backoff ceiling ("full jitter"). A `Retry-After` on 429/503 is used
/// instead, capped at the backoff maximum. The delay never reaches past the age limit, so
/// the last attempt happens at it.
pub fn decide(
    policy: &RetryPolicy,
    result: &AttemptResult,
    attempts: u32,
    created_at_ms: u64,
    now_ms: u64,
    jitter: f64,
) -> Decision {
    match classify(result) {
        Class::Delivered => return Decision::Delivered,
        Class::Rejected => return Decision::DeadLetter(DeadReason::Rejected),
        Class::Retryable => {}
    }
    if attempts >= policy.max_attempts {
        return Decision::DeadLetter(DeadReason::MaxAttempts);
    }
    let age = Duration::from_millis(now_ms.saturating_sub(created_at_ms));
    if age >= policy.max_age {
        return Decision::DeadLetter(DeadReason::MaxAge);
    }
    let delay = match result {
        AttemptResult::Status {
            status: 429 | 503,
            retry_after: Some(after),
        } => (*after).min(policy.max),
        _ => policy.ceiling(attempts).mul_f64(jitter.clamp(0.0, 1.0)),
    };
    Decision::Retry(delay.min(policy.max_age - age))
}

/// `Retry-After` in delta-seconds; an HTTP date or garbage gives `None` (backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_attempts: 185,
            max_age: Duration::from_secs(86_400),
        }
    }

    fn status(s: u16) -> AttemptResult {
        AttemptResult::Status {
            status: s,
            retry_after: None,
        }
    }

    #[test]
    fn classification() {
        for s in [200, 201, 204, 299] {
            assert_eq!(classify(&status(s)), Class::Delivered, "{s}");
        }
        for s in [429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(&status(s)), Class::Retryable, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 409, 413, 422, 600] {
            assert_eq!(classify(&status(s)), Class::Rejected, "{s}");
        }
        assert_eq!(classify(&AttemptResult::Timeout), Class::Retryable);
        assert_eq!(
            classify(&AttemptResult::Network("refused".into())),
            Class::Retryable
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let p = policy();
        let c: Vec<u64> = (1..=12).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(c, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(p.ceiling(u32::MAX), p.max);
        // Full jitter at its top equals the ceiling; at 0 it retries at once.
        assert_eq!(
            decide(&p, &status(500), 3, 0, 0, 0.999_999_999),
            Decision::Retry(Duration::from_secs(4).mul_f64(0.999_999_999))
        );
        assert_eq!(
            decide(&p, &status(500), 3, 0, 0, 0.0),
            Decision::Retry(Duration::ZERO)
        );
    }

    #[test]
    fn limits_send_to_dead_letters() {
        let p = policy();
        assert_eq!(
            decide(&p, &status(500), 185, 0, 0, 0.5),
            Decision::DeadLetter(DeadReason::MaxAttempts)
        );
        assert_eq!(
            decide(&p, &AttemptResult::Timeout, 2, 0, 86_400_000, 0.5),
            Decision::DeadLetter(DeadReason::MaxAge)
        );
        // Close to the age limit the delay is cut so the last attempt happens at it.
        assert_eq!(
            decide(&p, &status(502), 20, 0, 86_399_000, 0.9),
            Decision::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            decide(&p, &status(404), 1, 0, 0, 0.5),
            Decision::DeadLetter(DeadReason::Rejected)
        );
        assert_eq!(decide(&p, &status(204), 1, 0, 0, 0.5), Decision::Delivered);
    }

    #[test]
    fn retry_after_is_honoured_within_the_max() {
        let p = policy();
        let ra = |s, secs| AttemptResult::Status {
            status: s,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            decide(&p, &ra(429, 30), 1, 0, 0, 0.0),
            Decision::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            decide(&p, &ra(503, 7200), 1, 0, 0, 0.0),
            Decision::Retry(Duration::from_secs(600))
        );
        // Only 429 and 503 carry a meaningful Retry-After.
        assert_eq!(
            decide(&p, &ra(500, 30), 1, 0, 0, 0.0),
            Decision::Retry(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            attempts in 1u32..400, age_ms in 0u64..100_000_000, jitter in 0.0f64..1.0,
            initial_ms in 1u64..10_000, max_ms in 10_000u64..1_000_000, s in 0u16..700,
        ) {
            let p = RetryPolicy {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                max_attempts: 185,
                max_age: Duration::from_secs(86_400),
            };
            let d = decide(&p, &status(s), attempts, 1_000, 1_000 + age_ms, jitter);
            match d {
                Decision::Retry(delay) => {
                    prop_assert!(classify(&status(s)) == Class::Retryable);
                    prop_assert!(attempts < 185);
                    prop_assert!(delay <= p.ceiling(attempts));
                    prop_assert!(Duration::from_millis(age_ms) + delay <= p.max_age);
                }
                Decision::DeadLetter(DeadReason::MaxAttempts) => prop_assert!(attempts >= 185),
                Decision::DeadLetter(DeadReason::MaxAge) => prop_assert!(age_ms >= 86_400_000),
                Decision::DeadLetter(DeadReason::Rejected) => {
                    prop_assert!(classify(&status(s)) == Class::Rejected)
                }
                Decision::DeadLetter(DeadReason::OutboxFull) => prop_assert!(false),
                Decision::Delivered => prop_assert!((200..300).contains(&s)),
            }
        }
    }
}
