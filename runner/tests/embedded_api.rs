//! The embedded backend through the library API in-process (as root: a rootless caller must enter its
//! user namespace before any thread starts, which a test harness cannot): output streaming, the tail,
//! concurrent steps, and cancellation through the token.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Fixture, Mode};
use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner};
use forge_runner::{
    Backend, CancellationToken, Command, NetworkMode, RunError, Runner, StepSpec, Stream, User,
};
use forge_snapshotter::Mount;

fn setup() -> Option<(Fixture, Backend)> {
    if !forge_testsupport::root_and_busybox("in-process API tests") {
        return None;
    }
    let fx = Fixture::new(&Mode::Root);
    let config = EmbeddedConfig::new(fx.path("state"), fx.path("cache"));
    let runner = EmbeddedRunner::new(config).unwrap();
    Some((fx, Backend::Embedded(runner)))
}

fn spec(fx: &Fixture, upper: &str, script: &str) -> StepSpec {
    let (up, work) = (fx.path(upper), fx.path(&format!("{upper}-work")));
    std::fs::create_dir_all(&up).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    StepSpec {
        command: Command::Shell {
            shell: vec!["/bin/sh".into(), "-c".into()],
            script: script.into(),
        },
        env: vec![("GREETING".into(), "hello".into())],
        cwd: PathBuf::from("/"),
        user: User::default(),
        hostname: "api-test".into(),
        network: NetworkMode::None,
        join_network: None,
        extra_hosts: Vec::new(),
        proxy_upstream: None,
        rootfs: vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", fx.path("lower").display()),
                format!("upperdir={}", up.display()),
                format!("workdir={}", work.display()),
            ],
        }],
        mounts: Vec::new(),
        secret_env: vec![("TOKEN".into(), "from-secret-env".into())],
        security: Default::default(),
        limits: Default::default(),
        ulimits: Vec::new(),
        shm_size: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn output_streams_line_by_line_and_tail_keeps_the_last_lines() {
    let Some((fx, backend)) = setup() else { return };
    let spec = spec(
        &fx,
        "up1",
        "echo \"$GREETING from $(hostname) $TOKEN\"; for i in $(seq 1 30); do echo line-$i; done; echo oops >&2; printf 'no-newline'; exit 4",
    );
    let mut lines = Vec::new();
    let outcome = rt()
        .block_on(backend.run(
            &spec,
            &mut |s: Stream, l: &str| lines.push((s, l.to_string())),
            &CancellationToken::new(),
        ))
        .unwrap();
    assert_eq!(outcome.exit_code, 4);
    assert!(!outcome.success());
    // Order holds within a stream; the two pipes are read independently.
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(stdout[0], "hello from api-test from-secret-env");
    assert_eq!(stdout[1], "line-1");
    assert_eq!(stdout[31], "no-newline");
    assert!(
        lines.contains(&(Stream::Stderr, "oops".to_string())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Stream::Stdout, "no-newline".to_string())),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 33, "{lines:?}");
    assert_eq!(outcome.tail.len(), 20);
    assert!(
        outcome.tail.contains(&"line-30".to_string()),
        "{:?}",
        outcome.tail
    );
    assert!(
        !outcome.tail.contains(&"line-1".to_string()),
        "{:?}",
        outcome.tail
    );
    assert!(outcome.duration > Duration::ZERO);
}

#[test]
fn concurrent_steps_keep_their_output_apart() {
    let Some((fx, backend)) = setup() else { return };
    let a = spec(&fx, "up-a", "for i in 1 2 3; do echo a-$i; sleep 0.1; done");
    let b = spec(
        &fx,
        "up-b",
        "for i in 1 2 3; do echo b-$i; sleep 0.1; done; exit 2",
    );
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    let cancel = CancellationToken::new();
    let mut sink_a = |_, l: &str| out_a.push(l.to_string());
    let mut sink_b = |_, l: &str| out_b.push(l.to_string());
    let (ra, rb) = rt().block_on(async {
        tokio::join!(
            backend.run(&a, &mut sink_a, &cancel),
            backend.run(&b, &mut sink_b, &cancel),
        )
    });
    assert_eq!(ra.unwrap().exit_code, 0);
    assert_eq!(rb.unwrap().exit_code, 2);
    assert_eq!(out_a, ["a-1", "a-2", "a-3"]);
    assert_eq!(out_b, ["b-1", "b-2", "b-3"]);
}

/// Children of this process that are a step's init (forked from a `forge-step` thread), whatever
/// their state: running, exiting (D while the kernel tears their namespaces down) or a zombie.
fn inits_left() -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains("(forge-step) ") {
                out.push(pid.parse().unwrap());
            }
        }
    }
    out
}

#[test]
fn every_init_is_reaped_however_its_step_ends() {
    let Some((fx, backend)) = setup() else { return };
    // A command that cannot be executed: init reports its code, and the step then fails with the
    // error init's child wrote. A command that fails, and one that succeeds.
    let mut missing = spec(&fx, "up-z1", "");
    missing.command = Command::Exec(vec!["/no/such/tool".into()]);
    let runs = [
        (missing, false),
        (spec(&fx, "up-z2", "exit 3"), true),
        (spec(&fx, "up-z3", "true"), true),
    ];
    for (spec, runs_at_all) in &runs {
        let result =
            rt().block_on(backend.run(spec, &mut |_, _: &str| {}, &CancellationToken::new()));
        assert_eq!(result.is_ok(), *runs_at_all, "{result:?}");
    }
    // A step's result may come while its init is still being torn down; it is reaped right after
    // (other tests' steps may be ending too, so this waits for a moment with none left).
    let start = std::time::Instant::now();
    while !inits_left().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "inits left unreaped: {:?}",
            inits_left()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cancelling_the_token_returns_cancelled_and_cleans_up() {
    let Some((fx, backend)) = setup() else { return };
    let spec = spec(&fx, "up-c", "echo started; exec sleep 4242");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let mut saw_start = false;
    let mut sink = |_, l: &str| {
        if l == "started" {
            saw_start = true;
            c.cancel();
        }
    };
    let result = rt().block_on(async {
        let run = backend.run(&spec, &mut sink, &cancel);
        tokio::time::timeout(Duration::from_secs(20), run).await
    });
    assert!(saw_start);
    assert!(matches!(result, Ok(Err(RunError::Cancelled))), "{result:?}");
    assert!(common::pids_with_argv(&["sleep", "4242"]).is_empty());
    assert_eq!(std::fs::read_dir(fx.path("state")).unwrap().count(), 0);
}

#[test]
fn raw_snapshotter_mounts_overlay_view_and_tmpfs() {
    let Some((fx, backend)) = setup() else { return };
    // A read-only overlay of two host dirs (what a snapshotter hands out for `--mount=from=stage`).
    let (a, b) = (fx.path("host/a"), fx.path("host/b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("top"), "from-a").unwrap();
    std::fs::write(b.join("bottom"), "from-b").unwrap();
    let mut spec = spec(
        &fx,
        "up-raw",
        "cat /view/top /view/bottom; echo; touch /view/x 2>/dev/null || echo view-ro; \
         echo t > /rawtmp/t && grep -q ' /rawtmp tmpfs' /proc/mounts && echo tmpfs-ok",
    );
    spec.mounts = vec![
        forge_runner::StepMount {
            target: "/view".into(),
            kind: forge_runner::StepMountKind::Raw(Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={}:{}", a.display(), b.display())],
            }),
        },
        forge_runner::StepMount {
            target: "/rawtmp".into(),
            kind: forge_runner::StepMountKind::Raw(Mount {
                kind: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["size=1m".into()],
            }),
        },
    ];
    let mut out = Vec::new();
    let mut sink = |_, l: &str| out.push(l.to_string());
    let outcome = rt()
        .block_on(backend.run(&spec, &mut sink, &CancellationToken::new()))
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "{out:?}");
    assert_eq!(out, ["from-afrom-b", "view-ro", "tmpfs-ok"]);
    let upper: Vec<_> = std::fs::read_dir(fx.path("up-raw")).unwrap().collect();
    assert!(upper.is_empty(), "{upper:?}");
}

#[test]
fn fuse_overlayfs_rootfs() {
    let Some((fx, backend)) = setup() else { return };
    if !std::path::Path::new("/usr/bin/fuse-overlayfs").exists()
        || !std::path::Path::new("/dev/fuse").exists()
    {
        common::skip("fuse-overlayfs or /dev/fuse is missing");
        return;
    }
    let mut spec = spec(
        &fx,
        "up-fuse",
        "mkdir /made && echo hi > /made/f && chown 1000:1000 /made/f && cat /made/f",
    );
    spec.rootfs[0].kind = "fuse-overlayfs".into();
    spec.rootfs[0].source = "fuse-overlayfs".into();
    let mut out = Vec::new();
    let mut sink = |_, l: &str| out.push(l.to_string());
    let outcome = rt()
        .block_on(backend.run(&spec, &mut sink, &CancellationToken::new()))
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "{out:?}");
    assert_eq!(out, ["hi"]);
    let meta = std::fs::metadata(fx.path("up-fuse/made/f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
    // The FUSE daemon lived in the step's PID namespace and is gone with it.
    let upper = fx.path("up-fuse").to_string_lossy().into_owned();
    let daemons = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| common::contains(&c, upper.as_bytes()))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(daemons, 0, "fuse-overlayfs left running");
}

#[test]
fn steps_joining_a_shared_network_reach_each_other_on_loopback() {
    let Some((fx, backend)) = setup() else { return };
    let rt = rt();
    let (net, other) = rt.block_on(async {
        (
            forge_runner::SharedNetwork::new().await.unwrap(),
            forge_runner::SharedNetwork::new().await.unwrap(),
        )
    });
    assert_eq!(net, net.clone());
    assert_ne!(net, other);
    let mut server = spec(&fx, "up-srv", "echo pong | nc -l -p 7001");
    server.join_network = Some(net.clone());
    // The mode says none, the shared namespace makes it a sandboxed step: proxy variables set.
    let mut client = spec(
        &fx,
        "up-cli",
        "test \"$HTTP_PROXY\" = http://127.0.0.1:3128 || exit 9; \
         for i in $(seq 1 50); do nc 127.0.0.1 7001 </dev/null 2>/dev/null && exit 0; sleep 0.1; done; exit 7",
    );
    client.join_network = Some(net.clone());
    let mut stranger = spec(&fx, "up-str", "nc 127.0.0.1 7001 </dev/null");
    stranger.join_network = Some(other);
    let cancel = CancellationToken::new();
    let (mut srv_out, mut cli_out) = (Vec::new(), Vec::new());
    let mut sink_srv = |_, l: &str| srv_out.push(l.to_string());
    let mut sink_cli = |_, l: &str| cli_out.push(l.to_string());
    let (rs, rc) = rt.block_on(async {
        tokio::join!(
            backend.run(&server, &mut sink_srv, &cancel),
            backend.run(&client, &mut sink_cli, &cancel),
        )
    });
    assert_eq!(rc.unwrap().exit_code, 0, "{cli_out:?}");
    assert_eq!(rs.unwrap().exit_code, 0, "{srv_out:?}");
    assert_eq!(cli_out, ["pong"]);
    // Another shared namespace sees nothing on that port.
    let r = rt
        .block_on(backend.run(&stranger, &mut |_, _: &str| {}, &cancel))
        .unwrap();
    assert_ne!(r.exit_code, 0);
}

/// A build tries only the modes its choice may pick; what it picks is what the full probe (the
/// one `forge info` shows) leads to, for every choice, whether the host allows it or not.
#[test]
fn probing_only_what_a_choice_needs_picks_what_the_full_probe_picks() {
    use forge_runner::embedded::IsolationChoice;
    use forge_runner::embedded::isolation::{choose, choose_probing, probe};
    let scratch = tempfile::tempdir().unwrap();
    let full = probe(scratch.path());
    for choice in [
        IsolationChoice::Auto,
        IsolationChoice::Userns,
        IsolationChoice::Chroot,
    ] {
        assert_eq!(
            choose_probing(choice, scratch.path()),
            choose(choice, &full),
            "{choice:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the probes' directories are removed"
    );
}
