//! Fuzzing the agent's configuration loader: whatever the file holds, `Config::parse`
//! returns a configuration or an error naming what is wrong — never a panic. Seeds are
//! the example gateway files. Bounded for CI;
//! `LINEWATCH_FUZZ_CASES=20000 cargo test -p linewatch-agent --test fuzz_config` runs longer.

#[path = "../../tests/fuzz/mutate.rs"]
mod mutate;

use linewatch_agent::config::Config;
use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    [include_str!(
        "../../firmware-config/examples/filling-machine.toml"
    )]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn a_config_parses_or_is_an_error(bytes in mutate::inputs(seeds())) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Config::parse(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn the_seeds_parse() {
    for s in seeds() {
        let text = String::from_utf8(s).unwrap();
        Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    }
}
