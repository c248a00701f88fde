//! A job's `cache:` -> whether its recorded verdict may serve it, and its GitLab caches
//! ([`CachePlan`]s): keys and paths expanded, and what GitLab refuses refused here at its place
//! (a key with `/`, more than 4 caches, more than 5 fallback keys, `key: files:` of more than
//! two files), with what forge cannot do (`untracked: true`).

use std::collections::BTreeMap;

use super::error::{PipelineError, Pos};
use super::expand::expand_at;
use super::file::{ArtifactsWhen, CacheKeySpec, CachePolicy, JobCache, PathCacheSpec, Sp, pos_of};
use super::plan::{CacheKey, CachePlan};

/// GitLab's limits.
const MAX_CACHES: usize = 4;
const MAX_FALLBACK_KEYS: usize = 5;
const MAX_KEY_FILES: usize = 2;

/// The key a cache without `key:` has, as in GitLab.
pub const DEFAULT_KEY: &str = "default";

/// `cache:` of a job (`own`, else `default:`'s), with `vars` the job's variables: whether the
/// job may be served by its recorded verdict, and its caches of paths.
pub(super) fn plan(
    own: Option<&Sp<JobCache>>,
    default: Option<&Sp<JobCache>>,
    source: &str,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<PipelineError>,
) -> (bool, Vec<CachePlan>) {
    let Some(cache) = own.or(default) else {
        return (true, Vec::new());
    };
    let list = match &cache.value {
        JobCache::Verdicts(b) => return (*b, Vec::new()),
        JobCache::Map(one) => std::slice::from_ref(one),
        JobCache::Paths(list) => list,
    };
    let at = pos_of(cache);
    if list.len() > MAX_CACHES {
        errors.push(
            PipelineError::new(at, format!("{} caches in one job", list.len())).with_hint(Some(
                format!(
                    "a job has at most {MAX_CACHES} caches, as in GitLab; give several paths to one"
                ),
            )),
        );
    }
    let plans = list
        .iter()
        .map(|c| one(c, at, source, vars, errors))
        .collect();
    (true, plans)
}

fn one(
    c: &PathCacheSpec,
    at: Pos,
    source: &str,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<PipelineError>,
) -> CachePlan {
    let expanded = |s: &Sp<String>, errors: &mut Vec<PipelineError>| {
        expand_at(s, source, vars).map_err(|e| errors.push(e)).ok()
    };
    if let Some(u) = &c.untracked
        && u.value
    {
        errors.push(
            PipelineError::new(pos_of(u), "`untracked: true` is not supported").with_hint(Some(
                "a job runs on its image's filesystem, not in a git checkout, so nothing is \
                 untracked: list what to keep under `paths:`"
                    .into(),
            )),
        );
    }
    if c.paths.is_empty() {
        let at = match &c.key {
            Some(CacheKeySpec::Name(k)) => pos_of(k),
            Some(CacheKeySpec::Files { files, .. }) => pos_of(files),
            None => at,
        };
        errors.push(
            PipelineError::new(at, "a cache without `paths:` keeps nothing").with_hint(Some(
                "list what to keep (`paths: [node_modules/]`), or write `cache: []` for no cache"
                    .into(),
            )),
        );
    }
    let key = match &c.key {
        None => CacheKey::Name(DEFAULT_KEY.into()),
        Some(CacheKeySpec::Name(k)) => {
            // A key that did not expand is refused there already; checking what is left of it
            // would add a wrong second error (`cache key `` is empty`).
            let name = expanded(k, errors);
            if let Some(name) = &name {
                check_key(name, pos_of(k), "cache key", errors);
            }
            CacheKey::Name(name.unwrap_or_default())
        }
        Some(CacheKeySpec::Files { files, prefix }) => {
            if files.value.is_empty() || files.value.len() > MAX_KEY_FILES {
                errors.push(
                    PipelineError::new(
                        pos_of(files),
                        format!("`key: files:` lists {} files", files.value.len()),
                    )
                    .with_hint(Some(
                        "list one or two files whose contents make the key (a lock file), as \
                         GitLab allows"
                            .into(),
                    )),
                );
            }
            for f in &files.value {
                if f.value.is_empty() || f.value.starts_with('/') {
                    errors.push(
                        PipelineError::new(pos_of(f), format!("cache key file `{}`", f.value))
                            .with_hint(Some(
                                "name a file relative to the pipeline file's directory".into(),
                            )),
                    );
                }
            }
            let prefix = prefix.as_ref().and_then(|p| {
                let v = expanded(p, errors)?;
                check_key(&v, pos_of(p), "cache key prefix", errors);
                Some(v)
            });
            CacheKey::Files {
                files: files.value.iter().map(|f| f.value.clone()).collect(),
                prefix,
            }
        }
    };
    if c.fallback_keys.len() > MAX_FALLBACK_KEYS {
        errors.push(
            PipelineError::new(
                pos_of(&c.fallback_keys[MAX_FALLBACK_KEYS]),
                format!("{} fallback keys", c.fallback_keys.len()),
            )
            .with_hint(Some(format!(
                "a cache has at most {MAX_FALLBACK_KEYS} fallback keys, as in GitLab"
            ))),
        );
    }
    let fallback_keys = c
        .fallback_keys
        .iter()
        .filter_map(|k| {
            let v = expanded(k, errors)?;
            check_key(&v, pos_of(k), "fallback key", errors);
            Some(v)
        })
        .collect();
    CachePlan {
        key,
        fallback_keys,
        paths: c.paths.iter().filter_map(|p| expanded(p, errors)).collect(),
        policy: c.policy.as_ref().map_or(CachePolicy::PullPush, |p| p.value),
        when: c
            .when
            .as_ref()
            .map_or(ArtifactsWhen::OnSuccess, |w| w.value),
    }
}

/// GitLab's rule for a key: not empty, no `/` (nor its URL encoding), not `.` or `..`.
fn check_key(key: &str, at: Pos, what: &str, errors: &mut Vec<PipelineError>) {
    let lower = key.to_ascii_lowercase();
    let bad = if key.trim().is_empty() {
        Some("is empty")
    } else if key.contains('/') || lower.contains("%2f") {
        Some("contains `/`")
    } else if matches!(lower.as_str(), "." | ".." | "%2e" | "%2e%2e") {
        Some("is `.` or `..`")
    } else {
        None
    };
    if let Some(bad) = bad {
        errors.push(
            PipelineError::new(at, format!("{what} `{key}` {bad}")).with_hint(Some(
                "a key names a cache: no `/`, and not `.` or `..` (as in GitLab); \
                 `$CI_COMMIT_REF_SLUG` is a branch name made safe for one"
                    .into(),
            )),
        );
    }
}
