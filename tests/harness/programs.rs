//! The two programs under test, located by the kit ([`linewatch_testkit::bins`]): built
//! once before the tests (`cargo build --workspace --bins`), never by a test.

use linewatch_testkit::bins::{self, Program};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Crates a program is built from besides its own (a missing folder is skipped).
const SHARED: [&str; 2] = ["schemas", "runtime"];

pub const AGENT: Program = Program {
    name: "linewatch-agent",
    override_var: "LINEWATCH_AGENT_BIN",
    sources: &["agent", SHARED[0], SHARED[1]],
};

pub const RULES: Program = Program {
    name: "linewatch-rules",
    override_var: "LINEWATCH_RULES_BIN",
    sources: &["rules-engine", SHARED[0], SHARED[1]],
};

/// The `linewatch-agent` binary (`LINEWATCH_AGENT_BIN` overrides it); checked once per
/// test process, panics with how to build it.
#[track_caller]
pub fn agent() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    unwrap(BIN.get_or_init(|| bins::locate(&AGENT)))
}

/// The `linewatch-rules` binary (`LINEWATCH_RULES_BIN` overrides it).
#[track_caller]
pub fn rules() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    unwrap(BIN.get_or_init(|| bins::locate(&RULES)))
}

#[track_caller]
fn unwrap(r: &Result<PathBuf, String>) -> PathBuf {
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}
