//! The control connection: two tasks.
//!
//! * the *poller* owns rumqttc's event loop and only drives it (rumqttc's `poll` must
//!   not be cancelled mid-write, so it gets a task of its own with no other select
//!   arm): it subscribes after every CONNACK, backs off after errors, and forwards
//!   what happened;
//! * the *dispatcher* turns that into [`ControlEvent`]s, keeps the metrics, and
//!   decides when the start-up retained delivery is complete ([`InitialSync`]).
//!
//! The session is persistent (clean session off): a rule deleted while this instance
//! was disconnected leaves no retained message to find, but the broker queues the
//! delete (QoS 1) for the session and delivers it on reconnect.

use super::auth::{self, SecretKey};
use super::config::ControlConfig;
use super::message::{check_rule_id, RulePayload, RuleStatus, Topics};
use super::metrics::ControlMetrics;
use super::sync::InitialSync;
use super::{ControlError, ControlEvent};
use linewatch_runtime::shutdown::{CancellationToken, DropGuard};
use linewatch_runtime::{Backoff, BackoffPolicy, Jitter};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS, Request,
    Subscribe, SubscribeReasonCode,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// Requests of the rules connection (subscribe, disconnect).
const REQUEST_CAPACITY: usize = 64;
/// Status publishes queued on the status connection; beyond, a status is dropped
/// (counted as `result="dropped"`): publishing never waits.
const STATUS_CAPACITY: usize = 4096;
/// Events queued for the engine. Rule changes are rare; this absorbs a burst of
/// retained rules at start-up.
const EVENT_CAPACITY: usize = 1024;
/// Bound on queueing the DISCONNECTs at shutdown.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Handle on a running control connection. Cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    client: AsyncClient,
    /// A connection of its own for statuses: the rules connection may wait on the
    /// engine (back-pressure of a burst of rules) and must not hold statuses back.
    status_client: AsyncClient,
    status_key: Option<Arc<SecretKey>>,
    topics: Topics,
    metrics: ControlMetrics,
    stop: CancellationToken,
    /// The last handle dropped stops the tasks too.
    _stop_on_drop: Arc<DropGuard>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Connect to the broker and follow `{prefix}/rules/+`. Returns at once: connecting,
/// subscribing and reconnecting happen in the background and are reported as events.
/// `client_id` is used unless the config sets `client_id`. Fails only on configuration
/// (bad keys, unreadable TLS files, an unset password variable).
/// `rng` draws the reconnect jitter.
pub async fn start(
    cfg: &ControlConfig,
    client_id: String,
    metrics: ControlMetrics,
    mut rng: fastrand::Rng,
) -> Result<(ControlHandle, mpsc::Receiver<ControlEvent>), ControlError> {
    let client_id = cfg.client_id.clone().unwrap_or(client_id);
    let mut opts = cfg.mqtt_options(&client_id)?;
    opts.set_clean_session(false);
    let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
    let status_key = match &cfg.auth.status_key {
        Some(path) => {
            Some(Arc::new(auth::read_secret_key(path).map_err(|e| {
                ControlError::Config(format!("mqtt.auth.status_key: {e}"))
            })?))
        }
        None => {
            warn!("control topic: mqtt.auth.status_key is not set: status messages are unsigned, and publish/delete cannot tell them from anyone else's");
            None
        }
    };
    let mut status_opts = cfg.mqtt_options(&format!("{client_id}-status"))?;
    status_opts.set_clean_session(true);
    let (status_client, status_loop) = AsyncClient::new(status_opts, STATUS_CAPACITY);
    let topics = Topics::new(cfg.topic_prefix.clone());
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let (raw_tx, raw_rx) = mpsc::channel(64);
    let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let stop = CancellationToken::new();
    info!(%broker, %client_id, filter = %topics.rules_filter(), "control topic: connecting");

    let poller = tokio::spawn(poll_loop(
        eventloop,
        topics.rules_filter(),
        raw_tx,
        stop.clone(),
        Reconnect::new(rng.fork()),
    ));
    let status_poller = tokio::spawn(status_loop_run(
        status_loop,
        stop.clone(),
        Reconnect::new(rng.fork()),
    ));
    let dispatcher = Dispatcher {
        max_message_bytes: cfg.max_message_bytes,
        topics: topics.clone(),
        metrics: metrics.clone(),
        events: events_tx,
        sync: InitialSync::new(Instant::now(), cfg.retained_wait, cfg.retained_quiet),
        connected: None,
        broker,
    };
    let dispatcher = tokio::spawn(dispatcher.run(raw_rx));
    let handle = ControlHandle {
        client,
        status_client,
        status_key,
        topics,
        metrics,
        _stop_on_drop: Arc::new(stop.clone().drop_guard()),
        stop,
        tasks: Arc::new(Mutex::new(vec![poller, dispatcher, status_poller])),
    };
    Ok((handle, events_rx))
}

impl ControlHandle {
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Queue `status` on `{prefix}/status/{ruleId}` (retained, QoS 1), signed with
    /// the status key when there is one. Never waits: when the queue is full (the
    /// broker is away) the status is dropped, logged and counted; the rule set has
    /// changed either way.
    pub async fn publish_status(&self, status: &RuleStatus) {
        if let Err(e) = check_rule_id(&status.rule_id) {
            warn!(rule_id = %status.rule_id, error = %e, "control topic: no status published: the rule id cannot be a topic level");
            self.metrics.status("failed");
            return;
        }
        let topic = self.topics.status(&status.rule_id);
        let payload = status.encode_signed(self.status_key.as_deref());
        match self
            .status_client
            .try_publish(&topic, QoS::AtLeastOnce, true, payload)
        {
            Ok(()) => {
                debug!(%topic, status = ?status.status, version = ?status.version, "control topic: status queued");
                self.metrics.status("queued");
            }
            Err(e) => {
                warn!(%topic, error = %e, "control topic: status dropped: the status queue is full (broker away?)");
                self.metrics.status("dropped");
            }
        }
    }

    /// Disconnect cleanly (queued statuses go out first when connected) and stop both
    /// tasks; the event receiver then ends. Bounded: tasks still running after a
    /// couple of seconds are aborted.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        for client in [&self.client, &self.status_client] {
            if tokio::time::timeout(PUBLISH_TIMEOUT, client.disconnect())
                .await
                .is_err()
            {
                debug!("control topic: request queue full at shutdown; not waiting for DISCONNECT");
            }
        }
        let tasks: Vec<_> = match self.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for mut task in tasks {
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                // Typically a connection attempt to a broker that is away.
                debug!("control topic: task did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

/// What the poller saw.
#[derive(Debug)]
enum Raw {
    ConnAck,
    SubAck { refused: bool },
    Publish(Publish),
    Error { error: String, retry_in: Duration },
}

async fn poll_loop(
    mut eventloop: EventLoop,
    filter: String,
    tx: mpsc::Sender<Raw>,
    stop: CancellationToken,
    mut reconnect: Reconnect,
) {
    loop {
        let raw = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                reconnect.reset();
                // Subscribe on every connection, ahead of anything queued: a new broker
                // (or an expired session) knows nothing of us, and even with a session
                // a fresh SUBSCRIBE re-delivers the retained rules, which is harmless
                // (the engine ignores versions it already has).
                eventloop
                    .pending
                    .push_front(Request::Subscribe(Subscribe::new(
                        filter.clone(),
                        QoS::AtLeastOnce,
                    )));
                Raw::ConnAck
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => Raw::SubAck {
                refused: ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)),
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Raw::Publish(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return, // every handle dropped
            Err(e) => {
                if stop.is_cancelled() {
                    return;
                }
                let retry_in = reconnect.next_delay();
                if tx
                    .send(Raw::Error {
                        error: e.to_string(),
                        retry_in,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry_in) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
        };
        if tx.send(raw).await.is_err() {
            return; // the dispatcher ended (the engine dropped the receiver)
        }
    }
}

/// Drives the status connection: publishes go out as the broker takes them. Errors
/// are logged once per loss (the rules connection reports the broker's health).
async fn status_loop_run(
    mut eventloop: EventLoop,
    stop: CancellationToken,
    mut reconnect: Reconnect,
) {
    let mut up = true;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                reconnect.reset();
                up = true;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if stop.is_cancelled() {
                    return;
                }
                if std::mem::replace(&mut up, false) {
                    warn!(error = %e, "control topic: status connection lost; statuses wait (queue bounded)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(reconnect.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Reconnect delays: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each ±25 % so
/// that many instances do not reconnect in lock-step after a broker restart.
struct Reconnect {
    backoff: Backoff,
    rng: fastrand::Rng,
}

impl Reconnect {
    fn new(rng: fastrand::Rng) -> Self {
        Reconnect {
            backoff: Backoff::new(BackoffPolicy::new(
                BACKOFF_MIN,
                BACKOFF_MAX,
                Jitter::Proportional(0.25),
            )),
            rng,
        }
    }

    /// Connected: the next failure waits the minimum again.
    fn reset(&mut self) {
        self.backoff.reset();
    }

    fn next_delay(&mut self) -> Duration {
        self.backoff.next_delay(&mut self.rng)
    }
}

struct Dispatcher {
    max_message_bytes: usize,
    topics: Topics,
    metrics: ControlMetrics,
    events: mpsc::Sender<ControlEvent>,
    sync: InitialSync,
    /// `None` until the first connection attempt ends either way.
    connected: Option<bool>,
    broker: String,
}

impl Dispatcher {
    async fn run(mut self, mut raw_rx: mpsc::Receiver<Raw>) {
        loop {
            // Report the end of the start-up wait before anything that came after it.
            if let Some(done) = self.sync.poll(Instant::now()) {
                if done.timed_out {
                    warn!(rules = done.rules, broker = %self.broker, "control topic: retained rules not complete within retained_wait; continuing with what arrived");
                } else {
                    info!(rules = done.rules, "control topic: retained rules received");
                }
                let ev = ControlEvent::InitialSyncDone {
                    rules: done.rules,
                    timed_out: done.timed_out,
                };
                if self.events.send(ev).await.is_err() {
                    return;
                }
            }
            let deadline = self.sync.deadline();
            let raw = tokio::select! {
                raw = raw_rx.recv() => match raw {
                    Some(raw) => raw,
                    None => return,
                },
                _ = sleep_until(deadline), if deadline.is_some() => continue,
            };
            let event = self.handle(raw);
            if let Some(ev) = event {
                if self.events.send(ev).await.is_err() {
                    debug!("control topic: event receiver dropped; stopping");
                    return;
                }
            }
        }
    }

    fn handle(&mut self, raw: Raw) -> Option<ControlEvent> {
        let now = Instant::now();
        match raw {
            Raw::ConnAck => {
                self.connected = Some(true);
                self.metrics.connected.set(1);
                info!(broker = %self.broker, "control topic: connected");
                Some(ControlEvent::Connected)
            }
            Raw::SubAck { refused: false } => {
                self.sync.subscribed(now);
                info!(filter = %self.topics.rules_filter(), "control topic: subscribed");
                None
            }
            Raw::SubAck { refused: true } => {
                error!(filter = %self.topics.rules_filter(), broker = %self.broker, "control topic: the broker refused the subscription (ACL?); no rules will arrive");
                None
            }
            Raw::Error { error, retry_in } => {
                self.metrics.reconnects.inc();
                self.metrics.connected.set(0);
                self.sync.disconnected();
                let was = self.connected.replace(false);
                warn!(broker = %self.broker, %error, retry_in = ?retry_in, "control topic: MQTT connection failed; retrying");
                // One event per loss, not one per failed attempt while the broker is away.
                (was != Some(false)).then_some(ControlEvent::Disconnected { error })
            }
            Raw::Publish(p) => Some(self.rule_message(now, p)),
        }
    }

    fn rule_message(&mut self, now: Instant, p: Publish) -> ControlEvent {
        let rule_id = match self.topics.rule_id_of(&p.topic) {
            Ok(id) => id.to_string(),
            Err(error) => {
                self.metrics.malformed("topic");
                warn!(topic = %p.topic, %error, "control topic: malformed topic; message ignored");
                return ControlEvent::Malformed {
                    topic: p.topic,
                    error,
                };
            }
        };
        if p.payload.len() > self.max_message_bytes {
            // Still retained activity: the start-up wait must not end in the middle.
            self.sync.rule_message(now, &rule_id, p.retain, false);
            self.metrics.malformed("too_large");
            let error = format!(
                "payload is {} bytes, above mqtt.max_message_bytes ({}); not read",
                p.payload.len(),
                self.max_message_bytes
            );
            warn!(topic = %p.topic, %error, "control topic: oversized rule message; ignored");
            return ControlEvent::Malformed {
                topic: p.topic,
                error,
            };
        }
        match RulePayload::decode(&p.payload) {
            Ok(payload) => {
                let upsert = matches!(payload, RulePayload::Upsert(_));
                self.sync.rule_message(now, &rule_id, p.retain, upsert);
                match &payload {
                    RulePayload::Upsert(m) => {
                        self.metrics.message("rule");
                        info!(%rule_id, version = m.version, retained = p.retain, bytes = p.payload.len(), signed = m.signature.is_some(), "control topic: rule received");
                    }
                    RulePayload::Delete(d) => {
                        self.metrics.message("delete");
                        info!(%rule_id, version = ?d.version, retained = p.retain, signed = d.signature.is_some(), "control topic: delete received");
                    }
                }
                ControlEvent::Rule {
                    rule_id,
                    payload,
                    retained: p.retain,
                }
            }
            Err(error) => {
                // Still retained activity: the start-up wait must not end in the middle.
                self.sync.rule_message(now, &rule_id, p.retain, false);
                self.metrics.malformed("payload");
                warn!(topic = %p.topic, %error, "control topic: malformed rule message; ignored");
                ControlEvent::Malformed {
                    topic: p.topic,
                    error,
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(seed: u64, n: usize) -> Vec<Duration> {
        let mut r = Reconnect::new(fastrand::Rng::with_seed(seed));
        (0..n).map(|_| r.next_delay()).collect()
    }

    #[test]
    fn reconnect_delays_follow_the_seed_and_stay_within_25_percent() {
        assert_eq!(delays(7, 12), delays(7, 12));
        assert_ne!(delays(7, 12), delays(8, 12));
        let mut ceiling = BACKOFF_MIN;
        for d in delays(7, 12) {
            assert!(
                d >= ceiling.mul_f64(0.75) && d <= ceiling.mul_f64(1.25),
                "{d:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        let mut r = Reconnect::new(fastrand::Rng::with_seed(1));
        for _ in 0..5 {
            r.next_delay();
        }
        r.reset();
        assert!(r.next_delay() <= BACKOFF_MIN.mul_f64(1.25));
    }
}
