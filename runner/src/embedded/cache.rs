//! Cache mounts (`RUN --mount=type=cache`): directories kept by id under the backend's cache root, shared
//! between steps according to their sharing mode with flock(2) on a lock file per instance.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::spec::CacheSharing;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cancelled while waiting for the lock of cache mount {id:?}")]
    Cancelled { id: String },
    #[error("cache mount {id:?}: {what} {path}")]
    Io {
        id: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A cache directory held for the duration of a step; the lock is released on drop.
#[derive(Debug)]
pub(crate) struct CacheLease {
    pub dir: PathBuf,
    _lock: File,
}

/// Ids are arbitrary strings; hex keeps them one safe path component.
fn key(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn flock(f: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Takes instance `n` of the cache `id`: shared holders take a shared lock, locked ones wait for an
/// exclusive one, private ones take the first instance nobody else holds (creating a new one if all
/// are busy), as BuildKit's `sharing=private` does.
pub(crate) fn acquire(
    root: &Path,
    id: &str,
    sharing: CacheSharing,
    uid: u32,
    gid: u32,
    mode: u32,
    cancelled: &dyn Fn() -> bool,
) -> Result<CacheLease, CacheError> {
    let base = root.join(key(id));
    let err = |what: &'static str, path: &Path| {
        let id = id.to_string();
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            id,
            what,
            path,
            source,
        }
    };
    fs::create_dir_all(&base).map_err(err("create", &base))?;
    let mut n = 0u32;
    let (dir, lock) = loop {
        let lock_path = base.join(format!("{n}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(err("open lock", &lock_path))?;
        let got = match sharing {
            CacheSharing::Private => flock(&lock, libc::LOCK_EX | libc::LOCK_NB),
            // Shared and locked holders wait, but poll so that a cancelled build stops waiting.
            CacheSharing::Shared | CacheSharing::Locked => {
                let op = if sharing == CacheSharing::Shared {
                    libc::LOCK_SH
                } else {
                    libc::LOCK_EX
                };
                loop {
                    match flock(&lock, op | libc::LOCK_NB) {
                        Ok(false) if cancelled() => {
                            return Err(CacheError::Cancelled { id: id.to_string() });
                        }
                        Ok(false) => std::thread::sleep(std::time::Duration::from_millis(20)),
                        other => break other,
                    }
                }
            }
        }
        .map_err(err("lock", &lock_path))?;
        if got {
            break (base.join(n.to_string()), lock);
        }
        n += 1;
    };
    match fs::create_dir(&dir) {
        Ok(()) => {
            // Ownership and mode apply when the cache is created, as BuildKit's uid/gid/mode options do.
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(err("chown", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(err("chmod", &dir))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("create", &dir)(e)),
    }
    Ok(CacheLease { dir, _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_takes_a_new_instance_when_busy_and_shared_reuses() {
        let root = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let a = acquire(
            root.path(),
            "go/build",
            CacheSharing::Private,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        let b = acquire(
            root.path(),
            "go/build",
            CacheSharing::Private,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        assert_ne!(a.dir, b.dir);
        drop(a);
        let c = acquire(
            root.path(),
            "go/build",
            CacheSharing::Private,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        assert!(c.dir.ends_with("0"), "{}", c.dir.display());
        drop(c);
        let s1 = acquire(
            root.path(),
            "go/build",
            CacheSharing::Shared,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        let s2 = acquire(
            root.path(),
            "go/build",
            CacheSharing::Shared,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        assert_eq!(s1.dir, s2.dir);
        // Shared holders make instance 0 busy for a private user.
        let p = acquire(
            root.path(),
            "go/build",
            CacheSharing::Private,
            uid,
            gid,
            0o700,
            &|| false,
        )
        .unwrap();
        assert_ne!(p.dir, s1.dir);
        assert_eq!(
            fs::metadata(&p.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_locked_waiter_stops_when_cancelled() {
        let root = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let held = acquire(
            root.path(),
            "x",
            CacheSharing::Locked,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
        let start = std::time::Instant::now();
        let waited = acquire(
            root.path(),
            "x",
            CacheSharing::Locked,
            uid,
            gid,
            0o755,
            &|| start.elapsed() > std::time::Duration::from_millis(100),
        );
        assert!(
            matches!(waited, Err(CacheError::Cancelled { .. })),
            "{waited:?}"
        );
        drop(held);
        acquire(
            root.path(),
            "x",
            CacheSharing::Locked,
            uid,
            gid,
            0o755,
            &|| false,
        )
        .unwrap();
    }
}
