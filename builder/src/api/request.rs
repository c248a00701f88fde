//! What a caller asks of a build: everything `forge build`'s flags mean, as data. A pipeline job
//! graph or a server fills the same type; nothing here reads the process's arguments or environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use forge_runner::spec::NetworkMode;
use forge_snapshotter::compress::Compression;
use forge_snapshotter::reference::Reference;

use super::BuildError;
use crate::graph::Platform;

/// One build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context: a local directory.
    pub context: PathBuf,
    /// The Dockerfile; `context/Dockerfile` unless said otherwise.
    pub dockerfile: DockerfileSource,
    /// The stage to build (`--target`); the last one when `None`.
    pub target: Option<String>,
    /// `--build-arg KEY=VALUE`, already resolved (a bare `KEY` takes its value from the caller's
    /// environment before it gets here).
    pub build_args: BTreeMap<String, String>,
    /// The platform to build for; `None` is this machine's (the only one built today).
    pub platform: Option<Platform>,
    /// Labels added to the image's config.
    pub labels: BTreeMap<String, String>,
    /// Secrets for `RUN --mount=type=secret`, by id; never written to a layer or printed.
    pub secrets: Secrets,
    /// SSH agent sockets for `RUN --mount=type=ssh`, by id.
    pub ssh: HashMap<String, PathBuf>,
    /// The network of RUN steps that do not choose one: the sandbox (a private namespace whose only
    /// way out is forge's HTTP(S) proxy) unless said otherwise.
    pub network: NetworkMode,
    /// `--allow network.host`: lets steps use the host's network (`--network host`, `RUN
    /// --network=host`), where they reach the host's own services. Without it such a build is
    /// refused before it starts, as BuildKit refuses the entitlement.
    pub allow_network_host: bool,
    /// `--allow security.insecure`: lets `RUN --security=insecure` steps run without the sandbox (no
    /// seccomp filter, every capability, /proc unmasked). Without it the build is refused before it
    /// starts, as BuildKit refuses the entitlement.
    pub allow_insecure: bool,
    /// `--add-host NAME:IP`: names added to every RUN step's `/etc/hosts` (and to its cache key,
    /// as BuildKit does: a step may resolve them).
    pub add_hosts: Vec<(String, std::net::IpAddr)>,
    /// `--memory` / `--cpus` for every RUN step. A runner that cannot put them in place fails the
    /// step with an error saying why; it never runs it unlimited.
    pub limits: forge_runner::Limits,
    /// `--ulimit NAME=SOFT[:HARD]`: set in every RUN step before its command runs (and in its
    /// cache key, as BuildKit does); without any, steps keep forge's own limits.
    pub ulimits: Vec<forge_runner::Ulimit>,
    /// `--shm-size`: the size of every RUN step's /dev/shm (64 MiB without; in the step's cache
    /// key when given, as BuildKit does).
    pub shm_size: Option<forge_runner::Bytes>,
    /// Layer compression of what leaves the store (push, OCI or docker tars). `None`: gzip for
    /// what leaves the store, fast zstd for layers that stay in it (re-encoded when they leave).
    pub compression: Option<Compression>,
    /// Where the image goes besides the store; the store always gets it.
    pub exports: Vec<Export>,
    /// The image's names (recorded in the store, written into tars, pushed).
    pub tags: Vec<String>,
    pub cache: CacheOptions,
    /// `--keep-owners`: `-o type=local` writes the image's owners even rootless (subordinate ids
    /// on the host) instead of the caller's.
    pub keep_owners: bool,
    /// `--build-context NAME=...`, by name.
    pub build_contexts: BTreeMap<String, BuildContext>,
    /// `SOURCE_DATE_EPOCH`: makes the image reproducible byte for byte.
    pub source_date_epoch: Option<i64>,
    /// How base images are found: the store's copy of a short name, or always the registry.
    pub pull: crate::source::PullPolicy,
    /// How many steps may run at once; the number of cores when `None`.
    pub jobs: Option<usize>,
    /// buildx-style metadata (`containerimage.digest`) written here after the build.
    pub metadata_file: Option<PathBuf>,
    /// The image ID written here after the build.
    pub iidfile: Option<PathBuf>,
    /// Paths of the context (relative, `/`-separated, taken literally) left out of it as if
    /// `.dockerignore` named them: what forge itself writes there, such as a pipeline's
    /// artifacts directory, which would otherwise change the context on every run.
    pub context_excludes: Vec<String>,
}

impl BuildRequest {
    /// A build of `context` with its `Dockerfile` and every option at its default.
    pub fn new(context: impl Into<PathBuf>) -> BuildRequest {
        BuildRequest {
            context: context.into(),
            dockerfile: DockerfileSource::InContext,
            target: None,
            build_args: BTreeMap::new(),
            platform: None,
            labels: BTreeMap::new(),
            secrets: Secrets::default(),
            ssh: HashMap::new(),
            network: NetworkMode::Sandbox,
            allow_network_host: false,
            allow_insecure: false,
            add_hosts: Vec::new(),
            limits: forge_runner::Limits::default(),
            ulimits: Vec::new(),
            shm_size: None,
            compression: None,
            exports: Vec::new(),
            tags: Vec::new(),
            cache: CacheOptions::default(),
            build_contexts: BTreeMap::new(),
            keep_owners: false,
            source_date_epoch: None,
            jobs: None,
            metadata_file: None,
            iidfile: None,
            context_excludes: Vec::new(),
            pull: crate::source::PullPolicy::default(),
        }
    }

    /// Whether any export pushes to a registry.
    pub fn pushes(&self) -> bool {
        self.exports
            .iter()
            .any(|e| matches!(e, Export::Image { push: true, .. }))
    }

    /// Refuses a request that cannot be built, before anything is read or pulled.
    pub fn validate(&self) -> Result<(), BuildError> {
        if !self.context.is_dir() {
            return Err(BuildError::Invalid(format!(
                "build context {} is not a directory",
                self.context.display()
            )));
        }
        if let Some(p) = &self.platform {
            let host = Platform::host();
            if *p != host {
                return Err(BuildError::Invalid(format!(
                    "platform {p}: only this machine's platform ({host}) can be built for now"
                )));
            }
        }
        if self.network == NetworkMode::Host && !self.allow_network_host {
            return Err(BuildError::Invalid(
                "--network host is not allowed: RUN steps would reach the host's own services; \
                 the build must grant it (forge build --network host --allow network.host)"
                    .into(),
            ));
        }
        self.secrets.check_sizes().map_err(BuildError::Invalid)?;
        if self.pushes() && self.tags.is_empty() {
            return Err(BuildError::Invalid(
                "a push needs at least one image name (tag)".into(),
            ));
        }
        let mut pushed = Vec::new();
        for t in &self.tags {
            let r = Reference::parse(t)
                .map_err(|e| BuildError::Invalid(format!("invalid tag {t:?}: {e}")))?;
            pushed.push(r);
        }
        // The cache's manifest would replace the image just pushed under the same name (a
        // migration from an inline cache points both at one tag): docker would then find no
        // image there.
        if self.pushes() {
            for export in &self.cache.export {
                if let crate::cache_io::CacheLocation::Registry(r) = &export.location
                    && let Some(t) = pushed.iter().find(|t| t.to_string() == r.to_string())
                {
                    return Err(BuildError::Invalid(format!(
                        "--cache-to {r} names the image this build pushes ({t}): the cache would \
                         replace it; give the cache a tag or repository of its own (such as \
                         {}/cache:{})",
                        t.name(),
                        t.tag().unwrap_or("latest")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The Dockerfile's path, when it is a file.
    pub fn dockerfile_path(&self) -> Option<PathBuf> {
        match &self.dockerfile {
            DockerfileSource::InContext => Some(self.context.join("Dockerfile")),
            DockerfileSource::Path(p) => Some(p.clone()),
            DockerfileSource::Text { .. } => None,
        }
    }
}

/// Where the Dockerfile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// `Dockerfile` at the context's root.
    InContext,
    /// A file (`-f PATH`); its `.dockerignore` sibling is honoured as BuildKit does.
    Path(PathBuf),
    /// Text held in memory (a pipeline's inline Dockerfile, `-f -`); `name` is how errors name it.
    Text { name: String, text: String },
}

/// One place the image goes besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// An OCI image layout in a tar file.
    OciTar(PathBuf),
    /// An OCI image layout in a directory.
    OciDir(PathBuf),
    /// A tar `docker load` reads.
    DockerTar(PathBuf),
    /// The image's filesystem as plain files in a directory.
    Local(PathBuf),
    /// The image's filesystem as one tar file (`-` for standard output).
    Tar(PathBuf),
    /// The store under the request's tags, and their registries when `push`; with Docker's media
    /// types when `oci_mediatypes` is false.
    Image { push: bool, oci_mediatypes: bool },
}

/// A `--build-context` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildContext {
    /// `docker-image://REF`.
    Image(String),
    /// A local directory.
    Dir(PathBuf),
}

impl BuildContext {
    /// Parses `NAME=VALUE` as `docker build --build-context` takes it.
    pub fn parse(spec: &str) -> Result<(String, BuildContext), String> {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: want NAME=PATH or NAME=docker-image://REF"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
        {
            return Err(format!("{name:?} is not a valid build context name"));
        }
        if name == "context" {
            return Err(
                "\"context\" is the main build context's own name; give this one another".into(),
            );
        }
        let context = if let Some(r) = value.strip_prefix("docker-image://") {
            BuildContext::Image(r.to_string())
        } else if let Some((scheme, _)) = value.split_once("://") {
            return Err(format!(
                "{name}={value}: {scheme}:// build contexts are not supported (a directory or \
                 docker-image://REF)"
            ));
        } else {
            BuildContext::Dir(PathBuf::from(value))
        };
        Ok((name.to_string(), context))
    }
}

/// How the build uses its cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// Run every step, ignoring (then replacing) recorded results.
    pub no_cache: bool,
    /// Run these stages' steps (and what depends on them) without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--cache-from`: caches read before the solve, in order (the first with a key wins).
    pub import: Vec<crate::cache_io::CacheImport>,
    /// `--cache-to`: caches written after the build.
    pub export: Vec<crate::cache_io::CacheExport>,
}

/// Secret values by id. Their `Debug` shows the ids only, so a logged request never shows a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(HashMap<String, Vec<u8>>);

impl Secrets {
    pub fn insert(&mut self, id: impl Into<String>, value: Vec<u8>) {
        self.0.insert(id.into(), value);
    }

    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.0.get(id).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every secret within [`crate::mask::MAX_SECRET_BYTES`].
    pub(crate) fn check_sizes(&self) -> Result<(), String> {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        ids.into_iter()
            .try_for_each(|id| crate::mask::check_size(id, &self.0[id]))
    }

    pub(crate) fn to_map(&self) -> HashMap<String, Vec<u8>> {
        self.0.clone()
    }
}

impl FromIterator<(String, Vec<u8>)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Secrets(iter.into_iter().collect())
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.0.keys().collect();
        ids.sort();
        f.debug_set().entries(ids).finish()
    }
}

/// `dir`'s path relative to `context` when it lies inside it (it may not exist yet: its parent is
/// resolved then), for [`BuildRequest::context_excludes`]; `None` when it is outside, or is the
/// context itself.
pub fn path_inside(dir: &Path, context: &Path) -> Option<String> {
    let dir = std::path::absolute(dir).ok()?;
    let resolved = std::fs::canonicalize(&dir).ok().or_else(|| {
        let parent = std::fs::canonicalize(dir.parent()?).ok()?;
        Some(parent.join(dir.file_name()?))
    })?;
    let context = std::fs::canonicalize(context).ok()?;
    let rel = resolved.strip_prefix(&context).ok()?.to_str()?;
    (!rel.is_empty()).then(|| rel.to_string())
}
