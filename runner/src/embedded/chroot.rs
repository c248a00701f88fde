//! The chroot isolation ([`super::isolation`]): a step without namespaces or mounts, for containers
//! that allow neither (root in a default docker or Kubernetes container).
//!
//! The root is the step's snapshot directory itself (the copy snapshotter's), entered with chroot(2).
//! What the namespaces mode mounts is moved or copied in instead, in two halves:
//! - forge's side ([`stage`], before the fork): a private directory `/.forge-stage-<random>` at the
//!   top of the root receives each mount's content: a cache instance is renamed there (so what the
//!   step writes stays in the cache), a bind source, a secret or an /etc file is copied (regular
//!   files hard-linked where they can be), a tmpfs is an empty directory.
//! - init's side, after chroot: each staged entry is renamed to its target (what was there is put
//!   aside in the stage, missing parents are created), /dev gets its nodes by mknod; after the
//!   command, all of it goes back, created parents are removed and directory times restored, so the
//!   snapshot's diff shows only what the step itself did. Path work happens inside the chroot, so a
//!   symlink in the image cannot send it to the host.
//!
//! [`unstage`] then returns cache instances to the cache and removes the stage.
//!
//! Process tree: forge (step thread) -> init (new session, chrooted) -> command (its own process
//! group). Cancelling sends init SIGTERM; init kills the command's group, puts everything back and
//! exits. After the command ends, init kills what is left of its group.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::command;
use super::container::{self, Stub, Undo, set_times, times};
use super::plan::{self, ChildFds, DEV_NODES, Plan, SETUP_FAILED, SetupResult, ctx, write_fd};
use super::sys;
use crate::mounts::ResolvedMount;

/// One mount's content in the stage, and where it goes.
#[derive(Debug)]
struct Item {
    /// Entry name in the stage directory.
    name: String,
    /// Absolute path inside the step's root.
    target: PathBuf,
    /// A cache instance's own directory, to move the content back to after the step.
    restore_to: Option<PathBuf>,
}

/// What [`stage`] put at the top of the root, for init to place and [`unstage`] to take back.
#[derive(Debug)]
pub(crate) struct Staging {
    /// The stage on the host: `<root>/.forge-stage-<random>`.
    dir: PathBuf,
    /// The same directory as init sees it after chroot.
    inner: PathBuf,
    items: Vec<Item>,
    /// The root directory's times before staging, put back after.
    root_times: (Duration, Duration),
    /// The host's device numbers of the nodes to make in /dev.
    devices: Vec<(&'static str, u64)>,
}

/// The directory a chroot step runs in: the snapshot's own directory, which only the copy
/// snapshotter hands out (a single writable bind).
pub(crate) fn root_dir(rootfs: &[forge_snapshotter::Mount]) -> Result<PathBuf, String> {
    match rootfs {
        [m] if (m.kind == "bind" || m.kind == "rbind") && !m.is_readonly() => Ok(m.source.clone()),
        other => Err(format!(
            "the chroot isolation runs steps in snapshot directories, which only the copy \
             snapshotter makes; this store's snapshots are {} mounts (use a store made in this \
             mode: another --root)",
            other.first().map(|m| m.kind.as_str()).unwrap_or("empty")
        )),
    }
}

/// Copies a regular file, link or socket `source` to `dest`: a hard link where the filesystem
/// allows it (a socket can only be linked), else a copy with the source's mode and owner. The
/// regular file of a `readonly` mount is always copied: the chroot cannot make it read-only, and
/// the step's writes through a link would reach the source (a file of the user's checkout, or of
/// a committed snapshot).
fn place_file(source: &Path, dest: &Path, readonly: bool) -> io::Result<()> {
    let md = fs::metadata(source)?;
    if !(readonly && md.is_file()) && fs::hard_link(source, dest).is_ok() {
        return Ok(());
    }
    if !md.is_file() {
        return Err(io::Error::other(
            "only a regular file can be copied where a hard link is refused",
        ));
    }
    fs::copy(source, dest)?;
    std::os::unix::fs::chown(dest, Some(md.uid()), Some(md.gid()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(md.mode() & 0o7777))
}

/// Forge's half of the set-up: the stage at the top of the root, filled (see the module docs).
/// On error, what was staged is taken back.
pub(crate) fn stage(plan: &Plan) -> Result<Staging, String> {
    let root = &plan.rootfs_dir;
    let root_md = fs::metadata(root).map_err(|e| format!("stat {}: {e}", root.display()))?;
    let name = format!(".forge-stage-{}", forge_snapshotter::lock::random_hex());
    let dir = root.join(&name);
    fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
    let mut staging = Staging {
        dir,
        inner: Path::new("/").join(&name),
        items: Vec::new(),
        root_times: times(&root_md),
        devices: DEV_NODES
            .iter()
            .filter_map(|n| {
                let md = fs::metadata(Path::new("/dev").join(n)).ok()?;
                use std::os::unix::fs::FileTypeExt;
                md.file_type().is_char_device().then_some((*n, md.rdev()))
            })
            .collect(),
    };
    if let Err(e) = fill(plan, &mut staging) {
        unstage(staging);
        return Err(e);
    }
    Ok(staging)
}

fn fill(plan: &Plan, staging: &mut Staging) -> Result<(), String> {
    for (i, (host, target)) in plan.etc_files.iter().enumerate() {
        let name = format!("etc-{i}");
        let dest = staging.dir.join(&name);
        fs::copy(host, &dest).map_err(|e| format!("copy {}: {e}", host.display()))?;
        staging.items.push(Item {
            name,
            target: target.clone(),
            restore_to: None,
        });
    }
    for (i, m) in plan.mounts.iter().enumerate() {
        let name = format!("mount-{i}");
        let dest = staging.dir.join(&name);
        let mut restore_to = None;
        match m {
            // A read-only cache is copied in as a read-only bind is: what the step writes there is
            // thrown away with the stage (chroot cannot make a read-only view).
            ResolvedMount::Bind {
                source,
                cache: true,
                readonly: false,
                ..
            } => {
                fs::rename(source, &dest).map_err(|e| {
                    format!(
                        "move cache {} into the step's root {}: {e} (the chroot isolation needs \
                         the cache mounts and the snapshots on one filesystem)",
                        source.display(),
                        plan.rootfs_dir.display()
                    )
                })?;
                restore_to = Some(source.clone());
            }
            ResolvedMount::Bind {
                source, readonly, ..
            } => {
                let md = fs::metadata(source)
                    .map_err(|e| format!("stat mount source {}: {e}", source.display()))?;
                let r = if md.is_dir() {
                    forge_snapshotter::snapshot::copy_tree(source, &dest)
                } else {
                    place_file(source, &dest, *readonly)
                };
                r.map_err(|e| {
                    format!(
                        "copy {} for the mount at {}: {e}",
                        source.display(),
                        m.target().display()
                    )
                })?;
            }
            ResolvedMount::Tmpfs { .. } => {
                fs::create_dir(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
                let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o755));
            }
            ResolvedMount::Raw { mount, target }
                if mount.kind == "bind" || mount.kind == "rbind" =>
            {
                forge_snapshotter::snapshot::copy_tree(&mount.source, &dest).map_err(|e| {
                    format!(
                        "copy {} for the mount at {}: {e}",
                        mount.source.display(),
                        target.display()
                    )
                })?;
            }
            ResolvedMount::Raw { mount, target } => {
                return Err(format!(
                    "the mount at {} is a {} mount, which the chroot isolation cannot make",
                    target.display(),
                    mount.kind
                ));
            }
        }
        staging.items.push(Item {
            name,
            target: m.target().to_path_buf(),
            restore_to,
        });
    }
    Ok(())
}

/// Forge's half of the clean-up, after init is gone: cache instances go back to the cache, the
/// stage is removed and the root's times restored.
pub(crate) fn unstage(staging: Staging) {
    for item in &staging.items {
        if let Some(cache) = &item.restore_to {
            let back = staging.dir.join(&item.name);
            // What the step left at its cache's place goes back only as a directory: a symlink
            // it made there (to `/root/.docker`) would name the host's path once outside the
            // root. The cache then starts empty next time.
            match fs::symlink_metadata(&back) {
                Ok(md) if md.is_dir() => {
                    let _ = fs::rename(&back, cache);
                }
                _ => {}
            }
        }
    }
    let _ = fs::remove_dir_all(&staging.dir);
    if let Some(root) = staging.dir.parent() {
        set_times(root, staging.root_times);
    }
}

/// Set by init's SIGTERM handler: forge cancelled the step.
static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Forks init; see the module docs.
pub(crate) fn spawn_init(
    plan: &Plan,
    staging: &Staging,
    fds: &ChildFds,
    lifeline: OwnedFd,
) -> Result<Pid, String> {
    let root = ctx(sys::cstr(&plan.rootfs_dir), || {
        format!("bad path {}", plan.rootfs_dir.display())
    })?;
    // SAFETY: the child only runs `run_init`, which never returns into forge's code (see
    // container::spawn_init for what it may do after a fork).
    match unsafe { fork() }.map_err(|e| format!("fork the step's init: {e}"))? {
        ForkResult::Child => run_init(plan, staging, &root, fds, lifeline),
        ForkResult::Parent { child } => Ok(child),
    }
}

fn run_init(
    plan: &Plan,
    staging: &Staging,
    root: &CString,
    fds: &ChildFds,
    lifeline: OwnedFd,
) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if !container::init_prologue(plan, fds, &lifeline) {
            return SETUP_FAILED;
        }
        sys::reset_signals();
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
        let _ = nix::unistd::setsid();
        // Orphans of the command come back to init, which reaps them.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        sys::close_fds_except(&[
            fds.stdout.as_raw_fd(),
            fds.stderr.as_raw_fd(),
            fds.error.as_raw_fd(),
        ]);
        // SAFETY: valid C strings.
        if unsafe { libc::chroot(root.as_ptr()) } != 0 || unsafe { libc::chdir(c"/".as_ptr()) } != 0
        {
            let e = io::Error::last_os_error();
            write_fd(
                &fds.error,
                format!("chroot {}: {e}", root.to_string_lossy()).as_bytes(),
            );
            return SETUP_FAILED;
        }
        init(plan, staging, fds)
    }))
    .unwrap_or(SETUP_FAILED);
    plan::exit(code)
}

/// What init moved, to move back: (target, stage entry), what it put aside, and the directories
/// whose entries it changed (with their times before, outermost and first-seen first).
#[derive(Default)]
struct Moves {
    placed: Vec<(PathBuf, PathBuf)>,
    aside: Vec<(PathBuf, PathBuf)>,
    touched: Vec<(PathBuf, (Duration, Duration))>,
}

impl Moves {
    /// Records `dir`'s times the first time it is about to change.
    fn touch(&mut self, dir: &Path) {
        if self.touched.iter().any(|(d, _)| d == dir) {
            return;
        }
        if let Ok(md) = fs::symlink_metadata(dir) {
            self.touched.push((dir.to_path_buf(), times(&md)));
        }
    }

    /// Puts the recorded times back (the step then sees its root's directories as they were), or
    /// `now`'s, where given.
    fn restore_times(&self, now: Option<&[(PathBuf, (Duration, Duration))]>) {
        for (dir, t) in now.unwrap_or(&self.touched).iter().rev() {
            set_times(dir, *t);
        }
    }
}

fn init(plan: &Plan, staging: &Staging, fds: &ChildFds) -> i32 {
    let mut undo = Undo::default();
    let mut moves = Moves::default();
    let prepared =
        match setup(staging, &mut undo, &mut moves).and_then(|()| command::prepare_command(plan)) {
            Ok(p) => p,
            Err(msg) => {
                write_fd(&fds.error, msg.as_bytes());
                put_back(&moves, &undo);
                return SETUP_FAILED;
            }
        };
    // SAFETY: init is single-threaded.
    let command = match unsafe { fork() } {
        Err(e) => {
            write_fd(&fds.error, format!("fork command: {e}").as_bytes());
            put_back(&moves, &undo);
            return SETUP_FAILED;
        }
        Ok(ForkResult::Child) => {
            // A group of its own, so init can end it and stay alive to clean up.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            command::exec_command(&prepared, fds)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    let _ = nix::unistd::setpgid(command, command);
    // SAFETY: closing init's copies; only the command may hold the output pipes.
    unsafe {
        libc::close(fds.stdout.as_raw_fd());
        libc::close(fds.stderr.as_raw_fd());
    }
    let group = Pid::from_raw(-command.as_raw());
    let mut killed = false;
    let code = container::wait_command(command, || {
        if CANCELLED.load(Ordering::SeqCst) && !killed {
            killed = true;
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
    });
    // What the command left running in its group goes with it; orphans that come back are reaped.
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..100 {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    put_back(&moves, &undo);
    code
}

/// Moves `path` aside into the stage when something is there; returns whether it did.
fn put_aside(path: &Path, stage: &Path, n: usize, moves: &mut Moves) -> SetupResult<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let aside = stage.join(format!("aside-{n}"));
    ctx(fs::rename(path, &aside), || {
        format!("move {} aside for a mount", path.display())
    })?;
    moves.aside.push((path.to_path_buf(), aside));
    Ok(())
}

fn setup(staging: &Staging, undo: &mut Undo, moves: &mut Moves) -> SetupResult<()> {
    let stage = &staging.inner;
    for (n, item) in staging.items.iter().enumerate() {
        // A target that is a symlink to a directory is followed, as a mount would; inside the
        // chroot, so it stays in the root.
        let target = match fs::symlink_metadata(&item.target) {
            Ok(md) if md.file_type().is_symlink() => {
                fs::canonicalize(&item.target).unwrap_or_else(|_| item.target.clone())
            }
            _ => item.target.clone(),
        };
        let parent = target.parent().unwrap_or(Path::new("/"));
        container::ensure_target(parent, true, &mut undo.stubs)?;
        moves.touch(parent);
        put_aside(&target, stage, n, moves)?;
        let from = stage.join(&item.name);
        ctx(fs::rename(&from, &target), || {
            format!("move the mount's content to {}", target.display())
        })?;
        moves.placed.push((target, from));
    }
    let dev = Path::new("/dev");
    container::ensure_target(dev, true, &mut undo.stubs)?;
    moves.touch(dev);
    for (name, rdev) in &staging.devices {
        let p = dev.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        let made = nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            *rdev,
        );
        if made.is_ok() {
            // mknod's mode is masked by the umask.
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
            undo.stubs.push(Stub::Created {
                path: p,
                dir: false,
            });
        }
    }
    // Times of the existing parents of created stubs are ours to restore, not the generic undo's:
    // it would restore them after the step, over what the step itself changed there.
    undo.stubs.retain(|stub| match stub {
        Stub::Times { dir, atime, mtime } => {
            if !moves.touched.iter().any(|(d, _)| d == dir) {
                moves.touched.push((dir.clone(), (*atime, *mtime)));
            }
            false
        }
        Stub::Created { .. } => true,
    });
    moves.restore_times(None);
    Ok(())
}

/// Undoes [`setup`]: contents back to the stage, what was aside back in place, created parents
/// removed. Directories keep the times the step left them with.
fn put_back(moves: &Moves, undo: &Undo) {
    let now: Vec<_> = moves
        .touched
        .iter()
        .filter_map(|(d, _)| Some((d.clone(), times(&fs::symlink_metadata(d).ok()?))))
        .collect();
    for (target, from) in moves.placed.iter().rev() {
        let _ = fs::rename(target, from);
    }
    for (path, aside) in moves.aside.iter().rev() {
        let _ = fs::rename(aside, path);
    }
    container::cleanup(undo);
    moves.restore_times(Some(&now));
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A read-only bind of a checkout's file wrote through to the checkout: the chroot cannot make
    /// the mount read-only, and the file was a hard link of the source. It is a copy now; a
    /// writable bind's file (a throwaway snapshot's) may still be linked.
    #[test]
    fn a_read_only_bind_of_a_file_is_a_copy_the_step_cannot_write_through() {
        let t = tempfile::tempdir().unwrap();
        let source = t.path().join("checkout.txt");
        fs::write(&source, "mine\n").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o640)).unwrap();
        let ro = t.path().join("ro");
        place_file(&source, &ro, true).unwrap();
        fs::write(&ro, "written by the step\n").unwrap();
        assert_eq!(fs::read_to_string(&source).unwrap(), "mine\n");
        assert_eq!(fs::metadata(&ro).unwrap().mode() & 0o7777, 0o640);
        let rw = t.path().join("rw");
        place_file(&source, &rw, false).unwrap();
        assert_eq!(
            fs::metadata(&rw).unwrap().ino(),
            fs::metadata(&source).unwrap().ino()
        );
    }
}
