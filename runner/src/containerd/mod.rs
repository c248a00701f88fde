//! The containerd backend: runs a [`crate::StepSpec`] as a task of containerd's runc shim, and keeps
//! snapshots and layer content in containerd when the build wants its root filesystems there. Everything
//! goes through containerd's gRPC API in one namespace (`forge` by default), under a lease so that
//! containerd's garbage collector leaves the build's snapshots and blobs alone while it runs.

mod client;
mod content;
mod io;
mod mounts;
mod rootfs;
mod runner;
mod snapshots;
mod spec;

use std::path::PathBuf;

pub use client::{Connection, Lease};
pub use content::{ContainerdContent, LayerDescriptor};
pub use runner::ContainerdRunner;
pub use snapshots::{ContainerdSnapshots, SnapshotInfo, SnapshotKind, SnapshotUsage};

/// The namespace forge's containers, snapshots and content live in.
pub const DEFAULT_NAMESPACE: &str = "forge";
/// containerd's runc shim; crun refuses the hybrid cgroup layout of some hosts, runc does not.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// The socket path the CLI reads when `--containerd-address` is not given.
pub const ADDRESS_ENV: &str = "CONTAINERD_ADDRESS";

/// Where and how to reach containerd, and where the backend keeps its own state on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// containerd's gRPC unix socket.
    pub address: PathBuf,
    pub namespace: String,
    /// Runtime name for new containers.
    pub runtime: String,
    /// Snapshotter for [`ContainerdSnapshots`] and steps run on a containerd snapshot.
    pub snapshotter: String,
    /// Cache mounts (`RUN --mount=type=cache`), kept across steps and builds in the layout
    /// [`crate::mounts`] shares with the embedded backend.
    pub cache_root: PathBuf,
    /// Per-step scratch directories (output FIFOs, generated /etc files, secrets on a tmpfs); each is
    /// removed when its step ends.
    pub state_dir: PathBuf,
}

impl ContainerdConfig {
    /// Defaults for the given socket: namespace `forge`, runc, overlayfs, and cache/state directories
    /// under the system temp dir.
    pub fn new(address: impl Into<PathBuf>) -> Self {
        let tmp = std::env::temp_dir();
        ContainerdConfig {
            address: address.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            runtime: DEFAULT_RUNTIME.to_string(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            cache_root: tmp.join("forge-containerd-cache"),
            state_dir: tmp.join("forge-containerd-steps"),
        }
    }

    /// The configuration for `$CONTAINERD_ADDRESS`, if it is set.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(ADDRESS_ENV)
            .filter(|a| !a.is_empty())
            .map(Self::new)
    }
}

/// Everything that can go wrong in the containerd backend.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The transport's own text ("transport error") says nothing; its causes (the socket's
    /// "Permission denied", "No such file or directory") are said with it.
    #[error(
        "cannot connect to containerd at {address}: {}",
        forge_snapshotter::error_text::one_line(source)
    )]
    Connect {
        address: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// Nothing answered at the socket within the deadline, or what answered is no containerd.
    #[error(
        "containerd at {address} {what}: is it containerd's socket, and is containerd running?"
    )]
    NoAnswer { address: PathBuf, what: String },
    /// A gRPC call failed; `what` names the call and its object.
    #[error("containerd {what}: {status}")]
    Rpc {
        what: String,
        #[source]
        status: Box<tonic::Status>,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the OCI runtime spec: {0}")]
    Spec(String),
    #[error(transparent)]
    User(#[from] crate::user::UserError),
    #[error(
        "cannot look up user {user:?}: the rootfs mount of type {kind:?} cannot be read without mounting it"
    )]
    UnreadableRootfs { user: String, kind: String },
    #[error("content {digest}: containerd stored {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Mount(crate::mounts::MountError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("the step was cancelled")]
    Cancelled,
}

impl From<crate::mounts::MountError> for ContainerdError {
    fn from(e: crate::mounts::MountError) -> Self {
        match e {
            crate::mounts::MountError::Cancelled { .. } => ContainerdError::Cancelled,
            e => ContainerdError::Mount(e),
        }
    }
}

impl ContainerdError {
    pub(crate) fn rpc(what: impl Into<String>, status: tonic::Status) -> Self {
        ContainerdError::Rpc {
            what: what.into(),
            status: Box::new(status),
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ContainerdError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The gRPC status code, when the error came from containerd.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ContainerdError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
