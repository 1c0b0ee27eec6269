//! The binary: `check` exit codes and messages, `replay` output, line numbers of
//! malformed input, progress and dead letters.

#[path = "../../core/tests/common/mod.rs"]
mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linewatch-rules"))
}

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rules")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("linewatch-rules-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_accepts_the_examples_and_rejects_bad_rules_with_their_errors() {
    let out = bin().arg("check").arg(examples()).output().expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("rule \"filler-7-overheat\" v1"));

    let bad = tmp("bad.rhai");
    std::fs::write(&bad, "#{ id: \"b\", equipment: \"e\",\n groups: [ #{ name: \"g\", tags: [\"t\"], stat: |v| \"OK\" } ] }")
        .expect("write");
    let out = bin()
        .arg("check")
        .arg(&bad)
        .arg(examples().join("krones-filler.rhai"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.rhai:2: rule \"b\": group \"g\": invalid definition: unknown key `stat`"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("filler-7-overheat"),
        "good files are still reported"
    );
}

fn run_replay(args: &[&str], input: &str) -> Output {
    let mut child = bin()
        .arg("replay")
        .arg("--rules")
        .arg(examples())
        .args(["--input", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write input");
    child.wait_with_output().expect("finishes")
}

#[test]
fn replay_prints_transitions_and_reports_bad_lines_with_their_numbers() {
    let f = "84068f2f-3f39-4b9c-a995-d2a84d878689";
    let t0 = 1_732_180_000_000u64;
    let mut lines = vec![
        point_json("gw", "filler", f, "machine_state", t0, "\"RUNNING\""),
        point_json("gw", "filler", f, "product", t0, "\"1L\""),
        "{not json".to_string(),
        point_json("gw", "filler", f, "water_temperature", t0 + 1_000, "85.0"),
        r#"{"version":1,"timestamp":-5}"#.to_string(),
        point_json("gw", "filler", f, "pressure", t0 + 2_000, "2.0"),
    ];
    // Readings every 10 s for 10 min keep both above from t0 + 12 s: WARNING 5 min later.
    for i in 1..60 {
        lines.push(point_json(
            "gw",
            "filler",
            f,
            "pressure",
            t0 + 2_000 + i * 10_000,
            "3.0",
        ));
    }
    // A late point: far behind the watermark.
    lines.push(point_json("gw", "filler", f, "product", t0 + 1, "\"2L\""));
    let dl = tmp("dead.ndjson");
    let out = run_replay(
        &[
            "--progress-every",
            "20",
            "--dead-letter",
            dl.to_str().expect("utf-8 path"),
        ],
        &lines.join("\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let transitions: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let states: Vec<(&str, u64)> = transitions
        .iter()
        .map(|t| {
            (
                t["state"].as_str().unwrap_or(""),
                t["eventTime"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![("ACTIVE", t0), ("WARNING", t0 + 12_000 + 300_000)]
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 3: skipped: invalid data point: not JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: skipped: invalid data point:"),
        "{stderr}"
    );
    assert!(stderr.contains("line 66: late:"), "{stderr}");
    assert!(stderr.contains("progress: 20 lines"), "{stderr}");
    assert!(!stderr.contains("Some("), "no Rust debug text: {stderr}");
    let done = stderr
        .lines()
        .find(|l| l.starts_with("done: "))
        .unwrap_or_else(|| panic!("a summary line: {stderr}"));
    assert!(
        done.contains("watermark 17") && done.contains("(2024-11-21T"),
        "the watermark as a number and a UTC time: {done}"
    );
    assert!(stderr.contains("late from gw/filler: 1"), "{stderr}");
    let dead = std::fs::read_to_string(&dl).expect("dead letters written");
    assert_eq!(dead.lines().count(), 1);
    assert!(dead.contains("\"2L\""));
}

#[test]
fn replay_events_mode_writes_eventbridge_envelopes() {
    let f = "84068f2f-3f39-4b9c-a995-d2a84d878689";
    let input = [
        point_json("gw", "filler", f, "machine_state", 1_000, "\"RUNNING\""),
        point_json("gw", "filler", f, "product", 1_000, "\"1L\""),
    ]
    .join("\n");
    let out = run_replay(
        &[
            "--events",
            "--account",
            "123456789012",
            "--region",
            "eu-central-1",
        ],
        &input,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("one event");
    assert_eq!(e["detail-type"], "Rule State Changed");
    assert_eq!(e["account"], "123456789012");
    assert_eq!(e["detail"]["state"], "ACTIVE");
}

#[test]
fn replay_flush_fires_holds_due_after_the_last_point() {
    let eq = "84068f2f-3f39-4b9c-a995-d2a84d878689";
    let t0 = 1_732_180_000_000u64;
    let input = [
        point_json("gw", "s", eq, "machine_state", t0, "\"RUNNING\""),
        point_json("gw", "s", eq, "product", t0, "\"1L\""),
        point_json("gw", "s", eq, "water_temperature", t0, "70.0"),
        point_json("gw", "s", eq, "pressure", t0, "2.0"),
        point_json("gw", "s", eq, "water_temperature", t0 + 1_000, "85.0"),
        point_json("gw", "s", eq, "pressure", t0 + 1_000, "2.7"),
    ]
    .join("\n");
    let states = |out: &Output| -> Vec<String> {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| {
                let t: serde_json::Value = serde_json::from_str(l).expect("JSON");
                format!("{}@{}", t["state"].as_str().unwrap(), t["eventTime"])
            })
            .collect()
    };
    let plain = states(&run_replay(&["--max-out-of-orderness", "0s"], &input));
    assert_eq!(plain, vec![format!("ACTIVE@{t0}")]);
    let flushed = states(&run_replay(
        &["--max-out-of-orderness", "0s", "--flush"],
        &input,
    ));
    assert_eq!(
        flushed,
        vec![
            format!("ACTIVE@{t0}"),
            format!("WARNING@{}", t0 + 1_000 + 300_000)
        ]
    );
}

#[test]
fn check_config_reports_every_problem_with_its_line_and_the_exit_codes_agree() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/service.toml");
    let out = bin()
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );

    let bad = tmp("bad-service.toml");
    std::fs::write(
        &bad,
        "state_dir = \"/tmp/x\"\n[kinesis]\nstream = \"s\"\nregoin = \"r\"\n[mqtt]\nport = 70000\nauth = { accept_unsigned = true }\n[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"\n",
    )
    .expect("write");
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .arg(examples())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "problems found");
    let err = text(&out.stderr);
    let f = bad.display();
    for want in [
        format!("error: {f}:4: kinesis.regoin: unknown key `regoin`: did you mean `region`?"),
        format!("error: {f}:6: mqtt.port: invalid value: integer `70000`"),
        format!("error: {f}:10: webhooks[0].url:"),
    ] {
        assert!(err.contains(&want), "want {want}\n{err}");
    }
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        text(&out.stdout).contains("filler-7-overheat"),
        "the rules are checked too"
    );

    for args in [
        vec![
            "check".to_owned(),
            "--config".to_owned(),
            "/nonexistent/x.toml".to_owned(),
        ],
        vec!["check".to_owned(), "/nonexistent/rules".to_owned()],
        vec!["check".to_owned()],
    ] {
        let out = bin().args(&args).output().expect("runs");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: unreadable or usage: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn dead_letters_list_creates_no_folders() {
    let dir = tmp("dl-list");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state");
    let cfg = dir.join("service.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[kinesis]\nstream = \"s\"\nregion = \"r\"\n[mqtt]\nauth = {{ accept_unsigned = true }}\n[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\n",
            state.display()
        ),
    )
    .expect("write");
    let out = bin()
        .args(["dead-letters", "list", "--config"])
        .arg(&cfg)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(!state.exists(), "list only reads: {}", state.display());
}

#[test]
fn an_error_and_its_cause_are_said_once() {
    let out = bin()
        .args([
            "dead-letters",
            "list",
            "--config",
            "/nonexistent/service.toml",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/service.toml: "),
        "{err}"
    );
    assert_eq!(err.matches("(os error 2)").count(), 1, "said once: {err}");
}
