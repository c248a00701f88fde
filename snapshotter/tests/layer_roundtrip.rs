//! A layer made from a change set and applied again onto the base gives the change set back;
//! the same changes give the same digest twice; digest and diff_id are those of the bytes written.

mod common;

use std::io::Read;
use std::path::Path;

use common::{CompareOptions, apply_change_set, assert_trees_equal, make_base_tree};
use forge_snapshotter::compress::{Compression, decompressor};
use forge_snapshotter::diff::{Changes, write_layer};
use forge_snapshotter::layer::{LayerDescriptor, LayerOptions};
use forge_snapshotter::snapshot::copy_tree;
use forge_snapshotter::unpack::{UnpackOptions, WhiteoutMode, unpack_layer};
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn opts() -> CompareOptions {
    CompareOptions {
        mtimes: true,
        dir_mtimes: false,
        ..CompareOptions::default()
    }
}

/// base/ and changed/ (= base + change set) in a temp dir.
fn base_and_changed(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = tmp.join("base");
    let changed = tmp.join("changed");
    std::fs::create_dir(&base).unwrap();
    make_base_tree(&base);
    copy_tree(&base, &changed).unwrap();
    apply_change_set(&changed);
    (base, changed)
}

/// Unpacks `blob` into `target`, a directory made for it.
fn unpack_into_new(blob: &[u8], media_type: &str, target: &Path) {
    std::fs::create_dir(target).unwrap();
    unpack_layer(blob, media_type, target, &UnpackOptions::default()).unwrap();
}

fn check_descriptor(desc: &LayerDescriptor, blob: &[u8]) {
    assert_eq!(desc.digest.to_string(), sha(blob));
    assert_eq!(desc.size, blob.len() as u64);
    let mut tar = Vec::new();
    decompressor(blob, &desc.media_type)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(desc.diff_id.to_string(), sha(&tar));
    assert_eq!(desc.tar_size, tar.len() as u64);
}

#[test]
fn compare_diff_round_trips_for_every_compression() {
    for compression in [
        Compression::None,
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (base, changed) = base_and_changed(tmp.path());
        let options = LayerOptions {
            compression,
            source_date_epoch: None,
        };
        let changes = Changes::Compare {
            lower: Some(&base),
            upper: &changed,
            copied_at: None,
        };
        let (desc, blob, stats) = write_layer(changes, Vec::new(), options).unwrap();
        check_descriptor(&desc, &blob);
        assert!(stats.whiteouts >= 4, "deletes became whiteouts: {stats:?}");

        let target = tmp.path().join("target");
        copy_tree(&base, &target).unwrap();
        let unpack = UnpackOptions {
            whiteouts: WhiteoutMode::Apply,
            ..UnpackOptions::default()
        };
        unpack_layer(&blob[..], &desc.media_type, &target, &unpack).unwrap();
        assert_trees_equal(&changed, &target, &opts());
    }
}

#[test]
fn unchanged_files_are_not_in_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, changed) = base_and_changed(tmp.path());
    let options = LayerOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    let changes = Changes::Compare {
        lower: Some(&base),
        upper: &changed,
        copied_at: None,
    };
    let (_, tar, _) = write_layer(changes, Vec::new(), options).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let e = e.unwrap();
        names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
        assert_eq!(
            e.header().username_bytes(),
            Some(&b""[..]),
            "numeric owners only"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("unchanged/")),
        "{names:?}"
    );
    assert!(names.contains(&".wh.gone-dir".to_string()), "{names:?}");
    assert!(
        names.contains(&"etc/.wh.delete-me".to_string()),
        "{names:?}"
    );
    // Byte order of full paths, directories before their content.
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| {
        a.trim_end_matches('/')
            .as_bytes()
            .cmp(b.trim_end_matches('/').as_bytes())
    });
    let strip = |v: &Vec<String>| v.iter().map(|n| n.replace(".wh.", "")).collect::<Vec<_>>();
    let mut by_target = strip(&names);
    let expected = by_target.clone();
    by_target.sort_by(|a, b| {
        a.trim_end_matches('/')
            .as_bytes()
            .cmp(b.trim_end_matches('/').as_bytes())
    });
    assert_eq!(expected, by_target, "entries sorted by path");
}

#[test]
fn same_changes_give_the_same_digest() {
    let mut digests = Vec::new();
    for _ in 0..2 {
        let tmp = tempfile::tempdir().unwrap();
        let (base, changed) = base_and_changed(tmp.path());
        // Different wall-clock mtimes each round: the clamp makes them equal.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let options = LayerOptions {
            compression: Compression::Gzip { level: 6 },
            source_date_epoch: Some(1_000_000_000),
        };
        let changes = Changes::Compare {
            lower: Some(&base),
            upper: &changed,
            copied_at: None,
        };
        let (desc, _, _) = write_layer(changes, Vec::new(), options).unwrap();
        digests.push(desc.digest);
        let (desc, _, _) = write_layer(changes, Vec::new(), options).unwrap();
        digests.push(desc.digest);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[test]
fn source_date_epoch_clamps_only_later_mtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("old"), "o").unwrap();
    std::fs::write(dir.join("new"), "n").unwrap();
    let old = std::fs::File::options()
        .write(true)
        .open(dir.join("old"))
        .unwrap();
    old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(500))
        .unwrap();
    let options = LayerOptions {
        compression: Compression::None,
        source_date_epoch: Some(1000),
    };
    let (_, tar, _) = write_layer(Changes::OverlayUpper(&dir), Vec::new(), options).unwrap();
    let mut mtimes = std::collections::BTreeMap::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let e = e.unwrap();
        mtimes.insert(
            e.path().unwrap().display().to_string(),
            e.header().mtime().unwrap(),
        );
    }
    assert_eq!(mtimes["old"], 500);
    assert_eq!(mtimes["new"], 1000);
}

#[test]
fn a_tree_without_parent_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, changed) = base_and_changed(tmp.path());
    let options = LayerOptions::default();
    let changes = Changes::Compare {
        lower: None,
        upper: &changed,
        copied_at: None,
    };
    let (desc, blob, _) = write_layer(changes, Vec::new(), options).unwrap();
    let target = tmp.path().join("target");
    unpack_into_new(&blob, &desc.media_type, &target);
    assert_trees_equal(&changed, &target, &opts());
}

#[test]
fn long_names_and_large_ids_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "f".repeat(120));
    std::fs::create_dir_all(src.join(&deep)).unwrap();
    std::fs::write(src.join(&deep).join("file"), "x").unwrap();
    std::os::unix::fs::symlink("t".repeat(150), src.join("long-link")).unwrap();
    if common::is_root() && !common::in_userns() {
        std::os::unix::fs::lchown(src.join("long-link"), Some(3_000_000), Some(3_000_001)).unwrap();
    }
    let (desc, blob, _) = write_layer(
        Changes::Compare {
            lower: None,
            upper: &src,
            copied_at: None,
        },
        Vec::new(),
        LayerOptions::default(),
    )
    .unwrap();
    let target = tmp.path().join("target");
    unpack_into_new(&blob, &desc.media_type, &target);
    assert_trees_equal(&src, &target, &opts());
}

/// A sink that takes `room` bytes and then fails as a full disk does.
struct FullDisk {
    room: usize,
}

impl std::io::Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            // ENOSPC, as a full disk answers.
            return Err(std::io::Error::from_raw_os_error(28));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The hashing and the compression run on threads of their own; when the sink fails there, the
/// error the walk reports is the sink's (no space left), not the closed pipe between them.
#[test]
fn a_failing_sink_is_the_error_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("upper");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..64 {
        std::fs::write(dir.join(format!("f{i}")), vec![i as u8; 64 * 1024]).unwrap();
    }
    let options = LayerOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    let err = write_layer(
        Changes::OverlayUpper(&dir),
        FullDisk { room: 100_000 },
        options,
    )
    .map(|_| ())
    .unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(chain.contains("No space left"), "{chain}");
    assert!(!chain.contains("compressor stopped"), "{chain}");
}

/// The layer written with the tar's hash and the compression on threads of their own is byte for
/// byte the one written on one thread, for every codec (the plain tar's digest being its
/// diff_id): a build's digests do not depend on it.
#[test]
fn the_piped_layer_is_the_one_thread_layer() {
    use forge_snapshotter::layer::LayerWriter;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("upper");
    for d in 0..8 {
        std::fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for i in 0..40usize {
            // Sizes from empty to several chunks of the pipe, in uneven steps.
            let len = (i * i * 997 + d * 131) % 700_000;
            let bytes: Vec<u8> = (0..len).map(|k| ((k * 31 + i) % 251) as u8).collect();
            std::fs::write(dir.join(format!("d{d}/f{i}")), bytes).unwrap();
        }
    }
    for compression in [
        Compression::None,
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 1 },
        Compression::Zstd { level: 3 },
    ] {
        let options = LayerOptions {
            compression,
            source_date_epoch: Some(1_700_000_000),
        };
        let (piped, piped_blob, _) =
            write_layer(Changes::OverlayUpper(&dir), Vec::new(), options).unwrap();
        let mut one = LayerWriter::new(Vec::new(), options).unwrap();
        forge_snapshotter::diff::walk(Changes::OverlayUpper(&dir), &mut one).unwrap();
        let (inline, inline_blob) = one.finish().unwrap();
        assert_eq!(piped, inline, "{compression:?}");
        assert!(piped_blob == inline_blob, "{compression:?}: blobs differ");
    }
}

/// One layer, however it reaches the codec, is one blob: written straight in gzip, or written in
/// zstd (as a build keeps it in the store) and recompressed to gzip when it leaves. The second path
/// gave other gzip bytes (and so another digest for the same image) while deflate's output
/// followed the writer's call boundaries.
#[test]
fn a_recompressed_layer_is_the_layer_written_in_that_compression() {
    use forge_snapshotter::compress::{Compression as C, recompress};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("upper");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..300usize {
        // Compressible text in uneven sizes, so deflate has matches to choose between.
        let line = format!("line {i} of a file that repeats itself now and then\n");
        std::fs::write(dir.join(format!("f{i}")), line.repeat(1 + i * 37 % 900)).unwrap();
    }
    for (stored, wanted) in [
        (C::Zstd { level: 1 }, C::Gzip { level: 6 }),
        (C::Zstd { level: 1 }, C::Zstd { level: 3 }),
        (C::Gzip { level: 6 }, C::Zstd { level: 1 }),
        (C::None, C::Gzip { level: 9 }),
    ] {
        let options = |compression| LayerOptions {
            compression,
            source_date_epoch: Some(1_700_000_000),
        };
        let (direct, direct_blob, _) =
            write_layer(Changes::OverlayUpper(&dir), Vec::new(), options(wanted)).unwrap();
        let (kept, kept_blob, _) =
            write_layer(Changes::OverlayUpper(&dir), Vec::new(), options(stored)).unwrap();
        assert_eq!(kept.diff_id, direct.diff_id);
        let (digest, size, again) = recompress(
            std::io::Cursor::new(&kept_blob),
            &kept.media_type,
            (kept.digest.as_ref(), kept.diff_id.as_ref()),
            wanted,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(size, direct.size, "{stored:?} -> {wanted:?}: size");
        assert_eq!(digest, direct.digest, "{stored:?} -> {wanted:?}: digest");
        assert!(again == direct_blob, "{stored:?} -> {wanted:?}: bytes");
        // A damaged blob (a byte flipped on disk) is refused, not published re-encoded.
        let mut damaged = kept_blob.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 0x40;
        let refused = recompress(
            std::io::Cursor::new(&damaged),
            &kept.media_type,
            (kept.digest.as_ref(), kept.diff_id.as_ref()),
            wanted,
            Vec::new(),
        );
        match refused {
            Err(e) => assert!(e.to_string().contains("damaged"), "{e}"),
            Ok(_) => panic!("{stored:?} -> {wanted:?}: a damaged blob was re-encoded"),
        }
    }
}

/// The encoder's bytes do not depend on how its input was cut into writes.
#[test]
fn how_the_tar_is_cut_into_writes_does_not_show_in_the_blob() {
    use forge_snapshotter::layer::{Inline, LayerStream};
    use std::io::Write;
    let tar: Vec<u8> = (0..3_000_000usize)
        .map(|k| ((k / 7 % 97) as u8) ^ ((k % 13) as u8))
        .collect();
    for compression in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let mut whole = Inline::new(Vec::new(), compression).unwrap();
        whole.write_all(&tar).unwrap();
        let (want, want_blob) = whole.finish_stream().unwrap();
        // Cuts of 1 byte to ~300 KiB, chosen by a fixed sequence.
        let mut cut = Inline::new(Vec::new(), compression).unwrap();
        let (mut at, mut step) = (0usize, 1usize);
        while at < tar.len() {
            let end = (at + step).min(tar.len());
            cut.write_all(&tar[at..end]).unwrap();
            cut.flush().unwrap();
            at = end;
            step = (step * 7 + 13) % 300_000 + 1;
        }
        let (got, got_blob) = cut.finish_stream().unwrap();
        assert_eq!(got, want, "{compression:?}");
        assert!(got_blob == want_blob, "{compression:?}: blobs differ");
    }
}

/// A file that yields fewer bytes than its header says is refused with both counts, through the
/// threads of a [`write_layer`], whether it ends inside the piece of tar being filled for them or
/// several pieces (of 256 KiB) later.
#[test]
fn a_short_file_is_refused_through_the_pipe() {
    use forge_snapshotter::layer::{EntryKind, EntryMeta, LayerError, LayerWriter, Piped};
    for (expected, actual) in [(1000u64, 10usize), (3 << 18, (1 << 18) + 7)] {
        let options = LayerOptions {
            compression: Compression::Zstd { level: 1 },
            source_date_epoch: None,
        };
        let err = std::thread::scope(|scope| {
            let piped = Piped::spawn(scope, Vec::new(), options.compression).unwrap();
            let mut w = LayerWriter::with_stream(piped, options);
            let meta = EntryMeta {
                size: expected,
                ..EntryMeta::default()
            };
            let mut data: &[u8] = &vec![7u8; actual];
            let err = w
                .append(b"f", &EntryKind::File, &meta, Some(&mut data))
                .unwrap_err();
            let _ = w.into_stream().abort();
            err
        });
        match err {
            LayerError::SizeChanged {
                expected: e,
                actual: a,
                ..
            } => assert_eq!((e, a), (expected, actual as u64)),
            other => panic!("{other:?}"),
        }
    }
}

/// A file dated before 1970 keeps its time through a layer: the header's octal field holds no
/// sign, so the time goes in a PAX `mtime` record as Go's archive/tar (BuildKit) writes it; forge's
/// unpacker and GNU tar both read it back.
#[test]
fn a_time_before_1970_survives_a_layer() {
    const T: i64 = -315_619_200; // 1960-01-01
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("old"), "old").unwrap();
    let set = |p: &Path, t: i64| {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &nix::sys::time::TimeSpec::new(t, 0),
            &nix::sys::time::TimeSpec::new(t, 0),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap()
    };
    set(&tree.join("old"), T);
    let changes = Changes::Compare {
        lower: None,
        upper: &tree,
        copied_at: None,
    };
    // With and without an epoch (a time before it is the file's own either way).
    for epoch in [None, Some(1_700_000_000)] {
        let options = LayerOptions {
            compression: Compression::None,
            source_date_epoch: epoch,
        };
        let (desc, blob, _) = write_layer(changes, Vec::new(), options).unwrap();
        check_descriptor(&desc, &blob);
        let tar = tmp.path().join("layer.tar");
        std::fs::write(&tar, &blob).unwrap();
        let listed = std::process::Command::new("tar")
            .args(["--full-time", "--utc", "-tvf"])
            .arg(&tar)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(
            listed
                .lines()
                .any(|l| l.contains("1960-01-01 00:00:00") && l.ends_with(" old")),
            "{listed}"
        );
        let target = tmp.path().join(format!("unpacked-{}", epoch.is_some()));
        unpack_into_new(&blob, &desc.media_type, &target);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(target.join("old")).unwrap().mtime(), T);
    }
}

/// A step that leaves a Unix socket (gpg-agent, a database started in a RUN) failed its build
/// ("unsupported file type (socket)", naming a path in the store). The layer now leaves sockets
/// out, as containerd's and BuildKit's diffs do, in both ways of finding the changes; a socket
/// over a lower file leaves the lower one showing.
#[test]
fn sockets_are_left_out_of_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
    for d in [&lower, &upper] {
        std::fs::create_dir_all(d.join("run")).unwrap();
    }
    std::fs::write(lower.join("run/was-a-file"), b"lower").unwrap();
    let _agent = std::os::unix::net::UnixListener::bind(upper.join("run/agent.sock")).unwrap();
    let _over = std::os::unix::net::UnixListener::bind(upper.join("run/was-a-file")).unwrap();
    std::fs::write(upper.join("run/kept"), b"kept").unwrap();
    let options = || LayerOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    let names = |tar: &[u8]| -> Vec<String> {
        tar::Archive::new(tar)
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    };
    let compared = Changes::Compare {
        lower: Some(&lower),
        upper: &upper,
        copied_at: None,
    };
    let (_, tar, _) = write_layer(compared, Vec::new(), options()).unwrap();
    assert_eq!(names(&tar), ["run/", "run/kept"]);
    let (_, tar, _) = write_layer(Changes::OverlayUpper(&upper), Vec::new(), options()).unwrap();
    assert_eq!(names(&tar), ["run/", "run/kept"]);
}

/// The two walks a layer is made by, an overlay upper's and the comparison of two trees, write
/// one layer of one tree, byte for byte, and it unpacks to that tree. The directories mix what a
/// walk meets in a package install's layer: small, empty and large files, hard links within a
/// directory and across directories, symlinks, fifos, subdirectories between files, xattrs, and
/// hundreds of files in one directory.
#[test]
fn the_overlay_walk_and_the_compare_walk_write_one_layer_of_one_tree() {
    // The overlay walk reads ahead on worker threads (directories listed, small files read); the
    // compare walk is one thread's: the two tars are equal byte for byte.
    use std::os::unix::fs::{PermissionsExt, symlink};
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for (d, files) in [("many", 300usize), ("some", 40), ("few", 5)] {
        let dir = tree.join(d);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..files {
            let p = dir.join(format!("f{i:03}"));
            let size = match i % 7 {
                0 => 0,
                1 => 40_000 + i,
                2 => 32 << 10,
                _ => 1 + i * 13,
            };
            let bytes: Vec<u8> = (0..size).map(|k| (k * 31 + i) as u8).collect();
            std::fs::write(&p, &bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600 + (i as u32 % 64)))
                .unwrap();
            if i % 11 == 0 {
                symlink(format!("f{i:03}"), dir.join(format!("l{i:03}"))).unwrap();
            }
            if i % 50 == 3 {
                std::fs::create_dir(dir.join(format!("f{i:03}.d"))).unwrap();
                std::fs::write(dir.join(format!("f{i:03}.d/inner")), b"inner").unwrap();
            }
            if i % 97 == 5 {
                // Linked within this directory (a later entry) and from another directory.
                std::fs::hard_link(&p, dir.join(format!("g{i:03}"))).unwrap();
                std::fs::hard_link(&p, tmp.path().join("tree").join(format!("x-{d}-{i}"))).unwrap();
            }
        }
        nix::unistd::mkfifo(
            &dir.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Where the filesystem takes user xattrs, one file carries one.
        let _ = forge_testsupport::set_xattr(&dir.join("f004"), "user.forge.test", b"value");
    }
    // More directories than the overlay walk lists ahead of itself at once, nested, some empty,
    // with files on both sides of the largest it reads ahead (64 KiB).
    for a in 0..6 {
        std::fs::create_dir_all(tree.join(format!("nest/a{a}/empty"))).unwrap();
        for b in 0..5 {
            let dir = tree.join(format!("nest/a{a}/b{b}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4 {
                let bytes = vec![(a * 5 + b + i) as u8; i * 30_000];
                std::fs::write(dir.join(format!("n{i}")), bytes).unwrap();
            }
        }
    }
    let options = || LayerOptions {
        compression: Compression::None,
        ..LayerOptions::default()
    };
    let (upper, tar_upper, stats) =
        write_layer(Changes::OverlayUpper(&tree), Vec::new(), options()).unwrap();
    let (compared, tar_compared, _) = write_layer(
        Changes::Compare {
            lower: None,
            upper: &tree,
            copied_at: None,
        },
        Vec::new(),
        options(),
    )
    .unwrap();
    assert!(stats.entries > 400, "{stats:?}");
    assert_eq!(upper.diff_id, compared.diff_id);
    assert!(
        tar_upper == tar_compared,
        "the two walks wrote different tars"
    );
    check_descriptor(&upper, &tar_upper);
    let target = tmp.path().join("target");
    unpack_into_new(&tar_upper, &upper.media_type, &target);
    assert_trees_equal(&tree, &target, &opts());
}
