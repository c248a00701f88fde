//! `forge build -` and `forge build https://...`: the build context read from a stream (standard
//! input) or downloaded, as `docker build -` and `docker build URL` read them. A tar, plain or
//! compressed (gzip, bzip2, xz, zstd), is the context; anything else is a Dockerfile with an empty
//! context. A git repository URL is cloned (`git_context.rs`).
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

/// How errors name standard input.
const STDIN: &str = "the context on standard input";

/// Whether `context` (as given on the command line) is a URL rather than a directory.
pub fn is_url(context: &str) -> bool {
    context.starts_with("http://") || context.starts_with("https://") || is_git_url(context)
}

/// Docker's rule for a git context: a `git://` or `git@` address, or an http(s) URL whose path
/// ends in `.git` (before any `#ref:dir` fragment).
fn is_git_url(context: &str) -> bool {
    let path = context.split('#').next().unwrap_or_default();
    context.starts_with("git://")
        || context.starts_with("git@")
        || context.starts_with("ssh://")
        || ((context.starts_with("http://") || context.starts_with("https://"))
            && path.trim_end_matches('/').ends_with(".git"))
}

/// A context read from a stream, alive (and its directory kept) until dropped.
#[derive(Debug)]
pub struct StreamContext {
    dir: LiveDir,
    /// The stream's text, when it was a Dockerfile rather than a tar.
    dockerfile: Option<String>,
    /// Where the stream came from, for the Dockerfile's name in messages.
    origin: String,
}

impl StreamContext {
    /// A context already laid out as `dir/context` (a git checkout), from `origin`.
    pub(super) fn from_dir(dir: LiveDir, origin: &str) -> StreamContext {
        StreamContext {
            dir,
            dockerfile: None,
            origin: origin.to_string(),
        }
    }

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
                name: format!("Dockerfile ({})", self.origin),
                text: text.clone(),
            };
        }
    }
}

impl Session {
    /// Downloads `url` into the store's scratch space and makes it a context, as
    /// [`Session::context_from_stream`] does with standard input (a tar is the context, anything
    /// else the Dockerfile). Proxies come from the environment; transient failures are retried.
    pub async fn context_from_url(&self, url: &str) -> Result<StreamContext, BuildError> {
        if is_git_url(url) {
            return self.context_from_git(url).await;
        }
        let (dir, raw) = self.stream_dir()?;
        crate::source::http::fetch(url, None, dir.path(), "stream", &mut |_, _| {})
            .await
            .map_err(|e| BuildError::Invalid(format!("the context at {url}: {e}")))?;
        self.finish_stream(dir, &raw, url, url)
    }

    /// A fresh `tmp/build-stream-<random>` and the path of the raw stream in it.
    pub(super) fn stream_dir(&self) -> Result<(LiveDir, PathBuf), BuildError> {
        let tmp = crate::scratch::tmp_root(&self.root);
        std::fs::create_dir_all(&tmp).map_err(|e| invalid("create", &tmp, e))?;
        let name = format!("build-stream-{}", random_hex());
        let dir =
            LiveDir::create(&tmp, &name).map_err(|e| invalid("create", &tmp.join(&name), e))?;
        let raw = dir.path().join("stream");
        Ok((dir, raw))
    }

    /// Reads `input` to its end into the store's scratch space (`tmp/build-stream-<random>`, swept
    /// like a dead build's if the process is killed) and makes it a context.
    pub fn context_from_stream(&self, input: &mut dyn Read) -> Result<StreamContext, BuildError> {
        let (dir, raw) = self.stream_dir()?;
        let mut file = File::create(&raw).map_err(|e| invalid("create", &raw, e))?;
        let reading = |e: io::Error| {
            BuildError::Invalid(format!(
                "reading {STDIN}: {e} (written to {})",
                raw.display()
            ))
        };
        // A lone Dockerfile is at most what forge reads of one: past that, only an archive is
        // read on (`forge build - < /dev/zero` filled the disk).
        let cap = super::input::DOCKERFILE.bytes;
        let head = io::copy(&mut input.take(cap + 1), &mut file).map_err(reading)?;
        if head > cap {
            if !archive::is_archive(&raw) {
                return Err(BuildError::Invalid(format!(
                    "{STDIN} holds more than {} MiB and is no tar (plain, gzip, bzip2, xz or \
                     zstd): a lone Dockerfile is at most that",
                    cap >> 20
                )));
            }
            io::copy(input, &mut file).map_err(reading)?;
        }
        drop(file);
        self.finish_stream(dir, &raw, STDIN, "standard input")
    }

    /// The raw stream at `raw` made a context: extracted when it is a tar, else kept as the
    /// Dockerfile's text. `source` names it in errors.
    fn finish_stream(
        &self,
        dir: LiveDir,
        raw: &Path,
        source: &str,
        origin: &str,
    ) -> Result<StreamContext, BuildError> {
        let context = dir.path().join("context");
        std::fs::create_dir(&context).map_err(|e| invalid("create", &context, e))?;
        if archive::is_archive(raw) {
            let owner = crate::fileop::Ids {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            };
            archive::extract(
                raw,
                &context,
                &context,
                Some(owner),
                archive::Extract::Files,
            )
            .map_err(|e| match e {
                FileOpError::ArchiveEntry { entry, reason, .. } => {
                    BuildError::Invalid(format!("{source}: refusing tar entry {entry:?}: {reason}"))
                }
                e => BuildError::Invalid(format!("{source}: {e}")),
            })?;
            std::fs::remove_file(raw).map_err(|e| invalid("remove", raw, e))?;
            return Ok(StreamContext {
                dir,
                dockerfile: None,
                origin: origin.to_string(),
            });
        }
        let bytes = std::fs::read(raw).map_err(|e| invalid("read", raw, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            BuildError::Invalid(format!(
                "{source} is neither a tar (plain, gzip, bzip2, xz or zstd) nor a UTF-8 \
                 Dockerfile: invalid UTF-8 at byte {}",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Ok(StreamContext {
            dir,
            dockerfile: Some(text),
            origin: origin.to_string(),
        })
    }
}

fn invalid(what: &str, path: &Path, e: io::Error) -> BuildError {
    BuildError::Invalid(format!("{STDIN}: {what} {}: {e}", path.display()))
}
