//! The overlay walk's directories listed and their entries inspected ahead of the walk, on worker
//! threads, a whole directory per worker at a time. An upper dir of many small files (a package
//! install) costs the walk a handful of system calls a file (open, stat, xattr list, read, close)
//! and little else; one thread doing them all leaves the other cores idle while the layer's
//! compressor waits for bytes. Workers take directories in the order the walk will need them
//! (depth first, in the byte order of the full paths), read the small files whole, and the walk
//! writes the tar from what they found, in its own order: the layer's bytes are those of a walk
//! on one thread.
//!
//! Bounded: at most [`WINDOW`] directories are listed and not yet written, holding at most
//! [`HELD_MAX`] bytes of file contents together (files up to [`SMALL_FILE`], [`DIR_BUDGET`] a
//! directory); anything larger is read by the walk itself while it writes, as before. The window
//! is wide so that the workers get far ahead while the walk streams a large file into the
//! compressor. The walk never waits for a worker that has not started the directory it needs: it
//! lists that one itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::FileType;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{DiffError, Node, Opened, child, node, open_file, sort_key, sorted_entries};
use crate::layer::EntryKind;

/// Directories listed ahead of the walk and not yet taken by it.
const WINDOW: usize = 256;
/// Bytes of file contents the listings not yet taken may hold together: no new directory is
/// started past it.
const HELD_MAX: u64 = 8 << 20;
/// Bytes of file contents one directory's listing may hold.
const DIR_BUDGET: u64 = 512 * 1024;
/// The largest file read ahead of the walk.
const SMALL_FILE: u64 = 64 * 1024;
/// The most worker threads, whatever the core count: past a few, the walk itself is the limit.
const MAX_WORKERS: usize = 4;

/// Where a directory comes in the walk: the sort keys of its path's components, so that the
/// order of keys is the walk's (a directory before its children, its children in their order).
pub(super) type DirKey = Vec<Vec<u8>>;

/// The key of `name`, a directory in the directory `parent`.
pub(super) fn child_key(parent: &DirKey, name: &[u8]) -> DirKey {
    let mut key = parent.clone();
    key.push(sort_key(name, true));
    key
}

/// What a worker found of one entry, for the walk to write.
pub(super) enum Pre {
    /// A regular file opened, stated, and read whole through one descriptor.
    Read(Node, Vec<u8>),
    /// A regular file too large to hold here: the walk opens and reads it as it writes it.
    Stream,
    /// Anything else, or a file that did not open as one: its node by path ([`node`]).
    Node(Option<Node>),
    /// What inspecting the entry failed with; the walk returns it when it comes to the entry.
    Failed(DiffError),
}

/// One entry of a listed directory, in the walk's order.
pub(super) struct Entry {
    pub name: Vec<u8>,
    pub file_type: FileType,
    pub pre: Pre,
}

type Listing = Vec<Entry>;

/// A directory's listing, or what listing it failed with, or a worker's panic.
enum Outcome {
    Listed(Result<Listing, DiffError>),
    Panicked(Box<dyn std::any::Any + Send>),
}

#[derive(Default)]
struct State {
    /// Directories whose listing is wanted and not started.
    pending: BTreeMap<DirKey, PathBuf>,
    /// Listings made and not taken.
    done: BTreeMap<DirKey, Outcome>,
    /// Directories being listed by workers.
    working: BTreeSet<DirKey>,
    /// The file contents in `done`, in bytes.
    held: u64,
    /// The walk is over (or failed): workers stop.
    closed: bool,
}

/// The workers' shared state; [`Ahead::take`] hands the walk each directory's listing.
pub(super) struct Ahead {
    state: Mutex<State>,
    changed: Condvar,
}

impl Ahead {
    /// How many workers to start now: one a core (at most [`MAX_WORKERS`]) while a directory is
    /// wanted, none when none is (the walk has all it will take).
    pub fn workers_wanted(&self) -> usize {
        if self.lock().pending.is_empty() {
            return 0;
        }
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS)
    }

    /// Wants `root` (the key `[]`) listed first.
    pub fn new(root: &Path) -> Self {
        let mut state = State::default();
        state.pending.insert(Vec::new(), root.to_path_buf());
        Ahead {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker: lists the earliest wanted directory while the window has room, until closed.
    pub fn work(&self) {
        let mut state = self.lock();
        loop {
            if state.closed {
                return;
            }
            if state.done.len() + state.working.len() < WINDOW
                && state.held < HELD_MAX
                && let Some((key, path)) = state.pending.pop_first()
            {
                state.working.insert(key.clone());
                drop(state);
                let outcome =
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| list(&path))) {
                        Ok(listed) => Outcome::Listed(listed),
                        Err(panic) => Outcome::Panicked(panic),
                    };
                state = self.lock();
                state.working.remove(&key);
                if let Outcome::Listed(Ok(listing)) = &outcome {
                    want_children(&mut state, &key, &path, listing);
                }
                state.held += held(&outcome);
                state.done.insert(key, outcome);
                self.changed.notify_all();
                continue;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The listing of the directory `key` (at `path`), which the walk needs now: a worker's, or
    /// made here when no worker has started it (nor will: one not wanted yet is listed here too).
    pub fn take(&self, key: &DirKey, path: &Path) -> Result<Listing, DiffError> {
        let mut state = self.lock();
        loop {
            if let Some(outcome) = state.done.remove(key) {
                state.held -= held(&outcome);
                self.changed.notify_all();
                return match outcome {
                    Outcome::Listed(listed) => listed,
                    Outcome::Panicked(panic) => std::panic::resume_unwind(panic),
                };
            }
            if !state.working.contains(key) {
                state.pending.remove(key);
                drop(state);
                let listed = list(path);
                if let Ok(listing) = &listed {
                    want_children(&mut self.lock(), key, path, listing);
                    self.changed.notify_all();
                }
                return listed;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the workers when dropped (the walk is over, or failed).
    pub fn stop_on_drop(&self) -> impl Drop + '_ {
        struct Stop<'a>(&'a Ahead);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.lock().closed = true;
                self.0.changed.notify_all();
            }
        }
        Stop(self)
    }
}

/// Wants the subdirectories the walk will enter of `listing`, just made of `key` at `path`.
fn want_children(state: &mut State, key: &DirKey, path: &Path, listing: &Listing) {
    for entry in listing {
        if enters(entry) {
            state
                .pending
                .insert(child_key(key, &entry.name), child(path, &entry.name));
        }
    }
}

/// The file contents a listing holds, in bytes.
fn held(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Listed(Ok(listing)) => listing
            .iter()
            .map(|e| match &e.pre {
                Pre::Read(_, bytes) => bytes.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Whether the walk enters `entry` as a directory: the test `Differ::overlay_entries` makes,
/// so that every directory a worker lists is one the walk takes.
pub(super) fn enters(entry: &Entry) -> bool {
    entry.file_type.is_dir() && matches!(&entry.pre, Pre::Node(Some(n)) if !is_whiteout(n))
}

/// An overlayfs whiteout: a 0/0 character device.
pub(super) fn is_whiteout(n: &Node) -> bool {
    n.kind == (EntryKind::CharDevice { major: 0, minor: 0 })
}

/// `dir`'s entries in the walk's order, each inspected as the walk would, small files read.
fn list(dir: &Path) -> Result<Listing, DiffError> {
    let entries = sorted_entries(dir)?;
    let mut held = None;
    let mut budget = DIR_BUDGET;
    Ok(entries
        .into_iter()
        .map(|(name, file_type)| {
            let path = child(dir, &name);
            let pre = if file_type.is_file() {
                inspect_file(dir, &mut held, &name, &path, &mut budget)
            } else {
                by_path(&path)
            };
            Entry {
                name,
                file_type,
                pre,
            }
        })
        .collect())
}

fn by_path(path: &Path) -> Pre {
    match node(path) {
        Ok(n) => Pre::Node(n),
        Err(e) => Pre::Failed(e),
    }
}

/// A regular file as the walk inspects one ([`open_file`]), read whole when it is small enough
/// for the directory's budget.
fn inspect_file(
    dir: &Path,
    held: &mut Option<std::os::fd::OwnedFd>,
    name: &[u8],
    path: &Path,
    budget: &mut u64,
) -> Pre {
    let (file, n) = match open_file(dir, held, name, path) {
        Err(e) => return Pre::Failed(e),
        Ok(Opened::Other(n)) => return Pre::Node(n),
        Ok(Opened::File(file, n)) => (file, n),
    };
    let size = n.meta.size;
    if size > SMALL_FILE || size > *budget {
        return Pre::Stream;
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // A read error is the walk's to meet, reading the file itself.
    match (&file).take(size).read_to_end(&mut bytes) {
        Ok(_) => {
            *budget -= size;
            Pre::Read(n, bytes)
        }
        Err(_) => Pre::Stream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(ahead: &Ahead) -> bool {
        let state = ahead.lock();
        state.working.is_empty() && (state.pending.is_empty() || state.held >= HELD_MAX)
    }

    #[test]
    fn the_workers_hold_no_more_than_the_bound_ahead_of_a_walk_that_lags() {
        let tmp = tempfile::tempdir().unwrap();
        // 300 directories of one 60 KiB file each: 18 MiB of files small enough to read ahead.
        for i in 0..300 {
            let dir = tmp.path().join(format!("d{i:03}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("f"), vec![i as u8; 60 << 10]).unwrap();
        }
        let ahead = Ahead::new(tmp.path());
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| ahead.work());
            }
            let _stop = ahead.stop_on_drop();
            let root = ahead.take(&Vec::new(), tmp.path()).unwrap();
            assert_eq!(root.len(), 300);
            // The walk lags: the workers go as far as the bound lets them.
            while !settled(&ahead) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            {
                let state = ahead.lock();
                assert!(state.held >= HELD_MAX, "went ahead: {} bytes", state.held);
                assert!(
                    state.held <= HELD_MAX + 2 * DIR_BUDGET,
                    "held {} bytes",
                    state.held
                );
                assert!(!state.pending.is_empty(), "stopped at the bound");
            }
            // Then the walk takes every directory in its order, the file read with it.
            for (i, entry) in root.iter().enumerate() {
                let key = child_key(&Vec::new(), &entry.name);
                let listing = ahead.take(&key, &child(tmp.path(), &entry.name)).unwrap();
                assert_eq!(listing.len(), 1);
                match &listing[0].pre {
                    Pre::Read(_, bytes) => assert_eq!(bytes, &vec![i as u8; 60 << 10]),
                    _ => panic!("d{i:03}/f was not read ahead"),
                }
            }
            assert_eq!(ahead.lock().held, 0);
        });
    }

    #[test]
    fn a_directory_no_worker_started_is_listed_by_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/b/big"), vec![1u8; 100 << 10]).unwrap();
        // No workers at all: every listing is the walk's own, and nothing waits.
        let ahead = Ahead::new(tmp.path());
        let root = ahead.take(&Vec::new(), tmp.path()).unwrap();
        assert!(enters(&root[0]));
        let a = child_key(&Vec::new(), b"a");
        ahead.take(&a, &tmp.path().join("a")).unwrap();
        let b = child_key(&a, b"b");
        let listing = ahead.take(&b, &tmp.path().join("a/b")).unwrap();
        assert!(
            matches!(listing[0].pre, Pre::Stream),
            "a file over 64 KiB is the walk's to read"
        );
    }
}
