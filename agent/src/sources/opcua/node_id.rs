//! Node ids as configured (`nsu=<uri>;s=<name>`, `ns=<index>;i=<number>`, …) and
//! their resolution against the server's namespace array. Pure: the array is
//! read at every (re)connect, because a server may renumber its namespaces.

use opcua::types::{ByteString, Guid, Identifier, NodeId};
use std::fmt;
use std::str::FromStr;

/// The namespace a node id names: by URI (stable), or by index (may change).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    Uri(String),
    Index(u16),
}

/// The identifier part, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ident {
    Numeric(u32),
    String(String),
    Guid(String),
    /// Base64 as written.
    Opaque(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub namespace: Namespace,
    pub ident: Ident,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("{0:?} is not a node id: expected nsu=<namespace uri>;s=<name> (or i=, g=, b=), or ns=<index>;…")]
    Shape(String),
    #[error("{0:?}: namespace index must be a number 0..=65535")]
    Index(String),
    #[error("{0:?}: namespace URI must not be empty")]
    EmptyUri(String),
    #[error("{0:?}: numeric identifier must be a number 0..=4294967295")]
    Numeric(String),
    #[error("{0:?}: GUID identifier must look like 72962b91-fa75-4ae6-8d28-b404dc7daf63")]
    Guid(String),
    #[error("{0:?}: opaque identifier must be base64")]
    Opaque(String),
    #[error("{0:?}: string identifier must not be empty")]
    EmptyString(String),
}

/// Why a configured node cannot be addressed on this server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("namespace {0:?} is not in the server's namespace array")]
    UnknownNamespace(String),
    #[error("namespace index {0} is not in the server's namespace array ({1} namespaces)")]
    IndexOutOfRange(u16, usize),
}

/// Parse a node id as the configuration writes it.
pub fn parse_node_id(text: &str) -> Result<NodeAddress, NodeIdError> {
    let shape = || NodeIdError::Shape(text.to_owned());
    let (namespace, ident) = if let Some(rest) = text.strip_prefix("nsu=") {
        // A `;` inside the URI is written %3B (OPC UA Part 6): the first `;` ends it.
        let (uri, ident) = rest.split_once(';').ok_or_else(shape)?;
        let uri = percent_decode(uri);
        if uri.is_empty() {
            return Err(NodeIdError::EmptyUri(text.to_owned()));
        }
        (Namespace::Uri(uri), ident)
    } else if let Some(rest) = text.strip_prefix("ns=") {
        let (index, ident) = rest.split_once(';').ok_or_else(shape)?;
        let index = index
            .parse::<u16>()
            .map_err(|_| NodeIdError::Index(text.to_owned()))?;
        (Namespace::Index(index), ident)
    } else {
        (Namespace::Index(0), text)
    };
    let (kind, value) = ident.split_once('=').ok_or_else(shape)?;
    let ident = match kind {
        "i" => Ident::Numeric(
            value
                .parse::<u32>()
                .map_err(|_| NodeIdError::Numeric(text.to_owned()))?,
        ),
        "s" if value.is_empty() => return Err(NodeIdError::EmptyString(text.to_owned())),
        "s" => Ident::String(value.to_owned()),
        "g" => {
            Guid::from_str(value).map_err(|_| NodeIdError::Guid(text.to_owned()))?;
            Ident::Guid(value.to_owned())
        }
        "b" => {
            if ByteString::from_base64(value).is_none() {
                return Err(NodeIdError::Opaque(text.to_owned()));
            }
            Ident::Opaque(value.to_owned())
        }
        _ => return Err(shape()),
    };
    Ok(NodeAddress { namespace, ident })
}

fn percent_decode(s: &str) -> String {
    s.replace("%3B", ";")
        .replace("%3b", ";")
        .replace("%25", "%")
}

impl NodeAddress {
    /// The node id on a server whose namespace array is `namespaces`
    /// (index 0 is always the OPC UA namespace).
    pub fn resolve(&self, namespaces: &[String]) -> Result<NodeId, ResolveError> {
        let index = match &self.namespace {
            Namespace::Uri(uri) => namespaces
                .iter()
                .position(|n| n == uri)
                .and_then(|i| u16::try_from(i).ok())
                .ok_or_else(|| ResolveError::UnknownNamespace(uri.clone()))?,
            Namespace::Index(i) => {
                if usize::from(*i) >= namespaces.len().max(1) {
                    return Err(ResolveError::IndexOutOfRange(*i, namespaces.len()));
                }
                *i
            }
        };
        let identifier = match &self.ident {
            Ident::Numeric(n) => Identifier::Numeric(*n),
            Ident::String(s) => Identifier::String(s.as_str().into()),
            // Both were checked when parsed.
            Ident::Guid(g) => Identifier::Guid(Guid::from_str(g).unwrap_or_default()),
            Ident::Opaque(b) => {
                Identifier::ByteString(ByteString::from_base64(b).unwrap_or_default())
            }
        };
        Ok(NodeId {
            namespace: index,
            identifier,
        })
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Namespace::Uri(u) => write!(f, "nsu={};", u.replace('%', "%25").replace(';', "%3B"))?,
            Namespace::Index(0) => {}
            Namespace::Index(i) => write!(f, "ns={i};")?,
        }
        match &self.ident {
            Ident::Numeric(n) => write!(f, "i={n}"),
            Ident::String(s) => write!(f, "s={s}"),
            Ident::Guid(g) => write!(f, "g={g}"),
            Ident::Opaque(b) => write!(f, "b={b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns() -> Vec<String> {
        [
            "http://opcfoundation.org/UA/",
            "urn:server",
            "urn:line:filler",
            "urn:line:labeller",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn each_form_parses() {
        let a = parse_node_id("nsu=urn:line:filler;s=Filler.Temp").expect("nsu;s");
        assert_eq!(a.namespace, Namespace::Uri("urn:line:filler".into()));
        assert_eq!(a.ident, Ident::String("Filler.Temp".into()));
        let a = parse_node_id("nsu=urn:line:filler;i=1001").expect("nsu;i");
        assert_eq!(a.ident, Ident::Numeric(1001));
        let a = parse_node_id("ns=3;s=A;B=C").expect("ns;s with ; and = in the name");
        assert_eq!(a.namespace, Namespace::Index(3));
        assert_eq!(a.ident, Ident::String("A;B=C".into()));
        let a = parse_node_id("i=2258").expect("ns 0 implied");
        assert_eq!(a.namespace, Namespace::Index(0));
        parse_node_id("ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63").expect("guid");
        parse_node_id("ns=1;b=aGVsbG8=").expect("opaque");
        let a = parse_node_id("nsu=urn:a%3Bb;i=1").expect("escaped ;");
        assert_eq!(a.namespace, Namespace::Uri("urn:a;b".into()));
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        for (bad, want) in [
            ("Filler.Temp", "is not a node id"),
            ("nsu=urn:x", "is not a node id"),
            ("nsu=;s=x", "must not be empty"),
            ("ns=70000;i=1", "namespace index"),
            ("ns=x;i=1", "namespace index"),
            ("ns=1;i=-4", "numeric identifier"),
            ("ns=1;q=4", "is not a node id"),
            ("ns=1;s=", "string identifier"),
            ("ns=1;g=nope", "GUID"),
        ] {
            let e = parse_node_id(bad).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn uris_resolve_to_their_index_on_this_server() {
        let a = parse_node_id("nsu=urn:line:labeller;s=Speed").expect("parses");
        assert_eq!(a.resolve(&ns()).map(|n| n.namespace), Ok(3));
        // The same node after a restart that registered the namespaces the other way round.
        let mut swapped = ns();
        swapped.swap(2, 3);
        assert_eq!(a.resolve(&swapped).map(|n| n.namespace), Ok(2));
        let gone = parse_node_id("nsu=urn:gone;i=1").expect("parses");
        assert_eq!(
            gone.resolve(&ns()),
            Err(ResolveError::UnknownNamespace("urn:gone".into()))
        );
        let far = parse_node_id("ns=9;i=1").expect("parses");
        assert!(matches!(
            far.resolve(&ns()),
            Err(ResolveError::IndexOutOfRange(9, 4))
        ));
        let n = parse_node_id("i=85").map(|a| a.resolve(&[]).map(|n| n.namespace));
        assert_eq!(n, Ok(Ok(0)));
    }

    fn address() -> impl Strategy<Value = NodeAddress> {
        let namespace = prop_oneof![
            "[a-z:/.;%]{1,20}".prop_map(Namespace::Uri),
            any::<u16>().prop_map(Namespace::Index),
        ];
        let ident = prop_oneof![
            any::<u32>().prop_map(Ident::Numeric),
            "[ -~]{1,30}".prop_map(Ident::String),
        ];
        (namespace, ident).prop_map(|(namespace, ident)| NodeAddress { namespace, ident })
    }

    proptest! {
        #[test]
        fn display_parses_back(a in address()) {
            prop_assert_eq!(parse_node_id(&a.to_string()), Ok(a));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_node_id(&s);
        }
    }
}
