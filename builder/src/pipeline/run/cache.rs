//! A pipeline's share of the build cache outside the store: the caches its images name under
//! `cache.from` are read once, before anything runs, and serve the image builds and the jobs; the
//! caches under `cache.to` are written at the end with the image's steps and the results of the
//! run's jobs that passed, so that the next runner skips unchanged jobs too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::Session;
use crate::cache_io::{self, CacheEntry, Imported, RemoteBlobs};
use crate::events::{BuildEvent, BuildId, Events};
use crate::ops::Layer;
use crate::pipeline::plan::Pipeline;

use super::report::{PipelineEvent, Sink};

/// What one image build leaves for the export.
struct ImageEntries {
    entries: Vec<CacheEntry>,
    cache_mounts: Vec<String>,
    layers: Vec<Layer>,
}

pub struct PipelineCache {
    pub imported: Arc<Imported>,
    pub remote: Arc<RemoteBlobs>,
    jobs: Mutex<Vec<CacheEntry>>,
    images: Mutex<HashMap<String, ImageEntries>>,
}

/// Events whose warnings reach the pipeline's output as lines of `who`.
fn events_to(sink: &Sink, who: &str) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::events::EventRecord>();
    let (sink, who) = (sink.clone(), who.to_string());
    let forward = tokio::spawn(async move {
        while let Some(rec) = rx.recv().await {
            if let BuildEvent::Warning { message } = rec.event {
                sink(PipelineEvent::ImageLine {
                    image: who.clone(),
                    line: format!("warning: {message}"),
                });
            }
        }
    });
    (Events::new(BuildId::new(), Some(tx)), forward)
}

impl PipelineCache {
    /// Reads every image's `cache.from`; `None` when no image names a cache.
    pub async fn open(session: &Session, plan: &Pipeline, sink: &Sink) -> Option<Arc<Self>> {
        if plan
            .images
            .iter()
            .all(|i| i.cache_from.is_empty() && i.cache_to.is_empty())
        {
            return None;
        }
        let (events, forward) = events_to(sink, "cache");
        let remote = Arc::new(RemoteBlobs::new(session.registry().clone(), events.clone()));
        let mut sources = Vec::new();
        for i in &plan.images {
            for c in &i.cache_from {
                if !sources.contains(c) {
                    sources.push(c.clone());
                }
            }
        }
        let imported = cache_io::import_caches(
            &sources,
            session.registry(),
            session.store(),
            &remote,
            &events,
        )
        .await;
        // `remote` keeps sending its warnings (a blob that turns out bad) for the whole run: the
        // forwarder ends with it.
        drop((events, forward));
        Some(Arc::new(PipelineCache {
            imported: Arc::new(imported),
            remote,
            jobs: Mutex::default(),
            images: Mutex::default(),
        }))
    }

    pub fn add_job(&self, entries: Vec<CacheEntry>) {
        self.jobs.lock().expect("not poisoned").extend(entries);
    }

    pub fn add_image(
        &self,
        name: &str,
        entries: Vec<CacheEntry>,
        cache_mounts: Vec<String>,
        layers: Vec<Layer>,
    ) {
        self.images.lock().expect("not poisoned").insert(
            name.to_string(),
            ImageEntries {
                entries,
                cache_mounts,
                layers,
            },
        );
    }

    /// Writes every image's `cache.to` that was built: its steps and the jobs' results. A failed
    /// export is a line of the image's output (the run's verdict stays the jobs').
    pub async fn export(&self, session: &Session, plan: &Pipeline, sink: &Sink) {
        let jobs = self.jobs.lock().expect("not poisoned").clone();
        for image in &plan.images {
            if image.cache_to.is_empty() {
                continue;
            }
            let (mut entries, cache_mounts, layers) = {
                let images = self.images.lock().expect("not poisoned");
                let Some(e) = images.get(&image.name) else {
                    continue;
                };
                (e.entries.clone(), e.cache_mounts.clone(), e.layers.clone())
            };
            entries.extend(jobs.iter().cloned());
            let pushed = image.push.then(|| image.tags.first()).flatten();
            let (events, forward) = events_to(sink, &image.name);
            for target in &image.cache_to {
                if let Err(e) = session
                    .export_cache(
                        target,
                        &entries,
                        &cache_mounts,
                        crate::api::cache::ImageLayers {
                            solved: &layers,
                            pushed: pushed.map(|tag| (tag.as_str(), layers.as_slice())),
                        },
                        // A pipeline's images are built without SOURCE_DATE_EPOCH.
                        None,
                        &self.remote,
                        &events,
                    )
                    .await
                {
                    sink(PipelineEvent::ImageLine {
                        image: image.name.clone(),
                        line: format!("error: {}", crate::api::render_chain(&e)),
                    });
                }
            }
            drop(events);
            let _ = forward.await;
        }
    }
}
