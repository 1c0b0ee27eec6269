//! The agent against the real Snap7 server (python-snap7 2.1.0), as a real process,
//! shipping to kinesalite: every supported type from DB, M, I, Q, T and C arrives with
//! its value; an address past a DB's end is `Bad` with the item's return code while
//! the others flow; more tags than one PDU holds are read in the fewest requests.

mod common;

use common::*;
use linewatch_e2e::agent::{Agent, AgentConfig};
use linewatch_schemas::{Flag, Quality};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::s7_plc::{write, Area, S7Options, S7Sim, S7Write};
use linewatch_testkit::points::{self, Shipped};
use linewatch_testkit::Scratch;
use serde_json::{json, Value as Json};
use std::time::Duration;

/// A `[[sources]]` table of type s7 with one poll group.
fn s7_source(id: &str, address: &str, interval: &str, pdu: u16, tags: &[(&str, &str)]) -> String {
    let tags: Vec<String> = tags
        .iter()
        .map(|(name, addr)| format!("{{ name = \"{name}\", address = \"{addr}\" }}"))
        .collect();
    format!(
        "\n[[sources]]\ntype = \"s7\"\nid = \"{id}\"\naddress = \"{address}\"\nequipment_id = \"{FILLER}\"\n\
         rack = 0\nslot = 1\npdu_size = {pdu}\ntimeout = \"1s\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"500ms\"\n\
         [[sources.groups]]\nname = \"main\"\ninterval = \"{interval}\"\ntags = [{}]\n",
        tags.join(", ")
    )
}

async fn kinesalite(test: &str) -> (Scratch, Kinesalite) {
    let scratch = Scratch::new(test);
    let k = Kinesalite::start(KinesaliteOptions::default(), scratch.path());
    k.create_stream(STREAM, 1).await;
    (scratch, k)
}

/// S7 STRING[max] bytes: max length, current length, Latin-1 characters, padding.
fn s7_string(max: u8, text: &str) -> Vec<u8> {
    let chars: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
    let mut b = vec![max, chars.len() as u8];
    b.extend_from_slice(&chars);
    b.resize(2 + usize::from(max), 0);
    b
}

fn s7_wstring(max: u16, text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let mut b = max.to_be_bytes().to_vec();
    b.extend_from_slice(&(units.len() as u16).to_be_bytes());
    for u in units {
        b.extend_from_slice(&u.to_be_bytes());
    }
    b.resize(4 + 2 * usize::from(max), 0);
    b
}

/// (tag, address, bytes written, expected JSON value).
fn every_type() -> Vec<(&'static str, &'static str, S7Write, Json)> {
    let db = Area::Db(1);
    let mut levels = Vec::new();
    for v in [1.5f32, -2.25, 3.0] {
        levels.extend_from_slice(&v.to_be_bytes());
    }
    vec![
        (
            "temperature",
            "DB1.DBD0:REAL",
            write(db, 0, 21.5f32.to_be_bytes()),
            json!(21.5),
        ),
        (
            "flow",
            "DB1.DBB4:LREAL",
            write(db, 4, 1234.5678f64.to_be_bytes()),
            json!(1234.5678),
        ),
        (
            "ambient",
            "DB1.DBW12:INT",
            write(db, 12, (-150i16).to_be_bytes()),
            json!(-150),
        ),
        (
            "status_word",
            "DB1.DBW14",
            write(db, 14, 65000u16.to_be_bytes()),
            json!(65000),
        ),
        (
            "offset",
            "DB1.DBD16:DINT",
            write(db, 16, (-100_000i32).to_be_bytes()),
            json!(-100_000),
        ),
        (
            "bottles",
            "DB1.DBD20",
            write(db, 20, 4_000_000_000u32.to_be_bytes()),
            json!(4_000_000_000u64),
        ),
        ("recipe", "DB1.DBB24", write(db, 24, [200u8]), json!(200)),
        ("grade", "DB1.DBB25:CHAR", write(db, 25, [b'Z']), json!("Z")),
        (
            "running",
            "DB1.DBX26.0",
            write(db, 26, [0b0000_0101u8]),
            json!(true),
        ),
        (
            "alarm",
            "DB1.DBX26.1",
            write(db, 26, [0b0000_0101u8]),
            json!(false),
        ),
        (
            "door_closed",
            "DB1.DBX26.2",
            write(db, 26, [0b0000_0101u8]),
            json!(true),
        ),
        (
            "product",
            "DB1.DBB28:STRING[20]",
            write(db, 28, s7_string(20, "Füllung 3")),
            json!("Füllung 3"),
        ),
        (
            "operator",
            "DB1.DBB50:WSTRING[10]",
            write(db, 50, s7_wstring(10, "Ölstand €")),
            json!("Ölstand €"),
        ),
        (
            "batch_start",
            "DB1.DBB74:DATE_AND_TIME",
            write(db, 74, [0x26, 0x12, 0x02, 0x20, 0x30, 0x05, 0x12, 0x34]),
            json!("2026-12-02T20:30:05.123"),
        ),
        ("levels[0]", "", write(db, 82, levels), json!(1.5)),
        (
            "levels[1]",
            "",
            write(db, 0, 21.5f32.to_be_bytes()),
            json!(-2.25),
        ),
        (
            "levels[2]",
            "",
            write(db, 0, 21.5f32.to_be_bytes()),
            json!(3.0),
        ),
        (
            "trim",
            "DB1.DBB100:SINT",
            write(db, 100, [(-5i8) as u8]),
            json!(-5),
        ),
        (
            "marker_word",
            "MW20:INT",
            write(Area::Markers, 20, (-42i16).to_be_bytes()),
            json!(-42),
        ),
        (
            "marker_bit",
            "M10.3",
            write(Area::Markers, 10, [0b0000_1000u8]),
            json!(true),
        ),
        (
            "input_word",
            "IW2",
            write(Area::Inputs, 2, 1234u16.to_be_bytes()),
            json!(1234),
        ),
        (
            "input_bit",
            "I0.1",
            write(Area::Inputs, 0, [0b10u8]),
            json!(true),
        ),
        (
            "output_bit",
            "Q0.1",
            write(Area::Outputs, 0, [0b10u8]),
            json!(true),
        ),
        (
            "output_real",
            "QD4:REAL",
            write(Area::Outputs, 4, 9.75f32.to_be_bytes()),
            json!(9.75),
        ),
        // S5TIME: time base 2 (1 s), BCD 123 → 123 000 ms; counter BCD 042. Timer and
        // counter 0: the Snap7 server shifts a timer/counter number like a bit address
        // (number >> 3 = byte), so only number 0 means the same to it and to a CPU.
        (
            "dwell",
            "T0",
            write(Area::Timers, 0, [0x21u8, 0x23]),
            json!(123_000),
        ),
        (
            "rejects",
            "C0",
            write(Area::Counters, 0, [0x00u8, 0x42]),
            json!(42),
        ),
    ]
}

/// Same JSON type and, for floats, the same value.
fn same(got: &Json, want: &Json) -> bool {
    match (got, want) {
        (Json::Number(g), Json::Number(w)) if w.is_f64() => {
            g.is_f64() && (g.as_f64().unwrap_or(f64::NAN) - w.as_f64().unwrap_or(0.0)).abs() < 1e-9
        }
        (Json::Number(g), Json::Number(w)) => {
            !g.is_f64() && g.as_i64() == w.as_i64() && g.as_u64() == w.as_u64()
        }
        _ => got == want,
    }
}

fn latest<'a>(pts: &'a [Shipped], tag: &str) -> Option<&'a Shipped> {
    points::of_tag(pts, tag).into_iter().max_by_key(|p| p.seq())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_values_of_every_type_arrive_and_a_rejected_item_is_bad_alone() {
    let (scratch, k) = kinesalite("s7-types").await;
    let mut sim = S7Sim::start(&S7Options::default(), scratch.path());
    let cases = every_type();
    sim.set(&cases.iter().map(|c| c.2.clone()).collect::<Vec<_>>());

    let mut tags: Vec<(&str, &str)> = cases
        .iter()
        .filter(|c| !c.1.is_empty())
        .map(|c| (c.0, c.1))
        .collect();
    tags.push(("levels", "DB1.DBD82:REAL[3]"));
    // DB1 has 512 bytes: this one lies past its end.
    tags.push(("beyond", "DB1.DBD600:REAL"));
    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    cfg.extra_toml = s7_source("s7_filler", &sim.address(), "100ms", 480, &tags);
    let mut agent = Agent::start(cfg, scratch.path());

    let pts = wait_stream(
        &k,
        "every S7 tag in the stream",
        Duration::from_secs(40),
        |p| {
            for (name, _, _, want) in every_type() {
                match latest(p, name) {
                    Some(x) if same(&x.json["value"], &want) && x.point.quality == Quality::Ok => {}
                    Some(x) => {
                        return Err(format!(
                            "{name} = {} ({:?}), want {want}",
                            x.json["value"], x.point.quality
                        ))
                    }
                    None => return Err(format!("no {name} yet")),
                }
            }
            if latest(p, "beyond").is_none() {
                return Err("no point for the tag past the DB's end".into());
            }
            Ok(p.to_vec())
        },
    )
    .await;
    agent.assert_running();

    let beyond = latest(&pts, "beyond").expect("checked above");
    assert_eq!(beyond.point.quality, Quality::Bad);
    assert!(beyond.json["value"].is_null());
    assert_eq!(
        beyond.point.meta.raw_quality.as_deref(),
        Some("s7 item return code 0x05 (address out of range)"),
        "the item's return code and its meaning"
    );
    // The first reading of each tag carries Fst; nothing was lost, nothing synthesised.
    let first = points::of_tag(&pts, "temperature")
        .into_iter()
        .min_by_key(|p| p.seq())
        .expect("temperature arrived");
    assert!(first.point.meta.flags.contains(Flag::Fst));
    assert!(points::unique(&pts)
        .iter()
        .all(|p| !p.point.meta.flags.contains(Flag::Syn)));
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("gaps: {e}"));

    // A value changed at run time arrives (the agent keeps polling one connection).
    let clients = sim.stats()["clients"].clone();
    sim.set(&[write(Area::Db(1), 0, (-3.5f32).to_be_bytes())]);
    wait_stream(
        &k,
        "the new temperature",
        Duration::from_secs(20),
        |p| match latest(p, "temperature") {
            Some(x) if same(&x.json["value"], &json!(-3.5)) => Ok(()),
            other => Err(format!(
                "temperature is {:?}",
                other.map(|x| x.json["value"].clone())
            )),
        },
    )
    .await;
    assert_eq!(
        sim.stats()["clients"],
        clients,
        "no new connection: one link serves the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_more_tags_than_one_pdu_are_read_in_the_fewest_requests() {
    let (scratch, k) = kinesalite("s7-packing").await;
    let opts = S7Options {
        dbs: vec![(1, 1024), (2, 512)],
        ..S7Options::default()
    };
    let mut sim = S7Sim::start(&opts, scratch.path());
    // 50 DINTs 8 bytes apart in DB2 (50 items: at most 20 per request) and an
    // 800-byte REAL[200] in DB1 (at most 480 − 18 = 462 bytes per answer).
    let mut writes = Vec::new();
    let mut names = Vec::new();
    for i in 0..50u32 {
        writes.push(write(
            Area::Db(2),
            i * 8,
            (i as i32 * 1000 - 7).to_be_bytes(),
        ));
        names.push((format!("d{i:02}"), format!("DB2.DBD{}:DINT", i * 8)));
    }
    let mut array = Vec::new();
    for i in 0..200 {
        array.extend_from_slice(&(i as f32 * 0.5).to_be_bytes());
    }
    writes.push(write(Area::Db(1), 0, array));
    sim.set(&writes);
    names.push(("curve".into(), "DB1.DBD0:REAL[200]".into()));
    let tags: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();

    let mut cfg = AgentConfig::new(scratch.path(), &k.endpoint(), STREAM);
    // One cycle only (the first tick is at connect): its requests are the plan's.
    cfg.extra_toml = s7_source("s7_packed", &sim.address(), "1h", 960, &tags);
    let mut agent = Agent::start(cfg, scratch.path());

    wait_stream(&k, "all 250 values", Duration::from_secs(40), |p| {
        for i in 0..50 {
            let want = json!(i * 1000 - 7);
            if !latest(p, &format!("d{i:02}")).is_some_and(|x| same(&x.json["value"], &want)) {
                return Err(format!("no d{i:02} = {want}"));
            }
        }
        for i in 0..200 {
            let want = json!(i as f64 * 0.5);
            if !latest(p, &format!("curve[{i}]")).is_some_and(|x| same(&x.json["value"], &want)) {
                return Err(format!("no curve[{i}] = {want}"));
            }
        }
        Ok(())
    })
    .await;
    let s = agent.scrape();
    let pdu = counter(
        &s,
        "linewatch_agent_source_pdu_bytes",
        "source",
        "s7_packed",
    );
    let requests = counter(
        &s,
        "linewatch_agent_source_requests_total",
        "source",
        "s7_packed",
    );
    // The server grants 480. Lower bound: 52 spans need 3 requests (20 items each),
    // and 50 × (4 + 4) + (800 + 4) response bytes need 3 (466 each): 3 is the minimum.
    assert_eq!(pdu, 480.0, "the PDU the server granted");
    assert_eq!(
        requests,
        3.0,
        "requests for one cycle\n{}",
        s.describe("linewatch_agent_source")
    );
    let served = sim.stats();
    assert!(
        served["reads"].as_u64().unwrap_or(0) >= 52,
        "server saw the items: {served}"
    );
}

#[test]
fn check_names_the_key_the_tag_and_what_the_address_lacks() {
    let scratch = Scratch::new("s7-check");
    let mut cfg = AgentConfig::new(scratch.path(), "http://127.0.0.1:1", STREAM);
    cfg.extra_toml = s7_source(
        "s7_bad",
        "127.0.0.1",
        "1s",
        480,
        &[
            ("ok", "DB1.DBD0:REAL"),
            ("temp", "DB1.DBQ4"),
            ("p", "DB1.DBW2:REAL"),
        ],
    );
    let out = linewatch_e2e::agent::check_config(&cfg.to_toml(), scratch.path());
    assert!(
        !out.status.success(),
        "a bad address fails check:\n{}",
        out.output
    );
    for want in [
        "sources[0].groups[0].tags[1].address: tag \"temp\": \"DB1.DBQ4\": at 6: expected a width after DB1.DB: X (bit), B (byte), W (word) or D (double word), found 'Q'",
        "sources[0].groups[0].tags[2].address: tag \"p\": \"DB1.DBW2:REAL\": at 9: W reads 2 bytes",
    ] {
        assert!(out.output.contains(want), "missing {want:?} in:\n{}", out.output);
    }
    assert!(
        !out.output.contains("tags[0]"),
        "the good tag is not reported:\n{}",
        out.output
    );
}
