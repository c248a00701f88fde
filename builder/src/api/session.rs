//! What builds share: the store (blobs, images, cache records), the snapshotter, the registry client
//! and the choice of runner. One session serves any number of builds, one after another or at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use forge_runner::backend::Backend;
pub use forge_runner::embedded::{DeferredIsolation, Isolation, IsolationChoice};
use forge_snapshotter::registry::{RegistryClient, RegistryConfig};
use forge_snapshotter::snapshot::{AnySnapshotter, BackendKind};
use forge_snapshotter::store::Store;

use super::BuildError;

/// What runs RUN steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunnerChoice {
    /// forge's own namespaces: no daemon, rootless.
    #[default]
    Embedded,
    /// containerd's runc shim, at `address` (`$CONTAINERD_ADDRESS` when `None`).
    Containerd { address: Option<PathBuf> },
}

/// How a session is opened.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The store's directory.
    pub root: PathBuf,
    /// Registries (`host[:port]`) that may be reached over plain http; loopback always may.
    pub insecure_registries: Vec<String>,
    pub runner: RunnerChoice,
    /// How the embedded runner isolates steps, as [`prepare_process`] chose it or left it to the
    /// first step.
    pub isolation: DeferredIsolation,
}

/// A session's snapshotter, opened by the first that needs it. A store whose snapshots are made
/// keeps their backend, and opening it only reads which; a new store's backend depends on the
/// isolation (without mounts, the chroot isolation, only copied snapshots can be used), which is
/// probed for first. A build asks for the snapshotter when it first unpacks, copies or runs, so
/// that probe passes beside its start.
pub(crate) struct LazySnapshots {
    root: PathBuf,
    /// The store's snapshots were made already (their backend is recorded) as the session opened.
    recorded: bool,
    runner: RunnerChoice,
    isolation: DeferredIsolation,
    opened: OnceLock<Result<Arc<AnySnapshotter>, String>>,
}

impl LazySnapshots {
    /// Whether opening asks nothing of the isolation that it does not know already.
    fn opens_at_once(&self) -> bool {
        self.runner != RunnerChoice::Embedded || self.isolation.chosen().is_some() || self.recorded
    }

    /// The snapshotter, opened on the first call (later calls wait for it).
    pub(crate) fn get(&self) -> Result<&Arc<AnySnapshotter>, BuildError> {
        self.opened
            .get_or_init(|| self.open())
            .as_ref()
            .map_err(|e| BuildError::Invalid(e.clone()))
    }

    fn open(&self) -> Result<Arc<AnySnapshotter>, String> {
        // A layered store meets a mode that cannot mount at its first mount, with the same error.
        let cannot_mount = |i: Result<Isolation, String>| i.is_ok_and(|i| !i.may_mount());
        let copies_only = self.runner == RunnerChoice::Embedded
            && match self.isolation.chosen() {
                Some(chosen) => cannot_mount(chosen),
                None if self.recorded => false,
                None => cannot_mount(self.isolation.get()),
            };
        let backend = copies_only.then_some(BackendKind::Copy);
        AnySnapshotter::open(&self.root, backend)
            .map(Arc::new)
            .map_err(|e| {
                let store = self.root.parent().unwrap_or(&self.root);
                format!("snapshots under {}: {e}", store.display())
            })
    }
}

/// Everything builds share. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    pub(crate) root: PathBuf,
    /// The store had no metadata as the session opened: its builds pull their bases. In a store
    /// that has images nothing loads the trusted roots before a request needs them, and a
    /// rebuild's walk keeps the cores.
    pub(crate) fresh: bool,
    pub(crate) store: Store,
    pub(crate) snapshots: Arc<LazySnapshots>,
    pub(crate) registry: Arc<RegistryClient>,
    pub(crate) runner: RunnerChoice,
    pub(crate) isolation: DeferredIsolation,
}

impl Session {
    /// Opens (creating if needed) the store at `options.root` and its snapshotter.
    pub fn open(options: SessionOptions) -> Result<Session, BuildError> {
        // Absolute, so that the paths a runner hands on (containerd's binds and step directories,
        // which runc would resolve inside a task's bundle) name the store whatever the directory.
        let root = std::path::absolute(&options.root).unwrap_or(options.root);
        let store = Store::open(&root)
            .map_err(|e| BuildError::Invalid(format!("store {}: {e}", root.display())))?;
        // A new store's metadata file is made beside the build, not by its commit at the end
        // (best effort: that commit makes it when this could not). A new store pulls its bases
        // too: a build that reaches a registry over https starts loading the trusted roots as
        // soon as it knows so (see `roots.rs`).
        let fresh = !store.has_metadata();
        if fresh {
            let store = store.clone();
            let _ = std::thread::Builder::new()
                .name("forge-meta".into())
                .spawn(move || store.make_metadata());
        }
        let snapshots_root = root.join("snapshots");
        let snapshots = Arc::new(LazySnapshots {
            recorded: AnySnapshotter::recorded(&snapshots_root).is_some(),
            root: snapshots_root,
            runner: options.runner.clone(),
            isolation: options.isolation.clone(),
            opened: OnceLock::new(),
        });
        if snapshots.opens_at_once() {
            snapshots.get()?;
        } else {
            // A new store's snapshotter waits for the isolation probe (forked children that make
            // namespaces and mounts, a few milliseconds): on a thread of its own, while the build
            // parses, walks its context and pulls its bases, which need no snapshot yet.
            let snapshots = snapshots.clone();
            let _ = std::thread::Builder::new()
                .name("forge-probe".into())
                .spawn(move || snapshots.get().map(drop));
        }
        let registry = RegistryClient::new(RegistryConfig {
            insecure: options.insecure_registries,
            ..RegistryConfig::default()
        });
        Ok(Session {
            root,
            fresh,
            store,
            snapshots,
            registry: Arc::new(registry),
            runner: options.runner,
            isolation: options.isolation,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The snapshotter; a new store's is opened by the first caller (see [`LazySnapshots`]).
    pub fn snapshots(&self) -> Result<&Arc<AnySnapshotter>, BuildError> {
        self.snapshots.get()
    }

    pub fn registry(&self) -> &Arc<RegistryClient> {
        &self.registry
    }

    /// How the embedded runner isolates steps in this session (see [`DeferredIsolation`]).
    pub fn isolation(&self) -> &DeferredIsolation {
        &self.isolation
    }

    /// A runner for one build. Embedded runners are cheap; a containerd runner holds a connection
    /// and a lease, which [`close_runner`] gives back.
    pub(crate) async fn runner(&self) -> Result<Arc<Backend>, BuildError> {
        match &self.runner {
            RunnerChoice::Embedded => {
                use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner};
                let r = EmbeddedRunner::new(EmbeddedConfig {
                    isolation: self.isolation.clone(),
                    ..EmbeddedConfig::new(self.root.join("run"), self.root.join("cache-mounts"))
                })
                .map_err(|e| BuildError::Invalid(format!("embedded runner: {e}")))?;
                Ok(Arc::new(Backend::Embedded(r)))
            }
            RunnerChoice::Containerd { address } => {
                use forge_runner::containerd::{ContainerdConfig, ContainerdRunner};
                let config = address
                    .clone()
                    .map(ContainerdConfig::new)
                    .or_else(ContainerdConfig::from_env)
                    // Cache mounts and the steps' scratch belong to the store, as with the
                    // embedded runner: a shared temporary directory's `forge-containerd-steps`
                    // could be another user's, who then wrote the steps' /etc/hosts.
                    .map(|config| ContainerdConfig {
                        cache_root: self.root.join("cache-mounts"),
                        state_dir: self.root.join("containerd-steps"),
                        ..config
                    })
                    .ok_or_else(|| {
                        BuildError::Invalid(
                            "the containerd runner needs an address (--containerd-address or \
                             $CONTAINERD_ADDRESS)"
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
}

/// Gives back what a build's runner holds (containerd's lease), once the build's steps are over.
/// Other holders of the runner (the build's executor) run nothing more: the lease goes now,
/// whoever still holds a handle (it was kept whenever one did, 24 hours each build).
pub(crate) async fn close_runner(runner: Arc<Backend>) {
    if let Backend::Containerd(r) = runner.as_ref() {
        let _ = r.close().await;
    }
}

/// Process-wide set-up, once, before any thread starts (so before the async runtime): as real root
/// with the embedded runner, the process's mounts (snapshots it reads, file operations) go into a
/// private mount namespace, so a killed forge leaves none on the host. A rootless process already
/// has one (entering the user namespace made it); the containerd runner needs the host's, since
/// containerd must see the directories it is asked to bind. A server calls this once at start; every
/// build it runs then shares the namespace, which is why nothing in a build may depend on a mount
/// another build made.
///
/// It also says how the embedded runner isolates steps: an explicit `choice` is probed for now (a
/// mode that cannot be had fails before any work), [`IsolationChoice::Auto`] is left to the first
/// step that runs (scratch directories go under `scratch`), which takes the best mode a probe
/// finds. The chroot isolation makes no mount at all, so it needs no private mount namespace.
pub fn prepare_process(
    runner: &RunnerChoice,
    choice: IsolationChoice,
    scratch: &Path,
) -> Result<DeferredIsolation, BuildError> {
    use forge_runner::embedded::isolation;
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    if *runner != RunnerChoice::Embedded {
        return Ok(DeferredIsolation::default());
    }
    let isolation = match choice {
        IsolationChoice::Auto => DeferredIsolation::probing(choice, scratch),
        explicit => DeferredIsolation::known(
            isolation::choose_probing(explicit, scratch).map_err(BuildError::Invalid)?,
        ),
    };
    let may_mount = isolation
        .chosen()
        .is_none_or(|chosen| chosen.is_ok_and(Isolation::may_mount));
    if !may_mount
        || !nix::unistd::geteuid().is_root()
        || forge_snapshotter::userns::in_user_namespace()
    {
        return Ok(isolation);
    }
    let private = unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| BuildError::Invalid(format!("cannot make a private mount namespace: {e}")))
        .and_then(|()| {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| BuildError::Invalid(format!("cannot make mounts private: {e}")))
        });
    match private {
        // The namespaces asked for need it.
        Err(e) if isolation.chosen().is_some() => Err(e),
        // Left to the probe: a process that cannot make a mount namespace here cannot make the
        // probe's either, so the probe will choose the chroot isolation, which needs none.
        _ => Ok(isolation),
    }
}
