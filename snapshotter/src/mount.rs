//! A mount as snapshotters hand it out and runners apply it (containerd's `Mount` shape), so that a
//! runner needs no knowledge of which snapshotter made a root filesystem.

use std::path::PathBuf;

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
