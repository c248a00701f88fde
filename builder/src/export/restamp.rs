//! The layers of an image built with SOURCE_DATE_EPOCH, made the layers a build with no cache would
//! give it: a layer the cache kept from a build with another epoch (or none) is re-stamped to this
//! one ([`forge_snapshotter::restamp`]) into a new blob, as BuildKit's rewrite-timestamp does at
//! export. Cache keys hold no epoch, so a cache shared by builds whose epoch is each one's commit
//! time keeps hitting; the records keep their layers, and other builds with their epoch still get
//! them as they are. What a re-stamp made is remembered ([`Restamped`]), so the same image built
//! again with the same epoch does not re-stamp again.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

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
/// would make), and remembered in `memo`; the rest are returned as they are. Every blob to
/// re-stamp must be in the store.
pub async fn restamp(
    store: &Store,
    layers: &[Layer],
    epoch: i64,
    compression: Compression,
    memo: &Restamped,
) -> Result<Vec<Layer>, ExportError> {
    futures::stream::iter(layers.iter().cloned())
        .map(|layer| {
            let (store, memo) = (store.clone(), memo.clone());
            async move {
                let Some(rule) = layer.restamp_to(epoch) else {
                    return Ok(layer);
                };
                tokio::task::spawn_blocking(move || {
                    let made = restamp_one(&store, &layer, rule, compression)?;
                    memo.remember(&layer, rule, compression, &made);
                    Ok(made)
                })
                .await
                .map_err(|e| ExportError::Invalid(format!("worker thread: {e}")))?
            }
        })
        .buffered(AT_ONCE)
        .try_collect()
        .await
}

/// Re-stamped layers, remembered by what they were made from: one small file per source layer
/// (its diff_id and how its mtimes were written) and compression, holding the last result and the
/// epoch it has. A hint only: a result whose blob the store no longer has (a prune), or a file
/// that does not read, is no result, and the layer is re-stamped again. Keeping one epoch per
/// source bounds the files by the layers re-stamped; [`Restamped::forget_gone`] drops those whose
/// blob is gone.
#[derive(Debug, Clone)]
pub struct Restamped {
    dir: PathBuf,
}

/// What a [`Restamped`] file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remembered {
    to: i64,
    layer: Layer,
}

impl Restamped {
    pub fn new(dir: PathBuf) -> Restamped {
        Restamped { dir }
    }

    /// The file of `layer` re-stamped by `rule`'s source epoch in `compression`, named by a hash
    /// of an explicit encoding of the three.
    fn path(&self, layer: &Layer, rule: Restamp, compression: Compression) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(b"forge restamped v1\0");
        let diff_id = layer.diff_id.to_string();
        h.update(&(diff_id.len() as u64).to_le_bytes());
        h.update(diff_id.as_bytes());
        match rule.from {
            None => h.update(&[0]),
            Some(e) => h.update(&[1]).update(&e.to_le_bytes()),
        };
        let (codec, level): (u8, i64) = match compression {
            Compression::None => (0, 0),
            Compression::Gzip { level } => (1, level.into()),
            Compression::GzipParallel { level } => (2, level.into()),
            Compression::Zstd { level } => (3, level.into()),
        };
        h.update(&[codec]).update(&level.to_le_bytes());
        self.dir.join(h.finalize().to_hex().as_str())
    }

    /// `layers` with every one that needs re-stamping to `epoch` replaced by what an earlier
    /// re-stamp made of it, where that is remembered and its blob is in `store`.
    pub fn recall(
        &self,
        store: &Store,
        layers: &[Layer],
        epoch: i64,
        compression: Compression,
    ) -> Vec<Layer> {
        layers
            .iter()
            .map(|l| {
                let remembered = l.restamp_to(epoch).and_then(|rule| {
                    let bytes = std::fs::read(self.path(l, rule, compression)).ok()?;
                    let r: Remembered = serde_json::from_slice(&bytes).ok()?;
                    (r.to == epoch && store.has_blob(&r.layer.digest)).then_some(r.layer)
                });
                match remembered {
                    // The step's time is this record's, as the layer re-stamped now would keep.
                    Some(made) => Layer {
                        created: l.created.clone(),
                        ..made
                    },
                    None => l.clone(),
                }
            })
            .collect()
    }

    /// Notes that `layer` re-stamped by `rule` in `compression` is `made`. Best effort: without a
    /// note the next build re-stamps again. Not synced (a torn file does not read, and is none).
    fn remember(&self, layer: &Layer, rule: Restamp, compression: Compression, made: &Layer) {
        let path = self.path(layer, rule, compression);
        let note = Remembered {
            to: rule.to,
            layer: made.clone(),
        };
        let tmp = path.with_extension(format!("tmp-{}", forge_snapshotter::lock::random_hex()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&note).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Removes the notes whose blob `store` no longer has (after a prune), and temporary files a
    /// killed build left; returns how many.
    pub fn forget_gone(&self, store: &Store) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let kept = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
                .is_some_and(|r| store.has_blob(&r.layer.digest));
            if !kept && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
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
