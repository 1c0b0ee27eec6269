//! `[[webhooks]]`: one table per target. Secrets may come from the environment or a file;
//! they are resolved once at start ([`WebhookConfig::resolve`]) so a missing variable or
//! file is a start-up error naming the key, not a delivery failure hours later.

use crate::output::retry::RetryPolicy;
use crate::output::target::QueueSpec;
use linewatch_runtime::config::{SecretError, SecretKeys};
use linewatch_runtime::problems::{Problem, Problems};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One webhook target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique, `[A-Za-z0-9_-]`; names the dead-letter folder and the metrics label.
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Per request, connect to end of body.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// An event older than this (since it was created) is not retried any more.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Attempts per event (the first one included) before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Events waiting for this target; beyond it the oldest goes to the dead-letter store.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
}

/// How a request proves where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// A fixed secret in a header.
    ApiKey {
        #[serde(default = "default_api_key_header")]
        header: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_file: Option<PathBuf>,
    },
    /// `Authorization: Basic …`.
    Basic {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
    },
    /// HMAC-SHA256 over `"{timestamp}.{body}"`, sent as `<header>: v1=<hex>` with
    /// `x-linewatch-timestamp: <unix seconds>`.
    Hmac {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
        #[serde(default = "default_hmac_header")]
        header: String,
    },
}

impl AuthConfig {
    /// Where this method's one secret comes from, and the secret's key name.
    fn secret_keys(&self) -> (SecretKeys<'_>, &'static str) {
        match self {
            AuthConfig::ApiKey {
                value,
                value_env,
                value_file,
                ..
            } => (
                SecretKeys::new(
                    value.as_deref(),
                    value_env.as_deref(),
                    value_file.as_deref(),
                ),
                "value",
            ),
            AuthConfig::Basic {
                password,
                password_env,
                password_file,
                ..
            } => (
                SecretKeys::new(
                    password.as_deref(),
                    password_env.as_deref(),
                    password_file.as_deref(),
                ),
                "password",
            ),
            AuthConfig::Hmac {
                secret,
                secret_env,
                secret_file,
                ..
            } => (
                SecretKeys::new(
                    secret.as_deref(),
                    secret_env.as_deref(),
                    secret_file.as_deref(),
                ),
                "secret",
            ),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_attempts() -> u32 {
    185
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(600)
}
fn default_max_pending() -> usize {
    100_000
}
fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_hmac_header() -> String {
    "x-linewatch-signature".into()
}

/// Header carrying the unix time (seconds) the HMAC signature covers.
pub const HMAC_TIMESTAMP_HEADER: &str = "x-linewatch-timestamp";

/// Headers the delivery sets itself; a `headers` entry may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

/// A secret resolved at start; `Debug` does not print it (the runtime's, shared with
/// the AWS and agent configuration).
pub use linewatch_runtime::config::Secret;

/// [`AuthConfig`] with its secret in hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedAuth {
    ApiKey { header: String, value: Secret },
    Basic { username: String, password: Secret },
    Hmac { header: String, secret: Secret },
}

/// A checked target with its secrets resolved: what a delivery task runs with.
#[derive(Debug, Clone)]
pub struct ResolvedWebhook {
    pub config: WebhookConfig,
    pub auth: Option<ResolvedAuth>,
}

impl ResolvedWebhook {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookConfigError {
    #[error("webhook {target:?}: {problems}")]
    Invalid { target: String, problems: Problems },
    #[error("webhook {target:?}: {source}")]
    Secret { target: String, source: SecretError },
}

impl From<&WebhookConfig> for QueueSpec {
    fn from(w: &WebhookConfig) -> Self {
        QueueSpec::new(w.name.clone(), w.max_pending)
    }
}

impl WebhookConfig {
    /// The backoff and give-up limits of this target.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.backoff_initial,
            max: self.backoff_max,
            max_attempts: self.max_attempts,
            max_age: self.max_age,
        }
    }

    /// A target with every default, for code and tests.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            timeout: default_timeout(),
            max_age: default_max_age(),
            max_attempts: default_max_attempts(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            max_pending: default_max_pending(),
            headers: BTreeMap::new(),
            auth: None,
        }
    }

    /// Every problem with this table, each naming its full key (`webhooks[0].url`).
    pub fn check(&self, index: usize) -> Problems {
        let k = |key: &str| format!("webhooks[{index}].{key}");
        let mut p = Problems::new();
        if !valid_name(&self.name) {
            p.push(
                k("name"),
                format!(
                    "{:?} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
                    self.name
                ),
            );
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => p.push(
                k("url"),
                format!(
                    "{:?} must be an http:// or https:// URL with a host (scheme is {:?})",
                    linewatch_runtime::redact::url(&self.url),
                    u.scheme()
                ),
            ),
            Err(e) => p.push(
                k("url"),
                format!(
                    "{:?} is not a URL: {e}",
                    linewatch_runtime::redact::url(&self.url)
                ),
            ),
        }
        if self.timeout.is_zero() {
            p.push(k("timeout"), "must be more than 0");
        }
        if self.max_age.is_zero() {
            p.push(k("max_age"), "must be more than 0");
        }
        if self.max_attempts == 0 {
            p.push(k("max_attempts"), "must be at least 1");
        }
        if self.backoff_initial.is_zero() {
            p.push(k("backoff_initial"), "must be more than 0");
        }
        if self.backoff_max < self.backoff_initial {
            p.push(
                k("backoff_max"),
                format!(
                    "{} is less than backoff_initial ({})",
                    humantime::format_duration(self.backoff_max),
                    humantime::format_duration(self.backoff_initial)
                ),
            );
        }
        if self.max_pending == 0 {
            p.push(k("max_pending"), "must be at least 1");
        }
        let auth_headers: Vec<String> = match &self.auth {
            Some(AuthConfig::ApiKey { header, .. }) => vec![header.to_ascii_lowercase()],
            Some(AuthConfig::Basic { .. }) => vec!["authorization".into()],
            Some(AuthConfig::Hmac { header, .. }) => {
                vec![header.to_ascii_lowercase(), HMAC_TIMESTAMP_HEADER.into()]
            }
            None => vec![],
        };
        for (name, value) in &self.headers {
            let key = k(&format!("headers.{name}"));
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(key.clone(), "not a valid header name");
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                || auth_headers.contains(&name.to_ascii_lowercase())
            {
                p.push(
                    key.clone(),
                    "set by the delivery itself, cannot be overridden",
                );
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                p.push(key, "not a valid header value");
            }
        }
        if let Some(auth) = &self.auth {
            let mut header_ok = |key: &str, header: &str| {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    p.push(k(key), format!("{header:?} is not a valid header name"));
                } else if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str())
                    || header.eq_ignore_ascii_case(HMAC_TIMESTAMP_HEADER)
                {
                    p.push(k(key), format!("{header:?} is reserved"));
                }
            };
            if let AuthConfig::ApiKey { header, .. } | AuthConfig::Hmac { header, .. } = auth {
                header_ok("auth.header", header);
            }
            if let AuthConfig::Basic { username, .. } = auth {
                if username.contains(':') {
                    p.push(k("auth.username"), "may not contain ':'");
                }
            }
            let (keys, name) = auth.secret_keys();
            p.extend_prefixed(&k("auth"), keys.check("", name));
            if !keys.is_given() {
                p.push(
                    k("auth"),
                    format!("one of {name}, {name}_env or {name}_file is required"),
                );
            }
            // An empty Basic password is legal; an empty key or HMAC secret is a mistake.
            if keys.inline == Some("") && !matches!(auth, AuthConfig::Basic { .. }) {
                p.push(k(&format!("auth.{name}")), "is empty");
            }
        }
        p
    }

    /// Check and resolve secrets from the process environment.
    pub fn resolve(&self) -> Result<ResolvedWebhook, WebhookConfigError> {
        self.resolve_with(|var| std::env::var(var).ok())
    }

    /// [`resolve`](Self::resolve) with the environment injected.
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedWebhook, WebhookConfigError> {
        self.check(0)
            .into_result()
            .map_err(|problems| WebhookConfigError::Invalid {
                target: self.name.clone(),
                problems,
            })?;
        let secret = |auth: &AuthConfig| {
            let (keys, name) = auth.secret_keys();
            keys.resolve_with("auth", name, &env, |path| {
                std::fs::read_to_string(path).map_err(|e| e.to_string())
            })
            .map_err(|source| WebhookConfigError::Secret {
                target: self.name.clone(),
                source,
            })
            // `check` makes sure one of the three is given.
            .map(Option::unwrap_or_default)
        };
        let auth = match &self.auth {
            None => None,
            Some(a @ AuthConfig::ApiKey { header, .. }) => Some(ResolvedAuth::ApiKey {
                header: header.clone(),
                value: secret(a)?,
            }),
            Some(a @ AuthConfig::Basic { username, .. }) => Some(ResolvedAuth::Basic {
                username: username.clone(),
                password: secret(a)?,
            }),
            Some(a @ AuthConfig::Hmac { header, .. }) => Some(ResolvedAuth::Hmac {
                header: header.clone(),
                secret: secret(a)?,
            }),
        };
        if let Some(ResolvedAuth::ApiKey { value, .. }) = &auth {
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                return Err(WebhookConfigError::Invalid {
                    target: self.name.clone(),
                    problems: Problems::from(vec![Problem::new(
                        "auth.value",
                        "not a valid header value (control characters?)",
                    )]),
                });
            }
        }
        Ok(ResolvedWebhook {
            config: self.clone(),
            auth,
        })
    }
}

/// Problems with the whole `[[webhooks]]` list: each table, and unique names.
pub fn check_all(webhooks: &[WebhookConfig]) -> Problems {
    let mut p: Problems = webhooks
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.check(i))
        .collect();
    for (i, w) in webhooks.iter().enumerate() {
        if let Some(j) = webhooks[..i].iter().position(|o| o.name == w.name) {
            p.push(
                format!("webhooks[{i}].name"),
                format!("{:?} is already used by webhooks[{j}]", w.name),
            );
        }
    }
    p
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WebhookConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_are_eventbridge_like() {
        let w = parse("name = \"ops\"\nurl = \"https://example.com/hook\"").unwrap();
        assert_eq!(w, WebhookConfig::new("ops", "https://example.com/hook"));
        assert_eq!(w.max_age, Duration::from_secs(86_400));
        assert_eq!(w.max_attempts, 185);
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(w.backoff_initial, Duration::from_secs(1));
        assert_eq!(w.backoff_max, Duration::from_secs(600));
        assert_eq!(w.max_pending, 100_000);
        assert!(w.check(0).is_empty());
    }

    #[test]
    fn auth_kinds_parse_with_defaults() {
        let w = parse(
            r#"name = "a"
url = "http://127.0.0.1:1/x"
[auth]
type = "api_key"
value_env = "KEY""#,
        )
        .unwrap();
        assert_eq!(
            w.auth,
            Some(AuthConfig::ApiKey {
                header: "x-api-key".into(),
                value: None,
                value_env: Some("KEY".into()),
                value_file: None,
            })
        );
        let w = parse(
            r#"name = "a"
url = "http://127.0.0.1:1/x"
auth = { type = "hmac", secret = "s" }"#,
        )
        .unwrap();
        assert_eq!(
            w.auth,
            Some(AuthConfig::Hmac {
                secret: Some("s".into()),
                secret_env: None,
                secret_file: None,
                header: "x-linewatch-signature".into()
            })
        );
        let w = parse(
            r#"name = "a"
url = "http://127.0.0.1:1/x"
auth = { type = "basic", username = "u", password_env = "P" }"#,
        )
        .unwrap();
        assert!(matches!(w.auth, Some(AuthConfig::Basic { .. })));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse("name = \"a\"\nurl = \"http://h/\"\ntimeot = \"1s\"").is_err());
        let e = parse(
            "name = \"a\"\nurl = \"http://h/\"\nauth = { type = \"hmac\", secret = \"s\", sekret = \"x\" }",
        )
        .unwrap_err();
        assert!(e.to_string().contains("sekret"), "{e}");
        assert!(parse("name = \"a\"\nurl = \"http://h/\"\nauth = { type = \"oauth\" }").is_err());
    }

    #[test]
    fn check_names_each_bad_key() {
        let mut w = WebhookConfig::new("bad name", "ftp://h/x");
        w.max_attempts = 0;
        w.backoff_initial = Duration::from_secs(5);
        w.backoff_max = Duration::from_secs(1);
        w.headers.insert("content-type".into(), "text/plain".into());
        w.auth = Some(AuthConfig::Hmac {
            secret: Some("s".into()),
            secret_env: Some("S".into()),
            secret_file: None,
            header: "x-sig".into(),
        });
        let p = w.check(3);
        let p = p.to_strings();
        let has = |prefix: &str| p.iter().any(|m| m.starts_with(prefix));
        assert!(has("webhooks[3].name:"), "{p:?}");
        assert!(has("webhooks[3].url:"), "{p:?}");
        assert!(has("webhooks[3].max_attempts:"), "{p:?}");
        assert!(has("webhooks[3].backoff_max:"), "{p:?}");
        assert!(has("webhooks[3].headers.content-type:"), "{p:?}");
        assert!(
            has("webhooks[3].auth.secret: give only one of secret, secret_env"),
            "{p:?}"
        );
        assert_eq!(p.len(), 6, "{p:?}");

        let w = WebhookConfig::new("ok", "not a url");
        assert_eq!(w.check(0).as_slice()[0].key, "webhooks[0].url");
        // A problem names the URL without the credentials in it.
        let w = WebhookConfig::new("ok", "ftp://ops:hunter2@h/x?token=t0k3n");
        let shown = w.check(0).to_strings().join(" ");
        assert!(shown.contains("ftp://ops:***@h/x?token=***"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0k3n"),
            "{shown}"
        );
    }

    #[test]
    fn duplicate_names_are_reported() {
        let a = WebhookConfig::new("a", "http://h/1");
        let p = check_all(&[a.clone(), WebhookConfig::new("b", "http://h/2"), a]);
        assert_eq!(
            p.to_strings(),
            vec!["webhooks[2].name: \"a\" is already used by webhooks[0]".to_string()]
        );
    }

    #[test]
    fn secrets_resolve_from_env_or_fail_clearly() {
        let mut w = WebhookConfig::new("ops", "http://127.0.0.1:9/x");
        w.auth = Some(AuthConfig::Hmac {
            secret: None,
            secret_env: Some("OPS_SECRET".into()),
            secret_file: None,
            header: "x-linewatch-signature".into(),
        });
        let r = w
            .resolve_with(|v| (v == "OPS_SECRET").then(|| "hunter2".to_string()))
            .unwrap();
        assert_eq!(
            r.auth,
            Some(ResolvedAuth::Hmac {
                header: "x-linewatch-signature".into(),
                secret: Secret::new("hunter2")
            })
        );
        assert!(!format!("{r:?}").contains("hunter2"));
        let e = w.resolve_with(|_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "webhook \"ops\": auth.secret_env: environment variable OPS_SECRET is not set (or not UTF-8)"
        );
        // From a file: its trailing newline is not part of the secret.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hmac");
        std::fs::write(&path, "from-file\n").unwrap();
        w.auth = Some(AuthConfig::Hmac {
            secret: None,
            secret_env: None,
            secret_file: Some(path.clone()),
            header: "x-linewatch-signature".into(),
        });
        let r = w.resolve_with(|_| None).unwrap();
        assert!(
            matches!(&r.auth, Some(ResolvedAuth::Hmac { secret, .. }) if secret.expose() == "from-file")
        );
        std::fs::remove_file(&path).unwrap();
        let e = w.resolve_with(|_| None).unwrap_err().to_string();
        assert!(
            e.starts_with("webhook \"ops\": auth.secret_file: cannot read"),
            "{e}"
        );
        w.url = "nope".into();
        assert!(matches!(
            w.resolve_with(|_| None),
            Err(WebhookConfigError::Invalid { .. })
        ));
    }
}
