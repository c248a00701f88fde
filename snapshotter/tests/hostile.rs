//! The hostile corpus (testdata/hostile/) is refused entry by entry, and nothing lands outside the
//! unpack root: a sentinel directory beside the root and an absolute directory stay untouched.

mod common;

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
        (Expect::Applied, Ok(summary)) => check_applied(case.name, &root, &summary.warnings),
        (expect, got) => panic!("case {}: expected {expect:?}, got {got:?}", case.name),
    }
}

fn check_applied(name: &str, root: &Path, warnings: &[UnpackWarning]) {
    match name {
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
            match std::fs::symlink_metadata(root.join("dev/null")) {
                Ok(md) => assert!(md.file_type().is_char_device()),
                Err(_) => assert!(
                    matches!(warnings, [UnpackWarning::DeviceSkipped { entry, .. }] if entry == "dev/null"),
                    "a device not made must be reported: {warnings:?}"
                ),
            }
        }
        other => panic!("no check for applied case {other}"),
    }
}

#[test]
fn hostile_corpus_is_refused_in_apply_mode() {
    for case in cases() {
        apply_case(&case, WhiteoutMode::Apply);
    }
}

#[test]
fn hostile_corpus_is_refused_in_overlay_mode() {
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
