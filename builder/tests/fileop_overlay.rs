//! A COPY applied on a real kernel overlay, the way a build's file step runs it: once entirely
//! through the mount, once with the overlay's upper directory given, where files inside the
//! directories the copy makes are created directly. The two upper directories (what the layer is
//! diffed from) must be the same entry for entry, and the mount must show every file either way.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use forge_builder::fileop::{apply, apply_with_upper};
use forge_builder::graph::{CopyOptions, FileAction, NodeRef};

const CTX: NodeRef = NodeRef(0);

/// A context with what a copy treats differently: nested directories, modes, a foreign owner, a
/// symlink, two hard links to one file, an xattr, and a file that replaces one of the lower layer.
fn context(dir: &Path) {
    for d in 0..4 {
        for f in 0..25 {
            let p = dir.join(format!("pkg{d}/src/file{f:02}.txt"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, format!("package {d} file {f}\n").repeat(f + 1)).unwrap();
            fs::set_permissions(
                &p,
                fs::Permissions::from_mode(0o600 + (f as u32 % 2) * 0o155),
            )
            .unwrap();
        }
    }
    fs::write(dir.join("pkg1/owned"), "owned").unwrap();
    std::os::unix::fs::chown(dir.join("pkg1/owned"), Some(1234), Some(5678)).unwrap();
    symlink("src/file01.txt", dir.join("pkg2/link")).unwrap();
    fs::write(dir.join("pkg3/one"), "linked").unwrap();
    fs::hard_link(dir.join("pkg3/one"), dir.join("pkg3/two")).unwrap();
    fs::write(dir.join("keep.txt"), "new keep").unwrap();
    fs::create_dir(dir.join("old")).unwrap();
    fs::write(dir.join("old/again.txt"), "back").unwrap();
    forge_testsupport::set_xattr(&dir.join("pkg0/src/file00.txt"), "user.forge.test", b"yes")
        .unwrap_or_else(|e| panic!("setxattr: {e}"));
}

/// The lower layer: /src with a file the context replaces and a directory of its own, and /old,
/// which the step removes before the copy makes it again (over the whiteout).
fn lower(dir: &Path) {
    fs::create_dir_all(dir.join("src/pkg0")).unwrap();
    fs::write(dir.join("src/keep.txt"), "old keep").unwrap();
    fs::write(dir.join("src/pkg0/lower-only"), "lower").unwrap();
    fs::create_dir_all(dir.join("old")).unwrap();
    fs::write(dir.join("old/stale"), "stale").unwrap();
}

struct Overlay {
    upper: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    fn mount(base: &Path, lower: &Path) -> Overlay {
        let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting an overlay at {}: {e}", merged.display()));
        Overlay { upper, merged }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Every entry under `root`: type, mode, owner, size, xattrs (the overlay's own among them), the
/// bytes or link target, and the mtime unless the entry is in `no_times` (directories the copy
/// only passed through, whose times are those of the moment the files went in).
fn describe(root: &Path, no_times: &[&str]) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, no_times: &[&str], out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let body = if m.is_file() {
                format!("{:?}", fs::read(&p).unwrap())
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            let time = if no_times.contains(&rel.as_str()) {
                String::new()
            } else {
                format!("{}.{}", m.mtime(), m.mtime_nsec())
            };
            let line = format!(
                "mode={:o} uid={} gid={} size={} links={} xattrs={:?} time={time} {body}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.size() },
                m.nlink(),
                xattrs(&p),
            );
            out.insert(rel, line);
            if m.is_dir() {
                walk(root, &p, no_times, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, no_times, &mut out);
    out
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer is as long as said; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(len >= 0, "lgetxattr {}", p.display());
        value.truncate(len as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    out
}

/// The options the Dockerfile frontend gives a plain `COPY`.
fn dockerfile_copy() -> CopyOptions {
    CopyOptions {
        follow_symlinks: true,
        copy_dir_contents_only: true,
        create_dest_path: true,
        allow_wildcard: true,
        allow_empty_wildcard: true,
        ..CopyOptions::default()
    }
}

fn actions() -> Vec<FileAction> {
    vec![
        FileAction::Rm {
            path: "/old".into(),
            allow_not_found: false,
            allow_wildcard: false,
        },
        FileAction::Copy {
            from: Some(CTX),
            src: "/".into(),
            dest: "/src/".into(),
            options: dockerfile_copy(),
        },
        FileAction::Copy {
            from: Some(CTX),
            src: "/old".into(),
            dest: "/old".into(),
            options: dockerfile_copy(),
        },
    ]
}

#[test]
fn files_made_in_the_upper_directory_equal_files_made_through_the_overlay() {
    if !forge_testsupport::root("mounting overlays, keeping a foreign owner") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let low = tmp.path().join("lower");
    fs::create_dir_all(&ctx).unwrap();
    fs::create_dir_all(&low).unwrap();
    context(&ctx);
    lower(&low);
    let sources: HashMap<NodeRef, PathBuf> = [(CTX, ctx.clone())].into();

    let through = Overlay::mount(&tmp.path().join("through"), &low);
    apply(&actions(), &through.merged, &sources).unwrap();
    let direct = Overlay::mount(&tmp.path().join("direct"), &low);
    apply_with_upper(&actions(), &direct.merged, Some(&direct.upper), &sources).unwrap();

    // The mount shows what was copied, with the lower layer's own file beside it.
    for m in [&through.merged, &direct.merged] {
        assert_eq!(
            fs::read_to_string(m.join("src/pkg3/src/file24.txt")).unwrap(),
            "package 3 file 24\n".repeat(25)
        );
        assert_eq!(
            fs::read_to_string(m.join("src/keep.txt")).unwrap(),
            "new keep"
        );
        assert_eq!(
            fs::read_to_string(m.join("src/pkg0/lower-only")).unwrap(),
            "lower"
        );
        assert_eq!(fs::read_to_string(m.join("old/again.txt")).unwrap(), "back");
        assert!(!m.join("old/stale").exists(), "{}", m.display());
        let owned = fs::metadata(m.join("src/pkg1/owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
        assert_eq!(fs::metadata(m.join("src/pkg3/two")).unwrap().nlink(), 2);
    }
    drop(through);
    drop(direct);

    // Passed through, not made: /src (the copy's destination) and /src/pkg0 (in the lower layer).
    let no_times = ["src", "src/pkg0", "old"];
    let a = describe(&tmp.path().join("through/upper"), &no_times);
    let b = describe(&tmp.path().join("direct/upper"), &no_times);
    assert!(a.len() > 100, "{} entries in the upper directory", a.len());
    for (path, line) in &a {
        assert_eq!(b.get(path), Some(line), "{path} differs");
    }
    assert_eq!(
        a.len(),
        b.len(),
        "{:?}",
        b.keys().filter(|k| !a.contains_key(*k))
    );
    // /old came back over the lower one as a directory of its own (opaque), with only the copy's
    // file in it.
    let opaque = &a["old"];
    assert!(opaque.contains("trusted.overlay.opaque"), "{opaque}");
}
