//! Thin wrappers over the Linux calls the embedded backend needs and neither nix nor std expose: the
//! new mount API (open_tree, move_mount, mount_setattr), and capset. Each returns
//! `io::Result` so the container setup can attach the path or step that failed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A detached copy of the mount tree at `path` (a bind mount not yet attached anywhere). Taken before
/// pivot_root so host paths can be mounted into the new root afterwards without resolving them there.
pub(crate) fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: plain syscall with a valid NUL-terminated path; the result is a new fd we own.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Mount attributes for [`set_tree_attrs`] and [`set_path_attrs`].
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Sets `attrs` on a detached tree, recursively (mount_setattr), so submounts of /sys are covered too.
pub(crate) fn set_tree_attrs(fd: &OwnedFd, attrs: u64) -> io::Result<()> {
    mount_setattr(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as libc::c_uint,
        attrs,
    )
}

/// Makes the mount tree at `path` read-only, recursively; unlike a remount it keeps the flags a user
/// namespace may not clear (nosuid, nodev on locked mounts).
pub(crate) fn set_path_readonly(path: &Path) -> io::Result<()> {
    set_path_attrs(path, MOUNT_ATTR_RDONLY)
}

/// Sets `attrs` on the mount tree at `path`, recursively, keeping the flags it has.
pub(crate) fn set_path_attrs(path: &Path, attrs: u64) -> io::Result<()> {
    let c = cstr(path)?;
    mount_setattr(libc::AT_FDCWD, &c, 0, attrs)
}

fn mount_setattr(
    dirfd: RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    attrs: u64,
) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr lives across the call and its size is passed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches a detached tree at `target` (resolved in the caller's current root).
pub(crate) fn move_mount(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    let empty = c"";
    // SAFETY: valid fd and NUL-terminated paths.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// mount(2) with string arguments.
pub(crate) fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = CString::new(source)?;
    let target = cstr(target)?;
    let fstype = CString::new(fstype)?;
    let data = data.map(CString::new).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    cvt(ret as libc::c_long).map(drop)
}

/// Makes every mount of this mount namespace private, so that nothing mounted from here on
/// propagates back to the namespace it was copied from.
pub(crate) fn make_mount_tree_private() -> io::Result<()> {
    mount(
        "",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

pub(crate) fn umount_detach(target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    // SAFETY: valid path.
    cvt(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } as libc::c_long).map(drop)
}

/// pivot_root(".", ".") in `new_root`, then detaches the old root stacked on top: no directory for the
/// old root has to be created inside the image (it would land in the snapshot).
pub(crate) fn pivot_into(new_root: &Path) -> io::Result<()> {
    let c = cstr(new_root)?;
    let dot = c".";
    // SAFETY: valid paths; the calls only change this process's root and mounts.
    unsafe {
        cvt(libc::chdir(c.as_ptr()) as libc::c_long)?;
        cvt(libc::syscall(
            libc::SYS_pivot_root,
            dot.as_ptr(),
            dot.as_ptr(),
        ))?;
        cvt(libc::umount2(dot.as_ptr(), libc::MNT_DETACH) as libc::c_long)?;
        cvt(libc::chdir(c"/".as_ptr()) as libc::c_long)?;
    }
    Ok(())
}

/// The capability to call chroot(2), which the chroot isolation's steps do not get.
pub(crate) const CAP_SYS_CHROOT: u32 = 18;

/// The capability to make device nodes, which the chroot isolation's steps do not get either.
pub(crate) const CAP_MKNOD: u32 = 27;

/// Docker's default capability set (moby `oci/caps/defaults.go`), as bit numbers.
pub(crate) const DEFAULT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability outside `keep` from the bounding set, and clears ambient ones.
pub(crate) fn limit_bounding_set(keep: &[u32]) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            // EINVAL: a capability this kernel does not know.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Ok(())
}

/// Sets effective and permitted capabilities to `caps` (empty for a non-root user) and clears the
/// inheritable set, as runc and BuildKit have since CVE-2022-24769: a program run with file
/// capabilities gets none from the step's inheritable set.
pub(crate) fn set_caps(caps: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut data = [Data::default(); 2];
    for &cap in caps {
        let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[i].effective |= bit;
        data[i].permitted |= bit;
    }
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and two data structs as capset(2) version 3 expects.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })?;
    Ok(())
}

/// Closes every descriptor from 3 up except those in `keep`, so a forked container process does not hold
/// pipes that belong to other steps running concurrently (their readers would wait for our exit).
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut low: libc::c_uint = 3;
    for fd in keep {
        let fd = fd as libc::c_uint;
        if fd > low {
            // SAFETY: closing descriptors this freshly forked process does not use.
            unsafe { libc::syscall(libc::SYS_close_range, low, fd - 1, 0) };
        }
        low = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, low, libc::c_uint::MAX, 0) };
}

/// Restores default dispositions and an empty mask: a forked child inherits the caller's signal
/// handlers (e.g. tokio's), which must not run in the container.
pub(crate) fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting the default disposition is always sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty set, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

pub(crate) fn as_ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
    p.push(std::ptr::null());
    p
}
