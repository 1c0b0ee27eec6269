//! Injected wall clock: now in the shared runtime crate.

pub use linewatch_runtime::clock::*;
