//! Blobs a build may use without holding them: the layers of base images resolved without their
//! layers, and every blob an imported cache names. Each is fetched into the store, its digest
//! checked on the way in, only when something needs its bytes (a step's filesystem, an export);
//! a cache hit that is only pushed never fetches it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{BlobKind, RegistryClient};
use forge_snapshotter::store::{Descriptor, Digest, Store};

use crate::events::{BuildEvent, Events};
use forge_snapshotter::error_text::one_line;

/// Where a blob the store lacks can be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// A repository of a registry (`registry/repository`, tag ignored).
    Registry(Reference),
    /// An OCI image layout directory (`blobs/sha256/<hex>`).
    Layout(PathBuf),
}

impl std::fmt::Display for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::Registry(r) => f.write_str(&r.name()),
            BlobSource::Layout(dir) => write!(f, "{}", dir.display()),
        }
    }
}

#[derive(Debug, Clone)]
struct Known {
    desc: Descriptor,
    source: BlobSource,
}

/// Why a blob could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("blob {digest} is not in the store and no source for it is known")]
    Unknown { digest: Digest },
    #[error("blob {digest} from {source_name}: {reason}")]
    Failed {
        digest: Digest,
        source_name: String,
        reason: String,
    },
}

impl FetchError {
    pub fn digest(&self) -> &Digest {
        match self {
            FetchError::Unknown { digest } | FetchError::Failed { digest, .. } => digest,
        }
    }
}

/// The blobs known to be elsewhere, and what was learnt about them during the build.
pub struct RemoteBlobs {
    registry: Arc<RegistryClient>,
    events: Events,
    known: Mutex<HashMap<Digest, Known>>,
    /// Seen to exist at their source (a HEAD answered, or the layout has the file).
    present: Mutex<HashSet<Digest>>,
    /// Missing at their source or not what their digest says: never offered again.
    bad: Mutex<HashSet<Digest>>,
    /// Blobs and bytes fetched so far.
    fetched: Mutex<(u64, u64)>,
}

impl RemoteBlobs {
    pub fn new(registry: Arc<RegistryClient>, events: Events) -> RemoteBlobs {
        RemoteBlobs {
            registry,
            events,
            known: Mutex::default(),
            present: Mutex::default(),
            bad: Mutex::default(),
            fetched: Mutex::default(),
        }
    }

    /// Records that `desc` can be had from `source`. The first source given for a digest stays.
    pub fn add(&self, desc: Descriptor, source: BlobSource) {
        self.known
            .lock()
            .expect("not poisoned")
            .entry(desc.digest.clone())
            .or_insert(Known { desc, source });
    }

    /// Where `digest` would be fetched from, unless it proved bad.
    pub fn source_of(&self, digest: &Digest) -> Option<BlobSource> {
        if self.bad.lock().expect("not poisoned").contains(digest) {
            return None;
        }
        let known = self.known.lock().expect("not poisoned");
        known.get(digest).map(|k| k.source.clone())
    }

    /// Blobs and bytes fetched into the store so far.
    pub fn fetched(&self) -> (u64, u64) {
        *self.fetched.lock().expect("not poisoned")
    }

    /// Takes `digest` out: no record naming it is used in this build.
    pub fn mark_bad(&self, digest: &Digest) {
        self.bad
            .lock()
            .expect("not poisoned")
            .insert(digest.clone());
    }

    /// Whether `digest` is in `store` or can be fetched: its source is known and holds it (asked
    /// once per blob, with a HEAD request for a registry). A blob whose source does not hold it
    /// is marked bad, with a warning.
    pub async fn available(&self, store: &Store, digest: &Digest) -> bool {
        if store.has_blob(digest) {
            return true;
        }
        let Some(source) = self.source_of(digest) else {
            return false;
        };
        if self.present.lock().expect("not poisoned").contains(digest) {
            return true;
        }
        let found = match &source {
            BlobSource::Registry(repo) => self.registry.blob_exists(repo, digest).await,
            // A local cache's blob is taken into the store now, checked against its digest as it
            // is written: a damaged one (a flipped byte on disk) makes its steps run again here,
            // where found only when the image's layers are gathered it would fail the build. The
            // copy is one the build makes anyway when it keeps the layer.
            BlobSource::Layout(dir) if layout_blob(dir, digest).is_file() => {
                return self.fetch(store, digest).await.is_ok();
            }
            BlobSource::Layout(_) => Ok(false),
        };
        match found {
            Ok(true) => {
                self.present
                    .lock()
                    .expect("not poisoned")
                    .insert(digest.clone());
                true
            }
            Ok(false) => {
                self.events.emit(BuildEvent::Warning {
                    message: format!(
                        "cache: blob {digest} is missing from {source}; the steps that made it run again"
                    ),
                });
                self.mark_bad(digest);
                false
            }
            Err(e) => {
                self.events.emit(BuildEvent::Warning {
                    message: format!(
                        "cache: cannot check blob {digest} at {source} ({e}); the steps that made it run again"
                    ),
                });
                self.mark_bad(digest);
                false
            }
        }
    }

    /// Makes every blob of `digests` present in `store`, fetching the missing ones from their
    /// sources (several at once). A blob that cannot be had is marked bad, so no record naming it
    /// is used again in this build, and is the error.
    pub async fn ensure(&self, store: &Store, digests: &[Digest]) -> Result<(), FetchError> {
        let missing: Vec<&Digest> = {
            let mut seen = HashSet::new();
            digests
                .iter()
                .filter(|d| !store.has_blob(d) && seen.insert((*d).clone()))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let limit = self.registry.config().max_concurrent_downloads.max(1);
        let fetches: Vec<_> = missing.into_iter().map(|d| self.fetch(store, d)).collect();
        use futures::StreamExt;
        let mut running = futures::stream::iter(fetches).buffer_unordered(limit);
        let mut first_error = None;
        while let Some(r) = running.next().await {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    async fn fetch(&self, store: &Store, digest: &Digest) -> Result<(), FetchError> {
        let known = {
            let bad = self.bad.lock().expect("not poisoned").contains(digest);
            let known = self.known.lock().expect("not poisoned");
            match known.get(digest) {
                Some(k) if !bad => k.clone(),
                _ => {
                    return Err(FetchError::Unknown {
                        digest: digest.clone(),
                    });
                }
            }
        };
        let result = match &known.source {
            BlobSource::Registry(repo) => {
                let name = repo.name();
                let events = self.events.clone();
                let progress = move |event| {
                    events.emit(BuildEvent::Pull {
                        reference: name.clone(),
                        event,
                    })
                };
                self.registry
                    .fetch_blob(store, repo, &known.desc, BlobKind::Layer, &progress)
                    .await
                    .map(drop)
                    .map_err(|e| one_line(&e))
            }
            BlobSource::Layout(dir) => {
                let (store, path, digest, size) = (
                    store.clone(),
                    layout_blob(dir, digest),
                    digest.clone(),
                    known.desc.size,
                );
                tokio::task::spawn_blocking(move || {
                    let mut file = std::fs::File::open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    store
                        .write_blob_from(&mut file, &digest, Some(size))
                        .map_err(|e| one_line(&e))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        match result {
            Ok(()) => {
                let mut f = self.fetched.lock().expect("not poisoned");
                f.0 += 1;
                f.1 += known.desc.size;
                Ok(())
            }
            Err(reason) => {
                self.mark_bad(digest);
                self.events.emit(BuildEvent::Warning {
                    message: format!(
                        "cache: blob {digest} from {} cannot be used ({reason}); the steps that made it run again",
                        known.source
                    ),
                });
                Err(FetchError::Failed {
                    digest: digest.clone(),
                    source_name: known.source.to_string(),
                    reason,
                })
            }
        }
    }
}

/// Where an OCI layout keeps `digest`.
pub(crate) fn layout_blob(dir: &std::path::Path, digest: &Digest) -> PathBuf {
    let s = digest.to_string();
    let (algorithm, hex) = s.split_once(':').unwrap_or(("sha256", &s));
    dir.join("blobs").join(algorithm).join(hex)
}
