//! The pages' forms, posted without JavaScript: a project's rebuild button, a build's cancel
//! button and a manual job's "Run" button. Each takes the project's API secret, as the API does.

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Reply, api_allowed, internal, not_found, page, start_build};
use crate::builds::Server;
use crate::config::{Project, TriggerName};
use crate::model::Trigger;
use crate::store::Request;
use crate::web;

/// The project a page's form posts to, when the form's secret is its API secret; else the page
/// saying the build was not `what`.
fn form_project(
    server: &Server,
    name: &str,
    secret: &str,
    what: &str,
) -> Result<Project, Response> {
    let Some(p) = server.project(name).cloned() else {
        return Err(not_found(format!("no project {name:?}")));
    };
    if !api_allowed(server, &p, secret.as_bytes()) {
        return Err(page(
            StatusCode::UNAUTHORIZED,
            web::error_page(401, &format!("wrong secret: the build was not {what}")),
        ));
    }
    Ok(p)
}

/// [`form_project`] for a button that starts a build, as the API does: closed where the API
/// is (the project's `api` trigger off), the page then saying the `what` was not started.
fn project_to_start(
    server: &Server,
    name: &str,
    secret: &str,
    what: &str,
) -> Result<Project, Response> {
    let p = form_project(server, name, secret, "started")?;
    if !p.triggered_by(TriggerName::Api) {
        return Err(page(
            StatusCode::FORBIDDEN,
            web::error_page(
                403,
                &format!("the api trigger is off for this project: the {what} was not started"),
            ),
        ));
    }
    Ok(p)
}

#[derive(Deserialize)]
pub(super) struct RebuildForm {
    branch: Option<String>,
    other_branch: Option<String>,
    secret: String,
}

pub(super) async fn rebuild(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Form(form): Form<RebuildForm>,
) -> Reply {
    let p = project_to_start(&server, &name, &form.secret, "build")?;
    let branch = form
        .other_branch
        .filter(|b| !b.trim().is_empty())
        .or(form.branch);
    let request = Request {
        branch,
        ..Request::default()
    };
    let b = start_build(&server, &p, Trigger::Manual, request)?;
    Ok(Redirect::to(&format!("/p/{name}/{}", b.number)).into_response())
}

#[derive(Deserialize)]
pub(super) struct PlayForm {
    job: String,
    secret: String,
}

/// A manual job's "Run" button (GitLab's play): a new build of the same commit that runs the job
/// and what it needs; what it needs that passed before is served by its recorded verdict.
pub(super) async fn play_form(
    State(server): State<Arc<Server>>,
    Path((name, n)): Path<(String, u64)>,
    Form(form): Form<PlayForm>,
) -> Reply {
    let p = project_to_start(&server, &name, &form.secret, "job")?;
    let b = server
        .store
        .get(&name, n)
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no build {n} of {name:?}")))?;
    if !b.jobs.iter().any(|j| j.manual && j.name == form.job) {
        return Err(page(
            StatusCode::BAD_REQUEST,
            web::error_page(
                400,
                &format!("build {n} has no manual job {:?} to run", form.job),
            ),
        ));
    }
    let request = Request {
        jobs: vec![form.job],
        ..Request::of(&b)
    };
    let started = start_build(&server, &p, Trigger::Manual, request)?;
    Ok(Redirect::to(&format!("/p/{name}/{}", started.number)).into_response())
}

#[derive(Deserialize)]
pub(super) struct CancelForm {
    secret: String,
}

pub(super) async fn cancel_form(
    State(server): State<Arc<Server>>,
    Path((name, n)): Path<(String, u64)>,
    Form(form): Form<CancelForm>,
) -> Reply {
    form_project(&server, &name, &form.secret, "cancelled")?;
    // A build that is not there, or has ended, is said so (the form answered a redirect back
    // to the page as if it had cancelled something).
    if server.store.get(&name, n).map_err(internal)?.is_none() {
        return Err(not_found(format!("{name} has no build {n}")));
    }
    if !server.cancel(&name, n).map_err(internal)? {
        return Err(page(
            StatusCode::CONFLICT,
            crate::web::error_page(
                409,
                &format!("{name} #{n} has already ended: nothing was cancelled"),
            ),
        ));
    }
    Ok(Redirect::to(&format!("/p/{name}/{n}")).into_response())
}
