//! The content-addressed build graph every frontend lowers to and the solver walks: LLB-style ops
//! (source, exec, file, merge) whose identity is a blake3 digest over a stable encoding of the op and
//! its inputs' identities, plus the outputs (images) the build is asked for and the vertices gating them.
//!
//! Identity rules (see [`encode`] for the byte-level specification):
//! - only what changes a vertex's result is hashed: the op, its options and its inputs' digests;
//!   descriptions and source locations are not, so moving a line in a Dockerfile keeps the cache;
//! - nothing machine-specific is hashed: the local build context is named (`context`), never its path;
//! - the same inputs give the same digests on any machine and any run (no `std::hash`, no map order).

mod encode;
mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use encode::Encoder;
/// The platform type is the snapshotter's (the registry picks images by it); the graph hashes it.
pub use forge_snapshotter::platform::Platform;

/// The build arguments BuildKit predefines for proxies. They are the contract between the frontend
/// and the executor: the frontend accepts them without an ARG and keeps them out of every vertex
/// (so out of every key and the image); the executor gives them to RUN steps when they run.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A vertex's identity: blake3 over its [`encode`]d op (inputs included by digest).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VertexId(pub [u8; 32]);

impl VertexId {
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.to_hex())
    }
}

impl fmt::Debug for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VertexId({self})")
    }
}

impl Serialize for VertexId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A reference to a vertex of the same [`Graph`]: its index in [`Graph::vertices`].
/// Vertices only reference earlier ones, so the vertex list is already in topological order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeRef(pub usize);

/// One operation of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    Merge(MergeOp),
}

/// Where a filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SourceOp {
    /// The empty filesystem.
    Scratch,
    /// A registry image, as written after variable expansion (normalisation is the resolver's job).
    Image {
        reference: String,
        platform: Platform,
    },
    /// A directory given by the caller under a stable name (never its host path).
    Local {
        name: String,
        /// Only these paths (relative, sorted) are needed; empty means everything.
        include_patterns: Vec<String>,
        /// Patterns excluded (the `.dockerignore` rules, in order, `!` exceptions kept).
        exclude_patterns: Vec<String>,
    },
    /// A file downloaded over HTTP(S) (ADD <url>).
    Http {
        url: String,
        filename: String,
        checksum: Option<String>,
    },
    /// A git repository (ADD <git url>).
    Git {
        remote: String,
        reference: String,
        subdir: String,
        keep_git_dir: bool,
        checksum: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The build's default (`forge build --network`; the sandbox unless said otherwise: a private
    /// namespace whose only way out is forge's HTTP(S) proxy, see README.md).
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A process run on mounts; its output is the filesystem of the mount marked `output` (the root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    /// `KEY=value` in the order the process sees them.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    pub platform: Platform,
    /// The first mount is the root filesystem (`/`).
    pub mounts: Vec<Mount>,
    /// Makes the step a test: its result is how it exited and the files it left at these paths,
    /// not a filesystem. The Dockerfile frontend never sets it (and an exec without it hashes as
    /// it did before the field existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<TestStep>,
    /// `NAME=IP` lines added to the step's `/etc/hosts` (`--add-host`); hashed only when present,
    /// so a step without them keeps the identity it had before the field existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `--ulimit`, in docker's form (`nofile=1024:2048`), set before the command runs; hashed only
    /// when present, as BuildKit keys a step by its ulimits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<String>,
    /// `--shm-size` in bytes, the size of the step's /dev/shm (64 MiB without); hashed only when
    /// present, as BuildKit keys a step by its /dev/shm mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
}

/// A step run for its verdict (a pipeline's test job): a non-zero exit does not fail the vertex but
/// is its result, and the files at `artifacts` are taken out of the step's root filesystem into the
/// store, whatever the exit status (a failed test run's reports are the ones that matter).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TestStep {
    /// Absolute paths in the root filesystem (a JUnit report directory, say); one that does not
    /// exist after the run is left out of the result.
    pub artifacts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub target: String,
    #[serde(flatten)]
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountKind {
    /// A filesystem from a vertex (`None`: scratch) at `source_path` inside it.
    Bind {
        input: Option<NodeRef>,
        source_path: String,
        readonly: bool,
        /// Whether the step's result is this mount's content after the run (only the root).
        output: bool,
    },
    /// A persistent directory shared between builds, keyed by `id`.
    Cache {
        id: String,
        sharing: CacheSharing,
        /// The initial content (scratch, or a base with the directory's owner and mode).
        input: Option<NodeRef>,
        source_path: String,
        readonly: bool,
    },
    Tmpfs {
        size_bytes: u64,
        /// `ro`: mounted read-only, as BuildKit mounts it (encoded only when set, so that a
        /// writable tmpfs keeps the key it had before the field existed).
        readonly: bool,
    },
    /// A secret given by the caller under `id`, as a file at the target or in `env`.
    Secret {
        id: String,
        env: Option<String>,
        required: bool,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// An SSH agent socket forwarded under `id`.
    Ssh {
        id: String,
        required: bool,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

/// File actions applied in order on `base` (`None`: scratch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    pub base: Option<NodeRef>,
    pub platform: Platform,
    pub actions: Vec<FileAction>,
}

/// The owner of created files as written (`user[:group]`, names or ids; resolved in the rootfs later).
pub type Owner = Option<String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FileAction {
    Copy {
        /// The filesystem copied from (`None`: scratch).
        from: Option<NodeRef>,
        src: String,
        dest: String,
        #[serde(flatten)]
        options: CopyOptions,
    },
    Mkdir {
        path: String,
        mode: u32,
        make_parents: bool,
        owner: Owner,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: String,
        owner: Owner,
    },
    Rm {
        path: String,
        allow_not_found: bool,
        allow_wildcard: bool,
    },
    Symlink {
        target: String,
        link: String,
    },
}

/// A `--chmod` value: octal, or symbolic (`u+x,g-w`) applied to each file's own mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CopyOptions {
    pub owner: Owner,
    pub mode: Option<Chmod>,
    pub follow_symlinks: bool,
    pub copy_dir_contents_only: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub required_paths: Vec<String>,
    pub attempt_unpack: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
}

/// Layers the inputs' filesystems in order (later wins); `None` is scratch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergeOp {
    pub inputs: Vec<Option<NodeRef>>,
}

/// A vertex: an op, its identity, and what a human needs to recognise it (not hashed).
#[derive(Debug, Clone, Serialize)]
pub struct Vertex {
    pub id: VertexId,
    pub op: Op,
    /// E.g. `[build 2/5] RUN make`.
    pub description: String,
    /// Where it came from in the frontend's source (file line), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The stage (Dockerfile stage, pipeline job) whose step this is, as data for the solver's
    /// filters (`--no-cache-filter`); `None` for vertices the frontend adds on its own (base
    /// images, the build context). Not hashed, and left out of the renderings, which show the
    /// description.
    #[serde(skip)]
    pub stage: Option<String>,
}

impl Op {
    /// The vertices this op reads, in encoding order.
    pub fn inputs(&self) -> Vec<NodeRef> {
        match self {
            Op::Source(_) => Vec::new(),
            Op::Exec(e) => e
                .mounts
                .iter()
                .filter_map(|m| match &m.kind {
                    MountKind::Bind { input, .. } | MountKind::Cache { input, .. } => *input,
                    _ => None,
                })
                .collect(),
            Op::File(f) => f
                .base
                .into_iter()
                .chain(f.actions.iter().filter_map(|a| match a {
                    FileAction::Copy { from, .. } => *from,
                    _ => None,
                }))
                .collect(),
            Op::Merge(m) => m.inputs.iter().flatten().copied().collect(),
        }
    }
}

/// An OCI image config (the parts a Dockerfile builds), travelling with each stage's result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// `KEY=value`, in definition order.
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Set by CMD (Docker's `ArgsEscaped`, kept for compatibility).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub exposed_ports: BTreeSet<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub volumes: BTreeSet<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub onbuild: Vec<String>,
    pub history: Vec<History>,
}

/// Durations in nanoseconds, as the OCI/Docker config stores them; 0 means the runtime default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval_ns: u64,
    pub timeout_ns: u64,
    pub start_period_ns: u64,
    pub start_interval_ns: u64,
    pub retries: u32,
}

/// One entry of the image's history; not part of any vertex identity (see [`encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct History {
    /// RFC 3339; `None` for this build's own entries until the exporter stamps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub empty_layer: bool,
}

/// What the build is asked to produce.
///
/// An output is exported (written, pushed) only after every vertex in `gates` has completed
/// successfully. A Dockerfile gives no gates; the pipeline frontend (forge.yaml) adds its test jobs as
/// Exec vertices that mount `root` and lists them here, so a failing test stops the push without being
/// part of the image itself.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// The stage (or pipeline image) name this output comes from.
    pub name: String,
    /// The vertex whose filesystem is the image's root filesystem.
    pub root: NodeRef,
    pub image: ImageConfig,
    pub gates: Vec<NodeRef>,
}

/// A whole build graph: vertices in topological order (inputs before users), deduplicated by
/// identity, and the outputs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    pub vertices: Vec<Vertex>,
    pub outputs: Vec<Output>,
}

impl Graph {
    pub fn vertex(&self, r: NodeRef) -> &Vertex {
        &self.vertices[r.0]
    }

    /// The vertices whose layers make up `root`'s filesystem: `root`, then down each step's root
    /// mount, a file operation's base and every input of a merge, to the sources. What a stage
    /// only copies from (`COPY --from`, a RUN's extra mounts) is not among them: its layers are
    /// read on this machine and never become the result's.
    pub fn layer_chain(&self, root: NodeRef) -> std::collections::HashSet<VertexId> {
        let mut chain = std::collections::HashSet::new();
        let mut todo = vec![root];
        while let Some(r) = todo.pop() {
            let v = self.vertex(r);
            if !chain.insert(v.id) {
                continue;
            }
            match &v.op {
                Op::Source(_) => {}
                Op::Exec(e) => {
                    if let Some(Mount {
                        kind: MountKind::Bind { input: Some(i), .. },
                        ..
                    }) = e.mounts.first()
                    {
                        todo.push(*i);
                    }
                }
                Op::File(f) => todo.extend(f.base),
                Op::Merge(m) => todo.extend(m.inputs.iter().flatten()),
            }
        }
        chain
    }

    /// Human-readable listing, one vertex per line, stable for snapshots.
    pub fn to_text(&self) -> String {
        render::text(self)
    }

    /// Graphviz rendering.
    pub fn to_dot(&self) -> String {
        render::dot(self)
    }

    pub fn to_json(&self) -> serde_json::Value {
        render::json(self)
    }
}

/// Builds a [`Graph`], computing each vertex's identity as it is added and merging identical ones.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: Graph,
    by_id: HashMap<VertexId, NodeRef>,
}

/// Descriptions are for people (progress lines, errors) and not part of a vertex's identity: one
/// longer than 1 KiB (a RUN with a megabyte of arguments) is cut there, so no view or error repeats
/// megabytes.
fn short_description(mut d: String) -> String {
    const MAX: usize = 1024;
    if d.len() <= MAX {
        return d;
    }
    let total = d.len();
    let mut cut = MAX;
    while !d.is_char_boundary(cut) {
        cut -= 1;
    }
    d.truncate(cut);
    d.push_str(&format!("... ({} more bytes)", total - cut));
    d
}

impl GraphBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `op` (whose inputs must already be in this builder) and returns its reference; an op
    /// identical to one already added returns the existing vertex.
    pub fn add(&mut self, op: Op, description: impl Into<String>, line: Option<usize>) -> NodeRef {
        self.add_vertex(op, None, description.into(), line)
    }

    /// Like [`add`](Self::add), for a step of the stage `stage`. An identical op already added
    /// keeps the stage (and description) it was first added with.
    pub fn add_in_stage(
        &mut self,
        stage: impl Into<String>,
        op: Op,
        description: impl Into<String>,
        line: Option<usize>,
    ) -> NodeRef {
        self.add_vertex(op, Some(stage.into()), description.into(), line)
    }

    fn add_vertex(
        &mut self,
        op: Op,
        stage: Option<String>,
        description: String,
        line: Option<usize>,
    ) -> NodeRef {
        let id = encode::vertex_id(&op, &|r: NodeRef| self.graph.vertices[r.0].id);
        if let Some(existing) = self.by_id.get(&id) {
            return *existing;
        }
        let r = NodeRef(self.graph.vertices.len());
        self.graph.vertices.push(Vertex {
            id,
            op,
            description: short_description(description),
            line,
            stage,
        });
        self.by_id.insert(id, r);
        r
    }

    pub fn id(&self, r: NodeRef) -> VertexId {
        self.graph.vertices[r.0].id
    }

    pub fn add_output(&mut self, output: Output) {
        self.graph.outputs.push(output);
    }

    /// The finished graph, keeping only vertices the outputs (and their gates) need, renumbered in
    /// topological order.
    pub fn finish(self) -> Graph {
        let g = self.graph;
        let mut needed = vec![false; g.vertices.len()];
        let mut stack: Vec<NodeRef> = g
            .outputs
            .iter()
            .flat_map(|o| std::iter::once(o.root).chain(o.gates.iter().copied()))
            .collect();
        while let Some(r) = stack.pop() {
            if std::mem::replace(&mut needed[r.0], true) {
                continue;
            }
            stack.extend(g.vertices[r.0].op.inputs());
        }
        let mut map = vec![None; g.vertices.len()];
        let mut vertices = Vec::new();
        for (i, v) in g.vertices.into_iter().enumerate() {
            if needed[i] {
                map[i] = Some(NodeRef(vertices.len()));
                vertices.push(v);
            }
        }
        let remap = |r: NodeRef| map[r.0].expect("needed vertices are kept");
        for v in &mut vertices {
            remap_op(&mut v.op, &remap);
        }
        let outputs = g
            .outputs
            .into_iter()
            .map(|mut o| {
                o.root = remap(o.root);
                o.gates = o.gates.into_iter().map(remap).collect();
                o
            })
            .collect();
        Graph { vertices, outputs }
    }
}

fn remap_op(op: &mut Op, f: &dyn Fn(NodeRef) -> NodeRef) {
    let opt = |o: &mut Option<NodeRef>| {
        if let Some(r) = o {
            *r = f(*r);
        }
    };
    match op {
        Op::Source(_) => {}
        Op::Exec(e) => {
            for m in &mut e.mounts {
                match &mut m.kind {
                    MountKind::Bind { input, .. } | MountKind::Cache { input, .. } => opt(input),
                    _ => {}
                }
            }
        }
        Op::File(file) => {
            opt(&mut file.base);
            for a in &mut file.actions {
                if let FileAction::Copy { from, .. } = a {
                    opt(from);
                }
            }
        }
        Op::Merge(m) => m.inputs.iter_mut().for_each(opt),
    }
}
