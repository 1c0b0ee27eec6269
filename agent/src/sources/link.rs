//! What a source knows about its link, and the decisions that follow from it (pure,
//! time passed in): reconnect delays, which readings carry `Fst`, when one `Syn`
//! batch is due, when a heartbeat (and the final `Lst` one) may go out.
//! [`super::driver`] does the waiting and sending.

use linewatch_schemas::{Flag, Flags};
use std::time::Duration;

/// Exponential backoff with jitter: the n-th delay is drawn from the upper half of
/// `initial × 2ⁿ`, capped at `max` and never below `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2f64.powi(self.attempt.min(30) as i32);
        let base = self.initial.as_secs_f64() * factor;
        let base = base.min(self.max.as_secs_f64());
        let jittered = base * (0.5 + 0.5 * unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64(jittered).clamp(self.initial, self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
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
    fn backoff_doubles_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let top: Vec<u128> = (0..6).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(top, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(200));
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
        fn backoff_stays_within_bounds_and_grows(
            initial_ms in 1u64..5_000, extra_ms in 0u64..60_000,
            draws in prop::collection::vec(0f64..1.0, 1..40),
        ) {
            let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(initial_ms + extra_ms));
            let mut b = Backoff::new(initial, max);
            let mut ceiling = initial;
            for u in draws {
                let d = b.next_delay(u);
                prop_assert!(d >= initial && d <= max, "{d:?} outside {initial:?}..{max:?}");
                // Never above the un-jittered exponential step.
                prop_assert!(d <= ceiling + Duration::from_micros(1), "{d:?} above {ceiling:?}");
                ceiling = (ceiling * 2).min(max);
            }
        }

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
