//! Upload sessions opened before the blobs that will fill them exist. Opening a session (`POST
//! .../blobs/uploads/`) is a round trip the registry answers only after it has made the upload's
//! files; at the end of a build, when the last layers and the config are sent and the registry is
//! busy with the commits before them, it took 5-10 ms on the loopback registry, in front of every
//! small blob's commit and so in front of the manifest. A build that writes a layer knows one more
//! blob will follow it (the next layer, or else the image's config, new when a layer is), so it
//! opens that blob's session as the layer starts (`open_spare`), while the registry has time; the
//! next upload to that repository takes it (`open_session`) instead of asking for its own. A
//! build that will make every layer of its image (a new store, no cache to import) opens the
//! sessions of all of them and the config's as it starts (`open_spares`, several at once asking
//! the registry once whether it wants a token), while its first steps run. The config, made by
//! the build and held in memory, is then known to be new: it goes through its spare without the
//! `HEAD` that would ask whether the registry has it (`Target::push_blob`).
//!
//! A spare serves for [`SERVES_FOR`] only (a registry may drop sessions it sees no bytes for);
//! an older one, or one that could not be opened, leaves its blob to open a session of its own,
//! as it would have without it. What no blob took is given up with a `DELETE`
//! (`give_up_spares`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::task::JoinHandle;

use super::target::Via;
use super::upload::Session;
use super::{RegistryClient, oci_reference};
use crate::reference::Reference;

/// How long after its opening a spare session is still used.
pub const SERVES_FOR: Duration = Duration::from_secs(60);

/// Spare sessions, oldest first.
#[derive(Default)]
pub(super) struct Spares {
    waiting: Mutex<VecDeque<Spare>>,
}

struct Spare {
    /// `registry/repository`: where it was opened.
    repository: String,
    opened: Instant,
    /// The session, once the registry has answered; `None` when it opened none (it wants a
    /// token, or refused).
    session: JoinHandle<Option<Session>>,
}

fn repository_key(registry: &str, repository: &str) -> String {
    format!("{registry}/{repository}")
}

impl Spares {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Spare>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest spare of `repository` still fresh; the stale ones stay to be given up.
    fn take(&self, repository: &str) -> Option<JoinHandle<Option<Session>>> {
        let mut waiting = self.waiting();
        let at = waiting
            .iter()
            .position(|s| s.repository == repository && s.opened.elapsed() < SERVES_FOR)?;
        waiting.remove(at).map(|s| s.session)
    }

    /// Every spare of `repository`, taken out.
    fn drain(&self, repository: &str) -> Vec<JoinHandle<Option<Session>>> {
        let mut waiting = self.waiting();
        let (theirs, others) = waiting
            .drain(..)
            .partition::<Vec<_>, _>(|s| s.repository == repository);
        waiting.extend(others);
        theirs.into_iter().map(|s| s.session).collect()
    }
}

impl RegistryClient {
    /// Opens an upload session in `target`'s repository for a blob not made yet, which the next
    /// upload there takes (see the module). Nothing is opened where the registry wants a token
    /// (oci-client's uploads open their own). Call within a tokio runtime.
    pub fn open_spare(self: &Arc<Self>, target: &Reference) {
        self.open_spares(target, 1);
    }

    /// [`open_spare`](Self::open_spare) `count` times, the registry asked once whether it wants
    /// a token for all of them (each alone would ask it, on a connection of its own, while none
    /// has the answer). With `count` 0 only that is asked: the answer, kept by the client, and
    /// the connection, kept by its pool, are then ready for the uploads that come later.
    pub fn open_spares(self: &Arc<Self>, target: &Reference, count: usize) {
        let client = Arc::clone(self);
        let reference = target.clone();
        let asked = tokio::spawn(async move {
            client
                .target(&reference, &|_| {})
                .await
                .is_ok_and(|t| matches!(t.via, Via::Own))
        });
        let own = async move { asked.await.unwrap_or(false) }.boxed().shared();
        let mut waiting = self.spares.waiting();
        for _ in 0..count {
            let (client, own, reference) = (Arc::clone(self), own.clone(), target.clone());
            let session = tokio::spawn(async move {
                if !own.await {
                    return None;
                }
                client
                    .request_session(reference.registry(), &oci_reference(&reference))
                    .await
                    .ok()
            });
            // In the list before this returns: an upload started after it finds it.
            waiting.push_back(Spare {
                repository: repository_key(target.registry(), target.repository()),
                opened: Instant::now(),
                session,
            });
        }
    }

    /// Gives up every spare session of `target`'s repository that no blob took.
    pub async fn give_up_spares(&self, target: &Reference) {
        let left = self
            .spares
            .drain(&repository_key(target.registry(), target.repository()));
        futures::future::join_all(left.into_iter().map(|spare| async move {
            if let Ok(Some(session)) = spare.await {
                self.cancel_session(session).await;
            }
        }))
        .await;
    }

    /// A fresh spare session of `repository` in `registry`, when one was opened (waiting for the
    /// registry's answer if it is still on its way).
    pub(super) async fn take_spare(&self, registry: &str, repository: &str) -> Option<Session> {
        let spare = self.spares.take(&repository_key(registry, repository))?;
        spare.await.ok().flatten()
    }
}
