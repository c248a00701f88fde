//! What a build reports while it runs, for a front end (the CLI's tty, plain or json printer, a
//! server's live log) to draw. Every event is stamped with its build's id and the time it happened,
//! and arrives on one unbounded channel in the order it happened; several builds may share a channel.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use forge_snapshotter::registry::{PullEvent, PushEvent};

use crate::graph::NodeRef;
use crate::solver::Event;

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One thing that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A vertex was found cached, started, finished, failed or was cancelled.
    Solver(Event),
    /// A line a running step printed (secrets already masked).
    Output {
        vertex: NodeRef,
        stream: OutputStream,
        line: String,
    },
    /// Progress of pulling the base image `reference`.
    Pull { reference: String, event: PullEvent },
    /// Progress of pushing to `reference` (each tag).
    Push { reference: String, event: PushEvent },
    /// A named phase outside the graph (`resolving base images`, `exporting layers`,
    /// `writing image`, `pushing 127.0.0.1:5000/app:1`) began.
    PhaseStarted { name: String },
    /// That phase ended.
    PhaseDone { name: String, duration: Duration },
    /// Something the user should read but that does not stop the build.
    Warning(String),
}

/// Names one build for its whole life: its scratch directories, its snapshot keys, the lock that
/// marks it alive, and every event it sends. Random, so two builds in one process (or two processes
/// that reuse a pid) never share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);

impl BuildId {
    /// A fresh id: 16 random hex digits.
    pub fn new() -> BuildId {
        BuildId(forge_snapshotter::lock::random_hex())
    }

    /// An id read back from a name this crate made (a scratch directory, a snapshot key).
    pub fn parse(s: &str) -> Option<BuildId> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| BuildId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for BuildId {
    fn default() -> Self {
        BuildId::new()
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One event as it leaves a build: which build, when, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub build: BuildId,
    pub time: SystemTime,
    pub event: BuildEvent,
}

/// Where a build's events go. Cheap to clone; every part of a build (sources, operations, the
/// solver, exporters) holds one and stamps what it sends with the build's id and the time.
#[derive(Debug, Clone)]
pub struct Events {
    build: BuildId,
    tx: Option<UnboundedSender<EventRecord>>,
}

impl Events {
    pub fn new(build: BuildId, tx: Option<UnboundedSender<EventRecord>>) -> Events {
        Events { build, tx }
    }

    /// A sink that drops everything (tests, library callers that do not watch).
    pub fn discard() -> Events {
        Events {
            build: BuildId::new(),
            tx: None,
        }
    }

    pub fn build(&self) -> &BuildId {
        &self.build
    }

    /// Sends `event`; a receiver that has gone away is not an error (nobody is watching).
    pub fn emit(&self, event: BuildEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(EventRecord {
                build: self.build.clone(),
                time: SystemTime::now(),
                event,
            });
        }
    }

    /// Runs the blocking `f` as the named phase, reporting its start and end.
    pub fn phase_sync<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        self.emit(BuildEvent::PhaseStarted { name: name.into() });
        let start = Instant::now();
        let out = f();
        self.emit(BuildEvent::PhaseDone {
            name: name.into(),
            duration: start.elapsed(),
        });
        out
    }

    /// Runs `f` as the named phase, reporting its start and end.
    pub async fn phase<T>(&self, name: &str, f: impl std::future::Future<Output = T>) -> T {
        self.emit(BuildEvent::PhaseStarted { name: name.into() });
        let start = Instant::now();
        let out = f.await;
        self.emit(BuildEvent::PhaseDone {
            name: name.into(),
            duration: start.elapsed(),
        });
        out
    }
}
