//! What both linewatch programs (the edge agent and the rule engine) share, in one place.
//!
//! The pure modules need no feature and pull in nothing heavier than serde, so the rule
//! engine's pure core can depend on this crate: [`clock`], [`backoff`], [`log_gate`],
//! [`problems`], [`config`] and [`error`]. Process plumbing is behind features:
//! `service` ([`shutdown`], [`signals`], [`logging`]), `ops` (the [`ops`] HTTP server)
//! and `aws` (the [`aws`] connection settings and SDK loader). `docs/runtime.md` has
//! the why of each.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod error;
pub mod log_gate;
pub mod problems;
pub mod redact;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "service")]
pub mod logging;
#[cfg(feature = "ops")]
pub mod ops;
#[cfg(feature = "service")]
pub mod shutdown;
#[cfg(feature = "service")]
pub mod signals;

pub use backoff::{Backoff, BackoffPolicy, Jitter};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use log_gate::LogGate;
pub use problems::{Problem, Problems};
