//! The driver's decisions against a scripted in-memory source: no sockets, no
//! protocol. Every wait is on a condition with a deadline.

use super::*;
use crate::sources::status::SourceStatus;
use crate::sources::SourceIdentity;
use crate::telemetry::metrics::Metrics;
use linewatch_runtime::clock::Clock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);
const SEED: u64 = 42;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

/// What the fake does on its next cycle.
enum Step {
    /// Values for tag indices; all answered.
    Read(Vec<(usize, i64)>),
    /// Some values, then the link is lost.
    Lost(Vec<(usize, i64)>, &'static str),
}

/// A scripted source: connect outcomes in order (then success), cycles fed by the test.
struct Fake {
    identity: SourceIdentity,
    connects: VecDeque<Result<(), &'static str>>,
    attempts: Arc<Mutex<Vec<std::time::Instant>>>,
    steps: mpsc::UnboundedReceiver<Step>,
    closed: Arc<AtomicU64>,
}

impl Source for Fake {
    type Link = ();
    type Due = Step;
    type Error = FakeError;

    fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    async fn connect(&mut self) -> Result<(), FakeError> {
        self.attempts
            .lock()
            .expect("attempts")
            .push(std::time::Instant::now());
        match self.connects.pop_front() {
            Some(Err(why)) => Err(FakeError(why.into())),
            _ => Ok(()),
        }
    }

    async fn next_cycle(&mut self, _link: &mut ()) -> Step {
        match self.steps.recv().await {
            Some(step) => step,
            None => std::future::pending().await,
        }
    }

    async fn read(
        &mut self,
        _link: &mut (),
        due: Step,
        out: &mut Cycle<'_>,
    ) -> Result<(), FakeError> {
        let (values, lost) = match due {
            Step::Read(v) => (v, None),
            Step::Lost(v, why) => (v, Some(why)),
        };
        for (i, v) in values {
            out.push(
                i,
                Sample {
                    value: Value::Int(v),
                    quality: Quality::Ok,
                    raw_quality: None,
                    source_timestamp: None,
                },
            );
        }
        match lost {
            Some(why) => Err(FakeError(why.into())),
            None => Ok(()),
        }
    }

    async fn close(&mut self, _link: ()) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// A clock the test sets; counts reads so a test can wait for the driver to
/// have looked at it (a heartbeat tick) without sleeping.
#[derive(Default)]
struct TestClock {
    now: AtomicU64,
    reads: AtomicU64,
}

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.now.load(Ordering::SeqCst)
    }
}

struct Harness {
    rx: mpsc::Receiver<ReadingBatch>,
    steps: mpsc::UnboundedSender<Step>,
    attempts: Arc<Mutex<Vec<std::time::Instant>>>,
    closed: Arc<AtomicU64>,
    clock: Arc<TestClock>,
    metrics: Metrics,
    status: SourceStatus,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn settings() -> CommonSourceConfig {
    let mut s = CommonSourceConfig::new("fake");
    s.timeout = Duration::from_millis(100);
    s.reconnect_initial = Duration::from_millis(30);
    s.reconnect_max = Duration::from_secs(1);
    s.heartbeat_interval = Duration::from_millis(10);
    s
}

/// Two tags; equipment of the heartbeat falls back to the first tag's.
fn start(connects: Vec<Result<(), &'static str>>, settings: CommonSourceConfig) -> Harness {
    let tags = vec![
        SourceTag::new("a", "filler"),
        SourceTag::new("b", "labeller"),
    ];
    start_with(connects, settings, tags)
}

fn start_with(
    connects: Vec<Result<(), &'static str>>,
    settings: CommonSourceConfig,
    tags: Vec<SourceTag>,
) -> Harness {
    let (tx, rx) = mpsc::channel(64);
    let (steps, steps_rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicU64::new(0));
    let clock = Arc::new(TestClock::default());
    clock.now.store(1_000_000, Ordering::SeqCst);
    let fake = Fake {
        identity: SourceIdentity {
            id: Arc::from("fake"),
            kind: "fake",
            tags,
            cycle_period: Duration::from_millis(20),
        },
        connects: connects.into(),
        attempts: Arc::clone(&attempts),
        steps: steps_rx,
        closed: Arc::clone(&closed),
    };
    let metrics = Metrics::default();
    let status = SourceStatus::default();
    let shutdown = CancellationToken::new();
    let ctx = SourceContext {
        readings: tx,
        metrics: metrics.clone(),
        clock: clock.clone(),
        shutdown: shutdown.clone(),
        status: status.clone(),
        rng: fastrand::Rng::with_seed(SEED),
    };
    let task = tokio::spawn(run(fake, settings, ctx));
    Harness {
        rx,
        steps,
        attempts,
        closed,
        clock,
        metrics,
        status,
        shutdown,
        task,
    }
}

impl Harness {
    async fn next(&mut self) -> ReadingBatch {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("timed out waiting for a batch")
            .expect("the driver closed its channel")
    }

    /// The next batch that is not a heartbeat.
    async fn next_data(&mut self) -> ReadingBatch {
        loop {
            let b = self.next().await;
            if !b.iter().all(|r| &*r.tag == HEARTBEAT_TAG) {
                return b;
            }
        }
    }

    fn step(&self, step: Step) {
        self.steps.send(step).expect("the fake takes steps");
    }

    fn read_errors(&self) -> u64 {
        self.metrics
            .read_errors
            .get_or_create(&self.metrics.source("fake"))
            .get()
    }

    fn connected(&self) -> i64 {
        self.metrics
            .source_connected
            .get_or_create(&self.metrics.source("fake"))
            .get()
    }

    /// Wait until the driver has read the clock `n` more times (heartbeat ticks).
    async fn clock_reads(&self, n: u64) {
        let start = self.clock.reads.load(Ordering::SeqCst);
        wait_for("the driver to read the clock", || {
            self.clock.reads.load(Ordering::SeqCst) >= start + n
        })
        .await;
    }

    /// Shut down and return everything sent until the channel closed.
    async fn stop(mut self) -> (Vec<ReadingBatch>, SourceStatus, Metrics, u64) {
        self.shutdown.cancel();
        let mut rest = Vec::new();
        while let Some(b) = tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("the driver did not stop on shutdown")
        {
            rest.push(b);
        }
        self.task.await.expect("driver task");
        let closed = self.closed.load(Ordering::SeqCst);
        (rest, self.status, self.metrics, closed)
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn is_syn(b: &ReadingBatch) -> bool {
    b.iter().any(|r| r.flags.contains(Flag::Syn))
}

#[tokio::test]
async fn connect_fails_twice_then_backoff_grows_and_fst_marks_the_first_readings() {
    let mut h = start(vec![Err("refused 1"), Err("refused 2")], settings());
    // One Syn batch for the failed start, not one per attempt.
    let syn = h.next().await;
    assert_eq!(syn.len(), 2, "one per tag: {syn:?}");
    for r in &syn {
        assert_eq!((r.quality, &r.value), (Quality::Bad, &Value::Null));
        assert_eq!(r.flags, Flags::empty().with(Flag::Syn));
        assert_eq!(r.raw_quality.as_deref(), Some("refused 1"));
    }
    assert_eq!(
        syn.iter().map(|r| &*r.equipment_id).collect::<Vec<_>>(),
        ["filler", "labeller"]
    );
    wait_for("the third connect", || h.connected() == 1).await;
    assert_eq!(h.status.snapshot().state, LinkPhase::Connected);
    assert_eq!(
        h.status.snapshot().last_error.as_deref(),
        Some("refused 2"),
        "the last failure stays visible"
    );
    assert_eq!(h.read_errors(), 2, "one per failed connect");

    // The waits between attempts are the backoff's delays for the injected rng, growing.
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut b = reconnect_backoff(Duration::from_millis(30), Duration::from_secs(1));
    let want = [b.next_delay(&mut rng), b.next_delay(&mut rng)];
    assert!(want[1] > want[0], "{want:?}");
    let attempts = h.attempts.lock().expect("attempts").clone();
    assert_eq!(attempts.len(), 3);
    for (k, w) in want.iter().enumerate() {
        let gap = attempts[k + 1] - attempts[k];
        assert!(gap >= *w, "wait {k}: {gap:?} < {w:?}");
        assert!(gap < *w + Duration::from_secs(2), "wait {k}: {gap:?}");
    }

    // First readings of each tag after the connect carry Fst; later ones do not.
    h.step(Step::Read(vec![(0, 1)]));
    let first = h.next_data().await;
    assert_eq!(first[0].flags, Flags::empty().with(Flag::Fst));
    assert_eq!((&*first[0].tag, &first[0].value), ("a", &Value::Int(1)));
    h.step(Step::Read(vec![(0, 2), (1, 3)]));
    let second = h.next_data().await;
    assert!(second[0].flags.is_empty(), "{second:?}");
    assert_eq!(second[1].flags, Flags::empty().with(Flag::Fst), "b's first");
    let points = h
        .metrics
        .points_read
        .get_or_create(&h.metrics.source("fake"))
        .get();
    assert_eq!(points, 3, "cycle readings only, not Syn");
    h.stop().await;
}

#[tokio::test]
async fn a_lost_link_gives_exactly_one_syn_batch_then_fst_again() {
    let mut s = settings();
    s.heartbeat_interval = Duration::ZERO;
    let mut h = start(vec![Ok(()), Err("down 1"), Err("down 2"), Err("down 3")], s);
    h.step(Step::Read(vec![(0, 1), (1, 1)]));
    let first = h.next().await;
    assert!(first.iter().all(|r| r.flags.contains(Flag::Fst)));

    // What was read before the loss is still sent, then one Syn batch.
    h.step(Step::Lost(vec![(0, 2)], "connection reset"));
    let partial = h.next().await;
    assert_eq!(partial.len(), 1);
    assert_eq!(
        (&partial[0].value, partial[0].flags),
        (&Value::Int(2), Flags::empty())
    );
    let syn = h.next().await;
    assert!(is_syn(&syn) && syn.len() == 2, "{syn:?}");
    assert!(syn
        .iter()
        .all(|r| r.raw_quality.as_deref() == Some("connection reset")));
    assert_eq!(
        h.closed.load(Ordering::SeqCst),
        1,
        "the lost link was closed"
    );

    // Three failed reconnects, then success: no further Syn.
    wait_for("the reconnect", || h.connected() == 1).await;
    assert_eq!(h.read_errors(), 4, "the loss and three failed connects");
    assert!(h.rx.try_recv().is_err(), "only one Syn batch per outage");
    h.step(Step::Read(vec![(0, 5), (1, 6)]));
    let back = h.next().await;
    assert!(!is_syn(&back));
    assert!(back
        .iter()
        .all(|r| r.flags == Flags::empty().with(Flag::Fst)));

    // Data flowed again, so the next outage is reported again.
    h.step(Step::Lost(vec![], "gone again"));
    let syn = h.next().await;
    assert!(is_syn(&syn), "{syn:?}");
    h.stop().await;
}

#[tokio::test]
async fn heartbeats_flow_only_while_the_last_cycle_is_fresh() {
    let mut h = start(vec![], settings());
    // Connected, nothing read yet: no heartbeat.
    wait_for("the connect", || h.connected() == 1).await;
    h.clock_reads(3).await;
    assert!(h.rx.try_recv().is_err(), "no heartbeat before a good cycle");

    h.step(Step::Read(vec![(0, 1)]));
    h.next().await;
    let hb = h.next().await;
    assert_eq!(hb.len(), 1);
    let hb = &hb[0];
    assert_eq!(&*hb.tag, HEARTBEAT_TAG);
    assert_eq!(&*hb.equipment_id, "filler", "the first tag's equipment");
    assert_eq!((&hb.value, hb.quality), (&Value::Null, Quality::Ok));
    assert_eq!(hb.flags, Flags::empty().with(Flag::Wmk));

    // Stale: cycle period 20 + timeout 100 + heartbeat 10 ms have passed on the clock.
    h.clock.now.fetch_add(131, Ordering::SeqCst);
    // Once the driver has read the advanced clock, any heartbeat decided before is sent.
    h.clock_reads(1).await;
    while h.rx.try_recv().is_ok() {}
    h.clock_reads(5).await;
    assert!(h.rx.try_recv().is_err(), "no heartbeat while stale");

    // A good cycle makes it fresh again.
    h.step(Step::Read(vec![(0, 2)]));
    h.next_data().await;
    let hb = h.next().await;
    assert_eq!(&*hb[0].tag, HEARTBEAT_TAG);
    h.stop().await;
}

#[tokio::test]
async fn a_planned_stop_repeats_each_tags_last_reading_with_lst_then_one_lst_heartbeat() {
    let mut h = start(vec![], settings());
    h.step(Step::Read(vec![(0, 1), (1, 2)]));
    h.next_data().await;
    h.step(Step::Read(vec![(0, 3)]));
    h.next_data().await;
    let (rest, status, metrics, closed) = h.stop().await;
    let last = rest.last().and_then(|b| b.last()).expect("a last record");
    assert_eq!(&*last.tag, HEARTBEAT_TAG);
    assert_eq!(last.flags, Flags::empty().with(Flag::Wmk).with(Flag::Lst));
    let lst: Vec<(&str, &Value)> = rest
        .iter()
        .flatten()
        .filter(|r| r.flags.contains(Flag::Lst) && &*r.tag != HEARTBEAT_TAG)
        .map(|r| (&*r.tag, &r.value))
        .collect();
    assert_eq!(lst, [("a", &Value::Int(3)), ("b", &Value::Int(2))]);
    assert_eq!(closed, 1, "the link was closed after the Lst");
    assert_eq!(status.snapshot().state, LinkPhase::Stopped);
    assert_eq!(
        metrics
            .source_connected
            .get_or_create(&metrics.source("fake"))
            .get(),
        0
    );
}

#[tokio::test]
async fn a_stop_while_down_or_with_heartbeats_off_sends_no_lst() {
    let mut h = start(vec![Err("refused"); 100], settings());
    assert!(is_syn(&h.next().await));
    let (rest, status, _, _) = h.stop().await;
    assert!(rest.is_empty(), "nothing after the Syn batch: {rest:?}");
    assert_eq!(status.snapshot().state, LinkPhase::Stopped);

    let mut s = settings();
    s.heartbeat_interval = Duration::ZERO;
    let mut h = start(vec![], s);
    h.step(Step::Read(vec![(0, 1)]));
    h.next().await;
    let (rest, ..) = h.stop().await;
    let rest: Vec<&Reading> = rest.iter().flatten().collect();
    assert_eq!(
        rest.len(),
        1,
        "heartbeats off: the tag's Lst, no heartbeat: {rest:?}"
    );
    assert_eq!(
        (&*rest[0].tag, rest[0].flags),
        ("a", Flags::empty().with(Flag::Lst))
    );
}

/// `a` reports by exception with a deadband of 5; `b` sends every reading.
#[tokio::test]
async fn report_by_exception_holds_small_moves_counts_them_and_lst_flushes_the_held_value() {
    let deadband = crate::sources::exception::ExceptionConfig {
        deadband_absolute: Some(5.0),
        ..Default::default()
    };
    let tags = vec![
        SourceTag::new("a", "filler").with_exception(deadband),
        SourceTag::new("b", "filler"),
    ];
    let mut h = start_with(vec![], settings(), tags);
    let values = |b: &ReadingBatch| -> Vec<(String, Value)> {
        b.iter()
            .filter(|r| &*r.tag != HEARTBEAT_TAG)
            .map(|r| (r.tag.to_string(), r.value.clone()))
            .collect()
    };
    h.step(Step::Read(vec![(0, 10), (1, 1)]));
    let first = h.next_data().await;
    assert!(first.iter().all(|r| r.flags.contains(Flag::Fst)));
    h.step(Step::Read(vec![(0, 14), (1, 1)]));
    assert_eq!(values(&h.next_data().await), [("b".into(), Value::Int(1))]);
    h.step(Step::Read(vec![(0, 16), (1, 1)]));
    assert_eq!(
        values(&h.next_data().await),
        [("a".into(), Value::Int(16)), ("b".into(), Value::Int(1))],
        "16 is more than 5 from the 10 sent (14 was not sent)"
    );
    h.step(Step::Read(vec![(0, 18)]));
    // Nothing to send: a fully suppressed cycle sends no batch.
    h.step(Step::Read(vec![(1, 2)]));
    assert_eq!(values(&h.next_data().await), [("b".into(), Value::Int(2))]);
    let (m, label) = (&h.metrics, h.metrics.source("fake"));
    // Counted for the tag that reports by exception only: a's 10 and 16 passed.
    assert_eq!(m.exception_passed.get_or_create(&label).get(), 2);
    assert_eq!(
        m.exception_suppressed.get_or_create(&label).get(),
        2,
        "14, 18"
    );
    assert_eq!(
        m.points_read.get_or_create(&label).get(),
        8,
        "every reading is read"
    );
    let (rest, ..) = h.stop().await;
    let lst: Vec<(String, Value)> = rest
        .iter()
        .flatten()
        .filter(|r| r.flags == Flags::empty().with(Flag::Lst))
        .map(|r| (r.tag.to_string(), r.value.clone()))
        .collect();
    assert_eq!(
        lst,
        [("a".into(), Value::Int(18)), ("b".into(), Value::Int(2))]
    );
}

#[tokio::test]
async fn the_source_equipment_is_the_heartbeat_equipment() {
    let mut s = settings();
    s.equipment_id = Some("line-3".into());
    let mut h = start(vec![], s);
    h.step(Step::Read(vec![(1, 1)]));
    h.next().await;
    let hb = h.next().await;
    assert_eq!(
        (&*hb[0].tag, &*hb[0].equipment_id),
        (HEARTBEAT_TAG, "line-3")
    );
    h.stop().await;
}

#[tokio::test]
async fn a_tag_map_names_its_codes_and_an_unknown_code_is_uncertain() {
    use crate::sources::value_map::{Code, ValueMap};
    let map = ValueMap::new([
        (Code::Int(1), "RUNNING".into()),
        (Code::Int(2), "IDLE".into()),
    ]);
    let tags = vec![
        SourceTag::new("state", "filler").with_map(Some(map)),
        SourceTag::new("count", "filler"),
    ];
    let mut h = start_with(vec![Err("refused")], settings(), tags);
    let syn = h.next().await;
    assert!(
        syn.iter()
            .all(|r| r.value == Value::Null && r.quality == Quality::Bad),
        "a lost link stays Bad and null through the map: {syn:?}"
    );
    h.step(Step::Read(vec![(0, 1), (1, 1)]));
    let b = h.next_data().await;
    assert_eq!(
        b.iter()
            .map(|r| (&*r.tag, r.value.clone(), r.quality))
            .collect::<Vec<_>>(),
        [
            ("state", Value::String("RUNNING".into()), Quality::Ok),
            ("count", Value::Int(1), Quality::Ok),
        ],
        "only the mapped tag is mapped"
    );
    h.step(Step::Read(vec![(0, 7)]));
    let b = h.next_data().await;
    assert_eq!(
        (b[0].value.clone(), b[0].quality),
        (Value::Int(7), Quality::Uncertain)
    );
    assert_eq!(b[0].raw_quality.as_deref(), Some("unmapped value 7"));
    h.stop().await;
}
