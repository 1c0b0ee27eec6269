use super::*;

const KRONES: &str = include_str!("../../../examples/rules/krones-filler.rhai");
const PALLETISERS: &str = include_str!("../../../examples/rules/line-1-palletiser.rhai");

fn compile(src: &str) -> Result<Rule, RuleError> {
    Rule::compile(&Sandbox::new(Limits::default()), src, "test.rhai")
}

fn err(src: &str) -> RuleError {
    compile(src).expect_err("should be rejected")
}

#[test]
fn the_examples_compile() {
    let r = compile(KRONES).unwrap();
    assert_eq!(r.id(), "filler-7-overheat");
    assert_eq!(r.version(), 1);
    assert_eq!(r.equipment(), ["84068f2f-3f39-4b9c-a995-d2a84d878689"]);
    assert_eq!(r.groups().len(), 2);
    let thermal = &r.groups()[1];
    assert_eq!(thermal.name(), "thermal");
    assert_eq!(thermal.weight(), 3);
    assert_eq!(thermal.hold_ms(), 300_000);
    // Tag order in a group is the Rhai map's (sorted) order.
    assert_eq!(
        thermal.tag_names().collect::<Vec<_>>(),
        ["pressure", "water_temperature"]
    );
    assert_eq!(r.tags().len(), 4);
    // The closure captured the two limits.
    assert_eq!(r.curry[1].len(), 2);

    let p = compile(PALLETISERS).unwrap();
    assert_eq!(p.equipment(), ["pal-1", "pal-2"]);
    assert_eq!(p.states(), DEFAULT_STATES);
    assert_eq!(p.tags(), ["drive_speed", "infeed_blocked", "door_open"]);
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err("#{ id: \"x\",\n  groups: [ #{ name: \"a\" state: 1 } ] }");
    assert_eq!(e.kind, RuleErrorKind::Syntax);
    assert_eq!(e.line, Some(2));
    assert!(
        e.to_string().starts_with("test.rhai:2: syntax error"),
        "{e}"
    );
}

#[test]
fn script_failures_name_the_line() {
    let e = err("let x = 1;\nlet y = x + \"a\" * [];\n#{}");
    assert_eq!(e.kind, RuleErrorKind::Runtime, "{e}");
    assert_eq!(e.line, Some(2));
    let e = err("let x = 0;\nwhile true { x += 1 }\n#{}");
    assert_eq!(e.kind, RuleErrorKind::Limit, "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn definition_errors_name_rule_group_and_line() {
    let base =
        |group: &str| format!("#{{ id: \"r1\", equipment: \"e\",\n groups: [\n  {group}\n ] }}");
    let e = err(&base(
        r#"#{ name: "thermal", tags: ["t"], hodl: "5m", state: |v| "OK" }"#,
    ));
    assert_eq!(e.kind, RuleErrorKind::Definition);
    assert_eq!(e.rule.as_deref(), Some("r1"));
    assert_eq!(e.group.as_deref(), Some("thermal"));
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("unknown key `hodl`"), "{e}");
    assert_eq!(
        e.to_string(),
        "test.rhai:3: rule \"r1\": group \"thermal\": invalid definition: unknown key `hodl` (allowed: name, weight, tags, hold, state, description)"
    );

    for (group, needle) in [
        (
            r#"#{ name: "g", tags: ["t"], state: "OK" }"#,
            "`state` must be a closure",
        ),
        (
            r#"#{ name: "g", tags: ["t"], state: |a, b| "OK" }"#,
            "function of one argument",
        ),
        (
            r#"#{ name: "g", tags: [], state: |v| "OK" }"#,
            "`tags` must list",
        ),
        (
            r#"#{ name: "g", tags: ["t", "t"], state: |v| "OK" }"#,
            "twice",
        ),
        (
            r#"#{ name: "g", tags: ["$heartbeat"], state: |v| "OK" }"#,
            "heartbeat",
        ),
        (
            r#"#{ name: "g", tags: ["t"], hold: "five minutes", state: |v| "OK" }"#,
            "not a duration",
        ),
        (
            r#"#{ name: "g", tags: ["t"], hold: -5, state: |v| "OK" }"#,
            "negative",
        ),
        (
            r#"#{ name: "g", tags: ["t"], weight: 2.5, state: |v| "OK" }"#,
            "`weight` must be an integer",
        ),
        (r#"#{ name: "g", tags: ["t"] }"#, "missing `state`"),
        (r#"#{ tags: ["t"], state: |v| "OK" }"#, "has no `name`"),
    ] {
        let e = err(&base(group));
        assert_eq!(e.kind, RuleErrorKind::Definition, "{group}: {e}");
        assert!(e.message.contains(needle), "{group}: {e}");
        assert_eq!(e.rule.as_deref(), Some("r1"));
    }

    let e = err("#{ id: \"a/b\", equipment: \"e\", groups: [] }");
    assert!(e.message.contains("contains '/'"), "{e}");
    let e = err("#{ id: \"r\", groups: [] }");
    assert!(e.message.contains("missing `equipment`"), "{e}");
    let e = err("#{ id: \"r\", equipment: \"e\", groups: [] }");
    assert!(e.message.contains("1 to 64 groups"), "{e}");
    let e = err("#{ id: \"r\", equipment: \"e\", colour: 1, groups: [] }");
    assert!(e.message.contains("unknown key `colour`"), "{e}");
    let e = err("42");
    assert!(e.message.contains("of type i64"), "{e}");
    let e = err(
        r#"#{ id: "r", equipment: "e", groups: [ #{ name: "a", tags: ["t"], state: |v| "OK" }, #{ name: "a", tags: ["u"], state: |v| "OK" } ] }"#,
    );
    assert_eq!(e.group.as_deref(), Some("a"));
    assert!(e.message.contains("two groups"), "{e}");
    let e = err(r#"#{ id: "r", version: 0, equipment: "e", groups: [] }"#);
    assert!(e.message.contains("version"), "{e}");
}

#[test]
fn scripts_over_the_size_limit_are_rejected() {
    let sandbox = Sandbox::new(Limits {
        max_script_bytes: 100,
        ..Limits::default()
    });
    let e = Rule::compile(&sandbox, &" ".repeat(101), "big.rhai").unwrap_err();
    assert_eq!(e.kind, RuleErrorKind::Limit);
}

/// A rule over `equipment` ids with `groups` groups of `tags` tags each.
fn fan_rule(equipment: usize, groups: usize, tags: usize) -> String {
    format!(
        r#"let eq = []; for i in 0..{equipment} {{ eq.push("e" + i); }}
let ts = []; for i in 0..{tags} {{ ts.push("t" + i); }}
let gs = []; for i in 0..{groups} {{ gs.push(#{{ name: "g" + i, tags: ts, state: |v| "OK" }}); }}
#{{ id: "fan", equipment: eq, groups: gs }}"#
    )
}

#[test]
fn the_fan_out_budget_is_checked_at_load_with_the_figures() {
    let sandbox = Sandbox::new(Limits::default());
    let at_limit = Rule::compile(&sandbox, &fan_rule(1024, 2, 32), "fan.rhai").unwrap();
    assert_eq!(at_limit.footprint().fan_out, 65_536);
    let e = Rule::compile(&sandbox, &fan_rule(1024, 64, 2), "fan.rhai").unwrap_err();
    assert_eq!(e.kind, RuleErrorKind::Limit);
    assert!(
        e.message
            .contains("fan-out is 131072 (1024 equipment × 128 group tags), the limit is 65536"),
        "{e}"
    );
    assert_eq!(e.rule.as_deref(), Some("fan"));
}

#[test]
fn the_memory_budget_counts_captured_values_and_state_slots() {
    let small =
        r#"#{ id: "m", equipment: "e", groups: [ #{ name: "g", tags: ["t"], state: |v| "OK" } ] }"#;
    // A closure capturing a 40 KB string: the capture is counted.
    let big = r#"let s = "x"; s.pad(40000, 'y'); #{ id: "m", equipment: "e", groups: [ #{ name: "g", tags: ["t"], state: |v| if s.len() > 0 { "OK" } else { "IDLE" } } ] }"#;
    let sandbox = Sandbox::new(Limits::default());
    let a = Rule::compile(&sandbox, small, "m").unwrap().footprint();
    let b = Rule::compile(&sandbox, big, "m").unwrap().footprint();
    assert_eq!(a.fan_out, 1);
    assert!(b.bytes >= a.bytes + 40_000, "{a:?} {b:?}");
    let tight = Sandbox::new(Limits {
        max_rule_bytes: 20_000,
        ..Limits::default()
    });
    assert!(Rule::compile(&tight, small, "m").is_ok());
    let e = Rule::compile(&tight, big, "m").unwrap_err();
    assert_eq!(e.kind, RuleErrorKind::Limit);
    assert!(
        e.message.contains("the limit is 20000") && e.message.contains("bytes"),
        "{e}"
    );
    // The same text gives the same figure (it is an estimate from the text alone).
    assert_eq!(Rule::compile(&sandbox, big, "m").unwrap().footprint(), b);
}

fn thermal_fingerprint(src: &str) -> u64 {
    let r = compile(src).unwrap();
    let g = r
        .groups()
        .iter()
        .position(|g| g.name() == "thermal")
        .unwrap();
    r.fingerprints[g]
}

#[test]
fn fingerprints_ignore_positions_but_see_every_behaviour_change() {
    let a = thermal_fingerprint(KRONES);
    // Lines added above shift every position: same fingerprint.
    let shifted = format!("// a comment\n// another\n{KRONES}");
    assert_eq!(thermal_fingerprint(&shifted), a);
    // Another group changed: same fingerprint for thermal.
    let other = KRONES.replace(r#"v.product == "1L""#, r#"v.product == "2L""#);
    assert_eq!(thermal_fingerprint(&other), a);
    // A captured limit changed.
    assert_ne!(thermal_fingerprint(&KRONES.replace("80.0", "85.0")), a);
    // The hold, the weight, the tags, the body.
    assert_ne!(thermal_fingerprint(&KRONES.replace("\"5m\"", "\"6m\"")), a);
    assert_ne!(
        thermal_fingerprint(&KRONES.replace("weight: 3", "weight: 4")),
        a
    );
    assert_ne!(
        thermal_fingerprint(
            &KRONES.replace("v.pressure > max_pressure", "v.pressure >= max_pressure")
        ),
        a
    );
    // A string literal that looks like a position still counts.
    let with_str = |s: &str| {
        format!(
            r#"#{{ id: "r", equipment: "e", groups: [ #{{ name: "thermal", tags: ["t"], state: |v| if v.t == "{s}" {{ "OK" }} else {{ () }} }} ] }}"#
        )
    };
    assert_ne!(
        thermal_fingerprint(&with_str("12:30")),
        thermal_fingerprint(&with_str("13:45"))
    );
    // A helper function's body.
    let helper = |limit: &str| {
        format!(
            "fn hot(x) {{ x > {limit} }}\n#{{ id: \"r\", equipment: \"e\", groups: [ #{{ name: \"thermal\", tags: [\"t\"], state: |v| if hot(v.t) {{ \"WARNING\" }} else {{ () }} }} ] }}"
        )
    };
    assert_ne!(
        thermal_fingerprint(&helper("80")),
        thermal_fingerprint(&helper("81"))
    );
    // A nested closure's body (its name is normalised away, its body is not).
    let nested = |limit: &str| {
        format!(
            "#{{ id: \"r\", equipment: \"e\", groups: [ #{{ name: \"thermal\", tags: [\"t\"], state: |v| {{ let hot = |x| x > {limit}; if hot.call(v.t) {{ \"WARNING\" }} else {{ () }} }} }} ] }}"
        )
    };
    assert_ne!(
        thermal_fingerprint(&nested("80")),
        thermal_fingerprint(&nested("81"))
    );
    assert_eq!(
        thermal_fingerprint(&nested("80")),
        thermal_fingerprint(&format!("\n\n{}", nested("80")))
    );
}

#[test]
fn rules_from_one_template_share_their_code() {
    let sandbox = Sandbox::new(Limits::default());
    let make = |id: &str, limit: &str| {
        let src = KRONES
            .replace("filler-7-overheat", id)
            .replace("80.0", limit);
        Rule::compile(&sandbox, &src, "t.rhai").unwrap()
    };
    let a = make("filler-1", "80.0");
    let b = make("filler-2", "85.0"); // another captured limit: same code
    assert!(a.shares_code_with(&b));
    assert_ne!(
        a.fingerprints[1], b.fingerprints[1],
        "captured values still count"
    );
    assert_eq!(a.fingerprints[0], b.fingerprints[0]);
    let c = Rule::compile(
        &sandbox,
        &KRONES.replace("weight: 3", "weight: 4"),
        "t.rhai",
    )
    .unwrap();
    assert!(!a.shares_code_with(&c));
    // Another sandbox, another cache: no sharing, same behaviour.
    let d = Rule::compile(&Sandbox::new(Limits::default()), KRONES, "t.rhai").unwrap();
    assert!(!a.shares_code_with(&d));
}
