//! `forge run --check` end to end on testdata/pipelines: the plan of the full example, and for
//! each bad file (one per error class of issue 12) its rendered errors with file:line:column, as
//! insta snapshots in tests/snapshots/. After an intended change:
//! `INSTA_UPDATE=always cargo test -p forge --test pipeline_file`, review the diff, commit.

use std::path::PathBuf;
use std::process::{Command, Output};

use forge_testsupport::snapshot;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/pipelines")
}

/// Runs forge in testdata/pipelines so that every path it prints is relative.
fn forge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .current_dir(testdata())
        .output()
        .expect("run forge")
}

/// A command line and what it did, as a snapshot shows it.
fn transcript(args: &[&str], o: &Output) -> String {
    format!(
        "$ forge {}\nexit: {}\n{}{}",
        args.join(" "),
        o.status
            .code()
            .map_or("signal".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_prints_the_plan_of_the_full_example() {
    let args = ["run", "--check", "--build-number", "42"];
    let o = forge(&args);
    assert_eq!(o.status.code(), Some(0), "{}", transcript(&args, &o));
    let _redacted = snapshot::settings().bind_to_scope();
    insta::assert_snapshot!("pipeline_plan", transcript(&args, &o));
}

#[test]
fn run_refuses_a_bad_file_as_check_does_and_takes_no_run_number() {
    let store = tempfile::tempdir().unwrap();
    let root = store.path().to_string_lossy().into_owned();
    let file = "bad/unknown-key.yaml";
    let checked = forge(&["run", "--check", "-f", file]);
    let ran = forge(&["run", "-f", file, "--root", &root]);
    assert_eq!(ran.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&ran.stderr),
        String::from_utf8_lossy(&checked.stderr),
        "forge run reports the file's errors as --check does"
    );
    let history = forge(&["history", "-f", file, "--root", &root]);
    assert_eq!(
        String::from_utf8_lossy(&history.stdout).trim(),
        format!("no runs of {file} yet")
    );
}

/// `--changed-since REV` where there is no git repository is an error naming the flag, not a run
/// where every `changes:` rule matches; nothing is built.
#[test]
fn changed_since_outside_a_repository_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    one_job_pipeline(dir.path());
    let ran = run_changed_since(dir.path(), store.path(), "HEAD~1");
    let err = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--changed-since HEAD~1:") && err.contains("is in no git repository"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&ran.stdout).contains("image app"));
}

/// A forge.yaml of one image (the directory itself) and one job on it.
fn one_job_pipeline(dir: &std::path::Path) {
    std::fs::write(
        dir.join("forge.yaml"),
        "images:\n  app: {context: .}\njobs:\n  t:\n    image: app\n    script: [\"true\"]\n",
    )
    .unwrap();
}

/// `forge run --changed-since REV` in `dir`, with its store at `store`.
fn run_changed_since(
    dir: &std::path::Path,
    store: &std::path::Path,
    rev: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["run", "--changed-since", rev, "--root"])
        .arg(store)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `--changed-since` with a name that is no revision of a full clone stays an error, and it names
/// the flag (C9: it named only gix's "revision"); nothing is built.
#[test]
fn changed_since_a_name_that_is_no_revision_is_an_error_naming_the_flag() {
    if forge_testsupport::tool("git").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    one_job_pipeline(dir.path());
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &["commit", "-q", "-m", "one"],
    ] {
        forge_testsupport::run(
            Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(dir.path()),
        );
    }
    let ran = run_changed_since(dir.path(), store.path(), "no-such-branch");
    let err = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: --changed-since no-such-branch: "),
        "{err}"
    );
    assert!(!err.contains("shallow"), "{err}");
    assert!(!String::from_utf8_lossy(&ran.stdout).contains("image app"));
}

/// Every bad file, the error class it pins.
const BAD: &[&str] = &[
    "yaml-syntax",
    "unknown-key",
    "wrong-type",
    "missing-key",
    "bad-duration",
    "bad-when",
    "needs-nothing",
    "image-nothing",
    "cycle",
    "cycle-stage",
    "empty-matrix",
    "duplicate-job",
    "duplicate-key",
    "bad-if",
    "undefined-stage",
    "undefined-variable",
    "too-deep",
    "too-deep-if",
    "alias-bomb",
    "many-errors",
];

#[test]
fn bad_files_fail_with_file_line_column() {
    let _redacted = snapshot::settings().bind_to_scope();
    for name in BAD {
        let file = format!("bad/{name}.yaml");
        let args = ["run", "--check", "-f", &file];
        let o = forge(&args);
        let text = transcript(&args, &o);
        assert_eq!(o.status.code(), Some(1), "{text}");
        let located = format!("error: {file}:");
        assert!(text.contains(&located), "no file:line:col in\n{text}");
        // Keep the snapshots readable: the 10,000-bracket line is cut after its caret region.
        let text: String = text
            .lines()
            .map(|l| {
                if l.chars().count() > 120 {
                    format!("{}...", l.chars().take(120).collect::<String>())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(format!("pipeline_bad_{}", name.replace('-', "_")), text);
    }
}

/// `include:` reads files of the pipeline's repository only: a file named through a link that
/// leads out of it is refused, where the include names it; the files that are inside merge into
/// the plan, and an error in one is shown in it.
#[test]
fn check_reads_included_files_inside_the_repository_only() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("ci")).unwrap();
    std::fs::write(
        repo.join("forge.yaml"),
        "include: [ci/jobs.yml]\njobs:\n  main:\n    image: alpine\n    script: [x]\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("ci/jobs.yml"),
        "jobs:\n  included:\n    image: alpine\n    script: [x]\n",
    )
    .unwrap();
    let check = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["run", "--check", "-f", file])
            .current_dir(&repo)
            .output()
            .expect("run forge")
    };
    let o = check("forge.yaml");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("  job included\n") && out.contains("  job main\n"),
        "{out}"
    );

    std::fs::write(dir.path().join("secret.yml"), "jobs:\n  stolen: {}\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.yml"), repo.join("ci/out.yml")).unwrap();
    std::fs::write(repo.join("out.yaml"), "include: ci/out.yml\njobs: {}\n").unwrap();
    let o = check("out.yaml");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: out.yaml:1:10: "), "{err}");
    assert!(!err.contains("stolen"), "{err}");

    std::fs::write(
        repo.join("ci/bad.yml"),
        "jobs:\n  b:\n    image: alpine\n    scrpt: [x]\n",
    )
    .unwrap();
    std::fs::write(repo.join("bad.yaml"), "include: ci/bad.yml\njobs: {}\n").unwrap();
    let o = check("bad.yaml");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ci/bad.yml:4:5: unknown key `scrpt`"),
        "{err}"
    );
}
