//! Who may change rules: only messages signed by a trusted author key change the rule
//! set (unsigned, untrusted, re-targeted and replayed messages are rejected with a
//! status and change nothing); `publish` counts only statuses signed by the engine; and
//! with the documented Mosquitto ACL (`docs/mosquitto-acl.example`) a client that is not
//! the author cannot even reach the engine.

mod rules_common;

use linewatch_e2e::rules::{self, run_cli, RulesService};
use linewatch_e2e::scenario::{self, machine_rule};
use linewatch_rules::control::auth::{self, SecretKey};
use linewatch_rules::control::{DeleteMessage, RuleMessage, RuleStatus, StatusKind};
use linewatch_testkit::peers::mosquitto::{Mosquitto, MosquittoOptions};
use rules_common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const RULE: &str = "au-main";

fn author_key(svc: &RulesService) -> SecretKey {
    let path = svc.config().mqtt.author_key.clone().expect("author key");
    auth::read_secret_key(&path).expect("author key file")
}

async fn rules_of(svc: &RulesService) -> Value {
    svc.get_json("/rules").expect("/rules")
}

fn has_error(v: &Value, version: Value, needle: &str) -> bool {
    v["status"] == "rejected"
        && v["version"] == version
        && v["error"].as_str().is_some_and(|e| e.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_untrusted_retargeted_and_replayed_messages_change_nothing() {
    let env = Env::start("abuse-auth", 1).await;
    let machines = scenario::machines("au", 2);
    let svc = RulesService::start(env.config(), env.dir());
    let st = svc
        .publish_text("v1.rhai", &machine_rule(RULE, 1, &machines, 80.0, "1s"), 1)
        .await;
    assert_eq!(st["status"], "accepted", "{st}");
    let topic = svc.config().rule_topic(RULE);
    let status = svc.config().status_topic(RULE);
    let author = author_key(&svc);
    let wait = Duration::from_secs(10);

    // Unsigned.
    let v2 = machine_rule(RULE, 2, &machines, 70.0, "1s");
    let unsigned = json!({"version": 2, "script": v2}).to_string();
    env.broker
        .publish_retained(&topic, unsigned.as_bytes())
        .await
        .unwrap();
    env.broker
        .wait_json(&status, wait, |v| has_error(v, json!(2), "not signed"))
        .await;

    // Signed by a key the engine does not trust.
    let (intruder, _) = rules::key_pair(env.dir(), "intruder");
    let intruder = auth::read_secret_key(&intruder).unwrap();
    let m = RuleMessage::signed(
        RULE,
        3,
        machine_rule(RULE, 3, &machines, 70.0, "1s"),
        &intruder,
    );
    env.broker
        .publish_retained(&topic, &m.encode())
        .await
        .unwrap();
    env.broker
        .wait_json(&status, wait, |v| has_error(v, json!(3), "not trusted"))
        .await;

    // The author's signature on another rule id (re-targeted).
    let other = "au-other";
    let m = RuleMessage::signed(
        RULE,
        4,
        machine_rule(other, 4, &machines, 70.0, "1s"),
        &author,
    );
    env.broker
        .publish_retained(&svc.config().rule_topic(other), &m.encode())
        .await
        .unwrap();
    env.broker
        .wait_json(&svc.config().status_topic(other), wait, |v| {
            has_error(v, json!(4), "does not match")
        })
        .await;

    // The author's signed upsert turned into a delete of the same id and version.
    let m = RuleMessage::signed(
        RULE,
        5,
        machine_rule(RULE, 5, &machines, 70.0, "1s"),
        &author,
    );
    let forged = DeleteMessage {
        version: Some(5),
        signature: m.signature.clone(),
    };
    env.broker
        .publish_retained(&topic, &forged.encode())
        .await
        .unwrap();
    env.broker
        .wait_json(&status, wait, |v| has_error(v, json!(5), "does not match"))
        .await;

    // The plain MQTT delete (an empty retained payload) is unsigned too.
    env.broker.publish_retained(&topic, b"").await.unwrap();
    env.broker
        .wait_json(&status, wait, |v| has_error(v, Value::Null, "not signed"))
        .await;
    assert_eq!(
        rules_of(&svc).await,
        json!([{"ruleId": RULE, "version": 1}]),
        "nothing above changed the rule set"
    );

    // A signed v6, then the author's old signed delete of v1 replayed: ignored.
    let st = svc
        .publish_text("v6.rhai", &machine_rule(RULE, 6, &machines, 70.0, "1s"), 6)
        .await;
    assert_eq!(st["status"], "accepted", "{st}");
    let old_delete = DeleteMessage::signed(RULE, 1, &author);
    env.broker
        .publish_retained(&topic, &old_delete.encode())
        .await
        .unwrap();
    env.broker
        .wait_json(&status, wait, |v| {
            v["status"] == "ignored" && v["version"] == 1
        })
        .await;

    // `publish` with the intruder's key: the engine's (signed) rejection, exit 1.
    let file = env.rule_file("v7.rhai", &machine_rule(RULE, 7, &machines, 70.0, "1s"));
    let mut args = vec!["publish".to_owned(), file.display().to_string()];
    args.extend(
        svc.control_args()
            .into_iter()
            .filter(|a| !a.ends_with("author.key") && a != "--key"),
    );
    args.extend([
        "--key".into(),
        env.dir().join("keys/intruder.key").display().to_string(),
    ]);
    args.extend([
        "--version".into(),
        "7".into(),
        "--wait".into(),
        "10s".into(),
    ]);
    let res = run_cli(&args, Duration::from_secs(30)).await;
    res.expect_code(1);
    assert!(has_error(&res.json(), json!(7), "not trusted"), "{res}");
    assert_eq!(
        rules_of(&svc).await,
        json!([{"ruleId": RULE, "version": 6}])
    );

    // A signed delete works and names the version it deletes.
    let res = svc.delete(RULE).await;
    res.expect_code(0);
    assert_eq!(res.json()["status"], "deleted", "{res}");
    assert_eq!(rules_of(&svc).await, json!([]));
}

/// A connection with a login; `publish` waits for the broker's PUBACK.
struct Client {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Client {
    async fn connect(port: u16, user: &str, password: &str) -> Client {
        let id = format!("abuse-{user}-{}-{}", std::process::id(), fastrand_id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_credentials(user, password);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(opts, 64);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
        let mut conn_tx = Some(conn_tx);
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(t) = conn_tx.take() {
                            let _ = t.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(t) = conn_tx.take() {
                            let _ = t.send(Err(e.to_string()));
                        }
                        return;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), conn_rx).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("{user} could not connect: {other:?}"),
        }
        Client { client, task, acks }
    }

    async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("PUBACK")
            .expect("connection alive");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fastrand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn passwd(file: &Path, user: &str, password: &str) {
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-b"])
        .arg(file)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_documented_acl_only_the_author_reaches_the_engine() {
    let env = Env::start("abuse-acl", 1).await;
    // The ACL of the docs, for this test's prefix.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/mosquitto-acl.example");
    let acl = std::fs::read_to_string(&example)
        .unwrap()
        .replace("linewatch/", &format!("{}/", env.prefix));
    let acl_file = env.dir().join("acl");
    std::fs::write(&acl_file, acl).unwrap();
    let pw_file = env.dir().join("passwd");
    std::fs::write(&pw_file, "").unwrap();
    for (user, pw) in [
        ("rules-author", "author-pw"),
        ("linewatch-rules", "engine-pw"),
        ("intruder", "intruder-pw"),
    ] {
        passwd(&pw_file, user, pw);
    }
    let broker = Mosquitto::start(
        MosquittoOptions {
            port: None,
            extra_conf: format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                pw_file.display(),
                acl_file.display()
            ),
        },
        env.dir(),
    );
    let engine_var = format!("LW_ABUSE_ACL_ENGINE_PW_{}", std::process::id());
    let author_var = format!("LW_ABUSE_ACL_AUTHOR_PW_{}", std::process::id());
    std::env::set_var(&engine_var, "engine-pw");
    std::env::set_var(&author_var, "author-pw");
    let mut cfg = env.config();
    cfg.mqtt.port = broker.port();
    cfg.mqtt.username = Some("linewatch-rules".into());
    cfg.mqtt.password_env = Some(engine_var.clone());
    let mut svc = RulesService::start(cfg, env.dir());
    let machines = scenario::machines("acl", 2);

    let as_author = |svc: &RulesService, file: &Path, version: u64| {
        let mut args = vec!["publish".to_owned(), file.display().to_string()];
        args.extend(svc.control_args());
        args.extend([
            "--username".into(),
            "rules-author".into(),
            "--password-env".into(),
            author_var.clone(),
            "--version".into(),
            version.to_string(),
            "--wait".into(),
            "10s".into(),
        ]);
        args
    };
    let v1 = env.rule_file("v1.rhai", &machine_rule(RULE, 1, &machines, 80.0, "1s"));
    let res = run_cli(&as_author(&svc, &v1, 1), Duration::from_secs(30)).await;
    res.expect_code(0);

    // The intruder logs in but may write neither rules nor statuses: even a message
    // signed with the author's key never reaches the engine, and its fake status is
    // not stored.
    let mut intruder = Client::connect(broker.port(), "intruder", "intruder-pw").await;
    let author = author_key(&svc);
    let evil = RuleMessage::signed(
        RULE,
        9,
        machine_rule(RULE, 9, &machines, 1.0, "1s"),
        &author,
    );
    intruder
        .publish(&svc.config().rule_topic(RULE), true, evil.encode())
        .await;
    intruder
        .publish(&svc.config().rule_topic("acl-new"), true, b"{}".to_vec())
        .await;
    let fake = RuleStatus::rejected(RULE, Some(2), "fake", "intruder", 0);
    intruder
        .publish(&svc.config().status_topic(RULE), true, fake.encode())
        .await;

    // The author's next version: published after the intruder's, so the engine would
    // have seen those first. It is accepted, and the engine saw exactly two rules.
    let v2 = env.rule_file("v2.rhai", &machine_rule(RULE, 2, &machines, 80.0, "1s"));
    let res = run_cli(&as_author(&svc, &v2, 2), Duration::from_secs(30)).await;
    res.expect_code(0);
    let st = RuleStatus::decode(res.stdout.trim().as_bytes()).unwrap();
    assert_eq!((st.status, st.version), (StatusKind::Accepted, Some(2)));
    assert!(st.signature.is_some(), "{res}");
    let scrape = svc.scrape();
    assert_eq!(
        scrape.sum("linewatch_control_messages_total", &[("kind", "rule")]),
        2.0,
        "the intruder's messages reached the engine"
    );
    assert_eq!(scrape.sum("linewatch_control_refused_total", &[]), 0.0);
    assert_eq!(
        svc.get_json("/rules").unwrap(),
        json!([{"ruleId": RULE, "version": 2}])
    );
    drop(intruder);
    std::env::remove_var(&engine_var);
    std::env::remove_var(&author_var);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_exits_4_when_only_statuses_not_signed_by_the_engine_answer() {
    let env = Env::start("abuse-forged", 1).await;
    // No engine: only a forger answers, "accepted", on the status topic.
    let cfg = env.config();
    let config_path = env.dir().join("rules.toml");
    std::fs::write(&config_path, cfg.to_toml()).unwrap();
    let status_topic = cfg.status_topic(RULE);
    let port = env.broker.port();
    let instance = cfg.instance_id.clone();
    let forger = tokio::spawn(async move {
        let id = format!("abuse-forger-{}", std::process::id());
        let (client, mut ev) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 16);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                r = ev.poll() => if r.is_err() { tokio::time::sleep(Duration::from_millis(100)).await },
                _ = tick.tick() => {
                    let lie = json!({"ruleId": RULE, "version": 1, "status": "accepted", "error": null,
                        "outcome": null, "instance": instance, "at": 0});
                    let _ = client.try_publish(&status_topic, QoS::AtMostOnce, false, lie.to_string());
                }
            }
        }
    });
    let machines = scenario::machines("fg", 1);
    let file = env.rule_file("v1.rhai", &machine_rule(RULE, 1, &machines, 80.0, "1s"));
    let args: Vec<String> = vec![
        "publish".into(),
        file.display().to_string(),
        "--config".into(),
        config_path.display().to_string(),
        "--key".into(),
        cfg.mqtt.author_key.clone().unwrap().display().to_string(),
        "--version".into(),
        "1".into(),
        "--wait".into(),
        "3s".into(),
    ];
    let res = run_cli(&args, Duration::from_secs(30)).await;
    forger.abort();
    res.expect_code(4);
    assert!(
        res.stdout.trim().is_empty(),
        "printed a forged status: {res}"
    );
    assert!(res.stderr.contains("not from the engine"), "{res}");
}
