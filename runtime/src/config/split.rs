//! One table, two structs, unknown keys still rejected.
//!
//! A table often has keys shared by several kinds of section (every source's `id`,
//! `equipment`, timeouts, reconnect and heartbeat; the AWS connection keys inside
//! `[kinesis]`) next to keys of its own. The obvious serde answer, `#[serde(flatten)]`,
//! silently turns `deny_unknown_fields` off (serde-rs/serde#1547), so a typo such as
//! `endpoit_url` would be ignored. [`Split`] keeps the check: it learns each struct's
//! field names (serde hands them to `Deserializer::deserialize_struct`; a capturing
//! deserializer reads them without deserializing anything), routes every key of the
//! table to the struct that knows it, and rejects a key neither knows, naming it.
//!
//! Both structs must be plain derived structs (no `flatten` inside, which hides the
//! field names); `#[serde(default)]`, aliases and `deny_unknown_fields` work as usual.
//! A key both structs declare goes to both. The table is buffered as a `toml::Value`,
//! so it works from TOML (and any other self-describing format).

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// A table read into the common keys `C` and the specific keys `S`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split<C, S> {
    pub common: C,
    pub specific: S,
}

impl<'de, C: DeserializeOwned, S: DeserializeOwned> Deserialize<'de> for Split<C, S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let common_keys = field_names::<C>().map_err(de::Error::custom)?;
        let specific_keys = field_names::<S>().map_err(de::Error::custom)?;
        let table = toml::Table::deserialize(d)?;
        let (mut common, mut specific) = (toml::Table::new(), toml::Table::new());
        for (key, value) in table {
            let in_common = common_keys.contains(&key.as_str());
            let in_specific = specific_keys.contains(&key.as_str());
            match (in_common, in_specific) {
                (true, true) => {
                    common.insert(key.clone(), value.clone());
                    specific.insert(key, value);
                }
                (true, false) => {
                    common.insert(key, value);
                }
                (false, true) => {
                    specific.insert(key, value);
                }
                (false, false) => {
                    let expected: Vec<String> = common_keys
                        .iter()
                        .chain(specific_keys.iter().filter(|k| !common_keys.contains(k)))
                        .map(|k| format!("`{k}`"))
                        .collect();
                    return Err(de::Error::custom(format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    )));
                }
            }
        }
        Ok(Split {
            common: part(common)?,
            specific: part(specific)?,
        })
    }
}

/// Deserializes one routed part; an error names the key at fault (the buffered table
/// has no spans, so toml's own message would only point at the table).
fn part<T: DeserializeOwned, E: de::Error>(table: toml::Table) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            E::custom(inner.message())
        } else {
            E::custom(format!("{path}: {}", inner.message()))
        }
    })
}

/// The field names (with aliases) a derived struct `T` accepts, learnt without any input.
/// Fails for types that are not plain structs (maps, enums, structs with `flatten`).
pub fn field_names<T: DeserializeOwned>() -> Result<&'static [&'static str], String> {
    match T::deserialize(Capture) {
        Err(CaptureError::Fields(fields)) => Ok(fields),
        Err(CaptureError::Other(e)) => Err(format!(
            "{} is not a plain struct ({e})",
            std::any::type_name::<T>()
        )),
        Ok(_) => Err(format!(
            "{} is not a plain struct",
            std::any::type_name::<T>()
        )),
    }
}

/// A deserializer that only answers `deserialize_struct`, with the field names.
struct Capture;

#[derive(Debug)]
enum CaptureError {
    Fields(&'static [&'static str]),
    Other(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Fields(fields) => write!(f, "fields {fields:?}"),
            CaptureError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CaptureError {}

impl de::Error for CaptureError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CaptureError::Other(msg.to_string())
    }
}

impl<'de> Deserializer<'de> for Capture {
    type Error = CaptureError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CaptureError> {
        Err(CaptureError::Other("it is not read as a struct".into()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, CaptureError> {
        Err(CaptureError::Fields(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Keys every source has.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Common {
        id: String,
        #[serde(default = "default_timeout", with = "humantime_serde")]
        timeout: Duration,
        #[serde(default, alias = "equipment_id")]
        equipment: Option<String>,
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(3)
    }

    /// Keys of one protocol.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Modbus {
        host: String,
        #[serde(default = "default_port")]
        port: u16,
    }

    fn default_port() -> u16 {
        502
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        source: Split<Common, Modbus>,
    }

    fn parse(text: &str) -> Result<Split<Common, Modbus>, String> {
        toml::from_str::<File>(text)
            .map(|f| f.source)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn both_structs_are_filled_and_defaults_apply() {
        let s = parse(
            "[source]\nid = \"press-1\"\nhost = \"10.0.0.5\"\ntimeout = \"250ms\"\nequipment_id = \"P1\"",
        )
        .unwrap();
        assert_eq!(
            s.common,
            Common {
                id: "press-1".into(),
                timeout: Duration::from_millis(250),
                equipment: Some("P1".into()),
            }
        );
        assert_eq!(
            s.specific,
            Modbus {
                host: "10.0.0.5".into(),
                port: 502
            }
        );
        let d = parse("[source]\nid = \"a\"\nhost = \"h\"").unwrap();
        assert_eq!(d.common.timeout, Duration::from_secs(3));
        assert_eq!(d.common.equipment, None);
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_name() {
        let e = parse("[source]\nid = \"a\"\nhost = \"h\"\nprot = 1").unwrap_err();
        assert!(e.contains("unknown field `prot`"), "{e}");
        assert!(
            e.contains("`port`") && e.contains("`id`"),
            "lists what is known: {e}"
        );
    }

    #[test]
    fn a_typo_in_a_common_key_is_rejected() {
        let e = parse("[source]\nid = \"a\"\nhost = \"h\"\ntimout = \"1s\"").unwrap_err();
        assert!(e.contains("unknown field `timout`"), "{e}");
    }

    #[test]
    fn a_missing_or_mistyped_key_names_the_key() {
        let e = parse("[source]\nhost = \"h\"").unwrap_err();
        assert!(e.contains("missing field `id`"), "{e}");
        let e = parse("[source]\nid = \"a\"\nhost = \"h\"\nport = \"x\"").unwrap_err();
        assert!(e.contains("port: invalid type"), "{e}");
    }

    #[test]
    fn field_names_come_from_the_derive() {
        assert_eq!(
            field_names::<Common>().unwrap(),
            &["id", "timeout", "equipment", "equipment_id"]
        );
        assert!(field_names::<std::collections::BTreeMap<String, String>>().is_err());
        assert!(field_names::<String>().is_err());
    }

    #[test]
    fn works_inside_an_array_of_tables_and_from_json() {
        #[derive(Debug, Deserialize)]
        struct Many {
            sources: Vec<Split<Common, Modbus>>,
        }
        let m: Many = toml::from_str(
            "[[sources]]\nid = \"a\"\nhost = \"h\"\n[[sources]]\nid = \"b\"\nhost = \"i\"\nport = 5020",
        )
        .unwrap();
        assert_eq!(m.sources[1].specific.port, 5020);
        let j: Split<Common, Modbus> =
            serde_json::from_str(r#"{"id":"a","host":"h","port":7}"#).unwrap();
        assert_eq!(j.specific.port, 7);
    }
}
