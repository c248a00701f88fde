//! Resolves a step's `USER` (name, uid, name:group, uid:gid) to numeric ids and supplementary groups
//! against the rootfs's /etc/passwd and /etc/group, read without following symlinks out of the rootfs.
//! The builder's `--chown` looks its names up here too ([`UserDb::user_ids`], [`UserDb::group_id`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::spec::User;

pub const PASSWD_PATH: &str = "/etc/passwd";
pub const GROUP_PATH: &str = "/etc/group";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {user:?}: no entry in {file} of the rootfs")]
    UnknownUser { user: String, file: &'static str },
    #[error("unknown group {group:?}: no entry in {file} of the rootfs")]
    UnknownGroup { group: String, file: &'static str },
    #[error("cannot resolve {name:?}: {file} is missing from the rootfs")]
    MissingFile { name: String, file: &'static str },
    #[error("reading {path} inside the rootfs")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The numeric identity a step's processes take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group (only when no group was given, as runc does).
    pub additional_gids: Vec<u32>,
    /// The home directory from /etc/passwd, `/` when unknown (used for a missing `HOME`).
    pub home: String,
}

/// The two databases of a rootfs; `None` where the file does not exist.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || f.len() < 4 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f.get(5).copied().unwrap_or("/"),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || f.len() < 3 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// The text of a database `file` needed to look `name` up; an error when the rootfs lacks it.
fn present<'a>(
    text: &'a Option<String>,
    name: &str,
    file: &'static str,
) -> Result<&'a str, UserError> {
    text.as_deref().ok_or_else(|| UserError::MissingFile {
        name: name.to_string(),
        file,
    })
}

impl UserDb {
    /// The uid and primary gid of the user named `name`.
    pub fn user_ids(&self, name: &str) -> Result<(u32, u32), UserError> {
        self.passwd_named(name).map(|e| (e.uid, e.gid))
    }

    /// The gid of the group named `name`.
    pub fn group_id(&self, name: &str) -> Result<u32, UserError> {
        group_entries(present(&self.group, name, GROUP_PATH)?)
            .find(|e| e.name == name)
            .map(|e| e.gid)
            .ok_or_else(|| UserError::UnknownGroup {
                group: name.to_string(),
                file: GROUP_PATH,
            })
    }

    fn passwd_named(&self, name: &str) -> Result<PasswdEntry<'_>, UserError> {
        passwd_entries(present(&self.passwd, name, PASSWD_PATH)?)
            .find(|e| e.name == name)
            .ok_or_else(|| UserError::UnknownUser {
                user: name.to_string(),
                file: PASSWD_PATH,
            })
    }

    /// Reads /etc/passwd and /etc/group of the tree at `root`, resolving every path component with
    /// `root` as the root (openat2 RESOLVE_IN_ROOT), so a symlink such as `/etc/passwd -> /etc/shadow`
    /// or `../../..` stays inside the image.
    pub fn read(root: &Path) -> Result<Self, UserError> {
        let dir = File::open(root).map_err(|source| UserError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        let read = |rel: &str| -> Result<Option<String>, UserError> {
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                .mode(Mode::empty())
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match openat2(&dir, rel, how) {
                Ok(fd) => {
                    let mut text = String::new();
                    File::from(fd)
                        .read_to_string(&mut text)
                        .map_err(|source| UserError::Read {
                            path: PathBuf::from(rel),
                            source,
                        })?;
                    Ok(Some(text))
                }
                Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => Ok(None),
                Err(e) => Err(UserError::Read {
                    path: PathBuf::from(rel),
                    source: e.into(),
                }),
            }
        };
        Ok(UserDb {
            passwd: read(PASSWD_PATH)?,
            group: read(GROUP_PATH)?,
        })
    }

    /// Resolves `user` as Docker and runc do: an empty user is root; a numeric uid needs no entry (its
    /// group is then 0 unless given); a name must exist; an explicit group replaces the supplementary
    /// groups.
    pub fn resolve(&self, user: &User) -> Result<ResolvedUser, UserError> {
        let spec = if user.user.is_empty() {
            "0"
        } else {
            user.user.as_str()
        };
        let passwd = self.passwd.as_deref().unwrap_or("");
        let (uid, mut gid, name, home) = if let Ok(uid) = spec.parse::<u32>() {
            match passwd_entries(passwd).find(|e| e.uid == uid) {
                Some(e) => (uid, e.gid, Some(e.name.to_string()), e.home.to_string()),
                None => (uid, 0, None, "/".to_string()),
            }
        } else {
            let e = self.passwd_named(spec)?;
            (e.uid, e.gid, Some(e.name.to_string()), e.home.to_string())
        };
        let groups = self.group.as_deref().unwrap_or("");
        let mut additional_gids = Vec::new();
        match user.group.as_deref().filter(|g| !g.is_empty()) {
            Some(g) => {
                gid = match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => self.group_id(g)?,
                };
            }
            None => {
                if let Some(name) = &name {
                    for e in group_entries(groups) {
                        if e.members.contains(&name.as_str()) && !additional_gids.contains(&e.gid) {
                            additional_gids.push(e.gid);
                        }
                    }
                }
            }
        }
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids,
            home: if home.is_empty() { "/".into() } else { home },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> UserDb {
        UserDb {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\n# comment\ntester:x:1000:1000::/home/tester:/bin/sh\n"
                    .into(),
            ),
            group: Some("root:x:0:\nwheel:x:10:tester,other\ntester:x:1000:\nstaff:x:50:\n".into()),
        }
    }

    fn user(u: &str, g: Option<&str>) -> User {
        User {
            user: u.into(),
            group: g.map(Into::into),
        }
    }

    #[test]
    fn empty_user_is_root() {
        let r = db().resolve(&user("", None)).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn name_resolves_ids_home_and_supplementary_groups() {
        let r = db().resolve(&user("tester", None)).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        assert_eq!(r.additional_gids, vec![10]);
        assert_eq!(r.home, "/home/tester");
    }

    #[test]
    fn numeric_uid_without_entry_gets_group_zero() {
        let r = db().resolve(&user("4242", None)).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn explicit_group_replaces_supplementary_groups() {
        let r = db().resolve(&user("tester", Some("staff"))).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 50));
        assert!(r.additional_gids.is_empty());
        let r = db().resolve(&user("1000", Some("1234"))).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1234));
    }

    #[test]
    fn unknown_user_names_user_and_file() {
        let err = db().resolve(&user("nobody-here", None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nobody-here") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        let err = db().resolve(&user("tester", Some("nogroup"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nogroup") && msg.contains("/etc/group"),
            "{msg}"
        );
    }

    #[test]
    fn missing_passwd_is_an_error_only_for_names() {
        let db = UserDb::default();
        assert!(matches!(
            db.resolve(&user("tester", None)),
            Err(UserError::MissingFile { .. })
        ));
        assert_eq!(db.resolve(&user("7", None)).unwrap().uid, 7);
    }

    #[test]
    fn read_does_not_follow_symlinks_out_of_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An absolute symlink to a host file must resolve inside the rootfs, where it does not exist.
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "g:x:5:\n").unwrap();
        let db = UserDb::read(root.path()).unwrap();
        assert!(db.passwd.is_none(), "followed a symlink out of the root");
        assert_eq!(db.group.as_deref(), Some("g:x:5:\n"));
    }
}
