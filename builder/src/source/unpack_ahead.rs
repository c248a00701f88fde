//! A base image unpacked while it downloads. A cold build used to download every layer of its
//! base and only then, when the first step asked, unpack them one after the other: the download's
//! time came on top of the unpack's. [`UnpackAhead`] follows the pull instead: each layer is
//! unpacked into its snapshot from the blob's file as the bytes arrive (in base-first order, as a
//! layer needs its parent), so that the unpack ends soon after the download does.
//!
//! Nothing depends on it finishing: the step's own `ensure_snapshot` takes turns with it per
//! snapshot (`unpack_turn`), finds what it made, and unpacks from the store whatever it did not
//! (a layer whose download was retried or failed, a blob the store already had). A snapshot is
//! committed only once its whole blob arrived and matched its digest, and its layer's diff_id
//! matched the config; the store syncs the blob meanwhile, and the build waits for the pull.

use std::io::BufReader;
use std::sync::{Arc, Condvar, Mutex};

use forge_snapshotter::layer::chain_id;
use forge_snapshotter::registry::{FollowedBlob, LayerFollower};
use forge_snapshotter::snapshot::{AnySnapshotter, unpack_layer_snapshot};
use forge_snapshotter::store::Descriptor;
use oci_spec::image::Digest;

/// Where the layers go: the snapshotter, once it is open (a new store's waits for the isolation
/// probe; `None`: it could not be opened, which the step that needs it reports).
pub(crate) type SnapshotsWhenOpen = Arc<dyn Fn() -> Option<Arc<AnySnapshotter>> + Send + Sync>;

/// Unpacks one image's layers as they download (see the module).
pub(crate) struct UnpackAhead {
    snapshots: SnapshotsWhenOpen,
    state: Arc<(Mutex<Layers>, Condvar)>,
}

#[derive(Default)]
struct Layers {
    /// The config's, once it is in.
    diff_ids: Option<Vec<Digest>>,
    /// By layer index; grows as layers are followed.
    slots: Vec<Slot>,
    /// The pull is over: a slot still waiting will never be filled.
    pull_done: bool,
    /// The unpacking thread runs (started by the first layer followed).
    started: bool,
}

#[derive(Default)]
enum Slot {
    #[default]
    Waiting,
    Arriving {
        blob: FollowedBlob,
        media_type: String,
    },
    Taken,
}

impl UnpackAhead {
    pub(crate) fn new(snapshots: SnapshotsWhenOpen) -> UnpackAhead {
        UnpackAhead {
            snapshots,
            state: Arc::default(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Layers)) {
        let (lock, more) = &*self.state;
        change(&mut lock.lock().unwrap_or_else(|e| e.into_inner()));
        more.notify_all();
    }
}

/// A pull dropped half way (its build cancelled) never says it is done: the unpacking thread is
/// told here instead, so that it never waits for a layer that will not come.
impl Drop for UnpackAhead {
    fn drop(&mut self) {
        self.pull_done();
    }
}

impl LayerFollower for UnpackAhead {
    fn diff_ids(&self, diff_ids: &[Digest]) {
        self.update(|layers| layers.diff_ids = Some(diff_ids.to_vec()));
    }

    fn follow(&self, index: usize, layer: &Descriptor, blob: FollowedBlob) {
        self.update(|layers| {
            if layers.slots.len() <= index {
                layers.slots.resize_with(index + 1, Slot::default);
            }
            // A retried download's reader replaces one not read yet; one already being read
            // fails with the old download, and the step unpacks that layer from the store.
            let slot = &mut layers.slots[index];
            if !matches!(slot, Slot::Taken) {
                *slot = Slot::Arriving {
                    blob,
                    media_type: layer.media_type.clone(),
                };
            }
            if !layers.started {
                layers.started = true;
                let (snapshots, state) = (self.snapshots.clone(), self.state.clone());
                // On the runtime's blocking pool, which the process waits for at its end: no
                // unpack is cut off half way by the build returning.
                tokio::task::spawn_blocking(move || unpack_in_order(&snapshots, &state));
            }
        });
    }

    fn pull_done(&self) {
        self.update(|layers| layers.pull_done = true);
    }
}

/// What the next layer needs to be unpacked: its reader and media type, its parent's chain id and
/// its diff_id; `None` when it will not come.
type Next = (FollowedBlob, String, Option<Digest>, Digest);

/// Waits until layer `index` is arriving and the diff_ids are known, and takes it.
fn next_layer(state: &(Mutex<Layers>, Condvar), index: usize) -> Option<Next> {
    let (lock, more) = state;
    let mut layers = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let known = layers.diff_ids.as_ref().map(Vec::len);
        if known.is_some_and(|n| index >= n) {
            return None;
        }
        let arriving = matches!(layers.slots.get(index), Some(Slot::Arriving { .. }));
        if let (true, Some(_)) = (arriving, known) {
            let Slot::Arriving { blob, media_type } =
                std::mem::replace(&mut layers.slots[index], Slot::Taken)
            else {
                unreachable!("matched as arriving above");
            };
            let diff_ids = layers.diff_ids.as_deref().unwrap_or_default();
            let parent = chain_id(diff_ids[..index].iter());
            return Some((blob, media_type, parent, diff_ids[index].clone()));
        }
        if layers.pull_done {
            return None;
        }
        layers = more.wait(layers).unwrap_or_else(|e| e.into_inner());
    }
}

/// Unpacks the layers base first, each as soon as its download starts; stops at the first layer
/// that will not come or fails (the step unpacks the rest from the store).
fn unpack_in_order(snapshots: &SnapshotsWhenOpen, state: &(Mutex<Layers>, Condvar)) {
    let Some(snapshots) = snapshots() else {
        return;
    };
    let snapshots = snapshots.as_ref();
    let mut index = 0;
    while let Some((blob, media_type, parent, diff_id)) = next_layer(state, index) {
        let reader = BufReader::with_capacity(256 * 1024, blob);
        if unpack_layer_snapshot(snapshots, parent.as_ref(), &diff_id, reader, &media_type).is_err()
        {
            return;
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_snapshotter::reference::Reference;
    use forge_snapshotter::registry::{RegistryClient, RegistryConfig};
    use forge_snapshotter::snapshot::{BackendKind, Snapshotter};
    use forge_snapshotter::store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_base_pulled_cold_is_unpacked_as_it_downloads_and_the_step_finds_it() {
        let Some(reference) = forge_testsupport::busybox_image() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let snapshots = Arc::new(
            AnySnapshotter::open(&dir.path().join("snapshots"), Some(BackendKind::Copy)).unwrap(),
        );
        let registry = RegistryClient::new(RegistryConfig::default());
        let given = snapshots.clone();
        let ahead = UnpackAhead::new(Arc::new(move || Some(given.clone())));
        let record = registry
            .pull_unrecorded(
                &store,
                &Reference::parse(&reference).unwrap(),
                &|_| {},
                Some(&ahead),
            )
            .await
            .expect("busybox pulls from the test registry");
        drop(ahead);
        let config = store.read_blob(&record.config.digest).unwrap();
        let diff_ids = crate::export::config::read_base_config(&config)
            .unwrap()
            .diff_ids;
        let top = chain_id(diff_ids.iter()).unwrap().to_string();
        // The unpack finishes on its own thread, soon after the download.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while snapshots.stat(&top).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot {top} 30 s after the pull"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // What the first step does with a base: each layer's snapshot is there already, so
        // nothing is read (an empty reader would fail any unpack).
        for (i, layer) in record.layers.iter().enumerate() {
            let parent = chain_id(diff_ids[..i].iter());
            let found = unpack_layer_snapshot(
                snapshots.as_ref(),
                parent.as_ref(),
                &diff_ids[i],
                std::io::empty(),
                &layer.media_type,
            )
            .unwrap();
            assert!(found.reused, "layer {i} was not unpacked ahead");
        }
        // And it holds the image's files.
        let mounts = snapshots.mounts(&top).unwrap();
        let root = &mounts[0].source;
        assert!(
            root.join("bin/busybox").is_file(),
            "no bin/busybox in the snapshot at {}",
            root.display()
        );
    }
}
