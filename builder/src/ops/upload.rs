//! The layers of an image being pushed, sent to its repository while their steps write them: the
//! upload of each follows its blob file as the compressor fills it, so that a layer has left by
//! the time its step ends and the push after the build sends only the config and the manifest.
//! An upload that fails costs nothing but the time it took: the push after the build sends that
//! blob from the store as it sends any other.

use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{FollowEnd, PushEvent, RegistryClient, Reported};
use forge_snapshotter::store::Digest;
use forge_snapshotter::writeback::Writeback;

use crate::events::{BuildEvent, Events};

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
    /// Whether a layer has started, with the upload sessions opened for it and for the blob after
    /// it (see `start`).
    spares_opened: AtomicBool,
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
            spares_opened: AtomicBool::new(false),
        }
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
        // has time; the first layer opens its own as well. Both are waiting before this upload
        // starts, so that it takes the first of them.
        if !self.spares_opened.swap(true, Ordering::Relaxed) {
            self.registry.open_spare(&self.target);
        }
        self.registry.open_spare(&self.target);
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
        self.spares_opened.store(false, Ordering::Relaxed);
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
        if self.spares_opened.load(Ordering::Relaxed) {
            let (registry, target) = (self.registry.clone(), self.target.clone());
            self.runtime
                .spawn(async move { registry.give_up_spares(&target).await });
        }
    }
}
