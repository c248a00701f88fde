//! Replacing a file whole, the one way forge does it: the new content goes to a temporary file
//! beside it (a random name, so two writers in one process never share one), is synced, and is
//! renamed over it. A reader sees the old file or the new one, never a part; on failure the
//! temporary file is removed and the old file is left as it was.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Which step of a replacement failed, for the caller's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Sync,
    Rename,
}

impl Step {
    pub fn what(self) -> &'static str {
        match self {
            Step::Create => "creating",
            Step::Sync => "syncing",
            Step::Rename => "renaming into place",
        }
    }
}

/// Replaces `dest` with what `fill` writes. `io_err` turns a failed step (on the path it names)
/// into the caller's error; `fill`'s own errors pass through.
pub fn replace_file<E>(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
    io_err: impl Fn(Step, &Path, io::Error) -> E,
) -> Result<(), E> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
    let name = dest
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    let tmp: PathBuf = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.tmp-{}", crate::lock::random_hex()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io_err(Step::Create, &tmp, e))?;
        fill(&mut f)?;
        f.sync_all().map_err(|e| io_err(Step::Sync, &tmp, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| io_err(Step::Rename, dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, "old").unwrap();
        let r: Result<(), String> = replace_file(
            &dest,
            |f| {
                f.write_all(b"partial").unwrap();
                Err("boom".into())
            },
            |s, p, e| format!("{} {}: {e}", s.what(), p.display()),
        );
        assert_eq!(r, Err("boom".into()));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let r: Result<(), String> = replace_file(
            &dest,
            |f| f.write_all(b"new").map_err(|e| e.to_string()),
            |s, p, e| format!("{} {}: {e}", s.what(), p.display()),
        );
        assert_eq!(r, Ok(()));
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new");
    }
}
