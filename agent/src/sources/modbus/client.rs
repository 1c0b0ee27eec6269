//! The Modbus TCP source task: one connection per source, poll groups on their own
//! intervals, reconnects with backoff, and readings out as batches.
//!
//! The decisions (backoff delays, which readings carry `Fst`, when one `Syn` batch
//! is due, when a heartbeat is due) live in [`Backoff`] and [`LinkState`], which
//! are pure; [`run`] does the I/O.

use super::config::{Area, ModbusSourceConfig};
use super::decode::{Codec, Decoded};
use super::plan::{plan, ReadRequest, TagExtent};
use crate::clock::SharedClock;
use crate::sources::{Reading, ReadingBatch};
use crate::telemetry::metrics::Metrics;
use linewatch_schemas::{Flag, Flags, Quality, Value, HEARTBEAT_TAG};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why the connection is down (the text goes into the `Syn` points' `rawQuality`).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect to {address} timed out after {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("connect to {address} failed: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("no response within {timeout:?} reading {area} {address} (+{count})")]
    RequestTimeout {
        timeout: Duration,
        area: Area,
        address: u16,
        count: u16,
    },
    #[error("connection lost: {0}")]
    Transport(std::io::Error),
    /// The response did not belong to the request: the stream is out of step.
    #[error("protocol error: {0}")]
    Protocol(tokio_modbus::ProtocolError),
}

/// `modbus exception 0x02 (IllegalDataAddress)`.
pub fn exception_text(code: ExceptionCode) -> String {
    let name = match code {
        ExceptionCode::Custom(_) => "Unknown".to_owned(),
        known => format!("{known:?}"),
    };
    format!("modbus exception 0x{:02X} ({name})", u8::from(code))
}

/// Exceptions that may concern only some registers of a merged read: worth
/// retrying tag by tag. (Busy, gateway and function errors would fail the same.)
pub fn exception_splits(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
    )
}

/// Exponential backoff with jitter: the n-th delay is drawn from the upper half of
/// `initial × 2ⁿ`, capped at `max` and never below `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2f64.powi(self.attempt.min(30) as i32);
        let base = self.initial.as_secs_f64() * factor;
        let base = base.min(self.max.as_secs_f64());
        let jittered = base * (0.5 + 0.5 * unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64(jittered).clamp(self.initial, self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What the source knows about its link, deciding the flags of what it emits.
#[derive(Debug, Clone)]
pub struct LinkState {
    connected: bool,
    /// A `Syn` batch went out and no poll has succeeded since: do not repeat it.
    down_reported: bool,
    /// Per tag (source-wide index): its next reading is the first since connecting.
    fst_pending: Vec<bool>,
    last_poll_ok: bool,
    last_ok_poll_ms: Option<u64>,
    /// A successful poll older than this does not justify a heartbeat.
    stale_after_ms: u64,
}

impl LinkState {
    pub fn new(tags: usize, stale_after: Duration) -> LinkState {
        LinkState {
            connected: false,
            down_reported: false,
            fst_pending: vec![true; tags],
            last_poll_ok: false,
            last_ok_poll_ms: None,
            stale_after_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn on_connected(&mut self) {
        self.connected = true;
        self.last_poll_ok = false;
        self.fst_pending.fill(true);
    }

    /// The connection failed or was lost. True when a `Syn` batch is due: the first
    /// time since data last flowed, not on every retry.
    pub fn on_link_down(&mut self) -> bool {
        self.connected = false;
        self.last_poll_ok = false;
        !std::mem::replace(&mut self.down_reported, true)
    }

    /// A poll finished; `ok` when every request was answered (exceptions included:
    /// the device answered).
    pub fn on_poll_done(&mut self, ok: bool, now_ms: u64) {
        self.last_poll_ok = ok;
        if ok {
            self.down_reported = false;
            self.last_ok_poll_ms = Some(now_ms);
        }
    }

    /// Flags of the next reading of tag `index`: `Fst` once after each connect.
    pub fn flags_for(&mut self, index: usize) -> Flags {
        match self.fst_pending.get_mut(index) {
            Some(p) if *p => {
                *p = false;
                Flags::empty().with(Flag::Fst)
            }
            _ => Flags::empty(),
        }
    }

    /// A heartbeat says the source is alive: connected, and the last poll succeeded recently.
    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        self.connected
            && self.last_poll_ok
            && self
                .last_ok_poll_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= self.stale_after_ms)
    }
}

/// One tag, resolved for polling.
#[derive(Debug)]
struct TagInfo {
    /// Index over the whole source, for [`LinkState`].
    index: usize,
    tag: Arc<str>,
    equipment: Arc<str>,
    area: Area,
    codec: Codec,
}

#[derive(Debug)]
struct Group {
    name: String,
    interval: Duration,
    tags: Vec<TagInfo>,
    /// Starts as the coalesced plan; requests a PLC rejected are replaced by their split.
    plan: Vec<ReadRequest>,
}

/// Everything `run` needs, built once from the configuration.
struct Source {
    cfg: Arc<ModbusSourceConfig>,
    source_id: Arc<str>,
    groups: Vec<Group>,
    heartbeat_equipment: Option<Arc<str>>,
    points_read: Counter,
    read_errors: Counter,
    connected: Gauge,
    clock: SharedClock,
    tx: mpsc::Sender<ReadingBatch>,
    /// Requests whose last answer was an exception (logged at warn once, then debug).
    failing: HashSet<(Area, u16, u16)>,
}

enum Stop {
    Shutdown,
    /// The normaliser is gone: nobody takes readings any more.
    ChannelClosed,
}

enum PollEnd {
    Done,
    Lost(LinkError),
    Shutdown,
}

/// Run one Modbus TCP source until `shutdown`. Never returns on PLC errors: it
/// reconnects with backoff, so the agent keeps running while a PLC is offline.
pub async fn run(
    cfg: Arc<ModbusSourceConfig>,
    tx: mpsc::Sender<ReadingBatch>,
    metrics: Metrics,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    let mut src = Source::new(cfg, tx, &metrics, clock);
    match src.run(&shutdown).await {
        Stop::Shutdown => info!(source = %src.source_id, "modbus source stopped"),
        Stop::ChannelClosed => {
            warn!(source = %src.source_id, "modbus source stopped: reading channel closed")
        }
    }
    src.connected.set(0);
}

impl Source {
    fn new(
        cfg: Arc<ModbusSourceConfig>,
        tx: mpsc::Sender<ReadingBatch>,
        metrics: &Metrics,
        clock: SharedClock,
    ) -> Source {
        let label = metrics.source(&cfg.id);
        let points_read = metrics.points_read.get_or_create(&label).clone();
        let read_errors = metrics.read_errors.get_or_create(&label).clone();
        let connected = metrics.source_connected.get_or_create(&label).clone();
        let mut index = 0;
        let mut groups = Vec::with_capacity(cfg.groups.len());
        // Thousands of tags share a few equipment ids: keep one copy of each.
        let mut equipments: HashMap<&str, Arc<str>> = HashMap::new();
        for g in &cfg.groups {
            let mut tags = Vec::with_capacity(g.tags.len());
            for t in &g.tags {
                // Validation guarantees an equipment; an empty one would be refused downstream.
                let equipment = cfg.tag_equipment(t).unwrap_or_default();
                let equipment = equipments
                    .entry(equipment)
                    .or_insert_with(|| Arc::from(equipment));
                tags.push(TagInfo {
                    index,
                    tag: Arc::from(t.name.as_str()),
                    equipment: Arc::clone(equipment),
                    area: t.area,
                    codec: Codec::for_tag(t, &cfg),
                });
                index += 1;
            }
            let extents: Vec<TagExtent> = g.tags.iter().map(TagExtent::of).collect();
            groups.push(Group {
                name: g.name.clone(),
                interval: g.interval,
                tags,
                plan: plan(&extents, cfg.max_gap),
            });
        }
        Source {
            source_id: Arc::from(cfg.id.as_str()),
            heartbeat_equipment: cfg.heartbeat_equipment().map(Arc::from),
            // Only the connection settings are needed from here on: the tag
            // list (≈ 150 B per tag) lives on in `groups`, not twice.
            cfg: Arc::new(without_groups(&cfg)),
            groups,
            points_read,
            read_errors,
            connected,
            clock,
            tx,
            failing: HashSet::new(),
        }
    }

    fn tag_count(&self) -> usize {
        self.groups.iter().map(|g| g.tags.len()).sum()
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Stop {
        let cfg = Arc::clone(&self.cfg);
        let longest = self
            .groups
            .iter()
            .map(|g| g.interval)
            .max()
            .unwrap_or_default();
        let mut link = LinkState::new(
            self.tag_count(),
            longest + cfg.timeout + cfg.heartbeat_interval,
        );
        let mut backoff = Backoff::new(cfg.reconnect_initial, cfg.reconnect_max);
        self.connected.set(0);
        info!(
            source = %self.source_id,
            address = %cfg.address,
            unit = cfg.unit_id,
            groups = self.groups.len(),
            requests = self.groups.iter().map(|g| g.plan.len()).sum::<usize>(),
            "modbus source starting"
        );
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                r = connect(&cfg) => r,
            };
            let err = match attempt {
                Ok(mut ctx) => {
                    link.on_connected();
                    self.connected.set(1);
                    info!(source = %self.source_id, address = %cfg.address, "modbus connected");
                    let end = self
                        .connected_loop(&mut ctx, &mut link, &mut backoff, shutdown)
                        .await;
                    self.connected.set(0);
                    // Politely close; a dead peer must not hold us up.
                    let _closed = tokio::time::timeout(cfg.timeout, ctx.disconnect()).await;
                    match end {
                        Ok(PollEnd::Shutdown) | Ok(PollEnd::Done) => return Stop::Shutdown,
                        Ok(PollEnd::Lost(e)) => e,
                        Err(stop) => return stop,
                    }
                }
                Err(e) => {
                    self.read_errors.inc();
                    e
                }
            };
            let delay = backoff.next_delay(fastrand::f64());
            warn!(
                source = %self.source_id,
                address = %cfg.address,
                error = %err,
                retry_in = ?delay,
                "modbus source down"
            );
            if link.on_link_down() {
                let batch = self.syn_batch(&err.to_string());
                if self.send(batch).await.is_err() {
                    return Stop::ChannelClosed;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Poll while connected. `Ok(Lost)` hands the reason back for reconnecting.
    async fn connected_loop(
        &mut self,
        ctx: &mut Context,
        link: &mut LinkState,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<PollEnd, Stop> {
        // Fresh intervals: the first tick is immediate, so a reconnect polls at once.
        let mut intervals: Vec<Interval> = self
            .groups
            .iter()
            .map(|g| {
                let mut iv = tokio::time::interval(g.interval);
                iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
                iv
            })
            .collect();
        let hb_period = self.cfg.heartbeat_interval;
        let mut heartbeat =
            (!hb_period.is_zero() && self.heartbeat_equipment.is_some()).then(|| {
                let mut iv = tokio::time::interval_at(Instant::now() + hb_period, hb_period);
                iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
                iv
            });
        let mut next = 0usize;
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(PollEnd::Shutdown),
                g = next_tick(&mut intervals, &mut next) => Some(g),
                _ = tick_opt(&mut heartbeat) => None,
            };
            let Some(gi) = event else {
                if link.heartbeat_due(self.clock.now_ms()) {
                    let hb = self.heartbeat();
                    self.send(hb).await?;
                }
                continue;
            };
            let (batch, end) = self.poll_group(ctx, gi, link, shutdown).await;
            let ok = matches!(end, PollEnd::Done);
            link.on_poll_done(ok, self.clock.now_ms());
            if ok {
                backoff.reset();
            }
            if !batch.is_empty() {
                self.points_read.inc_by(batch.len() as u64);
                self.send(batch).await?;
            }
            if !ok {
                return Ok(end);
            }
        }
    }

    /// Read every request of group `gi` in turn; returns what was read and how it ended.
    async fn poll_group(
        &mut self,
        ctx: &mut Context,
        gi: usize,
        link: &mut LinkState,
        shutdown: &CancellationToken,
    ) -> (ReadingBatch, PollEnd) {
        let timeout = self.cfg.timeout;
        let mut batch = Vec::with_capacity(self.groups[gi].tags.len());
        let mut i = 0;
        while i < self.groups[gi].plan.len() {
            if shutdown.is_cancelled() {
                return (batch, PollEnd::Shutdown);
            }
            let req = &self.groups[gi].plan[i];
            let (area, address, count) = (req.area, req.address, req.count);
            let call = ctx.call(request(area, address, count));
            let answer = match tokio::time::timeout(timeout, call).await {
                Err(_elapsed) => {
                    self.read_errors.inc();
                    return (
                        batch,
                        PollEnd::Lost(LinkError::RequestTimeout {
                            timeout,
                            area,
                            address,
                            count,
                        }),
                    );
                }
                Ok(Err(tokio_modbus::Error::Transport(e))) => {
                    self.read_errors.inc();
                    return (batch, PollEnd::Lost(LinkError::Transport(e)));
                }
                Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                    self.read_errors.inc();
                    return (batch, PollEnd::Lost(LinkError::Protocol(e)));
                }
                Ok(Ok(answer)) => answer,
            };
            let key = (area, address, count);
            match answer.map(|resp| response_data(area, count, resp)) {
                Ok(Ok(data)) => {
                    if self.failing.remove(&key) {
                        info!(source = %self.source_id, unit = self.cfg.unit_id, %area, address, count, "modbus read recovered");
                    }
                    let group = &self.groups[gi];
                    for slot in &group.plan[i].slots {
                        let Some(tag) = group.tags.get(slot.tag) else {
                            continue;
                        };
                        let decoded =
                            data.decode(tag, usize::from(slot.offset), usize::from(slot.len));
                        batch.push(reading(
                            &self.source_id,
                            tag,
                            decoded,
                            link.flags_for(tag.index),
                        ));
                    }
                }
                Ok(Err(malformed)) => {
                    // A device bug, not a lost link: the tags are Bad, the connection stays.
                    self.read_errors.inc();
                    warn!(source = %self.source_id, unit = self.cfg.unit_id, %area, address, count, error = %malformed, "malformed modbus response");
                    self.bad_request(gi, i, &malformed, link, &mut batch);
                }
                Err(code) => {
                    self.read_errors.inc();
                    let text = exception_text(code);
                    let group = &mut self.groups[gi];
                    if group.plan[i].slots.len() > 1 && exception_splits(code) {
                        let parts = group.plan[i].split();
                        warn!(source = %self.source_id, unit = self.cfg.unit_id, group = %group.name, %area, address, count, exception = %text, requests = parts.len(), "modbus exception on a merged read: reading its tags one by one from now on");
                        group.plan.splice(i..=i, parts);
                        continue;
                    }
                    if self.failing.insert(key) {
                        warn!(source = %self.source_id, unit = self.cfg.unit_id, %area, address, count, exception = %text, "modbus exception");
                    } else {
                        debug!(source = %self.source_id, unit = self.cfg.unit_id, %area, address, count, exception = %text, "modbus exception (again)");
                    }
                    self.bad_request(gi, i, &text, link, &mut batch);
                }
            }
            i += 1;
        }
        (batch, PollEnd::Done)
    }

    /// Bad readings for every tag of request `i` of group `gi`.
    fn bad_request(
        &self,
        gi: usize,
        i: usize,
        why: &str,
        link: &mut LinkState,
        batch: &mut ReadingBatch,
    ) {
        let group = &self.groups[gi];
        for slot in &group.plan[i].slots {
            if let Some(tag) = group.tags.get(slot.tag) {
                batch.push(reading(
                    &self.source_id,
                    tag,
                    Decoded::bad(why),
                    link.flags_for(tag.index),
                ));
            }
        }
    }

    /// One `Bad`, `Syn` reading per tag of the source: the gap is never silent.
    fn syn_batch(&self, why: &str) -> ReadingBatch {
        let flags = Flags::empty().with(Flag::Syn);
        self.groups
            .iter()
            .flat_map(|g| &g.tags)
            .map(|tag| reading(&self.source_id, tag, Decoded::bad(why), flags))
            .collect()
    }

    fn heartbeat(&self) -> ReadingBatch {
        let Some(equipment) = &self.heartbeat_equipment else {
            return Vec::new();
        };
        vec![Reading {
            source_id: Arc::clone(&self.source_id),
            equipment_id: Arc::clone(equipment),
            tag: Arc::from(HEARTBEAT_TAG),
            value: Value::Null,
            quality: Quality::Ok,
            source_timestamp: None,
            flags: Flags::empty().with(Flag::Wmk),
            raw_quality: None,
        }]
    }

    async fn send(&self, batch: ReadingBatch) -> Result<(), Stop> {
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).await.map_err(|_| Stop::ChannelClosed)
    }
}

fn reading(source_id: &Arc<str>, tag: &TagInfo, d: Decoded, flags: Flags) -> Reading {
    Reading {
        source_id: Arc::clone(source_id),
        equipment_id: Arc::clone(&tag.equipment),
        tag: Arc::clone(&tag.tag),
        value: d.value,
        quality: d.quality,
        source_timestamp: None,
        flags,
        raw_quality: d.raw_quality,
    }
}

async fn connect(cfg: &ModbusSourceConfig) -> Result<Context, LinkError> {
    let stream = tokio::time::timeout(cfg.timeout, TcpStream::connect(cfg.address.as_str()))
        .await
        .map_err(|_| LinkError::ConnectTimeout {
            address: cfg.address.clone(),
            timeout: cfg.timeout,
        })?
        .map_err(|source| LinkError::Connect {
            address: cfg.address.clone(),
            source,
        })?;
    // Requests are small and answered one at a time: do not let Nagle hold them.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(address = %cfg.address, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(tokio_modbus::client::tcp::attach_slave(
        stream,
        Slave(cfg.unit_id),
    ))
}

fn request(area: Area, address: u16, count: u16) -> Request<'static> {
    match area {
        Area::Coil => Request::ReadCoils(address, count),
        Area::DiscreteInput => Request::ReadDiscreteInputs(address, count),
        Area::InputRegister => Request::ReadInputRegisters(address, count),
        Area::HoldingRegister => Request::ReadHoldingRegisters(address, count),
    }
}

/// The payload of a read response.
#[derive(Debug, PartialEq)]
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Data {
    fn decode(&self, tag: &TagInfo, offset: usize, len: usize) -> Decoded {
        match self {
            Data::Words(w) => match w.get(offset..offset + len) {
                Some(words) => tag.codec.decode_registers(words),
                None => Decoded::bad("response too short"),
            },
            Data::Bits(b) => match b.get(offset) {
                Some(bit) if tag.area.is_bits() => tag.codec.decode_bit(*bit),
                _ => Decoded::bad("response too short"),
            },
        }
    }
}

/// Check a response matches its request (kind and length) and take its payload.
/// Bit responses come padded to a whole byte; the padding is dropped.
fn response_data(area: Area, count: u16, resp: Response) -> Result<Data, String> {
    let want = usize::from(count);
    let (data, got) = match (area, resp) {
        (Area::Coil, Response::ReadCoils(b))
        | (Area::DiscreteInput, Response::ReadDiscreteInputs(b)) => {
            let got = b.len();
            let mut b = b;
            b.truncate(want);
            (Data::Bits(b), got)
        }
        (Area::HoldingRegister, Response::ReadHoldingRegisters(w))
        | (Area::InputRegister, Response::ReadInputRegisters(w)) => {
            if w.len() != want {
                return Err(format!("expected {want} registers, got {}", w.len()));
            }
            let got = w.len();
            (Data::Words(w), got)
        }
        (_, other) => return Err(format!("unexpected response {other:?}")),
    };
    if got < want {
        return Err(format!("expected {want} bits, got {got}"));
    }
    Ok(data)
}

/// The index of the next poll group whose interval ticked (starting after the
/// last one served, so a busy group cannot starve the others).
fn next_tick<'a>(
    intervals: &'a mut [Interval],
    next: &'a mut usize,
) -> impl Future<Output = usize> + 'a {
    std::future::poll_fn(move |cx| {
        let n = intervals.len();
        for k in 0..n {
            let i = (*next + k) % n;
            if intervals[i].poll_tick(cx).is_ready() {
                *next = (i + 1) % n;
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
}

async fn tick_opt(iv: &mut Option<Interval>) {
    match iv {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The source's settings without its poll groups (cheap: no tag is cloned).
fn without_groups(cfg: &ModbusSourceConfig) -> ModbusSourceConfig {
    ModbusSourceConfig {
        id: cfg.id.clone(),
        address: cfg.address.clone(),
        unit_id: cfg.unit_id,
        equipment_id: cfg.equipment_id.clone(),
        timeout: cfg.timeout,
        reconnect_initial: cfg.reconnect_initial,
        reconnect_max: cfg.reconnect_max,
        max_gap: cfg.max_gap,
        byte_order: cfg.byte_order,
        word_order: cfg.word_order,
        heartbeat_interval: cfg.heartbeat_interval,
        groups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exception_text_names_code_and_meaning() {
        assert_eq!(
            exception_text(ExceptionCode::IllegalDataAddress),
            "modbus exception 0x02 (IllegalDataAddress)"
        );
        assert_eq!(
            exception_text(ExceptionCode::GatewayTargetDevice),
            "modbus exception 0x0B (GatewayTargetDevice)"
        );
        assert_eq!(
            exception_text(ExceptionCode::new(0x42)),
            "modbus exception 0x42 (Unknown)"
        );
        assert!(exception_splits(ExceptionCode::IllegalDataAddress));
        assert!(!exception_splits(ExceptionCode::ServerDeviceBusy));
    }

    #[test]
    fn backoff_doubles_up_to_the_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let top: Vec<u128> = (0..6).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(top, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(200));
    }

    #[test]
    fn syn_is_reported_once_until_a_poll_succeeds() {
        let mut l = LinkState::new(2, Duration::from_secs(10));
        assert!(l.on_link_down(), "first connect failure reports");
        assert!(!l.on_link_down(), "retries do not");
        l.on_connected();
        assert!(
            !l.on_link_down(),
            "connected but nothing read: still the same gap"
        );
        l.on_connected();
        l.on_poll_done(true, 1_000);
        assert!(
            l.on_link_down(),
            "data flowed, so the next loss reports again"
        );
    }

    #[test]
    fn fst_marks_the_first_reading_of_each_tag_after_each_connect() {
        let mut l = LinkState::new(2, Duration::from_secs(10));
        l.on_connected();
        assert!(l.flags_for(0).contains(Flag::Fst));
        assert!(l.flags_for(0).is_empty());
        assert!(l.flags_for(1).contains(Flag::Fst));
        assert!(
            l.flags_for(7).is_empty(),
            "unknown index: no flag, no panic"
        );
        l.on_link_down();
        l.on_connected();
        assert!(l.flags_for(0).contains(Flag::Fst));
        assert!(l.flags_for(1).contains(Flag::Fst));
    }

    #[test]
    fn heartbeat_needs_a_recent_successful_poll_while_connected() {
        let mut l = LinkState::new(1, Duration::from_secs(10));
        assert!(!l.heartbeat_due(0));
        l.on_connected();
        assert!(!l.heartbeat_due(0), "nothing polled yet");
        l.on_poll_done(true, 1_000);
        assert!(l.heartbeat_due(5_000));
        assert!(l.heartbeat_due(11_000));
        assert!(!l.heartbeat_due(11_001), "stale");
        l.on_poll_done(false, 12_000);
        assert!(!l.heartbeat_due(12_000), "last poll failed");
        l.on_poll_done(true, 13_000);
        l.on_link_down();
        assert!(!l.heartbeat_due(13_000), "disconnected");
    }

    #[test]
    fn responses_are_checked_against_the_request() {
        assert_eq!(
            response_data(
                Area::HoldingRegister,
                2,
                Response::ReadHoldingRegisters(vec![1, 2])
            ),
            Ok(Data::Words(vec![1, 2]))
        );
        assert!(response_data(
            Area::HoldingRegister,
            3,
            Response::ReadHoldingRegisters(vec![1, 2])
        )
        .is_err());
        assert!(response_data(
            Area::InputRegister,
            2,
            Response::ReadHoldingRegisters(vec![1, 2])
        )
        .is_err());
        assert_eq!(
            response_data(
                Area::Coil,
                3,
                Response::ReadCoils(vec![true, false, true, false, false, false, false, false])
            ),
            Ok(Data::Bits(vec![true, false, true]))
        );
        assert!(response_data(
            Area::DiscreteInput,
            9,
            Response::ReadDiscreteInputs(vec![true; 8])
        )
        .is_err());
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds_and_grows(
            initial_ms in 1u64..5_000, extra_ms in 0u64..60_000,
            draws in prop::collection::vec(0f64..1.0, 1..40),
        ) {
            let (initial, max) = (Duration::from_millis(initial_ms), Duration::from_millis(initial_ms + extra_ms));
            let mut b = Backoff::new(initial, max);
            let mut ceiling = initial;
            for u in draws {
                let d = b.next_delay(u);
                prop_assert!(d >= initial && d <= max, "{d:?} outside {initial:?}..{max:?}");
                // Never above the un-jittered exponential step.
                prop_assert!(d <= ceiling + Duration::from_micros(1), "{d:?} above {ceiling:?}");
                ceiling = (ceiling * 2).min(max);
            }
        }

        #[test]
        fn one_syn_per_outage_however_many_retries(events in prop::collection::vec(0u8..3, 0..60)) {
            // 0 = connect/link failure, 1 = connected, 2 = poll ok (only counts while connected).
            let mut l = LinkState::new(1, Duration::from_secs(1));
            let mut syns = 0;
            let mut outages = 0;
            let mut in_outage = false;
            let mut connected = false;
            for e in events {
                match e {
                    0 => {
                        if l.on_link_down() { syns += 1; }
                        if !in_outage { outages += 1; in_outage = true; }
                        connected = false;
                    }
                    1 => { l.on_connected(); connected = true; }
                    _ => if connected { l.on_poll_done(true, 0); in_outage = false; },
                }
            }
            prop_assert_eq!(syns, outages);
        }
    }
}
