//! Configuration of an S7 source (`type = "s7"`).

use super::address::{self, Address};
use crate::config::Problems;
use crate::sources::config::{check_tag, CommonSourceConfig, GroupChecks};
use crate::sources::exception::{check_tag_exception, WithException};
use serde::Deserialize;
use std::time::Duration;

/// ISO-on-TCP's port.
pub const DEFAULT_PORT: u16 = 102;

/// The S7 keys of a `[[sources]]` table; the shared keys are in [`CommonSourceConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S7SourceConfig {
    /// `host` or `host:port` of the CPU (or its CP); the port defaults to 102.
    pub address: String,
    /// Rack and slot of the CPU: S7-1200/1500 0/1, S7-300 0/2, S7-400 as configured.
    #[serde(default)]
    pub rack: Option<u8>,
    #[serde(default)]
    pub slot: Option<u8>,
    /// Instead of rack and slot: the TSAP pair (e.g. LOGO!, a CP with its own TSAPs).
    #[serde(default)]
    pub local_tsap: Option<u16>,
    #[serde(default)]
    pub remote_tsap: Option<u16>,
    #[serde(default)]
    pub connection_type: ConnectionType,
    /// The PDU size asked for; the CPU grants at most its own (240, 480, 960).
    #[serde(default = "default_pdu")]
    pub pdu_size: u16,
    /// Bytes that may be read in between two tags to merge their items (0 = only adjacent).
    #[serde(default)]
    pub max_gap: u32,
    /// Each with the report-by-exception keys as defaults for its tags.
    pub groups: Vec<WithException<PollGroup>>,
}

/// Which of the CPU's connection resources the agent takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    /// Programming device: the one TIA Portal or STEP 7 needs. Avoid.
    Pg,
    /// Operator panel (HMI): the default.
    #[default]
    Op,
    /// S7 basic communication.
    S7Basic,
}

impl ConnectionType {
    /// The high byte of the remote TSAP.
    pub fn code(self) -> u8 {
        match self {
            ConnectionType::Pg => 1,
            ConnectionType::Op => 2,
            ConnectionType::S7Basic => 3,
        }
    }
}

fn default_pdu() -> u16 {
    960
}

/// Tags polled together at one interval (all groups share the source's connection).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollGroup {
    pub name: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Each with its own report-by-exception keys.
    pub tags: Vec<WithException<S7Tag>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S7Tag {
    /// The tag name; an array address makes one tag per value, `name[0]`, `name[1]`...
    pub name: String,
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// `DB1.DBD4:REAL`, `M10.0`, `IW2`... (docs/s7.md has the table).
    pub address: String,
    /// Codes sent as names (`{ 1 = "RUNNING" }`), the same for every protocol.
    #[serde(default)]
    pub map: Option<crate::sources::value_map::ValueMap>,
}

impl S7Tag {
    pub fn equipment<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.equipment_id.as_deref().or(default)
    }

    /// The tag names its values go under.
    pub fn names(&self, address: &Address) -> Vec<String> {
        if address.array {
            (0..address.count)
                .map(|i| format!("{}[{i}]", self.name))
                .collect()
        } else {
            vec![self.name.clone()]
        }
    }
}

impl S7SourceConfig {
    /// `host:port`, the port defaulted.
    pub fn socket_address(&self) -> String {
        let a = self.address.trim();
        if a.parse::<std::net::SocketAddr>().is_ok() {
            return a.to_owned();
        }
        match a.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => {
                a.to_owned()
            }
            _ if a.contains(':') && !a.starts_with('[') => format!("[{a}]:{DEFAULT_PORT}"),
            _ => format!("{a}:{DEFAULT_PORT}"),
        }
    }

    /// (local, remote) TSAP: given, or from rack, slot and connection type.
    pub fn tsaps(&self) -> (u16, u16) {
        match (self.local_tsap, self.remote_tsap) {
            (Some(l), Some(r)) => (l, r),
            _ => {
                let rack = u16::from(self.rack.unwrap_or(0));
                let slot = u16::from(self.slot.unwrap_or(1));
                (
                    0x0100,
                    (u16::from(self.connection_type.code()) << 8) | (rack * 0x20 + slot),
                )
            }
        }
    }

    pub fn tag_count(&self) -> usize {
        // Array tags count once per value; unparsable addresses once.
        self.groups
            .iter()
            .flat_map(|g| &g.tags)
            .map(|t| address::parse(&t.address).map_or(1, |a| usize::from(a.count.max(1))))
            .sum()
    }

    pub fn validate(&self, common: &CommonSourceConfig, key: &str, p: &mut Problems) {
        let sa = self.socket_address();
        let host_ok = match sa.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !host.chars().any(char::is_whitespace)
                    && port.parse::<u16>().is_ok()
            }
            None => false,
        };
        if self.address.trim().is_empty() || !host_ok {
            p.push(
                format!("{key}.address"),
                format!(
                    "{:?} must be host or host:port (e.g. 192.168.0.10 or 192.168.0.10:102)",
                    self.address
                ),
            );
        }
        let tsap = self.local_tsap.is_some() || self.remote_tsap.is_some();
        if tsap && (self.local_tsap.is_none() || self.remote_tsap.is_none()) {
            p.push(
                format!("{key}.local_tsap"),
                "local_tsap and remote_tsap go together",
            );
        }
        if tsap && (self.rack.is_some() || self.slot.is_some()) {
            p.push(
                format!("{key}.rack"),
                "give rack and slot, or a TSAP pair, not both",
            );
        }
        if self.rack.is_some_and(|r| r > 7) {
            p.push(format!("{key}.rack"), "must be 0..7");
        }
        if self.slot.is_some_and(|s| s > 31) {
            p.push(format!("{key}.slot"), "must be 0..31");
        }
        if !(240..=960).contains(&self.pdu_size) {
            p.push(
                format!("{key}.pdu_size"),
                "must be 240..960 (S7 CPUs grant 240, 480 or 960)",
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
                if let Some(map) = &t.map {
                    map.validate(&tk, p);
                }
                match address::parse(&t.address) {
                    Ok(a) => {
                        let numeric = a.data_type.is_number() && t.map.is_none();
                        check_tag_exception(p, &tk, &t.exception, &g.exception, numeric);
                        for name in t.names(&a) {
                            checks.tag_name(p, &tk, eq, &name);
                        }
                    }
                    Err(e) => p.push(format!("{tk}.address"), format!("tag {:?}: {e}", t.name)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::split;

    type Source = (CommonSourceConfig, S7SourceConfig);

    fn source(extra: &str, tags: &str) -> Result<Source, toml::de::Error> {
        split(toml::from_str(&format!(
            "id = \"plc1\"\nequipment_id = \"filler\"\naddress = \"127.0.0.1\"\n{extra}\n[[groups]]\nname = \"fast\"\ninterval = \"1s\"\n{tags}"
        ))?)
    }

    fn problems((common, cfg): &Source) -> Vec<String> {
        let mut p = Problems::default();
        common.validate("sources[0]", &mut p);
        cfg.validate(common, "sources[0]", &mut p);
        p.to_strings()
    }

    #[test]
    fn a_valid_source_and_its_defaults() -> Result<(), toml::de::Error> {
        let cfg = source(
            "",
            "tags = [{ name = \"t\", address = \"DB1.DBD4:REAL\" }, { name = \"a\", address = \"DB1.DBW10:INT[3]\" }]",
        )?;
        assert_eq!(problems(&cfg), Vec::<String>::new());
        let c = &cfg.1;
        assert_eq!(c.socket_address(), "127.0.0.1:102");
        // OP connection to rack 0 slot 1.
        assert_eq!(c.tsaps(), (0x0100, 0x0201));
        assert_eq!((c.pdu_size, c.tag_count()), (960, 4));
        Ok(())
    }

    #[test]
    fn tsaps_ports_and_connection_types() -> Result<(), toml::de::Error> {
        let (_, c) = source("rack = 0\nslot = 2\nconnection_type = \"pg\"", "tags = []")?;
        assert_eq!(c.tsaps(), (0x0100, 0x0102));
        let (_, c) = source("local_tsap = 0x1000\nremote_tsap = 0x2000", "tags = []")?;
        assert_eq!(c.tsaps(), (0x1000, 0x2000));
        let (_, c) = source(
            "connection_type = \"s7_basic\"\nrack = 1\nslot = 3",
            "tags = []",
        )?;
        assert_eq!(c.tsaps().1, 0x0323);
        let mut c = c;
        c.address = "plc.local:1102".into();
        assert_eq!(c.socket_address(), "plc.local:1102");
        c.address = "::1".into();
        assert_eq!(c.socket_address(), "[::1]:102");
        Ok(())
    }

    #[test]
    fn bad_addresses_name_the_key_the_tag_and_the_address() -> Result<(), toml::de::Error> {
        let cfg = source(
            "rack = 9\nlocal_tsap = 1\npdu_size = 100",
            "tags = [{ name = \"temp\", address = \"DB1.DBQ4\" }, { name = \"temp\", address = \"MW2\" }, { name = \"x\", address = \"DB1.DBX0.0:BOOL[2]\" }, { name = \"x[1]\", address = \"M0.0\" }]",
        )?;
        let p = problems(&cfg);
        let want = [
            "sources[0].local_tsap: local_tsap and remote_tsap go together",
            "sources[0].rack: give rack and slot, or a TSAP pair, not both",
            "sources[0].rack: must be 0..7",
            "sources[0].pdu_size: must be 240..960 (S7 CPUs grant 240, 480 or 960)",
            "sources[0].groups[0].tags[0].address: tag \"temp\": \"DB1.DBQ4\": at 6: expected a width after DB1.DB: X (bit), B (byte), W (word) or D (double word), found 'Q'",
            "sources[0].groups[0].tags[3].name: duplicate tag \"x[1]\" for this equipment",
        ];
        assert_eq!(p, want);
        Ok(())
    }

    #[test]
    fn typos_are_refused() {
        let e = source("slott = 1", "tags = []").expect_err("typo");
        assert!(e.to_string().contains("unknown field `slott`"), "{e}");
        let e = source("connection_type = \"hmi\"", "tags = []").expect_err("bad variant");
        assert!(e.to_string().contains("unknown variant `hmi`"), "{e}");
    }
}
