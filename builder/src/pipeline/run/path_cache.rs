//! GitLab's caches of a job at run time. A cache is a plain-tar layer of the paths a job saved,
//! held in the store by a root of its own (kind [`ROOT_KIND`]) named by the pipeline and the
//! key, so that `forge prune` sees what it holds. Before the script it is laid on the job's
//! filesystem (when the job really runs, not for a recorded verdict); it is no input of the
//! job's key: a cache speeds a job up and must not change its result, as in GitLab. After the
//! script the paths are taken out of the job's filesystem, as artifacts are, and become the
//! key's new cache.

use std::path::Path;

use forge_snapshotter::store::{Descriptor, Store};

use super::job::JobSpec;
use super::{Runner, artifacts};
use crate::ops::{Artifacts, TestRestore};
use crate::pipeline::file::ArtifactsWhen;
use crate::pipeline::plan::{CacheKey, CachePlan, JobPlan};

/// The store's root kind a job cache's layer is held under.
pub const ROOT_KIND: &str = "job-cache";

/// The media type of a cache's layer.
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The root a cache is held by: `scope` (the pipeline: its file, or `forge serve`'s project)
/// keeps two pipelines' caches of the same key apart.
fn root_name(scope: &str, key: &str) -> String {
    format!("{}/{key}", &blake3::hash(scope.as_bytes()).to_hex()[..16])
}

/// The key `key` names in this run: as written, or GitLab's key made from files (their
/// contents' digest after `prefix-`; `default` when none of them exists). A file must resolve,
/// symlinks followed, inside `boundary`.
pub fn key_of(key: &CacheKey, base_dir: &Path, boundary: &Path) -> Result<String, String> {
    let (files, prefix) = match key {
        CacheKey::Name(n) => return Ok(n.clone()),
        CacheKey::Files { files, prefix } => (files, prefix),
    };
    let mut h = blake3::Hasher::new();
    let mut any = false;
    for f in files {
        h.update(f.as_bytes()).update(b"\0");
        let path = base_dir.join(f);
        match std::fs::canonicalize(&path) {
            Ok(real) => {
                let inside = std::fs::canonicalize(boundary)
                    .map(|b| real.starts_with(b))
                    .unwrap_or(false);
                if !inside {
                    return Err(format!(
                        "cache key file {f} resolves outside the pipeline's repository"
                    ));
                }
                let bytes = std::fs::read(&real).map_err(|e| format!("cache key file {f}: {e}"))?;
                h.update(&(bytes.len() as u64).to_le_bytes()).update(&bytes);
                any = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                h.update(b"missing\0");
            }
            Err(e) => return Err(format!("cache key file {f}: {e}")),
        }
    }
    let made = if any {
        h.finalize().to_hex()[..16].to_string()
    } else {
        crate::pipeline::job_cache::DEFAULT_KEY.to_string()
    };
    Ok(match prefix {
        Some(p) => format!("{p}-{made}"),
        None => made,
    })
}

/// The layer of the cache kept under `key` in `scope`, if there is one whose blob is in the store.
fn kept(store: &Store, scope: &str, key: &str) -> Result<Option<Descriptor>, String> {
    let name = root_name(scope, key);
    let roots = store
        .roots(ROOT_KIND)
        .map_err(|e| format!("reading the store's caches: {e}"))?;
    let Some((_, digests)) = roots.into_iter().find(|(n, _)| *n == name) else {
        return Ok(None);
    };
    let Some(digest) = digests.into_iter().next() else {
        return Ok(None);
    };
    match store.blob_size(&digest) {
        Ok(size) => Ok(Some(Descriptor {
            media_type: TAR.into(),
            digest,
            size,
        })),
        // A blob a `forge store check --repair` took away: no cache, not an error.
        Err(_) => Ok(None),
    }
}

/// What restoring `cache` (its key resolved to `key`) lays on the job's filesystem when it runs,
/// and what the job's log says then; `None` for a cache that is only saved (`policy: push`).
pub fn restore(
    store: &Store,
    scope: &str,
    cache: &CachePlan,
    key: &str,
) -> Result<Option<TestRestore>, String> {
    if !cache.policy.pulls() {
        return Ok(None);
    }
    for (i, k) in std::iter::once(key)
        .chain(cache.fallback_keys.iter().map(String::as_str))
        .enumerate()
    {
        if let Some(layer) = kept(store, scope, k)? {
            let from = if i == 0 {
                String::new()
            } else {
                format!(" from fallback key `{k}`")
            };
            return Ok(Some(TestRestore {
                say: format!(
                    "forge: cache `{key}`: restored{from} ({})",
                    human_bytes(layer.size)
                ),
                layer: Some(layer),
            }));
        }
    }
    Ok(Some(TestRestore {
        say: format!("forge: cache `{key}`: none kept yet"),
        layer: None,
    }))
}

/// Whether a job that passed (or not) saves `cache`.
pub fn saves(cache: &CachePlan, passed: bool) -> bool {
    cache.policy.pushes()
        && match cache.when {
            ArtifactsWhen::OnSuccess => passed,
            ArtifactsWhen::OnFailure => !passed,
            ArtifactsWhen::Always => true,
        }
}

/// Saves the entries of `taken` (what the job's run left at its artifact and cache paths) that
/// `paths` (absolute) select as the cache under `key`, replacing the one kept before. Returns
/// the log's lines: what was saved, and each path that matched nothing (written as `written`).
pub fn save(
    store: &Store,
    scope: &str,
    key: &str,
    taken: Option<&Artifacts>,
    paths: &[String],
    written: &[String],
) -> Result<Vec<String>, String> {
    let selected = artifacts::select(store, taken, paths, &[])?;
    let mut said: Vec<String> = selected
        .unmatched
        .iter()
        .map(|&i| format!("forge: warning: cache: {}: no matching files", written[i]))
        .collect();
    match selected.layer {
        Some(layer) => {
            store
                .set_root(
                    ROOT_KIND,
                    &root_name(scope, key),
                    std::slice::from_ref(&layer.digest),
                )
                .map_err(|e| format!("keeping cache `{key}`: {e}"))?;
            said.push(format!(
                "forge: cache `{key}`: saved ({})",
                human_bytes(layer.size)
            ));
        }
        None => said.push(format!(
            "forge: cache `{key}`: not saved, no path matched (the cache kept before stays)"
        )),
    }
    Ok(said)
}

impl Runner {
    /// Saves the job's GitLab caches its result calls for (`policy`, `when`) from what its run
    /// left, saying each in its log. A cache that cannot be kept is said, and fails nothing.
    pub(super) async fn save_caches(
        &self,
        plan: &JobPlan,
        spec: &JobSpec,
        taken: Option<&crate::ops::Artifacts>,
        passed: bool,
    ) {
        for (c, key) in plan.caches.iter().zip(&spec.cache_keys) {
            if !saves(c, passed) {
                continue;
            }
            let paths = artifacts::absolute_all(&spec.image.config.working_dir, &c.paths);
            let (store, scope, key, taken, written) = (
                self.session.store().clone(),
                self.options.cache_scope.clone(),
                key.clone(),
                taken.cloned(),
                c.paths.clone(),
            );
            let said = tokio::task::spawn_blocking(move || {
                save(&store, &scope, &key, taken.as_ref(), &paths, &written)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .unwrap_or_else(|e| vec![format!("forge: warning: cache: not saved: {e}")]);
            self.say_masked(plan, said);
        }
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_key_follows_the_files_contents_and_stays_inside_the_repository() {
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path();
        std::fs::write(dir.join("package-lock.json"), "v1").unwrap();
        let key = |files: &[&str], prefix: Option<&str>| {
            key_of(
                &CacheKey::Files {
                    files: files.iter().map(|f| f.to_string()).collect(),
                    prefix: prefix.map(str::to_string),
                },
                dir,
                dir,
            )
        };
        let first = key(&["package-lock.json"], None).unwrap();
        assert_eq!(first.len(), 16, "{first}");
        assert_eq!(key(&["package-lock.json"], None).unwrap(), first);
        let prefixed = key(&["package-lock.json"], Some("node")).unwrap();
        assert_eq!(prefixed, format!("node-{first}"));
        std::fs::write(dir.join("package-lock.json"), "v2").unwrap();
        assert_ne!(key(&["package-lock.json"], None).unwrap(), first);
        // None of the files there: GitLab's `default`.
        assert_eq!(key(&["nothing.lock"], None).unwrap(), "default");
        assert_eq!(key(&["nothing.lock"], Some("p")).unwrap(), "p-default");
        // A link out of the repository is refused, not read.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.join("link")).unwrap();
        let e = key(&["link"], None).unwrap_err();
        assert!(e.contains("outside the pipeline's repository"), "{e}");
        assert_eq!(
            key_of(&CacheKey::Name("deps".into()), dir, dir).unwrap(),
            "deps"
        );
    }

    #[test]
    fn when_a_cache_is_saved_follows_its_policy_and_when() {
        use crate::pipeline::file::CachePolicy;
        let cache = |policy, when| CachePlan {
            key: CacheKey::Name("k".into()),
            fallback_keys: Vec::new(),
            paths: vec!["x".into()],
            policy,
            when,
        };
        let c = cache(CachePolicy::PullPush, ArtifactsWhen::OnSuccess);
        assert!(saves(&c, true) && !saves(&c, false));
        let c = cache(CachePolicy::Pull, ArtifactsWhen::Always);
        assert!(!saves(&c, true) && !saves(&c, false));
        let c = cache(CachePolicy::Push, ArtifactsWhen::OnFailure);
        assert!(!saves(&c, true) && saves(&c, false));
        let c = cache(CachePolicy::PullPush, ArtifactsWhen::Always);
        assert!(saves(&c, true) && saves(&c, false));
    }
}
