//! The one interface the builder uses to run a step, whatever runs it: the [`Runner`] trait, the
//! [`Backend`] enum that dispatches to the embedded (namespaces) or containerd backend, and their
//! combined [`RunError`].

use std::future::Future;

pub use tokio_util::sync::CancellationToken;

use crate::embedded::{EmbeddedError, EmbeddedRunner, Isolation};
pub use crate::spec::OutputSink;
use crate::spec::{StepOutcome, StepSpec};

/// Runs one step.
///
/// Lifecycle of a call to [`Runner::run`]: the backend builds the container from `spec.rootfs` and
/// `spec.mounts`, runs `spec.command` in it, streams each output line to `output`, and returns once the
/// step's processes are gone and its mounts and temporary state are removed. The rootfs mounts' upper
/// directory then holds the step's changes, which the caller commits; the backend commits nothing.
///
/// Cancelling `cancel` kills the step's whole process tree; the call still cleans up and then returns
/// [`RunError::Cancelled`]. A non-zero exit of the command is not an error: it is in the outcome.
pub trait Runner {
    fn run(
        &self,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<StepOutcome, RunError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("step cancelled")]
    Cancelled,
    #[error(transparent)]
    Embedded(EmbeddedError),
    #[cfg(feature = "containerd")]
    #[error(transparent)]
    Containerd(crate::containerd::ContainerdError),
}

impl From<EmbeddedError> for RunError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::Cancelled => RunError::Cancelled,
            e => RunError::Embedded(e),
        }
    }
}

impl Runner for EmbeddedRunner {
    async fn run(
        &self,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, RunError> {
        Ok(self.run_step(spec, output, cancel).await?)
    }
}

#[cfg(feature = "containerd")]
impl From<crate::containerd::ContainerdError> for RunError {
    fn from(e: crate::containerd::ContainerdError) -> Self {
        // A cancelled containerd task is the same outcome as a cancelled embedded step.
        match e {
            crate::containerd::ContainerdError::Cancelled => RunError::Cancelled,
            e => RunError::Containerd(e),
        }
    }
}

/// The backends forge can run steps with.
#[derive(Debug)]
pub enum Backend {
    /// Namespaces set up by forge itself: no daemon, no runtime binary.
    Embedded(EmbeddedRunner),
    /// Tasks run by containerd's runc shim, with snapshots and content kept in containerd.
    #[cfg(feature = "containerd")]
    Containerd(crate::containerd::ContainerdRunner),
}

impl Backend {
    /// Whether a sandboxed step gets a network namespace of its own (with forge's proxy); where it
    /// does not (the chroot isolation, or no CAP_NET_ADMIN), it uses the network forge runs in, as a
    /// step on the host's network does.
    pub fn own_network(&self) -> bool {
        match self {
            // Asked as a step is planned: the isolation a session left to the first step is
            // probed for here, and a failed probe is the step's error when it runs.
            Backend::Embedded(r) => r.isolation().is_ok_and(Isolation::own_network),
            #[cfg(feature = "containerd")]
            Backend::Containerd(_) => true,
        }
    }

    /// A step is about to run: what the backend can make ready beside the step's set-up starts
    /// now (see [`EmbeddedRunner::step_coming`]).
    pub fn step_coming(&self) {
        match self {
            Backend::Embedded(r) => r.step_coming(),
            #[cfg(feature = "containerd")]
            Backend::Containerd(_) => {}
        }
    }
}

impl Runner for Backend {
    async fn run(
        &self,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, RunError> {
        match self {
            Backend::Embedded(r) => r.run(spec, output, cancel).await,
            #[cfg(feature = "containerd")]
            Backend::Containerd(r) => Ok(r.run(spec, output, cancel).await?),
        }
    }
}
