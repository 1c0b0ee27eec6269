//! Values, types, source timestamps and status codes written on a real OPC UA server
//! (asyncua) arrive in Kinesis as schema-valid points with the right quality and
//! rawQuality; rejected nodes are reported while the others flow; an absolute deadband
//! is applied by the server.

mod agent_opcua_common;

use agent_opcua_common::*;
use linewatch_schemas::{Flag, Quality};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::opcua_server::{write, UaOptions, UaServer, FILLER_NS, LABELLER_NS};
use linewatch_testkit::points::Shipped;
use linewatch_testkit::Scratch;
use serde_json::{json, Value as Json};
use std::time::Duration;

/// A source timestamp in the past, so it cannot be confused with the agent's clock.
const SRC_TS: u64 = 1_767_225_600_123;
const SRV_TS: u64 = 1_767_225_700_456;

fn tags() -> Vec<String> {
    let mut t: Vec<String> = [
        "Filler.Bool",
        "Filler.SByte",
        "Filler.Byte",
        "Filler.Int16",
        "Filler.UInt16",
        "Filler.Int32",
        "Filler.UInt32",
        "Filler.Int64",
        "Filler.UInt64",
        "Filler.Float",
        "Filler.Double",
        "Filler.String",
        "Filler.DateTime",
        "Filler.Restricted",
    ]
    .iter()
    .map(|n| filler_tag(n))
    .collect();
    t.push(format!(
        "{{ name = \"array_1\", node_id = \"nsu={FILLER_NS};s=Filler.Array\", index = 1 }}"
    ));
    t.push(format!(
        "{{ name = \"missing\", node_id = \"nsu={FILLER_NS};s=Filler.DoesNotExist\" }}"
    ));
    t.push("{ name = \"unknown_ns\", node_id = \"nsu=urn:not-on-this-server;s=X\" }".into());
    t
}

fn last<'a>(pts: &'a [Shipped], tag: &str) -> Option<&'a Shipped> {
    of(pts, tag).into_iter().last()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_values_statuses_and_timestamps_arrive_in_kinesis() {
    let scratch = Scratch::new("opcua-values");
    let k = kinesalite(&scratch).await;
    let mut ua = UaServer::start(UaOptions::default(), scratch.path());
    let deadband_group = group(
        "deadband",
        "100ms",
        "",
        &[
            format!("{{ name = \"temperature\", node_id = \"nsu={FILLER_NS};s=Filler.Temperature\", deadband_absolute = 1.0 }}"),
            format!("{{ name = \"speed\", node_id = \"nsu={LABELLER_NS};s=Labeller.Speed\" }}"),
        ],
    );
    let sources = ua_source(
        &ua.endpoint(),
        &scratch.path().join("agent-pki"),
        "",
        &format!(
            "{}\n{deadband_group}",
            group("values", "100ms", "", &tags())
        ),
    );
    let mut agent = start_agent(scratch.path(), &k.endpoint(), &sources, &[]);

    ua.set(&[
        write("Filler.Bool", true),
        write("Filler.SByte", -5),
        write("Filler.Byte", 250),
        write("Filler.Int16", -300).status("UncertainLastUsableValue"),
        write("Filler.UInt16", 60000).status("BadSensorFailure"),
        write("Filler.Int32", -70000)
            .source_ts(None)
            .server_ts(None),
        write("Filler.UInt32", 4_000_000_000u64),
        write("Filler.Int64", i64::MIN),
        write("Filler.UInt64", u64::MAX),
        write("Filler.Float", 1.5)
            .source_ts(None)
            .server_ts(Some(SRV_TS)),
        write("Filler.Double", 2.25).source_ts(Some(SRC_TS)),
        write("Filler.String", "héllo"),
        write("Filler.DateTime", SRC_TS),
        write("Filler.Array", json!([1.0, 7.5, 3.0])),
    ]);

    let expected: Vec<(&str, Json, Quality)> = vec![
        ("bool", json!(true), Quality::Ok),
        ("sbyte", json!(-5), Quality::Ok),
        ("byte", json!(250), Quality::Ok),
        ("int16", json!(-300), Quality::Uncertain),
        ("uint16", Json::Null, Quality::Bad),
        ("int32", json!(-70000), Quality::Ok),
        ("uint32", json!(4_000_000_000u64), Quality::Ok),
        ("int64", json!(i64::MIN), Quality::Ok),
        ("uint64", json!(u64::MAX), Quality::Ok),
        ("float", json!(1.5), Quality::Ok),
        ("double", json!(2.25), Quality::Ok),
        ("string", json!("héllo"), Quality::Ok),
        ("datetime", json!("2026-01-01T00:00:00.123Z"), Quality::Ok),
        ("array_1", json!(7.5), Quality::Ok),
    ];
    let pts = wait_stream(
        &k,
        "every written value in the stream",
        Duration::from_secs(60),
        |pts| {
            for (tag, want, q) in &expected {
                match last(pts, tag) {
                    Some(p) if &p.json["value"] == want && p.point.quality == *q => {}
                    other => {
                        return Err(format!(
                            "{tag}: want {want} {q:?}, last is {:?}",
                            other.map(|p| p.json.to_string())
                        ))
                    }
                }
            }
            for tag in ["missing", "unknown_ns", "restricted"] {
                if last(pts, tag).is_none() {
                    return Err(format!("no point for {tag} yet"));
                }
            }
            Ok(pts.to_vec())
        },
    )
    .await;
    agent.assert_running();

    let raw = |tag: &str| {
        last(&pts, tag)
            .and_then(|p| p.point.meta.raw_quality.clone())
            .unwrap_or_default()
    };
    assert_eq!(raw("int16"), "0x40900000 UncertainLastUsableValue");
    assert_eq!(raw("uint16"), "0x808C0000 BadSensorFailure");
    assert_eq!(raw("bool"), "", "Good has no rawQuality");
    assert!(
        raw("missing").contains("BadNodeIdUnknown"),
        "{}",
        raw("missing")
    );
    assert!(
        raw("unknown_ns").contains("urn:not-on-this-server"),
        "{}",
        raw("unknown_ns")
    );
    assert!(
        raw("restricted").contains("BadUserAccessDenied"),
        "{}",
        raw("restricted")
    );
    for tag in ["missing", "unknown_ns", "restricted"] {
        let p = last(&pts, tag).map(|p| (p.point.quality, p.json["value"].clone()));
        assert_eq!(p, Some((Quality::Bad, Json::Null)), "{tag}");
    }

    // Event time: the source timestamp, else the server's, else the agent's clock (Ats).
    let double = last(&pts, "double").expect("double");
    assert_eq!(double.point.timestamp, SRC_TS);
    assert!(!double.point.meta.flags.contains(Flag::Ats));
    let float = last(&pts, "float").expect("float");
    assert_eq!(float.point.timestamp, SRV_TS);
    assert!(!float.point.meta.flags.contains(Flag::Ats));
    let int32 = last(&pts, "int32").expect("int32");
    assert!(int32.point.meta.flags.contains(Flag::Ats), "{}", int32.json);

    // Fst on every tag's first point of the session.
    for (tag, _, _) in &expected {
        let first = of(&pts, tag).into_iter().next().expect("a point");
        assert!(
            first.point.meta.flags.contains(Flag::Fst),
            "{tag}: {}",
            first.json
        );
    }
    // Rejected nodes were reported once each (one point per session), not per publish.
    assert_eq!(of(&pts, "missing").len(), 1);
    let log = std::fs::read_to_string(scratch.path().join("agent.log")).unwrap_or_default();
    for tag in ["missing", "unknown_ns"] {
        let lines = log
            .lines()
            .filter(|l| l.contains("opcua node rejected") && l.contains(&format!("tag={tag} ")))
            .count();
        assert_eq!(lines, 1, "{tag} reported once:\n{log}");
    }

    // Deadband: moves below 1.0 from the last reported value are not reported; a
    // change of `speed` (same subscription, no deadband) after them shows the server
    // has handled them.
    let temps = |pts: &[Shipped]| -> Vec<Json> {
        of(pts, "temperature")
            .iter()
            .map(|p| p.json["value"].clone())
            .collect()
    };
    wait_stream(&k, "initial temperature", Duration::from_secs(30), |p| {
        (temps(p) == [json!(20.0)])
            .then_some(())
            .ok_or(format!("{:?}", temps(p)))
    })
    .await;
    for (i, t) in [20.3, 20.6, 20.9].into_iter().enumerate() {
        ua.set(&[write("Filler.Temperature", t)]);
        let speed = i as f64 + 1.0;
        ua.set(&[write("Labeller.Speed", speed)]);
        wait_stream(
            &k,
            "speed after a small temperature change",
            Duration::from_secs(30),
            |p| {
                last(p, "speed")
                    .filter(|s| s.json["value"] == json!(speed))
                    .map(|_| ())
                    .ok_or_else(|| "speed not yet".to_owned())
            },
        )
        .await;
    }
    ua.set(&[write("Filler.Temperature", 25.0)]);
    let pts = wait_stream(
        &k,
        "a large temperature change",
        Duration::from_secs(30),
        |p| {
            temps(p)
                .contains(&json!(25.0))
                .then(|| p.to_vec())
                .ok_or(format!("{:?}", temps(p)))
        },
    )
    .await;
    assert_eq!(
        temps(&pts),
        [json!(20.0), json!(25.0)],
        "small changes never reported"
    );

    let m = agent.scrape();
    assert!(
        m.sum(
            "linewatch_agent_opcua_data_changes_total",
            &[("source", SOURCE)]
        ) > 0.0
    );
    assert!(
        m.sum(
            "linewatch_agent_opcua_rejected_nodes",
            &[("source", SOURCE)]
        ) >= 2.0
    );
    assert_eq!(
        m.sum("linewatch_agent_opcua_session_state", &[("source", SOURCE)]),
        2.0
    );
    assert_eq!(
        m.sum(
            "linewatch_agent_opcua_sessions_total",
            &[("source", SOURCE)]
        ),
        1.0
    );
    agent.terminate(Duration::from_secs(10));
}

/// `linewatch-agent check` on OPC UA mistakes: each error names its key, the process
/// exits non-zero; an `ns=` node id passes with a warning naming its key.
#[test]
fn opcua_check_names_the_key_of_each_mistake() {
    use linewatch_e2e::agent::{check_config, AgentConfig};
    let scratch = Scratch::new("opcua-check");
    let base = base_toml(&AgentConfig::new(
        scratch.path(),
        "http://127.0.0.1:4567",
        STREAM,
    ));
    let pki = scratch.path().join("pki");
    let good_tags = [filler_tag("Filler.Double")];
    let config = |keys: &str, tags: &[String]| {
        format!(
            "{base}\n{}",
            ua_source(
                "opc.tcp://127.0.0.1:4840/",
                &pki,
                keys,
                &group("g", "1s", "", tags)
            )
        )
    };
    let ok = check_config(&config("", &good_tags), scratch.path());
    assert!(ok.status.success(), "{}", ok.output);

    let garbage = scratch.path().join("garbage.der");
    std::fs::write(&garbage, b"not a certificate").expect("write");
    let key = scratch.path().join("key.pem");
    std::fs::write(&key, b"not a key").expect("write");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a bad endpoint URL",
            config("", &good_tags).replace("opc.tcp://127.0.0.1:4840/", "http://127.0.0.1:4840/"),
            "sources[0].endpoint",
        ),
        (
            "an unreadable certificate",
            config(
                &format!(
                    "certificate = \"{}\"\nprivate_key = \"{}\"",
                    garbage.display(),
                    key.display()
                ),
                &good_tags,
            ),
            "sources[0].certificate",
        ),
        (
            "an unparsable node id",
            config(
                "",
                &["{ name = \"t\", node_id = \"nsu=urn:x;q=1\" }".to_owned()],
            ),
            "sources[0].groups[0].tags[0].node_id",
        ),
        (
            "an unknown security policy",
            config(
                "security_policy = \"Basic512\"\nsecurity_mode = \"Sign\"",
                &good_tags,
            ),
            "security_policy",
        ),
        (
            "an inline password",
            config(
                "login = { type = \"username\", username = \"u\", password = \"hunter2\" }",
                &good_tags,
            ),
            "sources[0].login.password",
        ),
    ];
    for (what, text, key) in cases {
        let r = check_config(&text, scratch.path());
        assert!(
            !r.status.success(),
            "{what}: check must fail:\n{}",
            r.output
        );
        assert!(
            r.output.contains(key),
            "{what}: the error names {key}:\n{}",
            r.output
        );
        assert!(
            !r.output.contains("hunter2"),
            "{what}: no secret in the output"
        );
    }
    let warned = check_config(
        &config(
            "",
            &["{ name = \"t\", node_id = \"ns=2;s=Filler.Double\" }".to_owned()],
        ),
        scratch.path(),
    );
    assert!(warned.status.success(), "{}", warned.output);
    assert!(
        warned.output.contains("warning")
            && warned
                .output
                .contains("sources[0].groups[0].tags[0].node_id"),
        "{}",
        warned.output
    );
}
