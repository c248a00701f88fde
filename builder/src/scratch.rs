//! A build's own corner of the store: `tmp/build-<id>/` for its mount points, downloads and exports,
//! and `tmp/build-<id>.lock`, held exclusively for the build's whole life. Anything named after a
//! build id (these folders, scratch snapshot keys) whose lock nobody holds belongs to a build that
//! died, and may be removed by whoever finds it: a lock, not a pid, since one server process runs
//! many builds and its pid is always alive.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use forge_snapshotter::lock::{FileLock, LockMode};

use crate::events::BuildId;

/// The scratch space of one running build; its directory is cleaned and its lock released on drop.
#[derive(Debug)]
pub struct Scratch {
    id: BuildId,
    dir: PathBuf,
    lock: Option<FileLock>,
}

/// The folder all builds' scratch space lives in.
pub fn tmp_root(store_root: &Path) -> PathBuf {
    store_root.join("tmp")
}

fn lock_path(tmp: &Path, id: &BuildId) -> PathBuf {
    tmp.join(format!("build-{id}.lock"))
}

/// Whether the build `id` of the store at `store_root` is still running (in any process).
pub fn is_alive(store_root: &Path, id: &BuildId) -> bool {
    FileLock::is_held(&lock_path(&tmp_root(store_root), id))
}

impl Scratch {
    /// Takes the scratch space of build `id` under the store at `store_root`, after removing what
    /// dead builds left there.
    pub fn create(store_root: &Path, id: &BuildId) -> io::Result<Scratch> {
        let tmp = tmp_root(store_root);
        fs::create_dir_all(&tmp)?;
        let lock = FileLock::acquire(&lock_path(&tmp, id), LockMode::Exclusive)?;
        sweep(store_root);
        let dir = tmp.join(format!("build-{id}"));
        fs::create_dir_all(&dir)?;
        Ok(Scratch {
            id: id.clone(),
            dir,
            lock: Some(lock),
        })
    }

    pub fn id(&self) -> &BuildId {
        &self.id
    }

    /// Mount points of snapshots the build reads or writes.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// `ADD <url>` downloads.
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("download")
    }

    /// Mount points for exports (`-o type=local`).
    pub fn export(&self) -> PathBuf {
        self.dir.join("export")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Every mount point under it is gone by now (each is removed when unmounted); removal never
        // crosses into another filesystem, so a mount that somehow survived keeps its contents.
        remove_same_fs(&self.dir);
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

/// Removes the scratch space of builds whose lock nobody holds. Returns how many were removed.
pub fn sweep(store_root: &Path) -> usize {
    let tmp = tmp_root(store_root);
    let Ok(entries) = fs::read_dir(&tmp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("build-"))
            .map(|n| n.strip_suffix(".lock").unwrap_or(n))
            .and_then(BuildId::parse)
        else {
            continue;
        };
        let lock = lock_path(&tmp, &id);
        // Holding the lock while removing keeps a build that (absurdly) reuses the id out.
        let Ok(Some(held)) = FileLock::try_acquire(&lock, LockMode::Exclusive) else {
            continue;
        };
        let dir = tmp.join(format!("build-{id}"));
        if dir.exists() {
            remove_same_fs(&dir);
            removed += 1;
        }
        held.remove();
    }
    removed
}

/// Removes `dir` and what it holds, without crossing into another filesystem: a directory that is
/// a mount point (a different device) is left, with everything in it, and so are its parents.
pub fn remove_same_fs(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    remove_on_dev(dir, meta.dev());
}

fn remove_on_dev(path: &Path, dev: u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.dev() != dev {
        return;
    }
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                remove_on_dev(&e.path(), dev);
            }
        }
        let _ = fs::remove_dir(path);
    } else {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_build_keeps_its_space_and_a_dead_one_is_swept() {
        let root = tempfile::tempdir().unwrap();
        let a = BuildId::new();
        let b = BuildId::new();
        let sa = Scratch::create(root.path(), &a).unwrap();
        fs::create_dir_all(sa.downloads()).unwrap();
        fs::write(sa.downloads().join("f"), b"x").unwrap();
        assert!(is_alive(root.path(), &a));
        // A dead build: its folder is there, its lock file is there, nobody holds it.
        let dead = tmp_root(root.path()).join(format!("build-{b}"));
        fs::create_dir_all(dead.join("download")).unwrap();
        fs::write(dead.join("download/f"), b"y").unwrap();
        fs::write(lock_path(&tmp_root(root.path()), &b), b"").unwrap();
        assert!(!is_alive(root.path(), &b));
        assert_eq!(sweep(root.path()), 1);
        assert!(!dead.exists());
        assert!(
            sa.downloads().join("f").exists(),
            "a live build's files stay"
        );
        drop(sa);
        assert!(!tmp_root(root.path()).join(format!("build-{a}")).exists());
        assert!(!lock_path(&tmp_root(root.path()), &a).exists());
    }
}
