//! `forge build` end to end: resolves base images, lowers the Dockerfile, solves the graph with an
//! executor that runs on snapshots (file operations in process, RUN through the runner), turns the
//! result into layers and an image, and exports or pushes it. Progress flows out as [`BuildEvent`]s.

pub mod events;
pub mod executor;
pub mod http;
pub mod image;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    BlobKind, PullError, PushBlob, PushError, PushImage, RegistryClient,
};
use forge_snapshotter::snapshot::{AnySnapshotter, SnapshotError};
use forge_snapshotter::store::{Descriptor, Digest as BlobDigest, ImageRecord, Store, StoreError};
use oci_spec::image::{Digest, MediaType};
use tokio::sync::mpsc::UnboundedSender;

pub use events::{BuildEvent, OutputStream};
pub use executor::{BaseImage, BuildExecutor, Built, ExecError, ExecutorConfig, Layer, LocalDir};

use crate::export::{ExportError, Image, ImageOptions, LayerBlob};
use crate::frontend::dockerfile::ast::Dockerfile;
use crate::frontend::dockerfile::lower::{ImageResolver, LowerError, LowerOptions, Lowered, lower};
use crate::graph::{Graph, ImageConfig, Output, Platform};
use crate::solver::{CacheError, CacheStore, Event, Solution, SolveError, SolveOptions, Solver};

/// Why a build stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A Dockerfile error; the caller renders it with the file's text.
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error("base image {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: Box<PullError>,
    },
    #[error("base image {reference}: {reason}")]
    BaseImage { reference: String, reason: String },
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("pushing {tags}: {source}")]
    Push {
        tags: String,
        #[source]
        source: Box<PushError>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What a build talks to.
#[derive(Clone)]
pub struct Session {
    pub store: Store,
    pub snapshots: Arc<AnySnapshotter>,
    pub registry: Arc<RegistryClient>,
    pub events: Option<UnboundedSender<BuildEvent>>,
}

impl Session {
    fn emit(&self, ev: BuildEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    /// Runs `f` as a named phase, reporting its start and end.
    pub async fn phase<T, F: std::future::Future<Output = T>>(&self, name: &str, f: F) -> T {
        phase(self.events.as_ref(), name, f).await
    }
}

/// Runs `f` as the phase `name`, reporting its start and end on `events`.
async fn phase<T>(
    events: Option<&UnboundedSender<BuildEvent>>,
    name: &str,
    f: impl std::future::Future<Output = T>,
) -> T {
    let emit = |ev| {
        if let Some(tx) = events {
            let _ = tx.send(ev);
        }
    };
    emit(BuildEvent::PhaseStarted { name: name.into() });
    let start = Instant::now();
    let out = f.await;
    emit(BuildEvent::PhaseDone {
        name: name.into(),
        duration: start.elapsed(),
    });
    out
}

/// Base images the build reads, by the reference as the Dockerfile writes it.
#[derive(Default)]
pub struct BaseImages {
    pub images: HashMap<String, BaseImage>,
    configs: HashMap<String, ImageConfig>,
    missing: Mutex<BTreeSet<String>>,
}

impl ImageResolver for BaseImages {
    fn resolve(&self, reference: &str, _platform: &Platform) -> Option<ImageConfig> {
        match self.configs.get(reference) {
            Some(c) => Some(c.clone()),
            None => {
                self.missing
                    .lock()
                    .expect("not poisoned")
                    .insert(reference.to_string());
                None
            }
        }
    }
}

/// Pulls `reference` (or, when the registry cannot be reached, uses what the store already has,
/// with a warning) and reads its config.
pub async fn pull_base(session: &Session, reference: &str) -> Result<BaseImage, BuildError> {
    let r = Reference::parse(reference).map_err(|e| BuildError::BaseImage {
        reference: reference.to_string(),
        reason: e.to_string(),
    })?;
    let tx = session.events.clone();
    let name = reference.to_string();
    let progress = move |event| {
        if let Some(tx) = &tx {
            let _ = tx.send(BuildEvent::Pull {
                reference: name.clone(),
                event,
            });
        }
    };
    let record = match session.registry.pull(&session.store, &r, &progress).await {
        Ok(rec) => rec,
        Err(e) => {
            let stored = session.store.get_image(&r.to_string())?;
            match stored {
                Some(rec) if rec.blobs().iter().all(|d| session.store.has_blob(d)) => {
                    session.emit(BuildEvent::Warning(format!(
                        "could not reach the registry for {reference} ({e}); using the copy in the store"
                    )));
                    rec
                }
                _ => {
                    return Err(BuildError::Pull {
                        reference: reference.to_string(),
                        source: Box::new(e),
                    });
                }
            }
        }
    };
    base_image(&session.store, record, reference)
}

fn base_image(
    store: &Store,
    record: ImageRecord,
    reference: &str,
) -> Result<BaseImage, BuildError> {
    let bad = |reason: String| BuildError::BaseImage {
        reference: reference.to_string(),
        reason,
    };
    let config_json = store.read_blob(&record.config.digest)?;
    let diff_ids = image::read_base_config(&config_json)
        .map_err(|e| bad(e.to_string()))?
        .diff_ids;
    if diff_ids.len() != record.layers.len() {
        return Err(bad(format!(
            "its config lists {} diff_ids for {} layers",
            diff_ids.len(),
            record.layers.len()
        )));
    }
    Ok(BaseImage {
        record,
        diff_ids,
        config_json,
    })
}

/// Lowers `df`, pulling every base image the lowering asks for (ONBUILD triggers of a base can
/// name further images, so this repeats until nothing new is asked).
pub async fn lower_with_images(
    df: &Dockerfile,
    opts: &LowerOptions<'_>,
    session: &Session,
) -> Result<(Lowered, BaseImages), BuildError> {
    let mut table = BaseImages::default();
    for _ in 0..8 {
        let lowered = {
            let with = LowerOptions {
                target: opts.target.clone(),
                build_args: opts.build_args.clone(),
                target_platform: opts.target_platform.clone(),
                build_platform: opts.build_platform.clone(),
                context_name: opts.context_name.clone(),
                dockerignore: opts.dockerignore.clone(),
                resolver: Some(&table),
            };
            lower(df, &with)?
        };
        // Image sources in the graph (COPY --from=image, mounts) need the images too.
        let mut wanted: BTreeSet<String> =
            std::mem::take(&mut *table.missing.lock().expect("not poisoned"));
        for v in &lowered.graph.vertices {
            if let crate::graph::Op::Source(crate::graph::SourceOp::Image { reference, .. }) = &v.op
                && !table.images.contains_key(reference)
            {
                wanted.insert(reference.clone());
            }
        }
        if wanted.is_empty() {
            return Ok((lowered, table));
        }
        let pulls = wanted.iter().map(|r| pull_base(session, r));
        let pulled = futures::future::join_all(pulls).await;
        for (reference, base) in wanted.into_iter().zip(pulled) {
            let base = base?;
            let config = image::read_base_config(&base.config_json)
                .map(|b| b.config)
                .map_err(|e| BuildError::BaseImage {
                    reference: reference.clone(),
                    reason: e.to_string(),
                })?;
            table.configs.insert(reference.clone(), config);
            table.images.insert(reference, base);
        }
    }
    Err(BuildError::Invalid(
        "base images kept asking for more base images (ONBUILD loop?)".into(),
    ))
}

/// ADD <url> for the executor: with `--checksum` the key is the checksum and nothing is fetched
/// until the step runs; without, the file is fetched once to key it by content (and its
/// Last-Modified, which becomes its mtime) and that download is what the step then uses.
pub struct HttpSource {
    fetcher: http::HttpFetcher,
    dir: std::path::PathBuf,
    fetched: Mutex<HashMap<String, http::Fetched>>,
    events: Option<UnboundedSender<BuildEvent>>,
}

impl HttpSource {
    pub fn new(
        dir: std::path::PathBuf,
        events: Option<UnboundedSender<BuildEvent>>,
    ) -> Result<HttpSource, BuildError> {
        Ok(HttpSource {
            fetcher: http::HttpFetcher::new(http::HttpConfig::default())
                .map_err(|e| BuildError::Invalid(e.to_string()))?,
            dir,
            fetched: Mutex::new(HashMap::new()),
            events,
        })
    }

    async fn download(
        &self,
        url: &str,
        checksum: Option<&str>,
        dir: &std::path::Path,
        filename: &str,
    ) -> Result<http::Fetched, ExecError> {
        std::fs::create_dir_all(dir).map_err(|e| ExecError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source: e,
        })?;
        // A download is a phase of its own: byte counts are not warnings, and the events carry no
        // transfer kind for URLs, so its start and end are what is reported.
        let fetched = phase(
            self.events.as_ref(),
            &format!("downloading {url}"),
            self.fetcher
                .fetch(url, checksum, dir, filename, &mut |_, _| {}),
        )
        .await;
        fetched.map_err(|e| ExecError::Source(e.to_string()))
    }
}

impl executor::RemoteFiles for HttpSource {
    fn key(
        &self,
        url: &str,
        checksum: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<crate::solver::ContentDigest, ExecError>> {
        let url = url.to_string();
        let checksum = checksum.map(str::to_string);
        Box::pin(async move {
            let mut h = blake3::Hasher::new();
            if let Some(c) = &checksum {
                let d = http::checksum_digest(c).map_err(|e| ExecError::Source(e.to_string()))?;
                h.update(b"checksum\0");
                h.update(d.to_string().as_bytes());
                return Ok(*h.finalize().as_bytes());
            }
            let slot = format!("{}", blake3::hash(url.as_bytes()).to_hex());
            let dir = self.dir.join(&slot);
            let f = self.download(&url, None, &dir, "download").await?;
            h.update(b"content\0");
            h.update(f.digest.to_string().as_bytes());
            let mtime = f
                .last_modified
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            h.update(&mtime.to_le_bytes());
            self.fetched.lock().expect("not poisoned").insert(url, f);
            Ok(*h.finalize().as_bytes())
        })
    }

    fn fetch_into<'a>(
        &'a self,
        url: &'a str,
        checksum: Option<&'a str>,
        dir: &'a std::path::Path,
        filename: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let pre = self.fetched.lock().expect("not poisoned").remove(url);
            if let Some(f) = pre {
                let dest = dir.join(filename);
                // Same filesystem (both under the store): a rename keeps the mtime.
                if std::fs::rename(&f.path, &dest).is_ok() {
                    return Ok(());
                }
            }
            self.download(url, checksum, dir, filename).await.map(drop)
        })
    }
}

/// How the solve runs.
#[derive(Debug, Clone, Default)]
pub struct SolveSettings {
    pub jobs: Option<usize>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub cancel: crate::solver::CancellationToken,
}

/// Solves the graph's outputs (roots and gates) with `executor`, reporting solver events.
pub async fn solve(
    graph: Arc<Graph>,
    executor: Arc<BuildExecutor>,
    cache: Arc<dyn CacheStore>,
    settings: &SolveSettings,
    events: Option<UnboundedSender<BuildEvent>>,
) -> Result<Solution<Built>, BuildError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let forward = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(out) = &events {
                let _ = out.send(BuildEvent::Solver(ev));
            }
        }
    });
    let mut options = SolveOptions {
        no_cache: settings.no_cache,
        no_cache_filter: settings.no_cache_filter.clone(),
        events: Some(tx),
        cancel: settings.cancel.clone(),
        ..SolveOptions::default()
    };
    if let Some(j) = settings.jobs {
        options.jobs = j.max(1);
    }
    let solver = Solver::new(executor, cache, options);
    let outputs: Vec<usize> = (0..graph.outputs.len()).collect();
    let solved = solver.solve(graph, &outputs).await;
    drop(solver);
    let _ = forward.await;
    Ok(solved?)
}

/// The layers as the export asks for them: layers this build made (or took from the cache) in
/// another compression are re-encoded into the store (same diff_id, new blob); base image layers
/// are kept as the registry has them, so pushes can still mount them.
pub async fn with_compression(
    store: &Store,
    layers: &[Layer],
    to: forge_snapshotter::compress::Compression,
) -> Result<Vec<Layer>, BuildError> {
    let want = to.media_type();
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        let same = forge_snapshotter::compress::Compression::from_media_type(&l.media_type)
            .map(|c| c.media_type() == want)
            .unwrap_or(true);
        if same || l.source.is_some() {
            out.push(l.clone());
            continue;
        }
        let store2 = store.clone();
        let layer = l.clone();
        let converted = tokio::task::spawn_blocking(move || -> Result<Layer, BuildError> {
            let tmp = store2.temp_path("recompress");
            let file = std::fs::File::create(&tmp)
                .map_err(|e| BuildError::Invalid(format!("creating {}: {e}", tmp.display())))?;
            let blob = store2.open_blob(&layer.digest)?;
            let (digest, size, sink) = forge_snapshotter::compress::recompress(
                std::io::BufReader::new(blob),
                &layer.media_type,
                to,
                std::io::BufWriter::new(file),
            )
            .map_err(|e| BuildError::Invalid(format!("layer {}: {e}", layer.digest)))?;
            drop(sink);
            let digest = blob_digest(&digest)?;
            store2.adopt(&tmp, &digest, size)?;
            Ok(Layer {
                media_type: want.to_string(),
                digest,
                size,
                ..layer
            })
        })
        .await
        .map_err(|e| BuildError::Invalid(format!("worker thread: {e}")))??;
        out.push(converted);
    }
    Ok(out)
}

/// The image an output's result makes: its config (with `labels` added) over its layers.
pub fn make_image(
    output: &Output,
    layers: &[Layer],
    store: &Store,
    labels: &BTreeMap<String, String>,
    options: &ImageOptions,
) -> Result<Image, BuildError> {
    let mut cfg = output.image.clone();
    for (k, v) in labels {
        cfg.labels.insert(k.clone(), v.clone());
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let created = image::created_time(options.source_date_epoch)
        .map_err(|e| BuildError::Invalid(e.to_string()))?;
    let doc = image::image_config_file(&cfg, &diff_ids, &created);
    let blobs =
        layers
            .iter()
            .map(|l| {
                Ok(LayerBlob {
                    path: store.blob_path(&l.digest),
                    digest: l.digest.to_string().parse::<Digest>().map_err(|e| {
                        BuildError::Invalid(format!("layer digest {}: {e}", l.digest))
                    })?,
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                    media_type: MediaType::from(l.media_type.as_str()),
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(crate::export::assemble_json(&doc, blobs, options)?)
}

fn blob_digest(d: &Digest) -> Result<BlobDigest, BuildError> {
    d.to_string()
        .parse()
        .map_err(|e| BuildError::Invalid(format!("digest {d}: {e}")))
}

fn store_descriptor(d: &oci_spec::image::Descriptor) -> Result<Descriptor, BuildError> {
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest: blob_digest(d.digest())?,
        size: d.size(),
    })
}

/// Writes the image's config and manifest into the store and records it under each name (so
/// `forge images` lists it and `forge push` can send it later).
pub fn record_image(
    store: &Store,
    image: &Image,
    names: &[String],
    platform: &Platform,
) -> Result<ImageRecord, BuildError> {
    store.write_blob(image.config_json(), None)?;
    store.write_blob(image.manifest_json(), None)?;
    let layers = image
        .layers()
        .map(|(_, d)| store_descriptor(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut record = ImageRecord {
        reference: String::new(),
        index: None,
        manifest: store_descriptor(image.manifest_descriptor())?,
        config: store_descriptor(image.config_descriptor())?,
        layers,
        platform: platform.to_string(),
        recorded_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    for name in names {
        let r = Reference::parse(name).map_err(|e| BuildError::Invalid(e.to_string()))?;
        record.reference = r.to_string();
        store.put_image(&record)?;
    }
    Ok(record)
}

/// Pushes the recorded image under `tags`; layers from a base image are mounted from the
/// repository they were pulled from when it is on the same registry.
pub async fn push_image(
    session: &Session,
    record: &ImageRecord,
    layers: &[Layer],
    tags: &[String],
) -> Result<BlobDigest, BuildError> {
    let refs = tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| BuildError::Invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let image = PushImage {
        manifest: record.manifest.clone(),
        config: PushBlob {
            descriptor: record.config.clone(),
            kind: BlobKind::Config,
            mount_from: None,
        },
        layers: record
            .layers
            .iter()
            .zip(layers)
            .map(|(d, l)| PushBlob {
                descriptor: d.clone(),
                kind: BlobKind::Layer,
                mount_from: l.source.clone(),
            })
            .collect(),
    };
    let tx = session.events.clone();
    let name = tags.join(", ");
    let progress = move |event| {
        if let Some(tx) = &tx {
            let _ = tx.send(BuildEvent::Push {
                reference: name.clone(),
                event,
            });
        }
    };
    session
        .registry
        .push(&session.store, &image, &refs, &progress)
        .await
        .map_err(|e| BuildError::Push {
            tags: tags.join(", "),
            source: Box::new(e),
        })
}

/// Keeps the blobs of recorded results from `forge prune` while their cache records exist.
pub fn protect_results(store: &Store, solution: &Solution<Built>, graph: &Graph) {
    for (i, _) in graph.vertices.iter().enumerate() {
        let Some(s) = solution.get(crate::graph::NodeRef(i)) else {
            continue;
        };
        if s.cached {
            continue;
        }
        if let Some(layers) = s.output.layers() {
            let digests: Vec<BlobDigest> = layers.iter().map(|l| l.digest.clone()).collect();
            let _ = store.set_root("build-cache", &s.key.to_hex(), &digests);
        }
    }
}
