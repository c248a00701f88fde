//! A blob sent to a registry while it is still being written to its file: a layer leaves during
//! the step that makes it instead of after the image is assembled. The upload follows the file
//! (it reads only what the writer says is written, in [`CHUNK`] pieces, so at most one piece is in
//! memory and the writer never waits for the network) and commits with the digest of what it
//! sent, which is known only at the end (`PUT ...?digest=`, which carries the last piece where
//! the registry wants no token: see `upload.rs`).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use super::RegistryClient;
use super::push::PushError;
use super::target::Via;
use super::upload::Piece;
use crate::reference::Reference;
use crate::store::Digest;

/// Bytes read from the file and sent per request.
const CHUNK: u64 = 4 << 20;

/// The writer reports its progress every this many bytes (and once at the end).
const REPORT_STEP: u64 = 1 << 20;

/// How a followed file's writing ended, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Still being written.
    Open,
    /// Written whole: `written` is the blob's size.
    Complete,
    /// The writer stopped without finishing (the step or its layer failed, the download broke).
    Abandoned,
}

/// What a followed file's writer last said: how much of the file can be read, and how it ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct Growth {
    pub(super) written: u64,
    pub(super) end: End,
}

/// A writer that tells an upload following its file how far the file is written. It goes between
/// any buffering and the file, so that what it reports is in the file (readable through another
/// descriptor) when it is reported. Dropped without [`Reported::complete`], the upload is
/// abandoned.
#[derive(Debug)]
pub struct Reported<W: Write> {
    inner: W,
    progress: Progress,
    written: u64,
    reported: u64,
}

/// The writer's end of the channel a follower of its file watches: marks the file abandoned when
/// dropped before [`Progress::complete`].
#[derive(Debug)]
pub(super) struct Progress {
    tx: watch::Sender<Growth>,
    completed: bool,
}

impl Progress {
    /// A file of nothing yet, and the follower's end of its reports.
    pub(super) fn channel() -> (Progress, watch::Receiver<Growth>) {
        let (tx, rx) = watch::channel(Growth {
            written: 0,
            end: End::Open,
        });
        let progress = Progress {
            tx,
            completed: false,
        };
        (progress, rx)
    }

    /// The first `written` bytes of the file can be read.
    pub(super) fn advance(&self, written: u64) {
        self.tx.send_modify(|g| g.written = written);
    }

    /// The file is whole at `written` bytes.
    pub(super) fn complete(mut self, written: u64) {
        self.completed = true;
        self.tx.send_replace(Growth {
            written,
            end: End::Complete,
        });
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.completed {
            self.tx.send_modify(|g| g.end = End::Abandoned);
        }
    }
}

impl<W: Write> Reported<W> {
    /// A writer no upload follows (its reports go nowhere).
    pub fn unfollowed(inner: W) -> Reported<W> {
        Reported::with_channel(inner).0
    }

    /// A writer of nothing yet, and the receiving end of its reports.
    fn with_channel(inner: W) -> (Reported<W>, watch::Receiver<Growth>) {
        let (progress, rx) = Progress::channel();
        let reported = Reported {
            inner,
            progress,
            written: 0,
            reported: 0,
        };
        (reported, rx)
    }

    /// Flushes what it wraps, tells the upload the blob is whole, and gives the writer back.
    pub fn complete(self) -> io::Result<W> {
        let Reported {
            mut inner,
            progress,
            written,
            ..
        } = self;
        inner.flush()?;
        progress.complete(written);
        Ok(inner)
    }
}

impl<W: Write> Write for Reported<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written - self.reported >= REPORT_STEP {
            self.reported = self.written;
            self.progress.advance(self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What an upload that followed a file to its end sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBlob {
    /// `registry/repository` it went to.
    pub repository: String,
    /// The digest of the bytes sent, which the registry checked before it accepted them.
    pub digest: Digest,
    pub size: u64,
}

/// How an upload that followed a file ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// The registry holds the blob.
    Sent(SentBlob),
    /// The writer stopped before the blob was whole; nothing was committed.
    Abandoned,
    /// The upload failed (the blob can still be pushed from the store afterwards).
    Failed(PushError),
}

impl RegistryClient {
    /// Starts sending the blob about to be written to `file` (a descriptor of its own, opened for
    /// reading) to `target`'s repository. The bytes must be written through the returned
    /// [`Reported`] wrapping `writer`; the future (to be spawned) follows them and ends when the
    /// writer completes or is dropped.
    pub fn upload_while_written<W: Write>(
        self: &Arc<Self>,
        target: &Reference,
        file: File,
        writer: W,
    ) -> (
        Reported<W>,
        impl std::future::Future<Output = FollowEnd> + Send + 'static,
    ) {
        let (reported, rx) = Reported::with_channel(writer);
        let client = self.clone();
        let target = target.clone();
        let upload = async move {
            // The writer's last word tells an abandoned blob from a failed upload.
            let last = rx.clone();
            let result = client.push_stream_unknown(&target, follow(file, rx)).await;
            match result {
                Ok(sent) => FollowEnd::Sent(sent),
                Err(_) if last.borrow().end == End::Abandoned => FollowEnd::Abandoned,
                Err(e) => FollowEnd::Failed(e),
            }
        };
        (reported, upload)
    }
}

/// The bytes of `file` as its writer reports them, in [`CHUNK`] pieces, the last marked as such
/// when it is read after the writer completed; the stream ends when the writer completes, and
/// fails when it stops early.
fn follow(
    file: File,
    rx: watch::Receiver<Growth>,
) -> impl futures::Stream<Item = Result<Piece, oci_client::errors::OciDistributionError>> + Send + 'static
{
    struct State {
        file: Arc<File>,
        rx: watch::Receiver<Growth>,
        offset: u64,
    }
    let state = State {
        file: Arc::new(file),
        rx,
        offset: 0,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        let stopped = || {
            let e = io::Error::other("the blob's writer stopped before it was whole");
            Some((
                Err(oci_client::errors::OciDistributionError::IoError(e)),
                None,
            ))
        };
        loop {
            let g = *s.rx.borrow_and_update();
            if g.end == End::Abandoned {
                return stopped();
            }
            let ready = g.written - s.offset;
            if ready >= CHUNK || (g.end == End::Complete && ready > 0) {
                let len = ready.min(CHUNK);
                let last = g.end == End::Complete && len == ready;
                let (file, at) = (s.file.clone(), s.offset);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok(buf) => {
                        s.offset += len;
                        let piece = Piece {
                            bytes: bytes::Bytes::from(buf),
                            last,
                        };
                        Some((Ok(piece), Some(s)))
                    }
                    Err(e) => Some((
                        Err(oci_client::errors::OciDistributionError::IoError(e)),
                        None,
                    )),
                };
            }
            if g.end == End::Complete {
                return None;
            }
            if s.rx.changed().await.is_err() {
                // The writer is gone; its last word is in the channel (complete or abandoned),
                // unless it vanished without one.
                let last = *s.rx.borrow();
                if last.end == End::Open {
                    return stopped();
                }
            }
        }
    })
}

impl RegistryClient {
    /// Uploads `body`, whose digest is not known until its end, into `target`'s repository
    /// (chunked, committed with the digest of what was sent). Not retried: a stream cannot be
    /// read twice.
    async fn push_stream_unknown(
        &self,
        target: &Reference,
        body: impl futures::Stream<Item = Result<Piece, oci_client::errors::OciDistributionError>>
        + Send
        + 'static,
    ) -> Result<SentBlob, PushError> {
        let target = self.target(target, &|_| {}).await?;
        let what = "upload of a layer while it was written";
        let (digest, size) = match target.via {
            Via::Own => {
                let sent = async {
                    let session = self.open_session(target.registry(), &target.oci).await?;
                    self.send_through(session, body, None).await
                };
                let sent = sent.await.map_err(|e| target.error(what, e))?;
                (sent.digest, sent.size)
            }
            Via::Oci(oci_client) => {
                let body = body.map(|p| p.map(|p| p.bytes));
                let sent = oci_client
                    .push_blob_stream_chunked(&target.oci, body)
                    .await
                    .map_err(|e| target.error(what, e))?;
                let digest = sent.blob_digest.parse().map_err(|_| {
                    PushError::Task(format!(
                        "{what}: the client computed an unreadable digest {}",
                        sent.blob_digest
                    ))
                })?;
                (digest, sent.size)
            }
        };
        Ok(SentBlob {
            repository: target.name(),
            digest,
            size,
        })
    }
}
