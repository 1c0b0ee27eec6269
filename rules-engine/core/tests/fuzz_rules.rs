//! Fuzzing the rule loader: whatever text arrives on the control topic, compiling it
//! returns a rule or an error — never a panic — and an accepted rule is one the
//! evaluator can load. Seeds are the example rules. Bounded for CI;
//! `LINEWATCH_FUZZ_CASES=20000 cargo test -p linewatch-rules-core --test fuzz_rules`
//! runs longer.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use linewatch_rules_core::{Limits, Rule, Sandbox};
use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    [
        include_str!("../../examples/rules/krones-filler.rhai"),
        include_str!("../../examples/rules/line-1-palletiser.rhai"),
        include_str!("../../examples/local/filling-machine-local.rhai"),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn a_rule_compiles_or_is_an_error(bytes in mutate::inputs(seeds())) {
        let sandbox = Sandbox::new(Limits::default());
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(rule) = Rule::compile(&sandbox, &text, "fuzz") {
            prop_assert!(!rule.id().is_empty());
            prop_assert!(!rule.groups().is_empty());
        }
    }
}

#[test]
fn the_seeds_compile() {
    let sandbox = Sandbox::new(Limits::default());
    for s in seeds() {
        let text = String::from_utf8(s).unwrap();
        Rule::compile(&sandbox, &text, "seed").unwrap_or_else(|e| panic!("{e}: {text}"));
    }
}
