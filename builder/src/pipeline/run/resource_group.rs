//! GitLab's `resource_group:` at run time: one lock file per pipeline and group under the
//! store, so that jobs of one group never run at once, in one run or across runs and processes.

use forge_snapshotter::lock::{FileLock, LockMode};

use super::{PipelineEvent, Runner};

impl Runner {
    /// Takes the lock of resource group `group`, shared by every job that names it in this
    /// pipeline's runs on this store (any process), waiting, and saying so in the job's log,
    /// while another job holds it.
    pub(super) async fn resource_group(&self, job: &str, group: &str) -> Result<FileLock, String> {
        let dir = self.session.root.join("locks").join("resource-groups");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut h = blake3::Hasher::new();
        h.update(self.options.cache_scope.as_bytes())
            .update(b"\0")
            .update(group.as_bytes());
        let path = dir.join(format!("{}.lock", &h.finalize().to_hex()[..32]));
        let mut said = false;
        loop {
            match FileLock::try_acquire(&path, LockMode::Exclusive) {
                Ok(Some(held)) => return Ok(held),
                Ok(None) => {}
                Err(e) => return Err(format!("resource group `{group}`: {e}")),
            }
            if !said {
                said = true;
                self.emit(PipelineEvent::JobLine {
                    job: job.into(),
                    line: format!(
                        "forge: waiting for resource group `{group}`: another job holds it"
                    ),
                    cached: false,
                });
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(format!("cancelled while waiting for resource group `{group}`"));
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
    }
}
