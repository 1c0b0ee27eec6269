//! The webhook target: one EventBridge-envelope POST per event, EventBridge API
//! destination semantics (retry 429/5xx/network errors, never other 4xx).
//!
//! * [`config`]: the `[[webhooks]]` tables and their secrets;
//! * [`encoder`]: the body of a request (the envelope as the engine encoded it);
//! * [`request_builder`]: the request of one attempt, auth included (pure);
//! * [`service`]: one HTTP attempt and the classification of its outcome;
//! * [`sink`]: [`WebhookTarget`], the [`Target`](crate::output::Target) implementation;
//! * [`replay`]: sending dead letters again (`dead-letters replay`).

pub mod config;
pub mod encoder;
pub mod replay;
pub mod request_builder;
pub mod service;
pub mod sink;

pub use config::{check_all, AuthConfig, ResolvedWebhook, WebhookConfig, WebhookConfigError};
pub use replay::{replay, ReplayError, ReplayReport};
pub use service::AttemptResult;
pub use sink::WebhookTarget;
