//! Configuration problems, collected: validation reports every problem at once, each
//! naming the full key path (`sources[0].groups[1].tags[2].address`), so an operator
//! fixes a file in one round instead of one error per run.

use std::fmt;

/// One problem: the key path and what is wrong with its value. Displays as `key: message`
/// (or just the message when no key is at fault, e.g. a TOML syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    /// The key's line in the file (1-based), when known: see [`Problems::render`].
    pub line: Option<usize>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Joins a key prefix and a key: `kinesis` + `region` → `kinesis.region`,
/// `sources` + `[0].id` → `sources[0].id`; an empty side is left out.
pub fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

/// The problems found so far. Displays as every problem joined by `; `.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Problems::default()
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    /// Adds `other`'s problems with `prefix` in front of each key (see [`join_key`]),
    /// e.g. a section validated on its own and placed under `kinesis`.
    pub fn extend_prefixed(&mut self, prefix: &str, other: Problems) {
        self.0.extend(other.0.into_iter().map(|p| Problem {
            key: join_key(prefix, &p.key),
            message: p.message,
            line: p.line,
        }));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Problem> {
        self.0.iter_mut()
    }

    /// In file order: by line, problems without a line last (stable otherwise).
    pub fn sort_by_line(&mut self) {
        self.0.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    }

    /// One line per problem, as `check` prints them: `file:line: key: message`
    /// (`file: key: message` when the line is not known).
    pub fn render(&self, file: &str) -> Vec<String> {
        self.0
            .iter()
            .map(|p| match p.line {
                Some(line) => format!("{file}:{line}: {p}"),
                None => format!("{file}: {p}"),
            })
            .collect()
    }

    pub fn as_slice(&self) -> &[Problem] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// Each problem as `key: message`, for callers that still hold `Vec<String>`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Problem::to_string).collect()
    }

    /// `Ok(())` when nothing was found, else every problem.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl From<Vec<Problem>> for Problems {
    fn from(v: Vec<Problem>) -> Self {
        Problems(v)
    }
}

impl From<Problems> for Vec<Problem> {
    fn from(p: Problems) -> Self {
        p.0
    }
}

impl Extend<Problem> for Problems {
    fn extend<I: IntoIterator<Item = Problem>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl FromIterator<Problem> for Problems {
    fn from_iter<I: IntoIterator<Item = Problem>>(iter: I) -> Self {
        Problems(iter.into_iter().collect())
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_kept_in_order_and_shown() {
        let mut p = Problems::new();
        assert!(p.is_empty());
        p.push("gateway_id", "must not be empty");
        p.push("buffer.max_bytes", "must be at least 1048576 (1 MiB)");
        assert_eq!(p.len(), 2, "never stops at the first");
        assert_eq!(
            p.to_string(),
            "gateway_id: must not be empty; buffer.max_bytes: must be at least 1048576 (1 MiB)"
        );
        assert_eq!(p.iter().next().unwrap().key, "gateway_id");
        assert_eq!(p.clone().into_result(), Err(p));
        assert_eq!(Problems::new().into_result(), Ok(()));
    }

    #[test]
    fn a_section_is_placed_under_its_prefix() {
        let mut section = Problems::new();
        section.push("region", "must not be empty");
        section.push("[2].id", "duplicate");
        section.push("", "is missing");
        let mut all = Problems::new();
        all.push("gateway_id", "x");
        all.extend_prefixed("kinesis", section);
        let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["gateway_id", "kinesis.region", "kinesis[2].id", "kinesis"]
        );
        let mut top = Problems::new();
        let mut one = Problems::new();
        one.push("stream", "bad");
        top.extend_prefixed("", one);
        assert_eq!(top.to_strings(), vec!["stream: bad"]);
    }
}
