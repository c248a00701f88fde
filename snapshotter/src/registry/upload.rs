//! Push requests to a registry that wants no token (see `open.rs`), made with forge's own client:
//! a push to such a registry needs no oci-client client. The distribution spec lets the request
//! that commits an upload (`PUT <location>?digest=`) carry the upload's final chunk, and forge
//! sends it there: a blob of one chunk (a config, a small layer) takes two requests, the
//! session's opening and its commit, where oci-client's chunked upload takes three (every chunk
//! in a `PATCH`, then an empty `PUT`), and a layer sent while its step writes it is committed with
//! one request once its last bytes are written instead of two. A mount the registry answers by
//! opening an upload (202) leaves that session to the upload instead of behind. A registry that
//! wants a token keeps oci-client's requests, which run the token exchange.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use oci_client::errors::OciDistributionError;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::RegistryClient;
use super::open::{manifest_url, no_client, v2_url};
use crate::store::Digest;

const OCTET_STREAM: &str = "application/octet-stream";

/// A piece of a blob on its way up, and whether it is the blob's last (which then goes with the
/// commit). A stream of pieces may end without a last one: the commit then carries no bytes.
pub(super) struct Piece {
    pub(super) bytes: Bytes,
    pub(super) last: bool,
}

/// An upload session a registry opened: where its next request goes.
pub(super) struct Session {
    /// The `Location` of the registry's last answer, made absolute. Its scheme decides the client
    /// (a registry may hand its uploads to another host).
    url: Url,
    /// Bytes the registry holds so far.
    sent: u64,
}

impl Session {
    fn plain_http(&self) -> bool {
        self.url.scheme() == "http"
    }

    /// The `Content-Range` of the next `len` bytes (`len` > 0).
    fn range(&self, len: u64) -> String {
        format!("{}-{}", self.sent, self.sent + len - 1)
    }
}

/// What a blob's upload committed.
pub(super) struct Committed {
    pub(super) digest: Digest,
    pub(super) size: u64,
}

impl RegistryClient {
    /// An upload session in `oci`'s repository: a spare one opened for it (`spare.rs`), else a
    /// new one. `registry` is the name references give it (`host[:port]`).
    pub(super) async fn open_session(
        &self,
        registry: &str,
        oci: &oci_client::Reference,
    ) -> Result<Session, OciDistributionError> {
        if let Some(session) = self.take_spare(registry, oci.repository()).await {
            return Ok(session);
        }
        self.request_session(registry, oci).await
    }

    /// Opens an upload session in `oci`'s repository (`POST .../blobs/uploads/`).
    pub(super) async fn request_session(
        &self,
        registry: &str,
        oci: &oci_client::Reference,
    ) -> Result<Session, OciDistributionError> {
        let plain_http = self.uses_plain_http(registry);
        let url = v2_url(plain_http, oci, "blobs/uploads/");
        let answer = self
            .own_request(Method::POST, &url, plain_http)?
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        session_from(answer, &url, StatusCode::ACCEPTED, 0).await
    }

    /// Sends `body`'s pieces through `session` and commits it, with the last piece as the
    /// commit's body, as `digest`, or as the sha256 of what was sent when `digest` is `None`
    /// (the registry refuses a commit whose digest is not that of the bytes it holds). A session
    /// that fails on the way is given up.
    pub(super) async fn send_through(
        &self,
        mut session: Session,
        body: impl Stream<Item = Result<Piece, OciDistributionError>>,
        digest: Option<&Digest>,
    ) -> Result<Committed, OciDistributionError> {
        let sent = self.send_pieces(&mut session, body, digest).await;
        if sent.is_err() {
            self.cancel_session(session).await;
        }
        sent
    }

    async fn send_pieces(
        &self,
        session: &mut Session,
        body: impl Stream<Item = Result<Piece, OciDistributionError>>,
        digest: Option<&Digest>,
    ) -> Result<Committed, OciDistributionError> {
        let mut hasher = digest.is_none().then(Sha256::new);
        let mut body = std::pin::pin!(body);
        let mut last = Bytes::new();
        while let Some(piece) = body.next().await {
            let piece = piece?;
            if let Some(h) = hasher.as_mut() {
                h.update(&piece.bytes);
            }
            if piece.last {
                last = piece.bytes;
                break;
            }
            if !piece.bytes.is_empty() {
                self.send_chunk(session, piece.bytes).await?;
            }
        }
        let size = session.sent + last.len() as u64;
        let digest = match (digest, hasher) {
            (Some(d), _) => d.clone(),
            (None, _) if size == 0 => return Err(OciDistributionError::PushNoDataError),
            (None, Some(h)) => Digest::from_hasher(h),
            (None, None) => unreachable!("a hasher is made when no digest is given"),
        };
        self.commit_session(session, last, &digest).await?;
        Ok(Committed { digest, size })
    }

    /// Sends `chunk` as the session's next bytes (`PATCH`).
    async fn send_chunk(
        &self,
        session: &mut Session,
        chunk: Bytes,
    ) -> Result<(), OciDistributionError> {
        let len = chunk.len() as u64;
        let url = session.url.to_string();
        let answer = self
            .own_request(Method::PATCH, &url, session.plain_http())?
            .header(CONTENT_RANGE, session.range(len))
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(chunk)
            .send()
            .await?;
        let sent = session.sent + len;
        *session = session_from(answer, &url, StatusCode::ACCEPTED, sent).await?;
        Ok(())
    }

    /// Commits the session as `digest`, with `last` as its final bytes (`PUT ?digest=`).
    async fn commit_session(
        &self,
        session: &Session,
        last: Bytes,
        digest: &Digest,
    ) -> Result<(), OciDistributionError> {
        let mut url = session.url.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let url = url.to_string();
        let len = last.len() as u64;
        let mut request = self
            .own_request(Method::PUT, &url, session.plain_http())?
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_TYPE, OCTET_STREAM);
        if len > 0 {
            request = request.header(CONTENT_RANGE, session.range(len));
        }
        let answer = request.body(last).send().await?;
        expect(answer, StatusCode::CREATED, &url).await.map(drop)
    }

    /// Gives a session up (`DELETE`), so that the registry need not keep what it holds until it
    /// purges old uploads. Best effort: a registry that refuses keeps it until then.
    pub(super) async fn cancel_session(&self, session: Session) {
        if let Ok(request) =
            self.own_request(Method::DELETE, session.url.as_str(), session.plain_http())
        {
            let _ = request.send().await;
        }
    }

    /// Whether `oci`'s repository holds blob `digest` (`HEAD`). A redirect counts as holding it:
    /// a registry redirects only to the storage of a blob it found.
    pub(super) async fn own_blob_exists(
        &self,
        registry: &str,
        oci: &oci_client::Reference,
        digest: &Digest,
    ) -> Result<bool, OciDistributionError> {
        let plain_http = self.uses_plain_http(registry);
        let url = v2_url(plain_http, oci, &format!("blobs/{digest}"));
        let answer = self
            .own_request(Method::HEAD, &url, plain_http)?
            .send()
            .await?;
        match answer.status() {
            s if s.is_success() || s.is_redirection() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(not_accepted(s, StatusCode::OK, url, &[])),
        }
    }

    /// Asks the registry to link blob `digest` into `oci`'s repository from its repository
    /// `from` (`POST ?mount=&from=`): `Ok(None)` when it did, else the upload session it opened
    /// instead (202: the source lacks the blob, or the registry does not link across
    /// repositories).
    pub(super) async fn own_mount(
        &self,
        registry: &str,
        oci: &oci_client::Reference,
        from: &str,
        digest: &Digest,
    ) -> Result<Option<Session>, OciDistributionError> {
        let plain_http = self.uses_plain_http(registry);
        let mut url = Url::parse(&v2_url(plain_http, oci, "blobs/uploads/"))
            .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let url = url.to_string();
        let answer = self
            .own_request(Method::POST, &url, plain_http)?
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        if answer.status() == StatusCode::CREATED {
            return Ok(None);
        }
        session_from(answer, &url, StatusCode::ACCEPTED, 0)
            .await
            .map(Some)
    }

    /// Puts `body` (of `media_type`) as the manifest `oci` names, by tag or digest.
    pub(super) async fn own_put_manifest(
        &self,
        registry: &str,
        oci: &oci_client::Reference,
        body: Bytes,
        media_type: &str,
    ) -> Result<(), OciDistributionError> {
        let plain_http = self.uses_plain_http(registry);
        let url = manifest_url(plain_http, oci);
        let answer = self
            .own_request(Method::PUT, &url, plain_http)?
            .header(CONTENT_TYPE, media_type)
            .header(CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await?;
        expect(answer, StatusCode::CREATED, &url).await.map(drop)
    }

    /// A request on the client forge's own requests to a registry go out on (see `open.rs`).
    fn own_request(
        &self,
        method: Method,
        url: &str,
        plain_http: bool,
    ) -> Result<reqwest::RequestBuilder, OciDistributionError> {
        let http = self.own_http(plain_http).ok_or_else(no_client)?;
        Ok(http.request(method, url))
    }
}

/// The answer to a request to `url`, when it has the `expected` status; else the error it means,
/// with the registry's text.
async fn expect(
    answer: reqwest::Response,
    expected: StatusCode,
    url: &str,
) -> Result<reqwest::Response, OciDistributionError> {
    let status = answer.status();
    if status == expected {
        return Ok(answer);
    }
    let body = answer.bytes().await.unwrap_or_default();
    Err(not_accepted(status, expected, url.to_string(), &body))
}

/// The session an answer leads on to: its `Location`, resolved against the request's URL,
/// when the answer has the `expected` status.
async fn session_from(
    answer: reqwest::Response,
    url: &str,
    expected: StatusCode,
    sent: u64,
) -> Result<Session, OciDistributionError> {
    let answer = expect(answer, expected, url).await?;
    let status = answer.status();
    let location = answer
        .headers()
        .get(LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| {
            OciDistributionError::SpecViolationError(format!(
                "{url} answered {status} without a Location"
            ))
        })?;
    let url = Url::parse(url)
        .and_then(|base| base.join(location))
        .map_err(|e| OciDistributionError::UrlParseError(format!("{location}: {e}")))?;
    Ok(Session { url, sent })
}

/// What an upload's answer other than the `expected` one means, as oci-client reads it: another
/// success breaks the spec, anything else is the registry's refusal with its status and text.
fn not_accepted(
    status: StatusCode,
    expected: StatusCode,
    url: String,
    body: &[u8],
) -> OciDistributionError {
    if status.is_success() {
        OciDistributionError::SpecViolationError(format!(
            "Expected HTTP Status {expected}, got {status} instead"
        ))
    } else {
        OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(body).into_owned(),
        }
    }
}
