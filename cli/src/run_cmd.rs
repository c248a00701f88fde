//! `forge run`: pipelines from forge.yaml. `--check` validates the file and prints the plan;
//! without it the pipeline runs (builds, jobs, gated pushes), its progress printed line by line
//! with each job's name, and the run kept in the store's history (`forge history`, `forge logs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use forge_builder::api::input::PIPELINE_FILE;
use forge_builder::pipeline::history::{History, JobResult, LogWriter, RunHandle, RunResult};
use forge_builder::pipeline::run::{PipelineEvent, RunOptions, RunReport};
use forge_builder::pipeline::{self, CheckOptions, git};
use forge_builder::solver::CancellationToken;
use forge_snapshotter::store::default_root;

use crate::build_cmd::{Entitlement, SessionArgs, cancel_on_signal};
use crate::{Failure, display_name, failed, read, usage};

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Validate the file and print the plan (stages, jobs after matrix expansion, their images,
    /// needs, services and what their rules decided), without running anything.
    #[arg(long)]
    check: bool,
    /// Run only these jobs (a matrix job's written name runs all its instances) and what they
    /// need.
    #[arg(value_name = "JOB")]
    only: Vec<String>,
    /// The pipeline file.
    #[arg(short = 'f', long = "file", default_value = "forge.yaml")]
    file: PathBuf,
    /// The value of FORGE_BUILD_NUMBER (default: the next number of this pipeline's counter in the
    /// store; empty for --check unless given).
    #[arg(long = "build-number", value_name = "N")]
    build_number: Option<u64>,
    /// `rules: changes:` compare with this git revision (default: the commit of the pipeline's
    /// last passed run; without one, `changes:` rules match).
    #[arg(long = "changed-since", value_name = "REF")]
    changed_since: Option<String>,
    /// Most jobs and image builds at once (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Artifacts are copied below DIR/JOB/.
    #[arg(
        long = "artifacts-dir",
        value_name = "DIR",
        default_value = "forge-artifacts"
    )]
    artifacts_dir: PathBuf,
    /// A secret for the jobs that list it: NAME (from the environment variable NAME) or
    /// NAME=file:PATH; repeatable. A secret the file names and no flag gives is read from the
    /// environment variable of its name.
    #[arg(long = "secret", value_name = "NAME[=file:PATH]")]
    secrets: Vec<String>,
    /// Run every build step and job, reusing no recorded result.
    #[arg(long)]
    no_cache: bool,
    /// Grant an entitlement (network.host: jobs with `network: host`); repeatable.
    #[arg(long = "allow", value_enum, value_name = "ENTITLEMENT")]
    allow: Vec<Entitlement>,
    /// The most output kept of one job (each try), one service or one image build's steps, as
    /// `4m` or `512k`; past it the rest is left out of the log, once said, and the job goes on.
    /// `0`: no limit.
    #[arg(long = "log-limit", value_name = "SIZE", default_value = "4m", value_parser = parse_log_limit)]
    log_limit: u64,
    /// Write the run's result as JSON here: each image's digest and pushed references, each job's
    /// result.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    #[command(flatten)]
    session: SessionArgs,
    /// How jobs' lines are shown: plain (each line as it comes, prefixed with its job's name),
    /// grouped (each job's lines together, under a heading, when it ends), auto (grouped on a
    /// terminal, plain otherwise).
    #[arg(long, value_enum, default_value = "auto")]
    progress: RunProgress,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RunProgress {
    Auto,
    Plain,
    Grouped,
}

/// `forge history` and `forge logs`: which pipeline, which store.
#[derive(Args)]
pub(crate) struct HistoryArgs {
    /// The pipeline file whose runs are listed.
    #[arg(short = 'f', long = "file", default_value = "forge.yaml")]
    file: PathBuf,
    /// The store directory.
    #[arg(long, env = "FORGE_ROOT")]
    pub(crate) root: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct LogsArgs {
    /// The run's number (as `forge history` lists it).
    run: u64,
    /// The job (a matrix job's name gives each of its cells' logs); every job's log, one after
    /// the other, when not given.
    job: Option<String>,
    #[command(flatten)]
    history: HistoryArgs,
}

/// The store `--root` names, else the default one.
pub(crate) fn store_root(root: &Option<PathBuf>) -> Result<PathBuf, Failure> {
    match root {
        Some(r) => Ok(r.clone()),
        None => default_root().map_err(|e| failed(format!("error: {e}"))),
    }
}

/// The history of the pipeline in `file`: keyed by the file's absolute path, so two checkouts
/// keep two histories and a pipeline keeps its numbers wherever it is run from.
fn history_of(file: &Path, root: &Path) -> Result<History, Failure> {
    let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    History::open(root, &key.to_string_lossy()).map_err(|e| failed(format!("error: {e}")))
}

pub(crate) fn run(args: &RunArgs) -> Result<(), Failure> {
    if args.check {
        return crate::run_plan::check(&args.file, args.build_number);
    }
    let name = display_name(&args.file);
    let src = read(&args.file, PIPELINE_FILE)?;
    let base_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let git = git::describe(&base_dir).map_err(|e| failed(format!("error: {e}")))?;
    let root = store_root(&args.session.root)?;
    let history = history_of(&args.file, &root)?;
    // Warnings and notes on what `changes:` compare, said once the file has checked and the run
    // has its number (a bad file gets its errors alone).
    let mut notes: Vec<String> = Vec::new();
    // Images are built from the work tree: what differs there from HEAD is changed too. Forge's
    // own outputs in the work tree (artifacts, the metadata file, and the store itself, as
    // `--root .forge` puts it in a CI workspace) are not.
    let mut outputs = vec![args.artifacts_dir.clone(), root.clone()];
    outputs.extend(args.metadata_file.clone());
    let work_tree = git::work_tree_changes(&base_dir, &outputs);
    // Not known to be clean is dirty: such a run is no `changes:` baseline.
    let dirty = match &work_tree {
        Ok(None) => false,
        Ok(Some(w)) => !w.is_empty(),
        Err(_) => true,
    };
    let work_tree = match work_tree {
        Ok(w) => Some(w.unwrap_or_default()),
        Err(e) => {
            notes.push(format!(
                "warning: {e}: every `changes:` rule matches (the work tree's edits cannot be told)"
            ));
            None
        }
    };
    if let Some(w) = &work_tree
        && !w.is_empty()
    {
        notes.push(format!(
            "note: the work tree differs from HEAD in {} file(s) ({}): `changes:` rules count them, and this run will be no `changes:` baseline for later runs",
            w.len(),
            pipeline::first_few(w, 5)
        ));
    }
    let since = match &args.changed_since {
        Some(r) => Some(r.clone()),
        None => history
            .last_passed_commit()
            .map_err(|e| failed(format!("error: {e}")))?,
    };
    let changed = match &since {
        Some(rev) => {
            // Asked for by name, a comparison that cannot be made is an error, not a run where
            // every `changes:` rule matches; except in a shallow clone, where the revision may
            // exist beyond the cut (GitLab then treats `changes:` as true).
            let what = match &args.changed_since {
                Some(asked) => format!("--changed-since {asked}"),
                None => format!(
                    "the last passed run's commit {}",
                    rev.get(..12).unwrap_or(rev)
                ),
            };
            let shown_dir = std::path::absolute(&base_dir).unwrap_or_else(|_| base_dir.clone());
            // Asked for by name, the revision is what the branch is compared with, as GitLab
            // compares a merge request from its merge base; a baseline is what was tested.
            let compare = if args.changed_since.is_some() {
                git::Compare::MergeBase
            } else {
                git::Compare::Tree
            };
            let committed = match git::changed_since(&base_dir, rev, compare) {
                Ok(Some(c)) => Some(c),
                Ok(None) => {
                    if args.changed_since.is_some() {
                        return Err(failed(format!(
                            "error: {what}: {} is in no git repository, so nothing can be compared",
                            shown_dir.display()
                        )));
                    }
                    None
                }
                Err(git::GitError::Shallow { .. }) => {
                    notes.push(format!(
                        "warning: {what}: not in the history of this shallow clone ({}), so every `changes:` rule matches; fetch the history to compare (GitLab CI: `GIT_DEPTH: 0`; GitHub Actions: `fetch-depth: 0`; by hand: `git fetch --deepen N` or `git fetch --unshallow`)",
                        shown_dir.display()
                    ));
                    None
                }
                Err(e) if args.changed_since.is_some() => {
                    return Err(failed(format!("error: {what}: {e}")));
                }
                // The baseline forge chose is gone (history rewritten, another clone): as GitLab
                // when it cannot find its compare_to commit.
                Err(e) => {
                    notes.push(format!(
                        "warning: {what}: {e}; every `changes:` rule matches"
                    ));
                    None
                }
            };
            committed.zip(work_tree).map(|(mut c, w)| {
                c.extend(w);
                c.sort();
                c.dedup();
                c
            })
        }
        None => None,
    };
    let mut builtins: BTreeMap<String, String> = git
        .variables()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // The file is checked before a run number is taken: a bad file uses up no number.
    // The files `rules: exists:` globs look for: the work tree's, as git sees them.
    let files = match git::files(&base_dir) {
        Ok(f) => f,
        Err(e) => {
            errln!(
                "warning: {e}: every `exists:` rule matches (the repository's files cannot be listed)"
            );
            None
        }
    };
    let mut options = CheckOptions {
        builtins: builtins.clone(),
        changed: changed.clone(),
        files,
    };
    let checked = crate::run_plan::load(&args.file, &name, &src, &options)?;
    for w in checked.warning_lines(&name) {
        errln!("{w}");
    }
    // GitLab makes no pipeline then, and uses up no number.
    if let Some(why) = &checked.skipped {
        outln!("{name}: no pipeline for this run ({why})");
        return Ok(());
    }
    let mut secrets = read_secrets(&args.secrets)?;
    // Secrets the file names and no flag gives come from the environment.
    for j in &checked.jobs {
        for s in &j.secrets {
            if !secrets.contains_key(s)
                && let Some(v) = std::env::var_os(s)
            {
                secrets.insert(s.clone(), v.into_encoded_bytes());
            }
        }
    }
    for (k, v) in &secrets {
        if String::from_utf8_lossy(v).trim().len() < 3 {
            errln!(
                "warning: secret {k} is shorter than 3 characters: too short to mask, it shows \
                 wherever a job prints it"
            );
        }
    }
    // A pipeline reads the host only inside its repository (or its own directory, outside one).
    let boundary = git::work_tree(&base_dir)
        .map_err(|e| failed(format!("error: {e}")))?
        .unwrap_or_else(|| base_dir.clone());
    let mut run_options = RunOptions {
        base_dir,
        boundary,
        local_caches_in_boundary: false,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        artifacts_dir: args.artifacts_dir.clone(),
        secrets,
        no_cache: args.no_cache,
        only: args.only.clone(),
        allow_network_host: args.allow.contains(&Entitlement::NetworkHost),
        log_limit: (args.log_limit > 0).then_some(args.log_limit),
        // As the history is kept: by the file's absolute path.
        cache_scope: std::fs::canonicalize(&args.file)
            .unwrap_or_else(|_| args.file.clone())
            .to_string_lossy()
            .into_owned(),
    };
    // What would refuse the run (a missing secret, an ungranted host network) refuses it before
    // a number is taken too.
    forge_builder::pipeline::run::preflight(&checked, &run_options)
        .map_err(|e| failed(format!("error: {name}: {e}")))?;
    let mut handle = history
        .start(args.build_number, &git.sha, &git.branch, &args.only)
        .map_err(|e| failed(format!("error: {e}")))?;
    handle
        .mark_no_baseline(dirty, args.changed_since.as_deref())
        .map_err(|e| failed(format!("error: {e}")))?;
    builtins.insert(
        "FORGE_BUILD_NUMBER".to_string(),
        handle.number().to_string(),
    );
    options.builtins = builtins;
    let plan = crate::run_plan::load(&args.file, &name, &src, &options)?;
    let session = args.session.open(&root)?;
    run_options.jobs = run_options.jobs.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let number = handle.number();
    // A closed stdout (a reader that went away) must not stop the run: lines are best effort.
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "run {number} of {name}");
    }
    for n in &notes {
        errln!("{n}");
    }
    let grouped = match args.progress {
        RunProgress::Grouped => true,
        RunProgress::Plain => false,
        RunProgress::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let printer = Arc::new(Printer {
        handle: Mutex::new(Some(handle)),
        logs: Mutex::new(HashMap::new()),
        groups: grouped.then(|| Mutex::new(HashMap::new())),
    });
    let sink_printer = printer.clone();
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        let interrupt = tokio::spawn(cancel_on_signal(cancel.clone()));
        // The jobs' logs reach the disk while they run: a killed forge loses at most the last
        // quarter second of them.
        let flusher = {
            let printer = printer.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    let printer = printer.clone();
                    let _ = tokio::task::spawn_blocking(move || printer.flush_logs()).await;
                }
            })
        };
        let r = forge_builder::pipeline::run::run(
            &session,
            &plan,
            &run_options,
            Arc::new(move |e| sink_printer.event(e)),
            cancel,
        )
        .await;
        interrupt.abort();
        flusher.abort();
        r
    });
    crate::build_cmd::note_isolation(&session);
    let handle = printer.handle.lock().expect("not poisoned").take();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(h) = handle {
                let _ = h.finish(RunResult::Failed, Duration::ZERO);
            }
            return Err(failed(format!("error: {}: {e}", name)));
        }
    };
    if let Some(h) = handle {
        let result = if report.cancelled {
            RunResult::Cancelled
        } else if report.passed {
            RunResult::Passed
        } else {
            RunResult::Failed
        };
        h.finish(result, report.duration)
            .map_err(|e| failed(format!("error: recording the run: {e}")))?;
    }
    if let Some(p) = &args.metadata_file {
        let json = serde_json::to_vec_pretty(&report).expect("a report serialises");
        std::fs::write(p, json)
            .map_err(|e| failed(format!("error: writing {}: {e}", p.display())))?;
    }
    {
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), "{}", summary(number, &report));
    }
    if report.passed {
        Ok(())
    } else {
        let failed_jobs = report.failed_jobs();
        let what = if report.cancelled {
            "cancelled".to_string()
        } else if failed_jobs.is_empty() {
            "failed".to_string()
        } else {
            format!("failed: job {} failed", failed_jobs.join(", "))
        };
        Err(failed(format!("error: run {number} {what}")))
    }
}

/// `--secret NAME` and `--secret NAME=file:PATH`.
fn read_secrets(specs: &[String]) -> Result<HashMap<String, Vec<u8>>, Failure> {
    let mut out = HashMap::new();
    for spec in specs {
        let (name, value) = match spec.split_once('=') {
            Some((name, src)) => {
                let Some(path) = src.strip_prefix("file:") else {
                    return Err(usage(format!(
                        "error: invalid --secret {spec:?}: expected NAME or NAME=file:PATH"
                    )));
                };
                let v = forge_builder::mask::read_secret_file(path.as_ref()).map_err(|e| {
                    failed(format!("error: cannot read secret {name} from {path}: {e}"))
                })?;
                (name.to_string(), v)
            }
            None => {
                let v = std::env::var_os(spec).ok_or_else(|| {
                    failed(format!(
                        "error: secret {spec}: environment variable {spec} is not set"
                    ))
                })?;
                (spec.clone(), v.into_encoded_bytes())
            }
        };
        if name.is_empty() {
            return Err(usage(format!("error: invalid --secret {spec:?}: no name")));
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// Prints events as lines (each job's prefixed with its name) and keeps each job's log in the
/// run's history.
struct Printer {
    handle: Mutex<Option<RunHandle>>,
    logs: Mutex<HashMap<String, LogWriter>>,
    /// Grouped output: each running job's lines, printed together when it ends.
    groups: Option<Mutex<HashMap<String, Vec<String>>>>,
}

impl Printer {
    fn event(&self, e: PipelineEvent) {
        use std::io::Write as _;
        let text = match &e {
            PipelineEvent::JobLine { job, line, cached } => {
                self.log_line(job, line);
                if let Some(groups) = &self.groups {
                    let mut g = groups.lock().expect("not poisoned");
                    g.entry(job.clone()).or_default().push(format!(
                        "  {}{line}",
                        if *cached { "(cached) " } else { "" }
                    ));
                    return;
                }
                e.line()
            }
            PipelineEvent::JobFinished {
                job,
                result,
                duration,
                coverage,
                ..
            } => {
                self.job_done(job, *result, *duration, coverage.clone());
                let end = e.line();
                match &self.groups {
                    Some(groups) => {
                        let lines = groups
                            .lock()
                            .expect("not poisoned")
                            .remove(job)
                            .unwrap_or_default();
                        let mut block = format!("-- {end}");
                        for l in lines {
                            block.push('\n');
                            block.push_str(&l);
                        }
                        block
                    }
                    None => end,
                }
            }
            PipelineEvent::JobSkipped { job, .. } => {
                self.job_done(job, JobResult::Skipped, Duration::ZERO, None);
                e.line()
            }
            PipelineEvent::JobStarted { job } => {
                if let Some(h) = self.handle.lock().expect("not poisoned").as_mut()
                    && let Err(e) = h.job_started(job)
                {
                    errln!("warning: job {job}: not recorded in the history: {e}");
                }
                e.line()
            }
            _ => e.line(),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// Writes out every log's lines so far (see [`LogWriter::flush`]); a log that cannot be
    /// written says so when its job ends.
    fn flush_logs(&self) {
        for log in self.logs.lock().expect("not poisoned").values_mut() {
            let _ = log.flush();
        }
    }

    fn log_line(&self, job: &str, line: &str) {
        let mut logs = self.logs.lock().expect("not poisoned");
        if !logs.contains_key(job) {
            let handle = self.handle.lock().expect("not poisoned");
            if let Some(w) = handle.as_ref().and_then(|h| h.log(job).ok()) {
                logs.insert(job.to_string(), w);
            }
        }
        if let Some(w) = logs.get_mut(job)
            && let Err(e) = w.line(line)
        {
            errln!("warning: job {job}: its log is not kept: {e}");
            logs.remove(job);
        }
    }

    fn job_done(&self, job: &str, result: JobResult, duration: Duration, coverage: Option<String>) {
        let log = self.logs.lock().expect("not poisoned").remove(job);
        let done = match log.map(LogWriter::finish) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errln!("warning: job {job}: its log is not kept: {e}");
                None
            }
            None => None,
        };
        if let Some(h) = self.handle.lock().expect("not poisoned").as_mut()
            && let Err(e) = h.job_done(job, result, duration, done, coverage)
        {
            errln!("warning: job {job}: not recorded in the history: {e}");
        }
    }
}

/// The end of a run as text: counts, test results, what was pushed and what was held back.
pub(crate) fn summary(number: u64, r: &RunReport) -> String {
    let mut out = String::new();
    let count = |f: &dyn Fn(JobResult) -> bool| r.jobs.iter().filter(|j| f(j.result)).count();
    let ran = count(&|x| {
        matches!(
            x,
            JobResult::Passed | JobResult::Failed | JobResult::AllowedFailure
        )
    });
    let cached = count(&|x| x == JobResult::Cached);
    let failed_n = count(&|x| x == JobResult::Failed);
    let skipped = count(&|x| x == JobResult::Skipped);
    let verdict = if r.cancelled {
        "cancelled"
    } else if r.passed {
        "passed"
    } else {
        "failed"
    };
    let _ = writeln!(
        out,
        "run {number} {verdict} in {:.1}s: jobs {ran} ran, {cached} cached, {failed_n} failed, {skipped} skipped",
        r.duration.as_secs_f64()
    );
    for j in &r.jobs {
        if matches!(j.result, JobResult::Failed | JobResult::AllowedFailure) {
            let why = match (&j.reason, j.exit_code) {
                (Some(reason), _) => reason.clone(),
                (None, Some(c)) => format!("exit status {c}"),
                (None, None) => "failed".to_string(),
            };
            // An allowed failure is not among the run's failed jobs: the line says so.
            let what = if j.result == JobResult::AllowedFailure {
                "failed, allowed"
            } else {
                "failed"
            };
            let _ = writeln!(out, "  {what}: {} ({why})", j.name);
        }
    }
    if let Some(t) = &r.junit {
        let _ = writeln!(
            out,
            "  tests: {} passed, {} failed, {} errors, {} skipped",
            t.passed, t.failed, t.errored, t.skipped
        );
        for f in &t.failures {
            let _ = writeln!(out, "    failed test: {}", f.name);
        }
    }
    for i in &r.images {
        if !i.pushed.is_empty() {
            let _ = writeln!(out, "  pushed: {}", i.pushed.join(", "));
        }
        if !i.held.is_empty() {
            let _ = writeln!(
                out,
                "  not pushed: {} ({} did not pass)",
                i.held.join(", "),
                i.held_by.join(", ")
            );
        }
        if let Some(e) = &i.error {
            let _ = writeln!(out, "  image {}: {e}", i.name);
        }
    }
    for j in &r.jobs {
        if let Some(a) = &j.artifacts {
            let _ = writeln!(out, "  artifacts of {}: {}", j.name, a.display());
        }
    }
    out
}

/// `forge history`: the pipeline's runs, oldest first.
pub(crate) fn history(args: &HistoryArgs) -> Result<(), Failure> {
    let root = store_root(&args.root)?;
    let h = history_of(&args.file, &root)?;
    let runs = h.list().map_err(|e| failed(format!("error: {e}")))?;
    if runs.is_empty() {
        outln!("no runs of {} yet", display_name(&args.file));
        return Ok(());
    }
    outln!(
        "{:>6}  {:<10}  {:<11}  {:<16}  {:>9}  {:>4} {:>6} {:>6}",
        "RUN",
        "COMMIT",
        "RESULT",
        "BRANCH",
        "DURATION",
        "RAN",
        "CACHED",
        "FAILED"
    );
    let mut any_dirty = false;
    for r in runs {
        let (ran, cached, failed_n) = r.counts();
        let result = format!("{:?}", r.result).to_lowercase();
        any_dirty |= r.dirty;
        let commit = format!(
            "{}{}",
            r.commit.get(..8).unwrap_or(&r.commit),
            if r.dirty { "+" } else { "" }
        );
        outln!(
            "{:>6}  {:<10}  {:<11}  {:<16}  {:>8.1}s  {:>4} {:>6} {:>6}",
            r.number,
            commit,
            result,
            r.branch,
            r.duration_ms as f64 / 1000.0,
            ran,
            cached,
            failed_n
        );
    }
    if any_dirty {
        outln!(
            "+: run on a work tree that differed from its commit (what it tested is not that \
             commit, and it is no baseline for changes: rules)"
        );
    }
    Ok(())
}

/// `forge logs RUN [JOB]`.
pub(crate) fn logs(args: &LogsArgs) -> Result<(), Failure> {
    let root = store_root(&args.history.root)?;
    let h = history_of(&args.history.file, &root)?;
    let mut out = std::io::stdout().lock();
    match &args.job {
        Some(job) => h
            .copy_log(args.run, job, &mut out)
            .map_err(|e| failed(format!("error: {e}"))),
        None => {
            let run = h.run(args.run).map_err(|e| failed(format!("error: {e}")))?;
            for j in run.jobs.iter().filter(|j| j.log.is_some()) {
                use std::io::Write as _;
                let _ = writeln!(out, "== {} ({})", j.name, j.result.word());
                h.copy_log(args.run, &j.name, &mut out)
                    .map_err(|e| failed(format!("error: {e}")))?;
            }
            Ok(())
        }
    }
}

impl RunArgs {
    /// Only validates: no user namespace, store or runner is needed.
    pub(crate) fn check_only(&self) -> bool {
        self.check
    }
}

/// `--log-limit`: a size as docker reads `--memory` (`4m`, `512k`, `1g`, bytes without a unit).
fn parse_log_limit(s: &str) -> Result<u64, String> {
    forge_runner::Bytes::parse_size(s).map(|b| b.0)
}
