//! Configuration of an OPC UA source: endpoint, security, login, certificates,
//! tag groups (subscribed or polled). Checks are pure except the ones that look
//! at files named by the configuration (certificates, password files), which
//! `linewatch-agent check` must catch before a gateway is rebooted into them.

use super::node_id::{parse_node_id, Namespace, NodeAddress};
use crate::config::Problems;
use crate::sources::config::{check_tag, CommonSourceConfig, GroupChecks};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The OPC UA keys of a `[[sources]]` table with `type = "opcua"`; the shared
/// keys (id, equipment, timeout, reconnect, heartbeat) are in [`CommonSourceConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSourceConfig {
    /// `opc.tcp://host:port[/path]`.
    pub endpoint: String,
    #[serde(default)]
    pub security_policy: SecurityPolicyName,
    #[serde(default)]
    pub security_mode: SecurityModeName,
    #[serde(default)]
    pub login: Login,
    /// Where the client's certificate, key, and the trusted / rejected server
    /// certificates live (`own/cert.der`, `private/private.pem`, `trusted/`, `rejected/`).
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// The client's application certificate (DER); default `<pki_dir>/own/cert.der`.
    /// Created with its key on first start when neither exists.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The client's private key (PEM); default `<pki_dir>/private/private.pem`.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The application URI written into a created certificate and sent to the server.
    #[serde(default = "default_application_uri")]
    pub application_uri: String,
    /// Trust on first use: an unknown server certificate is stored as trusted
    /// (logged at warn). Off by default: unknown certificates are rejected.
    #[serde(default)]
    pub trust_unknown_server_certificates: bool,
    /// No data change nor keep-alive for this long rebuilds the session. Default:
    /// 2 × the longest keep-alive period (publishing_interval × keep_alive_count) + timeout.
    #[serde(default, with = "humantime_serde")]
    pub watchdog: Option<Duration>,
    pub groups: Vec<TagGroup>,
}

fn default_pki_dir() -> PathBuf {
    PathBuf::from("pki")
}

fn default_application_uri() -> String {
    "urn:linewatch:agent".to_owned()
}

/// A security policy, by its OPC UA name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SecurityPolicyName {
    #[default]
    None,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicyName {
    /// The name `async-opcua` knows the policy by.
    pub fn crate_name(self) -> &'static str {
        match self {
            SecurityPolicyName::None => "None",
            SecurityPolicyName::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicyName::Aes128Sha256RsaOaep => "Aes128-Sha256-RsaOaep",
            SecurityPolicyName::Aes256Sha256RsaPss => "Aes256-Sha256-RsaPss",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SecurityModeName {
    #[default]
    None,
    Sign,
    SignAndEncrypt,
}

/// How the session logs in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Login {
    #[default]
    Anonymous,
    Username {
        username: String,
        /// Name of an environment variable holding the password.
        #[serde(default)]
        password_env: Option<String>,
        /// A file holding the password (trailing newline ignored).
        #[serde(default)]
        password_file: Option<PathBuf>,
        /// Refused with a clear message: a password must not sit in the config file.
        #[serde(default)]
        password: Option<linewatch_runtime::config::Secret>,
    },
    /// An X.509 user certificate (DER or PEM) and its private key (PEM).
    Certificate {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

/// Tags read the same way: one subscription (or poll) setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagGroup {
    pub name: String,
    #[serde(default)]
    pub mode: GroupMode,
    /// Subscription: how often the server sends changes. Poll: ignored.
    #[serde(default = "default_publishing", with = "humantime_serde")]
    pub publishing_interval: Duration,
    /// How often the server samples each item; default: the publishing interval.
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// Values the server keeps per item between two publishes.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Publishing intervals without a change after which the server sends a keep-alive.
    #[serde(default = "default_keep_alive_count")]
    pub keep_alive_count: u32,
    /// Monitored items per subscription; more items are split over more subscriptions.
    #[serde(default = "default_max_items")]
    pub max_items_per_subscription: usize,
    /// Poll mode: the read interval.
    #[serde(default = "default_publishing", with = "humantime_serde")]
    pub interval: Duration,
    /// Server-side deadband for the group's tags (a tag may set its own).
    #[serde(default)]
    pub deadband_absolute: Option<f64>,
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    pub tags: Vec<OpcUaTag>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    #[default]
    Subscription,
    Poll,
}

fn default_publishing() -> Duration {
    Duration::from_secs(1)
}
fn default_queue_size() -> u32 {
    1
}
fn default_keep_alive_count() -> u32 {
    3
}
fn default_max_items() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaTag {
    pub name: String,
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// `nsu=<namespace uri>;s=<string>` (or `;i=`, `;g=`, `;b=`); `ns=<index>;…` works with a warning.
    pub node_id: String,
    /// For an array value: the element to take (the data point holds one scalar).
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub deadband_absolute: Option<f64>,
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// Codes sent as names (`{ 1 = "RUNNING" }`), the same for every protocol.
    #[serde(default)]
    pub map: Option<crate::sources::value_map::ValueMap>,
}

/// A server-side deadband (OPC UA DataChangeFilter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    None,
    Absolute(f64),
    Percent(f64),
}

impl OpcUaTag {
    pub fn equipment<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.equipment_id.as_deref().or(default)
    }

    /// The tag's own deadband, else its group's.
    pub fn deadband(&self, group: &TagGroup) -> Deadband {
        match (
            self.deadband_absolute
                .or(if self.deadband_percent.is_some() {
                    None
                } else {
                    group.deadband_absolute
                }),
            self.deadband_percent
                .or(if self.deadband_absolute.is_some() {
                    None
                } else {
                    group.deadband_percent
                }),
        ) {
            (Some(a), _) => Deadband::Absolute(a),
            (None, Some(p)) => Deadband::Percent(p),
            (None, None) => Deadband::None,
        }
    }
}

impl TagGroup {
    pub fn sampling(&self) -> Duration {
        self.sampling_interval.unwrap_or(self.publishing_interval)
    }

    /// How long the server may stay silent on this group's subscription: it sends
    /// a keep-alive after `keep_alive_count` publishing intervals without a change.
    pub fn keep_alive_period(&self) -> Duration {
        self.publishing_interval * self.keep_alive_count.max(1)
    }

    /// The longest gap between two cycles when all is well.
    pub fn cycle_period(&self) -> Duration {
        match self.mode {
            GroupMode::Subscription => self.keep_alive_period(),
            GroupMode::Poll => self.interval,
        }
    }
}

impl OpcUaSourceConfig {
    pub fn tag_count(&self) -> usize {
        self.groups.iter().map(|g| g.tags.len()).sum()
    }

    /// The watchdog bound: configured, else 2 keep-alive periods of the slowest
    /// subscribed group plus the request timeout. `None` when nothing is subscribed
    /// (a polled read that times out already loses the link).
    pub fn watchdog_bound(&self, timeout: Duration) -> Option<Duration> {
        let longest = self
            .groups
            .iter()
            .filter(|g| g.mode == GroupMode::Subscription && !g.tags.is_empty())
            .map(TagGroup::keep_alive_period)
            .max()?;
        Some(self.watchdog.unwrap_or(longest * 2 + timeout))
    }

    pub fn certificate_path(&self) -> PathBuf {
        self.certificate
            .clone()
            .unwrap_or_else(|| self.pki_dir.join("own/cert.der"))
    }

    pub fn private_key_path(&self) -> PathBuf {
        self.private_key
            .clone()
            .unwrap_or_else(|| self.pki_dir.join("private/private.pem"))
    }

    /// Node ids given by namespace index (`ns=N;…`): they break when the server
    /// renumbers its namespaces. Each names its key.
    pub fn warnings(&self, key: &str, p: &mut Problems) {
        for (gi, g) in self.groups.iter().enumerate() {
            for (ti, t) in g.tags.iter().enumerate() {
                if let Ok(NodeAddress {
                    namespace: Namespace::Index(i),
                    ..
                }) = parse_node_id(&t.node_id)
                {
                    if i != 0 {
                        p.push(
                            format!("{key}.groups[{gi}].tags[{ti}].node_id"),
                            format!("{:?} names namespace index {i}, which a server may renumber at a restart: prefer nsu=<namespace uri>;…", t.node_id),
                        );
                    }
                }
            }
        }
    }

    /// Semantic checks; `key` is this source's path (`sources[0]`).
    pub fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        if let Err(why) = check_endpoint(&self.endpoint) {
            p.push(format!("{key}.endpoint"), why);
        }
        let secured = self.security_policy != SecurityPolicyName::None;
        let signs = self.security_mode != SecurityModeName::None;
        if secured != signs {
            p.push(
                format!("{key}.security_mode"),
                "security_policy None goes with security_mode None, and a policy other than None with Sign or SignAndEncrypt",
            );
        }
        if self.application_uri.trim().is_empty() {
            p.push(format!("{key}.application_uri"), "must not be empty");
        }
        self.validate_own_certificate(key, p);
        self.validate_login(key, p);
        if self.watchdog.is_some_and(|w| w.is_zero()) {
            p.push(format!("{key}.watchdog"), "must be greater than zero");
        }
        let mut checks = GroupChecks::new(p, key, "tag group", self.groups.len());
        for (gi, g) in self.groups.iter().enumerate() {
            let gk = format!("{key}.groups[{gi}]");
            checks.group(p, &gk, &g.name, g.tags.len());
            match g.mode {
                GroupMode::Subscription => {
                    if g.publishing_interval.is_zero() {
                        p.push(
                            format!("{gk}.publishing_interval"),
                            "must be greater than zero",
                        );
                    }
                    if g.queue_size == 0 {
                        p.push(format!("{gk}.queue_size"), "must be at least 1");
                    }
                    if g.max_items_per_subscription == 0 {
                        p.push(
                            format!("{gk}.max_items_per_subscription"),
                            "must be at least 1",
                        );
                    }
                }
                GroupMode::Poll => {
                    if g.interval.is_zero() {
                        p.push(format!("{gk}.interval"), "must be greater than zero");
                    }
                }
            }
            check_deadband(p, &gk, g.deadband_absolute, g.deadband_percent);
            for (ti, t) in g.tags.iter().enumerate() {
                let tk = format!("{gk}.tags[{ti}]");
                if let Some(map) = &t.map {
                    map.validate(&tk, p);
                }
                let eq = check_tag(
                    p,
                    key,
                    &tk,
                    &t.name,
                    t.equipment(common.equipment_id.as_deref()),
                );
                checks.tag_name(p, &tk, eq, &t.name);
                if let Err(e) = parse_node_id(&t.node_id) {
                    p.push(format!("{tk}.node_id"), e.to_string());
                }
                check_deadband(p, &tk, t.deadband_absolute, t.deadband_percent);
                if g.mode == GroupMode::Poll
                    && (t.deadband_absolute.is_some() || t.deadband_percent.is_some())
                {
                    p.push(
                        format!("{tk}.deadband_absolute"),
                        "a deadband applies to subscribed groups only",
                    );
                }
            }
        }
    }

    fn validate_own_certificate(&self, key: &str, p: &mut Problems) {
        let cert = self.certificate_path();
        let pkey = self.private_key_path();
        // Both absent: created on first start. One without the other cannot work.
        match (cert.exists(), pkey.exists()) {
            (false, false) => {}
            (true, true) => {
                check_certificate_file(p, &format!("{key}.certificate"), &cert);
                check_key_file(p, &format!("{key}.private_key"), &pkey);
            }
            (true, false) => p.push(
                format!("{key}.private_key"),
                format!(
                    "{} is missing while the certificate {} exists",
                    pkey.display(),
                    cert.display()
                ),
            ),
            (false, true) => p.push(
                format!("{key}.certificate"),
                format!(
                    "{} is missing while the private key {} exists",
                    cert.display(),
                    pkey.display()
                ),
            ),
        }
    }

    fn validate_login(&self, key: &str, p: &mut Problems) {
        let lk = format!("{key}.login");
        match &self.login {
            Login::Anonymous => {}
            Login::Username {
                username,
                password_env,
                password_file,
                password,
            } => {
                if username.is_empty() {
                    p.push(format!("{lk}.username"), "must not be empty");
                }
                if password.is_some() {
                    p.push(
                        format!("{lk}.password"),
                        "an inline password is not accepted: use password_env (an environment variable) or password_file",
                    );
                }
                match (password_env, password_file) {
                    (Some(_), Some(_)) => p.push(
                        format!("{lk}.password_file"),
                        "give password_env or password_file, not both",
                    ),
                    (None, None) if password.is_none() => p.push(
                        format!("{lk}.password_env"),
                        "username login needs password_env or password_file",
                    ),
                    (None, Some(f)) => {
                        if let Err(e) = std::fs::read_to_string(f) {
                            p.push(
                                format!("{lk}.password_file"),
                                format!("cannot read {}: {e}", f.display()),
                            );
                        }
                    }
                    _ => {}
                }
                if let Some(var) = password_env {
                    if var.is_empty() {
                        p.push(
                            format!("{lk}.password_env"),
                            "must name an environment variable",
                        );
                    }
                }
            }
            Login::Certificate {
                certificate,
                private_key,
            } => {
                check_certificate_file(p, &format!("{lk}.certificate"), certificate);
                check_key_file(p, &format!("{lk}.private_key"), private_key);
            }
        }
    }
}

fn check_deadband(p: &mut Problems, key: &str, abs: Option<f64>, pct: Option<f64>) {
    if abs.is_some() && pct.is_some() {
        p.push(
            format!("{key}.deadband_percent"),
            "give deadband_absolute or deadband_percent, not both",
        );
    }
    if abs.is_some_and(|a| !a.is_finite() || a < 0.0) {
        p.push(
            format!("{key}.deadband_absolute"),
            "must be a finite number ≥ 0",
        );
    }
    if pct.is_some_and(|a| !(0.0..=100.0).contains(&a)) {
        p.push(
            format!("{key}.deadband_percent"),
            "must be between 0 and 100",
        );
    }
}

fn check_certificate_file(p: &mut Problems, key: &str, path: &Path) {
    match std::fs::read(path) {
        Err(e) => p.push(key, format!("cannot read {}: {e}", path.display())),
        Ok(bytes) => {
            if let Err(e) = opcua::crypto::X509::from_der(&bytes)
                .or_else(|_| opcua::crypto::X509::from_pem(&bytes))
            {
                p.push(
                    key,
                    format!("{} is not a DER or PEM certificate: {e}", path.display()),
                );
            }
        }
    }
}

fn check_key_file(p: &mut Problems, key: &str, path: &Path) {
    if let Err(e) = opcua::crypto::CertificateStore::read_pkey(path) {
        p.push(
            key,
            format!("cannot read the private key {}: {e}", path.display()),
        );
    }
}

/// `opc.tcp://host:port[/path]` with a non-empty host and a numeric port.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("opc.tcp://") else {
        return Err(format!("{url:?} must start with opc.tcp://"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && h.contains(':') => {
            return Err(format!(
                "{url:?}: an IPv6 host must be in brackets ({h} {port})"
            ));
        }
        Some((h, port)) => (h, port),
        None => (authority, "4840"),
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("{url:?} has no valid host"));
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        return Err(format!("{url:?} has no valid port ({port:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::split;

    type Source = (CommonSourceConfig, OpcUaSourceConfig);

    fn source(extra: &str, group: &str, tags: &str) -> Result<Source, toml::de::Error> {
        split(toml::from_str(&format!(
            "id = \"ua\"\nequipment_id = \"filler\"\nendpoint = \"opc.tcp://127.0.0.1:4840/\"\npki_dir = \"/nonexistent/pki\"\n{extra}\n[[groups]]\nname = \"fast\"\n{group}\n{tags}"
        ))?)
    }

    const TAG: &str = "[[groups.tags]]\nname = \"t\"\nnode_id = \"nsu=urn:line;s=T\"";

    fn problems((common, cfg): &Source) -> Vec<String> {
        let mut p = Problems::default();
        common.validate("sources[0]", &mut p);
        cfg.validate(common, "sources[0]", &mut p);
        p.to_strings()
    }

    fn has(p: &[String], prefix: &str) -> bool {
        p.iter().any(|m| m.starts_with(prefix))
    }

    #[test]
    fn a_minimal_source_is_valid_with_defaults() -> Result<(), toml::de::Error> {
        let s = source("", "", TAG)?;
        assert_eq!(problems(&s), Vec::<String>::new());
        let g = &s.1.groups[0];
        assert_eq!(g.mode, GroupMode::Subscription);
        assert_eq!(g.sampling(), Duration::from_secs(1));
        assert_eq!(g.keep_alive_period(), Duration::from_secs(3));
        assert_eq!(
            s.1.watchdog_bound(Duration::from_secs(2)),
            Some(Duration::from_secs(8))
        );
        assert_eq!(s.1.security_policy, SecurityPolicyName::None);
        assert!(matches!(s.1.login, Login::Anonymous));
        Ok(())
    }

    #[test]
    fn bad_endpoint_node_id_and_policy_name_their_key() -> Result<(), toml::de::Error> {
        let s = source(
            "endpoint = \"tcp://plc:4840\"",
            "",
            "[[groups.tags]]\nname = \"t\"\nnode_id = \"nsu=urn:x;q=1\"",
        );
        // `endpoint` twice is a TOML error: build the bad endpoint differently.
        assert!(s.is_err());
        let mut s = source(
            "",
            "",
            "[[groups.tags]]\nname = \"t\"\nnode_id = \"nsu=urn:x;q=1\"",
        )?;
        s.1.endpoint = "tcp://plc:4840".into();
        let p = problems(&s);
        assert!(has(&p, "sources[0].endpoint: "), "{p:?}");
        assert!(has(&p, "sources[0].groups[0].tags[0].node_id: "), "{p:?}");
        let e = source("security_policy = \"Basic512\"", "", TAG).expect_err("unknown policy");
        assert!(e.to_string().contains("unknown variant `Basic512`"), "{e}");
        assert!(e.to_string().contains("security_policy"), "{e}");
        Ok(())
    }

    #[test]
    fn policy_and_mode_must_agree() -> Result<(), toml::de::Error> {
        let s = source("security_policy = \"Basic256Sha256\"", "", TAG)?;
        assert!(has(&problems(&s), "sources[0].security_mode: "));
        let s = source(
            "security_policy = \"Aes256_Sha256_RsaPss\"\nsecurity_mode = \"SignAndEncrypt\"",
            "",
            TAG,
        )?;
        assert_eq!(problems(&s), Vec::<String>::new());
        assert_eq!(s.1.security_policy.crate_name(), "Aes256-Sha256-RsaPss");
        Ok(())
    }

    #[test]
    fn passwords_come_from_env_or_file_never_inline() -> Result<(), toml::de::Error> {
        let login = |l: &str| {
            source(
                &format!("[login]\ntype = \"username\"\nusername = \"op\"\n{l}"),
                "",
                TAG,
            )
        };
        let s = login("password = \"hunter2\"")?;
        let p = problems(&s);
        assert!(
            has(&p, "sources[0].login.password: an inline password"),
            "{p:?}"
        );
        assert!(!format!("{:?}", s.1).contains("hunter2"));
        let s = login("password_file = \"/nonexistent/pw\"")?;
        assert!(has(
            &problems(&s),
            "sources[0].login.password_file: cannot read"
        ));
        let s = login("password_env = \"UA_PW\"")?;
        assert_eq!(problems(&s), Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn unreadable_certificates_name_their_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("cert.der");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, b"not a certificate")?;
        std::fs::write(&key, b"not a key")?;
        let mut s = source("", "", TAG)?;
        s.1.certificate = Some(cert.clone());
        s.1.private_key = Some(key.clone());
        let p = problems(&s);
        assert!(has(&p, "sources[0].certificate: "), "{p:?}");
        assert!(has(&p, "sources[0].private_key: "), "{p:?}");
        s.1.login = Login::Certificate {
            certificate: dir.path().join("absent.der"),
            private_key: key,
        };
        let p = problems(&s);
        assert!(
            has(&p, "sources[0].login.certificate: cannot read"),
            "{p:?}"
        );
        std::fs::remove_file(&cert)?;
        s.1.login = Login::Anonymous;
        let p = problems(&s);
        assert!(
            has(&p, "sources[0].certificate: "),
            "a key without its certificate: {p:?}"
        );
        Ok(())
    }

    #[test]
    fn deadbands_are_checked_and_inherited() -> Result<(), toml::de::Error> {
        let s = source(
            "",
            "deadband_absolute = 0.5",
            "[[groups.tags]]\nname = \"a\"\nnode_id = \"nsu=u;i=1\"\n[[groups.tags]]\nname = \"b\"\nnode_id = \"nsu=u;i=2\"\ndeadband_percent = 2.0\n[[groups.tags]]\nname = \"c\"\nnode_id = \"nsu=u;i=3\"\ndeadband_percent = 200.0\ndeadband_absolute = -1.0",
        )?;
        let g = &s.1.groups[0];
        assert_eq!(g.tags[0].deadband(g), Deadband::Absolute(0.5));
        assert_eq!(g.tags[1].deadband(g), Deadband::Percent(2.0));
        let p = problems(&s);
        assert!(
            has(&p, "sources[0].groups[0].tags[2].deadband_percent: give"),
            "{p:?}"
        );
        assert!(
            has(&p, "sources[0].groups[0].tags[2].deadband_absolute: must"),
            "{p:?}"
        );
        Ok(())
    }

    #[test]
    fn ns_index_node_ids_warn_with_their_key() -> Result<(), toml::de::Error> {
        let s = source("", "", "[[groups.tags]]\nname = \"t\"\nnode_id = \"ns=2;s=T\"\n[[groups.tags]]\nname = \"u\"\nnode_id = \"i=2258\"")?;
        assert_eq!(problems(&s), Vec::<String>::new());
        let mut w = Problems::default();
        s.1.warnings("sources[0]", &mut w);
        let w = w.to_strings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("sources[0].groups[0].tags[0].node_id: "),
            "{w:?}"
        );
        Ok(())
    }

    #[test]
    fn endpoints() {
        for ok in [
            "opc.tcp://127.0.0.1:4840",
            "opc.tcp://plc.local:4840/freeopcua/server/",
            "opc.tcp://[::1]:4840/",
            "opc.tcp://plc",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://plc:4840",
            "opc.tcp://:4840",
            "opc.tcp://plc:port",
            "opc.tcp://plc:0",
            "opc.tcp://::1:4840",
            "opc.tcp://pl c:4840",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn poll_groups_need_an_interval_and_no_deadband() -> Result<(), toml::de::Error> {
        let s = source(
            "",
            "mode = \"poll\"\ninterval = \"0s\"",
            "[[groups.tags]]\nname = \"t\"\nnode_id = \"nsu=u;i=1\"\ndeadband_absolute = 1.0",
        )?;
        let p = problems(&s);
        assert!(has(&p, "sources[0].groups[0].interval: "), "{p:?}");
        assert!(
            has(&p, "sources[0].groups[0].tags[0].deadband_absolute: "),
            "{p:?}"
        );
        assert_eq!(s.1.watchdog_bound(Duration::from_secs(1)), None);
        Ok(())
    }

    #[test]
    fn the_example_gateway_config_is_valid_and_warns_about_nothing() {
        let text = include_str!("../../../../firmware-config/examples/opcua-gateway.toml");
        let cfg = crate::config::Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.sources.len(), 1);
        assert_eq!(cfg.sources[0].kind, "opcua");
        assert_eq!(cfg.sources[0].tag_count(), 6);
        assert!(
            cfg.warnings().is_empty(),
            "{:?}",
            cfg.warnings().to_strings()
        );
    }

    #[test]
    fn every_commented_security_mode_of_the_example_is_valid() {
        let text = include_str!("../../../../firmware-config/examples/opcua-gateway.toml");
        let plain = text
            .replace("security_policy = \"None\"\n", "")
            .replace("security_mode = \"None\"\n", "");
        for block in [
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n",
            "security_policy = \"Aes128_Sha256_RsaOaep\"\nsecurity_mode = \"Sign\"\n",
            "security_policy = \"Aes256_Sha256_RsaPss\"\nsecurity_mode = \"Sign\"\n",
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nlogin = { type = \"username\", username = \"linewatch\", password_env = \"LINEWATCH_UA_PASSWORD\" }\n",
        ] {
            let t = plain.replacen("pki_dir = ", &format!("{block}pki_dir = "), 1);
            if let Err(e) = crate::config::Config::parse(&t) {
                panic!("{block}: {e}");
            }
        }
    }
}
