//! Thin, fd-relative filesystem calls shared by unpack, diff and the snapshotters. Paths are raw
//! bytes (tar names need not be UTF-8); every lookup under an untrusted root goes through
//! openat2(RESOLVE_IN_ROOT), which reads absolute symlinks and `..` as if the root were `/`, so that
//! no symlink or `..` can lead outside it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in path"))
}

/// Open `rel` under `root` resolved as if `root` were `/`: an absolute symlink target restarts at
/// `root`, `..` stops at it (the kernel clamps both), so the result is always inside. Every
/// component is followed, the last one too unless `flags` has O_NOFOLLOW. An empty `rel` opens
/// `root` itself.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlag,
) -> Result<OwnedFd, Errno> {
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // With `..` in a symlink target the kernel answers EAGAIN when any rename ran on the system
    // during the walk (it cannot prove the walk stayed inside); retrying is the documented answer.
    let mut attempts = 0;
    loop {
        match openat2(root, std::ffi::OsStr::from_bytes(rel), how) {
            Err(Errno::EAGAIN) if attempts < 128 => attempts += 1,
            other => return other,
        }
    }
}

/// Open a directory path on the host (trusted) as an O_PATH descriptor.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// `/proc/self/fd/<dirfd>/<name>`: lets path-only calls (l*xattr, remove_dir_all) act on a single
/// name inside a directory we hold open, without re-resolving the directory's path.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    p
}

pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<libc::stat, Errno> {
    let c = cstring(name).map_err(|_| Errno::EINVAL)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: c is a valid C string and st is a valid out pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Errno::result(r)?;
    // SAFETY: fstatat succeeded and filled st.
    Ok(unsafe { st.assume_init() })
}

pub(crate) fn lsetxattr(path: &[u8], name: &[u8], value: &[u8]) -> Result<(), Errno> {
    let p = cstring(path).map_err(|_| Errno::EINVAL)?;
    let n = cstring(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: valid C strings and a valid buffer of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> Result<(), Errno> {
    let n = cstring(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: valid descriptor, C string and buffer.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// An extended attribute: name and value.
pub(crate) type Xattr = (Vec<u8>, Vec<u8>);

/// All xattrs of `path` (not following a final symlink), names sorted.
pub(crate) fn lxattrs(path: &[u8]) -> Result<Vec<Xattr>, Errno> {
    let p = cstring(path).map_err(|_| Errno::EINVAL)?;
    xattrs_by(
        // SAFETY (both): p and n are valid C strings; buf is null with size 0 (a size query) or
        // has size bytes.
        |buf, size| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), size) },
        |n, buf, size| unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.cast(), size) },
    )
}

/// All xattrs of the file open as `fd`, names sorted: no path is looked up.
pub(crate) fn fxattrs(fd: BorrowedFd<'_>) -> Result<Vec<Xattr>, Errno> {
    let fd = fd.as_raw_fd();
    xattrs_by(
        // SAFETY (both): fd is open for the borrow; n is a valid C string; buf is null with size 0
        // (a size query) or has size bytes.
        |buf, size| unsafe { libc::flistxattr(fd, buf.cast(), size) },
        |n, buf, size| unsafe { libc::fgetxattr(fd, n.as_ptr(), buf.cast(), size) },
    )
}

/// Reads every xattr through `list` (listxattr's buffer and size) and `get` (getxattr's name,
/// buffer and size), each asked for its size first and asked again when it grew meanwhile.
fn xattrs_by(
    list: impl Fn(*mut u8, usize) -> isize,
    get: impl Fn(&std::ffi::CStr, *mut u8, usize) -> isize,
) -> Result<Vec<Xattr>, Errno> {
    let names = loop {
        let size = match Errno::result(list(std::ptr::null_mut(), 0)) {
            Ok(s) => s as usize,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match Errno::result(list(buf.as_mut_ptr(), size)) {
            Ok(n) => {
                buf.truncate(n as usize);
                break buf;
            }
            // The list grew between the two calls: ask again.
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = cstring(name).map_err(|_| Errno::EINVAL)?;
        let value = loop {
            let size = match Errno::result(get(&n, std::ptr::null_mut(), 0)) {
                Ok(s) => s as usize,
                // Removed meanwhile.
                Err(Errno::ENODATA) => break None,
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; size];
            match Errno::result(get(&n, buf.as_mut_ptr(), size)) {
                Ok(g) => {
                    buf.truncate(g as usize);
                    break Some(buf);
                }
                Err(Errno::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        };
        if let Some(v) = value {
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Set access and modification times of `name` in `dir` without following a final symlink.
pub(crate) fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    sec: i64,
    nsec: i64,
) -> Result<(), Errno> {
    let c = cstring(if name.is_empty() { b"." } else { name }).map_err(|_| Errno::EINVAL)?;
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [ts, ts];
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Errno::result(r).map(drop)
}
