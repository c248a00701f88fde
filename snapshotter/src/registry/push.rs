//! Push: send an image the store holds (pulled or built) to a registry under one or more tags.
//! Per target repository, blobs the registry has are skipped, blobs from a sibling repository of the
//! same registry are mounted, the rest stream from the store file in bounded chunks, several at
//! once, retried on transient failures; the manifest goes last, as the exact stored bytes. To a
//! registry that wants no token, a blob's last chunk goes with its commit, and a blob of one
//! chunk has its upload session opened while the registry is asked whether it has it (see
//! `upload.rs`).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use serde::{Deserialize, Serialize};

use super::{AuthError, BlobKind, PullError, RegistryClient};
use crate::reference::Reference;
use crate::store::{Descriptor, Digest, ImageRecord, Store, StoreError};

/// Manifests larger than this are refused rather than buffered (registries refuse them too).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// One blob to push, with where it may be mounted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBlob {
    pub descriptor: Descriptor,
    pub kind: BlobKind,
    /// `registry/repository` the blob is known to exist in (where it was pulled from). When that
    /// is another repository of the registry pushed to, the blob is mounted instead of uploaded.
    pub mount_from: Option<String>,
    /// `registry/repository` this process has already sent the blob to, or is sending it to (a
    /// layer uploaded while its step wrote it, checked by the registry against its digest):
    /// that repository is not asked again, unless the [`Landing`] the push waits for says the
    /// blob did not arrive.
    pub sent_to: Option<String>,
}

/// The blobs still on their way to the repository their [`PushBlob::sent_to`] names as a push
/// starts: resolves to the digests of those that arrived. The push sends the image's other
/// blobs meanwhile, sends again from the store what did not arrive, and only then its manifest.
pub type Landing<'a> =
    std::pin::Pin<Box<dyn Future<Output = std::collections::HashSet<Digest>> + Send + 'a>>;

/// What to push: a manifest in the store and the blobs it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushImage {
    pub manifest: Descriptor,
    pub config: PushBlob,
    pub layers: Vec<PushBlob>,
    /// The bytes of the manifest or of blobs, by digest, that the push takes from here instead
    /// of the store: an image just made is pushed while its config and manifest are being
    /// written into the store (and synced) beside it.
    pub held: HashMap<Digest, bytes::Bytes>,
}

impl PushImage {
    /// The image a store record describes; every blob may be mounted from the repository it was
    /// pulled from. A record of a multi-platform pull pushes its one platform manifest.
    pub fn from_record(record: &ImageRecord) -> PushImage {
        let source = Reference::parse(&record.reference).ok().map(|r| r.name());
        let blob = |descriptor: &Descriptor, kind| PushBlob {
            descriptor: descriptor.clone(),
            kind,
            mount_from: source.clone(),
            sent_to: None,
        };
        PushImage {
            manifest: record.manifest.clone(),
            config: blob(&record.config, BlobKind::Config),
            layers: record
                .layers
                .iter()
                .map(|l| blob(l, BlobKind::Layer))
                .collect(),
            held: HashMap::new(),
        }
    }

    /// Config then layers, each digest once.
    /// This image with every blob known to be in `repository` (`registry/repository`), where a
    /// push put them: each is mounted from there.
    fn mounting_from(&self, repository: &str) -> PushImage {
        let hint = |b: &PushBlob| PushBlob {
            mount_from: Some(repository.to_string()),
            ..b.clone()
        };
        PushImage {
            manifest: self.manifest.clone(),
            config: hint(&self.config),
            layers: self.layers.iter().map(hint).collect(),
            held: self.held.clone(),
        }
    }

    fn blobs(&self) -> Vec<&PushBlob> {
        let mut seen = std::collections::HashSet::new();
        std::iter::once(&self.config)
            .chain(&self.layers)
            .filter(|b| seen.insert(b.descriptor.digest.clone()))
            .collect()
    }
}

/// What a push reports as it goes, for the CLI to draw. `repository` is `registry/repository`.
/// Serialised with a `type` tag (`push.blob.exists`, `push.manifest`, ...) beside the variant's
/// fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PushEvent {
    /// The registry already has the blob in this repository; nothing was sent.
    #[serde(rename = "push.blob.exists")]
    Exists {
        repository: String,
        digest: Digest,
        kind: BlobKind,
        total: u64,
    },
    /// The registry linked the blob from another of its repositories; nothing was sent.
    #[serde(rename = "push.blob.mounted")]
    Mounted {
        repository: String,
        from: String,
        digest: Digest,
        total: u64,
    },
    /// Bytes of a blob handed to the connection so far (restarts from 0 when an upload is retried).
    #[serde(rename = "push.blob.progress")]
    Uploading {
        digest: Digest,
        bytes: u64,
        total: u64,
    },
    /// The registry accepted the blob, having checked its digest.
    #[serde(rename = "push.blob.done")]
    Uploaded {
        repository: String,
        digest: Digest,
        bytes: u64,
    },
    /// A layer the registry accepted from an upload that followed it while its step wrote it;
    /// `duration` runs from the upload's start (the step's layer beginning) to the acceptance.
    #[serde(rename = "push.blob.streamed")]
    Streamed {
        repository: String,
        digest: Digest,
        bytes: u64,
        #[serde(rename = "duration_ms", with = "crate::millis")]
        duration: Duration,
    },
    /// The manifest is in the registry under `tag` (a full reference).
    #[serde(rename = "push.manifest")]
    ManifestPushed { tag: String, digest: Digest },
    /// A transient failure; the request is tried again after `delay`.
    #[serde(rename = "push.retrying")]
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

/// Why a push failed. Every variant names the registry, repository or blob involved.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "registry {registry} refused {what} in {repository}: {}",
        super::refusal_text(registry, *status, login.as_deref(), "push", *token_granted)
    )]
    Denied {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        /// The username sent; `None` when anonymous.
        login: Option<String>,
        /// The registry wants tokens and gave one for the login: a 401 is then the token not
        /// covering the request, not the password.
        token_granted: bool,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "registry {registry}: {what} in {repository} failed: {}",
        super::answer_text(answer)
    )]
    Registry {
        registry: String,
        repository: String,
        what: String,
        status: Option<u16>,
        /// Said in the message (see `answer_text`), so not a separate cause.
        answer: Box<OciDistributionError>,
    },
    #[error("{tag} pins digest {pinned}, but the manifest pushed is {actual}")]
    TagDigest {
        tag: String,
        pinned: String,
        actual: Digest,
    },
    #[error("blob {digest} to push is not in the store, and fetching it from {from} failed")]
    Fetch {
        digest: Digest,
        from: String,
        #[source]
        source: Box<PullError>,
    },
    #[error("no tag to push to")]
    NoTags,
    #[error("manifest {digest} is {size} bytes, more than a registry accepts")]
    ManifestTooLarge { digest: Digest, size: u64 },
    #[error("{what} {digest} to push: {source}")]
    Store {
        what: String,
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error(
        "registry {registry}: the stored login is an identity token, which forge cannot use yet; log in with a username and password or access token"
    )]
    IdentityToken { registry: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("background task failed: {0}")]
    Task(String),
}

impl RegistryClient {
    /// Pushes `image` from `store` under every reference in `tags` and returns the manifest
    /// digest. Tags may name several repositories (even registries); each gets its blobs first,
    /// then the manifest under its first tag, then its other tags. `progress` is called from the
    /// pushing task for every event.
    pub async fn push(
        &self,
        store: &Store,
        image: &PushImage,
        tags: &[Reference],
        progress: &(dyn Fn(PushEvent) + Send + Sync),
    ) -> Result<Digest, PushError> {
        self.push_while_landing(store, image, tags, progress, None)
            .await
    }

    /// [`push`](Self::push), while blobs `sent_to` a repository may still be on their way there
    /// (`landing`, see [`Landing`]; `None`: they arrived).
    pub async fn push_while_landing(
        &self,
        store: &Store,
        image: &PushImage,
        tags: &[Reference],
        progress: &(dyn Fn(PushEvent) + Send + Sync),
        mut landing: Option<Landing<'_>>,
    ) -> Result<Digest, PushError> {
        if tags.is_empty() {
            return Err(PushError::NoTags);
        }
        let manifest = &image.manifest;
        for tag in tags {
            if let Some(pinned) = tag.digest()
                && pinned != manifest.digest.to_string()
            {
                return Err(PushError::TagDigest {
                    tag: tag.to_string(),
                    pinned: pinned.to_string(),
                    actual: manifest.digest.clone(),
                });
            }
        }
        if manifest.size > MAX_MANIFEST_BYTES {
            return Err(PushError::ManifestTooLarge {
                digest: manifest.digest.clone(),
                size: manifest.size,
            });
        }
        // Keeps prune from removing what is being read.
        let session = match store.try_session() {
            Ok(Some(session)) => session,
            // Held by a prune: waited for off the async threads.
            _ => {
                let store = store.clone();
                blocking(move || store.session(), "store session", &manifest.digest).await?
            }
        };
        let body = match image.held.get(&manifest.digest) {
            Some(body) => body.clone(),
            None => {
                let (store, digest) = (store.clone(), manifest.digest.clone());
                let body = blocking(
                    move || store.read_blob(&digest),
                    "manifest",
                    &manifest.digest,
                )
                .await?;
                bytes::Bytes::from(body)
            }
        };
        // Missing blobs fail here, before anything is sent; one the store lacks but whose source
        // repository is known is fetched from there if the target has neither it nor a mount.
        for blob in image.blobs() {
            let digest = &blob.descriptor.digest;
            if !image.held.contains_key(digest)
                && !store.has_blob(digest)
                && blob.mount_from.is_none()
            {
                return Err(PushError::Store {
                    what: "blob".into(),
                    digest: digest.clone(),
                    source: StoreError::BlobNotFound(digest.clone()),
                });
            }
        }

        let mut repositories: Vec<(String, Vec<&Reference>)> = Vec::new();
        for tag in tags {
            let name = tag.name();
            match repositories.iter_mut().find(|(n, _)| *n == name) {
                Some((_, group)) => group.push(tag),
                None => repositories.push((name, vec![tag])),
            }
        }
        // Once one repository of a registry has every blob, the others of that registry mount
        // them from it rather than take another upload of each.
        let mut pushed: Vec<String> = Vec::new();
        for (name, group) in &repositories {
            // The blobs sent to this repository are waited for with its push.
            let landing = image
                .blobs()
                .iter()
                .any(|b| b.sent_to.as_ref() == Some(name))
                .then(|| landing.take())
                .flatten();
            let registry = group[0].registry();
            let sibling = pushed
                .iter()
                .find(|p| p.split_once('/').is_some_and(|(r, _)| r == registry));
            let mounting;
            let this = match sibling {
                Some(from) => {
                    mounting = image.mounting_from(from);
                    &mounting
                }
                None => image,
            };
            self.push_repository(store, this, &body, group, progress, landing)
                .await?;
            pushed.push(name.clone());
        }
        // Blobs that went to none of the repositories pushed: waited for all the same, so that
        // no upload outlives the push.
        if let Some(landing) = landing {
            landing.await;
        }
        drop(session);
        Ok(manifest.digest.clone())
    }

    async fn push_repository(
        &self,
        store: &Store,
        image: &PushImage,
        body: &bytes::Bytes,
        tags: &[&Reference],
        progress: &(dyn Fn(PushEvent) + Send + Sync),
        landing: Option<Landing<'_>>,
    ) -> Result<(), PushError> {
        let target = self.target(tags[0], progress).await?;
        let limit = self.config.max_concurrent_uploads.max(1);
        // The futures are made before they are streamed: a stream that maps borrowed blobs into
        // futures is not provably Send (higher-ranked lifetimes), and servers spawn pushes.
        let pending: Vec<_> = image
            .blobs()
            .into_iter()
            .map(|blob| target.push_blob(store, blob, image.held.get(&blob.descriptor.digest)))
            .collect();
        let uploaded = async {
            let mut uploads = futures::stream::iter(pending).buffer_unordered(limit);
            while let Some(result) = uploads.next().await {
                result?;
            }
            Ok::<(), PushError>(())
        };
        let landed = async {
            match landing {
                Some(landing) => Some(landing.await),
                None => None,
            }
        };
        // Both end before an error is returned: no upload is cut off half way.
        let (uploaded, landed) = futures::future::join(uploaded, landed).await;
        uploaded?;
        // What did not arrive on its way is sent from the store, as any other blob.
        if let Some(landed) = landed {
            let name = target.name();
            for blob in image.blobs() {
                if blob.sent_to.as_ref() == Some(&name) && !landed.contains(&blob.descriptor.digest)
                {
                    let again = PushBlob {
                        sent_to: None,
                        ..blob.clone()
                    };
                    let held = image.held.get(&blob.descriptor.digest);
                    target.push_blob(store, &again, held).await?;
                }
            }
        }
        for tag in tags {
            target
                .push_manifest(tag, body, &image.manifest.media_type)
                .await?;
            progress(PushEvent::ManifestPushed {
                tag: tag.to_string(),
                digest: image.manifest.digest.clone(),
            });
        }
        Ok(())
    }
}

/// Runs a store operation off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    what: &str,
    digest: &Digest,
) -> Result<T, PushError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PushError::Task(e.to_string()))?
        .map_err(|source| PushError::Store {
            what: what.to_string(),
            digest: digest.clone(),
            source,
        })
}
