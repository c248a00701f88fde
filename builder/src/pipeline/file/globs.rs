//! A rule's `changes:` and `exists:` globs: a list, or GitLab's map form with `paths:`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Sp;

/// `rules: changes:`: a list of globs, or GitLab's map form `{paths: [...]}`.
pub(super) fn changes_globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Sp<String>>, D::Error> {
    d.deserialize_any(Globs {
        key: "changes",
        known: &["paths", "compare_to"],
    })
}

/// `rules: exists:`: a list of globs, or GitLab's map form `{paths: [...]}`.
pub(super) fn exists_globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Sp<String>>, D::Error> {
    d.deserialize_any(Globs {
        key: "exists",
        known: &["paths", "project", "ref"],
    })
}

/// A rule's globs, as a list or as GitLab's map with `paths:`; the map's other GitLab keys
/// (of `known`), which compare with another revision or look in another project, are refused
/// saying what forge does instead.
struct Globs {
    key: &'static str,
    known: &'static [&'static str],
}

impl<'de> Visitor<'de> for Globs {
    type Value = Vec<Sp<String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a list of globs, or a map with `paths:` (GitLab's `{}: {{paths: [...]}}`)",
            self.key
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(glob) = seq.next_element::<Sp<String>>()? {
            out.push(glob);
        }
        Ok(out)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut paths = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "paths" => paths = Some(map.next_value::<Vec<Sp<String>>>()?),
                k if self.known.contains(&k) => {
                    return Err(de::Error::custom(match k {
                        "compare_to" => {
                            "`changes: compare_to:` is not supported: `changes:` compare \
                             with the last passed run's commit, or with the revision `forge run \
                             --changed-since REF` names (from its merge base, as GitLab compares)"
                                .to_string()
                        }
                        k => format!(
                            "`exists: {k}:` is not supported: `exists:` globs match this \
                             repository's files"
                        ),
                    }));
                }
                k => return Err(de::Error::unknown_field(k, self.known)),
            }
        }
        paths.ok_or_else(|| de::Error::missing_field("paths"))
    }
}
