//! Where things are: the repository, the peers, the agent binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
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

/// `node`, and a check that kinesalite is installed.
#[track_caller]
pub fn node_with_kinesalite() -> PathBuf {
    let k = peers_dir().join("node_modules").join("kinesalite");
    if !k.exists() {
        panic!(
            "{} is missing: run scripts/install-peers.sh first (it runs npm ci in tests/peers)",
            k.display()
        );
    }
    PathBuf::from("node")
}

/// `target/<profile>` of the running test executable (`target/debug/deps/x-hash` → `target/debug`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// The `linewatch-agent` binary, built up to date once per test process.
///
/// `cargo test --workspace` does not promise to build another package's binary,
/// so this runs `cargo build -p linewatch-agent` into the test's own target
/// directory (a no-op when nothing changed). `LINEWATCH_AGENT_BIN` overrides it all.
#[track_caller]
pub fn agent_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| build_binary("linewatch-agent", "LINEWATCH_AGENT_BIN")) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// `cargo build -p <package> --bin <package>` into the test's target directory, in
/// the test's profile; `override_var` names a binary to use instead.
pub fn build_binary(package: &str, override_var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(p));
    }
    let profile_dir = profile_dir().ok_or("cannot find the test executable's directory")?;
    let bin = profile_dir.join(package);
    let target_dir = profile_dir
        .parent()
        .ok_or("test executable is not under a target directory")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args(["build", "--quiet", "-p", package, "--bin", package])
        .env("CARGO_TARGET_DIR", target_dir);
    if release {
        cmd.arg("--release");
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(bin),
        // Offline or locked out: an existing binary is still better than no test.
        Ok(o) if bin.exists() => {
            eprintln!(
                "warning: cargo build -p {package} failed ({}), using the existing {}:\n{}",
                o.status,
                bin.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(bin)
        }
        Ok(o) => Err(format!(
            "cannot build {package} ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) if bin.exists() => {
            eprintln!(
                "warning: cannot run cargo ({e}); using the existing {}",
                bin.display()
            );
            Ok(bin)
        }
        Err(e) => Err(format!(
            "cannot run cargo to build {package} ({e}) and {} does not exist",
            bin.display()
        )),
    }
}
