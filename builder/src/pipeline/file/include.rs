//! GitLab's `include:` as written: a path, or a list of paths and maps (`local:`, and the kinds
//! forge refuses: `remote:`, `project:`, `template:`, `component:`).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Sp;

/// One entry of `include:`.
#[derive(Debug, Clone)]
pub enum Include {
    /// A file of this repository, relative to its top.
    Local(Sp<String>),
    /// Another kind (`remote`, `project`, ...), where it is written.
    Other(Sp<String>),
}

/// `include:`, its entries in order.
#[derive(Debug, Clone, Default)]
pub struct IncludeList(pub Vec<Include>);

/// The kinds of entry GitLab has besides `local`.
const KINDS: &[&str] = &[
    "local",
    "remote",
    "project",
    "template",
    "component",
    "file",
    "ref",
    "rules",
    "inputs",
    "cache",
    "integrity",
];

fn entry<'de, A: MapAccess<'de>>(mut map: A) -> Result<Include, A::Error> {
    let mut found = None;
    while let Some(k) = map.next_key::<Sp<String>>()? {
        match k.value.as_str() {
            "local" => found = Some(Include::Local(map.next_value()?)),
            other if KINDS.contains(&other) => {
                map.next_value::<de::IgnoredAny>()?;
                if !matches!(found, Some(Include::Local(_))) || other == "rules" {
                    found = Some(Include::Other(k));
                }
            }
            other => return Err(de::Error::unknown_field(other, KINDS)),
        }
    }
    found.ok_or_else(|| de::Error::custom("an include names a file with `local:`"))
}

impl<'de> Deserialize<'de> for Include {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Include, D::Error> {
        // A bare path keeps its place; a map's place is its keys'.
        let s = Sp::<PathOr>::deserialize(d)?;
        Ok(match s.value {
            PathOr::Path(p) => Include::Local(Sp::new(p, s.referenced, s.defined)),
            PathOr::Map(i) => i,
        })
    }
}

enum PathOr {
    Path(String),
    Map(Include),
}

impl<'de> Deserialize<'de> for PathOr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PathOr, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PathOr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, or a map with `local`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PathOr, E> {
                Ok(PathOr::Path(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PathOr, A::Error> {
                entry(map).map(PathOr::Map)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for IncludeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IncludeList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IncludeList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, a map with `local`, or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<IncludeList, E> {
                // Its place is the whole value's, which the caller has.
                let unknown = serde_saphyr::Location::UNKNOWN;
                Ok(IncludeList(vec![Include::Local(Sp::new(
                    s.to_string(),
                    unknown,
                    unknown,
                ))]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IncludeList, A::Error> {
                entry(map).map(|i| IncludeList(vec![i]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IncludeList, A::Error> {
                let mut out = Vec::new();
                while let Some(i) = seq.next_element()? {
                    out.push(i);
                }
                Ok(IncludeList(out))
            }
        }
        d.deserialize_any(V)
    }
}
