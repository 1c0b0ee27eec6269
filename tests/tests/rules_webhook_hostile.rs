//! Webhook targets and URLs that try to hurt the engine: a receiver answering with an
//! endless body must not take its memory (only the first 64 KiB of an answer is read),
//! and credentials in a target's URL or in its secret file never show in a log line, a
//! metric, an ops endpoint, a dead-letter entry or the `dead-letters` CLI; the ops
//! endpoints listen on the configured address only.

mod rules_common;

use linewatch_e2e::scenario::{self, base_time, machine_cycle, machine_rule, step_time};
use linewatch_testkit::feed::Feed;
use linewatch_testkit::wait;
use rules_common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server that answers every request `200` with a 1 GiB body it streams as fast
/// as the client takes it. Counts requests and the most bytes one answer got out.
struct EndlessAnswers {
    port: u16,
    requests: Arc<AtomicU64>,
    most_written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const GIB: u64 = 1 << 30;

impl EndlessAnswers {
    async fn start() -> EndlessAnswers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let most_written = Arc::new(AtomicU64::new(0));
        let (r, m) = (requests.clone(), most_written.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (r, m) = (r.clone(), m.clone());
                tokio::spawn(async move {
                    // Read up to the end of the headers and whatever body came with them;
                    // the answer does not depend on it.
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {GIB}\r\n\r\n");
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 1 << 20];
                    let mut written = 0u64;
                    while written < GIB {
                        if sock.write_all(&chunk).await.is_err() {
                            break;
                        }
                        written += chunk.len() as u64;
                        m.fetch_max(written, Ordering::SeqCst);
                    }
                });
            }
        });
        EndlessAnswers {
            port,
            requests,
            most_written,
            task,
        }
    }
}

impl Drop for EndlessAnswers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_and_costs_no_memory() {
    let env = Env::start("rules-endless-answer", 1).await;
    let hostile = EndlessAnswers::start().await;
    let mut config = env.config();
    config.webhooks[0].url = format!("http://127.0.0.1:{}/events", hostile.port);
    let machines = scenario::machines("endless", 2);
    let script = machine_rule("endless-rule", 1, &machines, 80.0, "1s");
    let mut svc = linewatch_e2e::rules::RulesService::start(config, env.dir());
    svc.publish_text("rule.rhai", &script, 1).await;

    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 200);
    feed.heartbeats(&machines, step_time(base, 200) + 3000);
    env.put(&mut feed).await;

    // Several events are posted, each answered with a gigabyte: each counts as delivered
    // (the status is 200) after at most a small part of its body was read.
    wait::until(
        "five events answered",
        Duration::from_secs(60),
        async || {
            let n = hostile.requests.load(Ordering::SeqCst);
            (n >= 5).then_some(()).ok_or(format!("{n} requests so far"))
        },
    )
    .await;
    let rss = svc.rss_bytes().expect("the engine's RSS");
    let written = hostile.most_written.load(Ordering::SeqCst);
    eprintln!(
        "endless answers: {} requests, at most {written} bytes of one answer got out, engine RSS {} MiB",
        hostile.requests.load(Ordering::SeqCst),
        rss >> 20
    );
    assert!(
        rss < 200 << 20,
        "the engine holds {} MiB after reading gigabyte answers",
        rss >> 20
    );
    // What got out is what the socket buffers took, far below the gigabyte offered.
    assert!(
        written < 256 << 20,
        "{written} bytes of one answer were read"
    );
    // The receiver saw the fifth request before the engine counted its answer: wait for it.
    svc.wait_metrics("five deliveries counted", Duration::from_secs(20), |m| {
        let delivered = m.sum(
            "linewatch_rules_webhook_delivered_total",
            &[("target", "recv")],
        );
        if delivered >= 5.0 {
            Ok(())
        } else {
            Err(m.describe("linewatch_rules_webhook_"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_and_secret_files_never_show() {
    const PASSWORD: &str = "hunter2SECRETpw";
    const TOKEN: &str = "t0k3nSECRETquery";
    const HMAC: &str = "hmacSECRETfromfile";
    let env = Env::start("rules-secrets", 1).await;
    // Rejected with 400: every event goes to the dead-letter store with its error.
    env.receiver.set_status(400);
    let secret_file = env.dir().join("hmac.secret");
    std::fs::write(&secret_file, format!("{HMAC}\n")).unwrap();
    let mut config = env.config();
    let url = env.receiver.url("/events");
    let with_creds = url.replacen("http://", &format!("http://ops:{PASSWORD}@"), 1);
    config.webhooks[0].url = format!("{with_creds}?token={TOKEN}");
    config.webhooks[0].extra.insert(
        "auth".into(),
        toml::Value::Table(toml::toml! {
            type = "hmac"
            secret_file = (secret_file.display().to_string())
        }),
    );
    // A second target nobody listens on: its network errors must not print the URL either.
    let mut dead = config.webhooks[0].clone();
    dead.name = "nobody".into();
    dead.url = format!(
        "http://ops:{PASSWORD}@127.0.0.1:{}/x?token={TOKEN}",
        linewatch_testkit::ports::free_port()
    );
    dead.extra
        .insert("max_attempts".into(), toml::Value::Integer(2));
    config.webhooks.push(dead);

    let machines = scenario::machines("secrets", 2);
    let script = machine_rule("secrets-rule", 1, &machines, 80.0, "1s");
    let svc = linewatch_e2e::rules::RulesService::start(config, env.dir());
    svc.publish_text("rule.rhai", &script, 1).await;
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 120);
    feed.heartbeats(&machines, step_time(base, 120) + 3000);
    env.put(&mut feed).await;

    // The receiver saw signed requests: the HMAC secret was read from its file.
    let req = env
        .receiver
        .wait_for("a rejected request", Duration::from_secs(30), |r| {
            r.requests()
                .into_iter()
                .find(|q| q.status == 400)
                .ok_or_else(|| "none yet".to_string())
        })
        .await;
    let sig = req
        .header("x-linewatch-signature")
        .unwrap_or_else(|| panic!("unsigned request: {}", req.describe()));
    let ts: u64 = req
        .header("x-linewatch-timestamp")
        .and_then(|t| t.parse().ok())
        .expect("a signature timestamp");
    let body = String::from_utf8(req.body.clone()).unwrap();
    assert_eq!(
        sig,
        linewatch_rules::output::webhook::request_builder::sign(HMAC.as_bytes(), ts, &body),
        "signed with the secret from the file"
    );

    let listed = wait::until(
        "dead letters of both targets",
        Duration::from_secs(60),
        async || {
            let out = std::process::Command::new(linewatch_e2e::programs::rules())
                .args(["dead-letters", "list", "--config"])
                .arg(svc.config_path())
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let targets: std::collections::BTreeSet<String> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["target"].as_str().map(str::to_owned))
                .collect();
            if targets.len() == 2 {
                Ok(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            } else {
                Err(format!("targets so far: {targets:?}"))
            }
        },
    )
    .await;
    let log = svc.log();
    assert!(
        log.contains("ops:***@"),
        "the start log names the target without its password:\n{}",
        svc.log_tail(40)
    );
    let (_, metrics) = svc.get("/metrics").unwrap();
    let mut endpoints = String::new();
    for path in ["/healthz", "/rules", "/states"] {
        endpoints.push_str(&svc.get(path).map(|(_, b)| b).unwrap_or_default());
    }
    // The ops server listens on the configured address only: another loopback address of
    // the same port is refused.
    let port = svc.config().http_addr().port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.2", port)).is_err(),
        "the ops port answers on 127.0.0.2 too"
    );
    let mut stored = String::new();
    for entry in walk(&svc.config().state_dir) {
        stored.push_str(&String::from_utf8_lossy(
            &std::fs::read(&entry).unwrap_or_default(),
        ));
    }
    for (what, text) in [
        ("the log", &log),
        ("/metrics", &metrics),
        ("/healthz, /rules and /states", &endpoints),
        ("dead-letters list", &listed),
        ("the state directory", &stored),
    ] {
        for secret in [PASSWORD, TOKEN, HMAC] {
            assert!(!text.contains(secret), "{what} shows {secret}");
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A target that accepts connections and never answers, next to a healthy one: the
/// healthy one gets every event on time, the hanging one's queue stays at its
/// `max_pending` (the oldest beyond it dead-lettered as `outbox_full`, counted), and the
/// engine's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_is_bounded_and_holds_back_nobody() {
    const MAX_PENDING: i64 = 20;
    let env = Env::start("rules-hanging-target", 1).await;
    // Accepts and reads, never writes: every attempt runs into the target's timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    let mut config = env.config();
    let mut hang = config.webhooks[0].clone();
    hang.name = "hang".into();
    hang.url = format!("http://127.0.0.1:{hang_port}/events");
    hang.extra
        .insert("max_pending".into(), toml::Value::Integer(MAX_PENDING));
    hang.extra
        .insert("timeout".into(), toml::Value::String("30s".into()));
    config.webhooks.push(hang);
    let machines = scenario::machines("hang", 4);
    let script = machine_rule("hang-rule", 1, &machines, 80.0, "1s");
    let rule_file = env.rule_file("rule.rhai", &script);
    let mut svc = linewatch_e2e::rules::RulesService::start(config, env.dir());
    svc.publish_text("rule.rhai", &script, 1).await;
    let base = base_time();
    let mut feed = Feed::new();
    machine_cycle(&mut feed, &machines, base, 0, 400);
    feed.heartbeats(&machines, step_time(base, 400) + 3000);
    env.put(&mut feed).await;
    let want = env.oracle(&feed, &[rule_file], "all").await;
    assert!(
        want.len() as i64 > 2 * MAX_PENDING,
        "oracle: {} transitions",
        want.len()
    );
    // The healthy target is not held back by the hanging one.
    env.receiver
        .wait_ids(&ids_of(&want), Duration::from_secs(30))
        .await;
    let overflow = want.len() as f64 - MAX_PENDING as f64;
    let m = svc
        .wait_metrics(
            "the hanging target's overflow dead-lettered",
            Duration::from_secs(30),
            |m| {
                let dead = m.sum(
                    "linewatch_rules_webhook_dead_letters_total",
                    &[("target", "hang"), ("reason", "outbox_full")],
                );
                // One more may be in flight (taken off the queue, not yet timed out).
                if dead >= overflow - 1.0 {
                    Ok((
                        m.sum("linewatch_rules_webhook_pending", &[("target", "hang")]),
                        m.sum("linewatch_rules_webhook_pending", &[("target", "recv")]),
                    ))
                } else {
                    Err(format!("{dead} of {overflow} dead-lettered"))
                }
            },
        )
        .await;
    let (pending, healthy_pending) = m;
    assert!(pending <= MAX_PENDING as f64, "{pending} pending");
    assert_eq!(healthy_pending, 0.0);
    let rss = svc.rss_bytes().expect("the engine's RSS");
    assert!(rss < 200 << 20, "{} MiB", rss >> 20);
    held.abort();
}
