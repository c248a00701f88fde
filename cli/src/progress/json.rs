//! `--progress json`: every event as the builder serialises its [`EventRecord`], one object per
//! line (README.md describes the format), for machines. The one liberty taken: a blob's byte counts
//! (`pull.blob.progress`, `push.blob.progress`) are thinned to one line a second per blob.

use std::time::{Duration, Instant};

use forge_builder::events::EventRecord;

use super::state::{Applied, State};
use super::{Render, Throttle, transfer_bytes};

const TRANSFER_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Json {
    throttle: Throttle,
}

impl Json {
    pub(super) fn new() -> Json {
        Json {
            throttle: Throttle::new(TRANSFER_EVERY),
        }
    }
}

impl Render for Json {
    fn event(
        &mut self,
        rec: &EventRecord,
        applied: &Applied,
        _: &State,
        now: Instant,
        out: &mut String,
    ) {
        if let (Some((digest, ..)), Some(i)) = (transfer_bytes(&rec.event), applied.entry) {
            let going = applied.transfer.unwrap_or_default();
            if !self.throttle.due(i, digest, going, now) {
                return;
            }
        }
        // A record that cannot be serialised (a clock set before 1970) is left out rather than
        // written half.
        if let Ok(line) = serde_json::to_string(rec) {
            out.push_str(&line);
            out.push('\n');
        }
    }

    /// The records are the whole story; the counts are the reader's to make.
    fn finish(&mut self, _: &State, _: Instant, _: &mut String) {}
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use forge_builder::events::{BuildEvent, OutputStream};
    use forge_snapshotter::registry::{PullEvent, PushEvent};
    use serde_json::Value;

    use super::super::ProgressMode;
    use super::super::testing::*;

    #[test]
    fn json_prints_each_record_as_the_builder_serialises_it() {
        let uploading = |bytes| {
            push(PushEvent::Uploading {
                digest: digest('e'),
                bytes,
                total: 9000,
            })
        };
        let events = [
            (0, cached(0, FROM)),
            (100, started(2, MAKE)),
            (
                150,
                BuildEvent::Output {
                    vertex: node(2),
                    stream: OutputStream::Stderr,
                    line: "warning: x".into(),
                },
            ),
            (1300, done(2, MAKE, 1200)),
            (1400, failed(4, "[t 1/1] RUN false", 5, "exit status 1")),
            (
                1500,
                pull(PullEvent::Resolved {
                    reference: "r".into(),
                    manifest: digest('d'),
                    platform: "linux/amd64".into(),
                    layers: 2,
                }),
            ),
            (1600, uploading(1600)),
            (1700, uploading(1700)),
            (2700, uploading(2700)),
            (
                2800,
                BuildEvent::PhaseDone {
                    name: "writing image".into(),
                    duration: Duration::from_millis(42),
                },
            ),
            (
                2900,
                BuildEvent::Warning {
                    message: "careful".into(),
                },
            ),
        ];
        let (mut p, cap, t0) = printer(ProgressMode::Json);
        for (at, ev) in &events {
            p.event_at(ev.clone(), ms(t0, *at));
        }
        let summary = p.finish_at(ms(t0, 3000));
        assert_eq!(
            (summary.executed, summary.cached, summary.failed),
            (1, 1, 1)
        );

        // Of three upload chunks only the one a second after the first gets a line; nothing but
        // the records is written.
        let shown: Vec<_> = events
            .iter()
            .filter(|(at, _)| ![1600, 1700].contains(at))
            .collect();
        let text = cap.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), shown.len(), "{text}");
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (line, (at, ev)) in lines.iter().zip(shown) {
            let rec = record(ev.clone(), epoch + Duration::from_millis(*at));
            assert_eq!(*line, serde_json::to_string(&rec).unwrap());
        }
        let started: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(started["build"], "0123456789abcdef");
        assert_eq!(started["time"], "2023-11-14T22:13:20.1Z");
        assert_eq!(started["type"], "vertex.started");
        assert_eq!(started["vertex"], 2);
        assert_eq!(started["description"], MAKE);
        let bytes: Value = serde_json::from_str(lines[6]).unwrap();
        assert_eq!(bytes["type"], "push.blob.progress");
        assert_eq!(bytes["bytes"], 2700);
    }
}
