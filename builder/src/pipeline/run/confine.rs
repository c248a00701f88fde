//! What a pipeline may read from the host. Its file comes from a repository that anyone who can
//! push to it writes (under `forge serve`, a stranger's commit), and its jobs run sandboxed; an
//! image context or Dockerfile outside the repository (`context: /etc`, `../../..`, or a committed
//! symlink pointing out) would put the host's files in an image and in logs anyone may read. So
//! each path is resolved, symlinks followed, and must stay inside the run's boundary.

use std::path::{Path, PathBuf};

use crate::cache_io::CacheLocation;

/// `path` with every symlink resolved, when it lies inside `boundary` (itself resolved); else an
/// error saying where `what` (`the context \`../x\``, as the file wrote it) leads.
pub(super) fn inside(what: &str, path: &Path, boundary: &Path) -> Result<PathBuf, String> {
    let top = std::fs::canonicalize(boundary)
        .map_err(|e| format!("the pipeline's directory {}: {e}", boundary.display()))?;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{what}: {e}"))?;
    if real.starts_with(&top) {
        Ok(real)
    } else {
        Err(format!(
            "{what} resolves to {}, outside {} (a pipeline builds only from its own \
             repository's files)",
            real.display(),
            top.display()
        ))
    }
}

/// A `type=local` cache directory must lie inside `boundary` too (it may not exist yet: the
/// nearest existing parent decides). Registry caches need no check.
pub(super) fn cache_inside(location: &CacheLocation, boundary: &Path) -> Result<(), String> {
    let CacheLocation::Local { dir, .. } = location else {
        return Ok(());
    };
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    // What is below the existing part is created by the export, inside it.
    if dir
        .components()
        .any(|c| c == std::path::Component::ParentDir)
        && existing != dir
    {
        return Err(format!(
            "the local cache {} climbs with `..` below a directory that does not exist yet",
            dir.display()
        ));
    }
    inside(&format!("the local cache {location}"), existing, boundary).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_links_inside_pass_and_those_leading_out_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let outside = tmp.path().join("private");
        std::fs::create_dir_all(repo.join("app")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, repo.join("out-link")).unwrap();
        std::os::unix::fs::symlink("app", repo.join("in-link")).unwrap();

        let real_app = std::fs::canonicalize(repo.join("app")).unwrap();
        assert_eq!(
            inside("app", &repo.join("app"), &repo),
            Ok(real_app.clone())
        );
        assert_eq!(
            inside("in-link", &repo.join("in-link"), &repo),
            Ok(real_app)
        );
        assert!(inside(".", &repo, &repo).is_ok());
        for bad in [
            repo.join("out-link"),
            repo.join(".."),
            repo.join("app/../../private"),
            outside.clone(),
        ] {
            let e = inside("the context `x`", &bad, &repo).unwrap_err();
            let leads = if bad.ends_with("..") {
                tmp.path()
            } else {
                outside.as_path()
            };
            let real = std::fs::canonicalize(leads).unwrap();
            assert!(
                e.starts_with(&format!(
                    "the context `x` resolves to {}, outside",
                    real.display()
                )) && e.contains("own repository"),
                "{e}"
            );
        }
        let e = inside("the Dockerfile `D`", &repo.join("app/Dockerfile"), &repo).unwrap_err();
        assert!(
            e.starts_with("the Dockerfile `D`: ") && e.contains("No such file"),
            "{e}"
        );
    }

    #[test]
    fn local_caches_inside_only() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let local = |dir: PathBuf| CacheLocation::Local {
            dir,
            tag: "latest".into(),
        };
        assert!(cache_inside(&local(repo.join("cache/new")), &repo).is_ok());
        assert!(cache_inside(&local(tmp.path().join("elsewhere")), &repo).is_err());
        assert!(cache_inside(&local(repo.join("new/../../out")), &repo).is_err());
        let registry = CacheLocation::Registry("127.0.0.1:5000/c:1".parse().unwrap());
        assert!(cache_inside(&registry, &repo).is_ok());
    }
}
