//! `forge pull`, `images`, `rmi` and `prune` end to end against the loopback test registry
//! ($FORGE_TEST_BUSYBOX, pushed by testdata/make-base-images.sh).

use std::process::{Command, Output};

fn forge(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run forge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The busybox test image, or `None` after a SKIP line; a panic under FORGE_E2E=require.
fn busybox() -> Option<String> {
    match std::env::var("FORGE_TEST_BUSYBOX") {
        Ok(image) => Some(image),
        Err(_) if std::env::var("FORGE_E2E").as_deref() == Ok("require") => {
            panic!("FORGE_TEST_BUSYBOX is not set (FORGE_E2E=require)")
        }
        Err(_) => {
            eprintln!(
                "SKIP: FORGE_TEST_BUSYBOX is not set; run .ci/setup.d/20-registry.sh and 30-base-images.sh"
            );
            None
        }
    }
}

#[test]
fn pull_caches_lists_removes_and_prunes() {
    let Some(image) = busybox() else { return };
    let root = tempfile::tempdir().unwrap();

    let first = forge(root.path(), &["pull", &image]);
    assert!(
        first.status.success(),
        "pull failed: {}",
        text(&first.stderr)
    );
    let digest = text(&first.stdout)
        .split_whitespace()
        .nth(1)
        .expect("reference and digest on stdout")
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(
        text(&first.stderr).contains("done "),
        "{}",
        text(&first.stderr)
    );

    // A second pull downloads nothing: every blob reports cached.
    let second = forge(root.path(), &["pull", &image]);
    assert!(second.status.success());
    let log = text(&second.stderr);
    assert!(log.contains("cached ") && !log.contains("done "), "{log}");

    let quiet = forge(root.path(), &["pull", "-q", &image]);
    assert_eq!(text(&quiet.stdout).trim(), digest);

    let images = forge(root.path(), &["images"]);
    assert!(
        text(&images.stdout).contains(&digest),
        "{}",
        text(&images.stdout)
    );

    // While the image is recorded, prune keeps its blobs.
    let kept = forge(root.path(), &["prune"]);
    assert!(
        text(&kept.stdout).starts_with("removed 0 blobs"),
        "{}",
        text(&kept.stdout)
    );

    let rmi = forge(root.path(), &["rmi", &image]);
    assert!(rmi.status.success(), "{}", text(&rmi.stderr));
    let pruned = forge(root.path(), &["prune"]);
    let out = text(&pruned.stdout);
    assert!(
        !out.starts_with("removed 0 blobs") && out.contains("kept 0 blobs"),
        "{out}"
    );

    let again = forge(root.path(), &["rmi", &image]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("no image"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn pull_of_a_missing_tag_names_registry_and_reference() {
    let Some(image) = busybox() else { return };
    let registry = image.split('/').next().unwrap();
    let missing = format!("{registry}/forge-test/does-not-exist:1");
    let root = tempfile::tempdir().unwrap();
    let out = forge(root.path(), &["pull", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(registry) && err.contains("does-not-exist"),
        "{err}"
    );
}

#[test]
fn invalid_reference_is_a_usage_error() {
    let root = tempfile::tempdir().unwrap();
    let out = forge(root.path(), &["pull", "Bad Name!"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid image reference"),
        "{}",
        text(&out.stderr)
    );
}
