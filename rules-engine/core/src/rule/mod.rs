//! A rule: one Rhai script that evaluates to its definition. Compiled and checked
//! once; groups are later called from the compiled form.

mod error;
mod fingerprint;
mod sandbox;

pub use error::{RuleError, RuleErrorKind};
pub(crate) use sandbox::{explain, is_deadline_message, FailureKind, ScriptFailure};
pub use sandbox::{Limits, Sandbox, DEFAULT_MAX_FAN_OUT};

use rhai::{Dynamic, FnPtr, ImmutableString, Map, AST};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Severity order used when a rule does not list its states (least to most severe).
pub const DEFAULT_STATES: [&str; 5] = ["OK", "IDLE", "ACTIVE", "WARNING", "ERROR"];

pub const MAX_ID_LEN: usize = 128;
pub const MAX_STATES: usize = 64;
pub const MAX_GROUPS: usize = 64;
pub const MAX_TAGS_PER_GROUP: usize = 32;
pub const MAX_EQUIPMENT: usize = 1024;
pub const MAX_WEIGHT: i64 = 1_000_000;
/// Same bound as the data point contract (a Kinesis partition key).
pub const MAX_EQUIPMENT_ID_LEN: usize = 256;

/// A compiled, validated rule. Cheap to share (`Arc<Rule>`) between workers.
///
/// What depends only on the script's code (states, groups, tags, compiled functions)
/// lives in a [`Shape`] shared by every rule with identical code — rules made from
/// one template differ only in id, equipment and captured constants — so thousands
/// of such rules cost one copy of the code, which also stays hot in the CPU cache.
pub struct Rule {
    pub(crate) id: String,
    pub(crate) version: u64,
    pub(crate) description: Option<String>,
    pub(crate) equipment: Vec<String>,
    /// Per group: the variables its closure captured from the script's top level.
    pub(crate) curry: Vec<Vec<Dynamic>>,
    /// Per group: what "unchanged" means on update (code and captured values).
    pub(crate) fingerprints: Vec<u64>,
    pub(crate) shape: Arc<Shape>,
    pub(crate) origin: String,
    pub(crate) footprint: Footprint,
}

/// What a rule costs, estimated at load from what it declares (deterministic: the
/// same text gives the same figures on any machine and under any load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Equipment × the tags of every group: slots of per-equipment state.
    pub fan_out: u64,
    /// Estimated bytes: source, equipment ids, captured values, state slots.
    pub bytes: u64,
}

/// Bytes one (equipment, group tag) slot of state costs at most: the last value, its
/// quality and time, and the map entry holding them (measured: 40–150 bytes).
pub const SLOT_BYTES: u64 = 160;
/// Per equipment: its id's entry, current state, pending hold.
pub const EQUIPMENT_BYTES: u64 = 256;

/// The code of a rule: everything but its id, version, equipment and captured values.
pub struct Shape {
    pub(crate) states: Vec<String>,
    pub(crate) groups: Vec<Group>,
    /// Distinct tags over all groups, in first-seen order.
    pub(crate) tags: Vec<String>,
    /// For each tag (index into `tags`), the groups reading it.
    pub(crate) tag_groups: Vec<Vec<u16>>,
    /// Functions only: the top-level statements ran once and are dropped.
    pub(crate) ast: AST,
}

/// One condition group of a rule.
pub struct Group {
    pub(crate) name: String,
    pub(crate) weight: u32,
    /// Indices into the shape's `tags`, sorted by tag name: the order a Rhai map
    /// holds its keys.
    pub(crate) tags: Vec<u16>,
    /// The tag names as Rhai map keys, in the same order.
    pub(crate) keys: Vec<String>,
    pub(crate) hold_ms: u64,
    pub(crate) function: ImmutableString,
    /// The closure captured variables (passed before `v`).
    pub(crate) captures: bool,
    /// Fingerprint of the code alone; the rule's fingerprint adds captured values.
    pub(crate) code_fingerprint: u64,
    /// Line of the group's function in the script, for error messages.
    pub(crate) line: Option<usize>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("equipment", &self.equipment)
            .field("states", &self.shape.states)
            .field("groups", &self.shape.groups)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("hold_ms", &self.hold_ms)
            .finish_non_exhaustive()
    }
}

impl Rule {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    pub fn equipment(&self) -> &[String] {
        &self.equipment
    }
    /// States, least to most severe.
    pub fn states(&self) -> &[String] {
        &self.shape.states
    }
    pub fn groups(&self) -> &[Group] {
        &self.shape.groups
    }
    /// Every tag any group reads.
    pub fn tags(&self) -> &[String] {
        &self.shape.tags
    }
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The load-time estimate the memory budgets are checked against.
    pub fn footprint(&self) -> Footprint {
        self.footprint
    }
    /// Does this rule share its compiled code with `other`?
    pub fn shares_code_with(&self, other: &Rule) -> bool {
        Arc::ptr_eq(&self.shape, &other.shape)
    }

    /// The same rule under another version: on the control topic the message's
    /// version is authoritative (the CLI numbers versions, not the script author).
    pub fn with_version(mut self, version: u64) -> Rule {
        self.version = version;
        self
    }

    /// Compile `source` (from `origin`, e.g. a file name) into a rule.
    pub fn compile(sandbox: &Sandbox, source: &str, origin: &str) -> Result<Rule, RuleError> {
        compile(sandbox, source, origin)
    }
}

impl Shape {
    pub(crate) fn state_index(&self, name: &str) -> Option<u16> {
        self.states.iter().position(|s| s == name).map(|i| i as u16)
    }

    /// Text that is equal for two shapes exactly when they behave the same and report
    /// the same lines: the key of the sharing cache.
    pub(crate) fn identity(&self) -> String {
        let groups: Vec<_> = self
            .groups
            .iter()
            .map(|g| {
                (
                    &g.name,
                    g.weight,
                    &g.tags,
                    g.hold_ms,
                    g.function.as_str(),
                    g.line,
                )
            })
            .collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            self.states, self.tags, groups, self.ast
        )
    }
}

impl Group {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn weight(&self) -> u32 {
        self.weight
    }
    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }
    /// Tag names, in the order the group's value map holds them.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|k| k.as_str())
    }
}

fn compile(sandbox: &Sandbox, source: &str, origin: &str) -> Result<Rule, RuleError> {
    use RuleErrorKind::*;
    let max = sandbox.limits().max_script_bytes;
    if source.len() > max {
        return Err(RuleError::new(
            Limit,
            origin,
            format!("script is {} bytes, the limit is {max}", source.len()),
        ));
    }
    let mut ast = sandbox
        .engine()
        .compile(source)
        .map_err(|e| RuleError::new(Syntax, origin, e.0.to_string()).at_line(e.1.line()))?;
    // Deterministic limits only: acceptance depends on the text, never on the load
    // (a rule in a checkpoint compiles again on any machine).
    let value = sandbox
        .without_deadline(|engine| engine.eval_ast::<Dynamic>(&ast))
        .map_err(|e| {
            let f = explain(&e);
            let kind = match f.kind {
                FailureKind::Limit | FailureKind::Deadline => Limit,
                FailureKind::Runtime => Runtime,
            };
            RuleError::new(kind, origin, f.message).at_line(f.line)
        })?;
    ast.clear_statements();
    let def = Parser {
        source,
        origin,
        rule: None,
    };
    def.rule(value, ast, sandbox)
}

fn footprint(
    source: &str,
    equipment: &[String],
    groups: &[Group],
    curry: &[Vec<Dynamic>],
) -> Footprint {
    let group_tags: u64 = groups.iter().map(|g| g.tags.len() as u64).sum();
    let fan_out = equipment.len() as u64 * group_tags;
    let ids: u64 = equipment
        .iter()
        .map(|e| e.len() as u64 + EQUIPMENT_BYTES)
        .sum();
    let captured: u64 = curry.iter().flatten().map(dynamic_bytes).sum();
    let bytes = (source.len() as u64)
        .saturating_add(ids)
        .saturating_add(captured)
        .saturating_add(fan_out.saturating_mul(SLOT_BYTES));
    Footprint { fan_out, bytes }
}

/// Bytes a captured value holds, deep (strings, arrays, maps, blobs; 16 per value).
fn dynamic_bytes(v: &Dynamic) -> u64 {
    const VALUE: u64 = 16;
    if let Some(s) = v.read_lock::<ImmutableString>() {
        return VALUE + s.len() as u64;
    }
    if let Some(a) = v.read_lock::<rhai::Array>() {
        return VALUE + a.iter().map(dynamic_bytes).sum::<u64>();
    }
    if let Some(m) = v.read_lock::<Map>() {
        return VALUE
            + m.iter()
                .map(|(k, v)| k.len() as u64 + dynamic_bytes(v))
                .sum::<u64>();
    }
    if let Some(b) = v.read_lock::<rhai::Blob>() {
        return VALUE + b.len() as u64;
    }
    VALUE
}

struct Parser<'a> {
    source: &'a str,
    origin: &'a str,
    rule: Option<String>,
}

impl Parser<'_> {
    fn err(&self, group: Option<&str>, message: impl Into<String>) -> RuleError {
        let line = group.and_then(|g| self.line_of(&format!("\"{g}\"")));
        RuleError::new(RuleErrorKind::Definition, self.origin, message)
            .in_rule(self.rule.as_deref())
            .in_group(group)
            .at_line(line)
    }

    /// First line mentioning `needle`: definition errors come from values, which
    /// carry no position, so point at the group's name in the text.
    fn line_of(&self, needle: &str) -> Option<usize> {
        self.source
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
    }

    fn rule(mut self, value: Dynamic, ast: AST, sandbox: &Sandbox) -> Result<Rule, RuleError> {
        let type_name = value.type_name();
        let Some(mut map) = value.try_cast::<Map>() else {
            return Err(self.err(
                None,
                format!("the script must end with the rule's definition, an object map #{{ id: .., equipment: .., groups: [..] }}; it produced a value of type {type_name}"),
            ));
        };
        const RULE_KEYS: [&str; 6] = [
            "id",
            "version",
            "description",
            "equipment",
            "states",
            "groups",
        ];
        if let Some(k) = map.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
            // Name the rule if it has a usable id.
            self.rule = map.get("id").and_then(|v| v.clone().into_string().ok());
            return Err(self.err(
                None,
                format!("unknown key `{k}` (allowed: {})", RULE_KEYS.join(", ")),
            ));
        }
        let id = match map.remove("id") {
            Some(v) => self.string(None, "id", v)?,
            None => return Err(self.err(None, "missing `id`")),
        };
        check_id(&id).map_err(|m| self.err(None, m))?;
        self.rule = Some(id.clone());
        let version = match map.remove("version") {
            None => 1,
            Some(v) => match v.as_int() {
                Ok(n) if n >= 1 && n as u64 <= crate::engine::MAX_VERSION => n as u64,
                _ => {
                    return Err(self.err(
                        None,
                        format!(
                            "`version` must be an integer from 1 to {} (2^53 - 1)",
                            crate::engine::MAX_VERSION
                        ),
                    ))
                }
            },
        };
        let description = match map.remove("description") {
            None => None,
            Some(v) => Some(self.string(None, "description", v)?),
        };
        let equipment = match map.remove("equipment") {
            None => return Err(self.err(None, "missing `equipment` (an id or a list of ids)")),
            Some(v) if v.is_string() => vec![self.string(None, "equipment", v)?],
            Some(v) => self.string_list(None, "equipment", v)?,
        };
        if equipment.is_empty() || equipment.len() > MAX_EQUIPMENT {
            return Err(self.err(
                None,
                format!("`equipment` must name 1 to {MAX_EQUIPMENT} ids"),
            ));
        }
        for e in &equipment {
            if e.is_empty() || e.chars().count() > MAX_EQUIPMENT_ID_LEN {
                return Err(self.err(
                    None,
                    format!("equipment id {e:?} must have 1 to 256 characters"),
                ));
            }
        }
        let states = match map.remove("states") {
            None => DEFAULT_STATES.iter().map(|s| s.to_string()).collect(),
            Some(v) => self.string_list(None, "states", v)?,
        };
        if states.is_empty() || states.len() > MAX_STATES || states.iter().any(String::is_empty) {
            return Err(self.err(
                None,
                format!(
                    "`states` must list 1 to {MAX_STATES} non-empty names, least to most severe"
                ),
            ));
        }
        let groups_value = map
            .remove("groups")
            .ok_or_else(|| self.err(None, "missing `groups` (a list of condition groups)"))?;
        let Some(raw_groups) = groups_value.try_cast::<rhai::Array>() else {
            return Err(self.err(None, "`groups` must be a list of object maps"));
        };
        if raw_groups.is_empty() || raw_groups.len() > MAX_GROUPS {
            return Err(self.err(None, format!("`groups` must hold 1 to {MAX_GROUPS} groups")));
        }

        let mut tags: Vec<String> = Vec::new();
        let mut groups = Vec::with_capacity(raw_groups.len());
        let mut curry = Vec::with_capacity(raw_groups.len());
        let mut names = HashSet::new();
        for (i, g) in raw_groups.into_iter().enumerate() {
            let (group, captured) = self.group(i, g, &ast, &mut tags)?;
            if !names.insert(group.name.clone()) {
                return Err(self.err(Some(&group.name), "two groups have this name"));
            }
            groups.push(group);
            curry.push(captured);
        }
        let group_fns: Vec<&str> = groups.iter().map(|g| g.function.as_str()).collect();
        let shared = fingerprint::shared_digest(&ast, &group_fns);
        let code_fingerprints: Vec<u64> = groups
            .iter()
            .map(|g| {
                let tag_names: Vec<&str> = g.keys.iter().map(|k| k.as_str()).collect();
                fingerprint::group_fingerprint(
                    &ast,
                    &fingerprint::GroupFingerprint {
                        name: &g.name,
                        weight: g.weight,
                        tags: &tag_names,
                        hold_ms: g.hold_ms,
                        function: &g.function,
                    },
                    &shared,
                )
            })
            .collect();
        for (g, f) in groups.iter_mut().zip(&code_fingerprints) {
            g.code_fingerprint = *f;
        }
        let fingerprints = code_fingerprints
            .iter()
            .zip(&curry)
            .map(|(f, c)| fingerprint::with_captures(*f, c))
            .collect();
        let mut tag_groups = vec![Vec::new(); tags.len()];
        for (gi, g) in groups.iter().enumerate() {
            for &t in &g.tags {
                tag_groups[t as usize].push(gi as u16);
            }
        }
        let footprint = footprint(self.source, &equipment, &groups, &curry);
        let limits = sandbox.limits();
        if footprint.fan_out > limits.max_fan_out {
            let group_tags: usize = groups.iter().map(|g| g.tags.len()).sum();
            return Err(self.limit(format!(
                "fan-out is {} ({} equipment × {group_tags} group tags), the limit is {}",
                footprint.fan_out,
                equipment.len(),
                limits.max_fan_out
            )));
        }
        if footprint.bytes > limits.max_rule_bytes {
            return Err(self.limit(format!(
                "the rule needs about {} bytes (source, equipment, captured values, {} state slots), the limit is {}",
                footprint.bytes, footprint.fan_out, limits.max_rule_bytes
            )));
        }
        let shape = sandbox.share_shape(Shape {
            states,
            groups,
            tags,
            tag_groups,
            ast,
        });
        Ok(Rule {
            id,
            version,
            description,
            equipment,
            curry,
            fingerprints,
            shape,
            origin: self.origin.to_owned(),
            footprint,
        })
    }

    fn limit(&self, message: String) -> RuleError {
        RuleError::new(RuleErrorKind::Limit, self.origin, message).in_rule(self.rule.as_deref())
    }

    fn group(
        &self,
        index: usize,
        value: Dynamic,
        ast: &AST,
        tags: &mut Vec<String>,
    ) -> Result<(Group, Vec<Dynamic>), RuleError> {
        let Some(mut map) = value.try_cast::<Map>() else {
            return Err(self.err(None, format!("group #{} must be an object map", index + 1)));
        };
        let name = match map.remove("name") {
            Some(v) => self.string(None, "name", v)?,
            None => return Err(self.err(None, format!("group #{} has no `name`", index + 1))),
        };
        if name.is_empty() {
            return Err(self.err(None, format!("group #{} has an empty `name`", index + 1)));
        }
        let g = Some(name.as_str());
        const GROUP_KEYS: [&str; 5] = ["weight", "tags", "hold", "state", "description"];
        if let Some(k) = map.keys().find(|k| !GROUP_KEYS.contains(&k.as_str())) {
            return Err(self.err(
                g,
                format!(
                    "unknown key `{k}` (allowed: name, {})",
                    GROUP_KEYS.join(", ")
                ),
            ));
        }
        let name_line = self.line_of(&format!("\"{name}\""));
        let weight = match map.remove("weight") {
            None => 1,
            Some(v) => match v.as_int() {
                Ok(w) if (0..=MAX_WEIGHT).contains(&w) => w as u32,
                _ => {
                    return Err(self.err(
                        g,
                        format!("`weight` must be an integer from 0 to {MAX_WEIGHT}"),
                    ))
                }
            },
        };
        let tag_names = match map.remove("tags") {
            Some(v) => self.string_list(g, "tags", v)?,
            None => return Err(self.err(g, "missing `tags` (the tags the group reads)")),
        };
        if tag_names.is_empty() || tag_names.len() > MAX_TAGS_PER_GROUP {
            return Err(self.err(
                g,
                format!("`tags` must list 1 to {MAX_TAGS_PER_GROUP} tags"),
            ));
        }
        for t in &tag_names {
            if t.is_empty() || t == linewatch_schemas::HEARTBEAT_TAG {
                return Err(self.err(
                    g,
                    format!("tag {t:?} cannot be read (empty, or the agent's heartbeat)"),
                ));
            }
        }
        let hold_ms = match map.remove("hold") {
            None => 0,
            Some(v) => self.hold(g, v)?,
        };
        let function = match map.remove("state") {
            None => {
                return Err(self.err(
                    g,
                    "missing `state` (a closure |v| ... returning a state name)",
                ))
            }
            Some(v) => match v.try_cast::<FnPtr>() {
                Some(f) => f,
                None => return Err(self.err(
                    g,
                    "`state` must be a closure |v| ... or Fn(\"name\") of a function in the script",
                )),
            },
        };
        let curry: Vec<Dynamic> = function.curry().to_vec();
        let fn_name = function.fn_name().to_owned();
        let arity = curry.len() + 1;
        let line = fingerprint::first_line(ast, &fn_name, arity).or(name_line);
        if !ast
            .iter_functions()
            .any(|f| f.name == fn_name && f.params.len() == arity)
        {
            return Err(self.err(
                g,
                format!("`state` must be a function of one argument defined in the script (the group's values); `{fn_name}` with {arity} parameter(s) is not one"),
            ));
        }
        let mut idx = Vec::with_capacity(tag_names.len());
        for t in &tag_names {
            if idx.iter().any(|&i: &u16| tags[i as usize] == *t) {
                return Err(self.err(g, format!("tag {t:?} is listed twice")));
            }
            let i = match tags.iter().position(|x| x == t) {
                Some(i) => i,
                None => {
                    tags.push(t.clone());
                    tags.len() - 1
                }
            };
            idx.push(i as u16);
        }
        idx.sort_by(|a, b| tags[*a as usize].cmp(&tags[*b as usize]));
        let keys = idx.iter().map(|&i| tags[i as usize].clone()).collect();
        let group = Group {
            name,
            weight,
            tags: idx,
            keys,
            hold_ms,
            function: fn_name.into(),
            captures: !curry.is_empty(),
            // Set once all groups are known (it covers the script's other functions).
            code_fingerprint: 0,
            line,
        };
        Ok((group, curry))
    }

    fn hold(&self, g: Option<&str>, v: Dynamic) -> Result<u64, RuleError> {
        if let Ok(ms) = v.as_int() {
            return u64::try_from(ms)
                .map_err(|_| self.err(g, "`hold` in milliseconds must not be negative"));
        }
        let text = self.string(g, "hold", v)?;
        let d = humantime::parse_duration(&text).map_err(|e| {
            self.err(
                g,
                format!("`hold` {text:?} is not a duration like \"5m\" or \"90s\": {e}"),
            )
        })?;
        u64::try_from(d.as_millis()).map_err(|_| self.err(g, "`hold` is too long"))
    }

    fn string(&self, g: Option<&str>, key: &str, v: Dynamic) -> Result<String, RuleError> {
        let t = v.type_name();
        v.into_string()
            .map_err(|_| self.err(g, format!("`{key}` must be a string, not {t}")))
    }

    fn string_list(
        &self,
        g: Option<&str>,
        key: &str,
        v: Dynamic,
    ) -> Result<Vec<String>, RuleError> {
        let t = v.type_name();
        let Some(items) = v.try_cast::<rhai::Array>() else {
            return Err(self.err(g, format!("`{key}` must be a list of strings, not {t}")));
        };
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let s = self.string(g, key, item)?;
            if out.contains(&s) {
                return Err(self.err(g, format!("`{key}` lists {s:?} twice")));
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// Rule ids end up in MQTT topics and transition ids: keep them plain.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("`id` must have 1 to {MAX_ID_LEN} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "`id` {id:?} contains {c:?}; use letters, digits and - _ . : only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
