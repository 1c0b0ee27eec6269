//! lw-kinesis: a small dev tool for local Kinesis endpoints (kinesalite, kinesis-local).
//!
//!   lw-kinesis create-stream --endpoint http://127.0.0.1:4567 --stream linewatch [--shards 2]
//!   lw-kinesis tail --endpoint http://127.0.0.1:4567 --stream linewatch
//!   lw-kinesis split-shard --endpoint http://127.0.0.1:4567 --stream linewatch [--shard shardId-000000000000]
//!
//! `tail` prints one line per second: records per equipment so far and the last decoded point.

use anyhow::Context;
use clap::{Parser, Subcommand};
use linewatch_schemas::DataPoint;
use linewatch_testkit::kinesis::{self, StreamReader};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "lw-kinesis",
    about = "Create and tail streams on a local Kinesis endpoint"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a stream (an existing one is fine) and wait until it is ACTIVE.
    CreateStream {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 1)]
        shards: i32,
    },
    /// Read the stream from its start and print a live count per equipment, once a second.
    Tail {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        stream: String,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Split a shard (default: the first open one) in the middle of its hash range, wait
    /// until the stream is ACTIVE again and print the two children.
    SplitShard {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        shard: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::CreateStream {
            endpoint,
            stream,
            shards,
        } => {
            let client = kinesis::client(&endpoint);
            kinesis::create_stream(&client, &endpoint, &stream, shards, Duration::from_secs(30))
                .await
                .with_context(|| format!("creating {stream}"))?;
            println!("stream {stream} ACTIVE on {endpoint}");
            Ok(())
        }
        Cmd::Tail {
            endpoint,
            stream,
            seconds,
        } => tail(&endpoint, &stream, seconds.map(Duration::from_secs)).await,
        Cmd::SplitShard {
            endpoint,
            stream,
            shard,
        } => {
            let client = kinesis::client(&endpoint);
            let (a, b) = kinesis::split_shard(
                &client,
                &endpoint,
                &stream,
                shard.as_deref(),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("splitting a shard of {stream}"))?;
            println!("split: children {a} and {b} of stream {stream} on {endpoint}");
            Ok(())
        }
    }
}

async fn tail(endpoint: &str, stream: &str, limit: Option<Duration>) -> anyhow::Result<()> {
    let client = kinesis::client(endpoint);
    let mut reader = StreamReader::from_start(&client, endpoint, stream)
        .await
        .with_context(|| format!("opening {stream}"))?;
    let start = Instant::now();
    let mut per_equipment: BTreeMap<String, u64> = BTreeMap::new();
    let (mut total, mut invalid, mut last_total) = (0u64, 0u64, 0u64);
    let mut last: Option<DataPoint> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        match reader.poll().await {
            Ok(records) => {
                for r in records {
                    total += 1;
                    match DataPoint::from_json(&r.data) {
                        Ok(p) => {
                            *per_equipment.entry(p.equipment_id.clone()).or_default() += 1;
                            last = Some(p);
                        }
                        Err(_) => invalid += 1,
                    }
                }
            }
            // The endpoint may be restarting: say so and keep going.
            Err(e) => eprintln!("lw-kinesis: {e}"),
        }
        let counts: Vec<String> = per_equipment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let last = last
            .as_ref()
            .map(|p| {
                format!(
                    "{}/{} = {} {:?} seq {}",
                    p.meta.source_id,
                    p.tag,
                    serde_json::to_string(&p.value).unwrap_or_default(),
                    p.quality,
                    p.meta.sequence_number
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>5}s total {total} (+{}/s){} | {} | last {last}",
            start.elapsed().as_secs(),
            total - last_total,
            if invalid > 0 {
                format!(" invalid {invalid}")
            } else {
                String::new()
            },
            counts.join(" "),
        );
        last_total = total;
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return Ok(());
        }
    }
}
