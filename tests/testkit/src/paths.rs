//! Where things are: the repository, the peers and the simulators.

use std::path::{Path, PathBuf};

/// The repository root (the workspace directory; the kit lives in `tests/testkit`).
pub fn repo_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| kit.to_path_buf())
}

/// `tests/peers`: the npm peers and their wrappers.
pub fn peers_dir() -> PathBuf {
    repo_root().join("tests").join("peers")
}

/// `tests/sim`: the Python simulators.
pub fn sim_dir() -> PathBuf {
    repo_root().join("tests").join("sim")
}

/// The venv's Python, installed by `scripts/install-peers.sh`.
#[track_caller]
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv").join("bin").join("python");
    if !p.exists() {
        panic!(
            "{} is missing: run scripts/install-peers.sh first (it installs the pinned pymodbus)",
            p.display()
        );
    }
    p
}

/// `tests/peers/node_modules/<package>`, which must be installed.
#[track_caller]
pub fn node_package(package: &str) -> PathBuf {
    let p = peers_dir().join("node_modules").join(package);
    if !p.exists() {
        panic!(
            "{} is missing: run scripts/install-peers.sh first (it runs npm ci in tests/peers)",
            p.display()
        );
    }
    p
}
