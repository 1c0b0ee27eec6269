//! Events that could not be delivered: one JSON file per event per target,
//! `<dir>/<target>/<event id>.json`, written atomically (temporary file, fsync, rename,
//! fsync of the folder). Readers need no lock, so the CLI can list and replay while the
//! engine runs.

use crate::output::outbox::PendingEvent;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// One dead-lettered event, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub target: String,
    pub id: Uuid,
    pub transition_id: String,
    /// "rejected", "max attempts", "max age", "outbox full", "replay failed".
    pub reason: String,
    /// HTTP status of the last attempt, if the target answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The last attempt's error when there was no answer (timeout, connection refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    /// ms since the epoch; the time of dead-lettering if there was no attempt.
    pub first_attempt_at: u64,
    /// ms since the epoch; the time of dead-lettering if there was no attempt.
    pub last_attempt_at: u64,
    /// The envelope as JSON.
    pub event: serde_json::Value,
}

impl DeadLetter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        ev: &PendingEvent,
        reason: &str,
        status: Option<u16>,
        error: Option<String>,
        attempts: u32,
        first_attempt_at: u64,
        last_attempt_at: u64,
    ) -> Self {
        DeadLetter {
            target: target.to_string(),
            id: ev.id,
            transition_id: ev.transition_id.clone(),
            reason: reason.to_string(),
            status,
            error,
            attempts,
            first_attempt_at,
            last_attempt_at,
            // Bodies are envelopes we serialised; keep a foreign one as a string.
            event: serde_json::from_str(&ev.body)
                .unwrap_or_else(|_| serde_json::Value::String(ev.body.to_string())),
        }
    }

    /// The body to POST on replay: the envelope's canonical JSON, byte for byte what the
    /// engine sent (see [`PendingEvent::from_transition`]).
    pub fn body(&self) -> String {
        match &self.event {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter store: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dead-letter store: {path}: not a dead-letter entry: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("dead-letter store: {0:?} is not a valid target name")]
    BadTarget(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DeadLetterError + 'a {
    move |source| DeadLetterError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The store: a folder per target.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    dir: Arc<PathBuf>,
}

impl DeadLetterStore {
    /// Opens (creating) the store's folder.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DeadLetterError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(DeadLetterStore { dir: Arc::new(dir) })
    }

    /// The store at `dir` without creating anything: for readers (`dead-letters list`,
    /// `replay`), which must not leave folders behind. A missing folder lists as empty.
    pub fn existing(dir: impl Into<PathBuf>) -> Self {
        DeadLetterStore {
            dir: Arc::new(dir.into()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn target_dir(&self, target: &str) -> Result<PathBuf, DeadLetterError> {
        // Names are checked by the config; this keeps a bad one from escaping the folder.
        if target.is_empty()
            || !target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(DeadLetterError::BadTarget(target.to_string()));
        }
        Ok(self.dir.join(target))
    }

    pub fn path_of(&self, target: &str, id: Uuid) -> Result<PathBuf, DeadLetterError> {
        Ok(self.target_dir(target)?.join(format!("{id}.json")))
    }

    /// Writes (or replaces) the entry of `dl.target`/`dl.id`, durably.
    pub fn put(&self, dl: &DeadLetter) -> Result<PathBuf, DeadLetterError> {
        let dir = self.target_dir(&dl.target)?;
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(format!("{}.json", dl.id));
        // Unique per writer: the engine and the CLI may write at the same time.
        let tmp = dir.join(format!(
            ".{}.{}.{:016x}.tmp",
            dl.id,
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut bytes = serde_json::to_vec_pretty(dl).map_err(|source| DeadLetterError::Json {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("rename", &path)(e));
        }
        sync_dir(&dir)?;
        Ok(path)
    }

    pub fn get(&self, target: &str, id: Uuid) -> Result<Option<DeadLetter>, DeadLetterError> {
        let path = self.path_of(target, id)?;
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| DeadLetterError::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Entries of one target or of all, oldest `lastAttemptAt` first. An unreadable entry
    /// is logged and skipped, so one bad file does not hide the others.
    pub fn list(&self, target: Option<&str>) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let targets: Vec<String> = match target {
            Some(t) => {
                self.target_dir(t)?;
                vec![t.to_string()]
            }
            None => read_dir_names(&self.dir)?
                .into_iter()
                .filter(|n| self.dir.join(n).is_dir() && !n.starts_with('.'))
                .collect(),
        };
        let mut out = Vec::new();
        for t in targets {
            let dir = self.dir.join(&t);
            for name in read_dir_names(&dir)? {
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let path = dir.join(&name);
                let entry = std::fs::read(&path)
                    .map_err(io("read", &path))
                    .and_then(|b| {
                        serde_json::from_slice::<DeadLetter>(&b).map_err(|source| {
                            DeadLetterError::Json {
                                path: path.clone(),
                                source,
                            }
                        })
                    });
                match entry {
                    Ok(dl) => out.push(dl),
                    // Removed by a replay in the meantime.
                    Err(DeadLetterError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(error = %e, "skipping a dead-letter entry"),
                }
            }
        }
        out.sort_by(|a, b| {
            (a.last_attempt_at, &a.target, a.id).cmp(&(b.last_attempt_at, &b.target, b.id))
        });
        Ok(out)
    }

    /// Removes an entry; `false` if it was not there.
    pub fn remove(&self, target: &str, id: Uuid) -> Result<bool, DeadLetterError> {
        let path = self.path_of(target, id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, DeadLetterError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(io("list", dir))?;
                if let Some(n) = e.file_name().to_str() {
                    names.push(n.to_string());
                }
            }
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("list", dir)(e)),
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), DeadLetterError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u128) -> PendingEvent {
        PendingEvent {
            id: Uuid::from_u128(n),
            transition_id: format!("r/e/{n}/1"),
            body: format!(
                r#"{{"detail":{{"sequence":{n}}},"id":"{}"}}"#,
                Uuid::from_u128(n)
            )
            .into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn put_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeadLetterStore::open(dir.path().join("dl")).unwrap();
        assert!(s.list(None).unwrap().is_empty());
        let a = DeadLetter::new("a", &ev(1), "rejected", Some(400), None, 1, 10, 30);
        let b = DeadLetter::new(
            "b",
            &ev(2),
            "max age",
            None,
            Some("timeout".into()),
            7,
            5,
            20,
        );
        let p = s.put(&a).unwrap();
        s.put(&b).unwrap();
        assert_eq!(p, dir.path().join("dl/a").join(format!("{}.json", a.id)));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for key in [
            "target",
            "id",
            "transitionId",
            "reason",
            "status",
            "attempts",
            "firstAttemptAt",
            "lastAttemptAt",
            "event",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["event"]["detail"]["sequence"], 1);
        // Sorted by lastAttemptAt.
        assert_eq!(s.list(None).unwrap(), vec![b.clone(), a.clone()]);
        assert_eq!(s.list(Some("a")).unwrap(), vec![a.clone()]);
        assert_eq!(s.list(Some("nobody")).unwrap(), vec![]);
        assert_eq!(a.body(), &*ev(1).body);
        // A damaged file and temporary files are skipped.
        std::fs::write(dir.path().join("dl/a/junk.json"), b"{").unwrap();
        std::fs::write(dir.path().join("dl/a/.x.tmp"), b"{").unwrap();
        assert_eq!(s.list(Some("a")).unwrap(), vec![a.clone()]);
        assert!(s.remove("a", a.id).unwrap());
        assert!(!s.remove("a", a.id).unwrap());
        assert_eq!(s.get("b", b.id).unwrap(), Some(b));
        assert!(matches!(
            s.put(&DeadLetter::new("../x", &ev(3), "r", None, None, 0, 0, 0)),
            Err(DeadLetterError::BadTarget(_))
        ));
    }
}
