//! 10,000 rule adds, updates and deletes with data flowing: live heap memory
//! (measured with a counting global allocator) returns to its starting level.

mod common;
use common::*;
use linewatch_rules_core::{Evaluator, Limits, Output, Reading, Rule, RuleChange, Sandbox};
use linewatch_schemas::DataPoint;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn point(equipment: &str, tag: &str, ts: u64, value: &str) -> Reading {
    DataPoint::from_json(point_json("gw", "s", equipment, tag, ts, value).as_bytes())
        .expect("valid point")
        .into()
}

/// One cycle: add a rule for a fresh id and equipment, feed it (a hold goes
/// pending), update it, feed it again, delete it. A few rules stay alive at a time.
fn cycle(e: &mut Evaluator, sandbox: &Sandbox, i: u64, out: &mut Output) {
    let id = format!("churn-{i}");
    let eq = format!("machine-{i}");
    let t = 1_000_000 + i * 1_000;
    let v1 = Arc::new(
        Rule::compile(sandbox, &krones_rule(&id, &eq, 1, "10m"), "churn").expect("compiles"),
    );
    e.apply(&RuleChange::Upsert(v1), t, out);
    for (tag, v) in [
        ("machine_state", "\"RUNNING\""),
        ("product", "\"1L\""),
        ("water_temperature", "70.5"),
        ("pressure", "3.1"),
    ] {
        e.on_point(&point(&eq, tag, t + 1, v), t + 1, out);
    }
    let v2 = Arc::new(
        Rule::compile(sandbox, &krones_rule(&id, &eq, 2, "20m"), "churn").expect("compiles"),
    );
    e.apply(&RuleChange::Upsert(v2), t + 2, out);
    e.on_point(&point(&eq, "water_temperature", t + 3, "90.5"), t + 3, out);
    // Delete the rule added three cycles ago, so some rules and timers are live.
    if i >= 3 {
        e.apply(
            &RuleChange::Delete {
                id: format!("churn-{}", i - 3),
            },
            t + 4,
            out,
        );
    }
    out.transitions.clear();
    out.diagnostics.clear();
}

#[test]
fn ten_thousand_rule_changes_leave_memory_where_it_started() {
    let sandbox = Sandbox::new(Limits::default());
    let mut e = Evaluator::new(Limits::default());
    let mut out = Output::default();
    // Warm up: lazily built tables, map capacities, interners.
    for i in 0..500 {
        cycle(&mut e, &sandbox, i, &mut out);
    }
    let start = LIVE.load(Ordering::SeqCst);
    let mut peak = start;
    // 10,000 changes: ~3,334 cycles of add + update + delete.
    for i in 500..500 + 3_334 {
        cycle(&mut e, &sandbox, i, &mut out);
        peak = peak.max(LIVE.load(Ordering::SeqCst));
    }
    let end = LIVE.load(Ordering::SeqCst);
    assert_eq!(e.rule_count(), 3);
    assert_eq!(e.timer_count(), 3);
    let grown = end - start;
    eprintln!("live heap: start {start} B, end {end} B, peak {peak} B, grown {grown} B");
    // A few hundred bytes of jitter (a rule's ids are a digit longer) is fine;
    // anything per-change would be ~10,000 × tens of bytes.
    assert!(
        grown < 16 * 1024,
        "live heap grew by {grown} B over 10,000 rule changes"
    );
}
