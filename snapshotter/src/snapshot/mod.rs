//! Snapshots: the filesystem states a build moves through, in containerd's model. A base image's
//! layers are unpacked once each into committed snapshots named by their chain id and stacked; each
//! build step gets an active snapshot on top, whose changes become the step's layer.
//! Backends: native overlayfs, fuse-overlayfs, and full copies where no overlay works.

mod copy;
mod meta;
mod overlay;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

pub use copy::{CopySnapshotter, copy_tree};
pub use overlay::{OverlayFlavor, OverlaySnapshotter};

use crate::diff::{Changes, DiffError, DiffStats, write_layer};
use crate::layer::{LayerDescriptor, LayerOptions, chain_id_step};
use crate::mount::Mount;
use crate::unpack::{
    UnpackError, UnpackOptions, UnpackSummary, WhiteoutMode, unpack_layer_verified,
};

/// Errors of every snapshotter backend.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("snapshot {key:?} is {actual:?}, the operation needs a {expected:?} one")]
    WrongKind {
        key: String,
        expected: Kind,
        actual: Kind,
    },
    #[error("snapshot {key:?} has children ({children:?}); remove them first")]
    HasChildren { key: String, children: Vec<String> },
    #[error("snapshotter root {0} contains ':' or ',' which overlay mount options cannot carry")]
    BadRoot(PathBuf),
    #[error("snapshot metadata {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the snapshots in {root} are {recorded} snapshots, which cannot be used as {wanted} \
         snapshots here; use another store (--root) for this mode"
    )]
    WrongBackend {
        root: PathBuf,
        recorded: BackendKind,
        wanted: BackendKind,
    },
    #[error(transparent)]
    TooDeep(#[from] crate::mount::TooDeep),
    #[error("unknown snapshotter backend {0:?} (expected overlayfs, fuse-overlayfs or copy)")]
    UnknownBackend(String),
    #[error("unpacking layer {diff_id} into snapshot {key:?}")]
    Unpack {
        diff_id: Digest,
        key: String,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("writing the layer of snapshot {key:?}")]
    Diff {
        key: String,
        #[source]
        source: Box<DiffError>,
    },
}

/// The state a snapshot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable, made by `prepare`; becomes `Committed` by `commit`.
    Active,
    /// Read-only and immutable; may be the parent of others.
    Committed,
    /// Read-only mounts of a parent, made by `view`; never committed.
    View,
}

/// What `stat` and `list` tell about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub key: String,
    pub kind: Kind,
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// Disk use of a snapshot's own data (not its parents'), hard links counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Which backend a snapshotter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Overlay,
    FuseOverlay,
    Copy,
}

impl FromStr for BackendKind {
    type Err = SnapshotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlayfs" | "overlay" => Ok(BackendKind::Overlay),
            "fuse-overlayfs" => Ok(BackendKind::FuseOverlay),
            "copy" | "native" => Ok(BackendKind::Copy),
            other => Err(SnapshotError::UnknownBackend(other.to_string())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Overlay => "overlayfs",
            BackendKind::FuseOverlay => "fuse-overlayfs",
            BackendKind::Copy => "copy",
        })
    }
}

/// Filesystem snapshots, as containerd defines them.
///
/// Lifecycle: `prepare(key, parent)` makes an *active* snapshot: writable mounts whose initial
/// content is `parent` (or empty when `parent` is `None`, the empty parent). `commit(name, key)`
/// turns the active snapshot `key` into the *committed*, read-only snapshot `name`; `key` no longer
/// exists afterwards. Only committed snapshots can be parents. `view(key, parent)` gives read-only
/// mounts of `parent` under a new key without copying; a view is removed, never committed.
/// `remove(key)` deletes an active, view or committed snapshot that has no children.
/// Keys are any strings; a committed layer snapshot is conventionally named by its chain id.
pub trait Snapshotter {
    /// Which backend this is.
    fn backend(&self) -> BackendKind;

    /// The directory the snapshotter keeps everything in.
    fn root(&self) -> &Path;

    /// Snapshots the metadata names whose directory is gone: [`Snapshotter::remove`] them.
    fn missing_data(&self) -> Result<Vec<String>, SnapshotError>;

    /// Create the active snapshot `key` on top of the committed `parent` and return its mounts.
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError>;

    /// Create the read-only view `key` of the committed `parent` and return its mounts.
    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError>;

    /// Turn the active snapshot `key` into the committed snapshot `name`. Anything that mounted
    /// `key` must have unmounted it first.
    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError>;

    /// Delete `key` and its data. Refused while another snapshot has it as parent.
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;

    /// Renames committed snapshots, `(from, to)` pairs, leaving those whose `from` is gone or not
    /// committed or whose `to` is taken; returns how many were renamed. Their children follow.
    fn rename(&self, pairs: &[(String, String)]) -> Result<usize, SnapshotError>;

    /// The mounts of an existing snapshot (read-only ones for a committed snapshot).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;

    /// Kind, parent and creation time of `key`.
    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;

    /// Disk use of `key`'s own data.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;

    /// Every snapshot, ordered by key.
    fn list(&self) -> Result<Vec<Info>, SnapshotError>;

    /// The directory that holds the active snapshot `key`'s own content, writable without
    /// mounting (overlay: the upper dir; copy: the tree). Used to unpack layers.
    fn writable_dir(&self, key: &str) -> Result<PathBuf, SnapshotError>;

    /// How unpack must write whiteouts into [`Snapshotter::writable_dir`].
    fn whiteout_mode(&self) -> WhiteoutMode;

    /// Where the changes of `key` relative to its parent are, for [`Snapshotter::diff`].
    fn changes(&self, key: &str) -> Result<(Kind, ChangeSource), SnapshotError>;

    /// Write the changes of `key` (active and unmounted, or committed) as one layer to `sink`.
    fn diff<W: Write + Send>(
        &self,
        key: &str,
        sink: W,
        options: LayerOptions,
    ) -> Result<(LayerDescriptor, W, DiffStats), SnapshotError>
    where
        Self: Sized,
    {
        let (_, src) = self.changes(key)?;
        write_layer(src.as_changes(), sink, options).map_err(|source| SnapshotError::Diff {
            key: key.to_string(),
            source: Box::new(source),
        })
    }
}

/// Owned form of [`Changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSource {
    OverlayUpper(PathBuf),
    Compare {
        lower: Option<PathBuf>,
        upper: PathBuf,
        /// When `upper` was complete as a copy of `lower` (see [`Changes::Compare`]).
        copied_at: Option<std::time::SystemTime>,
    },
}

impl ChangeSource {
    pub fn as_changes(&self) -> Changes<'_> {
        match self {
            ChangeSource::OverlayUpper(p) => Changes::OverlayUpper(p),
            ChangeSource::Compare {
                lower,
                upper,
                copied_at,
            } => Changes::Compare {
                copied_at: *copied_at,
                lower: lower.as_deref(),
                upper,
            },
        }
    }
}

/// The backends behind one type (chosen at run time by probing or configuration).
#[derive(Debug)]
pub enum AnySnapshotter {
    Overlay(OverlaySnapshotter),
    Copy(CopySnapshotter),
}

impl AnySnapshotter {
    /// The backend the snapshots under `root` were made with, if any were (none: a new root, whose
    /// backend [`Self::open`] chooses and records).
    pub fn recorded(root: &Path) -> Option<BackendKind> {
        std::fs::read_to_string(root.join("backend"))
            .ok()
            .and_then(|s| s.trim().parse::<BackendKind>().ok())
    }

    /// Open the snapshotter rooted at `root`, with `backend` or, when `None`, the best that works
    /// on this machine and filesystem (see [`probe`]). A root keeps the backend it was made with.
    pub fn open(root: &Path, backend: Option<BackendKind>) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(root).map_err(|source| SnapshotError::Io {
            op: "creating",
            path: root.to_path_buf(),
            source,
        })?;
        // The snapshots on disk fix the layout: overlay layers (native or FUSE) hold only their
        // changes, copies hold whole trees; the one cannot be read as the other.
        let recorded = Self::recorded(root);
        let layered = |b: BackendKind| b != BackendKind::Copy;
        let wanted = match backend {
            Some(b) => b,
            None => match recorded {
                Some(BackendKind::Copy) => BackendKind::Copy,
                // Overlay or fuse-overlayfs: the same layout, whichever works when a snapshot is
                // first mounted (a probe mount); a build that mounts nothing does not probe.
                Some(layered) => {
                    return Ok(AnySnapshotter::Overlay(
                        OverlaySnapshotter::open_probing_at_first_mount(root, layered)?,
                    ));
                }
                None => probe(root),
            },
        };
        if let Some(recorded) = recorded
            && layered(recorded) != layered(wanted)
        {
            return Err(SnapshotError::WrongBackend {
                root: root.to_path_buf(),
                recorded,
                wanted,
            });
        }
        if recorded.is_none() {
            // Best effort: a store that cannot record it is probed again next time.
            let _ = std::fs::write(root.join("backend"), format!("{wanted}\n"));
        }
        Ok(match OverlayFlavor::of_kind(wanted) {
            Some(flavor) => AnySnapshotter::Overlay(OverlaySnapshotter::open(root, flavor)?),
            None => AnySnapshotter::Copy(CopySnapshotter::open(root)?),
        })
    }
}

macro_rules! each {
    ($s:expr, $b:ident => $e:expr) => {
        match $s {
            AnySnapshotter::Overlay($b) => $e,
            AnySnapshotter::Copy($b) => $e,
        }
    };
}

impl Snapshotter for AnySnapshotter {
    fn backend(&self) -> BackendKind {
        each!(self, s => s.backend())
    }
    fn root(&self) -> &Path {
        each!(self, s => s.root())
    }
    fn missing_data(&self) -> Result<Vec<String>, SnapshotError> {
        each!(self, s => s.missing_data())
    }
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        each!(self, s => s.prepare(key, parent))
    }
    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        each!(self, s => s.view(key, parent))
    }
    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError> {
        each!(self, s => s.commit(name, key))
    }
    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        each!(self, s => s.remove(key))
    }
    fn rename(&self, pairs: &[(String, String)]) -> Result<usize, SnapshotError> {
        each!(self, s => s.rename(pairs))
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        each!(self, s => s.mounts(key))
    }
    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        each!(self, s => s.stat(key))
    }
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        each!(self, s => s.usage(key))
    }
    fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        each!(self, s => s.list())
    }
    fn writable_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        each!(self, s => s.writable_dir(key))
    }
    fn whiteout_mode(&self) -> WhiteoutMode {
        each!(self, s => s.whiteout_mode())
    }
    fn changes(&self, key: &str) -> Result<(Kind, ChangeSource), SnapshotError> {
        each!(self, s => s.changes(key))
    }
}

/// Find the best backend for `root`: native overlay if a test mount works there, fuse-overlayfs
/// if this process may open `/dev/fuse` and the helper exists, else copy.
pub fn probe(root: &Path) -> BackendKind {
    if overlay::probe_native(
        root,
        crate::userns::in_user_namespace(),
        overlay::volatile_supported(),
    ) {
        BackendKind::Overlay
    } else if overlay::fuse_available() {
        BackendKind::FuseOverlay
    } else {
        BackendKind::Copy
    }
}

/// Result of [`unpack_layer_snapshot`].
#[derive(Debug, Clone)]
pub struct LayerSnapshot {
    /// The committed snapshot's key: the layer's chain id.
    pub chain_id: Digest,
    /// True when the snapshot already existed and the blob was not read.
    pub reused: bool,
    pub summary: Option<UnpackSummary>,
}

/// Make sure the layer `diff_id` applied over the committed chain `parent` exists as a committed
/// snapshot named by its chain id, unpacking `blob` only if it does not. Callers in one process
/// take turns per chain id, so the second finds the first one's snapshot (two stages on one base
/// image unpack it once); callers in different processes race harmlessly: the loser discards its
/// copy.
pub fn unpack_layer_snapshot<S: Snapshotter, R: Read + Send>(
    sn: &S,
    parent: Option<&Digest>,
    diff_id: &Digest,
    blob: R,
    media_type: &str,
) -> Result<LayerSnapshot, SnapshotError> {
    let chain = chain_id_step(parent, diff_id);
    let name = chain.to_string();
    let reused = || LayerSnapshot {
        chain_id: chain.clone(),
        reused: true,
        summary: None,
    };
    if sn.stat(&name).is_ok() {
        return Ok(reused());
    }
    let turn = unpack_turn(&sn.root().join(&name));
    let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
    if sn.stat(&name).is_ok() {
        return Ok(reused());
    }
    let writer = ExtractLock::take(sn.root())?;
    let key = format!("{} {name}", writer.name);
    let parent_name = parent.map(|p| p.to_string());
    sn.prepare(&key, parent_name.as_deref())?;
    let dir = sn.writable_dir(&key)?;
    let options = UnpackOptions {
        whiteouts: sn.whiteout_mode(),
        ..UnpackOptions::default()
    };
    let summary = match unpack_layer_verified(blob, media_type, &dir, &options, diff_id) {
        Ok(s) => s,
        Err(source) => {
            let _ = sn.remove(&key);
            return Err(SnapshotError::Unpack {
                diff_id: diff_id.clone(),
                key,
                source: Box::new(source),
            });
        }
    };
    match sn.commit(&name, &key) {
        Ok(()) => Ok(LayerSnapshot {
            chain_id: chain.clone(),
            reused: false,
            summary: Some(summary),
        }),
        Err(SnapshotError::AlreadyExists(_)) => {
            sn.remove(&key)?;
            Ok(reused())
        }
        Err(e) => Err(e),
    }
}

/// The lock this process's unpacks of the snapshot `path` take turns on (an entry lives while
/// someone holds its lock or waits for it).
fn unpack_turn(path: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::sync::{Arc, Mutex, Weak};
    static TURNS: Mutex<Vec<(PathBuf, Weak<Mutex<()>>)>> = Mutex::new(Vec::new());
    let mut turns = TURNS.lock().unwrap_or_else(|e| e.into_inner());
    turns.retain(|(_, turn)| turn.strong_count() > 0);
    if let Some(turn) = turns
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, turn)| turn.upgrade())
    {
        return turn;
    }
    let turn = Arc::new(Mutex::new(()));
    turns.push((path.to_path_buf(), Arc::downgrade(&turn)));
    turn
}

/// Prefix of the keys of the active snapshots layers are unpacked into before they are committed.
const EXTRACT: &str = "extract-";

/// Held while a layer is unpacked into the active snapshot `<name> <chain id>`: the lock file
/// `<root>/<name>.lock`, `<name>` being `extract-<random>`. A snapshot of that form whose lock nobody
/// holds was left by a writer that died (killed, or out of space and then killed); see
/// [`remove_abandoned_extracts`].
struct ExtractLock {
    name: String,
    lock: Option<crate::lock::FileLock>,
}

impl ExtractLock {
    fn take(root: &Path) -> Result<ExtractLock, SnapshotError> {
        let name = format!("{EXTRACT}{}", crate::lock::random_hex());
        let path = root.join(format!("{name}.lock"));
        let lock = crate::lock::FileLock::acquire(&path, crate::lock::LockMode::Exclusive)
            .map_err(|source| SnapshotError::Io {
                op: "locking",
                path,
                source,
            })?;
        Ok(ExtractLock {
            name,
            lock: Some(lock),
        })
    }
}

impl Drop for ExtractLock {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

/// Removes the `extract-*` snapshots whose writer is gone (no process holds their lock; keys of
/// older forge versions, `extract-<pid>-<nanos> ...`, never had one) and their stray lock files.
/// Returns each removed key with the disk space it held.
pub fn remove_abandoned_extracts<S: Snapshotter>(
    sn: &S,
) -> Result<Vec<(String, Usage)>, SnapshotError> {
    let mut removed = Vec::new();
    for info in sn.list()? {
        let Some(name) = info
            .key
            .split(' ')
            .next()
            .filter(|n| n.starts_with(EXTRACT))
        else {
            continue;
        };
        if info.kind == Kind::Committed || crate::lock::is_live(sn.root(), name) {
            continue;
        }
        let usage = sn.usage(&info.key).unwrap_or_default();
        match sn.remove(&info.key) {
            Ok(()) | Err(SnapshotError::NotFound(_)) => removed.push((info.key, usage)),
            Err(e) => return Err(e),
        }
    }
    crate::lock::sweep_dead(sn.root(), EXTRACT);
    Ok(removed)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Remove a tree, first making directories writable (overlay leaves `work/work` mode 000).
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            use std::os::unix::fs::PermissionsExt;
            for entry in walk_dirs(path) {
                let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
            }
            std::fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}

fn walk_dirs(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Blocks and inodes under `path`, hard links once.
pub fn tree_usage(path: &Path) -> Result<Usage, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|source| SnapshotError::Io {
            op: "measuring",
            path: p.clone(),
            source,
        })?;
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += md.blocks() * 512;
        if md.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(|source| SnapshotError::Io {
                op: "measuring",
                path: p.clone(),
                source,
            })?;
            for e in rd.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extract_snapshot_of_a_dead_writer_is_removed_and_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        let sn = CopySnapshotter::open(dir.path()).unwrap();
        // What a writer killed mid-unpack leaves: the active snapshot and no lock held; and one of
        // an older forge, named by pid.
        sn.prepare("extract-0123456789abcdef sha256:aa", None)
            .unwrap();
        std::fs::write(
            sn.writable_dir("extract-0123456789abcdef sha256:aa")
                .unwrap()
                .join("big"),
            vec![1u8; 64 * 1024],
        )
        .unwrap();
        std::fs::write(dir.path().join("extract-0123456789abcdef.lock"), b"").unwrap();
        sn.prepare("extract-4242-17000 sha256:bb", None).unwrap();
        // A writer still at work.
        let live = ExtractLock::take(sn.root()).unwrap();
        let live_key = format!("{} sha256:cc", live.name);
        sn.prepare(&live_key, None).unwrap();
        sn.prepare("build-x-1-step", None).unwrap();

        let removed = remove_abandoned_extracts(&sn).unwrap();
        let keys: Vec<&str> = removed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "extract-0123456789abcdef sha256:aa",
                "extract-4242-17000 sha256:bb"
            ]
        );
        assert!(removed[0].1.bytes >= 64 * 1024, "{:?}", removed[0].1);
        let left: Vec<String> = sn.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(left, ["build-x-1-step".to_string(), live_key.clone()]);
        assert!(!dir.path().join("extract-0123456789abcdef.lock").exists());
        drop(live);
        assert_eq!(remove_abandoned_extracts(&sn).unwrap().len(), 1);
    }

    /// A layer blob read slowly, counting the callers that started reading it.
    struct SlowBlob<'a> {
        bytes: &'a [u8],
        readers: &'a std::sync::atomic::AtomicUsize,
        started: bool,
    }

    impl Read for SlowBlob<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !self.started {
                self.started = true;
                self.readers
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            self.bytes.read(buf)
        }
    }

    #[test]
    fn two_unpacks_of_one_layer_at_once_in_a_process_read_the_blob_once() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let sn = CopySnapshotter::open(dir.path()).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "hello", &b"world"[..])
            .unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = crate::compress::sha256_digest(sha2::Sha256::digest(&tar).as_slice());
        let readers = std::sync::atomic::AtomicUsize::new(0);
        let both = std::sync::Barrier::new(2);
        // Two stages on one base image: both ask for its layer at the same moment.
        let results: Vec<LayerSnapshot> = std::thread::scope(|s| {
            let unpack = || {
                both.wait();
                let blob = SlowBlob {
                    bytes: &tar,
                    readers: &readers,
                    started: false,
                };
                unpack_layer_snapshot(
                    &sn,
                    None,
                    &diff_id,
                    blob,
                    "application/vnd.oci.image.layer.v1.tar",
                )
                .unwrap()
            };
            let one = s.spawn(unpack);
            let two = s.spawn(unpack);
            vec![one.join().unwrap(), two.join().unwrap()]
        });
        assert_eq!(readers.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(results.iter().filter(|r| !r.reused).count(), 1);
        assert_eq!(results[0].chain_id, results[1].chain_id);
        let committed: Vec<String> = sn.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(committed, [results[0].chain_id.to_string()]);
        let shown = sn.mounts(&committed[0]).unwrap();
        assert_eq!(
            std::fs::read(shown[0].source.join("hello")).unwrap(),
            b"world"
        );
    }

    #[test]
    fn an_unpack_leaves_no_extract_lock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let sn = CopySnapshotter::open(dir.path()).unwrap();
        let diff_id: Digest =
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap();
        // Not a tar: the unpack fails, and the snapshot and lock go with it.
        let err = unpack_layer_snapshot(
            &sn,
            None,
            &diff_id,
            &b"junk"[..],
            "application/vnd.oci.image.layer.v1.tar",
        );
        assert!(err.is_err());
        assert!(sn.list().unwrap().is_empty());
        let locks: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(EXTRACT))
            .collect();
        assert!(locks.is_empty(), "{locks:?}");
    }
}
