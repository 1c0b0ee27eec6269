//! Input mutation for the parsers' fuzz tests (included with `#[path]` by each crate's
//! `tests/fuzz_*.rs`): a valid seed with a few byte-level edits, the way a coverage-guided
//! fuzzer starts, so most cases get past the first byte of the parser. Bounded for CI:
//! `LINEWATCH_FUZZ_CASES` cases per test (default 256); raise it for a longer local run.
#![allow(dead_code)] // each test file uses part of it

use proptest::prelude::*;

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    // Positions are taken modulo the input's length when applied.
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (at, interesting_byte()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (at, proptest::collection::vec(interesting_byte(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (at, 1usize..64).prop_map(|(at, len)| Edit::Delete { at, len }),
        (at, 1usize..256).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        at.prop_map(|at| Edit::Truncate { at }),
    ]
}

/// Bytes that matter to JSON, TOML, Rhai and protobuf more often than uniform ones.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\"'=,:;.#\\\n\r\t 0123456789-+eE".to_vec()),
        prop::sample::select(vec![
            0x00, 0x7f, 0x80, 0xff, 0xc3, 0xe2, 0xf0, 0x08, 0x0a, 0x12, 0x1a
        ]),
    ]
}

pub fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = data.len();
        match e {
            Edit::Flip { at, bit } if n > 0 => data[at % n] ^= 1 << bit,
            Edit::Set { at, byte } if n > 0 => data[at % n] = *byte,
            Edit::Insert { at, bytes } => {
                let at = if n == 0 { 0 } else { at % (n + 1) };
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete { at, len } if n > 0 => {
                let at = at % n;
                data.drain(at..(at + len).min(n));
            }
            Edit::Duplicate { at, len } if n > 0 => {
                let at = at % n;
                let piece = data[at..(at + len).min(n)].to_vec();
                data.splice(at..at, piece);
            }
            Edit::Truncate { at } => data.truncate(if n == 0 { 0 } else { at % n }),
            _ => {}
        }
    }
    data
}

/// One of `seeds`, mutated by 1 to 8 edits.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        proptest::collection::vec(edit(), 1..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

/// Mutated seeds and, one case in four, bytes with no structure at all.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated(seeds),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// The proptest config of a fuzz test: `LINEWATCH_FUZZ_CASES` cases (default 256).
pub fn config() -> ProptestConfig {
    let cases = std::env::var("LINEWATCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // A failure is shrunk, but not for ever.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}
