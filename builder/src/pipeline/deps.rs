//! Which jobs' artifacts a job receives: GitLab's `dependencies:`, else its `needs:` (less those
//! written `{job: X, artifacts: false}`), else every earlier job's.

use std::collections::BTreeMap;

use super::error::PipelineError;
use super::file::{JobSpec, Sp, pos_of};
use super::graph;
use super::plan::{JobPlan, Names};
use crate::frontend::suggest::suggest;

/// Fills each job's [`JobPlan::artifacts_from`]. A `dependencies:` entry must name a job of an
/// earlier stage, or one of the job's `needs:` when it has them (GitLab refuses the rest too):
/// else the job would wait for nothing and receive nothing. `jobs[i]` is the plan of `specs[i]`.
pub(super) fn artifacts_from(
    jobs: &mut [JobPlan],
    specs: &[&JobSpec],
    stages: &[String],
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) {
    let rank = |s: &str| stages.iter().position(|x| x == s).unwrap_or(usize::MAX);
    let stage_of: BTreeMap<String, String> = jobs
        .iter()
        .map(|j| (j.name.clone(), j.stage.clone()))
        .collect();
    for (job, spec) in jobs.iter_mut().zip(specs) {
        // The jobs of its `needs:`, each with whether it takes their artifacts.
        let needs: Option<Vec<(String, bool)>> = spec.needs.as_ref().map(|list| {
            list.iter()
                .flat_map(|n| {
                    graph::jobs_named(&n.value.name, names)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|j| (j, n.value.artifacts))
                })
                .collect()
        });
        job.artifacts_from = match &spec.dependencies {
            None => needs.map(|list| {
                list.into_iter()
                    .filter(|(_, artifacts)| *artifacts)
                    .map(|(j, _)| j)
                    .collect()
            }),
            Some(deps) => {
                let mut from = Vec::new();
                for d in deps {
                    for name in named(d, names, errors) {
                        let allowed = match &needs {
                            Some(list) => list.iter().any(|(j, _)| *j == name),
                            None => stage_of
                                .get(&name)
                                .is_some_and(|s| rank(s) < rank(&job.stage)),
                        };
                        if !allowed {
                            let why = if spec.needs.is_some() {
                                "one of its `needs:`"
                            } else {
                                "a job of an earlier stage"
                            };
                            errors.push(PipelineError::new(
                                pos_of(d),
                                format!(
                                    "`{}` in dependencies is not {why}: job `{}` would receive \
                                     nothing from it",
                                    d.value, job.name
                                ),
                            ));
                        } else if !from.contains(&name) {
                            from.push(name);
                        }
                    }
                }
                Some(from)
            }
        };
    }
}

/// The expanded jobs `d` names, or an error at it.
fn named(d: &Sp<String>, names: &Names<'_>, errors: &mut Vec<PipelineError>) -> Vec<String> {
    if let Some(jobs) = graph::jobs_named(&d.value, names) {
        return jobs;
    }
    let hint = suggest(&d.value, names.jobs.keys().map(String::as_str))
        .map(|s| format!("did you mean `{s}`?"));
    errors.push(
        PipelineError::new(
            pos_of(d),
            format!("`{}` in dependencies names no job", d.value),
        )
        .with_hint(hint),
    );
    Vec::new()
}
