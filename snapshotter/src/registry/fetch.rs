//! Single requests beside a pull: one blob into the store, whether a repository holds a blob, a
//! manifest's bytes; and the order in which a request tries a registry's mirrors
//! ([`super::Mirrors`]) before the registry itself, which pulls share.

use super::pull::{BlobKind, Ctx, PullError, PullEvent};
use super::{RegistryClient, oci_reference};
use crate::reference::Reference;
use crate::store::{Descriptor, Digest, Store};

impl RegistryClient {
    /// The context of requests to `reference`'s repository, with the credentials they carry
    /// (also stored in the client, where blob requests take them from).
    pub(super) async fn context<'a>(
        &'a self,
        reference: &'a Reference,
        progress: &'a (dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(Ctx<'a>, oci_client::secrets::RegistryAuth), PullError> {
        let auth = self.registry_auth(reference)?;
        let ctx = Ctx {
            client: self,
            reference,
            oci: oci_reference(reference),
            login: super::login_of(&auth),
            progress,
        };
        self.client_for(reference)
            .store_auth_if_needed(ctx.oci.resolve_registry(), &auth)
            .await;
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
            let (ctx, _) = self.context(&from, progress).await?;
            let what = match kind {
                BlobKind::Config => format!("blob {}", desc.digest),
                BlobKind::Layer => format!("layer {}", desc.digest),
            };
            ctx.fetch_blob(store, desc, kind, &what, None).await
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
        let (ctx, _) = self.context(from, &|_| {}).await?;
        let client = self.client_for(from);
        let what = format!("check of blob {digest}");
        let digest = digest.to_string();
        ctx.retry(&what, || async {
            client
                .blob_exists(&ctx.oci, &digest)
                .await
                .map_err(|e| ctx.classify(&what, e))
        })
        .await
    }

    /// The manifest (or index) `reference` names, as the registry's bytes, with their digest
    /// (checked against the reference's digest when it has one). Nothing is stored.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(Vec<u8>, Digest), PullError> {
        let (ctx, auth) = self.context(reference, progress).await?;
        ctx.fetch_manifest(&ctx.oci, &auth, "manifest").await
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
