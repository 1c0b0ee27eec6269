//! Modbus TCP source (tokio-modbus): the first implementation of [`Source`].
//!
//! `plan` (which requests to make) and `decode` (registers to values) are pure;
//! `client` connects and reads. The link life-cycle is the shared driver's.
//! `docs/modbus.md` describes the behaviour.

pub mod client;
pub mod config;
pub mod decode;
pub mod plan;

pub use client::{LinkError, ModbusSource};
pub use config::ModbusSourceConfig;

use crate::config::Problems;
use crate::sources::config::{CommonSourceConfig, ProtocolConfig};
use crate::sources::factory::SourceTask;
use crate::sources::{driver, SourceContext};

impl ProtocolConfig for ModbusSourceConfig {
    fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        ModbusSourceConfig::validate(self, common, key, p);
    }

    fn tag_count(&self) -> usize {
        ModbusSourceConfig::tag_count(self)
    }

    fn clone_box(&self) -> Box<dyn ProtocolConfig> {
        Box::new(self.clone())
    }

    fn start(self: Box<Self>, common: CommonSourceConfig, ctx: SourceContext) -> SourceTask {
        let source = ModbusSource::new(*self, &common);
        Box::pin(driver::run(source, common, ctx))
    }
}
