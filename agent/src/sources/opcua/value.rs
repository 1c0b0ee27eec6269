//! One OPC UA `DataValue` as a [`Sample`]: the status code as quality (its code
//! and name kept as `rawQuality`), the variant as a JSON scalar, the source
//! timestamp (else the server's) as event time. Pure.

use crate::sources::Sample;
use linewatch_schemas::{Quality, Value};
use opcua::types::{DataValue, DateTime, StatusCode, Variant};

/// Good / Uncertain / Bad from the status code's severity bits (Part 4, 7.39);
/// the reserved severity `11` counts as Bad.
pub fn quality(code: StatusCode) -> Quality {
    match code.bits() >> 30 {
        0b00 => Quality::Ok,
        0b01 => Quality::Uncertain,
        _ => Quality::Bad,
    }
}

/// `0x80340000 BadNodeIdUnknown` (with info bits such as `, Overflow` when set).
/// Plain `Good` (0) has none: the quality says it all.
pub fn raw_quality(code: StatusCode) -> Option<String> {
    (code.bits() != 0).then(|| format!("0x{:08X} {code}", code.bits()))
}

/// Milliseconds since the Unix epoch; `None` for the null time and anything before 1970.
pub fn epoch_ms(t: &DateTime) -> Option<u64> {
    if t.is_null() {
        return None;
    }
    u64::try_from(t.as_chrono().timestamp_millis()).ok()
}

/// Why a value cannot become a data point's scalar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("OPC UA type {0} cannot be mapped to a data point value")]
    Unmappable(&'static str),
    #[error("array value ({0}[{1}]): a data point holds one scalar, set `index` on the tag to take one element")]
    Array(&'static str, usize),
    #[error("index {index} is past the end of the array ({len} elements)")]
    IndexOutOfRange { index: u32, len: usize },
    #[error("`index` is set but the value is a scalar ({0})")]
    NotAnArray(&'static str),
    #[error("non-finite float ({0})")]
    NonFinite(String),
    #[error("no value")]
    Empty,
}

impl MapError {
    /// The OPC UA status the error stands for, for `rawQuality`.
    pub fn status(&self) -> &'static str {
        match self {
            MapError::Unmappable(_) | MapError::Array(..) | MapError::NotAnArray(_) => {
                "BadTypeMismatch"
            }
            MapError::IndexOutOfRange { .. } => "BadIndexRangeNoData",
            MapError::NonFinite(_) => "BadOutOfRange",
            MapError::Empty => "BadNoData",
        }
    }
}

fn type_name(v: &Variant) -> &'static str {
    match v {
        Variant::Empty => "Null",
        Variant::Boolean(_) => "Boolean",
        Variant::SByte(_) => "SByte",
        Variant::Byte(_) => "Byte",
        Variant::Int16(_) => "Int16",
        Variant::UInt16(_) => "UInt16",
        Variant::Int32(_) => "Int32",
        Variant::UInt32(_) => "UInt32",
        Variant::Int64(_) => "Int64",
        Variant::UInt64(_) => "UInt64",
        Variant::Float(_) => "Float",
        Variant::Double(_) => "Double",
        Variant::String(_) => "String",
        Variant::DateTime(_) => "DateTime",
        Variant::Guid(_) => "Guid",
        Variant::StatusCode(_) => "StatusCode",
        Variant::ByteString(_) => "ByteString",
        Variant::XmlElement(_) => "XmlElement",
        Variant::QualifiedName(_) => "QualifiedName",
        Variant::LocalizedText(_) => "LocalizedText",
        Variant::NodeId(_) => "NodeId",
        Variant::ExpandedNodeId(_) => "ExpandedNodeId",
        Variant::ExtensionObject(_) => "ExtensionObject",
        Variant::Variant(_) => "Variant",
        Variant::DataValue(_) => "DataValue",
        Variant::DiagnosticInfo(_) => "DiagnosticInfo",
        Variant::Array(_) => "Array",
    }
}

fn float(f: f64) -> Result<Value, MapError> {
    if f.is_finite() {
        Ok(Value::Float(f))
    } else {
        Err(MapError::NonFinite(f.to_string()))
    }
}

/// A scalar variant as a JSON value; `index` picks one element of an array.
pub fn map_variant(v: &Variant, index: Option<u32>) -> Result<Value, MapError> {
    match (v, index) {
        (Variant::Array(a), Some(i)) => {
            let el = a.values.get(i as usize).ok_or(MapError::IndexOutOfRange {
                index: i,
                len: a.values.len(),
            })?;
            map_variant(el, None)
        }
        (Variant::Array(a), None) => Err(MapError::Array(
            a.values.first().map_or("Null", type_name),
            a.values.len(),
        )),
        (scalar, Some(_)) => Err(MapError::NotAnArray(type_name(scalar))),
        (scalar, None) => map_scalar(scalar),
    }
}

fn map_scalar(v: &Variant) -> Result<Value, MapError> {
    Ok(match v {
        Variant::Empty => return Err(MapError::Empty),
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(i) => Value::Int(i64::from(*i)),
        Variant::Byte(u) => Value::UInt(u64::from(*u)),
        Variant::Int16(i) => Value::Int(i64::from(*i)),
        Variant::UInt16(u) => Value::UInt(u64::from(*u)),
        Variant::Int32(i) => Value::Int(i64::from(*i)),
        Variant::UInt32(u) => Value::UInt(u64::from(*u)),
        Variant::Int64(i) => Value::Int(*i),
        Variant::UInt64(u) => Value::UInt(*u),
        Variant::Float(f) => float(f64::from(*f))?,
        Variant::Double(f) => float(*f)?,
        Variant::String(s) => Value::String(s.as_ref().to_owned()),
        // RFC 3339 in UTC: readable, sortable, and what JSON tools parse.
        Variant::DateTime(t) => Value::String(t.to_rfc3339()),
        Variant::Guid(g) => Value::String(g.to_string()),
        Variant::LocalizedText(t) => Value::String(t.text.as_ref().to_owned()),
        Variant::StatusCode(c) => Value::UInt(u64::from(c.bits())),
        other => return Err(MapError::Unmappable(type_name(other))),
    })
}

/// A data change or read result as a sample.
pub fn sample(dv: &DataValue, index: Option<u32>) -> Sample {
    let code = dv.status.unwrap_or(StatusCode::Good);
    let ts = dv
        .source_timestamp
        .as_ref()
        .and_then(epoch_ms)
        .or_else(|| dv.server_timestamp.as_ref().and_then(epoch_ms));
    let q = quality(code);
    let value = match &dv.value {
        Some(v) => map_variant(v, index),
        None => Err(MapError::Empty),
    };
    match (q, value) {
        // A Bad status carries no usable value (Part 4: the value is to be ignored).
        (Quality::Bad, _) => Sample {
            value: Value::Null,
            quality: Quality::Bad,
            raw_quality: raw_quality(code),
            source_timestamp: ts,
        },
        (q, Ok(value)) => Sample {
            value,
            quality: q,
            raw_quality: raw_quality(code),
            source_timestamp: ts,
        },
        (_, Err(e)) => Sample {
            value: Value::Null,
            quality: Quality::Bad,
            raw_quality: Some(format!("{}: {e}", e.status())),
            source_timestamp: ts,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{Array, LocalizedText, VariantScalarTypeId};
    use proptest::prelude::*;

    fn dv(value: Variant, status: StatusCode) -> DataValue {
        DataValue {
            value: Some(value),
            status: Some(status),
            ..DataValue::null()
        }
    }

    #[test]
    fn severity_decides_the_quality() {
        assert_eq!(quality(StatusCode::Good), Quality::Ok);
        assert_eq!(
            quality(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain
        );
        assert_eq!(quality(StatusCode::BadNodeIdUnknown), Quality::Bad);
        assert_eq!(quality(StatusCode::BadUserAccessDenied), Quality::Bad);
        assert_eq!(quality(StatusCode::from(0xC000_0000u32)), Quality::Bad);
    }

    #[test]
    fn raw_quality_keeps_code_and_name() {
        assert_eq!(raw_quality(StatusCode::Good), None);
        assert_eq!(
            raw_quality(StatusCode::BadNodeIdUnknown).as_deref(),
            Some("0x80340000 BadNodeIdUnknown")
        );
        assert_eq!(
            raw_quality(StatusCode::UncertainSensorNotAccurate).as_deref(),
            Some("0x40930000 UncertainSensorNotAccurate")
        );
    }

    #[test]
    fn scalars_map_to_json_values() {
        let cases = [
            (Variant::Boolean(true), Value::Bool(true)),
            (Variant::SByte(-3), Value::Int(-3)),
            (Variant::Byte(200), Value::UInt(200)),
            (Variant::Int16(-300), Value::Int(-300)),
            (Variant::UInt16(60000), Value::UInt(60000)),
            (Variant::Int32(-70000), Value::Int(-70000)),
            (Variant::UInt32(4_000_000_000), Value::UInt(4_000_000_000)),
            (Variant::Int64(i64::MIN), Value::Int(i64::MIN)),
            (Variant::UInt64(u64::MAX), Value::UInt(u64::MAX)),
            (Variant::Float(1.5), Value::Float(1.5)),
            (Variant::Double(-2.25), Value::Float(-2.25)),
            (Variant::from("héllo"), Value::String("héllo".into())),
            (
                Variant::from(LocalizedText::new("en", "Running")),
                Value::String("Running".into()),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(map_variant(&v, None), Ok(want), "{v:?}");
        }
        let t = DateTime::ymd_hms(2026, 12, 2, 20, 0, 1);
        assert_eq!(
            map_variant(&Variant::from(t), None),
            Ok(Value::String("2026-12-02T20:00:01.000Z".into()))
        );
    }

    #[test]
    fn arrays_need_an_index_and_odd_types_are_refused() {
        let arr = Variant::Array(Box::new(
            Array::new(
                VariantScalarTypeId::Double,
                vec![Variant::Double(1.0), Variant::Double(2.0)],
            )
            .expect("array"),
        ));
        let e = map_variant(&arr, None).expect_err("array without index");
        assert_eq!(e, MapError::Array("Double", 2));
        assert!(e.to_string().contains("set `index`"), "{e}");
        assert_eq!(map_variant(&arr, Some(1)), Ok(Value::Float(2.0)));
        assert_eq!(
            map_variant(&arr, Some(2)),
            Err(MapError::IndexOutOfRange { index: 2, len: 2 })
        );
        assert_eq!(
            map_variant(&Variant::Int32(1), Some(0)),
            Err(MapError::NotAnArray("Int32"))
        );
        assert_eq!(
            map_variant(
                &Variant::from(opcua::types::ByteString::from(vec![1u8])),
                None
            ),
            Err(MapError::Unmappable("ByteString"))
        );
        assert!(matches!(
            map_variant(&Variant::Double(f64::NAN), None),
            Err(MapError::NonFinite(_))
        ));
    }

    #[test]
    fn samples_carry_status_value_and_event_time() {
        let src = DateTime::ymd_hms(2026, 1, 1, 0, 0, 0);
        let srv = DateTime::ymd_hms(2026, 1, 1, 0, 0, 5);
        let src_ms = epoch_ms(&src).expect("after 1970");
        let mut d = dv(Variant::Double(4.5), StatusCode::Good);
        d.source_timestamp = Some(src);
        d.server_timestamp = Some(srv);
        let s = sample(&d, None);
        assert_eq!(
            (s.quality, s.value, s.raw_quality),
            (Quality::Ok, Value::Float(4.5), None)
        );
        assert_eq!(s.source_timestamp, Some(src_ms));
        assert_eq!(s.source_timestamp, Some(1_767_225_600_000));
        // No source timestamp: the server's.
        d.source_timestamp = None;
        assert_eq!(sample(&d, None).source_timestamp, Some(src_ms + 5000));
        // Neither: the agent's clock (the normaliser sets Ats).
        d.server_timestamp = Some(DateTime::null());
        assert_eq!(sample(&d, None).source_timestamp, None);

        let s = sample(
            &dv(Variant::Double(4.5), StatusCode::UncertainLastUsableValue),
            None,
        );
        assert_eq!(
            (s.quality, s.value),
            (Quality::Uncertain, Value::Float(4.5))
        );
        assert_eq!(
            s.raw_quality.as_deref(),
            Some("0x40900000 UncertainLastUsableValue")
        );

        let s = sample(
            &dv(Variant::Double(4.5), StatusCode::BadSensorFailure),
            None,
        );
        assert_eq!((s.quality, s.value), (Quality::Bad, Value::Null));
        assert_eq!(
            s.raw_quality.as_deref(),
            Some("0x808C0000 BadSensorFailure")
        );

        let s = sample(&DataValue::null(), None);
        assert_eq!(s.quality, Quality::Bad);
        assert_eq!(s.raw_quality.as_deref(), Some("BadNoData: no value"));
    }

    proptest! {
        #[test]
        fn quality_follows_the_top_two_bits(bits in any::<u32>()) {
            let q = quality(StatusCode::from(bits));
            let want = match bits >> 30 { 0 => Quality::Ok, 1 => Quality::Uncertain, _ => Quality::Bad };
            prop_assert_eq!(q, want);
            prop_assert_eq!(raw_quality(StatusCode::from(bits)).is_none(), bits == 0);
        }

        #[test]
        fn a_value_is_null_exactly_when_bad(bits in any::<u32>(), x in any::<f64>()) {
            let s = sample(&dv(Variant::Double(x), StatusCode::from(bits)), None);
            prop_assert_eq!(s.value.is_null(), s.quality == Quality::Bad);
            if s.quality != Quality::Ok {
                prop_assert!(s.raw_quality.is_some());
            }
        }

        #[test]
        fn integers_keep_their_value(i in any::<i64>(), u in any::<u64>()) {
            prop_assert_eq!(map_variant(&Variant::Int64(i), None), Ok(Value::Int(i)));
            prop_assert_eq!(map_variant(&Variant::UInt64(u), None), Ok(Value::UInt(u)));
        }
    }
}
