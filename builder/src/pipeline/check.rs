//! Semantic checks: the located file model -> a validated [`Pipeline`]. Names resolve (needs,
//! images, stages, artifacts-from), matrices expand to named jobs, variables expand, rules are
//! parsed and evaluated, and a cycle among jobs and images is refused with its path. Every error
//! found is returned, not only the first.

use std::collections::{BTreeMap, BTreeSet};

use super::error::PipelineError;
use super::expand::{self, expand_at};
use super::file::{
    AllowFailure, ArtifactsWhen, ExpireIn, JobSpec, Network, Parallel, PipelineFile, Sp, When,
    pos_of,
};
use super::graph;
use super::plan::Names;
pub use super::plan::{
    Artifacts, CheckOptions, ImagePlan, ImageUse, JobPlan, Need, Pipeline, Ready, RuleOutcome,
    ServicePlan,
};
use super::resolve::{resolve_image, resolve_need};
pub use super::ruling::ref_slug;
use super::ruling::{define_empty, pipeline_ref, rules, visible, workflow};
use super::vars::{Defs, Said};
use super::{coverage, deps, gitlab_keys, job_cache, only, services};
use crate::frontend::suggest::suggest;

/// The built-in variables, always defined (empty when unknown).
pub const BUILTINS: [&str; 12] = [
    "FORGE_BUILD_NUMBER",
    "FORGE_GIT_SHA",
    "FORGE_GIT_SHORT_SHA",
    "FORGE_GIT_BRANCH",
    "FORGE_GIT_TAG",
    // GitLab's names for the same values (see `GITLAB_NAMES`), so that a file written for GitLab
    // (`if: $CI_COMMIT_BRANCH == "main"`) reads the same here.
    "CI_PIPELINE_IID",
    "CI_COMMIT_SHA",
    "CI_COMMIT_SHORT_SHA",
    "CI_COMMIT_BRANCH",
    "CI_COMMIT_TAG",
    "CI_COMMIT_REF_NAME",
    "CI_COMMIT_REF_SLUG",
];

/// GitLab's predefined variables forge defines, each from the built-in with the same value.
/// `CI_COMMIT_REF_NAME`, the branch or else the tag, is made apart.
const GITLAB_NAMES: [(&str, &str); 5] = [
    ("CI_PIPELINE_IID", "FORGE_BUILD_NUMBER"),
    ("CI_COMMIT_SHA", "FORGE_GIT_SHA"),
    ("CI_COMMIT_SHORT_SHA", "FORGE_GIT_SHORT_SHA"),
    ("CI_COMMIT_BRANCH", "FORGE_GIT_BRANCH"),
    ("CI_COMMIT_TAG", "FORGE_GIT_TAG"),
];

/// GitLab's stages when the file names none.
pub const DEFAULT_STAGES: [&str; 3] = ["build", "test", "deploy"];
/// A job's stage when it names none, as in GitLab.
pub const DEFAULT_STAGE: &str = "test";

/// One job as it will run: the written name and spec, the expanded name and matrix values.
type Instance<'a> = (&'a Sp<String>, &'a JobSpec, String, Vec<(String, String)>);

/// Checks a parsed file; `source` is its text (for columns inside values).
pub fn check(
    file: &PipelineFile,
    source: &str,
    options: &CheckOptions,
) -> Result<Pipeline, Vec<PipelineError>> {
    // The text `parse` read: positions refer to it (see `normalize_breaks`).
    let source = &*super::normalize_breaks(source);
    let mut errors = Vec::new();
    let mut globals = options.builtins.clone();
    for b in BUILTINS {
        globals.entry(b.to_string()).or_default();
    }
    for (gitlab, ours) in GITLAB_NAMES {
        let value = globals[ours].clone();
        globals.insert(gitlab.to_string(), value);
    }
    let mut unset = pipeline_ref(&mut globals);
    // GitLab's `CI`, always `true`: the file may read it (`if: $CI`); the jobs get it from
    // `jobs.rs` with forge's other names.
    globals.insert("CI".to_string(), "true".to_string());
    // Every definition, expanded once all are known (`vars.rs`).
    let mut defs = Defs::default();
    for (k, v) in &globals {
        defs.literal(k, v);
    }
    defs.define(&file.variables, |_| false);
    let mut said = Said::default();
    // A variable the file defines is defined, whatever a built-in of its name was.
    unset.retain(|n| !file.variables.0.iter().any(|(k, _)| k.value == *n));
    let skipped = workflow(
        file,
        source,
        (&mut defs, &mut unset),
        options,
        &mut errors,
        &mut said,
    );
    let mut globals = defs.expand_all(source, &mut said);

    // Only [`super::include::load`] reads the files `include:` names, and it checks what it
    // merged: a file checked here alone would lose them unseen.
    if let Some(i) = &file.include {
        errors.push(
            PipelineError::new(pos_of(i), "`include:` needs the files of the repository")
                .with_hint(Some(
                    "load the pipeline with pipeline::include::load, which reads them".into(),
                )),
        );
    }
    let stages = stages(file, &mut errors);
    let image_names: BTreeSet<&str> = file
        .images
        .0
        .iter()
        .map(|(k, _)| k.value.as_str())
        .collect();
    let mut seen_images = BTreeSet::new();
    for (k, _) in &file.images.0 {
        if !seen_images.insert(k.value.as_str()) {
            errors.push(PipelineError::new(
                pos_of(k),
                format!("image `{}` is defined twice", k.value),
            ));
        }
    }

    // Matrix expansion first: needs may name any expanded job.
    let mut expanded: Vec<Instance<'_>> = Vec::new();
    let mut names = Names {
        images: image_names.clone(),
        jobs: BTreeMap::new(),
    };
    let mut seen_jobs: BTreeSet<String> = BTreeSet::new();
    for (k, job) in &file.jobs.0 {
        // forge sets these for every job: a matrix setting one would lie to the job about
        // itself (its name, the commit) or be overridden unseen.
        let matrix = job.parallel.iter().filter_map(|p| match &p.value {
            Parallel::Matrix(m) => Some(&m.value),
            Parallel::Copies(_) => None,
        });
        for entry in matrix.flatten() {
            for (key, _) in &entry.value.0 {
                if is_set_by_forge(&key.value) {
                    errors.push(PipelineError::new(
                        pos_of(key),
                        format!("`{}` is set by forge: a matrix cannot set it", key.value),
                    ));
                }
            }
        }
        // What GitLab refuses too: a job that runs nothing, and a timeout that ends it before
        // it starts.
        match &job.script {
            None => errors.push(
                PipelineError::new(pos_of(k), format!("job `{}` has no `script`", k.value))
                    .with_hint(Some(
                        "give it `script:`, or `extends:` a template that has one".into(),
                    )),
            ),
            Some(s) if s.value.0.is_empty() => errors.push(PipelineError::new(
                pos_of(s),
                "`script` is empty: a job runs at least one command",
            )),
            Some(_) => {}
        }
        if let Some(t) = job.timeout.as_ref().or(file.default.timeout.as_ref())
            && t.value.0.is_zero()
        {
            errors.push(PipelineError::new(
                pos_of(t),
                "a `timeout` of 0s would end the job before it starts",
            ));
        }
        let instances = match &job.parallel {
            None => vec![(k.value.clone(), Vec::new())],
            Some(p) => match expand::matrix(p) {
                Ok(list) => list
                    .into_iter()
                    .map(|i| match &p.value {
                        // GitLab's names: `test 1/3`, and `test: [a, b]` for a matrix cell.
                        Parallel::Copies(_) => (format!("{} {}", k.value, i.values[0]), i.vars),
                        Parallel::Matrix(_) => {
                            (format!("{}: [{}]", k.value, i.values.join(", ")), i.vars)
                        }
                    })
                    .collect(),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        for (name, vars) in instances {
            // A name is printed at the start of its job's lines: a newline or an escape in it
            // could print a line that looks like forge's own (`job deploy: passed`).
            if name.chars().any(char::is_control) {
                errors.push(PipelineError::new(
                    pos_of(k),
                    format!(
                        "job name {name:?} holds a control character (a newline, tab or escape), \
                         which would garble the lines it starts"
                    ),
                ));
                continue;
            }
            if !seen_jobs.insert(name.clone()) {
                errors.push(
                    PipelineError::new(pos_of(k), format!("duplicate job name `{name}`"))
                        .with_hint(Some(
                            "job names must be unique after matrix expansion".into(),
                        )),
                );
                continue;
            }
            if image_names.contains(name.as_str()) {
                errors.push(PipelineError::new(
                    pos_of(k),
                    format!("`{name}` names both a job and an image"),
                ));
            }
            names
                .jobs
                .entry(k.value.clone())
                .or_default()
                .push(name.clone());
            expanded.push((k, job, name, vars));
        }
    }

    let mut images = Vec::new();
    for (k, spec) in &file.images.0 {
        images.push(graph::image_plan(
            k,
            spec,
            source,
            &globals,
            &names,
            &mut errors,
        ));
    }

    let mut jobs = Vec::new();
    for (k, spec, name, matrix_vars) in &expanded {
        let mut job_defs = defs.clone();
        // The job's name and stage, which forge gives the job (`jobs.rs`), are there for its
        // values too (`variables:`, `artifacts:`, `cache: key:`), as in GitLab.
        let stage_name = spec
            .stage
            .as_ref()
            .map_or(DEFAULT_STAGE, |s| s.value.as_str());
        for (n, v) in [
            ("CI_JOB_NAME", name.as_str()),
            ("FORGE_JOB_NAME", name.as_str()),
            ("CI_JOB_STAGE", stage_name),
        ] {
            job_defs.literal(n, v);
        }
        // GitLab's CI_NODE_TOTAL is 1 for a job without `parallel:` (`jobs.rs` gives it).
        if !matrix_vars.iter().any(|(k, _)| k == "CI_NODE_TOTAL") {
            job_defs.literal("CI_NODE_TOTAL", "1");
        }
        for (k, v) in matrix_vars.iter() {
            job_defs.literal(k, v);
        }
        // A matrix value wins over the job's `variables:` of the same name, as in GitLab, and
        // the job's other variables see it: were it the other way round, every cell would run
        // the one value `variables:` gives, and all but the first replay its cached result.
        let from_matrix = |name: &str| matrix_vars.iter().any(|(m, _)| m == name);
        job_defs.define(&spec.variables, from_matrix);
        job_defs.secrets(spec.secrets.iter().flatten().map(|s| s.value.clone()));
        // What the job defines is defined; what only its rules give is undefined until one of
        // them decides (`$X == null` holds in the rules), and empty to what expands it.
        let mut unset = unset.clone();
        unset.retain(|n| !spec.variables.0.iter().any(|(k, _)| k.value == *n) && !from_matrix(n));
        define_empty(
            spec.rules.as_deref().unwrap_or_default(),
            &mut job_defs,
            &mut unset,
        );
        let mut vars = job_defs.expand_all(source, &mut said);
        let job_when = spec.when.as_ref().map_or(When::OnSuccess, |w| w.value);
        // GitLab's older `only:`/`except:`, else `rules:`.
        let seen = visible(&vars, &unset);
        let (rule, when) = match only::decide(spec, source, &seen, options, &mut errors) {
            Some(RuleOutcome::NoRules) => (RuleOutcome::NoRules, job_when),
            Some(left_out) => (left_out, When::Never),
            None => rules(
                spec.rules.as_deref().unwrap_or_default(),
                source,
                (&vars, &unset),
                options,
                job_when,
                (&mut errors, &mut said),
            ),
        };
        // The rule that decided gives its variables (over the job's, as in GitLab; every value
        // reads them, the job's and the file's too) and its `allow_failure`.
        let decided = match rule {
            RuleOutcome::Matched { index } => spec.rules.as_deref().and_then(|r| r.get(index)),
            _ => None,
        };
        if let Some(r) = decided {
            job_defs.define(&r.variables, |_| false);
            unset.retain(|n| !r.variables.0.iter().any(|(k, _)| k.value == *n));
            vars = job_defs.expand_all(source, &mut said);
        }
        // What the job gives over the file's: its matrix cell's values, its own variables and
        // its deciding rule's, each as it expands in the end, and the file's that read
        // otherwise in this job (`URL: https://$ENV...` where the job's rule gives `ENV`).
        let differs = vars
            .iter()
            .filter(|(k, v)| globals.get(*k).is_some_and(|g| g != *v) && !unset.contains(*k))
            .map(|(k, _)| k);
        let own: BTreeMap<String, String> = matrix_vars
            .iter()
            .map(|(k, _)| k)
            .chain(spec.variables.0.iter().map(|(k, _)| &k.value))
            .chain(
                decided
                    .iter()
                    .flat_map(|r| r.variables.0.iter().map(|(k, _)| &k.value)),
            )
            .chain(differs)
            .filter_map(|k| Some((k.clone(), vars.get(k)?.clone())))
            .collect();
        // GitLab's default: a manual job may fail (it blocks nothing) unless it comes from
        // `rules:`, where every job defaults to `allow_failure: false` (and a manual one then
        // blocks the later stages until it is run).
        let (allow_failure, allow_failure_codes) =
            match (decided.and_then(|r| r.allow_failure), &spec.allow_failure) {
                (Some(allowed), _) | (None, &Some(AllowFailure::Always(allowed))) => {
                    (allowed, Vec::new())
                }
                (None, Some(AllowFailure::ExitCodes(codes))) => (false, codes.clone()),
                (None, None) => (when == When::Manual && spec.rules.is_none(), Vec::new()),
            };
        let stage = match &spec.stage {
            Some(s) => {
                if !stages.contains(&s.value) {
                    errors.push(
                        PipelineError::new(pos_of(s), format!("undefined stage `{}`", s.value))
                            .with_hint(Some(
                                match suggest(&s.value, stages.iter().map(String::as_str)) {
                                    Some(n) => format!("did you mean `{n}`?"),
                                    None => format!("stages are: {}", stages.join(", ")),
                                },
                            )),
                    );
                }
                s.value.clone()
            }
            None => {
                if !stages.iter().any(|x| x == DEFAULT_STAGE) {
                    errors.push(
                        PipelineError::new(pos_of(k), format!("job `{}` has no stage", k.value))
                            .with_hint(Some(format!(
                                "the default stage `{DEFAULT_STAGE}` is not in `stages:`; give it `stage:`"
                            ))),
                    );
                }
                DEFAULT_STAGE.to_string()
            }
        };
        let image_spec = file.image_of(spec);
        let image = match image_spec {
            Some(i) => resolve_image(&i.name, source, &vars, &names, &mut errors),
            None => {
                errors.push(
                    PipelineError::new(pos_of(k), format!("job `{}` has no image", k.value))
                        .with_hint(Some(
                            "give it `image:`, or give `default:` one for every job".into(),
                        )),
                );
                ImageUse::Named(String::new())
            }
        };
        let needs = spec.needs.as_ref().map(|list| {
            list.iter()
                .flat_map(|n| resolve_need(n, &names, &mut errors))
                .fold(Vec::new(), |mut out, n| {
                    // A matrix named whole and one of its cells: each once.
                    if !out.contains(&n) {
                        out.push(n);
                    }
                    out
                })
        });
        let services = services::plan(
            file.services_of(spec),
            spec,
            source,
            &vars,
            &names,
            &mut errors,
        );
        let artifacts = spec.artifacts.as_ref().or(file.default.artifacts.as_ref());
        let artifacts = artifacts.map(|a| Artifacts {
            // GitLab's other reports are kept as the job's artifacts, as GitLab keeps them, and
            // dotenv files travel in them (a later job's key follows their content).
            paths: a
                .paths
                .iter()
                .flatten()
                .filter_map(|p| expand_at(p, source, &vars).map_err(|e| errors.push(e)).ok())
                .chain(
                    a.reports
                        .iter()
                        .flat_map(|r| r.kept.iter().flat_map(|(_, f)| f.clone())),
                )
                .chain(a.reports.iter().flat_map(|r| r.dotenv.0.clone()))
                .collect(),
            dotenv: a
                .reports
                .iter()
                .flat_map(|r| r.dotenv.0.iter().cloned())
                .collect(),
            exclude: a
                .exclude
                .iter()
                .flatten()
                .filter_map(|p| expand_at(p, source, &vars).map_err(|e| errors.push(e)).ok())
                .collect(),
            expire_in: a.expire_in.as_ref().and_then(|e| match e.value {
                ExpireIn::Never => None,
                ExpireIn::After(d) => Some(d),
            }),
            when: a
                .when
                .as_ref()
                .map_or(ArtifactsWhen::OnSuccess, |w| w.value),
            junit: a
                .reports
                .iter()
                .flat_map(|r| r.junit.0.iter().cloned())
                .collect(),
        });
        for s in spec.secrets.iter().flatten() {
            if !is_env_name(&s.value) {
                errors.push(PipelineError::new(
                    pos_of(s),
                    format!("secret `{}` is not an environment variable name", s.value),
                ));
            }
        }
        let (cache, caches) = job_cache::plan(
            spec.cache.as_ref(),
            file.default.cache.as_ref(),
            source,
            &vars,
            &mut errors,
        );
        jobs.push(JobPlan {
            name: name.clone(),
            base: k.value.clone(),
            stage,
            image,
            // GitLab's `[""]` is "no entrypoint", the shell alone.
            entrypoint: image_spec
                .and_then(|i| i.entrypoint.as_ref())
                .iter()
                .flat_map(|e| &e.value)
                .map(|c| c.value.clone())
                .skip_while(String::is_empty)
                .collect(),
            // GitLab's: before_script and script are one shell; a job's own list (even empty)
            // replaces `default:`'s.
            script: lines(
                spec.before_script
                    .as_ref()
                    .or(file.default.before_script.as_ref()),
            )
            .chain(lines(spec.script.as_ref()))
            .collect(),
            after_script: lines(
                spec.after_script
                    .as_ref()
                    .or(file.default.after_script.as_ref()),
            )
            .collect(),
            variables: own,
            needs,
            services,
            artifacts_from: None,
            artifacts,
            secrets: spec
                .secrets
                .iter()
                .flatten()
                .map(|s| s.value.clone())
                .collect(),
            rule,
            when,
            allow_failure,
            allow_failure_codes,
            retry: spec
                .retry
                .as_ref()
                .or(file.default.retry.as_ref())
                .map(|r| r.value.clone()),
            timeout: spec
                .timeout
                .as_ref()
                .or(file.default.timeout.as_ref())
                .map(|t| t.value.0),
            network: spec
                .network
                .as_ref()
                .map_or(Network::default(), |n| n.value),
            cache,
            caches,
            coverage: spec
                .coverage
                .as_ref()
                .and_then(|c| coverage::pattern(c, &mut errors)),
            resource_group: spec.resource_group.as_ref().and_then(|g| {
                let name = expand_at(g, source, &vars)
                    .map_err(|e| errors.push(e))
                    .ok()?;
                if name.trim().is_empty() {
                    errors.push(PipelineError::new(pos_of(g), "`resource_group:` is empty"));
                    return None;
                }
                Some(name)
            }),
        });
    }
    needs_left_out(&jobs, &expanded, &names, &mut errors);
    needs_later_stages(&jobs, &expanded, &stages, &names, &mut errors);
    let specs: Vec<&JobSpec> = expanded.iter().map(|e| e.1).collect();
    deps::artifacts_from(&mut jobs, &specs, &stages, &names, &mut errors);
    // Stage order, then file order (the sort is stable).
    let rank = |s: &str| stages.iter().position(|x| x == s).unwrap_or(usize::MAX);
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|i| rank(&jobs[*i].stage));
    let located: Vec<&Sp<String>> = order.iter().map(|i| expanded[*i].0).collect();
    let mut sorted: Vec<JobPlan> = Vec::with_capacity(jobs.len());
    let mut slots: Vec<Option<JobPlan>> = jobs.into_iter().map(Some).collect();
    for i in &order {
        if let Some(j) = slots[*i].take() {
            sorted.push(j);
        }
    }
    let mut warnings = said.warnings;
    errors.extend(said.errors);
    gitlab_keys::ignored(file, &mut warnings);
    // What is not defined in this run does not reach the jobs' environment.
    let file_sets_ci = file.variables.0.iter().any(|(k, _)| k.value == "CI");
    globals.retain(|k, _| !unset.contains(k) && (k != "CI" || file_sets_ci));
    // `.pre` and `.post` are there only when jobs are.
    let mut stages = stages;
    stages.retain(|s| !s.starts_with('.') || sorted.iter().any(|j| j.stage == *s));
    let mut pipeline = Pipeline {
        variables: globals,
        stages,
        images,
        jobs: sorted,
        warnings,
        skipped: None,
    };
    graph::default_push_needs(file, &mut pipeline);
    if errors.is_empty()
        && let Some(e) = graph::find_cycle(file, &pipeline, &located)
    {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The whole file is checked first, as GitLab does, whether or not it makes a pipeline.
    if let Some(why) = skipped {
        pipeline.images.clear();
        pipeline.jobs.clear();
        pipeline.skipped = Some(why);
    }
    Ok(pipeline)
}

/// Refuses a `needs:` entry naming a job that rules (or `when: never`) leave out of this run,
/// as GitLab refuses such a pipeline: the job would run without what it waits for and without
/// its artifacts, and nothing would say so. An `optional: true` need is the file saying it may.
/// `jobs[i]` is the plan of `expanded[i]`.
fn needs_left_out(
    jobs: &[JobPlan],
    expanded: &[Instance<'_>],
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) {
    let left_out: BTreeMap<&str, &JobPlan> = jobs
        .iter()
        .filter(|j| j.when == When::Never)
        .map(|j| (j.name.as_str(), j))
        .collect();
    // The cells of one matrix share their `needs:` entries: each is reported once.
    let mut reported = BTreeSet::new();
    for (job, (_, spec, _, _)) in jobs.iter().zip(expanded) {
        if job.when == When::Never {
            continue;
        }
        for n in spec.needs.iter().flatten().filter(|n| !n.value.optional) {
            let out: Vec<&JobPlan> = graph::jobs_named(&n.value.name, names)
                .unwrap_or_default()
                .iter()
                .filter_map(|x| left_out.get(x.as_str()).copied())
                .collect();
            let Some(first) = out.first() else {
                continue;
            };
            let at = pos_of(n);
            if !reported.insert((at.line, at.column)) {
                continue;
            }
            let why = match first.rule {
                RuleOutcome::NoneMatched => "no rule of it matched",
                RuleOutcome::OnlyMissed => "its `only:` does not match",
                RuleOutcome::ExceptMatched => "its `except:` matches",
                RuleOutcome::NoRules | RuleOutcome::Matched { .. } => "it is `when: never`",
            };
            let which: Vec<&str> = out.iter().map(|j| j.name.as_str()).collect();
            errors.push(
                PipelineError::new(
                    at,
                    format!(
                        "`{}` in needs does not run in this pipeline ({why}): {} cannot run without it",
                        which.join("`, `"),
                        job.base
                    ),
                )
                .with_hint(Some(format!(
                    "give `{}` the same `rules:`, or write the need as `{{job: {}, optional: true}}` \
                     to run without it",
                    job.base, n.value.name
                ))),
            );
        }
    }
}

/// Refuses a `needs:` entry naming a job of a later stage, as GitLab refuses it: a job needs jobs
/// of its own stage or of earlier ones. (Two jobs needing each other were refused as a cycle,
/// which said less.) `jobs[i]` is the plan of `expanded[i]`.
fn needs_later_stages(
    jobs: &[JobPlan],
    expanded: &[Instance<'_>],
    stages: &[String],
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) {
    let rank = |s: &str| stages.iter().position(|x| x == s).unwrap_or(usize::MAX);
    let mut reported = BTreeSet::new();
    for (job, (_, spec, _, _)) in jobs.iter().zip(expanded) {
        for n in spec.needs.iter().flatten() {
            let later: Vec<&JobPlan> = graph::jobs_named(&n.value.name, names)
                .unwrap_or_default()
                .iter()
                .filter_map(|x| jobs.iter().find(|j| j.name == *x))
                .filter(|j| rank(&j.stage) > rank(&job.stage))
                .collect();
            let Some(first) = later.first() else { continue };
            let at = pos_of(n);
            if !reported.insert((at.line, at.column)) {
                continue;
            }
            errors.push(
                PipelineError::new(
                    at,
                    format!(
                        "`{}` in needs is of stage `{}`, later than `{}`'s `{}`",
                        n.value.name, first.stage, job.base, job.stage
                    ),
                )
                .with_hint(Some(
                    "a job needs jobs of its own stage or earlier ones, as in GitLab: move one of \
                     them"
                        .into(),
                )),
            );
        }
    }
}

/// The stages in order: the file's (or GitLab's default ones), between GitLab's `.pre`, always
/// first, and `.post`, always last, whether the file lists them or not (and wherever it does).
fn stages(file: &PipelineFile, errors: &mut Vec<PipelineError>) -> Vec<String> {
    let mut out: Vec<String> = vec![".pre".to_string()];
    match &file.stages {
        None => out.extend(DEFAULT_STAGES.iter().map(|s| s.to_string())),
        Some(list) => {
            let mut listed = BTreeSet::new();
            for s in &list.value {
                if !listed.insert(s.value.as_str()) {
                    errors.push(PipelineError::new(
                        pos_of(s),
                        format!("stage `{}` is listed twice", s.value),
                    ));
                } else if s.value != ".pre" && s.value != ".post" {
                    out.push(s.value.clone());
                }
            }
        }
    }
    out.push(".post".to_string());
    out
}

/// The variables forge gives every job itself: the [`BUILTINS`], `CI`, the job's name
/// (`FORGE_JOB_NAME`, and GitLab's `CI_JOB_NAME`) and stage, and `CI_JOB_STATUS` (after_script's).
fn is_set_by_forge(name: &str) -> bool {
    BUILTINS.contains(&name)
        || matches!(
            name,
            "CI" | "FORGE_JOB_NAME"
                | "CI_JOB_NAME"
                | "CI_JOB_STAGE"
                | "CI_JOB_STATUS"
                | "CI_NODE_TOTAL"
        )
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The text of a list of shell lines, if any.
fn lines(list: Option<&Sp<super::file::Commands>>) -> impl Iterator<Item = String> + '_ {
    list.into_iter().flat_map(|l| l.value.0.iter().cloned())
}
