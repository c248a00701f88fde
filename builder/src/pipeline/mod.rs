//! The pipeline frontend: `forge.yaml` -> a validated [`Pipeline`] of image builds and jobs.
//! [`file`] reads the YAML into a located model, [`rules`] parses and evaluates `rules:`, and
//! [`check`] resolves names, expands matrices and variables and refuses cycles. Running the plan
//! is the solver's and the runner's business, not this module's; what a run needs besides the
//! build lives beside it: [`git`] (built-in variables, changed files), [`history`] (numbered runs
//! and their logs in the store) and [`junit`] (test reports).
//!
//! YAML is read with bounded resources (issue 11): at most [`MAX_YAML_DEPTH`] nested
//! collections, [`MAX_ALIASES`] aliases and [`MAX_FILE_BYTES`] of input; past a bound the file
//! is refused with a located error instead of exhausting the stack or memory.

pub mod check;
pub mod coverage;
mod deps;
pub mod error;
mod expand;
pub mod extends;
pub mod file;
pub mod git;
mod gitlab_keys;
mod graph;
pub mod history;
pub mod include;
mod job_cache;
pub mod junit;
mod only;
mod plan;
mod reference;
mod resolve;
pub mod rules;
mod ruling;
pub mod run;
pub mod services;
mod vars;

pub use check::{
    CheckOptions, ImagePlan, ImageUse, JobPlan, Need, Pipeline, RuleOutcome, ServicePlan, check,
};
pub use error::{PipelineError, PipelineErrors, Pos};
pub use file::PipelineFile;
pub use plan::{CacheKey, CachePlan};

use std::borrow::Cow;

use crate::frontend::suggest::suggest;
use file::location_pos;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};

/// Most nested YAML collections (mappings and sequences). A forge.yaml needs about 8 (jobs ->
/// job -> parallel -> matrix -> entry -> list); 32 leaves room and keeps recursion shallow.
pub const MAX_YAML_DEPTH: usize = 32;
/// Most `*alias` uses: enough for shared snippets, too few for a billion laughs.
pub const MAX_ALIASES: usize = 1000;
/// Largest forge.yaml read.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Most YAML nodes in one file, aliases expanded: far above any real pipeline, far below a bomb.
pub const MAX_NODES: usize = 200_000;

/// The first `n` of `items` joined with ", ", and how many more there are ("a, b and 3 more"): a
/// long list (a 200-cell matrix, a work tree of many edits) said on one line.
pub fn first_few<S: AsRef<str>>(items: &[S], n: usize) -> String {
    let mut s = items
        .iter()
        .take(n)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > n {
        s.push_str(&format!(" and {} more", items.len() - n));
    }
    s
}

/// `source` with YAML's line breaks (CR LF, and a lone CR, which YAML also reads as a break) made
/// LF. Every position this module reports, and every line it shows, refers to this text: a lone CR
/// would otherwise count as a line for the YAML reader and not for the renderer, and an error
/// would show the wrong line (found by the fuzzer).
pub fn normalize_breaks(source: &str) -> Cow<'_, str> {
    if source.contains('\r') {
        Cow::Owned(source.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(source)
    }
}

/// Reads `source` as a forge.yaml into its located model; `file` is the name errors report.
pub fn parse(file: &str, source: &str) -> Result<PipelineFile, PipelineErrors> {
    let normalized = normalize_breaks(source);
    let source = &*with_references(file, &normalized)?;
    let mut parsed = read_yaml(file, source)?;
    extends::resolve(&mut parsed, &[source], yaml_options)
        .map_err(|errors| PipelineErrors::new(file, source, errors))?;
    Ok(parsed)
}

/// Reads `source` as YAML into `T` with forge.yaml's bounds, every error located and rendered as
/// forge.yaml's are (`file:line:column`, the line, a caret): other YAML files forge reads
/// (`forge serve`'s configuration) use it too.
pub fn read_yaml<T: serde::de::DeserializeOwned>(
    file: &str,
    source: &str,
) -> Result<T, PipelineErrors> {
    let source = &*normalize_breaks(source);
    let fail = |e| PipelineErrors::new(file, source, vec![e]);
    if source.len() > MAX_FILE_BYTES {
        return Err(fail(PipelineError::new(
            Pos::new(1, 1, 1),
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        )));
    }
    // A first pass that keeps nothing checks syntax and the budget over the whole document, so a
    // deep or huge value is refused as such even where the typed model would stop at the first
    // value of the wrong type.
    serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(source, yaml_options())
        .map_err(|e| fail(yaml_error(&e, source)))?;
    serde_saphyr::from_str_with_options(source, yaml_options())
        .map_err(|e| fail(yaml_error(&e, source)))
}

/// Parses and checks `source` in one go: the validated plan, or every error found.
pub fn load(file: &str, source: &str, options: &CheckOptions) -> Result<Pipeline, PipelineErrors> {
    let normalized = normalize_breaks(source);
    let source = &*with_references(file, &normalized)?;
    let parsed = read_yaml(file, source)?;
    finish(file, source, parsed, options)
}

/// `source` (line breaks normalized) with its `!reference` tags resolved within it.
fn with_references<'a>(
    file: &str,
    source: &'a str,
) -> Result<std::borrow::Cow<'a, str>, PipelineErrors> {
    match reference::resolve_all(&[source]) {
        Ok(mut r) => Ok(match r.pop().flatten() {
            Some(text) => std::borrow::Cow::Owned(text),
            None => std::borrow::Cow::Borrowed(source),
        }),
        Err(errors) => Err(PipelineErrors::new(
            file,
            source,
            errors.into_iter().map(|(_, e)| e).collect(),
        )),
    }
}

/// The rest of [`load`] for a file already read from `source` (line breaks normalized): its
/// `extends:` resolved, then the check.
fn finish(
    file: &str,
    source: &str,
    mut parsed: PipelineFile,
    options: &CheckOptions,
) -> Result<Pipeline, PipelineErrors> {
    let fail = |errors| PipelineErrors::new(file, source, errors);
    extends::resolve(&mut parsed, &[source], yaml_options).map_err(fail)?;
    check(&parsed, source, options).map_err(fail)
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    budget.flow_nesting_limit = MAX_YAML_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_nodes = MAX_NODES;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Our renderer shows the line; saphyr's own snippet would repeat it.
    options.with_snippet = false;
    options
}

/// A serde-saphyr error as a located [`PipelineError`], with a hint for unknown keys and values.
fn yaml_error(e: &serde_saphyr::Error, source: &str) -> PipelineError {
    use serde_saphyr::Error as E;
    let e = e.without_snippet();
    let pos = clamp(
        e.location().map_or(Pos::new(1, 1, 1), |l| location_pos(&l)),
        source,
    );
    let did_you_mean = |word: &str, expected: &[&str]| {
        Some(match suggest(word, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", expected.join(", ")),
        })
    };
    match e {
        E::SerdeUnknownField {
            field, expected, ..
        } => PipelineError::new(pos, format!("unknown key `{field}`")).with_hint(
            gitlab_keys::hint(field, expected).or_else(|| {
                match suggest(field, expected.iter().copied()) {
                    Some(s) => Some(format!("did you mean `{s}`?")),
                    None => gitlab_keys::top_level_job(field, expected)
                        .or_else(|| did_you_mean(field, expected)),
                }
            }),
        ),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => PipelineError::new(pos, format!("unknown value `{variant}`"))
            .with_hint(did_you_mean(variant, expected)),
        // saphyr's own words advise an option of the library, which a user cannot set.
        E::DuplicateMappingKey { key, .. } => PipelineError::new(
            pos,
            match key {
                Some(k) => format!("duplicate key `{k}`"),
                None => "duplicate key".to_string(),
            },
        )
        .with_hint(Some(
            "a key appears once in its mapping: merge the two, or give the second a name of its \
             own"
            .into(),
        )),
        E::SerdeMissingField { field, .. } => {
            PipelineError::new(pos, format!("missing key `{field}`")).with_hint(Some(format!(
                "add `{field}:` to the mapping this key is in"
            )))
        }
        E::Budget { breach, .. } => {
            let what = match breach {
                serde_saphyr::budget::BudgetBreach::Depth { .. } => {
                    format!("YAML nests deeper than {MAX_YAML_DEPTH} levels")
                }
                other => format!("YAML exceeds a resource limit ({other:?})"),
            };
            PipelineError::new(pos, what).with_hint(Some(depth_hint()))
        }
        _ => {
            let message = DefaultMessageFormatter.format_message(e);
            match message.as_ref() {
                // The flow-collection scanner's own bound, reported before any budget.
                "recursion limit exceeded" => PipelineError::new(
                    pos,
                    format!("YAML nests deeper than {MAX_YAML_DEPTH} levels"),
                )
                .with_hint(Some(depth_hint())),
                "expected sequence start" => PipelineError::new(pos, "wrong type: expected a list"),
                "expected mapping start" => {
                    PipelineError::new(pos, "wrong type: expected a mapping (key: value)")
                }
                // A budget breach seen through an alias arrives wrapped, as text.
                m if m.starts_with("budget breached") => PipelineError::new(
                    pos,
                    format!(
                        "YAML exceeds a resource limit ({})",
                        m.trim_start_matches("budget breached: ")
                    ),
                )
                .with_hint(Some(depth_hint())),
                _ => PipelineError::new(pos, message.into_owned()),
            }
        }
    }
}

fn depth_hint() -> String {
    format!(
        "forge.yaml allows {MAX_YAML_DEPTH} levels of nesting, {MAX_ALIASES} aliases and {MAX_NODES} nodes"
    )
}

/// Keeps a position the YAML library reports inside the text: an error at the end of the input
/// is shown on the last line, after its last char.
fn clamp(pos: Pos, source: &str) -> Pos {
    let lines: Vec<&str> = source.lines().collect();
    match lines.get(pos.line - 1) {
        Some(text) => {
            let len = text.chars().count();
            Pos::new(pos.line, pos.column.min(len + 1), pos.width)
        }
        None => {
            let last = lines.len().max(1);
            let len = lines.last().map_or(0, |t| t.chars().count());
            Pos::new(last, len + 1, 1)
        }
    }
}

#[cfg(test)]
mod tests;
