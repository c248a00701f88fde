//! Regression tests for parent paths resolved "in root": a symlink in an entry's parent path is
//! followed as if the unpack root were `/` (absolute targets restart at the root, `..` stops at
//! it), as containerd's `fs.RootPath` and Docker's chrooted extraction do. Before, an absolute
//! symlink such as Debian's `var/run -> /run` made every later `var/run/...` entry a refusal.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use forge_snapshotter::unpack::{
    OverlayXattr, Refusal, UnpackError, UnpackOptions, UnpackSummary, WhiteoutMode, apply_tar,
};

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        match *e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, content) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, p, content.as_bytes()).unwrap();
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// An unpack root beside a sentinel directory that must never change.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), "untouched").unwrap();
        Fixture {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn apply(&self, layers: &[Vec<u8>], mode: WhiteoutMode) -> Result<UnpackSummary, UnpackError> {
        let options = UnpackOptions {
            whiteouts: mode,
            ..UnpackOptions::default()
        };
        let mut last = Ok(UnpackSummary::default());
        for l in layers {
            last = apply_tar(&l[..], &self.root, &options);
            if last.is_err() {
                break;
            }
        }
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sentinel"], "something was written beside the root");
        assert_eq!(read(&self.outside.join("sentinel")), "untouched");
        last
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn inode(&self, rel: &str) -> (u64, u64) {
        let md = std::fs::symlink_metadata(self.path(rel)).unwrap();
        (md.dev(), md.ino())
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn link_text(path: &Path) -> PathBuf {
    std::fs::read_link(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A name no host path has, so that a host path with it proves an escape.
fn unique(stem: &str) -> String {
    format!("forge-in-root-{stem}-{}", std::process::id())
}

fn assert_absent_on_host(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} was written on the host",
        path.display()
    );
}

/// Debian's base layer has `var/run -> /run`; a later layer writing `var/run/x` must land in
/// `<root>/run/x`, leaving the symlink and the host's /run alone.
#[test]
fn unpack_writes_through_absolute_parent_symlink_inside_root() {
    let fx = Fixture::new();
    let name = unique("run");
    let base = layer(&[E::Dir("run/"), E::Dir("var/"), E::Sym("var/run", "/run")]);
    let file = format!("var/run/{name}");
    let deep = format!("var/run/{name}.d/lock/pid");
    let top = layer(&[E::File(&file, "1"), E::File(&deep, "2")]);
    fx.apply(&[base, top], WhiteoutMode::Apply).unwrap();

    assert_eq!(link_text(&fx.path("var/run")), Path::new("/run"));
    assert_eq!(read(&fx.path(&format!("run/{name}"))), "1");
    // Missing parents behind the symlink are made in root too.
    assert_eq!(read(&fx.path(&format!("run/{name}.d/lock/pid"))), "2");
    assert_absent_on_host(&Path::new("/run").join(&name));
    assert_absent_on_host(&Path::new("/run").join(format!("{name}.d")));
}

/// The same within one layer, in overlay mode too (where lower layers are not visible, the
/// symlink must come from the same layer).
#[test]
fn unpack_writes_through_absolute_parent_symlink_in_the_same_layer() {
    let mut modes = vec![WhiteoutMode::Apply, WhiteoutMode::Keep];
    if common::is_root() {
        modes.push(WhiteoutMode::Overlay(OverlayXattr::detect()));
    }
    for mode in modes {
        let fx = Fixture::new();
        let name = unique("same");
        let file = format!("var/run/{name}");
        let l = layer(&[
            E::Dir("run/"),
            E::Dir("var/"),
            E::Sym("var/run", "/run"),
            E::File(&file, "x"),
        ]);
        fx.apply(&[l], mode).unwrap();
        assert_eq!(read(&fx.path(&format!("run/{name}"))), "x", "{mode:?}");
        assert_absent_on_host(&Path::new("/run").join(&name));
    }
}

/// Absolute symlinks leading to absolute symlinks: each one restarts at the root.
#[test]
fn unpack_resolves_a_chain_of_absolute_symlinks_in_root() {
    let fx = Fixture::new();
    let l = layer(&[
        E::Dir("real/"),
        E::Dir("real/deep/"),
        E::Sym("a", "/b"),
        E::Sym("b", "/c/d"),
        E::Dir("c/"),
        E::Sym("c/d", "/real/deep"),
        E::File("a/x", "chained"),
    ]);
    fx.apply(&[l], WhiteoutMode::Apply).unwrap();
    assert_eq!(read(&fx.path("real/deep/x")), "chained");
    assert_eq!(link_text(&fx.path("a")), Path::new("/b"));
    assert_eq!(link_text(&fx.path("c/d")), Path::new("/real/deep"));
}

/// `..` in a symlink target stops at the root: `/../../etc` and `../../../etc` (from a
/// subdirectory) are both `<root>/etc`, never the host's /etc.
#[test]
fn unpack_clamps_dotdot_symlink_targets_at_the_root() {
    let fx = Fixture::new();
    let abs = unique("abs");
    let rel = unique("rel");
    let abs_file = format!("e/{abs}");
    let rel_file = format!("sub/up/{rel}");
    let l = layer(&[
        E::Dir("etc/"),
        E::Sym("e", "/../../etc"),
        E::Dir("sub/"),
        E::Sym("sub/up", "../../../etc"),
        E::File(&abs_file, "abs"),
        E::File(&rel_file, "rel"),
    ]);
    fx.apply(&[l], WhiteoutMode::Apply).unwrap();
    assert_eq!(read(&fx.path(&format!("etc/{abs}"))), "abs");
    assert_eq!(read(&fx.path(&format!("etc/{rel}"))), "rel");
    assert_absent_on_host(&Path::new("/etc").join(&abs));
    assert_absent_on_host(&Path::new("/etc").join(&rel));
}

/// A hard link whose target path goes through an absolute symlink links the in-root file; one
/// whose own name goes through it lands in root as well.
#[test]
fn unpack_hardlink_target_through_absolute_symlink_inside_root() {
    let fx = Fixture::new();
    let base = layer(&[
        E::Dir("data/"),
        E::File("data/f", "content"),
        E::Sym("l", "/data"),
    ]);
    let top = layer(&[E::Link("h", "l/f"), E::Link("l/g", "l/f")]);
    fx.apply(&[base, top], WhiteoutMode::Apply).unwrap();
    assert_eq!(fx.inode("h"), fx.inode("data/f"));
    assert_eq!(fx.inode("data/g"), fx.inode("data/f"));
    assert_eq!(read(&fx.path("h")), "content");
    let md = std::fs::symlink_metadata(fx.path("data/f")).unwrap();
    assert_eq!(md.nlink(), 3);
}

/// A hard link naming, through a symlinked parent, the very file that stands at its own path
/// must not delete that file before linking it.
#[test]
fn unpack_hardlink_to_itself_through_a_symlinked_parent_keeps_the_file() {
    let fx = Fixture::new();
    let base = layer(&[
        E::Dir("run/"),
        E::File("run/f", "kept"),
        E::Dir("var/"),
        E::Sym("var/run", "/run"),
    ]);
    let top = layer(&[E::Link("var/run/f", "run/f"), E::Link("run/f", "var/run/f")]);
    fx.apply(&[base, top], WhiteoutMode::Apply).unwrap();
    assert_eq!(read(&fx.path("run/f")), "kept");
}

/// The final component is never followed: an entry at a symlink's own path replaces the symlink,
/// even an absolute one whose in-root target exists.
#[test]
fn unpack_replaces_an_absolute_symlink_at_the_entry_path() {
    let fx = Fixture::new();
    let base = layer(&[
        E::Dir("run/"),
        E::File("run/keep", "lower"),
        E::Dir("var/"),
        E::Sym("var/run", "/run"),
        E::Dir("etc/"),
        E::File("etc/shadow", "secret"),
        E::Sym("etc/passwd", "/etc/shadow"),
    ]);
    let top = layer(&[E::Dir("var/run/"), E::File("etc/passwd", "replaced")]);
    fx.apply(&[base, top], WhiteoutMode::Apply).unwrap();
    assert!(
        std::fs::symlink_metadata(fx.path("var/run"))
            .unwrap()
            .is_dir()
    );
    assert!(
        std::fs::read_dir(fx.path("var/run"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(read(&fx.path("run/keep")), "lower");
    let md = std::fs::symlink_metadata(fx.path("etc/passwd")).unwrap();
    assert!(md.is_file());
    assert_eq!(read(&fx.path("etc/passwd")), "replaced");
    assert_eq!(read(&fx.path("etc/shadow")), "secret");
}

/// Whiteouts and opaque markers reached through an absolute symlink act on the in-root
/// directory, and an opaque marker keeps what this layer wrote there under either path.
#[test]
fn unpack_whiteouts_through_absolute_symlink_act_in_root() {
    let fx = Fixture::new();
    let base = layer(&[
        E::Dir("run/"),
        E::File("run/old", "lower"),
        E::File("run/gone", "lower"),
        E::Dir("var/"),
        E::Sym("var/run", "/run"),
    ]);
    let top = layer(&[
        E::File("var/run/.wh.gone", ""),
        E::File("var/run/new", "this layer"),
        E::File("run/.wh..wh..opq", ""),
    ]);
    fx.apply(&[base, top], WhiteoutMode::Apply).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(fx.path("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
    assert_eq!(link_text(&fx.path("var/run")), Path::new("/run"));
}

/// Still refused: a parent that is a dangling absolute symlink (no directory is made for it, in
/// the root or on the host), and `..` in an entry name or a hard link target.
#[test]
fn unpack_still_refuses_dangling_symlink_parents_and_dotdot_names() {
    let fx = Fixture::new();
    let name = unique("dangling");
    let target = format!("/{name}");
    let l = layer(&[E::Sym("l", &target), E::File("l/x", "x")]);
    let err = fx.apply(&[l], WhiteoutMode::Apply).unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(("l/x", &Refusal::DanglingSymlinkParent)),
        "{err}"
    );
    assert!(err.to_string().contains("\"l/x\""), "{err}");
    assert_absent_on_host(Path::new(&target));
    assert_absent_on_host(&fx.path(&name));

    let fx = Fixture::new();
    let l = layer(&[
        E::Dir("a/"),
        E::File("a/f", "x"),
        E::Link("h", "a/../../outside/sentinel"),
    ]);
    let err = fx.apply(&[l], WhiteoutMode::Apply).unwrap_err();
    assert_eq!(
        err.refusal(),
        Some((
            "h",
            &Refusal::HardlinkOutside("a/../../outside/sentinel".into())
        )),
        "{err}"
    );
}

/// Write a one-image OCI layout (uncompressed layers) that `umoci unpack` accepts, tagged `t`.
fn write_layout(dir: &Path, layers: &[Vec<u8>]) {
    use sha2::{Digest, Sha256};
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        serde_json::json!({"digest": format!("sha256:{hex}"), "size": bytes.len()})
    };
    let descs: Vec<_> = layers.iter().map(|l| put(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": descs.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>(),
        },
    });
    let mut config_desc = put(config.to_string().as_bytes());
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let layer_descs: Vec<_> = descs
        .into_iter()
        .map(|mut d| {
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
            d
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    });
    let mut manifest_desc = put(manifest.to_string().as_bytes());
    manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// umoci resolves parents in root too (filepath-securejoin): as an independent judge, it must
/// build the same tree from layers that write through absolute and `..` symlinks.
#[test]
fn in_root_resolution_matches_umoci() {
    if !common::prerequisite(common::is_root(), "umoci unpack comparisons run as root")
        || !common::prerequisite(common::have_tool("umoci"), "umoci not installed")
    {
        return;
    }
    let base = layer(&[
        E::Dir("run/"),
        E::File("run/gone", "lower"),
        E::Dir("var/"),
        E::Sym("var/run", "/run"),
        E::Dir("etc/"),
        E::Sym("e", "/../../etc"),
        E::Dir("sub/"),
        E::Sym("sub/up", "../../../etc"),
        E::Sym("a", "/b"),
        E::Sym("b", "/real"),
        E::Dir("real/"),
        E::Dir("data/"),
        E::File("data/f", "content"),
        E::Sym("l", "/data"),
    ]);
    let top = layer(&[
        E::File("var/run/x", "run"),
        E::File("var/run/new.d/pid", "1"),
        E::File("var/run/.wh.gone", ""),
        E::File("e/abs", "abs"),
        E::File("sub/up/rel", "rel"),
        E::File("a/chained", "chained"),
        E::Link("h", "l/f"),
        E::Link("l/g", "l/f"),
    ]);
    let fx = Fixture::new();
    fx.apply(&[base.clone(), top.clone()], WhiteoutMode::Apply)
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[base, top]);
    let bundle = tmp.path().join("bundle");
    let out = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Pin the facts, not only the agreement: the writes landed in root.
    assert_eq!(read(&fx.path("run/x")), "run");
    assert_eq!(read(&fx.path("etc/abs")), "abs");
    assert_eq!(read(&fx.path("etc/rel")), "rel");
    assert_eq!(read(&fx.path("real/chained")), "chained");
    assert_eq!(fx.inode("h"), fx.inode("data/f"));
    let judge = bundle.join("rootfs");
    assert_eq!(
        read(&judge.join("run/x")),
        "run",
        "umoci resolves in root too"
    );
    assert_eq!(read(&judge.join("etc/abs")), "abs", "umoci clamps `..` too");
    common::assert_trees_equal(
        &judge,
        &fx.root,
        &common::CompareOptions {
            mtimes: true,
            ..common::CompareOptions::default()
        },
    );
}
