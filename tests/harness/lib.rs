//! The cross-program harness: the two programs under test as thin layers over the kit's
//! one managed-process type ([`linewatch_testkit::process::ManagedProcess`]), and the
//! rule engine's scenarios. Peers, waits, ports, checks: `linewatch-testkit`.
//!
//! - [`agent`]: the `linewatch-agent` process, its TOML config, its `/metrics`;
//! - [`rules`]: the `linewatch-rules` service and commands, the replay oracle;
//! - [`programs`]: where their binaries are; [`scenario`]: machines and rules for the
//!   rule engine tests.

/// A program wrapper is its `process: ManagedProcess` plus a config: `kill`, `terminate`,
/// `start_again`, `scrape`, `wait_metrics`, `log_tail`... are the process's own.
macro_rules! deref_to_process {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = linewatch_testkit::process::ManagedProcess;
            fn deref(&self) -> &Self::Target {
                &self.process
            }
        }

        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.process
            }
        }
    };
}
pub(crate) use deref_to_process;

pub mod agent;
pub mod programs;
pub mod rules;
pub mod scenario;

/// `value` as TOML; only a non-serialisable value (a NaN...) fails: a bug in the test.
#[track_caller]
pub(crate) fn to_toml<T: serde::Serialize + std::fmt::Debug>(what: &str, value: &T) -> String {
    toml::to_string(value)
        .unwrap_or_else(|e| panic!("{what} does not serialise to TOML: {e}\n{value:#?}"))
}

/// A `listen` key of a config as a socket address.
#[track_caller]
pub(crate) fn listen_addr(key: &str, value: &str) -> std::net::SocketAddr {
    value
        .parse()
        .unwrap_or_else(|e| panic!("{key} {value:?}: {e}"))
}
