//! The store's metadata in redb: image records, roots (anything that keeps blobs alive: an image, a
//! cache entry), per-blob reference counts derived from the roots in the same transaction, leases,
//! and unpacked-layer records. Also prune and the consistency check, which read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{BackendError, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Digest, LockMode, Store, StoreError, io_err, lock_file, unix_now};

const IMAGES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("images");
const ROOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("roots");
const REFCOUNTS: TableDefinition<'_, &str, u64> = TableDefinition::new("refcounts");
const LEASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("leases");
const UNPACKED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("unpacked");

/// The root kind image records register under.
const IMAGE_ROOT: &str = "image";

pub(crate) fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

/// `?` for redb results inside a database closure.
trait Db<T> {
    fn db(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> Db<T> for Result<T, E> {
    fn db(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| db_error(path, e))
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
        table,
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise to JSON")
}

/// Whether every table exists (then opening the store needs no write).
pub(crate) fn has_tables(db: &dyn ReadableDatabase, path: &Path) -> Result<bool, StoreError> {
    let read = db.begin_read().db(path)?;
    Ok(read.open_table(IMAGES).is_ok()
        && read.open_table(ROOTS).is_ok()
        && read.open_table(REFCOUNTS).is_ok()
        && read.open_table(LEASES).is_ok()
        && read.open_table(UNPACKED).is_ok())
}

/// A write transaction inside [`Store::with_db`]: its commit is not synced by itself, as the
/// database's close right after it (which `with_db` waits for and whose error it returns) makes
/// it durable together with the allocator state the close records anyway: one sync fewer per
/// write. A crash before the close loses the whole transaction, as one before the commit would.
fn begin(db: &redb::Database, path: &Path) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write().db(path)?;
    txn.set_durability(redb::Durability::None).db(path)?;
    Ok(txn)
}

/// Creates the tables so that later read transactions find them, in a commit the database's close
/// makes durable (see [`begin`]); a crash before that leaves a file without tables, which reads as
/// an empty store and gets them at the next write.
pub(crate) fn init(db: &redb::Database, path: &Path) -> Result<(), StoreError> {
    let txn = begin(db, path)?;
    txn.open_table(IMAGES).db(path)?;
    txn.open_table(ROOTS).db(path)?;
    txn.open_table(REFCOUNTS).db(path)?;
    txn.open_table(LEASES).db(path)?;
    txn.open_table(UNPACKED).db(path)?;
    txn.commit().db(path)
}

/// Makes a new metadata file at `tmp` (a name of its own, which nothing else opens) with every
/// table, synced once: redb syncs as it creates and closes a file (seven times), which is what
/// keeps a file that others may open consistent at each step; a file that gets its name only after
/// it is whole needs its bytes on the disk once, before that rename.
pub(crate) fn create_file(tmp: &Path) -> Result<(), StoreError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(super::io_err("create", tmp))?;
    let synced = file.try_clone().map_err(super::io_err("open", tmp))?;
    let backend = redb::backends::FileBackend::new(file).db(tmp)?;
    let db = redb::Database::builder()
        .create_with_backend(SyncedAtTheEnd(backend))
        .db(tmp)?;
    init(&db, tmp)?;
    db.close().db(tmp)?;
    synced.sync_data().map_err(super::io_err("sync", tmp))
}

/// A file backend whose syncs wait for the caller's one at the end (see [`create_file`]).
#[derive(Debug)]
struct SyncedAtTheEnd(redb::backends::FileBackend);

impl redb::StorageBackend for SyncedAtTheEnd {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// An empty store's metadata: every table, no rows, in memory (what a store without its metadata
/// file reads as).
pub(crate) fn empty() -> Result<redb::Database, StoreError> {
    let path = Path::new("(empty metadata)");
    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .db(path)?;
    init(&db, path)?;
    Ok(db)
}

/// A content descriptor as manifests carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What the store knows about a pulled (or, later, built) image: enough for unpack to find every
/// layer and for push to find every blob without asking the registry again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference it was pulled as, `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The index (manifest list) the reference resolved to, when it was one.
    pub index: Option<Descriptor>,
    /// The platform manifest.
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// Layers in manifest order (base first), with their media types (gzip, zstd, plain tar).
    pub layers: Vec<Descriptor>,
    /// `os/arch[/variant]` of the chosen manifest.
    pub platform: String,
    /// When it was recorded as it is, in seconds since the epoch (recording it again unchanged
    /// keeps this time).
    pub recorded_unix: u64,
}

impl ImageRecord {
    /// Every blob the image needs: index, manifest, config and layers.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self.index.iter().map(|d| d.digest.clone()).collect();
        out.push(self.manifest.digest.clone());
        out.push(self.config.digest.clone());
        out.extend(self.layers.iter().map(|l| l.digest.clone()));
        out
    }
}

/// A temporary hold on blobs, for content that is in the store before anything records it
/// (a build's intermediate layers). Expired leases are dropped by prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub digests: Vec<Digest>,
    /// Seconds since the epoch after which the lease no longer holds anything; `None` holds until
    /// removed.
    pub expires_unix: Option<u64>,
}

/// A layer already unpacked into a snapshot, so it is unpacked once and shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackedLayer {
    /// The compressed layer blob it came from.
    pub layer: Digest,
    /// The sha256 of the uncompressed tar, when the unpacker computed it.
    pub diff_id: Option<Digest>,
    /// The snapshotter's key for the result.
    pub snapshot: String,
    /// Bytes on disk.
    pub size: u64,
    pub recorded_unix: u64,
}

/// What prune may remove. Only blobs no root and no live lease references are ever candidates;
/// the policy narrows that further.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Only remove blobs not used (written or pulled again) for at least this long.
    pub older_than: Option<Duration>,
    /// Stop removing once the store's blobs total at most this many bytes (oldest go first).
    pub keep_bytes: Option<u64>,
}

/// What prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: Vec<Digest>,
    pub freed_bytes: u64,
    pub kept_blobs: usize,
    pub kept_bytes: u64,
    pub expired_leases: Vec<String>,
}

/// Result of [`Store::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blobs read and hashed.
    pub blobs: usize,
    /// Blobs whose content does not hash to their name: (name, actual).
    pub corrupt: Vec<(Digest, Digest)>,
    /// Blobs a root references that are not in the store.
    pub missing: Vec<Digest>,
    /// Reference counts that disagree with the roots: (digest, stored, recomputed).
    pub bad_refcounts: Vec<(Digest, u64, u64)>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.bad_refcounts.is_empty()
    }
}

fn root_key(kind: &str, name: &str) -> String {
    format!("{kind}\n{name}")
}

/// Replaces the digests a root holds and moves the reference counts accordingly, inside `txn`.
fn set_root_in(
    txn: &redb::WriteTransaction,
    path: &Path,
    key: &str,
    digests: Option<&[Digest]>,
) -> Result<(), StoreError> {
    let mut roots = txn.open_table(ROOTS).db(path)?;
    let mut counts = txn.open_table(REFCOUNTS).db(path)?;
    let old: BTreeSet<Digest> = match roots.get(key).db(path)? {
        Some(v) => decode::<Vec<Digest>>("roots", key, v.value())?
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    let new: BTreeSet<Digest> = digests.unwrap_or_default().iter().cloned().collect();
    for gone in old.difference(&new) {
        let k = gone.to_string();
        let n = counts.get(k.as_str()).db(path)?.map_or(0, |v| v.value());
        if n <= 1 {
            counts.remove(k.as_str()).db(path)?;
        } else {
            counts.insert(k.as_str(), n - 1).db(path)?;
        }
    }
    for added in new.difference(&old) {
        let k = added.to_string();
        let n = counts.get(k.as_str()).db(path)?.map_or(0, |v| v.value());
        counts.insert(k.as_str(), n + 1).db(path)?;
    }
    match digests {
        Some(_) => {
            let list: Vec<&Digest> = new.iter().collect();
            roots.insert(key, encode(&list).as_slice()).db(path)?;
        }
        None => {
            roots.remove(key).db(path)?;
        }
    }
    Ok(())
}

impl Store {
    /// Records an image (replacing any record of the same reference) and takes references on all
    /// its blobs, in one transaction.
    /// A record that differs from the one stored only in `recorded_unix` is not written again (a
    /// rebuild that changes nothing, or a base image resolved to what the store holds, commits
    /// nothing: each commit costs the metadata file several syncs); the stored time stays.
    pub fn put_image(&self, image: &ImageRecord) -> Result<(), StoreError> {
        self.record(std::slice::from_ref(image), &[])
    }

    /// Records `images` (as [`Store::put_image`] does, each under its reference) and sets `roots`
    /// (`(kind, name, digests)`, as [`Store::set_root`] does) in one transaction: a build's
    /// results and the image it made cost one commit of the metadata file, not one each (each
    /// opening, commit and closing of it syncs the file several times). An image recorded before
    /// exactly as it is (its time aside) is not written again; with nothing left to write, the file
    /// is not touched.
    pub fn record(
        &self,
        images: &[ImageRecord],
        roots: &[(&str, &str, &[Digest])],
    ) -> Result<(), StoreError> {
        // A record that cannot be read (or none) is written.
        let changed: Vec<(&ImageRecord, Vec<u8>)> = images
            .iter()
            .filter(|image| match self.get_image(&image.reference) {
                Ok(Some(old)) => {
                    ImageRecord {
                        recorded_unix: image.recorded_unix,
                        ..old
                    } != **image
                }
                _ => true,
            })
            .map(|image| (image, encode(image)))
            .collect();
        if changed.is_empty() && roots.is_empty() {
            return Ok(());
        }
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            {
                let mut table = txn.open_table(IMAGES).db(path)?;
                for (image, bytes) in &changed {
                    table
                        .insert(image.reference.as_str(), bytes.as_slice())
                        .db(path)?;
                }
            }
            for (image, _) in &changed {
                set_root_in(
                    &txn,
                    path,
                    &root_key(IMAGE_ROOT, &image.reference),
                    Some(&image.blobs()),
                )?;
            }
            for (kind, name, digests) in roots {
                set_root_in(&txn, path, &root_key(kind, name), Some(digests))?;
            }
            txn.commit().db(path)
        })
    }

    /// The record of an image by its normalised reference.
    pub fn get_image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let images = txn.open_table(IMAGES).db(path)?;
            match images.get(reference).db(path)? {
                Some(v) => Ok(Some(decode("images", reference, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every image record, by reference.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let images = txn.open_table(IMAGES).db(path)?;
            let mut out = Vec::new();
            for entry in images.iter().db(path)? {
                let (k, v) = entry.db(path)?;
                out.push(decode("images", k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Forgets an image and drops its references; its blobs go at the next prune unless something
    /// else holds them. Returns whether there was such an image.
    pub fn remove_image(&self, reference: &str) -> Result<bool, StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            let existed = {
                let mut images = txn.open_table(IMAGES).db(path)?;
                images.remove(reference).db(path)?.is_some()
            };
            set_root_in(&txn, path, &root_key(IMAGE_ROOT, reference), None)?;
            txn.commit().db(path)?;
            Ok(existed)
        })
    }

    /// Makes `(kind, name)` a root holding exactly `digests` (for cache records and other owners
    /// of blobs that are not images). Use a kind other than `"image"`.
    pub fn set_root(&self, kind: &str, name: &str, digests: &[Digest]) -> Result<(), StoreError> {
        self.set_roots(kind, &[(name, digests)])
    }

    /// [`Store::set_root`] for many roots of one kind, in one transaction: a build's results are
    /// protected together, at the cost of one commit (each commit syncs the metadata file several
    /// times) instead of one per result.
    pub fn set_roots<N: AsRef<str>, D: AsRef<[Digest]>>(
        &self,
        kind: &str,
        roots: &[(N, D)],
    ) -> Result<(), StoreError> {
        let roots: Vec<(&str, &str, &[Digest])> = roots
            .iter()
            .map(|(name, digests)| (kind, name.as_ref(), digests.as_ref()))
            .collect();
        self.record(&[], &roots)
    }

    /// Removes a root set with [`Store::set_root`].
    pub fn remove_root(&self, kind: &str, name: &str) -> Result<(), StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            set_root_in(&txn, path, &root_key(kind, name), None)?;
            txn.commit().db(path)
        })
    }

    /// How many roots reference this blob.
    pub fn refcount(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let counts = txn.open_table(REFCOUNTS).db(path)?;
            let key = digest.to_string();
            Ok(counts.get(key.as_str()).db(path)?.map_or(0, |v| v.value()))
        })
    }

    /// Adds or replaces a lease.
    pub fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            {
                let mut leases = txn.open_table(LEASES).db(path)?;
                leases
                    .insert(lease.id.as_str(), encode(lease).as_slice())
                    .db(path)?;
            }
            txn.commit().db(path)
        })
    }

    /// Removes a lease; returns whether it existed.
    pub fn remove_lease(&self, id: &str) -> Result<bool, StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            let existed = {
                let mut leases = txn.open_table(LEASES).db(path)?;
                leases.remove(id).db(path)?.is_some()
            };
            txn.commit().db(path)?;
            Ok(existed)
        })
    }

    /// Records an unpacked layer under `key` (the snapshotter chooses the key, e.g. a chain id).
    pub fn put_unpacked(&self, key: &str, record: &UnpackedLayer) -> Result<(), StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            {
                let mut t = txn.open_table(UNPACKED).db(path)?;
                t.insert(key, encode(record).as_slice()).db(path)?;
            }
            txn.commit().db(path)
        })
    }

    /// The unpacked-layer record under `key`.
    pub fn get_unpacked(&self, key: &str) -> Result<Option<UnpackedLayer>, StoreError> {
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let t = txn.open_table(UNPACKED).db(path)?;
            match t.get(key).db(path)? {
                Some(v) => Ok(Some(decode("unpacked", key, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Every unpacked-layer record with its key.
    pub fn list_unpacked(&self) -> Result<Vec<(String, UnpackedLayer)>, StoreError> {
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let t = txn.open_table(UNPACKED).db(path)?;
            let mut out = Vec::new();
            for entry in t.iter().db(path)? {
                let (k, v) = entry.db(path)?;
                out.push((
                    k.value().to_string(),
                    decode("unpacked", k.value(), v.value())?,
                ));
            }
            Ok(out)
        })
    }

    /// Removes an unpacked-layer record; returns whether it existed.
    pub fn remove_unpacked(&self, key: &str) -> Result<bool, StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            let existed = {
                let mut t = txn.open_table(UNPACKED).db(path)?;
                t.remove(key).db(path)?.is_some()
            };
            txn.commit().db(path)?;
            Ok(existed)
        })
    }

    /// Every root of `kind` (`"image"`, `"build-cache"`, ...) by name, with the blobs it holds.
    pub fn roots(&self, kind: &str) -> Result<Vec<(String, Vec<Digest>)>, StoreError> {
        let prefix = root_key(kind, "");
        self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let mut out = Vec::new();
            for entry in txn.open_table(ROOTS).db(path)?.iter().db(path)? {
                let (k, v) = entry.db(path)?;
                if let Some(name) = k.value().strip_prefix(prefix.as_str()) {
                    out.push((name.to_string(), decode("roots", k.value(), v.value())?));
                }
            }
            Ok(out)
        })
    }

    /// Deletes a blob file whatever holds it (for a blob that is corrupt); returns its size, or
    /// `None` when it was not there.
    pub fn remove_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let _exclusive = lock_file(&self.store_lock, LockMode::Exclusive)?;
        let path = self.blob_path(digest);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat blob", &path)(e)),
        };
        fs::remove_file(&path).map_err(io_err("remove blob", &path))?;
        Ok(Some(size))
    }

    /// The repair half of [`Store::check`]: drops every root (and, for an image root, the image
    /// record) that holds one of `lost` (blobs missing or removed as corrupt), then recomputes the
    /// reference counts from the roots left. Returns the dropped roots as `(kind, name)`.
    pub fn drop_roots_holding(
        &self,
        lost: &BTreeSet<Digest>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with_db(|db, path| {
            let txn = begin(db, path)?;
            let mut dropped = Vec::new();
            {
                let mut roots = txn.open_table(ROOTS).db(path)?;
                let mut images = txn.open_table(IMAGES).db(path)?;
                let mut keep: BTreeMap<Digest, u64> = BTreeMap::new();
                let mut gone = Vec::new();
                for entry in roots.iter().db(path)? {
                    let (k, v) = entry.db(path)?;
                    let digests: Vec<Digest> = decode("roots", k.value(), v.value())?;
                    if digests.iter().any(|d| lost.contains(d)) {
                        gone.push(k.value().to_string());
                    } else {
                        for d in digests {
                            *keep.entry(d).or_default() += 1;
                        }
                    }
                }
                for key in gone {
                    roots.remove(key.as_str()).db(path)?;
                    let (kind, name) = key.split_once('\n').unwrap_or(("", key.as_str()));
                    if kind == IMAGE_ROOT {
                        images.remove(name).db(path)?;
                    }
                    dropped.push((kind.to_string(), name.to_string()));
                }
                txn.delete_table(REFCOUNTS).db(path)?;
                let mut counts = txn.open_table(REFCOUNTS).db(path)?;
                for (d, n) in keep {
                    counts.insert(d.to_string().as_str(), n).db(path)?;
                }
            }
            txn.commit().db(path)?;
            Ok(dropped)
        })
    }

    /// Removes blobs nothing needs, within `policy`. Waits for running sessions and ingests to
    /// finish and keeps new ones out meanwhile, so a blob pulled but not yet recorded is safe.
    pub fn prune(&self, policy: &PrunePolicy) -> Result<PruneReport, StoreError> {
        let _exclusive = lock_file(&self.store_lock, LockMode::Exclusive)?;
        let now = unix_now();
        let (held, expired_leases) = self.with_db(|db, path| {
            let txn = begin(db, path)?;
            let mut held = BTreeSet::new();
            let mut expired = Vec::new();
            {
                let counts = txn.open_table(REFCOUNTS).db(path)?;
                for entry in counts.iter().db(path)? {
                    let (k, v) = entry.db(path)?;
                    if v.value() > 0
                        && let Ok(d) = k.value().parse::<Digest>()
                    {
                        held.insert(d);
                    }
                }
                let mut leases = txn.open_table(LEASES).db(path)?;
                for entry in leases.iter().db(path)? {
                    let (k, v) = entry.db(path)?;
                    let lease: Lease = decode("leases", k.value(), v.value())?;
                    if lease.expires_unix.is_some_and(|t| t <= now) {
                        expired.push(lease.id);
                    } else {
                        held.extend(lease.digests);
                    }
                }
                for id in &expired {
                    leases.remove(id.as_str()).db(path)?;
                }
            }
            txn.commit().db(path)?;
            Ok((held, expired))
        })?;

        let blobs = self.list_blobs()?;
        let mut total: u64 = blobs.iter().map(|(_, size, _)| size).sum();
        let cutoff = policy.older_than.map(|age| {
            SystemTime::now()
                .checked_sub(age)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let mut candidates: Vec<&(Digest, u64, SystemTime)> = blobs
            .iter()
            .filter(|(d, _, mtime)| !held.contains(d) && cutoff.is_none_or(|c| *mtime <= c))
            .collect();
        // Oldest first, so a byte budget keeps what was used most recently.
        candidates.sort_by_key(|(d, _, mtime)| (*mtime, d.clone()));

        let mut report = PruneReport {
            expired_leases,
            ..PruneReport::default()
        };
        for (digest, size, _) in candidates {
            if policy.keep_bytes.is_some_and(|keep| total <= keep) {
                break;
            }
            let path = self.blob_path(digest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("remove blob", &path)(e)),
            }
            total -= size;
            report.freed_bytes += size;
            report.removed.push(digest.clone());
        }
        if !report.removed.is_empty() {
            super::fsync_dir(&self.blobs)?;
        }
        self.clean_ingest()?;
        report.kept_blobs = blobs.len() - report.removed.len();
        report.kept_bytes = total;
        Ok(report)
    }

    /// Hashes every blob against its name, looks for blobs that roots reference but the store lacks,
    /// and recomputes reference counts from the roots. For tests and `forge doctor`-style checks.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let (roots, counts) = self.with_db_read(|db, path| {
            let txn = db.begin_read().db(path)?;
            let mut roots = Vec::new();
            for entry in txn.open_table(ROOTS).db(path)?.iter().db(path)? {
                let (k, v) = entry.db(path)?;
                roots.push(decode::<Vec<Digest>>("roots", k.value(), v.value())?);
            }
            let mut counts = BTreeMap::new();
            for entry in txn.open_table(REFCOUNTS).db(path)?.iter().db(path)? {
                let (k, v) = entry.db(path)?;
                let d: Digest =
                    k.value()
                        .parse()
                        .map_err(|e: super::DigestError| StoreError::Record {
                            table: "refcounts",
                            key: k.value().to_string(),
                            message: e.to_string(),
                        })?;
                counts.insert(d, v.value());
            }
            Ok((roots, counts))
        })?;

        let mut report = CheckReport::default();
        let blobs = self.list_blobs()?;
        let present: BTreeSet<&Digest> = blobs.iter().map(|(d, _, _)| d).collect();
        for (digest, _, _) in &blobs {
            let path = self.blob_path(digest);
            let mut file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open blob", &path)(e)),
            };
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(io_err("read blob", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let actual = Digest::from_hasher(hasher);
            if actual != *digest {
                report.corrupt.push((digest.clone(), actual));
            }
            report.blobs += 1;
        }

        let mut recomputed: BTreeMap<Digest, u64> = BTreeMap::new();
        for root in &roots {
            for d in root {
                *recomputed.entry(d.clone()).or_default() += 1;
                if !present.contains(d) && !report.missing.contains(d) {
                    report.missing.push(d.clone());
                }
            }
        }
        let keys: BTreeSet<&Digest> = recomputed.keys().chain(counts.keys()).collect();
        for d in keys {
            let stored = counts.get(d).copied().unwrap_or(0);
            let want = recomputed.get(d).copied().unwrap_or(0);
            if stored != want {
                report.bad_refcounts.push((d.clone(), stored, want));
            }
        }
        Ok(report)
    }
}
