//! Metadata of created entries: exact modes (never the process umask), owners, times, xattrs, and
//! `--chmod` values, octal or symbolic, applied to each entry's own mode.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{FileOpError, Ids, io};
use crate::graph::Chmod;

/// Sets the permission bits (with setuid, setgid, sticky) exactly.
pub(crate) fn set_mode(p: &Path, mode: u32) -> Result<(), FileOpError> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io("chmod", p))
}

/// Changes the owner of `p` itself (a symlink is not followed); `None` leaves it as created.
pub(crate) fn chown(p: &Path, ids: Option<Ids>) -> Result<(), FileOpError> {
    match ids {
        Some(ids) => {
            std::os::unix::fs::lchown(p, Some(ids.uid), Some(ids.gid)).map_err(io("chown", p))
        }
        None => Ok(()),
    }
}

/// Sets access and modification times of `p` itself (nanoseconds kept, links not followed).
pub(crate) fn set_times(p: &Path, md: &std::fs::Metadata) -> Result<(), FileOpError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    let (at, mt) = times(md);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &at,
        &mt,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io("setting times of", p)(std::io::Error::from(e)))
}

/// Access and modification times of `md`, nanoseconds kept.
fn times(md: &std::fs::Metadata) -> (nix::sys::time::TimeSpec, nix::sys::time::TimeSpec) {
    use nix::sys::time::TimeSpec;
    (
        TimeSpec::new(md.atime(), md.atime_nsec()),
        TimeSpec::new(md.mtime(), md.mtime_nsec()),
    )
}

/// Creates `p` (already resolved inside `root`) and its missing parents with `mode`, giving each
/// created directory `ids` as BuildKit's MkdirAll does; existing directories are left alone.
pub(crate) fn mkdir_all(
    root: &Path,
    p: &Path,
    mode: u32,
    ids: Option<Ids>,
) -> Result<(), FileOpError> {
    let mut missing = Vec::new();
    let mut cur = p;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(FileOpError::Conflict {
                    what: "a directory",
                    path: cur.to_path_buf(),
                    reason: "a non-directory is there",
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(cur.to_path_buf());
                match cur.parent() {
                    Some(parent) if cur != root => cur = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(io("inspecting", cur)(e)),
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("creating directory", d)(e)),
        }
        chown(d, ids)?;
        set_mode(d, mode)?;
    }
    Ok(())
}

/// Copies extended attributes of `src` onto `dst`, skipping whatever the destination refuses
/// (an unprivileged build cannot set `trusted.*`, some filesystems take none): BuildKit also
/// treats xattrs as best effort.
pub(crate) fn copy_xattrs(src: &Path, dst: &Path) {
    let (Ok(s), Ok(d)) = (
        CString::new(src.as_os_str().as_bytes()),
        CString::new(dst.as_os_str().as_bytes()),
    ) else {
        return;
    };
    // SAFETY (each call): the pointers and lengths describe live buffers, and the paths and names
    // are NUL-terminated.
    each_xattr(
        |names| unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) },
        |name, value| unsafe {
            libc::lgetxattr(
                s.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        },
        |name, value| unsafe {
            libc::lsetxattr(
                d.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            );
        },
    );
}

/// Copies the regular file `src` (whose metadata is `md`) to `target`, which must not exist,
/// with its final owner, mode, xattrs and times: every call on the two open descriptors, so each
/// file costs two path lookups (the opens) rather than one per metadata call. The data goes with
/// `copy_file_range` (a reflink or an in-kernel copy) until a copy finds the two filesystems
/// differ (`*cross_device` is then set and the rest go with `sendfile`).
pub(crate) fn copy_regular_file(
    src: &Path,
    target: &Path,
    md: &std::fs::Metadata,
    ids: Ids,
    mode: u32,
    cross_device: &mut bool,
) -> Result<(), FileOpError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .map_err(io("opening", src))?;
    // Made with its final permission bits (the umask may take some away: the file's own mode,
    // read back below, says whether a chmod is needed). The step's private mount is the only
    // place the file is seen before it is done.
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(io("creating", target))?;
    copy_data(&from, &to, md.len(), cross_device).map_err(io("copying to", target))?;
    // A new file belongs to its creator, or to the directory's group under a setgid directory:
    // asked of the file itself rather than guessed. Most files need neither call.
    let made = to.metadata().map_err(io("reading", target))?;
    let chown = (made.uid(), made.gid()) != (ids.uid, ids.gid);
    if chown {
        nix::unistd::fchown(to.as_fd(), Some(ids.uid.into()), Some(ids.gid.into()))
            .map_err(|e| io("chown", target)(e.into()))?;
    }
    // After a chown, which clears setuid and setgid bits.
    if made.mode() & 0o7777 != mode & 0o7777 || (chown && mode & 0o6000 != 0) {
        nix::sys::stat::fchmod(
            to.as_fd(),
            nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
        )
        .map_err(|e| io("chmod", target)(e.into()))?;
    }
    copy_fd_xattrs(&from, &to);
    let (at, mt) = times(md);
    nix::sys::stat::futimens(to.as_fd(), &at, &mt)
        .map_err(|e| io("setting times of", target)(e.into()))
}

fn copy_data(
    from: &std::fs::File,
    to: &std::fs::File,
    len: u64,
    cross_device: &mut bool,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let mut left = len as usize;
    while left > 0 && !*cross_device {
        match nix::fcntl::copy_file_range(from.as_fd(), None, to.as_fd(), None, left) {
            Ok(0) => return Ok(()),
            Ok(n) => left -= n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP
                | nix::errno::Errno::EINVAL,
            ) => *cross_device = true,
            Err(e) => return Err(e.into()),
        }
    }
    while left > 0 {
        match nix::sys::sendfile::sendfile(to.as_fd(), from.as_fd(), None, left) {
            // The file shrank while it was copied: what was there is copied.
            Ok(0) => return Ok(()),
            Ok(n) => left -= n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A file that grows while it is copied is copied at the size it had when it was inspected.
    Ok(())
}

/// Lists the source's attribute names with `list`, reads each with `get` (a negative length is a
/// failure: that attribute is skipped) and writes it with `set`.
fn each_xattr(
    list: impl Fn(&mut [u8]) -> isize,
    get: impl Fn(&std::ffi::CStr, &mut [u8]) -> isize,
    set: impl Fn(&std::ffi::CStr, &[u8]),
) {
    let mut names = vec![0u8; 4096];
    let n = list(&mut names);
    if n <= 0 {
        return;
    }
    names.truncate(n as usize);
    let mut value = vec![0u8; 65536];
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let len = get(&cname, &mut value);
        if len >= 0 {
            set(&cname, &value[..len as usize]);
        }
    }
}

/// The extended attributes of the open file `file`, sorted by name (what a build context's
/// content digest folds in: a `setcap` changes the file a COPY makes). Attributes that cannot be
/// read are left out, as [`copy_xattrs`] leaves them.
pub(crate) fn fd_xattrs(file: &std::fs::File) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let found = std::cell::RefCell::new(Vec::new());
    // SAFETY (each call): the pointers and lengths describe live buffers and the names are
    // NUL-terminated.
    each_xattr(
        |names| unsafe { libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) },
        |name, value| unsafe {
            libc::fgetxattr(fd, name.as_ptr(), value.as_mut_ptr().cast(), value.len())
        },
        |name, value| {
            found
                .borrow_mut()
                .push((name.to_bytes().to_vec(), value.to_vec()))
        },
    );
    let mut found = found.into_inner();
    found.sort();
    found
}

/// [`copy_xattrs`] on open descriptors.
fn copy_fd_xattrs(from: &std::fs::File, to: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let (s, d) = (from.as_raw_fd(), to.as_raw_fd());
    // SAFETY (each call): the pointers and lengths describe live buffers, the names are
    // NUL-terminated and both descriptors are open.
    each_xattr(
        |names| unsafe { libc::flistxattr(s, names.as_mut_ptr().cast(), names.len()) },
        |name, value| unsafe {
            libc::fgetxattr(s, name.as_ptr(), value.as_mut_ptr().cast(), value.len())
        },
        |name, value| unsafe {
            libc::fsetxattr(d, name.as_ptr(), value.as_ptr().cast(), value.len(), 0);
        },
    );
}

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSpec {
    /// Every entry gets exactly this mode.
    Octal(u32),
    /// Clauses applied in order to each entry's own mode.
    Symbolic(Vec<Clause>),
}

/// One `[ugoa]*[+-=][rwxXst]*` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    who: u32,
    op: u8,
    perms: String,
}

impl ModeSpec {
    /// Parses the graph's [`Chmod`].
    pub fn parse(c: &Chmod) -> Result<ModeSpec, FileOpError> {
        let s = match c {
            Chmod::Octal(m) => return Ok(ModeSpec::Octal(*m)),
            Chmod::Symbolic(s) => s,
        };
        let bad = || FileOpError::Chmod { value: s.clone() };
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let who_end = part.find(|c: char| !"ugoa".contains(c)).ok_or_else(bad)?;
            let mut who = 0;
            for c in part[..who_end].chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => 0o7777,
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut rest = &part[who_end..];
            if rest.is_empty() {
                return Err(bad());
            }
            while !rest.is_empty() {
                let op = rest.as_bytes()[0];
                if !b"+-=".contains(&op) {
                    return Err(bad());
                }
                rest = &rest[1..];
                let end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
                let perms = &rest[..end];
                if !perms.chars().all(|c| "rwxXst".contains(c)) {
                    return Err(bad());
                }
                clauses.push(Clause {
                    who,
                    op,
                    perms: perms.to_string(),
                });
                rest = &rest[end..];
            }
        }
        Ok(ModeSpec::Symbolic(clauses))
    }

    /// The mode an entry whose own mode is `mode` ends with.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            ModeSpec::Octal(m) => return m & 0o7777,
            ModeSpec::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            let mut bits = 0;
            for p in c.perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    // Execute only where it means something: directories, or already executable.
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => 0,
                };
            }
            let mask = c.who;
            match c.op {
                b'+' => mode |= bits & mask,
                b'-' => mode &= !(bits & mask),
                _ => mode = (mode & !mask) | (bits & mask),
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_modes() {
        let m = |s: &str| ModeSpec::parse(&Chmod::Symbolic(s.into())).unwrap();
        assert_eq!(m("u+x").apply(0o644, false), 0o744);
        assert_eq!(m("go-r").apply(0o644, false), 0o600);
        assert_eq!(m("a=r").apply(0o755, false), 0o444);
        assert_eq!(m("+X").apply(0o644, false), 0o644);
        assert_eq!(m("+X").apply(0o644, true), 0o755);
        assert_eq!(m("u=rwx,g=rx,o=").apply(0o600, false), 0o750);
        assert_eq!(m("u+s").apply(0o755, false), 0o4755);
        assert!(ModeSpec::parse(&Chmod::Symbolic("u*x".into())).is_err());
    }

    /// A copy skips chown and chmod when the new file already has the owner and mode asked for,
    /// and still gets every mode right: ones a umask strips, special bits, no bits at all,
    /// and an owner other than the creator (when this process may give files away).
    #[test]
    fn copied_files_get_exactly_the_mode_and_owner_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"content").unwrap();
        let md = std::fs::symlink_metadata(&src).unwrap();
        let me = Ids {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let root = nix::unistd::geteuid().is_root();
        let other = Ids {
            uid: 4242,
            gid: 4343,
        };
        // 0o666 and 0o777: what the usual umask (022, left as the process has it: tests share it)
        // takes bits away from.
        let mut cases = vec![
            (me, 0o644),
            (me, 0o666),
            (me, 0o777),
            (me, 0o000),
            (me, 0o4755),
            (me, 0o2711),
        ];
        if root {
            cases.extend([(other, 0o644), (other, 0o4755)]);
        }
        for (n, (ids, mode)) in cases.into_iter().enumerate() {
            let target = dir.path().join(format!("t{n}"));
            let mut cross = false;
            copy_regular_file(&src, &target, &md, ids, mode, &mut cross).unwrap();
            let got = std::fs::symlink_metadata(&target).unwrap();
            assert_eq!(got.mode() & 0o7777, mode, "{target:?}: mode");
            assert_eq!(
                (got.uid(), got.gid()),
                (ids.uid, ids.gid),
                "{target:?}: owner"
            );
            assert_eq!(std::fs::read(&target).unwrap(), b"content");
        }
    }
}
