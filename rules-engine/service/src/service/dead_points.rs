//! The points dead-letter file: invalid, late and poisoned records, appended as NDJSON
//! with the reason and where they came from.
//!
//! A single hostile input can produce a flood (one KPL record of 100,000 empty
//! sub-records is 100,000 invalid points): writes and their WARN lines are budgeted per
//! reason ([`DeadLetterBudget`], pure), and what the budget leaves out is counted — in
//! a `{"reason":"suppressed",...}` line of the file when its window closes, in the log
//! line, and in `linewatch_rules_dead_letters_suppressed_total`. Every point is still
//! counted in `linewatch_rules_dead_letters_total` whether written or not.

use crate::source::SourceRecord;
use linewatch_runtime::log_gate::LogGate;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Entries written per reason per window; the rest of the window is counted only.
pub const DEFAULT_PER_WINDOW: u64 = 1_000;
/// Length of a budget window.
pub const WINDOW_MS: u64 = 1_000;
/// One WARN line per reason per this many ms (with the count held back).
const LOG_EVERY_MS: u64 = 10_000;

/// Per-reason write budget over fixed windows. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct DeadLetterBudget {
    per_window: u64,
    window_start: u64,
    written: BTreeMap<&'static str, u64>,
    suppressed: BTreeMap<&'static str, u64>,
}

/// What to do with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admit {
    /// Write it.
    pub write: bool,
    /// Counts of the window that just closed, per reason, to record before this entry.
    pub closed: Vec<(&'static str, u64)>,
}

impl DeadLetterBudget {
    pub fn new(per_window: u64) -> Self {
        DeadLetterBudget {
            per_window,
            window_start: 0,
            written: BTreeMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    /// Decides about one entry of `reason` at `now_ms`.
    pub fn admit(&mut self, reason: &'static str, now_ms: u64) -> Admit {
        let closed = self.roll(now_ms);
        let n = self.written.entry(reason).or_default();
        let write = *n < self.per_window;
        if write {
            *n += 1;
        } else {
            *self.suppressed.entry(reason).or_default() += 1;
        }
        Admit { write, closed }
    }

    /// Closes the window if `now_ms` is past it; returns its suppressed counts.
    pub fn roll(&mut self, now_ms: u64) -> Vec<(&'static str, u64)> {
        // A clock stepping back stays in the current window: never a second budget.
        if now_ms < self.window_start.saturating_add(WINDOW_MS) {
            return Vec::new();
        }
        self.window_start = now_ms;
        self.written.clear();
        std::mem::take(&mut self.suppressed).into_iter().collect()
    }
}

pub struct PointDeadLetters {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    failed: bool,
    budget: DeadLetterBudget,
    logs: BTreeMap<&'static str, LogGate>,
    /// Entries left out since start, per reason (for the metric).
    suppressed_total: BTreeMap<&'static str, u64>,
}

impl PointDeadLetters {
    pub fn new(path: PathBuf) -> PointDeadLetters {
        PointDeadLetters::with_budget(path, DEFAULT_PER_WINDOW)
    }

    pub fn with_budget(path: PathBuf, per_window: u64) -> PointDeadLetters {
        PointDeadLetters {
            path,
            out: None,
            failed: false,
            budget: DeadLetterBudget::new(per_window),
            logs: BTreeMap::new(),
            suppressed_total: BTreeMap::new(),
        }
    }

    /// Records `rec` as dead for `reason`, within the budget. Returns whether it was
    /// written (false: counted as suppressed).
    pub fn put(
        &mut self,
        at: u64,
        shard: &str,
        rec: &SourceRecord,
        reason: &'static str,
        error: &str,
    ) -> bool {
        let admit = self.budget.admit(reason, at);
        self.write_closed(at, &admit.closed);
        if !admit.write {
            *self.suppressed_total.entry(reason).or_default() += 1;
            return false;
        }
        let gate = self
            .logs
            .entry(reason)
            .or_insert_with(|| LogGate::new(LOG_EVERY_MS));
        if let Some(held_back) = gate.check(at) {
            tracing::warn!(reason, error, shard, sequence = %rec.sequence_number, held_back, "record dead-lettered");
        }
        // Bounded like the entry itself: a huge value is kept by its first bytes.
        let data = match std::str::from_utf8(&rec.data) {
            Ok(text) => serde_json::json!({ "data": clip(text) }),
            Err(_) => {
                serde_json::json!({ "dataHex": hex::encode(&rec.data[..rec.data.len().min(MAX_KEPT_BYTES / 2)]) })
            }
        };
        let mut line = serde_json::json!({
            "at": at, "reason": reason, "error": error, "shardId": shard,
            "sequenceNumber": rec.sequence_number, "subSequence": rec.sub_sequence,
            "partitionKey": rec.partition_key, "bytes": rec.data.len(),
        });
        if let (Some(l), Some(d)) = (line.as_object_mut(), data.as_object()) {
            l.extend(d.clone());
        }
        self.write_line(&line);
        true
    }

    /// Closes a budget window that ended without a new entry (call on a timer or after
    /// a batch) so its suppressed count is recorded without waiting for the next one.
    pub fn roll(&mut self, now_ms: u64) {
        let closed = self.budget.roll(now_ms);
        self.write_closed(now_ms, &closed);
    }

    /// Entries left out since start, per reason.
    pub fn suppressed(&self) -> &BTreeMap<&'static str, u64> {
        &self.suppressed_total
    }

    fn write_closed(&mut self, at: u64, closed: &[(&'static str, u64)]) {
        for (reason, n) in closed {
            tracing::warn!(
                reason,
                suppressed = n,
                "dead letters over budget: {n} not written (counted in linewatch_rules_dead_letters_total)"
            );
            let line = serde_json::json!({
                "at": at, "reason": "suppressed", "of": reason, "count": n,
            });
            self.write_line(&line);
        }
    }

    fn write_line(&mut self, line: &serde_json::Value) {
        if self.out.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => self.out = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    if !self.failed {
                        tracing::error!(path = %self.path.display(), error = %e, "cannot open the points dead-letter file");
                        self.failed = true;
                    }
                    return;
                }
            }
        }
        if let Some(out) = &mut self.out {
            if let Err(e) = writeln!(out, "{line}") {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the points dead-letter file");
                self.out = None;
            }
        }
    }

    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the points dead-letter file");
                self.out = None;
            }
        }
    }
}

/// Most of a record's data kept in its dead-letter entry.
pub const MAX_KEPT_BYTES: usize = 64 * 1024;

fn clip(text: &str) -> &str {
    if text.len() <= MAX_KEPT_BYTES {
        return text;
    }
    let mut end = MAX_KEPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        let mut b = DeadLetterBudget::new(3);
        let w: Vec<bool> = (0..10).map(|_| b.admit("invalid", 5_000).write).collect();
        assert_eq!(w.iter().filter(|x| **x).count(), 3);
        // Another reason has its own budget.
        assert!(b.admit("late", 5_000).write);
        // The next window reports the 7 left out, once, and writes again.
        let a = b.admit("invalid", 6_000);
        assert_eq!(
            a,
            Admit {
                write: true,
                closed: vec![("invalid", 7)]
            }
        );
        assert!(b.admit("invalid", 6_001).closed.is_empty());
    }

    #[test]
    fn a_clock_stepping_back_gets_no_new_budget() {
        let mut b = DeadLetterBudget::new(1);
        assert!(b.admit("x", 10_000).write);
        assert!(!b.admit("x", 2_000).write);
        assert!(!b.admit("x", 10_999).write);
        assert!(b.admit("x", 11_000).write);
    }

    #[test]
    fn clipping_keeps_whole_characters() {
        let s = "é".repeat(MAX_KEPT_BYTES);
        let c = clip(&s);
        assert!(c.len() <= MAX_KEPT_BYTES && c.len() >= MAX_KEPT_BYTES - 1);
        assert!(c.chars().all(|ch| ch == 'é'));
        assert_eq!(clip("short"), "short");
    }

    proptest! {
        /// Written + suppressed = offered, and no window writes more than the budget.
        #[test]
        fn nothing_is_lost_from_the_count(
            per in 1u64..20,
            steps in proptest::collection::vec((0u64..300, 0usize..3), 1..400),
        ) {
            let reasons = ["invalid", "late", "poisoned"];
            let mut b = DeadLetterBudget::new(per);
            let (mut now, mut window_start) = (0u64, 0u64);
            let (mut written, mut reported) = (0u64, 0u64);
            let mut in_window: BTreeMap<&str, u64> = BTreeMap::new();
            for (dt, r) in &steps {
                now += dt;
                if now >= window_start + WINDOW_MS {
                    window_start = now;
                    in_window.clear();
                }
                let a = b.admit(reasons[*r], now);
                reported += a.closed.iter().map(|(_, n)| n).sum::<u64>();
                if a.write {
                    written += 1;
                    let n = in_window.entry(reasons[*r]).or_default();
                    *n += 1;
                    prop_assert!(*n <= per);
                }
            }
            reported += b.roll(u64::MAX).iter().map(|(_, n)| n).sum::<u64>();
            prop_assert_eq!(written + reported, steps.len() as u64);
        }
    }
}
