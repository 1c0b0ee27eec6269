//! A hash map keyed by a pair of strings — (equipment, tag), (gateway, source) —
//! looked up with borrowed `&str`s: one probe and one key comparison per lookup,
//! no allocation. Used on every data point, so it matters.

use hashbrown::{Equivalent, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

/// Fixed seeds: lookups are reproducible from run to run.
#[derive(Clone, Default)]
pub(crate) struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        ahash::RandomState::with_seeds(
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        )
        .build_hasher()
    }
}

/// Both strings in one allocation.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    joined: Box<str>,
    split: u32,
}

impl Key {
    fn new(a: &str, b: &str) -> Self {
        let mut s = String::with_capacity(a.len() + b.len());
        s.push_str(a);
        s.push_str(b);
        Key {
            joined: s.into_boxed_str(),
            split: a.len() as u32,
        }
    }
    fn parts(&self) -> (&str, &str) {
        self.joined.split_at(self.split as usize)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let (a, b) = self.parts();
        a.hash(h);
        b.hash(h);
    }
}

/// The borrowed form; hashes exactly like [`Key`].
#[derive(Hash)]
struct Pair<'a>(&'a str, &'a str);

impl Equivalent<Key> for Pair<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        key.parts() == (self.0, self.1)
    }
}

#[derive(Clone)]
pub(crate) struct PairMap<V> {
    map: HashMap<Key, V, FixedState>,
}

impl<V> std::fmt::Debug for PairMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairMap")
            .field("len", &self.map.len())
            .finish()
    }
}

impl<V> Default for PairMap<V> {
    fn default() -> Self {
        PairMap {
            map: HashMap::with_hasher(FixedState),
        }
    }
}

impl<V> PairMap<V> {
    pub fn get(&self, a: &str, b: &str) -> Option<&V> {
        self.map.get(&Pair(a, b))
    }

    pub fn get_mut(&mut self, a: &str, b: &str) -> Option<&mut V> {
        self.map.get_mut(&Pair(a, b))
    }

    pub fn contains(&self, a: &str, b: &str) -> bool {
        self.map.contains_key(&Pair(a, b))
    }

    pub fn get_or_insert_with(&mut self, a: &str, b: &str, f: impl FnOnce() -> V) -> &mut V {
        self.map
            .raw_entry_mut()
            .from_key(&Pair(a, b))
            .or_insert_with(|| (Key::new(a, b), f()))
            .1
    }

    pub fn remove(&mut self, a: &str, b: &str) -> Option<V> {
        let v = self.map.remove(&Pair(a, b));
        // Maps keep their capacity when emptied; give memory back after mass deletes.
        if self.map.capacity() > 64 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
        v
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_told_apart_where_the_split_differs() {
        let mut m = PairMap::default();
        *m.get_or_insert_with("ab", "c", || 0) += 1;
        *m.get_or_insert_with("a", "bc", || 10) += 1;
        *m.get_or_insert_with("ab", "c", || 0) += 1;
        assert_eq!(m.get("ab", "c"), Some(&2));
        assert_eq!(m.get("a", "bc"), Some(&11));
        assert_eq!(m.get("abc", ""), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("ab", "c"), Some(2));
        assert!(!m.contains("ab", "c"));
    }
}
