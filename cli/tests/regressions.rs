//! Regression tests for defects found by attacking forge (issue 11), each named after what it pins.
//! RUN steps use the host's static busybox copied into the context; no registry is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::printed as text;

const BUSYBOX: &str = forge_testsupport::BUSYBOX;

/// Root and a static busybox, or `false` after a SKIP line; a panic under FORGE_E2E=require.
fn prerequisites() -> bool {
    forge_testsupport::root_and_busybox("RUN steps with the embedded runner")
}

/// A context with busybox and `dockerfile` in a fresh directory, and a store beside it.
fn context(dockerfile: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(BUSYBOX, ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let root = tmp.path().join("root");
    (tmp, ctx, root)
}

/// `forge build ARGS --root ROOT`.
fn forge(root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    common::forge(root, &all)
}

/// Issue 11.3: with `-q` or `--progress json`, a failing RUN's `last output:` block printed a
/// mounted secret's value in clear (each line of a multi-line secret too).
#[test]
fn secret_in_a_failed_steps_last_output_is_masked_in_quiet_and_json_modes() {
    if !prerequisites() {
        return;
    }
    let (tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN --mount=type=secret,id=tok [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox cat /run/secrets/tok; exit 1\"]\n",
    );
    let secret = tmp.path().join("tok");
    std::fs::write(&secret, "first-line-s3cr3t\nsecond-line-hush\n").unwrap();
    let spec = format!("id=tok,src={}", secret.display());
    for mode in [
        &["-q"][..],
        &["--progress", "json"][..],
        &["--progress", "plain"][..],
    ] {
        let mut args = vec!["--secret", spec.as_str()];
        args.extend_from_slice(mode);
        let ctx_arg = ctx.to_string_lossy();
        args.push(&ctx_arg);
        let out = forge(&root, &args);
        assert!(!out.status.success(), "{mode:?}: the step exits 1");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("s3cr3t") && !all.contains("second-line-hush"),
            "{mode:?} printed the secret:\n{all}"
        );
        assert!(
            all.contains("****"),
            "{mode:?}: the masked line is shown:\n{all}"
        );
    }
}

/// Issue 11.7: a RUN with a 1 MB argument list printed 4 MB of error.
#[test]
fn a_huge_run_command_line_is_cut_in_the_error() {
    if !prerequisites() {
        return;
    }
    // 20 arguments of 50,000 bytes, one per continuation line (a line may hold 64 KiB).
    let arg = format!("\"{}\"", "x".repeat(50_000));
    let args = vec![arg; 20].join(", \\\n    ");
    let (_tmp, ctx, root) = context(&format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 2\", \\\n    {args}]\n"
    ));
    let out = forge(&root, &["-q", &ctx.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 2"), "{stderr}");
    assert!(stderr.contains("more bytes)"), "{stderr}");
    assert!(
        out.stderr.len() < 16 * 1024,
        "{} bytes of error for a 1 MB argument",
        out.stderr.len()
    );
}

/// Issue 11.7: a context's Dockerfile that is a link to a host file outside the context was
/// followed, and its first line printed in the parse error (as root, from /etc/shadow).
#[test]
fn a_dockerfile_linking_outside_the_context_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("host-secret");
    std::fs::write(&secret, "root:TOP-SECRET-HASH:19000:0:99999:7:::\n").unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("docker")).unwrap();
    std::os::unix::fs::symlink(&secret, ctx.join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink(&secret, ctx.join("docker/Dockerfile")).unwrap();
    let root = tmp.path().join("root");
    for extra in [&[][..], &["-f", "docker/Dockerfile"][..]] {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.is_empty() {
            args[1] = ctx.join(extra[1]).to_string_lossy().into_owned();
        }
        args.push(ctx.to_string_lossy().into_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = forge(&root, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            !stderr.contains("TOP-SECRET"),
            "{extra:?} printed the file: {stderr}"
        );
        assert!(stderr.contains("outside the build context"), "{stderr}");
    }
}

/// Issue 11.7: a file name that is not UTF-8 anywhere in the context failed the build, even when
/// `.dockerignore` excludes it. Since then such a name is part of the context like any other
/// (docker copies it): ignored or not, used or not, the build goes on.
#[test]
fn a_non_utf8_name_in_the_context_does_not_fail_the_build() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(ctx.join("ignored-dir")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY a /a\n").unwrap();
    std::fs::write(ctx.join("a"), "a\n").unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad\xfe");
    std::fs::write(ctx.join(bad), "x").unwrap();
    std::fs::write(ctx.join("ignored-dir").join(bad), "x").unwrap();
    let root = tmp.path().join("root");
    let ctx_arg = ctx.to_string_lossy().into_owned();

    for ignored in ["ignored-dir\nbad*\n", "ignored-dir\n", ""] {
        std::fs::write(ctx.join(".dockerignore"), ignored).unwrap();
        let out = forge(&root, &["-q", &ctx_arg]);
        assert!(
            out.status.success(),
            ".dockerignore {ignored:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 11.1: an ADDed tar holding a character device for /dev/kmsg (c 1 11) gave a later RUN the
/// host's kernel log. The node may be unpacked (as BuildKit does), but it cannot be opened: the
/// step's root filesystem is mounted nodev.
#[test]
fn issue11_an_added_tar_with_a_char_device_cannot_reach_the_host_device() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\nADD dev.tar /\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox ls -l /kmsg; echo forge-issue11-test > /kmsg && echo WROTE-$((6*7)); exit 0\"]\n",
    );
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Char);
    header.set_path("kmsg").unwrap();
    header.set_mode(0o666);
    header.set_size(0);
    header.set_device_major(1).unwrap();
    header.set_device_minor(11).unwrap();
    header.set_cksum();
    builder.append(&header, std::io::empty()).unwrap();
    std::fs::write(ctx.join("dev.tar"), builder.into_inner().unwrap()).unwrap();
    let out = forge(
        &root,
        &["--progress", "plain", "--no-cache", &ctx.to_string_lossy()],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The node is there (the step saw it), and opening it was refused.
    assert!(
        all.contains("1,  11"),
        "the device was not unpacked:\n{all}"
    );
    assert!(
        !all.contains("WROTE-42"),
        "the step wrote to the host's /dev/kmsg:\n{all}"
    );
    assert!(all.contains("Permission denied"), "{all}");
}

/// Issue 11.1: `RUN --security=insecure` lifts the seccomp filter only when the build grants
/// `--allow security.insecure`; without it the build is refused before any step runs.
#[test]
fn issue11_run_security_insecure_needs_the_allow_entitlement() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox grep Seccomp: /proc/self/status\"]\n\
         RUN --security=insecure [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox grep Seccomp: /proc/self/status\"]\n",
    );
    let ctx_arg = ctx.to_string_lossy();
    let out = forge(&root, &["--progress", "plain", &ctx_arg]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("--allow security.insecure"), "{all}");
    assert_eq!(
        seccomp_modes(&all),
        "",
        "a step ran before the refusal:\n{all}"
    );

    let out = forge(
        &root,
        &[
            "--progress",
            "plain",
            "--allow",
            "security.insecure",
            &ctx_arg,
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The sandboxed step first, then the insecure one.
    assert_eq!(seccomp_modes(&all), "20", "{all}");
}

/// The modes `grep Seccomp: /proc/self/status` printed, in order (the command line, which progress
/// and errors show too, has no digit after the colon).
fn seccomp_modes(output: &str) -> String {
    output
        .match_indices("Seccomp:")
        .filter_map(|(i, m)| {
            output[i + m.len()..]
                .trim_start_matches([' ', '\t'])
                .chars()
                .next()
        })
        .filter(char::is_ascii_digit)
        .collect()
}

/// Runs `forge <args> --root root` (a store command) until `stop` is set; returns how many ran.
fn hammer(root: &Path, args: &[&str], stop: &std::sync::atomic::AtomicBool) -> usize {
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let out = common::forge(root, args);
        assert!(
            out.status.success(),
            "forge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    n
}

/// Issue 11.2: `forge images` started while a build wrote a new layer removed the build's
/// temporary file (`open temp file .../ingest/layer.PID.0.tmp: No such file or directory`, 5 of 5
/// tries): opening the store cleaned ingest/ whenever no other process held the store's lock, and a
/// layer being written held none. The build is a store session now, and so is each temporary file.
#[test]
fn forge_images_during_a_layer_write_leaves_the_builds_temp_file_alone() {
    if !prerequisites() {
        return;
    }
    // About 100 MB of random data: its layer takes a while to hash and compress.
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox head -c 100000000 /dev/urandom > /big\"]\n",
    );
    std::fs::create_dir_all(&root).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, listed) = std::thread::scope(|s| {
        let lister = s.spawn(|| hammer(&root, &["images"], &stop));
        let out = forge(&root, &["-q", &ctx.to_string_lossy()]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, lister.join().unwrap())
    });
    assert!(
        out.status.success(),
        "the build failed while `forge images` ran {listed} times: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed > 0);
}

/// Issue 11.2: `forge prune` during a build removed blobs the build had made but not yet recorded
/// (6 of 6 builds with --push failed, and images were listed whose blobs were gone). A prune now
/// waits for running builds, and a cache record whose blobs are gone is a miss, never a hit.
#[test]
fn prune_during_a_build_waits_and_a_record_without_its_blobs_is_a_miss() {
    if !prerequisites() {
        return;
    }
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox sleep 1; echo made > /made; /bin/busybox head -c 20000000 /dev/urandom > /r\"]\n",
    );
    std::fs::create_dir_all(&root).unwrap();
    let tag = format!("{registry}/forge-test/prune-race:{}", std::process::id());
    let ctx_arg = ctx.to_string_lossy().into_owned();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, pruned) = std::thread::scope(|s| {
        let pruner = s.spawn(|| {
            hammer(
                &root,
                &["prune", "--older-than", "0s", "--keep-bytes", "0"],
                &stop,
            )
        });
        let out = forge(&root, &["-q", "--push", "-t", &tag, &ctx_arg]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, pruner.join().unwrap())
    });
    assert!(
        out.status.success(),
        "the build failed while `forge prune` ran {pruned} times: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Take the RUN step's layer away behind the cache's back (what a prune of an older forge, or a
    // hand-repaired store, leaves): the next build must run the step again, not claim it cached
    // and then fail to push.
    let blobs = root.join("blobs/sha256");
    let mut removed = 0;
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        if e.metadata().unwrap().len() > 10_000_000 {
            std::fs::remove_file(e.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 1, "the 20 MB layer was in the store");
    let again = forge(
        &root,
        &["--progress", "plain", "--push", "-t", &tag, &ctx_arg],
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    let run_block = stderr
        .split("\n\n")
        .find(|b| b.contains("RUN [") && b.contains("sleep 1"))
        .unwrap_or_else(|| panic!("no RUN block in:\n{stderr}"));
    assert!(
        !run_block.contains("CACHED"),
        "a record whose layer is gone was served as a hit:\n{run_block}"
    );
}

/// Issue 11.7: a 401 with wrong credentials said only that "the login used may not push there". A
/// real Distribution registry with htpasswd auth on a free loopback port: wrong credentials are
/// named as refused, missing ones as missing, for a push and for a pull.
#[test]
fn a_refused_login_says_the_credentials_were_refused() {
    let Some(registry) = forge_testsupport::auth_registry() else {
        return;
    };
    let addr = registry.addr.clone();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    std::fs::write(ctx.join("f"), "x\n").unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(
        wrong.join("config.json"),
        format!(r#"{{"auths":{{"{addr}":{{"auth":"Zm9yZ2U6d3Jvbmc="}}}}}}"#),
    )
    .unwrap();
    let none = tmp.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    let build = |config: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_forge"))
            .arg("build")
            .arg("--root")
            .arg(tmp.path().join("root"))
            .args(args)
            .arg(&ctx)
            .env("DOCKER_CONFIG", config)
            .env("REGISTRY_AUTH_FILE", config.join("none.json"))
            .env("XDG_RUNTIME_DIR", config)
            .env("HOME", config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tag = format!("{addr}/forge-test/auth:1");
    let push_wrong = build(&wrong, &["-q", "--push", "-t", &tag]);
    assert!(
        push_wrong.contains("the credentials for forge were refused (status 401)"),
        "{push_wrong}"
    );
    let push_none = build(&none, &["-q", "--push", "-t", &tag]);
    assert!(
        push_none.contains("wants a login (status 401) and none was found"),
        "{push_none}"
    );
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {tag}\n")).unwrap();
    let pull_wrong = build(&wrong, &["-q"]);
    assert!(
        pull_wrong.contains("the credentials for forge were refused (status 401)"),
        "{pull_wrong}"
    );
}

/// The image config of the OCI layout directory `dir` (`-o type=oci,dest=DIR,tar=false`).
fn oci_config(dir: &Path) -> serde_json::Value {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
            .to_string();
        dir.join("blobs/sha256").join(d)
    };
    let index = read(dir.join("index.json"));
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    read(blob(&manifest["config"]["digest"]))
}

/// CVE-2024-24557 (moby's classic builder): a changed HEALTHCHECK or ONBUILD did not change the
/// cache key, so a poisoned or stale image config was served from the cache. Here each change must
/// reach the built image's config.
#[test]
fn cve_2024_24557_a_changed_healthcheck_or_onbuild_is_not_served_from_the_cache() {
    if !prerequisites() {
        return;
    }
    let (tmp, ctx, root) = context("");
    for (i, (health, onbuild)) in [("echo one", "RUN echo one"), ("echo two", "RUN echo two")]
        .into_iter()
        .enumerate()
    {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nHEALTHCHECK CMD {health}\nONBUILD {onbuild}\n"
            ),
        )
        .unwrap();
        let out_dir = tmp.path().join(format!("oci-{i}"));
        let spec = format!("type=oci,dest={},tar=false", out_dir.display());
        let out = forge(&root, &["-q", "-o", &spec, &ctx.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = oci_config(&out_dir);
        let test = config["config"]["Healthcheck"]["Test"].to_string();
        assert!(test.contains(health), "build {i}: healthcheck {test}");
        let triggers = config["config"]["OnBuild"].to_string();
        assert!(triggers.contains(onbuild), "build {i}: onbuild {triggers}");
    }
}

/// CVE-2025-31133 (runc): an image whose /dev/null is a link to a procfs file made the runtime's
/// bind of /dev/null land on that file, so a step's writes to /dev/null reached the host kernel
/// setting. A step's /dev is made anew for it: the image's /dev/null is never followed.
#[test]
fn cve_2025_31133_an_image_dev_null_linked_to_procfs_does_not_reach_the_host() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY dev /dev\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo '|/tmp/pwned %p' > /dev/null; echo wrote\"]\n",
    );
    std::fs::create_dir_all(ctx.join("dev")).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", ctx.join("dev/null")).unwrap();
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = forge(&root, &["--progress", "plain", &ctx.to_string_lossy()]);
    let after = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert_eq!(before, after, "the host's core_pattern changed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
}

/// A directory on the host with a file in it, for the step to try to reach; removed on drop.
struct HostMarker(PathBuf);

impl HostMarker {
    fn new(name: &str) -> HostMarker {
        let dir = PathBuf::from(format!("/tmp/forge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        std::fs::write(dir.join("secret"), "host data\n").unwrap();
        std::fs::write(dir.join("b/c/keep"), "host data\n").unwrap();
        HostMarker(dir)
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds `dockerfile` (with busybox in the context, plus `prepare` run on the context first) and
/// returns the plain progress and whether the build succeeded. Whether it fails does not matter to
/// these tests: only that the host marker was not reached, which the step says with `REACHED`
/// (written `REA""CHED` in the Dockerfile, so the step's description, shown in the log, is not it).
fn attack(dockerfile: &str, prepare: impl FnOnce(&Path)) -> (bool, String) {
    let (_tmp, ctx, root) = context(dockerfile);
    prepare(&ctx);
    let out = forge(&root, &["--progress", "plain", &ctx.to_string_lossy()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SH: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// CVE-2024-21626 (runc): a file descriptor of the host leaked into the container, and
/// `WORKDIR /proc/self/fd/N` put the step's working directory on the host. No descriptor a step
/// inherits leads out of its root.
#[test]
fn cve_2024_21626_workdir_through_a_leaked_fd_does_not_reach_the_host() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2024-21626");
    let rel = marker.0.strip_prefix("/").unwrap().display().to_string();
    for fd in 3..=9 {
        let (_, log) = attack(
            &format!(
                "{SH}WORKDIR /proc/self/fd/{fd}\n\
                 RUN for up in . .. ../.. ../../.. ../../../.. ../../../../..; do \
                 test -e \"$up/{rel}/secret\" && echo REA\"\"CHED; done; true\n"
            ),
            |_| {},
        );
        assert!(!log.contains("REACHED"), "fd {fd}:\n{log}");
    }
}

/// CVE-2024-1753 (buildah): a bind mount whose source is a link to `/` in the context mounted the
/// host's root. A bind source is resolved inside the context.
#[test]
fn cve_2024_1753_a_bind_mount_of_a_link_to_the_host_root_stays_in_the_context() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2024-1753");
    let rel = marker.0.strip_prefix("/").unwrap().display().to_string();
    let (_, log) = attack(
        &format!(
            "{SH}RUN --mount=type=bind,source=rootlink,target=/mnt \
             test -e /mnt/{rel}/secret && echo REA\"\"CHED; true\n"
        ),
        |ctx| std::os::unix::fs::symlink("/", ctx.join("rootlink")).unwrap(),
    );
    assert!(!log.contains("REACHED"), "{log}");
}

/// CVE-2024-9675 (buildah): a cache mount's `source` could climb out of the cache root and expose
/// host directories. The source stays inside the cache.
#[test]
fn cve_2024_9675_a_cache_mount_source_cannot_climb_out_of_the_cache() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2024-9675");
    let rel = marker.0.strip_prefix("/").unwrap().display().to_string();
    let (_, log) = attack(
        &format!(
            "{SH}RUN --mount=type=cache,id=c,source=../../../../../../../../,target=/c \
             test -e /c/{rel}/secret && echo REA\"\"CHED; true\n"
        ),
        |_| {},
    );
    assert!(!log.contains("REACHED"), "{log}");
}

/// CVE-2024-23652 (BuildKit): the clean-up of mount stubs followed links a step had put in their
/// place and removed files outside the container. Here a step swaps the stub's parent for a link
/// to a host directory; the host directory keeps its files.
#[test]
fn cve_2024_23652_mount_stub_clean_up_stays_inside_the_root() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2024-23652");
    let host = marker.0.display().to_string();
    let (_, log) = attack(
        &format!(
            "{SH}RUN --mount=type=tmpfs,target=/a/b/c rm -rf /a/b/c 2>/dev/null; \
             rm -rf /a 2>/dev/null; ln -s {host} /a 2>/dev/null; true\n"
        ),
        |_| {},
    );
    assert!(
        marker.0.join("b/c/keep").exists() && marker.0.join("secret").exists(),
        "files outside the root were removed:\n{log}"
    );
}

/// CVE-2024-23651 (BuildKit): two steps running in parallel on one cache mount raced: one swapped a
/// directory of the cache for a link to a host path while the other's mount of that directory was
/// being set up, and the mount followed the link on the host. Here a stage keeps swapping the
/// cache's `sub` between a directory, an absolute link to a host directory and a link to `/`, while
/// reader stages mount the same cache (whole, and with `source=sub`) in parallel with it.
/// No reader ever sees the host's files, and the readers did run during the swapping.
#[test]
fn cve_2024_23651_a_cache_mount_raced_by_a_parallel_step_stays_in_the_cache() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2024-23651");
    let host = marker.0.display().to_string();
    const READERS: usize = 8;
    let mut dockerfile = SH.replacen("FROM scratch", "FROM scratch AS base", 1);
    // The swapper runs until every reader has left its mark in the cache, or 30 s at most, and says
    // how many marks it saw.
    dockerfile.push_str(&format!(
        "FROM base AS swap\n\
         RUN --mount=type=cache,id=race,target=/c sh -c 'end=$(($(date +%s)+30)); \
         while [ $(ls /c | grep -c ^done-) -lt {READERS} ] && [ $(date +%s) -lt $end ]; do \
         rm -rf /c/sub; mkdir -p /c/sub; rm -rf /c/sub; ln -s {host} /c/sub; \
         rm -f /c/sub; ln -s / /c/sub; done; echo swap\"\"per saw $(ls /c | grep -c ^done-) readers'\n"
    ));
    let forms = [
        "type=cache,id=race,target=/m",
        "type=cache,id=race,target=/m,source=sub",
    ];
    for n in 0..READERS {
        let form = forms[n % forms.len()];
        dockerfile.push_str(&format!(
            "FROM base AS reader{n}\n\
             RUN --mount={form} --mount=type=cache,id=race,target=/all sh -c 'i=0; \
             while [ $i -lt 200 ]; do test -e /m/sub/secret && echo REA\"\"CHED; \
             test -e /m/secret && echo REA\"\"CHED; test -e /m/sub{host}/secret && echo REA\"\"CHED; \
             i=$((i+1)); done; touch /all/done-{n}; echo rea\"\"der {n} done'\n"
        ));
    }
    dockerfile.push_str("FROM base\nCOPY --from=swap /bin/busybox /s\n");
    for n in 0..READERS {
        dockerfile.push_str(&format!("COPY --from=reader{n} /bin/busybox /r{n}\n"));
    }
    let (_tmp, ctx, root) = context(&dockerfile);
    let out = forge(
        &root,
        &["--progress", "plain", "--jobs", "4", &ctx.to_string_lossy()],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("REACHED"), "{log}");
    assert!(
        marker.0.join("secret").exists() && marker.0.join("b/c/keep").exists(),
        "the host directory changed:\n{log}"
    );
    for n in 0..READERS {
        assert!(log.contains(&format!("reader {n} done")), "{log}");
    }
    // The race was run: the swapper was still swapping when at least one reader finished.
    let saw: usize = log
        .lines()
        .find_map(|l| l.split("swapper saw ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no swapper line:\n{log}"));
    assert!(saw >= 1, "no reader ran while the swapper did:\n{log}");
}

/// Issue 11, `forge build --memory`: a RUN step past the limit fails the build, and the error says
/// the kernel killed it for passing that limit (exit code 137 alone could be any SIGKILL). The
/// same build without the limit succeeds.
#[test]
fn issue11_a_run_step_past_its_memory_limit_fails_naming_the_limit() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(&format!(
        "{SH}RUN x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo length ${{#x}}\n"
    ));
    let ctx = ctx.to_string_lossy().into_owned();
    let out = forge(&root, &["--progress", "plain", "--memory", "32m", &ctx]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("exit code 137 (killed by the kernel: the step passed its memory limit of 32 MiB, --memory)"),
        "{log}"
    );
    let out = forge(&root, &["--progress", "plain", &ctx]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("length 100000000"), "{log}");
}

/// One tar entry written byte for byte, so that names the `tar` crate's builder refuses (`..`,
/// absolute) can be made: `kind` is the type flag, `link` the link target.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        old.linkflag = [kind];
    }
    h.set_mode(if name == "busybox" { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    if kind == b'3' {
        h.set_device_major(1).unwrap();
        h.set_device_minor(11).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A context tar: a Dockerfile that shows the context, busybox, then `hostile` entries.
fn context_tar(hostile: &[(&str, u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    let dockerfile = format!("{SH}COPY . /ctx\nRUN find /ctx | sort\n");
    raw_entry(&mut out, "Dockerfile", b'0', "", dockerfile.as_bytes());
    raw_entry(
        &mut out,
        "busybox",
        b'0',
        "",
        &std::fs::read(BUSYBOX).unwrap(),
    );
    for (name, kind, link) in hostile {
        raw_entry(&mut out, name, *kind, link, b"forge-cve-2026-28406\n");
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Files below `dir`, for a before/after comparison.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    forge_testsupport::walk(dir)
}

/// CVE-2026-28406's class: a build context sent as a tar (`forge build - < ctx.tar`) whose entries
/// climb out of the context, directly, through a link an earlier entry made, or as a hard link or
/// a device, must not write or link anything outside the context. Each hostile tar either fails
/// naming the entry or lands inside the context; the host directory it aims at is unchanged.
#[test]
fn cve_2026_28406_a_context_tar_cannot_reach_outside_the_context() {
    if !prerequisites() {
        return;
    }
    let marker = HostMarker::new("cve-2026-28406");
    let host = marker.0.display().to_string();
    let rel = host.trim_start_matches('/').to_string();
    let before = files_below(&marker.0);
    let up = "../".repeat(12);
    /// A tar entry: name, type flag, link target.
    type Entry = (String, u8, String);
    let cases: Vec<(String, Vec<Entry>, bool)> = vec![
        // (label, entries, must the build be refused?)
        (
            "dot-dot path".into(),
            vec![(format!("{up}{rel}/pwned"), b'0', String::new())],
            true,
        ),
        // A link is kept as a link wherever it points, as BuildKit keeps it (session 36), and
        // what comes through it lands inside the context, as through the absolute one below.
        (
            "link up, then through it".into(),
            vec![
                ("up".into(), b'2', up.clone()),
                (format!("up/{rel}/pwned"), b'0', String::new()),
            ],
            false,
        ),
        (
            "absolute link, then through it".into(),
            vec![
                ("abs".into(), b'2', host.clone()),
                ("abs/pwned".into(), b'0', String::new()),
            ],
            false,
        ),
        (
            "hard link out".into(),
            vec![("hl".into(), b'1', format!("{up}{rel}/secret"))],
            true,
        ),
        (
            "absolute hard link".into(),
            vec![("hl".into(), b'1', format!("{host}/secret"))],
            true,
        ),
        (
            "absolute path".into(),
            vec![(format!("{host}/pwned"), b'0', String::new())],
            false,
        ),
        (
            "device node".into(),
            vec![("kmsg".into(), b'3', String::new())],
            true,
        ),
    ];
    for (label, entries, refused) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let entries: Vec<(&str, u8, &str)> = entries
            .iter()
            .map(|(n, k, l)| (n.as_str(), *k, l.as_str()))
            .collect();
        let out = common::forge_with_stdin(
            &root,
            &["build", "--progress", "plain", "-"],
            &context_tar(&entries),
        );
        let log = text(&out);
        assert_eq!(
            files_below(&marker.0),
            before,
            "{label}: the host changed:\n{log}"
        );
        assert_eq!(
            std::fs::read_to_string(marker.0.join("secret")).unwrap(),
            "host data\n",
            "{label}"
        );
        if refused {
            assert!(!out.status.success(), "{label}: accepted:\n{log}");
            assert!(log.contains("refusing tar entry"), "{label}:\n{log}");
        } else {
            // Accepted inside the context: the step sees the entry below /ctx.
            assert!(out.status.success(), "{label}:\n{log}");
            assert!(
                log.contains("pwned"),
                "{label}: the entry is not in the context:\n{log}"
            );
        }
    }
}

/// `forge build -` with a gzip tar, with a lone Dockerfile, and `-f -` beside a context directory,
/// as `docker build` reads standard input.
#[test]
fn a_context_or_a_dockerfile_comes_from_standard_input() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &context_tar(&[("hello.txt", b'0', "")])).unwrap();
    let out = common::forge_with_stdin(
        &root,
        &["build", "--progress", "plain", "-"],
        &gz.finish().unwrap(),
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("/ctx/hello.txt"), "{log}");

    let out = common::forge_with_stdin(
        &root,
        &["build", "--progress", "plain", "-"],
        b"FROM scratch\nLABEL from=stdin\n",
    );
    assert!(out.status.success(), "{}", text(&out));

    let (_tmp, ctx, _) = context("");
    let out = common::forge_with_stdin(
        &root,
        &[
            "build",
            "--progress",
            "plain",
            "-f",
            "-",
            &ctx.to_string_lossy(),
        ],
        format!("{SH}RUN echo from-stdin-dockerfile\n").as_bytes(),
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("from-stdin-dockerfile"), "{log}");

    let out = common::forge_with_stdin(&root, &["build", "-f", "-", "-"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot both be read"), "{}", text(&out));
}

/// A service on the host's loopback, standing for the registry on 127.0.0.1:5000 that a step could
/// read: it answers every connection with a marker line and counts them.
struct LoopbackService {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const SERVICE_MARKER: &str = "host-loopback-service-says-42";

impl LoopbackService {
    fn start() -> LoopbackService {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        // Lives until the test process ends; it only ever answers on loopback.
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn.write_all(format!("{SERVICE_MARKER}\n").as_bytes());
            }
        });
        LoopbackService { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Issue 11.4: a RUN step reached the host's network services (the registry API on
/// 127.0.0.1:5000) by default. Now it reaches none, directly or through forge's proxy; the host's
/// network needs `--network host --allow network.host`, and `RUN --network=host` without the
/// grant is refused before any step runs, naming its Dockerfile line.
#[test]
fn issue11_run_step_cannot_reach_host_loopback() {
    if !prerequisites() {
        return;
    }
    let service = LoopbackService::start();
    let port = service.port;
    let (_tmp, ctx, root) = context(&format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox nc -w 3 127.0.0.1 {port} </dev/null; \
         printf 'GET http://127.0.0.1:{port}/ HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | /bin/busybox nc -w 5 127.0.0.1 3128; exit 0\"]\n"
    ));
    let ctx_arg = ctx.to_string_lossy();
    let out = forge(&root, &["--progress", "plain", "--no-cache", &ctx_arg]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains(SERVICE_MARKER),
        "the step reached the host:\n{all}"
    );
    assert!(all.contains("403 Forbidden"), "{all}");
    assert!(all.contains("--allow network.host"), "{all}");
    assert_eq!(service.connections(), 0, "{all}");

    // The host's network is there when granted, and only then.
    let out = forge(&root, &["--network", "host", "--no-cache", &ctx_arg]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("--allow network.host"), "{all}");
    let out = forge(
        &root,
        &[
            "--progress",
            "plain",
            "--no-cache",
            "--network",
            "host",
            "--allow",
            "network.host",
            &ctx_arg,
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(SERVICE_MARKER), "{all}");
    assert!(service.connections() >= 1, "{all}");

    let before = service.connections();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN --network=host [\"/bin/busybox\", \"nc\", \"-w\", \"3\", \"127.0.0.1\", \"{port}\"]\n"
        ),
    )
    .unwrap();
    let out = forge(&root, &["--progress", "plain", &ctx_arg]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("Dockerfile:3:5") && all.contains("RUN --network=host is not allowed"),
        "{all}"
    );
    assert!(all.contains("--allow network.host"), "{all}");
    assert_eq!(
        service.connections(),
        before,
        "a step ran before the refusal:\n{all}"
    );
    let out = forge(
        &root,
        &["--progress", "plain", "--allow", "network.host", &ctx_arg],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(SERVICE_MARKER), "{all}");
}

/// C7: a COPY's key held the list of every context path the whole build copies, so one new
/// `COPY` at the end of a Dockerfile, another `--target`, or another Dockerfile on the same
/// context ran every earlier COPY and RUN again (and found nothing in a registry cache made by
/// the other). Each step is now keyed by what it reads of the context, as BuildKit keys it.
#[test]
fn a_copy_added_elsewhere_leaves_the_other_steps_cached() {
    if !prerequisites() {
        return;
    }
    let first = "FROM scratch AS builder\nCOPY busybox /bin/busybox\nCOPY a.txt /a.txt\n\
                 RUN [\"/bin/busybox\", \"cp\", \"/a.txt\", \"/built\"]\n\
                 RUN --mount=type=bind,source=sub,target=/sub [\"/bin/busybox\", \"cp\", \"/sub/s.txt\", \"/bound\"]\n\
                 FROM builder\nCOPY b.txt /b.txt\n";
    let (_tmp, ctx, root) = context(first);
    std::fs::write(ctx.join("a.txt"), "a\n").unwrap();
    std::fs::write(ctx.join("b.txt"), "b\n").unwrap();
    std::fs::write(ctx.join("c.txt"), "c\n").unwrap();
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("sub/s.txt"), "s\n").unwrap();
    let ctx_arg = ctx.to_string_lossy().into_owned();
    let build = |extra: &[&str]| {
        let mut args = vec!["--progress", "json"];
        args.extend_from_slice(extra);
        args.push(&ctx_arg);
        let out = forge(&root, &args);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        said
    };
    // The steps that ran, by their titles (the context's loading aside).
    let steps_run = |log: &str| -> Vec<String> {
        let (ran, _) = common::ran_and_cached(&common::vertices(log));
        ran.into_iter()
            .filter(|n| !n.starts_with("[internal]"))
            .collect()
    };
    build(&[]);
    // One more COPY, of a path nothing read before, at the very end: only it runs.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{first}COPY c.txt /c.txt\n"),
    )
    .unwrap();
    let out = build(&[]);
    assert_eq!(
        steps_run(&out),
        vec!["[stage-1] COPY c.txt /c.txt"],
        "{out}"
    );
    // The first stage alone (`--target`): everything it has was built.
    let out = build(&["--target", "builder"]);
    assert_eq!(steps_run(&out), Vec::<String>::new(), "{out}");
    // What a step reads still keys it: a file under the bound directory runs that RUN (and
    // what follows it), and not the steps before it.
    std::fs::write(ctx.join("sub/s.txt"), "s2\n").unwrap();
    let out = build(&[]);
    assert_eq!(
        steps_run(&out),
        vec![
            "[builder] RUN --mount=type=bind,source=sub,target=/sub [\"/bin/busybox\", \"cp\", \"/sub/s.txt\", \"/bound\"]"
                .to_string(),
            "[stage-1] COPY b.txt /b.txt".to_string(),
            "[stage-1] COPY c.txt /c.txt".to_string(),
        ],
        "{out}"
    );
}

/// A build with `SOURCE_DATE_EPOCH` `epoch` (in its environment, as CI sets it) of `ctx` on
/// `root`: its `--progress json` log, and the manifest digest and image ID its
/// `--metadata-file` names.
fn build_at_epoch(root: &Path, ctx: &Path, epoch: &str, extra: &[&str]) -> (String, String) {
    let metadata = root.with_extension(format!("metadata-{epoch}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--progress", "json", "--root"])
        .arg(root)
        .arg("--metadata-file")
        .arg(&metadata)
        .args(extra)
        .arg(ctx)
        .env("SOURCE_DATE_EPOCH", epoch)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let digests = format!(
        "{} {}",
        m["containerimage.digest"].as_str().unwrap(),
        m["containerimage.config.digest"].as_str().unwrap()
    );
    (log, digests)
}

/// The Dockerfile steps of a `--progress json` log that ran, and the phases that re-stamped.
fn ran_and_restamped(log: &str) -> (Vec<String>, Vec<String>) {
    let (ran, _) = common::ran_and_cached(&common::vertices(log));
    let ran = ran
        .into_iter()
        .filter(|n| !n.starts_with("[internal]"))
        .collect();
    let restamped = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "phase.done")
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("re-stamping"))
        .collect();
    (ran, restamped)
}

/// Two stages: a builder whose layers a build of the last stage keeps only as snapshots, and the
/// image. `/old` keeps a time before both epochs (the re-stamp must leave it), everything else
/// is newer than both (the checkout's files, what the RUN writes).
const TWO_EPOCHS: &str = "FROM scratch AS builder\nCOPY busybox /bin/busybox\nCOPY a.txt /a.txt\n\
    RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cp /a.txt /built && /bin/busybox touch -d @1000000000 /old\"]\n\
    FROM scratch\nCOPY --from=builder /built /old /\nCOPY b.txt /b.txt\n";

/// The two epochs the C5 tests build with, e1 before e2.
const EPOCHS: (&str, &str) = ("1700000000", "1700000100");

/// A context of [`TWO_EPOCHS`] with the files it copies.
fn two_epochs_context() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, ctx, root) = context(TWO_EPOCHS);
    std::fs::write(ctx.join("a.txt"), "a\n").unwrap();
    std::fs::write(ctx.join("b.txt"), "b\n").unwrap();
    (tmp, ctx, root)
}

/// Finding C5: the cache served a build with SOURCE_DATE_EPOCH e2 the layers a build with e1 had
/// written, their mtimes clamped to e1, so the "reproducible" image depended on which epoch had
/// filled the cache (cache keys hold no epoch: with the commit's time as epoch, a key with it
/// would run every step of every commit). Layers from the cache are now re-stamped to the build's
/// epoch at export: the image is the one a cold build with e2 makes, the steps stay cached, a
/// second build with e2 takes what the first re-stamped, and the records keep serving e1 builds
/// their image, with nothing re-stamped.
#[test]
fn c5_a_cache_filled_with_another_source_date_epoch_gives_the_cold_builds_image() {
    if !prerequisites() {
        return;
    }
    let (tmp, ctx, root) = two_epochs_context();
    let (e1, e2) = EPOCHS;

    let (log, first) = build_at_epoch(&root, &ctx, e1, &[]);
    let (ran, restamped) = ran_and_restamped(&log);
    assert_eq!(ran.len(), 5, "{log}");
    assert!(
        restamped.is_empty(),
        "a cold build re-stamps nothing: {restamped:?}"
    );

    let (log, cached) = build_at_epoch(&root, &ctx, e2, &[]);
    let (ran, restamped) = ran_and_restamped(&log);
    assert!(ran.is_empty(), "every step cached: {ran:?}");
    let (_, cold) = build_at_epoch(&tmp.path().join("cold"), &ctx, e2, &[]);
    assert_eq!(
        cached, cold,
        "cached with e1's layers vs a cold build with e2"
    );
    assert_ne!(cached, first);
    assert_eq!(
        restamped,
        vec![format!(
            "re-stamping 2 cached layers to SOURCE_DATE_EPOCH {e2}"
        )]
    );

    // Built with e2 again: what the re-stamp made is remembered, and nothing is re-stamped.
    let (log, remembered) = build_at_epoch(&root, &ctx, e2, &[]);
    assert_eq!(ran_and_restamped(&log), (vec![], vec![]), "{log}");
    assert_eq!(remembered, cold);

    // The e1 records are as they were: an e1 build gets its image, re-stamping nothing.
    let (log, again) = build_at_epoch(&root, &ctx, e1, &[]);
    assert_eq!(ran_and_restamped(&log), (vec![], vec![]), "{log}");
    assert_eq!(again, first);
}

/// Finding C5, for a layer kept only as a snapshot: the builder stage's layers, made by a build of
/// the last stage with e1, were written when a later build exported that stage with the epoch the
/// record carried (e1) instead of the later build's. The snapshot has the files' own times, so
/// written with e2 it is the layer a cold build with e2 writes.
#[test]
fn c5_a_stage_kept_as_snapshots_is_written_with_the_exporting_builds_epoch() {
    if !prerequisites() {
        return;
    }
    let (tmp, ctx, root) = two_epochs_context();
    let (e1, e2) = EPOCHS;
    build_at_epoch(&root, &ctx, e1, &[]);
    let target = ["--target", "builder"];
    let (log, exported) = build_at_epoch(&root, &ctx, e2, &target);
    let (ran, restamped) = ran_and_restamped(&log);
    assert!(ran.is_empty(), "the stage's steps are cached: {ran:?}");
    assert!(
        restamped.is_empty(),
        "written, not re-stamped: {restamped:?}"
    );
    let (_, cold) = build_at_epoch(&tmp.path().join("cold"), &ctx, e2, &target);
    assert_eq!(exported, cold);
}
