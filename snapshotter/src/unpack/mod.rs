//! Safe application of an OCI layer blob onto a directory: decompress, walk the tar as a stream and
//! create each entry with fd-relative calls resolved in the root, so that no entry, symlink (from
//! this layer or a lower one) or hard link can write outside it.
//!
//! Decisions worth knowing:
//! - Parent paths resolve "in root", as if the root were `/` (openat2 RESOLVE_IN_ROOT, the kernel's
//!   form of containerd's `fs.RootPath` and of Docker's chrooted extraction): an absolute symlink
//!   restarts at the root and `..` stops there. Debian's `var/run -> /run` then sends a later
//!   `var/run/x` to `<root>/run/x`, and a symlink to `/../../etc` lands in `<root>/etc`. The final
//!   component of an entry is never followed: whatever stands at that name is replaced.
//! - The entry name itself must be relative and free of `..` components; otherwise it is refused,
//!   naming the entry. containerd instead clamps `../x` to `<root>/x` and Docker joins `/x` to the
//!   root, but Docker refuses `..` breakouts and no image writer emits either form, so we keep the
//!   stricter rule. Hard link targets follow the same rule and resolve in root like entries; their
//!   final component is not followed (a link to a symlink is a second symlink, as containerd does).
//! - A parent that is a dangling symlink is refused, as Docker's extraction fails there; containerd
//!   would create the missing target directories. Symlink entries may point anywhere: only data.
//! - Device nodes are made when mknod is allowed; when it is not (a user namespace) they are skipped
//!   with an [`UnpackWarning`], as rootless builders do.
//! - xattrs come from PAX `SCHILY.xattr.*`. One the filesystem or our privileges refuse (EPERM,
//!   ENOTSUP: e.g. `trusted.*` or `security.capability` without the capability) is skipped with a
//!   warning rather than failing the whole image. `trusted.overlay.*` / `user.overlay.*` from a
//!   layer are always dropped: a layer must not forge overlayfs metadata into our lower dirs.
//! - In [`WhiteoutMode::Overlay`] the target holds this layer only, so a hard link must name a file
//!   of the same layer (as Docker, containerd and our own diff write them); one naming a lower
//!   layer's file is refused as missing rather than silently copied up. Symlinks of lower layers
//!   are not seen either (as with containerd's and Docker's overlay appliers).
//! - Memory: file contents stream through a fixed buffer. In [`WhiteoutMode::Apply`] the names
//!   written by this layer are kept (as Docker does, but keyed by the parent directory's inode so
//!   that a name reached through a symlink counts where it landed) so that an opaque marker clears
//!   only what lower layers left; directory mtimes are kept to be set last. Both grow with entry
//!   count only.

mod ahead;
mod make;
pub(crate) mod sys;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use oci_spec::image::Digest;

use crate::compress::{CompressError, decompressor};
use crate::userns::in_user_namespace;
use make::Parent;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error("opening unpack root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer archive")]
    Archive(#[source] io::Error),
    #[error("layer diff_id mismatch: expected {expected}, unpacked tar has {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("refused layer entry {entry:?}: {reason}")]
    Refused { entry: String, reason: Refusal },
    #[error("layer entry {entry:?}: {op}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// The refusal reason, when the layer was refused as hostile or malformed.
    pub fn refusal(&self) -> Option<(&str, &Refusal)> {
        match self {
            UnpackError::Refused { entry, reason } => Some((entry, reason)),
            _ => None,
        }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("path has a `..` component")]
    ParentComponent,
    #[error("path is absolute")]
    Absolute,
    #[error("path contains a nul byte")]
    NulByte,
    /// Resolution is clamped at the root, so only a walk the kernel saw escape (a directory
    /// moved out of the root during it) ends here.
    #[error("path resolution escaped the root")]
    EscapesThroughSymlink,
    #[error("path runs into a symlink loop")]
    SymlinkLoop,
    #[error("a parent of the path is a dangling symlink")]
    DanglingSymlinkParent,
    #[error("a parent of the path is not a directory")]
    ParentNotDirectory,
    #[error("hard link target {0:?} is outside the root")]
    HardlinkOutside(String),
    #[error("hard link target {0:?} does not exist in this or a lower layer")]
    HardlinkTargetMissing(String),
    #[error("hard link target {0:?} is a directory")]
    HardlinkToDirectory(String),
    #[error("the root entry must be a directory")]
    RootNotDirectory,
    #[error("whiteout names nothing")]
    EmptyWhiteout,
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(char),
}

/// How `.wh.` entries are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// The target directory already holds the lower layers merged (a plain tree): delete what a
    /// whiteout names, and clear lower-layer content of opaque directories.
    Apply,
    /// The target is a fresh directory to be stacked as an overlayfs layer: turn whiteouts into
    /// 0/0 character devices and opaque markers into the `<ns>.overlay.opaque=y` xattr.
    Overlay(OverlayXattr),
    /// Keep `.wh.` entries as ordinary empty files (fuse-overlayfs reads that form in lower dirs).
    Keep,
}

/// The xattr namespace overlayfs reads its metadata from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattr {
    /// `trusted.overlay.*`: root in the initial user namespace.
    Trusted,
    /// `user.overlay.*`: overlay mounted with `userxattr` inside a user namespace (kernel >= 5.11).
    User,
}

impl OverlayXattr {
    /// The namespace this process must use.
    pub fn detect() -> Self {
        if in_user_namespace() {
            OverlayXattr::User
        } else {
            OverlayXattr::Trusted
        }
    }

    pub fn opaque_name(&self) -> &'static [u8] {
        match self {
            OverlayXattr::Trusted => b"trusted.overlay.opaque",
            OverlayXattr::User => b"user.overlay.opaque",
        }
    }
}

/// Options of an unpack.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    /// Keep the tar's owners (lchown). True by default when running as (namespaced) root.
    pub same_owner: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: WhiteoutMode::Apply,
            same_owner: nix::unistd::geteuid().is_root(),
        }
    }
}

/// Something unpack did not do and the caller may want to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackWarning {
    DeviceSkipped {
        entry: String,
        errno: i32,
    },
    XattrSkipped {
        entry: String,
        name: String,
        errno: i32,
    },
    OverlayXattrDropped {
        entry: String,
        name: String,
    },
}

const MAX_WARNINGS: usize = 1000;

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct UnpackSummary {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// The first warnings (at most 1000); `warnings_dropped` counts the rest.
    pub warnings: Vec<UnpackWarning>,
    pub warnings_dropped: u64,
}

impl UnpackSummary {
    fn warn(&mut self, w: UnpackWarning) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        } else {
            self.warnings_dropped += 1;
        }
    }
}

/// Apply a layer blob of `media_type` (OCI tar, tar+gzip, tar+zstd, Docker tar.gzip) onto `root`.
pub fn unpack_layer<R: Read + Send>(
    blob: R,
    media_type: &str,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackSummary, UnpackError> {
    let tar = decompressor(blob, media_type)?;
    apply_tar(tar, root, options)
}

/// [`unpack_layer`], and check that the tar's sha256 is `diff_id` (the image config's promise).
/// On a mismatch the tree has been written already: the caller discards it.
pub fn unpack_layer_verified<R: Read + Send>(
    blob: R,
    media_type: &str,
    root: &Path,
    options: &UnpackOptions,
    diff_id: &Digest,
) -> Result<UnpackSummary, UnpackError> {
    let (summary, actual) =
        ahead::tar_ahead(blob, media_type, |tar| apply_tar(tar, root, options))?;
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(summary)
}

/// Apply an uncompressed layer tar onto `root`.
pub fn apply_tar<R: Read>(
    tar: R,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackSummary, UnpackError> {
    let root_fd = sys::open_dir(root).map_err(|source| UnpackError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let mut un = Unpacker {
        root: root_fd,
        options: *options,
        summary: UnpackSummary::default(),
        written: HashSet::new(),
        dir_times: Vec::new(),
        buf: vec![0u8; 256 * 1024],
        parent: None,
        changes: 0,
        creator: (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let entry = entry.map_err(UnpackError::Archive)?;
        un.entry(entry)?;
    }
    un.finish()?;
    Ok(un.summary)
}

struct Unpacker {
    root: OwnedFd,
    options: UnpackOptions,
    summary: UnpackSummary,
    written: HashSet<WrittenKey>,
    dir_times: Vec<(Vec<u8>, i64, i64)>,
    buf: Vec<u8>,
    /// The directory the last entry was made in (see [`Parent`]).
    parent: Option<Parent>,
    /// Removals so far (entries in the way, whiteouts, opaque markers) and directory entries:
    /// what can change what a path resolves to, or a directory's group rule.
    changes: u64,
    /// The owner a new entry gets (the effective uid and gid), unless its directory is setgid.
    creator: (u32, u32),
}

/// A name written by this layer: (st_dev, st_ino) of its directory, and the name in it.
type WrittenKey = (libc::dev_t, libc::ino_t, Vec<u8>);

/// The per-entry facts that PAX may override.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Normalise a tar path into root-relative components, refusing what could climb out.
pub(crate) fn clean_path(raw: &[u8]) -> Result<Vec<u8>, Refusal> {
    if raw.contains(&0) {
        return Err(Refusal::NulByte);
    }
    if raw.first() == Some(&b'/') {
        return Err(Refusal::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Unpacker {
    fn refuse(entry: &[u8], reason: Refusal) -> UnpackError {
        UnpackError::Refused {
            entry: lossy(entry),
            reason,
        }
    }

    fn io(entry: &[u8], op: &'static str, source: io::Error) -> UnpackError {
        UnpackError::Io {
            entry: lossy(entry),
            op,
            source,
        }
    }

    /// Open directory `rel` under the root, creating missing components (tars may omit parents).
    fn parent_dir(&mut self, entry: &[u8], rel: &[u8]) -> Result<OwnedFd, UnpackError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match sys::open_in_root(self.root.as_fd(), rel, flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.map_resolve(entry, e)),
        }
        let mut cur = sys::open_in_root(self.root.as_fd(), b"", flags)
            .map_err(|e| Self::io(entry, "opening the root", errno_io(e)))?;
        let mut prefix: Vec<u8> = Vec::new();
        for comp in rel.split(|&b| b == b'/') {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            match sys::open_in_root(self.root.as_fd(), &prefix, flags) {
                Ok(fd) => cur = fd,
                Err(Errno::ENOENT) => {
                    let c = sys::cstring(comp).map_err(|e| Self::io(entry, "mkdir", e))?;
                    match nix::sys::stat::mkdirat(
                        cur.as_fd(),
                        c.as_c_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) => {
                            if self.options.whiteouts == WhiteoutMode::Apply {
                                // Implicit parents belong to this layer too: an opaque marker
                                // keeps them.
                                let key = self.written_key(entry, cur.as_fd(), comp)?;
                                self.written.insert(key);
                            }
                        }
                        Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(Self::io(
                                entry,
                                "creating a parent directory",
                                errno_io(e),
                            ));
                        }
                    }
                    // A dangling symlink in the way makes mkdirat fail with EEXIST and the
                    // re-open below fail again: reported as a resolve error.
                    cur = sys::open_in_root(self.root.as_fd(), &prefix, flags)
                        .map_err(|e| self.map_resolve(entry, e))?;
                }
                Err(e) => return Err(self.map_resolve(entry, e)),
            }
        }
        Ok(cur)
    }

    /// The key of `name` in directory `dir` in the set of names this layer wrote: the directory's
    /// identity rather than the entry's path, since several paths (through symlinks) reach it.
    fn written_key(
        &self,
        entry: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<WrittenKey, UnpackError> {
        let st = sys::lstat_at(dir, b".")
            .map_err(|e| Self::io(entry, "inspecting the parent directory", errno_io(e)))?;
        Ok((st.st_dev, st.st_ino, name.to_vec()))
    }

    fn map_resolve(&self, entry: &[u8], e: Errno) -> UnpackError {
        match e {
            Errno::EXDEV => Self::refuse(entry, Refusal::EscapesThroughSymlink),
            Errno::ELOOP => Self::refuse(entry, Refusal::SymlinkLoop),
            Errno::ENOTDIR => Self::refuse(entry, Refusal::ParentNotDirectory),
            // Only after creating the missing parents: a dangling symlink stands in the way.
            Errno::ENOENT => Self::refuse(entry, Refusal::DanglingSymlinkParent),
            e => Self::io(entry, "resolving the parent directory", errno_io(e)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
            // pax global headers (git archive writes one) carry no file.
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let path = clean_path(&raw_path).map_err(|r| Self::refuse(&raw_path, r))?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        let mut meta = Meta {
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: (header.mtime().unwrap_or(0) as i64, 0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Archive)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Archive)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key == b"uid" {
                    meta.uid = parse_num(value).unwrap_or(meta.uid);
                } else if key == b"gid" {
                    meta.gid = parse_num(value).unwrap_or(meta.gid);
                } else if key == b"mtime" {
                    meta.mtime = parse_time(value).unwrap_or(meta.mtime);
                }
            }
        }
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        self.summary.entries += 1;

        let (parent_rel, name) = crate::layer::split_parent(&path);
        let parent_rel = parent_rel.strip_suffix(b"/").unwrap_or(parent_rel);

        if path.is_empty() {
            if etype != tar::EntryType::Directory {
                return Err(Self::refuse(&raw_path, Refusal::RootNotDirectory));
            }
            let root =
                sys::open_in_root(self.root.as_fd(), b"", OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(|e| Self::io(&raw_path, "opening the root", errno_io(e)))?;
            self.set_meta_fd(&raw_path, root.as_fd(), &meta, true, false)?;
            self.changes += 1;
            self.dir_times
                .push((Vec::new(), meta.mtime.0, meta.mtime.1));
            return Ok(());
        }

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            // A whiteout under a path that is not a directory (umoci writes `d/.wh.x` after
            // turning `d` into a file) or, on a merged tree, not there at all, deletes nothing.
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
            let parent = match sys::open_in_root(self.root.as_fd(), parent_rel, flags) {
                Ok(fd) => fd,
                Err(Errno::ENOTDIR) => return Ok(()),
                Err(Errno::ENOENT) if self.options.whiteouts == WhiteoutMode::Apply => {
                    return Ok(());
                }
                Err(Errno::ENOENT) => self.parent_dir(&raw_path, parent_rel)?,
                Err(e) => return Err(self.map_resolve(&raw_path, e)),
            };
            if target == b".wh..opq" {
                return self.opaque(&raw_path, parent.as_fd());
            }
            if target.starts_with(b".wh.") {
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless here.
                return Ok(());
            }
            if target.is_empty() {
                return Err(Self::refuse(&raw_path, Refusal::EmptyWhiteout));
            }
            return self.whiteout(&raw_path, parent.as_fd(), name, target);
        }

        let parent = self.parent_for(&raw_path, parent_rel)?;
        let made = self.make_in(&parent, &raw_path, name, etype, &header, link.as_deref());
        // Kept for the next entry whether or not this one failed (a failure ends the unpack).
        let result = match made {
            Ok(Some(made)) => self.fill(&raw_path, &path, &parent, name, made, &meta, entry),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.parent = Some(parent);
        result
    }

    /// Find a hard link's target in root: its directory is resolved like an entry's parent, its
    /// own name is not followed (a link to a symlink is a second symlink, as containerd makes it).
    fn hardlink_target(
        &self,
        entry: &[u8],
        raw_target: Option<&[u8]>,
    ) -> Result<HardlinkTarget, UnpackError> {
        let raw_target = raw_target.unwrap_or_default();
        let shown = lossy(raw_target);
        let target = clean_path(raw_target).map_err(|r| match r {
            Refusal::NulByte => Self::refuse(entry, Refusal::NulByte),
            _ => Self::refuse(entry, Refusal::HardlinkOutside(shown.clone())),
        })?;
        if target.is_empty() {
            return Err(Self::refuse(entry, Refusal::HardlinkToDirectory(shown)));
        }
        let (tparent_rel, tname) = crate::layer::split_parent(&target);
        let tparent_rel = tparent_rel.strip_suffix(b"/").unwrap_or(tparent_rel);
        let dir = match sys::open_in_root(
            self.root.as_fd(),
            tparent_rel,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => fd,
            // In-root resolution cannot leave the root; the kernel says EXDEV only when it saw the
            // walk escape (a directory moved out meanwhile).
            Err(Errno::EXDEV) => return Err(Self::refuse(entry, Refusal::HardlinkOutside(shown))),
            Err(Errno::ELOOP) => return Err(Self::refuse(entry, Refusal::SymlinkLoop)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                return Err(Self::refuse(entry, Refusal::HardlinkTargetMissing(shown)));
            }
            Err(e) => {
                return Err(Self::io(
                    entry,
                    "resolving the hard link target",
                    errno_io(e),
                ));
            }
        };
        let stat = match sys::lstat_at(dir.as_fd(), tname) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                return Err(Self::refuse(entry, Refusal::HardlinkTargetMissing(shown)));
            }
            Err(e) => {
                return Err(Self::io(
                    entry,
                    "inspecting the hard link target",
                    errno_io(e),
                ));
            }
        };
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Self::refuse(entry, Refusal::HardlinkToDirectory(shown)));
        }
        Ok(HardlinkTarget {
            dir,
            name: tname.to_vec(),
            stat,
        })
    }

    fn whiteout(
        &mut self,
        entry: &[u8],
        parent: BorrowedFd<'_>,
        wh_name: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        self.changes += 1;
        match self.options.whiteouts {
            WhiteoutMode::Apply => {
                if let Ok(st) = sys::lstat_at(parent, target) {
                    remove_at(parent, target, st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                        .map_err(|e| Self::io(entry, "applying the whiteout", e))?;
                }
            }
            WhiteoutMode::Overlay(_) => {
                if let Ok(st) = sys::lstat_at(parent, target) {
                    remove_at(parent, target, st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                        .map_err(|e| Self::io(entry, "replacing the entry by a whiteout", e))?;
                }
                let c = sys::cstring(target).map_err(|e| Self::io(entry, "name", e))?;
                // overlayfs' whiteout is a 0/0 character device; the kernel lets a user
                // namespace make exactly this device (since 5.8) for that reason.
                nix::sys::stat::mknodat(parent, c.as_c_str(), SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| Self::io(entry, "creating the overlay whiteout", errno_io(e)))?;
            }
            WhiteoutMode::Keep => {
                let c = sys::cstring(wh_name).map_err(|e| Self::io(entry, "name", e))?;
                if let Ok(st) = sys::lstat_at(parent, wh_name) {
                    remove_at(parent, wh_name, st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                        .map_err(|e| Self::io(entry, "removing the entry in the way", e))?;
                }
                nix::fcntl::openat(
                    parent,
                    c.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map_err(|e| Self::io(entry, "creating the whiteout file", errno_io(e)))?;
            }
        }
        Ok(())
    }

    fn opaque(&mut self, entry: &[u8], dir: BorrowedFd<'_>) -> Result<(), UnpackError> {
        self.changes += 1;
        match self.options.whiteouts {
            WhiteoutMode::Apply => {
                let listing =
                    std::fs::read_dir(Path::new(OsStr::from_bytes(&sys::proc_path(dir, b""))))
                        .map_err(|e| Self::io(entry, "listing the opaque directory", e))?;
                let mut key = self.written_key(entry, dir, b"")?;
                for child in listing {
                    let child =
                        child.map_err(|e| Self::io(entry, "listing the opaque directory", e))?;
                    let cname = child.file_name();
                    let cname = cname.as_bytes();
                    key.2.clear();
                    key.2.extend_from_slice(cname);
                    if self.written.contains(&key) {
                        continue;
                    }
                    let is_dir = child.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    remove_at(dir, cname, is_dir)
                        .map_err(|e| Self::io(entry, "clearing the opaque directory", e))?;
                }
            }
            WhiteoutMode::Overlay(x) => {
                sys::lsetxattr(&sys::proc_path(dir, b"."), x.opaque_name(), b"y")
                    .map_err(|e| Self::io(entry, "marking the directory opaque", errno_io(e)))?;
            }
            WhiteoutMode::Keep => {
                let c = sys::cstring(b".wh..wh..opq").expect("static name");
                match nix::fcntl::openat(
                    dir,
                    c.as_c_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                ) {
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Self::io(entry, "creating the opaque marker", errno_io(e)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Directory mtimes last: creating children would otherwise move them again.
    fn finish(&mut self) -> Result<(), UnpackError> {
        for (path, sec, nsec) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let fd = match sys::open_in_root(
                self.root.as_fd(),
                &path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Removed or replaced by a later entry of the same layer.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(Self::io(&path, "setting the directory mtime", errno_io(e))),
            };
            nix::sys::stat::futimens(fd.as_fd(), &ts((sec, nsec)), &ts((sec, nsec)))
                .map_err(|e| Self::io(&path, "setting the directory mtime", errno_io(e)))?;
        }
        Ok(())
    }
}

/// A hard link's target, found in root.
struct HardlinkTarget {
    dir: OwnedFd,
    name: Vec<u8>,
    stat: libc::stat,
}

fn ts((sec, nsec): (i64, i64)) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(sec, nsec)
}

fn device(header: &tar::Header) -> libc::dev_t {
    let major = header.device_major().ok().flatten().unwrap_or(0);
    let minor = header.device_minor().ok().flatten().unwrap_or(0);
    libc::makedev(major, minor)
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// PAX times are decimal seconds with an optional fraction.
fn parse_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: i64 = digits.parse().ok()?;
    Some((sec, nsec))
}

/// Remove `name` in `dir`, recursively for a directory, never following a symlink.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    let p = sys::proc_path(dir, name);
    let p = Path::new(OsStr::from_bytes(&p));
    if is_dir {
        // std's remove_dir_all does not follow symlinks inside the tree (CVE-2022-21658 fix).
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean_path(b"a/../b"), Err(Refusal::ParentComponent));
        assert_eq!(clean_path(b"/etc/passwd"), Err(Refusal::Absolute));
        assert_eq!(clean_path(b"a\0b"), Err(Refusal::NulByte));
        assert_eq!(clean_path(b"./").unwrap(), b"");
    }

    #[test]
    fn pax_time_fraction() {
        assert_eq!(parse_time(b"1700000000.5"), Some((1700000000, 500_000_000)));
        assert_eq!(parse_time(b"12"), Some((12, 0)));
    }
}
