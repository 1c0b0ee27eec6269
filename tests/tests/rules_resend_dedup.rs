//! The agent's resends count once in the rule engine. A PutRecords call whose response
//! is lost (Kinesis took the batch; the agent cannot know) is sent again, so the stream
//! holds that batch more than once — the same as an agent killed after Kinesis took a
//! call but before its buffer heard so. The engine must drop the copies (counted in
//! `resent_points`), dead-letter none of them as late, and deliver each transition once:
//! exactly the replay of the points' first copies.
//!
//! Two ways to get there: the responses lost while the agent runs (it resends), and
//! the agent killed with SIGKILL after Kinesis took a batch it never heard of (the
//! agent started again on the same buffer resends it).
//!
//! Phase 1 buffers a scenario with Kinesis unreachable (as `rules_kpl_equivalence`), so
//! the drain in phase 2 ships old points in quick succession: a resent batch arrives
//! after the watermark has passed it, and without the drop every copy would be late.

mod rules_common;

use linewatch_e2e::agent::AgentConfig;
use linewatch_e2e::rules::{self, RulesService};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::mosquitto::{self, Broker};
use linewatch_testkit::peers::webhook_receiver::Receiver;
use linewatch_testkit::proxy::FaultProxy;
use linewatch_testkit::{points, Scratch};
use rules_common::{
    assert_same_transitions, buffer_scenario, details, running_hot_rule, start_agent,
};
use std::collections::HashSet;
use std::time::Duration;

const FILLER: &str = "84068f2f-3f39-4b9c-a995-d2a84d878689";
const SOURCE: &str = "filler";
const STREAM: &str = "resend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batches_are_dropped_counted_and_each_transition_comes_once() {
    drain_with_resends("rules-resend-dedup", Resend::LostResponses).await;
}

/// The agent killed (SIGKILL) after Kinesis took a batch and before the agent heard
/// so: its buffer still holds the batch, and the agent started again on it sends it
/// once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_batch_resends_it_and_each_transition_still_comes_once() {
    drain_with_resends("rules-resend-killed", Resend::Killed).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Resend {
    /// The agent resends batches whose responses were lost.
    LostResponses,
    /// The agent dies with a batch taken but not heard of; its successor resends it.
    Killed,
}

async fn drain_with_resends(test: &str, how: Resend) {
    let scratch = Scratch::new(test);
    let dir = scratch.path();
    let broker = Broker::start(dir);
    let prefix = mosquitto::unique_prefix(test);
    // Declared before the service: retained rules and statuses go even if the test fails.
    let _clean = broker.retained_cleanup(&prefix);

    // Phase 1: the scenario, buffered.
    // ACTIVE, WARNING (held), IDLE, WARNING, ACTIVE; the last step is held longest so
    // the watermark (1 s behind the last point) passes its transition.
    let steps = [
        (60.0, true, 15.0),
        (85.0, true, 15.0),
        (70.0, false, 15.0),
        (90.0, false, 15.0),
        (60.0, true, 40.0),
    ];
    let (cfg, read) = buffer_scenario(dir, SOURCE, FILLER, "", &steps).await;

    // Phase 2: the engine reads while the buffer drains through a proxy that loses
    // the first responses.
    let k = Kinesalite::start(KinesaliteOptions::default(), dir);
    k.create_stream(STREAM, 1).await;
    let rule_file = dir.join("rule.rhai");
    std::fs::write(&rule_file, running_hot_rule("resend-dedup", FILLER)).expect("writing the rule");
    let recv = Receiver::start();
    let rc = rules::RulesConfig::new(
        dir,
        &k.endpoint(),
        STREAM,
        broker.port(),
        &prefix,
        &recv.url("/events"),
    );
    let mut svc = RulesService::start_named("rules", rc, dir, None);
    let res = svc.publish(&rule_file, None, None, "10s").await;
    res.expect_code(0);
    assert_eq!(res.json()["status"], "accepted", "{res}");

    let proxy = FaultProxy::start(k.port()).await;
    // Lost from the first call on: the drain is over in a few calls.
    proxy.lose_responses(true);
    let mut drain = AgentConfig::new(dir, &proxy.endpoint(), STREAM);
    drain.buffer.path = cfg.buffer.path.clone();
    drain.kinesis.request_timeout = Some("2s".into());
    drain.kinesis.backoff_initial = Some("100ms".into());
    let mut drainer = start_agent(&drain, dir, "agent-drain", "max_batch_records = 40");
    match how {
        Resend::LostResponses => proxy.lose_responses_until(3, Duration::from_secs(60)).await,
        Resend::Killed => {
            // A PutRecords whose response was lost: Kinesis holds that batch, the
            // agent's buffer too (the first lost answers may be DescribeStreamSummary's).
            drainer
                .wait_metrics(
                    "Kinesis to take a batch unheard",
                    Duration::from_secs(60),
                    |s| {
                        let unknown = s.get("linewatch_agent_put_records_errors_total");
                        if unknown >= 1.0 {
                            Ok(())
                        } else {
                            Err(format!("{unknown} failed calls"))
                        }
                    },
                )
                .await;
            drainer.kill();
            proxy.lose_responses(false);
            drainer = start_agent(&drain, dir, "agent-drain-again", "max_batch_records = 40");
        }
    }
    // Drained: the buffer is empty, then every point is in the stream.
    drainer
        .wait_metrics("the buffer drained", Duration::from_secs(60), |s| {
            let left = s.get("linewatch_agent_buffer_records");
            if left == 0.0 {
                Ok(())
            } else {
                Err(format!("{left} buffered"))
            }
        })
        .await;
    let pts = points::decode(&k.read_all(STREAM).await);
    assert!(
        points::unique(&pts).len() as f64 >= read,
        "every point read is in the stream"
    );
    drainer.assert_running();

    // The premise: the stream holds resent copies, and nothing is missing.
    points::check_no_gaps(&pts).unwrap_or_else(|e| panic!("{e}"));
    let dups = points::check_duplicates(&pts).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dups.copies > 0,
        "{} responses were lost: the stream must hold resent batches",
        proxy.responses_lost()
    );

    // The oracle: the first copy of every point, in stream order.
    let mut seen = HashSet::new();
    let mut ndjson = String::new();
    for p in &pts {
        if seen.insert((p.source_key(), p.seq())) {
            ndjson.push_str(&String::from_utf8_lossy(&p.raw));
            ndjson.push('\n');
        }
    }
    let input = dir.join("points.ndjson");
    std::fs::write(&input, ndjson).expect("writing the oracle input");
    let want = rules::oracle(std::slice::from_ref(&rule_file), &input, "1s", "30s").await;
    let states: Vec<&str> = want.iter().filter_map(|t| t["state"].as_str()).collect();
    assert_eq!(
        states,
        ["ACTIVE", "WARNING", "IDLE", "WARNING", "ACTIVE"],
        "the scenario's transitions (oracle): {want:?}"
    );

    let got = recv.wait_unique(want.len(), Duration::from_secs(40)).await;
    recv.settle(Duration::from_secs(1), Duration::from_secs(5))
        .await;
    assert_eq!(
        recv.requests().len(),
        want.len(),
        "{}",
        recv.describe_last(5)
    );
    assert_same_transitions(&details(&got), &want);
    svc.wait_metrics("every copy counted", Duration::from_secs(20), |m| {
        let resent = m.get("linewatch_rules_resent_points_total");
        if resent >= dups.copies as f64 {
            Ok(())
        } else {
            Err(format!("{resent} resent points of {} copies", dups.copies))
        }
    })
    .await;
    let m = svc.scrape();
    assert_eq!(
        m.get("linewatch_rules_resent_points_total"),
        dups.copies as f64
    );
    assert_eq!(m.get("linewatch_rules_late_points_total"), 0.0);
    assert_eq!(m.get("linewatch_rules_dead_letters_total"), 0.0);
    assert_eq!(
        m.get("linewatch_rules_transitions_total"),
        want.len() as f64
    );
    eprintln!(
        "resend dedup: {} responses lost, {} copies in {} runs of {} records, {} transitions once each",
        proxy.responses_lost(),
        dups.copies,
        dups.runs,
        pts.len(),
        want.len()
    );
}
