//! `--runner containerd` where several forge processes share one containerd: what one process
//! takes for a left-over step of a killed forge must be one, whatever PID namespace it runs in.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::printed;

/// Regression (containerd sweep 03): a forge connecting to containerd killed every step container
/// whose forge process id it could not see. A forge in a PID namespace of its own (a CI job's
/// container given the host's socket) sees none, and killed a running build's step. A step's
/// directory is now locked by its forge while the step lives, and only an unlocked one is left
/// over.
#[test]
fn a_forge_in_another_pid_namespace_leaves_a_running_builds_step_alone() {
    if !forge_testsupport::root(
        "the containerd runner is driven as root, unshare makes the PID namespace",
    ) {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(address) = forge_testsupport::containerd() else {
        return;
    };
    let Some(_) = forge_testsupport::tool("unshare") else {
        return;
    };
    let dir = forge_testsupport::scratch("forge-ctrd-pidns");
    let store = dir.path().join("store");
    let write_ctx = |name: &str, run: &str| {
        let ctx = dir.path().join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), format!("FROM {busybox}\n{run}\n")).unwrap();
        ctx
    };
    let long = write_ctx("long", "RUN sleep 6 && echo slept > /slept");
    let other = write_ctx("other", "RUN --network=none echo other > /other");
    let forge = |args: &mut Command| {
        args.arg("build")
            .args(["--progress=plain", "--runner=containerd", "--root"])
            .arg(&store)
            .env("CONTAINERD_ADDRESS", &address)
            .env_remove("FORGE_ROOT");
    };
    let mut first = Command::new(env!("CARGO_BIN_EXE_forge"));
    forge(&mut first);
    let first = first
        .arg(&long)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the long step runs (its container exists), a second forge connects from a PID
    // namespace of its own.
    let steps = dir.path().join("store/containerd-steps");
    let started = Instant::now();
    while !std::fs::read_dir(&steps).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the long step never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Command::new("unshare");
    second
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(env!("CARGO_BIN_EXE_forge"));
    forge(&mut second);
    // Whether its own step runs there is not what is judged: its connecting is.
    let _ = second.arg(&other).output().unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the running build's step was killed:\n{}",
        printed(&out)
    );
}

/// Regression (containerd sweep 05): with the same Dockerfile and SOURCE_DATE_EPOCH the two
/// runners gave two images: every containerd RUN layer also held `etc/` (and `var/` below a
/// cache mount's target), which runc's mount points had copied up into the step's layer.
#[test]
fn both_runners_make_the_same_image() {
    if !forge_testsupport::root("the containerd runner is driven as root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(address) = forge_testsupport::containerd() else {
        return;
    };
    let dir = forge_testsupport::scratch("forge-ctrd-same");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {busybox}\n\
             RUN mkdir -p /app && echo built > /app/f\n\
             RUN --mount=type=cache,target=/var/cache/pkgs touch /var/cache/pkgs/p && echo done > /done\n"
        ),
    )
    .unwrap();
    let id = |runner: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["build", "-q", "--runner", runner, "--root"])
            .arg(dir.path().join(format!("store-{runner}")))
            .arg(&ctx)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("CONTAINERD_ADDRESS", &address)
            .env_remove("FORGE_ROOT")
            .output()
            .unwrap();
        assert!(out.status.success(), "{runner}: {}", printed(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(id("containerd"), id("embedded"));
}

/// Regression (containerd sweep 06): a socket that takes the connection and never answers held
/// the build for ever (and a signal did not end it); what answers without being containerd gave
/// an error naming no socket. Both are refused within a deadline, naming the socket.
#[test]
fn a_socket_that_is_not_containerd_is_named_within_a_deadline() {
    if !forge_testsupport::root("the containerd runner is driven as root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let dir = forge_testsupport::scratch("forge-ctrd-silent");
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {busybox}\nRUN true\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args([
            "build",
            "--progress=plain",
            "--runner=containerd",
            "--containerd-address",
        ])
        .arg(&socket)
        .arg("--root")
        .arg(dir.path().join("store"))
        .arg(&ctx)
        .env_remove("FORGE_ROOT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("forge still waits on a socket that never answers");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let text = printed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("did not answer"), "{text}");
}
