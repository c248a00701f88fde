//! A job's part of a run: its spec (image, artifact layers of the jobs it needs, variables,
//! secrets), its services in a network it shares with them, its tries (`retry`), and what it
//! leaves: a verdict, artifacts on the host and for later jobs, a JUnit summary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::clip::Clip;
use super::job::{self, JobImage, JobSpec};
use super::{
    End, JobLeft, JobReport, Left, Node, PipelineEvent, Runner, artifacts, env_name, path_cache,
    read_junit, retry_reason, stop_services,
};
use crate::events::Events;
use crate::export::config;
use crate::pipeline::coverage::Coverage;
use crate::pipeline::file::{ArtifactsWhen, Network, RetryWhen};
use crate::pipeline::history::JobResult;
use crate::pipeline::{ImageUse, JobPlan, Need};
use crate::source::image::{BaseImage, pull_base};

impl Runner {
    pub(super) async fn job(&self, name: &str, inputs: &HashMap<Node, Left>) -> (End, Left) {
        let start = Instant::now();
        let plan = self
            .plan
            .jobs
            .iter()
            .find(|j| j.name == name)
            .expect("a unit is a job of the plan");
        self.emit(PipelineEvent::JobStarted { job: name.into() });
        let fail = |reason: String| {
            // A reason may quote what a step or a service's probe printed.
            let reason = self.masks.mask(&reason);
            let result = if plan.allow_failure {
                JobResult::AllowedFailure
            } else {
                JobResult::Failed
            };
            self.emit(PipelineEvent::JobFinished {
                job: name.into(),
                result,
                exit_code: None,
                duration: start.elapsed(),
                error: Some(reason.clone()),
                coverage: None,
            });
            (
                if plan.allow_failure {
                    End::Ok
                } else {
                    End::Failed
                },
                Left::Job(
                    JobLeft::default(),
                    JobReport {
                        name: name.into(),
                        result,
                        exit_code: None,
                        duration_ms: start.elapsed().as_millis() as u64,
                        reason: Some(reason),
                        junit: None,
                        artifacts: None,
                        coverage: None,
                        manual: false,
                    },
                ),
            )
        };
        // GitLab's `resource_group:`: held from before the first try to the job's end.
        let _group = match &plan.resource_group {
            Some(g) => match self.resource_group(name, g).await {
                Ok(held) => Some(held),
                Err(e) => return fail(e),
            },
            None => None,
        };
        let max_retries = plan.retry.as_ref().map_or(0, |r| r.max);
        let mut attempt = 0u8;
        let (spec, verdict, coverage) = loop {
            let tried = self.attempt(plan, inputs).await;
            let failure = match &tried {
                Ok((_, v, _)) if v.passed() || v.error.as_deref() == Some("cancelled") => None,
                Ok((_, v, _)) if v.exit_code.is_none() => Some(RetryWhen::JobExecutionTimeout),
                Ok(_) => Some(RetryWhen::ScriptFailure),
                Err((kind, _)) => Some(*kind),
            };
            if let Some(kind) = failure
                && attempt < max_retries
                && !self.cancel.is_cancelled()
                && plan.retry.as_ref().is_some_and(|r| {
                    r.when.is_empty()
                        || r.when.contains(&RetryWhen::Always)
                        || r.when.contains(&kind)
                        || (kind == RetryWhen::JobExecutionTimeout
                            && r.when.contains(&RetryWhen::StuckOrTimeoutFailure))
                })
            {
                attempt += 1;
                self.emit(PipelineEvent::JobLine {
                    job: name.into(),
                    line: format!(
                        "forge: retrying after {}: attempt {} of {}",
                        retry_reason(kind),
                        attempt + 1,
                        max_retries + 1
                    ),
                    cached: false,
                });
                continue;
            }
            match tried {
                Ok(t) => break t,
                Err((_, e)) => return fail(e),
            }
        };
        let passed = verdict.passed();
        let result = if verdict.error.as_deref() == Some("cancelled") {
            JobResult::Cancelled
        } else if passed && verdict.cached {
            JobResult::Cached
        } else if passed {
            JobResult::Passed
        } else if plan.allow_failure
            || verdict
                .exit_code
                .is_some_and(|c| plan.allow_failure_codes.contains(&c))
        {
            JobResult::AllowedFailure
        } else {
            JobResult::Failed
        };
        // Artifacts and reports, as `when:` says.
        let mut error = verdict.error.as_ref().map(|e| self.masks.mask(e));
        let mut kept = None;
        let mut artifact_dir = None;
        let mut junit = None;
        let kept_workdir = spec.image.config.working_dir.clone();
        // A run that left nothing at any artifact or cache path took nothing out (`None`): each
        // path matched nothing, and says so as when another path did match.
        if let Some(a) = &plan.artifacts {
            let taken = verdict.artifacts.as_ref();
            let keep = match a.when {
                ArtifactsWhen::OnSuccess => passed,
                ArtifactsWhen::OnFailure => !passed,
                ArtifactsWhen::Always => true,
            };
            let workdir = spec.image.config.working_dir.clone();
            let store = self.session.store().clone();
            let dest = self.artifacts_on_host(name);
            let paths = artifacts::absolute_all(&workdir, &a.paths);
            let exclude = artifacts::absolute_all(&workdir, &a.exclude);
            let reports = artifacts::absolute_all(&workdir, &a.junit);
            let written = a.paths.clone();
            let written_reports = a.junit.clone();
            let taken = taken.cloned();
            let origin = name.to_string();
            // The artifacts layer goes on to the jobs that need it whatever becomes of its copy
            // on the host or of the reports' reading (an unwritable `--artifacts-dir`, a JUnit
            // file cut short by a killed test runner): those are said with the job's result.
            let masks = self.masks.clone();
            let report_masks = masks.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut notes = Vec::new();
                let mut unmatched = Vec::new();
                let kept = if keep && !paths.is_empty() {
                    let s = artifacts::select(&store, taken.as_ref(), &paths, &exclude)?;
                    unmatched.extend(s.unmatched.iter().map(|&i| written[i].clone()));
                    s.layer
                } else {
                    None
                };
                let mut copied = None;
                if let Some(k) = &kept {
                    match artifacts::extract_relative(&store, k, &workdir, &dest) {
                        Ok(()) => copied = Some(dest),
                        Err(e) => notes.push(format!("not copied out: {e}")),
                    }
                } else if let Err(e) = artifacts::forget_on_host(&dest) {
                    // An earlier run's files are not this run's artifacts.
                    notes.push(e);
                }
                // Reports are read whatever the result (a failed run's are the ones that matter).
                let junit = if reports.is_empty() {
                    None
                } else {
                    match artifacts::select(&store, taken.as_ref(), &reports, &[]).and_then(|s| {
                        unmatched.extend(s.unmatched.iter().map(|&i| written_reports[i].clone()));
                        s.layer
                            .map(|d| read_junit(&store, &d, &origin, &report_masks))
                            .transpose()
                    }) {
                        Ok(j) => j,
                        Err(e) => {
                            notes.push(e);
                            None
                        }
                    }
                };
                Ok::<_, String>((kept, junit, copied, notes, unmatched))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let said =
                match done {
                    Ok((k, j, copied, notes, unmatched)) => {
                        // As GitLab's runner warns of a path that matched nothing (a typo, or a
                        // path relative to the wrong directory), in the job's log.
                        for path in unmatched {
                            self.emit(PipelineEvent::JobLine {
                            job: name.into(),
                            line: masks.mask(&format!(
                                "forge: warning: artifacts: {path}: no matching files (paths are \
                                 relative to the job's working directory, {})",
                                if kept_workdir.is_empty() { "/" } else { &kept_workdir }
                            )),
                            cached: false,
                        });
                        }
                        artifact_dir = copied;
                        kept = k;
                        junit = j;
                        notes
                    }
                    Err(e) => vec![e],
                };
            if !said.is_empty() {
                // The paths in an error are the job's own names, which may hold a secret.
                let said = format!("artifacts: {}", masks.mask(&said.join("; ")));
                error = Some(match error {
                    Some(e) => format!("{e}; {said}"),
                    None => said,
                });
            }
        }
        // Its dotenv variables go on with its artifacts, when they are kept.
        let mut dotenv = Vec::new();
        if kept.is_some()
            && let (Some(a), Some(taken)) = (&plan.artifacts, &verdict.artifacts)
            && !a.dotenv.is_empty()
        {
            dotenv = self
                .read_dotenv(plan, &kept_workdir, &a.dotenv, taken)
                .await;
        }
        if !verdict.cached && result != JobResult::Cancelled {
            self.save_caches(plan, &spec, verdict.artifacts.as_ref(), passed)
                .await;
        }
        let duration = start.elapsed();
        self.emit(PipelineEvent::JobFinished {
            job: name.into(),
            result,
            exit_code: verdict.exit_code,
            duration,
            error: error.clone(),
            coverage: coverage.clone(),
        });
        let end = match result {
            JobResult::Passed | JobResult::Cached | JobResult::AllowedFailure => End::Ok,
            _ => End::Failed,
        };
        (
            end,
            Left::Job(
                JobLeft {
                    artifacts: kept,
                    workdir: kept_workdir,
                    dotenv,
                },
                JobReport {
                    name: name.into(),
                    result,
                    exit_code: verdict.exit_code,
                    duration_ms: duration.as_millis() as u64,
                    reason: error,
                    junit,
                    artifacts: artifact_dir,
                    coverage: coverage.and_then(|c| c.parse().ok()),
                    manual: false,
                },
            ),
        )
    }

    /// One try of a job: its spec, then its solve. A failure before a verdict says what kind it
    /// was, for `retry: when:`.
    async fn attempt(
        &self,
        plan: &JobPlan,
        inputs: &HashMap<Node, Left>,
    ) -> Result<(JobSpec, job::JobVerdict, Option<String>), (RetryWhen, String)> {
        let spec = self
            .job_spec(plan, inputs)
            .await
            .map_err(|e| (RetryWhen::UnmetPrerequisites, e))?;
        let sink = self.sink.clone();
        let job_name = plan.name.clone();
        let cached_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cached_flag.clone();
        // Each try has the whole limit: a retry's output is not cut for its first try's.
        let clip = Clip::new(self.options.log_limit);
        let what = format!("job {job_name}");
        // `coverage:` reads every line the try prints (or a recorded verdict replays), before the
        // log limit cuts any.
        let coverage = plan
            .coverage
            .as_deref()
            .and_then(Coverage::new)
            .map(|c| Arc::new(std::sync::Mutex::new(c)));
        let reader = coverage.clone();
        let line: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |l: &str| {
            if let Some(c) = &reader {
                c.lock().unwrap_or_else(|e| e.into_inner()).line(l);
            }
            let Some(line) = clip.pass(l, &what) else {
                return;
            };
            sink(PipelineEvent::JobLine {
                job: job_name.clone(),
                line,
                cached: flag.load(std::sync::atomic::Ordering::Relaxed),
            })
        });
        let verdict = self
            .session
            .solve_job(&spec, line, self.cancel.child_token(), cached_flag)
            .await
            .map_err(|e| (RetryWhen::RunnerSystemFailure, crate::api::render_chain(&e)))?;
        let found = coverage.and_then(|c| {
            c.lock()
                .unwrap_or_else(|e| e.into_inner())
                .found()
                .map(str::to_string)
        });
        Ok((spec, verdict, found))
    }

    /// An image a job or service runs on: a build of this run, or a registry image (pulled).
    pub(super) async fn resolve_image(
        &self,
        image: &ImageUse,
        inputs: &HashMap<Node, Left>,
    ) -> Result<(String, BaseImage, crate::graph::ImageConfig), String> {
        match image {
            ImageUse::Named(n) | ImageUse::Stage { image: n, .. } => {
                let (key, shown) = match image {
                    ImageUse::Stage { image, stage } => (
                        Node::Build(image.clone(), Some(stage.clone())),
                        format!("{image}@{stage}"),
                    ),
                    _ => (Node::Build(n.clone(), None), n.clone()),
                };
                let Some(Left::Image(b)) = inputs.get(&key) else {
                    return Err(format!("image {shown} was not built"));
                };
                Ok((shown, b.base.clone(), b.config.clone()))
            }
            ImageUse::Registry(r) => {
                let reference = r.to_string();
                let base = pull_base(
                    self.session.store(),
                    self.session.registry(),
                    &Events::discard(),
                    &reference,
                    crate::source::PullPolicy::Missing,
                    crate::source::BaseFetch::Whole,
                    None,
                )
                .await
                .map_err(|e| crate::api::render_chain(&e))?;
                let config =
                    config::config_from_json(&base.config_json).map_err(|e| e.to_string())?;
                Ok((reference, base, config))
            }
        }
    }

    /// A job's services: the network it shares with them, what starts them when the job really
    /// runs (and stops them after), and what they are, for the job's key (each service's name,
    /// image filesystem, command and variables).
    #[allow(clippy::type_complexity)]
    async fn services(
        &self,
        plan: &JobPlan,
        inputs: &HashMap<Node, Left>,
    ) -> Result<
        (
            Option<forge_runner::SharedNetwork>,
            Option<crate::ops::BesideStep>,
            String,
        ),
        String,
    > {
        if plan.services.is_empty() {
            return Ok((None, None, String::new()));
        }
        // The services' names resolve to the loopback the job and its services share, so a job
        // reaches `db:5432` as well as `127.0.0.1:5432`.
        let network = forge_runner::SharedNetwork::new()
            .await
            .map_err(|e| format!("the network of the job and its services: {e}"))?
            .with_names(
                plan.services
                    .iter()
                    .flat_map(|s| std::iter::once(&s.name).chain(&s.aliases))
                    .filter(|n| crate::pipeline::services::is_host_name(n))
                    .cloned()
                    .collect(),
            );
        let globals: Vec<(String, String)> = self
            .plan
            .variables
            .iter()
            .filter(|(k, _)| !crate::pipeline::check::BUILTINS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut resolved = Vec::new();
        let mut key = String::new();
        for svc in &plan.services {
            let (_, base, _) = self
                .resolve_image(&svc.image, inputs)
                .await
                .map_err(|e| format!("service {}: {e}", svc.name))?;
            key.push_str(&svc.name);
            for a in &svc.aliases {
                key.push(',');
                key.push_str(a);
            }
            key.push('\0');
            for d in &base.diff_ids {
                key.push_str(d.as_ref());
                key.push(',');
            }
            key.push('\0');
            if let Some(e) = &svc.entrypoint {
                key.push_str("entrypoint\u{1f}");
                key.push_str(&e.join("\u{1f}"));
                key.push('\0');
            }
            key.push_str(&svc.command.join("\u{1f}"));
            key.push('\0');
            for (k, v) in &svc.variables {
                key.push_str(&format!("{k}={v}\u{1f}"));
            }
            key.push('\0');
            if let Some(r) = &svc.ready {
                key.push_str(&r.command);
            }
            key.push('\0');
            // Which secrets it gets, never their values (hashed into no key).
            key.push_str(&svc.secrets.join(","));
            key.push('\n');
            let mut env = globals.clone();
            env.extend(svc.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
            let secrets: Vec<(String, Vec<u8>)> = svc
                .secrets
                .iter()
                .map(|name| match self.options.secrets.get(name) {
                    Some(value) => Ok((name.clone(), value.clone())),
                    None => Err(format!("service {}: secret {name} was not given", svc.name)),
                })
                .collect::<Result<_, _>>()?;
            resolved.push((svc.clone(), base, env, secrets));
        }
        let resolved = Arc::new(resolved);
        // A service's lines go into the job's log, and a service sees the job's secrets as
        // soon as the job sends them (a database logs the statement that sets a password):
        // they are masked like the job's own output.
        let masks = self.masks.clone();
        let session = self.session.clone();
        let sink = self.sink.clone();
        let job = plan.name.clone();
        let net = network.clone();
        let log_limit = self.options.log_limit;
        let start: crate::ops::BesideStep = Arc::new(move |cancel| {
            let (resolved, session, sink, job, net, masks) = (
                resolved.clone(),
                session.clone(),
                sink.clone(),
                job.clone(),
                net.clone(),
                masks.clone(),
            );
            Box::pin(async move {
                let say = job_line(&sink, &job, &masks);
                let mut handles = Vec::new();
                for (svc, base, env, secrets) in resolved.iter() {
                    // A service's output has a limit of its own: a chatty database does not
                    // silence the job's own lines.
                    let line: Arc<dyn Fn(&str) + Send + Sync> = {
                        let (say, name) = (job_line(&sink, &job, &masks), svc.name.clone());
                        let (clip, what) = (Clip::new(log_limit), format!("service {name}"));
                        Arc::new(move |l: &str| {
                            if let Some(text) = clip.pass(l, &what) {
                                say(format!("[{name}] {text}"));
                            }
                        })
                    };
                    let spec = crate::api::ServiceSpec {
                        name: svc.name.clone(),
                        image: base.clone(),
                        entrypoint: svc.entrypoint.clone(),
                        command: svc.command.clone(),
                        env: env.clone(),
                        secrets: secrets.clone(),
                        network: net.clone(),
                    };
                    match session.start_service(spec.clone(), line).await {
                        Ok(h) => handles.push(h),
                        Err(e) => {
                            stop_services(handles, &say).await;
                            return Err(format!(
                                "service {} did not start: {}",
                                svc.name,
                                crate::api::render_chain(&e)
                            ));
                        }
                    }
                    if let Some(r) = &svc.ready {
                        say(format!(
                            "forge: waiting for service {}: {}",
                            svc.name, r.command
                        ));
                        if let Err(e) = session
                            .wait_ready(&spec, &r.command, r.timeout, r.interval, &cancel)
                            .await
                        {
                            stop_services(handles, &say).await;
                            return Err(format!(
                                "service {} is not ready: {}",
                                svc.name,
                                crate::api::render_chain(&e)
                            ));
                        }
                        say(format!("forge: service {} is ready", svc.name));
                    } else {
                        wait_for_ports(&spec, &say, &cancel).await;
                    }
                }
                let say = job_line(&sink, &job, &masks);
                let stop: crate::ops::StopBeside =
                    Box::new(move || Box::pin(async move { stop_services(handles, &say).await }));
                Ok(stop)
            })
        });
        Ok((Some(network), Some(start), key))
    }

    /// The job as the solver gets it: its image (pulled, for a registry reference), the artifact
    /// layers of the jobs it needs, its variables and secrets.
    async fn job_spec(
        &self,
        plan: &JobPlan,
        inputs: &HashMap<Node, Left>,
    ) -> Result<JobSpec, String> {
        let (image_name, base, config) = self.resolve_image(&plan.image, inputs).await?;
        let (network, services, services_key) = self.services(plan, inputs).await?;
        let mut extra = Vec::new();
        let mut received = Vec::new();
        // Its `dependencies:` or `needs:`; without either, every earlier job's, in plan order
        // (GitLab's default dependencies).
        let from: Vec<&String> = match &plan.artifacts_from {
            Some(list) => list.iter().collect(),
            None => self.plan.jobs.iter().map(|o| &o.name).collect(),
        };
        for j in from {
            if let Some(Left::Job(
                JobLeft {
                    artifacts: Some(d),
                    dotenv,
                    ..
                },
                _,
            )) = inputs.get(&Node::Job(j.clone()))
            {
                extra.push(d.clone());
                received.extend(dotenv.iter().cloned());
            }
        }
        let mut env: Vec<(String, String)> = vec![
            ("CI".into(), "true".into()),
            ("FORGE_JOB_NAME".into(), plan.name.clone()),
            ("CI_JOB_NAME".into(), plan.name.clone()),
            ("CI_JOB_STAGE".into(), plan.stage.clone()),
        ];
        // GitLab's CI_NODE_TOTAL is 1 for a job without `parallel:` (its cells carry their own).
        if !plan.variables.iter().any(|(k, _)| k == "CI_NODE_TOTAL") {
            env.push(("CI_NODE_TOTAL".into(), "1".into()));
        }
        // The built-ins change with every run (number, commit) while a job's verdict does not
        // depend on them: they reach the job at run time, outside its cache key. A variable the
        // file defines from them is hashed as it expands.
        let mut run_env = Vec::new();
        for (k, v) in &self.plan.variables {
            if crate::pipeline::check::BUILTINS.contains(&k.as_str()) {
                run_env.push((k.clone(), v.clone()));
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in &plan.variables {
            env.push((k.clone(), v.clone()));
        }
        // Dotenv variables win over the job's own, as in GitLab; they are in its key through the
        // artifact layers that carry their files.
        env.extend(received);
        if let Some(needs) = &plan.needs {
            for n in needs {
                if let Need::Image(i) = n
                    && let Some(Left::Image(b)) = inputs.get(&Node::Build(i.clone(), None))
                {
                    let e = env_name(i);
                    env.push((format!("FORGE_IMAGE_{e}_DIGEST"), b.digest.clone()));
                    let tags = self
                        .plan
                        .images
                        .iter()
                        .find(|x| x.name == *i)
                        .map(|x| x.tags.clone())
                        .unwrap_or_default();
                    if let Some(t) = tags.first() {
                        env.push((format!("FORGE_IMAGE_{e}_REF"), t.clone()));
                    }
                }
            }
        }
        let mut artifacts_paths: Vec<String> = Vec::new();
        if let Some(a) = &plan.artifacts {
            artifacts::take_out(
                &config.working_dir,
                a.paths.iter().chain(&a.junit),
                ("artifact", "artifacts"),
                &mut artifacts_paths,
            )?;
        }
        // GitLab's caches: their paths are taken out after the run as artifacts are, and what
        // each key kept is laid on the filesystem before the script.
        let mut restore = Vec::new();
        let mut cache_keys = Vec::new();
        for c in &plan.caches {
            let key = path_cache::key_of(&c.key, &self.options.base_dir, &self.options.boundary)?;
            artifacts::take_out(
                &config.working_dir,
                &c.paths,
                ("cache", "caches"),
                &mut artifacts_paths,
            )?;
            let store = self.session.store();
            restore.extend(path_cache::restore(
                store,
                &self.options.cache_scope,
                c,
                &key,
            )?);
            cache_keys.push(key);
        }
        Ok(JobSpec {
            name: plan.name.clone(),
            image: JobImage {
                name: image_name,
                base,
                config,
                extra,
            },
            script: plan.script.clone(),
            entrypoint: plan.entrypoint.clone(),
            after_script: plan.after_script.clone(),
            env,
            run_env,
            secret_names: plan.secrets.clone(),
            secrets: plan
                .secrets
                .iter()
                .filter_map(|s| self.options.secrets.get(s).map(|v| (s.clone(), v.clone())))
                .collect(),
            masked: self.options.secrets.values().cloned().collect(),
            artifacts: artifacts_paths,
            restore,
            cache_keys,
            host_network: plan.network == Network::Host,
            network,
            services,
            services_key,
            no_cache: self.options.no_cache || !plan.cache,
            timeout: plan.timeout,
            cache: self.cache.clone(),
        })
    }
}

/// Says a line in `job`'s log, masked: forge's own lines about a service quote what the
/// service printed last, and a service's lines pass through here too.
fn job_line(
    sink: &super::Sink,
    job: &str,
    masks: &Arc<crate::mask::Masks>,
) -> impl Fn(String) + Send + Sync + 'static {
    let (sink, job, masks) = (sink.clone(), job.to_string(), masks.clone());
    move |line: String| {
        sink(PipelineEvent::JobLine {
            job: job.clone(),
            line: masks.mask(&line),
            cached: false,
        })
    }
}

/// How long a service without `ready:` is waited for, as GitLab's runner waits
/// (`wait_for_services_timeout`, 30 s by default).
const SERVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// GitLab's health check of a service without a `ready:` probe: its TCP ports (see
/// [`crate::api::health_ports`]) are waited for, at most [`SERVICE_WAIT`]; one that never answers
/// is warned of and the job runs anyway, as GitLab's runner lets it.
async fn wait_for_ports(
    spec: &crate::api::ServiceSpec,
    say: &(dyn Fn(String) + Send + Sync),
    cancel: &tokio_util::sync::CancellationToken,
) {
    let ports = match crate::api::health_ports(spec) {
        Ok(ports) if ports.is_empty() => return,
        Ok(ports) => ports,
        Err(e) => {
            say(format!("forge: warning: {}", crate::api::render_chain(&e)));
            return;
        }
    };
    let shown = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("{p}/tcp"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say(format!(
        "forge: waiting for service {} on {} (at most {} s, as GitLab's runner waits)",
        spec.name,
        shown(&ports),
        SERVICE_WAIT.as_secs()
    ));
    let deadline = std::time::Instant::now() + SERVICE_WAIT;
    match spec.network.wait_tcp(&ports, deadline, cancel).await {
        Ok(left) if left.is_empty() => say(format!("forge: service {} is ready", spec.name)),
        Ok(left) => say(format!(
            "forge: warning: service {} probably did not start: nothing answered on {} in {} s; \
             the job runs (give the service a ready: probe to wait for something else)",
            spec.name,
            shown(&left),
            SERVICE_WAIT.as_secs()
        )),
        Err(e) => say(format!(
            "forge: warning: service {}: its ports were not waited for: {e}",
            spec.name
        )),
    }
}
