//! Durable checkpoints in sled: the engine's state, the shard positions and the
//! undelivered events, written together in one atomic batch and flushed, so after
//! `kill -9` the engine resumes from a consistent cut of all three.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bumped when the layout changes incompatibly; an unknown format is not loaded.
const FORMAT: u32 = 1;
const KEYS: [&str; 3] = ["engine", "positions", "outbox"];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("checkpoint store {path} is locked by another process (another instance on the same state_dir?)")]
    Locked { path: PathBuf },
    #[error("checkpoint in {path} is unreadable ({part}): {message}")]
    Corrupt {
        path: PathBuf,
        part: &'static str,
        message: String,
    },
    #[error("encoding the checkpoint ({part}): {source}")]
    Encode {
        part: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    format: u32,
    written_at: u64,
    sequence: u64,
}

/// One consistent cut, as loaded.
#[derive(Debug, Clone)]
pub struct Checkpoint<E, P, O> {
    pub engine: E,
    pub positions: P,
    pub outbox: O,
    /// Wall clock (ms) when it was written.
    pub written_at: u64,
    /// How many checkpoints this store has written.
    pub sequence: u64,
}

pub struct CheckpointStore {
    db: sled::Db,
    path: PathBuf,
    sequence: u64,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// Open (or create) the store; waits up to `lock_wait` for a previous owner that
    /// is still exiting to release it.
    pub fn open(path: &Path, lock_wait: Duration) -> Result<CheckpointStore, CheckpointError> {
        let deadline = Instant::now() + lock_wait;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(8 << 20)
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(CheckpointError::Locked {
                            path: path.to_owned(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(CheckpointError::Store {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        Ok(CheckpointStore {
            db,
            path: path.to_owned(),
            sequence: 0,
        })
    }

    /// Bytes the store's files take on disk (sled keeps old segments until it
    /// compacts them, so this can exceed the last checkpoint's size many times).
    pub fn size_on_disk(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last checkpoint written, if any.
    pub fn load<E, P, O>(&mut self) -> Result<Option<Checkpoint<E, P, O>>, CheckpointError>
    where
        E: DeserializeOwned,
        P: DeserializeOwned,
        O: DeserializeOwned,
    {
        let Some(meta) = self.get("meta")? else {
            return Ok(None);
        };
        let meta: Meta = self.decode("meta", &meta)?;
        if meta.format != FORMAT {
            return Err(self.corrupt("meta", format!("format {} is not {FORMAT}", meta.format)));
        }
        let mut parts = Vec::with_capacity(KEYS.len());
        for key in KEYS {
            parts.push(
                self.get(key)?
                    .ok_or_else(|| self.corrupt(key, "missing".into()))?,
            );
        }
        self.sequence = meta.sequence;
        Ok(Some(Checkpoint {
            engine: self.decode("engine", &parts[0])?,
            positions: self.decode("positions", &parts[1])?,
            outbox: self.decode("outbox", &parts[2])?,
            written_at: meta.written_at,
            sequence: meta.sequence,
        }))
    }

    /// Write a checkpoint atomically and make it durable. Returns its size in bytes.
    pub fn save<E: Serialize, P: Serialize, O: Serialize>(
        &mut self,
        engine: &E,
        positions: &P,
        outbox: &O,
        now_ms: u64,
    ) -> Result<usize, CheckpointError> {
        let parts = [
            encode("engine", engine)?,
            encode("positions", positions)?,
            encode("outbox", outbox)?,
        ];
        let meta = Meta {
            format: FORMAT,
            written_at: now_ms,
            sequence: self.sequence + 1,
        };
        let meta = encode("meta", &meta)?;
        let size = parts.iter().map(Vec::len).sum::<usize>() + meta.len();
        let mut batch = sled::Batch::default();
        for (key, value) in KEYS.iter().zip(parts) {
            batch.insert(*key, value);
        }
        batch.insert("meta", meta);
        let store_err = |source| CheckpointError::Store {
            path: self.path.clone(),
            source,
        };
        self.db.apply_batch(batch).map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        self.sequence += 1;
        Ok(size)
    }

    fn get(&self, key: &str) -> Result<Option<sled::IVec>, CheckpointError> {
        self.db.get(key).map_err(|source| CheckpointError::Store {
            path: self.path.clone(),
            source,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        part: &'static str,
        raw: &[u8],
    ) -> Result<T, CheckpointError> {
        serde_json::from_slice(raw).map_err(|e| self.corrupt(part, e.to_string()))
    }

    fn corrupt(&self, part: &'static str, message: String) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.clone(),
            part,
            message,
        }
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

fn encode<T: Serialize>(part: &'static str, v: &T) -> Result<Vec<u8>, CheckpointError> {
    serde_json::to_vec(v).map_err(|source| CheckpointError::Encode { part, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Cp = Checkpoint<BTreeMap<String, u64>, Vec<String>, Vec<u64>>;

    #[test]
    fn a_checkpoint_round_trips_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        {
            let mut s = CheckpointStore::open(&path, Duration::ZERO).unwrap();
            assert!(s
                .load::<BTreeMap<String, u64>, Vec<String>, Vec<u64>>()
                .unwrap()
                .is_none());
            let e = BTreeMap::from([("a".to_owned(), 1u64)]);
            s.save(&e, &vec!["p1".to_owned()], &vec![1u64], 10).unwrap();
            let e = BTreeMap::from([("b".to_owned(), 2u64)]);
            s.save(&e, &vec!["p2".to_owned()], &Vec::<u64>::new(), 20)
                .unwrap();
        }
        let mut s = CheckpointStore::open(&path, Duration::from_secs(5)).unwrap();
        let cp: Cp = s.load().unwrap().unwrap();
        assert_eq!(cp.engine, BTreeMap::from([("b".to_owned(), 2)]));
        assert_eq!(cp.positions, ["p2"]);
        assert!(cp.outbox.is_empty());
        assert_eq!((cp.written_at, cp.sequence), (20, 2));
    }

    #[test]
    fn a_second_owner_is_refused_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let _held = CheckpointStore::open(&path, Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = CheckpointStore::open(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CheckpointError::Locked { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn an_undecodable_part_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        {
            let mut s = CheckpointStore::open(&path, Duration::ZERO).unwrap();
            s.save(&1u64, &2u64, &3u64, 1).unwrap();
            s.db.insert("positions", b"{oops".as_slice()).unwrap();
            s.db.flush().unwrap();
        }
        let mut s = CheckpointStore::open(&path, Duration::from_secs(5)).unwrap();
        let err = s.load::<u64, u64, u64>().unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::Corrupt {
                    part: "positions",
                    ..
                }
            ),
            "{err}"
        );
    }
}
