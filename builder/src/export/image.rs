//! From a solved result to an image in the store: layers re-encoded to the compression that leaves
//! the store, the config and manifest assembled and recorded under the build's names, and the push.

use std::collections::BTreeMap;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{BlobKind, Landing, PushBlob, PushImage, RegistryClient};
use forge_snapshotter::store::{Descriptor, Digest as BlobDigest, ImageRecord, Store};
use oci_spec::image::{Digest, MediaType};

use super::{ExportError, Image, ImageOptions, LayerBlob, config};
use crate::events::{BuildEvent, Events};
use crate::graph::{Output, Platform};
use crate::ops::Layer;

/// The layers as the export asks for them: layers this build made (or took from the cache) in
/// another compression are re-encoded into the store (same diff_id, new blob); base image layers
/// are kept as the registry has them, so pushes can still mount them. A layer a registry cache
/// served has a source too (the cache's repository), but it is the build's own: a cache written
/// by a build that did not push holds zstd layers, which a push sent as they were (docker 20.10
/// cannot pull them, and the image was another than a cold push makes). `base` is the layers of
/// the images the build starts from (see [`Layer::mtimes_unknown`]: a layer's own fields do not
/// say that).
pub async fn with_compression(
    store: &Store,
    layers: &[Layer],
    base: &std::collections::HashSet<BlobDigest>,
    to: forge_snapshotter::compress::Compression,
) -> Result<Vec<Layer>, ExportError> {
    let want = to.media_type();
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        if !needs_compression(l, to, base) {
            out.push(l.clone());
            continue;
        }
        let store2 = store.clone();
        let layer = l.clone();
        let converted = tokio::task::spawn_blocking(move || -> Result<Layer, ExportError> {
            let tmp = store2.temp_path("recompress")?;
            let file = std::fs::File::create(&tmp)
                .map_err(|e| ExportError::Invalid(format!("creating {}: {e}", tmp.display())))?;
            let blob = store2.open_blob(&layer.digest)?;
            let (digest, size, sink) = forge_snapshotter::compress::recompress(
                std::io::BufReader::new(blob),
                &layer.media_type,
                (&layer.digest.to_string(), layer.diff_id.as_ref()),
                to,
                std::io::BufWriter::new(file),
            )
            .map_err(|e| ExportError::Invalid(format!("layer {}: {e}", layer.digest)))?;
            drop(sink);
            let digest = blob_digest(&digest)?;
            store2.adopt(&tmp, &digest, size)?;
            Ok(Layer {
                media_type: want.to_string(),
                digest,
                size,
                ..layer
            })
        })
        .await
        .map_err(|e| ExportError::Invalid(format!("worker thread: {e}")))??;
        out.push(converted);
    }
    Ok(out)
}

/// Whether [`with_compression`] re-encodes `layer` for `to` (its blob must then be in the store).
pub fn needs_compression(
    layer: &Layer,
    to: forge_snapshotter::compress::Compression,
    base: &std::collections::HashSet<BlobDigest>,
) -> bool {
    let same = forge_snapshotter::compress::Compression::from_media_type(&layer.media_type)
        .map(|c| c.media_type() == to.media_type())
        .unwrap_or(true);
    let kept_as_pulled = layer.source.is_some() && base.contains(&layer.digest);
    !(same || kept_as_pulled)
}

/// The image an output's result makes: its config (with `labels` added) over its layers.
pub fn make_image(
    output: &Output,
    layers: &[Layer],
    store: &Store,
    labels: &BTreeMap<String, String>,
    options: &ImageOptions,
) -> Result<Image, ExportError> {
    let now = config::created_time(options.source_date_epoch)
        .map_err(|e| ExportError::Invalid(e.to_string()))?;
    if let Some(l) = layers.iter().find(|l| l.unwritten.is_some()) {
        return Err(ExportError::Invalid(format!(
            "internal: layer {} is kept only as a snapshot; it must be written before an image \
             names it",
            l.diff_id
        )));
    }
    let mut cfg = output.image.clone();
    for (k, v) in labels {
        cfg.labels.insert(k.clone(), v.clone());
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    // With SOURCE_DATE_EPOCH every time this build gives is the epoch, as before layers carried
    // times (those images' digests stay); without it, the layers' own times.
    let doc = if options.source_date_epoch.is_some() {
        config::image_config_file(&cfg, &diff_ids, &now)
    } else {
        let times: Vec<Option<String>> = layers.iter().map(|l| l.created.clone()).collect();
        config::image_config_file_from_layers(&cfg, &diff_ids, &times, &now)
    };
    super::assemble_json(&doc, layer_blobs(store, layers)?, options)
}

/// The store's blobs of `layers`, as an image assembly reads them.
fn layer_blobs(store: &Store, layers: &[Layer]) -> Result<Vec<LayerBlob>, ExportError> {
    layers
        .iter()
        .map(|l| {
            Ok(LayerBlob {
                path: store.blob_path(&l.digest),
                digest: l
                    .digest
                    .to_string()
                    .parse::<Digest>()
                    .map_err(|e| ExportError::Invalid(format!("layer digest {}: {e}", l.digest)))?,
                diff_id: l.diff_id.clone(),
                size: l.size,
                media_type: MediaType::from(l.media_type.as_str()),
            })
        })
        .collect()
}

fn blob_digest(d: &Digest) -> Result<BlobDigest, ExportError> {
    d.to_string()
        .parse()
        .map_err(|e| ExportError::Invalid(format!("digest {d}: {e}")))
}

fn store_descriptor(d: &oci_spec::image::Descriptor) -> Result<Descriptor, ExportError> {
    Ok(Descriptor {
        media_type: d.media_type().to_string(),
        digest: blob_digest(d.digest())?,
        size: d.size(),
    })
}

/// Writes the image's config and manifest into the store and, when the store holds every layer,
/// records it under each name (so `forge images` lists it and `forge push` can send it later).
pub fn record_image(
    store: &Store,
    image: &Image,
    names: &[String],
    platform: &Platform,
) -> Result<ImageRecord, ExportError> {
    write_image_blobs(store, image)?;
    let (record, records) = image_records(store, image, names, platform)?;
    store.record(&records, &[])?;
    Ok(record)
}

/// Writes the image's config and manifest into the store (each synced before it gets its name).
pub fn write_image_blobs(store: &Store, image: &Image) -> Result<(), ExportError> {
    // Side by side: each waits for its own sync, and two syncs at once can share one journal
    // commit of the filesystem.
    std::thread::scope(|s| {
        let config = s.spawn(|| store.write_blob(image.config_json(), None));
        store.write_blob(image.manifest_json(), None)?;
        config
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    Ok(())
}

/// The image's record, and its records under each name the store can list it by (it holds every
/// layer), for the caller to record with whatever else it records ([`Store::record`]) once the
/// config and the manifest are in the store ([`write_image_blobs`]). Writes nothing.
pub fn image_records(
    store: &Store,
    image: &Image,
    names: &[String],
    platform: &Platform,
) -> Result<(ImageRecord, Vec<ImageRecord>), ExportError> {
    let layers = image
        .layers()
        .map(|(_, d)| store_descriptor(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut record = ImageRecord {
        reference: String::new(),
        index: None,
        manifest: store_descriptor(image.manifest_descriptor())?,
        config: store_descriptor(image.config_descriptor())?,
        layers,
        platform: platform.to_string(),
        recorded_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let mut records = Vec::new();
    for name in names {
        let r = Reference::parse(name).map_err(|e| ExportError::Invalid(e.to_string()))?;
        record.reference = r.to_string();
        // An image the store holds only in part (layers served from a registry cache and pushed
        // as mounts) lives in the registry; the store records only images it holds whole.
        if record.layers.iter().all(|l| store.has_blob(&l.digest)) {
            records.push(record.clone());
        }
    }
    Ok((record, records))
}

/// Pushes the recorded image under `tags`; layers from a base image are mounted from the
/// repository they were pulled from when it is on the same registry. `made`: the image just
/// made, whose config and manifest the push takes from memory (the store may still be writing
/// them). `sent`: the layers sent (or being sent) to a repository while their steps wrote them,
/// and what says which arrived.
pub async fn push_image(
    store: &Store,
    registry: &RegistryClient,
    events: &Events,
    made: Option<&Image>,
    record: &ImageRecord,
    layers: &[Layer],
    tags: &[String],
    sent: Option<(&str, &std::collections::HashSet<BlobDigest>, Landing<'_>)>,
) -> Result<BlobDigest, ExportError> {
    let (sent, landing) = match sent {
        Some((repository, digests, landing)) => (Some((repository, digests)), Some(landing)),
        None => (None, None),
    };
    let refs = tags
        .iter()
        .map(|t| Reference::parse(t).map_err(|e| ExportError::Invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let image = PushImage {
        manifest: record.manifest.clone(),
        config: PushBlob {
            descriptor: record.config.clone(),
            kind: BlobKind::Config,
            mount_from: None,
            sent_to: None,
        },
        layers: record
            .layers
            .iter()
            .zip(layers)
            .map(|(d, l)| PushBlob {
                descriptor: d.clone(),
                kind: BlobKind::Layer,
                mount_from: l.source.clone(),
                sent_to: sent
                    .filter(|(_, digests)| digests.contains(&d.digest))
                    .map(|(repository, _)| repository.to_string()),
            })
            .collect(),
        // Taken from the image just made: the store may still be writing them.
        held: made
            .into_iter()
            .flat_map(|image| {
                [
                    (record.config.digest.clone(), image.config_json()),
                    (record.manifest.digest.clone(), image.manifest_json()),
                ]
            })
            .map(|(digest, bytes)| (digest, bytes::Bytes::copy_from_slice(bytes)))
            .collect(),
    };
    let tx = events.clone();
    let name = tags.join(", ");
    let progress = move |event| {
        tx.emit(BuildEvent::Push {
            reference: name.clone(),
            event,
        })
    };
    registry
        .push_while_landing(store, &image, &refs, &progress, landing)
        .await
        .map_err(|e| ExportError::Push {
            tags: tags.join(", "),
            source: Box::new(e),
        })
}

/// An image of the store made ready to push (`forge push`): its layers as a registry and every
/// client read them. Layers kept in the store with fast zstd are re-encoded with gzip and the
/// image re-assembled around the same config bytes (so its ID stays), recorded under `reference`;
/// an image whose layers are gzip or plain already is returned as it is.
pub async fn stored_for_push(
    store: &Store,
    reference: &str,
) -> Result<(ImageRecord, Vec<Layer>), ExportError> {
    let record = store
        .get_image(reference)?
        .ok_or_else(|| ExportError::Invalid(format!("no image {reference} in the store")))?;
    let config_json = store.read_blob(&record.config.digest)?;
    let base = config::read_base_config(&config_json)
        .map_err(|e| ExportError::Invalid(format!("{reference}: {e}")))?;
    if base.diff_ids.len() != record.layers.len() {
        return Err(ExportError::Invalid(format!(
            "{reference}: its config lists {} diff_ids for {} layers",
            base.diff_ids.len(),
            record.layers.len()
        )));
    }
    let layers: Vec<Layer> = record
        .layers
        .iter()
        .zip(&base.diff_ids)
        .map(|(d, diff_id)| Layer {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            diff_id: diff_id.clone(),
            source: None,
            unwritten: None,
            created: None,
            mtimes: None,
        })
        .collect();
    let gzip = forge_snapshotter::compress::Compression::Gzip { level: 6 };
    // No layer of a stored image has a source here: every one is re-encoded as needed.
    let pushable = with_compression(store, &layers, &Default::default(), gzip).await?;
    if pushable == layers {
        return Ok((record, layers));
    }
    let blobs = layer_blobs(store, &pushable)?;
    // zstd layers re-encoded with gzip may go under Docker's types again.
    let format = if record.manifest.media_type.contains("docker") {
        super::ManifestFormat::Docker
    } else {
        super::ManifestFormat::Oci
    };
    // The config is the stored one, byte for byte (its diff_ids name the uncompressed layers,
    // which did not change): the image keeps its ID, whatever JSON another tool wrote it in.
    let created = base.created.clone();
    let image = super::wrap_config(
        config_json,
        created,
        blobs,
        &ImageOptions {
            format,
            source_date_epoch: None,
        },
    )?;
    let platform = Platform::parse(&record.platform).unwrap_or_else(Platform::host);
    let repacked = record_image(store, &image, &[reference.to_string()], &platform)?;
    Ok((repacked, pushable))
}
