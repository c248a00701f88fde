//! Image exporters, judged by independent tools where the machine has them: `umoci` and `skopeo`
//! read the OCI layout (directory and tar) and the `docker load` tar, `umoci unpack` gives back the
//! layer's files. Layer blobs are made here with the `tar` and `flate2` crates.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use forge_builder::export::{
    ExportError, Image, ImageOptions, LayerBlob, ManifestFormat, assemble, export_local,
    metadata_json, sha256_digest, write_docker_tar, write_fs_tar, write_iidfile,
    write_metadata_file, write_oci_dir, write_oci_tar,
};
use forge_testsupport::tool as judge;
use oci_spec::image::{
    Arch, ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, MediaType,
    Os, RootFsBuilder,
};

const EPOCH: i64 = 1_700_000_000;
const NAME: &str = "127.0.0.1:5000/forge-test/app:v1";

fn run(cmd: &mut Command) -> String {
    String::from_utf8(forge_testsupport::run(cmd)).unwrap()
}

/// A gzip layer with `files` (path, content, mode), written deterministically.
fn make_layer(dir: &Path, name: &str, files: &[(&str, &str, u32)]) -> LayerBlob {
    let mut raw = tar::Builder::new(Vec::new());
    for (path, content, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(EPOCH as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_path(path).unwrap();
        h.set_cksum();
        raw.append(&h, content.as_bytes()).unwrap();
    }
    let raw = raw.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let blob = gz.finish().unwrap();
    let path = dir.join(name);
    fs::write(&path, &blob).unwrap();
    LayerBlob {
        path,
        digest: sha256_digest(&blob),
        diff_id: sha256_digest(&raw),
        size: blob.len() as u64,
        media_type: MediaType::ImageLayerGzip,
    }
}

fn sample(dir: &Path) -> (ImageConfiguration, Vec<LayerBlob>) {
    let layers = vec![
        make_layer(dir, "l1", &[("hello.txt", "hello from forge\n", 0o644)]),
        make_layer(dir, "l2", &[("bin/run.sh", "#!/bin/sh\necho hi\n", 0o755)]),
    ];
    let labels: HashMap<String, String> = (0..20)
        .map(|i| (format!("label.{i:02}"), format!("v{i}")))
        .collect();
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec!["PATH=/usr/bin:/bin".to_string()])
                .cmd(vec!["/bin/run.sh".to_string()])
                .working_dir("/")
                .labels(labels)
                .build()
                .unwrap(),
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.diff_id.to_string())
                        .collect::<Vec<_>>(),
                )
                .build()
                .unwrap(),
        )
        .history(vec![
            HistoryBuilder::default()
                .created("2001-01-01T00:00:00Z")
                .created_by("base layer")
                .build()
                .unwrap(),
            HistoryBuilder::default()
                .created("2099-01-01T00:00:00Z")
                .created_by("COPY run.sh /bin/")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    (config, layers)
}

fn image(dir: &Path, format: ManifestFormat) -> Image {
    let (config, layers) = sample(dir);
    assemble(
        config,
        layers,
        &ImageOptions {
            format,
            source_date_epoch: Some(EPOCH),
        },
    )
    .unwrap()
}

#[test]
fn assembly_is_reproducible_and_canonical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let one = image(a.path(), ManifestFormat::Oci);
    let two = image(b.path(), ManifestFormat::Oci);
    assert_eq!(one.manifest_json(), two.manifest_json());
    assert_eq!(
        one.manifest_descriptor().digest(),
        two.manifest_descriptor().digest()
    );
    assert_eq!(one.config_json(), two.config_json());
    // Digests are of the exact bytes.
    assert_eq!(&sha256_digest(one.config_json()), one.id());
    assert_eq!(
        &sha256_digest(one.manifest_json()),
        one.manifest_descriptor().digest()
    );

    let config: serde_json::Value = serde_json::from_slice(one.config_json()).unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    // The older base entry keeps its time, the newer one is clamped to SOURCE_DATE_EPOCH.
    assert_eq!(config["history"][0]["created"], "2001-01-01T00:00:00Z");
    assert_eq!(config["history"][1]["created"], "2023-11-14T22:13:20Z");
    let text = String::from_utf8(one.config_json().to_vec()).unwrap();
    let positions: Vec<usize> = (0..20)
        .map(|i| text.find(&format!("\"label.{i:02}\"")).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "labels sorted: {text}"
    );
    // oci-spec's field order, not alphabetical.
    assert!(text.find("\"created\"").unwrap() < text.find("\"architecture\"").unwrap());

    let manifest: serde_json::Value = serde_json::from_slice(one.manifest_json()).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let docker = image(a.path(), ManifestFormat::Docker);
    let manifest: serde_json::Value = serde_json::from_slice(docker.manifest_json()).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        docker.id(),
        one.id(),
        "the config does not depend on the manifest flavour"
    );

    // A different epoch is a different image.
    let (config, layers) = sample(a.path());
    let other = assemble(
        config,
        layers,
        &ImageOptions {
            source_date_epoch: Some(EPOCH + 1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(other.id(), one.id());
}

#[test]
fn layers_must_match_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut layers) = sample(dir.path());
    layers.swap(0, 1);
    let err = assemble(config.clone(), layers.clone(), &ImageOptions::default()).unwrap_err();
    assert!(
        matches!(err, ExportError::DiffIdMismatch { index: 0, .. }),
        "{err}"
    );
    layers.pop();
    let err = assemble(config, layers, &ImageOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::LayerCount {
                expected: 2,
                actual: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn corrupt_blob_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), ManifestFormat::Oci);
    let blob = img.layers().next().unwrap().0.path.clone();
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let out = dir.path().join("out.tar");
    let err = write_oci_tar(&img, &[NAME.to_string()], &out).unwrap_err();
    match &err {
        ExportError::BlobMismatch {
            expected, actual, ..
        } => assert_ne!(expected, actual),
        other => panic!("expected a blob mismatch, got {other}"),
    }
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn oci_layout_directory_is_read_by_umoci_and_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), ManifestFormat::Oci);
    let layout = dir.path().join("layout");
    write_oci_dir(&img, &[NAME.to_string()], &layout).unwrap();

    assert_eq!(
        fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["digest"],
        img.manifest_descriptor().digest().to_string()
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert_eq!(entry["annotations"]["io.containerd.image.name"], NAME);
    for (_, d) in img.layers() {
        let p = layout.join("blobs/sha256").join(d.digest().digest());
        assert_eq!(fs::metadata(p).unwrap().len(), d.size());
    }

    if let Some(umoci) = judge("umoci") {
        let listed = run(Command::new(&umoci).args(["ls", "--layout"]).arg(&layout));
        assert_eq!(listed.trim(), "v1");
        let bundle = dir.path().join("bundle");
        run(Command::new(&umoci)
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        assert_eq!(
            fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
            "hello from forge\n"
        );
        let run_sh = rootfs.join("bin/run.sh");
        assert_eq!(fs::read_to_string(&run_sh).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(fs::metadata(&run_sh).unwrap().mode() & 0o777, 0o755);
        // umoci's runtime config carries the image config through.
        let spec: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["process"]["args"][0], "/bin/run.sh");
    }
    if let Some(skopeo) = judge("skopeo") {
        let out = run(Command::new(&skopeo)
            .arg("inspect")
            .arg(format!("oci:{}:v1", layout.display())));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Digest"], img.manifest_descriptor().digest().to_string());
        assert_eq!(v["Labels"]["label.07"], "v7");
        assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn oci_tar_is_deterministic_and_read_by_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), ManifestFormat::Oci);
    let names = [NAME.to_string()];
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    write_oci_tar(&img, &names, &a).unwrap();
    write_oci_tar(&img, &names, &b).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

    let mut archive = tar::Archive::new(fs::File::open(&a).unwrap());
    let mut paths = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!(h.mtime().unwrap(), EPOCH as u64);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        paths.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(&paths[..2], ["blobs/", "blobs/sha256/"]);
    assert!(paths.contains(&"index.json".to_string()));
    assert!(paths.contains(&"oci-layout".to_string()));
    assert_eq!(paths.len(), 2 + 4 + 2, "{paths:?}");

    if let Some(skopeo) = judge("skopeo") {
        let out = run(Command::new(&skopeo)
            .arg("inspect")
            .arg(format!("oci-archive:{}:v1", a.display())));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Digest"], img.manifest_descriptor().digest().to_string());
    }
}

#[test]
fn docker_tar_has_docker_load_layout_and_is_read_by_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), ManifestFormat::Docker);
    let out = dir.path().join("docker.tar");
    write_docker_tar(&img, &[NAME.to_string()], &out).unwrap();

    let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        files.insert(path, data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let item = &manifest[0];
    let config_path = format!("blobs/sha256/{}", img.id().digest());
    assert_eq!(item["Config"], config_path);
    assert_eq!(item["RepoTags"][0], NAME);
    assert_eq!(item["Layers"].as_array().unwrap().len(), 2);
    for layer in item["Layers"].as_array().unwrap() {
        assert!(files.contains_key(layer.as_str().unwrap()), "{layer}");
    }
    assert_eq!(files[&config_path], img.config_json());
    let repos: serde_json::Value = serde_json::from_slice(&files["repositories"]).unwrap();
    let top = img.layers().last().unwrap().1.digest().digest().to_string();
    assert_eq!(repos["127.0.0.1:5000/forge-test/app"]["v1"], top);

    if let Some(skopeo) = judge("skopeo") {
        let archive = format!("docker-archive:{}", out.display());
        let raw = run(Command::new(&skopeo)
            .args(["inspect", "--raw"])
            .arg(&archive));
        let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(m["config"]["digest"], img.id().to_string());
        let config = run(Command::new(&skopeo)
            .args(["inspect", "--config", "--raw"])
            .arg(&archive));
        assert_eq!(&sha256_digest(config.as_bytes()), img.id());
        let v: serde_json::Value =
            serde_json::from_str(&run(Command::new(&skopeo).arg("inspect").arg(&archive))).unwrap();
        assert_eq!(v["Labels"]["label.19"], "v19");
        assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn metadata_file_and_iidfile_are_as_buildx_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), ManifestFormat::Oci);
    let names = vec![
        NAME.to_string(),
        "127.0.0.1:5000/forge-test/app:latest".to_string(),
    ];
    let md = dir.path().join("metadata.json");
    write_metadata_file(&md, &img, &names).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&md).unwrap()).unwrap();
    let manifest = img.manifest_descriptor();
    assert_eq!(v["containerimage.digest"], manifest.digest().to_string());
    assert_eq!(v["containerimage.config.digest"], img.id().to_string());
    assert_eq!(
        v["containerimage.descriptor"]["digest"],
        manifest.digest().to_string()
    );
    assert_eq!(v["containerimage.descriptor"]["size"], manifest.size());
    assert_eq!(
        v["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        v["containerimage.descriptor"]["annotations"]["config.digest"],
        img.id().to_string()
    );
    assert_eq!(
        v["containerimage.descriptor"]["annotations"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(v["image.name"], names.join(","));
    // Sorted keys, two-space indentation.
    let text = String::from_utf8(metadata_json(&img, &[])).unwrap();
    assert!(
        text.starts_with("{\n  \"containerimage.config.digest\""),
        "{text}"
    );
    assert!(!text.contains("image.name"));

    let iid = dir.path().join("iid");
    write_iidfile(&iid, &img).unwrap();
    assert_eq!(fs::read_to_string(&iid).unwrap(), img.id().to_string());
}

#[test]
fn local_export_copies_the_rootfs_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("locked")).unwrap();
    fs::write(root.join("usr/bin/tool"), "tool").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::write(root.join("secret"), "s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o400)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/alias")).unwrap();
    symlink("usr/bin/tool", root.join("link")).unwrap();
    symlink("/nonexistent", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o1700)).unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH as u64);
    fs::File::open(root.join("usr/bin/tool"))
        .unwrap()
        .set_modified(when)
        .unwrap();

    let dest = dir.path().join("out");
    export_local(&root, &dest, false).unwrap();
    let m = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    assert_eq!(
        fs::read_to_string(dest.join("usr/bin/tool")).unwrap(),
        "tool"
    );
    assert_eq!(m("usr/bin/tool").mode() & 0o7777, 0o4755);
    assert_eq!(m("secret").mode() & 0o7777, 0o400);
    assert_eq!(m("locked").mode() & 0o7777, 0o1700);
    assert_eq!(m("usr/bin/tool").ino(), m("usr/bin/alias").ino());
    assert_eq!(m("usr/bin/tool").mtime(), EPOCH);
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("usr/bin/tool")
    );
    assert_eq!(
        fs::read_link(dest.join("dangling")).unwrap(),
        Path::new("/nonexistent")
    );
    // Exporting again over the result converges to the same tree.
    export_local(&root, &dest, false).unwrap();
    assert_eq!(m("usr/bin/tool").mode() & 0o7777, 0o4755);
}

/// Fifos and device nodes are exported as themselves (BuildKit's client makes them), with their
/// mode and time; every entry is the caller's, root included, as BuildKit's receiver writes them,
/// unless `--keep-owners` asks for the image's (the devices and owners need root to be tested).
#[test]
fn local_export_makes_fifos_and_devices_and_writes_the_callers_owners() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("d")).unwrap();
    mknod(
        &root.join("pipe"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    fs::write(root.join("d/f"), "f").unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH as u64);
    fs::File::open(root.join("d/f"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let privileged = nix::unistd::geteuid().is_root()
        && mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o644),
            makedev(1, 3),
        )
        .is_ok();
    if privileged {
        std::os::unix::fs::lchown(root.join("d/f"), Some(123), Some(456)).unwrap();
        std::os::unix::fs::lchown(root.join("d"), Some(123), Some(456)).unwrap();
    }
    let set_mtime = |p: &Path| {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &nix::sys::time::TimeSpec::new(EPOCH, 0),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap()
    };
    set_mtime(&root.join("pipe"));

    let dest = dir.path().join("out");
    export_local(&root, &dest, false).unwrap();
    let m = |d: &Path, p: &str| fs::symlink_metadata(d.join(p)).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(m(&dest, "pipe").file_type().is_fifo());
    assert_eq!(m(&dest, "pipe").mode() & 0o7777, 0o640);
    assert_eq!(m(&dest, "pipe").mtime(), EPOCH);
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    for p in ["d", "d/f", "pipe"] {
        assert_eq!((m(&dest, p).uid(), m(&dest, p).gid()), me, "{p}");
    }
    if privileged {
        assert!(m(&dest, "null").file_type().is_char_device());
        assert_eq!(m(&dest, "null").rdev(), makedev(1, 3));
        assert_eq!(m(&dest, "null").mode() & 0o7777, 0o644);
        let kept = dir.path().join("kept");
        export_local(&root, &kept, true).unwrap();
        for p in ["d", "d/f"] {
            assert_eq!((m(&kept, p).uid(), m(&kept, p).gid()), (123, 456), "{p}");
        }
    }
}

/// `-o type=tar` writes the filesystem as BuildKit's tar export does: names without `./`, hard
/// links as hard-link entries to the first name, fifos as fifos, a time before 1970 kept (a PAX
/// record). GNU tar is the judge.
#[test]
fn fs_tar_keeps_hard_links_special_files_and_old_times() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("all/d")).unwrap();
    fs::write(root.join("all/c"), "same\n").unwrap();
    fs::hard_link(root.join("all/c"), root.join("all/d/a")).unwrap();
    fs::hard_link(root.join("all/c"), root.join("all/d/b")).unwrap();
    nix::unistd::mkfifo(
        &root.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::write(root.join("old"), "old").unwrap();
    let t = nix::sys::time::TimeSpec::new(-315_619_200, 0); // 1960-01-01
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join("old"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let out = dir.path().join("fs.tar");
    write_fs_tar(&root, &out).unwrap();
    let listed = run(Command::new("tar")
        .args(["--full-time", "--utc", "-tvf"])
        .arg(&out));
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.split_whitespace().nth(5) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in {listed}"))
            .to_string()
    };
    assert!(line("all/c").starts_with('-'), "{listed}");
    for name in ["all/d/a", "all/d/b"] {
        assert!(line(name).starts_with('h'), "{listed}");
        assert!(line(name).ends_with("link to all/c"), "{listed}");
    }
    assert!(line("all/").starts_with('d'), "{listed}");
    assert!(line("pipe").starts_with('p'), "{listed}");
    assert!(line("old").contains("1960-01-01 00:00:00"), "{listed}");
    assert!(!listed.contains("./"), "{listed}");
    // GNU tar extracts it with the links and the time.
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&x));
    let m = |p: &str| fs::symlink_metadata(x.join(p)).unwrap();
    assert_eq!(m("all/c").ino(), m("all/d/b").ino());
    assert_eq!(m("old").mtime(), -315_619_200);
}

/// A symlink already in DEST where the image has a directory (left by an earlier export of an
/// image whose `/etc` or `/lnk` was a link, or put there by anyone) is replaced by the directory:
/// the image's files never land where it points.
#[test]
fn local_export_replaces_a_link_in_dest_instead_of_writing_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("lnk")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("lnk/evil"), "evil").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let dest = dir.path().join("out");
    fs::create_dir_all(&dest).unwrap();
    symlink(&victim, dest.join("lnk")).unwrap();
    symlink(&victim, dest.join("etc")).unwrap();

    export_local(&root, &dest, false).unwrap();
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written through the links"
    );
    for d in ["lnk", "etc"] {
        assert!(fs::symlink_metadata(dest.join(d)).unwrap().is_dir(), "{d}");
    }
    assert_eq!(fs::read_to_string(dest.join("lnk/evil")).unwrap(), "evil");
    assert!(dest.join("etc/passwd").is_file());
}
