//! Issue 11: a chaos test. Builds, `forge images` and `forge prune` run in parallel loops on one
//! store for a bounded time (`FORGE_CHAOS_SECS`, 20 s by default); every command succeeds (or a build
//! fails with a clear error, which this test would print and count as a defect: none is expected),
//! and `forge store check` finds the store consistent afterwards. Builds are `FROM scratch` with the
//! host's busybox; no registry is needed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{forge, printed as text};

/// A context whose RUN step writes `n` into a layer and a cache mount, so each round makes new
/// blobs, snapshots, a cache record and cache-mount content for prune to find.
fn context(dir: &Path, lane: usize, n: usize) -> PathBuf {
    forge_testsupport::Context::busybox(dir.join(format!("ctx-{lane}-{n}")))
        .dockerfile(&format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN --mount=type=cache,id=chaos,target=/cache [\"/bin/busybox\", \"sh\", \"-c\", \
             \"echo {lane}-{n} > /cache/{lane}-{n}; /bin/busybox head -c 300000 /dev/urandom > /data-{n}\"]\n\
             COPY busybox /again\n"
        ))
        .into_path()
}

#[test]
fn builds_images_and_prune_in_parallel_leave_a_consistent_store() {
    if !forge_testsupport::root_and_busybox("RUN steps with the embedded runner") {
        return;
    }
    let secs: u64 = std::env::var("FORGE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let tmp = forge_testsupport::scratch("forge-chaos-");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let stop = AtomicBool::new(false);
    let builds = AtomicUsize::new(0);
    let listed = AtomicUsize::new(0);
    let pruned = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::<String>::new());

    std::thread::scope(|s| {
        for lane in 0..2 {
            let (root, tmp, builds, failures, stop) =
                (&root, tmp.path(), &builds, &failures, &stop);
            s.spawn(move || {
                let mut n = 0;
                while Instant::now() < deadline {
                    let ctx = context(tmp, lane, n % 3);
                    let tag = format!("127.0.0.1:5000/forge-test/chaos-{lane}:{n}");
                    let out = forge(root, &["build", "-q", "-t", &tag, ctx.to_str().unwrap()]);
                    if !out.status.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("build {tag}: {}", text(&out)));
                    }
                    if n % 2 == 1 {
                        let out = forge(root, &["rmi", &tag]);
                        if !out.status.success() {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("rmi {tag}: {}", text(&out)));
                        }
                    }
                    builds.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        for (args, count) in [
            (&["images"][..], &listed),
            (&["prune", "--all", "--older-than", "0s"][..], &pruned),
        ] {
            let (root, failures, stop) = (&root, &failures, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let out = forge(root, args);
                    if !out.status.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{args:?}: {}", text(&out)));
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(30));
                }
            });
        }
    });

    eprintln!(
        "chaos: {secs} s, {} builds, {} `forge images`, {} `forge prune`",
        builds.load(Ordering::Relaxed),
        listed.load(Ordering::Relaxed),
        pruned.load(Ordering::Relaxed)
    );
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(builds.load(Ordering::Relaxed) >= 2, "the builds ran");
    assert!(pruned.load(Ordering::Relaxed) >= 1, "prune ran");
    let check = forge(&root, &["store", "check"]);
    assert!(
        check.status.success(),
        "store check after the chaos:\n{}",
        text(&check)
    );
}
