//! The progress display of `forge build`: turns the builder's [`BuildEvent`]s into BuildKit-style
//! plain lines, a live terminal view, or JSON lines for machines, and counts what ran for the
//! closing summary line. Drawing is best effort: a display that cannot write never fails a build.

// Until `forge build` runs builds and wires this in.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use forge_builder::events::{BuildEvent, EventRecord, OutputStream};
use forge_builder::graph::NodeRef;
use forge_builder::solver::Event;
use forge_snapshotter::registry::{BlobKind, PullEvent, PushEvent};
use forge_snapshotter::store::Digest;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// How `forge build` shows progress on stderr (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal that understands cursor movement, `plain` otherwise.
    Auto,
    Tty,
    Plain,
    Json,
    /// Nothing at all; errors are main's to print.
    Quiet,
}

impl ProgressMode {
    /// Decides `Auto` for this process's stderr and `$TERM`; other modes stay as they are.
    pub fn resolve(self) -> ProgressMode {
        let term = std::env::var("TERM").ok();
        self.resolve_for(std::io::stderr().is_terminal(), term.as_deref())
    }

    fn resolve_for(self, terminal: bool, term: Option<&str>) -> ProgressMode {
        match self {
            ProgressMode::Auto if terminal && term != Some("dumb") => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

/// What the build did, as the events told it; `Display` gives the closing line
/// (`built in 3.2s: 5 steps, 3 cached`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Steps that ran to completion.
    pub executed: usize,
    /// Steps whose result came from the cache.
    pub cached: usize,
    pub failed: usize,
    pub canceled: usize,
    pub warnings: usize,
    /// From the printer's creation to its end.
    pub elapsed: Duration,
}

impl Summary {
    /// Every step the build reached, whatever became of it.
    pub fn steps(&self) -> usize {
        self.executed + self.cached + self.failed + self.canceled
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.steps();
        let noun = if steps == 1 { "step" } else { "steps" };
        let secs = self.elapsed.as_secs_f64();
        if self.failed == 0 && self.canceled == 0 {
            write!(
                f,
                "built in {secs:.1}s: {steps} {noun}, {} cached",
                self.cached
            )
        } else {
            write!(
                f,
                "failed after {secs:.1}s: {steps} {noun}, {} cached, {} failed",
                self.cached, self.failed
            )?;
            if self.canceled > 0 {
                write!(f, ", {} canceled", self.canceled)?;
            }
            Ok(())
        }
    }
}

/// Draws events as they come until every sender is gone, then the final state; returns the
/// counts. In tty mode the live view is redrawn about ten times a second.
///
/// Writes are blocking (stderr is not worth a thread); `out` is usually
/// `Box::new(std::io::stderr())`. `Auto` is resolved against the real stderr here.
pub async fn run(
    mode: ProgressMode,
    mut rx: UnboundedReceiver<EventRecord>,
    out: Box<dyn Write + Send>,
) -> Summary {
    let mut printer = Printer::new(mode.resolve(), out);
    if printer.mode == ProgressMode::Tty {
        let mut ticks = tokio::time::interval(REDRAW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => printer.handle(ev.event),
                    None => break,
                },
                _ = ticks.tick() => printer.tick(),
            }
        }
    } else {
        while let Some(ev) = rx.recv().await {
            printer.handle(ev.event);
        }
    }
    printer.finish()
}

const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Plain mode shows a transfer's bytes at most this often per blob; logs stay readable.
const PLAIN_TRANSFER_EVERY: Duration = Duration::from_secs(5);
const JSON_TRANSFER_EVERY: Duration = Duration::from_secs(1);
/// Output lines kept per step, to show when it fails.
const KEPT_LINES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Vertex(NodeRef),
    Pull(String),
    Push(String),
    Phase(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Cached,
    Done,
    Failed,
    Canceled,
}

struct Transfer {
    digest: Digest,
    bytes: u64,
    total: u64,
    started: Instant,
    /// When plain/json last showed its bytes.
    shown: Instant,
}

/// One numbered thing on screen: a step, a pull, a push or a phase.
struct Entry {
    number: usize,
    key: Key,
    name: String,
    status: Status,
    started: Instant,
    duration: Option<Duration>,
    /// The last output lines, with their time since the start.
    lines: VecDeque<(Duration, String)>,
    transfers: Vec<Transfer>,
    blobs_done: usize,
    /// A pull knows, once resolved, how many blobs make it finished (config and layers).
    blobs_expected: Option<usize>,
    /// What a finished transfer left to say (a pushed manifest's digest).
    detail: Option<String>,
}

impl Entry {
    fn is_vertex(&self) -> bool {
        matches!(self.key, Key::Vertex(_))
    }
}

/// The state behind every mode; [`run`] drives it from a channel, tests call it directly.
pub struct Printer {
    mode: ProgressMode,
    out: Box<dyn Write + Send>,
    /// Once a write failed (a closed pipe), nothing more is written.
    broken: bool,
    start: Instant,
    /// Fixed (columns, rows) for tests; `None` asks the terminal each redraw.
    size: Option<(usize, usize)>,
    entries: Vec<Entry>,
    /// The open entry for each key; a finished pull or phase seen again gets a new number.
    index: HashMap<Key, usize>,
    /// Plain mode: whose block the last line belonged to; `None` after a warning.
    current: Option<usize>,
    printed_any: bool,
    /// Tty mode: lines to print once above the live area at the next redraw.
    pending: Vec<String>,
    /// Tty mode: how many lines the live area took at the last redraw.
    live_height: usize,
    warnings: usize,
    buf: String,
}

impl Printer {
    /// A printer for an already resolved mode (`Auto` is drawn as plain); see
    /// [`ProgressMode::resolve`].
    pub fn new(mode: ProgressMode, out: Box<dyn Write + Send>) -> Printer {
        Printer::with_clock(mode, out, Instant::now(), None)
    }

    fn with_clock(
        mode: ProgressMode,
        out: Box<dyn Write + Send>,
        start: Instant,
        size: Option<(usize, usize)>,
    ) -> Printer {
        let mode = if mode == ProgressMode::Auto {
            ProgressMode::Plain
        } else {
            mode
        };
        Printer {
            mode,
            out,
            broken: false,
            start,
            size,
            entries: Vec::new(),
            index: HashMap::new(),
            current: None,
            printed_any: false,
            pending: Vec::new(),
            live_height: 0,
            warnings: 0,
            buf: String::new(),
        }
    }

    pub fn handle(&mut self, ev: BuildEvent) {
        self.handle_at(ev, Instant::now());
    }

    /// Tty mode: redraws the live view; other modes ignore it.
    pub fn tick(&mut self) {
        self.tick_at(Instant::now());
    }

    /// Draws the final state (and the failed steps' last output) and returns the counts.
    pub fn finish(self) -> Summary {
        self.finish_at(Instant::now())
    }

    fn handle_at(&mut self, ev: BuildEvent, now: Instant) {
        match ev {
            BuildEvent::Solver(ev) => self.solver(ev, now),
            BuildEvent::Output {
                vertex,
                stream,
                line,
            } => self.output(vertex, stream, line, now),
            BuildEvent::Pull { reference, event } => self.pull(reference, event, now),
            BuildEvent::Push { reference, event } => self.push(reference, event, now),
            BuildEvent::PhaseStarted { name } => {
                let i = self.open(Key::Phase(name.clone()), name.clone(), now);
                match self.mode {
                    ProgressMode::Plain => self.plain_enter(i),
                    ProgressMode::Json => self.json(
                        now,
                        json!({"phase": name, "status": "started", "id": self.entries[i].number}),
                    ),
                    _ => {}
                }
            }
            BuildEvent::PhaseDone { name, duration } => {
                let i = self.open(Key::Phase(name.clone()), name.clone(), now);
                if self.mode == ProgressMode::Json {
                    self.json(
                        now,
                        json!({"phase": name, "status": "done", "id": self.entries[i].number,
                               "duration_ms": millis(duration)}),
                    );
                }
                self.plain_line(i, &format!("DONE {}", secs(duration)));
                self.close(i, Status::Done, Some(duration));
            }
            BuildEvent::Warning { message } => {
                self.warnings += 1;
                match self.mode {
                    ProgressMode::Plain => {
                        if self.printed_any {
                            self.buf.push('\n');
                        }
                        for line in message.lines() {
                            self.buf.push_str("WARNING: ");
                            self.buf.push_str(line);
                            self.buf.push('\n');
                        }
                        self.current = None;
                        self.printed_any = true;
                    }
                    ProgressMode::Tty => {
                        for line in message.lines() {
                            self.pending.push(format!("WARNING: {line}"));
                        }
                    }
                    ProgressMode::Json => self.json(now, json!({ "warning": message })),
                    _ => {}
                }
            }
        }
        self.flush();
    }

    fn solver(&mut self, ev: Event, now: Instant) {
        let (vertex, description) = match &ev {
            Event::Cached {
                vertex,
                description,
                ..
            }
            | Event::Started {
                vertex,
                description,
            }
            | Event::Done {
                vertex,
                description,
                ..
            }
            | Event::Failed {
                vertex,
                description,
                ..
            }
            | Event::Cancelled {
                vertex,
                description,
            } => (*vertex, description.clone()),
        };
        let i = self.vertex_entry(vertex, &description, now);
        let number = self.entries[i].number;
        if self.mode == ProgressMode::Json {
            let mut obj = json!({"vertex": number, "node": vertex.0, "name": description});
            let (status, extra) = match &ev {
                Event::Cached { key, .. } => ("cached", json!({"cache_key": key.to_string()})),
                Event::Started { .. } => ("started", json!({})),
                Event::Done { duration, .. } => ("done", json!({"duration_ms": millis(*duration)})),
                Event::Failed {
                    duration, error, ..
                } => (
                    "error",
                    json!({"duration_ms": millis(*duration), "error": error}),
                ),
                Event::Cancelled { .. } => ("canceled", json!({})),
            };
            obj["status"] = status.into();
            merge(&mut obj, extra);
            self.json(now, obj);
        }
        match ev {
            Event::Started { .. } => {
                // Output lines count from here, not from when the vertex was first seen.
                self.entries[i].started = now;
                if self.mode == ProgressMode::Plain {
                    self.plain_enter(i);
                }
            }
            Event::Cached { .. } => {
                self.plain_line(i, "CACHED");
                self.close(i, Status::Cached, None);
            }
            Event::Done { duration, .. } => {
                self.plain_line(i, &format!("DONE {}", secs(duration)));
                self.close(i, Status::Done, Some(duration));
            }
            Event::Failed {
                duration, error, ..
            } => {
                self.plain_line(i, &format!("ERROR: {error}"));
                self.close(i, Status::Failed, Some(duration));
            }
            Event::Cancelled { .. } => {
                let duration = now.saturating_duration_since(self.entries[i].started);
                self.plain_line(i, "CANCELED");
                self.close(i, Status::Canceled, Some(duration));
            }
        }
    }

    fn output(&mut self, vertex: NodeRef, stream: OutputStream, line: String, now: Instant) {
        let i = match self.index.get(&Key::Vertex(vertex)) {
            Some(&i) => i,
            // Output before the step was announced: it still gets a number, named by its node.
            None => self.vertex_entry(vertex, &format!("step {}", vertex.0), now),
        };
        let at = now.saturating_duration_since(self.entries[i].started);
        let e = &mut self.entries[i];
        if e.lines.len() == KEPT_LINES {
            e.lines.pop_front();
        }
        e.lines.push_back((at, line.clone()));
        let number = e.number;
        match self.mode {
            ProgressMode::Plain => {
                self.plain_line(i, &format!("{:.3} {line}", at.as_secs_f64()));
            }
            ProgressMode::Json => {
                let stream = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                self.json(
                    now,
                    json!({"vertex": number, "stream": stream, "line": line}),
                );
            }
            _ => {}
        }
    }

    fn pull(&mut self, reference: String, ev: PullEvent, now: Instant) {
        let i = self.open(
            Key::Pull(reference.clone()),
            format!("pulling {reference}"),
            now,
        );
        if self.mode == ProgressMode::Json {
            let (event, extra) = match &ev {
                PullEvent::Resolved {
                    manifest,
                    platform,
                    layers,
                    ..
                } => (
                    "resolved",
                    json!({"manifest": manifest.to_string(), "platform": platform,
                           "layers": layers}),
                ),
                PullEvent::Started {
                    digest,
                    kind,
                    total,
                } => (
                    "blob_started",
                    json!({"digest": digest.to_string(), "kind": kind_name(*kind),
                           "total": total}),
                ),
                PullEvent::Progress {
                    digest,
                    bytes,
                    total,
                } => {
                    if !self.transfer_due(i, digest, *bytes, *total, now) {
                        return self.pull_state(i, ev, now);
                    }
                    (
                        "blob_progress",
                        json!({"digest": digest.to_string(), "bytes": bytes, "total": total}),
                    )
                }
                PullEvent::Done { digest, bytes } => (
                    "blob_done",
                    json!({"digest": digest.to_string(), "bytes": bytes}),
                ),
                PullEvent::Cached {
                    digest,
                    kind,
                    total,
                } => (
                    "blob_cached",
                    json!({"digest": digest.to_string(), "kind": kind_name(*kind),
                           "total": total}),
                ),
                PullEvent::Retrying {
                    what,
                    attempt,
                    delay,
                    error,
                } => ("retrying", retry_json(what, *attempt, *delay, error)),
            };
            let mut obj = json!({"pull": reference, "event": event});
            merge(&mut obj, extra);
            self.json(now, obj);
        }
        self.pull_state(i, ev, now);
    }

    /// What a pull event changes, and its plain line.
    fn pull_state(&mut self, i: usize, ev: PullEvent, now: Instant) {
        match ev {
            PullEvent::Resolved {
                manifest,
                platform,
                layers,
                ..
            } => {
                self.entries[i].blobs_expected = Some(layers + 1);
                let s = if layers == 1 { "" } else { "s" };
                self.plain_line(
                    i,
                    &format!("resolved {manifest} ({platform}, {layers} layer{s})"),
                );
            }
            PullEvent::Started { digest, total, .. } => {
                self.transfer(i, &digest, 0, total, now);
            }
            PullEvent::Progress {
                digest,
                bytes,
                total,
            } => self.progress_line(i, &digest, bytes, total, now),
            PullEvent::Done { digest, bytes } => {
                let took = self.end_transfer(i, &digest, now);
                self.plain_line(i, &format!("{digest} {} {} done", human(bytes), secs(took)));
                self.blob_finished(i, now);
            }
            PullEvent::Cached { digest, total, .. } => {
                self.end_transfer(i, &digest, now);
                self.plain_line(i, &format!("{digest} {} cached", human(total)));
                self.blob_finished(i, now);
            }
            PullEvent::Retrying {
                what,
                attempt,
                delay,
                error,
            } => self.retry_line(
                i,
                Retry {
                    what: &what,
                    attempt,
                    delay,
                    error: &error,
                },
                now,
            ),
        }
    }

    fn push(&mut self, reference: String, ev: PushEvent, now: Instant) {
        let i = self.open(
            Key::Push(reference.clone()),
            format!("pushing {reference}"),
            now,
        );
        if self.mode == ProgressMode::Json {
            let (event, extra) = match &ev {
                PushEvent::Exists {
                    repository,
                    digest,
                    kind,
                    total,
                } => (
                    "exists",
                    json!({"repository": repository, "digest": digest.to_string(),
                           "kind": kind_name(*kind), "total": total}),
                ),
                PushEvent::Mounted {
                    repository,
                    from,
                    digest,
                    total,
                } => (
                    "mounted",
                    json!({"repository": repository, "from": from,
                           "digest": digest.to_string(), "total": total}),
                ),
                PushEvent::Uploading {
                    digest,
                    bytes,
                    total,
                } => {
                    if !self.transfer_due(i, digest, *bytes, *total, now) {
                        return self.push_state(i, ev, now);
                    }
                    (
                        "blob_progress",
                        json!({"digest": digest.to_string(), "bytes": bytes, "total": total}),
                    )
                }
                PushEvent::Uploaded {
                    repository,
                    digest,
                    bytes,
                } => (
                    "blob_done",
                    json!({"repository": repository, "digest": digest.to_string(),
                           "bytes": bytes}),
                ),
                PushEvent::ManifestPushed { tag, digest } => (
                    "manifest",
                    json!({"tag": tag, "digest": digest.to_string()}),
                ),
                PushEvent::Retrying {
                    what,
                    attempt,
                    delay,
                    error,
                } => ("retrying", retry_json(what, *attempt, *delay, error)),
            };
            let mut obj = json!({"push": reference, "event": event});
            merge(&mut obj, extra);
            self.json(now, obj);
        }
        self.push_state(i, ev, now);
    }

    fn push_state(&mut self, i: usize, ev: PushEvent, now: Instant) {
        match ev {
            PushEvent::Exists { digest, total, .. } => {
                self.end_transfer(i, &digest, now);
                self.entries[i].blobs_done += 1;
                self.plain_line(i, &format!("{digest} {} exists", human(total)));
            }
            PushEvent::Mounted { from, digest, .. } => {
                self.end_transfer(i, &digest, now);
                self.entries[i].blobs_done += 1;
                self.plain_line(i, &format!("{digest} mounted from {from}"));
            }
            PushEvent::Uploading {
                digest,
                bytes,
                total,
            } => self.progress_line(i, &digest, bytes, total, now),
            PushEvent::Uploaded { digest, bytes, .. } => {
                let took = self.end_transfer(i, &digest, now);
                self.entries[i].blobs_done += 1;
                self.plain_line(i, &format!("{digest} {} {} done", human(bytes), secs(took)));
            }
            PushEvent::ManifestPushed { tag, digest } => {
                self.plain_line(i, &format!("pushed manifest {digest} as {tag}"));
                self.entries[i].detail = Some(format!("manifest {digest}"));
                let took = now.saturating_duration_since(self.entries[i].started);
                self.plain_line(i, &format!("DONE {}", secs(took)));
                self.close(i, Status::Done, Some(took));
            }
            PushEvent::Retrying {
                what,
                attempt,
                delay,
                error,
            } => self.retry_line(
                i,
                Retry {
                    what: &what,
                    attempt,
                    delay,
                    error: &error,
                },
                now,
            ),
        }
    }

    fn retry_line(&mut self, i: usize, r: Retry<'_>, now: Instant) {
        let text = format!(
            "retrying {} (attempt {}) in {}: {}",
            r.what,
            r.attempt,
            secs(r.delay),
            r.error
        );
        let at = now.saturating_duration_since(self.entries[i].started);
        let e = &mut self.entries[i];
        if e.lines.len() == KEPT_LINES {
            e.lines.pop_front();
        }
        e.lines.push_back((at, text.clone()));
        self.plain_line(i, &text);
    }

    /// A pull is finished once its config and every layer are in the store: the pull itself
    /// sends no closing event.
    fn blob_finished(&mut self, i: usize, now: Instant) {
        let e = &mut self.entries[i];
        e.blobs_done += 1;
        if e.blobs_expected.is_some_and(|n| e.blobs_done >= n) {
            let took = now.saturating_duration_since(e.started);
            let reference = match &e.key {
                Key::Pull(r) => r.clone(),
                _ => String::new(),
            };
            self.plain_line(i, &format!("DONE {}", secs(took)));
            if self.mode == ProgressMode::Json {
                self.json(
                    now,
                    json!({"pull": reference, "event": "done", "duration_ms": millis(took)}),
                );
            }
            self.close(i, Status::Done, Some(took));
        }
    }

    fn transfer(&mut self, i: usize, digest: &Digest, bytes: u64, total: u64, now: Instant) {
        let e = &mut self.entries[i];
        match e.transfers.iter_mut().find(|t| &t.digest == digest) {
            Some(t) => {
                t.bytes = bytes;
                t.total = total;
            }
            None => e.transfers.push(Transfer {
                digest: digest.clone(),
                bytes,
                total,
                started: now,
                shown: now,
            }),
        }
    }

    /// Records the bytes and says whether the json line for them is due (and if so, that it
    /// was shown now).
    fn transfer_due(
        &mut self,
        i: usize,
        digest: &Digest,
        bytes: u64,
        total: u64,
        now: Instant,
    ) -> bool {
        self.transfer(i, digest, bytes, total, now);
        let t = self.entries[i]
            .transfers
            .iter_mut()
            .find(|t| &t.digest == digest)
            .expect("just recorded");
        let due = now.saturating_duration_since(t.shown) >= JSON_TRANSFER_EVERY;
        if due {
            t.shown = now;
        }
        due
    }

    /// Records a transfer's bytes; plain mode shows them once the blob has been going for a
    /// while, then at most every few seconds.
    fn progress_line(&mut self, i: usize, digest: &Digest, bytes: u64, total: u64, now: Instant) {
        if self.mode == ProgressMode::Json {
            // transfer_due already recorded the bytes.
            return;
        }
        self.transfer(i, digest, bytes, total, now);
        if self.mode != ProgressMode::Plain {
            return;
        }
        let t = self.entries[i]
            .transfers
            .iter_mut()
            .find(|t| &t.digest == digest)
            .expect("just recorded");
        if now.saturating_duration_since(t.shown) < PLAIN_TRANSFER_EVERY || bytes >= total {
            return;
        }
        t.shown = now;
        let took = now.saturating_duration_since(t.started);
        let text = format!(
            "{digest} {} / {} {}",
            human(bytes),
            human(total),
            secs(took)
        );
        self.plain_line(i, &text);
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
            lines: VecDeque::new(),
            transfers: Vec::new(),
            blobs_done: 0,
            blobs_expected: None,
            detail: None,
        });
        self.index.insert(key, i);
        i
    }

    fn close(&mut self, i: usize, status: Status, duration: Option<Duration>) {
        let e = &mut self.entries[i];
        if e.status != Status::Running {
            return;
        }
        e.status = status;
        e.duration = duration;
        e.transfers.clear();
        if self.mode == ProgressMode::Tty {
            let width = self.width();
            let line = finished_line(&self.entries[i], width);
            self.pending.push(line);
            if let Some(detail) = &self.entries[i].detail {
                self.pending
                    .push(fit(&format!(" => => {detail}"), "", width));
            }
        }
    }

    /// Plain mode: starts entry `i`'s block unless the last line was already its own; a block
    /// opens with a blank line and the entry's header, as BuildKit's plain output does.
    fn plain_enter(&mut self, i: usize) {
        if self.current == Some(i) {
            return;
        }
        if self.printed_any {
            self.buf.push('\n');
        }
        let e = &self.entries[i];
        self.buf.push_str(&format!("#{} {}\n", e.number, e.name));
        self.current = Some(i);
        self.printed_any = true;
    }

    fn plain_line(&mut self, i: usize, text: &str) {
        if self.mode != ProgressMode::Plain {
            return;
        }
        self.plain_enter(i);
        let number = self.entries[i].number;
        for line in text.split('\n') {
            self.buf.push_str(&format!("#{number} {line}\n"));
        }
    }

    fn json(&mut self, now: Instant, mut obj: Value) {
        obj["time"] = json!(now.saturating_duration_since(self.start).as_millis() as f64 / 1000.0);
        self.buf.push_str(&obj.to_string());
        self.buf.push('\n');
    }

    fn width(&self) -> usize {
        self.size.map_or_else(|| terminal_size().0, |s| s.0)
    }

    fn tick_at(&mut self, now: Instant) {
        if self.mode == ProgressMode::Tty {
            self.redraw(now, false);
            self.flush();
        }
    }

    /// Tty mode: clears the live area, prints what finished since, and draws the live area
    /// again (or, at the end, the final header in its place).
    fn redraw(&mut self, now: Instant, last: bool) {
        let (width, rows) = self.size.unwrap_or_else(terminal_size);
        if self.live_height > 0 {
            self.buf.push_str(&format!("\x1b[{}A", self.live_height));
        }
        self.buf.push_str("\r\x1b[J");
        for line in std::mem::take(&mut self.pending) {
            self.buf.push_str(&line);
            self.buf.push('\n');
        }
        let vertices = self.entries.iter().filter(|e| e.is_vertex());
        let total = vertices.clone().count();
        let finished = vertices.filter(|e| e.status != Status::Running).count();
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let mut header = format!("[+] Building {elapsed:.1}s ({finished}/{total})");
        if last {
            // Whatever still runs at the end was cut off; it stays listed as it was.
            let running: Vec<String> = self
                .entries
                .iter()
                .filter(|e| e.status == Status::Running)
                .flat_map(|e| live_lines(e, now, width))
                .collect();
            for line in running {
                self.buf.push_str(&line);
                self.buf.push('\n');
            }
            let failed = self.entries.iter().any(|e| e.status == Status::Failed);
            header.push_str(if failed { " FAILED" } else { " FINISHED" });
            self.buf.push_str(&fit(&header, "", width));
            self.buf.push('\n');
            self.live_height = 0;
            return;
        }
        let mut lines = vec![fit(&header, "", width)];
        for e in self.entries.iter().filter(|e| e.status == Status::Running) {
            lines.extend(live_lines(e, now, width));
        }
        // Moving the cursor up past the top of the screen is not possible: keep the live area
        // shorter than the terminal.
        let room = rows.saturating_sub(1).max(2);
        if lines.len() > room {
            let hidden = lines.len() - (room - 1);
            lines.truncate(room - 1);
            lines.push(fit(&format!(" => ... {hidden} more lines"), "", width));
        }
        for line in &lines {
            self.buf.push_str(line);
            self.buf.push('\n');
        }
        self.live_height = lines.len();
    }

    fn finish_at(mut self, now: Instant) -> Summary {
        let mut summary = Summary {
            warnings: self.warnings,
            elapsed: now.saturating_duration_since(self.start),
            ..Summary::default()
        };
        for e in self.entries.iter().filter(|e| e.is_vertex()) {
            match e.status {
                Status::Running => {}
                Status::Cached => summary.cached += 1,
                Status::Done => summary.executed += 1,
                Status::Failed => summary.failed += 1,
                Status::Canceled => summary.canceled += 1,
            }
        }
        match self.mode {
            ProgressMode::Tty => {
                self.redraw(now, true);
                self.failure_logs();
            }
            ProgressMode::Plain => {
                if self.printed_any {
                    self.buf.push('\n');
                }
                self.failure_logs();
            }
            ProgressMode::Json => self.json(
                now,
                json!({"summary": {
                    "executed": summary.executed,
                    "cached": summary.cached,
                    "failed": summary.failed,
                    "canceled": summary.canceled,
                    "warnings": summary.warnings,
                    "duration_ms": millis(summary.elapsed),
                }}),
            ),
            _ => {}
        }
        self.flush();
        summary
    }

    /// The last output of each failed step, framed as BuildKit frames it.
    fn failure_logs(&mut self) {
        for e in self.entries.iter().filter(|e| e.status == Status::Failed) {
            if e.lines.is_empty() {
                continue;
            }
            self.buf.push_str("------\n");
            self.buf.push_str(&format!(" > {}:\n", e.name));
            for (at, line) in &e.lines {
                self.buf
                    .push_str(&format!("{:.3} {}\n", at.as_secs_f64(), line));
            }
            self.buf.push_str("------\n");
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.mode != ProgressMode::Quiet && !self.broken {
            let wrote = self
                .out
                .write_all(self.buf.as_bytes())
                .and_then(|()| self.out.flush());
            self.broken = wrote.is_err();
        }
        self.buf.clear();
    }
}

struct Retry<'a> {
    what: &'a str,
    attempt: u32,
    delay: Duration,
    error: &'a str,
}

/// A finished entry's line above the live area, BuildKit-like: status word first for what did
/// not simply run, the duration at the right edge.
fn finished_line(e: &Entry, width: usize) -> String {
    let time = e.duration.map(secs).unwrap_or_default();
    match e.status {
        Status::Cached => fit(&format!(" => CACHED {}", e.name), "", width),
        Status::Failed => fit(&format!(" => ERROR {}", e.name), &time, width),
        Status::Canceled => fit(&format!(" => CANCELED {}", e.name), &time, width),
        Status::Done | Status::Running => fit(&format!(" => {}", e.name), &time, width),
    }
}

/// A running entry in the live area: its name and elapsed time, then what it is doing (the
/// last output line, or the bytes in flight).
fn live_lines(e: &Entry, now: Instant, width: usize) -> Vec<String> {
    let elapsed = secs(now.saturating_duration_since(e.started));
    let mut head = format!(" => {}", e.name);
    if !e.transfers.is_empty() || e.blobs_done > 0 {
        let bytes: u64 = e.transfers.iter().map(|t| t.bytes).sum();
        let total: u64 = e.transfers.iter().map(|t| t.total).sum();
        match e.blobs_expected {
            Some(n) => head.push_str(&format!(" ({}/{n} blobs)", e.blobs_done)),
            None => head.push_str(&format!(" ({} blobs done)", e.blobs_done)),
        }
        if !e.transfers.is_empty() {
            head.push_str(&format!(" {} / {}", human(bytes), human(total)));
        }
    }
    let mut lines = vec![fit(&head, &elapsed, width)];
    if let Some((_, last)) = e.lines.back() {
        lines.push(fit(&format!(" => => {}", printable(last)), "", width));
    }
    lines
}

/// `left`, then `right` flush against the last usable column, cut to fit; one column stays
/// free so no terminal wraps the line (a wrapped line would break the cursor arithmetic).
fn fit(left: &str, right: &str, width: usize) -> String {
    let width = width.saturating_sub(1).max(10);
    let right_len = right.chars().count();
    let room = if right.is_empty() {
        width
    } else {
        width.saturating_sub(right_len + 1)
    };
    let left: String = left.chars().take(room).collect();
    if right.is_empty() {
        return left;
    }
    let pad = width
        .saturating_sub(left.chars().count() + right_len)
        .max(1);
    format!("{left}{}{right}", " ".repeat(pad))
}

/// A step's output with the characters that would move the cursor (carriage returns, escape
/// sequences, tabs) made harmless for the live view.
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

/// (columns, rows) of the terminal on stderr: the kernel's idea, else `$COLUMNS`/`$LINES`,
/// else 80x24.
fn terminal_size() -> (usize, usize) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given and nothing else.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return (usize::from(ws.ws_col), usize::from(ws.ws_row.max(1)));
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(default)
    };
    (env("COLUMNS", 80), env("LINES", 24))
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sizes as Docker shows them: decimal units, two decimals.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2}{}", UNITS[unit])
}

fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Config => "config",
        BlobKind::Layer => "layer",
    }
}

fn retry_json(what: &str, attempt: u32, delay: Duration, error: &str) -> Value {
    json!({"what": what, "attempt": attempt, "delay_ms": millis(delay), "error": error})
}

fn merge(obj: &mut Value, extra: Value) {
    if let (Value::Object(o), Value::Object(x)) = (obj, extra) {
        o.extend(x);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use forge_builder::solver::CacheKey;

    use super::*;

    /// A writer the test keeps a handle on.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A printer on a fixed 60x20 screen whose clock starts at `t0`.
    fn printer(mode: ProgressMode) -> (Printer, Capture, Instant) {
        printer_sized(mode, (60, 20))
    }

    fn printer_sized(mode: ProgressMode, size: (usize, usize)) -> (Printer, Capture, Instant) {
        let cap = Capture::default();
        let t0 = Instant::now();
        let p = Printer::with_clock(mode, Box::new(cap.clone()), t0, Some(size));
        (p, cap, t0)
    }

    /// A line of the 60-column test screen with `right` at its last usable column.
    fn row(left: &str, right: &str) -> String {
        format!("{left:<0$}{right}", 59 - right.len())
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn node(n: usize) -> NodeRef {
        NodeRef(n)
    }

    fn started(n: usize, d: &str) -> BuildEvent {
        BuildEvent::Solver(Event::Started {
            vertex: node(n),
            description: d.into(),
        })
    }

    fn cached(n: usize, d: &str) -> BuildEvent {
        BuildEvent::Solver(Event::Cached {
            vertex: node(n),
            description: d.into(),
            key: CacheKey([7; 32]),
        })
    }

    fn done(n: usize, d: &str, took_ms: u64) -> BuildEvent {
        BuildEvent::Solver(Event::Done {
            vertex: node(n),
            description: d.into(),
            duration: Duration::from_millis(took_ms),
        })
    }

    fn failed(n: usize, d: &str, took_ms: u64, error: &str) -> BuildEvent {
        BuildEvent::Solver(Event::Failed {
            vertex: node(n),
            description: d.into(),
            duration: Duration::from_millis(took_ms),
            error: error.into(),
        })
    }

    fn cancelled(n: usize, d: &str) -> BuildEvent {
        BuildEvent::Solver(Event::Cancelled {
            vertex: node(n),
            description: d.into(),
        })
    }

    fn out(n: usize, line: &str) -> BuildEvent {
        BuildEvent::Output {
            vertex: node(n),
            stream: OutputStream::Stdout,
            line: line.into(),
        }
    }

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn pull(ev: PullEvent) -> BuildEvent {
        BuildEvent::Pull {
            reference: "127.0.0.1:5000/busybox:latest".into(),
            event: ev,
        }
    }

    fn push(ev: PushEvent) -> BuildEvent {
        BuildEvent::Push {
            reference: "127.0.0.1:5000/app:1".into(),
            event: ev,
        }
    }

    const FROM: &str = "[base 1/3] FROM busybox";
    const MAKE: &str = "[base 2/3] RUN make";

    #[test]
    fn plain_shows_cached_output_done_and_phases_in_numbered_blocks() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.handle_at(cached(0, FROM), ms(t0, 0));
        p.handle_at(started(1, MAKE), ms(t0, 10));
        p.handle_at(out(1, "compiling"), ms(t0, 522));
        p.handle_at(done(1, MAKE, 1200), ms(t0, 1210));
        p.handle_at(
            BuildEvent::PhaseStarted {
                name: "exporting layers".into(),
            },
            ms(t0, 1300),
        );
        p.handle_at(
            BuildEvent::PhaseDone {
                name: "exporting layers".into(),
                duration: Duration::from_millis(300),
            },
            ms(t0, 1600),
        );
        let summary = p.finish_at(ms(t0, 1700));
        assert_eq!(
            cap.text(),
            "#1 [base 1/3] FROM busybox\n\
             #1 CACHED\n\
             \n\
             #2 [base 2/3] RUN make\n\
             #2 0.512 compiling\n\
             #2 DONE 1.2s\n\
             \n\
             #3 exporting layers\n\
             #3 DONE 0.3s\n\
             \n"
        );
        assert_eq!(
            summary,
            Summary {
                executed: 1,
                cached: 1,
                elapsed: Duration::from_millis(1700),
                ..Summary::default()
            }
        );
        assert_eq!(summary.to_string(), "built in 1.7s: 2 steps, 1 cached");
    }

    #[test]
    fn plain_attributes_interleaved_output_of_parallel_steps() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.handle_at(started(3, "[a 1/1] RUN a"), ms(t0, 0));
        p.handle_at(started(5, "[b 1/1] RUN b"), ms(t0, 50));
        p.handle_at(out(3, "a-one"), ms(t0, 100));
        p.handle_at(out(5, "b-one"), ms(t0, 100));
        p.handle_at(out(5, "b-two"), ms(t0, 150));
        p.handle_at(out(3, "a-two"), ms(t0, 200));
        p.handle_at(done(5, "[b 1/1] RUN b", 200), ms(t0, 250));
        p.handle_at(done(3, "[a 1/1] RUN a", 300), ms(t0, 300));
        p.finish_at(ms(t0, 300));
        let text = cap.text();
        assert_eq!(
            text,
            "#1 [a 1/1] RUN a\n\
             \n\
             #2 [b 1/1] RUN b\n\
             \n\
             #1 [a 1/1] RUN a\n\
             #1 0.100 a-one\n\
             \n\
             #2 [b 1/1] RUN b\n\
             #2 0.050 b-one\n\
             #2 0.100 b-two\n\
             \n\
             #1 [a 1/1] RUN a\n\
             #1 0.200 a-two\n\
             \n\
             #2 [b 1/1] RUN b\n\
             #2 DONE 0.2s\n\
             \n\
             #1 [a 1/1] RUN a\n\
             #1 DONE 0.3s\n\
             \n"
        );
        for line in text.lines() {
            if line.contains("a-") {
                assert!(line.starts_with("#1 "), "{line}");
            }
            if line.contains("b-") {
                assert!(line.starts_with("#2 "), "{line}");
            }
        }
    }

    #[test]
    fn plain_failure_shows_error_canceled_and_the_last_output() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.handle_at(started(0, "[x 1/2] RUN sleep 9"), ms(t0, 0));
        p.handle_at(started(1, "[y 1/1] RUN false"), ms(t0, 0));
        p.handle_at(out(1, "checking"), ms(t0, 100));
        p.handle_at(out(1, "oops"), ms(t0, 200));
        p.handle_at(
            failed(1, "[y 1/1] RUN false", 250, "exit status 1\nstderr: oops"),
            ms(t0, 250),
        );
        p.handle_at(cancelled(0, "[x 1/2] RUN sleep 9"), ms(t0, 300));
        let summary = p.finish_at(ms(t0, 400));
        assert_eq!(
            cap.text(),
            "#1 [x 1/2] RUN sleep 9\n\
             \n\
             #2 [y 1/1] RUN false\n\
             #2 0.100 checking\n\
             #2 0.200 oops\n\
             #2 ERROR: exit status 1\n\
             #2 stderr: oops\n\
             \n\
             #1 [x 1/2] RUN sleep 9\n\
             #1 CANCELED\n\
             \n\
             ------\n \
             > [y 1/1] RUN false:\n\
             0.100 checking\n\
             0.200 oops\n\
             ------\n"
        );
        assert_eq!((summary.failed, summary.canceled), (1, 1));
        assert_eq!(
            summary.to_string(),
            "failed after 0.4s: 2 steps, 0 cached, 1 failed, 1 canceled"
        );
    }

    #[test]
    fn plain_pull_summarises_bytes_and_ends_when_every_blob_is_in() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        let (config, layer) = (digest('c'), digest('a'));
        p.handle_at(
            pull(PullEvent::Resolved {
                reference: "127.0.0.1:5000/busybox:latest".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 1,
            }),
            ms(t0, 100),
        );
        p.handle_at(
            pull(PullEvent::Cached {
                digest: config.clone(),
                kind: BlobKind::Config,
                total: 1500,
            }),
            ms(t0, 110),
        );
        p.handle_at(
            pull(PullEvent::Started {
                digest: layer.clone(),
                kind: BlobKind::Layer,
                total: 40_000_000,
            }),
            ms(t0, 200),
        );
        // Many chunks; only the one five seconds in gets a line.
        for (at, bytes) in [(300, 1_000_000), (5_200, 20_000_000), (6_000, 30_000_000)] {
            p.handle_at(
                pull(PullEvent::Progress {
                    digest: layer.clone(),
                    bytes,
                    total: 40_000_000,
                }),
                ms(t0, at),
            );
        }
        p.handle_at(
            pull(PullEvent::Done {
                digest: layer.clone(),
                bytes: 40_000_000,
            }),
            ms(t0, 8_200),
        );
        p.finish_at(ms(t0, 8_300));
        let m = digest('d');
        assert_eq!(
            cap.text(),
            format!(
                "#1 pulling 127.0.0.1:5000/busybox:latest\n\
                 #1 resolved {m} (linux/amd64, 1 layer)\n\
                 #1 {config} 1.50kB cached\n\
                 #1 {layer} 20.00MB / 40.00MB 5.0s\n\
                 #1 {layer} 40.00MB 8.0s done\n\
                 #1 DONE 8.1s\n\
                 \n"
            )
        );
    }

    #[test]
    fn plain_push_lists_blobs_and_the_manifest() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        let (base, top) = (digest('b'), digest('e'));
        p.handle_at(
            push(PushEvent::Exists {
                repository: "app".into(),
                digest: base.clone(),
                kind: BlobKind::Layer,
                total: 2_000_000,
            }),
            ms(t0, 0),
        );
        p.handle_at(
            push(PushEvent::Uploading {
                digest: top.clone(),
                bytes: 0,
                total: 512,
            }),
            ms(t0, 100),
        );
        p.handle_at(
            push(PushEvent::Uploaded {
                repository: "app".into(),
                digest: top.clone(),
                bytes: 512,
            }),
            ms(t0, 400),
        );
        p.handle_at(
            push(PushEvent::Retrying {
                what: "manifest".into(),
                attempt: 1,
                delay: Duration::from_millis(500),
                error: "503 service unavailable".into(),
            }),
            ms(t0, 500),
        );
        p.handle_at(
            push(PushEvent::ManifestPushed {
                tag: "127.0.0.1:5000/app:1".into(),
                digest: digest('f'),
            }),
            ms(t0, 1500),
        );
        p.finish_at(ms(t0, 1500));
        let f = digest('f');
        assert_eq!(
            cap.text(),
            format!(
                "#1 pushing 127.0.0.1:5000/app:1\n\
                 #1 {base} 2.00MB exists\n\
                 #1 {top} 512B 0.3s done\n\
                 #1 retrying manifest (attempt 1) in 0.5s: 503 service unavailable\n\
                 #1 pushed manifest {f} as 127.0.0.1:5000/app:1\n\
                 #1 DONE 1.5s\n\
                 \n"
            )
        );
    }

    #[test]
    fn plain_warning_stands_alone_and_is_counted() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.handle_at(started(0, MAKE), ms(t0, 0));
        p.handle_at(
            BuildEvent::Warning {
                message: "--platform is the host's".into(),
            },
            ms(t0, 1),
        );
        p.handle_at(done(0, MAKE, 20), ms(t0, 20));
        let s = p.finish_at(ms(t0, 30));
        assert_eq!(
            cap.text(),
            "#1 [base 2/3] RUN make\n\
             \n\
             WARNING: --platform is the host's\n\
             \n\
             #1 [base 2/3] RUN make\n\
             #1 DONE 0.0s\n\
             \n"
        );
        assert_eq!(s.warnings, 1);
    }

    fn json_lines(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    #[test]
    fn json_gives_one_object_per_event_with_its_fields() {
        let (mut p, cap, t0) = printer(ProgressMode::Json);
        p.handle_at(cached(0, FROM), ms(t0, 0));
        p.handle_at(started(2, MAKE), ms(t0, 100));
        p.handle_at(
            BuildEvent::Output {
                vertex: node(2),
                stream: OutputStream::Stderr,
                line: "warning: x".into(),
            },
            ms(t0, 150),
        );
        p.handle_at(done(2, MAKE, 1200), ms(t0, 1300));
        p.handle_at(
            failed(4, "[t 1/1] RUN false", 5, "exit status 1"),
            ms(t0, 1400),
        );
        p.handle_at(
            pull(PullEvent::Resolved {
                reference: "r".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 2,
            }),
            ms(t0, 1500),
        );
        for at in [1600, 1700, 2700] {
            p.handle_at(
                push(PushEvent::Uploading {
                    digest: digest('e'),
                    bytes: at,
                    total: 9000,
                }),
                ms(t0, at),
            );
        }
        p.handle_at(
            BuildEvent::PhaseDone {
                name: "writing image".into(),
                duration: Duration::from_millis(42),
            },
            ms(t0, 2800),
        );
        p.handle_at(
            BuildEvent::Warning {
                message: "careful".into(),
            },
            ms(t0, 2900),
        );
        p.finish_at(ms(t0, 3000));
        let v = json_lines(&cap.text());
        assert_eq!(v.len(), 10, "{v:#?}");
        assert_eq!(v[0]["status"], "cached");
        assert_eq!(v[0]["vertex"], 1);
        assert_eq!(v[0]["node"], 0);
        assert_eq!(v[0]["name"], FROM);
        assert_eq!(v[0]["cache_key"], CacheKey([7; 32]).to_string());
        assert_eq!(v[1]["status"], "started");
        assert_eq!(v[1]["vertex"], 2);
        assert_eq!(v[1]["time"], 0.1);
        assert_eq!(v[2]["vertex"], 2);
        assert_eq!(v[2]["stream"], "stderr");
        assert_eq!(v[2]["line"], "warning: x");
        assert_eq!(v[3]["status"], "done");
        assert_eq!(v[3]["duration_ms"], 1200);
        assert_eq!(v[4]["status"], "error");
        assert_eq!(v[4]["vertex"], 3);
        assert_eq!(v[4]["error"], "exit status 1");
        assert_eq!(v[5]["pull"], "127.0.0.1:5000/busybox:latest");
        assert_eq!(v[5]["event"], "resolved");
        assert_eq!(v[5]["layers"], 2);
        assert_eq!(v[5]["manifest"], digest('d').to_string());
        // Of three upload chunks only the one a second after the first gets a line.
        assert_eq!(v[6]["push"], "127.0.0.1:5000/app:1");
        assert_eq!(v[6]["event"], "blob_progress");
        assert_eq!(v[6]["bytes"], 2700);
        assert_eq!(v[7]["phase"], "writing image");
        assert_eq!(v[7]["status"], "done");
        assert_eq!(v[7]["duration_ms"], 42);
        assert_eq!(v[8]["warning"], "careful");
        assert_eq!(v[9]["summary"]["executed"], 1);
        assert_eq!(v[9]["summary"]["cached"], 1);
        assert_eq!(v[9]["summary"]["failed"], 1);
        assert_eq!(v[9]["summary"]["duration_ms"], 3000);
    }

    /// The text after the last clearing of the live area: what the screen ends with.
    fn last_frame(text: &str) -> &str {
        text.rsplit("\x1b[J").next().unwrap()
    }

    #[test]
    fn tty_shows_running_steps_live_and_ends_with_the_final_state() {
        let (mut p, cap, t0) = printer(ProgressMode::Tty);
        p.handle_at(cached(0, FROM), ms(t0, 0));
        p.handle_at(started(1, MAKE), ms(t0, 0));
        p.handle_at(out(1, "compiling foo.c"), ms(t0, 300));
        p.tick_at(ms(t0, 500));
        let frame = cap.text();
        assert_eq!(
            last_frame(&frame),
            format!(
                " => CACHED [base 1/3] FROM busybox\n\
                 [+] Building 0.5s (1/2)\n\
                 {}\n \
                 => => compiling foo.c\n",
                row(" => [base 2/3] RUN make", "0.5s")
            )
        );
        // Nothing was drawn before, so there is nothing to move up over yet.
        assert!(!frame.contains("\x1b[3A"), "{frame:?}");

        p.handle_at(done(1, MAKE, 1200), ms(t0, 1200));
        p.tick_at(ms(t0, 1300));
        let text = cap.text();
        assert!(text.contains("\x1b[3A\r\x1b[J"), "{text:?}");
        assert_eq!(
            last_frame(&text),
            format!(
                "{}\n[+] Building 1.3s (2/2)\n",
                row(" => [base 2/3] RUN make", "1.2s")
            )
        );
        p.finish_at(ms(t0, 1400));
        let text = cap.text();
        assert!(text.ends_with("\x1b[1A\r\x1b[J[+] Building 1.4s (2/2) FINISHED\n"));
        // Each finished step is printed once.
        assert_eq!(text.matches("CACHED [base 1/3]").count(), 1);
        assert_eq!(text.matches(" => [base 2/3] RUN make   ").count(), 2);
    }

    #[test]
    fn tty_shows_transfers_and_cuts_lines_to_the_width() {
        let (mut p, cap, t0) = printer_sized(ProgressMode::Tty, (100, 30));
        p.handle_at(started(0, MAKE), ms(t0, 0));
        p.handle_at(out(0, &"x".repeat(200)), ms(t0, 10));
        p.handle_at(
            pull(PullEvent::Resolved {
                reference: "127.0.0.1:5000/busybox:latest".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 1,
            }),
            ms(t0, 0),
        );
        p.handle_at(
            pull(PullEvent::Progress {
                digest: digest('a'),
                bytes: 1_000_000,
                total: 4_000_000,
            }),
            ms(t0, 100),
        );
        p.tick_at(ms(t0, 1000));
        let text = cap.text();
        let frame = last_frame(&text);
        for line in frame.lines() {
            assert!(line.chars().count() <= 99, "{line:?}");
        }
        assert!(
            frame.contains(&format!(" => => {}\n", "x".repeat(92))),
            "{frame}"
        );
        let pulling = " => pulling 127.0.0.1:5000/busybox:latest (0/2 blobs) 1.00MB / 4.00MB";
        assert!(frame.contains(&format!("{pulling:<95}1.0s\n")), "{frame}");
    }

    #[test]
    fn tty_failure_prints_the_failed_steps_last_output() {
        let (mut p, cap, t0) = printer(ProgressMode::Tty);
        p.handle_at(started(0, "[t 1/1] RUN false"), ms(t0, 0));
        p.handle_at(out(0, "\x1b[31mred\x1b[0m"), ms(t0, 100));
        p.tick_at(ms(t0, 150));
        p.handle_at(
            failed(0, "[t 1/1] RUN false", 200, "exit status 1"),
            ms(t0, 200),
        );
        let s = p.finish_at(ms(t0, 300));
        let text = cap.text();
        // The live view never carries an escape from the step's output.
        assert!(text.contains(" => => [31mred[0m\n"), "{text:?}");
        assert!(
            last_frame(&text).ends_with(
                "[+] Building 0.3s (1/1) FAILED\n\
                 ------\n > [t 1/1] RUN false:\n0.100 \x1b[31mred\x1b[0m\n------\n"
            ),
            "{text:?}"
        );
        assert!(last_frame(&text).contains(" => ERROR [t 1/1] RUN false"));
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn quiet_writes_nothing_and_still_counts() {
        let (mut p, cap, t0) = printer(ProgressMode::Quiet);
        p.handle_at(cached(0, FROM), ms(t0, 0));
        p.handle_at(started(1, MAKE), ms(t0, 0));
        p.handle_at(out(1, "hello"), ms(t0, 1));
        p.handle_at(done(1, MAKE, 5), ms(t0, 5));
        p.handle_at(
            BuildEvent::Warning {
                message: "w".into(),
            },
            ms(t0, 6),
        );
        p.tick_at(ms(t0, 7));
        let s = p.finish_at(ms(t0, 8));
        assert_eq!(cap.text(), "");
        assert_eq!((s.executed, s.cached, s.warnings), (1, 1, 1));
    }

    #[test]
    fn auto_is_tty_only_on_a_capable_terminal() {
        let auto = ProgressMode::Auto;
        assert_eq!(auto.resolve_for(true, Some("xterm")), ProgressMode::Tty);
        assert_eq!(auto.resolve_for(true, None), ProgressMode::Tty);
        assert_eq!(auto.resolve_for(true, Some("dumb")), ProgressMode::Plain);
        assert_eq!(auto.resolve_for(false, Some("xterm")), ProgressMode::Plain);
        assert_eq!(
            ProgressMode::Json.resolve_for(true, Some("xterm")),
            ProgressMode::Json
        );
        assert_eq!(
            ProgressMode::Tty.resolve_for(false, Some("dumb")),
            ProgressMode::Tty
        );
    }

    #[test]
    fn summary_line_counts_steps() {
        let one = Summary {
            executed: 1,
            elapsed: Duration::from_millis(3240),
            ..Summary::default()
        };
        assert_eq!(one.to_string(), "built in 3.2s: 1 step, 0 cached");
        let failed = Summary {
            executed: 2,
            cached: 3,
            failed: 1,
            elapsed: Duration::from_secs(12),
            ..Summary::default()
        };
        assert_eq!(
            failed.to_string(),
            "failed after 12.0s: 6 steps, 3 cached, 1 failed"
        );
    }

    #[test]
    fn human_sizes_are_decimal() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(1000), "1.00kB");
        assert_eq!(human(64 * 1024 * 1024), "67.11MB");
        assert_eq!(human(3_500_000_000), "3.50GB");
    }

    /// A writer whose reader went away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stderr_does_not_stop_the_counting() {
        let mut p = Printer::new(ProgressMode::Plain, Box::new(Closed));
        p.handle(started(0, MAKE));
        p.handle(out(0, "x"));
        p.handle(done(0, MAKE, 1));
        assert!(p.broken);
        assert_eq!(p.finish().executed, 1);
    }

    #[tokio::test]
    async fn run_draws_until_the_senders_are_gone() {
        let (sender, rx) = tokio::sync::mpsc::unbounded_channel();
        let tx =
            forge_builder::events::Events::new(forge_builder::events::BuildId::new(), Some(sender));
        let cap = Capture::default();
        let task = tokio::spawn(run(ProgressMode::Plain, rx, Box::new(cap.clone())));
        tx.emit(cached(0, FROM));
        tx.emit(started(1, MAKE));
        tx.emit(out(1, "hi"));
        tx.emit(done(1, MAKE, 10));
        drop(tx);
        let s = task.await.unwrap();
        assert_eq!((s.executed, s.cached), (1, 1));
        let text = cap.text();
        assert!(text.starts_with(
            "#1 [base 1/3] FROM busybox\n#1 CACHED\n\n#2 [base 2/3] RUN make\n#2 0.0"
        ));
        assert!(text.contains(" hi\n#2 DONE 0.0s\n"), "{text}");
    }

    #[tokio::test]
    async fn run_in_tty_mode_redraws_on_its_own() {
        let (sender, rx) = tokio::sync::mpsc::unbounded_channel();
        let tx =
            forge_builder::events::Events::new(forge_builder::events::BuildId::new(), Some(sender));
        let cap = Capture::default();
        let task = tokio::spawn(run(ProgressMode::Tty, rx, Box::new(cap.clone())));
        tx.emit(started(1, MAKE));
        tx.emit(out(1, "working"));
        tokio::time::sleep(Duration::from_millis(350)).await;
        let live = cap.text();
        assert!(live.contains(" => [base 2/3] RUN make"), "{live:?}");
        assert!(live.contains(" => => working"), "{live:?}");
        assert!(live.matches("[+] Building").count() >= 2, "{live:?}");
        tx.emit(done(1, MAKE, 400));
        drop(tx);
        let s = task.await.unwrap();
        assert_eq!(s.executed, 1);
        let text = cap.text();
        let frame = last_frame(&text);
        assert!(frame.starts_with(" => [base 2/3] RUN make"), "{frame:?}");
        assert!(frame.contains(" 0.4s\n[+] Building"), "{frame:?}");
        assert!(frame.ends_with(" (1/1) FINISHED\n"), "{frame:?}");
    }
}
