//! forge's HTTP(S) proxy, a sandboxed step's only way out of its network namespace (see
//! [`super`]). `CONNECT host:port` (https, or any TCP a client tunnels) gets a byte tunnel;
//! absolute-form requests (`GET http://host/path`) are forwarded. Names are resolved on the host,
//! and every address is checked before forge connects to it ([`refusal`]): the host's loopback,
//! unspecified, link-local (the cloud metadata service) and own interface addresses are refused
//! with 403, so that a step reaches the outside world but not the services of the machine it
//! builds on. Checking the resolved address, and connecting to exactly that address, leaves no
//! window for a name that resolves differently the second time.
//!
//! The input is the step's, so hostile: headers are bounded, connections per step are bounded,
//! a client that sends nothing is dropped, and nothing here panics on what it reads.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections (tunnels included) one step may have open at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// The most a request head may take (hyper's minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Resolving a name, and connecting to one of its addresses.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves `listener` until `stop` is cancelled; every connection and tunnel ends with it.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    stop: CancellationToken,
    upstream: Option<Arc<Upstream>>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        // The step then finds nothing on the proxy port: its fetches fail, naming the proxy.
        Err(_) => return,
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let stop = stop.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let permit = Arc::new(permit);
            let ctx = Ctx {
                stop: stop.clone(),
                permit,
                upstream,
            };
            let service = hyper::service::service_fn(move |req| handle(req, ctx.clone()));
            // half_close: a client may shut its sending side once the request is out (busybox
            // nc does); the answer is still owed.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .max_buf_size(MAX_HEAD_BYTES)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// What a request's handling needs: the step's end, and the connection's slot (a tunnel outlives
/// the request that opened it and keeps the slot).
#[derive(Clone)]
struct Ctx {
    stop: CancellationToken,
    permit: Arc<OwnedSemaphorePermit>,
    /// The proxy forge's own goes through (the build's `HTTP(S)_PROXY`), when there is one.
    upstream: Option<Arc<Upstream>>,
}

async fn handle(req: Request<Incoming>, ctx: Ctx) -> Result<Response<Body>, Infallible> {
    Ok(if req.method() == Method::CONNECT {
        tunnel(req, ctx).await
    } else {
        forward(req, ctx).await
    })
}

/// `CONNECT host:port`: dial, answer 200, then copy bytes both ways until either side closes.
async fn tunnel(req: Request<Incoming>, ctx: Ctx) -> Response<Body> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((a.host().to_string(), a.port_u16()?)))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("forge proxy: CONNECT needs host:port, got {}", req.uri()),
        );
    };
    let via = ctx.upstream.clone().filter(|u| u.used_for(&host));
    let dialed = match &via {
        Some(up) => up.connect_tunnel(&host, port).await,
        None => dial(&host, port).await,
    };
    let mut upstream = match dialed {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    tokio::spawn(async move {
        let _slot = ctx.permit;
        tokio::select! {
            _ = ctx.stop.cancelled() => {}
            _ = async {
                if let Ok(upgraded) = hyper::upgrade::on(req).await {
                    let mut client = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            } => {}
        }
    });
    Response::new(empty())
}

/// An absolute-form request: sent on to its origin in origin form, without hop-by-hop and proxy
/// headers either way.
async fn forward(req: Request<Incoming>, ctx: Ctx) -> Response<Body> {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().filter(|_| uri.scheme_str() == Some("http")) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "forge proxy: only http:// URLs are forwarded (https goes through CONNECT), got {uri}"
            ),
        );
    };
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(80);
    let authority = authority.clone();
    let via = ctx.upstream.clone().filter(|u| u.used_for(&host));
    let dialed = match &via {
        Some(up) => up.connect().await,
        None => dial(&host, port).await,
    };
    let upstream = match dialed {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Through another proxy the request stays in absolute form, with that proxy's credentials.
    if let Some(up) = &via {
        if let Some(auth) = &up.authorization {
            parts
                .headers
                .insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
    } else {
        parts.uri = match uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
        {
            Ok(u) => u,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("forge proxy: {uri}: {e}")),
        };
    }
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => return bad_gateway(&host, port, &e),
        };
    // Drives the origin connection until the response body is read or dropped.
    tokio::spawn(conn);
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => bad_gateway(&host, port, &e),
    }
}

/// Resolves `host` on the host, and connects to the first of its addresses the policy allows; the
/// error is the response the step gets.
async fn dial(host: &str, port: u16) -> Result<TcpStream, Response<Body>> {
    // An IPv6 literal comes bracketed in an authority.
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host((name, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(bad_gateway(host, port, &e)),
            Err(_) => return Err(bad_gateway(host, port, &"the name lookup timed out")),
        };
    let own = match own_addresses() {
        Ok(own) => own,
        Err(e) => {
            return Err(bad_gateway(
                host,
                port,
                &format!("cannot list this host's addresses to check the destination: {e}"),
            ));
        }
    };
    let mut refused = None;
    let mut last_error = String::from("the name has no address");
    for addr in addrs {
        if let Some(why) = refusal(addr.ip(), &own) {
            refused.get_or_insert((addr, why));
            continue;
        }
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last_error = format!("{addr}: {e}"),
            Err(_) => last_error = format!("{addr}: connect timed out"),
        }
    }
    Err(match refused {
        Some((addr, why)) => {
            // A loopback address reached the proxy only because the tool ignored NO_PROXY: the
            // step's own loopback (a pipeline job's services) is reached without the proxy.
            let own_loopback = if addr.ip().is_loopback() {
                " If you meant the step's own loopback (a pipeline job's services listen there), \
                 the tool sent the request to the proxy because it ignores NO_PROXY: turn its \
                 proxy off (busybox wget -Y off, curl --noproxy '*')."
            } else {
                ""
            };
            text(
                StatusCode::FORBIDDEN,
                format!(
                    "forge proxy: refused {host}:{port}: {} is {why}. A RUN step reaches the \
                     outside world, not the services of the host it builds on. To give a build \
                     the host's network: forge build --network host --allow network.host, or RUN \
                     --network=host with forge build --allow network.host.{own_loopback}",
                    addr.ip()
                ),
            )
        }
        None => bad_gateway(host, port, &last_error),
    })
}

/// The proxy forge's own proxy goes through (a build behind a corporate proxy gives it as
/// `--build-arg HTTP(S)_PROXY`): a plain-http proxy, with credentials from its URL, and the
/// hosts its `NO_PROXY` says are reached directly. Its address is the user's choice, so it is not
/// refused for being on the host; destinations it is asked for are its business, except a literal
/// address forge would refuse, which is refused here as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`.
    address: String,
    authorization: Option<HeaderValue>,
    no_proxy: Vec<String>,
}

impl Upstream {
    /// `http://[user:password@]host[:port][/]` (port 80 when not given) and a `NO_PROXY` list.
    pub fn parse(url: &str, no_proxy: &str) -> Result<Upstream, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| (!url.contains("://")).then_some(url))
            .ok_or_else(|| format!("proxy {url:?}: only http:// proxies are supported"))?;
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.is_empty() || hostport.contains('/') {
            return Err(format!("proxy {url:?}: expected http://host:port"));
        }
        let address = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let authorization = userinfo
            .map(|u| {
                use base64::Engine as _;
                let token = base64::engine::general_purpose::STANDARD.encode(u);
                HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|e| format!("proxy {url:?}: {e}"))
            })
            .transpose()?;
        let no_proxy = no_proxy
            .split(',')
            .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Upstream {
            address,
            authorization,
            no_proxy,
        })
    }

    /// Whether a request for `host` goes through this proxy (not for a `NO_PROXY` host or domain).
    fn used_for(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !self
            .no_proxy
            .iter()
            .any(|n| n == "*" || host == *n || host.ends_with(&format!(".{n}")))
    }

    async fn connect(&self) -> Result<TcpStream, Response<Body>> {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&self.address)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(text(
                StatusCode::BAD_GATEWAY,
                format!("forge proxy: the upstream proxy {}: {e}", self.address),
            )),
            Err(_) => Err(text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "forge proxy: the upstream proxy {}: connect timed out",
                    self.address
                ),
            )),
        }
    }

    /// A tunnel to `host:port` through this proxy: its `CONNECT` answered with 200.
    async fn connect_tunnel(&self, host: &str, port: u16) -> Result<TcpStream, Response<Body>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            let own = own_addresses().unwrap_or_default();
            if let Some(why) = refusal(ip, &own) {
                return Err(text(
                    StatusCode::FORBIDDEN,
                    format!("forge proxy: refused {host}:{port}: {ip} is {why}"),
                ));
            }
        }
        let mut s = self.connect().await?;
        let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some(a) = &self.authorization {
            head.push_str(&format!(
                "Proxy-Authorization: {}\r\n",
                a.to_str().unwrap_or_default()
            ));
        }
        head.push_str("\r\n");
        let gateway = |e: &dyn std::fmt::Display| {
            text(
                StatusCode::BAD_GATEWAY,
                format!("forge proxy: the upstream proxy {}: {e}", self.address),
            )
        };
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| gateway(&e))?;
        // Its answer's head, byte by byte so nothing of the tunnel is read past it.
        let mut answer = Vec::new();
        let read = async {
            while !answer.ends_with(b"\r\n\r\n") {
                if answer.len() >= MAX_HEAD_BYTES {
                    return Err("its answer's head is too long".to_string());
                }
                let mut b = [0u8; 1];
                match s.read(&mut b).await {
                    Ok(0) => return Err("it closed the connection".to_string()),
                    Ok(_) => answer.push(b[0]),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(DIAL_TIMEOUT, read).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(gateway(&e)),
            Err(_) => return Err(gateway(&"no answer to CONNECT")),
        }
        let status = String::from_utf8_lossy(&answer);
        let first = status.lines().next().unwrap_or_default().to_string();
        if first.split_whitespace().nth(1) != Some("200") {
            return Err(gateway(&format!(
                "CONNECT {host}:{port} answered {first:?}"
            )));
        }
        Ok(s)
    }
}

/// Why the proxy will not connect to `ip`, or `None` when it may: anything on the host itself or
/// next to it without routing.
pub(crate) fn refusal(ip: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return Some("the host's loopback");
    }
    if ip.is_unspecified() {
        return Some("the unspecified address (the host itself)");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => {
            return Some("link-local (the cloud metadata service lives there)");
        }
        IpAddr::V4(v4) if v4.is_broadcast() => return Some("the broadcast address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => return Some("link-local"),
        _ => {}
    }
    if own.iter().any(|o| o.to_canonical() == ip) {
        return Some("an address of this host's own interfaces");
    }
    None
}

/// The addresses of the host's interfaces, read each time: interfaces come and go.
fn own_addresses() -> nix::Result<Vec<IpAddr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

/// Removes the headers that belong to one hop (RFC 9110 7.6.1), those the `Connection` header
/// names, and every `Proxy-*` header (credentials for forge's proxy are none of the origin's business).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn bad_gateway(host: &str, port: u16, e: &dyn std::fmt::Display) -> Response<Body> {
    text(
        StatusCode::BAD_GATEWAY,
        format!("forge proxy: cannot connect to {host}:{port}: {e}"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_upstream_proxy_url_reads_as_curl_reads_it() {
        let u = Upstream::parse(
            "http://alice:s3cret@proxy.corp:3128/",
            "internal.corp, .svc,10.0.0.1",
        )
        .unwrap();
        assert_eq!(u.address, "proxy.corp:3128");
        assert_eq!(
            u.authorization.as_ref().unwrap().to_str().unwrap(),
            "Basic YWxpY2U6czNjcmV0"
        );
        assert!(u.used_for("example.com"));
        assert!(!u.used_for("internal.corp"));
        assert!(!u.used_for("git.internal.corp"));
        assert!(!u.used_for("api.svc"));
        assert!(!u.used_for("10.0.0.1"));
        assert_eq!(
            Upstream::parse("proxy.corp", "").unwrap().address,
            "proxy.corp:80"
        );
        assert!(Upstream::parse("https://proxy.corp:443", "").is_err());
        assert!(Upstream::parse("socks5://proxy.corp:1080", "").is_err());
        assert!(
            !Upstream::parse("http://p:1", "*")
                .unwrap()
                .used_for("anything")
        );
    }

    use super::*;

    #[test]
    fn the_host_and_its_neighbourhood_are_refused() {
        let own: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "2001:db8::7",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(refusal(ip, &own).is_some(), "{refused} was allowed");
        }
        for allowed in ["10.1.2.4", "93.184.216.34", "2001:db8::8", "fec0::1"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert_eq!(refusal(ip, &own), None, "{allowed}");
        }
    }

    #[test]
    fn hop_by_hop_and_proxy_headers_are_stripped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }
}
