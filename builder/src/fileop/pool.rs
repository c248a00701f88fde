//! Regular files of a directory COPY created on worker threads while the walk goes on. A large
//! COPY spends most of its time in the per-file calls (create, copy, owner, mode, xattrs, times),
//! all in the kernel, where a second core helps. The walk hands over only files whose path is new
//! (inside a directory this copy made), so no two writers ever meet at one path; files with other
//! links stay on the walk's thread, so a later link always finds its first copy in place. A
//! directory's times are set once every file is in, since creating a file moves them.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use super::meta;
use super::{FileOpError, Ids};

/// One file to copy, with its final owner and mode.
pub(super) struct FileJob {
    pub src: PathBuf,
    pub target: PathBuf,
    pub md: std::fs::Metadata,
    pub ids: Ids,
    pub mode: u32,
}

/// Files handed to a worker at once: a hand-over wakes a parked worker (a futex call on each
/// side), which per file cost about as much as a small file's copy.
const BATCH: usize = 32;

/// Batches queued to the workers at most (a job holds two paths and a stat).
const QUEUE: usize = 8;

/// The workers of one directory copy.
pub(super) struct FilePool<'scope> {
    tx: Option<SyncSender<Vec<FileJob>>>,
    /// Jobs not handed over yet (at most `BATCH`).
    batch: Vec<FileJob>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
    failed: Arc<Mutex<Option<FileOpError>>>,
}

/// How many workers a copy gets: one per core, at most three (the walk itself mostly waits on
/// them or makes directories); the caller starts none on one core, where the walk copies alone.
/// Asked once per process (the answer reads cgroup files).
pub(crate) fn workers() -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(3)
    })
}

impl<'scope> FilePool<'scope> {
    /// Starts `n` workers in `scope`.
    pub(super) fn start<'env>(scope: &'scope Scope<'scope, 'env>, n: usize) -> FilePool<'scope> {
        let (tx, rx) = sync_channel::<Vec<FileJob>>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(Mutex::new(None));
        let workers = (0..n)
            .map(|_| {
                let rx = Arc::clone(&rx);
                let failed = Arc::clone(&failed);
                scope.spawn(move || work(&rx, &failed))
            })
            .collect();
        FilePool {
            tx: Some(tx),
            batch: Vec::with_capacity(BATCH),
            workers,
            failed,
        }
    }

    /// Queues `job`, handing the batch over when it is full; false when the workers have stopped
    /// on an error (`finish` returns it).
    pub(super) fn submit(&mut self, job: FileJob) -> bool {
        self.batch.push(job);
        self.batch.len() < BATCH || self.hand_over()
    }

    fn hand_over(&mut self) -> bool {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok())
    }

    /// Whether a worker has failed (the walk may stop early; `finish` says why).
    pub(super) fn has_failed(&self) -> bool {
        lock(&self.failed).is_some()
    }

    /// Waits for every queued file; the first failure, if any.
    pub(super) fn finish(mut self) -> Result<(), FileOpError> {
        if !self.batch.is_empty() {
            // A failed send means a worker failed: its error is taken below.
            self.hand_over();
        }
        self.tx = None;
        for w in self.workers.drain(..) {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
        lock(&self.failed).take().map_or(Ok(()), Err)
    }
}

/// The lock's value even when a holder panicked (the panic itself is resumed by `finish`).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn work(rx: &Mutex<Receiver<Vec<FileJob>>>, failed: &Mutex<Option<FileOpError>>) {
    let mut cross_device = false;
    loop {
        let Ok(batch) = lock(rx).recv() else { return };
        for job in batch {
            // After a failure the queue is still taken (the walk must not block on it), not copied.
            if lock(failed).is_some() {
                break;
            }
            if let Err(e) = meta::copy_regular_file(
                &job.src,
                &job.target,
                &job.md,
                job.ids,
                job.mode,
                &mut cross_device,
            ) {
                lock(failed).get_or_insert(e);
            }
        }
    }
}
