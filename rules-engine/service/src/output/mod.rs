//! Outputs: every transition goes, as one EventBridge-envelope POST, to each configured
//! webhook target.
//!
//! * [`config`]: the `[[webhooks]]` tables and their secrets;
//! * [`outbox`]: events not yet delivered, per target, part of the engine's checkpoint;
//! * [`encoder::request`]: the request of one attempt, auth included;
//! * [`retry`]: what to do after an attempt (pure);
//! * [`webhook`]: the delivery task of one target;
//! * [`dead_letter`]: what could not be delivered, on disk, for `dead-letters list|replay`;
//! * [`metrics`]: per-target Prometheus families.

pub mod config;
pub mod dead_letter;
pub mod encoder;
pub mod metrics;
pub mod outbox;
pub mod retry;
pub mod webhook;

pub use config::{check_all, AuthConfig, ResolvedWebhook, WebhookConfig, WebhookConfigError};
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterStore};
pub use metrics::OutputMetrics;
pub use outbox::{Outbox, OutboxSnapshot, PendingEvent, RestoreReport};
pub use webhook::{replay, run_target, ReplayError, ReplayReport};
