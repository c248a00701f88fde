//! How the embedded runner isolates a step, and the probe that finds what this process may do.
//!
//! The ladder, best first:
//! 1. **namespaces**: mount, PID, IPC, UTS and network namespaces, the root pivoted into the step's
//!    snapshot, a fresh /proc (or, where the kernel refuses one because the surrounding /proc has
//!    masked paths, as in a container, the surrounding /proc bound in).
//! 2. **chroot**: for a container that allows neither namespaces nor mounts (root with Docker's
//!    default capabilities and seccomp profile). The step runs chrooted into a copied snapshot,
//!    with the user switched by setuid/setgid, device nodes made with mknod where allowed, no /proc,
//!    the container's own network, and mounts moved or copied in and out of the root instead of
//!    bound.
//! 3. Nothing: [`choose`] fails with what was tried, each errno, and the settings that allow 1 or 2.
//!
//! The probe does what a step does, in a forked child that exits afterwards, so what it finds is
//! what a build gets.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use super::sys;

/// What the user asked for (`--isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationChoice {
    /// The best mode the probe finds.
    #[default]
    Auto,
    /// Namespaces (in a user namespace when not root); an error where they cannot be made.
    Userns,
    /// chroot, even where namespaces would work.
    Chroot,
}

impl std::str::FromStr for IsolationChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IsolationChoice::Auto),
            "userns" | "namespaces" => Ok(IsolationChoice::Userns),
            "chroot" => Ok(IsolationChoice::Chroot),
            other => Err(format!(
                "unknown isolation {other:?}: expected auto, userns or chroot"
            )),
        }
    }
}

/// Where a step's /proc comes from in the namespaces mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcSource {
    /// A proc mount of the step's own PID namespace.
    Fresh,
    /// The surrounding /proc, bound in (a fresh one was refused): the step sees the processes of
    /// the container forge runs in, as BuildKit's `--oci-worker-no-process-sandbox` does.
    Surrounding,
}

/// How steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Namespaces {
        proc: ProcSource,
        /// Whether steps get network namespaces of their own: false where one can be made but its
        /// loopback cannot be brought up (no CAP_NET_ADMIN: a container given only SYS_ADMIN).
        network: bool,
    },
    Chroot {
        /// Whether device nodes (/dev/null and the like) can be made with mknod.
        mknod: bool,
    },
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation::Namespaces {
            proc: ProcSource::Fresh,
            network: true,
        }
    }
}

impl Isolation {
    /// Whether steps may mount (the namespaces mode); the chroot mode makes no mount at all.
    pub fn may_mount(self) -> bool {
        matches!(self, Isolation::Namespaces { .. })
    }

    /// Whether steps get network namespaces of their own (else the surrounding network).
    pub fn own_network(self) -> bool {
        matches!(self, Isolation::Namespaces { network: true, .. })
    }

    /// What this mode gives up against full isolation, one sentence per item, for a note printed
    /// once per build. Empty for full isolation.
    pub fn limits(self) -> Vec<&'static str> {
        match self {
            Isolation::Namespaces { proc, network } => {
                let mut v = Vec::new();
                if proc == ProcSource::Surrounding {
                    v.push(
                        "steps see the processes of the container forge runs in (/proc is the \
                         container's: the kernel refuses a new one where /proc has masked paths)",
                    );
                }
                if !network {
                    v.push(
                        "steps use the network of the container forge runs in (a network \
                         namespace's loopback cannot be brought up without CAP_NET_ADMIN: \
                         --network=none and services are refused)",
                    );
                }
                v
            }
            Isolation::Chroot { mknod } => {
                let mut v = vec![
                    "no /proc in steps",
                    "steps use the network of the container forge runs in (no network \
                     namespace: --network=none and services are refused)",
                    "no PID namespace: a daemon a step starts in a new session outlives the step",
                    "the container's own seccomp profile and capabilities confine steps, not \
                     forge's, less CAP_SYS_CHROOT (root with it leaves a chroot; a step that \
                     calls chroot needs RUN --security=insecure) and CAP_MKNOD (a device node \
                     made in a root that no nodev mount holds would open the machine's device)",
                    "no namespace stands between steps and the processes forge runs beside \
                     (its own, and any other of the container or machine), which a step running \
                     as root can signal",
                    "cache mounts serve one step at a time; bind mounts and secrets are copied \
                     in and removed after the step; a read-only bind is not enforced",
                ];
                if !mknod {
                    v.push("no device nodes in /dev (mknod is not allowed here)");
                }
                v
            }
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Namespaces { proc, network } => {
                f.write_str("namespaces")?;
                match (proc, network) {
                    (ProcSource::Fresh, true) => Ok(()),
                    (ProcSource::Surrounding, true) => f.write_str(" (the surrounding /proc)"),
                    (ProcSource::Fresh, false) => f.write_str(" (the surrounding network)"),
                    (ProcSource::Surrounding, false) => {
                        f.write_str(" (the surrounding /proc and network)")
                    }
                }
            }
            Isolation::Chroot { mknod: true } => f.write_str("chroot"),
            Isolation::Chroot { mknod: false } => f.write_str("chroot (no device nodes)"),
        }
    }
}

/// What the probe found: each mode, or why it cannot be had.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Where /proc comes from, and whether a network namespace's loopback can be brought up.
    pub namespaces: Result<(ProcSource, bool), String>,
    pub chroot: Result<bool, String>,
}

/// Tries both modes in forked children, with scratch directories under `scratch` (created, and
/// removed again). Safe to call from a multi-threaded process: the children only make system calls.
pub fn probe(scratch: &Path) -> Probe {
    probe_modes(scratch, true, true)
}

/// The choice of mode for `choice`: what [`probe`] finds of the modes it may pick, without trying
/// the others (with `Auto` the chroot is tried only when the namespaces fail: each try is a forked
/// child on every build's path). A mode not tried is an `Err` that [`choose`] does not read.
pub fn choose_probing(choice: IsolationChoice, scratch: &Path) -> Result<Isolation, String> {
    let probe = match choice {
        IsolationChoice::Userns => probe_modes(scratch, true, false),
        IsolationChoice::Chroot => probe_modes(scratch, false, true),
        IsolationChoice::Auto => {
            let first = probe_modes(scratch, true, false);
            if first.namespaces.is_ok() {
                first
            } else {
                Probe {
                    chroot: probe_modes(scratch, false, true).chroot,
                    ..first
                }
            }
        }
    };
    choose(choice, &probe)
}

/// A runner's isolation: given, or chosen by [`choose_probing`] the first time a step needs it
/// (from any thread: the probe's children only make system calls). A build whose steps all come
/// from the cache then never probes; each probe forks children that make namespaces and mounts,
/// more than a millisecond on a rebuild's path. Clones share the one answer.
#[derive(Debug, Clone)]
pub struct DeferredIsolation(std::sync::Arc<Deferred>);

#[derive(Debug)]
struct Deferred {
    choice: IsolationChoice,
    scratch: std::path::PathBuf,
    chosen: std::sync::OnceLock<Result<Isolation, String>>,
}

impl DeferredIsolation {
    /// The mode for `choice`, probed (with scratch directories under `scratch`) when first asked.
    pub fn probing(choice: IsolationChoice, scratch: impl Into<std::path::PathBuf>) -> Self {
        DeferredIsolation(std::sync::Arc::new(Deferred {
            choice,
            scratch: scratch.into(),
            chosen: std::sync::OnceLock::new(),
        }))
    }

    /// A mode known already.
    pub fn known(isolation: Isolation) -> Self {
        let deferred = Self::probing(IsolationChoice::Auto, std::path::PathBuf::new());
        let _ = deferred.0.chosen.set(Ok(isolation));
        deferred
    }

    /// The mode, probing for it on the first call (the calls made meanwhile wait for that probe);
    /// the error names what was tried and what would allow it (see [`choose`]).
    pub fn get(&self) -> Result<Isolation, String> {
        self.0
            .chosen
            .get_or_init(|| choose_probing(self.0.choice, &self.0.scratch))
            .clone()
    }

    /// The mode if it is known now, without probing.
    pub fn chosen(&self) -> Option<Result<Isolation, String>> {
        self.0.chosen.get().cloned()
    }
}

impl Default for DeferredIsolation {
    fn default() -> Self {
        Self::known(Isolation::default())
    }
}

impl From<Isolation> for DeferredIsolation {
    fn from(isolation: Isolation) -> Self {
        Self::known(isolation)
    }
}

/// The prefix of a probe's directory under the scratch directory.
const PROBE_DIR: &str = "isolation-probe-";

fn probe_modes(scratch: &Path, namespaces: bool, chroot: bool) -> Probe {
    // The directory is live while its lock is held: a process that ends while its probe runs
    // (killed, or a session's probe thread cut off as the process exits) leaves it behind, and
    // the next probe removes it.
    let name = format!("{PROBE_DIR}{}", forge_snapshotter::lock::random_hex());
    let made = forge_snapshotter::lock::LiveDir::create(scratch, &name).and_then(|live| {
        fs::create_dir(live.path().join("root"))?;
        Ok(live)
    });
    let live = match made {
        Ok(live) => live,
        Err(e) => {
            let why = format!("create {}: {e}", scratch.join(&name).display());
            return Probe {
                namespaces: Err(why.clone()),
                chroot: Err(why),
            };
        }
    };
    forge_snapshotter::lock::sweep_dead(scratch, PROBE_DIR);
    let dir = live.path();
    fn not_tried<T>() -> Result<T, String> {
        Err("not tried".to_string())
    }
    let namespaces = if namespaces {
        in_child(|| probe_namespaces(&dir.join("root"))).and_then(|code| {
            let proc = match code & 1 {
                0 => ProcSource::Fresh,
                _ => ProcSource::Surrounding,
            };
            match code {
                0..=3 => Ok((proc, code & 2 == 0)),
                _ => Err("unexpected result".into()),
            }
        })
    } else {
        not_tried()
    };
    let chroot = if chroot {
        in_child(|| probe_chroot(&dir.join("root"))).and_then(|code| match code {
            0 => Ok(true),
            1 => Ok(false),
            _ => Err("unexpected result".into()),
        })
    } else {
        not_tried()
    };
    drop(live);
    Probe { namespaces, chroot }
}

/// Runs `f` in a forked child; its `Ok(code)` is the result, its `Err(text)` the failure.
fn in_child(f: impl FnOnce() -> Result<i32, String>) -> Result<i32, String> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child only makes system calls and formats a message before _exit.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(r);
            let code = match f() {
                Ok(code) => code,
                Err(msg) => {
                    let _ = nix::unistd::write(&w, msg.as_bytes());
                    100
                }
            };
            // SAFETY: leaves the child without running forge's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut msg = String::new();
            let _ = fs::File::from(r).read_to_string(&mut msg);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match status {
                Ok(WaitStatus::Exited(_, 100)) => Err(msg),
                Ok(WaitStatus::Exited(_, code)) => Ok(code),
                Ok(other) => Err(format!("probe ended with {other:?}")),
                Err(e) => Err(format!("wait for the probe: {e}")),
            }
        }
    }
}

fn errno(what: &str) -> impl FnOnce(nix::errno::Errno) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The namespaces a step gets, a tmpfs root, /proc in a new PID namespace and pivot_root into it.
/// Bit 0 set: a fresh /proc was refused (the surrounding one bound instead); bit 1 set: the network
/// namespace's loopback could not be brought up.
fn probe_namespaces(root: &Path) -> Result<i32, String> {
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET;
    unshare(flags).map_err(errno("unshare mount, PID, IPC, UTS and network namespaces"))?;
    let no_loopback = if crate::network::loopback_up().is_ok() {
        0
    } else {
        2
    };
    sys::make_mount_tree_private().map_err(io("make the mount tree private"))?;
    sys::mount("tmpfs", root, "tmpfs", 0, Some("size=64k")).map_err(io("mount a tmpfs"))?;
    // pid 1 of the new PID namespace does the rest.
    in_child(|| init_side(root)).map(|code| code | no_loopback)
}

fn init_side(root: &Path) -> Result<i32, String> {
    let proc = root.join("proc");
    fs::create_dir(&proc).map_err(io("create a directory on the tmpfs"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let source = match sys::mount("proc", &proc, "proc", flags, None) {
        Ok(()) => 0,
        Err(fresh) => {
            sys::mount("/proc", &proc, "", libc::MS_BIND | libc::MS_REC, None).map_err(|e| {
                format!("mount /proc: {fresh}; bind the surrounding /proc instead: {e}")
            })?;
            1
        }
    };
    sys::pivot_into(root).map_err(io("pivot_root"))?;
    Ok(source)
}

/// What the chroot isolation needs as root beyond chroot(2): to give files their owners and
/// modes as it lays base images down and copies snapshots (CAP_CHOWN, CAP_DAC_OVERRIDE,
/// CAP_FOWNER) and to become a step's user (CAP_SETUID, CAP_SETGID), by number and name.
const CHROOT_NEEDS: [(u32, &str); 5] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

/// The capabilities of [`CHROOT_NEEDS`] this process's bounding set lacks (what a container's
/// `--cap-drop` takes away; root's effective set follows it).
fn chroot_caps_missing() -> Vec<&'static str> {
    let have = crate::confine::bounding_set();
    CHROOT_NEEDS
        .iter()
        .filter(|(cap, _)| !have.contains(cap))
        .map(|(_, name)| *name)
        .collect()
}

/// chroot into an empty directory; 0 when a device node can be made there too, 1 when not.
/// Refused where steps could not run: without the capabilities the mode needs (a container
/// started with `--cap-drop ALL`), or with the store on a `noexec` mount (docker's `--tmpfs`).
fn probe_chroot(root: &Path) -> Result<i32, String> {
    let missing = chroot_caps_missing();
    if !missing.is_empty() {
        return Err(format!(
            "this process lacks {} (dropped from the container, as `--cap-drop ALL` does): base \
             images cannot be laid down with their owners nor steps run as their users; give \
             them back (`--cap-add`) or run with docker's default capabilities",
            missing.join(", ")
        ));
    }
    if let Ok(st) = nix::sys::statvfs::statvfs(root)
        && st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC)
    {
        // `root` is `<store>/run/<probe>/root`.
        let store = root.ancestors().nth(3).unwrap_or(root);
        return Err(format!(
            "the store {} is on a filesystem mounted noexec, so no program in a snapshot could \
             run (docker's `--tmpfs` mounts are noexec unless given `:exec`): put the store \
             (--root, FORGE_ROOT) on a filesystem that allows exec",
            store.display()
        ));
    }
    let null = root.join("null");
    let mknod = nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .is_ok();
    nix::unistd::chroot(root).map_err(errno("chroot"))?;
    Ok(if mknod { 0 } else { 1 })
}

/// The mode for `choice`, given what the probe found; the error names what was tried, what failed
/// (with the errno) and the settings that would allow a better mode.
pub fn choose(choice: IsolationChoice, probe: &Probe) -> Result<Isolation, String> {
    let namespaces = probe
        .namespaces
        .clone()
        .map(|(proc, network)| Isolation::Namespaces { proc, network });
    let chroot = probe
        .chroot
        .clone()
        .map(|mknod| Isolation::Chroot { mknod });
    match choice {
        IsolationChoice::Userns => namespaces.map_err(|e| {
            format!(
                "--isolation userns: this process cannot make a step's namespaces ({e}).\n{}",
                SETTINGS
            )
        }),
        IsolationChoice::Chroot => chroot.map_err(|e| {
            if e.starts_with("chroot:") {
                format!(
                    "--isolation chroot: this process cannot chroot ({e}); the chroot isolation \
                     needs root (or CAP_SYS_CHROOT).\n{SETTINGS}"
                )
            } else {
                format!("--isolation chroot does not work here: {e}.\n{SETTINGS}")
            }
        }),
        IsolationChoice::Auto => match (namespaces, chroot) {
            (Ok(n), _) => Ok(n),
            (Err(_), Ok(c)) => Ok(c),
            (Err(n), Err(c)) => Err(format!(
                "no isolation for RUN steps works here.\n  tried namespaces: {n}\n  tried chroot: \
                 {c}\n{SETTINGS}"
            )),
        },
    }
}

/// The settings that allow the better modes, for every error of the ladder.
pub const SETTINGS: &str = "\
What allows a better mode:
  - docker run: as root, the default settings give the chroot mode; for namespaces add
    `--cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined`
    (as a non-root user with /etc/subuid ranges, `--security-opt seccomp=unconfined
    --security-opt apparmor=unconfined` lets forge make a user namespace).
  - Kubernetes: run the container as root (runAsUser: 0) for the chroot mode; for namespaces,
    securityContext: {capabilities: {add: [SYS_ADMIN]}, seccompProfile: {type: Unconfined},
    appArmorProfile: {type: Unconfined}}, or a rootless user with `procMount: Unmasked`.
  - GitLab runner (docker executor): run the job as root (the default) for the chroot mode; for
    namespaces set `cap_add = [\"SYS_ADMIN\"]` and `security_opt = [\"seccomp:unconfined\",
    \"apparmor:unconfined\"]` under [runners.docker] in config.toml.
  - Ubuntu 23.10 and later restrict unprivileged user namespaces with AppArmor: allow them with
    `sysctl kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile for forge).
  - Anywhere: install `uidmap` and give the user /etc/subuid and /etc/subgid ranges.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_removes_what_a_dead_probe_left_and_its_own_directory() {
        let scratch = tempfile::tempdir().unwrap();
        // Left by a process that ended mid-probe: no lock held (an older forge made none).
        let dead = scratch.path().join(format!("{PROBE_DIR}dead"));
        fs::create_dir_all(dead.join("root")).unwrap();
        // Another process's probe, still running.
        let running = forge_snapshotter::lock::LiveDir::create(
            scratch.path(),
            &format!("{PROBE_DIR}running"),
        )
        .unwrap();
        fs::create_dir(running.path().join("root")).unwrap();

        let probe = probe_modes(scratch.path(), false, false);
        assert!(matches!(probe.namespaces, Err(ref e) if e == "not tried"));

        assert!(!dead.exists(), "the dead probe's directory is removed");
        assert!(
            running.path().join("root").is_dir(),
            "a running probe's is kept"
        );
        let mut left: Vec<String> = fs::read_dir(scratch.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("{PROBE_DIR}running"),
                format!("{PROBE_DIR}running.lock")
            ],
            "the probe removes its own directory and lock"
        );
    }
}
