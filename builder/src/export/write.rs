//! Writers for an assembled [`Image`]: an OCI image layout as a directory or as a tar, and the tar
//! `docker load` reads (an OCI layout plus `manifest.json` and `repositories`, as `docker save`
//! writes since Docker 25). Tars are deterministic: sorted names, numeric owners 0, one mtime.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use forge_snapshotter::compress::HashingReader;
use oci_spec::image::{Descriptor, ImageIndexBuilder, MediaType};

use super::{ExportError, Image, LayerBlob, io_err, name_annotations, tag_of};

/// One file of a layout: bytes made here, or a blob streamed from disk.
enum Source<'a> {
    Bytes(Vec<u8>),
    Blob(&'a LayerBlob),
}

/// The files of an OCI layout for `image`, sorted by name, `docker` adding Docker's own files.
fn layout_files<'a>(
    image: &'a Image,
    names: &[String],
    docker: bool,
) -> Result<Vec<(String, Source<'a>)>, ExportError> {
    let blob_name = |d: &oci_spec::image::Digest| format!("blobs/sha256/{}", d.digest());
    let mut files: BTreeMap<String, Source<'a>> = BTreeMap::new();
    files.insert(
        blob_name(image.config.digest()),
        Source::Bytes(image.config_json.clone()),
    );
    files.insert(
        blob_name(image.manifest.digest()),
        Source::Bytes(image.manifest_json.clone()),
    );
    for (blob, desc) in &image.layers {
        files.insert(blob_name(desc.digest()), Source::Blob(blob));
    }
    files.insert(
        "oci-layout".to_string(),
        Source::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    );
    let mut manifests = Vec::new();
    if names.is_empty() {
        manifests.push(image.manifest.clone());
    }
    for name in names {
        let mut d: Descriptor = image.manifest.clone();
        d.set_annotations(Some(name_annotations(name)));
        manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| ExportError::Encode {
            what: "image index",
            reason: e.to_string(),
        })?;
    let encode = |what: &'static str| {
        move |e: serde_json::Error| ExportError::Encode {
            what,
            reason: e.to_string(),
        }
    };
    files.insert(
        "index.json".to_string(),
        Source::Bytes(super::json::to_canonical_vec(&index).map_err(encode("image index"))?),
    );
    if docker {
        #[derive(serde::Serialize)]
        struct Item {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags")]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let tags: Vec<String> = names.iter().map(|n| docker_repo_tag(n)).collect();
        let item = Item {
            config: blob_name(image.config.digest()),
            repo_tags: (!tags.is_empty()).then_some(tags),
            layers: image
                .layers
                .iter()
                .map(|(_, d)| blob_name(d.digest()))
                .collect(),
        };
        files.insert(
            "manifest.json".to_string(),
            Source::Bytes(serde_json::to_vec(&[item]).map_err(encode("manifest.json"))?),
        );
        // The pre-1.10 index of tags: repository -> tag -> top layer, kept for old readers.
        if let Some((_, top)) = image.layers.last()
            && !names.is_empty()
        {
            let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for n in names {
                let full = docker_repo_tag(n);
                let (repo, tag) = full.rsplit_once(':').unwrap_or((&full, "latest"));
                repos
                    .entry(repo.to_string())
                    .or_default()
                    .insert(tag.to_string(), top.digest().digest().to_string());
            }
            files.insert(
                "repositories".to_string(),
                Source::Bytes(serde_json::to_vec(&repos).map_err(encode("repositories"))?),
            );
        }
    }
    Ok(files.into_iter().collect())
}

/// `docker.io/library/app:1` -> `app:1`, `reg:5000/app` -> `reg:5000/app:latest`: the familiar
/// form `docker save` puts in `RepoTags`.
fn docker_repo_tag(name: &str) -> String {
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    if tag_of(short).is_some() {
        short.to_string()
    } else {
        format!("{short}:latest")
    }
}

/// Streams a blob into `out`, checking its size and sha256 against what the image records.
fn copy_blob(blob: &LayerBlob, out: &mut dyn Write) -> Result<(), ExportError> {
    let mut reader = open_checked(blob)?;
    let copied = std::io::copy(&mut reader, out);
    check(reader, blob)?;
    copied.map_err(io_err("copying", &blob.path))?;
    Ok(())
}

/// `blob`'s file, read through a hash and cut one byte past the recorded size (so that a longer
/// file shows), for [`check`].
fn open_checked(blob: &LayerBlob) -> Result<HashingReader<std::io::Take<File>>, ExportError> {
    let file = File::open(&blob.path).map_err(io_err("opening", &blob.path))?;
    Ok(HashingReader::new(file.take(blob.size + 1)))
}

/// That what `read` passed is `blob`, whole: its size and sha256.
fn check<R: Read>(read: HashingReader<R>, blob: &LayerBlob) -> Result<(), ExportError> {
    let (digest, n) = read.finish();
    let actual = digest.to_string();
    if n != blob.size || actual != blob.digest.as_ref() {
        return Err(ExportError::BlobMismatch {
            path: blob.path.clone(),
            expected: blob.digest.to_string(),
            actual,
            expected_size: blob.size,
            actual_size: n,
        });
    }
    Ok(())
}

/// Replaces `dest` whole (see [`crate::replace`]).
fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    // A tar written as a stream names no file in its errors: here it is `dest`'s.
    let fill = |f: &mut File| {
        fill(f).map_err(|e| match e {
            ExportError::Io { op, path, source } if path == Path::new(TAR_STREAM) => {
                ExportError::Io {
                    op,
                    path: dest.to_path_buf(),
                    source,
                }
            }
            e => e,
        })
    };
    crate::replace::replace_file(dest, fill, |step, path, e| io_err(step.what(), path)(e))
}

/// What a tar written as a stream is called in its errors until its destination is known.
const TAR_STREAM: &str = "<tar stream>";

/// Writes `image` as an OCI image layout directory at `dest` (`-o type=oci,dest=DIR,tar=false`):
/// `oci-layout`, `index.json` (one manifest entry per name, annotated with its tag as
/// `org.opencontainers.image.ref.name` and the full name as `io.containerd.image.name`), and
/// `blobs/sha256/*`. `index.json` is replaced, not merged; blobs already present with the right
/// size are kept (their names are their digests).
pub fn write_oci_dir(image: &Image, names: &[String], dest: &Path) -> Result<(), ExportError> {
    let blobs = dest.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
    for (name, source) in layout_files(image, names, false)? {
        let path = dest.join(&name);
        match source {
            Source::Blob(blob) => {
                if std::fs::metadata(&path).is_ok_and(|m| m.len() == blob.size) {
                    continue;
                }
                write_atomic(&path, |f| copy_blob(blob, f))?;
            }
            Source::Bytes(bytes) => write_atomic(&path, |f| {
                f.write_all(&bytes).map_err(io_err("writing", &path))
            })?,
        }
    }
    Ok(())
}

/// Writes `image` as an OCI image layout in a tar stream (`-o type=oci,dest=FILE.tar`).
pub fn write_oci_tar_to(
    image: &Image,
    names: &[String],
    out: impl Write,
) -> Result<(), ExportError> {
    write_tar(image, layout_files(image, names, false)?, out)
}

/// [`write_oci_tar_to`] into the file `dest`, replaced atomically.
pub fn write_oci_tar(image: &Image, names: &[String], dest: &Path) -> Result<(), ExportError> {
    if is_stdout(dest) {
        return write_oci_tar_to(image, names, std::io::stdout().lock());
    }
    write_atomic(dest, |f| write_oci_tar_to(image, names, f))
}

/// `dest=-`: the tar goes to standard output (for `| docker load`, `| tar t`).
pub fn is_stdout(dest: &Path) -> bool {
    dest == Path::new("-")
}

/// Writes the tar `docker load` reads (`-o type=docker,dest=FILE.tar`): `manifest.json`
/// (`Config`, `RepoTags`, `Layers` pointing into `blobs/sha256/`), `repositories`, and the whole
/// OCI layout beside them. Layer blobs stay compressed, as BuildKit's docker exporter leaves them;
/// `docker load` decompresses them. Assemble the image with [`super::ManifestFormat::Docker`] for
/// Docker's media types.
pub fn write_docker_tar_to(
    image: &Image,
    names: &[String],
    out: impl Write,
) -> Result<(), ExportError> {
    write_tar(image, layout_files(image, names, true)?, out)
}

/// [`write_docker_tar_to`] into the file `dest`, replaced atomically.
pub fn write_docker_tar(image: &Image, names: &[String], dest: &Path) -> Result<(), ExportError> {
    if is_stdout(dest) {
        return write_docker_tar_to(image, names, std::io::stdout().lock());
    }
    write_atomic(dest, |f| write_docker_tar_to(image, names, f))
}

/// `-o type=tar,dest=FILE`: the image's filesystem (`rootfs`, mounted) as one tar, written as
/// forge writes a layer (and BuildKit its tar export): entries named from the root without `./`,
/// links kept as links, hard links as hard-link entries to the first name met, devices and fifos
/// as themselves, owners as numbers, xattrs and long names in PAX records; `-` for standard
/// output.
pub fn write_fs_tar(rootfs: &Path, dest: &Path) -> Result<(), ExportError> {
    use forge_snapshotter::diff::{Changes, walk};
    use forge_snapshotter::layer::{LayerOptions, LayerWriter};
    let fill = |out: &mut dyn Write| -> Result<(), ExportError> {
        let archiving = |e: &dyn std::fmt::Display| {
            io_err("archiving", rootfs)(std::io::Error::other(e.to_string()))
        };
        // Headers and small files come in small writes: buffered, not a write(2) each.
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, out);
        let options = LayerOptions {
            compression: forge_snapshotter::compress::Compression::None,
            source_date_epoch: None,
        };
        let mut writer = LayerWriter::new(&mut buffered, options).map_err(|e| archiving(&e))?;
        let everything = Changes::Compare {
            lower: None,
            upper: rootfs,
            copied_at: None,
        };
        walk(everything, &mut writer).map_err(|e| archiving(&e))?;
        writer.finish().map_err(|e| archiving(&e))?;
        buffered.flush().map_err(io_err("writing", dest))
    };
    if is_stdout(dest) {
        return fill(&mut std::io::stdout().lock());
    }
    write_atomic(dest, |f| fill(f))
}

fn write_tar(
    image: &Image,
    files: Vec<(String, Source<'_>)>,
    out: impl Write,
) -> Result<(), ExportError> {
    let mtime = image.source_date_epoch.unwrap_or(0).max(0) as u64;
    let tar_path = PathBuf::from(TAR_STREAM);
    let terr = |op| io_err(op, &tar_path);
    let header = |path: &str, kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_path(path).map(|_| {
            h.set_cksum();
            h
        })
    };
    let mut tar = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        let h = header(dir, tar::EntryType::Directory, 0, 0o755).map_err(terr("naming"))?;
        tar.append(&h, std::io::empty()).map_err(terr("writing"))?;
    }
    for (name, source) in files {
        match source {
            Source::Bytes(bytes) => {
                let h = header(&name, tar::EntryType::Regular, bytes.len() as u64, 0o644)
                    .map_err(terr("naming"))?;
                tar.append(&h, bytes.as_slice()).map_err(terr("writing"))?;
            }
            Source::Blob(blob) => {
                let h = header(&name, tar::EntryType::Regular, blob.size, 0o644)
                    .map_err(terr("naming"))?;
                // The header promises blob.size bytes: stream at most that many, hashing them as
                // they pass, and refuse the archive if they are not the recorded blob.
                let mut reader = open_checked(blob)?;
                let appended = tar.append(&h, &mut reader);
                check(reader, blob)?;
                appended.map_err(terr("writing"))?;
            }
        }
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(terr("finishing"))
}
