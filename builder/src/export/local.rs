//! `-o type=local,dest=DIR`: the final filesystem as plain files. builder does not reach the
//! snapshotter's safe layer unpacker yet, so this copies an already-assembled rootfs directory;
//! the solver hands it the final snapshot's directory.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use super::{ExportError, io_err};

/// Copies the tree at `rootfs` into `dest` (created if missing): regular files, directories,
/// symlinks (never followed; a link keeps its target string), fifos and device nodes; hard links
/// within the tree stay linked, permission bits including setuid/setgid/sticky and modification
/// times are kept. Every entry is the caller's, root included, as BuildKit's client writes a
/// local export (its receiver sets each file's owner to its own uid and gid): other owners would
/// be, rootless, subordinate ids the user could neither change nor remove. `keep_owners`
/// (`--keep-owners`) writes the image's owners instead where the caller may. A device node the
/// caller may not make (rootless) and a socket are refused with an error naming them.
pub fn export_local(rootfs: &Path, dest: &Path, keep_owners: bool) -> Result<(), ExportError> {
    fs::create_dir_all(dest).map_err(io_err("creating", dest))?;
    let mut links = HashMap::new();
    let owners = Owners { keep: keep_owners };
    copy_dir(rootfs, dest, &mut links, owners)?;
    let meta = fs::metadata(rootfs).map_err(io_err("reading metadata of", rootfs))?;
    finish(dest, &meta, owners)
}

/// Whose the written files are.
#[derive(Clone, Copy)]
struct Owners {
    /// `--keep-owners`: the image's owners even rootless (then subordinate ids on the host, which
    /// the caller cannot change or remove without `forge unpack`-style privileges).
    keep: bool,
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
    owners: Owners,
) -> Result<(), ExportError> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err("listing", src))?
        .collect::<Result<_, _>>()
        .map_err(io_err("listing", src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = match fs::symlink_metadata(&from) {
            Ok(meta) => meta,
            // A name listed but not there: an overlay lists the whiteouts of a directory no lower
            // directory is merged with (a layer deleting `g/x` where a lower one has `g` as a
            // symlink), and finds none of them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("reading metadata of", &from)(e)),
        };
        let t = meta.file_type();
        if t.is_dir() {
            // A directory already there is written into; anything else, a symlink to a
            // directory included, is replaced: following a link left in DEST (by an earlier
            // export of another image, or by anyone) would write the image's files wherever it
            // points.
            let is_real_dir = fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir());
            if !is_real_dir {
                remove_existing(&to)?;
                fs::create_dir(&to).map_err(io_err("creating", &to))?;
            }
            copy_dir(&from, &to, links, owners)?;
            finish(&to, &meta, owners)?;
            continue;
        }
        remove_existing(&to)?;
        if t.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("reading link", &from))?;
            symlink(&target, &to).map_err(io_err("creating symlink", &to))?;
            chown_if_permitted(&to, &meta, owners)?;
        } else if t.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &to).map_err(io_err("hard-linking", &to))?;
                    continue;
                }
                links.insert(key, to.clone());
            }
            let mut input = fs::File::open(&from).map_err(io_err("opening", &from))?;
            // Private until finished: the final mode may not even let us write the times.
            let mut output = fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&to)
                .map_err(io_err("creating", &to))?;
            std::io::copy(&mut input, &mut output).map_err(io_err("copying", &from))?;
            finish_open(output, &to, &meta, owners)?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            if t.is_socket() {
                return Err(ExportError::UnsupportedFile {
                    path: from,
                    kind: "a socket (no layer format holds one)",
                });
            }
            make_node(&to, &meta).map_err(|e| match e {
                nix::errno::Errno::EPERM if !t.is_fifo() => ExportError::UnsupportedFile {
                    path: from.clone(),
                    kind: "a device node: only root may make one (export as root, or to a tar with \
                           `-o type=tar`)",
                },
                e => io_err("creating", &to)(e.into()),
            })?;
            // A node's times and mode are set by its path (opening a fifo would wait for a writer).
            set_times_by_path(&to, &meta)?;
            chown_if_permitted(&to, &meta, owners)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("setting mode of", &to))?;
        }
    }
    Ok(())
}

/// Makes a fifo or device node like the one `meta` describes, private until finished.
fn make_node(to: &Path, meta: &fs::Metadata) -> Result<(), nix::errno::Errno> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
    mknod(to, kind, Mode::from_bits_truncate(0o600), meta.rdev())
}

/// Sets `path`'s modification time from `meta` without opening it (a fifo's open blocks).
fn set_times_by_path(path: &Path, meta: &fs::Metadata) -> Result<(), ExportError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("setting mtime of", path)(e.into()))
}

fn remove_existing(path: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replacing", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replacing", path)),
        Err(_) => Ok(()),
    }
}

/// Applies a directory's metadata once its children are in place.
fn finish(path: &Path, meta: &fs::Metadata, owners: Owners) -> Result<(), ExportError> {
    let f = fs::File::open(path).map_err(io_err("opening", path))?;
    finish_open(f, path, meta, owners)
}

/// mtime first (through the handle, while the entry is still ours to change), then owner, then
/// mode (a chown clears setuid/setgid).
fn finish_open(
    f: fs::File,
    path: &Path,
    meta: &fs::Metadata,
    owners: Owners,
) -> Result<(), ExportError> {
    let modified = meta.modified().map_err(io_err("reading mtime of", path))?;
    f.set_modified(modified)
        .map_err(io_err("setting mtime of", path))?;
    chown_if_permitted(path, meta, owners)?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("setting mode of", path))
}

fn chown_if_permitted(path: &Path, meta: &fs::Metadata, owners: Owners) -> Result<(), ExportError> {
    // Files stay the caller's, as BuildKit's client makes them when it receives an export,
    // unless the caller asks to keep the image's.
    if !owners.keep {
        return Ok(());
    }
    let current = fs::symlink_metadata(path).map_err(io_err("reading metadata of", path))?;
    if current.uid() == meta.uid() && current.gid() == meta.gid() {
        return Ok(());
    }
    match lchown(path, Some(meta.uid()), Some(meta.gid())) {
        Ok(()) => Ok(()),
        // Unprivileged: the files stay the caller's.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) if e.raw_os_error() == Some(22) => Ok(()), // EINVAL: id not mapped in this userns
        Err(e) => Err(io_err("changing owner of", path)(e)),
    }
}
