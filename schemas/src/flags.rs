//! Data point flags, kept as a bit set: a point carries at most five, and the
//! agent builds hundreds of thousands of points a second.

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One flag. The wire names are fixed by the data point schema (`schemas/datapoint.v1.schema.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Flag {
    /// First record of a source after it (re)connected.
    Fst = 0,
    /// Last record before a planned stop.
    Lst = 1,
    /// Heartbeat: the source is alive and its clock reached `timestamp`.
    Wmk = 2,
    /// Synthesised by the agent (e.g. a `Bad` record when a connection is lost).
    Syn = 3,
    /// Timestamp assigned by the agent, not the source.
    Ats = 4,
}

impl Flag {
    pub const ALL: [Flag; 5] = [Flag::Fst, Flag::Lst, Flag::Wmk, Flag::Syn, Flag::Ats];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Fst => "Fst",
            Flag::Lst => "Lst",
            Flag::Wmk => "Wmk",
            Flag::Syn => "Syn",
            Flag::Ats => "Ats",
        }
    }

    pub fn parse(s: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// A set of [`Flag`]s; serialised as a JSON array of names in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    pub const fn empty() -> Self {
        Flags(0)
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn contains(&self, f: Flag) -> bool {
        self.0 & (1 << f as u8) != 0
    }
    pub fn insert(&mut self, f: Flag) {
        self.0 |= 1 << f as u8;
    }
    pub fn with(mut self, f: Flag) -> Self {
        self.insert(f);
        self
    }
    pub fn iter(&self) -> impl Iterator<Item = Flag> + '_ {
        Flag::ALL.into_iter().filter(|f| self.contains(*f))
    }
}

impl FromIterator<Flag> for Flags {
    fn from_iter<I: IntoIterator<Item = Flag>>(iter: I) -> Self {
        let mut s = Flags::empty();
        for f in iter {
            s.insert(f);
        }
        s
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Flag::parse(&name)
            .ok_or_else(|| de::Error::unknown_variant(&name, &["Fst", "Lst", "Wmk", "Syn", "Ats"]))
    }
}

impl Serialize for Flags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.count_ones() as usize))?;
        for f in self.iter() {
            seq.serialize_element(f.as_str())?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flags;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of flags (Fst, Lst, Wmk, Syn, Ats)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Flags, A::Error> {
                let mut flags = Flags::empty();
                // Each element is parsed as a `Flag`, so a bad one is reported at its index.
                while let Some(flag) = seq.next_element::<Flag>()? {
                    flags.insert(flag);
                }
                Ok(flags)
            }
        }
        d.deserialize_seq(V)
    }
}
