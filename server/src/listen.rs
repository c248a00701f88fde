//! The HTTP connections themselves: each served by hyper with deadlines, so that a client that
//! connects and sends nothing, half a request head or half a body (on purpose or not) cannot hold a
//! connection, and a file descriptor, for ever. The server is often reachable from the internet
//! for its webhooks, with no proxy in front to cut such clients off.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// How long a connection may take over what it sends.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From when the server waits for a request (a new connection, or an idle kept-alive one)
    /// until its whole head has come; past it the connection is closed without an answer.
    pub head: Duration,
    /// From the head until the handler has answered, the body read included; past it the
    /// answer is a 408 and the connection is closed.
    pub request: Duration,
}

/// What `forge serve` allows: far more than a webhook or a page needs, even on a slow link.
pub const DEADLINES: Deadlines = Deadlines {
    head: Duration::from_secs(30),
    request: Duration::from_secs(60),
};

/// Serves `router` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    deadlines: Deadlines,
) -> Result<(), String> {
    let limit = deadlines.request;
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(answer) => answer,
                Err(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    [(header::CONNECTION, "close")],
                    format!(
                        "the request was not received within {} s\n",
                        limit.as_secs()
                    ),
                )
                    .into_response(),
            }
        },
    ));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was taken: the listener
            // stays usable, so wait a moment rather than spin or stop serving.
            Err(e) => {
                eprintln!("warning: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(deadlines.head)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What the server sends on a connection that sends `request`, until it closes it; None when
    /// it is still open after 10 s.
    async fn answer(addr: std::net::SocketAddr, request: &[u8]) -> Option<String> {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn half_sent_requests_and_idle_connections_are_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            axum::routing::post(|body: axum::body::Bytes| async move {
                format!("{} bytes", body.len())
            }),
        );
        let deadlines = Deadlines {
            head: Duration::from_secs(1),
            request: Duration::from_secs(1),
        };
        tokio::spawn(serve(listener, router, deadlines));
        let head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n";
        // A whole request is answered, and the kept-alive connection is closed once idle.
        let whole = answer(addr, format!("{head}\r\nabcd").as_bytes()).await;
        assert!(
            whole
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 200") && a.ends_with("4 bytes")),
            "{whole:?}"
        );
        // Nothing, and half a head: closed without an answer.
        assert_eq!(answer(addr, b"").await.as_deref(), Some(""));
        assert_eq!(answer(addr, head.as_bytes()).await.as_deref(), Some(""));
        // Half a body: a 408, then closed.
        let half = answer(addr, format!("{head}\r\nab").as_bytes()).await;
        assert!(
            half.as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 408")),
            "{half:?}"
        );
    }
}
