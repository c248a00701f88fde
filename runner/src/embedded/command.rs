//! The command of a step, once its root is in place (pivoted into, or chrooted into): its user,
//! environment, working directory and executable resolved inside the root, then the last steps
//! before exec (limits, capabilities, the user switch, seccomp). Both isolations end here.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::plan::{ChildFds, Confinement, DEFAULT_PATH, Plan, SetupResult, ctx, exit, write_fd};
use super::sys;
use crate::user::{ResolvedUser, UserDb};

/// What exec needs, resolved before the fork of the command.
pub(super) struct Prepared<'a> {
    confinement: &'a Confinement,
    ulimits: &'a [crate::limits::Ulimit],
    exe: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    user: ResolvedUser,
}

pub(super) fn exec_command(p: &Prepared<'_>, fds: &ChildFds) -> ! {
    let fail = |msg: String| -> ! {
        write_fd(&fds.error, msg.as_bytes());
        exit(127)
    };
    // SAFETY: dup2 onto the standard descriptors of this about-to-exec process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
        }
        libc::dup2(fds.stdout.as_raw_fd(), 1);
        libc::dup2(fds.stderr.as_raw_fd(), 2);
    }
    // While still root in the namespace: raising a hard limit needs CAP_SYS_RESOURCE, which only
    // real root has (a user namespace cannot raise one past forge's own).
    for u in p.ulimits {
        let limit = libc::rlimit {
            rlim_cur: u.soft,
            rlim_max: u.hard,
        };
        // SAFETY: a valid rlimit for a resource number of the kernel's.
        if unsafe { libc::setrlimit(u.resource(), &limit) } != 0 {
            let e = io::Error::last_os_error();
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as above, read back.
            unsafe { libc::getrlimit(u.resource(), &mut current) };
            fail(format!(
                "set --ulimit {u}: {e} (forge's own hard limit is {}; only real root may raise it)",
                if current.rlim_max == libc::RLIM_INFINITY {
                    "unlimited".to_string()
                } else {
                    current.rlim_max.to_string()
                }
            ));
        }
    }
    // runc's default umask for the process (OCI `process.user.umask` unset), whatever forge's own.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    if let Err(e) = sys::limit_bounding_set(&p.confinement.root_caps) {
        fail(format!("drop capabilities from the bounding set: {e}"));
    }
    // Without no_new_privs (setuid binaries work, as in BuildKit's steps) the filter must go in
    // while this process still has CAP_SYS_ADMIN; the default profile allows what follows.
    if !p.confinement.no_new_privs
        && let Some(filters) = p.confinement.seccomp
        && let Err(e) = super::seccomp::install_privileged(filters)
    {
        fail(format!("install the seccomp filter: {e}"));
    }
    let u = &p.user;
    // setgroups is denied in a single-id user namespace; there are no other groups to set there.
    let setgroups_denied = fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "deny")
        .unwrap_or(false);
    if !setgroups_denied {
        let gids: Vec<nix::unistd::Gid> = u
            .additional_gids
            .iter()
            .map(|&g| nix::unistd::Gid::from_raw(g))
            .collect();
        if let Err(e) = nix::unistd::setgroups(&gids) {
            fail(format!("setgroups {:?}: {e}", u.additional_gids));
        }
    }
    let gid = nix::unistd::Gid::from_raw(u.gid);
    if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
        fail(format!(
            "setgid {}: {e} (is gid {} mapped in the user namespace?)",
            u.gid, u.gid
        ));
    }
    let uid = nix::unistd::Uid::from_raw(u.uid);
    if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
        fail(format!(
            "setuid {}: {e} (is uid {} mapped in the user namespace?)",
            u.uid, u.uid
        ));
    }
    // setuid to a non-zero uid already cleared the permitted set; root keeps Docker's default set.
    let caps: &[u32] = if u.uid == 0 {
        &p.confinement.root_caps
    } else {
        &[]
    };
    if let Err(e) = sys::set_caps(caps) {
        fail(format!("set capabilities: {e}"));
    }
    if p.confinement.no_new_privs
        && let Err(e) = nix::sys::prctl::set_no_new_privs()
    {
        fail(format!("set no_new_privs: {e}"));
    }
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } < 0 {
        fail(format!(
            "chdir {}: {}",
            p.cwd.to_string_lossy(),
            io::Error::last_os_error()
        ));
    }
    let argv = sys::as_ptrs(&p.argv);
    let env = sys::as_ptrs(&p.env);
    // Last before exec: every call above is one the profile may deny.
    if p.confinement.no_new_privs
        && let Some(filters) = p.confinement.seccomp
        && let Err(e) = super::seccomp::install(filters)
    {
        fail(format!("install the seccomp filter: {e}"));
    }
    // SAFETY: argv and env are NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(p.exe.as_ptr(), argv.as_ptr(), env.as_ptr()) };
    fail(format!(
        "exec {}: {}",
        p.exe.to_string_lossy(),
        io::Error::last_os_error()
    ))
}

/// The command's user, environment, working directory and executable, resolved inside the
/// step's root (the caller has pivoted or chrooted into it).
pub(super) fn prepare_command(plan: &Plan) -> SetupResult<Prepared<'_>> {
    let db = UserDb::read(Path::new("/")).map_err(|e| e.to_string())?;
    let user = db.resolve(&plan.user).map_err(|e| e.to_string())?;

    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in &plan.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), user.home.clone()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let cwd = if plan.cwd.as_os_str().is_empty() {
        PathBuf::from("/")
    } else {
        plan.cwd.clone()
    };
    make_cwd(&cwd, user.uid, user.gid)?;

    let argv0 = plan
        .argv
        .first()
        .ok_or_else(|| "the step has an empty command".to_string())?;
    let exe = find_executable(argv0, &path_var)?;
    Ok(Prepared {
        confinement: &plan.confinement,
        ulimits: &plan.ulimits,
        exe: ctx(sys::cstr(&exe), || format!("bad path {}", exe.display()))?,
        argv: plan.argv.iter().map(|a| sys::c_string(a)).collect(),
        env: env
            .iter()
            .map(|(k, v)| sys::c_string(&format!("{k}={v}")))
            .collect(),
        cwd: ctx(sys::cstr(&cwd), || format!("bad path {}", cwd.display()))?,
        user,
    })
}

/// Creates the working directory if missing, new components owned by the step's user (as BuildKit's
/// executor does for a WORKDIR that does not exist yet). Unlike mount stubs, it stays in the snapshot.
fn make_cwd(cwd: &Path, uid: u32, gid: u32) -> SetupResult<()> {
    let mut missing = Vec::new();
    let mut cur = Some(cwd);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        ctx(fs::create_dir(p), || {
            format!("create working directory {}", p.display())
        })?;
        // 0755 as BuildKit makes it, whatever forge's umask: it stays in the image.
        ctx(
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)),
            || format!("chmod working directory {}", p.display()),
        )?;
        ctx(std::os::unix::fs::chown(p, Some(uid), Some(gid)), || {
            format!("chown working directory {} to {uid}:{gid}", p.display())
        })?;
    }
    Ok(())
}

/// PATH lookup inside the rootfs (the caller has pivoted into it).
fn find_executable(name: &str, path_var: &str) -> SetupResult<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(format!(
        "executable file not found in $PATH: {name:?} (PATH={path_var})"
    ))
}
