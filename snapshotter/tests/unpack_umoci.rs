//! Independent judges: images made by `umoci repack` and images copied by `skopeo` from the test
//! registry are unpacked by forge (onto a plain tree, and as stacked overlay snapshots) and by
//! `umoci unpack`, and the trees must match file by file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{CompareOptions, apply_change_set, assert_trees_equal, make_base_tree};
use forge_snapshotter::snapshot::{
    AnySnapshotter, BackendKind, Snapshotter, unpack_layer_snapshot,
};
use forge_snapshotter::unpack::{UnpackOptions, WhiteoutMode, unpack_layer};
use forge_testsupport::run;
use oci_spec::image::Digest;

struct Layer {
    blob: PathBuf,
    media_type: String,
    diff_id: Digest,
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The layers of the image `tag` in an OCI layout, bottom first.
fn layout_layers(layout: &Path, tag: &str) -> Vec<Layer> {
    let index = read_json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    let manifest = read_json(&blob_path(layout, desc["digest"].as_str().unwrap()));
    let config = read_json(&blob_path(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    layers
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| Layer {
            blob: blob_path(layout, l["digest"].as_str().unwrap()),
            media_type: l["mediaType"].as_str().unwrap().to_string(),
            diff_id: d.as_str().unwrap().parse().unwrap(),
        })
        .collect()
}

fn options() -> CompareOptions {
    CompareOptions {
        mtimes: true,
        ignore_xattr_prefixes: vec![b"trusted.overlay.".to_vec(), b"user.overlay.".to_vec()],
        ..CompareOptions::default()
    }
}

/// Unpack `layers` both ways forge can and compare each with `judge`.
fn check_against(judge: &Path, layers: &[Layer], work: &Path) {
    let plain = work.join("forge-plain");
    std::fs::create_dir_all(&plain).unwrap();
    let apply = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    for l in layers {
        let f = std::fs::File::open(&l.blob).unwrap();
        unpack_layer(f, &l.media_type, &plain, &apply).unwrap();
    }
    assert_trees_equal(judge, &plain, &options());

    let sn = AnySnapshotter::open(&work.join("sn"), Some(BackendKind::Overlay)).unwrap();
    let mut parent: Option<Digest> = None;
    for l in layers {
        let f = std::fs::File::open(&l.blob).unwrap();
        let s = unpack_layer_snapshot(&sn, parent.as_ref(), &l.diff_id, f, &l.media_type).unwrap();
        parent = Some(s.chain_id);
    }
    let top = parent.unwrap().to_string();
    sn.view("judge", Some(&top)).unwrap();
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    common::mount_all(&sn.mounts("judge").unwrap(), &mnt);
    let diffs = common::compare_trees(judge, &mnt, &options());
    common::unmount(&mnt);
    assert!(
        diffs.is_empty(),
        "overlay view differs:\n{}",
        diffs.join("\n")
    );
}

fn tools_present(tools: &[&str]) -> bool {
    if !common::prerequisite(common::is_root(), "umoci unpack comparisons run as root") {
        return false;
    }
    tools.iter().all(|t| forge_testsupport::tool(t).is_some())
}

#[test]
fn umoci_repack_layers_unpack_like_umoci() {
    if !tools_present(&["umoci"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let image = format!("{}:t", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    // Layer 1: the base tree; layer 2: the change set, with whiteouts.
    let b1 = tmp.path().join("b1");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&b1));
    make_base_tree(&b1.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b1));
    let b2 = tmp.path().join("b2");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&b2));
    apply_change_set(&b2.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&b2));

    let judge = tmp.path().join("judge");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&judge));
    let layers = layout_layers(&layout, "t");
    assert!(layers.len() >= 2, "two layers at least");
    check_against(&judge.join("rootfs"), &layers, tmp.path());
}

fn registry_image_unpacks_like_umoci(var: &str) {
    let Some(reference) = forge_testsupport::image_from_env(var) else {
        return;
    };
    if !tools_present(&["umoci", "skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:img", layout.display())));
    let judge = tmp.path().join("judge");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:img", layout.display()))
        .arg(&judge));
    check_against(
        &judge.join("rootfs"),
        &layout_layers(&layout, "img"),
        tmp.path(),
    );
}

#[test]
fn busybox_from_the_registry_unpacks_like_umoci() {
    registry_image_unpacks_like_umoci("FORGE_TEST_BUSYBOX");
}

#[test]
fn debian_from_the_registry_unpacks_like_umoci() {
    registry_image_unpacks_like_umoci("FORGE_TEST_DEBIAN");
}
