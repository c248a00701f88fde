//! COPY/ADD of local paths, with fsutil's rules: a directory source copies its contents, a file
//! lands inside an existing directory, parents are created 0755 with the chown owner, symlinks are
//! copied as links (only the top-level source is followed), hardlinks within one source stay links,
//! modes and times are kept unless `--chmod` says otherwise.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::meta::{self, ModeSpec};
use super::pool::{self, FileJob, FilePool};
use super::root::{resolve, resolve_noting_links};
use super::{FileOpError, Ids, Visible, archive, io};
use crate::frontend::dockerignore::Dockerignore;
use crate::graph::CopyOptions;
use crate::slashpath::join_root;
use crate::source::context::pattern::{go_match, has_wildcards};

/// One COPY action: `src` (a path or wildcard in `src_root`, `None` being scratch) onto `dest`.
pub(crate) fn copy(
    src_root: Option<&Path>,
    src: &str,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
    owners: Owners,
    visible: Option<&Visible>,
    upper: Option<&Path>,
) -> Result<(), FileOpError> {
    if !opts.create_dest_path {
        let parent = Path::new(&join_root(dest))
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let p = resolve(dest_root, &parent, true)?;
        if std::fs::symlink_metadata(&p).is_err() {
            return Err(FileOpError::DestParentMissing {
                path: dest.to_string(),
            });
        }
    }
    let mode = opts.mode.as_ref().map(ModeSpec::parse).transpose()?;
    let exclude = if opts.exclude_patterns.is_empty() {
        None
    } else {
        Some(
            Dockerignore::from_patterns(&opts.exclude_patterns).map_err(|e| {
                FileOpError::Exclude {
                    patterns: opts.exclude_patterns.clone(),
                    reason: e.to_string(),
                }
            })?,
        )
    };
    let Some(src_root) = src_root else {
        // Scratch holds nothing: a literal source is missing, a wildcard matches nothing.
        if opts.allow_wildcard && has_wildcards(src) && opts.allow_empty_wildcard {
            return Ok(());
        }
        return Err(FileOpError::SourceNotFound {
            src: src.to_string(),
        });
    };
    for required in &opts.required_paths {
        let p = resolve(src_root, required, false)?;
        if std::fs::symlink_metadata(p).is_err() {
            return Err(FileOpError::RequiredPath {
                path: required.clone(),
            });
        }
    }
    let srcs = if opts.allow_wildcard && has_wildcards(src) {
        let m = resolve_wildcards(src_root, src, opts.follow_symlinks, visible)?;
        if m.is_empty() {
            if opts.allow_empty_wildcard {
                return Ok(());
            }
            return Err(FileOpError::NoMatch {
                pattern: src.to_string(),
            });
        }
        m
    } else {
        vec![join_root(src)]
    };
    std::thread::scope(|scope| {
        let mut copier = Copier {
            src_root: src_root.to_path_buf(),
            direct: upper.map(|u| (dest_root.to_path_buf(), u.to_path_buf())),
            visible,
            owner: owners.plain,
            mode,
            include: opts.include_patterns.clone(),
            exclude,
            inodes: HashMap::new(),
            cross_device: false,
            scope,
            pool: None,
            dir_times: RefCell::new(Vec::new()),
        };
        for s in &srcs {
            if let Some(v) = visible
                && !visible_through_links(src_root, s, opts.follow_symlinks, v)?
            {
                return Err(missing(src_root, s, opts.follow_symlinks));
            }
            if opts.attempt_unpack && archive::unpack(src_root, s, dest_root, dest, owners.archive)?
            {
                continue;
            }
            // Hard links are kept within one source, not between the sources a wildcard matched
            // (BuildKit copies each match on its own): two matched names of one file are two
            // files, as with two COPY lines.
            copier.inodes.clear();
            copier.copy_source(src_root, s, dest_root, dest, opts)?;
        }
        Ok(())
    })
}

/// Whether `src` is part of a source that shows only some of its entries (the build context
/// after `.dockerignore`). The path is resolved as the copy will resolve it, links in its parents
/// followed inside the root; it is there only if every link crossed and the entry reached are
/// visible. That is what BuildKit's transferred context holds: fsutil's `FollowLinks` adds each
/// link on a COPY source's path and its target to the include list, and `.dockerignore` still
/// excludes either (docker: `"/dirlink/r" not found` when `dirlink` or `real/r` is ignored).
fn visible_through_links(
    root: &Path,
    src: &str,
    follow_last: bool,
    visible: &Visible,
) -> Result<bool, FileOpError> {
    let seen = |p: &Path| p.strip_prefix(root).is_ok_and(visible);
    let mut links_visible = true;
    let reached = resolve_noting_links(root, src, follow_last, &mut |link| {
        links_visible &= seen(link);
    })?;
    Ok(links_visible && seen(&reached))
}

/// Who owns what a copy creates: `None` keeps the source's owners.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owners {
    /// For entries ADD unpacks from an archive (their headers' owners unless `--chown`).
    pub archive: Option<Ids>,
    /// For files and directories copied as they are.
    pub plain: Option<Ids>,
}

/// The paths (cleaned, from the root) a wildcard source matches, in walk order: the part before
/// the first wildcard component is resolved, the rest matched against paths below it with Go's
/// `filepath.Match`; a matching directory is not descended into.
pub(crate) fn resolve_wildcards(
    root: &Path,
    src: &str,
    follow_links: bool,
    visible: Option<&Visible>,
) -> Result<Vec<String>, FileOpError> {
    let cleaned = join_root(src);
    let comps: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    let split = comps
        .iter()
        .position(|c| has_wildcards(c))
        .unwrap_or(comps.len());
    let base = format!("/{}", comps[..split].join("/"));
    let pattern = comps[split..].join("/");
    if pattern.is_empty() {
        return Ok(vec![base]);
    }
    // A link on the way that the source leaves out (.dockerignore) is not there: BuildKit's
    // context lacks it, and the wildcard matches nothing below it.
    let mut links_visible = true;
    let base_path = resolve_noting_links(root, &base, follow_links, &mut |link| {
        if let Some(v) = visible {
            links_visible &= link.strip_prefix(root).is_ok_and(v);
        }
    })?;
    if !links_visible {
        return Ok(Vec::new());
    }
    // Matches are named by where they really are, as fsutil does after resolving the base.
    let base_rel = base_path
        .strip_prefix(root)
        .map(|p| format!("/{}", p.to_string_lossy()))
        .unwrap_or(base);
    let mut out = Vec::new();
    if std::fs::metadata(&base_path).is_ok_and(|m| m.is_dir()) {
        walk_match(&base_path, "", &pattern, &base_rel, visible, &mut out)?;
    }
    Ok(out)
}

fn walk_match(
    dir: &Path,
    rel: &str,
    pattern: &str,
    base_rel: &str,
    visible: Option<&Visible>,
    out: &mut Vec<String>,
) -> Result<(), FileOpError> {
    for (name, path) in sorted_entries(dir)? {
        // Wildcards are text: a name that is not UTF-8 is matched, and named, in its lossy form
        // (and so is not found); a directory holding one is still copied byte-exactly.
        let name = name.to_string_lossy();
        let r = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        if let Some(v) = visible
            && !v(Path::new(
                join_root(&format!("{base_rel}/{r}")).trim_start_matches('/'),
            ))
        {
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&path)
            .map_err(io("inspecting", &path))?
            .is_dir();
        if go_match(pattern, &r)? {
            out.push(join_root(&format!("{base_rel}/{r}")));
        } else if is_dir {
            walk_match(&path, &r, pattern, base_rel, visible, out)?;
        }
    }
    Ok(())
}

/// A directory's entries by name (the names' bytes, which need not be UTF-8), in byte order.
fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, PathBuf)>, FileOpError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("reading directory", dir))? {
        let e = e.map_err(io("reading directory", dir))?;
        v.push((e.file_name(), e.path()));
    }
    v.sort();
    Ok(v)
}

struct Copier<'v, 's, 'e> {
    src_root: PathBuf,
    /// The destination's mount root and its overlay's upper directory, where the workers create
    /// their files (see [`super::apply_with_upper`]).
    direct: Option<(PathBuf, PathBuf)>,
    visible: Option<&'v Visible>,
    owner: Option<Ids>,
    mode: Option<ModeSpec>,
    include: Vec<String>,
    exclude: Option<Dockerignore>,
    /// (device, inode) of multiply-linked source files already copied, and where to.
    inodes: HashMap<(u64, u64), PathBuf>,
    /// Whether `copy_file_range` was refused between the source and destination filesystems:
    /// asked once, not once per file.
    cross_device: bool,
    /// Where the workers of a directory source run.
    scope: &'s std::thread::Scope<'s, 'e>,
    /// The workers copying the current directory source's new files (see [`pool`]).
    pool: Option<FilePool<'s>>,
    /// Directories whose times wait until the workers are done.
    dir_times: RefCell<Vec<(PathBuf, std::fs::Metadata)>>,
}

impl Copier<'_, '_, '_> {
    fn copy_source(
        &mut self,
        src_root: &Path,
        src: &str,
        dest_root: &Path,
        dest: &str,
        opts: &CopyOptions,
    ) -> Result<(), FileOpError> {
        // A destination written as a directory exists as one before anything lands in it.
        let ensure = if dest.ends_with('/') || dest.ends_with("/.") || dest.is_empty() {
            Some(dest.to_string())
        } else {
            Path::new(dest)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
        };
        if let Some(e) = ensure {
            let p = resolve(dest_root, &e, true)?;
            meta::mkdir_all(dest_root, &p, 0o755, self.owner)?;
        }
        let mut dst = resolve(dest_root, &join_root(dest), true)?;
        let src_path = resolve(src_root, src, opts.follow_symlinks)?;
        let src_md = std::fs::symlink_metadata(&src_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing(src_root, src, opts.follow_symlinks)
            } else {
                io("inspecting", &src_path)(e)
            }
        })?;
        // A source that is a link to something the context leaves out (.dockerignore) is as
        // missing as BuildKit's transferred context makes it, not an empty copy.
        if let Some(v) = self.visible
            && let Ok(rel) = src_path.strip_prefix(&self.src_root)
            && !v(rel)
        {
            return Err(FileOpError::SourceNotFound {
                src: src.to_string(),
            });
        }
        let dest_md = std::fs::metadata(&dst).ok();
        let src_is_dir = src_md.is_dir();
        if let Some(d) = &dest_md
            && ((!opts.copy_dir_contents_only && src_is_dir) || (!src_is_dir && d.is_dir()))
            && let Some(name) = Path::new(&join_root(src)).file_name()
        {
            dst.push(name);
        }
        let target = if opts.copy_dir_contents_only && src_is_dir && dest_md.is_none() {
            dst.clone()
        } else {
            dst.parent().map(Path::to_path_buf).unwrap_or(dst.clone())
        };
        meta::mkdir_all(dest_root, &target, 0o755, self.owner)?;
        let skip_include = self.include.is_empty();
        let workers = pool::workers();
        if !src_is_dir || workers < 2 {
            return self.copy_entry(&src_path, "", &dst, false, skip_include, false);
        }
        self.pool = Some(FilePool::start(self.scope, workers));
        let walked = self.copy_entry(&src_path, "", &dst, false, skip_include, false);
        let copied = self.pool.take().map_or(Ok(()), FilePool::finish);
        copied?;
        walked?;
        for (dir, md) in self.dir_times.take() {
            meta::set_times(&dir, &md)?;
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        src: &Path,
        comps: &str,
        target: &Path,
        overwrite_meta: bool,
        mut skip_include: bool,
        in_new_dir: bool,
    ) -> Result<(), FileOpError> {
        if let Some(v) = self.visible
            && let Ok(rel) = src.strip_prefix(&self.src_root)
            && !v(rel)
        {
            return Ok(());
        }
        let md = std::fs::symlink_metadata(src).map_err(io("inspecting", src))?;
        let mut included_by_pattern = false;
        if !comps.is_empty() {
            if !skip_include {
                let (inc, skip) = self.included(comps, md.is_dir());
                if !inc {
                    return Ok(());
                }
                included_by_pattern = inc;
                skip_include = skip;
            }
            if let Some(ex) = &self.exclude
                && ex.matches(comps)
                && !(md.is_dir() && ex.may_match_below(comps))
            {
                return Ok(());
            }
        }
        let is_dir = md.is_dir();
        if !is_dir {
            if included_by_pattern {
                self.create_parent_dirs(src, comps, target)?;
            }
            // A directory this copy just made holds only what the copy put there: nothing is in
            // the way (one lookup a file saved).
            if !in_new_dir {
                ensure_empty_file_target(target)?;
            }
        } else if skip_include && !self.include.is_empty() {
            self.create_parent_dirs(src, comps, target)?;
        }
        let ft = md.file_type();
        let mut copy_info = true;
        if is_dir {
            let created =
                self.copy_directory(src, comps, target, &md, overwrite_meta, skip_include)?;
            if !overwrite_meta || !skip_include {
                copy_info = created;
            }
        } else if ft.is_file() {
            let key = (md.dev(), md.ino());
            match self.inodes.get(&key) {
                Some(first) if md.nlink() > 1 => {
                    std::fs::hard_link(first, target).map_err(io("linking", target))?;
                    // The link shares the first copy's inode, whose metadata is already final.
                    return Ok(());
                }
                // A new path, inside a directory this copy made: a worker's (see `pool`).
                _ if in_new_dir && md.nlink() == 1 && self.pool.is_some() => {
                    let (ids, mode) = self.final_meta(&md);
                    let job = FileJob {
                        src: src.to_path_buf(),
                        target: self.worker_target(target),
                        md: md.clone(),
                        ids,
                        mode,
                    };
                    let pool = self.pool.as_mut().expect("checked above");
                    if !pool.submit(job) || pool.has_failed() {
                        // Stops the walk; `copy_source` returns the worker's own error.
                        return Err(io("copying to", target)(std::io::Error::other(
                            "a copy worker failed",
                        )));
                    }
                    return Ok(());
                }
                _ => {
                    let (ids, mode) = self.final_meta(&md);
                    meta::copy_regular_file(src, target, &md, ids, mode, &mut self.cross_device)?;
                    if md.nlink() > 1 {
                        self.inodes.insert(key, target.to_path_buf());
                    }
                    // Owner, mode, xattrs and times were set on the open file.
                    copy_info = false;
                }
            }
        } else if ft.is_symlink() {
            let link = std::fs::read_link(src).map_err(io("reading link", src))?;
            std::os::unix::fs::symlink(&link, target).map_err(io("creating symlink", target))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            make_node(target, &md)?;
        } else {
            // A socket, the one kind left. It means nothing without the process listening on it:
            // fsutil's copier (and so docker) makes it an empty regular file with the socket's
            // permission bits, owner and times. Refusing it failed whole COPYs of directories a
            // dev server had left one in.
            std::fs::File::create(target).map_err(io("creating", target))?;
        }
        if copy_info {
            self.copy_info(src, target, &md)?;
        }
        Ok(())
    }

    fn copy_info(
        &self,
        src: &Path,
        target: &Path,
        md: &std::fs::Metadata,
    ) -> Result<(), FileOpError> {
        let (ids, mode) = self.final_meta(md);
        meta::chown(target, Some(ids))?;
        if !md.file_type().is_symlink() {
            meta::set_mode(target, mode)?;
        }
        meta::copy_xattrs(src, target);
        if self.pool.is_some() && md.is_dir() {
            // Files the workers still create inside would move them.
            self.dir_times
                .borrow_mut()
                .push((target.to_path_buf(), md.clone()));
            return Ok(());
        }
        meta::set_times(target, md)
    }

    /// Where a worker creates the file meant for `target` (a new path in a directory this copy
    /// made): in the overlay's upper directory when there is one, else at `target` itself.
    fn worker_target(&self, target: &Path) -> PathBuf {
        match &self.direct {
            Some((root, upper)) => match target.strip_prefix(root) {
                Ok(rel) => upper.join(rel),
                Err(_) => target.to_path_buf(),
            },
            None => target.to_path_buf(),
        }
    }

    /// The owner and mode an entry copied from `md` gets.
    fn final_meta(&self, md: &std::fs::Metadata) -> (Ids, u32) {
        let ids = self.owner.unwrap_or(Ids {
            uid: md.uid(),
            gid: md.gid(),
        });
        let mode = match &self.mode {
            Some(spec) => spec.apply(md.mode(), md.is_dir()),
            None => md.mode() & 0o7777,
        };
        (ids, mode)
    }

    /// fsutil's include rule: (copy this entry, and everything below it without further checks).
    fn included(&self, comps: &str, is_dir: bool) -> (bool, bool) {
        let name: Vec<&str> = comps.split('/').filter(|c| !c.is_empty()).collect();
        let mut matched = false;
        let mut partial = true;
        for p in &self.include {
            let pat: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            let (full, part) = prefix_match(&pat, &name);
            if full {
                matched = true;
                partial = false;
                break;
            }
            if part {
                matched = true;
            }
        }
        if !matched {
            return (false, false);
        }
        if is_dir {
            (true, !partial)
        } else {
            (!partial, !partial)
        }
    }

    /// Creates, from the top down, the directories between the copy's root and an entry an include
    /// pattern selected, with their source metadata.
    fn create_parent_dirs(
        &self,
        src: &Path,
        comps: &str,
        target: &Path,
    ) -> Result<(), FileOpError> {
        let count = comps.matches('/').count();
        let src_parents: Vec<&Path> = src.ancestors().skip(1).take(count).collect();
        let target_parents: Vec<&Path> = target.ancestors().skip(1).take(count).collect();
        for (s, t) in src_parents.iter().zip(&target_parents).rev() {
            let md = std::fs::metadata(s).map_err(io("inspecting", s))?;
            if !md.is_dir() {
                return Err(FileOpError::Conflict {
                    what: "a directory",
                    path: s.to_path_buf(),
                    reason: "the source parent is not a directory",
                });
            }
            if copy_directory_only(t, &md, false)? {
                self.copy_info(s, t, &md)?;
            }
        }
        Ok(())
    }

    fn copy_directory(
        &mut self,
        src: &Path,
        comps: &str,
        dst: &Path,
        md: &std::fs::Metadata,
        overwrite_meta: bool,
        skip_include: bool,
    ) -> Result<bool, FileOpError> {
        // With include patterns still undecided, the directory is made only once something inside
        // it is selected (a/*/c must not create a/b when b has no c).
        let created = if skip_include {
            copy_directory_only(dst, md, overwrite_meta)?
        } else {
            false
        };
        for (name, path) in sorted_entries(src)? {
            // The include and exclude patterns are text: they see a name that is not UTF-8 in its
            // lossy form; the copy itself keeps the name's bytes.
            let c = if comps.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{comps}/{}", name.to_string_lossy())
            };
            self.copy_entry(&path, &c, &dst.join(&name), true, skip_include, created)?;
        }
        Ok(created)
    }
}

/// Makes `dst` a directory with the source's mode; whether it was created.
fn copy_directory_only(
    dst: &Path,
    md: &std::fs::Metadata,
    overwrite_meta: bool,
) -> Result<bool, FileOpError> {
    match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dst).map_err(io("creating directory", dst))?;
            meta::set_mode(dst, md.mode())?;
            Ok(true)
        }
        Err(e) => Err(io("inspecting", dst)(e)),
        Ok(d) if !d.is_dir() => Err(FileOpError::Conflict {
            what: "a directory",
            path: dst.to_path_buf(),
            reason: "a non-directory is there",
        }),
        Ok(_) => {
            if overwrite_meta {
                meta::set_mode(dst, md.mode())?;
            }
            Ok(false)
        }
    }
}

/// Clears the way for a non-directory: whatever non-directory is there goes, a directory stays
/// and is an error (fsutil refuses to replace a directory with a file).
fn ensure_empty_file_target(dst: &Path) -> Result<(), FileOpError> {
    match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspecting", dst)(e)),
        Ok(m) if m.is_dir() => Err(FileOpError::Conflict {
            what: "a file",
            path: dst.to_path_buf(),
            reason: "a directory is there",
        }),
        Ok(_) => std::fs::remove_file(dst).map_err(io("replacing", dst)),
    }
}

fn make_node(target: &Path, md: &std::fs::Metadata) -> Result<(), FileOpError> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
    mknod(
        target,
        kind,
        Mode::from_bits_truncate(md.mode() & 0o7777),
        md.rdev(),
    )
    .map_err(|e| io("creating node", target)(std::io::Error::from(e)))
}

/// Matches path components against pattern components where `**` spans any number of them:
/// (the whole path matches, the path is a proper prefix of something that could match).
fn prefix_match(pat: &[&str], name: &[&str]) -> (bool, bool) {
    if name.is_empty() {
        let full = pat.iter().all(|p| *p == "**");
        return (full, !pat.is_empty());
    }
    let Some((first, rest)) = pat.split_first() else {
        return (false, false);
    };
    if *first == "**" {
        let (f1, p1) = prefix_match(rest, name);
        let (f2, p2) = prefix_match(pat, &name[1..]);
        return (f1 || f2, p1 || p2);
    }
    if go_match(first, name[0]).unwrap_or(false) {
        prefix_match(rest, &name[1..])
    } else {
        (false, false)
    }
}

/// The error for source `src` missing from `src_root`: a symlink there whose target is not (the
/// link followed) is named with its target, as BuildKit names it.
fn missing(src_root: &Path, src: &str, follow: bool) -> FileOpError {
    let target = resolve(src_root, src, false)
        .ok()
        .and_then(|link| std::fs::read_link(link).ok());
    match target {
        Some(target) if follow => FileOpError::DanglingSource {
            src: src.to_string(),
            target: target.to_string_lossy().into_owned(),
        },
        _ => FileOpError::SourceNotFound {
            src: src.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_match;

    #[test]
    fn include_prefixes() {
        let m = |p: &str, n: &str| {
            let p: Vec<&str> = p.split('/').collect();
            let n: Vec<&str> = n.split('/').collect();
            prefix_match(&p, &n)
        };
        assert_eq!(m("a/*/c", "a"), (false, true));
        assert_eq!(m("a/*/c", "a/b"), (false, true));
        assert_eq!(m("a/*/c", "a/b/c"), (true, false));
        assert_eq!(m("a/*/c", "x"), (false, false));
        assert!(m("**/c.txt", "x/y/c.txt").0);
        assert!(m("**/c.txt", "x/y").1);
    }
}
