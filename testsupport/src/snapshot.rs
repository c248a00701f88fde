//! Redactions for snapshots of the CLI's output (insta), so that a snapshot holds what forge decides
//! and not what the run happened to produce: content digests, temporary paths, timings, build ids.
//! Graph keys (`blake3:...`) are not redacted: they must stay stable, and the snapshots pin them.
//!
//! ```no_run
//! # let stderr = String::new();
//! let _redacted = forge_testsupport::snapshot::settings().bind_to_scope();
//! insta::assert_snapshot!("usage_error", stderr);
//! ```
//!
//! Snapshots live in `tests/snapshots/` beside the test file. CI never writes them (`.ci/test` sets
//! INSTA_UPDATE=no): run the test with `INSTA_UPDATE=always` (or `cargo insta test`), review the diff
//! of `tests/snapshots/`, and commit it.

use std::path::Path;

/// The shared filters, in the order they apply: (regex, replacement).
pub const FILTERS: &[(&str, &str)] = &[
    // Content digests of layers, configs and manifests.
    (r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]"),
    // A build's id as it names its scratch space and snapshots, and in JSON.
    (r"\bbuild-[0-9a-f]{16}\b", "build-[ID]"),
    (r#"("build_id"\s*:\s*")[0-9a-f]{16}""#, "${1}[ID]\""),
    // The seconds since a step started that plain progress puts before each output line.
    (r"(?m)^(#\d+) \d+\.\d{3} ", "${1} [TIME] "),
    // Durations: `DONE 1.2s`, `0.3s`, `15ms`.
    (r"\b\d+\.\d+s\b", "[TIME]"),
    (r"\b\d+(?:\.\d+)?(?:ms|µs|ns)\b", "[TIME]"),
    // Temporary directories: the first component under /tmp or /var/tmp, the rest of the path kept.
    (
        r#"(^|[\s"'=:(\[])(?:/var)?/tmp/[^/\s:"')\]]+"#,
        "${1}[TEMP]",
    ),
];

/// insta settings with the shared [`FILTERS`] on top of the current ones; bind them around the
/// assertions (`settings().bind_to_scope()`).
pub fn settings() -> insta::Settings {
    settings_with_paths(&[])
}

/// As [`settings`], with each `(path, name)` redacted to `[name]` before the shared filters apply:
/// for a directory the test made and whose name the snapshot should show as a role (`[CONTEXT]`,
/// `[ROOT]`).
pub fn settings_with_paths(paths: &[(&Path, &str)]) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    // The assertion's expression is a helper's variable name: noise in a reviewed file.
    settings.set_omit_expression(true);
    for (path, name) in paths {
        settings.add_filter(&escape(&path.to_string_lossy()), format!("[{name}]"));
    }
    // A TMPDIR other than /tmp is where tempfile puts directories.
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_string_lossy();
    let tmp = tmp.trim_end_matches('/');
    if !tmp.is_empty() && tmp != "/tmp" && tmp != "/var/tmp" {
        settings.add_filter(&format!(r"{}/[^/\s:]+", escape(tmp)), "[TEMP]");
    }
    for (regex, replacement) in FILTERS {
        settings.add_filter(regex, *replacement);
    }
    settings
}

/// `text` as a regex that matches it literally.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_times_ids_and_temp_paths_are_redacted() {
        let ctx = Path::new("/srv/ctx.d/[x]");
        let _scope = settings_with_paths(&[(ctx, "CONTEXT")]).bind_to_scope();
        let digest = format!("sha256:{}", "ab12".repeat(16));
        let text = format!(
            "#1 [internal] load build context /srv/ctx.d/[x]\n\
             #1 DONE 0.3s\n\
             #2 RUN echo hi\n\
             #2 0.013 hi\n\
             #2 DONE 1.2s\n\
             exporting to /tmp/.tmpAbC123/out.tar in 15ms\n\
             scratch /var/tmp/forge-hostile-x1Y2z3/root/tmp/build-0123456789abcdef\n\
             {{\"build_id\": \"fedcba9876543210\", \"config\": \"{digest}\"}}\n\
             pushed {digest} (graph key blake3:{}, 3 layers)\n",
            "cd".repeat(32)
        );
        insta::assert_snapshot!(text, @r#"
        #1 [internal] load build context [CONTEXT]
        #1 DONE [TIME]
        #2 RUN echo hi
        #2 [TIME] hi
        #2 DONE [TIME]
        exporting to [TEMP]/out.tar in [TIME]
        scratch [TEMP]/root/tmp/build-[ID]
        {"build_id": "[ID]", "config": "sha256:[DIGEST]"}
        pushed sha256:[DIGEST] (graph key blake3:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd, 3 layers)
        "#);
    }
}
