//! The Modbus TCP side of a source: one connection, poll groups on their own
//! intervals, requests one after another. Reconnecting, flags and heartbeats
//! are the shared driver's (`sources::driver`); this file connects and reads.

use super::config::{Area, ModbusSourceConfig};
use super::decode::Codec;
use super::plan::{plan, ReadRequest, TagExtent};
use crate::sources::config::CommonSourceConfig;
use crate::sources::poll::PollTimers;
use crate::sources::{Cycle, EquipmentIds, Sample, Source, SourceIdentity, SourceTag};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
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

/// One tag, resolved for polling.
#[derive(Debug)]
struct TagInfo {
    /// Index into the source's [`SourceIdentity::tags`].
    index: usize,
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

/// A Modbus TCP source, built once from its configuration.
pub struct ModbusSource {
    identity: SourceIdentity,
    address: String,
    unit_id: u8,
    timeout: Duration,
    groups: Vec<Group>,
    /// Requests whose last answer was an exception (logged at warn once, then debug).
    failing: HashSet<(Area, u16, u16)>,
}

/// An open connection and its poll timers (fresh per connection: the first tick
/// is immediate, so a reconnect polls at once).
pub struct ModbusLink {
    ctx: Context,
    polls: PollTimers<()>,
}

impl ModbusSource {
    /// Takes the configuration by value: with thousands of tags it is megabytes,
    /// and only the resolved tag table lives on.
    pub fn new(cfg: ModbusSourceConfig, common: &CommonSourceConfig) -> ModbusSource {
        let mut tags = Vec::with_capacity(cfg.tag_count());
        let mut groups = Vec::with_capacity(cfg.groups.len());
        let mut equipments = EquipmentIds::default();
        for g in &cfg.groups {
            let mut infos = Vec::with_capacity(g.tags.len());
            for t in &g.tags {
                let equipment = equipments.get(t.equipment(common.equipment_id.as_deref()));
                infos.push(TagInfo {
                    index: tags.len(),
                    area: t.area,
                    codec: Codec::for_tag(t, &cfg),
                });
                tags.push(
                    SourceTag::new(t.name.as_str(), equipment)
                        .with_map(t.map.clone())
                        .with_exception(t.exception.or(g.exception)),
                );
            }
            let extents: Vec<TagExtent> = g.tags.iter().map(|t| TagExtent::of(t)).collect();
            groups.push(Group {
                name: g.name.clone(),
                interval: g.interval,
                tags: infos,
                plan: plan(&extents, cfg.max_gap),
            });
        }
        let cycle_period = groups.iter().map(|g| g.interval).max().unwrap_or_default();
        info!(
            source = %common.id,
            address = %cfg.address,
            unit = cfg.unit_id,
            groups = groups.len(),
            requests = groups.iter().map(|g| g.plan.len()).sum::<usize>(),
            "modbus source configured"
        );
        ModbusSource {
            identity: SourceIdentity {
                id: Arc::from(common.id.as_str()),
                kind: "modbus",
                tags,
                cycle_period,
            },
            address: cfg.address,
            unit_id: cfg.unit_id,
            timeout: common.timeout,
            groups,
            failing: HashSet::new(),
        }
    }

    /// Bad samples for every tag of request `i` of group `gi`.
    fn bad_request(&self, gi: usize, i: usize, why: &str, out: &mut Cycle<'_>) {
        let group = &self.groups[gi];
        for slot in &group.plan[i].slots {
            if let Some(tag) = group.tags.get(slot.tag) {
                out.push(tag.index, Sample::bad(why));
            }
        }
    }
}

impl Source for ModbusSource {
    type Link = ModbusLink;
    /// The poll group whose interval ticked.
    type Due = usize;
    type Error = LinkError;

    fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    async fn connect(&mut self) -> Result<ModbusLink, LinkError> {
        let ctx = connect(&self.address, self.unit_id, self.timeout).await?;
        let polls = PollTimers::new(self.groups.iter().map(|g| (g.interval, ())));
        info!(source = %self.identity.id, address = %self.address, "modbus connected");
        Ok(ModbusLink { ctx, polls })
    }

    async fn next_cycle(&mut self, link: &mut ModbusLink) -> usize {
        link.polls.tick().await
    }

    /// Read every request of poll group `gi` in turn.
    async fn read(
        &mut self,
        link: &mut ModbusLink,
        gi: usize,
        out: &mut Cycle<'_>,
    ) -> Result<(), LinkError> {
        let ctx = &mut link.ctx;
        let timeout = self.timeout;
        let source = Arc::clone(&self.identity.id);
        let unit = self.unit_id;
        let mut i = 0;
        while i < self.groups[gi].plan.len() {
            if out.stopping() {
                return Ok(());
            }
            let req = &self.groups[gi].plan[i];
            let (area, address, count) = (req.area, req.address, req.count);
            let call = ctx.call(request(area, address, count));
            let answer = match tokio::time::timeout(timeout, call).await {
                Err(_elapsed) => {
                    return Err(LinkError::RequestTimeout {
                        timeout,
                        area,
                        address,
                        count,
                    })
                }
                Ok(Err(tokio_modbus::Error::Transport(e))) => return Err(LinkError::Transport(e)),
                Ok(Err(tokio_modbus::Error::Protocol(e))) => return Err(LinkError::Protocol(e)),
                Ok(Ok(answer)) => answer,
            };
            let key = (area, address, count);
            match answer.map(|resp| response_data(area, count, resp)) {
                Ok(Ok(data)) => {
                    if self.failing.remove(&key) {
                        info!(%source, unit, %area, address, count, "modbus read recovered");
                    }
                    let group = &self.groups[gi];
                    for slot in &group.plan[i].slots {
                        let Some(tag) = group.tags.get(slot.tag) else {
                            continue;
                        };
                        let decoded =
                            data.decode(tag, usize::from(slot.offset), usize::from(slot.len));
                        out.push(tag.index, decoded);
                    }
                }
                Ok(Err(malformed)) => {
                    // A device bug, not a lost link: the tags are Bad, the connection stays.
                    out.count_error();
                    warn!(%source, unit, %area, address, count, error = %malformed, "malformed modbus response");
                    self.bad_request(gi, i, &malformed, out);
                }
                Err(code) => {
                    out.count_error();
                    let text = exception_text(code);
                    let group = &mut self.groups[gi];
                    if group.plan[i].slots.len() > 1 && exception_splits(code) {
                        let parts = group.plan[i].split();
                        warn!(%source, unit, group = %group.name, %area, address, count, exception = %text, requests = parts.len(), "modbus exception on a merged read: reading its tags one by one from now on");
                        group.plan.splice(i..=i, parts);
                        continue;
                    }
                    if self.failing.insert(key) {
                        warn!(%source, unit, %area, address, count, exception = %text, "modbus exception");
                    } else {
                        debug!(%source, unit, %area, address, count, exception = %text, "modbus exception (again)");
                    }
                    self.bad_request(gi, i, &text, out);
                }
            }
            i += 1;
        }
        Ok(())
    }

    async fn close(&mut self, mut link: ModbusLink) {
        let _closed = link.ctx.disconnect().await;
    }
}

async fn connect(address: &str, unit_id: u8, timeout: Duration) -> Result<Context, LinkError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| LinkError::ConnectTimeout {
            address: address.to_owned(),
            timeout,
        })?
        .map_err(|source| LinkError::Connect {
            address: address.to_owned(),
            source,
        })?;
    // Requests are small and answered one at a time: do not let Nagle hold them.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%address, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(tokio_modbus::client::tcp::attach_slave(
        stream,
        Slave(unit_id),
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
    fn decode(&self, tag: &TagInfo, offset: usize, len: usize) -> Sample {
        match self {
            Data::Words(w) => match w.get(offset..offset + len) {
                Some(words) => tag.codec.decode_registers(words),
                None => Sample::bad("response too short"),
            },
            Data::Bits(b) => match b.get(offset) {
                Some(bit) if tag.area.is_bits() => tag.codec.decode_bit(*bit),
                _ => Sample::bad("response too short"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
