//! One build, start to end: read the Dockerfile and `.dockerignore`, walk the context while base
//! images resolve, lower, solve with the ops on snapshots, then assemble the image, record it in the
//! store, and export and push it as asked. Everything the build writes outside the store's content
//! is under its own scratch space, named by its id.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use forge_snapshotter::compress::Compression;
use forge_snapshotter::layer::LayerOptions;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::Landing;
use forge_snapshotter::snapshot::Snapshotter as _;

use super::BuildError;
use super::outcome::{BuildFailure, BuildOutcome, VertexReport};
use super::pending::Pending;
use super::request::{BuildContext, BuildRequest, Export};
use super::session::{Session, close_runner};
use super::solve::SolveSettings;
use crate::cache_io::{self, BlobSource, LayeredCache, MountSeeds, RemoteBlobs};
use crate::events::{BuildEvent, Events};
use crate::export::{self, ImageOptions, ManifestFormat};
use crate::frontend::dockerfile::lower::{LowerOptions, NamedContext};
use crate::frontend::dockerfile::parser;
use crate::frontend::dockerignore::{self, Dockerignore};
use crate::graph::Platform;
use crate::ops::{
    BuildExecutor, Built, ExecutorConfig, LayerPlan, LayerUploads, LocalDir, Mounted,
};
use crate::scratch::Scratch;
use crate::solver::{CancellationToken, DiskCache, Solution, SolveError};
use crate::source::{
    self, BaseFetch, ContextSnapshot, HttpSource, SnapshotOptions, SnapshotsWhenOpen,
};

/// How many bad cache blobs one build takes out before it fails (each costs a try).
const MAX_BAD_CACHE_BLOBS: usize = 3;

/// What a successful build made.
struct Made {
    image: export::Image,
    record: forge_snapshotter::store::ImageRecord,
    entries: Vec<cache_io::CacheEntry>,
    cache_mounts: Vec<String>,
}

impl Session {
    /// Runs `request`, sending its progress to `events` (whose build id names everything the build
    /// makes). `cancel` stops it: running steps are killed and their scratch state removed.
    ///
    /// The future is `Send` (a server spawns each build as its own task); it is boxed because the
    /// compiler cannot prove that of the unboxed async fn through its higher-ranked borrows.
    pub fn build<'a>(
        &'a self,
        request: &'a BuildRequest,
        events: Events,
        cancel: CancellationToken,
    ) -> futures::future::BoxFuture<'a, Result<BuildOutcome, BuildFailure>> {
        Box::pin(self.build_inner(request, events, cancel))
    }

    async fn build_inner(
        &self,
        request: &BuildRequest,
        events: Events,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, BuildFailure> {
        let start = Instant::now();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let mut solved = Solution::default();
        let result = async {
            // What an earlier build wrote there is no answer of this one: a script reading the
            // file after a failed build would take the earlier image (docker removes its
            // --iidfile too).
            super::prepare::forget_earlier_outputs(request)?;
            // A cache blob found bad only once the image's layers are gathered (its record was
            // already used) is taken out, and the build runs again: the steps that made it run,
            // as the cache promises (a few times at most: each try takes out one more blob).
            let mut bad = std::collections::HashSet::new();
            loop {
                let tried = self
                    .run(
                        request,
                        &events,
                        cancel.clone(),
                        reports.clone(),
                        &mut solved,
                        &bad,
                    )
                    .await;
                match tried {
                    Err(BuildError::CacheBlob(e))
                        if bad.len() < MAX_BAD_CACHE_BLOBS && !cancel.is_cancelled() =>
                    {
                        events.emit(BuildEvent::Warning {
                            message: format!(
                                "cache: {e}; the build runs again without it, and the steps that made it run"
                            ),
                        });
                        bad.insert(e.digest().clone());
                    }
                    tried => break tried,
                }
            }
        }
        .await;
        let vertices = std::mem::take(&mut *reports.lock().expect("not poisoned"));
        self.auto_prune(&events).await;
        match result {
            Ok(made) => Ok(BuildOutcome {
                build: events.build().clone(),
                digest: made.image.manifest_descriptor().digest().to_string(),
                image: made.image,
                record: made.record,
                vertices,
                duration: start.elapsed(),
                cache_entries: made.entries,
                cache_mounts: made.cache_mounts,
            }),
            Err(error) => Err(BuildFailure {
                build: events.build().clone(),
                error,
                vertices,
                solved,
            }),
        }
    }

    /// The automatic prune after a build: when `FORGE_GC_KEEP_BYTES` is set (it is not by default)
    /// and the store is bigger, prune down to it as `forge prune --keep-bytes` would. Its outcome
    /// is a warning, never the build's failure.
    async fn auto_prune(&self, events: &Events) {
        let keep = match crate::gc::auto_keep_bytes() {
            None => return,
            Some(Ok(keep)) => keep,
            Some(Err(e)) => {
                events.emit(BuildEvent::Warning {
                    message: format!("FORGE_GC_KEEP_BYTES: {e}; no automatic prune"),
                });
                return;
            }
        };
        let snapshots = match self.snapshots() {
            Ok(snapshots) => snapshots.clone(),
            Err(e) => {
                events.emit(BuildEvent::Warning {
                    message: format!("automatic prune failed: {e}"),
                });
                return;
            }
        };
        let session = self.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let parts = crate::gc::Parts {
                root: &session.root,
                store: &session.store,
                snapshots: &snapshots,
            };
            if crate::gc::store_bytes(&parts)? <= keep {
                return Ok(None);
            }
            let options = crate::gc::GcOptions {
                keep_bytes: Some(keep),
                ..crate::gc::GcOptions::default()
            };
            crate::gc::prune(&parts, &options).map(Some)
        })
        .await;
        let message = match pruned {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(r))) => format!(
                "automatic prune (FORGE_GC_KEEP_BYTES={keep}): store {} -> {} bytes",
                r.bytes_before, r.bytes_after
            ),
            Ok(Err(e)) => format!("automatic prune failed: {e}"),
            Err(e) => format!("automatic prune failed: {e}"),
        };
        events.emit(BuildEvent::Warning { message });
    }

    async fn run(
        &self,
        request: &BuildRequest,
        events: &Events,
        cancel: CancellationToken,
        reports: Arc<Mutex<Vec<VertexReport>>>,
        // What the solve got done, kept for the caller whether or not the build then succeeds.
        solved: &mut Solution<Built>,
        // Cache blobs an earlier try of this build found bad: their records are not used.
        bad: &std::collections::HashSet<forge_snapshotter::store::Digest>,
    ) -> Result<Made, BuildError> {
        request.validate()?;
        let (name, text) =
            unless_cancelled(&cancel, super::prepare::read_dockerfile(request)).await?;
        let df = parser::parse_file(&name, &text)?;
        if self.fresh && super::roots::may_speak_tls(&df, request, &self.registry) {
            forge_snapshotter::registry::roots::load_in_background();
        }
        // A Dockerfile given as text has no sibling ignore file: the context's own applies.
        let df_path = request
            .dockerfile_path()
            .unwrap_or_else(|| request.context.join("Dockerfile"));
        let mut ignore_patterns = match dockerignore::find_ignore_file(&request.context, &df_path) {
            None => Vec::new(),
            Some(p) => unless_cancelled(&cancel, super::prepare::read_ignore(p)).await?,
        };
        // Last, so that no `!` line of the file brings them back. forge's own store, when it lies
        // in the context (`--root .forge`), is never part of it: the walk would read the files
        // the build is writing.
        let own_store = super::path_inside(&self.root, &request.context);
        ignore_patterns.extend(
            request
                .context_excludes
                .iter()
                .chain(own_store.iter())
                .map(|p| super::prepare::literal_pattern(p)),
        );
        // The context walk (memoised) starts first: on a rebuild that changes nothing it is most
        // of the build, and everything else until the solve (the store session, the scratch
        // space, base images resolving) runs beside it.
        let ctx_dir = request.context.clone();
        let memo_dir = self.root.join("context");
        let ignore = Dockerignore::from_patterns(&ignore_patterns).map_err(|e| {
            BuildError::Invalid(format!("{}: .dockerignore: {e}", request.context.display()))
        })?;
        let walk = tokio::task::spawn_blocking(move || {
            ContextSnapshot::take(
                &ctx_dir,
                &SnapshotOptions {
                    ignore: Some(&ignore),
                    state_dir: Some(&memo_dir),
                    threads: 0,
                },
            )
        });
        let host = Platform::host();
        let lower_opts = LowerOptions {
            target: request.target.clone(),
            build_args: request.build_args.clone(),
            target_platform: request.platform.clone().unwrap_or_else(|| host.clone()),
            build_platform: host.clone(),
            dockerignore: ignore_patterns.clone(),
            extra_hosts: request
                .add_hosts
                .iter()
                .map(|(name, ip)| format!("{name}={ip}"))
                .collect(),
            ulimits: request.ulimits.iter().map(|u| u.to_string()).collect(),
            shm_size: request.shm_size.map(|b| b.0),
            named_contexts: request
                .build_contexts
                .iter()
                .map(|(name, c)| {
                    let named = match c {
                        BuildContext::Image(r) => NamedContext::Image(r.clone()),
                        BuildContext::Dir(_) => NamedContext::Local,
                    };
                    (name.clone(), named)
                })
                .collect(),
            ..LowerOptions::default()
        };
        let mut locals = super::prepare::named_context_dirs(request, &self.root).await?;

        let pushes = request.pushes();
        let leaves_store = pushes
            || request.exports.iter().any(|e| {
                matches!(
                    e,
                    Export::OciTar(_) | Export::OciDir(_) | Export::DockerTar(_)
                )
            });
        let recompress = leaves_store || request.compression.is_some();
        let compression = request
            .compression
            .unwrap_or(Compression::Gzip { level: 6 });
        // Layers that stay in the store are written with fast zstd; those about to leave it are
        // written in their final compression at once, so nothing is compressed twice.
        let step_compression = if recompress {
            compression
        } else {
            crate::ops::OWN_COMPRESSION
        };

        // The build is a store session for its whole life: a prune (in this process or another)
        // waits for it instead of removing blobs it made but has not recorded yet, and no other
        // process clears ingest/ under its temporary files.
        // Taken in place when it is free; waiting (while a prune runs) is left to a blocking
        // thread, so that other builds go on.
        let _store_session = match self.store.try_session()? {
            Some(session) => session,
            None => {
                let store = self.store.clone();
                let waiting = async {
                    tokio::task::spawn_blocking(move || store.session())
                        .await
                        .map_err(|e| BuildError::Invalid(format!("store session: {e}")))?
                        .map_err(BuildError::from)
                };
                unless_cancelled(&cancel, waiting).await?
            }
        };
        let scratch = Scratch::create(&self.root, events.build())
            .map(Arc::new)
            .map_err(|e| {
                BuildError::Invalid(format!(
                    "scratch space under {}: {e}",
                    crate::scratch::tmp_root(&self.root).display()
                ))
            })?;

        // With a cache to import, base layers are fetched only when a step needs them: a build
        // served whole from the cache downloads none.
        let fetch = if request.cache.import.is_empty() {
            BaseFetch::WholeUnrecorded
        } else {
            BaseFetch::Lazy
        };
        let remote = Arc::new(RemoteBlobs::new(self.registry.clone(), events.clone()));
        for digest in bad {
            remote.mark_bad(digest);
        }
        // The bases' layers are unpacked as they arrive, into the snapshotter once it is open.
        let unpack_into: SnapshotsWhenOpen = {
            let snapshots = self.snapshots.clone();
            Arc::new(move || snapshots.get().ok().cloned())
        };
        let (lowered, images) = events
            .phase_result(
                "resolving base images",
                // A registry that never answers holds this phase, not a step: it is given up on
                // when the build is cancelled, as the solve's steps are (what a pull stored is
                // kept; its image is recorded by the next build that pulls it).
                unless_cancelled(
                    &cancel,
                    source::lower_with_images(
                        &df,
                        &lower_opts,
                        &self.store,
                        &self.registry,
                        events,
                        request.pull,
                        fetch,
                        (fetch == BaseFetch::WholeUnrecorded).then_some(&unpack_into),
                    ),
                ),
            )
            .await
            .map_err(|e| super::prepare::lower_error(e, &name, &text))?;
        // What the pulls brought in is recorded with the build's results and image, in one commit
        // at the end; on any other way out, on its own.
        let mut pending = Pending::new(&self.store, &images);
        for w in &lowered.warnings {
            events.emit(BuildEvent::Warning { message: w.clone() });
        }
        super::prepare::run_build_checks(&df, request, &images, &name, events)?;
        let snapshot = unless_cancelled(&cancel, async {
            walk.await
                .map_err(|e| BuildError::Invalid(format!("context walk: {e}")))?
                .map_err(|e| {
                    BuildError::Invalid(format!("build context {}: {e}", request.context.display()))
                })
        })
        .await?;
        super::prepare::refuse_ungranted(request, &lowered.graph, &name, &text)?;
        let runner = self.runner().await?;
        let graph = Arc::new(lowered.graph);
        for image in images.images.values() {
            let source = Reference::parse(&image.record.reference).ok();
            for d in image
                .record
                .layers
                .iter()
                .filter(|d| !self.store.has_blob(&d.digest))
            {
                if let Some(r) = &source {
                    remote.add(d.clone(), BlobSource::Registry(r.clone()));
                }
            }
        }
        let importing = async {
            Ok(cache_io::import_caches(
                &request.cache.import,
                &self.registry,
                &self.store,
                &remote,
                events,
            )
            .await)
        };
        let imported = match unless_cancelled(&cancel, importing).await {
            Ok(imported) => Arc::new(imported),
            Err(e) => {
                close_runner(runner).await;
                return Err(e);
            }
        };
        let mount_seeds = (!imported.mounts.is_empty()).then(|| {
            Arc::new(MountSeeds::new(
                self.root.join("cache-mounts"),
                imported.mounts.clone(),
                remote.clone(),
                self.store.clone(),
                events.clone(),
            ))
        });
        let disk = DiskCache::open(self.root.join("build-cache"))?;
        // Nothing to find in a cache: every layer of the image's chain will be made.
        let cold = self.fresh && imported.records.is_empty() && disk.is_empty();
        let cache = LayeredCache::new(disk, imported.clone());
        // The image's own layers leave while their steps write them, to the first repository
        // pushed to, when they are written in the compression pushed (other repositories mount
        // them or get them after the build).
        let uploads = match request.tags.first() {
            Some(first) if pushes && recompress => Reference::parse(first).ok().map(|target| {
                Arc::new(LayerUploads::new(
                    self.registry.clone(),
                    target,
                    request.tags.join(", "),
                    events.clone(),
                ))
            }),
            _ => None,
        };
        // Only the target's own chain of layers becomes the image; the other steps' stay
        // snapshots. A cache export sends those steps' layers too, so with one they are written
        // as blobs at once.
        let chain = match graph.outputs.first() {
            Some(out) if request.cache.export.is_empty() => Some(graph.layer_chain(out.root)),
            _ => None,
        };
        if let Some(u) = &uploads {
            u.warm(&graph, chain.as_ref().filter(|_| cold));
        }
        let executor = BuildExecutor::new(
            ExecutorConfig {
                store: self.store.clone(),
                snapshots: self.snapshots()?.clone(),
                runner: runner.clone(),
                scratch: scratch.clone(),
                locals: {
                    locals.insert(
                        "context".to_string(),
                        LocalDir {
                            dir: request.context.clone(),
                            snapshot: Arc::new(snapshot),
                        },
                    );
                    locals
                },
                images: images.images,
                secrets: request.secrets.to_map(),
                ssh: request.ssh.clone(),
                layers: {
                    let leaving = LayerOptions {
                        compression: step_compression,
                        source_date_epoch: request.source_date_epoch,
                    };
                    match chain {
                        Some(chain) => LayerPlan {
                            leaving,
                            leaves: Some(chain),
                            uploads: uploads.clone(),
                        },
                        None => LayerPlan::uniform(leaving),
                    }
                },
                default_network: request.network,
                allow_network_host: request.allow_network_host,
                allow_insecure: request.allow_insecure,
                limits: request.limits,
                http: Some(Arc::new(HttpSource::new(
                    scratch.downloads(),
                    events.clone(),
                ))),
                events: events.clone(),
                run_env: Vec::new(),
                join_network: None,
                beside_step: None,
                proxy_args: request
                    .build_args
                    .iter()
                    .filter(|(k, _)| crate::graph::PROXY_ARGS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                remote: Some(remote.clone()),
                mount_seeds,
                test_restore: Vec::new(),
                masked: Vec::new(),
            },
            &graph,
        );
        let executor = match executor {
            Ok(e) => Arc::new(e),
            Err(e) => {
                close_runner(runner).await;
                return Err(e.into());
            }
        };
        let settings = SolveSettings {
            jobs: request.jobs,
            no_cache: request.cache.no_cache,
            no_cache_filter: request.cache.no_cache_filter.clone(),
            cancel: cancel.clone(),
            ..SolveSettings::default()
        };
        let result = super::solve::solve_reporting(
            graph.clone(),
            executor.clone(),
            Arc::new(cache),
            &settings,
            events,
            Some(reports),
        )
        .await;
        close_runner(runner).await;
        let solution = match result {
            Ok(s) => s,
            Err(failure) => {
                pending.results(&failure.solved);
                *solved = failure.solved;
                // Nothing will be pushed: the sessions opened ahead are given up now rather than
                // left to the drop's best effort.
                if let Some(u) = &uploads {
                    u.give_up_spares().await;
                }
                return Err(failure.error.into());
            }
        };
        pending.results(&solution);
        *solved = solution.clone();

        let output = &graph.outputs[0];
        let built = &solution
            .get(output.root)
            .ok_or_else(|| BuildError::Invalid("the target was not solved".into()))?
            .output;
        let layers = built
            .layers()
            .ok_or_else(|| {
                BuildError::Invalid("the target is a local directory, not an image".into())
            })?
            .to_vec();
        // A layer an earlier build kept only as a snapshot (this target was then a builder stage)
        // gets its blob now, with this build's SOURCE_DATE_EPOCH; a cached layer keeps the
        // compression it was made with; what leaves the store gets the compression asked for.
        let step_options = LayerOptions {
            compression: step_compression,
            source_date_epoch: request.source_date_epoch,
        };
        let layers = if layers.iter().any(|l| l.unwritten.is_some()) {
            let (snapshots, store) = (self.snapshots()?, &self.store);
            events
                .phase_result("writing layers kept as snapshots", async {
                    crate::ops::write_unwritten(snapshots, store, &layers, step_options).await
                })
                .await?
        } else {
            layers
        };
        // The layers as the cache records them: the snapshots a filesystem export reads, and what
        // a `mode=min` cache export picks records by.
        let solved_layers = layers.clone();
        let layers = match request.source_date_epoch {
            Some(epoch) => {
                self.restamp_cached(&layers, epoch, step_compression, &remote, events, &cancel)
                    .await?
            }
            None => layers,
        };
        let layers = if recompress {
            // A layer a registry cache served is fetched before it is re-encoded.
            let fetch: Vec<_> = layers
                .iter()
                .filter(|l| export::needs_compression(l, compression, executor.base_layers()))
                .map(|l| l.digest.clone())
                .collect();
            remote
                .ensure(&self.store, &fetch)
                .await
                .map_err(BuildError::CacheBlob)?;
            export::with_compression(&self.store, &layers, executor.base_layers(), compression)
                .await?
        } else {
            layers
        };
        let docker_only = !request.exports.is_empty()
            && request.exports.iter().all(|e| {
                matches!(
                    e,
                    Export::DockerTar(_)
                        | Export::Image {
                            oci_mediatypes: false,
                            ..
                        }
                )
            });
        // Docker's media types have no name for a zstd layer that readers know (skopeo and
        // buildah refuse `diff.tar.zstd`): such an image gets OCI's, as BuildKit gives it.
        let zstd = layers
            .iter()
            .any(|l| l.media_type.to_string().contains("zstd"));
        let docker_tar = request
            .exports
            .iter()
            .any(|e| matches!(e, Export::DockerTar(_)));
        if (docker_only || docker_tar) && zstd {
            events.emit(BuildEvent::Warning {
                message: "the image has zstd layers, which Docker's media types cannot name: its \
                          manifest is OCI's (oci-mediatypes=false is not kept)"
                    .into(),
            });
        }
        let format = if docker_only && !zstd {
            ManifestFormat::Docker
        } else {
            ManifestFormat::Oci
        };
        let options = ImageOptions {
            format,
            source_date_epoch: request.source_date_epoch,
        };
        let labels = &request.labels;
        let image = events.phase_sync("writing image", || {
            export::make_image(output, &layers, &self.store, labels, &options)
        })?;
        let names = request.tags.clone();
        // What leaves as bytes (a file export, the store's own copy of an image not pushed) needs
        // every layer here; a push mounts or skips what the registry has.
        let only_pushed = pushes
            && request
                .exports
                .iter()
                .all(|e| matches!(e, Export::Image { push: true, .. }));
        if !only_pushed {
            let digests: Vec<_> = layers.iter().map(|l| l.digest.clone()).collect();
            let fetching = async {
                remote
                    .ensure(&self.store, &digests)
                    .await
                    .map_err(BuildError::CacheBlob)
            };
            unless_cancelled(&cancel, fetching).await?;
        }
        for e in &request.exports {
            match e {
                Export::OciTar(dest) => export::write_oci_tar(&image, &names, dest)?,
                Export::OciDir(dest) => export::write_oci_dir(&image, &names, dest)?,
                Export::DockerTar(dest) => {
                    let docker = export::make_image(
                        output,
                        &layers,
                        &self.store,
                        labels,
                        &ImageOptions {
                            // zstd layers: OCI's types (see `zstd` above).
                            format: if zstd {
                                ManifestFormat::Oci
                            } else {
                                ManifestFormat::Docker
                            },
                            source_date_epoch: request.source_date_epoch,
                        },
                    )?;
                    export::write_docker_tar(&docker, &names, dest)?
                }
                Export::Local(dest) => {
                    let snap = executor.ensure_snapshot(&solved_layers).await?;
                    let Some(name) = snap else {
                        std::fs::create_dir_all(dest).map_err(|e| {
                            BuildError::Invalid(format!("creating {}: {e}", dest.display()))
                        })?;
                        continue;
                    };
                    let mounts = self.snapshots()?.mounts(&name)?;
                    let mounted = Mounted::mount(&mounts, scratch.export())?;
                    export::export_local(mounted.path(), dest, request.keep_owners)?;
                }
                Export::Tar(dest) => {
                    // An empty image (FROM scratch with nothing added) is an empty directory.
                    let empty = scratch.export().join("empty");
                    match executor.ensure_snapshot(&solved_layers).await? {
                        Some(name) => {
                            let mounts = self.snapshots()?.mounts(&name)?;
                            let mounted = Mounted::mount(&mounts, scratch.export())?;
                            export::write_fs_tar(mounted.path(), dest)?;
                        }
                        None => {
                            std::fs::create_dir_all(&empty).map_err(|e| {
                                BuildError::Invalid(format!("creating {}: {e}", empty.display()))
                            })?;
                            export::write_fs_tar(&empty, dest)?;
                        }
                    }
                }
                Export::Image { .. } => {}
            }
        }
        let (record, images) = export::image_records(&self.store, &image, &names, &host)?;
        // The config and the manifest are written into the store (each synced) and the metadata
        // commit made (it syncs the file several times) while the image is pushed: the push takes
        // those two from memory and the layers from the store, which has them already. Both end
        // before either's error is returned, so a failed push leaves the image recorded.
        let recording = {
            let (store, image) = (self.store.clone(), image.clone());
            tokio::task::spawn_blocking(move || {
                export::write_image_blobs(&store, &image)
                    .map_err(|e| BuildError::Invalid(format!("writing the image: {e}")))?;
                pending.record_with(images)
            })
        };
        let pushing = async {
            if pushes {
                // The layers still on their way are waited for by the push, which sends the
                // config and the base's layers meanwhile.
                let streaming = uploads.as_ref().map(|u| (u, u.repository(), u.streaming()));
                let pushed = export::push_image(
                    &self.store,
                    &self.registry,
                    events,
                    Some(&image),
                    &record,
                    &layers,
                    &names,
                    streaming.as_ref().map(|(u, repo, digests)| {
                        let landing: Landing<'_> = Box::pin(u.sent());
                        (repo.as_str(), digests, landing)
                    }),
                )
                .await;
                // What the push did not take of the sessions opened ahead (none, unless the
                // registry had the config) is given up, whether the push went through or not.
                if let Some(u) = &uploads {
                    u.give_up_spares().await;
                }
                pushed?;
            }
            Ok::<(), BuildError>(())
        };
        // A cancelled build stops pushing (a registry that stopped answering must not hold it) but
        // still waits for the image's record: what was built stays in the store.
        let (recorded, pushed) =
            futures::future::join(recording, unless_cancelled(&cancel, pushing)).await;
        recorded.map_err(|e| BuildError::Invalid(format!("recording the image: {e}")))??;
        pushed?;
        let entries = cache_io::entries(&graph, &solution);
        let cache_mounts = super::cache::cache_mount_ids(&graph);
        for target in &request.cache.export {
            let exporting = self.export_cache(
                target,
                &entries,
                &cache_mounts,
                super::cache::ImageLayers {
                    solved: &solved_layers,
                    pushed: pushes
                        .then(|| names.first().map(|tag| (tag.as_str(), layers.as_slice())))
                        .flatten(),
                },
                request.source_date_epoch,
                &remote,
                events,
            );
            unless_cancelled(&cancel, exporting).await?;
        }
        if let Some(p) = &request.metadata_file {
            export::write_metadata_file(p, &image, &names)?;
        }
        if let Some(p) = &request.iidfile {
            export::write_iidfile(p, &image)?;
        }
        drop(executor);
        drop(scratch);
        Ok(Made {
            image,
            record,
            entries,
            cache_mounts,
        })
    }
}

/// `work`, or the solver's cancellation error as soon as `cancel` fires, `work` then dropped where
/// it waits. For the phases outside the solve that wait on something that may never come (a
/// registry, a FIFO, a prune holding the store): the solve's steps watch `cancel` themselves, and
/// a signal must stop a build in every phase, not only while a step runs.
pub(super) async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, BuildError>>,
) -> Result<T, BuildError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(BuildError::Solve(SolveError::Cancelled)),
        done = work => done,
    }
}
