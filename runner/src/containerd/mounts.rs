//! Host-side preparation of a step's mounts: the generated /etc files, `RUN --mount` kinds turned into
//! OCI mounts (cache directories with their locks, secrets on a private tmpfs, an ssh-agent proxy
//! socket), and the mount-point stubs runc leaves in the rootfs, removed again after the step so that
//! they never reach the committed change set.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Mount as OciMount;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ContainerdError;
use super::rootfs::{RootfsView, normalize};
use super::spec::mount;
use crate::spec::{CacheSharing, StepMount, StepMountKind};

/// How often a step waiting for a cache lock looks again (and checks for cancellation).
const LOCK_POLL: Duration = Duration::from_millis(50);

/// A step's mounts beyond the standard ones, and what keeps them valid on the host until released.
#[derive(Default)]
pub(crate) struct PreparedMounts {
    pub oci: Vec<OciMount>,
    /// flock()ed cache lock files; closing them releases the locks.
    locks: Vec<File>,
    /// The tmpfs holding secret files, unmounted on release.
    secrets_tmpfs: Option<PathBuf>,
    ssh_proxies: Vec<JoinHandle<()>>,
}

impl PreparedMounts {
    /// Releases cache locks, stops ssh proxies and unmounts the secrets tmpfs. Idempotent.
    pub(crate) fn release(&mut self) -> Result<(), ContainerdError> {
        self.locks.clear();
        for proxy in self.ssh_proxies.drain(..) {
            proxy.abort();
        }
        if let Some(dir) = self.secrets_tmpfs.take() {
            unmount(&dir)?;
        }
        Ok(())
    }
}

impl Drop for PreparedMounts {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Writes the generated /etc files into `step_dir` and turns the step's mounts into OCI mounts.
pub(crate) async fn prepare(
    step_dir: &Path,
    cache_root: &Path,
    hostname: &str,
    mounts: &[StepMount],
    cancel: &CancellationToken,
) -> Result<PreparedMounts, ContainerdError> {
    let mut prepared = PreparedMounts::default();
    let etc = step_dir.join("etc");
    create_dir(&etc, 0o755)?;
    let hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    // The host's resolvers, which a host-network step reaches as the host does; with `none` nothing
    // is reachable anyway, but tools that parse resolv.conf still find a well-formed file.
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let generated = [
        ("hosts", hosts.into_bytes()),
        ("resolv.conf", resolv),
        ("hostname", format!("{hostname}\n").into_bytes()),
    ];
    for (name, content) in generated {
        let path = etc.join(name);
        write_file(&path, &content, 0o644)?;
        prepared.oci.push(mount(
            &format!("/etc/{name}"),
            "bind",
            &path.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }

    let secret_bytes: usize = mounts
        .iter()
        .map(|m| match &m.kind {
            StepMountKind::Secret { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    let secrets_dir = step_dir.join("secrets");
    if mounts
        .iter()
        .any(|m| matches!(m.kind, StepMountKind::Secret { .. }))
    {
        // Secrets live on a tmpfs of their own so that their bytes never touch a disk, whatever the
        // state directory is on.
        create_dir(&secrets_dir, 0o700)?;
        mount_tmpfs(&secrets_dir, secret_bytes + (1 << 20))?;
        prepared.secrets_tmpfs = Some(secrets_dir.clone());
    }

    for (index, step_mount) in mounts.iter().enumerate() {
        if !step_mount.target.is_absolute() {
            return Err(ContainerdError::RelativeTarget {
                target: step_mount.target.clone(),
            });
        }
        let target = normalize(&step_mount.target);
        let target = target.to_string_lossy();
        let oci = match &step_mount.kind {
            StepMountKind::Bind { source, readonly } => mount(
                &target,
                "bind",
                &source.to_string_lossy(),
                &["rbind", if *readonly { "ro" } else { "rw" }],
            )?,
            StepMountKind::Cache {
                id,
                sharing,
                uid,
                gid,
                mode,
            } => {
                let (dir, lock) =
                    cache_dir(cache_root, id, *sharing, *uid, *gid, *mode, cancel).await?;
                prepared.locks.push(lock);
                mount(&target, "bind", &dir.to_string_lossy(), &["rbind", "rw"])?
            }
            StepMountKind::Tmpfs { size } => {
                let size = format!("size={size}");
                let mut options = vec!["nosuid", "nodev", "mode=1777"];
                if !size.ends_with("=0") {
                    options.push(&size);
                }
                mount(&target, "tmpfs", "tmpfs", &options)?
            }
            StepMountKind::Secret {
                data,
                uid,
                gid,
                mode,
            } => {
                let path = secrets_dir.join(format!("secret-{index}"));
                write_file(&path, data, *mode)?;
                chown(&path, *uid, *gid)?;
                mount(
                    &target,
                    "bind",
                    &path.to_string_lossy(),
                    &["rbind", "ro", "nosuid", "nodev", "noexec"],
                )?
            }
            StepMountKind::Ssh {
                agent_socket,
                uid,
                gid,
                mode,
            } => {
                let path = step_dir.join(format!("ssh-{index}.sock"));
                prepared
                    .ssh_proxies
                    .push(ssh_proxy(&path, agent_socket, *uid, *gid, *mode)?);
                mount(&target, "bind", &path.to_string_lossy(), &["rbind", "rw"])?
            }
            StepMountKind::Raw(m) => {
                let options = m.options.iter().map(String::as_str).collect::<Vec<_>>();
                mount(&target, &m.kind, &m.source.to_string_lossy(), &options)?
            }
        };
        prepared.oci.push(oci);
    }
    Ok(prepared)
}

/// The cache directory for `id` and the lock that stands for this step's use of it. `Shared` holds a
/// shared lock (so a `Locked` user elsewhere waits for it), `Locked` an exclusive one, and `Private`
/// takes the first instance of the cache nobody else holds, creating one if all are busy.
async fn cache_dir(
    cache_root: &Path,
    id: &str,
    sharing: CacheSharing,
    uid: u32,
    gid: u32,
    mode: u32,
    cancel: &CancellationToken,
) -> Result<(PathBuf, File), ContainerdError> {
    create_dir_all(cache_root)?;
    let base = cache_name(id);
    let mut instance = 0u32;
    loop {
        // `%p` cannot come out of cache_name's escaping, so instance names never meet another id.
        let name = match instance {
            0 => base.clone(),
            n => format!("{base}%p{n}"),
        };
        let dir = cache_root.join(&name);
        let lock_path = cache_root.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ContainerdError::io("cannot open cache lock", &lock_path, e))?;
        let try_lock = |f: &File| match sharing {
            CacheSharing::Shared => f.try_lock_shared(),
            CacheSharing::Private | CacheSharing::Locked => f.try_lock(),
        };
        loop {
            match try_lock(&lock) {
                Ok(()) => {
                    if !dir.exists() {
                        create_dir(&dir, mode)?;
                        chown(&dir, uid, gid)?;
                    }
                    return Ok((dir, lock));
                }
                Err(std::fs::TryLockError::WouldBlock) if sharing == CacheSharing::Private => {
                    instance += 1;
                    break;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(ContainerdError::Cancelled),
                        _ = tokio::time::sleep(LOCK_POLL) => {}
                    }
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(ContainerdError::io("cannot lock", lock_path, e));
                }
            }
        }
    }
}

/// A file name for a cache id: bytes outside `[A-Za-z0-9._-]`, a leading dot and `%` are escaped as
/// `%XX`, so that distinct ids never share a directory and none climbs out of the cache root.
pub(crate) fn cache_name(id: &str) -> String {
    if id.is_empty() {
        return "%".to_string();
    }
    let mut name = String::new();
    for (i, byte) in id.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || byte == b'.';
        if plain && !(i == 0 && byte == b'.') {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

/// A socket in the step directory, owned and moded as the step asked, that forwards each connection
/// to the real agent: binding the agent socket itself would chmod the user's own socket.
fn ssh_proxy(
    path: &Path,
    agent: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<JoinHandle<()>, ContainerdError> {
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| ContainerdError::io("cannot bind ssh proxy socket", path, e))?;
    chown(path, uid, gid)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ContainerdError::io("cannot chmod", path, e))?;
    let agent = agent.to_path_buf();
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&agent).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

/// Mount points that did not exist in the rootfs before the step, so runc created them in the
/// writable layer; see [`Stubs::remove`].
#[derive(Debug, Default)]
pub(crate) struct Stubs {
    writable: PathBuf,
    /// (mount destination, its topmost ancestor that was missing), both absolute in the container.
    created: Vec<(PathBuf, PathBuf)>,
}

impl Stubs {
    pub(crate) fn find<'a>(
        view: &RootfsView,
        destinations: impl IntoIterator<Item = &'a Path>,
    ) -> Option<Stubs> {
        let writable = view.writable()?.to_path_buf();
        let mut created = Vec::new();
        for destination in destinations {
            let destination = normalize(destination);
            let mut top = None;
            for ancestor in destination.ancestors() {
                if ancestor == Path::new("/") || view.exists(ancestor) {
                    break;
                }
                top = Some(ancestor.to_path_buf());
            }
            if let Some(top) = top {
                created.push((destination, top));
            }
        }
        Some(Stubs { writable, created })
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
        Ok(())
    }
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

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ContainerdError> {
    std::fs::write(path, content).map_err(|e| ContainerdError::io("cannot write", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ContainerdError::io("cannot chmod", path, e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), ContainerdError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| ContainerdError::io("cannot chown", path, e))
}

fn c_path(path: &Path) -> Result<std::ffi::CString, ContainerdError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| ContainerdError::io("bad path", path, e.into()))
}

fn mount_tmpfs(dir: &Path, size: usize) -> Result<(), ContainerdError> {
    let target = c_path(dir)?;
    let data = std::ffi::CString::new(format!("mode=0700,size={size}")).expect("no NUL");
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(ContainerdError::io(
            "cannot mount a tmpfs for secrets on",
            dir,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn unmount(dir: &Path) -> Result<(), ContainerdError> {
    let target = c_path(dir)?;
    // SAFETY: a NUL-terminated path. MNT_DETACH: a straggling reader must not keep the secret mounted.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(ContainerdError::io("cannot unmount", dir, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_snapshotter::Mount;

    #[test]
    fn cache_names_are_injective_and_stay_in_the_root() {
        assert_eq!(cache_name("go-build"), "go-build");
        assert_eq!(cache_name("/root/.cache"), "%2Froot%2F.cache");
        assert_eq!(cache_name(".."), "%2E.");
        assert_eq!(cache_name(""), "%");
        assert_ne!(cache_name("a/b"), cache_name("a%2Fb"));
    }

    #[test]
    fn stubs_are_removed_only_when_empty_and_new() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let view = RootfsView::from_mounts(&[Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower.display()),
                format!("upperdir={}", upper.display()),
            ],
        }])
        .unwrap();
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
        // /etc existed in the lower layer: its copy-up directory is not a stub.
        assert!(upper.join("etc").exists());
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
