//! Upload sessions a pushed build opens in a real registry (Debian's Distribution, a private one
//! per test, whose storage and access log the test reads): the layers sent while their steps
//! write them, the sessions opened ahead for the blob after each layer, the config's. Whatever a
//! build opened is committed or given up by the time it ends, whether the registry lacked the
//! blobs (a first push), had them all (the same image built again without the cache), or the
//! build failed after a layer had left.

mod common;

use std::path::Path;

use common::{forge, printed};
use forge_testsupport::{PrivateRegistry, Served, private_registry};

/// How many sessions the registry opened in `repository` (`POST`, 202), and the session ids of
/// the commits (`PUT`, 201) and cancellations (`DELETE`, 204) that ended one, from `served`.
fn sessions(served: &[Served], repository: &str) -> (usize, Vec<String>, Vec<String>) {
    let prefix = format!("/v2/{repository}/blobs/uploads/");
    let id = |s: &Served| {
        let rest = s.path.strip_prefix(&prefix)?;
        Some(rest.split('?').next().unwrap_or_default().to_string())
    };
    let opened = served
        .iter()
        .filter(|s| s.method == "POST" && s.status == 202)
        .filter(|s| id(s).is_some_and(|i| i.is_empty()))
        .count();
    let ended = |method: &str, status: u16| -> Vec<String> {
        served
            .iter()
            .filter(|s| s.method == method && s.status == status)
            .filter_map(id)
            .filter(|i| !i.is_empty())
            .collect()
    };
    (opened, ended("PUT", 201), ended("DELETE", 204))
}

/// Builds `ctx` with SOURCE_DATE_EPOCH and pushes it as `reference`; the manifest digest it
/// printed.
fn pushed_build(root: &Path, ctx: &Path, reference: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "-t",
        reference,
        "--push",
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let out = forge(root, &args);
    assert!(out.status.success(), "{}", printed(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .rfind(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest printed:\n{}", printed(&out)))
        .to_string()
}

/// Every session the build opened in `repository` since `mark` ended: committed or deleted,
/// each once, and none is left in the registry's storage.
fn assert_every_session_ended(registry: &PrivateRegistry, repository: &str, mark: usize) {
    let served = registry.served();
    let (opened, committed, deleted) = sessions(&served[mark..], repository);
    assert!(opened > 0, "no session was opened: {served:#?}");
    assert_eq!(
        opened,
        committed.len() + deleted.len(),
        "sessions opened and ended differ: {:#?}",
        &served[mark..]
    );
    let mut ids: Vec<&String> = committed.iter().chain(&deleted).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        committed.len() + deleted.len(),
        "a session ended twice"
    );
    assert_eq!(
        registry.open_uploads(repository),
        Vec::<String>::new(),
        "sessions left open in the registry: {:#?}",
        &served[mark..]
    );
}

/// A private registry, and a context (`ctx.txt` and the Dockerfile `dockerfile` makes of the
/// busybox base's name) to push `app:1` from; `None` after a SKIP line when a prerequisite is
/// missing.
struct World {
    registry: PrivateRegistry,
    dir: tempfile::TempDir,
    ctx: std::path::PathBuf,
    reference: String,
}

impl World {
    fn new(dockerfile: impl Fn(&str) -> String) -> Option<World> {
        if !forge_testsupport::root_and_busybox("pushed builds run RUN steps") {
            return None;
        }
        let busybox = forge_testsupport::busybox_image()?;
        let registry = private_registry()?;
        let dir = forge_testsupport::scratch("forge-push-sessions-");
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("ctx.txt"), "from the context\n").unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile(&busybox)).unwrap();
        let reference = format!("{}/app:1", registry.addr);
        Some(World {
            registry,
            dir,
            ctx,
            reference,
        })
    }
}

#[test]
fn a_pushed_build_leaves_no_upload_session_open_first_push_or_repeated() {
    // Three layers of the image's own: two steps' and a copy from another stage.
    let Some(w) = World::new(|busybox| {
        format!(
            "FROM {busybox} AS one\nRUN echo one > /one\n\
             FROM {busybox}\nCOPY --from=one /one /one\nRUN echo two > /two\nCOPY ctx.txt /ctx.txt\n"
        )
    }) else {
        return;
    };
    let (registry, ctx, reference) = (&w.registry, &w.ctx, &w.reference);
    let root = w.dir.path().join("root");

    let first = pushed_build(&root, ctx, reference, &[]);
    assert_every_session_ended(registry, "app", 0);
    let (_, committed, _) = sessions(&registry.served(), "app");
    // The three layers and the config were uploaded (the base's layer was mounted or sent).
    assert!(committed.len() >= 4, "{:#?}", registry.served());

    // The same image again, every step run: its layers are sent again as they are written and
    // the blob after each gets a session ahead; the config, made by this build, goes through
    // the last of them without a check first, though the registry has it (the same bytes).
    let mark = registry.served().len();
    let again = pushed_build(&root, ctx, reference, &["--no-cache"]);
    assert_eq!(
        again, first,
        "the same SOURCE_DATE_EPOCH build is the same image"
    );
    assert_every_session_ended(registry, "app", mark);
    let config = common::registry_manifest(&registry.addr, "app", "1")["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let served = registry.served();
    let asked: Vec<&Served> = served[mark..]
        .iter()
        .filter(|s| s.method == "HEAD" && s.path.ends_with(&config))
        .collect();
    assert!(asked.is_empty(), "the config was checked for: {asked:#?}");
}

#[test]
fn a_build_that_fails_after_a_layer_left_leaves_no_upload_session_open() {
    // The copy's layer leaves (and the session for the blob after it is opened) while the step
    // after it runs and fails.
    let Some(w) = World::new(|busybox| {
        format!("FROM {busybox}\nCOPY ctx.txt /ctx.txt\nRUN sleep 0.3; false\n")
    }) else {
        return;
    };
    let (registry, ctx, reference) = (&w.registry, &w.ctx, &w.reference);
    let out = forge(
        &w.dir.path().join("root"),
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            reference,
            "--push",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not complete successfully"),
        "{}",
        printed(&out)
    );
    let served = registry.served();
    let (opened, committed, deleted) = sessions(&served, "app");
    assert!(opened >= 2, "no session was opened ahead: {served:#?}");
    assert_eq!(
        committed.len(),
        1,
        "the copy's layer was not sent: {served:#?}"
    );
    assert_eq!(opened, committed.len() + deleted.len(), "{served:#?}");
    assert_eq!(
        registry.open_uploads("app"),
        Vec::<String>::new(),
        "{served:#?}"
    );
    assert!(
        !served
            .iter()
            .any(|s| s.path.starts_with("/v2/app/manifests/")),
        "a failed build pushed a manifest: {served:#?}"
    );
}

#[test]
fn a_cold_pushed_build_opens_its_sessions_while_its_first_step_runs() {
    // A new store: both layers of the image's own (the step's, the copy's) will be made, so
    // their sessions and the config's are opened as the build starts, not as each layer starts.
    let Some(w) = World::new(|busybox| {
        format!("FROM {busybox}\nRUN sleep 3 && echo one > /one\nCOPY ctx.txt /ctx.txt\n")
    }) else {
        return;
    };
    let (registry, ctx, reference) = (&w.registry, &w.ctx, &w.reference);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--progress", "json", "-t", reference, "--push"])
        .arg(ctx)
        .arg("--root")
        .arg(w.dir.path().join("root"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    let step_started = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|e| {
            e["type"] == "vertex.started"
                && e["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("sleep 3"))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if step_started(&line) => break,
            Ok(_) => {}
            Err(e) => panic!("the step never started ({e}): {:#?}", registry.served()),
        }
    }
    // Within 2 s of the step's start (it sleeps 3): three sessions open, nothing committed.
    let asked = std::time::Instant::now();
    let mut served = registry.served();
    while sessions(&served, "app").0 < 3 && asked.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        served = registry.served();
    }
    let (opened, committed, _) = sessions(&served, "app");
    assert!(
        opened >= 3,
        "sessions not opened while the step ran: {served:#?}"
    );
    assert!(committed.is_empty(), "{served:#?}");
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(status.success(), "{}", lines.join("\n"));
    assert_every_session_ended(registry, "app", 0);
    // Each session opened ahead served a blob: none was given up.
    let (_, _, deleted) = sessions(&registry.served(), "app");
    assert!(deleted.is_empty(), "{:#?}", registry.served());
}
