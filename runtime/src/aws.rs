//! AWS connection settings and the SDK loader, the same TOML keys in both programs.
//!
//! Keys (inside the program's section, e.g. `[kinesis]`; read them with
//! [`Split`](crate::config::Split) next to the section's own keys):
//!
//! | key | meaning |
//! |---|---|
//! | `region` | AWS region; else `AWS_REGION` / the AWS profile |
//! | `endpoint_url` | e.g. `http://127.0.0.1:4567` for kinesalite; else AWS |
//! | `endpoint` | deprecated old name of `endpoint_url` (the rule engine's); warns |
//! | `access_key_id`, `secret_access_key` | static credentials, both or neither; else the standard AWS chain |
//! | `secret_access_key_env` | the secret from this environment variable instead (the file then holds none) |
//! | `secret_access_key_file` | the secret from this file (e.g. `/run/secrets/aws`), its trailing newline dropped |
//!
//! The loader turns SDK retries off (both programs retry per record or per call
//! themselves, and count and log every failure) and gives each call a timeout with at
//! most 3 s of it for connecting, so a dead endpoint is noticed (and known not written)
//! quickly.

use crate::config::{Secret, SecretError, SecretKeys};
use crate::problems::{join_key, Problems};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use serde::Deserialize;
use std::time::Duration;

/// The provider name the SDK records for credentials from the configuration file.
const PROVIDER: &str = "linewatch-config";
/// Connecting never gets more than this of a call's time.
const MAX_CONNECT: Duration = Duration::from_secs(3);

/// The AWS connection keys of a section. Secrets are [`Secret`]s: `Debug` redacts them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConnection {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Deprecated: the rule engine's old name of `endpoint_url`. Still read; warns.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<std::path::PathBuf>,
}

/// Timeouts of every SDK call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// The whole call (and each attempt: retries are off).
    pub call: Duration,
    pub connect: Duration,
}

impl AwsTimeouts {
    /// `call` for the whole call, connecting at most 3 s of it.
    pub fn per_call(call: Duration) -> Self {
        AwsTimeouts {
            call,
            connect: call.min(MAX_CONNECT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{0}")]
    Invalid(Problems),
    #[error("no AWS region: set {key}, AWS_REGION, or a region in the AWS profile")]
    NoRegion { key: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl AwsConnection {
    /// The endpoint to use: `endpoint_url`, else the deprecated `endpoint`.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.endpoint_url.as_deref().or(self.endpoint.as_deref())
    }

    fn secret_keys(&self) -> SecretKeys<'_> {
        SecretKeys::new(
            self.secret_access_key.as_ref().map(Secret::expose),
            self.secret_access_key_env.as_deref(),
            self.secret_access_key_file.as_deref(),
        )
    }

    /// Every problem with the values, keys under `prefix` (e.g. `kinesis`). Reads no
    /// environment; [`AwsConnection::load`] does.
    pub fn validate(&self, prefix: &str) -> Problems {
        let k = |key: &str| join_key(prefix, key);
        let mut p = Problems::new();
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            p.push(
                k("region"),
                "must not be empty (leave it out to use the AWS chain)",
            );
        }
        for (key, url) in [
            ("endpoint_url", &self.endpoint_url),
            ("endpoint", &self.endpoint),
        ] {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    p.push(
                        k(key),
                        format!("{url:?} must start with http:// or https://"),
                    );
                }
            }
        }
        if self.endpoint.is_some() && self.endpoint_url.is_some() {
            p.push(
                k("endpoint"),
                "give endpoint_url only (endpoint is its deprecated old name)",
            );
        }
        let secret = self.secret_keys();
        let has_secret = secret.is_given();
        p.extend_prefixed(prefix, secret.check("", "secret_access_key"));
        match (self.access_key_id.is_some(), has_secret) {
            (true, false) => p.push(
                k("secret_access_key"),
                "missing (access_key_id is set; give both or neither)",
            ),
            (false, true) => p.push(
                k("access_key_id"),
                "missing (secret_access_key is set; give both or neither)",
            ),
            _ => {}
        }
        p
    }

    /// What works but should change (the deprecated `endpoint`), keys under `prefix`.
    pub fn warnings(&self, prefix: &str) -> Problems {
        let mut w = Problems::new();
        if self.endpoint.is_some() {
            w.push(
                join_key(prefix, "endpoint"),
                "deprecated: rename it to endpoint_url",
            );
        }
        w
    }

    /// The static credentials, the secret read from its environment variable if so
    /// configured; `None` to use the standard AWS chain.
    pub fn static_credentials(&self, prefix: &str) -> Result<Option<(String, Secret)>, AwsError> {
        let Some(id) = &self.access_key_id else {
            return Ok(None);
        };
        let Some(secret) = self.secret_keys().resolve(prefix, "secret_access_key")? else {
            return Ok(None);
        };
        Ok(Some((id.clone(), secret)))
    }

    /// Checks the keys (problems under `prefix`), logs each warning, and loads the SDK
    /// configuration: region, endpoint and credentials from here, the standard AWS chain
    /// (environment, profile, container/instance metadata) for what is absent. SDK
    /// retries off, `timeouts` on every call. Makes no call to AWS. A program builds its
    /// client from the result, e.g. `aws_sdk_kinesis::Client::new(&sdk)`.
    pub async fn load(&self, prefix: &str, timeouts: AwsTimeouts) -> Result<SdkConfig, AwsError> {
        self.validate(prefix)
            .into_result()
            .map_err(AwsError::Invalid)?;
        for w in self.warnings(prefix).iter() {
            tracing::warn!(key = %w.key, "{}", w.message);
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(timeouts.call)
                    .operation_attempt_timeout(timeouts.call)
                    .connect_timeout(timeouts.connect)
                    .build(),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = self.endpoint_url() {
            loader = loader.endpoint_url(url);
        }
        if let Some((id, secret)) = self.static_credentials(prefix)? {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                PROVIDER,
            ));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(AwsError::NoRegion {
                key: join_key(prefix, "region"),
            });
        }
        Ok(sdk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Split;
    use crate::logging::tests::Buf;
    use aws_credential_types::provider::ProvideCredentials;

    /// A section with AWS keys next to its own, as the programs read `[kinesis]`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stream {
        stream: String,
    }

    fn parse(text: &str) -> Result<Split<AwsConnection, Stream>, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn keys(p: &Problems) -> Vec<&str> {
        p.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn the_same_keys_read_next_to_the_sections_own() {
        let s = parse(
            r#"stream = "s"
               region = "eu-central-1"
               endpoint_url = "http://127.0.0.1:4567"
               access_key_id = "AKIDEXAMPLE"
               secret_access_key = "hunter2""#,
        )
        .unwrap();
        assert_eq!(s.specific.stream, "s");
        let a = &s.common;
        assert_eq!(a.region.as_deref(), Some("eu-central-1"));
        assert_eq!(a.endpoint_url(), Some("http://127.0.0.1:4567"));
        assert!(a.validate("kinesis").is_empty());
        assert!(a.warnings("kinesis").is_empty());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = parse("stream = \"s\"\nendpoint_ur = \"http://x\"").unwrap_err();
        assert!(e.contains("unknown field `endpoint_ur`"), "{e}");
    }

    #[test]
    fn the_old_endpoint_key_works_with_a_deprecation_warning() {
        let s = parse("stream = \"s\"\nendpoint = \"http://127.0.0.1:4567\"").unwrap();
        assert_eq!(s.common.endpoint_url(), Some("http://127.0.0.1:4567"));
        assert!(s.common.validate("kinesis").is_empty());
        let w = s.common.warnings("kinesis");
        assert_eq!(keys(&w), vec!["kinesis.endpoint"]);
        assert!(w.to_string().contains("endpoint_url"), "{w}");
        let both =
            parse("stream = \"s\"\nendpoint = \"http://a\"\nendpoint_url = \"http://b\"").unwrap();
        assert_eq!(both.common.endpoint_url(), Some("http://b"));
        assert_eq!(
            keys(&both.common.validate("kinesis")),
            vec!["kinesis.endpoint"]
        );
    }

    #[test]
    fn every_problem_names_its_full_key() {
        let a = AwsConnection {
            region: Some(" ".into()),
            endpoint_url: Some("127.0.0.1:4567".into()),
            access_key_id: Some("k".into()),
            ..AwsConnection::default()
        };
        assert_eq!(
            keys(&a.validate("kinesis")),
            vec![
                "kinesis.region",
                "kinesis.endpoint_url",
                "kinesis.secret_access_key"
            ]
        );
        let b = AwsConnection {
            secret_access_key: Some("s".into()),
            secret_access_key_env: Some("A=B".into()),
            ..AwsConnection::default()
        };
        assert_eq!(
            keys(&b.validate("")),
            vec![
                "secret_access_key",
                "secret_access_key_env",
                "access_key_id"
            ]
        );
        assert!(AwsConnection::default().validate("kinesis").is_empty());
    }

    #[test]
    fn the_secret_may_come_from_the_environment() {
        let var = format!("LW_RUNTIME_TEST_SECRET_{}", std::process::id());
        let a = AwsConnection {
            access_key_id: Some("k".into()),
            secret_access_key_env: Some(var.clone()),
            ..AwsConnection::default()
        };
        assert!(a.validate("kinesis").is_empty());
        let err = a.static_credentials("kinesis").unwrap_err();
        assert!(
            err.to_string().contains("kinesis.secret_access_key_env"),
            "{err}"
        );
        // A variable every test process has (setting one would race other threads).
        let from_env = AwsConnection {
            secret_access_key_env: Some("PATH".into()),
            ..a
        };
        let (id, secret) = from_env.static_credentials("kinesis").unwrap().unwrap();
        assert_eq!(id, "k");
        assert_eq!(secret.expose(), std::env::var("PATH").unwrap());
        assert_eq!(
            AwsConnection::default().static_credentials("x").unwrap(),
            None
        );
    }

    #[test]
    fn the_secret_may_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("lw-aws-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let a = AwsConnection {
            access_key_id: Some("k".into()),
            secret_access_key_file: Some(path.clone()),
            ..AwsConnection::default()
        };
        assert!(a.validate("kinesis").is_empty());
        let (_, secret) = a.static_credentials("kinesis").unwrap().unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        std::fs::remove_file(&path).unwrap();
        let err = a.static_credentials("kinesis").unwrap_err().to_string();
        assert!(
            err.starts_with("kinesis.secret_access_key_file: cannot read"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_static_config_loads_without_the_environment_and_logs_no_secret() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        let a = AwsConnection {
            region: Some("eu-central-1".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("hunter2".into()),
            ..AwsConnection::default()
        };
        let sdk = a
            .load("kinesis", AwsTimeouts::per_call(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-central-1"));
        assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:1"));
        let t = sdk.timeout_config().unwrap();
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(
            sdk.retry_config().unwrap().max_attempts(),
            1,
            "SDK retries are off"
        );
        let creds = sdk
            .credentials_provider()
            .unwrap()
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(creds.secret_access_key(), "hunter2");
        let log = buf.text();
        assert!(
            log.contains("kinesis.endpoint") && log.contains("deprecated"),
            "{log}"
        );
        assert!(!log.contains("hunter2"), "{log}");
        assert!(!format!("{a:?}").contains("hunter2"));

        let bad = AwsConnection {
            access_key_id: Some("k".into()),
            ..a.clone()
        };
        let bad = AwsConnection {
            secret_access_key: None,
            ..bad
        };
        let err = bad
            .load("kinesis", AwsTimeouts::per_call(Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, AwsError::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains("kinesis.secret_access_key"),
            "{err}"
        );
    }

    #[test]
    fn connecting_gets_at_most_three_seconds() {
        assert_eq!(
            AwsTimeouts::per_call(Duration::from_secs(30)).connect,
            Duration::from_secs(3)
        );
        assert_eq!(
            AwsTimeouts::per_call(Duration::from_secs(1)).connect,
            Duration::from_secs(1)
        );
    }
}
