//! A per-test scratch directory for the peers' logs, data and configs.

use std::path::Path;

/// Kept (and its path printed) when the test fails so the logs can be read; removed
/// when it passes.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    #[track_caller]
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("linewatch-e2e-{test}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        Scratch { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("."),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!(
                    "test failed: logs and buffer kept in {}",
                    d.keep().display()
                );
            }
        }
    }
}
