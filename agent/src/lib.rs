//! linewatch-agent: reads PLCs into data points, keeps them in a crash-safe disk
//! buffer and ships them to Kinesis.
//!
//! Decisions (coalescing, decoding, buffer admission, batching, backoff) live in
//! pure modules with injected clocks; sockets, files and timers sit at the edges.

pub mod app;
pub mod buffer;
pub mod config;
pub mod memory;
pub mod normalize;
pub mod ship;
pub mod sources;
pub mod telemetry;
