//! The content store: verified ingest, records and reference counts, prune policies, and the two
//! promises that need other processes to test: `kill -9` at any moment leaves a usable store, and
//! several processes ingesting the same blobs at once neither corrupt it nor clash.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use forge_snapshotter::store::{
    Descriptor, Digest, ImageRecord, Ingest, Lease, PrunePolicy, Store, StoreError,
};

/// Deterministic pseudo-random bytes (xorshift), so parent and children agree on content.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn desc(d: &Digest, size: usize) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: d.clone(),
        size: size as u64,
    }
}

fn image(name: &str, blobs: &[(Digest, usize)]) -> ImageRecord {
    let (manifest, rest) = blobs.split_first().expect("at least a manifest");
    let (config, layers) = rest.split_first().expect("and a config");
    ImageRecord {
        reference: name.to_string(),
        index: None,
        manifest: desc(&manifest.0, manifest.1),
        config: desc(&config.0, config.1),
        layers: layers.iter().map(|(d, s)| desc(d, *s)).collect(),
        platform: "linux/amd64".into(),
        recorded_unix: 0,
    }
}

/// Blobs of `len` bytes from each seed, written to the store, with their sizes.
fn write_blobs(store: &Store, seeds: std::ops::Range<u64>, len: usize) -> Vec<(Digest, usize)> {
    seeds
        .map(|seed| {
            let b = content(seed, len);
            (store.write_blob(&b, None).unwrap(), b.len())
        })
        .collect()
}

fn ingest_files(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect()
}

#[test]
fn write_read_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = content(1, 100_000);
    let d = store.write_blob(&bytes, None).unwrap();
    assert_eq!(d, Digest::of(&bytes));
    assert!(store.has_blob(&d));
    assert_eq!(store.read_blob(&d).unwrap(), bytes);
    assert_eq!(store.blob_size(&d).unwrap(), 100_000);
    assert_eq!(
        store.blob_path(&d),
        dir.path().join("blobs/sha256").join(d.hex())
    );
    // Writing it again is a no-op that reports it present.
    assert!(matches!(
        store.ingest(&d, Some(100_000)).unwrap(),
        Ingest::Present
    ));
}

#[test]
fn wrong_bytes_never_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let claimed = Digest::of(b"the real content");
    let err = store
        .write_blob(b"other content", Some(&claimed))
        .unwrap_err();
    match err {
        StoreError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(b"other content"));
        }
        other => panic!("want a digest mismatch, got {other}"),
    }
    // Streamed through the writer too: verified at commit, temp file gone, no blob.
    let Ingest::Write(mut w) = store.ingest(&claimed, None).unwrap() else {
        panic!("blob cannot be present")
    };
    w.write_chunk(b"other content").unwrap();
    let err = w.commit().unwrap_err();
    assert!(
        err.to_string().contains(&claimed.to_string()),
        "error names the digest: {err}"
    );
    assert!(!store.has_blob(&claimed));
    assert!(!store.has_blob(&Digest::of(b"other content")));
    assert!(ingest_files(dir.path()).is_empty());
}

#[test]
fn more_bytes_than_announced_stop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = content(2, 1000);
    let d = Digest::of(&bytes);
    let Ingest::Write(mut w) = store.ingest(&d, Some(10)).unwrap() else {
        panic!()
    };
    let err = w.write_chunk(&bytes).unwrap_err();
    assert!(matches!(
        err,
        StoreError::SizeMismatch {
            expected: 10,
            actual: 1000,
            ..
        }
    ));
    drop(w);
    assert!(!store.has_blob(&d));
    assert!(ingest_files(dir.path()).is_empty());
}

#[test]
fn records_and_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let blobs = write_blobs(&store, 10..14, 1000);
    let a = image("example.com/a:1", &blobs[0..3]);
    // b shares the config and first layer with a.
    let b = image(
        "example.com/b:1",
        &[blobs[3].clone(), blobs[1].clone(), blobs[2].clone()],
    );
    store.put_image(&a).unwrap();
    store.put_image(&b).unwrap();
    assert_eq!(
        store.get_image("example.com/a:1").unwrap().as_ref(),
        Some(&a)
    );
    assert_eq!(store.list_images().unwrap().len(), 2);
    assert_eq!(store.refcount(&blobs[0].0).unwrap(), 1);
    assert_eq!(store.refcount(&blobs[1].0).unwrap(), 2);
    assert_eq!(store.refcount(&blobs[2].0).unwrap(), 2);
    // Re-recording the same image does not double count.
    store.put_image(&a).unwrap();
    assert_eq!(store.refcount(&blobs[1].0).unwrap(), 2);
    assert!(store.remove_image("example.com/a:1").unwrap());
    assert!(!store.remove_image("example.com/a:1").unwrap());
    assert_eq!(store.refcount(&blobs[0].0).unwrap(), 0);
    assert_eq!(store.refcount(&blobs[1].0).unwrap(), 1);
    // Other roots (cache records) count the same way.
    store
        .set_root("cache", "key1", &[blobs[0].0.clone()])
        .unwrap();
    assert_eq!(store.refcount(&blobs[0].0).unwrap(), 1);
    store.remove_root("cache", "key1").unwrap();
    assert_eq!(store.refcount(&blobs[0].0).unwrap(), 0);
    assert!(store.check().unwrap().is_clean());
}

/// A build's results are held in one call: every root gets its blobs and counts, a root set again
/// moves its counts, and nothing to hold writes nothing.
#[test]
fn many_roots_are_set_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let blobs = write_blobs(&store, 80..84, 300);
    let d = |i: usize| blobs[i].0.clone();
    let (ab, bc) = ([d(0), d(1)], [d(1), d(2)]);
    store
        .set_roots("cache", &[("k1", &ab[..]), ("k2", &bc[..])])
        .unwrap();
    // Roots keep their blobs sorted.
    let sorted = |ds: &[Digest]| {
        let mut v = ds.to_vec();
        v.sort();
        v
    };
    let mut roots = store.roots("cache").unwrap();
    roots.sort();
    assert_eq!(
        roots,
        [
            ("k1".to_string(), sorted(&ab)),
            ("k2".to_string(), sorted(&bc))
        ]
    );
    let counts =
        |store: &Store| -> Vec<u64> { (0..4).map(|i| store.refcount(&d(i)).unwrap()).collect() };
    assert_eq!(counts(&store), [1, 2, 1, 0]);
    // k2 moves to the fourth blob; k3 is new.
    let (dd, a) = ([d(3)], [d(0)]);
    store
        .set_roots("cache", &[("k2", &dd[..]), ("k3", &a[..])])
        .unwrap();
    assert_eq!(counts(&store), [2, 1, 0, 1]);
    let meta = std::fs::read(dir.path().join("meta.redb")).unwrap();
    store.set_roots::<&str, &[Digest]>("cache", &[]).unwrap();
    assert!(std::fs::read(dir.path().join("meta.redb")).unwrap() == meta);
    assert!(store.check().unwrap().is_clean());
}

/// A store's metadata file is made by its first write: opening a store, and reading one that has
/// none (or one whose tables were never committed, as a crash at its first write can leave),
/// find an empty store and write nothing; the first record makes the file with every table.
#[test]
fn the_metadata_file_is_made_by_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.redb");
    let store = Store::open(dir.path()).unwrap();
    let blobs = write_blobs(&store, 90..92, 400);
    let reads_as_empty = |store: &Store| {
        assert!(store.list_images().unwrap().is_empty());
        assert!(store.get_image("example.com/none:1").unwrap().is_none());
        assert!(store.roots("cache").unwrap().is_empty());
        assert_eq!(store.refcount(&blobs[0].0).unwrap(), 0);
        assert!(store.check().unwrap().is_clean());
    };
    reads_as_empty(&store);
    Store::open(dir.path()).unwrap();
    assert!(!meta.exists(), "opening and reading made the metadata file");

    // A file redb made, without the tables: read as empty, left as it is, and completed by the
    // next write.
    drop(redb::Database::create(&meta).unwrap());
    let before = std::fs::read(&meta).unwrap();
    let store = Store::open(dir.path()).unwrap();
    reads_as_empty(&store);
    assert!(std::fs::read(&meta).unwrap() == before);

    let a = image("example.com/first:1", &blobs);
    store.put_image(&a).unwrap();
    let again = Store::open(dir.path()).unwrap();
    assert_eq!(
        again.get_image("example.com/first:1").unwrap().as_ref(),
        Some(&a)
    );
    assert_eq!(again.refcount(&blobs[0].0).unwrap(), 1);
    // Every table is there for readers, not only the ones the first write used.
    assert!(again.roots("cache").unwrap().is_empty());
    assert!(again.check().unwrap().is_clean());
}

/// Images and roots recorded by one call: all of them there after it, with the reference counts
/// of both; an image recorded again unchanged with no roots leaves the file alone.
#[test]
fn images_and_roots_are_recorded_together() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.redb");
    let store = Store::open(dir.path()).unwrap();
    let blobs = write_blobs(&store, 95..98, 300);
    let a = image("example.com/together:1", &blobs[..2]);
    let b = image("example.com/together:2", &blobs[..2]);
    let (d0, d2) = (blobs[0].0.clone(), blobs[2].0.clone());
    let step1 = [d0.clone()];
    let step2 = [d0.clone(), d2.clone()];
    store
        .record(
            &[a.clone(), b.clone()],
            &[("cache", "k1", &step1[..]), ("cache", "k2", &step2[..])],
        )
        .unwrap();
    assert_eq!(store.list_images().unwrap().len(), 2);
    assert_eq!(store.roots("cache").unwrap().len(), 2);
    // d0: both images and both roots; d2: one root.
    assert_eq!(store.refcount(&d0).unwrap(), 4);
    assert_eq!(store.refcount(&d2).unwrap(), 1);
    assert!(store.check().unwrap().is_clean());
    let before = std::fs::read(&meta).unwrap();
    store.record(std::slice::from_ref(&a), &[]).unwrap();
    assert!(std::fs::read(&meta).unwrap() == before);
}

/// Opening the store again, reading a record and recording an unchanged image (at any time)
/// write nothing to the metadata file (a rebuild that changes nothing syncs nothing); a changed
/// record is written.
#[test]
fn unchanged_records_leave_the_metadata_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.redb");
    let bytes = || std::fs::read(&meta).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let blobs = write_blobs(&store, 70..72, 500);
    let a = image("example.com/same:1", &blobs);
    store.put_image(&a).unwrap();
    let before = bytes();
    let again = Store::open(dir.path()).unwrap();
    again.put_image(&a).unwrap();
    assert_eq!(
        again.get_image("example.com/same:1").unwrap().as_ref(),
        Some(&a)
    );
    assert!(
        bytes() == before,
        "an unchanged record rewrote the metadata file"
    );
    // Recorded again later, as a rebuild or a base resolved anew records it: still nothing
    // written, and the first time stays.
    let later = ImageRecord {
        recorded_unix: a.recorded_unix + 60,
        ..a.clone()
    };
    again.put_image(&later).unwrap();
    assert!(
        bytes() == before,
        "a record that differs only in its time rewrote the metadata file"
    );
    assert_eq!(
        again.get_image("example.com/same:1").unwrap().as_ref(),
        Some(&a)
    );
    let mut changed = a.clone();
    changed.platform = "linux/arm64".to_string();
    again.put_image(&changed).unwrap();
    assert!(bytes() != before, "a changed record was not written");
    assert_eq!(
        again.get_image("example.com/same:1").unwrap().as_ref(),
        Some(&changed)
    );
}

#[test]
fn prune_keeps_referenced_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let write = |seed, len| {
        let b = content(seed, len);
        (store.write_blob(&b, None).unwrap(), len)
    };
    let referenced = vec![write(20, 500), write(21, 600), write(22, 700)];
    let leased = write(23, 800);
    let cached = write(24, 900);
    let garbage = vec![write(25, 1000), write(26, 1100)];
    let expired = write(27, 1200);
    store
        .put_image(&image("example.com/keep:1", &referenced))
        .unwrap();
    store
        .set_root("cache", "k", std::slice::from_ref(&cached.0))
        .unwrap();
    store
        .put_lease(&Lease {
            id: "build-1".into(),
            digests: vec![leased.0.clone()],
            expires_unix: None,
        })
        .unwrap();
    store
        .put_lease(&Lease {
            id: "old".into(),
            digests: vec![expired.0.clone()],
            expires_unix: Some(1),
        })
        .unwrap();

    // An age policy that nothing meets removes nothing.
    let report = store
        .prune(&PrunePolicy {
            older_than: Some(Duration::from_secs(3600)),
            keep_bytes: None,
        })
        .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(garbage.iter().all(|(d, _)| store.has_blob(d)));
    // The expired lease is dropped whatever the policy; its blob is now plain garbage.
    assert_eq!(report.expired_leases, vec!["old".to_string()]);

    let report = store.prune(&PrunePolicy::default()).unwrap();
    let mut removed = report.removed.clone();
    removed.sort();
    let mut want: Vec<Digest> = garbage
        .iter()
        .chain([&expired])
        .map(|(d, _)| d.clone())
        .collect();
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(report.freed_bytes, 1000 + 1100 + 1200);
    for (d, _) in referenced.iter().chain([&leased, &cached]) {
        assert!(store.has_blob(d), "{d} must survive");
    }
    for (d, _) in &garbage {
        assert!(!store.has_blob(d), "{d} must go");
    }

    // Once the image and the lease go, so do their blobs.
    store.remove_image("example.com/keep:1").unwrap();
    store.remove_lease("build-1").unwrap();
    let report = store.prune(&PrunePolicy::default()).unwrap();
    assert_eq!(report.removed.len(), 4);
    assert!(store.has_blob(&cached.0));
    assert_eq!(report.kept_blobs, 1);
    assert!(store.check().unwrap().is_clean());
}

#[test]
fn prune_byte_budget_removes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut blobs = Vec::new();
    for i in 0..4u64 {
        let b = content(30 + i, 1000);
        let d = store.write_blob(&b, None).unwrap();
        // Distinct mtimes without sleeping: oldest first in seed order.
        let f = std::fs::File::options()
            .write(true)
            .open(store.blob_path(&d))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i))
            .unwrap();
        blobs.push(d);
    }
    let report = store
        .prune(&PrunePolicy {
            older_than: None,
            keep_bytes: Some(2500),
        })
        .unwrap();
    assert_eq!(report.removed, vec![blobs[0].clone(), blobs[1].clone()]);
    assert_eq!(report.kept_bytes, 2000);
    assert!(store.has_blob(&blobs[2]) && store.has_blob(&blobs[3]));
}

#[test]
fn unpacked_layer_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rec = forge_snapshotter::store::UnpackedLayer {
        layer: Digest::of(b"layer"),
        diff_id: Some(Digest::of(b"tar")),
        snapshot: "sha256:chain".into(),
        size: 42,
        recorded_unix: 7,
    };
    store.put_unpacked("chain-1", &rec).unwrap();
    assert_eq!(store.get_unpacked("chain-1").unwrap(), Some(rec.clone()));
    assert_eq!(
        store.list_unpacked().unwrap(),
        vec![("chain-1".into(), rec)]
    );
    assert!(store.remove_unpacked("chain-1").unwrap());
    assert_eq!(store.get_unpacked("chain-1").unwrap(), None);
}

#[test]
fn threads_ingesting_one_blob_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = Arc::new(content(40, 2 << 20));
    let digest = Digest::of(&bytes);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, bytes, digest, barrier) = (
                store.clone(),
                bytes.clone(),
                digest.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                match store.ingest(&digest, Some(bytes.len() as u64)).unwrap() {
                    Ingest::Present => false,
                    Ingest::Write(mut w) => {
                        for chunk in bytes.chunks(64 << 10) {
                            w.write_chunk(chunk).unwrap();
                        }
                        w.commit().unwrap();
                        true
                    }
                }
            })
        })
        .collect();
    let writers = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|wrote| *wrote)
        .count();
    assert_eq!(writers, 1, "exactly one thread writes, the rest find it");
    assert_eq!(store.read_blob(&digest).unwrap().as_slice(), &bytes[..]);
}

// ---- helpers run as separate processes (this test binary re-executed) ----

const CHILD_ROOT: &str = "FORGE_STORE_TEST_ROOT";
const CHILD_ID: &str = "FORGE_STORE_TEST_ID";

fn spawn_helper(name: &str, root: &Path, id: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, root)
        .env(CHILD_ID, id.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn helper_env() -> Option<(PathBuf, u64)> {
    let root = std::env::var_os(CHILD_ROOT)?;
    let id = std::env::var(CHILD_ID).ok()?.parse().ok()?;
    Some((PathBuf::from(root), id))
}

/// Writes blobs slowly forever (until killed), recording an image after each few, so that a
/// kill lands in the middle of a blob, a rename or a database commit.
#[test]
#[ignore = "helper process for kill_dash_9_at_any_moment_leaves_a_usable_store"]
fn helper_endless_writer() {
    let Some((root, id)) = helper_env() else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let mut recorded = Vec::new();
    for i in 0u64.. {
        let seed = id * 1_000_000 + i;
        let bytes = content(seed, 256 * 1024 + (seed as usize % 7) * 65536);
        let d = Digest::of(&bytes);
        let session = store.session().unwrap();
        if let Ingest::Write(mut w) = store.ingest(&d, Some(bytes.len() as u64)).unwrap() {
            for chunk in bytes.chunks(16 * 1024) {
                w.write_chunk(chunk).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            w.commit().unwrap();
        }
        recorded.push((d, bytes.len()));
        if recorded.len() >= 3 {
            store
                .put_image(&image(&format!("example.com/crash/{id}:{i}"), &recorded))
                .unwrap();
            recorded.clear();
        }
        drop(session);
    }
}

/// Ingests a fixed set of shared blobs plus its own, then records an image of them.
#[test]
#[ignore = "helper process for processes_ingesting_the_same_blobs_do_not_clash"]
fn helper_concurrent_ingester() {
    let Some((root, id)) = helper_env() else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let mut blobs = Vec::new();
    for seed in (0..6).chain(100 + id * 10..100 + id * 10 + 3) {
        let bytes = content(seed, 512 * 1024);
        let d = Digest::of(&bytes);
        let session = store.session().unwrap();
        if let Ingest::Write(mut w) = store.ingest(&d, Some(bytes.len() as u64)).unwrap() {
            for chunk in bytes.chunks(32 * 1024) {
                w.write_chunk(chunk).unwrap();
            }
            w.commit().unwrap();
        }
        drop(session);
        blobs.push((d, bytes.len()));
    }
    store
        .put_image(&image(&format!("example.com/concurrent:{id}"), &blobs))
        .unwrap();
}

/// Makes the metadata file of one new store after another (until killed), so that a kill lands
/// while redb makes one.
#[test]
#[ignore = "helper process for a_kill_while_the_metadata_file_is_made_leaves_none_half_made"]
fn helper_metadata_maker() {
    let Some((root, _)) = helper_env() else {
        return;
    };
    for i in 0u64.. {
        let store = Store::open(root.join(format!("s{i}"))).unwrap();
        store.make_metadata().unwrap();
    }
}

fn kill_9(mut child: Child) {
    // std's kill is SIGKILL on Unix: no destructor, no flush, no cleanup in the child.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn kill_dash_9_at_any_moment_leaves_a_usable_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    Store::open(&root).unwrap();
    let mut killed_mid_blob = 0;
    for round in 0..8u64 {
        let child = spawn_helper("helper_endless_writer", &root, round);
        let deadline = Instant::now() + Duration::from_secs(60);
        if round % 2 == 0 {
            // Wait until the child is inside a blob: a temp file with some bytes in it.
            loop {
                let partial = ingest_files(&root)
                    .iter()
                    .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
                if partial {
                    killed_mid_blob += 1;
                    break;
                }
                assert!(Instant::now() < deadline, "child never started a blob");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // Anywhere: a spread of moments, some of them in commits.
            std::thread::sleep(Duration::from_millis(150 + round * 97));
        }
        kill_9(child);

        let store = Store::open(&root).unwrap();
        assert!(
            ingest_files(&root).is_empty(),
            "round {round}: open must remove the dead writer's temp files"
        );
        let report = store.check().unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
        for img in store.list_images().unwrap() {
            for d in img.blobs() {
                assert!(
                    store.has_blob(&d),
                    "round {round}: {d} of {}",
                    img.reference
                );
            }
        }
        // The store still takes writes.
        store
            .write_blob(format!("after round {round}").as_bytes(), None)
            .unwrap();
    }
    assert!(killed_mid_blob >= 4);
    let store = Store::open(&root).unwrap();
    assert!(
        !store.list_images().unwrap().is_empty(),
        "children recorded images between kills"
    );
}

/// redb refuses ever after a file it began and did not finish ("not a redb database"): the
/// metadata file is made under another name and renamed whole, so a process killed at any moment
/// of it leaves each store either without the file (read as empty) or with a whole one, and the
/// next write works and leaves no leftover behind.
#[test]
fn a_kill_while_the_metadata_file_is_made_leaves_none_half_made() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for round in 0..6u64 {
        let stores = root.join(format!("round{round}"));
        std::fs::create_dir_all(&stores).unwrap();
        let child = spawn_helper("helper_metadata_maker", &stores, round);
        // Once it has made one, at a spread of moments: a store's file takes it milliseconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stores.join("s0/meta.redb").exists() {
            assert!(Instant::now() < deadline, "the child never made a file");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        kill_9(child);
        let mut made = 0;
        for entry in std::fs::read_dir(&stores).unwrap() {
            let path = entry.unwrap().path();
            let had_file = path.join("meta.redb").exists();
            let store = Store::open(&path).unwrap();
            assert!(
                store.list_images().unwrap().is_empty(),
                "round {round}: {} reads",
                path.display()
            );
            let blobs = write_blobs(&store, 300..302, 300);
            store
                .put_image(&image("example.com/after:1", &blobs))
                .unwrap_or_else(|e| panic!("round {round}: {} takes a write: {e}", path.display()));
            assert_eq!(store.refcount(&blobs[0].0).unwrap(), 1);
            let leftovers: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("meta.redb.new-"))
                .collect();
            assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
            made += usize::from(had_file);
        }
        assert!(made > 0, "round {round}: the child made no store's file");
    }
}

#[test]
fn processes_ingesting_the_same_blobs_do_not_clash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    Store::open(&root).unwrap();
    let children: Vec<Child> = (0..4)
        .map(|id| spawn_helper("helper_concurrent_ingester", &root, id))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "helper failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(&root).unwrap();
    let report = store.check().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs, 6 + 4 * 3);
    assert_eq!(store.list_images().unwrap().len(), 4);
    for seed in 0..6 {
        let d = Digest::of(&content(seed, 512 * 1024));
        assert_eq!(store.refcount(&d).unwrap(), 4, "shared blob {seed}");
    }
    assert!(ingest_files(&root).is_empty());
}

/// A store directory another user made where others may write (`/tmp/shared` at 0777) let that
/// user read what the build kept and replace its metadata: it is refused, naming owner and mode.
/// One of forge's own user is made 0700 (a setuid file a root step left in a snapshot was run by
/// any local user through the open path).
#[test]
fn a_store_another_user_may_change_is_refused_and_an_own_one_made_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !forge_testsupport::is_root() {
        eprintln!("SKIP: chowning a directory to another user needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    nix::unistd::chown(&shared, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    match Store::open(&shared) {
        Err(e @ StoreError::NotOwn { .. }) => {
            let said = e.to_string();
            assert!(said.contains("belongs to uid 65534"), "{said}");
            assert!(said.contains("mode 777"), "{said}");
        }
        other => panic!("{other:?}"),
    }
    // Another user's directory others may not write (root may still use it, as before).
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    Store::open(&shared).unwrap();

    let own = tmp.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o777)).unwrap();
    Store::open(&own).unwrap();
    assert_eq!(std::fs::metadata(&own).unwrap().mode() & 0o7777, 0o700);
}
