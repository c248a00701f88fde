//! A job's artifacts after its run: the entries of its test step's tar that the job's `paths:`
//! select (globs, and everything under a selected directory), kept as a plain-tar layer in the
//! store (laid on the filesystem of the jobs that need this one, at the same paths) and extracted
//! into the artifacts directory on the host, below `JOB/`, by their path relative to the job's
//! working directory (as GitLab keeps them relative to the project directory).

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

/// Whether `name` (a tar entry, no leading slash) or a directory above it is selected; the
/// patterns that select it are marked in `hit`.
fn selected(set: &GlobSet, name: &str, hit: &mut [bool]) -> bool {
    let mut path = format!("/{}", name.trim_end_matches('/'));
    let mut any = false;
    loop {
        for i in set.matches(&path) {
            hit[i] = true;
            any = true;
        }
        match path.rfind('/') {
            Some(0) | None => return any,
            Some(i) => path.truncate(i),
        }
    }
}

/// What [`select`] kept: the new layer (`None` when nothing matched), and the patterns that
/// matched no entry, by their index (GitLab warns of each: "no matching files").
pub struct Selected {
    pub layer: Option<Descriptor>,
    pub unmatched: Vec<usize>,
}

/// Selects the entries of `taken` that match `patterns`, less those an `exclude` glob matches
/// (the entry itself: a directory matched keeps what is below it), into a new plain-tar blob.
pub fn select(
    store: &Store,
    taken: Option<&Artifacts>,
    patterns: &[String],
    exclude: &[String],
) -> Result<Selected, String> {
    // The run left nothing at any path: nothing was taken out, and every pattern is unmatched.
    let Some(taken) = taken else {
        return Ok(Selected {
            layer: None,
            unmatched: (0..patterns.len()).collect(),
        });
    };
    let set = globs(patterns)?;
    let exclude = globs(exclude)?;
    let mut hit = vec![false; patterns.len()];
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
            if selected(&set, &name, &mut hit)
                && !exclude.is_match(format!("/{}", name.trim_end_matches('/')))
            {
                let mut p = name.trim_end_matches('/').to_string();
                keep.insert(p.clone());
                while let Some(i) = p.rfind('/') {
                    p.truncate(i);
                    keep.insert(p.clone());
                }
            }
        }
    }
    let unmatched = (0..patterns.len()).filter(|&i| !hit[i]).collect();
    if keep.is_empty() {
        return Ok(Selected {
            layer: None,
            unmatched,
        });
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
    // Closed unsynced: `adopt` syncs it before giving it its name.
    buffered
        .into_inner()
        .map_err(|e| format!("writing artifacts: {}", e.into_error()))?;
    let digest: forge_snapshotter::store::Digest = digest
        .to_string()
        .parse()
        .map_err(|e| format!("artifacts digest: {e}"))?;
    store
        .adopt(&tmp, &digest, size)
        .map_err(|e| format!("storing artifacts: {e}"))?;
    Ok(Selected {
        layer: Some(Descriptor {
            media_type: TAR.into(),
            digest,
            size,
        }),
        unmatched,
    })
}

/// Removes a job's artifacts directory on the host that an earlier run left, when this run's
/// job kept none (skipped, failed with `when: on_success`, nothing matched): the directory holds
/// what the last run of the job made, or nothing.
pub fn forget_on_host(dest: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!(
            "an earlier run's {} could not be removed: {e}",
            dest.display()
        )),
        _ => Ok(()),
    }
}

/// Extracts the artifact layer `layer` into `dest` (replacing what was there), by each entry's
/// path relative to `workdir`; entries outside it are not extracted. The whole tree is first
/// extracted beside `dest`, so a failure leaves the previous `dest` in place.
pub fn extract_relative(
    store: &Store,
    layer: &Descriptor,
    workdir: &str,
    dest: &Path,
) -> Result<(), String> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    in_staging(store, layer, workdir, parent, |inner| {
        let _ = std::fs::remove_dir_all(dest);
        if inner.is_dir() {
            std::fs::rename(inner, dest).map_err(|e| format!("{}: {e}", dest.display()))
        } else {
            std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))
        }
    })
}

/// Lays the artifact layer `layer` into the directory `dest` by each entry's path relative to
/// `workdir`, replacing files of the same name (the "compile in a job, build the image from its
/// output" pattern: a build context gets a job's output).
pub fn lay_into(
    store: &Store,
    layer: &Descriptor,
    workdir: &str,
    dest: &Path,
) -> Result<(), String> {
    let beside = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    in_staging(store, layer, workdir, beside, |inner| {
        if inner.is_dir() {
            merge(inner, dest)
        } else {
            Ok(())
        }
    })
}

/// Extracts the artifact layer `layer` into a fresh staging directory in `beside`, hands `then`
/// its `workdir` (which may not exist), and removes the staging directory whatever happened.
/// What lands on the host is owned by forge's user and has no setuid or setgid bit (the layer
/// itself, laid into the jobs that need this one, keeps the job's modes and owners).
fn in_staging(
    store: &Store,
    layer: &Descriptor,
    workdir: &str,
    beside: &Path,
    then: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let staging = beside.join(format!(
        ".forge-artifacts-{}",
        forge_snapshotter::lock::random_hex()
    ));
    std::fs::create_dir(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    // The owner inside the job's container (root, or its image's USER) means nothing on the
    // host, or an unrelated account: artifacts are forge's user's, as files it copied out.
    let forge_user = crate::fileop::Ids {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let done = crate::fileop::archive::extract(
        &store.blob_path(&layer.digest),
        &staging,
        &staging,
        Some(forge_user),
        crate::fileop::archive::Extract::Artifacts,
    )
    .map_err(|e| format!("extracting artifacts: {e}"))
    .and_then(|()| then(&staging.join(workdir.trim_start_matches('/'))));
    let _ = std::fs::remove_dir_all(&staging);
    done
}

/// Moves every entry of `from` into `to`: directories are merged, anything else replaces.
fn merge(from: &Path, to: &Path) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for entry in std::fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let target = to.join(entry.file_name());
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match std::fs::symlink_metadata(&target) {
            Ok(md) if md.is_dir() && is_dir => merge(&entry.path(), &target)?,
            Ok(md) => {
                if md.is_dir() {
                    std::fs::remove_dir_all(&target).map_err(|e| err(&target, e))?;
                } else {
                    std::fs::remove_file(&target).map_err(|e| err(&target, e))?;
                }
                std::fs::rename(entry.path(), &target).map_err(|e| err(&target, e))?;
            }
            Err(_) => std::fs::rename(entry.path(), &target).map_err(|e| err(&target, e))?,
        }
    }
    Ok(())
}

/// Copies the directory `from` to `to` (which must not exist): files hard-linked where the
/// filesystem allows (a build only reads its context, and laying artifacts in replaces a file
/// rather than writing into it), copied otherwise; symbolic links recreated as they are.
/// `skip` is left out (the artifacts directory, when it lies inside the context).
pub fn copy_tree(from: &Path, to: &Path, skip: Option<&Path>) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let md = std::fs::metadata(from).map_err(|e| err(from, e))?;
    std::fs::DirBuilder::new()
        .mode(md.permissions().mode() & 0o7777)
        .create(to)
        .map_err(|e| err(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let src = entry.path();
        if skip.is_some_and(|s| s == src) {
            continue;
        }
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(|e| err(&src, e))?;
        if ty.is_dir() {
            copy_tree(&src, &dst, skip)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| err(&src, e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| err(&dst, e))?;
        } else if ty.is_file() && std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| err(&dst, e))?;
        }
        // Sockets, fifos and devices have no place in a build context.
    }
    Ok(())
}

/// [`absolute`] of each of `paths`.
pub fn absolute_all(workdir: &str, paths: &[String]) -> Vec<String> {
    paths.iter().map(|p| absolute(workdir, p)).collect()
}

/// Adds the paths a job's `what` (`("artifact", "artifacts")`, `("cache", "caches")`) take
/// out of its filesystem to `into`, each once, absolute; globs are expanded by the step. A path
/// outside the working directory is refused: what is taken is kept relative to it.
pub fn take_out<'a>(
    workdir: &str,
    written: impl IntoIterator<Item = &'a String>,
    (one, many): (&str, &str),
    into: &mut Vec<String>,
) -> Result<(), String> {
    for p in written {
        let abs = absolute(workdir, p);
        if !under(workdir, &abs) {
            return Err(format!(
                "{one} path {p} is outside the job's working directory {workdir}: {many} are \
                 kept relative to it"
            ));
        }
        if !into.contains(&abs) {
            into.push(abs);
        }
    }
    Ok(())
}

/// Whether the absolute path `path` is `workdir` or below it.
pub fn under(workdir: &str, path: &str) -> bool {
    let w = workdir.trim_end_matches('/');
    w.is_empty() || path == w || path.starts_with(&format!("{w}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_paths_are_absolute_once_each_and_inside_the_working_directory() {
        let mut into = vec!["/app/out".to_string()];
        let written = ["out".to_string(), "./reports/*.xml".to_string()];
        take_out("/app", &written, ("artifact", "artifacts"), &mut into).unwrap();
        assert_eq!(into, ["/app/out", "/app/reports/*.xml"]);
        let e = take_out(
            "/app",
            &["../etc".to_string()],
            ("cache", "caches"),
            &mut into,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "cache path ../etc is outside the job's working directory /app: caches are kept \
             relative to it"
        );
        assert_eq!(into.len(), 2);
    }

    #[test]
    fn relative_paths_are_under_the_working_directory() {
        assert_eq!(absolute("/app", "reports/*.xml"), "/app/reports/*.xml");
        assert_eq!(absolute("", "./out"), "/out");
        assert_eq!(absolute("/app", "/tmp/x"), "/tmp/x");
        assert_eq!(absolute("/app/", "../etc"), "/etc");
    }

    #[test]
    fn under_the_working_directory() {
        assert!(under("/app", "/app/out"));
        assert!(under("/", "/tmp/x"));
        assert!(under("", "/tmp/x"));
        assert!(!under("/app", "/application/x"));
        assert!(!under("/app", "/tmp"));
    }

    #[test]
    fn a_selected_directory_selects_what_is_below_it() {
        let set = globs(&[
            "/app/dist".into(),
            "/app/reports/*.xml".into(),
            "/app/nothere".into(),
        ])
        .unwrap();
        let mut hit = [false; 3];
        assert!(selected(&set, "app/dist/bin/tool", &mut hit));
        assert!(selected(&set, "app/reports/unit.xml", &mut hit));
        assert!(!selected(&set, "app/reports/unit.txt", &mut hit));
        assert!(!selected(&set, "app/distant", &mut hit));
        assert_eq!(hit, [true, true, false], "which patterns matched");
    }

    /// Regression (S1): a job that made its artifact setuid root (`chmod 4755` as root in its
    /// container) handed every local user a setuid-root program in the artifacts directory
    /// when forge ran as root. On the host, artifacts lose the setuid and setgid bits (the
    /// sticky bit and the rest stay) and belong to forge's user, not the container's uid.
    #[test]
    fn artifacts_on_the_host_are_not_setuid_and_are_forges_own() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, mode, data) in [
            ("app/", 0o3777, &b""[..]),
            ("app/rootme", 0o4755, &b"\x7fELF"[..]),
            ("app/group", 0o2751, &b"g"[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if name.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(mode);
            h.set_uid(4321);
            h.set_gid(4321);
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        }
        let bytes = tar.into_inner().unwrap();
        let digest = store.write_blob(&bytes, None).unwrap();
        let layer = Descriptor {
            media_type: TAR.into(),
            digest,
            size: bytes.len() as u64,
        };
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let out = dir.path().join("artifacts/mk");
        extract_relative(&store, &layer, "/app", &out).unwrap();
        for (name, mode) in [("", 0o1777), ("rootme", 0o755), ("group", 0o751)] {
            let md = std::fs::symlink_metadata(out.join(name)).unwrap();
            assert_eq!(md.mode() & 0o7777, mode, "{name:?}");
            assert_eq!((md.uid(), md.gid()), me, "{name:?}");
        }
        let ctx = dir.path().join("context");
        std::fs::create_dir(&ctx).unwrap();
        lay_into(&store, &layer, "/app", &ctx).unwrap();
        let md = std::fs::metadata(ctx.join("rootme")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755);
        assert_eq!((md.uid(), md.gid()), me);
    }
}
