use super::*;
use crate::rule::Rule;
use linewatch_schemas::{DataPoint, Meta, Quality};

const KRONES: &str = include_str!("../../../examples/rules/krones-filler.rhai");
const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";
const T0: u64 = 1_732_180_000_000;
const MIN: u64 = 60_000;

fn rule(src: &str) -> Arc<Rule> {
    Arc::new(Rule::compile(&Sandbox::new(Limits::default()), src, "test.rhai").expect("compiles"))
}

pub(crate) fn point(equipment: &str, tag: &str, ts: u64, value: impl Into<Value>) -> DataPoint {
    DataPoint {
        version: 1,
        timestamp: ts,
        equipment_id: equipment.into(),
        tag: tag.into(),
        value: value.into(),
        quality: Quality::Ok,
        meta: Meta {
            sequence_number: 0,
            flags: Default::default(),
            created_at: ts,
            source_id: "src".into(),
            gateway_id: Some("gw".into()),
            raw_quality: None,
            low_watermark: None,
        },
    }
}

struct Harness {
    e: Evaluator,
    out: Output,
}

impl Harness {
    /// Default limits but a generous time budget: what these tests check must not
    /// depend on how fast an unoptimised build runs 100,000 operations.
    fn new(rules: &[Arc<Rule>]) -> Self {
        Self::with_limits(
            Limits {
                eval_deadline: std::time::Duration::from_secs(30),
                ..Limits::default()
            },
            rules,
        )
    }
    fn with_limits(limits: Limits, rules: &[Arc<Rule>]) -> Self {
        let mut h = Harness {
            e: Evaluator::new(limits),
            out: Output::default(),
        };
        for r in rules {
            h.apply(RuleChange::Upsert(Arc::clone(r)), 0);
        }
        h
    }
    fn apply(&mut self, c: RuleChange, at: u64) -> ChangeOutcome {
        self.e.apply(&c, at, &mut self.out).expect("owned")
    }
    fn p(&mut self, equipment: &str, tag: &str, ts: u64, v: impl Into<Value>) {
        let p = Reading::from(point(equipment, tag, ts, v));
        self.e.on_point(&p, ts, &mut self.out);
    }
    fn f(&mut self, tag: &str, ts: u64, v: impl Into<Value>) {
        self.p(FILLER, tag, ts, v);
    }
    fn take(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.out.transitions)
    }
    fn states(&mut self) -> Vec<(u64, Option<String>, String)> {
        self.take()
            .into_iter()
            .map(|t| (t.event_time, t.previous_state, t.state))
            .collect()
    }
}

fn s(x: &str) -> Option<String> {
    Some(x.to_owned())
}

/// Running a 1 L product at normal temperature; both thresholds crossed at T0 + 2 min.
fn krones_start(h: &mut Harness) {
    h.f("machine_state", T0, "RUNNING");
    h.f("product", T0, "1L");
    h.f("water_temperature", T0, 70.0);
    h.f("pressure", T0, 2.0);
    assert_eq!(h.states(), vec![(T0, None, "ACTIVE".to_owned())]);
    h.f("water_temperature", T0 + MIN, 85.0);
    h.f("pressure", T0 + 2 * MIN, 3.0); // both above: WARNING pending from here
}

#[test]
fn krones_warning_exactly_five_minutes_after_both_thresholds() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    let crossed = T0 + 2 * MIN;
    // Still above, with noise, every 10 s: nothing yet.
    for i in 1..30 {
        h.f(
            "water_temperature",
            crossed + i * 10_000,
            85.0 + (i % 3) as f64 * 0.1,
        );
        h.f("pressure", crossed + i * 10_000, 3.0);
    }
    assert_eq!(h.states(), vec![]);
    // The timer fires from the watermark, without any further data point.
    h.e.advance(crossed + 5 * MIN - 1, &mut h.out);
    assert_eq!(h.states(), vec![]);
    h.e.advance(crossed + 5 * MIN, &mut h.out);
    let t = h.take();
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(t.event_time, crossed + 5 * MIN);
    assert_eq!(
        (t.previous_state.as_deref(), t.state.as_str()),
        (Some("ACTIVE"), "WARNING")
    );
    assert_eq!(t.sequence, 2);
    assert_eq!(t.rule_id, "filler-7-overheat");
    assert_eq!(t.rule_version, 1);
    assert_eq!(t.equipment_id, FILLER);
    assert_eq!(
        t.transition_id,
        format!("filler-7-overheat/{FILLER}/{}/2", crossed + 5 * MIN)
    );
    // The explanation: both groups, the thermal one since the crossing.
    assert_eq!(t.groups.len(), 2);
    assert_eq!(t.groups[0].name, "production");
    assert_eq!(t.groups[0].state.as_deref(), Some("ACTIVE"));
    assert_eq!(t.groups[0].since, Some(T0));
    assert_eq!(t.groups[1].name, "thermal");
    assert_eq!(t.groups[1].state.as_deref(), Some("WARNING"));
    assert_eq!(t.groups[1].weight, 3);
    assert_eq!(t.groups[1].since, Some(crossed));
    // The deciding values: the thermal group's tags.
    assert_eq!(t.values.len(), 2);
    assert_eq!(t.values["pressure"], Value::Float(3.0));
    assert!(matches!(t.values["water_temperature"], Value::Float(x) if x > 85.0));
}

#[test]
fn krones_no_warning_if_one_drops_back_after_four_minutes() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    let crossed = T0 + 2 * MIN;
    h.f("pressure", crossed + 4 * MIN, 2.4);
    h.e.advance(crossed + 60 * MIN, &mut h.out);
    assert_eq!(h.states(), vec![]);
    assert_eq!(h.e.timer_count(), 0);
}

#[test]
fn a_deadline_at_t_applies_before_points_stamped_t() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    let due = T0 + 2 * MIN + 5 * MIN;
    // Pressure drops exactly when the hold completes: the state lasted exactly the
    // hold (inclusive), so WARNING fires first, then the drop starts a hold back.
    h.f("pressure", due, 2.0);
    assert_eq!(h.states(), vec![(due, s("ACTIVE"), "WARNING".into())]);
    h.e.advance(due + 5 * MIN, &mut h.out);
    assert_eq!(
        h.states(),
        vec![(due + 5 * MIN, s("WARNING"), "ACTIVE".into())]
    );
}

#[test]
fn group_without_all_tags_does_not_vote() {
    let mut h = Harness::new(&[rule(KRONES)]);
    h.f("machine_state", T0, "RUNNING");
    h.f("water_temperature", T0, 90.0);
    h.f("pressure", T0, 3.0);
    // thermal votes WARNING at once (first state), production lacks `product`.
    assert_eq!(h.states(), vec![(T0, None, "WARNING".into())]);
    h.f("product", T0 + 1, "1L");
    // ACTIVE(1) < WARNING(3): no change of the winner, no transition.
    assert_eq!(h.states(), vec![]);
}

#[test]
fn unchanged_values_cost_no_evaluation() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    let before = h.e.stats();
    for i in 0..10 {
        h.f("product", T0 + 3 * MIN + i, "1L");
    }
    let after = h.e.stats();
    assert_eq!(after.group_evaluations, before.group_evaluations);
    assert_eq!(after.unchanged - before.unchanged, 10);
}

#[test]
fn points_nobody_reads_are_not_routed() {
    let mut h = Harness::new(&[rule(KRONES)]);
    h.f("conveyor_speed", T0, 1.0);
    h.p("another-machine", "pressure", T0, 1.0);
    assert_eq!(h.e.stats().routed, 0);
    assert!(h.e.reads(FILLER, "pressure"));
    assert!(!h.e.reads("another-machine", "pressure"));
}

#[test]
fn ties_go_to_the_more_severe_state() {
    let src = r#"#{ id: "tie", equipment: "e", groups: [
        #{ name: "a", weight: 2, tags: ["x"], state: |v| if v.x > 0 { "IDLE" } else { "OK" } },
        #{ name: "b", weight: 2, tags: ["y"], state: |v| if v.y > 0 { "ERROR" } else { "OK" } } ] }"#;
    let mut h = Harness::new(&[rule(src)]);
    h.p("e", "x", 1, 1i64);
    h.p("e", "y", 2, 1i64);
    assert_eq!(
        h.states(),
        vec![(1, None, "IDLE".into()), (2, s("IDLE"), "ERROR".into())]
    );
}

#[test]
fn multi_equipment_rules_keep_state_per_equipment() {
    let src = include_str!("../../../examples/rules/line-1-palletiser.rhai");
    let mut h = Harness::new(&[rule(src)]);
    h.p("pal-1", "drive_speed", 10, 1.5);
    h.p("pal-2", "drive_speed", 11, 0.0);
    h.p("pal-1", "door_open", 12, true);
    let t = h.take();
    let got: Vec<_> = t
        .iter()
        .map(|t| (t.equipment_id.as_str(), t.state.as_str(), t.sequence))
        .collect();
    assert_eq!(
        got,
        vec![
            ("pal-1", "ACTIVE", 1),
            ("pal-2", "IDLE", 1),
            ("pal-1", "ERROR", 2)
        ]
    );
    assert_eq!(
        h.e.current_state("line-1-palletisers", "pal-2"),
        Some("IDLE")
    );
}

#[test]
fn lifecycle_update_keeps_unchanged_groups_and_resets_changed_ones() {
    let v1 = rule(KRONES);
    let mut h = Harness::new(&[Arc::clone(&v1)]);
    krones_start(&mut h);
    let crossed = T0 + 2 * MIN;
    // v2 changes the production group only (2 L bottles now count as ACTIVE).
    let v2 = rule(
        &KRONES
            .replace("version: 1", "version: 2")
            .replace(r#"v.product == "1L""#, r#"v.product == "2L""#),
    );
    let at = crossed + MIN;
    match h.apply(RuleChange::Upsert(v2), at) {
        ChangeOutcome::Updated {
            from,
            to,
            kept,
            reset,
            ..
        } => {
            assert_eq!((from, to), (1, 2));
            assert_eq!(kept, vec!["thermal"]);
            assert_eq!(reset, vec!["production"]);
        }
        other => panic!("{other:?}"),
    }
    // The reset group re-evaluated at once from the values the rule holds: IDLE now.
    let t = h.take();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].event_time, t[0].state.as_str(), t[0].sequence),
        (at, "IDLE", 2)
    );
    assert_eq!(t[0].rule_version, 2);
    // The thermal group kept its pending hold: WARNING at the original deadline.
    h.e.advance(crossed + 5 * MIN, &mut h.out);
    let t = h.take();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].event_time, t[0].state.as_str(), t[0].sequence),
        (crossed + 5 * MIN, "WARNING", 3)
    );
}

#[test]
fn lifecycle_stale_versions_are_ignored_and_reported() {
    let mut h = Harness::new(&[rule(&KRONES.replace("version: 1", "version: 5"))]);
    krones_start(&mut h);
    for v in [5, 4] {
        let older = rule(
            &KRONES
                .replace("version: 1", &format!("version: {v}"))
                .replace("80.0", "10.0"),
        );
        let outcome = h.apply(RuleChange::Upsert(older), T0 + 3 * MIN);
        assert_eq!(
            outcome,
            ChangeOutcome::IgnoredStaleVersion {
                rule_id: "filler-7-overheat".into(),
                loaded: 5,
                offered: v
            }
        );
    }
    assert_eq!(h.e.rule("filler-7-overheat").unwrap().version(), 5);
    assert_eq!(h.e.timer_count(), 1, "pending hold untouched");
}

#[test]
fn lifecycle_delete_drops_state_and_timers_and_a_re_add_starts_fresh() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    assert_eq!(h.e.timer_count(), 1);
    let out = h.apply(
        RuleChange::Delete {
            id: "filler-7-overheat".into(),
        },
        T0 + 3 * MIN,
    );
    assert_eq!(
        out,
        ChangeOutcome::Deleted {
            rule_id: "filler-7-overheat".into(),
            version: 1
        }
    );
    assert_eq!(h.e.timer_count(), 0);
    assert_eq!(h.e.rule_count(), 0);
    assert!(!h.e.reads(FILLER, "pressure"));
    h.e.advance(T0 + 60 * MIN, &mut h.out);
    assert_eq!(h.states(), vec![]);
    assert_eq!(
        h.apply(
            RuleChange::Delete {
                id: "filler-7-overheat".into()
            },
            T0 + 60 * MIN
        ),
        ChangeOutcome::NotFound {
            rule_id: "filler-7-overheat".into()
        }
    );

    // Re-added (even with the same version): no old values, no old state.
    h.apply(RuleChange::Upsert(rule(KRONES)), T0 + 60 * MIN);
    h.f("water_temperature", T0 + 61 * MIN, 85.0);
    h.f("pressure", T0 + 61 * MIN, 3.0);
    let t = h.take();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (
            t[0].previous_state.as_deref(),
            t[0].state.as_str(),
            t[0].sequence
        ),
        (None, "WARNING", 1)
    );
}

fn rule_with_group(id: &str, body: &str) -> Arc<Rule> {
    rule(&format!(
        "#{{ id: \"{id}\", equipment: \"e\", groups: [\n #{{ name: \"g\", tags: [\"x\"],\n   state: |v| {body} }} ] }}"
    ))
}

#[test]
fn bad_groups_are_reported_with_rule_group_and_line_and_others_keep_going() {
    let good = rule_with_group("good", r#"if v.x > 0 { "ERROR" } else { "OK" }"#);
    let wrong_state = rule_with_group("wrong-state", r#""BROKEN""#);
    let wrong_type = rule_with_group("wrong-type", "42");
    let typo = rule_with_group("typo", r#"if v.y > 0 { "OK" } else { "OK" }"#);
    let looping = rule_with_group("looping", r#"{ let i = 0; loop { i += 1; } }"#);
    let bomb = rule_with_group("bomb", r#"{ let s = "x"; loop { s += s; } }"#);
    let mut h = Harness::new(&[good, wrong_state, wrong_type, typo, looping, bomb]);
    for i in 0..6 {
        h.p("e", "x", 10 + i, (i % 2) as i64);
    }
    let states: Vec<_> = h.take().into_iter().map(|t| (t.rule_id, t.state)).collect();
    assert_eq!(
        states,
        vec![
            ("good".into(), "OK".into()),
            ("good".into(), "ERROR".into()),
            ("good".into(), "OK".into()),
            ("good".into(), "ERROR".into()),
            ("good".into(), "OK".into()),
            ("good".into(), "ERROR".into()),
        ]
    );
    let d = &h.out.diagnostics;
    let by_rule = |id: &str| d.iter().filter(|d| d.rule_id == id).collect::<Vec<_>>();
    // Repeated identical errors are reported once.
    assert_eq!(by_rule("wrong-state").len(), 1);
    assert!(by_rule("wrong-state")[0]
        .message
        .contains("not one of the rule's states"));
    assert_eq!(by_rule("wrong-state")[0].kind, DiagnosticKind::GroupError);
    assert!(by_rule("wrong-type")[0].message.contains("type i64"));
    assert!(
        by_rule("typo")[0].message.contains("y"),
        "{:?}",
        by_rule("typo")
    );
    for id in ["looping", "bomb"] {
        let ds = by_rule(id);
        assert_eq!(ds.len(), 1, "{ds:?}");
        assert_eq!(ds[0].kind, DiagnosticKind::GroupDisabled);
        assert_eq!(ds[0].group, "g");
        assert_eq!(ds[0].line, Some(3), "{ds:?}");
        assert_eq!(ds[0].equipment_id, "e");
    }
    // Disabled groups are not called again.
    let evals = h.e.stats().group_evaluations;
    h.p("e", "x", 100, 7i64);
    assert_eq!(h.e.stats().group_evaluations, evals + 4);
}

/// Slow (thousands of operations) only for `x > 100`; otherwise ERROR above 5, else OK.
fn slow_above_100() -> Arc<Rule> {
    rule_with_group(
        "slow",
        r#"if v.x > 100 { let i = 0; while i < 5000 { i += 1; } "ERROR" } else if v.x > 5 { "ERROR" } else { "OK" }"#,
    )
}

/// Runs `slow_above_100` under `limits` to its slow point; returns the one diagnostic.
fn hit_a_limit(limits: Limits) -> (Harness, Diagnostic) {
    let mut h = Harness::with_limits(limits, &[slow_above_100()]);
    h.p("e", "x", 10, 1i64);
    h.p("e", "x", 20, 500i64);
    let mut d = std::mem::take(&mut h.out.diagnostics);
    assert_eq!(d.len(), 1, "{d:?}");
    (h, d.remove(0))
}

fn disabled(e: &Evaluator) -> Option<String> {
    e.snapshot().rules[0].equipment[0].groups[0]
        .disabled
        .clone()
}

#[test]
fn a_deadline_hit_is_a_one_off_error_and_the_group_votes_again() {
    // A zero budget: the first clock check (after 128 operations) finds it expired.
    // Short evaluations finish (over budget, counted, but their vote stands).
    let limits = Limits {
        eval_deadline: std::time::Duration::ZERO,
        quarantine_after: 0,
        ..Limits::default()
    };
    let (mut h, d) = hit_a_limit(limits);
    assert_eq!(d.kind, DiagnosticKind::GroupError, "{d:?}");
    assert!(d.message.contains("deadline"), "{d:?}");
    assert_eq!(h.e.stats().deadline_hits, 1);
    assert_eq!(h.e.stats().group_errors, 1);
    // Not in the checkpoint: a replay from it behaves as if the stall never happened.
    assert_eq!(disabled(&h.e), None);
    // The group kept its vote for that point, and votes again on the next one.
    h.p("e", "x", 30, 7i64);
    assert_eq!(
        h.states(),
        vec![
            (10, None, "OK".to_owned()),
            (30, s("OK"), "ERROR".to_owned())
        ]
    );
}

#[test]
fn an_operations_limit_hit_still_disables_the_group() {
    let limits = Limits {
        max_operations: 1_000,
        ..Limits::default()
    };
    let (mut h, d) = hit_a_limit(limits);
    assert_eq!(d.kind, DiagnosticKind::GroupDisabled, "{d:?}");
    assert_eq!(h.e.stats().deadline_hits, 0);
    assert!(disabled(&h.e).is_some_and(|m| m.contains("operations")));
    h.p("e", "x", 30, 7i64);
    assert_eq!(h.states(), vec![(10, None, "OK".to_owned())]);
}

#[test]
fn a_checkpoint_that_disabled_a_group_for_a_deadline_does_not_keep_it_disabled() {
    // What an older version wrote after a deadline hit.
    let mut h = Harness::new(&[slow_above_100()]);
    h.p("e", "x", 10, 1i64);
    let mut snap = h.e.snapshot();
    snap.rules[0].equipment[0].groups[0].disabled =
        Some("evaluation deadline exceeded (the script ran too long)".into());
    let mut fresh = Harness::new(&[slow_above_100()]);
    assert!(fresh.e.restore(&snap).is_empty());
    assert_eq!(disabled(&fresh.e), None);
    fresh.p("e", "x", 30, 7i64);
    assert_eq!(fresh.states(), vec![(30, s("OK"), "ERROR".to_owned())]);

    // A deterministic limit stays in force across the restart.
    snap.rules[0].equipment[0].groups[0].disabled =
        Some("too many operations (an endless loop?)".into());
    let mut fresh = Harness::new(&[slow_above_100()]);
    fresh.e.restore(&snap);
    assert!(disabled(&fresh.e).is_some());
    fresh.p("e", "x", 30, 7i64);
    assert!(fresh.states().is_empty());
}

#[test]
fn a_script_cannot_change_what_it_sees_next_time() {
    let src = r#"#{ id: "mut", equipment: "e", groups: [
        #{ name: "g", tags: ["x", "y"], state: |v| {
            let seen = v.x;
            v.x = 1000; v.remove("y"); v.extra = 1;
            if seen > 10 { "ERROR" } else { "OK" } } } ] }"#;
    let mut h = Harness::new(&[rule(src)]);
    h.p("e", "y", 1, 0i64);
    h.p("e", "x", 2, 1i64);
    h.p("e", "y", 3, 2i64); // x is still 1 for the rule, whatever the script wrote
    h.p("e", "x", 4, 20i64);
    assert_eq!(
        h.states(),
        vec![(2, None, "OK".into()), (4, s("OK"), "ERROR".into())]
    );
    assert!(h.out.diagnostics.is_empty(), "{:?}", h.out.diagnostics);
}

#[test]
fn snapshot_and_restore_carry_state_across_a_restart() {
    let mut h = Harness::new(&[rule(KRONES)]);
    krones_start(&mut h);
    let snap = h.e.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: EvaluatorSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    let mut fresh = Harness::new(&[rule(KRONES)]);
    assert!(fresh.e.restore(&back).is_empty());
    assert_eq!(fresh.e.snapshot(), snap);
    assert_eq!(fresh.e.timer_count(), 1);
    fresh.e.advance(T0 + 7 * MIN, &mut fresh.out);
    assert_eq!(
        fresh.states(),
        vec![(T0 + 7 * MIN, s("ACTIVE"), "WARNING".into())]
    );
}

#[test]
fn a_point_costs_what_its_readers_cost_not_what_is_loaded() {
    // 2,000 rules on other machines, one on ours (sharing code: compiled once).
    let sandbox = Sandbox::new(Limits::default());
    let mut e = Evaluator::new(Limits::default());
    let mut out = Output::default();
    for i in 0..2_001 {
        let eq = if i == 0 {
            FILLER.to_string()
        } else {
            format!("other-{i}")
        };
        let src = KRONES
            .replace("filler-7-overheat", &format!("r{i}"))
            .replace(FILLER, &eq);
        let r = Arc::new(Rule::compile(&sandbox, &src, "t").unwrap());
        e.apply(&RuleChange::Upsert(r), 0, &mut out);
    }
    let before = e.stats();
    e.on_point(
        &Reading::from(point(FILLER, "pressure", 1, 3.0)),
        1,
        &mut out,
    );
    e.on_point(
        &Reading::from(point(FILLER, "water_temperature", 2, 90.0)),
        2,
        &mut out,
    );
    let after = e.stats();
    assert_eq!(after.routed - before.routed, 2);
    // The thermal group of the one rule, once both its tags are known.
    assert_eq!(after.group_evaluations - before.group_evaluations, 1);
}

#[test]
fn update_changing_the_equipment_list_keeps_the_rest() {
    let src = include_str!("../../../examples/rules/line-1-palletiser.rhai");
    let mut h = Harness::new(&[rule(src)]);
    h.p("pal-1", "drive_speed", 10, 1.5);
    h.p("pal-2", "drive_speed", 11, 1.5);
    h.take();
    let v2 = rule(&src.replace(
        r#"equipment: ["pal-1", "pal-2"],"#,
        r#"version: 2, equipment: ["pal-1", "pal-3"],"#,
    ));
    let out = h.apply(RuleChange::Upsert(v2), 20);
    assert!(
        matches!(out, ChangeOutcome::Updated { ref reset, .. } if reset.is_empty()),
        "{out:?}"
    );
    assert_eq!(
        h.e.current_state("line-1-palletisers", "pal-1"),
        Some("ACTIVE")
    );
    assert_eq!(h.e.current_state("line-1-palletisers", "pal-3"), None);
    assert!(!h.e.reads("pal-2", "drive_speed"));
    assert!(h.e.reads("pal-3", "drive_speed"));
    h.p("pal-1", "door_open", 21, true);
    h.p("pal-3", "drive_speed", 22, 0.0);
    let got: Vec<_> = h
        .take()
        .into_iter()
        .map(|t| (t.equipment_id, t.state, t.sequence))
        .collect();
    assert_eq!(
        got,
        vec![
            ("pal-1".into(), "ERROR".into(), 2),
            ("pal-3".into(), "IDLE".into(), 1)
        ]
    );
}

#[test]
fn a_rule_that_keeps_exceeding_its_budget_is_quarantined_and_stays_so() {
    // Every call is over a zero budget; the fourth in a row quarantines the rule.
    let limits = Limits {
        eval_deadline: std::time::Duration::ZERO,
        quarantine_after: 4,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone(), &[slow_above_100()]);
    for t in 1..=3 {
        h.p("e", "x", t, t as i64);
    }
    assert!(h.out.diagnostics.is_empty(), "{:?}", h.out.diagnostics);
    h.p("e", "x", 4, 200i64);
    let d = std::mem::take(&mut h.out.diagnostics);
    let q: Vec<_> = d
        .iter()
        .filter(|d| d.kind == DiagnosticKind::RuleQuarantined)
        .collect();
    assert_eq!(q.len(), 1, "{d:?}");
    assert_eq!((q[0].rule_id.as_str(), q[0].event_time), ("slow", 4));
    assert!(
        q[0].message.contains("4 evaluations in a row"),
        "{}",
        q[0].message
    );
    assert_eq!(h.e.stats().quarantined, 1);
    assert_eq!(h.e.stats().over_budget, 4);
    // No longer evaluated.
    let evals = h.e.stats().group_evaluations;
    h.p("e", "x", 5, 1i64);
    h.p("e", "x", 6, 300i64);
    assert_eq!(h.e.stats().group_evaluations, evals);
    // The checkpoint keeps the decision; a restore does not recompute it.
    let snap = h.e.snapshot();
    assert!(snap.rules[0].quarantined.is_some());
    let mut fresh = Harness::new(&[slow_above_100()]);
    assert!(fresh.e.restore(&snap).is_empty());
    fresh.p("e", "x", 7, 9i64);
    assert_eq!(fresh.e.stats().group_evaluations, 0);
    // A new version lifts it.
    let v2 = Arc::new(
        Arc::try_unwrap(slow_above_100())
            .expect("a fresh rule")
            .with_version(2),
    );
    fresh.apply(RuleChange::Upsert(v2), 8);
    fresh.p("e", "x", 9, 1i64);
    assert!(fresh.e.stats().group_evaluations > 0);
    assert!(fresh.e.snapshot().rules[0].quarantined.is_none());
}

#[test]
fn calls_within_the_budget_reset_the_count() {
    let limits = Limits {
        eval_deadline: std::time::Duration::from_secs(30),
        quarantine_after: 2,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits, &[slow_above_100()]);
    for t in 1..50 {
        h.p("e", "x", t, t as i64);
    }
    assert_eq!(h.e.stats().quarantined, 0);
    assert_eq!(h.e.stats().over_budget, 0);
}
