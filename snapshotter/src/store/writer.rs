//! A blob on its way into the store: written to a temp file in `ingest/`, hashed and counted as
//! it goes, and named only once both match what was asked for (see the store's crash safety).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Digest, StoreError, io_err};
use crate::lock::FileLock;
use crate::writeback::Writeback;

/// Writes one blob: bytes go to a temp file while their sha256 and count are taken; `commit`
/// checks both against what was asked for before the blob gets its name. Dropping the writer
/// without committing deletes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    pub(super) file: Option<io::BufWriter<Writeback>>,
    pub(super) tmp: PathBuf,
    pub(super) path: PathBuf,
    pub(super) hasher: Sha256,
    pub(super) written: u64,
    pub(super) expected: Digest,
    pub(super) expected_size: Option<u64>,
    pub(super) committed: bool,
    pub(super) _blob_lock: FileLock,
    pub(super) _store_lock: FileLock,
}

impl BlobWriter {
    /// The digest this writer must produce.
    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether the bytes written so far are the whole blob asked for: its size (when it was
    /// given) and its digest.
    pub fn is_whole(&self) -> bool {
        self.verify().is_ok()
    }

    /// The check [`commit`](Self::commit) makes: the size (when it was given), then the digest.
    fn verify(&self) -> Result<(), StoreError> {
        if let Some(size) = self.expected_size
            && size != self.written
        {
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected: size,
                actual: self.written,
            });
        }
        let actual = Digest::from_hasher(self.hasher.clone());
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// The temporary file the bytes go to until [`commit`](Self::commit) names it.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Hands buffered bytes to the file, so that everything [`written`](Self::written) counts
    /// can be read through another descriptor.
    pub fn flush_to_file(&mut self) -> Result<(), StoreError> {
        self.file
            .as_mut()
            .expect("writer used after commit")
            .flush()
            .map_err(io_err("write temp file", &self.tmp))
    }

    /// Appends bytes. Fails as soon as more bytes arrive than the expected size, so a hostile
    /// source cannot fill the disk.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let after = self.written + bytes.len() as u64;
        if let Some(size) = self.expected_size
            && after > size
        {
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected: size,
                actual: after,
            });
        }
        let file = self.file.as_mut().expect("writer used after commit");
        file.write_all(bytes)
            .map_err(io_err("write temp file", &self.tmp))?;
        self.hasher.update(bytes);
        self.written = after;
        Ok(())
    }

    /// Verifies digest and size, makes the bytes durable and gives the blob its name.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.verify()?;
        let file = self
            .file
            .take()
            .expect("writer used after commit")
            .into_inner()
            .map_err(|e| io_err("flush temp file", &self.tmp)(e.into_error()))?
            .into_inner();
        file.sync_all()
            .map_err(io_err("fsync temp file", &self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io_err("rename blob into", &self.path))?;
        // The name becomes durable with the next metadata commit (see the module's crash safety).
        self.committed = true;
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
