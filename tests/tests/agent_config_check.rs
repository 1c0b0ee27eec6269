//! A malformed configuration: `check` exits non-zero with an error naming the key;
//! `run` refuses to start on it the same way; a good one passes.

mod common;

use common::*;
use linewatch_e2e::agent::{check_config, modbus_source, run_agent, tag, AgentConfig};
use linewatch_testkit::Scratch;
use std::time::Duration;

fn good(scratch: &Scratch) -> String {
    let mut cfg = AgentConfig::new(scratch.path(), "http://127.0.0.1:4567", STREAM);
    cfg.sources.push(modbus_source(
        "filling_machine",
        "127.0.0.1:5020",
        FILLER,
        "1s",
        filling_machine_tags(),
    ));
    cfg.to_toml()
}

#[test]
fn malformed_config_is_refused_naming_the_key() {
    let scratch = Scratch::new("config");
    let ok = good(&scratch);
    let r = check_config(&ok, scratch.path());
    assert!(
        r.status.success(),
        "a good config passes check:\n{ok}\n---\n{}",
        r.output
    );

    let no_equipment = {
        let mut cfg = AgentConfig::new(scratch.path(), "http://127.0.0.1:4567", STREAM);
        let mut src = modbus_source(
            "plc",
            "127.0.0.1:5020",
            FILLER,
            "1s",
            vec![tag("t", "coil", 0, "bool")],
        );
        src.equipment_id = None;
        cfg.sources.push(src);
        cfg.to_toml()
    };
    // (what is wrong, the config, text the error must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a number that is text",
            ok.replace("max_bytes = 67108864", "max_bytes = \"lots\""),
            "max_bytes",
        ),
        (
            "a buffer below 1 MiB",
            ok.replace("max_bytes = 67108864", "max_bytes = 1000"),
            "buffer.max_bytes",
        ),
        (
            "a misspelt key",
            ok.replace("linger = ", "lingr = "),
            "lingr",
        ),
        (
            "an unknown overflow policy",
            ok.replace("overflow = \"drop_oldest\"", "overflow = \"drop_newest\""),
            "overflow",
        ),
        (
            "a tag without equipment",
            no_equipment,
            "sources[0].groups[0].tags[0].equipment_id",
        ),
        (
            "a coil read as f32",
            ok.replace(
                "area = \"coil\"\naddress = 0\ntype = \"bool\"",
                "area = \"coil\"\naddress = 0\ntype = \"f32\"",
            ),
            "sources[0].groups[0].tags[11].type",
        ),
        (
            "a zero poll interval",
            ok.replace("interval = \"1s\"", "interval = \"0s\""),
            "sources[0].groups[0].interval",
        ),
        ("not TOML at all", "gateway_id = \n[[[".to_owned(), "line"),
    ];
    for (what, text, key) in &cases {
        assert_ne!(text, &ok, "{what}: the replacement must change the config");
        let r = check_config(text, scratch.path());
        assert!(
            !r.status.success(),
            "{what}: check must fail:\n{text}\n---\n{}",
            r.output
        );
        assert!(
            r.output.contains(key),
            "{what}: the error must name {key:?}, got:\n{}",
            r.output
        );
    }

    // `run` on a bad config exits non-zero naming the key, without starting anything.
    let bad = ok.replace("max_bytes = 67108864", "max_bytes = 1000");
    let path = scratch.path().join("bad-run.toml");
    std::fs::write(&path, bad).expect("write config");
    let r = run_agent(
        &["run", "--config"],
        &path,
        scratch.path(),
        Duration::from_secs(20),
    );
    assert!(
        !r.status.success(),
        "run on a bad config must fail:\n{}",
        r.output
    );
    assert!(r.output.contains("buffer.max_bytes"), "{}", r.output);

    // A missing file names the file.
    let missing = scratch.path().join("nope.toml");
    let r = run_agent(
        &["check", "--config"],
        &missing,
        scratch.path(),
        Duration::from_secs(20),
    );
    assert!(!r.status.success());
    assert!(r.output.contains("nope.toml"), "{}", r.output);
}

/// Three mistakes, two of them inside a tag table (buffered by the source's key split):
/// `check` names each with its full key path and line, in file order, suggests the
/// spelling of the typo, and exits 1; an unreadable file exits 2.
#[test]
fn check_reports_every_problem_with_its_key_and_line() {
    let scratch = Scratch::new("config-all");
    let text = format!(
        r#"gateway_id = "gw"

[buffer]
path = "{dir}/buffer"

[kinesis]
stream = "s"
region = "eu-central-1"

[[sources]]
type = "modbus"
id = "plc"
address = "127.0.0.1:502"
unit_id = 300
equipment_id = "filler"

  [[sources.groups]]
  name = "g"
  interval = "1s"

    [[sources.groups.tags]]
    name = "a"
    area = "coil"
    address = 0
    type = "bool"

    [[sources.groups.tags]]
    name = "b"
    area = "discrete"
    address = 1
    type = "bool"
    scael = 2.0
"#,
        dir = scratch.path().display()
    );
    let r = check_config(&text, scratch.path());
    assert_eq!(r.status.code(), Some(1), "problems found:\n{}", r.output);
    let errors: Vec<&str> = r
        .output
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let want = [
        (14, "sources[0].unit_id: invalid value: integer `300`, expected u8"),
        (
            29,
            "sources[0].groups[0].tags[1].area: unknown value `discrete`: did you mean `discrete_input`?",
        ),
        (
            32,
            "sources[0].groups[0].tags[1].scael: unknown key `scael`: did you mean `scale`?",
        ),
    ];
    assert_eq!(
        errors.len(),
        want.len(),
        "every problem, once:\n{}",
        r.output
    );
    for ((line, problem), got) in want.iter().zip(&errors) {
        assert!(
            got.ends_with(&format!(".toml:{line}: {problem}")),
            "want line {line}: {problem}\ngot: {got}\n{}",
            r.output
        );
    }
    assert!(r.output.contains("3 problem(s)"), "{}", r.output);

    let missing = scratch.path().join("nope.toml");
    let r = run_agent(
        &["check", "--config"],
        &missing,
        scratch.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r.status.code(), Some(2), "unreadable:\n{}", r.output);
}
