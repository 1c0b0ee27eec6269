//! S7 addresses as people write them (`DB1.DBD4:REAL`, `DB1.DBX0.1`, `MW20`, `I0.3`,
//! `DB2.DBB10:STRING[20]`, `T5`): a pure parser with errors that say what was
//! expected where, and the bytes each address covers.
//!
//! ```text
//! address  := location [ ":" type ]
//! location := "DB" n "." "DB" width offset [ "." bit ]
//!           | ( "M" | "I" | "E" | "Q" | "A" ) [ width ] offset [ "." bit ]
//!           | ( "T" | "C" | "Z" ) n
//! width    := "X" (bit, needs ".bit") | "B" (byte) | "W" (word) | "D" (double word)
//! type     := name [ "[" n "]" ] [ "[" n "]" ]
//! ```
//! Without a width, an area address is a bit (`M10.0`). The width implies a type
//! (X BOOL, B BYTE, W WORD, D DWORD) that `:type` may replace with one of the same
//! size; `B` starts any longer value (`DBB8:LREAL`, `DBB10:STRING[20]`). A `[n]`
//! after a type is an array of n values (for STRING and WSTRING the first `[n]` is
//! the maximum length, a second one the array). German mnemonics (E, A, Z) are accepted.

use super::frame::AreaCode;
use std::fmt;

/// The largest byte offset an S7ANY address can carry (a 3-byte bit address).
pub const MAX_BYTE: u32 = (1 << 21) - 1;

/// Value types of the S7 address syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Byte,
    Char,
    Word,
    Int,
    DWord,
    DInt,
    Real,
    LReal,
    SInt,
    USInt,
    UInt,
    UDInt,
    /// S7 STRING with this maximum length (2 header bytes + n characters).
    String(u8),
    /// S7 WSTRING with this maximum length (4 header bytes + 2n bytes).
    WString(u16),
    /// DATE_AND_TIME (8 BCD bytes).
    DateAndTime,
    /// A timer's S5TIME word, as milliseconds.
    Timer,
    /// A counter's BCD word, as a number.
    Counter,
}

impl DataType {
    /// Whether its values are numbers (a deadband applies); bits, characters,
    /// strings and dates are compared for any change.
    pub fn is_number(self) -> bool {
        !matches!(
            self,
            DataType::Bool
                | DataType::Char
                | DataType::String(_)
                | DataType::WString(_)
                | DataType::DateAndTime
        )
    }

    /// Bytes one value takes (a BOOL takes a bit: 0 here; see [`Address::extent`]).
    pub fn size(self) -> u32 {
        match self {
            DataType::Bool => 0,
            DataType::Byte | DataType::Char | DataType::SInt | DataType::USInt => 1,
            DataType::Word | DataType::Int | DataType::UInt => 2,
            DataType::Timer | DataType::Counter => 2,
            DataType::DWord | DataType::DInt | DataType::UDInt | DataType::Real => 4,
            DataType::LReal | DataType::DateAndTime => 8,
            DataType::String(n) => 2 + u32::from(n),
            DataType::WString(n) => 4 + 2 * u32::from(n),
        }
    }

    fn name(self) -> String {
        match self {
            DataType::Bool => "BOOL".into(),
            DataType::Byte => "BYTE".into(),
            DataType::Char => "CHAR".into(),
            DataType::Word => "WORD".into(),
            DataType::Int => "INT".into(),
            DataType::DWord => "DWORD".into(),
            DataType::DInt => "DINT".into(),
            DataType::Real => "REAL".into(),
            DataType::LReal => "LREAL".into(),
            DataType::SInt => "SINT".into(),
            DataType::USInt => "USINT".into(),
            DataType::UInt => "UINT".into(),
            DataType::UDInt => "UDINT".into(),
            DataType::String(n) => format!("STRING[{n}]"),
            DataType::WString(n) => format!("WSTRING[{n}]"),
            DataType::DateAndTime => "DATE_AND_TIME".into(),
            DataType::Timer => "TIMER".into(),
            DataType::Counter => "COUNTER".into(),
        }
    }
}

/// Access width of a location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Bit,
    Byte,
    Word,
    DWord,
}

impl Width {
    fn letter(self) -> char {
        match self {
            Width::Bit => 'X',
            Width::Byte => 'B',
            Width::Word => 'W',
            Width::DWord => 'D',
        }
    }
    fn implied(self) -> DataType {
        match self {
            Width::Bit => DataType::Bool,
            Width::Byte => DataType::Byte,
            Width::Word => DataType::Word,
            Width::DWord => DataType::DWord,
        }
    }
}

/// A parsed address: where it starts, its type, and how many values (1 unless an array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub area: AreaCode,
    /// Byte offset, or the timer/counter number.
    pub start: u32,
    /// Bit of a BOOL (0..=7), else 0.
    pub bit: u8,
    pub data_type: DataType,
    /// Values read: 1 for a scalar, n for `[n]`.
    pub count: u16,
    /// Written with `[n]`: each value becomes its own tag `name[i]`.
    pub array: bool,
}

/// Which units of which area an address covers (bytes, or timer/counter numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    pub area: AreaCode,
    pub start: u32,
    pub len: u32,
}

impl Address {
    /// The units it covers: whole bytes for byte areas (BOOLs: the bytes holding
    /// their bits), numbers for timers and counters.
    pub fn extent(&self) -> Extent {
        let len = match self.data_type {
            DataType::Bool => (u32::from(self.bit) + u32::from(self.count)).div_ceil(8),
            DataType::Timer | DataType::Counter => u32::from(self.count),
            t => t.size() * u32::from(self.count),
        };
        Extent {
            area: self.area,
            start: self.start,
            len,
        }
    }

    /// Where element `i` lies within the extent's bytes: (byte offset, bit, byte length).
    pub fn element(&self, i: u16) -> (usize, u8, usize) {
        match self.data_type {
            DataType::Bool => {
                let bit = usize::from(self.bit) + usize::from(i);
                (bit / 8, (bit % 8) as u8, 1)
            }
            t => {
                let size = t.size() as usize;
                (size * usize::from(i), 0, size)
            }
        }
    }
}

impl fmt::Display for Address {
    /// The canonical spelling (`DB1.DBD4:REAL`), for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = match self.data_type.size() {
            0 => Width::Bit,
            2 => Width::Word,
            4 => Width::DWord,
            _ => Width::Byte,
        };
        let bit = if width == Width::Bit {
            format!(".{}", self.bit)
        } else {
            String::new()
        };
        match self.area {
            AreaCode::Timers => write!(f, "T{}", self.start)?,
            AreaCode::Counters => write!(f, "C{}", self.start)?,
            AreaCode::DataBlock(n) => write!(f, "DB{n}.DB{}{}{bit}", width.letter(), self.start)?,
            a => {
                let letter = match a {
                    AreaCode::Inputs => 'I',
                    AreaCode::Outputs => 'Q',
                    _ => 'M',
                };
                write!(f, "{letter}{}{}{bit}", width.letter(), self.start)?
            }
        }
        if !matches!(self.area, AreaCode::Timers | AreaCode::Counters) {
            write!(f, ":{}", self.data_type.name())?;
        }
        if self.array {
            write!(f, "[{}]", self.count)?;
        }
        Ok(())
    }
}

/// What was wrong, where (a character position), and what would have been right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address:?}: {message}")]
pub struct AddressError {
    pub address: String,
    pub at: usize,
    pub message: String,
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, AddressError> {
        Err(AddressError {
            address: self.s.to_owned(),
            at: self.pos,
            message: format!("at {}: {}", self.pos, message.into()),
        })
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek().is_some_and(|p| p.eq_ignore_ascii_case(&c)) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("found {c:?}"),
            None => "found the end".into(),
        }
    }
    fn number(&mut self, what: &str, max: u32) -> Result<u32, AddressError> {
        let digits = self.rest().len()
            - self
                .rest()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        if digits == 0 {
            return self.fail(format!("expected {what} (a number), {}", self.found()));
        }
        let text = &self.rest()[..digits];
        match text.parse::<u32>() {
            Ok(n) if n <= max => {
                self.pos += digits;
                Ok(n)
            }
            _ => self.fail(format!("{text} is out of range for {what} (at most {max})")),
        }
    }
    fn width(&mut self) -> Option<Width> {
        [Width::Bit, Width::Byte, Width::Word, Width::DWord]
            .into_iter()
            .find(|&w| self.eat(w.letter()))
    }
}

const TYPE_NAMES: &str = "BOOL, BYTE, CHAR, WORD, INT, DWORD, DINT, REAL, LREAL, SINT, USINT, UINT, UDINT, STRING[n], WSTRING[n] or DATE_AND_TIME";

/// Parse one address.
pub fn parse(text: &str) -> Result<Address, AddressError> {
    let s = text.trim();
    let mut p = Parser { s, pos: 0 };
    let (area, width, start, bit) = if p.rest().len() >= 2
        && p.rest()[..2].eq_ignore_ascii_case("DB")
    {
        p.pos += 2;
        let db = p.number("a data block number after \"DB\"", u32::from(u16::MAX))?;
        if db == 0 {
            return p.fail("data block numbers start at 1");
        }
        if !p.eat('.') {
            return p.fail(format!(
                "expected \".\" after DB{db} (as in DB{db}.DBD0), {}",
                p.found()
            ));
        }
        if !(p.eat('D') && p.eat('B')) {
            return p.fail(format!(
                "expected \"DB\" and a width after DB{db}. (DBX, DBB, DBW or DBD), {}",
                p.found()
            ));
        }
        let Some(width) = p.width() else {
            return p.fail(format!(
                "expected a width after DB{db}.DB: X (bit), B (byte), W (word) or D (double word), {}",
                p.found()
            ));
        };
        let (start, bit) = offset_and_bit(&mut p, width)?;
        (AreaCode::DataBlock(db as u16), width, start, bit)
    } else {
        let area = match p.peek().map(|c| c.to_ascii_uppercase()) {
            Some('M') => AreaCode::Markers,
            Some('I' | 'E') => AreaCode::Inputs,
            Some('Q' | 'A') => AreaCode::Outputs,
            Some(c @ ('T' | 'C' | 'Z')) => {
                p.pos += 1;
                let n = p.number(
                    &format!("a {} number", if c == 'T' { "timer" } else { "counter" }),
                    u32::from(u16::MAX),
                )?;
                if !p.rest().is_empty() {
                    return p.fail(format!(
                        "timers and counters take no type or bit (they read as {}), {}",
                        if c == 'T' { "milliseconds" } else { "a count" },
                        p.found()
                    ));
                }
                let (area, t) = if c == 'T' {
                    (AreaCode::Timers, DataType::Timer)
                } else {
                    (AreaCode::Counters, DataType::Counter)
                };
                return Ok(Address {
                    area,
                    start: n,
                    bit: 0,
                    data_type: t,
                    count: 1,
                    array: false,
                });
            }
            _ => {
                return p.fail(format!(
                    "expected an area: DB<n>., M, I (E), Q (A), T or C (Z), {}",
                    p.found()
                ))
            }
        };
        p.pos += 1;
        // No width letter: a bit address (M10.0).
        let width = if p.peek().is_some_and(|c| c.is_ascii_digit()) {
            Width::Bit
        } else {
            match p.width() {
                Some(w) => w,
                None => {
                    return p.fail(format!(
                        "expected a byte offset or a width (X, B, W, D), {}",
                        p.found()
                    ))
                }
            }
        };
        let (start, bit) = offset_and_bit(&mut p, width)?;
        (area, width, start, bit)
    };

    let (data_type, count, array) = if p.eat(':') {
        let at = p.pos;
        let (t, count, array) = data_type(&mut p)?;
        if !fits(width, t) {
            p.pos = at;
            return p.fail(match width {
                Width::Bit => format!("a bit address (X) holds BOOL, not {}", t.name()),
                Width::Byte => "BOOL needs a bit address (DBX<byte>.<bit>, M<byte>.<bit>)".into(),
                Width::Word => format!("W reads 2 bytes: type must be WORD, INT or UINT, not {} (use B<offset> for longer types)", t.name()),
                Width::DWord => format!("D reads 4 bytes: type must be DWORD, DINT, UDINT or REAL, not {} (use B<offset> for longer types)", t.name()),
            });
        }
        (t, count, array)
    } else {
        (width.implied(), 1, false)
    };
    if !p.rest().is_empty() {
        return p.fail(format!(
            "expected \":\" and a type, or the end, {}",
            p.found()
        ));
    }
    let address = Address {
        area,
        start,
        bit,
        data_type,
        count,
        array,
    };
    let e = address.extent();
    if u64::from(e.start) + u64::from(e.len) > u64::from(MAX_BYTE) + 1 {
        return p.fail(format!(
            "the value runs past byte {MAX_BYTE}, the last one S7 can address"
        ));
    }
    Ok(address)
}

fn offset_and_bit(p: &mut Parser<'_>, width: Width) -> Result<(u32, u8), AddressError> {
    let start = p.number("a byte offset", MAX_BYTE)?;
    if width == Width::Bit {
        if !p.eat('.') {
            return p.fail(format!(
                "expected \".\" and a bit number 0..7 after byte {start}, {}",
                p.found()
            ));
        }
        let bit = p.number("a bit number 0..7", 7)?;
        Ok((start, bit as u8))
    } else {
        if p.peek() == Some('.') {
            return p.fail(format!(
                "a bit number needs a bit address (X, or no width: M{start}.0), not width {}",
                width.letter()
            ));
        }
        Ok((start, 0))
    }
}

fn fits(width: Width, t: DataType) -> bool {
    match width {
        Width::Bit => t == DataType::Bool,
        Width::Byte => t != DataType::Bool,
        Width::Word => t.size() == 2,
        Width::DWord => t.size() == 4,
    }
}

fn bracket(
    p: &mut Parser<'_>,
    what: &str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, AddressError> {
    if !p.eat('[') {
        return Ok(None);
    }
    let n = p.number(what, max)?;
    if n < min {
        p.pos -= n.to_string().len();
        return p.fail(format!("{what} must be at least {min}"));
    }
    if !p.eat(']') {
        return p.fail(format!("expected \"]\", {}", p.found()));
    }
    Ok(Some(n))
}

fn data_type(p: &mut Parser<'_>) -> Result<(DataType, u16, bool), AddressError> {
    let len = p.rest().len()
        - p.rest()
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
            .len();
    let name = p.rest()[..len].to_ascii_uppercase();
    let t = match name.as_str() {
        "BOOL" => DataType::Bool,
        "BYTE" => DataType::Byte,
        "CHAR" => DataType::Char,
        "WORD" => DataType::Word,
        "INT" => DataType::Int,
        "DWORD" => DataType::DWord,
        "DINT" => DataType::DInt,
        "REAL" => DataType::Real,
        "LREAL" => DataType::LReal,
        "SINT" => DataType::SInt,
        "USINT" => DataType::USInt,
        "UINT" => DataType::UInt,
        "UDINT" => DataType::UDInt,
        "STRING" => DataType::String(254),
        "WSTRING" => DataType::WString(254),
        "DATE_AND_TIME" | "DT" => DataType::DateAndTime,
        _ => {
            return p.fail(format!(
                "expected a type ({TYPE_NAMES}), found {:?}",
                &p.rest()[..len.max(p.rest().chars().next().map_or(0, char::len_utf8))]
            ))
        }
    };
    p.pos += len;
    let t = match t {
        DataType::String(_) => match bracket(p, "a STRING length", 1, 254)? {
            Some(n) => DataType::String(n as u8),
            None => t,
        },
        DataType::WString(_) => match bracket(p, "a WSTRING length", 1, 16382)? {
            Some(n) => DataType::WString(n as u16),
            None => t,
        },
        t => t,
    };
    match bracket(p, "an array length", 1, u32::from(u16::MAX))? {
        Some(n) => Ok((t, n as u16, true)),
        None => Ok((t, 1, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(text: &str) -> Address {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn the_addresses_people_write() {
        let db1 = AreaCode::DataBlock(1);
        let cases = [
            ("DB1.DBD4:REAL", db1, 4, 0, DataType::Real, 1),
            ("DB1.DBX0.1", db1, 0, 1, DataType::Bool, 1),
            (
                "DB10.DBW2:INT",
                AreaCode::DataBlock(10),
                2,
                0,
                DataType::Int,
                1,
            ),
            (
                "DB2.DBB10:STRING[20]",
                AreaCode::DataBlock(2),
                10,
                0,
                DataType::String(20),
                1,
            ),
            ("M10.0", AreaCode::Markers, 10, 0, DataType::Bool, 1),
            ("MW20", AreaCode::Markers, 20, 0, DataType::Word, 1),
            ("IW2", AreaCode::Inputs, 2, 0, DataType::Word, 1),
            ("Q0.1", AreaCode::Outputs, 0, 1, DataType::Bool, 1),
            ("EB3", AreaCode::Inputs, 3, 0, DataType::Byte, 1),
            ("AD4:REAL", AreaCode::Outputs, 4, 0, DataType::Real, 1),
            ("db1.dbd4:real", db1, 4, 0, DataType::Real, 1),
            ("DB1.DBB8:LREAL", db1, 8, 0, DataType::LReal, 1),
            ("DB1.DBD0:REAL[10]", db1, 0, 0, DataType::Real, 10),
            ("DB1.DBB0:WSTRING[8][3]", db1, 0, 0, DataType::WString(8), 3),
            ("DB1.DBB0:DT", db1, 0, 0, DataType::DateAndTime, 1),
            (
                "MX3.7:BOOL[12]",
                AreaCode::Markers,
                3,
                7,
                DataType::Bool,
                12,
            ),
            ("T5", AreaCode::Timers, 5, 0, DataType::Timer, 1),
            ("Z2", AreaCode::Counters, 2, 0, DataType::Counter, 1),
        ];
        for (text, area, start, bit, t, count) in cases {
            let got = a(text);
            assert_eq!(
                (got.area, got.start, got.bit, got.data_type, got.count),
                (area, start, bit, t, count),
                "{text}"
            );
        }
    }

    #[test]
    fn extents_cover_the_bytes_of_the_value() {
        assert_eq!(
            a("DB2.DBB10:STRING[20]").extent(),
            Extent {
                area: AreaCode::DataBlock(2),
                start: 10,
                len: 22
            }
        );
        assert_eq!(a("DB1.DBB0:WSTRING[8]").extent().len, 20);
        assert_eq!(
            a("M3.7:BOOL[2]").extent(),
            Extent {
                area: AreaCode::Markers,
                start: 3,
                len: 2
            }
        );
        assert_eq!(a("DB1.DBD0:REAL[10]").extent().len, 40);
        assert_eq!(
            a("C7").extent(),
            Extent {
                area: AreaCode::Counters,
                start: 7,
                len: 1
            }
        );
        assert_eq!(a("M3.7:BOOL[2]").element(1), (1, 0, 1));
    }

    #[test]
    fn errors_say_what_was_expected() {
        let cases = [
            ("DB1.DBQ4", "at 6: expected a width after DB1.DB: X (bit), B (byte), W (word) or D (double word), found 'Q'"),
            ("DB1.DBX0", "at 8: expected \".\" and a bit number 0..7 after byte 0, found the end"),
            ("DB1.DBX0.8", "at 9: 8 is out of range for a bit number 0..7 (at most 7)"),
            ("DB1.DBW2:REAL", "at 9: W reads 2 bytes: type must be WORD, INT or UINT, not REAL (use B<offset> for longer types)"),
            ("DB1.DBD2:FLOAT", "at 9: expected a type (BOOL, BYTE, CHAR, WORD, INT, DWORD, DINT, REAL, LREAL, SINT, USINT, UINT, UDINT, STRING[n], WSTRING[n] or DATE_AND_TIME), found \"FLOAT\""),
            ("DB0.DBW0", "at 3: data block numbers start at 1"),
            ("X10", "at 0: expected an area: DB<n>., M, I (E), Q (A), T or C (Z), found 'X'"),
            ("M10", "at 3: expected \".\" and a bit number 0..7 after byte 10, found the end"),
            ("MW10.1", "at 4: a bit number needs a bit address (X, or no width: M10.0), not width W"),
            ("DB1.DBB0:STRING[300]", "at 16: 300 is out of range for a STRING length (at most 254)"),
            ("T5:INT", "at 2: timers and counters take no type or bit (they read as milliseconds), found ':'"),
            ("DB1.DBX0.0:INT", "at 11: a bit address (X) holds BOOL, not INT"),
            ("DB1.DBD4:REAL x", "at 13: expected \":\" and a type, or the end, found ' '"),
            ("", "at 0: expected an area: DB<n>., M, I (E), Q (A), T or C (Z), found the end"),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.message, want, "{text}");
            assert!(e.to_string().starts_with(&format!("{text:?}: ")), "{e}");
        }
    }

    fn data_types() -> impl Strategy<Value = DataType> {
        prop_oneof![
            Just(DataType::Bool),
            Just(DataType::Byte),
            Just(DataType::Char),
            Just(DataType::Word),
            Just(DataType::Int),
            Just(DataType::DWord),
            Just(DataType::DInt),
            Just(DataType::Real),
            Just(DataType::LReal),
            Just(DataType::SInt),
            Just(DataType::USInt),
            Just(DataType::UInt),
            Just(DataType::UDInt),
            (1u8..=254).prop_map(DataType::String),
            (1u16..=300).prop_map(DataType::WString),
            Just(DataType::DateAndTime),
        ]
    }

    fn addresses() -> impl Strategy<Value = Address> {
        let area = prop_oneof![
            Just(AreaCode::Inputs),
            Just(AreaCode::Outputs),
            Just(AreaCode::Markers),
            (1u16..=u16::MAX).prop_map(AreaCode::DataBlock),
        ];
        (
            area,
            0u32..60000,
            0u8..8,
            data_types(),
            1u16..50,
            any::<bool>(),
        )
            .prop_map(|(area, start, bit, t, count, array)| Address {
                area,
                start,
                bit: if t == DataType::Bool { bit } else { 0 },
                data_type: t,
                count: if array { count } else { 1 },
                array,
            })
    }

    proptest! {
        #[test]
        fn the_canonical_spelling_parses_back(addr in addresses()) {
            prop_assert_eq!(parse(&addr.to_string()), Ok(addr));
        }

        #[test]
        fn any_text_is_an_address_or_an_error(text in "[A-Za-z0-9.:\\[\\]_ ]{0,24}") {
            match parse(&text) {
                Ok(addr) => {
                    let e = addr.extent();
                    prop_assert!(u64::from(e.start) + u64::from(e.len) <= u64::from(MAX_BYTE) + 1);
                }
                Err(e) => prop_assert!(e.at <= text.trim().len()),
            }
        }

        #[test]
        fn timers_and_counters_round_trip(n in any::<u16>(), timer in any::<bool>()) {
            let text = format!("{}{n}", if timer { 'T' } else { 'C' });
            let addr = parse(&text).expect("valid");
            prop_assert_eq!(addr.to_string(), text);
        }
    }
}
