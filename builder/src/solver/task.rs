//! One vertex's turn in a solve: its cache key, a lookup, the run when the cache has nothing (under
//! the key's lock, so that two solves on one cache compute it once), the settling of what the
//! executor left behind its output, and the record.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{
    CacheError, CacheKey, CacheStore, CancellationToken, Event, Executor, Record, SolveError,
    Solved,
};
use crate::graph::{Graph, NodeRef, Vertex};

/// How a vertex's task ended, short of an error.
pub(super) enum Outcome<R> {
    Done(Finished<R>),
    /// It failed because results of these inputs (positions in its inputs) turned out unusable
    /// ([`Executor::lost_inputs`]): they are computed again, then the vertex runs again.
    Lost {
        node: NodeRef,
        inputs: Vec<usize>,
        error: SolveError,
    },
}

/// What a vertex's task gives back to the scheduler.
pub(super) struct Finished<R> {
    pub(super) node: NodeRef,
    pub(super) solved: Solved<R>,
    /// Ran because the cache was bypassed: its dependents must run too, since a bypassed step may
    /// give another result under the same key.
    pub(super) forced: bool,
}

pub(super) struct Task<E: Executor> {
    pub(super) executor: Arc<E>,
    pub(super) cache: Arc<dyn CacheStore>,
    pub(super) graph: Arc<Graph>,
    pub(super) node: NodeRef,
    pub(super) inputs: Vec<E::Output>,
    pub(super) input_keys: Vec<CacheKey>,
    pub(super) force: bool,
    pub(super) cancel: CancellationToken,
    pub(super) events: Option<UnboundedSender<Event>>,
    /// Where an output still to be settled ([`Executor::settle`]) goes as soon as it exists, so
    /// that the dependents start while it settles.
    pub(super) early: UnboundedSender<Early<E::Output>>,
}

/// An executed vertex's unsettled output, for its dependents.
pub(super) struct Early<R> {
    pub(super) node: NodeRef,
    pub(super) solved: Solved<R>,
    pub(super) forced: bool,
}

impl<E: Executor> Task<E> {
    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            // A progress display that went away must not stop the build.
            let _ = tx.send(event);
        }
    }

    fn vertex(&self) -> &Vertex {
        self.graph.vertex(self.node)
    }

    fn step_error(&self, source: E::Error) -> SolveError {
        let v = self.vertex();
        SolveError::Step {
            vertex: self.node,
            id: v.id,
            description: v.description.clone(),
            line: v.line,
            source: Box::new(source),
        }
    }

    /// Reports the vertex cancelled (when the solve is being cancelled) or failed with `e`, and
    /// returns the step's error.
    fn failed(&self, description: String, started: Instant, e: E::Error) -> SolveError {
        if self.cancel.is_cancelled() {
            self.emit(Event::Cancelled {
                vertex: self.node,
                description,
            });
        } else {
            self.emit(Event::Failed {
                vertex: self.node,
                description,
                duration: started.elapsed(),
                error: e.to_string(),
            });
        }
        self.step_error(e)
    }

    async fn cache_call<T: Send + 'static>(
        &self,
        key: CacheKey,
        f: impl FnOnce(&dyn CacheStore) -> Result<T, CacheError> + Send + 'static,
    ) -> Result<T, SolveError> {
        let cache = self.cache.clone();
        let call = tokio::task::spawn_blocking(move || f(cache.as_ref()));
        // A lock wait (another forge computing this key) must not outlive a cancelled build; the
        // blocking thread finishes on its own and drops what it got.
        let joined = tokio::select! {
            j = call => j,
            () = self.cancel.cancelled() => return Err(SolveError::Cancelled),
        };
        match joined {
            Ok(r) => r.map_err(|source| SolveError::Cache {
                description: self.vertex().description.clone(),
                key,
                source,
            }),
            Err(_) => Err(SolveError::Panicked {
                description: self.vertex().description.clone(),
            }),
        }
    }

    /// The recorded result for `key`, announced as a cache hit; `None` when the cache is bypassed
    /// for this vertex, holds nothing, or holds a record the executor cannot read.
    async fn lookup(&self, key: CacheKey) -> Result<Option<Solved<E::Output>>, SolveError> {
        if self.force {
            return Ok(None);
        }
        let record = self.cache_call(key, move |c| c.get(&key)).await?;
        self.hit(key, record).await
    }

    /// `record` (read under `key`) as a cache hit, announced; `None` when there is none or the
    /// executor cannot read or use it.
    async fn hit(
        &self,
        key: CacheKey,
        record: Option<Vec<u8>>,
    ) -> Result<Option<Solved<E::Output>>, SolveError> {
        let Some((output, bytes)) = record.and_then(|r| E::Output::from_record(&r).map(|o| (o, r)))
        else {
            return Ok(None);
        };
        if !self.executor.usable(&output).await {
            return Ok(None);
        }
        // An older record read into today's form (a layer given the time it lacked) is stored
        // so, or every later read would fill it in anew. Best effort: a cache that cannot take
        // it still serves the hit.
        let upgraded = output.to_record();
        if upgraded != bytes {
            let _ = self.cache_call(key, move |c| c.put(&key, &upgraded)).await;
        }
        self.emit(Event::Cached {
            vertex: self.node,
            description: self.vertex().description.clone(),
            key,
        });
        Ok(Some(Solved {
            output,
            key,
            cached: true,
        }))
    }

    pub(super) async fn run(self) -> Result<Outcome<E::Output>, SolveError> {
        let vertex = self.vertex();
        let description = vertex.description.clone();
        let content = self
            .executor
            .cache_inputs(vertex, &self.inputs)
            .await
            .map_err(|e| self.step_error(e))?;
        let key = CacheKey::compute(vertex.id, &self.input_keys, content);
        let finished = |solved| Finished {
            node: self.node,
            solved,
            forced: self.force,
        };
        // A miss (what a cold build meets at every vertex) takes one trip to the blocking pool:
        // the record asked for, the key's lock taken, and the record asked for again (another
        // process may have computed it while this one waited for the lock).
        let force = self.force;
        let (lock, record) = self
            .cache_call(key, move |c| {
                if !force && let Some(record) = c.get(&key)? {
                    return Ok((None, Some(record)));
                }
                let lock = c.lock(&key)?;
                let again = if force { None } else { c.get(&key)? };
                Ok((Some(lock), again))
            })
            .await?;
        if let Some(hit) = self.hit(key, record).await? {
            return Ok(Outcome::Done(finished(hit)));
        }
        let _lock = match lock {
            Some(lock) => lock,
            // A record read without the lock that turned out unusable: as a miss, under the lock.
            None => {
                let lock = self.cache_call(key, move |c| c.lock(&key)).await?;
                if let Some(hit) = self.lookup(key).await? {
                    return Ok(Outcome::Done(finished(hit)));
                }
                lock
            }
        };
        self.emit(Event::Started {
            vertex: self.node,
            description: description.clone(),
        });
        let started = Instant::now();
        let output = match self
            .executor
            .execute(vertex, &self.inputs, self.cancel.clone())
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let lost = self.executor.lost_inputs(&e, &self.inputs);
                if !lost.is_empty() && !self.cancel.is_cancelled() {
                    return Ok(Outcome::Lost {
                        node: self.node,
                        inputs: lost,
                        error: self.step_error(e),
                    });
                }
                return Err(self.failed(description, started, e));
            }
        };
        // Work left behind the output (a layer still being written): the dependents get the
        // output now, the cache and the solution once it is finished.
        let settled = match self.executor.settle(&output) {
            None => None,
            Some(settling) => {
                let _ = self.early.send(Early {
                    node: self.node,
                    solved: Solved {
                        output: output.clone(),
                        key,
                        cached: false,
                    },
                    forced: self.force,
                });
                Some(settling.await)
            }
        };
        let output = match settled {
            None => output,
            Some(Ok(settled)) => settled,
            Some(Err(e)) => return Err(self.failed(description, started, e)),
        };
        let record = output.to_record();
        self.cache_call(key, move |c| c.put(&key, &record)).await?;
        self.emit(Event::Done {
            vertex: self.node,
            description,
            duration: started.elapsed(),
        });
        Ok(Outcome::Done(finished(Solved {
            output,
            key,
            cached: false,
        })))
    }
}
