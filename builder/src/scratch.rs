//! A build's own corner of the store: `tmp/build-<id>/` for its mount points, downloads and exports,
//! alive while `tmp/build-<id>.lock` is held (a [`LiveDir`]). Anything named after a build id (these
//! folders, scratch snapshot keys) whose lock nobody holds belongs to a build that died, and may be
//! removed by whoever finds it: a lock, not a pid, since one server process runs many builds and
//! its pid is always alive.

use std::io;
use std::path::{Path, PathBuf};

use forge_snapshotter::lock::{self, LiveDir};
use forge_snapshotter::snapshot::{AnySnapshotter, Kind, Snapshotter};

use crate::events::BuildId;

/// The scratch space of one running build; removed (never across a mount) and its lock released
/// on drop.
#[derive(Debug)]
pub struct Scratch {
    id: BuildId,
    dir: LiveDir,
}

/// The folder all builds' scratch space lives in.
pub fn tmp_root(store_root: &Path) -> PathBuf {
    store_root.join("tmp")
}

fn name(id: &BuildId) -> String {
    format!("build-{id}")
}

/// Whether the build `id` of the store at `store_root` is still running (in any process).
pub fn is_alive(store_root: &Path, id: &BuildId) -> bool {
    lock::is_live(&tmp_root(store_root), &name(id))
}

/// Removes the scratch space of builds whose lock nobody holds; returns how many went.
pub fn sweep(store_root: &Path) -> usize {
    lock::sweep_dead(&tmp_root(store_root), "build-")
}

/// Removes the scratch snapshots (`build-<id>-...`, never committed ones) of builds that are not
/// running; returns the bytes they held, one entry per snapshot.
pub fn remove_dead_scratch_snapshots(root: &Path, sn: &AnySnapshotter) -> Vec<u64> {
    let Ok(list) = sn.list() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for info in list {
        if info.kind == Kind::Committed {
            continue;
        }
        let Some(id) = info
            .key
            .strip_prefix("build-")
            .and_then(|r| r.split('-').next())
            .and_then(BuildId::parse)
        else {
            continue;
        };
        if !crate::scratch::is_alive(root, &id) {
            let bytes = sn.usage(&info.key).map_or(0, |u| u.bytes);
            if sn.remove(&info.key).is_ok() {
                removed.push(bytes);
            }
        }
    }
    removed
}

impl Scratch {
    /// Takes the scratch space of build `id` under the store at `store_root`, after removing what
    /// dead builds left there.
    pub fn create(store_root: &Path, id: &BuildId) -> io::Result<Scratch> {
        let dir = LiveDir::create(&tmp_root(store_root), &name(id))?;
        sweep(store_root);
        Ok(Scratch {
            id: id.clone(),
            dir,
        })
    }

    pub fn id(&self) -> &BuildId {
        &self.id
    }

    /// Mount points of snapshots the build reads or writes.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `ADD <url>` downloads.
    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("download")
    }

    /// A pipeline image's build context, copied with the artifacts of its `artifacts-from` jobs
    /// laid in.
    pub fn context(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    /// Mount points for exports (`-o type=local`).
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
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
        std::fs::create_dir_all(sa.downloads()).unwrap();
        std::fs::write(sa.downloads().join("f"), b"x").unwrap();
        assert!(is_alive(root.path(), &a));
        // A dead build: its folder is there, nobody holds its lock.
        let dead = tmp_root(root.path()).join(name(&b));
        std::fs::create_dir_all(dead.join("download")).unwrap();
        assert!(!is_alive(root.path(), &b));
        assert_eq!(sweep(root.path()), 1);
        assert!(!dead.exists());
        assert!(
            sa.downloads().join("f").exists(),
            "a live build's files stay"
        );
        drop(sa);
        let left: Vec<_> = std::fs::read_dir(tmp_root(root.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
