//! Stop signals. SIGINT (Ctrl-C), SIGTERM (systemd, Kubernetes) and SIGHUP (the
//! terminal went away) each ask for a clean stop: commit, checkpoint, exit 0.
//!
//! SIGPIPE is ignored so that a write to a closed pipe fails with `EPIPE` instead of
//! killing the process without a word: with `prog 2>&1 | tee log`, Ctrl-C stops `tee`
//! first, and the program must still finish its shutdown (logging then simply goes
//! nowhere). Rust's start-up code ignores SIGPIPE already; saying it here keeps it
//! true whatever a parent process or a future toolchain default does.

use crate::shutdown::CancellationToken;
use std::fmt;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signal that asked for the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
    Hangup,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ignore SIGPIPE for the whole process (see the module documentation).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code and
    // touches no memory; it is async-signal-safe and harmless to repeat.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The three stop signals, listened for from the moment this value exists.
#[derive(Debug)]
pub struct StopSignals {
    int: Option<Signal>,
    term: Option<Signal>,
    hup: Option<Signal>,
}

impl StopSignals {
    /// Starts listening (call inside the tokio runtime). A signal that cannot be
    /// listened for is logged and left out; if none can, [`StopSignals::recv`] never
    /// returns and the warnings say why.
    pub fn listen() -> Self {
        fn one(kind: SignalKind, which: StopSignal) -> Option<Signal> {
            match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(signal = which.name(), error = %e, "cannot listen for the signal; it will not stop the program cleanly");
                    None
                }
            }
        }
        StopSignals {
            int: one(SignalKind::interrupt(), StopSignal::Interrupt),
            term: one(SignalKind::terminate(), StopSignal::Terminate),
            hup: one(SignalKind::hangup(), StopSignal::Hangup),
        }
    }

    /// The next stop signal.
    pub async fn recv(&mut self) -> StopSignal {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.int) => StopSignal::Interrupt,
            _ = next(&mut self.term) => StopSignal::Terminate,
            _ = next(&mut self.hup) => StopSignal::Hangup,
        }
    }
}

/// Waits for the first of SIGINT, SIGTERM or SIGHUP.
pub async fn wait_for_stop() -> StopSignal {
    StopSignals::listen().recv().await
}

/// Ignores SIGPIPE, starts listening (before it returns, so a signal right after is
/// not missed), then spawns a task that cancels `token` on the first stop signal and
/// logs which one. The task also ends when `token` is cancelled for another reason.
/// Call it inside the runtime.
pub fn cancel_on_stop_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    ignore_sigpipe();
    let mut signals = StopSignals::listen();
    tokio::spawn(async move {
        let sig = tokio::select! {
            sig = signals.recv() => sig,
            _ = token.cancelled() => return,
        };
        tracing::info!(signal = sig.name(), "stop signal received, shutting down");
        token.cancel();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // One test for every real signal: they are process-wide, so tests must not overlap.
    #[tokio::test]
    async fn each_stop_signal_cancels_the_token_and_sigpipe_is_ignored() {
        for (sig, want) in [
            (libc::SIGTERM, StopSignal::Terminate),
            (libc::SIGHUP, StopSignal::Hangup),
            (libc::SIGINT, StopSignal::Interrupt),
        ] {
            let mut signals = StopSignals::listen();
            let token = CancellationToken::new();
            let task = cancel_on_stop_signal(token.clone());
            // Both listen from here on: raising cannot kill the test process.
            unsafe { libc::raise(sig) };
            tokio::time::timeout(Duration::from_secs(5), token.cancelled())
                .await
                .unwrap_or_else(|_| panic!("{want} cancels the token"));
            task.await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), signals.recv())
                .await
                .expect("the listener sees it");
            assert_eq!(got, want);
        }
        // Restore the default (death) and ignore it again: still alive after raising.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        ignore_sigpipe();
        unsafe { libc::raise(libc::SIGPIPE) };
        assert_eq!(StopSignal::Hangup.to_string(), "SIGHUP");
    }

    #[tokio::test]
    async fn the_task_ends_when_the_token_is_cancelled_otherwise() {
        let token = CancellationToken::new();
        let task = cancel_on_stop_signal(token.clone());
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the listener stops")
            .unwrap();
    }
}
