//! What a unit's dependencies decide about it without running it: a job skipped by `when:` or
//! blocked by what failed before it, a push held back, and the line said when a push goes ahead
//! with every job that gates it skipped.

use std::collections::HashMap;

use super::image::build_name;
use super::{End, JobLeft, JobReport, Left, Node, PipelineEvent, describe};
use crate::pipeline::file::When;
use crate::pipeline::history::JobResult;
use crate::pipeline::plan::Pipeline;

/// A push about to go ahead though every job gating it was skipped: the line that says so. The
/// README's rule stands (a job that rules or `when:` left out gates nothing), but an image built
/// from inputs its jobs' `changes:` globs do not cover would otherwise reach the registry with no
/// word said.
pub(super) fn untested(plan: &Pipeline, n: &Node, deps: &[(Node, End)]) -> Option<PipelineEvent> {
    let Node::Push(image) = n else { return None };
    let gates: Vec<(&String, End)> = deps
        .iter()
        .filter_map(|(d, e)| match d {
            Node::Job(j) => Some((j, *e)),
            _ => None,
        })
        .collect();
    if gates.is_empty() || gates.iter().any(|(_, e)| *e != End::Skipped) {
        return None;
    }
    let left_out = |j: &str| {
        plan.jobs
            .iter()
            .any(|p| p.name == j && matches!(p.when, When::Never | When::Manual))
    };
    // A gate skipped only because nothing failed (`when: on_failure`) never meant to test it.
    if !gates.iter().any(|(j, _)| left_out(j)) {
        return None;
    }
    Some(PipelineEvent::PushedUntested {
        image: image.clone(),
        skipped: gates.iter().map(|(j, _)| j.to_string()).collect(),
        by_rules: gates.iter().all(|(j, _)| left_out(j)),
    })
}

/// A unit whose fate its dependencies decide, without running it: a job skipped by `when:` or
/// blocked by what failed (or was held back) before it, a push held back. Returns how it ends,
/// what it leaves and the line that says why; `None`: the unit runs.
pub(super) fn decide(
    plan: &Pipeline,
    n: &Node,
    deps: &[(Node, End)],
    left: &HashMap<Node, Left>,
) -> Option<(End, Left, PipelineEvent)> {
    let failed: Vec<String> = deps
        .iter()
        .filter(|(_, e)| *e == End::Failed)
        .map(|(d, _)| describe(d))
        .collect();
    // A push held back blocks what needs it: the job would get the reference of a tag that was
    // never pushed (or that still names an older image).
    let held: Vec<String> = deps
        .iter()
        .filter(|(d, e)| matches!(d, Node::Push(_)) && *e == End::Blocked)
        .map(|(d, _)| describe(d))
        .collect();
    let blocked: Vec<String> = deps
        .iter()
        .filter(|(d, e)| matches!(d, Node::Job(_)) && *e == End::Blocked)
        .map(|(d, _)| describe(d))
        .collect();
    match n {
        Node::Job(name) => {
            let job = plan.jobs.iter().find(|j| j.name == *name)?;
            let image_failed = deps
                .iter()
                .any(|(d, e)| matches!(d, Node::Build(..)) && *e != End::Ok);
            let upstream = !failed.is_empty() || !held.is_empty() || !blocked.is_empty();
            // A manual job not asked for is skipped, and what names it in `needs:` waits for
            // it as in GitLab: here, where nobody can press play, it does not run either. So does
            // a job of a later stage (one without `needs:`) when the manual job is blocking
            // (`allow_failure: false`, which a manual job from `rules:` is unless it says
            // otherwise): GitLab's pipeline stops there, blocked.
            let waits_for = |j: &String| match &job.needs {
                Some(needs) => needs
                    .iter()
                    .any(|n| matches!(n, crate::pipeline::plan::Need::Job(x) if x == j)),
                None => plan.jobs.iter().any(|p| p.name == *j && !p.allow_failure),
            };
            let manual_needs: Vec<&String> = deps
                .iter()
                .filter_map(|(d, e)| match d {
                    Node::Job(j) if *e == End::Skipped => Some(j),
                    _ => None,
                })
                .filter(|j| {
                    waits_for(j)
                        && plan
                            .jobs
                            .iter()
                            .any(|p| p.name == **j && p.when == When::Manual)
                })
                .collect();
            let (end, reason) = if job.when == When::Never {
                use crate::pipeline::plan::RuleOutcome as R;
                let why = match job.rule {
                    R::NoneMatched => "no rule matched",
                    R::OnlyMissed => "only: does not match this run",
                    R::ExceptMatched => "except: matches this run",
                    R::NoRules | R::Matched { .. } => "when: never",
                };
                (End::Skipped, why.to_string())
            } else if job.when == When::Manual {
                (
                    End::Skipped,
                    format!("when: manual (`forge run {}` runs it)", job.base),
                )
            } else if !manual_needs.is_empty() {
                let names: Vec<&str> = manual_needs.iter().map(|s| s.as_str()).collect();
                (
                    End::Blocked,
                    format!(
                        "it waits for {}, manual and not asked for (`forge run {}` runs them)",
                        names.join(", "),
                        std::iter::once(job.base.as_str())
                            .chain(names.iter().copied())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                )
            } else if image_failed {
                (End::Blocked, "its image was not built".to_string())
            } else {
                match (job.when, upstream) {
                    (When::OnSuccess, true) => {
                        let mut why = Vec::new();
                        if !failed.is_empty() {
                            why.push(format!("{} failed before it", failed.join(", ")));
                        }
                        if !held.is_empty() {
                            why.push(format!("{} was held back", held.join(", ")));
                        }
                        // The jobs that did not run, only when nothing more telling is known.
                        if why.is_empty() {
                            why.push(format!("{} did not run", blocked.join(", ")));
                        }
                        (End::Blocked, why.join("; "))
                    }
                    (When::OnFailure, false) => (
                        End::Skipped,
                        "when: on_failure, and nothing failed before it".to_string(),
                    ),
                    _ => return None,
                }
            };
            let event = PipelineEvent::JobSkipped {
                job: name.clone(),
                reason: reason.clone(),
                manual: job.when == When::Manual,
            };
            let report = JobReport {
                name: name.clone(),
                result: JobResult::Skipped,
                exit_code: None,
                duration_ms: 0,
                reason: Some(reason),
                junit: None,
                artifacts: None,
                coverage: None,
                manual: job.when == When::Manual,
            };
            Some((end, Left::Job(JobLeft::default(), report), event))
        }
        Node::Push(image) => {
            let image_plan = plan.images.iter().find(|i| i.name == *image)?;
            let build_ok = deps
                .iter()
                .any(|(d, e)| matches!(d, Node::Build(..)) && *e == End::Ok);
            // A gate passes when its job passed (or failed where that is allowed). A job a rule
            // or `when:` left out gates nothing: `when: on_failure` skipped because nothing
            // failed is the run going well, not a reason to hold the push.
            let because: Vec<String> = deps
                .iter()
                .filter(|(d, e)| {
                    matches!(d, Node::Job(_)) && matches!(e, End::Failed | End::Blocked)
                })
                .map(|(d, _)| describe(d))
                .collect();
            if build_ok && because.is_empty() {
                return None;
            }
            // An image that was not built holds its push for that first: the jobs on it were
            // blocked by the same cause.
            let because = match left.get(&Node::Build(image.clone(), None)) {
                _ if build_ok => because,
                Some(Left::NotBuilt(by)) => by.clone(),
                _ => vec![format!("the build of {image}")],
            };
            let event = PipelineEvent::Held {
                image: image.clone(),
                tags: image_plan.tags.clone(),
                because: because.clone(),
            };
            Some((
                End::Blocked,
                Left::Held(image_plan.tags.clone(), because),
                event,
            ))
        }
        // A build waits only for its `artifacts-from` jobs: without their artifacts it would
        // build (and push) an image that lacks them. That holds for a job its rules or `when:`
        // left out of this run too (a monorepo's commit that did not touch that service): the
        // image is not built, and its jobs and push wait for a run that makes its artifacts.
        Node::Build(image, stage) => {
            let left_out: Vec<String> = deps
                .iter()
                .filter(|(d, e)| matches!(d, Node::Job(_)) && *e == End::Skipped)
                .map(|(d, _)| describe(d))
                .collect();
            if failed.is_empty() && blocked.is_empty() && left_out.is_empty() {
                return None;
            }
            let mut why = Vec::new();
            if !failed.is_empty() {
                why.push(format!("{} failed before it", failed.join(", ")));
            }
            if !blocked.is_empty() {
                why.push(format!("{} did not run", blocked.join(", ")));
            }
            if !left_out.is_empty() {
                why.push(format!(
                    "{} left out of this run (rules or `when:`), so the artifacts it takes are not there",
                    left_out.join(", ")
                ));
            }
            let event = PipelineEvent::ImageSkipped {
                image: build_name(image, stage.as_deref()),
                reason: why.join("; "),
            };
            let by = failed.into_iter().chain(blocked).chain(left_out).collect();
            Some((End::Blocked, Left::NotBuilt(by), event))
        }
    }
}
