//! The file-op executor on temp directories: COPY/ADD placement rules, wildcards, owners and modes,
//! --parents, --exclude, links, archives (and hostile ones), mkdir/mkfile/rm/symlink.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use forge_builder::fileop::{FileOpError, SourceDirs, Visible, apply};
use forge_builder::frontend::dockerignore::Dockerignore;
use forge_builder::graph::{Chmod, CopyOptions, FileAction, NodeRef};
use forge_builder::source::context::{ContextSnapshot, SnapshotOptions};

const CTX: NodeRef = NodeRef(0);

struct Fixture {
    _tmp: tempfile::TempDir,
    ctx: PathBuf,
    dest: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&ctx).unwrap();
    fs::create_dir_all(&dest).unwrap();
    Fixture {
        _tmp: tmp,
        ctx,
        dest,
    }
}

impl Fixture {
    fn file(&self, rel: &str, data: &str, mode: u32) {
        let p = self.ctx.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn run(&self, actions: Vec<FileAction>) -> Result<(), FileOpError> {
        let sources: HashMap<NodeRef, PathBuf> = [(CTX, self.ctx.clone())].into();
        apply(&actions, &self.dest, &sources).map(|_| ())
    }

    fn out(&self, rel: &str) -> PathBuf {
        self.dest.join(rel.trim_start_matches('/'))
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.out(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::symlink_metadata(self.out(rel)).unwrap().mode() & 0o7777
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.out(rel)).is_ok()
    }

    /// Every path under the destination, sorted, directories with a trailing slash.
    fn tree(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.dest, &self.dest, &mut v);
        v.sort();
        v
    }
}

/// A COPY as the Dockerfile lowering emits it for a context source.
fn copy(src: &str, dest: &str) -> FileAction {
    copy_with(src, dest, |_| {})
}

fn copy_with(src: &str, dest: &str, f: impl FnOnce(&mut CopyOptions)) -> FileAction {
    let mut options = CopyOptions {
        follow_symlinks: true,
        copy_dir_contents_only: true,
        create_dest_path: true,
        allow_wildcard: true,
        allow_empty_wildcard: true,
        ..CopyOptions::default()
    };
    f(&mut options);
    FileAction::Copy {
        from: Some(CTX),
        src: src.into(),
        dest: dest.into(),
        options,
    }
}

fn is_root() -> bool {
    forge_testsupport::root("chown")
}

#[test]
fn directory_source_copies_its_contents() {
    let f = fixture();
    f.file("dir/a", "A", 0o644);
    f.file("dir/sub/b", "B", 0o600);
    f.run(vec![copy("/dir", "/out/")]).unwrap();
    assert_eq!(f.tree(), ["out/", "out/a", "out/sub/", "out/sub/b"]);
    assert_eq!(f.read("/out/sub/b"), "B");
    assert_eq!(f.mode("/out/sub/b"), 0o600);
    // Without a trailing slash the directory is created under that name all the same.
    f.run(vec![copy("/dir", "/other")]).unwrap();
    assert_eq!(f.read("/other/a"), "A");
}

#[test]
fn file_destination_rules() {
    let f = fixture();
    f.file("f.txt", "F", 0o640);
    fs::create_dir(f.out("/existing")).unwrap();
    f.run(vec![
        copy("/f.txt", "/into/"),
        copy("/f.txt", "/renamed"),
        copy("/f.txt", "/existing"),
        copy("/f.txt", "/deep/er/"),
    ])
    .unwrap();
    assert_eq!(f.read("/into/f.txt"), "F");
    assert!(fs::metadata(f.out("/renamed")).unwrap().is_file());
    assert_eq!(f.read("/renamed"), "F");
    assert_eq!(f.read("/existing/f.txt"), "F");
    assert_eq!(f.mode("/deep"), 0o755);
    assert_eq!(f.mode("/deep/er"), 0o755);
    assert_eq!(f.mode("/deep/er/f.txt"), 0o640);
}

#[test]
fn wildcards_match_like_go() {
    let f = fixture();
    f.file("a.txt", "a", 0o644);
    f.file("b.txt", "b", 0o644);
    f.file("c.md", "c", 0o644);
    f.file("sub/d.txt", "d", 0o644);
    f.run(vec![copy("/*.txt", "/out/"), copy("/s?b/*.txt", "/out2/")])
        .unwrap();
    assert_eq!(
        f.tree(),
        ["out/", "out/a.txt", "out/b.txt", "out2/", "out2/d.txt"]
    );
    // An empty match is allowed as the Dockerfile frontend asks, refused otherwise.
    f.run(vec![copy("/*.nothing", "/none/")]).unwrap();
    assert!(!f.exists("/none"));
    let err = f
        .run(vec![copy_with("/*.nothing", "/none/", |o| {
            o.allow_empty_wildcard = false
        })])
        .unwrap_err();
    assert!(matches!(err, FileOpError::NoMatch { ref pattern } if pattern == "/*.nothing"));
}

/// `COPY a b /dest` is one copy action per source, all onto `/dest`. As in BuildKit (fsutil's
/// copier, v0.13 to today; moby/buildkit#1853): where `/dest` is a directory each lands inside it;
/// where nothing is there, the first makes `/dest` and each next one replaces it (a file) or
/// merges into it (a directory's contents); a wildcard's matches go the same way, in name order.
#[test]
fn several_sources_onto_one_destination_go_as_buildkit_sends_them() {
    let f = fixture();
    f.file("a.txt", "a", 0o644);
    f.file("b.txt", "b", 0o644);
    f.file("d1/x", "x", 0o644);
    f.file("d2/y", "y", 0o644);
    f.run(vec![copy("/a.txt", "/dest"), copy("/b.txt", "/dest")])
        .unwrap();
    assert_eq!(f.read("/dest"), "b");
    f.run(vec![copy("/*.txt", "/glob")]).unwrap();
    assert_eq!(f.read("/glob"), "b");
    f.run(vec![copy("/d1", "/merged"), copy("/d2", "/merged")])
        .unwrap();
    assert_eq!(f.read("/merged/x"), "x");
    assert_eq!(f.read("/merged/y"), "y");
    f.run(vec![copy("/a.txt", "/dir/"), copy("/b.txt", "/dir/")])
        .unwrap();
    f.run(vec![copy("/a.txt", "/dir"), copy("/b.txt", "/dir")])
        .unwrap();
    assert_eq!(f.read("/dir/a.txt"), "a");
    assert_eq!(f.read("/dir/b.txt"), "b");
    assert!(!f.exists("/dir/dir"));
}

#[test]
fn missing_literal_source_is_named() {
    let f = fixture();
    let err = f.run(vec![copy("/nope.txt", "/out/")]).unwrap_err();
    assert!(matches!(err, FileOpError::SourceNotFound { ref src } if src == "/nope.txt"));
    assert!(err.to_string().contains("nope.txt"), "{err}");
}

/// A source that is a symlink to what the context lacks (`abs-link -> /etc/passwd`) was said to be
/// not found, though it is there; the link is named with its target, as BuildKit names it.
#[test]
fn a_dangling_link_source_is_named_with_its_target() {
    let f = fixture();
    std::os::unix::fs::symlink("/etc/passwd", f.ctx.join("abs-link")).unwrap();
    let err = f.run(vec![copy("/abs-link", "/out/")]).unwrap_err();
    assert!(
        matches!(err, FileOpError::DanglingSource { ref src, ref target }
            if src == "/abs-link" && target == "/etc/passwd"),
        "{err}"
    );
}

#[test]
fn chown_applies_to_copied_entries_and_created_parents() {
    if !is_root() {
        return;
    }
    let f = fixture();
    f.file("dir/a", "A", 0o644);
    fs::create_dir_all(f.out("/etc")).unwrap();
    fs::write(
        f.out("/etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1500:1600::/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(f.out("/etc/group"), "root:x:0:\nstaff:x:1700:\n").unwrap();
    f.run(vec![
        copy_with("/dir", "/p/q/", |o| o.owner = Some("1234:5678".into())),
        copy_with("/dir/a", "/named/", |o| o.owner = Some("app".into())),
        copy_with("/dir/a", "/grp/", |o| o.owner = Some("app:staff".into())),
        copy_with("/dir/a", "/num/", |o| o.owner = Some("42".into())),
    ])
    .unwrap();
    let ids = |rel: &str| {
        let m = fs::symlink_metadata(f.out(rel)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(ids("/p"), (1234, 5678));
    assert_eq!(ids("/p/q"), (1234, 5678));
    assert_eq!(ids("/p/q/a"), (1234, 5678));
    assert_eq!(ids("/named/a"), (1500, 1600));
    assert_eq!(ids("/grp/a"), (1500, 1700));
    assert_eq!(ids("/num/a"), (42, 42));
    // A name the destination does not list: root's, and a note naming it (BuildKit's readUser).
    let sources: std::collections::HashMap<NodeRef, PathBuf> = [(CTX, f.ctx.clone())].into();
    let notes = apply(
        &[copy_with("/dir/a", "/x/", |o| {
            o.owner = Some("ghost".into())
        })],
        &f.dest,
        &sources,
    )
    .unwrap();
    assert_eq!(ids("/x/a"), (0, 0));
    assert!(
        notes.len() == 1 && notes[0].contains("unknown user \"ghost\""),
        "{notes:?}"
    );
}

#[test]
fn chmod_octal_and_symbolic() {
    let f = fixture();
    f.file("dir/a", "A", 0o644);
    f.file("dir/x", "X", 0o755);
    f.run(vec![
        copy_with("/dir", "/oct/", |o| o.mode = Some(Chmod::Octal(0o600))),
        copy_with("/dir", "/sym/", |o| {
            o.mode = Some(Chmod::Symbolic("u+x,g-r,o=".into()))
        }),
    ])
    .unwrap();
    assert_eq!(f.mode("/oct/a"), 0o600);
    assert_eq!(f.mode("/oct/x"), 0o600);
    assert_eq!(f.mode("/sym/a"), 0o700);
    assert_eq!(f.mode("/sym/x"), 0o710);
}

#[test]
fn parents_keep_the_source_directories() {
    let f = fixture();
    f.file("a/b/c.txt", "c", 0o644);
    f.file("a/b/other.txt", "o", 0o644);
    f.file("x/y/c.txt", "xc", 0o644);
    f.file("x/z/nope.md", "n", 0o644);
    fs::set_permissions(f.ctx.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    // COPY --parents a/b/c.txt /out/      (pivot: the context root)
    // COPY --parents a/./b/c.txt /pivot/  (pivot: a)
    // COPY --parents */*/c.txt /wild/
    f.run(vec![
        copy_with("/", "/out/", |o| {
            o.include_patterns = vec!["a/b/c.txt".into()];
            o.required_paths = vec!["/a/b/c.txt".into()];
        }),
        copy_with("/a", "/pivot/", |o| {
            o.include_patterns = vec!["b/c.txt".into()]
        }),
        copy_with("/", "/wild/", |o| {
            o.include_patterns = vec!["*/*/c.txt".into()]
        }),
    ])
    .unwrap();
    assert_eq!(
        f.tree(),
        [
            "out/",
            "out/a/",
            "out/a/b/",
            "out/a/b/c.txt",
            "pivot/",
            "pivot/b/",
            "pivot/b/c.txt",
            "wild/",
            "wild/a/",
            "wild/a/b/",
            "wild/a/b/c.txt",
            "wild/x/",
            "wild/x/y/",
            "wild/x/y/c.txt",
        ]
    );
    assert_eq!(f.mode("/out/a/b"), 0o750, "parents keep their source mode");
    let err = f
        .run(vec![copy_with("/", "/r/", |o| {
            o.include_patterns = vec!["q/r.txt".into()];
            o.required_paths = vec!["/q/r.txt".into()];
        })])
        .unwrap_err();
    assert!(matches!(err, FileOpError::RequiredPath { .. }), "{err}");
}

#[test]
fn exclude_patterns_skip_entries() {
    let f = fixture();
    f.file("app/main.rs", "m", 0o644);
    f.file("app/debug.log", "l", 0o644);
    f.file("app/target/x", "x", 0o644);
    f.file("app/keep/important.log", "k", 0o644);
    f.run(vec![copy_with("/app", "/out/", |o| {
        o.exclude_patterns = vec![
            "*.log".into(),
            "target".into(),
            "!keep/important.log".into(),
        ]
    })])
    .unwrap();
    assert_eq!(
        f.tree(),
        ["out/", "out/keep/", "out/keep/important.log", "out/main.rs"]
    );
}

#[test]
fn symlinks_are_copied_as_links_except_the_followed_source() {
    let f = fixture();
    f.file("dir/real", "R", 0o644);
    symlink("real", f.ctx.join("dir/rel")).unwrap();
    symlink("/etc/shadow", f.ctx.join("dir/abs")).unwrap();
    symlink("dir/real", f.ctx.join("top")).unwrap();
    f.run(vec![copy("/dir", "/out/"), copy("/top", "/followed")])
        .unwrap();
    assert_eq!(fs::read_link(f.out("/out/rel")).unwrap(), Path::new("real"));
    assert_eq!(
        fs::read_link(f.out("/out/abs")).unwrap(),
        Path::new("/etc/shadow")
    );
    let m = fs::symlink_metadata(f.out("/followed")).unwrap();
    assert!(m.is_file(), "the top-level source link is followed");
    assert_eq!(f.read("/followed"), "R");
    f.run(vec![copy_with("/top", "/kept", |o| {
        o.follow_symlinks = false
    })])
    .unwrap();
    assert_eq!(
        fs::read_link(f.out("/kept")).unwrap(),
        Path::new("dir/real")
    );
}

#[test]
fn hardlinks_stay_linked_and_times_are_kept() {
    let f = fixture();
    f.file("d/one", "same", 0o644);
    fs::hard_link(f.ctx.join("d/one"), f.ctx.join("d/two")).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &f.ctx.join("d/one"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    f.run(vec![copy("/d", "/out/")]).unwrap();
    let one = fs::metadata(f.out("/out/one")).unwrap();
    let two = fs::metadata(f.out("/out/two")).unwrap();
    assert_eq!(one.ino(), two.ino());
    assert_eq!(one.nlink(), 2);
    assert_eq!(one.mtime(), 1_000_000_000);
}

/// BuildKit copies each source a wildcard matches on its own, each with its own record of links:
/// two matched names of one file land as two files (a directory matched keeps its inner links).
#[test]
fn sources_a_wildcard_matches_share_no_hard_links() {
    let f = fixture();
    f.file("top.txt", "same", 0o644);
    fs::hard_link(f.ctx.join("top.txt"), f.ctx.join("top2.txt")).unwrap();
    f.file("topdir/a", "inner", 0o644);
    fs::hard_link(f.ctx.join("topdir/a"), f.ctx.join("topdir/b")).unwrap();
    f.run(vec![copy_with("/top*", "/d/", |o| o.allow_wildcard = true)])
        .unwrap();
    let one = fs::metadata(f.out("/d/top.txt")).unwrap();
    let two = fs::metadata(f.out("/d/top2.txt")).unwrap();
    assert_ne!(one.ino(), two.ino());
    assert_eq!((one.nlink(), two.nlink()), (1, 1));
    assert_eq!(f.read("/d/top2.txt"), "same");
    let a = fs::metadata(f.out("/d/a")).unwrap();
    let b = fs::metadata(f.out("/d/b")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn destination_links_resolve_inside_the_root() {
    let f = fixture();
    f.file("f.txt", "F", 0o644);
    // /app in the destination points far above the root: it must land in <root>/escape.
    symlink("../../../../../../escape", f.out("/app")).unwrap();
    symlink("/abs-target", f.out("/abs")).unwrap();
    f.run(vec![copy("/f.txt", "/app/"), copy("/f.txt", "/abs/x/")])
        .unwrap();
    assert_eq!(f.read("/escape/f.txt"), "F");
    assert_eq!(f.read("/abs-target/x/f.txt"), "F");
    assert!(!f.dest.parent().unwrap().join("escape").exists());
    assert!(!Path::new("/escape").exists());
    assert!(!Path::new("/abs-target").exists());
}

#[test]
fn mkdir_mkfile_rm_symlink() {
    let f = fixture();
    f.run(vec![
        FileAction::Mkdir {
            path: "/w/x/y".into(),
            mode: 0o750,
            make_parents: true,
            owner: None,
        },
        FileAction::Mkfile {
            path: "/w/x/y/heredoc".into(),
            mode: 0o600,
            data: "hello\n".into(),
            owner: None,
        },
        FileAction::Mkfile {
            path: "/w/gone.tmp".into(),
            mode: 0o644,
            data: String::new(),
            owner: None,
        },
        FileAction::Symlink {
            target: "x/y/heredoc".into(),
            link: "/w/link".into(),
        },
        FileAction::Rm {
            path: "/w/*.tmp".into(),
            allow_not_found: false,
            allow_wildcard: true,
        },
        FileAction::Rm {
            path: "/not-there".into(),
            allow_not_found: true,
            allow_wildcard: false,
        },
    ])
    .unwrap();
    assert_eq!(
        f.tree(),
        ["w/", "w/link", "w/x/", "w/x/y/", "w/x/y/heredoc"]
    );
    assert_eq!(f.mode("/w"), 0o750);
    assert_eq!(f.mode("/w/x/y"), 0o750);
    assert_eq!(f.mode("/w/x/y/heredoc"), 0o600);
    assert_eq!(f.read("/w/link"), "hello\n");
    let err = f
        .run(vec![FileAction::Rm {
            path: "/not-there".into(),
            allow_not_found: false,
            allow_wildcard: false,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("not-there"), "{err}");
    // mkdir without parents on an existing directory is a no-op, as in BuildKit.
    f.run(vec![FileAction::Mkdir {
        path: "/w".into(),
        mode: 0o700,
        make_parents: false,
        owner: None,
    }])
    .unwrap();
    assert_eq!(f.mode("/w"), 0o750);
}

/// A tar with a directory, a file, a symlink and a hardlink.
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    b.append_data(&mut h, "pkg/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_mtime(1_500_000_000);
    h.set_size(5);
    b.append_data(&mut h, "pkg/run.sh", &b"hi!\n\n"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(1_400_000_000);
    b.append_link(&mut h, "pkg/link", "run.sh").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_link(&mut h, "pkg/hard", "pkg/run.sh").unwrap();
    b.into_inner().unwrap()
}

fn add(src: &str, dest: &str) -> FileAction {
    copy_with(src, dest, |o| o.attempt_unpack = true)
}

#[test]
fn add_extracts_local_archives_of_every_compression() {
    use std::io::Write;
    let f = fixture();
    let raw = sample_tar();
    fs::write(f.ctx.join("a.tar"), &raw).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    fs::write(f.ctx.join("a.tar.gz"), gz.finish().unwrap()).unwrap();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&raw).unwrap();
    fs::write(f.ctx.join("a.tar.bz2"), bz.finish().unwrap()).unwrap();
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &raw[..], &mut xz).unwrap();
    fs::write(f.ctx.join("a.tar.xz"), xz).unwrap();
    fs::write(
        f.ctx.join("a.tar.zst"),
        zstd::encode_all(&raw[..], 3).unwrap(),
    )
    .unwrap();
    f.file("plain.txt", "not an archive", 0o644);
    for name in ["a.tar", "a.tar.gz", "a.tar.bz2", "a.tar.xz", "a.tar.zst"] {
        let dir = format!("/x/{name}/");
        f.run(vec![add(&format!("/{name}"), &dir)]).unwrap();
        assert_eq!(f.read(&format!("{dir}pkg/run.sh")), "hi!\n\n", "{name}");
        assert_eq!(f.mode(&format!("{dir}pkg/run.sh")), 0o755, "{name}");
        assert_eq!(f.mode(&format!("{dir}pkg")), 0o750, "{name}");
        let m = fs::metadata(f.out(&format!("{dir}pkg"))).unwrap();
        assert_eq!(m.mtime(), 1_500_000_000, "{name}: directory time set last");
        assert_eq!(
            fs::read_link(f.out(&format!("{dir}pkg/link"))).unwrap(),
            Path::new("run.sh")
        );
        let link = fs::symlink_metadata(f.out(&format!("{dir}pkg/link"))).unwrap();
        assert_eq!(link.mtime(), 1_400_000_000, "{name}: the link's own time");
        let a = fs::metadata(f.out(&format!("{dir}pkg/run.sh"))).unwrap();
        let h = fs::metadata(f.out(&format!("{dir}pkg/hard"))).unwrap();
        assert_eq!(a.ino(), h.ino(), "{name}: hardlink kept");
    }
    f.run(vec![add("/plain.txt", "/x/")]).unwrap();
    assert_eq!(f.read("/x/plain.txt"), "not an archive");
    // COPY never extracts.
    f.run(vec![copy("/a.tar.gz", "/c/")]).unwrap();
    assert!(fs::metadata(f.out("/c/a.tar.gz")).unwrap().is_file());
}

/// A tar whose single entry carries `name` (and `link` for a symlink) verbatim, bypassing the tar
/// crate's own path checks the way a hand-crafted archive would.
fn raw_tar(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_or_confined() {
    let f = fixture();
    let cases = [(
        "hard.tar",
        raw_tar("h", tar::EntryType::Link, "../../etc/passwd", b""),
    )];
    for (name, data) in &cases {
        fs::write(f.ctx.join(name), data).unwrap();
        let err = f.run(vec![add(&format!("/{name}"), "/x/")]).unwrap_err();
        assert!(
            matches!(err, FileOpError::ArchiveEntry { .. }),
            "{name}: {err}"
        );
    }
    // A symlink is kept as the link it is, wherever it points (BuildKit keeps it), and an entry
    // written through it lands inside the destination, its links followed there as in a chroot.
    let mut two = raw_tar("l", tar::EntryType::Symlink, "../../../etc", b"");
    two.truncate(two.len() - 1024);
    two.extend(raw_tar("l/passwd", tar::EntryType::Regular, "", b"pwned"));
    fs::write(f.ctx.join("link.tar"), two).unwrap();
    f.run(vec![add("/link.tar", "/x/")]).unwrap();
    assert_eq!(
        fs::read_link(f.out("/x/l")).unwrap(),
        Path::new("../../../etc")
    );
    assert_eq!(f.read("/x/etc/passwd"), "pwned");
    assert!(!f.out("/etc/passwd").exists());
    // A link the archive makes back into itself is a loop, refused naming the entry.
    let mut looped = raw_tar("etc", tar::EntryType::Symlink, "/etc", b"");
    looped.truncate(looped.len() - 1024);
    looped.extend(raw_tar("etc/passwd", tar::EntryType::Regular, "", b"pwned"));
    fs::write(f.ctx.join("loop.tar"), looped).unwrap();
    let err = f.run(vec![add("/loop.tar", "/y/")]).unwrap_err();
    assert!(matches!(err, FileOpError::ArchiveEntry { .. }), "{err}");
    // An entry whose `..` climbs above the destination stays at its top, as BuildKit's chrooted
    // extraction places it.
    for (name, entry) in [("climb.tar", "../../evil"), ("deep.tar", "a/../../evil")] {
        fs::write(
            f.ctx.join(name),
            raw_tar(entry, tar::EntryType::Regular, "", b"x"),
        )
        .unwrap();
        f.run(vec![add(&format!("/{name}"), "/x/")]).unwrap();
        assert_eq!(f.read("/x/evil"), "x", "{name}");
        fs::remove_file(f.out("/x/evil")).unwrap();
    }
    assert!(!f.dest.parent().unwrap().join("evil").exists());
    // An absolute entry name lands below the destination, and a destination link is resolved in
    // the root.
    fs::write(
        f.ctx.join("abs.tar"),
        raw_tar("/etc/planted", tar::EntryType::Regular, "", b"p"),
    )
    .unwrap();
    symlink("../../../../outside", f.out("/via")).unwrap();
    f.run(vec![add("/abs.tar", "/via/")]).unwrap();
    assert_eq!(f.read("/outside/etc/planted"), "p");
    assert!(!f.dest.parent().unwrap().join("outside").exists());
}

#[test]
fn add_archive_with_chown_owns_every_entry() {
    if !is_root() {
        return;
    }
    let f = fixture();
    fs::write(f.ctx.join("a.tar"), sample_tar()).unwrap();
    f.run(vec![copy_with("/a.tar", "/opt/x/", |o| {
        o.attempt_unpack = true;
        o.owner = Some("7:8".into());
    })])
    .unwrap();
    for rel in [
        "/opt",
        "/opt/x",
        "/opt/x/pkg",
        "/opt/x/pkg/run.sh",
        "/opt/x/pkg/link",
    ] {
        let m = fs::symlink_metadata(f.out(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (7, 8), "{rel}");
    }
}

#[test]
fn copy_into_an_existing_directory_keeps_its_metadata() {
    let f = fixture();
    f.file("src/new", "n", 0o644);
    fs::set_permissions(f.ctx.join("src"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(f.out("/app")).unwrap();
    fs::set_permissions(f.out("/app"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::write(f.out("/app/old"), "o").unwrap();
    f.run(vec![copy("/src", "/app")]).unwrap();
    assert_eq!(
        f.mode("/app"),
        0o751,
        "the destination directory is not rewritten"
    );
    assert_eq!(f.tree(), ["app/", "app/new", "app/old"]);
    // A file onto an existing directory lands inside it, but cannot replace a directory there.
    fs::create_dir_all(f.out("/app/d/x")).unwrap();
    f.file("x", "file", 0o644);
    f.run(vec![copy("/x", "/app")]).unwrap();
    assert_eq!(f.read("/app/x"), "file");
    let err = f.run(vec![copy("/x", "/app/d/")]).unwrap_err();
    assert!(matches!(err, FileOpError::Conflict { .. }), "{err}");
}

#[test]
fn xattrs_are_copied() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    f.file("x", "x", 0o644);
    if forge_testsupport::set_xattr(&f.ctx.join("x"), "user.forge", b"yes").is_err() {
        return forge_testsupport::missing("user xattrs unsupported on the temp filesystem");
    }
    f.run(vec![copy("/x", "/y")]).unwrap();
    let dst = CString::new(f.out("/y").as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.forge").unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: NUL-terminated strings and a live 16-byte buffer.
    let n = unsafe { libc::getxattr(dst.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    assert_eq!(n, 3);
    assert_eq!(&buf[..3], b"yes");
}

#[test]
fn copy_from_scratch_and_missing_inputs() {
    let f = fixture();
    let scratch = |src: &str| FileAction::Copy {
        from: None,
        src: src.into(),
        dest: "/out/".into(),
        options: CopyOptions {
            allow_wildcard: true,
            allow_empty_wildcard: true,
            ..CopyOptions::default()
        },
    };
    f.run(vec![scratch("/*.txt")]).unwrap();
    let err = f.run(vec![scratch("/a.txt")]).unwrap_err();
    assert!(matches!(err, FileOpError::SourceNotFound { .. }), "{err}");
    let err = f
        .run(vec![FileAction::Copy {
            from: Some(NodeRef(9)),
            src: "/".into(),
            dest: "/".into(),
            options: CopyOptions::default(),
        }])
        .unwrap_err();
    assert!(
        matches!(err, FileOpError::MissingInput { input: NodeRef(9) }),
        "{err}"
    );
    assert!(f.tree().is_empty());
}

/// A directory source large enough to keep the copy workers busy (more files than their queue
/// holds): every file lands with its bytes, mode and time, and every directory keeps its own time
/// although files were still being created inside it when the walk moved on.
#[test]
fn a_large_directory_copy_keeps_every_file_and_directory_time() {
    let f = fixture();
    let set_time = |p: &Path, secs: i64| {
        let t = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    };
    for d in 0..12 {
        for i in 0..60 {
            let mode = if i % 2 == 0 { 0o644 } else { 0o755 };
            f.file(&format!("tree/d{d}/f{i}"), &format!("{d}/{i}"), mode);
            set_time(&f.ctx.join(format!("tree/d{d}/f{i}")), 1_000_000_000 + i);
        }
        set_time(&f.ctx.join(format!("tree/d{d}")), 1_200_000_000 + d);
    }
    f.run(vec![copy("/tree", "/out/")]).unwrap();
    for d in 0..12 {
        for i in 0..60 {
            let rel = format!("/out/d{d}/f{i}");
            assert_eq!(f.read(&rel), format!("{d}/{i}"));
            assert_eq!(f.mode(&rel), if i % 2 == 0 { 0o644 } else { 0o755 });
            assert_eq!(
                fs::metadata(f.out(&rel)).unwrap().mtime(),
                1_000_000_000 + i
            );
        }
        let dir = fs::metadata(f.out(&format!("/out/d{d}"))).unwrap();
        assert_eq!(dir.mtime(), 1_200_000_000 + d, "d{d}");
    }
}

/// The build context as the executor hands it to the file op: its directory on disk, which also
/// holds what `.dockerignore` leaves out, and the snapshot of what it keeps.
struct Context {
    dir: PathBuf,
    kept: Box<Visible>,
}

impl Context {
    fn new(dir: &Path, ignore: &[&str]) -> Context {
        let ignore = Dockerignore::from_patterns(ignore).unwrap();
        let snap = ContextSnapshot::take(
            dir,
            &SnapshotOptions {
                ignore: Some(&ignore),
                ..Default::default()
            },
        )
        .unwrap();
        Context {
            dir: dir.to_path_buf(),
            kept: Box::new(move |p: &Path| p.as_os_str().is_empty() || snap.get(p).is_some()),
        }
    }
}

impl SourceDirs for Context {
    fn dir(&self, input: NodeRef) -> Option<&Path> {
        (input == CTX).then_some(self.dir.as_path())
    }

    fn visible(&self, input: NodeRef) -> Option<&Visible> {
        (input == CTX).then_some(self.kept.as_ref())
    }
}

/// `COPY dirlink/r` where `dirlink -> real` failed with `source "/dirlink/r" not found`: the
/// context's visibility was asked of the path as written, and only `real/r` is an entry of it.
#[test]
fn regression_copy_through_a_linked_directory_of_the_context() {
    let f = fixture();
    f.file("real/r", "R", 0o644);
    f.file("real/sub/s", "S", 0o644);
    fs::write(f.ctx.join("real/a.tar"), sample_tar()).unwrap();
    symlink("real", f.ctx.join("dirlink")).unwrap();
    symlink("/real", f.ctx.join("absdirlink")).unwrap();
    let ctx = Context::new(&f.ctx, &[]);
    apply(
        &[
            copy("dirlink/r", "/x1"),
            copy("dirlink/sub", "/x2"),
            copy("absdirlink/r", "/x3"),
            copy("dirlink/./r", "/x4"),
            copy("real/../dirlink/r", "/x5"),
            add("dirlink/r", "/x6"),
            add("absdirlink/a.tar", "/x7/"),
        ],
        &f.dest,
        &ctx,
    )
    .unwrap();
    for x in ["/x1", "/x3", "/x4", "/x5", "/x6"] {
        assert_eq!(f.read(x), "R", "{x}");
    }
    assert_eq!(f.read("/x2/s"), "S");
    assert!(
        f.exists("/x7/pkg/run.sh"),
        "the archive reached through a link is unpacked"
    );

    // As in BuildKit's transferred context, the link and its target must both pass .dockerignore.
    for ignored in ["dirlink", "real/r", "real"] {
        let ctx = Context::new(&f.ctx, &[ignored]);
        match apply(&[copy("dirlink/r", "/y")], &f.dest, &ctx) {
            Err(FileOpError::SourceNotFound { src }) => assert_eq!(src, "/dirlink/r"),
            other => panic!("{ignored} ignored: {other:?}"),
        }
    }
    let ctx = Context::new(&f.ctx, &["real", "!real/r"]);
    apply(&[copy("dirlink/r", "/z")], &f.dest, &ctx).unwrap();
    assert_eq!(f.read("/z"), "R");

    // A wildcard below an ignored link matches nothing (docker: lstat .../dirlink: no such file).
    let ctx = Context::new(&f.ctx, &["dirlink"]);
    let strict = copy_with("dirlink/*", "/w/", |o| o.allow_empty_wildcard = false);
    match apply(&[strict], &f.dest, &ctx) {
        Err(FileOpError::NoMatch { pattern }) => assert_eq!(pattern, "dirlink/*"),
        other => panic!("dirlink ignored: {other:?}"),
    }
    apply(&[copy("absdirlink/*", "/w/")], &f.dest, &ctx).unwrap();
    assert_eq!(f.read("/w/r"), "R");
}

/// A unix socket in a copied directory failed the whole COPY (`sockets cannot be copied`); fsutil,
/// and so docker, copies it as an empty regular file with the socket's permission bits.
#[test]
fn regression_a_socket_is_copied_as_an_empty_file() {
    let f = fixture();
    f.file("d/file", "F", 0o644);
    let _listener = std::os::unix::net::UnixListener::bind(f.ctx.join("d/sock")).unwrap();
    fs::set_permissions(f.ctx.join("d/sock"), fs::Permissions::from_mode(0o751)).unwrap();
    f.run(vec![copy("d", "/out/"), copy("d/sock", "/alone")])
        .unwrap();
    assert_eq!(f.read("/out/file"), "F");
    for copied in ["/out/sock", "/alone"] {
        let m = fs::symlink_metadata(f.out(copied)).unwrap();
        assert!(m.is_file(), "{copied}: {:?}", m.file_type());
        assert_eq!(m.len(), 0, "{copied}");
        assert_eq!(m.mode() & 0o7777, 0o751, "{copied}");
    }
}

/// A directory copy named its entries by the lossy text of their names: one that is not UTF-8
/// was copied under U+FFFD (or, from the context, not at all). Linux names are bytes.
#[test]
fn regression_a_name_that_is_not_utf8_is_copied_under_its_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let odd = f.ctx.join(OsStr::from_bytes(b"d/sub\xfe"));
    fs::create_dir_all(&odd).unwrap();
    fs::write(odd.join(OsStr::from_bytes(b"x\xffy")), "bytes").unwrap();
    let ctx = Context::new(&f.ctx, &[]);
    apply(&[copy(".", "/all/"), copy("d", "/d")], &f.dest, &ctx).unwrap();
    for copied in [&b"all/d/sub\xfe/x\xffy"[..], b"d/sub\xfe/x\xffy"] {
        let p = f.dest.join(OsStr::from_bytes(copied));
        assert_eq!(fs::read(&p).unwrap(), b"bytes", "{}", p.display());
    }
}
