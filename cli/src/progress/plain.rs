//! `--progress plain`: BuildKit's plain log. Each entry of the state is a numbered block (`#3 RUN
//! make`) that opens with a blank line and the entry's name whenever the log turns to it, its lines
//! prefixed with the number, so interleaved steps stay readable in a CI log.

use std::time::{Duration, Instant};

use forge_builder::events::{BuildEvent, EventRecord};
use forge_snapshotter::registry::{PullEvent, PushEvent};

use super::state::{Applied, Entry, State, Status};
use super::{Render, Throttle, failure_logs, human, secs, transfer_bytes};

/// A transfer's bytes are shown at most this often per blob; logs stay readable.
const TRANSFER_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Plain {
    /// Whose block the last line belonged to; `None` after a warning.
    current: Option<usize>,
    printed_any: bool,
    throttle: Throttle,
}

impl Plain {
    pub(super) fn new() -> Plain {
        Plain {
            current: None,
            printed_any: false,
            throttle: Throttle::new(TRANSFER_EVERY),
        }
    }

    /// Starts entry `i`'s block unless the last line was already its own; a block opens with a
    /// blank line and the entry's header, as BuildKit's plain output does.
    fn enter(&mut self, state: &State, i: usize, out: &mut String) {
        if self.current == Some(i) {
            return;
        }
        if self.printed_any {
            out.push('\n');
        }
        let e = &state.entries[i];
        out.push_str(&format!("#{} {}\n", e.number, e.name));
        self.current = Some(i);
        self.printed_any = true;
    }

    fn line(&mut self, state: &State, i: usize, text: &str, out: &mut String) {
        self.enter(state, i, out);
        let number = state.entries[i].number;
        for line in text.split('\n') {
            out.push_str(&format!("#{number} {line}\n"));
        }
    }

    fn warning(&mut self, message: &str, out: &mut String) {
        if self.printed_any {
            out.push('\n');
        }
        for line in message.lines() {
            out.push_str("WARNING: ");
            out.push_str(line);
            out.push('\n');
        }
        self.current = None;
        self.printed_any = true;
    }

    /// What the log says about `ev` within entry `i`'s block, besides the lines that open and
    /// close the block.
    fn note(
        &mut self,
        ev: &BuildEvent,
        i: usize,
        e: &Entry,
        applied: &Applied,
        now: Instant,
    ) -> Option<String> {
        let took = applied.transfer.unwrap_or_default();
        let last_line = || e.lines.back().map(|(_, line)| line.clone());
        match ev {
            BuildEvent::Output { .. } => e
                .lines
                .back()
                .map(|(at, line)| format!("{:.3} {line}", at.as_secs_f64())),
            BuildEvent::Pull { event, .. } => match event {
                PullEvent::Resolved {
                    manifest,
                    platform,
                    layers,
                    ..
                } => {
                    let s = if *layers == 1 { "" } else { "s" };
                    Some(format!(
                        "resolved {manifest} ({platform}, {layers} layer{s})"
                    ))
                }
                PullEvent::Stored {
                    reference,
                    manifest,
                    ..
                } => Some(format!(
                    "using {reference} {manifest} from forge's store, as it is (--pull resolves it at the registry)"
                )),
                PullEvent::Started { .. } | PullEvent::Failed { .. } => None,
                PullEvent::Progress { .. } => self.bytes(ev, i, took, now),
                PullEvent::Done { digest, bytes } => {
                    Some(format!("{digest} {} {} done", human(*bytes), secs(took)))
                }
                PullEvent::Cached { digest, total, .. } => {
                    Some(format!("{digest} {} cached", human(*total)))
                }
                PullEvent::Retrying { .. } => last_line(),
            },
            BuildEvent::Push { event, .. } => match event {
                PushEvent::Exists { digest, total, .. } => {
                    Some(format!("{digest} {} exists", human(*total)))
                }
                PushEvent::Mounted { from, digest, .. } => {
                    Some(format!("{digest} mounted from {from}"))
                }
                PushEvent::Uploading { .. } => self.bytes(ev, i, took, now),
                PushEvent::Uploaded { digest, bytes, .. } => {
                    Some(format!("{digest} {} {} done", human(*bytes), secs(took)))
                }
                PushEvent::Streamed {
                    digest,
                    bytes,
                    duration,
                    ..
                } => Some(format!(
                    "{digest} {} {} sent while its step wrote it",
                    human(*bytes),
                    secs(*duration)
                )),
                PushEvent::ManifestPushed { tag, digest } => {
                    Some(format!("pushed manifest {digest} as {tag}"))
                }
                PushEvent::Retrying { .. } => last_line(),
            },
            // Steps and phases say no more than their opening and closing lines.
            BuildEvent::Solver(_)
            | BuildEvent::PhaseStarted { .. }
            | BuildEvent::PhaseDone { .. }
            | BuildEvent::PhaseFailed { .. }
            | BuildEvent::Warning { .. } => None,
        }
    }

    /// A blob's bytes, once it has been going for a while and then at most every few seconds;
    /// never for a blob that is complete (its `done` line follows).
    fn bytes(
        &mut self,
        ev: &BuildEvent,
        i: usize,
        going: Duration,
        now: Instant,
    ) -> Option<String> {
        let (digest, bytes, total) = transfer_bytes(ev)?;
        (bytes < total && self.throttle.due(i, digest, going, now)).then(|| {
            format!(
                "{digest} {} / {} {}",
                human(bytes),
                human(total),
                secs(going)
            )
        })
    }
}

/// The line that closes an entry.
fn status_line(e: &Entry) -> String {
    let took = secs(e.duration.unwrap_or_default());
    match e.status {
        Status::Cached => "CACHED".into(),
        Status::Done | Status::Running => format!("DONE {took}"),
        Status::Failed => format!("ERROR: {}", e.error.as_deref().unwrap_or_default()),
        Status::Canceled => "CANCELED".into(),
        Status::Skipped => format!("SKIPPED: {}", e.error.as_deref().unwrap_or_default()),
    }
}

impl Render for Plain {
    fn event(
        &mut self,
        rec: &EventRecord,
        applied: &Applied,
        state: &State,
        now: Instant,
        out: &mut String,
    ) {
        let Some(i) = applied.entry else {
            if let BuildEvent::Warning { message } = &rec.event {
                self.warning(message, out);
            }
            return;
        };
        if applied.began {
            self.enter(state, i, out);
        }
        let e = &state.entries[i];
        if let Some(text) = self.note(&rec.event, i, e, applied, now) {
            self.line(state, i, &text, out);
        }
        if applied.ended {
            self.line(state, i, &status_line(e), out);
        }
    }

    fn finish(&mut self, state: &State, _: Instant, out: &mut String) {
        if self.printed_any {
            out.push('\n');
        }
        failure_logs(state, out);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use forge_builder::events::BuildEvent;
    use forge_snapshotter::registry::{BlobKind, PullEvent, PushEvent};

    use super::super::testing::*;
    use super::super::{ProgressMode, Summary};

    #[test]
    fn plain_shows_cached_output_done_and_phases_in_numbered_blocks() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.event_at(cached(0, FROM), ms(t0, 0));
        p.event_at(started(1, MAKE), ms(t0, 10));
        p.event_at(out(1, "compiling"), ms(t0, 522));
        p.event_at(done(1, MAKE, 1200), ms(t0, 1210));
        p.event_at(
            BuildEvent::PhaseStarted {
                name: "exporting layers".into(),
            },
            ms(t0, 1300),
        );
        p.event_at(
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
        p.event_at(started(3, "[a 1/1] RUN a"), ms(t0, 0));
        p.event_at(started(5, "[b 1/1] RUN b"), ms(t0, 50));
        p.event_at(out(3, "a-one"), ms(t0, 100));
        p.event_at(out(5, "b-one"), ms(t0, 100));
        p.event_at(out(5, "b-two"), ms(t0, 150));
        p.event_at(out(3, "a-two"), ms(t0, 200));
        p.event_at(done(5, "[b 1/1] RUN b", 200), ms(t0, 250));
        p.event_at(done(3, "[a 1/1] RUN a", 300), ms(t0, 300));
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
        p.event_at(started(0, "[x 1/2] RUN sleep 9"), ms(t0, 0));
        p.event_at(started(1, "[y 1/1] RUN false"), ms(t0, 0));
        p.event_at(out(1, "checking"), ms(t0, 100));
        p.event_at(out(1, "oops"), ms(t0, 200));
        p.event_at(
            failed(1, "[y 1/1] RUN false", 250, "exit status 1\nstderr: oops"),
            ms(t0, 250),
        );
        p.event_at(cancelled(0, "[x 1/2] RUN sleep 9"), ms(t0, 300));
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
        p.event_at(
            pull(PullEvent::Resolved {
                reference: "127.0.0.1:5000/busybox:latest".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 1,
            }),
            ms(t0, 100),
        );
        p.event_at(
            pull(PullEvent::Cached {
                digest: config.clone(),
                kind: BlobKind::Config,
                total: 1500,
            }),
            ms(t0, 110),
        );
        p.event_at(
            pull(PullEvent::Started {
                digest: layer.clone(),
                kind: BlobKind::Layer,
                total: 40_000_000,
            }),
            ms(t0, 200),
        );
        // Many chunks; only the one five seconds in gets a line.
        for (at, bytes) in [(300, 1_000_000), (5_200, 20_000_000), (6_000, 30_000_000)] {
            p.event_at(
                pull(PullEvent::Progress {
                    digest: layer.clone(),
                    bytes,
                    total: 40_000_000,
                }),
                ms(t0, at),
            );
        }
        p.event_at(
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
        p.event_at(
            push(PushEvent::Exists {
                repository: "app".into(),
                digest: base.clone(),
                kind: BlobKind::Layer,
                total: 2_000_000,
            }),
            ms(t0, 0),
        );
        p.event_at(
            push(PushEvent::Uploading {
                digest: top.clone(),
                bytes: 0,
                total: 512,
            }),
            ms(t0, 100),
        );
        p.event_at(
            push(PushEvent::Uploaded {
                repository: "app".into(),
                digest: top.clone(),
                bytes: 512,
            }),
            ms(t0, 400),
        );
        p.event_at(
            push(PushEvent::Retrying {
                what: "manifest".into(),
                attempt: 1,
                took: Duration::from_millis(120),
                delay: Duration::from_millis(500),
                error: "503 service unavailable".into(),
            }),
            ms(t0, 500),
        );
        p.event_at(
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
                 #1 retrying manifest in 0.5s: try 1 failed after 0.1s: 503 service unavailable\n\
                 #1 pushed manifest {f} as 127.0.0.1:5000/app:1\n\
                 #1 DONE 1.5s\n\
                 \n"
            )
        );
    }

    #[test]
    fn plain_warning_stands_alone_and_is_counted() {
        let (mut p, cap, t0) = printer(ProgressMode::Plain);
        p.event_at(started(0, MAKE), ms(t0, 0));
        p.event_at(
            BuildEvent::Warning {
                message: "--platform is the host's".into(),
            },
            ms(t0, 1),
        );
        p.event_at(done(0, MAKE, 20), ms(t0, 20));
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
}
