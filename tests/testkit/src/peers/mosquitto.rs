//! The MQTT broker (Mosquitto) the rule engine takes its rules from, and a small client
//! to read (retained) status messages and clean up retained topics.
//!
//! [`Broker::start`] reuses the broker already running on 127.0.0.1:1883 when there is
//! one, else starts a private [`Mosquitto`] on a free port (`allow_anonymous true`).
//! Tests share the broker, so each uses its own topic prefix ([`unique_prefix`]) and
//! holds a [`RetainedCleanup`] that clears every retained message under it when dropped,
//! even when the test fails.

use crate::ports;
use crate::process::{ManagedProcess, ProcessSpec, Ready};
use crate::wait;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_PORT: u16 = 1883;

/// Options of a private [`Mosquitto`].
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Port to listen on (127.0.0.1); `None` picks a free one.
    pub port: Option<u16>,
    /// More lines for the listener (TLS files, ACLs...), appended to the config.
    pub extra_conf: String,
}

/// A `mosquitto` of our own on 127.0.0.1 (killed when dropped), no persistence.
pub struct Mosquitto {
    port: u16,
    process: ManagedProcess,
}

/// The mosquitto binary (Debian installs it in /usr/sbin, often not on a user's PATH).
fn mosquitto_binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("mosquitto")
    }
}

impl Mosquitto {
    /// Writes `dir/mosquitto-PORT.conf` and starts the broker (log `dir/mosquitto-PORT.log`).
    #[track_caller]
    pub fn start(opts: MosquittoOptions, dir: &Path) -> Mosquitto {
        let port = opts.port.unwrap_or_else(ports::free_port);
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n{}\n",
            opts.extra_conf
        );
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let process = ProcessSpec::new(
            "mosquitto",
            mosquitto_binary(),
            &dir.join(format!("mosquitto-{port}.log")),
        )
        .arg("-c")
        .arg(&conf)
        .ready(Ready::Listening(port), Duration::from_secs(10))
        .start();
        Mosquitto { port, process }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the broker is gone at once (clients see the connection drop).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and config (a fresh broker: no sessions kept).
    #[track_caller]
    pub fn start_again(&mut self) {
        self.process.start_again();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// A broker on 127.0.0.1: the machine's, or one of ours (killed when dropped).
pub struct Broker {
    port: u16,
    private: Option<Mosquitto>,
}

impl Broker {
    /// The broker on 127.0.0.1:1883 if it accepts connections, else a fresh
    /// [`Mosquitto`] (config and log in `dir`).
    #[track_caller]
    pub fn start(dir: &Path) -> Broker {
        if ports::is_listening(DEFAULT_PORT) {
            return Broker {
                port: DEFAULT_PORT,
                private: None,
            };
        }
        let m = Mosquitto::start(MosquittoOptions::default(), dir);
        Broker {
            port: m.port(),
            private: Some(m),
        }
    }

    /// The port of a broker shared by the whole test process: 127.0.0.1:1883 when it
    /// answers, else one private [`Mosquitto`] started on first use. It is started from
    /// a thread that lives as long as the process (the kernel kills a child when the
    /// thread that spawned it exits, and each test runs on a thread of its own).
    #[track_caller]
    pub fn shared_port() -> u16 {
        static PORT: std::sync::OnceLock<Result<u16, String>> = std::sync::OnceLock::new();
        if ports::is_listening(DEFAULT_PORT) {
            return DEFAULT_PORT;
        }
        let port = PORT.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("testkit-mosquitto".into())
                .spawn(move || {
                    let started = std::panic::catch_unwind(|| {
                        let dir = tempfile::Builder::new()
                            .prefix("linewatch-testkit-mosquitto-")
                            .tempdir()
                            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
                        let m = Mosquitto::start(MosquittoOptions::default(), dir.path());
                        (dir, m)
                    });
                    match started {
                        Ok((_dir, m)) => {
                            let _ = tx.send(Ok(m.port()));
                            loop {
                                std::thread::park();
                            }
                        }
                        Err(_) => {
                            let _ = tx.send(Err("starting the shared mosquitto failed".into()));
                        }
                    }
                });
            match spawned {
                Ok(_) => rx
                    .recv()
                    .unwrap_or_else(|_| Err("the shared mosquitto thread ended".into())),
                Err(e) => Err(format!("cannot spawn the shared mosquitto thread: {e}")),
            }
        });
        match port {
            Ok(p) => *p,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the broker is ours (started by the kit).
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    fn connect(&self, what: &str) -> (AsyncClient, rumqttc::EventLoop) {
        connect(self.port, what)
    }

    /// A guard clearing every retained message under `prefix/` when dropped.
    pub fn retained_cleanup(&self, prefix: &str) -> RetainedCleanup {
        RetainedCleanup::new(self.port, prefix)
    }

    /// The first message on `topic` (a retained one arrives at once) that `accept`
    /// takes, within `timeout`: `Err` with what was seen otherwise.
    pub async fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        mut accept: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, String> {
        let (client, mut ev) = self.connect("read");
        let deadline = Instant::now() + wait::scaled(timeout);
        let mut seen: Vec<String> = Vec::new();
        let mut subscribed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = client.disconnect().await;
                return Err(format!(
                    "no accepted message on {topic} within {timeout:?}; seen: {seen:?}"
                ));
            }
            match tokio::time::timeout(left, ev.poll()).await {
                Err(_) => continue,
                Ok(Err(e)) => {
                    seen.push(format!("<connection error: {e}>"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) if !subscribed => {
                    client
                        .subscribe(topic, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| format!("subscribe {topic}: {e}"))?;
                    subscribed = true;
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == topic => {
                    if accept(&p.payload) {
                        let _ = client.disconnect().await;
                        return Ok(p.payload.to_vec());
                    }
                    seen.push(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The JSON message on `topic` for which `accept` holds (e.g. a rule's status with a
    /// given version); panics after `timeout` with every message seen.
    #[track_caller]
    pub fn wait_json<'a>(
        &'a self,
        topic: &'a str,
        timeout: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool + 'a,
    ) -> impl std::future::Future<Output = serde_json::Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let got = self
                .read_until(topic, timeout, |b| {
                    serde_json::from_slice::<serde_json::Value>(b)
                        .ok()
                        .is_some_and(|v| accept(&v))
                })
                .await;
            match got.and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
                Ok(v) => v,
                Err(e) => panic!("waiting for a message on {topic} (at {caller}): {e}"),
            }
        }
    }

    /// Publishes `payload` retained at QoS 1 (an empty payload clears the topic) and
    /// waits for the broker's PUBACK.
    pub async fn publish_retained(&self, topic: &str, payload: &[u8]) -> Result<(), String> {
        publish_retained(self.port, &[(topic.to_owned(), payload.to_vec())]).await
    }
}

fn connect(port: u16, what: &str) -> (AsyncClient, rumqttc::EventLoop) {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "lw-e2e-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(true);
    AsyncClient::new(opts, 64)
}

/// Publishes each `(topic, payload)` retained at QoS 1 on the broker at 127.0.0.1:`port`
/// and waits for every PUBACK (an empty payload clears the topic).
pub async fn publish_retained(port: u16, messages: &[(String, Vec<u8>)]) -> Result<(), String> {
    let (client, mut ev) = connect(port, "pub");
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.clone())
            .await
            .map_err(|e| format!("publish {topic}: {e}"))?;
    }
    let mut acks = 0;
    let deadline = Instant::now() + wait::scaled(Duration::from_secs(5));
    while acks < messages.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ev.poll()).await {
            Err(_) => return Err(format!("{acks} of {} PUBACKs within 5s", messages.len())),
            Ok(Err(e)) => return Err(format!("publishing retained messages: {e}")),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

/// Clears every retained message whose topic matches `filter` (e.g. `prefix/#`) on the
/// broker at 127.0.0.1:`port`; returns how many it cleared. The broker sends the
/// retained messages right after the subscription; a quiet half second ends the list.
pub async fn clear_retained(port: u16, filter: &str) -> Result<usize, String> {
    let (client, mut ev) = connect(port, "clear");
    let mut topics = std::collections::BTreeSet::new();
    let deadline = Instant::now() + wait::scaled(Duration::from_secs(10));
    let quiet = Duration::from_millis(500);
    let mut subscribed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "listing retained messages under {filter}: timed out"
            ));
        }
        let step = if subscribed { quiet.min(left) } else { left };
        match tokio::time::timeout(step, ev.poll()).await {
            Err(_) if subscribed => break,
            Err(_) => {}
            Ok(Err(e)) => return Err(format!("listing retained messages under {filter}: {e}")),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| format!("subscribe {filter}: {e}"))?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.retain && !p.payload.is_empty() => {
                topics.insert(p.topic.clone());
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    let clears: Vec<(String, Vec<u8>)> = topics.into_iter().map(|t| (t, Vec::new())).collect();
    publish_retained(port, &clears).await?;
    Ok(clears.len())
}

/// Clears every retained message under `prefix/` when dropped (see [`clear_retained`]),
/// so a test leaves nothing on the shared broker, also when it fails. Works inside and
/// outside a tokio runtime (the clearing runs on a thread of its own).
pub struct RetainedCleanup {
    port: u16,
    filter: String,
}

impl RetainedCleanup {
    pub fn new(port: u16, prefix: &str) -> RetainedCleanup {
        RetainedCleanup {
            port,
            filter: format!("{}/#", prefix.trim_end_matches('/')),
        }
    }
}

impl Drop for RetainedCleanup {
    fn drop(&mut self) {
        let (port, filter) = (self.port, self.filter.clone());
        let cleared = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?;
            rt.block_on(clear_retained(port, &filter))
        })
        .join();
        match cleared {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("clearing retained messages under {}: {e}", self.filter),
            Err(_) => eprintln!("clearing retained messages under {}: panicked", self.filter),
        }
    }
}

/// A topic prefix no other test (or earlier run) uses: `lw-e2e/<test>-<pid>-<nanos>`.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("lw-e2e/{test}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retained_message_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Broker::start(dir.path());
        let topic = format!("{}/status/r1", unique_prefix("mqtt-self"));
        b.publish_retained(&topic, br#"{"ruleId":"r1","version":2}"#)
            .await
            .expect("publish");
        let v = b
            .wait_json(&topic, Duration::from_secs(5), |v| v["version"] == 2)
            .await;
        assert_eq!(v["ruleId"], "r1");
        // A predicate nothing satisfies times out with what it saw.
        let err = b
            .read_until(&topic, Duration::from_millis(500), |_| false)
            .await
            .expect_err("nothing accepted");
        assert!(err.contains("r1"), "{err}");
        b.publish_retained(&topic, b"").await.expect("clear");
    }

    #[tokio::test]
    async fn the_cleanup_guard_clears_every_retained_topic_under_its_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Broker::start(dir.path());
        let prefix = unique_prefix("mqtt-cleanup");
        let topics: Vec<String> = ["rules/a", "status/a", "status/b/c"]
            .iter()
            .map(|t| format!("{prefix}/{t}"))
            .collect();
        {
            let _guard = b.retained_cleanup(&prefix);
            for t in &topics {
                b.publish_retained(t, b"x").await.expect("publish");
            }
        }
        for t in &topics {
            let got = b
                .read_until(t, Duration::from_millis(700), |p| !p.is_empty())
                .await;
            assert!(got.is_err(), "{t} still retained: {got:?}");
        }
    }
}
