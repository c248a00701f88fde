//! A job's artifacts after its run: the entries of its test step's tar that the job's `paths:`
//! select (globs, and everything under a selected directory), kept as a plain-tar layer in the
//! store (laid on the filesystem of the jobs that need this one) and extracted into the
//! artifacts directory on the host, below `JOB/`, by their path in the job's filesystem.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use forge_snapshotter::compress::HashingWriter;
use forge_snapshotter::store::{Descriptor, Store};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::ops::Artifacts;

/// The media type of the layer an artifact set becomes.
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The artifact paths of a job, absolute in its filesystem (`reports/*.xml` in a job whose
/// working directory is `/app` is `/app/reports/*.xml`).
pub fn absolute(workdir: &str, path: &str) -> String {
    let p = if path.starts_with('/') {
        path.to_string()
    } else {
        let base = if workdir.is_empty() { "/" } else { workdir };
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            path.trim_start_matches("./")
        )
    };
    crate::slashpath::clean_path(&p)
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p.trim_end_matches('/')).map_err(|e| format!("artifact path {p:?}: {e}"))?);
    }
    b.build().map_err(|e| e.to_string())
}

/// Whether `name` (a tar entry, no leading slash) or a directory above it is selected.
fn selected(set: &GlobSet, name: &str) -> bool {
    let mut path = format!("/{}", name.trim_end_matches('/'));
    loop {
        if set.is_match(&path) {
            return true;
        }
        match path.rfind('/') {
            Some(0) | None => return false,
            Some(i) => path.truncate(i),
        }
    }
}

/// Selects the entries of `taken` that match `patterns` into a new plain-tar blob, and extracts
/// it below `dest` when given. `None` when nothing matched.
pub fn select(
    store: &Store,
    taken: &Artifacts,
    patterns: &[String],
    dest: Option<&Path>,
) -> Result<Option<Descriptor>, String> {
    let set = globs(patterns)?;
    let open = || {
        store
            .open_blob(&taken.digest)
            .map_err(|e| format!("artifacts blob {}: {e}", taken.digest))
    };
    // First pass: which entries are selected, and the directories above them.
    let mut keep = BTreeSet::new();
    {
        let mut a = tar::Archive::new(open()?);
        for e in a.entries().map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if selected(&set, &name) {
                let mut p = name.trim_end_matches('/').to_string();
                keep.insert(p.clone());
                while let Some(i) = p.rfind('/') {
                    p.truncate(i);
                    keep.insert(p.clone());
                }
            }
        }
    }
    if keep.is_empty() {
        return Ok(None);
    }
    let tmp = store.temp_path("artifacts").map_err(|e| e.to_string())?;
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut out = tar::Builder::new(HashingWriter::new(BufWriter::new(file)));
    {
        let mut a = tar::Archive::new(open()?);
        for e in a.entries().map_err(|e| e.to_string())? {
            let mut e = e.map_err(|e| e.to_string())?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if !keep.contains(name.trim_end_matches('/')) {
                continue;
            }
            let mut header = e.header().clone();
            out.append_data(&mut header, &name, &mut e)
                .map_err(|e| format!("writing artifacts: {e}"))?;
        }
    }
    let hashing = out
        .into_inner()
        .map_err(|e| format!("writing artifacts: {e}"))?;
    let (buffered, digest, size) = hashing.finish();
    buffered
        .into_inner()
        .map_err(|e| format!("writing artifacts: {}", e.into_error()))?
        .sync_all()
        .map_err(|e| format!("writing artifacts: {e}"))?;
    let digest: forge_snapshotter::store::Digest = digest
        .to_string()
        .parse()
        .map_err(|e| format!("artifacts digest: {e}"))?;
    store
        .adopt(&tmp, &digest, size)
        .map_err(|e| format!("storing artifacts: {e}"))?;
    if let Some(dest) = dest {
        std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        let blob = store.blob_path(&digest);
        crate::fileop::archive::extract(&blob, dest, dest, None, false)
            .map_err(|e| format!("extracting artifacts into {}: {e}", dest.display()))?;
    }
    Ok(Some(Descriptor {
        media_type: TAR.into(),
        digest,
        size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_under_the_working_directory() {
        assert_eq!(absolute("/app", "reports/*.xml"), "/app/reports/*.xml");
        assert_eq!(absolute("", "./out"), "/out");
        assert_eq!(absolute("/app", "/tmp/x"), "/tmp/x");
        assert_eq!(absolute("/app/", "../etc"), "/etc");
    }

    #[test]
    fn a_selected_directory_selects_what_is_below_it() {
        let set = globs(&["/app/dist".into(), "/app/reports/*.xml".into()]).unwrap();
        assert!(selected(&set, "app/dist/bin/tool"));
        assert!(selected(&set, "app/reports/unit.xml"));
        assert!(!selected(&set, "app/reports/unit.txt"));
        assert!(!selected(&set, "app/distant"));
    }
}
