//! `linewatch-rules dead-letters list|replay --config FILE [--target NAME] [--id ID]...`:
//! inspect and resend webhook events the engine could not deliver. Both work on the store
//! directly (`{state_dir}/dead-letters/webhooks`), without a lock, while the engine runs.

use crate::output::dead_letter::{DeadLetterError, DeadLetterStore};
use crate::output::webhook;
pub use crate::output::webhook::{ReplayError, ReplayReport};
use crate::output::WebhookConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The `dead-letters` subcommand; `main` loads `--config` for `state_dir` and `webhooks`.
#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// Print the entries as NDJSON, oldest last attempt first.
    List {
        /// The service configuration (for `state_dir`).
        #[arg(long)]
        config: PathBuf,
        /// Only this webhook target.
        #[arg(long)]
        target: Option<String>,
    },
    /// POST entries once more to their target; delivered ones are removed.
    Replay {
        /// The service configuration (for `state_dir` and the targets with their auth).
        #[arg(long)]
        config: PathBuf,
        /// Only this webhook target.
        #[arg(long)]
        target: Option<String>,
        /// Only these event ids (repeatable); all entries when absent.
        #[arg(long = "id")]
        ids: Vec<Uuid>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Store(#[from] DeadLetterError),
    #[error("writing the list: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes the entries (of `target`, or all) as NDJSON, one per line; returns the count.
pub fn list(
    store_dir: &Path,
    target: Option<&str>,
    out: &mut impl Write,
) -> Result<usize, ListError> {
    let store = DeadLetterStore::existing(store_dir);
    let entries = store.list(target)?;
    for e in &entries {
        serde_json::to_writer(&mut *out, e).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(entries.len())
}

/// POSTs each selected entry once to its target with that target's auth: delivered →
/// removed; failed → kept with the reason updated; a target no longer configured is
/// reported and its entries kept. `ids` empty selects all (of `target`, if given).
pub async fn replay(
    store_dir: &Path,
    targets: &[WebhookConfig],
    target: Option<&str>,
    ids: &[Uuid],
) -> Result<ReplayReport, ReplayError> {
    webhook::replay(store_dir, targets, target, ids).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::dead_letter::DeadLetter;
    use crate::output::outbox::PendingEvent;

    #[test]
    fn list_writes_one_json_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path()).unwrap();
        for (n, t) in [(1u128, "a"), (2, "b")] {
            let ev = PendingEvent {
                id: Uuid::from_u128(n),
                transition_id: format!("r/e/{n}/1"),
                body: format!(r#"{{"n":{n}}}"#).into(),
                created_at_ms: 0,
            };
            let dl = DeadLetter::new(t, &ev, "rejected", Some(400), None, 1, n as u64, n as u64);
            store.put(&dl).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(list(dir.path(), None, &mut out).unwrap(), 2);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["target"], "a");
        assert_eq!(lines[1]["event"]["n"], 2);
        let mut out = Vec::new();
        assert_eq!(list(dir.path(), Some("b"), &mut out).unwrap(), 1);
    }

    #[test]
    fn listing_a_store_that_does_not_exist_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir
            .path()
            .join("state")
            .join("dead-letters")
            .join("webhooks");
        let mut out = Vec::new();
        assert_eq!(list(&store, None, &mut out).unwrap(), 0);
        assert_eq!(list(&store, Some("receiver"), &mut out).unwrap(), 0);
        assert!(out.is_empty());
        assert!(
            !dir.path().join("state").exists(),
            "a reader leaves no folders behind"
        );
    }
}
