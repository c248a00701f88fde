//! The snapshotter's own metadata: one JSON file under its root, replaced atomically (write, fsync,
//! rename, fsync dir) while holding an flock, so that several forge processes can share a root and a
//! crash leaves either the old or the new state. Directories not named by the metadata are debris of
//! an interrupted operation and are removed when the root is opened.

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
        let state = db.load()?;
        db.sweep(&state)?;
        Ok(db)
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

    pub fn load(&self) -> Result<State, SnapshotError> {
        let path = self.root.join("metadata.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State {
                version: 1,
                next_id: 1,
                snapshots: BTreeMap::new(),
            }),
            Err(source) => Err(SnapshotError::Io {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Replace the metadata atomically; call with the exclusive lock held.
    pub fn save(&self, state: &State) -> Result<(), SnapshotError> {
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
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.root))?;
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
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("metadata.json.tmp-")
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
            },
        );
        if let Err(e) = self.save(&state) {
            let _ = super::remove_tree(&dir);
            return Err(e);
        }
        Ok((id, parents))
    }

    pub fn commit(&self, name: &str, key: &str) -> Result<u64, SnapshotError> {
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
        state.snapshots.insert(
            name.to_string(),
            Record {
                kind: Kind::Committed,
                created: super::now(),
                ..r.clone()
            },
        );
        self.save(&state)?;
        Ok(r.id)
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
        super::remove_tree(&dir).map_err(|source| SnapshotError::Io {
            op: "removing",
            path: dir,
            source,
        })
    }
}
