//! Push: send an image the store holds (pulled or built) to a registry under one or more tags.
//! Per target repository, blobs the registry has are skipped, blobs from a sibling repository of the
//! same registry are mounted, the rest stream from the store file in bounded chunks, several at
//! once, retried on transient failures; the manifest goes last, as the exact stored bytes. To a
//! registry that wants no token, a blob's last chunk goes with its commit, and a blob of one
//! chunk has its upload session opened while the registry is asked whether it has it (see
//! `upload.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;
use serde::{Deserialize, Serialize};

use super::upload::{Piece, Session};
use super::{AuthError, BlobKind, PullError, RegistryClient, is_transient, oci_reference};
use crate::reference::Reference;
use crate::retry::{GaveUp, Transient, retry};
use crate::store::{Descriptor, Digest, ImageRecord, Store, StoreError};

/// Bytes read from the store and sent per request: oci-client's chunk size, so each read becomes
/// one PATCH and at most this much of a blob is in memory per upload.
const UPLOAD_CHUNK: usize = 4 << 20;

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
        attempt: u32,
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
        super::refusal_text(registry, *status, login.as_deref(), "push")
    )]
    Denied {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        /// The username sent; `None` when anonymous.
        login: Option<String>,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("registry {registry}: {what} in {repository} failed{}: {source}", status_text(*.status))]
    Registry {
        registry: String,
        repository: String,
        what: String,
        status: Option<u16>,
        #[source]
        source: Box<OciDistributionError>,
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

fn status_text(status: Option<u16>) -> String {
    status
        .map(|s| format!(" with status {s}"))
        .unwrap_or_default()
}

/// The HTTP status a failed request got, where oci-client kept it.
fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// How one failed try should be handled.
enum Failure {
    Oci(OciDistributionError),
    Fatal(PushError),
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Self {
        Failure::Oci(e)
    }
}

impl Transient for Failure {
    fn is_transient(&self) -> bool {
        matches!(self, Failure::Oci(e) if is_transient(e))
    }
}

/// One target repository being pushed to.
pub(super) struct Target<'a> {
    client: &'a RegistryClient,
    /// How its requests go out.
    pub(super) via: Via<'a>,
    /// The first tag's reference, used for blob requests (they are per repository).
    pub(super) oci: oci_client::Reference,
    registry: String,
    repository: String,
    /// The username the requests carry; `None` when anonymous.
    login: Option<String>,
    progress: &'a (dyn Fn(PushEvent) + Send + Sync),
}

/// How a push's requests go out.
pub(super) enum Via<'a> {
    /// As forge's own requests: the registry wants no token (`upload.rs`).
    Own,
    /// Through oci-client, which runs the token exchange.
    Oci(&'a oci_client::Client),
}

impl Target<'_> {
    pub(super) fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The registry's name as references give it (`host[:port]`).
    pub(super) fn registry(&self) -> &str {
        &self.registry
    }

    pub(super) fn error(&self, what: &str, e: OciDistributionError) -> PushError {
        let status = status_of(&e);
        match status {
            Some(status @ (401 | 403)) => PushError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: what.to_string(),
                status,
                login: self.login.clone(),
                source: Box::new(e),
            },
            _ => PushError::Registry {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: what.to_string(),
                status,
                source: Box::new(e),
            },
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, PushError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        // Only transient registry errors are retried.
        let on_retry = |failure: &Failure, attempt, delay| {
            if let Failure::Oci(e) = failure {
                (self.progress)(PushEvent::Retrying {
                    what: format!("{what} in {}", self.name()),
                    attempt,
                    delay,
                    error: e.to_string(),
                })
            }
        };
        match retry(&self.client.config.retry, op, on_retry).await {
            Ok(v) => Ok(v),
            Err(GaveUp {
                error: Failure::Oci(e),
                ..
            }) => Err(self.error(what, e)),
            Err(GaveUp {
                error: Failure::Fatal(e),
                ..
            }) => Err(e),
        }
    }

    /// Makes one blob present in the repository: already there, mounted, or uploaded (from
    /// `held`, its bytes, when given; else from the store).
    async fn push_blob(
        &self,
        store: &Store,
        blob: &PushBlob,
        held: Option<&bytes::Bytes>,
    ) -> Result<(), PushError> {
        let desc = &blob.descriptor;
        if blob.sent_to.as_deref() == Some(self.name().as_str()) {
            return Ok(());
        }
        let digest = desc.digest.to_string();
        let kind = match blob.kind {
            BlobKind::Config => "config",
            BlobKind::Layer => "layer",
        };
        let what = format!("check of {kind} {digest}");
        let check = self.retry(&what, || async {
            Ok(match self.via {
                Via::Own => {
                    let registry = &self.registry;
                    self.client
                        .own_blob_exists(registry, &self.oci, &desc.digest)
                        .await?
                }
                Via::Oci(oci_client) => oci_client.blob_exists(&self.oci, &digest).await?,
            })
        });
        // A blob of one chunk with nowhere to mount it from: its upload session is opened while
        // the registry is asked whether it has the blob, so that its upload, when it has not,
        // is one request more instead of two (`upload.rs`). A refusal to open it is the
        // upload's, reported if the registry lacks the blob; a transient failure leaves the
        // upload to open its own, retried.
        let early = matches!(self.via, Via::Own)
            && desc.size <= UPLOAD_CHUNK as u64
            && self.mount_source(blob).is_none();
        let (exists, opened) = if early {
            let open = self.client.open_session(&self.registry, &self.oci);
            let (exists, opened) = futures::future::join(check, open).await;
            (exists, Some(opened))
        } else {
            (check.await, None)
        };
        let (session, refused) = match opened {
            Some(Ok(session)) => (Some(session), None),
            Some(Err(e)) if !is_transient(&e) => (None, Some(e)),
            _ => (None, None),
        };
        let exists = match exists {
            Ok(exists) => exists,
            Err(e) => {
                if let Some(session) = session {
                    self.client.cancel_session(session).await;
                }
                return Err(e);
            }
        };
        if let Some(e) = refused
            && !exists
        {
            return Err(self.error(&format!("upload of {kind} {digest}"), e));
        }
        if exists {
            if let Some(session) = session {
                self.client.cancel_session(session).await;
            }
            (self.progress)(PushEvent::Exists {
                repository: self.name(),
                digest: desc.digest.clone(),
                kind: blob.kind,
                total: desc.size,
            });
            return Ok(());
        }
        // The session the upload's first try uses, when one is open already.
        let session = std::sync::Mutex::new(session);
        if let Some(from) = self.mount_source(blob) {
            let mounted = self
                .retry(&format!("mount of {kind} {digest} from {from}"), || async {
                    let answer = match self.via {
                        // A session the registry opened instead of mounting serves the upload.
                        Via::Own => self
                            .client
                            .own_mount(&self.registry, &self.oci, &from, &desc.digest)
                            .await
                            .map(|opened| match opened {
                                None => true,
                                Some(opened) => {
                                    *session.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(opened);
                                    false
                                }
                            }),
                        Via::Oci(oci_client) => {
                            let source = oci_client::Reference::with_tag(
                                self.registry.clone(),
                                from.clone(),
                                "latest".to_string(),
                            );
                            match oci_client.mount_blob(&self.oci, &source, &digest).await {
                                // 202: the registry did not mount (the source lacks the blob, or
                                // it will not link across repositories) and opened an upload.
                                Err(OciDistributionError::SpecViolationError(_)) => Ok(false),
                                other => other.map(|()| true),
                            }
                        }
                    };
                    match answer {
                        Ok(mounted) => Ok(mounted),
                        Err(e) if is_transient(&e) => Err(Failure::Oci(e)),
                        // Any refusal of the shortcut still leaves the upload to try: token
                        // registries may deny the mount (no pull scope on the source) and still
                        // accept the upload; if the upload is denied too, that error is the one
                        // to report.
                        Err(_) => Ok(false),
                    }
                })
                .await?;
            if mounted {
                (self.progress)(PushEvent::Mounted {
                    repository: self.name(),
                    from: format!("{}/{from}", self.registry),
                    digest: desc.digest.clone(),
                    total: desc.size,
                });
                return Ok(());
            }
        }
        if held.is_none() && !store.has_blob(&desc.digest) {
            self.fetch_from_source(store, blob).await?;
        }
        self.retry(&format!("upload of {kind} {digest}"), || {
            // The session opened early serves the first try; a retry opens a fresh one.
            let early = session.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.upload_once(store, desc, kind, early, held)
        })
        .await?;
        (self.progress)(PushEvent::Uploaded {
            repository: self.name(),
            digest: desc.digest.clone(),
            bytes: desc.size,
        });
        Ok(())
    }

    /// Brings a blob the store lacks from the repository it is known to be in (another registry,
    /// or one that would not mount it), so that it can be uploaded.
    async fn fetch_from_source(&self, store: &Store, blob: &PushBlob) -> Result<(), PushError> {
        let missing = || PushError::Store {
            what: "blob".into(),
            digest: blob.descriptor.digest.clone(),
            source: StoreError::BlobNotFound(blob.descriptor.digest.clone()),
        };
        let hint = blob.mount_from.as_deref().ok_or_else(missing)?;
        let from = Reference::parse(hint).map_err(|_| missing())?;
        self.client
            .fetch_blob(store, &from, &blob.descriptor, blob.kind, &|_| {})
            .await
            .map_err(|source| PushError::Fetch {
                digest: blob.descriptor.digest.clone(),
                from: hint.to_string(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// The repository (of this registry) to mount `blob` from, if its hint names another one.
    fn mount_source(&self, blob: &PushBlob) -> Option<String> {
        let hint = blob.mount_from.as_deref()?;
        let (registry, repository) = hint.split_once('/')?;
        (registry == self.registry && repository != self.repository && !repository.is_empty())
            .then(|| repository.to_string())
    }

    /// One upload: a fresh upload session (or `early`, one opened for it) fed from `held` or else
    /// from the store file, chunk by chunk. The registry computes the digest of what it received
    /// and refuses the commit if it differs.
    async fn upload_once(
        &self,
        store: &Store,
        desc: &Descriptor,
        kind: &str,
        early: Option<Session>,
        held: Option<&bytes::Bytes>,
    ) -> Result<(), Failure> {
        // The body stream must be 'static, and `progress` is not: the stream sends counts through
        // a channel that this task drains while the upload runs.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let pieces = match held {
            Some(bytes) => {
                let _ = tx.send(bytes.len() as u64);
                // The count is all there is to report: the report below ends when it is read.
                drop(tx);
                let piece = Piece {
                    bytes: bytes.clone(),
                    last: true,
                };
                futures::stream::once(async { Ok(piece) }).boxed()
            }
            None => self.store_pieces(store, desc, kind, tx).await?.boxed(),
        };
        let upload = async {
            match self.via {
                Via::Own => {
                    let session = match early {
                        Some(session) => session,
                        None => self.client.open_session(&self.registry, &self.oci).await?,
                    };
                    self.client
                        .send_through(session, pieces, Some(&desc.digest))
                        .await
                        .map(drop)
                }
                Via::Oci(oci_client) => {
                    let body = pieces.map(|p| p.map(|p| p.bytes));
                    let digest = desc.digest.to_string();
                    oci_client
                        .push_blob_stream(&self.oci, body, &digest, Some(desc.size))
                        .await
                        .map(drop)
                }
            }
        };
        let report = async {
            let mut sent = 0;
            while let Some(n) = rx.recv().await {
                sent += n;
                (self.progress)(PushEvent::Uploading {
                    digest: desc.digest.clone(),
                    bytes: sent,
                    total: desc.size,
                });
            }
        };
        let (result, ()) = futures::future::join(upload, report).await;
        result.map_err(Failure::Oci)
    }

    /// The store file of blob `desc` as the pieces of its upload, each counted into `tx` as it
    /// is read.
    async fn store_pieces(
        &self,
        store: &Store,
        desc: &Descriptor,
        kind: &str,
        tx: tokio::sync::mpsc::UnboundedSender<u64>,
    ) -> Result<
        impl futures::Stream<Item = Result<Piece, OciDistributionError>> + Send + 'static,
        Failure,
    > {
        let file = {
            let store = store.clone();
            let digest = desc.digest.clone();
            tokio::task::spawn_blocking(move || store.open_blob(&digest))
                .await
                .map_err(|e| Failure::Fatal(PushError::Task(e.to_string())))?
                .map_err(|source| {
                    Failure::Fatal(PushError::Store {
                        what: kind.to_string(),
                        digest: desc.digest.clone(),
                        source,
                    })
                })?
        };
        let size = desc.size;
        Ok(futures::stream::unfold(Some((file, 0u64)), move |state| {
            let tx = tx.clone();
            async move {
                let (file, read) = state?;
                let chunk = tokio::task::spawn_blocking(move || read_chunk(file)).await;
                match chunk {
                    Ok(Ok((buf, _))) if buf.is_empty() => None,
                    Ok(Ok((buf, file))) => {
                        let _ = tx.send(buf.len() as u64);
                        let read = read + buf.len() as u64;
                        let piece = Piece {
                            bytes: bytes::Bytes::from(buf),
                            last: read >= size,
                        };
                        Some((Ok(piece), Some((file, read))))
                    }
                    Ok(Err(e)) => Some((Err(OciDistributionError::IoError(e)), None)),
                    Err(e) => Some((
                        Err(OciDistributionError::IoError(std::io::Error::other(e))),
                        None,
                    )),
                }
            }
        }))
    }

    /// Puts the manifest under `tag` (a tag or digest of this repository).
    async fn push_manifest(
        &self,
        tag: &Reference,
        body: &bytes::Bytes,
        media_type: &str,
    ) -> Result<(), PushError> {
        let oci = oci_reference(tag);
        let what = format!("manifest for {tag}");
        self.retry(&what, || async {
            let content_type = match media_type.parse() {
                Ok(v) => v,
                Err(_) => {
                    return Err(Failure::Oci(
                        OciDistributionError::UnsupportedMediaTypeError(media_type.to_string()),
                    ));
                }
            };
            match self.via {
                Via::Own => {
                    self.client
                        .own_put_manifest(&self.registry, &oci, body.clone(), media_type)
                        .await?
                }
                Via::Oci(oci_client) => {
                    oci_client
                        .push_manifest_raw(&oci, body.clone(), content_type)
                        .await?;
                }
            }
            Ok(())
        })
        .await
    }
}

/// Reads up to [`UPLOAD_CHUNK`] bytes (less only at the end of the file).
fn read_chunk(mut file: std::fs::File) -> std::io::Result<(Vec<u8>, std::fs::File)> {
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok((buf, file))
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
        let session = {
            let store = store.clone();
            blocking(move || store.session(), "store session", &manifest.digest).await?
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
        for (name, group) in &repositories {
            // The blobs sent to this repository are waited for with its push.
            let landing = image
                .blobs()
                .iter()
                .any(|b| b.sent_to.as_ref() == Some(name))
                .then(|| landing.take())
                .flatten();
            self.push_repository(store, image, &body, group, progress, landing)
                .await?;
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

impl RegistryClient {
    /// The repository of `first` made ready for push requests: its credentials resolved and
    /// stored in the client that reaches its registry.
    pub(super) async fn target<'a>(
        &'a self,
        first: &Reference,
        progress: &'a (dyn Fn(PushEvent) + Send + Sync),
    ) -> Result<Target<'a>, PushError> {
        let auth = self.registry_auth(first).map_err(|e| match e {
            PullError::Auth(a) => PushError::Auth(a),
            PullError::IdentityToken { registry } => PushError::IdentityToken { registry },
            other => PushError::Task(other.to_string()),
        })?;
        let oci = oci_reference(first);
        // oci-client's requests take their credentials from its client's per-registry store.
        let open = self
            .authorize(first, &oci, &auth, super::open::First::Other)
            .await;
        let via = if open {
            Via::Own
        } else {
            Via::Oci(self.client_off_worker(first))
        };
        Ok(Target {
            client: self,
            via,
            oci,
            registry: first.registry().to_string(),
            repository: first.repository().to_string(),
            login: super::login_of(&auth),
            progress,
        })
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
