//! Mount points the operations use: a snapshot's mounts made visible at a path for the length of a
//! file operation or a step, and taken down again however it ends.

use std::path::{Path, PathBuf};

use forge_snapshotter::Mount as FsMount;

use super::{ExecError, io_err};

/// A filesystem made visible at a path for the duration of a step; unmounted on drop.
pub struct Mounted {
    path: PathBuf,
    mounted: Option<PathBuf>,
    remove_dir: bool,
    /// A kernel overlay's upper directory, when writable (see [`Mounted::upper`]).
    upper: Option<PathBuf>,
    /// A directory emptied on drop (see [`Mounted::emptied_on_drop`]).
    empty: Option<PathBuf>,
}

impl Mounted {
    pub(super) fn existing(path: PathBuf) -> Mounted {
        Mounted {
            path,
            mounted: None,
            remove_dir: false,
            upper: None,
            empty: None,
        }
    }

    pub(super) fn owned_dir(path: PathBuf) -> Mounted {
        Mounted {
            path,
            mounted: None,
            remove_dir: true,
            upper: None,
            empty: None,
        }
    }

    /// Empties `dir` (a view's directory in its throwaway snapshot) when dropped, once unmounted:
    /// a view of many files is removed by several threads, where the snapshot's removal after it
    /// would unlink them one by one.
    pub(super) fn emptied_on_drop(mut self, dir: PathBuf) -> Mounted {
        self.empty = Some(dir);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The upper directory of a writable kernel overlay: where the overlay itself puts whatever
    /// is written through it. A directory created through the mount that no lower layer has is
    /// the same directory there, so a file inside it can be made there directly, without the
    /// overlay's lookups in every layer (see `fileop::apply_with_upper`). Not for fuse-overlayfs,
    /// which keeps its own view of the upper directory in memory.
    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// Applies a snapshotter's mounts at `target`. A single bind needs no mount at all: its source
    /// directory is used in place.
    pub fn mount(mounts: &[FsMount], target: PathBuf) -> Result<Mounted, ExecError> {
        match mounts {
            [m] if m.kind == "bind" || m.kind == "rbind" => Ok(Mounted::existing(m.source.clone())),
            [m] if m.kind == "overlay" => {
                std::fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
                let data = m
                    .options
                    .iter()
                    .filter(|o| !matches!(o.as_str(), "ro" | "rw" | "rbind"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",");
                let flags = if m.is_readonly() { libc::MS_RDONLY } else { 0 };
                // Not mount(2) directly: a deep chain under a long store path passes its one page
                // of options, and forge's threads must keep their working directory.
                forge_snapshotter::mount::mount_overlay(&target, flags, &data).map_err(|e| {
                    let _ = std::fs::remove_dir(&target);
                    ExecError::Mount {
                        what: "overlay".into(),
                        target: target.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let upper = (!m.is_readonly())
                    .then(|| m.options.iter().find_map(|o| o.strip_prefix("upperdir=")))
                    .flatten()
                    .map(PathBuf::from);
                Ok(Mounted {
                    path: target.clone(),
                    mounted: Some(target),
                    remove_dir: true,
                    upper,
                    empty: None,
                })
            }
            [m] if m.kind == "fuse-overlayfs" => {
                std::fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
                let status = std::process::Command::new("fuse-overlayfs")
                    .arg("-o")
                    .arg(m.options.join(","))
                    .arg(&target)
                    .status()
                    .map_err(io_err("running fuse-overlayfs for", &target))?;
                if !status.success() {
                    let _ = std::fs::remove_dir(&target);
                    return Err(ExecError::Mount {
                        what: "fuse-overlayfs".into(),
                        target,
                        reason: format!("fuse-overlayfs exited with {status}"),
                    });
                }
                Ok(Mounted {
                    path: target.clone(),
                    mounted: Some(target),
                    remove_dir: true,
                    upper: None,
                    empty: None,
                })
            }
            other => Err(ExecError::Mount {
                what: format!("{other:?}"),
                target,
                reason: "unsupported mount list".into(),
            }),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(t) = &self.mounted {
            let _ = nix::mount::umount2(t.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir(&self.path);
        }
        if let Some(dir) = &self.empty {
            super::local::empty_dir(dir);
        }
    }
}
