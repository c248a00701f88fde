//! What a build reports while it runs, for a front end (the CLI's tty, plain or json printer) to draw.
//! Everything arrives on one unbounded channel in the order it happened.

use std::time::Duration;

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
