//! Registers and bits to values (pure).
//!
//! A register arrives as a 16-bit word (the wire carries it high byte first).
//! `byte_order` says whether the device put the value's bytes into each word
//! high-first (`big`) or swapped (`little`); `word_order` says whether the most
//! significant word comes first (`big`) or last (`little`). For an f32 whose
//! bytes are A B C D (A most significant): big/big = ABCD, big/little = CDAB,
//! little/big = BADC, little/little = DCBA.

use super::config::{ByteOrder, DataType, ModbusSourceConfig, ModbusTag, WordOrder};
use crate::sources::Sample;
use linewatch_schemas::Value;

/// How to turn one tag's words into a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    pub data_type: DataType,
    pub byte_order: ByteOrder,
    pub word_order: WordOrder,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
}

/// A value as the PLC holds it, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Bool(bool),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Raw {
    pub fn data_type(&self) -> DataType {
        match self {
            Raw::Bool(_) => DataType::Bool,
            Raw::U16(_) => DataType::U16,
            Raw::I16(_) => DataType::I16,
            Raw::U32(_) => DataType::U32,
            Raw::I32(_) => DataType::I32,
            Raw::F32(_) => DataType::F32,
            Raw::U64(_) => DataType::U64,
            Raw::I64(_) => DataType::I64,
            Raw::F64(_) => DataType::F64,
        }
    }

    /// Big-endian bytes of the value (A B C D ...).
    fn be_bytes(&self) -> Vec<u8> {
        match *self {
            Raw::Bool(b) => u16::from(b).to_be_bytes().to_vec(),
            Raw::U16(v) => v.to_be_bytes().to_vec(),
            Raw::I16(v) => v.to_be_bytes().to_vec(),
            Raw::U32(v) => v.to_be_bytes().to_vec(),
            Raw::I32(v) => v.to_be_bytes().to_vec(),
            Raw::F32(v) => v.to_be_bytes().to_vec(),
            Raw::U64(v) => v.to_be_bytes().to_vec(),
            Raw::I64(v) => v.to_be_bytes().to_vec(),
            Raw::F64(v) => v.to_be_bytes().to_vec(),
        }
    }
}

impl Codec {
    /// The tag's codec, with the source's orders where the tag sets none.
    pub fn for_tag(tag: &ModbusTag, source: &ModbusSourceConfig) -> Codec {
        Codec {
            data_type: tag.data_type,
            byte_order: tag.byte_order.unwrap_or(source.byte_order),
            word_order: tag.word_order.unwrap_or(source.word_order),
            scale: tag.scale,
            offset: tag.offset,
        }
    }

    /// Decode a value from exactly `data_type.registers()` words (a bool: any non-zero word is true).
    pub fn decode_registers(&self, words: &[u16]) -> Sample {
        match raw_from_registers(self.data_type, self.byte_order, self.word_order, words) {
            Some(raw) => self.value_of(raw),
            None => Sample::bad(format!(
                "{:?} needs {} register(s), got {}",
                self.data_type,
                self.data_type.registers(),
                words.len()
            )),
        }
    }

    /// Decode a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Sample {
        Sample::ok(Value::Bool(bit))
    }

    /// Apply scale and offset. Without them (or with scale 1, offset 0) integers stay
    /// integers; with them the value is `raw * scale + offset` as a float.
    pub fn value_of(&self, raw: Raw) -> Sample {
        let scale = self.scale.unwrap_or(1.0);
        let offset = self.offset.unwrap_or(0.0);
        let transformed = scale != 1.0 || offset != 0.0;
        let as_float = match raw {
            Raw::Bool(b) => return Sample::ok(Value::Bool(b)),
            Raw::U16(v) if !transformed => return Sample::ok(Value::Int(i64::from(v))),
            Raw::I16(v) if !transformed => return Sample::ok(Value::Int(i64::from(v))),
            Raw::U32(v) if !transformed => return Sample::ok(Value::Int(i64::from(v))),
            Raw::I32(v) if !transformed => return Sample::ok(Value::Int(i64::from(v))),
            Raw::U64(v) if !transformed => return Sample::ok(Value::from(v)),
            Raw::I64(v) if !transformed => return Sample::ok(Value::Int(v)),
            Raw::U16(v) => f64::from(v),
            Raw::I16(v) => f64::from(v),
            Raw::U32(v) => f64::from(v),
            Raw::I32(v) => f64::from(v),
            Raw::U64(v) => v as f64,
            Raw::I64(v) => v as f64,
            Raw::F32(v) => f32_to_f64(v),
            Raw::F64(v) => v,
        };
        if !as_float.is_finite() {
            return Sample::bad(format!("non-finite float ({})", describe(as_float)));
        }
        if !transformed {
            return Sample::ok(Value::Float(as_float));
        }
        let scaled = as_float * scale + offset;
        if !scaled.is_finite() {
            return Sample::bad(format!(
                "non-finite after scale and offset ({})",
                describe(scaled)
            ));
        }
        Sample::ok(Value::Float(tidy(scaled)))
    }
}

/// The raw value in `words` (None when there are too few).
pub fn raw_from_registers(
    data_type: DataType,
    byte_order: ByteOrder,
    word_order: WordOrder,
    words: &[u16],
) -> Option<Raw> {
    let n = usize::from(data_type.registers());
    let words = words.get(..n)?;
    if data_type == DataType::Bool {
        return Some(Raw::Bool(words[0] != 0));
    }
    // Bring the words into big/big order, then read the bytes big-endian.
    let mut bytes = [0u8; 8];
    for (i, w) in words.iter().enumerate() {
        let word = match word_order {
            WordOrder::Big => *w,
            WordOrder::Little => words[n - 1 - i],
        };
        let word = match byte_order {
            ByteOrder::Big => word,
            ByteOrder::Little => word.swap_bytes(),
        };
        bytes[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
    }
    let b2 = [bytes[0], bytes[1]];
    let b4 = [bytes[0], bytes[1], bytes[2], bytes[3]];
    Some(match data_type {
        DataType::Bool => Raw::Bool(words[0] != 0),
        DataType::U16 => Raw::U16(u16::from_be_bytes(b2)),
        DataType::I16 => Raw::I16(i16::from_be_bytes(b2)),
        DataType::U32 => Raw::U32(u32::from_be_bytes(b4)),
        DataType::I32 => Raw::I32(i32::from_be_bytes(b4)),
        DataType::F32 => Raw::F32(f32::from_be_bytes(b4)),
        DataType::U64 => Raw::U64(u64::from_be_bytes(bytes)),
        DataType::I64 => Raw::I64(i64::from_be_bytes(bytes)),
        DataType::F64 => Raw::F64(f64::from_be_bytes(bytes)),
    })
}

/// The registers a device with these orders holds for `raw` (the inverse of
/// [`raw_from_registers`]; simulators and tests use it).
pub fn encode(raw: Raw, byte_order: ByteOrder, word_order: WordOrder) -> Vec<u16> {
    let bytes = raw.be_bytes();
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c[1]]);
            match byte_order {
                ByteOrder::Big => w,
                ByteOrder::Little => w.swap_bytes(),
            }
        })
        .collect();
    if word_order == WordOrder::Little {
        words.reverse();
    }
    words
}

/// f32 → f64 through its shortest decimal form, so 123.456f32 reads 123.456 and
/// not 123.45600128173828; falls back to the exact widening if that would not
/// round-trip.
fn f32_to_f64(v: f32) -> f64 {
    let exact = f64::from(v);
    match v.to_string().parse::<f64>() {
        Ok(d) if d as f32 == v => d,
        _ => exact,
    }
}

/// Round a scaled value to 15 significant digits (what f64 holds reliably), so
/// 3 × 0.1 reads 0.3 and not 0.30000000000000004.
fn tidy(v: f64) -> f64 {
    format!("{v:.14e}").parse::<f64>().unwrap_or(v)
}

fn describe(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+inf"
    } else {
        "-inf"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linewatch_schemas::Quality;
    use proptest::prelude::*;

    fn codec(data_type: DataType, byte_order: ByteOrder, word_order: WordOrder) -> Codec {
        Codec {
            data_type,
            byte_order,
            word_order,
            scale: None,
            offset: None,
        }
    }

    const ORDERS: [(ByteOrder, WordOrder, &str); 4] = [
        (ByteOrder::Big, WordOrder::Big, "ABCD"),
        (ByteOrder::Big, WordOrder::Little, "CDAB"),
        (ByteOrder::Little, WordOrder::Big, "BADC"),
        (ByteOrder::Little, WordOrder::Little, "DCBA"),
    ];

    #[test]
    fn f32_123_456_in_all_four_orders() {
        // 123.456f32 = 0x42F6E979: A=42 B=F6 C=E9 D=79.
        let patterns: [[u16; 2]; 4] = [
            [0x42F6, 0xE979], // ABCD
            [0xE979, 0x42F6], // CDAB
            [0xF642, 0x79E9], // BADC
            [0x79E9, 0xF642], // DCBA
        ];
        for ((bo, wo, name), words) in ORDERS.iter().zip(patterns) {
            let d = codec(DataType::F32, *bo, *wo).decode_registers(&words);
            assert_eq!(d, Sample::ok(Value::Float(123.456)), "{name}");
            assert_eq!(
                encode(Raw::F32(123.456), *bo, *wo),
                words.to_vec(),
                "{name}"
            );
        }
    }

    #[test]
    fn integers_of_every_width() {
        let big = (ByteOrder::Big, WordOrder::Big);
        let cases: [(DataType, &[u16], Value); 8] = [
            (DataType::U16, &[0xFFFE], Value::Int(65534)),
            (DataType::I16, &[0xFFFE], Value::Int(-2)),
            (DataType::U32, &[0x0001, 0x0002], Value::Int(65538)),
            (DataType::I32, &[0xFFFF, 0xFFFF], Value::Int(-1)),
            (
                DataType::U64,
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF],
                Value::UInt(u64::MAX),
            ),
            (DataType::U64, &[0, 0, 0x0001, 0x0000], Value::Int(65536)),
            (DataType::I64, &[0x8000, 0, 0, 0], Value::Int(i64::MIN)),
            (
                DataType::F64,
                &[0x4028, 0xAE14, 0x7AE1, 0x47AE],
                Value::Float(12.34),
            ),
        ];
        for (dt, words, want) in cases {
            let d = codec(dt, big.0, big.1).decode_registers(words);
            assert_eq!(d, Sample::ok(want), "{dt:?} {words:x?}");
        }
    }

    #[test]
    fn word_order_little_reverses_registers_of_64_bit_values() {
        let d =
            codec(DataType::U64, ByteOrder::Big, WordOrder::Little).decode_registers(&[4, 3, 2, 1]);
        assert_eq!(d.value, Value::Int(0x0001_0002_0003_0004));
        let d =
            codec(DataType::U16, ByteOrder::Little, WordOrder::Little).decode_registers(&[0x3412]);
        assert_eq!(d.value, Value::Int(0x1234));
    }

    #[test]
    fn a_bool_in_a_register_is_true_when_non_zero() {
        let c = codec(DataType::Bool, ByteOrder::Big, WordOrder::Big);
        assert_eq!(c.decode_registers(&[0]).value, Value::Bool(false));
        assert_eq!(c.decode_registers(&[0x0100]).value, Value::Bool(true));
        assert_eq!(c.decode_bit(true).value, Value::Bool(true));
    }

    #[test]
    fn scale_and_offset_make_a_float() {
        let mut c = codec(DataType::I16, ByteOrder::Big, WordOrder::Big);
        c.scale = Some(0.1);
        assert_eq!(c.decode_registers(&[3]).value, Value::Float(0.3));
        assert_eq!(c.decode_registers(&[0xFF9C]).value, Value::Float(-10.0));
        c.offset = Some(-273.15);
        assert_eq!(c.decode_registers(&[2981]).value, Value::Float(24.95));
        // Identity scale keeps the integer.
        c.scale = Some(1.0);
        c.offset = Some(0.0);
        assert_eq!(c.decode_registers(&[7]).value, Value::Int(7));
    }

    #[test]
    fn non_finite_floats_are_bad() {
        let c = codec(DataType::F32, ByteOrder::Big, WordOrder::Big);
        let nan = c.decode_registers(&encode(Raw::F32(f32::NAN), ByteOrder::Big, WordOrder::Big));
        assert_eq!(nan.quality, Quality::Bad);
        assert_eq!(nan.value, Value::Null);
        assert_eq!(nan.raw_quality.as_deref(), Some("non-finite float (NaN)"));
        let inf = c.decode_registers(&[0xFF80, 0x0000]);
        assert_eq!(inf.raw_quality.as_deref(), Some("non-finite float (-inf)"));
        // Finite, but scaling overflows.
        let mut c = codec(DataType::F64, ByteOrder::Big, WordOrder::Big);
        c.scale = Some(1e300);
        let over = c.decode_registers(&encode(Raw::F64(1e300), ByteOrder::Big, WordOrder::Big));
        assert_eq!(over.quality, Quality::Bad);
        assert_eq!(
            over.raw_quality.as_deref(),
            Some("non-finite after scale and offset (+inf)")
        );
    }

    #[test]
    fn too_few_registers_is_bad_not_a_panic() {
        let d = codec(DataType::F64, ByteOrder::Big, WordOrder::Big).decode_registers(&[1, 2]);
        assert_eq!(d.quality, Quality::Bad);
        assert_eq!(
            d.raw_quality.as_deref(),
            Some("F64 needs 4 register(s), got 2")
        );
    }

    fn byte_order() -> impl Strategy<Value = ByteOrder> {
        prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)]
    }
    fn word_order() -> impl Strategy<Value = WordOrder> {
        prop_oneof![Just(WordOrder::Big), Just(WordOrder::Little)]
    }
    fn raw() -> impl Strategy<Value = Raw> {
        prop_oneof![
            any::<bool>().prop_map(Raw::Bool),
            any::<u16>().prop_map(Raw::U16),
            any::<i16>().prop_map(Raw::I16),
            any::<u32>().prop_map(Raw::U32),
            any::<i32>().prop_map(Raw::I32),
            any::<f32>().prop_map(Raw::F32),
            any::<u64>().prop_map(Raw::U64),
            any::<i64>().prop_map(Raw::I64),
            any::<f64>().prop_map(Raw::F64),
        ]
    }

    fn same(a: Raw, b: Raw) -> bool {
        match (a, b) {
            (Raw::F32(x), Raw::F32(y)) => x.to_bits() == y.to_bits(),
            (Raw::F64(x), Raw::F64(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn registers_round_trip(raw in raw(), bo in byte_order(), wo in word_order()) {
            let words = encode(raw, bo, wo);
            prop_assert_eq!(words.len(), usize::from(raw.data_type().registers()));
            let back = raw_from_registers(raw.data_type(), bo, wo, &words);
            prop_assert!(back.is_some_and(|b| same(b, raw)), "{raw:?} -> {words:x?} -> {back:?}");
        }

        #[test]
        fn decoded_values_round_trip(raw in raw(), bo in byte_order(), wo in word_order()) {
            let c = codec(raw.data_type(), bo, wo);
            let d = c.decode_registers(&encode(raw, bo, wo));
            let ok = d.quality == Quality::Ok;
            match (raw, &d.value) {
                (Raw::Bool(b), Value::Bool(v)) => prop_assert_eq!(b, *v),
                (Raw::U16(x), Value::Int(v)) => prop_assert_eq!(i64::from(x), *v),
                (Raw::I16(x), Value::Int(v)) => prop_assert_eq!(i64::from(x), *v),
                (Raw::U32(x), Value::Int(v)) => prop_assert_eq!(i64::from(x), *v),
                (Raw::I32(x), Value::Int(v)) => prop_assert_eq!(i64::from(x), *v),
                (Raw::I64(x), Value::Int(v)) => prop_assert_eq!(x, *v),
                (Raw::U64(x), Value::Int(v)) => prop_assert_eq!(i128::from(x), i128::from(*v)),
                (Raw::U64(x), Value::UInt(v)) => prop_assert!(x == *v && x > i64::MAX as u64),
                (Raw::F32(x), Value::Float(v)) => prop_assert_eq!((*v as f32).to_bits(), x.to_bits()),
                (Raw::F64(x), Value::Float(v)) => prop_assert_eq!(v.to_bits(), x.to_bits()),
                (Raw::F32(x), Value::Null) => prop_assert!(!x.is_finite() && !ok),
                (Raw::F64(x), Value::Null) => prop_assert!(!x.is_finite() && !ok),
                (raw, v) => prop_assert!(false, "{raw:?} decoded to {v:?}"),
            }
            prop_assert_eq!(ok, !d.value.is_null());
        }

        #[test]
        fn scaled_values_are_finite_floats_or_bad(x in any::<i32>(), scale in -1e6f64..1e6, offset in -1e6f64..1e6) {
            prop_assume!(scale != 0.0);
            let mut c = codec(DataType::I32, ByteOrder::Big, WordOrder::Big);
            c.scale = Some(scale);
            c.offset = Some(offset);
            let d = c.decode_registers(&encode(Raw::I32(x), ByteOrder::Big, WordOrder::Big));
            let want = f64::from(x) * scale + offset;
            match d.value {
                Value::Float(v) => prop_assert!((v - want).abs() <= want.abs() * 1e-14 + 1e-300),
                other if scale == 1.0 && offset == 0.0 => prop_assert_eq!(other, Value::Int(i64::from(x))),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
