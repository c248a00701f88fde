//! Unit tests of the pages and images.

use super::*;
use crate::model::{JobRecord, Trigger};
use quick_xml::events::Event;
use quick_xml::reader::Reader;

const EVIL_MSG: &str = "<script>alert(1)</script>";
const EVIL_MSG_ESC: &str = "&#60;script&#62;alert(1)&#60;/script&#62;";
const EVIL_BRANCH: &str = "a\"b'<c>&";
const EVIL_BRANCH_ESC: &str = "a&#34;b&#39;&#60;c&#62;&#38;";

fn build(number: u64, status: Status) -> Build {
    let finished = status.is_final();
    Build {
        project: "forge".to_string(),
        number,
        trigger: Trigger::Push,
        branch: Some("main".to_string()),
        tag: None,
        commit: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
        message: Some("fix the thing\n\nwith a body".to_string()),
        status,
        queued_at: 1_796_387_405,
        started_at: Some(1_796_387_410),
        finished_at: finished.then_some(1_796_387_440),
        duration_ms: finished.then_some(number * 1_000),
        jobs: vec![
            JobRecord {
                name: "test".to_string(),
                result: "passed".to_string(),
                duration_ms: 12_345,
                coverage: Some("87.5".to_string()),
                manual: false,
            },
            JobRecord {
                name: "image".to_string(),
                result: "cached".to_string(),
                duration_ms: 5,
                coverage: None,
                manual: false,
            },
            JobRecord {
                name: "lint".to_string(),
                result: "failed".to_string(),
                duration_ms: 125_000,
                coverage: None,
                manual: false,
            },
            JobRecord {
                name: "docs".to_string(),
                result: "skipped".to_string(),
                duration_ms: 0,
                coverage: None,
                manual: false,
            },
        ],
        pushed: vec![
            "registry.example/forge:latest@sha256:aaaa".to_string(),
            "registry.example/forge:1.0@sha256:bbbb".to_string(),
        ],
        error: None,
        only: Vec::new(),
    }
}

fn evil_build(number: u64, status: Status) -> Build {
    let mut b = build(number, status);
    b.branch = Some(EVIL_BRANCH.to_string());
    b.message = Some(EVIL_MSG.to_string());
    b.error = Some(format!("clone failed: {EVIL_MSG}"));
    b.jobs[0].name = EVIL_BRANCH.to_string();
    b.pushed = vec![format!("{EVIL_MSG}@sha256:cccc")];
    b
}

fn assert_escaped(page: &str) {
    assert!(!page.contains(EVIL_MSG), "raw message in:\n{page}");
    assert!(!page.contains(EVIL_BRANCH), "raw branch in:\n{page}");
    assert!(!page.contains("<c>"), "raw <c> in:\n{page}");
}

/// Checks that `svg` is one well-formed XML element `<svg>` with the SVG namespace, and returns
/// the text of its `<title>` elements.
fn check_svg(svg: &str) -> Vec<String> {
    let mut reader = Reader::from_str(svg);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut titles = Vec::new();
    let mut in_title = false;
    loop {
        match reader.read_event() {
            Err(e) => panic!(
                "not well-formed XML at {}: {e}\n{svg}",
                reader.buffer_position()
            ),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    roots += 1;
                    assert_eq!(e.name().as_ref(), "svg");
                    let ns = e.try_get_attribute("xmlns").unwrap().expect("xmlns");
                    assert_eq!(&*ns.value, "http://www.w3.org/2000/svg");
                }
                in_title = e.name().as_ref() == "title";
                if in_title {
                    titles.push(String::new());
                }
                depth += 1;
            }
            Ok(Event::End(_)) => {
                depth -= 1;
                in_title = false;
            }
            Ok(Event::Empty(_)) => assert!(depth > 0, "empty root element"),
            Ok(Event::Text(t)) => {
                if depth == 0 {
                    assert!(t.as_ref().trim().is_empty(), "text outside root");
                } else if in_title {
                    let text = t.xml_content(quick_xml::XmlVersion::Implicit1_0);
                    titles.last_mut().unwrap().push_str(&text);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if in_title {
                    let ch = r
                        .resolve_char_ref()
                        .expect("character reference")
                        .expect("only character references are used");
                    titles.last_mut().unwrap().push(ch);
                }
            }
            Ok(_) => {}
        }
    }
    assert_eq!(depth, 0, "unclosed elements");
    assert_eq!(roots, 1, "one root element");
    titles
}

fn assert_html5(page: &str, title: &str) {
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<meta charset=\"utf-8\">"));
    assert!(
        page.contains(&format!("<title>{title}</title>")),
        "title {title} in\n{page}"
    );
    assert!(page.contains("<style>"));
    assert!(!page.contains("<link"), "no external resources");
    for tag in [
        "html", "head", "body", "main", "table", "form", "tr", "td", "pre", "script",
    ] {
        assert_eq!(
            page.matches(&format!("<{tag}>")).count() + page.matches(&format!("<{tag} ")).count(),
            page.matches(&format!("</{tag}>")).count(),
            "balanced <{tag}>"
        );
    }
}

// ----------------------------------------------------------------------------------- index

#[test]
fn index_lists_every_project() {
    let projects = vec![
        ProjectSummary {
            name: "forge".to_string(),
            repo: "https://git.example/forge.git".to_string(),
            last: Some(build(7, Status::Passed)),
        },
        ProjectSummary {
            name: "empty".to_string(),
            repo: "https://git.example/empty.git".to_string(),
            last: None,
        },
    ];
    let page = index_page(&projects);
    assert_html5(&page, "forge: projects");
    assert!(page.contains("<table id=\"projects\">"));
    assert!(page.contains("<tr class=\"project\" data-project=\"forge\" data-status=\"passed\">"));
    assert!(page.contains("<tr class=\"project\" data-project=\"empty\" data-status=\"none\">"));
    assert!(page.contains("href=\"/p/forge\""));
    assert!(page.contains("href=\"/p/forge/7\">#7</a>"));
    assert!(page.contains("<img class=\"badge\" src=\"/p/forge/badge.svg\""));
    assert!(page.contains("<code>0123456</code>"));
    assert!(page.contains("2026-12-04 12:30:40"), "finished time");
    assert!(page.contains("7.0 s"));
    assert!(page.contains(">passed</span>"));
    assert!(page.contains("never built"));
}

#[test]
fn index_escapes_everything() {
    let page = index_page(&[ProjectSummary {
        name: EVIL_BRANCH.to_string(),
        repo: EVIL_MSG.to_string(),
        last: Some(evil_build(1, Status::Failed)),
    }]);
    assert_escaped(&page);
    assert!(page.contains(&format!("data-project=\"{EVIL_BRANCH_ESC}\"")));
    assert!(page.contains(EVIL_MSG_ESC));
    assert!(
        page.contains("href=\"/p/a%22b%27%3Cc%3E%26\""),
        "percent-encoded href"
    );
}

#[test]
fn index_with_no_projects() {
    let page = index_page(&[]);
    assert!(page.contains("id=\"projects\""));
    assert!(page.contains("No projects are configured."));
}

// --------------------------------------------------------------------------------- project

#[test]
fn project_page_lists_builds_newest_first() {
    let builds = vec![
        build(1, Status::Passed),
        build(3, Status::Running),
        build(2, Status::Failed),
    ];
    let branches = vec!["main".to_string(), "dev".to_string()];
    let page = project_page(
        "forge",
        "https://git.example/forge.git",
        &branches,
        &builds,
        Pages::default(),
    );
    assert_html5(&page, "forge: forge");
    assert!(page.contains("<table id=\"builds\">"));
    let p3 = page
        .find("<tr class=\"build\" data-number=\"3\" data-status=\"running\">")
        .unwrap();
    let p2 = page
        .find("<tr class=\"build\" data-number=\"2\" data-status=\"failed\">")
        .unwrap();
    let p1 = page
        .find("<tr class=\"build\" data-number=\"1\" data-status=\"passed\">")
        .unwrap();
    assert!(p3 < p2 && p2 < p1, "newest first");
    assert!(page.contains("<a href=\"/p/forge/2\">#2</a>"));
    assert!(page.contains("<td>push</td>"));
    assert!(
        page.contains("<code>0123456</code> fix the thing</td>"),
        "first line only"
    );
    assert!(!page.contains("with a body"));
    assert!(page.contains("<td class=\"nowrap\">2026-12-04 12:30:05</td>"));
    assert!(page.contains("<td class=\"nowrap\">2.0 s</td>"));
    // ran = passed + failed, cached 1, failed 1; two images.
    assert!(page.contains("<td>2 / 1 / 1</td>"));
    assert!(page.contains("<td>2</td>\n</tr>"));
    // The running build has no duration yet.
    assert!(page.contains("<td class=\"nowrap\">running</td>"));
}

#[test]
fn project_page_has_rebuild_form_and_chart() {
    let branches = vec!["main".to_string(), "release/1.x".to_string()];
    let page = project_page(
        "forge",
        "repo",
        &branches,
        &[build(1, Status::Passed)],
        Pages::default(),
    );
    assert!(page.contains("<form id=\"rebuild\" method=\"post\" action=\"/p/forge/rebuild\">"));
    assert!(page.contains("<select name=\"branch\">"));
    assert!(page.contains("<option value=\"main\">main</option>"));
    assert!(page.contains("<option value=\"release/1.x\">release/1.x</option>"));
    assert!(page.contains("<input type=\"text\" name=\"other_branch\""));
    assert!(page.contains("<input type=\"password\" name=\"secret\""));
    assert!(page.contains("<button type=\"submit\">Rebuild</button>"));
    assert!(page.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"chart\""));
    assert!(page.contains("success rate over the last 1 build: 100%"));
    assert!(page.contains("src=\"/p/forge/badge.svg\""));
    // The form works without JavaScript: the page has no script at all.
    assert!(!page.contains("<script"));
}

#[test]
fn project_page_escapes_everything() {
    let builds = vec![
        evil_build(1, Status::Failed),
        evil_build(2, Status::Running),
    ];
    let page = project_page(
        EVIL_BRANCH,
        EVIL_MSG,
        &[EVIL_BRANCH.to_string()],
        &builds,
        Pages::default(),
    );
    assert_escaped(&page);
    assert!(page.contains(&format!(
        "<option value=\"{EVIL_BRANCH_ESC}\">{EVIL_BRANCH_ESC}</option>"
    )));
    assert!(page.contains(&format!("<code>0123456</code> {EVIL_MSG_ESC}</td>")));
    assert!(page.contains("action=\"/p/a%22b%27%3Cc%3E%26/rebuild\""));
}

#[test]
fn project_page_without_builds() {
    let page = project_page("forge", "repo", &[], &[], Pages::default());
    assert!(page.contains("id=\"builds\""));
    assert!(page.contains("No builds yet."));
    assert!(page.contains("no finished builds yet"));
    assert!(page.contains("id=\"rebuild\""));
}

#[test]
fn a_page_of_older_builds_links_back_to_the_newest_and_on_to_older_ones() {
    let newest = project_page(
        "a b",
        "repo",
        &[],
        &[build(60, Status::Passed), build(59, Status::Failed)],
        Pages {
            below: None,
            older: Some(59),
        },
    );
    assert!(newest.contains("<a id=\"older-builds\" href=\"/p/a%20b?before=59\">"));
    assert!(!newest.contains("newest-builds"), "{newest}");
    let middle = project_page(
        "a b",
        "repo",
        &[],
        &[build(58, Status::Passed)],
        Pages {
            below: Some(59),
            older: Some(58),
        },
    );
    assert_html5(&middle, "forge: a b");
    assert!(middle.contains("<h2>Builds before #59</h2>"), "{middle}");
    assert!(middle.contains("<a id=\"newest-builds\" href=\"/p/a%20b\">"));
    assert!(middle.contains("href=\"/p/a%20b?before=58\""));
    let past_the_first = project_page(
        "a b",
        "repo",
        &[],
        &[],
        Pages {
            below: Some(1),
            older: None,
        },
    );
    assert!(past_the_first.contains("No builds before #1."));
    assert!(!past_the_first.contains("older-builds"));
    assert!(past_the_first.contains("newest-builds"));
}

// ----------------------------------------------------------------------------------- build

#[test]
fn a_build_page_with_the_end_of_a_long_log_says_what_it_leaves_out() {
    let b = build(7, Status::Running);
    let page = build_page_of(&b, "line 9999\n", 5_000_000, 4_999_990);
    assert_html5(&page, "forge: forge #7 running");
    assert!(page.contains("The first 4999990 bytes of this log are left out here"));
    assert!(page.contains("<a href=\"/api/v1/projects/forge/builds/7/log\">the whole log</a>"));
    // Following goes on from the log's end, not from the length of what the page shows.
    assert!(
        page.contains("builds/7/log?follow=1&#38;offset=5000000"),
        "{page}"
    );
    let whole = build_page(&b, "line 1\n");
    assert!(!whole.contains("left out here"));
}

#[test]
fn build_page_shows_the_build() {
    let mut b = build(5, Status::Failed);
    b.error = Some("a job failed".to_string());
    let page = build_page(&b, "step 1\nstep 2\n");
    assert_html5(&page, "forge: forge #5 failed");
    assert!(page.contains(
        "<span id=\"status\" class=\"status status-failed\" data-status=\"failed\">failed</span>"
    ));
    assert!(page.contains("<table id=\"jobs\">"));
    assert!(page.contains("<tr class=\"job\" data-job=\"test\" data-result=\"passed\">"));
    assert!(page.contains("<tr class=\"job\" data-job=\"image\" data-result=\"cached\">"));
    assert!(page.contains("<td>12.3 s</td><td class=\"coverage\">87.5%</td>"));
    // A job without coverage has an empty cell: three of the four here.
    assert_eq!(page.matches("<td class=\"coverage\"></td>").count(), 3);
    assert!(page.contains("<td>2 min 05 s</td>"));
    assert!(page.contains("<li><code>registry.example/forge:latest@sha256:aaaa</code></li>"));
    assert!(page.contains("<div class=\"error\" id=\"error\">a job failed</div>"));
    assert!(page.contains("0123456789abcdef0123456789abcdef01234567"));
    assert!(page.contains("<dd id=\"queued\">2026-12-04 12:30:05</dd>"));
    assert!(page.contains("<dd id=\"finished\">2026-12-04 12:30:40</dd>"));
    assert!(page.contains("<pre id=\"log\">\nstep 1\nstep 2\n</pre>"));
    assert!(page.contains("href=\"/p/forge\""));
}

#[test]
fn finished_build_has_no_cancel_form_nor_script() {
    for status in [
        Status::Passed,
        Status::Failed,
        Status::Cancelled,
        Status::Interrupted,
    ] {
        let page = build_page(&build(5, status), "log");
        assert!(!page.contains("id=\"cancel\""), "{status:?}");
        assert!(!page.contains("<script"), "{status:?}");
        assert!(!page.contains("<noscript"), "{status:?}");
        assert!(!page.contains("data-follow"), "{status:?}");
        assert!(!page.contains("http-equiv"), "{status:?}");
    }
}

#[test]
fn running_build_has_cancel_form_and_live_log() {
    for status in [Status::Queued, Status::Running] {
        let log = "héllo\n"; // 7 bytes, 6 chars
        let page = build_page(&build(9, status), log);
        assert!(
            page.contains("<form id=\"cancel\" method=\"post\" action=\"/p/forge/9/cancel\">"),
            "{status:?}"
        );
        assert!(page.contains("<input type=\"password\" name=\"secret\""));
        assert!(page.contains(&format!("data-status=\"{}\"", status.as_str())));
        assert!(
            page.contains(
                "data-follow=\"/api/v1/projects/forge/builds/9/log?follow=1&#38;offset=7\""
            )
        );
        assert!(page.contains("<script>"));
        assert!(page.contains("fetch(url"));
        assert!(page.contains("getReader()"));
        assert!(page.contains("new TextDecoder("));
        assert!(page.contains("status.textContent = b.status"));
        assert!(
            !page.contains("location.reload()"),
            "the page keeps the reader's place"
        );
        assert!(page.contains("<noscript>"));
        assert!(page.contains("reload the page to see more of its log"));
        assert!(!page.contains("http-equiv"), "no meta refresh");
        assert!(!page.contains("<script src"), "no external script");
    }
}

#[test]
fn build_page_escapes_everything() {
    let b = evil_build(3, Status::Running);
    let log = format!("{EVIL_MSG}\n</pre><b>&amp;");
    let page = build_page(&b, &log);
    assert_escaped(&page);
    assert!(page.contains(&format!("<dd id=\"branch\">{EVIL_BRANCH_ESC}</dd>")));
    assert!(page.contains(&format!("<dd id=\"message\">{EVIL_MSG_ESC}</dd>")));
    assert!(page.contains(&format!("data-job=\"{EVIL_BRANCH_ESC}\"")));
    assert!(page.contains(&format!("id=\"error\">clone failed: {EVIL_MSG_ESC}</div>")));
    assert!(page.contains(&format!(
        "<pre id=\"log\" data-follow=\"/api/v1/projects/forge/builds/3/log?follow=1&#38;offset={}\">\n{EVIL_MSG_ESC}\n&#60;/pre&#62;&#60;b&#62;&#38;amp;</pre>",
        log.len()
    )));
    assert_eq!(page.matches("</pre>").count(), 1);

    let mut b = evil_build(4, Status::Passed);
    b.project = EVIL_BRANCH.to_string();
    b.tag = Some(EVIL_MSG.to_string());
    let page = build_page(&b, "");
    assert_escaped(&page);
    assert!(page.contains(&format!("<dd id=\"tag\">{EVIL_MSG_ESC}</dd>")));
}

#[test]
fn build_page_of_a_fresh_queued_build() {
    let mut b = build(1, Status::Queued);
    b.started_at = None;
    b.commit = None;
    b.jobs.clear();
    b.pushed.clear();
    let page = build_page(&b, "");
    assert!(page.contains("<dd id=\"started\">-</dd>"));
    assert!(page.contains("<dd id=\"commit\"><code>-</code></dd>"));
    assert!(page.contains("id=\"jobs\""));
    assert!(page.contains("No jobs reported."));
    assert!(page.contains("No images pushed."));
    assert!(page.contains("offset=0\""));
    assert!(!page.contains("id=\"error\""));
}

// ----------------------------------------------------------------------------------- chart

fn bar_count(svg: &str) -> usize {
    svg.matches("<rect class=\"bar ").count()
}

#[test]
fn chart_with_no_builds() {
    let svg = chart_svg(&[]);
    let titles = check_svg(&svg);
    assert_eq!(bar_count(&svg), 0);
    assert!(svg.contains("no finished builds yet"));
    assert_eq!(titles, vec!["no finished builds yet".to_string()]);
    // Unfinished builds are not drawn.
    let svg = chart_svg(&[build(1, Status::Running), build(2, Status::Queued)]);
    check_svg(&svg);
    assert_eq!(bar_count(&svg), 0);
}

#[test]
fn chart_with_one_build() {
    let mut b = build(1, Status::Passed);
    b.duration_ms = Some(12_300);
    let svg = chart_svg(&[b]);
    let titles = check_svg(&svg);
    assert_eq!(bar_count(&svg), 1);
    assert!(
        titles.contains(&"#1 passed in 12.3 s".to_string()),
        "{titles:?}"
    );
    assert!(svg.contains("success rate over the last 1 build: 100%"));
    assert!(svg.contains(">12.3 s</text>"), "y axis max label");
    assert!(svg.contains("fill=\"#2e7d32\""));
    // The single bar is full height: bottom 204 - top 34 = 170.
    assert!(
        svg.contains("y=\"34.0\" width=\"15.1\" height=\"170.0\""),
        "{svg}"
    );
}

#[test]
fn chart_draws_only_the_last_30_of_40() {
    let builds: Vec<Build> = (1..=40)
        .map(|n| {
            build(
                n,
                match n % 5 {
                    0 => Status::Failed,
                    1 => Status::Cancelled,
                    _ => Status::Passed,
                },
            )
        })
        .rev()
        .collect();
    let svg = chart_svg(&builds);
    let titles = check_svg(&svg);
    assert_eq!(bar_count(&svg), 30);
    assert!(!svg.contains("data-number=\"10\""));
    assert!(svg.contains("data-number=\"11\""));
    assert!(svg.contains("data-number=\"40\""));
    assert!(svg.contains(">#11 (oldest)</text>"));
    assert!(svg.contains(">#40 (newest)</text>"));
    // Oldest left.
    assert!(svg.find("data-number=\"11\"").unwrap() < svg.find("data-number=\"40\"").unwrap());
    // Builds 11..=40: 6 failed, 6 cancelled, 18 passed: 18 of 24 that passed or failed.
    let rate = "success rate over the last 30 builds: 75% (6 cancelled or interrupted not counted)";
    assert!(svg.contains(rate), "{svg}");
    assert_eq!(success_rate_text(&builds), rate);
    assert!(titles.contains(&"#40 failed in 40.0 s".to_string()));
    assert!(titles.contains(&"#31 cancelled in 31.0 s".to_string()));
    assert!(svg.contains(">40.0 s</text>"), "max label is the slowest");
    assert!(svg.contains("class=\"bar bar-failed\" data-number=\"40\""));
    assert!(svg.contains("fill=\"#c62828\""));
    assert!(svg.contains("fill=\"#9e9e9e\""));
}

#[test]
fn chart_success_rate_rounds() {
    let builds = vec![
        build(1, Status::Passed),
        build(2, Status::Passed),
        build(3, Status::Failed),
        build(4, Status::Running),
    ];
    assert_eq!(
        success_rate_text(&builds),
        "success rate over the last 3 builds: 67%"
    );
    let builds: Vec<Build> = (1..=5)
        .map(|n| {
            build(
                n,
                if n == 3 {
                    Status::Interrupted
                } else {
                    Status::Passed
                },
            )
        })
        .collect();
    assert_eq!(
        success_rate_text(&builds),
        "success rate over the last 5 builds: 100% (1 cancelled or interrupted not counted)"
    );
    let builds = vec![build(1, Status::Cancelled), build(2, Status::Interrupted)];
    assert_eq!(
        success_rate_text(&builds),
        "none of the last 2 builds passed or failed"
    );
}

#[test]
fn chart_with_builds_without_duration() {
    let mut a = build(1, Status::Interrupted);
    a.duration_ms = None;
    a.finished_at = None;
    let mut b = build(2, Status::Failed);
    b.duration_ms = None; // falls back on finished - started = 30 s
    let svg = chart_svg(&[a.clone(), b]);
    let titles = check_svg(&svg);
    assert_eq!(bar_count(&svg), 2);
    assert!(titles.contains(&"#1 interrupted, duration unknown".to_string()));
    assert!(titles.contains(&"#2 failed in 30.0 s".to_string()));
    // Nothing has a duration: no division by zero, stubs drawn, max label 0 s.
    let svg = chart_svg(&[a]);
    check_svg(&svg);
    assert_eq!(bar_count(&svg), 1);
    assert!(svg.contains("height=\"2.0\""));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn chart_escapes_titles() {
    let mut b = build(1, Status::Passed);
    b.project = EVIL_MSG.to_string();
    b.branch = Some(EVIL_BRANCH.to_string());
    let svg = chart_svg(&[b]);
    check_svg(&svg);
    assert_escaped(&svg);
}

// ----------------------------------------------------------------------------------- badge

#[test]
fn badge_texts_and_colours() {
    let cases = [
        (Some(Status::Passed), "passing", "#4c1"),
        (Some(Status::Failed), "failing", "#e05d44"),
        (Some(Status::Running), "running", "#007ec6"),
        (Some(Status::Queued), "queued", "#007ec6"),
        (Some(Status::Cancelled), "cancelled", "#9f9f9f"),
        (Some(Status::Interrupted), "interrupted", "#9f9f9f"),
        (None, "unknown", "#9f9f9f"),
    ];
    for (status, word, colour) in cases {
        let svg = badge_svg("build", status);
        let titles = check_svg(&svg);
        assert_eq!(titles, vec![format!("build: {word}")]);
        assert!(svg.contains(&format!("fill=\"{colour}\"")), "{word}");
        assert!(svg.contains(&format!(">{word}</text>")), "{word}");
        assert!(svg.contains(">build</text>"));
    }
}

fn badge_width(svg: &str) -> u32 {
    let start = svg.find("width=\"").unwrap() + 7;
    let end = start + svg[start..].find('"').unwrap();
    svg[start..end].parse().unwrap()
}

#[test]
fn badge_width_grows_with_text() {
    let short = badge_width(&badge_svg("ci", Some(Status::Passed)));
    let long = badge_width(&badge_svg("build of forge", Some(Status::Passed)));
    let longer = badge_width(&badge_svg("build of forge main", Some(Status::Passed)));
    assert!(short < long && long < longer, "{short} {long} {longer}");
    let passing = badge_width(&badge_svg("build", Some(Status::Passed)));
    let interrupted = badge_width(&badge_svg("build", Some(Status::Interrupted)));
    assert!(passing < interrupted);
    assert!(text_width("mmmm") > text_width("iiii"));
    // Parts add up: the label part and message part tile the badge.
    let svg = badge_svg("build", Some(Status::Passed));
    let lw = (text_width("build") + 10.0).round() as u32;
    let mw = (text_width("passing") + 10.0).round() as u32;
    assert_eq!(badge_width(&svg), lw + mw);
    assert!(svg.contains(&format!("<rect x=\"{lw}\" width=\"{mw}\"")));
}

#[test]
fn badge_escapes_its_label() {
    let svg = badge_svg(EVIL_BRANCH, Some(Status::Failed));
    let titles = check_svg(&svg);
    assert_escaped(&svg);
    assert_eq!(titles, vec![format!("{EVIL_BRANCH}: failing")]);
    let svg = badge_svg(EVIL_MSG, None);
    check_svg(&svg);
    assert_escaped(&svg);
}

// ----------------------------------------------------------------------------------- error

#[test]
fn error_pages() {
    let page = error_page(404, "no project named x");
    assert_html5(&page, "404 Not Found");
    assert!(page.contains("<h1 id=\"error-title\">404 Not Found</h1>"));
    assert!(page.contains(">no project named x</p>"));
    let page = error_page(418, EVIL_MSG);
    assert!(page.contains("<title>418 Error</title>"));
    assert_escaped(&page);
    assert!(page.contains(EVIL_MSG_ESC));
}
