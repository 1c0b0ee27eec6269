//! Report by exception for polled tags: send a reading only when it says something new.
//! Pure and per tag; the clock reading is passed in.
//!
//! A reading passes when
//! - it must (the driver's `Fst`, `Syn` and `Lst` points: a consumer reads gaps and
//!   stops from them), or it is the tag's first;
//! - its quality differs from the last one sent;
//! - it is a number and moved more than the deadband from the last value sent
//!   (`deadband_absolute`, in the tag's units, or `deadband_percent` of the tag's `range`, the way
//!   OPC UA servers apply a percent deadband to a variable's EURange);
//! - it is not a number (boolean, string, null) and differs at all from the last sent;
//! - `max_silence` has passed since the last one sent, so a consumer can tell
//!   "unchanged" from "gone".
//!
//! `on_change = true` asks for this without a deadband (booleans, strings, exact
//! numbers); a deadband or `max_silence` implies it. With none of the keys set every
//! reading passes (the default: nothing changes for a configuration that does not ask).

use linewatch_runtime::config::Split;
use linewatch_runtime::problems::{join_key, Problems};
use linewatch_schemas::{Quality, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::ops::Deref;
use std::time::Duration;

/// The report-by-exception keys of a tag (or, as defaults, of its group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Send a reading only when it changed (implied by the other keys).
    #[serde(default)]
    pub on_change: bool,
    /// Absolute deadband in the tag's (scaled) units.
    #[serde(default)]
    pub deadband_absolute: Option<f64>,
    /// Deadband in percent of `range`.
    #[serde(default)]
    pub deadband_percent: Option<f64>,
    /// `[low, high]` of the tag's engineering range; needed by `deadband_percent`.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Longest time without a point for an unchanged value.
    #[serde(default, with = "humantime_serde")]
    pub max_silence: Option<Duration>,
}

impl ExceptionConfig {
    /// Whether the filter does anything.
    pub fn is_active(&self) -> bool {
        self.on_change
            || self.deadband_absolute.is_some()
            || self.deadband_percent.is_some()
            || self.max_silence.is_some()
    }

    /// The absolute change a number must exceed, if a deadband is configured.
    pub fn threshold(&self) -> Option<f64> {
        match (self.deadband_absolute, self.deadband_percent, self.range) {
            (Some(d), _, _) => Some(d),
            (None, Some(p), Some([lo, hi])) => Some(p / 100.0 * (hi - lo).abs()),
            _ => None,
        }
    }

    /// Keys `self` overrides win over `defaults` (a tag's over its group's).
    pub fn or(self, defaults: ExceptionConfig) -> ExceptionConfig {
        let has_deadband = self.deadband_absolute.is_some() || self.deadband_percent.is_some();
        ExceptionConfig {
            on_change: self.on_change || defaults.on_change,
            deadband_absolute: if has_deadband {
                self.deadband_absolute
            } else {
                defaults.deadband_absolute
            },
            deadband_percent: if has_deadband {
                self.deadband_percent
            } else {
                defaults.deadband_percent
            },
            range: self.range.or(defaults.range),
            max_silence: self.max_silence.or(defaults.max_silence),
        }
    }

    /// Problems, keys under `prefix` (e.g. `sources[0].groups[1].tags[2]`).
    pub fn check(&self, prefix: &str) -> Problems {
        let mut p = self.check_values(prefix);
        self.check_complete(prefix, &mut p);
        p
    }

    /// A tag's problems: its own keys, and whether they together with its group's
    /// (`group`, checked at the group's key) are complete. A group's bad value is
    /// reported once, at the group, not at each of its tags.
    pub fn check_tag(&self, group: &ExceptionConfig, prefix: &str) -> Problems {
        let mut p = self.check_values(prefix);
        self.or(*group).check_complete(prefix, &mut p);
        p
    }

    /// A percent deadband needs the range it is a percent of.
    fn check_complete(&self, prefix: &str, p: &mut Problems) {
        if self.deadband_percent.is_some() && self.range.is_none() {
            p.push(
                join_key(prefix, "deadband_percent"),
                "needs range = [low, high] (the percent is of that span)",
            );
        }
    }

    /// Each key's value on its own; a group's keys are checked with this (a tag may
    /// give the range its percent needs).
    pub fn check_values(&self, prefix: &str) -> Problems {
        let mut p = Problems::new();
        let k = |key: &str| join_key(prefix, key);
        if self.deadband_absolute.is_some() && self.deadband_percent.is_some() {
            p.push(
                k("deadband_absolute"),
                "give deadband_absolute or deadband_percent, not both",
            );
        }
        if let Some(d) = self.deadband_absolute {
            if !(d.is_finite() && d >= 0.0) {
                p.push(
                    k("deadband_absolute"),
                    format!("must be a number ≥ 0, not {d}"),
                );
            }
        }
        if let Some(pct) = self.deadband_percent {
            if !(pct.is_finite() && (0.0..=100.0).contains(&pct)) {
                p.push(
                    k("deadband_percent"),
                    format!("must be 0 to 100, not {pct}"),
                );
            }
        }
        if let Some([lo, hi]) = self.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                p.push(
                    k("range"),
                    format!("must be [low, high] with low < high, not [{lo}, {hi}]"),
                );
            }
        }
        if self.max_silence.is_some_and(|d| d.is_zero()) {
            p.push(
                k("max_silence"),
                "must be more than 0 (leave it out for no limit)",
            );
        }
        p
    }
}

/// A tag's (or group's) protocol keys `T` and its report-by-exception keys, read from
/// one table: `deadband_absolute = 0.5` sits beside `address = 4`. Both halves keep
/// `deny_unknown_fields` (serde's `flatten` would accept any typo); derefs to `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct WithException<T> {
    pub keys: T,
    pub exception: ExceptionConfig,
}

impl<T> Deref for WithException<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.keys
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for WithException<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Split { common, specific } = Split::<T, ExceptionConfig>::deserialize(d)?;
        Ok(WithException {
            keys: common,
            exception: specific,
        })
    }
}

/// The checks every polled protocol makes of a tag's report-by-exception keys at
/// `tk`: its own values, whether together with its group's they are complete, and a
/// deadband of its own only where its readings are numbers (`numeric`: not a bool,
/// string or mapped tag; one inherited from the group means "any change" there).
pub fn check_tag_exception(
    p: &mut Problems,
    tk: &str,
    own: &ExceptionConfig,
    group: &ExceptionConfig,
    numeric: bool,
) {
    p.extend_prefixed("", own.check_tag(group, tk));
    if !numeric && (own.deadband_absolute.is_some() || own.deadband_percent.is_some()) {
        let key = if own.deadband_absolute.is_some() {
            "deadband_absolute"
        } else {
            "deadband_percent"
        };
        p.push(
            join_key(tk, key),
            "a deadband applies to numbers: this tag reads a bool, a string or mapped names (use on_change = true)",
        );
    }
}

/// Why a reading was sent or held back (counted per source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Suppress,
}

#[derive(Debug, Clone, PartialEq)]
struct Sent {
    value: Value,
    quality: Quality,
    at_ms: u64,
}

/// The filter of one tag: its configuration and the last reading it let through.
#[derive(Debug, Clone)]
pub struct ExceptionFilter {
    cfg: ExceptionConfig,
    threshold: Option<f64>,
    last: Option<Sent>,
}

impl ExceptionFilter {
    pub fn new(cfg: ExceptionConfig) -> Self {
        ExceptionFilter {
            threshold: cfg.threshold(),
            cfg,
            last: None,
        }
    }

    /// Decides about one reading at `now_ms`; `must_pass` for the driver's `Fst`,
    /// `Syn` and `Lst` points. A passed reading becomes the one later ones compare with.
    pub fn decide(
        &mut self,
        value: &Value,
        quality: Quality,
        must_pass: bool,
        now_ms: u64,
    ) -> Verdict {
        let pass = !self.cfg.is_active()
            || must_pass
            || match &self.last {
                None => true,
                Some(last) => {
                    last.quality != quality
                        || self.cfg.max_silence.is_some_and(|s| {
                            now_ms.saturating_sub(last.at_ms) >= s.as_millis() as u64
                        })
                        || self.changed(&last.value, value)
                }
            };
        if pass {
            self.last = Some(Sent {
                value: value.clone(),
                quality,
                at_ms: now_ms,
            });
            Verdict::Pass
        } else {
            Verdict::Suppress
        }
    }

    fn changed(&self, last: &Value, now: &Value) -> bool {
        match (self.threshold, last.as_f64(), now.as_f64()) {
            (Some(t), Some(a), Some(b)) => (b - a).abs() > t,
            _ => last != now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(v: f64) -> Value {
        Value::Float(v)
    }

    fn cfg(text: &str) -> ExceptionConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn without_keys_every_reading_passes() {
        let mut flt = ExceptionFilter::new(ExceptionConfig::default());
        for t in 0..5 {
            assert_eq!(flt.decide(&f(1.0), Quality::Ok, false, t), Verdict::Pass);
        }
    }

    #[test]
    fn a_deadband_holds_small_moves_and_passes_large_ones_and_quality_changes() {
        let mut flt = ExceptionFilter::new(cfg("deadband_absolute = 0.5"));
        assert_eq!(flt.decide(&f(10.0), Quality::Ok, false, 0), Verdict::Pass);
        assert_eq!(
            flt.decide(&f(10.4), Quality::Ok, false, 1),
            Verdict::Suppress
        );
        // Compared with the last one *sent*: drift adds up.
        assert_eq!(flt.decide(&f(10.6), Quality::Ok, false, 2), Verdict::Pass);
        assert_eq!(flt.decide(&f(10.6), Quality::Bad, false, 3), Verdict::Pass);
        assert_eq!(
            flt.decide(&f(10.6), Quality::Bad, false, 4),
            Verdict::Suppress
        );
        assert_eq!(
            flt.decide(&f(10.6), Quality::Bad, true, 5),
            Verdict::Pass,
            "Fst/Syn/Lst"
        );
    }

    #[test]
    fn percent_is_of_the_range_and_silence_resends() {
        let c = cfg("deadband_percent = 2.0\nrange = [0.0, 200.0]\nmax_silence = \"10s\"");
        assert_eq!(c.threshold(), Some(4.0));
        let mut flt = ExceptionFilter::new(c);
        assert_eq!(flt.decide(&f(50.0), Quality::Ok, false, 0), Verdict::Pass);
        assert_eq!(
            flt.decide(&f(53.0), Quality::Ok, false, 9_999),
            Verdict::Suppress
        );
        assert_eq!(
            flt.decide(&f(53.0), Quality::Ok, false, 10_000),
            Verdict::Pass
        );
    }

    #[test]
    fn strings_and_booleans_pass_on_any_change() {
        let mut flt = ExceptionFilter::new(cfg("on_change = true"));
        let s = |x: &str| Value::String(x.into());
        assert_eq!(flt.decide(&s("RUN"), Quality::Ok, false, 0), Verdict::Pass);
        assert_eq!(
            flt.decide(&s("RUN"), Quality::Ok, false, 1),
            Verdict::Suppress
        );
        assert_eq!(flt.decide(&s("STOP"), Quality::Ok, false, 2), Verdict::Pass);
        let mut flt = ExceptionFilter::new(cfg("deadband_absolute = 1.0"));
        assert_eq!(
            flt.decide(&Value::Bool(true), Quality::Ok, false, 0),
            Verdict::Pass
        );
        assert_eq!(
            flt.decide(&Value::Bool(true), Quality::Ok, false, 1),
            Verdict::Suppress
        );
        assert_eq!(
            flt.decide(&Value::Bool(false), Quality::Ok, false, 2),
            Verdict::Pass
        );
    }

    #[test]
    fn problems_name_the_key() {
        let keys = |text: &str| -> Vec<String> {
            cfg(text).check("t").iter().map(|p| p.key.clone()).collect()
        };
        assert_eq!(
            keys("deadband_absolute = -1.0"),
            vec!["t.deadband_absolute"]
        );
        assert_eq!(keys("deadband_percent = 5.0"), vec!["t.deadband_percent"]);
        assert_eq!(
            keys("deadband_absolute = 1.0\ndeadband_percent = 5.0\nrange = [0.0, 1.0]"),
            vec!["t.deadband_absolute"]
        );
        assert_eq!(keys("range = [5.0, 1.0]"), vec!["t.range"]);
        assert_eq!(keys("max_silence = \"0s\""), vec!["t.max_silence"]);
        assert!(cfg("deadband_percent = 1.0\nrange = [0.0, 10.0]")
            .check("t")
            .is_empty());
        assert!(toml::from_str::<ExceptionConfig>("deadbnd = 1.0").is_err());
    }

    #[test]
    fn a_group_value_is_checked_once_and_a_tag_may_complete_it() {
        let group = cfg("deadband_percent = 150.0");
        assert_eq!(
            group.check_values("g").len(),
            1,
            "out of range, range not asked"
        );
        let tag = cfg("range = [0.0, 10.0]");
        assert!(tag.check_tag(&group, "g.tags[0]").is_empty());
        let keys: Vec<String> = ExceptionConfig::default()
            .check_tag(&group, "g.tags[1]")
            .iter()
            .map(|p| p.key.clone())
            .collect();
        assert_eq!(keys, ["g.tags[1].deadband_percent"], "no range anywhere");
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Keys {
        address: u16,
    }

    #[test]
    fn a_table_splits_into_its_keys_and_the_exception_keys() {
        let t: WithException<Keys> =
            toml::from_str("address = 4\ndeadband_absolute = 0.5\nmax_silence = \"1m\"").unwrap();
        assert_eq!(t.address, 4);
        assert_eq!(t.exception.threshold(), Some(0.5));
        assert_eq!(t.exception.max_silence, Some(Duration::from_secs(60)));
        let plain: WithException<Keys> = toml::from_str("address = 1").unwrap();
        assert!(!plain.exception.is_active());
        let typo = toml::from_str::<WithException<Keys>>("address = 1\ndeadbnd = 1.0")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("unknown field `deadbnd`"), "{typo}");
        assert!(typo.contains("`deadband_absolute`"), "{typo}");
    }

    #[test]
    fn a_tag_overrides_its_group() {
        let group = cfg("deadband_absolute = 1.0\nmax_silence = \"30s\"");
        let tag = cfg("deadband_percent = 5.0\nrange = [0.0, 10.0]");
        let both = tag.or(group);
        assert_eq!(both.deadband_absolute, None);
        assert_eq!(both.threshold(), Some(0.5));
        assert_eq!(both.max_silence, Some(Duration::from_secs(30)));
        assert_eq!(ExceptionConfig::default().or(group), group);
    }

    proptest! {
        /// Every held-back number is within the deadband of the last one sent, every
        /// sent one (not forced, same quality, within max_silence) is beyond it, and no
        /// reading is held back once max_silence has passed since the last one sent.
        #[test]
        fn deadband_and_silence_hold(
            deadband_absolute in 0.0f64..5.0,
            silence_ms in 1u64..5_000,
            steps in proptest::collection::vec((-10.0f64..10.0, 0u64..800, 0u8..10, any::<bool>()), 1..300),
        ) {
            let c = ExceptionConfig {
                deadband_absolute: Some(deadband_absolute),
                max_silence: Some(Duration::from_millis(silence_ms)),
                ..ExceptionConfig::default()
            };
            let mut flt = ExceptionFilter::new(c);
            let (mut now, mut value) = (0u64, 0.0f64);
            let mut last: Option<(f64, Quality, u64)> = None;
            for (dv, dt, q, forced) in steps {
                now += dt;
                value += dv;
                let quality = if q == 0 { Quality::Bad } else { Quality::Ok };
                let forced = forced && q == 1;
                let v = flt.decide(&f(value), quality, forced, now);
                match (v, last) {
                    (Verdict::Suppress, Some((lv, lq, lt))) => {
                        prop_assert!((value - lv).abs() <= deadband_absolute);
                        prop_assert_eq!(lq, quality);
                        prop_assert!(now - lt < silence_ms);
                        prop_assert!(!forced);
                    }
                    (Verdict::Suppress, None) => prop_assert!(false, "the first reading passes"),
                    (Verdict::Pass, Some((lv, lq, lt))) => {
                        prop_assert!(forced || lq != quality || now - lt >= silence_ms || (value - lv).abs() > deadband_absolute);
                    }
                    (Verdict::Pass, None) => {}
                }
                if v == Verdict::Pass {
                    last = Some((value, quality, now));
                }
            }
        }
    }
}
