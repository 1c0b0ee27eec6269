//! The S7comm read subset on the wire, as pure encode/decode functions:
//! TPKT (RFC 1006) around COTP (ISO 8073 class 0: connect request/confirm, data),
//! around S7comm (setup communication, read var). No I/O here: `client.rs` moves
//! the bytes. Every decoder checks every length it relies on and returns
//! [`FrameError`], never panics, whatever the input.

/// TPKT header: version 3, reserved, total length (header included).
pub const TPKT_HEADER: usize = 4;
/// COTP data header: length indicator, DT code, EOT + TPDU number.
pub const COTP_DT_HEADER: usize = 3;
/// S7 header of a job (request).
pub const S7_JOB_HEADER: usize = 10;
/// S7 header of an ack-data (response): the job header plus error class and code.
pub const S7_ACK_HEADER: usize = 12;
/// Read-var parameter: function code and item count.
pub const READ_PARAM: usize = 2;
/// One item of a read-var request (S7ANY address).
pub const READ_ITEM: usize = 12;
/// Header of one item of a read-var response: return code, transport size, length.
pub const READ_DATA_ITEM: usize = 4;
/// Items one read-var request may carry (S7-300/400 and Snap7 refuse more).
pub const MAX_ITEMS: usize = 20;

const PROTOCOL_ID: u8 = 0x32;
const ROSCTR_JOB: u8 = 0x01;
const ROSCTR_ACK_DATA: u8 = 0x03;
const FN_SETUP: u8 = 0xF0;
const FN_READ: u8 = 0x04;
const COTP_CR: u8 = 0xE0;
const COTP_CC: u8 = 0xD0;
const COTP_DR: u8 = 0x80;
const COTP_DT: u8 = 0xF0;
/// TPDU size parameter 0x0A = 1024 bytes: room for a 960-byte PDU in one frame.
const TPDU_SIZE_1024: u8 = 0x0A;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame truncated: {what} needs {need} bytes, {have} present")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("bad {what}: expected {expected}, got {got:#04x}")]
    Unexpected {
        what: &'static str,
        expected: &'static str,
        got: u16,
    },
    #[error("{what} length {got} does not match the {expected} bytes present")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("the PLC refused the connection (COTP disconnect, reason {0:#04x})")]
    Refused(u8),
    #[error("the PLC answered with error class {class:#04x} code {code:#04x} ({meaning})")]
    S7Error {
        class: u8,
        code: u8,
        meaning: &'static str,
    },
    #[error("expected {expected} items in the response, got {got}")]
    ItemCount { expected: usize, got: usize },
}

type Result<T> = std::result::Result<T, FrameError>;

/// A bounds-checked reader: every `take` names what it was reading.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(FrameError::Truncated {
                what,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    fn expect(&mut self, want: u8, what: &'static str, expected: &'static str) -> Result<()> {
        let got = self.u8(what)?;
        if got != want {
            return Err(FrameError::Unexpected {
                what,
                expected,
                got: got.into(),
            });
        }
        Ok(())
    }
}

/// The length a TPKT header announces (the whole frame, header included).
pub fn tpkt_length(header: [u8; TPKT_HEADER]) -> Result<usize> {
    if header[0] != 3 {
        return Err(FrameError::Unexpected {
            what: "TPKT version",
            expected: "3",
            got: header[0].into(),
        });
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if len < TPKT_HEADER + 2 {
        return Err(FrameError::Length {
            what: "TPKT",
            expected: TPKT_HEADER + 2,
            got: len,
        });
    }
    Ok(len)
}

fn tpkt(cotp_and_payload: Vec<u8>) -> Vec<u8> {
    let len = (cotp_and_payload.len() + TPKT_HEADER) as u16;
    let mut out = Vec::with_capacity(usize::from(len));
    out.extend_from_slice(&[3, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&cotp_and_payload);
    out
}

/// A COTP connection request or confirm (they share the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    pub dst_ref: u16,
    pub src_ref: u16,
    pub src_tsap: u16,
    pub dst_tsap: u16,
    /// The TPDU size parameter (2^n bytes).
    pub tpdu_size: u8,
}

impl Connect {
    pub fn request(src_ref: u16, local_tsap: u16, remote_tsap: u16) -> Connect {
        Connect {
            dst_ref: 0,
            src_ref,
            src_tsap: local_tsap,
            dst_tsap: remote_tsap,
            tpdu_size: TPDU_SIZE_1024,
        }
    }

    fn encode(&self, code: u8) -> Vec<u8> {
        let mut c = vec![17, code];
        c.extend_from_slice(&self.dst_ref.to_be_bytes());
        c.extend_from_slice(&self.src_ref.to_be_bytes());
        c.push(0x00); // class 0, no options
        c.extend_from_slice(&[0xC0, 1, self.tpdu_size]);
        c.extend_from_slice(&[0xC1, 2]);
        c.extend_from_slice(&self.src_tsap.to_be_bytes());
        c.extend_from_slice(&[0xC2, 2]);
        c.extend_from_slice(&self.dst_tsap.to_be_bytes());
        tpkt(c)
    }

    /// The connection request frame (client → PLC).
    pub fn encode_request(&self) -> Vec<u8> {
        self.encode(COTP_CR)
    }

    /// The connection confirm frame (PLC → client; tests and simulators).
    pub fn encode_confirm(&self) -> Vec<u8> {
        self.encode(COTP_CC)
    }
}

/// A decoded COTP TPDU (the TPKT header already checked and removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cotp<'a> {
    ConnectRequest(Connect),
    ConnectConfirm(Connect),
    Disconnect {
        reason: u8,
    },
    /// A data TPDU; `last` is the EOT mark (the S7 PDU ends with this fragment).
    Data {
        last: bool,
        payload: &'a [u8],
    },
}

/// Decode one whole TPKT frame.
pub fn decode_frame(frame: &[u8]) -> Result<Cotp<'_>> {
    let mut r = Reader::new(frame);
    let header = r.take(TPKT_HEADER, "TPKT header")?;
    let len = tpkt_length([header[0], header[1], header[2], header[3]])?;
    if len != frame.len() {
        return Err(FrameError::Length {
            what: "TPKT",
            expected: frame.len(),
            got: len,
        });
    }
    let li = usize::from(r.u8("COTP length indicator")?);
    let body = r.take(li, "COTP header")?;
    let payload = r.rest();
    let mut c = Reader::new(body);
    match c.u8("COTP code")? {
        COTP_DT => {
            let nr = c.u8("COTP TPDU number")?;
            Ok(Cotp::Data {
                last: nr & 0x80 != 0,
                payload,
            })
        }
        code @ (COTP_CR | COTP_CC) => {
            let dst_ref = c.u16("COTP destination reference")?;
            let src_ref = c.u16("COTP source reference")?;
            let _class = c.u8("COTP class")?;
            let (mut src_tsap, mut dst_tsap, mut tpdu_size) = (None, None, None);
            while !c.rest().is_empty() {
                let kind = c.u8("COTP parameter code")?;
                let plen = usize::from(c.u8("COTP parameter length")?);
                let value = c.take(plen, "COTP parameter")?;
                let as_u16 = |v: &[u8]| (v.len() == 2).then(|| u16::from_be_bytes([v[0], v[1]]));
                match kind {
                    0xC0 if plen == 1 => tpdu_size = Some(value[0]),
                    0xC1 => src_tsap = as_u16(value),
                    0xC2 => dst_tsap = as_u16(value),
                    _ => {} // other parameters (e.g. checksum, version) are not ours
                }
            }
            let connect = Connect {
                dst_ref,
                src_ref,
                src_tsap: src_tsap.unwrap_or(0),
                dst_tsap: dst_tsap.unwrap_or(0),
                tpdu_size: tpdu_size.unwrap_or(TPDU_SIZE_1024),
            };
            Ok(if code == COTP_CR {
                Cotp::ConnectRequest(connect)
            } else {
                Cotp::ConnectConfirm(connect)
            })
        }
        COTP_DR => {
            let _dst = c.u16("COTP destination reference")?;
            let _src = c.u16("COTP source reference")?;
            Ok(Cotp::Disconnect {
                reason: c.u8("COTP disconnect reason")?,
            })
        }
        other => Err(FrameError::Unexpected {
            what: "COTP code",
            expected: "CR, CC, DR or DT",
            got: other.into(),
        }),
    }
}

/// Wrap one S7 PDU in a COTP data TPDU (one fragment, EOT set) and TPKT.
pub fn data_frame(s7: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(COTP_DT_HEADER + s7.len());
    c.extend_from_slice(&[2, COTP_DT, 0x80]);
    c.extend_from_slice(s7);
    tpkt(c)
}

/// Where an item is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AreaCode {
    Inputs,
    Outputs,
    Markers,
    DataBlock(u16),
    Timers,
    Counters,
}

impl AreaCode {
    fn code(self) -> u8 {
        match self {
            AreaCode::Inputs => 0x81,
            AreaCode::Outputs => 0x82,
            AreaCode::Markers => 0x83,
            AreaCode::DataBlock(_) => 0x84,
            AreaCode::Timers => 0x1D,
            AreaCode::Counters => 0x1C,
        }
    }

    fn db(self) -> u16 {
        match self {
            AreaCode::DataBlock(n) => n,
            _ => 0,
        }
    }

    /// Bytes of one addressable unit: timers and counters are 2-byte words
    /// addressed by number, every other area is addressed by byte.
    pub fn unit(self) -> usize {
        match self {
            AreaCode::Timers | AreaCode::Counters => 2,
            _ => 1,
        }
    }
}

/// One item of a read-var request: `count` units of `area` from `start`
/// (a byte offset, or a timer/counter number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadItem {
    pub area: AreaCode,
    pub start: u32,
    pub count: u16,
}

impl ReadItem {
    /// Bytes the answer carries.
    pub fn response_bytes(&self) -> usize {
        usize::from(self.count) * self.area.unit()
    }
}

/// The setup-communication job: ask for `pdu_size`.
pub fn encode_setup(pdu_ref: u16, pdu_size: u16) -> Vec<u8> {
    let mut param = vec![FN_SETUP, 0x00];
    param.extend_from_slice(&1u16.to_be_bytes()); // max AmQ calling
    param.extend_from_slice(&1u16.to_be_bytes()); // max AmQ called
    param.extend_from_slice(&pdu_size.to_be_bytes());
    data_frame(&job(pdu_ref, &param))
}

fn job(pdu_ref: u16, param: &[u8]) -> Vec<u8> {
    let mut s7 = Vec::with_capacity(S7_JOB_HEADER + param.len());
    s7.extend_from_slice(&[PROTOCOL_ID, ROSCTR_JOB, 0, 0]);
    s7.extend_from_slice(&pdu_ref.to_be_bytes());
    s7.extend_from_slice(&(param.len() as u16).to_be_bytes());
    s7.extend_from_slice(&0u16.to_be_bytes());
    s7.extend_from_slice(param);
    s7
}

/// A read-var job for `items` (at most [`MAX_ITEMS`]; the planner guarantees it).
/// Byte areas are read with transport size BYTE, timers and counters with their own.
pub fn encode_read(pdu_ref: u16, items: &[ReadItem]) -> Vec<u8> {
    let mut param = Vec::with_capacity(READ_PARAM + READ_ITEM * items.len());
    param.extend_from_slice(&[FN_READ, items.len() as u8]);
    for it in items {
        let transport = match it.area {
            AreaCode::Timers | AreaCode::Counters => it.area.code(),
            _ => 0x02,
        };
        // Byte areas address bits (byte × 8); timers and counters by number.
        let address = match it.area {
            AreaCode::Timers | AreaCode::Counters => it.start,
            _ => it.start << 3,
        };
        param.extend_from_slice(&[0x12, 0x0A, 0x10, transport]);
        param.extend_from_slice(&it.count.to_be_bytes());
        param.extend_from_slice(&it.area.db().to_be_bytes());
        param.push(it.area.code());
        param.extend_from_slice(&address.to_be_bytes()[1..]);
    }
    data_frame(&job(pdu_ref, &param))
}

/// An S7 PDU's header and the slices of its parameter and data parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S7Pdu<'a> {
    pub rosctr: u8,
    pub pdu_ref: u16,
    pub param: &'a [u8],
    pub data: &'a [u8],
}

/// The meaning of an S7 header error class (the code refines it; both are reported).
pub fn error_class_meaning(class: u8) -> &'static str {
    match class {
        0x81 => "application relationship error",
        0x82 => "object definition error",
        0x83 => "no resources available",
        0x84 => "error on service processing",
        0x85 => "error on supplies",
        0x87 => "access error",
        0xD2 => "OSI error",
        _ => "unknown error class",
    }
}

/// Decode a whole S7 PDU (a job, or an ack-data with its error fields checked).
pub fn decode_s7(pdu: &[u8]) -> Result<S7Pdu<'_>> {
    let mut r = Reader::new(pdu);
    r.expect(PROTOCOL_ID, "S7 protocol id", "0x32")?;
    let rosctr = r.u8("S7 ROSCTR")?;
    let _reserved = r.u16("S7 reserved")?;
    let pdu_ref = r.u16("S7 PDU reference")?;
    let plen = usize::from(r.u16("S7 parameter length")?);
    let dlen = usize::from(r.u16("S7 data length")?);
    match rosctr {
        ROSCTR_JOB => {}
        0x02 | ROSCTR_ACK_DATA => {
            let class = r.u8("S7 error class")?;
            let code = r.u8("S7 error code")?;
            if class != 0 || code != 0 {
                return Err(FrameError::S7Error {
                    class,
                    code,
                    meaning: error_class_meaning(class),
                });
            }
        }
        other => {
            return Err(FrameError::Unexpected {
                what: "S7 ROSCTR",
                expected: "job or ack-data",
                got: other.into(),
            })
        }
    }
    if r.rest().len() != plen + dlen {
        return Err(FrameError::Length {
            what: "S7 parameter + data",
            expected: r.rest().len(),
            got: plen + dlen,
        });
    }
    let param = r.take(plen, "S7 parameters")?;
    let data = r.take(dlen, "S7 data")?;
    Ok(S7Pdu {
        rosctr,
        pdu_ref,
        param,
        data,
    })
}

/// What a setup-communication answer grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub max_amq_calling: u16,
    pub max_amq_called: u16,
    pub pdu_size: u16,
}

/// The PDU size a setup-communication ack-data grants.
pub fn decode_setup_response(pdu: &[u8]) -> Result<Setup> {
    let s7 = decode_s7(pdu)?;
    expect_ack(&s7)?;
    let mut r = Reader::new(s7.param);
    r.expect(FN_SETUP, "S7 function", "setup communication (0xF0)")?;
    let _reserved = r.u8("setup reserved")?;
    let setup = Setup {
        max_amq_calling: r.u16("max AmQ calling")?,
        max_amq_called: r.u16("max AmQ called")?,
        pdu_size: r.u16("PDU size")?,
    };
    if setup.pdu_size < 64 {
        return Err(FrameError::Length {
            what: "negotiated PDU",
            expected: 64,
            got: setup.pdu_size.into(),
        });
    }
    Ok(setup)
}

fn expect_ack(s7: &S7Pdu<'_>) -> Result<()> {
    if s7.rosctr != ROSCTR_ACK_DATA {
        return Err(FrameError::Unexpected {
            what: "S7 ROSCTR",
            expected: "ack-data (3)",
            got: s7.rosctr.into(),
        });
    }
    Ok(())
}

/// An item return code (0xFF is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnCode(pub u8);

impl ReturnCode {
    pub const OK: ReturnCode = ReturnCode(0xFF);

    pub fn meaning(self) -> &'static str {
        match self.0 {
            0xFF => "success",
            0x00 => "reserved",
            0x01 => "hardware fault",
            0x03 => "accessing the object not allowed",
            0x05 => "address out of range",
            0x06 => "data type not supported",
            0x07 => "data type inconsistent",
            0x0A => "object does not exist",
            _ => "unknown return code",
        }
    }
}

impl std::fmt::Display for ReturnCode {
    /// `s7 item return code 0x05 (address out of range)`: the `rawQuality` text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s7 item return code {:#04x} ({})",
            self.0,
            self.meaning()
        )
    }
}

/// One item of a read-var answer: its data, or the code the PLC refused it with.
pub type ItemResult<'a> = std::result::Result<&'a [u8], ReturnCode>;

/// Decode a read-var ack-data carrying `expected` items.
pub fn decode_read_response(pdu: &[u8], expected: usize) -> Result<Vec<ItemResult<'_>>> {
    let s7 = decode_s7(pdu)?;
    expect_ack(&s7)?;
    let mut p = Reader::new(s7.param);
    p.expect(FN_READ, "S7 function", "read var (0x04)")?;
    let count = usize::from(p.u8("item count")?);
    if count != expected {
        return Err(FrameError::ItemCount {
            expected,
            got: count,
        });
    }
    let mut r = Reader::new(s7.data);
    let mut items = Vec::with_capacity(count);
    for i in 0..count {
        let code = ReturnCode(r.u8("item return code")?);
        let transport = r.u8("item transport size")?;
        let len = usize::from(r.u16("item length")?);
        if code != ReturnCode::OK {
            // A refused item has no data, whatever its length field says (Snap7
            // repeats the requested length there).
            items.push(Err(code));
            continue;
        }
        // BIT, BYTE/WORD/DWORD, INTEGER, DINT give the length in bits; the others in bytes.
        let bytes = match transport {
            0x03..=0x06 => len.div_ceil(8),
            _ => len,
        };
        let data = r.take(bytes, "item data")?;
        // Every item but the last is padded to an even length.
        if i + 1 < count && bytes % 2 == 1 {
            r.take(1, "item padding")?;
        }
        items.push(Ok(data));
    }
    if !r.rest().is_empty() {
        return Err(FrameError::Length {
            what: "read-var data",
            expected: r.pos,
            got: s7.data.len(),
        });
    }
    Ok(items)
}

/// Bytes a read-var job for items of these sizes takes (the whole S7 PDU).
pub fn read_request_size(items: usize) -> usize {
    S7_JOB_HEADER + READ_PARAM + READ_ITEM * items
}

/// Bytes one answered item adds to a read-var response, `last` meaning unpadded.
pub fn read_response_item_size(bytes: usize, last: bool) -> usize {
    READ_DATA_ITEM + bytes + usize::from(!last && bytes % 2 == 1)
}

/// Bytes a read-var ack-data for items of these sizes takes (the whole S7 PDU).
pub fn read_response_size(sizes: impl IntoIterator<Item = usize>) -> usize {
    let sizes: Vec<usize> = sizes.into_iter().collect();
    let n = sizes.len();
    S7_ACK_HEADER
        + READ_PARAM
        + sizes
            .iter()
            .enumerate()
            .map(|(i, b)| read_response_item_size(*b, i + 1 == n))
            .sum::<usize>()
}

// ---- The other side, for tests and simulators: decode jobs, encode answers. ----

/// Decode a read-var job's items (what a PLC does with [`encode_read`]).
pub fn decode_read_request(pdu: &[u8]) -> Result<(u16, Vec<ReadItem>)> {
    let s7 = decode_s7(pdu)?;
    if s7.rosctr != ROSCTR_JOB {
        return Err(FrameError::Unexpected {
            what: "S7 ROSCTR",
            expected: "job (1)",
            got: s7.rosctr.into(),
        });
    }
    let mut p = Reader::new(s7.param);
    p.expect(FN_READ, "S7 function", "read var (0x04)")?;
    let count = usize::from(p.u8("item count")?);
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        p.expect(0x12, "item spec", "0x12")?;
        p.expect(0x0A, "item length", "0x0A")?;
        p.expect(0x10, "item syntax", "S7ANY (0x10)")?;
        let _transport = p.u8("item transport size")?;
        let n = p.u16("item count")?;
        let db = p.u16("item DB number")?;
        let area = p.u8("item area")?;
        let a = p.take(3, "item address")?;
        let address = u32::from_be_bytes([0, a[0], a[1], a[2]]);
        let (area, start) = match area {
            0x81 => (AreaCode::Inputs, address >> 3),
            0x82 => (AreaCode::Outputs, address >> 3),
            0x83 => (AreaCode::Markers, address >> 3),
            0x84 => (AreaCode::DataBlock(db), address >> 3),
            0x1D => (AreaCode::Timers, address),
            0x1C => (AreaCode::Counters, address),
            other => {
                return Err(FrameError::Unexpected {
                    what: "item area",
                    expected: "I, Q, M, DB, T or C",
                    got: other.into(),
                })
            }
        };
        items.push(ReadItem {
            area,
            start,
            count: n,
        });
    }
    if !p.rest().is_empty() {
        return Err(FrameError::Length {
            what: "read-var parameters",
            expected: p.pos,
            got: s7.param.len(),
        });
    }
    Ok((s7.pdu_ref, items))
}

fn ack_data(pdu_ref: u16, param: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s7 = Vec::with_capacity(S7_ACK_HEADER + param.len() + data.len());
    s7.extend_from_slice(&[PROTOCOL_ID, ROSCTR_ACK_DATA, 0, 0]);
    s7.extend_from_slice(&pdu_ref.to_be_bytes());
    s7.extend_from_slice(&(param.len() as u16).to_be_bytes());
    s7.extend_from_slice(&(data.len() as u16).to_be_bytes());
    s7.extend_from_slice(&[0, 0]);
    s7.extend_from_slice(param);
    s7.extend_from_slice(data);
    s7
}

/// A setup-communication answer granting `pdu_size` (the S7 PDU, unwrapped).
pub fn encode_setup_response(pdu_ref: u16, pdu_size: u16) -> Vec<u8> {
    let mut param = vec![FN_SETUP, 0x00];
    param.extend_from_slice(&1u16.to_be_bytes());
    param.extend_from_slice(&1u16.to_be_bytes());
    param.extend_from_slice(&pdu_size.to_be_bytes());
    ack_data(pdu_ref, &param, &[])
}

/// A read-var answer (the S7 PDU, unwrapped); data is sent as octet strings
/// (transport size 0x09: length in bytes), refused items with no data.
pub fn encode_read_response(pdu_ref: u16, items: &[ItemResult<'_>]) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match it {
            Ok(bytes) => {
                data.extend_from_slice(&[0xFF, 0x09]);
                data.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                data.extend_from_slice(bytes);
                if i + 1 < items.len() && bytes.len() % 2 == 1 {
                    data.push(0);
                }
            }
            Err(code) => data.extend_from_slice(&[code.0, 0x00, 0, 0]),
        }
    }
    ack_data(pdu_ref, &[FN_READ, items.len() as u8], &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(frame: &[u8]) -> &[u8] {
        match decode_frame(frame) {
            Ok(Cotp::Data {
                last: true,
                payload,
            }) => payload,
            other => panic!("not a data frame: {other:?}"),
        }
    }

    #[test]
    fn a_connect_request_looks_like_snap7s() {
        // Rack 0, slot 1, OP connection: remote TSAP 0x0201.
        let f = Connect::request(1, 0x0100, 0x0201).encode_request();
        assert_eq!(
            f,
            [3, 0, 0, 22, 17, 0xE0, 0, 0, 0, 1, 0, 0xC0, 1, 0x0A, 0xC1, 2, 1, 0, 0xC2, 2, 2, 1]
        );
    }

    #[test]
    fn a_read_request_encodes_bit_addresses() {
        let f = encode_read(
            7,
            &[ReadItem {
                area: AreaCode::DataBlock(1),
                start: 4,
                count: 4,
            }],
        );
        let s7 = payload(&f);
        assert_eq!(
            s7,
            [
                0x32, 1, 0, 0, 0, 7, 0, 14, 0, 0, 4, 1, 0x12, 0x0A, 0x10, 2, 0, 4, 0, 1, 0x84, 0,
                0, 32
            ]
        );
        assert_eq!(s7.len(), read_request_size(1));
    }

    #[test]
    fn an_s7_error_names_class_and_code() {
        let mut r = encode_setup_response(1, 480);
        r[10] = 0x81;
        r[11] = 0x04;
        let e = decode_setup_response(&r).expect_err("error class set");
        assert_eq!(
            e.to_string(),
            "the PLC answered with error class 0x81 code 0x04 (application relationship error)"
        );
    }

    #[test]
    fn bit_lengths_and_padding_are_decoded() {
        // BYTE transport (length in bits), an odd item padded, a refused one, a REAL (bytes).
        let data = [
            0xFF, 0x04, 0, 24, 1, 2, 3, 0, 0x05, 0, 0, 0, 0xFF, 0x07, 0, 4, 9, 9, 9, 9,
        ];
        let mut pdu = vec![0x32, 3, 0, 0, 0, 1, 0, 2, 0, data.len() as u8, 0, 0, 4, 3];
        pdu.extend_from_slice(&data);
        let items = decode_read_response(&pdu, 3).expect("valid");
        assert_eq!(
            items,
            vec![Ok(&[1u8, 2, 3][..]), Err(ReturnCode(5)), Ok(&[9u8; 4][..])]
        );
        assert_eq!(
            ReturnCode(5).to_string(),
            "s7 item return code 0x05 (address out of range)"
        );
        assert!(decode_read_response(&pdu, 2).is_err());
    }

    #[test]
    fn a_refused_item_carries_no_data_even_with_a_length() {
        // Captured from the Snap7 server: DB1 100 (1 byte, padded), DB1 600 (4 bytes,
        // past the end: code 0x05 with length 4 and no data), T5 and C3 (octet strings).
        let pdu = [
            0x32, 3, 0, 0, 0, 2, 0, 2, 0, 22, 0, 0, 4, 4, 0xFF, 0x04, 0, 8, 0x2A, 0, 0x05, 0, 0, 4,
            0xFF, 0x09, 0, 2, 0x21, 0x23, 0xFF, 0x09, 0, 2, 0, 0x42,
        ];
        let items = decode_read_response(&pdu, 4).expect("valid");
        assert_eq!(
            items,
            vec![
                Ok(&[0x2Au8][..]),
                Err(ReturnCode(5)),
                Ok(&[0x21u8, 0x23][..]),
                Ok(&[0u8, 0x42][..])
            ]
        );
    }

    fn area() -> impl Strategy<Value = AreaCode> {
        prop_oneof![
            Just(AreaCode::Inputs),
            Just(AreaCode::Outputs),
            Just(AreaCode::Markers),
            any::<u16>().prop_map(AreaCode::DataBlock),
            Just(AreaCode::Timers),
            Just(AreaCode::Counters),
        ]
    }

    fn item() -> impl Strategy<Value = ReadItem> {
        (area(), any::<u16>(), 1..=u16::MAX).prop_map(|(area, start, count)| ReadItem {
            area,
            // Byte areas address up to 2^21 bytes (3-byte bit address).
            start: u32::from(start),
            count,
        })
    }

    fn result() -> impl Strategy<Value = std::result::Result<Vec<u8>, u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Ok),
            (0u8..0xFF).prop_map(Err),
        ]
    }

    proptest! {
        #[test]
        fn read_requests_round_trip(r in any::<u16>(), items in proptest::collection::vec(item(), 0..=MAX_ITEMS)) {
            let f = encode_read(r, &items);
            prop_assert_eq!(decode_read_request(payload(&f)), Ok((r, items.clone())));
            prop_assert_eq!(payload(&f).len(), read_request_size(items.len()));
        }

        #[test]
        fn read_responses_round_trip(r in any::<u16>(), items in proptest::collection::vec(result(), 0..=MAX_ITEMS)) {
            let results: Vec<ItemResult<'_>> = items.iter().map(|i| match i {
                Ok(b) => Ok(&b[..]),
                Err(c) => Err(ReturnCode(*c)),
            }).collect();
            let pdu = encode_read_response(r, &results);
            let sizes = items.iter().map(|i| i.as_ref().map_or(0, Vec::len));
            prop_assert_eq!(pdu.len(), read_response_size(sizes));
            let wrapped = data_frame(&pdu);
            prop_assert_eq!(decode_read_response(payload(&wrapped), items.len()), Ok(results));
        }

        #[test]
        fn connects_and_setups_round_trip(src in any::<u16>(), a in any::<u16>(), b in any::<u16>(), pdu in 64..=u16::MAX) {
            let c = Connect::request(src, a, b);
            let (req, conf) = (c.encode_request(), c.encode_confirm());
            prop_assert_eq!(decode_frame(&req), Ok(Cotp::ConnectRequest(c)));
            prop_assert_eq!(decode_frame(&conf), Ok(Cotp::ConnectConfirm(c)));
            let s = decode_setup_response(&encode_setup_response(src, pdu));
            prop_assert_eq!(s.map(|s| s.pdu_size), Ok(pdu));
        }

        #[test]
        fn every_truncated_answer_is_an_error(items in proptest::collection::vec(result(), 1..=MAX_ITEMS), cut in any::<prop::sample::Index>()) {
            let results: Vec<ItemResult<'_>> = items.iter().map(|i| match i {
                Ok(b) => Ok(&b[..]),
                Err(c) => Err(ReturnCode(*c)),
            }).collect();
            let pdu = encode_read_response(1, &results);
            let at = cut.index(pdu.len());
            prop_assert!(decode_read_response(&pdu[..at], items.len()).is_err());
            let frame = data_frame(&pdu);
            let at = cut.index(frame.len());
            prop_assert!(decode_frame(&frame[..at]).is_err());
            let setup = encode_setup_response(1, 480);
            prop_assert!(decode_setup_response(&setup[..cut.index(setup.len())]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..30) {
            let _ = decode_frame(&bytes);
            let _ = decode_s7(&bytes);
            let _ = decode_setup_response(&bytes);
            let _ = decode_read_response(&bytes, n);
            let _ = decode_read_request(&bytes);
            if bytes.len() >= 4 {
                let _ = tpkt_length([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }

        #[test]
        fn corrupted_answers_never_panic(items in proptest::collection::vec(result(), 1..=MAX_ITEMS), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let results: Vec<ItemResult<'_>> = items.iter().map(|i| match i {
                Ok(b) => Ok(&b[..]),
                Err(c) => Err(ReturnCode(*c)),
            }).collect();
            let mut pdu = encode_read_response(1, &results);
            let i = at.index(pdu.len());
            pdu[i] = byte;
            let _ = decode_read_response(&pdu, items.len());
        }
    }
}
