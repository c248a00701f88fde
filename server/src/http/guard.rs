//! What every answer goes through: the body's size limit, and refusals said in the kind of the
//! path they answer (JSON for the API and hooks, the error page for pages).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{MAX_BODY, error};

/// A body larger than [`MAX_BODY`] is refused with the JSON every other refusal has: at once
/// when its `Content-Length` says so (before a client that sent `Expect: 100-continue` is asked
/// for it, and with the connection closed rather than the body read), else (chunked) when the
/// limit is reached while it is read.
pub(super) async fn body_limit(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let too_large = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let answer = next.run(req).await;
    if answer.status() == StatusCode::PAYLOAD_TOO_LARGE
        && answer.headers().get(header::CONTENT_TYPE)
            != Some(&header::HeaderValue::from_static("application/json"))
    {
        return too_large();
    }
    answer
}

/// A refusal axum makes itself (a build number that is no number, a bad query, an unknown path, a
/// method a path does not take) is a plain-text sentence or nothing: it is said as forge's own
/// are, JSON under `/api/` and `/hooks/`, the error page elsewhere (where a form's refusal in
/// JSON is put on the error page too).
pub(super) async fn refusals_in_kind(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = req.uri().path().starts_with("/api/") || req.uri().path().starts_with("/hooks/");
    let answer = next.run(req).await;
    let status = answer.status();
    let kind = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = kind.starts_with("application/json");
    if !(status.is_client_error() || status.is_server_error())
        || (json && api)
        || kind.starts_with("text/html")
    {
        return answer;
    }
    let (parts, body) = answer.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    // A page's form refused with the API's JSON (a Rebuild of a branch the project does not
    // build) is shown its message on the error page, not the JSON.
    let text = if json {
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text)
    } else {
        text
    };
    let message = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such path".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "this path does not take that method".to_string(),
            s => s.canonical_reason().unwrap_or("refused").to_string(),
        }
    } else {
        text
    };
    let mut refused = if api {
        error(status, message)
    } else {
        (
            status,
            axum::response::Html(crate::web::error_page(status.as_u16(), &message)),
        )
            .into_response()
    };
    // What the answer said beside its body (`Allow`, `Connection: close`) stays.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            refused.headers_mut().insert(name.clone(), value.clone());
        }
    }
    refused
}
