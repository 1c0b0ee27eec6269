//! Contracts shared by the linewatch agent and rule engine.
//!
//! `datapoint.v1.schema.json` (next to this crate's `Cargo.toml`) is the normative
//! description of a data point; [`DataPoint`] is its Rust twin. Tests in
//! `tests/schema_agreement.rs` keep the two in step.

mod datapoint;
mod flags;
mod value;

pub use datapoint::{DataPoint, DataPointError, Meta, Quality, DATAPOINT_VERSION, HEARTBEAT_TAG};
pub use flags::{Flag, Flags};
pub use value::Value;

/// The JSON Schema of data point v1, embedded so tools can validate without the repo.
pub const DATAPOINT_V1_SCHEMA: &str = include_str!("../datapoint.v1.schema.json");

/// The JSON Schema of the state-change event (EventBridge envelope) the rule engine emits;
/// `linewatch-rules-core`'s tests validate the events it builds against it.
pub const STATE_CHANGE_EVENT_V1_SCHEMA: &str = include_str!("../state-change-event.v1.schema.json");

pub mod kpl;
