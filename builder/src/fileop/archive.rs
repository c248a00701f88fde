//! ADD's local-archive rule: a regular file that decompresses (gzip, bzip2, xz, zstd or none) to
//! something whose first tar header parses is extracted into the destination instead of copied.
//! Entries are confined: `..` escapes and links pointing outside are refused, and every entry's
//! parent is resolved inside the destination root.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::meta;
use super::root::resolve;
use super::{FileOpError, Ids, io};
use crate::slashpath::join_root;

/// The compression an archive's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A bare tar (or not an archive at all).
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Recognises the compression from an archive's first bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn open_decompressed(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let mut f = File::open(path)?;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let f = BufReader::new(File::open(path)?);
    Ok(match sniff(&head[..n]) {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        Compression::Xz => Box::new(xz_reader(f)?),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(File::open(path)?)?),
    })
}

/// lzma-rs decodes into a writer; a thread feeding a pipe turns that into a reader so tar can
/// stream the archive instead of holding it in memory.
/// If the reader is dropped early (only the first header was wanted), the writer gets EPIPE and
/// the thread ends.
fn xz_reader(mut f: BufReader<File>) -> std::io::Result<impl Read + Send> {
    let (reader, mut writer) = std::io::pipe()?;
    std::thread::spawn(move || {
        // A decode error closes the pipe early; tar then reports a truncated archive.
        let _ = lzma_rs::xz_decompress(&mut f, &mut writer);
    });
    Ok(reader)
}

/// Whether `path` is an archive ADD extracts: a regular file whose first tar header parses.
pub(crate) fn is_archive(path: &Path) -> bool {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !md.file_type().is_file() {
        return false;
    }
    let Ok(r) = open_decompressed(path) else {
        return false;
    };
    let mut a = tar::Archive::new(r);
    let Ok(mut entries) = a.entries() else {
        return false;
    };
    matches!(entries.next(), Some(Ok(_)))
}

/// Extracts `src` (in `src_root`, followed) into the directory `dest` when it is an archive;
/// whether it was one.
pub(crate) fn unpack(
    src_root: &Path,
    src: &str,
    dest_root: &Path,
    dest: &str,
    owner: Option<Ids>,
) -> Result<bool, FileOpError> {
    let archive = resolve(src_root, src, true)?;
    if !is_archive(&archive) {
        return Ok(false);
    }
    let dest_dir = resolve(dest_root, &join_root(dest), true)?;
    meta::mkdir_all(dest_root, &dest_dir, 0o755, owner)?;
    // Device entries are kept: the snapshot is mounted nodev wherever a step sees it.
    extract(&archive, dest_root, &dest_dir, owner, Extract::Add)?;
    Ok(true)
}

/// What an archive is extracted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// `ADD`, into a snapshot: device and fifo entries are made (left out in a user namespace),
    /// and a `..` that climbs above the destination stays at its top, as BuildKit's extraction
    /// (chrooted into the destination) places it.
    Add,
    /// A build context on the host: a device or fifo entry is refused (there is no use for one,
    /// and forge would make it on the host), and so is a name that climbs out.
    Files,
    /// A job's artifacts, copied out to the host: as `Files`, and no file keeps its setuid or
    /// setgid bit. A job may `chmod 4755` whatever it likes (it may be root in its container),
    /// and forge may run as root: the bit would hand any local user who can reach the artifacts
    /// directory the job's chosen program with forge's rights. A file copied out of a container
    /// (`docker cp`) or a zip of artifacts does not keep it either.
    Artifacts,
}

/// Extracts every entry of `archive` below `dest_dir` (inside `dest_root`), as `purpose` says.
pub fn extract(
    archive: &Path,
    dest_root: &Path,
    dest_dir: &Path,
    owner: Option<Ids>,
    purpose: Extract,
) -> Result<(), FileOpError> {
    let devices = purpose == Extract::Add;
    let r = open_decompressed(archive).map_err(io("opening archive", archive))?;
    let mut a = tar::Archive::new(r);
    let entries = a.entries().map_err(io("reading archive", archive))?;
    // Directory times are set last: creating entries inside a directory changes its mtime.
    let mut dir_times: Vec<(PathBuf, tar::Header)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(io("reading archive", archive))?;
        // The entry's own PAX records: a sparse file's real name, size and map, and xattrs.
        let records: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(records)) => records
                .flatten()
                .filter_map(|r| Some((r.key().ok()?.to_string(), r.value_bytes().to_vec())))
                .collect(),
            _ => Vec::new(),
        };
        let written_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse_as = |name: &str, reason: &str| FileOpError::ArchiveEntry {
            archive: archive.to_path_buf(),
            entry: name.to_string(),
            reason: reason.to_string(),
        };
        let sparse = super::sparse::from_pax(&records).map_err(|r| refuse_as(&written_name, &r))?;
        let name = sparse
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or(written_name);
        let refuse = |reason: &str| refuse_as(&name, reason);
        let rel = match purpose {
            Extract::Add => clamped(&name),
            Extract::Files | Extract::Artifacts => {
                confined(&name).ok_or_else(|| refuse("its path leaves the destination"))?
            }
        };
        if rel.is_empty() {
            continue;
        }
        // The entry's parent, its symlinks followed inside the destination directory as if it
        // were the root (as BuildKit's extraction, chrooted into it, follows them): a link the
        // archive made (`etc -> /etc`) leads back into the destination, never to the image's
        // own `/etc` beside it.
        let parent = Path::new(&rel)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_path = resolve(dest_dir, &parent, true).map_err(|e| match e {
            super::root::RootError::TooManyLinks { .. } => refuse(&format!(
                "too many levels of symbolic links under {parent:?} (a link the archive made \
                 leads back into it)"
            )),
            e => e.into(),
        })?;
        meta::mkdir_all(dest_root, &parent_path, 0o755, owner)?;
        let file_name = Path::new(&rel)
            .file_name()
            .expect("a cleaned relative path has a name");
        let target = parent_path.join(file_name);
        let header = entry.header().clone();
        let kind = header.entry_type();
        let kept_bits = match purpose {
            Extract::Artifacts => 0o1777,
            Extract::Add | Extract::Files => 0o7777,
        };
        let mode = header.mode().map_err(|e| refuse(&e.to_string()))? & kept_bits;
        if !kind.is_dir() {
            clear_for_file(&target)?;
        }
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        std::fs::remove_file(&target).map_err(io("replacing", &target))?;
                        std::fs::create_dir(&target).map_err(io("creating directory", &target))?;
                    }
                    Err(_) => {
                        std::fs::create_dir(&target).map_err(io("creating directory", &target))?
                    }
                }
                dir_times.push((target.clone(), header.clone()));
            }
            // The tar crate reads an old GNU sparse entry (type `S`) as its whole file, holes as
            // zeros; the PAX forms are read here.
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut out = File::create(&target).map_err(io("creating", &target))?;
                match &sparse {
                    Some(sparse) => super::sparse::write(sparse, &mut entry, &mut out)
                        .map_err(|r| refuse(&r))?,
                    None => {
                        std::io::copy(&mut entry, &mut out)
                            .map_err(io("reading archive", archive))?;
                    }
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| refuse(&e.to_string()))?
                    .ok_or_else(|| refuse("a symlink without a target"))?;
                let link_s = link.to_string_lossy().into_owned();
                // Artifacts land on the host, where a person or a web page may follow a link:
                // one whose target, taken from the entry's directory, leaves the extraction
                // directory is refused there. Elsewhere a link is a link, as BuildKit keeps it:
                // in a snapshot (`ADD`) or a context (which forge only reads confined to it, as
                // it reads a directory context's links), every later entry resolves its parents
                // inside the destination, whatever the links say.
                let joined = if link_s.starts_with('/') {
                    link_s.clone()
                } else {
                    format!(
                        "{}/{link_s}",
                        Path::new(&rel)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    )
                };
                if purpose == Extract::Artifacts && confined(&joined).is_none() {
                    return Err(refuse("its symlink target leaves the destination"));
                }
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io("creating symlink", &target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| refuse(&e.to_string()))?
                    .ok_or_else(|| refuse("a hardlink without a target"))?;
                let link_rel = confined(&link.to_string_lossy())
                    .ok_or_else(|| refuse("its hardlink target leaves the destination"))?;
                let src = resolve(dest_dir, &link_rel, false)?;
                if std::fs::symlink_metadata(&src).is_err() {
                    return Err(refuse(&format!(
                        "its hardlink target {:?} is not an earlier entry",
                        link.to_string_lossy()
                    )));
                }
                std::fs::hard_link(&src, &target).map_err(io("linking", &target))?;
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo if !devices => {
                return Err(refuse("device and fifo entries are not accepted here"));
            }
            // In a user namespace no device can be made: left out, as rootless BuildKit (and
            // containerd's unpacker) leave them.
            tar::EntryType::Char | tar::EntryType::Block
                if forge_snapshotter::userns::in_user_namespace() =>
            {
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                use nix::sys::stat::{Mode, SFlag, makedev, mknod};
                let kind = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                mknod(
                    &target,
                    kind,
                    Mode::from_bits_truncate(mode),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| io("creating node", &target)(std::io::Error::from(e)))?;
            }
            // Extension headers: the reader applies them to the entries they come before.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            // Left out silently, an entry would be a file missing from the image with nothing
            // said (a volume label, a multi-volume continuation, a vendor's own type).
            other => {
                return Err(refuse(&format!(
                    "its entry type {:?} ({}) has no file form forge can make",
                    char::from(other.as_byte()),
                    other.as_byte()
                )));
            }
        }
        let ids = owner.unwrap_or(Ids {
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
        });
        meta::chown(&target, Some(ids))?;
        if kind != tar::EntryType::Symlink {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &target))?;
        }
        // After the chown, which would clear `security.capability`; as far as this process may
        // set each (BuildKit's extraction too sets xattrs on a best-effort basis: `trusted.*`
        // needs a privilege a rootless build lacks).
        // Not on artifacts, which land on the host: a job's archive could give a program
        // there file capabilities.
        if purpose != Extract::Artifacts {
            set_xattrs(&target, &records);
        }
        // A link's own time too (never its target's), as docker keeps it.
        set_mtime(&target, &header)?;
    }
    for (d, h) in dir_times.iter().rev() {
        set_mtime(d, h)?;
    }
    Ok(())
}

/// Sets the xattrs an entry's PAX records carry (`SCHILY.xattr.NAME`, as GNU tar, bsdtar and Go's
/// archive/tar write them) on `target`, each as far as this process may.
fn set_xattrs(target: &Path, records: &[(String, Vec<u8>)]) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return;
    };
    for (key, value) in records {
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        let Ok(name) = std::ffi::CString::new(name) else {
            continue;
        };
        // SAFETY: the path and name are NUL-terminated and the value's pointer and length
        // describe a live buffer.
        unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            );
        }
    }
}

/// An entry name made relative and cleaned, a `..` at the top staying there.
fn clamped(name: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// A link target made relative and cleaned, or `None` when `..` would climb above the top.
fn confined(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// Removes a non-directory in the way of a new entry (an archive's later entry wins).
fn clear_for_file(target: &Path) -> Result<(), FileOpError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(target).map_err(io("replacing", target)),
        Ok(_) => std::fs::remove_file(target).map_err(io("replacing", target)),
        Err(_) => Ok(()),
    }
}

fn set_mtime(p: &Path, h: &tar::Header) -> Result<(), FileOpError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io("setting times of", p)(std::io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h
    }

    fn own() -> Option<Ids> {
        Some(Ids {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        })
    }

    /// `ADD` of an archive whose entries carry xattrs (`SCHILY.xattr.*`, as `tar --xattrs`
    /// writes them) dropped them all; BuildKit sets them. Artifacts, which land on the host, get
    /// none.
    #[test]
    fn an_entrys_xattrs_are_set_except_on_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        if xattr_of(&probe).is_none() && set_user_xattr(&probe).is_err() {
            eprintln!("SKIP: {} keeps no user xattrs", dir.path().display());
            return;
        }
        let tar_path = dir.path().join("x.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        b.append_pax_extensions([("SCHILY.xattr.user.forge", &b"kept"[..])])
            .unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 2), "f", &b"hi"[..])
            .unwrap();
        b.finish().unwrap();
        drop(b);
        for (purpose, want) in [
            (Extract::Add, Some(b"kept".to_vec())),
            (Extract::Artifacts, None),
        ] {
            let out = dir.path().join(format!("{purpose:?}"));
            std::fs::create_dir(&out).unwrap();
            extract(&tar_path, &out, &out, own(), purpose).unwrap();
            assert_eq!(std::fs::read(out.join("f")).unwrap(), b"hi");
            assert_eq!(xattr_of(&out.join("f")), want, "{purpose:?}");
        }
    }

    /// An entry of a type forge makes nothing of (here GNU's volume label, `V`) was left out
    /// without a word: a file missing from the image. It is refused, naming it.
    #[test]
    fn an_entry_of_an_unknown_type_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("v.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        b.append_data(&mut header(tar::EntryType::new(b'V'), 0), "label", &b""[..])
            .unwrap();
        b.finish().unwrap();
        drop(b);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let e = extract(&tar_path, &out, &out, own(), Extract::Add).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("label") && text.contains("'V'"), "{text}");
    }

    fn set_user_xattr(path: &Path) -> std::io::Result<()> {
        set_xattrs(path, &[("SCHILY.xattr.user.probe".into(), b"1".to_vec())]);
        xattr_of_named(path, "user.probe")
            .map(|_| ())
            .ok_or_else(|| std::io::Error::other("no user xattrs"))
    }

    fn xattr_of(path: &Path) -> Option<Vec<u8>> {
        xattr_of_named(path, "user.forge")
    }

    fn xattr_of_named(path: &Path, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: NUL-terminated path and name; the buffer's pointer and length are live.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (got >= 0).then(|| {
            buf.truncate(got as usize);
            buf
        })
    }
}
