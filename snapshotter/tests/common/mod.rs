//! Test helpers shared by the snapshotter's integration tests: a file-by-file tree comparison
//! (content, mode, owner, link targets, hard link groups, xattrs, optional mtimes) usable against
//! any independent judge (umoci, skopeo); the prerequisite checks that skip or fail per FORGE_E2E come
//! from forge-testsupport.
#![allow(dead_code)]

pub mod fake_registry;
pub mod hostile;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One path of a tree, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// "file", "dir", "symlink", "char", "block", "fifo", "socket".
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// sha256 of a regular file's content.
    pub content: Option<String>,
    pub size: u64,
    pub link: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    /// For a multiply-linked non-directory: the smallest path of its link group in this tree.
    pub hardlink_group: Option<PathBuf>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub mtime: i64,
}

/// What the comparison ignores.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Compare mtimes (seconds) of non-directories.
    pub mtimes: bool,
    /// Compare mtimes of directories too.
    pub dir_mtimes: bool,
    /// Skip xattrs whose name starts with one of these.
    pub ignore_xattr_prefixes: Vec<Vec<u8>>,
    /// Compare the root directory's own metadata.
    pub root_meta: bool,
}

/// Every path under `root` (relative, the root itself as ""), with what it is.
pub fn scan_tree(root: &Path) -> BTreeMap<PathBuf, TreeNode> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content = (kind == "file").then(|| {
            let mut f = File::open(&path).unwrap();
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        });
        let link = (kind == "symlink").then(|| {
            std::fs::read_link(&path)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let rdev = matches!(kind, "char" | "block")
            .then(|| (libc::major(md.rdev()), libc::minor(md.rdev())));
        if kind != "dir" && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(
            rel.clone(),
            TreeNode {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                content,
                size: if kind == "file" { md.size() } else { 0 },
                link,
                rdev,
                hardlink_group: None,
                xattrs: xattrs(&path),
                mtime: md.mtime(),
            },
        );
        if kind == "dir" {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    for paths in inodes.values() {
        if paths.len() > 1 {
            let first = paths.iter().min().unwrap().clone();
            for p in paths {
                out.get_mut(p).unwrap().hardlink_group = Some(first.clone());
            }
        }
    }
    out
}

/// Every xattr of `path` (a final symlink not followed), sorted by name.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 64 * 1024];
        // SAFETY: v is valid for its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    out
}

/// Differences between two trees, one line each; empty when they match.
pub fn compare_trees(a: &Path, b: &Path, opts: &CompareOptions) -> Vec<String> {
    let ta = scan_tree(a);
    let tb = scan_tree(b);
    let mut diffs = Vec::new();
    for (path, na) in &ta {
        let Some(nb) = tb.get(path) else {
            diffs.push(format!("{}: only in {}", path.display(), a.display()));
            continue;
        };
        if path.as_os_str().is_empty() && !opts.root_meta {
            continue;
        }
        let mut na = na.clone();
        let mut nb = nb.clone();
        for n in [&mut na, &mut nb] {
            n.xattrs
                .retain(|(k, _)| !opts.ignore_xattr_prefixes.iter().any(|p| k.starts_with(p)));
            let keep_mtime = if n.kind == "dir" {
                opts.dir_mtimes
            } else {
                opts.mtimes
            };
            // Symlink mtimes are not portable across tools (some never set them).
            if !keep_mtime || n.kind == "symlink" {
                n.mtime = 0;
            }
        }
        if na != nb {
            diffs.push(format!("{}: {:?} != {:?}", path.display(), na, nb));
        }
    }
    for path in tb.keys() {
        if !ta.contains_key(path) {
            diffs.push(format!("{}: only in {}", path.display(), b.display()));
        }
    }
    diffs
}

/// Assert two trees match, printing at most 20 differences.
pub fn assert_trees_equal(a: &Path, b: &Path, opts: &CompareOptions) {
    let diffs = compare_trees(a, b, opts);
    assert!(
        diffs.is_empty(),
        "trees differ ({} differences):\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// Each test file uses its own few of these.
#[allow(unused_imports)]
pub use forge_testsupport::{is_root, prerequisite, required, workspace_root};

pub fn have_tool(name: &str) -> bool {
    forge_testsupport::on_path(name).is_some()
}

/// Whether native overlay mounts can be tested here (as root, on a filesystem that takes them).
#[allow(dead_code)]
pub fn native_overlay_here() -> bool {
    use forge_snapshotter::snapshot::{BackendKind, probe};
    if !prerequisite(
        is_root(),
        "native overlay mounts need root or a user namespace",
    ) {
        return false;
    }
    let probe_dir = tempfile::tempdir().unwrap();
    prerequisite(
        probe(probe_dir.path()) == BackendKind::Overlay,
        "overlayfs does not mount here",
    )
}

/// Runs the test `name` of this test binary again as FORGE_TEST_USER, in a user and mount namespace
/// of its own (`unshare -Urm`), as a rootless forge runs, with FORGE_IN_USERNS set so the outer
/// test can tell the inner run; asserts that it ran and passed. Skips (or fails under
/// FORGE_E2E=require) without the user, root or the tools. The inner run returns at once.
#[allow(dead_code)]
pub fn rerun_rootless(name: &str) {
    if std::env::var_os("FORGE_IN_USERNS").is_some() {
        return;
    }
    let user = std::env::var("FORGE_TEST_USER").ok();
    if !prerequisite(user.is_some(), "FORGE_TEST_USER is not set")
        || !prerequisite(is_root(), "switching to FORGE_TEST_USER needs root")
        || !prerequisite(have_tool("setpriv"), "setpriv(1) missing")
        || !prerequisite(have_tool("unshare"), "unshare(1) missing")
    {
        return;
    }
    let user = user.unwrap();
    // The build dir may be private to root: run a copy the user can reach.
    let copy_dir = tempfile::tempdir().unwrap();
    let exe = copy_dir.path().join("rootless-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(copy_dir.path(), open.clone()).unwrap();
        std::fs::set_permissions(&exe, open).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .args(["--init-groups", "unshare", "-Urm", "--"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("FORGE_IN_USERNS", "1")
        .env("FORGE_E2E", "require")
        .env("TMPDIR", "/tmp")
        .env("HOME", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rootless run of {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "rootless run did not run {name}:\n{stdout}"
    );
}

/// Apply snapshotter mounts at `target` the way a runner would (tests only: the runner owns this).
pub fn mount_all(mounts: &[forge_snapshotter::Mount], target: &Path) {
    for m in mounts {
        match m.kind.as_str() {
            "bind" => {
                let flags = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
                nix::mount::mount(Some(&m.source), target, None::<&str>, flags, None::<&str>)
                    .unwrap_or_else(|e| {
                        panic!("bind {} -> {}: {e}", m.source.display(), target.display())
                    });
                if m.is_readonly() {
                    let flags =
                        flags | nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
                    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                        .unwrap();
                }
            }
            "overlay" => {
                let data = m.options.join(",");
                nix::mount::mount(
                    Some("overlay"),
                    target,
                    Some("overlay"),
                    nix::mount::MsFlags::empty(),
                    Some(data.as_str()),
                )
                .unwrap_or_else(|e| panic!("overlay mount {data}: {e}"));
            }
            "fuse-overlayfs" => {
                let st = std::process::Command::new("fuse-overlayfs")
                    .arg("-o")
                    .arg(m.options.join(","))
                    .arg(target)
                    .status()
                    .expect("running fuse-overlayfs");
                assert!(st.success(), "fuse-overlayfs {:?}: {st}", m.options);
            }
            other => panic!("unknown mount kind {other}"),
        }
    }
}

pub fn unmount(target: &Path) {
    nix::mount::umount2(target, nix::mount::MntFlags::empty())
        .unwrap_or_else(|e| panic!("umount {}: {e}", target.display()));
}

/// Whether this process is in a user namespace (then ids other than the mapped ones cannot be used).
pub fn in_userns() -> bool {
    forge_snapshotter::userns::in_user_namespace()
}

/// The change set the round-trip tests make on top of `base_tree`, in `dir` (a copy of the base or a
/// mounted snapshot): adds, modifies, deletes, an opaque directory replace, symlinks, hard links,
/// chmod, chown (as real root), xattrs, a fifo, setuid and sticky modes.
pub fn apply_change_set(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let w = |p: &str, c: &[u8]| std::fs::write(dir.join(p), c).unwrap();
    w("added.txt", b"new file\n");
    std::fs::create_dir_all(dir.join("newdir/deep/er")).unwrap();
    w("newdir/deep/er/file", b"deep\n");
    w("etc/config", b"modified config\n");
    std::fs::remove_file(dir.join("etc/delete-me")).unwrap();
    std::fs::remove_dir_all(dir.join("gone-dir")).unwrap();
    // Opaque replace: the directory's old content must not show through.
    std::fs::remove_dir_all(dir.join("replaced")).unwrap();
    std::fs::create_dir(dir.join("replaced")).unwrap();
    w("replaced/only-new", b"only\n");
    std::os::unix::fs::symlink("etc/config", dir.join("link-to-config")).unwrap();
    std::os::unix::fs::symlink("/absolute/dangling", dir.join("abs-link")).unwrap();
    w("hl-a", b"hard linked\n");
    std::fs::hard_link(dir.join("hl-a"), dir.join("hl-b")).unwrap();
    std::fs::set_permissions(
        dir.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir(dir.join("tmp")).unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(
        dir.join("etc/chmod-me"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if is_root() && !in_userns() {
        std::os::unix::fs::lchown(dir.join("etc/chown-me"), Some(1234), Some(5678)).unwrap();
    }
    let c = std::ffi::CString::new(dir.join("added.txt").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"user.forge".as_ptr(),
            b"yes".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setting user.forge: {}",
        std::io::Error::last_os_error()
    );
    nix::unistd::mkfifo(
        &dir.join("a-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // A file turned into a directory and a directory turned into a file.
    std::fs::remove_file(dir.join("was-file")).unwrap();
    std::fs::create_dir(dir.join("was-file")).unwrap();
    w("was-file/inside", b"x");
    std::fs::remove_dir_all(dir.join("was-dir")).unwrap();
    w("was-dir", b"now a file");
}

/// The base tree the change set applies to.
pub fn make_base_tree(dir: &Path) {
    let w = |p: &str, c: &[u8]| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap()
    };
    w("etc/config", b"original\n");
    w("etc/delete-me", b"bye\n");
    w("etc/chmod-me", b"mode\n");
    w("etc/chown-me", b"owner\n");
    w("gone-dir/a", b"a");
    w("gone-dir/sub/b", b"b");
    w("replaced/old-1", b"old");
    w("replaced/old-2", b"old");
    w("bin/tool", b"#!/bin/sh\n");
    w("was-file", b"file");
    w("was-dir/child", b"child");
    w("unchanged/file", b"same");
    std::os::unix::fs::symlink("../etc/config", dir.join("unchanged/link")).unwrap();
}

/// Bytes no compressor shrinks and no two seeds share (a xorshift stream).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
