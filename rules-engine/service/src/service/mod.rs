//! The rule engine as a service: Kinesis in, rules over MQTT, checkpoints, webhooks out.
//!
//! * [`engine`]: the decisions, pure (records, rule messages, ticks → transitions, statuses);
//! * [`checkpoint`]: the atomic sled checkpoint;
//! * [`dead_points`]: the points dead-letter file and its write budget;
//! * [`run`]: the loop that wires source, control, engine, checkpoint and outputs;
//! * [`config`], [`metrics`], [`http`]: configuration, Prometheus metrics, ops endpoints.

pub mod checkpoint;
pub mod config;
pub mod dead_points;
pub mod http;
pub mod metrics;
pub mod run;
