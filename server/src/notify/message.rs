//! The words of a notification: subject, plain text, and a JSON payload.

use serde_json::json;

use crate::model::{Build, short_commit};
use crate::notify::rules::Outcome;

/// One notification, ready for any sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// One line, for an email subject or a chat title.
    pub subject: String,
    /// A few lines of plain text.
    pub text: String,
    /// The webhook payload; its "text" key makes it a Slack incoming-webhook message.
    pub json: serde_json::Value,
}

/// The first non-empty line of a text, trimmed.
fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// "850ms", "12.3s", "4m 05s", "1h 02m".
fn human_duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// The message for a build: subject like "forge: myproj #12 fixed (main, 1a2b3c4)".
///
/// The text names the project, number, result word (passed, fixed, failed, broken, still
/// failing), branch or tag, short commit and the first line of its message, duration, failed
/// jobs, the error when the build failed outside a job, and the build page
/// `{base_url}/p/{project}/{number}`. The JSON has the keys text, project, number, result (the
/// build's status), outcome ([`Outcome::as_str`]), branch, tag, commit (full), url, duration_ms
/// and failed_jobs; absent values are null.
pub fn message(build: &Build, outcome: Outcome, base_url: &str) -> Message {
    let url = format!(
        "{}/p/{}/{}",
        base_url.trim_end_matches('/'),
        build.project,
        build.number
    );
    let reference = build.branch.as_deref().or(build.tag.as_deref());
    let short = build.commit.as_deref().map(short_commit);
    let failed_jobs: Vec<&str> = build
        .jobs
        .iter()
        .filter(|j| j.result == "failed")
        .map(|j| j.name.as_str())
        .collect();

    let mut subject = format!(
        "forge: {} #{} {}",
        build.project,
        build.number,
        outcome.word()
    );
    let context: Vec<&str> = reference.into_iter().chain(short).collect();
    if !context.is_empty() {
        subject.push_str(&format!(" ({})", context.join(", ")));
    }

    let mut lines = vec![
        format!("{} #{} {}", build.project, build.number, outcome.word()),
        format!("Project: {}", build.project),
        format!("Build: #{}", build.number),
        format!("Result: {}", outcome.word()),
    ];
    if let Some(branch) = &build.branch {
        lines.push(format!("Branch: {branch}"));
    }
    if let Some(tag) = &build.tag {
        lines.push(format!("Tag: {tag}"));
    }
    if let Some(short) = short {
        match build.message.as_deref().and_then(first_line) {
            Some(m) => lines.push(format!("Commit: {short} {m}")),
            None => lines.push(format!("Commit: {short}")),
        }
    }
    if let Some(ms) = build.duration_ms {
        lines.push(format!("Duration: {}", human_duration(ms)));
    }
    if !failed_jobs.is_empty() {
        lines.push(format!("Failed jobs: {}", failed_jobs.join(", ")));
    }
    if let Some(error) = build.error.as_deref().and_then(first_line) {
        lines.push(format!("Error: {error}"));
    }
    lines.push(format!("Build page: {url}"));
    let text = lines.join("\n") + "\n";

    let json = json!({
        // Slack reads `<...>` in a message's text as a mention or a link and `&` as an entity: a
        // commit message's `<!channel>` pinged a whole channel. Escaped as Slack says to.
        "text": slack_escaped(&text),
        "project": build.project,
        "number": build.number,
        "result": build.status.as_str(),
        "outcome": outcome.as_str(),
        "branch": build.branch,
        "tag": build.tag,
        "commit": build.commit,
        "url": url,
        "duration_ms": build.duration_ms,
        "failed_jobs": failed_jobs,
    });

    Message {
        subject,
        text,
        json,
    }
}

/// `text` with the three characters Slack's message formatting gives meaning to escaped
/// (api.slack.com, "Escaping text"): `&`, `<` and `>`.
fn slack_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use crate::notify::sample_build as build;

    #[test]
    fn subject_names_project_number_word_branch_and_commit() {
        let mut b = build();
        b.status = Status::Passed;
        b.jobs.clear();
        let m = message(&b, Outcome::Fixed, "http://ci.example");
        assert_eq!(m.subject, "forge: myproj #12 fixed (main, 1a2b3c4)");

        let m = message(&build(), Outcome::StillFailing, "http://ci.example");
        assert_eq!(m.subject, "forge: myproj #12 still failing (main, 1a2b3c4)");
    }

    /// Regression (serve sweep 03): a commit message's `<!channel>` and `<url|text>` reached
    /// Slack as a mention of the whole channel and a disguised link.
    #[test]
    fn the_webhooks_text_is_escaped_as_slack_reads_it() {
        let mut b = build();
        b.message = Some("<!channel> see <https://evil.example/login|the build> & more".into());
        let m = message(&b, Outcome::Broken, "http://ci.example");
        let slack = m.json["text"].as_str().unwrap();
        assert!(
            slack.contains(
                "&lt;!channel&gt; see &lt;https://evil.example/login|the build&gt; &amp; more"
            ),
            "{slack}"
        );
        assert!(!slack.contains('<') && !slack.contains('>'), "{slack}");
        // The mail's plain text says it as written.
        assert!(m.text.contains("<!channel> see"), "{}", m.text);
    }

    #[test]
    fn subject_for_tag_and_without_commit() {
        let mut b = build();
        b.branch = None;
        b.tag = Some("v1.2.0".into());
        assert_eq!(
            message(&b, Outcome::Broken, "").subject,
            "forge: myproj #12 broken (v1.2.0, 1a2b3c4)"
        );
        b.commit = None;
        assert_eq!(
            message(&b, Outcome::Broken, "").subject,
            "forge: myproj #12 broken (v1.2.0)"
        );
        b.tag = None;
        assert_eq!(
            message(&b, Outcome::Broken, "").subject,
            "forge: myproj #12 broken"
        );
    }

    #[test]
    fn text_has_the_facts_and_only_the_first_line_of_the_commit_message() {
        let m = message(&build(), Outcome::Broken, "http://ci.example:8080/");
        let t = &m.text;
        for want in [
            "Project: myproj",
            "Build: #12",
            "Result: broken",
            "Branch: main",
            "Commit: 1a2b3c4 Fix the flaky cache test\n",
            "Duration: 1m 23s",
            "Failed jobs: test, e2e",
            "Build page: http://ci.example:8080/p/myproj/12",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        assert!(!t.contains("Long explanation"), "{t}");
        assert!(!t.contains("Tag:"), "{t}");
        assert!(!t.contains("Error:"), "{t}");
        assert!(!m.subject.contains('\n'));
    }

    #[test]
    fn text_for_a_tag_build_failed_outside_a_job() {
        let mut b = build();
        b.branch = None;
        b.tag = Some("v2".into());
        b.jobs.clear();
        b.message = None;
        b.duration_ms = None;
        b.error = Some("bad forge.yaml: line 3\ndetails".into());
        let t = message(&b, Outcome::Failed, "http://ci").text;
        assert!(t.contains("Tag: v2"), "{t}");
        assert!(t.contains("Commit: 1a2b3c4\n"), "{t}");
        assert!(t.contains("Error: bad forge.yaml: line 3\n"), "{t}");
        assert!(!t.contains("details"), "{t}");
        assert!(!t.contains("Branch:") && !t.contains("Failed jobs") && !t.contains("Duration"));
    }

    #[test]
    fn json_has_every_key() {
        let m = message(&build(), Outcome::StillFailing, "http://ci");
        let j = m.json.as_object().unwrap();
        let mut keys: Vec<&str> = j.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "branch",
                "commit",
                "duration_ms",
                "failed_jobs",
                "number",
                "outcome",
                "project",
                "result",
                "tag",
                "text",
                "url"
            ]
        );
        assert_eq!(j["text"], slack_escaped(&m.text).as_str());
        assert_eq!(j["project"], "myproj");
        assert_eq!(j["number"], 12);
        assert_eq!(j["result"], "failed");
        assert_eq!(j["outcome"], "still_failing");
        assert_eq!(j["branch"], "main");
        assert_eq!(j["tag"], serde_json::Value::Null);
        assert_eq!(j["commit"], "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b");
        assert_eq!(j["url"], "http://ci/p/myproj/12");
        assert_eq!(j["duration_ms"], 83_500);
        assert_eq!(j["failed_jobs"], serde_json::json!(["test", "e2e"]));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(245_000), "4m 05s");
        assert_eq!(human_duration(3_720_000), "1h 02m");
    }
}
