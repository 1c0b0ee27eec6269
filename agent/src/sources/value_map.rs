//! A tag's value map: PLC codes to names (`map = { 1 = "RUNNING", 2 = "IDLE" }`),
//! so a rule compares `machine_state == "RUNNING"` instead of a number only the
//! PLC programmer knows.
//!
//! Protocol-neutral: a protocol's tag struct declares `map: Option<ValueMap>`, hands
//! it to its [`super::SourceTag`], and the driver applies it to every sample of that
//! tag ([`ValueMap::apply`]), so every protocol maps the same way.
//!
//! A code the map does not know is passed through unchanged with quality
//! `Uncertain` (never better than the sample had) and `rawQuality` saying which
//! code it was, so nothing the PLC sent is lost and a rule can tell it apart.

use super::source::Sample;
use crate::config::Problems;
use linewatch_schemas::{Quality, Value};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A code the map is keyed by: an integer, or a boolean (`true = "OPEN"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    Bool(bool),
    Int(i64),
}

impl Code {
    /// The code a value stands for: integers, booleans, and floats with no fraction
    /// (a protocol that reports every number as a double still maps).
    pub fn of(value: &Value) -> Option<Code> {
        match *value {
            Value::Bool(b) => Some(Code::Bool(b)),
            Value::Int(i) => Some(Code::Int(i)),
            Value::UInt(u) => i64::try_from(u).ok().map(Code::Int),
            // `i64::MAX as f64` is 2^63: anything at or beyond it is not an i64.
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < i64::MAX as f64 => {
                Some(Code::Int(f as i64))
            }
            _ => None,
        }
    }

    /// A key as written in the config: `1`, `-3`, `true`, `false`.
    pub fn parse(key: &str) -> Option<Code> {
        match key {
            "true" => Some(Code::Bool(true)),
            "false" => Some(Code::Bool(false)),
            _ => key.trim().parse().ok().map(Code::Int),
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Bool(b) => write!(f, "{b}"),
            Code::Int(i) => write!(f, "{i}"),
        }
    }
}

/// The `map` key of a tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueMap {
    names: BTreeMap<Code, Arc<str>>,
}

impl ValueMap {
    pub fn new(pairs: impl IntoIterator<Item = (Code, String)>) -> ValueMap {
        ValueMap {
            names: pairs.into_iter().map(|(c, n)| (c, Arc::from(n))).collect(),
        }
    }

    pub fn get(&self, code: Code) -> Option<&str> {
        self.names.get(&code).map(|n| &**n)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names it maps to, for checks that compare them with rules.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(|n| &**n)
    }

    /// `key` is the tag's path (`sources[0].groups[1].tags[2]`).
    pub fn validate(&self, key: &str, p: &mut Problems) {
        if self.names.is_empty() {
            p.push(format!("{key}.map"), "must map at least one code");
        }
        for (code, name) in &self.names {
            if name.trim().is_empty() {
                p.push(format!("{key}.map.{code}"), "must not be empty");
            }
        }
    }

    /// The sample with its code replaced by the name. `Bad` samples and nulls (a lost
    /// link, a refused read) carry no code and pass unchanged.
    pub fn apply(&self, mut s: Sample) -> Sample {
        if s.quality == Quality::Bad || s.value.is_null() {
            return s;
        }
        let code = Code::of(&s.value);
        match code.and_then(|c| self.names.get(&c)) {
            Some(name) => s.value = Value::String(name.to_string()),
            None => {
                if s.quality == Quality::Ok {
                    s.quality = Quality::Uncertain;
                }
                let what = match code {
                    Some(c) => format!("unmapped value {c}"),
                    None => format!("unmapped value {}", describe(&s.value)),
                };
                s.raw_quality = Some(match s.raw_quality.take() {
                    Some(raw) if !raw.is_empty() => format!("{raw}; {what}"),
                    _ => what,
                });
            }
        }
        s
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Float(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

impl<'de> Deserialize<'de> for ValueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let mut names = BTreeMap::new();
        for (key, name) in raw {
            let code = Code::parse(&key).ok_or_else(|| {
                D::Error::custom(format!(
                    "map key `{key}` is not a code: use an integer (`1 = \"RUNNING\"`) or true/false"
                ))
            })?;
            if names.insert(code, Arc::from(name)).is_some() {
                return Err(D::Error::custom(format!("map code {code} appears twice")));
            }
        }
        Ok(ValueMap { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn states() -> ValueMap {
        toml::from_str::<BTreeMap<String, ValueMap>>(
            "m = { 1 = \"RUNNING\", 2 = \"IDLE\", 3 = \"FAULT\" }",
        )
        .expect("parses")
        .remove("m")
        .expect("m")
    }

    #[test]
    fn a_known_code_becomes_its_name() {
        let m = states();
        for (v, want) in [
            (Value::Int(1), "RUNNING"),
            (Value::UInt(2), "IDLE"),
            (Value::Float(3.0), "FAULT"),
        ] {
            let s = m.apply(Sample::ok(v));
            assert_eq!(s.value, Value::String(want.into()));
            assert_eq!((s.quality, s.raw_quality), (Quality::Ok, None));
        }
    }

    #[test]
    fn an_unknown_code_passes_through_uncertain_and_says_which() {
        let s = states().apply(Sample::ok(Value::Int(7)));
        assert_eq!(s.value, Value::Int(7), "the raw value is kept");
        assert_eq!(s.quality, Quality::Uncertain);
        assert_eq!(s.raw_quality.as_deref(), Some("unmapped value 7"));
        let s = states().apply(Sample::ok(Value::Float(1.5)));
        assert_eq!(
            (s.value, s.raw_quality.as_deref()),
            (Value::Float(1.5), Some("unmapped value 1.5"))
        );
    }

    #[test]
    fn the_protocol_status_is_kept_and_bad_samples_pass_unchanged() {
        let mut s = Sample::ok(Value::Int(9));
        s.quality = Quality::Uncertain;
        s.raw_quality = Some("0x40".into());
        let s = states().apply(s);
        assert_eq!(s.raw_quality.as_deref(), Some("0x40; unmapped value 9"));
        let bad = Sample::bad("exception 2");
        assert_eq!(states().apply(bad.clone()), bad);
    }

    #[test]
    fn boolean_keys_and_bad_keys() {
        let m: BTreeMap<String, ValueMap> =
            toml::from_str("m = { true = \"OPEN\", false = \"CLOSED\" }").expect("parses");
        let s = m["m"].apply(Sample::ok(Value::Bool(false)));
        assert_eq!(s.value, Value::String("CLOSED".into()));
        let e = toml::from_str::<BTreeMap<String, ValueMap>>("m = { one = \"RUNNING\" }")
            .expect_err("not a code");
        assert!(e.to_string().contains("map key `one` is not a code"), "{e}");
        let e = toml::from_str::<BTreeMap<String, ValueMap>>("m = { 1 = \"A\", 01 = \"B\" }")
            .expect_err("the same code twice");
        assert!(e.to_string().contains("map code 1 appears twice"), "{e}");
    }

    #[test]
    fn empty_maps_and_names_are_problems() {
        let mut p = Problems::default();
        ValueMap::default().validate("sources[0].groups[0].tags[1]", &mut p);
        ValueMap::new([(Code::Int(4), " ".into())]).validate("t", &mut p);
        assert_eq!(
            p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["sources[0].groups[0].tags[1].map", "t.map.4"]
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<bool>().prop_map(Value::Bool),
            (-1e6f64..1e6).prop_map(Value::Float),
            (-20i64..20).prop_map(|i| Value::Float(i as f64)),
            (-20i64..20).prop_map(Value::Int),
            "[a-z]{0,4}".prop_map(Value::String),
        ]
    }

    proptest! {
        /// Every sample either becomes exactly its map entry (quality unchanged) or keeps
        /// its value, at quality Uncertain or worse, with the reason in rawQuality.
        #[test]
        fn mapped_or_passed_through_uncertain(
            pairs in proptest::collection::btree_map(-20i64..20, "[A-Z]{1,8}", 0..8),
            v in value(),
            uncertain in any::<bool>(),
        ) {
            let map = ValueMap::new(pairs.iter().map(|(c, n)| (Code::Int(*c), n.clone())));
            let mut s = Sample::ok(v.clone());
            if uncertain { s.quality = Quality::Uncertain; }
            let out = map.apply(s.clone());
            match Code::of(&v).and_then(|c| map.get(c)) {
                Some(name) => {
                    prop_assert_eq!(out.value, Value::String(name.to_owned()));
                    prop_assert_eq!(out.quality, s.quality);
                    prop_assert_eq!(out.raw_quality, None);
                }
                None => {
                    prop_assert_eq!(&out.value, &v);
                    prop_assert_eq!(out.quality, Quality::Uncertain);
                    let raw = out.raw_quality.unwrap_or_default();
                    prop_assert!(raw.starts_with("unmapped value "), "{}", raw);
                }
            }
        }

        /// An integral float and the integer it equals map to the same name.
        #[test]
        fn floats_without_fraction_map_like_integers(i in -1_000_000i64..1_000_000) {
            prop_assert_eq!(Code::of(&Value::Float(i as f64)), Some(Code::Int(i)));
            prop_assert_eq!(Code::of(&Value::Int(i)), Some(Code::Int(i)));
        }
    }
}
