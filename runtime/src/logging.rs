//! Log set-up for both programs: one line per event on stderr, as text for people or
//! as JSON for collectors, with the same JSON shape in both programs so one parser
//! (Loki, CloudWatch, `jq`) reads either.
//!
//! JSON lines carry the event's fields at the top level, next to `timestamp`, `level`,
//! `target` and `message` (`{"timestamp":…,"level":"WARN","fields":{…}}` nesting made
//! every query name a `fields.` prefix). `RUST_LOG` wins over the configured level.
//! Colours only when stderr is a terminal, so files and pipes get no escape codes.

use serde::Deserialize;
use std::fmt;
use std::io::IsTerminal;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `text` or `json` (lowercase in TOML and on the command line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// For `clap` (`value_parser` falls back to `FromStr`).
impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected \"text\" or \"json\", got {other:?}")),
        }
    }
}

/// Installs the global subscriber: `format` lines on stderr at `default_level` (a
/// tracing filter such as `info` or `linewatch_agent=debug`) unless `RUST_LOG` is set.
/// Returns `false` when a subscriber was already installed: a second call (tests, a
/// `check` before a `run`) never panics.
pub fn init(format: LogFormat, default_level: &str) -> bool {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rust_log.as_deref(), default_level);
    let ansi = std::io::stderr().is_terminal();
    tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr, ansi))
        .is_ok()
}

/// `RUST_LOG` when it is set and valid, else `default_level`.
fn filter(rust_log: Option<&str>, default_level: &str) -> EnvFilter {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level))
}

fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).with_ansi(false).finish()),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captured log output, for this crate's tests.
    #[derive(Clone, Default)]
    pub(crate) struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Buf {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, filter: EnvFilter, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sub = subscriber(format, filter, buf.clone(), false);
        tracing::subscriber::with_default(sub, f);
        buf.text()
    }

    #[test]
    fn json_lines_carry_the_event_fields_at_the_top_level() {
        let out = capture(LogFormat::Json, EnvFilter::new("info"), || {
            tracing::warn!(target: "lw::test", shard = "s-1", attempts = 3u64, "retrying");
        });
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "lw::test");
        assert_eq!(line["message"], "retrying");
        assert_eq!(line["shard"], "s-1");
        assert_eq!(line["attempts"], 3);
        assert!(line["timestamp"].is_string());
        assert!(line.get("fields").is_none(), "{out}");
    }

    #[test]
    fn text_lines_have_no_colour_codes_off_a_terminal() {
        let out = capture(LogFormat::Text, EnvFilter::new("info"), || {
            tracing::info!(n = 1, "hello");
        });
        assert!(out.contains("hello") && out.contains("n=1"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out:?}");
    }

    #[test]
    fn rust_log_overrides_the_level_and_a_bad_one_falls_back() {
        let quiet = capture(LogFormat::Text, filter(Some("warn"), "debug"), || {
            tracing::info!("not shown");
            tracing::warn!("shown");
        });
        assert!(
            !quiet.contains("not shown") && quiet.contains("shown"),
            "{quiet}"
        );
        let fallback = capture(LogFormat::Text, filter(Some("=[bad"), "info"), || {
            tracing::info!("default level applies");
        });
        assert!(fallback.contains("default level applies"), "{fallback}");
        let unset = capture(LogFormat::Text, filter(None, "error"), || {
            tracing::warn!("below the default");
        });
        assert!(unset.is_empty(), "{unset}");
    }

    #[test]
    fn init_twice_does_not_panic() {
        let first = init(LogFormat::Json, "info");
        assert!(
            !init(LogFormat::Text, "info"),
            "the second call reports it did nothing"
        );
        let _ = first;
    }

    #[test]
    fn format_reads_lowercase() {
        #[derive(Deserialize)]
        struct T {
            log_format: LogFormat,
        }
        let t: T = toml::from_str(r#"log_format = "json""#).unwrap();
        assert_eq!(t.log_format, LogFormat::Json);
        assert!(toml::from_str::<T>(r#"log_format = "JSON""#).is_err());
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::Json.to_string(), "json");
    }
}
