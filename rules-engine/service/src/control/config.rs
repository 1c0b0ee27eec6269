//! `[mqtt]`: where the control topic lives and how to log in.

use super::ControlError;
use linewatch_runtime::config::SecretKeys;
use linewatch_runtime::problems::Problems;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest MQTT packet the client reads or sends. An incoming packet above it drops
/// the connection (MQTT 3.1.1 cannot refuse one message), and a retained one comes
/// back on every reconnect; so this is well above any rule message
/// ([`DEFAULT_MAX_MESSAGE_BYTES`]): a larger message is read, refused with a status,
/// and the connection stays. The broker's `max_packet_size` (docs/control-topic.md)
/// must be at or below it.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Default of `mqtt.max_message_bytes`: a rule message above it is refused unread
/// (a script's own limit is 64 KiB; JSON escaping and a signature add to that).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// CA bundle used when `tls.ca_file` is not given (Debian/Ubuntu path).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub host: String,
    pub port: u16,
    /// MQTT client id; by default the caller derives one from the instance id. The
    /// session is persistent (clean session off), so keep it stable per instance.
    pub client_id: Option<String>,
    /// Rules on `{topic_prefix}/rules/<ruleId>`, status on `{topic_prefix}/status/<ruleId>`.
    pub topic_prefix: String,
    pub username: Option<String>,
    /// The password in the file; prefer `password_env` or `password_file`.
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (its trailing newline dropped).
    pub password_file: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Upper bound of the start-up wait for the retained rules.
    #[serde(with = "humantime_serde")]
    pub retained_wait: Duration,
    /// Retained delivery counts as complete once subscribed and no retained message
    /// arrived for this long.
    #[serde(with = "humantime_serde")]
    pub retained_quiet: Duration,
    /// Rule messages larger than this are refused (status `rejected`) without being
    /// decoded; at most [`MAX_PACKET_BYTES`].
    pub max_message_bytes: usize,
    /// Who may change rules and how the engine signs its answers.
    pub auth: AuthConfig,
}

/// `[mqtt.auth]`: rules must be signed by a trusted author key; statuses are signed
/// by the engine's key. Key files are written by `linewatch-rules keygen`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Public key files (`*.pub`) of the rule authors the engine trusts.
    pub trusted_keys: Vec<PathBuf>,
    /// The engine's secret key file (`*.key`, mode 0600): signs status messages.
    pub status_key: Option<PathBuf>,
    /// The public half of `status_key` (`*.pub`): what `publish`/`delete` verify
    /// statuses with. The engine does not need it.
    pub status_public_key: Option<PathBuf>,
    /// Accept unsigned rule messages and deletes. For local demos only: anyone who
    /// can publish on the broker then changes rules. Logged as a warning at start
    /// and for every unsigned message.
    pub accept_unsigned: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM CA certificates to trust; default: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its key, for brokers that require them.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            topic_prefix: "linewatch".into(),
            username: None,
            password: None,
            password_env: None,
            password_file: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            retained_wait: Duration::from_secs(10),
            retained_quiet: Duration::from_millis(500),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            auth: AuthConfig::default(),
        }
    }
}

impl fmt::Debug for ControlConfig {
    // By hand so that a logged config never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("keep_alive", &self.keep_alive)
            .field("retained_wait", &self.retained_wait)
            .field("retained_quiet", &self.retained_quiet)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("auth", &self.auth)
            .finish()
    }
}

impl ControlConfig {
    /// Every problem, each naming its key (`mqtt.port: ...`). Does not touch files or
    /// the environment; [`ControlConfig::mqtt_options`] does.
    pub fn check(&self) -> Problems {
        let mut p = Problems::new();
        if self.host.trim().is_empty() {
            p.push("mqtt.host", "must not be empty");
        }
        if self.port == 0 {
            p.push("mqtt.port", "must be 1 to 65535");
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 65535 {
                p.push("mqtt.client_id", "must have 1 to 65535 bytes");
            }
        }
        if let Err(e) = check_prefix(&self.topic_prefix) {
            p.push("mqtt.topic_prefix", e);
        }
        let password = self.password_keys();
        p.extend_prefixed("mqtt", password.check("", "password"));
        if password.is_given() && self.username.is_none() {
            p.push(
                "mqtt.username",
                "required when a password is set (MQTT 3.1.1)",
            );
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            p.push(
                "mqtt.keep_alive",
                format!(
                    "{} is below 1s (0 disables keep-alive)",
                    humantime::format_duration(self.keep_alive)
                ),
            );
        }
        if self.keep_alive > Duration::from_secs(u16::MAX as u64) {
            p.push("mqtt.keep_alive", "at most 65535s");
        }
        if self.retained_quiet.is_zero() {
            p.push("mqtt.retained_quiet", "must be above 0");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_PACKET_BYTES {
            p.push(
                "mqtt.max_message_bytes",
                format!("must be 1 to {MAX_PACKET_BYTES}"),
            );
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                p.push("mqtt.tls", "client_cert and client_key go together");
            }
        }
        p
    }

    fn password_keys(&self) -> SecretKeys<'_> {
        SecretKeys::new(
            self.password.as_deref(),
            self.password_env.as_deref(),
            self.password_file.as_deref(),
        )
    }

    /// What only the engine needs: a way to trust rules. Without trusted keys and
    /// without `accept_unsigned`, every rule would be rejected.
    pub fn check_engine(&self) -> Problems {
        let mut p = Problems::new();
        if self.auth.trusted_keys.is_empty() && !self.auth.accept_unsigned {
            p.push(
                "mqtt.auth.trusted_keys",
                "no trusted author key: every rule would be rejected; list the authors' public keys (linewatch-rules keygen), or set accept_unsigned = true for a local demo",
            );
        }
        p
    }

    /// The rumqttc options: credentials (reading `password_env`/`_file`), TLS (reading the
    /// PEM files), keep-alive, packet size. Clean session is the caller's choice.
    pub fn mqtt_options(&self, client_id: &str) -> Result<MqttOptions, ControlError> {
        self.check()
            .into_result()
            .map_err(|p| ControlError::Config(p.to_string()))?;
        let mut opts = MqttOptions::new(client_id, self.host.clone(), self.port);
        // check() bounds keep_alive to 0 or 1s..=65535s, where rumqttc does not panic.
        opts.set_keep_alive(self.keep_alive);
        opts.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(user) = &self.username {
            let password = self
                .password_keys()
                .resolve("mqtt", "password")
                .map_err(|e| ControlError::Config(e.to_string()))?
                .unwrap_or_default();
            opts.set_credentials(user.clone(), password.expose());
        }
        if let Some(tls) = &self.tls {
            let ca_path = tls
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let ca = read_pem("mqtt.tls.ca_file", &ca_path)?;
            let client_auth = match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => Some((
                    read_pem("mqtt.tls.client_cert", cert)?,
                    read_pem("mqtt.tls.client_key", key)?,
                )),
                _ => None,
            };
            opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        Ok(opts)
    }
}

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, ControlError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ControlError::Config(format!("{key}: cannot read {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ControlError::Config(format!(
            "{key}: {} is not PEM (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A prefix is one or more topic levels without wildcards (they would make the
/// subscription match other topics) and without empty levels.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!("{prefix:?} contains a wildcard (+ or #) or NUL"));
    }
    if prefix.split('/').any(|level| level.is_empty()) {
        return Err(format!(
            "{prefix:?} has an empty level (leading, trailing or double /)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_an_empty_table_and_unknown_keys_refused() {
        let c: ControlConfig = toml::from_str("").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 1883));
        assert_eq!(c.topic_prefix, "linewatch");
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.retained_wait, Duration::from_secs(10));
        assert_eq!(c.retained_quiet, Duration::from_millis(500));
        assert!(c.check().is_empty());
        let err = toml::from_str::<ControlConfig>("hots = \"x\"").unwrap_err();
        assert!(err.to_string().contains("hots"), "{err}");
        let err = toml::from_str::<ControlConfig>("[tls]\nca = \"x\"").unwrap_err();
        assert!(err.to_string().contains("ca"), "{err}");
    }

    #[test]
    fn check_names_the_keys_at_fault() {
        let c: ControlConfig = toml::from_str(
            r#"
            host = ""
            port = 0
            topic_prefix = "a/+/b"
            password = "p"
            password_env = "P"
            keep_alive = "200ms"
            retained_quiet = "0s"
            [tls]
            client_cert = "c.pem"
            "#,
        )
        .unwrap();
        let errs = c.check();
        for key in [
            "mqtt.host",
            "mqtt.port",
            "mqtt.topic_prefix",
            "mqtt.password",
            "mqtt.username",
            "mqtt.keep_alive",
            "mqtt.retained_quiet",
            "mqtt.tls",
        ] {
            assert!(
                errs.iter().any(|e| e.key == key),
                "{key} missing in {errs:?}"
            );
        }
        assert_eq!(errs.len(), 8, "every problem, each once: {errs}");
        assert!(matches!(c.mqtt_options("x"), Err(ControlError::Config(_))));
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("linewatch").is_ok());
        assert!(check_prefix("plant/a").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/#", "+"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_from_env_and_redacted_in_debug() {
        let var = format!("LINEWATCH_TEST_MQTT_PW_{}", std::process::id());
        std::env::set_var(&var, "s3cret");
        let c = ControlConfig {
            username: Some("engine".into()),
            password_env: Some(var.clone()),
            ..Default::default()
        };
        let opts = c.mqtt_options("id").unwrap();
        let login = opts.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("engine", "s3cret")
        );
        std::env::remove_var(&var);
        let err = c.mqtt_options("id").unwrap_err().to_string();
        assert!(
            err.contains("mqtt.password_env") && err.contains(&var),
            "{err}"
        );

        let c = ControlConfig {
            username: Some("u".into()),
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = ControlConfig {
            username: Some("engine".into()),
            password_file: Some(file),
            ..Default::default()
        };
        let opts = c.mqtt_options("id").unwrap();
        assert_eq!(opts.credentials().unwrap().password, "from-file");
    }

    #[test]
    fn tls_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let c = ControlConfig {
            tls: Some(TlsConfig {
                ca_file: Some(not_pem),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = c.mqtt_options("id").unwrap_err().to_string();
        assert!(
            err.contains("mqtt.tls.ca_file") && err.contains("not PEM"),
            "{err}"
        );
        let c = ControlConfig {
            tls: Some(TlsConfig {
                ca_file: Some(dir.path().join("missing.pem")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = c.mqtt_options("id").unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
