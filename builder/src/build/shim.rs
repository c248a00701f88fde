//! TEMPORARY: minimal stand-ins for the image module's API until it lands (deleted at that merge).

use oci_spec::image::{Digest, ImageConfiguration};

use crate::export::{ExportError, Image, ImageOptions, LayerBlob, assemble};
use crate::graph::{History, ImageConfig};

#[derive(Debug, thiserror::Error)]
#[error("image config: {0}")]
pub struct ImageError(String);

pub fn config_from_json(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ImageError(e.to_string()))?;
    let c = &v["config"];
    let strs = |x: &serde_json::Value| -> Option<Vec<String>> {
        x.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
    };
    Ok(ImageConfig {
        os: v["os"].as_str().unwrap_or("linux").into(),
        architecture: v["architecture"].as_str().unwrap_or("amd64").into(),
        env: strs(&c["Env"]).unwrap_or_default(),
        user: c["User"].as_str().unwrap_or("").into(),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").into(),
        cmd: strs(&c["Cmd"]),
        entrypoint: strs(&c["Entrypoint"]),
        history: v["history"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| History {
                        created_by: h["created_by"].as_str().unwrap_or("").into(),
                        comment: h["comment"].as_str().unwrap_or("").into(),
                        empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ..ImageConfig::default()
    })
}

pub fn config_to_json(cfg: &ImageConfig, diff_ids: &[Digest], created: &str) -> serde_json::Value {
    serde_json::json!({
        "architecture": cfg.architecture,
        "os": cfg.os,
        "created": created,
        "config": {
            "Env": cfg.env,
            "User": cfg.user,
            "WorkingDir": cfg.working_dir,
            "Cmd": cfg.cmd,
            "Entrypoint": cfg.entrypoint,
            "Labels": cfg.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        "history": cfg.history.iter().map(|h| serde_json::json!({
            "created": created, "created_by": h.created_by, "comment": h.comment, "empty_layer": h.empty_layer
        })).collect::<Vec<_>>(),
    })
}

pub fn assemble_json(
    config: serde_json::Value,
    layers: Vec<LayerBlob>,
    options: &ImageOptions,
) -> Result<Image, ExportError> {
    let c: ImageConfiguration = serde_json::from_value(config).map_err(|e| ExportError::Encode {
        what: "config",
        reason: e.to_string(),
    })?;
    assemble(c, layers, options)
}
