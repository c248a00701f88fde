//! The cache's format in a registry or an OCI layout: one OCI image manifest whose config blob is
//! the list of records and whose "layers" are every blob those records name, so that any registry
//! that stores images stores it (and keeps its blobs), and one that knows OCI 1.1 shows it as an
//! artifact of its own type. See "The build cache in a registry" in the README.

use std::collections::BTreeMap;

use forge_snapshotter::store::{Descriptor, Digest};
use serde::{Deserialize, Serialize};

use crate::ops::Built;
use crate::solver::CacheKey;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.forge.cache.v1";
/// The config blob: [`CacheConfig`] as JSON.
pub const CONFIG_TYPE: &str = "application/vnd.forge.cache.config.v1+json";
/// A cache mount's contents: a tar, zstd-compressed.
pub const MOUNT_TYPE: &str = "application/vnd.forge.cache.mount.v1.tar+zstd";
/// A test step's log (text lines) and its artifacts (a tar), as the store keeps them.
pub const TEST_LOG_TYPE: &str = "application/vnd.forge.test.log.v1";
pub const TEST_ARTIFACTS_TYPE: &str = "application/vnd.forge.test.artifacts.v1.tar";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The format version this forge writes and reads.
pub const VERSION: u32 = 1;
/// A config larger than this is refused rather than read (a million records is about 400 MB).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The config blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub version: u32,
    /// The forge that wrote it (`forge 0.1.0`), for people reading it.
    pub writer: String,
    pub records: Vec<CacheRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRecord>,
}

/// One step's result under its cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The blake3 cache key, 64 hex digits.
    pub key: String,
    /// The step, as the build described it (for people; not used to match).
    pub step: String,
    /// The result as forge's local cache records it: `{"kind":"fs","layers":[...]}` or
    /// `{"kind":"test",...}`. Kept as JSON so that one record this forge cannot read is skipped,
    /// not the whole cache.
    pub result: serde_json::Value,
}

/// The contents of one `RUN --mount=type=cache` id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub id: String,
    pub digest: Digest,
    pub size: u64,
}

/// A descriptor as OCI manifests write it (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl From<Descriptor> for OciDescriptor {
    fn from(d: Descriptor) -> Self {
        OciDescriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        }
    }
}

impl From<OciDescriptor> for Descriptor {
    fn from(d: OciDescriptor) -> Self {
        Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        }
    }
}

/// The manifest, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheManifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: OciDescriptor,
    pub layers: Vec<OciDescriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl CacheManifest {
    pub fn new(config: Descriptor, layers: Vec<Descriptor>, created: String) -> CacheManifest {
        CacheManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: config.into(),
            layers: layers.into_iter().map(Into::into).collect(),
            annotations: BTreeMap::from([("org.opencontainers.image.created".into(), created)]),
        }
    }

    /// Reads a manifest, refusing anything that is not a forge cache of a version this forge reads.
    pub fn parse(bytes: &[u8]) -> Result<CacheManifest, String> {
        let m: CacheManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a cache manifest: {e}"))?;
        if m.schema_version != 2 {
            return Err(format!("schemaVersion {} (want 2)", m.schema_version));
        }
        if m.config.media_type != CONFIG_TYPE {
            return Err(format!(
                "its config is {:?}, not a forge cache ({CONFIG_TYPE}); is this an image?",
                m.config.media_type
            ));
        }
        if m.config.size > MAX_CONFIG_BYTES {
            return Err(format!(
                "its record list is {} bytes (the limit is {MAX_CONFIG_BYTES})",
                m.config.size
            ));
        }
        Ok(m)
    }
}

impl CacheConfig {
    pub fn parse(bytes: &[u8]) -> Result<CacheConfig, String> {
        let c: CacheConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable record list: {e}"))?;
        if c.version != VERSION {
            return Err(format!(
                "format version {} (this forge reads {VERSION})",
                c.version
            ));
        }
        Ok(c)
    }
}

impl CacheRecord {
    pub fn new(key: &CacheKey, step: &str, built: &Built) -> CacheRecord {
        CacheRecord {
            key: key.to_hex(),
            step: step.to_string(),
            result: serde_json::to_value(built).expect("a result serialises"),
        }
    }
}

/// The descriptors of the blobs `built` names, with the media types the manifest lists them
/// under.
pub fn blob_descriptors(built: &Built) -> Vec<Descriptor> {
    match built {
        Built::Fs { layers } => layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
            })
            .collect(),
        Built::Local { .. } => Vec::new(),
        Built::Test { artifacts, log, .. } => artifacts
            .iter()
            .map(|a| Descriptor {
                media_type: TEST_ARTIFACTS_TYPE.into(),
                digest: a.digest.clone(),
                size: a.size,
            })
            .chain(log.iter().map(|l| Descriptor {
                media_type: TEST_LOG_TYPE.into(),
                digest: l.digest.clone(),
                size: l.size,
            }))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, byte: u8) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(&[byte]),
            size: 1,
        }
    }

    #[test]
    fn the_manifest_is_an_oci_image_manifest_with_forge_s_artifact_type() {
        let m = CacheManifest::new(
            desc(CONFIG_TYPE, 1),
            vec![desc("application/vnd.oci.image.layer.v1.tar+gzip", 2)],
            "2026-12-03T00:00:00Z".into(),
        );
        let json: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["artifactType"], ARTIFACT_TYPE);
        assert_eq!(json["config"]["mediaType"], CONFIG_TYPE);
        assert_eq!(json["layers"][0]["size"], 1);
        let back = CacheManifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn an_image_manifest_or_a_truncated_one_is_not_a_cache() {
        let image = CacheManifest {
            config: desc("application/vnd.oci.image.config.v1+json", 1).into(),
            ..CacheManifest::new(desc(CONFIG_TYPE, 1), vec![], String::new())
        };
        let err = CacheManifest::parse(&serde_json::to_vec(&image).unwrap()).unwrap_err();
        assert!(err.contains("not a forge cache"), "{err}");
        let whole = serde_json::to_vec(&CacheManifest::new(
            desc(CONFIG_TYPE, 1),
            vec![],
            "t".into(),
        ))
        .unwrap();
        let err = CacheManifest::parse(&whole[..whole.len() / 2]).unwrap_err();
        assert!(err.contains("not a cache manifest"), "{err}");
    }

    #[test]
    fn a_config_of_another_version_is_refused_with_both_versions() {
        let err = CacheConfig::parse(br#"{"version":7,"writer":"x","records":[]}"#).unwrap_err();
        assert!(err.contains('7') && err.contains('1'), "{err}");
    }
}
