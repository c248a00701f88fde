//! End-to-end tests of the `forge` binary: graph renderings against snapshots, error rendering
//! (file:line:column, the line and a caret) and exit codes. Set FORGE_UPDATE_SNAPSHOTS=1 to rewrite
//! the snapshots after an intended change, then review the diff.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("FORGE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FORGE_UPDATE_SNAPSHOTS=1 creates it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "snapshot {name} differs; got:\n{actual}\n(FORGE_UPDATE_SNAPSHOTS=1 updates it)"
    );
}

const PLATFORM: &[&str] = &["--platform", "linux/amd64"];

#[test]
fn graph_text_snapshot() {
    let o = forge(&[&["graph"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    snapshot("graph.txt", &stdout(&o));
}

#[test]
fn graph_json_snapshot() {
    let o = forge(&[&["graph", "--format", "json"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid json");
    assert_eq!(v["outputs"][0]["name"], "stage-2");
    snapshot("graph.json", &stdout(&o));
}

#[test]
fn graph_dot_snapshot() {
    let o = forge(&[&["graph", "--format", "dot", "--target", "test"], PLATFORM].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    snapshot("graph-test.dot", &stdout(&o));
}

#[test]
fn build_dry_run_prints_the_same_graph() {
    let a = forge(&[&["build", "--dry-run"], PLATFORM].concat());
    let b = forge(&[&["graph"], PLATFORM].concat());
    assert!(a.status.success());
    assert_eq!(stdout(&a), stdout(&b));
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
    snapshot("error-flag.txt", &stderr(&o));
    assert!(stderr(&o).starts_with("error: bad-flag.Dockerfile:2:6: unknown flag: --chmown"));
}

#[test]
fn mount_error_is_rendered_with_a_hint() {
    let o = forge(&["graph", "-f", "bad-mount.Dockerfile"]);
    assert_eq!(o.status.code(), Some(1));
    snapshot("error-mount.txt", &stderr(&o));
}

#[test]
fn parse_error_is_rendered_by_parse_and_graph() {
    let o = forge(&["parse", "--dump", "bad-syntax.Dockerfile"]);
    assert_eq!(o.status.code(), Some(1));
    snapshot("error-syntax.txt", &stderr(&o));
    let g = forge(&["graph", "-f", "bad-syntax.Dockerfile"]);
    assert_eq!(g.status.code(), Some(1));
    assert_eq!(stderr(&g), stderr(&o));
}

#[test]
fn parse_dump_prints_the_buildkit_ast() {
    let o = forge(&["parse", "--dump", "Dockerfile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("(arg \"ALPINE=3.19\")\n(from \"alpine:${ALPINE}\" \"AS\" \"base\")\n"),
        "{out}"
    );
}

#[test]
fn exit_codes() {
    // Usage errors of `forge build` are found before anything is built or touched.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let dir = ctx.path().to_str().unwrap();
    for (args, says) in [
        (
            vec!["build", "--push", dir],
            "--push needs at least one -t NAME",
        ),
        (
            vec!["build", "-o", "type=bogus", dir],
            "unknown type \"bogus\"",
        ),
        (vec!["build", "-o", "type=oci", dir], "type=oci needs dest="),
        (
            vec!["build", "--label", "novalue", dir],
            "expected KEY=VALUE",
        ),
        (
            vec!["build", "--secret", "id=x,bogus", dir],
            "invalid --secret",
        ),
        (
            vec!["build", "--platform", "linux/s390x", dir],
            "only this machine's platform",
        ),
        (
            vec!["build", "--platform", "linux/amd64", "/nonexistent/ctx"],
            "is not a directory",
        ),
    ] {
        let o = forge(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(forge(&["graph", "--bogus"]).status.code(), Some(2));
    assert_eq!(
        forge(&["graph", "--platform", "linux/"]).status.code(),
        Some(2)
    );
    let o = forge(&["graph", "--target", "tset"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("target stage \"tset\" could not be found"));
    assert!(stderr(&o).contains("hint: did you mean test?"));
    assert_eq!(
        forge(&["parse", "--dump", "missing"]).status.code(),
        Some(1)
    );
}

/// `forge parse --dump` prints exactly BuildKit's dump for every conformance case.
#[test]
fn parse_dump_matches_buildkit_testfiles() {
    let shared = std::env::var_os("FORGE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let dir = shared.join("conformance/buildkit/parser/testfiles");
    if !dir.is_dir() {
        if std::env::var("FORGE_E2E").as_deref() == Ok("require") {
            panic!("conformance data missing at {}", dir.display());
        }
        eprintln!("SKIP: conformance data missing at {}", dir.display());
        return;
    }
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
