//! Reading a step's root filesystem before it is mounted: a file is looked up through an overlay's
//! layers (upper first, honouring whiteouts and opaque directories) or a bind source, so that users are
//! resolved from /etc/passwd and mount-point stubs are found without a mount per step.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use forge_snapshotter::Mount;

use super::ContainerdError;
use crate::spec::User;
use crate::user::{GROUP_PATH, PASSWD_PATH, ResolvedUser, UserDb};

/// Symlink hops followed for the last component before giving up (a loop, or a very deep chain).
const MAX_SYMLINK_HOPS: usize = 8;

/// The layers of a root filesystem as host directories, topmost first.
#[derive(Debug, Clone)]
pub(crate) struct RootfsView {
    layers: Vec<PathBuf>,
    /// Where the step's writes land: the overlay upper dir, or the bind source itself.
    writable: Option<PathBuf>,
}

impl RootfsView {
    /// A view of `mounts` when they are one overlay or one bind mount; `None` for anything that would
    /// have to be mounted to be read.
    pub(crate) fn from_mounts(mounts: &[Mount]) -> Option<Self> {
        let [mount] = mounts else { return None };
        let is_bind =
            mount.kind == "bind" || mount.options.iter().any(|o| o == "bind" || o == "rbind");
        if mount.kind == "overlay" {
            let mut upper = None;
            let mut lowers = Vec::new();
            for option in &mount.options {
                if let Some(dir) = option.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(dir));
                } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
                    lowers.extend(dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
                }
            }
            let layers = upper.iter().cloned().chain(lowers).collect::<Vec<_>>();
            (!layers.is_empty()).then_some(RootfsView {
                layers,
                writable: upper,
            })
        } else if is_bind {
            Some(RootfsView {
                layers: vec![mount.source.clone()],
                writable: (!mount.is_readonly()).then(|| mount.source.clone()),
            })
        } else {
            None
        }
    }

    pub(crate) fn writable(&self) -> Option<&Path> {
        self.writable.as_deref()
    }

    /// The host path holding `path` (absolute, inside the container) as the mounted rootfs would show
    /// it, following every symlink on its way (`/etc/passwd` through a linked `/etc`).
    pub(crate) fn find(&self, path: &Path) -> Option<PathBuf> {
        self.find_entry(&self.resolve(path)?)
    }

    /// `path` (absolute, inside the container) with every symlink on its way followed inside the
    /// rootfs, as runc resolves a mount's destination: `/var/run/secrets/x` on Debian is
    /// `/run/secrets/x`. The part below the first missing entry is kept as written. `None` past
    /// [`MAX_SYMLINK_HOPS`] links.
    pub(crate) fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut pending: Vec<std::ffi::OsString> = normalize(path)
            .components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let mut resolved = PathBuf::from("/");
        let mut hops = 0;
        let mut missing = false;
        while let Some(name) = pending.pop() {
            let next = resolved.join(&name);
            if missing {
                resolved = next;
                continue;
            }
            let Some(found) = self.find_entry(&next) else {
                missing = true;
                resolved = next;
                continue;
            };
            match std::fs::read_link(&found) {
                Ok(target) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return None;
                    }
                    if target.is_absolute() {
                        resolved = PathBuf::from("/");
                    }
                    pending.extend(target.components().rev().filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    }));
                }
                Err(_) => resolved = next,
            }
            // `..` from a link's target climbs, never above the root.
            while pending.last().is_some_and(|n| n == "..") {
                pending.pop();
                resolved.pop();
            }
        }
        Some(resolved)
    }

    pub(crate) fn exists(&self, path: &Path) -> bool {
        self.find_entry(&normalize(path)).is_some()
    }

    /// The file's bytes, `None` when the rootfs does not have it.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, ContainerdError> {
        match self.find(path) {
            Some(host) if host.is_file() => std::fs::read(&host)
                .map(Some)
                .map_err(|e| ContainerdError::io("cannot read", host, e)),
            _ => Ok(None),
        }
    }

    /// The topmost layer entry for a normalized absolute path, without following a final symlink.
    fn find_entry(&self, path: &Path) -> Option<PathBuf> {
        let components: Vec<&std::ffi::OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        for layer in &self.layers {
            let mut current = layer.clone();
            // An opaque directory on the way hides the same directory in every lower layer.
            let mut hides_lower = false;
            let mut complete = true;
            for (i, name) in components.iter().enumerate() {
                current.push(name);
                let Ok(meta) = std::fs::symlink_metadata(&current) else {
                    complete = false;
                    break;
                };
                if is_whiteout(&meta) {
                    return None;
                }
                if i + 1 == components.len() {
                    break;
                }
                if !meta.is_dir() {
                    // A file (or symlink) replaces the directory the path needs: nothing below exists.
                    return None;
                }
                if is_opaque(&current) {
                    hides_lower = true;
                }
            }
            if complete {
                return Some(current);
            }
            if hides_lower {
                return None;
            }
        }
        None
    }
}

/// overlayfs marks a deleted lower entry with a 0/0 character device in the upper layer.
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // Rootless overlay mounts (`userxattr`) use the user. prefix instead of trusted.
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let name = CString::new(*name).expect("static xattr name has no NUL");
            let mut value = [0u8; 2];
            // SAFETY: both strings are NUL-terminated and the buffer length is passed with it.
            let n = unsafe {
                libc::lgetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            n == 1 && value[0] == b'y'
        })
}

/// `path` made absolute with `.` and `..` resolved lexically, never above `/`.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Resolves `user` with [`crate::user`]'s rules against the rootfs's /etc/passwd and /etc/group, read
/// through the layers. Without a readable rootfs only numeric ids work (with no supplementary groups).
pub(crate) fn resolve_user(
    view: Option<&RootfsView>,
    user: &User,
    rootfs_kind: &str,
) -> Result<ResolvedUser, ContainerdError> {
    let db = match view {
        Some(view) => {
            let text = |path: &str| -> Result<Option<String>, ContainerdError> {
                Ok(view
                    .read(Path::new(path))?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()))
            };
            UserDb {
                passwd: text(PASSWD_PATH)?,
                group: text(GROUP_PATH)?,
            }
        }
        None => {
            let numeric = |s: &str| s.is_empty() || s.parse::<u32>().is_ok();
            if !numeric(&user.user) || !user.group.as_deref().is_none_or(numeric) {
                return Err(ContainerdError::UnreadableRootfs {
                    user: user.user.clone(),
                    kind: rootfs_kind.to_string(),
                });
            }
            UserDb::default()
        }
    };
    Ok(db.resolve(user)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::UserError;

    // A missing prerequisite skips, except under FORGE_E2E=require where it fails.
    use forge_testsupport::missing as skip;

    fn user(u: &str, g: Option<&str>) -> User {
        User {
            user: u.to_string(),
            group: g.map(String::from),
        }
    }

    /// Two layers: the lower has the files, the upper overrides and deletes some.
    fn layered() -> (tempfile::TempDir, RootfsView) {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            lower.join("etc/group"),
            "root:x:0:\nwheel:x:10:root\ntester:x:1000:\nextra:x:2000:tester,other\n",
        )
        .unwrap();
        std::fs::write(lower.join("etc/old"), "gone").unwrap();
        std::fs::write(upper.join("etc/new"), "new").unwrap();
        std::os::unix::fs::symlink("../etc/passwd", lower.join("etc/pw-link")).unwrap();
        let view = RootfsView::from_mounts(&[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower.display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", dir.path().join("work").display()),
            ],
        }])
        .unwrap();
        (dir, view)
    }

    #[test]
    fn lookup_goes_through_layers_and_symlinks() {
        let (dir, view) = layered();
        assert_eq!(view.writable(), Some(dir.path().join("upper").as_path()));
        assert_eq!(
            view.find(Path::new("/etc/new")),
            Some(dir.path().join("upper/etc/new"))
        );
        assert_eq!(
            view.find(Path::new("/etc/old")),
            Some(dir.path().join("lower/etc/old"))
        );
        assert_eq!(
            view.find(Path::new("/etc/pw-link")),
            Some(dir.path().join("lower/etc/passwd"))
        );
        assert!(!view.exists(Path::new("/etc/missing")));
        assert!(!view.exists(Path::new("/etc/old/below-a-file")));
    }

    #[test]
    fn an_upper_opaque_dir_hides_the_lower_one() {
        let (dir, view) = layered();
        let etc = CString::new(dir.path().join("upper/etc").as_os_str().as_bytes()).unwrap();
        let name = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: NUL-terminated strings and a one-byte value.
        let rc = unsafe { libc::setxattr(etc.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            return skip("cannot set trusted.* xattrs here (needs root)");
        }
        assert!(view.exists(Path::new("/etc/new")));
        assert!(!view.exists(Path::new("/etc/old")));
    }

    #[test]
    fn users_resolve_through_the_layers() {
        let (_dir, view) = layered();
        let v = Some(&view);
        let root = resolve_user(v, &user("", None), "overlay").unwrap();
        assert_eq!((root.uid, root.gid, root.additional_gids), (0, 0, vec![10]));
        let named = resolve_user(v, &user("tester", None), "overlay").unwrap();
        assert_eq!(
            (named.uid, named.gid, named.additional_gids),
            (1000, 1000, vec![2000])
        );
        assert_eq!(named.home, "/home/tester");
        assert!(matches!(
            resolve_user(v, &user("nobody-here", None), "overlay"),
            Err(ContainerdError::User(UserError::UnknownUser { .. }))
        ));
        assert!(matches!(
            resolve_user(None, &user("tester", None), "fuse-overlayfs"),
            Err(ContainerdError::UnreadableRootfs { .. })
        ));
        let numeric = resolve_user(None, &user("7", Some("8")), "fuse-overlayfs").unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.additional_gids),
            (7, 8, vec![])
        );
    }

    #[test]
    fn whiteouts_delete_lower_entries() {
        let (dir, view) = layered();
        let dev = CString::new(dir.path().join("upper/etc/old").as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path; a 0/0 character device is overlayfs's whiteout.
        let rc = unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR, 0) };
        if rc != 0 {
            return skip("cannot create a whiteout device here (needs root)");
        }
        assert!(!view.exists(Path::new("/etc/old")));
    }
}
