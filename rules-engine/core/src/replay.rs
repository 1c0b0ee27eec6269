//! Replay: recorded data points (NDJSON) through the sequencer and the rules, with
//! the transitions written as NDJSON. The reader and writer are the caller's; this
//! module does no other I/O.
//!
//! Determinism: the clock used for idleness is the *replay clock* — the highest
//! event time read so far (a sender is idle when the stream has moved on by more than
//! `idleTimeout` since its last point). The watermark is recomputed every
//! `advance_every` lines, output is flushed every `flush_every` lines (both counted in
//! input lines), and at the end of input the watermark moves to the highest event
//! time seen, so holds due by then fire. Same input, same options: same output, for
//! any number of workers.

use crate::engine::release;
use crate::eval::{Diagnostic, EvalStats, Output};
use crate::lifecycle::{ChangeOutcome, RuleChange};
use crate::rule::{Limits, Rule, RuleError, Sandbox};
use crate::sequencer::{Admission, LatePolicy, Sequencer, SequencerConfig, WatermarkScope};
use crate::transition::{EventSource, Transition};
use crate::watermark::WatermarkConfig;
use crate::workers::{PoolError, WorkerPool};
use linewatch_schemas::DataPoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub watermark: WatermarkConfig,
    pub late_policy: LatePolicy,
    pub scope: WatermarkScope,
    pub workers: usize,
    pub limits: Limits,
    /// Recompute the watermark every this many input lines (at least; with many
    /// senders every senders/8 lines).
    pub advance_every: u64,
    /// Write output every this many input lines (and at the end).
    pub flush_every: u64,
    /// Report progress every this many input lines (0: never).
    pub progress_every: u64,
    /// Write EventBridge envelopes instead of bare transitions.
    pub events: Option<EventSource>,
    /// End of input means "no more data ever": every pending hold fires at its deadline
    /// (the watermark goes to +∞). Off by default: a live stream's tail has not happened
    /// yet, so holds due after the last point stay pending, as they would in the service.
    pub flush: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            watermark: WatermarkConfig::default(),
            late_policy: LatePolicy::DeadLetter,
            scope: WatermarkScope::Global,
            workers: 1,
            limits: Limits::default(),
            advance_every: 64,
            flush_every: 8192,
            progress_every: 1_000_000,
            events: None,
            flush: false,
        }
    }
}

/// Things the caller may want to report (the CLI prints them on stderr).
#[derive(Debug)]
pub enum ReplayEvent<'a> {
    /// A line that is neither a data point nor a rule change; skipped.
    Malformed {
        line: u64,
        error: String,
    },
    /// A late point (at or below the watermark on arrival).
    Late {
        line: u64,
        point: &'a DataPoint,
        watermark: u64,
        /// The raw line, for a dead-letter file; `None` when the point was applied.
        dead_letter: Option<&'a [u8]>,
    },
    RuleChanged {
        line: u64,
        outcome: &'a ChangeOutcome,
    },
    RuleRejected {
        line: u64,
        error: &'a RuleError,
    },
    Diagnostic(&'a Diagnostic),
    Progress(&'a ReplaySummary),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySummary {
    pub lines: u64,
    pub points: u64,
    pub heartbeats: u64,
    pub malformed: u64,
    pub late: u64,
    /// Points the agent sent again (same sender, lane and sequence number): dropped.
    #[serde(default)]
    pub resends: u64,
    pub dead_lettered: u64,
    pub rule_changes: u64,
    pub transitions: u64,
    pub diagnostics: u64,
    pub watermark: Option<u64>,
    /// Late points per sender (`gatewayId/sourceId`).
    pub late_by_sender: BTreeMap<String, u64>,
    pub evaluation: EvalStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading input: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A rule change recorded in the input: `{"$rule": {"script": "..."}}` adds or
/// updates a rule, `{"$rule": {"delete": "rule-id"}}` deletes one. Applied when read
/// (processing time), like a change arriving on the control topic.
#[derive(Debug, Deserialize)]
struct ControlLine {
    #[serde(rename = "$rule")]
    rule: ControlBody,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ControlBody {
    Script { script: String },
    Delete { delete: String },
}

pub struct Replay<'o, W: Write> {
    opts: ReplayOptions,
    seq: Sequencer,
    pool: WorkerPool,
    sandbox: Sandbox,
    out: &'o mut W,
    summary: ReplaySummary,
    /// The replay clock: highest event time read so far.
    clock: u64,
    since_advance: u64,
    since_flush: u64,
}

impl<'o, W: Write> Replay<'o, W> {
    /// Load `rules` (at event time 0) and get ready to read.
    pub fn new(
        rules: Vec<Arc<Rule>>,
        out: &'o mut W,
        opts: ReplayOptions,
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<Self, ReplayError> {
        let mut pool = WorkerPool::scoped(opts.workers, opts.limits.clone(), opts.scope)?;
        for rule in rules {
            let outcome = pool.apply(RuleChange::Upsert(rule), 0)?;
            on_event(ReplayEvent::RuleChanged {
                line: 0,
                outcome: &outcome,
            });
        }
        Ok(Replay {
            seq: Sequencer::new(SequencerConfig {
                watermark: opts.watermark,
                late_policy: opts.late_policy,
                scope: opts.scope,
            }),
            pool,
            sandbox: Sandbox::new(opts.limits.clone()),
            out,
            summary: ReplaySummary::default(),
            clock: 0,
            since_advance: 0,
            since_flush: 0,
            opts,
        })
    }

    /// Read every line of `input`, then finish.
    pub fn run<R: BufRead>(
        mut self,
        mut input: R,
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<ReplaySummary, ReplayError> {
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            let n = input
                .read_until(b'\n', &mut buf)
                .map_err(ReplayError::Read)?;
            if n == 0 {
                break;
            }
            self.line(&buf, on_event)?;
        }
        self.finish(on_event)
    }

    /// One input line.
    pub fn line(
        &mut self,
        raw: &[u8],
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<(), ReplayError> {
        self.summary.lines += 1;
        let line_no = self.summary.lines;
        let text = raw.trim_ascii();
        if !text.is_empty() {
            match DataPoint::from_json(text) {
                Ok(point) => self.point(point, text, line_no, on_event)?,
                Err(e) => self.other(text, line_no, e.to_string(), on_event)?,
            }
        }
        self.since_advance += 1;
        self.since_flush += 1;
        // Recomputing looks at every sender: with many senders, do it less often so
        // it stays a small cost per line (it only bounds the buffer, not the output).
        let every = self
            .opts
            .advance_every
            .max(self.seq.tracker().senders().len() as u64 / 8);
        if self.since_advance >= every {
            self.since_advance = 0;
            self.step(on_event)?;
        }
        if self.opts.progress_every > 0 && line_no.is_multiple_of(self.opts.progress_every) {
            self.summary.watermark = self.seq.watermark();
            on_event(ReplayEvent::Progress(&self.summary));
        }
        Ok(())
    }

    fn point(
        &mut self,
        point: DataPoint,
        raw: &[u8],
        line: u64,
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<(), ReplayError> {
        self.clock = self.clock.max(point.timestamp);
        match self.seq.push(point, self.clock) {
            Admission::Buffered => self.summary.points += 1,
            Admission::Heartbeat => self.summary.heartbeats += 1,
            Admission::Resend { .. } => self.summary.resends += 1,
            Admission::DeadLetter { point, watermark } => {
                self.summary.points += 1;
                self.summary.late += 1;
                self.summary.dead_lettered += 1;
                on_event(ReplayEvent::Late {
                    line,
                    point: &point,
                    watermark,
                    dead_letter: Some(raw),
                });
            }
            // Never here: replay has no arrival clock, so no future bound. Were it to
            // come, it is dead-lettered like a late point (the bound as "watermark").
            Admission::Future { point, bound } => {
                self.summary.points += 1;
                self.summary.dead_lettered += 1;
                on_event(ReplayEvent::Late {
                    line,
                    point: &point,
                    watermark: bound,
                    dead_letter: Some(raw),
                });
            }
            Admission::Apply { point, at } => {
                self.summary.points += 1;
                self.summary.late += 1;
                on_event(ReplayEvent::Late {
                    line,
                    point: &point,
                    watermark: at,
                    dead_letter: None,
                });
                self.pool.on_late_point(point.into(), at)?;
            }
        }
        Ok(())
    }

    /// A line that is not a data point: a rule change, or malformed.
    fn other(
        &mut self,
        text: &[u8],
        line: u64,
        point_error: String,
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<(), ReplayError> {
        let control = match serde_json::from_slice::<ControlLine>(text) {
            Ok(c) => c,
            Err(_) => {
                self.summary.malformed += 1;
                on_event(ReplayEvent::Malformed {
                    line,
                    error: point_error,
                });
                return Ok(());
            }
        };
        let change = match control.rule {
            ControlBody::Delete { delete } => RuleChange::Delete { id: delete },
            ControlBody::Script { script } => {
                match Rule::compile(&self.sandbox, &script, &format!("input line {line}")) {
                    Ok(rule) => RuleChange::Upsert(Arc::new(rule)),
                    Err(error) => {
                        on_event(ReplayEvent::RuleRejected {
                            line,
                            error: &error,
                        });
                        return Ok(());
                    }
                }
            }
        };
        self.summary.rule_changes += 1;
        // Bring the watermark up to date first, as the service does between batches,
        // so the change applies at the event time the stream has reached.
        self.since_advance = 0;
        self.step(on_event)?;
        let outcome = self.pool.apply(change, self.seq.event_now())?;
        on_event(ReplayEvent::RuleChanged {
            line,
            outcome: &outcome,
        });
        Ok(())
    }

    /// Recompute the watermark; release what it passed; fire holds; maybe write.
    fn step(&mut self, on_event: &mut dyn FnMut(ReplayEvent<'_>)) -> Result<(), ReplayError> {
        if self.seq.step(self.clock) {
            release(&mut self.seq, &mut self.pool)?;
            if self.since_flush >= self.opts.flush_every {
                self.since_flush = 0;
                self.write(on_event)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, on_event: &mut dyn FnMut(ReplayEvent<'_>)) -> Result<(), ReplayError> {
        let Output {
            transitions,
            diagnostics,
        } = self.pool.flush()?;
        for d in &diagnostics {
            on_event(ReplayEvent::Diagnostic(d));
        }
        self.summary.diagnostics += diagnostics.len() as u64;
        self.summary.transitions += transitions.len() as u64;
        for t in &transitions {
            write_transition(&mut *self.out, t, self.opts.events.as_ref())
                .map_err(ReplayError::Write)?;
        }
        Ok(())
    }

    /// End of input: the watermark moves to the highest event time seen (with
    /// [`ReplayOptions::flush`], past every pending hold deadline).
    pub fn finish(
        mut self,
        on_event: &mut dyn FnMut(ReplayEvent<'_>),
    ) -> Result<ReplaySummary, ReplayError> {
        if self.seq.step(self.clock) {
            release(&mut self.seq, &mut self.pool)?;
        }
        self.seq.finish();
        release(&mut self.seq, &mut self.pool)?;
        if self.opts.flush {
            self.pool.advance(u64::MAX)?;
        }
        self.write(on_event)?;
        self.out.flush().map_err(ReplayError::Write)?;
        self.summary.watermark = self.seq.watermark();
        self.summary.late_by_sender = self.seq.tracker().late_counts();
        self.summary.evaluation = self.pool.stats();
        Ok(self.summary)
    }
}

fn write_transition<W: Write + ?Sized>(
    out: &mut W,
    t: &Transition,
    events: Option<&EventSource>,
) -> std::io::Result<()> {
    match events {
        Some(src) => serde_json::to_writer(&mut *out, &t.to_event(src))?,
        None => serde_json::to_writer(&mut *out, t)?,
    }
    out.write_all(b"\n")
}

/// Replay `input` into `out` with `rules`; the whole thing in one call.
pub fn replay<R: BufRead, W: Write>(
    rules: Vec<Arc<Rule>>,
    input: R,
    out: &mut W,
    opts: ReplayOptions,
    on_event: &mut dyn FnMut(ReplayEvent<'_>),
) -> Result<ReplaySummary, ReplayError> {
    Replay::new(rules, out, opts, on_event)?.run(input, on_event)
}

/// Compile rule files; a directory contributes its `*.rhai` files in name order.
/// Returns the rules and the errors (unreadable files, bad scripts, duplicate ids).
pub fn load_rule_files(
    sandbox: &Sandbox,
    paths: &[std::path::PathBuf],
) -> (Vec<Arc<Rule>>, Vec<RuleError>) {
    use crate::rule::RuleErrorKind;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut found: Vec<_> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "rhai"))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => errors.push(RuleError {
                    kind: RuleErrorKind::Definition,
                    origin: p.display().to_string(),
                    rule: None,
                    group: None,
                    line: None,
                    message: format!("cannot read directory: {e}"),
                }),
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        let source = match std::fs::read_to_string(&f) {
            Ok(s) => s,
            Err(e) => {
                errors.push(RuleError {
                    kind: RuleErrorKind::Definition,
                    origin,
                    rule: None,
                    group: None,
                    line: None,
                    message: format!("cannot read file: {e}"),
                });
                continue;
            }
        };
        match Rule::compile(sandbox, &source, &origin) {
            Ok(rule) => {
                if let Some(other) = rules.iter().find(|r| r.id() == rule.id()) {
                    errors.push(RuleError {
                        kind: RuleErrorKind::Definition,
                        origin,
                        rule: Some(rule.id().to_owned()),
                        group: None,
                        line: None,
                        message: format!("rule id already defined in {}", other.origin()),
                    });
                } else {
                    rules.push(Arc::new(rule));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (rules, errors)
}
