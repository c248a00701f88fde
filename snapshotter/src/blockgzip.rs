//! gzip compressed on several cores, in the format pigz writes: the input is cut into
//! [`BLOCK`]-byte blocks, each deflated on its own thread with the 32 KiB of input before it as
//! its dictionary (so matches still reach back across the cut) and ended with a sync flush, and
//! the pieces are joined in order under one gzip header and trailer (the CRC-32s of the blocks
//! combined). The result is one ordinary gzip member that any gzip reader reads.
//!
//! Its bytes are a function of the input, the level and [`BLOCK`] alone: not of the number of
//! threads, nor of how the input was cut into writes. They are not those of a single deflate
//! stream over the same input (`Compression::Gzip`), so a layer written this way has another
//! digest than the same layer written with plain gzip.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Crc, FlushCompress, Status};

/// Input bytes per block (pigz's default).
pub const BLOCK: usize = 128 * 1024;

/// The window deflate can reach back: the dictionary each block is primed with.
const DICT: usize = 32 * 1024;

/// A deflated block: the CRC-32 of its input and its deflate bytes.
type Deflated = io::Result<(Crc, Vec<u8>)>;

/// One block to deflate.
struct Job {
    input: Arc<Vec<u8>>,
    /// The block before it, whose last [`DICT`] bytes prime this one.
    previous: Option<Arc<Vec<u8>>>,
    last: bool,
    done: SyncSender<Deflated>,
}

/// A writer of gzip whose deflating runs on `threads` worker threads; the sink is written on the
/// caller's thread, in order. [`BlockGzip::finish`] writes the trailer and returns the sink.
pub struct BlockGzip<W: Write> {
    inner: W,
    buf: Vec<u8>,
    previous: Option<Arc<Vec<u8>>>,
    /// Results in the order of their blocks.
    pending: VecDeque<Receiver<Deflated>>,
    in_flight: usize,
    crc: Crc,
    pool: Pool,
}

/// The workers and the channel that feeds them; dropping it closes the channel and joins them.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<W: Write> BlockGzip<W> {
    /// Writes the gzip header to `inner` and starts `threads` workers (at least one) deflating at
    /// `level` (0..=9).
    pub fn new(mut inner: W, level: u32, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        // mtime 0, no name, OS "unknown": the header flate2's encoder writes, so both gzip
        // writers' headers match.
        let xfl = match level {
            9.. => 2,
            0..=1 => 4,
            _ => 0,
        };
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff])?;
        let (jobs, rx) = sync_channel::<Job>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name("forge-gzip".into())
                    .spawn(move || work(&rx, level))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlockGzip {
            inner,
            buf: Vec::with_capacity(BLOCK),
            previous: None,
            pending: VecDeque::new(),
            in_flight: threads * 2,
            crc: Crc::new(),
            pool: Pool {
                jobs: Some(jobs),
                workers,
            },
        })
    }

    /// Hands the filled block (or, with `last`, whatever is left, even nothing) to the workers,
    /// writing finished blocks while too many are in flight.
    fn send(&mut self, last: bool) -> io::Result<()> {
        let input = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK)));
        let (done, result) = sync_channel(1);
        let job = Job {
            input: input.clone(),
            previous: self.previous.take(),
            last,
            done,
        };
        self.pool
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the gzip writer is finished"))?
            .send(job)
            .map_err(|_| io::Error::other("the gzip workers stopped"))?;
        self.previous = Some(input);
        self.pending.push_back(result);
        while self.pending.len() > self.in_flight {
            self.write_next()?;
        }
        Ok(())
    }

    /// Waits for the oldest block and writes it.
    fn write_next(&mut self) -> io::Result<()> {
        let Some(next) = self.pending.pop_front() else {
            return Ok(());
        };
        let (crc, bytes) = next
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))??;
        self.crc.combine(&crc);
        self.inner.write_all(&bytes)
    }

    /// Deflates the rest, writes the trailer (CRC-32 and length of the input) and returns the
    /// sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.send(true)?;
        while !self.pending.is_empty() {
            self.write_next()?;
        }
        let (crc, len) = (self.crc.sum(), self.crc.amount());
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&len.to_le_bytes())?;
        let BlockGzip { inner, pool, .. } = self;
        drop(pool);
        Ok(inner)
    }
}

impl<W: Write> Write for BlockGzip<W> {
    /// Takes all of `buf`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let take = rest.len().min(BLOCK - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == BLOCK {
                self.send(false)?;
            }
        }
        Ok(buf.len())
    }

    /// Writes nothing: a block is deflated only when it is whole (flushing a part would change
    /// the bytes).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A worker: deflates the blocks it takes until the channel closes.
fn work(jobs: &Mutex<Receiver<Job>>, level: u32) {
    let mut deflate = Compress::new(flate2::Compression::new(level), false);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = deflate_block(&mut deflate, &job);
        // The writer may be gone (dropped after an error): nothing to report to.
        let _ = job.done.send(result);
    }
}

fn deflate_block(deflate: &mut Compress, job: &Job) -> Deflated {
    deflate.reset();
    if let Some(previous) = &job.previous {
        let dict = &previous[previous.len().saturating_sub(DICT)..];
        deflate.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let input = job.input.as_slice();
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Deflate's worst case is a little over the input; grown if ever short.
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 64);
    let mut consumed = 0;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let (before_in, before_out) = (deflate.total_in(), deflate.total_out());
        let status = deflate
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        consumed += (deflate.total_in() - before_in) as usize;
        let room_left = out.capacity() > out.len();
        let moved = deflate.total_in() != before_in || deflate.total_out() != before_out;
        if !moved
            && room_left
            && status != Status::StreamEnd
            && (job.last || consumed < input.len())
        {
            return Err(io::Error::other("deflate made no progress"));
        }
        match status {
            Status::StreamEnd => break,
            // A sync flush is complete once all input is in and the output had room to spare.
            Status::Ok | Status::BufError if !job.last && consumed == input.len() && room_left => {
                break;
            }
            Status::Ok | Status::BufError => {}
        }
    }
    let mut crc = Crc::new();
    crc.update(input);
    Ok((crc, out))
}
