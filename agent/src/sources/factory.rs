//! The protocols the agent knows, by `type`: the one list a new protocol joins.

use super::config::{parse_protocol, CommonSourceConfig, ProtocolConfig, SourceConfig};
use super::modbus::ModbusSourceConfig;
use super::opcua::OpcUaSourceConfig;
use super::s7::S7SourceConfig;
use super::source::SourceContext;
use std::future::Future;
use std::pin::Pin;

/// A running source (the shared driver around one protocol), boxed once per source.
pub type SourceTask = Pin<Box<dyn Future<Output = ()> + Send>>;

type Parse =
    fn(toml::Table) -> Result<(CommonSourceConfig, Box<dyn ProtocolConfig>), toml::de::Error>;

pub struct Protocol {
    /// The value of `type` in `[[sources]]`.
    pub kind: &'static str,
    pub(super) parse: Parse,
}

/// Adding a protocol: one line here, plus its folder under `sources/`
/// (see `docs/sources.md`).
pub const PROTOCOLS: &[Protocol] = &[
    Protocol {
        kind: "modbus",
        parse: parse_protocol::<ModbusSourceConfig>,
    },
    Protocol {
        kind: "s7",
        parse: parse_protocol::<S7SourceConfig>,
    },
    Protocol {
        kind: "opcua",
        parse: parse_protocol::<OpcUaSourceConfig>,
    },
];

/// The task that runs `cfg` until `ctx.shutdown`; spawn it.
pub fn start(cfg: SourceConfig, ctx: SourceContext) -> SourceTask {
    cfg.protocol.start(cfg.common, ctx)
}
