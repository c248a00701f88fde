//! `forge info`: what forge finds on this machine, for a user setting it up (a CI image, a shared
//! host): who runs it and how it isolates steps, the snapshot backend the store gets, the store's
//! place and free space, cgroups for limits, the network options, and the TLS roots.

use std::path::{Path, PathBuf};

use clap::Args;
use forge_runner::embedded::{UserNamespace, enter_user_namespace};

use crate::{Failure, failed};

#[derive(Args)]
pub(crate) struct InfoArgs {
    /// The store directory (default: $XDG_DATA_HOME/forge, ~/.local/share/forge, or /var/lib/forge
    /// for root).
    #[arg(long, env = "FORGE_ROOT")]
    root: Option<PathBuf>,
}

fn line(key: &str, value: impl std::fmt::Display) {
    outln!("{key:<14} {value}");
}

/// Runs before any thread exists: entering the user namespace, as a build does, needs that.
pub(crate) fn info(args: &InfoArgs) -> Result<(), Failure> {
    line("forge", env!("CARGO_PKG_VERSION"));
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    line(
        "user",
        format!("{name} (uid {uid}, gid {})", nix::unistd::getgid()),
    );
    for tool in ["newuidmap", "newgidmap"] {
        line(
            tool,
            find_on_path(tool).map_or("not installed (package uidmap)".to_string(), |p| {
                p.display().to_string()
            }),
        );
    }
    // What a build does first: the same call, so what it says is what a build gets.
    let entered = enter_user_namespace();
    let userns_failed = entered.is_err();
    let isolation = match entered {
        Ok(UserNamespace::HostRoot) => "root on the host: no user namespace needed".to_string(),
        Ok(UserNamespace::AlreadyInside) => {
            "root of a user namespace someone else made (used as it is)".to_string()
        }
        Ok(UserNamespace::Mapped { subuid, subgid, .. }) => format!(
            "rootless: a user namespace with uids {} and gids {} mapped",
            ranges(&subuid),
            ranges(&subgid)
        ),
        Ok(UserNamespace::SingleId { warning, .. }) => {
            format!("rootless with only the caller's own ids mapped: {warning}")
        }
        Err(e) => format!("none: cannot enter a user namespace: {e}"),
    };
    line("user namespace", isolation);
    // The store as a build makes it (0700, refused where another user may change it); one that
    // cannot be had is said on its line, and the rest is still printed.
    let store = match &args.root {
        Some(r) => Ok(r.clone()),
        None => forge_snapshotter::store::default_root().map_err(|e| e.to_string()),
    }
    .and_then(|root| {
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        forge_snapshotter::store::close_to_others(&root).map_err(|e| e.to_string())?;
        Ok(root)
    });
    match &store {
        Ok(root) => line("store", format!("{} ({})", root.display(), space(root))),
        Err(e) => line("store", format!("none: {e}")),
    }
    // What `--isolation auto` would choose, from the same probe a build runs. A user whose user
    // namespace failed has none (and may be left in one without mappings, where a probe would
    // mislead): a build stops before it.
    // Whether the mode chosen gives steps a network namespace (the network line says which).
    let own_network = match (&store, userns_failed) {
        (_, true) => {
            line(
                "isolation",
                "none: as a non-root user every mode needs the user namespace above".to_string(),
            );
            true
        }
        (Err(e), false) => {
            line(
                "isolation",
                format!("not probed: no store to probe at ({e})"),
            );
            true
        }
        (Ok(root), false) => isolation_lines(root),
    };
    match &store {
        Ok(root) => {
            use forge_snapshotter::snapshot::BackendKind;
            let backend = forge_snapshotter::snapshot::probe(root);
            let why = match backend {
                BackendKind::Overlay => "a test mount at the store's place worked",
                BackendKind::FuseOverlay => {
                    "no native overlay mounts at the store's place; /dev/fuse opens and \
                     fuse-overlayfs is installed"
                }
                BackendKind::Copy => {
                    "neither overlay can be had at the store's place: snapshots are copies"
                }
            };
            line("snapshotter", format!("{backend} ({why})"));
        }
        Err(e) => line("snapshotter", format!("not probed: no store ({e})")),
    }
    line(
        "cgroups",
        match forge_runner::limits::Hierarchy::detect() {
            Some(forge_runner::limits::Hierarchy::Unified { root }) => {
                format!(
                    "v2 at {} (--memory/--cpus need write access there)",
                    root.display()
                )
            }
            Some(forge_runner::limits::Hierarchy::Legacy { memory, .. }) => format!(
                "v1, memory at {} (--memory/--cpus need write access there)",
                memory.display()
            ),
            None => "none found: --memory/--cpus are refused".to_string(),
        },
    );
    line(
        "network",
        format!(
            "RUN steps: {}; /dev/net/tun {}",
            if own_network {
                "a private namespace with forge's HTTP(S) proxy"
            } else {
                "the network of the container forge runs in (the isolation chosen here makes no \
                 network namespace)"
            },
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
            {
                Ok(_) =>
                    "can be opened (a user-mode network would work; forge does not use one yet)",
                Err(_) => "cannot be opened here (no slirp4netns or pasta)",
            }
        ),
    );
    let resolver = forge_snapshotter::registry::AuthResolver::from_env();
    line(
        "registries",
        match resolver.configured() {
            Ok(files) if files.is_empty() => {
                "no credentials configured (every registry anonymous)".to_string()
            }
            Ok(files) => files
                .iter()
                .map(|c| {
                    let mut what = if c.registries.is_empty() {
                        "no registry".to_string()
                    } else {
                        c.registries.join(", ")
                    };
                    if let Some(store) = &c.creds_store {
                        what.push_str(&format!("; others through docker-credential-{store}"));
                    }
                    format!("{what} (in {})", c.file.display())
                })
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("cannot read the credentials: {e}"),
        },
    );
    line(
        "mirrors",
        match forge_snapshotter::registry::Mirrors::from_env() {
            Err(e) => format!("cannot read registries.conf: {e}"),
            Ok(m) => match (&m.source, m.summary()) {
                (None, _) => "none (no registries.conf)".to_string(),
                (Some(f), s) if s.is_empty() => format!("none (in {})", f.display()),
                (Some(f), s) => {
                    let each: Vec<String> = s
                        .iter()
                        .map(|(prefix, mirrors, blocked)| {
                            let mut t = format!("{prefix} -> {}", mirrors.join(", "));
                            if *blocked {
                                t.push_str(" (the registry itself blocked)");
                            }
                            t
                        })
                        .collect();
                    format!("{} (in {})", each.join("; "), f.display())
                }
            },
        },
    );
    let roots = forge_snapshotter::registry::roots::trust_roots();
    line(
        "tls roots",
        format!(
            "{} certificates, {}",
            roots.certs.len(),
            match roots.source {
                forge_snapshotter::registry::roots::RootSource::System => "from the system",
                forge_snapshotter::registry::roots::RootSource::Bundled =>
                    "bundled (Mozilla's; the system has none)",
            }
        ),
    );
    line(
        "containerd",
        std::env::var("CONTAINERD_ADDRESS").map_or(
            "CONTAINERD_ADDRESS is not set (--runner containerd needs an address)".to_string(),
            |a| format!("CONTAINERD_ADDRESS={a}"),
        ),
    );
    store
        .map(|_| ())
        .map_err(|e| failed(format!("error: the store: {e}")))
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Free and total space of the filesystem holding `dir`.
fn space(dir: &Path) -> String {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let block = s.fragment_size() as f64;
            let gib = |blocks: u64| blocks as f64 * block / (1u64 << 30) as f64;
            format!(
                "{:.1} GiB free of {:.1} GiB",
                gib(s.blocks_available()),
                gib(s.blocks())
            )
        }
        Err(e) => format!("free space unknown: {e}"),
    }
}

/// Subordinate ranges as `forge info` shows them: `START-END (N ids)`, several joined with `, `
/// and their sum after them.
fn ranges(list: &[(u32, u32)]) -> String {
    let each: Vec<String> = list
        .iter()
        .map(|&(start, count)| format!("{start}-{}", u64::from(start) + u64::from(count) - 1))
        .collect();
    let total: u64 = list.iter().map(|&(_, count)| u64::from(count)).sum();
    format!("{} ({total} ids)", each.join(", "))
}

/// The isolation lines: what `--isolation auto` picks with the probe a build runs at the store's
/// `run/`, and what each mode met; whether the mode picked gives steps a network of their own.
fn isolation_lines(root: &Path) -> bool {
    use forge_runner::embedded::isolation::{self, IsolationChoice};
    let probe = isolation::probe(&root.join("run"));
    let own_network = match isolation::choose(IsolationChoice::Auto, &probe) {
        Ok(mode) => {
            let limits = mode.limits();
            line(
                "isolation",
                if limits.is_empty() {
                    mode.to_string()
                } else {
                    format!("{mode}; it gives up: {}", limits.join("; "))
                },
            );
            mode.own_network()
        }
        Err(_) => {
            line("isolation", "none works here".to_string());
            true
        }
    };
    line(
        "  namespaces",
        match &probe.namespaces {
            Ok((proc, network)) => {
                let mut v = vec!["work"];
                if *proc == isolation::ProcSource::Surrounding {
                    v.push("with the surrounding /proc (a new one is refused)");
                }
                if !network {
                    v.push("without a network of their own (loopback cannot be brought up)");
                }
                v.join(", ")
            }
            Err(e) => format!("refused: {e}"),
        },
    );
    line(
        "  chroot",
        match &probe.chroot {
            Ok(true) => "works, device nodes can be made".to_string(),
            Ok(false) => "works, but no device node can be made (mknod refused)".to_string(),
            Err(e) => format!("refused: {e}"),
        },
    );
    own_network
}
