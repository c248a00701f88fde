//! Travis-style rules: what a finished build means, and whether it is worth a notification.

use serde::Deserialize;

use crate::model::Status;

/// When to notify for one side (success or failure) of a build's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    /// Every build on this side.
    Always,
    /// Only a build that changed the project's result (fixed for success, broken for failure).
    Change,
    /// No build on this side.
    Never,
}

/// What a finished build means relative to the previous finished (passed/failed) build of the
/// same project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, and the previous finished build passed too (or there was none).
    Passed,
    /// Passed after a failed one.
    Fixed,
    /// Failed, and there was no previous finished build.
    Failed,
    /// Failed after a passed one.
    Broken,
    /// Failed after a failed one.
    StillFailing,
}

impl Outcome {
    /// Machine-friendly name, as in the JSON payload: passed, fixed, failed, broken, still_failing.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Fixed => "fixed",
            Outcome::Failed => "failed",
            Outcome::Broken => "broken",
            Outcome::StillFailing => "still_failing",
        }
    }

    /// Human word, as in subjects and text: passed, fixed, failed, broken, still failing.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::StillFailing => "still failing",
            other => other.as_str(),
        }
    }

    /// Whether the build passed (Passed or Fixed).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Fixed)
    }
}

/// Classifies a finished build against the previous finished build of the same project.
///
/// `current` other than passed/failed (queued, running, cancelled, interrupted) gives `None`:
/// such a build is never notified. `previous` is the status of the latest earlier build that
/// passed or failed; `None` (a project's first such build) counts as "no change": a first passing
/// build is [`Outcome::Passed`] and a first failing one is [`Outcome::Failed`] (not Broken). A
/// `previous` that is neither passed nor failed is treated like `None`, so a caller that hands in
/// the plain previous build does not turn a cancel into a change.
pub fn outcome(previous: Option<Status>, current: Status) -> Option<Outcome> {
    let previous = previous.filter(|p| matches!(p, Status::Passed | Status::Failed));
    match (current, previous) {
        (Status::Passed, Some(Status::Failed)) => Some(Outcome::Fixed),
        (Status::Passed, _) => Some(Outcome::Passed),
        (Status::Failed, Some(Status::Passed)) => Some(Outcome::Broken),
        (Status::Failed, Some(Status::Failed)) => Some(Outcome::StillFailing),
        (Status::Failed, _) => Some(Outcome::Failed),
        _ => None,
    }
}

/// Travis semantics: `on_success` rules passing builds (always, never, change: only Fixed),
/// `on_failure` failing ones (always, never, change: only Broken).
///
/// With `change`, a project's first build never notifies (it is Passed or Failed, not a change).
/// Travis's defaults are [`DEFAULT_ON_SUCCESS`] and [`DEFAULT_ON_FAILURE`].
pub fn should_notify(outcome: Outcome, on_success: When, on_failure: When) -> bool {
    let (when, changed) = match outcome {
        Outcome::Passed => (on_success, false),
        Outcome::Fixed => (on_success, true),
        Outcome::Broken => (on_failure, true),
        Outcome::Failed | Outcome::StillFailing => (on_failure, false),
    };
    match when {
        When::Always => true,
        When::Never => false,
        When::Change => changed,
    }
}

/// Travis's default for `on_success`: notify only when a build fixes the project.
pub const DEFAULT_ON_SUCCESS: When = When::Change;
/// Travis's default for `on_failure`: notify on every failing build.
pub const DEFAULT_ON_FAILURE: When = When::Always;

/// A notification target's `on_success`/`on_failure` pair, deserializable with Travis's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Rules {
    /// For passing builds; `change` when absent.
    #[serde(default = "default_on_success")]
    pub on_success: When,
    /// For failing builds; `always` when absent.
    #[serde(default = "default_on_failure")]
    pub on_failure: When,
}

fn default_on_success() -> When {
    DEFAULT_ON_SUCCESS
}

fn default_on_failure() -> When {
    DEFAULT_ON_FAILURE
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            on_success: DEFAULT_ON_SUCCESS,
            on_failure: DEFAULT_ON_FAILURE,
        }
    }
}

impl Rules {
    /// [`should_notify`] with these rules.
    pub fn should_notify(&self, outcome: Outcome) -> bool {
        should_notify(outcome, self.on_success, self.on_failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use Status as S;

    #[test]
    fn outcome_table() {
        let cases: &[(Option<S>, S, Option<Outcome>)] = &[
            // first build
            (None, S::Passed, Some(Passed)),
            (None, S::Failed, Some(Failed)),
            // after a pass
            (Some(S::Passed), S::Passed, Some(Passed)),
            (Some(S::Passed), S::Failed, Some(Broken)),
            // after a failure
            (Some(S::Failed), S::Passed, Some(Fixed)),
            (Some(S::Failed), S::Failed, Some(StillFailing)),
            // a previous that is not passed/failed counts as none
            (Some(S::Cancelled), S::Failed, Some(Failed)),
            (Some(S::Interrupted), S::Passed, Some(Passed)),
            (Some(S::Running), S::Failed, Some(Failed)),
        ];
        for (previous, current, want) in cases {
            assert_eq!(
                outcome(*previous, *current),
                *want,
                "previous {previous:?}, current {current:?}"
            );
        }
    }

    #[test]
    fn unfinished_or_cancelled_builds_have_no_outcome() {
        for current in [S::Queued, S::Running, S::Cancelled, S::Interrupted] {
            for previous in [None, Some(S::Passed), Some(S::Failed), Some(S::Cancelled)] {
                assert_eq!(
                    outcome(previous, current),
                    None,
                    "{previous:?} -> {current:?}"
                );
            }
        }
    }

    #[test]
    fn should_notify_table() {
        use When::*;
        // (outcome, on_success, on_failure, expected)
        let cases: &[(Outcome, When, When, bool)] = &[
            (Passed, Always, Never, true),
            (Passed, Change, Always, false),
            (Passed, Never, Always, false),
            (Fixed, Always, Never, true),
            (Fixed, Change, Never, true),
            (Fixed, Never, Always, false),
            (Failed, Never, Always, true),
            (Failed, Always, Change, false),
            (Failed, Always, Never, false),
            (Broken, Never, Always, true),
            (Broken, Never, Change, true),
            (Broken, Always, Never, false),
            (StillFailing, Never, Always, true),
            (StillFailing, Always, Change, false),
            (StillFailing, Always, Never, false),
        ];
        for &(o, s, f, want) in cases {
            assert_eq!(
                should_notify(o, s, f),
                want,
                "{o:?} on_success={s:?} on_failure={f:?}"
            );
        }
    }

    #[test]
    fn travis_defaults() {
        let rules = Rules::default();
        assert_eq!(rules.on_success, When::Change);
        assert_eq!(rules.on_failure, When::Always);
        let notified: Vec<Outcome> = [Passed, Fixed, Failed, Broken, StillFailing]
            .into_iter()
            .filter(|o| rules.should_notify(*o))
            .collect();
        assert_eq!(notified, [Fixed, Failed, Broken, StillFailing]);
    }

    #[test]
    fn rules_deserialize_with_defaults() {
        let r: Rules = serde_json::from_str(r#"{"on_success":"always"}"#).unwrap();
        assert_eq!(
            r,
            Rules {
                on_success: When::Always,
                on_failure: When::Always
            }
        );
        let r: Rules = serde_json::from_str(r#"{"on_failure":"change"}"#).unwrap();
        assert_eq!(
            r,
            Rules {
                on_success: When::Change,
                on_failure: When::Change
            }
        );
        let r: Rules = serde_json::from_str("{}").unwrap();
        assert_eq!(r, Rules::default());
        assert!(serde_json::from_str::<Rules>(r#"{"on_success":"sometimes"}"#).is_err());
    }

    #[test]
    fn words() {
        assert_eq!(StillFailing.word(), "still failing");
        assert_eq!(StillFailing.as_str(), "still_failing");
        assert_eq!(Fixed.word(), "fixed");
        assert!(Fixed.is_success() && !Broken.is_success());
    }
}
