//! Which `Host` a request may name. A web page can point a name of its own at 127.0.0.1 (DNS
//! rebinding) and then read, through its visitor's browser, the pages and logs of a server that
//! listens on loopback without a secret; it cannot make the browser send another name than its
//! own. So a request is taken only when it names this server: by an IP address, as `localhost`, or
//! by the host of `base_url` (the name its links and notifications use, and a proxy in front of it
//! forwards).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::builds::Server;

/// Refuses (421 Misdirected Request) a request whose `Host` names another server.
pub async fn known_host(State(server): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let named = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    // HTTP/1.0 sends none: nothing to check.
    if let Some(host) = named
        && !allowed(&host, &server.config.base_url)
    {
        let message = format!(
            "this server does not answer to the name {host:?}: use its address, localhost, or \
             the host of base_url ({})",
            server.config.base_url
        );
        return (
            StatusCode::MISDIRECTED_REQUEST,
            axum::Json(json!({ "error": message })),
        )
            .into_response();
    }
    next.run(req).await
}

/// Whether a `Host` value (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`) names this server.
fn allowed(host: &str, base_url: &str) -> bool {
    let name = name_of(host);
    if name.is_empty() {
        return false;
    }
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name == name_of(authority_of(base_url))
}

/// The name of a `host[:port]`, lowercased, without an IPv6 literal's brackets or a final dot.
fn name_of(host: &str) -> String {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `host:port` of a URL (`https://user@ci.example.com:8443/x` -> `ci.example.com:8443`).
fn authority_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_localhost_and_the_base_urls_host_are_taken() {
        let base = "https://ci.example.com:8443/forge";
        for host in [
            "127.0.0.1:8420",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:8420",
            "[::1]",
            "localhost:8420",
            "LOCALHOST",
            "ci.example.com",
            "CI.Example.com:443",
            "ci.example.com.",
        ] {
            assert!(allowed(host, base), "{host} refused");
        }
    }

    #[test]
    fn another_name_is_refused_whatever_it_resolves_to() {
        let base = "http://127.0.0.1:8420";
        for host in [
            "attacker.example",
            "attacker.example:8420",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "",
            ":8420",
        ] {
            assert!(!allowed(host, base), "{host:?} taken");
        }
        // The base URL's host is taken, not a name that merely contains it.
        assert!(!allowed("ci.example.com.evil", "https://ci.example.com"));
        assert!(allowed(
            "ci.example.com",
            "https://user:pw@ci.example.com/forge"
        ));
    }
}
