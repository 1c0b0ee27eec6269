//! One HTTP attempt at a webhook and what its outcome means.
//!
//! Follows EventBridge API destinations: 2xx is delivered; 429, 5xx and network errors
//! (timeouts, refused or reset connections) are retried; anything else (3xx, other 4xx,
//! 1xx) cannot get better by retrying and goes to the dead-letter store at once. A
//! `Retry-After` (delta-seconds) on 429/503 is the delay the target asks for.

use super::config::{ResolvedWebhook, WebhookConfig};
use super::request_builder::build_request;
use crate::output::target::Verdict;
use std::time::Duration;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The target answered with this status; `retry_after` is its `Retry-After` in seconds.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout: the request may have reached the target.
    Timeout,
    /// The connection broke after the request may have been sent.
    Network(String),
    /// Nothing was sent: no connection could be made, or the request could not be built.
    NotSent(String),
}

impl AttemptResult {
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptResult::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// False only when the request certainly never left: a retry cannot duplicate it.
    pub fn may_have_arrived(&self) -> bool {
        !matches!(self, AttemptResult::NotSent(_))
    }
}

impl std::fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptResult::Status { status, .. } => write!(f, "HTTP {status}"),
            AttemptResult::Timeout => f.write_str("timeout (the request may have arrived)"),
            AttemptResult::Network(e) => {
                write!(f, "network error (the request may have arrived): {e}")
            }
            AttemptResult::NotSent(e) => write!(f, "not sent: {e}"),
        }
    }
}

/// The webhook's classification of an attempt.
pub fn classify(r: &AttemptResult) -> Verdict {
    match r {
        AttemptResult::Status {
            status,
            retry_after,
        } => match status {
            200..=299 => Verdict::Done,
            // Only 429 and 503 carry a meaningful Retry-After.
            429 | 503 => Verdict::Retry {
                after: *retry_after,
            },
            500..=599 => Verdict::Retry { after: None },
            _ => Verdict::DeadLetter,
        },
        AttemptResult::Timeout | AttemptResult::Network(_) | AttemptResult::NotSent(_) => {
            Verdict::Retry { after: None }
        }
    }
}

/// `Retry-After` in delta-seconds; an HTTP date or garbage gives `None` (backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
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

/// `e` with its sources, each said once, for logs and dead-letter entries.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    linewatch_runtime::error::chain(e)
}

/// The most of an answer's body that is read. Only the status matters; a small body is
/// read so the connection can be reused, a larger one (a receiver answering with a
/// gigabyte) is cut off there and its connection dropped, so an answer can never cost
/// more memory than this.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads at most `limit` bytes of the body, chunk by chunk, and drops the rest with the
/// connection. Returns how many bytes were read.
async fn drain_bounded(mut resp: reqwest::Response, limit: usize) -> usize {
    let mut read = 0;
    while read < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    read
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
        Err(e) => {
            return AttemptResult::NotSent(format!(
                "building the request: {}",
                error_chain(&e.without_url())
            ))
        }
    };
    match client.execute(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            drain_bounded(resp, MAX_ANSWER_BYTES).await;
            AttemptResult::Status {
                status,
                retry_after,
            }
        }
        Err(e) if e.is_timeout() => AttemptResult::Timeout,
        // A failed connect (refused, unreachable, DNS, TLS handshake) sent no request.
        // Without the URL: it may carry credentials, and the target's name says which it is.
        Err(e) if e.is_connect() || e.is_builder() => {
            AttemptResult::NotSent(error_chain(&e.without_url()))
        }
        Err(e) => AttemptResult::Network(error_chain(&e.without_url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::retry::{decide as decide_verdict, DeadReason, Decision, RetryPolicy};
    use proptest::prelude::*;

    /// The shared policy applied to the webhook's classification of `r`.
    fn decide(
        p: &RetryPolicy,
        r: &AttemptResult,
        attempts: u32,
        created_at_ms: u64,
        now_ms: u64,
        jitter: f64,
    ) -> Decision {
        decide_verdict(p, classify(r), attempts, created_at_ms, now_ms, jitter)
    }

    const DELIVERED: Verdict = Verdict::Done;
    const RETRYABLE: Verdict = Verdict::Retry { after: None };
    const REJECTED: Verdict = Verdict::DeadLetter;

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
            assert_eq!(classify(&status(s)), DELIVERED, "{s}");
        }
        for s in [429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(&status(s)), RETRYABLE, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 409, 413, 422, 600] {
            assert_eq!(classify(&status(s)), REJECTED, "{s}");
        }
        assert_eq!(classify(&AttemptResult::Timeout), RETRYABLE);
        assert_eq!(classify(&AttemptResult::Network("reset".into())), RETRYABLE);
        assert_eq!(
            classify(&AttemptResult::NotSent("refused".into())),
            RETRYABLE
        );
        assert!(!AttemptResult::NotSent("refused".into()).may_have_arrived());
        for r in [
            AttemptResult::Timeout,
            AttemptResult::Network("reset".into()),
            status(500),
        ] {
            assert!(r.may_have_arrived(), "{r}");
        }
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
                    prop_assert!(classify(&status(s)) == RETRYABLE);
                    prop_assert!(attempts < 185);
                    prop_assert!(delay <= p.ceiling(attempts));
                    prop_assert!(Duration::from_millis(age_ms) + delay <= p.max_age);
                }
                Decision::DeadLetter(DeadReason::MaxAttempts) => prop_assert!(attempts >= 185),
                Decision::DeadLetter(DeadReason::MaxAge) => prop_assert!(age_ms >= 86_400_000),
                Decision::DeadLetter(DeadReason::Rejected) => {
                    prop_assert!(classify(&status(s)) == REJECTED)
                }
                Decision::DeadLetter(DeadReason::OutboxFull) => prop_assert!(false),
                Decision::Delivered => prop_assert!((200..300).contains(&s)),
            }
        }
    }
}
