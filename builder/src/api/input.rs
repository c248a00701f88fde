//! Files a build reads whole into memory before it starts (the Dockerfile, forge.yaml): read up to
//! a cap, so that a wrong `-f /dev/zero` fails at once instead of growing forge until the kernel
//! kills it; and, for a build already under way, read on a thread of its own that a cancelled build
//! stops waiting for, since a FIFO without a writer blocks open(2) and read(2) where no signal or
//! cancellation reaches.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The most bytes forge reads of one kind of file, and that kind as its error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bytes: u64,
    /// `a Dockerfile`.
    pub of: &'static str,
}

/// Largest Dockerfile read (`-f`, standard input, or the context's). Real ones are kilobytes; a
/// generated one of a hundred thousand lines still fits. The same as forge.yaml's
/// ([`crate::pipeline::MAX_FILE_BYTES`]).
pub const MAX_DOCKERFILE_BYTES: u64 = 4 << 20;

/// [`MAX_DOCKERFILE_BYTES`] of a Dockerfile.
pub const DOCKERFILE: Cap = Cap {
    bytes: MAX_DOCKERFILE_BYTES,
    of: "a Dockerfile",
};

/// A `.dockerignore` (or `Dockerfile.dockerignore`): as large as a Dockerfile may be; real ones
/// are a few dozen lines.
pub const DOCKERIGNORE: Cap = Cap {
    bytes: MAX_DOCKERFILE_BYTES,
    of: "a .dockerignore",
};

/// [`crate::pipeline::MAX_FILE_BYTES`] of a forge.yaml.
pub const PIPELINE_FILE: Cap = Cap {
    bytes: crate::pipeline::MAX_FILE_BYTES as u64,
    of: "a pipeline file",
};

/// Reads `reader` to its end, holding at most `cap` bytes (and one more, which tells an input of
/// exactly `cap` bytes from a larger one). A larger input is an error of kind
/// [`std::io::ErrorKind::FileTooLarge`] saying the cap.
pub fn read_capped(reader: impl Read, cap: Cap) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(cap.bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap.bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than {}, the most forge reads of {}",
                human(cap.bytes),
                cap.of
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] of `reader` as UTF-8 text; `what` names it in the error (`the Dockerfile from
/// standard input`).
pub fn read_text_capped(reader: impl Read, cap: Cap, what: &str) -> Result<String, String> {
    let bytes = read_capped(reader, cap).map_err(|e| format!("{what}: {e}"))?;
    utf8_text(bytes, what)
}

/// `bytes` as text. Bytes that are not UTF-8 are taken (as U+FFFD) on comment lines only, where
/// they change nothing (an old file's `# Maintainer: José` in Latin-1, which BuildKit reads);
/// anywhere else they are refused at their line and column, since what they stand for is unknown.
fn utf8_text(bytes: Vec<u8>, what: &str) -> Result<String, String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(e) => e.into_bytes(),
    };
    let mut at = 0;
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let start = at;
        at += line.len() + 1;
        if let Err(e) = std::str::from_utf8(line) {
            let comment = line
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'#');
            if !comment {
                let before = String::from_utf8_lossy(&line[..e.valid_up_to()]);
                return Err(format!(
                    "{what}:{}:{}: not UTF-8 text (byte {} of the file)",
                    index + 1,
                    before.chars().count() + 1,
                    start + e.valid_up_to()
                ));
            }
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The text file at `path`, at most `cap` of it; the error names the file and the cap.
pub fn read_file_capped(path: &Path, cap: Cap) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    read_text_capped(file, cap, &path.display().to_string())
}

/// [`read_file_capped`] on a thread of its own. Dropping the future (a cancelled build) stops the
/// waiting, not the thread: one blocked on a FIFO without a writer stays blocked until the process
/// exits, which it does not wait for (it is no runtime's blocking task, which a runtime's shutdown
/// would wait for).
pub async fn read_file_capped_abandonable(path: PathBuf, cap: Cap) -> Result<String, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("forge-read".into())
        .spawn(move || {
            let _ = tx.send(read_file_capped(&path, cap));
        })
        .map_err(|e| format!("cannot read {shown}: cannot start a thread to read it: {e}"))?;
    rx.await
        .map_err(|_| format!("cannot read {shown}: the thread reading it ended without a result"))?
}

/// `bytes` as the error says it: MiB when it is a whole number of them.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB ({bytes} bytes)", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(bytes: u64) -> Cap {
        Cap {
            bytes,
            of: "a test file",
        }
    }

    #[test]
    fn a_reader_at_the_cap_is_read_whole_and_one_byte_more_is_refused() {
        assert_eq!(read_capped(&[7u8; 16][..], cap(16)).unwrap(), vec![7u8; 16]);
        let e = read_capped(&[7u8; 17][..], cap(16)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert_eq!(
            e.to_string(),
            "larger than 16 bytes, the most forge reads of a test file"
        );
    }

    /// `-f /dev/zero` was read whole, until the kernel killed forge: an endless reader now stops
    /// one byte past the cap.
    #[test]
    fn an_endless_reader_stops_past_the_cap() {
        let e = read_capped(std::io::repeat(b'x'), DOCKERFILE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "larger than 4 MiB (4194304 bytes), the most forge reads of a Dockerfile"
        );
    }

    #[test]
    fn the_error_names_the_file_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, "FROM scratch\n".repeat(10)).unwrap();
        assert_eq!(
            read_file_capped(&path, cap(1000)).unwrap(),
            "FROM scratch\n".repeat(10)
        );
        let e = read_file_capped(&path, cap(100)).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: larger than 100 bytes, the most forge reads of a test file",
                path.display()
            )
        );
        let missing = read_file_capped(&dir.path().join("nope"), cap(100)).unwrap_err();
        assert!(missing.starts_with("cannot read "), "{missing}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let e = read_file_capped(&path, cap(100)).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    /// A FIFO nobody writes blocks open(2) for good: the future can be given up on (the build is
    /// cancelled) and returns at once, the reading thread left behind. Read in the future itself,
    /// the FIFO held the task, and this test, for good.
    #[tokio::test]
    async fn a_fifo_without_a_writer_can_be_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let read = read_file_capped_abandonable(fifo, cap(100));
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), read).await;
        assert!(waited.is_err(), "a FIFO without a writer gave {waited:?}");
    }
}

#[cfg(test)]
mod text_tests {
    /// Latin-1 in a comment is read (BuildKit reads it); anywhere else it is refused at its line
    /// and column.
    #[test]
    fn bytes_that_are_not_utf8_pass_on_comment_lines_only() {
        let comment = b"FROM a\n  # Maintainer: Jos\xe9\nRUN true\n".to_vec();
        let text = super::utf8_text(comment, "Dockerfile").unwrap();
        assert!(
            text.contains("RUN true") && text.contains("Jos\u{FFFD}"),
            "{text}"
        );
        let bad = b"FROM a\nLABEL who=Jos\xe9\n".to_vec();
        let e = super::utf8_text(bad, "Dockerfile").unwrap_err();
        assert!(e.starts_with("Dockerfile:2:14: not UTF-8 text"), "{e}");
    }
}
