//! What a run is asked and what it tells: [`RunOptions`] in, [`PipelineEvent`]s while it runs,
//! a [`RunReport`] at the end (also what `forge run --metadata-file` writes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::pipeline::history::JobResult;
use crate::pipeline::junit::TestSummary;

/// What `forge run` asks of a run, besides the plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The directory the pipeline file is in: image contexts are relative to it.
    pub base_dir: PathBuf,
    /// What the pipeline may read from the host: its images' contexts and Dockerfiles must resolve
    /// (symlinks followed) inside it. `forge run`: the git work tree the file is in, else
    /// `base_dir`; `forge serve`: the checkout.
    pub boundary: PathBuf,
    /// `type=local` caches may be read and written only inside `boundary` (`forge serve`: the
    /// server's disk is not the pipeline's); else anywhere, as `forge build` takes them.
    pub local_caches_in_boundary: bool,
    /// Most jobs (and image builds) at once.
    pub jobs: usize,
    /// Artifacts are copied out below `DIR/JOB/`.
    pub artifacts_dir: PathBuf,
    /// Secret values by name; never hashed, printed or stored.
    pub secrets: HashMap<String, Vec<u8>>,
    /// Run every build step and job, reusing no recorded result.
    pub no_cache: bool,
    /// Run only these jobs (expanded or written names) and what they need; empty runs all.
    pub only: Vec<String>,
    /// `--allow network.host`: jobs with `network: host` may run.
    pub allow_network_host: bool,
    /// The most bytes of output kept of one job's try, one service or one image build's steps
    /// (`None`: all of it); past it the rest is left out, once said ([`DEFAULT_LOG_LIMIT`]).
    ///
    /// [`DEFAULT_LOG_LIMIT`]: super::DEFAULT_LOG_LIMIT
    pub log_limit: Option<u64>,
    /// What keeps this pipeline's GitLab caches (`cache: key:`) apart from other pipelines' of
    /// the same store: `forge run`, the file's absolute path; `forge serve`, the project.
    pub cache_scope: String,
}

/// Something that happened during a run, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PipelineEvent {
    ImageStarted {
        image: String,
    },
    /// A line of an image build (a step's output, a warning).
    ImageLine {
        image: String,
        line: String,
    },
    ImageBuilt {
        image: String,
        digest: String,
        steps_run: usize,
        steps_cached: usize,
    },
    ImageFailed {
        image: String,
        error: String,
    },
    /// Not built: a job it takes artifacts from failed or did not run.
    ImageSkipped {
        image: String,
        reason: String,
    },
    JobStarted {
        job: String,
    },
    /// A line the job printed (masked); `cached`: replayed from the recorded run.
    JobLine {
        job: String,
        line: String,
        cached: bool,
    },
    JobFinished {
        job: String,
        result: JobResult,
        exit_code: Option<i32>,
        #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
        duration: Duration,
        /// Why it has no exit status, or why its artifacts could not be kept.
        error: Option<String>,
        /// What its `coverage:` found in its log (`87.5`).
        #[serde(skip_serializing_if = "Option::is_none")]
        coverage: Option<String>,
    },
    JobSkipped {
        job: String,
        reason: String,
        /// Left out as `when: manual`: a server's page offers to run it.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        manual: bool,
    },
    Pushed {
        image: String,
        references: Vec<String>,
        digest: String,
    },
    /// The image was pushed, but every job gating it was left out of the run (by its rules, or
    /// `when:`): nothing tested it. `by_rules`: all of them by `rules:` or `when: never`.
    PushedUntested {
        image: String,
        skipped: Vec<String>,
        by_rules: bool,
    },
    /// The image's tags were not pushed: these jobs did not pass.
    Held {
        image: String,
        tags: Vec<String>,
        because: Vec<String>,
    },
    PushFailed {
        image: String,
        error: String,
    },
}

impl PipelineEvent {
    /// The event as one line of a run's output: `forge run`'s plain progress and `forge serve`'s
    /// build logs.
    pub fn line(&self) -> String {
        match self {
            PipelineEvent::ImageStarted { image } => format!("image {image}: building"),
            PipelineEvent::ImageLine { image, line } => format!("[{image}] {line}"),
            PipelineEvent::ImageBuilt {
                image,
                digest,
                steps_run,
                steps_cached,
            } => format!(
                "image {image}: built {digest} ({steps_run} steps run, {steps_cached} cached)"
            ),
            PipelineEvent::ImageFailed { image, error } => {
                format!("image {image}: build failed: {error}")
            }
            PipelineEvent::ImageSkipped { image, reason } => {
                format!("image {image}: not built: {reason}")
            }
            PipelineEvent::JobStarted { job } => format!("job {job}: started"),
            PipelineEvent::JobLine { job, line, cached } => {
                format!("[{job}] {}{line}", if *cached { "(cached) " } else { "" })
            }
            PipelineEvent::JobFinished {
                job,
                result,
                exit_code,
                duration,
                error,
                coverage,
            } => {
                let how = match (exit_code, error) {
                    (_, Some(e)) => format!(" ({e})"),
                    (Some(c), None) if *c != 0 => format!(" (exit status {c})"),
                    _ => String::new(),
                };
                let coverage = coverage
                    .as_ref()
                    .map_or(String::new(), |c| format!(", coverage {c}%"));
                format!(
                    "job {job}: {}{how} in {:.1}s{coverage}",
                    result.word(),
                    duration.as_secs_f64()
                )
            }
            PipelineEvent::JobSkipped { job, reason, .. } => {
                format!("job {job}: skipped: {reason}")
            }
            PipelineEvent::Pushed {
                image,
                references,
                digest,
            } => format!("image {image}: pushed {} ({digest})", references.join(", ")),
            PipelineEvent::PushedUntested {
                image,
                skipped,
                by_rules,
            } => format!(
                "image {image}: pushed untested: every job gating it was skipped by {}: {}",
                if *by_rules {
                    "rules"
                } else {
                    "rules or `when`"
                },
                skipped.join(", ")
            ),
            PipelineEvent::Held {
                image,
                tags,
                because,
            } => format!(
                "image {image}: not pushed ({}): {} did not pass",
                tags.join(", "),
                if because.is_empty() {
                    "its build".to_string()
                } else {
                    because.join(", ")
                }
            ),
            PipelineEvent::PushFailed { image, error } => {
                format!("image {image}: push failed: {error}")
            }
        }
    }
}

/// Where a run's events go.
pub type Sink = Arc<dyn Fn(PipelineEvent) + Send + Sync>;

/// A job's end, in the report.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub name: String,
    pub result: JobResult,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// Why it failed without an exit status, or why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its JUnit reports, summed, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub junit: Option<TestSummary>,
    /// Where its artifacts were copied, when it kept any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<PathBuf>,
    /// The coverage its `coverage:` found in its log, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// Skipped as `when: manual`, not asked for: `forge run JOB` (or serve's "Run") runs it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// An image's end, in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageReport {
    pub name: String,
    /// The manifest digest, when it was built.
    pub digest: Option<String>,
    /// The references pushed.
    pub pushed: Vec<String>,
    /// Tags not pushed because a gating job did not pass.
    pub held: Vec<String>,
    /// The jobs that held them.
    pub held_by: Vec<String>,
    /// Pushed though every job gating it was skipped (by rules or `when:`): those jobs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub untested: Vec<String>,
    pub error: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub passed: bool,
    pub cancelled: bool,
    pub images: Vec<ImageReport>,
    pub jobs: Vec<JobReport>,
    /// Every job's JUnit reports, summed.
    pub junit: Option<TestSummary>,
    #[serde(rename = "duration_ms", with = "forge_snapshotter::millis")]
    pub duration: Duration,
}

impl RunReport {
    /// Jobs that failed (not allowed to).
    pub fn failed_jobs(&self) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|j| j.result == JobResult::Failed)
            .map(|j| j.name.as_str())
            .collect()
    }
}
