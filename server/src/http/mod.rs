//! The routes: webhooks, the API, and the pages. Every state-changing route checks a secret in
//! constant time before it looks at anything else; bodies are size-limited.
//!
//! Refusals travel as `Err(Response)`: a whole response, made once per refused request, so
//! clippy's size lint on the error variant buys nothing here.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use forge_snapshotter::reference::Reference;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::builds::Server;
use crate::config::{Project, TriggerName};
use crate::hooks::{self, Event, Forge, HookError};
use crate::model::{Build, Trigger};
use crate::store::Request;
use crate::web;

mod forms;
mod guard;
mod history;
use forms::{cancel_form, play_form, rebuild};
use guard::{body_limit, refusals_in_kind};
use history::{api_list, project_page};

/// Largest request body taken (GitHub's own cap on a payload is 25 MB; pushes are far smaller).
pub const MAX_BODY: usize = 4 << 20;

/// Builds listed on pages and by the API without a `limit`.
const PAGE: usize = 50;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/hooks/{project}/{kind}", post(hook))
        .route(
            "/api/v1/projects/{project}/builds",
            post(api_start).get(api_list),
        )
        .route("/api/v1/projects/{project}/builds/{n}", get(api_get))
        .route("/api/v1/projects/{project}/builds/{n}/log", get(api_log))
        .route(
            "/api/v1/projects/{project}/builds/{n}/cancel",
            post(api_cancel),
        )
        .route("/", get(index))
        .route("/p/{project}", get(project_page))
        .route("/p/{project}/badge.svg", get(badge))
        .route("/p/{project}/chart.svg", get(chart))
        .route("/p/{project}/rebuild", post(rebuild))
        .route("/p/{project}/{n}", get(build_page))
        .route("/p/{project}/{n}/cancel", post(cancel_form))
        .route("/p/{project}/{n}/play", post(play_form))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(body_limit))
        .layer(axum::middleware::from_fn(refusals_in_kind))
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            crate::host::known_host,
        ))
        .with_state(server)
}

type Reply = Result<Response, Response>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn project<'a>(server: &'a Server, name: &str) -> Result<&'a Project, Response> {
    server
        .project(name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no project {name:?}")))
}

/// Whether `given` is the project's API secret or the server's (constant time).
fn api_allowed(server: &Server, p: &Project, given: &[u8]) -> bool {
    let ok = |s: &Option<Vec<u8>>| s.as_ref().is_some_and(|s| bool::from(s.ct_eq(given)));
    !given.is_empty() && (ok(&p.api_secret) || ok(&server.config.api_secret))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|s| s.trim().to_string())
}

fn created(server: &Server, b: &Build) -> Response {
    let url = format!("{}/p/{}/{}", server.config.base_url, b.project, b.number);
    (
        StatusCode::CREATED,
        [(header::LOCATION, url.clone())],
        axum::Json(json!({ "number": b.number, "url": url, "status": b.status })),
    )
        .into_response()
}

fn not_started(reason: &str) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "started": false, "reason": reason })),
    )
        .into_response()
}

async fn hook(
    State(server): State<Arc<Server>>,
    Path((name, kind)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let p = project(&server, &name)?.clone();
    let Some(secret) = p.webhook_secret.clone() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("project {name} has no webhook_secret: its webhooks are refused"),
        ));
    };
    let header_of = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if kind == "registry" {
        let given = bearer(&headers)
            .or_else(|| query.get("secret").cloned())
            .unwrap_or_default();
        if given.is_empty() || !bool::from(secret.ct_eq(given.as_bytes())) {
            return Err(error(StatusCode::UNAUTHORIZED, "wrong or missing secret"));
        }
        return registry_hook(&server, &p, &body);
    }
    let Some(forge) = Forge::from_path_segment(&kind) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no webhook kind {kind:?}: github, gitlab, gitea, gitee or registry"),
        ));
    };
    hooks::verify(forge, &header_of, &body, &secret).map_err(hook_error)?;
    // Gitee's signature covers a timestamp (in milliseconds), not the body: an old one is a
    // replay however its id reads.
    if forge == Forge::Gitee
        && let Some(ms) = header_of("x-gitee-timestamp").and_then(|t| t.trim().parse::<u64>().ok())
        && crate::store::now().abs_diff(ms / 1000) > 3600
    {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "the X-Gitee-Timestamp is more than an hour away from now",
        ));
    }
    // The delivery id is no part of what is signed: dropping or changing it would replay a
    // captured delivery (a rebuild and re-push of an old commit). The body is, and a real sender's
    // bodies differ from one event to the next, so a body this project took before is a replay
    // too, whatever id comes with it. A sender's redelivery repeats both: it is a 409 either way.
    // Read first: a delivery refused as malformed (400) is not taken, so the sender's redelivery of
    // it, once the hook is set right, is not a 409.
    let event = hooks::parse(forge, &header_of, &body).map_err(hook_error)?;
    let id = hooks::delivery_id(forge, &header_of);
    let body_key = format!("{}:body:{}", p.name, hex::encode(Sha256::digest(&body)));
    // GitLab signs nothing: whoever holds a delivery holds its token and can send any body, so
    // the body's hash guards nothing there, while GitLab's bodies carry nothing that tells one
    // push from the next (a tag deleted and pushed again at its commit sends the same bytes). Its
    // `Idempotency-Key`, kept across a delivery's retries and new for each event, is all that is
    // recorded; an older GitLab that sends none is deduplicated by the body as before.
    let by_key_only =
        forge == Forge::GitLab && header_of("idempotency-key").is_some() && id.is_some();
    let keys: Vec<&str> = id
        .iter()
        .map(String::as_str)
        .chain((!by_key_only).then_some(body_key.as_str()))
        .collect();
    if let Some(seen) = server.store.first_delivery(&keys).map_err(internal)? {
        let what = if seen == body_key {
            "this body was delivered before (under another delivery id or none)".to_string()
        } else {
            format!("delivery {seen} was already taken")
        };
        return Err(error(StatusCode::CONFLICT, what));
    }
    match event {
        Event::Ping => Ok(not_started("ping")),
        Event::Ignored(what) => Ok(not_started(&format!("{what}: nothing to build"))),
        Event::Tag(t) => {
            if !p.triggered_by(TriggerName::Tag) {
                return Ok(not_started("the tag trigger is off"));
            }
            let b = server
                .queue(
                    &p.name,
                    Trigger::Tag,
                    Request {
                        tag: Some(t.tag),
                        commit: Some(t.commit),
                        ..Request::default()
                    },
                )
                .map_err(internal)?;
            Ok(created(&server, &b))
        }
        Event::Push(push) => {
            if !p.branches.is_match(&push.branch) {
                return Ok(not_started(&format!(
                    "branch {} matches none of the project's branches",
                    push.branch
                )));
            }
            if hooks::skips_ci(&push) {
                return Ok(not_started(
                    "the head commit's message asks to skip CI ([skip ci], [ci skip] or [no ci])",
                ));
            }
            let keyword =
                p.triggered_by(TriggerName::Keyword) && hooks::has_keyword(&push, &p.keyword);
            let trigger = if p.triggered_by(TriggerName::Push) {
                Trigger::Push
            } else if keyword {
                Trigger::Keyword
            } else if p.triggered_by(TriggerName::Keyword) {
                return Ok(not_started(&format!(
                    "no commit message holds {}",
                    p.keyword
                )));
            } else {
                return Ok(not_started("the push trigger is off"));
            };
            let message = push
                .commits
                .iter()
                .find(|c| c.id == push.after)
                .or(push.commits.last())
                .map(|c| c.message.lines().next().unwrap_or("").to_string());
            let b = server
                .queue(
                    &p.name,
                    trigger,
                    Request {
                        branch: Some(push.branch),
                        commit: Some(push.after),
                        message,
                        ..Request::default()
                    },
                )
                .map_err(internal)?;
            Ok(created(&server, &b))
        }
    }
}

fn hook_error(e: HookError) -> Response {
    match e {
        HookError::Unsigned | HookError::BadSignature => {
            error(StatusCode::UNAUTHORIZED, e.to_string())
        }
        HookError::BadPayload(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn registry_hook(server: &Server, p: &Project, body: &[u8]) -> Reply {
    if !p.triggered_by(TriggerName::Registry) {
        return Ok(not_started("the registry trigger is off"));
    }
    let pushes = hooks::parse_registry(body).map_err(hook_error)?;
    // What the project builds FROM (recorded by its last build that read its Dockerfiles), and
    // what it names in `watch:`, as normalised names (`docker.io/library/debian`).
    let bases = server.store.bases(&p.name).map_err(internal)?;
    let watched = pushes.iter().find(|push| {
        let pushed = match &push.host {
            Some(h) => Reference::parse(&format!("{h}/{}", push.repository)).ok(),
            None => Reference::parse(&push.repository).ok(),
        };
        let Some(pushed) = pushed else { return false };
        // Without a host the notification names a path only: compare paths.
        let same = |r: &Reference| match push.host {
            Some(_) => r.name() == pushed.name(),
            None => r.repository() == pushed.repository(),
        };
        let watches = p
            .watch
            .iter()
            .filter_map(|w| Reference::parse(w).ok())
            .any(|w| same(&w) && w.tag().is_none_or(|t| push.tag.as_deref() == Some(t)));
        watches
            || bases
                .iter()
                .filter_map(|b| Reference::parse(b).ok())
                .any(|b| same(&b))
    });
    let Some(push) = watched else {
        return Ok(not_started(
            "no pushed image is one the project builds FROM or watches",
        ));
    };
    let b = server
        .queue(
            &p.name,
            Trigger::Registry,
            Request {
                message: Some(format!(
                    "{} pushed{}",
                    push.repository,
                    push.tag
                        .as_ref()
                        .map(|t| format!(" as {t}"))
                        .unwrap_or_default()
                )),
                ..Request::default()
            },
        )
        .map_err(internal)?;
    Ok(created(server, &b))
}

#[derive(Deserialize, Default)]
struct StartBody {
    secret_key: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    /// Run only these jobs and what they need (`forge run JOB...`), manual ones too.
    #[serde(default)]
    jobs: Vec<String>,
}

async fn api_start(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let p = project(&server, &name)?.clone();
    let start: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("the body is not the JSON expected: {e}"),
            )
        })?
    };
    let given = bearer(&headers)
        .or(start.secret_key.clone())
        .unwrap_or_default();
    if !api_allowed(&server, &p, given.as_bytes()) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "wrong or missing secret_key",
        ));
    }
    if !p.triggered_by(TriggerName::Api) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the api trigger is off for this project",
        ));
    }
    let request = Request {
        branch: start.branch,
        commit: start.commit,
        jobs: start.jobs,
        ..Request::default()
    };
    start_build(&server, &p, Trigger::Api, request).map(|b| created(&server, &b))
}

fn start_build(
    server: &Server,
    p: &Project,
    trigger: Trigger,
    mut request: Request,
) -> Result<Build, Response> {
    request.branch = request.branch.filter(|b| !b.trim().is_empty());
    let (branch, commit) = (&request.branch, &request.commit);
    if let Some(b) = &branch
        && (!p.branches.is_match(b) || b.starts_with('-') || b.contains(".."))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("branch {b:?} matches none of the project's branches"),
        ));
    }
    if let Some(c) = commit
        && !forge_builder::pipeline::git::is_commit_id(c)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("commit {c:?}: give the full 40-digit id"),
        ));
    }
    if let Some(j) = request
        .jobs
        .iter()
        .find(|j| j.trim().is_empty() || j.len() > 1024 || j.contains(['\n', '\0']))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("job {j:?}: give a job's name as the pipeline writes it"),
        ));
    }
    server.queue(&p.name, trigger, request).map_err(internal)
}

/// A build as the API shows it: the record plus the job counts.
fn build_json(b: &Build) -> serde_json::Value {
    let mut v = serde_json::to_value(b).expect("a build serialises");
    let ran = b
        .jobs
        .iter()
        .filter(|j| !matches!(j.result.as_str(), "cached" | "skipped"))
        .count();
    v["jobs_ran"] = json!(ran);
    v["jobs_cached"] = json!(b.jobs_with("cached"));
    v["jobs_failed"] = json!(b.jobs_with("failed"));
    v
}

fn find(server: &Server, name: &str, n: u64) -> Result<Build, Response> {
    project(server, name)?;
    server
        .store
        .get(name, n)
        .map_err(internal)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("{name} has no build {n}")))
}

async fn api_get(State(server): State<Arc<Server>>, Path((name, n)): Path<(String, u64)>) -> Reply {
    let b = find(&server, &name, n)?;
    Ok(axum::Json(build_json(&b)).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    follow: Option<String>,
    offset: Option<u64>,
}

async fn api_log(
    State(server): State<Arc<Server>>,
    Path((name, n)): Path<(String, u64)>,
    Query(q): Query<LogQuery>,
) -> Reply {
    let b = find(&server, &name, n)?;
    let path = server.store.log_path(&name, n);
    if log_removed(&b, &path) {
        return Err(error(
            StatusCode::GONE,
            format!(
                "the log of {name} #{n} is no longer kept (the server's `logs:` retention removes \
                 the logs of older builds)"
            ),
        ));
    }
    let follow = q.follow.as_deref().is_some_and(|f| f == "1" || f == "true");
    let offset = q.offset.unwrap_or(0);
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        // Sent in pieces as read, so that a large log is never held in memory whole.
        let stream = futures::stream::unfold((path, offset), |(path, offset)| async move {
            let chunk = read_from(&path, offset);
            if chunk.is_empty() {
                return None;
            }
            let next = offset + chunk.len() as u64;
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (path, next)))
        });
        return Ok((text_plain, Body::from_stream(stream)).into_response());
    }
    // Follow: what is there, then what is appended, until the build has ended and all is sent.
    let state = (server.clone(), name, n, path, offset, false);
    let stream =
        futures::stream::unfold(state, |(server, name, n, path, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                let ended = server
                    .store
                    .get(&name, n)
                    .ok()
                    .flatten()
                    .is_none_or(|b| b.status.is_final());
                let chunk = read_from(&path, offset);
                if !chunk.is_empty() {
                    let next = offset + chunk.len() as u64;
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(chunk)),
                        (server, name, n, path, next, false),
                    ));
                }
                if ended {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    Ok((
        text_plain,
        [(header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The log's bytes from `offset` (at most 64 KiB).
fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 << 10).read_to_end(&mut buf);
    buf
}

async fn api_cancel(
    State(server): State<Arc<Server>>,
    Path((name, n)): Path<(String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let p = project(&server, &name)?.clone();
    let given = bearer(&headers)
        .or_else(|| {
            serde_json::from_slice::<StartBody>(&body)
                .ok()
                .and_then(|b| b.secret_key)
        })
        .unwrap_or_default();
    if !api_allowed(&server, &p, given.as_bytes()) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "wrong or missing secret_key",
        ));
    }
    find(&server, &name, n)?;
    if server.cancel(&name, n).map_err(internal)? {
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "cancelled": true })),
        )
            .into_response())
    } else {
        Err(error(
            StatusCode::CONFLICT,
            format!("build {n} has already ended"),
        ))
    }
}

/// Whether build `b` ended and its log at `path` is gone: the `logs:` retention (or a hand)
/// removed it. That is said, not shown as a log that is empty (every build that started writes
/// its fetching line).
fn log_removed(b: &Build, path: &std::path::Path) -> bool {
    b.status.is_final() && b.started_at.is_some() && !path.exists()
}

fn page(status: StatusCode, html: String) -> Response {
    (status, Html(html)).into_response()
}

fn not_found(message: String) -> Response {
    page(StatusCode::NOT_FOUND, web::error_page(404, &message))
}

async fn index(State(server): State<Arc<Server>>) -> Reply {
    let mut projects = Vec::new();
    for p in &server.config.projects {
        let last = server
            .store
            .list(&p.name, 1)
            .map_err(internal)?
            .into_iter()
            .next();
        projects.push(web::ProjectSummary {
            name: p.name.clone(),
            repo: p.shown_repo(),
            last,
        });
    }
    Ok(page(StatusCode::OK, web::index_page(&projects)))
}

async fn build_page(
    State(server): State<Arc<Server>>,
    Path((name, n)): Path<(String, u64)>,
) -> Reply {
    let b = match server.store.get(&name, n).map_err(internal)? {
        Some(b) if server.project(&name).is_some() => b,
        _ => return Err(not_found(format!("{name} has no build {n}"))),
    };
    let path = server.store.log_path(&name, n);
    let (tail, end) = log_tail(&path, PAGE_LOG_TAIL);
    let left_out = end - tail.len() as u64;
    let mut text = String::from_utf8_lossy(&tail).into_owned();
    if log_removed(&b, &path) {
        text = "(this build's log is no longer kept: the server's `logs:` retention removed it)\n"
            .into();
    }
    Ok(page(
        StatusCode::OK,
        web::build_page_of(&b, &text, end, left_out),
    ))
}

/// How much of a build's log its page shows, at most: the end of it (the whole log is at the
/// API's log URL). A page holding a log of gigabytes would take that much memory per request.
const PAGE_LOG_TAIL: u64 = 1 << 20;

/// The last `at_most` bytes of the log at `path`, from the start of a line when it is cut, and
/// the log's length when read.
fn log_tail(path: &std::path::Path, at_most: u64) -> (Vec<u8>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let Ok(end) = f.seek(SeekFrom::End(0)) else {
        return (Vec::new(), 0);
    };
    let start = end.saturating_sub(at_most);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(end - start).read_to_end(&mut buf).is_err()
    {
        return (Vec::new(), 0);
    }
    if start > 0 {
        // The cut line's rest is left out with what is before it.
        let from = buf
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| i + 1);
        buf.drain(..from);
    }
    (buf, end)
}

fn svg(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
struct BadgeQuery {
    /// Only builds of this branch (`?branch=main`, as a README's badge of the main line wants).
    branch: Option<String>,
}

/// How far back the badge looks for a build of the branch it is asked for.
const BADGE_LOOKBACK: usize = 500;

async fn badge(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(q): Query<BadgeQuery>,
) -> Reply {
    if server.project(&name).is_none() {
        return Err(not_found(format!("no project {name:?}")));
    }
    // The last build (of the branch asked for) that ended, else the one running.
    let depth = if q.branch.is_some() {
        BADGE_LOOKBACK
    } else {
        PAGE
    };
    let builds: Vec<Build> = server
        .store
        .list(&name, depth)
        .map_err(internal)?
        .into_iter()
        .filter(|b| q.branch.is_none() || b.branch == q.branch)
        .collect();
    let status = builds
        .iter()
        .find(|b| b.status.is_final())
        .or(builds.first())
        .map(|b| b.status);
    Ok(svg(web::badge_svg("build", status)))
}

async fn chart(State(server): State<Arc<Server>>, Path(name): Path<String>) -> Reply {
    if server.project(&name).is_none() {
        return Err(not_found(format!("no project {name:?}")));
    }
    let builds = server.store.list(&name, PAGE).map_err(internal)?;
    Ok(svg(web::chart_svg(&builds)))
}

#[cfg(test)]
mod tests {
    use super::log_tail;

    #[test]
    fn the_tail_of_a_log_starts_at_a_line_and_knows_the_whole_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let (tail, end) = log_tail(&path, 100);
        assert_eq!(end, text.len() as u64);
        let tail = String::from_utf8(tail).unwrap();
        assert!(tail.len() <= 100 && text.ends_with(&tail), "{tail}");
        assert!(tail.starts_with("line "), "{tail}");
        let (whole, end) = log_tail(&path, 1 << 20);
        assert_eq!(
            (whole.len() as u64, end),
            (text.len() as u64, text.len() as u64)
        );
        assert_eq!(log_tail(&dir.path().join("none.log"), 100), (Vec::new(), 0));
    }
}
