//! The local content store: every blob forge pulls or builds, kept by sha256 in the OCI content-store
//! layout (`blobs/sha256/<hex>`), plus a crash-safe metadata database (redb) saying which images, cache
//! entries and leases still need which blobs. Pull writes here; unpack, build and push read from here.
//!
//! Crash safety: a blob is written to a temp file in `ingest/` on the same filesystem, its digest and
//! size verified, fsynced and renamed into place, so a name under `blobs/` is always whole. The
//! renames are made durable together: every metadata commit (the only thing that makes a blob
//! needed) first syncs the `blobs/` directory, so a record never outlives a crash that its blobs'
//! names did not, and a build that adds six blobs makes one directory sync, not six. A crash
//! before the commit can lose a blob's name,
//! never its bytes under a name: the blob is then simply absent (a cache record naming it is a miss).
//! redb commits are atomic. Stale temp files are removed by the next quiet open. The metadata
//! file itself is made whole under another name (its tables committed, the file closed) and
//! renamed into place, the store's directory synced before any record goes in: a process killed
//! while making it leaves no half-made `meta.redb`, which redb would refuse to open ever after.
//!
//! Full disk: `reserve`, a 1 MiB file made when the store is opened, is given back when a metadata
//! write fails for want of space, so that `rmi` and `prune` can still record what they remove on a
//! full filesystem; whatever frees space makes it again ([`Store::restore_reserve`]).
//!
//! Several processes: `store.lock` is held shared by every writer and exclusively by prune and the
//! open-time cleanup; `ingest/<hex>.lock` makes a second writer of the same blob wait and then find it
//! present; `meta.lock` serialises access to the database, which is only open for one operation.

mod digest;
mod meta;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::lock::{FileLock, LockMode};
use crate::writeback::Writeback;

pub use digest::{Digest, DigestError};
pub use meta::{
    CheckReport, Descriptor, ImageRecord, Lease, PrunePolicy, PruneReport, UnpackedLayer,
};
pub use writer::BlobWriter;

/// Errors from the content store. Each names the path or digest it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    #[error("metadata database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("metadata record {table}/{key} is unreadable: {message}")]
    Record {
        table: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "cannot find a home for the store: neither XDG_DATA_HOME nor HOME is set (pass a root directory)"
    )]
    NoHome,
    #[error(
        "the store {path} belongs to uid {owner} and others may write it (mode {mode:o}): what \
         this build keeps there could be read and changed by them; use a directory of your own \
         (--root, FORGE_ROOT)"
    )]
    NotOwn {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
}

impl StoreError {
    /// Whether the error is the filesystem running out of space (ENOSPC, or EDQUOT for a quota).
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Io { source, .. } => Some(source),
            StoreError::Database { source, .. } => match source.as_ref() {
                redb::Error::Io(e) => Some(e),
                _ => None,
            },
            _ => None,
        };
        io.and_then(io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    }
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// The store root forge uses when none is given: `/var/lib/forge` for root, otherwise
/// `$XDG_DATA_HOME/forge`, falling back to `~/.local/share/forge`. "Root" means root on the host: a
/// rootless forge runs as root inside its own user namespace, and its store is still the user's.
pub fn default_root() -> Result<PathBuf, StoreError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let host_euid = std::fs::read_to_string("/proc/self/uid_map")
        .ok()
        .and_then(|map| outer_uid(&map, euid))
        .unwrap_or(euid);
    default_root_for(
        host_euid,
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// The id `uid` of this user namespace has in the parent namespace, from a `uid_map` text (lines of
/// `inside outside count`); the initial namespace maps every id to itself.
fn outer_uid(uid_map: &str, uid: u32) -> Option<u32> {
    uid_map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (inside, outside, count) = (fields.next()??, fields.next()??, fields.next()??);
        let uid = u64::from(uid);
        (uid >= inside && uid - inside < count)
            .then(|| u32::try_from(outside + (uid - inside)).ok())
            .flatten()
    })
}

/// The rule behind [`default_root`], with its inputs explicit so it can be tested.
pub fn default_root_for(
    euid: u32,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, StoreError> {
    if euid == 0 {
        return Ok(PathBuf::from("/var/lib/forge"));
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if let Some(xdg) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(xdg.join("forge"));
    }
    match home {
        Some(home) if !home.as_os_str().is_empty() => Ok(home.join(".local/share/forge")),
        _ => Err(StoreError::NoHome),
    }
}

/// A content store rooted at one directory. Cheap to clone paths from; holds no open database, so
/// any number of processes may have the same root open.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
    db_path: PathBuf,
    meta_lock: PathBuf,
    store_lock: PathBuf,
    reserve: PathBuf,
}

/// Size of the store's `reserve` file: room for a few metadata commits when the disk is full.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Takes the lock file at `path`, waiting for it; the error names the file.
fn lock_file(path: &Path, mode: LockMode) -> Result<FileLock, StoreError> {
    FileLock::acquire(path, mode).map_err(io_err("lock", path))
}

/// The name the metadata file is made under, followed by the maker's pid.
const NEW_META_PREFIX: &str = "meta.redb.new-";

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// A shared hold on the store that keeps `prune` out while it lives: take one around anything that
/// ingests blobs and then records what references them (a pull), so prune never sees the blobs in
/// between as garbage. Prune from the same process while holding a session would wait forever.
#[derive(Debug)]
pub struct Session {
    _lock: FileLock,
}

/// The store held exclusively (see [`Store::try_alone`]).
#[derive(Debug)]
pub struct Alone {
    _lock: FileLock,
}

/// Outcome of asking to ingest a blob.
#[derive(Debug)]
pub enum Ingest {
    /// The blob is already in the store (possibly written by another process meanwhile).
    Present,
    /// Nobody has it: write it through this writer and commit.
    Write(BlobWriter),
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file's path in the store (see [`Store::temp_path`]); derefs to the path.
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
    _lock: FileLock,
}

impl std::ops::Deref for TempPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // Adopted files were renamed away; anything still here is an abandoned write.
        let _ = fs::remove_file(&self.path);
    }
}

/// Makes the store's root reachable by its owner alone (0700), as Docker keeps its data root: the
/// snapshots under it hold what steps made, setuid-root binaries and device nodes among them, which
/// another user of the machine could otherwise run or open through the path (a root build's
/// `RUN chmod u+s` gave any local user a root shell). A root that another user owns is left as it
/// is (forge may not change it), unless others may write it: a directory another user made where
/// anyone may (`/tmp/shared` at 0777) lets that user read and replace what the build keeps (its
/// metadata, its snapshots), so it is refused, as ssh refuses a key file others may write.
pub fn close_to_others(root: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::metadata(root).map_err(io_err("look at", root))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() == euid {
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(io_err("make private (0700)", root))?;
        }
    } else if meta.mode() & 0o022 != 0 {
        return Err(StoreError::NotOwn {
            path: root.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `root`. When no other process is using the store,
    /// leftovers of a killed writer (temp files, lock files) are removed; the metadata database is
    /// opened once so that redb repairs it now after a crash rather than in the middle of a pull.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let store = Store {
            blobs: root.join("blobs/sha256"),
            ingest: root.join("ingest"),
            db_path: root.join("meta.redb"),
            meta_lock: root.join("meta.lock"),
            store_lock: root.join("store.lock"),
            reserve: root.join("reserve"),
            root,
        };
        for dir in [&store.blobs, &store.ingest] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        close_to_others(&store.root)?;
        let quiet = FileLock::try_acquire(&store.store_lock, LockMode::Exclusive)
            .map_err(io_err("lock", &store.store_lock))?;
        if let Some(_quiet) = quiet {
            store.clean_ingest()?;
        }
        // The metadata file is made by the first write (or by [`Store::make_metadata`]), not
        // here: a store that is only read never pays for it. Reads of a store without it find
        // nothing.
        store.restore_reserve();
        Ok(store)
    }

    /// Deletes the `reserve` file, giving its space to whatever must be written next; returns the
    /// bytes given back (0 when there was none).
    pub fn release_reserve(&self) -> u64 {
        let size = fs::metadata(&self.reserve).map_or(0, |m| m.len());
        match fs::remove_file(&self.reserve) {
            Ok(()) => size,
            Err(_) => 0,
        }
    }

    /// Makes the `reserve` file when it is absent; best effort (a full disk leaves it absent, and
    /// the next call tries again). Returns whether the reserve is in place.
    ///
    /// Not synced (a new store's first build would wait for it): the filesystem counts the blocks
    /// as taken when they are written (delayed allocation reserves them), and a file a crash left
    /// with its size but none of its blocks is told by its block count and made again.
    pub fn restore_reserve(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        if fs::metadata(&self.reserve).is_ok_and(|m| m.len() == RESERVE_BYTES && m.blocks() > 0) {
            return true;
        }
        let tmp = self.root.join("reserve.tmp");
        // Real zeros, not a sparse file: the point is blocks the filesystem has handed out.
        let made = File::create(&tmp).and_then(|mut f| {
            let zeros = vec![0u8; 64 * 1024];
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
            fs::rename(&tmp, &self.reserve)
        });
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made.is_ok()
    }

    /// Opens the store at [`default_root`].
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(default_root()?)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is in the store. A present blob is always whole and verified.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Whether every blob of the image `record` describes is in the store (a copy that can be used
    /// without asking its registry).
    pub fn holds_whole(&self, record: &ImageRecord) -> bool {
        record.blobs().iter().all(|digest| self.has_blob(digest))
    }

    /// The size of a present blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(digest.clone()))
            }
            Err(e) => Err(io_err("stat blob", &path)(e)),
        }
    }

    /// Opens a blob for streaming reads (a layer for unpack or push).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(digest.clone())
            } else {
                io_err("open blob", &path)(e)
            }
        })
    }

    /// Reads a whole blob; meant for manifests and configs, not layers.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut buf)
            .map_err(io_err("read blob", &self.blob_path(digest)))?;
        Ok(buf)
    }

    /// Takes a [`Session`]: blocks while a prune runs.
    pub fn session(&self) -> Result<Session, StoreError> {
        Ok(Session {
            _lock: lock_file(&self.store_lock, LockMode::Shared)?,
        })
    }

    /// [`Store::session`] when it can be had at once (no prune holds the store), `None` when it
    /// would wait: an async caller takes it in place and sends only a wait to a blocking thread.
    pub fn try_session(&self) -> Result<Option<Session>, StoreError> {
        Ok(FileLock::try_acquire(&self.store_lock, LockMode::Shared)
            .map_err(io_err("lock", &self.store_lock))?
            .map(|l| Session { _lock: l }))
    }

    /// The store to the caller alone, when no [`Session`] (a build, a pull, an ingest, in any
    /// process, this one included) holds it now; `None` without waiting otherwise. While it lives,
    /// sessions wait.
    pub fn try_alone(&self) -> Result<Option<Alone>, StoreError> {
        Ok(FileLock::try_acquire(&self.store_lock, LockMode::Exclusive)
            .map_err(io_err("lock", &self.store_lock))?
            .map(|l| Alone { _lock: l }))
    }

    /// Starts ingesting the blob `digest` (of `size` bytes when known). Blocks while another
    /// writer, in this or another process, is ingesting the same blob; then reports
    /// [`Ingest::Present`] if that writer finished it.
    pub fn ingest(&self, digest: &Digest, size: Option<u64>) -> Result<Ingest, StoreError> {
        let store_lock = lock_file(&self.store_lock, LockMode::Shared)?;
        let blob_lock = lock_file(
            &self.ingest.join(format!("{}.lock", digest.hex())),
            LockMode::Exclusive,
        )?;
        let path = self.blob_path(digest);
        if path.is_file() {
            touch(&path);
            return Ok(Ingest::Present);
        }
        let tmp = self.ingest.join(format!(
            "{}.{}.{}.tmp",
            digest.hex(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create temp file", &tmp))?;
        Ok(Ingest::Write(BlobWriter {
            file: Some(io::BufWriter::with_capacity(
                256 * 1024,
                Writeback::new(file),
            )),
            tmp,
            path,
            hasher: Sha256::new(),
            written: 0,
            expected: digest.clone(),
            expected_size: size,
            committed: false,
            _blob_lock: blob_lock,
            _store_lock: store_lock,
        }))
    }

    /// Writes `bytes` as a blob, verifying them against `expected` when given. Returns the digest.
    pub fn write_blob(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let actual = Digest::of(bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if let Ingest::Write(mut w) = self.ingest(&actual, Some(bytes.len() as u64))? {
            w.write_chunk(bytes)?;
            w.commit()?;
        }
        Ok(actual)
    }

    /// A fresh path in the store's ingest directory (same filesystem as the blobs) for a file that
    /// [`Store::adopt`] will later move in. While the returned [`TempPath`] lives it holds the
    /// store's shared lock, so no other process clears `ingest/` under it (that happens only with
    /// the store to itself) and a prune waits; dropped without adoption, the file is removed.
    pub fn temp_path(&self, hint: &str) -> Result<TempPath, StoreError> {
        let lock = lock_file(&self.store_lock, LockMode::Shared)?;
        Ok(TempPath {
            path: self.ingest.join(format!(
                "{hint}.{}.{}.tmp",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            )),
            _lock: lock,
        })
    }

    /// Moves the file at `tmp` (made under [`Store::temp_path`] by a writer that hashed it while
    /// writing, such as the layer differ) into the store as blob `digest`, without copying. The
    /// caller vouches for the digest; the size is checked. When the blob is already present the
    /// file is removed instead.
    pub fn adopt(&self, tmp: &Path, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let _store_lock = lock_file(&self.store_lock, LockMode::Shared)?;
        let _blob_lock = lock_file(
            &self.ingest.join(format!("{}.lock", digest.hex())),
            LockMode::Exclusive,
        )?;
        let path = self.blob_path(digest);
        if path.is_file() {
            touch(&path);
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        let file = File::open(tmp).map_err(io_err("open temp file", tmp))?;
        let actual = file
            .metadata()
            .map_err(io_err("stat temp file", tmp))?
            .len();
        if actual != size {
            let _ = fs::remove_file(tmp);
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual,
            });
        }
        file.sync_all().map_err(io_err("fsync temp file", tmp))?;
        drop(file);
        // The name becomes durable with the next metadata commit (see the module's crash safety).
        fs::rename(tmp, &path).map_err(io_err("rename blob into", &path))
    }

    /// Copies everything from `reader` into the store as blob `expected`; the bytes are verified
    /// while they stream and nothing is kept if they do not match.
    pub fn write_blob_from(
        &self,
        reader: &mut impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), StoreError> {
        let Ingest::Write(mut w) = self.ingest(expected, size)? else {
            return Ok(());
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read blob source for", &w.path)(e)),
            };
            w.write_chunk(&buf[..n])?;
        }
        w.commit()
    }

    /// Removes temp and lock files. Only called with `store.lock` held exclusively, so no writer is
    /// alive: every temp file is a dead writer's.
    fn clean_ingest(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.ingest).map_err(io_err("list", &self.ingest))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.ingest))?;
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove stale ingest file", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// Whether the store has its metadata file (a new store gets it with its first write).
    pub fn has_metadata(&self) -> bool {
        self.db_path.exists()
    }

    /// Makes the metadata file when the store has none, as its first write would: a build on a
    /// new store calls this on a thread of its own as it opens, so that its one commit at the end
    /// opens a file whole and closed instead of making it (which costs the commit three syncs more
    /// and a truncation). Does nothing when the file is there.
    pub fn make_metadata(&self) -> Result<(), StoreError> {
        let _lock = lock_file(&self.meta_lock, LockMode::Exclusive)?;
        self.make_metadata_locked()
    }

    /// [`Store::make_metadata`] under `meta.lock`: redb makes the file under a name of its own,
    /// with every table, it is synced once (see [`meta::create_file`]) and renamed into place, then
    /// the directory synced, so that no commit goes into a file whose name a crash could take back.
    fn make_metadata_locked(&self) -> Result<(), StoreError> {
        if self.db_path.exists() {
            return Ok(());
        }
        // Files of makers killed half way (under this lock no other is at work).
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(NEW_META_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let tmp = self
            .root
            .join(format!("{NEW_META_PREFIX}{}", std::process::id()));
        let made = meta::create_file(&tmp)
            .and_then(|()| {
                fs::rename(&tmp, &self.db_path).map_err(io_err("rename into", &self.db_path))
            })
            .and_then(|()| fsync_dir(&self.root));
        if made.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        made
    }

    /// Runs `f`, which only reads, on the metadata database opened read-only under `meta.lock`:
    /// redb then writes and syncs nothing (opening it for writing marks the file in use and
    /// closing it marks it clean, five fdatasyncs per open and close). When it cannot be opened so
    /// (missing, or in need of the recovery only a writer does), `f` runs through
    /// [`Store::with_db`].
    pub(crate) fn with_db_read<T>(
        &self,
        f: impl Fn(&dyn redb::ReadableDatabase, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let _lock = lock_file(&self.meta_lock, LockMode::Exclusive)?;
            // No file yet (or one whose tables were never committed): nothing is recorded.
            if !self.db_path.exists() {
                return f(&meta::empty()?, &self.db_path);
            }
            if let Ok(db) = redb::ReadOnlyDatabase::open(&self.db_path) {
                if !meta::has_tables(&db, &self.db_path)? {
                    return f(&meta::empty()?, &self.db_path);
                }
                return f(&db, &self.db_path);
            }
        }
        self.with_db(|db, path| f(db, path))
    }

    /// Runs `f` with the metadata database open, under `meta.lock`. The database is closed before
    /// the lock is released so the next process can open it. When the disk is full, the reserve is
    /// given back and `f` runs once more (a failed redb transaction changed nothing).
    fn with_db<T>(
        &self,
        f: impl Fn(&redb::Database, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = lock_file(&self.meta_lock, LockMode::Exclusive)?;
        // What `f` commits may name blobs renamed into place since the last sync, by this process
        // or another: their names reach the disk first (one journal commit for all of them; next
        // to nothing when no name changed).
        fsync_dir(&self.blobs)?;
        let once = || {
            self.make_metadata_locked()?;
            let db = redb::Database::create(&self.db_path)
                .map_err(|e| meta::db_error(&self.db_path, e))?;
            // One an older forge made may have no tables yet: they come in a commit that `f`'s
            // own makes durable.
            if !meta::has_tables(&db, &self.db_path)? {
                meta::init(&db, &self.db_path)?;
            }
            let out = f(&db, &self.db_path);
            // The close makes `f`'s commits durable (see `meta::begin`): written only once it
            // succeeded.
            let closed = db.close().map_err(|e| meta::db_error(&self.db_path, e));
            out.and_then(|t| closed.map(|()| t))
        };
        match once() {
            Err(e) if e.is_disk_full() && self.release_reserve() > 0 => once(),
            other => other,
        }
    }

    /// How many blobs the store holds and their total size.
    pub fn blob_totals(&self) -> Result<(usize, u64), StoreError> {
        let blobs = self.list_blobs()?;
        Ok((blobs.len(), blobs.iter().map(|(_, size, _)| size).sum()))
    }

    /// Every blob file under `blobs/sha256`, with its size and modification time.
    fn list_blobs(&self) -> Result<Vec<(Digest, u64, SystemTime)>, StoreError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &entry.path())(e)),
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((digest, meta.len(), mtime));
        }
        out.sort();
        Ok(out)
    }
}

/// Marks a blob as recently used, for the age part of the prune policy. Best effort: a read-only
/// store still works.
pub(crate) fn touch(path: &Path) {
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Seconds since the Unix epoch, for records.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests;
