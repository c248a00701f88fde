//! The build API as a pipeline or a server calls it: `Session::build` on a real store with the
//! embedded runner, no registry (every Dockerfile starts `FROM scratch` and copies the host's static
//! busybox from the context). Needs root; skips without it (fails under FORGE_E2E=require).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use forge_builder::api::{
    BuildFailure, BuildOutcome, BuildRequest, RunnerChoice, Session, SessionOptions, VertexReport,
};
use forge_builder::events::{BuildEvent, BuildId, EventRecord, Events};
use forge_builder::solver::{CancellationToken, Event};
use forge_snapshotter::compress::decompressor;
use forge_testsupport::Context;

/// Root and a static busybox, or `false` after a SKIP line; a panic under FORGE_E2E=require.
fn prerequisites() -> bool {
    forge_testsupport::root_and_busybox("RUN steps with the embedded runner")
}

/// A context directory with busybox, a Dockerfile and the given files (modes set explicitly, so a
/// checkout's umask cannot change a digest).
fn context(dir: &Path, dockerfile: &str, files: &[(&str, &str, u32)]) -> PathBuf {
    let ctx = Context::busybox(dir).dockerfile(dockerfile);
    files
        .iter()
        .fold(ctx, |ctx, (name, text, mode)| {
            ctx.file(name, text).mode(name, *mode)
        })
        .into_path()
}

fn session(root: &Path) -> Session {
    Session::open(SessionOptions {
        root: root.to_path_buf(),
        insecure_registries: Vec::new(),
        runner: RunnerChoice::Embedded,
        ..SessionOptions::default()
    })
    .expect("session opens")
}

/// The descriptions of the steps that ran to success.
fn ran(vertices: &[VertexReport]) -> Vec<&str> {
    vertices
        .iter()
        .filter(|v| v.ran())
        .map(|v| v.description.as_str())
        .collect()
}

/// Runs one build, collecting its events.
async fn build(
    session: &Session,
    request: BuildRequest,
) -> (Result<BuildOutcome, BuildFailure>, Vec<EventRecord>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = Events::new(BuildId::new(), Some(tx));
    let result = session
        .build(&request, events, CancellationToken::new())
        .await;
    let mut got = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        got.push(ev);
    }
    (result, got)
}

/// The files (path -> content; symlinks as `-> target`) of every layer of the image, in order.
fn image_files(session: &Session, outcome: &BuildOutcome) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for layer in &outcome.record.layers {
        let blob = session.store().open_blob(&layer.digest).unwrap();
        let reader = decompressor(std::io::BufReader::new(blob), &layer.media_type).unwrap();
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let value = match entry.header().entry_type() {
                tar::EntryType::Symlink => {
                    format!("-> {}", entry.link_name().unwrap().unwrap().display())
                }
                tar::EntryType::Regular => {
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).unwrap();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => continue,
            };
            files.insert(path, value);
        }
    }
    files
}

fn starts_and_ends(events: &[EventRecord]) -> (std::time::SystemTime, std::time::SystemTime) {
    let runs: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                BuildEvent::Solver(Event::Started { ref description, .. }
                    | Event::Done { ref description, .. }) if description.contains("RUN")
            )
        })
        .map(|e| e.time)
        .collect();
    assert_eq!(runs.len(), 2, "one RUN started and done");
    (runs[0], runs[1])
}

/// Issue 10: a server runs several builds at once in one process on one store. Two different
/// builds, each with a step that takes a second, run concurrently through one session; both images
/// are right, each build's events carry only its own id, their steps overlapped in time, and no
/// scratch space is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_builds_run_at_once_in_one_process_on_one_store() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let a = context(
        &tmp.path().join("a"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 1; echo from-a > /a.txt\"]\n\
         COPY a-file /a-file\n",
        &[("a-file", "context of a\n", 0o644)],
    );
    let b = context(
        &tmp.path().join("b"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 1; echo from-b > /b.txt\"]\n\
         COPY b-file /b-file\n",
        &[("b-file", "context of b\n", 0o644)],
    );
    let session = session(&root);
    let mut ra = BuildRequest::new(&a);
    ra.tags = vec!["127.0.0.1:5000/forge-test/api-a:1".into()];
    let mut rb = BuildRequest::new(&b);
    rb.tags = vec!["127.0.0.1:5000/forge-test/api-b:1".into()];
    // Each build is its own task, as a server spawns them: the future is Send and owns its session.
    let (sa, sb) = (session.clone(), session.clone());
    let ta = tokio::spawn(async move { build(&sa, ra).await });
    let tb = tokio::spawn(async move { build(&sb, rb).await });
    let ((oa, ea), (ob, eb)) = (ta.await.unwrap(), tb.await.unwrap());
    let oa = oa.unwrap_or_else(|f| panic!("build a: {f}"));
    let ob = ob.unwrap_or_else(|f| panic!("build b: {f}"));
    assert_ne!(oa.build, ob.build);
    assert_ne!(oa.digest, ob.digest);

    let fa = image_files(&session, &oa);
    let fb = image_files(&session, &ob);
    assert_eq!(fa.get("a.txt").map(String::as_str), Some("from-a\n"));
    assert_eq!(fa.get("a-file").map(String::as_str), Some("context of a\n"));
    assert!(
        !fa.contains_key("b.txt") && !fa.contains_key("b-file"),
        "{fa:?}"
    );
    assert_eq!(fb.get("b.txt").map(String::as_str), Some("from-b\n"));
    assert_eq!(fb.get("b-file").map(String::as_str), Some("context of b\n"));
    assert!(
        !fb.contains_key("a.txt") && !fb.contains_key("a-file"),
        "{fb:?}"
    );

    // Both recorded in the store under their names.
    for (name, outcome) in [("api-a", &oa), ("api-b", &ob)] {
        let rec = session
            .store()
            .get_image(&format!("127.0.0.1:5000/forge-test/{name}:1"))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} recorded"));
        assert_eq!(rec.manifest.digest.to_string(), outcome.digest);
    }

    assert!(ea.iter().all(|e| e.build == oa.build), "a's events are a's");
    assert!(eb.iter().all(|e| e.build == ob.build), "b's events are b's");
    let (a_start, a_end) = starts_and_ends(&ea);
    let (b_start, b_end) = starts_and_ends(&eb);
    assert!(
        a_start < b_end && b_start < a_end,
        "the two RUN steps overlapped in time"
    );
    for (o, file) in [(&oa, "COPY a-file"), (&ob, "COPY b-file")] {
        assert!(
            o.vertices
                .iter()
                .any(|v| v.ran() && v.description.contains(file)),
            "{:?}",
            o.vertices
        );
    }

    let leftovers: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "scratch space left: {leftovers:?}");
}

/// The digest `forge build` gave for testdata/pinned with SOURCE_DATE_EPOCH=1700000000 before the
/// build API existed (commit 60f7b75, `forge build -q --root R testdata/pinned` with the host's
/// busybox copied in; layers kept in the store as zstd level 1). The API must build the same bytes.
/// If a dependency upgrade changes the compressor's output this changes too: rebuild with the old
/// binary to tell the two apart.
const PINNED_DIGEST: &str =
    "sha256:58621cd33eb144e7330c6901c65e886a25fb406378135a366fcd4d388d1bf9f9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_image_has_the_digest_it_had_before_the_build_api() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pinned");
    let ctx = context(
        &tmp.path().join("ctx"),
        &std::fs::read_to_string(fixture.join("Dockerfile")).unwrap(),
        &[
            (
                "app.txt",
                &std::fs::read_to_string(fixture.join("app.txt")).unwrap(),
                0o644,
            ),
            (
                "run.sh",
                &std::fs::read_to_string(fixture.join("run.sh")).unwrap(),
                0o644,
            ),
        ],
    );
    let session = session(&tmp.path().join("store"));
    let mut request = BuildRequest::new(&ctx);
    request.source_date_epoch = Some(1_700_000_000);
    let (outcome, _) = build(&session, request.clone()).await;
    let outcome = outcome.unwrap_or_else(|f| panic!("build: {f}"));
    assert_eq!(outcome.digest, PINNED_DIGEST);
    // And again from the cache: the same bytes.
    let (again, _) = build(&session, request).await;
    let again = again.unwrap_or_else(|f| panic!("cached build: {f}"));
    assert_eq!(again.digest, PINNED_DIGEST);
    assert_eq!(again.executed(), 0, "{:?}", again.vertices);
}

/// A failed build returns the error and what was solved before it; a dead build's scratch space
/// (no lock held) is removed by the next build, while nothing of the failed one is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_reports_what_it_solved_and_dead_scratch_is_swept() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let dead = root.join("tmp/build-00000000deadbeef/download");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("partial"), b"half a file").unwrap();
    let ctx = context(
        &tmp.path().join("ctx"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY f /f\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo the last words; exit 3\"]\n",
        &[("f", "x\n", 0o644)],
    );
    let session = session(&root);
    let (result, events) = build(&session, BuildRequest::new(&ctx)).await;
    let failure = result.expect_err("the RUN exits 3");
    assert_eq!(
        failure.error.failed_step_tail(),
        Some(&["the last words".to_string()][..])
    );
    let done = ran(&failure.vertices);
    assert!(
        done.iter().any(|d| d.contains("COPY f /f")),
        "the COPY before the failure is reported solved: {:?}",
        failure.vertices
    );
    assert!(
        failure
            .vertices
            .iter()
            .any(|v| v.error.is_some() && v.description.contains("RUN")),
        "{:?}",
        failure.vertices
    );
    assert!(events.iter().all(|e| e.build == failure.build));
    assert!(
        !root.join("tmp/build-00000000deadbeef").exists(),
        "the dead build's scratch space was swept"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "scratch space left: {leftovers:?}");
}

/// A context under `tmp` whose Dockerfile makes two layers, each a COPY: busybox, then a file `f`
/// holding `text`.
fn two_copies(tmp: &Path, text: &str) -> PathBuf {
    context(
        &tmp.join("ctx"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY f /f\n",
        &[("f", text, 0o644)],
    )
}

/// A build's new steps are kept by roots (so a prune spares their blobs) whether the build ends
/// well, when they are recorded in the same commit as its image, or fails after its solve (here
/// its OCI tar cannot be written), when they are recorded on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_build_solved_is_kept_whether_its_export_fails_or_not() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = two_copies(tmp.path(), "kept\n");
    // Each blob the steps' roots hold, with how many of them hold it.
    let held = |session: &Session| -> BTreeMap<forge_snapshotter::store::Digest, u64> {
        let mut held = BTreeMap::new();
        for (_, digests) in session.store().roots("build-cache").unwrap() {
            for d in digests {
                *held.entry(d).or_insert(0) += 1;
            }
        }
        held
    };

    let failing = session(&tmp.path().join("failing"));
    let mut request = BuildRequest::new(&ctx);
    request.exports = vec![forge_builder::api::Export::OciTar(
        tmp.path().join("no-such-dir/image.tar"),
    )];
    let (result, _) = build(&failing, request).await;
    let failure = result.expect_err("the tar's directory does not exist");
    assert!(
        failure.error.to_string().contains("no-such-dir"),
        "{}",
        failure.error
    );
    let kept = held(&failing);
    assert_eq!(kept.len(), 2, "one layer per COPY: {kept:?}");
    for (d, roots) in &kept {
        assert!(failing.store().has_blob(d));
        assert_eq!(failing.store().refcount(d).unwrap(), *roots, "{d}");
    }
    assert!(failing.store().list_images().unwrap().is_empty());
    assert!(failing.store().check().unwrap().is_clean());

    let ok = session(&tmp.path().join("ok"));
    let mut request = BuildRequest::new(&ctx);
    request.tags = vec!["kept:latest".into()];
    let (result, _) = build(&ok, request).await;
    let outcome = result.unwrap_or_else(|f| panic!("{f}"));
    let kept = held(&ok);
    assert_eq!(kept.len(), 2, "one layer per COPY: {kept:?}");
    let images = ok.store().list_images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].manifest.digest.to_string(), outcome.digest);
    // Each layer is held by the steps' roots and by the image.
    for (d, roots) in &kept {
        assert!(images[0].layers.iter().any(|l| l.digest == *d), "{d}");
        assert_eq!(ok.store().refcount(d).unwrap(), roots + 1, "{d}");
    }
    assert!(ok.store().check().unwrap().is_clean());
}

/// `ADD <url>` through a build: the build's HTTP client is made at its first download (a build
/// without one never reads the trusted roots), and the file it fetches from a loopback server
/// lands in the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_of_a_url_puts_the_download_in_the_image() {
    use std::io::Write;
    if !prerequisites() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = b"fetched over http\n";
            let ok = head.starts_with(b"GET /tool.txt ");
            if ok {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let status = if ok { "200 OK" } else { "404 Not Found" };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(if ok { body } else { b"" });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("ctx"),
        &format!("FROM scratch\nADD http://127.0.0.1:{port}/tool.txt /opt/tool.txt\n"),
        &[],
    );
    let session = session(&tmp.path().join("store"));
    let (result, _) = build(&session, BuildRequest::new(&ctx)).await;
    let outcome = result.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        image_files(&session, &outcome)
            .get("opt/tool.txt")
            .map(String::as_str),
        Some("fetched over http\n")
    );
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// The isolation a session leaves to its first step is probed for only where it decides something:
/// when a new store's snapshot backend is chosen (on a thread of its own, by the time the
/// snapshotter opens), and when a step runs. A session on a store made before, whose builds run no
/// step, never probes (the probe's forks, namespaces and mounts cost a rebuild served from the
/// cache more than a millisecond); its first RUN step does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isolation_is_probed_for_when_a_step_first_needs_it() {
    use forge_builder::api::{DeferredIsolation, IsolationChoice};
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let open = || {
        Session::open(SessionOptions {
            root: store.clone(),
            runner: RunnerChoice::Embedded,
            isolation: DeferredIsolation::probing(IsolationChoice::Auto, store.join("run")),
            ..SessionOptions::default()
        })
        .expect("session opens")
    };
    let first = open();
    first
        .snapshots()
        .expect("the new store's snapshotter opens");
    assert!(
        first.isolation().chosen().is_some(),
        "a new store's backend depends on it"
    );

    let session = open();
    assert!(session.isolation().chosen().is_none());
    let copies = two_copies(tmp.path(), "no step\n");
    let (result, _) = build(&session, BuildRequest::new(&copies)).await;
    result.unwrap_or_else(|f| panic!("{f}"));
    assert!(
        session.isolation().chosen().is_none(),
        "a build without a step does not probe"
    );

    let ctx = context(
        &tmp.path().join("run-ctx"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/ran\"]\n",
        &[],
    );
    let (result, _) = build(&session, BuildRequest::new(&ctx)).await;
    let outcome = result.unwrap_or_else(|f| panic!("{f}"));
    assert!(image_files(&session, &outcome).contains_key("ran"));
    let chosen = session
        .isolation()
        .chosen()
        .expect("the step had it probed for");
    assert_eq!(chosen, first.isolation().chosen().unwrap());
}

/// A request that builds `ctx` and pushes it as `name`.
fn pushed(ctx: &Path, name: &str) -> BuildRequest {
    let mut request = BuildRequest::new(ctx);
    request.tags = vec![name.to_string()];
    request.exports = vec![forge_builder::api::Export::Image {
        push: true,
        oci_mediatypes: true,
    }];
    request
}

/// A push that fails (nothing listens at the registry's port) fails the build, and leaves the
/// image recorded in the store under its name all the same, with its steps' roots: `forge push`
/// can send it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_leaves_the_image_recorded() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = two_copies(tmp.path(), "pushed later\n");
    // A loopback port nothing listens at: one the system handed out, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("127.0.0.1:{port}/forge-test/later:1");
    let session = session(&tmp.path().join("store"));
    let (result, _) = build(&session, pushed(&ctx, &name)).await;
    let failure = result.expect_err("nothing listens at the registry");
    assert!(
        failure.error.to_string().contains(&port.to_string()),
        "{}",
        failure.error
    );
    let images = session.store().list_images().unwrap();
    assert_eq!(
        images
            .iter()
            .map(|i| i.reference.as_str())
            .collect::<Vec<_>>(),
        [name.as_str()]
    );
    for layer in &images[0].layers {
        assert!(session.store().has_blob(&layer.digest));
    }
    assert_eq!(session.store().roots("build-cache").unwrap().len(), 2);
    assert!(session.store().check().unwrap().is_clean());
}

/// Issue 16: the layers a pushed build makes leave while their steps write them. Each of the
/// image's two new layers (a COPY and a RUN that writes 6 MB of noise, more than one upload piece)
/// is reported once, as sent by the upload that followed it, and the push after the build neither
/// checks nor sends it again (no `exists`, no progress for it). skopeo, the independent judge,
/// reads the image at the tag with the digest forge printed and copies every blob, checking each
/// one's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_layers_leave_while_their_steps_write_them() {
    if !prerequisites() {
        return;
    }
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let Some(skopeo) = forge_testsupport::tool("skopeo") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("ctx"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox head -c 6000000 /dev/urandom > /noise\"]\n",
        &[],
    );
    let name = format!(
        "{registry}/forge-test/early:{}",
        forge_testsupport::unique()
    );
    let session = session(&tmp.path().join("store"));
    let (result, events) = build(&session, pushed(&ctx, &name)).await;
    let outcome = result.unwrap_or_else(|f| panic!("{}", f.error));
    let layers: Vec<String> = outcome
        .record
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    assert_eq!(layers.len(), 2);
    use forge_snapshotter::registry::PushEvent;
    let pushed: Vec<&PushEvent> = events
        .iter()
        .filter_map(|e| match &e.event {
            BuildEvent::Push { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    for layer in &layers {
        let about = |e: &&&PushEvent| match e {
            PushEvent::Streamed { digest, .. }
            | PushEvent::Uploaded { digest, .. }
            | PushEvent::Exists { digest, .. }
            | PushEvent::Uploading { digest, .. }
            | PushEvent::Mounted { digest, .. } => digest.to_string() == *layer,
            _ => false,
        };
        let mine: Vec<&&PushEvent> = pushed.iter().filter(about).collect();
        assert!(
            matches!(mine.as_slice(), [PushEvent::Streamed { .. }]),
            "layer {layer}: {mine:#?}"
        );
    }
    assert!(
        !pushed
            .iter()
            .any(|e| matches!(e, PushEvent::Retrying { .. })),
        "{pushed:#?}"
    );
    let judge = |args: &[&str]| {
        let out = std::process::Command::new(&skopeo)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "skopeo {args:?}: {err}");
        out.stdout
    };
    let source = format!("docker://{name}");
    let inspected: serde_json::Value =
        serde_json::from_slice(&judge(&["inspect", "--tls-verify=false", &source])).unwrap();
    assert_eq!(inspected["Digest"].as_str(), Some(outcome.digest.as_str()));
    let copy = format!("oci:{}:x", tmp.path().join("copied").display());
    judge(&["copy", "--src-tls-verify=false", &source, &copy]);
    assert!(session.store().check().unwrap().is_clean());
}

/// The compression of each blob the store holds, by its magic bytes.
fn stored_codecs(session: &Session) -> BTreeMap<String, &'static str> {
    let probe: forge_snapshotter::store::Digest =
        format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let dir = session.store().blob_path(&probe);
    let mut codecs = BTreeMap::new();
    for entry in std::fs::read_dir(dir.parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(&path)
            .unwrap()
            .read(&mut magic)
            .unwrap();
        let codec = match &magic[..n] {
            [0x1f, 0x8b, ..] => "gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
            _ => "other",
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        codecs.insert(format!("sha256:{name}"), codec);
    }
    codecs
}

/// A context whose Dockerfile has a builder stage (busybox copied in, `script` run, writing /out)
/// and a final stage that copies /out from it.
fn two_stages(tmp: &Path, script: &str) -> PathBuf {
    let dockerfile = format!(
        "FROM scratch AS build\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n\n\
         FROM scratch\nCOPY --from=build /out /out\n"
    );
    context(&tmp.join("ctx"), &dockerfile, &[])
}

/// A reproducible build of `target` (`None`: the final stage).
fn stage_request(ctx: &Path, target: Option<&str>) -> BuildRequest {
    let mut r = BuildRequest::new(ctx);
    r.source_date_epoch = Some(1_700_000_000);
    r.target = target.map(String::from);
    r
}

/// [`stage_request`] tagged `PREFIX-TARGET:latest` (`final` for the final stage).
fn tagged_stage(ctx: &Path, prefix: &str, target: Option<&str>) -> BuildRequest {
    let mut r = stage_request(ctx, target);
    r.tags = vec![format!("{prefix}-{}:latest", target.unwrap_or("final"))];
    r
}

/// The outcome of `request` in an empty store under `tmp` (`fresh-store`).
async fn fresh_build(tmp: &Path, request: BuildRequest) -> BuildOutcome {
    let fresh_session = session(&tmp.join("fresh-store"));
    let (fresh, _) = build(&fresh_session, request).await;
    fresh.unwrap_or_else(|f| panic!("stage in an empty store: {f}"))
}

/// Issue 16: a build whose image leaves the store (here an OCI tar, gzip) writes the target's own
/// layers in gzip at once, and a builder stage's layers not at all: its snapshots are kept, as
/// BuildKit keeps lazy refs. Built later as the target itself, that stage's cached layers are
/// written from their snapshots on the way out into the very bytes a fresh store writes, so the
/// image has one digest either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_layers_that_leave_are_written_in_the_exported_compression() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = two_stages(tmp.path(), "/bin/busybox seq 1 200000 > /out");
    let export = |name: &str, target: Option<&str>| {
        let mut r = stage_request(&ctx, target);
        r.exports = vec![forge_builder::api::Export::OciTar(
            tmp.path().join(format!("{name}.tar")),
        )];
        r
    };
    let session = session(&tmp.path().join("store"));
    let (outcome, _) = build(&session, export("final", None)).await;
    let outcome = outcome.unwrap_or_else(|f| panic!("build: {f}"));
    let codecs = stored_codecs(&session);
    let exported: Vec<_> = outcome
        .record
        .layers
        .iter()
        .map(|l| (l.media_type.clone(), codecs[&l.digest.to_string()]))
        .collect();
    assert_eq!(
        exported,
        [(
            "application/vnd.oci.image.layer.v1.tar+gzip".to_string(),
            "gzip"
        )],
        "the image's one layer (the COPY --from) is gzip"
    );
    let layer_blobs = codecs.values().filter(|c| **c != "other").count();
    assert_eq!(
        layer_blobs, 1,
        "the build stage's two layers (COPY busybox, RUN) were kept as snapshots, not written: \
         {codecs:?}"
    );

    // The build stage as the target: from this store's cache (its layers written from their
    // snapshots now), and from an empty store (gzip written by the steps themselves).
    let (cached, events) = build(&session, export("stage-cached", Some("build"))).await;
    let cached = cached.unwrap_or_else(|f| panic!("stage from the cache: {f}"));
    assert_eq!(cached.executed(), 0, "{:?}", cached.vertices);
    assert!(
        events.iter().any(|e| matches!(&e.event,
            BuildEvent::PhaseStarted { name } if name == "writing layers kept as snapshots")),
        "the unwritten layers were written as the export began"
    );
    let fresh = fresh_build(tmp.path(), export("stage-fresh", Some("build"))).await;
    assert!(fresh.executed() > 0);
    assert_eq!(
        cached.digest, fresh.digest,
        "one image, whichever way it was made"
    );
}

/// A step whose layer was kept only as a snapshot runs again when that snapshot is gone (removed
/// by hand here, as `forge store repair` would), instead of the build failing on a missing blob.
#[tokio::test]
async fn a_layer_kept_as_a_snapshot_is_rebuilt_when_the_snapshot_is_gone() {
    use forge_snapshotter::snapshot::{Kind, Snapshotter};
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = two_stages(tmp.path(), "echo made > /out");
    let request = |target: Option<&str>| tagged_stage(&ctx, "gone", target);
    let session = session(&tmp.path().join("store"));
    let (first, _) = build(&session, request(None)).await;
    first.unwrap_or_else(|f| panic!("build: {f}"));
    // Every committed snapshot nothing is built on: the RUN step's and the final COPY's.
    let sn = session.snapshots().unwrap();
    let list = sn.list().unwrap();
    let leaves: Vec<_> = list
        .iter()
        .filter(|i| i.kind == Kind::Committed)
        .filter(|i| !list.iter().any(|j| j.parent.as_deref() == Some(&i.key)))
        .map(|i| i.key.clone())
        .collect();
    assert!(leaves.len() >= 2, "{list:?}");
    for key in &leaves {
        sn.remove(key).unwrap();
    }
    let (stage, _) = build(&session, request(Some("build"))).await;
    let stage = stage.unwrap_or_else(|f| panic!("the stage after its snapshot went: {f}"));
    let ran = ran(&stage.vertices);
    assert!(
        ran.iter().any(|d| d.contains("] RUN ")),
        "the RUN step ran again: {ran:?}"
    );
    let fresh = fresh_build(tmp.path(), request(Some("build"))).await;
    assert_eq!(stage.digest, fresh.digest);
}

/// A snapshot's files are not synced when it is committed; its record names the boot that wrote
/// it. After a crash (here: the records rewritten to name another boot) the store drops those
/// snapshots when it opens, and nothing built is lost: the builder stage, whose layers were only
/// snapshots, runs again, the final image has the digest it had, and the stage built as the
/// target is the image an empty store builds.
#[tokio::test]
async fn snapshots_left_unsynced_by_an_earlier_boot_are_dropped_and_built_again() {
    use forge_snapshotter::snapshot::Snapshotter;
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = two_stages(tmp.path(), "echo made > /out");
    let request = |target: Option<&str>| tagged_stage(&ctx, "reboot", target);
    let root = tmp.path().join("store");
    let first = {
        let session = session(&root);
        let (first, _) = build(&session, request(None)).await;
        first.unwrap_or_else(|f| panic!("build: {f}"))
    };
    // The crash: every record still marked as written in this boot now names another one.
    let meta = root.join("snapshots").join("metadata.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let mut marked = Vec::new();
    for (key, record) in state["snapshots"].as_object_mut().unwrap() {
        if record.get("unsynced").is_some_and(|b| b.is_string()) {
            record["unsynced"] = "an earlier boot".into();
            marked.push(key.clone());
        }
    }
    assert!(
        marked.len() >= 2,
        "the build's snapshots were marked: {state}"
    );
    std::fs::write(&meta, serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    let session = session(&root);
    let left: Vec<String> = session
        .snapshots()
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert!(
        marked.iter().all(|k| !left.contains(k)),
        "marked {marked:?}, left {left:?}"
    );
    let (again, _) = build(&session, request(None)).await;
    let again = again.unwrap_or_else(|f| panic!("the final stage after the crash: {f}"));
    assert_eq!(again.digest, first.digest);
    let ran = ran(&again.vertices);
    assert!(
        ran.iter().any(|d| d.contains("] RUN ")),
        "the RUN step, whose layer was only a snapshot, ran again: {ran:?}"
    );
    let (stage, _) = build(&session, request(Some("build"))).await;
    let stage = stage.unwrap_or_else(|f| panic!("the stage after the crash: {f}"));
    let fresh = fresh_build(tmp.path(), request(Some("build"))).await;
    assert_eq!(stage.digest, fresh.digest);
}

/// A `COPY --link` layer in a builder stage is made on its own (on scratch) and kept as a
/// snapshot; the merge that lays it on the stage's other layers needs its blob, and writes it then.
/// The step after the merge reads the linked file, and the stage built later as the target (from
/// the cache, its layers written from their snapshots) is the image an empty store builds.
#[tokio::test]
async fn a_linked_copy_in_a_builder_stage_is_written_when_it_is_merged() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = context(
        &tmp.path().join("ctx"),
        "FROM scratch AS build\nCOPY busybox /bin/busybox\nCOPY --link linked.txt /linked.txt\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /linked.txt > /out\"]\n\n\
         FROM scratch\nCOPY --from=build /out /out\n",
        &[("linked.txt", "linked into the stage\n", 0o644)],
    );
    let request = |target: Option<&str>, out: &Path| {
        let mut r = stage_request(&ctx, target);
        r.exports = vec![forge_builder::api::Export::Local(out.to_path_buf())];
        r
    };
    let session = session(&tmp.path().join("store"));
    let out = tmp.path().join("final");
    let (outcome, _) = build(&session, request(None, &out)).await;
    outcome.unwrap_or_else(|f| panic!("build: {f}"));
    assert_eq!(
        std::fs::read_to_string(out.join("out")).unwrap(),
        "linked into the stage\n"
    );

    let (cached, _) = build(&session, request(Some("build"), &tmp.path().join("s1"))).await;
    let cached = cached.unwrap_or_else(|f| panic!("stage from the cache: {f}"));
    assert_eq!(cached.executed(), 0, "{:?}", cached.vertices);
    let fresh = fresh_build(tmp.path(), request(Some("build"), &tmp.path().join("s2"))).await;
    assert_eq!(cached.digest, fresh.digest);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("s2/linked.txt")).unwrap(),
        "linked into the stage\n"
    );
}
