//! One POST per event: the envelope as the body, `content-type: application/json`, the
//! target's extra headers and its auth. Building is pure (no I/O, the time is passed in)
//! so the exact request can be checked in tests.

use super::config::{ResolvedAuth, ResolvedWebhook, HMAC_TIMESTAMP_HEADER};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use sha2::Sha256;

const AGENT: &str = concat!("linewatch-rules/", env!("CARGO_PKG_VERSION"));

/// `v1=<hex of HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The request for one attempt. `now_unix_s` is the signature timestamp.
pub fn build_request(
    client: &reqwest::Client,
    target: &ResolvedWebhook,
    body: &str,
    now_unix_s: u64,
) -> Result<reqwest::Request, reqwest::Error> {
    let cfg = &target.config;
    let mut req = client
        .post(&cfg.url)
        .timeout(cfg.timeout)
        .header(USER_AGENT, AGENT);
    // Names and values were checked with the config; a bad one is skipped, not fatal.
    for (name, value) in &cfg.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req = req.header(n, v);
        }
    }
    req = req.header(CONTENT_TYPE, "application/json");
    match &target.auth {
        None => {}
        Some(ResolvedAuth::ApiKey { header, value }) => {
            // Checked to be a valid header value when the secret was resolved.
            if let Ok(mut v) = HeaderValue::from_str(value.expose()) {
                v.set_sensitive(true);
                req = req.header(header.as_str(), v);
            }
        }
        Some(ResolvedAuth::Basic { username, password }) => {
            req = req.basic_auth(username, Some(password.expose()));
        }
        Some(ResolvedAuth::Hmac { header, secret }) => {
            req = req
                .header(HMAC_TIMESTAMP_HEADER, now_unix_s.to_string())
                .header(
                    header.as_str(),
                    sign(secret.expose().as_bytes(), now_unix_s, body),
                );
        }
    }
    req.body(body.to_owned()).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::webhook::config::{AuthConfig, WebhookConfig};

    fn target(auth: Option<AuthConfig>) -> ResolvedWebhook {
        let mut w = WebhookConfig::new("t", "http://127.0.0.1:9/hook");
        w.headers.insert("x-tenant".into(), "plant-3".into());
        w.auth = auth;
        w.resolve_with(|_| None).unwrap()
    }

    fn header<'a>(r: &'a reqwest::Request, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn hmac_signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"key", 1_700_000_000, "{}"),
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn plain_request_has_body_and_headers() {
        let c = reqwest::Client::new();
        let r = build_request(&c, &target(None), r#"{"id":"x"}"#, 5).unwrap();
        assert_eq!(r.method(), reqwest::Method::POST);
        assert_eq!(r.url().as_str(), "http://127.0.0.1:9/hook");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "x-tenant"), Some("plant-3"));
        assert_eq!(
            r.body().and_then(|b| b.as_bytes()),
            Some(&br#"{"id":"x"}"#[..])
        );
        assert_eq!(r.timeout(), Some(&std::time::Duration::from_secs(10)));
    }

    #[test]
    fn each_auth_kind_sets_its_headers() {
        let c = reqwest::Client::new();
        let r = build_request(
            &c,
            &target(Some(AuthConfig::ApiKey {
                header: "x-api-key".into(),
                value: Some("k1".into()),
                value_env: None,
                value_file: None,
            })),
            "{}",
            5,
        )
        .unwrap();
        assert_eq!(header(&r, "x-api-key"), Some("k1"));
        assert!(r.headers()["x-api-key"].is_sensitive());

        let r = build_request(
            &c,
            &target(Some(AuthConfig::Basic {
                username: "user".into(),
                password: Some("pass".into()),
                password_env: None,
                password_file: None,
            })),
            "{}",
            5,
        )
        .unwrap();
        assert_eq!(header(&r, "authorization"), Some("Basic dXNlcjpwYXNz"));

        let r = build_request(
            &c,
            &target(Some(AuthConfig::Hmac {
                secret: Some("key".into()),
                secret_env: None,
                secret_file: None,
                header: "x-linewatch-signature".into(),
            })),
            "{}",
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(header(&r, "x-linewatch-timestamp"), Some("1700000000"));
        assert_eq!(
            header(&r, "x-linewatch-signature"),
            Some(sign(b"key", 1_700_000_000, "{}").as_str())
        );
    }
}
