//! When has the start-up delivery of retained rules finished? Pure, clock-injected.
//!
//! MQTT 3.1.1 has no "end of retained messages" marker. The broker sends them after
//! the SUBACK of the subscription, so delivery counts as complete once subscribed and
//! no retained message arrived for `quiet` — or, whatever happened, at `wait` after
//! start (the engine must not hold data forever when the broker is down).

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct InitialSync {
    hard_deadline: Instant,
    quiet: Duration,
    /// Subscribed on the current connection, and since when: the quiet period counts
    /// from the later of this and the last retained message.
    subscribed_at: Option<Instant>,
    last_retained: Option<Instant>,
    rules: HashSet<String>,
    done: bool,
}

/// The result, reported once: how many rules were received, and whether the bound hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncDone {
    pub rules: usize,
    pub timed_out: bool,
}

impl InitialSync {
    pub fn new(start: Instant, wait: Duration, quiet: Duration) -> InitialSync {
        InitialSync {
            hard_deadline: start + wait,
            quiet,
            subscribed_at: None,
            last_retained: None,
            rules: HashSet::new(),
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The subscription was acknowledged.
    pub fn subscribed(&mut self, now: Instant) {
        self.subscribed_at = Some(now);
    }

    /// The connection dropped: a new subscription (and quiet period) is needed.
    pub fn disconnected(&mut self) {
        self.subscribed_at = None;
    }

    /// A rule message arrived. Retained ones extend the quiet period; every rule with a
    /// script received before the end counts (a delete un-counts it).
    pub fn rule_message(&mut self, now: Instant, rule_id: &str, retained: bool, has_script: bool) {
        if self.done {
            return;
        }
        if retained {
            self.last_retained = Some(now);
        }
        if has_script {
            self.rules.insert(rule_id.to_string());
        } else {
            self.rules.remove(rule_id);
        }
    }

    /// When [`InitialSync::poll`] next has something to say (`None`: done).
    pub fn deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        Some(
            self.quiet_end()
                .map_or(self.hard_deadline, |q| q.min(self.hard_deadline)),
        )
    }

    /// `Some` exactly once: when the quiet period after the subscription has passed,
    /// or (timed out) at the hard deadline.
    pub fn poll(&mut self, now: Instant) -> Option<SyncDone> {
        if self.done {
            return None;
        }
        let complete = self.quiet_end().is_some_and(|q| q <= now);
        if !complete && now < self.hard_deadline {
            return None;
        }
        self.done = true;
        Some(SyncDone {
            rules: self.rules.len(),
            timed_out: !complete,
        })
    }

    fn quiet_end(&self) -> Option<Instant> {
        let subscribed = self.subscribed_at?;
        let from = match self.last_retained {
            Some(r) if r > subscribed => r,
            _ => subscribed,
        };
        Some(from + self.quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn done_after_quiet_following_the_last_retained_message() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, 10_000 * MS, 500 * MS);
        assert_eq!(
            s.deadline(),
            Some(t0 + 10_000 * MS),
            "not subscribed: the bound"
        );
        assert_eq!(s.poll(t0 + 100 * MS), None);
        s.subscribed(t0 + 100 * MS);
        assert_eq!(s.deadline(), Some(t0 + 600 * MS));
        s.rule_message(t0 + 300 * MS, "a", true, true);
        s.rule_message(t0 + 400 * MS, "b", true, true);
        assert_eq!(s.deadline(), Some(t0 + 900 * MS));
        assert_eq!(s.poll(t0 + 899 * MS), None);
        assert_eq!(
            s.poll(t0 + 900 * MS),
            Some(SyncDone {
                rules: 2,
                timed_out: false
            })
        );
        assert!(s.is_done());
        assert_eq!(s.poll(t0 + 20_000 * MS), None, "reported once");
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn live_messages_do_not_extend_the_wait_and_deletes_uncount() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, 10_000 * MS, 500 * MS);
        s.subscribed(t0);
        s.rule_message(t0 + 100 * MS, "a", true, true);
        s.rule_message(t0 + 200 * MS, "b", true, true);
        s.rule_message(t0 + 400 * MS, "c", false, true);
        s.rule_message(t0 + 450 * MS, "b", false, false);
        assert_eq!(s.deadline(), Some(t0 + 700 * MS));
        assert_eq!(
            s.poll(t0 + 700 * MS),
            Some(SyncDone {
                rules: 2,
                timed_out: false
            })
        );
    }

    #[test]
    fn times_out_at_the_bound_without_a_subscription() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, 2_000 * MS, 500 * MS);
        s.rule_message(t0 + 100 * MS, "a", false, true);
        assert_eq!(s.poll(t0 + 1_999 * MS), None);
        assert_eq!(
            s.poll(t0 + 2_000 * MS),
            Some(SyncDone {
                rules: 1,
                timed_out: true
            })
        );
    }

    #[test]
    fn a_stream_of_retained_messages_is_cut_at_the_bound() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, 1_000 * MS, 500 * MS);
        s.subscribed(t0);
        for i in 1..=9 {
            s.rule_message(t0 + 100 * i * MS, &format!("r{i}"), true, true);
        }
        assert_eq!(s.deadline(), Some(t0 + 1_000 * MS));
        let done = s.poll(t0 + 1_000 * MS).unwrap();
        assert!(done.timed_out);
        assert_eq!(done.rules, 9);
    }

    #[test]
    fn a_disconnect_restarts_the_quiet_period_on_the_next_subscription() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, 10_000 * MS, 500 * MS);
        s.subscribed(t0);
        s.disconnected();
        assert_eq!(s.deadline(), Some(t0 + 10_000 * MS));
        assert_eq!(s.poll(t0 + 600 * MS), None);
        s.subscribed(t0 + 3_000 * MS);
        assert_eq!(
            s.poll(t0 + 3_500 * MS),
            Some(SyncDone {
                rules: 0,
                timed_out: false
            })
        );
    }

    #[test]
    fn zero_wait_is_done_at_once() {
        let t0 = Instant::now();
        let mut s = InitialSync::new(t0, Duration::ZERO, 500 * MS);
        assert_eq!(
            s.poll(t0),
            Some(SyncDone {
                rules: 0,
                timed_out: true
            })
        );
    }
}
