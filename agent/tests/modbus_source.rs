//! The Modbus source against an in-process tokio-modbus TCP server on 127.0.0.1.
//!
//! Every wait is on a condition with a deadline; nothing sleeps and hopes.

use linewatch_agent::sources::modbus::config::{ByteOrder, WordOrder};
use linewatch_agent::sources::modbus::decode::{encode, Raw};
use linewatch_agent::sources::{
    LinkPhase, Reading, ReadingBatch, SourceConfig, SourceContext, SourceStatus,
};
use linewatch_agent::telemetry::metrics::Metrics;
use linewatch_runtime::clock::{SharedClock, SystemClock};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_schemas::{Flag, Quality, Value, HEARTBEAT_TAG};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request, Response};

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the simulated PLC

#[derive(Default)]
struct Plc {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    coils: HashMap<u16, bool>,
    discrete: HashMap<u16, bool>,
    /// Holding registers that do not exist: any read covering one is refused.
    missing: HashSet<u16>,
    /// (function code, address, count) of every read, in order.
    log: Vec<(u8, u16, u16)>,
}

impl Plc {
    fn set_words(&mut self, address: u16, words: &[u16]) {
        for (i, w) in words.iter().enumerate() {
            self.holding.insert(address + i as u16, *w);
        }
    }

    fn answer(&mut self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let words = |map: &HashMap<u16, u16>, a: u16, n: u16| {
            (a..a + n).map(|i| *map.get(&i).unwrap_or(&0)).collect()
        };
        let bits = |map: &HashMap<u16, bool>, a: u16, n: u16| {
            (a..a + n).map(|i| *map.get(&i).unwrap_or(&false)).collect()
        };
        match req {
            Request::ReadHoldingRegisters(a, n) => {
                self.log.push((3, a, n));
                if (a..a + n).any(|i| self.missing.contains(&i)) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                Ok(Response::ReadHoldingRegisters(words(&self.holding, a, n)))
            }
            Request::ReadInputRegisters(a, n) => {
                self.log.push((4, a, n));
                Ok(Response::ReadInputRegisters(words(&self.input, a, n)))
            }
            Request::ReadCoils(a, n) => {
                self.log.push((1, a, n));
                Ok(Response::ReadCoils(bits(&self.coils, a, n)))
            }
            Request::ReadDiscreteInputs(a, n) => {
                self.log.push((2, a, n));
                Ok(Response::ReadDiscreteInputs(bits(&self.discrete, a, n)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

type SharedPlc = Arc<Mutex<Plc>>;

struct Service(SharedPlc);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let answer = match self.0.lock() {
            Ok(mut plc) => plc.answer(req),
            Err(_) => Err(ExceptionCode::ServerDeviceFailure),
        };
        std::future::ready(answer)
    }
}

/// A running server; dropping the stop sender closes the listener and every connection.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start_server(addr: SocketAddr, plc: SharedPlc) -> Server {
    let listener = TcpListener::bind(addr).await.expect("bind the test server");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = move |stream, _peer| {
            let plc = Arc::clone(&plc);
            async move { Ok(Some((Service(plc), stream))) }
        };
        let abort = async move {
            let _ = stopped.await;
        };
        let _ = server.serve_until(&on_connected, |_err| {}, abort).await;
    });
    Server { addr, stop, task }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

// ---------------------------------------------------------------- the source under test

struct Running {
    rx: mpsc::Receiver<ReadingBatch>,
    metrics: Metrics,
    status: SourceStatus,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn counter(&self, which: fn(&Metrics) -> u64) -> u64 {
        which(&self.metrics)
    }

    /// The next batch, or a panic at the deadline.
    async fn next(&mut self, deadline: Instant) -> ReadingBatch {
        tokio::time::timeout_at(deadline, self.rx.recv())
            .await
            .expect("timed out waiting for a batch")
            .expect("the source closed its channel")
    }

    /// Batches until one satisfies `done`; returns all of them (the last one included).
    async fn until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&ReadingBatch) -> bool,
    ) -> Vec<ReadingBatch> {
        let mut seen = Vec::new();
        loop {
            let b = self.next(deadline).await;
            let stop = done(&b);
            seen.push(b);
            if stop {
                return seen;
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the source did not stop on shutdown")
            .expect("source task panicked");
    }
}

fn read_errors(m: &Metrics) -> u64 {
    m.read_errors.get_or_create(&m.source("plc")).get()
}
fn points_read(m: &Metrics) -> u64 {
    m.points_read.get_or_create(&m.source("plc")).get()
}
fn connected(m: &Metrics) -> u64 {
    m.source_connected.get_or_create(&m.source("plc")).get() as u64
}

/// A `[[sources]]` table as a user writes it, through the same parser the agent uses.
fn config(addr: SocketAddr, tags: &str, extra: &str) -> SourceConfig {
    let text = format!(
        r#"
type = "modbus"
id = "plc"
address = "{addr}"
equipment_id = "filler-1"
timeout = "300ms"
reconnect_initial = "20ms"
reconnect_max = "100ms"
{extra}

[[groups]]
name = "fast"
interval = "50ms"
{tags}
"#
    );
    let cfg: SourceConfig = toml::from_str(&text).expect("test config parses");
    let mut problems = linewatch_agent::config::Problems::default();
    cfg.validate("sources[0]", &mut problems);
    assert!(problems.is_empty(), "test config invalid: {problems}");
    cfg
}

fn spawn(cfg: SourceConfig) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let metrics = Metrics::default();
    let shutdown = CancellationToken::new();
    let clock: SharedClock = Arc::new(SystemClock);
    let status = SourceStatus::default();
    let ctx = SourceContext {
        readings: tx,
        metrics: metrics.clone(),
        clock,
        shutdown: shutdown.clone(),
        status: status.clone(),
        rng: fastrand::Rng::with_seed(7),
    };
    let task = tokio::spawn(linewatch_agent::sources::start(cfg, ctx));
    Running {
        rx,
        metrics,
        status,
        shutdown,
        task,
    }
}

fn by_tag(batch: &[Reading]) -> HashMap<&str, &Reading> {
    batch.iter().map(|r| (&*r.tag, r)).collect()
}

/// Poll `cond` until it holds or the deadline passes.
async fn wait_for(what: &str, deadline: Instant, mut cond: impl FnMut() -> bool) {
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn with_deadline<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE * 3, f)
        .await
        .expect("test took too long")
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn values_of_every_type_arrive_decoded() {
    with_deadline(async {
        let plc = SharedPlc::default();
        {
            let mut p = plc.lock().expect("plc");
            let (b, l) = (ByteOrder::Big, ByteOrder::Little);
            let (wb, wl) = (WordOrder::Big, WordOrder::Little);
            p.set_words(0, &encode(Raw::U16(65_000), b, wb));
            p.set_words(1, &encode(Raw::I16(-1234), b, wb));
            p.set_words(2, &encode(Raw::U32(4_000_000_000), b, wl));
            p.set_words(4, &encode(Raw::I32(-70_000), l, wb));
            p.set_words(6, &encode(Raw::F32(123.456), b, wl));
            p.set_words(8, &encode(Raw::U64(u64::MAX), l, wl));
            p.set_words(12, &encode(Raw::I64(-5_000_000_000), b, wb));
            p.set_words(16, &encode(Raw::F64(-0.125), l, wl));
            p.set_words(20, &encode(Raw::I16(215), b, wb));
            p.set_words(21, &[7]);
            p.input.insert(100, 0x0102);
            p.coils.insert(5, true);
            p.discrete.insert(9, true);
        }
        let server = start_server("127.0.0.1:0".parse().expect("addr"), Arc::clone(&plc)).await;
        let tags = r#"
tags = [
  { name = "u16", area = "holding_register", address = 0, type = "u16" },
  { name = "i16", area = "holding_register", address = 1, type = "i16" },
  { name = "u32", area = "holding_register", address = 2, type = "u32", word_order = "little" },
  { name = "i32", area = "holding_register", address = 4, type = "i32", byte_order = "little" },
  { name = "f32", area = "holding_register", address = 6, type = "f32", word_order = "little" },
  { name = "u64", area = "holding_register", address = 8, type = "u64", byte_order = "little", word_order = "little" },
  { name = "i64", area = "holding_register", address = 12, type = "i64" },
  { name = "f64", area = "holding_register", address = 16, type = "f64", byte_order = "little", word_order = "little" },
  { name = "temp", area = "holding_register", address = 20, type = "i16", scale = 0.1, offset = -1.0 },
  { name = "flag", area = "holding_register", address = 21, type = "bool" },
  { name = "ir", area = "input_register", address = 100, type = "u16", equipment_id = "labeller-2" },
  { name = "coil", area = "coil", address = 5, type = "bool" },
  { name = "coil_off", area = "coil", address = 6, type = "bool" },
  { name = "di", area = "discrete_input", address = 9, type = "bool" },
]"#;
        let mut src = spawn(config(server.addr, tags, "heartbeat_interval = \"100ms\""));
        let deadline = Instant::now() + DEADLINE;

        let first = src.next(deadline).await;
        let got = by_tag(&first);
        let want: [(&str, Value); 14] = [
            ("u16", Value::Int(65_000)),
            ("i16", Value::Int(-1234)),
            ("u32", Value::Int(4_000_000_000)),
            ("i32", Value::Int(-70_000)),
            ("f32", Value::Float(123.456)),
            ("u64", Value::UInt(u64::MAX)),
            ("i64", Value::Int(-5_000_000_000)),
            ("f64", Value::Float(-0.125)),
            ("temp", Value::Float(20.5)),
            ("flag", Value::Bool(true)),
            ("ir", Value::Int(0x0102)),
            ("coil", Value::Bool(true)),
            ("coil_off", Value::Bool(false)),
            ("di", Value::Bool(true)),
        ];
        assert_eq!(first.len(), want.len(), "one reading per tag: {first:?}");
        for (tag, value) in want {
            let r = got.get(tag).unwrap_or_else(|| panic!("no reading for {tag}"));
            assert_eq!(r.value, value, "{tag}");
            assert_eq!(r.quality, Quality::Ok, "{tag}");
            assert_eq!(r.raw_quality, None, "{tag}");
            assert_eq!(r.source_timestamp, None, "Modbus has no timestamps");
            assert_eq!(&*r.source_id, "plc");
            assert!(r.flags.contains(Flag::Fst), "{tag}: first reading after connect carries Fst");
            let eq = if tag == "ir" { "labeller-2" } else { "filler-1" };
            assert_eq!(&*r.equipment_id, eq, "{tag}");
        }

        // Adjacent holding registers went out as one request; the other areas one each.
        let reads = plc.lock().expect("plc").log.clone();
        let first_poll: HashSet<(u8, u16, u16)> = reads.iter().take(4).copied().collect();
        let expected: HashSet<(u8, u16, u16)> = [(3, 0, 22), (4, 100, 1), (1, 5, 2), (2, 9, 1)].into_iter().collect();
        assert_eq!(first_poll, expected);

        // Later polls carry no Fst, and follow changes.
        plc.lock().expect("plc").set_words(0, &[42]);
        let later = src
            .until(deadline, |b| b.iter().any(|r| &*r.tag == "u16" && r.value == Value::Int(42)))
            .await;
        let last = later.last().expect("a batch");
        assert!(last.iter().all(|r| r.flags.is_empty()), "{last:?}");

        // The heartbeat: `$heartbeat`, null, Ok, Wmk, the source's equipment.
        let hb = src
            .until(deadline, |b| b.iter().any(|r| &*r.tag == HEARTBEAT_TAG))
            .await;
        let hb = hb
            .last()
            .and_then(|b| b.iter().find(|r| &*r.tag == HEARTBEAT_TAG))
            .expect("heartbeat");
        assert_eq!((hb.value.clone(), hb.quality), (Value::Null, Quality::Ok));
        assert!(hb.flags.contains(Flag::Wmk));
        assert_eq!(&*hb.equipment_id, "filler-1");

        assert_eq!(src.counter(connected), 1);
        assert!(src.counter(points_read) >= 28, "two polls of 14 tags at least");
        assert_eq!(src.counter(read_errors), 0);
        src.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_exception_for_one_register_makes_only_its_tag_bad() {
    with_deadline(async {
        let plc = SharedPlc::default();
        {
            let mut p = plc.lock().expect("plc");
            p.set_words(10, &[1, 0, 3]);
            p.missing.insert(11);
        }
        let server = start_server("127.0.0.1:0".parse().expect("addr"), Arc::clone(&plc)).await;
        let tags = r#"
tags = [
  { name = "a", area = "holding_register", address = 10, type = "u16" },
  { name = "b", area = "holding_register", address = 11, type = "u16" },
  { name = "c", area = "holding_register", address = 12, type = "u16" },
]"#;
        let mut src = spawn(config(server.addr, tags, ""));
        let deadline = Instant::now() + DEADLINE;
        for poll in 0..3 {
            let batch = src.next(deadline).await;
            let got = by_tag(&batch);
            assert_eq!(batch.len(), 3, "poll {poll}: {batch:?}");
            assert_eq!(
                (got["a"].quality, &got["a"].value),
                (Quality::Ok, &Value::Int(1))
            );
            assert_eq!(
                (got["c"].quality, &got["c"].value),
                (Quality::Ok, &Value::Int(3))
            );
            assert_eq!(
                (got["b"].quality, &got["b"].value),
                (Quality::Bad, &Value::Null)
            );
            assert_eq!(
                got["b"].raw_quality.as_deref(),
                Some("modbus exception 0x02 (IllegalDataAddress)")
            );
            assert_eq!(got["b"].flags.contains(Flag::Fst), poll == 0);
            assert!(!got["b"].flags.contains(Flag::Syn));
        }
        // The merged read was tried once; after that the group reads tag by tag.
        let log = plc.lock().expect("plc").log.clone();
        assert_eq!(
            log.iter().filter(|r| **r == (3, 10, 3)).count(),
            1,
            "{log:?}"
        );
        assert!(
            log.iter().filter(|r| **r == (3, 11, 1)).count() >= 3,
            "{log:?}"
        );
        // One error for the merged read, one per poll for the bad register.
        assert!(
            src.counter(read_errors) >= 4,
            "{}",
            src.counter(read_errors)
        );
        assert_eq!(
            src.counter(connected),
            1,
            "an exception does not drop the connection"
        );

        // Once the register exists again, the tag recovers.
        plc.lock().expect("plc").missing.clear();
        src.until(deadline, |b| {
            by_tag(b).get("b").is_some_and(|r| r.quality == Quality::Ok)
        })
        .await;
        src.stop().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn server_down_gives_one_syn_per_tag_then_fst_after_reconnect() {
    with_deadline(async {
        let plc = SharedPlc::default();
        plc.lock().expect("plc").set_words(0, &[5, 6]);
        let server = start_server("127.0.0.1:0".parse().expect("addr"), Arc::clone(&plc)).await;
        let addr = server.addr;
        let tags = r#"
tags = [
  { name = "x", area = "holding_register", address = 0, type = "u16" },
  { name = "y", area = "holding_register", address = 1, type = "u16" },
]"#;
        let mut src = spawn(config(addr, tags, "heartbeat_interval = \"0s\""));
        let deadline = Instant::now() + DEADLINE;
        let first = src.next(deadline).await;
        assert!(first
            .iter()
            .all(|r| r.quality == Quality::Ok && r.flags.contains(Flag::Fst)));

        server.stop().await;
        let seen = src
            .until(deadline, |b| b.iter().any(|r| r.flags.contains(Flag::Syn)))
            .await;
        let syn = seen.last().expect("syn batch");
        assert_eq!(syn.len(), 2, "one Syn reading per tag: {syn:?}");
        for r in syn {
            assert_eq!((r.quality, &r.value), (Quality::Bad, &Value::Null));
            assert!(r.flags.contains(Flag::Syn) && !r.flags.contains(Flag::Fst));
            assert!(
                r.raw_quality.as_deref().is_some_and(|q| !q.is_empty()),
                "{r:?}"
            );
        }
        wait_for("the gauge to drop", deadline, || {
            connected(&src.metrics) == 0
        })
        .await;
        let down = src.status.snapshot();
        assert_eq!(down.state, LinkPhase::Down);
        assert!(down.last_error.is_some(), "{down:?}");

        // Several reconnect attempts fail while the server is down...
        let errors = src.counter(read_errors);
        wait_for("three more failed connects", deadline, || {
            read_errors(&src.metrics) >= errors + 3
        })
        .await;
        // ...and none of them produced another Syn batch (or anything else).
        assert!(src.rx.try_recv().is_err(), "only one Syn batch per outage");

        let server = start_server(addr, Arc::clone(&plc)).await;
        let back = src
            .until(deadline, |b| b.iter().any(|r| r.quality == Quality::Ok))
            .await;
        assert_eq!(
            back.len(),
            1,
            "nothing between the Syn batch and the reconnect: {back:?}"
        );
        let back = &back[0];
        assert_eq!(back.len(), 2);
        assert!(
            back.iter()
                .all(|r| r.flags.contains(Flag::Fst) && !r.flags.contains(Flag::Syn)),
            "{back:?}"
        );
        assert_eq!(by_tag(back)["y"].value, Value::Int(6));
        wait_for("the gauge to rise", deadline, || {
            connected(&src.metrics) == 1
        })
        .await;

        // A second outage is reported again, once.
        server.stop().await;
        src.until(deadline, |b| b.iter().any(|r| r.flags.contains(Flag::Syn)))
            .await;
        src.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_address_at_start_keeps_retrying() {
    with_deadline(async {
        let addr = closed_port().await;
        let tags = r#"tags = [{ name = "x", area = "coil", address = 0, type = "bool" }, { name = "y", area = "input_register", address = 0, type = "f32" }]"#;
        let mut src = spawn(config(addr, tags, ""));
        let deadline = Instant::now() + DEADLINE;
        let syn = src.next(deadline).await;
        assert_eq!(syn.len(), 2);
        for r in &syn {
            assert_eq!((r.quality, &r.value), (Quality::Bad, &Value::Null));
            assert!(r.flags.contains(Flag::Syn));
            let q = r.raw_quality.as_deref().unwrap_or_default();
            assert!(q.contains("connect to 127.0.0.1"), "{q}");
        }
        wait_for("five failed connects", deadline, || read_errors(&src.metrics) >= 5).await;
        assert!(!src.task.is_finished(), "the source keeps trying");
        assert!(src.rx.try_recv().is_err(), "no Syn per retry");
        assert_eq!(src.counter(connected), 0);
        src.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_silent_server_times_out_and_reconnects() {
    with_deadline(async {
        // Accepts connections and reads requests, but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(sock);
            }
        });
        let tags =
            r#"tags = [{ name = "x", area = "holding_register", address = 0, type = "u16" }]"#;
        let mut src = spawn(config(addr, tags, ""));
        let deadline = Instant::now() + DEADLINE;
        let syn = src.next(deadline).await;
        assert_eq!(syn.len(), 1);
        let q = syn[0].raw_quality.as_deref().unwrap_or_default();
        assert!(
            q.starts_with("no response within 300ms reading holding_register 0"),
            "{q}"
        );
        assert!(syn[0].flags.contains(Flag::Syn));
        wait_for("a reconnect after the timeout", deadline, || {
            accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3
        })
        .await;
        assert!(
            src.counter(read_errors) >= 2,
            "timeouts count as read errors"
        );
        assert!(
            src.rx.try_recv().is_err(),
            "still one Syn for the whole outage"
        );
        src.stop().await;
        silent.abort();
    })
    .await;
}

#[tokio::test]
async fn shutdown_while_connected_ends_with_lst_and_clears_connected() {
    with_deadline(async {
        let plc = SharedPlc::default();
        let server = start_server("127.0.0.1:0".parse().expect("addr"), Arc::clone(&plc)).await;
        let tags =
            r#"tags = [{ name = "x", area = "holding_register", address = 0, type = "u16" }]"#;
        let mut src = spawn(config(server.addr, tags, ""));
        let deadline = Instant::now() + DEADLINE;
        src.next(deadline).await;
        assert_eq!(src.counter(connected), 1);
        assert_eq!(src.status.snapshot().state, LinkPhase::Connected);
        assert!(src.status.snapshot().last_good_read_ms.is_some());
        let (metrics, status) = (src.metrics.clone(), src.status.clone());
        src.shutdown.cancel();
        // Everything until the channel closes: the last record is the Lst heartbeat.
        let mut last = None;
        while let Some(b) = tokio::time::timeout_at(deadline, src.rx.recv())
            .await
            .expect("the source did not stop on shutdown")
        {
            last = b.last().cloned();
        }
        let last = last.expect("a record after shutdown");
        assert_eq!(&*last.tag, HEARTBEAT_TAG, "{last:?}");
        assert!(
            last.flags.contains(Flag::Lst) && last.flags.contains(Flag::Wmk),
            "{last:?}"
        );
        assert_eq!((&last.value, last.quality), (&Value::Null, Quality::Ok));
        src.task.await.expect("source task");
        assert_eq!(connected(&metrics), 0);
        assert_eq!(status.snapshot().state, LinkPhase::Stopped);
        server.stop().await;
    })
    .await;
}
