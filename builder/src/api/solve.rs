//! The solve of a build's graph, its solver events forwarded as build events and, for a build, kept
//! as the vertices' reports.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::outcome::VertexReport;
use crate::events::{BuildEvent, Events};
use crate::graph::{Graph, NodeRef};
use crate::ops::{BuildExecutor, Built};
use crate::solver::{CacheStore, Event, Solution, SolveFailure, SolveOptions, Solver};

/// How the solve runs.
#[derive(Debug, Clone, Default)]
pub struct SolveSettings {
    pub jobs: Option<usize>,
    /// See [`SolveOptions::keep_going`]: skipped vertices are reported as warnings and, in a
    /// build's reports, with the failed vertex they waited for.
    pub keep_going: bool,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    pub cancel: CancellationToken,
}

/// Solves the graph's outputs (roots and gates) with `executor`, reporting solver events. A
/// failure carries what was solved.
pub async fn solve(
    graph: Arc<Graph>,
    executor: Arc<BuildExecutor>,
    cache: Arc<dyn CacheStore>,
    settings: &SolveSettings,
    events: &Events,
) -> Result<Solution<Built>, SolveFailure<Built>> {
    solve_reporting(graph, executor, cache, settings, events, None).await
}

pub(super) async fn solve_reporting(
    graph: Arc<Graph>,
    executor: Arc<BuildExecutor>,
    cache: Arc<dyn CacheStore>,
    settings: &SolveSettings,
    events: &Events,
    reports: Option<Arc<Mutex<Vec<VertexReport>>>>,
) -> Result<Solution<Built>, SolveFailure<Built>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let out = events.clone();
    let forward = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(r) = &reports
                && let Some(report) = report_of(&ev)
            {
                r.lock().expect("not poisoned").push(report);
            }
            out.emit(BuildEvent::Solver(ev));
        }
    });
    let mut options = SolveOptions {
        keep_going: settings.keep_going,
        no_cache: settings.no_cache,
        no_cache_filter: settings.no_cache_filter.clone(),
        events: Some(tx),
        cancel: settings.cancel.clone(),
        ..SolveOptions::default()
    };
    if let Some(j) = settings.jobs {
        options.jobs = j.max(1);
    }
    let solver = Solver::new(executor.clone(), cache, options);
    let outputs: Vec<usize> = (0..graph.outputs.len()).collect();
    let solved = solver.solve(graph, &outputs).await;
    drop(solver);
    executor.name_written_snapshots().await;
    let _ = forward.await;
    solved
}

/// A finished vertex's report, from the solver event that ends it.
fn report_of(ev: &Event) -> Option<VertexReport> {
    let base = |vertex: &NodeRef, description: &String| VertexReport {
        vertex: *vertex,
        description: description.clone(),
        key: None,
        cached: false,
        duration: None,
        error: None,
        skipped: None,
    };
    Some(match ev {
        Event::Cached {
            vertex,
            description,
            key,
        } => VertexReport {
            key: Some(*key),
            cached: true,
            ..base(vertex, description)
        },
        Event::Done {
            vertex,
            description,
            duration,
        } => VertexReport {
            duration: Some(*duration),
            ..base(vertex, description)
        },
        Event::Failed {
            vertex,
            description,
            duration,
            error,
        } => VertexReport {
            duration: Some(*duration),
            error: Some(error.clone()),
            ..base(vertex, description)
        },
        Event::Skipped {
            vertex,
            description,
            failed,
            ..
        } => VertexReport {
            skipped: Some(*failed),
            ..base(vertex, description)
        },
        Event::Started { .. } | Event::Cancelled { .. } => return None,
    })
}
