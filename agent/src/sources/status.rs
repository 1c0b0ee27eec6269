//! A source's link state as `/healthz` shows it. The driver writes it (a few
//! times per cycle at most), the health handler reads a copy.

use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkPhase {
    /// Started, first connect not finished yet.
    Connecting,
    Connected,
    /// The last connect failed or the link was lost; retrying with backoff.
    Down,
    /// The source's task has ended.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusSnapshot {
    pub state: LinkPhase,
    /// Why the link last went down (kept after it is back up).
    pub last_error: Option<String>,
    /// Agent clock (ms) of the last cycle the device fully answered.
    pub last_good_read_ms: Option<u64>,
}

/// Shared handle: cloning it shares the state.
#[derive(Debug, Clone)]
pub struct SourceStatus(Arc<Mutex<StatusSnapshot>>);

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus(Arc::new(Mutex::new(StatusSnapshot {
            state: LinkPhase::Connecting,
            last_error: None,
            last_good_read_ms: None,
        })))
    }
}

impl SourceStatus {
    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().clone()
    }

    pub fn is_connected(&self) -> bool {
        self.lock().state == LinkPhase::Connected
    }

    pub(super) fn set_phase(&self, state: LinkPhase) {
        self.lock().state = state;
    }

    pub(super) fn set_down(&self, error: String) {
        let mut s = self.lock();
        s.state = LinkPhase::Down;
        s.last_error = Some(error);
    }

    pub(super) fn set_good_read(&self, now_ms: u64) {
        self.lock().last_good_read_ms = Some(now_ms);
    }

    fn lock(&self) -> MutexGuard<'_, StatusSnapshot> {
        // A panic elsewhere while holding it leaves plain data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
