//! Reading caches before a solve and writing one after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{BlobKind, PushBlob, PushImage, RegistryClient};
use forge_snapshotter::store::{Descriptor, Digest, Store};

use super::format::{
    CONFIG_TYPE, CacheConfig, CacheManifest, CacheRecord, MOUNT_TYPE, MountRecord, OCI_MANIFEST,
    VERSION, blob_descriptors,
};
use super::{
    BlobSource, CacheExport, CacheImport, CacheLocation, CacheMode, Imported, RemoteBlobs,
};
use crate::events::{BuildEvent, Events};
use crate::graph::Graph;
use crate::ops::{Built, Layer};
use crate::solver::{CacheKey, Record, Solution};
use forge_snapshotter::error_text::one_line;

/// Reads every cache of `sources`, in order, into one [`Imported`]; registers the blobs they name
/// with `remote`. A cache that cannot be read is a warning.
pub async fn import_caches(
    sources: &[CacheImport],
    registry: &RegistryClient,
    store: &Store,
    remote: &RemoteBlobs,
    events: &Events,
) -> Imported {
    let mut imported = Imported::default();
    for source in sources {
        let phase = format!("importing cache {}", source.location);
        events.emit(BuildEvent::PhaseStarted {
            name: phase.clone(),
        });
        let started = std::time::Instant::now();
        let read = match &source.location {
            CacheLocation::Registry(r) => read_registry(registry, store, r).await,
            CacheLocation::Local { dir, tag } => read_layout(dir, tag),
        };
        match read {
            Ok((manifest, config, from)) => merge(
                &mut imported,
                manifest,
                config,
                from,
                remote,
                events,
                &source.location,
            ),
            Err(reason) => events.emit(BuildEvent::Warning {
                message: format!(
                    "cache: not importing {}: {reason}; the steps it would have served run",
                    source.location
                ),
            }),
        }
        events.emit(BuildEvent::PhaseDone {
            name: phase,
            duration: started.elapsed(),
        });
    }
    imported
}

async fn read_registry(
    registry: &RegistryClient,
    store: &Store,
    reference: &Reference,
) -> Result<(CacheManifest, CacheConfig, BlobSource), String> {
    let (bytes, _) = registry
        .fetch_manifest(reference, &|_| {})
        .await
        .map_err(|e| one_line(&e))?;
    let manifest = CacheManifest::parse(&bytes)?;
    let config = Descriptor::from(manifest.config.clone());
    registry
        .fetch_blob(store, reference, &config, BlobKind::Config, &|_| {})
        .await
        .map_err(|e| format!("its record list: {}", one_line(&e)))?;
    let bytes = store
        .read_blob(&config.digest)
        .map_err(|e| format!("its record list: {e}"))?;
    let config = CacheConfig::parse(&bytes)?;
    Ok((manifest, config, BlobSource::Registry(reference.clone())))
}

/// An OCI layout's index entry naming `tag`.
#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(serde::Deserialize, serde::Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A layout blob, read whole and checked against its digest.
fn layout_read(dir: &Path, digest: &Digest, limit: u64) -> Result<Vec<u8>, String> {
    let path = super::blobs::layout_blob(dir, digest);
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > limit {
        return Err(format!("{}: {len} bytes is too large", path.display()));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(format!(
            "{}: its content is {actual}, not {digest}",
            path.display()
        ));
    }
    Ok(bytes)
}

fn read_layout(dir: &Path, tag: &str) -> Result<(CacheManifest, CacheConfig, BlobSource), String> {
    let index_path = dir.join("index.json");
    let index: Index = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", index_path.display()))?;
    let entry = index
        .manifests
        .iter()
        .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
        .ok_or_else(|| format!("{} names no manifest {tag:?}", index_path.display()))?;
    let manifest = CacheManifest::parse(&layout_read(dir, &entry.digest, 4 << 20)?)?;
    let config = CacheConfig::parse(&layout_read(
        dir,
        &manifest.config.digest,
        super::format::MAX_CONFIG_BYTES,
    )?)?;
    Ok((manifest, config, BlobSource::Layout(dir.to_path_buf())))
}

/// Adds what one cache holds: records whose every blob the manifest lists (and whose key and
/// result this forge reads), the listed blobs as fetchable, and the cache mounts.
fn merge(
    imported: &mut Imported,
    manifest: CacheManifest,
    config: CacheConfig,
    from: BlobSource,
    remote: &RemoteBlobs,
    events: &Events,
    location: &CacheLocation,
) {
    let listed: HashMap<Digest, Descriptor> = manifest
        .layers
        .into_iter()
        .map(|d| (d.digest.clone(), Descriptor::from(d)))
        .collect();
    for d in listed.values() {
        remote.add(d.clone(), from.clone());
    }
    let mount_hint = match &from {
        BlobSource::Registry(r) => Some(r.name()),
        BlobSource::Layout(_) => None,
    };
    let mut skipped = 0usize;
    for record in config.records {
        let Some(key) = CacheKey::from_hex(&record.key) else {
            skipped += 1;
            continue;
        };
        let bytes = serde_json::to_vec(&record.result).unwrap_or_default();
        let Some(mut built) = Built::from_record(&bytes) else {
            skipped += 1;
            continue;
        };
        let whole = blob_descriptors(&built)
            .iter()
            .all(|d| listed.get(&d.digest).is_some_and(|l| l.size == d.size));
        if !whole || matches!(built, Built::Local { .. }) {
            skipped += 1;
            continue;
        }
        // A layer this cache carries can be mounted from it when the image is pushed.
        if let Built::Fs { layers } = &mut built {
            for l in layers.iter_mut().filter(|l| l.source.is_none()) {
                l.source = mount_hint.clone();
            }
        }
        imported
            .records
            .entry(key)
            .or_insert_with(|| built.to_record());
    }
    for m in config.mounts {
        if listed.contains_key(&m.digest) {
            imported.mounts.entry(m.id).or_insert(Descriptor {
                media_type: MOUNT_TYPE.into(),
                digest: m.digest,
                size: m.size,
            });
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        events.emit(BuildEvent::Warning {
            message: format!(
                "cache: {skipped} entries of {location} name blobs it does not list or are not readable by this forge; they are ignored"
            ),
        });
    }
}

/// What [`export_cache`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub records: usize,
    pub blobs: usize,
}

/// One solved vertex, as an export writes it.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: CacheKey,
    /// The step, as the build described it.
    pub description: String,
    pub output: Built,
}

/// The entries of a solve: each key once, in graph order.
pub fn entries(graph: &Graph, solution: &Solution<Built>) -> Vec<CacheEntry> {
    let mut seen = HashSet::new();
    solution
        .iter()
        .filter(|(_, s)| seen.insert(s.key))
        .map(|(node, s)| CacheEntry {
            key: s.key,
            description: graph.vertex(node).description.clone(),
            output: s.output.clone(),
        })
        .collect()
}

/// Everything an export needs from the build.
pub struct ExportInput<'a> {
    /// The solved vertices (a pipeline adds its jobs' to its image's).
    pub entries: &'a [CacheEntry],
    /// The final image's layers as the solve made them (for `mode=min`), before any re-stamp.
    pub image_layers: &'a [Layer],
    /// `registry/repository` the image was just pushed to, and the blobs pushed there, which can
    /// be mounted from it.
    pub pushed: Option<(String, HashSet<Digest>)>,
    pub mounts: Vec<MountRecord>,
}

/// How long a cache export waits for its registry's first answer before it is given up.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes the cache `target` asks for.
pub async fn export_cache(
    target: &CacheExport,
    input: ExportInput<'_>,
    registry: &RegistryClient,
    store: &Store,
    remote: Option<&RemoteBlobs>,
    events: &Events,
) -> Result<Exported, String> {
    let available =
        |d: &Digest| store.has_blob(d) || remote.is_some_and(|r| r.source_of(d).is_some());
    let in_image = |layers: &[Layer]| {
        layers.len() <= input.image_layers.len()
            && layers
                .iter()
                .zip(input.image_layers)
                .all(|(a, b)| a.diff_id == b.diff_id)
    };
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut hints: HashMap<Digest, String> = HashMap::new();
    for solved in input.entries {
        if !seen.insert(solved.key) {
            continue;
        }
        // A passed test verdict (a pipeline job's) travels whatever the mode: it is the result
        // the next runner most wants to skip. A failed one is never served from a cache.
        let keep = match (&solved.output, target.mode) {
            (Built::Local { .. }, _) => false,
            (Built::Test { exit_code, .. }, _) => *exit_code == 0,
            (Built::Fs { layers }, CacheMode::Min) => in_image(layers),
            (Built::Fs { .. }, CacheMode::Max) => true,
        };
        let descs = blob_descriptors(&solved.output);
        if !keep || !descs.iter().all(|d| available(&d.digest)) {
            continue;
        }
        if let Built::Fs { layers } = &solved.output {
            for l in layers {
                if let Some(s) = &l.source {
                    hints.entry(l.digest.clone()).or_insert(s.clone());
                }
            }
        }
        blobs.extend(descs);
        records.push(CacheRecord::new(
            &solved.key,
            &solved.description,
            &solved.output,
        ));
    }
    for m in &input.mounts {
        blobs.push(Descriptor {
            media_type: MOUNT_TYPE.into(),
            digest: m.digest.clone(),
            size: m.size,
        });
    }
    let mut unique = HashSet::new();
    blobs.retain(|d| unique.insert(d.digest.clone()));
    let config = CacheConfig {
        version: VERSION,
        writer: format!("forge {}", env!("CARGO_PKG_VERSION")),
        records,
        mounts: input.mounts.clone(),
    };
    let config_bytes = serde_json::to_vec(&config).expect("the record list serialises");
    let config_desc = Descriptor {
        media_type: CONFIG_TYPE.into(),
        digest: store
            .write_blob(&config_bytes, None)
            .map_err(|e| e.to_string())?,
        size: config_bytes.len() as u64,
    };
    let created = crate::export::config::created_time(None).map_err(|e| e.to_string())?;
    let manifest = CacheManifest::new(config_desc.clone(), blobs.clone(), created);
    let manifest_bytes = serde_json::to_vec(&manifest).expect("the manifest serialises");
    let manifest_desc = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: store
            .write_blob(&manifest_bytes, None)
            .map_err(|e| e.to_string())?,
        size: manifest_bytes.len() as u64,
    };
    let exported = Exported {
        records: config.records.len(),
        blobs: blobs.len(),
    };
    match &target.location {
        CacheLocation::Registry(reference) => {
            // Where each blob the store lacks can be had: its registry source, else the image
            // just pushed; a blob only an OCI layout holds is fetched into the store first.
            let hint = |d: &Digest| -> Option<String> {
                hints
                    .get(d)
                    .cloned()
                    .or_else(|| match remote.and_then(|r| r.source_of(d)) {
                        Some(BlobSource::Registry(r)) => Some(r.name()),
                        _ => input
                            .pushed
                            .as_ref()
                            .filter(|(_, digests)| digests.contains(d))
                            .map(|(repository, _)| repository.clone()),
                    })
            };
            let need_local: Vec<Digest> = blobs
                .iter()
                .filter(|d| !store.has_blob(&d.digest) && hint(&d.digest).is_none())
                .map(|d| d.digest.clone())
                .collect();
            if let Some(remote) = remote {
                remote
                    .ensure(store, &need_local)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let config_digest = config_desc.digest.clone();
            let image = PushImage {
                manifest: manifest_desc,
                config: PushBlob {
                    descriptor: config_desc,
                    kind: BlobKind::Config,
                    mount_from: None,
                    sent_to: None,
                },
                layers: blobs
                    .iter()
                    .map(|d| PushBlob {
                        descriptor: d.clone(),
                        kind: BlobKind::Layer,
                        mount_from: hint(&d.digest),
                        sent_to: None,
                    })
                    .collect(),
                held: Default::default(),
            };
            let name = reference.to_string();
            let tx = events.clone();
            // A registry that takes connections and never answers held a finished build for
            // every request's read timeout and every try (11 minutes), `ignore-error` or not: it
            // is asked first whether it has the config, and must answer within a deadline, as a
            // cache import's manifest must.
            let asked = tokio::time::timeout(
                STALLED_AFTER,
                registry.blob_exists(reference, &config_digest),
            );
            if asked.await.is_err() {
                return Err(format!(
                    "{reference}: the registry answered nothing within {} s; the cache was not \
                     exported",
                    STALLED_AFTER.as_secs()
                ));
            }
            let progress = move |event| {
                tx.emit(BuildEvent::Push {
                    reference: name.clone(),
                    event,
                })
            };
            registry
                .push(store, &image, std::slice::from_ref(reference), &progress)
                .await
                .map_err(|e| one_line(&e))?;
        }
        CacheLocation::Local { dir, tag } => {
            if let Some(remote) = remote {
                let all: Vec<Digest> = blobs.iter().map(|d| d.digest.clone()).collect();
                remote
                    .ensure(store, &all)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let (dir, tag, store) = (dir.clone(), tag.clone(), store.clone());
            let mut all: Vec<Digest> = blobs.iter().map(|d| d.digest.clone()).collect();
            all.push(config_desc.digest.clone());
            all.push(manifest_desc.digest.clone());
            tokio::task::spawn_blocking(move || {
                write_layout(&dir, &tag, &store, &all, &manifest_desc)
            })
            .await
            .map_err(|e| e.to_string())??;
        }
    }
    Ok(exported)
}

/// Adds `blobs` to the OCI layout at `dir` (created if needed) and points `tag` in its index at
/// the manifest, replacing what the tag named before. Blobs are written whole under a temporary
/// name and renamed; the index is replaced the same way.
fn write_layout(
    dir: &Path,
    tag: &str,
    store: &Store,
    blobs: &[Digest],
    manifest: &Descriptor,
) -> Result<(), String> {
    let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(|e| err("creating", &blob_dir, e))?;
    for d in blobs {
        let path = super::blobs::layout_blob(dir, d);
        if path.is_file() {
            continue;
        }
        let tmp = path.with_extension("tmp");
        std::fs::copy(store.blob_path(d), &tmp).map_err(|e| err("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("renaming", &path, e))?;
    }
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| err("writing", &layout, e))?;
    let index_path = dir.join("index.json");
    let mut entries: Vec<IndexEntry> = match std::fs::read(&index_path) {
        Ok(bytes) => {
            serde_json::from_slice::<Index>(&bytes)
                .map_err(|e| format!("{}: {e}", index_path.display()))?
                .manifests
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(err("reading", &index_path, e)),
    };
    entries.retain(|m| m.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    entries.push(IndexEntry {
        media_type: OCI_MANIFEST.into(),
        digest: manifest.digest.clone(),
        size: manifest.size,
        artifact_type: Some(super::format::ARTIFACT_TYPE.into()),
        annotations: BTreeMap::from([(REF_NAME.into(), tag.into())]),
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let tmp = dir.join("index.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&index).expect("serialises"))
        .map_err(|e| err("writing", &tmp, e))?;
    std::fs::rename(&tmp, &index_path).map_err(|e| err("renaming", &index_path, e))
}
