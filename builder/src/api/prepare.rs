//! What a build does before its solve besides lowering: the directories given as build contexts
//! walked like the main context, and BuildKit's build checks run and reported.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::BuildError;
use super::request::{BuildContext, BuildRequest};
use crate::events::{BuildEvent, Events};
use crate::frontend::dockerfile::{Dockerfile, check};
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
