//! Why a vertex could not be computed, and the one way an I/O error becomes one.

use std::path::{Path, PathBuf};

use forge_runner::backend::RunError;
use forge_snapshotter::snapshot::SnapshotError;
use forge_snapshotter::store::StoreError;

use super::run::{oom_note, short_argv};
use crate::cache_io::FetchError;
use crate::fileop::FileOpError;
use crate::source::context::ContextError;

/// Why a vertex could not be computed. Each variant carries what a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The step's last output lines are in `tail` (the progress view shows them already).
    #[error(
        "process {} did not complete successfully: exit code {code}{}",
        short_argv(argv),
        oom_note(.memory_limit_hit)
    )]
    Exit {
        argv: Vec<String>,
        code: i32,
        tail: Vec<String>,
        /// The memory limit, when the kernel killed the step for passing it.
        memory_limit_hit: Option<forge_runner::Bytes>,
    },
    #[error("step cancelled")]
    Cancelled,
    #[error(transparent)]
    Run(RunError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    FileOp(#[from] FileOpError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("base image {0:?} was not resolved before the build")]
    UnresolvedImage(String),
    #[error("build context {0:?} was not given")]
    UnknownContext(String),
    #[error("secret {id:?} is required but was not given (pass --secret id={id},src=FILE)")]
    MissingSecret { id: String },
    #[error("ssh agent {id:?} is required but was not given (pass --ssh {id}=SOCKET)")]
    MissingSsh { id: String },
    #[error(
        "RUN --security=insecure is not allowed: the build must grant it (forge build --allow security.insecure)"
    )]
    InsecureNotAllowed,
    #[error(
        "the host's network is not allowed: the build must grant it (forge build --allow network.host)"
    )]
    NetworkHostNotAllowed,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {what} at {target}: {reason}")]
    Mount {
        what: String,
        target: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Source(String),
    #[error("internal: {0}")]
    Internal(String),
    /// A step's layer, written behind the steps after it, could not be written (the error is
    /// shared by every step whose layers include it).
    #[error("writing the step's layer")]
    LayerWrite(#[source] std::sync::Arc<ExecError>),
    /// A blob a result names could not be fetched (gone from the cache it came from, or not what
    /// its digest says); the step that made it runs again.
    #[error(transparent)]
    Blob(#[from] FetchError),
}

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl From<RunError> for ExecError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Cancelled => ExecError::Cancelled,
            e => ExecError::Run(e),
        }
    }
}
