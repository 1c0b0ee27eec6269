//! The `equipment` watermark scope: one event-time clock per equipment, from the
//! senders that feed it. Pure; the sequencer drives it with the tracker's view.
//!
//! A rule runs independently per equipment (its own values, holds and state), so
//! the senders whose points one of those runs reads are exactly the senders of that
//! equipment's points. Its clock is `max(previous, min(contribution))` over those
//! feeders that count ([`crate::watermark::SenderStatus::Active`], not already
//! behind the clock), the same rule as the global watermark applied to fewer
//! senders. A gateway that is slow, offline or draining a backlog then holds back
//! its own equipment only, and its backlog is still on time for them when it comes.

use crate::reading::Reading;
use crate::reorder::ReorderBuffer;
use crate::watermark::WatermarkTracker;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

/// A sender feeding a clock: its stable id and where it was last found.
#[derive(Debug, Clone, Copy)]
struct Feeder {
    id: u64,
    index: u32,
}

#[derive(Debug, Clone)]
struct Clock {
    equipment_id: Arc<str>,
    feeders: SmallVec<[Feeder; 2]>,
    /// Every point at or below it is late for this equipment.
    at: Option<u64>,
    buffer: ReorderBuffer<Reading>,
}

/// Serialisable state of one equipment's clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockSnapshot {
    pub equipment_id: String,
    /// `(gatewayId, sourceId)` of each feeder.
    pub feeders: Vec<(Option<String>, String)>,
    pub at: Option<u64>,
    pub buffer: ReorderBuffer<Reading>,
}

/// The clocks of every equipment seen, with the points waiting for them.
#[derive(Debug, Clone, Default)]
pub struct EquipmentClocks {
    clocks: Vec<Clock>,
    by_id: HashMap<Arc<str>, u32>,
    /// Index of the previous point's equipment (points come in runs).
    last: usize,
    /// The tracker generation the feeders' indices belong to.
    generation: u64,
    /// Clocks moved by the last advance, released in this order.
    moved: Vec<u32>,
    scratch: Vec<Option<u64>>,
}

/// An equipment's clock reached `to`: its points through `to` have been handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub equipment_id: Arc<str>,
    pub to: u64,
}

impl EquipmentClocks {
    pub fn len(&self) -> usize {
        self.clocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }

    /// Points waiting in every clock's buffer.
    pub fn buffered(&self) -> usize {
        self.clocks.iter().map(|c| c.buffer.len()).sum()
    }

    /// The lowest and the highest clock (for metrics), over clocks that have started.
    pub fn range(&self) -> Option<(u64, u64)> {
        let mut it = self.clocks.iter().filter_map(|c| c.at);
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), a| (lo.min(a), hi.max(a))))
    }

    /// The clock of `equipment_id`, if it has started.
    pub fn clock_of(&self, equipment_id: &str) -> Option<u64> {
        let i = *self.by_id.get(equipment_id)?;
        self.clocks[i as usize].at
    }

    /// The index of `equipment_id`'s clock, created (not started) when new.
    pub fn index(&mut self, equipment_id: &str) -> usize {
        if let Some(c) = self.clocks.get(self.last) {
            if &*c.equipment_id == equipment_id {
                return self.last;
            }
        }
        let i = match self.by_id.get(equipment_id) {
            Some(&i) => i as usize,
            None => {
                let id: Arc<str> = Arc::from(equipment_id);
                self.clocks.push(Clock {
                    equipment_id: Arc::clone(&id),
                    feeders: SmallVec::new(),
                    at: None,
                    buffer: ReorderBuffer::new(),
                });
                let i = self.clocks.len() - 1;
                self.by_id.insert(id, i as u32);
                i
            }
        };
        self.last = i;
        i
    }

    /// Is `ts` late for clock `i`?
    pub fn is_late(&self, i: usize, ts: u64) -> bool {
        self.clocks[i].at.is_some_and(|a| ts <= a)
    }

    /// The clock of `i` (`None` before it started).
    pub fn at(&self, i: usize) -> Option<u64> {
        self.clocks[i].at
    }

    /// The tracker's sender at `sender` (an index) sent a point for clock `i`.
    pub fn fed_by(&mut self, i: usize, tracker: &WatermarkTracker, sender: usize) {
        self.sync(tracker);
        let Some(s) = tracker.senders().get(sender) else {
            return;
        };
        let feeders = &mut self.clocks[i].feeders;
        if !feeders.iter().any(|f| f.id == s.id) {
            feeders.push(Feeder {
                id: s.id,
                index: sender as u32,
            });
        }
    }

    pub fn push(&mut self, i: usize, point: Reading) {
        self.clocks[i].buffer.push(point.timestamp, point);
    }

    /// Feeder indices are positions in the tracker: after it removed senders, find
    /// them again by id; feeders it forgot go, and so do clocks left with no feeder
    /// and nothing buffered (bounded memory under made-up equipment ids).
    fn sync(&mut self, tracker: &WatermarkTracker) {
        if self.generation == tracker.generation() {
            return;
        }
        self.generation = tracker.generation();
        for c in &mut self.clocks {
            c.feeders.retain(|f| match tracker.index_of_id(f.id) {
                Some(i) => {
                    f.index = i as u32;
                    true
                }
                None => false,
            });
        }
        let before = self.clocks.len();
        self.clocks
            .retain(|c| !c.feeders.is_empty() || !c.buffer.is_empty());
        if self.clocks.len() != before {
            self.by_id = self
                .clocks
                .iter()
                .enumerate()
                .map(|(i, c)| (Arc::clone(&c.equipment_id), i as u32))
                .collect();
            self.last = 0;
            self.moved.clear();
        }
    }

    /// Recompute every clock at clock reading `now`; the ones that moved are then
    /// released by [`EquipmentClocks::pop_released`]. Returns whether any moved.
    pub fn advance(&mut self, tracker: &WatermarkTracker, now: u64) -> bool {
        self.sync(tracker);
        let mut scratch = std::mem::take(&mut self.scratch);
        tracker.contributions(now, &mut scratch);
        for (i, c) in self.clocks.iter_mut().enumerate() {
            let candidate = c
                .feeders
                .iter()
                .filter_map(|f| scratch.get(f.index as usize).copied().flatten())
                .filter(|v| c.at.is_none_or(|a| *v >= a))
                .min();
            if let Some(v) = candidate {
                if c.at.is_none_or(|a| v > a) {
                    c.at = Some(v);
                    self.moved.push(i as u32);
                }
            }
        }
        self.scratch = scratch;
        !self.moved.is_empty()
    }

    /// End of input: every clock to `to` (the highest event time seen).
    pub fn finish(&mut self, to: u64) -> bool {
        for (i, c) in self.clocks.iter_mut().enumerate() {
            if c.at.is_none_or(|a| to > a) {
                c.at = Some(to);
                self.moved.push(i as u32);
            }
        }
        !self.moved.is_empty()
    }

    /// The next step of the release: a point of the first moved clock, in event-time
    /// order, or, once its points through the clock are out, the clock itself.
    pub fn pop_released(&mut self) -> Option<Result<Reading, Reached>> {
        let &i = self.moved.last()?;
        let c = &mut self.clocks[i as usize];
        let at = c.at.unwrap_or(0);
        if let Some((_, p)) = c.buffer.pop_through(at) {
            return Some(Ok(p));
        }
        c.buffer.shrink();
        self.moved.pop();
        Some(Err(Reached {
            equipment_id: Arc::clone(&c.equipment_id),
            to: at,
        }))
    }

    /// Clocks beyond `bound` go back to `to_at_most` (the repair of a checkpoint
    /// poisoned by a future point); buffered points beyond `bound` are dropped and
    /// counted.
    pub fn repair_future(&mut self, bound: u64, to_at_most: Option<u64>) -> usize {
        let mut dropped = 0;
        for c in &mut self.clocks {
            if c.at.is_some_and(|a| a > bound) {
                c.at = to_at_most.map(|t| t.min(bound));
            }
            if c.buffer.latest().is_some_and(|l| l > bound) {
                let mut kept = ReorderBuffer::new();
                while let Some((ts, r)) = c.buffer.pop_through(u64::MAX) {
                    if ts > bound {
                        dropped += 1;
                    } else {
                        kept.push(ts, r);
                    }
                }
                c.buffer = kept;
            }
        }
        dropped
    }

    pub fn snapshot(&self, tracker: &WatermarkTracker) -> Vec<ClockSnapshot> {
        self.clocks
            .iter()
            .map(|c| ClockSnapshot {
                equipment_id: c.equipment_id.to_string(),
                feeders: c
                    .feeders
                    .iter()
                    .filter_map(|f| tracker.index_of_id(f.id))
                    .map(|i| {
                        let s = &tracker.senders()[i];
                        (s.gateway_id.clone(), s.source_id.clone())
                    })
                    .collect(),
                at: c.at,
                buffer: c.buffer.clone(),
            })
            .collect()
    }

    pub fn restore(snaps: Vec<ClockSnapshot>, tracker: &WatermarkTracker) -> Self {
        let mut clocks = EquipmentClocks {
            generation: tracker.generation(),
            ..EquipmentClocks::default()
        };
        for s in snaps {
            let i = clocks.index(&s.equipment_id);
            let c = &mut clocks.clocks[i];
            c.at = s.at;
            c.buffer = s.buffer;
            for (g, src) in &s.feeders {
                if let Some(idx) = tracker.find(g.as_deref(), src) {
                    c.feeders.push(Feeder {
                        id: tracker.senders()[idx].id,
                        index: idx as u32,
                    });
                }
            }
        }
        clocks
    }
}
