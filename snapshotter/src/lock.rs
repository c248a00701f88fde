//! Advisory file locks (flock(2) through std's `File::lock`), the one way forge marks who uses what:
//! the store while it is open, a blob while it is written, a build while it runs, a cache mount while
//! a step holds it. A lock dies with the process that held it, so a lock that can be taken is proof
//! that its holder is gone — never a pid, which a server keeps alive for every build it runs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

/// Shared (many readers) or exclusive (one holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path, mode: LockMode) -> io::Result<FileLock> {
        let file = open(path)?;
        match mode {
            LockMode::Shared => file.lock_shared()?,
            LockMode::Exclusive => file.lock()?,
        }
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock on `path` (created if missing) if nobody holds it in a conflicting mode;
    /// `None` if somebody does.
    pub fn try_acquire(path: &Path, mode: LockMode) -> io::Result<Option<FileLock>> {
        let file = open(path)?;
        let taken = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match taken {
            Ok(()) => Ok(Some(FileLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Whether some live process holds the lock on `path` in any mode. A missing file is not held.
    /// Takes and drops a shared lock to find out, so it never blocks.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = OpenOptions::new().read(true).open(path) else {
            return false;
        };
        matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Removes the lock file, then releases the lock. Whoever opened the file before the removal
    /// and waits for it will get a lock on an unlinked file: callers that remove lock files must
    /// make that harmless (the thing it guarded is gone too).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_dies_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        assert!(!FileLock::is_held(&p));
        let held = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        assert!(FileLock::is_held(&p));
        assert!(
            FileLock::try_acquire(&p, LockMode::Shared)
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(!FileLock::is_held(&p));
        let again = FileLock::try_acquire(&p, LockMode::Exclusive).unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn shared_holders_coexist_and_keep_out_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.lock");
        let a = FileLock::acquire(&p, LockMode::Shared).unwrap();
        let b = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(
            FileLock::try_acquire(&p, LockMode::Exclusive)
                .unwrap()
                .is_none()
        );
        assert!(FileLock::is_held(&p));
        drop((a, b));
        assert!(!FileLock::is_held(&p));
    }
}
