//! The solver: walks a [`Graph`] from the requested outputs, computes each vertex's [`CacheKey`],
//! reuses recorded results from a [`CacheStore`] and hands the rest to an [`Executor`], running
//! independent vertices at once on tokio. What a vertex *does* is the executor's; this module only
//! decides what runs, when, and whether it needs to run at all.

mod cache;
mod key;
mod task;

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

pub use cache::{CacheError, CacheStore, DiskCache, KeyLock, MemoryCache};
pub use key::{CacheKey, ContentDigest};
use task::{Early, Outcome, Task};

use crate::graph::{Graph, NodeRef, Vertex, VertexId};

/// A vertex's result as the executor hands it over, and as the cache keeps it.
///
/// `from_record` must accept what `to_record` wrote; it returns `None` for bytes it does not
/// understand (an older forge's record, say), which the solver treats as a cache miss.
pub trait Record: Clone + Send + Sync + 'static {
    fn to_record(&self) -> Vec<u8>;
    fn from_record(bytes: &[u8]) -> Option<Self>;
}

impl Record for Vec<u8> {
    fn to_record(&self) -> Vec<u8> {
        self.clone()
    }

    fn from_record(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

/// Runs single vertices; the solver decides which and when.
///
/// For each vertex the solver needs, once all its inputs are solved: [`cache_inputs`], always
/// (its digest is part of the key, so it runs even when everything turns out cached), then, on a
/// cache miss or when the cache is bypassed, [`execute`]. `inputs` are the inputs' results in
/// [`Op::inputs`] order (a vertex read twice appears twice); for a cache hit they are the records
/// read back with [`Record::from_record`], so an output must stay meaningful across processes.
///
/// [`cache_inputs`]: Executor::cache_inputs
/// [`execute`]: Executor::execute
/// [`Op::inputs`]: crate::graph::Op::inputs
pub trait Executor: Send + Sync + 'static {
    type Output: Record;
    /// Carries what a user needs to see about a failed step: its exit status and the last lines of
    /// its output, for a process.
    type Error: StdError + Send + Sync + 'static;

    /// A digest of what the vertex reads from outside the graph, folded into its cache key: for
    /// COPY/ADD from the local context, the selection's hash
    /// ([`ContextSnapshot::hash_selection`](crate::source::context::ContextSnapshot::hash_selection)).
    /// `None` when the vertex reads nothing but its inputs (the default).
    fn cache_inputs(
        &self,
        vertex: &Vertex,
        inputs: &[Self::Output],
    ) -> impl Future<Output = Result<Option<ContentDigest>, Self::Error>> + Send {
        let _ = (vertex, inputs);
        async { Ok(None) }
    }

    /// Whether a recorded result can still be used: what it names (blobs, say) may have been
    /// removed since it was recorded. One that cannot is a cache miss and the vertex runs again;
    /// it is never served as a hit. Yes by default.
    fn usable(&self, output: &Self::Output) -> impl Future<Output = bool> + Send {
        let _ = output;
        async { true }
    }

    /// The inputs (positions in `inputs`) whose recorded results turned out unusable while the
    /// vertex ran (a blob they name could not be fetched): the solver computes them again, not
    /// from the cache, and then runs the vertex again. None by default: the error stands.
    fn lost_inputs(&self, error: &Self::Error, inputs: &[Self::Output]) -> Vec<usize> {
        let _ = (error, inputs);
        Vec::new()
    }

    /// Computes the vertex. When `cancel` fires (another vertex failed, or the caller gave up) the
    /// executor should stop promptly, clean up, and return an error; the solver awaits it.
    fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[Self::Output],
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// What finishes an output [`execute`](Executor::execute) returned with work still going on
    /// behind it (a layer written while the steps after it already run on its snapshot): `None`
    /// when there is none (the default), else the output finished. The solver hands the unfinished
    /// output to the vertex's dependents at once, and records the vertex in the cache, reports it
    /// done and puts it in the [`Solution`] only once it is finished; its error fails the vertex.
    fn settle(
        &self,
        output: &Self::Output,
    ) -> Option<impl Future<Output = Result<Self::Output, Self::Error>> + Send> {
        let _ = output;
        None::<std::future::Ready<Result<Self::Output, Self::Error>>>
    }
}

/// Progress, sent as it happens; the order between vertices running at once is not defined.
/// Serialised with a `type` tag (`vertex.started`, ...) beside the variant's fields; see
/// [`crate::events`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The vertex's result came from the cache: it will not run.
    #[serde(rename = "vertex.cached")]
    Cached {
        vertex: NodeRef,
        description: String,
        #[serde(rename = "cache_key", with = "crate::events::cache_key")]
        key: CacheKey,
    },
    #[serde(rename = "vertex.started")]
    Started {
        vertex: NodeRef,
        description: String,
    },
    #[serde(rename = "vertex.done")]
    Done {
        vertex: NodeRef,
        description: String,
        #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
        duration: Duration,
    },
    #[serde(rename = "vertex.failed")]
    Failed {
        vertex: NodeRef,
        description: String,
        #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
        duration: Duration,
        error: String,
    },
    /// The vertex stopped because the build was cancelled (by another failure or the caller).
    #[serde(rename = "vertex.cancelled")]
    Cancelled {
        vertex: NodeRef,
        description: String,
    },
    /// The vertex will not run: `failed`, which it needs (directly or through other skipped
    /// vertices), failed. Only in [`SolveOptions::keep_going`] mode; otherwise a failure cancels.
    #[serde(rename = "vertex.skipped")]
    Skipped {
        vertex: NodeRef,
        description: String,
        failed: NodeRef,
        failed_description: String,
    },
}

/// A vertex that did not run because a vertex it needs failed (in [`SolveOptions::keep_going`]
/// mode; otherwise the first failure stops the whole solve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub vertex: NodeRef,
    pub description: String,
    /// The failed vertex it depends on, directly or through other skipped ones (the first to fail,
    /// when several did).
    pub failed: NodeRef,
    pub failed_description: String,
}

#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How many vertices may be computed at once (at least 1).
    pub jobs: usize,
    /// A failure no longer stops the solve: every vertex that does not depend on a failed one
    /// still runs, those that do are [`Skipped`], and the solve ends in [`SolveError::Failed`]
    /// with every failure. Off (the default), the first failure cancels what is running and is
    /// the solve's error. A test pipeline wants every job's verdict, not only the first.
    pub keep_going: bool,
    /// Run every vertex, ignoring (and then replacing) recorded results.
    pub no_cache: bool,
    /// Run the vertices of these stages ([`Vertex::stage`]) and everything computed from them.
    pub no_cache_filter: Vec<String>,
    pub events: Option<UnboundedSender<Event>>,
    /// Cancels the whole solve from outside (Ctrl-C); the solver also cancels it on a failure.
    pub cancel: CancellationToken,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            keep_going: false,
            no_cache: false,
            no_cache_filter: Vec::new(),
            events: None,
            cancel: CancellationToken::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum SolveError {
    #[error("the graph has no output {index} (it has {count})")]
    NoSuchOutput { index: usize, count: usize },
    #[error("step {description}{} failed", at_line(*line))]
    Step {
        vertex: NodeRef,
        id: VertexId,
        description: String,
        line: Option<usize>,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("cache lookup for step {description} (key {key})")]
    Cache {
        description: String,
        key: CacheKey,
        #[source]
        source: CacheError,
    },
    #[error("step {description} panicked")]
    Panicked { description: String },
    #[error("the build was cancelled")]
    Cancelled,
    /// Keep-going mode: every failure (each a `Step`, `Cache` or `Panicked` error), in the order
    /// they happened, and the vertices skipped because of them, in graph order.
    #[error("{}", failed_summary(failures, skipped))]
    Failed {
        failures: Vec<SolveError>,
        skipped: Vec<Skipped>,
    },
}

impl SolveError {
    /// The failures this error stands for: the ones a keep-going solve collected, or itself.
    pub fn failures(&self) -> Vec<&SolveError> {
        match self {
            SolveError::Failed { failures, .. } => failures.iter().collect(),
            other => vec![other],
        }
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// `2 steps failed (1 skipped): step A failed: why; step B failed: why`. The failures' own causes
/// are written out, as one error cannot have several sources.
fn failed_summary(failures: &[SolveError], skipped: &[Skipped]) -> String {
    let mut s = match failures.len() {
        1 => "1 step failed".to_string(),
        n => format!("{n} steps failed"),
    };
    if !skipped.is_empty() {
        s.push_str(&format!(" ({} skipped)", skipped.len()));
    }
    for (i, f) in failures.iter().enumerate() {
        s.push_str(if i == 0 { ": " } else { "; " });
        s.push_str(&f.to_string());
        if let Some(cause) = f.source() {
            s.push_str(&format!(": {cause}"));
        }
    }
    s
}

/// A solve that did not finish: why, and every vertex solved before the failure (or, in
/// keep-going mode, besides the failures), so that a caller can still use what was done, such as
/// the test reports of a failed pipeline.
#[derive(Debug)]
pub struct SolveFailure<R> {
    pub error: SolveError,
    pub solved: Solution<R>,
}

impl<R> SolveFailure<R> {
    fn bare(error: SolveError) -> Self {
        SolveFailure {
            error,
            solved: Solution::default(),
        }
    }
}

impl<R> fmt::Display for SolveFailure<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<R: fmt::Debug> StdError for SolveFailure<R> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

impl<R> From<SolveFailure<R>> for SolveError {
    fn from(f: SolveFailure<R>) -> Self {
        f.error
    }
}

/// A solved vertex.
#[derive(Debug, Clone)]
pub struct Solved<R> {
    pub output: R,
    pub key: CacheKey,
    /// The result came from the cache; the vertex did not run.
    pub cached: bool,
}

/// Every vertex the requested outputs needed, solved (or, in a [`SolveFailure`], those that were).
#[derive(Debug, Clone)]
pub struct Solution<R> {
    solved: HashMap<NodeRef, Solved<R>>,
}

impl<R> Default for Solution<R> {
    fn default() -> Self {
        Solution {
            solved: HashMap::new(),
        }
    }
}

impl<R> Solution<R> {
    pub fn get(&self, vertex: NodeRef) -> Option<&Solved<R>> {
        self.solved.get(&vertex)
    }

    /// Every solved vertex, in graph order (each reference to a shared identity listed).
    pub fn iter(&self) -> impl Iterator<Item = (NodeRef, &Solved<R>)> {
        let mut refs: Vec<NodeRef> = self.solved.keys().copied().collect();
        refs.sort();
        refs.into_iter().map(|r| (r, &self.solved[&r]))
    }

    /// How many references are solved (a shared identity counts once per reference).
    pub fn len(&self) -> usize {
        self.solved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.solved.is_empty()
    }

    /// How many distinct vertices ran (a vertex listed twice under one identity counts once).
    pub fn executed(&self) -> usize {
        self.distinct().filter(|s| !s.cached).count()
    }

    pub fn cached(&self) -> usize {
        self.distinct().filter(|s| s.cached).count()
    }

    fn distinct(&self) -> impl Iterator<Item = &Solved<R>> {
        let mut seen = HashSet::new();
        self.solved.values().filter(move |s| seen.insert(s.key))
    }
}

/// Solves graphs with one executor and one cache.
pub struct Solver<E: Executor> {
    executor: Arc<E>,
    cache: Arc<dyn CacheStore>,
    options: SolveOptions,
}

/// How many times one vertex may be sent back for lost inputs before its error stands.
const LOST_RETRIES: u32 = 2;

impl<E: Executor> Solver<E> {
    pub fn new(executor: Arc<E>, cache: Arc<dyn CacheStore>, options: SolveOptions) -> Self {
        Self {
            executor,
            cache,
            options,
        }
    }

    /// Solves the outputs at these indices of `graph.outputs`: each one's root and gates.
    pub async fn solve(
        &self,
        graph: Arc<Graph>,
        outputs: &[usize],
    ) -> Result<Solution<E::Output>, SolveFailure<E::Output>> {
        let mut targets = Vec::new();
        for &index in outputs {
            let o = graph.outputs.get(index).ok_or_else(|| {
                SolveFailure::bare(SolveError::NoSuchOutput {
                    index,
                    count: graph.outputs.len(),
                })
            })?;
            targets.push(o.root);
            targets.extend(o.gates.iter().copied());
        }
        self.solve_vertices(graph, &targets).await
    }

    /// Solves `targets` and what they need, nothing else.
    ///
    /// On a failure the solve cancels its token, awaits every running vertex and returns the first
    /// error, unless [`SolveOptions::keep_going`] asks it to finish what does not depend on the
    /// failure and return every error; either way with what was solved. Dropping the returned
    /// future instead aborts the running executors' futures without awaiting their clean-up:
    /// cancel through [`SolveOptions::cancel`] and await to stop cleanly.
    pub async fn solve_vertices(
        &self,
        graph: Arc<Graph>,
        targets: &[NodeRef],
    ) -> Result<Solution<E::Output>, SolveFailure<E::Output>> {
        // Two references with one identity are one vertex: the first (lowest index, so still
        // before all its users) stands for both.
        let mut first: HashMap<VertexId, NodeRef> = HashMap::new();
        let canon: Vec<NodeRef> = graph
            .vertices
            .iter()
            .enumerate()
            .map(|(i, v)| *first.entry(v.id).or_insert(NodeRef(i)))
            .collect();
        let inputs_of = |r: NodeRef| -> Vec<NodeRef> {
            graph
                .vertex(r)
                .op
                .inputs()
                .into_iter()
                .map(|i| canon[i.0])
                .collect()
        };

        let mut needed = HashSet::new();
        let mut stack: Vec<NodeRef> = targets.iter().map(|t| canon[t.0]).collect();
        while let Some(r) = stack.pop() {
            if needed.insert(r) {
                stack.extend(inputs_of(r));
            }
        }
        let mut order: Vec<NodeRef> = needed.iter().copied().collect();
        order.sort();
        let mut pending: HashMap<NodeRef, usize> = HashMap::new();
        let mut dependents: HashMap<NodeRef, Vec<NodeRef>> = HashMap::new();
        for &r in &order {
            let deps: HashSet<NodeRef> = inputs_of(r).into_iter().collect();
            pending.insert(r, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(r);
            }
        }
        let mut ready: VecDeque<NodeRef> =
            order.iter().copied().filter(|r| pending[r] == 0).collect();

        let cancel = self.options.cancel.child_token();
        let jobs = self.options.jobs.max(1);
        let mut done: HashMap<NodeRef, Solved<E::Output>> = HashMap::new();
        let mut forced: HashSet<NodeRef> = HashSet::new();
        let mut running = JoinSet::new();
        let mut task_nodes = HashMap::new();
        // In fail-fast mode at most one: the first.
        let mut failures: Vec<SolveError> = Vec::new();
        let mut skipped: Vec<Skipped> = Vec::new();
        let mut skipped_set: HashSet<NodeRef> = HashSet::new();
        // Nothing more starts: the caller cancelled, or a failure in fail-fast mode.
        let mut stopped = false;
        // Vertices computed again without the cache because a dependent lost their result, and
        // the dependents waiting for each.
        let mut recomputed: HashSet<NodeRef> = HashSet::new();
        let mut waiting: HashMap<NodeRef, Vec<NodeRef>> = HashMap::new();
        let mut lost_tries: HashMap<NodeRef, u32> = HashMap::new();
        // Executed vertices whose dependents were woken by their unsettled output, until their
        // task ends.
        let (early_tx, mut early_rx) = tokio::sync::mpsc::unbounded_channel::<Early<E::Output>>();
        let mut woken_early: HashSet<NodeRef> = HashSet::new();
        // Their settled outputs, for the solution: the dependents keep reading the outputs they
        // were woken with (what the executor names its work by while it solves), in `done`.
        let mut settled: HashMap<NodeRef, Solved<E::Output>> = HashMap::new();

        loop {
            // A task settling its output (see `woken_early`) computes no vertex: it takes no slot.
            while !stopped && running.len() - woken_early.len() < jobs {
                if self.options.cancel.is_cancelled() {
                    stopped = true;
                    break;
                }
                let Some(node) = ready.pop_front() else { break };
                let ins = inputs_of(node);
                // An input being computed again (see `recomputed`) is waited for.
                let absent: HashSet<NodeRef> = ins
                    .iter()
                    .copied()
                    .filter(|i| !done.contains_key(i))
                    .collect();
                if !absent.is_empty() {
                    pending.insert(node, absent.len());
                    for i in absent {
                        waiting.entry(i).or_default().push(node);
                    }
                    continue;
                }
                let vertex = graph.vertex(node);
                let force = self.options.no_cache
                    || recomputed.contains(&node)
                    || ins.iter().any(|i| forced.contains(i))
                    || vertex
                        .stage
                        .as_ref()
                        .is_some_and(|s| self.options.no_cache_filter.contains(s));
                let task = Task::<E> {
                    executor: self.executor.clone(),
                    cache: self.cache.clone(),
                    graph: graph.clone(),
                    node,
                    inputs: ins.iter().map(|i| done[i].output.clone()).collect(),
                    input_keys: ins.iter().map(|i| done[i].key).collect(),
                    force,
                    cancel: cancel.clone(),
                    events: self.options.events.clone(),
                    early: early_tx.clone(),
                };
                let handle = running.spawn(task.run());
                task_nodes.insert(handle.id(), node);
            }
            // An unsettled output wakes the dependents, while its task goes on settling it; a task
            // sends it before it ends, so what was sent is taken before a task's end is.
            let mut early = Vec::new();
            let joined = tokio::select! {
                biased;
                Some(e) = early_rx.recv() => {
                    early.push(e);
                    None
                }
                joined = running.join_next_with_id() => Some(joined),
            };
            while let Ok(e) = early_rx.try_recv() {
                early.push(e);
            }
            for e in early {
                woken_early.insert(e.node);
                if e.forced {
                    forced.insert(e.node);
                }
                wake(e.node, &mut waiting, &dependents, &mut pending, &mut ready);
                done.insert(e.node, e.solved);
            }
            let Some(joined) = joined else {
                continue;
            };
            let Some(joined) = joined else {
                break;
            };
            let (node, result) = match joined {
                Ok((id, r)) => (task_nodes[&id], r),
                Err(e) => {
                    let node = task_nodes[&e.id()];
                    let description = graph.vertex(node).description.clone();
                    (node, Err(SolveError::Panicked { description }))
                }
            };
            let result = match result {
                Ok(Outcome::Lost {
                    node,
                    inputs,
                    error,
                }) => {
                    let tries = lost_tries.entry(node).or_insert(0);
                    *tries += 1;
                    if *tries > LOST_RETRIES || stopped {
                        Err(error)
                    } else {
                        let ins = inputs_of(node);
                        let mut wait = 0;
                        for i in inputs {
                            let input = ins[i];
                            if recomputed.insert(input) {
                                done.remove(&input);
                                settled.remove(&input);
                                ready.push_back(input);
                            } else if done.contains_key(&input) {
                                continue;
                            }
                            if !waiting.get(&input).is_some_and(|w| w.contains(&node)) {
                                waiting.entry(input).or_default().push(node);
                                wait += 1;
                            }
                        }
                        pending.insert(node, wait);
                        if wait == 0 {
                            ready.push_back(node);
                        }
                        continue;
                    }
                }
                Ok(Outcome::Done(f)) => Ok(f),
                Err(e) => Err(e),
            };
            // Its dependents were woken by its unsettled output already.
            let was_early = woken_early.remove(&node);
            if was_early && result.is_err() {
                done.remove(&node);
            }
            match result {
                Ok(f) => {
                    if f.forced {
                        forced.insert(f.node);
                    }
                    if was_early {
                        settled.insert(f.node, f.solved);
                    } else {
                        wake(f.node, &mut waiting, &dependents, &mut pending, &mut ready);
                        done.insert(f.node, f.solved);
                    }
                }
                // Once stopped, what the cancelled siblings report is their reaction to the stop,
                // not news.
                Err(_) if stopped => {}
                Err(_) if self.options.cancel.is_cancelled() => stopped = true,
                Err(e) => {
                    failures.push(e);
                    if self.options.keep_going {
                        skipped.extend(self.skip_dependents(
                            &graph,
                            node,
                            &dependents,
                            &mut skipped_set,
                        ));
                    } else {
                        stopped = true;
                        cancel.cancel();
                    }
                }
            }
        }
        // Aliases (same identity, another reference) share their canonical vertex's result.
        let mut solved = HashMap::new();
        for (i, c) in canon.iter().enumerate() {
            if let Some(s) = done.get(c) {
                let s = settled.get(c).unwrap_or(s);
                solved.insert(NodeRef(i), s.clone());
            }
        }
        let solved = Solution { solved };
        // A failure seen before the caller cancelled stays the error: the cancellation that
        // followed is not news.
        let error = if failures.is_empty() {
            if self.options.cancel.is_cancelled() {
                SolveError::Cancelled
            } else {
                debug_assert_eq!(done.len(), order.len(), "every needed vertex solved");
                return Ok(solved);
            }
        } else if self.options.keep_going {
            skipped.sort_by_key(|s| s.vertex);
            SolveError::Failed { failures, skipped }
        } else {
            failures.remove(0)
        };
        Err(SolveFailure { error, solved })
    }

    /// Marks everything that depends on the failed vertex `failed` as skipped and announces it;
    /// returns the newly skipped.
    fn skip_dependents(
        &self,
        graph: &Graph,
        failed: NodeRef,
        dependents: &HashMap<NodeRef, Vec<NodeRef>>,
        skipped: &mut HashSet<NodeRef>,
    ) -> Vec<Skipped> {
        let mut out = Vec::new();
        let mut stack = vec![failed];
        while let Some(n) = stack.pop() {
            for &d in dependents.get(&n).into_iter().flatten() {
                if !skipped.insert(d) {
                    continue;
                }
                let s = Skipped {
                    vertex: d,
                    description: graph.vertex(d).description.clone(),
                    failed,
                    failed_description: graph.vertex(failed).description.clone(),
                };
                if let Some(tx) = &self.options.events {
                    // A listener that went away must not stop the build.
                    let _ = tx.send(Event::Skipped {
                        vertex: s.vertex,
                        description: s.description.clone(),
                        failed: s.failed,
                        failed_description: s.failed_description.clone(),
                    });
                }
                out.push(s);
                stack.push(d);
            }
        }
        out
    }
}

/// Counts `node` as solved for what waits on it, queueing those it was the last input of. A
/// vertex computed again wakes only those waiting for it: its other dependents were solved already.
fn wake(
    node: NodeRef,
    waiting: &mut HashMap<NodeRef, Vec<NodeRef>>,
    dependents: &HashMap<NodeRef, Vec<NodeRef>>,
    pending: &mut HashMap<NodeRef, usize>,
    ready: &mut VecDeque<NodeRef>,
) {
    let wake = match waiting.remove(&node) {
        Some(w) => w,
        None => dependents.get(&node).cloned().unwrap_or_default(),
    };
    for d in &wake {
        let p = pending.get_mut(d).expect("dependent is needed");
        *p -= 1;
        if *p == 0 {
            ready.push_back(*d);
        }
    }
}
