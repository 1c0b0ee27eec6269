//! The peers themselves work as the agent tests assume: kinesalite keeps a stream
//! across a restart and serves every shard; kinesis-local (a second, independent Kinesis
//! implementation) starts on loopback only and takes a PutRecords; the pymodbus PLC answers a Modbus client
//! that is not ours to write (tokio-modbus, as the agent uses) with the values the
//! control port set, in the right byte and word order, and rejects what it should.

use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::kinesalite::{Kinesalite, KinesaliteOptions};
use linewatch_testkit::peers::kinesis_local::KinesisLocal;
use linewatch_testkit::peers::modbus_plc::{coil, reg, Area, ModbusSim, SimOptions};
use linewatch_testkit::{wait, Scratch};
use std::time::Duration;
use tokio_modbus::client::Reader;
use tokio_modbus::{ExceptionCode, Slave};

/// One PutRecords of `n` records `r0..` with partition keys `key-(i % keys)`.
async fn put_numbered(
    k: &impl KinesisPeer,
    stream: &str,
    n: usize,
    keys: usize,
) -> aws_sdk_kinesis::operation::put_records::PutRecordsOutput {
    let mut req = k.client().put_records().stream_name(stream);
    for i in 0..n {
        req = req.records(
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{}", i % keys))
                .data(aws_sdk_kinesis::primitives::Blob::new(format!("r{i}")))
                .build()
                .expect("entry has key and data"),
        );
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("PutRecords: {e}\n{}", k.log_tail(20)))
}

#[tokio::test]
async fn kinesalite_serves_all_shards_and_survives_a_restart() {
    let scratch = Scratch::new("peers-kinesis");
    let mut k = Kinesalite::start(
        KinesaliteOptions::on_disk(scratch.path().join("kinesalite-db")),
        scratch.path(),
    );
    k.create_stream("s", 2).await;
    let out = put_numbered(&k, "s", 40, 7).await;
    assert_eq!(out.failed_record_count, Some(0));

    let before = k.read_all("s").await;
    assert_eq!(before.len(), 40);
    let shards: std::collections::BTreeSet<_> = before.iter().map(|r| r.shard_id.clone()).collect();
    assert_eq!(shards.len(), 2, "7 keys over 2 shards use both");
    // Per key, records come back in the order they were put.
    for key in 0..7 {
        let nums: Vec<u32> = before
            .iter()
            .filter(|r| r.partition_key == format!("key-{key}"))
            .map(|r| {
                String::from_utf8_lossy(&r.data)[1..]
                    .parse()
                    .expect("r<number>")
            })
            .collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "key-{key}: {nums:?}");
    }

    k.stop();
    assert!(!linewatch_testkit::ports::is_listening(k.port()));
    k.start_again();
    let after = k.read_all("s").await;
    assert_eq!(
        before, after,
        "the stream and its records survive a restart"
    );
}

#[tokio::test]
async fn kinesis_local_binds_loopback_and_takes_put_records() {
    let scratch = Scratch::new("peers-kinesis-local");
    let k = KinesisLocal::start(scratch.path());
    // Loopback only: not reachable on another address of this machine.
    let other = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip());
    if let Some(ip) = other
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    {
        let reached = std::net::TcpStream::connect_timeout(
            &(ip, k.port()).into(),
            Duration::from_millis(500),
        );
        assert!(
            reached.is_err(),
            "kinesis-local answers on {ip}:{}",
            k.port()
        );
    }
    k.create_stream("s", 2).await;
    let out = put_numbered(&k, "s", 10, 3).await;
    assert_eq!(out.failed_record_count, Some(0));
    assert_eq!(out.records.len(), 10);
    let back = k.read_all("s").await;
    let mut data: Vec<String> = back
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    data.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(data, want, "every record put is read back once");
}

#[tokio::test]
async fn modbus_sim_answers_a_real_client() {
    let scratch = Scratch::new("peers-modbus");
    let mut sim = ModbusSim::start(SimOptions::default(), scratch.path());
    let addr = sim.address().parse().expect("socket address");
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .expect("connect to the sim");

    // Initial filling-machine values: water_temperature f32 13.45 at 0, machine_state 2 at 4.
    let regs = ctx
        .read_holding_registers(0, 6)
        .await
        .expect("io")
        .expect("no exception");
    let t = f32::from_bits((u32::from(regs[0]) << 16) | u32::from(regs[1]));
    assert!((t - 13.45).abs() < 1e-5, "{t}");
    assert_eq!(regs[4], 2);

    sim.set(&[
        reg(20, "f32", 21.5).orders("big", "little"),
        reg(24, "u64", 9_007_199_254_740_993u64),
        reg(28, "i16", -2),
        reg(30, "u32", 0x0102_0304u32).orders("little", "big"),
        coil(3, true),
    ]);
    let r = ctx
        .read_holding_registers(20, 12)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(
        f32::from_bits((u32::from(r[1]) << 16) | u32::from(r[0])),
        21.5,
        "little word order: low word first"
    );
    assert_eq!(
        r[4..8]
            .iter()
            .fold(0u64, |acc, w| (acc << 16) | u64::from(*w)),
        9_007_199_254_740_993
    );
    assert_eq!(r[8] as i16, -2);
    assert_eq!(
        &r[10..12],
        &[0x0201, 0x0403],
        "little byte order: bytes swapped in each word"
    );
    let coils = ctx
        .read_coils(0, 4)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(coils, vec![true, false, false, true]);
    assert_eq!(
        sim.get(Area::HoldingRegister, 28, "i16"),
        serde_json::json!(-2)
    );

    // Outside the configured block: IllegalDataAddress, from pymodbus itself.
    let e = ctx.read_holding_registers(1000, 2).await.expect("io");
    assert_eq!(e, Err(ExceptionCode::IllegalDataAddress));
    // Injected fault: device failure on 40..42 only.
    sim.fail(Area::HoldingRegister, 40, 2, 4);
    let e = ctx.read_holding_registers(41, 1).await.expect("io");
    assert_eq!(e, Err(ExceptionCode::ServerDeviceFailure));
    assert!(ctx.read_holding_registers(42, 1).await.expect("io").is_ok());
    sim.clear_faults();
    assert!(ctx.read_holding_registers(41, 1).await.expect("io").is_ok());

    let reads = sim.total_reads();
    assert!(reads >= 5, "the sim counts the reads it served: {reads}");
}

#[tokio::test]
async fn modbus_sim_line_mode_changes_values() {
    let scratch = Scratch::new("peers-line");
    let sim = ModbusSim::start(
        SimOptions {
            mode: "line",
            ..SimOptions::default()
        },
        scratch.path(),
    );
    let addr = sim.address().parse().expect("socket address");
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .expect("connect to the sim");
    let first = ctx
        .read_holding_registers(8, 4)
        .await
        .expect("io")
        .expect("no exception");
    wait::until(
        "the line counts bottles",
        Duration::from_secs(10),
        async || {
            let now = ctx
                .read_holding_registers(8, 4)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if now != first {
                Ok(())
            } else {
                Err(format!("bottles_total registers still {now:?}"))
            }
        },
    )
    .await;
}
