//! The programs under test are built once, before the tests (`scripts/test.sh` runs
//! `cargo build --workspace --bins --locked` before `cargo test`); the kit only finds
//! them. No test runs cargo: a build inside a test is slow, and falling back to an old
//! binary when that build failed tested the wrong code.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A program binary and what it is built from.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// The binary's name (`target/<profile>/<name>`).
    pub name: &'static str,
    /// An environment variable naming a binary to use instead.
    pub override_var: &'static str,
    /// Directories (relative to the repository root) of the crates it is built from:
    /// a binary older than any `.rs` or `Cargo.toml` in them is stale.
    pub sources: &'static [&'static str],
}

/// `target/<profile>` of the running test executable (`target/debug/deps/x-hash` → `target/debug`).
pub fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// The binary of `program`: `$override_var` if set, else next to the test executable.
/// A missing binary is an error saying how to build it. A binary older than its sources
/// is an error under `CI=true` and a loud warning otherwise.
pub fn locate(program: &Program) -> Result<PathBuf, String> {
    let name = program.name;
    if let Some(p) = std::env::var_os(program.override_var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{}={} does not name a file",
                program.override_var,
                p.display()
            ))
        };
    }
    let dir = profile_dir().ok_or("cannot find the test executable's directory")?;
    let bin = dir.join(name);
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let build = if profile == "debug" {
        "cargo build --workspace --bins".to_owned()
    } else {
        format!("cargo build --workspace --bins --profile {profile}")
    };
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{} is missing: build the programs before the tests with `{build}` \
                 (scripts/test.sh does), or set {} to a binary",
                bin.display(),
                program.override_var
            )
        })?;
    let root = crate::paths::repo_root();
    let newer: Vec<PathBuf> = program
        .sources
        .iter()
        .flat_map(|d| newer_sources(&root.join(d), built))
        .collect();
    if let Some(first) = newer.first() {
        let msg = format!(
            "{} is older than {} source file(s) (e.g. {}): rebuild with `{build}`",
            bin.display(),
            newer.len(),
            first.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err(format!("{msg} (an error under CI=true)"));
        }
        eprintln!("\n!!!!! WARNING: {msg}\n!!!!! the tests run an OLD {name}\n");
    }
    Ok(bin)
}

/// `.rs` and `Cargo.toml` files under `dir` modified after `built`, skipping the
/// directories that do not go into a binary (tests, benches, examples, target).
fn newer_sources(dir: &Path, built: SystemTime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            if !matches!(
                name.as_ref(),
                "tests" | "benches" | "examples" | "target" | "fuzz"
            ) && !name.starts_with('.')
            {
                out.extend(newer_sources(&path, built));
            }
        } else if name.ends_with(".rs") || name == "Cargo.toml" {
            let modified = e.metadata().and_then(|m| m.modified());
            if modified.is_ok_and(|m| m > built) {
                out.push(path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_newer_than_the_binary_is_found_and_tests_dirs_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::create_dir_all(dir.path().join("src/a")).unwrap();
        std::fs::create_dir_all(dir.path().join("tests")).unwrap();
        std::fs::write(dir.path().join("src/a/x.rs"), "").unwrap();
        std::fs::write(dir.path().join("tests/t.rs"), "").unwrap();
        std::fs::write(dir.path().join("notes.md"), "").unwrap();
        let found = newer_sources(dir.path(), built);
        assert_eq!(found, vec![dir.path().join("src/a/x.rs")]);
        assert!(newer_sources(
            dir.path(),
            SystemTime::now() + std::time::Duration::from_secs(60)
        )
        .is_empty());
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let p = Program {
            name: "linewatch-no-such-binary",
            override_var: "LINEWATCH_TESTKIT_NO_SUCH_BIN",
            sources: &[],
        };
        let e = locate(&p).expect_err("missing");
        assert!(e.contains("cargo build --workspace --bins"), "{e}");
        assert!(e.contains("LINEWATCH_TESTKIT_NO_SUCH_BIN"), "{e}");
    }
}
