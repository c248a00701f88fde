//! The build API: one entry point that `forge build`, a pipeline's job graph and a server all call.
//! A [`Session`] holds what builds share (the store, snapshots, the registry client, which runner);
//! [`Session::build`] takes a [`BuildRequest`], streams [`crate::events::EventRecord`]s while it
//! runs, and returns a [`BuildOutcome`] (or a [`BuildFailure`] with what was solved before the
//! failure). Several builds may run at once on one session, in one process.
//!
//! The sequence (`build.rs`) follows the data: sources (context walk, base images) -> lowering to the
//! graph -> solve (ops on snapshots, the cache) -> export (image, store record, push, files).

mod build;
pub(crate) mod cache;
mod git_context;
pub mod input;
mod outcome;
mod pending;
mod prepare;
mod request;
mod restamp;
mod roots;
mod service;
mod session;
mod solve;
mod stream;

use forge_snapshotter::registry::PullError;
use forge_snapshotter::snapshot::SnapshotError;
use forge_snapshotter::store::StoreError;

pub use outcome::{BuildFailure, BuildOutcome, VertexReport};
pub use request::{
    BuildContext, BuildRequest, CacheOptions, DockerfileSource, Export, Secrets, path_inside,
};
pub use service::{ServiceHandle, ServiceSpec, health_ports};
pub(crate) use session::close_runner;
pub use session::{
    DeferredIsolation, Isolation, IsolationChoice, RunnerChoice, Session, SessionOptions,
    prepare_process,
};
pub use solve::{SolveSettings, solve};
pub use stream::{StreamContext, is_url};

use crate::export::ExportError;
use crate::frontend::dockerfile::ast::Span;
use crate::frontend::dockerfile::lower::LowerError;
use crate::frontend::dockerfile::parser::ParseError;
use crate::ops::{Built, ExecError};
use crate::solver::{CacheError, SolveError, SolveFailure};

/// Why a build stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse; the error names file, line and column.
    #[error(transparent)]
    Parse(Box<ParseError>),
    /// The Dockerfile parses but cannot be lowered to a graph. `file` and `text` are what the
    /// caller needs to show the offending line.
    /// (`file` is empty until the build names it: the error then shows alone.)
    #[error("{}{error}", if file.is_empty() { String::new() } else { format!("{file}: ") })]
    Lower {
        file: String,
        text: std::sync::Arc<str>,
        #[source]
        error: LowerError,
    },
    /// An error about a place in the Dockerfile found after the lowering's checks: a base image
    /// that could not be pulled or read, at the line that names it. `file` and `text` as for
    /// `Lower`.
    #[error("{}{error}", if file.is_empty() { String::new() } else { format!("{file}:{}:{}: ", span.start.line, span.start.column) })]
    At {
        file: String,
        text: std::sync::Arc<str>,
        span: Span,
        #[source]
        error: Box<BuildError>,
    },
    #[error("base image {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: Box<PullError>,
    },
    #[error("base image {reference}: {reason}")]
    BaseImage { reference: String, reason: String },
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A blob a cache record named could not be had once the solve had used the record (a
    /// registry cache's blob with wrong bytes, found when the image's layers were gathered): the
    /// build runs again without that blob's records (see [`Session::build`]).
    #[error("the image's layers: {0}")]
    CacheBlob(#[from] crate::cache_io::FetchError),
    /// A request that cannot be built, or a failure said in words.
    #[error("{0}")]
    Invalid(String),
}

impl From<ParseError> for BuildError {
    fn from(e: ParseError) -> Self {
        BuildError::Parse(Box::new(e))
    }
}

/// For callers that have no use for what a failed solve got done.
impl From<SolveFailure<Built>> for BuildError {
    fn from(f: SolveFailure<Built>) -> Self {
        BuildError::Solve(f.error)
    }
}

impl BuildError {
    /// The last output lines of the step whose failure stopped the build (the first, when a
    /// keep-going solve collected several), secrets masked.
    pub fn failed_step_tail(&self) -> Option<&[String]> {
        let BuildError::Solve(e) = self else {
            return None;
        };
        let Some(SolveError::Step { source, .. }) = e.failures().first().copied() else {
            return None;
        };
        match source.downcast_ref::<ExecError>()? {
            ExecError::Exit { tail, .. } if !tail.is_empty() => Some(tail),
            _ => None,
        }
    }
}

/// An error with its causes, `: `-separated, as one line (the house's one way,
/// [`forge_snapshotter::error_text::one_line`]).
pub use forge_snapshotter::error_text::one_line as render_chain;

#[cfg(test)]
mod tests {
    use super::BuildError;
    use crate::frontend::dockerfile::lower::{LowerError, LowerErrorKind};

    #[test]
    fn a_lowering_error_names_its_file_once_it_has_one() {
        let error = LowerError {
            kind: Box::new(LowerErrorKind::CopyFromVariable),
            span: None,
            hint: None,
        };
        let unnamed = BuildError::Lower {
            file: String::new(),
            text: "".into(),
            error: error.clone(),
        };
        assert_eq!(
            unnamed.to_string(),
            error.to_string(),
            "no empty `: ` in front"
        );
        let named = BuildError::Lower {
            file: "Dockerfile".into(),
            text: "".into(),
            error: error.clone(),
        };
        assert_eq!(named.to_string(), format!("Dockerfile: {error}"));
    }
}
