//! Build-context snapshots: determinism, `.dockerignore`, symlinks, the content-hash memo (counted
//! through the snapshot's read counter) and COPY-source selection hashing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use forge_builder::frontend::dockerignore::Dockerignore;
use forge_builder::source::context::{
    ContextError, ContextSnapshot, EntryKind, SnapshotOptions, memo_path,
};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
}

/// Moves a file's mtime an hour into the past, out of the racy window.
fn age(root: &Path, rel: &str) {
    let f = fs::File::options()
        .write(true)
        .open(root.join(rel))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

fn snap(root: &Path, state: Option<&Path>, ignore: Option<&Dockerignore>) -> ContextSnapshot {
    ContextSnapshot::take(
        root,
        &SnapshotOptions {
            ignore,
            state_dir: state,
            threads: 0,
        },
    )
    .unwrap()
}

fn paths(s: &ContextSnapshot) -> Vec<&str> {
    s.entries()
        .iter()
        .map(|e| e.path.to_str().expect("a UTF-8 path"))
        .collect()
}

fn sample_tree(root: &Path) {
    write(root, "a.txt", "alpha");
    write(root, "b.txt", "beta");
    write(root, "src/main.rs", "fn main() {}");
    write(root, "src/lib/mod.rs", "// lib");
    write(root, "docs/x.md", "x");
}

#[test]
fn snapshot_is_deterministic_and_content_addressed() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    sample_tree(one.path());
    sample_tree(two.path());
    let a = snap(one.path(), None, None);
    let b = snap(one.path(), None, None);
    let c = snap(two.path(), None, None);
    assert_eq!(a.entries(), b.entries());
    assert_eq!(a.digest(), b.digest());
    // Same names, contents, modes and owners in another directory (other inodes, other times).
    assert_eq!(a.digest(), c.digest());
    assert_eq!(
        paths(&a),
        [
            "a.txt",
            "b.txt",
            "docs",
            "docs/x.md",
            "src",
            "src/lib",
            "src/lib/mod.rs",
            "src/main.rs"
        ]
    );
    let e = a.get("a.txt").unwrap();
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, 5);
    assert_eq!(e.content, Some(blake3::hash(b"alpha")));
    assert_eq!(a.get("src").unwrap().content, None);
    // One thread or many: the same snapshot.
    let single = ContextSnapshot::take(
        one.path(),
        &SnapshotOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(single.entries(), a.entries());
}

#[test]
fn dockerignore_rules_are_honoured_with_exceptions_under_excluded_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_tree(root);
    write(root, "build/out.o", "o");
    write(root, "build/keep/me.txt", "keep");
    write(root, "build/keep/not.log", "log");
    write(root, "node_modules/pkg/index.js", "js");
    write(root, "x.log", "log");
    write(
        root,
        ".dockerignore",
        "build\n!build/keep\n*.log\n**/*.log\nnode_modules\n",
    );
    let ignore = Dockerignore::read(&root.join(".dockerignore")).unwrap();
    let s = snap(root, None, Some(&ignore));
    let got = paths(&s);
    assert!(got.contains(&"build/keep/me.txt"), "{got:?}");
    // The excluded directory is listed because something below it is re-included.
    assert!(got.contains(&"build"), "{got:?}");
    for gone in [
        "build/out.o",
        "build/keep/not.log",
        "x.log",
        "node_modules",
        "node_modules/pkg/index.js",
    ] {
        assert!(!got.contains(&gone), "{gone} should be excluded: {got:?}");
    }
    // The same set the frontend's sequential walker computes independently.
    assert_eq!(got, ignore.walk(root).unwrap());

    // An ignored file changing does not move the digest; a kept one does.
    let before = s.digest();
    write(root, "build/out.o", "changed");
    assert_eq!(snap(root, None, Some(&ignore)).digest(), before);
    write(root, "build/keep/me.txt", "changed");
    assert_ne!(snap(root, None, Some(&ignore)).digest(), before);
}

#[test]
fn symlinks_are_recorded_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret/file", "outside");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "real/f", "inside");
    symlink(outside.path().join("secret"), root.join("out")).unwrap();
    symlink("real", root.join("rel")).unwrap();
    symlink("missing", root.join("dangling")).unwrap();
    let s = snap(root, None, None);
    assert_eq!(paths(&s), ["dangling", "out", "real", "real/f", "rel"]);
    let out = s.get("out").unwrap();
    assert_eq!(out.kind, EntryKind::Symlink);
    assert_eq!(
        out.link_target.as_deref(),
        Some(outside.path().join("secret").as_path())
    );
    assert_eq!(out.content, None);
    assert_eq!(s.stats().files_read, 1, "only real/f is read");

    // Retargeting a link moves the digest even though no file content changed.
    let before = s.digest();
    fs::remove_file(root.join("rel")).unwrap();
    symlink("real/f", root.join("rel")).unwrap();
    assert_ne!(snap(root, None, None).digest(), before);
}

#[test]
fn memo_makes_an_unchanged_rebuild_read_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..40 {
        let rel = format!("d{}/f{i}.txt", i % 4);
        write(root, &rel, &format!("content {i}"));
        age(root, &rel);
    }
    let first = snap(root, Some(state.path()), None);
    assert_eq!(first.stats().files_read, 40);
    assert_eq!(first.stats().memo_hits, 0);
    assert!(memo_path(state.path(), root).is_file());

    let memo_ino = fs::metadata(memo_path(state.path(), root)).unwrap().ino();
    let second = snap(root, Some(state.path()), None);
    assert_eq!(second.stats().files_read, 0, "{:?}", second.stats());
    // Nothing to add: the memo is not rewritten (a rewrite is a rename, a new inode).
    assert_eq!(
        fs::metadata(memo_path(state.path(), root)).unwrap().ino(),
        memo_ino
    );
    assert_eq!(second.stats().memo_hits, 40);
    assert_eq!(second.entries(), first.entries());

    // One file changes: exactly one read, and the new content is seen.
    write(root, "d1/f5.txt", "new content");
    let third = snap(root, Some(state.path()), None);
    assert_eq!(third.stats().files_read, 1);
    assert_eq!(
        third.get("d1/f5.txt").unwrap().content,
        Some(blake3::hash(b"new content"))
    );
    assert_ne!(third.digest(), first.digest());

    // Same size, mtime put back: ctime still betrays the change.
    write(root, "d2/f6.txt", "CONTENT 6");
    age(root, "d2/f6.txt");
    let fourth = snap(root, Some(state.path()), None);
    assert_eq!(
        fourth.get("d2/f6.txt").unwrap().content,
        Some(blake3::hash(b"CONTENT 6"))
    );
}

/// C4: `setcap` on a context file (an xattr; content and mtime unchanged) did not change the
/// digest, so COPY was taken from the cache and the image lacked the capability. A file's
/// extended attributes are now part of its digest; setting one moves its ctime, so the memo
/// reads the file again. (In the target dir: a tmpfs /tmp may take no `user.*` attributes.)
#[test]
fn an_extended_attribute_is_part_of_a_files_digest() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path();
    write(root, "tool", "#!/bin/sh\n");
    write(root, "other", "x");
    age(root, "tool");
    age(root, "other");
    let first = snap(root, Some(state.path()), None);
    assert_eq!(
        first.get("tool").unwrap().content,
        Some(blake3::hash(b"#!/bin/sh\n")),
        "a file without attributes keeps its content's digest"
    );
    let path =
        std::ffi::CString::new(root.join("tool").into_os_string().into_encoded_bytes()).unwrap();
    let value = b"ep";
    // SAFETY: a NUL-terminated path and name, and a live value buffer.
    let set = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.forge.test".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
    let second = snap(root, Some(state.path()), None);
    assert_eq!(second.stats().files_read, 1, "{:?}", second.stats());
    assert_ne!(
        second.get("tool").unwrap().content,
        first.get("tool").unwrap().content
    );
    assert_eq!(
        second.get("other").unwrap().content,
        first.get("other").unwrap().content
    );
    assert_ne!(second.digest(), first.digest());
    assert_ne!(
        second.hash_selection(&["tool"]).unwrap(),
        first.hash_selection(&["tool"]).unwrap()
    );
    assert_eq!(
        second.hash_selection(&["other"]).unwrap(),
        first.hash_selection(&["other"]).unwrap()
    );
    // From the memo the next time, with the attribute still counted.
    let third = snap(root, Some(state.path()), None);
    assert_eq!(third.stats().files_read, 0, "{:?}", third.stats());
    assert_eq!(third.digest(), second.digest());
}

/// C11: a COPY's key held the owners of the checkout's files, so a root runner's checkout and a
/// user's (or a rootless runner's) never shared a registry cache, although COPY makes the files
/// root's either way. The selection digest leaves owners out; the whole snapshot's keeps them.
#[test]
fn owners_of_context_files_do_not_enter_the_selection_digest() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: giving files to another owner needs root");
        return;
    }
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    for root in [one.path(), two.path()] {
        sample_tree(root);
    }
    for entry in ["a.txt", "src", "src/main.rs"] {
        std::os::unix::fs::lchown(two.path().join(entry), Some(1234), Some(5678)).unwrap();
    }
    let (a, b) = (snap(one.path(), None, None), snap(two.path(), None, None));
    assert_eq!(b.get("src/main.rs").unwrap().uid, 1234);
    assert_eq!(
        a.hash_selection(&["."]).unwrap(),
        b.hash_selection(&["."]).unwrap()
    );
    assert_ne!(a.digest(), b.digest());
}

#[test]
fn racily_fresh_files_are_not_trusted_from_the_memo() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "old.txt", "old");
    age(root, "old.txt");
    write(root, "fresh.txt", "fresh");
    let first = snap(root, Some(state.path()), None);
    assert_eq!(first.stats().files_read, 2);
    // fresh.txt was modified within a second of the memo: a same-tick rewrite would be invisible
    // to its key, so it is read again.
    let second = snap(root, Some(state.path()), None);
    assert_eq!(second.stats().files_read, 1);
    assert_eq!(second.stats().memo_hits, 1);
    age(root, "fresh.txt");
    snap(root, Some(state.path()), None);
    assert_eq!(snap(root, Some(state.path()), None).stats().files_read, 0);
}

#[test]
fn corrupt_memo_is_discarded_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..5 {
        write(root, &format!("f{i}"), &format!("{i}"));
        age(root, &format!("f{i}"));
    }
    let clean = snap(root, Some(state.path()), None);
    let memo = memo_path(state.path(), root);
    let good = fs::read(&memo).unwrap();
    for damaged in [
        b"garbage".to_vec(),
        good[..good.len() / 2].to_vec(),
        Vec::new(),
    ] {
        fs::write(&memo, &damaged).unwrap();
        let s = snap(root, Some(state.path()), None);
        assert!(s.stats().memo_warning.is_some());
        assert_eq!(s.stats().files_read, 5);
        assert_eq!(s.entries(), clean.entries());
        // The damaged memo was replaced by a good one.
        assert_eq!(snap(root, Some(state.path()), None).stats().files_read, 0);
    }
}

#[test]
fn selection_hash_covers_exactly_the_selected_entries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample_tree(root);
    write(root, "src/lib/other.txt", "o");
    let s = snap(root, None, None);
    let h = |s: &ContextSnapshot, p: &[&str]| s.hash_selection(p).unwrap();
    let sel = |s: &ContextSnapshot, p: &[&str]| -> Vec<String> {
        s.select(p)
            .unwrap()
            .into_iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect()
    };

    assert_eq!(sel(&s, &["*.txt"]), ["a.txt", "b.txt"]);
    assert_eq!(
        sel(&s, &["src"]),
        [
            "src",
            "src/lib",
            "src/lib/mod.rs",
            "src/lib/other.txt",
            "src/main.rs"
        ]
    );
    assert_eq!(sel(&s, &["./src/lib/"]), sel(&s, &["src/lib"]));
    assert_eq!(sel(&s, &["src/*/*.rs"]), ["src/lib/mod.rs"]);
    assert_eq!(sel(&s, &["[ab].txt", "a.txt"]), ["a.txt", "b.txt"]);
    assert_eq!(sel(&s, &["?.txt"]), ["a.txt", "b.txt"]);
    assert_eq!(sel(&s, &["/../docs"]), ["docs", "docs/x.md"]);
    assert_eq!(sel(&s, &["."]).len(), s.entries().len());
    assert!(sel(&s, &["*.nothing"]).is_empty());
    assert!(matches!(
        s.select(&["missing.txt"]),
        Err(ContextError::SourceNotFound { .. })
    ));
    assert!(matches!(
        s.select(&["[a-"]),
        Err(ContextError::BadPattern(_))
    ));

    // Order and duplicates of sources do not matter; what is selected does.
    assert_eq!(
        h(&s, &["a.txt", "src"]),
        h(&s, &["src", "a.txt", "src/main.rs"])
    );
    assert_ne!(h(&s, &["a.txt"]), h(&s, &["b.txt"]));
    let base_src = h(&s, &["src"]);
    let base_a = h(&s, &["a.txt"]);

    // Touching mtime changes nothing.
    age(root, "src/main.rs");
    let t = snap(root, None, None);
    assert_eq!(h(&t, &["src"]), base_src);
    assert_eq!(t.digest(), s.digest());

    // A change outside the selection leaves it alone; one inside moves it.
    write(root, "docs/x.md", "changed");
    let t = snap(root, None, None);
    assert_eq!(h(&t, &["src"]), base_src);
    assert_ne!(t.digest(), s.digest());
    write(root, "src/lib/mod.rs", "// changed");
    assert_ne!(h(&snap(root, None, None), &["src"]), base_src);

    // Mode change.
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    let t = snap(root, None, None);
    assert_eq!(t.get("a.txt").unwrap().mode, 0o755);
    assert_ne!(h(&t, &["a.txt"]), base_a);
    assert_ne!(h(&t, &["*.txt"]), h(&s, &["*.txt"]));
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o4644)).unwrap();
    assert_eq!(snap(root, None, None).get("a.txt").unwrap().mode, 0o4644);

    // Rename with the same content.
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    let before = h(&snap(root, None, None), &["*.txt"]);
    fs::rename(root.join("a.txt"), root.join("c.txt")).unwrap();
    assert_ne!(h(&snap(root, None, None), &["*.txt"]), before);
}

#[test]
fn selected_symlinks_are_followed_inside_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "real/f", "one");
    write(root, "real/sub/g", "two");
    symlink("real", root.join("linkdir")).unwrap();
    symlink("real/f", root.join("linkfile")).unwrap();
    symlink("../../real/f", root.join("real/sub/up")).unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();
    let s = snap(root, None, None);
    let sel = |p: &[&str]| -> Vec<String> {
        s.select(p)
            .unwrap()
            .into_iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(sel(&["linkfile"]), ["real/f"]);
    assert_eq!(sel(&["linkdir/sub/g"]), ["real/sub/g"]);
    // `..` past the root stays at the root, as BuildKit scopes sources.
    assert_eq!(sel(&["real/sub/up"]), ["real/f"]);
    assert_eq!(sel(&["link*"]).len(), 5, "{:?}", sel(&["link*"]));
    assert_eq!(sel(&["dangling"]), ["dangling"]);
    // Inside a selected directory a link stays a link.
    assert!(sel(&["real"]).contains(&"real/sub/up".to_string()));
}

/// A tree wide and deep enough that walkers hand directories to each other.
fn wide_tree(root: &Path) {
    for a in 0..12 {
        for b in 0..6 {
            for c in 0..3 {
                write(
                    root,
                    &format!("d{a}/e{b}/f{c}/g.txt"),
                    &format!("{a}{b}{c}"),
                );
            }
            write(root, &format!("d{a}/e{b}/h.txt"), "h");
        }
    }
}

fn take_with(root: &Path, threads: usize) -> Result<ContextSnapshot, ContextError> {
    ContextSnapshot::take(
        root,
        &SnapshotOptions {
            threads,
            ..Default::default()
        },
    )
}

#[test]
fn any_number_of_walkers_lists_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    wide_tree(dir.path());
    let one = take_with(dir.path(), 1).unwrap();
    // 12 + 72 + 216 directories and 216 + 72 files.
    assert_eq!(one.entries().len(), 12 + 72 + 216 + 216 + 72);
    for threads in [2, 3, 8] {
        for _ in 0..5 {
            let many = take_with(dir.path(), threads).unwrap();
            assert_eq!(many.entries(), one.entries(), "{threads} walkers");
            assert_eq!(many.digest(), one.digest());
        }
    }
}

/// A name that is not UTF-8 anywhere in the context failed the whole snapshot (and so every
/// build), even when nothing used it. Linux names are bytes: such an entry is kept as it is,
/// hashed, remembered by the memo, selected by the directory holding it, and matched by the
/// ignore rules in its lossy form.
#[test]
fn regression_a_name_that_is_not_utf8_is_kept_byte_exactly() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let root = dir.path();
    wide_tree(root);
    let bad_dir = root.join("d7/e3/f1").join(OsStr::from_bytes(b"dir\xfe"));
    fs::create_dir(&bad_dir).unwrap();
    fs::write(bad_dir.join(OsStr::from_bytes(b"bad\xff")), "x").unwrap();
    let bad = OsStr::from_bytes(b"d7/e3/f1/dir\xfe/bad\xff");
    let one = take_with(root, 1).unwrap();
    let e = one.get(bad).expect("the entry is kept");
    assert_eq!(e.content, Some(blake3::hash(b"x")));
    for threads in [2, 8] {
        for _ in 0..5 {
            let many = take_with(root, threads).unwrap();
            assert_eq!(many.entries(), one.entries(), "{threads} walkers");
        }
    }
    let bytes: Vec<&[u8]> = one.entries().iter().map(|e| e.path.as_bytes()).collect();
    assert!(
        bytes.is_sorted(),
        "entries in the byte order of their paths"
    );

    // The directory holding it selects it, and its content keys the selection.
    let key = |s: &ContextSnapshot| s.hash_selection(&["d7/e3"]).unwrap();
    let before = key(&one);
    assert!(one.select(&["."]).unwrap().iter().any(|e| e.path == bad));
    fs::write(root.join(bad), "y").unwrap();
    assert_ne!(key(&snap(root, None, None)), before);

    // The memo remembers it like any other file (the only one old enough to be trusted).
    let f = fs::File::options()
        .write(true)
        .open(root.join(bad))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    snap(root, Some(state.path()), None);
    let again = snap(root, Some(state.path()), None);
    assert_eq!(again.stats().memo_hits, 1, "{:?}", again.stats());
    assert!(again.stats().memo_warning.is_none());
    assert!(again.get(bad).is_some());

    // A rule reaches it through its lossy form.
    let ignore = Dockerignore::parse("**/bad*").unwrap();
    let s = snap(root, None, Some(&ignore));
    assert!(s.get(bad).is_none());
    assert!(s.get(OsStr::from_bytes(b"d7/e3/f1/dir\xfe")).is_some());
}

/// The entries come in the byte order of their whole paths, which is not a directory-by-directory
/// order of names: `a-b` and `a.c` sort between the directory `a` and `a/x` ('-' and '.' come
/// before '/'), `a0` after everything below `a`, and a name's UTF-8 bytes decide where it goes.
#[test]
fn entries_come_in_the_byte_order_of_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for rel in [
        "a/x-y/z",
        "a/x.txt",
        "a/x/deep/er",
        "a-b",
        "a.c",
        "a0",
        "a-d/inner",
        "a-d.e",
        "b/c",
        "é/f",
        "z",
        " space",
        "A/B",
    ] {
        write(root, rel, rel);
    }
    for threads in [1, 2, 3] {
        let s = take_with(root, threads).unwrap();
        let got = paths(&s);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(got, sorted, "{threads} walkers");
        assert_eq!(got.len(), 13 + 8, "every file and directory: {got:?}");
        let at = |p: &str| got.iter().position(|g| *g == p).unwrap();
        assert!(at("a") < at("a-b") && at("a-b") < at("a-d/inner"));
        assert!(at("a-d.e") < at("a.c") && at("a.c") < at("a/x"));
        assert!(at("a/x/deep/er") < at("a0"));
    }
}

/// A COPY source reached through a linked directory is keyed by the file it reaches: changing
/// `real/r` must move the key of `COPY dirlink/r`, and `.dockerignore` on the link or on the
/// target makes the source missing, as BuildKit's transferred context does.
#[test]
fn a_source_through_a_linked_directory_is_keyed_by_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "real/r", "one");
    write(root, "other", "x");
    symlink("real", root.join("dirlink")).unwrap();
    symlink("/real", root.join("absdirlink")).unwrap();
    let key = |src: &str| snap(root, None, None).hash_selection(&[src]).unwrap();
    let before = key("dirlink/r");
    assert_eq!(key("absdirlink/r"), before);
    assert_eq!(key("real/../dirlink/./r"), before);
    assert_eq!(key("real/r"), before, "the same entry, reached directly");
    write(root, "other", "y");
    assert_eq!(key("dirlink/r"), before, "an unrelated file moved the key");
    write(root, "real/r", "two");
    assert_ne!(key("dirlink/r"), before);
    assert_ne!(key("absdirlink/r"), before);

    for ignored in ["dirlink", "real/r", "real"] {
        let ignore = Dockerignore::parse(ignored).unwrap();
        let s = snap(root, None, Some(&ignore));
        assert!(
            matches!(
                s.hash_selection(&["dirlink/r"]),
                Err(ContextError::SourceNotFound { .. })
            ),
            "{ignored} ignored"
        );
    }
    let ignore = Dockerignore::parse("real\n!real/r").unwrap();
    assert!(
        snap(root, None, Some(&ignore))
            .hash_selection(&["dirlink/r"])
            .is_ok()
    );
}

/// A subtree is whole when the ignore rules left nothing out at or below it: an ignored file
/// elsewhere, or a sibling whose name extends the directory's (`src-old` beside `src`), does not
/// count; an ignored file or directory below it does, however deep, and so does an excluded
/// directory the walk descended for a `!` rule and found nothing to keep in.
#[test]
fn a_subtree_is_whole_unless_something_at_or_below_it_was_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "src/main.c", "m");
    write(root, "src/lib/a.c", "a");
    write(root, "src-old/x.c", "x");
    write(root, "docs/guide.md", "g");
    write(root, "docs/secret.key", "k");
    write(root, "build/out.o", "o");
    write(root, "build/cache/c.o", "c");
    write(root, "gen/keep/k.txt", "k");
    write(root, "gen/tmp/t.txt", "t");
    write(root, "top.log", "l");
    write(root, "logs/a.txt", "a");
    let ignore =
        Dockerignore::parse("*.log\nsrc-old\ndocs/*.key\nbuild\ngen/*\n!gen/keep\nlogs\n").unwrap();
    let s = snap(root, None, Some(&ignore));
    for whole in ["src", "src/lib", "src/main.c", "gen/keep", "gen/keep/k.txt"] {
        assert!(s.whole(whole), "{whole} is whole");
    }
    for holed in [
        "",
        "docs",
        "docs/secret.key",
        "build",
        "build/cache",
        "gen",
        "logs",
        "top.log",
    ] {
        assert!(!s.whole(holed), "{holed:?} had something left out");
    }
    // A directory not descended is one record.
    assert_eq!(
        s.left_out(),
        [
            "build",
            "docs/secret.key",
            "gen/tmp",
            "logs",
            "src-old",
            "top.log"
        ]
    );
    // One descended for a `!` rule that kept nothing below it is left out too.
    let descended = Dockerignore::parse("logs\n!logs/**/keep\n").unwrap();
    let d = snap(root, None, Some(&descended));
    assert!(d.get("logs").is_none() && !d.whole("logs") && !d.whole("logs/a.txt"));
    assert!(d.whole("src") && d.whole("build"));
    // Without ignore rules everything is whole, the root included.
    let all = snap(root, None, None);
    assert!(all.whole("") && all.whole("docs") && all.whole("build/cache"));

    // What a bind source names: resolved through links, with its entries.
    symlink("src", root.join("srclink")).unwrap();
    symlink("/docs", root.join("docslink")).unwrap();
    let s = snap(root, None, Some(&ignore));
    let sub = s.subtree("srclink/").unwrap();
    assert_eq!(sub.path, "src");
    assert!(sub.whole);
    let names: Vec<&str> = sub.entries().map(|e| e.path.to_str().unwrap()).collect();
    assert_eq!(names, ["src", "src/lib", "src/lib/a.c", "src/main.c"]);
    assert!(!s.subtree("/docslink").unwrap().whole);
    let file = s.subtree("src/lib/a.c").unwrap();
    assert!(file.whole && file.below.is_empty());
    let root_tree = s.subtree(".").unwrap();
    assert!(root_tree.top.is_none() && !root_tree.whole);
    assert_eq!(root_tree.below.len(), s.entries().len());
    // Left out, absent, or through a file: nothing.
    for missing in ["src-old", "docs/secret.key", "nope", "src/main.c/x"] {
        assert!(s.subtree(missing).is_none(), "{missing}");
    }
}
