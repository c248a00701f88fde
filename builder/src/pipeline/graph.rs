//! The dependency graph of a checked pipeline, for one purpose here: to refuse a cycle, shown as
//! its path (`unit -> app -> unit`). Nodes are jobs, image builds and image pushes; a job waits
//! for its needs (or, without `needs:`, for every job of the earlier stages), for the images it
//! runs on; a build waits for its `artifacts-from` jobs, a push for its build and its `needs`.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{PipelineError, Pos};
use super::expand::expand_at;
use super::file::{ImageSpec, OrderedMap, PipelineFile, Sp, Text, pos_of};
use super::plan::{ImagePlan, ImageUse, Names, Pipeline};
use crate::cache_io::{CacheExport, CacheImport};
use crate::frontend::suggest::suggest;

/// The plan of one `images:` entry, its strings expanded against the global variables. A push
/// with no `needs:` gets its default (every job that runs on the image) in [`default_push_needs`].
pub(super) fn image_plan(
    name: &Sp<String>,
    spec: &ImageSpec,
    source: &str,
    vars: &BTreeMap<String, String>,
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) -> ImagePlan {
    let mut text = |s: &Option<Sp<String>>, default: &str| match s {
        Some(s) => expand_at(s, source, vars).unwrap_or_else(|e| {
            errors.push(e);
            s.value.clone()
        }),
        None => default.to_string(),
    };
    let context = text(&spec.context, ".");
    let dockerfile = text(&spec.dockerfile, "Dockerfile");
    let target = spec.target.as_ref().map(|t| text(&Some(t.clone()), ""));
    // A pipeline builds from its own repository: an absolute path is refused here, with its
    // place; a relative one that leads out (`..`, a symlink) when the run resolves it.
    for (key, value, given) in [
        ("context", &context, &spec.context),
        ("dockerfile", &dockerfile, &spec.dockerfile),
    ] {
        if let Some(at) = given.as_ref().filter(|_| value.starts_with('/')) {
            errors.push(PipelineError::new(
                pos_of(at),
                format!(
                    "{key} `{value}` is an absolute path: it must be relative (the context to the \
                     pipeline file's directory, the Dockerfile to the context), inside the \
                     repository"
                ),
            ));
        }
    }
    let mut map = |m: &OrderedMap<Sp<Text>>| {
        let mut out = BTreeMap::new();
        for (k, v) in &m.0 {
            let s = Sp::new(v.value.0.clone(), v.referenced, v.defined);
            match expand_at(&s, source, vars) {
                Ok(v) => {
                    out.insert(k.value.clone(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        out
    };
    let build_args = map(&spec.build_args);
    let labels = map(&spec.labels);
    let tags = spec
        .tags
        .iter()
        .filter_map(|t| expand_at(t, source, vars).map_err(|e| errors.push(e)).ok())
        .collect();
    let jobs = |list: &[Sp<String>], errors: &mut Vec<PipelineError>, key: &str| {
        let mut out = Vec::new();
        for n in list {
            match jobs_named(&n.value, names) {
                Some(found) => out.extend(found),
                None => {
                    let hint = suggest(&n.value, names.jobs.keys().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"));
                    errors.push(
                        PipelineError::new(
                            pos_of(n),
                            format!("`{}` in {key} names no job", n.value),
                        )
                        .with_hint(hint),
                    );
                }
            }
        }
        out
    };
    let cache = |list: &[Sp<String>], errors: &mut Vec<PipelineError>| {
        list.iter()
            .filter_map(|c| {
                let v = expand_at(c, source, vars)
                    .map_err(|e| errors.push(e))
                    .ok()?;
                Some((v, pos_of(c)))
            })
            .collect::<Vec<_>>()
    };
    let cache_from = cache(&spec.cache.from, errors)
        .into_iter()
        .filter_map(|(v, at)| {
            CacheImport::parse(&v)
                .map_err(|e| errors.push(PipelineError::new(at, format!("cache.from: {e}"))))
                .ok()
        })
        .collect();
    let cache_to = cache(&spec.cache.to, errors)
        .into_iter()
        .filter_map(|(v, at)| {
            CacheExport::parse(&v)
                .map_err(|e| errors.push(PipelineError::new(at, format!("cache.to: {e}"))))
                .ok()
        })
        .collect();
    let push_needs = jobs(spec.needs.as_deref().unwrap_or_default(), errors, "needs");
    let artifacts_from = jobs(&spec.artifacts_from, errors, "artifacts-from");
    ImagePlan {
        name: name.value.clone(),
        context,
        dockerfile,
        target,
        build_args,
        labels,
        tags,
        push: spec.push,
        no_cache: spec.no_cache,
        push_needs,
        artifacts_from,
        cache_from,
        cache_to,
    }
}

/// The expanded jobs a name means: a base name all its matrix instances, else one instance.
pub(super) fn jobs_named(name: &str, names: &Names<'_>) -> Option<Vec<String>> {
    if let Some(list) = names.jobs.get(name) {
        return Some(list.clone());
    }
    names
        .jobs
        .values()
        .flatten()
        .find(|j| *j == name)
        .map(|j| vec![j.clone()])
}

/// Fills the push needs of images whose `needs:` is absent: every job that runs on the image,
/// except those that need the image themselves (they wait for the push, so cannot gate it).
pub(super) fn default_push_needs(file: &PipelineFile, p: &mut Pipeline) {
    for img in &mut p.images {
        if file
            .images
            .get(&img.name)
            .is_some_and(|s| s.needs.is_some())
        {
            continue;
        }
        img.push_needs = p
            .jobs
            .iter()
            .filter(|j| runs_on(&j.image, &img.name))
            .filter(|j| {
                !j.needs
                    .iter()
                    .flatten()
                    .any(|n| *n == super::plan::Need::Image(img.name.clone()))
            })
            .map(|j| j.name.clone())
            .collect();
    }
}

fn runs_on(image: &ImageUse, name: &str) -> bool {
    match image {
        ImageUse::Named(n) | ImageUse::Stage { image: n, .. } => n == name,
        ImageUse::Registry(_) => false,
    }
}

/// The first cycle found, as an error at the first edge of its path. `located[i]` is the name
/// of `p.jobs[i]` as written.
pub(super) fn find_cycle(
    file: &PipelineFile,
    p: &Pipeline,
    located: &[&Sp<String>],
) -> Option<PipelineError> {
    let nj = p.jobs.len();
    let ni = p.images.len();
    let image_index: BTreeMap<&str, usize> = p
        .images
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let job_index = |name: &str| -> Vec<usize> {
        p.jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.name == name || j.base == name)
            .map(|(i, _)| i)
            .collect()
    };
    let build = |i: usize| nj + i;
    let push = |i: usize| nj + ni + i;
    let mut edges: Vec<Vec<(usize, Pos, bool)>> = vec![Vec::new(); nj + 2 * ni];
    let stage_rank = |s: &str| p.stages.iter().position(|x| x == s).unwrap_or(usize::MAX);
    for (j, job) in p.jobs.iter().enumerate() {
        let Some(spec) = file.jobs.get(&job.base) else {
            continue;
        };
        match &spec.needs {
            None => {
                let mine = stage_rank(&job.stage);
                for (k, other) in p.jobs.iter().enumerate() {
                    if stage_rank(&other.stage) < mine {
                        edges[j].push((k, pos_of(located[j]), true));
                    }
                }
            }
            Some(list) => {
                for n in list {
                    if let Some(&i) = image_index.get(n.value.name.as_str()) {
                        let to = if p.images[i].push { push(i) } else { build(i) };
                        edges[j].push((to, pos_of(n), false));
                    } else {
                        for k in job_index(&n.value.name) {
                            edges[j].push((k, pos_of(n), false));
                        }
                    }
                }
            }
        }
        let uses = file
            .image_of(spec)
            .map(|i| (&job.image, pos_of(&i.name)))
            .into_iter()
            .chain(
                job.services
                    .iter()
                    .zip(file.services_of(spec))
                    .map(|(s, ss)| (&s.image, pos_of(&ss.image))),
            );
        for (image, at) in uses {
            if let ImageUse::Named(n) | ImageUse::Stage { image: n, .. } = image
                && let Some(&i) = image_index.get(n.as_str())
            {
                edges[j].push((build(i), at, false));
            }
        }
    }
    for (i, img) in p.images.iter().enumerate() {
        let Some((name, spec)) = file.images.0.iter().find(|(k, _)| k.value == img.name) else {
            continue;
        };
        let entry_pos = |list: &[Sp<String>], job: &str| {
            list.iter()
                .find(|n| {
                    p.jobs
                        .iter()
                        .any(|j| j.name == job && (j.base == n.value || j.name == n.value))
                })
                .map_or(pos_of(name), pos_of)
        };
        for a in &img.artifacts_from {
            for k in job_index(a) {
                edges[build(i)].push((k, entry_pos(&spec.artifacts_from, a), false));
            }
        }
        if img.push {
            edges[push(i)].push((build(i), pos_of(name), false));
            for n in &img.push_needs {
                let at = entry_pos(spec.needs.as_deref().unwrap_or_default(), n);
                for k in job_index(n) {
                    edges[push(i)].push((k, at, false));
                }
            }
        }
    }
    let label = |n: usize| -> String {
        if n < nj {
            p.jobs[n].name.clone()
        } else if n < nj + ni {
            p.images[n - nj].name.clone()
        } else {
            format!("{} (push)", p.images[n - nj - ni].name)
        }
    };
    // Iterative depth-first search (no recursion, however long a chain of needs).
    let mut color = vec![0u8; edges.len()];
    for start in 0..edges.len() {
        if color[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(to, _, _)) = edges[node].get(*next) {
                *next += 1;
                match color[to] {
                    0 => {
                        color[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let path: Vec<usize> = stack[from..].iter().map(|(n, _)| *n).collect();
                        let second = path.get(1).copied().unwrap_or(to);
                        let at = edges[to]
                            .iter()
                            .find(|(t, _, _)| *t == second)
                            .map_or(Pos::new(1, 1, 1), |(_, at, _)| *at);
                        let mut names: Vec<String> = path.iter().map(|n| label(*n)).collect();
                        names.push(label(to));
                        // A job without `needs:` waits for the earlier stages: say which one does.
                        let by_stage = path
                            .iter()
                            .zip(path.iter().skip(1).chain([&to]))
                            .find(|(a, b)| edges[**a].iter().any(|(t, _, s)| t == *b && *s));
                        let unique: BTreeSet<&String> = names.iter().collect();
                        let hint = if unique.len() == 1 {
                            "a job cannot need itself".to_string()
                        } else if let Some((a, _)) = by_stage {
                            format!(
                                "`{}` has no `needs:`, so it waits for every job of the earlier stages; give it `needs:`",
                                label(*a)
                            )
                        } else {
                            "remove one of these needs".to_string()
                        };
                        return Some(
                            PipelineError::new(at, format!("cycle: {}", names.join(" -> ")))
                                .with_hint(Some(hint)),
                        );
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                stack.pop();
            }
        }
    }
    None
}
