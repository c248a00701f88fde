//! The container side of a step in the namespaces isolation: what runs after forge forks. A thread
//! of forge unshares the namespaces for itself alone and forks the namespace's init, which builds
//! the rootfs, pivots into it and forks the command (see `command.rs`); init then waits, ends
//! whatever the command left running, removes the mount stubs it created, reports the command's
//! status on the status pipe and exits with it. forge goes on from the report: the kernel's tearing
//! down of the namespaces after init's exit (unmounting the rootfs evicts every inode the step
//! touched, 38 ms of CPU for 20,000 files) then runs beside the layer's making instead of before it.
//!
//! Process tree: forge (P, step thread) -> init (I, pid 1, new session) -> command (C). Killing I kills
//! the whole PID namespace; I dies with the step thread (PR_SET_PDEATHSIG), so a dead forge takes the
//! step with it.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use forge_snapshotter::Mount;
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::command::{Prepared, exec_command, prepare_command};
use super::isolation::ProcSource;
use super::plan::{ChildFds, DEV_NODES, Plan, SETUP_FAILED, SetupResult, ctx, exit, write_fd};
use super::sys;
use crate::confine::{MASKED_PATHS, READONLY_PATHS};
use crate::mounts::ResolvedMount;

/// The fuse-overlayfs mounts of a plan and where they go before pivot_root.
fn fuse_mounts(plan: &Plan) -> Vec<(&Mount, PathBuf)> {
    let rootfs = plan.rootfs.iter().map(|m| (m, plan.rootfs_dir.clone()));
    let raw = plan.mounts.iter().enumerate().filter_map(|(i, m)| match m {
        ResolvedMount::Raw { mount, .. } => Some((mount, plan.step_dir.join(format!("raw-{i}")))),
        _ => None,
    });
    rootfs
        .chain(raw)
        .filter(|(m, _)| m.kind == "fuse-overlayfs")
        .collect()
}

/// Whether the plan mounts anything with fuse-overlayfs.
pub(crate) fn uses_fuse(plan: &Plan) -> bool {
    !fuse_mounts(plan).is_empty()
}

/// Starts the FUSE daemons of fuse-overlayfs mounts from the step thread, in a mount namespace of the
/// thread's own, before init is forked. Started from init instead, the daemon would share init's
/// root, and pivot_root moves every task on the old root: the daemon, which resolves paths through
/// /proc/self/fd, would then fail. Here it also stays out of the step's PID namespace, so the step
/// cannot reach the host's root through /proc/<daemon>/root.
fn mount_fuse(plan: &Plan) -> Result<(), String> {
    let mounts = fuse_mounts(plan);
    if mounts.is_empty() {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
    ctx(sys::make_mount_tree_private(), || {
        "make the mount tree private".into()
    })?;
    let tool = plan
        .fuse_overlayfs
        .as_ref()
        .ok_or("fuse-overlayfs is not installed")?;
    for (m, target) in mounts {
        if !target.exists() {
            ctx(fs::create_dir(&target), || {
                format!("create {}", target.display())
            })?;
        }
        let (_, data) = ms_flags(&m.options);
        let out = std::process::Command::new(tool)
            .env_clear()
            .arg("-o")
            .arg(data.join(","))
            .arg(&target)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "{} -o {} {}: {}: {}",
                    tool.display(),
                    data.join(","),
                    target.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => return Err(format!("run {}: {e}", tool.display())),
        }
    }
    Ok(())
}

/// Unmounts what `mount_fuse` mounted (on the step thread, after the step); the daemons then exit.
pub(crate) fn unmount_fuse(plan: &Plan) {
    for (_, target) in fuse_mounts(plan) {
        let _ = sys::umount_detach(&target);
    }
}

/// Forks the container's init from the calling thread and returns its pid. Must run on a thread made
/// for this one step: it moves that thread (only) into new PID, IPC and UTS namespaces and the step's
/// network namespace first, which Linux allows per thread, so that the forked child is pid 1 there
/// without a middle process. The mount namespace is unshared by init itself: pivot_root moves every task of its
/// mount namespace that shares the old root, and the thread must stay on the host's root.
/// `lifeline` is the read end of a pipe whose write end forge holds for the step.
/// `status` is the write end of the pipe init reports the command's exit code on (four bytes, little
/// endian) once nothing of the step runs any more; a failed setup reports nothing.
pub(crate) fn spawn_init(
    plan: &Plan,
    fds: &ChildFds,
    lifeline: OwnedFd,
    status: OwnedFd,
) -> Result<Pid, String> {
    mount_fuse(plan)?;
    let flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;
    if let Some(netns) = &plan.netns {
        nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join the step's network namespace: {e}"))?;
    }
    // SAFETY: the child only runs `run_init`, which never returns into forge's code and only uses
    // calls that are safe after fork in a multi-threaded process with glibc (whose fork resets
    // malloc's locks).
    match unsafe { fork() }.map_err(|e| format!("fork container init: {e}"))? {
        ForkResult::Child => run_init(plan, fds, lifeline, status),
        ForkResult::Parent { child } => Ok(child),
    }
}

/// What every init does first, in either isolation: die with the forking thread (it waits for
/// us for the whole step, so it exits only if forge does; if forge died before prctl took effect,
/// the lifeline's writer is gone: POLLHUP), then join the step's cgroups. `false` when init must
/// stop (the reason, if any, is on the error pipe).
pub(super) fn init_prologue(plan: &Plan, fds: &ChildFds, lifeline: &OwnedFd) -> bool {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut pfd = libc::pollfd {
        fd: lifeline.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        return false;
    }
    for fd in &plan.cgroup_procs {
        // "0" is the writer itself; a pid would be read in another pid namespace.
        if let Err(e) = nix::unistd::write(fd, b"0") {
            write_fd(
                &fds.error,
                format!("join the step's cgroup: {e}").as_bytes(),
            );
            return false;
        }
    }
    true
}

fn run_init(plan: &Plan, fds: &ChildFds, lifeline: OwnedFd, status: OwnedFd) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if !init_prologue(plan, fds, &lifeline) {
            return SETUP_FAILED;
        }
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
            write_fd(
                &fds.error,
                format!("unshare mount namespace: {e}").as_bytes(),
            );
            return SETUP_FAILED;
        }
        sys::reset_signals();
        // A session of its own: a terminal's Ctrl-C goes to forge, which then cancels the step.
        let _ = nix::unistd::setsid();
        // Other steps' pipes may be open in forge right now; holding them would delay their EOF.
        sys::close_fds_except(&[
            fds.stdout.as_raw_fd(),
            fds.stderr.as_raw_fd(),
            fds.error.as_raw_fd(),
            status.as_raw_fd(),
        ]);
        init(plan, fds, &status)
    }))
    .unwrap_or(SETUP_FAILED);
    exit(code)
}

/// A path init created only to mount on, removed again after the step (BuildKit's mount stub cleaner
/// does the same), and the parent's times to put back so the snapshot shows no change there.
pub(super) enum Stub {
    Created {
        path: PathBuf,
        dir: bool,
    },
    Times {
        dir: PathBuf,
        atime: Duration,
        mtime: Duration,
    },
}

/// What setup changed inside the rootfs, to undo after the step (or after a failed setup).
#[derive(Default)]
pub(super) struct Undo {
    pub stubs: Vec<Stub>,
    pub mounted: Vec<PathBuf>,
}

fn init(plan: &Plan, fds: &ChildFds, status: &OwnedFd) -> i32 {
    let mut undo = Undo::default();
    let prepared = match setup(plan, &mut undo) {
        Ok(p) => p,
        Err(msg) => {
            write_fd(&fds.error, msg.as_bytes());
            cleanup(&undo);
            return SETUP_FAILED;
        }
    };
    // SAFETY: init is single-threaded.
    let command = match unsafe { fork() } {
        Err(e) => {
            write_fd(&fds.error, format!("fork command: {e}").as_bytes());
            return SETUP_FAILED;
        }
        Ok(ForkResult::Child) => exec_command(&prepared, fds),
        Ok(ForkResult::Parent { child }) => child,
    };
    // Only the command may hold the output pipes: their EOF tells forge the step's output is complete.
    // SAFETY: closing our own copies; the OwnedFds are never used again in this process.
    unsafe {
        libc::close(fds.stdout.as_raw_fd());
        libc::close(fds.stderr.as_raw_fd());
    }
    // As pid 1, init also reaps orphans the command leaves behind.
    let code = wait_command(command, || {});
    // Whatever the command left running ends now rather than at init's exit: once forge has the
    // code, nothing may write in the rootfs any more.
    end_the_rest();
    cleanup(&undo);
    // The error pipe reads EOF in forge only once every holder has closed it.
    // SAFETY: closing init's own copy; the OwnedFd is never used again in this process.
    unsafe {
        libc::close(fds.error.as_raw_fd());
    }
    // Best effort: without the report forge waits for init's exit, as it always may.
    let _ = nix::unistd::write(status, &code.to_le_bytes());
    code
}

/// Kills every other process of the step's PID namespace and reaps them all. As that namespace's
/// pid 1, `kill(-1)` reaches exactly those (the FUSE daemons of a rootless rootfs live outside it).
fn end_the_rest() {
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
    // Until ECHILD: no child left, and every orphan of the namespace is init's child.
    while let Ok(_) | Err(nix::errno::Errno::EINTR) = waitpid(Pid::from_raw(-1), None) {}
}

/// Init's wait for `command`, reaping every other child that ends meanwhile; `each` runs before
/// every wait (a signal interrupts one). The command's exit code, 128 + a killing signal, or
/// [`SETUP_FAILED`] when there is nothing left to wait for.
pub(super) fn wait_command(command: Pid, mut each: impl FnMut()) -> i32 {
    loop {
        each();
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, c)) if pid == command => return c,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

pub(super) fn cleanup(p: &Undo) {
    // Only a mount on a stub, or below one, must go for the stub to go: the others (/proc, /dev,
    // /sys, a bind over a directory the image has) are left to the kernel, which takes the
    // mount namespace down after init's exit, beside forge's work on the snapshot (forge reads
    // the snapshot's own directories, which no mount of this namespace covers).
    let created: Vec<&Path> = p
        .stubs
        .iter()
        .filter_map(|s| match s {
            Stub::Created { path, .. } => Some(path.as_path()),
            Stub::Times { .. } => None,
        })
        .collect();
    for target in p.mounted.iter().rev() {
        if created.iter().any(|stub| target.starts_with(stub)) {
            let _ = sys::umount_detach(target);
        }
    }
    for stub in p.stubs.iter().rev() {
        match stub {
            Stub::Created { path, dir: true } => {
                let _ = fs::remove_dir(path);
            }
            Stub::Created { path, dir: false } => {
                let _ = fs::remove_file(path);
            }
            Stub::Times { dir, atime, mtime } => set_times(dir, (*atime, *mtime)),
        }
    }
}

fn ms_flags(options: &[String]) -> (libc::c_ulong, Vec<String>) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data)
}

/// Applies one snapshotter mount at `target` (a host path; called before pivot_root).
fn apply_mount(m: &Mount, target: &Path, plan: &Plan) -> SetupResult<()> {
    let in_userns = plan.in_userns;
    let (flags, mut data) = ms_flags(&m.options);
    let what = || {
        format!(
            "mount {} {} on {}",
            m.kind,
            m.source.display(),
            target.display()
        )
    };
    match m.kind.as_str() {
        "bind" | "rbind" => {
            let mut flags = flags | libc::MS_BIND;
            if m.kind == "rbind" {
                flags |= libc::MS_REC;
            }
            let source = m.source.to_string_lossy();
            ctx(
                sys::mount(&source, target, "", flags & !libc::MS_RDONLY, None),
                what,
            )?;
            let mut attrs = sys::MOUNT_ATTR_NODEV;
            if flags & libc::MS_RDONLY != 0 {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            ctx(sys::set_path_attrs(target, attrs), what)
        }
        // Mounted before the fork by the step thread (see `mount_fuse`); init's mount namespace is a
        // copy of the thread's, so it is already in place.
        "fuse-overlayfs" => Ok(()),
        kind => {
            if kind == "overlay" && in_userns && !data.iter().any(|d| d == "userxattr") {
                // Unprivileged overlay keeps whiteouts and opaque markers in user.* xattrs.
                data.push("userxattr".into());
            }
            if kind == "overlay" {
                // A deep chain of lower dirs under a long store path passes mount(2)'s one page
                // of options; mount_overlay makes them fit.
                let data = data.join(",");
                return forge_snapshotter::mount::mount_overlay(
                    target,
                    flags | libc::MS_NODEV,
                    &data,
                )
                .map_err(|e| format!("{}: {e}", what()));
            }
            let source = m.source.to_string_lossy();
            let data = data.join(",");
            ctx(
                sys::mount(
                    &source,
                    target,
                    kind,
                    flags | libc::MS_NODEV,
                    (!data.is_empty()).then_some(data.as_str()),
                ),
                what,
            )
        }
    }
}

/// A file's access and modification times, as durations since the epoch.
pub(super) fn times(md: &fs::Metadata) -> (Duration, Duration) {
    (
        Duration::new(md.atime().max(0) as u64, md.atime_nsec() as u32),
        Duration::new(md.mtime().max(0) as u64, md.mtime_nsec() as u32),
    )
}

/// Puts `times` (as [`times`] gives them) back on `path`, best effort.
pub(super) fn set_times(path: &Path, (atime, mtime): (Duration, Duration)) {
    if let Ok(f) = fs::File::open(path) {
        let _ = f.set_times(
            fs::FileTimes::new()
                .set_accessed(UNIX_EPOCH + atime)
                .set_modified(UNIX_EPOCH + mtime),
        );
    }
}

/// Creates `path` (and missing parents) as a directory or an empty file if it does not exist, recording
/// what was created. Runs after pivot_root, so symlinks resolve inside the rootfs.
pub(super) fn ensure_target(path: &Path, dir: bool, stubs: &mut Vec<Stub>) -> SetupResult<()> {
    let mut missing = Vec::new();
    let mut cur = path;
    loop {
        match fs::symlink_metadata(cur) {
            Ok(meta) => {
                if !missing.is_empty() {
                    let (atime, mtime) = times(&meta);
                    stubs.push(Stub::Times {
                        dir: cur.to_path_buf(),
                        atime,
                        mtime,
                    });
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur.to_path_buf());
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            Err(e) => return Err(format!("stat {}: {e}", cur.display())),
        }
    }
    for (i, p) in missing.iter().rev().enumerate() {
        let is_last = i + 1 == missing.len();
        if is_last && !dir {
            ctx(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(p),
                || format!("create mount point {}", p.display()),
            )?;
            stubs.push(Stub::Created {
                path: p.clone(),
                dir: false,
            });
        } else {
            ctx(fs::create_dir(p), || {
                format!("create mount point {}", p.display())
            })?;
            // 0755 as runc makes them, whatever forge's umask: the step sees these directories.
            ctx(
                fs::set_permissions(p, fs::Permissions::from_mode(0o755)),
                || format!("chmod mount point {}", p.display()),
            )?;
            stubs.push(Stub::Created {
                path: p.clone(),
                dir: true,
            });
        }
    }
    Ok(())
}

/// A mount prepared before pivot_root, attached inside the new root afterwards.
struct Staged {
    fd: OwnedFd,
    target: PathBuf,
    dir: bool,
}

/// A detached clone of the mounts at `source`, with mount attributes `attrs` added.
fn clone_tree(source: &Path, recursive: bool, attrs: u64) -> SetupResult<OwnedFd> {
    let fd = ctx(sys::open_tree_clone(source, recursive), || {
        format!("clone mount of {}", source.display())
    })?;
    if attrs != 0 {
        ctx(sys::set_tree_attrs(&fd, attrs), || {
            format!("set mount attributes {attrs:#x} on {}", source.display())
        })?;
    }
    Ok(fd)
}

/// Attributes of a clone that is not a device node: no device can be opened through it (issue 11: a
/// step that mknods a host device in a bind or cache mount must not reach the device).
fn no_devices(readonly: bool) -> u64 {
    if readonly {
        sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_RDONLY
    } else {
        sys::MOUNT_ATTR_NODEV
    }
}

/// runc's masked and read-only paths ([`crate::confine`]), over the /proc and /sys just mounted. Runs
/// after pivot_root and after /dev is set up: masked files show its null device.
fn confine_kernel_paths() -> SetupResult<()> {
    let exists = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("stat {}: {e}", p.display())),
    };
    for p in READONLY_PATHS.iter().map(Path::new) {
        if exists(p)?.is_none() {
            continue;
        }
        let what = || format!("make {} read-only", p.display());
        ctx(
            sys::mount(
                &p.to_string_lossy(),
                p,
                "",
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
            what,
        )?;
        ctx(sys::set_path_readonly(p), what)?;
    }
    for p in MASKED_PATHS.iter().map(Path::new) {
        let Some(meta) = exists(p)? else { continue };
        let what = || format!("mask {}", p.display());
        if meta.is_dir() {
            ctx(
                sys::mount(
                    "tmpfs",
                    p,
                    "tmpfs",
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some("size=0"),
                ),
                what,
            )?;
        } else {
            ctx(sys::mount("/dev/null", p, "", libc::MS_BIND, None), what)?;
        }
    }
    Ok(())
}

fn setup<'a>(plan: &'a Plan, undo: &mut Undo) -> SetupResult<Prepared<'a>> {
    // Nothing done here may propagate back to the host's mount namespace.
    ctx(sys::make_mount_tree_private(), || {
        "make the mount tree private".into()
    })?;
    if !plan.hostname.is_empty() {
        ctx(
            nix::unistd::sethostname(&plan.hostname).map_err(io::Error::from),
            || format!("set hostname {:?}", plan.hostname),
        )?;
    }
    if plan.rootfs.is_empty() {
        return Err("the step has no rootfs mounts".into());
    }
    for m in &plan.rootfs {
        apply_mount(m, &plan.rootfs_dir, plan)?;
    }
    // Device nodes in the image or made by the step cannot be opened (fuse-overlayfs included).
    ctx(
        sys::set_path_attrs(&plan.rootfs_dir, sys::MOUNT_ATTR_NODEV),
        || format!("mount {} nodev", plan.rootfs_dir.display()),
    )?;

    // Host-side sources become detached mounts now; after pivot_root their paths are gone.
    // procfs too: in a user namespace the kernel allows a new proc mount only while a fully visible
    // one is in the mount namespace (mount_too_revealing), and the host's /proc leaves with the old root.
    let proc_stage = plan.step_dir.join("proc");
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let proc_tree = if plan.proc == ProcSource::Fresh {
        ctx(
            sys::mount("proc", &proc_stage, "proc", nosuid_nodev_noexec, None),
            || "mount /proc".into(),
        )?;
        clone_tree(&proc_stage, false, 0)?
    } else {
        // The probe found a fresh proc refused (a container's /proc with masked paths): the
        // surrounding one, with what is mounted over it, as BuildKit's no-process-sandbox does.
        clone_tree(Path::new("/proc"), true, sys::MOUNT_ATTR_NODEV)?
    };
    let mut dev = Vec::new();
    for name in DEV_NODES {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            dev.push((name, clone_tree(&host, false, 0)?));
        }
    }
    let sys_tree = clone_tree(Path::new("/sys"), true, no_devices(true))?;
    let mut staged = Vec::new();
    for (host, target) in &plan.etc_files {
        staged.push(Staged {
            fd: clone_tree(host, false, no_devices(true))?,
            target: target.clone(),
            dir: false,
        });
    }
    let mut tmpfs_targets = Vec::new();
    for (i, m) in plan.mounts.iter().enumerate() {
        match m {
            // A secret's nosuid/nodev/noexec come with the clone: the secrets tmpfs has them.
            ResolvedMount::Bind {
                source,
                target,
                readonly,
                ..
            } => {
                let dir = source.is_dir();
                staged.push(Staged {
                    fd: clone_tree(source, true, no_devices(*readonly))?,
                    target: target.clone(),
                    dir,
                });
            }
            ResolvedMount::Tmpfs {
                target,
                size,
                readonly,
            } => tmpfs_targets.push((target.clone(), *size, *readonly)),
            ResolvedMount::Raw { mount, target } => {
                if matches!(mount.kind.as_str(), "bind" | "rbind") {
                    staged.push(Staged {
                        fd: clone_tree(&mount.source, true, no_devices(mount.is_readonly()))?,
                        target: target.clone(),
                        dir: mount.source.is_dir(),
                    });
                } else {
                    // Mounted on a host-side staging dir first: its options name host paths.
                    let stage = plan.step_dir.join(format!("raw-{i}"));
                    if mount.kind != "fuse-overlayfs" {
                        ctx(fs::create_dir(&stage), || {
                            format!("create {}", stage.display())
                        })?;
                    }
                    apply_mount(mount, &stage, plan)?;
                    staged.push(Staged {
                        fd: clone_tree(&stage, true, no_devices(false))?,
                        target: target.clone(),
                        dir: true,
                    });
                }
            }
        }
    }

    ctx(sys::pivot_into(&plan.rootfs_dir), || {
        format!("pivot_root into {}", plan.rootfs_dir.display())
    })?;

    let Undo { stubs, mounted } = undo;
    let proc = Path::new("/proc");
    ensure_target(proc, true, stubs)?;
    ctx(sys::move_mount(&proc_tree, proc), || "mount /proc".into())?;
    mounted.push(proc.to_path_buf());

    let devdir = Path::new("/dev");
    ensure_target(devdir, true, stubs)?;
    ctx(
        sys::mount(
            "tmpfs",
            devdir,
            "tmpfs",
            // nodev: a node the step makes here is not usable; the standard ones are bind mounts.
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
        || "mount /dev".into(),
    )?;
    mounted.push(devdir.to_path_buf());
    // Device nodes are bind mounts of the host's: mknod is not allowed in a user namespace.
    for (name, fd) in &dev {
        let p = devdir.join(name);
        ctx(fs::write(&p, b""), || format!("create {}", p.display()))?;
        ctx(sys::move_mount(fd, &p), || format!("mount {}", p.display()))?;
    }
    let pts = devdir.join("pts");
    ctx(fs::create_dir(&pts), || "create /dev/pts".into())?;
    let pts_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    if sys::mount(
        "devpts",
        &pts,
        "devpts",
        pts_flags,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .is_err()
    {
        // gid 5 (tty) is not mapped in a single-id user namespace.
        ctx(
            sys::mount(
                "devpts",
                &pts,
                "devpts",
                pts_flags,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
            || "mount /dev/pts".into(),
        )?;
    }
    let shm = devdir.join("shm");
    ctx(fs::create_dir(&shm), || "create /dev/shm".into())?;
    ctx(
        sys::mount(
            "shm",
            &shm,
            "tmpfs",
            nosuid_nodev_noexec,
            Some(&format!("mode=1777,size={}", plan.shm_size)),
        ),
        || "mount /dev/shm".into(),
    )?;
    // POSIX message queues (mq_open) of the step's own IPC namespace, as in BuildKit's steps.
    let mqueue = devdir.join("mqueue");
    ctx(fs::create_dir(&mqueue), || "create /dev/mqueue".into())?;
    ctx(
        sys::mount("mqueue", &mqueue, "mqueue", nosuid_nodev_noexec, None),
        || "mount /dev/mqueue".into(),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(to, devdir.join(link)), || {
            format!("symlink /dev/{link}")
        })?;
    }

    let sysdir = Path::new("/sys");
    ensure_target(sysdir, true, stubs)?;
    ctx(sys::move_mount(&sys_tree, sysdir), || "mount /sys".into())?;
    mounted.push(sysdir.to_path_buf());
    if plan.confinement.kernel_paths {
        confine_kernel_paths()?;
    }

    for s in &staged {
        ensure_target(&s.target, s.dir, stubs)?;
        ctx(sys::move_mount(&s.fd, &s.target), || {
            format!("mount {}", s.target.display())
        })?;
        mounted.push(s.target.clone());
    }
    for (target, size, readonly) in &tmpfs_targets {
        ensure_target(target, true, stubs)?;
        let data = (*size > 0).then(|| format!("size={size}"));
        let ro = if *readonly { libc::MS_RDONLY } else { 0 };
        ctx(
            sys::mount(
                "tmpfs",
                target,
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV | ro,
                data.as_deref(),
            ),
            || format!("mount tmpfs on {}", target.display()),
        )?;
        mounted.push(target.clone());
    }

    prepare_command(plan)
}
