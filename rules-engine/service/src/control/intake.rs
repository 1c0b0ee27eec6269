//! Between the control connection and the engine: checks each rule message's
//! signature and compiles it, on a task (and a blocking thread) of its own, so the
//! engine's task only applies finished rules and never waits for a compile.
//!
//! Bounded on both sides: the control connection's event queue in front, [`CAPACITY`]
//! finished items behind. When the engine falls behind, the queues fill and the
//! connection stops reading (TCP back-pressure); statuses have their own connection.

use super::auth::{Trust, Verdict};
use super::message::RulePayload;
use super::metrics::ControlMetrics;
use super::ControlEvent;
use linewatch_rules_core::engine::{CompiledRule, RuleCompiler};
use linewatch_rules_core::eval::Partition;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// Finished items waiting for the engine.
pub const CAPACITY: usize = 64;

/// What the engine gets, in the order the messages arrived.
#[derive(Debug)]
pub enum Intake {
    /// An authorised upsert, compiled (or found identical to what was compiled last).
    Upsert {
        compiled: CompiledRule,
        retained: bool,
    },
    /// An authorised delete: of any version (`None`, unsigned) or up to `version`.
    Delete {
        rule_id: String,
        version: Option<u64>,
        retained: bool,
    },
    /// Not authorised: unsigned, signed by an unknown key, or a signature that does
    /// not match. Nothing changes; the engine publishes a rejection.
    Refused {
        rule_id: String,
        version: Option<u64>,
        error: String,
    },
    /// Anything else from the connection, unchanged.
    Event(ControlEvent),
}

/// What the intake needs from the engine at start.
pub struct IntakeSetup {
    pub trust: Trust,
    pub compiler: RuleCompiler,
    pub partition: Partition,
    /// The rules the engine holds (from the checkpoint): identical messages are not
    /// compiled again.
    pub loaded: Vec<(String, u64, String)>,
    pub metrics: ControlMetrics,
}

fn script_hash(script: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    script.hash(&mut h);
    h.finish()
}

/// Start the intake task; it ends when `events` ends or the receiver is dropped.
pub fn spawn(
    mut events: mpsc::Receiver<ControlEvent>,
    setup: IntakeSetup,
) -> (mpsc::Receiver<Intake>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let IntakeSetup {
        trust,
        compiler,
        partition,
        loaded,
        metrics,
    } = setup;
    let mut known: HashMap<String, (u64, u64)> = loaded
        .into_iter()
        .map(|(id, v, script)| {
            let h = script_hash(&script);
            (id, (v, h))
        })
        .collect();
    let task = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let item = match ev {
                ControlEvent::Rule {
                    rule_id,
                    payload,
                    retained,
                } => {
                    if !partition.owns(&rule_id) {
                        continue; // another instance's: nothing to check, say or do
                    }
                    match payload.check(&rule_id, &trust) {
                        Err(error) => {
                            metrics.refused(if payload_signed(&payload) {
                                "bad_signature"
                            } else {
                                "unsigned"
                            });
                            warn!(rule = %rule_id, version = ?payload.version(), %error, "control topic: rule message refused (not authorised)");
                            Intake::Refused {
                                version: payload.version(),
                                rule_id,
                                error,
                            }
                        }
                        Ok(verdict) => {
                            if verdict == Verdict::UnsignedAccepted {
                                metrics.unsigned_accepted.inc();
                                warn!(rule = %rule_id, version = ?payload.version(), "control topic: UNSIGNED rule message accepted (mqtt.auth.accept_unsigned = true): anyone who can publish on the broker can change rules");
                            }
                            match payload {
                                RulePayload::Delete(d) => {
                                    known.remove(&rule_id);
                                    Intake::Delete {
                                        rule_id,
                                        version: d.version,
                                        retained,
                                    }
                                }
                                RulePayload::Upsert(m) => {
                                    let h = script_hash(&m.script);
                                    let same = known.get(&rule_id) == Some(&(m.version, h));
                                    let c = compiler.clone();
                                    let id = rule_id.clone();
                                    let compiled = tokio::task::spawn_blocking(move || {
                                        c.prepare_unless(&id, m.version, &m.script, same)
                                    })
                                    .await;
                                    match compiled {
                                        Ok(compiled) => {
                                            if compiled.compiled_ok() {
                                                known.insert(rule_id, (compiled.version, h));
                                            }
                                            Intake::Upsert { compiled, retained }
                                        }
                                        Err(e) => {
                                            error!(rule = %rule_id, error = %e, "control topic: compiling a rule panicked");
                                            Intake::Refused {
                                                rule_id,
                                                version: None,
                                                error: "the rule could not be compiled (internal error)".into(),
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                other => Intake::Event(other),
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

fn payload_signed(p: &RulePayload) -> bool {
    match p {
        RulePayload::Upsert(m) => m.signature.is_some(),
        RulePayload::Delete(d) => d.signature.is_some(),
    }
}
