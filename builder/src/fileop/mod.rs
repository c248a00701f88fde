//! The executor of [`FileOp`](crate::graph::FileOp) actions: COPY/ADD, WORKDIR, heredoc files, rm
//! and symlinks applied in process on plain directories (the solver points it at snapshot mounts).
//! Semantics follow BuildKit's file backend and fsutil's copier; every path is resolved inside its
//! root so no link in a layer, a context or an archive can reach outside it.

pub(crate) mod archive;
mod copy;
mod meta;
mod owner;
mod pool;
pub mod root;
mod sparse;

use std::path::{Path, PathBuf};

use crate::graph::{FileAction, NodeRef};
use crate::source::context::pattern::{self, BadPattern};

use crate::slashpath::join_root;
pub use meta::ModeSpec;
pub(crate) use meta::fd_xattrs;
pub use owner::Ids;
pub(crate) use pool::workers as copy_workers;
use root::{RootError, resolve};

/// A file action that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    /// A COPY/ADD source without wildcards that the input does not contain.
    #[error("source {src:?} not found")]
    SourceNotFound {
        /// The source as given.
        src: String,
    },
    /// A COPY/ADD source that is a symlink to nothing in the input (BuildKit names the target).
    #[error("source {src:?} is a symlink to {target:?}, which is not there")]
    DanglingSource {
        /// The source as given.
        src: String,
        /// The link's target as written.
        target: String,
    },
    /// A wildcard matching nothing where that is not allowed.
    #[error("no source files match {pattern:?}")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// A path `--parents` requires that the input does not contain.
    #[error("required path {path:?} not found in the source")]
    RequiredPath {
        /// The path.
        path: String,
    },
    /// A copy from an input the caller has no directory for.
    #[error("no filesystem given for input {input:?}")]
    MissingInput {
        /// The input.
        input: NodeRef,
    },
    /// A directory is in the way of a file, or a file in the way of a directory.
    #[error("cannot copy {what} onto {path}: {reason}")]
    Conflict {
        /// What was being copied.
        what: &'static str,
        /// The destination entry.
        path: PathBuf,
        /// What is there.
        reason: &'static str,
    },
    /// A wildcard Go's `filepath.Match` rejects.
    #[error(transparent)]
    BadPattern(#[from] BadPattern),
    /// An `--exclude` pattern that does not parse.
    #[error("invalid exclude patterns {patterns:?}: {reason}")]
    Exclude {
        /// The patterns.
        patterns: Vec<String>,
        /// The parser's complaint.
        reason: String,
    },
    /// A `--chmod` value that cannot be applied.
    #[error("invalid chmod {value:?}")]
    Chmod {
        /// The value.
        value: String,
    },
    /// A `--chown` (or stage user) that cannot be resolved to ids.
    #[error("cannot resolve owner {owner:?}: {reason}")]
    Owner {
        /// The owner as written.
        owner: String,
        /// Why.
        reason: String,
    },
    /// The parent of a destination that must already exist.
    #[error("destination parent {path:?} does not exist")]
    DestParentMissing {
        /// The destination.
        path: String,
    },
    /// An archive entry that would land outside the destination, or that cannot be represented.
    #[error("refusing archive {archive} entry {entry:?}: {reason}")]
    ArchiveEntry {
        /// The archive.
        archive: PathBuf,
        /// The entry's name.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A path that could not be resolved inside its root.
    #[error(transparent)]
    Root(#[from] RootError),
    /// A filesystem call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Its path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileOpError {
    let path = path.to_path_buf();
    move |source| FileOpError::Io { op, path, source }
}

/// The directories holding the inputs' filesystems (the `from` of COPY actions).
pub trait SourceDirs {
    /// The root directory of `input`'s filesystem, or `None` when the caller has none.
    fn dir(&self, input: NodeRef) -> Option<&Path>;

    /// Which entries of `input` exist for a copy, when not all of those on disk do: the build
    /// context's directory also holds what `.dockerignore` excludes, which COPY must not see.
    /// `None` (the default) means every entry is visible.
    fn visible(&self, input: NodeRef) -> Option<&Visible> {
        let _ = input;
        None
    }

    /// Whether files copied from `input` without `--chown` belong to root in the result rather
    /// than keeping their owners on disk: true for the build context, whose host owners mean
    /// nothing in an image. Archives ADD unpacks from it keep the owners their entries name.
    fn root_owned(&self, input: NodeRef) -> bool {
        let _ = input;
        false
    }
}

/// Whether an entry, named by its path relative to the source root (no leading slash; empty is
/// the root), is part of a source.
pub type Visible = dyn Fn(&Path) -> bool + Send + Sync;

impl SourceDirs for std::collections::HashMap<NodeRef, PathBuf> {
    fn dir(&self, input: NodeRef) -> Option<&Path> {
        self.get(&input).map(PathBuf::as_path)
    }
}

impl SourceDirs for [(NodeRef, PathBuf)] {
    fn dir(&self, input: NodeRef) -> Option<&Path> {
        self.iter()
            .find(|(r, _)| *r == input)
            .map(|(_, p)| p.as_path())
    }
}

/// Applies `actions` in order to the filesystem rooted at `dest_root` (the op's base, already
/// materialised there, or an empty directory for scratch). Owners written as names are looked up in
/// `dest_root`'s `/etc/passwd` and `/etc/group`, as BuildKit does. Returns what the build should
/// warn about: owner names that were not found (BuildKit then uses id 0 and says nothing).
pub fn apply(
    actions: &[FileAction],
    dest_root: &Path,
    sources: &dyn SourceDirs,
) -> Result<Vec<String>, FileOpError> {
    apply_with_upper(actions, dest_root, None, sources)
}

/// [`apply`] on a writable kernel overlay mounted at `dest_root` whose upper directory is `upper`.
/// A directory source's files that land in a directory the copy itself made are created in
/// `upper` directly: such a directory is new in the upper layer and in no lower one, so the file
/// ends up exactly where the overlay would have put it, without the overlay's lookups and
/// credential switches (about half of the cost of each file). Everything else (directories,
/// links, anything replacing or next to what the lower layers have) goes through the mount.
pub fn apply_with_upper(
    actions: &[FileAction],
    dest_root: &Path,
    upper: Option<&Path>,
    sources: &dyn SourceDirs,
) -> Result<Vec<String>, FileOpError> {
    let mut notes = Vec::new();
    for action in actions {
        apply_one(action, dest_root, upper, sources, &mut notes)?;
    }
    Ok(notes)
}

fn apply_one(
    action: &FileAction,
    dest_root: &Path,
    upper: Option<&Path>,
    sources: &dyn SourceDirs,
    notes: &mut Vec<String>,
) -> Result<(), FileOpError> {
    let mut owner_of = |owner: Option<&str>| -> Result<Option<Ids>, FileOpError> {
        let (ids, note) = owner::resolve_owner(dest_root, owner)?;
        notes.extend(note);
        Ok(ids)
    };
    match action {
        FileAction::Copy {
            from,
            src,
            dest,
            options,
        } => {
            let src_root = match from {
                Some(r) => Some(
                    sources
                        .dir(*r)
                        .ok_or(FileOpError::MissingInput { input: *r })?,
                ),
                None => None,
            };
            let visible = from.and_then(|r| sources.visible(r));
            let owner = owner_of(options.owner.as_deref())?;
            let plain_owner = match owner {
                None if from.is_some_and(|r| sources.root_owned(r)) => Some(Ids { uid: 0, gid: 0 }),
                other => other,
            };
            copy::copy(
                src_root,
                src,
                dest_root,
                dest,
                options,
                copy::Owners {
                    archive: owner,
                    plain: plain_owner,
                },
                visible,
                upper,
            )
        }
        FileAction::Mkdir {
            path,
            mode,
            make_parents,
            owner,
        } => {
            let ids = owner_of(owner.as_deref())?;
            let p = resolve(dest_root, path, true)?;
            if *make_parents {
                meta::mkdir_all(dest_root, &p, mode & 0o7777, ids)
            } else {
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
                    Err(e) => return Err(io("creating directory", &p)(e)),
                }
                meta::set_mode(&p, mode & 0o7777)?;
                meta::chown(&p, ids)
            }
        }
        FileAction::Mkfile {
            path,
            mode,
            data,
            owner,
        } => {
            let ids = owner_of(owner.as_deref())?;
            let p = resolve(dest_root, path, true)?;
            std::fs::write(&p, data).map_err(io("writing", &p))?;
            meta::chown(&p, ids)?;
            meta::set_mode(&p, mode & 0o7777)
        }
        FileAction::Rm {
            path,
            allow_not_found,
            allow_wildcard,
        } => {
            if *allow_wildcard && pattern::has_wildcards(path) {
                for m in copy::resolve_wildcards(dest_root, &join_root(path), false, None)? {
                    rm_path(dest_root, &m, *allow_not_found)?;
                }
                Ok(())
            } else {
                rm_path(dest_root, path, *allow_not_found)
            }
        }
        FileAction::Symlink { target, link } => {
            let p = resolve(dest_root, link, false)?;
            std::os::unix::fs::symlink(target, &p).map_err(io("creating symlink", &p))
        }
    }
}

/// Removes `path` (its parents resolved in the root, the entry itself never followed).
fn rm_path(root: &Path, path: &str, allow_not_found: bool) -> Result<(), FileOpError> {
    let p = resolve(root, path, false)?;
    if p == root {
        return Err(FileOpError::Conflict {
            what: "rm",
            path: p,
            reason: "the root cannot be removed",
        });
    }
    match std::fs::symlink_metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if allow_not_found {
                Ok(())
            } else {
                Err(io("removing", &p)(e))
            }
        }
        Err(e) => Err(io("removing", &p)(e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).map_err(io("removing", &p)),
        Ok(_) => std::fs::remove_file(&p).map_err(io("removing", &p)),
    }
}
