//! Deterministic OCI layer writing: tar headers we lay out ourselves (ustar, PAX only when a field
//! does not fit), compressed while written, with the blob digest and the tar diff_id computed in the
//! same streaming pass. The diff walkers feed it entries in order; it never holds a file's content.

use std::io::{self, Read, Write};

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

use crate::compress::{CompressError, Compression, Encoder, HashingWriter, sha256_digest};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error("writing layer entry {path:?}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer entry {path:?} changed while being written: header said {expected} bytes, read {actual}"
    )]
    SizeChanged {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("finishing the layer stream")]
    Finish(#[source] io::Error),
    /// A layer being re-stamped ([`crate::restamp`]) that is not a tar as forge writes them.
    #[error("layer tar at byte {offset}: {reason}")]
    Tar { offset: u64, reason: String },
    #[error("reading the layer tar at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// Options of a layer being written.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    /// When set, every mtime later than this (seconds since the epoch) is clamped to it, as
    /// reproducible-builds' SOURCE_DATE_EPOCH asks. The library never reads the environment itself.
    pub source_date_epoch: Option<i64>,
}

/// What a finished layer is: what a manifest and an image config need to reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub media_type: String,
    /// sha256 of the compressed blob, as written to the sink.
    pub digest: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// sha256 of the uncompressed tar (the image config's rootfs.diff_ids entry).
    pub diff_id: Digest,
    /// Size of the uncompressed tar in bytes.
    pub tar_size: u64,
}

/// The type of one layer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same layer (a path relative to the root).
    Hardlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// Metadata of one layer entry. Only what the image needs: no atime, no ctime, numeric owners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch; nanoseconds are dropped so that tars stay ustar-sized.
    pub mtime: i64,
    /// Content length; only regular files have content.
    pub size: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) const BLOCK: usize = 512;
const USTAR_ID_MAX: u64 = 0o7777777;
/// The largest number an 11-digit ustar field holds (sizes, mtimes).
pub(crate) const USTAR_SIZE_MAX: u64 = 0o77777777777;

/// Where a [`LayerWriter`]'s tar stream goes: something that hashes it (the diff_id), compresses
/// it and hashes the result (the digest) on its way to a sink.
pub trait LayerStream: Write {
    /// What is handed back at the end.
    type Sink;
    /// Uncompressed bytes taken so far.
    fn tar_bytes(&self) -> u64;
    /// Ends the stream (the tar's end blocks are already written).
    fn finish_stream(self) -> Result<(LayerDescriptor, Self::Sink), LayerError>;
    /// Takes up to `n` bytes of `from` (fewer only where it ends) and says how many it took.
    fn take_from(&mut self, from: &mut dyn Read, n: u64) -> io::Result<u64>
    where
        Self: Sized,
    {
        io::copy(&mut from.take(n), self)
    }
}

/// tar -> sha256 (diff_id) -> compressor -> sha256 (digest) -> sink, on the writer's thread.
pub struct Inline<W: Write> {
    out: HashingWriter<Blob<W>>,
}

/// compressor -> sha256 (digest) -> sink: the blob half of a layer stream.
type Blob<W> = Encoder<BlobEnd<W>>;

/// The blob end of a layer stream: counts the bytes, and hashes them unless the blob is the tar
/// itself (no compression), whose digest is the diff_id already being hashed.
struct BlobEnd<W> {
    inner: W,
    hasher: Option<sha2::Sha256>,
    count: u64,
    compression: Compression,
}

impl<W: Write> Write for BlobEnd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Blob`] whose compressor has written its last bytes.
struct BlobDone<W> {
    sink: W,
    /// The blob's sha256; `None` when the blob is the tar (its digest is the diff_id).
    digest: Option<Digest>,
    size: u64,
    compression: Compression,
}

fn start_blob<W: Write>(sink: W, compression: Compression) -> Result<Blob<W>, LayerError> {
    let end = BlobEnd {
        inner: sink,
        hasher: (compression != Compression::None).then(sha2::Sha256::new),
        count: 0,
        compression,
    };
    Ok(Encoder::new(end, compression)?)
}

fn finish_blob<W: Write>(blob: Blob<W>) -> Result<BlobDone<W>, LayerError> {
    let BlobEnd {
        mut inner,
        hasher,
        count,
        compression,
    } = blob.finish().map_err(LayerError::Finish)?;
    inner.flush().map_err(LayerError::Finish)?;
    Ok(BlobDone {
        sink: inner,
        digest: hasher.map(|h| sha256_digest(h.finalize().as_slice())),
        size: count,
        compression,
    })
}

impl<W: Write> BlobDone<W> {
    fn describe(self, diff_id: Digest, tar_size: u64) -> (LayerDescriptor, W) {
        (
            LayerDescriptor {
                media_type: self.compression.media_type().to_string(),
                digest: self.digest.unwrap_or_else(|| diff_id.clone()),
                size: self.size,
                diff_id,
                tar_size,
            },
            self.sink,
        )
    }
}

impl<W: Write> Inline<W> {
    pub fn new(sink: W, compression: Compression) -> Result<Self, LayerError> {
        Ok(Inline {
            out: HashingWriter::new(start_blob(sink, compression)?),
        })
    }
}

impl<W: Write> Write for Inline<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> LayerStream for Inline<W> {
    type Sink = W;

    fn tar_bytes(&self) -> u64 {
        self.out.count()
    }

    fn finish_stream(self) -> Result<(LayerDescriptor, W), LayerError> {
        let (blob, diff_id, tar_size) = self.out.finish();
        Ok(finish_blob(blob)?.describe(diff_id, tar_size))
    }
}

/// Bytes of tar handed to the [`Piped`] workers at a time.
const PIPE_CHUNK: usize = 256 * 1024;
/// Chunks in flight between the walk and each worker: at most this many (plus one being filled
/// and one being hashed or compressed) are in memory.
const PIPE_DEPTH: usize = 4;

/// The stream of [`Inline`] spread over threads: the tar is handed over in chunks to one worker
/// that hashes it (the diff_id) and one that compresses it and hashes the blob, so that the walk
/// that makes it (stat, open, read), the tar's hash and the compression each have a core when
/// there are cores. The bytes are those one thread writes ([`Inline`]): the encoder cuts its input
/// into chunks of its own, so how the tar reaches it does not show in the blob.
pub struct Piped<'scope, W: Write + Send + 'scope> {
    buf: Vec<u8>,
    /// To the tar's hasher and to the blob's worker.
    tx: Option<[std::sync::mpsc::SyncSender<std::sync::Arc<Vec<u8>>>; 2]>,
    count: u64,
    hasher: std::thread::ScopedJoinHandle<'scope, Digest>,
    worker: std::thread::ScopedJoinHandle<'scope, Result<BlobDone<W>, LayerError>>,
}

impl<'scope, W: Write + Send + 'scope> Piped<'scope, W> {
    /// Starts the workers in `scope`.
    pub fn spawn<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        sink: W,
        compression: Compression,
    ) -> Result<Self, LayerError> {
        use std::sync::{Arc, mpsc::sync_channel};
        let mut blob = start_blob(sink, compression)?;
        let (hash_tx, hash_rx) = sync_channel::<Arc<Vec<u8>>>(PIPE_DEPTH);
        let (blob_tx, blob_rx) = sync_channel::<Arc<Vec<u8>>>(PIPE_DEPTH);
        let hasher = scope.spawn(move || {
            let mut h = Sha256::new();
            for chunk in hash_rx {
                h.update(chunk.as_slice());
            }
            sha256_digest(h.finalize().as_slice())
        });
        let worker = scope.spawn(move || {
            for chunk in blob_rx {
                blob.write_all(&chunk).map_err(LayerError::Finish)?;
            }
            finish_blob(blob)
        });
        Ok(Piped {
            buf: Vec::with_capacity(PIPE_CHUNK),
            tx: Some([hash_tx, blob_tx]),
            count: 0,
            hasher,
            worker,
        })
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::sync::Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(PIPE_CHUNK),
        ));
        let sent = self.tx.as_ref().map(|to| {
            to.iter()
                .try_for_each(|tx| tx.send(std::sync::Arc::clone(&chunk)))
        });
        match sent {
            Some(Ok(())) => Ok(()),
            // The blob's worker ended early: its own error is what `abort` returns.
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the layer's compressor stopped",
            )),
        }
    }

    /// Stops the workers after a failed walk; the blob worker's own error, when it failed first (a
    /// full disk is found by the sink, and the walk then only sees the pipe close).
    pub fn abort(self) -> Option<LayerError> {
        self.join().err()
    }

    /// Closes the pipes (what is not sent yet stays unsent) and waits for the workers' results.
    fn join(mut self) -> Result<(LayerDescriptor, W), LayerError> {
        self.tx = None;
        let diff_id = match self.hasher.join() {
            Ok(d) => d,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match self.worker.join() {
            Ok(done) => Ok(done?.describe(diff_id, self.count)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<'scope, W: Write + Send + 'scope> Write for Piped<'scope, W> {
    /// Takes all of `buf`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.buf.extend_from_slice(buf);
        self.count += buf.len() as u64;
        if self.buf.len() >= PIPE_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'scope, W: Write + Send + 'scope> LayerStream for Piped<'scope, W> {
    type Sink = W;

    fn tar_bytes(&self) -> u64 {
        self.count
    }

    /// Reads straight into the chunk being filled, a chunk's room at a time: no copy buffer
    /// between the file and the chunk.
    fn take_from(&mut self, from: &mut dyn Read, n: u64) -> io::Result<u64> {
        let mut taken = 0;
        while taken < n {
            let room = PIPE_CHUNK.saturating_sub(self.buf.len()).max(1);
            let want = (n - taken).min(room as u64);
            // Into the chunk's spare capacity, which is not zeroed first.
            let got = from.take(want).read_to_end(&mut self.buf)? as u64;
            taken += got;
            self.count += got;
            if self.buf.len() >= PIPE_CHUNK {
                self.send()?;
            }
            if got < want {
                break;
            }
        }
        Ok(taken)
    }

    fn finish_stream(mut self) -> Result<(LayerDescriptor, W), LayerError> {
        let sent = self.send();
        let result = self.join();
        match (sent, result) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(LayerError::Finish(e)),
            (Ok(()), Ok(done)) => Ok(done),
        }
    }
}

/// Writes one layer as a tar into a [`LayerStream`] (by default [`Inline`]: tar -> sha256
/// (diff_id) -> compressor -> sha256 (digest) -> sink).
pub struct LayerWriter<S: LayerStream> {
    out: S,
    options: LayerOptions,
}

impl<W: Write> LayerWriter<Inline<W>> {
    pub fn new(sink: W, options: LayerOptions) -> Result<Self, LayerError> {
        Ok(LayerWriter {
            out: Inline::new(sink, options.compression)?,
            options,
        })
    }
}

impl<S: LayerStream> LayerWriter<S> {
    /// A writer into `out` (which compresses as it was made to; `options.compression` is not read
    /// again).
    pub fn with_stream(out: S, options: LayerOptions) -> Self {
        LayerWriter { out, options }
    }

    /// The stream, unfinished (after a failure).
    pub fn into_stream(self) -> S {
        self.out
    }

    /// Uncompressed bytes written so far.
    pub fn tar_bytes(&self) -> u64 {
        self.out.tar_bytes()
    }

    /// Append one entry. `path` is relative to the layer root without a leading `/` or `./`;
    /// `data` must yield exactly `meta.size` bytes for a regular file and is ignored otherwise.
    pub fn append(
        &mut self,
        path: &[u8],
        kind: &EntryKind,
        meta: &EntryMeta,
        data: Option<&mut dyn Read>,
    ) -> Result<(), LayerError> {
        let lossy = || String::from_utf8_lossy(path).into_owned();
        let werr = |source| LayerError::Write {
            path: lossy(),
            source,
        };
        let mut name = path.to_vec();
        if *kind == EntryKind::Dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let size = if *kind == EntryKind::File {
            meta.size
        } else {
            0
        };
        let mtime = written_mtime(meta.mtime, self.options.source_date_epoch);
        let before_1970 = clamped_mtime(meta.mtime, self.options.source_date_epoch).min(0);

        let mut header = [0u8; BLOCK];
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if !set_name(&mut header, &name) {
            pax.push((b"path".to_vec(), name.clone()));
            let short = &name[..name.len().min(100)];
            header[..short.len()].copy_from_slice(short);
        }
        octal(&mut header[100..108], u64::from(meta.mode & 0o7777));
        for (field, value, key) in [(108..116, meta.uid, "uid"), (116..124, meta.gid, "gid")] {
            if value > USTAR_ID_MAX {
                pax.push((key.as_bytes().to_vec(), value.to_string().into_bytes()));
                octal(&mut header[field], 0);
            } else {
                octal(&mut header[field], value);
            }
        }
        if size > USTAR_SIZE_MAX {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
            octal(&mut header[124..136], 0);
        } else {
            octal(&mut header[124..136], size);
        }
        octal(&mut header[136..148], mtime);
        if before_1970 < 0 {
            // The header's octal field holds no sign: a time before 1970 goes in a PAX record,
            // as Go's archive/tar (so BuildKit) writes it, the field left at 0.
            pax.push((b"mtime".to_vec(), before_1970.to_string().into_bytes()));
        }
        let (typeflag, link): (u8, Option<&[u8]>) = match kind {
            EntryKind::File => (b'0', None),
            EntryKind::Hardlink(target) => (b'1', Some(target)),
            EntryKind::Symlink(target) => (b'2', Some(target)),
            EntryKind::CharDevice { .. } => (b'3', None),
            EntryKind::BlockDevice { .. } => (b'4', None),
            EntryKind::Dir => (b'5', None),
            EntryKind::Fifo => (b'6', None),
        };
        header[156] = typeflag;
        if let Some(target) = link {
            if target.len() <= 100 {
                header[157..157 + target.len()].copy_from_slice(target);
            } else {
                pax.push((b"linkpath".to_vec(), target.to_vec()));
                header[157..257].copy_from_slice(&target[..100]);
            }
        }
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // uname (265..297) and gname (297..329) stay empty: numeric owners only.
        if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } =
            kind
        {
            octal(&mut header[329..337], u64::from(*major));
            octal(&mut header[337..345], u64::from(*minor));
        }
        let mut xattrs = meta.xattrs.clone();
        xattrs.sort();
        for (key, value) in xattrs {
            let mut k = b"SCHILY.xattr.".to_vec();
            k.extend_from_slice(&key);
            pax.push((k, value));
        }
        set_checksum(&mut header);

        if !pax.is_empty() {
            self.write_pax(&name, mtime, &pax).map_err(werr)?;
        }
        self.out.write_all(&header).map_err(werr)?;
        if size > 0 {
            let Some(data) = data else {
                return Err(LayerError::SizeChanged {
                    path: lossy(),
                    expected: size,
                    actual: 0,
                });
            };
            let copied = self.out.take_from(data, size).map_err(werr)?;
            if copied != size {
                return Err(LayerError::SizeChanged {
                    path: lossy(),
                    expected: size,
                    actual: copied,
                });
            }
            self.pad(size).map_err(werr)?;
        }
        Ok(())
    }

    /// Append a whiteout `.wh.<name>` for `path` (a deletion of a lower layer's entry).
    pub fn append_whiteout(&mut self, path: &[u8]) -> Result<(), LayerError> {
        let (dir, name) = split_parent(path);
        let mut p = dir.to_vec();
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name);
        self.append(&p, &EntryKind::File, &whiteout_meta(), None)
    }

    /// Append the opaque marker `.wh..wh..opq` inside directory `dir` (relative, no trailing `/`).
    pub fn append_opaque(&mut self, dir: &[u8]) -> Result<(), LayerError> {
        let mut p = dir.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        self.append(&p, &EntryKind::File, &whiteout_meta(), None)
    }

    fn write_pax(
        &mut self,
        name: &[u8],
        mtime: u64,
        records: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let mut body = Vec::new();
        for (key, value) in records {
            // A record's length prefix counts itself, so find the fixed point.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(len.to_string().as_bytes());
            body.push(b' ');
            body.extend_from_slice(key);
            body.push(b'=');
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let mut header = [0u8; BLOCK];
        let trimmed = name.strip_suffix(b"/").unwrap_or(name);
        let base = split_parent(trimmed).1;
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend_from_slice(&base[..base.len().min(100 - pax_name.len())]);
        header[..pax_name.len()].copy_from_slice(&pax_name);
        octal(&mut header[100..108], 0o644);
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], body.len() as u64);
        octal(&mut header[136..148], mtime);
        header[156] = b'x';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        set_checksum(&mut header);
        self.out.write_all(&header)?;
        self.out.write_all(&body)?;
        self.pad(body.len() as u64)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Write the end-of-archive blocks and the codec trailer; returns the descriptor and the sink.
    pub fn finish(mut self) -> Result<(LayerDescriptor, S::Sink), LayerError> {
        self.out
            .write_all(&[0u8; 2 * BLOCK])
            .map_err(LayerError::Finish)?;
        self.out.finish_stream()
    }
}

/// The mtime a header gets for a file whose mtime is `mtime`: clamped to `source_date_epoch` when
/// there is one, and held to what the header's octal field takes (no PAX record for it).
pub(crate) fn written_mtime(mtime: i64, source_date_epoch: Option<i64>) -> u64 {
    (clamped_mtime(mtime, source_date_epoch).max(0) as u64).min(USTAR_SIZE_MAX)
}

/// `mtime` clamped to `source_date_epoch` when there is one.
fn clamped_mtime(mtime: i64, source_date_epoch: Option<i64>) -> i64 {
    match source_date_epoch {
        Some(epoch) if mtime > epoch => epoch,
        _ => mtime,
    }
}

fn whiteout_meta() -> EntryMeta {
    // Whiteouts carry no meaning beyond their name: fixed metadata keeps layers reproducible.
    EntryMeta {
        mode: 0o644,
        ..EntryMeta::default()
    }
}

/// Split `a/b/c` into (`a/b/`, `c`); a name without `/` has an empty parent.
pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Put `name` into the ustar name/prefix fields; false when it cannot fit (PAX needed).
fn set_name(header: &mut [u8; BLOCK], name: &[u8]) -> bool {
    if name.len() <= 100 {
        header[..name.len()].copy_from_slice(name);
        return true;
    }
    // ustar splits at a `/`: prefix (<= 155) + "/" + name (<= 100, non-empty).
    let search_end = name.len().min(156);
    for i in (0..search_end).rev() {
        if name[i] == b'/' {
            let (prefix, rest) = (&name[..i], &name[i + 1..]);
            if rest.len() > 100 || rest.is_empty() || rest == b"/" {
                return false;
            }
            header[..rest.len()].copy_from_slice(rest);
            header[345..345 + prefix.len()].copy_from_slice(prefix);
            return true;
        }
    }
    false
}

/// `value` in octal, zero-padded to fill `field` but its last byte (a NUL); a value with more
/// digits keeps its low ones.
pub(crate) fn octal(field: &mut [u8], value: u64) {
    let (digits, end) = field.split_at_mut(field.len() - 1);
    let mut v = value;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    end[0] = 0;
}

pub(crate) fn set_checksum(header: &mut [u8; BLOCK]) {
    header[148..156].fill(b' ');
    let sum = header_sum(header);
    // Six digits (a header sums to at most 512 * 255), a NUL, and the space already there.
    octal(&mut header[148..155], sum);
}

/// The sum a header's checksum field holds: of its bytes, the field itself counted as spaces.
pub(crate) fn header_sum(header: &[u8; BLOCK]) -> u64 {
    header
        .iter()
        .enumerate()
        .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum()
}

/// containerd's chain id of a stack of layers, bottom first: the first layer's diff_id, then
/// sha256("<parent chain id> <diff_id>") for each layer above it. `None` for no layers (scratch).
/// A committed layer snapshot is named by it.
pub fn chain_id<'a>(diff_ids: impl IntoIterator<Item = &'a Digest>) -> Option<Digest> {
    diff_ids.into_iter().fold(None, |parent, diff_id| {
        Some(chain_id_step(parent.as_ref(), diff_id))
    })
}

/// One step of [`chain_id`]: the chain id of `diff_id` applied over the chain `parent` (`None`: the
/// bottom layer, whose chain id is its diff_id).
pub fn chain_id_step(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    let Some(parent) = parent else {
        return diff_id.clone();
    };
    let mut h = Sha256::new();
    h.update(format!("{parent} {diff_id}").as_bytes());
    sha256_digest(h.finalize().as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_split_into_prefix_or_need_pax() {
        let mut h = [0u8; BLOCK];
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        assert!(set_name(&mut h, long.as_bytes()));
        assert_eq!(&h[345..465], "d".repeat(120).as_bytes());
        let mut h = [0u8; BLOCK];
        assert!(!set_name(&mut h, "x".repeat(101).as_bytes()));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let mut w = LayerWriter::new(
            Vec::new(),
            LayerOptions {
                compression: Compression::None,
                source_date_epoch: None,
            },
        )
        .unwrap();
        let path = "p".repeat(200);
        w.append(
            path.as_bytes(),
            &EntryKind::File,
            &EntryMeta::default(),
            None,
        )
        .unwrap();
        let (_, tar) = w.finish().unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*entry.path_bytes(), path.as_bytes());
    }

    /// The header's numbers are what `format!`'s octal gives, zero-padded, its low digits kept
    /// when the value has more than the field holds.
    #[test]
    fn octal_fields_are_zero_padded_and_keep_the_low_digits() {
        for width in [7usize, 11] {
            let values = [0, 1, 7, 8, 0o644, 0o7777, 1 << 33, (1 << 33) - 1, u64::MAX];
            for value in values {
                let mut field = vec![b'x'; width + 1];
                octal(&mut field, value);
                let s = format!("{value:0width$o}");
                assert_eq!(
                    &field[..width],
                    &s.as_bytes()[s.len() - width..],
                    "{value} in {width}"
                );
                assert_eq!(field[width], 0);
            }
        }
        let mut h = [0u8; BLOCK];
        h[..5].copy_from_slice(b"hello");
        set_checksum(&mut h);
        let sum = 8 * u64::from(b' ') + b"hello".iter().map(|&b| u64::from(b)).sum::<u64>();
        assert_eq!(&h[148..156], format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn chain_id_matches_containerd_definition() {
        let a: Digest = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
            .parse()
            .unwrap();
        let b: Digest = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
            .parse()
            .unwrap();
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let mut h = Sha256::new();
        h.update(format!("{a} {b}"));
        let expected = format!("sha256:{}", hex::encode(h.finalize()));
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]).unwrap().to_string(),
            expected
        );
        assert_eq!(chain_id_step(None, &a), a);
        assert_eq!(chain_id_step(Some(&a), &b).to_string(), expected);
        assert_eq!(chain_id([]), None);
    }
}
