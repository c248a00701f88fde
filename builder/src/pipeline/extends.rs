//! GitLab's `extends:`: a job takes the keys of the jobs or hidden templates it names (`.tests`,
//! at the top of the file or under `jobs:`) where it has none of its own, each named one first
//! taking from those it names in turn. `variables:` merge key by key, the job's value winning, and
//! `artifacts:` key by key (`reports:` kind by kind), as GitLab deep-merges mappings; any other
//! key is the job's own, else the last named one's that has it. A template is read only when
//! a job names it, so a hidden key that is only an anchor's home (`.scripts: &s [...]`) stays
//! unread; one that is named is read as strictly as a job, and every value keeps where it was
//! written, so an error in a template points into the template.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::error::{PipelineError, Pos};
use super::file::{ArtifactsSpec, JobSpec, PipelineFile, Reports, Sp, pos_of};
use crate::frontend::suggest::suggest;

/// GitLab's limit on how deep `extends:` may nest.
pub const MAX_EXTENDS_DEPTH: usize = 11;

/// Gives every job of `file` what its `extends:` names, reading the hidden templates named from
/// `sources` (with `options`, the bounds the file was read with; with `include:`, each file's
/// text at its lines of the whole, the first that has a template giving it). Errors are located
/// at the `extends:` that names nothing, or goes round, or nests too deep.
pub(super) fn resolve(
    file: &mut PipelineFile,
    sources: &[&str],
    options: impl Fn() -> serde_saphyr::Options,
) -> Result<(), Vec<PipelineError>> {
    if file.jobs.0.iter().all(|(_, j)| j.extends.is_none()) {
        return Ok(());
    }
    let mut known: BTreeMap<String, JobSpec> = file
        .jobs
        .0
        .iter()
        .map(|(k, j)| (k.value.clone(), j.clone()))
        .collect();
    // The hidden templates named, read as jobs; each round reads the ones the last round's name.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut hidden_names: Vec<String> = Vec::new();
    for _ in 0..=MAX_EXTENDS_DEPTH {
        let mut more = false;
        for j in known.values() {
            for n in named(j) {
                if n.starts_with('.') && wanted.insert(n.to_string()) {
                    more = true;
                }
            }
        }
        if !more {
            break;
        }
        hidden_names.clear();
        for source in sources {
            let read =
                serde_saphyr::with_deserializer_from_str_with_options(source, options(), |d| {
                    Templates { wanted: &wanted }.deserialize(d)
                })
                .map_err(|e| vec![super::yaml_error(&e, source)])?;
            hidden_names.extend(read.names);
            for (name, job) in read.templates {
                known.entry(name).or_insert(job);
            }
        }
    }
    let mut errors = Vec::new();
    for (k, job) in &mut file.jobs.0 {
        if job.extends.is_none() {
            continue;
        }
        let mut stack = vec![k.value.clone()];
        match full_of(job, &known, &hidden_names, &mut stack) {
            Ok(full) => *job = full,
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The names `job`'s `extends:` gives, in order.
fn named(job: &JobSpec) -> impl Iterator<Item = &str> {
    job.extends
        .iter()
        .flat_map(|e| e.value.0.iter().map(String::as_str))
}

/// `job` with what its `extends:` names laid under it; `stack` is the chain that led here.
fn full_of(
    job: &JobSpec,
    known: &BTreeMap<String, JobSpec>,
    hidden: &[String],
    stack: &mut Vec<String>,
) -> Result<JobSpec, PipelineError> {
    let Some(ext) = &job.extends else {
        return Ok(job.clone());
    };
    let at = pos_of(ext);
    if stack.len() > MAX_EXTENDS_DEPTH {
        return Err(PipelineError::new(
            at,
            format!(
                "`extends` nests deeper than {MAX_EXTENDS_DEPTH} levels: {}",
                stack.join(" -> ")
            ),
        ));
    }
    let mut base: Option<JobSpec> = None;
    for name in &ext.value.0 {
        if stack.iter().any(|s| s == name) {
            return Err(PipelineError::new(
                at,
                format!("`extends` goes round: {} -> {name}", stack.join(" -> ")),
            ));
        }
        let Some(parent) = known.get(name) else {
            return Err(unknown(name, at, known, hidden));
        };
        stack.push(name.clone());
        let parent = full_of(parent, known, hidden, stack)?;
        stack.pop();
        base = Some(match base {
            None => parent,
            Some(b) => merge(b, parent),
        });
    }
    let mut full = match base {
        Some(b) => merge(b, job.clone()),
        None => job.clone(),
    };
    full.extends = None;
    Ok(full)
}

fn unknown(
    name: &str,
    at: Pos,
    known: &BTreeMap<String, JobSpec>,
    hidden: &[String],
) -> PipelineError {
    let all = known
        .keys()
        .map(String::as_str)
        .chain(hidden.iter().map(String::as_str));
    let hint = suggest(name, all).map(|n| format!("did you mean `{n}`?"));
    PipelineError::new(
        at,
        format!("`extends` names `{name}`, which is no job or hidden template"),
    )
    .with_hint(hint.or_else(|| {
        Some("a template is a key starting with `.`, at the top or under `jobs:`".into())
    }))
}

/// `over` laid on `base`: `over`'s keys win, `variables` merge key by key.
pub(super) fn merge(base: JobSpec, over: JobSpec) -> JobSpec {
    JobSpec {
        stage: over.stage.or(base.stage),
        image: both(base.image, over.image, |b, o| b.merged(o)),
        script: over.script.or(base.script),
        before_script: over.before_script.or(base.before_script),
        after_script: over.after_script.or(base.after_script),
        variables: base.variables.merged(over.variables, |_, o| o),
        needs: over.needs.or(base.needs),
        services: over.services.or(base.services),
        dependencies: over.dependencies.or(base.dependencies),
        parallel: over.parallel.or(base.parallel),
        artifacts: both(base.artifacts, over.artifacts, merge_artifacts),
        secrets: over.secrets.or(base.secrets),
        rules: over.rules.or(base.rules),
        only: over.only.or(base.only),
        except: over.except.or(base.except),
        allow_failure: over.allow_failure.or(base.allow_failure),
        retry: over.retry.or(base.retry),
        timeout: over.timeout.or(base.timeout),
        when: over.when.or(base.when),
        network: over.network.or(base.network),
        cache: both(base.cache, over.cache, |b, o| {
            Sp::new(b.value.merged(o.value), o.referenced, o.defined)
        }),
        extends: over.extends.or(base.extends),
        tags: over.tags.or(base.tags),
        interruptible: over.interruptible.or(base.interruptible),
        environment: over.environment.or(base.environment),
        coverage: over.coverage.or(base.coverage),
        resource_group: over.resource_group.or(base.resource_group),
    }
}

/// `over` laid on `base` by `merge` when both are written, else whichever is.
fn both<T>(base: Option<T>, over: Option<T>, merge: impl FnOnce(T, T) -> T) -> Option<T> {
    match (base, over) {
        (Some(b), Some(o)) => Some(merge(b, o)),
        (b, o) => o.or(b),
    }
}

/// `artifacts:` merged as GitLab deep-merges a mapping: each key of `o` wins, `reports:` kind by
/// kind; a list (`paths`, `exclude`, a kind's files) is replaced whole.
fn merge_artifacts(b: ArtifactsSpec, o: ArtifactsSpec) -> ArtifactsSpec {
    ArtifactsSpec {
        paths: o.paths.or(b.paths),
        exclude: o.exclude.or(b.exclude),
        when: o.when.or(b.when),
        reports: both(b.reports, o.reports, Reports::merged),
        expire_in: o.expire_in.or(b.expire_in),
        name: o.name.or(b.name),
        expose_as: o.expose_as.or(b.expose_as),
    }
}

/// What one read of the file for templates found: the `wanted` hidden keys read as jobs, and
/// the names of every hidden key (for hints).
#[derive(Default)]
struct Found {
    templates: Vec<(String, JobSpec)>,
    names: Vec<String>,
}

/// Reads the hidden keys in `wanted`, at the top of the file or under `jobs:`, as jobs; passes
/// over the rest unread.
struct Templates<'a> {
    wanted: &'a BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for Templates<'_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(Level {
            wanted: self.wanted,
            top: true,
        })
    }
}

/// One mapping: the top of the file (`top`), or `jobs:`.
struct Level<'a> {
    wanted: &'a BTreeSet<String>,
    top: bool,
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::default();
        while let Some(k) = map.next_key::<String>()? {
            if self.top && k == "jobs" {
                let inner = map.next_value_seed(Jobs(self.wanted))?;
                found.templates.extend(inner.templates);
                found.names.extend(inner.names);
            } else if k.starts_with('.') {
                if self.wanted.contains(&k) {
                    found.templates.push((k.clone(), map.next_value()?));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                found.names.push(k);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::default())
    }
}

/// `jobs:` read as a [`Level`].
struct Jobs<'a>(&'a BTreeSet<String>);

impl<'de> DeserializeSeed<'de> for Jobs<'_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(Level {
            wanted: self.0,
            top: false,
        })
    }
}
