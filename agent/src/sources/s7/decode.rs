//! S7 bytes to values (big-endian, as the CPU stores them). Pure.
//!
//! Integers up to 32 bits become integers, REAL and LREAL floats (non-finite ones
//! are `Bad`: JSON has no NaN), CHAR/STRING/WSTRING strings, DATE_AND_TIME an
//! ISO 8601 local time without a zone (`2026-12-02T20:30:00.123`), a timer its
//! S5TIME in milliseconds, a counter its 3 BCD digits.

use super::address::DataType;
use crate::sources::Sample;
use linewatch_schemas::Value;

/// The value of type `t` in `bytes` (exactly its size; for a BOOL the byte holding `bit`).
pub fn decode(t: DataType, bytes: &[u8], bit: u8) -> Sample {
    let need = (t.size() as usize).max(1);
    if bytes.len() < need {
        return Sample::bad(format!("expected {need} bytes, got {}", bytes.len()));
    }
    let b = &bytes[..need];
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let int = |v: i64| Sample::ok(Value::Int(v));
    match t {
        DataType::Bool => Sample::ok(Value::Bool((b[0] >> (bit & 7)) & 1 == 1)),
        DataType::Byte | DataType::USInt => int(b[0].into()),
        DataType::SInt => int((b[0] as i8).into()),
        DataType::Char => Sample::ok(Value::String(char::from(b[0]).to_string())),
        DataType::Word | DataType::UInt => int(u16_at(0).into()),
        DataType::Int => int((u16_at(0) as i16).into()),
        DataType::DWord | DataType::UDInt => int(u32_at(0).into()),
        DataType::DInt => int((u32_at(0) as i32).into()),
        DataType::Real => float(f32_to_f64(f32::from_bits(u32_at(0)))),
        DataType::LReal => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            float(f64::from_be_bytes(a))
        }
        DataType::String(n) => {
            let (max, len) = (b[0], b[1]);
            if len > max || len > n {
                return Sample::bad(format!(
                    "STRING current length {len} exceeds its maximum (header {max}, declared {n})"
                ));
            }
            // S7 STRING is one byte per character: Latin-1 maps byte to code point.
            let text: String = b[2..2 + usize::from(len)]
                .iter()
                .map(|&c| char::from(c))
                .collect();
            Sample::ok(Value::String(text))
        }
        DataType::WString(n) => {
            let (max, len) = (u16_at(0), u16_at(2));
            if len > max || len > n {
                return Sample::bad(format!(
                    "WSTRING current length {len} exceeds its maximum (header {max}, declared {n})"
                ));
            }
            let units: Vec<u16> = (0..usize::from(len)).map(|i| u16_at(4 + 2 * i)).collect();
            match String::from_utf16(&units) {
                Ok(s) => Sample::ok(Value::String(s)),
                Err(_) => Sample::bad("WSTRING is not valid UTF-16"),
            }
        }
        DataType::DateAndTime => date_and_time(b),
        DataType::Timer => {
            let w = u16_at(0);
            match bcd3(w) {
                Some(v) => {
                    let base = [10, 100, 1000, 10_000][usize::from((w >> 12) & 3)];
                    int(i64::from(v) * base)
                }
                None => Sample::bad(format!("S5TIME {w:#06x} is not BCD")),
            }
        }
        DataType::Counter => match bcd3(u16_at(0)) {
            Some(v) => int(v.into()),
            None => Sample::bad(format!("counter {:#06x} is not BCD", u16_at(0))),
        },
    }
}

fn float(v: f64) -> Sample {
    if v.is_finite() {
        Sample::ok(Value::Float(v))
    } else {
        Sample::bad(format!("non-finite float ({v})"))
    }
}

/// 21.5f32 as 21.5, not 21.5000000001: the shortest decimal that reads back the
/// same f32, unless that does not round-trip.
fn f32_to_f64(v: f32) -> f64 {
    match v.to_string().parse::<f64>() {
        Ok(d) if d as f32 == v => d,
        _ => f64::from(v),
    }
}

/// Two BCD digits.
fn bcd(b: u8) -> Option<u32> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi <= 9 && lo <= 9).then(|| u32::from(hi) * 10 + u32::from(lo))
}

/// The low three BCD digits of a word.
fn bcd3(w: u16) -> Option<u32> {
    let d = [(w >> 8) & 0xF, (w >> 4) & 0xF, w & 0xF];
    d.iter()
        .all(|&x| x <= 9)
        .then(|| d.iter().fold(0, |acc, &x| acc * 10 + u32::from(x)))
}

fn date_and_time(b: &[u8]) -> Sample {
    let bad = || Sample::bad(format!("invalid DATE_AND_TIME bytes {}", hex(b)));
    let fields: Option<Vec<u32>> = b[..6].iter().map(|&x| bcd(x)).collect();
    let (Some(f), Some(ms_hi), Some(ms_lo)) = (fields, bcd(b[6]), bcd3(u16::from(b[7] >> 4)))
    else {
        return bad();
    };
    // Years 90..99 are 1990..1999, 00..89 are 2000..2089.
    let year = if f[0] >= 90 { 1900 + f[0] } else { 2000 + f[0] };
    let (month, day, hour, minute, second) = (f[1], f[2], f[3], f[4], f[5]);
    let ms = ms_hi * 10 + ms_lo;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return bad();
    }
    Sample::ok(Value::String(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}"
    )))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use linewatch_schemas::Quality;
    use proptest::prelude::*;

    fn v(t: DataType, bytes: &[u8]) -> Value {
        let s = decode(t, bytes, 0);
        assert_eq!(
            s.quality,
            Quality::Ok,
            "{t:?} {bytes:?}: {:?}",
            s.raw_quality
        );
        s.value
    }

    #[test]
    fn scalars_decode_big_endian() {
        assert_eq!(
            v(DataType::Real, &21.5f32.to_be_bytes()),
            Value::Float(21.5)
        );
        assert_eq!(v(DataType::Real, &0.1f32.to_be_bytes()), Value::Float(0.1));
        assert_eq!(
            v(DataType::LReal, &(-1.25e300f64).to_be_bytes()),
            Value::Float(-1.25e300)
        );
        assert_eq!(v(DataType::Int, &[0xFF, 0x9C]), Value::Int(-100));
        assert_eq!(v(DataType::Word, &[0xFF, 0x9C]), Value::Int(65436));
        assert_eq!(v(DataType::DInt, &[0xFF, 0xFF, 0xFF, 0xFE]), Value::Int(-2));
        assert_eq!(
            v(DataType::DWord, &[0xFF, 0xFF, 0xFF, 0xFE]),
            Value::Int(4294967294)
        );
        assert_eq!(v(DataType::SInt, &[0x80]), Value::Int(-128));
        assert_eq!(v(DataType::Char, b"A"), Value::String("A".into()));
        assert_eq!(
            decode(DataType::Bool, &[0b0000_0100], 2).value,
            Value::Bool(true)
        );
        assert_eq!(
            decode(DataType::Bool, &[0b0000_0100], 1).value,
            Value::Bool(false)
        );
    }

    #[test]
    fn strings_honour_their_headers() {
        assert_eq!(
            v(DataType::String(6), b"\x06\x03ab\xe9\0\0\0"),
            Value::String("abé".into())
        );
        assert_eq!(
            v(DataType::String(4), &[0; 6]),
            Value::String(String::new())
        );
        let too_long = decode(DataType::String(4), b"\x04\x05abcd", 0);
        assert_eq!(too_long.quality, Quality::Bad);
        let w = [0, 4, 0, 2, 0x00, 0x48, 0x20, 0xAC, 0, 0, 0, 0];
        assert_eq!(v(DataType::WString(4), &w), Value::String("H€".into()));
        let lone_surrogate = [0, 1, 0, 1, 0xD8, 0x00];
        assert_eq!(
            decode(DataType::WString(1), &lone_surrogate, 0).quality,
            Quality::Bad
        );
    }

    #[test]
    fn date_and_time_timers_and_counters() {
        let dt = [0x26, 0x12, 0x02, 0x20, 0x30, 0x05, 0x12, 0x34];
        assert_eq!(
            v(DataType::DateAndTime, &dt),
            Value::String("2026-12-02T20:30:05.123".into())
        );
        let dt = [0x99, 0x01, 0x31, 0x00, 0x00, 0x00, 0x00, 0x07];
        assert_eq!(
            v(DataType::DateAndTime, &dt),
            Value::String("1999-01-31T00:00:00.000".into())
        );
        let bad = [0x26, 0x13, 0x02, 0x20, 0x30, 0x05, 0x12, 0x34];
        assert_eq!(decode(DataType::DateAndTime, &bad, 0).quality, Quality::Bad);
        // S5TIME 2 (time base 1 s) 123 → 123 s.
        assert_eq!(v(DataType::Timer, &[0x21, 0x23]), Value::Int(123_000));
        assert_eq!(v(DataType::Counter, &[0x09, 0x99]), Value::Int(999));
        assert_eq!(
            decode(DataType::Counter, &[0x00, 0x1A], 0).quality,
            Quality::Bad
        );
    }

    #[test]
    fn non_finite_and_short_are_bad() {
        assert_eq!(
            decode(DataType::Real, &f32::NAN.to_be_bytes(), 0).quality,
            Quality::Bad
        );
        assert_eq!(decode(DataType::LReal, &[0; 4], 0).quality, Quality::Bad);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_value_or_bad(bytes in proptest::collection::vec(any::<u8>(), 0..40), bit in 0u8..8) {
            for t in [DataType::Bool, DataType::Byte, DataType::Char, DataType::Word, DataType::Int, DataType::DWord,
                      DataType::DInt, DataType::Real, DataType::LReal, DataType::String(10), DataType::WString(8),
                      DataType::DateAndTime, DataType::Timer, DataType::Counter] {
                let s = decode(t, &bytes, bit);
                prop_assert_eq!(s.value.is_null(), s.quality == Quality::Bad);
            }
        }

        #[test]
        fn integers_and_reals_round_trip(i in any::<i32>(), f in any::<f32>(), d in any::<f64>()) {
            prop_assert_eq!(v(DataType::DInt, &i.to_be_bytes()), Value::Int(i.into()));
            prop_assert_eq!(v(DataType::Int, &(i as i16).to_be_bytes()), Value::Int((i as i16).into()));
            if f.is_finite() {
                match v(DataType::Real, &f.to_be_bytes()) {
                    Value::Float(x) => prop_assert_eq!((x as f32).to_bits(), f.to_bits()),
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            if d.is_finite() {
                prop_assert_eq!(v(DataType::LReal, &d.to_be_bytes()), Value::Float(d));
            }
        }
    }
}
