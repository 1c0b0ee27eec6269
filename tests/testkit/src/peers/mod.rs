//! The real peers the tests run against, one module per peer, each bound to 127.0.0.1
//! and each a [`crate::process::ManagedProcess`] (or, for the in-process webhook
//! receiver, a background thread) that stops when dropped.
//!
//! Adding a peer: a module here with a launcher
//! `start(opts, log_dir)` that builds a [`crate::process::ProcessSpec`] with its
//! readiness condition, its endpoint accessors (a Python sim talks over [`sim_control`]),
//! and its installation in
//! `scripts/install-peers.sh`; a test of the peer alone in `tests/tests/peers.rs`.

pub mod kinesalite;
pub mod kinesis_local;
pub mod modbus_plc;
pub mod mosquitto;
pub mod opcua_server;
pub mod s7_plc;
pub mod sim_control;
pub mod webhook_receiver;
