//! `forge build` fed hostile inputs: contexts and archives that try to reach the host, missing
//! sources, floods of output, secrets that must not leak, networks that must stay closed. Each
//! failure must name what is wrong and leave the store usable for the next build.
//! RUN steps use the host's static busybox copied from the context, so only the network test needs
//! the loopback registry.

use std::io::Read;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use forge_testsupport::{BUSYBOX_BASE as BASE, Context};

/// Root and a static busybox, or `false` after a SKIP line; a panic under FORGE_E2E=require.
fn prerequisites() -> bool {
    forge_testsupport::root_and_busybox(
        "RUN steps with the embedded runner, no user namespace set up here",
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory holding a store (`root`) and contexts.
struct Bench {
    tmp: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            tmp: forge_testsupport::scratch("forge-hostile-"),
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    /// A context `name` with busybox, the Dockerfile and `files`.
    fn context(&self, name: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> PathBuf {
        Context::busybox(self.path().join(name))
            .dockerfile(dockerfile)
            .files(files)
            .into_path()
    }

    fn forge(&self, args: &[&str], context: &Path) -> Output {
        self.command(args, context).output().expect("run forge")
    }

    fn command(&self, args: &[&str], context: &Path) -> Command {
        self.command_showing("plain", args, context)
    }

    /// As [`command`](Bench::command), with `--progress progress`.
    fn command_showing(&self, progress: &str, args: &[&str], context: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_forge"));
        c.arg("build")
            .arg("--root")
            .arg(self.root())
            .arg("--progress")
            .arg(progress)
            .args(args)
            .arg(context)
            .env_remove("FORGE_ROOT");
        c
    }

    /// The store still builds: a RUN step and an export work right after a failure.
    fn assert_usable(&self) {
        let ctx = self.context("after", &format!("{BASE}RUN echo still-fine > /ok\n"), &[]);
        let dest = self.path().join("after-out");
        let out = self.forge(
            &["-o", &format!("type=local,dest={}", dest.display())],
            &ctx,
        );
        assert!(
            out.status.success(),
            "store unusable: {}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("ok")).unwrap(),
            "still-fine\n"
        );
        let _ = std::fs::remove_dir_all(dest);
        // No build left mounts behind on the host.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = self.path().to_string_lossy().into_owned();
        assert!(
            !mounts.lines().any(|l| l.contains(&here)),
            "mounts under {here} left: {mounts}"
        );
    }
}

/// Every file of every layer blob in an OCI layout directory, decompressed: (path, content).
fn layout_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let blobs = dir.join("blobs/sha256");
    for b in std::fs::read_dir(&blobs).unwrap().flatten() {
        let bytes = std::fs::read(b.path()).unwrap();
        let data: Vec<u8> = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut d = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut d)
                .unwrap();
            d
        } else {
            bytes
        };
        // JSON blobs (config, manifest) are kept whole under their digest.
        let mut archive = tar::Archive::new(&data[..]);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(_) => continue,
        };
        let mut any = false;
        for e in entries {
            let Ok(mut e) = e else { break };
            any = true;
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            out.push((path, content));
        }
        if !any {
            out.push((b.file_name().to_string_lossy().into_owned(), data));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Regression (cache sweep 01): under the chroot isolation (root in a default docker container)
/// a step replaced its cache mount with a symlink, `rm -rf /cache && ln -s /root/.docker /cache`:
/// the link came back as the cache, naming the host's path, and `--cache-to ...,mounts=true`
/// packed what it named (the runner's registry credentials) into the exported cache. A later step
/// mounting the cache would have been given the host's directory.
#[test]
fn a_cache_mount_a_step_replaced_with_a_symlink_never_reaches_the_host() {
    if !prerequisites() {
        return;
    }
    let b = Bench::new();
    let host = b.path().join("host-secrets");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("config.json"), "RUNNER-CREDENTIAL-MARK\n").unwrap();
    let ctx = b.context(
        "swap",
        &format!(
            "{BASE}RUN --mount=type=cache,id=deps,target=/cache rm -rf /cache && ln -s {} /cache\n",
            host.display()
        ),
        &[],
    );
    let cache = b.path().join("cache");
    let out = b.forge(
        &[
            "--isolation=chroot",
            "--cache-to",
            &format!("type=local,dest={},mode=max,mounts=true", cache.display()),
        ],
        &ctx,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for blob in std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(blob.path()).unwrap();
        let plain = zstd::decode_all(&bytes[..]).unwrap_or(bytes);
        assert!(
            !contains(&plain, b"RUNNER-CREDENTIAL-MARK"),
            "{} holds the host's file",
            blob.path().display()
        );
    }
    // The next step that mounts the cache gets an empty one, not the host's directory.
    let ctx = b.context(
        "after-swap",
        &format!("{BASE}RUN --mount=type=cache,id=deps,target=/cache ls -A /cache > /listed\n"),
        &[],
    );
    let dest = b.path().join("after-swap-out");
    for isolation in ["--isolation=chroot", "--isolation=auto"] {
        let out = b.forge(
            &[
                isolation,
                "--no-cache",
                "-o",
                &format!("type=local,dest={}", dest.display()),
            ],
            &ctx,
        );
        assert!(out.status.success(), "{isolation}: {}", text(&out.stderr));
        assert_eq!(
            std::fs::read_to_string(dest.join("listed")).unwrap(),
            "",
            "{isolation}"
        );
    }
}

#[test]
fn a_context_symlink_to_a_host_file_is_resolved_inside_the_context() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let host_file = bench.path().join("host-secret.txt");
    std::fs::write(&host_file, "HOST-ONLY-CONTENT\n").unwrap();
    let ctx = bench.context("ctx", "FROM scratch\nCOPY escape /x\n", &[]);
    std::os::unix::fs::symlink(&host_file, ctx.join("escape")).unwrap();
    std::os::unix::fs::symlink("../host-secret.txt", ctx.join("relative")).unwrap();

    let out = bench.forge(&[], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("escape"), "the error names the source: {err}");
    assert!(!err.contains("HOST-ONLY"), "{err}");

    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY relative /x\n").unwrap();
    let out = bench.forge(&[], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("relative"),
        "the error names the source: {err}"
    );

    // Inside a copied directory the links stay links: nothing of the host is read.
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").unwrap();
    let layout = bench.path().join("layout");
    let out = bench.forge(
        &[
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
        &ctx,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = layout_files(&layout);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("ctx/escape")),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (path, content) in &files {
        assert!(
            !contains(content, b"HOST-ONLY-CONTENT"),
            "host file content in {path}"
        );
    }
    bench.assert_usable();
}

/// A tar whose entries are written raw, so names the tar crate would refuse get in.
fn hostile_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn add_of_a_tar_that_climbs_out_is_refused_and_writes_nothing_outside() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let outside = bench.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let escape = format!("../../../../../../../..{}/dotdot", outside.display());
    // Names that climb with `..` stay at the destination's top, as BuildKit's chrooted
    // extraction places them: inside the image, nothing outside.
    let climbing: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "dotdot.tar",
            hostile_tar(&[(
                "../../../../../../../../tmp/x",
                tar::EntryType::Regular,
                "",
                b"x",
            )]),
            "unpacked/tmp/x".to_string(),
        ),
        (
            "deep-dotdot.tar",
            hostile_tar(&[(escape.as_str(), tar::EntryType::Regular, "", b"escaped")]),
            format!("unpacked{}/dotdot", outside.display()),
        ),
    ];
    for (name, tar_bytes, lands) in &climbing {
        let ctx = bench.context(
            &format!("ctx-{name}"),
            &format!("FROM scratch\nADD {name} /unpacked/\n"),
            &[(name, tar_bytes)],
        );
        let dest = bench.path().join(format!("out-{name}"));
        let out = bench.forge(
            &["-o", &format!("type=local,dest={}", dest.display())],
            &ctx,
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(dest.join(lands).is_file(), "{name}: not at {lands}: {err}");
    }
    // A hard link to a path above the destination is refused, naming the entry.
    let name = "hardlink.tar";
    let tar_bytes = hostile_tar(&[("h", tar::EntryType::Link, "../../../../etc/passwd", b"")]);
    let ctx = bench.context(
        "ctx-hardlink",
        &format!("FROM scratch\nADD {name} /unpacked/\n"),
        &[(name, &tar_bytes)],
    );
    let out = bench.forge(&[], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    assert!(
        err.contains(name) && err.contains("entry \"h\""),
        "{name}: {err}"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

    // An absolute symlink, then a file written through it: the link lands in the image as it
    // is, and the file goes inside the destination root, never through to the host.
    let link_tar = hostile_tar(&[
        (
            "evil",
            tar::EntryType::Symlink,
            outside.to_str().unwrap(),
            b"",
        ),
        (
            "evil/pwned",
            tar::EntryType::Regular,
            "",
            b"through the link",
        ),
    ]);
    let ctx = bench.context(
        "ctx-link",
        "FROM scratch\nADD link.tar /\n",
        &[("link.tar", &link_tar)],
    );
    let layout = bench.path().join("link-layout");
    let out = bench.forge(
        &[
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
        &ctx,
    );
    let err = text(&out.stderr);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "a file was written outside through the link: {err}"
    );
    if out.status.success() {
        let files = layout_files(&layout);
        let pwned: Vec<&String> = files
            .iter()
            .filter(|(_, c)| c == b"through the link")
            .map(|(p, _)| p)
            .collect();
        let inside = outside
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        assert!(
            pwned
                .iter()
                .all(|p| p.trim_start_matches("./").starts_with(&inside)),
            "{pwned:?}"
        );
    } else {
        assert!(err.contains("evil"), "{err}");
    }
    bench.assert_usable();
}

#[test]
fn copy_of_a_missing_file_names_it_and_its_line() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let ctx = bench.context(
        "ctx",
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY nonexistent /x\n",
        &[],
    );
    let out = bench.forge(&[], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nonexistent"), "{err}");
    assert!(err.contains("line 3"), "the Dockerfile line: {err}");
    bench.assert_usable();
}

#[test]
fn a_flood_of_output_finishes_with_bounded_memory() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    // 100,000 lines of 1,000 characters: 100 MB, more than the build may hold.
    let ctx = bench.context(
        "ctx",
        &format!("{BASE}RUN line=$(printf '%01000d' 7); i=0; while [ $i -lt 100000 ]; do echo $line; i=$((i+1)); done; echo flood-done > /done\n"),
        &[],
    );
    let log = bench.path().join("progress.log");
    let child = bench
        .command(&[], &ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    drop(child);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}: {}",
        &log_text[log_text.len().saturating_sub(3000)..]
    );
    let max_rss_mb = usage.ru_maxrss / 1024;
    eprintln!(
        "flood: forge max RSS {max_rss_mb} MB, progress log {} bytes",
        log_text.len()
    );
    assert!(
        max_rss_mb < 80,
        "forge held the output: max RSS {max_rss_mb} MB"
    );
    assert!(log_text.contains("0000007"), "output shown");
    bench.assert_usable();
}

const SECRET: &str = "tok-VALUE-8675309";
const SECRET_FILE: &str = "first-line-secret\ntok-VALUE-8675309\n";

#[test]
fn secrets_stay_out_of_layers_and_progress() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let secret_file = bench.path().join("secret.txt");
    std::fs::write(&secret_file, SECRET_FILE).unwrap();
    let ctx = bench.context(
        "ctx",
        &format!(
            "{BASE}RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok; echo; wc -c < /run/secrets/tok > /len\n\
             RUN --mount=type=secret,id=viaenv,env=TOKEN echo \"token is $TOKEN\" && test ${{#TOKEN}} -eq {} && echo ok > /env-ok\n",
            SECRET.len()
        ),
        &[],
    );
    let layout = bench.path().join("layout");
    let tok = format!("id=tok,src={}", secret_file.display());
    // Builds with both secrets given; the build succeeds and its progress names neither.
    let build = |progress: &str, extra: &[&str]| {
        let secrets = [
            "--secret",
            &tok,
            "--secret",
            "id=viaenv,env=FORGE_HOSTILE_SECRET",
        ];
        let out = bench
            .command_showing(progress, &[&secrets[..], extra].concat(), &ctx)
            .env("FORGE_HOSTILE_SECRET", SECRET)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            !err.contains(SECRET) && !err.contains("first-line-secret"),
            "secret in the {progress} progress output: {err}"
        );
        err
    };
    let err = build(
        "plain",
        &[
            "-o",
            &format!("type=oci,dest={},tar=false", layout.display()),
        ],
    );
    assert!(err.contains("****"), "masked: {err}");
    assert!(err.contains("token is ****"), "{err}");
    let files = layout_files(&layout);
    for (path, content) in &files {
        assert!(
            !contains(content, SECRET.as_bytes()) && !contains(content, b"first-line-secret"),
            "secret in {path}"
        );
        assert!(
            !path.contains("run/secrets/tok"),
            "secret file in a layer: {path}"
        );
    }
    let len = files
        .iter()
        .find(|(p, _)| p.ends_with("len"))
        .expect("/len");
    assert_eq!(text(&len.1).trim(), SECRET_FILE.len().to_string());
    assert!(
        files
            .iter()
            .any(|(p, c)| p.ends_with("env-ok") && c == b"ok\n")
    );
    // Nor in any blob of the store.
    for b in std::fs::read_dir(bench.root().join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(b.path()).unwrap();
        assert!(
            !contains(&bytes, SECRET.as_bytes()),
            "secret in store blob {}",
            b.path().display()
        );
    }

    // The json progress carries the same masked lines. (--no-cache: a cached step prints nothing.)
    let err = build("json", &["--no-cache"]);
    let output: Vec<String> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v["type"] == "output")
        .map(|v| v["line"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(output.iter().any(|l| l == "token is ****"), "{err}");
    assert!(output.iter().any(|l| l == "****"), "{err}");

    // A secret past BuildKit's 500 KiB is refused before anything runs, naming it.
    let big = bench.path().join("big-secret");
    std::fs::write(&big, vec![b'x'; 600 * 1024]).unwrap();
    let out = bench.forge(
        &[
            "--no-cache",
            "--secret",
            &format!("id=tok,src={}", big.display()),
        ],
        &ctx,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("secret tok: more than the 500 KiB a secret may hold"),
        "{err}"
    );

    // A required secret that is not given: the error says which and how to give it. (A cached
    // step needs no secret, as with BuildKit: --no-cache makes it run.)
    let out = bench.forge(&["--no-cache"], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("secret \"tok\" is required") && err.contains("--secret id=tok"),
        "{err}"
    );
    // An env= secret whose variable is not set.
    let out = bench
        .command(
            &[
                "--no-cache",
                "--secret",
                "id=viaenv,env=FORGE_HOSTILE_UNSET",
            ],
            &ctx,
        )
        .env_remove("FORGE_HOSTILE_UNSET")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("FORGE_HOSTILE_UNSET"), "{err}");
    bench.assert_usable();
}

#[test]
fn network_none_and_the_default_cannot_reach_the_registry_while_granted_host_can() {
    if !prerequisites() {
        return;
    }
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let bench = Bench::new();
    let ctx = bench.context(
        "ctx",
        &format!("{BASE}RUN wget -q -O /v2.json http://{registry}/v2/ && echo REACHED-$((6*7))\n"),
        &[],
    );
    // The step's own output line (the step title does not hold the number).
    let reached = |log: &str| log.contains("REACHED-42");
    // Issue 11.4: the default network reaches no service on the host's loopback.
    let out = bench.forge(&[], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!reached(&err), "{err}");
    let out = bench.forge(&["--network", "host", "--allow", "network.host"], &ctx);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(reached(&err), "{err}");

    // Built before with the host's network, the step is not taken from the cache under
    // --network none: it runs again and cannot connect.
    let out = bench.forge(&["--network", "none"], &ctx);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("wget"), "the failing command is named: {err}");
    assert!(!reached(&err), "{err}");

    // An explicit RUN --network=none wins over the default.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{BASE}RUN --network=none wget -q -O- http://{registry}/v2/\n"),
    )
    .unwrap();
    let out = bench.forge(&[], &ctx);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    bench.assert_usable();
}

#[test]
fn ctrl_c_cancels_the_running_step_and_cleans_up() {
    signal_cancels_the_running_step_and_cleans_up(nix::sys::signal::Signal::SIGINT);
}

/// Issue 11.7: SIGHUP (a closed terminal or ssh session) killed forge by its default action, with
/// no clean-up: `run/` and `tmp/` were left behind. It now cancels the build as Ctrl-C does.
#[test]
fn sighup_cancels_the_running_step_and_cleans_up() {
    signal_cancels_the_running_step_and_cleans_up(nix::sys::signal::Signal::SIGHUP);
}

fn signal_cancels_the_running_step_and_cleans_up(signal: nix::sys::signal::Signal) {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let marker = format!("interrupt-me-{}-{signal}", std::process::id());
    let ctx = bench.context(
        "ctx",
        &format!("{BASE}RUN echo started && sleep 30 # {marker}\n"),
        &[],
    );
    let log = bench.path().join("progress.log");
    let mut child = bench
        .command(&[], &ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains(" started") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the step never started: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let interrupted = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if interrupted.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("forge still runs 10 s after {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    // Cleaned up, then killed by the signal itself, as a shell loop or `make` expects of a
    // command interrupted (an exit status of 1 read as a failure, and the loop went on).
    assert_eq!(status.signal(), Some(signal as i32), "{status:?}: {err}");
    assert!(err.contains("cancelled"), "{err}");
    // The step's processes are gone, and so is the build's scratch directory.
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        assert!(
            !text(&cmd).contains(&marker),
            "step process {} survived",
            p.path().display()
        );
    }
    for dir in ["tmp", "run"] {
        let left: Vec<_> = std::fs::read_dir(bench.root().join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}/ keeps {left:?}");
    }
    let meta = std::fs::read_to_string(bench.root().join("snapshots/metadata.json")).unwrap();
    assert!(
        !meta.contains("\"active\""),
        "a scratch snapshot is left: {meta}"
    );
    bench.assert_usable();
}

/// Waits for `child`, sent `signal`, to end; its exit status and the progress log. Fails past
/// 20 s: what this pins took minutes (or forever), and a cancelled build takes well under one.
fn interrupt(
    child: &mut std::process::Child,
    signal: nix::sys::signal::Signal,
    log: &Path,
) -> (std::process::ExitStatus, String) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let interrupted = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if interrupted.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "forge still ran 20 s after {signal}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(log).unwrap())
}

/// A signal while a base image's registry accepted the connection and never answered did
/// nothing: the pull went on through its retries (about 11 minutes) before the build failed. It
/// now cancels the build as it does during a RUN step.
#[test]
fn a_signal_while_the_base_images_registry_never_answers_cancels_the_build() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    // A registry on a port of the test's own that takes connections, holds them and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, connected) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            held.push(conn);
            let _ = accepted.send(());
        }
    });
    let ctx = bench.context(
        "ctx",
        &format!("FROM 127.0.0.1:{port}/never/answers:1\nRUN true\n"),
        &[],
    );
    let log = bench.path().join("progress.log");
    let mut child = bench
        .command(&[], &ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    if connected.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!(
            "forge never asked the registry: {}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
    let (status, err) = interrupt(&mut child, nix::sys::signal::Signal::SIGTERM, &log);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}: {err}");
    assert!(err.contains("error: the build was cancelled"), "{err}");
    let left = |dir: &str| -> Vec<_> {
        std::fs::read_dir(bench.root().join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    assert!(left("tmp").is_empty(), "tmp/ keeps {:?}", left("tmp"));
    bench.assert_usable();
    // The isolation probe the session started may have been cut off as the process exited (it
    // runs beside the pull); the next build's probe removes what it left.
    assert!(left("run").is_empty(), "run/ keeps {:?}", left("run"));
}

/// `-f` naming a FIFO nobody writes to: the read blocks in open(2), where a signal used to find
/// the build's handler waiting for a cancellation nothing watched, so only SIGKILL ended forge.
/// The read is now given up on when the build is cancelled.
#[test]
fn a_signal_while_the_dockerfile_is_a_fifo_without_a_writer_cancels_the_build() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let ctx = bench.context("ctx", BASE, &[]);
    let fifo = ctx.join("Dockerfile.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let log = bench.path().join("progress.log");
    let mut child = bench
        .command(&["-f", fifo.to_str().unwrap()], &ctx)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The build is under way once one of its threads waits in open(2) for the FIFO's writer (the
    // kernel's `wait_for_partner`), or once its thread that reads the Dockerfile (named so) is
    // there, where the kernel does not show where a thread waits.
    let tasks = PathBuf::from(format!("/proc/{}/task", child.id()));
    let reading = || {
        std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
                read("wchan") == "wait_for_partner" || read("comm").trim() == "forge-read"
            })
    };
    let started = Instant::now();
    while !reading() {
        if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "forge never started reading the FIFO: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, err) = interrupt(&mut child, nix::sys::signal::Signal::SIGINT, &log);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}: {err}");
    assert!(err.contains("error: the build was cancelled"), "{err}");
    bench.assert_usable();
}

/// `-f /dev/zero` was read whole: forge grew until the kernel killed it (about 23 GB), and
/// `forge run -f /dev/zero` read all of it before its 4 MiB cap said no, and a `.dockerignore` of
/// gigabytes was read whole. All now stop at the cap
/// and say so, naming the file. Watched from outside: killed (and failed) past 1 GiB of memory or
/// 60 s, so the bug fails the test instead of the machine.
#[test]
fn an_endless_dockerfile_or_forge_yaml_is_refused_at_the_cap() {
    if !prerequisites() {
        return;
    }
    let bench = Bench::new();
    let ctx = bench.context("ctx", BASE, &[]);
    let root = bench.root();
    let build: Vec<&str> = vec![
        "build",
        "--root",
        root.to_str().unwrap(),
        "-f",
        "/dev/zero",
        ctx.to_str().unwrap(),
    ];
    let run: Vec<&str> = vec!["run", "--check", "-f", "/dev/zero"];
    // A `.dockerignore` was read whole too (one of 8 GiB, sparse here, as a stray dump would be;
    // a device or FIFO is no regular file, which is all forge takes for one).
    let ignoring = bench.context("ignoring", BASE, &[]);
    std::fs::File::create(ignoring.join(".dockerignore"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let ignore_build: Vec<&str> = vec![
        "build",
        "--root",
        root.to_str().unwrap(),
        ignoring.to_str().unwrap(),
    ];
    let ignore_said = format!(
        "{}: larger than 4 MiB (4194304 bytes), the most forge reads of a .dockerignore",
        ignoring.join(".dockerignore").display()
    );
    for (args, said) in [
        (build, "/dev/zero: larger than 4 MiB (4194304 bytes)"),
        (run, "/dev/zero: larger than 4 MiB (4194304 bytes)"),
        (ignore_build, ignore_said.as_str()),
    ] {
        let err_file = bench.path().join("err.log");
        let child = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(&args)
            .env_remove("FORGE_ROOT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let started = Instant::now();
        let mut status = 0;
        // SAFETY: rusage is plain data, filled in by wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: polls our own child; `usage` is a valid out-pointer.
            let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if waited == pid {
                break;
            }
            let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            if rss_kb > 1 << 20 || started.elapsed() > Duration::from_secs(60) {
                // SAFETY: kills and reaps our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!(
                    "forge {args:?} read on: {} MB after {:?}",
                    rss_kb >> 10,
                    started.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(child);
        let err = std::fs::read_to_string(&err_file).unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0,
            "{args:?}: status {status}: {err}"
        );
        assert!(err.contains(said), "{args:?}: {err}");
        let max_rss_mb = usage.ru_maxrss / 1024;
        assert!(max_rss_mb < 200, "{args:?}: max RSS {max_rss_mb} MB");
    }
}
