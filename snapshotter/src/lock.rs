//! Advisory file locks (flock(2) through std's `File::lock`), the one way forge marks who uses what:
//! the store while it is open, a blob while it is written, a build while it runs, a cache mount while
//! a step holds it. A lock dies with the process that held it, so a lock that can be taken is proof
//! that its holder is gone — never a pid, which a server keeps alive for every build it runs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
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

/// Whether `path` still names the file open as `file`: a lock file removed (and perhaps made anew)
/// by someone else between our open and our lock is not the lock we think we hold.
fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing).
    ///
    /// Lock files are removed by whoever ends what they guard (and by sweepers, for the dead), so
    /// a lock is only taken once it is known to be on the file `path` names now: otherwise a
    /// sweeper that removed the file between our open and our lock would leave us holding a lock
    /// nobody else can see, and what we guard would look dead.
    pub fn acquire(path: &Path, mode: LockMode) -> io::Result<FileLock> {
        loop {
            let file = open(path)?;
            match mode {
                LockMode::Shared => file.lock_shared()?,
                LockMode::Exclusive => file.lock()?,
            }
            if still_named(&file, path) {
                return Ok(FileLock {
                    file,
                    path: path.to_path_buf(),
                });
            }
        }
    }

    /// Takes the lock on `path` (created if missing) if nobody holds it in a conflicting mode;
    /// `None` if somebody does. Like [`FileLock::acquire`], never a lock on a removed file.
    pub fn try_acquire(path: &Path, mode: LockMode) -> io::Result<Option<FileLock>> {
        loop {
            let file = open(path)?;
            let taken = match mode {
                LockMode::Shared => file.try_lock_shared(),
                LockMode::Exclusive => file.try_lock(),
            };
            match taken {
                Ok(()) if still_named(&file, path) => {
                    return Ok(Some(FileLock {
                        file,
                        path: path.to_path_buf(),
                    }));
                }
                Ok(()) => continue,
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
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
    /// and waits for it finds, once it gets the lock, that the path no longer names it, and opens
    /// the path again (see [`FileLock::acquire`]).
    pub fn remove(self) {
        // Only our own file: if it was removed and made anew by someone else, that one is theirs.
        if still_named(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// 16 hex digits from the kernel's random source (the clock and a process-wide counter if that
/// fails, which keeps names distinct within the process): names for builds, steps and temporary
/// files that no other process, and no other build of this process, will choose.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes = (nanos ^ c.rotate_left(48)).to_le_bytes();
    }
    hex::encode(bytes)
}

/// A directory `parent/name` that belongs to a running piece of work (a build, a step) for as long as
/// `parent/name.lock` is held: [`sweep_dead`] removes it once its holder is gone, whatever process
/// that was. Dropping it removes the directory (never across a mount) and the lock file.
#[derive(Debug)]
pub struct LiveDir {
    dir: PathBuf,
    lock: Option<FileLock>,
}

fn lock_of(parent: &Path, name: &str) -> PathBuf {
    parent.join(format!("{name}.lock"))
}

impl LiveDir {
    /// Takes `parent/name.lock`, then makes `parent/name` (and `parent`).
    pub fn create(parent: &Path, name: &str) -> io::Result<LiveDir> {
        fs::create_dir_all(parent)?;
        let lock = FileLock::acquire(&lock_of(parent, name), LockMode::Exclusive)?;
        let dir = parent.join(name);
        fs::create_dir_all(&dir)?;
        Ok(LiveDir {
            dir,
            lock: Some(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LiveDir {
    fn drop(&mut self) {
        remove_same_fs(&self.dir);
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

/// Whether the work that owns `parent/name` is still running (in any process).
pub fn is_live(parent: &Path, name: &str) -> bool {
    FileLock::is_held(&lock_of(parent, name))
}

/// Removes the directories `parent/<prefix>*` (and their lock files) whose lock nobody holds: what
/// work that died left behind. Returns how many directories went.
pub fn sweep_dead(parent: &Path, prefix: &str) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut names = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
        {
            names.insert(name.strip_suffix(".lock").unwrap_or(name).to_string());
        }
    }
    let mut removed = 0;
    for name in names {
        // Holding the lock while removing keeps out anyone who (absurdly) takes the same name.
        let Ok(Some(held)) = FileLock::try_acquire(&lock_of(parent, &name), LockMode::Exclusive)
        else {
            continue;
        };
        let dir = parent.join(&name);
        if fs::symlink_metadata(&dir).is_ok() {
            remove_same_fs(&dir);
            removed += 1;
        }
        held.remove();
    }
    removed
}

/// Removes `path` and what it holds without crossing into another filesystem: a directory that is a
/// mount point (another device) is left with everything in it, and so are its parents.
pub fn remove_same_fs(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    remove_on_dev(path, meta.dev());
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
    fn a_live_dir_stays_and_a_dead_one_is_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = LiveDir::create(parent.path(), "step-live").unwrap();
        fs::write(live.path().join("f"), b"x").unwrap();
        // What a killed process leaves: the directory and an unheld lock file; and a directory
        // whose lock file is gone altogether.
        fs::create_dir_all(parent.path().join("step-dead/sub")).unwrap();
        fs::write(parent.path().join("step-dead.lock"), b"").unwrap();
        fs::create_dir_all(parent.path().join("step-nolock")).unwrap();
        fs::create_dir_all(parent.path().join("other")).unwrap();
        assert!(is_live(parent.path(), "step-live"));
        assert!(!is_live(parent.path(), "step-dead"));
        assert_eq!(sweep_dead(parent.path(), "step-"), 2);
        assert!(live.path().join("f").exists());
        assert!(!parent.path().join("step-dead").exists());
        assert!(!parent.path().join("step-dead.lock").exists());
        assert!(!parent.path().join("step-nolock").exists());
        assert!(
            parent.path().join("other").exists(),
            "other names are not ours"
        );
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
        assert!(!parent.path().join("step-live.lock").exists());
    }

    /// The chaos test's failure: a waiter that got the lock of a file its holder removed held a
    /// lock nobody could see, so what it guarded looked dead and was swept. It must retake the
    /// lock on the file the path names now.
    #[test]
    fn a_waiter_whose_lock_file_was_removed_locks_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.lock");
        let first = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || FileLock::acquire(&p, LockMode::Exclusive).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        first.remove();
        let second = waiter.join().unwrap();
        assert!(p.exists(), "the waiter's lock has a file others can see");
        assert!(FileLock::is_held(&p));
        assert!(still_named(second.file(), &p));
    }

    #[test]
    fn random_names_differ() {
        let a = random_hex();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex());
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
