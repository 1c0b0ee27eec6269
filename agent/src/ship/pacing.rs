//! Shard-aware pacing: a Kinesis shard takes 1,000 records/s and 1 MiB/s in (data
//! plus partition key). The shipper spends from two token buckets sized to the
//! stream's open shards before every PutRecords call, so a drained backlog fills
//! the shards instead of bursting into `ProvisionedThroughputExceeded`, and it
//! halves its rate on throttling and earns it back slowly (additive increase,
//! multiplicative decrease, as TCP does) — a throttled gateway never turns into
//! a retry storm. Pure: the clock reading is passed in.
//!
//! The budget is the stream's, spread evenly over its shards. Points keyed by
//! equipment may land unevenly (three machines on a four-shard stream can share
//! one shard); the throttling feedback then lowers the rate until that shard
//! keeps up.

use std::time::Duration;

/// What one shard accepts per second.
pub const SHARD_RECORDS_PER_SECOND: f64 = 1_000.0;
pub const SHARD_BYTES_PER_SECOND: f64 = 1_048_576.0;
/// The lowest share of the budget throttling can push the rate to.
pub const MIN_FACTOR: f64 = 1.0 / 8.0;
/// Throttles within this long of a halving do not halve again (the answers to
/// calls sent at the old rate, like TCP's once per round trip).
pub const DECREASE_HOLD_MS: u64 = 1_000;
/// Share of the budget won back per accepted call after throttling.
pub const RECOVERY_STEP: f64 = 0.05;

/// The two token buckets (records, bytes), each holding at most one second of
/// the full budget: a call may burst up to one second's worth, never more.
#[derive(Debug, Clone)]
pub struct Pacer {
    shards: u32,
    records_rate: f64,
    bytes_rate: f64,
    /// Share of the budget in use: 1 until Kinesis throttles.
    factor: f64,
    records: f64,
    bytes: f64,
    last_ms: Option<u64>,
    last_decrease_ms: Option<u64>,
}

impl Pacer {
    /// The budget of `shards` open shards (at least one).
    pub fn for_shards(shards: u32) -> Pacer {
        let shards = shards.max(1);
        let records_rate = SHARD_RECORDS_PER_SECOND * f64::from(shards);
        let bytes_rate = SHARD_BYTES_PER_SECOND * f64::from(shards);
        Pacer {
            shards,
            records_rate,
            bytes_rate,
            factor: 1.0,
            records: records_rate,
            bytes: bytes_rate,
            last_ms: None,
            last_decrease_ms: None,
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The rate in use now, (records/s, bytes/s).
    pub fn rate(&self) -> (f64, f64) {
        (
            self.records_rate * self.factor,
            self.bytes_rate * self.factor,
        )
    }

    /// The largest call the buckets can pay for, (records, bytes): the shipper
    /// caps its batches to this, so every call fits a full bucket.
    pub fn max_call(&self) -> (usize, usize) {
        (self.records_rate as usize, self.bytes_rate as usize)
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = match self.last_ms {
            Some(last) => now_ms.saturating_sub(last) as f64 / 1000.0,
            None => 0.0,
        };
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
        let (r, b) = self.rate();
        self.records = (self.records + r * elapsed).min(self.records_rate);
        self.bytes = (self.bytes + b * elapsed).min(self.bytes_rate);
    }

    /// How long a call of `records` Kinesis records and `bytes` bytes must wait
    /// before it may go; zero when it may go now. A call larger than a full bucket
    /// is priced as a full bucket (it would otherwise never go).
    pub fn delay(&mut self, records: usize, bytes: usize, now_ms: u64) -> Duration {
        self.refill(now_ms);
        let (r_rate, b_rate) = self.rate();
        let need_r = (records as f64).min(self.records_rate) - self.records;
        let need_b = (bytes as f64).min(self.bytes_rate) - self.bytes;
        let secs = (need_r / r_rate).max(need_b / b_rate).max(0.0);
        // Whole milliseconds, rounded up: the call then fits when the wait is over
        // (less a nanosecond's worth, so float rounding never adds a millisecond).
        Duration::from_millis((secs * 1000.0 - 1e-6).ceil().max(0.0) as u64)
    }

    /// The call went out: spend its cost (a bucket may go below zero by an
    /// over-sized call; later calls then wait it off).
    pub fn spend(&mut self, records: usize, bytes: usize, now_ms: u64) {
        self.refill(now_ms);
        self.records -= (records as f64).min(self.records_rate);
        self.bytes -= (bytes as f64).min(self.bytes_rate);
    }

    /// What the backfill lane may spend now, (records, bytes): whatever the buckets
    /// hold above `reserve` (a share of one second's full budget), which is kept for
    /// live data. Live records spend from the whole bucket.
    pub fn above_reserve(&mut self, reserve: f64, now_ms: u64) -> (usize, usize) {
        self.refill(now_ms);
        let keep_r = self.records_rate * reserve;
        let keep_b = self.bytes_rate * reserve;
        (
            (self.records - keep_r).max(0.0) as usize,
            (self.bytes - keep_b).max(0.0) as usize,
        )
    }

    /// How long until the backfill may spend one record of `bytes` above `reserve`.
    pub fn reserve_delay(&mut self, reserve: f64, bytes: usize, now_ms: u64) -> Duration {
        self.refill(now_ms);
        let (r_rate, b_rate) = self.rate();
        let need_r = self.records_rate * reserve + 1.0 - self.records;
        let need_b = self.bytes_rate * reserve + bytes as f64 - self.bytes;
        let secs = (need_r / r_rate).max(need_b / b_rate).max(0.0);
        Duration::from_millis((secs * 1000.0).ceil() as u64)
    }

    /// Kinesis throttled (a record or the whole call): halve the rate (once per
    /// [`DECREASE_HOLD_MS`]) and drop what the buckets held, so the next call
    /// waits instead of bursting.
    pub fn on_throttled(&mut self, now_ms: u64) {
        self.refill(now_ms);
        let held = self
            .last_decrease_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < DECREASE_HOLD_MS);
        if !held {
            self.factor = (self.factor / 2.0).max(MIN_FACTOR);
            self.last_decrease_ms = Some(now_ms);
        }
        self.records = self.records.min(0.0);
        self.bytes = self.bytes.min(0.0);
    }

    /// A call was accepted without throttling: win back a little of the budget.
    pub fn on_accepted(&mut self) {
        self.factor = (self.factor + RECOVERY_STEP).min(1.0);
    }

    /// Share of the budget in use (1 = the shards' full limits).
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: usize = 1_048_576;

    #[test]
    fn a_full_bucket_lets_one_second_go_then_paces() {
        let mut p = Pacer::for_shards(1);
        assert_eq!(p.delay(10, MIB, 0), Duration::ZERO);
        p.spend(10, MIB, 0);
        // Half a MiB more needs half a second of refill.
        assert_eq!(p.delay(1, MIB / 2, 0), Duration::from_millis(500));
        assert_eq!(p.delay(1, MIB / 2, 500), Duration::ZERO);
        // Records bind when they are the scarcer budget.
        let mut p = Pacer::for_shards(2);
        p.spend(2_000, 0, 0);
        assert_eq!(p.delay(500, 10, 0), Duration::from_millis(250));
        assert_eq!(p.max_call(), (2_000, 2 * MIB));
    }

    #[test]
    fn throttling_halves_the_rate_and_acceptance_wins_it_back() {
        let mut p = Pacer::for_shards(1);
        p.on_throttled(0);
        assert_eq!(p.factor(), 0.5);
        // The buckets were emptied: a quarter MiB at half rate waits half a second.
        assert_eq!(p.delay(1, MIB / 4, 0), Duration::from_millis(500));
        p.on_throttled(500);
        assert_eq!(p.factor(), 0.5, "answers to calls sent at the old rate");
        for s in 1..20 {
            p.on_throttled(s * 1_000);
        }
        assert_eq!(p.factor(), MIN_FACTOR, "never stops altogether");
        for _ in 0..100 {
            p.on_accepted();
        }
        assert_eq!(p.factor(), 1.0);
    }

    #[test]
    fn an_oversized_call_is_priced_as_a_full_bucket() {
        let mut p = Pacer::for_shards(1);
        assert_eq!(p.delay(5_000, 5 * MIB, 0), Duration::ZERO);
        p.spend(5_000, 5 * MIB, 0);
        // Priced as 1 MiB: after 999 ms a full MiB is 1 ms short.
        let d = p.delay(1, MIB, 999);
        assert!(!d.is_zero() && d <= Duration::from_millis(2), "{d:?}");
    }

    #[test]
    fn the_backfill_spends_only_above_the_live_reserve() {
        let mut p = Pacer::for_shards(1);
        // A full bucket, a fifth kept for live data.
        assert_eq!(p.above_reserve(0.2, 0), (800, MIB - MIB / 5 - 1));
        p.spend(800, MIB / 2, 0);
        assert_eq!(p.above_reserve(0.2, 0).0, 0);
        // Live data may still go at once from the reserve.
        assert_eq!(p.delay(200, 1_000, 0), Duration::ZERO);
        // One more backfill record needs 1 record of refill at 1,000/s.
        assert_eq!(p.reserve_delay(0.2, 1, 0), Duration::from_millis(1));
    }

    proptest! {
        /// Calls sent as soon as the pacer allows never exceed the budget over any
        /// stretch of time by more than one bucket, and keep it ≥ 90 % busy.
        #[test]
        fn paced_calls_stay_within_the_budget_and_fill_it(
            shards in 1u32..4,
            calls in proptest::collection::vec((1usize..500, 1usize..MIB), 50..300),
        ) {
            let mut p = Pacer::for_shards(shards);
            let (rate_r, rate_b) = p.rate();
            let (mut now, mut sent) = (0u64, Vec::new());
            for (records, bytes) in calls {
                let bytes = bytes.min(p.max_call().1);
                now += p.delay(records, bytes, now).as_millis() as u64;
                prop_assert_eq!(p.delay(records, bytes, now), Duration::ZERO);
                p.spend(records, bytes, now);
                sent.push((now, records as f64, bytes as f64));
            }
            for (i, &(start, ..)) in sent.iter().enumerate() {
                let (mut r, mut b) = (0.0, 0.0);
                for &(t, rr, bb) in &sent[i..] {
                    r += rr;
                    b += bb;
                    let secs = (t - start) as f64 / 1000.0;
                    prop_assert!(r <= rate_r * secs + rate_r + 1.0, "records {r} in {secs}s");
                    prop_assert!(b <= rate_b * secs + rate_b + 1.0, "bytes {b} in {secs}s");
                }
            }
            // Busy: what was sent after the first bucket needed at least 90 % of the time.
            let (last, total_r, total_b) = sent.iter().fold((0u64, 0.0, 0.0), |(_, r, b), &(t, rr, bb)| (t, r + rr, b + bb));
            let needed = ((total_r - rate_r) / rate_r).max((total_b - rate_b) / rate_b);
            if needed > 1.0 {
                prop_assert!(last as f64 / 1000.0 <= needed / 0.9 + 0.01, "took {last} ms for {needed} s of budget");
            }
        }
    }
}
