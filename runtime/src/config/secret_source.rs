//! Where a secret comes from: inline in the file, an environment variable, or a file of
//! its own. Every secret key `x` of both programs accepts `x`, `x_env` and `x_file`; this
//! module checks that at most one is given and reads the chosen one, naming the key at
//! fault. A file suits container and systemd secrets (`/run/secrets/...`,
//! `LoadCredential=`); its trailing newline is not part of the secret.

use super::Secret;
use crate::problems::{join_key, Problems};
use std::path::{Path, PathBuf};

/// The three ways one secret can be given, as read from a table.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretKeys<'a> {
    pub inline: Option<&'a str>,
    pub env: Option<&'a str>,
    pub file: Option<&'a Path>,
}

/// Why a configured secret could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("{key}: environment variable {var} is not set (or not UTF-8)")]
    MissingEnv { key: String, var: String },
    #[error("{key}: cannot read {path}: {reason}")]
    File {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {path} is empty")]
    EmptyFile { key: String, path: PathBuf },
}

impl<'a> SecretKeys<'a> {
    pub fn new(inline: Option<&'a str>, env: Option<&'a str>, file: Option<&'a Path>) -> Self {
        SecretKeys { inline, env, file }
    }

    /// Whether any of the three is given.
    pub fn is_given(&self) -> bool {
        self.inline.is_some() || self.env.is_some() || self.file.is_some()
    }

    /// Problems with the keys of secret `name` under `prefix` (`webhooks[0].auth`,
    /// `password`): more than one source, a malformed variable name, an empty path.
    /// Does not read the variable or the file (a config check on another machine must
    /// not fail for want of them).
    pub fn check(&self, prefix: &str, name: &str) -> Problems {
        let mut p = Problems::new();
        let given: Vec<String> = [
            self.inline.map(|_| name.to_owned()),
            self.env.map(|_| format!("{name}_env")),
            self.file.map(|_| format!("{name}_file")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            p.push(
                join_key(prefix, &given[0]),
                format!("give only one of {}", given.join(", ")),
            );
        }
        if let Some(var) = self.env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                p.push(
                    join_key(prefix, &format!("{name}_env")),
                    format!("{var:?} is not an environment variable name"),
                );
            }
        }
        if let Some(path) = self.file {
            if path.as_os_str().is_empty() {
                p.push(join_key(prefix, &format!("{name}_file")), "is empty");
            }
        }
        p
    }

    /// The secret, read from where it is configured (inline first, as [`Self::check`]
    /// allows only one); `None` when none of the three is given.
    pub fn resolve(&self, prefix: &str, name: &str) -> Result<Option<Secret>, SecretError> {
        self.resolve_with(
            prefix,
            name,
            |var| std::env::var(var).ok(),
            |path| std::fs::read_to_string(path).map_err(|e| e.to_string()),
        )
    }

    /// [`Self::resolve`] with the environment and the file system injected (tests).
    pub fn resolve_with(
        &self,
        prefix: &str,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> Result<String, String>,
    ) -> Result<Option<Secret>, SecretError> {
        if let Some(s) = self.inline {
            return Ok(Some(Secret::new(s)));
        }
        if let Some(var) = self.env {
            return env(var)
                .map(|v| Some(Secret::new(v)))
                .ok_or_else(|| SecretError::MissingEnv {
                    key: join_key(prefix, &format!("{name}_env")),
                    var: var.to_owned(),
                });
        }
        if let Some(path) = self.file {
            let key = join_key(prefix, &format!("{name}_file"));
            let text = read(path).map_err(|reason| SecretError::File {
                key: key.clone(),
                path: path.to_owned(),
                reason,
            })?;
            // One trailing line end, as `echo` and editors leave it; inner spaces stay.
            let value = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            if value.is_empty() {
                return Err(SecretError::EmptyFile {
                    key,
                    path: path.to_owned(),
                });
            }
            return Ok(Some(Secret::new(value)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn at_most_one_source() {
        let keys = SecretKeys::new(Some("x"), Some("VAR"), Some(Path::new("/run/s")));
        let p = keys.check("webhooks[0].auth", "secret");
        assert_eq!(p.len(), 1, "{p:?}");
        let shown = &p.as_slice()[0];
        assert_eq!(shown.key, "webhooks[0].auth.secret");
        assert!(shown.message.contains("secret_env") && shown.message.contains("secret_file"));
        assert!(SecretKeys::new(None, Some("VAR"), None)
            .check("", "password")
            .is_empty());
    }

    #[test]
    fn malformed_names_and_paths_are_problems() {
        let p = SecretKeys::new(None, Some("A=B"), None).check("mqtt", "password");
        assert_eq!(p.as_slice()[0].key, "mqtt.password_env");
        let p = SecretKeys::new(None, None, Some(Path::new(""))).check("mqtt", "password");
        assert_eq!(p.as_slice()[0].key, "mqtt.password_file");
    }

    #[test]
    fn a_file_loses_its_line_end_only() {
        let keys = SecretKeys::new(None, None, Some(Path::new("/run/secrets/pw")));
        let got = keys
            .resolve_with("mqtt", "password", no_env, |_| Ok(" two words \n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), " two words ");
        let got = keys
            .resolve_with("mqtt", "password", no_env, |_| Ok("crlf\r\n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "crlf");
    }

    #[test]
    fn failures_name_the_key_and_never_the_value() {
        let keys = SecretKeys::new(None, None, Some(Path::new("/nope")));
        let e = keys
            .resolve_with("kinesis", "secret_access_key", no_env, |_| {
                Err("No such file or directory".into())
            })
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("kinesis.secret_access_key_file: cannot read /nope"));
        let e = keys
            .resolve_with("k", "s", no_env, |_| Ok("\n".into()))
            .unwrap_err();
        assert!(matches!(e, SecretError::EmptyFile { .. }));
        let e = SecretKeys::new(None, Some("PW"), None)
            .resolve_with("mqtt", "password", no_env, |_| unreachable!())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mqtt.password_env: environment variable PW is not set (or not UTF-8)"
        );
    }

    #[test]
    fn none_given_is_none() {
        let got = SecretKeys::default()
            .resolve_with("", "x", no_env, |_| unreachable!())
            .unwrap();
        assert!(got.is_none());
    }
}
