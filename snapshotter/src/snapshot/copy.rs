//! Copy snapshots, for filesystems where no overlay works: every snapshot's `fs/` is a full tree.
//! `prepare` copies the parent's tree (reflink where the filesystem can, else copy_file_range);
//! views bind the committed parent read-only; diffs walk and compare parent and child trees.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::meta::Db;
use super::{BackendKind, ChangeSource, Info, Kind, SnapshotError, Snapshotter, Usage};
use crate::mount::Mount;
use crate::unpack::{WhiteoutMode, sys};

/// Snapshots as full copies.
/// The file beside a snapshot's `fs` written when its copy of the parent was complete.
const COPIED_MARKER: &str = "copied";

#[derive(Debug)]
pub struct CopySnapshotter {
    db: Db,
}

impl CopySnapshotter {
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        Ok(CopySnapshotter {
            db: Db::open(root)?,
        })
    }

    fn fs(&self, id: u64) -> PathBuf {
        self.db.fs(id)
    }
}

impl Snapshotter for CopySnapshotter {
    fn root(&self) -> &Path {
        self.db.root()
    }

    fn missing_data(&self) -> Result<Vec<String>, SnapshotError> {
        self.db.missing()
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Copy
    }

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        let parent_fs = match parent {
            Some(p) => Some(self.db.read(|s| Ok(self.fs(s.get(p)?.id)))?),
            None => None,
        };
        // The copy runs under the metadata lock so that the parent cannot go away meanwhile.
        let (id, _) = self.db.create(key, parent, Kind::Active, |dir| {
            let fs = dir.join("fs");
            match &parent_fs {
                Some(src) => copy_tree(src, &fs)?,
                None => std::fs::create_dir(&fs)?,
            }
            // Written once the copy is whole: a file whose ctime is older than this marker is as
            // the copy made it (every write, chmod or utimes moves ctime), so the diff need not
            // read it (see `ChangeSource::Compare::copied_at`).
            std::fs::write(dir.join(COPIED_MARKER), b"")
        })?;
        Ok(vec![Mount::bind(self.fs(id), false)])
    }

    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        let (id, parents) = self.db.create(key, parent, Kind::View, |dir| {
            std::fs::create_dir(dir.join("fs"))
        })?;
        let shown = parents.first().copied().unwrap_or(id);
        Ok(vec![Mount::bind(self.fs(shown), true)])
    }

    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError> {
        self.db.commit(name, key).map(drop)
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        self.db.remove(key)
    }

    fn rename(&self, pairs: &[(String, String)]) -> Result<usize, SnapshotError> {
        self.db.rename(pairs)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        self.db.read(|state| {
            let r = state.get(key)?;
            Ok(match r.kind {
                Kind::Active => vec![Mount::bind(self.fs(r.id), false)],
                Kind::Committed => vec![Mount::bind(self.fs(r.id), true)],
                Kind::View => {
                    let shown = match &r.parent {
                        Some(p) => state.get(p)?.id,
                        None => r.id,
                    };
                    vec![Mount::bind(self.fs(shown), true)]
                }
            })
        })
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        self.db.stat(key)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        self.db.usage(key)
    }

    fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.db.list()
    }

    fn writable_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        self.db.writable_dir(key)
    }

    fn whiteout_mode(&self) -> WhiteoutMode {
        WhiteoutMode::Apply
    }

    fn changes(&self, key: &str) -> Result<(Kind, ChangeSource), SnapshotError> {
        self.db.read(|state| {
            let r = state.get(key)?;
            let lower = match &r.parent {
                Some(p) => Some(self.fs(state.get(p)?.id)),
                None => None,
            };
            let copied_at = lower.as_ref().and_then(|_| {
                std::fs::metadata(self.db.dir(r.id).join(COPIED_MARKER))
                    .and_then(|m| m.modified())
                    .ok()
            });
            Ok((
                r.kind,
                ChangeSource::Compare {
                    lower,
                    upper: self.fs(r.id),
                    copied_at,
                },
            ))
        })
    }
}

/// Copy a tree exactly: types, modes, owners, xattrs, mtimes and hard links (as links).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    copy_entry(src, dst, &mut links, &mut dirs)?;
    // Directory times last: filling a directory moves its mtime.
    for (path, md) in dirs.into_iter().rev() {
        set_times(&path, &md)?;
    }
    Ok(())
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dirs: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> io::Result<()> {
    let md = std::fs::symlink_metadata(src)?;
    let ft = md.file_type();
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            return std::fs::hard_link(first, dst);
        }
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    if ft.is_dir() {
        std::fs::create_dir(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_entry(&e.path(), &dst.join(e.file_name()), links, dirs)?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        let from = File::open(src)?;
        let to = File::options().write(true).create_new(true).open(dst)?;
        copy_data(&from, &to, md.len())?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        let c = CString::new(dst.as_os_str().as_bytes())?;
        // SAFETY: valid C string; mode and rdev come from the source's stat.
        let r = unsafe { libc::mknod(c.as_ptr(), md.mode() & libc::S_IFMT, md.rdev()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let bytes = dst.as_os_str().as_bytes();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    }
    if let Ok(xattrs) = sys::lxattrs(src.as_os_str().as_bytes()) {
        for (name, value) in xattrs {
            // Best effort like unpack: a namespace we may not write is skipped, not fatal.
            let _ = sys::lsetxattr(bytes, &name, &value);
        }
    }
    if !ft.is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    if ft.is_dir() {
        dirs.push((dst.to_path_buf(), md));
    } else {
        set_times(dst, &md)?;
    }
    Ok(())
}

fn set_times(path: &Path, md: &std::fs::Metadata) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b".");
    let dir = sys::open_dir(parent)?;
    sys::set_times_at(
        std::os::fd::AsFd::as_fd(&dir),
        name,
        md.mtime(),
        md.mtime_nsec(),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Share extents when the filesystem can (FICLONE), else let the kernel copy (copy_file_range,
/// which std's io::copy uses between files).
fn copy_data(from: &File, to: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: FICLONE takes the source descriptor as its argument.
    let r = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if r == 0 {
        return Ok(());
    }
    let mut from = from;
    let mut to = to;
    let copied = io::copy(&mut from, &mut to)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {copied} of {len} bytes"),
        ));
    }
    Ok(())
}
