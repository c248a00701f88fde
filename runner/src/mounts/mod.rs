//! The one mount layer both backends share: a step's `RUN --mount` list is resolved here, once, on the
//! host, into concrete mounts (host paths to bind, filesystems to mount) and what must live as long as
//! the step does (cache locks, the secrets tmpfs, ssh-agent proxies). The embedded and containerd
//! backends then only attach what [`resolve`] returns; neither keeps mount logic of its own.
//!
//! Per kind: a cache becomes a bind of its instance directory (layout and locking in [`cache`]); a
//! secret becomes a read-only bind of a file on a tmpfs in the step directory (its bytes never touch
//! a disk); an ssh agent becomes a bind of a proxy socket in the step directory, owned and moded as
//! asked, that forwards to the real agent; binds, tmpfs and snapshotter mounts pass through.

mod cache;
mod ssh;

pub use cache::{seed_instance, shared_instance};

use std::io;
use std::path::{Path, PathBuf};

use forge_snapshotter::Mount;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::spec::{StepMount, StepMountKind};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cancelled while waiting for the lock of cache mount {id:?}")]
    Cancelled { id: String },
    #[error("mount target {target} is not an absolute path")]
    RelativeTarget { target: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache mount {id:?}: cannot copy its seed {path} of {root}: {source}")]
    Seed {
        id: String,
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |source| MountError::Io { what, path, source }
}

/// One mount as a backend attaches it, at `target` (absolute, in the container), in the order of
/// the step's mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvedMount {
    /// A host file or directory, bound recursively.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
        /// nosuid, nodev and noexec too (secrets). The embedded backend's clone of the source mount
        /// carries them already, as the secrets tmpfs has them.
        restricted: bool,
        /// A cache mount's directory: what the step writes there must outlive the step (the chroot
        /// isolation, which cannot bind, moves it in and out instead of copying it).
        cache: bool,
    },
    /// A fresh tmpfs, `size` bytes at most (0 = the kernel's default).
    Tmpfs {
        target: PathBuf,
        size: u64,
        readonly: bool,
    },
    /// A mount a snapshotter produced, passed through as it is.
    Raw { mount: Mount, target: PathBuf },
}

impl ResolvedMount {
    pub(crate) fn target(&self) -> &Path {
        match self {
            ResolvedMount::Bind { target, .. }
            | ResolvedMount::Tmpfs { target, .. }
            | ResolvedMount::Raw { target, .. } => target,
        }
    }
}

/// A step's resolved mounts and what keeps them valid; [`ResolvedMounts::release`] (or drop) gives
/// it all back. Release it before removing the step directory: the secrets tmpfs is mounted there.
#[derive(Debug, Default)]
pub(crate) struct ResolvedMounts {
    pub mounts: Vec<ResolvedMount>,
    /// The first ssh mount's target, for SSH_AUTH_SOCK (as BuildKit: the first agent is the default).
    ssh_auth_sock: Option<String>,
    leases: Vec<cache::CacheLease>,
    secrets_tmpfs: Option<PathBuf>,
    ssh_proxies: Vec<JoinHandle<()>>,
}

impl ResolvedMounts {
    /// Adds SSH_AUTH_SOCK to `env` (the step's variables and secret variables) when an agent is
    /// forwarded and the step does not set the variable itself.
    pub(crate) fn apply_env(&self, env: &mut Vec<(String, String)>) {
        if let Some(sock) = &self.ssh_auth_sock
            && !env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK")
        {
            env.push(("SSH_AUTH_SOCK".into(), sock.clone()));
        }
    }

    /// Releases cache locks, stops ssh proxies and unmounts the secrets tmpfs. Idempotent.
    pub(crate) fn release(&mut self) -> Result<(), MountError> {
        self.leases.clear();
        for proxy in self.ssh_proxies.drain(..) {
            proxy.abort();
        }
        if let Some(dir) = self.secrets_tmpfs.take() {
            // MNT_DETACH: a straggling reader must not keep the secrets mounted.
            match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io_err("unmount", &dir)(e.into())),
            }
        }
        Ok(())
    }
}

impl Drop for ResolvedMounts {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Resolves `mounts` for one step. `cache_root` holds the caches; `step_dir` is the backend's
/// directory for this step (removed by the backend after [`ResolvedMounts::release`]), where the
/// secrets tmpfs (`secrets/`) and proxy sockets (`ssh-<index>.sock`) go. Waiting for a cache lock
/// ends with [`MountError::Cancelled`] when `cancel` fires. Must run on a tokio runtime: the ssh
/// proxies are tasks on it. Without `may_mount` (the chroot isolation, where the process may not
/// mount) secrets are plain files in the step directory (mode 0700) instead of on a tmpfs.
pub(crate) async fn resolve(
    mounts: &[StepMount],
    cache_root: &Path,
    step_dir: &Path,
    may_mount: bool,
    cancel: &CancellationToken,
) -> Result<ResolvedMounts, MountError> {
    // Built up in place, so that an error halfway releases what was already taken.
    let mut out = ResolvedMounts::default();
    if let Some(m) = mounts.iter().find(|m| !m.target.is_absolute()) {
        return Err(MountError::RelativeTarget {
            target: m.target.clone(),
        });
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
        if may_mount {
            mount_secrets_tmpfs(&secrets_dir, secret_bytes)?;
            out.secrets_tmpfs = Some(secrets_dir.clone());
        } else {
            secrets_plain_dir(&secrets_dir)?;
        }
    }
    // Instance 0 of each cache id this step holds already (`shared` or `locked`): a second
    // mount of the same id in the same step is the same directory, as in BuildKit, not a second
    // wait for the lock the step itself holds, which would never end.
    let mut held: Vec<(&str, PathBuf)> = Vec::new();
    for (index, m) in mounts.iter().enumerate() {
        let target = m.target.clone();
        let resolved = match &m.kind {
            StepMountKind::Bind { source, readonly } => ResolvedMount::Bind {
                source: source.clone(),
                target,
                readonly: *readonly,
                restricted: false,
                cache: false,
            },
            StepMountKind::Cache {
                id,
                sharing,
                uid,
                gid,
                mode,
                seed,
                readonly,
            } => {
                let create = cache::Create {
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                    seed: seed.as_ref(),
                };
                // Without mounts the instance is moved into the step's root, so it can serve one
                // step at a time: `shared` waits as `locked` does.
                let sharing = match sharing {
                    crate::spec::CacheSharing::Shared if !may_mount => {
                        crate::spec::CacheSharing::Locked
                    }
                    other => *other,
                };
                let again = held.iter().find(|(h, _)| *h == id.as_str());
                let source = match again {
                    Some((_, dir)) if sharing != crate::spec::CacheSharing::Private => dir.clone(),
                    _ => {
                        let lease = cache::acquire(cache_root, id, sharing, create, cancel).await?;
                        let dir = lease.dir.clone();
                        out.leases.push(lease);
                        if sharing != crate::spec::CacheSharing::Private {
                            held.push((id.as_str(), dir.clone()));
                        }
                        dir
                    }
                };
                ResolvedMount::Bind {
                    source,
                    target,
                    readonly: *readonly,
                    restricted: false,
                    cache: true,
                }
            }
            StepMountKind::Tmpfs { size, readonly } => ResolvedMount::Tmpfs {
                target,
                size: *size,
                readonly: *readonly,
            },
            StepMountKind::Secret {
                data,
                uid,
                gid,
                mode,
            } => {
                let path = secrets_dir.join(format!("secret-{index}"));
                write_owned(&path, data, *uid, *gid, *mode)?;
                ResolvedMount::Bind {
                    source: path,
                    target,
                    readonly: true,
                    restricted: true,
                    cache: false,
                }
            }
            StepMountKind::Ssh {
                agent_socket,
                uid,
                gid,
                mode,
            } => {
                let path = step_dir.join(format!("ssh-{index}.sock"));
                out.ssh_proxies
                    .push(ssh::proxy(&path, agent_socket, *uid, *gid, *mode)?);
                out.ssh_auth_sock
                    .get_or_insert_with(|| target.to_string_lossy().into_owned());
                ResolvedMount::Bind {
                    source: path,
                    target,
                    readonly: false,
                    restricted: false,
                    cache: false,
                }
            }
            StepMountKind::Raw(mount) => ResolvedMount::Raw {
                mount: mount.clone(),
                target,
            },
        };
        out.mounts.push(resolved);
    }
    Ok(out)
}

/// Secrets live on a tmpfs of their own so that their bytes never touch a disk, whatever the state
/// directory is on.
fn mount_secrets_tmpfs(dir: &Path, bytes: usize) -> Result<(), MountError> {
    use nix::mount::MsFlags;
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create", dir)(e)),
    }
    let data = format!("mode=0700,size={}", bytes + (1 << 20));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| io_err("mount a tmpfs for secrets on", dir)(e.into()))
}

/// The secrets directory where nothing may be mounted: private to root, removed with the step
/// directory.
fn secrets_plain_dir(dir: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

fn write_owned(path: &Path, data: &[u8], uid: u32, gid: u32, mode: u32) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).map_err(io_err("write", path))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}
