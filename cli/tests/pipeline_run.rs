//! `forge run` end to end (issue 12) with real parts: the loopback registry, the busybox test image,
//! the embedded runner as root; skopeo judges what reached the registry. One workspace goes through
//! the life of a pipeline: a first run (parallel jobs, a 2x2 matrix, artifacts handed to a later
//! job, a JUnit report, a masked secret, a gated push), an unchanged rerun that runs nothing, a
//! change under one image's directory that reruns only that image's steps and jobs, and a failing
//! job that leaves the registry's tag where it was.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::pipeline::{Machine, forge_run, git_in, lines_with, machine, small_workspace};
use common::printed;

/// The digest the registry holds for `reference`, or `None` when it has no such tag.
fn registry_digest(reference: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The position of the first line equal to `line` (a scheduling order check).
fn position(out: &str, line: &str) -> usize {
    out.lines()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?} in:\n{out}"))
}

const APP_DOCKERFILE: &str =
    "FROM {BUSYBOX}\nWORKDIR /app\nCOPY . .\nRUN echo built-app > /app/built.txt\n";
const WORKER_DOCKERFILE: &str =
    "FROM {BUSYBOX}\nWORKDIR /srv\nCOPY . .\nRUN echo built-worker > /srv/built.txt\n";

fn pipeline(reg: &str, repo: &str, lint_exit: u8) -> String {
    format!(
        r#"stages: [build, test, report]
images:
  app:
    context: app
    tags: ["{reg}/{repo}/app:latest", "{reg}/{repo}/app:v1.${{FORGE_BUILD_NUMBER}}"]
    push: true
  worker:
    context: worker
jobs:
  lint:
    image: app
    secrets: [API_TOKEN]
    script:
      - echo "token is $API_TOKEN"
      - echo "file says $(cat /run/secrets/API_TOKEN)"
      - sleep 1
      - exit {lint_exit}
  unit:
    image: app
    script:
      - sleep 1
      - mkdir -p out reports
      - echo "result of unit" > out/result.txt
      - >-
        echo '<testsuite name="calc" tests="3" failures="1">
        <testcase classname="calc" name="test_add"/>
        <testcase classname="calc" name="test_sub"/>
        <testcase classname="calc" name="test_divide_by_zero"><failure message="ZeroDivisionError"/></testcase>
        </testsuite>' > reports/junit.xml
    artifacts:
      paths: [out/]
      reports:
        junit: [reports/*.xml]
  worker-check:
    image: worker
    parallel:
      matrix:
        - SHARD: ["a", "b"]
          MODE: ["fast", "slow"]
    script:
      - cat /srv/built.txt
      - echo "shard $SHARD mode $MODE"
  report:
    stage: report
    image: app
    needs: [unit]
    script:
      - cat /app/out/result.txt
"#
    )
}

fn write_workspace(dir: &Path, m: &Machine, repo: &str) {
    for (sub, df) in [("app", APP_DOCKERFILE), ("worker", WORKER_DOCKERFILE)] {
        fs::create_dir_all(dir.join(sub)).unwrap();
        fs::write(
            dir.join(sub).join("Dockerfile"),
            df.replace("{BUSYBOX}", &m.busybox),
        )
        .unwrap();
        fs::write(dir.join(sub).join("main.txt"), format!("{sub} source v1\n")).unwrap();
    }
    fs::write(dir.join("forge.yaml"), pipeline(&m.registry, repo, 0)).unwrap();
}

/// Every file below `dir`, decompressed when it is gzip or zstd.
fn every_file_decompressed(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for p in forge_testsupport::walk(dir) {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if !md.is_file() {
            continue;
        }
        let raw = fs::read(&p).unwrap_or_default();
        let data = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut d = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut d)
                .map(|_| d)
                .unwrap_or(raw)
        } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::decode_all(&raw[..]).unwrap_or(raw)
        } else {
            raw
        };
        out.push((p, data));
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_pipeline_builds_tests_and_pushes_only_what_passed_and_reruns_only_what_changed() {
    let Some(m) = machine() else { return };
    let ws = forge_testsupport::scratch("forge-pipeline");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    let repo = format!("pipeline-{}", forge_testsupport::unique());
    write_workspace(&dir, &m, &repo);
    let secret = format!("s3cret-{}", forge_testsupport::unique());
    let env = [("API_TOKEN", secret.as_str())];

    // 1. The first run: everything builds and runs, the image is pushed.
    let o = forge_run(&dir, &root, &["run", "--jobs", "4"], &env);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("run 1 passed"), "{out}");
    // lint and unit (each sleeping a second) were both started before either ended.
    let both_started = position(&out, "job lint: started").max(position(&out, "job unit: started"));
    let first_end = out
        .lines()
        .position(|l| l.starts_with("job lint: passed") || l.starts_with("job unit: passed"))
        .expect("lint or unit passed");
    assert!(
        both_started < first_end,
        "lint and unit ran one after the other:\n{out}"
    );
    // The 2x2 matrix: four jobs, each with its values.
    for (shard, mode) in [("a", "fast"), ("a", "slow"), ("b", "fast"), ("b", "slow")] {
        let job = format!("worker-check: [{shard}, {mode}]");
        assert!(
            out.contains(&format!("[{job}] shard {shard} mode {mode}")),
            "{job} did not print its values:\n{out}"
        );
    }
    // The artifact reached the later job and the host.
    assert!(out.contains("[report] result of unit"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("forge-artifacts/unit/out/result.txt")).unwrap(),
        "result of unit\n"
    );
    // The JUnit report is summed, its failed test named.
    assert!(out.contains("tests: 2 passed, 1 failed"), "{out}");
    assert!(
        out.contains("failed test: unit: calc.test_divide_by_zero"),
        "{out}"
    );
    // The secret is masked in the output and in the stored log.
    assert!(out.contains("[lint] token is ****"), "{out}");
    assert!(out.contains("[lint] file says ****"), "{out}");
    assert!(!out.contains(&secret), "the secret was printed:\n{out}");
    let logs = common::forge(
        &root,
        &[
            "logs",
            "1",
            "lint",
            "-f",
            &dir.join("forge.yaml").to_string_lossy(),
        ],
    );
    let logs_text = printed(&logs);
    assert!(logs.status.success(), "{logs_text}");
    assert!(logs_text.contains("token is ****"), "{logs_text}");
    assert!(!logs_text.contains(&secret), "{logs_text}");
    // Pushed: both tags name the image the run built.
    let latest = format!("{}/{repo}/app:latest", m.registry);
    let pushed = registry_digest(&latest).expect("app:latest was pushed");
    assert_eq!(
        registry_digest(&format!("{}/{repo}/app:v1.1", m.registry)).as_deref(),
        Some(pushed.as_str())
    );
    assert!(
        out.contains(&format!("image app: pushed {latest}")),
        "{out}"
    );

    // 2. Unchanged: no build step and no job runs.
    let o = forge_run(&dir, &root, &["run"], &env);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("image app: built") && out.contains("(0 steps run,"),
        "{out}"
    );
    assert_eq!(
        lines_with(&out, "image ")
            .iter()
            .filter(|l| l.contains(" steps run") && !l.contains("(0 steps run"))
            .count(),
        0,
        "a build step ran again:\n{out}"
    );
    assert!(out.contains("jobs 0 ran, 7 cached, 0 failed"), "{out}");
    // The unchanged image is the same image: the registry's tag did not move.
    assert_eq!(registry_digest(&latest).as_deref(), Some(pushed.as_str()));
    // A cached job shows its log again, marked.
    assert!(out.contains("[report] (cached) result of unit"), "{out}");

    // 3. A change under worker/: only the worker's steps and jobs run.
    fs::write(dir.join("worker/main.txt"), "worker source v2\n").unwrap();
    let o = forge_run(&dir, &root, &["run"], &env);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    let worker_built = lines_with(&out, "image worker: built").join("\n");
    assert!(
        !worker_built.contains("(0 steps run"),
        "worker was not rebuilt:\n{out}"
    );
    let app_built = lines_with(&out, "image app: built").join("\n");
    assert!(
        app_built.contains("(0 steps run"),
        "app was rebuilt:\n{out}"
    );
    assert!(out.contains("jobs 4 ran, 3 cached, 0 failed"), "{out}");
    for job in ["lint", "unit", "report"] {
        assert!(
            out.contains(&format!("job {job}: passed (cached, not run)")),
            "{job}:\n{out}"
        );
    }

    // 4. A failing job: non-zero exit naming it, later jobs skipped, no tag moved.
    let pushed = registry_digest(&latest).expect("app:latest is there");
    fs::write(dir.join("app/main.txt"), "app source v2\n").unwrap();
    fs::write(dir.join("forge.yaml"), pipeline(&m.registry, &repo, 3)).unwrap();
    let o = forge_run(&dir, &root, &["run"], &env);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("error: run 4 failed: job lint failed"),
        "{out}"
    );
    assert!(out.contains("failed: lint (exit status 3)"), "{out}");
    assert!(out.contains("not pushed:"), "{out}");
    assert_eq!(
        registry_digest(&latest).as_deref(),
        Some(pushed.as_str()),
        "latest moved"
    );
    assert_eq!(
        registry_digest(&format!("{}/{repo}/app:v1.4", m.registry)),
        None
    );

    // The history lists the four runs.
    let h = common::forge(
        &root,
        &["history", "-f", &dir.join("forge.yaml").to_string_lossy()],
    );
    let h_text = printed(&h);
    assert!(h.status.success(), "{h_text}");
    let results: Vec<&str> = h_text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        results,
        ["passed", "passed", "passed", "failed"],
        "{h_text}"
    );

    // The secret is in no file of the store (records, blobs, logs) and no blob of the pushed image.
    for (path, data) in every_file_decompressed(&root) {
        assert!(
            !contains(&data, secret.as_bytes()),
            "the secret is in {}",
            path.display()
        );
    }
    let oci = ws.path().join("pushed");
    forge_testsupport::run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{latest}"),
        &format!("oci:{}:x", oci.display()),
    ]));
    for (path, data) in every_file_decompressed(&oci) {
        assert!(
            !contains(&data, secret.as_bytes()),
            "the secret is in {}",
            path.display()
        );
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn ctrl_c_during_a_job_with_a_service_stops_both_and_leaves_nothing_behind() {
    use std::io::BufRead;
    let Some(m) = machine() else { return };
    let ws = forge_testsupport::scratch("forge-pipeline-cancel");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(dir.join("app/Dockerfile"), format!("FROM {}\n", m.busybox)).unwrap();
    // A marker only this test's job carries on its command line.
    let marker = format!("4{}", std::process::id() % 100_000 + 100_000);
    fs::write(
        dir.join("forge.yaml"),
        format!(
            "images:\n  app:\n    context: app\njobs:\n  slow:\n    image: app\n    services:\n      - name: sidecar\n        image: app\n        command: [\"sleep\", \"5{marker}\"]\n    script:\n      - echo waiting\n      - sleep {marker}\n  after:\n    stage: deploy\n    image: app\n    script: [\"true\"]\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["run", "--root"])
        .arg(&root)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let mut seen = Vec::new();
    for line in (&mut reader).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "[slow] waiting" {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l == "[slow] waiting"),
        "{seen:?}"
    );
    assert!(
        !processes_with(&format!("sleep {marker}")).is_empty(),
        "the job is not running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    rest.push_str(&printed(&out));
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{rest}");
    assert!(rest.contains("run 1 cancelled"), "{rest}");
    assert!(rest.contains("error: run 1 cancelled"), "{rest}");
    assert_eq!(
        processes_with(&format!("sleep {marker}")),
        Vec::<String>::new()
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store = root.to_string_lossy().into_owned();
    assert!(
        !mounts.contains(&store),
        "a mount under the store is left:\n{mounts}"
    );
    for leftover in ["run", "tmp"] {
        let d = root.join(leftover);
        let entries: Vec<_> = fs::read_dir(&d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            entries.is_empty(),
            "{} is left with {entries:?}",
            d.display()
        );
    }
    let h = common::forge(
        &root,
        &["history", "-f", &dir.join("forge.yaml").to_string_lossy()],
    );
    assert!(printed(&h).contains("cancelled"), "{}", printed(&h));
}

/// The default artifacts directory (`forge-artifacts/`, in the directory forge runs in) inside an
/// image's context (`context: .`) is not part of the context: a job whose artifact differs on
/// every run does not make the next run rebuild the image and rerun the job, and the image does
/// not carry the last run's artifacts.
#[test]
fn the_artifacts_directory_inside_a_context_is_left_out_of_it() {
    let Some(m) = machine() else { return };
    let ws = forge_testsupport::scratch("forge-pipeline-artdir-in-context");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nCOPY . /src\n", m.busybox),
    )
    .unwrap();
    fs::write(
        dir.join("forge.yaml"),
        "images:\n  app:\n    context: .\njobs:\n  stamp:\n    image: app\n    script:\n      - test ! -e /src/forge-artifacts\n      - cat /proc/sys/kernel/random/uuid > stamp.txt\n    artifacts:\n      paths: [stamp.txt]\n",
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["run", "--root"])
            .arg(&root)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", printed(&first));
    let stamp = fs::read_to_string(dir.join("forge-artifacts/stamp/stamp.txt")).unwrap();
    assert!(!stamp.trim().is_empty());
    let second = run();
    let out = printed(&second);
    assert!(second.status.success(), "{out}");
    assert!(
        out.contains("(0 steps run,"),
        "the image was rebuilt:\n{out}"
    );
    assert!(
        out.contains("jobs 0 ran, 1 cached"),
        "the job ran again:\n{out}"
    );
}

/// A JUnit report cut short (a test runner killed mid-write) and an artifacts directory that
/// cannot be written do not take a job's artifacts from the jobs that need it: they are said
/// with the job's result, and the next job gets its files.
#[test]
fn a_broken_report_or_host_copy_keeps_the_artifacts_for_later_jobs() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-artifacts-kept",
        "jobs:\n  build:\n    image: app\n    script:\n      - echo the-binary > out.txt\n      - echo '<testsuite><testcase name=\"a\">' > report.xml\n    artifacts:\n      paths: [out.txt]\n      reports:\n        junit: report.xml\n  deploy:\n    image: app\n    needs: [build]\n    script: [cat out.txt]\n",
    );
    // A file where the artifacts directory should be: nothing can be copied out under it.
    fs::write(dir.join("blocked"), "not a directory").unwrap();
    for (args, copied) in [
        (&[][..], true),
        (&["--artifacts-dir", "blocked"][..], false),
    ] {
        let out = forge_run(
            &dir,
            &root,
            &[&["run", "--no-cache"][..], args].concat(),
            &[],
        );
        let text = printed(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("[deploy] the-binary"), "{text}");
        assert!(
            text.contains("job build: passed") && text.contains("artifacts: "),
            "{text}"
        );
        assert!(
            text.contains("report.xml"),
            "the report's error is not said:\n{text}"
        );
        if copied {
            assert_eq!(
                fs::read_to_string(dir.join("forge-artifacts/build/out.txt")).unwrap(),
                "the-binary\n"
            );
        } else {
            assert!(text.contains("not copied out"), "{text}");
        }
    }
}

/// A service's readiness wait ends when the run is cancelled, and at the job's `timeout`, not
/// at the probe's own (ten minutes here): Ctrl-C while `ready` fails every second cancels the run
/// at once and stops the service; a job whose `timeout` comes first fails as timed out. A
/// watchdog kills forge after two minutes, so a wait that ignores both fails the test instead of
/// hanging it.
#[test]
fn ctrl_c_and_a_jobs_timeout_end_a_service_readiness_wait() {
    use std::io::BufRead;
    let Some(m) = machine() else { return };
    // Its forge.yaml is written below, once for each half.
    let (_ws, dir, root) = small_workspace(&m, "forge-pipeline-ready-cancel", "");
    let marker = format!("3{}", std::process::id() % 100_000 + 100_000);
    let pipeline = |timeout: &str| {
        format!(
            "images:\n  app:\n    context: app\njobs:\n  waits:\n    image: app\n{timeout}    services:\n      - name: sidecar\n        image: app\n        command: [\"sleep\", \"5{marker}\"]\n        ready:\n          command: \"false\"\n          timeout: 10m\n          interval: 1s\n    script: [\"true\"]\n"
        )
    };
    let watched = |child: &std::process::Child| {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(120));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        });
    };

    fs::write(dir.join("forge.yaml"), pipeline("")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["run", "--root"])
        .arg(&root)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    watched(&child);
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in (&mut reader).lines() {
        let line = line.unwrap();
        let waiting = line.contains("forge: waiting for service sidecar");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("waiting for service sidecar")),
        "{seen:?}"
    );
    // A probe or two have failed by now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    rest.push_str(&printed(&out));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "killed by the watchdog?\n{rest}"
    );
    assert!(rest.contains("run 1 cancelled"), "{rest}");
    assert!(!rest.contains("is not ready"), "{rest}");
    assert_eq!(
        processes_with(&format!("sleep 5{marker}")),
        Vec::<String>::new(),
        "the service is left running"
    );

    fs::write(dir.join("forge.yaml"), pipeline("    timeout: 3s\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["run", "--root"])
        .arg(&root)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    watched(&child);
    let out = child.wait_with_output().unwrap();
    let text = printed(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "killed by the watchdog?\n{text}"
    );
    assert!(text.contains("timed out after 3s"), "{text}");
    assert_eq!(
        processes_with(&format!("sleep 5{marker}")),
        Vec::<String>::new(),
        "the service is left running"
    );
}

/// The rest of the file's semantics in one workspace: a build fed by a job's artifacts
/// (`artifacts-from`), `retry`, `allow_failure`, `when: on_failure` and `always`, a job's
/// `timeout`, `forge run JOB` (that job and what it needs), `--metadata-file` and the image
/// variables a deploy job sees, and `rules: changes:` against the last passed run's commit in a
/// git repository (made with the git binary, a judge here; forge reads it with gix).
#[test]
fn artifacts_from_retry_when_timeout_only_metadata_and_changes_rules() {
    let Some(m) = machine() else { return };
    let Some(_) = forge_testsupport::tool("git") else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-pipeline-semantics");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("rt")).unwrap();
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::write(
        dir.join("src/Dockerfile"),
        format!(
            "FROM {} AS base\nWORKDIR /build\nCOPY . .\nFROM base AS checker\nRUN echo from the checker stage > /build/stage.txt\nFROM base\n",
            m.busybox
        ),
    )
    .unwrap();
    fs::write(
        dir.join("src/prog.sh"),
        "#!/bin/sh\necho compiled program v1\n",
    )
    .unwrap();
    fs::write(
        dir.join("rt/Dockerfile"),
        format!(
            "FROM {}\nCOPY dist/prog /bin/prog\nRUN chmod 755 /bin/prog\n",
            m.busybox
        ),
    )
    .unwrap();
    fs::write(dir.join("docs/index.md"), "docs v1\n").unwrap();
    fs::write(dir.join(".gitignore"), "forge-artifacts/\nmeta.json\n").unwrap();
    let repo = format!("semantics-{}", forge_testsupport::unique());
    let runtime_tag = format!("{}/{repo}/runtime:1", m.registry);
    fs::write(
        dir.join("forge.yaml"),
        format!(
            r#"images:
  builder:
    context: src
  runtime:
    context: rt
    artifacts-from: [compile]
    tags: ["{runtime_tag}"]
    push: true
    needs: [smoke]
jobs:
  compile:
    stage: build
    image: builder
    script:
      - mkdir -p dist && cp prog.sh dist/prog
    artifacts:
      paths: [dist/, nothere/]
  smoke:
    image: runtime
    script:
      - prog
  flaky:
    image: runtime
    retry: 2
    allow_failure: true
    script:
      - echo trying
      - exit 5
  slow:
    image: runtime
    timeout: 1s
    allow_failure: true
    script:
      - sleep 30
  stage-job:
    image: builder@checker
    script:
      - cat /build/stage.txt
  registry-job:
    image: {busybox}
    script:
      - echo on the registry image
  docs:
    image: runtime
    rules:
      - changes: [docs/**]
    script:
      - echo docs changed
  cleanup:
    stage: deploy
    image: runtime
    when: on_failure
    script:
      - echo cleaning up
  deploy:
    stage: deploy
    image: runtime
    needs: [runtime]
    when: always
    script:
      - echo "deploying $FORGE_IMAGE_RUNTIME_REF at $FORGE_IMAGE_RUNTIME_DIGEST"
"#,
            busybox = m.busybox
        ),
    )
    .unwrap();
    let git = |args: &[&str]| {
        forge_testsupport::run(
            Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(&dir),
        )
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "one"]);

    let meta = dir.join("meta.json");
    let o = forge_run(&dir, &root, &["run", "--metadata-file", "meta.json"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    // The runtime image was built from the job's output.
    assert!(out.contains("[smoke] compiled program v1"), "{out}");
    // A path that matched nothing is warned of in the job's log, as GitLab's runner does; the
    // one that matched is not.
    assert!(
        out.contains(
            "[compile] forge: warning: artifacts: nothere/: no matching files (paths are relative to the job's working directory, /build)"
        ),
        "{out}"
    );
    assert_eq!(out.matches("no matching files").count(), 1, "{out}");
    // A job on one stage of an image's Dockerfile, and one on a registry image.
    assert!(out.contains("[stage-job] from the checker stage"), "{out}");
    assert!(
        out.contains("[registry-job] on the registry image"),
        "{out}"
    );
    // retry: two retries, then an allowed failure that does not fail the run.
    assert_eq!(lines_with(&out, "[flaky] trying").len(), 3, "{out}");
    assert!(out.contains("attempt 3 of 3"), "{out}");
    assert!(
        out.contains("job flaky: failed (allowed) (exit status 5)"),
        "{out}"
    );
    assert!(
        out.contains("job slow: failed (allowed) (timed out after 1s)"),
        "{out}"
    );
    // The summary lists them as allowed failures, not among the run's failed jobs.
    assert!(
        out.contains("  failed, allowed: flaky (exit status 5)")
            && !out.contains("  failed: flaky"),
        "{out}"
    );
    // No earlier rule-less run: `changes:` matches (forge cannot tell).
    assert!(out.contains("[docs] docs changed"), "{out}");
    assert!(
        out.contains("job cleanup: skipped: when: on_failure, and nothing failed before it"),
        "{out}"
    );
    // The deploy job sees the pushed image.
    let pushed = registry_digest(&runtime_tag).expect("runtime was pushed");
    assert!(
        out.contains(&format!("[deploy] deploying {runtime_tag} at {pushed}")),
        "{out}"
    );
    let meta_json: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    let runtime = meta_json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "runtime")
        .unwrap();
    assert_eq!(runtime["digest"], pushed.as_str(), "{meta_json}");
    assert_eq!(runtime["pushed"][0], runtime_tag.as_str(), "{meta_json}");
    let smoke = meta_json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "smoke")
        .unwrap();
    assert_eq!(smoke["result"], "passed", "{meta_json}");
    assert_eq!(meta_json["passed"], true);

    // A commit that changes src/ only: the docs rule no longer matches (compared with the commit
    // of the last passed run), and the runtime is rebuilt from the new program.
    fs::write(
        dir.join("src/prog.sh"),
        "#!/bin/sh\necho compiled program v2\n",
    )
    .unwrap();
    git(&["commit", "-q", "-am", "two"]);
    let o = forge_run(&dir, &root, &["run"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("job docs: skipped: no rule matched"), "{out}");
    assert!(out.contains("[smoke] compiled program v2"), "{out}");

    // `forge run smoke`: smoke and what it needs (compile, the two images), nothing else.
    let o = forge_run(&dir, &root, &["run", "smoke"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    let started: Vec<&str> = lines_with(&out, "job ")
        .into_iter()
        .filter(|l| l.ends_with(": started"))
        .collect();
    assert_eq!(
        started,
        ["job compile: started", "job smoke: started"],
        "{out}"
    );
    let pushed = registry_digest(&runtime_tag).expect("runtime is pushed");

    // A failing smoke job: the push is held, the on_failure job runs, `always` runs too.
    fs::write(dir.join("src/prog.sh"), "#!/bin/sh\necho broken; exit 9\n").unwrap();
    git(&["commit", "-q", "-am", "three"]);
    let o = forge_run(&dir, &root, &["run"], &[]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("[cleanup] cleaning up"), "{out}");
    assert!(out.contains("job deploy: passed"), "{out}");
    assert!(out.contains("image runtime: not pushed"), "{out}");
    assert_eq!(registry_digest(&runtime_tag), Some(pushed), "the tag moved");
}

/// A context for a redis image: redis-server and redis-cli from the host's Debian packages with
/// the libraries they load (read with ldd), on the busybox test image. No internet is needed.
fn redis_context(dir: &Path, busybox: &str) -> Option<()> {
    let server = forge_testsupport::tool("redis-server")?;
    let cli = forge_testsupport::tool("redis-cli")?;
    forge_testsupport::tool("ldd")?;
    let rootfs = dir.join("rootfs");
    for bin in [server, cli] {
        let ldd = String::from_utf8_lossy(&forge_testsupport::run(Command::new("ldd").arg(&bin)))
            .into_owned();
        let libs = ldd
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from);
        for file in std::iter::once(bin.clone()).chain(libs) {
            let dest = rootfs.join(file.strip_prefix("/").unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(&file, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        }
    }
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {busybox}\nCOPY rootfs/ /\nCMD [\"/usr/bin/redis-server\", \"--save\", \"\", \"--appendonly\", \"no\"]\n"
        ),
    )
    .unwrap();
    Some(())
}

/// Two jobs run at the same time, each with its own real redis server as a service on the same
/// port: each job reaches its own (a key one sets is never seen by the other), rootless. After
/// the run no redis process is left, and an unchanged rerun starts no service.
#[test]
fn jobs_with_a_database_service_each_get_their_own_on_the_same_port_rootless() {
    let Some(m) = machine() else { return };
    let Some(user) = forge_testsupport::test_user() else {
        return;
    };
    let ws = forge_testsupport::shared_scratch("forge-pipeline-services", Some(&user));
    let dir = ws.path().join("repo");
    fs::create_dir_all(dir.join("redis")).unwrap();
    if redis_context(&dir.join("redis"), &m.busybox).is_none() {
        return;
    }
    let mut jobs = String::new();
    // alpha reaches its service by name, beta by address.
    for (who, host) in [("alpha", "db"), ("beta", "127.0.0.1")] {
        jobs.push_str(&format!(
            r#"  {who}:
    image: redis
    services:
      - name: db
        image: redis
        ready:
          command: redis-cli -h 127.0.0.1 -p 6379 ping
          timeout: 30s
    script:
      - redis-cli -h {host} -p 6379 set owner {who}
      - sleep 2
      - test "$(redis-cli -h {host} -p 6379 get owner)" = {who}
      - echo "{who} saw its own database"
"#
        ));
    }
    fs::write(
        dir.join("forge.yaml"),
        format!("images:\n  redis:\n    context: redis\njobs:\n{jobs}"),
    )
    .unwrap();
    forge_testsupport::run(
        Command::new("chown")
            .args(["-R", &user.name])
            .arg(ws.path()),
    );
    let forge = forge_testsupport::install_exe(env!("CARGO_BIN_EXE_forge"), ws.path());
    let run = || {
        Command::new("runuser")
            .args(["-u", &user.name, "--", "env"])
            .arg(format!("FORGE_ROOT={}", ws.path().join("store").display()))
            .arg(&forge)
            .args(["run", "--jobs", "2"])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let o = run();
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    for who in ["alpha", "beta"] {
        assert!(
            out.contains(&format!("[{who}] {who} saw its own database")),
            "{out}"
        );
        assert!(
            out.contains(&format!("[{who}] forge: service db is ready")),
            "{out}"
        );
        assert!(
            out.contains(&format!("[{who}] [db] ")),
            "the service's output is not in the job's log:\n{out}"
        );
    }
    // Both ran at once: each was ready before the other finished.
    let ready = position(&out, "[alpha] forge: service db is ready")
        .max(position(&out, "[beta] forge: service db is ready"));
    let first_done = out
        .lines()
        .position(|l| l.starts_with("job alpha: passed") || l.starts_with("job beta: passed"))
        .unwrap();
    assert!(ready < first_done, "the two jobs did not overlap:\n{out}");
    // (A redis of the host's own, running as its own user, is not the test's business.)
    let ours: Vec<String> = processes_with("redis-server")
        .into_iter()
        .filter(|p| {
            let pid = p.split(':').next().unwrap();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse().ok())
                .unwrap_or(u32::MAX);
            uid == user.uid
                || (uid >= user.subuid.start && uid - user.subuid.start < user.subuid.count)
        })
        .collect();
    assert_eq!(ours, Vec::<String>::new(), "a service outlived its job");

    // Unchanged: the verdicts are reused, and no service starts.
    let o = run();
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("jobs 0 ran, 2 cached"), "{out}");
    assert!(
        !out.contains("[db]"),
        "a service started for a cached job:\n{out}"
    );
}

/// The same pipeline machinery through containerd: a job beside a service (busybox httpd) in their
/// shared network, its artifacts out, its verdict reused on the second run.
#[test]
fn a_pipeline_with_a_service_runs_through_containerd() {
    let Some(m) = machine() else { return };
    let Some(address) = forge_testsupport::containerd() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-pipeline-containerd");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("web")).unwrap();
    fs::write(
        dir.join("web/Dockerfile"),
        format!(
            "FROM {}\nRUN mkdir -p /www && echo pong > /www/index.html\n",
            m.busybox
        ),
    )
    .unwrap();
    fs::write(
        dir.join("forge.yaml"),
        r#"images:
  web:
    context: web
jobs:
  probe:
    image: web
    services:
      - name: httpd
        image: web
        command: ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]
        ready:
          command: wget -Y off -q -O /dev/null http://127.0.0.1:8080/
    script:
      # busybox wget ignores NO_PROXY: without -Y off it asks forge's proxy, which refuses loopback.
      - wget -Y off -q -O /tmp/got.txt http://127.0.0.1:8080/
      - cat /tmp/got.txt
    artifacts:
      paths: [/tmp/got.txt]
"#,
    )
    .unwrap();
    let address = address.to_string_lossy().into_owned();
    let args = [
        "run",
        "--runner",
        "containerd",
        "--containerd-address",
        &address,
    ];
    let o = forge_run(&dir, &root, &args, &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("[probe] pong"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("forge-artifacts/probe/tmp/got.txt")).unwrap(),
        "pong\n"
    );
    let o = forge_run(&dir, &root, &args, &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("jobs 0 ran, 1 cached"), "{out}");
}

/// A pipeline builds only from its own repository (here, no git: its directory): a context that
/// leads out with `..`, or through a symlink committed in the repository, fails that image's
/// build naming where it leads, and the job on it does not run; what lies inside builds.
#[test]
fn an_image_context_leading_out_of_the_repository_is_refused() {
    let Some(m) = machine() else { return };
    let ws = forge_testsupport::scratch("forge-pipeline-confined");
    let dir = ws.path().join("repo");
    let private = ws.path().join("private");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::create_dir_all(&private).unwrap();
    fs::write(private.join("secret.txt"), "HOST-PRIVATE-DATA\n").unwrap();
    let dockerfile = format!("FROM {}\nCOPY . /ctx/\n", m.busybox);
    fs::write(private.join("Dockerfile"), &dockerfile).unwrap();
    fs::write(dir.join("app/Dockerfile"), &dockerfile).unwrap();
    fs::write(dir.join("app/inside.txt"), "inside\n").unwrap();
    std::os::unix::fs::symlink(&private, dir.join("leak")).unwrap();
    for (context, leads) in [("../private", &private), ("leak", &private)] {
        fs::write(
            dir.join("forge.yaml"),
            format!(
                "images:\n  app:\n    context: {context}\njobs:\n  show:\n    image: app\n    script: [cat /ctx/secret.txt]\n"
            ),
        )
        .unwrap();
        let out = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
        let text = printed(&out);
        assert!(!out.status.success(), "{context}: {text}");
        let real = fs::canonicalize(leads).unwrap();
        assert!(
            text.contains(&format!(
                "the context `{context}` resolves to {}, outside",
                real.display()
            )) && text.contains("own repository"),
            "{context}: {text}"
        );
        assert!(!text.contains("HOST-PRIVATE-DATA"), "{context}: {text}");
    }
    fs::write(
        dir.join("forge.yaml"),
        "images:\n  app:\n    context: app\njobs:\n  show:\n    image: app\n    script: [cat /ctx/inside.txt]\n",
    )
    .unwrap();
    let out = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("inside"), "{text}");
}

/// W1 and W3 end to end, in the README's demo shape: `lint` fails, so the push of `app` is held
/// back and `deploy` (needs: [app, greet]) must not run with the reference of a tag that was
/// never pushed; `compile` fails, so `slim` (artifacts-from: [compile]) must be neither built
/// without its artifacts nor pushed.
#[test]
fn nothing_runs_on_a_push_held_back_or_builds_without_a_failed_jobs_artifacts() {
    let Some(m) = machine() else { return };
    let ws = forge_testsupport::scratch("forge-pipeline-held");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(
        dir.join("app/Dockerfile"),
        format!("FROM {}\nCOPY . /ctx/\n", m.busybox),
    )
    .unwrap();
    let repo = format!("held-{}", forge_testsupport::unique());
    let app = format!("{}/{repo}/app:v1", m.registry);
    let slim = format!("{}/{repo}/slim:v1", m.registry);
    fs::write(
        dir.join("forge.yaml"),
        format!(
            r#"images:
  app:
    context: app
    tags: ["{app}"]
    push: true
  slim:
    context: app
    artifacts-from: [compile]
    tags: ["{slim}"]
    push: true
    needs: []
jobs:
  compile:
    stage: build
    image: {busybox}
    script:
      - echo compiling; exit 2
    artifacts:
      paths: [bin/]
  lint:
    image: app
    needs: []
    script:
      - exit 3
  greet:
    image: app
    needs: []
    script:
      - echo hello
  deploy:
    stage: deploy
    image: {busybox}
    needs: [app, greet]
    script:
      - echo "DEPLOYING $FORGE_IMAGE_APP_REF"
"#,
            busybox = m.busybox
        ),
    )
    .unwrap();
    let o = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("image app: not pushed"), "{out}");
    assert!(
        out.contains("job deploy: skipped: push of app was held back"),
        "{out}"
    );
    assert!(!out.contains("DEPLOYING"), "{out}");
    assert!(
        out.contains("image slim: not built: compile failed before it"),
        "{out}"
    );
    assert!(!out.contains("image slim: building"), "{out}");
    assert_eq!(registry_digest(&app), None, "app was pushed");
    assert_eq!(registry_digest(&slim), None, "slim was pushed");
}

/// The monorepo of C9: two images from one Dockerfile, each with one test job whose `changes:`
/// globs cover its service and the shared files (not the Dockerfile). `test-a` fails when
/// services/a/main.txt lacks "a v".
fn write_monorepo(dir: &Path, m: &Machine, reg_repo: &str) {
    for (p, text) in [
        ("shared/lib.txt", "shared v1\n"),
        ("services/a/main.txt", "a v1\n"),
        ("services/b/main.txt", "b v1\n"),
    ] {
        let p = dir.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {} AS base\nCOPY shared /svc/shared\n\
             FROM base AS svc-a\nCOPY services/a /svc/\nRUN cat /svc/shared/lib.txt /svc/main.txt > /svc/out.txt\n\
             FROM base AS svc-b\nCOPY services/b /svc/\nRUN cat /svc/shared/lib.txt /svc/main.txt > /svc/out.txt\n",
            m.busybox
        ),
    )
    .unwrap();
    fs::write(dir.join(".gitignore"), "forge-artifacts/\n").unwrap();
    fs::write(
        dir.join("forge.yaml"),
        format!(
            r#"images:
  a: {{context: ., target: svc-a, tags: ["{reg_repo}/a:latest"], push: true}}
  b: {{context: ., target: svc-b, tags: ["{reg_repo}/b:latest"], push: true}}
jobs:
  test-a:
    image: a
    script: [cat /svc/out.txt, grep -q "a v" /svc/out.txt]
    rules:
      - changes: ["services/a/**", "shared/**"]
  test-b:
    image: b
    script: [cat /svc/out.txt]
    rules:
      - changes: ["services/b/**", "shared/**"]
"#
        ),
    )
    .unwrap();
}

/// Regression (C9): `forge run` builds from the work tree, but `changes:` compared commits only.
/// An uncommitted edit that broke service a rebuilt image a, skipped test-a ("no rule matched"),
/// pushed the broken image and recorded the run as passed, the next run's baseline. Now the work
/// tree's differences from HEAD are changes, and a run on a dirty tree is no baseline: a commit
/// whose breakage was only ever tested with a dirty fix on top is tested again, clean. And an
/// image pushed with every gating job skipped by rules says so on its line.
#[test]
fn a_dirty_work_tree_counts_as_changed_and_is_no_baseline() {
    let Some(m) = machine() else { return };
    let Some(_) = forge_testsupport::tool("git") else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-pipeline-dirty");
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(&dir).unwrap();
    let reg_repo = format!("{}/dirty-{}", m.registry, forge_testsupport::unique());
    write_monorepo(&dir, &m, &reg_repo);
    let (tag_a, tag_b) = (
        format!("{reg_repo}/a:latest"),
        format!("{reg_repo}/b:latest"),
    );
    git_in(&dir, &["init", "-q", "-b", "main"]);
    git_in(&dir, &["add", "."]);
    git_in(&dir, &["commit", "-q", "-m", "one"]);
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("job test-a: passed"), "{out}");
    let pushed_a = registry_digest(&tag_a).expect("a was pushed");

    // An uncommitted edit that breaks service a: test-a runs, fails, and holds the push.
    fs::write(dir.join("services/a/main.txt"), "broken\n").unwrap();
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("note: the work tree differs from HEAD in 1 file(s) (services/a/main.txt)"),
        "{out}"
    );
    assert!(out.contains("job test-a: failed"), "{out}");
    assert!(
        out.contains("job test-b: skipped: no rule matched"),
        "{out}"
    );
    assert!(out.contains("image a: not pushed"), "{out}");
    assert_eq!(
        registry_digest(&tag_a).as_deref(),
        Some(pushed_a.as_str()),
        "the tag moved"
    );
    // b was not rebuilt from anything new, and every job gating it was skipped: said.
    assert!(
        out.contains("image b: pushed untested: every job gating it was skipped by rules: test-b"),
        "{out}"
    );
    // An untracked file under a service counts as well; an ignored one does not.
    fs::write(dir.join("services/a/main.txt"), "a v1\n").unwrap();
    fs::create_dir_all(dir.join("forge-artifacts")).unwrap();
    fs::write(dir.join("forge-artifacts/x"), "ignored\n").unwrap();
    fs::write(dir.join("services/b/extra.txt"), "new\n").unwrap();
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("(services/b/extra.txt)"), "{out}");
    assert!(out.contains("job test-b: passed"), "{out}");
    assert!(
        out.contains("job test-a: skipped: no rule matched"),
        "{out}"
    );
    fs::remove_file(dir.join("services/b/extra.txt")).unwrap();

    // A commit that breaks a, run with a fix not yet committed on top: it passes, but tested the
    // fix, not the commit. Once the fix is dropped, the commit itself is tested, and fails.
    fs::write(dir.join("services/a/main.txt"), "broken\n").unwrap();
    git_in(&dir, &["commit", "-q", "-am", "break a"]);
    fs::write(dir.join("services/a/main.txt"), "a v2\n").unwrap();
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("job test-a: passed"), "{out}");
    git_in(&dir, &["checkout", "--", "services/a/main.txt"]);
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("job test-a: failed"), "{out}");
    assert!(out.contains("image a: not pushed"), "{out}");

    // A Dockerfile change no glob covers: both images rebuilt, both pushed untested, said.
    fs::write(dir.join("services/a/main.txt"), "a v3\n").unwrap();
    git_in(&dir, &["commit", "-q", "-am", "fix a"]);
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(o.status.success(), "{}", printed(&o));
    let df = fs::read_to_string(dir.join("Dockerfile")).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        df.replace(
            "> /svc/out.txt",
            "> /svc/out.txt && echo rebuilt >> /svc/out.txt",
        ),
    )
    .unwrap();
    git_in(&dir, &["commit", "-q", "-am", "dockerfile"]);
    let o = forge_run(&dir, &root, &["run", "--progress", "plain"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("note: the work tree differs"), "{out}");
    for (image, job) in [("a", "test-a"), ("b", "test-b")] {
        assert!(
            out.contains(&format!(
                "image {image}: pushed untested: every job gating it was skipped by rules: {job}"
            )),
            "{out}"
        );
    }
    assert!(registry_digest(&tag_b).is_some());
    // `forge history` marks the runs made on a dirty tree, and says what the mark means.
    let file = dir.join("forge.yaml");
    let o = common::forge(&root, &["history", "-f", &file.to_string_lossy()]);
    let listed = printed(&o);
    assert!(o.status.success(), "{listed}");
    let marked = listed
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.ends_with('+'))
        })
        .count();
    assert!(marked >= 1, "{listed}");
    assert!(
        marked < listed.lines().count() - 2,
        "every run is marked: {listed}"
    );
    assert!(
        listed.contains("+: run on a work tree that differed from its commit"),
        "{listed}"
    );
}

/// Regression (C9): `--changed-since HEAD~1` in a `git clone --depth 1` failed with gix's
/// internals, and a full sha beyond the cut with "couldn't parse revision". As GitLab does when
/// it cannot find the commit to compare with, every `changes:` rule matches, with a warning
/// naming the revision, the shallow clone, and how to fetch the history.
#[test]
fn a_revision_beyond_a_shallow_clones_cut_makes_changes_rules_match() {
    let Some(m) = machine() else { return };
    let Some(_) = forge_testsupport::tool("git") else {
        return;
    };
    let (ws, origin, root) = small_workspace(
        &m,
        "forge-pipeline-shallow",
        "jobs:\n  docs:\n    image: app\n    script: [echo docs job ran]\n    rules:\n      - changes: [docs/**]\n",
    );
    fs::create_dir_all(origin.join("docs")).unwrap();
    fs::write(origin.join("docs/index.md"), "v1\n").unwrap();
    git_in(&origin, &["init", "-q", "-b", "main"]);
    git_in(&origin, &["add", "."]);
    git_in(&origin, &["commit", "-q", "-m", "one"]);
    let first = git_in(&origin, &["rev-parse", "HEAD"]);
    fs::write(
        origin.join("app/Dockerfile"),
        format!("FROM {}\nWORKDIR /w2\n", m.busybox),
    )
    .unwrap();
    git_in(&origin, &["commit", "-q", "-am", "two"]);
    let url = format!("file://{}", origin.display());
    git_in(ws.path(), &["clone", "-q", "--depth", "1", &url, "shallow"]);
    let shallow = ws.path().join("shallow");
    for rev in ["HEAD~1", first.as_str()] {
        let o = forge_run(
            &shallow,
            &root,
            &["run", "--progress", "plain", "--changed-since", rev],
            &[],
        );
        let out = printed(&o);
        assert!(o.status.success(), "{rev}: {out}");
        assert!(
            out.contains(&format!(
                "warning: --changed-since {rev}: not in the history of this shallow clone"
            )),
            "{out}"
        );
        for hint in ["GIT_DEPTH: 0", "fetch-depth: 0", "git fetch --deepen"] {
            assert!(out.contains(hint), "{hint}: {out}");
        }
        assert!(out.contains("job docs: passed"), "{out}");
    }
    // In the full history the same revision is compared with: docs/ did not change.
    let o = forge_run(
        &origin,
        &root,
        &["run", "--progress", "plain", "--changed-since", "HEAD~1"],
        &[],
    );
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("job docs: skipped: no rule matched"), "{out}");
    assert!(!out.contains("shallow"), "{out}");
}
