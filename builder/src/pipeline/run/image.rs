//! An `images:` entry's build (its context and Dockerfile confined to the repository, its
//! `artifacts-from` laid into a copy of the context) and its gated push.

use std::collections::HashMap;

use forge_snapshotter::store::Descriptor;

use super::clip::Clip;
use super::{BuiltImage, JobLeft, Left, Node, PipelineEvent, Runner, artifacts, confine};
use crate::api::{BuildRequest, DockerfileSource, Export};
use crate::events::{BuildEvent, BuildId, Events};
use crate::export::config;
use crate::pipeline::plan::ImagePlan;
use crate::source::image::base_image;

impl Runner {
    pub(super) fn image_plan(&self, name: &str) -> Result<&ImagePlan, String> {
        self.plan
            .images
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("no image {name}"))
    }

    pub(super) async fn build(
        &self,
        name: &str,
        stage: Option<&str>,
        inputs: &HashMap<Node, Left>,
    ) -> Result<BuiltImage, String> {
        let plan = self.image_plan(name)?;
        let shown = build_name(name, stage);
        self.emit(PipelineEvent::ImageStarted {
            image: shown.clone(),
        });
        let boundary = &self.options.boundary;
        let mut context = confine::inside(
            &format!("the context `{}`", plan.context),
            &self.options.base_dir.join(&plan.context),
            boundary,
        )?;
        let dockerfile = confine::inside(
            &format!("the Dockerfile `{}`", plan.dockerfile),
            &context.join(&plan.dockerfile),
            boundary,
        )?;
        if self.options.local_caches_in_boundary {
            for location in plan
                .cache_from
                .iter()
                .map(|c| &c.location)
                .chain(plan.cache_to.iter().map(|c| &c.location))
            {
                confine::cache_inside(location, boundary)?;
            }
        }
        // With `artifacts-from`, the build reads a copy of its context with those jobs'
        // artifacts laid in, kept until the build ends.
        let _scratch = if plan.artifacts_from.is_empty() {
            None
        } else {
            let layers: Vec<(Descriptor, String)> = plan
                .artifacts_from
                .iter()
                .filter_map(|j| match inputs.get(&Node::Job(j.clone())) {
                    Some(Left::Job(
                        JobLeft {
                            artifacts: Some(d),
                            workdir,
                            ..
                        },
                        _,
                    )) => Some((d.clone(), workdir.clone())),
                    _ => None,
                })
                .collect();
            let scratch = crate::scratch::Scratch::create(self.session.root(), &BuildId::new())
                .map_err(|e| format!("scratch space: {e}"))?;
            let copy = scratch.context();
            let store = self.session.store().clone();
            let from = std::fs::canonicalize(&context).unwrap_or_else(|_| context.clone());
            let skip = std::fs::canonicalize(&self.options.artifacts_dir).ok();
            let to = copy.clone();
            tokio::task::spawn_blocking(move || {
                artifacts::copy_tree(&from, &to, skip.as_deref())?;
                for (layer, workdir) in &layers {
                    artifacts::lay_into(&store, layer, workdir, &to)?;
                }
                Ok::<_, String>(())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("laying artifacts into the context of {name}: {e}"))?;
            context = copy;
            Some(scratch)
        };
        let mut request = BuildRequest::new(&context);
        // The artifacts directory inside the context (the default, `forge-artifacts/` beside
        // forge.yaml, with `context: .`) is forge's own output: read as context, it would change
        // the image on every run and bake the last run's artifacts in.
        if let Some(inside) = crate::api::path_inside(&self.options.artifacts_dir, &context) {
            request.context_excludes.push(inside);
        }
        // The Dockerfile as resolved above: with `artifacts-from` the context is a copy, and the
        // Dockerfile the original's.
        request.dockerfile = DockerfileSource::Path(dockerfile);
        request.target = stage.map(str::to_string).or_else(|| plan.target.clone());
        request.build_args = plan.build_args.clone();
        request.labels = plan.labels.clone();
        request.cache.no_cache = plan.no_cache || self.options.no_cache;
        request.cache.import = plan.cache_from.clone();
        if stage.is_none() {
            request.tags = plan.tags.clone();
            if !plan.tags.is_empty() {
                request.exports = vec![Export::Image {
                    push: false,
                    oci_mediatypes: true,
                }];
            }
            if plan.push {
                // What leaves the store later is written in its final compression now.
                request.compression =
                    Some(forge_snapshotter::compress::Compression::Gzip { level: 6 });
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Events::new(BuildId::new(), Some(tx));
        let sink = self.sink.clone();
        let image = shown.clone();
        // The steps' output counts against the log limit; forge's warnings do not.
        let clip = Clip::new(self.options.log_limit);
        let forward = tokio::spawn(async move {
            let what = format!("image {image}");
            while let Some(rec) = rx.recv().await {
                let line = match rec.event {
                    BuildEvent::Output { line, .. } => match clip.pass(line, &what) {
                        Some(line) => line,
                        None => continue,
                    },
                    BuildEvent::Warning { message } => format!("warning: {message}"),
                    _ => continue,
                };
                sink(PipelineEvent::ImageLine {
                    image: image.clone(),
                    line,
                });
            }
        });
        let outcome = self
            .session
            .build(&request, events, self.cancel.clone())
            .await;
        let _ = forward.await;
        let outcome = outcome.map_err(|f| crate::api::render_chain(&f.error))?;
        let base = base_image(self.session.store(), outcome.record.clone(), &shown)
            .map_err(|e| e.to_string())?;
        let config = config::config_from_json(&base.config_json).map_err(|e| e.to_string())?;
        if stage.is_none()
            && let Some(c) = &self.cache
        {
            c.add_image(
                name,
                outcome.cache_entries.clone(),
                outcome.cache_mounts.clone(),
                base.layers(),
            );
        }
        self.emit(PipelineEvent::ImageBuilt {
            image: shown,
            digest: outcome.digest.clone(),
            steps_run: outcome.executed(),
            steps_cached: outcome.cached(),
        });
        Ok(BuiltImage {
            base,
            config,
            digest: outcome.digest,
        })
    }

    /// Pushes image `name` to its tags. A push that fails part way returns the tags it moved
    /// before it failed (a registry that answered, beside one that did not) with the error.
    pub(super) async fn push(
        &self,
        name: &str,
        inputs: &HashMap<Node, Left>,
    ) -> Result<Vec<String>, (Vec<String>, String)> {
        let plan = self.image_plan(name).map_err(|e| (Vec::new(), e))?;
        let Some(Left::Image(b)) = inputs.get(&Node::Build(name.into(), None)) else {
            return Err((Vec::new(), format!("image {name} was not built")));
        };
        let layers = b.base.layers();
        // The tags as their manifests land, read from the push's own events.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pushed = crate::export::push_image(
            self.session.store(),
            self.session.registry(),
            &Events::new(BuildId::new(), Some(tx)),
            None,
            &b.base.record,
            &layers,
            &plan.tags,
            None,
        )
        .await;
        if let Err(e) = pushed {
            let mut moved = Vec::new();
            while let Ok(record) = rx.try_recv() {
                if let BuildEvent::Push {
                    event: forge_snapshotter::registry::PushEvent::ManifestPushed { tag, .. },
                    ..
                } = record.event
                {
                    moved.push(tag);
                }
            }
            return Err((moved, e.to_string()));
        }
        self.emit(PipelineEvent::Pushed {
            image: name.into(),
            references: plan.tags.clone(),
            digest: b.digest.clone(),
        });
        Ok(plan.tags.clone())
    }
}

pub(super) fn build_name(image: &str, stage: Option<&str>) -> String {
    match stage {
        Some(s) => format!("{image}@{s}"),
        None => image.to_string(),
    }
}
