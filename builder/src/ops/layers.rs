//! How a step's layer is kept: the plan that says which layers leave the store and how they are
//! compressed (and sent, when the image is pushed), the writing of a snapshot's changes into a
//! blob, and the snapshots made back from blobs when a step needs a filesystem.

use std::io::BufWriter;
use std::sync::Arc;

use forge_snapshotter::compress::Compression;
use forge_snapshotter::layer::{LayerOptions, chain_id, chain_id_step};
use forge_snapshotter::registry::Reported;
use forge_snapshotter::snapshot::{AnySnapshotter, Snapshotter, unpack_layer_snapshot};
use forge_snapshotter::store::{Digest as BlobDigest, Store};
use forge_snapshotter::writeback::Writeback;
use oci_spec::image::Digest;

use super::upload::LayerUploads;
use super::{ExecError, Layer, Mtimes, RemoteBlobs, blocking, io_err};
use crate::graph::VertexId;

/// How the layers a build makes are written: those that can leave the store (pushed, exported,
/// sent to a cache, or recorded as an image) as blobs in the compression asked for; the rest
/// (a builder stage's steps) not at all. Their committed snapshot is what later steps and builds
/// read, so the step after them does not wait for a tar to be made, hashed, compressed and synced
/// (BuildKit's lazy refs); [`write_unwritten`] makes the blob if an export or a merge ever needs
/// one.
#[derive(Clone, Default)]
pub struct LayerPlan {
    pub leaving: LayerOptions,
    /// The vertices whose layers can leave; `None`: every vertex's.
    pub leaves: Option<std::collections::HashSet<VertexId>>,
    /// Where the layers of `leaves` are sent while they are written (the image is pushed);
    /// `None`: they stay in the store until the push after the build.
    pub uploads: Option<Arc<LayerUploads>>,
}

/// The compression of blobs only forge reads back (a builder stage's layers written for the store
/// itself or for a cache): the fastest zstd, since nobody else has to decode them.
pub const OWN_COMPRESSION: Compression = Compression::Zstd { level: 1 };

/// How one step's layer is kept.
#[derive(Clone)]
pub enum StepLayer {
    /// As a blob in the store, written with these options, and sent to the registry while it is
    /// written when the image it is part of is pushed.
    Blob(LayerOptions, Option<Arc<LayerUploads>>),
    /// Only as the committed snapshot: no tar is made at all (the commit costs no read of what the
    /// step wrote), until something asks for the layer (and says with which SOURCE_DATE_EPOCH).
    SnapshotOnly,
}

impl LayerPlan {
    /// Every layer written alike.
    pub fn uniform(options: LayerOptions) -> LayerPlan {
        LayerPlan {
            leaving: options,
            leaves: None,
            uploads: None,
        }
    }

    pub fn for_vertex(&self, id: &VertexId) -> StepLayer {
        match &self.leaves {
            Some(leaves) if !leaves.contains(id) => StepLayer::SnapshotOnly,
            // Only a known chain's layers are sent early: with `leaves` unknown, every step's
            // layer is a blob, and most would never be part of the image pushed.
            Some(_) => StepLayer::Blob(self.leaving, self.uploads.clone()),
            None => StepLayer::Blob(self.leaving, None),
        }
    }
}

/// [`BuildExecutor::ensure_snapshot`] for any holder of a store and its snapshots (a session
/// starting a service container).
pub(crate) async fn ensure_snapshot_in(
    snapshots: &Arc<AnySnapshotter>,
    store: &Store,
    remote: Option<&RemoteBlobs>,
    layers: &[Layer],
) -> Result<Option<String>, ExecError> {
    let Some(top) = chain_id(layers.iter().map(|l| &l.diff_id)) else {
        return Ok(None);
    };
    let top = top.to_string();
    if snapshots.stat(&top).is_ok() {
        return Ok(Some(top));
    }
    // Only the layers whose snapshots are missing are read, so only theirs are fetched.
    if let Some(remote) = remote {
        let wanted: Vec<BlobDigest> = chain_steps(layers)
            .filter(|step| snapshots.stat(step.name.as_ref()).is_err())
            .map(|step| step.layer.digest.clone())
            .collect();
        remote.ensure(store, &wanted).await?;
    }
    let sn = snapshots.clone();
    let store = store.clone();
    let layers = layers.to_vec();
    blocking(move || {
        for ChainStep {
            parent,
            name,
            layer: l,
        } in chain_steps(&layers)
        {
            if sn.stat(name.as_ref()).is_err() {
                if l.unwritten.is_some() {
                    return Err(snapshot_gone(l, &name));
                }
                let blob = store.open_blob(&l.digest)?;
                unpack_layer_snapshot(
                    sn.as_ref(),
                    parent.as_ref(),
                    &l.diff_id,
                    std::io::BufReader::with_capacity(256 * 1024, blob),
                    &l.media_type,
                )?;
            }
        }
        Ok(Some(top))
    })
    .await
}

/// Diffs the snapshot `key` (active and unmounted, or committed) into a new blob in the store.
pub(super) fn diff_to_blob(
    sn: &AnySnapshotter,
    store: &Store,
    key: &str,
    options: LayerOptions,
    upload: Option<&LayerUploads>,
) -> Result<Layer, ExecError> {
    let tmp = store.temp_path("layer")?;
    // Readable too: an upload that follows the layer reads it through a copy of this descriptor.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    let (writer, started) = match upload {
        Some(u) => u.start(file),
        None => (Reported::unfollowed(Writeback::new(file)), None),
    };
    let sink = BufWriter::with_capacity(256 * 1024, writer);
    let diffed = sn.diff(key, sink, options);
    let (desc, sink, _stats) = match diffed {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    sink.into_inner()
        .map_err(|e| ExecError::Io {
            what: "writing layer",
            path: tmp.to_path_buf(),
            source: e.into_error(),
        })?
        .complete()
        .map_err(io_err("writing layer", &tmp))?;
    // Closed unsynced: `adopt` syncs it before giving it its name.
    let blob = blob_digest(&desc.digest)?;
    store.adopt(&tmp, &blob, desc.size)?;
    if let (Some(u), Some(s)) = (upload, started) {
        u.written(s, blob.clone());
    }
    Ok(Layer {
        media_type: desc.media_type,
        digest: blob,
        size: desc.size,
        diff_id: desc.diff_id,
        source: None,
        unwritten: None,
        created: None,
        mtimes: Some(Mtimes {
            clamped_to: options.source_date_epoch,
        }),
    })
}

pub(super) fn blob_digest(d: &Digest) -> Result<BlobDigest, ExecError> {
    d.to_string()
        .parse()
        .map_err(|e| ExecError::Internal(format!("layer digest: {e}")))
}

/// The stand-in diff_id of a layer kept only as a snapshot: unique to the scratch snapshot `key`
/// (which carries the build's random id and a counter) and to the moment, and marked so that it
/// can never equal the hash of a tar.
pub(super) fn unwritten_name(key: &str) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"forge: a layer kept only as its snapshot\0");
    h.update(key.as_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes(),
    );
    forge_snapshotter::compress::sha256_digest(h.finalize().as_slice())
}

/// The snapshot names (chain ids) of the unwritten layers of `layers`: while each exists, so does
/// the layer.
pub fn unwritten_snapshots(layers: &[Layer]) -> Vec<String> {
    chain_steps(layers)
        .filter(|step| step.layer.unwritten.is_some())
        .map(|step| step.name.to_string())
        .collect()
}

/// One layer of a list with the committed snapshot it makes: `name` is the chain id of the
/// layers up to it, `parent` the one before (none for the first).
struct ChainStep<'a> {
    parent: Option<Digest>,
    name: Digest,
    layer: &'a Layer,
}

/// Walks `layers` base first, naming each one's snapshot.
fn chain_steps(layers: &[Layer]) -> impl Iterator<Item = ChainStep<'_>> {
    layers.iter().scan(None::<Digest>, |parent, layer| {
        let name = chain_id_step(parent.as_ref(), &layer.diff_id);
        let step = ChainStep {
            parent: parent.replace(name.clone()),
            name,
            layer,
        };
        Some(step)
    })
}

/// The error for a layer kept only as snapshot `name` when that snapshot is gone.
fn snapshot_gone(l: &Layer, name: &Digest) -> ExecError {
    ExecError::Internal(format!(
        "layer {} was kept only as snapshot {name}, which is gone; build again (the step runs \
         again)",
        l.diff_id
    ))
}

/// `layers` with a blob for every one: each unwritten layer is diffed from its committed snapshot
/// (read-only since its commit; the walk is ordered, so the tar is the one the step would have
/// written) into the store with `options` (the SOURCE_DATE_EPOCH of the build asking, whatever
/// the build that ran the step had: the snapshot holds the files' own times), and gets its real
/// diff_id. The snapshots keep their names; the list returned names other chains, which are
/// unpacked from the blobs where needed. Layers with a blob are returned as they are.
pub async fn write_unwritten(
    snapshots: &Arc<AnySnapshotter>,
    store: &Store,
    layers: &[Layer],
    options: LayerOptions,
) -> Result<Vec<Layer>, ExecError> {
    write_unwritten_named(snapshots, store, layers, layers, options).await
}

/// [`write_unwritten`] for `layers` whose snapshots are named by `named`, the same list as a
/// build that writes layers behind it still names them (stand-ins where `layers` has the written
/// layers).
pub(crate) async fn write_unwritten_named(
    snapshots: &Arc<AnySnapshotter>,
    store: &Store,
    named: &[Layer],
    layers: &[Layer],
    options: LayerOptions,
) -> Result<Vec<Layer>, ExecError> {
    if layers.iter().all(|l| l.unwritten.is_none()) {
        return Ok(layers.to_vec());
    }
    let (sn, store, named, layers) = (
        snapshots.clone(),
        store.clone(),
        named.to_vec(),
        layers.to_vec(),
    );
    blocking(move || {
        chain_steps(&named)
            .zip(&layers)
            .map(|(ChainStep { name, .. }, l)| {
                if l.unwritten.is_none() {
                    return Ok(l.clone());
                }
                if sn.stat(name.as_ref()).is_err() {
                    return Err(snapshot_gone(l, &name));
                }
                // The blob is made now; the layer was made when its step ran.
                let written = diff_to_blob(&sn, &store, name.as_ref(), options, None)?;
                Ok(Layer {
                    created: l.created.clone(),
                    ..written
                })
            })
            .collect()
    })
    .await
}

/// Layers written behind the build: a step whose layer leaves the store is committed as its
/// snapshot at once, under a stand-in name as a kept-only layer is, and its blob is written from
/// that committed snapshot on a thread of its own while the steps after it already run (BuildKit's
/// lazy refs keep layer creation off the critical path the same way). Until it is written the
/// build's lists carry the stand-in ([`Layer::unwritten`]), and the snapshots the build commits
/// are named by those lists; [`LayerWrites::settle`] swaps in the written layer, which is what the
/// cache records and the image gets. Once the build no longer uses the stand-in names,
/// [`LayerWrites::name_snapshots`] renames every snapshot it committed to the chain id of its
/// settled layers, where later builds (reading those records) look for it.
#[derive(Default)]
pub(crate) struct LayerWrites {
    /// By the stand-in diff_id.
    writes: std::sync::Mutex<std::collections::HashMap<Digest, Written>>,
    /// Every snapshot the build committed, with the layers it was named by.
    commits: std::sync::Mutex<Vec<Commit>>,
}

type Written =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<Layer, Arc<ExecError>>>>;

struct Commit {
    /// Its name: the chain id of `layers` as the build knew them.
    snapshot: String,
    /// Base first, its own last (stand-ins for those written behind).
    layers: Vec<Layer>,
}

impl LayerWrites {
    /// Notes that the build committed `snapshot`, named by the chain of `layers` (see
    /// [`LayerWrites::name_snapshots`]).
    pub(crate) fn committed(&self, snapshot: String, layers: Vec<Layer>) {
        lock(&self.commits).push(Commit { snapshot, layers });
    }

    /// Writes the layer of a committed snapshot behind the build; the build's lists name it by
    /// `stand_in` until then.
    pub(crate) fn start(
        &self,
        stand_in: &Layer,
        write: impl FnOnce() -> Result<Layer, ExecError> + Send + 'static,
    ) {
        use futures::FutureExt;
        let job = tokio::task::spawn_blocking(write);
        let written = async move {
            match job.await {
                Ok(Ok(layer)) => Ok(layer),
                Ok(Err(e)) => Err(Arc::new(e)),
                Err(e) => Err(Arc::new(ExecError::Internal(format!("worker thread: {e}")))),
            }
        }
        .boxed()
        .shared();
        lock(&self.writes).insert(stand_in.diff_id.clone(), written);
    }

    /// Whether any of `layers` is still a stand-in for a layer written behind.
    pub(crate) fn any_behind(&self, layers: &[Layer]) -> bool {
        let writes = lock(&self.writes);
        layers.iter().any(|l| writes.contains_key(&l.diff_id))
    }

    /// `layers` with every layer written behind swapped for the written one, once written.
    pub(crate) async fn settle(&self, layers: &[Layer]) -> Result<Vec<Layer>, ExecError> {
        let mut out = Vec::with_capacity(layers.len());
        for l in layers {
            let written = lock(&self.writes).get(&l.diff_id).cloned();
            out.push(match written {
                None => l.clone(),
                Some(w) => Layer {
                    created: l.created.clone(),
                    ..w.await.map_err(ExecError::LayerWrite)?
                },
            });
        }
        Ok(out)
    }

    /// Renames every snapshot the build committed to the chain id of its settled layers (the
    /// written layers for the stand-ins), where a build that reads them back from the cache looks
    /// for it. Only once nothing of this build names a stand-in any more: the end of the solve.
    /// A name that is taken (the same layers built before) takes this build's children instead.
    pub(crate) async fn name_snapshots(&self, snapshots: &AnySnapshotter) {
        let commits = std::mem::take(&mut *lock(&self.commits));
        let mut pairs = Vec::new();
        for c in commits {
            let Ok(layers) = self.settle(&c.layers).await else {
                continue;
            };
            let Some(name) = chain_id(layers.iter().map(|l| &l.diff_id)) else {
                continue;
            };
            if name.as_ref() != c.snapshot {
                pairs.push((c.snapshot, name.to_string()));
            }
        }
        // Best effort: a snapshot left under its first name is found by no later build, which
        // makes it again from the layers' blobs (or runs a kept-only layer's step again).
        let _ = snapshots.rename(&pairs);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
