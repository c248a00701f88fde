//! A project's history a page at a time: the API's list of builds (`?before=N&limit=M`, the next
//! page named in a `Link` header) and the project's page (the newest [`PAGE`], `?before=N` older).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{PAGE, Reply, build_json, internal, not_found, page, project};
use crate::builds::Server;
use crate::model::Build;
use crate::web;

/// One page of a project's history: `?before=N` lists the builds numbered below N (the newest
/// when absent), `?limit=` how many (the API's; pages show [`PAGE`]).
#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

/// The builds of `name` below `before`, newest first, at most `limit`, and the number the next
/// (older) page lists below, when there are older builds.
fn history(
    server: &Server,
    name: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<Build>, Option<u64>), Response> {
    if limit == 0 {
        return Ok((Vec::new(), None));
    }
    let mut builds = server
        .store
        .list_before(name, before, limit + 1)
        .map_err(internal)?;
    if builds.len() <= limit {
        return Ok((builds, None));
    }
    builds.truncate(limit);
    let older = builds.last().map(|b| b.number);
    Ok((builds, older))
}

pub(super) async fn api_list(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Reply {
    project(&server, &name)?;
    let limit = q.limit.unwrap_or(PAGE).min(1000);
    let (builds, older) = history(&server, &name, q.before, limit)?;
    let rows: Vec<serde_json::Value> = builds.iter().map(build_json).collect();
    let mut reply = axum::Json(rows).into_response();
    // The next page as GitHub's and GitLab's APIs name theirs (RFC 8288): absent on the last.
    if let Some(n) = older {
        let next = format!(
            "<{}?before={n}&limit={limit}>; rel=\"next\"",
            web::builds_api_url(&name)
        );
        if let Ok(v) = header::HeaderValue::from_str(&next) {
            reply.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(reply)
}

pub(super) async fn project_page(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Reply {
    let Some(p) = server.project(&name) else {
        return Err(not_found(format!("no project {name:?}")));
    };
    let (builds, older) = history(&server, &name, q.before, PAGE)?;
    // The form offers the branches the configuration names outright; a glob is typed in.
    let branches: Vec<String> = p
        .branch_patterns
        .iter()
        .filter(|b| !b.contains(['*', '?', '[', '{']))
        .cloned()
        .collect();
    Ok(page(
        StatusCode::OK,
        web::project_page(
            &name,
            &p.shown_repo(),
            &branches,
            &builds,
            web::Pages {
                below: q.before,
                older,
            },
        ),
    ))
}
