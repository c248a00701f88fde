//! overlayfs snapshots: each snapshot owns `fs/` (its upper dir, holding only its changes) and
//! `work/`; a snapshot's mounts stack its ancestors' `fs/` dirs as lower dirs. The same layout serves
//! the kernel's overlay and fuse-overlayfs; only the Mount kind and the whiteout format differ.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::meta::Db;
use super::{BackendKind, ChangeSource, Info, Kind, SnapshotError, Snapshotter, Usage};
use crate::mount::Mount;
use crate::unpack::{OverlayXattr, WhiteoutMode};

/// Which overlay implementation mounts the snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayFlavor {
    /// The kernel's overlayfs; `userxattr` inside a user namespace (kernel >= 5.11). `volatile`
    /// (kernel >= 5.10): a writable mount does not sync the upper filesystem when it goes away, so
    /// a step's end does not wait for its files to reach the disk; [`super::meta`] keeps a crash
    /// from leaving such a snapshot in use.
    Native { userxattr: bool, volatile: bool },
    /// The fuse-overlayfs helper (mounted by the runner).
    Fuse,
}

impl OverlayFlavor {
    /// The kernel's overlayfs with what this process and kernel need (`userxattr` inside a user
    /// namespace, `volatile` where the kernel has it).
    pub fn native() -> OverlayFlavor {
        OverlayFlavor::Native {
            userxattr: crate::userns::in_user_namespace(),
            volatile: volatile_supported(),
        }
    }

    /// The flavor that mounts a layered backend's snapshots; `None` for the copy backend.
    pub fn of_kind(kind: BackendKind) -> Option<OverlayFlavor> {
        match kind {
            BackendKind::Overlay => Some(OverlayFlavor::native()),
            BackendKind::FuseOverlay => Some(OverlayFlavor::Fuse),
            BackendKind::Copy => None,
        }
    }
}

/// overlayfs-backed snapshots.
#[derive(Debug)]
pub struct OverlaySnapshotter {
    db: Db,
    /// The flavor, or the backend the probe found when neither overlay works here any more.
    flavor: OnceLock<Result<OverlayFlavor, BackendKind>>,
    /// What the store recorded, for the error when the probe finds no overlay.
    recorded: BackendKind,
}

impl OverlaySnapshotter {
    pub fn open(root: &Path, flavor: OverlayFlavor) -> Result<Self, SnapshotError> {
        Ok(OverlaySnapshotter {
            db: Db::open(root)?,
            flavor: OnceLock::from(Ok(flavor)),
            recorded: kind_of(flavor),
        })
    }

    /// Opens a store recorded as layered (`recorded`) whose flavor is probed when a snapshot is
    /// first mounted: a build that mounts nothing (a rebuild served from the cache) skips the
    /// probe's mount. The same layout serves both flavors, so the choice can wait.
    pub fn open_probing_at_first_mount(
        root: &Path,
        recorded: BackendKind,
    ) -> Result<Self, SnapshotError> {
        Ok(OverlaySnapshotter {
            db: Db::open(root)?,
            flavor: OnceLock::new(),
            recorded,
        })
    }

    /// The flavor that mounts these snapshots (probed on first use when the store was opened with
    /// [`Self::open_probing_at_first_mount`]); an error when no overlay works here now.
    pub fn flavor(&self) -> Result<OverlayFlavor, SnapshotError> {
        let found = self.flavor.get_or_init(|| {
            let found = super::probe(self.db.root());
            OverlayFlavor::of_kind(found).ok_or(found)
        });
        match found {
            Ok(flavor) => Ok(*flavor),
            Err(wanted) => Err(SnapshotError::WrongBackend {
                root: self.db.root().to_path_buf(),
                recorded: self.recorded,
                wanted: *wanted,
            }),
        }
    }

    fn fs(&self, id: u64) -> PathBuf {
        self.db.fs(id)
    }

    fn overlay_mount(&self, lowers: &[u64], upper: Option<u64>) -> Result<Mount, SnapshotError> {
        let lower = lowers
            .iter()
            .map(|id| self.fs(*id).to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut options = vec![format!("lowerdir={lower}")];
        if let Some(id) = upper {
            options.push(format!("upperdir={}", self.fs(id).display()));
            options.push(format!(
                "workdir={}",
                self.db.dir(id).join("work").display()
            ));
        }
        let kind = match self.flavor()? {
            OverlayFlavor::Native {
                userxattr,
                volatile,
            } => {
                // Checked here, before any runner mounts it, so that the step fails with the
                // reason whichever runner it was for (containerd's mount fails with EINVAL).
                crate::mount::TooDeep::check(lowers.len())?;
                if userxattr {
                    options.push("userxattr".to_string());
                }
                if volatile && upper.is_some() {
                    options.push("volatile".to_string());
                }
                "overlay"
            }
            OverlayFlavor::Fuse => "fuse-overlayfs",
        };
        Ok(Mount {
            kind: kind.to_string(),
            source: PathBuf::from("overlay"),
            options,
        })
    }

    /// A volatile mount leaves a mark in its work dir that makes the kernel refuse the next mount
    /// of the same upper dir (its changes may be half on disk after a crash). An active snapshot
    /// is only mounted again by the process that made it, which is alive, so the mark is removed.
    fn allow_remount(&self, id: u64) -> Result<(), SnapshotError> {
        if !matches!(self.flavor()?, OverlayFlavor::Native { volatile: true, .. }) {
            return Ok(());
        }
        let mark = self.db.dir(id).join("work").join("work").join("incompat");
        super::remove_tree(&mark).map_err(|source| SnapshotError::Io {
            op: "removing the volatile mark",
            path: mark,
            source,
        })
    }

    /// Removes a snapshot just made whose mounts could not be given (a chain too deep to mount):
    /// the caller gets an error instead of the key, so nothing else would remove it. Best effort;
    /// the error the caller gets is the mounts' one.
    fn forget_unmountable(&self, key: &str) {
        let _ = self.db.remove(key);
    }

    /// Mounts for snapshot `id` (writable when `upper`) over the ancestors `parents`.
    fn mounts_for(
        &self,
        id: u64,
        parents: &[u64],
        kind: Kind,
    ) -> Result<Vec<Mount>, SnapshotError> {
        Ok(match kind {
            Kind::Active if parents.is_empty() => vec![Mount::bind(self.fs(id), false)],
            Kind::Active => vec![self.overlay_mount(parents, Some(id))?],
            // A view shows its parent; a committed snapshot shows itself and its parents.
            Kind::View | Kind::Committed => {
                let mut lowers: Vec<u64> = Vec::new();
                if kind == Kind::Committed {
                    lowers.push(id);
                }
                lowers.extend_from_slice(parents);
                match lowers.len() {
                    0 => vec![Mount::bind(self.fs(id), true)],
                    1 => vec![Mount::bind(self.fs(lowers[0]), true)],
                    // overlayfs with lower dirs only is read-only by itself.
                    _ => vec![self.overlay_mount(&lowers, None)?],
                }
            }
        })
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn root(&self) -> &Path {
        self.db.root()
    }

    fn missing_data(&self) -> Result<Vec<String>, SnapshotError> {
        self.db.missing()
    }

    fn backend(&self) -> BackendKind {
        self.flavor().map_or(self.recorded, kind_of)
    }

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        let (id, parents) = self.db.create(key, parent, Kind::Active, |dir| {
            std::fs::create_dir(dir.join("fs"))?;
            std::fs::create_dir(dir.join("work"))
        })?;
        self.mounts_for(id, &parents, Kind::Active)
            .inspect_err(|_| self.forget_unmountable(key))
    }

    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        let (id, parents) = self.db.create(key, parent, Kind::View, |dir| {
            std::fs::create_dir(dir.join("fs"))
        })?;
        self.mounts_for(id, &parents, Kind::View)
            .inspect_err(|_| self.forget_unmountable(key))
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
            let parents = match &r.parent {
                Some(p) => state.chain(p)?,
                None => Vec::new(),
            };
            if r.kind == Kind::Active {
                self.allow_remount(r.id)?;
            }
            self.mounts_for(r.id, &parents, r.kind)
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
        // Without a working overlay nothing is mounted or unpacked (the mounts fail first); the
        // recorded kind answers.
        let flavor = self.flavor().unwrap_or_else(|_| {
            OverlayFlavor::of_kind(self.recorded).unwrap_or_else(OverlayFlavor::native)
        });
        match flavor {
            OverlayFlavor::Native {
                userxattr: true, ..
            } => WhiteoutMode::Overlay(OverlayXattr::User),
            OverlayFlavor::Native {
                userxattr: false, ..
            } => WhiteoutMode::Overlay(OverlayXattr::Trusted),
            // fuse-overlayfs honours `.wh.` files in lower dirs, which need no privilege to make.
            OverlayFlavor::Fuse => WhiteoutMode::Keep,
        }
    }

    fn changes(&self, key: &str) -> Result<(Kind, ChangeSource), SnapshotError> {
        self.db.read(|state| {
            let r = state.get(key)?;
            Ok((r.kind, ChangeSource::OverlayUpper(self.fs(r.id))))
        })
    }
}

fn kind_of(flavor: OverlayFlavor) -> BackendKind {
    match flavor {
        OverlayFlavor::Native { .. } => BackendKind::Overlay,
        OverlayFlavor::Fuse => BackendKind::FuseOverlay,
    }
}

/// Whether a native overlay mounts under `root` (its filesystem matters: some cannot be upper),
/// with the options forge's mounts use. `volatile` also spares the probe a sync: unmounting a
/// non-volatile overlay syncs the whole filesystem under the store (a journal commit to wait for at
/// every start, longer on a busy disk), which an empty probe never needs.
pub(crate) fn probe_native(root: &Path, userxattr: bool, volatile: bool) -> bool {
    let dir = root.join(format!("probe-{}", std::process::id()));
    let ok = (|| -> std::io::Result<bool> {
        for d in ["l1", "l2", "u", "w", "m"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let mut data = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            dir.join("l2").display(),
            dir.join("l1").display(),
            dir.join("u").display(),
            dir.join("w").display()
        );
        if userxattr {
            data.push_str(",userxattr");
        }
        if volatile {
            data.push_str(",volatile");
        }
        let target = dir.join("m");
        let mounted = nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        );
        if mounted.is_err() {
            return Ok(false);
        }
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        Ok(true)
    })()
    .unwrap_or(false);
    let _ = super::remove_tree(&dir);
    ok
}

/// Whether the kernel's overlayfs takes the `volatile` option (Linux 5.10 and later).
pub(crate) fn volatile_supported() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (5, 10)
}

/// Whether fuse-overlayfs can be used: `/dev/fuse` that this process may open (a root-only
/// 0600 node exists for an ordinary user, and every mount would fail) and the helper on PATH.
pub(crate) fn fuse_available() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return false;
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join("fuse-overlayfs").is_file()))
        .unwrap_or(false)
}
