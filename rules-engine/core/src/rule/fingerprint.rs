//! "Did this group's definition change?" — decided when a rule is updated (and when
//! state is restored from a checkpoint), so that unchanged groups keep their state.
//!
//! Rhai offers no public access to a function's body, but an `AST`'s `Debug` form
//! prints it. That text is normalised: source positions go (an edit elsewhere in the
//! script shifts lines without changing this group), and so do Rhai's internal
//! hashes (function-call hashes and closure names are seeded per process). A group's
//! fingerprint covers its own fields and closure plus every function of the script
//! that is not another group's closure (named helpers, nested closures), so a change
//! anywhere it could reach resets it — erring towards a reset, never towards keeping
//! state that no longer fits.

use rhai::AST;
use std::hash::{Hash, Hasher};

/// Everything that decides a group's behaviour, apart from the script's functions.
pub(crate) struct GroupFingerprint<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub tags: &'a [&'a str],
    pub hold_ms: u64,
    pub function: &'a str,
}

/// The normalised bodies of the script's functions other than the groups' own
/// closures, sorted (names are normalised away, so sort for a stable order).
pub(crate) fn shared_digest(ast: &AST, group_functions: &[&str]) -> String {
    let mut bodies: Vec<String> = ast
        .iter_functions()
        .filter(|f| !group_functions.contains(&f.name))
        .map(|f| function_digest(ast, f.name, f.params.len()))
        .collect();
    bodies.sort();
    bodies.join("\n")
}

pub(crate) fn group_fingerprint(ast: &AST, g: &GroupFingerprint<'_>, shared: &str) -> u64 {
    let body = ast
        .iter_functions()
        .filter(|f| f.name == g.function)
        .map(|f| function_digest(ast, f.name, f.params.len()))
        .collect::<Vec<_>>()
        .join("\n");
    // DefaultHasher::new() uses fixed keys: stable across processes of one build.
    let mut h = std::hash::DefaultHasher::new();
    g.name.hash(&mut h);
    g.weight.hash(&mut h);
    g.tags.hash(&mut h);
    g.hold_ms.hash(&mut h);
    body.hash(&mut h);
    shared.hash(&mut h);
    h.finish()
}

/// A group's fingerprint with the values its closure captured.
pub(crate) fn with_captures(code: u64, curry: &[rhai::Dynamic]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    code.hash(&mut h);
    for c in curry {
        normalise(&format!("{c:?}")).hash(&mut h);
    }
    h.finish()
}

/// One function's normalised text.
fn function_digest(ast: &AST, name: &str, arity: usize) -> String {
    normalise(&function_debug(ast, name, arity))
}

fn function_debug(ast: &AST, name: &str, arity: usize) -> String {
    // `AST::clone_functions_only_filtered` does not filter when cloning into an empty
    // module, so filter after cloning.
    let mut f = ast.clone_functions_only();
    f.retain_functions(|_, _, n, params| n == name && params == arity);
    format!("{f:?}")
}

/// The first source line of a function's body: where a group's errors point when
/// Rhai gives no position (e.g. the operation limit).
pub(crate) fn first_line(ast: &AST, name: &str, arity: usize) -> Option<usize> {
    let text = function_debug(ast, name, arity);
    text.match_indices("@ ").find_map(|(i, _)| {
        let rest = &text[i + 2..];
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || !rest[digits..].starts_with(':') {
            return None;
        }
        rest[..digits].parse().ok()
    })
}

/// Drop, outside string literals: `LINE:COL` positions (and `L:C-E` spans) and
/// `hash: N` call hashes; and everywhere the hex of `anon$…` closure names.
pub(crate) fn normalise(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    let mut in_str = false;
    let cut = |out: &mut String, from: usize, to: usize, last: &mut usize| {
        out.push_str(&s[*last..from]);
        *last = to;
    };
    while i < b.len() {
        let c = b[i];
        // Closure names also appear quoted (`Fn*("anon$…")`): strip them everywhere.
        // Bytes, not `str` slices: `i` may sit inside a multi-byte character.
        if b[i..].starts_with(b"anon$") {
            let mut k = i + 5;
            while k < b.len() && b[k].is_ascii_hexdigit() {
                k += 1;
            }
            cut(&mut out, i + 5, k, &mut last);
            i = k;
            continue;
        }
        if in_str {
            match c {
                b'\\' => i += 2,
                b'"' => {
                    in_str = false;
                    i += 1
                }
                _ => i += 1,
            }
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"hash: ") {
            let mut k = i + 6;
            if b.get(k) == Some(&b'(') {
                // A pair of hashes: `hash: (N, M)`.
                k = b[k..]
                    .iter()
                    .position(|&x| x == b')')
                    .map_or(b.len(), |j| k + j + 1);
            }
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            cut(&mut out, i, k, &mut last);
            i = k;
            continue;
        }
        let starts_token = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if c.is_ascii_digit() && starts_token {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j + 1 < b.len() && b[j] == b':' && b[j + 1].is_ascii_digit() {
                let mut k = j + 1;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                if k + 1 < b.len() && b[k] == b'-' && b[k + 1].is_ascii_digit() {
                    k += 1;
                    while k < b.len() && (b[k].is_ascii_digit() || b[k] == b':') {
                        k += 1;
                    }
                }
                cut(&mut out, i, k, &mut last);
                i = k;
                continue;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hashes_and_closure_names_go_strings_stay() {
        assert_eq!(
            normalise(r#"Variable(x) @ 12:5, "at 12:30", 3:4)"#),
            r#"Variable(x) @ , "at 12:30", )"#
        );
        assert_eq!(normalise("v2:3, x"), "v2:3, x");
        assert_eq!(normalise("Block[x] @ 22:5-106, y"), "Block[x] @ , y");
        assert_eq!(
            normalise(
                r#"FnCallExpr { hash: 1234 (native only), name: "anon$77" }, anon$9c967ef1551a47fc(v)"#
            ),
            r#"FnCallExpr {  (native only), name: "anon$" }, anon$(v)"#
        );
        assert_eq!(normalise("hash: (12, 34), name"), ", name");
        // Found by the rule-loader fuzz test: a multi-byte character in a string literal.
        assert_eq!(normalise(r#""\€" @ 1:2"#), r#""\€" @ "#);
    }

    proptest::proptest! {
        #[test]
        fn any_text_normalises_without_panicking(s in r#"(\PC|anon\$|hash: |[0-9:@\\"( )-])*"#) {
            let n = normalise(&s);
            proptest::prop_assert!(n.len() <= s.len());
        }
    }
}
