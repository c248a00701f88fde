//! The validated plan a forge.yaml checks into: what `forge run` builds and runs, every name
//! resolved, matrices expanded and variables substituted. Nothing here refers back to the YAML.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use forge_snapshotter::reference::Reference;

use super::file::{ArtifactsWhen, CachePolicy, Network, Retry, When};

/// A validated pipeline: what `forge run` will build and run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Built-ins and global variables, expanded.
    pub variables: BTreeMap<String, String>,
    pub stages: Vec<String>,
    pub images: Vec<ImagePlan>,
    /// Jobs after matrix expansion, in stage order, then file order.
    pub jobs: Vec<JobPlan>,
    /// What the file says that forge reads and does not act on (GitLab's `tags:`), where.
    pub warnings: Vec<(super::error::Pos, String)>,
    /// Why this run makes no pipeline (GitLab's `workflow: rules:`); then there are no images
    /// or jobs to run.
    pub skipped: Option<String>,
}

impl Pipeline {
    /// [`Pipeline::warnings`] as lines to print, `file` naming the pipeline file.
    pub fn warning_lines(&self, file: &str) -> Vec<String> {
        self.warnings
            .iter()
            .map(|(at, w)| format!("warning: {file}:{}:{}: {w}", at.line, at.column))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub name: String,
    pub context: String,
    pub dockerfile: String,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub push: bool,
    pub no_cache: bool,
    /// Jobs (expanded names) that must pass before the push.
    pub push_needs: Vec<String>,
    /// Jobs whose artifacts are laid into the context.
    pub artifacts_from: Vec<String>,
    /// `cache.from` and `cache.to`.
    pub cache_from: Vec<crate::cache_io::CacheImport>,
    pub cache_to: Vec<crate::cache_io::CacheExport>,
}

/// What a job or service runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUse {
    /// An image of `images:`, as built.
    Named(String),
    /// One stage of a named image's Dockerfile (`NAME@STAGE`).
    Stage { image: String, stage: String },
    /// An image from a registry.
    Registry(Reference),
}

/// Something a job waits for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Job(String),
    /// A named image: built, and pushed if it is pushed.
    Image(String),
}

#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// The first name the job reaches it by; its hostname and how its lines are marked.
    pub name: String,
    /// The other names the job reaches it by.
    pub aliases: Vec<String>,
    pub image: ImageUse,
    /// In place of the image's ENTRYPOINT (and CMD, unless `command` is given).
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub variables: BTreeMap<String, String>,
    /// Names of the job's secrets the service gets (never their values).
    pub secrets: Vec<String>,
    pub ready: Option<Ready>,
}

#[derive(Debug, Clone)]
pub struct Ready {
    pub command: String,
    pub timeout: Duration,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Artifacts {
    pub paths: Vec<String>,
    /// Entries of `paths` left out (each glob matching an entry itself).
    pub exclude: Vec<String>,
    pub when: ArtifactsWhen,
    pub junit: Vec<String>,
    /// GitLab's `reports: dotenv:` files, also among `paths`.
    pub dotenv: Vec<String>,
    /// How long `forge serve` keeps them after the build; `None`: as long as the build's log.
    pub expire_in: Option<std::time::Duration>,
}

/// One of GitLab's caches of a job: its paths restored before the script and saved after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePlan {
    pub key: CacheKey,
    /// Tried in order when `key` has no cache yet; variables expanded.
    pub fallback_keys: Vec<String>,
    /// Relative to the job's working directory (globs allowed), variables expanded.
    pub paths: Vec<String>,
    pub policy: CachePolicy,
    /// When it is saved, by the job's result.
    pub when: ArtifactsWhen,
}

/// The name a cache is kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKey {
    /// Written (variables expanded); `default` when not.
    Name(String),
    /// Made when the job runs from these files' contents (relative to the pipeline file's
    /// directory), after `prefix-`: GitLab's `key: files:`.
    Files {
        files: Vec<String>,
        prefix: Option<String>,
    },
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheKey::Name(n) => f.write_str(n),
            CacheKey::Files { files, prefix } => {
                if let Some(p) = prefix {
                    write!(f, "{p}-")?;
                }
                write!(f, "<digest of {}>", files.join(", "))
            }
        }
    }
}

/// What `rules:` decided for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// No `rules:`: the job's own `when` applies.
    NoRules,
    /// Rule `index` (0-based) matched first.
    Matched { index: usize },
    /// Rules are given and none matched: the job does not run.
    NoneMatched,
    /// GitLab's `only:` does not match this run: the job does not run.
    OnlyMissed,
    /// GitLab's `except:` matches this run: the job does not run.
    ExceptMatched,
}

#[derive(Debug, Clone)]
pub struct JobPlan {
    /// `unit`, or `unit: [1, p]` for a matrix instance.
    pub name: String,
    /// The name as written, before matrix expansion.
    pub base: String,
    pub stage: String,
    pub image: ImageUse,
    /// Run with the script's shell as its arguments (GitLab's `image: entrypoint:`); empty: the
    /// shell alone.
    pub entrypoint: Vec<String>,
    /// `before_script`'s lines, then `script`'s: one shell.
    pub script: Vec<String>,
    /// Run after `script` in a shell of its own, whatever the script's result.
    pub after_script: Vec<String>,
    /// The job's own and matrix variables (globals are in [`Pipeline::variables`]).
    pub variables: BTreeMap<String, String>,
    /// `None`: every job of the earlier stages (GitLab's default).
    pub needs: Option<Vec<Need>>,
    pub services: Vec<ServicePlan>,
    /// The jobs whose artifacts are laid on its filesystem, in this order; `None`: every earlier
    /// job's (GitLab's default without `needs:` or `dependencies:`).
    pub artifacts_from: Option<Vec<String>>,
    pub artifacts: Option<Artifacts>,
    pub secrets: Vec<String>,
    pub rule: RuleOutcome,
    /// The effective `when`: the matching rule's, else the job's; `never` when no rule matched.
    pub when: When,
    pub allow_failure: bool,
    /// GitLab's `allow_failure: {exit_codes: [...]}`: the script's exit codes that make a failure
    /// allowed (when `allow_failure` is false).
    pub allow_failure_codes: Vec<i32>,
    pub retry: Option<Retry>,
    pub timeout: Option<Duration>,
    pub network: Network,
    /// `false` (forge's `cache: false`): run even when a passed verdict is recorded.
    pub cache: bool,
    /// GitLab's caches of paths kept between runs.
    pub caches: Vec<CachePlan>,
    /// GitLab's `coverage:`, the pattern between its slashes.
    pub coverage: Option<String>,
    /// GitLab's `resource_group:`, expanded: one job of the group at a time.
    pub resource_group: Option<String>,
}

/// The names `image:` and `needs:` may refer to, for resolution and hints.
pub(super) struct Names<'a> {
    pub images: BTreeSet<&'a str>,
    /// Base job name -> expanded names.
    pub jobs: BTreeMap<String, Vec<String>>,
}

/// What the check needs from outside the file.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Values of the [`super::check::BUILTINS`] (and any other variable the caller defines first); a built-in
    /// missing here is defined as empty.
    pub builtins: BTreeMap<String, String>,
    /// Paths changed since `--changed-since`; `None` when unknown, and then a `changes:` rule
    /// matches (GitLab's behaviour when it cannot tell).
    pub changed: Option<Vec<String>>,
    /// The repository's files (relative to its top), for `rules: exists:`; `None` when
    /// unknown, and then an `exists:` rule matches, as a `changes:` one does.
    pub files: Option<Vec<String>>,
}
