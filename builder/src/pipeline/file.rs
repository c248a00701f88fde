//! The forge.yaml file as written: a serde model read with serde-saphyr, every name and value a
//! later check reports on kept with its location ([`Sp`]). Nothing here resolves names or expands
//! variables; [`super::check`] turns this into a validated [`super::Pipeline`].
//!
//! Keys follow GitLab CI where GitLab has one (`allow_failure`, `parallel: matrix:`), and the
//! issue's kebab-case for forge's own image keys (`build-args`, `no-cache`, `artifacts-from`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::error::Pos;

mod cache;
mod gitlab;
mod globs;
mod include;
pub use cache::{CacheKeySpec, CachePolicy, JobCache, PathCacheSpec};
pub use gitlab::{
    Commands, ExpireIn, JobImageSpec, OnlySpec, Reports, ServiceSpec, WorkflowSpec, parse_expire_in,
};
use globs::{changes_globs, exists_globs};
pub use include::{Include, IncludeList};

/// A value and where it was written.
pub type Sp<T> = serde_saphyr::Spanned<T>;

/// The position of a located value, the caret as wide as its text.
pub fn pos_of<T>(s: &Sp<T>) -> Pos {
    location_pos(&s.referenced)
}

/// A saphyr location as a [`Pos`].
pub fn location_pos(l: &serde_saphyr::Location) -> Pos {
    let width = usize::try_from(l.span().len()).unwrap_or(1);
    Pos::new(
        usize::try_from(l.line()).unwrap_or(usize::MAX),
        usize::try_from(l.column()).unwrap_or(usize::MAX),
        width,
    )
}

/// The whole file. A key starting with `.` (here or under `jobs:`) is hidden, as in GitLab: a
/// template for YAML anchors (`.defaults: &defaults`, then `<<: *defaults` in a job), never read
/// or run itself.
#[derive(Debug, Default)]
pub struct PipelineFile {
    /// Global variables, expanded in order (a value may use the ones above it and the built-ins).
    pub variables: OrderedMap<Sp<Text>>,
    /// Named image builds.
    pub images: OrderedMap<ImageSpec>,
    /// Stage order; GitLab's `build`, `test`, `deploy` when absent.
    pub stages: Option<Sp<Vec<Sp<String>>>>,
    /// What every job has unless it says otherwise (GitLab's `default:`).
    pub default: DefaultSpec,
    /// The jobs, before matrix expansion.
    pub jobs: OrderedMap<JobSpec>,
    /// GitLab's `workflow:`: whether this run makes a pipeline at all.
    pub workflow: Option<WorkflowSpec>,
    /// GitLab's `include:`: other files of the repository, merged under this one
    /// ([`super::include`]).
    pub include: Option<Sp<IncludeList>>,
}

const FILE_KEYS: &[&str] = &[
    "variables",
    "images",
    "stages",
    "default",
    "jobs",
    "workflow",
    "include",
];

impl<'de> Deserialize<'de> for PipelineFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis;
        impl<'de> Visitor<'de> for Vis {
            type Value = PipelineFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of variables, images, stages, default and jobs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut file = PipelineFile::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "variables" => file.variables = map.next_value()?,
                        "images" => file.images = map.next_value()?,
                        "stages" => file.stages = map.next_value()?,
                        "default" => file.default = map.next_value()?,
                        "jobs" => file.jobs = map.next_value::<Visible<JobSpec>>()?.0,
                        "workflow" => file.workflow = map.next_value()?,
                        "include" => file.include = map.next_value()?,
                        hidden if hidden.starts_with('.') => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        other => return Err(de::Error::unknown_field(other, FILE_KEYS)),
                    }
                }
                Ok(file)
            }
        }
        d.deserialize_struct("PipelineFile", FILE_KEYS, Vis)
    }
}

/// An [`OrderedMap`] without its hidden entries (keys starting with `.`), which are not read.
struct Visible<V>(OrderedMap<V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Visible<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Visible<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                entries(map, true).map(|e| Visible(OrderedMap(e)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Visible(OrderedMap(Vec::new())))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// An entry of `images:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The build context directory (default `.`).
    pub context: Option<Sp<String>>,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: Option<Sp<String>>,
    /// The Dockerfile stage to build (default the last).
    pub target: Option<Sp<String>>,
    #[serde(rename = "build-args", default)]
    pub build_args: OrderedMap<Sp<Text>>,
    #[serde(default)]
    pub labels: OrderedMap<Sp<Text>>,
    /// Names to tag (and push) the image as, templated.
    #[serde(default)]
    pub tags: Vec<Sp<String>>,
    #[serde(default)]
    pub push: bool,
    #[serde(rename = "no-cache", default)]
    pub no_cache: bool,
    /// Jobs that must pass before the push; `None` means every job that runs on the image.
    pub needs: Option<Vec<Sp<String>>>,
    /// Jobs whose artifacts are laid into the context before the build.
    #[serde(rename = "artifacts-from", default)]
    pub artifacts_from: Vec<Sp<String>>,
    /// The build cache outside the store, as `forge build --cache-from/--cache-to` spell it;
    /// the pipeline's job results travel in the caches written.
    #[serde(default)]
    pub cache: CacheSpec,
}

/// `cache:` of an image.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// `type=registry,ref=REF` or `type=local,src=DIR` (templated); tried in order.
    #[serde(default)]
    pub from: Vec<Sp<String>>,
    /// `type=registry,ref=REF[,mode=max][,mounts=true]` or `type=local,dest=DIR` (templated).
    #[serde(default)]
    pub to: Vec<Sp<String>>,
}

/// `default:`: GitLab's keys a job takes when it does not set them itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSpec {
    pub image: Option<JobImageSpec>,
    pub services: Option<Vec<ServiceSpec>>,
    pub before_script: Option<Sp<Commands>>,
    pub after_script: Option<Sp<Commands>>,
    pub artifacts: Option<ArtifactsSpec>,
    pub retry: Option<Sp<Retry>>,
    pub timeout: Option<Sp<Timeout>>,
    pub cache: Option<Sp<JobCache>>,
    /// Read and ignored, as a job's ([`JobSpec::tags`]).
    pub tags: Option<Sp<Vec<Sp<String>>>>,
    pub interruptible: Option<Sp<bool>>,
}

impl PipelineFile {
    /// The image `job` runs on: its own, else `default:`'s.
    pub fn image_of<'a>(&'a self, job: &'a JobSpec) -> Option<&'a JobImageSpec> {
        job.image.as_ref().or(self.default.image.as_ref())
    }

    /// The services of `job`: its own list (even empty), else `default:`'s.
    pub fn services_of<'a>(&'a self, job: &'a JobSpec) -> &'a [ServiceSpec] {
        job.services
            .as_deref()
            .or(self.default.services.as_deref())
            .unwrap_or_default()
    }
}

/// An entry of `jobs:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Default `test`, as in GitLab.
    pub stage: Option<Sp<String>>,
    /// A named image, `NAME@STAGE`, or a registry reference; or GitLab's map of `name` and
    /// `entrypoint`. `None`: `default:`'s (see [`PipelineFile::image_of`]).
    pub image: Option<JobImageSpec>,
    /// Shell lines, run in the image by bash or `sh`, with `-e` (see `script_program`); `None`
    /// only where `extends:` gives them (a job without is refused).
    pub script: Option<Sp<Commands>>,
    /// Lines run before `script`, in the same shell (GitLab's); replaces `default:`'s.
    pub before_script: Option<Sp<Commands>>,
    /// Lines run after `script` in a shell of their own, whatever its result, which they do not
    /// change (GitLab's); replaces `default:`'s.
    pub after_script: Option<Sp<Commands>>,
    #[serde(default)]
    pub variables: OrderedMap<Sp<Text>>,
    /// `None` (no key): wait for every job of the earlier stages, as GitLab does; `Some`: only
    /// for these jobs or images, which lets the job start before its stage.
    pub needs: Option<Vec<Sp<NeedSpec>>>,
    /// `None`: `default:`'s; a list, even empty, replaces them.
    pub services: Option<Vec<ServiceSpec>>,
    /// GitLab's: the jobs whose artifacts it receives (of earlier stages, or of its `needs:`);
    /// `None`: those of its `needs:`, else of every earlier job; `[]`: none.
    pub dependencies: Option<Vec<Sp<String>>>,
    pub parallel: Option<Sp<Parallel>>,
    pub artifacts: Option<ArtifactsSpec>,
    /// Names of secrets the job may read.
    pub secrets: Option<Vec<Sp<String>>>,
    #[serde(default, deserialize_with = "rules_list")]
    pub rules: Option<Vec<RuleSpec>>,
    /// GitLab's keys before `rules:` ([`super::only`]).
    pub only: Option<Sp<OnlySpec>>,
    pub except: Option<Sp<OnlySpec>>,
    pub allow_failure: Option<AllowFailure>,
    pub retry: Option<Sp<Retry>>,
    pub timeout: Option<Sp<Timeout>>,
    pub when: Option<Sp<When>>,
    pub network: Option<Sp<Network>>,
    /// forge's `false` runs the job whatever verdict the build cache recorded; GitLab's map (or
    /// list of maps) keeps paths between runs. `None`: `default:`'s.
    pub cache: Option<Sp<JobCache>>,
    /// GitLab's: jobs or hidden templates whose keys this job takes where it has none of its
    /// own, resolved as the file is read ([`super::extends`]).
    pub extends: Option<Sp<OneOrMany<String>>>,
    /// GitLab's keys that change nothing where one machine runs every job and no run cancels
    /// another: read, and said to be ignored ([`super::gitlab_keys::ignored`]).
    pub tags: Option<Sp<Vec<Sp<String>>>>,
    pub interruptible: Option<Sp<bool>>,
    pub environment: Option<Sp<de::IgnoredAny>>,
    /// GitLab's: `/RE/` finding the job's test coverage in its log ([`super::coverage`]).
    pub coverage: Option<Sp<String>>,
    /// GitLab's: jobs of one group (by name, variables expanded) never run at once, in one run
    /// or across runs of the pipeline on this store.
    pub resource_group: Option<Sp<String>>,
}

/// How to tell a service is up: a command run until it succeeds, within a timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    /// A shell line, run with `sh -c` in the service's container.
    pub command: Sp<String>,
    /// Default 60s.
    pub timeout: Option<Sp<Timeout>>,
    /// Between attempts; default 1s.
    pub interval: Option<Sp<Timeout>>,
}

/// `parallel:`, as GitLab writes it.
#[derive(Debug, Clone)]
pub enum Parallel {
    /// `parallel: N`: N copies of the job (`test 1/3`...), each told which it is by
    /// `CI_NODE_INDEX` (1 to N) and `CI_NODE_TOTAL` (N), to share out a test suite.
    Copies(u64),
    /// `parallel: matrix:`: a list of maps of lists, each map expanding to the product of its
    /// lists.
    Matrix(Sp<Vec<Sp<OrderedMap<OneOrMany<Text>>>>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParallelMap {
    matrix: Sp<Vec<Sp<OrderedMap<OneOrMany<Text>>>>>,
}

impl<'de> Deserialize<'de> for Parallel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Parallel, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parallel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of copies, or a map with `matrix`")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Parallel, E> {
                Ok(Parallel::Copies(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Parallel, E> {
                u64::try_from(n)
                    .map(Parallel::Copies)
                    .map_err(|_| E::custom(format!("parallel: {n} is no number of copies")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parallel, A::Error> {
                ParallelMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|m| Parallel::Matrix(m.matrix))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsSpec {
    /// `None`: not written (an `extends:` template's stand); `[]`: none.
    pub paths: Option<Vec<Sp<String>>>,
    /// Globs of entries `paths` selects that are left out, each matching an entry itself (not
    /// what is below a directory it names), as GitLab's.
    pub exclude: Option<Vec<Sp<String>>>,
    /// Default `on_success`.
    pub when: Option<Sp<ArtifactsWhen>>,
    pub reports: Option<Reports>,
    /// How long `forge serve` keeps them after the build (GitLab's `30 days`, `1 week`, `never`).
    pub expire_in: Option<Sp<ExpireIn>>,
    /// GitLab's archive name and merge request link: read, and said to be ignored.
    pub name: Option<Sp<de::IgnoredAny>>,
    pub expose_as: Option<Sp<de::IgnoredAny>>,
}

/// One of `rules:`; the first whose `if:` and `changes:` both match decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(rename = "if")]
    pub if_: Option<Sp<String>>,
    #[serde(default, deserialize_with = "changes_globs")]
    pub changes: Vec<Sp<String>>,
    /// Globs of which one must match a file of the repository (GitLab's `exists:`).
    #[serde(default, deserialize_with = "exists_globs")]
    pub exists: Vec<Sp<String>>,
    /// Default `on_success`.
    pub when: Option<Sp<When>>,
    /// The job's `allow_failure` when this rule decides.
    pub allow_failure: Option<bool>,
    /// Variables the job gets when this rule decides, over its own (GitLab's `rules:variables`).
    #[serde(default)]
    pub variables: OrderedMap<Sp<Text>>,
}

/// A job's `allow_failure:`: `true` or `false`, or GitLab's `{exit_codes: N}` / `{exit_codes:
/// [N, ...]}`, a failure allowed only when the script exits with one of those codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowFailure {
    Always(bool),
    ExitCodes(Vec<i32>),
}

impl<'de> Deserialize<'de> for AllowFailure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AllowFailure, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AllowFailure;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or {exit_codes: CODE or [CODE, ...]}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AllowFailure, E> {
                Ok(AllowFailure::Always(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AllowFailure, A::Error> {
                let mut codes = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "exit_codes" => codes = Some(map.next_value::<OneOrMany<i32>>()?.0),
                        other => return Err(de::Error::unknown_field(other, &["exit_codes"])),
                    }
                }
                match codes {
                    Some(c) if !c.is_empty() => Ok(AllowFailure::ExitCodes(c)),
                    _ => Err(de::Error::custom(
                        "`allow_failure:` as a map gives `exit_codes:` (a code or a list)",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// GitLab's most levels of lists within `rules:`, as within a script.
const MAX_RULES_NESTING: usize = 10;

/// `rules:` as GitLab reads them: a list whose items are rules or lists of rules (what
/// `- !reference [.defaults, rules]` or an anchor of a list makes), flattened in order.
pub(crate) fn rules_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RuleSpec>>, D::Error> {
    struct Rules<'a> {
        out: &'a mut Option<Vec<RuleSpec>>,
        depth: usize,
    }
    impl<'de> Visitor<'de> for Rules<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of rules (lists within it are flattened)")
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            if self.depth == 0 {
                return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
            }
            let rule = RuleSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
            self.out.get_or_insert_with(Vec::new).push(rule);
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            if self.depth > MAX_RULES_NESTING {
                return Err(de::Error::custom(format!(
                    "rules nest deeper than {MAX_RULES_NESTING} lists"
                )));
            }
            self.out.get_or_insert_with(Vec::new);
            while seq
                .next_element_seed(Rules {
                    out: &mut *self.out,
                    depth: self.depth + 1,
                })?
                .is_some()
            {}
            Ok(())
        }
    }
    impl<'de> de::DeserializeSeed<'de> for Rules<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    let mut out = None;
    d.deserialize_any(Rules {
        out: &mut out,
        depth: 0,
    })?;
    Ok(out)
}

/// When a job runs, relative to the jobs before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
    Never,
    /// Only when asked for by name (`forge run JOB`), as GitLab's play button runs it; else
    /// skipped, gating no push, and a job that `needs:` it does not run either.
    Manual,
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Never => "never",
            When::Manual => "manual",
        })
    }
}

/// When a job's artifacts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactsWhen {
    OnSuccess,
    OnFailure,
    Always,
}

impl fmt::Display for ArtifactsWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactsWhen::OnSuccess => "on_success",
            ArtifactsWhen::OnFailure => "on_failure",
            ArtifactsWhen::Always => "always",
        })
    }
}

/// A job's network: its own namespace (with its services) or the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    #[default]
    Private,
    Host,
}

/// The failures a retry covers: GitLab's names. A job's failures here are a script's, a
/// timeout (`job_execution_timeout`, and GitLab's `stuck_or_timeout_failure` covers it too), the
/// runner's own and an unmet prerequisite; GitLab's other kinds (its API's, its scheduler's, an
/// archived job's, ...) are read and never happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryWhen {
    Always,
    ScriptFailure,
    JobExecutionTimeout,
    RunnerSystemFailure,
    UnmetPrerequisites,
    StuckOrTimeoutFailure,
    UnknownFailure,
    ApiFailure,
    RunnerUnsupported,
    StaleSchedule,
    ArchivedFailure,
    SchedulerFailure,
    DataIntegrityFailure,
}

/// GitLab's most retries of one job.
pub const MAX_RETRY: u8 = 2;

/// `retry: 2` or `retry: {max: 2, when: [script_failure]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub max: u8,
    /// Empty means every failure (GitLab's `always`).
    pub when: Vec<RetryWhen>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryMap {
    max: u64,
    #[serde(default)]
    when: OneOrMany<RetryWhen>,
}

fn retry_max<E: de::Error>(n: u64) -> Result<u8, E> {
    u8::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_RETRY)
        .ok_or_else(|| E::custom(format!("retry must be 0, 1 or 2 (as in GitLab), not {n}")))
}

impl<'de> Deserialize<'de> for Retry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Retry, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Retry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of retries (0 to 2) or a map with `max` and `when`")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Retry, E> {
                Ok(Retry {
                    max: retry_max(n)?,
                    when: Vec::new(),
                })
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Retry, E> {
                self.visit_u64(u64::try_from(n).map_err(|_| {
                    E::custom(format!("retry must be 0, 1 or 2 (as in GitLab), not {n}"))
                })?)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Retry, A::Error> {
                let m = RetryMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Retry {
                    max: retry_max(m.max)?,
                    when: m.when.0,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A job's `needs:` entry: `lint`, or GitLab's `{job: lint, optional: true}`. A need of a job
/// that rules leave out of the run refuses the pipeline unless it is optional (then the job runs
/// without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedSpec {
    /// A job, a matrix job's written or expanded name, or an image.
    pub name: String,
    pub optional: bool,
    /// GitLab's `artifacts: false`: wait for the job without receiving its artifacts.
    pub artifacts: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NeedMap {
    job: String,
    #[serde(default)]
    optional: bool,
    #[serde(default = "yes")]
    artifacts: bool,
    /// GitLab's `parallel: matrix:` selection of cells: refused, naming the form forge takes.
    parallel: Option<de::IgnoredAny>,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for NeedSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NeedSpec, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NeedSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a job or image name, or a map with `job` and `optional`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NeedSpec, E> {
                Ok(NeedSpec {
                    name: s.to_string(),
                    optional: false,
                    artifacts: true,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NeedSpec, A::Error> {
                let m = NeedMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if m.parallel.is_some() {
                    return Err(de::Error::custom(format!(
                        "`needs: parallel: matrix:` is not supported: name the cells instead, as \
                         `needs: [\"{}: [VALUE, ...]\"]` (a cell's values in its matrix's order, \
                         as the run's lines name it)",
                        m.job
                    )));
                }
                Ok(NeedSpec {
                    name: m.job,
                    optional: m.optional,
                    artifacts: m.artifacts,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as GitLab-style units run together: `90s`, `10m`, `1h30m`, `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

/// Parses `1h30m`-style durations: one or more `<digits><unit>` with units `h`, `m`, `s`, each
/// unit at most once and in that order. A bare number is refused: minutes or seconds?
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: write it as 90s, 10m or 1h30m");
    let mut total: u64 = 0;
    let mut rest = s.trim();
    let mut last_rank = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let (secs, rank) = match rest[digits..].chars().next() {
            Some('h') => (3600, 1),
            Some('m') => (60, 2),
            Some('s') => (1, 3),
            _ => return Err(bad()),
        };
        if rank <= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        rest = &rest[digits + 1..];
    }
    Ok(Duration::from_secs(total))
}

impl<'de> Deserialize<'de> for Timeout {
    /// `1h30m`, or GitLab's words (`3 hours 30 minutes`, `3h 30m`, `90 seconds`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timeout, D::Error> {
        let s = Text::deserialize(d)?;
        let compact = parse_duration(&s.0);
        if compact.is_ok() {
            return compact.map(Timeout).map_err(de::Error::custom);
        }
        match gitlab::human_duration(&s.0.trim().to_ascii_lowercase()) {
            Ok(Some(d)) => Ok(Timeout(d)),
            Ok(None) => Err(de::Error::custom(format!(
                "invalid duration {:?}: write it as 90s, 10m, 1h30m or `3 hours 30 minutes`",
                s.0
            ))),
            Err(()) => Err(de::Error::custom(format!("duration {:?} is too long", s.0))),
        }
    }
}

/// A scalar read as its text, whatever YAML would make of it: `3.10` stays `3.10` (not the float
/// 3.1), `010` and `yes` stay as written. Variable and matrix values are strings to the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// One value or a list of them (`junit: report.xml` or `junit: [a.xml, b.xml]`). A lone scalar
/// goes through YAML's typing first (`3.10` alone reads as 3.1); in a list each keeps its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(de::value::I64Deserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(de::value::U64Deserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(de::value::F64Deserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(de::value::BoolDeserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A mapping with string keys kept in file order, each key located: job and image names are
/// reported where they are written, and the plan lists them as the file does.
#[derive(Debug, Clone)]
pub struct OrderedMap<V>(pub Vec<(Sp<String>, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    /// `over` laid on this map, name by name: this map's entries in their order, then `over`'s
    /// new ones; a name both have becomes `both(this map's value, over's)` under `over`'s key
    /// (where a later file or a job wrote it).
    pub fn merged(self, over: OrderedMap<V>, both: impl Fn(V, V) -> V) -> OrderedMap<V> {
        let mut out: Vec<(Sp<String>, Option<V>)> =
            self.0.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in over.0 {
            match out.iter_mut().find(|(b, _)| b.value == k.value) {
                Some(slot) => {
                    let old = slot.1.take().expect("each entry is taken once");
                    *slot = (k, Some(both(old, v)));
                }
                None => out.push((k, Some(v))),
            }
        }
        OrderedMap(
            out.into_iter()
                .map(|(k, v)| (k, v.expect("every entry is put back")))
                .collect(),
        )
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                entries(map, false).map(OrderedMap)
            }
            // `variables:` with nothing under it is an empty map, not an error.
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedMap(Vec::new()))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// A mapping's entries in file order, each key located; with `skip_hidden`, those whose key starts
/// with `.` are passed over unread.
fn entries<'de, A: MapAccess<'de>, V: Deserialize<'de>>(
    mut map: A,
    skip_hidden: bool,
) -> Result<Vec<(Sp<String>, V)>, A::Error> {
    let mut out = Vec::new();
    while let Some(k) = map.next_key::<Sp<String>>()? {
        if skip_hidden && k.value.starts_with('.') {
            map.next_value::<de::IgnoredAny>()?;
        } else {
            out.push((k, map.next_value()?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_gitlab_writes_them() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        for bad in ["", "10", "m", "10x", "1m1h", "1h1h", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999h").is_err());
    }
}
