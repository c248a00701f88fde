//! The layers a build takes from its cache with another SOURCE_DATE_EPOCH's times, re-stamped
//! to the build's own at export (see `forge_snapshotter::restamp`).

use forge_snapshotter::compress::Compression;

use super::build::unless_cancelled;
use super::{BuildError, Session};
use crate::cache_io::RemoteBlobs;
use crate::events::Events;
use crate::export;
use crate::solver::CancellationToken;

impl Session {
    /// The image's layers with those the cache kept from builds with another SOURCE_DATE_EPOCH
    /// (or none) re-stamped to `epoch`, as the phase that says how many; `layers` as they are
    /// when each has `epoch`'s mark already (a build with no cache, or the same epoch), with no
    /// work done, and what an earlier build re-stamped taken as it made it. The blobs to re-stamp
    /// are fetched first (an imported cache's are lazy).
    pub(super) async fn restamp_cached(
        &self,
        layers: &[crate::ops::Layer],
        epoch: i64,
        compression: Compression,
        remote: &RemoteBlobs,
        events: &Events,
        cancel: &CancellationToken,
    ) -> Result<Vec<crate::ops::Layer>, BuildError> {
        if export::restamps_needed(layers, epoch) == 0 {
            return Ok(layers.to_vec());
        }
        let memo = export::Restamped::new(self.root.join("restamped"));
        let layers = {
            let (memo, store, layers) = (memo.clone(), self.store.clone(), layers.to_vec());
            tokio::task::spawn_blocking(move || memo.recall(&store, &layers, epoch, compression))
                .await
                .map_err(|e| BuildError::Invalid(format!("worker thread: {e}")))?
        };
        let needed = export::restamps_needed(&layers, epoch);
        if needed == 0 {
            return Ok(layers);
        }
        let layers = &layers;
        let phase = format!(
            "re-stamping {needed} cached layer{} to SOURCE_DATE_EPOCH {epoch}",
            if needed == 1 { "" } else { "s" }
        );
        let work = async {
            let digests: Vec<_> = layers
                .iter()
                .filter(|l| l.restamp_to(epoch).is_some())
                .map(|l| l.digest.clone())
                .collect();
            remote
                .ensure(&self.store, &digests)
                .await
                .map_err(BuildError::CacheBlob)?;
            Ok(export::restamp(&self.store, layers, epoch, compression, &memo).await?)
        };
        events
            .phase_result(&phase, unless_cancelled(cancel, work))
            .await
    }
}
