//! The layers of an image being pushed, sent to its repository while their steps write them: the
//! upload of each follows its blob file as the compressor fills it, so that a layer has left by
//! the time its step ends and the push after the build sends only the config and the manifest.
//! An upload that fails costs nothing but the time it took: the push after the build sends that
//! blob from the store as it sends any other.

use std::collections::HashSet;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    FollowEnd, PushEvent, RegistryClient, Reported, SPARE_SERVES_FOR,
};
use forge_snapshotter::store::Digest;
use forge_snapshotter::writeback::Writeback;

use crate::events::{BuildEvent, Events};
use crate::graph::{Graph, Op, VertexId};

/// The most upload sessions [`LayerUploads::warm`] is asked to open: a longer chain's later
/// layers open theirs as their steps start, as any layer does.
const WARM_AT_MOST: usize = 8;

/// The blobs a build that finds nothing in a cache sends for the image whose layer chain is
/// `chain` (see [`Graph::layer_chain`]): a layer for each step and file operation of it, then the
/// config; at most [`WARM_AT_MOST`].
fn blobs_of_a_cold_build(graph: &Graph, chain: &HashSet<VertexId>) -> usize {
    let layers = graph
        .vertices
        .iter()
        .filter(|v| chain.contains(&v.id) && matches!(v.op, Op::Exec(_) | Op::File(_)))
        .count();
    (layers + 1).min(WARM_AT_MOST)
}

/// The uploads of one build's leaving layers to the first repository it pushes to.
pub struct LayerUploads {
    registry: Arc<RegistryClient>,
    target: Reference,
    /// The tags pushed, joined by `, `: the name push events carry.
    name: String,
    events: Events,
    runtime: tokio::runtime::Handle,
    /// Each upload with the digest its writer made; only an upload whose digest matches counts.
    running: Mutex<Vec<(Digest, tokio::task::JoinHandle<FollowEnd>)>>,
    /// Upload sessions opened ahead for this build's blobs, and layers started (see `start`).
    spares: Mutex<Spares>,
}

#[derive(Default)]
struct Spares {
    opened: usize,
    layers: usize,
    /// When `warm` opened its sessions, while they count.
    warmed: Option<Instant>,
}

impl Spares {
    /// `blobs` sessions opened at the build's start, at `now`. Only sessions opened here age as
    /// [`Spares::layer_started`] reckons: with none, the layers' own count.
    fn warmed(&mut self, blobs: usize, now: Instant) {
        if blobs > 0 {
            self.opened += blobs;
            self.warmed = Some(now);
        }
    }

    /// A layer started at `now`: how many sessions to open so that it and the blob after it
    /// find one each.
    fn layer_started(&mut self, now: Instant) -> usize {
        self.layers += 1;
        // Those `warm` opened and no layer took may be too old to serve by the time this layer's
        // upload, or the blob after it, asks for one: counted no more.
        if self
            .warmed
            .is_some_and(|at| now.saturating_duration_since(at) >= SPARE_SERVES_FOR / 2)
        {
            self.warmed = None;
            self.opened = self.opened.min(self.layers - 1);
        }
        let missing = (self.layers + 1).saturating_sub(self.opened);
        self.opened += missing;
        missing
    }
}

/// One upload started on a layer file, not yet known to succeed.
pub struct Started {
    handle: tokio::task::JoinHandle<FollowEnd>,
}

impl LayerUploads {
    /// Uploads into `target`'s repository; spawned on the current runtime (call from within it).
    pub fn new(
        registry: Arc<RegistryClient>,
        target: Reference,
        name: String,
        events: Events,
    ) -> LayerUploads {
        LayerUploads {
            registry,
            target,
            name,
            events,
            runtime: tokio::runtime::Handle::current(),
            running: Mutex::new(Vec::new()),
            spares: Mutex::default(),
        }
    }

    /// Gets the registry ready at the build's start: asks it whether it wants a token (the
    /// answer and the connection are kept for the uploads) and, for a build that will make every
    /// layer of the image's `cold_chain` (it finds none in a cache), opens the upload sessions of
    /// those layers and the config while the registry has time. A layer's `start` then opens only
    /// what these do not cover. Call once, before any `start`.
    pub fn warm(&self, graph: &Graph, cold_chain: Option<&HashSet<VertexId>>) {
        let blobs = cold_chain.map_or(0, |chain| blobs_of_a_cold_build(graph, chain));
        self.spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .warmed(blobs, Instant::now());
        self.registry.open_spares(&self.target, blobs);
    }

    /// Starts uploading the blob about to be written to `file` (new, empty, and open for reading
    /// as well as writing) through the returned writer. `None` when the file cannot be opened a
    /// second time: the layer is then written as if no upload followed it.
    pub fn start(&self, file: File) -> (Reported<Writeback>, Option<Started>) {
        let Ok(reader) = file.try_clone() else {
            return (Reported::unfollowed(Writeback::new(file)), None);
        };
        // A layer written means one blob more to send after it: the next layer, or the image's
        // config (new, as the image is). Its upload session is opened now, while the registry
        // has time, unless `warm` opened it already; the first layer's own as well. Both are
        // waiting before this upload starts, so that it takes the first of them.
        let missing = self
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .layer_started(Instant::now());
        if missing > 0 {
            self.registry.open_spares(&self.target, missing);
        }
        let (reported, upload) =
            self.registry
                .upload_while_written(&self.target, reader, Writeback::new(file));
        let (events, name) = (self.events.clone(), self.name.clone());
        let started = std::time::Instant::now();
        let handle = self.runtime.spawn(async move {
            let end = upload.await;
            match &end {
                FollowEnd::Sent(sent) => events.emit(BuildEvent::Push {
                    reference: name,
                    event: PushEvent::Streamed {
                        repository: sent.repository.clone(),
                        digest: sent.digest.clone(),
                        bytes: sent.size,
                        duration: started.elapsed(),
                    },
                }),
                // Sent again, from the store, by the push after the build.
                FollowEnd::Failed(e) => events.emit(BuildEvent::Push {
                    reference: name,
                    event: PushEvent::Retrying {
                        what: "a layer sent while its step wrote it".into(),
                        attempt: 1,
                        took: std::time::Duration::ZERO,
                        delay: std::time::Duration::ZERO,
                        error: e.to_string(),
                    },
                }),
                FollowEnd::Abandoned => {}
            }
            end
        });
        (reported, Some(Started { handle }))
    }

    /// Keeps `started`, whose writer made the blob `digest`, to be waited for by [`Self::sent`].
    pub fn written(&self, started: Started, digest: Digest) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((digest, started.handle));
    }

    /// Waits for every upload started; the digests now in the target repository.
    pub async fn sent(&self) -> HashSet<Digest> {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        let mut sent = HashSet::new();
        for (digest, handle) in running {
            if let Ok(FollowEnd::Sent(blob)) = handle.await
                && blob.digest == digest
            {
                sent.insert(digest);
            }
        }
        sent
    }

    /// The digests of the layers sent or being sent (which of them arrived: [`Self::sent`]).
    pub fn streaming(&self) -> HashSet<Digest> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.iter().map(|(digest, _)| digest.clone()).collect()
    }

    /// `registry/repository` the uploads go to.
    pub fn repository(&self) -> String {
        self.target.name()
    }

    /// Gives up the upload sessions opened ahead that no blob took (after the push).
    pub async fn give_up_spares(&self) {
        self.spares.lock().unwrap_or_else(|p| p.into_inner()).opened = 0;
        self.registry.give_up_spares(&self.target).await;
    }
}

impl Drop for LayerUploads {
    /// A build that ends before its push stops what it still sends.
    fn drop(&mut self) {
        for (_, handle) in self.running.get_mut().unwrap_or_else(|p| p.into_inner()) {
            handle.abort();
        }
        // Its spare sessions too, as far as the runtime lives on (a failed build's process
        // ends soon after; the registry purges what is left, as it does an aborted upload).
        if self
            .spares
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .opened
            > 0
        {
            let (registry, target) = (self.registry.clone(), self.target.clone());
            self.runtime
                .spawn(async move { registry.give_up_spares(&target).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{SPARE_SERVES_FOR, Spares};

    #[test]
    fn each_layer_opens_what_it_and_the_blob_after_it_lack() {
        let t = Instant::now();
        // Not warmed: the first layer opens its own and the next blob's, every later one the
        // blob after it, however long the build takes.
        let mut s = Spares::default();
        s.warmed(0, t);
        assert_eq!(s.layer_started(t), 2);
        assert_eq!(s.layer_started(t + SPARE_SERVES_FOR), 1);
        assert_eq!(s.layer_started(t + SPARE_SERVES_FOR * 2), 1);
        // Warmed with three (two layers and the config): the layers open none while those serve.
        let mut s = Spares::default();
        s.warmed(3, t);
        assert_eq!(s.layer_started(t + Duration::from_secs(1)), 0);
        assert_eq!(s.layer_started(t + Duration::from_secs(2)), 0);
        assert_eq!(s.layer_started(t + Duration::from_secs(3)), 1);
        // Warmed sessions getting old count no more: the layer then opens its own and the next's.
        let mut s = Spares::default();
        s.warmed(3, t);
        assert_eq!(s.layer_started(t + Duration::from_secs(1)), 0);
        assert_eq!(s.layer_started(t + SPARE_SERVES_FOR / 2), 2);
        assert_eq!(s.layer_started(t + SPARE_SERVES_FOR), 1);
    }
}
