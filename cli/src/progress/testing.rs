//! What the renderers' tests share: a captured writer, a printer on a fixed screen and clock, and
//! short constructors for the events they feed it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use forge_builder::events::{BuildEvent, BuildId, EventRecord, OutputStream};
use forge_builder::graph::NodeRef;
use forge_builder::solver::{CacheKey, Event};
use forge_snapshotter::registry::{PullEvent, PushEvent};
use forge_snapshotter::store::Digest;

use super::{Printer, ProgressMode};

/// `ev` as a build sends it: the tests' build id, stamped with `time`.
pub(super) fn record(ev: BuildEvent, time: SystemTime) -> EventRecord {
    EventRecord {
        build: BuildId::parse("0123456789abcdef").unwrap(),
        time,
        event: ev,
    }
}

impl Printer {
    /// Handles `ev` as if it arrived at `now`, its record stamped with the same moment (counted
    /// from 2023-11-14T22:13:20Z at the printer's start).
    pub(super) fn event_at(&mut self, ev: BuildEvent, now: Instant) {
        let since = now.saturating_duration_since(self.state.start);
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + since;
        self.handle_at(&record(ev, time), now);
    }
}

/// A writer the test keeps a handle on.
#[derive(Clone, Default)]
pub(super) struct Capture(Arc<Mutex<Vec<u8>>>);

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
    pub(super) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A printer on a fixed 60x20 screen whose clock starts at `t0`.
pub(super) fn printer(mode: ProgressMode) -> (Printer, Capture, Instant) {
    printer_sized(mode, (60, 20))
}

pub(super) fn printer_sized(
    mode: ProgressMode,
    size: (usize, usize),
) -> (Printer, Capture, Instant) {
    let cap = Capture::default();
    let t0 = Instant::now();
    let p = Printer::with_clock(mode, Box::new(cap.clone()), t0, Some(size));
    (p, cap, t0)
}

pub(super) fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

pub(super) fn node(n: usize) -> NodeRef {
    NodeRef(n)
}

pub(super) fn started(n: usize, d: &str) -> BuildEvent {
    BuildEvent::Solver(Event::Started {
        vertex: node(n),
        description: d.into(),
    })
}

pub(super) fn cached(n: usize, d: &str) -> BuildEvent {
    BuildEvent::Solver(Event::Cached {
        vertex: node(n),
        description: d.into(),
        key: CacheKey([7; 32]),
    })
}

pub(super) fn done(n: usize, d: &str, took_ms: u64) -> BuildEvent {
    BuildEvent::Solver(Event::Done {
        vertex: node(n),
        description: d.into(),
        duration: Duration::from_millis(took_ms),
    })
}

pub(super) fn failed(n: usize, d: &str, took_ms: u64, error: &str) -> BuildEvent {
    BuildEvent::Solver(Event::Failed {
        vertex: node(n),
        description: d.into(),
        duration: Duration::from_millis(took_ms),
        error: error.into(),
    })
}

pub(super) fn cancelled(n: usize, d: &str) -> BuildEvent {
    BuildEvent::Solver(Event::Cancelled {
        vertex: node(n),
        description: d.into(),
    })
}

pub(super) fn out(n: usize, line: &str) -> BuildEvent {
    BuildEvent::Output {
        vertex: node(n),
        stream: OutputStream::Stdout,
        line: line.into(),
    }
}

pub(super) fn digest(c: char) -> Digest {
    format!("sha256:{}", c.to_string().repeat(64))
        .parse()
        .unwrap()
}

pub(super) fn pull(ev: PullEvent) -> BuildEvent {
    BuildEvent::Pull {
        reference: "127.0.0.1:5000/busybox:latest".into(),
        event: ev,
    }
}

pub(super) fn push(ev: PushEvent) -> BuildEvent {
    BuildEvent::Push {
        reference: "127.0.0.1:5000/app:1".into(),
        event: ev,
    }
}

pub(super) const FROM: &str = "[base 1/3] FROM busybox";

pub(super) const MAKE: &str = "[base 2/3] RUN make";

/// The text after the last clearing of the live area: what the screen ends with.
pub(super) fn last_frame(text: &str) -> &str {
    text.rsplit("\x1b[J").next().unwrap()
}
