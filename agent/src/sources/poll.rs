//! A source's poll timers: one interval per polled group, served round robin.
//!
//! Fresh per connection: an interval's first tick is immediate, so a reconnect
//! polls at once. A tick missed while a read ran long is skipped, not bunched.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// Timers with a value each (the group's index, or what a poll needs).
pub struct PollTimers<T> {
    timers: Vec<(Interval, T)>,
    /// The timer looked at first next time, so a busy group cannot starve the others.
    next: usize,
}

impl<T> PollTimers<T> {
    pub fn new(timers: impl IntoIterator<Item = (Duration, T)>) -> PollTimers<T> {
        let timers = timers
            .into_iter()
            .map(|(period, value)| {
                let mut iv = tokio::time::interval(period);
                iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
                (iv, value)
            })
            .collect();
        PollTimers { timers, next: 0 }
    }

    /// The position of the next timer that ticked; never resolves without timers.
    pub fn tick(&mut self) -> impl Future<Output = usize> + '_ {
        std::future::poll_fn(move |cx| {
            let n = self.timers.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.timers[i].0.poll_tick(cx).is_ready() {
                    self.next = (i + 1) % n;
                    return Poll::Ready(i);
                }
            }
            Poll::Pending
        })
    }

    /// The value of the timer at `position` (as returned by [`PollTimers::tick`]).
    pub fn get(&self, position: usize) -> Option<&T> {
        self.timers.get(position).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_timer_is_served_in_turn_and_none_starves() {
        // Both due at once every time: round robin must alternate, not favour the first.
        let mut timers = PollTimers::new([
            (Duration::from_millis(10), 'a'),
            (Duration::from_millis(10), 'b'),
        ]);
        let mut served = Vec::new();
        for _ in 0..6 {
            let i = timers.tick().await;
            served.push(*timers.get(i).unwrap_or(&'?'));
        }
        assert_eq!(served, ['a', 'b', 'a', 'b', 'a', 'b']);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_tick_is_immediate_and_a_late_one_is_skipped() {
        let mut timers = PollTimers::new([(Duration::from_secs(1), ())]);
        let start = tokio::time::Instant::now();
        timers.tick().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A read that took 3.5 periods: one tick now, then the next on the period's grid.
        tokio::time::advance(Duration::from_millis(3500)).await;
        timers.tick().await;
        timers.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn no_timers_never_tick() {
        let mut timers: PollTimers<()> = PollTimers::new([]);
        let r = tokio::time::timeout(Duration::from_secs(3600), timers.tick()).await;
        assert!(r.is_err());
    }
}
