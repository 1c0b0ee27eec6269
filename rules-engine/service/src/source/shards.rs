//! Shard positions and the lineage scheduler: which shards may be read now, and from where.
//!
//! Pure: the reader tasks and ListShards live in [`super::kinesis`].

use super::config::StartPosition;
use super::SourceBatch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// How far one shard has been delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardPosition {
    /// Every record up to and including this sequence number was delivered.
    After(String),
    /// The shard is closed (split or merged) and every record of it was delivered.
    Finished,
}

/// Every shard's position, as checkpointed by the engine. Finished shards are kept
/// (their children wait for them); shards the stream no longer lists (trimmed after
/// the retention period) may be dropped with [`ShardPositions::forget_unlisted`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardPositions(pub BTreeMap<String, ShardPosition>);

impl ShardPositions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, shard_id: &str) -> Option<&ShardPosition> {
        self.0.get(shard_id)
    }

    pub fn is_finished(&self, shard_id: &str) -> bool {
        self.0.get(shard_id) == Some(&ShardPosition::Finished)
    }

    pub fn set(&mut self, shard_id: impl Into<String>, position: ShardPosition) {
        self.0.insert(shard_id.into(), position);
    }

    /// Records a delivered batch: its shard is now at the batch's position.
    pub fn apply(&mut self, batch: &SourceBatch) {
        self.set(batch.shard_id.clone(), batch.position.clone());
    }

    /// Drops shards not in `listed` (the stream's current shard list). Use the newest
    /// listing (e.g. `KinesisSource::listed_shards().borrow()`), never an older copy:
    /// a shard created after that copy would be forgotten and read again.
    pub fn forget_unlisted(&mut self, listed: &BTreeSet<String>) {
        self.0.retain(|id, _| listed.contains(id));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &ShardPosition)> {
        self.0.iter()
    }
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parent: Option<String>,
    /// The second parent of a merged shard.
    pub adjacent_parent: Option<String>,
    /// Has an ending sequence number: no record will be added.
    pub closed: bool,
}

impl ShardInfo {
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent
            .as_deref()
            .into_iter()
            .chain(self.adjacent_parent.as_deref())
    }
}

/// The shards that may be read now: listed, not finished, and every parent that is
/// still listed is finished (a parent trimmed away counts as finished: its records
/// are gone, and they were all older than the child's).
pub fn readable<'a>(listed: &'a [ShardInfo], positions: &ShardPositions) -> Vec<&'a ShardInfo> {
    let ids: BTreeSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    listed
        .iter()
        .filter(|s| !positions.is_finished(&s.id))
        .filter(|s| {
            s.parents()
                .all(|p| !ids.contains(p) || positions.is_finished(p))
        })
        .collect()
}

/// Where a shard's reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    TrimHorizon,
    Latest,
    AtTimestamp(SystemTime),
    AfterSequence(String),
}

impl ReadFrom {
    /// Where a shard starts that has no (usable) checkpointed position.
    pub fn from_start(start: StartPosition) -> ReadFrom {
        match start {
            StartPosition::TrimHorizon => ReadFrom::TrimHorizon,
            StartPosition::Latest => ReadFrom::Latest,
            StartPosition::AtTimestamp(t) => ReadFrom::AtTimestamp(t),
        }
    }
}

/// What to do with a readable shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Read(ReadFrom),
    /// Count it as finished without reading (a closed shard under `start = "latest"`).
    SkipAsFinished,
}

/// Where `shard` starts. `initial` is true for shards of the first listing when the
/// source started without any positions: only they follow `start = "latest"`. A shard
/// found later (a split or merge child) holds only new records, so it is read whole.
/// A checkpointed position always wins.
pub fn plan(
    shard: &ShardInfo,
    positions: &ShardPositions,
    start: StartPosition,
    initial: bool,
) -> Plan {
    match positions.get(&shard.id) {
        Some(ShardPosition::After(seq)) => Plan::Read(ReadFrom::AfterSequence(seq.clone())),
        Some(ShardPosition::Finished) => Plan::SkipAsFinished,
        None => match start {
            StartPosition::TrimHorizon => Plan::Read(ReadFrom::TrimHorizon),
            // Records before the time are never wanted, whichever shard they are in.
            StartPosition::AtTimestamp(t) => Plan::Read(ReadFrom::AtTimestamp(t)),
            StartPosition::Latest if initial && shard.closed => Plan::SkipAsFinished,
            StartPosition::Latest if initial => Plan::Read(ReadFrom::Latest),
            StartPosition::Latest => Plan::Read(ReadFrom::TrimHorizon),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shard(id: &str, parent: Option<&str>, adj: Option<&str>, closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parent: parent.map(Into::into),
            adjacent_parent: adj.map(Into::into),
            closed,
        }
    }

    fn ids(v: Vec<&ShardInfo>) -> Vec<&str> {
        v.into_iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn split_then_merge() {
        // 0 split into 1 and 2; 1 and 2 merged into 3.
        let listed = vec![
            shard("0", None, None, true),
            shard("1", Some("0"), None, true),
            shard("2", Some("0"), None, true),
            shard("3", Some("1"), Some("2"), false),
        ];
        let mut p = ShardPositions::new();
        assert_eq!(ids(readable(&listed, &p)), ["0"]);
        p.set("0", ShardPosition::After("5".into()));
        assert_eq!(ids(readable(&listed, &p)), ["0"]);
        p.set("0", ShardPosition::Finished);
        assert_eq!(ids(readable(&listed, &p)), ["1", "2"]);
        p.set("1", ShardPosition::Finished);
        assert_eq!(
            ids(readable(&listed, &p)),
            ["2"],
            "3 waits for both parents"
        );
        p.set("2", ShardPosition::Finished);
        assert_eq!(ids(readable(&listed, &p)), ["3"]);
    }

    #[test]
    fn trimmed_parents_count_as_finished() {
        let listed = vec![
            shard("1", Some("0"), None, false),
            shard("2", Some("0"), Some("9"), false),
        ];
        assert_eq!(ids(readable(&listed, &ShardPositions::new())), ["1", "2"]);
    }

    #[test]
    fn forget_unlisted_keeps_listed_finished_shards() {
        let mut p = ShardPositions::new();
        p.set("0", ShardPosition::Finished);
        p.set("1", ShardPosition::Finished);
        p.set("2", ShardPosition::After("7".into()));
        p.forget_unlisted(&["1".to_owned(), "2".to_owned()].into());
        assert_eq!(p.len(), 2);
        assert!(p.is_finished("1") && p.get("0").is_none());
    }

    #[test]
    fn plans() {
        let open = shard("1", None, None, false);
        let closed = shard("0", None, None, true);
        let mut p = ShardPositions::new();
        use StartPosition::*;
        assert_eq!(
            plan(&open, &p, TrimHorizon, true),
            Plan::Read(ReadFrom::TrimHorizon)
        );
        assert_eq!(plan(&open, &p, Latest, true), Plan::Read(ReadFrom::Latest));
        assert_eq!(plan(&closed, &p, Latest, true), Plan::SkipAsFinished);
        // A child found while running is read whole, even under `latest`.
        assert_eq!(
            plan(&open, &p, Latest, false),
            Plan::Read(ReadFrom::TrimHorizon)
        );
        let t = SystemTime::UNIX_EPOCH;
        assert_eq!(
            plan(&open, &p, AtTimestamp(t), false),
            Plan::Read(ReadFrom::AtTimestamp(t))
        );
        p.set("1", ShardPosition::After("42".into()));
        assert_eq!(
            plan(&open, &p, Latest, true),
            Plan::Read(ReadFrom::AfterSequence("42".into()))
        );
    }

    #[test]
    fn positions_serialize_readably() {
        let mut p = ShardPositions::new();
        p.set("shardId-000000000000", ShardPosition::Finished);
        p.set("shardId-000000000001", ShardPosition::After("4959".into()));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"shardId-000000000000":"finished","shardId-000000000001":{"after":"4959"}}"#
        );
        assert_eq!(serde_json::from_str::<ShardPositions>(&json).unwrap(), p);
    }

    /// A random reshard history: `ops` splits (one parent) and merges (two open shards).
    fn history(initial: usize, ops: &[(bool, usize, usize)]) -> Vec<ShardInfo> {
        let mut all: Vec<ShardInfo> = (0..initial)
            .map(|i| shard(&format!("s{i}"), None, None, false))
            .collect();
        for &(split, a, b) in ops {
            let open: Vec<usize> = (0..all.len()).filter(|&i| !all[i].closed).collect();
            let x = open[a % open.len()];
            let next = |all: &Vec<ShardInfo>| format!("s{}", all.len());
            if split || open.len() < 2 {
                all[x].closed = true;
                let p = all[x].id.clone();
                for _ in 0..2 {
                    let id = next(&all);
                    all.push(shard(&id, Some(&p), None, false));
                }
            } else {
                let y = open[(a + 1 + b % (open.len() - 1)) % open.len()];
                all[x].closed = true;
                all[y].closed = true;
                let (p, q) = (all[x].id.clone(), all[y].id.clone());
                let id = next(&all);
                all.push(shard(&id, Some(&p), Some(&q), false));
            }
        }
        all
    }

    proptest! {
        /// Reading shards in any order the scheduler allows: children never before
        /// their (listed) parents, and every shard is read in the end.
        #[test]
        fn lineage_order(
            initial in 1usize..4,
            ops in proptest::collection::vec((any::<bool>(), 0usize..8, 0usize..8), 0..12),
            trimmed in 0usize..4,
            picks in proptest::collection::vec(any::<usize>(), 64),
        ) {
            let all = history(initial, &ops);
            // Trimming removes the oldest shards first.
            let listed: Vec<ShardInfo> = all.iter().skip(trimmed.min(all.len() - 1)).cloned().collect();
            let listed_ids: BTreeSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
            let mut p = ShardPositions::new();
            let mut order: Vec<String> = Vec::new();
            let mut i = 0;
            loop {
                let r = readable(&listed, &p);
                if r.is_empty() { break; }
                for s in &r {
                    for parent in s.parents() {
                        prop_assert!(!listed_ids.contains(parent) || order.iter().any(|o| o == parent),
                            "{} readable before its parent {}", s.id, parent);
                    }
                }
                // Open shards never finish in reality; here every shard is read to its end.
                let pick = r[picks[i % picks.len()] % r.len()].id.clone();
                i += 1;
                prop_assert!(!order.contains(&pick));
                order.push(pick.clone());
                p.set(pick, ShardPosition::Finished);
            }
            prop_assert_eq!(order.len(), listed.len(), "every shard read: {:?}", order);
        }
    }
}
