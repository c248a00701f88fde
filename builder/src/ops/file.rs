//! A file operation (COPY, ADD of local files, WORKDIR's mkdir, ...) on a writable snapshot of its
//! base, its sources mounted read-only beside it.

use std::path::{Path, PathBuf};

use forge_snapshotter::snapshot::Snapshotter;

use super::mount::Mounted;
use super::{BuildExecutor, Built, ExecError, Layer, blocking};
use crate::events::BuildEvent;
use crate::fileop::{self, SourceDirs, Visible};
use crate::graph::{FileAction, NodeRef, Vertex};
use crate::solver::CancellationToken;

impl BuildExecutor {
    pub(super) async fn exec_file(
        &self,
        vertex: &Vertex,
        op: &crate::graph::FileOp,
        // The inputs' references, in the order `inputs` holds their results.
        refs: &[NodeRef],
        inputs: &[Built],
        cancel: &CancellationToken,
    ) -> Result<Built, ExecError> {
        let input_of = |r: NodeRef| -> Result<&Built, ExecError> {
            refs.iter()
                .position(|x| *x == r)
                .and_then(|i| inputs.get(i))
                .ok_or_else(|| ExecError::Internal(format!("input {r:?} missing")))
        };
        let base: Vec<Layer> = match op.base {
            None => Vec::new(),
            Some(r) => input_of(r)?
                .layers()
                .ok_or_else(|| {
                    ExecError::Unsupported("a file operation on a local directory".into())
                })?
                .to_vec(),
        };
        let parent = self.ensure_snapshot(&base).await?;
        let key = self.unique("file");
        let mounts = self.cfg.snapshots.prepare(&key, parent.as_deref())?;
        let outcome = async {
            let dest = Mounted::mount(&mounts, self.cfg.scratch.work().join(self.unique("rw")))?;
            let mut sources = Sources::default();
            let mut held = Vec::new();
            for a in &op.actions {
                if let FileAction::Copy { from: Some(r), .. } = a {
                    if sources.dirs.iter().any(|(x, _)| x == r) {
                        continue;
                    }
                    let built = input_of(*r)?;
                    let m = self.mount_readonly(built).await?;
                    if let Built::Local { name } = built {
                        let snap = self.cfg.locals[name].snapshot.clone();
                        sources.visible.push((
                            *r,
                            Box::new(move |p: &Path| {
                                p.as_os_str().is_empty() || snap.get(p).is_some()
                            }),
                        ));
                    }
                    sources.dirs.push((*r, m.path().to_path_buf()));
                    held.push(m);
                }
            }
            let actions = op.actions.clone();
            let root = dest.path().to_path_buf();
            let upper = dest.upper().map(Path::to_path_buf);
            let applied = blocking(move || {
                Ok(fileop::apply_with_upper(
                    &actions,
                    &root,
                    upper.as_deref(),
                    &sources,
                )?)
            })
            .await;
            drop(held);
            drop(dest);
            applied
        }
        .await;
        match outcome {
            Ok(notes) => {
                for note in notes {
                    self.cfg.events.emit(BuildEvent::Warning {
                        message: match vertex.line {
                            Some(line) => format!("line {line}: {}: {note}", vertex.description),
                            None => format!("{}: {note}", vertex.description),
                        },
                    });
                }
            }
            Err(e) => {
                let _ = self.cfg.snapshots.remove(&key);
                return Err(e);
            }
        }
        let how = self.cfg.layers.for_vertex(&vertex.id);
        let layers = self.commit_layer(key, &base, how, cancel).await?;
        Ok(Built::Fs { layers })
    }
}

#[derive(Default)]
struct Sources {
    dirs: Vec<(NodeRef, PathBuf)>,
    visible: Vec<(NodeRef, Box<Visible>)>,
}

impl SourceDirs for Sources {
    fn dir(&self, input: NodeRef) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(r, _)| *r == input)
            .map(|(_, p)| p.as_path())
    }

    fn visible(&self, input: NodeRef) -> Option<&Visible> {
        self.visible
            .iter()
            .find(|(r, _)| *r == input)
            .map(|(_, v)| v.as_ref())
    }

    /// Only the build context has a visibility filter, and only its files become root's.
    fn root_owned(&self, input: NodeRef) -> bool {
        self.visible.iter().any(|(r, _)| *r == input)
    }
}
