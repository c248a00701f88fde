//! `forge build`: the flags `docker build` users know, turned into a build session (store, snapshots,
//! runner, registry client), a solve, and the exports asked for.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use forge_builder::context::{ContextSnapshot, SnapshotOptions};
use forge_builder::driver::{
    self, BuildError, BuildEvent, BuildExecutor, ExecutorConfig, LocalDir, Session, SolveSettings,
};
use forge_builder::export::{self, ImageOptions, ManifestFormat};
use forge_builder::frontend::dockerfile::lower::LowerOptions;
use forge_builder::frontend::dockerfile::parser;
use forge_builder::frontend::dockerignore::{self, Dockerignore};
use forge_builder::graph::Platform;
use forge_builder::solver::DiskCache;
use forge_runner::backend::Backend;
use forge_runner::spec::NetworkMode as StepNetwork;
use forge_snapshotter::compress::Compression;
use forge_snapshotter::layer::LayerOptions;
use forge_snapshotter::registry::{RegistryClient, RegistryConfig};
use forge_snapshotter::snapshot::{AnySnapshotter, BackendKind, Snapshotter};
use forge_snapshotter::store::{Store, default_root};

use crate::progress::{self, ProgressMode};
use crate::{Failure, GraphArgs, display_name, failed, parse_build_args, read, render, usage};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RunnerArg {
    Embedded,
    Containerd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum NetworkArg {
    Default,
    None,
    Host,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    Uncompressed,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Print the build graph instead of building.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Name the image (`host:5000/app:1`); repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Add a label to the image, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Run every step, ignoring the cache.
    #[arg(long)]
    no_cache: bool,
    /// Run the steps of this stage (and everything after them) without the cache; repeatable.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR; repeatable.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    secrets: Vec<String>,
    /// An SSH agent socket for RUN --mount=type=ssh: default or ID=SOCKET; repeatable.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    ssh: Vec<String>,
    /// The network of RUN steps that do not choose one.
    #[arg(long, value_enum, default_value = "default")]
    network: NetworkArg,
    /// How progress is shown (on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Print only the image digest on stdout.
    #[arg(short, long)]
    quiet: bool,
    /// Push every -t name to its registry.
    #[arg(long)]
    push: bool,
    /// An export: type=oci|docker|local|image, dest=..., tar=true|false, push=true; repeatable.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Write buildx-style build metadata (JSON, containerimage.digest) here.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Write the image ID here.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Layer compression of what leaves the store (push, -o oci/docker); default gzip. An image
    /// kept only in the store has its layers stored with fast zstd unless this is given, and is
    /// re-encoded when it is exported later, as BuildKit compresses lazily.
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Compression level (gzip 0-9, zstd 1-22).
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,
    /// What runs RUN steps.
    #[arg(long, value_enum, default_value = "embedded")]
    runner: RunnerArg,
    /// containerd's socket for --runner containerd (default $CONTAINERD_ADDRESS).
    #[arg(long, value_name = "SOCKET")]
    containerd_address: Option<PathBuf>,
    /// How many steps may run at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// The store directory (default: $XDG_DATA_HOME/forge, ~/.local/share/forge, or /var/lib/forge
    /// for root).
    #[arg(long, env = "FORGE_ROOT")]
    root: Option<PathBuf>,
}

/// One `-o` export.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Export {
    OciTar(PathBuf),
    OciDir(PathBuf),
    DockerTar(PathBuf),
    Local(PathBuf),
    /// Into the store (and the registry when `push`).
    Image {
        push: bool,
    },
    /// The same, with Docker's media types (`oci-mediatypes=false`).
    DockerImage {
        push: bool,
    },
}

fn parse_output(spec: &str) -> Result<Export, Failure> {
    let mut kv: HashMap<String, String> = HashMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            usage(format!(
                "error: invalid --output {spec:?}: {part:?} is not KEY=VALUE"
            ))
        })?;
        kv.insert(k.trim().to_string(), v.trim().to_string());
    }
    let kind = kv
        .get("type")
        .cloned()
        .ok_or_else(|| usage(format!("error: invalid --output {spec:?}: no type=")))?;
    let dest = || {
        kv.get("dest").map(PathBuf::from).ok_or_else(|| {
            usage(format!(
                "error: invalid --output {spec:?}: type={kind} needs dest="
            ))
        })
    };
    let flag = |k: &str| kv.get(k).is_some_and(|v| v == "true" || v == "1");
    match kind.as_str() {
        "oci" if kv.get("tar").is_some_and(|v| v == "false") => Ok(Export::OciDir(dest()?)),
        "oci" => Ok(Export::OciTar(dest()?)),
        "docker" => Ok(Export::DockerTar(dest()?)),
        "local" => Ok(Export::Local(dest()?)),
        "image" | "registry" => {
            let push = kind == "registry" || flag("push");
            if kv.get("oci-mediatypes").is_some_and(|v| v == "false") {
                Ok(Export::DockerImage { push })
            } else {
                Ok(Export::Image { push })
            }
        }
        other => Err(usage(format!(
            "error: invalid --output {spec:?}: unknown type {other:?} (oci, docker, local, image, registry)"
        ))),
    }
}

fn parse_secrets(specs: &[String]) -> Result<HashMap<String, Vec<u8>>, Failure> {
    let mut out = HashMap::new();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", _)) => {}
                _ => {
                    return Err(usage(format!(
                        "error: invalid --secret {spec:?}: expected id=ID,src=PATH or id=ID,env=VAR"
                    )));
                }
            }
        }
        let id = id
            .or_else(|| env.clone())
            .or_else(|| {
                src.as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .ok_or_else(|| usage(format!("error: invalid --secret {spec:?}: no id")))?;
        let data = match (src, env) {
            (Some(p), _) => std::fs::read(&p).map_err(|e| {
                failed(format!(
                    "error: cannot read secret {id:?} from {}: {e}",
                    p.display()
                ))
            })?,
            (None, Some(var)) => std::env::var_os(&var)
                .ok_or_else(|| {
                    failed(format!(
                        "error: secret {id:?}: environment variable {var} is not set"
                    ))
                })?
                .into_encoded_bytes(),
            (None, None) => std::env::var_os(&id)
                .ok_or_else(|| {
                    failed(format!(
                        "error: secret {id:?}: give src=PATH or env=VAR (no variable {id} either)"
                    ))
                })?
                .into_encoded_bytes(),
        };
        out.insert(id, data);
    }
    Ok(out)
}

fn parse_ssh(specs: &[String]) -> Result<HashMap<String, PathBuf>, Failure> {
    let mut out = HashMap::new();
    for spec in specs {
        let (id, sock) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), PathBuf::from(path)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                    failed(format!(
                        "error: --ssh {spec}: SSH_AUTH_SOCK is not set; give {spec}=SOCKET"
                    ))
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        out.insert(id, sock);
    }
    Ok(out)
}

fn parse_labels(specs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    specs
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("error: invalid --label {s:?}: expected KEY=VALUE")))
        })
        .collect()
}

fn source_date_epoch() -> Result<Option<i64>, Failure> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse::<i64>().map(Some).map_err(|_| {
            usage(format!(
                "error: SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        }),
        _ => Ok(None),
    }
}

/// Runs a build. Called after the user namespace is entered, before any thread starts.
pub fn build(args: &BuildArgs) -> Result<(), Failure> {
    let g = &args.graph;
    let context = g.context.clone();
    if !context.is_dir() {
        return Err(usage(format!(
            "error: build context {} is not a directory",
            context.display()
        )));
    }
    let file = g.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let name = display_name(&file);
    let src = read(&file)?;
    let df = parser::parse_file(&name, &src).map_err(|e| failed(format!("error: {e}")))?;
    let host = Platform::host();
    if let Some(p) = &g.platform {
        let want = Platform::parse(p).ok_or_else(|| {
            usage(format!(
                "error: invalid --platform {p:?}: expected os/arch[/variant]"
            ))
        })?;
        if want != host {
            return Err(usage(format!(
                "error: --platform {want}: only this machine's platform ({host}) can be built for now"
            )));
        }
    }
    let mut exports = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>, _>>()?;
    if exports.is_empty() {
        exports.push(Export::Image { push: args.push });
    } else if args.push {
        for e in &mut exports {
            match e {
                Export::Image { push } | Export::DockerImage { push } => *push = true,
                _ => {}
            }
        }
        if !exports
            .iter()
            .any(|e| matches!(e, Export::Image { .. } | Export::DockerImage { .. }))
        {
            exports.push(Export::Image { push: true });
        }
    }
    let push = exports.iter().any(|e| {
        matches!(
            e,
            Export::Image { push: true } | Export::DockerImage { push: true }
        )
    });
    if push && args.tags.is_empty() {
        return Err(usage("error: --push needs at least one -t NAME".into()));
    }
    for t in &args.tags {
        forge_snapshotter::reference::Reference::parse(t)
            .map_err(|e| usage(format!("error: invalid tag {t:?}: {e}")))?;
    }
    let labels = parse_labels(&args.labels)?;
    let secrets = parse_secrets(&args.secrets)?;
    let ssh = parse_ssh(&args.ssh)?;
    let epoch = source_date_epoch()?;
    let compression = match args.compression.unwrap_or(CompressionArg::Gzip) {
        CompressionArg::Gzip => Compression::Gzip {
            level: args.compression_level.unwrap_or(6).clamp(0, 9) as u32,
        },
        CompressionArg::Zstd => Compression::Zstd {
            level: args.compression_level.unwrap_or(3).clamp(1, 22),
        },
        CompressionArg::Uncompressed => Compression::None,
    };
    let ignore_patterns = match dockerignore::find_ignore_file(&context, &file) {
        None => Vec::new(),
        Some(p) => Dockerignore::read(&p)
            .map_err(|e| failed(format!("error: {}: {e}", p.display())))?
            .patterns()
            .to_vec(),
    };
    let lower_opts = LowerOptions {
        target: g.target.clone(),
        build_args: parse_build_args(&g.build_args)?,
        target_platform: host.clone(),
        build_platform: host.clone(),
        dockerignore: ignore_patterns.clone(),
        ..LowerOptions::default()
    };

    let root = match &args.root {
        Some(r) => r.clone(),
        None => default_root().map_err(|e| failed(format!("error: {e}")))?,
    };
    let store =
        Store::open(&root).map_err(|e| failed(format!("error: store {}: {e}", root.display())))?;
    let snapshots = AnySnapshotter::open(&root.join("snapshots"), None::<BackendKind>)
        .map_err(|e| failed(format!("error: snapshots under {}: {e}", root.display())))?;
    let registry = RegistryClient::new(RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    });

    if args.runner == RunnerArg::Embedded {
        private_mounts()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
    let session = Session {
        store: store.clone(),
        snapshots: Arc::new(snapshots),
        registry: Arc::new(registry),
        events: Some(tx),
    };
    let quiet = args.quiet;
    let mode = if quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let printer = runtime.spawn(progress::run(mode, rx, Box::new(std::io::stderr())));

    let result = runtime.block_on(async {
        let outcome = run(
            args,
            &session,
            &df,
            &lower_opts,
            &context,
            &ignore_patterns,
            &root,
            secrets,
            ssh,
            epoch,
            compression,
            &labels,
            &exports,
            push,
        )
        .await;
        drop(session);
        outcome
    });
    let summary = runtime.block_on(printer).ok();
    match result {
        Ok(digest) => {
            if quiet {
                println!("{digest}");
            } else {
                if let Some(s) = summary {
                    eprintln!("{s}");
                }
                println!("{digest}");
            }
            Ok(())
        }
        Err(BuildError::Lower(e)) => Err(failed(render(
            &name,
            &src,
            e.span,
            &e.kind.to_string(),
            e.hint.as_deref(),
        ))),
        Err(e) => {
            let mut message = format!("error: {}", chain(&e));
            // The plain and tty views showed a failed step's last lines already; -q and json did not.
            if matches!(mode, ProgressMode::Quiet | ProgressMode::Json)
                && let Some(tail) = failed_step_tail(&e)
            {
                message.push_str("\nlast output:");
                for line in tail {
                    message.push_str(&format!("\n  | {line}"));
                }
            }
            Err(failed(message))
        }
    }
}

/// As real root, the build's own mounts (snapshots it reads, file operations) go into a private
/// mount namespace, so a killed build leaves none behind on the host. Rootless builds already have
/// one (entering the user namespace made it); the containerd runner needs the host's, since
/// containerd must see the directories it is asked to bind. Must run before any thread starts.
fn private_mounts() -> Result<(), Failure> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    if !nix::unistd::geteuid().is_root() || forge_runner::embedded::in_user_namespace() {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| failed(format!("error: cannot make a private mount namespace: {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| failed(format!("error: cannot make mounts private: {e}")))
}

/// The last output lines of the step whose failure stopped the build.
fn failed_step_tail(e: &BuildError) -> Option<&[String]> {
    let BuildError::Solve(forge_builder::solver::SolveError::Step { source, .. }) = e else {
        return None;
    };
    match source.downcast_ref::<driver::ExecError>()? {
        driver::ExecError::Exit { tail, .. } if !tail.is_empty() => Some(tail),
        _ => None,
    }
}

/// An error and its causes, one per line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(&format!("\ncaused by: {text}"));
        }
        cur = c.source();
    }
    s
}

#[allow(clippy::too_many_arguments)]
async fn run(
    args: &BuildArgs,
    session: &Session,
    df: &forge_builder::frontend::dockerfile::ast::Dockerfile,
    lower_opts: &LowerOptions<'_>,
    context: &Path,
    ignore_patterns: &[String],
    root: &Path,
    secrets: HashMap<String, Vec<u8>>,
    ssh: HashMap<String, PathBuf>,
    epoch: Option<i64>,
    compression: Compression,
    labels: &BTreeMap<String, String>,
    exports: &[Export],
    push: bool,
) -> Result<String, BuildError> {
    let leaves_store = push
        || exports.iter().any(|e| {
            matches!(
                e,
                Export::OciTar(_) | Export::OciDir(_) | Export::DockerTar(_)
            )
        });
    let recompress = leaves_store || args.compression.is_some() || args.compression_level.is_some();
    // Layers that stay in the store are written with fast zstd; those about to leave it are
    // written in their final compression at once, so nothing is compressed twice.
    let step_compression = if recompress {
        compression
    } else {
        Compression::Zstd { level: 1 }
    };
    // The context walk (memoised) runs while base images resolve.
    let ctx_dir = context.to_path_buf();
    let memo_dir = root.join("context");
    let ignore = Dockerignore::from_patterns(ignore_patterns)
        .map_err(|e| BuildError::Invalid(format!("{}: .dockerignore: {e}", context.display())))?;
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
    let (lowered, images) = session
        .phase(
            "resolving base images",
            driver::lower_with_images(df, lower_opts, session),
        )
        .await?;
    for w in &lowered.warnings {
        if let Some(tx) = &session.events {
            let _ = tx.send(BuildEvent::Warning(w.clone()));
        }
    }
    let snapshot = walk
        .await
        .map_err(|e| BuildError::Invalid(format!("context walk: {e}")))?
        .map_err(|e| BuildError::Invalid(format!("build context {}: {e}", context.display())))?;
    let runner = make_runner(args, root).await?;
    let graph = Arc::new(lowered.graph);
    let work_dir = root
        .join("tmp")
        .join(format!("build-{}", std::process::id()));
    let cache = DiskCache::open(root.join("build-cache"))?;
    let executor = Arc::new(BuildExecutor::new(
        ExecutorConfig {
            store: session.store.clone(),
            snapshots: session.snapshots.clone(),
            runner: runner.clone(),
            work_dir: work_dir.clone(),
            locals: HashMap::from([(
                "context".to_string(),
                LocalDir {
                    dir: context.to_path_buf(),
                    snapshot: Arc::new(snapshot),
                },
            )]),
            images: images.images,
            secrets,
            ssh,
            layer: LayerOptions {
                compression: step_compression,
                source_date_epoch: epoch,
            },
            default_network: match args.network {
                NetworkArg::None => StepNetwork::None,
                _ => StepNetwork::Host,
            },
            http: Some(Arc::new(driver::HttpSource::new(
                root.join("tmp")
                    .join(format!("download-{}", std::process::id())),
                session.events.clone(),
            )?)),
            events: session.events.clone(),
        },
        &graph,
    )?);
    let settings = SolveSettings {
        jobs: args.jobs,
        no_cache: args.no_cache,
        no_cache_filter: args.no_cache_filter.clone(),
        ..SolveSettings::default()
    };
    let interrupt = tokio::spawn(cancel_on_signal(settings.cancel.clone()));
    let solved = driver::solve(
        graph.clone(),
        executor.clone(),
        Arc::new(cache),
        &settings,
        session.events.clone(),
    )
    .await;
    interrupt.abort();
    // Every mount point under it is gone by now (each is removed when unmounted); removing only
    // what is empty can never reach into a filesystem that is somehow still mounted there.
    let _ = std::fs::remove_dir(&work_dir);
    let _ = std::fs::remove_dir_all(
        root.join("tmp")
            .join(format!("download-{}", std::process::id())),
    );
    close_runner(runner).await;
    let solution = solved?;
    driver::protect_results(&session.store, &solution, &graph);

    let output = &graph.outputs[0];
    let built = &solution
        .get(output.root)
        .ok_or_else(|| BuildError::Invalid("the target was not solved".into()))?
        .output;
    let layers = built
        .layers()
        .ok_or_else(|| BuildError::Invalid("the target is a local directory, not an image".into()))?
        .to_vec();
    // A cached layer keeps the compression it was made with; what leaves the store gets the
    // compression asked for.
    let layers = if recompress {
        driver::with_compression(&session.store, &layers, compression).await?
    } else {
        layers
    };
    let format = if exports
        .iter()
        .all(|e| matches!(e, Export::DockerTar(_) | Export::DockerImage { .. }))
    {
        ManifestFormat::Docker
    } else {
        ManifestFormat::Oci
    };
    let options = ImageOptions {
        format,
        source_date_epoch: epoch,
    };
    let image = session
        .phase("writing image", async {
            driver::make_image(output, &layers, &session.store, labels, &options)
        })
        .await?;
    let names = args.tags.clone();
    for e in exports {
        match e {
            Export::OciTar(dest) => export::write_oci_tar(&image, &names, dest)?,
            Export::OciDir(dest) => export::write_oci_dir(&image, &names, dest)?,
            Export::DockerTar(dest) => {
                let docker = driver::make_image(
                    output,
                    &layers,
                    &session.store,
                    labels,
                    &ImageOptions {
                        format: ManifestFormat::Docker,
                        source_date_epoch: epoch,
                    },
                )?;
                export::write_docker_tar(&docker, &names, dest)?
            }
            Export::Local(dest) => {
                let snap = executor.ensure_snapshot(&layers).await?;
                let dest = dest.clone();
                let mounted = match &snap {
                    None => None,
                    Some(name) => {
                        let mounts = session.snapshots.mounts(name).map_err(BuildError::from)?;
                        Some(driver::executor::Mounted::mount(
                            &mounts,
                            root.join("tmp")
                                .join(format!("export-{}", std::process::id())),
                        )?)
                    }
                };
                let src = match &mounted {
                    Some(m) => m.path().to_path_buf(),
                    None => {
                        std::fs::create_dir_all(&dest).map_err(|e| {
                            BuildError::Invalid(format!("creating {}: {e}", dest.display()))
                        })?;
                        continue;
                    }
                };
                export::export_local(&src, &dest)?;
            }
            Export::Image { .. } | Export::DockerImage { .. } => {}
        }
    }
    let record = driver::record_image(&session.store, &image, &names, &Platform::host())?;
    if push {
        driver::push_image(session, &record, &layers, &names).await?;
    }
    if let Some(p) = &args.metadata_file {
        export::write_metadata_file(p, &image, &names)?;
    }
    if let Some(p) = &args.iidfile {
        export::write_iidfile(p, &image)?;
    }
    Ok(image.manifest_descriptor().digest().to_string())
}

/// Ctrl-C or SIGTERM during the solve cancels it, so running steps are killed and their scratch
/// snapshots and mount points removed before forge exits, instead of the default action leaving
/// them for the next build to find. A second signal then acts as it normally would.
async fn cancel_on_signal(cancel: forge_builder::solver::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: restores the default disposition; no handler of ours runs.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
}

async fn make_runner(args: &BuildArgs, root: &Path) -> Result<Arc<Backend>, BuildError> {
    match args.runner {
        RunnerArg::Embedded => {
            use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner};
            let r = EmbeddedRunner::new(EmbeddedConfig::new(
                root.join("run"),
                root.join("cache-mounts"),
            ))
            .map_err(|e| BuildError::Invalid(format!("embedded runner: {e}")))?;
            Ok(Arc::new(Backend::Embedded(r)))
        }
        RunnerArg::Containerd => {
            use forge_runner::containerd::{ContainerdConfig, ContainerdRunner};
            let config = args
                .containerd_address
                .clone()
                .map(ContainerdConfig::new)
                .or_else(ContainerdConfig::from_env)
                // Cache mounts belong to the store, as with the embedded runner: a fresh store
                // starts them empty (the default, under the temp dir, outlived every store).
                .map(|config| ContainerdConfig {
                    cache_root: root.join("cache-mounts"),
                    ..config
                })
                .ok_or_else(|| {
                    BuildError::Invalid(
                        "--runner containerd needs --containerd-address or $CONTAINERD_ADDRESS"
                            .into(),
                    )
                })?;
            let r = ContainerdRunner::connect(config)
                .await
                .map_err(|e| BuildError::Invalid(format!("containerd runner: {e}")))?;
            Ok(Arc::new(Backend::Containerd(r)))
        }
    }
}

async fn close_runner(runner: Arc<Backend>) {
    if let Ok(Backend::Containerd(r)) = Arc::try_unwrap(runner) {
        let _ = r.close().await;
    }
}
