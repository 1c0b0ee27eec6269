//! URLs as they may be printed or stored: without the credentials people put in them
//! (`https://user:password@host/`, `?token=...`, `#access_token=...`). Every log line,
//! error text, metric label and dead-letter entry that names a URL goes through
//! [`url`].

/// `raw` with the password (or a lone user part, often a token) of its user info, every
/// query value and the fragment replaced by `***`; scheme, host, port, path and query
/// keys stay, so the text still says where it points. Not a parser: anything it does
/// not recognise as `scheme://` is returned with its query and fragment redacted.
pub fn url(raw: &str) -> String {
    let (before_fragment, fragment) = match raw.split_once('#') {
        Some((b, _)) => (b, Some("***")),
        None => (raw, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(raw.len());
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            out.push_str(user);
                            out.push_str(":***");
                        }
                        None => out.push_str("***"),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(before_query),
    }
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) => {
                    out.push_str(k);
                    out.push_str("=***");
                }
                None if pair.is_empty() => {}
                None => out.push_str("***"),
            }
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::url;
    use proptest::prelude::*;

    #[test]
    fn credentials_go_where_they_were() {
        assert_eq!(
            url("https://ops:hunter2@hooks.example.com:8443/a/b?token=abc&x=1#frag"),
            "https://ops:***@hooks.example.com:8443/a/b?token=***&x=***#***"
        );
        assert_eq!(url("http://tok3n@h/x"), "http://***@h/x");
        assert_eq!(url("http://h:1/p?secret"), "http://h:1/p?***");
        assert_eq!(url("http://127.0.0.1:9/hook"), "http://127.0.0.1:9/hook");
        // `@` in the path is not user info.
        assert_eq!(url("http://h/a@b"), "http://h/a@b");
        assert_eq!(url("not a url?k=v"), "not a url?k=***");
    }

    proptest! {
        #[test]
        fn no_secret_survives(
            user in "[a-z]{1,8}", pw in "[A-Z0-9]{6,16}", host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
            port in proptest::option::of(1u16..), path in "(/[a-z0-9]{0,6}){0,3}",
            q in proptest::collection::vec(("[a-z]{1,6}", "[A-Z0-9]{6,16}"), 0..4),
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            let raw = format!("https://{user}:{pw}@{host}{port}{path}{query}");
            let shown = url(&raw);
            prop_assert!(!shown.contains(&pw), "{shown}");
            // Secrets are upper case, everything that stays lower case: no accidental match.
            for (_, v) in &q {
                prop_assert!(!shown.contains(v.as_str()), "{shown}");
            }
            let expected_prefix = format!("https://{user}:***@{host}{port}{path}");
            prop_assert!(shown.starts_with(&expected_prefix), "{shown}");
        }
    }
}
