//! Exporters: the last step of a build. Built layer blobs and an image configuration become an
//! image (config, manifest, sha256 digests), then an OCI layout (directory or tar), a `docker load`
//! tar, or a plain directory; plus the `--metadata-file` and `--iidfile` buildx writes.

pub mod config;
mod image;
mod json;
mod local;
mod restamp;
pub(crate) mod time;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifestBuilder, MediaType};
use sha2::Digest as _;

pub use image::{
    image_records, make_image, needs_compression, push_image, record_image, stored_for_push,
    with_compression, write_image_blobs,
};
pub use local::export_local;
pub use restamp::{Restamped, restamp, restamps_needed};
pub use time::parse_rfc3339;
pub use write::{
    is_stdout, write_docker_tar, write_docker_tar_to, write_fs_tar, write_oci_dir, write_oci_tar,
    write_oci_tar_to,
};

/// An export that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The layers do not match the configuration's `rootfs.diff_ids`.
    #[error(
        "layer {index}: config rootfs.diff_ids has {expected}, the layer's diff_id is {actual}"
    )]
    DiffIdMismatch {
        /// Position of the layer.
        index: usize,
        /// What the configuration lists (or `<none>`).
        expected: String,
        /// What the layer says.
        actual: String,
    },
    /// The configuration lists a different number of layers than were given.
    #[error("config rootfs.diff_ids lists {expected} layers, {actual} layer blobs were given")]
    LayerCount {
        /// Entries in `rootfs.diff_ids`.
        expected: usize,
        /// Layer blobs given.
        actual: usize,
    },
    /// A digest that is not sha256.
    #[error("unsupported digest {digest}: only sha256 is written")]
    Algorithm {
        /// The digest.
        digest: String,
    },
    /// A blob on disk does not hash to its recorded digest or size.
    #[error(
        "blob {path}: expected {expected} ({expected_size} bytes), read {actual} ({actual_size} bytes)"
    )]
    BlobMismatch {
        /// The blob file.
        path: PathBuf,
        /// Recorded digest.
        expected: String,
        /// Digest of what was read.
        actual: String,
        /// Recorded size.
        expected_size: u64,
        /// Bytes read.
        actual_size: u64,
    },
    /// A `SOURCE_DATE_EPOCH` or history timestamp that cannot be represented.
    #[error("bad timestamp {value:?}: {reason}")]
    Timestamp {
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Building or serialising an image document failed.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// Which document.
        what: &'static str,
        /// The serialiser's message.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The store refused a read or write.
    #[error(transparent)]
    Store(#[from] forge_snapshotter::store::StoreError),
    /// The registry refused the push.
    #[error("pushing {tags}: {source}")]
    Push {
        /// The names pushed, comma-separated.
        tags: String,
        /// What the registry client reported.
        #[source]
        source: Box<forge_snapshotter::registry::PushError>,
    },
    /// A layer from the cache could not be re-stamped to the build's SOURCE_DATE_EPOCH.
    #[error(
        "re-stamping layer {diff_id} (written with SOURCE_DATE_EPOCH {}) to SOURCE_DATE_EPOCH {}",
        rule.from.map_or("unset".to_string(), |e| e.to_string()),
        rule.to
    )]
    Restamp {
        /// The layer's diff_id as the cache records it.
        diff_id: String,
        /// From which epoch to which.
        rule: forge_snapshotter::restamp::Restamp,
        /// What the tar rewrite met.
        #[source]
        source: forge_snapshotter::layer::LayerError,
    },
    /// Anything else that makes the export impossible, said in words.
    #[error("{0}")]
    Invalid(String),
    /// An entry the local exporter cannot reproduce here.
    #[error("{path}: cannot export {kind}")]
    UnsupportedFile {
        /// The entry.
        path: PathBuf,
        /// Its type.
        kind: &'static str,
    },
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { op, path, source }
}

/// A compressed (or not) layer tarball already on disk, as the layer differ produced it.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The blob file; it is streamed, never held in memory.
    pub path: PathBuf,
    /// sha256 of the blob as stored.
    pub digest: Digest,
    /// sha256 of the uncompressed tar (what `rootfs.diff_ids` lists).
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Its media type, OCI or Docker flavoured; it is translated to the manifest's flavour.
    pub media_type: MediaType,
}

/// Which family of media types the manifest and its descriptors use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `application/vnd.oci.image.manifest.v1+json` and friends (BuildKit's default for images).
    #[default]
    Oci,
    /// Docker schema 2 (`application/vnd.docker.distribution.manifest.v2+json`), what
    /// `-o type=docker` writes by default.
    Docker,
}

/// How the image documents are assembled.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Media-type family.
    pub format: ManifestFormat,
    /// `SOURCE_DATE_EPOCH` in seconds: the config's `created` becomes this instant and no history
    /// entry is left newer than it (BuildKit's clamping), so two builds agree byte for byte.
    pub source_date_epoch: Option<i64>,
}

/// An assembled image: its serialised documents and the layer blobs they reference.
#[derive(Debug, Clone)]
pub struct Image {
    config_json: Vec<u8>,
    config: Descriptor,
    manifest_json: Vec<u8>,
    manifest: Descriptor,
    layers: Vec<(LayerBlob, Descriptor)>,
    created: Option<String>,
    source_date_epoch: Option<i64>,
}

impl Image {
    /// The configuration exactly as written (its sha256 is the image ID).
    pub fn config_json(&self) -> &[u8] {
        &self.config_json
    }

    /// The configuration's descriptor.
    pub fn config_descriptor(&self) -> &Descriptor {
        &self.config
    }

    /// The manifest exactly as written.
    pub fn manifest_json(&self) -> &[u8] {
        &self.manifest_json
    }

    /// The manifest's descriptor (its digest is `containerimage.digest`).
    pub fn manifest_descriptor(&self) -> &Descriptor {
        &self.manifest
    }

    /// The layers and their manifest descriptors, base first.
    pub fn layers(&self) -> impl Iterator<Item = (&LayerBlob, &Descriptor)> {
        self.layers.iter().map(|(b, d)| (b, d))
    }

    /// The image ID as `docker images --no-trunc` and buildx's `--iidfile` show it: the config digest.
    pub fn id(&self) -> &Digest {
        self.config.digest()
    }

    /// The config's `created` timestamp, when it has one.
    pub fn created(&self) -> Option<&str> {
        self.created.as_deref()
    }
}

/// sha256 of `bytes` as an OCI digest.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    format!("sha256:{hex}")
        .parse()
        .expect("a sha256 hex string is a valid digest")
}

fn require_sha256(d: &Digest) -> Result<(), ExportError> {
    if d.algorithm().as_ref() != "sha256" {
        return Err(ExportError::Algorithm {
            digest: d.to_string(),
        });
    }
    Ok(())
}

/// The compression of a layer, whatever family its media type is written in.
fn layer_type(given: &MediaType, format: ManifestFormat) -> MediaType {
    let s = given.to_string();
    let compression = if s.ends_with("gzip") {
        "gzip"
    } else if s.ends_with("zstd") {
        "zstd"
    } else if s.ends_with(".tar") || s.ends_with(".diff.tar") {
        ""
    } else {
        return given.clone();
    };
    match (format, compression) {
        (ManifestFormat::Oci, "gzip") => MediaType::ImageLayerGzip,
        (ManifestFormat::Oci, "zstd") => MediaType::ImageLayerZstd,
        (ManifestFormat::Oci, _) => MediaType::ImageLayer,
        (ManifestFormat::Docker, "gzip") => {
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into())
        }
        // Not in the Docker spec; the name BuildKit and containerd use for it.
        (ManifestFormat::Docker, "zstd") => {
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.zstd".into())
        }
        (ManifestFormat::Docker, _) => {
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar".into())
        }
    }
}

/// Builds the config and manifest for `layers` (base first) on top of an oci-spec `config`; see
/// [`assemble_json`], which this is.
pub fn assemble(
    config: ImageConfiguration,
    layers: Vec<LayerBlob>,
    options: &ImageOptions,
) -> Result<Image, ExportError> {
    assemble_json(&config, layers, options)
}

/// Builds the config and manifest for `layers` (base first) on top of `config`, any serialisable
/// image configuration (a `serde_json::Value` or a typed document such as
/// [`crate::driver::image::ConfigFile`], which carries the Docker fields oci-spec lacks:
/// `Healthcheck`, `Shell`, `OnBuild`).
///
/// The configuration's `rootfs.diff_ids` must list the layers' diff_ids in order. With
/// `source_date_epoch` the config's `created` is that instant and later history timestamps are
/// clamped to it. Both documents are serialised canonically (members in the order `config`
/// serialises them, Go-style sorted maps, compact), so the same inputs always give the same digests.
pub fn assemble_json<T: serde::Serialize + ?Sized>(
    config: &T,
    layers: Vec<LayerBlob>,
    options: &ImageOptions,
) -> Result<Image, ExportError> {
    let mut config = json::Ordered::from_serialize(config).map_err(encode("image config"))?;
    if !config.is_object() {
        return Err(ExportError::Encode {
            what: "image config",
            reason: "not a JSON object".into(),
        });
    }
    let diff_ids: Vec<String> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .map(|d| {
            d.items()
                .iter()
                .map(|i| i.as_str().unwrap_or("<not a string>").to_string())
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(ExportError::LayerCount {
            expected: diff_ids.len(),
            actual: layers.len(),
        });
    }
    for (index, (want, layer)) in diff_ids.iter().zip(&layers).enumerate() {
        require_sha256(&layer.digest)?;
        require_sha256(&layer.diff_id)?;
        if want != layer.diff_id.as_ref() {
            return Err(ExportError::DiffIdMismatch {
                index,
                expected: want.clone(),
                actual: layer.diff_id.to_string(),
            });
        }
    }
    if let Some(epoch) = options.source_date_epoch {
        let stamp = time::rfc3339(epoch)?;
        config.set("created", json::Ordered::string(&stamp));
        if let Some(history) = config.get_mut("history") {
            for h in history.items_mut() {
                let newer = match h.get("created").and_then(json::Ordered::as_str) {
                    None => true,
                    Some(c) => time::parse_rfc3339(c).is_none_or(|t| t > (epoch, 0)),
                };
                if newer {
                    h.set("created", json::Ordered::string(&stamp));
                }
            }
        }
    }
    let created = config
        .get("created")
        .and_then(json::Ordered::as_str)
        .map(str::to_string);

    let config_json = json::to_canonical_vec(&config).map_err(encode("image config"))?;
    wrap_config(config_json, created, layers, options)
}

/// What a failed serialisation of `what` is.
fn encode(what: &'static str) -> impl Fn(serde_json::Error) -> ExportError {
    move |e| ExportError::Encode {
        what,
        reason: e.to_string(),
    }
}

/// The image whose config is the document `config_json`, byte for byte, and whose layers are
/// `layers` (in the config's order): its manifest made around them.
pub fn wrap_config(
    config_json: Vec<u8>,
    created: Option<String>,
    layers: Vec<LayerBlob>,
    options: &ImageOptions,
) -> Result<Image, ExportError> {
    let (manifest_type, config_type) = match options.format {
        ManifestFormat::Oci => (MediaType::ImageManifest, MediaType::ImageConfig),
        ManifestFormat::Docker => (
            MediaType::Other("application/vnd.docker.distribution.manifest.v2+json".into()),
            MediaType::Other("application/vnd.docker.container.image.v1+json".into()),
        ),
    };
    let config_desc = Descriptor::new(
        config_type,
        config_json.len() as u64,
        sha256_digest(&config_json),
    );
    let layer_descs: Vec<Descriptor> = layers
        .iter()
        .map(|l| {
            Descriptor::new(
                layer_type(&l.media_type, options.format),
                l.size,
                l.digest.clone(),
            )
        })
        .collect();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(manifest_type.clone())
        .config(config_desc.clone())
        .layers(layer_descs.clone())
        .build()
        .map_err(|e| ExportError::Encode {
            what: "image manifest",
            reason: e.to_string(),
        })?;
    let manifest_json = json::to_canonical_vec(&manifest).map_err(encode("image manifest"))?;
    let manifest_desc = Descriptor::new(
        manifest_type,
        manifest_json.len() as u64,
        sha256_digest(&manifest_json),
    );
    Ok(Image {
        config_json,
        config: config_desc,
        manifest_json,
        manifest: manifest_desc,
        layers: layers.into_iter().zip(layer_descs).collect(),
        created,
        source_date_epoch: options.source_date_epoch,
    })
}

/// The `--metadata-file` document for an exported image, as buildx writes it: keys
/// `containerimage.config.digest`, `containerimage.descriptor` (the manifest descriptor, annotated
/// with `config.digest` and `org.opencontainers.image.created`), `containerimage.digest` and, when
/// the image is named, `image.name` (names joined by commas). Keys sorted, two-space indent.
pub fn metadata_json(image: &Image, names: &[String]) -> Vec<u8> {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "config.digest".to_string(),
        serde_json::Value::String(image.id().to_string()),
    );
    if let Some(created) = image.created() {
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            serde_json::Value::String(created.to_string()),
        );
    }
    let mut descriptor = BTreeMap::new();
    descriptor.insert(
        "annotations",
        serde_json::to_value(annotations).unwrap_or_default(),
    );
    descriptor.insert(
        "digest",
        serde_json::Value::String(image.manifest.digest().to_string()),
    );
    descriptor.insert(
        "mediaType",
        serde_json::Value::String(image.manifest.media_type().to_string()),
    );
    descriptor.insert("size", serde_json::Value::from(image.manifest.size()));
    let mut doc: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    doc.insert(
        "containerimage.config.digest",
        serde_json::Value::String(image.id().to_string()),
    );
    doc.insert(
        "containerimage.descriptor",
        serde_json::to_value(descriptor).unwrap_or_default(),
    );
    doc.insert(
        "containerimage.digest",
        serde_json::Value::String(image.manifest.digest().to_string()),
    );
    if !names.is_empty() {
        doc.insert("image.name", serde_json::Value::String(names.join(",")));
    }
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// Writes [`metadata_json`] to `path`.
pub fn write_metadata_file(
    path: &Path,
    image: &Image,
    names: &[String],
) -> Result<(), ExportError> {
    std::fs::write(path, metadata_json(image, names)).map_err(io_err("writing", path))
}

/// Writes the `--iidfile`: the config digest (`sha256:...`), no newline, as buildx does for an image.
pub fn write_iidfile(path: &Path, image: &Image) -> Result<(), ExportError> {
    std::fs::write(path, image.id().to_string()).map_err(io_err("writing", path))
}

/// The OCI layout annotations for one image name: `io.containerd.image.name` keeps the full name,
/// `org.opencontainers.image.ref.name` only its tag (`latest` when untagged), as containerd's and
/// Docker's exporters write them; `skopeo`'s `oci:DIR:TAG` looks the tag up.
pub(crate) fn name_annotations(name: &str) -> HashMap<String, String> {
    let tag = tag_of(name).unwrap_or("latest");
    HashMap::from([
        ("io.containerd.image.name".to_string(), name.to_string()),
        (
            "org.opencontainers.image.ref.name".to_string(),
            tag.to_string(),
        ),
    ])
}

/// The tag of `repo[:tag][@digest]`, if any (a `:` before the last `/` is a registry port).
pub(crate) fn tag_of(name: &str) -> Option<&str> {
    let name = name.split('@').next().unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(diff: &[u8]) -> LayerBlob {
        LayerBlob {
            path: PathBuf::from("/nonexistent"),
            digest: sha256_digest(b"compressed"),
            diff_id: sha256_digest(diff),
            size: 10,
            media_type: MediaType::ImageLayerGzip,
        }
    }

    #[test]
    fn raw_json_config_is_checked_and_clamped() {
        let layer = blob(b"tar");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Shell": ["/bin/ash", "-c"], "Healthcheck": {"Test": ["NONE"]}},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
            "history": [{"created": null, "created_by": "RUN x"}, {"created_by": "CMD y", "empty_layer": true}],
        });
        let options = ImageOptions {
            source_date_epoch: Some(86_400),
            ..Default::default()
        };
        let image = assemble_json(&config, vec![layer.clone()], &options).unwrap();
        let v: serde_json::Value = serde_json::from_slice(image.config_json()).unwrap();
        assert_eq!(v["created"], "1970-01-02T00:00:00Z");
        assert_eq!(v["history"][0]["created"], "1970-01-02T00:00:00Z");
        assert_eq!(v["history"][1]["created"], "1970-01-02T00:00:00Z");
        assert_eq!(v["config"]["Shell"][0], "/bin/ash");
        assert_eq!(v["config"]["Healthcheck"]["Test"][0], "NONE");
        assert_eq!(image.created(), Some("1970-01-02T00:00:00Z"));

        // Without an epoch nothing is invented: no created time stays none.
        let plain = assemble_json(&config, vec![layer.clone()], &ImageOptions::default()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(plain.config_json()).unwrap();
        assert!(v.get("created").is_none() && v["history"][0]["created"].is_null());

        // Layers and rootfs must agree; a config without rootfs has no layers.
        let err = assemble_json(&config, vec![blob(b"other")], &options).unwrap_err();
        assert!(
            matches!(err, ExportError::DiffIdMismatch { index: 0, .. }),
            "{err}"
        );
        let bare = serde_json::json!({"architecture": "amd64", "os": "linux"});
        let err = assemble_json(&bare, vec![layer], &options).unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::LayerCount {
                    expected: 0,
                    actual: 1
                }
            ),
            "{err}"
        );
        let err = assemble_json(&serde_json::json!([1]), vec![], &options).unwrap_err();
        assert!(matches!(err, ExportError::Encode { .. }), "{err}");
    }
}
