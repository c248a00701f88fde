//! Removes directories an overlay copied up only because a mount stub was created inside them (e.g.
//! `etc/` for a missing /etc/hosts), so a step that changes nothing leaves an empty upper dir.
//! A directory is removed only if the step did not create or change it: absent from the upper dir
//! before, empty after, not opaque, and with the same mode, owner and mtime as in the lower layer.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use forge_snapshotter::Mount;

/// The upper dir and the lower dirs (topmost first) of the rootfs overlay, if it is one.
pub(crate) fn overlay_layers(rootfs: &[Mount]) -> Option<(PathBuf, Vec<PathBuf>)> {
    let m = rootfs
        .iter()
        .find(|m| m.kind == "overlay" || m.kind == "fuse-overlayfs")?;
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key).map(str::to_string))
    };
    let upper = PathBuf::from(opt("upperdir=")?);
    let lowers = opt("lowerdir=")?
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    Some((upper, lowers))
}

/// Ancestors (relative, without the root) of the paths mount stubs may be created under.
pub(crate) fn candidates<'a>(targets: impl IntoIterator<Item = &'a Path>) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for t in targets {
        for a in t.ancestors().skip(1) {
            let rel: PathBuf = a
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            if rel.as_os_str().is_empty() {
                break;
            }
            out.insert(rel);
        }
    }
    out
}

pub(crate) fn existing(upper: &Path, candidates: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    candidates
        .iter()
        .filter(|c| fs::symlink_metadata(upper.join(c)).is_ok())
        .cloned()
        .collect()
}

fn has_xattr(path: &Path, name: &std::ffi::CStr) -> bool {
    let Ok(c) = super::sys::cstr(path) else {
        return true;
    };
    // SAFETY: a size query (null buffer, size 0) on a valid path.
    unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

pub(crate) fn prune(
    upper: &Path,
    lowers: &[PathBuf],
    candidates: &BTreeSet<PathBuf>,
    before: &BTreeSet<PathBuf>,
) {
    // Deepest first, so a parent can become empty once its child is gone.
    let mut order: Vec<&PathBuf> = candidates.difference(before).collect();
    order.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for rel in order {
        let path = upper.join(rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let empty = fs::read_dir(&path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !meta.is_dir() || !empty {
            continue;
        }
        if has_xattr(&path, c"trusted.overlay.opaque") || has_xattr(&path, c"user.overlay.opaque") {
            continue;
        }
        let Some(lower) = lowers
            .iter()
            .find_map(|l| fs::symlink_metadata(l.join(rel)).ok())
        else {
            continue;
        };
        let same = lower.is_dir()
            && lower.mode() == meta.mode()
            && lower.uid() == meta.uid()
            && lower.gid() == meta.gid()
            && lower.mtime() == meta.mtime()
            && lower.mtime_nsec() == meta.mtime_nsec();
        if same {
            let _ = fs::remove_dir(&path);
        }
    }
}
