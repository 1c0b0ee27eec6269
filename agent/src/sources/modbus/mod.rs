//! Modbus TCP source (tokio-modbus).
//!
//! `plan` (which requests to make) and `decode` (registers to values) are pure;
//! `client` does the I/O and reconnects. `docs/modbus.md` describes the behaviour.

pub mod client;
pub mod config;
pub mod decode;
pub mod plan;

pub use client::run;
pub use config::ModbusSourceConfig;
