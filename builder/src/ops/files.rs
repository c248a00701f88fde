//! Files the operations write outside a snapshot: a test step's artifacts tarred into one blob and
//! its output kept as a log blob.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use forge_snapshotter::compress::HashingWriter;
use forge_snapshotter::store::{Digest as BlobDigest, Store, TempPath};

use super::{Artifacts, ExecError, TestLog, io_err};
use crate::fileop::{self, FileOpError};

/// Writes the entries at `paths` (resolved inside `root`, so a symlink cannot lead out of it;
/// symlinks below them are stored as links) as a tar under the store's temporary directory, then
/// moves it in as a blob.
pub(super) fn tar_artifacts(
    root: &Path,
    paths: &[String],
    store: &Store,
) -> Result<Option<Artifacts>, ExecError> {
    let tmp = store.temp_path("artifacts")?;
    let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let written = (|| {
        let mut tar = tar::Builder::new(HashingWriter::new(BufWriter::new(file)));
        tar.follow_symlinks(false);
        let mut found = Vec::new();
        // Names already in the tar (a path below one of them is in it already).
        let mut added: Vec<String> = Vec::new();
        for p in paths {
            let mut any = false;
            for name in expand_artifact_path(root, p)? {
                if added
                    .iter()
                    .any(|a| a == "/" || name == *a || name.starts_with(&format!("{a}/")))
                {
                    any = true;
                    continue;
                }
                let at = fileop::root::resolve(root, &name, true).map_err(FileOpError::from)?;
                let md = match std::fs::symlink_metadata(&at) {
                    Ok(md) => md,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("reading", &at)(e)),
                };
                let rel = match name.trim_start_matches('/') {
                    "" => ".",
                    rel => rel,
                };
                if md.is_dir() {
                    tar.append_dir_all(rel, &at)
                } else {
                    tar.append_path_with_name(&at, rel)
                }
                .map_err(io_err("archiving", &at))?;
                added.push(name);
                any = true;
            }
            if any {
                found.push(p.clone());
            }
        }
        let hashing = tar.into_inner().map_err(io_err("writing", &tmp))?;
        let (buffered, digest, size) = hashing.finish();
        // Closed unsynced: `adopt` syncs it before giving it its name.
        buffered
            .into_inner()
            .map_err(|e| io_err("writing", &tmp)(e.into_error()))?;
        Ok((found, digest, size))
    })();
    let (paths, digest, size) = match written {
        Ok((found, ..)) if found.is_empty() => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let digest: BlobDigest = digest
        .to_string()
        .parse()
        .map_err(|e| ExecError::Internal(format!("artifacts digest: {e}")))?;
    store.adopt(&tmp, &digest, size)?;
    Ok(Some(Artifacts {
        digest,
        size,
        paths,
    }))
}

/// A test step's output, written line by line to a temporary file of the store and hashed as it
/// goes; [`TestLogWriter::finish`] moves it in as a blob.
pub(super) struct TestLogWriter {
    tmp: TempPath,
    out: HashingWriter<BufWriter<File>>,
    lines: u64,
    /// The first write error: the step goes on (its verdict does not depend on its log), and
    /// `finish` reports it.
    error: Option<std::io::Error>,
}

impl TestLogWriter {
    pub(super) fn create(store: &Store) -> Result<TestLogWriter, ExecError> {
        let tmp = store.temp_path("test-log")?;
        let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        Ok(TestLogWriter {
            tmp,
            out: HashingWriter::new(BufWriter::new(file)),
            lines: 0,
            error: None,
        })
    }

    pub(super) fn line(&mut self, line: &str) {
        if self.error.is_some() {
            return;
        }
        self.lines += 1;
        if let Err(e) = writeln!(self.out, "{line}") {
            self.error = Some(e);
        }
    }

    /// The log as a blob; `None` when the step printed nothing.
    pub(super) fn finish(self, store: &Store) -> Result<Option<TestLog>, ExecError> {
        if let Some(e) = self.error {
            return Err(io_err("writing the test log", &self.tmp)(e));
        }
        if self.lines == 0 {
            return Ok(None);
        }
        let (buffered, digest, size) = self.out.finish();
        // Closed unsynced: `adopt` syncs it before giving it its name.
        buffered
            .into_inner()
            .map_err(|e| io_err("writing the test log", &self.tmp)(e.into_error()))?;
        let digest: BlobDigest = digest
            .to_string()
            .parse()
            .map_err(|e| ExecError::Internal(format!("test log digest: {e}")))?;
        store.adopt(&self.tmp, &digest, size)?;
        Ok(Some(TestLog {
            digest,
            size,
            lines: self.lines,
        }))
    }
}

/// The paths one artifact path names in `root`: itself, or for a glob (`/app/out-*.txt`,
/// `/app/**/junit.xml`) every entry below its literal directory that matches, found without
/// following symbolic links. Absolute slash paths, sorted.
fn expand_artifact_path(root: &Path, pattern: &str) -> Result<Vec<String>, ExecError> {
    let pattern = crate::slashpath::join_root(pattern);
    let Some(cut) = pattern.find(['*', '?', '[', '{']) else {
        return Ok(vec![pattern]);
    };
    let glob = globset::GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| ExecError::Unsupported(format!("artifact path {pattern:?}: {e}")))?
        .compile_matcher();
    let dir = match pattern[..cut].rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => pattern[..i].to_string(),
    };
    let start = fileop::root::resolve(root, &dir, true).map_err(FileOpError::from)?;
    let mut out = Vec::new();
    let mut stack = vec![(start, dir)];
    // Bounded: a glob over a huge tree stops here rather than walking it all.
    let mut seen = 0usize;
    while let Some((host, name)) = stack.pop() {
        let entries = match std::fs::read_dir(&host) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("listing", &host)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &host))?;
            seen += 1;
            if seen > 1_000_000 {
                return Err(ExecError::Unsupported(format!(
                    "artifact path {pattern:?} walks more than a million entries"
                )));
            }
            let child = format!(
                "{}/{}",
                name.trim_end_matches('/'),
                entry.file_name().to_string_lossy()
            );
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if glob.is_match(&child) {
                out.push(child);
            } else if is_dir {
                stack.push((entry.path(), child));
            }
        }
    }
    out.sort();
    Ok(out)
}
