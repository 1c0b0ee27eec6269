//! A TOML syntax or type error as one line that never echoes the file's text: toml's own
//! `Display` quotes the offending line, which may hold a password or a key.

/// `line L, column C: key K: message` (1-based), from the error's span in `text`: the
/// key written on that line (under its table's header) is named, its value never; just
/// the message when the error has no span.
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            match key_on_line(text, line) {
                Some(key) => format!("line {line}, column {column}: {key}: {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_owned(),
    }
}

/// The key assigned on 1-based `line` (`a = ...`), prefixed by the nearest table header
/// above it (`[buffer]` gives `buffer.a`). Keys are names, never secrets.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let (key, _) = here.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.contains(['"', '\'']) && key.len() > 64 {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]"));
        inner
            .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .map(str::trim)
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct C {
        name: String,
        password: String,
        port: u16,
    }

    #[test]
    fn names_the_place_and_never_the_line() {
        let text = "name = \"a\"\npassword = \"hunter2\" oops\nport = 1\n";
        let e = toml::from_str::<C>(text).unwrap_err();
        assert!(
            e.to_string().contains("hunter2"),
            "toml's own text quotes the line"
        );
        let shown = describe_toml_error(text, &e);
        assert!(shown.starts_with("line 2, column "), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let text = "name = \"a\"\npassword = \"hunter2\"\nport = \"x\"\n";
        let shown = describe_toml_error(text, &toml::from_str::<C>(text).unwrap_err());
        assert!(shown.starts_with("line 3, column 8: port: "), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_key_is_named_under_its_table() {
        let text = "a = 1\n[buffer]\nmax_bytes = \"lots\"\n";
        assert_eq!(key_on_line(text, 3).as_deref(), Some("buffer.max_bytes"));
        assert_eq!(key_on_line(text, 1).as_deref(), Some("a"));
        assert_eq!(key_on_line(text, 2), None);
        let text = "[[sources]]\n  host = 5\n";
        assert_eq!(key_on_line(text, 2).as_deref(), Some("sources.host"));
    }

    #[test]
    fn line_and_column_are_one_based_in_characters() {
        assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        // Inside a multi-byte character: its start.
        assert_eq!(line_column("ab\ncé\nx", 5), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
