//! What a run's rules decide: the pipeline's ref (a branch's or a tag's), `workflow: rules:`, a
//! job's `rules:` (the first that matches, its `when:` or the job's), and the names only rules
//! give, undefined while they decide. Split from `check.rs`, which calls these for each job.

use std::collections::{BTreeMap, BTreeSet};

use super::error::PipelineError;
use super::expand::{expand_at, inner_pos};
use super::file::{PipelineFile, RuleSpec, Sp, When, pos_of};
use super::plan::{CheckOptions, RuleOutcome};
use super::rules::{Expr, located_globs_match};
use super::vars::{Defs, Said};

/// GitLab's `CI_COMMIT_REF_SLUG`: the ref's name lowercased, every character but `a-z` and
/// `0-9` made `-`, at most 63 bytes, with no `-` at either end (a name safe in a host name, a
/// URL or a cache key).
pub fn ref_slug(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    slug.truncate(63);
    slug.trim_matches('-').to_string()
}

/// Makes the pipeline a branch's or a tag's, as GitLab's pipelines are: `CI_COMMIT_BRANCH` on a
/// branch, else `CI_COMMIT_TAG` on a tag, never both (a run on a branch whose commit is tagged is
/// the branch's), and `CI_COMMIT_REF_NAME`/`_SLUG` that ref. Returns the built-ins that are not
/// defined in this run: they expand to nothing (as in GitLab, and so that `$CI_COMMIT_TAG` in an
/// image's tag checks on a branch), but `rules:` read them as undefined (`$CI_COMMIT_TAG == null`)
/// and a job's environment lacks them (`${CI_COMMIT_TAG+set}`).
pub(super) fn pipeline_ref(globals: &mut BTreeMap<String, String>) -> BTreeSet<String> {
    let branch = globals["FORGE_GIT_BRANCH"].clone();
    let tag = globals["FORGE_GIT_TAG"].clone();
    let mut unset = BTreeSet::new();
    if branch.is_empty() {
        unset.extend(["FORGE_GIT_BRANCH", "CI_COMMIT_BRANCH"].map(String::from));
    }
    if tag.is_empty() {
        unset.insert("FORGE_GIT_TAG".to_string());
    }
    if tag.is_empty() || !branch.is_empty() {
        unset.insert("CI_COMMIT_TAG".to_string());
        globals.insert("CI_COMMIT_TAG".to_string(), String::new());
    }
    let ref_name = if branch.is_empty() { tag } else { branch };
    globals.insert("CI_COMMIT_REF_SLUG".to_string(), ref_slug(&ref_name));
    globals.insert("CI_COMMIT_REF_NAME".to_string(), ref_name);
    unset
}

/// `vars` as `rules:` read them: without the names `unset` holds, which stand in as empty for
/// expansion only.
pub(super) fn visible(
    vars: &BTreeMap<String, String>,
    unset: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    vars.iter()
        .filter(|(k, _)| !unset.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// GitLab's `workflow: rules:`: why this run makes no pipeline, or `None` when it makes one, and
/// then the deciding rule's variables join `globals`.
pub(super) fn workflow(
    file: &PipelineFile,
    source: &str,
    (defs, unset): (&mut Defs, &mut BTreeSet<String>),
    options: &CheckOptions,
    errors: &mut Vec<PipelineError>,
    said: &mut Said,
) -> Option<String> {
    let list = file.workflow.as_ref()?.rules.as_deref()?;
    let globals = defs.expand_all(source, said);
    let decided = rules(
        list,
        source,
        (&globals, unset),
        options,
        When::Always,
        (errors, &mut *said),
    );
    define_empty(list, defs, unset);
    match decided {
        (RuleOutcome::Matched { index }, When::Never) => {
            Some(format!("workflow: rule {} says `when: never`", index + 1))
        }
        (RuleOutcome::Matched { index }, _) => {
            let given = &list[index].variables;
            defs.define(given, |_| false);
            unset.retain(|n| !given.0.iter().any(|(k, _)| k.value == *n));
            None
        }
        _ => Some("workflow: no rule matches this run".to_string()),
    }
}

/// Parses every rule (all errors reported) and picks the first that matches. `vars` are the
/// variables and the names of them that are not defined (see [`visible`]).
pub(super) fn rules(
    list: &[RuleSpec],
    source: &str,
    (all, unset): (&BTreeMap<String, String>, &BTreeSet<String>),
    options: &CheckOptions,
    job_when: When,
    (errors, said): (&mut Vec<PipelineError>, &mut Said),
) -> (RuleOutcome, When) {
    if list.is_empty() {
        return (RuleOutcome::NoRules, job_when);
    }
    let vars = &visible(all, unset);
    // Globs name variables as GitLab's do (`changes: [$SERVICE_DIR/**/*]`); expanded with what
    // is undefined as nothing.
    let expanded = |globs: &[Sp<String>], errors: &mut Vec<PipelineError>| -> Vec<Sp<String>> {
        globs
            .iter()
            .map(|g| match expand_at(g, source, all) {
                Ok(text) => Sp::new(text, g.referenced, g.defined),
                Err(e) => {
                    errors.push(e);
                    g.clone()
                }
            })
            .collect()
    };
    let mut decided = None;
    for (index, r) in list.iter().enumerate() {
        let expr = r.if_.as_ref().and_then(|s| match Expr::parse(&s.value) {
            Ok(e) => Some(e),
            Err(e) => {
                let hint = match e.open {
                    Some(open) => Some(format!(
                        "the `(` at column {} is not closed",
                        inner_pos(s, source, open, 1).column
                    )),
                    None => e.hint,
                };
                errors.push(
                    PipelineError::new(
                        inner_pos(s, source, e.offset, e.width),
                        format!("in `if:`: {}", e.message),
                    )
                    .with_hint(hint),
                );
                None
            }
        });
        // GitLab's own variables forge does not set read as null: said, so that a rule that
        // never matches here (`$CI_PIPELINE_SOURCE == "push"`) does not pass unseen.
        if let (Some(e), Some(s)) = (&expr, &r.if_) {
            for name in e.names() {
                if (name.starts_with("CI_") || name.starts_with("GITLAB_"))
                    && !all.contains_key(name)
                {
                    said.warn(
                        pos_of(s),
                        format!(
                            "`${name}` is GitLab's, and forge does not set it: it reads as null here"
                        ),
                    );
                }
            }
        }
        let if_ok = expr.as_ref().is_none_or(|e| e.eval(vars));
        let changes_ok = r.changes.is_empty()
            || located_globs_match(
                &expanded(&r.changes, errors),
                |g| g,
                options.changed.as_deref(),
                errors,
            );
        let exists_ok = r.exists.is_empty()
            || located_globs_match(
                &expanded(&r.exists, errors),
                |g| g.trim_start_matches('/'),
                options.files.as_deref(),
                errors,
            );
        // A rule without `when:` gives the job's own (`when: manual` on the job and a rule that
        // only says `if:` make a manual job), as GitLab reads it.
        if decided.is_none() && if_ok && changes_ok && exists_ok {
            decided = Some((index, r.when.as_ref().map_or(job_when, |w| w.value)));
        }
    }
    match decided {
        Some((index, when)) => (RuleOutcome::Matched { index }, when),
        None => (RuleOutcome::NoneMatched, When::Never),
    }
}

/// Defines as empty, and marks `unset`, each variable some rule of `list` gives that `defs` lacks:
/// where none of them decides, it is undefined as GitLab's are (`rules:` read it as null, a job's
/// environment lacks it) and expands to nothing, so the file may name it either way.
pub(super) fn define_empty(list: &[RuleSpec], defs: &mut Defs, unset: &mut BTreeSet<String>) {
    for r in list {
        for (k, _) in &r.variables.0 {
            if !defs.has(&k.value) {
                defs.literal(&k.value, "");
                unset.insert(k.value.clone());
            }
        }
    }
}
