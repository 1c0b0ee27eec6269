//! Logging, Prometheus metrics and the health endpoint.

pub mod http;
pub mod logging;
pub mod metrics;
