//! OPC UA source (async-opcua): the second implementation of [`Source`].
//!
//! `node_id` (parsing and namespace resolution), `value` (status codes, variants,
//! timestamps), `plan` (monitored items, splitting, watchdog) and `config` are
//! pure; `client` opens the session and reads. The link life-cycle is the shared
//! driver's. `docs/opcua.md` describes the behaviour.
//!
//! [`Source`]: crate::sources::Source

pub mod client;
pub mod config;
pub mod metrics;
pub mod node_id;
pub mod plan;
pub mod value;

pub use client::{LinkError, OpcUaSource};
pub use config::OpcUaSourceConfig;

use crate::config::Problems;
use crate::sources::config::{CommonSourceConfig, ProtocolConfig};
use crate::sources::factory::SourceTask;
use crate::sources::{driver, SourceContext};

impl ProtocolConfig for OpcUaSourceConfig {
    fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        OpcUaSourceConfig::validate(self, common, key, p);
    }

    fn warnings(&self, key: &str, p: &mut Problems) {
        OpcUaSourceConfig::warnings(self, key, p);
    }

    fn tag_count(&self) -> usize {
        OpcUaSourceConfig::tag_count(self)
    }

    fn clone_box(&self) -> Box<dyn ProtocolConfig> {
        Box::new(self.clone())
    }

    fn start(self: Box<Self>, common: CommonSourceConfig, ctx: SourceContext) -> SourceTask {
        let label = ctx.metrics.source(&common.id);
        let metrics = metrics::SourceMetrics::new(&ctx.metrics.opcua, &label);
        let source = OpcUaSource::new(*self, &common, metrics);
        Box::pin(driver::run(source, common, ctx))
    }
}
