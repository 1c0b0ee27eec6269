//! linewatch's rule engine as a service, around the pure core (`linewatch-rules-core`):
//!
//! * [`source`]: the Kinesis stream in (shards, lineage, KPL de-aggregation);
//! * [`control`]: rules over MQTT (retained messages, status topic);
//! * [`output`]: delivery of transitions (webhooks), retries, dead letters;
//! * [`service`]: the run loop, checkpoints, configuration, metrics, ops endpoints;
//! * [`cli`]: the commands of the binary besides `run`.
//!
//! Decisions live in the core; this crate does the I/O.

pub mod cli;
pub mod control;
pub mod output;
pub mod service;
pub mod source;
