//! A group's hold: when a new raw state becomes the group's state. Pure; the caller
//! owns the timer that fires at [`HoldState::deadline`].
//!
//! The timing rules of `docs/rules.md` ("Holds"), in order: the first state takes effect at once; a hold
//! applies to every change; returning to the current state cancels a pending change;
//! a third state restarts the clock; a state that lasts exactly the hold counts; the
//! change carries the time the hold completed (`since + hold`), and a deadline at T
//! is applied before data points stamped T (the caller fires timers first).

use serde::{Deserialize, Serialize};

/// A group's vote: an index into the rule's states, or `None` when the group abstains.
pub type Vote = Option<u16>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub vote: Vote,
    /// Event time the raw state started.
    pub since: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldState {
    /// The state the group votes with; `None` until its first evaluation.
    pub effective: Option<Held>,
    /// A different raw state waiting out the hold.
    pub pending: Option<Held>,
}

/// What an observation did, for the caller's timers and ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// The effective state changed.
    pub changed: bool,
    /// Timer to remove / to set (deadline event times).
    pub old_deadline: Option<u64>,
    pub new_deadline: Option<u64>,
}

impl HoldState {
    pub fn deadline(&self, hold: u64) -> Option<u64> {
        self.pending.map(|p| p.since.saturating_add(hold))
    }

    /// The group's function returned `raw` for values as of event time `t`.
    pub fn observe(&mut self, raw: Vote, t: u64, hold: u64) -> Effect {
        let old_deadline = self.deadline(hold);
        let changed = match self.effective {
            None => {
                self.effective = Some(Held {
                    vote: raw,
                    since: t,
                });
                self.pending = None;
                true
            }
            Some(eff) if eff.vote == raw => {
                self.pending = None;
                false
            }
            Some(_) => match self.pending {
                Some(p) if p.vote == raw => false,
                _ if hold == 0 => {
                    self.effective = Some(Held {
                        vote: raw,
                        since: t,
                    });
                    self.pending = None;
                    true
                }
                _ => {
                    self.pending = Some(Held {
                        vote: raw,
                        since: t,
                    });
                    false
                }
            },
        };
        Effect {
            changed,
            old_deadline,
            new_deadline: self.deadline(hold),
        }
    }

    /// The hold timer fired: the pending state takes effect. Returns whether it did.
    pub fn fire(&mut self) -> bool {
        match self.pending.take() {
            Some(p) => {
                self.effective = Some(p);
                true
            }
            None => false,
        }
    }

    /// Drop a pending change (the group was disabled).
    pub fn cancel(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drive a HoldState like the evaluator does: timers due at or before a point's
    /// time fire first. Returns the effective changes as (time, vote).
    fn run(obs: &[(u64, Vote)], hold: u64, horizon: u64) -> Vec<(u64, Vote)> {
        let mut h = HoldState::default();
        let mut out = Vec::new();
        for &(t, raw) in obs {
            if let Some(d) = h.deadline(hold) {
                if d <= t && h.fire() {
                    out.push((d, h.effective.unwrap().vote));
                }
            }
            if h.observe(raw, t, hold).changed {
                out.push((t, raw));
            }
        }
        if let Some(d) = h.deadline(hold) {
            if d <= horizon && h.fire() {
                out.push((d, h.effective.unwrap().vote));
            }
        }
        out
    }

    /// The definition, by runs of equal raw states: the first run counts at once;
    /// a later run counts at start + hold if it differs from the state in effect
    /// and lasts at least the hold.
    fn reference(obs: &[(u64, Vote)], hold: u64, horizon: u64) -> Vec<(u64, Vote)> {
        let mut runs: Vec<(u64, Vote)> = Vec::new();
        for &(t, raw) in obs {
            if runs.last().map(|r| r.1) != Some(raw) {
                runs.push((t, raw));
            }
        }
        let mut out = Vec::new();
        let mut eff: Option<Vote> = None;
        for (i, &(start, vote)) in runs.iter().enumerate() {
            let end = runs.get(i + 1).map(|r| r.0);
            match eff {
                None => {
                    eff = Some(vote);
                    out.push((start, vote));
                }
                Some(e) if e == vote => {}
                Some(_) => {
                    let due = start + hold;
                    let lasts = match end {
                        Some(end) => end >= due,
                        None => horizon >= due,
                    };
                    if lasts {
                        eff = Some(vote);
                        out.push((due, vote));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn documented_timing_examples() {
        let w = Some(3);
        let ok = Some(0);
        // Exactly the hold counts; the change is stamped since + hold.
        assert_eq!(
            run(&[(0, ok), (10, w), (15, w)], 5, 100),
            vec![(0, ok), (15, w)]
        );
        // Back to the current state cancels.
        assert_eq!(
            run(&[(0, ok), (10, w), (14, ok), (30, ok)], 5, 100),
            vec![(0, ok)]
        );
        // A third state restarts the clock.
        let idle = Some(1);
        assert_eq!(
            run(&[(0, ok), (10, w), (13, idle), (17, idle)], 5, 100),
            vec![(0, ok), (18, idle)]
        );
        // The hold applies to the way back as well.
        assert_eq!(
            run(&[(0, ok), (10, w), (20, ok)], 5, 100),
            vec![(0, ok), (15, w), (25, ok)]
        );
        // No hold: changes at once.
        assert_eq!(run(&[(0, ok), (10, w)], 0, 100), vec![(0, ok), (10, w)]);
    }

    proptest! {
        #[test]
        fn matches_the_run_definition(
            steps in proptest::collection::vec((0u64..8, proptest::option::of(0u16..3)), 1..60),
            hold in 0u64..12,
            tail in 0u64..20,
        ) {
            let mut t = 0;
            let obs: Vec<(u64, Vote)> = steps.iter().map(|&(dt, v)| { t += dt; (t, v) }).collect();
            let horizon = t + tail;
            prop_assert_eq!(run(&obs, hold, horizon), reference(&obs, hold, horizon));
        }
    }
}
