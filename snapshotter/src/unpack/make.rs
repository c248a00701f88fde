//! Making one entry of a layer: the directory it goes in (the entry before's, while nothing changed
//! what its path resolves to), the entry itself (made first; what stands at its name is looked at
//! only when the name is taken), and its content, owner, xattrs, mode and times.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::{
    Meta, Refusal, UnpackError, UnpackWarning, Unpacker, WhiteoutMode, device, errno_io, lossy,
    remove_at, sys, ts,
};

/// The directory an entry is made in, kept for the next entry: a layer's entries come directory
/// by directory, and resolving the parent again for each (openat2 and close) was a third of an
/// unpack's system calls. It is used again only while [`Unpacker::changes`] has not moved: a path
/// resolves elsewhere only after a component of it was removed (an entry replaces what stands at
/// its name only after removing it), and only a directory entry changes a directory's mode.
pub(super) struct Parent {
    rel: Vec<u8>,
    pub(super) fd: OwnedFd,
    changes: u64,
    dev: libc::dev_t,
    ino: libc::ino_t,
    /// The owner a new entry in it gets, where that is sure (see [`Parent::new_owner`]).
    new_owner: Option<(u32, u32)>,
}

impl Parent {
    /// The owner a new entry in a directory `st` gets, made by `creator` (the effective ids):
    /// the creator's uid, and its gid or a setgid directory's. Trusted only where the directory
    /// shows those ids itself: a filesystem that gives new entries other owners (the parent's
    /// group on a `grpid` mount, a squashed root on NFS) gives them to the directories this
    /// unpack makes too, and the owner is then set as before.
    fn new_owner(st: &libc::stat, creator: (u32, u32)) -> Option<(u32, u32)> {
        let gid = if st.st_mode & libc::S_ISGID != 0 {
            st.st_gid
        } else {
            creator.1
        };
        (st.st_uid == creator.0 && st.st_gid == gid).then_some((creator.0, gid))
    }
}

/// What an entry's creation made.
pub(super) enum Made {
    File(File),
    /// `fresh`: made now (an existing directory that stays one is not).
    Dir {
        fresh: bool,
    },
    Symlink,
    Link,
    Special,
    /// A device node the kernel would not make (a user namespace): skipped with a warning.
    SkippedDevice(Errno),
}

impl Unpacker {
    /// The directory `rel` an entry is made in: the last entry's when it is the same and nothing
    /// changed since, else resolved in root (see [`Parent`]).
    pub(super) fn parent_for(&mut self, entry: &[u8], rel: &[u8]) -> Result<Parent, UnpackError> {
        if let Some(parent) = self.parent.take()
            && parent.changes == self.changes
            && parent.rel == rel
        {
            return Ok(parent);
        }
        let fd = self.parent_dir(entry, rel)?;
        let st = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| Self::io(entry, "inspecting the parent directory", errno_io(e)))?;
        Ok(Parent {
            rel: rel.to_vec(),
            fd,
            changes: self.changes,
            dev: st.st_dev,
            ino: st.st_ino,
            new_owner: Parent::new_owner(&st, self.creator),
        })
    }

    /// Makes the entry `name` of type `etype` in `parent`. Whatever stands at the name goes,
    /// except a directory that stays a directory: the entry is made first, and only when the
    /// name is taken (EEXIST) is what stands there looked at and removed (never opened
    /// through, which is what defeats a symlink planted at this name), and the entry made again.
    /// `None`: nothing to do (a hard link to the file that already stands at its name).
    pub(super) fn make_in(
        &mut self,
        parent: &Parent,
        entry: &[u8],
        name: &[u8],
        etype: tar::EntryType,
        header: &tar::Header,
        link: Option<&[u8]>,
    ) -> Result<Option<Made>, UnpackError> {
        use tar::EntryType as T;
        if !matches!(
            etype,
            T::Regular
                | T::Continuous
                | T::GNUSparse
                | T::Directory
                | T::Symlink
                | T::Link
                | T::Char
                | T::Block
                | T::Fifo
        ) {
            return Err(Self::refuse(
                entry,
                Refusal::UnsupportedType(etype.as_byte() as char),
            ));
        }
        let dir = parent.fd.as_fd();
        // A hard link's target is found before anything is removed: it may be the very file
        // that stands at this name.
        let link_target = match etype {
            T::Link => {
                let target = self.hardlink_target(entry, link)?;
                let name = sys::cstring(&target.name).map_err(|e| Self::io(entry, "name", e))?;
                Some((target, name))
            }
            _ => None,
        };
        if self.options.whiteouts == WhiteoutMode::Apply {
            self.written.insert((parent.dev, parent.ino, name.to_vec()));
        }
        let cname = sys::cstring(name).map_err(|e| Self::io(entry, "name", e))?;
        let symlink_target = match etype {
            T::Symlink => Some(
                sys::cstring(link.unwrap_or_default())
                    .map_err(|_| Self::refuse(entry, Refusal::NulByte))?,
            ),
            _ => None,
        };
        let make = || -> Result<Made, (Errno, &'static str)> {
            let c = cname.as_c_str();
            match etype {
                T::Regular | T::Continuous | T::GNUSparse => nix::fcntl::openat(
                    dir,
                    c,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map(|fd| Made::File(File::from(fd)))
                .map_err(|e| (e, "creating the file")),
                T::Directory => nix::sys::stat::mkdirat(dir, c, Mode::from_bits_truncate(0o700))
                    .map(|()| Made::Dir { fresh: true })
                    .map_err(|e| (e, "creating the directory")),
                T::Symlink => {
                    let target = symlink_target.as_deref().expect("made above for a symlink");
                    nix::unistd::symlinkat(target, dir, c)
                        .map(|()| Made::Symlink)
                        .map_err(|e| (e, "creating the symlink"))
                }
                T::Link => {
                    let (t, tname) = link_target
                        .as_ref()
                        .expect("resolved above for every hard link");
                    nix::unistd::linkat(t.dir.as_fd(), tname.as_c_str(), dir, c, AtFlags::empty())
                        .map(|()| Made::Link)
                        .map_err(|e| (e, "creating the hard link"))
                }
                T::Char | T::Block | T::Fifo => {
                    let (kind, dev) = match etype {
                        T::Char => (SFlag::S_IFCHR, device(header)),
                        T::Block => (SFlag::S_IFBLK, device(header)),
                        _ => (SFlag::S_IFIFO, 0),
                    };
                    match nix::sys::stat::mknodat(
                        dir,
                        c,
                        kind,
                        Mode::from_bits_truncate(0o600),
                        dev,
                    ) {
                        Ok(()) => Ok(Made::Special),
                        Err(e @ (Errno::EPERM | Errno::EACCES)) if kind != SFlag::S_IFIFO => {
                            Ok(Made::SkippedDevice(e))
                        }
                        Err(e) => Err((e, "creating the special file")),
                    }
                }
                _ => unreachable!("refused above: {etype:?}"),
            }
        };
        let failed = |(e, op): (Errno, &'static str)| Self::io(entry, op, errno_io(e));
        match make() {
            Err((Errno::EEXIST, _)) => {}
            made => return made.map(Some).map_err(failed),
        }
        let existing = sys::lstat_at(dir, name)
            .map_err(|e| Self::io(entry, "inspecting the entry in the way", errno_io(e)))?;
        let is_dir = existing.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if etype == T::Directory && is_dir {
            return Ok(Some(Made::Dir { fresh: false }));
        }
        // Linking a name to the file it already is (tar re-adds it, or it names itself through a
        // symlinked parent) is a no-op we must not break by removing the only copy first.
        if let Some((t, _)) = &link_target
            && (t.stat.st_dev, t.stat.st_ino) == (existing.st_dev, existing.st_ino)
        {
            return Ok(None);
        }
        self.changes += 1;
        remove_at(dir, name, is_dir)
            .map_err(|e| Self::io(entry, "removing the entry in the way", e))?;
        make().map(Some).map_err(failed)
    }

    /// What follows an entry's creation: a file's content, and the owner, mode, xattrs and
    /// times of what was made.
    pub(super) fn fill<R: Read>(
        &mut self,
        raw_path: &[u8],
        path: &[u8],
        parent: &Parent,
        name: &[u8],
        made: Made,
        meta: &Meta,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let dir = parent.fd.as_fd();
        // A new entry that has the owner it should (see `Parent::new_owner`) needs no chown.
        let owned = parent
            .new_owner
            .is_some_and(|owner| (u64::from(owner.0), u64::from(owner.1)) == (meta.uid, meta.gid));
        match made {
            Made::File(mut file) => {
                let expected = entry.size();
                let mut written = 0u64;
                loop {
                    let n = entry
                        .read(&mut self.buf)
                        .map_err(|e| Self::io(raw_path, "reading the file content", e))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n])
                        .map_err(|e| Self::io(raw_path, "writing the file content", e))?;
                    self.summary.bytes += n as u64;
                    written += n as u64;
                }
                if written != expected {
                    return Err(Self::io(
                        raw_path,
                        "reading the file content",
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("archive ended after {written} of {expected} bytes"),
                        ),
                    ));
                }
                self.set_meta_fd(raw_path, file.as_fd(), meta, false, owned)?;
            }
            Made::Dir { fresh } => {
                let c = sys::cstring(name).map_err(|e| Self::io(raw_path, "name", e))?;
                let fd = nix::fcntl::openat(
                    dir,
                    c.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Self::io(raw_path, "opening the directory", errno_io(e)))?;
                // Its mode (a setgid bit) may change now.
                self.changes += 1;
                self.set_meta_fd(raw_path, fd.as_fd(), meta, true, fresh && owned)?;
                self.dir_times
                    .push((path.to_vec(), meta.mtime.0, meta.mtime.1));
            }
            Made::Symlink => self.set_meta_at(raw_path, dir, name, meta, false, owned)?,
            Made::Link => {}
            Made::Special => self.set_meta_at(raw_path, dir, name, meta, true, owned)?,
            Made::SkippedDevice(e) => self.summary.warn(UnpackWarning::DeviceSkipped {
                entry: lossy(raw_path),
                errno: e as i32,
            }),
        }
        Ok(())
    }

    /// Owner (unless `owned`: the entry is new and has it already), xattrs, mode and (for
    /// non-directories) times, on an open descriptor.
    pub(super) fn set_meta_fd(
        &mut self,
        entry: &[u8],
        fd: BorrowedFd<'_>,
        meta: &Meta,
        is_dir: bool,
        owned: bool,
    ) -> Result<(), UnpackError> {
        if self.options.same_owner && !owned {
            let r = nix::unistd::fchown(
                fd,
                Some(Uid::from_raw(meta.uid as u32)),
                Some(Gid::from_raw(meta.gid as u32)),
            );
            keep_unmapped(r).map_err(|e| {
                Self::io(entry, owner_change(e), owner_error(e, meta.uid, meta.gid))
            })?;
        }
        self.set_xattrs(entry, XattrTarget::Fd(fd), meta)?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| Self::io(entry, "changing the mode", errno_io(e)))?;
        if !is_dir {
            nix::sys::stat::futimens(fd, &ts(meta.mtime), &ts(meta.mtime))
                .map_err(|e| Self::io(entry, "setting the mtime", errno_io(e)))?;
        }
        Ok(())
    }

    /// The same for a name inside `dir` that cannot be opened (symlinks, devices, fifos).
    pub(super) fn set_meta_at(
        &mut self,
        entry: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
        owned: bool,
    ) -> Result<(), UnpackError> {
        let c = sys::cstring(name).map_err(|e| Self::io(entry, "name", e))?;
        if self.options.same_owner && !owned {
            let r = nix::unistd::fchownat(
                dir,
                c.as_c_str(),
                Some(Uid::from_raw(meta.uid as u32)),
                Some(Gid::from_raw(meta.gid as u32)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            keep_unmapped(r).map_err(|e| {
                Self::io(entry, owner_change(e), owner_error(e, meta.uid, meta.gid))
            })?;
        }
        let path = sys::proc_path(dir, name);
        self.set_xattrs(entry, XattrTarget::Path(&path), meta)?;
        if chmod {
            // Devices and fifos are not symlinks, so following is harmless here; the name was
            // created by us an instant ago inside a directory we hold open.
            nix::sys::stat::fchmodat(
                dir,
                c.as_c_str(),
                Mode::from_bits_truncate(meta.mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| Self::io(entry, "changing the mode", errno_io(e)))?;
        }
        sys::set_times_at(dir, name, meta.mtime.0, meta.mtime.1)
            .map_err(|e| Self::io(entry, "setting the mtime", errno_io(e)))?;
        Ok(())
    }

    fn set_xattrs(
        &mut self,
        entry: &[u8],
        target: XattrTarget<'_>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        for (name, value) in &meta.xattrs {
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                self.summary.warn(UnpackWarning::OverlayXattrDropped {
                    entry: lossy(entry),
                    name: lossy(name),
                });
                continue;
            }
            let set = match target {
                XattrTarget::Fd(fd) => sys::fsetxattr(fd, name, value),
                XattrTarget::Path(path) => sys::lsetxattr(path, name, value),
            };
            match set {
                Ok(()) => {}
                Err(e @ (Errno::EPERM | Errno::ENOTSUP | Errno::EACCES)) => {
                    self.summary.warn(UnpackWarning::XattrSkipped {
                        entry: lossy(entry),
                        name: lossy(name),
                        errno: e as i32,
                    });
                }
                Err(e) => return Err(Self::io(entry, "setting an xattr", errno_io(e))),
            }
        }
        Ok(())
    }
}

/// Where xattrs go: an open descriptor, or a path whose final component is not followed.
#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a [u8]),
}

/// A chown refused because the id is not mapped (EINVAL), in a user namespace that maps only one
/// id: the entry keeps that id, as nothing else can own a file there (see
/// [`crate::userns::single_id_namespace`]). Everywhere else the error stands.
/// What a failed chown was doing, with the likely reason where it is one: EPERM means this
/// process may not give files away (root in a container started with `--cap-drop ALL`).
fn owner_change(e: nix::errno::Errno) -> &'static str {
    if e == nix::errno::Errno::EPERM {
        "changing the owner (forge lacks CAP_CHOWN here, as in a container started with \
         `--cap-drop ALL`: give it back with `--cap-add CHOWN`, or keep docker's default \
         capabilities)"
    } else {
        "changing the owner"
    }
}

/// The error of a failed chown: for EINVAL in a user namespace, the ids it does not map, and
/// what gives them (a rootless user's subordinate range is too small for the image's owners;
/// podman and buildah say the same).
fn owner_error(e: nix::errno::Errno, uid: u64, gid: u64) -> std::io::Error {
    if e == nix::errno::Errno::EINVAL && crate::userns::in_user_namespace() {
        let map = |f: &str| {
            std::fs::read_to_string(f)
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        return std::io::Error::other(format!(
            "uid {uid} or gid {gid} is not mapped in forge's user namespace (uid_map: {}; \
             gid_map: {}): the user's ranges in /etc/subuid and /etc/subgid are too small for \
             this image's owners; give it a range of at least {} ids (forge info shows the \
             range mapped)",
            map("/proc/self/uid_map"),
            map("/proc/self/gid_map"),
            uid.max(gid) + 1
        ));
    }
    errno_io(e)
}

fn keep_unmapped(r: nix::Result<()>) -> nix::Result<()> {
    match r {
        Err(nix::errno::Errno::EINVAL) if crate::userns::single_id_namespace() => Ok(()),
        other => other,
    }
}
