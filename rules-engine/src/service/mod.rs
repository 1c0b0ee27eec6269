//! The rule engine as a service: Kinesis in, rules over MQTT, checkpoints, webhooks out.

pub mod checkpoint;
pub mod engine;
