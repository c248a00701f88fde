//! The hostile corpus (testdata/hostile/) is refused entry by entry or, where symlinks resolved in
//! root contain it, lands at the in-root place; nothing lands outside the unpack root: a sentinel
//! directory beside the root and an absolute directory stay untouched.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::hostile::{ABS_TARGET, Case, Expect, cases};
use forge_snapshotter::unpack::{
    OverlayXattr, UnpackError, UnpackOptions, UnpackWarning, WhiteoutMode, unpack_layer,
};

fn corpus_dir() -> PathBuf {
    common::workspace_root().join("testdata/hostile")
}

fn layer_file(case: &Case, i: usize) -> PathBuf {
    corpus_dir().join(format!("{}.{}.tar", case.name, i + 1))
}

#[test]
fn hostile_corpus_is_what_the_generator_makes() {
    let mut expected_files = Vec::new();
    for case in cases() {
        for (i, layer) in case.layers.iter().enumerate() {
            let path = layer_file(&case, i);
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run `cargo run --example make_hostile`)",
                    path.display()
                )
            });
            assert!(
                committed == *layer,
                "{} differs from the generator's output",
                path.display()
            );
            expected_files.push(path.file_name().unwrap().to_owned());
        }
    }
    let mut present: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tar"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files, "stray or missing corpus files");
}

/// Everything outside the root, as it must stay.
fn outside_state(outside: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in [outside, Path::new(ABS_TARGET)] {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push((e.path().display().to_string(), content));
        }
    }
    out.sort();
    out
}

fn apply_case(case: &Case, mode: WhiteoutMode) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(ABS_TARGET).unwrap();
    std::fs::write(outside.join("sentinel"), "untouched").unwrap();
    let before = outside_state(&outside);

    let options = UnpackOptions {
        whiteouts: mode,
        ..UnpackOptions::default()
    };
    let mut result = Ok(Default::default());
    for i in 0..case.layers.len() {
        let f = std::fs::File::open(layer_file(case, i)).unwrap();
        result = unpack_layer(f, "application/vnd.oci.image.layer.v1.tar", &root, &options);
        if result.is_err() {
            break;
        }
    }
    let after = outside_state(&outside);
    assert_eq!(
        before, after,
        "case {}: something was written outside the root",
        case.name
    );

    match (&case.expect, result) {
        (Expect::Refused { entry, reason }, Err(e)) => {
            let Some((got_entry, got_reason)) = e.refusal() else {
                panic!("case {}: expected refusal {reason}, got {e}", case.name);
            };
            assert_eq!(
                (got_entry, got_reason),
                (*entry, reason),
                "case {}",
                case.name
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{entry:?}")),
                "case {}: message {msg:?} does not name the entry",
                case.name
            );
        }
        (Expect::Failed { entry }, Err(UnpackError::Io { entry: got, .. })) => {
            assert_eq!(got, *entry, "case {}", case.name)
        }
        (Expect::Applied, Ok(summary)) => {
            check_applied(case.name, &root, &summary.warnings, mode);
            let sentinel = std::fs::symlink_metadata(outside.join("sentinel")).unwrap();
            assert_eq!(
                sentinel.nlink(),
                1,
                "case {}: the sentinel outside gained a hard link",
                case.name
            );
        }
        (expect, got) => panic!("case {}: expected {expect:?}, got {got:?}", case.name),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_symlink(path: &Path, target: &str) {
    let got = std::fs::read_link(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got, Path::new(target), "{}", path.display());
}

fn check_applied(name: &str, root: &Path, warnings: &[UnpackWarning], mode: WhiteoutMode) {
    let inode = |p: &str| {
        let md = std::fs::symlink_metadata(root.join(p)).unwrap();
        (md.dev(), md.ino())
    };
    match name {
        // Symlinks in the parent path resolve in root: `../outside` is `<root>/outside`.
        "symlink-relative-escape" | "symlink-from-lower-layer" => {
            assert_symlink(&root.join("link"), "../outside");
            assert_eq!(read(&root.join("outside/evil")), "x");
        }
        "symlink-absolute-escape" => {
            assert_symlink(&root.join("abs"), ABS_TARGET);
            let in_root = root.join(ABS_TARGET.trim_start_matches('/'));
            assert_eq!(read(&in_root.join("evil")), "x");
        }
        "symlink-chain-escape" => {
            assert_symlink(&root.join("b"), "c/../../outside");
            assert_eq!(read(&root.join("outside/evil")), "x");
        }
        "symlink-dir-entry-escape" => {
            assert!(
                std::fs::symlink_metadata(root.join("outside/sub"))
                    .unwrap()
                    .is_dir()
            );
        }
        "dir-replaced-by-symlink" => {
            assert_symlink(&root.join("d"), "../outside");
            assert_eq!(read(&root.join("outside/evil")), "x");
        }
        "whiteout-through-symlink" => {
            let decoy = std::fs::symlink_metadata(root.join("outside/sentinel"));
            match mode {
                WhiteoutMode::Apply => assert!(decoy.is_err(), "the in-root decoy is whited out"),
                _ => {
                    use std::os::unix::fs::FileTypeExt;
                    let md = decoy.unwrap();
                    assert!(md.file_type().is_char_device() && md.rdev() == 0, "{md:?}");
                }
            }
        }
        "opaque-through-symlink" => {
            let decoy = root.join("outside/sentinel");
            match mode {
                WhiteoutMode::Apply => assert!(
                    std::fs::symlink_metadata(&decoy).is_err(),
                    "the opaque marker clears the in-root directory"
                ),
                WhiteoutMode::Overlay(x) => {
                    assert_eq!(read(&decoy), "decoy");
                    let xattrs = common::xattrs(&root.join("outside"));
                    let name = x.opaque_name().to_vec();
                    assert!(
                        xattrs.contains(&(name, b"y".to_vec())),
                        "opaque xattr on <root>/outside: {xattrs:?}"
                    );
                }
                WhiteoutMode::Keep => unreachable!("the corpus runs in apply and overlay mode"),
            }
        }
        "hardlink-through-symlink" => {
            assert_eq!(inode("evil"), inode("outside/sentinel"));
            assert_eq!(read(&root.join("evil")), "decoy");
        }
        "hardlink-to-escaping-symlink" => {
            // A second name for the symlink itself, whose text is only data.
            assert_eq!(inode("h"), inode("s"));
            assert_symlink(&root.join("h"), "../outside/sentinel");
        }
        "duplicate-symlink-then-file" => {
            let md = std::fs::symlink_metadata(root.join("f")).unwrap();
            assert!(md.is_file(), "the later file entry replaces the symlink");
            assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "replaced");
        }
        "duplicate-files" => {
            assert_eq!(std::fs::read_to_string(root.join("dup")).unwrap(), "two");
        }
        "device-node" => {
            use std::os::unix::fs::FileTypeExt;
            if common::in_userns() {
                // mknod of a real device is refused in a user namespace: skipped and reported.
                assert!(std::fs::symlink_metadata(root.join("dev/null")).is_err());
                assert!(
                    matches!(warnings, [UnpackWarning::DeviceSkipped { entry, .. }] if entry == "dev/null"),
                    "a device not made must be reported: {warnings:?}"
                );
            } else if common::is_root() {
                let md = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
                assert!(md.file_type().is_char_device());
                assert!(warnings.is_empty(), "{warnings:?}");
            }
        }
        other => panic!("no check for applied case {other}"),
    }
}

#[test]
fn hostile_corpus_is_refused_or_contained_in_apply_mode() {
    for case in cases() {
        apply_case(&case, WhiteoutMode::Apply);
    }
}

#[test]
fn hostile_corpus_is_refused_or_contained_in_overlay_mode() {
    if !common::prerequisite(
        common::is_root(),
        "overlay whiteouts and trusted xattrs need root",
    ) {
        return;
    }
    for case in cases() {
        apply_case(&case, WhiteoutMode::Overlay(OverlayXattr::detect()));
    }
}

/// The corpus again inside `unshare -Ur`: same outcomes, and the device node skipped with a warning.
#[test]
fn hostile_corpus_is_refused_or_contained_in_a_user_namespace() {
    if std::env::var_os("FORGE_IN_USERNS").is_some() {
        return;
    }
    if !common::prerequisite(common::have_tool("unshare"), "unshare(1) missing") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["-Ur", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "hostile_corpus_is_refused_or_contained_in_apply_mode",
            "--nocapture",
        ])
        .env("FORGE_IN_USERNS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("unshare failed") {
        common::prerequisite(false, format!("user namespaces unavailable: {stderr}"));
        return;
    }
    assert!(
        out.status.success(),
        "inner run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "inner run did not run the test:\n{stdout}"
    );
}
