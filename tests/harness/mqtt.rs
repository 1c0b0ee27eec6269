//! The MQTT broker the rule engine takes its rules from, and a small client to read
//! (retained) status messages and clean up retained topics.
//!
//! Mosquitto already runs on 127.0.0.1:1883 on these machines; when nothing answers
//! there, a private `mosquitto` is started on a free port. Tests share the broker, so
//! each uses its own topic prefix ([`unique_prefix`]).

use crate::ports;
use crate::process::ChildGuard;
use crate::wait;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const DEFAULT_PORT: u16 = 1883;

/// A broker on 127.0.0.1: the machine's, or one of ours (killed when dropped).
pub struct Broker {
    port: u16,
    child: Option<ChildGuard>,
}

impl Broker {
    /// The broker on 127.0.0.1:1883 if it accepts connections, else a fresh
    /// `mosquitto` (config and log in `dir`).
    #[track_caller]
    pub fn start(dir: &Path) -> Broker {
        if ports::is_listening(DEFAULT_PORT) {
            return Broker {
                port: DEFAULT_PORT,
                child: None,
            };
        }
        let port = ports::free_port();
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        );
        std::fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        let mut child = ChildGuard::spawn("mosquitto", cmd, &dir.join("mosquitto.log"));
        wait::until_blocking(
            &format!("mosquitto listening on 127.0.0.1:{port}"),
            Duration::from_secs(10),
            || {
                child.assert_running();
                if ports::is_listening(port) {
                    Ok(())
                } else {
                    Err("not listening yet".into())
                }
            },
        );
        Broker {
            port,
            child: Some(child),
        }
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the broker is ours (started by the harness).
    pub fn is_private(&self) -> bool {
        self.child.is_some()
    }

    fn connect(&self, what: &str) -> (AsyncClient, rumqttc::EventLoop) {
        static N: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "lw-e2e-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut opts = MqttOptions::new(id, self.host(), self.port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(true);
        AsyncClient::new(opts, 16)
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
        let (client, mut ev) = self.connect("pub");
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
            .await
            .map_err(|e| format!("publish {topic}: {e}"))?;
        let deadline = Instant::now() + wait::scaled(Duration::from_secs(5));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, ev.poll()).await {
                Err(_) => return Err(format!("no PUBACK for {topic} within 5s")),
                Ok(Err(e)) => return Err(format!("publishing {topic}: {e}")),
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Clears the retained rule and status messages of `rule_ids` under `prefix`
    /// (the machine's broker outlives the test). Errors are only printed.
    pub async fn clear_rules(&self, prefix: &str, rule_ids: &[&str]) {
        for id in rule_ids {
            for kind in ["rules", "status"] {
                let topic = format!("{prefix}/{kind}/{id}");
                if let Err(e) = self.publish_retained(&topic, b"").await {
                    eprintln!("clearing {topic}: {e}");
                }
            }
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
}
