//! What a pull tells: the progress events it reports as it goes, and the errors it ends with.

use std::time::Duration;

use oci_client::errors::OciDistributionError;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::store::{Digest, StoreError};

/// Which part of an image a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Config,
    Layer,
}

/// What a pull reports as it goes, for the CLI to draw. Serialised with a `type` tag
/// (`pull.resolved`, `pull.blob.started`, ...) beside the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PullEvent {
    /// The reference resolved to this manifest.
    #[serde(rename = "pull.resolved")]
    Resolved {
        reference: String,
        manifest: Digest,
        platform: String,
        layers: usize,
    },
    /// The store's copy of the reference was used as it is; no registry was asked (a base named
    /// without a registry, as docker uses its local images). Nothing follows for this pull.
    #[serde(rename = "pull.stored")]
    Stored {
        reference: String,
        manifest: Digest,
        platform: String,
        layers: usize,
    },
    /// A blob download began.
    #[serde(rename = "pull.blob.started")]
    Started {
        digest: Digest,
        kind: BlobKind,
        total: u64,
    },
    /// Bytes of a blob received so far.
    #[serde(rename = "pull.blob.progress")]
    Progress {
        digest: Digest,
        bytes: u64,
        total: u64,
    },
    /// A blob is in the store, verified.
    #[serde(rename = "pull.blob.done")]
    Done { digest: Digest, bytes: u64 },
    /// The store already had the blob; nothing was downloaded.
    #[serde(rename = "pull.blob.cached")]
    Cached {
        digest: Digest,
        kind: BlobKind,
        total: u64,
    },
    /// The pull failed for good; `error` is why (the caller's error says the rest).
    #[serde(rename = "pull.failed")]
    Failed { error: String },
    /// A transient failure; the request is tried again after `delay`.
    #[serde(rename = "pull.retrying")]
    Retrying {
        what: String,
        /// The try that failed, counting from 1.
        attempt: u32,
        /// How long that try took before it failed: a registry that never answers shows here as
        /// the read timeout, which the time the line is shown at does not tell.
        #[serde(rename = "took_ms", with = "crate::millis", default)]
        took: Duration,
        #[serde(rename = "delay_ms", with = "crate::millis")]
        delay: Duration,
        error: String,
    },
}

/// Why a pull failed. Every variant names the registry or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("registries.conf: {0}")]
    Mirrors(String),
    #[error("{reference}: its registry is blocked in {file} and no mirror is set for it")]
    Blocked { reference: String, file: String },
    #[error(
        "registry {registry} sent wrong bytes for {what} of {reference}: expected digest {expected}, got {actual}"
    )]
    DigestMismatch {
        registry: String,
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "registry {registry} sent {actual} bytes for {what} of {reference}, the manifest says {expected}"
    )]
    SizeMismatch {
        registry: String,
        reference: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference} has no image for {wanted}; the index offers: {}", available.join(", "))]
    NoPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{reference}: {what} has unsupported media type {media_type:?}")]
    MediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    /// The registry did not answer for the manifest within the deadline
    /// ([`super::RegistryConfig::answer_deadline`]), tries included.
    #[error(
        "registry {registry}: {what} of {reference}: timed out: no answer within {}s (tries included)",
        after.as_secs()
    )]
    TimedOut {
        registry: String,
        reference: String,
        what: String,
        after: std::time::Duration,
    },
    #[error("{reference}: bad {what}: {message}")]
    Malformed {
        reference: String,
        what: String,
        message: String,
    },
    #[error(
        "registry {registry} refused {what} of {reference}: {}",
        super::refusal_text(registry, *status, login.as_deref(), "pull", false)
    )]
    Denied {
        registry: String,
        reference: String,
        what: String,
        status: u16,
        /// The username sent; `None` when anonymous.
        login: Option<String>,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry answered that what was asked for is not there (a 404, or a code saying so).
    #[error(
        "registry {registry} has no {what} for {reference}: {}. {}",
        super::answer_text(answer),
        not_found_hint(what)
    )]
    NotFound {
        registry: String,
        reference: String,
        what: String,
        /// Said in the message (see `answer_text`), so not a separate cause.
        answer: Box<OciDistributionError>,
    },
    #[error(
        "registry {registry}: {what} of {reference}: {}",
        super::answer_text(answer)
    )]
    Registry {
        registry: String,
        reference: String,
        what: String,
        /// Said in the message (see `answer_text`), so not a separate cause.
        answer: Box<OciDistributionError>,
    },
    #[error(
        "registry {registry}: the stored login is an identity token, which forge cannot use yet; log in with a username and password or access token"
    )]
    IdentityToken { registry: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// What to check when a registry has no `what`: a manifest is named by the reference, a blob by
/// a manifest the registry gave.
fn not_found_hint(what: &str) -> &'static str {
    if what.contains("manifest") {
        "Check the repository name and the tag (or digest), and that the image was pushed there"
    } else {
        "The registry does not hold a blob that its own manifest names"
    }
}

impl PullError {
    /// The registry and how it could not be reached, when the pull failed for that reason.
    pub fn unreachable(&self) -> Option<(&str, super::Unreachable)> {
        match self {
            PullError::Registry {
                registry, answer, ..
            } => super::unreachable(answer).map(|u| (registry.as_str(), u)),
            PullError::TimedOut { registry, .. } => {
                Some((registry.as_str(), super::Unreachable::Connect))
            }
            _ => None,
        }
    }
}
