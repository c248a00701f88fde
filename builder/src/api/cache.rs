//! A build's `--cache-to`: what the build API adds around [`crate::cache_io`]'s export (the
//! phase, cache mount packing, `ignore-error`), shared by `forge build` and a pipeline's images.

use forge_snapshotter::reference::Reference;

use super::BuildError;
use super::session::Session;
use crate::cache_io::{self, RemoteBlobs};
use crate::events::{BuildEvent, Events};

/// The image's layers, as a cache export needs them.
pub(crate) struct ImageLayers<'a> {
    /// As the solve made them (the records' own): a `mode=min` export sends the records whose
    /// layers begin the image's.
    pub solved: &'a [crate::ops::Layer],
    /// The tag the image was pushed under and the layers pushed (re-stamped or recompressed
    /// ones are not the records'), which the cache's manifest can mount.
    pub pushed: Option<(&'a str, &'a [crate::ops::Layer])>,
}

impl Session {
    /// Writes one `--cache-to` of `entries` (a build's solved vertices, and a pipeline's jobs');
    /// a failure fails the build unless the target says `ignore-error`. Layers kept only as
    /// snapshots are written with `source_date_epoch`, the build's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn export_cache(
        &self,
        target: &cache_io::CacheExport,
        entries: &[cache_io::CacheEntry],
        cache_mounts: &[String],
        image: ImageLayers<'_>,
        source_date_epoch: Option<i64>,
        remote: &RemoteBlobs,
        events: &Events,
    ) -> Result<(), BuildError> {
        let phase = format!("exporting cache to {}", target.location);
        let result = events
            .phase_result(&phase, async {
                let mounts = if target.mounts {
                    let ids = cache_mounts.to_vec();
                    let (root, store) = (self.root.join("cache-mounts"), self.store.clone());
                    tokio::task::spawn_blocking(move || {
                        cache_io::export_mounts(&root, &ids, &store)
                    })
                    .await
                    .map_err(|e| e.to_string())??
                } else {
                    Vec::new()
                };
                // Steps whose layers this store kept only as snapshots get their blobs now.
                let mut written = Vec::with_capacity(entries.len());
                for e in entries {
                    let mut e = e.clone();
                    if let crate::ops::Built::Fs { layers } = &mut e.output
                        && layers.iter().any(|l| l.unwritten.is_some())
                    {
                        *layers = crate::ops::write_unwritten(
                            self.snapshots().map_err(|e| e.to_string())?,
                            &self.store,
                            layers,
                            forge_snapshotter::layer::LayerOptions {
                                compression: crate::ops::OWN_COMPRESSION,
                                source_date_epoch,
                            },
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                    written.push(e);
                }
                let input = cache_io::ExportInput {
                    entries: &written,
                    image_layers: image.solved,
                    pushed: image.pushed.and_then(|(tag, layers)| {
                        let repository = Reference::parse(tag).ok()?.name();
                        Some((
                            repository,
                            layers.iter().map(|l| l.digest.clone()).collect(),
                        ))
                    }),
                    mounts,
                };
                cache_io::export_cache(
                    target,
                    input,
                    &self.registry,
                    &self.store,
                    Some(remote),
                    events,
                )
                .await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if target.ignore_error => {
                events.emit(BuildEvent::Warning {
                    message: format!("cache: exporting to {} failed: {e}", target.location),
                });
                Ok(())
            }
            Err(e) => Err(BuildError::Invalid(format!(
                "exporting the cache to {}: {e}",
                target.location
            ))),
        }
    }
}

/// The ids of every cache mount the graph's RUN steps use.
pub(super) fn cache_mount_ids(graph: &crate::graph::Graph) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    for v in &graph.vertices {
        if let crate::graph::Op::Exec(e) = &v.op {
            for m in &e.mounts {
                if let crate::graph::MountKind::Cache { id, .. } = &m.kind {
                    ids.insert(id.clone());
                }
            }
        }
    }
    ids.into_iter().collect()
}
