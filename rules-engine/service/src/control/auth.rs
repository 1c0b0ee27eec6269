//! Signed rules and signed statuses (Ed25519).
//!
//! A rule author signs what a rule message *does*: the operation (upsert or delete),
//! the rule id, the version and, for an upsert, the script — so a signed version 3
//! cannot be replayed as a delete, under another rule id or as another version. The
//! engine signs its status messages with its own key, so `publish`/`delete` can tell
//! the engine's answer from anyone else's.
//!
//! Key files are one line of text: a label and 64 hex digits (the 32-byte seed of a
//! secret key, or a public key). Pure except for [`read_secret_key`],
//! [`read_public_key`] and [`write_key_pair`].

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SECRET_LABEL: &str = "linewatch-ed25519-secret-key";
pub const PUBLIC_LABEL: &str = "linewatch-ed25519-public-key";

/// Domain separation: a rule signature never verifies as a status signature and back.
const RULE_DOMAIN: &[u8] = b"linewatch rule v1\0";
const STATUS_DOMAIN: &[u8] = b"linewatch status v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
}

/// `sig` over the signing bytes by the key `key` (both hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's public key (hex): picks the trusted key to verify with.
    pub key: String,
    /// The 64-byte Ed25519 signature (hex).
    pub sig: String,
}

/// What a rule message asks for: the part of it a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    Upsert { script: &'a str },
    Delete,
}

/// The bytes an author signs: domain, operation, rule id, version, script. Rule ids
/// cannot hold NUL and the version is decimal, so the encoding is unambiguous.
pub fn rule_signing_bytes(rule_id: &str, version: u64, op: Operation<'_>) -> Vec<u8> {
    let (name, script) = match op {
        Operation::Upsert { script } => ("upsert", script),
        Operation::Delete => ("delete", ""),
    };
    let mut b = Vec::with_capacity(RULE_DOMAIN.len() + rule_id.len() + script.len() + 40);
    b.extend_from_slice(RULE_DOMAIN);
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(rule_id.as_bytes());
    b.push(0);
    b.extend_from_slice(version.to_string().as_bytes());
    b.push(0);
    b.extend_from_slice(script.as_bytes());
    b
}

/// The bytes the engine signs for a status: domain and the status JSON without its
/// signature (as the engine encoded it; re-encoding a decoded status gives the same).
pub fn status_signing_bytes(unsigned_json: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(STATUS_DOMAIN.len() + unsigned_json.len());
    b.extend_from_slice(STATUS_DOMAIN);
    b.extend_from_slice(unsigned_json);
    b
}

/// A secret key. Its `Debug` does not show the key.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public().to_hex())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SecretKey {
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, std::io::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(SecretKey::from_seed(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, bytes: &[u8]) -> Signature {
        Signature {
            key: self.public().to_hex(),
            sig: hex::encode(self.0.sign(bytes).to_bytes()),
        }
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_LABEL} {}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn parse(text: &str) -> Result<SecretKey, String> {
        parse_labelled(text, SECRET_LABEL, PUBLIC_LABEL).map(SecretKey::from_seed)
    }
}

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn to_file_text(&self) -> String {
        format!("{PUBLIC_LABEL} {}\n", self.to_hex())
    }

    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = parse_labelled(text, PUBLIC_LABEL, SECRET_LABEL)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))
    }

    fn verify(&self, bytes: &[u8], sig: &Signature) -> Result<(), String> {
        let raw = hex::decode(&sig.sig).map_err(|e| format!("signature is not hex: {e}"))?;
        let raw: [u8; 64] = raw
            .try_into()
            .map_err(|v: Vec<u8>| format!("signature has {} bytes, expected 64", v.len()))?;
        self.0
            .verify(bytes, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| format!("signature by key {} does not match the message", sig.key))
    }
}

fn parse_labelled(text: &str, label: &str, other: &str) -> Result<[u8; 32], String> {
    let line = text.trim();
    let Some(rest) = line.strip_prefix(label) else {
        if line.starts_with(other) {
            return Err(format!("this is a {other} file, expected a {label}"));
        }
        return Err(format!("expected one line `{label} <64 hex digits>`"));
    };
    let bytes = hex::decode(rest.trim()).map_err(|e| format!("key is not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| format!("key has {} bytes, expected 32", v.len()))
}

/// The keys a signature may come from, and whether unsigned messages pass.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
    accept_unsigned: bool,
}

/// How a message passed [`Trust::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by this trusted key (hex).
    Signed(String),
    /// Unsigned, let through because `accept_unsigned` is on.
    UnsignedAccepted,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>, accept_unsigned: bool) -> Trust {
        Trust {
            keys,
            accept_unsigned,
        }
    }

    pub fn accept_unsigned(&self) -> bool {
        self.accept_unsigned
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Does `sig` (or its absence) authorise `bytes`? `Err` says why not.
    pub fn check(&self, bytes: &[u8], sig: Option<&Signature>) -> Result<Verdict, String> {
        let Some(sig) = sig else {
            return if self.accept_unsigned {
                Ok(Verdict::UnsignedAccepted)
            } else {
                Err("the message is not signed (mqtt.auth requires signed rules)".into())
            };
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.to_hex().eq_ignore_ascii_case(&sig.key))
            .ok_or_else(|| format!("signed by key {}, which is not trusted", sig.key))?;
        key.verify(bytes, sig)?;
        Ok(Verdict::Signed(key.to_hex()))
    }
}

pub fn read_secret_key(path: &Path) -> Result<SecretKey, KeyError> {
    let text = read(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::Format {
                    path: path.to_owned(),
                    why: format!(
                        "a secret key readable by others (mode {:o}); chmod 600 it",
                        meta.permissions().mode() & 0o777
                    ),
                });
            }
        }
    }
    SecretKey::parse(&text).map_err(|why| KeyError::Format {
        path: path.to_owned(),
        why,
    })
}

pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    PublicKey::parse(&read(path)?).map_err(|why| KeyError::Format {
        path: path.to_owned(),
        why,
    })
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `{stem}.key` (mode 0600, never overwritten) and `{stem}.pub`; returns the
/// two paths.
pub fn write_key_pair(stem: &Path, key: &SecretKey) -> Result<(PathBuf, PathBuf), KeyError> {
    use std::io::Write;
    let secret = stem.with_extension("key");
    let public = stem.with_extension("pub");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&secret).map_err(io(&secret))?;
    f.write_all(key.to_file_text().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&secret))?;
    std::fs::write(&public, key.public().to_file_text()).map_err(io(&public))?;
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn a_signature_covers_operation_id_version_and_script() {
        let k = key(1);
        let trust = Trust::new(vec![k.public()], false);
        let bytes = rule_signing_bytes("r1", 3, Operation::Upsert { script: "#{}" });
        let sig = k.sign(&bytes);
        assert_eq!(
            trust.check(&bytes, Some(&sig)),
            Ok(Verdict::Signed(k.public().to_hex()))
        );
        for other in [
            rule_signing_bytes("r1", 3, Operation::Delete),
            rule_signing_bytes("r2", 3, Operation::Upsert { script: "#{}" }),
            rule_signing_bytes("r1", 4, Operation::Upsert { script: "#{}" }),
            rule_signing_bytes("r1", 3, Operation::Upsert { script: "#{ }" }),
            status_signing_bytes(&bytes),
        ] {
            let err = trust.check(&other, Some(&sig)).unwrap_err();
            assert!(err.contains("does not match"), "{err}");
        }
    }

    #[test]
    fn unsigned_and_untrusted_and_garbled_signatures_are_refused() {
        let bytes = rule_signing_bytes("r", 1, Operation::Delete);
        let strict = Trust::new(vec![key(1).public()], false);
        assert!(strict
            .check(&bytes, None)
            .unwrap_err()
            .contains("not signed"));
        let err = strict
            .check(&bytes, Some(&key(2).sign(&bytes)))
            .unwrap_err();
        assert!(err.contains("not trusted"), "{err}");
        let mut sig = key(1).sign(&bytes);
        sig.sig.truncate(10);
        assert!(strict
            .check(&bytes, Some(&sig))
            .unwrap_err()
            .contains("5 bytes"));
        sig.sig = "zz".into();
        assert!(strict
            .check(&bytes, Some(&sig))
            .unwrap_err()
            .contains("not hex"));
        let lax = Trust::new(vec![], true);
        assert_eq!(lax.check(&bytes, None), Ok(Verdict::UnsignedAccepted));
        // accept_unsigned does not make a bad signature good.
        assert!(lax.check(&bytes, Some(&key(2).sign(&bytes))).is_err());
    }

    #[test]
    fn key_files_round_trip_and_are_not_mixed_up() {
        let k = key(7);
        assert_eq!(
            SecretKey::parse(&k.to_file_text()).unwrap().public(),
            k.public()
        );
        assert_eq!(
            PublicKey::parse(&k.public().to_file_text()).unwrap(),
            k.public()
        );
        let err = SecretKey::parse(&k.public().to_file_text()).unwrap_err();
        assert!(err.contains("public-key file"), "{err}");
        let err = PublicKey::parse(&k.to_file_text()).unwrap_err();
        assert!(err.contains("secret-key file"), "{err}");
        assert!(PublicKey::parse("hello").is_err());
        assert!(!format!("{k:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn keygen_writes_a_private_file_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("author");
        let k = SecretKey::generate().unwrap();
        let (secret, public) = write_key_pair(&stem, &k).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret_key(&secret).unwrap().public(), k.public());
        assert_eq!(read_public_key(&public).unwrap(), k.public());
        assert!(write_key_pair(&stem, &k).is_err(), "overwrote a key");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_key(&secret).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
    }

    proptest! {
        #[test]
        fn signing_bytes_are_injective(a in "[a-z:._-]{1,8}", b in "[a-z:._-]{1,8}",
                                       va in 0u64..1000, vb in 0u64..1000,
                                       sa in "\\PC{0,8}", sb in "\\PC{0,8}") {
            let x = rule_signing_bytes(&a, va, Operation::Upsert { script: &sa });
            let y = rule_signing_bytes(&b, vb, Operation::Upsert { script: &sb });
            prop_assert_eq!(x == y, a == b && va == vb && sa == sb);
        }
    }
}
