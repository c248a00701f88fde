//! forge-runner: runs one build step on snapshot mounts, through the embedded rootless backend or
//! containerd. It knows nothing of graphs or caches.

pub mod backend;
pub mod confine;
#[cfg(feature = "containerd")]
pub mod containerd;
pub mod embedded;
pub mod limits;
mod lines;
pub mod mounts;
pub mod network;
pub mod spec;
pub mod user;

pub use backend::{Backend, CancellationToken, OutputSink, RunError, Runner};
pub use confine::Security;
pub use limits::{Bytes, Limits, NanoCpus, Ulimit};
pub use lines::{MAX_LINE, MIN_PIECE};
pub use mounts::MountError;
pub use network::SharedNetwork;
pub use spec::{
    CacheSeed, CacheSharing, Command, DEFAULT_HOSTNAME, DEFAULT_SHM_SIZE, NetworkMode, StepMount,
    StepMountKind, StepOutcome, StepSpec, Stream, User,
};
