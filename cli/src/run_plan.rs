//! `forge run --check`: the pipeline file checked and its plan printed (images, jobs in their
//! stages, what each needs, its rules), without a store, a runner or a user namespace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use forge_builder::api::input::PIPELINE_FILE;
use forge_builder::pipeline::file::CachePolicy;
use forge_builder::pipeline::{self, CheckOptions, ImageUse, JobPlan, Need, Pipeline, RuleOutcome};

use crate::{Failure, display_name, failed, read};

/// The pipeline file `file` (its text `src`, shown as `name`) checked into its plan with the
/// files its `include:` names, read inside its repository (its git work tree, else its
/// directory): only regular files there, whatever links they pass through.
pub(crate) fn load(
    file: &Path,
    name: &str,
    src: &str,
    options: &CheckOptions,
) -> Result<Pipeline, Failure> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let top = forge_builder::pipeline::git::work_tree(dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| dir.to_path_buf());
    let read = |path: &str| {
        forge_builder::pipeline::run::read_file_inside(
            &format!("included {path}"),
            &top.join(path),
            &top,
            PIPELINE_FILE,
        )
    };
    pipeline::include::load(name, src, options, &read).map_err(|e| failed(e.to_string()))
}

pub(crate) fn check(file: &Path, build_number: Option<u64>) -> Result<(), Failure> {
    let name = display_name(file);
    let src = read(file, PIPELINE_FILE)?;
    let mut builtins = BTreeMap::new();
    if let Some(n) = build_number {
        builtins.insert("FORGE_BUILD_NUMBER".to_string(), n.to_string());
    }
    // --check leaves the git built-ins empty and `changes:` rules matching, and says so in the
    // plan.
    let options = CheckOptions {
        builtins,
        changed: None,
        files: None,
    };
    let plan = load(file, &name, &src, &options)?;
    for w in plan.warning_lines(&name) {
        errln!("{w}");
    }
    if let Some(why) = &plan.skipped {
        outln!("{name}: ok: no pipeline for this run ({why})");
        return Ok(());
    }
    out!("{}", render_plan(&name, &plan));
    Ok(())
}

fn image_use(i: &ImageUse) -> String {
    match i {
        ImageUse::Named(n) => format!("{n} (built)"),
        ImageUse::Stage { image, stage } => format!("{image}@{stage} (built, stage {stage})"),
        ImageUse::Registry(r) => r.to_string(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn render_job(out: &mut String, j: &JobPlan) {
    let _ = writeln!(out, "  job {}", j.name);
    let _ = writeln!(out, "    image: {}", image_use(&j.image));
    if !j.entrypoint.is_empty() {
        let _ = writeln!(out, "    entrypoint: {}", j.entrypoint.join(" "));
    }
    let needs = match &j.needs {
        None => "every job of the earlier stages".to_string(),
        Some(n) => list(
            &n.iter()
                .map(|n| match n {
                    Need::Job(j) => j.clone(),
                    Need::Image(i) => format!("{i} (image)"),
                })
                .collect::<Vec<_>>(),
        ),
    };
    let _ = writeln!(out, "    needs: {needs}");
    for s in &j.services {
        let ready = s.ready.as_ref().map_or(String::new(), |r| {
            format!(", ready: `{}` within {}s", r.command, r.timeout.as_secs())
        });
        let secrets = if s.secrets.is_empty() {
            String::new()
        } else {
            format!(", secrets: {}", s.secrets.join(", "))
        };
        let aliases = if s.aliases.is_empty() {
            String::new()
        } else {
            format!(" (also {})", s.aliases.join(", "))
        };
        let _ = writeln!(
            out,
            "    service {}{aliases}: {}{secrets}{ready}",
            s.name,
            image_use(&s.image)
        );
    }
    let rules = match j.rule {
        RuleOutcome::NoRules => format!("no rules, when {}", j.when),
        RuleOutcome::Matched { index } => format!("rule {} matched, when {}", index + 1, j.when),
        RuleOutcome::NoneMatched => "no rule matched: the job does not run".to_string(),
        RuleOutcome::OnlyMissed => "only: does not match: the job does not run".to_string(),
        RuleOutcome::ExceptMatched => "except: matches: the job does not run".to_string(),
    };
    let _ = writeln!(out, "    rules: {rules}");
    if !j.variables.is_empty() {
        let vars: Vec<String> = j
            .variables
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "    variables: {}", vars.join(" "));
    }
    if let Some(a) = &j.artifacts {
        let mut more = String::new();
        if !a.exclude.is_empty() {
            more.push_str(&format!(", exclude: {}", list(&a.exclude)));
        }
        if let Some(e) = a.expire_in {
            more.push_str(&format!(", expire in {}s", e.as_secs()));
        }
        let _ = writeln!(
            out,
            "    artifacts: {} (junit: {}{more})",
            list(&a.paths),
            list(&a.junit)
        );
    }
    if let Some(from) = &j.artifacts_from {
        let _ = writeln!(out, "    receives artifacts of: {}", list(from));
    }
    for c in &j.caches {
        let mut more = match c.policy {
            CachePolicy::Pull => "pull: restored, never saved".to_string(),
            CachePolicy::Push => format!("push: saved {}, never restored", c.when),
            CachePolicy::PullPush => format!("pull-push: restored, saved {}", c.when),
        };
        if !c.fallback_keys.is_empty() {
            more.push_str(&format!(", fallback keys {}", list(&c.fallback_keys)));
        }
        let _ = writeln!(out, "    cache `{}`: {} ({more})", c.key, list(&c.paths));
    }
    let mut extra = Vec::new();
    if let Some(t) = j.timeout {
        extra.push(format!("timeout {}s", t.as_secs()));
    }
    if let Some(r) = &j.retry {
        extra.push(format!("retry {}", r.max));
    }
    if j.allow_failure {
        extra.push("allow_failure".to_string());
    }
    if let Some(g) = &j.resource_group {
        extra.push(format!("resource group {g}"));
    }
    if let Some(c) = &j.coverage {
        extra.push(format!("coverage /{c}/"));
    }
    if j.network == pipeline::file::Network::Host {
        extra.push("network host".to_string());
    }
    if !j.cache {
        extra.push("no cache".to_string());
    }
    if !j.secrets.is_empty() {
        extra.push(format!("secrets {}", j.secrets.join(", ")));
    }
    if !extra.is_empty() {
        let _ = writeln!(out, "    {}", extra.join("; "));
    }
}

/// The plan as text: images, then stages in order with their jobs.
pub(crate) fn render_plan(name: &str, p: &Pipeline) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name}: ok: stages {}, jobs {}, images {}",
        p.stages.len(),
        p.jobs.len(),
        p.images.len()
    );
    let _ = writeln!(
        out,
        "(check only: git built-ins are empty and `changes:` and `exists:` rules match)"
    );
    for i in &p.images {
        let _ = writeln!(out, "image {}", i.name);
        let target = i
            .target
            .as_ref()
            .map_or(String::new(), |t| format!(", target {t}"));
        let _ = writeln!(
            out,
            "  build: context {}, dockerfile {}{target}{}",
            i.context,
            i.dockerfile,
            if i.no_cache { ", no cache" } else { "" }
        );
        if !i.artifacts_from.is_empty() {
            let _ = writeln!(out, "  artifacts from: {}", list(&i.artifacts_from));
        }
        let _ = writeln!(out, "  tags: {}", list(&i.tags));
        if i.push {
            let _ = writeln!(out, "  push after: {}", list(&i.push_needs));
        }
    }
    for s in &p.stages {
        let _ = writeln!(out, "stage {s}");
        let jobs: Vec<&JobPlan> = p.jobs.iter().filter(|j| j.stage == *s).collect();
        if jobs.is_empty() {
            let _ = writeln!(out, "  (no jobs)");
        }
        for j in jobs {
            render_job(&mut out, j);
        }
    }
    out
}
