//! The containerd backend against a real containerd ($CONTAINERD_ADDRESS, started by
//! .ci/setup.d/50-containerd.sh) as root, on the busybox rootfs of common/mod.rs: what is particular
//! to it (snapshots, content, leases, namespaces). The cases every backend shares are in contract.rs.
//! Without containerd or root the tests skip, unless FORGE_E2E=require.
#![cfg(feature = "containerd")]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteNamespaceRequest, ListContainersRequest, ListTasksRequest,
};
use containerd_client::with_namespace;
use forge_runner::containerd::{
    ContainerdConfig, ContainerdError, ContainerdRunner, LayerDescriptor, SnapshotKind,
};
use forge_runner::spec::CacheSharing;
use forge_runner::user::UserError;
use forge_runner::{Command, NetworkMode, StepMount, StepMountKind, StepSpec, Stream, User};
use forge_snapshotter::Mount;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tonic::Request;

/// Skips (or, under FORGE_E2E=require, fails) when containerd, root or busybox is missing.
fn prerequisites() -> Option<ContainerdConfig> {
    if !forge_testsupport::root_and_busybox(
        "the containerd tests: containerd's socket, overlay mounts",
    ) {
        return None;
    }
    forge_testsupport::containerd()?;
    Some(ContainerdConfig::from_env().expect("CONTAINERD_ADDRESS is set"))
}

/// One test's world: a busybox lower dir, an overlay upper/work pair, and private cache and state
/// directories so that "nothing left behind" can be checked.
struct World {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    config: ContainerdConfig,
}

impl World {
    fn new(mut config: ContainerdConfig) -> World {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        common::build_busybox_rootfs(&lower);
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        config.cache_root = dir.path().join("cache");
        config.state_dir = dir.path().join("state");
        World {
            _dir: dir,
            lower,
            upper,
            work,
            config,
        }
    }

    fn rootfs(&self) -> Vec<Mount> {
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", self.lower.display()),
                format!("upperdir={}", self.upper.display()),
                format!("workdir={}", self.work.display()),
            ],
        }]
    }

    fn spec(&self, script: &str) -> StepSpec {
        StepSpec {
            command: Command::Shell {
                shell: vec!["/bin/sh".into(), "-c".into()],
                script: script.into(),
            },
            env: vec![],
            cwd: "/".into(),
            user: User::default(),
            hostname: "forge-test".into(),
            network: NetworkMode::Host,
            join_network: None,
            extra_hosts: Vec::new(),
            proxy_upstream: None,
            rootfs: self.rootfs(),
            mounts: vec![],
            secret_env: vec![],
            security: Default::default(),
            limits: Default::default(),
            ulimits: Vec::new(),
            shm_size: None,
        }
    }

    async fn runner(&self) -> ContainerdRunner {
        ContainerdRunner::connect(self.config.clone())
            .await
            .unwrap()
    }
}

/// Runs a step and collects its output lines.
async fn run(
    runner: &ContainerdRunner,
    spec: &StepSpec,
) -> (forge_runner::StepOutcome, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let outcome = runner
        .run(
            spec,
            &mut |stream, line: &str| lines.push((stream, line.to_string())),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("step {:?} failed to run: {e}", spec.command));
    (outcome, lines)
}

fn stdout(lines: &[(Stream, String)]) -> Vec<String> {
    lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.clone())
        .collect()
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none())
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_streams() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let (ok, _) = run(&runner, &world.spec("true")).await;
    assert_eq!(ok.exit_code, 0);
    assert!(ok.success());
    let (failed, lines) = run(&runner, &world.spec("echo out; echo err >&2; exit 3")).await;
    assert_eq!(failed.exit_code, 3);
    assert!(lines.contains(&(Stream::Stdout, "out".into())), "{lines:?}");
    assert!(lines.contains(&(Stream::Stderr, "err".into())), "{lines:?}");
    // The two streams are separate FIFOs: their relative order in the tail is not defined.
    let mut tail = failed.tail.clone();
    tail.sort();
    assert_eq!(tail, vec!["err".to_string(), "out".to_string()]);
    let mut exec = world.spec("");
    exec.command = Command::Exec(vec!["/bin/does-not-exist".into()]);
    let missing = runner
        .run(&exec, &mut |_, _| {}, &CancellationToken::new())
        .await;
    assert!(
        missing.is_err() || missing.as_ref().unwrap().exit_code != 0,
        "{missing:?}"
    );
    runner.close().await.unwrap();
    assert!(is_empty_dir(&world.config.state_dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn env_cwd_and_hostname() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let mut spec = world.spec("echo \"$GREETING $EMPTY|$PATH\"; pwd; hostname; cat /etc/hostname");
    spec.env = vec![
        ("GREETING".into(), "hello".into()),
        ("EMPTY".into(), "".into()),
        ("GREETING".into(), "hi".into()),
    ];
    spec.cwd = "/work/deep/dir".into();
    let (outcome, lines) = run(&runner, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(
        stdout(&lines),
        vec![
            "hi |/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "/work/deep/dir".into(),
            "forge-test".into(),
            "forge-test".into(),
        ]
    );
    // The working directory was created in the rootfs and is part of the change set.
    assert!(world.upper.join("work/deep/dir").is_dir());
    runner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn users_by_id_and_by_name() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let mut numeric = world.spec("id -u; id -g; id -G; touch /tmp/made-by-1000");
    numeric.user = User {
        user: "1000".into(),
        group: Some("1000".into()),
    };
    let (outcome, lines) = run(&runner, &numeric).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["1000", "1000", "1000"]);
    let made = std::fs::metadata(world.upper.join("tmp/made-by-1000")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));

    let mut named = world.spec("id -un; id -u; id -g; id -G; echo $HOME");
    named.user = User {
        user: "tester".into(),
        group: None,
    };
    let (outcome, lines) = run(&runner, &named).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout(&lines);
    assert_eq!(out[..3], ["tester", "1000", "1000"]);
    // The supplementary group from /etc/group.
    assert_eq!(out[3], "1000 2000");

    let (root, lines) = run(&runner, &world.spec("id -u; id -G")).await;
    assert_eq!(root.exit_code, 0);
    assert_eq!(stdout(&lines), vec!["0", "0 10"]);

    let mut unknown = world.spec("true");
    unknown.user = User {
        user: "nobody-such".into(),
        group: None,
    };
    let err = runner
        .run(&unknown, &mut |_, _| {}, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ContainerdError::User(UserError::UnknownUser { .. })),
        "{err}"
    );
    runner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn chown_inside_the_step_persists_in_the_upper_dir() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let spec = world.spec(
        "mkdir -p /data && echo x > /data/file && chown 1000:2000 /data/file && \
         chown 1000:1000 /data && chmod 0751 /data",
    );
    let (outcome, lines) = run(&runner, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    let file = std::fs::metadata(world.upper.join("data/file")).unwrap();
    assert_eq!((file.uid(), file.gid()), (1000, 2000));
    let dir = std::fs::metadata(world.upper.join("data")).unwrap();
    assert_eq!(
        (dir.uid(), dir.gid(), dir.mode() & 0o7777),
        (1000, 1000, 0o751)
    );
    // The generated /etc files were bind-mounted over stubs; none of that reaches the change set.
    for stub in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        assert!(
            !world.upper.join(stub).exists(),
            "{stub} left in the upper dir"
        );
    }
    runner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn network_none_cannot_reach_the_host_and_host_can() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        // One connection is expected: the host-network step's.
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"reached-the-host\n").unwrap();
        1
    });
    // busybox's wget segfaults on a refused connection; nc reports it with exit status 1.
    let fetch = format!("nc -w 3 127.0.0.1 {port} </dev/null");

    let mut none = world.spec(&format!("ip link show lo; {fetch}"));
    none.network = NetworkMode::None;
    let (outcome, lines) = run(&runner, &none).await;
    assert_ne!(outcome.exit_code, 0, "{lines:?}");
    let out = stdout(&lines);
    assert!(
        !out.iter().any(|l| l.contains("reached-the-host")),
        "{lines:?}"
    );
    // forge brings up loopback in the namespace it makes for the step.
    assert!(
        out.iter().any(|l| l.contains("lo:") && l.contains(",UP")),
        "{lines:?}"
    );

    let host = world.spec(&fetch);
    let (outcome, lines) = run(&runner, &host).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["reached-the-host"]);
    assert_eq!(served.join().unwrap(), 1);
    runner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_mount_keeps_its_content_across_runs() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let cache = |sharing| StepMount {
        target: "/var/cache/thing".into(),
        kind: StepMountKind::Cache {
            id: "thing-cache".into(),
            sharing,
            uid: 1000,
            gid: 1000,
            mode: 0o755,
            seed: None,
            readonly: false,
        },
    };
    let mut first =
        world.spec("echo one >> /var/cache/thing/log; stat -c '%u %g' /var/cache/thing");
    first.user = User {
        user: "tester".into(),
        group: None,
    };
    first.mounts = vec![cache(CacheSharing::Shared)];
    let (outcome, lines) = run(&runner, &first).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["1000 1000"]);
    let mut second = world.spec("echo two >> /var/cache/thing/log; cat /var/cache/thing/log");
    second.user = first.user.clone();
    second.mounts = vec![cache(CacheSharing::Locked)];
    let (outcome, lines) = run(&runner, &second).await;
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["one", "two"]);
    // The cache lives outside the rootfs: the upper dir has at most the empty mount point, not the log.
    assert!(!world.upper.join("var/cache/thing/log").exists());

    // Two concurrent `private` users get different instances; a later one finds the first again.
    let mut hold = world.spec("echo held > /c/mark; echo holding; sleep 2");
    hold.mounts = vec![StepMount {
        target: "/c".into(),
        kind: StepMountKind::Cache {
            id: "private-cache".into(),
            sharing: CacheSharing::Private,
            uid: 0,
            gid: 0,
            mode: 0o755,
            seed: None,
            readonly: false,
        },
    }];
    let mut peek = hold.clone();
    peek.command = Command::Shell {
        shell: vec!["/bin/sh".into(), "-c".into()],
        script: "cat /c/mark 2>/dev/null || echo empty".into(),
    };
    // The second step starts only once the first one surely holds its instance.
    let holding = tokio::sync::Notify::new();
    let held = async {
        let mut lines = Vec::new();
        let outcome = runner
            .run(
                &hold,
                &mut |stream, line: &str| {
                    if line == "holding" {
                        holding.notify_one();
                    }
                    lines.push((stream, line.to_string()));
                },
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        (outcome, lines)
    };
    let (held, peeked) = tokio::join!(held, async {
        holding.notified().await;
        run(&runner, &peek).await
    });
    assert_eq!(held.0.exit_code, 0);
    assert_eq!(stdout(&peeked.1), vec!["empty"]);
    let (_, later) = run(&runner, &peek).await;
    assert_eq!(stdout(&later), vec!["held"]);
    runner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_step_leaves_nothing_behind() {
    let Some(mut config) = prerequisites() else {
        return;
    };
    // A namespace of its own, so that "no container, no task" is not disturbed by parallel tests.
    config.namespace = format!("forge-test-cancel-{}", std::process::id());
    let world = World::new(config);
    let runner = world.runner().await;
    let mut spec = world.spec("echo started; sleep 4242 & sleep 4243; echo never");
    spec.mounts = vec![StepMount {
        target: "/run/secrets/s".into(),
        kind: StepMountKind::Secret {
            data: b"x".to_vec(),
            uid: 0,
            gid: 0,
            mode: 0o400,
        },
    }];
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let result = runner
        .run(
            &spec,
            &mut |_, line: &str| {
                if line == "started" {
                    let canceller = canceller.clone();
                    tokio::spawn(async move {
                        // Give the shell time to start both sleeps.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        canceller.cancel();
                    });
                }
                seen.push(line.to_string());
            },
            &cancel,
        )
        .await;
    assert!(
        matches!(result, Err(ContainerdError::Cancelled)),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(seen, vec!["started"]);

    let conn = runner.connection().clone();
    let ns = conn.namespace().to_string();
    let mut containers = ContainersClient::new(conn.channel());
    let listed = containers
        .list(with_namespace!(
            ListContainersRequest { filters: vec![] },
            ns.as_str()
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.is_empty(), "{:?}", listed.containers);
    let mut tasks = TasksClient::new(conn.channel());
    let listed = tasks
        .list(with_namespace!(
            ListTasksRequest {
                filter: String::new()
            },
            ns.as_str()
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty(), "{:?}", listed.tasks);
    assert!(sleepers().is_empty(), "processes left: {:?}", sleepers());
    assert!(is_empty_dir(&world.config.state_dir));
    assert!(!world.upper.join("run").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&world.config.state_dir.display().to_string()));
    runner.close().await.unwrap();
    // With the lease gone the namespace is empty, and containerd agrees to delete it.
    NamespacesClient::new(conn.channel())
        .delete(Request::new(DeleteNamespaceRequest { name: ns }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_run_is_cleaned_up_in_the_background() {
    let Some(mut config) = prerequisites() else {
        return;
    };
    config.namespace = format!("forge-test-drop-{}", std::process::id());
    let world = World::new(config);
    let runner = world.runner().await;
    let spec = world.spec("echo started; sleep 4244");
    // The caller gives up on the future instead of cancelling the token: the step's guard must
    // still kill the task and remove everything.
    let dropped = tokio::time::timeout(
        Duration::from_millis(1500),
        runner.run(&spec, &mut |_, _| {}, &CancellationToken::new()),
    )
    .await;
    assert!(dropped.is_err(), "the step finished early: {dropped:?}");
    let conn = runner.connection().clone();
    let ns = conn.namespace().to_string();
    let mut containers = ContainersClient::new(conn.channel());
    let mut left = None;
    for _ in 0..100 {
        let listed = containers
            .list(with_namespace!(
                ListContainersRequest { filters: vec![] },
                ns.as_str()
            ))
            .await
            .unwrap()
            .into_inner()
            .containers;
        if listed.is_empty() && !has_sleeper(b"4244") && is_empty_dir(&world.config.state_dir) {
            left = None;
            break;
        }
        left = Some(listed.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left, None,
        "containers, processes or step dirs left after 10 s"
    );
    runner.close().await.unwrap();
    NamespacesClient::new(conn.channel())
        .delete(Request::new(DeleteNamespaceRequest { name: ns }))
        .await
        .unwrap();
}

fn has_sleeper(arg: &[u8]) -> bool {
    let mut wanted = b"sleep\x00".to_vec();
    wanted.extend_from_slice(arg);
    wanted.push(0);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|entry| std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted))
}

/// Pids of the `sleep 4242`/`sleep 4243` processes the cancelled step started.
fn sleepers() -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline == b"sleep\x004242\x00" || cmdline == b"sleep\x004243\x00" {
            found.push(pid);
        }
    }
    found
}

/// The busybox rootfs as an uncompressed layer tar, written with the `tar` crate.
fn layer_tar(root: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).unwrap();
    builder.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_runs_on_a_snapshot_made_from_content_in_containerd() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config);
    let runner = world.runner().await;
    let blob = layer_tar(&world.lower);
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)));
    let layer = LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: digest.clone(),
        size: blob.len() as u64,
    };
    let content = runner.content();
    content
        .write_blob(
            std::io::Cursor::new(blob.clone()),
            &digest,
            layer.size,
            HashMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(content.size(&digest).await.unwrap(), Some(layer.size));
    // Writing it again is a no-op, and a wrong digest is refused by containerd.
    content
        .write_blob(
            std::io::Cursor::new(blob.clone()),
            &digest,
            layer.size,
            HashMap::new(),
        )
        .await
        .unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let refused = content
        .write_blob(
            std::io::Cursor::new(blob.clone()),
            &wrong,
            layer.size,
            HashMap::new(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(content.size(&wrong).await.unwrap(), None);

    let unique = format!("{}-{:x}", std::process::id(), rand_suffix());
    let base = format!("forge-test-base-{unique}");
    let snapshots = runner.snapshots();
    let diff_id = content
        .unpack_layer(&snapshots, &layer, "", &base)
        .await
        .unwrap();
    // Uncompressed: the diff id is the blob's digest.
    assert_eq!(diff_id, digest);
    assert_eq!(
        snapshots.stat(&base).await.unwrap().kind,
        SnapshotKind::Committed
    );

    let key = format!("forge-test-step-{unique}");
    let mounts = snapshots.prepare(&key, &base).await.unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].kind, "overlay");
    let mut spec = world.spec("echo built > /hello && chown 1000:1000 /hello && id -un");
    spec.rootfs = vec![];
    spec.user = User {
        user: "root".into(),
        group: None,
    };
    let mut lines = Vec::new();
    let outcome = runner
        .run_in_snapshot(
            &key,
            &spec,
            &mut |stream, line: &str| lines.push((stream, line.to_string())),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 0, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["root"]);

    // The change is in the active snapshot's upper dir, as its mounts name it.
    let mounts = snapshots.mounts(&key).await.unwrap();
    let upper = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .expect("overlay mount with an upperdir");
    assert_eq!(
        std::fs::read_to_string(upper.join("hello")).unwrap(),
        "built\n"
    );
    let meta = std::fs::metadata(upper.join("hello")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert!(!upper.join("etc/hosts").exists());
    assert!(snapshots.usage(&key).await.unwrap().size > 0);

    let committed = format!("forge-test-committed-{unique}");
    snapshots
        .commit(&committed, &key, HashMap::new())
        .await
        .unwrap();
    let info = snapshots.stat(&committed).await.unwrap();
    assert_eq!(
        (info.kind, info.parent.as_str()),
        (SnapshotKind::Committed, base.as_str())
    );
    snapshots.remove(&committed).await.unwrap();
    snapshots.remove(&base).await.unwrap();
    runner.close().await.unwrap();
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `forge-runner-step --runner containerd` selects this backend through the `Backend` enum, passes the
/// exit code through, and gives its lease back when it is done.
#[tokio::test]
async fn step_binary_selects_containerd_and_returns_its_lease() {
    let Some(config) = prerequisites() else {
        return;
    };
    let world = World::new(config.clone());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_forge-runner-step"))
        .arg("--runner")
        .arg("containerd")
        .arg("--containerd-address")
        .arg(&config.address)
        .arg("--state-dir")
        .arg(&world.config.state_dir)
        .arg("--cache-root")
        .arg(&world.config.cache_root)
        .arg("--overlay")
        .arg(format!(
            "{}:{}:{}",
            world.lower.display(),
            world.upper.display(),
            world.work.display()
        ))
        .args(["--hostname", "via-containerd", "--shell", "--"])
        .arg("echo \"on $(hostname)\"; echo made > /made; exit 3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "on via-containerd");
    assert_eq!(
        std::fs::read_to_string(world.upper.join("made")).unwrap(),
        "made\n"
    );

    // Its lease (named after its pid) is gone; only then may containerd's GC collect what it held.
    use containerd_client::services::v1::ListRequest;
    use containerd_client::services::v1::leases_client::LeasesClient;
    let runner = world.runner().await;
    let conn = runner.connection().clone();
    let ns = conn.namespace().to_string();
    let leases = LeasesClient::new(conn.channel())
        .list(with_namespace!(
            ListRequest { filters: vec![] },
            ns.as_str()
        ))
        .await
        .unwrap()
        .into_inner()
        .leases;
    let prefix = format!("forge-{pid}-");
    assert!(
        leases.iter().all(|l| !l.id.starts_with(&prefix)),
        "lease of pid {pid} left: {:?}",
        leases.iter().map(|l| &l.id).collect::<Vec<_>>()
    );
    runner.close().await.unwrap();

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_forge-runner-step"))
        .args([
            "--runner",
            "podman",
            "--state-dir",
            "/x",
            "--cache-root",
            "/y",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown --runner \"podman\""));
}
