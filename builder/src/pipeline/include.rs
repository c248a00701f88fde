//! GitLab's `include: local:`: a pipeline made of several files of its repository. Each file is
//! read (with `include:` of its own, at most [`MAX_FILES`] in all, each once) and parsed as a
//! forge.yaml of its own; they are merged, later included files over earlier ones and the
//! pipeline file over them all (variables and images name by name, a job defined twice as
//! `extends:` merges, every other key whole), and `extends:` may name a template of any of them.
//!
//! Errors point into the file where the value was written: the files are laid one after the
//! other in one text, each parsed at its own lines of it (the lines before it left blank), so
//! every located value keeps a line of the whole, and [`PipelineErrors::of_parts`] renders each
//! error in its file, at its line there.

use std::collections::BTreeSet;

use super::error::{Part, PipelineError, PipelineErrors, Pos};
use super::file::{DefaultSpec, Include, IncludeList, PipelineFile, Sp, pos_of};
use super::{CheckOptions, Pipeline, check, extends, normalize_breaks, read_yaml, yaml_options};

/// Most files one pipeline is made of, the pipeline file included (GitLab's limit is 150).
pub const MAX_FILES: usize = 150;

/// Reads a file `include:` names, by its path relative to the repository's top (`/` at the
/// start taken away): its text, or why it cannot be read.
pub type ReadInclude<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// Parses and checks the pipeline file `file` (its text `source`) with the files its `include:`
/// names, read with `read`: the plan, or every error found, each in its file.
pub fn load(
    file: &str,
    source: &str,
    options: &CheckOptions,
    read: ReadInclude<'_>,
) -> Result<Pipeline, PipelineErrors> {
    let main = normalize_breaks(source).into_owned();
    // The files are found first by their `include:` alone: a file read whole before its
    // `!reference` tags are resolved (which may name a key of any of them) would not read.
    let first: Includes = read_yaml(file, &main)?;
    if first.include.is_none() {
        return super::load(file, &main, options);
    }
    let mut texts = vec![with_end(main)];
    let mut parts = vec![Part {
        file: file.to_string(),
        first_line: 0,
        lines: texts[0].lines().count(),
    }];
    let mut found = vec![first];
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = 0;
    while next < found.len() {
        let wanted = included(found[next].include.as_ref(), &mut errors);
        next += 1;
        for (path, at) in wanted {
            if !seen.insert(path.clone()) {
                continue;
            }
            if found.len() == MAX_FILES {
                errors.push(PipelineError::new(
                    at,
                    format!("more than {MAX_FILES} files are included"),
                ));
                break;
            }
            let text = match read(&path) {
                Ok(t) => with_end(normalize_breaks(&t).into_owned()),
                Err(e) => {
                    errors.push(PipelineError::new(at, e));
                    continue;
                }
            };
            let first_line: usize = parts.iter().map(|p| p.lines).sum();
            let padded = format!("{}{text}", "\n".repeat(first_line));
            parts.push(Part {
                file: path.clone(),
                first_line,
                lines: text.lines().count(),
            });
            texts.push(text);
            match read_yaml::<Includes>(&path, &padded) {
                Ok(f) => found.push(f),
                Err(e) => {
                    errors.extend(e.errors);
                    found.push(Includes::default());
                }
            }
        }
    }
    // `!reference` tags resolved, each file is read whole.
    let mut files = Vec::new();
    if errors.is_empty() {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        match super::reference::resolve_all(&refs) {
            Ok(resolved) => {
                for (i, text) in resolved.into_iter().enumerate() {
                    if let Some(text) = text {
                        texts[i] = text;
                    }
                }
            }
            Err(found) => errors.extend(found.into_iter().map(|(i, mut e)| {
                e.pos.line += parts[i].first_line;
                e
            })),
        }
    }
    if errors.is_empty() {
        for (part, text) in parts.iter().zip(&texts) {
            let padded = format!("{}{text}", "\n".repeat(part.first_line));
            match read_yaml::<PipelineFile>(&part.file, &padded) {
                Ok(f) => files.push(f),
                Err(e) => errors.extend(e.errors),
            }
        }
    }
    let whole: String = texts.concat();
    let fail = |errors| PipelineErrors::of_parts(&whole, errors, parts.clone());
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    // Templates are read from every file, the pipeline file's first, then the later included.
    let padded: Vec<String> = std::iter::once(0)
        .chain((1..parts.len()).rev())
        .map(|i| format!("{}{}", "\n".repeat(parts[i].first_line), texts[i]))
        .collect();
    let mut files = files.into_iter();
    let main = files.next().expect("the pipeline file is read first");
    let mut merged = files.fold(PipelineFile::default(), merge);
    merged = merge(merged, main);
    let sources: Vec<&str> = padded.iter().map(String::as_str).collect();
    extends::resolve(&mut merged, &sources, yaml_options).map_err(fail)?;
    check(&merged, &whole, options).map_err(fail)
}

/// A file's `include:` alone, the rest of it passed over.
#[derive(Default, serde::Deserialize)]
struct Includes {
    include: Option<Sp<IncludeList>>,
}

fn with_end(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The paths `file`'s `include:` names, with where each is written; what forge cannot include
/// is an error there.
fn included(
    include: Option<&Sp<IncludeList>>,
    errors: &mut Vec<PipelineError>,
) -> Vec<(String, Pos)> {
    let Some(list) = include else {
        return Vec::new();
    };
    let whole = pos_of(list);
    let mut out = Vec::new();
    for i in &list.value.0 {
        match i {
            Include::Local(p) => {
                // A bare path as the whole value has no place of its own.
                let at = if p.referenced.line() == 0 {
                    whole
                } else {
                    pos_of(p)
                };
                let path = p.value.trim().trim_start_matches('/');
                if path.is_empty() || path.contains(['*', '?', '[']) || path.contains('$') {
                    errors.push(
                        PipelineError::new(at, format!("include `{}`", p.value)).with_hint(Some(
                            "name one file by its path from the repository's top (no wildcards \
                             or variables)"
                                .into(),
                        )),
                    );
                    continue;
                }
                out.push((path.to_string(), at));
            }
            Include::Other(k) => errors.push(
                PipelineError::new(
                    pos_of(k),
                    format!("`include: {}:` is not supported", k.value),
                )
                .with_hint(Some(
                    "forge includes files of this repository (`local:`) only: copy the \
                         file in, or include a copy of it"
                        .into(),
                )),
            ),
        }
    }
    out
}

/// `over` laid on `base`, as a later file of a pipeline on an earlier one.
fn merge(base: PipelineFile, over: PipelineFile) -> PipelineFile {
    PipelineFile {
        variables: base.variables.merged(over.variables, |_, o| o),
        images: base.images.merged(over.images, |_, o| o),
        stages: over.stages.or(base.stages),
        default: merge_default(base.default, over.default),
        jobs: base.jobs.merged(over.jobs, extends::merge),
        workflow: over.workflow.or(base.workflow),
        include: None,
    }
}

fn merge_default(base: DefaultSpec, over: DefaultSpec) -> DefaultSpec {
    DefaultSpec {
        image: over.image.or(base.image),
        services: over.services.or(base.services),
        before_script: over.before_script.or(base.before_script),
        after_script: over.after_script.or(base.after_script),
        artifacts: over.artifacts.or(base.artifacts),
        retry: over.retry.or(base.retry),
        timeout: over.timeout.or(base.timeout),
        cache: over.cache.or(base.cache),
        tags: over.tags.or(base.tags),
        interruptible: over.interruptible.or(base.interruptible),
    }
}
