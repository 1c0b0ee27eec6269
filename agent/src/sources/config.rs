//! `[[sources]]` tables: the keys every protocol shares ([`CommonSourceConfig`]),
//! the protocol's own ([`ProtocolConfig`]), and the one place that maps `type` to
//! a protocol ([`super::factory::PROTOCOLS`]).
//!
//! Both halves keep `deny_unknown_fields`: the table is split by key name before
//! either half is deserialized (the runtime's [`Split`]), because serde's `flatten`
//! would silently accept any typo.

use super::factory::{SourceTask, PROTOCOLS};
use super::source::SourceContext;
use crate::config::{check_id, Problems};
use linewatch_runtime::config::Split;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::time::Duration;

/// Keys of a `[[sources]]` table that mean the same for every protocol.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSourceConfig {
    /// Source id: `meta.sourceId` of every point, and the key of its sequence numbers.
    pub id: String,
    /// Default equipment for tags that do not name their own.
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// Timeout of connecting and of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Heartbeat (`$heartbeat`, flag `Wmk`) period while connected; 0s turns it off.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}

impl CommonSourceConfig {
    /// With the defaults of every optional key (tests, examples).
    pub fn new(id: impl Into<String>) -> CommonSourceConfig {
        CommonSourceConfig {
            id: id.into(),
            equipment_id: None,
            timeout: default_timeout(),
            reconnect_initial: default_reconnect_initial(),
            reconnect_max: default_reconnect_max(),
            heartbeat_interval: default_heartbeat(),
        }
    }

    /// `key` is this source's path, e.g. `sources[0]`.
    pub fn validate(&self, key: &str, p: &mut Problems) {
        // The default equipment is checked where it is used: at each tag's path.
        check_id(p, &format!("{key}.id"), &self.id);
        if self.timeout.is_zero() {
            p.push(format!("{key}.timeout"), "must be greater than zero");
        }
        if self.reconnect_initial.is_zero() || self.reconnect_initial > self.reconnect_max {
            p.push(
                format!("{key}.reconnect_initial"),
                "must be greater than zero and at most reconnect_max",
            );
        }
    }
}

/// A protocol's own keys, checked and started through the shared layer.
/// Implemented once per protocol, next to its config struct.
pub trait ProtocolConfig: std::fmt::Debug + Send + Sync + 'static {
    /// Semantic checks of the protocol's keys; `key` is the source's path
    /// (`sources[0]`), `common` its shared keys (e.g. the default equipment).
    fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems);

    /// What works but should change (e.g. a node id by namespace index), each
    /// naming its key: `check` prints them, the source logs them at start.
    fn warnings(&self, _key: &str, _p: &mut Problems) {}

    fn tag_count(&self) -> usize;

    fn clone_box(&self) -> Box<dyn ProtocolConfig>;

    /// Build the protocol's [`super::Source`] and run it under [`super::driver::run`].
    fn start(self: Box<Self>, common: CommonSourceConfig, ctx: SourceContext) -> SourceTask;
}

/// One `[[sources]]` table.
#[derive(Debug)]
pub struct SourceConfig {
    /// The `type` key.
    pub kind: &'static str,
    pub common: CommonSourceConfig,
    pub protocol: Box<dyn ProtocolConfig>,
}

impl Clone for SourceConfig {
    fn clone(&self) -> Self {
        SourceConfig {
            kind: self.kind,
            common: self.common.clone(),
            protocol: self.protocol.clone_box(),
        }
    }
}

impl SourceConfig {
    pub fn id(&self) -> &str {
        &self.common.id
    }

    pub fn tag_count(&self) -> usize {
        self.protocol.tag_count()
    }

    pub fn warnings(&self, key: &str, p: &mut Problems) {
        self.protocol.warnings(key, p);
    }

    /// Shared keys first, then the protocol's; every problem names its full key path.
    pub fn validate(&self, key: &str, p: &mut Problems) {
        self.common.validate(key, p);
        self.protocol.validate(&self.common, key, p);
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`type` must be a string, not {}",
                    other.type_str()
                )))
            }
            None => return Err(D::Error::missing_field("type")),
        };
        let Some(protocol) = PROTOCOLS.iter().find(|p| p.kind == kind) else {
            let known: Vec<String> = PROTOCOLS.iter().map(|p| format!("`{}`", p.kind)).collect();
            return Err(D::Error::custom(format!(
                "unknown source type `{kind}`, expected {}",
                known.join(" or ")
            )));
        };
        let (common, specific) = (protocol.parse)(table).map_err(D::Error::custom)?;
        Ok(SourceConfig {
            kind: protocol.kind,
            common,
            protocol: specific,
        })
    }
}

/// The checks every protocol makes of a tag at `tk` (e.g. `sources[0].groups[1].tags[2]`):
/// its name is an id and not one of the agent's `$` names, and it has an equipment (its
/// own, or the default of the source at `source_key`). Returns that equipment.
pub fn check_tag<'a>(
    p: &mut Problems,
    source_key: &str,
    tk: &str,
    name: &str,
    equipment: Option<&'a str>,
) -> Option<&'a str> {
    check_id(p, &format!("{tk}.name"), name);
    if name.starts_with('$') {
        p.push(
            format!("{tk}.name"),
            "tag names starting with '$' are reserved for the agent",
        );
    }
    match equipment {
        Some(e) => check_id(p, &format!("{tk}.equipment_id"), e),
        None => p.push(
            format!("{tk}.equipment_id"),
            format!("missing (and {source_key}.equipment_id gives no default)"),
        ),
    }
    equipment
}

/// The checks every protocol makes of its groups and of its tags' names: at least
/// one group, group names unique ids with at least one tag, tag names unique per
/// equipment. `what` names a group in messages ("poll group", "tag group").
pub struct GroupChecks<'a> {
    what: &'static str,
    groups: HashSet<&'a str>,
    tags: HashSet<(Option<&'a str>, String)>,
}

impl<'a> GroupChecks<'a> {
    pub fn new(p: &mut Problems, key: &str, what: &'static str, groups: usize) -> Self {
        if groups == 0 {
            p.push(
                format!("{key}.groups"),
                format!("a source needs at least one {what}"),
            );
        }
        GroupChecks {
            what,
            groups: HashSet::new(),
            tags: HashSet::new(),
        }
    }

    /// The group at `gk` (e.g. `sources[0].groups[1]`).
    pub fn group(&mut self, p: &mut Problems, gk: &str, name: &'a str, tags: usize) {
        let what = self.what;
        check_id(p, &format!("{gk}.name"), name);
        if !self.groups.insert(name) {
            p.push(format!("{gk}.name"), format!("duplicate {what} {name:?}"));
        }
        if tags == 0 {
            p.push(
                format!("{gk}.tags"),
                format!("a {what} needs at least one tag"),
            );
        }
    }

    /// A name the tag at `tk` publishes under, for `equipment`.
    pub fn tag_name(&mut self, p: &mut Problems, tk: &str, equipment: Option<&'a str>, name: &str) {
        if !self.tags.insert((equipment, name.to_owned())) {
            p.push(
                format!("{tk}.name"),
                format!("duplicate tag {name:?} for this equipment"),
            );
        }
    }
}

/// Parse a protocol's table: shared keys into [`CommonSourceConfig`], the rest into `P`.
pub fn parse_protocol<P: ProtocolConfig + DeserializeOwned>(
    table: toml::Table,
) -> Result<(CommonSourceConfig, Box<dyn ProtocolConfig>), toml::de::Error> {
    let (common, specific) = split::<CommonSourceConfig, P>(table)?;
    Ok((common, Box::new(specific)))
}

/// One table as two structs, each with `deny_unknown_fields` ([`Split`]): a key
/// neither declares is an error naming it and every known key.
pub fn split<C: DeserializeOwned, S: DeserializeOwned>(
    table: toml::Table,
) -> Result<(C, S), toml::de::Error> {
    let Split { common, specific } = Split::<C, S>::deserialize(toml::Value::Table(table))?;
    Ok((common, specific))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Specific {
        address: String,
        #[serde(default)]
        unit_id: u8,
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("test TOML parses")
    }

    #[test]
    fn split_sends_each_key_to_its_half() -> Result<(), toml::de::Error> {
        let (c, s) = split::<CommonSourceConfig, Specific>(table(
            "id = \"plc\"\naddress = \"a:1\"\ntimeout = \"300ms\"\nunit_id = 3",
        ))?;
        let mut want = CommonSourceConfig::new("plc");
        want.timeout = Duration::from_millis(300);
        assert_eq!(c, want);
        assert_eq!(
            s,
            Specific {
                address: "a:1".into(),
                unit_id: 3
            }
        );
        Ok(())
    }

    #[test]
    fn split_refuses_a_key_neither_half_knows() {
        let e = split::<CommonSourceConfig, Specific>(table(
            "id = \"plc\"\naddress = \"a:1\"\nheartbeat_intervall = \"1s\"",
        ))
        .expect_err("a typo is an error");
        let msg = e.to_string();
        assert!(msg.contains("unknown field `heartbeat_intervall`"), "{msg}");
        assert!(
            msg.contains("`heartbeat_interval`") && msg.contains("`address`"),
            "{msg}"
        );
    }

    #[test]
    fn split_reports_missing_and_mistyped_keys() {
        let e = split::<CommonSourceConfig, Specific>(table("id = \"plc\""))
            .expect_err("address is required");
        assert!(e.to_string().contains("missing field `address`"), "{e}");
        let e = split::<CommonSourceConfig, Specific>(table("id = \"plc\"\naddress = 1"))
            .expect_err("");
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn field_names_come_from_the_derive() {
        use linewatch_runtime::config::field_names;
        assert_eq!(field_names::<Specific>(), Ok(&["address", "unit_id"][..]));
        assert!(field_names::<CommonSourceConfig>().is_ok_and(|f| f.contains(&"reconnect_max")));
    }

    #[test]
    fn common_keys_are_validated_with_their_path() {
        let mut c = CommonSourceConfig::new("");
        c.timeout = Duration::ZERO;
        c.reconnect_initial = Duration::from_secs(60);
        let mut p = Problems::default();
        c.validate("sources[2]", &mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sources[2].id",
                "sources[2].timeout",
                "sources[2].reconnect_initial"
            ]
        );
    }

    #[derive(Debug, Deserialize)]
    struct Sources {
        sources: Vec<SourceConfig>,
    }

    const MODBUS: &str = "[[sources]]\ntype = \"modbus\"\nid = \"plc\"\naddress = \"127.0.0.1:502\"\ntimeout = \"0s\"\n[[sources.groups]]\nname = \"g\"\ninterval = \"1s\"\ntags = [{ name = \"t\", area = \"coil\", address = 0, type = \"bool\" }]";

    #[test]
    fn type_picks_the_protocol_and_validation_names_full_paths() {
        let s: Sources = toml::from_str(MODBUS).expect("parses");
        let src = &s.sources[0];
        assert_eq!((src.kind, src.id(), src.tag_count()), ("modbus", "plc", 1));
        let mut p = Problems::default();
        src.clone().validate("sources[0]", &mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sources[0].timeout",
                "sources[0].groups[0].tags[0].equipment_id"
            ]
        );
    }

    #[test]
    fn a_missing_or_unknown_type_is_refused() {
        let e = toml::from_str::<Sources>(&MODBUS.replace("type = \"modbus\"\n", ""))
            .expect_err("no type");
        assert!(e.to_string().contains("missing field `type`"), "{e}");
        let e = toml::from_str::<Sources>(&MODBUS.replace("\"modbus\"", "\"profinet\""))
            .expect_err("unknown type");
        assert!(
            e.to_string()
                .contains("unknown source type `profinet`, expected `modbus` or `s7` or `opcua`"),
            "{e}"
        );
    }
}
