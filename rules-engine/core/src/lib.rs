//! linewatch's rule engine core: Rhai rules with weighted condition groups and holds,
//! evaluated in event-time order under an idle-aware watermark, global or per equipment.
//!
//! Everything here is pure and clock-injected; I/O lives in the binary and (later) in
//! the service around it. Layout by concern:
//! * [`rule`]: a rule's definition, compilation and sandbox;
//! * [`eval`]: groups, holds, ranking, transitions, lifecycle — one worker's share;
//! * [`watermark`], [`reorder`], [`sequencer`]: arrival order → event-time order
//!   ([`clocks`]: the per-equipment clocks of the `equipment` scope;
//!   [`reading`]: what is kept of a data point meanwhile; [`resend`]: the agent's
//!   resends dropped on the way in);
//! * [`workers`]: N evaluators keyed by rule id, rule changes broadcast;
//! * [`replay`]: NDJSON in, transitions out.

pub mod clocks;
pub mod engine;
pub mod eval;
pub mod lifecycle;
mod pairmap;
pub mod reading;
pub mod reorder;
pub mod replay;
pub mod resend;
pub mod rule;
pub mod sequencer;
pub mod transition;
pub mod watermark;
pub mod workers;

pub use eval::{Diagnostic, DiagnosticKind, EvalStats, Evaluator, Output};
pub use lifecycle::{ChangeOutcome, RuleChange};
pub use reading::Reading;
pub use rule::{Limits, Rule, RuleError, RuleErrorKind, Sandbox};
pub use sequencer::{Admission, LatePolicy, Sequencer, SequencerConfig, Step, WatermarkScope};
pub use transition::{Event, EventSource, GroupExplanation, Transition};
pub use watermark::{
    Clock, ManualClock, SharedClock, SystemClock, WatermarkConfig, WatermarkTracker,
};
pub use workers::WorkerPool;
