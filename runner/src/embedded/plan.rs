//! What a step's container needs, computed by forge before the fork ([`Plan`]), and the small
//! pieces every forked side shares (the error pipe, set-up results, `_exit`): the namespaces
//! isolation (`container.rs`), the chroot one (`chroot.rs`) and the command (`command.rs`).

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use forge_snapshotter::Mount;

use super::isolation::ProcSource;
use super::seccomp::Filters;
use crate::mounts::ResolvedMount;
use crate::spec::User;

/// Exit code of init when setup failed before the command ran (the reason is on the error pipe).
pub(crate) const SETUP_FAILED: i32 = 125;
/// Docker's default PATH, used when the step's env has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Everything the container needs, computed by forge before the fork.
#[derive(Debug)]
pub(crate) struct Plan {
    pub step_dir: PathBuf,
    pub rootfs_dir: PathBuf,
    pub rootfs: Vec<Mount>,
    /// Overlay mounts need `userxattr` inside a user namespace.
    pub in_userns: bool,
    /// fuse-overlayfs, found on forge's PATH before the fork (the child must not read the environment:
    /// another thread may have held its lock at fork time).
    pub fuse_overlayfs: Option<PathBuf>,
    pub hostname: String,
    /// `--ulimit`, set before exec; empty keeps forge's own limits.
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// The size of /dev/shm in bytes (the namespaces mode; chroot mode mounts nothing).
    pub shm_size: u64,
    /// The step's private network namespace ([`crate::network`]), joined before the fork; `None`
    /// for the host's network.
    pub netns: Option<fs::File>,
    /// Host file -> path in the container, bind-mounted read-only (hosts, resolv.conf, hostname).
    pub etc_files: Vec<(PathBuf, PathBuf)>,
    /// The step's mounts as [`crate::mounts`] resolved them, in order.
    pub mounts: Vec<ResolvedMount>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: User,
    pub cwd: PathBuf,
    /// The step's confinement, decided before the fork.
    pub confinement: Confinement,
    /// Where /proc comes from (the namespaces mode).
    pub proc: ProcSource,
    /// `cgroup.procs` of the step's cgroups (`--memory`, `--cpus`), open for writing: init joins
    /// them first thing, so nothing of the step runs outside its limits.
    pub cgroup_procs: Vec<OwnedFd>,
}

/// What confines the step's command besides its namespaces (see [`crate::confine`]).
#[derive(Debug)]
pub(crate) struct Confinement {
    /// The seccomp programs to install before execve; `None` for an insecure step.
    pub seccomp: Option<&'static Filters>,
    /// The capabilities a root step keeps (bit numbers); a non-root step has none.
    pub root_caps: Vec<u32>,
    /// Masks and read-only binds over /proc and /sys (not for an insecure step).
    pub kernel_paths: bool,
    /// PR_SET_NO_NEW_PRIVS before exec (needed to install a seccomp filter without
    /// CAP_SYS_ADMIN; it also stops setuid binaries from gaining privileges).
    pub no_new_privs: bool,
}

/// Descriptors handed to the forked side.
pub(crate) struct ChildFds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Setup and exec errors, as text; close-on-exec, so it reads EOF once the command runs.
    pub error: OwnedFd,
}

pub(super) type SetupResult<T> = Result<T, String>;

pub(super) fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> SetupResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

pub(super) fn write_fd(fd: &OwnedFd, bytes: &[u8]) {
    let mut f = fs::File::from(fd.try_clone().expect("dup error pipe"));
    let _ = f.write_all(bytes);
}

pub(super) fn exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit handlers and destructors that belong to the forge process.
    unsafe { libc::_exit(code) }
}
