//! The delivery task of one target, for any [`Target`] kind.
//!
//! One task per target delivers that target's FIFO in order: the head batch is retried
//! until it is delivered or dead-lettered before the next events are sent, so a target
//! sees transitions in the order the engine emitted them. Targets do not wait for each
//! other. Attempt counts live in memory: after a restart a batch's count starts again,
//! while its age still counts from its oldest event's `created_at_ms`.
//!
//! Time comes from the injected clock and the backoff jitter from the injected random
//! number generator, so the retry decisions of a run can be reproduced in tests.

use super::dead_letter::{DeadLetter, DeadLetterError, DeadLetterStore};
use super::metrics::{target as labels, DeadLabels, OutputMetrics};
use super::outbox::{Outbox, PendingEvent};
use super::retry::{self, DeadReason, Decision, RetryPolicy};
use super::target::Target;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::{LogGate, SharedClock};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often gauges are refreshed while a task waits.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// At most one failure log line per target per this interval (ms); the rest are counted.
const LOG_EVERY_MS: u64 = 10_000;
/// Pause between attempts to get a target ready ([`Target::prepare`]).
const PREPARE_RETRY: Duration = Duration::from_secs(30);

/// What every delivery task shares with the rest of the service.
pub struct DeliveryContext {
    pub outbox: Arc<Outbox>,
    pub dead: DeadLetterStore,
    pub metrics: OutputMetrics,
    pub clock: SharedClock,
    /// Backoff jitter; seed it from the OS at the binary's edge, from a constant in tests.
    pub rng: fastrand::Rng,
    /// Delivery stops when this is cancelled.
    pub shutdown: CancellationToken,
}

/// The in-memory attempt state of the head batch.
#[derive(Debug, Clone)]
struct Current<O> {
    /// The batch's events, oldest first; retried as the same batch.
    ids: Vec<Uuid>,
    attempts: u32,
    first_attempt_ms: u64,
    last_attempt_ms: u64,
    last: Option<O>,
}

impl<O> Current<O> {
    fn new(ids: Vec<Uuid>) -> Self {
        Current {
            ids,
            attempts: 0,
            first_attempt_ms: 0,
            last_attempt_ms: 0,
            last: None,
        }
    }
}

struct Task<T: Target> {
    target: T,
    name: String,
    policy: RetryPolicy,
    cx: DeliveryContext,
    current: Option<Current<T::Outcome>>,
    fail_log: LogGate,
    evict_log: LogGate,
}

/// Delivers `target`'s queue of the outbox until shutdown. Undelivered events stay in
/// the outbox for the next start.
pub async fn run_target<T: Target>(target: T, cx: DeliveryContext) {
    let name = target.name().to_string();
    let mut task = Task {
        policy: target.policy(),
        target,
        name,
        cx,
        current: None,
        fail_log: LogGate::new(LOG_EVERY_MS),
        evict_log: LogGate::new(LOG_EVERY_MS),
    };
    let kind = task.target.kind();
    tracing::info!(target_name = %task.name, kind, destination = %task.target.destination(), "delivery started");
    loop {
        match task.target.prepare().await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(target_name = %task.name, kind, error = %e, "cannot get the target ready; retrying in 30s");
                if !task.pause(PREPARE_RETRY).await {
                    return;
                }
            }
        }
    }
    task.run().await;
    task.refresh_gauges();
    tracing::info!(target_name = %task.name, kind, pending = task.cx.outbox.pending(&task.name), "delivery stopped");
}

impl<T: Target> Task<T> {
    fn now_ms(&self) -> u64 {
        self.cx.clock.now_ms()
    }

    /// Sleeps `d`; `false` if shutdown came first.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.cx.shutdown.is_cancelled(),
            _ = self.cx.shutdown.cancelled() => false,
        }
    }

    fn refresh_gauges(&self) {
        let l = labels(&self.name);
        let outbox = &self.cx.outbox;
        self.cx
            .metrics
            .pending
            .get_or_create(&l)
            .set(outbox.pending(&self.name) as i64);
        let age = outbox
            .oldest_created_at_ms(&self.name)
            .map_or(0.0, |c| self.now_ms().saturating_sub(c) as f64 / 1000.0);
        self.cx
            .metrics
            .oldest_pending_age_seconds
            .get_or_create(&l)
            .set(age);
    }

    /// The batch to attempt now: the one being retried if it still heads the queue,
    /// otherwise up to `max_batch` events from the head (a fresh attempt count).
    fn next_batch(&mut self) -> Vec<Arc<PendingEvent>> {
        let outbox = &self.cx.outbox;
        if let Some(cur) = &self.current {
            let batch = outbox.batch(&self.name, cur.ids.len());
            if batch.iter().map(|e| e.id).eq(cur.ids.iter().copied()) {
                return batch;
            }
        }
        let batch = outbox.batch(&self.name, self.target.max_batch().max(1));
        self.current =
            (!batch.is_empty()).then(|| Current::new(batch.iter().map(|e| e.id).collect()));
        batch
    }

    async fn run(&mut self) {
        loop {
            if self.cx.shutdown.is_cancelled() {
                return;
            }
            if !self.drain_evicted().await {
                return;
            }
            self.refresh_gauges();
            let batch = self.next_batch();
            if batch.is_empty() {
                let outbox = self.cx.outbox.clone();
                tokio::select! {
                    _ = outbox.changed(&self.name) => {}
                    _ = self.cx.shutdown.cancelled() => return,
                }
                continue;
            }
            let Some(outcome) = self.attempt(&batch).await else {
                return;
            };
            let now = self.now_ms();
            let verdict = self.target.classify(&outcome);
            let Some(cur) = self.current.as_mut() else {
                continue;
            };
            cur.last = Some(outcome.clone());
            let attempts = cur.attempts;
            let first = cur.first_attempt_ms;
            // The oldest event's age bounds the batch's.
            let created = batch.iter().map(|e| e.created_at_ms).min().unwrap_or(now);
            let jitter = self.cx.rng.f64();
            match retry::decide(&self.policy, verdict, attempts, created, now, jitter) {
                Decision::Delivered => {
                    for ev in &batch {
                        self.cx.outbox.complete(&self.name, ev.id);
                    }
                    let l = labels(&self.name);
                    let m = &self.cx.metrics;
                    m.delivered.get_or_create(&l).inc_by(batch.len() as u64);
                    m.delivery_latency_seconds
                        .get_or_create(&l)
                        .observe(now.saturating_sub(first) as f64 / 1000.0);
                    tracing::debug!(target_name = %self.name, event_id = %batch[0].id, events = batch.len(), attempts, "delivered");
                    self.current = None;
                }
                Decision::DeadLetter(reason) => {
                    for ev in &batch {
                        if !self.dead_letter(ev, reason).await {
                            return;
                        }
                    }
                    self.current = None;
                }
                Decision::Retry(delay) => {
                    self.cx
                        .metrics
                        .retries
                        .get_or_create(&labels(&self.name))
                        .inc();
                    if let Some(suppressed) = self.fail_log.check(now) {
                        tracing::warn!(
                            target_name = %self.name,
                            kind = self.target.kind(),
                            event_id = %batch[0].id,
                            events = batch.len(),
                            status = self.target.status(&outcome),
                            error = %outcome,
                            may_have_arrived = self.target.may_have_arrived(&outcome),
                            attempt = attempts,
                            next_delay = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                            pending = self.cx.outbox.pending(&self.name),
                            suppressed,
                            "delivery failed; will retry"
                        );
                    }
                    if !self.back_off(batch[0].id, delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// One attempt at the batch; `None` on shutdown (the events stay queued).
    async fn attempt(&mut self, batch: &[Arc<PendingEvent>]) -> Option<T::Outcome> {
        let now = self.now_ms();
        if let Some(cur) = self.current.as_mut() {
            cur.attempts += 1;
            if cur.first_attempt_ms == 0 {
                cur.first_attempt_ms = now;
            }
            cur.last_attempt_ms = now;
        }
        self.cx
            .metrics
            .attempts
            .get_or_create(&labels(&self.name))
            .inc();
        let Task { target, cx, .. } = self;
        tokio::select! {
            r = target.deliver(batch, now) => Some(r),
            _ = cx.shutdown.cancelled() => None,
        }
    }

    /// Waits out a retry delay, promptly ending on shutdown or when the head was evicted
    /// meanwhile. `false` on shutdown.
    async fn back_off(&mut self, head: Uuid, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        let outbox = self.cx.outbox.clone();
        loop {
            let tick = (until - tokio::time::Instant::now()).min(GAUGE_REFRESH);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = outbox.changed(&self.name) => {
                    if outbox.head(&self.name).map(|e| e.id) != Some(head) {
                        return true;
                    }
                }
                _ = self.cx.shutdown.cancelled() => return false,
            }
            self.refresh_gauges();
            if tokio::time::Instant::now() >= until {
                return true;
            }
        }
    }

    /// Writes events evicted by `max_pending` to the store. `false` on shutdown.
    async fn drain_evicted(&mut self) -> bool {
        for ev in self.cx.outbox.evicted(&self.name) {
            if let Some(suppressed) = self.evict_log.check(self.now_ms()) {
                tracing::warn!(
                    target_name = %self.name,
                    event_id = %ev.id,
                    max_pending = self.target.max_pending(),
                    suppressed,
                    "outbox full: oldest pending event goes to the dead-letter store"
                );
            }
            if !self.dead_letter(&ev, DeadReason::OutboxFull).await {
                return false;
            }
        }
        true
    }

    /// Stores `ev` as a dead letter and takes it off the queue. A failing store is retried
    /// (the event is kept meanwhile); `false` on shutdown before it could be written.
    async fn dead_letter(&mut self, ev: &Arc<PendingEvent>, reason: DeadReason) -> bool {
        let now = self.now_ms();
        let cur = self.current.as_ref().filter(|c| c.ids.contains(&ev.id));
        let (attempts, first, last) = cur.map_or((0, now, now), |c| {
            if c.attempts == 0 {
                (0, now, now)
            } else {
                (c.attempts, c.first_attempt_ms, c.last_attempt_ms)
            }
        });
        let last_outcome = cur.and_then(|c| c.last.as_ref());
        let status = last_outcome.and_then(|o| self.target.status(o));
        let error = last_outcome
            .filter(|_| status.is_none())
            .map(|o| o.to_string());
        let dl = DeadLetter::new(
            &self.name,
            ev,
            reason.as_str(),
            status,
            error,
            attempts,
            first,
            last,
        );
        let mut wait = Duration::from_secs(1);
        loop {
            let store = self.cx.dead.clone();
            let entry = dl.clone();
            let res = tokio::task::spawn_blocking(move || store.put(&entry))
                .await
                .unwrap_or_else(|e| {
                    Err(DeadLetterError::Io {
                        op: "write",
                        path: self.cx.dead.dir().to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
            match res {
                Ok(path) => {
                    if reason != DeadReason::OutboxFull {
                        tracing::warn!(
                            target_name = %self.name,
                            kind = self.target.kind(),
                            event_id = %ev.id,
                            transition_id = %ev.transition_id,
                            reason = reason.as_str(),
                            status,
                            attempts,
                            path = %path.display(),
                            "event dead-lettered"
                        );
                    }
                    break;
                }
                Err(e) => {
                    self.cx
                        .metrics
                        .dead_letter_errors
                        .get_or_create(&labels(&self.name))
                        .inc();
                    tracing::error!(
                        target_name = %self.name,
                        event_id = %ev.id,
                        error = %e,
                        retry_in = %humantime::format_duration(wait),
                        "cannot write the dead-letter entry; the event stays pending"
                    );
                    if !self.pause(wait).await {
                        return false;
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.cx.outbox.complete(&self.name, ev.id);
        self.cx
            .metrics
            .dead_letters
            .get_or_create(&DeadLabels {
                target: self.name.clone(),
                reason: reason.label().to_string(),
            })
            .inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::target::{QueueSpec, Verdict};
    use linewatch_runtime::{Clock, ManualClock, SystemClock};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// How the fake target answers an attempt.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Answer {
        Ok,
        Transient,
        Permanent,
    }

    impl std::fmt::Display for Answer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    /// One attempt as the fake saw it: the batch's event numbers and when (tokio time).
    type Call = (Vec<u128>, tokio::time::Instant);

    /// An in-memory target: answers from a script (then `Ok`), records every batch.
    struct Fake {
        max_batch: usize,
        policy: RetryPolicy,
        script: Mutex<VecDeque<Answer>>,
        calls: Arc<Mutex<Vec<Call>>>,
    }

    impl Target for Fake {
        type Outcome = Answer;
        fn name(&self) -> &str {
            "fake"
        }
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn destination(&self) -> String {
            "memory".into()
        }
        fn max_batch(&self) -> usize {
            self.max_batch
        }
        fn max_pending(&self) -> usize {
            1_000
        }
        fn policy(&self) -> RetryPolicy {
            self.policy
        }
        async fn deliver(&self, batch: &[Arc<PendingEvent>], _now_ms: u64) -> Answer {
            let ids = batch.iter().map(|e| e.id.as_u128()).collect();
            self.calls
                .lock()
                .unwrap()
                .push((ids, tokio::time::Instant::now()));
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::Ok)
        }
        fn classify(&self, a: &Answer) -> Verdict {
            match a {
                Answer::Ok => Verdict::Done,
                Answer::Transient => Verdict::Retry { after: None },
                Answer::Permanent => Verdict::DeadLetter,
            }
        }
    }

    fn event(n: u128, created_at_ms: u64) -> PendingEvent {
        PendingEvent {
            id: Uuid::from_u128(n),
            transition_id: format!("r/e/{n}/1"),
            body: format!("{{\"n\":{n}}}").into(),
            created_at_ms,
        }
    }

    fn policy(initial_ms: u64, max_ms: u64, max_attempts: u32, max_age_s: u64) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            max_attempts,
            max_age: Duration::from_secs(max_age_s),
        }
    }

    struct Run {
        outbox: Arc<Outbox>,
        store: DeadLetterStore,
        calls: Arc<Mutex<Vec<Call>>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Run {
        /// Starts the task on a fake target with `events` already queued.
        fn start(
            max_batch: usize,
            policy: RetryPolicy,
            script: &[Answer],
            events: Vec<PendingEvent>,
            clock: SharedClock,
            seed: u64,
        ) -> Run {
            let dir = tempfile::tempdir().unwrap();
            let store = DeadLetterStore::open(dir.path()).unwrap();
            let outbox = Arc::new(Outbox::new([QueueSpec::new("fake", 1_000)]));
            outbox.push_all(events);
            let calls = Arc::new(Mutex::new(Vec::new()));
            let fake = Fake {
                max_batch,
                policy,
                script: Mutex::new(script.iter().copied().collect()),
                calls: calls.clone(),
            };
            let stop = CancellationToken::new();
            let cx = DeliveryContext {
                outbox: outbox.clone(),
                dead: store.clone(),
                metrics: OutputMetrics::default(),
                clock,
                rng: fastrand::Rng::with_seed(seed),
                shutdown: stop.clone(),
            };
            let task = tokio::spawn(run_target(fake, cx));
            Run {
                outbox,
                store,
                calls,
                stop,
                task,
                _dir: dir,
            }
        }

        async fn until(&self, what: &str, cond: impl Fn(&Run) -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cond(self) {
                assert!(std::time::Instant::now() < deadline, "timed out: {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        fn batches(&self) -> Vec<Vec<u128>> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|(b, _)| b.clone())
                .collect()
        }

        /// `(event number, reason, attempts)` of every dead letter, by event number.
        fn dead(&self) -> Vec<(u128, String, u32)> {
            let mut d: Vec<_> = self
                .store
                .list(Some("fake"))
                .unwrap()
                .into_iter()
                .map(|d| (d.id.as_u128(), d.reason, d.attempts))
                .collect();
            d.sort();
            d
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("the task stops")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn batches_are_retried_whole_and_dead_lettered_by_the_targets_verdict() {
        use Answer::*;
        let events = (1..=7).map(|n| event(n, SystemClock.now_ms())).collect();
        let run = Run::start(
            3,
            policy(1, 2, 10, 3600),
            &[Transient, Ok, Permanent],
            events,
            Arc::new(SystemClock),
            1,
        );
        run.until("every event delivered or dead-lettered", |r| {
            r.outbox.pending("fake") == 0 && r.batches().len() == 4 && r.dead().len() == 3
        })
        .await;
        assert_eq!(
            run.batches(),
            vec![vec![1, 2, 3], vec![1, 2, 3], vec![4, 5, 6], vec![7]],
            "the failed batch is retried as is, then the next events follow"
        );
        assert_eq!(
            run.dead(),
            vec![
                (4, "rejected".into(), 1),
                (5, "rejected".into(), 1),
                (6, "rejected".into(), 1)
            ]
        );
        run.stop().await;
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts_and_the_batch_is_dead_lettered() {
        let events = vec![
            event(1, SystemClock.now_ms()),
            event(2, SystemClock.now_ms()),
        ];
        let run = Run::start(
            2,
            policy(1, 2, 3, 3600),
            &[Answer::Transient; 10],
            events,
            Arc::new(SystemClock),
            1,
        );
        run.until("dead-lettered and off the queue", |r| {
            r.dead().len() == 2 && r.outbox.pending("fake") == 0
        })
        .await;
        assert_eq!(run.batches(), vec![vec![1, 2]; 3]);
        assert_eq!(
            run.dead(),
            vec![(1, "max attempts".into(), 3), (2, "max attempts".into(), 3)]
        );
        run.stop().await;
    }

    #[tokio::test]
    async fn a_manual_clock_past_the_age_limit_dead_letters_after_one_attempt() {
        // Created at 0; the clock says a day later: the first transient failure is final.
        // The backoff is an hour, so a retry decision would show as a stuck test.
        let clock = Arc::new(ManualClock::new(86_400_000));
        let run = Run::start(
            1,
            policy(3_600_000, 3_600_000, 185, 86_400),
            &[Answer::Transient],
            vec![event(1, 0)],
            clock,
            1,
        );
        run.until("dead-lettered for age", |r| r.dead().len() == 1)
            .await;
        assert_eq!(run.dead(), vec![(1, "max age".into(), 1)]);
        assert_eq!(run.batches().len(), 1);
        run.stop().await;
    }

    /// The delays between the attempts of one event that always fails transiently.
    async fn retry_delays(seed: u64) -> Vec<Duration> {
        let run = Run::start(
            1,
            policy(1_000, 60_000, 8, 86_400),
            &[Answer::Transient; 8],
            vec![event(1, 0)],
            Arc::new(ManualClock::new(0)),
            seed,
        );
        // Paused time: the runtime skips ahead through every backoff.
        while run.dead().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let at: Vec<_> = run.calls.lock().unwrap().iter().map(|(_, t)| *t).collect();
        run.stop().await;
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_gives_the_same_retry_delays() {
        let a = retry_delays(42).await;
        assert_eq!(a.len(), 7, "8 attempts, 7 waits: {a:?}");
        assert_eq!(a, retry_delays(42).await);
        assert_ne!(a, retry_delays(43).await);
        // Full jitter below the doubling ceiling: 1 s, 2 s, 4 s, ….
        let p = policy(1_000, 60_000, 8, 86_400);
        for (i, d) in a.iter().enumerate() {
            assert!(
                *d <= p.ceiling(i as u32 + 1) + Duration::from_millis(1),
                "{i}: {d:?}"
            );
        }
    }
}
