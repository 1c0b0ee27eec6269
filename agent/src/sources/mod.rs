//! PLC sources. Each source runs as its own task, reconnects on its own, and hands
//! batches of [`Reading`]s to the normaliser; one failing source never stops another.
//!
//! A protocol implements [`Source`] (connect, wait for and read one cycle, close)
//! and [`config::ProtocolConfig`] (its own keys); [`driver::run`] does the rest
//! for every protocol: backoff, `Fst`/`Syn`/`Wmk`/`Lst`, metrics, [`SourceStatus`].
//! [`factory::PROTOCOLS`] is the one list of protocols, by `type`.
//! `docs/sources.md` says how to add one.

pub mod config;
pub mod driver;
pub mod exception;
pub mod factory;
pub mod link;
pub mod modbus;
pub mod opcua;
pub mod poll;
pub mod s7;
pub mod source;
pub mod status;
pub mod value_map;

pub use config::{CommonSourceConfig, SourceConfig};
pub use factory::{start, SourceTask};
pub use source::{Cycle, EquipmentIds, Sample, Source, SourceContext, SourceIdentity, SourceTag};
pub use status::{LinkPhase, SourceStatus, StatusSnapshot};
pub use value_map::ValueMap;

use linewatch_schemas::{Flags, Quality, Value};
use std::sync::Arc;

/// One value read from a PLC, before it becomes a data point (no sequence number,
/// no agent timestamps yet: the normaliser adds those).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub source_id: Arc<str>,
    pub equipment_id: Arc<str>,
    pub tag: Arc<str>,
    pub value: Value,
    pub quality: Quality,
    /// Event time from the source, when the protocol gives one (Modbus does not).
    pub source_timestamp: Option<u64>,
    /// Flags the source decides (Fst, Syn, Wmk, Lst); the normaliser adds Ats.
    pub flags: Flags,
    pub raw_quality: Option<String>,
}

/// What sources send to the normaliser: one cycle's readings at a time, so the
/// channel carries few, larger messages.
pub type ReadingBatch = Vec<Reading>;
