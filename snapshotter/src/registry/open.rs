//! Anonymous requests to registries that want no token. oci-client asks a registry's `/v2/` for
//! its challenge before every request to a registry it holds credentials for, anonymous ones
//! included, and keeps no answer when there was no bearer challenge: against a registry without
//! auth every request went out twice (16 `GET /v2/` beside 16 other requests in one pushed
//! two-stage build). What it then sends depends only on that challenge, so forge asks once per
//! registry and, where no bearer challenge comes back, gives oci-client no credentials to hold:
//! each request then goes out at once, without credentials, as it did after the asking.
//! oci-client's manifest requests store the credentials they are handed themselves, so for those
//! registries forge fetches manifests with its own request, answered as oci-client answers them.
//! A pull, whose first request is its manifest, asks with that request instead of `/v2/` (as
//! containerd's resolver does): an answer without a bearer challenge is the registry's answer as
//! `/v2/`'s would be, and a manifest that came with it is kept for the request that wants it, so
//! a pull from an open registry makes one request fewer before its blobs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use super::RegistryClient;
use crate::reference::Reference;

/// How long a registry's answer is kept.
const ASKED_FOR: Duration = Duration::from_secs(300);

impl RegistryClient {
    /// Stores `auth` for `oci`'s registry in the client that serves `reference`, where requests
    /// take their credentials from; anonymous access to a registry that names no bearer
    /// challenge is not stored (see the module's docs). Returns whether the requests go without
    /// credentials ([`Self::goes_without_credentials`]).
    pub(super) async fn authorize(
        &self,
        reference: &Reference,
        oci: &oci_client::Reference,
        auth: &RegistryAuth,
        first: First<'_>,
    ) -> bool {
        let open = self
            .goes_without_credentials(reference, oci, auth, first)
            .await;
        if !open {
            self.client_off_worker(reference)
                .store_auth_if_needed(oci.resolve_registry(), auth)
                .await;
        }
        open
    }

    /// Whether requests for `oci` go out without credentials and without oci-client asking for
    /// a challenge first: anonymous ones, to a registry whose `/v2/` names no bearer challenge.
    pub(super) async fn goes_without_credentials(
        &self,
        reference: &Reference,
        oci: &oci_client::Reference,
        auth: &RegistryAuth,
        first: First<'_>,
    ) -> bool {
        matches!(auth, RegistryAuth::Anonymous)
            && self
                .wants_no_token(oci, self.uses_plain_http(reference.registry()), first)
                .await
    }

    /// Whether `oci`'s registry answers without a bearer challenge, asked once per registry and
    /// [`ASKED_FOR`] (again after no answer: a long-lived client, `forge serve`'s, sees a registry
    /// that turns auth on). Anything else keeps oci-client's own way. Asked with `oci`'s manifest
    /// request when that is the caller's `first` request, whose bytes are then kept for
    /// [`Self::manifest_without_credentials`]; else with `/v2/`.
    pub(super) async fn wants_no_token(
        &self,
        oci: &oci_client::Reference,
        plain_http: bool,
        first: First<'_>,
    ) -> bool {
        let registry = oci.resolve_registry();
        let known = self.answers().get(registry).copied();
        if let Some((open, asked)) = known
            && asked.elapsed() < ASKED_FOR
        {
            return open;
        }
        let manifest = match first {
            First::Manifest(accepted) => Some((manifest_url(plain_http, oci), accepted.join(", "))),
            First::Other => None,
        };
        let (url, accept) = match &manifest {
            Some((url, accept)) => (url.clone(), Some(accept.as_str())),
            None => (format!("{}://{registry}/v2/", scheme(plain_http)), None),
        };
        // Read as oci-client reads it: the first challenge, and only a bearer one counts.
        let answered = match self.get(&url, plain_http, accept).await {
            Some(Ok(answer)) => {
                let open = !answer
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .is_some_and(|h| h.to_str().is_ok_and(is_bearer));
                if open
                    && answer.status() == StatusCode::OK
                    && let Some((url, accept)) = manifest
                    && let Ok(body) = answer.bytes().await
                {
                    *self.kept() = Some(KeptManifest {
                        url,
                        accept,
                        body,
                        at: Instant::now(),
                    });
                }
                Some(open)
            }
            _ => None,
        };
        if let Some(open) = answered {
            self.answers()
                .insert(registry.to_string(), (open, Instant::now()));
        }
        answered.unwrap_or(false)
    }

    /// A manifest or index of a registry [`Self::goes_without_credentials`] holds for, by tag
    /// or digest: the request oci-client makes, with its answers read into the same errors.
    pub(super) async fn manifest_without_credentials(
        &self,
        reference: &Reference,
        oci: &oci_client::Reference,
        accepted: &[&str],
    ) -> Result<bytes::Bytes, OciDistributionError> {
        let plain_http = self.uses_plain_http(reference.registry());
        let url = manifest_url(plain_http, oci);
        let accept = accepted.join(", ");
        // The one the registry answered its challenge with, when that asked for this one.
        let kept = self
            .kept()
            .take_if(|k| k.url == url && k.accept == accept && k.at.elapsed() < KEPT_FOR)
            .map(|k| k.body);
        if let Some(body) = kept {
            return Ok(body);
        }
        let answer = self
            .get(&url, plain_http, Some(&accept))
            .await
            .ok_or_else(no_client)??;
        let status = answer.status();
        let body = answer.bytes().await?;
        match status {
            StatusCode::OK => Ok(body),
            s => Err(refused(s, url, &body)),
        }
    }

    /// A blob of `oci`'s repository, from a registry [`Self::goes_without_credentials`] holds
    /// for, as the chunks of its answer: the request oci-client makes, without the oci-client
    /// client (whose making reads every trusted root twice, see [`RegistryClient`]) and without
    /// its second sha256 of the bytes (the store takes one as they arrive). A redirect (to
    /// storage elsewhere) is followed.
    pub(super) async fn blob_without_credentials(
        &self,
        reference: &Reference,
        oci: &oci_client::Reference,
        digest: &str,
    ) -> Result<BlobStream, OciDistributionError> {
        let plain_http = self.uses_plain_http(reference.registry());
        let url = v2_url(plain_http, oci, &format!("blobs/{digest}"));
        let answer = self
            .get(&url, plain_http, None)
            .await
            .ok_or_else(no_client)??;
        match answer.status() {
            StatusCode::OK => Ok(Box::pin(
                answer
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            )),
            s => {
                let body = answer.bytes().await?;
                Err(refused(s, url, &body))
            }
        }
    }

    /// The registries asked so far (a panic elsewhere while it was held leaves it usable).
    fn answers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (bool, Instant)>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Option<KeptManifest>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// GETs `url` (accepting `accept`) with the client for its scheme: a plain-HTTP request goes
    /// out on a client that trusts no root and follows no redirect, and a redirect it is answered
    /// with is asked again on the client with the roots, which follows it wherever it leads.
    /// `None`: no client could be made.
    async fn get(
        &self,
        url: &str,
        plain_http: bool,
        accept: Option<&str>,
    ) -> Option<reqwest::Result<reqwest::Response>> {
        let send = |http: &reqwest::Client| {
            let request = http.get(url);
            match accept {
                Some(accept) => request.header(ACCEPT, accept),
                None => request,
            }
            .send()
        };
        if plain_http {
            match send(self.own_http(true)?).await {
                Ok(answer) if answer.status().is_redirection() => {}
                answered => return Some(answered),
            }
        }
        Some(send(self.own_http(false)?).await)
    }

    /// The client forge's own requests to a registry go out on: for plain HTTP one that trusts
    /// no root and follows no redirect, else one with the roots. `None`: it could not be made.
    pub(super) fn own_http(&self, plain_http: bool) -> Option<&reqwest::Client> {
        if plain_http {
            self.plain.get_or_init(|| self.plain_http().ok()).as_ref()
        } else {
            self.probe.get_or_init(|| self.login_http().ok()).as_ref()
        }
    }
}

/// What a caller's first request is, which asks a registry for its challenge when the answer is
/// not known yet.
#[derive(Debug, Clone, Copy)]
pub(super) enum First<'a> {
    /// The manifest of the caller's reference, accepting these media types.
    Manifest(&'a [&'a str]),
    /// Anything else: `/v2/` is asked.
    Other,
}

/// A manifest fetched while asking its registry for a challenge, until its request takes it (the
/// latest only: the pull that asked takes it as it goes on). One a pull that failed in between
/// left is not taken [`KEPT_FOR`] later: a tag may have moved since.
pub(super) struct KeptManifest {
    url: String,
    accept: String,
    body: bytes::Bytes,
    at: Instant,
}

/// How long a kept manifest is the answer to its request.
const KEPT_FOR: Duration = Duration::from_secs(10);

/// The URL of the manifest `oci` names (by digest, else tag, else `latest`).
pub(super) fn manifest_url(plain_http: bool, oci: &oci_client::Reference) -> String {
    let wanted = oci
        .digest()
        .unwrap_or_else(|| oci.tag().unwrap_or("latest"));
    v2_url(plain_http, oci, &format!("manifests/{wanted}"))
}

/// The URL of `path` (`manifests/<tag or digest>`, `blobs/<digest>`) in `oci`'s repository, as
/// oci-client makes it.
pub(super) fn v2_url(plain_http: bool, oci: &oci_client::Reference, path: &str) -> String {
    format!(
        "{}://{}/v2/{}/{path}{}",
        scheme(plain_http),
        oci.resolve_registry(),
        oci.repository(),
        oci.namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default(),
    )
}

pub(super) fn no_client() -> OciDistributionError {
    OciDistributionError::GenericError(Some("no HTTP client could be made".into()))
}

fn scheme(plain_http: bool) -> &'static str {
    if plain_http { "http" } else { "https" }
}

/// A blob's chunks as they arrive.
pub(super) type BlobStream =
    futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// What an answer other than 200 to a GET means, as oci-client reads it, except that a 4xx with
/// an error envelope keeps its status (oci-client drops it): the body stays the message, and
/// `answer_text` reads the envelope's codes from it.
fn refused(status: StatusCode, url: String, body: &[u8]) -> OciDistributionError {
    match status {
        StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
        s if s.is_success() => OciDistributionError::SpecViolationError(format!(
            "Expected HTTP Status {}, got {s} instead",
            StatusCode::OK
        )),
        s => server_error(s, url, body),
    }
}

fn server_error(status: StatusCode, url: String, body: &[u8]) -> OciDistributionError {
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url,
        message: String::from_utf8_lossy(body).to_string(),
    }
}

/// Whether a `WWW-Authenticate` value is a bearer challenge (the scheme is case-insensitive).
fn is_bearer(challenge: &str) -> bool {
    challenge
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
}

#[cfg(test)]
mod tests {
    use super::is_bearer;

    #[test]
    fn only_a_bearer_challenge_counts() {
        assert!(is_bearer(
            r#"Bearer realm="https://auth.example/token",service="r""#
        ));
        assert!(is_bearer("bearer realm=x"));
        assert!(is_bearer("  BEARER realm=x"));
        assert!(!is_bearer(r#"Basic realm="registry""#));
        assert!(!is_bearer(""));
        assert!(!is_bearer("Bear"));
    }
}
