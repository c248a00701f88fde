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
}

impl Mounted {
    pub(super) fn existing(path: PathBuf) -> Mounted {
        Mounted {
            path,
            mounted: None,
            remove_dir: false,
        }
    }

    pub(super) fn owned_dir(path: PathBuf) -> Mounted {
        Mounted {
            path,
            mounted: None,
            remove_dir: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
                let mut flags = nix::mount::MsFlags::empty();
                if m.is_readonly() {
                    flags |= nix::mount::MsFlags::MS_RDONLY;
                }
                nix::mount::mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    flags,
                    Some(data.as_str()),
                )
                .map_err(|e| {
                    let _ = std::fs::remove_dir(&target);
                    ExecError::Mount {
                        what: "overlay".into(),
                        target: target.clone(),
                        reason: e.desc().to_string(),
                    }
                })?;
                Ok(Mounted {
                    path: target.clone(),
                    mounted: Some(target),
                    remove_dir: true,
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
    }
}
