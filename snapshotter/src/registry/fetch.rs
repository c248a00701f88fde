//! Single requests beside a pull: one blob into the store (streamed, checked as it arrives, and
//! read behind its download by a follower), whether a repository holds a blob, a manifest's bytes;
//! and the order in which a request tries a registry's mirrors ([`super::Mirrors`]) before the
//! registry itself, which pulls share.

use futures::StreamExt;
use oci_client::errors::{DigestError as OciDigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;

use super::open::{BlobStream, First};
use super::pull::{ACCEPTED_MANIFESTS, Ctx, Early, Failure, Follow};
use super::pulled::{BlobKind, PullError, PullEvent};
use super::{RegistryClient, oci_reference};
use crate::reference::Reference;
use crate::store::{Descriptor, Digest, Ingest, Store, StoreError};

impl RegistryClient {
    /// The context of requests to `reference`'s repository, with the credentials they carry
    /// (also stored in the client, where blob requests take them from, unless anonymous requests
    /// to the registry need no token: see `open.rs`).
    pub(super) async fn context<'a>(
        &'a self,
        reference: &'a Reference,
        progress: &'a (dyn Fn(PullEvent) + Send + Sync),
        first: First<'_>,
    ) -> Result<(Ctx<'a>, oci_client::secrets::RegistryAuth), PullError> {
        let auth = self.registry_auth(reference)?;
        let oci = oci_reference(reference);
        let without_credentials = self.authorize(reference, &oci, &auth, first).await;
        let ctx = Ctx {
            client: self,
            reference,
            oci,
            login: super::login_of(&auth),
            without_credentials,
            progress,
        };
        Ok((ctx, auth))
    }

    /// Streams one blob of repository `from` (its tag or digest does not matter) into `store`,
    /// its digest and size checked on the way in, retried on transient failures. Returns whether
    /// it was downloaded (false: the store had it).
    pub async fn fetch_blob(
        &self,
        store: &Store,
        from: &Reference,
        desc: &Descriptor,
        kind: BlobKind,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<bool, PullError> {
        self.through_mirrors(from, |from| async move {
            let (ctx, _) = self.context(&from, progress, First::Other).await?;
            let what = match kind {
                BlobKind::Config => format!("blob {}", desc.digest),
                BlobKind::Layer => format!("layer {}", desc.digest),
            };
            ctx.fetch_blob(store, desc, kind, &what, None, None).await
        })
        .await
    }

    /// Whether repository `from` holds blob `digest` (a HEAD request, retried on transient
    /// failures).
    pub async fn blob_exists(&self, from: &Reference, digest: &Digest) -> Result<bool, PullError> {
        // A mirror that lacks the blob, or fails, is not the answer: the next candidate is asked;
        // the last one's answer stands.
        let candidates = self.candidates(from)?;
        let last = candidates.len() - 1;
        for (i, c) in candidates.iter().enumerate() {
            match self.blob_exists_at(&c.reference, digest).await {
                Ok(true) => return Ok(true),
                Ok(false) | Err(_) if i < last => continue,
                other => return other,
            }
        }
        unreachable!("candidates is not empty")
    }

    async fn blob_exists_at(&self, from: &Reference, digest: &Digest) -> Result<bool, PullError> {
        let (ctx, _) = self.context(from, &|_| {}, First::Other).await?;
        let what = format!("check of blob {digest}");
        ctx.retry(&what, || async {
            if ctx.without_credentials {
                self.own_blob_exists(from.registry(), &ctx.oci, digest)
                    .await
            } else {
                let digest = digest.to_string();
                self.client_for(from).blob_exists(&ctx.oci, &digest).await
            }
            .map_err(|e| ctx.classify(&what, e))
        })
        .await
    }

    /// The manifest (or index) `reference` names, as the registry's bytes, with their digest
    /// (checked against the reference's digest when it has one). Nothing is stored. As a pull's
    /// first answers, they come within [`super::RegistryConfig::answer_deadline`], tries
    /// included: a registry that takes the connection and never answers would otherwise hold
    /// the caller (a cache import, a base's resolution) for every try's read timeout.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let deadline = self.config.answer_deadline;
        let answered = tokio::time::timeout(deadline, async {
            let (ctx, auth) = self
                .context(reference, progress, First::Manifest(ACCEPTED_MANIFESTS))
                .await?;
            ctx.fetch_manifest(&ctx.oci, &auth, "manifest").await
        })
        .await;
        answered.unwrap_or_else(|_| {
            Err(PullError::TimedOut {
                registry: reference.registry().to_string(),
                reference: reference.to_string(),
                what: "manifest".into(),
                after: deadline,
            })
        })
    }

    /// Where a request for `reference` may go, mirrors first (see [`super::Mirrors`]).
    pub(super) fn candidates(
        &self,
        reference: &Reference,
    ) -> Result<Vec<super::Candidate>, PullError> {
        if let Some(e) = &self.config.mirrors_error {
            return Err(PullError::Mirrors(e.clone()));
        }
        let c = self.config.mirrors.candidates(reference);
        if c.is_empty() {
            return Err(PullError::Blocked {
                reference: reference.to_string(),
                file: self
                    .config
                    .mirrors
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            });
        }
        Ok(c)
    }

    /// Tries each candidate of `reference` in order; a mirror's failure moves on to the next, the
    /// last one's is the error.
    pub(super) async fn through_mirrors<T, F, Fut>(
        &self,
        reference: &Reference,
        op: F,
    ) -> Result<T, PullError>
    where
        F: Fn(Reference) -> Fut,
        Fut: std::future::Future<Output = Result<T, PullError>>,
    {
        let candidates = self.candidates(reference)?;
        let last = candidates.len() - 1;
        for (i, c) in candidates.into_iter().enumerate() {
            match op(c.reference).await {
                Ok(v) => return Ok(v),
                Err(e) if i == last => return Err(e),
                Err(_) => continue,
            }
        }
        unreachable!("candidates is not empty")
    }
}

impl Ctx<'_> {
    /// Streams one blob into the store, verified; returns whether it was downloaded (false: the
    /// store had it). `early` is handed the downloaded bytes (of a blob of at most 4 MiB) once
    /// they matched the digest, before the store syncs them.
    pub(super) async fn fetch_blob(
        &self,
        store: &Store,
        desc: &Descriptor,
        kind: BlobKind,
        what: &str,
        follow: Option<Follow<'_>>,
        early: Option<Early<'_>>,
    ) -> Result<bool, PullError> {
        let cached = || {
            (self.progress)(PullEvent::Cached {
                digest: desc.digest.clone(),
                kind,
                total: desc.size,
            })
        };
        if store.has_blob(&desc.digest) {
            crate::store::touch(&store.blob_path(&desc.digest));
            cached();
            return Ok(false);
        }
        let downloaded = self
            .retry(what, || {
                self.download_once(store, desc, kind, what, follow, early)
            })
            .await?;
        if !downloaded {
            cached();
        }
        Ok(downloaded)
    }

    async fn download_once(
        &self,
        store: &Store,
        desc: &Descriptor,
        kind: BlobKind,
        what: &str,
        follow: Option<Follow<'_>>,
        early: Option<Early<'_>>,
    ) -> Result<bool, Failure> {
        let fatal = |e: PullError| Failure::Fatal(e);
        let ingest = {
            let store = store.clone();
            let digest = desc.digest.clone();
            let size = desc.size;
            tokio::task::spawn_blocking(move || store.ingest(&digest, Some(size)))
                .await
                .map_err(|e| fatal(PullError::Task(e.to_string())))?
                .map_err(|e| fatal(e.into()))?
        };
        let Ingest::Write(mut writer) = ingest else {
            return Ok(false);
        };
        // A follower reads the file behind the writer; without one (or when the file cannot be
        // opened a second time) the download goes on alone.
        let progress = follow.and_then(|f| {
            let (progress, blob) = super::follow::follow(writer.temp_path()).ok()?;
            f.follower.follow(f.index, desc, blob);
            Some(progress)
        });
        (self.progress)(PullEvent::Started {
            digest: desc.digest.clone(),
            kind,
            total: desc.size,
        });
        let stream = if self.without_credentials {
            let digest = desc.digest.to_string();
            self.client
                .blob_without_credentials(self.reference, &self.oci, &digest)
                .await
        } else {
            let client = self.client.client_for(self.reference);
            let oci_desc = OciDescriptor {
                media_type: "application/octet-stream".to_string(),
                digest: desc.digest.to_string(),
                size: desc.size as i64,
                ..OciDescriptor::default()
            };
            client
                .pull_blob_stream(&self.oci, &oci_desc)
                .await
                .map(|sized| -> BlobStream { Box::pin(sized) })
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return Err(self.classify(what, e)),
        };

        // Hashing and disk writes happen on a blocking thread fed through a small channel, so the
        // network side never waits on fsync and memory stays bounded per download.
        let (tx, mut rx) = chunk_channel(&stream);
        let sink = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_chunk(&chunk)?;
                if let Some(progress) = &progress {
                    writer.flush_to_file()?;
                    progress.advance(writer.written());
                }
            }
            Ok::<_, StoreError>((writer, progress))
        });

        let mut kept = early
            .filter(|_| desc.size <= super::pull::MAX_MANIFEST_BYTES as u64)
            .map(|_| Vec::with_capacity(desc.size as usize));
        let mut received: u64 = 0;
        let mut stream_error = None;
        let mut digest_reported_bad = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if let Some(kept) = &mut kept
                        && received <= desc.size
                    {
                        kept.extend_from_slice(&bytes);
                    }
                    if tx.send(bytes).await.is_err() {
                        // The writer stopped (too many bytes, disk error); its error says why.
                        break;
                    }
                    (self.progress)(PullEvent::Progress {
                        digest: desc.digest.clone(),
                        bytes: received,
                        total: desc.size,
                    });
                }
                Err(e) => {
                    // oci-client's own digest check fires at the end of the stream; the store
                    // repeats it on commit with our own count, which gives the actual digest.
                    let is_digest = e
                        .get_ref()
                        .is_some_and(|inner| inner.downcast_ref::<OciDigestError>().is_some());
                    if is_digest {
                        digest_reported_bad = true;
                    } else {
                        stream_error = Some(e);
                    }
                    break;
                }
            }
        }
        drop(tx);
        let writer = sink
            .await
            .map_err(|e| fatal(PullError::Task(e.to_string())))?;
        let (writer, progress) = match writer {
            Ok(w) => w,
            Err(StoreError::SizeMismatch {
                expected, actual, ..
            }) => return Err(fatal(self.size_mismatch(what, expected, actual))),
            Err(e) => return Err(fatal(e.into())),
        };
        if let Some(e) = stream_error {
            // The connection broke mid-blob: drop the partial temp file and try again.
            let text = e.to_string();
            return Err(Failure::Transient(
                text,
                self.registry_error(what, OciDistributionError::IoError(e)),
            ));
        }
        let written = writer.written();
        if written < desc.size && !digest_reported_bad {
            let text = format!("stream ended after {written} of {} bytes", desc.size);
            return Err(Failure::Transient(
                text,
                self.size_mismatch(what, desc.size, written),
            ));
        }
        // The whole blob is in the file and matches its digest: a follower reads its end (and
        // `early` its bytes) while the store syncs it.
        let whole = writer.is_whole();
        if let (Some(early), Some(kept)) = (early, &kept)
            && whole
        {
            early(kept);
        }
        let progress = match progress {
            Some(p) if whole => {
                p.complete(written);
                None
            }
            other => other,
        };
        let committed = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| fatal(PullError::Task(e.to_string())))?;
        match committed {
            Ok(()) => {}
            Err(StoreError::DigestMismatch { expected, actual }) => {
                return Err(fatal(self.digest_mismatch(
                    what,
                    &expected.to_string(),
                    &actual.to_string(),
                )));
            }
            Err(StoreError::SizeMismatch {
                expected, actual, ..
            }) => return Err(fatal(self.size_mismatch(what, expected, actual))),
            Err(e) => return Err(fatal(e.into())),
        }
        if let Some(progress) = progress {
            progress.complete(written);
        }
        (self.progress)(PullEvent::Done {
            digest: desc.digest.clone(),
            bytes: written,
        });
        Ok(true)
    }

    pub(super) fn size_mismatch(&self, what: &str, expected: u64, actual: u64) -> PullError {
        PullError::SizeMismatch {
            registry: self.reference.registry().to_string(),
            reference: self.reference.to_string(),
            what: what.to_string(),
            expected,
            actual,
        }
    }
}

/// A bounded channel carrying the stream's chunk type (oci-client's `Bytes`, unnamed here).
fn chunk_channel<T, S: futures::Stream<Item = Result<T, std::io::Error>>>(
    _: &S,
) -> (tokio::sync::mpsc::Sender<T>, tokio::sync::mpsc::Receiver<T>) {
    tokio::sync::mpsc::channel(8)
}
