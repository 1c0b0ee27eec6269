//! What a source knows about its link, and the decisions that follow from it (pure,
//! time passed in): reconnect delays, which readings carry `Fst`, when one `Syn`
//! batch is due, when a heartbeat (and the final `Lst` one) may go out.
//! [`super::driver`] does the waiting and sending.

use linewatch_runtime::{Backoff, BackoffPolicy, Jitter};
use linewatch_schemas::{Flag, Flags};
use std::time::Duration;

/// The reconnect delays of a source: the n-th is drawn from the upper half of
/// `initial × 2ⁿ` (equal jitter), capped at `max` and never below `initial`, so a
/// plant full of gateways does not reconnect in lock-step and none retries sooner
/// than configured.
pub fn reconnect_backoff(initial: Duration, max: Duration) -> Backoff {
    Backoff::new(BackoffPolicy::new(initial, max, Jitter::Equal).with_floor(initial))
}

/// The link's state as far as the flags of what a source emits are concerned.
#[derive(Debug, Clone)]
pub struct LinkState {
    connected: bool,
    /// A `Syn` batch went out and no cycle has succeeded since: do not repeat it.
    down_reported: bool,
    /// Per tag (source-wide index): its next reading is the first since connecting.
    fst_pending: Vec<bool>,
    last_cycle_ok: bool,
    last_ok_cycle_ms: Option<u64>,
    /// A successful cycle older than this does not justify a heartbeat.
    stale_after_ms: u64,
}

impl LinkState {
    pub fn new(tags: usize, stale_after: Duration) -> LinkState {
        LinkState {
            connected: false,
            down_reported: false,
            fst_pending: vec![true; tags],
            last_cycle_ok: false,
            last_ok_cycle_ms: None,
            stale_after_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn on_connected(&mut self) {
        self.connected = true;
        self.last_cycle_ok = false;
        self.fst_pending.fill(true);
    }

    /// The connection failed or was lost. True when a `Syn` batch is due: the first
    /// time since data last flowed, not on every retry.
    pub fn on_link_down(&mut self) -> bool {
        self.connected = false;
        self.last_cycle_ok = false;
        !std::mem::replace(&mut self.down_reported, true)
    }

    /// A read cycle finished; `ok` when the device answered every request of it
    /// (protocol-level errors such as Modbus exceptions included: it answered).
    pub fn on_cycle_done(&mut self, ok: bool, now_ms: u64) {
        self.last_cycle_ok = ok;
        if ok {
            self.down_reported = false;
            self.last_ok_cycle_ms = Some(now_ms);
        }
    }

    /// Flags of the next reading of tag `index`: `Fst` once after each connect.
    pub fn flags_for(&mut self, index: usize) -> Flags {
        match self.fst_pending.get_mut(index) {
            Some(p) if *p => {
                *p = false;
                Flags::empty().with(Flag::Fst)
            }
            _ => Flags::empty(),
        }
    }

    /// A heartbeat says the source is alive: connected, and the last cycle succeeded recently.
    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        self.connected
            && self.last_cycle_ok
            && self
                .last_ok_cycle_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= self.stale_after_ms)
    }

    /// Flags of the final heartbeat on a planned stop: `Wmk` + `Lst` when a
    /// heartbeat would be due now; none (no record) while down or stale, where the
    /// last record already was the `Syn` batch or the silence a heartbeat would break.
    pub fn last_flags(&self, now_ms: u64) -> Option<Flags> {
        self.heartbeat_due(now_ms)
            .then(|| Flags::empty().with(Flag::Wmk).with(Flag::Lst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reconnects_wait_between_half_the_step_and_the_step_never_below_initial() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        // (failures so far, shortest, longest)
        let want = [(0, 100, 100), (1, 100, 200), (2, 200, 400), (5, 500, 1000)];
        for (n, lo, hi) in want {
            let b = reconnect_backoff(initial, max);
            let p = b.policy();
            assert_eq!(p.delay_at(n, 0.0), Duration::from_millis(lo), "after {n}");
            assert_eq!(p.delay_at(n, 1.0), Duration::from_millis(hi), "after {n}");
        }
        let mut b = reconnect_backoff(initial, max);
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..4 {
            b.next_delay(&mut rng);
        }
        b.reset();
        assert_eq!(b.next_delay_at(1.0), initial, "a success starts over");
    }

    #[test]
    fn syn_is_reported_once_until_a_cycle_succeeds() {
        let mut l = LinkState::new(2, Duration::from_secs(10));
        assert!(l.on_link_down(), "first connect failure reports");
        assert!(!l.on_link_down(), "retries do not");
        l.on_connected();
        assert!(
            !l.on_link_down(),
            "connected but nothing read: still the same gap"
        );
        l.on_connected();
        l.on_cycle_done(true, 1_000);
        assert!(
            l.on_link_down(),
            "data flowed, so the next loss reports again"
        );
    }

    #[test]
    fn fst_marks_the_first_reading_of_each_tag_after_each_connect() {
        let mut l = LinkState::new(2, Duration::from_secs(10));
        l.on_connected();
        assert!(l.flags_for(0).contains(Flag::Fst));
        assert!(l.flags_for(0).is_empty());
        assert!(l.flags_for(1).contains(Flag::Fst));
        assert!(
            l.flags_for(7).is_empty(),
            "unknown index: no flag, no panic"
        );
        l.on_link_down();
        l.on_connected();
        assert!(l.flags_for(0).contains(Flag::Fst));
        assert!(l.flags_for(1).contains(Flag::Fst));
    }

    #[test]
    fn heartbeat_needs_a_recent_successful_cycle_while_connected() {
        let mut l = LinkState::new(1, Duration::from_secs(10));
        assert!(!l.heartbeat_due(0));
        l.on_connected();
        assert!(!l.heartbeat_due(0), "nothing read yet");
        l.on_cycle_done(true, 1_000);
        assert!(l.heartbeat_due(5_000));
        assert!(l.heartbeat_due(11_000));
        assert!(!l.heartbeat_due(11_001), "stale");
        l.on_cycle_done(false, 12_000);
        assert!(!l.heartbeat_due(12_000), "last cycle failed");
        l.on_cycle_done(true, 13_000);
        l.on_link_down();
        assert!(!l.heartbeat_due(13_000), "disconnected");
    }

    #[test]
    fn lst_goes_on_the_last_heartbeat_only_while_fresh() {
        let mut l = LinkState::new(1, Duration::from_secs(10));
        assert_eq!(l.last_flags(0), None, "never connected");
        l.on_connected();
        l.on_cycle_done(true, 1_000);
        let flags = l.last_flags(2_000).expect("fresh: a last heartbeat");
        assert!(flags.contains(Flag::Lst) && flags.contains(Flag::Wmk));
        assert!(!flags.contains(Flag::Syn) && !flags.contains(Flag::Fst));
        assert_eq!(l.last_flags(11_001), None, "stale");
        l.on_link_down();
        assert_eq!(l.last_flags(2_000), None, "down");
    }

    proptest! {
        #[test]
        fn one_syn_per_outage_however_many_retries(events in prop::collection::vec(0u8..3, 0..60)) {
            // 0 = connect/link failure, 1 = connected, 2 = cycle ok (only counts while connected).
            let mut l = LinkState::new(1, Duration::from_secs(1));
            let mut syns = 0;
            let mut outages = 0;
            let mut in_outage = false;
            let mut connected = false;
            for e in events {
                match e {
                    0 => {
                        if l.on_link_down() { syns += 1; }
                        if !in_outage { outages += 1; in_outage = true; }
                        connected = false;
                    }
                    1 => { l.on_connected(); connected = true; }
                    _ => if connected { l.on_cycle_done(true, 0); in_outage = false; },
                }
            }
            prop_assert_eq!(syns, outages);
        }
    }
}
