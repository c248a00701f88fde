//! The parallel part of a snapshot: one walker per core lists and states the tree (each depth first
//! through its own stack, sharing directories only with a walker that has none), then the files
//! the memo cannot vouch for are hashed by the same number of workers.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::memo::{FileKey, Memo};
use super::{ContextError, ContextSnapshot, Entry, EntryKind, SnapshotOptions, SnapshotStats};
use crate::frontend::dockerignore::{Dockerignore, MatchState};

/// An entry as the walk found it, before hashing.
struct Found {
    entry: Entry,
    key: FileKey,
    /// Excluded itself, listed only if something below it is kept.
    excluded_dir: bool,
}

/// One directory as a walker read it: its entries as they were read, and the order in which they
/// and the subdirectories' own listings make the context's path order (decided on indices: an
/// entry is moved only into its place in the whole walk).
struct Listing {
    found: Vec<Option<Found>>,
    order: Vec<Item>,
    /// Entries the ignore rules left out, a directory not descended standing for all below it.
    left_out: Vec<OsString>,
}

/// A place in a directory's part of the path order.
#[derive(Clone, Copy)]
enum Item {
    /// One of the directory's entries: its index in `found`.
    Entry(u32),
    /// Everything below a subdirectory: its listing's slot.
    Below(usize),
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Walkers holding directories (a stack of their own): the walk ends when this and the queue
    /// are empty.
    busy: usize,
    failed: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub(super) fn take(
    root: &Path,
    options: &SnapshotOptions<'_>,
) -> Result<ContextSnapshot, ContextError> {
    // Taken before any stat, so a file written during the walk is never older than the memo's time.
    let taken_at = now_ns();
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let empty = Dockerignore::default();
    let ignore = options.ignore.unwrap_or(&empty);
    let memo_path = options.state_dir.map(|d| super::memo::memo_file(d, root));
    // The memo is read while the tree is walked: neither needs the other until the lookups.
    let (walked, (memo, memo_warning)) = std::thread::scope(|s| {
        let memo = s.spawn(|| match &memo_path {
            Some(p) => Memo::load(p),
            None => (Memo::default(), None),
        });
        let walked = walk(root, ignore, threads);
        let memo = match memo.join() {
            Ok(m) => m,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (walked, memo)
    });
    let (mut found, mut left_out) = walked?;

    // fsutil sends an excluded directory only when something below it is sent.
    if found.iter().any(|f| f.excluded_dir) {
        let mut needed: HashSet<&[u8]> = HashSet::new();
        for f in found.iter().filter(|f| !f.excluded_dir) {
            let p = f.entry.path.as_bytes();
            for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'/') {
                needed.insert(&p[..i]);
            }
        }
        let keep: Vec<bool> = found
            .iter()
            .map(|f| !f.excluded_dir || needed.contains(f.entry.path.as_bytes()))
            .collect();
        let mut kept = Vec::with_capacity(found.len());
        for (f, k) in found.into_iter().zip(keep) {
            if k {
                kept.push(f);
            } else {
                left_out.push(f.entry.path);
            }
        }
        found = kept;
    }
    // Only what was left out is sorted: none of it on a context without ignore rules.
    left_out.sort_unstable();

    let mut stats = SnapshotStats {
        memo_warning,
        ..SnapshotStats::default()
    };
    let mut lookups = memo.lookups(now_ns());
    let mut to_hash = Vec::new();
    for (i, f) in found.iter_mut().enumerate() {
        if f.entry.kind != EntryKind::File {
            continue;
        }
        match lookups.get(f.entry.path.as_bytes(), &f.key) {
            Some(h) => {
                f.entry.content = Some(h);
                stats.memo_hits += 1;
            }
            None => to_hash.push(i),
        }
    }

    let results = hash_files(root, &found, &to_hash, threads);
    for (i, r) in results {
        let (hash, key, bytes) = r?;
        found[i].entry.content = Some(hash);
        found[i].key = key;
        stats.files_read += 1;
        stats.bytes_read += bytes;
    }

    // Nothing read and nothing gone: the memo on disk already says all there is to say, and a
    // no-op rebuild should not pay for a rewrite and an fsync.
    let unchanged = stats.files_read == 0 && memo.len() as u64 == stats.memo_hits;
    if let Some(p) = memo_path.as_ref().filter(|_| !unchanged) {
        let entries = found
            .iter()
            .filter_map(|f| f.entry.content.map(|h| (f.entry.path.as_bytes(), f.key, h)));
        if let Err(e) = Memo::save(p, taken_at, entries) {
            stats.memo_warning = Some(format!("saving memo {}: {e}", p.display()));
        }
    }
    Ok(ContextSnapshot {
        entries: found.into_iter().map(|f| f.entry).collect(),
        left_out,
        stats,
    })
}

/// Every entry of the tree under `root` that `ignore` keeps, in path order, and the paths it left
/// out (unordered).
fn walk(
    root: &Path,
    ignore: &Dockerignore,
    threads: usize,
) -> Result<(Vec<Found>, Vec<OsString>), ContextError> {
    let shared = Shared {
        queue: Mutex::new(Queue {
            jobs: VecDeque::from([(OsString::new(), None, ROOT)]),
            busy: 0,
            failed: false,
        }),
        wake: Condvar::new(),
        idle: AtomicUsize::new(0),
        slots: AtomicUsize::new(ROOT + 1),
        error: Mutex::new(None),
    };
    let mut all = Vec::new();
    std::thread::scope(|s| {
        let workers: Vec<_> = (1..threads)
            .map(|_| s.spawn(|| walker(root, ignore, &shared)))
            .collect();
        all = walker(root, ignore, &shared);
        for w in workers {
            match w.join() {
                Ok(v) => all.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    if let Some(e) = shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut listings: Vec<Option<Listing>> = Vec::new();
    listings.resize_with(shared.slots.into_inner(), || None);
    let mut count = 0;
    let mut left_out = Vec::new();
    for (slot, mut listing) in all {
        count += listing.found.len();
        left_out.append(&mut listing.left_out);
        listings[slot] = Some(listing);
    }
    Ok((in_path_order(listings, count), left_out))
}

/// The root directory's listing slot.
const ROOT: usize = 0;

/// The listings' entries in path order: each directory's items in turn, a subdirectory's listing
/// in full where its `Below` item stands. Moves each entry once, comparing nothing: the order was
/// decided per directory, by the walkers.
fn in_path_order(mut listings: Vec<Option<Listing>>, count: usize) -> Vec<Found> {
    let mut out = Vec::with_capacity(count);
    let open = |listings: &mut Vec<Option<Listing>>, slot: usize| {
        listings
            .get_mut(slot)
            .and_then(Option::take)
            .map(|l| (l.found, l.order.into_iter()))
    };
    // Depth first through an explicit stack: a deep tree cannot overflow the thread's own.
    let mut stack: Vec<_> = open(&mut listings, ROOT).into_iter().collect();
    while let Some((found, order)) = stack.last_mut() {
        match order.next() {
            Some(Item::Entry(i)) => out.extend(found.get_mut(i as usize).and_then(Option::take)),
            Some(Item::Below(slot)) => {
                if let Some(below) = open(&mut listings, slot) {
                    stack.push(below);
                }
            }
            None => {
                stack.pop();
            }
        }
    }
    out
}

/// A directory to list: its path under the root, the match state its entries start from, and the
/// slot its listing fills.
type Job = (OsString, Option<MatchState>, usize);

/// What the walkers share. Each walker goes depth first through a stack of its own and touches the
/// queue only to take work when its stack is empty, or to give half of its stack when another
/// walker waits for work: handing every directory through a lock cost more than it saved.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Walkers waiting for work (read without the lock, to decide whether to share).
    idle: AtomicUsize,
    /// The next directory's listing slot.
    slots: AtomicUsize,
    error: Mutex<Option<ContextError>>,
}

fn walker(root: &Path, ignore: &Dockerignore, shared: &Shared) -> Vec<(usize, Listing)> {
    let mut out = Vec::new();
    let mut stack: Vec<Job> = Vec::new();
    loop {
        if stack.is_empty() {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.failed {
                    return out;
                }
                if let Some(job) = q.jobs.pop_front() {
                    q.busy += 1;
                    stack.push(job);
                    break;
                }
                if q.busy == 0 {
                    // Nothing queued and nobody who could queue more: the walk is over.
                    shared.wake.notify_all();
                    return out;
                }
                shared.idle.fetch_add(1, Ordering::SeqCst);
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                shared.idle.fetch_sub(1, Ordering::SeqCst);
            }
        }
        while let Some((rel, state, slot)) = stack.pop() {
            match read_dir(
                root,
                &rel,
                state.as_ref(),
                ignore,
                &shared.slots,
                &mut stack,
            ) {
                Ok(listing) => out.push((slot, listing)),
                Err(e) => {
                    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                    q.failed = true;
                    shared
                        .error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    shared.wake.notify_all();
                    return out;
                }
            }
            if stack.len() > 1 && shared.idle.load(Ordering::Relaxed) > 0 {
                let give = stack.len() / 2;
                let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.jobs.extend(stack.drain(..give));
                shared.wake.notify_all();
            }
        }
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.busy -= 1;
        if q.busy == 0 && q.jobs.is_empty() {
            shared.wake.notify_all();
        }
    }
}

/// Lists one directory: its kept entries, and its part of the path order; the directories to
/// descend into go to `subdirs`, each with a new slot from `slots`.
fn read_dir(
    root: &Path,
    rel: &OsStr,
    parent: Option<&MatchState>,
    ignore: &Dockerignore,
    slots: &AtomicUsize,
    subdirs: &mut Vec<Job>,
) -> Result<Listing, ContextError> {
    let mut out = Vec::new();
    let mut below = Vec::new();
    let mut left_out = Vec::new();
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    // Built only on failure: the paths are not copied for every entry that is fine.
    let walk_err = |path: PathBuf| move |source| ContextError::Walk { path, source };
    for entry in std::fs::read_dir(&dir).map_err(|e| walk_err(dir.clone())(e))? {
        let entry = entry.map_err(|e| walk_err(dir.clone())(e))?;
        let name = entry.file_name();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
            p.extend_from_slice(rel.as_bytes());
            p.push(b'/');
            p.extend_from_slice(name.as_bytes());
            OsString::from_vec(p)
        };
        // DirEntry::metadata is an lstat: symlinks are described, not followed.
        let meta = entry.metadata().map_err(|e| walk_err(entry.path())(e))?;
        let is_dir = meta.is_dir();
        // The rules are text: a name that is not UTF-8 is matched in its lossy form (borrowed,
        // not copied, for every other name).
        let text: Cow<'_, str> = if ignore.is_empty() {
            Cow::Borrowed("")
        } else {
            path.to_string_lossy()
        };
        // Only a directory hands its match state down.
        let (excluded, state) = if ignore.is_empty() {
            (false, None)
        } else if is_dir {
            let (excluded, state) = ignore.match_with_parent(&text, parent);
            (excluded, Some(state))
        } else {
            (ignore.excluded_with_parent(&text, parent), None)
        };
        if excluded && !(is_dir && ignore.may_match_below(&text)) {
            left_out.push(path);
            continue;
        }
        let kind = kind_of(&meta);
        let link_target = if kind == EntryKind::Symlink {
            let full = entry.path();
            Some(
                std::fs::read_link(&full)
                    .map_err(|source| ContextError::Read { path: full, source })?,
            )
        } else {
            None
        };
        if is_dir {
            let slot = slots.fetch_add(1, Ordering::Relaxed);
            subdirs.push((path.clone(), state, slot));
            below.push((name, slot));
        }
        out.push(Found {
            key: key_of(&meta),
            entry: Entry {
                path,
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                link_target,
                rdev: if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                    meta.rdev()
                } else {
                    0
                },
                content: None,
            },
            excluded_dir: excluded,
        });
    }
    let mut listing = order_listing(rel, out, below);
    listing.left_out = left_out;
    Ok(listing)
}

/// A directory's listing in path order. Every path below `rel/` starts with one entry's name: the
/// entry's own path ends there, its subtree's paths go on with `/`. So the context's byte order of
/// paths is, within a directory, the order of these keys: each name, and each subdirectory's name
/// with a `/` after it for everything below it (which puts `a-b` between the directory `a` and
/// `a/x`, as a sort of the whole paths does).
fn order_listing(rel: &OsStr, found: Vec<Found>, mut below: Vec<(OsString, usize)>) -> Listing {
    let skip = if rel.is_empty() { 0 } else { rel.len() + 1 };
    let name = |i: u32| &found[i as usize].entry.path.as_bytes()[skip..];
    let mut by_name: Vec<u32> = (0..found.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| name(a).cmp(name(b)));
    below.sort_unstable_by(|(a, _), (b, _)| slashed(a).cmp(slashed(b)));
    let mut order = Vec::with_capacity(found.len() + below.len());
    let mut subtrees = below.iter().peekable();
    for i in by_name {
        while let Some((_, slot)) =
            subtrees.next_if(|(dir, _)| slashed(dir).lt(name(i).iter().copied()))
        {
            order.push(Item::Below(*slot));
        }
        order.push(Item::Entry(i));
    }
    order.extend(subtrees.map(|(_, slot)| Item::Below(*slot)));
    Listing {
        found: found.into_iter().map(Some).collect(),
        order,
        left_out: Vec::new(),
    }
}

/// A subdirectory's key in its parent's part of the path order (see [`order_listing`]).
fn slashed(name: &OsStr) -> impl Iterator<Item = u8> + '_ {
    name.as_bytes().iter().copied().chain([b'/'])
}

fn kind_of(meta: &Metadata) -> EntryKind {
    let t = meta.file_type();
    if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_fifo() {
        EntryKind::Fifo
    } else if t.is_socket() {
        EntryKind::Socket
    } else if t.is_char_device() {
        EntryKind::CharDevice
    } else if t.is_block_device() {
        EntryKind::BlockDevice
    } else {
        EntryKind::File
    }
}

fn key_of(meta: &Metadata) -> FileKey {
    FileKey {
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ino: meta.ino(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        dev: meta.dev(),
    }
}

type Hashed = Result<(blake3::Hash, FileKey, u64), ContextError>;

fn hash_files(
    root: &Path,
    found: &[Found],
    todo: &[usize],
    threads: usize,
) -> Vec<(usize, Hashed)> {
    // A rebuild whose memo vouches for every file starts no worker.
    if todo.is_empty() {
        return Vec::new();
    }
    let next = AtomicUsize::new(0);
    let mut out = Vec::with_capacity(todo.len());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(todo.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(n) else {
                            return mine;
                        };
                        mine.push((i, hash_one(root, &found[i])));
                    }
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(v) => out.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    out
}

/// Reads one file. The memo key is taken from the open file itself, so it describes the bytes
/// actually hashed; a file replaced since the walk is an error, not a silent mix.
fn hash_one(root: &Path, f: &Found) -> Hashed {
    let path = root.join(&f.entry.path);
    let read_err = |source| ContextError::Read {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() || meta.ino() != f.key.ino || meta.dev() != f.key.dev {
        return Err(ContextError::Changed {
            path,
            expected_ino: f.key.ino,
        });
    }
    let mut hasher = blake3::Hasher::new();
    let bytes = std::io::copy(&mut file, &mut hasher).map_err(read_err)?;
    Ok((
        with_xattrs(hasher.finalize(), &crate::fileop::fd_xattrs(&file)),
        key_of(&meta),
        bytes,
    ))
}

/// A file's digest for the cache: its content's blake3, and, when it has extended attributes
/// (a `setcap` capability, a `user.*` attribute), those too, since COPY copies them. Setting one
/// changes the file's ctime, so the memo (which keys on ctime) reads the file again.
fn with_xattrs(content: blake3::Hash, xattrs: &[(Vec<u8>, Vec<u8>)]) -> blake3::Hash {
    if xattrs.is_empty() {
        return content;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"forge.context.xattrs.v1");
    h.update(content.as_bytes());
    h.update(&(xattrs.len() as u64).to_le_bytes());
    for (name, value) in xattrs {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    }
    h.finalize()
}
