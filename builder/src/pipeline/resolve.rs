//! Name resolution shared by the checks: what an `image:` or a `needs:` entry names.

use std::collections::BTreeMap;

use forge_snapshotter::reference::Reference;

use super::error::PipelineError;
use super::expand::expand_at;
use super::file::{NeedSpec, Sp, pos_of};
use super::graph;
use super::plan::{ImageUse, Names, Need};
use crate::frontend::suggest::suggest;

/// Resolves `image:`: a named image, `NAME@STAGE`, or a registry reference. A bare word one or two
/// edits from a named image is taken for a typo rather than a Docker Hub image.
pub(super) fn resolve_image(
    s: &Sp<String>,
    source: &str,
    vars: &BTreeMap<String, String>,
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) -> ImageUse {
    let fallback = ImageUse::Named(s.value.clone());
    let value = match expand_at(s, source, vars) {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            return fallback;
        }
    };
    if names.images.contains(value.as_str()) {
        return ImageUse::Named(value);
    }
    let nothing =
        |what: String, hint: Option<String>| PipelineError::new(pos_of(s), what).with_hint(hint);
    if let Some((image, stage)) = value.split_once('@')
        && !stage.contains(':')
    {
        if names.images.contains(image) && !stage.is_empty() {
            return ImageUse::Stage {
                image: image.to_string(),
                stage: stage.to_string(),
            };
        }
        let hint = suggest(image, names.images.iter().copied())
            .map(|n| format!("did you mean `{n}@{stage}`?"))
            .or_else(|| Some("NAME@STAGE names a stage of an image under `images:`".into()));
        errors.push(nothing(format!("image `{value}` names nothing"), hint));
        return fallback;
    }
    let bare = !value.contains(['/', ':', '@', '.']);
    if bare && let Some(n) = suggest(&value, names.images.iter().copied()) {
        let hint = Some(format!(
            "did you mean `{n}`? (for the Docker Hub image write docker.io/library/{value})"
        ));
        errors.push(nothing(format!("image `{value}` names nothing"), hint));
        return fallback;
    }
    match Reference::parse(&value) {
        Ok(r) => ImageUse::Registry(r),
        Err(e) => {
            let hint = Some(
                "an image is a name under `images:`, NAME@STAGE, or a registry reference".into(),
            );
            errors.push(nothing(
                format!("image `{value}` names nothing: {}", e.reason),
                hint,
            ));
            fallback
        }
    }
}

/// Resolves one `needs:` entry: a job (all its matrix instances, each by its expanded name: the
/// run knows jobs only by those), one expanded job, or an image.
pub(super) fn resolve_need(
    n: &Sp<NeedSpec>,
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) -> Vec<Need> {
    let name = &n.value.name;
    if names.images.contains(name.as_str()) {
        return vec![Need::Image(name.clone())];
    }
    if let Some(jobs) = graph::jobs_named(name, names) {
        return jobs.into_iter().map(Need::Job).collect();
    }
    let candidates = names
        .jobs
        .keys()
        .map(String::as_str)
        .chain(names.images.iter().copied());
    let hint = suggest(name, candidates)
        .map(|s| format!("did you mean `{s}`?"))
        .or_else(|| Some("`needs:` names jobs or images of this file".into()));
    errors.push(
        PipelineError::new(
            pos_of(n),
            format!("`{name}` in needs names no job or image"),
        )
        .with_hint(hint),
    );
    Vec::new()
}
