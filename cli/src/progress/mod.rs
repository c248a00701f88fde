//! The progress display of `forge build`: the builder's [`EventRecord`]s folded into one display
//! [`State`](state::State), drawn by one renderer chosen by the mode: BuildKit-style plain lines
//! ([`plain`]), a live terminal view ([`tty`]), the records themselves as JSON lines ([`json`]), or
//! nothing. Drawing is best effort: a display that cannot write never fails a build.

mod json;
mod plain;
mod state;
#[cfg(test)]
mod testing;
mod tty;

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use forge_builder::events::{BuildEvent, EventRecord};
use forge_snapshotter::registry::{PullEvent, PushEvent};
use forge_snapshotter::store::Digest;
use tokio::sync::mpsc::UnboundedReceiver;

use state::{Applied, State, Status};

/// How `forge build` shows progress on stderr (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal that understands cursor movement, `plain` otherwise.
    Auto,
    /// One line per running step, redrawn in place, with each step's last output lines.
    Tty,
    /// Each step's start, output and end as lines of text, as `docker build --progress=plain`.
    Plain,
    /// Each event as one JSON object per line (README.md, "JSON progress").
    Json,
    /// Nothing at all but errors.
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
    /// Steps that did not run because one they need failed (keep-going solves).
    pub skipped: usize,
    pub warnings: usize,
    /// From the printer's creation to its end.
    pub elapsed: Duration,
}

impl Summary {
    /// Every step the build reached, whatever became of it.
    pub fn steps(&self) -> usize {
        self.executed + self.cached + self.failed + self.canceled + self.skipped
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.steps();
        let noun = if steps == 1 { "step" } else { "steps" };
        let secs = self.elapsed.as_secs_f64();
        if self.failed == 0 && self.canceled == 0 && self.skipped == 0 {
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
            if self.skipped > 0 {
                write!(f, ", {} skipped", self.skipped)?;
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
    match printer.render.redraw_every() {
        Some(every) => {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => printer.handle(&ev),
                        None => break,
                    },
                    _ = ticks.tick() => printer.tick(),
                }
            }
        }
        None => {
            while let Some(ev) = rx.recv().await {
                printer.handle(&ev);
            }
        }
    }
    printer.finish()
}

/// One way of drawing the [`State`]. A renderer appends what it draws to `out`; the [`Printer`]
/// writes it.
trait Render: Send {
    /// `rec` was just applied to `state`, with the effect `applied`.
    fn event(
        &mut self,
        rec: &EventRecord,
        applied: &Applied,
        state: &State,
        now: Instant,
        out: &mut String,
    );

    /// How often [`tick`](Render::tick) wants to run; `None` for a renderer that draws only on
    /// events.
    fn redraw_every(&self) -> Option<Duration> {
        None
    }

    fn tick(&mut self, state: &State, now: Instant, out: &mut String) {
        let _ = (state, now, out);
    }

    /// The build is over: the final state.
    fn finish(&mut self, state: &State, now: Instant, out: &mut String);
}

/// `--progress quiet` (and `-q`): nothing at all; errors are main's to print.
struct Quiet;

impl Render for Quiet {
    fn event(&mut self, _: &EventRecord, _: &Applied, _: &State, _: Instant, _: &mut String) {}

    fn finish(&mut self, _: &State, _: Instant, _: &mut String) {}
}

/// The display state and the mode's renderer; [`run`] drives it from a channel, tests call it
/// directly.
pub struct Printer {
    state: State,
    render: Box<dyn Render>,
    out: Box<dyn Write + Send>,
    /// Once a write failed (a closed pipe), nothing more is written.
    broken: bool,
    buf: String,
}

impl Printer {
    /// A printer for an already resolved mode (`Auto` is drawn as plain); see
    /// [`ProgressMode::resolve`].
    pub fn new(mode: ProgressMode, out: Box<dyn Write + Send>) -> Printer {
        Printer::with_clock(mode, out, Instant::now(), None)
    }

    /// `size` fixes the terminal's (columns, rows) for tests; `None` asks the terminal.
    fn with_clock(
        mode: ProgressMode,
        out: Box<dyn Write + Send>,
        start: Instant,
        size: Option<(usize, usize)>,
    ) -> Printer {
        let render: Box<dyn Render> = match mode {
            ProgressMode::Auto | ProgressMode::Plain => Box::new(plain::Plain::new()),
            ProgressMode::Tty => Box::new(tty::Tty::new(size)),
            ProgressMode::Json => Box::new(json::Json::new()),
            ProgressMode::Quiet => Box::new(Quiet),
        };
        Printer {
            state: State::new(start),
            render,
            out,
            broken: false,
            buf: String::new(),
        }
    }

    pub fn handle(&mut self, rec: &EventRecord) {
        self.handle_at(rec, Instant::now());
    }

    /// Redraws a live view; renderers without one ignore it.
    pub fn tick(&mut self) {
        self.tick_at(Instant::now());
    }

    /// Draws the final state (and the failed steps' last output) and returns the counts.
    pub fn finish(self) -> Summary {
        self.finish_at(Instant::now())
    }

    fn handle_at(&mut self, rec: &EventRecord, now: Instant) {
        let applied = self.state.apply(&rec.event, now);
        self.render
            .event(rec, &applied, &self.state, now, &mut self.buf);
        self.flush();
    }

    fn tick_at(&mut self, now: Instant) {
        self.render.tick(&self.state, now, &mut self.buf);
        self.flush();
    }

    fn finish_at(mut self, now: Instant) -> Summary {
        self.render.finish(&self.state, now, &mut self.buf);
        self.flush();
        self.state.summary(now)
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if !self.broken {
            let wrote = self
                .out
                .write_all(self.buf.as_bytes())
                .and_then(|()| self.out.flush());
            self.broken = wrote.is_err();
        }
        self.buf.clear();
    }
}

/// Shows a transfer's bytes at most once per `every` per blob, the first time once it has been
/// going that long: byte counts arrive per chunk, far more often than anyone reads them.
struct Throttle {
    every: Duration,
    /// When each (entry, blob) was last shown; as many as the build has blobs.
    shown: HashMap<(usize, Digest), Instant>,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            shown: HashMap::new(),
        }
    }

    /// Whether the bytes of `digest` in `entry`, whose transfer has been `going` so long, are due
    /// now (and if so, that they were shown).
    fn due(&mut self, entry: usize, digest: &Digest, going: Duration, now: Instant) -> bool {
        let key = (entry, digest.clone());
        let since = self
            .shown
            .get(&key)
            .map_or(going, |&t| now.saturating_duration_since(t));
        if since < self.every {
            return false;
        }
        self.shown.insert(key, now);
        true
    }
}

/// A blob's bytes so far, for an event that reports them: (digest, bytes, total).
fn transfer_bytes(ev: &BuildEvent) -> Option<(&Digest, u64, u64)> {
    match ev {
        BuildEvent::Pull {
            event:
                PullEvent::Progress {
                    digest,
                    bytes,
                    total,
                },
            ..
        }
        | BuildEvent::Push {
            event:
                PushEvent::Uploading {
                    digest,
                    bytes,
                    total,
                },
            ..
        } => Some((digest, *bytes, *total)),
        _ => None,
    }
}

/// The last output of each failed step, framed as BuildKit frames it.
fn failure_logs(state: &State, out: &mut String) {
    for e in state.entries.iter().filter(|e| e.status == Status::Failed) {
        if e.lines.is_empty() {
            continue;
        }
        out.push_str("------\n");
        out.push_str(&format!(" > {}:\n", e.name));
        for (at, line) in &e.lines {
            out.push_str(&format!("{:.3} {}\n", at.as_secs_f64(), line));
        }
        out.push_str("------\n");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::testing::*;
    use super::*;

    #[test]
    fn quiet_writes_nothing_and_still_counts() {
        let (mut p, cap, t0) = printer(ProgressMode::Quiet);
        p.event_at(cached(0, FROM), ms(t0, 0));
        p.event_at(started(1, MAKE), ms(t0, 0));
        p.event_at(out(1, "hello"), ms(t0, 1));
        p.event_at(done(1, MAKE, 5), ms(t0, 5));
        p.event_at(
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
        p.handle(&record(started(0, MAKE), SystemTime::now()));
        p.handle(&record(out(0, "x"), SystemTime::now()));
        p.handle(&record(done(0, MAKE, 1), SystemTime::now()));
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
