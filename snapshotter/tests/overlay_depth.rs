//! Deep overlay chains: mount(2) takes one page of options, so a chain of lower dirs under a long
//! store path used to be cut off by the kernel (the build failed with ENOENT long before the
//! kernel's stacking limit, earlier the longer the path). These tests build chains whose options
//! pass a page, under a store root made long on purpose, mount them as the runners do
//! ([`mount_overlay`]), and pin the limits: a page of options, and overlayfs's 500 lower layers,
//! past which the snapshotter refuses with the reason. The deep-chain test runs again rootless.

mod common;

use std::path::{Path, PathBuf};

use forge_snapshotter::mount::{Mount, OVERLAY_MAX_LOWER_LAYERS, OverlayMountError, mount_overlay};
use forge_snapshotter::snapshot::{AnySnapshotter, BackendKind, SnapshotError, Snapshotter};

/// Unmounts (lazily) when dropped, so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A directory under `base` whose path is at least `len` bytes long (components of 60 bytes).
fn long_dir(base: &Path, len: usize) -> PathBuf {
    let mut dir = base.to_path_buf();
    let mut n = 0;
    while dir.as_os_str().len() < len {
        dir.push(format!(
            "{n:02}-a-deliberately-long-directory-name-for-the-store-root-"
        ));
        n += 1;
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mounts a snapshotter's single overlay mount at `at` the way the runners do.
fn mount(mounts: &[Mount], at: &Path) -> Result<Mounted, OverlayMountError> {
    let [m] = mounts else {
        panic!("expected one mount, got {mounts:?}")
    };
    assert_eq!(m.kind, "overlay", "{m:?}");
    std::fs::create_dir_all(at).unwrap();
    let data = m
        .options
        .iter()
        .filter(|o| !matches!(o.as_str(), "ro" | "rw"))
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let flags = if m.is_readonly() { libc::MS_RDONLY } else { 0 };
    mount_overlay(at, flags, &data)?;
    Ok(Mounted(at.to_path_buf()))
}

/// A chain of `depth` committed snapshots `layer-1` .. `layer-{depth}`, each adding the file
/// `/f{n}` holding `n`.
fn chain(sn: &AnySnapshotter, depth: usize) {
    for n in 1..=depth {
        let key = format!("active-{n}");
        let parent = (n > 1).then(|| format!("layer-{}", n - 1));
        sn.prepare(&key, parent.as_deref()).unwrap();
        let dir = sn.writable_dir(&key).unwrap();
        std::fs::write(dir.join(format!("f{n}")), format!("{n}\n")).unwrap();
        sn.commit(&format!("layer-{n}"), &key).unwrap();
    }
}

fn options_len(mounts: &[Mount]) -> usize {
    mounts[0].options.join(",").len()
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap() as usize
}

/// The kernel's limit itself: mount(2) reads one page of options, the last byte kept for the NUL,
/// so 4095 bytes (page size 4096) mount and one byte more loses the last one. mount_overlay's fast
/// path relies on this boundary; it mounts the longer one too.
#[test]
fn mount_options_stop_one_byte_short_of_a_page() {
    if !common::native_overlay_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for d in ["l1", "l2", "m"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    std::fs::write(tmp.path().join("l2/deepest"), "2").unwrap();
    let page = page_size();
    // Extra slashes name the same directory and make the options exactly `len` bytes long.
    let data = |len: usize| {
        let head = format!("lowerdir={}/", tmp.path().display());
        let tail = format!("l1:{}/l2", tmp.path().display());
        let pad = len - head.len() - tail.len();
        let data = format!("{head}{}{tail}", "/".repeat(pad));
        assert_eq!(data.len(), len);
        data
    };
    let target = tmp.path().join("m");
    let raw = |data: &str| {
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data),
        )
    };

    raw(&data(page - 1)).expect("options one byte short of a page mount directly");
    let m = Mounted(target.clone());
    assert_eq!(
        std::fs::read_to_string(target.join("deepest")).unwrap(),
        "2"
    );
    drop(m);

    // One byte more: the kernel cuts the last dir's name to "l" (no such dir).
    assert_eq!(
        raw(&data(page)).expect_err("a page of options mounted directly"),
        nix::errno::Errno::ENOENT
    );

    mount_overlay(&target, 0, &data(page)).expect("mount_overlay with a page of options");
    let _m = Mounted(target.clone());
    assert_eq!(
        std::fs::read_to_string(target.join("deepest")).unwrap(),
        "2"
    );
}

/// 130 layers (the docker comparison's Dockerfile) under a store root of 300 bytes: the options
/// are ten pages long. The view shows the deepest and topmost layers' files, a writable snapshot
/// on top takes writes into its own upper dir, and the test's working directory is untouched.
#[test]
fn a_lower_chain_longer_than_a_page_mounts_under_a_long_root() {
    if !common::native_overlay_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = long_dir(tmp.path(), 300);
    let sn = AnySnapshotter::open(&root.join("store"), Some(BackendKind::Overlay)).unwrap();
    let depth = 130;
    chain(&sn, depth);
    let cwd = std::env::current_dir().unwrap();

    let view = sn.view("view", Some(&format!("layer-{depth}"))).unwrap();
    assert!(
        options_len(&view) > 4 * page_size(),
        "the test needs options past a page: {} bytes",
        options_len(&view)
    );
    let at = tmp.path().join("view");
    let m = mount(&view, &at).unwrap_or_else(|e| panic!("mounting {depth} layers: {e}"));
    assert_eq!(std::fs::read_to_string(at.join("f1")).unwrap(), "1\n");
    assert_eq!(
        std::fs::read_to_string(at.join(format!("f{depth}"))).unwrap(),
        format!("{depth}\n")
    );
    let files = std::fs::read_dir(&at).unwrap().count();
    assert_eq!(files, depth, "every layer's file is visible");
    drop(m);

    let step = sn.prepare("step", Some(&format!("layer-{depth}"))).unwrap();
    let at = tmp.path().join("step");
    let m = mount(&step, &at).unwrap_or_else(|e| panic!("mounting {depth} layers + upper: {e}"));
    assert_eq!(std::fs::read_to_string(at.join("f1")).unwrap(), "1\n");
    std::fs::write(at.join("written"), "step\n").unwrap();
    drop(m);
    assert_eq!(
        std::fs::read_to_string(sn.writable_dir("step").unwrap().join("written")).unwrap(),
        "step\n",
        "the write went to the step's own upper dir"
    );
    assert_eq!(std::env::current_dir().unwrap(), cwd);
}

/// At the kernel's limit (500 lower layers) a view and a writable snapshot still mount, under a
/// long root; at 501 the snapshotter refuses with the count, the limit and what to do, and removes
/// the snapshot it could not give. mount_overlay refuses such options by itself too.
#[test]
fn a_chain_at_overlayfs_limit_mounts_and_one_layer_more_is_refused() {
    if !common::native_overlay_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = long_dir(tmp.path(), 300);
    let sn = AnySnapshotter::open(&root.join("store"), Some(BackendKind::Overlay)).unwrap();
    let limit = OVERLAY_MAX_LOWER_LAYERS;
    assert_eq!(limit, 500);
    chain(&sn, limit);

    let view = sn.view("view", Some(&format!("layer-{limit}"))).unwrap();
    let at = tmp.path().join("view");
    let m = mount(&view, &at).unwrap_or_else(|e| panic!("mounting {limit} layers: {e}"));
    assert_eq!(std::fs::read_to_string(at.join("f1")).unwrap(), "1\n");
    assert_eq!(
        std::fs::read_to_string(at.join(format!("f{limit}"))).unwrap(),
        format!("{limit}\n")
    );
    drop(m);

    // A step on top: 500 lower layers and its upper dir.
    let step = sn.prepare("step", Some(&format!("layer-{limit}"))).unwrap();
    let at = tmp.path().join("step");
    let m = mount(&step, &at).unwrap_or_else(|e| panic!("mounting {limit} layers + upper: {e}"));
    std::fs::write(at.join(format!("f{}", limit + 1)), "one more\n").unwrap();
    drop(m);
    sn.commit("layer-501", "step").unwrap();

    let err = sn
        .view("too-deep", Some("layer-501"))
        .expect_err("a view of 501 layers");
    assert!(
        matches!(err, SnapshotError::TooDeep(ref e) if e.layers == 501 && e.limit == 500),
        "{err:?}"
    );
    let text = err.to_string();
    for needle in ["501 layers", "500 lower layers", "fewer RUN", "multi-stage"] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert!(
        matches!(sn.stat("too-deep"), Err(SnapshotError::NotFound(_))),
        "the refused view was left behind"
    );
    let err = sn
        .prepare("too-deep-step", Some("layer-501"))
        .expect_err("a step over 501 layers");
    assert!(matches!(err, SnapshotError::TooDeep(_)), "{err:?}");
    assert!(matches!(
        sn.stat("too-deep-step"),
        Err(SnapshotError::NotFound(_))
    ));

    // The options such a mount would have had, refused before the kernel sees them.
    let lowers = (1..=501)
        .map(|n| format!("/nowhere/{n}"))
        .collect::<Vec<_>>()
        .join(":");
    let err = mount_overlay(&at, 0, &format!("lowerdir={lowers}")).unwrap_err();
    assert!(
        matches!(err, OverlayMountError::TooDeep(ref e) if e.layers == 501),
        "{err:?}"
    );
}

/// Rootless for real: FORGE_TEST_USER makes its own user namespace (overlay with `userxattr`) and
/// runs the deep-chain test there, as a rootless build's forge does.
#[test]
fn a_lower_chain_longer_than_a_page_mounts_rootless() {
    common::rerun_rootless("a_lower_chain_longer_than_a_page_mounts_under_a_long_root");
}
