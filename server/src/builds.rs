//! Running builds: the queue (one build per project at a time, at most `max_builds` at once, the
//! rest waiting in the order they came), each build's checkout, its pipeline run in this process
//! through the build API, its log, and the notifications when it ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use forge_builder::Session;
use forge_builder::mask::Masks;
use forge_builder::pipeline::history::JobResult;
use forge_builder::pipeline::run::{PipelineEvent, RunOptions, RunReport};
use forge_builder::pipeline::{self, CheckOptions};
use forge_builder::solver::CancellationToken;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Config, Project, What};

/// How long a build's fetch of its commit may take before it is given up: a remote that accepts
/// and never answers would otherwise hold the build, and its project's queue, for ever.
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
use crate::model::{Build, JobRecord, Status, Trigger};
use crate::notify;
use crate::store::{Request, Store, StoreError, now};

/// The server's shared state.
pub struct Server {
    pub config: Config,
    pub store: Store,
    session: Session,
    /// `<store>/serve`: the builds' work folders below it.
    dir: PathBuf,
    running: Mutex<HashMap<(String, u64), CancellationToken>>,
    wake: Notify,
    permits: Arc<Semaphore>,
    http: reqwest::Client,
    /// Every secret the configuration holds, made into a matcher once.
    masks: Masks,
}

impl Server {
    pub fn new(config: Config, store: Store, session: Session, dir: PathBuf) -> Arc<Server> {
        let permits = Arc::new(Semaphore::new(config.max_builds));
        // reqwest's client needs rustls's provider even for plain http.
        forge_snapshotter::registry::roots::install_crypto_provider();
        let masks = Masks::of(&config.masked());
        Arc::new(Server {
            masks,
            config,
            store,
            session,
            dir,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            permits,
            http: reqwest::Client::new(),
        })
    }

    /// `text` with every secret the server holds masked. A commit message is written by whoever
    /// pushed and is shown on the open pages, in the API and in notifications, not only in the
    /// log, so it is stored masked.
    fn mask(&self, text: &str) -> String {
        self.masks.mask(text)
    }

    /// The project named `name`.
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.config.projects.iter().find(|p| p.name == name)
    }

    /// Queues a build and wakes the scheduler.
    pub fn queue(
        &self,
        project: &str,
        trigger: Trigger,
        mut r: Request,
    ) -> Result<Build, StoreError> {
        r.message = r.message.map(|m| self.mask(&m));
        let b = self.store.enqueue(project, trigger, r)?;
        eprintln!(
            "queued {project} #{} ({}{})",
            b.number,
            trigger.as_str(),
            b.tag
                .as_ref()
                .or(b.branch.as_ref())
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        );
        self.wake.notify_one();
        Ok(b)
    }

    /// Cancels build `n`: a queued one never starts, a running one stops its steps and services.
    /// False when it has already ended.
    pub fn cancel(&self, project: &str, n: u64) -> Result<bool, StoreError> {
        if let Some(token) = self
            .running
            .lock()
            .expect("not poisoned")
            .get(&(project.to_string(), n))
        {
            token.cancel();
            return Ok(true);
        }
        match self.store.get(project, n)? {
            Some(mut b) if b.status == Status::Queued => {
                b.status = Status::Cancelled;
                b.finished_at = Some(now());
                self.store.put(&b)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Starts what can start, for ever: woken by every queued and every ended build.
    pub async fn schedule(self: Arc<Self>) {
        loop {
            if let Err(e) = self.start_ready() {
                eprintln!("error: {e}");
            }
            self.wake.notified().await;
        }
    }

    fn start_ready(self: &Arc<Self>) -> Result<(), StoreError> {
        let queued = self.store.queued()?;
        let mut busy: HashSet<String> = self
            .running
            .lock()
            .expect("not poisoned")
            .keys()
            .map(|(p, _)| p.clone())
            .collect();
        for b in queued {
            if busy.contains(&b.project) {
                continue;
            }
            let Some(project) = self.project(&b.project).cloned() else {
                // A project no longer configured: its queued builds cannot run.
                let mut b = b;
                b.status = Status::Cancelled;
                b.error = Some("the project is no longer in the configuration".into());
                b.finished_at = Some(now());
                self.store.put(&b)?;
                continue;
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let token = CancellationToken::new();
            busy.insert(b.project.clone());
            self.running
                .lock()
                .expect("not poisoned")
                .insert((b.project.clone(), b.number), token.clone());
            let server = self.clone();
            tokio::spawn(async move {
                let key = (b.project.clone(), b.number);
                server.run(project, b, token).await;
                server.running.lock().expect("not poisoned").remove(&key);
                drop(permit);
                server.wake.notify_one();
            });
        }
        Ok(())
    }

    async fn run(&self, project: Project, mut b: Build, cancel: CancellationToken) {
        let started = Instant::now();
        b.status = Status::Running;
        b.started_at = Some(now());
        if let Err(e) = self.store.put(&b) {
            eprintln!("error: {e}");
            return;
        }
        eprintln!("started {} #{}", b.project, b.number);
        let log = match Log::create(
            &self.store.log_path(&b.project, b.number),
            self.config.masked(),
        ) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                self.end(&project, b, Status::Failed, Some(e), started);
                return;
            }
        };
        let work = self
            .dir
            .join("work")
            .join(&b.project)
            .join(b.number.to_string());
        // A cancel reaches the pipeline through its token: it stops its steps, jobs and services
        // and reports itself cancelled, as `forge run` does on Ctrl-C.
        let outcome = self
            .build(&project, &mut b, &work, &log, cancel.clone())
            .await;
        let _ = std::fs::remove_dir_all(&work);
        match outcome {
            Ok(report) => {
                b.jobs = report
                    .jobs
                    .iter()
                    .map(|j| JobRecord {
                        name: j.name.clone(),
                        result: job_word(j.result).to_string(),
                        duration_ms: j.duration_ms,
                        coverage: j.coverage.map(|c| c.to_string()),
                        manual: j.manual,
                    })
                    .collect();
                b.pushed = report
                    .images
                    .iter()
                    .flat_map(|i| {
                        let digest = i.digest.clone().unwrap_or_default();
                        i.pushed.iter().map(move |r| format!("{r}@{digest}"))
                    })
                    .collect();
                let status = if report.cancelled || cancel.is_cancelled() {
                    Status::Cancelled
                } else if report.passed {
                    Status::Passed
                } else {
                    Status::Failed
                };
                let error = report
                    .images
                    .iter()
                    .find_map(|i| i.error.as_ref().map(|e| format!("image {}: {e}", i.name)));
                log.line(&format!("build {}", status.as_str()));
                self.end(&project, b, status, error, started);
            }
            Err((status, e)) => {
                log.line(&format!("error: {e}"));
                log.line(&format!("build {}", status.as_str()));
                self.end(&project, b, status, Some(e), started);
            }
        }
    }

    /// Checks out the commit and runs the pipeline.
    async fn build(
        &self,
        project: &Project,
        b: &mut Build,
        work: &Path,
        log: &Arc<Log>,
        cancel: CancellationToken,
    ) -> Result<RunReport, (Status, String)> {
        let failed = |e: String| (Status::Failed, e);
        let _ = std::fs::remove_dir_all(work);
        if let Some(parent) = work.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| failed(format!("{}: {e}", parent.display())))?;
        }
        let request = Request::of(b);
        log.line(&format!(
            "fetching {} at {}",
            project.shown_repo(),
            request
                .commit
                .as_ref()
                .or(request.tag.as_ref())
                .or(request.branch.as_ref())
                .map_or("HEAD", |s| s.as_str())
        ));
        let (url, dest) = (project.repo.clone(), work.to_path_buf());
        let fetch =
            tokio::task::spawn_blocking(move || crate::checkout::fetch(&url, &request, &dest));
        // A remote that accepts and never answers would hold the build (and its project's queue)
        // for ever: a cancel, or the deadline, abandons the fetch. Its thread ends when the
        // remote closes; the build's work folder is its own, so nothing else reads what it writes.
        let checkout = tokio::select! {
            fetched = fetch => fetched
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(format!("fetching {}: {e}", project.shown_repo())))?,
            () = cancel.cancelled() => {
                return Err((Status::Cancelled, "cancelled while fetching".to_string()));
            }
            () = tokio::time::sleep(FETCH_DEADLINE) => {
                return Err(failed(format!(
                    "fetching {}: no end within {} minutes; given up",
                    project.shown_repo(),
                    FETCH_DEADLINE.as_secs() / 60
                )));
            }
        };
        log.line(&format!(
            "checked out {} {}",
            checkout.commit, checkout.message
        ));
        b.commit = Some(checkout.commit.clone());
        // A build of the default branch (the page's Rebuild, an API build naming no branch) is
        // that branch's: its rules, its badge and its notifications read it.
        if b.branch.is_none()
            && b.tag.is_none()
            && let Some(branch) = &checkout.default_branch
        {
            b.branch = Some(branch.clone());
        }
        if b.message.is_none() {
            b.message = Some(self.mask(&checkout.message));
        }
        self.store.put(b).map_err(|e| failed(e.to_string()))?;
        if cancel.is_cancelled() {
            return Err((Status::Cancelled, "cancelled before it ran".to_string()));
        }
        let (name, source) = match &project.what {
            What::Pipeline(path) => {
                // A commit's forge.yaml may be a link: to /etc/shadow (its text would be quoted in
                // the error), to a pipe (the read would never end) or to /dev/zero (capped). Only
                // a regular file of the checkout is read, on the blocking pool.
                let (file, top) = (work.join(path), work.to_path_buf());
                let what = format!("{path} in the repository");
                let text = tokio::task::spawn_blocking(move || {
                    forge_builder::pipeline::run::read_file_inside(
                        &what,
                        &file,
                        &top,
                        forge_builder::api::input::PIPELINE_FILE,
                    )
                })
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(failed)?;
                (path.clone(), text)
            }
            What::Dockerfile { path, tags } => (path.clone(), plain_build(path, tags)),
        };
        let mut builtins: BTreeMap<String, String> = project.variables.clone();
        let commit = checkout.commit.clone();
        for (k, v) in [
            ("FORGE_GIT_SHA", commit.clone()),
            ("FORGE_GIT_SHORT_SHA", commit.chars().take(8).collect()),
            ("FORGE_GIT_BRANCH", b.branch.clone().unwrap_or_default()),
            ("FORGE_GIT_TAG", b.tag.clone().unwrap_or_default()),
            ("FORGE_BUILD_NUMBER", b.number.to_string()),
        ] {
            builtins.insert(k.to_string(), v);
        }
        // `rules: exists:` sees the commit's files (the checkout is a work tree of its own).
        let top = work.to_path_buf();
        let files = tokio::task::spawn_blocking(move || pipeline::git::files(&top))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let options = CheckOptions {
            builtins,
            changed: None,
            files,
        };
        // `include:` reads regular files of the checkout only, on the blocking pool, as the
        // pipeline file is read.
        let (checkout, file_name) = (work.to_path_buf(), name.clone());
        let plan = tokio::task::spawn_blocking(move || {
            let read = |path: &str| {
                forge_builder::pipeline::run::read_file_inside(
                    &format!("included {path} in the repository"),
                    &checkout.join(path),
                    &checkout,
                    forge_builder::api::input::PIPELINE_FILE,
                )
            };
            pipeline::include::load(&file_name, &source, &options, &read)
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
        for w in plan.warning_lines(&name) {
            log.line(&w);
        }
        if let Some(why) = &plan.skipped {
            log.line(&format!(
                "no pipeline for this commit ({why}): nothing is built or run"
            ));
        }
        // What the images build FROM, for registry notifications to match later.
        let dockerfiles: Vec<PathBuf> = plan
            .images
            .iter()
            .map(|image| work.join(&image.context).join(&image.dockerfile))
            .collect();
        let top = work.to_path_buf();
        let bases = tokio::task::spawn_blocking(move || base_images(&top, &dockerfiles))
            .await
            .unwrap_or_default();
        if let Err(e) = self.store.set_bases(&b.project, &bases) {
            eprintln!("error: {e}");
        }
        let run_options = RunOptions {
            base_dir: work.to_path_buf(),
            // A commit's pipeline reads nothing of the server's disk but its own checkout.
            boundary: work.to_path_buf(),
            local_caches_in_boundary: true,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            artifacts_dir: self.store.artifacts_dir(&b.project, b.number),
            secrets: project
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            no_cache: false,
            only: b.only.clone(),
            allow_network_host: false,
            log_limit: self.config.log_limit,
            // A project's runs share their caches, whatever checkout each runs in.
            cache_scope: format!("forge serve project {}", b.project),
        };
        let sink_log = log.clone();
        // Jobs show on the build's page as they start and end, not only when the build does.
        let live = Arc::new(Mutex::new(b.clone()));
        let (store, sink_live) = (self.store.clone(), live.clone());
        let report = forge_builder::pipeline::run::run(
            &self.session,
            &plan,
            &run_options,
            Arc::new(move |e| {
                sink_log.line(&e.line());
                if let Some((job, result, ms)) = job_state(&e) {
                    // A manual job left out is recorded as one at once: an interrupted build's
                    // page still offers to run it.
                    let manual = matches!(&e, PipelineEvent::JobSkipped { manual: true, .. });
                    let mut b = sink_live.lock().expect("not poisoned");
                    match b.jobs.iter_mut().find(|j| j.name == job) {
                        Some(j) => {
                            j.result = result.to_string();
                            j.duration_ms = ms;
                            j.manual |= manual;
                        }
                        None => b.jobs.push(JobRecord {
                            name: job.to_string(),
                            result: result.to_string(),
                            duration_ms: ms,
                            coverage: None,
                            manual,
                        }),
                    }
                    if let Err(e) = store.put(&b) {
                        eprintln!("error: {e}");
                    }
                }
            }),
            cancel,
        )
        .await
        .map_err(|e| failed(e.to_string()));
        b.jobs = live.lock().expect("not poisoned").jobs.clone();
        if let Ok(r) = &report {
            self.note_expiries(b, &plan, r);
        }
        report
    }

    /// Records when the artifacts of `b`'s jobs that give `expire_in` expire (see
    /// [`crate::expire_artifacts`]).
    fn note_expiries(
        &self,
        b: &Build,
        plan: &forge_builder::pipeline::Pipeline,
        report: &forge_builder::pipeline::run::RunReport,
    ) {
        let lines = expiries(plan, report, crate::store::now());
        if lines.is_empty() {
            return;
        }
        let path = self.store.artifacts_expiry_path(&b.project, b.number);
        if let Err(e) = std::fs::write(&path, lines) {
            eprintln!("error: {}: {e}", path.display());
        }
    }

    /// Records the end of `b` and tells whoever the project names.
    fn end(
        &self,
        project: &Project,
        mut b: Build,
        status: Status,
        error: Option<String>,
        started: Instant,
    ) {
        b.status = status;
        b.error = error.map(|e| self.mask(&e));
        b.finished_at = Some(now());
        b.duration_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = self.store.put(&b) {
            eprintln!("error: {e}");
        }
        eprintln!("{} {} #{}", status.as_str(), b.project, b.number);
        let previous = self
            .store
            .previous_result(&b.project, b.number)
            .ok()
            .flatten();
        let Some(outcome) = notify::outcome(previous, status) else {
            return;
        };
        if !notify::should_notify(
            outcome,
            project.notify.on_success,
            project.notify.on_failure,
        ) {
            return;
        }
        let msg = notify::message(&b, outcome, &self.config.base_url);
        let (http, notify_cfg) = (self.http.clone(), project.notify.clone());
        tokio::spawn(async move {
            for url in &notify_cfg.webhooks {
                if let Err(e) = notify::send_webhook(&http, url, &msg).await {
                    eprintln!("warning: notifying {url}: {e}");
                }
            }
            if let Some(smtp) = &notify_cfg.email
                && let Err(e) = notify::send_email(smtp, &msg).await
            {
                eprintln!("warning: mailing {}: {e}", smtp.to.join(", "));
            }
        });
    }
}

/// The base images the plan's Dockerfiles (`dockerfiles`, in the checkout `work`) name
/// (normalised: `docker.io/library/debian`), those written without variables; stages built FROM
/// other stages and `scratch` are not images. A Dockerfile that is not a regular file of the
/// checkout is not read (the run refuses it with its reason).
fn base_images(work: &Path, dockerfiles: &[PathBuf]) -> Vec<String> {
    use forge_builder::frontend::dockerfile::{outline, parser};
    let mut out = Vec::new();
    for path in dockerfiles {
        let Ok(text) = forge_builder::pipeline::run::read_file_inside(
            "a Dockerfile",
            path,
            work,
            forge_builder::api::input::DOCKERFILE,
        ) else {
            continue;
        };
        let Ok(df) = parser::parse(&text) else {
            continue;
        };
        let mut stages: Vec<String> = Vec::new();
        for t in outline::targets(&df) {
            let base = t.base.to_lowercase();
            if base != "scratch"
                && !t.base.contains('$')
                && !stages.contains(&base)
                && let Ok(r) = forge_snapshotter::reference::Reference::parse(&t.base)
                && !out.contains(&r.name())
            {
                out.push(r.name());
            }
            stages.push(t.name.to_lowercase());
        }
    }
    out
}

/// A forge.yaml that builds one Dockerfile: a project without a pipeline.
fn plain_build(dockerfile: &str, tags: &[String]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let tags: Vec<String> = tags.iter().map(|t| quote(t)).collect();
    format!(
        "images:\n  image:\n    context: .\n    dockerfile: {}\n    tags: [{}]\n    push: {}\n",
        quote(dockerfile),
        tags.join(", "),
        !tags.is_empty()
    )
}

/// A job's name, state and time so far, when `e` changes one.
fn job_state(e: &PipelineEvent) -> Option<(&str, &'static str, u64)> {
    match e {
        PipelineEvent::JobStarted { job } => Some((job, "running", 0)),
        PipelineEvent::JobFinished {
            job,
            result,
            duration,
            ..
        } => Some((
            job,
            job_word(*result),
            u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        )),
        PipelineEvent::JobSkipped { job, .. } => Some((job, "skipped", 0)),
        _ => None,
    }
}

fn job_word(r: JobResult) -> &'static str {
    match r {
        JobResult::Passed => "passed",
        JobResult::Failed => "failed",
        JobResult::AllowedFailure => "failed (allowed)",
        JobResult::Cached => "cached",
        JobResult::Skipped => "skipped",
        JobResult::Cancelled => "cancelled",
        JobResult::Running => "running",
        JobResult::Interrupted => "interrupted",
    }
}

/// A build's log file: lines appended as they come, every secret the server holds masked before
/// a byte is written.
struct Log {
    file: Mutex<std::fs::File>,
    mask: Masks,
}

impl Log {
    fn create(path: &Path, masked: Vec<Vec<u8>>) -> Result<Log, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Log {
            file: Mutex::new(file),
            mask: Masks::of(&masked),
        })
    }

    fn line(&self, line: &str) {
        let mut text = self.mask.mask(line);
        text.push('\n');
        let mut f = self.file.lock().expect("not poisoned");
        let _ = f.write_all(text.as_bytes());
    }
}

/// The lines of a build's expiry record ([`crate::store::Store::artifacts_expiry_path`]): for
/// each job that kept artifacts and gives `expire_in`, when (`now` on) and its folder's name.
fn expiries(
    plan: &forge_builder::pipeline::Pipeline,
    report: &forge_builder::pipeline::run::RunReport,
    now: u64,
) -> String {
    report
        .jobs
        .iter()
        .filter_map(|j| {
            let dir = j.artifacts.as_ref()?.file_name()?.to_str()?.to_string();
            let after = plan
                .jobs
                .iter()
                .find(|p| p.name == j.name)?
                .artifacts
                .as_ref()?
                .expire_in?;
            Some(format!("{} {dir}\n", now.saturating_add(after.as_secs())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_build_is_a_one_image_pipeline() {
        let src = plain_build("docker/Dockerfile", &["127.0.0.1:5000/a:1".to_string()]);
        let plan = pipeline::load("p", &src, &CheckOptions::default()).unwrap();
        assert_eq!(plan.images.len(), 1);
        let src = plain_build("Dockerfile", &[]);
        pipeline::load("p", &src, &CheckOptions::default()).unwrap();
    }

    #[test]
    fn a_build_records_when_each_job_s_artifacts_expire() {
        let src = "jobs:\n  unit:\n    image: alpine\n    script: [x]\n    artifacts:\n      \
                   paths: [out]\n      expire_in: 1 week\n  lint:\n    image: alpine\n    \
                   script: [x]\n    artifacts:\n      paths: [out]\n      expire_in: never\n  \
                   docs:\n    image: alpine\n    script: [x]\n    artifacts:\n      paths: \
                   [out]\n      expire_in: 2 hrs\n";
        let plan = pipeline::load("p", src, &CheckOptions::default()).unwrap();
        let job = |name: &str, kept: bool| forge_builder::pipeline::run::JobReport {
            name: name.into(),
            result: JobResult::Passed,
            exit_code: Some(0),
            duration_ms: 1,
            reason: None,
            junit: None,
            artifacts: kept.then(|| PathBuf::from(format!("/srv/artifacts/app/7/{name}"))),
            coverage: None,
            manual: false,
        };
        let report = RunReport {
            passed: true,
            cancelled: false,
            images: Vec::new(),
            jobs: vec![job("unit", true), job("lint", true), job("docs", false)],
            junit: None,
            duration: std::time::Duration::from_secs(1),
        };
        // `never` and a job that kept nothing have no line.
        assert_eq!(expiries(&plan, &report, 1000), "605800 unit\n");
    }

    #[test]
    fn a_log_masks_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/1.log");
        let log = Log::create(&path, vec![b"hunter2".to_vec(), b"hunter2-long".to_vec()]).unwrap();
        log.line("token hunter2-long and hunter2");
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "token **** and ****\n"
        );
    }
}
