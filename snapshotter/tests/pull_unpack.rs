//! End to end: forge pulls each base image from the loopback registry into its store and unpacks the
//! layers from there (diff_ids checked); `skopeo copy` + `umoci unpack` of the same image is the
//! independent judge, and the two trees must match file by file (content, mode, owner, link
//! targets, hard links, xattrs, mtimes).

mod common;

use std::path::Path;
use std::process::Command;

use common::{CompareOptions, assert_trees_equal};
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{AuthResolver, RegistryClient, RegistryConfig};
use forge_snapshotter::store::Store;
use forge_snapshotter::unpack::{UnpackOptions, WhiteoutMode, unpack_layer_verified};
use forge_testsupport::run;

/// umoci unpack of `image` via an OCI layout made by skopeo; returns the rootfs.
fn judge(image: &str, work: &Path) -> std::path::PathBuf {
    let layout = work.join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:img", layout.display())));
    let bundle = work.join("judge");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:img", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

async fn pull_and_unpack_like_umoci(var: &str) {
    let Some(image) = forge_testsupport::image_from_env(var) else {
        return;
    };
    // umoci keeps owners only as root; rootless it would map them, and the trees would differ.
    if !common::prerequisite(common::is_root(), "the umoci comparison runs as root")
        || !common::prerequisite(common::have_tool("umoci"), "umoci not installed")
        || !common::prerequisite(common::have_tool("skopeo"), "skopeo not installed")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reference = Reference::parse(&image).unwrap();
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        ..RegistryConfig::default()
    });
    let record = client.pull(&store, &reference, &|_| {}).await.unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&record.config.digest).unwrap()).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();

    let rootfs = tmp.path().join("forge");
    std::fs::create_dir(&rootfs).unwrap();
    let options = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    for (layer, diff_id) in record.layers.iter().zip(diff_ids) {
        let blob = store.open_blob(&layer.digest).unwrap();
        let diff_id = diff_id.as_str().unwrap().parse().unwrap();
        unpack_layer_verified(blob, &layer.media_type, &rootfs, &options, &diff_id)
            .unwrap_or_else(|e| panic!("unpack {} of {image}: {e}", layer.digest));
    }

    let judged = judge(&image, tmp.path());
    let compare = CompareOptions {
        mtimes: true,
        ignore_xattr_prefixes: vec![b"trusted.overlay.".to_vec(), b"user.overlay.".to_vec()],
        ..CompareOptions::default()
    };
    assert_trees_equal(&judged, &rootfs, &compare);
    // The comparison saw a real tree, not two empty ones.
    let files = common::scan_tree(&rootfs);
    assert!(files.len() > 50, "{} paths in {image}", files.len());
}

#[tokio::test]
async fn busybox_pulled_and_unpacked_matches_umoci() {
    pull_and_unpack_like_umoci("FORGE_TEST_BUSYBOX").await;
}

#[tokio::test]
async fn debian_pulled_and_unpacked_matches_umoci() {
    pull_and_unpack_like_umoci("FORGE_TEST_DEBIAN").await;
}
