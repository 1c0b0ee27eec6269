//! `linewatch-rules publish` and `linewatch-rules delete`: put a rule on the control
//! topic (or take it off) and print the status an engine answers with.
//!
//! Exit codes: 0 accepted / deleted; 1 rejected, ignored or not found; 2 the script
//! (or the retained message in the way, or a key) is broken, nothing was published;
//! 3 no engine answered within `--wait`; 4 only answers not signed by the engine's
//! status key arrived (someone else answered). Connection problems are errors (`Err`).
//!
//! With `--key`, messages are signed by the author key; with the engine's public
//! status key (`--engine-key` or `mqtt.auth.status_public_key`), only statuses it
//! signed count as answers.

use crate::control::auth::{self, SecretKey, Trust};
use crate::control::config::MAX_PACKET_BYTES;
use crate::control::{
    check_rule_id, ControlConfig, DeleteMessage, RuleMessage, RuleStatus, StatusKind, Topics,
};
use anyhow::{anyhow, bail, Context};
use linewatch_rules_core::rule::{Limits, Rule, Sandbox};
use rumqttc::{
    AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// How long to look for the retained rule message (to number the next version) after
/// the broker acknowledged the subscription. The broker sends retained messages right
/// after the SUBACK, so this only matters when there is none.
const RETAINED_PROBE: Duration = Duration::from_secs(1);
/// Bound on connecting (TCP, TLS, CONNACK).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the broker is. Without `--config`, the `[mqtt]` defaults (127.0.0.1:1883,
/// prefix `linewatch`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Service config file; only its `[mqtt]` table is read. Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    /// Rules on PREFIX/rules/<ruleId>, status on PREFIX/status/<ruleId>.
    #[arg(long, value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    /// Environment variable holding the password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// The author's secret key (`keygen`): sign the message. Engines that require
    /// signed rules refuse unsigned ones.
    #[arg(long, value_name = "FILE.key")]
    pub key: Option<PathBuf>,
    /// The engine's public status key: only statuses it signed count as answers
    /// (default: `mqtt.auth.status_public_key` of `--config`).
    #[arg(long, value_name = "FILE.pub")]
    pub engine_key: Option<PathBuf>,
}

/// `keygen STEM`: a fresh key pair in `STEM.key` (mode 0600) and `STEM.pub`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Path without extension, e.g. `keys/author`; existing files are never overwritten.
    pub stem: PathBuf,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate().context("no random source for the key")?;
    let (secret, public) = auth::write_key_pair(&args.stem, &key)?;
    eprintln!(
        "wrote {} (secret, mode 0600) and {}",
        secret.display(),
        public.display()
    );
    println!("{}", key.public().to_hex());
    Ok(ExitCode::SUCCESS)
}

/// The signing key and the status verifier of a command.
struct Keys {
    author: Option<SecretKey>,
    engine: Option<Trust>,
}

fn load_keys(args: &ConnectionArgs, cfg: &ControlConfig) -> anyhow::Result<Keys> {
    let author = match &args.key {
        Some(p) => Some(auth::read_secret_key(p).context("--key")?),
        None => None,
    };
    let engine_path = args
        .engine_key
        .clone()
        .or_else(|| cfg.auth.status_public_key.clone());
    let engine = match engine_path {
        Some(p) => Some(Trust::new(
            vec![auth::read_public_key(&p).context("engine status key")?],
            false,
        )),
        None => {
            eprintln!("warning: no engine status key (--engine-key or mqtt.auth.status_public_key): any client on the broker could write the answer printed here");
            None
        }
    };
    Ok(Keys { author, engine })
}

/// `publish RULE.rhai`: compile locally, publish retained under the next version, wait
/// for an engine's status.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The rule script (.rhai).
    #[arg(value_name = "RULE.rhai")]
    pub file: PathBuf,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Publish under this version (default: the retained one + 1, or 1).
    #[arg(long)]
    pub version: Option<u64>,
    /// Publish under this rule id without compiling the script here (let the engine judge it).
    #[arg(long)]
    pub id: Option<String>,
    /// How long to wait for an engine's status.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// `delete RULE_ID`: with `--key`, a signed delete (retained, a tombstone); without,
/// clear the rule's retained message. Waits for an engine's status.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    pub rule_id: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// A signed delete removes versions up to this one (default: the retained version).
    #[arg(long)]
    pub version: Option<u64>,
    /// How long to wait for an engine's status.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let cfg = connection_config(&args.connection)?;
    let keys = match load_keys(&args.connection, &cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let rule_id = match &args.id {
        Some(id) => {
            if let Err(e) = check_rule_id(id) {
                eprintln!("--id: {e}");
                return Ok(ExitCode::from(2));
            }
            id.clone()
        }
        None => {
            let origin = args.file.display().to_string();
            match Rule::compile(&Sandbox::new(Limits::default()), &source, &origin) {
                Ok(rule) => rule.id().to_string(),
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("nothing published (use --id ID to publish anyway and let the engine judge)");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let topics = Topics::new(cfg.topic_prefix.clone());
    let rule_topic = topics.rule(&rule_id);
    let status_topic = topics.status(&rule_id);

    let mut conn = Conn::connect(&cfg).await?;
    // Status first: the engine may answer as soon as the rule is out.
    conn.subscribe(&[&rule_topic, &status_topic]).await?;
    let version = match args.version {
        Some(v) => v,
        None => match conn.retained_version(&rule_topic).await? {
            Ok(Some(v)) => match v.checked_add(1) {
                Some(next) => next,
                None => {
                    eprintln!("the retained version on {rule_topic} is {v}; there is no next one");
                    conn.close().await;
                    return Ok(ExitCode::from(2));
                }
            },
            Ok(None) => 1,
            Err(e) => {
                eprintln!("the retained message on {rule_topic} is not a rule message ({e}); pass --version N");
                conn.close().await;
                return Ok(ExitCode::from(2));
            }
        },
    };
    let payload = match &keys.author {
        Some(key) => RuleMessage::signed(&rule_id, version, source, key),
        None => RuleMessage {
            version,
            script: source,
            signature: None,
        },
    }
    .encode();
    if payload.len() > MAX_PACKET_BYTES - rule_topic.len() - 16 {
        eprintln!(
            "the rule message is {} bytes, above the {MAX_PACKET_BYTES}-byte packet limit",
            payload.len()
        );
        conn.close().await;
        return Ok(ExitCode::from(2));
    }
    conn.publish(&rule_topic, payload).await?;
    eprintln!(
        "published {rule_id} version {version} on {rule_topic}; waiting up to {} for a status",
        humantime::format_duration(args.wait)
    );

    let deadline = Instant::now() + args.wait;
    let answer = conn
        .wait_status(&status_topic, deadline, keys.engine.as_ref(), |s| {
            s.version == Some(version)
                && matches!(
                    s.status,
                    StatusKind::Accepted | StatusKind::Rejected | StatusKind::Ignored
                )
        })
        .await?;
    let acked = conn.puback_seen;
    let forged = conn.forged_seen;
    conn.close().await;
    Ok(match answer {
        None if forged > 0 => {
            eprintln!("{forged} answer(s) on {status_topic} were not signed by the engine's status key: someone else answered; no authentic status within {}", humantime::format_duration(args.wait));
            ExitCode::from(4)
        }
        Some((status, raw)) => {
            println!("{raw}");
            match status.status {
                StatusKind::Accepted => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        None => {
            no_answer(&status_topic, args.wait, &topics, acked);
            eprintln!("the rule stays retained on {rule_topic}; an engine applies it when it (re)connects");
            ExitCode::from(3)
        }
    })
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let cfg = connection_config(&args.connection)?;
    if let Err(e) = check_rule_id(&args.rule_id) {
        eprintln!("RULE_ID: {e}");
        return Ok(ExitCode::from(2));
    }
    let keys = match load_keys(&args.connection, &cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let topics = Topics::new(cfg.topic_prefix.clone());
    let rule_topic = topics.rule(&args.rule_id);
    let status_topic = topics.status(&args.rule_id);

    let mut conn = Conn::connect(&cfg).await?;
    let payload = match &keys.author {
        None => DeleteMessage::default(),
        Some(key) => {
            // A signed delete names the version it deletes (the retained one), so it
            // cannot remove a later version if replayed.
            conn.subscribe(&[&rule_topic, &status_topic]).await?;
            let version = match (args.version, conn.retained_version(&rule_topic).await?) {
                (Some(v), _) => v,
                (None, Ok(Some(v))) => v,
                (None, Ok(None)) => {
                    eprintln!("no rule is retained on {rule_topic}; pass --version N to delete rule versions up to N");
                    conn.close().await;
                    return Ok(ExitCode::from(2));
                }
                (None, Err(e)) => {
                    eprintln!("the retained message on {rule_topic} is not a rule message ({e}); pass --version N");
                    conn.close().await;
                    return Ok(ExitCode::from(2));
                }
            };
            DeleteMessage::signed(&args.rule_id, version, key)
        }
    };
    if keys.author.is_none() {
        conn.subscribe(&[&status_topic]).await?;
    }
    conn.publish(&rule_topic, payload.encode()).await?;
    match payload.version {
        Some(v) => eprintln!(
            "published a signed delete of {} up to version {v} on {rule_topic}; waiting up to {} for a status",
            args.rule_id,
            humantime::format_duration(args.wait)
        ),
        None => eprintln!(
            "cleared {rule_topic}; waiting up to {} for a status",
            humantime::format_duration(args.wait)
        ),
    }
    let deadline = Instant::now() + args.wait;
    let answer = conn
        .wait_status(&status_topic, deadline, keys.engine.as_ref(), |s| {
            matches!(
                s.status,
                StatusKind::Deleted
                    | StatusKind::NotFound
                    | StatusKind::Rejected
                    | StatusKind::Ignored
            )
        })
        .await?;
    let acked = conn.puback_seen;
    let forged = conn.forged_seen;
    conn.close().await;
    Ok(match answer {
        None if forged > 0 => {
            eprintln!("{forged} answer(s) on {status_topic} were not signed by the engine's status key: someone else answered; no authentic status within {}", humantime::format_duration(args.wait));
            ExitCode::from(4)
        }
        Some((status, raw)) => {
            println!("{raw}");
            match status.status {
                StatusKind::Deleted => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        None => {
            no_answer(&status_topic, args.wait, &topics, acked);
            ExitCode::from(3)
        }
    })
}

fn no_answer(status_topic: &str, wait: Duration, topics: &Topics, acked: bool) {
    eprintln!(
        "no engine answered on {status_topic} within {}: is linewatch-rules running and subscribed to {}?",
        humantime::format_duration(wait),
        topics.rules_filter()
    );
    if !acked {
        eprintln!("(the broker did not acknowledge the message either)");
    }
}

/// `[mqtt]` of `--config` (or the defaults), then the flags.
pub fn connection_config(args: &ConnectionArgs) -> anyhow::Result<ControlConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
            match table.get("mqtt") {
                Some(mqtt) => mqtt
                    .clone()
                    .try_into::<ControlConfig>()
                    .with_context(|| format!("{}: [mqtt]", path.display()))?,
                None => ControlConfig::default(),
            }
        }
        None => ControlConfig::default(),
    };
    if let Some(h) = &args.host {
        cfg.host = h.clone();
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(p) = &args.topic_prefix {
        cfg.topic_prefix = p.clone();
    }
    if let Some(u) = &args.username {
        cfg.username = Some(u.clone());
    }
    if let Some(v) = &args.password_env {
        cfg.password = None;
        cfg.password_env = Some(v.clone());
    }
    if let Err(problems) = cfg.check().into_result() {
        bail!("{problems}");
    }
    Ok(cfg)
}

/// A short-lived client driven inline (the CLI does one thing at a time).
struct Conn {
    client: AsyncClient,
    eventloop: EventLoop,
    broker: String,
    /// Publishes that arrived while waiting for something else.
    backlog: Vec<Publish>,
    puback_seen: bool,
    /// Statuses that did not verify against the engine's status key.
    forged_seen: usize,
}

impl Conn {
    async fn connect(cfg: &ControlConfig) -> anyhow::Result<Conn> {
        let client_id = format!(
            "linewatch-rules-cli-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        let mut opts = cfg.mqtt_options(&client_id)?;
        opts.set_clean_session(true);
        let (client, eventloop) = AsyncClient::new(opts, 16);
        let mut conn = Conn {
            client,
            eventloop,
            broker: format!("{}:{}", cfg.host, cfg.port),
            backlog: Vec::new(),
            puback_seen: false,
            forged_seen: 0,
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match conn.next(deadline).await? {
                Some(Packet::ConnAck(_)) => return Ok(conn),
                Some(_) => continue,
                None => bail!(
                    "no CONNACK from the MQTT broker at {} within {CONNECT_TIMEOUT:?}",
                    conn.broker
                ),
            }
        }
    }

    /// The next incoming packet before `deadline` (`None`: deadline reached). Any
    /// connection error ends the command: the CLI does not reconnect.
    async fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<Packet>> {
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => {
                    return Err(
                        anyhow!(e).context(format!("MQTT connection to {} failed", self.broker))
                    )
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => self.puback_seen = true,
                Ok(Ok(Event::Incoming(p))) => return Ok(Some(p)),
                Ok(Ok(Event::Outgoing(_))) => {}
            }
        }
    }

    async fn subscribe(&mut self, topics: &[&str]) -> anyhow::Result<()> {
        let filters = topics
            .iter()
            .map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce));
        self.client.subscribe_many(filters).await?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match self.next(deadline).await? {
                Some(Packet::SubAck(ack)) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        bail!(
                            "the broker at {} refused the subscription to {topics:?} (ACL?)",
                            self.broker
                        );
                    }
                    return Ok(());
                }
                Some(Packet::Publish(p)) => self.backlog.push(p),
                Some(_) => {}
                None => bail!(
                    "no SUBACK from the MQTT broker at {} within {CONNECT_TIMEOUT:?}",
                    self.broker
                ),
            }
        }
    }

    /// The version of the retained rule message on `topic`: `Ok(None)` if there is none
    /// (or it is a delete), `Err` with the reason if it is not a rule message.
    async fn retained_version(
        &mut self,
        topic: &str,
    ) -> anyhow::Result<Result<Option<u64>, String>> {
        let pick = |p: &Publish| p.topic == topic && p.retain;
        if let Some(p) = self.backlog.iter().find(|p| pick(p)) {
            return Ok(RuleMessage::decode(&p.payload).map(|m| m.map(|m| m.version)));
        }
        let deadline = Instant::now() + RETAINED_PROBE;
        while let Some(packet) = self.next(deadline).await? {
            if let Packet::Publish(p) = packet {
                if pick(&p) {
                    return Ok(RuleMessage::decode(&p.payload).map(|m| m.map(|m| m.version)));
                }
                self.backlog.push(p);
            }
        }
        Ok(Ok(None))
    }

    async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .with_context(|| format!("cannot publish on {topic}"))
    }

    /// The first status on `topic` published after we subscribed (retained ones are
    /// older answers) that `want` accepts, with its JSON text.
    async fn wait_status(
        &mut self,
        topic: &str,
        deadline: Instant,
        engine: Option<&Trust>,
        want: impl Fn(&RuleStatus) -> bool,
    ) -> anyhow::Result<Option<(RuleStatus, String)>> {
        let mut pending: Vec<Publish> = std::mem::take(&mut self.backlog);
        loop {
            for p in pending.drain(..) {
                if p.topic != topic || p.retain {
                    continue;
                }
                match RuleStatus::decode(&p.payload) {
                    Ok(s) if want(&s) => {
                        if let Some(trust) = engine {
                            if let Err(e) = s.verify(trust) {
                                eprintln!("ignoring a status on {topic} not from the engine: {e}");
                                self.forged_seen += 1;
                                continue;
                            }
                        }
                        let raw = String::from_utf8_lossy(&p.payload).into_owned();
                        return Ok(Some((s, raw)));
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("ignoring a message on {topic}: {e}"),
                }
            }
            match self.next(deadline).await? {
                Some(Packet::Publish(p)) => pending.push(p),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// DISCONNECT, flushed (bounded): the retained publish is already acknowledged or
    /// at least written by now.
    async fn close(mut self) {
        if self.client.disconnect().await.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    #[command(name = "linewatch-rules", version)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        Publish(PublishArgs),
        Delete(DeleteArgs),
    }

    #[test]
    fn flags_parse_under_a_versioned_root_command() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "linewatch-rules",
            "publish",
            "r.rhai",
            "--host",
            "broker",
            "--port",
            "8883",
            "--topic-prefix",
            "plant/a",
            "--username",
            "ops",
            "--password-env",
            "PW",
            "--version",
            "7",
            "--wait",
            "3s",
        ])
        .unwrap();
        let Cmd::Publish(p) = cli.command else {
            panic!("not publish")
        };
        assert_eq!(p.version, Some(7));
        assert_eq!(p.wait, Duration::from_secs(3));
        let cfg = connection_config(&p.connection).unwrap();
        assert_eq!((cfg.host.as_str(), cfg.port), ("broker", 8883));
        assert_eq!(cfg.topic_prefix, "plant/a");
        assert_eq!(cfg.password_env.as_deref(), Some("PW"));

        let cli = Cli::try_parse_from(["linewatch-rules", "delete", "r-1"]).unwrap();
        let Cmd::Delete(d) = cli.command else {
            panic!("not delete")
        };
        assert_eq!(d.rule_id, "r-1");
        assert_eq!(d.wait, Duration::from_secs(10));
    }

    #[test]
    fn config_file_mqtt_table_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.toml");
        std::fs::write(
            &path,
            "instance_id = \"x\"\n[kinesis]\nstream = \"s\"\n[mqtt]\nhost = \"10.0.0.1\"\nport = 1884\ntopic_prefix = \"p\"\npassword = \"secret\"\nusername = \"u\"\n",
        )
        .unwrap();
        let mut args = ConnectionArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let cfg = connection_config(&args).unwrap();
        assert_eq!(
            (cfg.host.as_str(), cfg.port, cfg.topic_prefix.as_str()),
            ("10.0.0.1", 1884, "p")
        );
        args.port = Some(1999);
        args.password_env = Some("PW".into());
        let cfg = connection_config(&args).unwrap();
        assert_eq!(cfg.port, 1999);
        assert_eq!(
            (cfg.password.as_deref(), cfg.password_env.as_deref()),
            (None, Some("PW"))
        );

        std::fs::write(&path, "[mqtt]\nprot = 1\n").unwrap();
        let err = format!("{:#}", connection_config(&args).unwrap_err());
        assert!(err.contains("[mqtt]") && err.contains("prot"), "{err}");
        args.topic_prefix = Some("a/#".into());
        std::fs::write(&path, "[mqtt]\n").unwrap();
        let err = format!("{:#}", connection_config(&args).unwrap_err());
        assert!(err.contains("mqtt.topic_prefix"), "{err}");
    }
}
