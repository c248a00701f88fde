//! The one display state every renderer reads: the builder's events folded into numbered entries
//! (steps, pulls, pushes, phases) with their status, last output lines and transfers in flight, and
//! the counts the summary gives. It draws nothing; [`State::apply`] says what an event changed so
//! the renderers that print changes (plain, tty's finished lines) know what to print.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use forge_builder::events::BuildEvent;
use forge_builder::graph::NodeRef;
use forge_builder::solver::Event;
use forge_snapshotter::registry::{PullEvent, PushEvent};
use forge_snapshotter::store::Digest;

use super::{Summary, secs};

/// Output lines kept per step, to show when it fails.
pub(super) const KEPT_LINES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Vertex(NodeRef),
    Pull(String),
    Push(String),
    Phase(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Running,
    Cached,
    Done,
    Failed,
    Canceled,
    /// Not run: a step it needs failed (its error names that step).
    Skipped,
}

pub(super) struct Transfer {
    pub digest: Digest,
    pub bytes: u64,
    pub total: u64,
    pub started: Instant,
}

/// One numbered thing on screen: a step, a pull, a push or a phase.
pub(super) struct Entry {
    pub number: usize,
    pub key: Key,
    pub name: String,
    pub status: Status,
    pub started: Instant,
    pub duration: Option<Duration>,
    /// Why a failed step failed.
    pub error: Option<String>,
    /// The last output lines (and retries), with their time since the start.
    pub lines: VecDeque<(Duration, String)>,
    pub transfers: Vec<Transfer>,
    pub blobs_done: usize,
    /// A pull knows, once resolved, how many blobs make it finished (config and layers).
    pub blobs_expected: Option<usize>,
    /// What a finished transfer left to say (a pushed manifest's digest).
    pub detail: Option<String>,
}

impl Entry {
    pub fn is_vertex(&self) -> bool {
        matches!(self.key, Key::Vertex(_))
    }
}

/// What one event changed, for the renderers that print changes rather than redraw the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// The entry the event concerns; `None` for a warning.
    pub entry: Option<usize>,
    /// The entry's work began: a step started running, a phase began.
    pub began: bool,
    /// The event finished the entry, which was running; its status and duration are set.
    pub ended: bool,
    /// For an event about one blob: how long its transfer has been going, or took.
    pub transfer: Option<Duration>,
}

pub(super) struct State {
    pub start: Instant,
    pub entries: Vec<Entry>,
    /// The open entry for each key; a finished pull or phase seen again gets a new number.
    index: HashMap<Key, usize>,
    pub warnings: usize,
}

impl State {
    pub fn new(start: Instant) -> State {
        State {
            start,
            entries: Vec::new(),
            index: HashMap::new(),
            warnings: 0,
        }
    }

    pub fn apply(&mut self, ev: &BuildEvent, now: Instant) -> Applied {
        match ev {
            BuildEvent::Solver(ev) => self.solver(ev, now),
            BuildEvent::Output { vertex, line, .. } => {
                let i = match self.index.get(&Key::Vertex(*vertex)) {
                    Some(&i) => i,
                    // Output before the step was announced: it still gets a number, named by its node.
                    None => self.vertex_entry(*vertex, &format!("step {}", vertex.0), now),
                };
                self.keep_line(i, line.clone(), now);
                Applied::on(i)
            }
            BuildEvent::Pull { reference, event } => {
                let key = Key::Pull(reference.clone());
                let i = self.open(key, format!("pulling {reference}"), now);
                self.pull(i, event, now)
            }
            BuildEvent::Push { reference, event } => {
                let key = Key::Push(reference.clone());
                let i = self.open(key, format!("pushing {reference}"), now);
                self.push(i, event, now)
            }
            BuildEvent::PhaseStarted { name } => {
                let i = self.open(Key::Phase(name.clone()), name.clone(), now);
                Applied {
                    began: true,
                    ..Applied::on(i)
                }
            }
            BuildEvent::PhaseDone { name, duration } => {
                let i = self.open(Key::Phase(name.clone()), name.clone(), now);
                self.close(i, Status::Done, Some(*duration))
            }
            BuildEvent::PhaseFailed {
                name,
                duration,
                error,
            } => {
                let i = self.open(Key::Phase(name.clone()), name.clone(), now);
                self.entries[i].error = Some(error.clone());
                self.close(i, Status::Failed, Some(*duration))
            }
            BuildEvent::Warning { .. } => {
                self.warnings += 1;
                Applied::default()
            }
        }
    }

    fn solver(&mut self, ev: &Event, now: Instant) -> Applied {
        // One arm per kind of solver event: what it does to the step.
        let (vertex, description, status, duration) = match ev {
            Event::Started {
                vertex,
                description,
            } => (vertex, description, Status::Running, None),
            Event::Cached {
                vertex,
                description,
                ..
            } => (vertex, description, Status::Cached, None),
            Event::Done {
                vertex,
                description,
                duration,
            } => (vertex, description, Status::Done, Some(*duration)),
            Event::Failed {
                vertex,
                description,
                duration,
                ..
            } => (vertex, description, Status::Failed, Some(*duration)),
            Event::Cancelled {
                vertex,
                description,
            } => (vertex, description, Status::Canceled, None),
            Event::Skipped {
                vertex,
                description,
                ..
            } => (vertex, description, Status::Skipped, None),
        };
        let i = self.vertex_entry(*vertex, description, now);
        match ev {
            Event::Failed { error, .. } => self.entries[i].error = Some(error.clone()),
            Event::Skipped {
                failed_description, ..
            } => self.entries[i].error = Some(format!("{failed_description} failed")),
            _ => {}
        }
        match status {
            Status::Running => {
                // Output lines count from here, not from when the vertex was first seen.
                self.entries[i].started = now;
                Applied {
                    began: true,
                    ..Applied::on(i)
                }
            }
            Status::Canceled => {
                let ran = now.saturating_duration_since(self.entries[i].started);
                self.close(i, status, Some(ran))
            }
            _ => self.close(i, status, duration),
        }
    }

    fn pull(&mut self, i: usize, ev: &PullEvent, now: Instant) -> Applied {
        match ev {
            PullEvent::Resolved { layers, .. } => {
                self.entries[i].blobs_expected = Some(layers + 1);
                Applied::on(i)
            }
            PullEvent::Stored { .. } => {
                // Nothing is pulled: the line says where the image came from instead.
                let name = &mut self.entries[i].name;
                if let Some(image) = name.strip_prefix("pulling ") {
                    *name = format!("{image} (forge's store)");
                }
                self.close(i, Status::Done, Some(Duration::ZERO))
            }
            PullEvent::Failed { error } => {
                self.entries[i].error = Some(error.clone());
                let ran = now.saturating_duration_since(self.entries[i].started);
                self.close(i, Status::Failed, Some(ran))
            }
            PullEvent::Started { digest, total, .. } => self.transfer(i, digest, 0, *total, now),
            PullEvent::Progress {
                digest,
                bytes,
                total,
            } => self.transfer(i, digest, *bytes, *total, now),
            PullEvent::Done { digest, .. } | PullEvent::Cached { digest, .. } => {
                let took = self.end_transfer(i, digest, now);
                let e = &mut self.entries[i];
                e.blobs_done += 1;
                // A pull is finished once its config and every layer are in the store: the pull
                // itself sends no closing event.
                let finished = e.blobs_expected.is_some_and(|n| e.blobs_done >= n);
                let mut applied = if finished {
                    let ran = now.saturating_duration_since(e.started);
                    self.close(i, Status::Done, Some(ran))
                } else {
                    Applied::on(i)
                };
                applied.transfer = Some(took);
                applied
            }
            PullEvent::Retrying {
                what,
                attempt,
                took,
                delay,
                error,
            } => self.retry(i, what, *attempt, *took, *delay, error, now),
        }
    }

    fn push(&mut self, i: usize, ev: &PushEvent, now: Instant) -> Applied {
        match ev {
            PushEvent::Exists { digest, .. }
            | PushEvent::Mounted { digest, .. }
            | PushEvent::Uploaded { digest, .. } => {
                let took = self.end_transfer(i, digest, now);
                self.entries[i].blobs_done += 1;
                Applied {
                    transfer: Some(took),
                    ..Applied::on(i)
                }
            }
            PushEvent::Streamed { duration, .. } => {
                self.entries[i].blobs_done += 1;
                Applied {
                    transfer: Some(*duration),
                    ..Applied::on(i)
                }
            }
            PushEvent::Uploading {
                digest,
                bytes,
                total,
            } => self.transfer(i, digest, *bytes, *total, now),
            PushEvent::ManifestPushed { digest, .. } => {
                let e = &mut self.entries[i];
                e.detail = Some(format!("manifest {digest}"));
                let ran = now.saturating_duration_since(e.started);
                self.close(i, Status::Done, Some(ran))
            }
            PushEvent::Retrying {
                what,
                attempt,
                took,
                delay,
                error,
            } => self.retry(i, what, *attempt, *took, *delay, error, now),
        }
    }

    /// A retry is kept with the output lines, so the live view and a failure report show it. The
    /// line says how long the failed try took: the time it is shown at counts from the vertex's
    /// first event, which for a pull is often this one (a registry that never answered shows
    /// `0.000 retrying` two minutes in).
    #[allow(clippy::too_many_arguments)]
    fn retry(
        &mut self,
        i: usize,
        what: &str,
        attempt: u32,
        took: Duration,
        delay: Duration,
        error: &str,
        now: Instant,
    ) -> Applied {
        let text = format!(
            "retrying {what} in {}: try {attempt} failed after {}: {error}",
            secs(delay),
            secs(took)
        );
        self.keep_line(i, text, now);
        Applied::on(i)
    }

    fn keep_line(&mut self, i: usize, line: String, now: Instant) {
        let e = &mut self.entries[i];
        let at = now.saturating_duration_since(e.started);
        if e.lines.len() == KEPT_LINES {
            e.lines.pop_front();
        }
        e.lines.push_back((at, line));
    }

    /// Records a blob's bytes; says how long its transfer has been going.
    fn transfer(
        &mut self,
        i: usize,
        digest: &Digest,
        bytes: u64,
        total: u64,
        now: Instant,
    ) -> Applied {
        let e = &mut self.entries[i];
        let started = match e.transfers.iter_mut().find(|t| &t.digest == digest) {
            Some(t) => {
                t.bytes = bytes;
                t.total = total;
                t.started
            }
            None => {
                e.transfers.push(Transfer {
                    digest: digest.clone(),
                    bytes,
                    total,
                    started: now,
                });
                now
            }
        };
        Applied {
            transfer: Some(now.saturating_duration_since(started)),
            ..Applied::on(i)
        }
    }

    /// Forgets a transfer and says how long it took (zero when it was never seen starting).
    fn end_transfer(&mut self, i: usize, digest: &Digest, now: Instant) -> Duration {
        let e = &mut self.entries[i];
        match e.transfers.iter().position(|t| &t.digest == digest) {
            Some(p) => now.saturating_duration_since(e.transfers.remove(p).started),
            None => Duration::ZERO,
        }
    }

    fn vertex_entry(&mut self, vertex: NodeRef, description: &str, now: Instant) -> usize {
        let key = Key::Vertex(vertex);
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.add(key, description.to_string(), now)
    }

    /// The running entry for a pull, push or phase; a new one (new number) when the last with
    /// this key has finished.
    fn open(&mut self, key: Key, name: String, now: Instant) -> usize {
        if let Some(&i) = self.index.get(&key)
            && self.entries[i].status == Status::Running
        {
            return i;
        }
        self.add(key, name, now)
    }

    fn add(&mut self, key: Key, name: String, now: Instant) -> usize {
        let i = self.entries.len();
        self.entries.push(Entry {
            number: i + 1,
            key: key.clone(),
            name,
            status: Status::Running,
            started: now,
            duration: None,
            error: None,
            lines: VecDeque::new(),
            transfers: Vec::new(),
            blobs_done: 0,
            blobs_expected: None,
            detail: None,
        });
        self.index.insert(key, i);
        i
    }

    /// Ends a running entry; one that already ended stays as it was.
    fn close(&mut self, i: usize, status: Status, duration: Option<Duration>) -> Applied {
        let e = &mut self.entries[i];
        if e.status != Status::Running {
            return Applied::on(i);
        }
        e.status = status;
        e.duration = duration;
        e.transfers.clear();
        Applied {
            ended: true,
            ..Applied::on(i)
        }
    }

    pub fn vertices(&self) -> impl Iterator<Item = &Entry> + Clone {
        self.entries.iter().filter(|e| e.is_vertex())
    }

    pub fn summary(&self, now: Instant) -> Summary {
        let mut summary = Summary {
            warnings: self.warnings,
            elapsed: now.saturating_duration_since(self.start),
            ..Summary::default()
        };
        for e in self.vertices() {
            match e.status {
                Status::Running => {}
                Status::Cached => summary.cached += 1,
                Status::Done => summary.executed += 1,
                Status::Failed => summary.failed += 1,
                Status::Canceled => summary.canceled += 1,
                Status::Skipped => summary.skipped += 1,
            }
        }
        summary
    }
}

impl Applied {
    fn on(i: usize) -> Applied {
        Applied {
            entry: Some(i),
            ..Applied::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use forge_builder::events::BuildEvent;

    use super::super::testing::*;
    use super::*;

    fn phase(name: &str, done: bool) -> BuildEvent {
        let name = name.to_string();
        if done {
            BuildEvent::PhaseDone {
                name,
                duration: Duration::from_millis(3),
            }
        } else {
            BuildEvent::PhaseStarted { name }
        }
    }

    #[test]
    fn entries_are_numbered_as_first_seen_and_a_finished_phase_seen_again_is_new() {
        let t0 = Instant::now();
        let mut s = State::new(t0);
        let names = |s: &State| -> Vec<(usize, String)> {
            s.entries
                .iter()
                .map(|e| (e.number, e.name.clone()))
                .collect()
        };
        assert_eq!(s.apply(&out(7, "early"), t0), Applied::on(0));
        s.apply(&started(2, MAKE), t0);
        s.apply(&phase("writing image", false), t0);
        let done = s.apply(&phase("writing image", true), t0);
        assert!(done.ended && done.entry == Some(2));
        let again = s.apply(&phase("writing image", false), t0);
        assert!(again.began && again.entry == Some(3));
        assert_eq!(
            names(&s),
            [
                (1, "step 7".into()),
                (2, MAKE.into()),
                (3, "writing image".into()),
                (4, "writing image".into()),
            ]
        );
    }

    #[test]
    fn a_step_ends_once_and_keeps_only_its_last_lines() {
        let t0 = Instant::now();
        let mut s = State::new(t0);
        assert!(s.apply(&started(0, MAKE), t0).began);
        for n in 0..25 {
            s.apply(&out(0, &format!("line {n}")), ms(t0, n));
        }
        let failed_at = ms(t0, 30);
        let ended = s.apply(&failed(0, MAKE, 30, "exit status 2"), failed_at);
        assert!(ended.ended);
        // A late cancellation changes nothing about a step that already failed.
        assert!(!s.apply(&cancelled(0, MAKE), ms(t0, 40)).ended);
        let e = &s.entries[0];
        assert_eq!(e.status, Status::Failed);
        assert_eq!(e.error.as_deref(), Some("exit status 2"));
        assert_eq!(e.lines.len(), KEPT_LINES);
        assert_eq!(e.lines.front().unwrap().1, "line 15");
        assert_eq!(
            e.lines.back().unwrap(),
            &(Duration::from_millis(24), "line 24".into())
        );
        assert_eq!(s.summary(failed_at).failed, 1);
    }
}
