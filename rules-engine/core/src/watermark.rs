//! The global, idle-aware watermark. Pure: every call gets the clock reading `now`
//! from the caller, so the same arrivals and the same clock give the same watermark.
//!
//! Per sender: the highest event time seen and the clock reading when last seen. On
//! [`WatermarkTracker::advance`]: `watermark = max(previous, min(highest) −
//! maxOutOfOrderness)` over the senders that count, which are those
//! * seen within `idleTimeout` of `now` (active), and
//! * not already behind the watermark (`highest − maxOutOfOrderness ≥ watermark`).
//!
//! The second condition refines the plain min-over-senders rule: a sender returning from idle
//! (or a new sender starting in the past) can only deliver late points until it
//! catches up, so letting it hold the watermark would stall every rule for nothing —
//! the Flink "split waking from idle stalls the watermark" problem. It counts again
//! once it has caught up. When no sender counts, the watermark holds; it never jumps
//! to the maximum.

use crate::pairmap::PairMap;
use crate::resend::{self, Lane};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The injected clock is the runtime's (one trait for both programs); re-exported here
/// so `linewatch_rules_core::watermark::Clock` keeps naming it.
pub use linewatch_runtime::clock::{Clock, ManualClock, SharedClock, SystemClock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkConfig {
    #[serde(with = "duration_text")]
    pub max_out_of_orderness: Duration,
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// How far past its arrival clock a point's event time may be. A point beyond
    /// it (a year-3000 stamp) moves neither its sender nor the watermark: it is
    /// refused ([`Observation::Future`]). Applied only where the caller has an
    /// arrival clock (the service: the record's ApproximateArrivalTimestamp).
    #[serde(with = "duration_text", default = "default_future_skew")]
    pub max_future_skew: Duration,
    /// A sender that keeps sending while its event time has not advanced for this
    /// long (a frozen clock) stops holding the watermark back, like an idle one.
    #[serde(with = "duration_text", default = "default_stall_after")]
    pub stall_after: Duration,
    /// A sender seen at one clock reading only (a one-off point) holds the
    /// watermark back for at most this long, not the whole idle timeout.
    #[serde(with = "duration_text", default = "default_first_seen_grace")]
    pub first_seen_grace: Duration,
    /// A sender back after being idle counts no further than before, for this long
    /// or until its first heartbeat (which declares its backlog, if any): its live
    /// points may come on one shard before that heartbeat on another.
    #[serde(with = "duration_text", default = "default_resume_grace")]
    pub resume_grace: Duration,
    /// Senders not seen for this long are forgotten (bounded memory, metrics and
    /// checkpoint); one that returns starts as a new sender. Never less than the
    /// idle timeout, so forgetting changes no decision.
    #[serde(with = "duration_text", default = "default_prune_after")]
    pub prune_after: Duration,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_orderness: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_future_skew: default_future_skew(),
            stall_after: default_stall_after(),
            first_seen_grace: default_first_seen_grace(),
            resume_grace: default_resume_grace(),
            prune_after: default_prune_after(),
        }
    }
}

impl WatermarkConfig {
    /// The given out-of-orderness and idle timeout, every other bound at its default.
    pub fn with(max_out_of_orderness: Duration, idle_timeout: Duration) -> Self {
        WatermarkConfig {
            max_out_of_orderness,
            idle_timeout,
            ..WatermarkConfig::default()
        }
    }
}

pub fn default_future_skew() -> Duration {
    Duration::from_secs(5 * 60)
}
pub fn default_stall_after() -> Duration {
    Duration::from_secs(30)
}
pub fn default_first_seen_grace() -> Duration {
    Duration::from_secs(5)
}
pub fn default_resume_grace() -> Duration {
    Duration::from_secs(5)
}
pub fn default_prune_after() -> Duration {
    Duration::from_secs(3600)
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What the tracker knows about one sender: the per-sender bookkeeping a per-rule
/// watermark (a minimum over the senders feeding one rule) can be built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SenderState {
    /// Never reused within a process; senders are kept in `id` order. Not in the
    /// checkpoint: numbered afresh on restore.
    #[serde(skip)]
    pub id: u64,
    pub gateway_id: Option<String>,
    pub source_id: String,
    /// Highest event time seen (data or heartbeat), never beyond the future bound.
    pub highest: u64,
    /// Clock reading of the last arrival.
    pub last_seen: u64,
    pub points: u64,
    pub late: u64,
    /// Clock reading of the first arrival.
    #[serde(default)]
    pub first_seen: u64,
    /// Clock reading when `highest` last moved up (a frozen clock stops moving it).
    #[serde(default)]
    pub advanced_at: u64,
    /// Points refused for an event time beyond arrival + `maxFutureSkew`.
    #[serde(default)]
    pub future: u64,
    /// Points dropped as the agent's resends (see [`crate::resend`]).
    #[serde(default)]
    pub resent: u64,
    /// Per equipment (live and backfill apart): the sequence numbers seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lanes: Vec<Lane>,
    /// The `lowWatermark` of its last heartbeat: it still has unsent points at or
    /// after this event time (a backlog), so it holds event time below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_watermark: Option<u64>,
    /// Clock reading of its return after being idle (0: none, or its first heartbeat
    /// since came). For `resumeGrace` after it, the sender counts no further than where it was before it went quiet:
    /// a gateway back from an outage may have live points on one shard before the
    /// heartbeat declaring its backlog arrives from another.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed_at: u64,
    /// Its highest event time when it returned.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed_from: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl SenderState {
    /// `gatewayId/sourceId`, or `sourceId` alone when the point had no gateway.
    pub fn name(&self) -> String {
        match &self.gateway_id {
            Some(g) => format!("{g}/{}", self.source_id),
            None => self.source_id.clone(),
        }
    }
}

/// Clock readings a sender's last arrival, first arrival, last advance and return are
/// compared with (see `WatermarkTracker::cutoffs`).
struct Cutoffs {
    /// Not seen since before this: idle.
    idle: u64,
    /// Seen once, before this: a one-off.
    one_off: u64,
    /// Event time not advanced since before this: stalled.
    stall: u64,
    /// Returned after this: still within the resume grace.
    resumed: u64,
    no_resume: bool,
}

/// Where a sender stands at a clock reading. Only [`SenderStatus::Active`] senders
/// hold the watermark back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SenderStatus {
    Active,
    /// Not seen for the idle timeout.
    Idle,
    /// Seen at one clock reading only, longer ago than the first-seen grace.
    OneOff,
    /// Still sending, but its event time has not advanced for `stallAfter`: a frozen
    /// clock. Reported as a degraded sender.
    Stalled,
}

/// What one arrival did to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Above the watermark: to be buffered.
    OnTime,
    /// At or below the watermark.
    Late,
    /// Event time beyond the arrival clock plus the allowed skew: the sender and the
    /// watermark are untouched; `bound` is the latest event time that was allowed.
    Future { bound: u64 },
    /// A sequence number its lane has seen: the agent sent the point again. Counted;
    /// nothing else changed.
    Resend,
}

/// Where a point sits in its sender's numbering: its lane and sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Numbered<'a> {
    pub equipment_id: &'a str,
    pub backfill: bool,
    pub sequence_number: u64,
}

/// Serialisable state of a [`WatermarkTracker`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkSnapshot {
    pub watermark: Option<u64>,
    pub senders: Vec<SenderState>,
}

/// What [`WatermarkTracker::repair_future`] changed in a restored state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FutureRepair {
    /// The watermark as checkpointed, when it was beyond the bound.
    pub watermark_was: Option<u64>,
    /// Senders forgotten because their highest event time was beyond the bound.
    pub senders_forgotten: Vec<String>,
}

impl FutureRepair {
    pub fn is_empty(&self) -> bool {
        self.watermark_was.is_none() && self.senders_forgotten.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    max_ooo: u64,
    idle: u64,
    future_skew: u64,
    stall: u64,
    grace: u64,
    resume_grace: u64,
    prune: u64,
    watermark: Option<u64>,
    senders: Vec<SenderState>,
    /// (gateway — "" when absent, gateway ids are never empty — , source) → index.
    lookup: PairMap<u32>,
    /// Index of the sender of the previous point.
    last: usize,
    /// Senders forgotten by pruning, since start.
    pruned: u64,
    /// No sender can be stale before this clock reading (a lower bound: senders only
    /// get newer), so `advance` skips the scan for pruning until then.
    prune_due: u64,
    next_id: u64,
    /// Moves whenever senders are removed (indices shift), so holders of indices
    /// know to look them up again by id.
    generation: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WatermarkTracker {
    pub fn new(cfg: WatermarkConfig) -> Self {
        let idle = ms(cfg.idle_timeout);
        WatermarkTracker {
            max_ooo: ms(cfg.max_out_of_orderness),
            idle,
            future_skew: ms(cfg.max_future_skew),
            stall: ms(cfg.stall_after),
            grace: ms(cfg.first_seen_grace),
            resume_grace: ms(cfg.resume_grace),
            prune: ms(cfg.prune_after).max(idle),
            watermark: None,
            senders: Vec::new(),
            lookup: PairMap::default(),
            last: 0,
            pruned: 0,
            prune_due: 0,
            next_id: 0,
            generation: 0,
        }
    }

    pub fn restore(cfg: WatermarkConfig, snap: WatermarkSnapshot) -> Self {
        let mut t = Self::new(cfg);
        t.watermark = snap.watermark;
        for mut s in snap.senders {
            // A checkpoint from before the stall bookkeeping: its last arrival is the
            // best guess of when it last advanced.
            if s.advanced_at == 0 {
                s.advanced_at = s.last_seen;
            }
            s.id = t.next_id;
            t.next_id += 1;
            t.senders.push(s);
        }
        t.rebuild_lookup();
        t
    }

    fn rebuild_lookup(&mut self) {
        self.generation += 1;
        self.lookup = PairMap::default();
        for (i, s) in self.senders.iter().enumerate() {
            *self.lookup.get_or_insert_with(
                s.gateway_id.as_deref().unwrap_or(""),
                &s.source_id,
                || i as u32,
            ) = i as u32;
        }
        self.last = 0;
    }

    pub fn snapshot(&self) -> WatermarkSnapshot {
        WatermarkSnapshot {
            watermark: self.watermark,
            senders: self.senders.clone(),
        }
    }

    /// The watermark: every point at or below it is late. `None` before the first
    /// advance with an active sender.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    pub fn senders(&self) -> &[SenderState] {
        &self.senders
    }

    /// Senders forgotten after `pruneAfter` without an arrival, since start.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }

    /// Late points per sender name, senders without late points left out.
    pub fn late_counts(&self) -> BTreeMap<String, u64> {
        self.senders
            .iter()
            .filter(|s| s.late > 0)
            .map(|s| (s.name(), s.late))
            .collect()
    }

    /// Is `ts` late, i.e. at or below the watermark?
    pub fn is_late(&self, ts: u64) -> bool {
        self.watermark.is_some_and(|w| ts <= w)
    }

    /// The latest event time accepted from a point that arrived at `arrival`.
    pub fn future_bound(&self, arrival: u64) -> u64 {
        arrival.saturating_add(self.future_skew)
    }

    /// A point (or heartbeat) with event time `ts` arrived from a sender at clock
    /// `now`. Returns whether it is late; a late point still shows the sender alive.
    /// No future bound (no arrival clock): see [`WatermarkTracker::observe_arrival`].
    pub fn observe(
        &mut self,
        gateway_id: Option<&str>,
        source_id: &str,
        ts: u64,
        now: u64,
    ) -> bool {
        self.observe_arrival(gateway_id, source_id, ts, now, None) == Observation::Late
    }

    /// Like [`WatermarkTracker::observe`], with the point's arrival clock (e.g. the
    /// Kinesis ApproximateArrivalTimestamp): an event time beyond `arrival +
    /// maxFutureSkew` is refused and counted, and changes nothing else. The arrival
    /// clock belongs to the record, so reading the stream again decides the same.
    pub fn observe_arrival(
        &mut self,
        gateway_id: Option<&str>,
        source_id: &str,
        ts: u64,
        now: u64,
        arrival: Option<u64>,
    ) -> Observation {
        self.observe_numbered(gateway_id, source_id, None, ts, now, arrival)
    }

    /// Like [`WatermarkTracker::observe_arrival`] for a point whose lane and sequence
    /// number are known: a number its lane has seen is a resend and changes nothing
    /// but the sender's resend count.
    pub fn observe_numbered(
        &mut self,
        gateway_id: Option<&str>,
        source_id: &str,
        numbered: Option<Numbered<'_>>,
        ts: u64,
        now: u64,
        arrival: Option<u64>,
    ) -> Observation {
        let i = self.sender_index(gateway_id, source_id, now);
        // The future bound first: a refused point changes nothing, not even its lane.
        if let Some(bound) = arrival.map(|a| self.future_bound(a)) {
            if ts > bound {
                let s = &mut self.senders[i];
                s.future += 1;
                return Observation::Future { bound };
            }
        }
        let backfill = numbered.as_ref().is_some_and(|n| n.backfill);
        if let Some(n) = numbered {
            let s = &mut self.senders[i];
            let newer = s.points > 0 && ts > s.highest;
            if !resend::admit(
                &mut s.lanes,
                n.equipment_id,
                n.backfill,
                n.sequence_number,
                newer,
            ) {
                s.resent += 1;
                return Observation::Resend;
            }
        }
        let late = self.is_late(ts);
        let s = &mut self.senders[i];
        if s.points == 0 {
            // First accepted point: "seen once" counts from here.
            s.first_seen = now;
            s.advanced_at = now;
        } else if now.saturating_sub(s.last_seen) > self.idle {
            s.resumed_at = now;
            s.resumed_from = s.highest;
        }
        if ts > s.highest {
            s.highest = ts;
            s.advanced_at = s.advanced_at.max(now);
        }
        s.last_seen = s.last_seen.max(now);
        s.points += 1;
        // The backlog comes in the order it was read, within maxOutOfOrderness like any
        // point: what of it is still to come is no older than this point less that
        // bound. So the declaration rises with the drain, and a sender whose last
        // heartbeat declared a backlog (a drain with no live source left) is not held
        // below it forever.
        if backfill {
            if let Some(low) = s.low_watermark {
                s.low_watermark = Some(low.max(ts.saturating_sub(self.max_ooo)));
            }
        }
        if late {
            s.late += 1;
            Observation::Late
        } else {
            Observation::OnTime
        }
    }

    fn sender_index(&mut self, gateway_id: Option<&str>, source_id: &str, now: u64) -> usize {
        // Points come in runs from one sender (a Kinesis batch, a PLC poll): compare
        // with the previous sender before hashing.
        if let Some(last) = self.senders.get(self.last) {
            if last.source_id == source_id && last.gateway_id.as_deref() == gateway_id {
                return self.last;
            }
        }
        let gw = gateway_id.unwrap_or("");
        if let Some(&i) = self.lookup.get(gw, source_id) {
            self.last = i as usize;
            return i as usize;
        }
        let i = self.senders.len();
        let id = self.next_id;
        self.next_id += 1;
        self.senders.push(SenderState {
            id,
            gateway_id: gateway_id.map(str::to_owned),
            source_id: source_id.to_owned(),
            highest: 0,
            // A sender refused on its first point has not been seen yet: it is not
            // active until an acceptable point arrives.
            last_seen: 0,
            points: 0,
            late: 0,
            first_seen: now,
            advanced_at: now,
            future: 0,
            resent: 0,
            lanes: Vec::new(),
            low_watermark: None,
            resumed_at: 0,
            resumed_from: 0,
        });
        self.lookup.get_or_insert_with(gw, source_id, || i as u32);
        self.last = i;
        i
    }

    /// Where sender `s` stands at clock `now`.
    pub fn status(&self, s: &SenderState, now: u64) -> SenderStatus {
        let quiet = now.saturating_sub(s.last_seen);
        if s.points == 0 || quiet > self.idle {
            SenderStatus::Idle
        } else if s.first_seen == s.last_seen && quiet > self.grace {
            SenderStatus::OneOff
        } else if now.saturating_sub(s.advanced_at) > self.stall {
            SenderStatus::Stalled
        } else {
            SenderStatus::Active
        }
    }

    /// How far sender `s` lets event time go at clock `now`: its highest event time
    /// less the out-of-orderness, below its declared low watermark while it has a
    /// backlog, and no further than before an outage for `resumeGrace` after it
    /// returned (time for the heartbeat declaring its backlog to arrive).
    pub fn contribution(&self, s: &SenderState, now: u64) -> u64 {
        self.contribution_cut(s, &self.cutoffs(now))
    }

    /// The clock readings [`Self::status`] and [`Self::contribution`] compare with,
    /// worked out once per advance: the loops over every sender stay a few compares.
    fn cutoffs(&self, now: u64) -> Cutoffs {
        Cutoffs {
            idle: now.saturating_sub(self.idle),
            one_off: now.saturating_sub(self.grace),
            stall: now.saturating_sub(self.stall),
            resumed: now.saturating_sub(self.resume_grace),
            no_resume: self.resume_grace == 0,
        }
    }

    /// [`Self::status`] is [`SenderStatus::Active`], by the cutoffs.
    #[inline]
    fn counts(s: &SenderState, c: &Cutoffs) -> bool {
        s.points > 0
            && s.last_seen >= c.idle
            && !(s.first_seen == s.last_seen && s.last_seen < c.one_off)
            && s.advanced_at >= c.stall
    }

    #[inline]
    fn contribution_cut(&self, s: &SenderState, c: &Cutoffs) -> u64 {
        let mut v = s.highest.saturating_sub(self.max_ooo);
        if let Some(low) = s.low_watermark {
            v = v.min(low.saturating_sub(1));
        }
        if s.resumed_at > c.resumed && !c.no_resume {
            v = v.min(s.resumed_from.saturating_sub(self.max_ooo));
        }
        v
    }

    /// Each sender's contribution at clock `now`, `None` for a sender that does not
    /// count (not [`SenderStatus::Active`]); in the order of [`Self::senders`].
    pub fn contributions(&self, now: u64, into: &mut Vec<Option<u64>>) {
        let c = self.cutoffs(now);
        into.clear();
        into.extend(
            self.senders
                .iter()
                .map(|s| Self::counts(s, &c).then(|| self.contribution_cut(s, &c))),
        );
    }

    /// The candidate before taking the maximum with the previous watermark, if any
    /// sender counts at clock `now`.
    pub fn candidate(&self, now: u64) -> Option<u64> {
        let c = self.cutoffs(now);
        let floor = self.watermark.unwrap_or(0);
        let mut min: Option<u64> = None;
        for s in &self.senders {
            if !Self::counts(s, &c) {
                continue;
            }
            let v = self.contribution_cut(s, &c);
            if v >= floor && min.is_none_or(|m| v < m) {
                min = Some(v);
            }
        }
        min
    }

    /// Changes whenever sender indices shift (pruning, repair, restore).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the sender with stable `id` is now, if it is still known.
    pub fn index_of_id(&self, id: u64) -> Option<usize> {
        self.senders.binary_search_by_key(&id, |s| s.id).ok()
    }

    /// The sender named by `gatewayId`/`sourceId`, if known.
    pub fn find(&self, gateway_id: Option<&str>, source_id: &str) -> Option<usize> {
        self.lookup
            .get(gateway_id.unwrap_or(""), source_id)
            .map(|&i| i as usize)
    }

    /// The highest event time of any sender.
    pub fn highest(&self) -> Option<u64> {
        self.senders.iter().map(|s| s.highest).max()
    }

    /// The last observed point was judged against the global watermark; a caller
    /// that judges by another clock (the `equipment` scope) corrects the count.
    pub fn recount_late(&mut self, late: bool) {
        if let Some(s) = self.senders.get_mut(self.last) {
            if late {
                s.late += 1;
            } else {
                s.late = s.late.saturating_sub(1);
            }
        }
    }

    /// The index (in [`Self::senders`]) of the sender of the last observed point.
    pub fn last_sender(&self) -> usize {
        self.last
    }

    /// A heartbeat of the last observed sender declared `low` (`None`: it has no
    /// backlog, or no more). Kept only for a sender that has an accepted point. Any
    /// heartbeat ends the wait after a return from idle: it would have declared a
    /// backlog if there was one.
    pub fn declare_low_watermark(&mut self, low: Option<u64>) {
        if let Some(s) = self.senders.get_mut(self.last) {
            if s.points > 0 {
                s.low_watermark = low;
                s.resumed_at = 0;
            }
        }
    }

    /// Recompute at clock `now`. Returns the new watermark if it moved. Senders not
    /// seen for `pruneAfter` are forgotten first (they count for nothing already).
    pub fn advance(&mut self, now: u64) -> Option<u64> {
        self.prune(now);
        let c = self.candidate(now)?;
        match self.watermark {
            Some(w) if c <= w => None,
            _ => {
                self.watermark = Some(c);
                self.watermark
            }
        }
    }

    fn prune(&mut self, now: u64) {
        if now <= self.prune_due {
            return;
        }
        let prune = self.prune;
        let seen = |s: &SenderState| s.last_seen.max(s.first_seen);
        let stale = |s: &SenderState| now.saturating_sub(seen(s)) > prune;
        if self.senders.iter().any(stale) {
            let before = self.senders.len();
            self.senders.retain(|s| !stale(s));
            self.pruned += (before - self.senders.len()) as u64;
            self.senders.shrink_to_fit();
            self.rebuild_lookup();
        }
        // The earliest a remaining sender can go stale; new ones come later.
        self.prune_due = self
            .senders
            .iter()
            .map(|s| seen(s).saturating_add(prune))
            .min()
            .unwrap_or(now);
    }

    /// After a restore at clock `now`: a checkpoint written before the future bound
    /// existed (or under a wider one) may hold a poisoned watermark. Senders whose
    /// highest event time is beyond `now + maxFutureSkew` are forgotten (their honest
    /// position is unknown; their next point registers them again), and a watermark
    /// beyond the bound goes back to the slowest remaining sender's position, or to
    /// none (the next advance sets it from the senders). Points dead-lettered as late
    /// while it was poisoned stay dead-lettered.
    pub fn repair_future(&mut self, now: u64) -> FutureRepair {
        let bound = self.future_bound(now);
        let mut repair = FutureRepair::default();
        if self.senders.iter().any(|s| s.highest > bound) {
            repair.senders_forgotten = self
                .senders
                .iter()
                .filter(|s| s.highest > bound)
                .map(SenderState::name)
                .collect();
            self.senders.retain(|s| s.highest <= bound);
            self.rebuild_lookup();
        }
        if let Some(w) = self.watermark.filter(|w| *w > bound) {
            repair.watermark_was = Some(w);
            self.watermark = self
                .senders
                .iter()
                .map(|s| s.highest.saturating_sub(self.max_ooo))
                .min();
        }
        repair
    }

    /// End of input: move the watermark to the highest event time seen, so every
    /// buffered point is released and every hold due by then fires.
    pub fn finish(&mut self) -> Option<u64> {
        let max = self.highest()?;
        match self.watermark {
            Some(w) if max <= w => None,
            _ => {
                self.watermark = Some(max);
                self.watermark
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Only the out-of-orderness and the idle timeout: the other bounds out of reach.
    fn cfg(ooo: u64, idle: u64) -> WatermarkConfig {
        WatermarkConfig {
            max_out_of_orderness: Duration::from_millis(ooo),
            idle_timeout: Duration::from_millis(idle),
            max_future_skew: Duration::from_secs(300),
            stall_after: Duration::from_secs(1 << 40),
            first_seen_grace: Duration::from_secs(1 << 40),
            resume_grace: Duration::ZERO,
            prune_after: Duration::from_secs(1 << 40),
        }
    }

    #[test]
    fn slowest_active_sender_holds_it_back() {
        let mut t = WatermarkTracker::new(cfg(10, 1000));
        t.observe(Some("gw"), "a", 100, 0);
        t.observe(Some("gw"), "b", 50, 0);
        assert_eq!(t.advance(0), Some(40));
        t.observe(Some("gw"), "b", 200, 10);
        assert_eq!(t.advance(10), Some(90));
        assert!(t.is_late(90));
        assert!(!t.is_late(91));
    }

    #[test]
    fn idle_sender_stops_holding_and_all_idle_holds() {
        let mut t = WatermarkTracker::new(cfg(0, 100));
        t.observe(None, "a", 1000, 0);
        t.observe(None, "b", 10, 0);
        assert_eq!(t.advance(0), Some(10));
        t.observe(None, "a", 2000, 150);
        // b last seen at 0, now 150 > idle 100: a alone counts.
        assert_eq!(t.advance(150), Some(2000));
        // Everyone idle: hold, do not jump.
        assert_eq!(t.advance(10_000), None);
        assert_eq!(t.watermark(), Some(2000));
        // b returns with old data: late, counted, and it does not stall a.
        assert!(t.observe(None, "b", 20, 10_000));
        t.observe(None, "a", 2500, 10_000);
        assert_eq!(t.advance(10_000), Some(2500));
        assert_eq!(t.late_counts(), BTreeMap::from([("b".to_string(), 1)]));
    }

    #[test]
    fn finish_moves_to_the_highest_seen() {
        let mut t = WatermarkTracker::new(cfg(5_000, 100));
        t.observe(None, "a", 10_000, 0);
        assert_eq!(t.advance(0), Some(5_000));
        assert_eq!(t.finish(), Some(10_000));
        assert_eq!(t.finish(), None);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut t = WatermarkTracker::new(cfg(5, 100));
        t.observe(Some("g"), "a", 100, 1);
        t.advance(1);
        let snap = t.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let back: WatermarkSnapshot = serde_json::from_str(&json).unwrap();
        let mut r = WatermarkTracker::restore(cfg(5, 100), back);
        assert_eq!(r.watermark(), Some(95));
        assert!(!r.observe(Some("g"), "a", 120, 2));
        assert_eq!(r.senders().len(), 1);
    }

    const YEAR_3000: u64 = 32_503_680_000_000;

    #[test]
    fn a_future_point_moves_neither_its_sender_nor_the_watermark() {
        let mut t = WatermarkTracker::new(cfg(0, 1_000));
        assert_eq!(
            t.observe_arrival(Some("gw"), "plc", 1_000, 10, Some(1_000)),
            Observation::OnTime
        );
        assert_eq!(
            t.observe_arrival(Some("gw"), "plc", YEAR_3000, 10, Some(1_000)),
            Observation::Future { bound: 301_000 }
        );
        assert_eq!(t.advance(10), Some(1_000));
        // Just inside the bound is accepted; far past is late as always.
        assert_eq!(
            t.observe_arrival(Some("gw"), "plc", 301_000, 20, Some(1_000)),
            Observation::OnTime
        );
        assert_eq!(t.advance(20), Some(301_000));
        assert_eq!(
            t.observe_arrival(Some("gw"), "plc", 5, 30, Some(301_000)),
            Observation::Late
        );
        let s = &t.senders()[0];
        assert_eq!((s.future, s.late, s.points), (1, 1, 3));
        // A new sender whose only points are in the future is not even active.
        t.observe_arrival(None, "liar", YEAR_3000, 40, Some(2_000));
        assert_eq!(t.status(&t.senders()[1], 40), SenderStatus::Idle);
        assert_eq!(t.advance(40), None);
    }

    #[test]
    fn a_frozen_clock_stops_holding_the_watermark_after_stall_after() {
        let mut t = WatermarkTracker::new(WatermarkConfig {
            stall_after: Duration::from_millis(100),
            ..cfg(0, 1_000)
        });
        let mut now = 0;
        for i in 0..30u64 {
            now = i * 10;
            t.observe(None, "frozen", 50, now); // the same stamp, again and again
            t.observe(None, "honest", 50 + i * 10, now);
            t.advance(now);
        }
        // Held at 50 for 100 ms of clock, then the honest sender alone counts.
        assert_eq!(t.status(&t.senders()[0], now), SenderStatus::Stalled);
        assert_eq!(t.watermark(), Some(50 + 29 * 10));
        // Its frozen points are late now; it counts again only once it advances past.
        assert!(t.observe(None, "frozen", 50, now));
        t.observe(None, "frozen", 1_000, now + 1);
        assert_eq!(t.status(&t.senders()[0], now + 1), SenderStatus::Active);
    }

    #[test]
    fn a_sender_seen_once_holds_back_for_the_grace_only() {
        let mut t = WatermarkTracker::new(WatermarkConfig {
            first_seen_grace: Duration::from_millis(50),
            ..cfg(0, 1_000)
        });
        t.observe(None, "once", 10, 0);
        t.observe(None, "steady", 100, 0);
        assert_eq!(t.advance(0), Some(10));
        t.observe(None, "steady", 200, 40);
        assert_eq!(t.advance(40), None, "within the grace it holds");
        t.observe(None, "steady", 300, 60);
        assert_eq!(t.status(&t.senders()[0], 60), SenderStatus::OneOff);
        assert_eq!(t.advance(60), Some(300));
    }

    #[test]
    fn silent_senders_are_pruned_and_come_back_as_new() {
        let mut t = WatermarkTracker::new(WatermarkConfig {
            prune_after: Duration::from_millis(500),
            ..cfg(0, 100)
        });
        for i in 0..100u64 {
            t.observe(None, &format!("fake-{i}"), 10, 0);
        }
        t.observe(None, "real", 20, 0);
        t.advance(0);
        t.observe(None, "real", 1_000, 600);
        t.advance(601);
        assert_eq!(t.senders().len(), 1);
        assert_eq!(t.pruned(), 100);
        assert_eq!(t.watermark(), Some(1_000));
        // The lookup was rebuilt: the survivor is still found, a returning one is new.
        t.observe(None, "real", 1_100, 700);
        assert_eq!(t.senders()[0].points, 3);
        assert!(
            t.observe(None, "fake-3", 10, 700),
            "late as any returning sender"
        );
        assert_eq!(t.senders().len(), 2);
    }

    /// One arrival: sender, event time, clock step.
    fn arrivals() -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
        proptest::collection::vec((0u8..4, 0u64..5_000, 0u64..300), 1..200)
    }

    proptest! {
        /// Far-future points mixed into any honest stream change no decision: the
        /// watermark after every step is the one without them.
        #[test]
        fn future_points_change_nothing(
            steps in arrivals(),
            poison in proptest::collection::vec((0u8..5, any::<bool>()), 1..200),
            ooo in 0u64..500, idle in 1u64..1_000,
        ) {
            let skew = 300_000;
            let mut clean = WatermarkTracker::new(cfg(ooo, idle));
            let mut mixed = WatermarkTracker::new(cfg(ooo, idle));
            let mut now = 0;
            for (i, (s, ts, dt)) in steps.into_iter().enumerate() {
                now += dt;
                let arrival = now + ts; // honest: never beyond arrival + skew
                let name = s.to_string();
                let a = clean.observe_arrival(None, &name, ts, now, Some(arrival));
                if let Some((who, on)) = poison.get(i) {
                    if *on {
                        let liar = who.to_string(); // an honest sender's id, or a new one
                        let seen = mixed.observe_arrival(None, &liar, arrival + skew + 1 + ts, now, Some(arrival));
                        let refused = matches!(seen, Observation::Future { .. });
                        prop_assert!(refused);
                    }
                }
                let b = mixed.observe_arrival(None, &name, ts, now, Some(arrival));
                prop_assert_eq!(a, b);
                prop_assert_eq!(clean.advance(now), mixed.advance(now));
                prop_assert_eq!(clean.watermark(), mixed.watermark());
            }
        }

        #[test]
        fn never_decreases_and_never_passes_a_counting_sender(
            steps in arrivals(), ooo in 0u64..500, idle in 1u64..1_000,
        ) {
            let mut t = WatermarkTracker::new(cfg(ooo, idle));
            let mut now = 0;
            let mut prev = None;
            for (s, ts, dt) in steps {
                now += dt;
                t.observe(None, &s.to_string(), ts, now);
                let before = t.watermark();
                let counting: Vec<u64> = t.senders().iter()
                    .filter(|x| now - x.last_seen <= idle)
                    .map(|x| x.highest.saturating_sub(ooo))
                    .filter(|c| before.is_none_or(|w| *c >= w))
                    .collect();
                if let Some(w) = t.advance(now) {
                    // It moved: to no more than any counting sender allows.
                    for c in &counting {
                        prop_assert!(w <= *c);
                    }
                    // And never past an active sender's highest − ooo that it had not passed.
                    for x in t.senders().iter().filter(|x| now - x.last_seen <= idle) {
                        prop_assert!(w <= x.highest.saturating_sub(ooo) || before.is_some_and(|b| b > x.highest.saturating_sub(ooo)));
                    }
                }
                prop_assert!(t.watermark() >= prev);
                prev = t.watermark();
            }
        }

        #[test]
        fn idle_sender_is_ignored_and_late_when_it_returns(
            fast in proptest::collection::vec(1u64..50, 5..50), idle in 10u64..100,
        ) {
            let mut t = WatermarkTracker::new(cfg(0, idle));
            t.observe(None, "slow", 1, 0);
            let mut now = 0;
            let mut ts = 1;
            for step in fast {
                now += step;
                ts += step;
                t.observe(None, "fast", ts, now);
                t.advance(now);
            }
            if now > idle {
                // The slow sender is idle: the watermark follows the fast one.
                prop_assert_eq!(t.watermark(), Some(ts));
                prop_assert!(t.observe(None, "slow", 2, now));
                prop_assert_eq!(t.late_counts().get("slow").copied(), Some(1));
            } else {
                prop_assert_eq!(t.watermark(), Some(1));
            }
        }
    }
}
