//! What a build records in the store's metadata, and when: in one commit at its end, or, on any
//! other way out, when it is dropped.

use forge_snapshotter::store::{Digest as BlobDigest, ImageRecord, Store};

use super::BuildError;
use crate::ops::Built;
use crate::solver::Solution;
use crate::source::BaseImages;

/// What a build has to record in the store's metadata: the base images it pulled (their blobs are
/// in the store, their records not yet) and its results (each new step's blobs, by cache key, as
/// roots that keep them from `forge prune` while their cache records exist; a failed build's
/// solved steps too). A successful build records them with its image in one commit
/// ([`Pending::record_with`]); dropped before that (a failed step or export, a cancelled push),
/// they are recorded on their own. Until then the build's store session keeps a prune off them.
pub(super) struct Pending {
    store: Store,
    images: Vec<ImageRecord>,
    roots: Vec<(String, Vec<BlobDigest>)>,
}

impl Pending {
    /// What is pending once the bases are in: the records of those pulled just now.
    pub(super) fn new(store: &Store, bases: &BaseImages) -> Pending {
        Pending {
            store: store.clone(),
            images: bases
                .images
                .values()
                .filter(|b| b.unrecorded)
                .map(|b| b.record.clone())
                .collect(),
            roots: Vec::new(),
        }
    }

    /// The steps `solution` ran (not those it found in the cache).
    pub(super) fn results(&mut self, solution: &Solution<Built>) {
        self.roots = solution
            .iter()
            .filter(|(_, s)| !s.cached)
            .map(|(_, s)| (s.key.to_hex(), s.output.blobs()))
            .filter(|(_, digests)| !digests.is_empty())
            .collect();
    }

    /// Records everything pending and `built` (the image under each of its names, recorded last,
    /// so that it wins over a base of the same name) in one commit.
    pub(super) fn record_with(mut self, built: Vec<ImageRecord>) -> Result<(), BuildError> {
        let mut images = std::mem::take(&mut self.images);
        images.extend(built);
        let roots = std::mem::take(&mut self.roots);
        self.store.record(&images, &root_refs(&roots))?;
        Ok(())
    }
}

fn root_refs(roots: &[(String, Vec<BlobDigest>)]) -> Vec<(&'static str, &str, &[BlobDigest])> {
    roots
        .iter()
        .map(|(key, digests)| (crate::gc::CACHE_ROOT, key.as_str(), digests.as_slice()))
        .collect()
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Best effort: a store that cannot take them now leaves the blobs to a prune, and the
        // next build resolves its bases again.
        let _ = self.store.record(&self.images, &root_refs(&self.roots));
    }
}
