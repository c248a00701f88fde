//! What tests build on disk: scratch directories for stores and roots, busybox root filesystems, and
//! `FROM scratch` build contexts that carry the host's static busybox so RUN steps have a shell
//! without a registry.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::check::{BUSYBOX, TestUser};

/// The first lines of a Dockerfile that gets a busybox userland from a [`Context`]: every applet
/// installed as a symlink in /bin, in one layer above the binary's own.
pub const BUSYBOX_BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A scratch directory for a store, a root or contexts, named `<prefix>XXXXXX` under /var/tmp: a disk
/// filesystem, where /tmp may be a tmpfs without the user xattrs and overlay upper dirs tests need.
/// Removed when dropped.
pub fn scratch(prefix: &str) -> TempDir {
    scratch_in(Path::new("/var/tmp"), prefix)
}

/// A scratch directory named `<prefix>XXXXXX` under `parent`.
pub fn scratch_in(parent: &Path, prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("scratch directory in {}: {e}", parent.display()))
}

/// A scratch directory under /tmp (world-traversable, mode 0755) that an unprivileged user can reach,
/// owned by `owner` when given so that it can write there too.
pub fn shared_scratch(prefix: &str, owner: Option<&TestUser>) -> TempDir {
    let dir = scratch_in(Path::new("/tmp"), prefix);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(user) = owner {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", dir.path().display(), user.name));
    }
    dir
}

/// Puts the executable `exe` (a `CARGO_BIN_EXE_*` path) into `dir` and returns its path there, for a
/// user who cannot reach the target directory. A hard link where it can be: a copy is open for writing
/// for a moment, and a child that another test thread forks in that moment holds the descriptor until
/// it execs, which makes executing the copy fail with ETXTBSY. Across filesystems, a copy (mode 0755).
pub fn install_exe(exe: &str, dir: &Path) -> PathBuf {
    let name = Path::new(exe).file_name().expect("an executable's path");
    let dest = dir.join(name);
    if fs::hard_link(exe, &dest).is_ok() {
        return dest;
    }
    copy_exe(exe, dir)
}

/// Copies the executable `exe` into `dir` (mode 0755) and returns the copy: for a fixture that chowns
/// its whole tree, which must not reach cargo's own file through a hard link. Running it may need to
/// retry on ETXTBSY (see [`install_exe`]).
pub fn copy_exe(exe: &str, dir: &Path) -> PathBuf {
    let name = Path::new(exe).file_name().expect("an executable's path");
    let dest = dir.join(name);
    fs::copy(exe, &dest).unwrap_or_else(|e| panic!("copy {exe} to {}: {e}", dest.display()));
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

/// Every path under `root`, `root` included, in sorted order per directory; symlinks not followed.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let mut children: Vec<PathBuf> = fs::read_dir(&p)
                .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Puts the static busybox at `<root>/bin/busybox` with every applet linked beside it (`sh`, `ls`,
/// ...), as a root filesystem's /bin. Callers check [`crate::busybox`] first.
pub fn install_busybox(root: &Path) {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap_or_else(|e| panic!("copy {BUSYBOX}: {e}"));
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("{BUSYBOX} --list: {e}"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
}

/// A build context holding the host's busybox as `busybox` (for a Dockerfile that starts with
/// [`BUSYBOX_BASE`]), built up file by file:
///
/// ```no_run
/// # let tmp = std::path::Path::new("/tmp");
/// let ctx = forge_testsupport::Context::busybox(tmp.join("ctx"))
///     .dockerfile("FROM scratch\nCOPY busybox /bin/busybox\n")
///     .file("app/config", "x=1\n")
///     .mode("app/config", 0o600)
///     .file("empty-dir/", "")
///     .into_path();
/// ```
#[derive(Debug)]
pub struct Context {
    dir: PathBuf,
}

impl Context {
    /// Creates `dir` (and its parents) with busybox in it. Callers check [`crate::busybox`] first.
    pub fn busybox(dir: impl Into<PathBuf>) -> Context {
        let dir = dir.into();
        fs::create_dir_all(&dir).unwrap();
        fs::copy(BUSYBOX, dir.join("busybox")).unwrap_or_else(|e| panic!("copy {BUSYBOX}: {e}"));
        Context { dir }
    }

    /// Writes the `Dockerfile`.
    pub fn dockerfile(self, text: &str) -> Context {
        self.file("Dockerfile", text)
    }

    /// Writes `path` (relative, parents created); a path ending in `/` is a directory.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Context {
        let p = self.dir.join(path);
        if path.ends_with('/') {
            fs::create_dir_all(&p).unwrap();
        } else {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
        self
    }

    /// Writes every `(path, content)` as [`Context::file`] does.
    pub fn files<C: AsRef<[u8]>>(self, files: &[(&str, C)]) -> Context {
        files
            .iter()
            .fold(self, |ctx, (path, content)| ctx.file(path, content))
    }

    /// Sets the mode of `path`, so that a checkout's umask cannot change a digest.
    pub fn mode(self, path: &str, mode: u32) -> Context {
        let p = self.dir.join(path);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn into_path(self) -> PathBuf {
        self.dir
    }
}

/// A name no other run of any test shares (process id and nanoseconds): for registry
/// repositories and other names outside a scratch directory.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Sets the extended attribute `name` of `path` (not followed when a symlink) to `value`; the
/// error is the system's (`ENOTSUP` where the filesystem takes no such attributes).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call; `value` is a live slice
    // of the length given.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
