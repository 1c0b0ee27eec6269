//! A secret configuration value (a password, an AWS secret key).

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A string that must not leak: `Debug` prints `Secret(***)`, there is no `Display`,
/// and the value is only reachable through [`Secret::expose`], which makes every use
/// visible in review.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct C {
            key: Secret,
        }
        let c: C = toml::from_str(r#"key = "hunter2""#).unwrap();
        assert_eq!(c.key.expose(), "hunter2");
        let shown = format!("{c:?} {:#?}", c);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }
}
