//! Upload sessions opened before the blobs that will fill them exist. Opening a session (`POST
//! .../blobs/uploads/`) is a round trip the registry answers only after it has made the upload's
//! files; at the end of a build, when the last layers and the config are sent and the registry is
//! busy with the commits before them, it took 5-10 ms on the loopback registry, in front of every
//! small blob's commit and so in front of the manifest. A build that writes a layer knows one more
//! blob will follow it (the next layer, or else the image's config, new when a layer is), so it
//! opens that blob's session as the layer starts (`open_spare`), while the registry has time; the
//! next upload to that repository takes it (`open_session`) instead of asking for its own. The
//! config, made by the build and held in memory, is then known to be new: it goes through its
//! spare without the `HEAD` that would ask whether the registry has it (`Target::push_blob`).
//!
//! A spare serves for [`SERVES_FOR`] only (a registry may drop sessions it sees no bytes for);
//! an older one, or one that could not be opened, leaves its blob to open a session of its own,
//! as it would have without it. What no blob took is given up with a `DELETE`
//! (`give_up_spares`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::RegistryClient;
use super::target::Via;
use super::upload::Session;
use crate::reference::Reference;

/// How long after its opening a spare session is still used.
const SERVES_FOR: Duration = Duration::from_secs(60);

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
        let client = Arc::clone(self);
        let reference = target.clone();
        let session = tokio::spawn(async move {
            let target = client.target(&reference, &|_| {}).await.ok()?;
            if !matches!(target.via, Via::Own) {
                return None;
            }
            client
                .request_session(target.registry(), &target.oci)
                .await
                .ok()
        });
        // In the list before this returns: an upload started after it finds it.
        self.spares.waiting().push_back(Spare {
            repository: repository_key(target.registry(), target.repository()),
            opened: Instant::now(),
            session,
        });
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
