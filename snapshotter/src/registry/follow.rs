//! A layer read while it downloads: the pull writes the blob to its file in the store's ingest
//! directory as it always does, and a [`FollowedBlob`] reads that file behind it, waiting for
//! more when it catches up. Its end comes only once the pull has checked the blob's digest and
//! given it its name, so whatever reads it (an unpack) finishes only on a blob the store took;
//! a download that fails or is retried ends its reader with an error instead.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use oci_spec::image::Digest;

use crate::store::Descriptor;

/// Who reads an image's layers while they download ([`super::RegistryClient::pull_unrecorded`]
/// with a follower). Called from the pulling task; every call must return at once.
pub trait LayerFollower: Send + Sync {
    /// The image's config is in: its `rootfs.diff_ids`, one per layer, base first. Not called
    /// when the config does not read as an image config (the pull then fails).
    fn diff_ids(&self, diff_ids: &[Digest]);
    /// Layer `index` (base first) starts downloading; `blob` reads it as it arrives. A retried
    /// download calls this again with a new reader (the old one then fails).
    fn follow(&self, index: usize, layer: &Descriptor, blob: FollowedBlob);
    /// The pull is over (whether or not it succeeded): nothing more will be called.
    fn pull_done(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Complete,
    Abandoned,
}

#[derive(Debug)]
struct Growth {
    /// Bytes in the file, readable through another descriptor.
    written: u64,
    end: End,
}

#[derive(Debug)]
struct Shared {
    growth: Mutex<Growth>,
    more: Condvar,
}

impl Shared {
    fn set(&self, change: impl FnOnce(&mut Growth)) {
        change(&mut self.growth.lock().unwrap_or_else(|e| e.into_inner()));
        self.more.notify_all();
    }
}

/// The download's side: says how far the file is written, and how it ended. Dropped without
/// [`Growing::complete`], the reader fails.
#[derive(Debug)]
pub(crate) struct Growing(Arc<Shared>);

/// A cheap handle to tell a reader that more of the file is written (for the writing thread).
#[derive(Debug, Clone)]
pub(crate) struct Advance(Arc<Shared>);

impl Advance {
    pub(crate) fn to(&self, written: u64) {
        self.0.set(|g| g.written = written);
    }
}

impl Growing {
    pub(crate) fn advance(&self) -> Advance {
        Advance(self.0.clone())
    }

    /// The blob is whole, checked and named: the reader may end.
    pub(crate) fn complete(self, size: u64) {
        self.0.set(|g| {
            g.written = size;
            g.end = End::Complete;
        });
    }
}

impl Drop for Growing {
    fn drop(&mut self) {
        self.0.set(|g| {
            if g.end == End::Open {
                g.end = End::Abandoned;
            }
        });
    }
}

/// Reads a blob's file while it is written (see the module).
#[derive(Debug)]
pub struct FollowedBlob {
    file: File,
    shared: Arc<Shared>,
    offset: u64,
}

/// A reader of `path`, which the download is about to write, and the download's side of it.
pub(crate) fn follow(path: &Path) -> io::Result<(Growing, FollowedBlob)> {
    let shared = Arc::new(Shared {
        growth: Mutex::new(Growth {
            written: 0,
            end: End::Open,
        }),
        more: Condvar::new(),
    });
    let file = File::open(path)?;
    Ok((
        Growing(shared.clone()),
        FollowedBlob {
            file,
            shared,
            offset: 0,
        },
    ))
}

impl Read for FollowedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = {
            let mut g = self.shared.growth.lock().unwrap_or_else(|e| e.into_inner());
            loop {
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
                    End::Open => g = self.shared.more.wait(g).unwrap_or_else(|e| e.into_inner()),
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
        let (growing, mut blob) = follow(&path).unwrap();
        let advance = growing.advance();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            blob.read_to_end(&mut all).map(|_| all)
        });
        for part in [&b"hello "[..], b"growing ", b"file"] {
            w.write_all(part).unwrap();
            advance.to(w.metadata().unwrap().len());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // All bytes are in, but the reader waits for the word that the blob was taken.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "ended before the download did");
        growing.complete(18);
        assert_eq!(reader.join().unwrap().unwrap(), b"hello growing file");
    }

    #[test]
    fn a_download_that_stops_fails_its_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut w = File::create(&path).unwrap();
        let (growing, mut blob) = follow(&path).unwrap();
        w.write_all(b"part").unwrap();
        growing.advance().to(4);
        let mut first = [0u8; 4];
        blob.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"part");
        drop(growing);
        let err = blob.read(&mut first).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
