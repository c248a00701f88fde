//! A layer of a tree far deeper than the process may hold descriptors open: the walk holds at
//! most a few at a time, not one per level. In a binary of its own, as it lowers the process's
//! descriptor limit.

use forge_snapshotter::compress::Compression;
use forge_snapshotter::diff::{Changes, write_layer};
use forge_snapshotter::layer::LayerOptions;

#[test]
fn a_tree_deeper_than_the_descriptor_limit_is_diffed() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    let levels = 300;
    let mut dir = upper.clone();
    for level in 0..levels {
        dir.push("d");
        std::fs::create_dir_all(&dir).unwrap();
        // A file at every level, before and after the name of the directory below it.
        std::fs::write(dir.join("a"), format!("{level}")).unwrap();
        std::fs::write(dir.join("z"), format!("{level}")).unwrap();
    }
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: plain call with a valid pointer; only this test's process is affected.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) },
        0,
        "lowering the descriptor limit"
    );
    let options = LayerOptions {
        compression: Compression::Zstd { level: 1 },
        source_date_epoch: None,
    };
    let (desc, blob, stats) =
        write_layer(Changes::OverlayUpper(&upper), Vec::new(), options).unwrap();
    assert_eq!(stats.entries, 3 * levels);
    assert_eq!(desc.size, blob.len() as u64);
}
