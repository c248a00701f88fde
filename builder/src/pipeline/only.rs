//! GitLab's `only:` and `except:`, the keys before `rules:`: refs (a branch or tag name,
//! `/regex/`, `branches`, `tags`), `changes:` globs and `variables:` expressions. `only:` keeps the
//! job when every key it gives has a match; `except:` leaves it out when every key it gives has
//! one. The ref is the pipeline's, as GitLab's `CI_COMMIT_BRANCH` and `CI_COMMIT_TAG` give it: a
//! run on a branch is a branch pipeline (a tag on its commit aside), else a run on a tag is a tag
//! pipeline. GitLab's pipeline sources (`merge_requests`, `schedules`, `api`, ...) are
//! refused where written: forge knows no such thing about a run.

use std::collections::BTreeMap;

use super::error::PipelineError;
use super::expand::inner_pos;
use super::file::{JobSpec, OnlySpec, Sp, pos_of};
use super::plan::CheckOptions;
use super::plan::RuleOutcome;
use super::rules::{Expr, located_globs_match, regex_literal};

/// GitLab's pipeline sources, which a ref list may name.
const SOURCES: &[&str] = &[
    "api",
    "chat",
    "external",
    "external_pull_requests",
    "merge_requests",
    "pipelines",
    "pushes",
    "schedules",
    "triggers",
    "web",
];

/// What `only:`/`except:` decide for `job`: `None` when it has neither (or errors were found),
/// else whether it runs, as a rule outcome.
pub(super) fn decide(
    job: &JobSpec,
    source: &str,
    vars: &BTreeMap<String, String>,
    options: &CheckOptions,
    errors: &mut Vec<PipelineError>,
) -> Option<RuleOutcome> {
    let (only, except) = (job.only.as_ref(), job.except.as_ref());
    if only.is_none() && except.is_none() {
        return None;
    }
    if job.rules.is_some() {
        let at = only.or(except).map(pos_of).unwrap_or_default();
        errors.push(
            PipelineError::new(at, "`only`/`except` cannot be used with `rules`")
                .with_hint(Some("GitLab refuses both on one job: keep `rules:`".into())),
        );
        return None;
    }
    let before = errors.len();
    let only = only.map(|o| holds(o, source, vars, options, errors));
    let except = except.map(|e| holds(e, source, vars, options, errors));
    if errors.len() > before {
        return None;
    }
    Some(if only == Some(false) {
        RuleOutcome::OnlyMissed
    } else if except == Some(true) {
        RuleOutcome::ExceptMatched
    } else {
        RuleOutcome::NoRules
    })
}

/// Whether every key `spec` gives has a match in this run.
fn holds(
    spec: &Sp<OnlySpec>,
    source: &str,
    vars: &BTreeMap<String, String>,
    options: &CheckOptions,
    errors: &mut Vec<PipelineError>,
) -> bool {
    let s = &spec.value;
    let var = |k: &str| vars.get(k).map_or("", String::as_str);
    // At most one of them is defined (see `check::pipeline_ref`).
    let (tag, branch) = (var("CI_COMMIT_TAG"), var("CI_COMMIT_BRANCH"));
    let name = if branch.is_empty() { tag } else { branch };
    let mut all = true;
    if let Some(refs) = &s.refs {
        let mut any = false;
        for r in refs {
            let v = r.value.as_str();
            let hit = match v {
                "branches" => !branch.is_empty(),
                "tags" => !tag.is_empty(),
                _ if SOURCES.contains(&v) => {
                    errors.push(
                        PipelineError::new(
                            pos_of(r),
                            format!(
                                "`{v}` is a GitLab pipeline source, which forge does not know of \
                                 a run"
                            ),
                        )
                        .with_hint(Some(
                            "name branches or tags (`main`, `/^release-/`, `tags`), or write \
                             `rules:`"
                                .into(),
                        )),
                    );
                    false
                }
                _ if v.starts_with('/') => match regex_literal(v) {
                    Ok(re) => !name.is_empty() && re.is_match(name),
                    Err(e) => {
                        errors.push(
                            PipelineError::new(
                                inner_pos(r, source, e.offset, e.width),
                                format!("in `{v}`: {}", e.message),
                            )
                            .with_hint(e.hint),
                        );
                        false
                    }
                },
                _ if v.contains('@') => {
                    errors.push(PipelineError::new(
                        pos_of(r),
                        format!(
                            "`{v}` names another project's ref: forge runs this repository's \
                             pipeline only"
                        ),
                    ));
                    false
                }
                _ => !name.is_empty() && v == name,
            };
            any |= hit;
        }
        all &= any;
    }
    if let Some(changes) = &s.changes {
        all &= located_globs_match(changes, |g| g, options.changed.as_deref(), errors);
    }
    if let Some(list) = &s.variables {
        let mut any = false;
        for v in list {
            match Expr::parse(&v.value) {
                Ok(e) => any |= e.eval(vars),
                Err(e) => errors.push(
                    PipelineError::new(
                        inner_pos(v, source, e.offset, e.width),
                        format!("in `variables:`: {}", e.message),
                    )
                    .with_hint(e.hint),
                ),
            }
        }
        all &= any;
    }
    all
}
