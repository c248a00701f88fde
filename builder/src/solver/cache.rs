//! Where the solver keeps a record of each computed vertex, by cache key: in memory for tests and
//! one-shot builds, or one file per key on disk so that the next forge process finds them. Records
//! are opaque bytes here; what they mean is the executor's business.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use forge_snapshotter::lock::{FileLock, LockMode};
use thiserror::Error;

use super::key::CacheKey;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cannot create cache directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read cache record {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write cache record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock cache key file {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Holds the right to compute one key until dropped (see [`CacheStore::lock`]).
#[derive(Debug)]
pub struct KeyLock {
    _file: Option<FileLock>,
}

/// A store of records by cache key.
///
/// Lifecycle of a key, as the solver drives it: [`get`](CacheStore::get); on a miss,
/// [`lock`](CacheStore::lock) (which may wait for another process computing the same key), `get`
/// again (that process may have just written it), then compute, [`put`](CacheStore::put), and drop
/// the lock. Every method may block on I/O: the solver calls them off the async threads.
pub trait CacheStore: Send + Sync + 'static {
    /// The record stored under `key`. A record that cannot be read back intact is a miss
    /// (`Ok(None)`), never an error: a cache may lose entries, it must not fail a build.
    fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `record` under `key`, replacing any previous one; readers see the old record or the
    /// new one, never a part.
    fn put(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError>;

    /// Waits until no other holder (in this or another process) computes `key`.
    fn lock(&self, key: &CacheKey) -> Result<KeyLock, CacheError>;
}

/// Records in a map, for tests and for builds that keep nothing.
#[derive(Debug, Default)]
pub struct MemoryCache {
    records: Mutex<HashMap<CacheKey, Vec<u8>>>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.records.lock().expect("cache map poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CacheStore for MemoryCache {
    fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self
            .records
            .lock()
            .expect("cache map poisoned")
            .get(key)
            .cloned())
    }

    fn put(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        self.records
            .lock()
            .expect("cache map poisoned")
            .insert(*key, record.to_vec());
        Ok(())
    }

    /// The solver computes each key at most once per solve, and one map is one process: no lock.
    fn lock(&self, _key: &CacheKey) -> Result<KeyLock, CacheError> {
        Ok(KeyLock { _file: None })
    }
}

/// First bytes of every record file; a file starting otherwise is not ours (or is damaged).
const MAGIC: &[u8; 8] = b"FRGREC01";
/// Magic, payload length (u64 LE), blake3 over key and payload.
const HEADER: usize = 8 + 8 + 32;

/// One file per key under a directory: `<dir>/<key hex>.rec`, with `<key hex>.lock` beside it.
///
/// Crash safety: a record is written to a temporary file in the same directory and renamed over its
/// final name (atomic on POSIX), without waiting for the disk. Each record carries its length and a
/// blake3 checksum over the key and payload, so a record a crash tore (renamed before its bytes
/// reached the disk), truncated, garbled or misplaced reads as a miss, and the step runs again; a
/// crash loses at most the records of the last moments before it. What a record names is as
/// durable as it needs to be on its own: layer blobs are synced before they are named, and a
/// snapshot a crash may have torn is dropped when the root is opened in the next boot (the
/// record then misses). Syncing each record would cost a step two waits for the disk and buy
/// nothing a rerun of that step does not give.
///
/// Age: a record's modification time is when it was last written or read (a hit touches it), which
/// is what `forge prune --older-than` measures.
///
/// Concurrency: readers need no lock (rename is atomic). Computing a key takes an exclusive
/// `flock` on its `.lock` file, so two forge processes never compute the same key at once; the
/// second waits, then finds the first one's record. Lock files are left in place: removing one
/// while another process waits on it would let a third lock a fresh file and compute in parallel.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    seq: AtomicU64,
}

impl DiskCache {
    /// Opens (creating it if needed) the cache directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| CacheError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            seq: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache holds no record (a new store's, or one pruned of them all).
    pub fn is_empty(&self) -> bool {
        fs::read_dir(&self.dir).is_ok_and(|mut entries| {
            !entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".rec")))
        })
    }

    /// The file a key's record lives in.
    pub fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.rec", key.to_hex()))
    }

    fn checksum(key: &CacheKey, payload: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&key.0);
        h.update(payload);
        *h.finalize().as_bytes()
    }

    /// Every record's key with when it was last used (written or read), oldest first.
    pub fn entries(&self) -> Result<Vec<(CacheKey, SystemTime)>, CacheError> {
        let read = |source| CacheError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let name = entry.file_name();
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".rec"))
                .and_then(CacheKey::from_hex)
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            out.push((key, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        out.sort_by_key(|(k, t)| (*t, k.0));
        Ok(out)
    }

    /// Deletes the record of `key` and its lock file, unless a process is computing the key now
    /// (then `false`). Removing the lock file can only let a waiter on the old file and a newcomer
    /// compute the key at once, which costs time, not correctness: records are replaced whole.
    pub fn remove(&self, key: &CacheKey) -> bool {
        let lock = self.dir.join(format!("{}.lock", key.to_hex()));
        let Ok(Some(held)) = FileLock::try_acquire(&lock, LockMode::Exclusive) else {
            return false;
        };
        let removed = fs::remove_file(self.record_path(key)).is_ok();
        held.remove();
        removed
    }

    /// Temporary files of writers that are gone (a record is written while its key's lock is
    /// held); removes them when `remove`. Returns their paths.
    pub fn dead_temp_files(&self, remove: bool) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            if FileLock::is_held(&self.dir.join(format!("{hex}.lock"))) {
                continue;
            }
            if remove {
                let _ = fs::remove_file(entry.path());
            }
            out.push(entry.path());
        }
        out
    }

    fn write_record(&self, key: &CacheKey, record: &[u8]) -> io::Result<PathBuf> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            key.to_hex(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(record.len() as u64).to_le_bytes())?;
            f.write_all(&Self::checksum(key, record))?;
            f.write_all(record)?;
            fs::rename(&tmp, self.record_path(key))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| tmp)
    }
}

impl CacheStore for DiskCache {
    fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Read { path, source }),
        };
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Ok(None);
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let payload = &bytes[HEADER..];
        if payload.len() as u64 != len || bytes[16..HEADER] != Self::checksum(key, payload) {
            return Ok(None);
        }
        // Best effort: a read-only cache still answers.
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(payload.to_vec()))
    }

    fn put(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        self.write_record(key, record)
            .map(|_| ())
            .map_err(|source| CacheError::Write {
                path: self.record_path(key),
                source,
            })
    }

    fn lock(&self, key: &CacheKey) -> Result<KeyLock, CacheError> {
        let path = self.dir.join(format!("{}.lock", key.to_hex()));
        let file = FileLock::acquire(&path, LockMode::Exclusive)
            .map_err(|source| CacheError::Lock { path, source })?;
        Ok(KeyLock { _file: Some(file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path().join("c")).unwrap();
        let key = CacheKey([7; 32]);
        assert_eq!(cache.get(&key).unwrap(), None);
        cache.put(&key, b"hello").unwrap();
        assert_eq!(cache.get(&key).unwrap().as_deref(), Some(&b"hello"[..]));

        let path = cache.record_path(&key);
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 1]).unwrap();
        assert_eq!(cache.get(&key).unwrap(), None, "truncated payload");
        fs::write(&path, &full[..10]).unwrap();
        assert_eq!(cache.get(&key).unwrap(), None, "truncated header");
        // What a crash leaves of a record renamed before its bytes reached the disk.
        fs::write(&path, b"").unwrap();
        assert_eq!(cache.get(&key).unwrap(), None, "empty file");
        fs::write(&path, vec![0u8; full.len()]).unwrap();
        assert_eq!(cache.get(&key).unwrap(), None, "zeroed blocks");
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(cache.get(&key).unwrap(), None, "flipped byte");
        // A whole record copied under another key's name is not that key's record.
        let other = CacheKey([8; 32]);
        fs::write(cache.record_path(&other), &full).unwrap();
        assert_eq!(cache.get(&other).unwrap(), None, "misplaced record");

        cache.put(&key, b"again").unwrap();
        assert_eq!(cache.get(&key).unwrap().as_deref(), Some(&b"again"[..]));
        let strays: Vec<_> = fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(strays.is_empty(), "temporary files left: {strays:?}");
    }

    #[test]
    fn a_cache_is_empty_until_a_record_is_written_and_again_once_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path().join("c")).unwrap();
        assert!(cache.is_empty());
        // A key's lock file and a writer's temporary file are no records.
        fs::write(cache.dir().join(format!("{}.lock", "ab".repeat(32))), b"").unwrap();
        fs::write(cache.dir().join(".tmp-1-ab"), b"half a record").unwrap();
        assert!(cache.is_empty());
        let key = CacheKey([7; 32]);
        cache.put(&key, b"hello").unwrap();
        assert!(!cache.is_empty());
        assert!(cache.remove(&key));
        assert!(cache.is_empty());
    }

    #[test]
    fn key_lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiskCache::open(dir.path()).unwrap();
        let b = DiskCache::open(dir.path()).unwrap();
        let key = CacheKey([1; 32]);
        let held = a.lock(&key).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _l = b.lock(&key).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "second lock taken while the first is held"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("second lock taken once the first is dropped");
        t.join().unwrap();
    }
}
