//! Cache mounts (`RUN --mount=type=cache`) on disk: one layout and one locking scheme under the cache
//! root, whichever backend runs the step, so a cache warmed by one runner is warm for the other.
//!
//! ```text
//! <cache_root>/v1/<name>/           one directory per cache id, <name> = cache_name(id)
//! <cache_root>/v1/<name>/<n>/       instance n of the cache: what the step sees
//! <cache_root>/v1/<name>/<n>.lock   flock(2) on it stands for a step using instance n
//! <cache_root>/v1/<name>/create.lock  held (exclusively, briefly) while an instance is created
//! <cache_root>/v1/<name>/<n>.new/   an instance being made; renamed to <n> once whole
//! ```
//!
//! Sharing follows BuildKit: `shared` users hold a shared lock on instance 0 and see each other's
//! writes; `locked` users wait for an exclusive lock on instance 0; `private` users take the first
//! instance whose lock nobody holds, creating instance n+1 when all are busy. A new instance starts as
//! a copy of the seed (`from=`) when there is one, else empty with the requested owner and mode.
//!
//! Layouts of earlier forge versions (hex-named `<hex>/<n>` directories of the embedded runner,
//! `%XX`-named directories with `.lock` files beside them of the containerd runner) sit directly under
//! the cache root. They are left alone and never read: a cache is a cache, the first step of each id
//! starts cold once, and `v1/` keeps the new names from ever meeting the old ones.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use forge_snapshotter::lock::{FileLock, LockMode};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::{MountError, io_err};
use crate::spec::{CacheSeed, CacheSharing};

/// How often a step waiting for a cache lock looks again (and checks for cancellation).
const LOCK_POLL: Duration = Duration::from_millis(50);
/// The layout version: the directory under the cache root all caches live in.
const LAYOUT: &str = "v1";
/// Escaped names longer than this are replaced by a digest, to stay under NAME_MAX with room for
/// the `.lock`/`.new` suffixes.
const MAX_NAME: usize = 200;

/// A cache instance held for a step; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct CacheLease {
    pub dir: PathBuf,
    _lock: FileLock,
}

/// The directory name of cache `id`: bytes outside `[A-Za-z0-9_.-]`, a leading dot and `%` become
/// `%XX` (upper-case hex), so distinct ids never share a name and none is `.`, `..` or holds a `/`.
/// The empty id is `%`, which escaping never yields alone. An escaped name too long for a directory
/// entry becomes `%H` and the id's sha256, which escaping cannot yield either (`H` is not a hex digit).
pub(crate) fn cache_name(id: &str) -> String {
    if id.is_empty() {
        return "%".to_string();
    }
    let mut name = String::new();
    for (i, byte) in id.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || byte == b'.';
        if plain && !(i == 0 && byte == b'.') {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.len() > MAX_NAME {
        return format!("%H{}", hex::encode(sha2::Sha256::digest(id.as_bytes())));
    }
    name
}

/// What the cache of a step mount should start as when its instance is created.
pub(crate) struct Create<'a> {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub seed: Option<&'a CacheSeed>,
}

/// Takes an instance of cache `id` for one step, as the sharing mode says (see the module docs),
/// waiting for a lock until `cancel` fires, and creates the instance if it does not exist yet.
pub(crate) async fn acquire(
    cache_root: &Path,
    id: &str,
    sharing: CacheSharing,
    create: Create<'_>,
    cancel: &CancellationToken,
) -> Result<CacheLease, MountError> {
    let base = cache_root.join(LAYOUT).join(cache_name(id));
    fs::create_dir_all(&base).map_err(io_err("create cache directory", &base))?;
    let mut instance = 0u32;
    let (dir, lock) = 'instances: loop {
        let lock_path = base.join(format!("{instance}.lock"));
        let mode = match sharing {
            CacheSharing::Shared => LockMode::Shared,
            CacheSharing::Private | CacheSharing::Locked => LockMode::Exclusive,
        };
        loop {
            match FileLock::try_acquire(&lock_path, mode).map_err(io_err("lock", &lock_path))? {
                Some(lock) => break 'instances (base.join(instance.to_string()), lock),
                None if sharing == CacheSharing::Private => {
                    instance += 1;
                    continue 'instances;
                }
                None => {
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            return Err(MountError::Cancelled { id: id.to_string() });
                        }
                        _ = tokio::time::sleep(LOCK_POLL) => {}
                    }
                }
            }
        }
    };
    // An instance is a directory. A step under the chroot isolation may leave its cache's place
    // as something else (a symlink to `/root/.docker` made inside its root names the host's when
    // it comes back): that is never bound or packed, it is replaced by a new, empty instance.
    if let Ok(md) = fs::symlink_metadata(&dir)
        && !md.is_dir()
    {
        fs::remove_file(&dir)
            .map_err(io_err("remove a cache instance that is no directory", &dir))?;
    }
    if fs::symlink_metadata(&dir).is_err() {
        let (base, dir2) = (base.clone(), dir.clone());
        let (uid, gid, mode) = (create.uid, create.gid, create.mode);
        let seed = create.seed.cloned();
        let id2 = id.to_string();
        // Copying a seed is blocking work of any length.
        tokio::task::spawn_blocking(move || {
            create_instance(&base, &dir2, uid, gid, mode, seed.as_ref(), &id2)
        })
        .await
        .map_err(|e| MountError::Internal(format!("cache creation task: {e}")))??;
    }
    Ok(CacheLease { dir, _lock: lock })
}

/// The directory of instance 0 of cache `id`, the one `shared` and `locked` steps use (whether or
/// not it exists yet), with the lock file that stands for using it.
pub fn shared_instance(cache_root: &Path, id: &str) -> (PathBuf, PathBuf) {
    let base = cache_root.join(LAYOUT).join(cache_name(id));
    (base.join("0"), base.join("0.lock"))
}

/// Creates instance 0 of cache `id` with `fill` (given an empty directory to fill) unless it
/// exists; returns whether it made it. The same creation lock and rename as a step's own
/// creation, so a step starting at once sees either nothing or the whole filled instance.
pub fn seed_instance(
    cache_root: &Path,
    id: &str,
    fill: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<bool> {
    let base = cache_root.join(LAYOUT).join(cache_name(id));
    fs::create_dir_all(&base)?;
    let dir = base.join("0");
    let _create_lock = FileLock::acquire(&base.join("create.lock"), LockMode::Exclusive)?;
    if dir.exists() {
        return Ok(false);
    }
    let tmp = base.join("0.new");
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir(&tmp)?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &dir)?;
    Ok(true)
}

/// Makes instance `dir` whole before anyone sees it: built as `<n>.new` under the creation lock
/// (shared users of instance 0 may race to create it), then renamed into place. A `<n>.new` left by
/// a process that died midway is removed first.
fn create_instance(
    base: &Path,
    dir: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    seed: Option<&CacheSeed>,
    id: &str,
) -> Result<(), MountError> {
    let create_lock_path = base.join("create.lock");
    let _create_lock = FileLock::acquire(&create_lock_path, LockMode::Exclusive)
        .map_err(io_err("lock", &create_lock_path))?;
    if dir.exists() {
        return Ok(());
    }
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove unfinished cache instance", &tmp)(e)),
    }
    match seed {
        Some(seed) => {
            let source = resolve_seed(seed).map_err(|source| MountError::Seed {
                id: id.to_string(),
                root: seed.root.clone(),
                path: seed.path.clone(),
                source,
            })?;
            copy_seed(&source, &tmp).map_err(|source| MountError::Seed {
                id: id.to_string(),
                root: seed.root.clone(),
                path: seed.path.clone(),
                source,
            })?;
        }
        None => {
            fs::create_dir(&tmp).map_err(io_err("create cache instance", &tmp))?;
            // Ownership and mode apply when the cache is created, as BuildKit's uid/gid/mode do.
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .map_err(io_err("chown cache instance", &tmp))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod cache instance", &tmp))?;
        }
    }
    fs::rename(&tmp, dir).map_err(io_err("rename cache instance into place", dir))
}

/// The seed directory, with `seed.path` resolved as if `seed.root` were `/`: a symlink in the seed
/// stage (`/data -> /etc`) leads to the stage's /etc, never the host's. The result names a real
/// directory, held open.
fn resolve_seed(seed: &CacheSeed) -> io::Result<ResolvedSeed> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let root = open(
        &seed.root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let rel = seed
        .path
        .strip_prefix("/")
        .unwrap_or(&seed.path)
        .to_path_buf();
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&root, rel.as_path(), how).map_err(io::Error::from)?;
    Ok(ResolvedSeed { fd })
}

struct ResolvedSeed {
    fd: std::os::fd::OwnedFd,
}

/// Copies the seed's tree to `to` with its types, owners, modes, times and hard links; symlinks are
/// copied as symlinks, never followed, so nothing outside the seed is read.
fn copy_seed(seed: &ResolvedSeed, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // Through the descriptor, not a path string: the trailing `/.` enters the directory the
    // descriptor holds, and every entry below is looked up from there without following links.
    let source = PathBuf::from(format!("/proc/self/fd/{}/.", seed.fd.as_raw_fd()));
    forge_snapshotter::snapshot::copy_tree(&source, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ids() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    fn plain(mode: u32) -> Create<'static> {
        let (uid, gid) = ids();
        Create {
            uid,
            gid,
            mode,
            seed: None,
        }
    }

    #[test]
    fn cache_names_are_injective_and_stay_in_the_root() {
        assert_eq!(cache_name("go-build"), "go-build");
        assert_eq!(cache_name("/root/.cache"), "%2Froot%2F.cache");
        assert_eq!(cache_name(".."), "%2E.");
        assert_eq!(cache_name("."), "%2E");
        assert_eq!(cache_name(""), "%");
        assert_ne!(cache_name("a/b"), cache_name("a%2Fb"));
        assert_ne!(cache_name("%"), cache_name(""));
        let long = "/".repeat(100);
        let hashed = cache_name(&long);
        assert!(hashed.starts_with("%H") && hashed.len() == 66, "{hashed}");
        assert_ne!(hashed, cache_name(&"/".repeat(101)));
        for id in ["a/../../b", "../x", "/", "a\0b", &long] {
            let name = cache_name(id);
            assert!(!name.contains('/') && name != "." && name != "..", "{id:?}");
            assert!(name.len() <= MAX_NAME, "{id:?}");
        }
    }

    #[tokio::test]
    async fn private_takes_a_new_instance_when_busy_and_shared_reuses() {
        let root = tempfile::tempdir().unwrap();
        let none = CancellationToken::new();
        let take = |sharing, mode| acquire(root.path(), "go/build", sharing, plain(mode), &none);
        let a = take(CacheSharing::Private, 0o755).await.unwrap();
        let b = take(CacheSharing::Private, 0o755).await.unwrap();
        assert_ne!(a.dir, b.dir);
        assert_eq!(a.dir, root.path().join("v1/go%2Fbuild/0"));
        drop(a);
        let c = take(CacheSharing::Private, 0o755).await.unwrap();
        assert!(c.dir.ends_with("0"), "{}", c.dir.display());
        drop(c);
        let s1 = take(CacheSharing::Shared, 0o755).await.unwrap();
        let s2 = take(CacheSharing::Shared, 0o755).await.unwrap();
        assert_eq!(s1.dir, s2.dir);
        // Shared holders make instance 0 busy for a private user; instance 1 is still held by b.
        let p = take(CacheSharing::Private, 0o700).await.unwrap();
        assert!(p.dir.ends_with("2"), "{}", p.dir.display());
        assert_eq!(fs::metadata(&p.dir).unwrap().mode() & 0o7777, 0o700);
        // Nothing half-made is left beside the instances.
        let names: Vec<String> = fs::read_dir(root.path().join("v1/go%2Fbuild"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".new")), "{names:?}");
    }

    #[tokio::test]
    async fn a_locked_waiter_waits_and_stops_when_cancelled() {
        let root = tempfile::tempdir().unwrap();
        let none = CancellationToken::new();
        let held = acquire(root.path(), "x", CacheSharing::Locked, plain(0o755), &none)
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.cancel();
        });
        let start = std::time::Instant::now();
        let waited = acquire(
            root.path(),
            "x",
            CacheSharing::Shared,
            plain(0o755),
            &cancel,
        )
        .await;
        assert!(
            matches!(waited, Err(MountError::Cancelled { .. })),
            "{waited:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(150));
        drop(held);
        acquire(root.path(), "x", CacheSharing::Locked, plain(0o755), &none)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_seed_is_copied_once_and_its_symlinks_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        fs::create_dir_all(stage.join("opt/data/sub")).unwrap();
        fs::write(stage.join("opt/data/sub/file"), "seeded").unwrap();
        fs::set_permissions(
            stage.join("opt/data/sub/file"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        fs::set_permissions(stage.join("opt/data"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("/etc", stage.join("opt/data/etc-link")).unwrap();
        // An absolute link in the stage: resolved inside the stage, it is the stage's /opt/data.
        std::os::unix::fs::symlink("/opt/data", stage.join("data")).unwrap();
        let seed = CacheSeed {
            root: stage.clone(),
            path: "/data".into(),
        };
        let none = CancellationToken::new();
        let create = Create {
            seed: Some(&seed),
            ..plain(0o755)
        };
        let cache_root = dir.path().join("cache");
        let lease = acquire(&cache_root, "seeded", CacheSharing::Shared, create, &none)
            .await
            .unwrap();
        assert_eq!(
            fs::read_to_string(lease.dir.join("sub/file")).unwrap(),
            "seeded"
        );
        assert_eq!(
            fs::metadata(lease.dir.join("sub/file")).unwrap().mode() & 0o7777,
            0o640
        );
        // The instance root takes the seed directory's mode.
        assert_eq!(fs::metadata(&lease.dir).unwrap().mode() & 0o7777, 0o751);
        assert_eq!(
            fs::read_link(lease.dir.join("etc-link")).unwrap(),
            Path::new("/etc")
        );
        fs::write(lease.dir.join("mine"), "written by a step").unwrap();
        drop(lease);
        // The cache exists now: a changed seed does not overwrite it.
        fs::write(stage.join("opt/data/sub/file"), "changed").unwrap();
        let create = Create {
            seed: Some(&seed),
            ..plain(0o755)
        };
        let again = acquire(&cache_root, "seeded", CacheSharing::Locked, create, &none)
            .await
            .unwrap();
        assert_eq!(
            fs::read_to_string(again.dir.join("sub/file")).unwrap(),
            "seeded"
        );
        assert!(again.dir.join("mine").exists());

        // A seed path that climbs out with `..` stays in the stage root too.
        let escaping = CacheSeed {
            root: stage.join("opt"),
            path: "../../..".into(),
        };
        let create = Create {
            seed: Some(&escaping),
            ..plain(0o755)
        };
        let lease = acquire(&cache_root, "climb", CacheSharing::Shared, create, &none)
            .await
            .unwrap();
        assert!(lease.dir.join("data/sub/file").exists());
        assert!(!lease.dir.join("stage").exists());

        // A seed that does not exist is an error naming it, and leaves no instance behind.
        let missing = CacheSeed {
            root: stage.clone(),
            path: "/nope".into(),
        };
        let create = Create {
            seed: Some(&missing),
            ..plain(0o755)
        };
        let err = acquire(&cache_root, "missing", CacheSharing::Shared, create, &none)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nope"), "{err}");
        assert!(!cache_root.join("v1/missing/0").exists());
    }
}
