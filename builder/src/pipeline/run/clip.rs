//! The most output a run keeps of one job or one image build. A job that prints without end (a
//! `yes`, a test stuck in a loop that logs) would otherwise fill the disk the logs are on
//! (`forge run`'s history, `forge serve`'s build logs) and the memory of whoever shows them. Past
//! the limit the lines are left out, once said; the job or the build goes on, and its end and
//! result are reported as always. GitLab's runner cuts a job's log at 4 MiB by default, and
//! BuildKit a step's output at 2 MiB.

use std::sync::atomic::{AtomicU64, Ordering};

/// The limit `forge run` and `forge serve` take when not told otherwise.
pub const DEFAULT_LOG_LIMIT: u64 = 4 << 20;

/// One log's budget: the bytes of its lines (each with its newline) counted as they pass.
pub(super) struct Clip {
    limit: Option<u64>,
    used: AtomicU64,
}

/// What becomes of one line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Keep,
    /// The first line past the limit: this is said instead of it.
    Clipped(String),
    Drop,
}

impl Clip {
    /// A budget of `limit` bytes (`None`: every line is kept).
    pub(super) fn new(limit: Option<u64>) -> Clip {
        Clip {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// `line` of `what` ("job test", "image app") when it is kept, the note in its place when it
    /// is the first past the limit, `None` after that.
    pub(super) fn pass<S: AsRef<str> + Into<String>>(&self, line: S, what: &str) -> Option<String> {
        match self.admit(line.as_ref(), what) {
            Admit::Keep => Some(line.into()),
            Admit::Clipped(note) => Some(note),
            Admit::Drop => None,
        }
    }

    /// Whether `line` of `what` ("job test", "image app") is kept.
    fn admit(&self, line: &str, what: &str) -> Admit {
        let Some(limit) = self.limit else {
            return Admit::Keep;
        };
        let size = line.len() as u64 + 1;
        let before = self.used.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) <= limit {
            Admit::Keep
        } else if before <= limit {
            Admit::Clipped(format!(
                "forge: {what} printed more than {} (the log limit): the rest of its output is \
                 left out of the log, and it goes on running",
                shown_size(limit)
            ))
        } else {
            Admit::Drop
        }
    }
}

/// A byte count as the limit is given: `4 MiB`, `64 KiB`, `100 bytes`.
fn shown_size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pass_until_the_limit_then_one_note_then_nothing() {
        // Two 9-byte lines (10 with their newlines) fit in 25; the third does not.
        let clip = Clip::new(Some(25));
        assert_eq!(clip.admit("123456789", "job t"), Admit::Keep);
        assert_eq!(clip.admit("123456789", "job t"), Admit::Keep);
        match clip.admit("123456789", "job t") {
            Admit::Clipped(note) => {
                assert!(
                    note.starts_with("forge: job t printed more than 25 bytes"),
                    "{note}"
                );
                assert!(note.contains("goes on running"), "{note}");
            }
            other => panic!("expected the note, got {other:?}"),
        }
        // A line that would have fitted in what was left is still dropped: the log is cut once.
        assert_eq!(clip.admit("", "job t"), Admit::Drop);
        assert_eq!(clip.admit("123456789", "job t"), Admit::Drop);
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_kept() {
        let clip = Clip::new(Some(10));
        assert_eq!(clip.admit("123456789", "job t"), Admit::Keep);
        assert!(matches!(clip.admit("x", "job t"), Admit::Clipped(_)));
    }

    #[test]
    fn no_limit_keeps_everything() {
        let clip = Clip::new(None);
        let line = "x".repeat(1 << 20);
        for _ in 0..8 {
            assert_eq!(clip.admit(&line, "image a"), Admit::Keep);
        }
    }

    #[test]
    fn limits_are_shown_in_the_unit_they_were_likely_given_in() {
        assert_eq!(shown_size(4 << 20), "4 MiB");
        assert_eq!(shown_size(64 << 10), "64 KiB");
        assert_eq!(shown_size(1000), "1000 bytes");
        assert_eq!(shown_size((1 << 20) + 1), "1048577 bytes");
    }
}
