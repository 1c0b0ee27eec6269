//! Reading a config file so that `check` reports every problem in one round: each with
//! its full key path (`sources[0].groups[1].tags[3].area`), its line, and for an unknown
//! key or value the nearest known spelling.
//!
//! serde stops at the first error. [`load_all`] reads the file as a `toml::Table`,
//! deserializes it (through `serde_path_to_error`, which names the key at fault), and on
//! an error records it, takes the offending key out of the table and tries again, until
//! the rest deserializes. What remains is a value the caller can still validate, so
//! semantic problems are reported next to the type errors; [`Loaded::original_key`] maps
//! their paths back when a whole array element had to be taken out.
//!
//! A [`Split`](super::Split) table is buffered, so serde's own path stops at the table;
//! `Split` puts the key inside it in front of its message (`groups[1].tags[3].area: …`)
//! and this module joins the two. Lines come from the spanned document
//! ([`toml::de::DeTable`]), looked up by key path, so they are right however the table
//! was buffered.

use crate::problems::{Problem, Problems};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use toml::de::{DeTable, DeValue};

/// Give up after this many problems (each costs one more deserialization).
const MAX_PROBLEMS: usize = 200;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `sources[0].groups[1].name` → segments; the inverse of [`render`].
pub fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if key.is_empty() && out.is_empty() {
            return None;
        }
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// Segments → `sources[0].groups[1].name`.
pub fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A deserialized file and the problems met on the way.
#[derive(Debug)]
pub struct Loaded<T> {
    /// What deserialized once every bad key was taken out.
    pub value: T,
    /// Type errors, unknown and missing keys, each with its key path (as in the file) and line.
    pub problems: Problems,
    /// Array elements taken out, by their array's path as in the file: original indices.
    removed: BTreeMap<Vec<Seg>, BTreeSet<usize>>,
    /// Keys already reported (as in the file): validating the stand-in value put there
    /// would only report them again.
    taken: BTreeSet<Vec<Seg>>,
}

impl<T> Loaded<T> {
    /// A key path of [`Loaded::value`] (e.g. from validating it) as it is in the file.
    pub fn original_key(&self, key: &str) -> String {
        match parse_path(key) {
            Some(p) => render(&to_original(&p, &self.removed)),
            None => key.to_owned(),
        }
    }

    /// The value, or every problem: those met reading it and `found` (by validating
    /// [`Loaded::value`]), keys as in the file, each with its line, in file order.
    pub fn finish(mut self, text: &str, found: Problems) -> Result<T, Problems> {
        self.extend_from_value(found);
        if self.problems.is_empty() {
            return Ok(self.value);
        }
        let lines = Lines::new(text);
        for p in self.problems.iter_mut() {
            p.line = p.line.or_else(|| lines.line_of(&p.key));
        }
        self.problems.sort_by_line();
        Err(self.problems)
    }

    /// Adds `p` (found in [`Loaded::value`]), its keys as in the file.
    pub fn extend_from_value(&mut self, p: Problems) {
        let mapped: Vec<Problem> = p
            .into_iter()
            .filter_map(|mut x| {
                let path = parse_path(&x.key).map(|p| to_original(&p, &self.removed));
                if let Some(path) = &path {
                    if self.taken.iter().any(|t| path.starts_with(t)) {
                        return None;
                    }
                    x.key = render(path);
                }
                Some(x)
            })
            .collect();
        self.problems.extend(mapped);
    }
}

/// Reads `text` as `T`, collecting every problem serde meets (see the module doc).
/// `Err` only when nothing can be read: TOML syntax errors (all of them, with lines), or a
/// file whose top level itself is unusable.
pub fn load_all<T: DeserializeOwned>(text: &str) -> Result<Loaded<T>, Problems> {
    let lines = Lines::new(text);
    let (_, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut p = Problems::new();
        for e in syntax {
            let mut problem = Problem::new("", e.message().trim());
            problem.line = e.span().map(|s| lines.line_at(s.start));
            p.extend([problem]);
        }
        return Err(p);
    }
    let mut doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let mut problem = Problem::new("", e.message().trim());
            problem.line = e.span().map(|s| lines.line_at(s.start));
            return Err(Problems::from(vec![problem]));
        }
    };
    let mut problems = Problems::new();
    let mut removed: BTreeMap<Vec<Seg>, BTreeSet<usize>> = BTreeMap::new();
    // Keys already reported (as in the file): later errors there are our own doing.
    let mut taken: BTreeSet<Vec<Seg>> = BTreeSet::new();
    let done = |mut problems: Problems| {
        for p in problems.iter_mut() {
            p.line = p.line.or_else(|| lines.line_of(&p.key));
        }
        problems.sort_by_line();
        problems
    };
    loop {
        let (key, message) = match first_error::<T>(&doc) {
            Ok(value) => {
                return Ok(Loaded {
                    value,
                    problems: done(problems),
                    removed,
                    taken,
                })
            }
            Err(e) => e,
        };
        let missing = message_field(&message, "missing field `").is_some();
        let unknown = message_field(&message, "unknown field `").is_some();
        let original = to_original(&key, &removed);
        if taken.insert(original.clone()) {
            problems.push(render(&original), explain(&message));
        }
        // Get further: an unknown key goes; a bad or missing value is replaced by one of
        // the right type, so the keys after it in the same table are still checked; if
        // none fits, the key goes, and last the table around it.
        let fixed = if unknown {
            remove_at(&mut doc, &key, &mut removed)
        } else {
            probe::<T>(&mut doc, &key, &message)
                || (!missing && remove_at(&mut doc, &key, &mut removed))
        };
        let fixed = fixed || {
            let parent = &key[..key.len().saturating_sub(1)];
            !parent.is_empty() && remove_at(&mut doc, parent, &mut removed)
        };
        if !fixed {
            // Nothing left to take out: the top level itself is at fault.
            return Err(done(problems));
        }
        if problems.len() >= MAX_PROBLEMS {
            problems.push("", format!("stopped after {MAX_PROBLEMS} problems"));
            return Err(done(problems));
        }
    }
}

/// Deserializes `doc`; on an error, the full key path at fault (in `doc`'s current
/// indices) and serde's message.
fn first_error<T: DeserializeOwned>(doc: &toml::Table) -> Result<T, (Vec<Seg>, String)> {
    let err = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(doc.clone())) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let outer: Vec<Seg> = err
        .path()
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            _ => None,
        })
        .collect();
    let message = err.into_inner().message().trim().to_owned();
    let (mut at, message) = locate(doc, outer, &message);
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(field) = message_field(&message, prefix) {
            if !ends_with_key(&at, field) {
                at.push(Seg::Key(field.to_owned()));
            }
        }
    }
    Err((at, message))
}

/// Puts values of common types at `key` until the first error is elsewhere; `false` (and
/// the key as it was) when none fits. The first value a serde message expects comes first
/// (`` expected one of `coil`, … `` → `"coil"`).
fn probe<T: DeserializeOwned>(doc: &mut toml::Table, key: &[Seg], message: &str) -> bool {
    let Some((Seg::Key(last), parent)) = key.split_last() else {
        return false;
    };
    if !parent.is_empty() && !matches!(get(doc, parent), Some(toml::Value::Table(_))) {
        return false;
    }
    let mut candidates: Vec<toml::Value> = expected_names(message)
        .into_iter()
        .take(1)
        .map(toml::Value::String)
        .collect();
    candidates.extend([
        toml::Value::Integer(1),
        toml::Value::String("1s".into()),
        toml::Value::Boolean(false),
        toml::Value::Float(1.0),
        toml::Value::String("127.0.0.1:1".into()),
        toml::Value::Array(Vec::new()),
        toml::Value::Table(toml::Table::new()),
    ]);
    let before = get(doc, key).cloned();
    for c in candidates {
        set_at(doc, parent, last, Some(c));
        match first_error::<T>(doc) {
            Ok(_) => return true,
            Err((at, _)) if at != key => return true,
            Err(_) => {}
        }
    }
    set_at(doc, parent, last, before);
    false
}

/// Sets (or with `None` removes) `key` in the table at `parent`.
fn set_at(doc: &mut toml::Table, parent: &[Seg], key: &str, value: Option<toml::Value>) {
    let table = if parent.is_empty() {
        Some(doc)
    } else {
        match get_mut(doc, parent) {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None,
        }
    };
    if let Some(t) = table {
        match value {
            Some(v) => {
                t.insert(key.to_owned(), v);
            }
            None => {
                t.remove(key);
            }
        }
    }
}

/// `outer` (serde's path, which stops at a buffered table) joined with a key path that a
/// [`Split`](super::Split) table put in front of `message`, when that key exists there.
/// Split tables inside split tables (a tag inside a group) put one path each, outermost
/// first: `groups[0]: tags[1]: unknown field …`.
fn locate(doc: &toml::Table, outer: Vec<Seg>, message: &str) -> (Vec<Seg>, String) {
    let (mut at, mut rest) = (outer, message);
    while let Some((head, tail)) = rest.split_once(": ") {
        let Some(inner) = parse_path(head) else {
            break;
        };
        let mut full = at.clone();
        full.extend(inner);
        if get(doc, &full).is_none() {
            break;
        }
        (at, rest) = (full, tail);
    }
    (at, rest.to_owned())
}

fn ends_with_key(path: &[Seg], key: &str) -> bool {
    matches!(path.last(), Some(Seg::Key(k)) if k == key)
}

/// The name in `` `name` `` right after `prefix` in `message`.
fn message_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The message in config-file words, with the nearest spelling of an unknown key or value.
fn explain(message: &str) -> String {
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        let Some(name) = message_field(message, prefix) else {
            continue;
        };
        let known = expected_names(message);
        return match suggest(name, &known) {
            Some(s) => format!("unknown {what} `{name}`: did you mean `{s}`?"),
            None if known.is_empty() => format!("unknown {what} `{name}`"),
            None => format!(
                "unknown {what} `{name}`, expected one of {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    message.to_owned()
}

/// The `` `a` ``, `` `b` `` names after "expected" in a serde message.
fn expected_names(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The known name nearest to `name`, if it is near enough to be a typo: at most a third of
/// its characters edited (at least one), or one the other starts with.
pub fn suggest<'k>(name: &str, known: &'k [String]) -> Option<&'k str> {
    let (distance, best) = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .min_by_key(|(d, _)| *d)?;
    if distance <= (name.chars().count() / 3).max(1) {
        return Some(best);
    }
    // A shortened or lengthened key (`heartbeat` for `heartbeat_interval`).
    known
        .iter()
        .find(|k| name.len() >= 4 && (k.starts_with(name) || name.starts_with(k.as_str())))
        .map(String::as_str)
}

fn get<'d>(doc: &'d toml::Table, path: &[Seg]) -> Option<&'d toml::Value> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else { return None };
    let mut v = doc.get(k)?;
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Takes the key or array element at `path` (current indices) out of `doc`, recording
/// an element in `removed` (as in the file). `false` if it is not there.
fn remove_at(
    doc: &mut toml::Table,
    path: &[Seg],
    removed: &mut BTreeMap<Vec<Seg>, BTreeSet<usize>>,
) -> bool {
    let original = to_original(path, removed);
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let container = if parent.is_empty() {
        None
    } else {
        match get_mut(doc, parent) {
            Some(v) => Some(v),
            None => return false,
        }
    };
    match (last, container) {
        (Seg::Key(k), None) => doc.remove(k).is_some(),
        (Seg::Key(k), Some(toml::Value::Table(t))) => t.remove(k).is_some(),
        (Seg::Index(i), Some(toml::Value::Array(a))) if *i < a.len() => {
            a.remove(*i);
            if let Some((Seg::Index(orig), array)) = original.split_last() {
                removed.entry(array.to_vec()).or_default().insert(*orig);
            }
            true
        }
        _ => false,
    }
}

fn get_mut<'d>(doc: &'d mut toml::Table, path: &[Seg]) -> Option<&'d mut toml::Value> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else { return None };
    let mut v = doc.get_mut(k)?;
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A path with current indices → the file's indices, given the elements taken out.
fn to_original(path: &[Seg], removed: &BTreeMap<Vec<Seg>, BTreeSet<usize>>) -> Vec<Seg> {
    let mut out: Vec<Seg> = Vec::with_capacity(path.len());
    for seg in path {
        match seg {
            Seg::Index(i) => {
                let gone = removed.get(&out);
                // The i-th element still there is the i-th original index not taken out.
                let mut n = 0;
                let mut orig = 0;
                loop {
                    if !gone.is_some_and(|g| g.contains(&orig)) {
                        if n == *i {
                            break;
                        }
                        n += 1;
                    }
                    orig += 1;
                }
                out.push(Seg::Index(orig));
            }
            key => out.push(key.clone()),
        }
    }
    out
}

/// Line numbers of key paths, from the spanned document.
pub struct Lines<'t> {
    text: &'t str,
    doc: Option<toml::Spanned<DeTable<'t>>>,
}

impl<'t> Lines<'t> {
    pub fn new(text: &'t str) -> Lines<'t> {
        Lines {
            text,
            doc: DeTable::parse(text).ok(),
        }
    }

    /// 1-based line of byte offset `at`.
    pub fn line_at(&self, at: usize) -> usize {
        let at = at.min(self.text.len());
        self.text.as_bytes()[..at]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// The line of `key` (e.g. `sources[0].groups[1].tags[3].area`); for a key that is
    /// not in the file (a missing one), the line of the nearest table around it.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let path = parse_path(key)?;
        let doc = self.doc.as_ref()?;
        let mut table: &DeTable<'_> = doc.get_ref();
        let mut best: Option<usize> = None;
        let mut segs = path.iter().peekable();
        while let Some(seg) = segs.next() {
            let Seg::Key(k) = seg else {
                return best.map(|b| self.line_at(b));
            };
            let Some((key, value)) = table.get_key_value(k.as_str()) else {
                return best.map(|b| self.line_at(b));
            };
            best = Some(key.span().start);
            let mut v = value;
            while let Some(Seg::Index(i)) = segs.peek() {
                segs.next();
                let DeValue::Array(a) = v.get_ref() else {
                    return best.map(|b| self.line_at(b));
                };
                let Some(item) = a.get(*i) else {
                    return best.map(|b| self.line_at(b));
                };
                best = Some(item.span().start);
                v = item;
            }
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        best.map(|b| self.line_at(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Split;
    use serde::Deserialize;

    /// toml's own error text quotes the offending line, which may hold a secret: a
    /// problem names the line and the key, never the line's text.
    #[test]
    fn problems_never_quote_the_line() {
        #[allow(dead_code)]
        #[derive(Debug, Deserialize)]
        struct C {
            password: String,
            port: u16,
        }
        // A syntax error and a type error, each on a line that holds the secret.
        for text in [
            "password = \"hunter2\" oops\nport = 1\n",
            "password = \"hunter2\" ; port = 1\n",
            "port = 1\npassword = [\"hunter2\"]\n",
        ] {
            let e = toml::from_str::<C>(text).unwrap_err();
            assert!(
                e.to_string().contains("hunter2"),
                "toml's own text quotes it"
            );
            let shown = match load_all::<C>(text) {
                Err(p) => p.to_string(),
                Ok(loaded) => loaded
                    .finish(text, Problems::new())
                    .expect_err("a problem")
                    .to_string(),
            };
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    // The fields are only deserialized: what is checked is what serde reports.
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        name: String,
        #[serde(default)]
        limits: Limits,
        #[serde(default)]
        items: Vec<Split<Common, Item>>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default)]
        max: u8,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Common {
        id: String,
        #[serde(default)]
        timeout: u32,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[serde(default)]
        unit_id: u8,
        #[serde(default)]
        parts: Vec<Part>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Part {
        area: Area,
        #[serde(default)]
        address: u16,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Area {
        Coil,
        DiscreteInput,
    }

    const FILE: &str = r#"name = "plant"
[limits]
max = 300

[[items]]
id = "a"
unit_id = 300
timout = 5

  [[items.parts]]
  area = "coil"

  [[items.parts]]
  area = "discrete"
  adress = 4

[[items]]
unit_id = 2

[[items]]
id = "c"
  [[items.parts]]
  area = "coil"
  address = "x"
"#;

    fn shown(p: &Problems) -> Vec<String> {
        p.iter()
            .map(|p| format!("{}:{}: {}", p.line.unwrap_or(0), p.key, p.message))
            .collect()
    }

    #[test]
    fn every_problem_with_its_full_key_and_line() {
        let loaded = load_all::<File>(FILE).expect("readable");
        assert_eq!(
            shown(&loaded.problems),
            [
                "3:limits.max: invalid value: integer `300`, expected u8",
                "7:items[0].unit_id: invalid value: integer `300`, expected u8",
                "8:items[0].timout: unknown key `timout`: did you mean `timeout`?",
                "14:items[0].parts[1].area: unknown value `discrete`: did you mean `discrete_input`?",
                "15:items[0].parts[1].adress: unknown key `adress`: did you mean `address`?",
                "17:items[1].id: missing field `id`",
                "24:items[2].parts[0].address: invalid type: string \"x\", expected u16",
            ],
        );
        // Stand-ins for the bad values keep every item: the rest can still be validated.
        assert_eq!(loaded.value.items.len(), 3);
    }

    #[test]
    fn indices_map_back_to_the_file_after_an_element_is_taken_out() {
        let removed = BTreeMap::from([
            (vec![Seg::Key("items".into())], BTreeSet::from([1])),
            (
                vec![
                    Seg::Key("items".into()),
                    Seg::Index(2),
                    Seg::Key("parts".into()),
                ],
                BTreeSet::from([0, 1]),
            ),
        ]);
        let back = |k: &str| render(&to_original(&parse_path(k).expect("path"), &removed));
        assert_eq!(back("items[0].id"), "items[0].id");
        assert_eq!(back("items[1].parts[0].area"), "items[2].parts[2].area");
        assert_eq!(back("items[2]"), "items[3]");
    }

    #[test]
    fn syntax_errors_are_all_reported_with_lines() {
        let p = load_all::<File>("name = \"a\"\nx = = 1\ny = [\n").expect_err("not TOML");
        assert!(!p.is_empty());
        assert!(p.iter().all(|p| p.line.is_some()), "{p:?}");
        assert_eq!(p.iter().next().and_then(|p| p.line), Some(2));
    }

    #[test]
    fn a_missing_top_level_key_is_reported() {
        let p = match load_all::<File>("[limits]\nmax = 1\n") {
            Ok(l) => l.problems,
            Err(p) => p,
        };
        assert_eq!(shown(&p), ["0:name: missing field `name`"]);
    }

    #[test]
    fn paths_round_trip() {
        for p in ["a", "sources[0].groups[12].tags[3].area", "m.1", "x[0][1]"] {
            assert_eq!(parse_path(p).map(|s| render(&s)).as_deref(), Some(p));
        }
        assert_eq!(parse_path("a[x]"), None);
    }

    #[test]
    fn suggestions_are_near_spellings_only() {
        let known: Vec<String> = ["timeout", "heartbeat_interval", "address"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            suggest("heartbeat_intervall", &known),
            Some("heartbeat_interval")
        );
        assert_eq!(suggest("adress", &known), Some("address"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(suggest("heartbeat", &known), Some("heartbeat_interval"));
    }
}
