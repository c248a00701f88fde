//! `forge build -`: the build context read from a stream (standard input), as `docker build -`
//! reads it. A tar, plain or compressed (gzip, bzip2, xz, zstd), is the context; anything else is a
//! Dockerfile with an empty context.
//!
//! The tar is written to the store's scratch space first (never held in memory), then unpacked
//! with the extractor `ADD` uses, which refuses any entry whose path, symlink or hard-link target
//! leaves the context (the class of CVE-2026-28406); device and fifo entries are refused too, since
//! forge would make them on the host. Every file is owned by the caller.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use forge_snapshotter::lock::{LiveDir, random_hex};

use super::{BuildError, BuildRequest, DockerfileSource, Session};
use crate::fileop::{FileOpError, archive};

/// How errors name the stream.
const STDIN: &str = "the context on standard input";

/// A context read from a stream, alive (and its directory kept) until dropped.
#[derive(Debug)]
pub struct StreamContext {
    dir: LiveDir,
    /// The stream's text, when it was a Dockerfile rather than a tar.
    dockerfile: Option<String>,
}

impl StreamContext {
    /// The context directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("context")
    }

    /// The Dockerfile the stream held instead of a tar.
    pub fn dockerfile(&self) -> Option<&str> {
        self.dockerfile.as_deref()
    }

    /// Points `request` at this context, and at the streamed Dockerfile when there was one and the
    /// request names none of its own.
    pub fn apply(&self, request: &mut BuildRequest) {
        request.context = self.path();
        if let Some(text) = &self.dockerfile
            && matches!(request.dockerfile, DockerfileSource::InContext)
        {
            request.dockerfile = DockerfileSource::Text {
                name: "Dockerfile (standard input)".into(),
                text: text.clone(),
            };
        }
    }
}

impl Session {
    /// Reads `input` to its end into the store's scratch space (`tmp/build-stream-<random>`, swept
    /// like a dead build's if the process is killed) and makes it a context.
    pub fn context_from_stream(&self, input: &mut dyn Read) -> Result<StreamContext, BuildError> {
        let tmp = crate::scratch::tmp_root(&self.root);
        std::fs::create_dir_all(&tmp).map_err(|e| invalid("create", &tmp, e))?;
        let name = format!("build-stream-{}", random_hex());
        let dir =
            LiveDir::create(&tmp, &name).map_err(|e| invalid("create", &tmp.join(&name), e))?;
        let raw = dir.path().join("stream");
        let mut file = File::create(&raw).map_err(|e| invalid("create", &raw, e))?;
        io::copy(input, &mut file).map_err(|e| {
            BuildError::Invalid(format!(
                "reading {STDIN}: {e} (written to {})",
                raw.display()
            ))
        })?;
        drop(file);
        let context = dir.path().join("context");
        std::fs::create_dir(&context).map_err(|e| invalid("create", &context, e))?;
        if archive::is_archive(&raw) {
            let owner = crate::fileop::Ids {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            };
            archive::extract(&raw, &context, &context, Some(owner), false).map_err(
                |e| match e {
                    FileOpError::ArchiveEntry { entry, reason, .. } => BuildError::Invalid(
                        format!("{STDIN}: refusing tar entry {entry:?}: {reason}"),
                    ),
                    e => BuildError::Invalid(format!("{STDIN}: {e}")),
                },
            )?;
            std::fs::remove_file(&raw).map_err(|e| invalid("remove", &raw, e))?;
            return Ok(StreamContext {
                dir,
                dockerfile: None,
            });
        }
        let bytes = std::fs::read(&raw).map_err(|e| invalid("read", &raw, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            BuildError::Invalid(format!(
                "{STDIN} is neither a tar (plain, gzip, bzip2, xz or zstd) nor a UTF-8 \
                 Dockerfile: invalid UTF-8 at byte {}",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Ok(StreamContext {
            dir,
            dockerfile: Some(text),
        })
    }
}

fn invalid(what: &str, path: &Path, e: io::Error) -> BuildError {
    BuildError::Invalid(format!("{STDIN}: {what} {}: {e}", path.display()))
}
