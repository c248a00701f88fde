//! Cache mounts across machines: `mounts=true` packs each `RUN --mount=type=cache` id the build
//! used (its shared instance) into one zstd tar blob; an importing build unpacks one into place
//! before the first step that mounts that id, if this machine has no such cache yet.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use forge_runner::mounts::{seed_instance, shared_instance};
use forge_snapshotter::compress::HashingWriter;
use forge_snapshotter::lock::{FileLock, LockMode};
use forge_snapshotter::store::{Descriptor, Digest, Store};

use super::RemoteBlobs;
use super::format::MountRecord;
use crate::events::{BuildEvent, Events};

/// Packs the shared instance of each of `ids` that exists under `cache_root` into the store.
pub fn export_mounts(
    cache_root: &Path,
    ids: &[String],
    store: &Store,
) -> Result<Vec<MountRecord>, String> {
    let mut out = Vec::new();
    for id in ids {
        let (dir, lock) = shared_instance(cache_root, id);
        // Only a directory is packed, never what a link there names (a step may have left one).
        if !std::fs::symlink_metadata(&dir).is_ok_and(|md| md.is_dir()) {
            continue;
        }
        // A `locked` step of another build holds it exclusively while it writes.
        let _lock = FileLock::acquire(&lock, LockMode::Shared)
            .map_err(|e| format!("cache mount {id:?}: lock {}: {e}", lock.display()))?;
        let (digest, size) = pack(&dir, store)
            .map_err(|e| format!("cache mount {id:?} ({}): {e}", dir.display()))?;
        out.push(MountRecord {
            id: id.clone(),
            digest,
            size,
        });
    }
    Ok(out)
}

/// Writes `dir`'s tree as a tar (entries sorted, so an unchanged cache packs to the same blob)
/// compressed with zstd into the store.
fn pack(dir: &Path, store: &Store) -> io::Result<(Digest, u64)> {
    let tmp = store.temp_path("cache-mount").map_err(io::Error::other)?;
    let file = std::fs::File::create(&tmp)?;
    let hashing = HashingWriter::new(io::BufWriter::new(file));
    let zstd = zstd::stream::write::Encoder::new(hashing, 3)?;
    let mut tar = tar::Builder::new(zstd);
    tar.follow_symlinks(false);
    // The cache's own directory first, as `./`: its owner and mode (`uid=1000,mode=0700` of the
    // Dockerfile's mount) go with its contents, or a step of that user on the next runner could
    // not write to the cache it imported.
    let mut root = tar::Header::new_gnu();
    root.set_metadata_in_mode(&std::fs::symlink_metadata(dir)?, tar::HeaderMode::Complete);
    root.set_entry_type(tar::EntryType::Directory);
    root.set_size(0);
    root.as_old_mut().name[..2].copy_from_slice(b"./");
    root.set_cksum();
    tar.append(&root, io::empty())?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        // Depth first, in name order: children pushed in reverse so the first is taken first.
        let mut dirs = Vec::new();
        for name in names {
            let rel = rel.join(name);
            let full = dir.join(&rel);
            tar.append_path_with_name(&full, &rel)?;
            if std::fs::symlink_metadata(&full)?.is_dir() {
                dirs.push(rel);
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    let zstd = tar.into_inner()?;
    let (mut file, digest, size) = zstd.finish()?.finish();
    // Flushed, not synced: `adopt` syncs it before giving it its name.
    file.flush()?;
    let digest: Digest = digest.to_string().parse().map_err(io::Error::other)?;
    store.adopt(&tmp, &digest, size).map_err(io::Error::other)?;
    Ok((digest, size))
}

/// Imported cache mount contents, laid down on first use.
pub struct MountSeeds {
    cache_root: PathBuf,
    mounts: HashMap<String, Descriptor>,
    remote: Arc<RemoteBlobs>,
    store: Store,
    events: Events,
    tried: Mutex<HashSet<String>>,
}

impl MountSeeds {
    pub fn new(
        cache_root: PathBuf,
        mounts: HashMap<String, Descriptor>,
        remote: Arc<RemoteBlobs>,
        store: Store,
        events: Events,
    ) -> MountSeeds {
        MountSeeds {
            cache_root,
            mounts,
            remote,
            store,
            events,
            tried: Mutex::default(),
        }
    }

    /// Makes cache `id` hold the imported contents if this machine has no such cache yet. Called
    /// before a step that mounts it; a failure is a warning (the step starts with an empty
    /// cache), never the step's failure.
    pub async fn seed(&self, id: &str) {
        let Some(desc) = self.mounts.get(id) else {
            return;
        };
        if !self
            .tried
            .lock()
            .expect("not poisoned")
            .insert(id.to_string())
        {
            return;
        }
        if shared_instance(&self.cache_root, id).0.exists() {
            return;
        }
        let result = match self
            .remote
            .ensure(&self.store, std::slice::from_ref(&desc.digest))
            .await
        {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                let (root, id2, store, digest) = (
                    self.cache_root.clone(),
                    id.to_string(),
                    self.store.clone(),
                    desc.digest.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    seed_instance(&root, &id2, |dir| unpack(&store, &digest, dir))
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
                .map(drop)
            }
        };
        if let Err(e) = result {
            self.events.emit(BuildEvent::Warning {
                message: format!(
                    "cache: the imported contents of cache mount {id:?} could not be used ({e}); it starts empty"
                ),
            });
        }
    }
}

fn unpack(store: &Store, digest: &Digest, dir: &Path) -> io::Result<()> {
    let blob = store.open_blob(digest).map_err(io::Error::other)?;
    let zstd = zstd::stream::read::Decoder::new(io::BufReader::new(blob))?;
    let mut archive = tar::Archive::new(zstd);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    // Owners are kept where this process may set them (root, or root of its user namespace).
    let root = nix::unistd::geteuid().is_root();
    archive.set_preserve_ownerships(root);
    // Entries are checked to stay inside `dir` (no `..`, no writing through a symlink).
    // Directories are made last, as tar's own unpack makes them (a read-only one would refuse its
    // files), and the cache's own directory (`./`) gives `dir` its owner and mode at the end.
    let mut dirs = Vec::new();
    let mut top = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .components()
            .all(|c| matches!(c, std::path::Component::CurDir))
        {
            let h = entry.header();
            top = Some((h.mode()?, h.uid()?, h.gid()?));
        } else if entry.header().entry_type().is_dir() {
            dirs.push(entry);
        } else {
            entry.unpack_in(dir)?;
        }
    }
    for mut d in dirs.into_iter().rev() {
        d.unpack_in(dir)?;
    }
    if let Some((mode, uid, gid)) = top {
        use std::os::unix::fs::PermissionsExt;
        if root {
            std::os::unix::fs::chown(dir, Some(uid as u32), Some(gid as u32))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}
