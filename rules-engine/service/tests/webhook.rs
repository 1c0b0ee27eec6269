//! Webhook delivery against a real HTTP receiver on 127.0.0.1 (the test kit's, in this
//! process), whose answer is programmed per request.

use hmac::{KeyInit, Mac};
use linewatch_rules::output::retry::DeadReason;
use linewatch_rules::output::{
    replay, run_target, AuthConfig, DeadLetterStore, DeliveryContext, Outbox, OutboxSnapshot,
    OutputMetrics, PendingEvent, WebhookConfig, WebhookTarget,
};
use linewatch_rules_core::transition::transition_id;
use linewatch_rules_core::{EventSource, Transition};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_testkit::peers::webhook_receiver::{Answer, Receiver, Request};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

// ---------- the receiver (the test kit's) ----------

/// A receiver answering `next` first, then `default`.
fn receiver(default: Answer, next: Vec<Answer>) -> Receiver {
    let r = Receiver::start();
    r.set_answer(default);
    r.answer_next(next);
    r
}

/// Bodies answered 2xx, in order.
fn delivered(r: &Receiver) -> Vec<String> {
    r.accepted().iter().map(Request::text).collect()
}

// ---------- helpers ----------

fn event(n: u64) -> PendingEvent {
    let t = Transition {
        rule_id: "filler-7-overheat".into(),
        rule_version: 1,
        equipment_id: "filler-7".into(),
        previous_state: Some("OK".into()),
        state: format!("S{n}"),
        event_time: 1_700_000_000_000 + n,
        sequence: n,
        transition_id: transition_id("filler-7-overheat", "filler-7", 1_700_000_000_000 + n, n),
        groups: vec![],
        values: Default::default(),
        late: false,
    };
    let src = EventSource {
        account: "123456789012".into(),
        region: "eu-central-1".into(),
    };
    PendingEvent::from_transition(&t, &src, now_ms())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A target with short backoffs.
fn target(name: &str, url: &str) -> WebhookConfig {
    let mut w = WebhookConfig::new(name, url);
    w.timeout = Duration::from_secs(5);
    w.backoff_initial = Duration::from_millis(10);
    w.backoff_max = Duration::from_millis(50);
    w
}

async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Running {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn stop(self, within: Duration) {
        self.stop.cancel();
        for t in self.tasks {
            tokio::time::timeout(within, t)
                .await
                .expect("delivery task stops promptly")
                .unwrap();
        }
    }
}

fn start(
    targets: &[WebhookConfig],
    outbox: &Arc<Outbox>,
    store: &DeadLetterStore,
    metrics: &OutputMetrics,
) -> Running {
    let stop = CancellationToken::new();
    let tasks = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let cx = DeliveryContext {
                outbox: outbox.clone(),
                dead: store.clone(),
                metrics: metrics.clone(),
                clock: Arc::new(linewatch_runtime::clock::SystemClock),
                rng: fastrand::Rng::with_seed(i as u64),
                shutdown: stop.clone(),
            };
            tokio::spawn(run_target(WebhookTarget::new(t.resolve().unwrap()), cx))
        })
        .collect();
    Running { stop, tasks }
}

fn metrics_text(m: &OutputMetrics) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
    s
}

fn id_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------- tests ----------

#[tokio::test]
async fn delivers_each_event_once_in_order_with_the_envelope_as_body() {
    let rx = receiver(Answer::Status(200), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let cfg = target("ops", &rx.url("/events"));
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(&[cfg], &outbox, &store, &metrics);
    let events: Vec<PendingEvent> = (1..=20).map(event).collect();
    for e in &events[..10] {
        outbox.push(e.clone());
    }
    outbox.push_all(events[10..].iter().cloned());
    wait_for("20 deliveries", Duration::from_secs(10), || {
        delivered(&rx).len() == 20
    })
    .await;
    wait_for("empty outbox", Duration::from_secs(5), || {
        outbox.pending("ops") == 0
    })
    .await;
    let bodies: Vec<String> = events.iter().map(|e| e.body.to_string()).collect();
    assert_eq!(delivered(&rx), bodies);
    let r = &rx.requests()[0];
    assert_eq!(r.header("content-type").unwrap(), "application/json");
    assert_eq!(id_of(&r.text()), events[0].id.to_string());
    run.stop(Duration::from_secs(2)).await;
    let m = metrics_text(&metrics);
    assert!(
        m.contains("linewatch_rules_webhook_delivered_total{target=\"ops\"} 20"),
        "{m}"
    );
    assert!(m.contains("linewatch_rules_webhook_pending{target=\"ops\"} 0"));
    assert!(store.list(None).unwrap().is_empty());
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_retried_with_the_same_id_and_body() {
    let rx = receiver(
        Answer::Status(200),
        vec![
            Answer::Status(500),
            Answer::Status(502),
            Answer::Status(503),
            Answer::Status(200),
            Answer::Status(504),
            Answer::Status(200),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let cfg = target("ops", &rx.url("/events"));
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(&[cfg], &outbox, &store, &metrics);
    let events: Vec<PendingEvent> = (1..=3).map(event).collect();
    outbox.push_all(events.iter().cloned());
    wait_for("3 deliveries", Duration::from_secs(10), || {
        delivered(&rx).len() == 3
    })
    .await;
    let got = rx.requests();
    // 4 attempts of event 1, 2 of event 2, 1 of event 3: each time the same bytes.
    let sent: Vec<String> = got.iter().map(Request::text).collect();
    let b: Vec<&str> = events.iter().map(|e| &*e.body).collect();
    assert_eq!(sent, vec![b[0], b[0], b[0], b[0], b[1], b[1], b[2]]);
    assert_eq!(
        delivered(&rx),
        b.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    wait_for("empty outbox", Duration::from_secs(5), || {
        outbox.pending("ops") == 0
    })
    .await;
    run.stop(Duration::from_secs(2)).await;
    let m = metrics_text(&metrics);
    assert!(
        m.contains("linewatch_rules_webhook_retries_total{target=\"ops\"} 4"),
        "{m}"
    );
    assert!(m.contains("linewatch_rules_webhook_attempts_total{target=\"ops\"} 7"));

    // Connection refused: a port nobody listens on, then a receiver appears there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut cfg = target("late", &format!("http://{addr}/events"));
    cfg.backoff_max = Duration::from_millis(100);
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let run = start(std::slice::from_ref(&cfg), &outbox, &store, &metrics);
    outbox.push(events[0].clone());
    wait_for("a few refused attempts", Duration::from_secs(5), || {
        metrics_text(&metrics).contains("linewatch_rules_webhook_retries_total{target=\"late\"} 3")
    })
    .await;
    let late = Receiver::start_on(addr.port());
    late.set_status(204);
    wait_for(
        "delivery once the receiver is up",
        Duration::from_secs(5),
        || outbox.pending("late") == 0,
    )
    .await;
    assert_eq!(late.requests().len(), 1);
    assert_eq!(late.requests()[0].text(), &*events[0].body);
    run.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_backoff_max() {
    let rx = receiver(
        Answer::Status(200),
        vec![Answer::RetryAfter(429, 1), Answer::RetryAfter(503, 3600)],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut cfg = target("ops", &rx.url("/events"));
    // Backoff alone would retry within 10 ms; Retry-After asks for 1 s, then for an hour
    // (capped at backoff_max = 1.5 s).
    cfg.backoff_max = Duration::from_millis(1500);
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(&[cfg], &outbox, &store, &metrics);
    outbox.push(event(1));
    wait_for("delivery", Duration::from_secs(10), || {
        delivered(&rx).len() == 1
    })
    .await;
    let got = rx.requests();
    assert_eq!(got.len(), 3);
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    assert!(first_gap >= Duration::from_millis(950), "{first_gap:?}");
    assert!(first_gap < Duration::from_secs(3), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1450), "{second_gap:?}");
    assert!(second_gap < Duration::from_secs(5), "{second_gap:?}");
    run.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_rejected_event_is_dead_lettered_at_once_and_replay_delivers_it() {
    let rx = receiver(Answer::Status(200), vec![Answer::Status(400)]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut cfg = target("ops", &rx.url("/events"));
    cfg.auth = Some(AuthConfig::ApiKey {
        header: "x-api-key".into(),
        value: Some("k-123".into()),
        value_env: None,
        value_file: None,
    });
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(std::slice::from_ref(&cfg), &outbox, &store, &metrics);
    let (e1, e2) = (event(1), event(2));
    outbox.push_all([e1.clone(), e2.clone()]);
    wait_for("e2 delivered", Duration::from_secs(10), || {
        delivered(&rx).len() == 1
    })
    .await;
    // One attempt only for e1, and the next event was not held back.
    assert_eq!(rx.requests().len(), 2);
    assert_eq!(delivered(&rx), vec![e2.body.to_string()]);
    let dead = store.list(Some("ops")).unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.id, d.reason.as_str(), d.status, d.attempts),
        (e1.id, "rejected", Some(400), 1)
    );
    assert_eq!(d.transition_id, e1.transition_id);
    assert_eq!(d.body(), &*e1.body);
    run.stop(Duration::from_secs(2)).await;
    assert!(metrics_text(&metrics).contains(
        "linewatch_rules_webhook_dead_letters_total{target=\"ops\",reason=\"rejected\"} 1"
    ));

    // A replay that fails keeps the entry with the reason updated.
    rx.set_answer(Answer::Status(500));
    let r = replay(dir.path(), std::slice::from_ref(&cfg), None, &[])
        .await
        .unwrap();
    assert_eq!((r.selected, r.delivered, r.failed), (1, 0, 1));
    let d = &store.list(None).unwrap()[0];
    assert_eq!(
        (d.reason.as_str(), d.status, d.attempts),
        ("replay failed", Some(500), 2)
    );

    // A target no longer configured is reported, its entries kept.
    let r = replay(dir.path(), &[], None, &[]).await.unwrap();
    assert_eq!(r.unknown_targets, vec![("ops".to_string(), 1)]);
    assert_eq!(store.list(None).unwrap().len(), 1);

    // Unknown ids are reported; the right one is delivered, with auth, and removed.
    rx.set_answer(Answer::Status(200));
    let other = uuid::Uuid::from_u128(7);
    let r = replay(
        dir.path(),
        std::slice::from_ref(&cfg),
        Some("ops"),
        &[e1.id, other],
    )
    .await
    .unwrap();
    assert_eq!((r.selected, r.delivered, r.failed), (1, 1, 0));
    assert_eq!(r.not_found, vec![other]);
    assert!(store.list(None).unwrap().is_empty());
    let last = rx.requests().pop().unwrap();
    assert_eq!(
        last.text(),
        &*e1.body,
        "replay sends the envelope byte for byte"
    );
    assert_eq!(last.header("x-api-key").unwrap(), "k-123");
}

#[tokio::test]
async fn exhausted_attempts_or_age_go_to_dead_letters() {
    let rx = receiver(Answer::Status(500), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut by_attempts = target("attempts", &rx.url("/events"));
    by_attempts.max_attempts = 3;
    let mut by_age = target("age", &rx.url("/events"));
    by_age.max_age = Duration::from_millis(300);
    let targets = [by_attempts, by_age];
    let outbox = Arc::new(Outbox::new(&targets));
    let metrics = OutputMetrics::new();
    let run = start(&targets, &outbox, &store, &metrics);
    let e = event(1);
    outbox.push(e.clone());
    wait_for("both dead-lettered", Duration::from_secs(10), || {
        store.list(None).unwrap().len() == 2
    })
    .await;
    let a = store.list(Some("attempts")).unwrap().remove(0);
    assert_eq!(
        (a.reason.as_str(), a.attempts, a.status),
        ("max attempts", 3, Some(500))
    );
    assert!(a.first_attempt_at <= a.last_attempt_at);
    let g = store.list(Some("age")).unwrap().remove(0);
    assert_eq!(g.reason, "max age");
    assert!(
        g.attempts > 3,
        "retried until the age limit: {}",
        g.attempts
    );
    assert!(g.last_attempt_at - e.created_at_ms >= 300);
    // The entry is written before the event leaves the queue.
    wait_for("queues empty", Duration::from_secs(5), || {
        outbox.pending("attempts") + outbox.pending("age") == 0
    })
    .await;
    run.stop(Duration::from_secs(2)).await;
    let m = metrics_text(&metrics);
    assert!(
        m.contains("dead_letters_total{target=\"attempts\",reason=\"max_attempts\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("dead_letters_total{target=\"age\",reason=\"max_age\"} 1"),
        "{m}"
    );
    assert_eq!(DeadReason::MaxAge.as_str(), g.reason);
}

#[tokio::test]
async fn a_hanging_target_does_not_hold_back_another_and_shutdown_is_prompt() {
    let slow = receiver(Answer::Hang, vec![]);
    let fast = receiver(Answer::Status(200), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut s = target("slow", &slow.url("/events"));
    s.timeout = Duration::from_secs(60);
    let targets = [s, target("fast", &fast.url("/events"))];
    let outbox = Arc::new(Outbox::new(&targets));
    let metrics = OutputMetrics::new();
    let run = start(&targets, &outbox, &store, &metrics);
    let t0 = Instant::now();
    for n in 1..=5 {
        outbox.push(event(n));
    }
    wait_for("fast target got everything", Duration::from_secs(5), || {
        delivered(&fast).len() == 5
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    wait_for(
        "slow target got its first request",
        Duration::from_secs(5),
        || slow.requests().len() == 1,
    )
    .await;
    assert_eq!(outbox.pending("slow"), 5);
    // Shutdown interrupts the hanging request; the events stay for the next start.
    run.stop(Duration::from_secs(1)).await;
    assert_eq!(outbox.pending("slow"), 5);
    assert_eq!(outbox.pending("fast"), 0);
}

#[tokio::test]
async fn shutdown_is_prompt_while_backing_off() {
    let rx = receiver(Answer::Status(503), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut cfg = target("ops", &rx.url("/events"));
    cfg.backoff_initial = Duration::from_secs(600);
    cfg.backoff_max = Duration::from_secs(600);
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(&[cfg], &outbox, &store, &metrics);
    outbox.push(event(1));
    outbox.push(event(2));
    wait_for("first attempt", Duration::from_secs(5), || {
        rx.requests().len() == 1
    })
    .await;
    // Jitter may draw a tiny delay; wait until the task is surely in a long back-off.
    wait_for("back-off", Duration::from_secs(5), || {
        metrics_text(&metrics).contains("retries_total{target=\"ops\"} 1")
    })
    .await;
    let t = Instant::now();
    run.stop(Duration::from_secs(1)).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(outbox.pending("ops"), 2);
}

#[tokio::test]
async fn each_auth_kind_is_verified_by_the_receiver() {
    let rx = receiver(Answer::Status(200), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut key = target("key", &rx.url("/events"));
    key.auth = Some(AuthConfig::ApiKey {
        header: "authorization-token".into(),
        value: Some("tok".into()),
        value_env: None,
        value_file: None,
    });
    let mut basic = target("basic", &rx.url("/events"));
    basic.auth = Some(AuthConfig::Basic {
        username: "user".into(),
        password: Some("pass".into()),
        password_env: None,
        password_file: None,
    });
    let mut sig = target("sig", &rx.url("/events"));
    sig.headers.insert("x-tenant".into(), "plant-3".into());
    sig.auth = Some(AuthConfig::Hmac {
        secret: Some("s3cret".into()),
        secret_env: None,
        secret_file: None,
        header: "x-linewatch-signature".into(),
    });
    let targets = [key, basic, sig];
    let outbox = Arc::new(Outbox::new(&targets));
    let metrics = OutputMetrics::new();
    let run = start(&targets, &outbox, &store, &metrics);
    let e = event(1);
    outbox.push(e.clone());
    wait_for("three deliveries", Duration::from_secs(5), || {
        delivered(&rx).len() == 3
    })
    .await;
    run.stop(Duration::from_secs(2)).await;
    let got = rx.requests();
    let find = |pred: &dyn Fn(&Request) -> bool| got.iter().filter(|r| pred(r)).count();
    assert_eq!(find(&|h| h.header("authorization-token") == Some("tok")), 1);
    // base64("user:pass")
    assert_eq!(
        find(&|h| h.header("authorization") == Some("Basic dXNlcjpwYXNz")),
        1
    );
    // The receiver's recipe (docs/webhooks.md): HMAC-SHA256(secret, "{timestamp}.{body}").
    let signed: Vec<&Request> = got
        .iter()
        .filter(|r| r.header("x-linewatch-signature").is_some())
        .collect();
    assert_eq!(signed.len(), 1);
    let r = signed[0];
    let ts: u64 = r.header("x-linewatch-timestamp").unwrap().parse().unwrap();
    assert!(ts.abs_diff(now_ms() / 1000) < 300, "timestamp is recent");
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"s3cret").unwrap();
    mac.update(format!("{ts}.{}", r.text()).as_bytes());
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        r.header("x-linewatch-signature").unwrap(),
        expected.as_str()
    );
    assert_eq!(r.header("x-tenant").unwrap(), "plant-3");
    assert_eq!(r.text(), &*e.body);
    // Only the signing target sends a signature, only the key target a key.
    assert_eq!(find(&|h| h.header("x-linewatch-timestamp").is_some()), 1);
}

#[tokio::test]
async fn snapshot_and_restore_keep_undelivered_events_in_order_with_their_ids() {
    // The receiver takes two events, then fails: a crash now must not lose the rest.
    let rx = receiver(
        Answer::Status(500),
        vec![Answer::Status(200), Answer::Status(200)],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let a = target("a", &rx.url("/events"));
    let gone = target("gone", "http://127.0.0.1:9/none");
    let outbox = Arc::new(Outbox::new(&[a.clone(), gone.clone()]));
    let metrics = OutputMetrics::new();
    let run = start(std::slice::from_ref(&a), &outbox, &store, &metrics);
    let events: Vec<PendingEvent> = (1..=5).map(event).collect();
    outbox.push_all(events.iter().cloned());
    wait_for("two delivered", Duration::from_secs(5), || {
        outbox.pending("a") == 3
    })
    .await;
    // The checkpoint, as the engine would write it; then the process dies.
    let json = serde_json::to_string(&outbox.snapshot()).unwrap();
    run.stop(Duration::from_secs(2)).await;
    drop(outbox);

    // Restart with "gone" removed and a new target "b".
    let rx2 = receiver(Answer::Status(200), vec![]);
    let a2 = target("a", &rx2.url("/events"));
    let b = target("b", &rx2.url("/events"));
    let outbox = Arc::new(Outbox::new(&[a2.clone(), b.clone()]));
    let snap: OutboxSnapshot = serde_json::from_str(&json).unwrap();
    // Shared bodies are stored once.
    assert_eq!(snap.events.len(), 5);
    let report = outbox.restore(snap);
    assert_eq!(report.dropped_targets, vec![("gone".to_string(), 5)]);
    assert_eq!((outbox.pending("a"), outbox.pending("b")), (3, 0));
    let run = start(&[a2, b], &outbox, &store, &metrics);
    wait_for("the rest delivered", Duration::from_secs(5), || {
        delivered(&rx2).len() == 3
    })
    .await;
    let want: Vec<String> = events[2..].iter().map(|e| e.body.to_string()).collect();
    assert_eq!(delivered(&rx2), want, "same ids and bodies, same order");
    run.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_full_outbox_dead_letters_the_oldest_events() {
    let rx = receiver(Answer::Status(500), vec![]);
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(dir.path()).unwrap();
    let mut cfg = target("ops", &rx.url("/events"));
    cfg.max_pending = 2;
    cfg.backoff_initial = Duration::from_secs(600);
    cfg.backoff_max = Duration::from_secs(600);
    let outbox = Arc::new(Outbox::new(std::slice::from_ref(&cfg)));
    let metrics = OutputMetrics::new();
    let run = start(&[cfg], &outbox, &store, &metrics);
    let events: Vec<PendingEvent> = (1..=4).map(event).collect();
    outbox.push(events[0].clone());
    wait_for("first attempt", Duration::from_secs(5), || {
        rx.requests().len() == 1
    })
    .await;
    outbox.push_all(events[1..].iter().cloned());
    wait_for("two dead letters", Duration::from_secs(5), || {
        store.list(None).unwrap().len() == 2
    })
    .await;
    let dead = store.list(None).unwrap();
    let mut ids: Vec<_> = dead.iter().map(|d| d.id).collect();
    ids.sort();
    let mut want = vec![events[0].id, events[1].id];
    want.sort();
    assert_eq!(ids, want);
    assert!(dead.iter().all(|d| d.reason == "outbox full"));
    // The head that was being retried keeps its attempt record.
    let head = dead.iter().find(|d| d.id == events[0].id).unwrap();
    assert_eq!((head.attempts, head.status), (1, Some(500)));
    assert_eq!(outbox.pending("ops"), 2);
    assert_eq!(
        outbox.head("ops").map(|e| e.id),
        Some(events[2].id),
        "the newest are kept"
    );
    run.stop(Duration::from_secs(2)).await;
}
