//! `forge build`: the flags `docker build` users know, parsed into a [`BuildRequest`], and the build's
//! events rendered while the library runs it. Nothing about what a build means lives here.

use forge_builder::api::BuildContext;
use forge_builder::cache_io::{CacheExport, CacheImport};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use forge_builder::api::{
    BuildError, BuildRequest, DockerfileSource, Export, RunnerChoice, Session, SessionOptions,
    prepare_process,
};
use forge_builder::events::{BuildId, EventRecord, Events};
use forge_builder::graph::Platform;
use forge_builder::solver::CancellationToken;
use forge_runner::spec::NetworkMode as StepNetwork;
use forge_snapshotter::compress::Compression;
use forge_snapshotter::store::default_root;

use crate::build_flags::{
    CompressionArg, output_compression, output_names, parse_add_host, parse_labels, parse_output,
    parse_secrets, parse_shm_size, parse_ssh, source_date_epoch,
};
use crate::progress::{self, ProgressMode};
use crate::{Failure, GraphArgs, failed, parse_build_args, render, usage};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RunnerArg {
    Embedded,
    Containerd,
}

/// `--isolation`: how the embedded runner isolates RUN steps.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum IsolationArg {
    /// The best mode that works here: namespaces, else chroot (`forge info` shows which).
    #[default]
    Auto,
    /// Mount, PID, network, IPC and UTS namespaces (in a user namespace when not root).
    Userns,
    /// chroot into copied snapshots, for containers that allow no namespace and no mount (root in
    /// a default docker or Kubernetes container); no /proc, the container's network.
    Chroot,
}

impl From<IsolationArg> for forge_builder::api::IsolationChoice {
    fn from(a: IsolationArg) -> Self {
        match a {
            IsolationArg::Auto => Self::Auto,
            IsolationArg::Userns => Self::Userns,
            IsolationArg::Chroot => Self::Chroot,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum NetworkArg {
    Default,
    None,
    Host,
}

/// An entitlement `--allow` grants (BuildKit's names).
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Entitlement {
    /// `RUN --security=insecure` runs without the sandbox: no seccomp filter, every capability.
    #[value(name = "security.insecure")]
    SecurityInsecure,
    /// `--network host` and `RUN --network=host` use the host's network, its loopback services
    /// included.
    #[value(name = "network.host")]
    NetworkHost,
}

/// `--call`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Call {
    Build,
    Check,
    Outline,
    Targets,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Print the build graph instead of building.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the Dockerfile's build checks (BuildKit's rules, under their names) instead of
    /// building: each finding with its file:line:column, exit 1 when there is any. Nothing is
    /// pulled: UndefinedVar needs a base image's environment and is checked in stages whose base
    /// is in the store (or scratch, or an earlier stage).
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,
    /// What to do instead of building, as `docker build --call` names it: build (the default),
    /// check (as --check), outline (the build arguments, secrets and ssh agents the target reads,
    /// with their defaults and the comments above them) or targets (the stages, with the comment
    /// above each FROM). Nothing is built or pulled for the last three.
    #[arg(long, value_enum, conflicts_with_all = ["dry_run", "check"])]
    pub call: Option<Call>,
    /// The older spelling of --call.
    #[arg(long, value_enum, hide = true, conflicts_with_all = ["dry_run", "check", "call"])]
    pub print: Option<Call>,
    #[command(flatten)]
    pub graph: GraphArgs,
    /// Name the image (`host:5000/app:1`); repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Add a line to every RUN step's /etc/hosts, NAME:IP (or NAME=IP); repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Add a label to the image, KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Resolve every base image at its registry, even one the store holds; an unreachable
    /// registry then fails the build. Without it, a base named without a registry (`FROM busybox`)
    /// that the store holds is used as stored, as docker uses its local images, and any other base
    /// is resolved at its registry, the store's copy used (with a warning) when that registry
    /// cannot be reached.
    #[arg(long)]
    pull: bool,
    /// buildx's "load the image into docker": forge has no daemon, and the image always goes to
    /// forge's store, so this only says how to hand it to docker (`-o type=docker,dest=- | docker
    /// load`).
    #[arg(long)]
    load: bool,
    /// Run every step, ignoring the cache.
    #[arg(long)]
    no_cache: bool,
    /// Run the steps of this stage (and everything after them) without the cache; repeatable.
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// A further build context, NAME=PATH (a directory) or NAME=docker-image://REF, that
    /// `COPY --from=NAME`, `RUN --mount=from=NAME` and (for an image) `FROM NAME` read in place of an
    /// image of that name; repeatable.
    #[arg(long = "build-context", value_name = "NAME=PATH|docker-image://REF", value_parser = BuildContext::parse)]
    build_contexts: Vec<(String, BuildContext)>,
    /// With -o type=local, write the image's owners even rootless (they are then subordinate ids
    /// on the host, which only root or `forge unpack`'s user namespace can change or remove);
    /// without it a rootless export is the caller's, as docker's client leaves one.
    #[arg(long)]
    keep_owners: bool,
    /// Read build results from a cache another build wrote, before running any step:
    /// type=registry,ref=REGISTRY/REPO:TAG (or just the reference) or type=local,src=DIR[,tag=T].
    /// Repeatable; tried in order. Layers are fetched only when a step needs them. A cache that
    /// is missing, unreachable or damaged is a warning, never a failed build.
    #[arg(long = "cache-from", value_name = "type=registry,ref=REF", value_parser = CacheImport::parse)]
    cache_from: Vec<CacheImport>,
    /// Write this build's results to a cache after it: type=registry,ref=REGISTRY/REPO:TAG or
    /// type=local,dest=DIR[,tag=T]; mode=min (the final image's steps, the default) or mode=max
    /// (every step of every stage); mounts=true adds the contents of RUN --mount=type=cache;
    /// ignore-error=true makes a failed export a warning. Repeatable.
    #[arg(long = "cache-to", value_name = "type=registry,ref=REF[,mode=max]", value_parser = CacheExport::parse)]
    cache_to: Vec<CacheExport>,
    /// A secret for RUN --mount=type=secret: id=ID,src=PATH or id=ID,env=VAR; repeatable.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    secrets: Vec<String>,
    /// An SSH agent socket for RUN --mount=type=ssh: default or ID=SOCKET; repeatable.
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    ssh: Vec<String>,
    /// The network of RUN steps that do not choose one: default is a private network whose only
    /// way out is forge's HTTP(S) proxy; host (needs --allow network.host) or none.
    #[arg(long, value_enum, default_value = "default")]
    network: NetworkArg,
    /// Grant an entitlement to the build's steps; repeatable.
    #[arg(long = "allow", value_enum, value_name = "ENTITLEMENT")]
    allow: Vec<Entitlement>,
    /// How progress is shown (on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Show no progress; print only the image ID (`sha256:` and the config digest), as `docker
    /// build -q` does. Without -q the manifest digest is printed.
    #[arg(short, long)]
    quiet: bool,
    /// Push every -t name to its registry.
    #[arg(long)]
    push: bool,
    /// An export: type=oci|docker|local|tar|image|registry, dest=..., tar=true|false, push=true,
    /// name=NAME (names the image as -t does); `-o DIR` and `-o -` as docker reads them;
    /// repeatable.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Write buildx-style build metadata here (JSON: containerimage.digest, the manifest's, and
    /// containerimage.config.digest, the image ID).
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Write the image ID (`sha256:` and the config digest, no newline) here, as docker does.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Layer compression of what leaves the store (push, -o oci/docker); default gzip (one deflate
    /// stream, on one core). `gzip-parallel` deflates on every core instead. An image
    /// kept only in the store has its layers stored with fast zstd unless this is given, and is
    /// re-encoded when it is exported later, as BuildKit compresses lazily.
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Compression level (gzip and gzip-parallel 0-9, zstd 1-22).
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,
    /// What runs RUN steps.
    #[arg(long, value_enum, default_value = "embedded")]
    runner: RunnerArg,
    /// How the embedded runner isolates RUN steps.
    #[arg(long, value_enum, env = "FORGE_ISOLATION", default_value = "auto")]
    isolation: IsolationArg,
    /// containerd's socket for --runner containerd (default $CONTAINERD_ADDRESS).
    #[arg(long, value_name = "SOCKET")]
    containerd_address: Option<PathBuf>,
    /// Memory limit of each RUN step (e.g. 512m, 2g), memory and swap together; a step that
    /// passes it is killed and the build says so. Needs a cgroup forge may write (root).
    #[arg(long, short = 'm', value_name = "BYTES")]
    memory: Option<forge_runner::Bytes>,
    /// CPU limit of each RUN step, in CPUs (e.g. 0.5, 2).
    #[arg(long, visible_alias = "cpu", value_name = "CPUS")]
    cpus: Option<forge_runner::NanoCpus>,
    /// Size of each RUN step's /dev/shm (e.g. 128m, 1g; default 64m, as in docker).
    #[arg(long, value_name = "BYTES", value_parser = parse_shm_size)]
    shm_size: Option<forge_runner::Bytes>,
    /// A resource limit of each RUN step, NAME=SOFT[:HARD] as docker takes it (nofile, nproc,
    /// core, stack, memlock, ...; -1 is unlimited); repeatable. Without it a step keeps forge's
    /// own limits, as BuildKit's steps keep buildkitd's.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<forge_runner::Ulimit>,
    /// How many steps may run at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// The store directory (default: $XDG_DATA_HOME/forge, ~/.local/share/forge, or /var/lib/forge
    /// for root).
    #[arg(long, env = "FORGE_ROOT")]
    pub(crate) root: Option<PathBuf>,
}

/// The exports the flags ask for: `-o` as given, `--push` turning on the push of image exports
/// (adding one if there is none); no `-o` at all means the store (and the registry with `--push`).
fn exports(args: &BuildArgs) -> Result<Vec<Export>, Failure> {
    let mut exports = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<Vec<_>, _>>()?;
    if exports.is_empty() {
        exports.push(Export::Image {
            push: args.push,
            oci_mediatypes: true,
        });
    } else if args.push {
        let mut any_image = false;
        for e in &mut exports {
            if let Export::Image { push, .. } = e {
                *push = true;
                any_image = true;
            }
        }
        if !any_image {
            exports.push(Export::Image {
                push: true,
                oci_mediatypes: true,
            });
        }
    }
    Ok(exports)
}

/// The request the flags describe. Usage errors (exit 2) are found here, before anything runs.
fn request(args: &BuildArgs) -> Result<BuildRequest, Failure> {
    let g = &args.graph;
    let stdin = Path::new("-");
    if g.context == stdin && g.file.as_deref() == Some(stdin) {
        return Err(usage(
            "error: the context and the Dockerfile cannot both be read from standard input (-)"
                .into(),
        ));
    }
    let url = forge_builder::api::is_url(&g.context.to_string_lossy());
    if g.context != stdin && !url && !g.context.is_dir() {
        return Err(usage(format!(
            "error: build context {} is not a directory",
            g.context.display()
        )));
    }
    let mut r = BuildRequest::new(g.context.clone());
    match &g.file {
        Some(f) if f == stdin => {
            r.dockerfile = DockerfileSource::Text {
                name: "Dockerfile (standard input)".into(),
                text: crate::read_stdin_dockerfile()?,
            };
        }
        Some(f) => r.dockerfile = DockerfileSource::Path(f.clone()),
        None => {}
    }
    r.target = g.target.clone();
    r.build_args = parse_build_args(&g.build_args)?;
    if let Some(p) = &g.platform {
        let want = Platform::parse(p).ok_or_else(|| {
            usage(format!(
                "error: invalid --platform {p:?}: expected os/arch[/variant], a known OS or architecture alone, or local"
            ))
        })?;
        let host = Platform::host();
        if want != host {
            return Err(usage(format!(
                "error: --platform {want}: only this machine's platform ({host}) can be built for now"
            )));
        }
        r.platform = Some(want);
    }
    r.exports = exports(args)?;
    r.tags = args.tags.clone();
    for name in output_names(&args.outputs) {
        if !r.tags.contains(&name) {
            r.tags.push(name);
        }
    }
    if r.pushes() && r.tags.is_empty() {
        return Err(usage(
            "error: --push needs at least one -t NAME (or -o type=registry,name=NAME)".into(),
        ));
    }
    for t in &r.tags {
        let parsed = forge_snapshotter::reference::Reference::parse(t)
            .map_err(|e| usage(format!("error: invalid tag {t:?}: {e}")))?;
        if parsed.digest().is_some() {
            return Err(usage(format!(
                "error: invalid tag {t:?}: a tag cannot contain a digest (the build makes the \
                 image, and so its digest)"
            )));
        }
    }
    r.labels = parse_labels(&args.labels)?;
    r.add_hosts = args
        .add_hosts
        .iter()
        .map(|h| parse_add_host(h))
        .collect::<Result<_, _>>()?;
    r.secrets = parse_secrets(&args.secrets)?;
    r.ssh = parse_ssh(&args.ssh)?;
    r.network = match args.network {
        NetworkArg::Default => StepNetwork::Sandbox,
        NetworkArg::None => StepNetwork::None,
        NetworkArg::Host => StepNetwork::Host,
    };
    r.allow_network_host = args.allow.contains(&Entitlement::NetworkHost);
    r.allow_insecure = args.allow.contains(&Entitlement::SecurityInsecure);
    r.limits = forge_runner::Limits {
        memory: args.memory,
        cpus: args.cpus,
    };
    r.shm_size = args.shm_size;
    // Later flags for the same limit win, as in docker.
    for u in &args.ulimits {
        r.ulimits.retain(|o| o.name != u.name);
        r.ulimits.push(*u);
    }
    r.source_date_epoch = source_date_epoch(&r.build_args)?;
    // `--compression` wins over an output's `compression=`.
    let (out_kind, out_level) = output_compression(&args.outputs)?;
    let chosen = (
        args.compression.or(out_kind),
        args.compression_level.or(out_level),
    );
    r.compression = match chosen {
        (None, None) => None,
        (kind, level) => Some(match kind.unwrap_or(CompressionArg::Gzip) {
            CompressionArg::Gzip => Compression::Gzip {
                level: level.unwrap_or(6).clamp(0, 9) as u32,
            },
            CompressionArg::GzipParallel => Compression::GzipParallel {
                level: level.unwrap_or(6).clamp(0, 9) as u32,
            },
            CompressionArg::Zstd => Compression::Zstd {
                level: level.unwrap_or(3).clamp(1, 22),
            },
            CompressionArg::Uncompressed => Compression::None,
        }),
    };
    r.pull = if args.pull {
        forge_builder::source::PullPolicy::Always
    } else {
        forge_builder::source::PullPolicy::Missing
    };
    r.cache.no_cache = args.no_cache;
    r.cache.no_cache_filter = args.no_cache_filter.clone();
    r.cache.import = args.cache_from.clone();
    r.build_contexts = args.build_contexts.iter().cloned().collect();
    r.keep_owners = args.keep_owners;
    r.cache.export = args.cache_to.clone();
    r.jobs = args.jobs;
    r.metadata_file = args.metadata_file.clone();
    r.iidfile = args.iidfile.clone();
    Ok(r)
}

/// Runs a build. Called after the user namespace is entered, before any thread starts.
pub fn build(args: &BuildArgs) -> Result<(), Failure> {
    let mut request = request(args)?;
    let stdout_exports = request
        .exports
        .iter()
        .filter(|e| {
            matches!(e, Export::OciTar(p) | Export::DockerTar(p) | Export::Tar(p)
                if forge_builder::export::is_stdout(p))
        })
        .count();
    if stdout_exports > 1 {
        return Err(usage(
            "error: only one --output may write to standard output (dest=-)".to_string(),
        ));
    }
    let to_stdout = stdout_exports == 1;
    if args.load && !args.quiet {
        errln!(
            "note: --load: there is no docker daemon here; the image goes to forge's store, as \
             every build's does (-o type=docker,dest=- | docker load hands it to docker)"
        );
    }
    if to_stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(usage(
            "error: refusing to write a tar to the terminal (--output dest=-): redirect standard \
             output to a file or a pipe, or give dest=FILE"
                .to_string(),
        ));
    }
    let session = open_session(
        args.root.as_deref(),
        &args.insecure,
        args.runner,
        args.isolation,
        args.containerd_address.as_ref(),
    )?;
    // `forge build -`: the context (or a lone Dockerfile) from standard input, kept until the
    // build is over.
    let _streamed = if args.graph.context == Path::new("-") {
        let streamed = session
            .context_from_stream(&mut std::io::stdin().lock())
            .map_err(|e| failed(format!("error: {e}")))?;
        streamed.apply(&mut request);
        Some(streamed)
    } else if forge_builder::api::is_url(&args.graph.context.to_string_lossy()) {
        // `forge build https://host/context.tar.gz`: downloaded into the store's scratch space.
        let url = args.graph.context.to_string_lossy().into_owned();
        let fetched = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?
            .block_on(session.context_from_url(&url))
            .map_err(|e| failed(format!("error: {e}")))?;
        fetched.apply(&mut request);
        Some(fetched)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<EventRecord>();
    let printer = runtime.spawn(progress::run(mode, rx, Box::new(std::io::stderr())));
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        let interrupt = tokio::spawn(cancel_on_signal(cancel.clone()));
        let events = Events::new(BuildId::new(), Some(tx));
        let outcome = session.build(&request, events, cancel).await;
        interrupt.abort();
        outcome
    });
    let summary = runtime.block_on(printer).ok();
    note_isolation(&session);
    match result {
        Ok(outcome) => {
            // Json progress is records only, one per line; a reader counts from them.
            if !matches!(mode, ProgressMode::Quiet | ProgressMode::Json)
                && let Some(s) = summary
            {
                errln!("{s}");
            }
            // With a tar on standard output the digest would corrupt it: it is left out there.
            // `-q` prints what `docker build -q` prints: the image ID, the config's digest.
            if !to_stdout {
                if args.quiet {
                    outln!("{}", outcome.image.id());
                } else {
                    outln!("{}", outcome.digest);
                }
            }
            Ok(())
        }
        Err(failure) => Err(failed(render_error(&failure.error, mode))),
    }
}

/// What `forge run` and `forge serve` open their session with: the runner of steps and jobs, the
/// registries reached over plain http, the store.
#[derive(clap::Args)]
pub(crate) struct SessionArgs {
    /// What runs the steps and jobs.
    #[arg(long, value_enum, default_value = "embedded")]
    pub(crate) runner: RunnerArg,
    /// How the embedded runner isolates steps and jobs (auto: the best that works here).
    #[arg(long, value_enum, env = "FORGE_ISOLATION", default_value = "auto")]
    pub(crate) isolation: IsolationArg,
    /// containerd's socket for --runner containerd (default $CONTAINERD_ADDRESS).
    #[arg(long, value_name = "SOCKET")]
    pub(crate) containerd_address: Option<PathBuf>,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub(crate) insecure: Vec<String>,
    /// The store directory (default as for forge build).
    #[arg(long, env = "FORGE_ROOT")]
    pub(crate) root: Option<PathBuf>,
}

impl SessionArgs {
    /// The session these flags ask for, in the store at `root`.
    pub(crate) fn open(&self, root: &Path) -> Result<Session, Failure> {
        open_session(
            Some(root),
            &self.insecure,
            self.runner,
            self.isolation,
            self.containerd_address.as_ref(),
        )
    }
}

/// The session `forge build` and `forge run` work in: the store at `root` (or the default one),
/// the registries, and the runner, with the process prepared for it.
pub(crate) fn open_session(
    root: Option<&Path>,
    insecure: &[String],
    runner: RunnerArg,
    isolation: IsolationArg,
    containerd_address: Option<&PathBuf>,
) -> Result<Session, Failure> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => default_root().map_err(|e| failed(format!("error: {e}")))?,
    };
    let runner = match runner {
        RunnerArg::Embedded => RunnerChoice::Embedded,
        RunnerArg::Containerd => RunnerChoice::Containerd {
            address: containerd_address.cloned(),
        },
    };
    let isolation = prepare_process(&runner, isolation.into(), &root.join("run"))
        .map_err(|e| failed(format!("error: {e}")))?;
    let session = Session::open(SessionOptions {
        root,
        insecure_registries: insecure.to_vec(),
        runner,
        isolation,
    })
    .map_err(|e| failed(format!("error: {e}")))?;
    note_isolation(&session);
    Ok(session)
}

/// Says, once per process, what the isolation RUN steps get gives up against full isolation, as
/// soon as it is known: when the session opens if it was chosen then, else after the build or run
/// whose first step had it probed for (a build whose steps all come from the cache never does).
pub(crate) fn note_isolation(session: &Session) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(Ok(isolation)) = session.isolation().chosen() else {
        return;
    };
    let limits = isolation.limits();
    if limits.is_empty() || SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    errln!("note: RUN steps are isolated with {isolation}, which gives up:");
    for limit in limits {
        errln!("  - {limit}");
    }
}

/// A build error as the terminal shows it: a Dockerfile error with its line and a caret, any other
/// with its causes; with `-q` and json progress (which did not show it) a failed step's last lines.
fn render_error(e: &BuildError, mode: ProgressMode) -> String {
    if let BuildError::Lower { file, text, error } = e {
        return render(
            file,
            text,
            error.span,
            &error.kind.to_string(),
            error.hint.as_deref(),
        );
    }
    let mut message = match e {
        // A base image that could not be pulled, shown at its FROM line.
        BuildError::At {
            file,
            text,
            span,
            error,
        } if !file.is_empty() => render(file, text, Some(*span), &chain(error.as_ref()), None),
        _ => format!("error: {}", chain(e)),
    };
    if disk_full(e) {
        message.push_str(
            "\nhint: a disk is full (the one of the path above); what was built and cached before \
             is intact. If it is the one holding forge's store, `forge prune` gives back what no \
             image or running build needs (`--all` cache mounts too); then run the build again",
        );
    }
    if let Some(hint) = unreachable_hint(e) {
        message.push_str(&hint);
    }
    // The plain and tty views showed a failed step's last lines already; -q and json did not.
    if matches!(mode, ProgressMode::Quiet | ProgressMode::Json)
        && let Some(tail) = e.failed_step_tail()
    {
        message.push_str("\nlast output:");
        for line in tail {
            message.push_str(&format!("\n  | {line}"));
        }
    }
    message
}

/// What to do when a base image's registry could not be reached, if that is why the build failed.
fn unreachable_hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use forge_snapshotter::registry::{PullError, Unreachable};
    let mut cur = Some(e);
    let (registry, how) = loop {
        let c = cur?;
        // thiserror hands a boxed source on as the box.
        let pull = c
            .downcast_ref::<PullError>()
            .or_else(|| c.downcast_ref::<Box<PullError>>().map(|b| &**b));
        if let Some(found) = pull.and_then(PullError::unreachable) {
            break found;
        }
        cur = c.source();
    };
    let what = match how {
        Unreachable::NoSuchHost => format!(
            "no host is named {registry} (the resolver says so; forge did not ask again): check the name"
        ),
        Unreachable::Dns => {
            format!("the name {registry} could not be resolved: this machine may have no network")
        }
        Unreachable::Connect => format!("nothing answered at {registry}"),
    };
    Some(format!(
        "\nhint: {what}. Without a network, build from a base forge can reach: an image in its \
         store (`forge images`; a short name such as `FROM busybox` uses the stored copy without \
         asking Docker Hub), or a full reference on a registry or mirror you can reach (`FROM \
         127.0.0.1:5000/library/busybox`)"
    ))
}

/// Whether ENOSPC is among the causes (as an `io::Error`, or in a cause that kept only its text).
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::ENOSPC)
            || c.to_string().contains("(os error 28)")
        {
            return true;
        }
        cur = c.source();
    }
    false
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

/// The signal that cancelled this process's build or run (0: none came).
static CANCELLED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signal that cancelled the build or run, if one did: a failure it caused ends the process
/// by that signal (see `main`), as the shell and `make` expect of a command interrupted.
pub(crate) fn cancelled_by() -> Option<nix::sys::signal::Signal> {
    nix::sys::signal::Signal::try_from(CANCELLED_BY.load(std::sync::atomic::Ordering::SeqCst)).ok()
}

/// Ctrl-C, SIGTERM or SIGHUP during the build cancels it, so running steps are killed and their scratch
/// snapshots and mount points removed before forge exits, instead of the default action leaving
/// them for the next build to find. A second signal then acts as it normally would.
///
/// The handlers are installed when this is called, not when the returned future is first polled:
/// a signal that comes as soon as the build has started (while its Dockerfile is read, say) must
/// cancel it rather than find the default action still in place. Must be called in a runtime.
pub(crate) fn cancel_on_signal(
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    // SIGHUP too: a closed terminal or ssh session must clean up like Ctrl-C, not leave run/ and
    // tmp/ behind.
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    async move {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = handlers else {
            return;
        };
        let received = tokio::select! {
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = hup.recv() => nix::sys::signal::Signal::SIGHUP,
        };
        CANCELLED_BY.store(received as i32, std::sync::atomic::Ordering::SeqCst);
        cancel.cancel();
        for sig in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGHUP,
        ] {
            // SAFETY: restores the default disposition; no handler of ours runs.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
}
