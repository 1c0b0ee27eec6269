//! The control topic against a real Mosquitto (the test kit's): the one on 127.0.0.1:1883
//! when it is there (else one started for this process), and one of our own for the
//! restart and TLS tests. Every test on the shared broker uses its own random topic prefix
//! and a guard that clears what it retained, also when it fails.

use linewatch_rules::cli::control::{self as cli, ConnectionArgs, DeleteArgs, PublishArgs};
use linewatch_rules::control::{
    self, ControlConfig, ControlEvent, ControlHandle, ControlMetrics, DeleteMessage, RuleMessage,
    RulePayload, RuleStatus, StatusKind,
};
use linewatch_rules_core::{ChangeOutcome, Limits, Rule, Sandbox};
use linewatch_testkit::peers::mosquitto::{Broker, Mosquitto, MosquittoOptions, RetainedCleanup};
use linewatch_testkit::wait::scaled;
use linewatch_testkit::{ports, Scratch};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

// ---------------------------------------------------------------- brokers (the test kit's)

/// A private mosquitto on `port`, extra listener lines `extra` (TLS files...); its config
/// and log in the returned scratch dir.
fn private_broker(port: u16, extra: &str) -> (Scratch, Mosquitto) {
    let scratch = Scratch::new("control-mqtt-broker");
    let m = Mosquitto::start(
        MosquittoOptions {
            port: Some(port),
            extra_conf: extra.to_owned(),
        },
        scratch.path(),
    );
    (scratch, m)
}

/// The shared broker's port, a fresh topic prefix, and a guard that clears whatever the
/// test left retained under it (also when the test fails).
fn shared_broker() -> (u16, String, RetainedCleanup) {
    let port = Broker::shared_port();
    let prefix = prefix();
    let guard = RetainedCleanup::new(port, &prefix);
    (port, prefix, guard)
}

fn prefix() -> String {
    format!("lwtest/{:016x}", fastrand::u64(..))
}

fn config(port: u16, prefix: &str) -> ControlConfig {
    ControlConfig {
        port,
        topic_prefix: prefix.to_string(),
        retained_wait: scaled(Duration::from_secs(10)),
        retained_quiet: Duration::from_millis(300),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- a plain MQTT peer

/// A test client: its event loop runs in a task; received publishes come out of `rx`.
struct Peer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    acks: mpsc::UnboundedReceiver<()>,
}

impl Peer {
    async fn connect(port: u16, subscribe: &[String]) -> Peer {
        let id = format!("lwtest-peer-{:08x}", fastrand::u32(..));
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        wait_connack(&mut el).await;
        for topic in subscribe {
            client
                .subscribe(topic.clone(), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        for _ in subscribe {
            within(Duration::from_secs(5), sub_rx.recv(), "SUBACK").await;
        }
        Peer { client, rx, acks }
    }

    /// Publish (QoS 1) and wait for the broker's PUBACK: then it is stored/forwarded.
    async fn publish(&mut self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
        within(Duration::from_secs(5), self.acks.recv(), "PUBACK").await;
    }

    async fn next(&mut self) -> Publish {
        within(Duration::from_secs(10), self.rx.recv(), "a message")
            .await
            .expect("peer connection ended")
    }
}

fn client_id(name: &str) -> String {
    format!("lwtest-{name}-{:08x}", fastrand::u32(..))
}

/// Stop the control client and drop its persistent session from the broker (a clean
/// session connect with the same id discards it), so tests leave nothing behind.
async fn stop(handle: ControlHandle, port: u16, client_id: &str) {
    handle.shutdown().await;
    let (client, mut el) = AsyncClient::new(MqttOptions::new(client_id, "127.0.0.1", port), 4);
    wait_connack(&mut el).await;
    client.disconnect().await.unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(2));
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, el.poll()).await {
        if ev == Event::Outgoing(rumqttc::Outgoing::Disconnect) {
            break;
        }
    }
}

async fn wait_connack(el: &mut EventLoop) {
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("test client cannot connect: {e}"),
            Err(_) => panic!("test client: no CONNACK"),
        }
    }
}

async fn within<F: std::future::Future>(d: Duration, f: F, what: &str) -> F::Output {
    tokio::time::timeout(scaled(d), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn rule_json(version: u64, script: &str) -> Vec<u8> {
    RuleMessage {
        version,
        script: script.to_string(),
        signature: None,
    }
    .encode()
}

fn script(id: &str) -> String {
    format!(
        r#"#{{ id: "{id}", equipment: ["eq-1"],
   groups: [ #{{ name: "g", weight: 1, tags: ["t"], state: |v| if v.t > 1.0 {{ "WARNING" }} else {{ "OK" }} }} ] }}"#
    )
}

// ---------------------------------------------------------------- event helpers

/// Events up to and including the first one `until` accepts.
async fn events_until(
    rx: &mut mpsc::Receiver<ControlEvent>,
    d: Duration,
    until: impl Fn(&ControlEvent) -> bool,
) -> Vec<ControlEvent> {
    let deadline = Instant::now() + scaled(d);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                let stop = until(&ev);
                seen.push(ev);
                if stop {
                    return seen;
                }
            }
            Ok(None) => panic!("event channel closed; saw {seen:?}"),
            Err(_) => panic!("timed out; saw {seen:?}"),
        }
    }
}

fn is_sync_done(ev: &ControlEvent) -> bool {
    matches!(ev, ControlEvent::InitialSyncDone { .. })
}

fn rule_event(id: &str, version: Option<u64>, retained: bool) -> ControlEvent {
    ControlEvent::Rule {
        rule_id: id.to_string(),
        payload: match version {
            Some(v) => RulePayload::Upsert(RuleMessage {
                version: v,
                script: script(id),
                signature: None,
            }),
            None => RulePayload::Delete(DeleteMessage::default()),
        },
        retained,
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn retained_rules_arrive_before_initial_sync_done() {
    let (port, prefix, _retained) = shared_broker();
    let mut peer = Peer::connect(port, &[]).await;
    let topics = control::Topics::new(prefix.clone());
    peer.publish(&topics.rule("a"), true, rule_json(1, &script("a")))
        .await;
    peer.publish(&topics.rule("b"), true, rule_json(4, &script("b")))
        .await;

    let started = Instant::now();
    let cfg = config(port, &prefix);
    let id = client_id("sync");
    let (handle, mut rx) = control::start(&cfg, id.clone(), ControlMetrics::default(), rng())
        .await
        .unwrap();
    let mut seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert!(
        started.elapsed() < cfg.retained_wait,
        "waited the full bound: {seen:?}"
    );
    assert_eq!(seen.first(), Some(&ControlEvent::Connected), "{seen:?}");
    assert_eq!(
        seen.pop(),
        Some(ControlEvent::InitialSyncDone {
            rules: 2,
            timed_out: false
        })
    );
    let mut rules: Vec<_> = seen[1..].to_vec();
    rules.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        rules,
        vec![
            rule_event("a", Some(1), true),
            rule_event("b", Some(4), true)
        ]
    );
    stop(handle, port, &id).await;
}

#[tokio::test]
async fn without_retained_rules_initial_sync_done_comes_after_the_quiet_period() {
    let (port, prefix, _retained) = shared_broker();
    let cfg = config(port, &prefix);
    let started = Instant::now();
    let id = client_id("empty");
    let (handle, mut rx) = control::start(&cfg, id.clone(), ControlMetrics::default(), rng())
        .await
        .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert_eq!(
        seen,
        vec![
            ControlEvent::Connected,
            ControlEvent::InitialSyncDone {
                rules: 0,
                timed_out: false
            }
        ]
    );
    let took = started.elapsed();
    assert!(
        took >= cfg.retained_quiet && took < cfg.retained_wait,
        "took {took:?}"
    );
    stop(handle, port, &id).await;
    assert_eq!(
        within(Duration::from_secs(5), rx.recv(), "the end of events").await,
        None,
        "events end after shutdown"
    );
}

#[tokio::test]
async fn an_unreachable_broker_times_out_the_start_up_wait_and_keeps_retrying() {
    let port = ports::free_port(); // nothing listens here
    let mut cfg = config(port, &prefix());
    cfg.retained_wait = Duration::from_millis(800);
    let metrics = ControlMetrics::default();
    let started = Instant::now();
    let (handle, mut rx) = control::start(&cfg, "lwtest-down".into(), metrics.clone(), rng())
        .await
        .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(10), is_sync_done).await;
    assert!(
        matches!(seen.first(), Some(ControlEvent::Disconnected { error }) if !error.is_empty()),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&ControlEvent::InitialSyncDone {
            rules: 0,
            timed_out: true
        })
    );
    assert!(started.elapsed() >= cfg.retained_wait);
    // Still retrying: more failed attempts are counted, but reported as one loss.
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while metrics.reconnects.get() < 3 {
        assert!(Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.try_recv().is_err(), "one Disconnected per loss");
    assert_eq!(metrics.connected.get(), 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn live_rules_and_deletes_and_malformed_messages() {
    let (port, prefix, _retained) = shared_broker();
    let topics = control::Topics::new(prefix.clone());
    let metrics = ControlMetrics::default();
    let id = client_id("live");
    let (handle, mut rx) =
        control::start(&config(port, &prefix), id.clone(), metrics.clone(), rng())
            .await
            .unwrap();
    events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;

    let mut peer = Peer::connect(port, &[]).await;
    peer.publish(&topics.rule("r.1"), false, rule_json(2, &script("r.1")))
        .await;
    let seen = events_until(&mut rx, Duration::from_secs(5), |_| true).await;
    assert_eq!(seen, vec![rule_event("r.1", Some(2), false)]);

    // A topic level that is not a rule id, then payloads that are not rule messages.
    let bad_topic = format!("{prefix}/rules/no spaces");
    peer.publish(&bad_topic, false, rule_json(1, "x")).await;
    let seen = events_until(&mut rx, Duration::from_secs(5), |_| true).await;
    match &seen[..] {
        [ControlEvent::Malformed { topic, error }] => {
            assert_eq!(topic, &bad_topic);
            assert!(error.contains("' '"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    for (payload, want) in [
        (&b"not json"[..], "not JSON"),
        (&br#"{"script": "x"}"#[..], "version"),
        (&b"\xff"[..], "UTF-8"),
    ] {
        peer.publish(&topics.rule("r.1"), false, payload).await;
        let seen = events_until(&mut rx, Duration::from_secs(5), |_| true).await;
        match &seen[..] {
            [ControlEvent::Malformed { topic, error }] => {
                assert_eq!(topic, &topics.rule("r.1"));
                assert!(error.contains(want), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    // The loop goes on: an update, then an empty payload, which is a delete.
    peer.publish(&topics.rule("r.1"), false, rule_json(3, &script("r.1")))
        .await;
    peer.publish(&topics.rule("r.1"), false, Vec::new()).await;
    let seen = events_until(&mut rx, Duration::from_secs(5), |e| {
        matches!(
            e,
            ControlEvent::Rule {
                payload: RulePayload::Delete(_),
                ..
            }
        )
    })
    .await;
    assert_eq!(
        seen,
        vec![
            rule_event("r.1", Some(3), false),
            rule_event("r.1", None, false)
        ]
    );

    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"linewatch_control_messages_total{kind="rule"} 2"#,
        r#"linewatch_control_messages_total{kind="delete"} 1"#,
        r#"linewatch_control_messages_total{kind="malformed"} 4"#,
        r#"linewatch_control_malformed_total{reason="topic"} 1"#,
        r#"linewatch_control_malformed_total{reason="payload"} 3"#,
        "linewatch_control_connected 1",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    stop(handle, port, &id).await;
}

#[tokio::test]
async fn statuses_are_published_retained_on_the_status_topic() {
    let (port, prefix, _retained) = shared_broker();
    let topics = control::Topics::new(prefix.clone());
    let metrics = ControlMetrics::default();
    let id = client_id("status");
    let (handle, mut rx) =
        control::start(&config(port, &prefix), id.clone(), metrics.clone(), rng())
            .await
            .unwrap();
    events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    let status = RuleStatus::from_outcome(
        ChangeOutcome::Updated {
            rule_id: "s".into(),
            from: 1,
            to: 2,
            kept: vec!["g".into()],
            reset: vec![],
        },
        "rules-1",
        1_700_000_000_123,
    );
    handle.publish_status(&status).await;
    // A new subscriber gets it: it was retained.
    let mut peer = Peer::connect(port, &[topics.status("s")]).await;
    let got = peer.next().await;
    assert!(got.retain);
    assert_eq!(RuleStatus::decode(&got.payload), Ok(status));

    // A status whose rule id cannot be a topic level is refused and counted.
    let bad = RuleStatus::rejected("a/b", None, "x", "rules-1", 0);
    handle.publish_status(&bad).await;
    let failed = metrics
        .statuses
        .get_or_create(&control::metrics::ResultLabel {
            result: "failed".into(),
        })
        .get();
    assert_eq!(failed, 1);
    stop(handle, port, &id).await;
}

#[tokio::test]
async fn after_a_broker_restart_it_reconnects_and_resubscribes() {
    let port = ports::free_port();
    let (_scratch, mut broker) = private_broker(port, "");
    let prefix = prefix();
    let topics = control::Topics::new(prefix.clone());
    let metrics = ControlMetrics::default();
    let id = client_id("restart");
    let (handle, mut rx) =
        control::start(&config(port, &prefix), id.clone(), metrics.clone(), rng())
            .await
            .unwrap();
    events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;

    broker.kill();
    let seen = events_until(&mut rx, Duration::from_secs(10), |e| {
        matches!(e, ControlEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(metrics.connected.get(), 0);

    // A fresh broker (no persistence): it knows no session, so a rule only arrives if
    // the client subscribed again.
    broker.start_again();
    events_until(&mut rx, Duration::from_secs(15), |e| {
        matches!(e, ControlEvent::Connected)
    })
    .await;
    let mut peer = Peer::connect(port, &[]).await;
    peer.publish(&topics.rule("after"), true, rule_json(1, &script("after")))
        .await;
    let seen = events_until(&mut rx, Duration::from_secs(10), |e| {
        matches!(e, ControlEvent::Rule { .. })
    })
    .await;
    match seen.last() {
        Some(ControlEvent::Rule {
            rule_id, payload, ..
        }) => {
            assert_eq!(rule_id, "after");
            assert_eq!(payload.version(), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !seen.iter().any(is_sync_done),
        "InitialSyncDone only once: {seen:?}"
    );
    assert!(metrics.reconnects.get() >= 1);
    assert_eq!(metrics.connected.get(), 1);
    handle.shutdown().await;
}

// ---------------------------------------------------------------- the CLI

/// A tiny engine: the real control client, a version map, statuses like the service's.
async fn fake_engine(
    port: u16,
    prefix: &str,
) -> (ControlHandle, String, tokio::task::JoinHandle<()>) {
    let id = client_id("engine");
    let (handle, mut rx) = control::start(
        &config(port, prefix),
        id.clone(),
        ControlMetrics::default(),
        rng(),
    )
    .await
    .unwrap();
    events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    let h = handle.clone();
    let task = tokio::spawn(async move {
        let sandbox = Sandbox::new(Limits::default());
        let mut loaded: HashMap<String, u64> = HashMap::new();
        while let Some(ev) = rx.recv().await {
            let ControlEvent::Rule {
                rule_id, payload, ..
            } = ev
            else {
                continue;
            };
            let message = match payload {
                RulePayload::Upsert(m) => Some(m),
                RulePayload::Delete(_) => None,
            };
            let status = match message {
                Some(m) => match Rule::compile(&sandbox, &m.script, &rule_id) {
                    Err(e) => {
                        RuleStatus::rejected(&rule_id, Some(m.version), e.to_string(), "fake", 1)
                    }
                    Ok(r) if r.id() != rule_id => RuleStatus::rejected(
                        &rule_id,
                        Some(m.version),
                        "id differs from the topic",
                        "fake",
                        1,
                    ),
                    Ok(_) => match loaded.get(&rule_id).copied() {
                        Some(v) if v >= m.version => RuleStatus::from_outcome(
                            ChangeOutcome::IgnoredStaleVersion {
                                rule_id: rule_id.clone(),
                                loaded: v,
                                offered: m.version,
                            },
                            "fake",
                            1,
                        ),
                        _ => {
                            loaded.insert(rule_id.clone(), m.version);
                            RuleStatus::from_outcome(
                                ChangeOutcome::Added {
                                    rule_id: rule_id.clone(),
                                    version: m.version,
                                },
                                "fake",
                                1,
                            )
                        }
                    },
                },
                None => match loaded.remove(&rule_id) {
                    Some(version) => RuleStatus::from_outcome(
                        ChangeOutcome::Deleted {
                            rule_id: rule_id.clone(),
                            version,
                        },
                        "fake",
                        1,
                    ),
                    None => {
                        RuleStatus::from_outcome(ChangeOutcome::NotFound { rule_id }, "fake", 1)
                    }
                },
            };
            h.publish_status(&status).await;
        }
    });
    (handle, id, task)
}

fn conn(port: u16, prefix: &str) -> ConnectionArgs {
    ConnectionArgs {
        port: Some(port),
        topic_prefix: Some(prefix.to_string()),
        ..Default::default()
    }
}

fn publish_args(port: u16, prefix: &str, file: &Path) -> PublishArgs {
    PublishArgs {
        file: file.to_path_buf(),
        connection: conn(port, prefix),
        version: None,
        id: None,
        wait: scaled(Duration::from_secs(10)),
    }
}

/// The version of the retained rule message on `topic`.
async fn retained_version(port: u16, topic: &str) -> u64 {
    let mut peer = Peer::connect(port, &[topic.to_string()]).await;
    let p = peer.next().await;
    assert!(p.retain);
    RuleMessage::decode(&p.payload).unwrap().unwrap().version
}

#[tokio::test]
async fn publish_and_delete_number_versions_and_map_statuses_to_exit_codes() {
    let (port, prefix, _retained) = shared_broker();
    let topics = control::Topics::new(prefix.clone());
    let (engine, engine_id, engine_task) = fake_engine(port, &prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cli-rule.rhai");
    std::fs::write(&file, script("cli-rule")).unwrap();
    let rule_topic = topics.rule("cli-rule");

    // No retained rule yet: version 1; then the retained one + 1.
    let code = cli::publish(publish_args(port, &prefix, &file))
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(retained_version(port, &rule_topic).await, 1);
    let code = cli::publish(publish_args(port, &prefix, &file))
        .await
        .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(retained_version(port, &rule_topic).await, 2);

    // The same version again: the engine ignores it → 1.
    let mut args = publish_args(port, &prefix, &file);
    args.version = Some(2);
    assert_eq!(cli::publish(args).await.unwrap(), ExitCode::from(1));

    // A script that does not compile is refused here (2) and not published...
    let broken = dir.path().join("broken.rhai");
    std::fs::write(&broken, "#{ id: \"cli-rule\", groups: [ ").unwrap();
    let code = cli::publish(publish_args(port, &prefix, &broken))
        .await
        .unwrap();
    assert_eq!(code, ExitCode::from(2));
    assert_eq!(retained_version(port, &rule_topic).await, 2);
    // ...unless --id says to let the engine judge: rejected → 1.
    let mut args = publish_args(port, &prefix, &broken);
    args.id = Some("cli-rule".into());
    assert_eq!(cli::publish(args).await.unwrap(), ExitCode::from(1));
    assert_eq!(retained_version(port, &rule_topic).await, 3);

    // Delete: deleted → 0, then not found → 1; the retained rule is gone.
    let delete = || DeleteArgs {
        rule_id: "cli-rule".into(),
        version: None,
        connection: conn(port, &prefix),
        wait: scaled(Duration::from_secs(10)),
    };
    assert_eq!(cli::delete(delete()).await.unwrap(), ExitCode::SUCCESS);
    assert_eq!(cli::delete(delete()).await.unwrap(), ExitCode::from(1));
    let mut peer = Peer::connect(port, &[rule_topic.clone(), topics.status("cli-rule")]).await;
    let last = peer.next().await;
    assert_eq!(
        last.topic,
        topics.status("cli-rule"),
        "no retained rule left"
    );
    let status = RuleStatus::decode(&last.payload).unwrap();
    assert_eq!(status.status, StatusKind::NotFound);

    stop(engine, port, &engine_id).await;
    let _ = within(Duration::from_secs(5), engine_task, "the fake engine").await;
}

#[tokio::test]
async fn publish_without_an_engine_times_out_with_3() {
    let (port, prefix, _retained) = shared_broker();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lonely.rhai");
    std::fs::write(&file, script("lonely")).unwrap();
    let mut args = publish_args(port, &prefix, &file);
    args.wait = Duration::from_millis(300);
    args.version = Some(5);
    assert_eq!(cli::publish(args).await.unwrap(), ExitCode::from(3));
    let topic = control::Topics::new(prefix.clone()).rule("lonely");
    assert_eq!(
        retained_version(port, &topic).await,
        5,
        "the rule stays retained"
    );
    let code = cli::delete(DeleteArgs {
        rule_id: "lonely".into(),
        version: None,
        connection: conn(port, &prefix),
        wait: Duration::from_millis(300),
    })
    .await
    .unwrap();
    assert_eq!(code, ExitCode::from(3));
}

#[tokio::test]
async fn publish_to_an_unreachable_broker_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.rhai");
    std::fs::write(&file, script("r")).unwrap();
    let err = cli::publish(publish_args(ports::free_port(), "lwtest/x", &file))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("MQTT connection to 127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn a_delete_published_while_away_is_delivered_on_return() {
    // The session is persistent: the broker queues the delete (which leaves no
    // retained message to find) for the client id and delivers it on reconnect.
    let (port, prefix, _retained) = shared_broker();
    let topics = control::Topics::new(prefix.clone());
    let id = client_id("away");
    let mut peer = Peer::connect(port, &[]).await;
    peer.publish(&topics.rule("gone"), true, rule_json(1, &script("gone")))
        .await;
    let cfg = config(port, &prefix);
    let (handle, mut rx) = control::start(&cfg, id.clone(), ControlMetrics::default(), rng())
        .await
        .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert!(
        seen.contains(&rule_event("gone", Some(1), true)),
        "{seen:?}"
    );
    handle.shutdown().await;

    peer.publish(&topics.rule("gone"), true, Vec::new()).await;

    let (handle, mut rx) = control::start(&cfg, id.clone(), ControlMetrics::default(), rng())
        .await
        .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert!(
        seen.contains(&rule_event("gone", None, false)),
        "the queued delete: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&ControlEvent::InitialSyncDone {
            rules: 0,
            timed_out: false
        })
    );
    stop(handle, port, &id).await;
}

/// Run openssl, failing the test with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // mosquitto drops root privileges: let any user read the files.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=lwtest-ca",
            ],
        ]
        .concat(),
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for name in ["server", "client"] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ],
        );
    }
    for f in std::fs::read_dir(d).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let extra = format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
        d.display()
    );
    let port = ports::free_port();
    let ca = d.join("ca.pem");
    let (client_cert, client_key) = (d.join("client.pem"), d.join("client.key"));
    let (_scratch, _broker) = private_broker(port, &extra);

    let mut cfg = config(port, &prefix());
    cfg.tls = Some(control::TlsConfig {
        ca_file: Some(ca.clone()),
        client_cert: Some(client_cert),
        client_key: Some(client_key),
    });
    let (handle, mut rx) = control::start(&cfg, client_id("tls"), ControlMetrics::default(), rng())
        .await
        .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert_eq!(
        seen,
        vec![
            ControlEvent::Connected,
            ControlEvent::InitialSyncDone {
                rules: 0,
                timed_out: false
            }
        ]
    );
    handle.shutdown().await;

    // Without the client certificate the broker refuses the handshake: reported, retried.
    cfg.tls = Some(control::TlsConfig {
        ca_file: Some(ca),
        ..Default::default()
    });
    cfg.retained_wait = Duration::from_millis(500);
    let (handle, mut rx) = control::start(
        &cfg,
        client_id("tls-nocert"),
        ControlMetrics::default(),
        rng(),
    )
    .await
    .unwrap();
    let seen = events_until(&mut rx, Duration::from_secs(15), is_sync_done).await;
    assert!(
        matches!(seen.first(), Some(ControlEvent::Disconnected { .. })),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&ControlEvent::InitialSyncDone {
            rules: 0,
            timed_out: true
        })
    );
    handle.shutdown().await;
}

/// The reconnect jitter of a test connection: a fixed seed, so a run can be repeated.
fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(0x6c77)
}
