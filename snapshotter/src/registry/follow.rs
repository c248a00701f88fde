//! A layer read while it downloads: the pull writes the blob to its file in the store's ingest
//! directory as it always does, and a [`FollowedBlob`] reads that file behind it, waiting for
//! more when it catches up. Its end comes once every byte is in the file and matched the blob's
//! digest as the download ended (the sha256 the store takes of the bytes as they are written),
//! while the store syncs the file and names it, so that a reader (an unpack) finishes beside that
//! sync instead of after it. A download that fails, does not match or is retried ends its reader with
//! an error instead.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use oci_spec::image::Digest;
use tokio::sync::watch;

use super::growing::{End, Growth, Progress};
use crate::store::Descriptor;

/// Who reads an image's layers while they download ([`super::RegistryClient::pull_unrecorded`]
/// with a follower). Called from the pulling task; every call must return at once.
pub trait LayerFollower: Send + Sync {
    /// The image's config arrived and matched its digest (the store may still be syncing it):
    /// its `rootfs.diff_ids`, one per layer, base first. Not called when the config does not read
    /// as an image config (the pull then fails).
    fn diff_ids(&self, diff_ids: &[Digest]);
    /// Layer `index` (base first) starts downloading; `blob` reads it as it arrives (see the
    /// module). A retried download calls this again with a new reader (the old one then fails).
    fn follow(&self, index: usize, layer: &Descriptor, blob: FollowedBlob);
    /// The pull is over (whether or not it succeeded): nothing more will be called.
    fn pull_done(&self);
}

/// Reads a blob's file while it is written (see the module).
#[derive(Debug)]
pub struct FollowedBlob {
    file: File,
    rx: watch::Receiver<Growth>,
    offset: u64,
}

/// A reader of `path`, which the download is about to write, and the download's side of it:
/// [`Progress::advance`] as bytes reach the file, [`Progress::complete`] once they all have and
/// matched the digest; dropped before that, the reader fails.
pub(crate) fn follow(path: &Path) -> io::Result<(Progress, FollowedBlob)> {
    let file = File::open(path)?;
    let (progress, rx) = Progress::channel();
    Ok((
        progress,
        FollowedBlob {
            file,
            rx,
            offset: 0,
        },
    ))
}

impl Read for FollowedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = loop {
            let g = *self.rx.borrow_and_update();
            if g.written > self.offset {
                break g.written - self.offset;
            }
            match g.end {
                End::Complete => return Ok(0),
                End::Abandoned => {
                    return Err(io::Error::other(
                        "the download this layer was read from stopped",
                    ));
                }
                // Read on a blocking thread: waiting here holds no async worker. A writer that
                // goes leaves its last word (`Progress` says `Abandoned` on drop), read above.
                End::Open => {
                    if futures::executor::block_on(self.rx.changed()).is_err()
                        && self.rx.borrow().end == End::Open
                    {
                        return Err(io::Error::other(
                            "the download this layer was read from went",
                        ));
                    }
                }
            }
        };
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer's file is shorter than its download said",
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_reader_follows_the_file_to_its_complete_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut w = File::create(&path).unwrap();
        let (progress, mut blob) = follow(&path).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            blob.read_to_end(&mut all).map(|_| all)
        });
        for part in [&b"hello "[..], b"growing ", b"file"] {
            w.write_all(part).unwrap();
            progress.advance(w.metadata().unwrap().len());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // All bytes are in, but the reader waits for the word that the blob was taken.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "ended before the download did");
        progress.complete(18);
        assert_eq!(reader.join().unwrap().unwrap(), b"hello growing file");
    }

    #[test]
    fn a_download_that_stops_fails_its_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut w = File::create(&path).unwrap();
        let (progress, mut blob) = follow(&path).unwrap();
        w.write_all(b"part").unwrap();
        progress.advance(4);
        let mut first = [0u8; 4];
        blob.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"part");
        drop(progress);
        let err = blob.read(&mut first).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
