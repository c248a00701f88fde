//! Base images: the images a Dockerfile builds FROM (or copies and mounts from), pulled into the
//! store before the solve, with their configs handed to the lowering (ONBUILD triggers, ENV, ...).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{LayerFollower, PullEvent, RegistryClient};
use forge_snapshotter::store::{ImageRecord, Store};
use oci_spec::image::Digest;

use crate::api::BuildError;
use crate::events::{BuildEvent, Events};
use crate::export::config;
use crate::frontend::dockerfile::ast::{Dockerfile, Pos, Span};
use crate::frontend::dockerfile::lower::{ImageResolver, LowerOptions, Lowered, lower};
use crate::graph::{ImageConfig, Platform};
use crate::ops::Layer;

use super::unpack_ahead::{SnapshotsWhenOpen, UnpackAhead};

/// A base image the build may read, resolved and pulled before the solve.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub record: ImageRecord,
    /// `rootfs.diff_ids` of its config, one per layer.
    pub diff_ids: Vec<Digest>,
    /// The raw config blob.
    pub config_json: Vec<u8>,
    /// Pulled whole just now and not recorded in the store yet: the caller records `record`
    /// ([`BaseFetch::WholeUnrecorded`]).
    pub unrecorded: bool,
}

impl BaseImage {
    /// Its layers as a build result (each mountable from the repository it came from).
    pub fn layers(&self) -> Vec<Layer> {
        let source = forge_snapshotter::reference::Reference::parse(&self.record.reference)
            .ok()
            .map(|r| r.name());
        self.record
            .layers
            .iter()
            .zip(&self.diff_ids)
            .map(|(d, diff_id)| Layer {
                media_type: d.media_type.clone(),
                digest: d.digest.clone(),
                size: d.size,
                diff_id: diff_id.clone(),
                source: source.clone(),
                unwritten: None,
                created: None,
                mtimes: None,
            })
            .collect()
    }
}

/// Base images the build reads, by the reference as the Dockerfile writes it.
#[derive(Default)]
pub struct BaseImages {
    pub images: HashMap<String, BaseImage>,
    configs: HashMap<String, ImageConfig>,
    /// Asked for and not resolved yet, with the first FROM that names each.
    missing: Mutex<BTreeMap<String, Span>>,
}

impl BaseImages {
    /// The names of the environment variables of the base `reference` (as the Dockerfile writes
    /// it), when it was resolved.
    pub fn env_names(&self, reference: &str) -> Option<Vec<String>> {
        self.configs.get(reference).map(env_names)
    }
}

impl ImageResolver for BaseImages {
    fn resolve(&self, reference: &str, _platform: &Platform, at: Span) -> Option<ImageConfig> {
        match self.configs.get(reference) {
            Some(c) => Some(c.clone()),
            None => {
                self.missing
                    .lock()
                    .expect("not poisoned")
                    .entry(reference.to_string())
                    .or_insert(at);
                None
            }
        }
    }
}

/// How a base image is found: in the store, or at its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// `docker build`'s default: a base named without a registry (`busybox`, `team/app`) that the
    /// store holds whole is used as stored, as docker uses its local images, and the registry is
    /// not asked; any other base is resolved at its registry, the store's copy standing in, with a
    /// warning, when the registry cannot be reached.
    #[default]
    Missing,
    /// `--pull`: every base is resolved at its registry; one that cannot be reached fails the
    /// build.
    Always,
}

/// Whether `written` (a reference as a Dockerfile writes it) names no registry, so that docker
/// would look for it among its local images first: Docker's rule, a first path component with no
/// `.` or `:` that is not `localhost` (or no `/` at all).
pub fn names_no_registry(written: &str) -> bool {
    match written.split_once('/') {
        None => true,
        Some((first, _)) => {
            !first.contains(['.', ':'])
                && first != "localhost"
                && first.chars().all(|c| !c.is_ascii_uppercase())
        }
    }
}

/// The names of the environment variables of the image the store holds under `reference` (as a
/// FROM line names it), without asking any registry; `None` when the store has no whole copy or
/// its config does not read.
pub fn stored_env_names(store: &Store, reference: &str) -> Option<Vec<String>> {
    let r = Reference::parse(reference).ok()?;
    let record = store.get_image(&r.to_string()).ok()??;
    let bytes = store.read_blob(&record.config.digest).ok()?;
    let base = config::read_base_config(&bytes).ok()?;
    Some(env_names(&base.config))
}

/// The names of an image config's environment variables.
fn env_names(config: &ImageConfig) -> Vec<String> {
    config
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map_or(kv.as_str(), |(k, _)| k)
                .to_string()
        })
        .collect()
}

/// How much of a base image [`pull_base`] brings into the store, and who records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFetch {
    /// Every blob, and the pull records the image.
    Whole,
    /// Every blob; the image is left to the caller to record ([`BaseImage::unrecorded`]), with
    /// whatever else it records, so that no commit of the store's metadata comes between the pull
    /// and the steps that use it. The caller holds a store session meanwhile.
    WholeUnrecorded,
    /// The manifest and the config only; a step that needs the filesystem fetches the layers.
    Lazy,
}

/// Finds `reference` as `policy` says: the store's copy, or a pull (and, when the registry cannot
/// be reached under [`PullPolicy::Missing`], the store's copy with a warning); then reads its config.
/// With `unpack_into`, a [`BaseFetch::WholeUnrecorded`] pull also unpacks the layers it downloads
/// into snapshots there while they arrive ([`UnpackAhead`]), so that the first step on the image
/// finds them made instead of unpacking them after the download.
pub async fn pull_base(
    store: &Store,
    registry: &RegistryClient,
    events: &Events,
    reference: &str,
    policy: PullPolicy,
    fetch: BaseFetch,
    unpack_into: Option<&SnapshotsWhenOpen>,
) -> Result<BaseImage, BuildError> {
    let r = Reference::parse(reference).map_err(|e| BuildError::BaseImage {
        reference: reference.to_string(),
        reason: e.to_string(),
    })?;
    let tx = events.clone();
    let name = reference.to_string();
    let progress = move |event| {
        tx.emit(BuildEvent::Pull {
            reference: name.clone(),
            event,
        })
    };
    if policy == PullPolicy::Missing
        && names_no_registry(reference)
        && let Some(rec) = store.get_image(&r.to_string())?
        && store.holds_whole(&rec)
    {
        progress(PullEvent::Stored {
            reference: r.to_string(),
            manifest: rec.manifest.digest.clone(),
            platform: rec.platform.clone(),
            layers: rec.layers.len(),
        });
        return base_image(store, rec, reference);
    }
    let pulled = match fetch {
        BaseFetch::Whole => registry.pull(store, &r, &progress).await,
        BaseFetch::WholeUnrecorded => {
            let ahead = unpack_into.map(|sn| UnpackAhead::new(sn.clone()));
            let follower = ahead.as_ref().map(|a| a as &dyn LayerFollower);
            registry
                .pull_unrecorded(store, &r, &progress, follower)
                .await
        }
        BaseFetch::Lazy => registry.resolve(store, &r, &progress).await,
    };
    // Only a pull leaves a record to the caller; the store's copy below is recorded already.
    let mut unrecorded = false;
    let record = match pulled {
        Ok(rec) => {
            unrecorded = fetch == BaseFetch::WholeUnrecorded;
            rec
        }
        Err(e) => {
            // A registry that answered with a refusal was reached: its answer stands, so a wrong
            // login is reported rather than hidden behind a stale copy. `--pull` asked for the
            // registry's answer, and gets none in its place.
            let refused = matches!(e, forge_snapshotter::registry::PullError::Denied { .. });
            let stored = store.get_image(&r.to_string())?;
            match stored {
                Some(rec)
                    if !refused && policy == PullPolicy::Missing && store.holds_whole(&rec) =>
                {
                    // A registry that no longer has the image answered; one that could not be
                    // asked did not: the warning says which, with the error.
                    let why =
                        if matches!(e, forge_snapshotter::registry::PullError::NotFound { .. }) {
                            "the registry no longer has"
                        } else {
                            "could not reach the registry for"
                        };
                    events.emit(BuildEvent::Warning {
                        message: format!("{why} {reference} ({e}); using the copy in the store"),
                    });
                    rec
                }
                _ => {
                    progress(PullEvent::Failed {
                        error: e.to_string(),
                    });
                    return Err(BuildError::Pull {
                        reference: reference.to_string(),
                        source: Box::new(e),
                    });
                }
            }
        }
    };
    Ok(BaseImage {
        unrecorded,
        ..base_image(store, record, reference)?
    })
}

pub(crate) fn base_image(
    store: &Store,
    record: ImageRecord,
    reference: &str,
) -> Result<BaseImage, BuildError> {
    let bad = |reason: String| BuildError::BaseImage {
        reference: reference.to_string(),
        reason,
    };
    let config_json = store.read_blob(&record.config.digest)?;
    let diff_ids = config::read_base_config(&config_json)
        .map_err(|e| bad(e.to_string()))?
        .diff_ids;
    if diff_ids.len() != record.layers.len() {
        return Err(bad(format!(
            "its config lists {} diff_ids for {} layers",
            diff_ids.len(),
            record.layers.len()
        )));
    }
    Ok(BaseImage {
        record,
        diff_ids,
        config_json,
        unrecorded: false,
    })
}

/// Lowers `df`, pulling every base image the lowering asks for (ONBUILD triggers of a base can
/// name further images, so this repeats until nothing new is asked), each as `fetch` says, and
/// unpacked into `unpack_into` while it downloads (see [`pull_base`]).
#[allow(clippy::too_many_arguments)]
pub async fn lower_with_images(
    df: &Dockerfile,
    opts: &LowerOptions<'_>,
    store: &Store,
    registry: &RegistryClient,
    events: &Events,
    policy: PullPolicy,
    fetch: BaseFetch,
    unpack_into: Option<&SnapshotsWhenOpen>,
) -> Result<(Lowered, BaseImages), BuildError> {
    let mut table = BaseImages::default();
    for _ in 0..8 {
        let lowered = {
            let with = LowerOptions {
                target: opts.target.clone(),
                build_args: opts.build_args.clone(),
                target_platform: opts.target_platform.clone(),
                build_platform: opts.build_platform.clone(),
                context_name: opts.context_name.clone(),
                dockerignore: opts.dockerignore.clone(),
                extra_hosts: opts.extra_hosts.clone(),
                ulimits: opts.ulimits.clone(),
                shm_size: opts.shm_size,
                named_contexts: opts.named_contexts.clone(),
                resolver: Some(&table),
            };
            // The caller fills in the file's name and text.
            lower(df, &with).map_err(|error| BuildError::Lower {
                file: String::new(),
                text: std::sync::Arc::from(""),
                error,
            })?
        };
        // Image sources in the graph (COPY --from=image, mounts) need the images too; they are
        // placed at their instruction's line.
        let mut wanted: BTreeMap<String, Option<Span>> =
            std::mem::take(&mut *table.missing.lock().expect("not poisoned"))
                .into_iter()
                .map(|(reference, at)| (reference, Some(at)))
                .collect();
        for v in &lowered.graph.vertices {
            if let crate::graph::Op::Source(crate::graph::SourceOp::Image { reference, .. }) = &v.op
                && !table.images.contains_key(reference)
            {
                let at = v.line.map(|line| {
                    let start = Pos { line, column: 1 };
                    Span { start, end: start }
                });
                wanted.entry(reference.clone()).or_insert(at);
            }
        }
        if wanted.is_empty() {
            return Ok((lowered, table));
        }
        // Owned names in owned futures: a closure handing out borrows of the set would make the
        // future non-Send for the compiler (higher-ranked lifetimes), and a server spawns builds.
        let pulls: Vec<_> = wanted
            .keys()
            .cloned()
            .map(|r| async move {
                pull_base(store, registry, events, &r, policy, fetch, unpack_into).await
            })
            .collect();
        let pulled = futures::future::join_all(pulls).await;
        for ((reference, at), base) in wanted.into_iter().zip(pulled) {
            // The caller fills in the file's name and text, as for a lowering error.
            let placed = |error: BuildError| match at {
                Some(span) => BuildError::At {
                    file: String::new(),
                    text: std::sync::Arc::from(""),
                    span,
                    error: Box::new(error),
                },
                None => error,
            };
            let base = base.map_err(placed)?;
            let config = config::read_base_config(&base.config_json)
                .map(|b| b.config)
                .map_err(|e| {
                    placed(BuildError::BaseImage {
                        reference: reference.clone(),
                        reason: e.to_string(),
                    })
                })?;
            table.configs.insert(reference.clone(), config);
            table.images.insert(reference, base);
        }
    }
    Err(BuildError::Invalid(
        "base images kept asking for more base images (ONBUILD loop?)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::names_no_registry;

    #[test]
    fn short_names_are_those_docker_looks_up_locally_first() {
        for short in [
            "busybox",
            "busybox:1.36",
            "team/app",
            "library/debian@sha256:ab",
        ] {
            assert!(names_no_registry(short), "{short}");
        }
        for full in [
            "docker.io/library/busybox",
            "127.0.0.1:5000/busybox",
            "localhost/app",
            "registry.example.com/team/app:1",
            "Host/app",
        ] {
            assert!(!names_no_registry(full), "{full}");
        }
    }
}
