//! The build context as a RUN step's bind or cache mount sees it: what `.dockerignore` keeps of
//! the part the mount names (BuildKit's mount shows the transferred context). A read-only bind of
//! a part nothing was left out of, whose owners look the same either way, is the host's own
//! directory bound read-only: no file is touched, however large the part. Otherwise the part alone
//! is recreated in a throwaway snapshot, the view: hard links where the kernel allows them, copies
//! where it does not.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use forge_runner::spec::CacheSeed;
use forge_snapshotter::snapshot::Snapshotter;

use super::{BuildExecutor, ExecError, LocalDir, Mounted, blocking, io_err};
use crate::fileop::{self, FileOpError};
use crate::source::context::{Entry, EntryKind, Subtree};

/// Where a step finds the part of a local directory it binds.
pub(super) enum LocalBind {
    /// The host's own file or directory, for a read-only bind.
    InPlace(PathBuf),
    /// A path inside a view the step must hold until it ends.
    View(Mounted, PathBuf),
}

impl BuildExecutor {
    /// The part of local directory `name` at `source` for a bind mount. A view's throwaway
    /// snapshot key is added to `scratch_keys` before anything is made under it, so the caller's
    /// clean-up removes it whatever happens.
    pub(super) async fn local_bind(
        &self,
        name: &str,
        source: &str,
        readonly: bool,
        scratch_keys: &mut Vec<String>,
    ) -> Result<LocalBind, ExecError> {
        let local = self.local(name)?;
        let sub = local.snapshot.subtree(source);
        // Read-only in every runner: nothing may be mounted below it (see `mounts_below`).
        if readonly
            && let Some(sub) = &sub
            && let Some(host) = in_place(&local.dir, source, sub)
            && !mounts_below(&host)
        {
            return Ok(LocalBind::InPlace(host));
        }
        let key = self.unique("ctx");
        scratch_keys.push(key.clone());
        let view = self.local_view(local, source, &key, !readonly).await?;
        // Where the source leads was resolved in the snapshot; the view holds that part alone, so
        // it is joined, not resolved again. A source the snapshot cannot resolve got the whole
        // context, and resolves (or fails) there as it always did.
        let path = match &sub {
            Some(sub) => view.path().join(sub.path),
            None => inside(view.path(), source)?,
        };
        Ok(LocalBind::View(view, path))
    }

    /// The seed of a cache mount from local directory `name` at `source` (copied when the cache
    /// is made): the host's directory itself where a view would show the same, else a view,
    /// which the step must hold until it ends.
    pub(super) async fn local_seed(
        &self,
        name: &str,
        source: &str,
        scratch_keys: &mut Vec<String>,
    ) -> Result<(CacheSeed, Option<Mounted>), ExecError> {
        let local = self.local(name)?;
        let sub = local.snapshot.subtree(source);
        // The runner resolves the seed's path inside its root without leaving it (openat2
        // RESOLVE_IN_ROOT), and copies what it finds without following links.
        if let Some(sub) = &sub
            && in_place(&local.dir, source, sub).is_some()
        {
            let seed = CacheSeed {
                root: local.dir.clone(),
                path: PathBuf::from(sub.path),
            };
            return Ok((seed, None));
        }
        let key = self.unique("ctx");
        scratch_keys.push(key.clone());
        let view = self.local_view(local, source, &key, false).await?;
        let path = match &sub {
            Some(sub) => PathBuf::from(sub.path),
            None => PathBuf::from(source),
        };
        let seed = CacheSeed {
            root: view.path().to_path_buf(),
            path,
        };
        Ok((seed, Some(view)))
    }

    /// The view of `local`'s part at `source` (all of it when the snapshot cannot resolve
    /// `source`) in the throwaway snapshot `key`. Read-only views hard-link files where the kernel
    /// allows (the mount is read-only, so the host's files cannot change through it); writable
    /// ones copy, as writes are discarded with the snapshot.
    async fn local_view(
        &self,
        local: &LocalDir,
        source: &str,
        key: &str,
        writable: bool,
    ) -> Result<Mounted, ExecError> {
        let mounts = self.cfg.snapshots.prepare(key, None)?;
        let dir = self.cfg.snapshots.writable_dir(key)?;
        let (src, snapshot, source, fill) = (
            local.dir.clone(),
            local.snapshot.clone(),
            source.to_string(),
            dir.clone(),
        );
        blocking(move || {
            let entries: Vec<&Entry> = match snapshot.subtree(&source) {
                Some(sub) => sub.entries().collect(),
                None => snapshot.entries().iter().collect(),
            };
            populate_view(&src, &entries, &fill, !writable)
        })
        .await?;
        Ok(
            Mounted::mount(&mounts, self.cfg.scratch.work().join(self.unique("ctxm")))?
                .emptied_on_drop(dir),
        )
    }
}

/// The host path of `sub`, the part of the context `dir` that `source` names, when the host's
/// tree there holds what the view would: nothing in it was left out, it holds only what the view
/// recreates (no fifo, socket or device), and its owners look the same through a bind or a copy
/// as in the view. The source is resolved again on the host (confined to `dir`, as the view's path
/// is confined to the view) and must still lead to the same place, the same kind of entry,
/// without a link the snapshot did not have.
fn in_place(dir: &Path, source: &str, sub: &Subtree<'_>) -> Option<PathBuf> {
    let ids = Ids::current();
    if !sub.whole || !shows_as_view(sub, &ids) {
        return None;
    }
    let host = dir.join(sub.path);
    let now = crate::fileop::root::resolve(dir, source, true).ok()?;
    if now != host {
        return None;
    }
    let md = std::fs::symlink_metadata(&host).ok()?;
    let same_kind = match sub.top.map(|e| e.kind) {
        None | Some(EntryKind::Dir) => md.is_dir(),
        Some(EntryKind::File) => md.is_file(),
        Some(_) => false,
    };
    // The root has no entry of its own: its owner is read here.
    if !same_kind || !ids.shows_as_view(md.uid(), md.gid()) {
        return None;
    }
    Some(host)
}

/// Whether every entry of `sub` is one the view recreates, owned so that a bind shows it as the
/// view does.
fn shows_as_view(sub: &Subtree<'_>, ids: &Ids) -> bool {
    sub.entries().all(|e| {
        matches!(
            e.kind,
            EntryKind::File | EntryKind::Dir | EntryKind::Symlink
        ) && ids.shows_as_view(e.uid, e.gid)
    })
}

/// Who forge is, as far as links and owners in a view go.
struct Ids {
    euid: u32,
    egid: u32,
    /// In a user namespace (rootless, or root in a container's namespace): ids not mapped there
    /// show as the overflow ids, and capabilities reach only files whose owner is mapped.
    userns: bool,
    /// The uid an unmapped owner shows as (`/proc/sys/kernel/overflowuid`).
    overflow_uid: u32,
    /// `fs.protected_hardlinks`: a file may be linked only by its owner, by a holder of
    /// CAP_FOWNER over it, or by one who may read and write it.
    protected_hardlinks: bool,
}

impl Ids {
    /// This process's, read once.
    fn current() -> Ids {
        static IDS: std::sync::OnceLock<(bool, u32, bool)> = std::sync::OnceLock::new();
        let read = |path: &str, default: u32| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        let (userns, overflow_uid, protected_hardlinks) = *IDS.get_or_init(|| {
            (
                forge_snapshotter::userns::in_user_namespace(),
                read("/proc/sys/kernel/overflowuid", 65534),
                // Unreadable: assumed on, which only costs a link that could have been tried.
                read("/proc/sys/fs/protected_hardlinks", 1) != 0,
            )
        });
        Ids {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            userns,
            overflow_uid,
            protected_hardlinks,
        }
    }

    fn real_root(&self) -> bool {
        self.euid == 0 && !self.userns
    }

    /// Whether an entry owned by `uid:gid` shows the same through a bind of the host's tree as
    /// through the view. Real root's view links or copies with every owner kept. Anyone else's
    /// view shows a file of another owner as a copy chowned where the namespace allows it (to the
    /// overflow id, in a user namespace with a subordinate range; not at all with the user's own
    /// id alone), where a bind shows the host's owner, which a user namespace cannot map: only the
    /// process's own files look the same both ways.
    fn shows_as_view(&self, uid: u32, gid: u32) -> bool {
        self.real_root() || (uid == self.euid && gid == self.egid)
    }

    /// Whether the kernel may let this process hard-link a file of `e` (see
    /// `protected_hardlinks`): a link it refuses costs a failed linkat before the copy, one per
    /// file of a checkout another user owns.
    fn may_link(&self, e: &Entry) -> bool {
        if !self.protected_hardlinks || self.real_root() || e.uid == self.euid {
            return true;
        }
        // Root of a user namespace holds CAP_FOWNER over files whose owner is mapped there;
        // an unmapped owner shows as the overflow id.
        if self.userns && self.euid == 0 && e.uid != self.overflow_uid {
            return true;
        }
        // A "safe" source: not setuid, not setgid and group-executable, readable and writable.
        let safe_bits = e.mode & 0o4000 == 0 && e.mode & 0o2010 != 0o2010;
        let writable = e.mode & 0o006 == 0o006 || (e.gid == self.egid && e.mode & 0o060 == 0o060);
        safe_bits && writable
    }
}

/// Whether anything is mounted strictly below `dir`. A read-only bind is not read-only below it
/// everywhere: runc (the containerd runner) makes the bind's own mount read-only, not the mounts
/// inside it. Unreadable mount table: assumed so.
fn mounts_below(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return true;
    };
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else {
        return true;
    };
    table.split(|b| *b == b'\n').any(|line| {
        // The fifth field is the mount point, with space, tab, newline and backslash as octal
        // escapes.
        let Some(field) = line.split(|b| *b == b' ').nth(4) else {
            return false;
        };
        let point = unescape_mountinfo(field);
        let point = Path::new(OsStr::from_bytes(&point));
        point != dir && point.starts_with(&dir)
    })
}

/// A mountinfo field with its `\ooo` escapes decoded.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Recreates `entries` (kept entries of the context directory `src`, in path order) under `dest`,
/// with the directories that lead to the first: directories, files (hard links when `link` and
/// the kernel allows, else copies), symlinks as links. Owners, modes and mtimes follow the source;
/// fifos, sockets and devices are left out. Directories and links are made first, then the files,
/// which are most of the work (a copy each where links are refused), on worker threads when there
/// are many.
pub(super) fn populate_view(
    src: &Path,
    entries: &[&Entry],
    dest: &Path,
    link: bool,
) -> Result<(), ExecError> {
    let ids = Ids::current();
    let creator = (ids.euid, ids.egid);
    if let Some(parent) = entries
        .first()
        .and_then(|e| dest.join(&e.path).parent().map(Path::to_path_buf))
    {
        std::fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    }
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in entries {
        let to = dest.join(&e.path);
        match e.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&to).map_err(io_err("creating", &to))?;
                dirs.push((to, *e));
            }
            EntryKind::File => files.push(*e),
            EntryKind::Symlink => {
                let target = e.link_target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&target, &to).map_err(io_err("linking", &to))?;
                if (e.uid, e.gid) != creator {
                    let _ = std::os::unix::fs::lchown(&to, Some(e.uid), Some(e.gid));
                }
            }
            _ => {}
        }
    }
    let place = |e: &&Entry| -> Result<(), ExecError> {
        let from = src.join(&e.path);
        let to = dest.join(&e.path);
        // A hard link is the host's own inode: its owner and times are already right and must
        // not be touched.
        if link && ids.may_link(e) && std::fs::hard_link(&from, &to).is_ok() {
            return Ok(());
        }
        copy_file(&from, &to, e, creator).map_err(io_err("copying", &from))
    };
    in_parallel(&files, place)?;
    // Modes and times of directories last: a read-only one could not be filled, and filling one
    // changes its mtime.
    for (to, e) in dirs.iter().rev() {
        if (e.uid, e.gid) != creator {
            let _ = std::os::unix::fs::lchown(to, Some(e.uid), Some(e.gid));
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(e.mode))
            .map_err(io_err("chmod", to))?;
        if let Ok(md) = std::fs::symlink_metadata(src.join(&e.path)) {
            set_mtime(to, &md);
        }
    }
    Ok(())
}

/// Runs `work` on every one of `items`, on up to three threads (the file copies' pool size, one
/// per core) when there are enough to pay for them, each taking a run of items at a time; the
/// first error stops them.
fn in_parallel<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), ExecError> + Sync,
) -> Result<(), ExecError> {
    const RUN: usize = 64;
    let workers = crate::fileop::copy_workers().min(items.len() / RUN).max(1);
    if workers == 1 {
        return items.iter().try_for_each(work);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    use std::sync::atomic::Ordering;
                    while !failed.load(Ordering::Relaxed) {
                        let start = next.fetch_add(RUN, Ordering::Relaxed);
                        let Some(run) = items.get(start..(start + RUN).min(items.len())) else {
                            return Ok(());
                        };
                        if let Err(e) = run.iter().try_for_each(work) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<()>, ExecError>>()
            .map(|_| ())
    })
}

/// Removes what `dir` holds, the files on worker threads ([`in_parallel`]); best effort, as the
/// snapshot's removal after it removes whatever is left.
pub(super) fn empty_dir(dir: &Path) {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(listing) = std::fs::read_dir(&dirs[i]) {
            for e in listing.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        i += 1;
    }
    let _ = in_parallel(&files, |f| {
        let _ = std::fs::remove_file(f);
        Ok(())
    });
    // Listed parents first: backwards, each directory is empty when its turn comes.
    for d in dirs.iter().skip(1).rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// Copies the file `from` (never through a link put in its place since the walk) to the new
/// `to`, owned as `e` says where the kernel allows (a chown to an id the namespace does not map
/// fails, and the copy stays `creator`'s), with `e`'s mode and the source's mtime.
fn copy_file(from: &Path, to: &Path, e: &Entry, creator: (u32, u32)) -> std::io::Result<()> {
    let mut source = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let md = source.metadata()?;
    let mut copy = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    // copy_file_range between the two files.
    std::io::copy(&mut source, &mut copy)?;
    if (e.uid, e.gid) != creator {
        let _ = std::os::unix::fs::fchown(&copy, Some(e.uid), Some(e.gid));
    }
    // After the chown, which clears setuid and setgid.
    copy.set_permissions(std::fs::Permissions::from_mode(e.mode))?;
    let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
    let _ = nix::sys::stat::futimens(&copy, &t, &t);
    Ok(())
}

fn set_mtime(to: &Path, md: &std::fs::Metadata) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// A mount source `path` inside the mounted `root`, every link resolved as the step's filesystem
/// would resolve it, never leaving `root` (CVE-2024-1753: a context link to `/` must not bind the
/// host's root).
pub(super) fn inside(root: &Path, path: &str) -> Result<PathBuf, ExecError> {
    fileop::root::resolve(root, path, true).map_err(|e| ExecError::FileOp(FileOpError::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(br"/a\040b\011c\134d"), b"/a b\tc\\d");
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/end\04"), br"/end\04");
    }
}
