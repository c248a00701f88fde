//! Issue 11.6, "disk never given back": `forge prune` empties a store whose images are gone (blobs,
//! snapshots, cache records, cache mounts, partial unpacks, dead builds' leftovers) while a running
//! build's scratch stays, `forge store check` finds and repairs damage, and `rmi` and `prune` work
//! on a full disk. Builds are `FROM scratch` with the host's busybox; no registry is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use forge_snapshotter::lock::LiveDir;

mod common;
use common::{forge, printed as text};
use forge_snapshotter::snapshot::{AnySnapshotter, Snapshotter};

fn prerequisites(purpose: &str) -> bool {
    forge_testsupport::root_and_busybox(purpose)
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = forge(root, args);
    assert!(out.status.success(), "forge {args:?}:\n{}", text(&out));
    text(&out)
}

/// Builds `tag` from a busybox context whose RUN writes `word` to the image and to a cache mount.
fn build(dir: &Path, root: &Path, tag: &str, word: &str) {
    let ctx = forge_testsupport::Context::busybox(dir.join(format!("ctx-{word}")))
        .dockerfile(&format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN --mount=type=cache,id=gc,target=/cache [\"/bin/busybox\", \"sh\", \"-c\", \
             \"echo {word} > /cache/{word}; echo {word} > /{word}\"]\n"
        ))
        .into_path();
    ok(
        root,
        &["build", "-q", "-t", tag, ctx.to_str().expect("utf-8 path")],
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn cache_mount_instances(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for cache in names(&root.join("cache-mounts/v1")) {
        let dir = root.join("cache-mounts/v1").join(cache);
        for n in names(&dir) {
            if n.parse::<u32>().is_ok() {
                out.push(dir.join(n));
            }
        }
    }
    out
}

#[test]
fn prune_all_after_rmi_leaves_an_empty_consistent_store_but_a_running_builds_scratch() {
    if !prerequisites("builds with RUN steps and cache mounts") {
        return;
    }
    let tmp = forge_testsupport::scratch("forge-gc-");
    let root = tmp.path().join("store");
    build(tmp.path(), &root, "gc-one:1", "one");
    build(tmp.path(), &root, "gc-two:1", "two");
    assert!(!names(&root.join("blobs/sha256")).is_empty());
    assert!(!cache_mount_instances(&root).is_empty());

    // What a killed unpack leaves: an extract-* snapshot whose writer's lock nobody holds.
    let sn = AnySnapshotter::open(&root.join("snapshots"), None).unwrap();
    sn.prepare("extract-00000000deadbeef sha256:00", None)
        .unwrap();
    std::fs::write(
        sn.writable_dir("extract-00000000deadbeef sha256:00")
            .unwrap()
            .join("partial"),
        vec![7u8; 256 * 1024],
    )
    .unwrap();
    // A build that died, and one that runs (this process holds its lock).
    let dead = root.join("tmp/build-0000000000000000");
    std::fs::create_dir_all(dead.join("download")).unwrap();
    std::fs::write(dead.join("download/f"), vec![1u8; 64 * 1024]).unwrap();
    let live = LiveDir::create(&root.join("tmp"), "build-1111111111111111").unwrap();
    std::fs::write(live.path().join("in-use"), b"x").unwrap();

    ok(&root, &["rmi", "gc-one:1"]);
    ok(&root, &["rmi", "gc-two:1"]);
    let out = ok(&root, &["prune", "--all"]);
    eprintln!("prune --all after rmi of both images (a build running):\n{out}");
    assert!(
        out.contains("kept every snapshot: a build is running"),
        "{out}"
    );
    assert!(
        live.path().join("in-use").exists(),
        "a running build's scratch stays"
    );
    assert!(!dead.exists(), "a dead build's scratch goes");
    assert!(
        out.contains("removed 1 partial unpacks"),
        "the dead extract goes: {out}"
    );

    // With the build over, the snapshots go too.
    drop(live);
    let out = ok(&root, &["prune", "--all"]);
    eprintln!("prune --all, no build running:\n{out}");
    assert_eq!(names(&root.join("blobs/sha256")), Vec::<String>::new());
    assert_eq!(sn.list().unwrap(), vec![]);
    assert_eq!(
        names(&root.join("snapshots/snapshots")),
        Vec::<String>::new()
    );
    let records: Vec<String> = names(&root.join("build-cache"))
        .into_iter()
        .filter(|n| n.ends_with(".rec"))
        .collect();
    assert_eq!(records, Vec::<String>::new());
    assert_eq!(cache_mount_instances(&root), Vec::<PathBuf>::new());
    assert_eq!(names(&root.join("tmp")), Vec::<String>::new());
    let check = ok(&root, &["store", "check"]);
    assert!(check.contains("the store is consistent"), "{check}");
}

#[test]
fn store_check_finds_a_corrupt_blob_and_repair_lets_the_next_build_remake_it() {
    if !prerequisites("builds with RUN steps") {
        return;
    }
    let tmp = forge_testsupport::scratch("forge-gc-check-");
    let root = tmp.path().join("store");
    build(tmp.path(), &root, "gc-check:1", "check");
    assert!(ok(&root, &["store", "check"]).contains("the store is consistent"));
    // Damage every layer blob (the biggest files): the image and the cache records name them.
    let blobs = root.join("blobs/sha256");
    for name in names(&blobs) {
        let p = blobs.join(&name);
        if std::fs::metadata(&p).unwrap().len() > 4096 {
            std::fs::write(&p, b"not what the digest says").unwrap();
        }
    }
    let found = forge(&root, &["store", "check"]);
    assert_eq!(found.status.code(), Some(1), "{}", text(&found));
    assert!(text(&found).contains("corrupt blob"), "{}", text(&found));
    let repaired = ok(&root, &["store", "check", "--repair"]);
    eprintln!("store check --repair:\n{repaired}");
    assert!(repaired.contains("dropped image"), "{repaired}");
    assert!(ok(&root, &["store", "check"]).contains("the store is consistent"));
    build(tmp.path(), &root, "gc-check:1", "check");
    assert!(ok(&root, &["store", "check"]).contains("the store is consistent"));
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = forge_testsupport::scratch("forge-gc-full-");
        forge_testsupport::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    // Small writes take the last partial blocks.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    written
}

#[test]
fn rmi_and_prune_work_on_a_full_disk() {
    if !prerequisites("mounting a small tmpfs and building on it") {
        return;
    }
    let fs = Tmpfs::mount("32m");
    let root = fs.dir.path().join("store");
    build(fs.dir.path(), &root, "gc-full:1", "full");
    assert!(root.join("reserve").exists(), "the store keeps a reserve");
    let filled = fill(&fs.dir.path().join("filler"));
    eprintln!("filled the tmpfs with {filled} more bytes");
    // Nothing else fits now: a plain file write fails.
    assert!(std::fs::write(fs.dir.path().join("more"), vec![0u8; 8192]).is_err());

    let rmi = ok(&root, &["rmi", "gc-full:1"]);
    assert!(rmi.contains("removed"), "{rmi}");
    let out = ok(&root, &["prune", "--all"]);
    eprintln!("prune --all on a full disk:\n{out}");
    assert_eq!(names(&root.join("blobs/sha256")), Vec::<String>::new());
    std::fs::remove_file(fs.dir.path().join("filler")).unwrap();
    let check = ok(&root, &["store", "check"]);
    assert!(check.contains("the store is consistent"), "{check}");
    // The next command that opens the store makes the reserve again.
    assert!(root.join("reserve").exists());
}

/// Bytes used on the filesystem holding `path` (statvfs), for the figures this test prints.
fn used_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    (st.blocks() - st.blocks_free()) * st.fragment_size()
}

/// Issue 11, "a build on a full small filesystem fails clearly, `forge prune` then frees space,
/// and the store passes the check". A RUN step writes 36 MB that cannot be compressed onto a
/// 64 MiB filesystem: the step itself fits, the layer forge then writes does not. The build fails
/// naming the full disk; the image built before is intact; prune gives the space back; the next
/// build that needs the space succeeds.
#[test]
fn a_build_on_a_full_small_filesystem_fails_clearly_and_prune_frees_the_space() {
    if !prerequisites("mounting a small tmpfs and building on it") {
        return;
    }
    let fs = Tmpfs::mount("64m");
    let root = fs.dir.path().join("store");
    build(fs.dir.path(), &root, "gc-small:1", "small");
    let big = |n: u32| {
        forge_testsupport::Context::busybox(fs.dir.path().join(format!("ctx-big-{n}")))
            .dockerfile(&format!(
                "FROM scratch\nCOPY busybox /bin/busybox\n\
                 RUN [\"/bin/busybox\", \"sh\", \"-c\", \
                 \"/bin/busybox dd if=/dev/urandom of=/big bs=1M count={n} 2>&1\"]\n"
            ))
            .into_path()
    };
    let ctx = big(36);
    let before = used_bytes(fs.dir.path());
    let out = forge(
        &root,
        &["build", "--progress", "plain", ctx.to_str().unwrap()],
    );
    let log = text(&out);
    assert!(!out.status.success(), "36 MB layer fitted:\n{log}");
    assert!(
        log.contains("No space left on device"),
        "the error does not name the full disk:\n{log}"
    );
    assert!(
        log.contains("hint: a disk is full (the one of the path above)"),
        "{log}"
    );
    let after_failure = used_bytes(fs.dir.path());
    eprintln!("the failed build said:\n{log}");

    // Nothing built before is lost: the image and its blobs are whole.
    let images = ok(&root, &["images"]);
    assert!(images.contains("gc-small"), "{images}");
    let check = ok(&root, &["store", "check"]);
    assert!(check.contains("the store is consistent"), "{check}");

    let prune = ok(&root, &["prune"]);
    let after_prune = used_bytes(fs.dir.path());
    eprintln!(
        "used before the failing build: {before} B; after it failed: {after_failure} B; \
         after prune: {after_prune} B\nprune said:\n{prune}"
    );
    assert!(
        after_prune <= before + 4 * 1024 * 1024,
        "the failed build's space was not given back: {after_prune} B used, {before} B before"
    );
    let check = ok(&root, &["store", "check"]);
    assert!(check.contains("the store is consistent"), "{check}");
    let images = ok(&root, &["images"]);
    assert!(images.contains("gc-small"), "{images}");

    // The space is usable again: a build needing 20 MB of it succeeds.
    let ctx = big(20);
    ok(
        &root,
        &["build", "-q", "-t", "gc-small:2", ctx.to_str().unwrap()],
    );
}
