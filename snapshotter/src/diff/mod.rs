//! A step's changes as an OCI layer. From an overlay upper dir the changes are already isolated: we
//! walk only it and translate overlayfs' whiteouts (0/0 char devices, opaque xattrs) into `.wh.`
//! entries. The copy snapshotter has full trees, so there we walk the lower and upper trees side by
//! side and emit what differs. Both walks are depth-first in byte order of the full path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::layer::{
    EntryKind, EntryMeta, LayerDescriptor, LayerError, LayerOptions, LayerStream, LayerWriter,
    Piped,
};
use crate::unpack::sys;

mod ahead;
use ahead::{Ahead, DirKey, Pre};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiffError + 'a {
    move |source| DiffError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the changes of a snapshot are.
#[derive(Debug, Clone, Copy)]
pub enum Changes<'a> {
    /// An overlayfs (or fuse-overlayfs) upper dir: exactly the changes, with overlay whiteouts.
    OverlayUpper(&'a Path),
    /// Two full trees; `lower` is `None` for a snapshot without parent (everything is added).
    Compare {
        lower: Option<&'a Path>,
        upper: &'a Path,
        /// When `upper` was complete as a copy of `lower`, if it was made so: a file with equal
        /// metadata whose ctime is older is unchanged without reading it (nothing can set ctime;
        /// any write moves it). `None`: equal metadata is confirmed by reading both files.
        copied_at: Option<std::time::SystemTime>,
    },
}

/// Counts of what a diff emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub content_bytes: u64,
}

/// Write `changes` as one layer to `sink`; returns the layer's descriptor and the sink. The walk
/// runs on this thread (an overlay upper's directories listed ahead of it by workers, [`ahead`])
/// and the hashing and compression on others ([`Piped`]), so that they overlap; the bytes are
/// those one thread would write.
pub fn write_layer<W: Write + Send>(
    changes: Changes<'_>,
    sink: W,
    options: LayerOptions,
) -> Result<(LayerDescriptor, W, DiffStats), DiffError> {
    std::thread::scope(|scope| {
        let piped = Piped::spawn(scope, sink, options.compression)?;
        let mut writer = LayerWriter::with_stream(piped, options);
        let walked = walk(changes, &mut writer);
        match walked {
            Ok(stats) => {
                let (desc, sink) = writer.finish()?;
                Ok((desc, sink, stats))
            }
            Err(e) => Err(match writer.into_stream().abort() {
                Some(first) => DiffError::Layer(first),
                None => e,
            }),
        }
    })
}

/// Writes the entries of `changes` into `writer` (which the caller then finishes): the walk of
/// [`write_layer`], into any [`LayerStream`].
pub fn walk<S: LayerStream>(
    changes: Changes<'_>,
    writer: &mut LayerWriter<S>,
) -> Result<DiffStats, DiffError> {
    let mut d = Differ {
        writer,
        links: HashMap::new(),
        stats: DiffStats::default(),
        pending: Vec::new(),
        copied_at: None,
    };
    match changes {
        Changes::OverlayUpper(upper) => {
            let ahead = Ahead::new(upper);
            // The root is listed here, and workers start only when it has subdirectories to
            // list: a layer of a few files at its top (a COPY of one file) starts no thread.
            let root = ahead.take(&Vec::new(), upper)?;
            std::thread::scope(|scope| {
                for _ in 0..ahead.workers_wanted() {
                    scope.spawn(|| ahead.work());
                }
                // The workers stop however the walk ends, a panic included.
                let _stop = ahead.stop_on_drop();
                d.overlay_entries(&ahead, upper, b"", &Vec::new(), root)
            })?
        }
        Changes::Compare {
            lower,
            upper,
            copied_at,
        } => {
            d.copied_at = copied_at.and_then(|t| {
                let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
                Some((d.as_secs() as i64, d.subsec_nanos() as i64))
            });
            d.compare_dir(lower, upper, b"")?
        }
    }
    Ok(d.stats)
}

struct Differ<'w, S: LayerStream> {
    writer: &'w mut LayerWriter<S>,
    /// (dev, ino) of multiply-linked files already emitted -> their layer path.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: DiffStats,
    /// Unchanged directories on the way down (compare mode), written only if something below them
    /// is: an overlay upper holds the same copied-up parents, so both backends give one layer.
    pending: Vec<(PathBuf, Vec<u8>, Option<Node>)>,
    /// [`Changes::Compare`]'s `copied_at`, as (seconds, nanoseconds).
    copied_at: Option<(i64, i64)>,
}

/// A directory's children in the order their full paths sort: a directory `d` sorts as `d/`.
fn sorted_children(dir: &Path) -> Result<Vec<(Vec<u8>, bool)>, DiffError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .map(|(name, ft)| (name, ft.is_dir()))
        .collect())
}

/// [`sorted_children`] with each child's file type as the listing gave it.
fn sorted_entries(dir: &Path) -> Result<Vec<(Vec<u8>, std::fs::FileType)>, DiffError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let e = e.map_err(io_err("listing", dir))?;
        let ft = e.file_type().map_err(io_err("inspecting", &e.path()))?;
        out.push((e.file_name().as_bytes().to_vec(), ft));
    }
    out.sort_by_cached_key(|(name, ft)| sort_key(name, ft.is_dir()));
    Ok(out)
}

fn sort_key(name: &[u8], is_dir: bool) -> Vec<u8> {
    let mut k = name.to_vec();
    if is_dir {
        k.push(b'/');
    }
    k
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn child(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// Where a regular file's content is read from when its entry is written.
enum Content {
    /// Opened by its path then.
    Path,
    /// Through the descriptor the walk holds open on it.
    Open(File),
    /// Read already, whole (see [`ahead`]).
    Read(Vec<u8>),
}

/// What a path is, as a layer entry would record it.
struct Node {
    kind: EntryKind,
    meta: EntryMeta,
    mtime_nsec: i64,
    ctime: (i64, i64),
    dev_ino: (u64, u64),
    nlink: u64,
    /// An overlayfs directory marked opaque (by the xattr of native overlay, of its user-namespace
    /// mode or of fuse-overlayfs): the lower layers' entries below it are hidden.
    opaque: bool,
}

/// What `path` is, or `None` for a socket, which no layer holds: a step that leaves one (an agent
/// or a database started in a RUN) makes its layer without it, as containerd's and BuildKit's
/// diffs leave sockets out. `None` too for a name its directory lists that is not there: an
/// overlay lists the whiteouts of a directory no lower directory is merged with (an image whose
/// layer deletes `g/x` where a lower layer has `g` as a symlink) but finds none of them.
fn node(path: &Path) -> Result<Option<Node>, DiffError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    node_of(&md, path, || sys::lxattrs(path.as_os_str().as_bytes()))
}

/// A regular file's node through `file`, open on it: its stat and xattrs look up no path, and its
/// content is read through the same descriptor.
fn file_node(file: &File, path: &Path) -> Result<Option<Node>, DiffError> {
    use std::os::fd::AsFd;
    let md = file.metadata().map_err(io_err("inspecting", path))?;
    node_of(&md, path, || sys::fxattrs(file.as_fd()))
}

/// What [`open_file`] found.
enum Opened {
    /// A regular file, open, and its node through that descriptor.
    File(File, Node),
    /// Anything else (or a file that did not open as one): its node by path, as [`node`] gives it.
    Other(Option<Node>),
}

/// `name` in `dir` as the overlay walk reads an entry the listing called a regular file: opened
/// by its name in the directory (whose descriptor `held` keeps, opened on first need), stated and
/// its xattrs listed through that one descriptor, no path walked again; by path where it does
/// not open as a regular file (one this user may not open, or a name replaced meanwhile).
fn open_file(
    dir: &Path,
    held: &mut Option<std::os::fd::OwnedFd>,
    name: &[u8],
    path: &Path,
) -> Result<Opened, DiffError> {
    if held.is_none() {
        *held = Some(sys::open_dir(dir).map_err(io_err("opening", dir))?);
    }
    if let Some(f) = held.as_ref().and_then(|fd| open_regular(fd, name))
        && let Some(n) = file_node(&f, path)?
        && n.kind == EntryKind::File
    {
        return Ok(Opened::File(f, n));
    }
    Ok(Opened::Other(node(path)?))
}

/// `name` in `dir` opened for reading, or `None` where that fails (a file this user may not
/// open, or a name replaced meanwhile): the caller then goes by path. Neither a symlink is
/// followed nor a fifo waited for.
fn open_regular(dir: &std::os::fd::OwnedFd, name: &[u8]) -> Option<File> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC;
    let open = |flags| {
        nix::fcntl::openat(
            dir,
            OsStr::from_bytes(name),
            flags,
            nix::sys::stat::Mode::empty(),
        )
    };
    // Without an access time update: a step's new file has its access time at its change time,
    // so the first read would update it (relatime), a journal entry a file. Only an owner (or a
    // holder of CAP_FOWNER) may ask; anyone else reads as before.
    match open(flags | OFlag::O_NOATIME) {
        Err(nix::errno::Errno::EPERM) => open(flags),
        other => other,
    }
    .ok()
    .map(File::from)
}

/// The node `md` describes, with the xattrs `xattrs` reads (overlayfs' own left out); `None` for
/// a socket (see [`node`]).
fn node_of(
    md: &std::fs::Metadata,
    path: &Path,
    xattrs: impl FnOnce() -> Result<Vec<sys::Xattr>, nix::errno::Errno>,
) -> Result<Option<Node>, DiffError> {
    let ft = md.file_type();
    let rdev = md.rdev();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(io_err("reading the symlink", path))?;
        EntryKind::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        EntryKind::CharDevice {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    } else if ft.is_block_device() {
        EntryKind::BlockDevice {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_file() {
        EntryKind::File
    } else {
        return Ok(None);
    };
    let (overlay, xattrs): (Vec<sys::Xattr>, _) = xattrs()
        .map_err(|e| io_err("reading xattrs of", path)(io::Error::from_raw_os_error(e as i32)))?
        .into_iter()
        .partition(|(n, _)| is_overlay_xattr(n));
    let opaque = kind == EntryKind::Dir
        && overlay.iter().any(|(n, v)| {
            v == b"y"
                && [
                    &b"trusted.overlay.opaque"[..],
                    b"user.overlay.opaque",
                    b"user.fuseoverlayfs.opaque",
                ]
                .contains(&n.as_slice())
        });
    Ok(Some(Node {
        opaque,
        meta: EntryMeta {
            mode: md.mode() & 0o7777,
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            mtime: md.mtime(),
            size: if kind == EntryKind::File {
                md.size()
            } else {
                0
            },
            xattrs,
        },
        kind,
        mtime_nsec: md.mtime_nsec(),
        ctime: (md.ctime(), md.ctime_nsec()),
        dev_ino: (md.dev(), md.ino()),
        nlink: md.nlink(),
    }))
}

impl<S: LayerStream> Differ<'_, S> {
    /// Writes the pending parents not written yet, outermost first.
    fn flush_parents(&mut self) -> Result<(), DiffError> {
        for i in 0..self.pending.len() {
            if let Some(n) = self.pending[i].2.take() {
                let (path, rel) = (self.pending[i].0.clone(), self.pending[i].1.clone());
                self.emit_entry(&path, &rel, n, Content::Path)?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &[u8]) -> Result<(), DiffError> {
        self.flush_parents()?;
        self.stats.whiteouts += 1;
        Ok(self.writer.append_whiteout(rel)?)
    }

    fn emit(
        &mut self,
        path: &Path,
        rel: &[u8],
        n: Node,
        content: Content,
    ) -> Result<(), DiffError> {
        self.flush_parents()?;
        self.emit_entry(path, rel, n, content)
    }

    /// Writes one entry; a regular file's content comes from `content`.
    fn emit_entry(
        &mut self,
        path: &Path,
        rel: &[u8],
        n: Node,
        content: Content,
    ) -> Result<(), DiffError> {
        self.stats.entries += 1;
        if n.kind != EntryKind::Dir && n.nlink > 1 {
            if let Some(first) = self.links.get(&n.dev_ino) {
                let kind = EntryKind::Hardlink(first.clone());
                let meta = EntryMeta { size: 0, ..n.meta };
                return Ok(self.writer.append(rel, &kind, &meta, None)?);
            }
            self.links.insert(n.dev_ino, rel.to_vec());
        }
        if n.kind == EntryKind::File && n.meta.size > 0 {
            self.stats.content_bytes += n.meta.size;
            let mut f;
            let mut bytes;
            let data: &mut dyn Read = match content {
                Content::Read(read) => {
                    bytes = io::Cursor::new(read);
                    &mut bytes
                }
                Content::Open(open) => {
                    f = open;
                    &mut f
                }
                Content::Path => {
                    f = File::open(path).map_err(io_err("opening", path))?;
                    &mut f
                }
            };
            self.writer.append(rel, &n.kind, &n.meta, Some(data))?;
        } else {
            self.writer.append(rel, &n.kind, &n.meta, None)?;
        }
        Ok(())
    }

    /// Writes the overlay upper dir `dir` (`rel` in the layer, `key` in the walk's order) from
    /// the listing [`Ahead`] made of it.
    fn overlay_dir(
        &mut self,
        ahead: &Ahead,
        dir: &Path,
        rel: &[u8],
        key: &DirKey,
    ) -> Result<(), DiffError> {
        let listing = ahead.take(key, dir)?;
        self.overlay_entries(ahead, dir, rel, key, listing)
    }

    /// [`Self::overlay_dir`] from `listing`, the listing of `dir`.
    fn overlay_entries(
        &mut self,
        ahead: &Ahead,
        dir: &Path,
        rel: &[u8],
        key: &DirKey,
        listing: Vec<ahead::Entry>,
    ) -> Result<(), DiffError> {
        // Held while this directory's large files are read, not while a subdirectory is walked:
        // a deep tree would hold one per level.
        let mut dir_fd = None;
        for entry in listing {
            let path = child(dir, &entry.name);
            let crel = join(rel, &entry.name);
            let n = match entry.pre {
                Pre::Failed(e) => return Err(e),
                Pre::Read(n, bytes) => {
                    self.emit(&path, &crel, n, Content::Read(bytes))?;
                    continue;
                }
                // A large regular file is opened by its name in the directory held open, and
                // stated, listed and read through that one descriptor: no path is walked again.
                Pre::Stream => match open_file(dir, &mut dir_fd, &entry.name, &path)? {
                    Opened::File(f, n) => {
                        self.emit(&path, &crel, n, Content::Open(f))?;
                        continue;
                    }
                    Opened::Other(None) => continue,
                    Opened::Other(Some(n)) => n,
                },
                Pre::Node(None) => continue,
                Pre::Node(Some(n)) => n,
            };
            if ahead::is_whiteout(&n) {
                self.stats.whiteouts += 1;
                self.writer.append_whiteout(&crel)?;
                continue;
            }
            // The test `ahead::enters` makes of the listing: the walk enters what was listed.
            if entry.file_type.is_dir() {
                let opaque = n.opaque;
                self.emit(&path, &crel, n, Content::Path)?;
                if opaque {
                    self.stats.whiteouts += 1;
                    self.writer.append_opaque(&crel)?;
                }
                dir_fd = None;
                self.overlay_dir(ahead, &path, &crel, &ahead::child_key(key, &entry.name))?;
            } else {
                self.emit(&path, &crel, n, Content::Path)?;
            }
        }
        Ok(())
    }

    fn compare_dir(
        &mut self,
        lower: Option<&Path>,
        upper: &Path,
        rel: &[u8],
    ) -> Result<(), DiffError> {
        let ups = sorted_children(upper)?;
        let lows = match lower {
            Some(l) => sorted_children(l)?,
            None => Vec::new(),
        };
        // A name present in both trees is one entry even if it changed between file and directory,
        // so merge by name, ordering by the upper's view of each name.
        let lower_names: HashMap<Vec<u8>, bool> = lows.into_iter().collect();
        let mut names: Vec<(Vec<u8>, bool)> = ups.clone();
        let upper_names: std::collections::HashSet<&Vec<u8>> = ups.iter().map(|(n, _)| n).collect();
        for (name, is_dir) in &lower_names {
            if !upper_names.contains(name) {
                names.push((name.clone(), *is_dir));
            }
        }
        names.sort_by_cached_key(|(name, is_dir)| sort_key(name, *is_dir));
        for (name, _) in names {
            let crel = join(rel, &name);
            let upath = child(upper, &name);
            let in_upper = upper_names.contains(&name);
            match (in_upper, lower_names.get(&name)) {
                (false, _) => self.whiteout(&crel)?,
                (true, None) => {
                    let Some(n) = node(&upath)? else {
                        continue;
                    };
                    let is_dir = n.kind == EntryKind::Dir;
                    self.emit(&upath, &crel, n, Content::Path)?;
                    if is_dir {
                        self.compare_dir(None, &upath, &crel)?;
                    }
                }
                (true, Some(&lower_is_dir)) => {
                    let lpath = child(lower.expect("a lower name needs a lower dir"), &name);
                    // A socket over a lower entry is left out, as containerd leaves it: the
                    // lower one shows through.
                    let Some(un) = node(&upath)? else {
                        continue;
                    };
                    let is_dir = un.kind == EntryKind::Dir;
                    let changed = match node(&lpath)? {
                        Some(ln) => !same(&un, &ln, &upath, &lpath, self.copied_at)?,
                        None => true,
                    };
                    let pending = if changed {
                        self.emit(&upath, &crel, un, Content::Path)?;
                        false
                    } else if is_dir {
                        self.pending.push((upath.clone(), crel.clone(), Some(un)));
                        true
                    } else {
                        false
                    };
                    if is_dir {
                        let sub_lower = lower_is_dir.then_some(lpath.as_path());
                        self.compare_dir(sub_lower, &upath, &crel)?;
                    }
                    if pending {
                        self.pending.pop();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether an upper entry is unchanged from the lower one: metadata first, then content.
fn same(
    u: &Node,
    l: &Node,
    upath: &Path,
    lpath: &Path,
    copied_at: Option<(i64, i64)>,
) -> Result<bool, DiffError> {
    if u.kind != l.kind || u.meta != l.meta || u.mtime_nsec != l.mtime_nsec {
        return Ok(false);
    }
    if u.kind != EntryKind::File || u.meta.size == 0 {
        return Ok(true);
    }
    // Untouched since the copy: its ctime is from the copy, before the marker.
    if copied_at.is_some_and(|t| u.ctime < t) {
        return Ok(true);
    }
    // Equal metadata with changed bytes happens (a tool restoring mtimes): read both to be sure.
    let mut a = File::open(upath).map_err(io_err("opening", upath))?;
    let mut b = File::open(lpath).map_err(io_err("opening", lpath))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut a, &mut ba).map_err(io_err("reading", upath))?;
        let m = read_full(&mut b, &mut bb).map_err(io_err("reading", lpath))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
