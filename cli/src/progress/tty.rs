//! `--progress tty`: Docker's live view. Finished entries are printed once, above a live area
//! that is redrawn in place about ten times a second from the state: a `[+] Building` header and
//! each running entry with its elapsed time and what it is doing.

use std::time::{Duration, Instant};

use forge_builder::events::{BuildEvent, EventRecord};

use super::state::{Applied, Entry, State, Status};
use super::{Render, failure_logs, human, secs};

const REDRAW_EVERY: Duration = Duration::from_millis(100);

pub(super) struct Tty {
    /// Fixed (columns, rows) for tests; `None` asks the terminal each redraw.
    size: Option<(usize, usize)>,
    /// Lines to print once above the live area at the next redraw.
    pending: Vec<String>,
    /// How many lines the live area took at the last redraw.
    live_height: usize,
}

impl Tty {
    pub(super) fn new(size: Option<(usize, usize)>) -> Tty {
        Tty {
            size,
            pending: Vec::new(),
            live_height: 0,
        }
    }

    fn width(&self) -> usize {
        self.size.map_or_else(|| terminal_size().0, |s| s.0)
    }

    /// Clears the live area, prints what finished since, and draws the live area again (or, at
    /// the end, the final header in its place).
    fn redraw(&mut self, state: &State, now: Instant, last: bool, out: &mut String) {
        let (width, rows) = self.size.unwrap_or_else(terminal_size);
        if self.live_height > 0 {
            out.push_str(&format!("\x1b[{}A", self.live_height));
        }
        out.push_str("\r\x1b[J");
        for line in std::mem::take(&mut self.pending) {
            out.push_str(&line);
            out.push('\n');
        }
        let total = state.vertices().count();
        let finished = state
            .vertices()
            .filter(|e| e.status != Status::Running)
            .count();
        let elapsed = now.saturating_duration_since(state.start).as_secs_f64();
        let mut header = format!("[+] Building {elapsed:.1}s ({finished}/{total})");
        let running = state.entries.iter().filter(|e| e.status == Status::Running);
        if last {
            // Whatever still runs at the end was cut off; it stays listed as it was.
            for line in running.flat_map(|e| live_lines(e, now, width)) {
                out.push_str(&line);
                out.push('\n');
            }
            let failed = state.entries.iter().any(|e| e.status == Status::Failed);
            header.push_str(if failed { " FAILED" } else { " FINISHED" });
            out.push_str(&fit(&header, "", width));
            out.push('\n');
            self.live_height = 0;
            return;
        }
        let mut lines = vec![fit(&header, "", width)];
        for e in running {
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
            out.push_str(line);
            out.push('\n');
        }
        self.live_height = lines.len();
    }
}

impl Render for Tty {
    fn event(
        &mut self,
        rec: &EventRecord,
        applied: &Applied,
        state: &State,
        _: Instant,
        _: &mut String,
    ) {
        if let (Some(i), true) = (applied.entry, applied.ended) {
            let width = self.width();
            let e = &state.entries[i];
            self.pending.push(finished_line(e, width));
            if let Some(detail) = &e.detail {
                self.pending
                    .push(fit(&format!(" => => {detail}"), "", width));
            }
        }
        if let BuildEvent::Warning { message } = &rec.event {
            for line in message.lines() {
                self.pending.push(format!("WARNING: {line}"));
            }
        }
    }

    fn redraw_every(&self) -> Option<Duration> {
        Some(REDRAW_EVERY)
    }

    fn tick(&mut self, state: &State, now: Instant, out: &mut String) {
        self.redraw(state, now, false, out);
    }

    fn finish(&mut self, state: &State, now: Instant, out: &mut String) {
        self.redraw(state, now, true, out);
        failure_logs(state, out);
    }
}

/// A finished entry's line above the live area, BuildKit-like: status word first for what did
/// not simply run, the duration at the right edge.
fn finished_line(e: &Entry, width: usize) -> String {
    let time = e.duration.map(secs).unwrap_or_default();
    match e.status {
        Status::Cached => fit(&format!(" => CACHED {}", e.name), "", width),
        Status::Failed => fit(&format!(" => ERROR {}", e.name), &time, width),
        Status::Canceled => fit(&format!(" => CANCELED {}", e.name), &time, width),
        Status::Skipped => fit(&format!(" => SKIPPED {}", e.name), "", width),
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

#[cfg(test)]
mod tests {
    use forge_snapshotter::registry::PullEvent;

    use super::super::ProgressMode;
    use super::super::testing::*;

    /// A line of the 60-column test screen with `right` at its last usable column.
    fn row(left: &str, right: &str) -> String {
        format!("{left:<0$}{right}", 59 - right.len())
    }

    #[test]
    fn tty_shows_running_steps_live_and_ends_with_the_final_state() {
        let (mut p, cap, t0) = printer(ProgressMode::Tty);
        p.event_at(cached(0, FROM), ms(t0, 0));
        p.event_at(started(1, MAKE), ms(t0, 0));
        p.event_at(out(1, "compiling foo.c"), ms(t0, 300));
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

        p.event_at(done(1, MAKE, 1200), ms(t0, 1200));
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
        p.event_at(started(0, MAKE), ms(t0, 0));
        p.event_at(out(0, &"x".repeat(200)), ms(t0, 10));
        p.event_at(
            pull(PullEvent::Resolved {
                reference: "127.0.0.1:5000/busybox:latest".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 1,
            }),
            ms(t0, 0),
        );
        p.event_at(
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
        p.event_at(started(0, "[t 1/1] RUN false"), ms(t0, 0));
        p.event_at(out(0, "\x1b[31mred\x1b[0m"), ms(t0, 100));
        p.tick_at(ms(t0, 150));
        p.event_at(
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
}
