//! `flush`: end of input as end of time. Without it a hold due after the last point stays
//! pending (as in the live service); with it the hold fires at its deadline.

mod common;
use common::*;
use linewatch_rules_core::replay::ReplayOptions;
use linewatch_rules_core::WatermarkConfig;
use std::time::Duration;

const T0: u64 = 1_732_180_000_000;

fn run(flush: bool) -> Vec<(u64, String)> {
    // Thermal conditions start at T0 + 1 s and hold 5 s; the last point is at T0 + 3 s.
    let lines = [
        point_json("gw", "s", "eq", "machine_state", T0, "\"RUNNING\""),
        point_json("gw", "s", "eq", "product", T0, "\"1L\""),
        point_json("gw", "s", "eq", "water_temperature", T0, "70.0"),
        point_json("gw", "s", "eq", "pressure", T0, "2.0"),
        point_json("gw", "s", "eq", "water_temperature", T0 + 1_000, "85.0"),
        point_json("gw", "s", "eq", "pressure", T0 + 1_000, "2.7"),
        point_json("gw", "s", "eq", "pressure", T0 + 3_000, "2.8"),
    ];
    let opts = ReplayOptions {
        watermark: WatermarkConfig::with(Duration::ZERO, Duration::from_secs(3600)),
        flush,
        ..ReplayOptions::default()
    };
    replay_json(
        vec![compile(&krones_rule("r", "eq", 1, "5s"))],
        &lines.join("\n"),
        opts,
    )
    .into_iter()
    .map(|t| {
        (
            t["eventTime"].as_u64().unwrap(),
            t["state"].as_str().unwrap().to_owned(),
        )
    })
    .collect()
}

#[test]
fn flush_fires_holds_due_after_the_last_point() {
    assert_eq!(run(false), vec![(T0, "ACTIVE".to_owned())]);
    assert_eq!(
        run(true),
        vec![
            (T0, "ACTIVE".to_owned()),
            (T0 + 6_000, "WARNING".to_owned())
        ]
    );
}
