//! `--chown` and stage users: `user[:group]` as ids or names, names looked up in the destination
//! filesystem's `/etc/passwd` and `/etc/group` (read inside its root, through the runner's user
//! database) as BuildKit does.

use std::path::Path;

use forge_runner::user::{UserDb, UserError};

use super::FileOpError;

/// A numeric owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Resolves `owner` against the filesystem at `root` as BuildKit's file operations do: a numeric
/// user without a group gets the same number as group (unlike `USER`, which takes group 0), a named
/// user its primary group, an empty user or group 0. A name the destination's `/etc/passwd` (or
/// `/etc/group`) does not list, or a destination without the file, is not an error there: the user
/// becomes 0:0 and the group stays what the user part gave, so a Dockerfile docker builds builds
/// here too. What was not found is said in the returned note, which the build shows as a warning.
pub(crate) fn resolve_owner(
    root: &Path,
    owner: Option<&str>,
) -> Result<(Option<Ids>, Option<String>), FileOpError> {
    let Some(owner) = owner.filter(|o| !o.is_empty()) else {
        return Ok((None, None));
    };
    let err = |e: UserError| FileOpError::Owner {
        owner: owner.to_string(),
        reason: e.to_string(),
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let named = |s: &str| !s.is_empty() && s.parse::<u32>().is_err();
    // The databases are read only when a name needs them.
    let db = if named(user) || group.is_some_and(named) {
        UserDb::read(root).map_err(err)?
    } else {
        UserDb::default()
    };
    let mut missing = Vec::new();
    let (uid, primary) = if user.is_empty() {
        (0, 0)
    } else if let Ok(uid) = user.parse::<u32>() {
        (uid, uid)
    } else {
        match db.user_ids(user) {
            Ok(ids) => ids,
            Err(e) => {
                missing.push(not_found(e).map_err(err)?);
                (0, 0)
            }
        }
    };
    let gid = match group {
        None => primary,
        Some("") => 0,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match db.group_id(g) {
                Ok(gid) => gid,
                Err(e) => {
                    missing.push(not_found(e).map_err(err)?);
                    primary
                }
            },
        },
    };
    let note = (!missing.is_empty()).then(|| {
        format!(
            "owner {owner:?}: {}; it is {uid}:{gid} instead, as in BuildKit",
            missing.join("; ")
        )
    });
    Ok((Some(Ids { uid, gid }), note))
}

/// What a lookup that found nothing says; a read that failed stays an error.
fn not_found(e: UserError) -> Result<String, UserError> {
    match e {
        UserError::UnknownUser { .. }
        | UserError::UnknownGroup { .. }
        | UserError::MissingFile { .. } => Ok(e.to_string()),
        UserError::Read { .. } => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(passwd: &str, group: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(root.path().join("etc/group"), group).unwrap();
        root
    }

    fn ids(root: &Path, owner: &str) -> Result<(u32, u32), String> {
        noted(root, owner).map(|(ids, _)| ids)
    }

    /// The ids and the note about what was not found.
    fn noted(root: &Path, owner: &str) -> Result<((u32, u32), Option<String>), String> {
        resolve_owner(root, Some(owner))
            .map(|(ids, note)| (ids.map(|i| (i.uid, i.gid)).unwrap(), note))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_ids_and_the_chown_default_group() {
        let root = rootfs(
            "root:x:0:0:root:/root:/bin/sh\n# app:x:1:1\napp:x:1500:1600::/srv:/bin/sh\n",
            "staff:x:2700:\n",
        );
        assert_eq!(ids(root.path(), "app"), Ok((1500, 1600)));
        assert_eq!(ids(root.path(), "app:staff"), Ok((1500, 2700)));
        assert_eq!(ids(root.path(), "app:42"), Ok((1500, 42)));
        // A numeric user keeps its number as group (BuildKit's --chown), where USER would take 0.
        assert_eq!(ids(root.path(), "1234"), Ok((1234, 1234)));
        assert_eq!(ids(root.path(), "1234:staff"), Ok((1234, 2700)));
        assert_eq!(resolve_owner(root.path(), Some("")).unwrap(), (None, None));
        assert_eq!(noted(root.path(), "app:staff").unwrap().1, None);
    }

    /// BuildKit's `readUser`: a name with no entry is not an error; the user becomes 0:0 and an
    /// unknown group leaves the gid the user part gave. An empty part is id 0.
    #[test]
    fn names_not_found_fall_back_as_in_buildkit_and_are_noted() {
        let root = rootfs(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/srv:/bin/sh\n",
            "appg:x:1600:\n",
        );
        for (owner, want) in [
            ("nobody-here", (0, 0)),
            ("root:nosuchgroup", (0, 0)),
            ("7:nosuchgroup", (7, 7)),
            ("app:nosuchgroup", (1500, 1600)),
            ("nosuch:nogrp", (0, 0)),
            ("nosuch:appg", (0, 1600)),
        ] {
            let (ids, note) = noted(root.path(), owner).unwrap();
            assert_eq!(ids, want, "{owner}");
            let note = note.unwrap_or_else(|| panic!("{owner}: no note"));
            assert!(
                note.starts_with(&format!("owner {owner:?}: unknown ")),
                "{note}"
            );
            assert!(
                note.ends_with(&format!(
                    "it is {}:{} instead, as in BuildKit",
                    want.0, want.1
                )),
                "{note}"
            );
        }
        let (_, note) = noted(root.path(), "nosuch:nogrp").unwrap();
        let note = note.unwrap();
        assert!(
            note.contains("\"nosuch\"") && note.contains("\"nogrp\""),
            "{note}"
        );
        // Empty parts are id 0, and need no database.
        for (owner, want) in [(":appg", (0, 1600)), (":1600", (0, 1600)), ("7:", (7, 0))] {
            assert_eq!(noted(root.path(), owner).unwrap(), (want, None), "{owner}");
        }
    }

    #[test]
    fn numeric_owners_need_no_databases() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(ids(empty.path(), "7:8"), Ok((7, 8)));
        // Without the file a name is not found: 0:0, and the note says the file is missing.
        let (found, note) = noted(empty.path(), "app").unwrap();
        assert_eq!(found, (0, 0));
        assert!(note.unwrap().contains("/etc/passwd is missing"));
    }

    /// The owner lookup followed symlinks with its own resolver; the runner's reads with openat2
    /// RESOLVE_IN_ROOT, so an absolute link to a host file is looked for inside the root.
    #[test]
    fn a_passwd_linked_out_of_the_root_is_not_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = rootfs("", "");
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        let (found, note) = noted(root.path(), "evil").unwrap();
        assert_eq!(found, (0, 0), "the host's entry is not read");
        assert!(note.unwrap().contains("/etc/passwd is missing"));
        // A link that stays inside the root is followed.
        std::fs::write(root.path().join("passwd.real"), "app:x:5:6::/:/bin/sh\n").unwrap();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/passwd.real", root.path().join("etc/passwd")).unwrap();
        assert_eq!(ids(root.path(), "app"), Ok((5, 6)));
    }
}
