//! linewatch-testkit: the test infrastructure every crate's tests share. It depends on
//! neither program, only on `linewatch-schemas`, so the agent's, the rule engine's and
//! the cross-program tests (`linewatch-e2e`) all take it as a dev-dependency.
//!
//! - [`peers`]: one launcher per real peer, one module each: [`peers::kinesalite`],
//!   [`peers::kinesis_local`], [`peers::mosquitto`], [`peers::webhook_receiver`],
//!   [`peers::modbus_plc`]. A new peer (OPC UA, S7 servers) is a new module there.
//! - [`process`]: the one managed-process type every peer and program runs as;
//!   [`bins`]: where the programs' binaries are (built before the tests, never by them).
//! - [`kinesis`]: a client for local endpoints, stream set-up, reading, PutRecords,
//!   SplitShard; [`feed`]: hand-made data points; [`points`]: checks of what arrived.
//! - [`wait`]: polls with deadlines; [`ports`]: free ports; [`scratch`]: per-test dirs;
//!   [`proxy`]: a TCP proxy that loses responses; [`put_records_proxy`]: an HTTP proxy
//!   that fails chosen PutRecords entries; [`http`], [`metrics`]: ops endpoints.
//!
//! Fixtures panic with a clear message (and the peer's log tail) when something does not
//! come up: that is how a test fails. The Kinesis client functions return typed errors,
//! because the `lw-kinesis` tool uses them too.

pub mod bins;
pub mod feed;
pub mod http;
pub mod kinesis;
pub mod metrics;
pub mod paths;
pub mod peers;
pub mod points;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod put_records_proxy;
pub mod scratch;
pub mod wait;

pub use scratch::Scratch;
