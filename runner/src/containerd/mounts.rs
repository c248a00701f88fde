//! Host-side preparation of a step's mounts for runc: the generated /etc files, the step's mounts as
//! [`crate::mounts`] resolved them turned into OCI mounts, and the mount-point stubs runc leaves in the
//! rootfs, removed again after the step so that they never reach the committed change set.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount as OciMount;
use tokio_util::sync::CancellationToken;

use super::ContainerdError;
use super::rootfs::{RootfsView, normalize};
use super::spec::mount;
use crate::mounts::{ResolvedMount, ResolvedMounts};
use crate::spec::{NetworkMode, StepMount};

/// A step's mounts beyond the standard ones, and what keeps them valid on the host until released.
pub(crate) struct PreparedMounts {
    pub oci: Vec<OciMount>,
    pub resolved: ResolvedMounts,
}

impl PreparedMounts {
    /// Releases cache locks, stops ssh proxies and unmounts the secrets tmpfs. Idempotent.
    pub(crate) fn release(&mut self) -> Result<(), ContainerdError> {
        Ok(self.resolved.release()?)
    }
}

/// Writes the generated /etc files into `step_dir` and turns the step's mounts into OCI mounts.
pub(crate) async fn prepare(
    step_dir: &Path,
    cache_root: &Path,
    hostname: &str,
    network: NetworkMode,
    join: Option<&crate::network::SharedNetwork>,
    extra_hosts: &[(String, std::net::IpAddr)],
    mounts: &[StepMount],
    cancel: &CancellationToken,
) -> Result<PreparedMounts, ContainerdError> {
    let mut oci = Vec::new();
    let etc = step_dir.join("etc");
    create_dir(&etc, 0o755)?;
    let hosts = crate::network::hosts_file(hostname, join, extra_hosts);
    let resolv = crate::network::resolv_conf(network);
    let generated = [
        ("hosts", hosts.into_bytes()),
        ("resolv.conf", resolv),
        ("hostname", format!("{hostname}\n").into_bytes()),
    ];
    for (name, content) in generated {
        let path = etc.join(name);
        write_file(&path, &content, 0o644)?;
        oci.push(mount(
            &format!("/etc/{name}"),
            "bind",
            &path.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }

    let resolved = crate::mounts::resolve(mounts, cache_root, step_dir, true, cancel).await?;
    for m in &resolved.mounts {
        let target = normalize(m.target());
        let target = target.to_string_lossy();
        oci.push(match m {
            ResolvedMount::Bind {
                source,
                readonly,
                restricted,
                ..
            } => {
                let mut options = vec!["rbind", if *readonly { "ro" } else { "rw" }];
                if *restricted {
                    options.extend(["nosuid", "nodev", "noexec"]);
                }
                mount(&target, "bind", &source.to_string_lossy(), &options)?
            }
            ResolvedMount::Tmpfs { size, readonly, .. } => {
                let size = format!("size={size}");
                let mut options = vec!["nosuid", "nodev", "mode=1777"];
                if *readonly {
                    options.push("ro");
                }
                if !size.ends_with("=0") {
                    options.push(&size);
                }
                mount(&target, "tmpfs", "tmpfs", &options)?
            }
            ResolvedMount::Raw { mount: m, .. } => {
                let options = m.options.iter().map(String::as_str).collect::<Vec<_>>();
                mount(&target, &m.kind, &m.source.to_string_lossy(), &options)?
            }
        });
    }
    Ok(PreparedMounts { oci, resolved })
}

/// Mount points that did not exist in the rootfs before the step, so runc created them in the
/// writable layer; see [`Stubs::remove`].
#[derive(Debug, Default)]
pub(crate) struct Stubs {
    writable: PathBuf,
    /// (mount destination, its topmost ancestor that was missing), both absolute in the container.
    created: Vec<(PathBuf, PathBuf)>,
    /// Directories above a destination that the rootfs had (`/etc` above `/etc/hosts`), with
    /// their mode and owner: runc's making of the mount point copies them up into the writable
    /// layer, where they would be in the step's layer though the step did not touch them.
    copied_up: Vec<(PathBuf, (u32, u32, u32))>,
}

impl Stubs {
    pub(crate) fn find<'a>(
        view: &RootfsView,
        destinations: impl IntoIterator<Item = &'a Path>,
    ) -> Option<Stubs> {
        let writable = view.writable()?.to_path_buf();
        let mut created = Vec::new();
        let mut copied_up: Vec<(PathBuf, (u32, u32, u32))> = Vec::new();
        for destination in destinations {
            // Where runc makes it: through the rootfs's links (Debian's /var/run is /run).
            let destination = normalize(destination);
            let destination = view.resolve(&destination).unwrap_or(destination);
            let mut top = None;
            for ancestor in destination.ancestors() {
                if ancestor == Path::new("/") || view.exists(ancestor) {
                    break;
                }
                top = Some(ancestor.to_path_buf());
            }
            for ancestor in destination.ancestors().skip(1) {
                if ancestor == Path::new("/") || copied_up.iter().any(|(d, _)| d == ancestor) {
                    continue;
                }
                // Only what a lower layer holds is a copy-up (not what this layer had already).
                if let Some(found) = view.find(ancestor)
                    && !found.starts_with(&writable)
                    && let Ok(md) = std::fs::symlink_metadata(&found)
                    && md.is_dir()
                {
                    use std::os::unix::fs::MetadataExt;
                    copied_up.push((ancestor.to_path_buf(), (md.mode(), md.uid(), md.gid())));
                }
            }
            if let Some(top) = top {
                created.push((destination, top));
            }
        }
        Some(Stubs {
            writable,
            created,
            copied_up,
        })
    }

    /// Removes, from the writable layer, each stub that is still an empty file or directory, and the
    /// empty directories created above it. Anything the step put there stays. Runs after the task is
    /// deleted, when the rootfs is no longer mounted.
    pub(crate) fn remove(&self) -> Result<(), ContainerdError> {
        let mut created = self.created.clone();
        // Deeper destinations first, so a stub directory is empty by the time its parent is visited.
        created.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (destination, top) in &created {
            for ancestor in destination.ancestors() {
                let Some(host) = host_path(&self.writable, ancestor) else {
                    break;
                };
                match std::fs::symlink_metadata(&host) {
                    Ok(meta) if meta.is_file() && meta.len() == 0 => {
                        std::fs::remove_file(&host)
                            .map_err(|e| ContainerdError::io("cannot remove stub", &host, e))?;
                    }
                    Ok(meta) if meta.is_dir() => match std::fs::remove_dir(&host) {
                        Ok(()) => {}
                        // Not empty: the step wrote there, or another stub still lives below.
                        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => break,
                        Err(e) => return Err(ContainerdError::io("cannot remove stub", &host, e)),
                    },
                    Ok(_) => break,
                    Err(_) => {}
                }
                if ancestor == top.as_path() {
                    break;
                }
            }
        }
        // A copied-up directory the step left as it was (empty in this layer: no file of its own,
        // no whiteout; same mode and owner) is no change of the step's.
        let mut copied = self.copied_up.clone();
        copied.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, (mode, uid, gid)) in &copied {
            use std::os::unix::fs::MetadataExt;
            let Some(host) = host_path(&self.writable, dir) else {
                continue;
            };
            let Ok(md) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            let empty = std::fs::read_dir(&host).is_ok_and(|mut d| d.next().is_none());
            let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
                .iter()
                .any(|name| has_xattr(&host, name));
            if md.is_dir()
                && empty
                && !opaque
                && (md.mode(), md.uid(), md.gid()) == (*mode, *uid, *gid)
            {
                let _ = std::fs::remove_dir(&host);
            }
        }
        Ok(())
    }
}

/// Whether `path` (not followed if a link) has the extended attribute `name`.
fn has_xattr(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings that outlive the call; a zero-length buffer asks
    // only for the value's size.
    unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// `path` (absolute in the container) inside `layer`, or `None` when an intermediate component is not
/// a real directory: a symlink the step made must never lead the cleanup outside the layer.
fn host_path(layer: &Path, path: &Path) -> Option<PathBuf> {
    let mut host = layer.to_path_buf();
    let components: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if components.is_empty() {
        return None;
    }
    for (i, name) in components.iter().enumerate() {
        host.push(name);
        if i + 1 < components.len() {
            match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => {}
                _ => return None,
            }
        }
    }
    Some(host)
}

pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), ContainerdError> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ContainerdError::io("cannot create directory", path, e)),
    }
    // Explicit chmod: the process umask must not decide what a step may read.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ContainerdError::io("cannot chmod", path, e))
}

pub(crate) fn create_dir_all(path: &Path) -> Result<(), ContainerdError> {
    std::fs::create_dir_all(path)
        .map_err(|e| ContainerdError::io("cannot create directory", path, e))
}

/// Makes the directory that holds the steps' scratch (their /etc files, output pipes and
/// secrets) and keeps it forge's own: one another user owns is refused (in a shared temporary
/// directory it could be made first, and its owner could swap a step's files), and it is made
/// 0700.
pub(crate) fn private_dir(path: &Path) -> Result<(), ContainerdError> {
    use std::os::unix::fs::MetadataExt;
    create_dir_all(path)?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| ContainerdError::io("cannot look at", path, e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != euid {
        return Err(ContainerdError::io(
            "refusing the steps' scratch directory",
            path,
            std::io::Error::other(format!(
                "it is owned by uid {} (not this user, {euid}) or is no directory: remove it, or \
                 point TMPDIR (or the store) elsewhere",
                meta.uid()
            )),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ContainerdError::io("cannot chmod", path, e))?;
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ContainerdError> {
    std::fs::write(path, content).map_err(|e| ContainerdError::io("cannot write", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ContainerdError::io("cannot chmod", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_snapshotter::Mount;

    /// The view of an overlay of `upper` over `lower`.
    fn overlay_view(lower: &Path, upper: &Path) -> RootfsView {
        RootfsView::from_mounts(&[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower.display()),
                format!("upperdir={}", upper.display()),
            ],
        }])
        .unwrap()
    }

    /// Regression (containerd sweep 02): the steps' scratch went to `$TMPDIR/forge-containerd-steps`
    /// whoever owned it, and a user who made it first swapped a root build's /etc/hosts. One
    /// another user owns is refused; forge's own is made 0700.
    #[test]
    fn the_steps_scratch_directory_is_forges_own() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&mine).unwrap();
        assert_eq!(std::fs::metadata(&mine).unwrap().mode() & 0o7777, 0o700);
        private_dir(&dir.path().join("made/below")).unwrap();
        if !forge_testsupport::is_root() {
            return;
        }
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = private_dir(&theirs).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
    }

    #[test]
    fn stubs_are_removed_only_when_empty_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let view = overlay_view(&lower, &upper);
        let destinations = [
            Path::new("/etc/hosts"),
            Path::new("/run/secrets/token"),
            Path::new("/cache"),
            Path::new("/etc"),
        ];
        let stubs = Stubs::find(&view, destinations).unwrap();
        // What runc would create, plus a file the step wrote into a stub directory.
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("run/secrets/token"), "").unwrap();
        std::fs::create_dir_all(upper.join("cache")).unwrap();
        std::fs::write(upper.join("cache/kept"), "x").unwrap();
        stubs.remove().unwrap();
        assert!(!upper.join("etc/hosts").exists());
        assert!(!upper.join("run").exists());
        assert!(upper.join("cache/kept").exists());
        // /etc existed in the lower layer: its copy-up directory, empty and as the lower's, is
        // no change of the step's either (containerd sweep 05: every containerd RUN layer held
        // `etc/`, and its image differed from the embedded runner's).
        assert!(!upper.join("etc").exists());
    }

    /// A copied-up directory the step did change (a file of its own, another mode) stays.
    #[test]
    fn a_copied_up_directory_the_step_changed_stays() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        for d in ["etc", "var/cache"] {
            std::fs::create_dir_all(lower.join(d)).unwrap();
        }
        std::fs::write(lower.join("etc/hosts"), "").unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let view = overlay_view(&lower, &upper);
        let stubs =
            Stubs::find(&view, [Path::new("/etc/hosts"), Path::new("/var/cache/c")]).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(upper.join("etc/mine"), "x").unwrap();
        std::fs::create_dir_all(upper.join("var/cache/c")).unwrap();
        std::fs::set_permissions(upper.join("var"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        stubs.remove().unwrap();
        assert!(upper.join("etc/mine").exists());
        assert!(!upper.join("var/cache").exists(), "an unchanged copy-up");
        assert!(upper.join("var").exists(), "its mode changed");
    }

    /// Regression (containerd sweep 04): on Debian `/var/run` is a link to `/run`, and runc makes a
    /// mount point at `/var/run/secrets/tok` in `/run/secrets/`: the stubs were looked for at the
    /// unresolved path, and an empty `run/secrets/tok` stayed in the image.
    #[test]
    fn stubs_are_found_where_the_rootfs_links_lead() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(lower.join("run")).unwrap();
        std::fs::create_dir_all(lower.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", lower.join("var/run")).unwrap();
        std::fs::create_dir_all(lower.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", lower.join("lib")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let view = overlay_view(&lower, &upper);
        assert_eq!(
            view.resolve(Path::new("/var/run/secrets/tok")).unwrap(),
            Path::new("/run/secrets/tok")
        );
        assert_eq!(
            view.resolve(Path::new("/lib/ccache")).unwrap(),
            Path::new("/usr/lib/ccache")
        );
        let stubs = Stubs::find(
            &view,
            [Path::new("/var/run/secrets/tok"), Path::new("/lib/ccache")],
        )
        .unwrap();
        // What runc makes, through the links.
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("run/secrets/tok"), "").unwrap();
        std::fs::create_dir_all(upper.join("usr/lib/ccache")).unwrap();
        stubs.remove().unwrap();
        assert!(!upper.join("run/secrets").exists());
        assert!(!upper.join("usr/lib/ccache").exists());
    }

    #[test]
    fn stub_cleanup_never_follows_a_symlink_out_of_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("hosts"), "").unwrap();
        let view = RootfsView::from_mounts(&[Mount::bind(&upper, false)]).unwrap();
        let stubs = Stubs::find(&view, [Path::new("/etc/hosts")]).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("etc")).unwrap();
        stubs.remove().unwrap();
        assert!(outside.join("hosts").exists());
    }
}
