//! Rootless entry: moves the whole forge process into a user namespace (and a private mount namespace)
//! before any thread starts, so snapshots, overlay mounts and steps all run as namespace-root.
//!
//! Instead of re-executing itself as `buildah unshare` does, forge forks a helper *before* unsharing;
//! the helper stays in the host's user namespace, where the setuid newuidmap/newgidmap work, and writes
//! the maps for forge's pid. Forge keeps its pid, stdio, arguments and terminal signals.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

// Written once in the snapshotter, which asks too; re-exported here because it belongs to this
// module's story (`enter_user_namespace` tells host root from namespace root with it).
pub use forge_snapshotter::userns::in_user_namespace;

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("enter_user_namespace must run before any thread starts ({threads} threads running)")]
    NotSingleThreaded { threads: usize },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing id maps for user {user} (uid {uid}) failed: {detail}")]
    Maps {
        user: String,
        uid: u32,
        detail: String,
    },
}

/// What [`enter_user_namespace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNamespace {
    /// Running as real root: no user namespace is needed.
    HostRoot,
    /// Already inside a user namespace as its root (set up by a caller): nothing was done.
    AlreadyInside,
    /// Container ids 0 -> `host_uid`, then 1 onwards -> the user's subordinate ranges, each
    /// `(start, count)`, one after another in the order the file lists them (as rootless podman
    /// maps them).
    Mapped {
        host_uid: u32,
        host_gid: u32,
        subuid: Vec<(u32, u32)>,
        subgid: Vec<(u32, u32)>,
    },
    /// Only the caller's own ids are mapped (no subordinate range); see `warning`.
    SingleId {
        host_uid: u32,
        host_gid: u32,
        warning: String,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> UsernsError {
    let what = what.into();
    move |e| UsernsError::Sys {
        what,
        source: e.into(),
    }
}

/// Most ranges one map takes after the user's own id: the kernel reads 340 lines of a uid_map.
const MAX_RANGES: usize = 339;

/// Every `start:count` range for `name` or `uid` in an /etc/subuid-style file, in its order (an
/// administrator's `usermod --add-subuids` adds a line; newuidmap maps them all); `None` when
/// there is none.
pub fn subordinate_ranges(file: &Path, name: &str, uid: u32) -> Option<Vec<(u32, u32)>> {
    let text = fs::read_to_string(file).ok()?;
    let uid = uid.to_string();
    let ranges: Vec<(u32, u32)> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != name && who != uid {
                return None;
            }
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .filter(|&(_, count): &(u32, u32)| count > 0)
        .take(MAX_RANGES)
        .collect();
    (!ranges.is_empty()).then_some(ranges)
}

/// newuidmap's arguments after the pid: the caller's own id as 0, then each range from 1 on.
fn map_args(id: u32, ranges: &[(u32, u32)]) -> Vec<String> {
    let mut args = vec!["0".to_string(), id.to_string(), "1".to_string()];
    let mut inside: u64 = 1;
    for &(start, count) in ranges {
        args.extend([inside.to_string(), start.to_string(), count.to_string()]);
        inside += u64::from(count);
    }
    args
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().ok()))
        })
        .flatten()
        .unwrap_or(1)
}

/// Enters a user namespace as its root, with the subordinate ids of /etc/subuid and /etc/subgid
/// mapped, then a private mount namespace. Call it first thing in `main`, before a tokio runtime or any
/// other thread exists (unshare(CLONE_NEWUSER) refuses multi-threaded callers). A no-op for real root.
pub fn enter_user_namespace() -> Result<UserNamespace, UsernsError> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        return Ok(if in_user_namespace() {
            UserNamespace::AlreadyInside
        } else {
            UserNamespace::HostRoot
        });
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(UsernsError::NotSingleThreaded { threads });
    }
    let gid = nix::unistd::getegid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(euid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| euid.to_string());
    let subuid = subordinate_ranges(Path::new("/etc/subuid"), &name, euid);
    let subgid = subordinate_ranges(Path::new("/etc/subgid"), &name, euid);
    let tools = (find_tool("newuidmap"), find_tool("newgidmap"));
    let result = match (subuid, subgid, tools) {
        (Some(su), Some(sg), (Some(newuidmap), Some(newgidmap))) => {
            match map_with_helpers(&name, euid, gid, &su, &sg, &newuidmap, &newgidmap) {
                Ok(()) => UserNamespace::Mapped {
                    host_uid: euid,
                    host_gid: gid,
                    subuid: su,
                    subgid: sg,
                },
                // The helpers ran and were refused (a non-root user in a container, where the
                // setuid newuidmap may not write another process's map): this process is in its
                // new user namespace with no map yet, and may still map its own ids.
                Err(e @ UsernsError::Maps { .. }) => match write_single_maps(euid, gid) {
                    Ok(()) => UserNamespace::SingleId {
                        host_uid: euid,
                        host_gid: gid,
                        warning: single_id_warning(&e.to_string(), euid),
                    },
                    Err(_) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        (su, sg, tools) => {
            let why = if su.is_none() && sg.is_none() {
                format!("user {name} has no range in /etc/subuid and /etc/subgid")
            } else if su.is_none() {
                format!("user {name} has a range in /etc/subgid but none in /etc/subuid")
            } else if sg.is_none() {
                format!("user {name} has a range in /etc/subuid but none in /etc/subgid")
            } else if tools.0.is_none() {
                "newuidmap is not installed (package uidmap)".to_string()
            } else {
                "newgidmap is not installed (package uidmap)".to_string()
            };
            map_single_id(euid, gid)?;
            UserNamespace::SingleId {
                host_uid: euid,
                host_gid: gid,
                warning: single_id_warning(&why, euid),
            }
        }
    };
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mount namespace"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys_err("make / private"))?;
    Ok(result)
}

/// What a build gives up when only the user's own ids are mapped, after `why`.
fn single_id_warning(why: &str, euid: u32) -> String {
    format!(
        "{why}: only uid {euid} is mapped (as root) in the user namespace, so files of other \
         owners in base images are kept as root's, and chown to any other id, USER other than \
         root, setgroups and package managers that drop privileges will fail"
    )
}

fn map_single_id(uid: u32, gid: u32) -> Result<(), UsernsError> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(sys_err("unshare user namespace"))?;
    write_single_maps(uid, gid)
}

/// Maps `uid` and `gid` alone, as root, in the user namespace this process just made (what an
/// unprivileged process may write for itself; setgroups must be denied first).
fn write_single_maps(uid: u32, gid: u32) -> Result<(), UsernsError> {
    let write = |path: &str, text: String| {
        fs::write(path, text).map_err(|source| UsernsError::Sys {
            what: format!("write {path}"),
            source,
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(())
}

fn map_with_helpers(
    name: &str,
    uid: u32,
    gid: u32,
    subuid: &[(u32, u32)],
    subgid: &[(u32, u32)],
    newuidmap: &Path,
    newgidmap: &Path,
) -> Result<(), UsernsError> {
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (res_r, res_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let target = nix::unistd::getpid();
    // SAFETY: the caller checked that this process is single-threaded.
    match unsafe { fork() }.map_err(sys_err("fork id-map helper"))? {
        ForkResult::Child => {
            drop(go_w);
            drop(res_r);
            let mut go = fs::File::from(go_r);
            let mut byte = [0u8; 1];
            let mut res = fs::File::from(res_w);
            let code = if go.read_exact(&mut byte).is_ok() {
                let pid = target.as_raw().to_string();
                let mut code = 0;
                // Both at once: each setuid helper takes milliseconds to start (it loads its
                // libraries, reads /etc/login.defs and the sub-id file), and neither waits on the
                // other's map.
                let running: Vec<_> = [(newuidmap, uid, subuid), (newgidmap, gid, subgid)]
                    .into_iter()
                    .map(|(tool, id, ranges)| {
                        let args = format!("{pid} {}", map_args(id, ranges).join(" "));
                        let child = std::process::Command::new(tool)
                            .args(args.split(' '))
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::piped())
                            .spawn();
                        (tool, args, child)
                    })
                    .collect();
                for (tool, args, child) in running {
                    let failure = match child.and_then(|c| c.wait_with_output()) {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some(format!(
                            "{} {args} exited with {}: {}",
                            tool.display(),
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim()
                        )),
                        Err(e) => Some(format!("run {}: {e}", tool.display())),
                    };
                    if let Some(msg) = failure
                        && code == 0
                    {
                        let _ = res.write_all(msg.as_bytes());
                        code = 1;
                    }
                }
                code
            } else {
                1
            };
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(go_r);
            drop(res_w);
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            let mut go = fs::File::from(go_w);
            if unshared.is_ok() {
                let _ = go.write_all(b"1");
            }
            drop(go);
            let mut detail = String::new();
            let _ = fs::File::from(res_r).read_to_string(&mut detail);
            let status = waitpid(child, None);
            unshared.map_err(sys_err("unshare user namespace"))?;
            match status {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                other => Err(UsernsError::Maps {
                    user: name.to_string(),
                    uid,
                    detail: if detail.is_empty() {
                        format!("helper ended with {other:?}")
                    } else {
                        detail
                    },
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{map_args, subordinate_ranges};

    /// A user with two lines in /etc/subuid (what `usermod --add-subuids` leaves) had only the
    /// first mapped: 1000 ids where 65536 more were given, and a chown beyond them failed.
    #[test]
    fn every_range_of_the_user_is_mapped_after_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subuid");
        std::fs::write(
            &file,
            "other:100000:65536\nalice:400000:1000\n1001:500000:10\nalice:410000:64536\nalice:9:0\n",
        )
        .unwrap();
        let ranges = subordinate_ranges(&file, "alice", 1001).unwrap();
        assert_eq!(ranges, [(400000, 1000), (500000, 10), (410000, 64536)]);
        assert_eq!(
            map_args(1001, &ranges).join(" "),
            "0 1001 1 1 400000 1000 1001 500000 10 1011 410000 64536"
        );
        assert_eq!(subordinate_ranges(&file, "bob", 1002), None);
    }
}
