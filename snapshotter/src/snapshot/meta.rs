//! The snapshotter's own metadata: one JSON file under its root, replaced by a rename while holding
//! an flock, so that several forge processes can share a root. Directories not named by the
//! metadata are debris of an interrupted operation and are removed when the root is opened.
//!
//! Most changes are not synced to disk (no fsync of the file or of the directory): a new active
//! snapshot, and a commit whose files are themselves unsynced (below). Lost in a crash, such a
//! change leaves a directory the metadata does not name, which is swept, or a record that would
//! have been dropped anyway. Changes a crash must not undo (a removal, which deletes a directory
//! a record named, a settle, a commit whose files were synced) are synced, and each synced state is
//! also kept as `metadata.synced` (a hard link, so no second write; a copy on a filesystem without
//! hard links): where a crash left `metadata.json` unreadable (a rename that reached the disk
//! before the file's bytes), the root opens from that last synced state.
//!
//! A snapshot's files are not synced when it is committed (overlay mounts are `volatile`, unpacked
//! layers are written without fsync): its record names the boot in which they were written
//! (`unsynced`). Opening the root in another boot drops such records and their children, since a
//! crash may have left their files half on disk; what they held comes back from the layer blobs
//! (which are synced) or by running the step again. Once a record is old enough for the kernel's
//! writeback to have written its files, a background `syncfs` makes sure of it and clears the mark.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Info, Kind, SnapshotError, Usage, tree_usage};
use crate::lock::{FileLock, LockMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub created: u64,
    /// The boot id of the boot in which this committed snapshot's files were written, until a
    /// sync of the filesystem after its commit; `None` once synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced: Option<String>,
}

/// How long after its commit a snapshot's files are synced by a later open (seconds): the kernel
/// writes dirty pages back after 30 s by default, so the sync then seldom waits for data.
pub(crate) const SETTLE_AFTER: u64 = 30;

/// How old a mark may grow before a commit settles it even while commits go on (seconds).
pub(crate) const SETTLE_LONG_AFTER: u64 = 600;

/// The last state saved durably, beside `metadata.json` (a hard link to its bytes, or a copy).
const SYNCED: &str = "metadata.synced";

/// This boot's id (`/proc/sys/kernel/random/boot_id`), or `None` where the kernel does not say.
pub(crate) fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// Syncs the filesystem that holds `dir`.
fn sync_filesystem(dir: &Path) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        op: "syncing the filesystem of",
        path: dir.to_path_buf(),
        source,
    };
    let d = File::open(dir).map_err(io)?;
    nix::unistd::syncfs(&d).map_err(|e| io(e.into()))
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub next_id: u64,
    pub snapshots: BTreeMap<String, Record>,
}

impl State {
    pub fn get(&self, key: &str) -> Result<&Record, SnapshotError> {
        self.snapshots
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))
    }

    pub fn info(&self, key: &str) -> Result<Info, SnapshotError> {
        let r = self.get(key)?;
        Ok(Info {
            key: key.to_string(),
            kind: r.kind,
            parent: r.parent.clone(),
            created: r.created,
        })
    }

    /// `key` and its ancestors' ids, nearest first.
    pub fn chain(&self, key: &str) -> Result<Vec<u64>, SnapshotError> {
        let mut out = Vec::new();
        let mut cur = Some(key.to_string());
        while let Some(k) = cur {
            let r = self.get(&k)?;
            out.push(r.id);
            cur = r.parent.clone();
            if out.len() > 10_000 {
                return Err(SnapshotError::Corrupt {
                    path: PathBuf::new(),
                    reason: format!("parent chain of {key:?} loops"),
                });
            }
        }
        Ok(out)
    }
}

/// Removes from `state` every record marked unsynced in a boot other than `boot` (all marked ones
/// when the boot is unknown), and every record below one of them; true if any went.
fn drop_unsynced_of_other_boots(state: &mut State, boot: Option<&str>) -> bool {
    let mut gone: std::collections::HashSet<String> = state
        .snapshots
        .iter()
        .filter(|(_, r)| r.unsynced.is_some() && r.unsynced.as_deref() != boot)
        .map(|(k, _)| k.clone())
        .collect();
    if gone.is_empty() {
        return false;
    }
    loop {
        let below: Vec<String> = state
            .snapshots
            .iter()
            .filter(|(k, r)| {
                !gone.contains(*k) && r.parent.as_ref().is_some_and(|p| gone.contains(p))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if below.is_empty() {
            break;
        }
        gone.extend(below);
    }
    state.snapshots.retain(|k, _| !gone.contains(k));
    true
}

/// Whether an open at `now` settles the marks of boot `boot`: only when there are some and none
/// was made in the last [`SETTLE_AFTER`] seconds. `syncfs` waits for every dirty page of the
/// filesystem, so in a burst of builds it would wait for the previous build's files (and hold up
/// this process's exit); after a pause the kernel has written them already.
fn time_to_settle(state: &State, boot: Option<&str>, now: u64) -> bool {
    let unsynced = settling(state, boot, u64::MAX);
    let quiet_since = now.saturating_sub(SETTLE_AFTER);
    !unsynced.is_empty() && unsynced.iter().all(|(_, r)| r.created <= quiet_since)
}

/// The records of boot `boot` still marked unsynced and committed no later than `until`.
fn settling<'a>(state: &'a State, boot: Option<&str>, until: u64) -> Vec<(&'a String, &'a Record)> {
    state
        .snapshots
        .iter()
        .filter(|(_, r)| r.unsynced.is_some() && r.unsynced.as_deref() == boot)
        .filter(|(_, r)| r.created <= until)
        .collect()
}

/// The on-disk home of a snapshotter: `<root>/metadata.json`, `<root>/lock`, `<root>/snapshots/<id>`.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    root: PathBuf,
}

impl Db {
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        let io = |source| SnapshotError::Io {
            op: "creating the snapshotter root",
            path: root.to_path_buf(),
            source,
        };
        fs::create_dir_all(root.join("snapshots")).map_err(io)?;
        let s = root.as_os_str().to_string_lossy();
        if s.contains(':') || s.contains(',') {
            // overlayfs option syntax cannot carry these in lowerdir paths.
            return Err(SnapshotError::BadRoot(root.to_path_buf()));
        }
        let db = Db {
            root: root.to_path_buf(),
        };
        let _lock = db.lock(LockMode::Exclusive)?;
        let mut state = db.load()?;
        if drop_unsynced_of_other_boots(&mut state, boot_id()) {
            db.save(&state)?;
        }
        db.sweep(&state)?;
        if time_to_settle(&state, boot_id(), super::now()) {
            db.settle_in_background(SETTLE_AFTER);
        }
        Ok(db)
    }

    /// Runs [`Db::settle`] on a thread of its own, unless this process already settles this
    /// root. Best effort, off the caller's path: a mark left in place only costs a rebuild of
    /// that snapshot after a reboot.
    fn settle_in_background(&self, min_age: u64) {
        static SETTLING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let roots = || SETTLING.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut busy = roots();
            if busy.contains(&self.root) {
                return;
            }
            busy.push(self.root.clone());
        }
        let settler = self.clone();
        std::thread::spawn(move || {
            let _ = settler.settle(min_age);
            roots().retain(|r| *r != settler.root);
        });
    }

    /// Syncs the filesystem and clears the `unsynced` mark of every record of this boot committed
    /// at least `min_age` seconds ago; returns how many were cleared.
    pub fn settle(&self, min_age: u64) -> Result<usize, SnapshotError> {
        let boot = boot_id();
        let now = super::now();
        let due = self.read(|state| {
            Ok(settling(state, boot, now.saturating_sub(min_age))
                .into_iter()
                .map(|(k, r)| (k.clone(), r.id))
                .collect::<Vec<_>>())
        })?;
        if due.is_empty() {
            return Ok(0);
        }
        sync_filesystem(&self.root)?;
        let _lock = self.lock(LockMode::Exclusive)?;
        let mut state = self.load()?;
        let mut cleared = 0;
        for (key, id) in due {
            if let Some(r) = state.snapshots.get_mut(&key)
                && r.id == id
                && r.unsynced.is_some()
            {
                r.unsynced = None;
                cleared += 1;
            }
        }
        if cleared > 0 {
            self.save(&state)?;
        }
        Ok(cleared)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keys whose directory is gone (deleted by hand, or lost to a broken disk).
    pub fn missing(&self) -> Result<Vec<String>, SnapshotError> {
        self.read(|state| {
            Ok(state
                .snapshots
                .iter()
                .filter(|(_, r)| !self.dir(r.id).is_dir())
                .map(|(k, _)| k.clone())
                .collect())
        })
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Takes `<root>/lock`: shared to read the metadata, exclusive to change it.
    pub fn lock(&self, mode: LockMode) -> Result<FileLock, SnapshotError> {
        let path = self.root.join("lock");
        FileLock::acquire(&path, mode).map_err(|source| SnapshotError::Io {
            op: "locking",
            path,
            source,
        })
    }

    /// The state: `metadata.json`, or where that cannot be read as a state (torn by a crash)
    /// the last synced one, `metadata.synced`; an empty state when neither exists.
    pub fn load(&self) -> Result<State, SnapshotError> {
        let path = self.root.join("metadata.json");
        let read =
            |path: &Path| -> Result<Option<State>, SnapshotError> {
                match fs::read(path) {
                    Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                        SnapshotError::Corrupt {
                            path: path.to_path_buf(),
                            reason: e.to_string(),
                        }
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(SnapshotError::Io {
                        op: "reading",
                        path: path.to_path_buf(),
                        source,
                    }),
                }
            };
        let current = read(&path);
        if let Ok(Some(state)) = current {
            return Ok(state);
        }
        match read(&self.root.join(SYNCED)) {
            Ok(Some(state)) => Ok(state),
            // No synced state to fall back on: what the current file gave.
            _ => current.map(|state| {
                state.unwrap_or(State {
                    version: 1,
                    next_id: 1,
                    snapshots: BTreeMap::new(),
                })
            }),
        }
    }

    /// Replaces the metadata and makes it durable (file and directory synced; also kept as
    /// `metadata.synced`); call with the exclusive lock held.
    pub fn save(&self, state: &State) -> Result<(), SnapshotError> {
        self.write(state, true)
    }

    /// Replaces the metadata without waiting for the disk: for a change a crash may undo (see the
    /// module's text); call with the exclusive lock held.
    pub fn save_unsynced(&self, state: &State) -> Result<(), SnapshotError> {
        self.write(state, false)
    }

    fn write(&self, state: &State, durable: bool) -> Result<(), SnapshotError> {
        let path = self.root.join("metadata.json");
        let tmp = self
            .root
            .join(format!("metadata.json.tmp-{}", std::process::id()));
        let io = |op, p: &Path| {
            let p = p.to_path_buf();
            move |source| SnapshotError::Io {
                op,
                path: p,
                source,
            }
        };
        let bytes = serde_json::to_vec_pretty(state).expect("metadata serialises");
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        if durable {
            f.sync_all().map_err(io("syncing", &tmp))?;
            // The same bytes under the fallback name, renamed over the old one in the same
            // directory sync as the file itself.
            let synced_tmp = self
                .root
                .join(format!("{SYNCED}.tmp-{}", std::process::id()));
            let _ = fs::remove_file(&synced_tmp);
            if fs::hard_link(&tmp, &synced_tmp).is_err() {
                // A filesystem without hard links: a copy of its own.
                let mut copy = File::create(&synced_tmp).map_err(io("creating", &synced_tmp))?;
                copy.write_all(&bytes)
                    .and_then(|()| copy.sync_all())
                    .map_err(io("writing", &synced_tmp))?;
            }
            let synced = self.root.join(SYNCED);
            fs::rename(&synced_tmp, &synced).map_err(io("renaming into place", &synced))?;
        }
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        if durable {
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", &self.root))?;
        }
        Ok(())
    }

    /// Remove snapshot directories and temp files no metadata names (left by a crash).
    fn sweep(&self, state: &State) -> Result<(), SnapshotError> {
        let known: std::collections::HashSet<String> =
            state.snapshots.values().map(|r| r.id.to_string()).collect();
        let dir = self.root.join("snapshots");
        let entries = fs::read_dir(&dir).map_err(|source| SnapshotError::Io {
            op: "listing",
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let _ = super::remove_tree(&e.path());
            }
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("metadata.json.tmp-")
                    || name.starts_with(&format!("{SYNCED}.tmp-"))
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

impl Db {
    /// The directory a snapshot's files live in: what its mounts show, and what a backend writes.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// [`super::Snapshotter::stat`] for any backend that keeps its files in [`Db::fs`].
    pub fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        self.read(|state| state.info(key))
    }

    /// [`super::Snapshotter::usage`]: what the snapshot's own directory holds (not its parents').
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let id = self.read(|state| Ok(state.get(key)?.id))?;
        tree_usage(&self.fs(id))
    }

    /// [`super::Snapshotter::list`].
    pub fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.read(|state| state.snapshots.keys().map(|k| state.info(k)).collect())
    }

    /// [`super::Snapshotter::writable_dir`]: only an active snapshot may be written.
    pub fn writable_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        self.read(|state| {
            let r = state.get(key)?;
            if r.kind != Kind::Active {
                return Err(SnapshotError::WrongKind {
                    key: key.to_string(),
                    expected: Kind::Active,
                    actual: r.kind,
                });
            }
            Ok(self.fs(r.id))
        })
    }

    /// Read the state under a shared lock.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&State) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let _lock = self.lock(LockMode::Shared)?;
        let state = self.load()?;
        f(&state)
    }

    /// Register a new snapshot `key` of `kind` over the committed `parent`, running `make` on its
    /// fresh directory before the metadata names it. Returns its id and its parent chain's ids.
    pub fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<(u64, Vec<u64>), SnapshotError> {
        let _lock = self.lock(LockMode::Exclusive)?;
        let mut state = self.load()?;
        if state.snapshots.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_string()));
        }
        let parents = match parent {
            Some(p) => {
                let r = state.get(p)?;
                if r.kind != Kind::Committed {
                    return Err(SnapshotError::WrongKind {
                        key: p.to_string(),
                        expected: Kind::Committed,
                        actual: r.kind,
                    });
                }
                state.chain(p)?
            }
            None => Vec::new(),
        };
        let id = state.next_id;
        state.next_id += 1;
        let dir = self.dir(id);
        let made = fs::create_dir(&dir).and_then(|()| make(&dir));
        if let Err(source) = made {
            let _ = super::remove_tree(&dir);
            return Err(SnapshotError::Io {
                op: "creating snapshot directory",
                path: dir,
                source,
            });
        }
        state.snapshots.insert(
            key.to_string(),
            Record {
                id,
                kind,
                parent: parent.map(str::to_string),
                created: super::now(),
                unsynced: None,
            },
        );
        // Lost in a crash, the new record leaves only a directory no record names (swept).
        if let Err(e) = self.save_unsynced(&state) {
            let _ = super::remove_tree(&dir);
            return Err(e);
        }
        Ok((id, parents))
    }

    /// Commits the active `key` as `name`. Its files are not synced here but marked as written in
    /// this boot; where the boot cannot be told, the filesystem is synced first.
    pub fn commit(&self, name: &str, key: &str) -> Result<u64, SnapshotError> {
        let unsynced = boot_id().map(str::to_string);
        if unsynced.is_none() {
            sync_filesystem(&self.root)?;
        }
        let _lock = self.lock(LockMode::Exclusive)?;
        let mut state = self.load()?;
        let r = state.get(key)?.clone();
        if r.kind != Kind::Active {
            return Err(SnapshotError::WrongKind {
                key: key.to_string(),
                expected: Kind::Active,
                actual: r.kind,
            });
        }
        if state.snapshots.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        state.snapshots.remove(key);
        let marked = unsynced.is_some();
        state.snapshots.insert(
            name.to_string(),
            Record {
                kind: Kind::Committed,
                created: super::now(),
                unsynced,
                ..r.clone()
            },
        );
        // A marked commit's files are not on disk for sure either: after a crash the record
        // would be dropped with them, so losing it loses nothing more.
        self.write(&state, !marked)?;
        // A process that lives long and commits often (`forge serve`) never opens the root
        // again: marks that old are settled from here, where no build waits for the thread.
        let long_ago = super::now().saturating_sub(SETTLE_LONG_AFTER);
        if !settling(&state, boot_id(), long_ago).is_empty() {
            self.settle_in_background(SETTLE_LONG_AFTER);
        }
        Ok(r.id)
    }

    /// Gives committed snapshots new names, `(from, to)` pairs: `from`'s children then name it by
    /// its new name as their parent (their mounts find directories by id and do not change). Where
    /// `to` is committed already, it is the same content (names are chain ids): `from`'s children
    /// move onto it and `from` goes, as a commit under a taken name does. A pair whose `from` is
    /// gone or not committed, or whose `to` is not committed, is left. Returns how many were
    /// renamed or merged. A rename alone is not synced (a crash that undoes it leaves the old name
    /// on the same files); a merge is, before the directory it frees is deleted.
    pub fn rename(&self, pairs: &[(String, String)]) -> Result<usize, SnapshotError> {
        if pairs.is_empty() {
            return Ok(0);
        }
        let committed = |state: &State, key: &str| {
            state
                .snapshots
                .get(key)
                .is_some_and(|r| r.kind == Kind::Committed)
        };
        let (done, freed) = {
            let _lock = self.lock(LockMode::Exclusive)?;
            let mut state = self.load()?;
            let mut done = 0;
            let mut freed = Vec::new();
            for (from, to) in pairs {
                let taken = state.snapshots.contains_key(to);
                if from == to || !committed(&state, from) || (taken && !committed(&state, to)) {
                    continue;
                }
                let record = state.snapshots.remove(from).expect("checked above");
                if taken {
                    freed.push(self.dir(record.id));
                } else {
                    state.snapshots.insert(to.clone(), record);
                }
                for r in state.snapshots.values_mut() {
                    if r.parent.as_deref() == Some(from.as_str()) {
                        r.parent = Some(to.clone());
                    }
                }
                done += 1;
            }
            match (done, freed.is_empty()) {
                (0, _) => {}
                (_, true) => self.save_unsynced(&state)?,
                (_, false) => self.save(&state)?,
            }
            (done, freed)
        };
        for dir in freed {
            remove_dir(dir)?;
        }
        Ok(done)
    }

    /// Unregister `key`, then delete its directory (a crash in between leaves debris for `sweep`).
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = {
            let _lock = self.lock(LockMode::Exclusive)?;
            let mut state = self.load()?;
            let id = state.get(key)?.id;
            let children: Vec<String> = state
                .snapshots
                .iter()
                .filter(|(_, r)| r.parent.as_deref() == Some(key))
                .map(|(k, _)| k.clone())
                .collect();
            if !children.is_empty() {
                return Err(SnapshotError::HasChildren {
                    key: key.to_string(),
                    children,
                });
            }
            state.snapshots.remove(key);
            self.save(&state)?;
            self.dir(id)
        };
        remove_dir(dir)
    }
}

/// Deletes a snapshot's directory once no record names it.
fn remove_dir(dir: PathBuf) -> Result<(), SnapshotError> {
    super::remove_tree(&dir).map_err(|source| SnapshotError::Io {
        op: "removing",
        path: dir,
        source,
    })
}

#[cfg(test)]
mod tests;
