//! GitLab CI keywords forge does not act on. Those that change nothing where one machine runs
//! every job and no run cancels another (`tags:`, `interruptible:`, `environment:`) are read and
//! said to be ignored; the others are refused with what to do instead: a file brought over from
//! GitLab meets these first, and "did you mean `stage`?" for `tags:` would mislead.

use super::error::Pos;
use super::file::{PipelineFile, pos_of};

/// The hint for `key`, unknown where the keys `expected` are known; `None` when GitLab has no
/// such keyword there.
pub(super) fn hint(key: &str, expected: &[&str]) -> Option<String> {
    let top = expected.contains(&"jobs") && expected.contains(&"images");
    let job = expected.contains(&"script");
    let said = if top {
        match key {
            "image" | "services" | "before_script" | "after_script" | "cache" => {
                "GitLab's global form of this key: put it under `default:`"
            }
            "spec" => "forge has no CI/CD inputs (`spec: inputs:`): use `variables:`",
            _ => return None,
        }
    } else if job {
        match key {
            "trigger" => "forge runs no child or multi-project pipelines",
            "inherit" => {
                "forge has no `inherit:`: a job takes each `default:` key it does not set itself"
            }
            "release" | "pages" => "forge makes no GitLab releases or pages: remove it",
            "id_tokens" | "identity" => {
                "forge issues no identity tokens: give the job `secrets:` from the environment"
            }
            "start_in" => "forge has no delayed jobs: remove `start_in:`",
            "manual_confirmation" => {
                "forge asks no confirmation: `forge run JOB` runs a manual job"
            }
            "hooks" => "forge has no `hooks:`: put the commands at the top of `before_script:`",
            _ => return None,
        }
    } else {
        return None;
    };
    Some(said.to_string())
}

/// Warnings for the keys of `file`'s jobs and `default:` that forge reads and ignores.
pub(super) fn ignored(file: &PipelineFile, warnings: &mut Vec<(Pos, String)>) {
    const TAGS: &str = "`tags:` is ignored: forge runs every job on this machine";
    const INTERRUPTIBLE: &str =
        "`interruptible:` is ignored: forge's runs do not cancel one another";
    const ENVIRONMENT: &str = "`environment:` is ignored: forge tracks no deployments (the job's \
                               script runs as written)";
    let mut say = |at: Option<Pos>, what: &str| {
        if let Some(at) = at {
            warnings.push((at, what.to_string()));
        }
    };
    const NAME: &str = "`artifacts: name:` is ignored: forge keeps a job's artifacts in a \
                        directory of its name (`--artifacts-dir`), not in a named archive";
    const EXPOSE_AS: &str = "`artifacts: expose_as:` is ignored: forge has no merge requests";
    if let Some(w) = &file.workflow {
        say(
            w.name.as_ref().map(pos_of),
            "`workflow: name:` is ignored: forge numbers its runs",
        );
        say(
            w.auto_cancel.as_ref().map(pos_of),
            "`workflow: auto_cancel:` is ignored: forge's runs do not cancel one another",
        );
    }
    let d = &file.default;
    say(d.tags.as_ref().map(pos_of), TAGS);
    say(d.interruptible.as_ref().map(pos_of), INTERRUPTIBLE);
    let artifacts = file.jobs.0.iter().filter_map(|(_, j)| j.artifacts.as_ref());
    for a in d.artifacts.iter().chain(artifacts) {
        say(a.name.as_ref().map(pos_of), NAME);
        say(a.expose_as.as_ref().map(pos_of), EXPOSE_AS);
        for (kind, _) in a.reports.iter().flat_map(|r| &r.kept) {
            say(
                Some(pos_of(kind)),
                &format!(
                    "`reports: {}:` is kept with the job's artifacts; forge does not read it",
                    kind.value
                ),
            );
        }
    }
    for (_, job) in &file.jobs.0 {
        say(job.tags.as_ref().map(pos_of), TAGS);
        say(job.interruptible.as_ref().map(pos_of), INTERRUPTIBLE);
        say(job.environment.as_ref().map(pos_of), ENVIRONMENT);
    }
    // A template's key taken by several jobs is said once.
    warnings.sort_by_key(|(at, _)| (at.line, at.column));
    warnings.dedup();
}

/// The hint for an unknown key at the top of the file that is no GitLab keyword either: most
/// likely a job written where GitLab has them.
pub(super) fn top_level_job(key: &str, expected: &[&str]) -> Option<String> {
    (expected.contains(&"jobs") && expected.contains(&"images")).then(|| {
        format!("forge.yaml keeps its jobs under `jobs:`; if `{key}` is a job, move it there")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_keywords_get_their_own_hints_where_they_are_known() {
        let top = ["variables", "images", "stages", "default", "jobs"];
        let job = ["stage", "image", "script"];
        assert!(hint("spec", &top).unwrap().contains("inputs"));
        assert_eq!(hint("build", &top), None);
        assert!(
            top_level_job("build", &top)
                .unwrap()
                .contains("under `jobs:`")
        );
        assert_eq!(top_level_job("build", &job), None);
        assert!(hint("trigger", &job).unwrap().contains("child"));
        assert_eq!(hint("resource_group", &job), None);
        assert_eq!(hint("tags", &job), None);
        assert!(hint("image", &top).unwrap().contains("`default:`"));
        // A misspelt key of forge's own keeps the usual suggestion.
        assert_eq!(hint("scirpt", &job), None);
        assert_eq!(hint("tags", &["paths", "when"]), None);
    }
}
