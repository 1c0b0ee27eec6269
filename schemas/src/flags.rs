//! Data point flags, kept as a bit set: a point carries at most six, and the
//! agent builds hundreds of thousands of points a second.
//!
//! Forward compatible: a reader skips a flag it does not know if the name is
//! well formed (three letters, the first upper case, like every flag here), so a
//! newer writer's flags do not make an older reader refuse the point. Anything
//! else in `flags` is refused.

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
    /// Backfill: read while the uplink was down, sent from the backlog behind live data.
    Bfl = 5,
}

impl Flag {
    pub const ALL: [Flag; 6] = [
        Flag::Fst,
        Flag::Lst,
        Flag::Wmk,
        Flag::Syn,
        Flag::Ats,
        Flag::Bfl,
    ];
    const NAMES: [&'static str; 6] = ["Fst", "Lst", "Wmk", "Syn", "Ats", "Bfl"];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Fst => "Fst",
            Flag::Lst => "Lst",
            Flag::Wmk => "Wmk",
            Flag::Syn => "Syn",
            Flag::Ats => "Ats",
            Flag::Bfl => "Bfl",
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

/// A name a later version may give a flag: three ASCII letters, the first upper case.
fn is_flag_shaped(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_lowercase)
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Flag::parse(&name).ok_or_else(|| de::Error::unknown_variant(&name, &Flag::NAMES))
    }
}

/// One element of `flags`: a known flag, or a well-formed one from a later version.
enum Element {
    Known(Flag),
    Later,
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        match Flag::parse(&name) {
            Some(f) => Ok(Element::Known(f)),
            None if is_flag_shaped(&name) => Ok(Element::Later),
            None => Err(de::Error::unknown_variant(&name, &Flag::NAMES)),
        }
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
                f.write_str("an array of flags (Fst, Lst, Wmk, Syn, Ats, Bfl)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Flags, A::Error> {
                let mut flags = Flags::empty();
                // Each element is parsed on its own, so a bad one is reported at its index.
                while let Some(e) = seq.next_element::<Element>()? {
                    if let Element::Known(flag) = e {
                        flags.insert(flag);
                    }
                }
                Ok(flags)
            }
        }
        d.deserialize_seq(V)
    }
}
