//! `forge login`'s check: a username and password are tried against the registry's `/v2/` as
//! `docker login` tries them, before anything is stored. A registry with HTTP Basic auth is asked
//! `/v2/` with them; one that hands out bearer tokens is asked for a token at the realm its
//! challenge names. Either way a refusal comes back as the status the registry answered.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;

use super::RegistryClient;
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API};

/// Why a login was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "{registry} refused the login of {username} (status {status} from {url}): the username or password is wrong"
    )]
    Refused {
        registry: String,
        username: String,
        status: u16,
        url: String,
    },
    #[error("{registry} answered status {status} from {url}{}", body_text(.body))]
    Unexpected {
        registry: String,
        status: u16,
        url: String,
        body: String,
    },
    #[error("{registry} asks for an authentication forge does not speak: {challenge:?}")]
    Challenge { registry: String, challenge: String },
    /// A 401 with no `WWW-Authenticate` header: the registry does not say how to log in, as the
    /// distribution spec says it must (docker fails here too).
    #[error(
        "{registry} answered status 401 from {url} without a WWW-Authenticate challenge, so it does not say how to log in; is {url} a registry's API (a proxy in front of it may drop the header)?"
    )]
    NoChallenge { registry: String, url: String },
    #[error("cannot reach {registry} at {url}: {detail}")]
    Unreachable {
        registry: String,
        url: String,
        detail: String,
    },
}

fn body_text(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        let cut: String = body.chars().take(300).collect();
        format!(": {cut}")
    }
}

/// A `WWW-Authenticate` challenge: its scheme (lower case) and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: BTreeMap<String, String>,
}

/// Reads `Bearer realm="https://auth/token",service="registry"` (RFC 7235, one challenge).
fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    }
}

impl RegistryClient {
    /// Tries `username` and `password` on `registry` (`host[:port]`, `docker.io` for Docker Hub)
    /// as `docker login` does. `Ok` when the registry accepts them, or wants no login at all.
    pub async fn check_login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), LoginError> {
        let scheme = if self.uses_plain_http(registry) {
            "http"
        } else {
            "https"
        };
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let url = format!("{scheme}://{host}/v2/");
        let unreachable = |url: &str, e: reqwest::Error| LoginError::Unreachable {
            registry: registry.to_string(),
            url: url.to_string(),
            detail: crate::error_text::one_line(&e),
        };
        let http = self.login_http().map_err(|e| unreachable(&url, e))?;
        let first = http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        if first.status().is_success() {
            return Ok(());
        }
        if first.status() != StatusCode::UNAUTHORIZED {
            return Err(unexpected(registry, &url, first).await);
        }
        let header = first
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if header.trim().is_empty() {
            return Err(LoginError::NoChallenge {
                registry: registry.to_string(),
                url,
            });
        }
        let challenge = parse_challenge(&header);
        let (asked, answer) = match challenge.scheme.as_str() {
            "basic" => {
                let answer = http
                    .get(&url)
                    .basic_auth(username, Some(password))
                    .send()
                    .await
                    .map_err(|e| unreachable(&url, e))?;
                (url.clone(), answer)
            }
            "bearer" => {
                let Some(realm) = challenge.params.get("realm") else {
                    return Err(LoginError::Challenge {
                        registry: registry.to_string(),
                        challenge: header,
                    });
                };
                // Docker's token request for a login: no scope, the account named.
                let mut query = vec![("account", username), ("client_id", "forge")];
                if let Some(service) = challenge.params.get("service") {
                    query.push(("service", service));
                }
                let answer = http
                    .get(realm)
                    .query(&query)
                    .basic_auth(username, Some(password))
                    .send()
                    .await
                    .map_err(|e| unreachable(realm, e))?;
                (realm.clone(), answer)
            }
            _ => {
                return Err(LoginError::Challenge {
                    registry: registry.to_string(),
                    challenge: header,
                });
            }
        };
        match answer.status() {
            s if s.is_success() => Ok(()),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(LoginError::Refused {
                registry: registry.to_string(),
                username: username.to_string(),
                status: s.as_u16(),
                url: asked,
            }),
            _ => Err(unexpected(registry, &asked, answer).await),
        }
    }

    /// A plain HTTP client with the roots every registry request trusts.
    pub(super) fn login_http(&self) -> Result<reqwest::Client, reqwest::Error> {
        let roots = super::roots::trust_roots()
            .certs
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok());
        self.http_builder().tls_certs_only(roots).build()
    }

    /// A client for plain-HTTP registries only: it trusts no root, so making it reads no
    /// certificate (loading and parsing the roots costs a few milliseconds of CPU that a request
    /// to a loopback registry never uses), and it follows no redirect, which could lead to HTTPS:
    /// a caller asks again with [`Self::login_http`]'s client when the answer is one.
    pub(super) fn plain_http(&self) -> Result<reqwest::Client, reqwest::Error> {
        super::roots::install_crypto_provider();
        self.http_builder()
            .tls_certs_only(std::iter::empty())
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    fn http_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(self.config.read_timeout)
            .user_agent(concat!("forge/", env!("CARGO_PKG_VERSION")))
    }
}

async fn unexpected(registry: &str, url: &str, answer: reqwest::Response) -> LoginError {
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap_or_default();
    LoginError::Unexpected {
        registry: registry.to_string(),
        status,
        url: url.to_string(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge("Bearer realm=https://h/t, service=reg");
        assert_eq!(c.params["realm"], "https://h/t");
        assert_eq!(c.params["service"], "reg");
        assert_eq!(parse_challenge("").scheme, "");
    }
}
