//! The build cache outside the store: `--cache-to` writes the records of a build (and, when asked,
//! the contents of its cache mounts) to a registry or an OCI layout, `--cache-from` reads them
//! back on another machine. Import is lazy: the manifest and the record list are read before the
//! solve (two small requests); a blob they name is fetched only when a step needs its bytes
//! ([`RemoteBlobs`]). Nothing about an import can fail a build: a cache that is missing,
//! unreachable, refused or damaged is a warning and the steps run.

mod blobs;
pub mod format;
mod io;
mod mounts;
mod options;

use std::collections::HashMap;
use std::sync::Arc;

pub use blobs::{BlobSource, FetchError, RemoteBlobs};
pub use io::{CacheEntry, ExportInput, Exported, entries, export_cache, import_caches};
pub use mounts::{MountSeeds, export_mounts};
pub use options::{CacheExport, CacheImport, CacheLocation, CacheMode};

use crate::solver::{CacheError, CacheKey, CacheStore, KeyLock};

/// Records read from imported caches, by key; the first cache that has a key gives its record.
#[derive(Debug, Default)]
pub struct Imported {
    pub records: HashMap<CacheKey, Vec<u8>>,
    /// Contents of cache mounts by id, with where their blob is.
    pub mounts: HashMap<String, forge_snapshotter::store::Descriptor>,
}

/// The local cache with imported records behind it: a key the local cache lacks is looked up in
/// the imports. Writes go to the local cache only.
pub struct LayeredCache<C> {
    local: C,
    imported: Arc<Imported>,
}

impl<C: CacheStore> LayeredCache<C> {
    pub fn new(local: C, imported: Arc<Imported>) -> LayeredCache<C> {
        LayeredCache { local, imported }
    }
}

impl<C: CacheStore> CacheStore for LayeredCache<C> {
    fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        match self.local.get(key)? {
            Some(r) => Ok(Some(r)),
            None => Ok(self.imported.records.get(key).cloned()),
        }
    }

    fn put(&self, key: &CacheKey, record: &[u8]) -> Result<(), CacheError> {
        self.local.put(key, record)
    }

    fn lock(&self, key: &CacheKey) -> Result<KeyLock, CacheError> {
        self.local.lock(key)
    }
}
