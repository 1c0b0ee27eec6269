//! Rules that loop forever or bomb memory are stopped and reported; the other rules
//! produce exactly the transitions they produce alone.

mod common;
use common::*;
use linewatch_rules_core::replay::{replay, ReplayEvent, ReplayOptions};
use linewatch_rules_core::{Diagnostic, DiagnosticKind, Limits, Rule, Sandbox};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bad_rule(id: &str, equipment: &str, body: &str) -> String {
    format!(
        "#{{ id: \"{id}\", equipment: \"{equipment}\",\n  groups: [\n    #{{ name: \"bad\", tags: [\"water_temperature\"],\n       state: |v| {body} }},\n    #{{ name: \"ok\", tags: [\"pressure\"], state: |v| \"OK\" }} ] }}"
    )
}

fn run(rules: Vec<Arc<Rule>>, input: &str, limits: Limits) -> (String, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    replay(
        rules,
        input.as_bytes(),
        &mut out,
        ReplayOptions {
            limits,
            ..ReplayOptions::default()
        },
        &mut |e| {
            if let ReplayEvent::Diagnostic(d) = e {
                diags.push(d.clone());
            }
        },
    )
    .expect("replay runs");
    (String::from_utf8(out).expect("utf-8"), diags)
}

#[test]
fn looping_and_memory_bombing_rules_are_stopped_and_the_rest_keeps_producing() {
    let limits = Limits {
        eval_deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let sandbox = Sandbox::new(limits.clone());
    let compile =
        |src: &str| Arc::new(Rule::compile(&sandbox, src, "test.rhai").expect("compiles"));
    let good: Vec<_> = (0..5)
        .map(|e| {
            compile(&krones_rule(
                &format!("good-{e}"),
                &format!("eq-{e}"),
                1,
                "10s",
            ))
        })
        .collect();
    let bad = vec![
        compile(&bad_rule(
            "loops",
            "eq-0",
            "{ let n = 0; loop { n += 1; } }",
        )),
        compile(&bad_rule("undefined-fn", "eq-1", "{ no_such_function(v) }")),
        compile(&format!(
            "fn deeper(x) {{ deeper(x + 1) }}\n{}",
            bad_rule("recurses", "eq-2", "deeper(0)")
        )),
        compile(&bad_rule(
            "string-bomb",
            "eq-2",
            r#"{ let s = "bomb"; while true { s += s; } }"#,
        )),
        compile(&bad_rule(
            "array-bomb",
            "eq-3",
            "{ let a = [0]; while true { a += a; } }",
        )),
        compile(&bad_rule(
            "map-bomb",
            "eq-4",
            "{ let m = #{}; let i = 0; while true { m[`k${i}`] = i; i += 1; } }",
        )),
    ];
    let mut rng = Rng(11);
    let input: Vec<String> = krones_stream(&mut rng, 5, 5_000, 1_700_000_000_000, 100)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let input = input.join("\n");

    let (alone, alone_diags) = run(good.clone(), &input, limits.clone());
    assert!(alone_diags.is_empty());
    assert!(
        alone.lines().count() > 10,
        "the good rules produce transitions"
    );

    let started = Instant::now();
    let mut all = good.clone();
    all.extend(bad);
    let (together, diags) = run(all, &input, limits);
    // Each bad group is stopped on its first evaluation and not called again.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // The good rules' transitions are exactly the same; the bad rules' "ok" groups
    // still vote, so they produce their own transitions too.
    let good_lines: Vec<&str> = together
        .lines()
        .filter(|l| l.contains(r#""ruleId":"good-"#))
        .collect();
    assert_eq!(good_lines, alone.lines().collect::<Vec<_>>());

    for id in ["loops", "string-bomb", "array-bomb", "map-bomb"] {
        let d: Vec<_> = diags.iter().filter(|d| d.rule_id == id).collect();
        assert_eq!(d.len(), 1, "{id}: {d:?}");
        assert_eq!(d[0].kind, DiagnosticKind::GroupDisabled, "{id}: {d:?}");
        assert_eq!(d[0].group, "bad");
        assert_eq!(d[0].line, Some(4), "{id}: {d:?}");
    }
    let d: Vec<_> = diags.iter().filter(|d| d.rule_id == "recurses").collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, DiagnosticKind::GroupDisabled);
    assert!(d[0].message.contains("stack"), "{d:?}");
    // Calling an undefined function is a plain error, reported once, not a disable.
    let d: Vec<_> = diags
        .iter()
        .filter(|d| d.rule_id == "undefined-fn")
        .collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, DiagnosticKind::GroupError);
}

#[test]
fn a_slow_group_is_stopped_by_the_wall_clock_deadline_each_time_and_not_disabled() {
    // No operation limit at all: only the deadline can stop this one. A deadline hit
    // depends on the machine, so it fails that evaluation only (reported once).
    let limits = Limits {
        max_operations: 0,
        eval_deadline: Duration::from_millis(30),
        ..Limits::default()
    };
    let sandbox = Sandbox::new(limits.clone());
    let slow = Arc::new(
        Rule::compile(
            &sandbox,
            &bad_rule("slow", "eq-0", "{ loop { } }"),
            "slow.rhai",
        )
        .expect("compiles"),
    );
    let good = Arc::new(
        Rule::compile(&sandbox, &krones_rule("good", "eq-0", 1, "0s"), "good.rhai")
            .expect("compiles"),
    );
    let input = [
        point_json("gw", "s", "eq-0", "machine_state", 1, "\"RUNNING\""),
        point_json("gw", "s", "eq-0", "product", 2, "\"1L\""),
        point_json("gw", "s", "eq-0", "water_temperature", 3, "90.0"),
        point_json("gw", "s", "eq-0", "pressure", 4, "3.0"),
        point_json("gw", "s", "eq-0", "water_temperature", 5, "91.0"),
    ]
    .join("\n");
    let started = Instant::now();
    let (out, diags) = run(vec![slow, good], &input, limits);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(r#""ruleId":"good""#))
            .count(),
        2
    );
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].kind, DiagnosticKind::GroupError);
    assert!(diags[0].message.contains("deadline"), "{:?}", diags[0]);
}
