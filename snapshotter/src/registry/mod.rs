//! The registry client: talks the distribution protocol through oci-client and lands what it fetches
//! in the content store; push sends what the store holds back out. Both share one client (same auth,
//! same http/https choice, same retry policy and transient-failure rule).
//!
//! Plain http is used only for loopback registries and those the caller marks insecure; everything
//! else is https with the system roots (rustls, ring).

mod answer;
mod auth;
mod fetch;
mod follow;
mod growing;
mod login;
mod mirrors;
mod open;
mod pull;
mod pulled;
mod push;
mod raw;
pub mod roots;
mod spare;
mod target;
mod upload;

use std::sync::OnceLock;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

pub use auth::{
    AuthError, AuthResolver, Configured, Credential, DockerConfig, LoginStore, server_registry,
};
pub use follow::{FollowedBlob, LayerFollower};
pub use growing::{FollowEnd, Reported, SentBlob};
pub use login::LoginError;
pub use mirrors::{Candidate, Mirrors};
pub use pulled::{BlobKind, PullError, PullEvent};
pub use push::{Landing, PushBlob, PushError, PushEvent, PushImage};
pub use spare::SERVES_FOR as SPARE_SERVES_FOR;

use crate::platform::Platform;
use crate::reference::Reference;
use crate::retry::RetryPolicy;
pub(crate) use answer::{answer_text, status_of};

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]` as references name them) that may be reached over plain http.
    /// Loopback registries always may.
    pub insecure: Vec<String>,
    pub auth: AuthResolver,
    pub retry: RetryPolicy,
    /// Blobs downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Blobs uploaded at once (per repository pushed to).
    pub max_concurrent_uploads: usize,
    pub platform: Platform,
    /// Per read on a connection; a registry that stalls longer is retried.
    pub read_timeout: Duration,
    /// The longest a pull waits for its registry's first answers (the challenge and the
    /// manifest), tries included, before it fails saying it timed out. A blob's download has no
    /// such bound (a large layer on a slow link takes what it takes); its reads have
    /// `read_timeout`.
    pub answer_deadline: Duration,
    /// `registries.conf` mirrors, tried before the registry they mirror.
    pub mirrors: Mirrors,
    /// Why the `registries.conf` in force could not be read: every pull fails with it rather
    /// than going around mirrors the user set up.
    pub mirrors_error: Option<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let (mirrors, mirrors_error) = match Mirrors::from_env() {
            Ok(m) => (m, None),
            Err(e) => (Mirrors::none(), Some(e)),
        };
        RegistryConfig {
            insecure: Vec::new(),
            auth: AuthResolver::from_env(),
            retry: RetryPolicy::default(),
            max_concurrent_downloads: 4,
            max_concurrent_uploads: 4,
            platform: Platform::host(),
            read_timeout: Duration::from_secs(60),
            answer_deadline: Duration::from_secs(90),
            mirrors,
            mirrors_error,
        }
    }
}

/// A registry client. Holds token caches, so keep one per process rather than one per pull.
/// Its oci-client clients are made on first use, for requests that carry credentials (or face a
/// bearer challenge): making one takes every trusted root and oci-client's default client
/// besides, which reads the platform's roots again (several milliseconds of CPU). Requests to a
/// registry that wants no token (a pull's manifests and blobs, a push's checks, uploads, mounts
/// and manifests) go through forge's own clients (`open.rs`, `upload.rs`), so a pull from or a
/// push to such a registry makes none.
pub struct RegistryClient {
    config: RegistryConfig,
    https: OnceLock<oci_client::Client>,
    http: OnceLock<oci_client::Client>,
    /// Registries whose `/v2/` was asked for its challenge: whether it named no bearer one, and
    /// when it was asked (see `open.rs`).
    open: std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
    /// The client that asks them, and fetches their manifests (`None`: it could not be made).
    probe: OnceLock<Option<reqwest::Client>>,
    /// The same for plain-HTTP registries: no roots, no redirects (see `open.rs`).
    plain: OnceLock<Option<reqwest::Client>>,
    /// A manifest that came with a registry's answer to the asking (see `open.rs`).
    kept: std::sync::Mutex<Option<open::KeptManifest>>,
    /// Upload sessions opened ahead of their blobs (see `spare.rs`).
    spares: spare::Spares,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> RegistryClient {
        RegistryClient {
            https: OnceLock::new(),
            http: OnceLock::new(),
            open: Default::default(),
            probe: OnceLock::new(),
            plain: OnceLock::new(),
            kept: Default::default(),
            spares: Default::default(),
            config,
        }
    }

    fn cell_for(&self, reference: &Reference) -> (&OnceLock<oci_client::Client>, ClientProtocol) {
        if self.uses_plain_http(reference.registry()) {
            (&self.http, ClientProtocol::Http)
        } else {
            (&self.https, ClientProtocol::Https)
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Whether `registry` is reached over plain http: loopback hosts and those marked insecure.
    pub fn uses_plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self.config.insecure.iter().any(|r| r == registry)
            || self
                .config
                .mirrors
                .insecure_hosts()
                .iter()
                .any(|r| r == registry)
    }

    /// Whether every request for `reference` goes over plain http: its registry and each mirror a
    /// request may try before it. Such requests need no trusted roots unless a registry that
    /// wants a token, or a redirect to https, makes them load then.
    pub fn reached_over_plain_http(&self, reference: &Reference) -> bool {
        self.config.mirrors_error.is_none()
            && self
                .config
                .mirrors
                .candidates(reference)
                .iter()
                .all(|c| self.uses_plain_http(c.reference.registry()))
    }

    /// [`Self::client_for`], made (when it is not yet) off the async workers where the runtime
    /// has other workers to run them: making one costs several milliseconds of CPU (see
    /// [`RegistryClient`]), which would stall the tasks queued on this one meanwhile.
    fn client_off_worker(&self, reference: &Reference) -> &oci_client::Client {
        let (cell, _) = self.cell_for(reference);
        if cell.get().is_none()
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return tokio::task::block_in_place(|| self.client_for(reference));
        }
        self.client_for(reference)
    }

    fn client_for(&self, reference: &Reference) -> &oci_client::Client {
        let (cell, protocol) = self.cell_for(reference);
        cell.get_or_init(|| {
            new_client(
                protocol,
                self.config.read_timeout,
                self.config.max_concurrent_downloads,
            )
        })
    }

    fn registry_auth(&self, reference: &Reference) -> Result<RegistryAuth, PullError> {
        match self
            .config
            .auth
            .credential(reference.registry(), reference.repository())?
        {
            None => Ok(RegistryAuth::Anonymous),
            Some(Credential::Basic { username, password }) => {
                Ok(RegistryAuth::Basic(username, password))
            }
            Some(Credential::IdentityToken(_)) => Err(PullError::IdentityToken {
                registry: reference.registry().to_string(),
            }),
        }
    }
}

/// An oci-client client for `protocol`, trusting forge's roots.
fn new_client(
    protocol: ClientProtocol,
    read_timeout: Duration,
    max_concurrent_download: usize,
) -> oci_client::Client {
    // Explicit roots: the client never depends on a system store existing (see `roots`).
    let roots: Vec<oci_client::client::Certificate> = roots::trust_roots()
        .certs
        .iter()
        .map(|c| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: c.to_vec(),
        })
        .collect();
    oci_client::Client::new(ClientConfig {
        protocol,
        tls_certs_only: roots,
        read_timeout: Some(read_timeout),
        connect_timeout: Some(Duration::from_secs(30)),
        max_concurrent_download,
        ..ClientConfig::default()
    })
}

/// The username a request was made with, for messages (`None`: anonymous).
pub(crate) fn login_of(auth: &RegistryAuth) -> Option<String> {
    match auth {
        RegistryAuth::Basic(user, _) => Some(user.clone()),
        _ => None,
    }
}

/// What a 401 or 403 answer means, in words: whose credentials were refused, or that none were
/// found, or that the login lacks the right. Used by pull and push errors.
pub(crate) fn refusal_text(
    registry: &str,
    status: u16,
    login: Option<&str>,
    action: &str,
    token_granted: bool,
) -> String {
    match (status, login) {
        // The login was good for a token (a wrong password fails the token's request), and the
        // registry then refused the token for this: it does not cover the action (a token
        // server's `insufficient_scope`).
        (401, Some(user)) if token_granted => format!(
            "{user} may not {action} there (status 401: the token {registry}'s token server gave {user} does not cover it)"
        ),
        (401, Some(user)) => format!(
            "the credentials for {user} were refused (status 401): the password or token is wrong or expired; log in to {registry} again"
        ),
        (401, None) => format!(
            "{registry} wants a login (status 401) and none was found for it (DOCKER_CONFIG, REGISTRY_AUTH_FILE, ~/.docker/config.json, podman's auth.json)"
        ),
        (_, Some(user)) => format!("{user} may not {action} there (status {status})"),
        (_, None) => format!("anonymous users may not {action} there (status {status}); log in"),
    }
}

/// Whether a failed request is worth trying again: 5xx, 408 and 429 answers, connection errors and
/// timeouts. Everything else (a refusal, a bad digest, a missing name, a host name that does not
/// exist) fails the same way twice.
pub(crate) fn is_transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ServerError { code, .. } => *code >= 500 || *code == 408 || *code == 429,
        E::RequestError(r) => {
            !(r.is_builder() || r.is_redirect() || r.is_status())
                && unreachable(e) != Some(Unreachable::NoSuchHost)
        }
        E::IoError(_) => true,
        _ => false,
    }
}

/// Why a request never reached its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The registry's host name does not exist (the resolver's answer is NXDOMAIN): asking again
    /// gives the same answer.
    NoSuchHost,
    /// The name could not be resolved now (no resolver answering: no network, often).
    Dns,
    /// No connection: refused, timed out, or no route.
    Connect,
}

/// How `e` failed to reach the registry, if that is how it failed. The resolver's answer is known
/// only by its text (getaddrinfo's `EAI_NONAME`/`EAI_NODATA` messages, as glibc and musl word
/// them), which the error chain carries.
pub(crate) fn unreachable(e: &oci_client::errors::OciDistributionError) -> Option<Unreachable> {
    let oci_client::errors::OciDistributionError::RequestError(r) = e else {
        return None;
    };
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(c) = cause {
        text.push_str(&c.to_string());
        text.push('\n');
        cause = c.source();
    }
    if text.contains("dns error") {
        const NO_SUCH_HOST: [&str; 4] = [
            "Name or service not known",
            "No address associated with hostname",
            "Name does not resolve",
            "nodename nor servname provided",
        ];
        return Some(if NO_SUCH_HOST.iter().any(|m| text.contains(m)) {
            Unreachable::NoSuchHost
        } else {
            Unreachable::Dns
        });
    }
    (r.is_connect() || r.is_timeout()).then_some(Unreachable::Connect)
}

/// Whether a `host[:port]` is this machine: `localhost`, 127.0.0.0/8, `::1`.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The oci-client form of a reference (it maps `docker.io` to Docker Hub's API host itself).
fn oci_reference(reference: &Reference) -> oci_client::Reference {
    let registry = reference.registry().to_string();
    let repository = reference.repository().to_string();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_string(),
            digest.to_string(),
        ),
        (None, Some(digest)) => {
            oci_client::Reference::with_digest(registry, repository, digest.to_string())
        }
        (tag, None) => oci_client::Reference::with_tag(
            registry,
            repository,
            tag.unwrap_or("latest").to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login a token server accepted, whose token the registry then refused for a push (a
    /// pull-only user), was told its password was wrong; the password was right.
    #[test]
    fn a_401_after_a_token_was_given_is_a_missing_right_not_a_wrong_password() {
        let r = "reg.example:5000";
        let scoped = refusal_text(r, 401, Some("bob"), "push", true);
        assert!(
            scoped.starts_with("bob may not push there (status 401"),
            "{scoped}"
        );
        assert!(!scoped.contains("wrong"), "{scoped}");
        let basic = refusal_text(r, 401, Some("bob"), "push", false);
        assert!(basic.contains("password or token is wrong"), "{basic}");
        let anonymous = refusal_text(r, 401, None, "push", true);
        assert!(anonymous.contains("wants a login"), "{anonymous}");
    }

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "docker.io",
            "10.0.0.1:5000",
            "[fc00::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
