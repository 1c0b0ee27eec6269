//! The cross-program harness: the two programs under test as thin layers over the kit's
//! one managed-process type ([`linewatch_testkit::process::ManagedProcess`]), and the
//! rule engine's scenarios. Peers, waits, ports, checks: `linewatch-testkit`.
//!
//! - [`agent`]: the `linewatch-agent` process, its TOML config, its `/metrics`;
//! - [`rules`]: the `linewatch-rules` service and commands, the replay oracle;
//! - [`programs`]: where their binaries are; [`scenario`]: machines and rules for the
//!   rule engine tests.

pub mod agent;
pub mod programs;
pub mod rules;
pub mod scenario;
