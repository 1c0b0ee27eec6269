//! Outputs: every transition goes, as one EventBridge envelope, to each configured
//! delivery target.
//!
//! * [`target`]: the [`Target`] trait every target kind implements (deliver a batch,
//!   classify the outcome into retry / dead-letter / done);
//! * [`delivery`]: the delivery task of one target, generic over its kind;
//! * [`outbox`]: events not yet delivered, per target, part of the engine's checkpoint;
//! * [`retry`]: what to do after an attempt (pure; backoff and give-up limits);
//! * [`dead_letter`]: what could not be delivered, on disk, for `dead-letters list|replay`;
//! * [`metrics`]: per-target Prometheus families;
//! * [`webhook`]: the webhook target (config, encoder, request builder, service, sink).
//!
//! Adding a target kind is a folder next to `webhook/` with a [`Target`] implementation.

pub mod dead_letter;
pub mod delivery;
pub mod metrics;
pub mod outbox;
pub mod retry;
pub mod target;
pub mod webhook;

pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterStore};
pub use delivery::{run_target, DeliveryContext};
pub use metrics::OutputMetrics;
pub use outbox::{Outbox, OutboxSnapshot, PendingEvent, RestoreReport};
pub use target::{QueueSpec, Target, Verdict};
pub use webhook::{
    check_all, replay, AuthConfig, ReplayError, ReplayReport, ResolvedWebhook, WebhookConfig,
    WebhookConfigError, WebhookTarget,
};
