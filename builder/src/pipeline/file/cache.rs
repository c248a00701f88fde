//! A job's `cache:`, in its two meanings: forge's `false` (run the job whatever verdict the
//! build cache recorded for it), or GitLab's caches of paths, kept between runs under a key
//! ([`super::super::job_cache`] checks them, the run restores and saves them).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{ArtifactsWhen, Sp};

/// What `cache:` says.
#[derive(Debug, Clone)]
pub enum JobCache {
    /// forge's: `false` runs the job even when its verdict is recorded.
    Verdicts(bool),
    /// GitLab's one map, which `extends:` merges key by key.
    Map(PathCacheSpec),
    /// GitLab's list of maps (`[]`: none, replacing `default:`'s), which `extends:` replaces.
    Paths(Vec<PathCacheSpec>),
}

impl JobCache {
    /// `over` laid on `self` (`extends:`): two maps merge key by key, as GitLab deep-merges them
    /// (a list the job writes, `paths` or `fallback_keys`, replaces the template's); anything
    /// else is `over`'s.
    pub fn merged(self, over: JobCache) -> JobCache {
        match (self, over) {
            (JobCache::Map(b), JobCache::Map(o)) => {
                let or = |o: Vec<Sp<String>>, b| if o.is_empty() { b } else { o };
                JobCache::Map(PathCacheSpec {
                    key: o.key.or(b.key),
                    paths: or(o.paths, b.paths),
                    fallback_keys: or(o.fallback_keys, b.fallback_keys),
                    policy: o.policy.or(b.policy),
                    when: o.when.or(b.when),
                    untracked: o.untracked.or(b.untracked),
                    unprotect: o.unprotect.or(b.unprotect),
                })
            }
            (_, over) => over,
        }
    }
}

/// One of GitLab's caches: `paths` below the job's working directory, restored before the
/// script from the cache under `key` (or the first of `fallback_keys` that exists) and saved
/// under `key` after it, as `policy` and `when` say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathCacheSpec {
    /// Default `default`, as GitLab's.
    pub key: Option<CacheKeySpec>,
    #[serde(default)]
    pub paths: Vec<Sp<String>>,
    /// Keys tried in order when `key` has no cache yet; never saved under.
    #[serde(default)]
    pub fallback_keys: Vec<Sp<String>>,
    /// Default `pull-push`.
    pub policy: Option<Sp<CachePolicy>>,
    /// When the cache is saved; default `on_success`.
    pub when: Option<Sp<ArtifactsWhen>>,
    /// GitLab's "cache every file git does not track": refused unless `false` (a job runs on
    /// an image, not in a checkout).
    pub untracked: Option<Sp<bool>>,
    /// GitLab keeps protected branches' caches apart unless this is set; forge has one cache
    /// per key whatever the branch, so either value reads the same.
    pub unprotect: Option<bool>,
}

/// `key:`: a name (variables expanded), or GitLab's key made from files' contents.
#[derive(Debug, Clone)]
pub enum CacheKeySpec {
    Name(Sp<String>),
    Files {
        /// One or two files, relative to the pipeline file's directory.
        files: Sp<Vec<Sp<String>>>,
        prefix: Option<Sp<String>>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFiles {
    files: Sp<Vec<Sp<String>>>,
    prefix: Option<Sp<String>>,
}

impl<'de> Deserialize<'de> for CacheKeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CacheKeySpec, D::Error> {
        let s = Sp::<KeyForm>::deserialize(d)?;
        Ok(match s.value {
            KeyForm::Name(n) => CacheKeySpec::Name(Sp::new(n, s.referenced, s.defined)),
            KeyForm::Files(k) => CacheKeySpec::Files {
                files: k.files,
                prefix: k.prefix,
            },
        })
    }
}

enum KeyForm {
    Name(String),
    Files(KeyFiles),
}

impl<'de> Deserialize<'de> for KeyForm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyForm, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyForm;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key, or a map of `files` and `prefix`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyForm, E> {
                Ok(KeyForm::Name(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyForm, E> {
                Ok(KeyForm::Name(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyForm, E> {
                Ok(KeyForm::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeyForm, A::Error> {
                KeyFiles::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(KeyForm::Files)
            }
        }
        d.deserialize_any(V)
    }
}

/// GitLab's `cache: policy:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CachePolicy {
    /// Restored, never saved.
    #[serde(rename = "pull")]
    Pull,
    /// Saved, never restored.
    #[serde(rename = "push")]
    Push,
    #[serde(rename = "pull-push")]
    PullPush,
}

impl CachePolicy {
    pub fn pulls(self) -> bool {
        self != CachePolicy::Push
    }

    pub fn pushes(self) -> bool {
        self != CachePolicy::Pull
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CachePolicy::Pull => "pull",
            CachePolicy::Push => "push",
            CachePolicy::PullPush => "pull-push",
        })
    }
}

impl<'de> Deserialize<'de> for JobCache {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobCache, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JobCache;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`false` (run the job whatever its recorded verdict), or GitLab's cache: a map \
                     of `key` and `paths`, or a list of them",
                )
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<JobCache, E> {
                Ok(JobCache::Verdicts(b))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JobCache, A::Error> {
                PathCacheSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(JobCache::Map)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JobCache, A::Error> {
                let mut out = Vec::new();
                while let Some(c) = seq.next_element()? {
                    out.push(c);
                }
                Ok(JobCache::Paths(out))
            }
        }
        d.deserialize_any(V)
    }
}
