//! The runner contract: what [`Runner::run`] promises, whichever backend runs the step. Every case is
//! written once and instantiated per backend by `contract!` (as ripgrep runs each test once per regex
//! engine): the embedded backend in-process as root, and containerd at $CONTAINERD_ADDRESS. Both run
//! on the same busybox overlay rootfs. A backend whose prerequisites are missing prints `SKIP:` (a
//! failure under FORGE_E2E=require). Backend-only behaviour stays in embedded.rs and containerd.rs.
#![cfg(feature = "containerd")]

mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use forge_runner::containerd::{ContainerdConfig, ContainerdRunner};
use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner};
use forge_runner::{
    Backend, Bytes, CacheSeed, CacheSharing, CancellationToken, Command, Limits, NanoCpus,
    NetworkMode, RunError, Runner, Security, StepMount, StepMountKind, StepOutcome, StepSpec,
    Stream, User,
};
use forge_snapshotter::Mount;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Request;

/// Instantiates each case once per backend: `embedded::case` and `containerd::case`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(world) = super::World::embedded() else { return };
                    super::$case(&world).await;
                    world.close().await;
                }
            )*
        }
        mod containerd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(world) = super::World::containerd().await else { return };
                    super::$case(&world).await;
                    world.close().await;
                }
            )*
        }
    };
}

contract!(
    exit_status,
    argv_and_shell_forms,
    env,
    cwd_is_created_for_the_user,
    users_by_name_and_id,
    capabilities_as_docker_gives_them,
    stdout_and_stderr_lines_and_the_tail,
    a_long_line_comes_in_capped_pieces,
    cancel_kills_the_tree_and_leaves_nothing,
    cancel_while_waiting_for_a_locked_cache,
    network_none_and_host,
    issue11_sandbox_reaches_no_host_loopback_service,
    issue11_sandbox_reaches_the_outside_through_the_proxy,
    hostname,
    issue14_buildkits_sandbox_with_shm_size_and_ulimits,
    bind_read_only_and_read_write,
    cache_content_persists_between_steps,
    cache_shared_and_locked,
    cache_private,
    cache_owner_and_mode,
    cache_from_seed,
    tmpfs,
    read_only_cache_and_tmpfs,
    secret_file_and_env,
    ssh_agent_socket,
    rootfs_changes_land_in_the_upper_dir,
    what_a_step_leaves_running_ends_with_it,
    snapshotter_mount,
    issue11_proc_sys_write_is_refused_and_the_host_value_unchanged,
    issue11_masked_kernel_files_show_nothing,
    issue11_mknod_of_a_host_device_cannot_be_opened_anywhere,
    issue11_a_step_runs_under_a_seccomp_filter,
    issue11_syscalls_the_default_profile_denies_fail_and_insecure_lifts_it,
    issue11_a_step_past_its_memory_limit_is_killed_and_says_so,
    issue11_a_busy_step_gets_no_more_cpu_than_its_limit,
);

/// One case's world: a busybox lower dir, an overlay upper/work pair, private state and cache
/// directories, and the backend under test.
struct World {
    dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    state: PathBuf,
    cache: PathBuf,
    backend: Backend,
}

static WORLDS: AtomicU32 = AtomicU32::new(0);

impl World {
    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = forge_testsupport::scratch_in(Path::new("/tmp"), "forge-contract-");
        let lower = dir.path().join("lower");
        common::build_busybox_rootfs(&lower);
        for d in ["upper", "work", "state", "cache", "host"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let (state, cache) = (dir.path().join("state"), dir.path().join("cache"));
        (dir, state, cache)
    }

    fn with(dir: tempfile::TempDir, backend: Backend) -> World {
        let p = dir.path().to_path_buf();
        World {
            lower: p.join("lower"),
            upper: p.join("upper"),
            work: p.join("work"),
            state: p.join("state"),
            cache: p.join("cache"),
            dir,
            backend,
        }
    }

    fn embedded() -> Option<World> {
        if !forge_testsupport::root_and_busybox("the embedded contract runs in-process") {
            return None;
        }
        let (dir, state, cache) = World::dirs();
        let runner = EmbeddedRunner::new(EmbeddedConfig::new(state, cache)).unwrap();
        Some(World::with(dir, Backend::Embedded(runner)))
    }

    async fn containerd() -> Option<World> {
        if !forge_testsupport::root_and_busybox(
            "the containerd contract: containerd's socket, overlay mounts",
        ) {
            return None;
        }
        forge_testsupport::containerd()?;
        let mut config = ContainerdConfig::from_env().expect("CONTAINERD_ADDRESS is set");
        let (dir, state, cache) = World::dirs();
        // A namespace per world, so "no container left" is about this case alone.
        config.namespace = format!(
            "forge-contract-{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, Ordering::Relaxed)
        );
        config.state_dir = state;
        config.cache_root = cache;
        let runner = ContainerdRunner::connect(config).await.unwrap();
        Some(World::with(dir, Backend::Containerd(runner)))
    }

    async fn close(self) {
        if let Backend::Containerd(r) = self.backend {
            let conn = r.connection().clone();
            r.close().await.unwrap();
            let containers = containerd_containers(&conn).await;
            assert!(containers.is_empty(), "containers left: {containers:?}");
            // The namespace was made for this world; with the lease gone it holds nothing.
            use containerd_client::services::v1::DeleteNamespaceRequest;
            use containerd_client::services::v1::namespaces_client::NamespacesClient;
            let name = conn.namespace().to_string();
            let _ = NamespacesClient::new(conn.channel())
                .delete(Request::new(DeleteNamespaceRequest { name }))
                .await;
        }
    }

    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Containerd(_) => "containerd",
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
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
            hostname: "contract".into(),
            // The default: a case that needs another network says so.
            network: NetworkMode::default(),
            join_network: None,
            extra_hosts: Vec::new(),
            proxy_upstream: None,
            rootfs: vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={}", self.lower.display()),
                    format!("upperdir={}", self.upper.display()),
                    format!("workdir={}", self.work.display()),
                ],
            }],
            mounts: vec![],
            secret_env: vec![],
            security: Default::default(),
            limits: Default::default(),
            ulimits: Vec::new(),
            shm_size: None,
        }
    }

    async fn try_run(&self, spec: &StepSpec) -> Result<Ran, RunError> {
        self.try_run_with(spec, &CancellationToken::new(), |_| {})
            .await
    }

    /// Runs `spec`, calling `seen` with each line as it arrives.
    async fn try_run_with(
        &self,
        spec: &StepSpec,
        cancel: &CancellationToken,
        mut seen: impl FnMut(&str) + Send,
    ) -> Result<Ran, RunError> {
        let mut lines = Vec::new();
        let outcome = self
            .backend
            .run(
                spec,
                &mut |stream, line: &str| {
                    seen(line);
                    lines.push((stream, line.to_string()));
                },
                cancel,
            )
            .await?;
        Ok(Ran { outcome, lines })
    }

    async fn run(&self, spec: &StepSpec) -> Ran {
        self.try_run(spec)
            .await
            .unwrap_or_else(|e| panic!("{}: step {:?} failed to run: {e}", self.name(), spec))
    }

    /// Runs `spec` and expects exit status 0.
    async fn ok(&self, spec: &StepSpec) -> Vec<String> {
        let ran = self.run(spec).await;
        assert_eq!(ran.outcome.exit_code, 0, "{}: {:?}", self.name(), ran.lines);
        ran.stdout()
    }

    /// Nothing of a finished step is left: no step directory, no mount under this world.
    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.state).unwrap().collect();
        assert!(
            left.is_empty(),
            "{}: step state left: {left:?}",
            self.name()
        );
        let here = self.dir.path().to_string_lossy().into_owned();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&here))
            .map(String::from)
            .collect();
        assert!(
            mounts.is_empty(),
            "{}: mounts left: {mounts:?}",
            self.name()
        );
    }

    /// Regular files and symlinks in the upper dir, relative: what a commit would put in a layer
    /// besides directories.
    fn upper_files(&self) -> Vec<String> {
        let mut out: Vec<String> = common::walk(&self.upper)
            .into_iter()
            .filter(|p| !std::fs::symlink_metadata(p).unwrap().is_dir())
            .map(|p| {
                p.strip_prefix(&self.upper)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        out.sort();
        out
    }
}

struct Ran {
    outcome: StepOutcome,
    lines: Vec<(Stream, String)>,
}

impl Ran {
    fn stdout(&self) -> Vec<String> {
        self.of(Stream::Stdout)
    }

    fn of(&self, stream: Stream) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

async fn containerd_containers(conn: &forge_runner::containerd::Connection) -> Vec<String> {
    use containerd_client::services::v1::ListContainersRequest;
    use containerd_client::services::v1::containers_client::ContainersClient;
    let ns = conn.namespace().to_string();
    ContainersClient::new(conn.channel())
        .list(containerd_client::with_namespace!(
            ListContainersRequest { filters: vec![] },
            ns.as_str()
        ))
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect()
}

fn tester() -> User {
    User {
        user: "tester".into(),
        group: None,
    }
}

fn cache(target: &str, id: &str, sharing: CacheSharing) -> StepMount {
    StepMount {
        target: target.into(),
        kind: StepMountKind::Cache {
            id: id.into(),
            sharing,
            uid: 0,
            gid: 0,
            mode: 0o755,
            seed: None,
            readonly: false,
        },
    }
}

/// Arguments unique to this process and call, for finding a step's processes in /proc while other
/// cases run in parallel.
fn unique_seconds() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    100_000 + (std::process::id() % 1000) * 100 + N.fetch_add(1, Ordering::Relaxed)
}

// ---- the cases ----

async fn exit_status(w: &World) {
    let ran = w.run(&w.spec("true")).await;
    assert_eq!(ran.outcome.exit_code, 0);
    assert!(ran.outcome.success());
    for code in [1, 3, 255] {
        let ran = w.run(&w.spec(&format!("exit {code}"))).await;
        assert_eq!(ran.outcome.exit_code, code, "{}", w.name());
        assert!(!ran.outcome.success());
    }
    // The status a shell gives a child killed by SIGKILL passes through. (The command itself cannot
    // be made to kill itself the same way under both: containerd runs it as the namespace's pid 1,
    // which the kernel shields from its own signals; embedded.rs covers that for forge's init.)
    let ran = w.run(&w.spec("sh -c 'kill -KILL $$'; exit $?")).await;
    assert_eq!(ran.outcome.exit_code, 128 + 9, "{}", w.name());
    // A command that cannot start is an error or a failed step, never a success.
    let mut missing = w.spec("");
    missing.command = Command::Exec(vec!["/bin/no-such-tool".into()]);
    match w.try_run(&missing).await {
        Ok(ran) => assert_ne!(ran.outcome.exit_code, 0, "{}", w.name()),
        Err(e) => assert!(e.to_string().contains("no-such-tool"), "{}: {e}", w.name()),
    }
    w.assert_nothing_left();
}

async fn argv_and_shell_forms(w: &World) {
    // Exec form: argv goes through untouched, empty and spaced arguments included.
    let mut exec = w.spec("");
    exec.command = Command::Exec(vec![
        "/bin/sh".into(),
        "-c".into(),
        "printf '[%s]' \"$0\" \"$@\"; echo".into(),
        "zero".into(),
        "a b".into(),
        "".into(),
        "$HOME".into(),
    ]);
    assert_eq!(w.ok(&exec).await, ["[zero][a b][][$HOME]"]);
    // A bare name is looked up in PATH inside the rootfs.
    exec.command = Command::Exec(vec!["echo".into(), "via".into(), "path".into()]);
    assert_eq!(w.ok(&exec).await, ["via path"]);
    // Shell form: the script is one argument to the shell, with the shell's syntax.
    let shell = w.spec("echo $((1 + 2)) | tr 3 x; echo \"$0\"");
    assert_eq!(w.ok(&shell).await, ["x", "/bin/sh"]);
    // A SHELL of more words: all of them come before the script.
    let mut strict = w.spec("false; echo not-reached");
    strict.command = Command::Shell {
        shell: vec!["/bin/sh".into(), "-e".into(), "-c".into()],
        script: "false; echo not-reached".into(),
    };
    let ran = w.run(&strict).await;
    assert_eq!(ran.outcome.exit_code, 1, "{:?}", ran.lines);
    assert!(ran.stdout().is_empty(), "{:?}", ran.lines);
}

async fn env(w: &World) {
    let mut spec =
        w.spec("echo \"$GREETING|$EMPTY|$TOKEN|$PATH|$HOME\"; env | grep -c '^GREETING='");
    spec.env = vec![
        ("GREETING".into(), "hello".into()),
        ("EMPTY".into(), "".into()),
        ("GREETING".into(), "hi".into()),
    ];
    spec.secret_env = vec![("TOKEN".into(), "s3cret".into())];
    spec.user = tester();
    assert_eq!(
        w.ok(&spec).await,
        [
            "hi||s3cret|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/home/tester",
            "1"
        ]
    );
    let mut given = w.spec("echo \"$PATH $HOME\"");
    given.env = vec![
        ("PATH".into(), "/bin".into()),
        ("HOME".into(), "/elsewhere".into()),
    ];
    assert_eq!(w.ok(&given).await, ["/bin /elsewhere"]);
}

async fn cwd_is_created_for_the_user(w: &World) {
    let mut spec = w.spec("pwd; stat -c '%u:%g' . ..");
    spec.cwd = "/made/for/step".into();
    spec.user = tester();
    let out = w.ok(&spec).await;
    assert_eq!(out[0], "/made/for/step");
    // The created directories are part of the step's change.
    let meta = std::fs::metadata(w.upper.join("made/for/step")).unwrap();
    // BuildKit's executor makes them owned by the step's user. Known gap: the containerd backend
    // leaves a missing cwd to runc, which makes it root's; until it creates the directory itself,
    // only the embedded backend is held to this.
    if w.name() == "embedded" {
        assert_eq!(out[1..], ["1000:1000", "1000:1000"]);
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    }
    // An existing directory is used as it is.
    let mut existing = w.spec("pwd; stat -c '%a' .");
    existing.cwd = "/tmp".into();
    assert_eq!(w.ok(&existing).await, ["/tmp", "1777"]);
}

async fn users_by_name_and_id(w: &World) {
    let mut numeric = w.spec("id -u; id -g; id -G; touch /tmp/by-1000");
    numeric.user = User {
        user: "1000".into(),
        group: Some("1000".into()),
    };
    // An explicit group replaces the supplementary groups.
    assert_eq!(w.ok(&numeric).await, ["1000", "1000", "1000"]);
    let made = std::fs::metadata(w.upper.join("tmp/by-1000")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000));

    let mut named = w.spec("id -un; id -u; id -g; id -G; echo $HOME");
    named.user = tester();
    assert_eq!(
        w.ok(&named).await,
        ["tester", "1000", "1000", "1000 2000", "/home/tester"]
    );
    let mut by_group_name = w.spec("id -g");
    by_group_name.user = User {
        user: "tester".into(),
        group: Some("extra".into()),
    };
    assert_eq!(w.ok(&by_group_name).await, ["2000"]);
    // An id without a passwd entry still runs, in group 0.
    let mut unnamed = w.spec("id -u; id -g");
    unnamed.user = User {
        user: "4321".into(),
        group: None,
    };
    assert_eq!(w.ok(&unnamed).await, ["4321", "0"]);
    assert_eq!(w.ok(&w.spec("id -u; id -G")).await, ["0", "0 10"]);

    let mut unknown = w.spec("true");
    unknown.user = User {
        user: "nobody-such".into(),
        group: None,
    };
    let err = match w.try_run(&unknown).await {
        Err(e) => e.to_string(),
        Ok(ran) => panic!("{}: an unknown user ran: {:?}", w.name(), ran.lines),
    };
    assert!(err.contains("nobody-such"), "{}: {err}", w.name());
}

/// Root gets docker's default set as effective, permitted and bounding capabilities and nothing
/// inheritable or ambient (runc and BuildKit since CVE-2022-24769); another user gets none at all,
/// so a non-root step cannot bind a port below 1024.
async fn capabilities_as_docker_gives_them(w: &World) {
    let script = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status | tr -d '\\t'";
    let root = w.ok(&w.spec(script)).await;
    assert_eq!(
        root,
        [
            "CapInh:0000000000000000",
            "CapPrm:00000000a80425fb",
            "CapEff:00000000a80425fb",
            "CapBnd:00000000a80425fb",
            "CapAmb:0000000000000000",
        ],
        "{}",
        w.name()
    );
    let mut other = w.spec(script);
    other.user = User {
        user: "1000".into(),
        group: Some("1000".into()),
    };
    let other = w.ok(&other).await;
    assert_eq!(
        other,
        [
            "CapInh:0000000000000000",
            "CapPrm:0000000000000000",
            "CapEff:0000000000000000",
            "CapBnd:00000000a80425fb",
            "CapAmb:0000000000000000",
        ],
        "{}",
        w.name()
    );
}

async fn stdout_and_stderr_lines_and_the_tail(w: &World) {
    let ran = w
        .run(&w.spec(
            "for i in $(seq 1 40); do echo line-$i; done; echo oops >&2; printf 'dos\\r\\n'; \
             echo err-2 >&2; printf 'no-newline'; exit 4",
        ))
        .await;
    assert_eq!(ran.outcome.exit_code, 4);
    let out = ran.stdout();
    assert_eq!(out.len(), 42, "{out:?}");
    assert_eq!(out[0], "line-1");
    assert_eq!(out[39], "line-40");
    // A trailing carriage return goes with the newline; a last line without one still arrives.
    assert_eq!(out[40..], ["dos", "no-newline"]);
    assert_eq!(ran.of(Stream::Stderr), ["oops", "err-2"]);
    // The tail keeps the last lines for error messages, not the first ones.
    let tail = &ran.outcome.tail;
    assert!(!tail.is_empty() && tail.len() <= 30, "{tail:?}");
    assert!(tail.contains(&"no-newline".to_string()), "{tail:?}");
    assert!(!tail.contains(&"line-1".to_string()), "{tail:?}");
    assert!(ran.outcome.duration > Duration::ZERO);
}

async fn a_long_line_comes_in_capped_pieces(w: &World) {
    let ran = w
        .run(&w.spec("head -c 200000 /dev/zero | tr '\\0' x; echo; echo end"))
        .await;
    assert_eq!(ran.outcome.exit_code, 0);
    let out = ran.stdout();
    assert_eq!(out.last().map(String::as_str), Some("end"));
    let pieces = &out[..out.len() - 1];
    assert!(pieces.len() >= 4, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|p| p.len() <= 64 * 1024));
    assert!(pieces.iter().all(|p| p.bytes().all(|b| b == b'x')));
    assert_eq!(pieces.iter().map(String::len).sum::<usize>(), 200_000);
}

async fn cancel_kills_the_tree_and_leaves_nothing(w: &World) {
    let (a, b) = (unique_seconds(), unique_seconds());
    let mut spec = w.spec(&format!("echo started; sleep {a} & sleep {b}; echo never"));
    // Held mounts must go too: a secret's tmpfs, a cache lock, an agent proxy.
    let agent = w.path("host/agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    spec.mounts = vec![
        StepMount {
            target: "/run/secrets/s".into(),
            kind: StepMountKind::Secret {
                data: b"x".to_vec(),
                uid: 0,
                gid: 0,
                mode: 0o400,
            },
        },
        cache("/c", "cancelled", CacheSharing::Locked),
        StepMount {
            target: "/run/ssh".into(),
            kind: StepMountKind::Ssh {
                agent_socket: agent.clone(),
                uid: 0,
                gid: 0,
                mode: 0o600,
            },
        },
    ];
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let started = Instant::now();
    let result = w
        .try_run_with(&spec, &cancel, |line| {
            if line == "started" {
                let canceller = canceller.clone();
                tokio::spawn(async move {
                    // Time for the shell to start both sleeps.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    canceller.cancel();
                });
            }
        })
        .await;
    assert!(
        matches!(result, Err(RunError::Cancelled)),
        "{}: {:?}",
        w.name(),
        result.map(|r| r.lines)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    for s in [a, b] {
        let left = common::pids_with_argv(&["sleep", &s.to_string()]);
        assert!(left.is_empty(), "{}: sleep {s} left: {left:?}", w.name());
    }
    // (The upper dir of a cancelled step is the caller's to discard; it may hold mount stubs.)
    w.assert_nothing_left();
    // The cache lock went with the step: a locked user gets it at once.
    let mut next = w.spec("echo got-it");
    next.mounts = vec![cache("/c", "cancelled", CacheSharing::Locked)];
    let got = tokio::time::timeout(Duration::from_secs(20), w.ok(&next)).await;
    assert_eq!(got.expect("the cache lock was not released"), ["got-it"]);
}

async fn cancel_while_waiting_for_a_locked_cache(w: &World) {
    let mut hold = w.spec("echo holding; sleep 5");
    hold.mounts = vec![cache("/c", "contended", CacheSharing::Locked)];
    let waiter = {
        let mut s = w.spec("echo should-not-run");
        s.mounts = hold.mounts.clone();
        s
    };
    let holding = tokio::sync::Notify::new();
    let cancel = CancellationToken::new();
    let never = CancellationToken::new();
    let held = w.try_run_with(&hold, &never, |line| {
        if line == "holding" {
            holding.notify_one();
        }
    });
    let waited = async {
        holding.notified().await;
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.cancel();
        });
        let start = Instant::now();
        let r = w.try_run_with(&waiter, &cancel, |_| {}).await;
        (r, start.elapsed())
    };
    let (held, (waited, elapsed)) = tokio::join!(held, waited);
    assert_eq!(held.unwrap().outcome.exit_code, 0);
    assert!(
        matches!(waited, Err(RunError::Cancelled)),
        "{}: {:?}",
        w.name(),
        waited.map(|r| r.lines)
    );
    // It stopped waiting when cancelled, not when the holder let go.
    assert!(
        elapsed < Duration::from_secs(4),
        "{}: {elapsed:?}",
        w.name()
    );
    w.assert_nothing_left();
}

async fn network_none_and_host(w: &World) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        // One connection is expected: the host-network step's.
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        let _ = conn.read_to_string(&mut got);
        got
    });
    let fetch = format!("echo ping-from-step | nc -w 3 127.0.0.1 {port}");
    let mut none = w.spec(&format!("ip link show lo; {fetch}"));
    none.network = NetworkMode::None;
    let ran = w.run(&none).await;
    assert_ne!(ran.outcome.exit_code, 0, "{}: {:?}", w.name(), ran.lines);
    // Loopback is up in the new network namespace.
    assert!(
        ran.stdout()
            .iter()
            .any(|l| l.contains("lo:") && l.contains("UP")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    let mut host = w.spec(&fetch);
    host.network = NetworkMode::Host;
    assert_eq!(w.ok(&host).await, Vec::<String>::new());
    assert_eq!(served.join().unwrap(), "ping-from-step\n");
}

/// Issue 11.4: a RUN step read the host's loopback services (the registry API on 127.0.0.1:5000).
/// On the default network it reaches none: not directly (its namespace is private), not through
/// forge's proxy (403, saying how to allow it). `none` has no proxy at all; `host` still reaches it.
/// The proxy variables are the step's own when it sets them.
async fn issue11_sandbox_reaches_no_host_loopback_service(w: &World) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let sandbox = w.spec(&format!(
        "echo proxy=$HTTP_PROXY,$https_proxy,$NO_PROXY; \
         echo x | nc -w 3 127.0.0.1 {port} && echo DIRECT-REACHED; \
         {}; {}; {}",
        common::via_proxy(&format!(r"GET http://127.0.0.1:{port}/ HTTP/1.0\r\n\r\n")),
        common::via_proxy(&format!(r"GET http://localhost:{port}/ HTTP/1.0\r\n\r\n")),
        common::via_proxy(&format!(
            r"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )),
    ));
    let ran = w.run(&sandbox).await;
    let out = ran.stdout();
    assert!(
        out.contains(
            &"proxy=http://127.0.0.1:3128,http://127.0.0.1:3128,localhost,127.0.0.1,::1".into()
        ),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    assert!(
        !out.iter().any(|l| l.contains("REACHED")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    let refused = out.iter().filter(|l| l.contains("403 Forbidden")).count();
    assert_eq!(refused, 3, "{}: {:?}", w.name(), ran.lines);
    assert!(
        out.iter()
            .any(|l| l.contains("the host's loopback") && l.contains("--allow network.host")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    assert!(
        listener.accept().is_err(),
        "{}: a connection arrived from a sandboxed step",
        w.name()
    );

    let mut own = w.spec("echo proxy=$HTTP_PROXY,$http_proxy,$HTTPS_PROXY");
    own.env = vec![("HTTP_PROXY".into(), "http://users-choice:1".into())];
    assert_eq!(
        w.ok(&own).await,
        ["proxy=http://users-choice:1,,http://127.0.0.1:3128"]
    );

    let mut none = w.spec(&format!(
        "echo proxy=$HTTP_PROXY; echo x | nc -w 3 127.0.0.1 {} && echo PROXY-REACHED; \
         echo x | nc -w 3 127.0.0.1 {port} && echo DIRECT-REACHED; true",
        forge_runner::network::PROXY_PORT
    ));
    none.network = NetworkMode::None;
    assert_eq!(w.ok(&none).await, ["proxy="], "{}", w.name());

    // The server answers and closes: nc waits for that.
    listener.set_nonblocking(false).unwrap();
    let served = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut conn, b"host-service\n").unwrap();
    });
    let mut host = w.spec(&format!("nc -w 3 127.0.0.1 {port} </dev/null"));
    host.network = NetworkMode::Host;
    assert_eq!(w.ok(&host).await, ["host-service"], "{}", w.name());
    served.join().unwrap();
}

/// Issue 11.4: on the default network the outside world is reached through forge's proxy, as
/// tools that honour `*_PROXY` do (busybox wget here), and by a CONNECT tunnel (https). The
/// "outside" is a network namespace the test makes; its host-side address, one of the host's own,
/// is refused.
async fn issue11_sandbox_reaches_the_outside_through_the_proxy(w: &World) {
    if forge_testsupport::tool("ip").is_none() {
        return;
    }
    let net = common::TestNet::new(&[("file", "served-from-outside-42\n")]);
    let port = common::TestNet::PORT;
    let ns = &net.ns_addr;
    let host = &net.host_addr;
    let script = format!(
        "wget -q -O- {url}; {tunnel}; \
         wget -q -O- http://{host}:{port}/file || echo REFUSED-OWN-ADDRESS; {own}",
        url = net.url("file"),
        tunnel = common::via_proxy(&format!(
            r"CONNECT {ns}:{port} HTTP/1.1\r\nHost: {ns}:{port}\r\n\r\nGET /file HTTP/1.0\r\nHost: {ns}\r\n\r\n"
        )),
        own = common::via_proxy(&format!(r"GET http://{host}:{port}/file HTTP/1.0\r\n\r\n")),
    );
    let ran = w.run(&w.spec(&script)).await;
    let out = ran.stdout();
    let served = out
        .iter()
        .filter(|l| l.contains("served-from-outside-42"))
        .count();
    assert_eq!(served, 2, "{}: {:?}", w.name(), ran.lines);
    assert!(
        out.iter()
            .any(|l| l.starts_with("HTTP/1.1 200") || l.starts_with("HTTP/1.0 200")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    assert!(
        out.contains(&"REFUSED-OWN-ADDRESS".into())
            && out.iter().any(|l| l.contains("own interfaces")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    drop(net);
}

async fn hostname(w: &World) {
    let mut spec = w.spec("hostname; cat /etc/hostname; grep -c 'contract-host' /etc/hosts");
    spec.hostname = "contract-host".into();
    assert_eq!(w.ok(&spec).await, ["contract-host", "contract-host", "1"]);
    // The generated files are mounted over the rootfs's and never become part of it.
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(
            !w.upper.join(f).exists(),
            "{}: {f} in the upper dir",
            w.name()
        );
    }
}

/// BuildKit's sandbox on both backends: its hostname when the step names none, /dev/mqueue, a
/// 64 MiB /dev/shm unless `shm_size` says otherwise, and `ulimits` set before the command runs.
async fn issue14_buildkits_sandbox_with_shm_size_and_ulimits(w: &World) {
    let script = "hostname; grep -c ' /dev/mqueue mqueue ' /proc/mounts; \
                  grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9]*k'; ulimit -Sn; ulimit -Hn";
    let mut spec = w.spec(script);
    spec.hostname = String::new();
    let plain = w.ok(&spec).await;
    assert_eq!(
        plain[..3],
        ["buildkitsandbox", "1", "size=65536k"],
        "{}",
        w.name()
    );

    spec.shm_size = Some(forge_runner::Bytes(32 << 20));
    spec.ulimits = vec!["nofile=512:1024".parse().unwrap()];
    assert_eq!(
        w.ok(&spec).await,
        ["buildkitsandbox", "1", "size=32768k", "512", "1024"],
        "{}",
        w.name()
    );
}

async fn bind_read_only_and_read_write(w: &World) {
    let ro = w.path("host/ro");
    let rw = w.path("host/rw");
    for d in [&ro, &rw] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("input"), "from-host").unwrap();
    }
    let file = w.path("host/single");
    std::fs::write(&file, "one file").unwrap();
    let mut spec = w.spec(
        "cat /ro/input; echo; cat /deep/one; echo; touch /ro/new 2>/dev/null && echo WROTE-RO; \
         echo from-step > /rw/output && cat /rw/input",
    );
    spec.mounts = vec![
        StepMount {
            target: "/ro".into(),
            kind: StepMountKind::Bind {
                source: ro.clone(),
                readonly: true,
            },
        },
        StepMount {
            target: "/rw".into(),
            kind: StepMountKind::Bind {
                source: rw.clone(),
                readonly: false,
            },
        },
        StepMount {
            target: "/deep/one".into(),
            kind: StepMountKind::Bind {
                source: file,
                readonly: true,
            },
        },
    ];
    assert_eq!(w.ok(&spec).await, ["from-host", "one file", "from-host"]);
    assert!(!ro.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("output")).unwrap(),
        "from-step\n"
    );
    // Mount points made for the step are not part of its change.
    assert_eq!(w.upper_files(), Vec::<String>::new(), "{}", w.name());
    for d in ["ro", "rw", "deep"] {
        assert!(!w.upper.join(d).exists(), "{}: stub /{d} left", w.name());
    }
}

async fn cache_content_persists_between_steps(w: &World) {
    let mut first = w.spec("echo one >> /var/cache/thing/log");
    first.mounts = vec![cache("/var/cache/thing", "thing", CacheSharing::Shared)];
    w.ok(&first).await;
    let mut second = w.spec("echo two >> /cache/log; cat /cache/log");
    // Another target, another sharing mode: the id is what names the cache.
    second.mounts = vec![cache("/cache", "thing", CacheSharing::Locked)];
    assert_eq!(w.ok(&second).await, ["one", "two"]);
    // Kept in the one layout under the cache root, outside the rootfs.
    assert_eq!(
        std::fs::read_to_string(w.cache.join("v1/thing/0/log")).unwrap(),
        "one\ntwo\n"
    );
    assert!(!w.upper.join("var/cache/thing/log").exists());
    assert_eq!(w.upper_files(), Vec::<String>::new());
    // Ids that are paths or climb stay one directory under v1/.
    let mut odd = w.spec("echo odd > /c/f");
    odd.mounts = vec![cache("/c", "../../escape/..", CacheSharing::Shared)];
    w.ok(&odd).await;
    let names: Vec<String> = std::fs::read_dir(w.cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"%2E.%2F..%2Fescape%2F..".to_string()),
        "{names:?}"
    );
    assert!(!w.dir.path().join("escape").exists());
}

/// Two steps on one cache id, the second started once the first is inside: under `locked` the
/// second waits for the first to end; under `shared` both are in at once.
async fn cache_shared_and_locked(w: &World) {
    for (sharing, expected) in [
        (CacheSharing::Locked, ["a-in", "a-out", "b-in"]),
        (CacheSharing::Shared, ["a-in", "b-in", "a-out"]),
    ] {
        let id = format!("{sharing:?}");
        // The first waits (3 s at most) for the second's line, so under `shared` the order does not
        // hang on timing, and under `locked` the second is shown to wait the whole time.
        let mut a = w.spec(
            "echo a-in >> /c/log; echo in; i=0; \
             while [ $i -lt 30 ] && ! grep -q b-in /c/log; do sleep 0.1; i=$((i+1)); done; \
             echo a-out >> /c/log",
        );
        a.mounts = vec![cache("/c", &id, sharing)];
        let mut b = w.spec("echo b-in >> /c/log");
        b.mounts = a.mounts.clone();
        let inside = tokio::sync::Notify::new();
        let never = CancellationToken::new();
        let first = w.try_run_with(&a, &never, |line| {
            if line == "in" {
                inside.notify_one();
            }
        });
        let second = async {
            inside.notified().await;
            w.run(&b).await
        };
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first.unwrap().outcome.exit_code, 0);
        assert_eq!(second.outcome.exit_code, 0);
        let log = std::fs::read_to_string(w.cache.join("v1").join(&id).join("0/log")).unwrap();
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            expected,
            "{} {id}",
            w.name()
        );
    }
}

async fn cache_private(w: &World) {
    // The first step holds its instance until the test has peeked (a flag file through a bind).
    let flag = w.path("host/flag");
    std::fs::create_dir(&flag).unwrap();
    let mut hold = w.spec(
        "echo held > /c/mark; echo holding; i=0; \
         while [ $i -lt 200 ] && [ ! -e /flag/done ]; do sleep 0.1; i=$((i+1)); done",
    );
    hold.mounts = vec![
        cache("/c", "private", CacheSharing::Private),
        StepMount {
            target: "/flag".into(),
            kind: StepMountKind::Bind {
                source: flag.clone(),
                readonly: true,
            },
        },
    ];
    let mut peek = w.spec("cat /c/mark 2>/dev/null || echo empty");
    peek.mounts = vec![hold.mounts[0].clone()];
    let holding = tokio::sync::Notify::new();
    let never = CancellationToken::new();
    let held = w.try_run_with(&hold, &never, |line| {
        if line == "holding" {
            holding.notify_one();
        }
    });
    let (held, peeked) = tokio::join!(held, async {
        holding.notified().await;
        let peeked = w.ok(&peek).await;
        std::fs::write(flag.join("done"), "").unwrap();
        peeked
    });
    assert_eq!(held.unwrap().outcome.exit_code, 0);
    // While the first holds instance 0, the second gets an instance of its own.
    assert_eq!(peeked, ["empty"]);
    // A later step finds instance 0 free again, with what the first left.
    assert_eq!(w.ok(&peek).await, ["held"]);
    assert!(w.cache.join("v1/private/1").is_dir());
}

async fn cache_owner_and_mode(w: &World) {
    let mut spec = w.spec("stat -c '%a %u:%g' /c; echo mine > /c/f && stat -c '%u' /c/f");
    spec.user = tester();
    spec.mounts = vec![StepMount {
        target: "/c".into(),
        kind: StepMountKind::Cache {
            id: "owned".into(),
            sharing: CacheSharing::Shared,
            uid: 1000,
            gid: 1000,
            mode: 0o750,
            seed: None,
            readonly: false,
        },
    }];
    assert_eq!(w.ok(&spec).await, ["750 1000:1000", "1000"]);
    // Owner and mode apply when the cache is made; a later step with others changes nothing.
    if let StepMountKind::Cache { uid, mode, .. } = &mut spec.mounts[0].kind {
        (*uid, *mode) = (0, 0o700);
    }
    assert_eq!(w.ok(&spec).await, ["750 1000:1000", "1000"]);
}

async fn cache_from_seed(w: &World) {
    // A stage as the builder would mount it: files with owners and modes, a link out of it.
    let stage = w.path("host/stage");
    std::fs::create_dir_all(stage.join("out/sub")).unwrap();
    std::fs::create_dir_all(stage.join("etc")).unwrap();
    std::fs::write(stage.join("etc/marker"), "stage etc").unwrap();
    std::fs::write(stage.join("out/sub/file"), "seeded").unwrap();
    std::os::unix::fs::chown(stage.join("out/sub/file"), Some(1000), Some(2000)).unwrap();
    std::fs::set_permissions(
        stage.join("out/sub/file"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", stage.join("out/passwd-link")).unwrap();
    std::os::unix::fs::symlink("/etc", stage.join("etc-link")).unwrap();
    let seeded = |id: &str, path: &str| StepMount {
        target: "/c".into(),
        kind: StepMountKind::Cache {
            id: id.into(),
            sharing: CacheSharing::Shared,
            uid: 0,
            gid: 0,
            mode: 0o755,
            seed: Some(CacheSeed {
                root: stage.clone(),
                path: path.into(),
            }),
            readonly: false,
        },
    };
    let mut spec = w.spec(
        "cat /c/sub/file; echo; stat -c '%u:%g %a' /c/sub/file; readlink /c/passwd-link; \
         echo added > /c/added",
    );
    spec.mounts = vec![seeded("seeded", "/out")];
    assert_eq!(
        w.ok(&spec).await,
        ["seeded", "1000:2000 640", "/etc/passwd"]
    );
    // An existing cache is not seeded again, even from another seed.
    std::fs::write(stage.join("out/sub/file"), "changed").unwrap();
    let mut again = w.spec("cat /c/sub/file; echo; cat /c/added");
    again.mounts = vec![seeded("seeded", "/out")];
    assert_eq!(w.ok(&again).await, ["seeded", "added"]);
    // Links in the seed path resolve inside the stage: this is the stage's /etc, not the host's.
    let mut linked = w.spec("ls /c");
    linked.mounts = vec![seeded("linked", "/etc-link")];
    assert_eq!(w.ok(&linked).await, ["marker"]);
    // A seed that is not there fails the step's setup with the path in the message.
    let mut missing = w.spec("true");
    missing.mounts = vec![seeded("missing", "/nope")];
    let err = w.try_run(&missing).await.err().expect("a missing seed");
    assert!(err.to_string().contains("/nope"), "{}: {err}", w.name());
    w.assert_nothing_left();
}

async fn tmpfs(w: &World) {
    let mut spec = w.spec(
        "echo t > /scratch/t && cat /scratch/t; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; \
         grep ' /scratch ' /proc/mounts | grep -o 'size=[0-9]*k'",
    );
    spec.mounts = vec![StepMount {
        target: "/scratch".into(),
        kind: StepMountKind::Tmpfs {
            size: 1 << 20,
            readonly: false,
        },
    }];
    assert_eq!(w.ok(&spec).await, ["t", "tmpfs", "size=1024k"]);
    assert!(!w.upper.join("scratch").exists());
    assert_eq!(w.upper_files(), Vec::<String>::new());
}

/// `ro` on a cache or a tmpfs mount (BuildKit mounts every kind read-only when asked): the step
/// reads the cache and writes to neither; the cache keeps what it had.
async fn read_only_cache_and_tmpfs(w: &World) {
    let mut fill = w.spec("echo kept > /c/f");
    fill.mounts = vec![cache("/c", "ro-case", CacheSharing::Shared)];
    w.ok(&fill).await;
    let mut spec = w.spec(
        "cat /c/f; echo leak > /c/leak 2>/dev/null && echo WROTE-CACHE; \
         rm /c/f 2>/dev/null && echo REMOVED; echo t > /t/f 2>/dev/null && echo WROTE-TMPFS; \
         echo done",
    );
    let mut ro_cache = cache("/c", "ro-case", CacheSharing::Shared);
    if let StepMountKind::Cache { readonly, .. } = &mut ro_cache.kind {
        *readonly = true;
    }
    spec.mounts = vec![
        ro_cache,
        StepMount {
            target: "/t".into(),
            kind: StepMountKind::Tmpfs {
                size: 0,
                readonly: true,
            },
        },
    ];
    assert_eq!(w.ok(&spec).await, ["kept", "done"], "{}", w.name());
    let mut after = w.spec("ls /c");
    after.mounts = vec![cache("/c", "ro-case", CacheSharing::Shared)];
    assert_eq!(w.ok(&after).await, ["f"], "{}", w.name());
    assert_eq!(w.upper_files(), Vec::<String>::new(), "{}", w.name());
}

async fn secret_file_and_env(w: &World) {
    let secret = b"s3cret-contract-value-77".to_vec();
    let mut spec = w.spec(
        "cat /run/secrets/token; echo; stat -c '%u %g %a' /run/secrets/token; echo $API_KEY; \
         echo x > /run/secrets/token 2>/dev/null || echo read-only; cp /run/secrets/token /tmp/copy; \
         rm /tmp/copy",
    );
    spec.user = tester();
    spec.mounts = vec![StepMount {
        target: "/run/secrets/token".into(),
        kind: StepMountKind::Secret {
            data: secret.clone(),
            uid: 1000,
            gid: 1000,
            mode: 0o400,
        },
    }];
    spec.secret_env = vec![("API_KEY".into(), "env-secret".into())];
    assert_eq!(
        w.ok(&spec).await,
        [
            "s3cret-contract-value-77",
            "1000 1000 400",
            "env-secret",
            "read-only"
        ]
    );
    // Neither the mount point nor the bytes are in the change set; the tmpfs is gone.
    assert!(!w.upper.join("run").exists(), "{}", w.name());
    for p in common::walk(&w.upper) {
        if p.is_file() {
            assert!(
                !common::contains(&std::fs::read(&p).unwrap(), &secret),
                "{}: secret in {}",
                w.name(),
                p.display()
            );
        }
    }
    w.assert_nothing_left();
}

async fn ssh_agent_socket(w: &World) {
    // A stand-in agent: answers "pong" to whatever a client sends.
    let agent_path = w.path("host/agent.sock");
    let agent = tokio::net::UnixListener::bind(&agent_path).unwrap();
    let agent_task = tokio::spawn(async move {
        let (mut conn, _) = agent.accept().await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(b"pong").await.unwrap();
        buf
    });
    let mut spec = w.spec(
        "echo \"sock=$SSH_AUTH_SOCK\"; test -S \"$SSH_AUTH_SOCK\" && stat -c '%u %a' \"$SSH_AUTH_SOCK\"; \
         sleep 2",
    );
    spec.mounts = vec![StepMount {
        target: "/run/buildkit/ssh_agent.0".into(),
        kind: StepMountKind::Ssh {
            agent_socket: agent_path.clone(),
            uid: 1000,
            gid: 1000,
            mode: 0o600,
        },
    }];
    // busybox has no unix-socket client: the forwarding is exercised from the host side, through
    // the proxy socket the step has mounted, while the step runs.
    let state = w.state.clone();
    let client = tokio::spawn(async move {
        for _ in 0..100 {
            let found = std::fs::read_dir(&state)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("ssh-0.sock"))
                .find(|p| p.exists());
            // The socket file exists from bind(), a moment before listen(): retry until it takes.
            if let Some(proxy) = found
                && let Ok(mut conn) = tokio::net::UnixStream::connect(&proxy).await
            {
                conn.write_all(b"ping").await.unwrap();
                let mut answer = [0u8; 4];
                conn.read_exact(&mut answer).await.unwrap();
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the proxy socket never appeared");
    });
    assert_eq!(
        w.ok(&spec).await,
        ["sock=/run/buildkit/ssh_agent.0", "1000 600"]
    );
    assert_eq!(&client.await.unwrap(), b"pong");
    assert_eq!(&agent_task.await.unwrap(), b"ping");
    // The agent's own socket was not touched.
    let meta = std::fs::metadata(&agent_path).unwrap();
    assert_eq!(meta.uid(), 0);
    assert!(!w.upper.join("run").exists());
    w.assert_nothing_left();
    // A step that sets SSH_AUTH_SOCK itself keeps its value.
    let mut own = w.spec("echo $SSH_AUTH_SOCK");
    own.env = vec![("SSH_AUTH_SOCK".into(), "/mine".into())];
    own.mounts = spec.mounts.clone();
    assert_eq!(w.ok(&own).await, ["/mine"]);
}

async fn rootfs_changes_land_in_the_upper_dir(w: &World) {
    // A step that changes nothing leaves no file behind (directories copied up for mount points
    // may remain, and carry no change).
    w.ok(&w.spec("true")).await;
    assert_eq!(w.upper_files(), Vec::<String>::new(), "{}", w.name());
    let spec = w.spec(
        "mkdir /data && echo x > /data/file && chown 1000:2000 /data/file && chmod 0751 /data && \
         ln -s file /data/link && rm /old/file",
    );
    w.ok(&spec).await;
    let file = std::fs::symlink_metadata(w.upper.join("data/file")).unwrap();
    assert_eq!((file.uid(), file.gid()), (1000, 2000));
    let dir = std::fs::metadata(w.upper.join("data")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o751);
    assert_eq!(
        std::fs::read_link(w.upper.join("data/link")).unwrap(),
        Path::new("file")
    );
    // A deleted lower file is an overlay whiteout: a 0/0 character device.
    let whiteout = std::fs::symlink_metadata(w.upper.join("old/file")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        w.upper_files(),
        ["data/file", "data/link", "old/file"],
        "{}",
        w.name()
    );
    // The next step on the same upper dir sees the change.
    assert_eq!(
        w.ok(&w.spec("cat /data/file; ls /old | wc -l")).await,
        ["x", "0"]
    );
}

async fn what_a_step_leaves_running_ends_with_it(w: &World) {
    // The shell ends at once and leaves two processes behind, their output elsewhere (so the end
    // of the step's output does not wait for them): one that would write into the rootfs a little
    // later, one that would sleep on. Once the run returns, both are gone, and so the upper dir
    // (what becomes the layer) has nothing the step did not do while it ran.
    let marker = unique_seconds();
    let script = format!(
        "(sleep 0.4; echo late > /late) >/dev/null 2>&1 & sleep {marker} >/dev/null 2>&1 & \
         echo started; touch /made"
    );
    assert_eq!(w.ok(&w.spec(&script)).await, ["started"]);
    let left = common::pids_with_argv(&["sleep", &marker.to_string()]);
    assert!(
        left.is_empty(),
        "{}: step processes left: {left:?}",
        w.name()
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(w.upper_files(), ["made"], "{}", w.name());
}

async fn snapshotter_mount(w: &World) {
    // A read-only overlay of two host dirs, as a snapshotter hands out for a view of a stage.
    let (a, b) = (w.path("host/a"), w.path("host/b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("top"), "from-a").unwrap();
    std::fs::write(b.join("bottom"), "from-b").unwrap();
    let mut spec =
        w.spec("cat /view/top /view/bottom; echo; touch /view/x 2>/dev/null || echo view-ro");
    spec.mounts = vec![StepMount {
        target: "/view".into(),
        kind: StepMountKind::Raw(Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}:{}", a.display(), b.display())],
        }),
    }];
    assert_eq!(w.ok(&spec).await, ["from-afrom-b", "view-ro"]);
    assert!(!w.upper.join("view").exists());
    w.assert_nothing_left();
}

// ---------------------------------------------------------------------------------------------
// Issue 11.1: host changes from a RUN step run as root. Each case failed before the step was
// confined (no seccomp filter, /proc/sys writable, host devices reachable through mknod).

const PRINTK_RATELIMIT: &str = "/proc/sys/kernel/printk_ratelimit";

async fn issue11_proc_sys_write_is_refused_and_the_host_value_unchanged(w: &World) {
    let before = std::fs::read_to_string(PRINTK_RATELIMIT).unwrap();
    let other = before.trim().parse::<u32>().unwrap() + 1;
    let ran = w
        .run(&w.spec(&format!(
            "echo {other} > {PRINTK_RATELIMIT} && echo WROTE; echo x > /proc/sysrq-trigger && echo SYSRQ"
        )))
        .await;
    let after = std::fs::read_to_string(PRINTK_RATELIMIT).unwrap();
    if after != before {
        // Put the host back before failing.
        std::fs::write(PRINTK_RATELIMIT, &before).unwrap();
    }
    assert_eq!(
        after,
        before,
        "{}: the step changed the host's sysctl",
        w.name()
    );
    let out = ran.stdout();
    assert!(
        !out.contains(&"WROTE".to_string()),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    assert!(
        !out.contains(&"SYSRQ".to_string()),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    let err = ran.of(Stream::Stderr).join("\n");
    assert!(err.contains("Read-only file system"), "{}: {err}", w.name());
    // Reading stays possible.
    assert_eq!(
        w.ok(&w.spec(&format!("cat {PRINTK_RATELIMIT}"))).await,
        [before.trim()]
    );
}

async fn issue11_masked_kernel_files_show_nothing(w: &World) {
    // Only what this host has: a masked path that does not exist shows nothing anyway.
    let present: Vec<&str> = forge_runner::confine::MASKED_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(!present.is_empty(), "no masked path exists on this host");
    let script = present
        .iter()
        .map(|p| {
            format!("echo \"{p} $(ls -A {p} 2>/dev/null | wc -l) $(cat {p} 2>/dev/null | wc -c)\"")
        })
        .collect::<Vec<_>>()
        .join("; ");
    let out = w.ok(&w.spec(&script)).await;
    for (p, line) in present.iter().zip(&out) {
        // A directory lists no entry; a file reads as /dev/null (ls of a file names it: 1 line).
        let is_dir = Path::new(p).is_dir();
        let want = if is_dir {
            format!("{p} 0 0")
        } else {
            format!("{p} 1 0")
        };
        assert_eq!(line, &want, "{}: {out:?}", w.name());
    }
}

async fn issue11_mknod_of_a_host_device_cannot_be_opened_anywhere(w: &World) {
    let rw = w.path("host/rw");
    std::fs::create_dir_all(&rw).unwrap();
    // c 1 11 is /dev/kmsg: a write lands in the host's kernel log.
    let mut spec = w.spec(
        "for d in / /tmp /dev /dev/shm /rw; do \
           mknod $d/kmsg c 1 11 && echo forge-issue11-test > $d/kmsg && echo OPENED $d; \
         done; echo null > /dev/null && echo NULL-OK",
    );
    spec.mounts = vec![StepMount {
        target: "/rw".into(),
        kind: StepMountKind::Bind {
            source: rw.clone(),
            readonly: false,
        },
    }];
    let ran = w.run(&spec).await;
    let out = ran.stdout();
    assert!(
        !out.iter().any(|l| l.starts_with("OPENED")),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    // The standard devices still work: the denial is about other nodes, not all of /dev.
    assert!(
        out.contains(&"NULL-OK".to_string()),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
}

async fn issue11_a_step_runs_under_a_seccomp_filter(w: &World) {
    let out = w.ok(&w.spec("grep '^Seccomp:' /proc/self/status")).await;
    assert_eq!(out, ["Seccomp:\t2"], "{}", w.name());
}

async fn issue11_syscalls_the_default_profile_denies_fail_and_insecure_lifts_it(w: &World) {
    // A new user namespace needs no capability, so only the filter refuses it; mount and
    // sethostname need CAP_SYS_ADMIN, which only an insecure step has.
    let script = "unshare -U true && echo USERNS; mount -t tmpfs t /mnt && echo MOUNT; \
                  grep '^Seccomp:' /proc/self/status";
    let ran = w.run(&w.spec(script)).await;
    assert_eq!(
        ran.stdout(),
        ["Seccomp:\t2"],
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    let err = ran.of(Stream::Stderr).join("\n");
    assert!(
        err.contains("Operation not permitted"),
        "{}: {err}",
        w.name()
    );

    let mut insecure = w.spec(&format!("mkdir -p /mnt; {script}"));
    insecure.security = Security::Insecure;
    let ran = w.run(&insecure).await;
    assert_eq!(
        ran.stdout(),
        ["USERNS", "MOUNT", "Seccomp:\t0"],
        "{}: {:?}",
        w.name(),
        ran.lines
    );
}

/// Issue 11, `--memory`: a step that allocates past its limit is killed by the kernel and the outcome
/// names the limit (an exit code of 137 alone could be any SIGKILL); one that stays under it runs as
/// it would without, inside the step's own cgroup.
async fn issue11_a_step_past_its_memory_limit_is_killed_and_says_so(w: &World) {
    let limits = Limits {
        memory: Some(Bytes(32 << 20)),
        cpus: None,
    };
    let mut over = w.spec("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}");
    over.limits = limits;
    let ran = w.run(&over).await;
    assert_ne!(ran.outcome.exit_code, 0, "{}: {:?}", w.name(), ran.lines);
    assert_eq!(
        ran.outcome.memory_limit_hit,
        Some(Bytes(32 << 20)),
        "{}: {:?}",
        w.name(),
        ran.lines
    );
    let mut under =
        w.spec("x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}; cat /proc/self/cgroup");
    under.limits = limits;
    let lines = w.ok(&under).await;
    assert!(
        lines.iter().any(|l| l == "1000000"),
        "{}: {lines:?}",
        w.name()
    );
    assert!(
        lines.iter().any(|l| l.contains(":memory:/forge/")),
        "{}: the step is not in a cgroup of forge's: {lines:?}",
        w.name()
    );
    // Without a limit the same allocation that was killed succeeds.
    let free = w
        .ok(&w.spec("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"))
        .await;
    assert!(
        free.iter().any(|l| l == "100000000"),
        "{}: {free:?}",
        w.name()
    );
    w.assert_nothing_left();
}

/// CPU seconds (user + sys) from busybox `time`'s report in `lines`.
fn cpu_seconds(lines: &[String]) -> f64 {
    let field = |name: &str| -> f64 {
        let l = lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {lines:?}"));
        // "user\t0m 0.38s"
        let t = l[name.len()..].trim();
        let (m, s) = t.split_once('m').expect("minutes");
        m.trim().parse::<f64>().unwrap() * 60.0
            + s.trim().trim_end_matches('s').parse::<f64>().unwrap()
    };
    field("user") + field("sys")
}

/// Issue 11, `--cpus`: a step that spins for 2 s under a limit of 0.1 CPU gets about 0.2 s of CPU
/// (the CFS quota), never a whole CPU; it runs in a cgroup of forge's.
async fn issue11_a_busy_step_gets_no_more_cpu_than_its_limit(w: &World) {
    let script = "time timeout 2 sh -c 'while :; do :; done' 2>&1; cat /proc/self/cgroup";
    let mut limited = w.spec(script);
    limited.limits = Limits {
        memory: None,
        cpus: Some(NanoCpus(100_000_000)),
    };
    let lines = w.ok(&limited).await;
    let used = cpu_seconds(&lines);
    let free = cpu_seconds(&w.ok(&w.spec(script)).await);
    eprintln!(
        "{}: 2 s of spinning used {used:.2} s of CPU at --cpus 0.1, {free:.2} s without",
        w.name()
    );
    assert!(
        used <= 0.5,
        "{}: {used} s of CPU under a 0.1 CPU limit: {lines:?}",
        w.name()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cpu") && l.contains("/forge/")),
        "{}: the step is not in a cgroup of forge's: {lines:?}",
        w.name()
    );
    w.assert_nothing_left();
}
