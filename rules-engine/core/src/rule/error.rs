//! Why a rule was rejected, in terms an author can act on.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleErrorKind {
    /// The script is not valid Rhai.
    Syntax,
    /// The script failed while producing its definition (type error, `throw`, ...).
    Runtime,
    /// The script hit a sandbox limit (operations, deadline, sizes, depth).
    Limit,
    /// The script ran but what it produced is not a valid rule definition.
    Definition,
}

impl fmt::Display for RuleErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleErrorKind::Syntax => "syntax error",
            RuleErrorKind::Runtime => "script error",
            RuleErrorKind::Limit => "sandbox limit",
            RuleErrorKind::Definition => "invalid definition",
        })
    }
}

/// A rejected rule: where (origin, rule, group, line) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleError {
    pub kind: RuleErrorKind,
    /// Where the script came from (a file path, an MQTT topic).
    pub origin: String,
    /// The rule id, once the script got far enough to name one.
    pub rule: Option<String>,
    pub group: Option<String>,
    /// 1-based line in the script, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl RuleError {
    pub(crate) fn new(kind: RuleErrorKind, origin: &str, message: impl Into<String>) -> Self {
        RuleError {
            kind,
            origin: origin.to_owned(),
            rule: None,
            group: None,
            line: None,
            message: message.into(),
        }
    }
    pub(crate) fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = self.line.or(line);
        self
    }
    pub(crate) fn in_rule(mut self, rule: Option<&str>) -> Self {
        if self.rule.is_none() {
            self.rule = rule.map(str::to_owned);
        }
        self
    }
    pub(crate) fn in_group(mut self, group: Option<&str>) -> Self {
        if self.group.is_none() {
            self.group = group.map(str::to_owned);
        }
        self
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(rule) = &self.rule {
            write!(f, "rule \"{rule}\": ")?;
        }
        if let Some(group) = &self.group {
            write!(f, "group \"{group}\": ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for RuleError {}
