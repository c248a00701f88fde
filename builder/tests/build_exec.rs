//! The build executor and driver on a real store, snapshotter (overlay and copy backends) and the
//! embedded runner, with no registry: every Dockerfile starts `FROM scratch` and copies the host's
//! static busybox from the context, so RUN steps have a shell. Needs root; skips without it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forge_builder::api::{self, BuildError, SolveSettings};
use forge_builder::events::{BuildEvent, BuildId, Events};
use forge_builder::export;
use forge_builder::frontend::dockerfile::lower::{LowerOptions, lower};
use forge_builder::frontend::dockerfile::parser;
use forge_builder::frontend::dockerignore::Dockerignore;
use forge_builder::graph::Graph;
use forge_builder::ops::{BuildExecutor, Built, ExecError, ExecutorConfig, Layer, LocalDir};
use forge_builder::scratch::Scratch;
use forge_builder::solver::{DiskCache, Solution, SolveError};
use forge_builder::source::context::{ContextSnapshot, SnapshotOptions};
use forge_runner::backend::Backend;
use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner};
use forge_runner::spec::NetworkMode;
use forge_snapshotter::compress::Compression;
use forge_snapshotter::layer::LayerOptions;
use forge_snapshotter::snapshot::{AnySnapshotter, BackendKind, Kind, Snapshotter};
use forge_snapshotter::store::Store;
use forge_testsupport::{BUSYBOX, BUSYBOX_BASE as BASE, Context};

const BACKENDS: [BackendKind; 2] = [BackendKind::Overlay, BackendKind::Copy];

/// Root and a static busybox, or `false` after a SKIP line; a panic under FORGE_E2E=require.
fn prerequisites() -> bool {
    forge_testsupport::root_and_busybox("RUN steps with the embedded runner")
}

/// A store, its snapshots, the embedded runner and a disk cache in a temporary directory.
struct Bench {
    tmp: tempfile::TempDir,
    backend: BackendKind,
    store: Store,
    snapshots: Arc<AnySnapshotter>,
    runner: Arc<Backend>,
    cache: Arc<DiskCache>,
    layer: LayerOptions,
    secrets: HashMap<String, Vec<u8>>,
    network: NetworkMode,
    allow_network_host: bool,
    /// Only the target's chain of layers is written as blobs (as `forge build` plans it); the
    /// other steps' layers stay snapshots. Off: every layer is written.
    target_chain_only: bool,
}

/// One finished solve.
struct Solved {
    solution: Solution<Built>,
    layers: Vec<Layer>,
    executor: Arc<BuildExecutor>,
    events: Vec<BuildEvent>,
}

impl Bench {
    fn new(backend: BackendKind) -> Bench {
        let tmp = forge_testsupport::scratch("forge-build-exec-");
        let root = tmp.path().join("root");
        let store = Store::open(&root).unwrap();
        let snapshots = AnySnapshotter::open(&root.join("snapshots"), Some(backend)).unwrap();
        assert_eq!(snapshots.backend(), backend);
        let runner = EmbeddedRunner::new(EmbeddedConfig::new(
            root.join("run"),
            root.join("cache-mounts"),
        ))
        .unwrap();
        let cache = DiskCache::open(root.join("build-cache")).unwrap();
        Bench {
            tmp,
            backend,
            store,
            snapshots: Arc::new(snapshots),
            runner: Arc::new(Backend::Embedded(runner)),
            cache: Arc::new(cache),
            layer: LayerOptions::default(),
            secrets: HashMap::new(),
            network: NetworkMode::Sandbox,
            allow_network_host: false,
            target_chain_only: false,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    /// A context directory `name` holding busybox and `files` (path, content); a path ending in
    /// `/` is a directory.
    fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        Context::busybox(self.tmp.path().join(name))
            .files(files)
            .into_path()
    }

    /// Drops the snapshots (metadata and data) and opens an empty snapshotter in their place.
    fn forget_snapshots(&mut self) {
        let dir = self.root().join("snapshots");
        std::fs::remove_dir_all(&dir).unwrap();
        self.snapshots = Arc::new(AnySnapshotter::open(&dir, Some(self.backend)).unwrap());
    }

    async fn solve(&self, dockerfile: &str, context: &Path) -> Result<Solved, BuildError> {
        self.solve_with(dockerfile, context, SolveSettings::default())
            .await
    }

    /// Lowers `dockerfile` (with the context's .dockerignore) and solves its first output with a
    /// fresh executor, as one `forge build` process would.
    async fn solve_with(
        &self,
        dockerfile: &str,
        context: &Path,
        settings: SolveSettings,
    ) -> Result<Solved, BuildError> {
        let graph = Arc::new(lower_dockerfile(dockerfile, context));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Events::new(BuildId::new(), Some(tx));
        let executor = Arc::new(self.executor(&graph, context, &events)?);
        let solved = api::solve(
            graph.clone(),
            executor.clone(),
            self.cache.clone(),
            &settings,
            &events,
        )
        .await;
        drop(events);
        // The executor still holds a sender: take what arrived so far.
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(ev.event);
        }
        let solution = solved?;
        let layers = solution
            .get(graph.outputs[0].root)
            .expect("target solved")
            .output
            .layers()
            .expect("a filesystem")
            .to_vec();
        Ok(Solved {
            solution,
            layers,
            executor,
            events,
        })
    }

    /// An executor on this bench's store for `graph`, with `context` as the build context (its
    /// .dockerignore applied), in scratch space of its own (under the store's tmp/, alive while
    /// the executor lives, as a build's is).
    fn executor(
        &self,
        graph: &Graph,
        context: &Path,
        events: &Events,
    ) -> Result<BuildExecutor, ExecError> {
        let ignore = Dockerignore::from_patterns(ignore_patterns(context)).unwrap();
        let snapshot = ContextSnapshot::take(
            context,
            &SnapshotOptions {
                ignore: Some(&ignore),
                state_dir: None,
                threads: 2,
            },
        )
        .unwrap();
        BuildExecutor::new(
            ExecutorConfig {
                store: self.store.clone(),
                snapshots: self.snapshots.clone(),
                runner: self.runner.clone(),
                scratch: Arc::new(Scratch::create(&self.root(), &BuildId::new()).unwrap()),
                locals: HashMap::from([(
                    "context".to_string(),
                    LocalDir {
                        dir: context.to_path_buf(),
                        snapshot: Arc::new(snapshot),
                    },
                )]),
                images: HashMap::new(),
                secrets: self.secrets.clone(),
                ssh: HashMap::new(),
                layers: forge_builder::ops::LayerPlan {
                    leaves: self
                        .target_chain_only
                        .then(|| graph.layer_chain(graph.outputs[0].root)),
                    ..forge_builder::ops::LayerPlan::uniform(self.layer)
                },
                default_network: self.network,
                allow_network_host: self.allow_network_host,
                allow_insecure: false,
                limits: Default::default(),
                http: None,
                events: events.clone(),
                run_env: Vec::new(),
                join_network: None,
                beside_step: None,
                proxy_args: Vec::new(),
                remote: None,
                mount_seeds: None,
                test_restore: Vec::new(),
                masked: Vec::new(),
            },
            graph,
        )
    }

    /// Snapshots that are not committed (a step's scratch space) still in the snapshotter.
    fn active_snapshots(&self) -> Vec<String> {
        self.snapshots
            .list()
            .unwrap()
            .into_iter()
            .filter(|i| i.kind != Kind::Committed)
            .map(|i| i.key)
            .collect()
    }

    /// Mount points under this bench's directory still in this process's mount table.
    fn leftover_mounts(&self) -> Vec<String> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = self.tmp.path().to_string_lossy().into_owned();
        table
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&here)))
            .map(str::to_string)
            .collect()
    }

    /// Neither scratch snapshots nor mounts were left behind.
    fn assert_clean(&self) {
        assert_eq!(
            self.active_snapshots(),
            Vec::<String>::new(),
            "active snapshots left"
        );
        assert_eq!(self.leftover_mounts(), Vec::<String>::new(), "mounts left");
    }
}

/// The context's .dockerignore patterns (none without the file).
fn ignore_patterns(context: &Path) -> Vec<String> {
    match std::fs::read_to_string(context.join(".dockerignore")) {
        Ok(text) => Dockerignore::parse(&text).unwrap().patterns().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// `dockerfile` lowered with the context's .dockerignore.
fn lower_dockerfile(dockerfile: &str, context: &Path) -> Graph {
    let df = parser::parse_file("Dockerfile", dockerfile).expect("Dockerfile parses");
    lower(
        &df,
        &LowerOptions {
            dockerignore: ignore_patterns(context),
            ..LowerOptions::default()
        },
    )
    .expect("Dockerfile lowers")
    .graph
}

/// One entry of a layer tar.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TarEntry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<String>,
    data: Vec<u8>,
}

/// The entries of a layer blob, by path without leading `./` or trailing `/`.
fn layer_entries(store: &Store, layer: &Layer) -> BTreeMap<String, TarEntry> {
    assert!(
        store.has_blob(&layer.digest),
        "blob {} not in the store",
        layer.digest
    );
    let file = std::fs::File::open(store.blob_path(&layer.digest)).unwrap();
    let reader: Box<dyn Read> = if layer.media_type.ends_with("+gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if layer.media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(file).unwrap())
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let header = entry.header().clone();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(
            path,
            TarEntry {
                kind: header.entry_type(),
                mode: header.mode().unwrap() & 0o7777,
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                link,
                data,
            },
        );
    }
    out
}

fn assert_file(entries: &BTreeMap<String, TarEntry>, path: &str, content: &[u8]) {
    let e = entries
        .get(path)
        .unwrap_or_else(|| panic!("{path} not in layer: {:?}", entries.keys()));
    assert_eq!(e.kind, tar::EntryType::Regular, "{path}");
    assert_eq!(
        String::from_utf8_lossy(&e.data),
        String::from_utf8_lossy(content),
        "{path}"
    );
}

/// The ExecError behind a failed step.
fn step_error(e: &BuildError) -> &ExecError {
    match e {
        BuildError::Solve(SolveError::Step { source, .. }) => source
            .downcast_ref::<ExecError>()
            .unwrap_or_else(|| panic!("not an executor error: {source}")),
        other => panic!("not a step failure: {other}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn layers_hold_what_the_dockerfile_says_and_a_second_solve_runs_nothing() {
    if !prerequisites() {
        return;
    }
    let busybox = std::fs::read(BUSYBOX).unwrap();
    for backend in BACKENDS {
        let mut bench = Bench::new(backend);
        let ctx = bench.context("ctx", &[("app.txt", "application\n")]);
        let df = format!(
            "{BASE}RUN echo hello > /greeting && mkdir -p /data && echo one > /data/one && rm /bin/ls\nCOPY app.txt /app/\n"
        );
        runtime().block_on(async {
            let first = bench.solve(&df, &ctx).await.unwrap();
            let layers = &first.layers;
            assert_eq!(layers.len(), 4, "{backend:?}: {layers:?}");
            assert!(first.solution.executed() >= 4, "{backend:?}");

            let l0 = layer_entries(&bench.store, &layers[0]);
            let bb = &l0["bin/busybox"];
            assert_eq!(bb.data, busybox, "{backend:?}: busybox copied whole");
            assert_eq!((bb.uid, bb.gid), (0, 0));
            assert_eq!(bb.mode & 0o111, 0o111, "executable");

            let l1 = layer_entries(&bench.store, &layers[1]);
            assert_eq!(l1["bin/sh"].kind, tar::EntryType::Symlink);
            assert_eq!(l1["bin/sh"].link.as_deref(), Some("/bin/busybox"));

            let l2 = layer_entries(&bench.store, &layers[2]);
            assert_file(&l2, "greeting", b"hello\n");
            assert_file(&l2, "data/one", b"one\n");
            assert!(
                l2.contains_key("bin/.wh.ls"),
                "{backend:?}: deleting a file of a lower layer leaves a whiteout: {:?}",
                l2.keys()
            );
            assert!(
                !l2.contains_key("bin/busybox"),
                "unchanged files stay below"
            );

            let l3 = layer_entries(&bench.store, &layers[3]);
            assert_file(&l3, "app/app.txt", b"application\n");
            bench.assert_clean();

            // Same graph, same cache: nothing runs and the layers are the same blobs.
            let second = bench.solve(&df, &ctx).await.unwrap();
            assert_eq!(second.solution.executed(), 0, "{backend:?}");
            assert_eq!(&second.layers, layers);
            assert!(second.events.iter().any(|e| matches!(
                e,
                BuildEvent::Solver(forge_builder::solver::Event::Cached { .. })
            )));
        });

        // Without any snapshot the cached result still exports: the snapshot comes back from
        // the blobs, and a new step on top of it runs on that rebuilt filesystem.
        bench.forget_snapshots();
        let third_layers = runtime().block_on(async {
            let third = bench.solve(&df, &ctx).await.unwrap();
            assert_eq!(third.solution.executed(), 0, "{backend:?}");
            let name = third
                .executor
                .ensure_snapshot(&third.layers)
                .await
                .unwrap()
                .unwrap();
            let mounts = bench.snapshots.mounts(&name).unwrap();
            let dest = bench.tmp.path().join("exported");
            {
                let m = forge_builder::ops::Mounted::mount(&mounts, bench.tmp.path().join("mnt"))
                    .unwrap();
                forge_builder::export::export_local(m.path(), &dest, false).unwrap();
            }
            assert_eq!(
                std::fs::read_to_string(dest.join("greeting")).unwrap(),
                "hello\n"
            );
            assert_eq!(
                std::fs::read_to_string(dest.join("app/app.txt")).unwrap(),
                "application\n"
            );
            assert!(!dest.join("bin/ls").exists(), "whiteout applied");
            assert_eq!(std::fs::read(dest.join("bin/busybox")).unwrap(), busybox);
            third.layers
        });
        bench.forget_snapshots();
        runtime().block_on(async {
            let more = format!("{df}RUN cat /greeting /data/one > /both\n");
            let fourth = bench.solve(&more, &ctx).await.unwrap();
            assert_eq!(
                fourth.solution.executed(),
                1,
                "{backend:?}: only the new step"
            );
            assert_eq!(&fourth.layers[..4], &third_layers[..]);
            let top = layer_entries(&bench.store, &fourth.layers[4]);
            assert_file(&top, "both", b"hello\none\n");
            bench.assert_clean();
        });
    }
}

/// The committed snapshots' names, sorted.
fn committed_snapshots(bench: &Bench) -> Vec<String> {
    let mut names: Vec<String> = bench
        .snapshots
        .list()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == Kind::Committed)
        .map(|i| i.key)
        .collect();
    names.sort();
    names
}

/// The chain id of each prefix of `layers` (the snapshot names of a layer list), sorted.
fn chain_names(layers: &[Layer]) -> Vec<String> {
    let mut names: Vec<String> = (1..=layers.len())
        .map(|n| {
            forge_snapshotter::layer::chain_id(layers[..n].iter().map(|l| &l.diff_id))
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn layers_written_behind_the_build_leave_snapshots_under_their_chain_ids() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let mut bench = Bench::new(backend);
        // Layers made again are the same bytes.
        bench.layer.source_date_epoch = Some(1_700_000_000);
        let ctx = bench.context("ctx", &[]);
        let df = format!("{BASE}RUN echo a > /a\nRUN echo b > /b\n");
        runtime().block_on(async {
            // Each step's layer is written while the next step runs on its snapshot; the image
            // and the cache get the written layers, and the snapshots end named by them.
            let first = bench.solve(&df, &ctx).await.unwrap();
            assert!(
                first
                    .layers
                    .iter()
                    .all(|l| l.unwritten.is_none() && l.size > 0)
            );
            assert_file(&layer_entries(&bench.store, &first.layers[2]), "a", b"a\n");
            assert_file(&layer_entries(&bench.store, &first.layers[3]), "b", b"b\n");
            let names = chain_names(&first.layers);
            assert_eq!(committed_snapshots(&bench), names, "{backend:?}");
            bench.assert_clean();

            // A step added on top runs on the snapshot found by that name: nothing is unpacked
            // again, one snapshot more.
            let more = format!("{df}RUN cat /a /b > /ab\n");
            let second = bench.solve(&more, &ctx).await.unwrap();
            assert_eq!(second.solution.executed(), 1, "{backend:?}");
            assert_eq!(second.layers[..4], first.layers[..]);
            assert_file(
                &layer_entries(&bench.store, &second.layers[4]),
                "ab",
                b"a\nb\n",
            );
            assert_eq!(committed_snapshots(&bench), chain_names(&second.layers));

            // Built again without the cache, every layer comes out the same: each new snapshot
            // merges into the one that has its name, and none is left under a stand-in name.
            let settings = SolveSettings {
                no_cache: true,
                ..SolveSettings::default()
            };
            let third = bench.solve_with(&df, &ctx, settings).await.unwrap();
            assert!(
                third.solution.executed() >= 4,
                "{backend:?}: every step ran again"
            );
            // The same bytes; each layer's `created` is when its step ran again.
            let bytes = |layers: &[forge_builder::ops::Layer]| -> Vec<_> {
                layers
                    .iter()
                    .map(|l| {
                        (
                            l.media_type.clone(),
                            l.digest.clone(),
                            l.size,
                            l.diff_id.clone(),
                        )
                    })
                    .collect()
            };
            assert_eq!(bytes(&third.layers), bytes(&first.layers));
            assert_eq!(committed_snapshots(&bench), chain_names(&second.layers));
            bench.assert_clean();
        });
    }
}

#[test]
fn a_kept_only_stage_on_layers_written_behind_is_served_from_the_cache_next_time() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let mut bench = Bench::new(backend);
        bench.target_chain_only = true;
        let ctx = bench.context("ctx", &[]);
        // `base` is the target's chain (written behind); `side`, on it, is kept only as its
        // snapshot, committed while base's layers were still being written.
        let df = format!(
            "{}FROM base AS side\nRUN echo side > /side\nFROM base\nCOPY --from=side /side /side\n",
            BASE.replacen("FROM scratch", "FROM scratch AS base", 1)
        );
        runtime().block_on(async {
            let first = bench.solve(&df, &ctx).await.unwrap();
            assert!(first.layers.iter().all(|l| l.unwritten.is_none()));
            assert_file(
                &layer_entries(&bench.store, &first.layers[2]),
                "side",
                b"side\n",
            );
            let side_layers = first
                .solution
                .iter()
                .filter_map(|(_, s)| s.output.layers())
                .find(|l| l.last().is_some_and(|l| l.unwritten.is_some()))
                .expect("the side stage's kept-only layer")
                .to_vec();
            assert_eq!(
                side_layers[..2],
                first.layers[..2],
                "on base's written layers"
            );
            // Its snapshot carries the name its record gives: the next build finds it.
            let kept = forge_builder::ops::unwritten_snapshots(&side_layers);
            assert!(bench.snapshots.stat(&kept[0]).is_ok(), "{backend:?}");
            let second = bench.solve(&df, &ctx).await.unwrap();
            assert_eq!(second.solution.executed(), 0, "{backend:?}");
            assert_eq!(second.layers, first.layers);
            bench.assert_clean();
        });
    }
}

#[test]
fn copy_from_the_context_honours_dockerignore_and_gives_root_owned_files() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context(
            "ctx",
            &[
                (
                    ".dockerignore",
                    "*.log\n!keep.log\nsecret\ndocs/**/*.md\n!docs/README.md\nbuild?/\n",
                ),
                ("a.log", "noise"),
                ("keep.log", "kept"),
                ("secret/key", "private"),
                ("docs/README.md", "readme"),
                ("docs/sub/deep.md", "hidden"),
                ("docs/guide.txt", "guide"),
                ("build1/out", "artefact"),
                ("build10/out", "kept: ? is one character"),
                ("src/main.c", "int main;"),
            ],
        );
        std::os::unix::fs::symlink("secret/key", ctx.join("to-secret")).unwrap();
        // Host owners mean nothing in the image.
        for p in ["keep.log", "src/main.c", "src", "docs/README.md"] {
            std::os::unix::fs::chown(ctx.join(p), Some(1234), Some(5678)).unwrap();
        }
        let df = "FROM scratch\nCOPY . /ctx/\nCOPY *.log /logs/\n";
        runtime().block_on(async {
            let s = bench.solve(df, &ctx).await.unwrap();
            let all = layer_entries(&bench.store, &s.layers[0]);
            for kept in [
                "ctx/keep.log",
                "ctx/docs/README.md",
                "ctx/docs/guide.txt",
                "ctx/src/main.c",
                "ctx/busybox",
                "ctx/build10/out",
            ] {
                assert!(
                    all.contains_key(kept),
                    "{backend:?}: {kept} missing: {:?}",
                    all.keys()
                );
            }
            for gone in [
                "ctx/a.log",
                "ctx/secret/key",
                "ctx/secret",
                "ctx/docs/sub/deep.md",
                "ctx/build1/out",
            ] {
                assert!(
                    !all.contains_key(gone),
                    "{backend:?}: {gone} copied: {:?}",
                    all.keys()
                );
            }
            for (path, e) in &all {
                assert_eq!((e.uid, e.gid), (0, 0), "{backend:?}: {path} not root-owned");
            }
            assert_file(&all, "ctx/keep.log", b"kept");

            // A wildcard source sees the same filtered context.
            let logs = layer_entries(&bench.store, &s.layers[1]);
            let names: Vec<&String> = logs.keys().collect();
            assert_eq!(names, ["logs", "logs/keep.log"], "{backend:?}");

            // A link to an ignored file is no way around the rules: the source is missing.
            let err = bench
                .solve("FROM scratch\nCOPY to-secret /x\n", &ctx)
                .await
                .err()
                .expect("a link to an ignored file is not copied");
            let text = format!("{err} {}", step_error(&err));
            assert!(text.contains("to-secret"), "{text}");

            // An ignored file named outright is an error that names it.
            let err = bench
                .solve("FROM scratch\nCOPY a.log /x\n", &ctx)
                .await
                .err()
                .expect("copying an ignored file fails");
            let text = format!("{err} {}", step_error(&err));
            assert!(text.contains("a.log"), "{text}");
            bench.assert_clean();
        });
    }
}

#[test]
fn copy_from_a_stage_with_chown_resolves_names_in_the_destination_stage() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context("ctx", &[]);
        let df = format!(
            "{BASE}\
RUN mkdir -p /out/sub && echo made > /out/sub/file && chmod 0640 /out/sub/file
FROM scratch AS final
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/etc\"]
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo 'app:x:1500:1600::/home/app:/bin/sh' > /etc/passwd; echo 'staff:x:2700:' > /etc/group\"]
COPY --from=0 --chown=app /out/ /srv/
COPY --from=0 --chown=app:staff /out/sub/file /other
"
        );
        runtime().block_on(async {
            let s = bench.solve(&df, &ctx).await.unwrap();
            let n = s.layers.len();
            let srv = layer_entries(&bench.store, &s.layers[n - 2]);
            let e = &srv["srv/sub/file"];
            assert_eq!((e.uid, e.gid), (1500, 1600), "{backend:?}: primary group");
            assert_eq!(e.mode, 0o640, "mode kept");
            assert_eq!(e.data, b"made\n");
            assert_eq!((srv["srv/sub"].uid, srv["srv/sub"].gid), (1500, 1600));
            let other = layer_entries(&bench.store, &s.layers[n - 1]);
            assert_eq!(
                (other["other"].uid, other["other"].gid),
                (1500, 2700),
                "{backend:?}"
            );

            // A name the destination does not know is root, as BuildKit makes it, and a warning
            // naming the step and the name.
            let unknown = df.replace("--chown=app:staff", "--chown=nobody-here");
            let s = bench.solve(&unknown, &ctx).await.unwrap();
            let other = layer_entries(&bench.store, s.layers.last().unwrap());
            assert_eq!((other["other"].uid, other["other"].gid), (0, 0));
            let warned: Vec<&String> = s
                .events
                .iter()
                .filter_map(|e| match e {
                    BuildEvent::Warning { message } => Some(message),
                    _ => None,
                })
                .collect();
            assert!(
                warned.len() == 1
                    && warned[0].contains("COPY --from=0 --chown=nobody-here")
                    && warned[0].contains("unknown user \"nobody-here\""),
                "{backend:?}: {warned:?}"
            );
            bench.assert_clean();
        });
    }
}

#[test]
fn a_failing_run_reports_code_and_tail_and_leaves_nothing_behind() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context("ctx", &[]);
        let df = format!(
            "{BASE}RUN echo partial > /half && for i in 1 2 3 4 5; do echo line$i; done && echo oops >&2 && exit 7\n"
        );
        runtime().block_on(async {
            let err = bench.solve(&df, &ctx).await.err().expect("the step fails");
            assert!(err.to_string().contains("line 4"), "{err}");
            match step_error(&err) {
                ExecError::Exit {
                    code, tail, argv, ..
                } => {
                    assert_eq!(*code, 7, "{backend:?}");
                    assert!(tail.iter().any(|l| l.contains("line5")), "{tail:?}");
                    assert!(tail.iter().any(|l| l.contains("oops")), "{tail:?}");
                    assert!(argv.join(" ").contains("exit 7"), "{argv:?}");
                }
                other => panic!("{backend:?}: {other}"),
            }
            bench.assert_clean();
            // The store still builds.
            let ok = bench
                .solve(&format!("{BASE}RUN echo fine > /f\n"), &ctx)
                .await
                .unwrap();
            assert_file(
                &layer_entries(&bench.store, ok.layers.last().unwrap()),
                "f",
                b"fine\n",
            );
            bench.assert_clean();
        });
    }
}

#[test]
fn cancel_stops_a_long_step_promptly_and_cleans_up() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context("ctx", &[]);
        let df = format!("{BASE}RUN echo started && sleep 30 && echo never > /never\n");
        runtime().block_on(async {
            // Warm the cache for the base, so the timing below is the sleep step alone.
            bench.solve(BASE, &ctx).await.unwrap();
            let settings = SolveSettings::default();
            let cancel = settings.cancel.clone();
            let canceller = async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                cancel.cancel();
                Instant::now()
            };
            let (solved, cancelled_at) =
                tokio::join!(bench.solve_with(&df, &ctx, settings), canceller);
            let late = cancelled_at.elapsed();
            let err = solved.err().expect("the build is cancelled");
            let is_cancel = matches!(err, BuildError::Solve(SolveError::Cancelled))
                || matches!(
                    &err,
                    BuildError::Solve(SolveError::Step { source, .. })
                        if matches!(source.downcast_ref::<ExecError>(), Some(ExecError::Cancelled))
                );
            assert!(is_cancel, "{backend:?}: {err}");
            assert!(
                late < Duration::from_secs(5),
                "{backend:?}: stopped {late:?} after cancel"
            );
            bench.assert_clean();
            // No `sleep 30` of ours survives.
            for p in std::fs::read_dir("/proc").unwrap().flatten() {
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                assert!(
                    !cmd.contains("echo started && sleep 30"),
                    "{backend:?}: step process {} still runs",
                    p.path().display()
                );
            }
        });
    }
}

#[test]
fn two_solves_of_one_graph_at_once_on_one_store_agree() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Arc::new(Bench::new(backend));
        let ctx = bench.context("ctx", &[("data", "payload")]);
        let df = format!(
            "{BASE}RUN echo $RANDOM$RANDOM > /random && sleep 1\nCOPY data /data\nRUN cat /data /random > /joined\n"
        );
        // A third build of another graph runs beside them, its executor as fresh as theirs.
        let other = format!("{BASE}RUN echo other > /other && sleep 1\n");
        runtime().block_on(async {
            bench.solve(BASE, &ctx).await.unwrap();
            let tasks: Vec<_> = [&df, &df, &other]
                .into_iter()
                .map(|df| {
                    let bench = bench.clone();
                    let df = df.clone();
                    let ctx = ctx.clone();
                    tokio::spawn(async move { bench.solve(&df, &ctx).await.map(|s| s.layers) })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap().unwrap());
            }
            // The random file makes this proof that each step ran once: two runs would differ.
            assert_eq!(results[0], results[1], "{backend:?}: same layers");
            assert_eq!(results[0].len(), 5);
            assert_file(
                &layer_entries(&bench.store, results[2].last().unwrap()),
                "other",
                b"other\n",
            );
            for l in results.iter().flatten() {
                assert!(bench.store.has_blob(&l.digest));
            }
            bench.assert_clean();
        });
    }
}

#[test]
fn zstd_export_reencodes_only_built_layers_with_the_same_diff_ids() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Overlay);
    let ctx = bench.context("ctx", &[]);
    let df = format!("{BASE}RUN echo z > /z\n");
    runtime().block_on(async {
        let s = bench.solve(&df, &ctx).await.unwrap();
        assert!(s.layers.iter().all(|l| l.media_type.ends_with("+gzip")));
        // A layer as a base image gives it: from a registry repository, kept as it is.
        let mut layers = s.layers.clone();
        layers[0].source = Some("127.0.0.1:5000/base".into());
        let base = std::collections::HashSet::from([layers[0].digest.clone()]);
        // A layer a registry cache served: from the cache's repository, but a step's own. It is
        // re-encoded as the build's own layers are (a push sent the cache's zstd as it was).
        layers[1].source = Some("127.0.0.1:5000/app/cache".into());
        let out =
            export::with_compression(&bench.store, &layers, &base, Compression::Zstd { level: 3 })
                .await
                .unwrap();
        assert_eq!(out.len(), layers.len());
        assert_eq!(out[0], layers[0], "a base layer is not re-encoded");
        for (before, after) in layers.iter().zip(&out).skip(1) {
            assert!(after.media_type.ends_with("+zstd"), "{}", after.media_type);
            assert_eq!(after.diff_id, before.diff_id);
            assert_ne!(after.digest, before.digest);
            assert!(bench.store.has_blob(&after.digest));
            assert_eq!(
                layer_entries(&bench.store, after),
                layer_entries(&bench.store, before),
                "same files"
            );
            // The blob really is zstd (magic 28 b5 2f fd).
            let mut magic = [0u8; 4];
            std::fs::File::open(bench.store.blob_path(&after.digest))
                .unwrap()
                .read_exact(&mut magic)
                .unwrap();
            assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd]);
        }
        // Asking for what they already are changes nothing.
        let again =
            export::with_compression(&bench.store, &out, &base, Compression::Zstd { level: 3 })
                .await
                .unwrap();
        assert_eq!(again, out);
    });
}

/// `forge push` of a stored image with zstd layers (pulled from another tool, here one whose
/// config is JSON as Go writes it: `\u0026`, its own key order) re-encodes them with gzip and
/// re-serialised the config: the pushed image had another ID than the one pulled. The config is
/// now sent byte for byte.
#[test]
fn a_stored_zstd_image_is_pushed_with_its_config_byte_for_byte() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Overlay);
    let ctx = bench.context("ctx", &[]);
    let df = format!("{BASE}RUN echo z > /z\n");
    runtime().block_on(async {
        let s = bench.solve(&df, &ctx).await.unwrap();
        let zstd = export::with_compression(
            &bench.store,
            &s.layers,
            &Default::default(),
            Compression::Zstd { level: 3 },
        )
        .await
        .unwrap();
        let diff_ids: Vec<String> = zstd.iter().map(|l| format!("\"{}\"", l.diff_id)).collect();
        let config = format!(
            "{{\"os\":\"linux\",\"architecture\":\"amd64\",\"config\":{{\"Env\":[\"A=b\\u0026c\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
            diff_ids.join(",")
        );
        let blobs = zstd
            .iter()
            .map(|l| export::LayerBlob {
                path: bench.store.blob_path(&l.digest),
                digest: l.digest.to_string().parse().unwrap(),
                diff_id: l.diff_id.clone(),
                size: l.size,
                media_type: l.media_type.as_str().into(),
            })
            .collect();
        let options = export::ImageOptions {
            format: export::ManifestFormat::Oci,
            source_date_epoch: None,
        };
        let image = export::wrap_config(config.clone().into_bytes(), None, blobs, &options).unwrap();
        let platform = forge_builder::graph::Platform::host();
        let name = "127.0.0.1:5000/t/foreign:1".to_string();
        export::record_image(&bench.store, &image, std::slice::from_ref(&name), &platform).unwrap();
        let (record, layers) = export::stored_for_push(&bench.store, &name).await.unwrap();
        assert_eq!(record.config.digest.to_string(), image.id().to_string());
        assert_eq!(bench.store.read_blob(&record.config.digest).unwrap(), config.as_bytes());
        assert!(layers.iter().all(|l| l.media_type.ends_with("+gzip")), "{layers:?}");
        assert_ne!(record.manifest.digest.to_string(), image.manifest_descriptor().digest().to_string());
    });
}

#[test]
fn secrets_are_required_when_marked_and_masked_line_by_line() {
    if !prerequisites() {
        return;
    }
    let mut bench = Bench::new(BackendKind::Copy);
    let ctx = bench.context("ctx", &[]);
    let df = format!(
        "{BASE}RUN --mount=type=secret,id=token,required=true cat /run/secrets/token > /dev/null\n"
    );
    runtime().block_on(async {
        let err = bench.solve(&df, &ctx).await.err().expect("fails");
        assert!(
            matches!(step_error(&err), ExecError::MissingSecret { id } if id == "token"),
            "{err}"
        );
        bench.assert_clean();
    });
    // Given, its value is masked in the output (line by line: `cat` prints a multi-line secret
    // one line at a time) and absent from every layer.
    bench.secrets.insert(
        "token".into(),
        b"s3cr3t-value-42\nsecond-line-xyz\n".to_vec(),
    );
    let df = format!(
        "{BASE}RUN --mount=type=secret,id=token,required=true cat /run/secrets/token && wc -c < /run/secrets/token > /len\n"
    );
    runtime().block_on(async {
        let s = bench.solve(&df, &ctx).await.unwrap();
        let lines: Vec<&str> = s
            .events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::Output { line, .. } => Some(line.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines.iter().filter(|l| **l == "****").count(),
            2,
            "{lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("s3cr3t") || l.contains("second-line")),
            "{lines:?}"
        );
        let top = layer_entries(&bench.store, s.layers.last().unwrap());
        assert_file(&top, "len", b"32\n");
        for l in &s.layers {
            for (path, e) in layer_entries(&bench.store, l) {
                let data = String::from_utf8_lossy(&e.data);
                assert!(
                    !data.contains("s3cr3t") && !data.contains("second-line"),
                    "secret in {path}"
                );
                assert!(
                    !path.starts_with("run/secrets/"),
                    "secret mount point {path} in a layer"
                );
            }
        }
        bench.assert_clean();
    });
}

#[test]
fn layers_match_the_host_files_metadata() {
    if !prerequisites() {
        return;
    }
    // The context's modes survive a COPY (only owners are reset).
    let bench = Bench::new(BackendKind::Overlay);
    let ctx = bench.context("ctx", &[("tool", "#!/bin/sh\n"), ("conf", "x")]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ctx.join("tool"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::set_permissions(ctx.join("conf"), std::fs::Permissions::from_mode(0o600)).unwrap();
    runtime().block_on(async {
        let s = bench
            .solve("FROM scratch\nCOPY tool conf /etc/app/\n", &ctx)
            .await
            .unwrap();
        let e = layer_entries(&bench.store, &s.layers[0]);
        assert_eq!(e["etc/app/tool"].mode, 0o751);
        assert_eq!(e["etc/app/conf"].mode, 0o600);
        assert_eq!(
            e["etc/app/tool"].mode,
            std::fs::metadata(ctx.join("tool")).unwrap().mode() & 0o7777
        );
    });
}

#[test]
fn the_build_network_keys_steps_that_do_not_choose_one() {
    if !prerequisites() {
        return;
    }
    let mut bench = Bench::new(BackendKind::Copy);
    let ctx = bench.context("ctx", &[]);
    let df = format!("{BASE}RUN echo ran > /ran\nRUN --network=none echo fixed > /fixed\n");
    runtime().block_on(async {
        let sandbox = bench.solve(&df, &ctx).await.unwrap();
        assert!(sandbox.solution.executed() >= 2);
    });
    // `--network none` after a build on the sandbox network: the steps that left the choice to
    // the build run again (and what is built on them), the COPY before them does not.
    bench.network = NetworkMode::None;
    runtime().block_on(async {
        let none = bench.solve(&df, &ctx).await.unwrap();
        let ran: Vec<String> = none
            .events
            .iter()
            .filter_map(|e| match e {
                BuildEvent::Solver(forge_builder::solver::Event::Started {
                    description, ..
                }) => Some(description.clone()),
                _ => None,
            })
            .collect();
        assert!(ran.iter().any(|d| d.contains("echo ran")), "{ran:?}");
        assert!(!ran.iter().any(|d| d.contains("COPY")), "{ran:?}");
        let again = bench.solve(&df, &ctx).await.unwrap();
        assert_eq!(again.solution.executed(), 0);
    });
    // The host's network (granted) is a third key: the step runs again.
    bench.network = NetworkMode::Host;
    bench.allow_network_host = true;
    runtime().block_on(async {
        let host = bench.solve(&df, &ctx).await.unwrap();
        assert!(host.solution.executed() >= 1);
    });
    // Every result stays recorded: back on the sandbox nothing runs.
    bench.network = NetworkMode::Sandbox;
    runtime().block_on(async {
        let sandbox = bench.solve(&df, &ctx).await.unwrap();
        assert_eq!(sandbox.solution.executed(), 0);
    });
}

/// Issue 11.4: the executor runs no step on the host's network unless the build granted it, a
/// `RUN --network=host` or a build whose default is the host's.
#[test]
fn the_hosts_network_needs_the_grant() {
    if !prerequisites() {
        return;
    }
    let mut bench = Bench::new(BackendKind::Copy);
    let ctx = bench.context("ctx", &[]);
    let asks = format!("{BASE}RUN --network=host echo ran > /ran\n");
    let leaves = format!("{BASE}RUN echo ran > /ran\n");
    runtime().block_on(async {
        let err = bench.solve(&asks, &ctx).await.err().expect("refused");
        assert!(
            format!("{err:?}").contains("NetworkHostNotAllowed"),
            "{err:?}"
        );
    });
    bench.network = NetworkMode::Host;
    runtime().block_on(async {
        let err = bench.solve(&leaves, &ctx).await.err().expect("refused");
        assert!(
            format!("{err:?}").contains("NetworkHostNotAllowed"),
            "{err:?}"
        );
    });
    bench.allow_network_host = true;
    runtime().block_on(async {
        bench.solve(&asks, &ctx).await.unwrap();
        bench.solve(&leaves, &ctx).await.unwrap();
    });
}

#[test]
fn a_bind_mount_of_the_context_shows_only_what_dockerignore_keeps() {
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context(
            "ctx",
            &[
                (".dockerignore", ".env\nprivate/\n"),
                (".env", "API_KEY=hunter2"),
                ("private/key", "hunter3"),
                ("src/main.c", "int main;"),
            ],
        );
        std::os::unix::fs::symlink("src/main.c", ctx.join("main-link")).unwrap();
        let df = format!(
            "{BASE}RUN --mount=type=bind,target=/ctx ls -A /ctx /ctx/src > /listing && cat /ctx/main-link > /via-link && ! touch /ctx/src/x 2>/dev/null\n\
             RUN --mount=type=bind,target=/w,rw echo changed > /w/src/main.c && echo new > /w/new && cat /w/src/main.c > /seen\n"
        );
        runtime().block_on(async {
            let s = bench.solve(&df, &ctx).await.unwrap();
            let n = s.layers.len();
            let ro = layer_entries(&bench.store, &s.layers[n - 2]);
            let listing = String::from_utf8_lossy(&ro["listing"].data).into_owned();
            assert!(
                listing.contains("main.c") && listing.contains(".dockerignore"),
                "{listing}"
            );
            assert!(
                !listing.contains(".env") && !listing.contains("private"),
                "{backend:?}: ignored entries visible in the bind mount: {listing}"
            );
            assert_eq!(ro["via-link"].data, b"int main;");
            let rw = layer_entries(&bench.store, &s.layers[n - 1]);
            assert_eq!(rw["seen"].data, b"changed\n");
            assert!(
                !rw.contains_key("w/new"),
                "writes to the bind stay out of the layer"
            );
            bench.assert_clean();
        });
        // The host's context is untouched: writes went to a copy, links were only unlinked.
        assert_eq!(
            std::fs::read_to_string(ctx.join("src/main.c")).unwrap(),
            "int main;"
        );
        assert!(!ctx.join("new").exists());
        assert_eq!(
            std::fs::read_to_string(ctx.join(".env")).unwrap(),
            "API_KEY=hunter2"
        );
        runtime().block_on(async {
            let err = bench
                .solve(
                    &format!("{BASE}RUN --mount=type=bind,target=/ctx cat /ctx/.env\n"),
                    &ctx,
                )
                .await
                .err()
                .expect("an ignored file cannot be read through the mount");
            assert!(matches!(step_error(&err), ExecError::Exit { .. }), "{err}");
            bench.assert_clean();
        });
    }
}

/// A view holds the bound part of the context whole when it is made by several threads: a
/// read-only bind of a directory with an ignored file in it (hard links) and a writable one
/// (copies), each of hundreds of files in nested directories, show every kept file with its
/// content and mode, and the view's snapshots are gone after the build.
#[test]
fn a_view_of_many_files_holds_every_kept_file() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Overlay);
    let mut files: Vec<(String, String)> = Vec::new();
    for d in 0..6 {
        for f in 0..80 {
            files.push((format!("many/d{d}/sub/f{f}"), format!("{d}.{f}\n")));
        }
    }
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .chain([(".dockerignore", "many/d3/sub/f7\n")])
        .collect();
    let ctx = bench.context("ctx", &borrowed);
    let exe = ctx.join("many/d5/sub/f79");
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o751)).unwrap();
    let count = "find /m -type f | wc -l; cat /m/d0/sub/f0 /m/d5/sub/f79; stat -c %a /m/d5/sub/f79; \
                 test -e /m/d3/sub/f7 && echo ignored-seen; true";
    let df = format!(
        "{BASE}RUN --mount=type=bind,source=many,target=/m sh -c '({count}) > /ro'\n\
         RUN --mount=type=bind,source=many,target=/m,rw sh -c '({count}) > /rw'\n"
    );
    runtime().block_on(async {
        let s = bench.solve(&df, &ctx).await.unwrap();
        let n = s.layers.len();
        let ro = layer_entries(&bench.store, &s.layers[n - 2]);
        let rw = layer_entries(&bench.store, &s.layers[n - 1]);
        let want = b"479\n0.0\n5.79\n751\n";
        assert_eq!(
            String::from_utf8_lossy(&ro["ro"].data),
            String::from_utf8_lossy(want)
        );
        assert_eq!(
            String::from_utf8_lossy(&rw["rw"].data),
            String::from_utf8_lossy(want)
        );
        bench.assert_clean();
    });
}

#[test]
fn a_cache_mount_starts_from_its_from_stage_once_and_keeps_what_steps_add() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Overlay);
    let ctx = bench.context("ctx", &[]);
    let install =
        "COPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";
    let df = format!(
        "FROM scratch AS seed\n{install}\
         RUN mkdir -p /out/sub && echo seeded > /out/sub/file && chown -R 1000:1000 /out && chmod 0750 /out && ln -s /etc /out/etc-link\n\
         FROM scratch\n{install}\
         RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/out stat -c '%u:%g %a' /c /c/sub/file > /first && cat /c/sub/file >> /first && readlink /c/etc-link >> /first && echo changed > /c/sub/file\n\
         RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/out cat /c/sub/file > /second\n\
         RUN --mount=type=cache,id=owned,target=/o,uid=1000,gid=1000,mode=0700 stat -c '%u:%g %a' /o > /owned\n"
    );
    runtime().block_on(async {
        let s = bench.solve(&df, &ctx).await.unwrap();
        let mut files = BTreeMap::new();
        for layer in &s.layers {
            files.extend(layer_entries(&bench.store, layer));
        }
        // The new cache is a copy of the stage's /out: owners, modes and the link as they were.
        assert_file(
            &files,
            "first",
            b"1000:1000 750\n1000:1000 644\nseeded\n/etc\n",
        );
        // The next step finds the cache as the first left it: the seed is not copied again.
        assert_file(&files, "second", b"changed\n");
        // uid/gid/mode without `from`: the directory lowering makes is the seed.
        assert_file(&files, "owned", b"1000:1000 700\n");
        assert!(
            !files
                .keys()
                .any(|k| k.starts_with("c/") || k.starts_with("o/")),
            "cache content in a layer: {:?}",
            files.keys()
        );
        bench.assert_clean();
    });
    assert_eq!(
        std::fs::read_to_string(bench.root().join("cache-mounts/v1/seeded/0/sub/file")).unwrap(),
        "changed\n"
    );
}

#[test]
fn a_failed_build_hands_back_what_it_solved() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Copy);
    let ctx = bench.context("ctx", &[]);
    let session = api::Session::open(api::SessionOptions {
        root: bench.root(),
        ..api::SessionOptions::default()
    })
    .unwrap();
    let mut request = api::BuildRequest::new(&ctx);
    request.dockerfile = api::DockerfileSource::Text {
        name: "Dockerfile".into(),
        text: format!("{BASE}RUN echo ok > /ok\nRUN echo no && exit 5\n"),
    };
    runtime().block_on(async {
        let failure = session
            .build(&request, Events::discard(), Default::default())
            .await
            .expect_err("the last step fails");
        assert!(
            failure.error.failed_step_tail().is_some(),
            "{}",
            failure.error
        );
        // Every vertex reported done is in the partial solution, the failed one is not.
        let done: Vec<_> = failure.vertices.iter().filter(|v| v.ran()).collect();
        assert!(done.len() >= 3, "{:?}", failure.vertices);
        for v in &done {
            let s = failure
                .solved
                .get(v.vertex)
                .expect("a done vertex is solved");
            assert!(!s.cached, "{}", v.description);
        }
        let failed = failure
            .vertices
            .iter()
            .find(|v| v.error.is_some())
            .expect("a failed vertex is reported");
        assert!(failed.description.contains("exit 5"), "{failed:?}");
        assert!(failure.solved.get(failed.vertex).is_none());
        let ok = done
            .iter()
            .find(|v| v.description.contains("echo ok"))
            .expect("the step before ran");
        let layers = failure
            .solved
            .get(ok.vertex)
            .unwrap()
            .output
            .layers()
            .unwrap();
        assert_file(
            &layer_entries(&bench.store, layers.last().unwrap()),
            "ok",
            b"ok\n",
        );

        // Again: what was solved comes from the cache this time.
        let again = session
            .build(&request, Events::discard(), Default::default())
            .await
            .expect_err("still fails");
        let s = again.solved.get(ok.vertex).expect("solved again");
        assert!(s.cached);
        assert_eq!(s.key, failure.solved.get(ok.vertex).unwrap().key);
    });
}

/// `BASE` with two test steps on it as the output's gates: one that fails after writing a JUnit
/// report (and a log) and one that passes and leaves none of its artifact paths.
fn graph_with_test_steps(context: &Path) -> Graph {
    use forge_builder::graph::{
        ExecOp, GraphBuilder, Mount, MountKind, NetworkMode as GraphNetwork, Op, SecurityMode,
        TestStep,
    };
    let base = lower_dockerfile(BASE, context);
    let mut b = GraphBuilder::new();
    for v in &base.vertices {
        b.add(v.op.clone(), v.description.clone(), v.line);
    }
    let root = base.outputs[0].root;
    let test = |b: &mut GraphBuilder, script: &str, artifacts: &[&str]| {
        b.add_in_stage(
            "test",
            Op::Exec(ExecOp {
                args: vec!["/bin/sh".into(), "-c".into(), script.into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                network: GraphNetwork::None,
                security: SecurityMode::Sandbox,
                platform: forge_builder::graph::Platform::host(),
                mounts: vec![Mount {
                    target: "/".into(),
                    kind: MountKind::Bind {
                        input: Some(root),
                        source_path: "/".into(),
                        readonly: false,
                        output: true,
                    },
                }],
                test: Some(TestStep {
                    artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
                }),
                extra_hosts: Vec::new(),
                ulimits: Vec::new(),
                shm_size: None,
            }),
            format!("[test] {script}"),
            None,
        )
    };
    let failing = test(
        &mut b,
        "mkdir -p /reports && echo '<testsuite failures=\"1\"/>' > /reports/junit.xml \
         && echo ran > /run.log && echo checked 3 things && echo one failed >&2 && exit 3",
        &["/reports", "/run.log", "/missing"],
    );
    let passing = test(&mut b, "true", &["/nothing/here"]);
    let mut output = base.outputs[0].clone();
    output.gates = vec![failing, passing];
    b.add_output(output);
    b.finish()
}

#[test]
fn a_test_step_gives_its_exit_code_artifacts_and_log_and_only_a_pass_is_served_from_cache() {
    use forge_builder::ops::Artifacts;
    use forge_builder::solver::{SolveOptions, Solver};
    if !prerequisites() {
        return;
    }
    for backend in BACKENDS {
        let bench = Bench::new(backend);
        let ctx = bench.context("ctx", &[]);
        let graph = Arc::new(graph_with_test_steps(&ctx));
        let gates = graph.outputs[0].gates.clone();
        let solve = || async {
            let executor = bench.executor(&graph, &ctx, &Events::discard()).unwrap();
            let solved = Solver::new(
                Arc::new(executor),
                bench.cache.clone(),
                SolveOptions::default(),
            )
            .solve(graph.clone(), &[0])
            .await;
            solved.expect("a failing test is a result, not an error")
        };

        let first = runtime().block_on(solve());
        let failed = first.get(gates[0]).unwrap();
        assert!(!failed.cached);
        let Built::Test {
            exit_code: 3,
            artifacts:
                Some(Artifacts {
                    digest,
                    size,
                    paths,
                }),
            log: Some(log),
        } = &failed.output
        else {
            panic!("{backend:?}: {:?}", failed.output);
        };
        assert_eq!(
            paths,
            &["/reports", "/run.log"],
            "the missing path is left out"
        );
        assert_eq!(
            bench
                .store
                .open_blob(digest)
                .unwrap()
                .metadata()
                .unwrap()
                .len(),
            *size
        );
        let mut files = BTreeMap::new();
        let mut tar = tar::Archive::new(bench.store.open_blob(digest).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            files.insert(
                entry.path().unwrap().to_string_lossy().into_owned(),
                content,
            );
        }
        assert_eq!(
            files.get("reports/junit.xml").map(String::as_str),
            Some("<testsuite failures=\"1\"/>\n"),
            "{files:?}"
        );
        assert_eq!(files.get("run.log").map(String::as_str), Some("ran\n"));
        // The step's output is its log, both streams.
        let mut text = String::new();
        bench
            .store
            .open_blob(&log.digest)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        // Two pipes: the order between the streams is the order lines arrived in.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, ["checked 3 things", "one failed"]);
        assert_eq!((log.lines, log.size), (2, text.len() as u64));
        let passed = first.get(gates[1]).unwrap();
        assert_eq!(
            passed.output,
            Built::Test {
                exit_code: 0,
                artifacts: None,
                log: None,
            }
        );
        bench.assert_clean();

        // A fresh executor on the same cache: the passing verdict comes from its record; the
        // failing one runs again (a failure is never served from the cache).
        let second = runtime().block_on(solve());
        let (one, two) = (first.get(gates[1]).unwrap(), second.get(gates[1]).unwrap());
        assert!(two.cached, "{backend:?}");
        assert_eq!((&one.output, one.key), (&two.output, two.key));
        let again = second.get(gates[0]).unwrap();
        assert!(!again.cached, "{backend:?}: a failed verdict was reused");
        assert_eq!(again.key, failed.key);
        assert!(matches!(again.output, Built::Test { exit_code: 3, .. }));
        assert_eq!(second.executed(), 1);
        bench.assert_clean();
    }
}

#[test]
fn keep_going_reports_skipped_steps_with_the_failure_they_waited_for() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new(BackendKind::Copy);
    let ctx = bench.context("ctx", &[]);
    let graph = Arc::new(lower_dockerfile(
        &format!("{BASE}RUN exit 3\nRUN echo never > /never\n"),
        &ctx,
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = Events::new(BuildId::new(), Some(tx));
    let executor = Arc::new(bench.executor(&graph, &ctx, &events).unwrap());
    let settings = SolveSettings {
        keep_going: true,
        ..SolveSettings::default()
    };
    let failure = runtime()
        .block_on(api::solve(
            graph.clone(),
            executor,
            bench.cache.clone(),
            &settings,
            &events,
        ))
        .expect_err("a step fails");
    let SolveError::Failed { failures, skipped } = &failure.error else {
        panic!("{:?}", failure.error);
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].description.contains("echo never"));
    assert!(
        graph
            .vertex(skipped[0].failed)
            .description
            .contains("exit 3")
    );
    assert!(
        failure.solved.len() >= 3,
        "the steps before are solved: {}",
        failure.solved.len()
    );
    drop(events);
    // Announced as a solver event naming the step it waited for.
    let mut announced = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let BuildEvent::Solver(forge_builder::solver::Event::Skipped {
            description,
            failed_description,
            ..
        }) = ev.event
        {
            announced.push((description, failed_description));
        }
    }
    assert_eq!(
        announced,
        vec![(
            skipped[0].description.clone(),
            skipped[0].failed_description.clone()
        )]
    );
    bench.assert_clean();
}
