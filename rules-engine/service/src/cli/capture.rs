//! `linewatch-rules capture --config FILE [--from …] [--until …] [--max N] [--output F]`:
//! the data points of the configured stream as NDJSON (one per line, KPL aggregates
//! de-aggregated by the service's own Kinesis source), so `replay` can run on real data.
//!
//! The decisions (which record to write, when to stop) are [`Capture`]'s and pure; the
//! source, the file and the signals are [`capture`]'s.

use crate::service::checkpoint::CheckpointStore;
use crate::service::config::ServiceConfig;
use crate::source::{
    KinesisSource, ShardPosition, ShardPositions, SourceBatch, SourceError, SourceMetrics,
    StartPosition,
};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_schemas::DataPoint;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The service configuration: its `[kinesis]` section (stream, endpoint, credentials)
    /// and, for `--from checkpoint`, its `state_dir`.
    #[arg(long)]
    pub config: PathBuf,
    /// Where each shard starts: `trim_horizon` (the oldest record), `latest`, an RFC 3339
    /// time (records that arrived at or after it), or `checkpoint` (where the engine
    /// stopped: its checkpoint in `state_dir`; the engine must not be running).
    #[arg(long, default_value = "trim_horizon")]
    pub from: From,
    /// Stop once every shard has been read up to this arrival time (RFC 3339, or `now`:
    /// what is in the stream when capture starts). Without it, and without `--max`,
    /// capture follows the stream until SIGINT or SIGTERM.
    #[arg(long)]
    pub until: Option<Until>,
    /// Stop after this many points.
    #[arg(long)]
    pub max: Option<u64>,
    /// The NDJSON file to write; `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: String,
    /// A progress line on stderr this often (`0s`: none).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
}

/// `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Start(StartPosition),
    Checkpoint,
}

impl std::str::FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "checkpoint" => Ok(From::Checkpoint),
            other => other
                .parse::<StartPosition>()
                .map(From::Start)
                .map_err(|e| {
                    e.replace("kinesis.start: ", "")
                        .replace("expected", "expected \"checkpoint\",")
                }),
        }
    }
}

/// `--until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Now,
    At(SystemTime),
}

impl std::str::FromStr for Until {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "now" {
            return Ok(Until::Now);
        }
        match s.parse::<StartPosition>() {
            Ok(StartPosition::AtTimestamp(t)) => Ok(Until::At(t)),
            _ => Err(format!(
                "expected `now` or an RFC 3339 time (2026-01-31T12:00:00Z), got {s:?}"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no checkpoint in {0} (has the engine run with this state_dir?)")]
    NoCheckpoint(PathBuf),
    #[error(transparent)]
    Checkpoint(#[from] crate::service::checkpoint::CheckpointError),
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
}

/// What a record of a batch is to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Write,
    /// Arrived after `--until`: not written; its shard is read far enough.
    PastUntil,
    /// Not a data point (the engine would dead-letter it): counted, not written.
    NotAPoint(String),
    /// `--max` reached.
    Full,
}

/// Which records to write and when to stop. Pure: times come in as arguments.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    until_ms: Option<u64>,
    max: Option<u64>,
    /// Shards read far enough: a record past `until` seen, or finished.
    done_shards: BTreeSet<String>,
    pub written: u64,
    pub not_points: u64,
    pub past_until: u64,
}

impl Capture {
    pub fn new(until_ms: Option<u64>, max: Option<u64>, start: &ShardPositions) -> Capture {
        Capture {
            until_ms,
            max,
            done_shards: start
                .iter()
                .filter(|(_, p)| **p == ShardPosition::Finished)
                .map(|(s, _)| s.clone())
                .collect(),
            ..Capture::default()
        }
    }

    /// The verdict on every record of `batch`, in order; counts them.
    pub fn take(&mut self, batch: &SourceBatch) -> Vec<Verdict> {
        if batch.position == ShardPosition::Finished {
            self.done_shards.insert(batch.shard_id.clone());
        }
        batch
            .records
            .iter()
            .map(|r| {
                if self.max.is_some_and(|m| self.written >= m) {
                    return Verdict::Full;
                }
                if let (Some(until), Some(arrival)) = (self.until_ms, r.arrival_ms) {
                    if arrival > until {
                        self.done_shards.insert(batch.shard_id.clone());
                        self.past_until += 1;
                        return Verdict::PastUntil;
                    }
                }
                match DataPoint::from_json(&r.data) {
                    Ok(_) => {
                        self.written += 1;
                        Verdict::Write
                    }
                    Err(e) => {
                        self.not_points += 1;
                        Verdict::NotAPoint(e.to_string())
                    }
                }
            })
            .collect()
    }

    /// Whether to stop: `--max` points written, or (with `--until`) every listed shard read
    /// past `until` — a later record seen, finished, or caught up at `now_ms` ≥ `until`.
    pub fn done(
        &self,
        listed: &BTreeSet<String>,
        caught_up: &BTreeSet<String>,
        now_ms: u64,
    ) -> bool {
        if self.max.is_some_and(|m| self.written >= m) {
            return true;
        }
        let Some(until) = self.until_ms else {
            return false;
        };
        !listed.is_empty()
            && listed
                .iter()
                .all(|s| self.done_shards.contains(s) || (now_ms >= until && caught_up.contains(s)))
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the stream of `cfg` per `args` and writes its points to `out` until done or
/// `stop`; returns the counts.
pub async fn capture(
    args: &CaptureArgs,
    cfg: &ServiceConfig,
    out: &mut impl Write,
    stop: CancellationToken,
) -> Result<Capture, CaptureError> {
    let mut kcfg = cfg.kinesis.clone();
    let start = match args.from {
        From::Start(s) => {
            kcfg.start = s;
            ShardPositions::new()
        }
        From::Checkpoint => {
            let dir = cfg.checkpoint_dir();
            if !dir.exists() {
                return Err(CaptureError::NoCheckpoint(dir));
            }
            let mut store = CheckpointStore::open(&dir, Duration::ZERO)?;
            let cp = store
                .load::<serde::de::IgnoredAny, ShardPositions, serde::de::IgnoredAny>()?
                .ok_or_else(|| CaptureError::NoCheckpoint(dir.clone()))?;
            cp.positions
        }
    };
    let until_ms = args.until.map(|u| match u {
        Until::Now => ms(SystemTime::now()),
        Until::At(t) => ms(t),
    });
    let mut state = Capture::new(until_ms, args.max, &start);
    let source = KinesisSource::new(&kcfg, SourceMetrics::new()).await?;
    let listed = source.listed_shards();
    let mut caught = source.caught_up();
    let (tx, mut rx) = mpsc::channel::<SourceBatch>(8);
    let source_stop = stop.child_token();
    let task = tokio::spawn(source.run(start, tx, source_stop.clone(), fastrand::Rng::new()));
    let mut progress =
        (!args.progress_every.is_zero()).then(|| tokio::time::interval(args.progress_every));
    let mut shown_errors = 0u32;
    let mut write_batch = |state: &mut Capture, batch: &SourceBatch| -> Result<(), CaptureError> {
        for (r, v) in batch.records.iter().zip(state.take(batch)) {
            match v {
                Verdict::Write => write_line(out, &r.data).map_err(CaptureError::Write)?,
                Verdict::NotAPoint(e) => {
                    shown_errors += 1;
                    if shown_errors <= 10 {
                        eprintln!(
                            "capture: shard {} record {}/{}: not a data point, skipped: {e}",
                            batch.shard_id, r.sequence_number, r.sub_sequence
                        );
                    }
                }
                Verdict::PastUntil | Verdict::Full => {}
            }
        }
        Ok(())
    };
    loop {
        if state.done(&listed.borrow(), &caught.borrow(), ms(SystemTime::now())) {
            // Everything handed on before the last "caught up" is in the channel.
            while let Ok(batch) = rx.try_recv() {
                write_batch(&mut state, &batch)?;
            }
            break;
        }
        tokio::select! {
            b = rx.recv() => match b {
                Some(batch) => write_batch(&mut state, &batch)?,
                None => break,
            },
            _ = caught.changed() => {}
            _ = tick(&mut progress) => {
                eprintln!(
                    "capture: {} points, {} shards listed, {} caught up",
                    state.written,
                    listed.borrow().len(),
                    caught.borrow().len()
                );
            }
            _ = stop.cancelled() => break,
        }
    }
    source_stop.cancel();
    drop(rx);
    let _ = task.await;
    out.flush().map_err(CaptureError::Write)?;
    Ok(state)
}

async fn tick(iv: &mut Option<tokio::time::Interval>) {
    match iv {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One record as one NDJSON line (re-encoded when its JSON spans lines).
fn write_line(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let data = data.trim_ascii();
    if data.contains(&b'\n') {
        let v: serde_json::Value = serde_json::from_slice(data).map_err(std::io::Error::other)?;
        serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::other)?;
    } else {
        out.write_all(data)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceRecord;
    use proptest::prelude::*;

    fn point(seq: u64) -> Vec<u8> {
        format!(r#"{{"version":1,"timestamp":{seq},"equipmentId":"e","tag":"t","value":1,"quality":"Ok","meta":{{"sequenceNumber":{seq},"flags":[],"createdAt":{seq},"sourceId":"s"}}}}"#).into_bytes()
    }

    fn batch(shard: &str, arrivals: &[u64], finished: bool) -> SourceBatch {
        SourceBatch {
            shard_id: shard.into(),
            records: arrivals
                .iter()
                .enumerate()
                .map(|(i, a)| SourceRecord {
                    sequence_number: format!("{i}"),
                    sub_sequence: 0,
                    partition_key: "e".into(),
                    arrival_ms: Some(*a),
                    data: point(*a),
                })
                .collect(),
            poisoned: Vec::new(),
            position: if finished {
                ShardPosition::Finished
            } else {
                ShardPosition::After("x".into())
            },
            millis_behind_latest: None,
        }
    }

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn until_stops_once_every_shard_is_past_it_or_caught_up() {
        let mut c = Capture::new(Some(100), None, &ShardPositions::new());
        let listed = set(&["a", "b"]);
        assert!(!c.done(&set(&[]), &set(&[]), 200), "nothing listed yet");
        let v = c.take(&batch("a", &[90, 100, 101], false));
        assert_eq!(v, [Verdict::Write, Verdict::Write, Verdict::PastUntil]);
        assert!(!c.done(&listed, &set(&[]), 200), "b not read");
        assert!(
            !c.done(&listed, &set(&["b"]), 99),
            "b caught up, but before until"
        );
        assert!(c.done(&listed, &set(&["b"]), 100));
        assert_eq!((c.written, c.past_until), (2, 1));
    }

    #[test]
    fn max_and_non_points() {
        let mut c = Capture::new(None, Some(2), &ShardPositions::new());
        let mut b = batch("a", &[1, 2, 3], false);
        b.records[0].data = b"not json".to_vec();
        let v = c.take(&b);
        assert!(matches!(v[0], Verdict::NotAPoint(_)));
        assert_eq!(&v[1..], [Verdict::Write, Verdict::Write]);
        assert!(c.done(&set(&[]), &set(&[]), 0));
        assert_eq!(c.take(&batch("a", &[4], false)), [Verdict::Full]);
        assert!(
            !Capture::new(None, None, &ShardPositions::new()).done(
                &set(&["a"]),
                &set(&["a"]),
                u64::MAX
            ),
            "follows until stopped"
        );
    }

    #[test]
    fn finished_shards_count_as_read() {
        let mut start = ShardPositions::new();
        start.set("old", ShardPosition::Finished);
        let mut c = Capture::new(Some(10), None, &start);
        c.take(&batch("a", &[], true));
        assert!(c.done(&set(&["old", "a"]), &set(&[]), 0));
    }

    #[test]
    fn from_and_until_parse() {
        assert_eq!("checkpoint".parse::<From>(), Ok(From::Checkpoint));
        assert_eq!(
            "latest".parse::<From>(),
            Ok(From::Start(StartPosition::Latest))
        );
        assert!(matches!(
            "2026-01-31T12:00:00Z".parse::<From>(),
            Ok(From::Start(StartPosition::AtTimestamp(_)))
        ));
        assert!("yesterday".parse::<From>().is_err());
        assert_eq!("now".parse::<Until>(), Ok(Until::Now));
        assert!("latest".parse::<Until>().is_err());
    }

    proptest! {
        /// Exactly the records that arrived at or before `until` are written, in order.
        #[test]
        fn writes_exactly_what_arrived_by_until(arrivals in proptest::collection::vec(0u64..1000, 0..50), until in 0u64..1000) {
            let mut sorted = arrivals.clone();
            sorted.sort();
            let mut c = Capture::new(Some(until), None, &ShardPositions::new());
            let v = c.take(&batch("a", &sorted, false));
            let written: Vec<u64> = sorted.iter().zip(&v).filter(|(_, v)| **v == Verdict::Write).map(|(a, _)| *a).collect();
            let want: Vec<u64> = sorted.iter().copied().filter(|a| *a <= until).collect();
            prop_assert_eq!(written, want);
        }
    }
}
