//! `--chown` and stage users: `user[:group]` as ids or names, names looked up in the destination
//! filesystem's `/etc/passwd` and `/etc/group` (read inside its root, through the runner's user
//! database) as BuildKit does.

use std::path::Path;

use forge_runner::user::UserDb;

use super::FileOpError;

/// A numeric owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Resolves `owner` against the filesystem at `root`: a numeric user without a group gets the same
/// number as group (BuildKit's `--chown`, unlike `USER`, which takes group 0), a named user without
/// a group gets its primary group.
pub(crate) fn resolve_owner(root: &Path, owner: Option<&str>) -> Result<Option<Ids>, FileOpError> {
    let Some(owner) = owner.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let err = |e: forge_runner::user::UserError| FileOpError::Owner {
        owner: owner.to_string(),
        reason: e.to_string(),
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    // The databases are read only when a name needs them.
    let db = if numeric(user).is_none() || group.is_some_and(|g| numeric(g).is_none()) {
        UserDb::read(root).map_err(err)?
    } else {
        UserDb::default()
    };
    let (uid, primary) = match numeric(user) {
        Some(uid) => (uid, uid),
        None => db.user_ids(user).map_err(err)?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => db.group_id(g).map_err(err)?,
        },
    };
    Ok(Some(Ids { uid, gid }))
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
        resolve_owner(root, Some(owner))
            .map(|ids| ids.map(|i| (i.uid, i.gid)).unwrap())
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
        assert_eq!(resolve_owner(root.path(), Some("")).unwrap(), None);
        let err = ids(root.path(), "nobody-here").unwrap_err();
        assert!(
            err.contains("nobody-here") && err.contains("/etc/passwd"),
            "{err}"
        );
        let err = ids(root.path(), "app:nogroup").unwrap_err();
        assert!(
            err.contains("nogroup") && err.contains("/etc/group"),
            "{err}"
        );
    }

    #[test]
    fn numeric_owners_need_no_databases() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(ids(empty.path(), "7:8"), Ok((7, 8)));
        let err = ids(empty.path(), "app").unwrap_err();
        assert!(err.contains("/etc/passwd is missing"), "{err}");
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
        let err = ids(root.path(), "evil").unwrap_err();
        assert!(err.contains("/etc/passwd is missing"), "{err}");
        // A link that stays inside the root is followed.
        std::fs::write(root.path().join("passwd.real"), "app:x:5:6::/:/bin/sh\n").unwrap();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/passwd.real", root.path().join("etc/passwd")).unwrap();
        assert_eq!(ids(root.path(), "app"), Ok((5, 6)));
    }
}
