//! Data point v1 (see `datapoint.v1.schema.json`).

use crate::{Flag, Flags, Value};
use serde::{Deserialize, Serialize};

pub const DATAPOINT_VERSION: u32 = 1;
/// Tag of the agent's per-source heartbeat (`Wmk`) points.
pub const HEARTBEAT_TAG: &str = "$heartbeat";
/// Kinesis partition keys are at most 256 characters and `equipmentId` is the default key.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quality {
    Ok,
    Uncertain,
    Bad,
}

/// One reading of one tag of one piece of equipment.
///
/// Unknown fields are ignored when reading (forward compatibility), never rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPoint {
    pub version: u32,
    /// Event time, ms since the Unix epoch.
    pub timestamp: u64,
    pub equipment_id: String,
    pub tag: String,
    pub value: Value,
    pub quality: Quality,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Strictly increasing per (gatewayId, sourceId); never reused after a restart.
    pub sequence_number: u64,
    #[serde(default, skip_serializing_if = "Flags::is_empty")]
    pub flags: Flags,
    /// The agent's clock when it made the record, ms since the Unix epoch.
    pub created_at: u64,
    pub source_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The protocol's own status (Modbus exception, OPC UA StatusCode, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_quality: Option<String>,
    /// On a heartbeat only: the sender still has unsent points at or after this
    /// event time (a backlog draining behind live data), ms since the Unix epoch.
    /// A reader ordering by event time must not pass it for this sender yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_watermark: Option<u64>,
}

/// Why a data point was refused. `field` is a JSON path such as `meta.flags[0]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataPointError {
    #[error("invalid data point: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("invalid data point: not JSON: {0}")]
    Syntax(String),
}

impl DataPointError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        DataPointError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The field the error is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DataPointError::Invalid { field, .. } => Some(field),
            DataPointError::Syntax(_) => None,
        }
    }
}

impl DataPoint {
    /// Parse and validate one JSON data point.
    ///
    /// The fast path is a plain serde parse; only a failure is parsed again with
    /// path tracking, so the error can name the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<DataPoint, DataPointError> {
        match serde_json::from_slice::<DataPoint>(bytes) {
            Ok(p) => {
                p.validate()?;
                Ok(p)
            }
            Err(_) => Err(Self::explain(bytes)),
        }
    }

    fn explain(bytes: &[u8]) -> DataPointError {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, DataPoint>(de) {
            Ok(_) => DataPointError::Syntax("parse failed".into()),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    return DataPointError::Syntax(inner.to_string());
                }
                // serde reports a missing field at its parent; name the field itself.
                let msg = inner.to_string();
                let field = match (missing_field(&msg), path.as_str()) {
                    (Some(name), "." | "") => name.to_owned(),
                    (Some(name), parent) => format!("{parent}.{name}"),
                    (None, p) => p.to_owned(),
                };
                DataPointError::invalid(&field, strip_position(&msg))
            }
        }
    }

    /// Rules JSON Schema cannot express on its own type (or that need the whole point).
    pub fn validate(&self) -> Result<(), DataPointError> {
        if self.version != DATAPOINT_VERSION {
            return Err(DataPointError::invalid(
                "version",
                format!("unsupported version {}, expected 1", self.version),
            ));
        }
        check_id("equipmentId", &self.equipment_id)?;
        check_id("tag", &self.tag)?;
        check_id("meta.sourceId", &self.meta.source_id)?;
        if let Some(g) = &self.meta.gateway_id {
            check_id("meta.gatewayId", g)?;
        }
        if let Value::Float(f) = self.value {
            if !f.is_finite() {
                return Err(DataPointError::invalid("value", "must be a finite number"));
            }
        }
        if let Some(low) = self.meta.low_watermark {
            if !self.is_heartbeat() {
                return Err(DataPointError::invalid(
                    "meta.lowWatermark",
                    "only a heartbeat (Wmk) may declare a low watermark",
                ));
            }
            if low > self.timestamp {
                return Err(DataPointError::invalid(
                    "meta.lowWatermark",
                    "must not be later than the heartbeat's timestamp",
                ));
            }
        }
        if self.value.is_null() && self.quality != Quality::Bad && !self.is_heartbeat() {
            return Err(DataPointError::invalid(
                "value",
                "null is only allowed with quality Bad or on a heartbeat (Wmk)",
            ));
        }
        Ok(())
    }

    pub fn is_heartbeat(&self) -> bool {
        self.meta.flags.contains(Flag::Wmk)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising our own type only fails on a non-finite float, which
        // `validate` refuses; producers call `validate` first.
        serde_json::to_vec(self).expect("a validated data point serialises")
    }
}

fn check_id(field: &str, v: &str) -> Result<(), DataPointError> {
    if v.is_empty() {
        return Err(DataPointError::invalid(field, "must not be empty"));
    }
    if v.chars().count() > MAX_ID_LEN {
        return Err(DataPointError::invalid(
            field,
            format!("longer than {MAX_ID_LEN} characters"),
        ));
    }
    Ok(())
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"{"version":1,"timestamp":1732180000123,"equipmentId":"84068f2f-3f39-4b9c-a995-d2a84d878689",
 "tag":"water_temperature","value":13.45,"quality":"Ok",
 "meta":{"sequenceNumber":123,"flags":["Fst"],"createdAt":1732180000150,"sourceId":"filling_machine"}}"#
    }

    #[test]
    fn parses_the_schema_example() {
        let p = DataPoint::from_json(sample().as_bytes()).unwrap();
        assert_eq!(p.timestamp, 1_732_180_000_123);
        assert_eq!(p.value, Value::Float(13.45));
        assert!(p.meta.flags.contains(Flag::Fst));
        assert!(!p.meta.flags.contains(Flag::Ats));
        let again = DataPoint::from_json(&p.to_json()).unwrap();
        assert_eq!(p, again);
    }

    #[test]
    fn error_names_nested_field() {
        let bad = sample().replace(r#"["Fst"]"#, r#"["Fst","Nope"]"#);
        let e = DataPoint::from_json(bad.as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("meta.flags[1]"), "{e}");
        let bad = sample().replace(r#""sourceId":"filling_machine""#, r#""x":1"#);
        let e = DataPoint::from_json(bad.as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("meta.sourceId"), "{e}");
    }

    #[test]
    fn a_later_versions_flags_are_skipped_and_garbage_is_refused() {
        let later = sample().replace(r#"["Fst"]"#, r#"["Fst","Xyz","Bfl"]"#);
        let p = DataPoint::from_json(later.as_bytes()).unwrap();
        assert!(p.meta.flags.contains(Flag::Fst) && p.meta.flags.contains(Flag::Bfl));
        assert_eq!(p.meta.flags.iter().count(), 2);
        for bad in [r#"["fst"]"#, r#"["FST"]"#, r#"["Fs"]"#, r#"[""]"#, r#"[1]"#] {
            let json = sample().replace(r#"["Fst"]"#, bad);
            let e = DataPoint::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field(), Some("meta.flags[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_low_watermark_belongs_on_a_heartbeat_at_or_before_its_time() {
        let heartbeat = sample()
            .replace(r#""tag":"water_temperature""#, r#""tag":"$heartbeat""#)
            .replace("13.45", "null")
            .replace(r#"["Fst"]"#, r#"["Wmk"]"#);
        let declare =
            |low: u64| heartbeat.replace(r#""flags""#, &format!(r#""lowWatermark":{low},"flags""#));
        let p = DataPoint::from_json(declare(1732180000123).as_bytes()).unwrap();
        assert_eq!(p.meta.low_watermark, Some(1732180000123));
        assert_eq!(DataPoint::from_json(&p.to_json()).unwrap(), p);
        let e = DataPoint::from_json(declare(1732180000124).as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("meta.lowWatermark"), "{e}");
        let on_a_reading = sample().replace(r#""flags""#, r#""lowWatermark":1,"flags""#);
        let e = DataPoint::from_json(on_a_reading.as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("meta.lowWatermark"), "{e}");
    }

    #[test]
    fn null_needs_bad_or_heartbeat() {
        let bad = sample().replace("13.45", "null");
        let e = DataPoint::from_json(bad.as_bytes()).unwrap_err();
        assert_eq!(e.field(), Some("value"));
        let ok = bad.replace(r#""Ok""#, r#""Bad""#);
        assert!(DataPoint::from_json(ok.as_bytes()).is_ok());
    }
}
