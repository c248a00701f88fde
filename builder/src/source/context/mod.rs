//! Build-context snapshots: what a COPY/ADD from the local context reads, reduced to a cache key.
//! A parallel walk honours `.dockerignore`, records each kept entry's metadata (never mtime) and a
//! blake3 of file contents, reusing a persisted memo so an unchanged rebuild reads no file.
//! Paths are the bytes Linux gives (a name need not be UTF-8); the ignore rules and wildcards,
//! which are text, see a name that is not UTF-8 with U+FFFD for what does not decode.

mod memo;
pub mod pattern;
mod walk;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::frontend::dockerignore::Dockerignore;
use crate::slashpath::join_root;

pub use pattern::BadPattern;

/// A context that cannot be snapshotted or a selection that cannot be hashed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Listing a directory or reading an entry's metadata failed.
    #[error("walking {path}: {source}")]
    Walk {
        /// The entry.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Reading a file's content or a link's target failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A file was replaced by something else between the walk and its hashing.
    #[error("{path} changed while the context was read (was a regular file, inode {expected_ino})")]
    Changed {
        /// The file.
        path: PathBuf,
        /// The inode the walk saw.
        expected_ino: u64,
    },
    /// A COPY/ADD source without wildcards that is not in the context (or is excluded by
    /// `.dockerignore`).
    #[error("source {pattern:?} not found in the build context")]
    SourceNotFound {
        /// The source as given.
        pattern: String,
    },
    /// A wildcard source Go's `filepath.Match` rejects.
    #[error(transparent)]
    BadPattern(#[from] BadPattern),
}

/// What an entry is. Devices carry their device number, which is part of what a copy reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by the walk).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
            EntryKind::Fifo => 4,
            EntryKind::Socket => 5,
            EntryKind::CharDevice => 6,
            EntryKind::BlockDevice => 7,
        }
    }
}

/// One kept entry of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root, `/`-separated, without a leading `./`: the bytes of the
    /// names on disk, UTF-8 or not.
    pub path: OsString,
    /// The entry's type.
    pub kind: EntryKind,
    /// Permission bits plus setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Size in bytes (`st_size`; for a symlink the length of its target).
    pub size: u64,
    /// A symlink's target, exactly as stored.
    pub link_target: Option<PathBuf>,
    /// Device number of a character or block device, 0 otherwise.
    pub rdev: u64,
    /// blake3 of a regular file's content.
    pub content: Option<blake3::Hash>,
}

/// Counters of one snapshot, for tests and progress output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Regular files whose content was read and hashed (the instrumentation the memo is judged by).
    pub files_read: u64,
    /// Bytes of content read.
    pub bytes_read: u64,
    /// Regular files whose hash came from the memo.
    pub memo_hits: u64,
    /// Why the memo was not used or not saved, when that happened; the snapshot is still right.
    pub memo_warning: Option<String>,
}

/// How to take a snapshot.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions<'a> {
    /// The `.dockerignore` rules to honour (none: keep everything).
    pub ignore: Option<&'a Dockerignore>,
    /// Where the content-hash memo is kept (none: no memo, every file is read).
    pub state_dir: Option<&'a Path>,
    /// Worker threads for walking and hashing; 0 means one per available core for hashing, and
    /// for walking too above two cores (one walker otherwise).
    pub threads: usize,
}

/// The kept entries of a build context, sorted by path (byte order), each with its metadata and,
/// for regular files, a content hash.
#[derive(Debug, Clone)]
pub struct ContextSnapshot {
    entries: Vec<Entry>,
    /// What the ignore rules left out, sorted by path: an excluded entry, or an excluded directory
    /// the walk did not descend, one record for everything below it. Empty without ignore rules.
    left_out: Vec<OsString>,
    stats: SnapshotStats,
}

/// What a path names in the context once resolved (see [`ContextSnapshot::subtree`]): the kept
/// entry there and every kept entry below it.
#[derive(Debug, Clone, Copy)]
pub struct Subtree<'a> {
    /// Where the path leads, relative and `/`-separated, every link on the way followed; empty
    /// for the context root.
    pub path: &'a OsStr,
    /// The entry there; `None` for the context root.
    pub top: Option<&'a Entry>,
    /// The kept entries below it, in path order (none below a file).
    pub below: &'a [Entry],
    /// Nothing at or below `path` was left out by the ignore rules: the host's tree there holds
    /// exactly these entries.
    pub whole: bool,
}

impl<'a> Subtree<'a> {
    /// The top entry (when not the root) and those below it, in path order.
    pub fn entries(&self) -> impl Iterator<Item = &'a Entry> + 'a {
        self.top.into_iter().chain(self.below)
    }
}

/// Where the memo for the context at `root` is kept under `state_dir` (one file per context
/// directory).
pub fn memo_path(state_dir: &Path, root: &Path) -> PathBuf {
    memo::memo_file(state_dir, root)
}

const DOMAIN_SELECTION: &[u8] = b"forge.context.selection.v2";
const DOMAIN_CONTEXT: &[u8] = b"forge.context.v1";

impl ContextSnapshot {
    /// Walks `root` (not following symlinks), applies the ignore rules as fsutil does (an excluded
    /// directory is still kept when something below it is re-included by a `!` rule) and hashes the
    /// kept regular files, reusing and then refreshing the memo under `state_dir` when given.
    pub fn take(root: &Path, options: &SnapshotOptions<'_>) -> Result<Self, ContextError> {
        walk::take(root, options)
    }

    /// Every kept entry, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What the ignore rules left out, sorted by path; a directory the walk did not descend is
    /// one record for everything below it.
    pub fn left_out(&self) -> &[OsString] {
        &self.left_out
    }

    /// What the snapshot cost.
    pub fn stats(&self) -> &SnapshotStats {
        &self.stats
    }

    /// Whether nothing at or below `path` (relative, `/`-separated, as entries are named; empty for
    /// the root) was left out by the ignore rules, nor the path itself through a directory above
    /// it. A directory left out whole is one record, so this is a few binary searches, whatever
    /// the size of what was left out.
    pub fn whole(&self, path: impl AsRef<OsStr>) -> bool {
        let path = path.as_ref().as_bytes();
        if path.is_empty() {
            return self.left_out.is_empty();
        }
        // The path itself, or a directory above it, left out whole.
        let ends = path
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| i)
            .chain([path.len()]);
        for end in ends {
            let at = &path[..end];
            if self
                .left_out
                .binary_search_by(|p| p.as_bytes().cmp(at))
                .is_ok()
            {
                return false;
            }
        }
        // Everything below `path/` is one run in byte order (not always right after `path`
        // itself: `path-x` sorts between them).
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let i = self
            .left_out
            .partition_point(|p| p.as_bytes() < prefix.as_slice());
        !self
            .left_out
            .get(i)
            .is_some_and(|p| p.as_bytes().starts_with(&prefix))
    }

    /// What `source` (a RUN bind or cache mount's `source`) names: resolved through symlinks
    /// inside the context as [`ContextSnapshot::select`] resolves a path (every link on the way,
    /// and the last, a kept entry), with the kept entries at and below it. `None` when it names
    /// nothing kept (absent, left out, a dangling link, a file used as a directory).
    pub fn subtree(&self, source: &str) -> Option<Subtree<'_>> {
        match self.resolve(source.as_bytes())? {
            Resolved::Root => Some(Subtree {
                path: OsStr::new(""),
                top: None,
                below: &self.entries,
                whole: self.left_out.is_empty(),
            }),
            Resolved::Entry(i) => {
                let top = &self.entries[i];
                Some(Subtree {
                    path: &top.path,
                    top: Some(top),
                    below: &self.entries[self.below(i)],
                    whole: self.whole(&top.path),
                })
            }
        }
    }

    /// The entry at `path` (relative, `/`-separated), without following symlinks.
    pub fn get(&self, path: impl AsRef<OsStr>) -> Option<&Entry> {
        self.index_of(path.as_ref().as_bytes())
            .map(|i| &self.entries[i])
    }

    fn index_of(&self, path: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path))
            .ok()
    }

    /// The digest of the whole snapshot: the encoding described at [`ContextSnapshot::hash_selection`]
    /// over every entry, owners included, under its own domain string (`forge.context.v1`).
    pub fn digest(&self) -> blake3::Hash {
        digest_entries(DOMAIN_CONTEXT, self.entries.iter(), true)
    }

    /// The entries COPY/ADD sources select, sorted by path and without duplicates.
    ///
    /// Each source is cleaned (`./a//b/` is `a/b`, `..` cannot leave the root, a leading `/` is the
    /// context root). `.` selects everything. A source with an unescaped `*`, `?` or `[` is matched
    /// against every entry's path with Go's `filepath.Match` (so `*` never crosses a `/`; a name
    /// that is not UTF-8 is matched in its lossy form, which gives `?` one U+FFFD to match where
    /// Go may see one per byte of a truncated sequence); any other source is a path, resolved
    /// through symlinks inside the context as BuildKit does for COPY sources, and an error if
    /// absent. A selected directory brings its whole subtree; a selected symlink is followed
    /// (within the context) and its target selected, a dangling one selects the link itself.
    /// Symlinks below a selected directory are kept as links.
    pub fn select<S: AsRef<str>>(&self, sources: &[S]) -> Result<Vec<&Entry>, ContextError> {
        let mut picked = Picked::new(self.entries.len());
        for source in sources {
            let raw = source.as_ref();
            let cleaned = scope(raw);
            if cleaned.is_empty() {
                picked.all();
                continue;
            }
            if pattern::has_wildcards(&cleaned) {
                for (i, e) in self.entries.iter().enumerate() {
                    if pattern::go_match(&cleaned, &e.path.to_string_lossy())? {
                        self.pick_followed(i, &mut picked);
                    }
                }
                // Go reports a bad pattern only when it gets that far; check it on its own too.
                pattern::go_match(&cleaned, "")?;
                continue;
            }
            match self.resolve(cleaned.as_bytes()) {
                Some(Resolved::Root) => picked.all(),
                Some(Resolved::Entry(i)) => self.pick_subtree(i, &mut picked),
                None => match self.index_of(cleaned.as_bytes()) {
                    // A dangling link: what is copied is the link itself.
                    Some(i) => self.pick_subtree(i, &mut picked),
                    None => {
                        return Err(ContextError::SourceNotFound {
                            pattern: raw.to_string(),
                        });
                    }
                },
            }
        }
        Ok(picked.indices().map(|i| &self.entries[i]).collect())
    }

    /// The cache-key digest of what COPY/ADD `sources` read (see [`ContextSnapshot::select`]).
    ///
    /// The digest is blake3 over this encoding, where `lp(x)` is x's length as a u64 little-endian
    /// followed by its bytes and integers are little-endian:
    ///
    /// ```text
    /// lp("forge.context.selection.v2")  u64 number of entries
    /// then for each selected entry, in byte order of its path:
    ///   lp(path)          relative, `/`-separated, the names' bytes
    ///   u8  type          1 file, 2 dir, 3 symlink, 4 fifo, 5 socket, 6 char dev, 7 block dev
    ///   u32 mode          st_mode & 0o7777
    ///   u32 0, u32 0      in place of the owner: what COPY makes of the context belongs to
    ///                     root (or to --chown) whoever owns the checkout, so a root runner's
    ///                     and a user's checkouts share keys (docker's client sends the context
    ///                     with owner 0:0 too)
    ///   lp(link target)   empty unless a symlink
    ///   u64 rdev          0 unless a device
    ///   [32] content      blake3 of a regular file's bytes, zeroes otherwise
    /// ```
    ///
    /// Renaming, a mode change or a content change (extended attributes included) moves the
    /// digest; owners, mtime, atime, ctime and inode numbers never enter it.
    pub fn hash_selection<S: AsRef<str>>(
        &self,
        sources: &[S],
    ) -> Result<blake3::Hash, ContextError> {
        Ok(digest_entries(
            DOMAIN_SELECTION,
            self.select(sources)?.into_iter(),
            false,
        ))
    }

    fn pick_followed(&self, i: usize, picked: &mut Picked) {
        if self.entries[i].kind == EntryKind::Symlink
            && let Some(r) = self.resolve(self.entries[i].path.as_bytes())
        {
            match r {
                Resolved::Root => picked.all(),
                Resolved::Entry(j) => self.pick_subtree(j, picked),
            }
            return;
        }
        self.pick_subtree(i, picked);
    }

    fn pick_subtree(&self, i: usize, picked: &mut Picked) {
        picked.mark(i);
        picked.mark_range(self.below(i));
    }

    /// The entries below entry `i`: none unless it is a directory.
    fn below(&self, i: usize) -> std::ops::Range<usize> {
        if self.entries[i].kind != EntryKind::Dir {
            return 0..0;
        }
        // Sorted by bytes, so everything under `dir/` is one contiguous run.
        let mut prefix = self.entries[i].path.as_bytes().to_vec();
        prefix.push(b'/');
        let start = self
            .entries
            .partition_point(|e| e.path.as_bytes() < prefix.as_slice());
        let end = start
            + self.entries[start..]
                .iter()
                .take_while(|e| e.path.as_bytes().starts_with(&prefix))
                .count();
        start..end
    }

    /// Follows symlinks in every component of `path`, never leaving the context root (a `..` at the
    /// root stays there, an absolute target starts from the root), as BuildKit scopes COPY sources.
    fn resolve(&self, path: &[u8]) -> Option<Resolved> {
        let mut pending: std::collections::VecDeque<&[u8]> = path.split(|b| *b == b'/').collect();
        let mut cur: Vec<&[u8]> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop_front() {
            match c {
                b"" | b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let i = self.index_of(&cur.join(&b'/'))?;
            let e = &self.entries[i];
            if e.kind == EntryKind::Symlink {
                hops += 1;
                if hops > 255 {
                    return None;
                }
                cur.pop();
                let target = e.link_target.as_ref()?.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    cur.clear();
                }
                for comp in target.split(|b| *b == b'/').rev() {
                    pending.push_front(comp);
                }
            } else if !pending.iter().all(|p| p.is_empty() || *p == b".")
                && e.kind != EntryKind::Dir
            {
                // A file used as a directory.
                return None;
            }
        }
        if cur.is_empty() {
            return Some(Resolved::Root);
        }
        self.index_of(&cur.join(&b'/')).map(Resolved::Entry)
    }
}

enum Resolved {
    Root,
    Entry(usize),
}

/// A source cleaned and scoped to the context root; empty means the root itself.
fn scope(source: &str) -> String {
    let cleaned = join_root(source);
    cleaned.trim_start_matches('/').to_string()
}

/// Which entries a selection picked, in the entries' (sorted) order: a flag per entry, so that
/// picking the whole context costs one pass, not a tree insertion per entry.
struct Picked(Vec<bool>);

impl Picked {
    fn new(len: usize) -> Picked {
        Picked(vec![false; len])
    }

    fn mark(&mut self, i: usize) {
        self.0[i] = true;
    }

    fn mark_range(&mut self, range: std::ops::Range<usize>) {
        self.0[range].fill(true);
    }

    fn all(&mut self) {
        self.0.fill(true);
    }

    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.then_some(i))
    }
}

/// The digest of `entries` in the encoding [`ContextSnapshot::hash_selection`] documents; with
/// `owners`, each entry's uid and gid, else zeroes in their place.
fn digest_entries<'a>(
    domain: &[u8],
    entries: impl ExactSizeIterator<Item = &'a Entry>,
    owners: bool,
) -> blake3::Hash {
    fn lp(b: &mut Vec<u8>, bytes: &[u8]) {
        b.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        b.extend_from_slice(bytes);
    }
    // The encoding is gathered and hashed in large pieces: blake3 pays per call, and an entry is
    // ten small fields. The bytes, and so the digest, are those of hashing field by field.
    const PIECE: usize = 64 * 1024;
    let mut h = blake3::Hasher::new();
    let mut b = Vec::with_capacity(PIECE + 4096);
    lp(&mut b, domain);
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        lp(&mut b, e.path.as_bytes());
        b.push(e.kind.code());
        b.extend_from_slice(&e.mode.to_le_bytes());
        let (uid, gid) = if owners { (e.uid, e.gid) } else { (0, 0) };
        b.extend_from_slice(&uid.to_le_bytes());
        b.extend_from_slice(&gid.to_le_bytes());
        lp(
            &mut b,
            e.link_target
                .as_ref()
                .map_or(&[][..], |t| t.as_os_str().as_encoded_bytes()),
        );
        b.extend_from_slice(&e.rdev.to_le_bytes());
        b.extend_from_slice(e.content.as_ref().map_or(&[0u8; 32], |c| c.as_bytes()));
        if b.len() >= PIECE {
            h.update(&b);
            b.clear();
        }
    }
    h.update(&b);
    h.finalize()
}
