//! A mount as snapshotters hand it out and runners apply it (containerd's `Mount` shape), so that a
//! runner needs no knowledge of which snapshotter made a root filesystem.

use std::path::{Path, PathBuf};

/// One mount to apply, in order, to build a root filesystem or an extra mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type: `"overlay"`, `"fuse-overlayfs"`, `"bind"`, `"tmpfs"`.
    pub kind: String,
    /// Source: a directory for `bind`, `"overlay"` / `"tmpfs"` for those.
    pub source: PathBuf,
    /// Options as mount(8) and containerd spell them: `lowerdir=a:b`, `upperdir=..`, `workdir=..`,
    /// `ro`, `rbind`, `size=64m`, ...
    pub options: Vec<String>,
}

impl Mount {
    /// A bind mount of `source`, read-only when `readonly`.
    pub fn bind(source: impl Into<PathBuf>, readonly: bool) -> Self {
        let mut options = vec!["rbind".to_string()];
        options.push(if readonly { "ro" } else { "rw" }.to_string());
        Mount {
            kind: "bind".into(),
            source: source.into(),
            options,
        }
    }

    /// Whether the options ask for a read-only mount.
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// The most lower layers one overlayfs mount stacks: `OVL_MAX_STACK` in the kernel's
/// fs/overlayfs (500 from Linux 4.x to 6.18 at least; a mount with more fails with EINVAL and
/// "overlayfs: too many lower directories, limit is 500" in the kernel log).
pub const OVERLAY_MAX_LOWER_LAYERS: usize = 500;

/// A chain of layers deeper than overlayfs stacks. Docker's layer store stops lower (`max depth
/// exceeded`); forge's limit is the kernel's.
#[derive(Debug, thiserror::Error)]
#[error(
    "the filesystem has {layers} layers, more than the {limit} lower layers the kernel's overlayfs \
     stacks in one mount; use fewer RUN, COPY and ADD steps (join commands with &&), or a \
     multi-stage build that copies the result into a fresh stage"
)]
pub struct TooDeep {
    pub layers: usize,
    pub limit: usize,
}

impl TooDeep {
    /// An error when `layers` lower layers are more than overlayfs stacks.
    pub fn check(layers: usize) -> Result<(), TooDeep> {
        if layers > OVERLAY_MAX_LOWER_LAYERS {
            return Err(TooDeep {
                layers,
                limit: OVERLAY_MAX_LOWER_LAYERS,
            });
        }
        Ok(())
    }
}

/// Why [`mount_overlay`] failed; the caller names the target.
#[derive(Debug, thiserror::Error)]
pub enum OverlayMountError {
    #[error(transparent)]
    TooDeep(#[from] TooDeep),
    #[error(
        "the overlay's mount options are {len} bytes{}, more than the {limit} the kernel reads",
        relative_to.as_ref().map(|d| format!(" even with its directories relative to {}", d.display())).unwrap_or_default()
    )]
    OptionsTooLong {
        len: usize,
        limit: usize,
        /// The directory the options' paths were made relative to, when they could be.
        relative_to: Option<PathBuf>,
    },
    #[error("{source}{}", relative_to.as_ref().map(|d| format!(" (mounted with its directories relative to {})", d.display())).unwrap_or_default())]
    Mount {
        source: std::io::Error,
        /// The directory the options' paths were made relative to, when they were.
        relative_to: Option<PathBuf>,
    },
    #[error("starting a process to mount from {dir}: {source}")]
    Fork {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("changing into {dir} to mount with relative paths: {source}")]
    Chdir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the overlay's option {0:?} holds a NUL byte")]
    Nul(String),
}

/// Mounts overlayfs at `target` with `flags` and `data` (comma-separated options as mount(8) takes
/// them: `lowerdir=a:b,upperdir=..,workdir=..,userxattr`).
///
/// mount(2) copies one page of options and cuts the rest off silently, so a long chain of lower
/// dirs under a long store path lost its last dirs and failed with a confusing ENOENT. When the
/// options do not fit in a page, the mount is made by a short-lived child process that changes
/// into the directories' common parent and passes them relative to it (containerd's mount package
/// does the same for the same reason), so that no thread of this process sees its working
/// directory change. Options that fit are mounted directly, as before.
pub fn mount_overlay(
    target: &Path,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), OverlayMountError> {
    let options: Vec<&str> = data.split(',').filter(|o| !o.is_empty()).collect();
    let lowers = options
        .iter()
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').filter(|d| !d.is_empty()).count())
        .sum::<usize>();
    TooDeep::check(lowers)?;
    let page = page_size();
    // The kernel keeps the page's last byte for the terminating NUL.
    if data.len() < page {
        return sys_mount(target, flags, data, None);
    }
    let Some((dir, compact)) = relative_options(&options) else {
        return Err(OverlayMountError::OptionsTooLong {
            len: data.len(),
            limit: page - 1,
            relative_to: None,
        });
    };
    if compact.len() >= page {
        return Err(OverlayMountError::OptionsTooLong {
            len: compact.len(),
            limit: page - 1,
            relative_to: Some(dir),
        });
    }
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| OverlayMountError::Mount {
                source,
                relative_to: None,
            })?
            .join(target)
    };
    sys_mount(&target, flags, &compact, Some(&dir))
}

/// The options with every `lowerdir`, `upperdir` and `workdir` path relative to the paths' deepest
/// common parent, and that parent; `None` when a path is not absolute.
fn relative_options(options: &[&str]) -> Option<(PathBuf, String)> {
    const PATH_KEYS: [&str; 3] = ["lowerdir=", "upperdir=", "workdir="];
    let split = |o: &str| -> Option<(&'static str, Vec<String>)> {
        let key = PATH_KEYS.iter().find(|k| o.starts_with(**k))?;
        let value = &o[key.len()..];
        // Only lowerdir lists several paths; a ':' cannot be part of a snapshotter path (the
        // store refuses roots that hold one).
        let paths = if *key == "lowerdir=" {
            value.split(':').map(str::to_string).collect()
        } else {
            vec![value.to_string()]
        };
        Some((key, paths))
    };
    let mut common: Option<PathBuf> = None;
    for o in options {
        for p in split(o).map(|(_, p)| p).unwrap_or_default() {
            let p = Path::new(&p);
            if !p.is_absolute() {
                return None;
            }
            // The parent of the path, at least: the path itself may be the mount's only dir.
            let parent = p.parent().unwrap_or(p);
            common = Some(match common {
                None => parent.to_path_buf(),
                Some(c) => c
                    .components()
                    .zip(parent.components())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect(),
            });
        }
    }
    let dir = common?;
    let relative = |p: &str| -> String {
        match Path::new(p).strip_prefix(&dir) {
            Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
            Ok(r) => r.to_string_lossy().into_owned(),
            Err(_) => p.to_string(),
        }
    };
    let compact = options
        .iter()
        .map(|o| match split(o) {
            Some((key, paths)) => format!(
                "{key}{}",
                paths
                    .iter()
                    .map(|p| relative(p))
                    .collect::<Vec<_>>()
                    .join(":")
            ),
            None => o.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    Some((dir, compact))
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

fn cstring(s: &[u8]) -> Result<std::ffi::CString, OverlayMountError> {
    std::ffi::CString::new(s)
        .map_err(|_| OverlayMountError::Nul(String::from_utf8_lossy(s).into_owned()))
}

/// mount(2) of overlayfs; from a child process that first changes into `chdir`, when given.
fn sys_mount(
    target: &Path,
    flags: libc::c_ulong,
    data: &str,
    chdir: Option<&Path>,
) -> Result<(), OverlayMountError> {
    use std::os::unix::ffi::OsStrExt;
    let target_c = cstring(target.as_os_str().as_bytes())?;
    let data_c = cstring(data.as_bytes())?;
    let mount = || {
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target_c.as_ptr(),
                c"overlay".as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        }
    };
    let Some(dir) = chdir else {
        if mount() != 0 {
            return Err(OverlayMountError::Mount {
                source: std::io::Error::last_os_error(),
                relative_to: None,
            });
        }
        return Ok(());
    };
    let dir_c = cstring(dir.as_os_str().as_bytes())?;
    // The child's exit status says what failed: 0 mounted, an errno below CHDIR_FAILED from
    // mount(2), CHDIR_FAILED plus an errno from chdir(2).
    const CHDIR_FAILED: i32 = 128;
    // SAFETY: between fork and _exit the child (one thread, a copy of this process's memory,
    // in the same mount and user namespaces) calls only chdir, mount and _exit, which are
    // async-signal-safe, on strings made before the fork; it allocates nothing and takes no lock
    // another thread may have held.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(OverlayMountError::Fork {
            dir: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: see above; errno is thread-local and async-signal-safe to read.
        unsafe {
            if libc::chdir(dir_c.as_ptr()) != 0 {
                libc::_exit(CHDIR_FAILED + (*libc::__errno_location()).min(127));
            }
            if mount() != 0 {
                libc::_exit((*libc::__errno_location()).min(CHDIR_FAILED - 1));
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child made above, which nothing else in forge reaps.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(OverlayMountError::Fork {
                dir: dir.to_path_buf(),
                source: e,
            });
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        return Err(OverlayMountError::Fork {
            dir: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "the mounting process was killed by signal {}",
                libc::WTERMSIG(status)
            )),
        });
    };
    match code {
        0 => Ok(()),
        c if c >= CHDIR_FAILED => Err(OverlayMountError::Chdir {
            dir: dir.to_path_buf(),
            source: std::io::Error::from_raw_os_error(c - CHDIR_FAILED),
        }),
        c => Err(OverlayMountError::Mount {
            source: std::io::Error::from_raw_os_error(c),
            relative_to: Some(dir.to_path_buf()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_relative_to_the_dirs_common_parent() {
        let (dir, compact) = relative_options(&[
            "lowerdir=/store/snapshots/3/fs:/store/snapshots/2/fs:/store/snapshots/1/fs",
            "upperdir=/store/snapshots/4/fs",
            "workdir=/store/snapshots/4/work",
            "userxattr",
        ])
        .unwrap();
        assert_eq!(dir, Path::new("/store/snapshots"));
        assert_eq!(
            compact,
            "lowerdir=3/fs:2/fs:1/fs,upperdir=4/fs,workdir=4/work,userxattr"
        );
    }

    #[test]
    fn a_dir_that_is_the_common_parent_itself_becomes_dot() {
        let (dir, compact) = relative_options(&["lowerdir=/a/b:/a/b/c"]).unwrap();
        assert_eq!(dir, Path::new("/a"));
        assert_eq!(compact, "lowerdir=b:b/c");
        let (dir, compact) = relative_options(&["lowerdir=/a:/b"]).unwrap();
        assert_eq!(dir, Path::new("/"));
        assert_eq!(compact, "lowerdir=a:b");
    }

    #[test]
    fn a_relative_dir_cannot_be_made_relative_again() {
        assert!(relative_options(&["lowerdir=/a/b:c/d"]).is_none());
    }

    #[test]
    fn more_lower_dirs_than_overlayfs_stacks_are_refused_before_mounting() {
        let lowers = vec!["/x"; OVERLAY_MAX_LOWER_LAYERS + 1].join(":");
        let err =
            mount_overlay(Path::new("/nonexistent"), 0, &format!("lowerdir={lowers}")).unwrap_err();
        assert!(
            matches!(
                err,
                OverlayMountError::TooDeep(TooDeep {
                    layers: 501,
                    limit: 500
                })
            ),
            "{err:?}"
        );
    }
}
