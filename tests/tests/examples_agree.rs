//! The shipped example rules match what the shipped example gateway config sends: every
//! tag a rule reads for that config's equipment is one the config produces, and every
//! string a rule compares a tag with is one of the names in that tag's `map` (a tag
//! without a map sends numbers, which never equal a string).

use linewatch_rules_core::{Limits, Rule, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a tag sends: `None` for numbers/bools, the map's names for a mapped tag.
type Produced = BTreeMap<(String, String), Option<BTreeSet<String>>>;

/// (equipment, tag) → names, from every `[[sources]]` of a gateway config. Tags are the
/// tables with a `name` somewhere below a source (`groups[].tags[]` for Modbus, flat
/// lists for other protocols); a tag's equipment is its own or its source's.
fn produced(config: &Path) -> Produced {
    let text = std::fs::read_to_string(config).expect("read the example config");
    let doc: toml::Table = toml::from_str(&text).expect("the example config is TOML");
    let mut out = Produced::new();
    let sources = doc["sources"].as_array().expect("[[sources]]");
    for s in sources {
        let s = s.as_table().expect("a source table");
        let equipment = s.get("equipment_id").and_then(|e| e.as_str());
        collect_tags(s, equipment, &mut out);
    }
    out
}

fn collect_tags(t: &toml::Table, equipment: Option<&str>, out: &mut Produced) {
    for v in t.values() {
        let Some(items) = v.as_array() else { continue };
        for item in items.iter().filter_map(|i| i.as_table()) {
            let eq = item
                .get("equipment_id")
                .and_then(|e| e.as_str())
                .or(equipment);
            if let (Some(name), Some(eq), true) = (
                item.get("name").and_then(|n| n.as_str()),
                eq,
                item.contains_key("type"),
            ) {
                let names = item.get("map").and_then(|m| m.as_table()).map(|m| {
                    m.values()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                });
                out.insert((eq.to_owned(), name.to_owned()), names);
            }
            collect_tags(item, eq, out);
        }
    }
}

/// Every `v.<tag> == "<text>"` (or `!=`) in a script.
fn string_comparisons(script: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = script;
    while let Some(i) = rest.find("v.") {
        rest = &rest[i + 2..];
        let tag: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = rest[tag.len()..].trim_start();
        let Some(after) = after
            .strip_prefix("==")
            .or_else(|| after.strip_prefix("!="))
        else {
            continue;
        };
        if let Some(lit) = after.trim_start().strip_prefix('"') {
            if let Some(end) = lit.find('"') {
                found.push((tag, lit[..end].to_owned()));
            }
        }
    }
    found
}

fn rules() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for dir in ["rules-engine/examples/rules", "rules-engine/examples/local"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .expect("example rules")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read a rule");
            out.push((f, text));
        }
    }
    out
}

#[test]
fn example_rules_read_what_the_example_config_sends() {
    let config = root().join("firmware-config/examples/filling-machine.toml");
    let produced = produced(&config);
    assert!(
        produced.len() >= 5,
        "the walk finds the example's tags: {produced:?}"
    );
    let sandbox = Sandbox::new(Limits::default());
    let mut checked = 0;
    for (path, script) in rules() {
        let rule = Rule::compile(&sandbox, &script, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for eq in rule.equipment() {
            if !produced.keys().any(|(e, _)| e == eq) {
                continue; // a rule for other machines (the palletisers)
            }
            checked += 1;
            for tag in rule.tags() {
                assert!(
                    produced.contains_key(&(eq.clone(), tag.clone())),
                    "{}: tag {tag} of {eq} is not in {}",
                    path.display(),
                    config.display()
                );
            }
            for (tag, text) in string_comparisons(&script) {
                match produced.get(&(eq.clone(), tag.clone())) {
                    Some(Some(names)) => assert!(
                        names.contains(&text),
                        "{}: {tag} == {text:?}, but the config maps {tag} to {names:?}",
                        path.display()
                    ),
                    Some(None) => panic!(
                        "{}: {tag} is compared with {text:?}, but the config sends it as a number (no map)",
                        path.display()
                    ),
                    None => {} // reported above if the rule reads it
                }
            }
        }
    }
    assert!(
        checked >= 2,
        "the Krones rule and the local rule watch the example's filler"
    );
}

#[test]
fn the_comparison_scan_finds_what_it_should() {
    assert_eq!(
        string_comparisons(
            r#"|v| if v.machine_state == "RUNNING" && v.x > 2 || v.p != "1L" { 1 }"#
        ),
        [
            ("machine_state".to_owned(), "RUNNING".to_owned()),
            ("p".to_owned(), "1L".to_owned())
        ]
    );
}
