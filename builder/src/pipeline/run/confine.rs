//! What a pipeline may read from the host. Its file comes from a repository that anyone who can
//! push to it writes (under `forge serve`, a stranger's commit), and its jobs run sandboxed; an
//! image context or Dockerfile outside the repository (`context: /etc`, `../../..`, or a committed
//! symlink pointing out) would put the host's files in an image and in logs anyone may read. So
//! each path is resolved, symlinks followed, and must stay inside the run's boundary.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::api::input::{Cap, read_text_capped};
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

/// The text of the file at `path`, at most `cap` of it, when it is a regular file that resolves
/// inside `boundary`. For what a server reads of a stranger's checkout itself (its forge.yaml, the
/// Dockerfiles named in it): a link out would show the host's files in the error quoting them, and
/// a FIFO or a link to a pipe (`/proc/self/fd/N`) would block the reader for ever. The open is
/// non-blocking and the kind is checked on the opened file, so a FIFO swapped in after the check
/// blocks nothing either.
pub fn read_file_inside(
    what: &str,
    path: &Path,
    boundary: &Path,
    cap: Cap,
) -> Result<String, String> {
    let real = inside(what, path, boundary)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&real)
        .map_err(|e| format!("{what}: {e}"))?;
    let kind = file
        .metadata()
        .map_err(|e| format!("{what}: {e}"))?
        .file_type();
    if !kind.is_file() {
        return Err(format!("{what} is not a regular file"));
    }
    read_text_capped(file, cap, what)
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
    fn only_regular_files_inside_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(repo.join("dir")).unwrap();
        std::fs::write(repo.join("forge.yaml"), "images: {}\n").unwrap();
        std::fs::write(tmp.path().join("private"), "root:secret\n").unwrap();
        std::os::unix::fs::symlink("forge.yaml", repo.join("in-link")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("private"), repo.join("out-link")).unwrap();
        let fifo = repo.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("fifo", repo.join("fifo-link")).unwrap();
        let cap = crate::api::input::PIPELINE_FILE;
        let read = |name: &str| read_file_inside("`f`", &repo.join(name), &repo, cap);
        assert_eq!(read("forge.yaml").as_deref(), Ok("images: {}\n"));
        assert_eq!(read("in-link").as_deref(), Ok("images: {}\n"));
        let e = read("out-link").unwrap_err();
        assert!(e.contains("outside") && !e.contains("root:secret"), "{e}");
        // Without a writer, a blocking open of a FIFO would never return.
        for name in ["fifo", "fifo-link", "dir"] {
            let e = read(name).unwrap_err();
            assert_eq!(e, "`f` is not a regular file");
        }
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
