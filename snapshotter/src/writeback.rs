//! A file writer that hands its bytes to the disk while it writes, so that the `fsync` which makes
//! a blob durable waits for the last few MiB instead of the whole file. Without it the kernel
//! starts writing a new file back only when it must (about 30 s later, or under memory pressure),
//! and the sync at the end of a layer or a download pays for all of it on the build's critical
//! path.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// How many bytes are written before their writeback is started.
const STEP: u64 = 8 << 20;

/// A [`File`] whose written bytes are sent to the disk every [`STEP`] (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`: the call starts the writes and returns; it waits for nothing and makes
/// nothing durable by itself).
#[derive(Debug)]
pub struct Writeback {
    file: File,
    written: u64,
    started: u64,
}

impl Writeback {
    /// Wraps `file`, a new file written from its start.
    pub fn new(file: File) -> Writeback {
        Writeback {
            file,
            written: 0,
            started: 0,
        }
    }

    /// The file back (to be synced: this writer only starts the writes).
    pub fn into_inner(self) -> File {
        self.file
    }

    fn start_writeback(&mut self) {
        let len = self.written - self.started;
        // SAFETY: the descriptor is this writer's open file; the call only reads its arguments.
        // A failure (a filesystem without the call) costs only the early start: ignored.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.started as _,
                len as _,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= STEP {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_lands_in_order_across_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let mut w = Writeback::new(File::create(&path).unwrap());
        let chunk: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
        for _ in 0..7 {
            w.write_all(&chunk).unwrap();
        }
        assert_eq!(w.started, 18 << 20, "writeback started at each step passed");
        let f = w.into_inner();
        f.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 21 << 20);
        assert!(back.chunks(chunk.len()).all(|c| c == chunk));
    }
}
