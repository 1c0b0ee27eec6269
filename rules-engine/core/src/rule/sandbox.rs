//! The Rhai engine every rule runs in: resource limits, no `eval`, no modules,
//! no clock, and a wall-clock budget per evaluation.
//!
//! The limits on operations, sizes and depths are deterministic: the same script on the
//! same values hits them every time, so hitting one disables the group. The budget is
//! not (a CPU stall can trip it), so hitting it fails only that one evaluation; a rule
//! that keeps exceeding it is quarantined, a decision recorded in the checkpoint and
//! published, never recomputed. Compiling a rule uses the deterministic limits only,
//! so whether a rule is accepted depends on its text alone.

use super::Shape;
use rhai::{Dynamic, Engine, EvalAltResult, Position};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Resource limits of one evaluation (a rule's top level or one group call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Limits {
    /// Rhai operations per evaluation (a typical group needs a few dozen).
    pub max_operations: u64,
    /// Nesting of function calls.
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions.
    pub max_expr_depth: usize,
    pub max_fn_expr_depth: usize,
    /// Bytes of one string, elements of one array (nested arrays count), entries of one
    /// map. Small on purpose: they also bound what one built-in call (`pad`, `split`,
    /// `+`) can cost between two clock checks.
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables alive at once and functions a script may define.
    pub max_variables: usize,
    pub max_functions: usize,
    /// Size of a rule's source text.
    pub max_script_bytes: usize,
    /// Fan-out of one rule: equipment × the tags of every group (each pair of an
    /// equipment and a group's tag is a slot of state). Checked at load.
    pub max_fan_out: u64,
    /// Estimated memory of one rule (source, equipment ids, values its closures
    /// captured, state slots), checked at load; see [`crate::rule::Rule::footprint`].
    pub max_rule_bytes: u64,
    /// The same estimate summed over every loaded rule, checked by the engine.
    pub max_total_rule_bytes: u64,
    /// Wall-clock budget of one evaluation, from the start of the call; catches what
    /// the operation count cannot (e.g. slow native calls). A call stopped by it fails
    /// that evaluation only; a call that finished over it still counts as over.
    #[serde(with = "humantime_ms")]
    pub eval_deadline: Duration,
    /// Evaluations of one rule in a row over `eval_deadline` before the rule is
    /// quarantined (no longer evaluated until a new version). 0: never.
    pub quarantine_after: u32,
}

/// Size limits of a rule's definition (evaluated once, at compile): room for the
/// documented maxima (1,024 equipment ids of up to 64 characters, 64 groups).
pub const DEFINITION_MAX_STRING_BYTES: usize = 1024 * 1024;
pub const DEFINITION_MAX_ARRAY_LEN: usize = 65_536;

/// 1,024 equipment × 64 group tags, or 64 equipment × 1,024 (64 groups of 16 tags).
pub const DEFAULT_MAX_FAN_OUT: u64 = 65_536;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            max_call_levels: 16,
            max_expr_depth: 64,
            max_fn_expr_depth: 32,
            max_string_size: 4 * 1024,
            max_array_size: 1_024,
            max_map_size: 256,
            max_variables: 256,
            max_functions: 64,
            max_script_bytes: 64 * 1024,
            max_fan_out: DEFAULT_MAX_FAN_OUT,
            max_rule_bytes: 16 * 1024 * 1024,
            max_total_rule_bytes: 1024 * 1024 * 1024,
            eval_deadline: Duration::from_millis(50),
            quarantine_after: 5,
        }
    }
}

mod humantime_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// The deadline of the evaluation in progress, read by the engine's progress hook.
/// Set from the clock when each call starts, so the budget covers the whole call.
#[derive(Debug)]
struct Deadline {
    budget_ns: u64,
    /// Read the coarse clock (see [`coarse`]): the budget is long enough for it.
    coarse: bool,
    /// On the chosen clock; [`NEVER`] outside evaluations (compiling).
    at_ns: AtomicU64,
}

const NEVER: u64 = u64::MAX;

/// The budget's clock is read twice per group call, a few percent of a group
/// evaluation. Linux's coarse monotonic clock costs about 7 ns to read instead of
/// about 35 (CLOCK_MONOTONIC), at the resolution of the scheduler tick (1 to 4 ms):
/// used for budgets of at least ten ticks (the default 50 ms on a 4 ms tick), so
/// the budget is still kept to within a tenth.
#[cfg(target_os = "linux")]
mod coarse {
    fn read(clock: libc::clockid_t, getres: bool) -> Option<u64> {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill in.
        let rc = unsafe {
            if getres {
                libc::clock_getres(clock, &mut t)
            } else {
                libc::clock_gettime(clock, &mut t)
            }
        };
        (rc == 0).then(|| (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64)
    }

    /// Whether a budget of `budget_ns` may use the coarse clock.
    pub(super) fn fits(budget_ns: u64) -> bool {
        read(libc::CLOCK_MONOTONIC_COARSE, true)
            .is_some_and(|res| res > 0 && budget_ns >= res.saturating_mul(10))
    }

    pub(super) fn now_ns() -> Option<u64> {
        read(libc::CLOCK_MONOTONIC_COARSE, false)
    }
}

#[cfg(not(target_os = "linux"))]
mod coarse {
    pub(super) fn fits(_budget_ns: u64) -> bool {
        false
    }
    pub(super) fn now_ns() -> Option<u64> {
        None
    }
}

/// Nanoseconds since the first call, from `Instant` (CLOCK_MONOTONIC).
fn precise_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(NEVER - 1)
}

impl Deadline {
    fn now_ns(&self) -> u64 {
        let ns = if self.coarse {
            coarse::now_ns().unwrap_or(0)
        } else {
            precise_ns()
        };
        ns.min(NEVER - 1)
    }

    /// Called by the hook every [`CLOCK_CHECK_EVERY`] operations.
    fn expired(&self) -> bool {
        let at = self.at_ns.load(Ordering::Relaxed);
        at != NEVER && self.now_ns() > at
    }
}

/// Marker payload the progress hook terminates with, so a deadline is told apart from
/// a script's own `throw`.
const DEADLINE_MARK: &str = "linewatch: evaluation deadline exceeded";

/// What a deadline hit reports. Older versions disabled a group with this message and
/// checkpointed it; [`is_deadline_message`] recognises it on restore.
pub(crate) const DEADLINE_MESSAGE: &str = "evaluation deadline exceeded (the script ran too long)";

/// Was a group disabled (by an older version) for the deadline, not a deterministic limit?
pub(crate) fn is_deadline_message(message: &str) -> bool {
    message == DEADLINE_MESSAGE
}

/// How often (in operations) the progress hook looks at the clock: reading it on every
/// operation would cost more than the operation. With the size limits, 128 operations
/// of the costliest built-ins take well under a millisecond.
const CLOCK_CHECK_EVERY: u64 = 128;

/// A configured Rhai engine. Compile and evaluate rules only through one of these.
pub struct Sandbox {
    engine: Engine,
    /// Evaluates a rule's definition (the object literal, once, at compile) under wider
    /// size limits: Rhai counts the strings of a container together, so a definition
    /// with 1,024 equipment ids would not fit the 4 KiB a condition's call gets. The
    /// fan-out and memory budgets bound what a definition may hold.
    definer: Engine,
    deadline: Arc<Deadline>,
    limits: Limits,
    shapes: Mutex<Shapes>,
}

/// Rule shapes (code) shared between rules whose code is identical (rules made from
/// one template differ only in ids and constants). One copy in memory instead of
/// thousands, and hot in the cache when any of them runs.
#[derive(Default)]
struct Shapes {
    /// Hash of the shape's identity text → (that text, the shape).
    by_hash: HashMap<u64, Vec<(String, Weak<Shape>)>>,
    /// Entries, and how many were alive at the last sweep: sweep when the table has
    /// doubled since, so dead shapes cost amortised O(1) and never pile up.
    entries: usize,
    live_at_sweep: usize,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn new(limits: Limits) -> Self {
        let mut engine = Self::build(&limits, limits.max_string_size, limits.max_array_size);
        let definer = Self::build(
            &limits,
            limits.max_string_size.max(DEFINITION_MAX_STRING_BYTES),
            limits.max_array_size.max(DEFINITION_MAX_ARRAY_LEN),
        );
        let budget_ns = limits.eval_deadline.as_nanos() as u64;
        let deadline = Arc::new(Deadline {
            budget_ns,
            coarse: coarse::fits(budget_ns),
            at_ns: AtomicU64::new(NEVER),
        });
        let hook = Arc::clone(&deadline);
        engine.on_progress(move |ops| {
            if ops.is_multiple_of(CLOCK_CHECK_EVERY) && hook.expired() {
                Some(Dynamic::from(DEADLINE_MARK))
            } else {
                None
            }
        });
        Sandbox {
            engine,
            definer,
            deadline,
            limits,
            shapes: Mutex::new(Shapes::default()),
        }
    }

    /// An engine with the packages a condition needs and every limit but the clock.
    fn build(limits: &Limits, max_string_size: usize, max_array_size: usize) -> Engine {
        use rhai::packages::{
            BasicArrayPackage, BasicMapPackage, BasicMathPackage, BasicStringPackage,
            BitFieldPackage, CorePackage, LogicPackage, MoreStringPackage, Package,
        };
        // A raw engine plus the packages a condition needs; deliberately without the
        // time package (`timestamp()` would make rules depend on the wall clock).
        let mut engine = Engine::new_raw();
        for module in [
            CorePackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
            BasicStringPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
            BitFieldPackage::new().as_shared_module(),
        ] {
            engine.register_global_module(module);
        }
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_fn_expr_depth)
            .set_max_string_size(max_string_size)
            .set_max_array_size(max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .set_max_functions(limits.max_functions)
            .set_max_modules(0)
            // A typo in a tag name (`v.presure`) is an error, not a silent `()`.
            .set_fail_on_invalid_map_property(true)
            .set_optimization_level(rhai::OptimizationLevel::Simple);
        engine.disable_symbol("eval");
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        // Scripts have no console; keep their prints out of our output streams.
        engine.on_print(|s| tracing::debug!(target: "linewatch_rules_core::script", "{s}"));
        engine.on_debug(|s, _, pos| {
            tracing::debug!(target: "linewatch_rules_core::script", line = pos.line(), "{s}")
        });
        engine
    }

    /// The shared copy of a rule's code: the same `Arc` for every rule whose shape is
    /// identical, source positions included (so error lines stay exact).
    pub(crate) fn share_shape(&self, shape: Shape) -> Arc<Shape> {
        let text = shape.identity();
        let mut h = std::hash::DefaultHasher::new();
        text.hash(&mut h);
        let key = h.finish();
        // A poisoned lock only means another compile panicked; the map is still valid.
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = shapes.by_hash.entry(key).or_default();
        if let Some(shared) = bucket
            .iter()
            .filter(|(t, _)| *t == text)
            .find_map(|(_, w)| w.upgrade())
        {
            return shared;
        }
        let before = bucket.len();
        bucket.retain(|(_, w)| w.strong_count() > 0);
        let removed = before - bucket.len();
        let shared = Arc::new(shape);
        bucket.push((text, Arc::downgrade(&shared)));
        shapes.entries = shapes.entries + 1 - removed;
        if shapes.entries > 2 * shapes.live_at_sweep + 64 {
            // Forget shapes no rule uses any more.
            shapes.by_hash.retain(|_, b| {
                b.retain(|(_, w)| w.strong_count() > 0);
                !b.is_empty()
            });
            shapes.by_hash.shrink_to_fit();
            shapes.entries = shapes.by_hash.values().map(Vec::len).sum();
            shapes.live_at_sweep = shapes.entries;
        }
        shared
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Run `f` under the per-evaluation budget, counted from now. Also returns whether
    /// the call took longer than the budget (stopped by it, or finished over it).
    pub(crate) fn with_deadline<T>(&self, f: impl FnOnce(&Engine) -> T) -> (T, bool) {
        let d = &*self.deadline;
        let start = d.now_ns();
        d.at_ns
            .store(start.saturating_add(d.budget_ns), Ordering::Relaxed);
        let out = f(&self.engine);
        let over = d.now_ns().saturating_sub(start) > d.budget_ns;
        d.at_ns.store(NEVER, Ordering::Relaxed);
        (out, over)
    }

    /// Run `f` under the deterministic limits only (no clock): compiling a rule, whose
    /// acceptance must depend on its text alone, never on the machine's load.
    /// Runs under the definition's wider size limits (see [`Sandbox`]'s `definer`).
    pub(crate) fn without_deadline<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        f(&self.definer)
    }
}

/// What went wrong in a script, reduced to what an operator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScriptFailure {
    pub kind: FailureKind,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// A deterministic resource limit: operations, sizes, depth. The same call hits it
    /// again, so the script cannot be trusted to behave on the next call either.
    Limit,
    /// The wall-clock deadline: depends on the machine's load, not only on the script,
    /// so it fails this evaluation and nothing more.
    Deadline,
    /// Anything else the script did wrong (type mismatch, unknown property, `throw`).
    Runtime,
}

/// Dig through "error in function call" wrappers to the error the script made, and
/// its line.
pub(crate) fn explain(err: &EvalAltResult) -> ScriptFailure {
    let mut e = err;
    let mut line = position_line(e.position());
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) = e {
        line = position_line(inner.position())
            .or(position_line(*pos))
            .or(line);
        e = inner;
    }
    let (kind, message) = match e {
        EvalAltResult::ErrorTerminated(v, _)
            if v.clone().into_string().ok().as_deref() == Some(DEADLINE_MARK) =>
        {
            (FailureKind::Deadline, DEADLINE_MESSAGE.to_owned())
        }
        EvalAltResult::ErrorTooManyOperations(_) => (
            FailureKind::Limit,
            "too many operations (an endless loop?)".to_owned(),
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => (
            FailureKind::Limit,
            format!("{what} exceeds the sandbox's size limit"),
        ),
        EvalAltResult::ErrorStackOverflow(_) => (
            FailureKind::Limit,
            "call stack too deep (runaway recursion?)".to_owned(),
        ),
        EvalAltResult::ErrorTooManyVariables(_) | EvalAltResult::ErrorTooManyModules(_) => {
            (FailureKind::Limit, strip_position(&e.to_string()))
        }
        _ => (FailureKind::Runtime, strip_position(&e.to_string())),
    };
    ScriptFailure {
        kind,
        line,
        message,
    }
}

pub(crate) fn position_line(p: Position) -> Option<usize> {
    p.line()
}

/// Rhai appends " (line L, position C)"; we report the line in its own field.
pub(crate) fn strip_position(msg: &str) -> String {
    match msg.rfind(" (line ") {
        Some(i) if msg.ends_with(')') => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(sandbox: &Sandbox, script: &str) -> Result<Dynamic, ScriptFailure> {
        sandbox
            .with_deadline(|e| e.eval::<Dynamic>(script).map_err(|err| explain(&err)))
            .0
    }

    #[test]
    fn endless_loop_hits_the_operation_limit() {
        let s = Sandbox::new(Limits::default());
        let e = eval(&s, "let x = 0;\nloop { x += 1; }").unwrap_err();
        assert_eq!(e.kind, FailureKind::Limit, "{e:?}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn deadline_stops_a_script_within_its_operation_budget() {
        let s = Sandbox::new(Limits {
            max_operations: 0, // unlimited: only the clock can stop it
            eval_deadline: Duration::from_millis(20),
            ..Limits::default()
        });
        let started = Instant::now();
        let e = eval(&s, "loop { }").unwrap_err();
        assert_eq!(e.kind, FailureKind::Deadline);
        assert!(e.message.contains("deadline"), "{}", e.message);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_budget_runs_from_the_start_of_every_call() {
        let s = Sandbox::new(Limits {
            max_operations: 0,
            eval_deadline: Duration::from_millis(30),
            ..Limits::default()
        });
        // A first call that ends quickly, then a long wait: the next call still gets
        // its whole budget and no more (the clock starts with the call).
        assert!(eval(&s, "1 + 1").is_ok());
        std::thread::sleep(Duration::from_millis(40));
        let started = Instant::now();
        let (r, over) = s.with_deadline(|e| e.eval::<Dynamic>("loop { }").map_err(|x| explain(&x)));
        assert_eq!(r.unwrap_err().kind, FailureKind::Deadline);
        assert!(over);
        assert!(started.elapsed() >= Duration::from_millis(30));
        // A short call is within budget.
        let (r, over) = s.with_deadline(|e| e.eval::<i64>("40 + 2"));
        assert_eq!(r.unwrap(), 42);
        assert!(!over);
    }

    #[test]
    fn builtins_are_bounded_by_the_size_limits() {
        let s = Sandbox::new(Limits::default());
        for bomb in [
            r#"let s = ""; s.pad(60000, "x"); s.len()"#,
            "let a = []; a.pad(100000, 0); a.len()",
            r#"let s = "x"; s.pad(5000, "y"); s"#,
        ] {
            let e = eval(&s, bomb).unwrap_err();
            assert_eq!(e.kind, FailureKind::Limit, "{bomb}: {e:?}");
        }
        // Within the limits they work.
        assert!(eval(&s, r#"let s = ""; s.pad(1000, "x"); s.len()"#).is_ok());
    }

    #[test]
    fn compiling_uses_no_clock() {
        // A zero budget stops any evaluation at its first clock check, but the
        // top level run under `without_deadline` is only bound by operations.
        let s = Sandbox::new(Limits {
            eval_deadline: Duration::ZERO,
            ..Limits::default()
        });
        let r = s.without_deadline(|e| e.eval::<i64>("let i = 0; while i < 5000 { i += 1; } i"));
        assert_eq!(r.unwrap(), 5000);
    }

    #[test]
    fn memory_bombs_hit_size_limits() {
        // A generous budget: what stops them must be a deterministic limit (an
        // unoptimised build needs more than 50 ms for 100,000 operations).
        let s = Sandbox::new(Limits {
            eval_deadline: Duration::from_secs(30),
            ..Limits::default()
        });
        for bomb in [
            r#"let s = "xxxxxxxx"; loop { s += s; }"#,
            "let a = []; loop { a.push(1); }",
            "let a = [[1,2,3]]; loop { a += a; }",
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        ] {
            let e = eval(&s, bomb).unwrap_err();
            assert_eq!(e.kind, FailureKind::Limit, "{bomb}: {e:?}");
        }
    }

    #[test]
    fn eval_import_and_clock_are_unavailable() {
        let s = Sandbox::new(Limits::default());
        assert!(eval(&s, r#"eval("1 + 1")"#).is_err());
        assert!(eval(&s, r#"import "x" as x; 1"#).is_err());
        assert!(eval(&s, "timestamp()").is_err());
    }

    #[test]
    fn runaway_recursion_is_a_limit() {
        let s = Sandbox::new(Limits::default());
        let e = eval(&s, "fn f(x) { f(x + 1) }\nf(0)").unwrap_err();
        assert_eq!(e.kind, FailureKind::Limit, "{e:?}");
    }
}
