//! Build notifications for `forge serve`: Travis-style rules deciding whether a finished build is
//! worth telling, the message telling it, and two senders (a JSON webhook, plain-SMTP email).

pub mod message;
pub mod rules;
pub mod send;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use message::{Message, message};
pub use rules::{
    DEFAULT_ON_FAILURE, DEFAULT_ON_SUCCESS, Outcome, Rules, When, outcome, should_notify,
};
pub use send::{NotifyError, Smtp, send_email, send_webhook};

/// A failed build of "myproj" on main, for the tests.
#[cfg(test)]
pub(crate) fn sample_build() -> crate::model::Build {
    use crate::model::{Build, JobRecord, Status, Trigger};
    let job = |name: &str, result: &str| JobRecord {
        name: name.into(),
        result: result.into(),
        duration_ms: 1_000,
        coverage: None,
        manual: false,
    };
    Build {
        project: "myproj".into(),
        number: 12,
        trigger: Trigger::Push,
        branch: Some("main".into()),
        tag: None,
        commit: Some("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b".into()),
        message: Some("Fix the flaky cache test\n\nLong explanation\nmore".into()),
        status: Status::Failed,
        queued_at: 1_700_000_000,
        started_at: Some(1_700_000_001),
        finished_at: Some(1_700_000_084),
        duration_ms: Some(83_500),
        jobs: vec![
            job("build", "passed"),
            job("test", "failed"),
            job("lint", "cached"),
            job("e2e", "failed"),
        ],
        pushed: vec![],
        error: None,
        only: Vec::new(),
    }
}
