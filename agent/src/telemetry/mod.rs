//! The agent's Prometheus metrics. Logging set-up and the `/metrics` + `/healthz`
//! server are the runtime's (`linewatch_runtime::logging`, `linewatch_runtime::ops`).

pub mod metrics;
