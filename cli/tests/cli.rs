//! End-to-end tests of the `forge` binary: graph renderings, `parse --dump`, usage errors and error
//! renderings (file:line:column, the line and a caret) as insta snapshots in tests/snapshots/, with
//! forge-testsupport's redactions (digests, temporary paths, timings); and exit codes.
//! After an intended change: `INSTA_UPDATE=always cargo test -p forge --test cli` (or `cargo insta
//! test -p forge --test cli` then `cargo insta review`), review `git diff cli/tests/snapshots`, commit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_testsupport::snapshot;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/dockerfiles/cli")
}

/// Runs forge in testdata/dockerfiles/cli so that every path it prints is relative.
fn forge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .current_dir(testdata())
        .output()
        .expect("run forge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A command line and what it did, as a snapshot shows it.
fn transcript(args: &[&str], o: &Output) -> String {
    format!(
        "$ forge {}\nexit: {}\n{}{}",
        args.join(" "),
        o.status
            .code()
            .map_or("signal".to_string(), |c| c.to_string()),
        stdout(o),
        stderr(o)
    )
}

const PLATFORM: &[&str] = &["--platform", "linux/amd64"];

#[test]
fn graph_text_snapshot() {
    let o = forge(&[&["graph"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("graph_text", stdout(&o));
}

#[test]
fn graph_json_snapshot() {
    let o = forge(&[&["graph", "--format", "json"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid json");
    assert_eq!(v["outputs"][0]["name"], "stage-2");
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("graph_json", stdout(&o));
}

#[test]
fn graph_dot_snapshot() {
    let o = forge(&[&["graph", "--format", "dot", "--target", "test"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("graph_test_dot", stdout(&o));
}

#[test]
fn build_dry_run_prints_the_same_graph() {
    let a = forge(&[&["build", "--dry-run"], PLATFORM].concat());
    let b = forge(&[&["graph"], PLATFORM].concat());
    assert!(a.status.success());
    assert_eq!(stdout(&a), stdout(&b));
}

/// A reader that goes away (`forge build --dry-run | head -1`) ends the output quietly: no panic
/// on the closed pipe (exit 101, "failed printing to stdout"), as other command-line tools end.
#[test]
fn a_closed_standard_output_ends_quietly() {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args([&["build", "--dry-run"], PLATFORM].concat())
        .current_dir(testdata())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run forge");
    // Close the reading end before forge writes: every write it makes meets a closed pipe.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(status.code(), Some(101), "{err}");
}

/// A context in `dir` whose Dockerfile copies one file onto scratch: a build that needs no
/// registry and runs no step.
fn copy_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
    std::fs::write(ctx.join("a"), "a\n").unwrap();
    ctx
}

/// `forge build 2>&1 | head -1`: the build's words met a closed standard error, and forge
/// panicked (exit 101) after the build, before its result. It ends as the build ends.
#[test]
fn a_closed_standard_error_leaves_the_build_to_its_end() {
    let ws = tempfile::tempdir().unwrap();
    let ctx = copy_context(ws.path());
    let root = ws.path().join("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "local/closed:1",
            "--root",
        ])
        .arg(&root)
        .arg(&ctx)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run forge");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let listed = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["images", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        stdout(&listed).contains("local/closed"),
        "{}",
        stdout(&listed)
    );
}

/// buildx's `--load` (common in CI scripts) was a usage error; it is taken, and the note says
/// where the image is and how docker gets it.
#[test]
fn load_is_taken_with_a_note() {
    let ws = tempfile::tempdir().unwrap();
    let ctx = copy_context(ws.path());
    let o = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--load", "-t", "local/loaded:1", "--root"])
        .arg(ws.path().join("store"))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("note: --load: there is no docker daemon here"),
        "{}",
        stderr(&o)
    );
}

/// A context on standard input that is no archive is a lone Dockerfile, read no further than a
/// Dockerfile may be: `forge build - < /dev/zero` copied standard input until the disk was full.
#[test]
fn an_endless_standard_input_that_is_no_archive_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--root"])
        .arg(store.path())
        .arg("-")
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .expect("run forge");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds more than 4 MiB and is no tar"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn build_args_change_the_graph_and_unused_ones_warn() {
    let a = forge(&[&["graph", "--build-arg", "ALPINE=3.20"], PLATFORM].concat());
    assert!(a.status.success());
    assert!(stdout(&a).contains("source image alpine:3.20"));
    let b = forge(&[&["graph", "--build-arg", "NOT_DECLARED=1"], PLATFORM].concat());
    assert!(b.status.success());
    assert!(stderr(&b).contains("warning: build argument \"NOT_DECLARED\" was not consumed"));
}

#[test]
fn dockerignore_patterns_reach_the_context_source() {
    let o = forge(&[&["graph"], PLATFORM].concat());
    assert!(
        stdout(&o).contains(r#"exclude=["*.pyc","__pycache__"]"#),
        "{}",
        stdout(&o)
    );
}

#[test]
fn instruction_error_is_rendered_with_a_caret() {
    let o = forge(&["graph", "-f", "bad-flag.Dockerfile"]);
    assert_eq!(o.status.code(), Some(1));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("error_flag", stderr(&o));
    assert!(stderr(&o).starts_with("error: bad-flag.Dockerfile:2:6: unknown flag: --chmown"));
}

#[test]
fn mount_error_is_rendered_with_a_hint() {
    let o = forge(&["graph", "-f", "bad-mount.Dockerfile"]);
    assert_eq!(o.status.code(), Some(1));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("error_mount", stderr(&o));
}

#[test]
fn parse_error_is_rendered_by_parse_and_graph() {
    let o = forge(&["parse", "--dump", "bad-syntax.Dockerfile"]);
    assert_eq!(o.status.code(), Some(1));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("error_syntax", stderr(&o));
    let g = forge(&["graph", "-f", "bad-syntax.Dockerfile"]);
    assert_eq!(g.status.code(), Some(1));
    assert_eq!(stderr(&g), stderr(&o));
}

#[test]
fn parse_dump_prints_the_buildkit_ast() {
    let o = forge(&["parse", "--dump", "Dockerfile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("parse_dump", stdout(&o));
}

#[test]
fn exit_codes() {
    // Usage errors of `forge build` are found before anything is built or touched: exit 2 and a
    // message naming the flag.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let dir = ctx.path().to_str().unwrap();
    let mut usage = Vec::new();
    for args in [
        vec!["build", "--push", dir],
        vec!["build", "-o", "type=bogus", dir],
        vec!["build", "-o", "type=oci", dir],
        // `-o "$OUT"` with OUT unset: the working directory's files were replaced by the image's.
        vec!["build", "-o", "", dir],
        vec!["build", "-o", "type=local,dest=", dir],
        vec!["build", "-o", "type=oci,dest=,tar=false", dir],
        vec!["build", "--label", "=novalue", dir],
        vec![
            "build",
            "-t",
            "app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            dir,
        ],
        vec!["build", "--secret", "id=x,bogus", dir],
        vec!["build", "--platform", "linux/s390x", dir],
        vec!["build", "--platform", "linux/amd64", "/nonexistent/ctx"],
        vec!["graph", "--bogus"],
        vec!["graph", "--platform", "linux/"],
        vec!["build", "--platform", "bogus", dir],
    ] {
        let o = forge(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        usage.push(transcript(&args, &o));
    }
    // Errors in what the build means exit 1.
    let mut failures = Vec::new();
    for args in [
        vec!["graph", "--target", "tset"],
        vec!["parse", "--dump", "missing"],
    ] {
        let o = forge(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        failures.push(transcript(&args, &o));
    }
    let mut settings = snapshot::settings_with_paths(&[(ctx.path(), "CONTEXT")]);
    settings.add_filter(
        r"this machine's platform \([^)]+\)",
        "this machine's platform ([HOST])",
    );
    let _redacted = settings.bind_to_scope();
    insta::assert_snapshot!("usage_errors", usage.join("\n"));
    insta::assert_snapshot!("build_errors", failures.join("\n"));
}

/// `forge parse --dump` prints exactly BuildKit's dump for every conformance case.
#[test]
fn parse_dump_matches_buildkit_testfiles() {
    let Some(dir) = forge_testsupport::conformance("parser/testfiles") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut failed = Vec::new();
    for case in &cases {
        let o = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["parse", "--dump"])
            .arg(case.join("Dockerfile"))
            .output()
            .unwrap();
        let want = std::fs::read(case.join("result")).unwrap();
        if !o.status.success() || o.stdout != want {
            failed.push(case.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    println!(
        "forge parse --dump: {}/{} BuildKit testfiles byte for byte",
        cases.len() - failed.len(),
        cases.len()
    );
    assert!(failed.is_empty(), "differ: {failed:?}");
    assert_eq!(cases.len(), 33);
}

/// C14: `--cache-to` naming the tag the build pushes replaced the pushed image with the cache's
/// manifest (exit 0, and docker then found no image there). It is refused before anything runs,
/// with the cache's own name to use instead.
#[test]
fn a_cache_export_to_the_pushed_tag_is_refused() {
    let store = tempfile::tempdir().unwrap();
    let args = [
        "build",
        "--root",
        store.path().to_str().unwrap(),
        "-t",
        "127.0.0.1:9/same/app:latest",
        "--push",
        "--cache-to",
        "type=registry,ref=127.0.0.1:9/same/app",
        ".",
    ];
    let o = forge(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "--cache-to 127.0.0.1:9/same/app:latest names the image this build pushes \
             (127.0.0.1:9/same/app:latest): the cache would replace it; give the cache a tag or \
             repository of its own (such as 127.0.0.1:9/same/app/cache:latest)"
        ),
        "{err}"
    );
}
