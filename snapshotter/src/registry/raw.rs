//! The parts of a manifest, an index and an image config that a pull reads, as the registry
//! sends them (unknown fields are ignored).

use oci_client::manifest::OciDescriptor;
use serde::Deserialize;

use crate::platform::Platform;

/// The fields of a manifest or index forge reads; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawManifest {
    pub(super) schema_version: Option<i64>,
    pub(super) media_type: Option<String>,
    pub(super) config: Option<OciDescriptor>,
    pub(super) layers: Option<Vec<OciDescriptor>>,
    pub(super) manifests: Option<Vec<RawIndexEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawIndexEntry {
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: i64,
    pub(super) platform: Option<RawPlatform>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawPlatform {
    pub(super) architecture: String,
    pub(super) os: String,
    pub(super) variant: Option<String>,
}

impl RawPlatform {
    /// The platform as the index writes it (not normalised).
    pub(super) fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().unwrap_or_default(),
        }
    }

    pub(super) fn show(&self) -> String {
        self.platform().to_string()
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    pub(super) architecture: Option<String>,
    pub(super) os: Option<String>,
    pub(super) variant: Option<String>,
    pub(super) rootfs: Option<RawRootfs>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRootfs {
    pub(super) diff_ids: Vec<String>,
}

impl RawConfig {
    /// Its `rootfs.diff_ids`, when it has a rootfs and each of them reads as a digest.
    pub(super) fn diff_ids(&self) -> Option<Vec<oci_spec::image::Digest>> {
        let rootfs = self.rootfs.as_ref()?;
        rootfs.diff_ids.iter().map(|d| d.parse().ok()).collect()
    }
}
