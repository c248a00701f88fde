//! What a build reports while it runs, for a front end (the CLI's tty, plain or json printer, a
//! server's live log) to draw. Every event is stamped with its build's id and the time it happened,
//! and arrives on one unbounded channel in the order it happened; several builds may share a channel.
//!
//! An [`EventRecord`] serialises (serde) as one flat object: `build` (the id), `time` (RFC 3339,
//! UTC, with the fraction of a second), `type` (`vertex.started`, `pull.blob.done`, `output`,
//! `phase.done`, `warning`, ...) and the event's own fields; durations are whole milliseconds in
//! `*_ms` fields. README.md lists every type; `forge build --progress json` prints exactly this.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use forge_snapshotter::registry::{PullEvent, PushEvent};

use crate::graph::NodeRef;
use crate::solver::Event;

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One thing that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BuildEvent {
    /// A line a running step printed (secrets already masked).
    #[serde(rename = "output")]
    Output {
        vertex: NodeRef,
        stream: OutputStream,
        line: String,
    },
    /// A named phase outside the graph (`resolving base images`, `exporting layers`,
    /// `writing image`, `pushing 127.0.0.1:5000/app:1`) began.
    #[serde(rename = "phase.started")]
    PhaseStarted { name: String },
    /// That phase ended.
    #[serde(rename = "phase.done")]
    PhaseDone {
        name: String,
        #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
        duration: Duration,
    },
    /// That phase failed; `error` is why (its first line), the build's error says the rest.
    #[serde(rename = "phase.failed")]
    PhaseFailed {
        name: String,
        #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
        duration: Duration,
        error: String,
    },
    /// Something the user should read but that does not stop the build.
    #[serde(rename = "warning")]
    Warning { message: String },
    // The variants below carry their own `type` (`vertex.*`, `pull.*`, `push.*`), so serde writes
    // them untagged; it wants untagged variants last.
    /// A vertex was found cached, started, finished, failed or was cancelled.
    #[serde(untagged)]
    Solver(Event),
    /// Progress of pulling the base image `reference` (`image` when serialised).
    #[serde(untagged)]
    Pull {
        #[serde(rename = "image")]
        reference: String,
        #[serde(flatten)]
        event: PullEvent,
    },
    /// Progress of pushing to `reference`, the tags joined by `, ` (`image` when serialised).
    #[serde(untagged)]
    Push {
        #[serde(rename = "image")]
        reference: String,
        #[serde(flatten)]
        event: PushEvent,
    },
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

impl Serialize for BuildId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BuildId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BuildId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid build id {s:?}")))
    }
}

/// One event as it leaves a build: which build, when, and what. Serialised flat: `build`, `time`,
/// then the event's `type` and fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub build: BuildId,
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    #[serde(flatten)]
    pub event: BuildEvent,
}

/// `time` as RFC 3339 in UTC with the fraction of a second (Go's `RFC3339Nano`: trailing zeros
/// dropped), exact to the nanosecond both ways. Times before 1970 are refused.
mod rfc3339 {
    use std::time::{Duration, SystemTime};

    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::export::time::{parse_rfc3339, rfc3339_nanos};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| S::Error::custom("event time before 1970"))?;
        let secs = i64::try_from(since.as_secs()).map_err(S::Error::custom)?;
        let text = rfc3339_nanos(secs, since.subsec_nanos()).map_err(S::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_rfc3339(&text)
            .and_then(|(secs, nanos)| {
                let secs = u64::try_from(secs).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            })
            .ok_or_else(|| D::Error::custom(format!("invalid event time {text:?}")))
    }
}

/// A solver event's [`CacheKey`] as its `blake3:<hex>` text.
pub(crate) mod cache_key {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::solver::CacheKey;

    pub fn serialize<S: Serializer>(key: &CacheKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CacheKey, D::Error> {
        let text = String::deserialize(d)?;
        let mut key = [0u8; 32];
        text.strip_prefix("blake3:")
            .and_then(|h| hex::decode_to_slice(h, &mut key).ok())
            .ok_or_else(|| D::Error::custom(format!("invalid cache key {text:?}")))?;
        Ok(CacheKey(key))
    }
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

    /// Runs `f` as the named phase, reporting its start and its end: done, or failed with the
    /// error's first line.
    pub async fn phase_result<T, E: std::fmt::Display>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.emit(BuildEvent::PhaseStarted { name: name.into() });
        let start = Instant::now();
        let out = f.await;
        let duration = start.elapsed();
        self.emit(match &out {
            Ok(_) => BuildEvent::PhaseDone {
                name: name.into(),
                duration,
            },
            Err(e) => BuildEvent::PhaseFailed {
                name: name.into(),
                duration,
                error: e.to_string().lines().next().unwrap_or_default().to_string(),
            },
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

#[cfg(test)]
mod tests {
    use forge_snapshotter::registry::BlobKind;
    use forge_snapshotter::store::Digest;

    use super::*;
    use crate::solver::CacheKey;

    fn record(event: BuildEvent) -> EventRecord {
        EventRecord {
            build: BuildId::parse("0123456789abcdef").unwrap(),
            time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            event,
        }
    }

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn json(event: BuildEvent) -> String {
        serde_json::to_string(&record(event)).unwrap()
    }

    /// One of every event a build sends. Durations are whole milliseconds: that is what the
    /// serialised form keeps.
    fn every_event() -> Vec<BuildEvent> {
        let (vertex, description) = (NodeRef(3), "[app 2/4] RUN make".to_string());
        let ms = Duration::from_millis;
        let retry = |what: &str| (what.to_string(), 2, ms(60_000), ms(500), "503".to_string());
        let pull = |event| BuildEvent::Pull {
            reference: "busybox".into(),
            event,
        };
        let push = |event| BuildEvent::Push {
            reference: "127.0.0.1:5000/app:1, 127.0.0.1:5000/app:2".into(),
            event,
        };
        let (what, attempt, took, delay, error) = retry("blob");
        vec![
            BuildEvent::Solver(Event::Cached {
                vertex,
                description: description.clone(),
                key: CacheKey([7; 32]),
            }),
            BuildEvent::Solver(Event::Started {
                vertex,
                description: description.clone(),
            }),
            BuildEvent::Solver(Event::Done {
                vertex,
                description: description.clone(),
                duration: ms(1200),
            }),
            BuildEvent::Solver(Event::Failed {
                vertex,
                description: description.clone(),
                duration: ms(5),
                error: "exit status 1\nlast line".into(),
            }),
            BuildEvent::Solver(Event::Cancelled {
                vertex,
                description,
            }),
            BuildEvent::Output {
                vertex,
                stream: OutputStream::Stderr,
                line: "warning: \"x\" is ****".into(),
            },
            pull(PullEvent::Resolved {
                reference: "docker.io/library/busybox:latest".into(),
                manifest: digest('d'),
                platform: "linux/amd64".into(),
                layers: 2,
            }),
            pull(PullEvent::Started {
                digest: digest('a'),
                kind: BlobKind::Layer,
                total: 9000,
            }),
            pull(PullEvent::Progress {
                digest: digest('a'),
                bytes: 4500,
                total: 9000,
            }),
            pull(PullEvent::Done {
                digest: digest('a'),
                bytes: 9000,
            }),
            pull(PullEvent::Cached {
                digest: digest('c'),
                kind: BlobKind::Config,
                total: 1500,
            }),
            pull(PullEvent::Retrying {
                what: what.clone(),
                attempt,
                took,
                delay,
                error: error.clone(),
            }),
            push(PushEvent::Exists {
                repository: "127.0.0.1:5000/app".into(),
                digest: digest('b'),
                kind: BlobKind::Layer,
                total: 2_000_000,
            }),
            push(PushEvent::Mounted {
                repository: "127.0.0.1:5000/app".into(),
                from: "base".into(),
                digest: digest('b'),
                total: 2_000_000,
            }),
            push(PushEvent::Uploading {
                digest: digest('e'),
                bytes: 0,
                total: 512,
            }),
            push(PushEvent::Uploaded {
                repository: "127.0.0.1:5000/app".into(),
                digest: digest('e'),
                bytes: 512,
            }),
            push(PushEvent::Streamed {
                repository: "127.0.0.1:5000/app".into(),
                digest: digest('d'),
                bytes: 70_000_000,
                duration: ms(1800),
            }),
            push(PushEvent::ManifestPushed {
                tag: "127.0.0.1:5000/app:1".into(),
                digest: digest('f'),
            }),
            push(PushEvent::Retrying {
                what,
                attempt,
                took,
                delay,
                error,
            }),
            BuildEvent::PhaseStarted {
                name: "exporting layers".into(),
            },
            BuildEvent::PhaseDone {
                name: "exporting layers".into(),
                duration: ms(42),
            },
            BuildEvent::PhaseFailed {
                name: "resolving base images".into(),
                duration: ms(7),
                error: "base image busybox: no such host".into(),
            },
            BuildEvent::Warning {
                message: "--platform is the host's".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_json() {
        for event in every_event() {
            let rec = record(event);
            let text = serde_json::to_string(&rec).unwrap();
            let back: EventRecord =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, rec, "{text}");
        }
    }

    #[test]
    fn every_event_is_one_flat_object_with_build_time_and_a_distinct_type() {
        let mut types = std::collections::BTreeSet::new();
        for event in every_event() {
            let v = serde_json::to_value(record(event)).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj["build"], "0123456789abcdef");
            assert_eq!(obj["time"], "2023-11-14T22:13:20.123456789Z");
            assert!(obj.values().all(|f| !f.is_object() && !f.is_array()), "{v}");
            let t = obj["type"].as_str().unwrap().to_string();
            assert!(types.insert(t.clone()), "{t} twice");
        }
        assert_eq!(types.len(), every_event().len());
    }

    #[test]
    fn golden_shapes() {
        let head = r#"{"build":"0123456789abcdef","time":"2023-11-14T22:13:20.123456789Z""#;
        let [cached, started, done, failed, _, output, _, _, progress, ..] = &every_event()[..]
        else {
            unreachable!()
        };
        assert_eq!(
            json(cached.clone()),
            format!(
                r#"{head},"type":"vertex.cached","vertex":3,"description":"[app 2/4] RUN make","cache_key":"blake3:{}"}}"#,
                "07".repeat(32)
            )
        );
        assert_eq!(
            json(started.clone()),
            format!(
                r#"{head},"type":"vertex.started","vertex":3,"description":"[app 2/4] RUN make"}}"#
            )
        );
        assert_eq!(
            json(done.clone()),
            format!(
                r#"{head},"type":"vertex.done","vertex":3,"description":"[app 2/4] RUN make","duration_ms":1200}}"#
            )
        );
        assert_eq!(
            json(failed.clone()),
            format!(
                r#"{head},"type":"vertex.failed","vertex":3,"description":"[app 2/4] RUN make","duration_ms":5,"error":"exit status 1\nlast line"}}"#
            )
        );
        assert_eq!(
            json(output.clone()),
            format!(
                r#"{head},"type":"output","vertex":3,"stream":"stderr","line":"warning: \"x\" is ****"}}"#
            )
        );
        assert_eq!(
            json(progress.clone()),
            format!(
                r#"{head},"image":"busybox","type":"pull.blob.progress","digest":"{}","bytes":4500,"total":9000}}"#,
                digest('a')
            )
        );
        assert_eq!(
            json(BuildEvent::PhaseDone {
                name: "writing image".into(),
                duration: Duration::from_micros(42_999),
            }),
            format!(r#"{head},"type":"phase.done","name":"writing image","duration_ms":42}}"#)
        );
        assert_eq!(
            json(BuildEvent::Warning {
                message: "careful".into()
            }),
            format!(r#"{head},"type":"warning","message":"careful"}}"#)
        );
    }

    #[test]
    fn a_whole_second_has_no_fraction() {
        let mut rec = record(BuildEvent::PhaseStarted { name: "x".into() });
        rec.time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), rec);
    }

    #[test]
    fn malformed_records_are_refused() {
        let good =
            serde_json::to_value(record(BuildEvent::PhaseStarted { name: "x".into() })).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            serde_json::from_value::<EventRecord>(v)
        };
        assert!(with("type", "phase.started".into()).is_ok());
        assert!(with("type", "vertex.exploded".into()).is_err());
        assert!(with("build", "not-an-id".into()).is_err());
        assert!(with("time", "2023-11-14 22:13".into()).is_err());
        assert!(with("time", "1969-12-31T23:59:59Z".into()).is_err());
        let mut cached = serde_json::to_value(record(every_event().remove(0))).unwrap();
        cached["cache_key"] = "sha256:00".into();
        assert!(serde_json::from_value::<EventRecord>(cached).is_err());
    }
}
