//! What a build does before its solve besides lowering: the Dockerfile and `.dockerignore` read
//! (a Dockerfile kept inside its context, excluded paths made patterns, an earlier build's
//! `--iidfile` and `--metadata-file` removed, lowering errors given their file), the directories given as build contexts walked like
//! the main context, BuildKit's build checks run and reported, and steps that need an entitlement
//! the build was not granted refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::BuildError;
use super::request::{BuildContext, BuildRequest, DockerfileSource};
use crate::events::{BuildEvent, Events};
use crate::frontend::dockerfile::{Dockerfile, check};
use crate::frontend::dockerignore::Dockerignore;
use crate::graph::Graph;
use crate::ops::LocalDir;
use crate::source::{BaseImages, ContextSnapshot, SnapshotOptions};

/// Each `--build-context NAME=DIR`, walked (and its digests memoised under the store) as the main
/// context is, without the main context's `.dockerignore`; by name.
pub(super) async fn named_context_dirs(
    request: &BuildRequest,
    root: &Path,
) -> Result<HashMap<String, LocalDir>, BuildError> {
    let mut locals = HashMap::new();
    for (name, c) in &request.build_contexts {
        let BuildContext::Dir(dir) = c else { continue };
        if !dir.is_dir() {
            return Err(BuildError::Invalid(format!(
                "--build-context {name}={}: not a directory",
                dir.display()
            )));
        }
        let (dir2, memo) = (dir.clone(), root.join("context"));
        let snapshot = tokio::task::spawn_blocking(move || {
            ContextSnapshot::take(
                &dir2,
                &SnapshotOptions {
                    ignore: None,
                    state_dir: Some(&memo),
                    threads: 0,
                },
            )
        })
        .await
        .map_err(|e| BuildError::Invalid(format!("context walk: {e}")))?
        .map_err(|e| {
            BuildError::Invalid(format!("--build-context {name}={}: {e}", dir.display()))
        })?;
        locals.insert(
            name.clone(),
            LocalDir {
                dir: dir.clone(),
                snapshot: Arc::new(snapshot),
            },
        );
    }
    Ok(locals)
}

/// BuildKit's build checks, run with every build: each finding a warning (rule, message, place,
/// link); with `check=error=true` (the directive or `BUILDKIT_DOCKERFILE_CHECK`) the build fails on
/// them. UndefinedVar reads the resolved bases' environments.
pub(super) fn run_build_checks(
    df: &Dockerfile,
    request: &BuildRequest,
    images: &BaseImages,
    name: &str,
    events: &Events,
) -> Result<(), BuildError> {
    let base_env = |reference: &str| images.env_names(reference);
    let findings = check::check(
        df,
        &check::CheckOptions {
            build_args: &request.build_args,
            base_env: &base_env,
        },
    )
    .unwrap_or_default();
    for f in &findings {
        events.emit(BuildEvent::Warning {
            message: format!(
                "{}: {} ({name}:{}:{}; {})",
                f.rule.name,
                f.message,
                f.span.start.line,
                f.span.start.column,
                f.rule.url()
            ),
        });
    }
    if !findings.is_empty() && check::findings_are_errors(df, &request.build_args) {
        return Err(BuildError::Invalid(format!(
            "{name}: {} build check{} failed and `check=error=true` makes them errors: {}",
            findings.len(),
            if findings.len() == 1 { "" } else { "s" },
            findings
                .iter()
                .map(|f| format!("{} (line {})", f.rule.name, f.span.start.line))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// The Dockerfile's name and text, at most [`super::input::MAX_DOCKERFILE_BYTES`] of it. A file is
/// read on a thread the caller may stop waiting for (a FIFO without a writer never answers).
pub(super) async fn read_dockerfile(
    request: &BuildRequest,
) -> Result<(String, Arc<str>), BuildError> {
    match &request.dockerfile {
        DockerfileSource::Text { name, text } => Ok((name.clone(), Arc::from(text.as_str()))),
        _ => {
            let path = request.dockerfile_path().expect("a file source has a path");
            confine_to_context(&request.context, &path)?;
            let text =
                super::input::read_file_capped_abandonable(path.clone(), super::input::DOCKERFILE)
                    .await
                    .map_err(BuildError::Invalid)?;
            Ok((path.to_string_lossy().into_owned(), Arc::from(text)))
        }
    }
}

/// A Dockerfile named inside the context must stay inside it: a link in a repository pointing at a
/// host file (`Dockerfile -> /etc/shadow`) would otherwise be read, and its first line shown in the
/// parse error. One named outside the context (`-f /elsewhere/Dockerfile`) is the caller's choice.
fn confine_to_context(context: &std::path::Path, path: &std::path::Path) -> Result<(), BuildError> {
    let (Ok(ctx), Some(parent)) = (context.canonicalize(), path.parent()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let Ok(dir) = parent.canonicalize() else {
        return Ok(());
    };
    if !dir.starts_with(&ctx) {
        return Ok(());
    }
    match path.canonicalize() {
        Ok(real) if !real.starts_with(&ctx) => Err(BuildError::Invalid(format!(
            "{}: the Dockerfile is a link to a file outside the build context {}",
            path.display(),
            context.display()
        ))),
        _ => Ok(()),
    }
}

/// The patterns of the ignore file at `path`, read as the Dockerfile is: up to a cap (a
/// `.dockerignore` link to /dev/zero fails at once) and on a thread a cancelled build stops
/// waiting for (a FIFO without a writer).
pub(super) async fn read_ignore(path: std::path::PathBuf) -> Result<Vec<String>, BuildError> {
    let text = super::input::read_file_capped_abandonable(path.clone(), super::input::DOCKERIGNORE)
        .await
        .map_err(BuildError::Invalid)?;
    Ok(Dockerignore::parse(&text)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", path.display())))?
        .patterns()
        .to_vec())
}

/// Refuses, before any step runs, a build whose steps need an entitlement it was not granted (as
/// BuildKit does): `RUN --security=insecure` needs `--allow security.insecure`; the host's network
/// (`RUN --network=host`; `--network host` is checked by [`BuildRequest::validate`]) needs
/// `--allow network.host`. The error points at the flag in the Dockerfile (`FILE:LINE:COLUMN`).
pub(super) fn refuse_ungranted(
    request: &BuildRequest,
    graph: &Graph,
    name: &str,
    text: &str,
) -> Result<(), BuildError> {
    use crate::graph::{NetworkMode as RunNetwork, Op, SecurityMode};
    for v in &graph.vertices {
        let Op::Exec(e) = &v.op else { continue };
        if e.security == SecurityMode::Insecure && !request.allow_insecure {
            return Err(BuildError::Invalid(format!(
                "{}: {}: RUN --security=insecure is not allowed: the build must grant it \
                 (forge build --allow security.insecure)",
                flag_location(name, text, v.line, "--security"),
                v.description
            )));
        }
        if e.network == RunNetwork::Host && !request.allow_network_host {
            return Err(BuildError::Invalid(format!(
                "{}: {}: RUN --network=host is not allowed: the step would reach the host's own \
                 services; the build must grant it (forge build --allow network.host)",
                flag_location(name, text, v.line, "--network"),
                v.description
            )));
        }
    }
    Ok(())
}

/// `FILE:LINE:COLUMN` of `flag` in the instruction that starts on `line` (1-based) of `text`, or
/// `FILE:LINE` when it is not found there (continuation lines included).
fn flag_location(name: &str, text: &str, line: Option<usize>, flag: &str) -> String {
    let Some(line) = line else {
        return name.to_string();
    };
    for (n, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        if let Some(byte) = l.to_ascii_lowercase().find(flag) {
            return format!("{name}:{}:{}", n + 1, l[..byte].chars().count() + 1);
        }
        if !l.trim_end().ends_with('\\') {
            break;
        }
    }
    format!("{name}:{line}")
}

/// A `.dockerignore` pattern that matches `path` and nothing else: the pattern syntax's special
/// characters escaped (patterns are relative to the context's root, as `read_ignore` leaves them).
pub(super) fn literal_pattern(path: &str) -> String {
    let mut out = String::new();
    for c in path.trim_start_matches('/').chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A lowering error (or one at a FROM line) gets the file's name and text, so the caller can show
/// the line.
pub(super) fn lower_error(e: BuildError, name: &str, text: &Arc<str>) -> BuildError {
    match e {
        BuildError::Lower { error, .. } => BuildError::Lower {
            file: name.to_string(),
            text: text.clone(),
            error,
        },
        BuildError::At { span, error, .. } => BuildError::At {
            file: name.to_string(),
            text: text.clone(),
            span,
            error,
        },
        other => other,
    }
}

/// Removes the `--iidfile` and `--metadata-file` an earlier build left, before this one starts.
pub(super) fn forget_earlier_outputs(request: &BuildRequest) -> Result<(), BuildError> {
    for path in [&request.iidfile, &request.metadata_file]
        .into_iter()
        .flatten()
    {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BuildError::Invalid(format!(
                    "removing the earlier {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::literal_pattern;
    use crate::frontend::dockerignore::Dockerignore;

    #[test]
    fn an_excluded_path_matches_itself_and_nothing_else() {
        let ignore =
            Dockerignore::from_patterns([literal_pattern("out/a*b[1]?"), literal_pattern("arts")])
                .unwrap();
        assert!(ignore.matches("out/a*b[1]?"));
        assert!(ignore.matches("arts"));
        assert!(!ignore.matches("out/axxb1z"));
        assert!(!ignore.matches("out/ab1x"));
        assert!(!ignore.matches("artsy"));
    }
}
