//! The build cache in a registry (issue 15): two runners with empty stores share one registry on
//! 127.0.0.1 (a private Distribution per test, whose access log says what it served), and caches
//! that are damaged or unreachable only cost a cold build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_testsupport::{PrivateRegistry, private_registry};
use serde_json::Value;

mod common;
use common::{forge, printed, ran_and_cached, vertices};

const DOCKERFILE: &str = r#"FROM {base}
ARG SALT=0
RUN --mount=type=cache,target=/var/cache/pkgs,id=pkgs sh -c 'ls /var/cache/pkgs > /pkgs-seen; echo "$SALT" > /var/cache/pkgs/pkg-a.deb; echo deps > /deps'
COPY app.txt /app/app.txt
RUN cat /app/app.txt /deps > /app/built.txt
"#;

/// A registry holding a copy of the busybox base, and a scratch directory.
struct World {
    registry: PrivateRegistry,
    base: String,
    dir: tempfile::TempDir,
}

impl World {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.addr)
    }

    /// A build context with the test Dockerfile and `app.txt` holding `app`.
    fn context(&self, name: &str, app: &str) -> PathBuf {
        let ctx = self.path(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            DOCKERFILE.replace("{base}", &self.base),
        )
        .unwrap();
        std::fs::write(ctx.join("app.txt"), app).unwrap();
        ctx
    }

    /// Runs `forge build ARGS CTX` with a fresh store (an ephemeral runner) and JSON progress.
    fn build(&self, runner: &str, ctx: &Path, args: &[&str]) -> Output {
        let root = self.path(runner);
        let mut all = vec!["build", "--progress=json"];
        all.extend_from_slice(args);
        all.push(ctx.to_str().unwrap());
        forge(&root, &all)
    }

    /// A push-only build of `ctx` as `app:TAG` on `runner`, importing runner one's cache.
    fn push_from_cache(&self, runner: &str, ctx: &Path, tag: &str) -> Output {
        let cache = format!("type=registry,ref={}", self.reference("app/cache:main"));
        let image = self.reference(&format!("app:{tag}"));
        let out = self.build(
            runner,
            ctx,
            &["-t", &image, "--push", "--cache-from", &cache],
        );
        assert_ok(runner, &out);
        out
    }

    /// The requests the registry answered since `mark` (an earlier `served().len()`).
    fn blob_gets_since(&self, mark: usize) -> BTreeSet<String> {
        self.registry.served()[mark..]
            .iter()
            .filter(|s| s.method == "GET" && s.status == 200)
            .filter_map(|s| s.path.split_once("/blobs/").map(|(_, d)| d.to_string()))
            .collect()
    }

    fn mark(&self) -> usize {
        self.registry.served().len()
    }

    /// The manifest `reference` names, read with curl (an independent client).
    fn manifest(&self, repository: &str, tag: &str) -> Value {
        common::registry_manifest(&self.registry.addr, repository, tag)
    }

    fn layers(&self, repository: &str, tag: &str) -> Vec<String> {
        self.manifest(repository, tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// One file of a layer blob, read with curl and tar.
    fn file_in_layer(&self, repository: &str, digest: &str, path: &str) -> String {
        let blob = self.path("blob.tgz");
        let out = Command::new("curl")
            .args(["-fsS", "-o"])
            .arg(&blob)
            .arg(format!(
                "http://{}/v2/{repository}/blobs/{digest}",
                self.registry.addr
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", printed(&out));
        let out = Command::new("tar")
            .arg("-xzOf")
            .arg(&blob)
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", printed(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

fn world() -> Option<World> {
    if !forge_testsupport::root_and_busybox("registry cache tests run RUN steps") {
        return None;
    }
    let busybox = forge_testsupport::busybox_image()?;
    forge_testsupport::tool("curl")?;
    forge_testsupport::tool("tar")?;
    let registry = private_registry()?;
    let dir = forge_testsupport::scratch("forge-registry-cache-");
    // The base, copied into this registry so that everything the runners fetch is in its log.
    let seed = dir.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("Dockerfile"), format!("FROM {busybox}\n")).unwrap();
    let base = format!("{}/base/busybox:latest", registry.addr);
    let out = forge(
        &dir.path().join("seed-root"),
        &["build", "-t", &base, "--push", seed.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", printed(&out));
    Some(World {
        registry,
        base,
        dir,
    })
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed:\n{}", printed(out));
}

/// The Dockerfile steps (RUN/COPY) that ran and those served from the cache.
fn steps(out: &Output) -> (BTreeSet<String>, BTreeSet<String>) {
    let log = vertices(&String::from_utf8_lossy(&out.stderr));
    let (ran, cached) = ran_and_cached(&log);
    let step = |n: &String| n.contains("] RUN ") || n.contains("] COPY ");
    (
        ran.into_iter().filter(step).collect(),
        cached.into_iter().filter(step).collect(),
    )
}

fn warnings(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "warning")
        .map(|v| v["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runner one builds, pushes `app:1` and exports the cache (every step, and the cache mount).
fn runner_one(w: &World) -> Vec<String> {
    let ctx = w.context("ctx1", "hello\n");
    let out = w.build(
        "runner1",
        &ctx,
        &[
            "-t",
            &w.reference("app:1"),
            "--push",
            "--cache-to",
            &format!(
                "type=registry,ref={},mode=max,mounts=true",
                w.reference("app/cache:main")
            ),
        ],
    );
    assert_ok("runner one", &out);
    let (ran, _) = steps(&out);
    assert_eq!(ran.len(), 3, "runner one runs every step: {ran:?}");
    let layers = w.layers("app", "1");
    assert_eq!(layers.len(), 4, "busybox, RUN, COPY, RUN: {layers:?}");
    layers
}

fn cache_from(w: &World) -> String {
    format!("type=registry,ref={}", w.reference("app/cache:main"))
}

#[test]
fn a_second_runner_runs_nothing_and_downloads_no_layer_and_a_change_fetches_only_what_it_stands_on()
{
    let Some(w) = world() else { return };
    let layers = runner_one(&w);
    let cache = w.manifest("app/cache", "main");
    assert_eq!(cache["artifactType"], "application/vnd.forge.cache.v1");
    assert_eq!(
        cache["config"]["mediaType"],
        "application/vnd.forge.cache.config.v1+json"
    );
    let mount_blobs: Vec<&str> = cache["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.forge.cache.mount.v1.tar+zstd")
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        mount_blobs.len(),
        1,
        "one blob for the one cache id: {cache}"
    );

    // Runner two, same commit, empty store: nothing runs, no layer is downloaded.
    let mark = w.mark();
    let ctx = w.context("ctx2", "hello\n");
    let out = w.push_from_cache("runner2", &ctx, "2");
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty(), "runner two ran {ran:?}");
    assert_eq!(cached.len(), 3, "{cached:?}");
    let fetched = w.blob_gets_since(mark);
    for digest in layers.iter().map(String::as_str).chain(mount_blobs.clone()) {
        assert!(
            !fetched.contains(digest),
            "runner two downloaded {digest}; it fetched {fetched:?}"
        );
    }
    // What it did fetch: the base's config and the cache's record list.
    assert!(fetched.len() <= 2, "{fetched:?}");
    assert_eq!(
        w.layers("app", "2"),
        layers,
        "the same layers, pushed as mounts"
    );

    // Runner three changes one file: only COPY and the RUN after it run, and only the layers the
    // COPY stands on (the base's and the first RUN's) are downloaded.
    let mark = w.mark();
    let ctx = w.context("ctx3", "changed\n");
    let out = w.push_from_cache("runner3", &ctx, "3");
    let (ran, cached) = steps(&out);
    assert_eq!(ran.len(), 2, "COPY and the last RUN: {ran:?}");
    assert!(
        ran.iter()
            .all(|s| s.contains("COPY app.txt") || s.contains("RUN cat"))
    );
    assert_eq!(cached.len(), 1, "{cached:?}");
    let layer_gets: BTreeSet<String> = w
        .blob_gets_since(mark)
        .into_iter()
        .filter(|d| layers.contains(d) || mount_blobs.contains(&d.as_str()))
        .collect();
    assert_eq!(
        layer_gets,
        BTreeSet::from([layers[0].clone(), layers[1].clone()]),
        "runner three downloads the base's layer and the first RUN's, nothing else: {:#?}\n{}",
        &w.registry.served()[mark..],
        printed(&out),
    );
    let new_layers = w.layers("app", "3");
    assert_eq!(&new_layers[..2], &layers[..2]);
    assert_eq!(
        w.file_in_layer("app", &new_layers[3], "app/built.txt"),
        "changed\ndeps\n"
    );
}

#[test]
fn a_cache_mount_filled_on_runner_one_is_there_for_runner_two() {
    let Some(w) = world() else { return };
    runner_one(&w);
    // A build argument the RUN reads changes its key: it runs on runner two, with the cache
    // mount runner one filled.
    let ctx = w.context("ctx2", "hello\n");
    let dest = w.path("out");
    let out = w.build(
        "runner2",
        &ctx,
        &[
            "--build-arg",
            "SALT=1",
            "--cache-from",
            &cache_from(&w),
            "-o",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert_ok("runner two", &out);
    let (ran, _) = steps(&out);
    assert!(
        ran.iter().any(|s| s.contains("--mount=type=cache")),
        "{ran:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("pkgs-seen")).unwrap(),
        "pkg-a.deb\n",
        "the step saw runner one's download"
    );
    // Without mounts=true nothing of the cache mount travels.
    let w2 = world().unwrap();
    let ctx = w2.context("ctx1", "hello\n");
    let out = w2.build(
        "runner1",
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={}", w2.reference("app/cache:nomounts")),
        ],
    );
    assert_ok("runner one without mounts", &out);
    let layers = w2.manifest("app/cache", "nomounts")["layers"].clone();
    assert!(
        layers
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] != "application/vnd.forge.cache.mount.v1.tar+zstd"),
        "{layers}"
    );
}

/// A build that must be correct whatever the cache did: it reads the first RUN's filesystem.
fn changed_build(w: &World, runner: &str, cache: &str) -> Output {
    let ctx = w.context(&format!("ctx-{runner}"), "changed\n");
    let dest = w.path(&format!("out-{runner}"));
    let out = w.build(
        runner,
        &ctx,
        &[
            "--cache-from",
            cache,
            "-o",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert_ok(runner, &out);
    assert_eq!(
        std::fs::read_to_string(dest.join("app/built.txt")).unwrap(),
        "changed\ndeps\n"
    );
    out
}

#[test]
fn a_blob_with_the_wrong_content_is_refused_and_its_step_runs_again() {
    let Some(w) = world() else { return };
    let layers = runner_one(&w);
    // The first RUN's layer, as the registry stores it, replaced by other bytes.
    let data = w.registry.blob_data(&layers[1]);
    let len = std::fs::metadata(&data).unwrap().len() as usize;
    std::fs::write(&data, vec![b'x'; len]).unwrap();
    let out = changed_build(&w, "runner2", &cache_from(&w));
    let (ran, _) = steps(&out);
    assert!(
        ran.iter().any(|s| s.contains("--mount=type=cache")),
        "the RUN whose layer was bad ran again: {ran:?}"
    );
    let warned = warnings(&out);
    assert!(
        warned.iter().any(|m| m.contains(&layers[1])),
        "a warning names the blob: {warned:?}"
    );
}

/// Regression (cache sweep 05): the blob with wrong bytes was the last step's, which only the
/// image needs: its record was used, the bytes were found wrong when the image's layers were
/// gathered, and the build failed (every try the same way), though a warning said the step
/// would run again. The build now runs again without that blob, and the step runs.
#[test]
fn a_bad_blob_only_the_image_needs_makes_its_step_run_again() {
    let Some(w) = world() else { return };
    let layers = runner_one(&w);
    let last = layers.last().unwrap();
    let data = w.registry.blob_data(last);
    let len = std::fs::metadata(&data).unwrap().len() as usize;
    std::fs::write(&data, vec![b'x'; len]).unwrap();
    let ctx = w.context("ctx1-again", "hello\n");
    let dest = w.path("bad-last-out");
    let out = w.build(
        "runner2-bad-last",
        &ctx,
        &[
            "--cache-from",
            &cache_from(&w),
            "-o",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert_ok("a build whose last cached layer is bad", &out);
    let (ran, _) = steps(&out);
    assert!(
        ran.iter().any(|s| s.contains("built.txt")),
        "the last RUN ran again: {ran:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("app/built.txt")).unwrap(),
        "hello\ndeps\n"
    );
    assert!(
        warnings(&out).iter().any(|m| m.contains(last)),
        "{:?}",
        warnings(&out)
    );
}

#[test]
fn a_record_whose_blob_is_missing_is_not_used() {
    let Some(w) = world() else { return };
    let layers = runner_one(&w);
    // The COPY's layer is gone from the registry's storage.
    std::fs::remove_file(w.registry.blob_data(&layers[2])).unwrap();
    // Same commit, push only: the COPY runs again, the first RUN does not. The RUN after the COPY
    // runs again too unless the COPY made the very blob that was lost (its file's time to the
    // second and its content are the same), which then makes that RUN's record whole again.
    let ctx = w.context("ctx3", "hello\n");
    let out = w.push_from_cache("runner3", &ctx, "3");
    let warned = warnings(&out);
    assert!(
        warned
            .iter()
            .any(|m| m.contains(&layers[2]) && m.contains("missing")),
        "a warning names the missing blob: {warned:?}"
    );
    let (ran, cached) = steps(&out);
    assert!(ran.iter().any(|s| s.contains("COPY app.txt")), "{ran:?}");
    assert!(
        cached.iter().any(|s| s.contains("--mount=type=cache")),
        "{cached:?}"
    );
    assert_eq!(ran.len() + cached.len(), 3, "{ran:?} {cached:?}");
    let pushed = w.layers("app", "3");
    assert_eq!(
        w.file_in_layer("app", &pushed[3], "app/built.txt"),
        "hello\ndeps\n"
    );
}

#[test]
fn a_truncated_manifest_an_image_in_its_place_and_a_failing_registry_are_warnings() {
    let Some(w) = world() else { return };
    runner_one(&w);
    // A tag whose manifest bytes were cut short in the registry's storage.
    let ctx = w.context("ctx-min", "hello\n");
    let out = w.build(
        "runner1b",
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={}", w.reference("app/cache:cut")),
        ],
    );
    assert_ok("export to the tag that will be cut", &out);
    let data = w.registry.blob_data(&digest_of_tag(&w, "app/cache", "cut"));
    let stored = std::fs::read(&data).unwrap();
    assert!(stored.len() > 20);
    std::fs::write(&data, &stored[..stored.len() / 2]).unwrap();
    let out = changed_build(
        &w,
        "runner2",
        &format!("type=registry,ref={}", w.reference("app/cache:cut")),
    );
    let (ran, _) = steps(&out);
    assert_eq!(ran.len(), 3, "a cold build: {ran:?}");
    assert!(!warnings(&out).is_empty(), "{}", printed(&out));

    // An image where a cache should be.
    let out = changed_build(
        &w,
        "runner3",
        &format!("type=registry,ref={}", w.reference("app:1")),
    );
    let warned = warnings(&out);
    assert!(
        warned.iter().any(|m| m.contains("not a forge cache")),
        "{warned:?}"
    );

    // A registry that answers 500 to everything.
    let failing = failing_registry();
    let out = changed_build(
        &w,
        "runner4",
        &format!("type=registry,ref={failing}/app/cache:main"),
    );
    let warned = warnings(&out);
    assert!(warned.iter().any(|m| m.contains("500")), "{warned:?}");

    // A tag that does not exist, and an unreachable registry.
    let out = changed_build(
        &w,
        "runner5",
        &format!("type=registry,ref={}", w.reference("app/cache:nope")),
    );
    assert!(!warnings(&out).is_empty());
}

#[test]
fn a_local_cache_directory_carries_the_records_too() {
    let Some(w) = world() else { return };
    let cache = w.path("cache-dir");
    let ctx = w.context("ctx1", "hello\n");
    let out = w.build(
        "runner1",
        &ctx,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache.display()),
        ],
    );
    assert_ok("export to a directory", &out);
    let index: Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let ctx = w.context("ctx2", "hello\n");
    let out = w.build(
        "runner2",
        &ctx,
        &[
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ],
    );
    assert_ok("import from a directory", &out);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(cached.len(), 3);
    // A damaged blob in the directory (a byte flipped on disk) is a warning, and the step that
    // made it runs again, as the help says a damaged cache is: it failed the build, found only
    // when the image's layers were gathered (found by a hostile-input sweep).
    // The last layer of the cache's image: the last RUN's, which the export needs and no later
    // step stands on.
    let blob = |digest: &str| {
        cache
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let layer = blob(layers[layers.len() - 1]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&layer).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&layer, bytes).unwrap();
    let ctx = w.context("ctx3", "hello\n");
    let out = w.build(
        "runner3",
        &ctx,
        &[
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ],
    );
    assert_ok("import from a directory with a damaged blob", &out);
    let (ran, _) = steps(&out);
    assert!(
        !ran.is_empty(),
        "the step whose layer was damaged ran again"
    );
    let name = layer.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        warnings(&out).iter().any(|m| m.contains(&name)),
        "a warning names the blob: {:?}",
        warnings(&out)
    );
}

/// The digest the registry's tag link names.
fn digest_of_tag(w: &World, repository: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-fsSI",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/{repository}/manifests/{tag}",
            w.registry.addr
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest: ")
                .map(|d| d.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest header: {head}"))
}

/// A loopback server that answers every request with 500; returns its address.
fn failing_registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    addr
}

/// `forge run` in `dir` with a fresh store (a runner of its own).
fn forge_run(w: &World, dir: &Path, runner: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["run", "--root"])
        .arg(w.path(runner))
        .current_dir(dir)
        .output()
        .unwrap();
    (out.status.success(), printed(&out))
}

#[test]
fn a_pipeline_s_unchanged_test_job_does_not_run_on_the_second_runner() {
    let Some(w) = world() else { return };
    let dir = w.path("repo");
    let ctx = w.context("repo/app", "hello\n");
    assert!(ctx.starts_with(&dir));
    let cache = w.reference("app/cache:pipeline");
    std::fs::write(
        dir.join("forge.yaml"),
        format!(
            "images:\n  app:\n    context: app\n    cache:\n      from: [\"type=registry,ref={cache}\"]\n      \
             to: [\"type=registry,ref={cache},mode=max\"]\n\
             jobs:\n  unit:\n    image: app\n    script:\n      - cat /app/built.txt\n      - echo unit-ran\n    \
             artifacts:\n      paths: [/app/built.txt]\n"
        ),
    )
    .unwrap();
    let (ok, out) = forge_run(&w, &dir, "runner1");
    assert!(ok, "{out}");
    assert!(out.contains("jobs 1 ran, 0 cached"), "{out}");
    let records = w.manifest("app/cache", "pipeline");
    assert!(
        records["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mediaType"] == "application/vnd.forge.test.log.v1"),
        "the job's log travels in the cache: {records}"
    );

    // Runner two: an empty store, the same commit. The image's steps and the job come from the
    // cache; the job's log is shown again and its artifact is there.
    std::fs::remove_dir_all(dir.join("forge-artifacts")).ok();
    let (ok, out) = forge_run(&w, &dir, "runner2");
    assert!(ok, "{out}");
    assert!(out.contains("jobs 0 ran, 1 cached"), "{out}");
    assert!(
        out.contains("unit-ran"),
        "the cached log is replayed: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("forge-artifacts/unit/app/built.txt")).unwrap(),
        "hello\ndeps\n"
    );

    // A change to the file the job reads: the job runs again.
    std::fs::write(ctx.join("app.txt"), "changed\n").unwrap();
    let (ok, out) = forge_run(&w, &dir, "runner3");
    assert!(ok, "{out}");
    assert!(out.contains("jobs 1 ran, 0 cached"), "{out}");
}

#[test]
fn a_cache_in_a_registry_that_wants_a_login_uses_the_push_credentials_and_without_them_warns() {
    let Some(w) = world() else { return };
    let Some(auth) = forge_testsupport::auth_registry() else {
        return;
    };
    let docker = w.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let basic = base64_basic(
        forge_testsupport::AUTH_USER,
        forge_testsupport::AUTH_PASSWORD,
    );
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{basic}"}}}}}}"#, auth.addr),
    )
    .unwrap();
    let cache = format!("type=registry,ref={}/app/cache:main", auth.addr);
    let build = |runner: &str, args: &[&str], logged_in: bool| {
        let ctx = w.context(&format!("ctx-{runner}"), "hello\n");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge"));
        cmd.args(["build", "--progress=json", "--root"])
            .arg(w.path(runner))
            .args(args)
            .arg(&ctx);
        cmd.env(
            "DOCKER_CONFIG",
            if logged_in {
                docker.clone()
            } else {
                w.path("nobody")
            },
        );
        cmd.output().unwrap()
    };
    let out = build(
        "runner1",
        &["--cache-to", &format!("{cache},mode=max")],
        true,
    );
    assert_ok("export with the login", &out);
    let out = build("runner2", &["--cache-from", &cache], true);
    assert_ok("import with the login", &out);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty() && cached.len() == 3, "{ran:?} {cached:?}");
    // No login: the cache is refused, the build is cold and still succeeds.
    let out = build("runner3", &["--cache-from", &cache], false);
    assert_ok("import without a login", &out);
    let (ran, _) = steps(&out);
    assert_eq!(ran.len(), 3, "{ran:?}");
    let warned = warnings(&out);
    assert!(warned.iter().any(|m| m.contains("401")), "{warned:?}");
    // Exporting is not optional: a refused export fails the build, unless told to ignore it.
    let out = build("runner4", &["--cache-to", &cache], false);
    assert!(!out.status.success(), "{}", printed(&out));
    let out = build(
        "runner5",
        &["--cache-to", &format!("{cache},ignore-error=true")],
        false,
    );
    assert_ok("ignore-error", &out);
}

/// `user:password` in base64, as Docker's config.json keeps a login.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A builder stage's steps keep their layers only as snapshots. A later build on the same runner
/// that exports the cache (every step served from the local cache) writes those layers from the
/// snapshots, so a second runner builds the stage itself with nothing run.
#[test]
fn a_builder_stage_kept_as_snapshots_is_exported_to_the_cache_whole() {
    let Some(w) = world() else { return };
    let ctx = w.path("stages");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {} AS build\nRUN seq 1 5000 > /out && echo kept > /kept\n\
             RUN wc -l /out > /count\n\nFROM scratch\nCOPY --from=build /count /count\n",
            w.base
        ),
    )
    .unwrap();
    let cache = w.path("stage-cache");
    assert_ok(
        "a plain build",
        &w.build("runner1", &ctx, &["-t", "stages:1"]),
    );
    let out = w.build(
        "runner1",
        &ctx,
        &[
            "-t",
            "stages:1",
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache.display()),
        ],
    );
    assert_ok("the cache export", &out);
    let (ran, cached) = steps(&out);
    assert!(
        ran.is_empty(),
        "everything came from the local cache: {ran:?}"
    );
    assert_eq!(cached.len(), 3, "{cached:?}");
    let out = w.build(
        "runner2",
        &ctx,
        &[
            "--target",
            "build",
            "-o",
            &format!("type=local,dest={}", w.path("stage-files").display()),
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ],
    );
    assert_ok("the stage on runner two", &out);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert_eq!(
        std::fs::read_to_string(w.path("stage-files/kept")).unwrap(),
        "kept\n"
    );
}

/// A build that pulls from and pushes to a registry without auth asks it for its challenge once,
/// with its first request, the base's manifest: not with a `/v2/` before it, and not before every
/// request (oci-client asked before each of them when it held anonymous credentials).
#[test]
fn a_registry_without_auth_is_asked_for_its_challenge_once_a_build() {
    let Some(w) = world() else { return };
    let before = w.registry.served().len();
    let ctx = w.dir.path().join("probe");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN echo probe > /probe\n", w.base),
    )
    .unwrap();
    let target = format!("{}/probe/once:latest", w.registry.addr);
    let out = forge(
        &w.dir.path().join("probe-root"),
        &["build", "-t", &target, "--push", ctx.to_str().unwrap()],
    );
    assert_ok("the pushed build", &out);
    let served = w.registry.served().split_off(before);
    let probes = served
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/v2/")
        .count();
    // The base's manifest, config and layer, then the uploads and the manifest.
    assert!(served.len() >= 6, "{served:#?}");
    assert_eq!(probes, 0, "{served:#?}");
    let first = &served[0];
    assert!(
        first.method == "GET" && first.path.ends_with("/manifests/latest"),
        "the base's manifest was the first request: {served:#?}"
    );
    let manifests = served
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
        .count();
    assert_eq!(manifests, 1, "fetched once, with the asking: {served:#?}");
}

/// The image ID, manifest digest and `created` of a build, from its `--metadata-file`.
struct Built {
    id: String,
    manifest: String,
    created: String,
}

/// `forge build --progress=json --metadata-file ... ARGS CTX` on `runner`'s store, with no
/// SOURCE_DATE_EPOCH in its environment.
fn build_unstamped(w: &World, runner: &str, ctx: &Path, args: &[&str]) -> (Built, Output) {
    build_with_epoch(w, runner, ctx, None, args)
}

/// [`build_unstamped`] with SOURCE_DATE_EPOCH `epoch` in the environment, when given.
fn build_with_epoch(
    w: &World,
    runner: &str,
    ctx: &Path,
    epoch: Option<&str>,
    args: &[&str],
) -> (Built, Output) {
    let metadata = w.path(&format!("{runner}-metadata.json"));
    let mut forge = Command::new(env!("CARGO_BIN_EXE_forge"));
    forge
        .args(["build", "--progress=json", "--root"])
        .arg(w.path(runner))
        .arg("--metadata-file")
        .arg(&metadata)
        .args(args)
        .arg(ctx)
        .env_remove("SOURCE_DATE_EPOCH");
    if let Some(epoch) = epoch {
        forge.env("SOURCE_DATE_EPOCH", epoch);
    }
    let out = forge.output().unwrap();
    assert_ok(runner, &out);
    let m: Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let built = Built {
        id: field(&m["containerimage.config.digest"]),
        manifest: field(&m["containerimage.digest"]),
        created: field(
            &m["containerimage.descriptor"]["annotations"]["org.opencontainers.image.created"],
        ),
    };
    assert!(built.id.starts_with("sha256:"), "{m}");
    (built, out)
}

/// Without SOURCE_DATE_EPOCH a rebuild whose every step came from the cache gave a new image ID
/// and manifest digest each time (only `created` differed, the build's clock), so every CI run of
/// an unchanged commit pushed a new manifest and moved its tags. A layer's time is now its cache
/// record's, carried through a registry cache too, and the image's that of its newest entry.
#[test]
fn a_fully_cached_rebuild_without_source_date_epoch_is_the_same_image() {
    let Some(w) = world() else { return };
    let ctx = w.context("ctx-same", "hello\n");
    let cache = format!("type=registry,ref={}", w.reference("app/cache:same"));
    let (first, out) = build_unstamped(
        &w,
        "runner1",
        &ctx,
        &["--cache-to", &format!("{cache},mode=max")],
    );
    assert_eq!(steps(&out).0.len(), 3, "{}", printed(&out));

    // Every step cached, same store: the same image.
    let (again, out) = build_unstamped(&w, "runner1", &ctx, &[]);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty() && cached.len() == 3, "{ran:?} {cached:?}");
    assert_eq!(
        (&again.id, &again.manifest, &again.created),
        (&first.id, &first.manifest, &first.created)
    );

    // A fresh store whose steps all come from the registry cache: the image runner one made.
    let (imported, out) = build_unstamped(&w, "runner2", &ctx, &["--cache-from", &cache]);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty() && cached.len() == 3, "{ran:?} {cached:?}");
    assert_eq!(
        (&imported.id, &imported.manifest),
        (&first.id, &first.manifest)
    );

    // One file changed: its COPY and the RUN after it run, and the image is new, made when they ran.
    std::fs::write(ctx.join("app.txt"), "changed\n").unwrap();
    let (changed, out) = build_unstamped(&w, "runner1", &ctx, &[]);
    assert_eq!(steps(&out).0.len(), 2, "{}", printed(&out));
    assert_ne!(changed.id, first.id);
    assert_ne!(changed.manifest, first.manifest);
    // UTC RFC 3339 to the second compares as text.
    let second = |s: &str| {
        s.get(..19)
            .unwrap_or_else(|| panic!("created {s:?}"))
            .to_string()
    };
    assert!(
        second(&changed.created) >= second(&first.created) && changed.created != first.created,
        "{} then {}",
        first.created,
        changed.created
    );
}

/// The phases a build's `--progress json` log names that re-stamp layers.
fn restamp_phases(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "phase.done")
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("re-stamping"))
        .collect()
}

/// Finding C5: a registry cache written by a build with one SOURCE_DATE_EPOCH served a build with
/// another its layers as they were, clamped to the first epoch, so CI that sets the epoch from
/// the last commit and shares a cache pushed images that a build without the cache did not
/// reproduce. Cache keys hold no epoch (it would change with every commit); the layers taken from
/// the cache are re-stamped to the build's epoch at export instead: the pushed image is the one a
/// cold build pushes, and the cache's records, still the first epoch's, give that epoch's image.
#[test]
fn c5_a_registry_cache_from_another_source_date_epoch_gives_the_cold_builds_image() {
    let Some(w) = world() else { return };
    let ctx = w.context("ctx-epoch", "hello\n");
    let cache = format!("type=registry,ref={}", w.reference("app/cache:epoch"));
    let (e1, e2) = ("1700000000", "1700000100");
    let push = |tag: &str| w.reference(&format!("app:{tag}"));

    let (first, out) = build_with_epoch(
        &w,
        "runner1",
        &ctx,
        Some(e1),
        &[
            "-t",
            &push("e1"),
            "--push",
            "--cache-to",
            &format!("{cache},mode=max"),
        ],
    );
    assert_eq!(steps(&out).0.len(), 3, "{}", printed(&out));

    // A fresh runner, the next commit's epoch, every step from the cache.
    let (cached, out) = build_with_epoch(
        &w,
        "runner2",
        &ctx,
        Some(e2),
        &["-t", &push("e2-cached"), "--push", "--cache-from", &cache],
    );
    let (ran, hit) = steps(&out);
    assert!(ran.is_empty() && hit.len() == 3, "{ran:?} {hit:?}");
    let restamped = restamp_phases(&out);
    let (cold, out) = build_with_epoch(
        &w,
        "runner3",
        &ctx,
        Some(e2),
        &["-t", &push("e2-cold"), "--push"],
    );
    assert_eq!(steps(&out).0.len(), 3, "{}", printed(&out));
    assert!(
        restamp_phases(&out).is_empty(),
        "a cold build re-stamps nothing"
    );
    assert_eq!((&cached.id, &cached.manifest), (&cold.id, &cold.manifest));
    assert_ne!(
        cached.manifest, first.manifest,
        "another epoch, another image"
    );
    // What the registry holds, read with curl: the re-stamped layers were pushed.
    assert_eq!(w.layers("app", "e2-cached"), w.layers("app", "e2-cold"));
    assert_eq!(
        restamped,
        vec![format!(
            "re-stamping 3 cached layers to SOURCE_DATE_EPOCH {e2}"
        )]
    );

    // The cache still gives the first epoch's image, unchanged, with nothing re-stamped.
    let (again, out) = build_with_epoch(
        &w,
        "runner4",
        &ctx,
        Some(e1),
        &["-t", &push("e1-again"), "--push", "--cache-from", &cache],
    );
    assert_eq!(steps(&out).0.len(), 0, "{}", printed(&out));
    assert!(restamp_phases(&out).is_empty(), "{}", printed(&out));
    assert_eq!((&again.id, &again.manifest), (&first.id, &first.manifest));
}

/// Puts `bytes` into the OCI layout `dir` as a blob; its descriptor's digest and size (the digest
/// from `sha256sum`).
fn layout_put(dir: &Path, bytes: &[u8]) -> (String, u64) {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Finding C5, for a cache an older forge wrote: its records do not say which SOURCE_DATE_EPOCH
/// their layers were clamped to, so they cannot be re-stamped. A build with an epoch runs their
/// steps again (with a warning) rather than give an image that a cold build would not; a build
/// without one uses them as before.
#[test]
fn c5_records_without_their_layers_epoch_are_not_used_by_a_build_with_one() {
    let Some(w) = world() else { return };
    if forge_testsupport::tool("sha256sum").is_none() {
        return;
    }
    let ctx = w.context("ctx-old", "hello\n");
    let cache = w.path("old-cache");
    let (e1, e2) = ("1700000000", "1700000100");
    build_with_epoch(
        &w,
        "runner1",
        &ctx,
        Some(e1),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache.display()),
        ],
    );
    // The records as forge wrote them before layers said how their mtimes were written.
    let read = |digest: &str| -> Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(cache.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index_path = cache.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    let mut stripped = 0;
    for record in config["records"].as_array_mut().unwrap() {
        for layer in record["result"]["layers"].as_array_mut().unwrap() {
            stripped += usize::from(layer.as_object_mut().unwrap().remove("mtimes").is_some());
        }
    }
    assert_eq!(
        stripped,
        1 + 2 + 3,
        "each step's record lists its layers and those below"
    );
    let (digest, size) = layout_put(&cache, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = layout_put(&cache, &serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let from = format!("type=local,src={}", cache.display());

    let (imported, out) = build_with_epoch(&w, "runner2", &ctx, Some(e2), &["--cache-from", &from]);
    assert_eq!(steps(&out).0.len(), 3, "{}", printed(&out));
    assert!(
        warnings(&out).iter().any(|m| m.contains("older forge")),
        "{:?}",
        warnings(&out)
    );
    let (cold, _) = build_with_epoch(&w, "runner3", &ctx, Some(e2), &[]);
    assert_eq!(
        (&imported.id, &imported.manifest),
        (&cold.id, &cold.manifest)
    );

    let (_, out) = build_unstamped(&w, "runner4", &ctx, &["--cache-from", &from]);
    let (ran, cached) = steps(&out);
    assert!(ran.is_empty() && cached.len() == 3, "{ran:?} {cached:?}");
}

/// Regression (cache sweep 02): a cache written by a build that did not push holds the store's
/// zstd layers, and a cache-served `--push` sent them as they were (mounted from the cache's
/// repository): docker 20.10 could not pull the image, and it was another image than a cold push
/// makes. They are re-encoded as any layer that leaves the store: gzip, the same image as cold.
#[test]
fn a_push_served_from_a_cache_of_zstd_layers_sends_gzip_as_a_cold_push_does() {
    let Some(w) = world() else { return };
    let ctx = w.context("ctx-zstd", "zstd cache\n");
    let cache = format!("type=registry,ref={}", w.reference("zc/cache:main"));
    let epoch = Some("1700000000");
    build_with_epoch(&w, "zc-one", &ctx, epoch, &["--cache-to", &cache]);
    let warm = w.reference("zc/app:warm");
    let (warm_built, out) = build_with_epoch(
        &w,
        "zc-two",
        &ctx,
        epoch,
        &["--cache-from", &cache, "-t", &warm, "--push"],
    );
    let (_, cached) = steps(&out);
    assert!(
        !cached.is_empty(),
        "the cache served nothing: {}",
        printed(&out)
    );
    let cold = w.reference("zc/app:cold");
    let (cold_built, _) = build_with_epoch(&w, "zc-three", &ctx, epoch, &["-t", &cold, "--push"]);
    let types: Vec<String> = w.manifest("zc/app", "warm")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect();
    assert!(types.iter().all(|t| t.ends_with("gzip")), "{types:?}");
    assert_eq!(warm_built.manifest, cold_built.manifest);
    assert_eq!(
        digest_of_tag(&w, "zc/app", "warm"),
        digest_of_tag(&w, "zc/app", "cold")
    );
}

/// Regression (cache sweep 03): `mounts=true` carried a cache mount's files but not its own
/// directory's owner and mode: runner two's cache was `root 0755` where the Dockerfile's mount
/// makes it `uid=1000,mode=0700`, and a step of that user could not write to it.
#[test]
fn a_cache_mount_carried_to_runner_two_keeps_its_owner_and_mode() {
    let Some(w) = world() else { return };
    let ctx = w.path("ctx-owned");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nARG SALT=0\n\
             RUN --mount=type=cache,id=owned,target=/c,uid=1000,gid=1000,mode=0700 \
             sh -c 'echo $SALT > /c/seen-by-$SALT; stat -c \"%u %g %a\" /c > /mode; ls /c > /listed'\n",
            w.base
        ),
    )
    .unwrap();
    let cache = format!("type=registry,ref={}", w.reference("owned/cache:main"));
    let out = w.build(
        "owned-one",
        &ctx,
        &["--cache-to", &format!("{cache},mode=max,mounts=true")],
    );
    assert_ok("runner one", &out);
    let dest = w.path("owned-out");
    let out = w.build(
        "owned-two",
        &ctx,
        &[
            "--build-arg",
            "SALT=1",
            "--cache-from",
            &cache,
            "-o",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert_ok("runner two", &out);
    assert_eq!(
        std::fs::read_to_string(dest.join("listed")).unwrap(),
        "seen-by-0\nseen-by-1\n",
        "runner two got runner one's file and wrote its own"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("mode")).unwrap(),
        "1000 1000 700\n"
    );
}

/// Regression (cache sweep 06): `--cache-to` a registry that takes connections and never answers
/// held the finished build for every request's read timeout and every try (11 minutes), though
/// `ignore-error=true` made the export's failure a warning. Its first answer has a deadline now.
#[test]
fn a_cache_export_to_a_registry_that_never_answers_is_given_up() {
    let Some(w) = world() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        // Connections are taken and kept, never answered.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let ctx = w.context("ctx-silent", "silent\n");
    let out = w.build(
        "silent",
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={silent}/app/cache:main,ignore-error=true"),
        ],
    );
    assert_ok("a build whose cache export is given up", &out);
    assert!(
        warnings(&out)
            .iter()
            .any(|w| w.contains("answered nothing within 30 s")),
        "{:?}",
        warnings(&out)
    );
}
