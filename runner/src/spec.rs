//! What one step is: the [`StepSpec`] every backend runs, and the [`StepOutcome`] it reports.

use std::path::PathBuf;
use std::time::Duration;

use forge_snapshotter::Mount;

pub use crate::confine::Security;

/// How the step's arguments are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Exec form: run `args[0]` with `args` as argv, no shell.
    Exec(Vec<String>),
    /// Shell form: `shell` (the stage's SHELL, `["/bin/sh", "-c"]` by default) with `script` appended.
    Shell { shell: Vec<String>, script: String },
}

impl Command {
    /// The argv the container's init executes.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Exec(args) => args.clone(),
            Command::Shell { shell, script } => {
                let mut argv = shell.clone();
                argv.push(script.clone());
                argv
            }
        }
    }
}

/// Network mode of a step, defined beside the namespaces it chooses between.
pub use crate::network::NetworkMode;

/// The user a step runs as, as written in the Dockerfile (`USER`), resolved by the backend against the
/// rootfs's /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// A name or numeric id; empty means root.
    pub user: String,
    /// A group name or numeric id; `None` means the user's primary group.
    pub group: Option<String>,
}

/// An extra mount for the step (`RUN --mount`), as the builder describes it: what the runner makes of it
/// on the host (cache directories, secret files, agent sockets) is decided once, in [`crate::mounts`],
/// for every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMount {
    /// Absolute path inside the container.
    pub target: PathBuf,
    pub kind: StepMountKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMountKind {
    /// Bind a host directory or file (read-only unless `readonly` is false; rw changes are the caller's to
    /// discard, e.g. by binding a throwaway overlay).
    Bind { source: PathBuf, readonly: bool },
    /// A persistent cache directory kept under the cache root by `id` (see [`crate::mounts`] for the
    /// layout and how `sharing` is enforced). A new cache starts as a copy of `seed` when there is
    /// one, else as an empty directory owned `uid:gid` with `mode`.
    Cache {
        id: String,
        sharing: CacheSharing,
        uid: u32,
        gid: u32,
        mode: u32,
        seed: Option<CacheSeed>,
        /// Mounted read-only (`RUN --mount=type=cache,ro`): the step reads the cache and cannot
        /// change it.
        readonly: bool,
    },
    /// A tmpfs, `size` bytes at most (0 = the kernel default); read-only when `readonly`, as
    /// BuildKit mounts `type=tmpfs,ro`.
    Tmpfs { size: u64, readonly: bool },
    /// A secret file: its bytes, never written to the snapshot.
    Secret {
        data: Vec<u8>,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// Forward an SSH agent socket from the host path.
    Ssh {
        agent_socket: PathBuf,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// Any mount a snapshotter produced (e.g. a read-only view of another stage).
    Raw(Mount),
}

/// The initial content of a cache mount (`from=STAGE,source=PATH`): `path` inside the mounted stage
/// `root`. Symlinks in `path` resolve as if `root` were `/`, so the seed never reaches outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSeed {
    pub root: PathBuf,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    pub command: Command,
    /// `KEY=value` pairs, in order; later keys win.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container; created if missing.
    pub cwd: PathBuf,
    pub user: User,
    /// The step's hostname (also in its /etc/hostname and /etc/hosts); empty is
    /// [`DEFAULT_HOSTNAME`].
    pub hostname: String,
    pub network: NetworkMode,
    /// A namespace shared with other steps, joined instead of one of the step's own: the step then
    /// runs as [`NetworkMode::Sandbox`] (proxy variables, no resolver) whatever `network` says.
    pub join_network: Option<crate::network::SharedNetwork>,
    /// Names added to the step's `/etc/hosts` (`--add-host NAME:IP`), after its own.
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// The proxy a sandboxed step's own proxy goes through (the build's `HTTP(S)_PROXY`).
    pub proxy_upstream: Option<crate::network::Upstream>,
    /// The root filesystem, as mounts applied in order (usually one overlay).
    pub rootfs: Vec<Mount>,
    pub mounts: Vec<StepMount>,
    /// Secrets exposed as environment variables (`RUN --mount=type=secret,env=NAME`), kept out of logs.
    pub secret_env: Vec<(String, String)>,
    /// `RUN --security`: the sandbox unless the build allowed and the step asked for insecure.
    pub security: Security,
    /// Memory and CPU limits (`forge build --memory --cpus`); none by default.
    pub limits: crate::limits::Limits,
    /// Resource limits set before the command runs (`forge build --ulimit`); with none the step
    /// keeps forge's own, as BuildKit's steps keep buildkitd's.
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// The size of the step's /dev/shm (`forge build --shm-size`); `None` is [`DEFAULT_SHM_SIZE`].
    pub shm_size: Option<crate::limits::Bytes>,
}

/// A step's hostname unless it names one: BuildKit's, so that a RUN step that prints or records
/// its hostname (build logs, generated configs, `hostname -f` in install scripts) writes what it
/// writes under `docker build`.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The size of /dev/shm unless `--shm-size` says otherwise: 64 MiB, as in Docker's and BuildKit's
/// containers (containerd's default spec).
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Where a step's output goes: called once per line (without the newline), in the order lines arrive.
pub type OutputSink<'a> = dyn FnMut(Stream, &str) + Send + 'a;

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The exit code, or 128 + signal number when a signal ended it.
    pub exit_code: i32,
    pub duration: Duration,
    /// The last lines of output (both streams, interleaved as received), for error messages.
    pub tail: Vec<String>,
    /// The step's memory limit, when the kernel's OOM killer killed a process of the step for
    /// passing it (the exit code alone cannot tell this from `kill -9`).
    pub memory_limit_hit: Option<crate::limits::Bytes>,
}

impl StepSpec {
    /// The hostname the step gets: its own, else [`DEFAULT_HOSTNAME`].
    pub fn hostname(&self) -> &str {
        if self.hostname.is_empty() {
            DEFAULT_HOSTNAME
        } else {
            &self.hostname
        }
    }

    /// The size of the step's /dev/shm in bytes.
    pub fn shm_size(&self) -> u64 {
        self.shm_size.map_or(DEFAULT_SHM_SIZE, |b| b.0)
    }

    /// The network the step gets: [`NetworkMode::Sandbox`] in a shared namespace, else `network`.
    pub fn network_mode(&self) -> NetworkMode {
        if self.join_network.is_some() {
            NetworkMode::Sandbox
        } else {
            self.network
        }
    }
}

impl StepOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}
