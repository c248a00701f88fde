//! What a build gives back: the image it made and what each vertex did, or, when it failed, the
//! error and what had been solved by then (so a pipeline can still export a failed run's reports).

use std::time::Duration;

use forge_snapshotter::store::ImageRecord;

use super::BuildError;
use crate::events::BuildId;
use crate::export::Image;
use crate::graph::NodeRef;
use crate::ops::Built;
use crate::solver::{CacheKey, Solution};

/// A finished build.
#[derive(Debug)]
pub struct BuildOutcome {
    pub build: BuildId,
    /// The manifest digest (`sha256:...`), what `forge build` prints.
    pub digest: String,
    /// The image: config and manifest documents, layer descriptors.
    pub image: Image,
    /// The image as recorded in the store (under each tag).
    pub record: ImageRecord,
    /// Every vertex the solve reached, in the order they finished.
    pub vertices: Vec<VertexReport>,
    /// The whole build, wall clock.
    pub duration: Duration,
    /// Every solved vertex with its key and result, as a cache export writes them.
    pub cache_entries: Vec<crate::cache_io::CacheEntry>,
    /// The ids of the build's cache mounts.
    pub cache_mounts: Vec<String>,
}

impl BuildOutcome {
    /// Vertices that ran (not cached).
    pub fn executed(&self) -> usize {
        self.vertices.iter().filter(|v| v.ran()).count()
    }

    /// Vertices whose result came from the cache.
    pub fn cached(&self) -> usize {
        self.vertices.iter().filter(|v| v.cached).count()
    }
}

/// What one vertex did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexReport {
    pub vertex: NodeRef,
    pub description: String,
    /// The cache key, where the solver got as far as computing it.
    pub key: Option<CacheKey>,
    pub cached: bool,
    /// How long it ran (none when cached).
    pub duration: Option<Duration>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// It did not run: the vertex it needs failed (keep-going solves only).
    pub skipped: Option<NodeRef>,
}

impl VertexReport {
    /// Whether the vertex ran to success.
    pub fn ran(&self) -> bool {
        !self.cached && self.error.is_none() && self.duration.is_some()
    }
}

/// A build that stopped: the error, and what was solved before it.
#[derive(Debug)]
pub struct BuildFailure {
    pub build: BuildId,
    pub error: BuildError,
    pub vertices: Vec<VertexReport>,
    /// The results of every vertex solved before (or, keeping going, besides) the failure, with
    /// their keys and whether they came from the cache; empty when the build stopped before
    /// solving, everything when it stopped after (exporting, pushing).
    pub solved: Solution<Built>,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for BuildFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}
