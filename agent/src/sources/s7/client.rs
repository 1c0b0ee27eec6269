//! The S7 side of a source: one ISO-on-TCP connection per PLC, shared by all of
//! its poll groups; each group's plan (re)made for the PDU size the PLC granted.
//! Reconnecting, flags and heartbeats are the shared driver's (`sources::driver`);
//! this file moves frames (`frame`) and turns answers into samples.

use super::address::{self, Address, Extent};
use super::config::S7SourceConfig;
use super::decode::decode;
use super::frame::{self, Connect, Cotp, FrameError, ReturnCode};
use super::plan::{plan, Plan};
use crate::sources::config::CommonSourceConfig;
use crate::sources::poll::PollTimers;
use crate::sources::{Cycle, EquipmentIds, Sample, Source, SourceIdentity, SourceTag};
use crate::telemetry::metrics::{Metrics, SourceLabel};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, error, info, warn};

/// The largest S7 PDU accepted while reassembling fragments (well above 960).
const MAX_PDU: usize = 65_535;

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
    #[error("{address} refused the S7 connection: {why}")]
    Refused { address: String, why: String },
    #[error("no answer within {timeout:?} to {what}")]
    RequestTimeout {
        timeout: Duration,
        what: &'static str,
    },
    #[error("connection lost: {0}")]
    Transport(#[from] std::io::Error),
    /// A malformed or unexpected frame: the stream cannot be trusted any more.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    #[error("protocol error: answer to request {got} while waiting for {sent}")]
    OutOfStep { sent: u16, got: u16 },
}

/// One configured tag: the index of its first value in the source's tag list
/// (an array's values follow it) and its address.
#[derive(Debug)]
struct TagInfo {
    index: usize,
    address: Address,
}

#[derive(Debug)]
struct Group {
    name: String,
    interval: Duration,
    tags: Vec<TagInfo>,
    extents: Vec<Extent>,
    plan: Plan,
    /// The PDU size `plan` was made for (0: not yet).
    plan_pdu: u16,
    /// By request: the tags whose bytes have all arrived after it.
    ready: Vec<Vec<usize>>,
}

impl Group {
    fn replan(&mut self, pdu: u16, max_gap: u32) {
        self.plan = plan(&self.extents, pdu, max_gap);
        self.plan_pdu = pdu;
        self.ready = vec![Vec::new(); self.plan.requests.len()];
        for (t, tp) in self.plan.tags.iter().enumerate() {
            if !tp.pieces.is_empty() {
                self.ready[tp.ready].push(t);
            }
        }
    }
}

/// An S7 source, built once from its configuration.
pub struct S7Source {
    identity: SourceIdentity,
    address: String,
    tsaps: (u16, u16),
    pdu_request: u16,
    max_gap: u32,
    timeout: Duration,
    groups: Vec<Group>,
    metrics: Metrics,
    label: SourceLabel,
    /// Items whose last answer was a rejection (logged at warn once, then debug).
    failing: HashSet<(usize, usize)>,
}

/// An open connection, the PDU size granted, and its poll timers (fresh per
/// connection: the first tick is immediate, so a reconnect polls at once).
pub struct S7Link {
    stream: TcpStream,
    pdu: u16,
    next_ref: u16,
    polls: PollTimers<()>,
}

impl S7Link {
    fn pdu_ref(&mut self) -> u16 {
        self.next_ref = self.next_ref.wrapping_add(1).max(1);
        self.next_ref
    }
}

impl S7Source {
    pub fn new(cfg: S7SourceConfig, common: &CommonSourceConfig, metrics: Metrics) -> S7Source {
        let mut tags = Vec::with_capacity(cfg.tag_count());
        let mut groups = Vec::with_capacity(cfg.groups.len());
        let mut equipments = EquipmentIds::default();
        for g in &cfg.groups {
            let mut infos = Vec::with_capacity(g.tags.len());
            for t in &g.tags {
                let address = match address::parse(&t.address) {
                    Ok(a) => a,
                    Err(e) => {
                        // `check` refuses this config; a source started anyway skips the tag.
                        error!(source = %common.id, tag = %t.name, error = %e, "bad s7 address, tag skipped");
                        continue;
                    }
                };
                let equipment = equipments.get(t.equipment(common.equipment_id.as_deref()));
                infos.push(TagInfo {
                    index: tags.len(),
                    address,
                });
                for name in t.names(&address) {
                    tags.push(
                        SourceTag::new(name, Arc::clone(&equipment))
                            .with_map(t.map.clone())
                            .with_exception(t.exception.or(g.exception)),
                    );
                }
            }
            let extents = infos.iter().map(|t| t.address.extent()).collect();
            groups.push(Group {
                name: g.name.clone(),
                interval: g.interval,
                tags: infos,
                extents,
                plan: Plan::default(),
                plan_pdu: 0,
                ready: Vec::new(),
            });
        }
        let cycle_period = groups.iter().map(|g| g.interval).max().unwrap_or_default();
        let address = cfg.socket_address();
        info!(source = %common.id, %address, groups = groups.len(), tags = tags.len(), "s7 source configured");
        S7Source {
            label: metrics.source(&common.id),
            identity: SourceIdentity {
                id: Arc::from(common.id.as_str()),
                kind: "s7",
                tags,
                cycle_period,
            },
            address,
            tsaps: cfg.tsaps(),
            pdu_request: cfg.pdu_size,
            max_gap: cfg.max_gap,
            timeout: common.timeout,
            groups,
            metrics,
            failing: HashSet::new(),
        }
    }

    /// Decode the tags of group `gi` whose bytes are all in `results`.
    fn emit(
        &self,
        gi: usize,
        ri: usize,
        results: &[Vec<Result<Vec<u8>, String>>],
        out: &mut Cycle<'_>,
    ) {
        let group = &self.groups[gi];
        let mut joined = Vec::new();
        for &t in &group.ready[ri] {
            let tag = &group.tags[t];
            let pieces = &group.plan.tags[t].pieces;
            let mut failed = None;
            joined.clear();
            for p in pieces {
                match results.get(p.request).and_then(|r| r.get(p.item)) {
                    Some(Ok(data)) => match data.get(p.item_offset..p.item_offset + p.len) {
                        Some(bytes) => joined.extend_from_slice(bytes),
                        None => {
                            failed = Some(format!(
                                "s7 answer too short: {} bytes, expected {}",
                                data.len(),
                                p.item_offset + p.len
                            ))
                        }
                    },
                    Some(Err(why)) => failed = Some(why.clone()),
                    None => failed = Some("s7 item not read".to_owned()),
                }
                if failed.is_some() {
                    break;
                }
            }
            let a = &tag.address;
            for i in 0..a.count {
                let sample = match &failed {
                    Some(why) => Sample::bad(why.as_str()),
                    None => {
                        let (off, bit, len) = a.element(i);
                        match joined.get(off..off + len) {
                            Some(b) => decode(a.data_type, b, bit),
                            None => Sample::bad("s7 answer too short"),
                        }
                    }
                };
                out.push(tag.index + usize::from(i), sample);
            }
        }
    }

    async fn exchange(
        &self,
        link: &mut S7Link,
        frame: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, LinkError> {
        let timeout = self.timeout;
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, async {
            link.stream.write_all(frame).await?;
            recv_pdu(&mut link.stream, &self.address).await
        })
        .await
        .map_err(|_| LinkError::RequestTimeout { timeout, what })?;
        self.metrics
            .source_requests
            .get_or_create(&self.label)
            .inc();
        self.metrics
            .source_request_seconds
            .get_or_create(&self.label)
            .inc_by(started.elapsed().as_secs_f64());
        answer
    }
}

impl Source for S7Source {
    type Link = S7Link;
    /// The poll group whose interval ticked.
    type Due = usize;
    type Error = LinkError;

    fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    async fn connect(&mut self) -> Result<S7Link, LinkError> {
        let timeout = self.timeout;
        let address = self.address.clone();
        let (local, remote) = self.tsaps;
        let pdu_request = self.pdu_request;
        let (stream, pdu) = tokio::time::timeout(timeout, async {
            let mut stream = TcpStream::connect(&address)
                .await
                .map_err(|source| LinkError::Connect {
                    address: address.clone(),
                    source,
                })?;
            if let Err(e) = stream.set_nodelay(true) {
                debug!(%address, error = %e, "cannot set TCP_NODELAY");
            }
            stream
                .write_all(&Connect::request(1, local, remote).encode_request())
                .await?;
            let cc = recv_frame(&mut stream).await?;
            match frame::decode_frame(&cc)? {
                Cotp::ConnectConfirm(_) => {}
                Cotp::Disconnect { reason } => {
                    return Err(LinkError::Refused {
                        address: address.clone(),
                        why: format!(
                            "COTP disconnect (reason {reason:#04x}): check rack/slot or the TSAPs ({local:#06x}/{remote:#06x})"
                        ),
                    })
                }
                other => {
                    return Err(LinkError::Refused {
                        address: address.clone(),
                        why: format!("expected a COTP connect confirm, got {other:?}"),
                    })
                }
            }
            stream.write_all(&frame::encode_setup(1, pdu_request)).await?;
            let pdu = recv_pdu(&mut stream, &address).await?;
            let setup = frame::decode_setup_response(&pdu)?;
            Ok::<_, LinkError>((stream, setup.pdu_size.min(pdu_request)))
        })
        .await
        .map_err(|_| LinkError::ConnectTimeout {
            address: self.address.clone(),
            timeout,
        })??;
        self.metrics
            .source_pdu_bytes
            .get_or_create(&self.label)
            .set(i64::from(pdu));
        for g in &mut self.groups {
            if g.plan_pdu != pdu {
                g.replan(pdu, self.max_gap);
                info!(source = %self.identity.id, group = %g.name, pdu, requests = g.plan.requests.len(),
                      items = g.plan.requests.iter().map(|r| r.items.len()).sum::<usize>(), "s7 read plan");
            }
        }
        let polls = PollTimers::new(self.groups.iter().map(|g| (g.interval, ())));
        info!(source = %self.identity.id, address = %self.address, pdu, "s7 connected");
        Ok(S7Link {
            stream,
            pdu,
            next_ref: 1,
            polls,
        })
    }

    async fn next_cycle(&mut self, link: &mut S7Link) -> usize {
        link.polls.tick().await
    }

    /// Read every request of poll group `gi` in turn; each tag is pushed as soon
    /// as its last byte has arrived.
    async fn read(
        &mut self,
        link: &mut S7Link,
        gi: usize,
        out: &mut Cycle<'_>,
    ) -> Result<(), LinkError> {
        debug_assert_eq!(self.groups[gi].plan_pdu, link.pdu);
        let n = self.groups[gi].plan.requests.len();
        let mut results: Vec<Vec<Result<Vec<u8>, String>>> = Vec::with_capacity(n);
        for ri in 0..n {
            if out.stopping() {
                return Ok(());
            }
            let pdu_ref = link.pdu_ref();
            let request = frame::encode_read(pdu_ref, &self.groups[gi].plan.requests[ri].items);
            let answer = self.exchange(link, &request, "a read-var request").await?;
            let items = self.groups[gi].plan.requests[ri].items.len();
            let decoded = match frame::decode_s7(&answer) {
                Ok(h) if h.pdu_ref != pdu_ref => {
                    return Err(LinkError::OutOfStep {
                        sent: pdu_ref,
                        got: h.pdu_ref,
                    })
                }
                Ok(_) => frame::decode_read_response(&answer, items),
                Err(e) => Err(e),
            };
            match decoded {
                Ok(list) => {
                    let mut row = Vec::with_capacity(list.len());
                    for (ii, item) in list.into_iter().enumerate() {
                        let key = (gi, ri * frame::MAX_ITEMS + ii);
                        match item {
                            Ok(data) => {
                                if self.failing.remove(&key) {
                                    info!(source = %self.identity.id, group = %self.groups[gi].name, item = ?self.groups[gi].plan.requests[ri].items[ii], "s7 item readable again");
                                }
                                row.push(Ok(data.to_vec()));
                            }
                            Err(code) => {
                                out.count_error();
                                self.log_rejection(gi, ri, ii, code, key);
                                row.push(Err(code.to_string()));
                            }
                        }
                    }
                    results.push(row);
                }
                Err(e @ FrameError::S7Error { .. }) => {
                    // A well-formed refusal of the whole request: its tags are Bad, the link stays.
                    out.count_error();
                    let why = format!("s7 request refused: {e}");
                    warn!(source = %self.identity.id, group = %self.groups[gi].name, error = %e, "s7 request refused");
                    results.push(vec![Err(why); items]);
                }
                Err(e) => return Err(LinkError::Protocol(e)),
            }
            self.emit(gi, ri, &results, out);
        }
        Ok(())
    }

    async fn close(&mut self, mut link: S7Link) {
        let _closed = link.stream.shutdown().await;
    }
}

impl S7Source {
    fn log_rejection(
        &mut self,
        gi: usize,
        ri: usize,
        ii: usize,
        code: ReturnCode,
        key: (usize, usize),
    ) {
        let item = self.groups[gi].plan.requests[ri].items[ii];
        if self.failing.insert(key) {
            warn!(source = %self.identity.id, group = %self.groups[gi].name, ?item, code = %code, "s7 item rejected");
        } else {
            debug!(source = %self.identity.id, group = %self.groups[gi].name, ?item, code = %code, "s7 item rejected (again)");
        }
    }

    #[cfg(test)]
    fn plan_of(&self, gi: usize) -> &Plan {
        &self.groups[gi].plan
    }
}

/// One whole TPKT frame.
async fn recv_frame(stream: &mut TcpStream) -> Result<Vec<u8>, LinkError> {
    let mut header = [0u8; frame::TPKT_HEADER];
    stream.read_exact(&mut header).await?;
    let len = frame::tpkt_length(header)?;
    let mut buf = vec![0u8; len];
    buf[..frame::TPKT_HEADER].copy_from_slice(&header);
    stream.read_exact(&mut buf[frame::TPKT_HEADER..]).await?;
    Ok(buf)
}

/// One S7 PDU, reassembled from its COTP data fragments.
async fn recv_pdu(stream: &mut TcpStream, address: &str) -> Result<Vec<u8>, LinkError> {
    let mut pdu = Vec::new();
    loop {
        let f = recv_frame(stream).await?;
        match frame::decode_frame(&f)? {
            Cotp::Data { last, payload } => {
                pdu.extend_from_slice(payload);
                if pdu.len() > MAX_PDU {
                    return Err(FrameError::Length {
                        what: "reassembled S7 PDU",
                        expected: MAX_PDU,
                        got: pdu.len(),
                    }
                    .into());
                }
                if last {
                    return Ok(pdu);
                }
            }
            Cotp::Disconnect { reason } => {
                return Err(LinkError::Refused {
                    address: address.to_owned(),
                    why: format!("COTP disconnect (reason {reason:#04x})"),
                })
            }
            other => {
                return Err(FrameError::Unexpected {
                    what: "COTP TPDU",
                    expected: "data",
                    got: match other {
                        Cotp::ConnectRequest(_) => 0xE0,
                        _ => 0xD0,
                    },
                }
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::split;
    use linewatch_runtime::shutdown::CancellationToken;
    use linewatch_schemas::{Quality, Value};
    use tokio::net::TcpListener;

    /// A scripted PLC on 127.0.0.1: answers the connect and setup, then read-var
    /// jobs from `memory` (DB1 only), refusing what lies past its end.
    async fn fake_plc(
        pdu: u16,
        memory: Vec<u8>,
        corrupt_after: Option<usize>,
    ) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let cr = recv_frame(&mut s).await.expect("CR");
            let Ok(Cotp::ConnectRequest(c)) = frame::decode_frame(&cr) else {
                panic!("expected CR")
            };
            s.write_all(&c.encode_confirm()).await.expect("CC");
            let _setup = recv_pdu(&mut s, "client").await.expect("setup");
            s.write_all(&frame::data_frame(&frame::encode_setup_response(1, pdu)))
                .await
                .expect("setup ack");
            let mut served = 0;
            loop {
                let Ok(job) = recv_pdu(&mut s, "client").await else {
                    return served;
                };
                let (r, items) = frame::decode_read_request(&job).expect("read job");
                let answers: Vec<frame::ItemResult<'_>> = items
                    .iter()
                    .map(|it| {
                        let (s, e) = (it.start as usize, it.start as usize + usize::from(it.count));
                        memory.get(s..e).ok_or(ReturnCode(0x05))
                    })
                    .collect();
                let mut f = frame::data_frame(&frame::encode_read_response(r, &answers));
                served += 1;
                if corrupt_after.is_some_and(|n| served > n) {
                    f.truncate(f.len() - 1);
                    let len = (f.len() as u16).to_be_bytes();
                    f[2..4].copy_from_slice(&len);
                }
                if s.write_all(&f).await.is_err() {
                    return served;
                }
            }
        });
        (address, task)
    }

    fn source(address: &str, tags: &str) -> S7Source {
        let (common, cfg): (CommonSourceConfig, S7SourceConfig) = split(
            toml::from_str(&format!(
                "id = \"plc\"\nequipment_id = \"e\"\naddress = \"{address}\"\npdu_size = 480\n[[groups]]\nname = \"g\"\ninterval = \"10ms\"\ntags = [{tags}]"
            ))
            .expect("toml"),
        )
        .expect("config");
        S7Source::new(cfg, &common, Metrics::default())
    }

    #[tokio::test]
    async fn reads_values_and_marks_rejected_items_bad() {
        let mut mem = vec![0u8; 64];
        mem[4..8].copy_from_slice(&21.5f32.to_be_bytes());
        mem[10..12].copy_from_slice(&(-7i16).to_be_bytes());
        mem[12] = 0b10;
        let (address, plc) = fake_plc(240, mem, None).await;
        let mut src = source(
            &address,
            "{ name = \"t\", address = \"DB1.DBD4:REAL\" }, { name = \"i\", address = \"DB1.DBW10:INT[2]\" }, { name = \"b\", address = \"DB1.DBX12.1\" }, { name = \"far\", address = \"DB1.DBW100\" }",
        );
        let mut link = src.connect().await.expect("connect");
        assert_eq!(link.pdu, 240);
        assert_eq!(src.plan_of(0).requests.len(), 1);
        let stop = CancellationToken::new();
        let mut out = Cycle::new(&stop);
        let gi = src.next_cycle(&mut link).await;
        src.read(&mut link, gi, &mut out).await.expect("read");
        let mut got: Vec<(usize, Value, Quality)> = out
            .samples()
            .iter()
            .map(|(i, s)| (*i, s.value.clone(), s.quality))
            .collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            vec![
                (0, Value::Float(21.5), Quality::Ok),
                (1, Value::Int(-7), Quality::Ok),
                // Overlaps the BOOL's byte 12 (0b10): 0x0200.
                (2, Value::Int(512), Quality::Ok),
                (3, Value::Bool(true), Quality::Ok),
                (4, Value::Null, Quality::Bad),
            ]
        );
        let far = out
            .samples()
            .iter()
            .find(|(i, _)| *i == 4)
            .map(|(_, s)| s.raw_quality.clone());
        assert_eq!(
            far,
            Some(Some(
                "s7 item return code 0x05 (address out of range)".into()
            ))
        );
        assert_eq!(out.errors(), 1);
        src.close(link).await;
        assert_eq!(plc.await.expect("plc"), 1);
    }

    #[tokio::test]
    async fn a_malformed_answer_is_a_protocol_error() {
        let (address, _plc) = fake_plc(480, vec![0; 64], Some(0)).await;
        let mut src = source(&address, "{ name = \"t\", address = \"DB1.DBD4:REAL\" }");
        let mut link = src.connect().await.expect("connect");
        let stop = CancellationToken::new();
        let mut out = Cycle::new(&stop);
        let e = src
            .read(&mut link, 0, &mut out)
            .await
            .expect_err("malformed");
        assert!(matches!(e, LinkError::Protocol(_)), "{e}");
    }
}
