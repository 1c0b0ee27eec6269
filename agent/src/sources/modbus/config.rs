//! Configuration of a Modbus TCP source.

use crate::config::Problems;
use crate::sources::config::{check_tag, CommonSourceConfig, GroupChecks};
use crate::sources::exception::{check_tag_exception, WithException};
use crate::sources::value_map::ValueMap;
use serde::Deserialize;
use std::time::Duration;

/// The Modbus keys of a `[[sources]]` table with `type = "modbus"`; the shared
/// keys (id, equipment, timeout, reconnect, heartbeat) are in
/// [`CommonSourceConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSourceConfig {
    /// `host:port` of the Modbus TCP server.
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Registers that may be read in between two tags to merge their requests (0 = only adjacent).
    #[serde(default)]
    pub max_gap: u16,
    /// Defaults for tags that do not set their own.
    #[serde(default)]
    pub byte_order: ByteOrder,
    #[serde(default)]
    pub word_order: WordOrder,
    /// Each with the report-by-exception keys as defaults for its tags.
    pub groups: Vec<WithException<PollGroup>>,
}

/// Tags polled together at one interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollGroup {
    pub name: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Each with its own report-by-exception keys.
    pub tags: Vec<WithException<ModbusTag>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTag {
    pub name: String,
    #[serde(default)]
    pub equipment_id: Option<String>,
    pub area: Area,
    /// Zero-based protocol address (register 40001 is holding address 0).
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub byte_order: Option<ByteOrder>,
    #[serde(default)]
    pub word_order: Option<WordOrder>,
    /// value = raw × scale + offset (numeric types only; the result is a float
    /// unless scale is 1 and offset 0).
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
    /// Codes to names (`{ 1 = "RUNNING" }`), applied by the shared driver.
    #[serde(default)]
    pub map: Option<ValueMap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::InputRegister => "input_register",
            Area::HoldingRegister => "holding_register",
        })
    }
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }
    /// The protocol's limit on one read of this area.
    pub fn max_per_read(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl DataType {
    /// Registers (16-bit words) one value takes; a bool in a register area takes one.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Order of the two bytes inside each 16-bit register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
}

/// Order of the registers of a multi-register value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// Most significant register first (Modicon convention).
    #[default]
    Big,
    Little,
}

fn default_unit_id() -> u8 {
    1
}

impl ModbusSourceConfig {
    /// Semantic checks of the Modbus keys; `key` is this source's path, e.g.
    /// `sources[0]` (the shared keys are checked by [`CommonSourceConfig::validate`]).
    pub fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        if !is_host_port(&self.address) {
            p.push(
                format!("{key}.address"),
                format!(
                    "{:?} must be host:port (e.g. 192.168.0.10:502)",
                    self.address
                ),
            );
        }
        let mut checks = GroupChecks::new(p, key, "poll group", self.groups.len());
        for (gi, g) in self.groups.iter().enumerate() {
            let gk = format!("{key}.groups[{gi}]");
            checks.group(p, &gk, &g.name, g.tags.len());
            if g.interval.is_zero() {
                p.push(format!("{gk}.interval"), "must be greater than zero");
            }
            p.extend_prefixed("", g.exception.check_values(&gk));
            for (ti, t) in g.tags.iter().enumerate() {
                let tk = format!("{gk}.tags[{ti}]");
                let eq = check_tag(
                    p,
                    key,
                    &tk,
                    &t.name,
                    t.equipment(common.equipment_id.as_deref()),
                );
                checks.tag_name(p, &tk, eq, &t.name);
                if t.area.is_bits() && t.data_type != DataType::Bool {
                    p.push(
                        format!("{tk}.type"),
                        format!("{} holds bits: type must be bool", t.area),
                    );
                }
                let end = u32::from(t.address) + u32::from(t.data_type.registers());
                if !t.area.is_bits() && end > 65536 {
                    p.push(format!("{tk}.address"), "value runs past register 65535");
                }
                if (t.scale.is_some() || t.offset.is_some()) && t.data_type == DataType::Bool {
                    p.push(
                        format!("{tk}.scale"),
                        "scale and offset apply to numeric types only",
                    );
                }
                if t.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
                    p.push(format!("{tk}.scale"), "must be a finite, non-zero number");
                }
                if t.offset.is_some_and(|o| !o.is_finite()) {
                    p.push(format!("{tk}.offset"), "must be a finite number");
                }
                let numeric = t.data_type != DataType::Bool && t.map.is_none();
                check_tag_exception(p, &tk, &t.exception, &g.exception, numeric);
                if let Some(map) = &t.map {
                    map.validate(&tk, p);
                    if matches!(t.data_type, DataType::F32 | DataType::F64)
                        || t.scale.is_some()
                        || t.offset.is_some()
                    {
                        p.push(
                            format!("{tk}.map"),
                            "maps codes: the tag must be an integer or bool type without scale or offset",
                        );
                    }
                }
            }
        }
    }
}

impl ModbusTag {
    /// The equipment its points belong to: its own, else the source's `default`.
    pub fn equipment<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.equipment_id.as_deref().or(default)
    }
}

impl ModbusSourceConfig {
    pub fn tag_count(&self) -> usize {
        self.groups.iter().map(|g| g.tags.len()).sum()
    }
}

/// `host:port` with a non-empty host and a numeric port (IPv6 hosts in brackets).
fn is_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !host.chars().any(char::is_whitespace)
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::split;

    type Source = (CommonSourceConfig, ModbusSourceConfig);

    fn source(extra: &str, tags: &str) -> Result<Source, toml::de::Error> {
        split(toml::from_str(&format!(
            "id = \"plc1\"\naddress = \"127.0.0.1:502\"\n{extra}\n[[groups]]\nname = \"fast\"\ninterval = \"1s\"\n{tags}"
        ))?)
    }

    fn problems((common, cfg): &Source) -> Vec<String> {
        let mut p = Problems::default();
        common.validate("sources[0]", &mut p);
        cfg.validate(common, "sources[0]", &mut p);
        p.to_strings()
    }

    #[test]
    fn a_valid_source_has_no_problems() -> Result<(), toml::de::Error> {
        let cfg = source(
            "equipment_id = \"filler\"",
            "[[groups.tags]]\nname = \"t\"\narea = \"holding_register\"\naddress = 0\ntype = \"f32\"\nscale = 0.1",
        )?;
        assert_eq!(problems(&cfg), Vec::<String>::new());
        assert_eq!(cfg.0.equipment_id.as_deref(), Some("filler"));
        assert_eq!(
            cfg.1.groups[0].tags[0].equipment(Some("filler")),
            Some("filler")
        );
        Ok(())
    }

    #[test]
    fn problems_name_the_key_path() -> Result<(), toml::de::Error> {
        let cfg = source(
            "",
            "[[groups.tags]]\nname = \"t\"\narea = \"coil\"\naddress = 65535\ntype = \"u16\"\noffset = nan",
        )?;
        let p = problems(&cfg);
        assert!(
            p.iter()
                .any(|m| m.starts_with("sources[0].groups[0].tags[0].equipment_id: missing")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("sources[0].groups[0].tags[0].type:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("sources[0].groups[0].tags[0].offset:")),
            "{p:?}"
        );
        Ok(())
    }

    #[test]
    fn address_must_be_host_and_port() {
        for ok in ["127.0.0.1:502", "plc-7.local:502", "[::1]:502"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in ["plc", "plc:", ":502", "plc:99999", "::1:502", "plc 1:502"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn empty_and_duplicate_groups_are_reported() -> Result<(), toml::de::Error> {
        let mut cfg = source("equipment_id = \"e\"", "tags = []")?;
        cfg.1.groups.push(cfg.1.groups[0].clone());
        let p = problems(&cfg);
        assert!(
            p.iter()
                .any(|m| m.starts_with("sources[0].groups[0].tags:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("sources[0].groups[1].name: duplicate")),
            "{p:?}"
        );
        Ok(())
    }

    #[test]
    fn a_tag_equipment_overrides_the_default() -> Result<(), toml::de::Error> {
        let (_, cfg) = source(
            "",
            "[[groups.tags]]\nname = \"t\"\nequipment_id = \"labeller\"\narea = \"coil\"\naddress = 3\ntype = \"bool\"",
        )?;
        let tag = &cfg.groups[0].tags[0];
        assert_eq!(tag.equipment(None), Some("labeller"));
        assert_eq!(tag.equipment(Some("filler")), Some("labeller"));
        Ok(())
    }

    #[test]
    fn shared_keys_keep_their_toml_names_and_typos_are_refused() {
        let (common, cfg) = source(
            "equipment_id = \"e\"\nunit_id = 7\ntimeout = \"300ms\"\nreconnect_initial = \"20ms\"\nreconnect_max = \"100ms\"\nheartbeat_interval = \"0s\"\nmax_gap = 3",
            "tags = []",
        )
        .expect("every documented key parses");
        assert_eq!(common.timeout, std::time::Duration::from_millis(300));
        assert_eq!(
            common.reconnect_initial,
            std::time::Duration::from_millis(20)
        );
        assert!(common.heartbeat_interval.is_zero());
        assert_eq!((cfg.unit_id, cfg.max_gap), (7, 3));
        let e = source("unit = 7", "tags = []").expect_err("a typo is an error");
        assert!(e.to_string().contains("unknown field `unit`"), "{e}");
        let e = source("", "tags = []\ncolour = 1").expect_err("nested typo");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn a_map_belongs_on_an_unscaled_integer_or_bool_tag() -> Result<(), toml::de::Error> {
        let tag = |extra: &str| {
            format!("[[groups.tags]]\nname = \"s\"\narea = \"holding_register\"\naddress = 0\n{extra}\nmap = {{ 1 = \"RUNNING\", 2 = \"IDLE\" }}")
        };
        let cfg = source("equipment_id = \"e\"", &tag("type = \"u16\""))?;
        assert_eq!(problems(&cfg), Vec::<String>::new());
        let map = cfg.1.groups[0].tags[0]
            .map
            .as_ref()
            .expect("the map is read");
        assert_eq!(map.names().collect::<Vec<_>>(), ["RUNNING", "IDLE"]);
        for bad in ["type = \"f32\"", "type = \"u16\"\nscale = 0.1"] {
            let cfg = source("equipment_id = \"e\"", &tag(bad))?;
            let p = problems(&cfg);
            assert!(
                p.iter()
                    .any(|m| m.starts_with("sources[0].groups[0].tags[0].map: maps codes")),
                "{bad}: {p:?}"
            );
        }
        Ok(())
    }
}
