//! Registry push notifications: Docker Hub webhooks and CNCF Distribution envelopes.

use serde_json::Value;

use crate::hooks::parse::json_object;
use crate::hooks::{HookError, RegistryPush};

fn bad(msg: impl Into<String>) -> HookError {
    HookError::BadPayload(msg.into())
}

fn opt_string(v: Option<&Value>, key: &str) -> Option<String> {
    v?.get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Media types of manifests and indexes (Docker schema 1/2, manifest lists, OCI).
fn is_manifest_media_type(mt: &str) -> bool {
    let mt = mt.split(';').next().unwrap_or(mt).trim();
    matches!(
        mt,
        "application/vnd.docker.distribution.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v1+prettyjws"
            | "application/vnd.docker.distribution.manifest.v2+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
            | "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.oci.image.index.v1+json"
    )
}

/// One entry per pushed manifest, from a Docker Hub webhook (`push_data` + `repository`) or a
/// Distribution notification envelope (`events`, Content-Type
/// `application/vnd.docker.distribution.events.v1+json`, `v2+json` since distribution v3).
///
/// Distribution events other than `push` (pull, mount, delete) are skipped, and so are pushes
/// of blobs (layers, configs): an event counts when its `target.mediaType` is a manifest or
/// index type, or, for a media type this list does not know, when `target.url` points at
/// `/manifests/`. `host` is the event's `request.host`. A Docker Hub payload is one push of
/// `repository.repo_name` with host "docker.io" and no digest.
pub fn parse_registry(body: &[u8]) -> Result<Vec<RegistryPush>, HookError> {
    let v = json_object(body)?;
    if let Some(events) = v.get("events") {
        let events = events
            .as_array()
            .ok_or_else(|| bad("`events` is not an array"))?;
        let mut out = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            if ev.get("action").and_then(Value::as_str) != Some("push") {
                continue;
            }
            let target = ev
                .get("target")
                .filter(|t| t.is_object())
                .ok_or_else(|| bad(format!("events[{i}] has no `target` object")))?;
            let media_type = opt_string(Some(target), "mediaType");
            let url = opt_string(Some(target), "url").unwrap_or_default();
            let manifest = match media_type.as_deref() {
                Some(mt) if is_manifest_media_type(mt) => true,
                _ => url.contains("/manifests/"),
            };
            if !manifest {
                continue;
            }
            let repository = opt_string(Some(target), "repository")
                .ok_or_else(|| bad(format!("events[{i}].target has no `repository`")))?;
            out.push(RegistryPush {
                repository,
                host: opt_string(ev.get("request"), "host"),
                tag: opt_string(Some(target), "tag"),
                digest: opt_string(Some(target), "digest"),
            });
        }
        Ok(out)
    } else if let Some(push_data) = v.get("push_data") {
        let repository = opt_string(v.get("repository"), "repo_name")
            .ok_or_else(|| bad("Docker Hub payload has no `repository.repo_name`"))?;
        Ok(vec![RegistryPush {
            repository,
            host: Some("docker.io".to_string()),
            tag: opt_string(Some(push_data), "tag"),
            digest: None,
        }])
    } else {
        Err(bad(
            "neither a Distribution envelope (`events`) nor a Docker Hub payload (`push_data`)",
        ))
    }
}
