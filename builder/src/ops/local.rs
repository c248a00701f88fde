//! The build context as a RUN step's bind or cache mount sees it: what `.dockerignore` keeps of
//! the part the mount names (BuildKit's mount shows the transferred context), recreated in a
//! throwaway snapshot, the view: hard links where the kernel allows them, copies where it does
//! not. Only that part is made, not the whole context.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use forge_runner::spec::CacheSeed;
use forge_snapshotter::snapshot::Snapshotter;

use super::run::inside;
use super::{BuildExecutor, ExecError, LocalDir, Mounted, blocking, io_err};
use crate::source::context::{Entry, EntryKind};

impl BuildExecutor {
    /// The part of local directory `name` at `source` for a bind mount: a view, which the step
    /// must hold until it ends, and the path in it to bind. The view's throwaway snapshot key is
    /// added to `scratch_keys` before anything is made under it, so the caller's clean-up removes
    /// it whatever happens.
    pub(super) async fn local_bind(
        &self,
        name: &str,
        source: &str,
        readonly: bool,
        scratch_keys: &mut Vec<String>,
    ) -> Result<(Mounted, PathBuf), ExecError> {
        let local = self.local(name)?;
        let sub = local.snapshot.subtree(source);
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
        Ok((view, path))
    }

    /// The seed of a cache mount from local directory `name` at `source` (copied when the cache
    /// is made), in a view the step must hold until it ends.
    pub(super) async fn local_seed(
        &self,
        name: &str,
        source: &str,
        scratch_keys: &mut Vec<String>,
    ) -> Result<(CacheSeed, Mounted), ExecError> {
        let local = self.local(name)?;
        let sub = local.snapshot.subtree(source);
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
        Ok((seed, view))
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
        let (src, snapshot, source) = (
            local.dir.clone(),
            local.snapshot.clone(),
            source.to_string(),
        );
        blocking(move || {
            let entries: Vec<&Entry> = match snapshot.subtree(&source) {
                Some(sub) => sub.entries().collect(),
                None => snapshot.entries().iter().collect(),
            };
            populate_view(&src, &entries, &dir, !writable)
        })
        .await?;
        Mounted::mount(&mounts, self.cfg.scratch.work().join(self.unique("ctxm")))
    }
}

/// Who forge is, as far as links and owners in a view go.
struct Ids {
    euid: u32,
    egid: u32,
    /// In a user namespace (rootless, or root in a container's namespace): ids not mapped there
    /// show as the overflow ids, and capabilities reach only files whose owner is mapped.
    userns: bool,
    /// The ids an unmapped owner shows as (`/proc/sys/kernel/overflowuid`, `overflowgid`).
    overflow: (u32, u32),
    /// `fs.protected_hardlinks`: a file may be linked only by its owner, by a holder of
    /// CAP_FOWNER over it, or by one who may read and write it.
    protected_hardlinks: bool,
}

impl Ids {
    /// This process's, read once.
    fn current() -> Ids {
        static IDS: std::sync::OnceLock<(bool, (u32, u32), bool)> = std::sync::OnceLock::new();
        let read = |path: &str, default: u32| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        let (userns, overflow, protected_hardlinks) = *IDS.get_or_init(|| {
            (
                forge_snapshotter::userns::in_user_namespace(),
                (
                    read("/proc/sys/kernel/overflowuid", 65534),
                    read("/proc/sys/kernel/overflowgid", 65534),
                ),
                // Unreadable: assumed on, which only costs a link that could have been tried.
                read("/proc/sys/fs/protected_hardlinks", 1) != 0,
            )
        });
        Ids {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            userns,
            overflow,
            protected_hardlinks,
        }
    }

    fn real_root(&self) -> bool {
        self.euid == 0 && !self.userns
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
        if self.userns && self.euid == 0 && e.uid != self.overflow.0 {
            return true;
        }
        // A "safe" source: not setuid, not setgid and group-executable, readable and writable.
        let safe_bits = e.mode & 0o4000 == 0 && e.mode & 0o2010 != 0o2010;
        let writable = e.mode & 0o006 == 0o006 || (e.gid == self.egid && e.mode & 0o060 == 0o060);
        safe_bits && writable
    }
}

/// Recreates `entries` (kept entries of the context directory `src`, in path order) under `dest`,
/// with the directories that lead to the first: directories, files (hard links when `link` and
/// the kernel allows, else copies), symlinks as links. Owners, modes and mtimes follow the source;
/// fifos, sockets and devices are left out. Directories and links are made first, then the files.
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
    files.iter().try_for_each(place)?;
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
