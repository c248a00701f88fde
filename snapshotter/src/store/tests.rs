//! The store's unit tests: its reserve, its metadata file, its default root.

use super::*;

#[test]
fn a_reserve_a_crash_left_without_its_blocks_is_made_again() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let reserve = tmp.path().join("reserve");
    let blocks = |p: &Path| fs::metadata(p).unwrap().blocks();
    assert_eq!(fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
    assert!(
        blocks(&reserve) * 512 >= RESERVE_BYTES,
        "the blocks are taken"
    );
    // What a crash before the file's writeback may leave: its size, and no blocks.
    fs::remove_file(&reserve).unwrap();
    File::create(&reserve)
        .unwrap()
        .set_len(RESERVE_BYTES)
        .unwrap();
    assert_eq!(blocks(&reserve), 0);
    assert!(store.restore_reserve());
    assert!(blocks(&reserve) * 512 >= RESERVE_BYTES);
    // One in place is left as it is.
    let inode = fs::metadata(&reserve).unwrap().ino();
    assert!(store.restore_reserve());
    assert_eq!(fs::metadata(&reserve).unwrap().ino(), inode);
}

#[test]
fn a_metadata_file_made_with_one_sync_is_whole_and_closed_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("meta.redb.new-1");
    meta::create_file(&file).unwrap();
    // A read-only open refuses a file whose close did not record a clean state (it would
    // need the recovery only a writer does), and every table is there.
    let db = redb::ReadOnlyDatabase::open(&file).unwrap();
    assert!(meta::has_tables(&db, &file).unwrap());
    drop(db);
    // A name already taken is an error, not a file written over.
    let err = meta::create_file(&file).unwrap_err();
    assert!(err.to_string().contains("meta.redb.new-1"), "{err}");
    // The store's own making: the file under its name, no temporary file left.
    let store = Store::open(tmp.path()).unwrap();
    store.make_metadata().unwrap();
    assert!(store.has_metadata());
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("meta.redb"))
        .collect();
    assert_eq!(names, ["meta.redb"]);
    store.put_image(&test_image()).unwrap();
    assert!(store.get_image("r.example/a:1").unwrap().is_some());
}

fn test_image() -> ImageRecord {
    let d = |n: u8| Descriptor {
        media_type: "application/octet-stream".into(),
        digest: format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap(),
        size: 1,
    };
    ImageRecord {
        reference: "r.example/a:1".into(),
        index: None,
        manifest: d(1),
        config: d(2),
        layers: vec![d(3)],
        platform: "linux/amd64".into(),
        recorded_unix: 1,
    }
}

#[test]
fn default_root_follows_user_and_xdg() {
    assert_eq!(
        default_root_for(0, Some("/x".into()), Some("/root".into())).unwrap(),
        PathBuf::from("/var/lib/forge")
    );
    assert_eq!(
        default_root_for(1000, Some("/data".into()), Some("/home/u".into())).unwrap(),
        PathBuf::from("/data/forge")
    );
    assert_eq!(
        default_root_for(1000, Some("relative".into()), Some("/home/u".into())).unwrap(),
        PathBuf::from("/home/u/.local/share/forge")
    );
    assert_eq!(
        default_root_for(1000, None, Some("/home/u".into())).unwrap(),
        PathBuf::from("/home/u/.local/share/forge")
    );
    assert!(matches!(
        default_root_for(1000, None, None),
        Err(StoreError::NoHome)
    ));
}

#[test]
fn namespace_root_of_a_rootless_user_keeps_the_users_store() {
    // Initial namespace: identity.
    assert_eq!(outer_uid("         0          0 4294967295\n", 0), Some(0));
    // Rootless forge: 0 -> 1001, 1..65536 -> 100000...
    let map = "         0       1001          1\n         1     100000      65536\n";
    assert_eq!(outer_uid(map, 0), Some(1001));
    assert_eq!(outer_uid(map, 1000), Some(100999));
    assert_eq!(outer_uid(map, 70000), None);
    assert_eq!(outer_uid("garbage", 0), None);
    let home = Some(PathBuf::from("/home/u"));
    assert_eq!(
        default_root_for(1001, None, home.clone()).unwrap(),
        PathBuf::from("/home/u/.local/share/forge")
    );
    assert_eq!(
        default_root_for(0, None, home).unwrap(),
        PathBuf::from("/var/lib/forge")
    );
}
