//! The step's stdout and stderr: FIFOs in the step directory that the runc shim writes into, read here
//! line by line and handed to the step's loop, which forwards them to the caller.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::ContainerdError;
use crate::spec::Stream;

/// Lines from both FIFOs, tagged with their stream.
pub(crate) type LineSender = tokio::sync::mpsc::UnboundedSender<(Stream, String)>;
/// The two FIFOs with their read ends already open.
pub(crate) struct StepIo {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    readers: Vec<(Stream, pipe::Receiver)>,
}

impl StepIo {
    /// Makes the FIFOs in `dir` and opens their read ends. This must happen before the task is
    /// created: the shim opens the write ends while creating it, and that open blocks until a reader
    /// exists. A non-blocking read end opened with no writer yet is fine as long as nobody reads from
    /// it before the shim has connected, which is why reading starts in [`StepIo::spawn`].
    pub(crate) fn create(dir: &Path) -> Result<Self, ContainerdError> {
        let mut readers = Vec::new();
        let mut paths = Vec::new();
        for (stream, name) in [(Stream::Stdout, "stdout"), (Stream::Stderr, "stderr")] {
            let path = dir.join(name);
            mkfifo(&path)?;
            let receiver = pipe::OpenOptions::new()
                .open_receiver(&path)
                .map_err(|e| ContainerdError::io("cannot open fifo", &path, e))?;
            readers.push((stream, receiver));
            paths.push(path);
        }
        let stderr = paths.pop().expect("two fifos");
        let stdout = paths.pop().expect("two fifos");
        Ok(StepIo {
            stdout,
            stderr,
            readers,
        })
    }

    /// Starts reading; each task ends (dropping its sender) when the shim closes its end of the FIFO.
    pub(crate) fn spawn(self, lines: &LineSender) -> Vec<JoinHandle<()>> {
        self.readers
            .into_iter()
            .map(|(stream, receiver)| tokio::spawn(read_lines(stream, receiver, lines.clone())))
            .collect()
    }
}

fn mkfifo(path: &Path) -> Result<(), ContainerdError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| ContainerdError::io("cannot make fifo", path, e.into()))?;
    // SAFETY: a NUL-terminated path; mkfifo does not keep the pointer.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(ContainerdError::io(
            "cannot make fifo",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

async fn read_lines(stream: Stream, receiver: pipe::Receiver, lines: LineSender) {
    // The step's loop stopped listening only when it is tearing down; the rest is drained unread.
    crate::lines::read_lines(receiver, |text| {
        let _ = lines.send((stream, text));
        async { true }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::MAX_LINE;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_are_split_and_long_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let io = StepIo::create(dir.path()).unwrap();
        let stdout = io.stdout.clone();
        let stderr = io.stderr.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut out = pipe::OpenOptions::new().open_sender(&stdout).unwrap();
        let mut err = pipe::OpenOptions::new().open_sender(&stderr).unwrap();
        let handles = io.spawn(&tx);
        drop(tx);
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("line {i}\r\n"));
        }
        text.push_str("no newline at the end");
        out.write_all(text.as_bytes()).await.unwrap();
        err.write_all(&vec![b'x'; MAX_LINE + 10]).await.unwrap();
        drop(out);
        drop(err);
        for h in handles {
            h.await.unwrap();
        }
        let mut stdout_lines = Vec::new();
        let mut stderr_lines = Vec::new();
        while let Some((stream, line)) = rx.recv().await {
            match stream {
                Stream::Stdout => stdout_lines.push(line),
                Stream::Stderr => stderr_lines.push(line),
            }
        }
        assert_eq!(stdout_lines.len(), 41);
        assert_eq!(stdout_lines[0], "line 0");
        assert_eq!(stdout_lines[40], "no newline at the end");
        assert_eq!(
            stderr_lines.iter().map(String::len).collect::<Vec<_>>(),
            vec![MAX_LINE, 10]
        );
    }
}
