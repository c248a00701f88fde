//! Runs one step with the embedded backend from command-line flags: the integration tests and
//! benches/step.sh drive it as root and as an unprivileged user (it enters the user namespace first).
//!
//! forge-runner-step [--runner embedded|containerd] [--containerd-address SOCK]
//!   --state-dir D --cache-root D (--overlay LOWER:UPPER:WORK | --bind-rootfs DIR)
//!   [--env K=V] [--cwd P] [--user U[:G]] [--hostname H] [--network sandbox|host|none] [--shell]
//!   [--security sandbox|insecure] [--memory BYTES] [--cpus N]
//!   [--mount-bind SRC:TARGET[:rw]] [--mount-cache ID:TARGET[:SHARING[:UID:GID:MODE]]]
//!   [--cache-seed ROOT[:PATH]] (the previous --mount-cache starts from PATH inside ROOT)
//!   [--mount-tmpfs TARGET[:SIZE]] [--mount-secret FILE:TARGET[:UID:GID:MODE]] [--mount-ssh SOCK:TARGET]
//!   [--secret-env NAME=VALUE] [--cancel-after-ms N] [--repeat N] [--quiet] -- ARGV...
//!
//! forge-runner-step --remove-tree DIR   removes DIR from inside the user namespace.
//!
//! Output lines are echoed to stdout/stderr; the last stderr line is `forge-runner-step: exit=N ...`;
//! the process exits with the step's code, 130 when cancelled, 125 on a setup error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use forge_runner::embedded::{EmbeddedConfig, EmbeddedRunner, UserNamespace, enter_user_namespace};
use forge_runner::spec::{CacheSeed, CacheSharing};
use forge_runner::{
    Backend, CancellationToken, Command, NetworkMode, RunError, Runner, Security, StepMount,
    StepMountKind, StepSpec, Stream, User,
};
use forge_snapshotter::Mount;

/// Which backend runs the step; containerd's address defaults to `$CONTAINERD_ADDRESS`.
enum BackendChoice {
    Embedded,
    Containerd { address: Option<PathBuf> },
}

struct Args {
    backend: BackendChoice,
    spec: StepSpec,
    state_dir: PathBuf,
    cache_root: PathBuf,
    cancel_after: Option<Duration>,
    repeat: usize,
    quiet: bool,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("mode {s:?}: {e}"))
}

fn num(s: &str) -> Result<u32, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut spec = StepSpec {
        command: Command::Exec(Vec::new()),
        env: Vec::new(),
        cwd: PathBuf::from("/"),
        user: User::default(),
        hostname: String::new(),
        network: NetworkMode::Sandbox,
        join_network: None,
        extra_hosts: Vec::new(),
        proxy_upstream: None,
        rootfs: Vec::new(),
        mounts: Vec::new(),
        secret_env: Vec::new(),
        security: Default::default(),
        limits: Default::default(),
        ulimits: Vec::new(),
        shm_size: None,
    };
    let (mut state_dir, mut cache_root) = (None, None);
    let (mut runner, mut containerd_address) = (String::from("embedded"), None);
    let (mut cancel_after, mut repeat, mut quiet, mut shell) = (None, 1, false, false);
    while let Some(flag) = it.next() {
        if flag == "--" {
            break;
        }
        if flag == "--quiet" || flag == "--shell" {
            if flag == "--quiet" {
                quiet = true;
            } else {
                shell = true;
            }
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let parts: Vec<&str> = value.split(':').collect();
        let mount = |target: &str, kind| StepMount {
            target: PathBuf::from(target),
            kind,
        };
        match flag.as_str() {
            "--runner" => runner = value,
            "--containerd-address" => containerd_address = Some(PathBuf::from(value)),
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--cache-root" => cache_root = Some(PathBuf::from(value)),
            "--overlay" => {
                let [lower, upper, work] = parts[..] else {
                    return Err("--overlay LOWER:UPPER:WORK".into());
                };
                spec.rootfs.push(Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options: vec![
                        format!("lowerdir={lower}"),
                        format!("upperdir={upper}"),
                        format!("workdir={work}"),
                    ],
                });
            }
            "--bind-rootfs" => spec.rootfs.push(Mount::bind(value, false)),
            "--env" => {
                let (k, v) = value.split_once('=').ok_or("--env K=V")?;
                spec.env.push((k.into(), v.into()));
            }
            "--secret-env" => {
                let (k, v) = value.split_once('=').ok_or("--secret-env K=V")?;
                spec.secret_env.push((k.into(), v.into()));
            }
            "--cwd" => spec.cwd = PathBuf::from(value),
            "--user" => {
                spec.user = match value.split_once(':') {
                    Some((u, g)) => User {
                        user: u.into(),
                        group: Some(g.into()),
                    },
                    None => User {
                        user: value,
                        group: None,
                    },
                }
            }
            "--hostname" => spec.hostname = value,
            "--memory" => spec.limits.memory = Some(value.parse()?),
            "--cpus" => spec.limits.cpus = Some(value.parse()?),
            "--security" => {
                spec.security = match value.as_str() {
                    "sandbox" => Security::Sandbox,
                    "insecure" => Security::Insecure,
                    other => return Err(format!("unknown security mode {other:?}")),
                }
            }
            "--network" => {
                spec.network = match value.as_str() {
                    "sandbox" => NetworkMode::Sandbox,
                    "host" => NetworkMode::Host,
                    "none" => NetworkMode::None,
                    other => return Err(format!("unknown network mode {other:?}")),
                }
            }
            "--mount-bind" => spec.mounts.push(mount(
                parts.get(1).ok_or("--mount-bind SRC:TARGET[:rw]")?,
                StepMountKind::Bind {
                    source: PathBuf::from(parts[0]),
                    readonly: parts.get(2) != Some(&"rw"),
                },
            )),
            "--mount-cache" => {
                let sharing = match parts.get(2).copied().unwrap_or("shared") {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => return Err(format!("unknown sharing {other:?}")),
                };
                let (uid, gid, mode) = match parts.get(3..6) {
                    Some([u, g, m]) => (num(u)?, num(g)?, parse_mode(m)?),
                    _ => (0, 0, 0o755),
                };
                spec.mounts.push(mount(
                    parts.get(1).ok_or("--mount-cache ID:TARGET")?,
                    StepMountKind::Cache {
                        id: parts[0].into(),
                        sharing,
                        uid,
                        gid,
                        mode,
                        seed: None,
                        readonly: false,
                    },
                ))
            }
            "--cache-seed" => {
                let Some(StepMount {
                    kind: StepMountKind::Cache { seed, .. },
                    ..
                }) = spec.mounts.last_mut()
                else {
                    return Err("--cache-seed follows a --mount-cache".into());
                };
                *seed = Some(CacheSeed {
                    root: PathBuf::from(parts[0]),
                    path: PathBuf::from(parts.get(1).copied().unwrap_or("/")),
                });
            }
            "--mount-tmpfs" => spec.mounts.push(mount(
                parts[0],
                StepMountKind::Tmpfs {
                    size: parts
                        .get(1)
                        .map(|s| s.parse())
                        .transpose()
                        .map_err(|e| format!("{e}"))?
                        .unwrap_or(0),
                    readonly: false,
                },
            )),
            "--mount-secret" => {
                let data =
                    std::fs::read(parts[0]).map_err(|e| format!("read {}: {e}", parts[0]))?;
                let (uid, gid, mode) = match parts.get(2..5) {
                    Some([u, g, m]) => (num(u)?, num(g)?, parse_mode(m)?),
                    _ => (0, 0, 0o400),
                };
                spec.mounts.push(mount(
                    parts.get(1).ok_or("--mount-secret FILE:TARGET")?,
                    StepMountKind::Secret {
                        data,
                        uid,
                        gid,
                        mode,
                    },
                ))
            }
            "--mount-ssh" => spec.mounts.push(mount(
                parts.get(1).ok_or("--mount-ssh SOCK:TARGET")?,
                StepMountKind::Ssh {
                    agent_socket: PathBuf::from(parts[0]),
                    uid: 0,
                    gid: 0,
                    mode: 0o600,
                },
            )),
            "--cancel-after-ms" => {
                cancel_after = Some(Duration::from_millis(
                    value.parse().map_err(|e| format!("{e}"))?,
                ))
            }
            "--repeat" => repeat = value.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let argv: Vec<String> = it.collect();
    spec.command = if shell {
        Command::Shell {
            shell: vec!["/bin/sh".into(), "-c".into()],
            script: argv.join(" "),
        }
    } else {
        Command::Exec(argv)
    };
    let backend = match runner.as_str() {
        "embedded" if containerd_address.is_none() => BackendChoice::Embedded,
        "embedded" => return Err("--containerd-address needs --runner containerd".into()),
        "containerd" => BackendChoice::Containerd {
            address: containerd_address,
        },
        other => {
            return Err(format!(
                "unknown --runner {other:?} (embedded or containerd)"
            ));
        }
    };
    Ok(Args {
        backend,
        spec,
        state_dir: state_dir.ok_or("--state-dir is required")?,
        cache_root: cache_root.ok_or("--cache-root is required")?,
        cancel_after,
        repeat,
        quiet,
    })
}

fn main() -> ExitCode {
    // First, while single-threaded: a non-root caller moves into its user namespace here.
    match enter_user_namespace() {
        Ok(UserNamespace::SingleId { warning, .. }) => {
            eprintln!("forge-runner-step: warning: {warning}")
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("forge-runner-step: {e}");
            return ExitCode::from(125);
        }
    }
    // Files a rootless step chowned belong to subordinate ids the user cannot remove from outside the
    // namespace; inside it, as namespace-root, it can (as `podman unshare rm -rf`).
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 3 && argv[1] == "--remove-tree" {
        return match std::fs::remove_dir_all(&argv[2]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("forge-runner-step: remove {}: {e}", argv[2]);
                ExitCode::from(1)
            }
        };
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("forge-runner-step: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Through the Backend enum, as the builder selects a backend.
    let runner = match &args.backend {
        BackendChoice::Embedded => {
            match EmbeddedRunner::new(EmbeddedConfig::new(&args.state_dir, &args.cache_root)) {
                Ok(r) => Backend::Embedded(r),
                Err(e) => {
                    eprintln!("forge-runner-step: {e}");
                    return ExitCode::from(125);
                }
            }
        }
        BackendChoice::Containerd { address } => {
            use forge_runner::containerd::{ContainerdConfig, ContainerdRunner};
            let Some(mut config) = address
                .clone()
                .map(ContainerdConfig::new)
                .or_else(ContainerdConfig::from_env)
            else {
                eprintln!(
                    "forge-runner-step: --runner containerd needs --containerd-address or CONTAINERD_ADDRESS"
                );
                return ExitCode::from(2);
            };
            config.state_dir = args.state_dir.clone();
            config.cache_root = args.cache_root.clone();
            match ContainerdRunner::connect(config).await {
                Ok(r) => Backend::Containerd(r),
                Err(e) => {
                    eprintln!("forge-runner-step: {e}");
                    return ExitCode::from(125);
                }
            }
        }
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let cancel_after = args.cancel_after;
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let timer = async {
            match cancel_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = timer => {}
        }
        c.cancel();
    });
    let quiet = args.quiet;
    let mut output = |stream: Stream, line: &str| {
        if quiet {
            return;
        }
        match stream {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }
    };
    let mut code = 0u8;
    for _ in 0..args.repeat {
        match runner.run(&args.spec, &mut output, &cancel).await {
            Ok(outcome) => {
                eprintln!(
                    "forge-runner-step: exit={} duration_ms={:.3} tail={}{}",
                    outcome.exit_code,
                    outcome.duration.as_secs_f64() * 1000.0,
                    outcome.tail.len(),
                    outcome
                        .memory_limit_hit
                        .map(|l| format!(" memory_limit_hit={}", l.0))
                        .unwrap_or_default()
                );
                code = outcome.exit_code.clamp(0, 255) as u8;
            }
            Err(RunError::Cancelled) => {
                eprintln!("forge-runner-step: cancelled");
                code = 130;
                break;
            }
            Err(e) => {
                eprintln!("forge-runner-step: error: {e}");
                code = 125;
                break;
            }
        }
    }
    // containerd keeps what a lease holds until the lease goes: give it back now.
    if let Backend::Containerd(r) = runner
        && let Err(e) = r.close().await
    {
        eprintln!("forge-runner-step: warning: could not delete the containerd lease: {e}");
    }
    ExitCode::from(code)
}
