//! What an unpack may skip, and where it must not. An unpack keeps the directory the last entry
//! went into for the next one, makes an entry before looking at its name (looking only when the
//! name is taken), and sets no owner a new entry has already. These tests hold the cases where
//! each shortcut would be wrong: a directory removed between two entries of it, something in the
//! way at an entry's name, a setgid directory whose group new entries take, a directory of
//! another owner.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use forge_snapshotter::unpack::{UnpackOptions, WhiteoutMode, apply_tar};

/// One tar entry: its path, type, mode, owner, and content or link target.
struct E<'a> {
    path: &'a str,
    kind: tar::EntryType,
    mode: u32,
    owner: (u64, u64),
    data: &'a str,
}

fn dir(path: &str, mode: u32, owner: (u64, u64)) -> E<'_> {
    E {
        path,
        kind: tar::EntryType::Directory,
        mode,
        owner,
        data: "",
    }
}

fn file<'a>(path: &'a str, data: &'a str, owner: (u64, u64)) -> E<'a> {
    E {
        path,
        kind: tar::EntryType::Regular,
        mode: 0o644,
        owner,
        data,
    }
}

fn symlink<'a>(path: &'a str, target: &'a str, owner: (u64, u64)) -> E<'a> {
    E {
        path,
        kind: tar::EntryType::Symlink,
        mode: 0o777,
        owner,
        data: target,
    }
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_600_000_000);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mode(e.mode);
        h.set_entry_type(e.kind);
        match e.kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, e.path, e.data).unwrap();
            }
            _ => {
                h.set_size(e.data.len() as u64);
                b.append_data(&mut h, e.path, e.data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn apply(root: &Path, entries: &[E<'_>], whiteouts: WhiteoutMode) {
    let options = UnpackOptions {
        whiteouts,
        ..UnpackOptions::default()
    };
    apply_tar(&layer(entries)[..], root, &options).unwrap();
}

fn owner(path: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap();
    (md.uid(), md.gid())
}

#[test]
fn a_directory_whited_out_between_two_entries_of_it_is_made_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            dir("a", 0o755, (0, 0)),
            file("a/x", "x", (0, 0)),
            E {
                path: ".wh.a",
                kind: tar::EntryType::Regular,
                mode: 0o644,
                owner: (0, 0),
                data: "",
            },
            file("a/y", "y", (0, 0)),
        ],
        WhiteoutMode::Apply,
    );
    assert!(!root.join("a/x").exists(), "the whiteout removed a/x");
    assert_eq!(std::fs::read_to_string(root.join("a/y")).unwrap(), "y");
}

#[test]
fn a_directory_replaced_by_a_symlink_sends_later_entries_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            dir("d", 0o755, (0, 0)),
            dir("d/sub", 0o755, (0, 0)),
            file("d/sub/one", "1", (0, 0)),
            dir("elsewhere", 0o755, (0, 0)),
            // Replaces the directory d/sub (and what is in it) by a symlink, from within d.
            symlink("d/sub", "/elsewhere", (0, 0)),
            file("d/two", "2", (0, 0)),
            file("d/sub/three", "3", (0, 0)),
        ],
        WhiteoutMode::Apply,
    );
    let sub = std::fs::symlink_metadata(root.join("d/sub")).unwrap();
    assert!(sub.file_type().is_symlink());
    assert!(!root.join("elsewhere/one").exists());
    assert_eq!(std::fs::read_to_string(root.join("d/two")).unwrap(), "2");
    assert_eq!(
        std::fs::read_to_string(root.join("elsewhere/three")).unwrap(),
        "3"
    );
}

#[test]
fn whatever_stands_at_an_entrys_name_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target");
    std::fs::write(&target, "outside").unwrap();
    // A lower layer's leftovers: a symlink out of the root, a directory with content, a file.
    std::fs::create_dir(root.join("d")).unwrap();
    std::os::unix::fs::symlink(&target, root.join("d/planted")).unwrap();
    std::fs::create_dir_all(root.join("d/was-dir/deep")).unwrap();
    std::fs::write(root.join("d/was-file"), "old").unwrap();
    std::fs::create_dir(root.join("d/stays-dir")).unwrap();
    std::fs::write(root.join("d/stays-dir/kept"), "kept").unwrap();
    apply(
        root,
        &[
            file("d/planted", "new", (0, 0)),
            file("d/was-dir", "file now", (0, 0)),
            dir("d/was-file", 0o750, (0, 0)),
            dir("d/stays-dir", 0o700, (0, 0)),
        ],
        WhiteoutMode::Apply,
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "outside");
    let planted = std::fs::symlink_metadata(root.join("d/planted")).unwrap();
    assert!(planted.file_type().is_file());
    assert_eq!(
        std::fs::read_to_string(root.join("d/planted")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("d/was-dir")).unwrap(),
        "file now"
    );
    let was_file = std::fs::metadata(root.join("d/was-file")).unwrap();
    assert!(was_file.is_dir());
    assert_eq!(was_file.permissions().mode() & 0o7777, 0o750);
    let stays = std::fs::metadata(root.join("d/stays-dir")).unwrap();
    assert_eq!(stays.permissions().mode() & 0o7777, 0o700);
    assert_eq!(
        std::fs::read_to_string(root.join("d/stays-dir/kept")).unwrap(),
        "kept"
    );
}

#[test]
fn new_entries_get_the_owners_their_entries_name() {
    if !common::prerequisite(common::is_root(), "needs root (chown to other ids)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    apply(
        root,
        &[
            // A setgid directory: what is made in it takes its group unless set.
            dir("g", 0o2775, (0, 1234)),
            file("g/root-group", "", (0, 0)),
            file("g/its-group", "", (0, 1234)),
            symlink("g/link", "root-group", (0, 0)),
            dir("g/sub", 0o755, (0, 0)),
            // A directory of another owner, and entries of root's and of that owner.
            dir("home", 0o755, (1000, 1000)),
            file("home/roots", "", (0, 0)),
            symlink("home/link", "roots", (0, 0)),
            file("home/users", "", (1000, 1000)),
            // Plain root-owned entries, and one of another owner beside them.
            dir("plain", 0o755, (0, 0)),
            file("plain/root", "", (0, 0)),
            file("plain/other", "", (1000, 2000)),
            symlink("plain/link", "root", (1000, 2000)),
        ],
        WhiteoutMode::Apply,
    );
    assert_eq!(owner(&root.join("g")), (0, 1234));
    assert_eq!(owner(&root.join("g/root-group")), (0, 0));
    assert_eq!(owner(&root.join("g/its-group")), (0, 1234));
    assert_eq!(owner(&root.join("g/link")), (0, 0));
    assert_eq!(owner(&root.join("g/sub")), (0, 0));
    assert_eq!(owner(&root.join("home")), (1000, 1000));
    assert_eq!(owner(&root.join("home/roots")), (0, 0));
    assert_eq!(owner(&root.join("home/link")), (0, 0));
    assert_eq!(owner(&root.join("home/users")), (1000, 1000));
    assert_eq!(owner(&root.join("plain/root")), (0, 0));
    assert_eq!(owner(&root.join("plain/other")), (1000, 2000));
    assert_eq!(owner(&root.join("plain/link")), (1000, 2000));
}
