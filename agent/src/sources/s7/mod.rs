//! Siemens S7 source over ISO-on-TCP (S7comm read var), the project's own client.
//!
//! `frame` (the wire format), `address` (the address syntax), `plan` (which
//! requests, packed to the negotiated PDU) and `decode` (bytes to values) are
//! pure; `client` connects and reads. The link life-cycle is the shared driver's.
//! `docs/s7.md` describes the behaviour; `docs/crates.md` why no crate.

pub mod address;
pub mod client;
pub mod config;
pub mod decode;
pub mod frame;
pub mod plan;

pub use client::{LinkError, S7Source};
pub use config::S7SourceConfig;

use crate::config::Problems;
use crate::sources::config::{CommonSourceConfig, ProtocolConfig};
use crate::sources::factory::SourceTask;
use crate::sources::{driver, SourceContext};

impl ProtocolConfig for S7SourceConfig {
    fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        S7SourceConfig::validate(self, common, key, p);
    }

    fn tag_count(&self) -> usize {
        S7SourceConfig::tag_count(self)
    }

    fn clone_box(&self) -> Box<dyn ProtocolConfig> {
        Box::new(self.clone())
    }

    fn start(self: Box<Self>, common: CommonSourceConfig, ctx: SourceContext) -> SourceTask {
        let source = S7Source::new(*self, &common, ctx.metrics.clone());
        Box::pin(driver::run(source, common, ctx))
    }
}
