//! Pull: resolve a reference to a manifest (through an index when the tag names one, picking the
//! host platform), then stream config and layers into the store with their digests checked on the
//! way in, several at once, skipping blobs the store already has, retrying what fails transiently,
//! and reporting progress. Ends by recording the image in the store for unpack to find.

use futures::StreamExt;
use oci_client::errors::{DigestError as OciDigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;

use super::open::First;
use super::pulled::{BlobKind, PullError, PullEvent};
use super::raw::{RawConfig, RawIndexEntry, RawManifest, RawPlatform};
use super::{LayerFollower, RegistryClient, oci_reference};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::retry::{Transient, retry};
use crate::store::{Descriptor, Digest, ImageRecord, Store, StoreError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

pub(super) const ACCEPTED_MANIFESTS: &[&str] =
    &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Layer media types unpack knows: OCI plain/gzip/zstd (and their non-distributable forms) and
/// Docker's gzip.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Manifests and configs larger than this are refused rather than buffered.
pub(super) const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// How one failed request should be handled.
pub(super) enum Failure {
    Transient(String, PullError),
    Fatal(PullError),
}

impl Failure {
    fn into_error(self) -> PullError {
        match self {
            Failure::Transient(_, e) | Failure::Fatal(e) => e,
        }
    }
}

impl Transient for Failure {
    fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient(..))
    }
}

/// Context shared by the pieces of one pull, for error messages.
pub(super) struct Ctx<'a> {
    pub(super) client: &'a RegistryClient,
    pub(super) reference: &'a Reference,
    pub(super) oci: oci_client::Reference,
    /// The username the requests carry; `None` when anonymous.
    pub(super) login: Option<String>,
    /// The requests go out without credentials, through forge's own client (see `open.rs`).
    pub(super) without_credentials: bool,
    pub(super) progress: &'a (dyn Fn(PullEvent) + Send + Sync),
}

impl Ctx<'_> {
    pub(super) fn registry_error(&self, what: &str, source: OciDistributionError) -> PullError {
        let status = super::status_of(&source);
        if let Some(status @ (401 | 403)) = status {
            return PullError::Denied {
                registry: self.reference.registry().to_string(),
                reference: self.reference.to_string(),
                what: what.to_string(),
                status,
                login: self.login.clone(),
                source: Box::new(source),
            };
        }
        if status == Some(404) {
            return PullError::NotFound {
                registry: self.reference.registry().to_string(),
                reference: self.reference.to_string(),
                what: what.to_string(),
                answer: Box::new(source),
            };
        }
        PullError::Registry {
            registry: self.reference.registry().to_string(),
            reference: self.reference.to_string(),
            what: what.to_string(),
            answer: Box::new(source),
        }
    }

    fn malformed(&self, what: &str, message: impl Into<String>) -> PullError {
        PullError::Malformed {
            reference: self.reference.to_string(),
            what: what.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn digest_mismatch(&self, what: &str, expected: &str, actual: &str) -> PullError {
        PullError::DigestMismatch {
            registry: self.reference.registry().to_string(),
            reference: self.reference.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    pub(super) fn classify(&self, what: &str, e: OciDistributionError) -> Failure {
        let transient = super::is_transient(&e);
        let text = super::answer_text(&e);
        let err = self.registry_error(what, e);
        if transient {
            Failure::Transient(text, err)
        } else {
            Failure::Fatal(err)
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, PullError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        // Only transient failures are retried.
        let on_retry = |failure: &Failure, attempt, took, delay| {
            if let Failure::Transient(text, _) = failure {
                (self.progress)(PullEvent::Retrying {
                    what: what.to_string(),
                    attempt,
                    took,
                    delay,
                    error: text.clone(),
                })
            }
        };
        retry(&self.client.config.retry, op, on_retry)
            .await
            .map_err(|gave_up| gave_up.error.into_error())
    }

    /// Fetches a manifest or index by tag or digest; returns its bytes and their digest (checked
    /// against the reference's digest when it has one).
    pub(super) async fn fetch_manifest(
        &self,
        oci: &oci_client::Reference,
        auth: &oci_client::secrets::RegistryAuth,
        what: &str,
    ) -> Result<(Vec<u8>, Digest), PullError> {
        // oci-client's manifest request stores `auth` in the client, which makes every later
        // request ask for a challenge first: not for a registry that wants no token (whose
        // manifests need no oci-client client at all).
        let without_credentials = self.without_credentials;
        let body = self
            .retry(what, || async {
                let fetched = if without_credentials {
                    self.client
                        .manifest_without_credentials(self.reference, oci, ACCEPTED_MANIFESTS)
                        .await
                } else {
                    self.client
                        .client_for(self.reference)
                        .pull_manifest_raw(oci, auth, ACCEPTED_MANIFESTS)
                        .await
                        .map(|(body, _)| body)
                };
                match fetched {
                    Ok(body) => Ok(body),
                    Err(OciDistributionError::DigestError(OciDigestError::VerificationError {
                        expected,
                        actual,
                    })) => Err(Failure::Fatal(
                        self.digest_mismatch(what, &expected, &actual),
                    )),
                    Err(e) => Err(self.classify(what, e)),
                }
            })
            .await?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(self.malformed(what, format!("{} bytes is too large", body.len())));
        }
        let actual = Digest::of(&body);
        if let Some(expected) = oci.digest()
            && expected != actual.to_string()
        {
            return Err(self.digest_mismatch(what, expected, &actual.to_string()));
        }
        Ok((body.to_vec(), actual))
    }
}

/// Runs a store operation (file I/O, fsync, database) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Task(e.to_string()))?
        .map_err(PullError::from)
}

/// What is handed a small blob's bytes once they matched its digest (see `Ctx::fetch_blob`).
pub(super) type Early<'a> = &'a (dyn Fn(&[u8]) + Send + Sync);

/// One layer's download, read by a [`LayerFollower`] as it arrives.
#[derive(Clone, Copy)]
pub(super) struct Follow<'a> {
    pub(super) follower: &'a dyn LayerFollower,
    pub(super) index: usize,
}

/// What a pull brings into the store, and whether it records the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Every blob, then the image's record.
    Record,
    /// Every blob; the caller records the image.
    Unrecorded,
    /// The manifest and the config only (the store holds part of the image: no record).
    ManifestAndConfig,
}

impl RegistryClient {
    /// Pulls `reference` into `store` and records it there; returns the record. `progress` is
    /// called from the pulling task for every event.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<ImageRecord, PullError> {
        self.pull_with(store, reference, progress, Fetch::Record, None)
            .await
    }

    /// [`pull`](Self::pull) without the recording: every blob is brought into `store`, and the
    /// record is returned for the caller to write (with [`Store::record`], perhaps with whatever
    /// else it records), so that the metadata commit need not come between a pull and the work
    /// that uses it. The caller holds a [`Store::session`] until then, so that no prune removes
    /// the blobs first.
    ///
    /// With a `follower`, each layer is also handed to it as it starts downloading, to be read
    /// while it arrives, and the config's diff_ids as soon as the config is in ([`LayerFollower`]).
    /// The follower is told when the pull is over, however it ended.
    pub async fn pull_unrecorded(
        &self,
        store: &Store,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
        follower: Option<&dyn LayerFollower>,
    ) -> Result<ImageRecord, PullError> {
        let pulled = self
            .pull_with(store, reference, progress, Fetch::Unrecorded, follower)
            .await;
        if let Some(f) = follower {
            f.pull_done();
        }
        pulled
    }

    /// Resolves `reference` as [`pull`](Self::pull) does and brings its manifest and config into
    /// `store`, but not its layers: a build fetches those (with [`fetch_blob`](Self::fetch_blob))
    /// only when a step needs the filesystem, so a build served from its cache downloads none.
    /// The image is not recorded in the store, which holds only part of it.
    pub async fn resolve(
        &self,
        store: &Store,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<ImageRecord, PullError> {
        self.pull_with(store, reference, progress, Fetch::ManifestAndConfig, None)
            .await
    }

    async fn pull_with(
        &self,
        store: &Store,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
        fetch: Fetch,
        follower: Option<&dyn LayerFollower>,
    ) -> Result<ImageRecord, PullError> {
        self.through_mirrors(reference, |from| async move {
            self.pull_from(store, &from, reference, progress, fetch, follower)
                .await
        })
        .await
    }

    /// Pulls from `from` (`reference` itself or a mirror of it); the record names `reference`.
    async fn pull_from(
        &self,
        store: &Store,
        from: &Reference,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
        fetch: Fetch,
        follower: Option<&dyn LayerFollower>,
    ) -> Result<ImageRecord, PullError> {
        let layers_too = fetch != Fetch::ManifestAndConfig;
        let recorded_as = reference;
        let reference = from;
        // The registry's first answers, the challenge and the manifest, come within a deadline,
        // tries included: one that takes the connection and never answers would otherwise hold
        // the pull for every try's read timeout (five tries of two minutes each).
        let deadline = self.config.answer_deadline;
        let answered = tokio::time::timeout(deadline, async {
            let (ctx, auth) = self
                .context(reference, progress, First::Manifest(ACCEPTED_MANIFESTS))
                .await?;
            let top = ctx.fetch_manifest(&ctx.oci, &auth, "manifest").await?;
            Ok::<_, PullError>((ctx, auth, top))
        })
        .await;
        let (ctx, auth, (top_bytes, top_digest)) = match answered {
            Ok(answered) => answered?,
            Err(_) => {
                return Err(PullError::TimedOut {
                    registry: reference.registry().to_string(),
                    reference: reference.to_string(),
                    what: "manifest".into(),
                    after: deadline,
                });
            }
        };
        // Keeps prune away until the record below references what this pull brings in.
        let session = match store.try_session()? {
            Some(session) => session,
            None => {
                let store = store.clone();
                blocking(move || store.session()).await?
            }
        };

        let top: RawManifest = serde_json::from_slice(&top_bytes)
            .map_err(|e| ctx.malformed("manifest", e.to_string()))?;
        let top_type = manifest_type(&top, &ctx)?;

        let (index, manifest_bytes, manifest_desc, chosen_platform) = if top.manifests.is_some() {
            let entry = self.choose_platform(&top, &ctx)?;
            let digest: Digest = entry
                .digest
                .parse()
                .map_err(|e: crate::store::DigestError| ctx.malformed("index", e.to_string()))?;
            let oci = oci_reference(&reference.with_digest(&digest.to_string()));
            let (bytes, actual) = ctx.fetch_manifest(&oci, &auth, "platform manifest").await?;
            debug_assert_eq!(actual, digest);
            if bytes.len() as i64 != entry.size {
                return Err(ctx.size_mismatch(
                    "platform manifest",
                    entry.size.max(0) as u64,
                    bytes.len() as u64,
                ));
            }
            let index_desc = Descriptor {
                media_type: top_type,
                digest: top_digest.clone(),
                size: top_bytes.len() as u64,
            };
            {
                let (store, bytes, digest) = (store.clone(), top_bytes.clone(), top_digest.clone());
                blocking(move || store.write_blob(&bytes, Some(&digest))).await?;
            }
            let manifest_desc = Descriptor {
                media_type: entry.media_type.clone(),
                digest,
                size: bytes.len() as u64,
            };
            let platform = entry.platform.as_ref().map(RawPlatform::show);
            (Some(index_desc), bytes, manifest_desc, platform)
        } else {
            let desc = Descriptor {
                media_type: top_type,
                digest: top_digest.clone(),
                size: top_bytes.len() as u64,
            };
            (None, top_bytes, desc, None)
        };

        let manifest: RawManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ctx.malformed("platform manifest", e.to_string()))?;
        if manifest.manifests.is_some() {
            return Err(ctx.malformed("platform manifest", "an index inside an index"));
        }
        manifest_type(&manifest, &ctx)?;
        let config = descriptor(&ctx, "config", manifest.config.as_ref())?;
        let layers = manifest
            .layers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = descriptor(&ctx, &format!("layer {i}"), Some(l))?;
                if !LAYER_TYPES.contains(&d.media_type.as_str()) {
                    return Err(PullError::MediaType {
                        reference: reference.to_string(),
                        what: format!("layer {i} ({})", d.digest),
                        media_type: d.media_type,
                    });
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The manifest goes into the store (a synced write) while its blobs download.
        let manifest_written = {
            let (store, bytes) = (store.clone(), manifest_bytes.clone());
            let digest = manifest_desc.digest.clone();
            blocking(move || store.write_blob(&bytes, Some(&digest)))
        };
        (ctx.progress)(PullEvent::Resolved {
            reference: reference.to_string(),
            manifest: manifest_desc.digest.clone(),
            platform: chosen_platform
                .clone()
                .unwrap_or_else(|| self.config.platform.to_string()),
            layers: layers.len(),
        });

        // The config and the layers at once: each blob is checked against its own digest as it
        // arrives, and the config's word on the layers (how many) is checked when all are in.
        let ctx = &ctx;
        let follower = follower.filter(|_| layers_too);
        let limit = self.config.max_concurrent_downloads.max(1);
        // Futures made before they are streamed, so the pull stays provably Send (see push).
        let pending: Vec<_> = layers
            .iter()
            .filter(|_| layers_too)
            .enumerate()
            .map(|(i, layer)| async move {
                let follow = follower.map(|follower| Follow { follower, index: i });
                ctx.fetch_blob(
                    store,
                    layer,
                    BlobKind::Layer,
                    &format!("layer {i}"),
                    follow,
                    None,
                )
                .await
            })
            .collect();
        let all_layers = async {
            let mut downloads = futures::stream::iter(pending).buffer_unordered(limit);
            while let Some(result) = downloads.next().await {
                result?;
            }
            Ok::<(), PullError>(())
        };
        // The config is read as soon as it is in, while the layers go on: a follower learns the
        // diff_ids from its bytes once they match its digest, while the store syncs them.
        let told = std::sync::atomic::AtomicBool::new(false);
        let tell = |raw: &RawConfig| {
            if let Some(f) = follower
                && let Some(ids) = raw.diff_ids()
            {
                f.diff_ids(&ids);
                told.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let tell_bytes = |config_bytes: &[u8]| {
            if let Ok(raw) = serde_json::from_slice::<RawConfig>(config_bytes) {
                tell(&raw);
            }
        };
        let config_read = async {
            let early = follower.map(|_| &tell_bytes as Early<'_>);
            ctx.fetch_blob(store, &config, BlobKind::Config, "config", None, early)
                .await?;
            let config_bytes = {
                let (store, digest) = (store.clone(), config.digest.clone());
                blocking(move || store.read_blob(&digest)).await?
            };
            if config_bytes.len() > MAX_MANIFEST_BYTES {
                return Err(ctx.malformed("config", "larger than 4 MiB"));
            }
            let raw_config: RawConfig = serde_json::from_slice(&config_bytes)
                .map_err(|e| ctx.malformed("config", e.to_string()))?;
            // A config the store had already was not downloaded: it is told now.
            if !told.load(std::sync::atomic::Ordering::Relaxed) {
                tell(&raw_config);
            }
            Ok(raw_config)
        };
        // All run to their end before an error of any is returned: a download dropped half way
        // could leave its writer's temporary file behind.
        let (raw_config, layers_fetched, manifest_written) =
            futures::future::join3(config_read, all_layers, manifest_written).await;
        manifest_written?;
        layers_fetched?;
        let raw_config = raw_config?;
        if let Some(rootfs) = &raw_config.rootfs
            && rootfs.diff_ids.len() != layers.len()
        {
            return Err(ctx.malformed(
                "config",
                format!(
                    "{} diff_ids for {} layers",
                    rootfs.diff_ids.len(),
                    layers.len()
                ),
            ));
        }

        let platform = chosen_platform.unwrap_or_else(|| {
            let unknown = || "unknown".to_string();
            Platform {
                os: raw_config.os.clone().unwrap_or_else(unknown),
                architecture: raw_config.architecture.clone().unwrap_or_else(unknown),
                variant: raw_config.variant.clone().unwrap_or_default(),
            }
            .to_string()
        });
        let record = ImageRecord {
            reference: recorded_as.to_string(),
            index,
            manifest: manifest_desc,
            config,
            layers,
            platform,
            recorded_unix: crate::store::unix_now(),
        };
        if fetch == Fetch::Record {
            let store = store.clone();
            let record = record.clone();
            blocking(move || store.put_image(&record)).await?;
        }
        drop(session);
        Ok(record)
    }

    fn choose_platform<'m>(
        &self,
        index: &'m RawManifest,
        ctx: &Ctx<'_>,
    ) -> Result<&'m RawIndexEntry, PullError> {
        let entries = index.manifests.as_deref().unwrap_or_default();
        let wanted = &self.config.platform;
        let fits = |e: &&RawIndexEntry| {
            e.platform
                .as_ref()
                .is_some_and(|p| wanted.matches(&p.platform()))
                && matches!(e.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
        };
        if let Some(e) = entries.iter().find(fits) {
            return Ok(e);
        }
        // The platform is there, but as another kind of entry (an index within the index, which
        // forge does not follow): said as such, not as a platform the index lacks.
        if let Some(e) = entries.iter().find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| wanted.matches(&p.platform()))
        }) {
            return Err(PullError::MediaType {
                reference: ctx.reference.to_string(),
                what: format!("the index's entry for {wanted}"),
                media_type: e.media_type.clone(),
            });
        }
        let mut available: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(RawPlatform::show)
            .collect();
        available.dedup();
        if available.is_empty() {
            available.push("(none)".into());
        }
        Err(PullError::NoPlatform {
            reference: ctx.reference.to_string(),
            wanted: wanted.to_string(),
            available,
        })
    }
}

/// The manifest's media type, from its `mediaType` field or, failing that, its shape.
fn manifest_type(m: &RawManifest, ctx: &Ctx<'_>) -> Result<String, PullError> {
    if m.schema_version != Some(2) {
        let what = match m.media_type.as_deref() {
            Some(DOCKER_SCHEMA1) | None if m.schema_version == Some(1) => {
                "Docker schema 1 manifest (deprecated; re-push the image with a current client)"
                    .to_string()
            }
            _ => format!("schemaVersion {:?}", m.schema_version),
        };
        return Err(ctx.malformed("manifest", format!("unsupported {what}")));
    }
    let ty = match (&m.media_type, &m.manifests) {
        (Some(t), _) => t.clone(),
        (None, Some(_)) => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if !ACCEPTED_MANIFESTS.contains(&ty.as_str()) {
        return Err(PullError::MediaType {
            reference: ctx.reference.to_string(),
            what: "manifest".into(),
            media_type: ty,
        });
    }
    Ok(ty)
}

fn descriptor(
    ctx: &Ctx<'_>,
    what: &str,
    d: Option<&OciDescriptor>,
) -> Result<Descriptor, PullError> {
    let d = d.ok_or_else(|| ctx.malformed("manifest", format!("no {what} descriptor")))?;
    let digest = d
        .digest
        .parse()
        .map_err(|e: crate::store::DigestError| ctx.malformed(what, e.to_string()))?;
    let size = u64::try_from(d.size)
        .map_err(|_| ctx.malformed(what, format!("negative size {}", d.size)))?;
    Ok(Descriptor {
        media_type: d.media_type.clone(),
        digest,
        size,
    })
}
