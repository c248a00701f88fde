//! One repository a push sends to, and the requests for each of its blobs: asked for, mounted
//! from a sibling repository, or uploaded from the store (or from bytes held in memory), each
//! retried on transient failures, through forge's own requests where the registry wants no token
//! (`upload.rs`) and oci-client's elsewhere.

use std::io::Read;

use futures::StreamExt;
use oci_client::errors::OciDistributionError;

use super::push::{PushBlob, PushError, PushEvent};
use super::upload::{Piece, Session};
use super::{BlobKind, PullError, RegistryClient, is_transient, oci_reference, status_of};
use crate::reference::Reference;
use crate::retry::{GaveUp, Transient, retry};
use crate::store::{Descriptor, Store, StoreError};

/// Bytes read from the store and sent per request: oci-client's chunk size, so each read becomes
/// one PATCH and at most this much of a blob is in memory per upload.
const UPLOAD_CHUNK: usize = 4 << 20;

/// How one failed try should be handled.
enum Failure {
    Oci(OciDistributionError),
    /// An upload session the registry no longer knows (404 to a chunk or a commit: it dropped
    /// the session, as some registries do with one no bytes came for a while, such as one opened
    /// ahead): tried again on a fresh one.
    SessionGone(OciDistributionError),
    Fatal(PushError),
}

impl From<OciDistributionError> for Failure {
    fn from(e: OciDistributionError) -> Self {
        Failure::Oci(e)
    }
}

impl Transient for Failure {
    fn is_transient(&self) -> bool {
        match self {
            Failure::Oci(e) => is_transient(e),
            Failure::SessionGone(_) => true,
            Failure::Fatal(_) => false,
        }
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
    /// The registry's challenge is a bearer one: a login gets a token for each request, so a 401
    /// once it has one is the token not covering the request (a wrong password fails the
    /// token's own request, oci-client's `AuthenticationFailure`).
    bearer: bool,
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
                token_granted: self.bearer
                    && !matches!(e, OciDistributionError::AuthenticationFailure(_)),
                source: Box::new(e),
            },
            _ => PushError::Registry {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: what.to_string(),
                status,
                answer: Box::new(e),
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
        let on_retry = |failure: &Failure, attempt, took, delay| {
            if let Failure::Oci(e) | Failure::SessionGone(e) = failure {
                (self.progress)(PushEvent::Retrying {
                    what: format!("{what} in {}", self.name()),
                    attempt,
                    took,
                    delay,
                    error: e.to_string(),
                })
            }
        };
        match retry(&self.client.config.retry, op, on_retry).await {
            Ok(v) => Ok(v),
            Err(GaveUp {
                error: Failure::Oci(e) | Failure::SessionGone(e),
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
    pub(super) async fn push_blob(
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
        // A blob this build made (held in memory) with a session opened ahead for it
        // (`spare.rs`): the build wrote layers, so the blob is new, and it is sent without
        // asking first (a registry that has it takes the same bytes again).
        if held.is_some()
            && matches!(self.via, Via::Own)
            && let Some(ahead) = self
                .client
                .take_spare(&self.registry, self.oci.repository())
                .await
        {
            return self.upload(store, desc, kind, Some(ahead), held).await;
        }
        let what = format!("check of {kind} {digest}");
        let check = self.retry(&what, || async {
            Ok(match self.via {
                Via::Own => {
                    self.client
                        .own_blob_exists(&self.registry, &self.oci, &desc.digest)
                        .await?
                }
                Via::Oci(oci_client) => oci_client.blob_exists(&self.oci, &digest).await?,
            })
        });
        // A blob of one chunk that no repository is known to have (this build's, or a cache's):
        // its upload session is opened while the registry is asked whether it has the blob, so
        // that its upload, when it has not, is one request more instead of two (`upload.rs`). A
        // refusal to open it is the upload's, reported if the registry lacks the blob; a
        // transient failure leaves the upload to open its own, retried. A base image's layer is
        // asked for first: a registry pushed to has it more often than not (every push after
        // the first of an image on that base), and a session opened for nothing is two requests
        // the registry writes and syncs for, the second one in front of the manifest.
        let early = matches!(self.via, Via::Own)
            && desc.size <= UPLOAD_CHUNK as u64
            && blob.mount_from.is_none();
        let (exists, opened) = if early {
            let open = self.client.open_session(&self.registry, &self.oci);
            let (exists, opened) = futures::future::join(check, open).await;
            (exists, Some(opened))
        } else {
            (check.await, None)
        };
        let (mut session, refused) = match opened {
            Some(Ok(session)) => (Some(session), None),
            Some(Err(e)) if !is_transient(&e) => (None, Some(e)),
            _ => (None, None),
        };
        // Only an upload wants the session: not when the registry has the blob, nor when
        // asking failed.
        if !matches!(exists, Ok(false))
            && let Some(session) = session.take()
        {
            self.client.cancel_session(session).await;
        }
        let exists = exists?;
        if let Some(e) = refused
            && !exists
        {
            return Err(self.error(&format!("upload of {kind} {digest}"), e));
        }
        if exists {
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
        let early = session.into_inner().unwrap_or_else(|e| e.into_inner());
        self.upload(store, desc, kind, early, held).await
    }

    /// Uploads the blob `desc` (from `held`, else from the store), through `early` on the first
    /// try when a session is open for it already; a retry opens a fresh one.
    async fn upload(
        &self,
        store: &Store,
        desc: &Descriptor,
        kind: &str,
        early: Option<Session>,
        held: Option<&bytes::Bytes>,
    ) -> Result<(), PushError> {
        let early = std::sync::Mutex::new(early);
        self.retry(&format!("upload of {kind} {}", desc.digest), || {
            let early = early.lock().unwrap_or_else(|e| e.into_inner()).take();
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
                        .map_err(|e| match e {
                            OciDistributionError::ServerError { code: 404, .. } => {
                                Failure::SessionGone(e)
                            }
                            e => Failure::Oci(e),
                        })
                }
                Via::Oci(oci_client) => {
                    let body = pieces.map(|p| p.map(|p| p.bytes));
                    let digest = desc.digest.to_string();
                    oci_client
                        .push_blob_stream(&self.oci, body, &digest, Some(desc.size))
                        .await
                        .map(drop)
                        .map_err(Failure::Oci)
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
        result
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
    pub(super) async fn push_manifest(
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
        // Asked only with a login (the answer is kept a while per registry): it tells a missing
        // right from a wrong password when the registry refuses.
        let bearer = matches!(auth, oci_client::secrets::RegistryAuth::Basic(..))
            && !self
                .wants_no_token(
                    &oci,
                    self.uses_plain_http(first.registry()),
                    super::open::First::Other,
                )
                .await;
        Ok(Target {
            client: self,
            via,
            oci,
            registry: first.registry().to_string(),
            repository: first.repository().to_string(),
            login: super::login_of(&auth),
            bearer,
            progress,
        })
    }
}
