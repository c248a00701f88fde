//! Layer compression in both directions: media type -> decompressing reader for unpack, and a
//! streaming compressor that hashes the tar (diff_id) and the blob (digest) in the same pass for diff.
//! Nothing here buffers more than the codecs' own windows.

use std::io::{self, Read, Write};
use std::str::FromStr;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use oci_spec::image::{Digest, Sha256Digest};
use sha2::{Digest as _, Sha256};

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 media type of a gzip layer.
pub const MEDIA_TYPE_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's uncompressed layer type (rare, but registries hold some).
pub const MEDIA_TYPE_DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("zstd level {level} out of range 1..=22")]
    ZstdLevel { level: i32 },
    #[error("gzip level {level} out of range 0..=9")]
    GzipLevel { level: u32 },
    #[error("starting the zstd codec")]
    Zstd(#[source] io::Error),
    #[error("re-encoding a layer")]
    Io(#[source] io::Error),
    /// What was read is not what the layer's digests say: the stored blob is damaged.
    #[error(
        "the stored blob is damaged: its {what} is {actual}, not {expected} (`forge store check` \
         finds such blobs; building again without the cache makes the layer anew)"
    )]
    Damaged {
        what: &'static str,
        expected: String,
        actual: String,
    },
}

/// How a layer blob is (or is to be) compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// gzip at a deflate level 0..=9 (flate2 with the zlib-rs backend).
    Gzip {
        level: u32,
    },
    /// gzip as pigz writes it, deflated on every core ([`crate::blockgzip`]): read by any gzip
    /// reader, but its bytes (so a layer's digest) differ from [`Compression::Gzip`]'s.
    GzipParallel {
        level: u32,
    },
    /// zstd at a level 1..=22.
    Zstd {
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// Which compression a layer media type says it has (OCI and Docker spellings).
    pub fn from_media_type(media_type: &str) -> Result<Self, CompressError> {
        match media_type {
            MEDIA_TYPE_TAR | MEDIA_TYPE_DOCKER_TAR => Ok(Compression::None),
            MEDIA_TYPE_TAR_GZIP | MEDIA_TYPE_DOCKER_GZIP => Ok(Compression::Gzip { level: 6 }),
            MEDIA_TYPE_TAR_ZSTD => Ok(Compression::Zstd { level: 3 }),
            other => Err(CompressError::UnsupportedMediaType(other.to_string())),
        }
    }

    /// The OCI media type a layer written with this compression carries.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_TAR,
            Compression::Gzip { .. } | Compression::GzipParallel { .. } => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd { .. } => MEDIA_TYPE_TAR_ZSTD,
        }
    }

    fn validate(&self) -> Result<(), CompressError> {
        match *self {
            Compression::Gzip { level } | Compression::GzipParallel { level } if level > 9 => {
                Err(CompressError::GzipLevel { level })
            }
            Compression::Zstd { level } if !(1..=22).contains(&level) => {
                Err(CompressError::ZstdLevel { level })
            }
            _ => Ok(()),
        }
    }
}

/// A reader that yields the tar stream of a layer blob of `media_type`.
pub fn decompressor<'a, R: Read + Send + 'a>(
    blob: R,
    media_type: &str,
) -> Result<Box<dyn Read + Send + 'a>, CompressError> {
    Ok(match Compression::from_media_type(media_type)? {
        Compression::None => Box::new(blob),
        // Multi-member: some writers (pigz, gzp) emit several gzip members in one blob.
        Compression::Gzip { .. } | Compression::GzipParallel { .. } => {
            Box::new(MultiGzDecoder::new(blob))
        }
        Compression::Zstd { .. } => {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(CompressError::Zstd)?)
        }
    })
}

/// A reader that passes bytes through while computing their sha256 and count.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest of everything read and its length.
    pub fn finish(self) -> (Digest, u64) {
        (sha256_digest(self.hasher.finalize().as_slice()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that passes bytes through while computing their sha256 and count.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer, the digest of everything written and its length.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = sha256_digest(self.hasher.finalize().as_slice());
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Turn raw sha256 output into an OCI digest.
pub fn sha256_digest(raw: &[u8]) -> Digest {
    let hex = hex::encode(raw);
    // A 64-char lowercase hex string is always a valid sha256 digest.
    Digest::from(Sha256Digest::from_str(&hex).expect("sha256 hex is valid"))
}

/// Bytes a codec is handed at a time. A deflate stream's bytes depend on how its input was split
/// into calls (zlib-rs's medium strategy cuts blocks where a call's input ends), so the encoder
/// cuts the input itself: the same content gives the same blob whether it came from a diff walk,
/// a pipe between threads or the recompression of a stored layer.
const CODEC_CHUNK: usize = 128 * 1024;

/// The streaming compressor between the tar writer and the sink. Its output is a function of the
/// bytes written and the compression alone: not of how the writes were cut, and not of `flush`,
/// which hands nothing to a codec (a deflate flush would add a sync block to the stream).
pub(crate) struct Encoder<W: Write> {
    codec: Codec<W>,
    /// Input waiting to make a whole [`CODEC_CHUNK`] (empty for `Plain`).
    pending: Vec<u8>,
}

enum Codec<W: Write> {
    Plain(W),
    Gzip(GzEncoder<W>),
    GzipBlocks(crate::blockgzip::BlockGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Codec<W> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Codec::Plain(w) => w.write_all(buf),
            Codec::Gzip(e) => e.write_all(buf),
            Codec::GzipBlocks(e) => e.write_all(buf),
            Codec::Zstd(e) => e.write_all(buf),
        }
    }
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(inner: W, compression: Compression) -> Result<Self, CompressError> {
        compression.validate()?;
        let codec = match compression {
            Compression::None => Codec::Plain(inner),
            // flate2's GzEncoder writes mtime 0, no name and OS byte 255: the header is stable.
            Compression::Gzip { level } => {
                Codec::Gzip(GzEncoder::new(inner, flate2::Compression::new(level)))
            }
            Compression::GzipParallel { level } => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                Codec::GzipBlocks(
                    crate::blockgzip::BlockGzip::new(inner, level, cores)
                        .map_err(CompressError::Io)?,
                )
            }
            Compression::Zstd { level } => Codec::Zstd(
                zstd::stream::write::Encoder::new(inner, level).map_err(CompressError::Zstd)?,
            ),
        };
        let pending = match codec {
            Codec::Plain(_) => Vec::new(),
            _ => Vec::with_capacity(CODEC_CHUNK),
        };
        Ok(Encoder { codec, pending })
    }

    /// Write what is pending and the codec's trailer, and hand back the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() {
            self.codec.write_all(&self.pending)?;
        }
        match self.codec {
            Codec::Plain(w) => Ok(w),
            Codec::Gzip(e) => e.finish(),
            Codec::GzipBlocks(e) => e.finish(),
            Codec::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Codec::Plain(w) = &mut self.codec {
            return w.write(buf);
        }
        let mut rest = buf;
        // Top up what is pending to a whole chunk first.
        if !self.pending.is_empty() {
            let take = rest.len().min(CODEC_CHUNK - self.pending.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < CODEC_CHUNK {
                return Ok(buf.len());
            }
            self.codec.write_all(&self.pending)?;
            self.pending.clear();
        }
        // Whole chunks straight from the caller's buffer, the tail kept for the next write.
        let whole = rest.len() - rest.len() % CODEC_CHUNK;
        for chunk in rest[..whole].chunks(CODEC_CHUNK) {
            self.codec.write_all(chunk)?;
        }
        self.pending.extend_from_slice(&rest[whole..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.codec {
            Codec::Plain(w) => w.flush(),
            _ => Ok(()),
        }
    }
}

/// Re-encodes a layer blob of `media_type` with `to` into `sink`: the tar stream (and so the
/// diff_id) is unchanged. The blob read must be the one its digest `blob_digest` names, and its
/// tar the one `diff_id` names: a damaged blob is refused, never published re-encoded. Returns
/// the new blob's digest and size.
pub fn recompress<R: Read + Send, W: Write>(
    blob: R,
    media_type: &str,
    (blob_digest, diff_id): (&str, &str),
    to: Compression,
    sink: W,
) -> Result<(Digest, u64, W), CompressError> {
    let damaged = |what, expected: &str, actual: Digest| CompressError::Damaged {
        what,
        expected: expected.to_string(),
        actual: actual.to_string(),
    };
    let mut read = HashingReader::new(blob);
    let mut tar = HashingReader::new(decompressor(&mut read, media_type)?);
    let mut enc = Encoder::new(HashingWriter::new(sink), to)?;
    let copied = io::copy(&mut tar, &mut enc);
    let (tar_digest, _) = tar.finish();
    // What the decoder left unread of the blob (all of it past a decoding error) still counts
    // towards its digest: a blob that does not decode is said damaged when it is.
    io::copy(&mut read, &mut io::sink()).map_err(CompressError::Io)?;
    let (read_digest, _) = read.finish();
    if read_digest.to_string() != blob_digest {
        return Err(damaged("digest", blob_digest, read_digest));
    }
    copied.map_err(CompressError::Io)?;
    if tar_digest.to_string() != diff_id {
        return Err(damaged("diff_id", diff_id, tar_digest));
    }
    let (mut sink, digest, size) = enc.finish().map_err(CompressError::Io)?.finish();
    sink.flush().map_err(CompressError::Io)?;
    Ok((digest, size, sink))
}
