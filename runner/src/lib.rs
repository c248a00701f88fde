//! forge-runner: runs one build step on snapshot mounts, through the embedded rootless backend or
//! containerd. It knows nothing of graphs or caches.

#[cfg(feature = "containerd")]
pub mod containerd;
pub mod spec;

pub use spec::{
    Command, NetworkMode, StepMount, StepMountKind, StepOutcome, StepSpec, Stream, User,
};
