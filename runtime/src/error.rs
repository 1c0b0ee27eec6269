//! An error with its causes on one line, each cause said once.
//!
//! The project's error types put their cause into their own text (`cannot read x: No such
//! file`), so a log line that shows only `Display` still says why. A printer that also walks
//! `source()` (anyhow's `{:#}`) then says the cause twice (`cannot read x: No such file: No
//! such file`). [`chain`] walks the sources but leaves out a cause whose text is already
//! shown.

use std::error::Error;

/// `e: cause: cause's cause`, leaving out any cause whose text is already part of the line.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the config")]
    struct Outer(#[source] Read);

    #[test]
    fn a_cause_already_in_the_text_is_said_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Read {
            path: "a.toml".into(),
            source: io(),
        };
        let want = format!("cannot read a.toml: {}", io());
        assert_eq!(chain(&e), want);
        assert_eq!(chain(&Outer(e)), format!("loading the config: {want}"));
    }

    #[test]
    fn a_cause_not_in_the_text_is_added() {
        #[derive(Debug, thiserror::Error)]
        #[error("opening the buffer")]
        struct Quiet(#[source] std::io::Error);
        let e = Quiet(std::io::Error::other("disk full"));
        assert_eq!(chain(&e), "opening the buffer: disk full");
    }
}
