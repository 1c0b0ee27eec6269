//! Waiting on conditions: every wait polls with a deadline and panics with what it
//! waited for and the last state it saw. No sleep-and-hope.

use std::time::{Duration, Instant};

/// Poll interval of [`until`].
pub const POLL: Duration = Duration::from_millis(100);

/// Scales every deadline (e.g. `LINEWATCH_E2E_TIME_SCALE=3` on a slow CI runner).
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("LINEWATCH_E2E_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// Calls `check` every [`POLL`] until it returns `Ok`, and returns that value.
///
/// `Err(state)` describes what was seen instead; after `timeout` (scaled) the
/// function panics with `what` and the last state.
#[track_caller]
pub fn until<T>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> Result<T, String>,
) -> impl std::future::Future<Output = T> {
    // Capture the caller's location here: `#[track_caller]` does not reach into async bodies.
    let caller = std::panic::Location::caller();
    until_at(what.to_owned(), timeout, check, caller)
}

async fn until_at<T>(
    what: String,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
    caller: &'static std::panic::Location<'static>,
) -> T {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if start.elapsed() >= timeout => {
                panic!(
                    "timed out after {:.1?} waiting for: {what}\n  (waited at {caller})\n  last seen: {state}",
                    start.elapsed()
                );
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The blocking twin of [`until`], for code outside a runtime.
#[track_caller]
pub fn until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(state) if start.elapsed() >= timeout => {
                panic!(
                    "timed out after {:.1?} waiting for: {what}\n  last seen: {state}",
                    start.elapsed()
                );
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}
