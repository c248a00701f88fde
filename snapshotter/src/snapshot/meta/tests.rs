//! Tests of the snapshot metadata: boot marks, settling, and which saves are synced.

use super::*;

/// Makes and commits `name` over `parent`, with one file in it.
fn committed(db: &Db, name: &str, parent: Option<&str>) -> u64 {
    let key = format!("active {name}");
    db.create(&key, parent, Kind::Active, |dir| {
        fs::create_dir(dir.join("fs"))?;
        fs::write(dir.join("fs").join("file"), name)
    })
    .unwrap();
    db.commit(name, &key).unwrap()
}

fn edit(db: &Db, f: impl FnOnce(&mut State)) {
    let _lock = db.lock(LockMode::Exclusive).unwrap();
    let mut state = db.load().unwrap();
    f(&mut state);
    db.save(&state).unwrap();
}

/// Moves `key`'s commit `secs` seconds into the past.
fn backdate(db: &Db, key: &str, secs: u64) {
    edit(db, |state| {
        state.snapshots.get_mut(key).unwrap().created = super::super::now() - secs;
    });
}

#[test]
fn a_commit_is_marked_with_the_boot_that_wrote_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "one", None);
    let state = db.load().unwrap();
    assert!(boot_id().is_some(), "Linux names its boot");
    assert_eq!(state.get("one").unwrap().unsynced.as_deref(), boot_id());
    // Opening again in the same boot keeps it.
    let db = Db::open(tmp.path()).unwrap();
    assert!(db.load().unwrap().get("one").is_ok());
}

/// The last synced state, as the fallback file holds it (`None`: never synced).
fn synced_keys(db: &Db) -> Option<Vec<String>> {
    let bytes = fs::read(db.root().join(SYNCED)).ok()?;
    let state: State = serde_json::from_slice(&bytes).unwrap();
    Some(state.snapshots.into_keys().collect())
}

#[test]
fn new_and_marked_snapshots_are_saved_unsynced_and_a_removal_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "one", None);
    db.create("scratch", Some("one"), Kind::Active, |dir| {
        fs::create_dir(dir.join("fs"))
    })
    .unwrap();
    assert_eq!(synced_keys(&db), None, "nothing was synced yet");
    assert_eq!(db.load().unwrap().snapshots.len(), 2);
    db.remove("scratch").unwrap();
    assert_eq!(synced_keys(&db), Some(vec!["one".to_string()]));
    // The fallback is the same file as the state it was synced with.
    assert_eq!(
        fs::read(tmp.path().join(SYNCED)).unwrap(),
        fs::read(tmp.path().join("metadata.json")).unwrap()
    );
    committed(&db, "two", Some("one"));
    assert_eq!(synced_keys(&db), Some(vec!["one".to_string()]));
    assert!(db.load().unwrap().get("two").is_ok());
}

#[test]
fn a_torn_metadata_file_opens_from_the_last_synced_state() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let one = committed(&db, "one", None);
    assert_eq!(db.settle(0).unwrap(), 1);
    let two = committed(&db, "two", Some("one"));
    // A crash after the last rename reached the disk but before the bytes did.
    fs::write(tmp.path().join("metadata.json"), b"").unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let state = db.load().unwrap();
    let left: Vec<&String> = state.snapshots.keys().collect();
    assert_eq!(left, ["one"]);
    assert_eq!(state.get("one").unwrap().unsynced, None);
    assert!(db.fs(one).join("file").is_file());
    assert!(!db.dir(two).exists(), "the lost commit's files were kept");
    // And the root goes on from there.
    committed(&db, "three", Some("one"));
    let left: Vec<String> = db.load().unwrap().snapshots.into_keys().collect();
    assert_eq!(left, ["one", "three"]);
}

#[test]
fn an_unreadable_metadata_file_with_nothing_synced_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "one", None);
    fs::write(tmp.path().join("metadata.json"), b"{ not json").unwrap();
    match Db::open(tmp.path()) {
        Err(SnapshotError::Corrupt { path, .. }) => {
            assert_eq!(path, tmp.path().join("metadata.json"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_snapshot_left_unsynced_by_another_boot_goes_with_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let base = committed(&db, "base", None);
    let child = committed(&db, "child", Some("base"));
    let grandchild = committed(&db, "grandchild", Some("child"));
    let synced = committed(&db, "synced", None);
    let below_synced = committed(&db, "below-synced", Some("synced"));
    edit(&db, |state| {
        state.snapshots.get_mut("base").unwrap().unsynced = Some("an earlier boot".into());
        state.snapshots.get_mut("synced").unwrap().unsynced = None;
    });
    let db = Db::open(tmp.path()).unwrap();
    let state = db.load().unwrap();
    let left: Vec<&String> = state.snapshots.keys().collect();
    assert_eq!(left, ["below-synced", "synced"]);
    for id in [base, child, grandchild] {
        assert!(
            !db.dir(id).exists(),
            "snapshot {id}'s files were not removed"
        );
    }
    for id in [synced, below_synced] {
        assert!(db.fs(id).join("file").is_file());
    }
}

#[test]
fn settling_syncs_and_clears_only_old_enough_marks_of_this_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "old", None);
    committed(&db, "new", None);
    backdate(&db, "old", 100);
    assert_eq!(db.settle(SETTLE_AFTER).unwrap(), 1);
    let state = db.load().unwrap();
    assert_eq!(state.get("old").unwrap().unsynced, None);
    assert_eq!(state.get("new").unwrap().unsynced.as_deref(), boot_id());
    assert_eq!(db.settle(0).unwrap(), 1);
    assert_eq!(db.load().unwrap().get("new").unwrap().unsynced, None);
    assert_eq!(db.settle(0).unwrap(), 0);
}

#[test]
fn an_open_settles_only_after_a_pause_in_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let now = super::super::now();
    let boot = boot_id();
    assert!(
        !time_to_settle(&db.load().unwrap(), boot, now),
        "nothing to settle"
    );
    committed(&db, "old", None);
    committed(&db, "new", None);
    backdate(&db, "old", 100);
    assert!(
        !time_to_settle(&db.load().unwrap(), boot, now),
        "new was just committed"
    );
    assert!(time_to_settle(
        &db.load().unwrap(),
        boot,
        now + SETTLE_AFTER + 1
    ));
    edit(&db, |state| {
        state.snapshots.get_mut("new").unwrap().unsynced = None;
    });
    assert!(time_to_settle(&db.load().unwrap(), boot, now));
}

/// Waits (at most a minute) until `key`'s mark is cleared.
fn until_settled(db: &Db, key: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.load().unwrap().get(key).unwrap().unsynced.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{key}'s mark was not settled within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_commit_settles_marks_left_long_ago_in_the_background() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "long-ago", None);
    backdate(&db, "long-ago", SETTLE_LONG_AFTER + 1);
    committed(&db, "now", None);
    until_settled(&db, "long-ago");
    assert_eq!(
        db.load().unwrap().get("now").unwrap().unsynced.as_deref(),
        boot_id()
    );
}

#[test]
fn an_open_settles_old_marks_in_the_background() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    committed(&db, "old", None);
    backdate(&db, "old", 100);
    let db = Db::open(tmp.path()).unwrap();
    until_settled(&db, "old");
}

#[test]
fn a_rename_moves_a_committed_snapshot_and_its_children_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let base = committed(&db, "base", None);
    let top = committed(&db, "top", Some("base"));
    db.create("working", Some("top"), Kind::Active, |dir| {
        fs::create_dir(dir.join("fs"))
    })
    .unwrap();
    db.create("scratch", None, Kind::Active, |dir| {
        fs::create_dir(dir.join("fs"))
    })
    .unwrap();
    let renamed = db
        .rename(&[
            ("base".into(), "base-real".into()),
            ("top".into(), "top-real".into()),
            // Left: the old name is not there, an active one, a name an active one holds.
            ("gone".into(), "anything".into()),
            ("working".into(), "working-real".into()),
            ("top-real".into(), "scratch".into()),
        ])
        .unwrap();
    assert_eq!(renamed, 2);
    let state = db.load().unwrap();
    assert!(state.get("base").is_err() && state.get("top").is_err());
    assert_eq!(
        state.get("top-real").unwrap().parent.as_deref(),
        Some("base-real")
    );
    assert_eq!(
        state.get("working").unwrap().parent.as_deref(),
        Some("top-real")
    );
    assert!(state.get("working-real").is_err() && state.get("scratch").is_ok());
    // The same directories, found through the new names.
    assert_eq!(state.chain("working").unwrap()[1..], [top, base]);
    assert_eq!(synced_keys(&db), None, "a rename alone is not synced");
    // Nothing to rename writes nothing.
    assert_eq!(db.rename(&[]).unwrap(), 0);
}

#[test]
fn a_rename_onto_a_taken_name_merges_into_it_and_frees_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path()).unwrap();
    let kept = committed(&db, "chain-a", None);
    let again = committed(&db, "stand-in-a", None);
    committed(&db, "stand-in-b", Some("stand-in-a"));
    let merged = db
        .rename(&[
            ("stand-in-a".into(), "chain-a".into()),
            ("stand-in-b".into(), "chain-b".into()),
        ])
        .unwrap();
    assert_eq!(merged, 2);
    let state = db.load().unwrap();
    assert!(state.get("stand-in-a").is_err());
    assert_eq!(
        state.get("chain-b").unwrap().parent.as_deref(),
        Some("chain-a")
    );
    assert_eq!(state.chain("chain-b").unwrap()[1..], [kept]);
    assert!(!db.dir(again).exists(), "the duplicate's files are gone");
    assert!(db.dir(kept).exists());
    // The merge deleted a directory a record named: it was synced first.
    assert_eq!(
        synced_keys(&db),
        Some(vec!["chain-a".to_string(), "chain-b".to_string()])
    );
}
