//! Image configs across the build: a base image's config blob (OCI image config or Docker image
//! JSON) is read into the graph's [`ImageConfig`] the frontend starts a stage from, and the built
//! stage's config is written back out in the shape BuildKit's exporter gives it, for
//! [`crate::export::assemble_json`] to turn into an image.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use oci_spec::image::Digest;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::export::time;
use crate::graph::{Healthcheck, History, ImageConfig};

/// The comment of history entries made up for layers the history did not account for (BuildKit's
/// exporter uses this name, and tools reading history know it).
pub const EXPORTER_HISTORY_COMMENT: &str = "buildkit.exporter.image.v0";

/// A config blob that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not JSON, or a field of the wrong type.
    #[error("reading image config: {reason}")]
    Parse {
        /// The JSON parser's message (with line and column).
        reason: String,
    },
    /// A `rootfs.diff_ids` entry that is not a digest.
    #[error("image config rootfs.diff_ids[{index}] is {value:?}: {reason}")]
    DiffId {
        /// Its position.
        index: usize,
        /// The entry.
        value: String,
        /// Why it is not a digest.
        reason: String,
    },
    /// A creation time that cannot be written.
    #[error("image creation time: {0}")]
    Created(#[from] crate::export::ExportError),
}

/// A base image's config as read: what the stage inherits, plus what the image itself records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The config the stage starts from (history normalised against `diff_ids`).
    pub config: ImageConfig,
    /// `rootfs.diff_ids`, base layer first.
    pub diff_ids: Vec<Digest>,
    /// The image's own `created`, when it has one.
    pub created: Option<String>,
}

/// Reads a base image's config blob (OCI `application/vnd.oci.image.config.v1+json` or Docker's
/// `application/vnd.docker.container.image.v1+json`) into the graph's [`ImageConfig`].
/// Missing and `null` fields read as empty; Docker-only fields the graph has no place for
/// (`Hostname`, `container_config`, ...) are ignored.
pub fn config_from_json(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    Ok(read_base_config(bytes)?.config)
}

/// As [`config_from_json`], keeping the layers' diff_ids and the image's creation time.
///
/// When the config has a `rootfs`, its history is normalised against the layer count (see
/// [`normalize_history`]) so that this build's own entries, appended after it, line up with this
/// build's layers.
pub fn read_base_config(bytes: &[u8]) -> Result<BaseImage, ImageError> {
    let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| ImageError::Parse {
        reason: e.to_string(),
    })?;
    let diff_ids = match &file.rootfs {
        None => None,
        Some(r) => Some(
            r.diff_ids
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    value.parse::<Digest>().map_err(|e| ImageError::DiffId {
                        index,
                        value: value.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let created = file.created.clone();
    let mut config = file.into_image_config();
    if let Some(d) = &diff_ids {
        normalize_history(&mut config.history, d.len());
    }
    Ok(BaseImage {
        config,
        diff_ids: diff_ids.unwrap_or_default(),
        created,
    })
}

/// The built image's config document for `cfg` on `diff_ids` (base layer first), shaped as
/// BuildKit's exporter writes it; history entries without a time (this build's) get `created`,
/// as does the document. Pass it to [`crate::export::assemble_json`], which keeps its member
/// order and applies `SOURCE_DATE_EPOCH`.
pub fn image_config_file(cfg: &ImageConfig, diff_ids: &[Digest], created: &str) -> ConfigFile {
    ConfigFile::build(cfg, diff_ids, created)
}

/// The built image's config document when no `SOURCE_DATE_EPOCH` is given, its times taken as
/// BuildKit's exporter takes them (`normalizeLayersAndHistory`, `patchImageConfig`): an entry that
/// made a layer and has no time gets the layer's ([`crate::ops::Layer::created`], the time its
/// step ran, kept in the cache record), an entry without one gets the first such time after it or
/// else the one before, and the image's `created` is its last entry's. So an image whose steps all
/// came from the cache is the image they first made, byte for byte; `now` stands in only where no
/// entry has a time at all. `layer_times` go with `diff_ids`, base layer first.
pub fn image_config_file_from_layers(
    cfg: &ImageConfig,
    diff_ids: &[Digest],
    layer_times: &[Option<String>],
    now: &str,
) -> ConfigFile {
    let mut history = cfg.history.clone();
    normalize_history(&mut history, diff_ids.len());
    let mut layer_times = layer_times.iter();
    for h in history.iter_mut().filter(|h| !h.empty_layer) {
        // A time that does not read (a registry cache's record is anyone's) is no time.
        let time = layer_times
            .next()
            .cloned()
            .flatten()
            .filter(|t| time::parse_rfc3339(t).is_some());
        if h.created.is_none() {
            h.created = time;
        }
    }
    fill_history_times(&mut history);
    let created = history
        .last()
        .and_then(|h| h.created.clone())
        .unwrap_or_else(|| now.to_string());
    let mut with_history = cfg.clone();
    with_history.history = history;
    ConfigFile::build(&with_history, diff_ids, &created)
}

/// Gives every history entry without a time one of its neighbours', as BuildKit's exporter does:
/// the entries before the first layer this build made (a stage's first `ENV`, say) take that
/// layer's time rather than the base image's, later ones the time of the entry before them.
fn fill_history_times(history: &mut [History]) {
    let mut fill: Option<String> = None;
    let mut untimed_seen = false;
    for h in history.iter() {
        if let Some(t) = &h.created {
            fill = Some(t.clone());
            if untimed_seen {
                break;
            }
        } else {
            untimed_seen = true;
        }
    }
    let mut untimed_seen = false;
    for h in history.iter_mut() {
        match &h.created {
            Some(t) if untimed_seen => fill = Some(t.clone()),
            Some(_) => {}
            None => {
                untimed_seen = true;
                h.created = fill.clone();
            }
        }
    }
}

/// [`image_config_file`] as a JSON value. `serde_json::Value` sorts object members; prefer the
/// [`ConfigFile`] when the bytes matter (it writes members in BuildKit's order).
pub fn config_to_json(cfg: &ImageConfig, diff_ids: &[Digest], created: &str) -> serde_json::Value {
    serde_json::to_value(image_config_file(cfg, diff_ids, created))
        .expect("a config document is plain JSON")
}

/// The creation time to give [`image_config_file`]: `SOURCE_DATE_EPOCH` when set, otherwise now,
/// in the RFC 3339 form Go writes (fraction of a second kept, as BuildKit's timestamps have).
pub fn created_time(source_date_epoch: Option<i64>) -> Result<String, ImageError> {
    if let Some(epoch) = source_date_epoch {
        return Ok(time::rfc3339(epoch)?);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    Ok(time::rfc3339_nanos(secs, now.subsec_nanos())?)
}

/// Makes the non-empty history entries agree with `layers`, as BuildKit's exporter does: entries
/// beyond the last layer become empty ones; missing entries are appended (no time, no command,
/// [`EXPORTER_HISTORY_COMMENT`]). Without this, `docker history` pairs commands with the wrong
/// layers and some readers refuse the image.
pub fn normalize_history(history: &mut Vec<History>, layers: usize) {
    let mut seen = 0;
    for h in history.iter_mut() {
        if seen >= layers {
            h.empty_layer = true;
        }
        if !h.empty_layer {
            seen += 1;
        }
    }
    for _ in seen..layers {
        history.push(History {
            created: None,
            created_by: String::new(),
            comment: EXPORTER_HISTORY_COMMENT.into(),
            empty_layer: false,
        });
    }
}

/// One line of an image's history as `docker history` shows it: a history entry and the size of
/// the layer it made (`None` for an entry that made none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    pub created: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub layer_size: Option<u64>,
}

impl ConfigFile {
    /// The history newest first, each entry that made a layer paired with that layer's size
    /// (`layer_sizes`: the manifest's, base first), in order. Layers no entry accounts for get a
    /// line of their own, as [`normalize_history`] adds them when exporting; entries past the
    /// last layer made none.
    pub fn history_lines(&self, layer_sizes: &[u64]) -> Vec<HistoryLine> {
        let mut sizes = layer_sizes.iter();
        let mut lines: Vec<HistoryLine> = self
            .history
            .iter()
            .map(|h| HistoryLine {
                created: h.created.clone(),
                created_by: h.created_by.clone(),
                comment: h.comment.clone(),
                layer_size: if h.empty_layer {
                    None
                } else {
                    sizes.next().copied()
                },
            })
            .collect();
        lines.extend(sizes.map(|&size| HistoryLine {
            created: None,
            created_by: String::new(),
            comment: EXPORTER_HISTORY_COMMENT.into(),
            layer_size: Some(size),
        }));
        lines.reverse();
        lines
    }
}

/// An image config document, read from any image and written as BuildKit writes it: top-level
/// members sorted (BuildKit re-marshals them through a Go map), `config` in the Go struct's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub author: String,
    #[serde(default, deserialize_with = "null_default")]
    pub config: RunConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub history: Vec<HistoryEntry>,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub variant: String,
}

/// The `config` member: what a container of the image runs with. Member order is that of
/// Docker's image spec types (OCI's `ImageConfig`, then `Healthcheck`, `OnBuild`, `Shell`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub user: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "none_or_empty",
        deserialize_with = "str_slice"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "none_or_empty",
        deserialize_with = "str_slice"
    )]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub working_dir: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub stop_signal: String,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "null_default"
    )]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(
        default,
        rename = "OnBuild",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub on_build: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub shell: Vec<String>,
}

/// `Healthcheck`: durations in nanoseconds (Go's `time.Duration`), zero meaning "inherit".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub test: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub interval: u64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub timeout: u64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub start_period: u64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub start_interval: u64,
    #[serde(
        default,
        skip_serializing_if = "is_zero32",
        deserialize_with = "null_default"
    )]
    pub retries: u32,
}

/// One `history` entry, members in the OCI struct's order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub created_by: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub author: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub comment: String,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "null_default"
    )]
    pub empty_layer: bool,
}

/// `rootfs`: always `layers`, the uncompressed digests of the layers, base first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub typ: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

/// The `{}` values of `ExposedPorts` and `Volumes` (Go's `struct{}`); whatever a reader finds
/// there is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Empty)
    }
}

impl ConfigFile {
    /// The document for `cfg` on `diff_ids`, its history normalised against them.
    pub fn build(cfg: &ImageConfig, diff_ids: &[Digest], created: &str) -> ConfigFile {
        let mut history = cfg.history.clone();
        normalize_history(&mut history, diff_ids.len());
        let keys = |s: &BTreeSet<String>| s.iter().map(|k| (k.clone(), Empty)).collect();
        ConfigFile {
            architecture: cfg.architecture.clone(),
            author: cfg.author.clone(),
            config: RunConfig {
                user: cfg.user.clone(),
                exposed_ports: keys(&cfg.exposed_ports),
                env: cfg.env.clone(),
                entrypoint: cfg.entrypoint.clone(),
                cmd: cfg.cmd.clone(),
                volumes: keys(&cfg.volumes),
                working_dir: cfg.working_dir.clone(),
                labels: cfg.labels.clone(),
                stop_signal: cfg.stop_signal.clone(),
                args_escaped: cfg.args_escaped,
                healthcheck: cfg.healthcheck.as_ref().map(|h| HealthConfig {
                    test: h.test.clone(),
                    interval: h.interval_ns,
                    timeout: h.timeout_ns,
                    start_period: h.start_period_ns,
                    start_interval: h.start_interval_ns,
                    retries: h.retries,
                }),
                on_build: cfg.onbuild.clone(),
                shell: cfg.shell.clone(),
            },
            created: Some(created.to_string()),
            history: history
                .into_iter()
                .map(|h| HistoryEntry {
                    created: Some(h.created.unwrap_or_else(|| created.to_string())),
                    created_by: h.created_by,
                    author: String::new(),
                    comment: h.comment,
                    empty_layer: h.empty_layer,
                })
                .collect(),
            os: cfg.os.clone(),
            rootfs: Some(RootFs {
                typ: "layers".into(),
                diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
            }),
            variant: cfg.variant.clone(),
        }
    }

    /// What a stage built on this image inherits (history as recorded, not normalised).
    pub fn into_image_config(self) -> ImageConfig {
        let c = self.config;
        ImageConfig {
            os: self.os,
            architecture: self.architecture,
            variant: self.variant,
            author: self.author,
            env: c.env,
            user: c.user,
            working_dir: c.working_dir,
            cmd: c.cmd,
            entrypoint: c.entrypoint,
            args_escaped: c.args_escaped,
            labels: c.labels,
            exposed_ports: c.exposed_ports.into_keys().collect(),
            volumes: c.volumes.into_keys().collect(),
            stop_signal: c.stop_signal,
            healthcheck: c.healthcheck.map(|h| Healthcheck {
                test: h.test,
                interval_ns: h.interval,
                timeout_ns: h.timeout,
                start_period_ns: h.start_period,
                start_interval_ns: h.start_interval,
                retries: h.retries,
            }),
            shell: c.shell,
            onbuild: c.on_build,
            history: self
                .history
                .into_iter()
                .map(|h| History {
                    created: h.created,
                    created_by: h.created_by,
                    comment: h.comment,
                    empty_layer: h.empty_layer,
                })
                .collect(),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// BuildKit's types mark `Cmd` and `Entrypoint` `omitempty`: an empty list is not written (and a
/// container runs the same with an empty list as with none).
fn none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// A member that may be `null` (Go writes nil slices and maps that way) reads as its default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `Cmd` / `Entrypoint` as Docker's `StrSlice` reads them: `null`, a list, or a lone string.
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null, a string or a list of strings")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(vec![s.to_string()]))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = a.next_element::<String>()? {
                out.push(s);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;

    use super::*;
    use crate::export::{ImageOptions, LayerBlob, assemble_json, sha256_digest};
    // A judge tool on PATH, or `None` after a SKIP line (a failure under FORGE_E2E=require).
    use forge_testsupport::{run, tool as judge};

    const CREATED: &str = "2026-11-21T20:00:00.123456789Z";

    fn digest(n: u8) -> Digest {
        sha256_digest(&[n])
    }

    #[test]
    fn history_lines_pair_entries_with_layers_newest_first() {
        let entry = |by: &str, empty: bool| HistoryEntry {
            created_by: by.into(),
            empty_layer: empty,
            ..HistoryEntry::default()
        };
        let config = ConfigFile {
            history: vec![
                entry("ADD rootfs", false),
                entry("ENV A=1", true),
                entry("RUN x", false),
            ],
            ..ConfigFile::default()
        };
        let lines = config.history_lines(&[100, 20, 3]);
        let got: Vec<(&str, Option<u64>)> = lines
            .iter()
            .map(|l| (l.created_by.as_str(), l.layer_size))
            .collect();
        assert_eq!(
            got,
            [
                ("", Some(3)),
                ("RUN x", Some(20)),
                ("ENV A=1", None),
                ("ADD rootfs", Some(100))
            ]
        );
        assert_eq!(lines[0].comment, EXPORTER_HISTORY_COMMENT);
        // More entries than layers: the extra ones made nothing.
        let lines = config.history_lines(&[100]);
        assert_eq!(lines[0].layer_size, None);
        assert_eq!(lines[2].layer_size, Some(100));
    }

    fn hist(created: Option<&str>, by: &str, empty: bool) -> History {
        History {
            created: created.map(str::to_string),
            created_by: by.to_string(),
            comment: if empty {
                String::new()
            } else {
                "buildkit.dockerfile.v0".to_string()
            },
            empty_layer: empty,
        }
    }

    /// Every field the graph carries, set to something distinctive.
    fn rich() -> ImageConfig {
        ImageConfig {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: "v7".into(),
            author: "forge tests <forge@example.invalid>".into(),
            env: vec!["PATH=/usr/bin:/bin".into(), "B=2".into(), "A=1".into()],
            user: "app:app".into(),
            working_dir: "/srv/app".into(),
            cmd: Some(vec!["--port".into(), "8080".into()]),
            entrypoint: Some(vec!["/bin/app".into(), "serve".into()]),
            args_escaped: true,
            labels: BTreeMap::from([
                ("org.opencontainers.image.title".into(), "app".into()),
                ("maintainer".into(), "someone".into()),
            ]),
            exposed_ports: BTreeSet::from(["8080/tcp".into(), "53/udp".into()]),
            volumes: BTreeSet::from(["/data".into(), "/var/log/app".into()]),
            stop_signal: "SIGQUIT".into(),
            healthcheck: Some(Healthcheck {
                test: vec![
                    "CMD-SHELL".into(),
                    "wget -q -O- http://localhost:8080/".into(),
                ],
                interval_ns: 30_000_000_000,
                timeout_ns: 5_000_000_000,
                start_period_ns: 1_500_000_000,
                start_interval_ns: 250_000_000,
                retries: 4,
            }),
            shell: vec!["/bin/bash".into(), "-eu".into(), "-c".into()],
            onbuild: vec!["COPY . /src".into(), "RUN make -C /src".into()],
            history: vec![
                hist(
                    Some("2020-01-01T00:00:00Z"),
                    "/bin/sh -c #(nop) ADD file:abc in / ",
                    false,
                ),
                hist(
                    Some("2020-01-01T00:00:01Z"),
                    "/bin/sh -c #(nop)  CMD [\"sh\"]",
                    true,
                ),
                hist(Some(CREATED), "RUN /bin/sh -c make # buildkit", false),
                hist(Some(CREATED), "EXPOSE map[8080/tcp:{}]", true),
            ],
        }
    }

    fn to_bytes(cfg: &ImageConfig, diff_ids: &[Digest]) -> Vec<u8> {
        serde_json::to_vec(&image_config_file(cfg, diff_ids, CREATED)).unwrap()
    }

    #[test]
    fn rich_config_round_trips() {
        let cfg = rich();
        let diff_ids = [digest(1), digest(2)];
        let bytes = to_bytes(&cfg, &diff_ids);
        let base = read_base_config(&bytes).unwrap();
        assert_eq!(base.config, cfg);
        assert_eq!(base.diff_ids, diff_ids);
        assert_eq!(base.created.as_deref(), Some(CREATED));
        // The value form reads back the same.
        let value = serde_json::to_vec(&config_to_json(&cfg, &diff_ids, CREATED)).unwrap();
        assert_eq!(config_from_json(&value).unwrap(), cfg);
        // Written again, byte for byte the same document.
        assert_eq!(to_bytes(&base.config, &base.diff_ids), bytes);
    }

    #[test]
    fn document_has_buildkits_shape() {
        let doc = config_to_json(&rich(), &[digest(1), digest(2)], CREATED);
        let c = &doc["config"];
        assert_eq!(
            c["ExposedPorts"],
            serde_json::json!({"53/udp": {}, "8080/tcp": {}})
        );
        assert_eq!(
            c["Volumes"],
            serde_json::json!({"/data": {}, "/var/log/app": {}})
        );
        assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/app", "serve"]));
        assert_eq!(c["Cmd"], serde_json::json!(["--port", "8080"]));
        assert_eq!(c["ArgsEscaped"], true);
        assert_eq!(c["StopSignal"], "SIGQUIT");
        assert_eq!(c["OnBuild"][1], "RUN make -C /src");
        assert_eq!(c["Shell"], serde_json::json!(["/bin/bash", "-eu", "-c"]));
        assert_eq!(
            c["Healthcheck"],
            serde_json::json!({
                "Test": ["CMD-SHELL", "wget -q -O- http://localhost:8080/"],
                "Interval": 30_000_000_000u64,
                "Timeout": 5_000_000_000u64,
                "StartPeriod": 1_500_000_000u64,
                "StartInterval": 250_000_000u64,
                "Retries": 4,
            })
        );
        assert_eq!(doc["rootfs"]["type"], "layers");
        assert_eq!(doc["rootfs"]["diff_ids"][1], digest(2).to_string());
        assert_eq!(doc["created"], CREATED);
        assert_eq!(doc["variant"], "v7");
        assert_eq!(doc["history"][1]["empty_layer"], true);
        assert!(doc["history"][0].get("empty_layer").is_none());

        // Member order: top level sorted, `config` in the Go struct's order.
        let text = String::from_utf8(to_bytes(&rich(), &[digest(1), digest(2)])).unwrap();
        let pos = |k: &str| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}"))
        };
        let top = [
            "architecture",
            "author",
            "config",
            "created",
            "history",
            "os",
            "rootfs",
        ];
        assert!(top.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{text}");
        let inner = [
            "User",
            "ExposedPorts",
            "Env",
            "Entrypoint",
            "Cmd",
            "Volumes",
            "WorkingDir",
            "Labels",
            "StopSignal",
            "ArgsEscaped",
            "Healthcheck",
            "OnBuild",
            "Shell",
        ];
        assert!(inner.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{text}");
    }

    #[test]
    fn empty_fields_are_omitted() {
        let cfg = ImageConfig {
            os: "linux".into(),
            architecture: "amd64".into(),
            cmd: Some(Vec::new()),
            entrypoint: None,
            ..Default::default()
        };
        let doc = config_to_json(&cfg, &[], CREATED);
        assert_eq!(
            doc,
            serde_json::json!({
                "architecture": "amd64",
                "config": {},
                "created": CREATED,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            })
        );
    }

    /// A config as `docker save` of a classic-builder image has it: Go's nil slices and maps as
    /// `null`, the container fields the graph has no place for, `container_config`.
    const DOCKER_V1: &str = r##"{
        "architecture": "amd64",
        "config": {
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
            "AttachStdout": false, "AttachStderr": false,
            "ExposedPorts": {"80/tcp": {}}, "Tty": false, "OpenStdin": false, "StdinOnce": false,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_VERSION=1.25.3"],
            "Cmd": ["nginx", "-g", "daemon off;"], "Image": "sha256:0123", "Volumes": null,
            "WorkingDir": "", "Entrypoint": ["/docker-entrypoint.sh"], "OnBuild": null,
            "Labels": {"maintainer": "NGINX Docker Maintainers"}, "StopSignal": "SIGQUIT"
        },
        "container": "d7a4b8d1c9e2",
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"nginx\" \"-g\" \"daemon off;\"]"], "Env": null},
        "created": "2023-11-01T04:58:02.188443839Z",
        "docker_version": "20.10.23",
        "history": [
            {"created": "2023-11-01T00:20:14.585284538Z", "created_by": "/bin/sh -c #(nop) ADD file:9deb26e1dbc258df4 in / "},
            {"created": "2023-11-01T00:20:14.983436787Z", "created_by": "/bin/sh -c #(nop)  CMD [\"bash\"]", "empty_layer": true},
            {"created": "2023-11-01T04:57:40.100000000Z", "created_by": "/bin/sh -c #(nop)  LABEL maintainer=NGINX Docker Maintainers", "empty_layer": true},
            {"created": "2023-11-01T04:58:01.500000000Z", "created_by": "/bin/sh -c set -x && apt-get update", "comment": null},
            {"created": "2023-11-01T04:58:02.188443839Z", "created_by": "/bin/sh -c #(nop)  CMD [\"nginx\" \"-g\" \"daemon off;\"]", "empty_layer": true}
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [
            "sha256:ec983b16636050e69677eb81537e955ab927757c23aaf73971ecf5f71fcc262a",
            "sha256:0e2cd2e33a9b6edfb0bd6c8a1c5dd8c2d2eb0e9c0c6b7a1e9c0f4f0b9f2bb1c4"
        ]}
    }"##;

    #[test]
    fn docker_config_with_nulls() {
        let base = read_base_config(DOCKER_V1.as_bytes()).unwrap();
        let c = &base.config;
        assert_eq!((c.os.as_str(), c.architecture.as_str()), ("linux", "amd64"));
        assert_eq!(c.variant, "");
        assert_eq!(c.env.len(), 2);
        assert_eq!(c.env[1], "NGINX_VERSION=1.25.3");
        assert_eq!(
            c.entrypoint,
            Some(vec!["/docker-entrypoint.sh".to_string()])
        );
        assert_eq!(
            c.cmd,
            Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()])
        );
        assert_eq!(c.exposed_ports, BTreeSet::from(["80/tcp".to_string()]));
        assert!(c.volumes.is_empty() && c.onbuild.is_empty() && c.shell.is_empty());
        assert_eq!(c.labels["maintainer"], "NGINX Docker Maintainers");
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.user, "");
        assert_eq!(c.working_dir, "");
        assert!(c.healthcheck.is_none());
        assert!(!c.args_escaped);
        assert_eq!(c.history.len(), 5);
        assert_eq!(
            c.history[3].created.as_deref(),
            Some("2023-11-01T04:58:01.500000000Z")
        );
        assert_eq!(c.history[3].comment, "");
        assert!(c.history[2].empty_layer && !c.history[3].empty_layer);
        assert_eq!(base.diff_ids.len(), 2);
        assert_eq!(
            base.created.as_deref(),
            Some("2023-11-01T04:58:02.188443839Z")
        );

        // Entirely null members and a config-less document read as empty.
        let nulls = r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":null,
            "Entrypoint":null,"Labels":null,"ExposedPorts":null,"Healthcheck":null,"Shell":null,
            "ArgsEscaped":null,"User":null},"history":null,"author":null,"created":null,
            "rootfs":{"type":"layers","diff_ids":null}}"#;
        let c = config_from_json(nulls.as_bytes()).unwrap();
        assert_eq!(
            c,
            ImageConfig {
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }
        );
        let c = config_from_json(br#"{"architecture":"arm64","os":"linux"}"#).unwrap();
        assert_eq!(c.architecture, "arm64");
        assert!(c.cmd.is_none() && c.history.is_empty());
    }

    /// umoci's configs (the CI base images are made with it): no `config` nulls, an empty-layer
    /// entry after the layer's.
    #[test]
    fn umoci_config() {
        let text = r#"{"created":"2026-11-21T18:14:59.226912172Z","architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:42f7197f70404453abe1ee04fcda1f5e9a38f3120948ec0b66d56546a92d2c90"]},
            "history":[{"created":"2026-11-21T18:15:01.439839521Z","created_by":"umoci repack"},
            {"created":"2026-11-21T18:15:01.552857003Z","created_by":"forge make-base-images.sh busybox","empty_layer":true}]}"#;
        let base = read_base_config(text.as_bytes()).unwrap();
        assert_eq!(base.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(base.config.history.len(), 2);
        assert!(base.config.history[1].empty_layer);
        assert_eq!(base.diff_ids.len(), 1);
    }

    #[test]
    fn entrypoint_and_cmd_forms() {
        // Docker's StrSlice also accepts a lone string.
        let c = config_from_json(
            br#"{"os":"linux","architecture":"amd64","config":{"Entrypoint":"/bin/sh","Cmd":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.cmd, Some(Vec::new()));
        // An empty list is not written (omitempty), and reads back as none.
        let doc = config_to_json(&c, &[], CREATED);
        assert_eq!(doc["config"]["Entrypoint"], serde_json::json!(["/bin/sh"]));
        assert!(doc["config"].get("Cmd").is_none());
        // ENTRYPOINT without CMD: no Cmd member at all.
        let cfg = ImageConfig {
            entrypoint: Some(vec!["/app".into()]),
            cmd: None,
            ..rich()
        };
        let doc = config_to_json(&cfg, &[digest(1), digest(2)], CREATED);
        assert!(doc["config"].get("Cmd").is_none(), "{doc}");
        assert_eq!(config_from_json(doc.to_string().as_bytes()).unwrap(), cfg);
        // A number is not a command.
        let err = config_from_json(br#"{"config":{"Cmd":7}}"#).unwrap_err();
        assert!(matches!(err, ImageError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn healthcheck_durations_are_nanoseconds() {
        let text = r#"{"os":"linux","architecture":"amd64","config":{"Healthcheck":{
            "Test":["CMD","curl","-f","http://localhost/"],"Interval":30000000000,
            "Timeout":3000000000,"StartPeriod":0,"Retries":3}}}"#;
        let h = config_from_json(text.as_bytes())
            .unwrap()
            .healthcheck
            .unwrap();
        assert_eq!(h.test, ["CMD", "curl", "-f", "http://localhost/"]);
        assert_eq!(h.interval_ns, 30 * 1_000_000_000);
        assert_eq!(h.timeout_ns, 3 * 1_000_000_000);
        assert_eq!(
            (h.start_period_ns, h.start_interval_ns, h.retries),
            (0, 0, 3)
        );
        // HEALTHCHECK NONE: only the test is written; zero durations are left out.
        let cfg = ImageConfig {
            healthcheck: Some(Healthcheck {
                test: vec!["NONE".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let doc = config_to_json(&cfg, &[], CREATED);
        assert_eq!(
            doc["config"]["Healthcheck"],
            serde_json::json!({"Test": ["NONE"]})
        );
        // A negative duration is refused, naming where.
        let err = config_from_json(br#"{"config":{"Healthcheck":{"Interval":-1}}}"#).unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
    }

    #[test]
    fn history_normalised_against_layers() {
        // As many non-empty entries as layers: unchanged.
        let mut h = vec![
            hist(None, "a", false),
            hist(None, "b", true),
            hist(None, "c", false),
        ];
        let before = h.clone();
        normalize_history(&mut h, 2);
        assert_eq!(h, before);

        // More entries than layers: the excess, counted from the bottom, becomes empty.
        let mut h = vec![
            hist(None, "a", false),
            hist(None, "b", true),
            hist(None, "c", false),
            hist(None, "d", false),
        ];
        normalize_history(&mut h, 1);
        let empty: Vec<bool> = h.iter().map(|e| e.empty_layer).collect();
        assert_eq!(empty, [false, true, true, true]);
        assert_eq!(h.len(), 4);

        // Fewer: entries appended for the missing layers.
        let mut h = vec![hist(None, "a", false), hist(None, "b", true)];
        normalize_history(&mut h, 3);
        assert_eq!(h.len(), 4);
        assert!(h[2..].iter().all(|e| !e.empty_layer
            && e.comment == EXPORTER_HISTORY_COMMENT
            && e.created.is_none()));

        // No layers at all (FROM scratch, metadata only): everything is empty.
        let mut h = vec![hist(None, "a", false)];
        normalize_history(&mut h, 0);
        assert!(h[0].empty_layer);

        // The written document always agrees: non-empty history == diff_ids, and new entries
        // get the build's time while recorded ones keep theirs.
        let mut cfg = rich();
        cfg.history
            .push(hist(None, "COPY . /src # buildkit", false));
        for layers in 0..6u8 {
            let ids: Vec<Digest> = (0..layers).map(digest).collect();
            let doc = config_to_json(&cfg, &ids, "2030-01-01T00:00:00Z");
            let hist = doc["history"].as_array().unwrap();
            let non_empty = hist
                .iter()
                .filter(|e| e.get("empty_layer").is_none())
                .count();
            assert_eq!(non_empty, usize::from(layers), "{doc}");
            assert_eq!(hist[0]["created"], "2020-01-01T00:00:00Z");
            assert!(hist.iter().all(|e| e["created"].is_string()));
            assert_eq!(hist[4]["created"], "2030-01-01T00:00:00Z");
        }
    }

    /// A base image without history: its entries are made up when it is read, so the build's
    /// entries appended after them describe the build's own layers.
    #[test]
    fn base_without_history_keeps_alignment() {
        let text = format!(
            r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
            digest(1),
            digest(2)
        );
        let mut base = read_base_config(text.as_bytes()).unwrap();
        assert_eq!(base.config.history.len(), 2);
        base.config.history.push(hist(None, "RUN make", false));
        let doc = config_to_json(&base.config, &[digest(1), digest(2), digest(3)], CREATED);
        assert_eq!(doc["history"].as_array().unwrap().len(), 3);
        assert_eq!(doc["history"][2]["created_by"], "RUN make");
    }

    /// BuildKit's times without SOURCE_DATE_EPOCH: a new layer's entry takes the layer's time,
    /// metadata entries before the first new layer take that layer's, later ones the entry's
    /// before them, and the image's `created` is the last entry's; `now` is used nowhere.
    #[test]
    fn times_come_from_the_layers_not_the_clock() {
        let base_time = "2024-01-01T00:00:00Z";
        let cfg = ImageConfig {
            history: vec![
                hist(Some(base_time), "ADD rootfs", false),
                hist(None, "ENV A=1", true),
                hist(None, "RUN a", false),
                hist(None, "WORKDIR /w", true),
                hist(None, "COPY b", false),
                hist(None, "CMD c", true),
            ],
            ..ImageConfig::default()
        };
        let (t1, t2) = ("2026-01-01T00:00:01.5Z", "2026-01-02T00:00:02Z");
        let times = [None, Some(t1.to_string()), Some(t2.to_string())];
        let ids = [digest(1), digest(2), digest(3)];
        let doc = image_config_file_from_layers(&cfg, &ids, &times, "2099-01-01T00:00:00Z");
        let got: Vec<&str> = doc
            .history
            .iter()
            .map(|h| h.created.as_deref().unwrap())
            .collect();
        assert_eq!(got, [base_time, t1, t1, t1, t2, t2]);
        assert_eq!(doc.created.as_deref(), Some(t2));
        // The same inputs later: the same document.
        let again = image_config_file_from_layers(&cfg, &ids, &times, "2099-02-01T00:00:00Z");
        assert_eq!(again, doc);
        // A time that does not read is none; with no time anywhere, `now` stands in.
        let bare = ImageConfig {
            history: vec![hist(None, "COPY x", false)],
            ..ImageConfig::default()
        };
        let doc = image_config_file_from_layers(
            &bare,
            &[digest(1)],
            &[Some("yesterday".into())],
            "2099-01-01T00:00:00Z",
        );
        assert_eq!(doc.created.as_deref(), Some("2099-01-01T00:00:00Z"));
        assert_eq!(
            doc.history[0].created.as_deref(),
            Some("2099-01-01T00:00:00Z")
        );
    }

    #[test]
    fn bad_diff_id_is_an_error_with_evidence() {
        let err = read_base_config(br#"{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#)
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::DiffId { index: 0, value, .. } if value == "sha256:zz"),
            "{err}"
        );
        let err = read_base_config(b"not json").unwrap_err();
        assert!(matches!(err, ImageError::Parse { .. }), "{err}");
    }

    #[test]
    fn created_time_forms() {
        assert_eq!(
            created_time(Some(1_700_000_000)).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        let now = created_time(None).unwrap();
        let (secs, _) = time::parse_rfc3339(&now).unwrap();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((wall - secs).abs() < 5, "{now}");
        assert!(created_time(Some(i64::MAX)).is_err());
    }

    fn layer(dir: &Path, name: &str, content: &str) -> LayerBlob {
        let mut raw = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_path(name).unwrap();
        h.set_cksum();
        raw.append(&h, content.as_bytes()).unwrap();
        let raw = raw.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let blob = gz.finish().unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &blob).unwrap();
        LayerBlob {
            path,
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&raw),
            size: blob.len() as u64,
            media_type: oci_spec::image::MediaType::ImageLayerGzip,
        }
    }

    /// The same build at two different wall-clock times gives the same manifest digest under
    /// SOURCE_DATE_EPOCH; another epoch gives another digest.
    #[test]
    fn source_date_epoch_makes_the_manifest_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(dir.path(), "a", "one\n"),
            layer(dir.path(), "b", "two\n"),
        ];
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let mut cfg = rich();
        cfg.history.push(hist(None, "COPY b /", false));
        cfg.history
            .retain(|h| h.created_by != "RUN /bin/sh -c make # buildkit");
        let build = |created: &str, epoch: Option<i64>| {
            let doc = image_config_file(&cfg, &diff_ids, created);
            let options = ImageOptions {
                source_date_epoch: epoch,
                ..Default::default()
            };
            assemble_json(&doc, layers.clone(), &options).unwrap()
        };
        const EPOCH: i64 = 1_700_000_000;
        let one = build("2026-11-21T20:00:00.1Z", Some(EPOCH));
        let two = build("2026-11-21T20:00:07.9Z", Some(EPOCH));
        assert_eq!(one.manifest_json(), two.manifest_json());
        assert_eq!(
            one.manifest_descriptor().digest(),
            two.manifest_descriptor().digest()
        );
        let other = build("2026-11-21T20:00:00.1Z", Some(EPOCH + 1));
        assert_ne!(
            one.manifest_descriptor().digest(),
            other.manifest_descriptor().digest()
        );
        // Without an epoch the wall-clock time shows, so the digests differ.
        let a = build("2026-11-21T20:00:00.1Z", None);
        let b = build("2026-11-21T20:00:07.9Z", None);
        assert_ne!(
            a.manifest_descriptor().digest(),
            b.manifest_descriptor().digest()
        );

        // What was written: the epoch as created, recorded older history kept, newer clamped,
        // the Docker-only fields present, BuildKit's member order kept through assembly.
        let text = std::str::from_utf8(one.config_json()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["history"][0]["created"], "2020-01-01T00:00:00Z");
        assert_eq!(v["history"][2]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["history"][3]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["config"]["Healthcheck"]["Retries"], 4);
        assert_eq!(v["config"]["Shell"][0], "/bin/bash");
        assert_eq!(v["config"]["OnBuild"][0], "COPY . /src");
        assert!(
            text.find("\"User\"").unwrap() < text.find("\"Env\"").unwrap(),
            "{text}"
        );
        assert!(text.find("\"config\"").unwrap() < text.find("\"created\"").unwrap());
        // The config read back is the config written (timestamps aside).
        let back = config_from_json(one.config_json()).unwrap();
        assert_eq!(back.healthcheck, cfg.healthcheck);
        assert_eq!(back.env, cfg.env);
        assert_eq!(back.labels, cfg.labels);
    }

    /// umoci (Go's image-spec types) reads the assembled config and turns it into the runtime
    /// config a container would get: entrypoint + cmd, env, cwd, user, stop signal, labels.
    #[test]
    fn umoci_reads_the_written_config() {
        let Some(umoci) = judge("umoci") else { return };
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(dir.path(), "a", "one\n"),
            layer(dir.path(), "b", "two\n"),
        ];
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let cfg = ImageConfig {
            user: "1000:1000".into(),
            architecture: "amd64".into(),
            variant: String::new(),
            ..rich()
        };
        let doc = image_config_file(&cfg, &diff_ids, CREATED);
        let image = assemble_json(&doc, layers, &ImageOptions::default()).unwrap();
        let layout = dir.path().join("layout");
        crate::export::write_oci_dir(&image, &["forge.test/app:v1".to_string()], &layout).unwrap();
        let bundle = dir.path().join("bundle");
        run(std::process::Command::new(&umoci)
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle));
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let p = &spec["process"];
        assert_eq!(
            p["args"],
            serde_json::json!(["/bin/app", "serve", "--port", "8080"]),
            "{spec}"
        );
        assert_eq!(p["cwd"], "/srv/app");
        assert_eq!(
            (p["user"]["uid"].as_u64(), p["user"]["gid"].as_u64()),
            (Some(1000), Some(1000))
        );
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str())
            .collect();
        for e in &cfg.env {
            assert!(env.contains(&e.as_str()), "{e} in {env:?}");
        }
        let annotations = &spec["annotations"];
        assert_eq!(
            annotations["org.opencontainers.image.stopSignal"], "SIGQUIT",
            "{spec}"
        );
        assert_eq!(annotations["maintainer"], "someone", "{spec}");
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/b")).unwrap(),
            "two\n"
        );
    }

    /// The CI base image (pushed to the loopback registry by testdata/make-base-images.sh), read
    /// with skopeo: its diff_ids match its manifest's layers, and writing it back loses nothing.
    #[test]
    fn registry_base_image_config() {
        let Some(reference) = forge_testsupport::busybox_image() else {
            return;
        };
        let Some(skopeo) = judge("skopeo") else {
            return;
        };
        let inspect = |flag: &str| {
            run(std::process::Command::new(&skopeo)
                .args(["inspect", flag, "--tls-verify=false"])
                .arg(format!("docker://{reference}")))
        };
        let config = inspect("--config");
        let manifest: serde_json::Value = serde_json::from_slice(&inspect("--raw")).unwrap();
        let base = read_base_config(&config).unwrap();
        let layers = manifest["layers"]
            .as_array()
            .expect("a single-platform manifest");
        assert_eq!(base.diff_ids.len(), layers.len());
        assert!(!base.diff_ids.is_empty());
        assert_eq!(base.config.os, "linux");
        assert!(base.config.env.iter().any(|e| e.starts_with("PATH=")));
        let non_empty = base
            .config
            .history
            .iter()
            .filter(|h| !h.empty_layer)
            .count();
        assert_eq!(non_empty, layers.len());
        let created = base.created.clone().unwrap_or_else(|| CREATED.to_string());
        let again = image_config_file(&base.config, &base.diff_ids, &created);
        let again = read_base_config(&serde_json::to_vec(&again).unwrap()).unwrap();
        assert_eq!(again, base);
    }
}
