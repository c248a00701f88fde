//! The embedded backend: runs a step in namespaces forge sets up itself (no daemon, no runtime binary).
//! As root it uses the host's ids; as a user it expects [`userns::enter_user_namespace`] to have moved
//! the process into a user namespace first, and then works the same way as namespace-root.

mod chroot;
mod command;
mod container;
pub mod isolation;
mod plan;
mod prune;
mod seccomp;
mod sys;
pub mod userns;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use forge_snapshotter::lock::LiveDir;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::mpsc;

pub use isolation::{DeferredIsolation, Isolation, IsolationChoice, ProcSource};
use plan::{ChildFds, Confinement, Plan};
pub use userns::{UserNamespace, UsernsError, enter_user_namespace, in_user_namespace};

use crate::limits::{LimitError, StepCgroup};
use crate::mounts::{MountError, ResolvedMount, ResolvedMounts};
use crate::network::{self, Namespace, NetworkError};
use crate::spec::OutputSink;
use crate::spec::{NetworkMode, Security, StepOutcome, StepSpec, Stream};
use tokio_util::sync::CancellationToken;

/// Lines of output kept for [`StepOutcome::tail`] by default.
pub const DEFAULT_TAIL_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where per-step temporary state goes (mount points, generated /etc files); removed after each step.
    pub state_dir: PathBuf,
    /// Where cache mounts persist, in the layout [`crate::mounts`] shares with the containerd backend.
    pub cache_root: PathBuf,
    pub tail_lines: usize,
    /// How steps are isolated ([`isolation::probe`] and [`isolation::choose`] find what works),
    /// or the choice the first step probes for.
    pub isolation: DeferredIsolation,
}

impl EmbeddedConfig {
    pub fn new(state_dir: impl Into<PathBuf>, cache_root: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            state_dir: state_dir.into(),
            cache_root: cache_root.into(),
            tail_lines: DEFAULT_TAIL_LINES,
            isolation: DeferredIsolation::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(MountError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(
        "the embedded runner needs root or a user namespace (uid {uid}): call \
         enter_user_namespace() first thing in main"
    )]
    NotRoot { uid: u32 },
    #[error("step cancelled")]
    Cancelled,
    /// The sandbox cannot be built on this machine; the step is not run unconfined instead.
    #[error("{0}")]
    Confinement(String),
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("step {command:?} failed to start: {detail}")]
    Setup {
        command: Vec<String>,
        detail: String,
    },
}

impl From<MountError> for EmbeddedError {
    fn from(e: MountError) -> Self {
        match e {
            MountError::Cancelled { .. } => EmbeddedError::Cancelled,
            e => EmbeddedError::Mount(e),
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_path_buf();
    move |source| EmbeddedError::Io { what, path, source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> EmbeddedError {
    move |source| EmbeddedError::Sys { what, source }
}

#[derive(Debug, Clone)]
pub struct EmbeddedRunner {
    config: EmbeddedConfig,
    in_userns: bool,
}

/// Whom to SIGKILL on cancellation: the step's init (that ends its whole PID namespace), once forked.
#[derive(Default)]
struct KillTarget {
    pid: Option<i32>,
    cancelled: bool,
    /// SIGTERM instead of SIGKILL: a chroot step's init ends the command itself and then puts the
    /// step's root back in order.
    soft: bool,
}

impl KillTarget {
    fn set(target: &Mutex<KillTarget>, pid: i32) {
        let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
        t.pid = Some(pid);
        if t.cancelled {
            let _ = kill(Pid::from_raw(pid), t.signal());
        }
    }

    fn cancel(target: &Mutex<KillTarget>) {
        let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
        t.cancelled = true;
        if let Some(pid) = t.pid {
            let _ = kill(Pid::from_raw(pid), t.signal());
        }
    }

    fn signal(&self) -> Signal {
        if self.soft {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        }
    }

    fn is_cancelled(target: &Mutex<KillTarget>) -> bool {
        target.lock().unwrap_or_else(|e| e.into_inner()).cancelled
    }
}

/// Kills the step when the future running it is dropped; after a normal end the step is gone and
/// the kill target is cleared, so this does nothing.
struct KillOnDrop(Arc<Mutex<KillTarget>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        KillTarget::cancel(&self.0);
    }
}

/// The step's temporary directory `run/step-<random>`, alive while its lock is held; removed (never
/// across a mount) however the step ends, and by the next runner if the process was killed.
struct StepDir(LiveDir);

impl EmbeddedRunner {
    pub fn new(config: EmbeddedConfig) -> Result<Self, EmbeddedError> {
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(EmbeddedError::NotRoot { uid });
        }
        for dir in [&config.state_dir, &config.cache_root] {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        // Step directories of killed processes: their lock died with them.
        forge_snapshotter::lock::sweep_dead(&config.state_dir, "step-");
        Ok(EmbeddedRunner {
            config,
            in_userns: in_user_namespace(),
        })
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// Says that a step is about to run (its snapshot and mounts being made): the seccomp profile
    /// every sandboxed step gets, compiled once per process (0.3 ms; see `seccomp::compile`),
    /// starts compiling on a thread of its own, so that the step finds it done when it is planned
    /// instead of waiting for it (and parallel steps with it). Not earlier: a build whose steps
    /// all come from the cache never needs it (when it took 3.5 ms, a thread compiling beside such
    /// a build's end cost it 1.3-2.8 ms).
    /// The isolation a session left to the first step is probed for on the same thread, first.
    pub fn step_coming(&self) {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let isolation = self.config.isolation.clone();
            let _ = std::thread::Builder::new()
                .name("forge-seccomp".into())
                .spawn(move || {
                    if let Ok(Isolation::Namespaces { .. }) = isolation.get() {
                        let _ = seccomp::default_filters();
                    }
                });
        });
    }

    /// How steps are isolated (probed for on the first call when the session left it to the first
    /// step: see [`DeferredIsolation`]).
    pub fn isolation(&self) -> Result<Isolation, EmbeddedError> {
        self.config
            .isolation
            .get()
            .map_err(EmbeddedError::Confinement)
    }

    fn make_step_dir(&self) -> Result<StepDir, EmbeddedError> {
        let name = format!("step-{}", forge_snapshotter::lock::random_hex());
        let dir = LiveDir::create(&self.config.state_dir, &name).map_err(io_err(
            "create step directory",
            &self.config.state_dir.join(&name),
        ))?;
        let guard = StepDir(dir);
        fs::set_permissions(guard.0.path(), fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", guard.0.path()))?;
        for sub in ["rootfs", "etc", "proc"] {
            let p = guard.0.path().join(sub);
            fs::create_dir(&p).map_err(io_err("create", &p))?;
        }
        Ok(guard)
    }

    /// Generated /etc files, bind-mounted read-only so they never reach the snapshot (as BuildKit).
    fn etc_files(
        &self,
        spec: &StepSpec,
        dir: &Path,
    ) -> Result<Vec<(PathBuf, PathBuf)>, EmbeddedError> {
        let hostname = spec.hostname();
        let hosts = network::hosts_file(hostname, spec.join_network.as_ref(), &spec.extra_hosts);
        let resolv = network::resolv_conf(spec.network_mode());
        let mut out = Vec::new();
        for (name, text) in [
            ("hosts", hosts.into_bytes()),
            ("resolv.conf", resolv),
            ("hostname", format!("{hostname}\n").into_bytes()),
        ] {
            let p = dir.join(name);
            fs::write(&p, text).map_err(io_err("write", &p))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &p))?;
            out.push((p, Path::new("/etc").join(name)));
        }
        Ok(out)
    }

    fn plan(
        &self,
        spec: &StepSpec,
        step_dir: &Path,
        resolved: &ResolvedMounts,
        netns: Option<&Namespace>,
        isolation: Isolation,
    ) -> Result<Plan, EmbeddedError> {
        let mut env: Vec<(String, String)> =
            spec.env.iter().chain(&spec.secret_env).cloned().collect();
        resolved.apply_env(&mut env);
        if spec.network_mode() == NetworkMode::Sandbox && isolation.own_network() {
            network::add_proxy_env(&mut env);
        }
        let (rootfs_dir, proc) = match isolation {
            Isolation::Namespaces { proc, .. } => (step_dir.join("rootfs"), proc),
            Isolation::Chroot { .. } => (
                chroot::root_dir(&spec.rootfs).map_err(EmbeddedError::Confinement)?,
                ProcSource::Fresh,
            ),
        };
        Ok(Plan {
            step_dir: step_dir.to_path_buf(),
            rootfs_dir,
            rootfs: spec.rootfs.clone(),
            in_userns: self.in_userns,
            fuse_overlayfs: std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("fuse-overlayfs"))
                    .find(|p| p.is_file())
            }),
            hostname: spec.hostname().to_string(),
            ulimits: spec.ulimits.clone(),
            shm_size: spec.shm_size(),
            netns: netns.map(Namespace::try_clone).transpose()?,
            etc_files: self.etc_files(spec, &step_dir.join("etc"))?,
            mounts: resolved.mounts.clone(),
            argv: spec.command.argv(),
            env,
            user: spec.user.clone(),
            cwd: spec.cwd.clone(),
            confinement: confinement(spec.security, isolation)?,
            proc,
            cgroup_procs: Vec::new(),
        })
    }

    /// The blocking half of a step, on a thread of its own: prepare, unshare, fork, wait. The thread
    /// stays until init is reaped, because PR_SET_PDEATHSIG fires when the forking *thread* exits,
    /// and it is never reused, because unshare changed its namespaces. The step's result can come
    /// first: with it comes the init still to reap ([`wait_init`]), when init reported the
    /// command's code and is only being torn down by the kernel.
    fn spawn_and_wait(
        &self,
        plan: Plan,
        stdout: OwnedFd,
        stderr: OwnedFd,
        target: &Mutex<KillTarget>,
    ) -> (Result<i32, EmbeddedError>, Option<Pid>) {
        // An error before init was forked leaves nothing to reap; after it, init is reaped
        // whatever the step's result.
        self.spawn_and_wait_inner(plan, stdout, stderr, target)
            .unwrap_or_else(|e| (Err(e), None))
    }

    fn spawn_and_wait_inner(
        &self,
        plan: Plan,
        stdout: OwnedFd,
        stderr: OwnedFd,
        target: &Mutex<KillTarget>,
    ) -> Result<(Result<i32, EmbeddedError>, Option<Pid>), EmbeddedError> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(sys_err("pipe"))?;
        let (life_r, life_w) = nix::unistd::pipe2(cloexec).map_err(sys_err("pipe"))?;
        if KillTarget::is_cancelled(target) {
            return Err(EmbeddedError::Cancelled);
        }
        // Which copy-up candidates already exist in the upper dir, to tell them from new ones after.
        let layers = prune::overlay_layers(&plan.rootfs);
        let targets = plan
            .etc_files
            .iter()
            .map(|(_, t)| t.as_path())
            .chain(plan.mounts.iter().map(ResolvedMount::target));
        let candidates = prune::candidates(targets);
        let before = layers
            .as_ref()
            .map(|(upper, _)| prune::existing(upper, &candidates))
            .unwrap_or_default();
        let fds = ChildFds {
            stdout,
            stderr,
            error: err_w,
        };
        if let Isolation::Chroot { .. } = self.isolation()? {
            let code = self.chroot_and_wait(plan, fds, life_r, life_w, err_r, target);
            return Ok((code, None));
        }
        let (status_r, status_w) = nix::unistd::pipe2(cloexec).map_err(sys_err("pipe"))?;
        let init = match container::spawn_init(&plan, &fds, life_r, status_w) {
            Ok(pid) => pid,
            Err(detail) => {
                container::unmount_fuse(&plan);
                return Err(EmbeddedError::Setup {
                    command: plan.argv.clone(),
                    detail,
                });
            }
        };
        drop(fds);
        KillTarget::set(target, init.as_raw());
        // A step with limits waits for init's end, as its cgroup can be removed only once empty;
        // and one on FUSE mounts, whose daemons end only once init's copies of them are gone.
        let wait_for_init = !plan.cgroup_procs.is_empty() || container::uses_fuse(&plan);
        let (code, unreaped) = match reported_code(status_r) {
            Some(code) if !wait_for_init => (Ok(code), Some(init)),
            _ => (wait_init(init, target), None),
        };
        container::unmount_fuse(&plan);
        drop(life_w);
        if let Some((upper, lowers)) = &layers {
            prune::prune(upper, lowers, &candidates, &before);
        }
        let code = code.and_then(|code| step_result(code, err_r, target, &plan));
        Ok((code, unreaped))
    }
}

/// The exit code init reported on its status pipe, once the step's processes are gone; `None`
/// when init ended without one (a failed setup, a kill).
fn reported_code(status: OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    fs::File::from(status).read_exact(&mut bytes).ok()?;
    Some(i32::from_le_bytes(bytes))
}

/// Waits for the step's init (registered as `target`'s pid meanwhile) and returns its exit code,
/// 128 + the signal that killed it; also how an init that already reported is reaped (see
/// [`EmbeddedRunner::spawn_and_wait`]). Its pid is never signalled again: a cancel may come at any
/// moment (after a report, the step's future may be gone), so init is waited for without being
/// reaped, and reaped only with the target cleared under its lock. Until then the pid stays
/// init's (a zombie), never a newer process's.
fn wait_init(init: Pid, target: &Mutex<KillTarget>) -> Result<i32, EmbeddedError> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    KillTarget::set(target, init.as_raw());
    let exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    let code = loop {
        match waitid(Id::Pid(init), exited) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
            Err(nix::errno::Errno::EINTR) => continue,
            // WEXITED reports only ends; anything else would repeat forever under WNOWAIT.
            Ok(_) => {
                break Err(sys_err("wait for the step's init")(
                    nix::errno::Errno::EINVAL,
                ));
            }
            Err(e) => break Err(sys_err("wait for the step's init")(e)),
        }
    };
    let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
    t.pid = None;
    let _ = waitpid(init, Some(WaitPidFlag::WNOHANG));
    code
}

/// The step's result once init is gone and cleaned up after: cancelled, a set-up error init wrote
/// on the error pipe (`err_r`), or the command's exit code.
fn step_result(
    code: i32,
    err_r: OwnedFd,
    target: &Mutex<KillTarget>,
    plan: &Plan,
) -> Result<i32, EmbeddedError> {
    let mut detail = String::new();
    let _ = fs::File::from(err_r).read_to_string(&mut detail);
    if KillTarget::is_cancelled(target) {
        return Err(EmbeddedError::Cancelled);
    }
    if !detail.is_empty() {
        return Err(EmbeddedError::Setup {
            command: plan.argv.clone(),
            detail,
        });
    }
    Ok(code)
}

impl EmbeddedRunner {
    /// [`Self::spawn_and_wait`] for the chroot isolation: stage, fork init, wait, unstage.
    fn chroot_and_wait(
        &self,
        plan: Plan,
        fds: ChildFds,
        life_r: OwnedFd,
        life_w: OwnedFd,
        err_r: OwnedFd,
        target: &Mutex<KillTarget>,
    ) -> Result<i32, EmbeddedError> {
        let setup_err = |detail: String| EmbeddedError::Setup {
            command: plan.argv.clone(),
            detail,
        };
        let staging = chroot::stage(&plan).map_err(setup_err)?;
        let init = match chroot::spawn_init(&plan, &staging, &fds, life_r) {
            Ok(pid) => pid,
            Err(detail) => {
                chroot::unstage(staging);
                return Err(setup_err(detail));
            }
        };
        drop(fds);
        let code = wait_init(init, target);
        chroot::unstage(staging);
        drop(life_w);
        step_result(code?, err_r, target, &plan)
    }
}

/// What confines a step of `security` (see [`crate::confine`]) under `isolation`.
fn confinement(security: Security, isolation: Isolation) -> Result<Confinement, EmbeddedError> {
    if let Isolation::Chroot { .. } = isolation {
        // The container forge runs in confines the step with its own seccomp profile; forge's
        // would need no_new_privs, which stops setuid binaries (sudo). Capabilities: Docker's
        // default set, as far as the container has them, without CAP_SYS_CHROOT: the step's root
        // is a chroot and nothing more, and root with that capability leaves it (chroot into a
        // subdirectory without entering it, then `..` up to the real root), to forge's
        // credentials, the job's environment in /proc and the store. Without it the step also
        // holds fewer capabilities than forge, so it cannot ptrace forge either. Nor CAP_MKNOD:
        // the root is a directory of the machine's filesystem, no mount that could be nodev, so a
        // device node a step made would open the machine's device (forge makes /dev's nodes
        // itself, before the step).
        let have = crate::confine::bounding_set();
        let root_caps = match security {
            Security::Sandbox => sys::DEFAULT_CAPS
                .iter()
                .copied()
                .filter(|c| have.contains(c) && *c != sys::CAP_SYS_CHROOT && *c != sys::CAP_MKNOD)
                .collect(),
            Security::Insecure => have,
        };
        return Ok(Confinement {
            seccomp: None,
            root_caps,
            kernel_paths: false,
            no_new_privs: false,
        });
    }
    Ok(match security {
        Security::Sandbox => Confinement {
            seccomp: Some(seccomp::default_filters().map_err(EmbeddedError::Confinement)?),
            root_caps: sys::DEFAULT_CAPS.to_vec(),
            kernel_paths: true,
            // As BuildKit: setuid binaries (sudo) work in steps.
            no_new_privs: false,
        },
        Security::Insecure => Confinement {
            seccomp: None,
            root_caps: crate::confine::bounding_set(),
            kernel_paths: false,
            no_new_privs: false,
        },
    })
}

async fn read_lines(fd: OwnedFd, stream: Stream, tx: mpsc::Sender<(Stream, String)>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    crate::lines::read_lines(pipe, |line| {
        let tx = tx.clone();
        async move { tx.send((stream, line)).await.is_ok() }
    })
    .await;
}

impl EmbeddedRunner {
    /// Runs one step as [`Runner::run`](crate::backend::Runner::run) describes (the trait's
    /// implementation calls this); a cancelled step ends with [`EmbeddedError::Cancelled`].
    pub async fn run_step(
        &self,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, EmbeddedError> {
        if cancel.is_cancelled() {
            return Err(EmbeddedError::Cancelled);
        }
        let start = Instant::now();
        let isolation = match self.config.isolation.chosen() {
            Some(chosen) => chosen,
            // The first step of a session that left the choice to it: the probe's forks and waits
            // go to a blocking thread.
            None => {
                let deferred = self.config.isolation.clone();
                tokio::task::spawn_blocking(move || deferred.get())
                    .await
                    .map_err(|e| EmbeddedError::Confinement(format!("isolation probe: {e}")))?
            }
        }
        .map_err(EmbeddedError::Confinement)?;
        // Mounts are resolved here, on the caller's side: the step thread may leave the host's mount
        // namespace (see `container::mount_fuse`), and the secrets tmpfs must be unmounted from it.
        let step_dir = self.make_step_dir()?;
        let mut resolved = crate::mounts::resolve(
            &spec.mounts,
            &self.config.cache_root,
            step_dir.0.path(),
            isolation.may_mount(),
            cancel,
        )
        .await?;
        // The step's cgroup, when it has limits: made before the fork, joined by init, removed
        // after the step (dropped last, once every process of the step is gone).
        let cgroup_name = step_dir
            .0
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "step".into());
        let cgroup = StepCgroup::create(spec.limits, &cgroup_name)?;
        // Lives until the step is over; dropping it stops the step's proxy (a shared namespace's
        // when no other holder is left).
        let netns = if isolation.own_network() {
            network::for_spec(
                spec.join_network.as_ref(),
                spec.network,
                spec.proxy_upstream.as_ref(),
            )
            .await?
        } else if spec.join_network.is_some() || spec.network_mode() == NetworkMode::None {
            return Err(EmbeddedError::Confinement(format!(
                "{} needs a network namespace of its own, which the {} isolation here cannot \
                 give (see `forge info`)",
                if spec.join_network.is_some() {
                    "a step beside services"
                } else {
                    "a step without a network (RUN --network=none, or --network none)"
                },
                isolation
            )));
        } else {
            // The surrounding network, as the host network mode has it.
            None
        };
        let mut plan = self.plan(
            spec,
            step_dir.0.path(),
            &resolved,
            netns.as_deref(),
            isolation,
        )?;
        if let Some(cg) = &cgroup {
            plan.cgroup_procs = cg.join_fds()?;
        }
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).map_err(sys_err("pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(sys_err("pipe"))?;
        let (tx, mut rx) = mpsc::channel(256);
        let readers = [
            tokio::spawn(read_lines(out_r, Stream::Stdout, tx.clone())),
            tokio::spawn(read_lines(err_r, Stream::Stderr, tx)),
        ];
        let target = Arc::new(Mutex::new(KillTarget {
            soft: !isolation.may_mount(),
            ..KillTarget::default()
        }));
        // Declared after the step's mounts, so dropped before them: a caller that drops this future
        // kills the step before its cache locks and secrets go.
        let _kill_on_drop = KillOnDrop(Arc::clone(&target));
        let runner = self.clone();
        let target2 = Arc::clone(&target);
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("forge-step".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runner.spawn_and_wait(plan, out_w, err_w, &target2)
                }));
                let (r, unreaped) = match r {
                    Ok((r, unreaped)) => (Ok(r), unreaped),
                    Err(panic) => (Err(panic), None),
                };
                let _ = done_tx.send(r);
                if let Some(init) = unreaped {
                    let _ = wait_init(init, &target2);
                }
            })
            .map_err(io_err("spawn a thread for", Path::new("the step")))?;
        let mut tail = VecDeque::new();
        let mut result = None;
        let mut open = true;
        let mut cancelled = false;
        while open || result.is_none() {
            tokio::select! {
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    KillTarget::cancel(&target);
                }
                msg = rx.recv(), if open => match msg {
                    Some((stream, line)) => {
                        output(stream, &line);
                        if tail.len() == self.config.tail_lines {
                            tail.pop_front();
                        }
                        if self.config.tail_lines > 0 {
                            tail.push_back(line);
                        }
                    }
                    None => open = false,
                },
                r = &mut done_rx, if result.is_none() => {
                    result = Some(r);
                }
            }
        }
        for r in readers {
            let _ = r.await;
        }
        let released = resolved.release();
        drop(step_dir);
        let code = match result {
            Some(Ok(Ok(r))) => r?,
            Some(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            // The thread always sends before it ends, unless it could not even unwind.
            Some(Err(_)) | None => unreachable!("the step thread ended without a result"),
        };
        released?;
        Ok(StepOutcome {
            exit_code: code,
            duration: start.elapsed(),
            tail: tail.into(),
            memory_limit_hit: cgroup.as_ref().and_then(StepCgroup::oom_killed),
        })
    }
}
