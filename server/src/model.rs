//! What the server records about builds: the shapes kept in its database, served as JSON and
//! rendered on its pages.

use serde::{Deserialize, Serialize};

/// Where a build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Passed,
    Failed,
    Cancelled,
    /// The server stopped (a crash, kill -9) while the build ran.
    Interrupted,
}

impl Status {
    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
}

/// What started a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Push,
    Tag,
    Keyword,
    Api,
    Manual,
    Registry,
    /// Queued again after the server restarted in the middle of it.
    Restart,
}

impl Trigger {
    /// The word the API and the pages show.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Push => "push",
            Trigger::Tag => "tag",
            Trigger::Keyword => "keyword",
            Trigger::Api => "api",
            Trigger::Manual => "manual",
            Trigger::Registry => "registry",
            Trigger::Restart => "restart",
        }
    }
}

/// A commit id as people read it: its first 7 characters (all of a shorter one).
pub fn short_commit(commit: &str) -> &str {
    commit
        .char_indices()
        .nth(7)
        .map_or(commit, |(i, _)| &commit[..i])
}

/// One job of a build, as the pipeline reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    /// passed, failed, cached, skipped, cancelled
    pub result: String,
    pub duration_ms: u64,
    /// What the job's `coverage:` found in its log, in percent (`87.5`); builds recorded before
    /// this field read as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
    /// Skipped as `when: manual` and not asked for: the build page offers to run it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// One build of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub project: String,
    /// 1, 2, 3... per project, in the order builds were queued.
    pub number: u64,
    pub trigger: Trigger,
    /// The branch built (none for a tag build).
    pub branch: Option<String>,
    /// The tag built, for a release.
    pub tag: Option<String>,
    /// The commit built (full hex), once known.
    pub commit: Option<String>,
    /// The first line of the commit's message, when the trigger told it.
    pub message: Option<String>,
    pub status: Status,
    /// Unix seconds.
    pub queued_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    pub jobs: Vec<JobRecord>,
    /// `reference@sha256:...` of every image pushed.
    pub pushed: Vec<String>,
    /// Why it failed, when it failed outside a job (a clone, a bad forge.yaml).
    pub error: Option<String>,
    /// The jobs it was asked to run (with what they need), as `forge run JOB...`: a manual
    /// job's "Run" button; empty for the whole pipeline. Builds recorded before read as whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
}

impl Build {
    pub fn jobs_with(&self, result: &str) -> usize {
        self.jobs.iter().filter(|j| j.result == result).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_commit_is_its_first_seven_characters() {
        assert_eq!(short_commit("0123456789abcdef"), "0123456");
        assert_eq!(short_commit("0123456789"), "0123456");
        assert_eq!(short_commit("abc"), "abc");
    }
}
