//! Operations: how each vertex of the graph is carried out (the solver's executor). A vertex's
//! result is the list of layers (blobs in the store) its filesystem is made of, and the committed
//! snapshot named by their chain id; a test step's is its exit status and a tar of the files it was
//! asked to hand over. Results stay meaningful across processes, so a cache record is just that; a
//! missing snapshot is rebuilt from the blobs. File operations run in process on mounted
//! snapshots, RUN steps go to the runner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use forge_runner::backend::Backend;
use forge_runner::spec::NetworkMode as StepNetwork;
use forge_snapshotter::compress::Compression;
use forge_snapshotter::layer::{LayerOptions, chain_id, chain_id_step};
use forge_snapshotter::snapshot::{AnySnapshotter, Snapshotter};
use forge_snapshotter::store::{Digest as BlobDigest, Store};

use crate::cache_io::{MountSeeds, RemoteBlobs};
use crate::events::Events;
use crate::graph::{FileAction, Graph, NetworkMode, NodeRef, Op, SourceOp, Vertex, VertexId};
use crate::solver::{CancellationToken, ContentDigest, Executor};
use crate::source::BaseImage;
use crate::source::context::ContextSnapshot;

mod built;
mod error;
mod file;
mod files;
mod layers;
mod local;
mod mount;
mod run;
mod upload;

pub(crate) use built::now_rfc3339;
pub use built::{Artifacts, Built, Layer, Mtimes, TestLog, Unwritten};
pub use error::ExecError;
use error::io_err;
use files::{TestLogWriter, tar_artifacts};
pub(crate) use layers::ensure_snapshot_in;
pub use layers::{LayerPlan, OWN_COMPRESSION, StepLayer, unwritten_snapshots, write_unwritten};
use layers::{LayerWrites, blob_digest, diff_to_blob, unwritten_name, write_unwritten_named};
pub use mount::Mounted;
pub use upload::LayerUploads;

/// Starts what runs beside a step; the closure it returns stops it. It is handed the step's
/// cancellation: a cancelled run, or the job's timeout, ends a start that is still waiting (for a
/// service to be ready), and what it started is stopped.
pub type BesideStep = Arc<
    dyn Fn(
            tokio_util::sync::CancellationToken,
        ) -> futures::future::BoxFuture<'static, Result<StopBeside, String>>
        + Send
        + Sync,
>;
/// Stops what [`BesideStep`] started, and waits until it is gone.
pub type StopBeside = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// Laid on a test step's root filesystem when the step really runs (not when its verdict comes
/// from the cache), outside its key: a pipeline job's GitLab cache. `say` goes to the step's
/// output first.
#[derive(Debug, Clone)]
pub struct TestRestore {
    /// A plain tar in the store; `None`: nothing to lay (the line says why).
    pub layer: Option<forge_snapshotter::store::Descriptor>,
    pub say: String,
}

/// A local directory the graph names (the build context) and what of it the build may see.
#[derive(Debug, Clone)]
pub struct LocalDir {
    pub dir: PathBuf,
    /// Its entries after `.dockerignore`; the content digests COPY keys are made from.
    pub snapshot: Arc<ContextSnapshot>,
}

/// Fetches what `SourceOp::Http` names; the driver provides it.
pub trait RemoteFiles: Send + Sync {
    /// The content digest for the cache key: from the checksum when given (no download), else by
    /// fetching.
    fn key(
        &self,
        url: &str,
        checksum: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<ContentDigest, ExecError>>;
    /// Writes the file `filename` into `dir` (mode 0600, mtime from the server when it gave one).
    fn fetch_into<'a>(
        &'a self,
        url: &'a str,
        checksum: Option<&'a str>,
        dir: &'a Path,
        filename: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ExecError>>;
}

/// Everything the executor works with.
pub struct ExecutorConfig {
    pub store: Store,
    pub snapshots: Arc<AnySnapshotter>,
    pub runner: Arc<Backend>,
    /// Where mount points and temporary files go (removed at the end).
    /// The build's scratch space: mount points go under its `work()`, and scratch snapshot keys
    /// carry its id, so a build that died is told from a running one by its lock.
    pub scratch: Arc<crate::scratch::Scratch>,
    pub locals: HashMap<String, LocalDir>,
    /// By the reference as the graph writes it.
    pub images: HashMap<String, BaseImage>,
    pub secrets: HashMap<String, Vec<u8>>,
    /// Values masked in every step's output besides the secrets the step mounts: a pipeline's
    /// other secrets, which a job may receive in another job's artifacts or dotenv report.
    pub masked: Vec<Vec<u8>>,
    pub ssh: HashMap<String, PathBuf>,
    /// How each step's layer is written.
    pub layers: LayerPlan,
    /// `--network`: the mode of steps that do not choose one.
    pub default_network: StepNetwork,
    /// `--allow network.host`: a step may run on the host's network; without it such a step is
    /// refused (the build checks first, this is the executor's own guard).
    pub allow_network_host: bool,
    /// `--allow security.insecure`: a `RUN --security=insecure` step runs without the sandbox
    /// (forge_runner::Security::Insecure); without it such a step is refused.
    pub allow_insecure: bool,
    /// `--memory` / `--cpus`: every RUN step's limits. Not part of any cache key: a step that
    /// finishes within its limits makes the same files as one without them.
    pub limits: forge_runner::Limits,
    pub http: Option<Arc<dyn RemoteFiles>>,
    /// Variables added to every step's environment when it runs, after its own, and hashed into
    /// no cache key: a pipeline's build number and commit, which change with every run while the
    /// job's result does not depend on them.
    pub run_env: Vec<(String, String)>,
    /// A network namespace every step joins instead of making its own (a pipeline job and its
    /// services); `None` for the usual one per step.
    pub join_network: Option<forge_runner::SharedNetwork>,
    /// Started before every step that runs (not one served from the cache) and stopped after
    /// it, whatever its end: a pipeline job's services. An error fails the step with its text.
    pub beside_step: Option<BesideStep>,
    /// The build's predefined proxy arguments (`--build-arg HTTP_PROXY=...` and the rest), which
    /// reach RUN steps without an ARG and stay out of every key and the image (BuildKit's rule).
    pub proxy_args: Vec<(String, String)>,
    /// Blobs the store lacks but can fetch (layers of lazily resolved base images, an imported
    /// cache's blobs): a record naming them is usable, and they are fetched when a step needs
    /// the filesystem. `None`: every blob must be in the store.
    pub remote: Option<Arc<RemoteBlobs>>,
    /// Imported contents of cache mounts, laid down before the first step that mounts each.
    pub mount_seeds: Option<Arc<MountSeeds>>,
    /// Laid on every test step's root before it runs, in this order, hashed into no key.
    pub test_restore: Vec<TestRestore>,
    pub events: Events,
}

pub struct BuildExecutor {
    cfg: ExecutorConfig,
    nodes: HashMap<VertexId, NodeRef>,
    /// Numbers this build's scratch snapshot keys and mount points.
    seq: AtomicU64,
    /// The layers being written behind the steps after them.
    writes: LayerWrites,
    /// The layers of the images the build starts from (see [`Layer::mtimes_unknown`]).
    base_layers: std::collections::HashSet<BlobDigest>,
    /// Whether the build was told that records of an older forge are not used.
    told_unknown_mtimes: AtomicBool,
}

impl BuildExecutor {
    /// The layers of the images the build starts from (see [`Layer::mtimes_unknown`]).
    pub fn base_layers(&self) -> &std::collections::HashSet<BlobDigest> {
        &self.base_layers
    }

    pub fn new(cfg: ExecutorConfig, graph: &Graph) -> Result<Self, ExecError> {
        let work = cfg.scratch.work();
        std::fs::create_dir_all(&work).map_err(io_err("creating", &work))?;
        let mut nodes = HashMap::new();
        for (i, v) in graph.vertices.iter().enumerate() {
            nodes.entry(v.id).or_insert(NodeRef(i));
        }
        let base_layers = cfg
            .images
            .values()
            .flat_map(|i| i.record.layers.iter().map(|d| d.digest.clone()))
            .collect();
        let exec = BuildExecutor {
            base_layers,
            cfg,
            nodes,
            seq: AtomicU64::new(0),
            writes: LayerWrites::default(),
            told_unknown_mtimes: AtomicBool::new(false),
        };
        exec.remove_stale_snapshots();
        Ok(exec)
    }

    pub fn store(&self) -> &Store {
        &self.cfg.store
    }

    pub fn snapshots(&self) -> &Arc<AnySnapshotter> {
        &self.cfg.snapshots
    }

    /// Active snapshots a killed build left behind (no live build holds the lock of the id in their
    /// key) are removed, so their space comes back; a running build's, in this process or another,
    /// are left alone.
    fn remove_stale_snapshots(&self) {
        crate::scratch::remove_dead_scratch_snapshots(self.cfg.store.root(), &self.cfg.snapshots);
    }

    /// A name no other scratch snapshot or mount point has: the build's id and a counter.
    fn unique(&self, what: &str) -> String {
        format!(
            "build-{}-{}-{what}",
            self.cfg.scratch.id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Makes sure the committed snapshot for `layers` exists (unpacking missing layers from their
    /// blobs) and returns its name; `None` for no layers (scratch).
    pub async fn ensure_snapshot(&self, layers: &[Layer]) -> Result<Option<String>, ExecError> {
        ensure_snapshot_in(
            &self.cfg.snapshots,
            &self.cfg.store,
            self.cfg.remote.as_deref(),
            layers,
        )
        .await
    }

    /// Mounts the filesystem `built` read-only somewhere and returns where its root is.
    async fn mount_readonly(&self, built: &Built) -> Result<Mounted, ExecError> {
        match built {
            Built::Local { name } => {
                let local = self.local(name)?;
                Ok(Mounted::existing(local.dir.clone()))
            }
            Built::Fs { layers } => match self.ensure_snapshot(layers).await? {
                None => {
                    let dir = self.cfg.scratch.work().join(self.unique("scratch"));
                    std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
                    Ok(Mounted::owned_dir(dir))
                }
                Some(name) => {
                    let mounts = self.cfg.snapshots.mounts(&name)?;
                    let target = self.cfg.scratch.work().join(self.unique("ro"));
                    Mounted::mount(&mounts, target)
                }
            },
            Built::Test { .. } => Err(ExecError::Unsupported(
                "mounting a test step's result: it is not a filesystem".into(),
            )),
        }
    }

    /// Tars what the step left at `paths` in its root filesystem, the active snapshot `key`, into
    /// one blob in the store; `None` when none of them exists. The snapshot's mounts are asked for
    /// again: mounting it a second time needs what the snapshotter does first (a volatile overlay
    /// leaves a mark the kernel refuses to mount over).
    async fn take_artifacts(
        &self,
        key: &str,
        paths: &[String],
    ) -> Result<Option<Artifacts>, ExecError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mounts = self.cfg.snapshots.mounts(key)?;
        let root = Mounted::mount(
            &mounts,
            self.cfg.scratch.work().join(self.unique("artifacts")),
        )?;
        let dir = root.path().to_path_buf();
        let store = self.cfg.store.clone();
        let paths = paths.to_vec();
        let taken = blocking(move || tar_artifacts(&dir, &paths, &store)).await;
        drop(root);
        taken
    }

    /// The local directory (a build context) given under `name`.
    fn local(&self, name: &str) -> Result<&LocalDir, ExecError> {
        self.cfg
            .locals
            .get(name)
            .ok_or_else(|| ExecError::UnknownContext(name.to_string()))
    }

    /// Renames the snapshots this build committed to the chain ids of their written layers (see
    /// [`LayerWrites`]): call once the solve is over, whatever its end.
    pub async fn name_written_snapshots(&self) {
        self.writes.name_snapshots(&self.cfg.snapshots).await;
    }

    /// Commits the active snapshot `key` (on `parent`'s layers) under the chain id of a stand-in
    /// layer and returns the new layer list, whose last layer is that stand-in: the plan either
    /// keeps the layer as the snapshot alone, or has it written into a blob from the committed
    /// snapshot behind the build ([`LayerWrites`]).
    async fn commit_layer(
        &self,
        key: String,
        parent: &[Layer],
        how: StepLayer,
        cancel: &CancellationToken,
    ) -> Result<Vec<Layer>, ExecError> {
        if cancel.is_cancelled() {
            let _ = self.cfg.snapshots.remove(&key);
            return Err(ExecError::Cancelled);
        }
        let sn = self.cfg.snapshots.clone();
        let parent_chain = chain_id(parent.iter().map(|l| &l.diff_id));
        let k = key.clone();
        let result = blocking(move || {
            let stand_in = unwritten_name(&k);
            let layer = Layer {
                media_type: Compression::None.media_type().to_string(),
                digest: blob_digest(&stand_in)?,
                size: 0,
                diff_id: stand_in,
                source: None,
                unwritten: Some(Unwritten {}),
                created: Some(now_rfc3339()),
                mtimes: None,
            };
            let name = chain_id_step(parent_chain.as_ref(), &layer.diff_id);
            sn.commit(name.as_ref(), &k)?;
            Ok((layer, name.to_string()))
        })
        .await;
        match result {
            Ok((layer, name)) => {
                if let StepLayer::Blob(options, upload) = how {
                    let (sn, store, snapshot) = (
                        self.cfg.snapshots.clone(),
                        self.cfg.store.clone(),
                        name.clone(),
                    );
                    self.writes.start(&layer, move || {
                        diff_to_blob(&sn, &store, &snapshot, options, upload.as_deref())
                    });
                }
                let mut layers = parent.to_vec();
                layers.push(layer);
                self.writes.committed(name, layers.clone());
                Ok(layers)
            }
            Err(e) => {
                let _ = self.cfg.snapshots.remove(&key);
                Err(e)
            }
        }
    }

    async fn exec_http(
        &self,
        id: &VertexId,
        url: &str,
        filename: &str,
        checksum: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Built, ExecError> {
        let http = self
            .cfg
            .http
            .as_ref()
            .ok_or_else(|| ExecError::Unsupported("ADD of a URL is not available".into()))?;
        let key = self.unique("http");
        let mounts = self.cfg.snapshots.prepare(&key, None)?;
        let fetched = async {
            let dest = Mounted::mount(&mounts, self.cfg.scratch.work().join(self.unique("http")))?;
            http.fetch_into(url, checksum, dest.path(), filename).await
        }
        .await;
        if let Err(e) = fetched {
            let _ = self.cfg.snapshots.remove(&key);
            return Err(e);
        }
        let how = self.cfg.layers.for_vertex(id);
        let layers = self.commit_layer(key, &[], how, cancel).await?;
        Ok(Built::Fs { layers })
    }
}

impl Executor for BuildExecutor {
    type Output = Built;
    type Error = ExecError;

    /// A layer written behind the build is waited for here: the cache records, and the image
    /// gets, the written layer.
    fn settle(
        &self,
        output: &Built,
    ) -> Option<impl Future<Output = Result<Built, ExecError>> + Send> {
        let Built::Fs { layers } = output else {
            return None;
        };
        if !self.writes.any_behind(layers) {
            return None;
        }
        let layers = layers.clone();
        Some(async move {
            Ok(Built::Fs {
                layers: self.writes.settle(&layers).await?,
            })
        })
    }

    /// A record whose blobs are gone (a prune, a store repaired by hand) is a miss: the step runs
    /// again instead of a later step or the push failing on the missing blob.
    async fn usable(&self, output: &Built) -> bool {
        // A failed test verdict is never served from the cache: the failure may have been the
        // machine's (a flaky service, a full disk), and a rerun is what a user asks for.
        if matches!(output, Built::Test { exit_code, .. } if *exit_code != 0) {
            return false;
        }
        // A layer from an older forge's record may be clamped to any epoch, and cannot be
        // re-stamped to this build's: the step runs again rather than give a wrong image.
        if self.cfg.layers.leaving.source_date_epoch.is_some()
            && let Built::Fs { layers } = output
            && layers.iter().any(|l| l.mtimes_unknown(&self.base_layers))
        {
            if !self.told_unknown_mtimes.swap(true, Ordering::Relaxed) {
                self.cfg.events.emit(crate::events::BuildEvent::Warning {
                    message: "cache: records written by an older forge do not say which \
                              SOURCE_DATE_EPOCH their layers were made with; their steps run \
                              again, once"
                        .into(),
                });
            }
            return false;
        }
        // Nor to or from an epoch before 1970 (a rare SOURCE_DATE_EPOCH, written with PAX times).
        if let Some(epoch) = self.cfg.layers.leaving.source_date_epoch
            && let Built::Fs { layers } = output
            && layers.iter().any(|l| l.restamp_impossible(epoch))
        {
            return false;
        }
        // A layer kept only as its snapshot is there while the snapshot is (a prune keeps it while
        // this record lives; `forge store repair` may have removed it).
        if let Built::Fs { layers } = output
            && unwritten_snapshots(layers)
                .iter()
                .any(|name| self.cfg.snapshots.stat(name).is_err())
        {
            return false;
        }
        for d in output.blobs() {
            let here = match &self.cfg.remote {
                Some(remote) => remote.available(&self.cfg.store, &d).await,
                None => self.cfg.store.has_blob(&d),
            };
            if !here {
                return false;
            }
        }
        true
    }

    /// A blob that could not be fetched belongs to the inputs that name it: they run again.
    fn lost_inputs(&self, error: &ExecError, inputs: &[Built]) -> Vec<usize> {
        let ExecError::Blob(e) = error else {
            return Vec::new();
        };
        inputs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.blobs().contains(e.digest()))
            .map(|(i, _)| i)
            .collect()
    }

    async fn cache_inputs(
        &self,
        vertex: &Vertex,
        inputs: &[Built],
    ) -> Result<Option<ContentDigest>, ExecError> {
        match &vertex.op {
            Op::Source(SourceOp::Image { reference, .. }) => {
                let image = self
                    .cfg
                    .images
                    .get(reference)
                    .ok_or_else(|| ExecError::UnresolvedImage(reference.clone()))?;
                Ok(Some(
                    *blake3::hash(image.record.manifest.digest.to_string().as_bytes()).as_bytes(),
                ))
            }
            Op::Source(SourceOp::Http { url, checksum, .. }) => {
                let http = self.cfg.http.as_ref().ok_or_else(|| {
                    ExecError::Unsupported("ADD of a URL is not available".into())
                })?;
                Ok(Some(http.key(url, checksum.as_deref()).await?))
            }
            Op::File(f) => {
                // COPY from the local context: only the selected paths' content counts.
                let refs = vertex.op.inputs();
                let mut h = blake3::Hasher::new();
                let mut any = false;
                for a in &f.actions {
                    let FileAction::Copy {
                        from: Some(r), src, ..
                    } = a
                    else {
                        continue;
                    };
                    let Some(Built::Local { name }) =
                        refs.iter().position(|x| x == r).and_then(|i| inputs.get(i))
                    else {
                        continue;
                    };
                    let local = self.local(name)?;
                    let d = local.snapshot.hash_selection(&[src.as_str()])?;
                    h.update(src.as_bytes());
                    h.update(d.as_bytes());
                    any = true;
                }
                Ok(any.then(|| *h.finalize().as_bytes()))
            }
            Op::Exec(e) => {
                // A bind of the local context is read in place: the content of what it binds
                // keys the step (the whole context for a bind of its root). Inputs come in the
                // order of the mounts that have one.
                let mut h = blake3::Hasher::new();
                let mut any = false;
                let with_input = e.mounts.iter().filter(|m| {
                    matches!(
                        m.kind,
                        crate::graph::MountKind::Bind { input: Some(_), .. }
                            | crate::graph::MountKind::Cache { input: Some(_), .. }
                    )
                });
                for (m, b) in with_input.zip(inputs) {
                    let Built::Local { name } = b else { continue };
                    let local = self.local(name)?;
                    match &m.kind {
                        // A path the context lacks fails the step when it mounts; its key is
                        // then the whole context's.
                        crate::graph::MountKind::Bind { source_path, .. } => {
                            match local.snapshot.hash_selection(&[source_path.as_str()]) {
                                Ok(d) => {
                                    h.update(b"bind:");
                                    h.update(source_path.as_bytes());
                                    h.update(d.as_bytes());
                                }
                                Err(_) => {
                                    h.update(local.snapshot.digest().as_bytes());
                                }
                            }
                        }
                        _ => {
                            h.update(local.snapshot.digest().as_bytes());
                        }
                    }
                    any = true;
                }
                // A step that leaves its network to the build (`--network`) is keyed by the one it
                // gets, as BuildKit keys an ExecOp by its network: a hermetic `--network none`
                // build must not take results made with the host's network.
                if e.network == NetworkMode::Default {
                    h.update(match self.cfg.default_network {
                        StepNetwork::Sandbox => b"network:sandbox".as_slice(),
                        StepNetwork::Host => b"network:host",
                        StepNetwork::None => b"network:none",
                    });
                    any = true;
                }
                Ok(any.then(|| *h.finalize().as_bytes()))
            }
            // No other op reads a context today; one that did would be keyed by all of it, since
            // a context source's key holds none of its content.
            _ => {
                let mut h = blake3::Hasher::new();
                let mut any = false;
                for b in inputs {
                    if let Built::Local { name } = b {
                        let local = self.local(name)?;
                        h.update(local.snapshot.digest().as_bytes());
                        any = true;
                    }
                }
                Ok(any.then(|| *h.finalize().as_bytes()))
            }
        }
    }

    async fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[Built],
        cancel: CancellationToken,
    ) -> Result<Built, ExecError> {
        match &vertex.op {
            Op::Source(SourceOp::Scratch) => Ok(Built::Fs { layers: Vec::new() }),
            Op::Source(SourceOp::Image { reference, .. }) => {
                let image = self
                    .cfg
                    .images
                    .get(reference)
                    .ok_or_else(|| ExecError::UnresolvedImage(reference.clone()))?;
                Ok(Built::Fs {
                    layers: image.layers(),
                })
            }
            Op::Source(SourceOp::Local { name, .. }) => {
                if !self.cfg.locals.contains_key(name) {
                    return Err(ExecError::UnknownContext(name.clone()));
                }
                Ok(Built::Local { name: name.clone() })
            }
            Op::Source(SourceOp::Http {
                url,
                filename,
                checksum,
            }) => {
                self.exec_http(&vertex.id, url, filename, checksum.as_deref(), &cancel)
                    .await
            }
            Op::Source(SourceOp::Git { remote, .. }) => Err(ExecError::Unsupported(format!(
                "ADD of a git repository ({remote}) is not supported yet"
            ))),
            Op::Exec(e) => self.exec_run(vertex, e, inputs, &cancel).await,
            Op::File(f) => {
                self.exec_file(vertex, f, &vertex.op.inputs(), inputs, &cancel)
                    .await
            }
            Op::Merge(m) => {
                let mut layers = Vec::new();
                let mut it = inputs.iter();
                for input in &m.inputs {
                    if input.is_none() {
                        continue;
                    }
                    let b = it
                        .next()
                        .ok_or_else(|| ExecError::Internal("merge input missing".into()))?;
                    let part = b.layers().ok_or_else(|| {
                        ExecError::Unsupported("merging a local directory".into())
                    })?;
                    // On another parent a layer's snapshot is another one, made from its blob:
                    // layers written behind are waited for, those kept only as snapshots written.
                    let settled = self.writes.settle(part).await?;
                    let part = write_unwritten_named(
                        &self.cfg.snapshots,
                        &self.cfg.store,
                        part,
                        &settled,
                        LayerOptions {
                            compression: OWN_COMPRESSION,
                            source_date_epoch: self.cfg.layers.leaving.source_date_epoch,
                        },
                    )
                    .await?;
                    layers.extend(part);
                }
                Ok(Built::Fs { layers })
            }
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExecError> + Send + 'static,
) -> Result<T, ExecError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExecError::Internal(format!("worker thread: {e}")))?
}
