//! `forge build` end to end (issue 5): the fixture in testdata/e2e/full is built rootless as
//! $FORGE_TEST_USER with the embedded runner, and as root with the containerd runner, pushed to the
//! loopback registry and judged by independent tools: skopeo pulls it back, umoci unpacks it as root so
//! owners are real, ctr runs it. Reproducibility, the cache and a failing step use the same fixtures.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_testsupport::{TestUser as User, walk};

mod common;
use common::{chown_tree, ran_and_cached, rootless_prerequisites, vertices};
use serde_json::{Value, json};

const VERSION: &str = "1.2.3";
const EPOCH: &str = "1700000000";
/// What the image's ENTRYPOINT prints for its CMD, run as USER tester in WORKDIR /app/data.
const RUN_OUTPUT: &str =
    "entrypoint args: hello world\nuser: 1000:1000 cwd: /app/data version: 1.2.3\nhello, e2e\n";

// ---------------------------------------------------------------------------------------------
// What the machine must have

struct Machine {
    registry: String,
    busybox: String,
    user: User,
}

/// The registry, the base image and the unprivileged user; root is needed to switch to that user and
/// for umoci to unpack with the image's own owners.
fn machine() -> Option<Machine> {
    if !forge_testsupport::root(
        "build e2e tests switch to FORGE_TEST_USER and unpack with real owners",
    ) {
        return None;
    }
    let registry = forge_testsupport::registry()?;
    let busybox = forge_testsupport::busybox_image()?;
    let user = forge_testsupport::test_user()?;
    for tool in ["skopeo", "umoci", "tar", "runuser", "chown"] {
        forge_testsupport::tool(tool)?;
    }
    Some(Machine {
        registry,
        busybox,
        user,
    })
}

/// The containerd socket, for `ctr run` and `--runner containerd`.
fn containerd() -> Option<String> {
    let address = forge_testsupport::containerd()?;
    forge_testsupport::tool("ctr")?;
    Some(address.to_string_lossy().into_owned())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a judge tool and returns its stdout; a failure shows the command and its stderr.
fn judge(program: &str, args: &[&str]) -> String {
    text(&forge_testsupport::run(Command::new(program).args(args)))
}

// ---------------------------------------------------------------------------------------------
// A scratch directory with forge and the build context, reachable by the unprivileged user

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/e2e")
        .join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Who runs forge.
#[derive(Clone, Copy)]
enum Who<'a> {
    Root,
    User(&'a User),
}

struct Scratch {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Scratch {
    /// A fresh directory under /tmp with a copy of forge; owned by `owner` when given.
    fn new(owner: Option<&User>) -> Scratch {
        let dir = forge_testsupport::shared_scratch("forge-build-e2e-", owner);
        let bin = forge_testsupport::install_exe(env!("CARGO_BIN_EXE_forge"), dir.path());
        Scratch { dir, bin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies a fixture to `name`, owned by `owner` (the user's own files, as in a checkout).
    fn context(&self, fixture: &str, name: &str, owner: Option<&User>) -> PathBuf {
        let ctx = self.path(name);
        copy_tree(&testdata(fixture), &ctx);
        checkout_modes(&ctx);
        let staging = self.path(&format!("{name}-staging"));
        match fixture {
            "full" => complete_full_context(&ctx, &staging),
            "add-tar" => vendor_tar(&ctx, &staging),
            _ => {}
        }
        if let Some(user) = owner {
            chown_tree(&ctx, user);
        }
        ctx
    }

    fn forge(&self, who: Who<'_>, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = match who {
            Who::Root => Command::new(&self.bin),
            Who::User(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user.name, "--"]).arg(&self.bin);
                c
            }
        };
        // The caller's runtime dir and store belong to root; the user gets only what we give it.
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("FORGE_ROOT")
            .env_remove("SOURCE_DATE_EPOCH")
            .envs(env.iter().copied());
        cmd.output().expect("run forge")
    }
}

/// Modes as a checkout with umask 022 gives them, whatever this checkout's umask was.
fn checkout_modes(ctx: &Path) {
    for entry in walk(ctx) {
        let is_dir = fs::symlink_metadata(&entry).unwrap().is_dir();
        set_mode(&entry, if is_dir { 0o755 } else { 0o644 });
    }
}

/// What git cannot carry: exact modes, symlinks, a hardlink and the gzipped tar that ADD extracts.
fn complete_full_context(ctx: &Path, staging: &Path) {
    std::os::unix::fs::symlink("target.txt", ctx.join("links/rel.link")).unwrap();
    std::os::unix::fs::symlink("/app/txt/a.txt", ctx.join("links/abs.link")).unwrap();
    fs::hard_link(ctx.join("links/target.txt"), ctx.join("links/hard.txt")).unwrap();

    vendor_tar(ctx, staging);
}

/// ctx/vendor.tar.gz: vendor-1.0/ with a file, an executable, a symlink and a hardlink, every entry
/// owned 123:456.
fn vendor_tar(ctx: &Path, staging: &Path) {
    let vendor = staging.join("vendor-1.0");
    fs::create_dir_all(vendor.join("bin")).unwrap();
    set_mode(&vendor, 0o755);
    set_mode(&vendor.join("bin"), 0o755);
    fs::write(vendor.join("lib.txt"), "vendored library\n").unwrap();
    set_mode(&vendor.join("lib.txt"), 0o640);
    fs::write(vendor.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    set_mode(&vendor.join("bin/tool"), 0o755);
    std::os::unix::fs::symlink("lib.txt", vendor.join("current")).unwrap();
    fs::hard_link(vendor.join("lib.txt"), vendor.join("lib.hard")).unwrap();
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=123",
            "--group=456",
            "--numeric-owner",
            "--mtime=@1600000000",
            "-czf",
        ])
        .arg(ctx.join("vendor.tar.gz"))
        .arg("-C")
        .arg(staging)
        .arg("vendor-1.0")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the vendor archive failed");
    set_mode(&ctx.join("vendor.tar.gz"), 0o644);
}

fn full_build_args(m: &Machine) -> Vec<String> {
    [
        format!("--build-arg=BASE={}", m.busybox),
        format!("--build-arg=VERSION={VERSION}"),
        "--build-arg=FLAVOR=e2e".into(),
        "--label=org.example.cli=yes".into(),
    ]
    .into()
}

fn build(
    scratch: &Scratch,
    who: Who<'_>,
    store: &Path,
    args: &[String],
    env: &[(&str, &str)],
) -> Output {
    let mut all: Vec<&str> = vec!["build"];
    all.extend(args.iter().map(String::as_str));
    let root = store.to_str().unwrap();
    let mut env = env.to_vec();
    env.push(("FORGE_ROOT", root));
    scratch.forge(who, &all, &env)
}

/// The end of a pushed build's arguments: plain progress, `-t` for each of `refs`, `--push`, and
/// the context.
fn push_args(refs: &[&str], ctx: &Path) -> Vec<String> {
    let mut args = vec!["--progress=plain".to_string()];
    for r in refs {
        args.extend(["-t".to_string(), r.to_string()]);
    }
    args.extend(["--push".to_string(), ctx.to_str().unwrap().to_string()]);
    args
}

fn assert_built(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: forge build failed ({})\n--- stdout\n{}\n--- stderr (tail)\n{}",
        out.status,
        text(&out.stdout),
        tail(&text(&out.stderr), 80)
    );
}

// ---------------------------------------------------------------------------------------------
// The judges: skopeo, umoci, ctr

struct Pulled {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    digest: String,
    manifest: Value,
    config: Value,
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    fs::read(layout.join("blobs/sha256").join(hex)).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(layout, digest)).unwrap()
}

/// Reads an OCI layout's only (or `tag`-named) manifest and its config.
fn read_layout(layout: &Path, tag: Option<&str>) -> (String, Value, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"]
        .as_array()
        .expect("index.json has manifests");
    let entry = match tag {
        Some(tag) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}")),
        None => {
            assert_eq!(manifests.len(), 1, "one manifest expected: {index}");
            &manifests[0]
        }
    };
    let digest = entry["digest"].as_str().unwrap().to_string();
    let manifest = json_blob(layout, &digest);
    let config = json_blob(layout, manifest["config"]["digest"].as_str().unwrap());
    (digest, manifest, config)
}

/// The manifest digest the registry holds for `reference`.
fn registry_digest(reference: &str) -> String {
    judge(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{reference}"),
        ],
    )
    .trim()
    .to_string()
}

/// Pulls `reference` back with skopeo into an OCI layout and unpacks it with umoci as root.
fn pull_back(reference: &str) -> Pulled {
    let dir = tempfile::Builder::new()
        .prefix("forge-build-judge-")
        .tempdir_in("/tmp")
        .unwrap();
    let layout = dir.path().join("oci");
    let layout_ref = format!("oci:{}:judge", layout.display());
    judge(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &layout_ref,
        ],
    );
    let registry_digest = registry_digest(reference);
    let (digest, manifest, config) = read_layout(&layout, Some("judge"));
    assert_eq!(
        digest, registry_digest,
        "skopeo changed the manifest while copying it"
    );
    let bundle = dir.path().join("bundle");
    judge(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:judge", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    Pulled {
        rootfs: bundle.join("rootfs"),
        _dir: dir,
        digest,
        manifest,
        config,
    }
}

/// Pulls `reference` into containerd and runs it with its own ENTRYPOINT and CMD until it prints
/// `expected`, at most three times; the last output. `ctr run` copies a short-lived task's output
/// through FIFOs that can lose its end when the task exits first (a CI run printed only the first
/// of three lines; docker's own copy has the same race, moby/moby#49655, docker/cli#4338). The
/// image is fixed by its digest, so a defect in it prints the same on every try.
fn ctr_run(address: &str, reference: &str, expected: &str) -> String {
    let base = ["-a", address, "-n", "forge-e2e"];
    let with =
        |rest: &[&str]| -> Vec<String> { base.iter().chain(rest).map(|s| s.to_string()).collect() };
    let args = with(&["images", "pull", "--plain-http", reference]);
    judge("ctr", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut out = String::new();
    for attempt in 1..=3 {
        let id = format!("forge-e2e-{}", forge_testsupport::unique());
        let args = with(&["run", "--rm", reference, &id]);
        out = judge("ctr", &args.iter().map(String::as_str).collect::<Vec<_>>());
        if out == expected {
            break;
        }
        eprintln!("ctr run, try {attempt}, printed {out:?}");
    }
    let args = with(&["images", "rm", reference]);
    let _ = Command::new("ctr").args(&args).output();
    out
}

/// Collects every mismatch, so one run reports all of them.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.0
                .push(format!("{what}: expected {expected:?}, got {actual:?}"));
        }
    }

    fn that(&mut self, what: &str, ok: bool) {
        if !ok {
            self.0.push(what.to_string());
        }
    }

    fn finish(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{context}: {} mismatches:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }

    fn file(&mut self, root: &Path, path: &str, content: &str, mode: u32, owner: (u32, u32)) {
        let full = root.join(path.trim_start_matches('/'));
        let Ok(meta) = fs::symlink_metadata(&full) else {
            self.0.push(format!("{path}: missing"));
            return;
        };
        if !meta.is_file() {
            self.0.push(format!("{path}: not a regular file"));
            return;
        }
        self.eq(
            &format!("{path} content"),
            fs::read_to_string(&full).unwrap_or_default().as_str(),
            content,
        );
        self.eq(
            &format!("{path} mode"),
            format!("{:o}", meta.mode() & 0o7777),
            format!("{mode:o}"),
        );
        self.eq(&format!("{path} owner"), (meta.uid(), meta.gid()), owner);
    }

    fn dir(&mut self, root: &Path, path: &str, mode: u32, owner: (u32, u32)) {
        let full = root.join(path.trim_start_matches('/'));
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {
                self.eq(
                    &format!("{path} mode"),
                    format!("{:o}", meta.mode() & 0o7777),
                    format!("{mode:o}"),
                );
                self.eq(&format!("{path} owner"), (meta.uid(), meta.gid()), owner);
            }
            Ok(_) => self.0.push(format!("{path}: not a directory")),
            Err(_) => self.0.push(format!("{path}: missing")),
        }
    }

    fn symlink(&mut self, root: &Path, path: &str, target: &str) {
        let full = root.join(path.trim_start_matches('/'));
        match fs::read_link(&full) {
            Ok(t) => self.eq(
                &format!("{path} link target"),
                t.to_string_lossy().as_ref(),
                target,
            ),
            Err(e) => self.0.push(format!("{path}: not a symlink ({e})")),
        }
    }

    fn hardlinked(&mut self, root: &Path, a: &str, b: &str) {
        let ino =
            |p: &str| fs::symlink_metadata(root.join(p.trim_start_matches('/'))).map(|m| m.ino());
        match (ino(a), ino(b)) {
            (Ok(x), Ok(y)) => self.that(
                &format!("{a} and {b} are not one inode ({x} vs {y})"),
                x == y,
            ),
            _ => self.0.push(format!("{a} or {b} missing (hardlink)")),
        }
    }

    fn absent(&mut self, root: &Path, path: &str) {
        let full = root.join(path.trim_start_matches('/'));
        self.that(
            &format!("{path} must not exist in the image"),
            fs::symlink_metadata(full).is_err(),
        );
    }
}

/// One expected history entry of the final image, after the base image's.
struct Step {
    prefix: &'static str,
    contains: &'static str,
    layer: bool,
}

const fn step(prefix: &'static str, contains: &'static str, layer: bool) -> Step {
    Step {
        prefix,
        contains,
        layer,
    }
}

/// The history BuildKit writes for testdata/e2e/full's target (ARG entries aside).
const HISTORY: &[Step] = &[
    step("LABEL org.example.base=runtime-base", "", false),
    step("CMD [\"from-runtime-base\"]", "", false),
    step(
        "ENV APP_HOME=/app APP_VERSION=1.2.3 MODE=release",
        "",
        false,
    ),
    step(
        "LABEL org.example.version=1.2.3 org.example.name=forge e2e",
        "",
        false,
    ),
    step("WORKDIR /app", "", true),
    step(
        "RUN ",
        "rm /usr/bin/wget && rm -r /var/log # buildkit",
        true,
    ),
    step("COPY *.txt ./txt/ # buildkit", "", true),
    step("COPY docs/ ./docs/ # buildkit", "", true),
    step("COPY links/ ./links/ # buildkit", "", true),
    step(
        "COPY --chown=1000:1000 files/ids.txt ./owned/ids.txt # buildkit",
        "",
        true,
    ),
    step(
        "COPY --chown=tester:nogroup files/names.txt ./owned/names.txt # buildkit",
        "",
        true,
    ),
    step(
        "COPY --chmod=0600 files/octal.sh ./modes/octal.sh # buildkit",
        "",
        true,
    ),
    step(
        "COPY --chmod=u+x,g+w,o-r files/symbolic.sh ./modes/symbolic.sh # buildkit",
        "",
        true,
    ),
    step("ADD vendor.tar.gz ./vendor/ # buildkit", "", true),
    step("COPY <<EOF ./etc/app.ini # buildkit", "", true),
    step(
        "COPY --chmod=0755 <<EOF ./bin/entry.sh # buildkit",
        "",
        true,
    ),
    step("COPY /work/out/ ./built/ # buildkit", "", true),
    step("RUN ", "chown 1000:1000 /app/run-owned.txt", true),
    step("RUN ", "cat <<EOT > /app/heredoc-stdin.txt", true),
    step("WORKDIR /app/data", "", true),
    step("USER tester", "", false),
    step("RUN ", "id -un > /home/tester/whoami", true),
    step("EXPOSE ", "9090/udp", false),
    step("HEALTHCHECK ", "Retries:4", false),
    step("STOPSIGNAL SIGINT", "", false),
    step("ENTRYPOINT [\"/app/bin/entry.sh\"]", "", false),
    step("CMD [\"hello\" \"world\"]", "", false),
];

fn check_config(config: &Value, manifest: &Value, c: &mut Checks) {
    let cfg = &config["config"];
    c.eq("os", config["os"].as_str(), Some("linux"));
    c.eq(
        "architecture",
        config["architecture"].as_str(),
        Some(match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    );
    c.eq(
        "Env",
        &cfg["Env"],
        &json!([
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "APP_HOME=/app",
            "APP_VERSION=1.2.3",
            "MODE=release"
        ]),
    );
    c.eq("User", &cfg["User"], &json!("tester"));
    c.eq("WorkingDir", &cfg["WorkingDir"], &json!("/app/data"));
    c.eq(
        "Entrypoint",
        &cfg["Entrypoint"],
        &json!(["/app/bin/entry.sh"]),
    );
    c.eq("Cmd", &cfg["Cmd"], &json!(["hello", "world"]));
    c.eq(
        "Labels",
        &cfg["Labels"],
        &json!({
            "org.example.base": "runtime-base",
            "org.example.version": "1.2.3",
            "org.example.name": "forge e2e",
            "org.example.cli": "yes"
        }),
    );
    c.eq(
        "ExposedPorts",
        &cfg["ExposedPorts"],
        &json!({"7000/tcp": {}, "8080/tcp": {}, "9090/udp": {}}),
    );
    let hc = &cfg["Healthcheck"];
    c.eq(
        "Healthcheck.Test",
        &hc["Test"],
        &json!(["CMD-SHELL", "test -s /app/built/greeting || exit 1"]),
    );
    c.eq(
        "Healthcheck.Interval",
        &hc["Interval"],
        &json!(30_000_000_000u64),
    );
    c.eq(
        "Healthcheck.Timeout",
        &hc["Timeout"],
        &json!(3_000_000_000u64),
    );
    c.eq(
        "Healthcheck.StartPeriod",
        &hc["StartPeriod"],
        &json!(5_000_000_000u64),
    );
    c.eq("Healthcheck.Retries", &hc["Retries"], &json!(4));
    c.eq("StopSignal", &cfg["StopSignal"], &json!("SIGINT"));
    c.that(
        &format!("Volumes must be empty: {}", cfg["Volumes"]),
        cfg["Volumes"].is_null() || cfg["Volumes"] == json!({}),
    );

    // History: the base image's two entries, then one per instruction of the target's chain.
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let created_by = |h: &Value| h["created_by"].as_str().unwrap_or_default().to_string();
    let empty = |h: &Value| h["empty_layer"].as_bool().unwrap_or(false);
    c.eq(
        "base history",
        history.iter().take(2).map(created_by).collect::<Vec<_>>(),
        vec![
            "umoci repack".to_string(),
            "forge make-base-images.sh busybox".to_string(),
        ],
    );
    let ours: Vec<&Value> = history
        .iter()
        .skip(2)
        .filter(|h| !created_by(h).starts_with("ARG "))
        .collect();
    c.that(
        "history has an `ARG VERSION` entry",
        history
            .iter()
            .any(|h| created_by(h).starts_with("ARG VERSION")),
    );
    let lines: Vec<String> = ours.iter().map(|h| created_by(h)).collect();
    c.eq("history length (ARG aside)", lines.len(), HISTORY.len());
    for (i, (h, want)) in ours.iter().zip(HISTORY).enumerate() {
        let line = created_by(h);
        c.that(
            &format!(
                "history[{i}] is {line:?}, expected it to start with {:?} and contain {:?}",
                want.prefix, want.contains
            ),
            line.starts_with(want.prefix) && line.contains(want.contains),
        );
        c.eq(
            &format!("history[{i}] ({line}) has a layer"),
            !empty(h),
            want.layer,
        );
    }
    let layered = history.iter().filter(|h| !empty(h)).count();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    let layers = manifest["layers"].as_array().map_or(0, Vec::len);
    let expected = 1 + HISTORY.iter().filter(|s| s.layer).count();
    c.eq("rootfs.diff_ids count", diff_ids, expected);
    c.eq("manifest layers count", layers, expected);
    c.eq("history entries with a layer", layered, expected);
    c.eq("rootfs.type", &config["rootfs"]["type"], &json!("layers"));
}

fn check_rootfs(root: &Path, c: &mut Checks) {
    let r = (0, 0);
    c.dir(root, "/app", 0o755, r);
    c.dir(root, "/app/data", 0o755, r);
    // COPY from the context: owners become root whoever owned the files; .dockerignore applied.
    c.file(root, "/app/txt/a.txt", "file a\n", 0o644, r);
    c.file(root, "/app/txt/b.txt", "file b\n", 0o644, r);
    c.absent(root, "/app/txt/secret.txt");
    c.file(
        root,
        "/app/docs/keep.md",
        "kept by the ! exception\n",
        0o644,
        r,
    );
    c.file(root, "/app/docs/readme.txt", "not a .md file\n", 0o644, r);
    c.absent(root, "/app/docs/drop.md");
    // Links from the context.
    c.file(root, "/app/links/target.txt", "link target\n", 0o644, r);
    c.symlink(root, "/app/links/rel.link", "target.txt");
    c.symlink(root, "/app/links/abs.link", "/app/txt/a.txt");
    c.hardlinked(root, "/app/links/target.txt", "/app/links/hard.txt");
    // --chown and --chmod.
    c.file(
        root,
        "/app/owned/ids.txt",
        "owned by ids\n",
        0o644,
        (1000, 1000),
    );
    c.file(
        root,
        "/app/owned/names.txt",
        "owned by names\n",
        0o644,
        (1000, 65534),
    );
    c.file(
        root,
        "/app/modes/octal.sh",
        "#!/bin/sh\necho octal\n",
        0o600,
        r,
    );
    c.file(
        root,
        "/app/modes/symbolic.sh",
        "#!/bin/sh\necho symbolic\n",
        0o760,
        r,
    );
    // ADD of a local gzipped tar: extracted with the archive's modes and links (owners: see
    // add_of_a_local_tar_keeps_the_archives_owners).
    check_vendor(c, root, "/app/vendor", None);
    c.absent(root, "/app/vendor.tar.gz");
    c.absent(root, "/app/vendor/vendor.tar.gz");
    // COPY heredocs: the unquoted one expanded, the quoted one literal.
    c.file(
        root,
        "/app/etc/app.ini",
        "[app]\nversion=1.2.3\nhome=/app\n",
        0o644,
        r,
    );
    c.file(
        root,
        "/app/bin/entry.sh",
        "#!/bin/sh\necho \"entrypoint args: $*\"\necho \"user: $(id -u):$(id -g) cwd: $(pwd) version: $APP_VERSION\"\ncat /app/built/greeting\n",
        0o755,
        r,
    );
    // COPY --from the builder stage: what its heredoc RUN made, with the cache mount's counter.
    c.file(root, "/app/built/greeting", "hello, e2e\n", 0o644, r);
    c.file(root, "/app/built/bundle", "main v1\nlib v1\n", 0o644, r);
    c.symlink(root, "/app/built/bundle.link", "bundle");
    c.hardlinked(root, "/app/built/bundle", "/app/built/bundle.hard");
    c.file(root, "/app/built/cache-runs", "1\n", 0o644, r);
    c.absent(root, "/work");
    c.absent(root, "/var/cache/e2e");
    // RUN in the target: a chown, links, a heredoc on stdin, and a step run as USER tester.
    c.file(
        root,
        "/app/run-owned.txt",
        "made by RUN\n",
        0o644,
        (1000, 1000),
    );
    c.symlink(root, "/app/run.link", "/app/built/bundle");
    c.hardlinked(root, "/app/run-owned.txt", "/app/run.hard");
    c.file(root, "/app/heredoc-stdin.txt", "version 1.2.3\n", 0o644, r);
    c.file(root, "/home/tester/whoami", "tester\n", 0o644, (1000, 1000));
    // Whiteouts: files of the base image deleted by RUN are gone, their neighbours stay.
    c.absent(root, "/usr/bin/wget");
    c.absent(root, "/var/log");
    c.dir(root, "/var", 0o755, r);
    c.symlink(root, "/usr/bin/wc", "/bin/busybox");
    c.file(
        root,
        "/etc/group",
        "root:x:0:\ntester:x:1000:\nnogroup:x:65534:\n",
        0o644,
        r,
    );
    // Nothing excluded by .dockerignore reached any layer, and no whiteout file is left unapplied.
    for path in walk(root) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        c.that(
            &format!("{} is an unapplied whiteout", path.display()),
            !name.starts_with(".wh."),
        );
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_file() && meta.len() < 4096 {
            let body = fs::read(&path).unwrap();
            for ignored in ["do not ship", "dropped by docs/*.md"] {
                c.that(
                    &format!(
                        "{} holds an ignored file's text {ignored:?}",
                        path.display()
                    ),
                    !body.windows(ignored.len()).any(|w| w == ignored.as_bytes()),
                );
            }
        }
    }
}

fn owner_of(root: &Path, path: &str) -> (u32, u32) {
    fs::symlink_metadata(root.join(path.trim_start_matches('/')))
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((u32::MAX, u32::MAX))
}

/// What ADD made of vendor.tar.gz under `dir`; its owners are checked when `owner` is given.
fn check_vendor(c: &mut Checks, root: &Path, dir: &str, owner: Option<(u32, u32)>) {
    let top = format!("{dir}/vendor-1.0");
    let owner = owner.unwrap_or_else(|| owner_of(root, &format!("{top}/lib.txt")));
    c.dir(root, &top, 0o755, owner);
    c.dir(root, &format!("{top}/bin"), 0o755, owner);
    c.file(
        root,
        &format!("{top}/lib.txt"),
        "vendored library\n",
        0o640,
        owner,
    );
    c.file(
        root,
        &format!("{top}/bin/tool"),
        "#!/bin/sh\necho tool\n",
        0o755,
        owner,
    );
    c.symlink(root, &format!("{top}/current"), "lib.txt");
    c.hardlinked(root, &format!("{top}/lib.txt"), &format!("{top}/lib.hard"));
}

fn check_full_image(image: &Pulled, what: &str) {
    let mut c = Checks::default();
    c.eq(
        "manifest mediaType",
        image.manifest["mediaType"].as_str(),
        Some("application/vnd.oci.image.manifest.v1+json"),
    );
    check_config(&image.config, &image.manifest, &mut c);
    check_rootfs(&image.rootfs, &mut c);
    c.finish(what);
}

/// The manifest digest forge printed: the last `sha256:` word of its stdout.
fn printed_digest(out: &Output) -> Option<String> {
    text(&out.stdout)
        .split_whitespace()
        .rfind(|w| w.starts_with("sha256:"))
        .map(str::to_string)
}

fn assert_no_unused_stage(out: &Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains("the unused stage ran") && !all.contains("[unused]"),
        "the unused stage was touched:\n{}",
        tail(&all, 40)
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn rootless_build_pushes_an_image_that_skopeo_umoci_and_ctr_agree_with() {
    let Some(m) = machine() else { return };
    // Without containerd only the `ctr run` judge is skipped (containerd() says so).
    let address = containerd();
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.context("full", "ctx", Some(&user));
    let tag = forge_testsupport::unique();
    let reference = format!("{}/forge-e2e/full:rootless-{tag}", m.registry);
    // A second name in another repository: every -t is pushed.
    let other = format!("{}/forge-e2e/full-copy:rootless-{tag}", m.registry);
    let mut args = full_build_args(&m);
    args.extend(push_args(&[&reference, &other], &ctx));
    let out = build(
        &scratch,
        Who::User(&user),
        &scratch.path("store"),
        &args,
        &[],
    );
    assert_built("rootless build", &out);
    assert_no_unused_stage(&out);

    let image = pull_back(&reference);
    assert_eq!(
        printed_digest(&out).as_deref(),
        Some(image.digest.as_str()),
        "forge printed another digest than the registry holds; stdout:\n{}",
        text(&out.stdout)
    );
    check_full_image(&image, "rootless build");
    assert_eq!(registry_digest(&other), image.digest, "the second -t");
    if let Some(address) = address {
        assert_eq!(ctr_run(&address, &reference, RUN_OUTPUT), RUN_OUTPUT);
    }
}

/// `--compression gzip-parallel` (issue 16), judged against the default gzip: a context with a
/// 1 MB file (eight of the parallel writer's 128 KiB blocks) is built rootless from two empty
/// stores with one SOURCE_DATE_EPOCH, once with each, and pushed. skopeo copies both back
/// (checking every blob's digest) and umoci unpacks both (decompressing every layer): the file
/// comes out whole from each, the diff_ids are the same (the same tar), the COPY layer's digest is
/// not (another deflate), and the base image's layer, pushed as pulled, keeps its digest.
#[test]
fn gzip_parallel_pushes_the_same_tar_under_another_digest() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.path("big-ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nCOPY big.txt /big.txt\n", m.busybox),
    )
    .unwrap();
    let big: String = (0..80_000)
        .map(|i| format!("line {i}: {}\n", i * 7919 % 100_003))
        .collect();
    assert!(big.len() > 8 * 128 * 1024);
    fs::write(ctx.join("big.txt"), &big).unwrap();
    checkout_modes(&ctx);
    chown_tree(&ctx, &user);
    let tag = forge_testsupport::unique();
    let push = |store: &str, name: &str, extra: &[&str]| {
        let reference = format!("{}/forge-e2e/big:{name}-{tag}", m.registry);
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        args.extend(push_args(&[&reference], &ctx));
        let out = build(
            &scratch,
            Who::User(&user),
            &scratch.path(store),
            &args,
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_built(name, &out);
        let image = pull_back(&reference);
        assert_eq!(printed_digest(&out).as_deref(), Some(image.digest.as_str()));
        assert!(
            fs::read_to_string(image.rootfs.join("big.txt")).unwrap() == big,
            "{name}: big.txt came back other than it went"
        );
        image
    };
    let parallel = push(
        "store-parallel",
        "gzip-parallel",
        &["--compression", "gzip-parallel"],
    );
    let plain = push("store-plain", "gzip", &[]);
    assert_eq!(
        parallel.config["rootfs"]["diff_ids"], plain.config["rootfs"]["diff_ids"],
        "the same tars"
    );
    let layers = |image: &Pulled| -> Vec<(String, String)> {
        image.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["mediaType"].as_str().unwrap().to_string(),
                    l["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (ours, theirs) = (layers(&parallel), layers(&plain));
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    assert_eq!(ours[0], theirs[0], "the base layer is pushed as pulled");
    assert_eq!(ours[1].0, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(ours[1].0, theirs[1].0);
    assert_ne!(
        ours[1].1, theirs[1].1,
        "the COPY layer has one-stream gzip's digest"
    );
    assert_ne!(parallel.digest, plain.digest);
}

#[test]
fn root_build_with_the_containerd_runner_gives_the_same_image() {
    let Some(m) = machine() else { return };
    let Some(address) = containerd() else { return };
    let scratch = Scratch::new(None);
    let ctx = scratch.context("full", "ctx", None);
    let reference = format!(
        "{}/forge-e2e/full:containerd-{}",
        m.registry,
        forge_testsupport::unique()
    );
    let mut args = full_build_args(&m);
    args.push("--runner=containerd".into());
    args.extend(push_args(&[&reference], &ctx));
    let out = build(
        &scratch,
        Who::Root,
        &scratch.path("store"),
        &args,
        &[("CONTAINERD_ADDRESS", address.as_str())],
    );
    assert_built("containerd build", &out);
    assert_no_unused_stage(&out);

    let image = pull_back(&reference);
    assert_eq!(printed_digest(&out).as_deref(), Some(image.digest.as_str()));
    check_full_image(&image, "containerd build");
    assert_eq!(ctr_run(&address, &reference, RUN_OUTPUT), RUN_OUTPUT);
}

/// The digests one reproducible build reports: metadata file, iidfile, and the OCI tar's index.
struct Reported {
    metadata: String,
    iid: String,
    tar_manifest: String,
    config: Value,
}

fn reproducible_build(
    m: &Machine,
    scratch: &Scratch,
    ctx: &Path,
    n: usize,
    store: &str,
    epoch: &str,
) -> Reported {
    let user = &m.user;
    let meta = scratch.path(&format!("metadata-{n}.json"));
    let iid = scratch.path(&format!("iid-{n}"));
    let tar = scratch.path(&format!("image-{n}.tar"));
    let mut args = full_build_args(m);
    args.extend([
        "--progress=plain".to_string(),
        format!("--metadata-file={}", meta.display()),
        format!("--iidfile={}", iid.display()),
        format!("--output=type=oci,dest={}", tar.display()),
        ctx.to_str().unwrap().into(),
    ]);
    let out = build(
        scratch,
        Who::User(user),
        &scratch.path(store),
        &args,
        &[("SOURCE_DATE_EPOCH", epoch)],
    );
    assert_built(&format!("reproducible build {n}"), &out);
    let metadata: Value = serde_json::from_slice(
        &fs::read(&meta).unwrap_or_else(|e| panic!("{}: {e}", meta.display())),
    )
    .unwrap();
    let digest = metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {metadata}"))
        .to_string();
    let layout = scratch.path(&format!("layout-{n}"));
    fs::create_dir(&layout).unwrap();
    judge(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    let (tar_manifest, _, config) = read_layout(&layout, None);
    Reported {
        metadata: digest,
        iid: fs::read_to_string(&iid).unwrap().trim().to_string(),
        tar_manifest,
        config,
    }
}

#[test]
fn source_date_epoch_gives_the_same_digest_from_two_empty_stores() {
    let Some(m) = machine() else { return };
    let scratch = Scratch::new(Some(&m.user));
    let ctx = scratch.context("full", "ctx", Some(&m.user));
    // The second build reads a second checkout: other inodes, other mtimes (the epoch clamps them).
    let checkout = scratch.context("full", "ctx-2", Some(&m.user));
    let one = reproducible_build(&m, &scratch, &ctx, 1, "store-1", EPOCH);
    let two = reproducible_build(&m, &scratch, &checkout, 2, "store-2", EPOCH);
    assert!(one.metadata.starts_with("sha256:"), "{}", one.metadata);
    assert_eq!(one.metadata, one.tar_manifest, "metadata file vs OCI tar");
    assert!(one.iid.starts_with("sha256:"), "iidfile: {:?}", one.iid);
    assert_eq!(one.metadata, two.metadata, "two empty stores, one epoch");
    assert_eq!(one.tar_manifest, two.tar_manifest);
    assert_eq!(one.iid, two.iid);
    assert_eq!(
        one.config["created"].as_str(),
        Some("2023-11-14T22:13:20Z"),
        "config.created is SOURCE_DATE_EPOCH"
    );

    let later = reproducible_build(&m, &scratch, &ctx, 3, "store-1", "1700000060");
    assert_ne!(
        later.metadata, one.metadata,
        "another epoch, another digest"
    );
    assert_eq!(
        later.config["created"].as_str(),
        Some("2023-11-14T22:14:20Z")
    );
}

/// A Dockerfile step (as opposed to a source, an inline document or an export phase).
fn is_instruction(name: &str) -> bool {
    name.split_once("] ").is_some_and(|(_, rest)| {
        ["RUN ", "COPY ", "ADD ", "WORKDIR "]
            .iter()
            .any(|k| rest.starts_with(k))
    })
}

#[test]
fn second_build_runs_no_step_and_a_one_file_change_reruns_only_its_dependents() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.context("full", "ctx", Some(&user));
    let store = scratch.path("store");
    let run = |n: usize, extra: &[String]| {
        let mut args = full_build_args(&m);
        args.push("--progress=json".into());
        args.extend(extra.iter().cloned());
        args.push(ctx.to_str().unwrap().into());
        let out = build(&scratch, Who::User(&user), &store, &args, &[]);
        assert_built(&format!("cache build {n}"), &out);
        assert_no_unused_stage(&out);
        vertices(&text(&out.stderr))
    };

    let first = run(1, &[]);
    let (ran, _) = ran_and_cached(&first);
    assert!(
        ran.iter().filter(|n| is_instruction(n)).count() >= 20,
        "the first build should run every step: {first:#?}"
    );

    let second = run(2, &[]);
    let (ran, cached) = ran_and_cached(&second);
    assert!(
        ran.is_empty(),
        "a rebuild with nothing changed ran {ran:#?}"
    );
    assert!(
        cached.iter().filter(|n| is_instruction(n)).count() >= 20,
        "every step should report cached: {second:#?}"
    );

    // Only `COPY src/` reads src/main.txt.
    fs::write(ctx.join("src/main.txt"), "main v2\n").unwrap();
    let local = scratch.path("local");
    let third = run(
        3,
        &[format!("--output=type=local,dest={}", local.display())],
    );
    let (ran, cached) = ran_and_cached(&third);
    let ran_steps: BTreeSet<String> = ran.iter().filter(|n| is_instruction(n)).cloned().collect();
    let expected_to_run = [
        "COPY src/ ./src/",
        "RUN --mount=type=cache,target=/var/cache/e2e <<EOF",
        "COPY --from=builder /work/out/ ./built/",
        "RUN <<EOF",
        "RUN cat <<EOT > /app/heredoc-stdin.txt",
        "WORKDIR /app/data",
        "RUN id -un > /home/tester/whoami",
    ];
    let mut problems = Vec::new();
    for want in expected_to_run {
        if !ran_steps.iter().any(|n| n.contains(want)) {
            problems.push(format!("expected a step containing {want:?} to run"));
        }
    }
    for name in &ran_steps {
        if !expected_to_run.iter().any(|w| name.contains(w)) {
            problems.push(format!(
                "{name:?} ran although src/main.txt does not reach it"
            ));
        }
    }
    for must_be_cached in [
        "WORKDIR /work",
        "WORKDIR ${APP_HOME}",
        "RUN rm /usr/bin/wget",
        "COPY *.txt ./txt/",
        "ADD vendor.tar.gz ./vendor/",
        "COPY --chmod=0755 <<'EOF' ./bin/entry.sh",
    ] {
        if !cached.iter().any(|n| n.contains(must_be_cached)) {
            problems.push(format!("expected {must_be_cached:?} to be cached"));
        }
    }
    assert!(problems.is_empty(), "{}\n{third:#?}", problems.join("\n"));

    // The cache mount kept its counter across builds; the new source reached the image.
    assert_eq!(
        fs::read_to_string(local.join("app/built/cache-runs")).unwrap(),
        "2\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("app/built/bundle")).unwrap(),
        "main v2\nlib v1\n"
    );
}

#[test]
fn failing_run_reports_step_status_and_output_then_the_store_still_builds() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.context("fail", "ctx", Some(&user));
    let store = scratch.path("store");
    let base = format!("--build-arg=BASE={}", m.busybox);

    let out = build(
        &scratch,
        Who::User(&user),
        &store,
        &[
            base.clone(),
            "--progress=plain".into(),
            ctx.to_str().unwrap().into(),
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code of a failed build:\n{stderr}"
    );
    // Plain progress streams the output as it comes; the error report after the exit status must
    // still repeat the step and its last lines.
    let status_line = stderr
        .lines()
        .position(|l| l.to_lowercase().contains("exit") && l.contains("42"))
        .unwrap_or_else(|| panic!("stderr lacks the exit status 42:\n{stderr}"));
    let report = stderr
        .lines()
        .skip(status_line)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "RUN echo \"first words\"",
        "line 5",
        "first words",
        "to stderr",
        "the last words before failing",
    ] {
        assert!(
            report.contains(needle),
            "the error report lacks {needle:?}:\n{stderr}"
        );
    }
    assert!(
        printed_digest(&out).is_none(),
        "a failed build printed a digest"
    );
    // The base the failed build pulled is recorded all the same (a build records what it pulled
    // with its results at its end, whichever way it ends).
    let listed = scratch.forge(
        Who::User(&user),
        &["images"],
        &[("FORGE_ROOT", store.to_str().unwrap())],
    );
    let listed = text(&listed.stdout);
    let base_name = m.busybox.split('@').next().unwrap();
    assert!(
        listed.lines().any(|l| l.starts_with(base_name)),
        "the pulled base is not in the store after the failed build:\n{listed}"
    );

    let local = scratch.path("local");
    let good = build(
        &scratch,
        Who::User(&user),
        &store,
        &[
            base,
            "--progress=json".into(),
            "-f".into(),
            ctx.join("good.Dockerfile").to_str().unwrap().into(),
            format!("--output=type=local,dest={}", local.display()),
            ctx.to_str().unwrap().into(),
        ],
        &[],
    );
    assert_built("build after a failure", &good);
    // The step that succeeded before the failure was kept in the cache.
    let (ran, cached) = ran_and_cached(&vertices(&text(&good.stderr)));
    assert!(
        cached
            .iter()
            .any(|n| n.contains("RUN echo \"a step that works\"")),
        "the step before the failure is not cached: ran {ran:?}, cached {cached:?}"
    );
    assert!(
        ran.iter()
            .any(|n| n.contains("RUN echo \"after the failure\"")),
        "the new step did not run: ran {ran:?}, cached {cached:?}"
    );
    assert_eq!(
        fs::read_to_string(local.join("ok")).unwrap(),
        "a step that works\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("after")).unwrap(),
        "after the failure\n"
    );
}

#[test]
fn add_of_a_local_tar_keeps_the_archives_owners() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.context("add-tar", "ctx", Some(&user));
    let reference = format!(
        "{}/forge-e2e/add-tar:{}",
        m.registry,
        forge_testsupport::unique()
    );
    let mut args = vec![format!("--build-arg=BASE={}", m.busybox)];
    args.extend(push_args(&[&reference], &ctx));
    let out = build(
        &scratch,
        Who::User(&user),
        &scratch.path("store"),
        &args,
        &[],
    );
    assert_built("ADD tar build", &out);
    let image = pull_back(&reference);
    let mut c = Checks::default();
    check_vendor(&mut c, &image.rootfs, "/vendor", Some((123, 456)));
    check_vendor(&mut c, &image.rootfs, "/chowned", Some((7, 8)));
    c.file(&image.rootfs, "/plain.txt", "a plain file\n", 0o644, (0, 0));
    c.finish("ADD of a local tar");
}

#[test]
fn two_concurrent_builds_share_one_store() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.context("full", "ctx", Some(&user));
    let store = scratch.path("store");
    let args = |progress: &str| {
        let mut args = full_build_args(&m);
        args.extend([
            format!("--progress={progress}"),
            ctx.to_str().unwrap().into(),
        ]);
        args
    };
    // Both race for the same cache records, snapshots and blobs (and the shared cache mount, so
    // their images may differ in /app/built/cache-runs).
    std::thread::scope(|s| {
        let runs: Vec<_> = (1..=2)
            .map(|n| {
                let (scratch, store, args, user) = (&scratch, &store, args("plain"), &user);
                s.spawn(move || (n, build(scratch, Who::User(user), store, &args, &[])))
            })
            .collect();
        for run in runs {
            let (n, out) = run.join().unwrap();
            assert_built(&format!("concurrent build {n}"), &out);
        }
    });
    let after = build(&scratch, Who::User(&user), &store, &args("json"), &[]);
    assert_built("build after the concurrent ones", &after);
    let (ran, cached) = ran_and_cached(&vertices(&text(&after.stderr)));
    assert!(
        ran.is_empty(),
        "after two concurrent builds, a rebuild ran {ran:#?}"
    );
    assert!(
        cached.iter().filter(|n| is_instruction(n)).count() >= 20,
        "every step should report cached: {cached:#?}"
    );
}

/// Issue 10: both runners keep cache mounts in one layout under the store, so a cache a step filled
/// under `--runner containerd` is warm for the next build under the embedded runner, and back.
#[test]
fn a_cache_mount_filled_under_one_runner_is_seen_under_the_other() {
    let Some(m) = machine() else { return };
    let Some(address) = containerd() else { return };
    let scratch = Scratch::new(None);
    let ctx = scratch.path("ctx");
    fs::create_dir(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nARG RUNNER\n\
         RUN --mount=type=cache,id=cross-runner,target=/var/cache/cross \
         echo \"$RUNNER\" >> /var/cache/cross/runs && cp /var/cache/cross/runs /runs\n",
    )
    .unwrap();
    let store = scratch.path("store");
    let runs_after = |n: usize, runner: &str| {
        let local = scratch.path(&format!("out-{n}"));
        let args: Vec<String> = vec![
            format!("--build-arg=BASE={}", m.busybox),
            format!("--build-arg=RUNNER={runner}-{n}"),
            format!("--runner={runner}"),
            "--no-cache".into(),
            format!("--output=type=local,dest={}", local.display()),
            ctx.to_str().unwrap().into(),
        ];
        let out = build(
            &scratch,
            Who::Root,
            &store,
            &args,
            &[("CONTAINERD_ADDRESS", address.as_str())],
        );
        assert_built(&format!("build {n} with the {runner} runner"), &out);
        fs::read_to_string(local.join("runs")).unwrap()
    };
    assert_eq!(runs_after(1, "containerd"), "containerd-1\n");
    assert_eq!(runs_after(2, "embedded"), "containerd-1\nembedded-2\n");
    assert_eq!(
        runs_after(3, "containerd"),
        "containerd-1\nembedded-2\ncontainerd-3\n"
    );
    // One directory for the id, in the layout both runners share.
    assert_eq!(
        fs::read_to_string(store.join("cache-mounts/v1/cross-runner/0/runs")).unwrap(),
        "containerd-1\nembedded-2\ncontainerd-3\n"
    );
}

/// Issue 14, rootless: an ordinary user's RUN steps get BuildKit's sandbox too (its hostname,
/// /dev/mqueue of the step's own IPC namespace, `--ulimit` within forge's own hard limit), and
/// /dev/null shows as 65534: the host's root is not mapped in the user namespace and a user
/// namespace may not make device nodes (rootless BuildKit and podman show the same; the README
/// says so). A `--ulimit` past forge's hard limit fails the step, saying why.
#[test]
fn rootless_run_steps_get_buildkits_sandbox() {
    let Some((busybox, user)) = rootless_prerequisites("the test switches to FORGE_TEST_USER")
    else {
        return;
    };
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {busybox}\nRUN sh -c 'hostname; grep -c \" /dev/mqueue mqueue \" /proc/mounts; \
             ulimit -Sn; ulimit -Hn; stat -Lc %u:%g /dev/null' > /env.txt && \
             mkdir -p /owned/sub && echo x > /owned/sub/f && chown -R 1000:1000 /owned\n"
        ),
    )
    .unwrap();
    chown_tree(&ctx, &user);
    let store = scratch.path("store");
    let args = |ulimit: &str, out: &str| -> Vec<String> {
        [
            "--progress=plain",
            "--ulimit",
            ulimit,
            "-o",
            &format!("type=local,dest={}", scratch.path(out).display()),
            ctx.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let out = build(
        &scratch,
        Who::User(&user),
        &store,
        &args("nofile=100:200", "out"),
        &[],
    );
    assert_built("rootless build with --ulimit", &out);
    let env = fs::read_to_string(scratch.path("out/env.txt")).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        ["buildkitsandbox", "1", "100", "200", "65534:65534"],
        "{env}"
    );
    // `-o type=local` as a user: every file is the user's (uid 1000 inside would be a subordinate
    // id outside), so the user can remove the export.
    for p in [
        "out/owned",
        "out/owned/sub",
        "out/owned/sub/f",
        "out/env.txt",
    ] {
        let md = fs::symlink_metadata(scratch.path(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (user.uid, user.gid), "{p}");
    }
    let rm = Command::new("runuser")
        .args(["-u", &user.name, "--", "rm", "-rf"])
        .arg(scratch.path("out"))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert!(!scratch.path("out").exists());

    // `--keep-owners`: the image's owners, which rootless are the user's subordinate ids (uid 1000
    // inside is the range's start + 999 outside; root inside is the user).
    let mut keep = args("nofile=100:200", "kept");
    keep.insert(0, "--keep-owners".into());
    let out = build(&scratch, Who::User(&user), &store, &keep, &[]);
    assert_built("rootless build with --keep-owners", &out);
    for p in ["kept/owned", "kept/owned/sub/f"] {
        let md = fs::symlink_metadata(scratch.path(p)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (user.host_uid(1000), user.host_gid(1000)),
            "{p}"
        );
    }
    let md = fs::symlink_metadata(scratch.path("kept/env.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (user.uid, user.gid));

    let out = build(
        &scratch,
        Who::User(&user),
        &store,
        &args("nofile=100:-1", "past"),
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("set --ulimit nofile=100:-1") && stderr.contains("only real root"),
        "{stderr}"
    );
}

/// The step containers in containerd's `forge` namespace that forge process `pid` named.
fn step_containers_of(address: &str, pid: u32) -> Vec<String> {
    let listed = judge(
        "ctr",
        &["-a", address, "-n", "forge", "containers", "ls", "-q"],
    );
    let prefix = format!("forge-{pid}-");
    listed
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A build killed with SIGKILL in a containerd step leaves its container (no teardown ran); the
/// next build through containerd takes it down, as the teardown would have.
#[test]
fn a_container_left_by_a_killed_build_is_taken_down_by_the_next() {
    let Some(m) = machine() else { return };
    let Some(address) = containerd() else { return };
    let scratch = Scratch::new(None);
    let ctx = scratch.path("sleeper");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN sleep 120\n", m.busybox),
    )
    .unwrap();
    let store = scratch.path("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args([
            "build",
            "--runner=containerd",
            "--progress=plain",
            "--network=none",
        ])
        .arg(&ctx)
        .env("FORGE_ROOT", &store)
        .env("CONTAINERD_ADDRESS", &address)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut left = Vec::new();
    for _ in 0..600 {
        left = step_containers_of(&address, pid);
        if !left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(left.len(), 1, "the step's container never showed");
    assert_eq!(
        step_containers_of(&address, pid),
        left,
        "SIGKILL ran no teardown"
    );

    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nRUN true\n", m.busybox),
    )
    .unwrap();
    let out = build(
        &scratch,
        Who::Root,
        &store,
        &[
            "--runner=containerd".into(),
            "--progress=plain".into(),
            ctx.to_str().unwrap().into(),
        ],
        &[("CONTAINERD_ADDRESS", address.as_str())],
    );
    assert_built("the next containerd build", &out);
    assert_eq!(step_containers_of(&address, pid), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Build contexts docker copies and forge refused

/// Builds `dockerfile` on the context `prepare` makes, once as root and once rootless as the test
/// user (whose files the context then are), exporting with `-o type=local`: each run's name and
/// export directory. `None` after a SKIP line.
fn build_context_both_ways(
    dockerfile: &str,
    prepare: impl Fn(&Path),
) -> Option<(Scratch, Vec<(&'static str, PathBuf)>)> {
    if !forge_testsupport::root("the test switches to FORGE_TEST_USER") {
        return None;
    }
    let user = forge_testsupport::test_user()?;
    let scratch = Scratch::new(Some(&user));
    let mut outs = Vec::new();
    for (name, who) in [("root", Who::Root), ("rootless", Who::User(&user))] {
        let ctx = scratch.path(&format!("ctx-{name}"));
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        prepare(&ctx);
        if let Who::User(u) = who {
            chown_tree(&ctx, u);
        }
        let out = scratch.path(&format!("out-{name}"));
        let args = [
            "--progress=plain".to_string(),
            "-o".into(),
            format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap().into(),
        ];
        let built = build(
            &scratch,
            who,
            &scratch.path(&format!("store-{name}")),
            &args,
            &[],
        );
        assert_built(name, &built);
        outs.push((name, out));
    }
    Some((scratch, outs))
}

/// `COPY dirlink/r` with `dirlink -> real` (or `-> /real`) failed with `source "/dirlink/r" not
/// found`; docker follows links in a source's parents inside the context.
#[test]
fn copy_through_a_linked_directory_of_the_context() {
    let dockerfile = "FROM scratch\nCOPY dirlink/r /x1\nCOPY absdirlink/sub /x2\n";
    let Some((_scratch, outs)) = build_context_both_ways(dockerfile, |ctx| {
        fs::create_dir_all(ctx.join("real/sub")).unwrap();
        fs::write(ctx.join("real/r"), "r\n").unwrap();
        fs::write(ctx.join("real/sub/s"), "s\n").unwrap();
        std::os::unix::fs::symlink("real", ctx.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("/real", ctx.join("absdirlink")).unwrap();
    }) else {
        return;
    };
    for (name, out) in outs {
        assert_eq!(fs::read_to_string(out.join("x1")).unwrap(), "r\n", "{name}");
        assert_eq!(
            fs::read_to_string(out.join("x2/s")).unwrap(),
            "s\n",
            "{name}"
        );
    }
}

/// A unix socket in a copied context directory failed the COPY (`sockets cannot be copied`);
/// docker copies it as an empty regular file with the socket's permission bits.
#[test]
fn a_socket_in_the_context_is_copied_as_an_empty_file() {
    let Some((_scratch, outs)) = build_context_both_ways("FROM scratch\nCOPY d /d\n", |ctx| {
        fs::create_dir_all(ctx.join("d")).unwrap();
        fs::write(ctx.join("d/file"), "f\n").unwrap();
        // The socket file stays when its listener is gone, as one a dev server left behind.
        drop(std::os::unix::net::UnixListener::bind(ctx.join("d/sock")).unwrap());
        set_mode(&ctx.join("d/sock"), 0o751);
    }) else {
        return;
    };
    for (name, out) in outs {
        assert_eq!(
            fs::read_to_string(out.join("d/file")).unwrap(),
            "f\n",
            "{name}"
        );
        let md = fs::symlink_metadata(out.join("d/sock")).unwrap();
        assert!(md.is_file(), "{name}: {:?}", md.file_type());
        assert_eq!((md.len(), md.mode() & 0o7777), (0, 0o751), "{name}");
    }
}

/// A file name that is not UTF-8 anywhere in the context failed the whole build (`path is not
/// valid UTF-8`), even where no instruction used it; docker copies such a file under its exact
/// name. Linux names are bytes.
#[test]
fn a_name_that_is_not_utf8_is_copied_byte_exactly() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dockerfile = "FROM scratch\nCOPY used /used\nCOPY . /all/\n";
    let Some((_scratch, outs)) = build_context_both_ways(dockerfile, |ctx| {
        fs::create_dir_all(ctx.join("used")).unwrap();
        fs::write(ctx.join("used/ok"), "ok\n").unwrap();
        let dir = ctx.join(OsStr::from_bytes(b"dir\xfe"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(OsStr::from_bytes(b"x\xffy")), "bytes\n").unwrap();
    }) else {
        return;
    };
    for (name, out) in outs {
        assert_eq!(
            fs::read_to_string(out.join("used/ok")).unwrap(),
            "ok\n",
            "{name}"
        );
        let copied = out.join("all").join(OsStr::from_bytes(b"dir\xfe/x\xffy"));
        assert_eq!(fs::read_to_string(&copied).unwrap(), "bytes\n", "{name}");
    }
}

/// The docker comparison (layers1): 130 one-file RUN steps failed under the embedded runner at
/// step 81 rootless, earlier the longer the store path (39 under an 85-byte root), with `mount
/// overlay ... No such file or directory`: the lower dirs' mount options passed the one page
/// mount(2) reads and were cut. Built here rootless and as root under a store root of 200 bytes
/// (the options would be some 30 KB), then a COPY (the builder's own overlay mount) and a RUN over
/// the whole chain. About 7 s per build on two shared cores.
#[test]
fn a_dockerfile_of_130_run_steps_builds_under_a_long_root() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let ctx = scratch.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let steps = 130;
    let mut dockerfile = format!("FROM {}\n", m.busybox);
    for n in 1..=steps {
        dockerfile.push_str(&format!("RUN echo {n} > /f{n}\n"));
    }
    dockerfile.push_str("COPY copied /copied\nRUN cat /f1 /f130 /copied > /summary\n");
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    fs::write(ctx.join("copied"), "copied\n").unwrap();
    chown_tree(&ctx, &user);

    for (who, name) in [(Who::User(&user), "rootless"), (Who::Root, "root")] {
        // The store's parents are made by forge itself, as the user when rootless.
        let mut store = scratch.path(&format!("store-{name}"));
        while store.as_os_str().len() < 200 {
            store.push("a-long-store-path-as-a-ci-workspace-may-have");
        }
        let dest = scratch.path(&format!("out-{name}"));
        let started = std::time::Instant::now();
        let out = scratch.forge(
            who,
            &[
                "build",
                "--root",
                store.to_str().unwrap(),
                "--progress=plain",
                "-o",
                &format!("type=local,dest={}", dest.display()),
                ctx.to_str().unwrap(),
            ],
            &[],
        );
        assert_built(&format!("{name} build of {steps} RUN steps"), &out);
        eprintln!("{name}: {steps} RUN steps built in {:?}", started.elapsed());
        assert_eq!(fs::read_to_string(dest.join("f1")).unwrap(), "1\n");
        assert_eq!(
            fs::read_to_string(dest.join(format!("f{steps}"))).unwrap(),
            format!("{steps}\n")
        );
        assert_eq!(
            fs::read_to_string(dest.join("summary")).unwrap(),
            "1\n130\ncopied\n",
            "{name}: the last RUN saw the first and last layers and the COPY"
        );
    }
}

/// A store inside the build context (`--root .forge`, as a CI job keeps its cache in its
/// workspace) is not part of the context: the build does not read the files it writes, the image
/// does not hold the store, and a rebuild finds everything cached.
#[test]
fn a_store_inside_the_context_is_left_out_of_it() {
    let ws = forge_testsupport::scratch("forge-store-in-context");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /src/\n").unwrap();
    fs::write(ctx.join("app.txt"), "app\n").unwrap();
    let root = ctx.join(".forge");
    let dest = ws.path().join("out");
    let build = || {
        common::forge(
            &root,
            &[
                "build",
                "--progress=plain",
                "-o",
                &format!("type=local,dest={}", dest.display()),
                ctx.to_str().unwrap(),
            ],
        )
    };
    let first = build();
    assert!(first.status.success(), "{}", common::printed(&first));
    assert_eq!(
        fs::read_to_string(dest.join("src/app.txt")).unwrap(),
        "app\n"
    );
    assert!(
        !dest.join("src/.forge").exists(),
        "the store went into the image"
    );
    let second = build();
    let out = common::printed(&second);
    assert!(second.status.success(), "{out}");
    assert!(out.contains("2 steps, 2 cached"), "{out}");
}

/// C1: a non-root user in a container (`--security-opt seccomp=unconfined`) has newuidmap, but
/// the setuid helper is refused there ("write to uid_map failed: Operation not permitted"), and
/// forge gave up where README said it maps the user's own ids. A refused helper now leaves forge
/// in its new user namespace mapping its own ids, with the warning that says what that costs.
/// The refusal is played by helpers first on PATH that fail as the real one does in a container.
#[test]
fn a_refused_newuidmap_falls_back_to_the_users_own_ids() {
    let Some(m) = machine() else { return };
    let user = m.user.clone();
    let scratch = Scratch::new(Some(&user));
    let fake = scratch.path("fakebin");
    fs::create_dir_all(&fake).unwrap();
    for tool in ["newuidmap", "newgidmap"] {
        let p = fake.join(tool);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{tool}: write to {}_map failed: Operation not permitted\" >&2\nexit 1\n",
                &tool[3..6]
            ),
        )
        .unwrap();
        set_mode(&p, 0o755);
    }
    let ctx = scratch.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a.txt /a.txt\n").unwrap();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    chown_tree(&ctx, &user);
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake.display());
    let out = build(
        &scratch,
        Who::User(&user),
        &scratch.path("store"),
        &["--progress=plain".into(), ctx.to_str().unwrap().into()],
        &[("PATH", &path)],
    );
    let said = text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("write to uid_map failed: Operation not permitted")
            && said.contains(&format!("only uid {} is mapped (as root)", user.uid)),
        "{said}"
    );
}

/// C13: `-o type=registry,name=...,compression=zstd` (buildx's way to ask for zstd) pushed gzip
/// layers, and a misspelt key was taken without a word. The exporter's `compression=` is now
/// honoured as `--compression` is, and keys forge does not use are named in a warning.
#[test]
fn an_outputs_compression_key_is_honoured_and_unknown_keys_are_named() {
    let Some(m) = machine() else { return };
    let scratch = Scratch::new(None);
    let ctx = scratch.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}\nCOPY a.txt /a.txt\n", m.busybox),
    )
    .unwrap();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    let repo = format!("forge-e2e/zstd-{}", forge_testsupport::unique());
    let reference = format!("{}/{repo}:1", m.registry);
    let out = build(
        &scratch,
        Who::Root,
        &scratch.path("store"),
        &[
            "--progress=plain".into(),
            "-o".into(),
            format!("type=registry,name={reference},compression=zstd,bogus=1"),
            ctx.to_str().unwrap().into(),
        ],
        &[],
    );
    assert_built("zstd", &out);
    let err = text(&out.stderr);
    assert!(
        err.contains("bogus= not used by forge for type=registry, ignored"),
        "{err}"
    );
    let manifest: Value = serde_json::from_str(&judge(
        "curl",
        &[
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{}/v2/{repo}/manifests/1", m.registry),
        ],
    ))
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.last().unwrap()["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "{manifest}"
    );
}
