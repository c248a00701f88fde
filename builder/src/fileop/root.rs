//! Path resolution confined to a root directory: symlinks met on the way are resolved as if the
//! root were `/` (an absolute target restarts at the root, `..` stops at it), so a hostile link in
//! a layer or an archive can never send a file operation outside the filesystem it works on.

use std::path::{Component, Path, PathBuf};

/// Linux's own limit on links followed while resolving one path.
const MAX_LINKS: usize = 40;

/// Why a path could not be resolved inside its root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// More links than the kernel would follow: a loop, most likely.
    #[error("too many levels of symbolic links resolving {path:?} in {root}")]
    TooManyLinks {
        /// The root.
        root: PathBuf,
        /// The path as given.
        path: String,
    },
    /// An intermediate entry could not be inspected.
    #[error("resolving {path:?} in {root}: {source}")]
    Io {
        /// The root.
        root: PathBuf,
        /// The path as given.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// Resolves `path` (absolute or relative, both taken from the root) under `root` like the kernel's
/// `RESOLVE_IN_ROOT`: every symlink among the parents is followed inside the root, and the last
/// component too when `follow_last` is set. Components that do not exist are kept as written, so
/// the result may name something still to be created. The result always starts with `root`.
///
/// Done in user space rather than with `openat2`: the trees forge works on are its own snapshot
/// directories, which nothing else changes while a file op runs, and paths are what the copy code
/// needs (it names entries to create).
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, RootError> {
    resolve_noting_links(root, path, follow_last, &mut |_| {})
}

/// [`resolve`], calling `on_link` with each symlink followed on the way (its own path under
/// `root`, before it is replaced by its target): a caller that sees only part of the tree (the
/// build context after `.dockerignore`) must know that every link crossed is part of it too.
pub fn resolve_noting_links(
    root: &Path,
    path: &str,
    follow_last: bool,
    on_link: &mut dyn FnMut(&Path),
) -> Result<PathBuf, RootError> {
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = join(root, &done).join(&c);
        let is_last = pending.is_empty();
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() && (!is_last || follow_last) => {
                on_link(&candidate);
                links += 1;
                if links > MAX_LINKS {
                    return Err(RootError::TooManyLinks {
                        root: root.to_path_buf(),
                        path: path.to_string(),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(|source| RootError::Io {
                    root: root.to_path_buf(),
                    path: path.to_string(),
                    source,
                })?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                pending.extend(components(&target).into_iter().rev());
            }
            Ok(_) => done.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => done.push(c),
            // A regular file used as a directory: the caller's own operation reports it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => done.push(c),
            Err(source) => {
                return Err(RootError::Io {
                    root: root.to_path_buf(),
                    path: path.to_string(),
                    source,
                });
            }
        }
    }
    Ok(join(root, &done))
}

/// The path's normal components and `..`s, in order (`.` and slashes dropped).
fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

fn join(root: &Path, comps: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("../../../../real", root.join("climb")).unwrap();
        symlink("/etc", root.join("hostetc")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve(root, "/abs/sub", true).unwrap(),
            root.join("real/sub")
        );
        assert_eq!(resolve(root, "climb/x", true).unwrap(), root.join("real/x"));
        assert_eq!(
            resolve(root, "/../../hostetc/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve(root, "/abs", false).unwrap(), root.join("abs"));
        assert!(matches!(
            resolve(root, "/loop1", true),
            Err(RootError::TooManyLinks { .. })
        ));
    }
}
