//! The OPC UA side of a source: one session (async-opcua), its subscriptions and
//! poll timers. Reconnecting with backoff, `Fst`/`Syn`/`Wmk`/`Lst` and status are
//! the shared driver's (`sources::driver`); this file opens the session, turns
//! notifications and reads into samples, and watches the session's liveness.
//!
//! The crate's own reconnect is turned off (`session_retry_limit(0)`): a lost
//! session ends the link and the driver builds a new one, which resolves the
//! namespaces again and recreates every subscription.

use super::config::{GroupMode, Login, OpcUaSourceConfig, SecurityModeName, TagGroup};
use super::metrics::{SourceMetrics, STATE_ACTIVE, STATE_CONNECTING, STATE_DOWN};
use super::node_id::{parse_node_id, NodeAddress};
use super::plan::{self, Watchdog};
use super::value;
use crate::sources::config::CommonSourceConfig;
use crate::sources::poll::PollTimers;
use crate::sources::{Cycle, EquipmentIds, Sample, Source, SourceIdentity, SourceTag};
use futures_util::StreamExt;
use opcua::client::{
    Client, ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore,
    Session, SessionPollResult, SubscriptionActivity,
};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::types::{
    DataChangeNotification, DataValue, MessageSecurityMode, NodeId, NotificationMessage,
    ReadValueId, StatusCode, TimestampsToReturn, VariableId, Variant,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

/// Why the session is down (the text goes into the `Syn` points' `rawQuality`).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opcua client setup failed: {0}")]
    Setup(String),
    #[error("connect to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("connect to {endpoint} failed: {status}")]
    Connect { endpoint: String, status: String },
    #[error("server offers no endpoint {endpoint} with {policy} / {mode:?}")]
    NoEndpoint {
        endpoint: String,
        policy: &'static str,
        mode: SecurityModeName,
    },
    #[error("server certificate not trusted (written to {0})")]
    Untrusted(String),
    #[error("session lost: {0}")]
    Lost(String),
    #[error("watchdog: no data change nor keep-alive for {0:?}")]
    Watchdog(Duration),
    #[error("{what} failed: {status}")]
    Service { what: &'static str, status: String },
}

/// Status codes that mean the session or its channel is gone, not one node.
pub fn loses_link(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::BadTimeout
            | StatusCode::BadConnectionClosed
            | StatusCode::BadNotConnected
            | StatusCode::BadSecureChannelClosed
            | StatusCode::BadSecureChannelIdInvalid
            | StatusCode::BadSessionClosed
            | StatusCode::BadSessionIdInvalid
            | StatusCode::BadSessionNotActivated
            | StatusCode::BadCommunicationError
            | StatusCode::BadServerNotConnected
            | StatusCode::BadShutdown
            | StatusCode::BadServerHalted
            | StatusCode::BadTooManySessions
    )
}

/// One tag, resolved for reading.
#[derive(Debug)]
struct TagInfo {
    address: NodeAddress,
    /// Element of an array value.
    index: Option<u32>,
    /// The deadband asked of the server (subscribed groups).
    deadband: super::config::Deadband,
}

#[derive(Debug)]
struct GroupInfo {
    name: String,
    mode: GroupMode,
    publishing_interval: Duration,
    sampling: Duration,
    queue_size: u32,
    keep_alive_count: u32,
    max_items: usize,
    interval: Duration,
    tags: Vec<usize>,
}

impl GroupInfo {
    fn of(g: &TagGroup, tags: Vec<usize>) -> GroupInfo {
        GroupInfo {
            name: g.name.clone(),
            mode: g.mode,
            publishing_interval: g.publishing_interval,
            sampling: g.sampling(),
            queue_size: g.queue_size,
            keep_alive_count: g.keep_alive_count.max(1),
            max_items: g.max_items_per_subscription,
            interval: g.interval,
            tags,
        }
    }
}

/// An OPC UA source, built once from its configuration.
pub struct OpcUaSource {
    identity: SourceIdentity,
    cfg: Settings,
    tags: Vec<TagInfo>,
    groups: Vec<GroupInfo>,
    metrics: SourceMetrics,
    /// Why each rejected tag was rejected: logged at warn when new or changed.
    rejected: HashMap<usize, String>,
    /// The last non-good status of each tag's values (`None`: good), to log changes once.
    last_status: Vec<Option<String>>,
    thumbprint_logged: bool,
}

/// The settings that live on after the configuration is dropped.
struct Settings {
    endpoint: String,
    policy: super::config::SecurityPolicyName,
    mode: SecurityModeName,
    login: Login,
    pki_dir: PathBuf,
    certificate: PathBuf,
    private_key: PathBuf,
    application_uri: String,
    trust_unknown: bool,
    timeout: Duration,
    watchdog: Option<Duration>,
}

/// What the session's event task reports.
#[derive(Debug)]
enum Event {
    /// One notification message's data changes: (client handle, value).
    Data(Vec<(u32, DataValue)>),
    /// A publish response (with or without data): the server is alive.
    Alive,
    Lost(String),
}

/// An open session: its event task, notifications, poll timers, watchdog.
pub struct OpcUaLink {
    session: Arc<Session>,
    events: mpsc::UnboundedReceiver<Event>,
    _task: AbortOnDrop,
    /// Polled groups: the group's index and its resolved (tag, node) pairs.
    polls: PollTimers<(usize, Vec<(usize, NodeId)>)>,
    /// Bad samples for the nodes rejected while connecting, sent as the first cycle.
    pending: Vec<(usize, Sample)>,
    watchdog: Option<Watchdog>,
    metrics_tick: Interval,
    max_nodes_per_read: usize,
}

/// The session's event task ends with the link, however the link ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`Source::next_cycle`] found due.
#[derive(Debug)]
pub enum Due {
    Pending,
    Data(Vec<(u32, DataValue)>),
    /// A poll timer ticked: its position in the link's timers.
    Poll(usize),
    Lost(String),
    Watchdog,
}

impl OpcUaSource {
    pub fn new(
        cfg: OpcUaSourceConfig,
        common: &CommonSourceConfig,
        metrics: SourceMetrics,
    ) -> OpcUaSource {
        let mut tags = Vec::with_capacity(cfg.tag_count());
        let mut source_tags = Vec::with_capacity(cfg.tag_count());
        let mut groups = Vec::with_capacity(cfg.groups.len());
        let mut equipments = EquipmentIds::default();
        for g in &cfg.groups {
            let mut members = Vec::with_capacity(g.tags.len());
            for t in &g.tags {
                let equipment = equipments.get(t.equipment(common.equipment_id.as_deref()));
                // Validation refused unparsable ids; a default keeps the index stable.
                let address = parse_node_id(&t.node_id).unwrap_or(NodeAddress {
                    namespace: super::node_id::Namespace::Index(0),
                    ident: super::node_id::Ident::Numeric(0),
                });
                members.push(tags.len());
                tags.push(TagInfo {
                    address,
                    index: t.index,
                    deadband: t.deadband(g),
                });
                source_tags
                    .push(SourceTag::new(t.name.as_str(), equipment).with_map(t.map.clone()));
            }
            groups.push(GroupInfo::of(g, members));
        }
        let cycle_period = cfg
            .groups
            .iter()
            .map(TagGroup::cycle_period)
            .max()
            .unwrap_or_default();
        let mut warnings = crate::config::Problems::default();
        cfg.warnings(&format!("source {}", common.id), &mut warnings);
        for w in warnings.iter() {
            warn!(source = %common.id, "{w}");
        }
        info!(
            source = %common.id,
            endpoint = %cfg.endpoint,
            security_policy = ?cfg.security_policy,
            security_mode = ?cfg.security_mode,
            groups = groups.len(),
            tags = tags.len(),
            "opcua source configured"
        );
        let n = tags.len();
        OpcUaSource {
            identity: SourceIdentity {
                id: Arc::from(common.id.as_str()),
                kind: "opcua",
                tags: source_tags,
                cycle_period,
            },
            cfg: Settings {
                watchdog: cfg.watchdog_bound(common.timeout),
                certificate: cfg.certificate_path(),
                private_key: cfg.private_key_path(),
                endpoint: cfg.endpoint,
                policy: cfg.security_policy,
                mode: cfg.security_mode,
                login: cfg.login,
                pki_dir: cfg.pki_dir,
                application_uri: cfg.application_uri,
                trust_unknown: cfg.trust_unknown_server_certificates,
                timeout: common.timeout,
            },
            tags,
            groups,
            metrics,
            rejected: HashMap::new(),
            last_status: vec![None; n],
            thumbprint_logged: false,
        }
    }

    fn client(&mut self) -> Result<Client, LinkError> {
        let s = &self.cfg;
        let client = ClientBuilder::new()
            .application_name("linewatch-agent")
            .application_uri(&s.application_uri)
            .product_uri("urn:linewatch:agent")
            .pki_dir(&s.pki_dir)
            .certificate_path(&s.certificate)
            .private_key_path(&s.private_key)
            .create_sample_keypair(true)
            .trust_server_certs(s.trust_unknown)
            .verify_server_certs(true)
            .session_retry_limit(0)
            .request_timeout(s.timeout)
            // Longer than the watchdog: a hung server trips the watchdog, not a publish error.
            .publish_timeout(s.watchdog.map_or(s.timeout, |w| w + s.timeout))
            // Liveness is the watchdog's (publish responses), not keep-alive reads.
            .max_failed_keep_alive_count(0)
            .session_name(format!("linewatch-agent {}", self.identity.id))
            .client()
            .map_err(|e| LinkError::Setup(e.join("; ")))?;
        if !self.thumbprint_logged {
            self.thumbprint_logged = true;
            match CertificateStore::read_cert(&s.certificate) {
                Ok(cert) => info!(
                    source = %self.identity.id,
                    certificate = %s.certificate.display(),
                    thumbprint = %cert.thumbprint().as_hex_string(),
                    "opcua client certificate (a server must trust it for secured endpoints)"
                ),
                Err(e) => {
                    warn!(source = %self.identity.id, error = %e, "opcua client certificate unreadable")
                }
            }
            if s.trust_unknown {
                warn!(source = %self.identity.id, "trust_unknown_server_certificates = true: an unknown server certificate will be trusted on first use");
            }
        }
        Ok(client)
    }

    fn identity_token(&self) -> Result<IdentityToken, LinkError> {
        match &self.cfg.login {
            Login::Anonymous => Ok(IdentityToken::Anonymous),
            Login::Username {
                username,
                password_env,
                password_file,
                ..
            } => {
                let password = match (password_env, password_file) {
                    (Some(var), _) => std::env::var(var).map_err(|_| {
                        LinkError::Setup(format!(
                            "environment variable {var} (login.password_env) is not set"
                        ))
                    })?,
                    (None, Some(f)) => std::fs::read_to_string(f)
                        .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                        .map_err(|e| {
                            LinkError::Setup(format!(
                                "cannot read {} (login.password_file): {e}",
                                f.display()
                            ))
                        })?,
                    (None, None) => return Err(LinkError::Setup("no password source".to_owned())),
                };
                Ok(IdentityToken::new_user_name(username.clone(), password))
            }
            Login::Certificate {
                certificate,
                private_key,
            } => IdentityToken::new_x509_path(certificate, private_key)
                .map_err(|e| LinkError::Setup(format!("user certificate: {e}"))),
        }
    }

    /// Log a rejected node once (again only if its reason changed) and queue its Bad sample.
    fn reject(&mut self, tag: usize, why: String, pending: &mut Vec<(usize, Sample)>) {
        let name = &self.identity.tags[tag].tag;
        let node = self.tags[tag].address.to_string();
        if self.rejected.get(&tag) != Some(&why) {
            warn!(source = %self.identity.id, tag = %name, node = %node, reason = %why, "opcua node rejected: it reads Bad and is retried at the next reconnect");
        } else {
            debug!(source = %self.identity.id, tag = %name, node = %node, reason = %why, "opcua node still rejected");
        }
        self.rejected.insert(tag, why.clone());
        pending.push((tag, Sample::bad(why)));
    }

    /// A node rejected in an earlier session works now: say so once.
    fn accepted_again(&mut self, tag: usize) {
        if self.rejected.remove(&tag).is_some() {
            info!(source = %self.identity.id, tag = %self.identity.tags[tag].tag, "opcua node accepted again");
        }
    }

    async fn open(&mut self) -> Result<OpcUaLink, LinkError> {
        let endpoint_url = self.cfg.endpoint.clone();
        prune_trusted_from_rejected(&self.cfg.pki_dir);
        let client = self.client()?;
        let token = self.identity_token()?;
        let timeout = self.cfg.timeout;
        let connect_err = |status: String| LinkError::Connect {
            endpoint: endpoint_url.clone(),
            status,
        };
        let endpoints = tokio::time::timeout(
            timeout,
            client.get_server_endpoints_from_url(endpoint_url.as_str()),
        )
        .await
        .map_err(|_| LinkError::ConnectTimeout {
            endpoint: endpoint_url.clone(),
            timeout,
        })?
        .map_err(|e| connect_err(e.to_string()))?;
        let policy = SecurityPolicy::from_str(self.cfg.policy.crate_name())
            .unwrap_or(SecurityPolicy::Unknown);
        let mode = match self.cfg.mode {
            SecurityModeName::None => MessageSecurityMode::None,
            SecurityModeName::Sign => MessageSecurityMode::Sign,
            SecurityModeName::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        };
        let Some(server_endpoint) =
            Client::find_matching_endpoint(&endpoints, &endpoint_url, policy, mode)
        else {
            return Err(LinkError::NoEndpoint {
                endpoint: endpoint_url,
                policy: self.cfg.policy.crate_name(),
                mode: self.cfg.mode,
            });
        };
        // Where the crate writes the server's certificate if it is not trusted.
        let rejected_file = X509::from_byte_string(&server_endpoint.server_certificate)
            .ok()
            .map(|c| CertificateStore::cert_file_name(&c));
        let (session, event_loop) = client
            .session_builder()
            .with_endpoints(endpoints)
            .connect_to_matching_endpoint(server_endpoint)
            .map_err(|e| connect_err(e.to_string()))?
            .user_identity_token(token)
            .build(Arc::clone(client.certificate_store()))
            .map_err(|e| connect_err(e.to_string()))?;
        self.metrics.sessions.inc();
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = AbortOnDrop(tokio::spawn(run_events(event_loop, tx.clone())));
        // Wait for the session to be activated (or to fail), within the timeout.
        let up = tokio::time::timeout(timeout, async {
            tokio::select! {
                ok = session.wait_for_connection() => if ok { Ok(()) } else { Err("session closed".to_owned()) },
                ev = wait_lost(&mut events) => Err(ev),
            }
        })
        .await
        .map_err(|_| LinkError::ConnectTimeout {
            endpoint: endpoint_url.clone(),
            timeout,
        })?;
        if let Err(why) = up {
            if why.contains("BadCertificateUntrusted") || why.contains("BadSecurityChecksFailed") {
                let trusted = self.cfg.pki_dir.join("trusted");
                let path = self.cfg.pki_dir.join("rejected").join(
                    rejected_file
                        .as_deref()
                        .unwrap_or("<server certificate>.der"),
                );
                warn!(
                    source = %self.identity.id,
                    endpoint = %endpoint_url,
                    certificate = %path.display(),
                    "opcua server certificate rejected: to trust it, copy {} into {}/ (the next connect uses it)",
                    path.display(),
                    trusted.display()
                );
                return Err(LinkError::Untrusted(path.display().to_string()));
            }
            return Err(connect_err(why));
        }
        self.setup(session, events, tx, task).await
    }

    /// Resolve namespaces, create subscriptions and monitored items, start poll timers.
    async fn setup(
        &mut self,
        session: Arc<Session>,
        events: mpsc::UnboundedReceiver<Event>,
        tx: mpsc::UnboundedSender<Event>,
        task: AbortOnDrop,
    ) -> Result<OpcUaLink, LinkError> {
        let namespaces = read_namespaces(&session).await?;
        let (per_call, per_read) = read_limits(&session).await;
        let mut pending = Vec::new();
        let resolutions: Vec<_> = self
            .tags
            .iter()
            .map(|t| t.address.resolve(&namespaces))
            .collect();
        let mut resolved: Vec<Option<NodeId>> = Vec::with_capacity(resolutions.len());
        for (i, r) in resolutions.into_iter().enumerate() {
            match r {
                Ok(n) => resolved.push(Some(n)),
                Err(e) => {
                    self.reject(i, format!("BadNodeIdUnknown: {e}"), &mut pending);
                    resolved.push(None);
                }
            }
        }
        let mut items_ok = 0usize;
        let mut subscriptions = 0usize;
        let mut polls = Vec::new();
        let group_count = self.groups.len();
        for gi in 0..group_count {
            let members: Vec<(usize, NodeId)> = self.groups[gi]
                .tags
                .iter()
                .filter_map(|&t| resolved[t].clone().map(|n| (t, n)))
                .collect();
            match self.groups[gi].mode {
                GroupMode::Poll => {
                    for (t, _) in &members {
                        self.accepted_again(*t);
                    }
                    polls.push((self.groups[gi].interval, (gi, members)));
                }
                GroupMode::Subscription => {
                    let (subs, items) = self
                        .subscribe(&session, gi, members, per_call, &tx, &mut pending)
                        .await?;
                    subscriptions += subs;
                    items_ok += items;
                }
            }
        }
        let rejected_now = pending.len();
        self.metrics.monitored_items.set(items_ok as i64);
        self.metrics.rejected_nodes.set(rejected_now as i64);
        self.metrics.session_state.set(STATE_ACTIVE);
        info!(
            source = %self.identity.id,
            endpoint = %self.cfg.endpoint,
            namespaces = namespaces.len(),
            monitored_items = items_ok,
            rejected = rejected_now,
            "opcua session active"
        );
        let now = Instant::now();
        let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
        metrics_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Ok(OpcUaLink {
            session,
            events,
            _task: task,
            polls: PollTimers::new(polls),
            pending,
            // Without a subscription there is nothing to keep alive (polls time out instead).
            watchdog: self
                .cfg
                .watchdog
                .filter(|_| subscriptions > 0)
                .map(|b| Watchdog::new(b, now)),
            metrics_tick,
            max_nodes_per_read: per_read,
        })
    }

    /// Create the group's subscriptions and monitored items; returns how many
    /// subscriptions were created and how many items the server accepted. Items a subscription has no room for
    /// (`BadTooManyMonitoredItems`) move to a new subscription.
    async fn subscribe(
        &mut self,
        session: &Arc<Session>,
        gi: usize,
        members: Vec<(usize, NodeId)>,
        per_call: usize,
        tx: &mpsc::UnboundedSender<Event>,
        pending: &mut Vec<(usize, Sample)>,
    ) -> Result<(usize, usize), LinkError> {
        let g = &self.groups[gi];
        let (publishing, keep_alive, sampling, queue) = (
            g.publishing_interval,
            g.keep_alive_count,
            g.sampling,
            g.queue_size,
        );
        let mut queue_of_runs = plan::split(members, g.max_items);
        let mut accepted = 0usize;
        let mut subscriptions = 0usize;
        while let Some(run) = queue_of_runs.pop() {
            // A bound on retries: never more subscriptions than items.
            subscriptions += 1;
            let sub = session
                .create_subscription(
                    publishing,
                    // Lifetime: the server drops the subscription after this many silent intervals.
                    keep_alive.saturating_mul(10),
                    keep_alive,
                    0,
                    0,
                    true,
                    Notifications { tx: tx.clone() },
                )
                .await
                .map_err(|e| service("CreateSubscription", e))?;
            let mut spill = Vec::new();
            for chunk in plan::split(run, per_call) {
                let requests = chunk
                    .iter()
                    .map(|(t, n)| {
                        plan::monitored_item(n.clone(), *t, sampling, queue, self.tags[*t].deadband)
                    })
                    .collect();
                let results = session
                    .create_monitored_items(sub, TimestampsToReturn::Both, requests)
                    .await
                    .map_err(|e| service("CreateMonitoredItems", e))?;
                for ((t, n), r) in chunk.into_iter().zip(results) {
                    let code = r.result.status_code;
                    if code.is_good() {
                        accepted += 1;
                        self.accepted_again(t);
                    } else if code == StatusCode::BadTooManyMonitoredItems {
                        spill.push((t, n));
                    } else {
                        let why = value::raw_quality(code).unwrap_or_default();
                        self.reject(t, why, pending);
                    }
                }
            }
            if !spill.is_empty() {
                if spill.len() == self.groups[gi].tags.len()
                    || subscriptions > self.groups[gi].tags.len()
                {
                    for (t, _) in spill {
                        self.reject(t, "0x80DB0000 BadTooManyMonitoredItems".into(), pending);
                    }
                } else {
                    info!(source = %self.identity.id, group = %self.groups[gi].name, items = spill.len(), "opcua server limits items per subscription: moving the rest to another subscription");
                    queue_of_runs.push(spill);
                }
            }
        }
        debug!(source = %self.identity.id, group = %self.groups[gi].name, subscriptions, accepted, "opcua group subscribed");
        Ok((subscriptions, accepted))
    }

    /// One notification's values as samples.
    fn data(&mut self, batch: Vec<(u32, DataValue)>, out: &mut Cycle<'_>) {
        self.metrics.data_changes.inc_by(batch.len() as u64);
        for (handle, dv) in batch {
            let Some(t) = plan::tag_of_handle(handle).filter(|t| *t < self.tags.len()) else {
                debug!(source = %self.identity.id, handle, "notification for an unknown client handle");
                continue;
            };
            let s = value::sample(&dv, self.tags[t].index);
            self.note_status(t, &s);
            out.push(t, s);
        }
    }

    /// Log a tag going Bad/Uncertain (or back) once per change, not per value.
    fn note_status(&mut self, t: usize, s: &Sample) {
        let now = match s.quality {
            linewatch_schemas::Quality::Ok => None,
            _ => Some(s.raw_quality.clone().unwrap_or_default()),
        };
        if self.last_status[t] == now {
            return;
        }
        let tag = &self.identity.tags[t].tag;
        match &now {
            Some(status) => {
                warn!(source = %self.identity.id, tag = %tag, quality = ?s.quality, status = %status, "opcua value not good")
            }
            None => info!(source = %self.identity.id, tag = %tag, "opcua value good again"),
        }
        self.last_status[t] = now;
    }

    /// Read the polled group behind timer `poll`.
    async fn poll(
        &mut self,
        link: &mut OpcUaLink,
        poll: usize,
        out: &mut Cycle<'_>,
    ) -> Result<(), LinkError> {
        let Some((gi, members)) = link.polls.get(poll).cloned() else {
            return Ok(());
        };
        for chunk in plan::split(members, link.max_nodes_per_read) {
            if out.stopping() {
                return Ok(());
            }
            let ids: Vec<ReadValueId> = chunk.iter().map(|(_, n)| n.clone().into()).collect();
            match link.session.read(&ids, TimestampsToReturn::Both, 0.0).await {
                Ok(values) => {
                    for ((t, _), dv) in chunk.iter().zip(values) {
                        let s = value::sample(&dv, self.tags[*t].index);
                        self.note_status(*t, &s);
                        out.push(*t, s);
                    }
                }
                Err(e) if loses_link(e.status()) => {
                    return Err(service("Read", e));
                }
                Err(e) => {
                    out.count_error();
                    let why = value::raw_quality(e.status()).unwrap_or_else(|| e.to_string());
                    warn!(source = %self.identity.id, group = %self.groups[gi].name, error = %e, "opcua read failed");
                    for (t, _) in &chunk {
                        out.push(*t, Sample::bad(why.clone()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn service(what: &'static str, e: opcua::types::Error) -> LinkError {
    LinkError::Service {
        what,
        status: e.to_string(),
    }
}

/// The server's namespace array (index → URI), read at every connect.
async fn read_namespaces(session: &Session) -> Result<Vec<String>, LinkError> {
    let node: NodeId = VariableId::Server_NamespaceArray.into();
    let values = session
        .read(&[ReadValueId::from(node)], TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| service("reading the namespace array", e))?;
    match values.first().and_then(|v| v.value.as_ref()) {
        Some(Variant::Array(a)) => Ok(a
            .values
            .iter()
            .map(|v| match v {
                Variant::String(s) => s.as_ref().to_owned(),
                _ => String::new(),
            })
            .collect()),
        other => Err(LinkError::Service {
            what: "reading the namespace array",
            status: format!("unexpected value {other:?}"),
        }),
    }
}

/// The server's MaxMonitoredItemsPerCall and MaxNodesPerRead, capped by ours
/// (0 or unreadable: no server limit).
async fn read_limits(session: &Session) -> (usize, usize) {
    let ids: Vec<ReadValueId> = [
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ]
    .into_iter()
    .map(|v| ReadValueId::from(NodeId::from(v)))
    .collect();
    let limit = |v: Option<&DataValue>| match v.and_then(|d| d.value.as_ref()) {
        Some(Variant::UInt32(n)) => *n,
        _ => 0,
    };
    match session.read(&ids, TimestampsToReturn::Neither, 0.0).await {
        Ok(v) => (
            plan::effective_limit(limit(v.first()), 1000),
            plan::effective_limit(limit(v.get(1)), 1000),
        ),
        Err(_) => (1000, 1000),
    }
}

/// Drive the crate's session event loop; report liveness and the end of the
/// session. It stops at the first loss: reconnecting is the driver's.
async fn run_events(
    event_loop: opcua::client::SessionEventLoop<impl opcua::client::transport::Connector + 'static>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let stream = event_loop.enter();
    futures_util::pin_mut!(stream);
    let why = loop {
        match stream.next().await {
            Some(Ok(SessionPollResult::Subscription(SubscriptionActivity::Publish))) => {
                let _ = tx.send(Event::Alive);
            }
            Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                break format!("connection lost: {code}")
            }
            Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                break format!("connect failed: {code}")
            }
            Some(Ok(_)) => {}
            Some(Err(code)) => break code.to_string(),
            None => break "session closed".to_owned(),
        }
    };
    let _ = tx.send(Event::Lost(why));
}

/// Skip liveness events until the session ends; its reason.
async fn wait_lost(events: &mut mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        match events.recv().await {
            Some(Event::Lost(why)) => return why,
            Some(_) => {}
            None => return "session event loop ended".to_owned(),
        }
    }
}

/// A certificate copied into `trusted/` while an older copy sits in `rejected/`
/// would stay refused (the crate checks `rejected/` first): the trusted copy wins.
fn prune_trusted_from_rejected(pki: &Path) {
    let Ok(trusted) = std::fs::read_dir(pki.join("trusted")) else {
        return;
    };
    for entry in trusted.flatten() {
        let stale = pki.join("rejected").join(entry.file_name());
        if stale.exists() {
            match std::fs::remove_file(&stale) {
                Ok(()) => {
                    info!(certificate = %stale.display(), "opcua server certificate now trusted: removed its rejected copy")
                }
                Err(e) => {
                    warn!(certificate = %stale.display(), error = %e, "cannot remove the rejected copy of a trusted certificate")
                }
            }
        }
    }
}

/// A subscription's notifications, forwarded whole to the source's channel
/// (one message per publish response: few, larger messages).
struct Notifications {
    tx: mpsc::UnboundedSender<Event>,
}

impl OnSubscriptionNotificationCore for Notifications {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let Some(data) = notification.notification_data else {
            return;
        };
        let mut batch = Vec::new();
        for obj in data {
            if let Some(dc) = obj.into_inner_as::<DataChangeNotification>() {
                for n in dc.monitored_items.into_iter().flatten() {
                    batch.push((n.client_handle, n.value));
                }
            }
        }
        if !batch.is_empty() {
            let _ = self.tx.send(Event::Data(batch));
        }
    }
}

impl Source for OpcUaSource {
    type Link = OpcUaLink;
    type Due = Due;
    type Error = LinkError;

    fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    async fn connect(&mut self) -> Result<OpcUaLink, LinkError> {
        self.metrics.session_state.set(STATE_CONNECTING);
        let r = self.open().await;
        if r.is_err() {
            self.metrics.session_state.set(STATE_DOWN);
            self.metrics.monitored_items.set(0);
        }
        r
    }

    async fn next_cycle(&mut self, link: &mut OpcUaLink) -> Due {
        if !link.pending.is_empty() {
            return Due::Pending;
        }
        loop {
            let deadline = link.watchdog.map(|w| w.deadline());
            tokio::select! {
                ev = link.events.recv() => match ev {
                    Some(Event::Data(batch)) => {
                        if let Some(w) = &mut link.watchdog { w.alive(Instant::now()); }
                        return Due::Data(batch);
                    }
                    Some(Event::Alive) => {
                        if let Some(w) = &mut link.watchdog { w.alive(Instant::now()); }
                    }
                    Some(Event::Lost(why)) => return Due::Lost(why),
                    None => return Due::Lost("session event loop ended".to_owned()),
                },
                p = link.polls.tick() => return Due::Poll(p),
                _ = sleep_until_opt(deadline) => return Due::Watchdog,
                _ = link.metrics_tick.tick() => {
                    if let Some(w) = &link.watchdog {
                        self.metrics.keep_alive_age_seconds.set(w.age(Instant::now()).as_secs_f64());
                    }
                }
            }
        }
    }

    async fn read(
        &mut self,
        link: &mut OpcUaLink,
        due: Due,
        out: &mut Cycle<'_>,
    ) -> Result<(), LinkError> {
        match due {
            Due::Pending => {
                for (t, s) in link.pending.drain(..) {
                    out.count_error();
                    out.push(t, s);
                }
                Ok(())
            }
            Due::Data(batch) => {
                self.data(batch, out);
                Ok(())
            }
            Due::Poll(g) => self.poll(link, g, out).await,
            Due::Lost(why) => {
                self.metrics.session_state.set(STATE_DOWN);
                Err(LinkError::Lost(why))
            }
            Due::Watchdog => {
                let bound = link.watchdog.map(|w| w.bound()).unwrap_or_default();
                self.metrics.watchdog_trips.inc();
                self.metrics.session_state.set(STATE_DOWN);
                warn!(source = %self.identity.id, bound = ?bound, "opcua watchdog: no data change nor keep-alive in time, rebuilding the session");
                Err(LinkError::Watchdog(bound))
            }
        }
    }

    async fn close(&mut self, link: OpcUaLink) {
        self.metrics.session_state.set(STATE_DOWN);
        self.metrics.monitored_items.set(0);
        // Bounded by the driver's timeout; the event task is aborted when `link` drops.
        let _ = link.session.disconnect().await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_loss_is_told_from_a_node_error() {
        assert!(loses_link(StatusCode::BadTimeout));
        assert!(loses_link(StatusCode::BadSessionIdInvalid));
        assert!(!loses_link(StatusCode::BadNodeIdUnknown));
        assert!(!loses_link(StatusCode::BadUserAccessDenied));
    }

    #[test]
    fn a_trusted_certificate_drops_its_rejected_copy() -> std::io::Result<()> {
        let pki = tempfile::tempdir()?;
        for d in ["trusted", "rejected"] {
            std::fs::create_dir_all(pki.path().join(d))?;
        }
        std::fs::write(pki.path().join("rejected/srv [AB].der"), b"x")?;
        std::fs::write(pki.path().join("rejected/other [CD].der"), b"y")?;
        prune_trusted_from_rejected(pki.path());
        assert!(
            pki.path().join("rejected/srv [AB].der").exists(),
            "not trusted yet"
        );
        std::fs::copy(
            pki.path().join("rejected/srv [AB].der"),
            pki.path().join("trusted/srv [AB].der"),
        )?;
        prune_trusted_from_rejected(pki.path());
        assert!(!pki.path().join("rejected/srv [AB].der").exists());
        assert!(pki.path().join("rejected/other [CD].der").exists());
        Ok(())
    }
}
