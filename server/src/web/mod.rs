//! The web pages of `forge serve`: pure functions that turn the server's records into HTML pages
//! and SVG images. Nothing here does I/O; every function returns a `String`.
//!
//! Templates are compiled in with askama (see `templates/`); askama HTML-escapes every
//! interpolated value (`& < > " '`) in `.html` and `.svg` templates, so every value coming from
//! outside — project, branch and tag names, commit messages, job names, log and error text — is
//! escaped. URLs built from names are also percent-encoded per path segment.

pub mod format;

use askama::Template;

use crate::model::short_commit;
use crate::model::{Build, Status};
use crate::web::format::{first_line, format_duration, format_utc, path_segment};

/// One project as listed on the index page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSummary {
    /// The project's name (also its URL segment).
    pub name: String,
    /// The repository it builds.
    pub repo: String,
    /// Its most recent build, if any.
    pub last: Option<Build>,
}

/// How many finished builds the chart draws at most.
pub const CHART_MAX_BUILDS: usize = 30;

/// Placeholder shown for a value that is not known (yet).
const UNKNOWN: &str = "-";

fn render<T: Template>(t: &T) -> String {
    // Rendering only fails when a Display impl fails; ours are plain strings and numbers.
    t.render()
        .expect("rendering a template into a String cannot fail")
}

/// The URL of a project's page, `/p/{project}`, with the name percent-encoded.
pub fn project_href(project: &str) -> String {
    format!("/p/{}", path_segment(project))
}

/// The URL of a build's page, `/p/{project}/{n}`.
pub fn build_href(project: &str, number: u64) -> String {
    format!("{}/{number}", project_href(project))
}

/// The build's duration: the recorded one, else the time between its start and its end.
pub fn build_duration_ms(b: &Build) -> Option<u64> {
    b.duration_ms
        .or_else(|| match (b.started_at, b.finished_at) {
            (Some(s), Some(f)) => Some(f.saturating_sub(s) * 1_000),
            _ => None,
        })
}

/// What was built: the branch's name, "tag NAME" for a tag, or "-".
fn git_ref(b: &Build) -> String {
    match (&b.branch, &b.tag) {
        (_, Some(t)) => format!("tag {t}"),
        (Some(br), None) => br.clone(),
        (None, None) => UNKNOWN.to_string(),
    }
}

fn opt_time(t: Option<u64>) -> String {
    t.map(format_utc).unwrap_or_else(|| UNKNOWN.to_string())
}

fn duration_text(b: &Build) -> String {
    match build_duration_ms(b) {
        Some(ms) => format_duration(ms),
        None if !b.status.is_final() => b.status.as_str().to_string(),
        None => UNKNOWN.to_string(),
    }
}

fn commit_short(b: &Build) -> String {
    b.commit
        .as_deref()
        .map_or(UNKNOWN, short_commit)
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// index

struct LastBuildView {
    href: String,
    number: u64,
    git_ref: String,
    commit_short: String,
    when: String,
    duration: String,
}

struct ProjectRow {
    name: String,
    repo: String,
    href: String,
    badge_href: String,
    status: &'static str,
    status_word: &'static str,
    last: Option<LastBuildView>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexTemplate {
    rows: Vec<ProjectRow>,
}

/// "/": every project with its last build's status, number, branch/tag, commit, time, duration
/// and badge, in a `#projects` table of `tr.project[data-project][data-status]` rows.
///
/// A project without builds has `data-status="none"` and reads "no builds".
pub fn index_page(projects: &[ProjectSummary]) -> String {
    let rows = projects
        .iter()
        .map(|p| {
            let href = project_href(&p.name);
            let (status, status_word) = match &p.last {
                Some(b) => (b.status.as_str(), b.status.as_str()),
                None => ("none", "no builds"),
            };
            ProjectRow {
                name: p.name.clone(),
                repo: p.repo.clone(),
                badge_href: format!("{href}/badge.svg"),
                href,
                status,
                status_word,
                last: p.last.as_ref().map(|b| LastBuildView {
                    href: build_href(&p.name, b.number),
                    number: b.number,
                    git_ref: git_ref(b),
                    commit_short: commit_short(b),
                    when: format_utc(b.finished_at.or(b.started_at).unwrap_or(b.queued_at)),
                    duration: duration_text(b),
                }),
            }
        })
        .collect();
    render(&IndexTemplate { rows })
}

// ---------------------------------------------------------------------------------------------
// project

struct BuildRow {
    href: String,
    number: u64,
    status: &'static str,
    trigger: &'static str,
    git_ref: String,
    commit_short: String,
    message: String,
    queued: String,
    duration: String,
    jobs_ran: usize,
    jobs_cached: usize,
    jobs_failed: usize,
    images: usize,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectTemplate<'a> {
    project: &'a str,
    repo: &'a str,
    base: String,
    below: Option<u64>,
    /// `a#older-builds`'s target, when there are older builds than the page shows.
    older: Option<String>,
    /// `a#newest-builds`'s target, on a page of older builds.
    newest: Option<String>,
    branches: &'a [String],
    chart: String,
    builds: Vec<BuildRow>,
}

/// "/p/{project}": the builds newest first (`#builds`, `tr.build[data-number][data-status]`),
/// the inline SVG chart (`svg#chart`) and the `#rebuild` form.
///
/// The form posts `application/x-www-form-urlencoded` fields to `/p/{project}/rebuild`:
/// `branch` (the `<select>` of `branches`), `other_branch` (free text; when non-empty it wins
/// over `branch`) and `secret` (the API secret).
///
/// "Jobs ran" counts the jobs whose result is neither `cached` nor `skipped`.
pub fn project_page(
    project: &str,
    repo: &str,
    branches: &[String],
    builds: &[Build],
    pages: Pages,
) -> String {
    let mut sorted: Vec<&Build> = builds.iter().collect();
    sorted.sort_by_key(|b| std::cmp::Reverse(b.number));
    let rows = sorted
        .into_iter()
        .map(|b| {
            let cached = b.jobs_with("cached");
            let skipped = b.jobs_with("skipped");
            BuildRow {
                href: build_href(project, b.number),
                number: b.number,
                status: b.status.as_str(),
                trigger: b.trigger.as_str(),
                git_ref: git_ref(b),
                commit_short: commit_short(b),
                message: b
                    .message
                    .as_deref()
                    .map(first_line)
                    .unwrap_or("")
                    .to_string(),
                queued: format_utc(b.queued_at),
                duration: duration_text(b),
                jobs_ran: b.jobs.len() - cached - skipped,
                jobs_cached: cached,
                jobs_failed: b.jobs_with("failed"),
                images: b.pushed.len(),
            }
        })
        .collect();
    let base = project_href(project);
    render(&ProjectTemplate {
        project,
        repo,
        below: pages.below,
        older: pages.older.map(|n| format!("{base}?before={n}")),
        newest: pages.below.map(|_| base.clone()),
        base,
        branches,
        chart: chart_svg(builds),
        builds: rows,
    })
}

/// Where a page of a project's builds lies in its history.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pages {
    /// The page lists builds numbered below this (`?before=`); `None`: the newest.
    pub below: Option<u64>,
    /// The number the next, older page lists below, when there are older builds.
    pub older: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// build

struct JobRow {
    name: String,
    result: String,
    duration: String,
    /// `87.5%`, or empty.
    coverage: String,
}

#[derive(Template)]
#[template(path = "build.html")]
struct BuildTemplate<'a> {
    project: &'a str,
    project_href: String,
    base: String,
    number: u64,
    status: &'static str,
    trigger: &'static str,
    branch: Option<&'a str>,
    tag: Option<&'a str>,
    commit: &'a str,
    message: Option<&'a str>,
    queued: String,
    started: String,
    finished: String,
    duration: String,
    error: Option<&'a str>,
    running: bool,
    jobs: Vec<JobRow>,
    /// Its manual jobs not run, each with a "Run" form posting `job` and `secret` to
    /// `/p/{project}/{n}/play`.
    manual: Vec<String>,
    /// The jobs it was asked to run (empty: all).
    only: String,
    pushed: &'a [String],
    log: &'a str,
    /// Bytes of the log before what the page shows, left out (see `build_page_of`).
    left_out: u64,
    log_url: String,
    follow_url: String,
}

/// The API's list of a project's builds, `/api/v1/projects/{project}/builds`.
pub fn builds_api_url(project: &str) -> String {
    format!("/api/v1/projects/{}/builds", path_segment(project))
}

/// The API's URL of build `number`'s log.
fn log_url(project: &str, number: u64) -> String {
    format!("{}/{number}/log", builds_api_url(project))
}

/// The URL that streams the rest of a build's log from byte `offset` on.
pub fn log_follow_url(project: &str, number: u64, offset: u64) -> String {
    format!("{}?follow=1&offset={offset}", log_url(project, number))
}

/// "/p/{project}/{n}": the build's fields, `#status`, `#jobs`, a `form.play` for each manual
/// job not run, pushed images, error, the `#cancel` form and the log in `pre#log`.
///
/// While the build is queued or running the page has the cancel form (posting `secret` to
/// `/p/{project}/{n}/cancel`) and an inline script that streams the rest of the log from
/// [`log_follow_url`] (offset = byte length of `log_so_far`, also kept in
/// `pre#log[data-follow]`) and, when the stream ends, shows the build's final status from the
/// API without reloading; a `<noscript>` says to reload by hand.
pub fn build_page(build: &Build, log_so_far: &str) -> String {
    build_page_of(build, log_so_far, log_so_far.len() as u64, 0)
}

/// [`build_page`] with the end of a log: `log_end` is the log's length when `log_tail` was read
/// (where following it goes on from), and `left_out` the bytes before the tail that the page
/// leaves to the log's own URL.
pub fn build_page_of(build: &Build, log_tail: &str, log_end: u64, left_out: u64) -> String {
    let project = build.project.as_str();
    let base = build_href(project, build.number);
    render(&BuildTemplate {
        project,
        project_href: project_href(project),
        number: build.number,
        status: build.status.as_str(),
        trigger: build.trigger.as_str(),
        branch: build.branch.as_deref(),
        tag: build.tag.as_deref(),
        commit: build.commit.as_deref().unwrap_or(UNKNOWN),
        message: build.message.as_deref(),
        queued: format_utc(build.queued_at),
        started: opt_time(build.started_at),
        finished: opt_time(build.finished_at),
        duration: duration_text(build),
        error: build.error.as_deref(),
        running: !build.status.is_final(),
        jobs: build
            .jobs
            .iter()
            .map(|j| JobRow {
                name: j.name.clone(),
                result: j.result.clone(),
                duration: format_duration(j.duration_ms),
                coverage: j
                    .coverage
                    .as_ref()
                    .map_or(String::new(), |c| format!("{c}%")),
            })
            .collect(),
        manual: build
            .jobs
            .iter()
            .filter(|j| j.manual)
            .map(|j| j.name.clone())
            .collect(),
        only: build.only.join(", "),
        pushed: &build.pushed,
        log: log_tail,
        left_out,
        log_url: log_url(project, build.number),
        follow_url: log_follow_url(project, build.number, log_end),
        base,
    })
}

// ---------------------------------------------------------------------------------------------
// chart

struct Bar {
    number: u64,
    status: &'static str,
    x: String,
    y: String,
    w: String,
    h: String,
    color: &'static str,
    title: String,
}

#[derive(Template)]
#[template(path = "chart.svg")]
struct ChartTemplate {
    width: u32,
    height: u32,
    left: u32,
    right: u32,
    top: u32,
    bottom: u32,
    left_pad: u32,
    mid: u32,
    axis_label_x: u32,
    top_label_y: u32,
    max_label: String,
    summary: String,
    span: Option<(u64, u64)>,
    bars: Vec<Bar>,
}

/// The success-rate sentence of the chart: "success rate over the last N builds: 80%". Only a
/// build that passed or failed says something of the code: one cancelled (by a person, or by a
/// newer push) or interrupted (the server stopped) is left out of the rate, and the sentence says
/// how many were.
pub fn success_rate_text(builds: &[Build]) -> String {
    let drawn = chart_builds(builds);
    let n = drawn.len();
    if n == 0 {
        return "no finished builds yet".to_string();
    }
    let passed = drawn.iter().filter(|b| b.status == Status::Passed).count();
    let failed = drawn.iter().filter(|b| b.status == Status::Failed).count();
    let decided = passed + failed;
    let noun = if n == 1 { "build" } else { "builds" };
    if decided == 0 {
        return format!("none of the last {n} {noun} passed or failed");
    }
    let percent = (passed * 100 + decided / 2) / decided;
    let left_out = match n - decided {
        0 => String::new(),
        k => format!(" ({k} cancelled or interrupted not counted)"),
    };
    format!("success rate over the last {n} {noun}: {percent}%{left_out}")
}

/// The builds the chart draws: the last [`CHART_MAX_BUILDS`] finished ones, oldest first.
fn chart_builds(builds: &[Build]) -> Vec<&Build> {
    let mut done: Vec<&Build> = builds.iter().filter(|b| b.status.is_final()).collect();
    done.sort_by_key(|b| b.number);
    let skip = done.len().saturating_sub(CHART_MAX_BUILDS);
    done.split_off(skip)
}

/// A standalone SVG (`svg#chart`) of the last up to 30 finished builds, oldest left: one bar
/// per build, its height the duration scaled to the slowest, green for passed, red for failed,
/// grey otherwise, each with a `<title>` like "#12 passed in 12.3 s", plus the success rate.
///
/// A build without a known duration gets a 2-pixel stub and "duration unknown" in its title.
pub fn chart_svg(builds: &[Build]) -> String {
    const WIDTH: u32 = 640;
    const HEIGHT: u32 = 220;
    const LEFT: u32 = 64;
    const RIGHT: u32 = 630;
    const TOP: u32 = 34;
    const BOTTOM: u32 = 204;
    let drawn = chart_builds(builds);
    let max_ms = drawn
        .iter()
        .filter_map(|b| build_duration_ms(b))
        .max()
        .unwrap_or(0);
    let slot = f64::from(RIGHT - LEFT) / CHART_MAX_BUILDS as f64;
    let plot_h = f64::from(BOTTOM - TOP);
    let bars = drawn
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let status = b.status.as_str();
            let (h, title) = match build_duration_ms(b) {
                Some(ms) => {
                    let h = if max_ms == 0 {
                        0.0
                    } else {
                        ms as f64 / max_ms as f64 * plot_h
                    };
                    (
                        h.max(1.0),
                        format!("#{} {status} in {}", b.number, format_duration(ms)),
                    )
                }
                None => (2.0, format!("#{} {status}, duration unknown", b.number)),
            };
            let x = f64::from(LEFT) + slot * i as f64 + slot * 0.1;
            Bar {
                number: b.number,
                status,
                x: format!("{x:.1}"),
                y: format!("{:.1}", f64::from(BOTTOM) - h),
                w: format!("{:.1}", slot * 0.8),
                h: format!("{h:.1}"),
                color: match b.status {
                    Status::Passed => "#2e7d32",
                    Status::Failed => "#c62828",
                    _ => "#9e9e9e",
                },
                title,
            }
        })
        .collect();
    render(&ChartTemplate {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right: RIGHT,
        top: TOP,
        bottom: BOTTOM,
        left_pad: LEFT + 10,
        mid: (TOP + BOTTOM) / 2,
        axis_label_x: LEFT - 4,
        top_label_y: TOP + 4,
        max_label: if max_ms == 0 {
            "0 s".to_string()
        } else {
            format!("{:.1} s", max_ms as f64 / 1_000.0)
        },
        summary: success_rate_text(builds),
        span: drawn
            .first()
            .zip(drawn.last())
            .map(|(a, b)| (a.number, b.number)),
        bars,
    })
}

// ---------------------------------------------------------------------------------------------
// badge

#[derive(Template)]
#[template(path = "badge.svg")]
struct BadgeTemplate<'a> {
    label: &'a str,
    message: &'static str,
    color: &'static str,
    width: u32,
    label_width: u32,
    message_width: u32,
    label_x: String,
    message_x: String,
}

/// Approximate advance of a character in 11 px Verdana, in pixels.
fn char_width(c: char) -> f64 {
    match c {
        'i' | 'l' | 'j' | '\'' | '.' | ',' | ':' | ';' | '!' | '|' | 'I' => 3.5,
        'f' | 't' | 'r' | ' ' | '(' | ')' | '[' | ']' | '/' | '-' => 4.6,
        'm' | 'w' | 'M' | 'W' | '%' | '@' => 10.8,
        'A'..='Z' => 7.6,
        _ if c.is_ascii() => 6.9,
        _ => 8.0,
    }
}

/// The approximate width in pixels of `text` set in the badge's 11 px Verdana.
pub fn text_width(text: &str) -> f64 {
    text.chars().map(char_width).sum()
}

/// The badge's message and colour for a status: passing, failing, running, queued, cancelled,
/// interrupted, or unknown when there is no build.
pub fn badge_message(status: Option<Status>) -> (&'static str, &'static str) {
    match status {
        Some(Status::Passed) => ("passing", "#4c1"),
        Some(Status::Failed) => ("failing", "#e05d44"),
        Some(Status::Running) => ("running", "#007ec6"),
        Some(Status::Queued) => ("queued", "#007ec6"),
        Some(Status::Cancelled) => ("cancelled", "#9f9f9f"),
        Some(Status::Interrupted) => ("interrupted", "#9f9f9f"),
        None => ("unknown", "#9f9f9f"),
    }
}

/// "/p/{project}/badge.svg": a shields-style two-part badge "LABEL | passing" whose parts are
/// as wide as their text (approximate Verdana widths plus 5 px padding on each side).
pub fn badge_svg(label: &str, status: Option<Status>) -> String {
    let (message, color) = badge_message(status);
    let label_width = (text_width(label) + 10.0).round() as u32;
    let message_width = (text_width(message) + 10.0).round() as u32;
    render(&BadgeTemplate {
        label,
        message,
        color,
        width: label_width + message_width,
        label_width,
        message_width,
        label_x: format!("{:.1}", f64::from(label_width) / 2.0),
        message_x: format!(
            "{:.1}",
            f64::from(label_width) + f64::from(message_width) / 2.0
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// errors

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate<'a> {
    heading: String,
    message: &'a str,
}

/// The reason phrase of the HTTP status codes the server uses, else "Error".
fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A small HTML error page: title "404 Not Found" (`#error-title`) and the escaped message
/// (`#error-message`).
pub fn error_page(status_code: u16, message: &str) -> String {
    render(&ErrorTemplate {
        heading: format!("{status_code} {}", reason_phrase(status_code)),
        message,
    })
}

#[cfg(test)]
mod tests;
