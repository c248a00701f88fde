//! The layers of an image built with SOURCE_DATE_EPOCH, made the layers a build with no cache would
//! give it: a layer the cache kept from a build with another epoch (or none) is re-stamped to this
//! one ([`forge_snapshotter::restamp`]) into a new blob, as BuildKit's rewrite-timestamp does at
//! export. Cache keys hold no epoch, so a cache shared by builds whose epoch is each one's commit
//! time keeps hitting; the records keep their layers, and other builds with their epoch still get
//! them as they are.

use std::io::{BufReader, BufWriter};

use forge_snapshotter::compress::{Compression, decompressor};
use forge_snapshotter::restamp::{Restamp, restamp_layer};
use forge_snapshotter::store::Store;
use forge_snapshotter::writeback::Writeback;
use futures::{StreamExt, TryStreamExt};

use super::{ExportError, io_err};
use crate::ops::{Layer, Mtimes};

/// How many layers are re-stamped at once: each takes three threads (the read and rewrite, the
/// tar's hash, the compression).
const AT_ONCE: usize = 4;

/// How many of `layers` an image built with `epoch` needs re-stamped.
pub fn restamps_needed(layers: &[Layer], epoch: i64) -> usize {
    layers
        .iter()
        .filter(|l| l.restamp_to(epoch).is_some())
        .count()
}

/// `layers` for an image built with SOURCE_DATE_EPOCH `epoch`: each one forge wrote with another
/// epoch, or without one, is written again with its mtimes moved to `epoch`, in `compression`
/// (what a step of this build writes its layer in, so the blob is the one a build with no cache
/// would make); the rest are returned as they are. Every blob to re-stamp must be in the store.
pub async fn restamp(
    store: &Store,
    layers: &[Layer],
    epoch: i64,
    compression: Compression,
) -> Result<Vec<Layer>, ExportError> {
    futures::stream::iter(layers.iter().cloned())
        .map(|layer| {
            let store = store.clone();
            async move {
                let Some(rule) = layer.restamp_to(epoch) else {
                    return Ok(layer);
                };
                tokio::task::spawn_blocking(move || restamp_one(&store, &layer, rule, compression))
                    .await
                    .map_err(|e| ExportError::Invalid(format!("worker thread: {e}")))?
            }
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await
}

fn restamp_one(
    store: &Store,
    layer: &Layer,
    rule: Restamp,
    compression: Compression,
) -> Result<Layer, ExportError> {
    let failed = |source| ExportError::Restamp {
        diff_id: layer.diff_id.to_string(),
        rule,
        source,
    };
    let tmp = store.temp_path("restamp")?;
    let file = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let blob = store.open_blob(&layer.digest)?;
    let tar = decompressor(
        BufReader::with_capacity(256 * 1024, blob),
        &layer.media_type,
    )
    .map_err(|e| failed(e.into()))?;
    let sink = BufWriter::with_capacity(256 * 1024, Writeback::new(file));
    let (desc, sink) = restamp_layer(tar, sink, compression, rule).map_err(failed)?;
    sink.into_inner()
        .map_err(|e| io_err("writing", &tmp)(e.into_error()))?;
    let digest = desc
        .digest
        .to_string()
        .parse()
        .map_err(|e| ExportError::Invalid(format!("layer digest {}: {e}", desc.digest)))?;
    // Closed unsynced: `adopt` syncs it before giving it its name.
    store.adopt(&tmp, &digest, desc.size)?;
    Ok(Layer {
        media_type: desc.media_type,
        digest,
        size: desc.size,
        diff_id: desc.diff_id,
        // A new blob: no repository holds it yet.
        source: None,
        unwritten: None,
        created: layer.created.clone(),
        mtimes: Some(Mtimes {
            clamped_to: Some(rule.to),
        }),
    })
}
