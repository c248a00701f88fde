//! Running a checked [`Pipeline`]: its images are built with the build API (the same solver,
//! cache and store as `forge build`), its jobs are solved as test steps on those images (see
//! [`job`]), and an image is pushed only once every job gating it has passed. Jobs run as soon as
//! what they wait for is done (their `needs:`, or every job of the earlier stages), at most
//! `jobs` at a time; a failed job moves no registry tag, and the report says which job failed and
//! which tags were held back.
//!
//! The parts: [`job`] solves one job as a test step through the cache; `jobs.rs` prepares a job
//! (its image, the artifact layers it receives, its variables, secrets and services) and keeps
//! what it leaves; [`artifacts`] selects, extracts and lays artifacts; `path_cache.rs` restores
//! and saves GitLab's caches of paths; `resource_group.rs` keeps a group's jobs apart; [`report`]
//! holds what a run is asked and what it tells.

mod artifacts;
mod cache;
mod clip;
pub use clip::DEFAULT_LOG_LIMIT;
mod confine;
mod decide;
mod dotenv;
use decide::{decide, untested};
mod image;
mod job;
mod jobs;
mod path_cache;
pub use path_cache::ROOT_KIND as JOB_CACHE_ROOT;
mod report;
mod resource_group;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use forge_snapshotter::store::Descriptor;

use super::file::{Network, RetryWhen, When};
use super::history::JobResult;
use super::junit::TestSummary;
use super::plan::{ImageUse, JobPlan, Need, Pipeline};
use crate::api::{BuildError, Session};
use crate::solver::CancellationToken;
use crate::source::image::BaseImage;
pub use confine::read_file_inside;
use image::build_name;
pub use job::script_program;
pub use report::{ImageReport, JobReport, PipelineEvent, RunOptions, RunReport, Sink};

/// A unit of work of the run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    /// An image build: the image name, and the stage for `NAME@STAGE`.
    Build(String, Option<String>),
    Job(String),
    Push(String),
}

/// How a unit ended, as what waits for it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    Failed,
    /// Not run, and nothing is wrong: a rule or `when:` left it out. It gates nothing.
    Skipped,
    /// Not run because what it waited for failed, or was itself blocked or held back: a push held
    /// back, a job skipped after a failure. What waits for it (on success) is blocked in turn.
    Blocked,
}

/// What a finished build leaves for the jobs and the push.
#[derive(Clone)]
struct BuiltImage {
    base: BaseImage,
    config: crate::graph::ImageConfig,
    digest: String,
}

/// What a finished job leaves for the jobs that need it.
#[derive(Clone, Default)]
struct JobLeft {
    artifacts: Option<Descriptor>,
    /// The job's working directory: artifacts are relative to it outside the job.
    workdir: String,
    /// Its `reports: dotenv:` variables, for the jobs that receive its artifacts.
    dotenv: Vec<(String, String)>,
}

struct Runner {
    session: Session,
    plan: Arc<Pipeline>,
    options: Arc<RunOptions>,
    sink: Sink,
    cancel: CancellationToken,
    /// The caches the images name, when any does.
    cache: Option<Arc<cache::PipelineCache>>,
    /// What masks the run's secrets in a job's lines, as the job's steps mask them: every one of
    /// them, not only those the job is given, which another job may hand on in its artifacts or
    /// dotenv report. Made once for the run.
    masks: Arc<crate::mask::Masks>,
}

/// Runs `plan` and reports how it went. A failing job is a result, not an error: the error case
/// is a run that could not start (a secret that is not given, a job refused by its grants).
pub async fn run(
    session: &Session,
    plan: &Pipeline,
    options: &RunOptions,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<RunReport, BuildError> {
    preflight(plan, options)?;
    let cache = cache::PipelineCache::open(session, plan, &sink).await;
    let secrets: Vec<Vec<u8>> = options.secrets.values().cloned().collect();
    let r = Runner {
        session: session.clone(),
        plan: Arc::new(asked_for(plan, &options.only)),
        options: Arc::new(options.clone()),
        sink,
        cancel,
        cache,
        masks: Arc::new(crate::mask::Masks::of(&secrets)),
    };
    Ok(r.run().await)
}

/// Refusals before anything runs: missing secrets, ungranted host networks, unknown `only` names.
/// [`run`] checks them again; a caller may check first, before it records a run.
pub fn preflight(plan: &Pipeline, options: &RunOptions) -> Result<(), BuildError> {
    let mut names: Vec<&String> = options.secrets.keys().collect();
    names.sort();
    for name in names {
        crate::mask::check_size(name, &options.secrets[name]).map_err(BuildError::Invalid)?;
    }
    for j in &plan.jobs {
        for s in &j.secrets {
            if !options.secrets.contains_key(s) {
                return Err(BuildError::Invalid(format!(
                    "job {}: secret {s} is not given (forge run --secret {s}, from the environment \
                     variable {s}, or --secret {s}=file:PATH)",
                    j.name
                )));
            }
        }
        if j.network == Network::Host && !options.allow_network_host && runs(j, options) {
            return Err(BuildError::Invalid(format!(
                "job {}: `network: host` is not allowed: the job would reach the host's own \
                 services; the run must grant it (forge run --allow network.host)",
                j.name
            )));
        }
    }
    for o in &options.only {
        if !plan.jobs.iter().any(|j| j.name == *o || j.base == *o) {
            return Err(BuildError::Invalid(format!(
                "no job named {o} in the pipeline"
            )));
        }
    }
    Ok(())
}

/// Whether `j` may run in this run: not left out by rules or `when: never`, and if `when:
/// manual`, asked for by name.
fn runs(j: &JobPlan, options: &RunOptions) -> bool {
    match j.when {
        When::Never => false,
        When::Manual => named(j, &options.only),
        _ => true,
    }
}

/// `plan` as this run runs it: a manual job asked for by name (`forge run JOB...`) runs as any
/// other, except that it is an action asked for (a deploy), so it runs each time it is asked for,
/// as GitLab's play button pressed again does, and is never served a recorded verdict; the rest
/// stay manual, and are skipped.
fn asked_for(plan: &Pipeline, only: &[String]) -> Pipeline {
    let mut plan = plan.clone();
    for j in &mut plan.jobs {
        if j.when == When::Manual && named(j, only) {
            j.when = When::OnSuccess;
            j.cache = false;
        }
    }
    plan
}

/// Whether `forge run JOB...` names `j` (by its name or, for a matrix cell, its job's).
fn named(j: &JobPlan, only: &[String]) -> bool {
    only.iter().any(|o| *o == j.name || *o == j.base)
}

/// The file name a job's artifacts go under: its name with each run of other characters made
/// one `-` (`unit: [1, p]` -> `unit-1-p`).
pub fn job_dir_name(job: &str) -> String {
    let mut out = String::new();
    for c in job.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let t = out.trim_matches('-').trim_start_matches('.');
    if t.is_empty() { "job".into() } else { t.into() }
}

/// The directory a job's artifacts go under, among `all` the plan's jobs: [`job_dir_name`], and
/// where that is another job's too (matrix cells whose values differ only in punctuation, or a
/// job named like a cell) a short digest of the whole name after it, so that no job's artifacts
/// overwrite another's. A job whose name is its directory name already keeps it; a digest that
/// makes another job's directory name (`a/b` beside `a-b` and a job named `a-b-0da3cfa5`), or
/// another clashing job's, is made longer.
pub fn artifacts_dir_name<'a>(job: &str, all: impl IntoIterator<Item = &'a str>) -> String {
    let mine = job_dir_name(job);
    let others: Vec<&str> = all.into_iter().filter(|o| *o != job).collect();
    if mine == job || !others.iter().any(|o| job_dir_name(o) == mine) {
        return mine;
    }
    let with_digest = |name: &str, len: usize| {
        let digest = blake3::hash(name.as_bytes()).to_hex();
        format!("{}-{}", job_dir_name(name), &digest[..len])
    };
    for len in [8, 16] {
        let candidate = with_digest(job, len);
        let taken = others
            .iter()
            .any(|o| job_dir_name(o) == candidate || with_digest(o, len) == candidate);
        if !taken {
            return candidate;
        }
    }
    with_digest(job, 64)
}

/// `FORGE_IMAGE_<NAME>_...`: the name upper-cased, other characters `_`.
fn env_name(image: &str) -> String {
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

type Done = (Node, End, Result<Left, String>);

#[derive(Clone)]
enum Left {
    Image(Box<BuiltImage>),
    Job(JobLeft, JobReport),
    Push(Vec<String>),
    /// A push held back: its tags, and the jobs (or build) that held it.
    Held(Vec<String>, Vec<String>),
    /// A build not started: the `artifacts-from` jobs that failed or did not run.
    NotBuilt(Vec<String>),
    /// A push that failed: the tags it moved before it did, and its error.
    PushFailed(Vec<String>, String),
    Nothing,
}

impl Runner {
    fn emit(&self, e: PipelineEvent) {
        (self.sink)(e)
    }
}

/// Every unit and what it waits for; `only` is `forge run JOB...` (empty: every job).
fn units(plan: &Pipeline, only: &[String]) -> BTreeMap<Node, BTreeSet<Node>> {
    let stage_index = |s: &str| plan.stages.iter().position(|x| x == s).unwrap_or(0);
    let pushes: BTreeSet<&str> = plan
        .images
        .iter()
        .filter(|i| i.push)
        .map(|i| i.name.as_str())
        .collect();
    let mut units: BTreeMap<Node, BTreeSet<Node>> = BTreeMap::new();
    let build_of = |u: &ImageUse| match u {
        ImageUse::Named(n) => Some(Node::Build(n.clone(), None)),
        ImageUse::Stage { image, stage } => Some(Node::Build(image.clone(), Some(stage.clone()))),
        ImageUse::Registry(_) => None,
    };
    for j in &plan.jobs {
        let mut deps = BTreeSet::new();
        if let Some(b) = build_of(&j.image) {
            deps.insert(b);
        }
        for svc in &j.services {
            if let Some(b) = build_of(&svc.image) {
                deps.insert(b);
            }
        }
        match &j.needs {
            Some(needs) => {
                for n in needs {
                    deps.insert(match n {
                        Need::Job(x) => Node::Job(x.clone()),
                        Need::Image(i) if pushes.contains(i.as_str()) => Node::Push(i.clone()),
                        Need::Image(i) => Node::Build(i.clone(), None),
                    });
                }
            }
            None => {
                let mine = stage_index(&j.stage);
                for o in &plan.jobs {
                    if stage_index(&o.stage) < mine {
                        deps.insert(Node::Job(o.name.clone()));
                    }
                }
            }
        }
        units.insert(Node::Job(j.name.clone()), deps);
    }
    let artifacts_from = |image: &str| -> BTreeSet<Node> {
        plan.images
            .iter()
            .find(|i| i.name == image)
            .map(|i| {
                i.artifacts_from
                    .iter()
                    .map(|j| Node::Job(j.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    for i in &plan.images {
        units.insert(Node::Build(i.name.clone(), None), artifacts_from(&i.name));
        if i.push {
            let mut deps = BTreeSet::from([Node::Build(i.name.clone(), None)]);
            deps.extend(i.push_needs.iter().map(|j| Node::Job(j.clone())));
            units.insert(Node::Push(i.name.clone()), deps);
        }
    }
    // Stage builds some job asked for.
    let stage_builds: Vec<Node> = units
        .values()
        .flatten()
        .filter(|n| matches!(n, Node::Build(_, Some(_))))
        .cloned()
        .collect();
    for b in stage_builds {
        let deps = match &b {
            Node::Build(image, _) => artifacts_from(image),
            _ => BTreeSet::new(),
        };
        units.entry(b).or_insert(deps);
    }
    if only.is_empty() {
        return units;
    }
    // `forge run JOB...`: those jobs and what they wait for; a push only when every job
    // gating it is in.
    let mut keep = BTreeSet::new();
    let mut stack: Vec<Node> = plan
        .jobs
        .iter()
        .filter(|j| named(j, only))
        .map(|j| Node::Job(j.name.clone()))
        .collect();
    while let Some(n) = stack.pop() {
        if keep.insert(n.clone())
            && let Some(d) = units.get(&n)
        {
            stack.extend(d.iter().cloned());
        }
    }
    for i in &plan.images {
        let p = Node::Push(i.name.clone());
        if let Some(d) = units.get(&p)
            && d.iter().all(|n| keep.contains(n))
            && keep.contains(&Node::Build(i.name.clone(), None))
        {
            keep.insert(p);
        }
    }
    units.retain(|n, _| keep.contains(n));
    units
}

impl Runner {
    async fn run(self) -> RunReport {
        let start = Instant::now();
        let units = units(&self.plan, &self.options.only);
        let mut ends: HashMap<Node, End> = HashMap::new();
        let mut left: HashMap<Node, Left> = HashMap::new();
        let mut running = tokio::task::JoinSet::new();
        let mut pending: BTreeSet<Node> = units.keys().cloned().collect();
        let limit = self.options.jobs.max(1);
        let mut reports: BTreeMap<String, JobReport> = BTreeMap::new();
        let mut images: BTreeMap<String, ImageReport> = self
            .plan
            .images
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    ImageReport {
                        name: i.name.clone(),
                        ..ImageReport::default()
                    },
                )
            })
            .collect();
        let this = Arc::new(self);
        loop {
            // Start what can start, in a stable order.
            let mut started_any = true;
            while started_any {
                started_any = false;
                let ready: Vec<Node> = pending
                    .iter()
                    .filter(|n| units[*n].iter().all(|d| ends.contains_key(d)))
                    .cloned()
                    .collect();
                for n in ready {
                    if this.cancel.is_cancelled() {
                        break;
                    }
                    let deps: Vec<(Node, End)> =
                        units[&n].iter().map(|d| (d.clone(), ends[d])).collect();
                    // Decided without running: skips.
                    if let Some((end, l)) = this.decide(&n, &deps, &left) {
                        pending.remove(&n);
                        if let Left::Job(_, r) = &l {
                            this.forget_artifacts(&r.name);
                            reports.insert(r.name.clone(), r.clone());
                        }
                        this.record_image(&n, &l, &mut images);
                        ends.insert(n.clone(), end);
                        left.insert(n, l);
                        started_any = true;
                        continue;
                    }
                    if running.len() >= limit {
                        break;
                    }
                    pending.remove(&n);
                    let inputs: HashMap<Node, Left> = units[&n]
                        .iter()
                        .filter_map(|d| left.get(d).map(|l| (d.clone(), l.clone())))
                        .chain(
                            // A job also sees the images it names by `needs:` (their digests).
                            left.iter()
                                .filter(|(k, _)| matches!(k, Node::Build(..)))
                                .map(|(k, v)| (k.clone(), v.clone())),
                        )
                        .collect();
                    let me = this.clone();
                    let untested = untested(&this.plan, &n, &deps);
                    if let Some(PipelineEvent::PushedUntested { image, skipped, .. }) = &untested
                        && let Some(r) = images.get_mut(image)
                    {
                        r.untested = skipped.clone();
                    }
                    running.spawn(async move {
                        let (end, l) = me.unit(&n, inputs).await;
                        // Said after the push's own line, as a note on it.
                        if end == End::Ok
                            && let Some(e) = untested
                        {
                            me.emit(e);
                        }
                        (n, end, l)
                    });
                    started_any = true;
                }
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (n, end, l): Done = match done {
                Ok(d) => d,
                Err(e) => {
                    // A panicked unit: nothing to attribute it to but the run.
                    this.emit(PipelineEvent::ImageLine {
                        image: "forge".into(),
                        line: format!("internal error: {e}"),
                    });
                    continue;
                }
            };
            // A stage's failed build fails the run as the image's does: the jobs on that stage
            // never ran (the image's own error, when it has one, is the one told).
            if let (Node::Build(name, stage), Err(e)) = (&n, &l)
                && let Some(r) = images.get_mut(name)
            {
                match stage {
                    None => r.error = Some(e.clone()),
                    Some(stage) if r.error.is_none() => {
                        r.error = Some(format!("stage {stage}: {e}"))
                    }
                    Some(_) => {}
                }
            }
            let l = l.unwrap_or(Left::Nothing);
            if let Left::Job(_, r) = &l {
                reports.insert(r.name.clone(), r.clone());
            }
            this.record_image(&n, &l, &mut images);
            ends.insert(n.clone(), end);
            left.insert(n, l);
        }
        let cancelled = this.cancel.is_cancelled();
        // What never started (cancelled): reported as such.
        for n in &pending {
            if let Node::Job(name) = n {
                reports.insert(
                    name.clone(),
                    JobReport {
                        name: name.clone(),
                        result: if cancelled {
                            JobResult::Cancelled
                        } else {
                            JobResult::Skipped
                        },
                        exit_code: None,
                        duration_ms: 0,
                        reason: Some(if cancelled {
                            "the run was cancelled".into()
                        } else {
                            "not reached".into()
                        }),
                        junit: None,
                        artifacts: None,
                        coverage: None,
                        manual: false,
                    },
                );
            }
        }
        // Jobs in plan order.
        let jobs: Vec<JobReport> = this
            .plan
            .jobs
            .iter()
            .filter_map(|j| reports.remove(&j.name))
            .collect();
        let mut junit: Option<TestSummary> = None;
        for j in &jobs {
            if let Some(s) = &j.junit {
                // Failed tests are named with their job: two matrix jobs share test names.
                let mut s = s.clone();
                for f in &mut s.failures {
                    f.name = format!("{}: {}", j.name, f.name);
                }
                junit.get_or_insert_with(TestSummary::default).merge(s);
            }
        }
        if !cancelled && let Some(c) = &this.cache {
            c.export(&this.session, &this.plan, &this.sink).await;
        }
        let images: Vec<ImageReport> = images.into_values().collect();
        let passed = !cancelled
            && jobs
                .iter()
                .all(|j| !matches!(j.result, JobResult::Failed | JobResult::Cancelled))
            && images.iter().all(|i| i.error.is_none());
        RunReport {
            passed,
            cancelled,
            images,
            jobs,
            junit,
            duration: start.elapsed(),
        }
    }

    /// Where job `job`'s artifacts are copied out on the host.
    fn artifacts_on_host(&self, job: &str) -> std::path::PathBuf {
        self.options.artifacts_dir.join(artifacts_dir_name(
            job,
            self.plan.jobs.iter().map(|j| j.name.as_str()),
        ))
    }

    /// A job that did not run this time keeps no artifacts on the host from an earlier run
    /// (a warning says when they could not be removed).
    fn forget_artifacts(&self, job: &str) {
        if !self
            .plan
            .jobs
            .iter()
            .any(|j| j.name == job && j.artifacts.is_some())
        {
            return;
        }
        if let Err(e) = artifacts::forget_on_host(&self.artifacts_on_host(job)) {
            self.emit(PipelineEvent::JobLine {
                job: job.into(),
                line: format!("forge: warning: artifacts: {e}"),
                cached: false,
            });
        }
    }

    fn record_image(&self, n: &Node, l: &Left, images: &mut BTreeMap<String, ImageReport>) {
        match (n, l) {
            (Node::Build(name, None), Left::Image(b)) => {
                if let Some(r) = images.get_mut(name) {
                    r.digest = Some(b.digest.clone());
                }
            }
            (Node::Push(name), Left::Push(refs)) => {
                if let Some(r) = images.get_mut(name) {
                    r.pushed = refs.clone();
                }
            }
            (Node::Push(name), Left::PushFailed(moved, e)) => {
                if let Some(r) = images.get_mut(name) {
                    r.pushed = moved.clone();
                    r.error = Some(format!("push: {e}"));
                }
            }
            (Node::Push(name), Left::Held(tags, because)) => {
                if let Some(r) = images.get_mut(name) {
                    r.held = tags.clone();
                    r.held_by = because.clone();
                }
            }
            _ => {}
        }
    }

    /// A unit whose fate its dependencies decide, said through the sink.
    fn decide(
        &self,
        n: &Node,
        deps: &[(Node, End)],
        left: &HashMap<Node, Left>,
    ) -> Option<(End, Left)> {
        let (end, l, event) = decide(&self.plan, n, deps, left)?;
        self.emit(event);
        Some((end, l))
    }

    /// Runs one unit.
    async fn unit(&self, n: &Node, inputs: HashMap<Node, Left>) -> (End, Result<Left, String>) {
        match n {
            Node::Build(name, stage) => match self.build(name, stage.as_deref(), &inputs).await {
                Ok(b) => (End::Ok, Ok(Left::Image(Box::new(b)))),
                Err(e) => {
                    self.emit(PipelineEvent::ImageFailed {
                        image: build_name(name, stage.as_deref()),
                        error: e.clone(),
                    });
                    (End::Failed, Err(e))
                }
            },
            Node::Job(name) => {
                let (end, l) = self.job(name, &inputs).await;
                (end, Ok(l))
            }
            Node::Push(name) => match self.push(name, &inputs).await {
                Ok(refs) => (End::Ok, Ok(Left::Push(refs))),
                Err((moved, e)) => {
                    // The tags that did move are said, and reported as pushed.
                    let e = if moved.is_empty() {
                        e
                    } else {
                        format!(
                            "{e} (these tags moved before it failed: {})",
                            moved.join(", ")
                        )
                    };
                    self.emit(PipelineEvent::PushFailed {
                        image: name.clone(),
                        error: e.clone(),
                    });
                    (End::Failed, Ok(Left::PushFailed(moved, e)))
                }
            },
        }
    }
}

/// Stops every service, whatever happens to each; what ended on its own, or would not stop, is
/// said through `say` (the job's log).
async fn stop_services(handles: Vec<crate::api::ServiceHandle>, say: &(dyn Fn(String) + Sync)) {
    for h in handles {
        match h.stop().await {
            Ok(None) => {}
            Ok(Some(note)) => say(format!("forge: {note}")),
            Err(e) => say(format!("forge: {}", crate::api::render_chain(&e))),
        }
    }
}

fn retry_reason(kind: RetryWhen) -> &'static str {
    match kind {
        RetryWhen::JobExecutionTimeout | RetryWhen::StuckOrTimeoutFailure => "a timeout",
        RetryWhen::RunnerSystemFailure => "a failure of the runner",
        RetryWhen::UnmetPrerequisites => "an unmet prerequisite",
        // The kinds a failure here is never given.
        _ => "a script failure",
    }
}

fn describe(n: &Node) -> String {
    match n {
        Node::Build(i, s) => format!("image {}", build_name(i, s.as_deref())),
        Node::Job(j) => j.clone(),
        Node::Push(i) => format!("push of {i}"),
    }
}

/// Every regular file of a selected report tar, read as JUnit XML and summed. The job wrote the
/// reports, so test names, failure messages and the reports' own paths may hold the job's
/// secrets, and they are printed in the run's summary and kept in `--metadata-file`: they are
/// masked with `masks` (the job's), like its output lines.
fn read_junit(
    store: &forge_snapshotter::store::Store,
    d: &Descriptor,
    job: &str,
    masks: &crate::mask::Masks,
) -> Result<TestSummary, String> {
    let f = store.open_blob(&d.digest).map_err(|e| e.to_string())?;
    let mut a = tar::Archive::new(f);
    let mut sum = TestSummary::default();
    for e in a.entries().map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let origin = format!("{job}: /{}", String::from_utf8_lossy(&e.path_bytes()));
        let s =
            super::junit::TestSummary::read(e, &origin).map_err(|e| masks.mask(&e.to_string()))?;
        sum.merge(s);
    }
    for f in &mut sum.failures {
        f.name = masks.mask(&f.name);
        f.message = masks.mask(&f.message);
    }
    Ok(sum)
}

impl Runner {
    /// Says `lines` of forge's own in `plan`'s log, masked with the run's secrets (the paths and keys
    /// they quote are the job's own words).
    fn say_masked(&self, plan: &JobPlan, lines: Vec<String>) {
        for line in lines {
            self.emit(PipelineEvent::JobLine {
                job: plan.name.clone(),
                line: self.masks.mask(&line),
                cached: false,
            });
        }
    }
}

#[cfg(test)]
mod tests;
