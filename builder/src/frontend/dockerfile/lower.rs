//! Lowering: typed Dockerfile stages to the build [`Graph`], with BuildKit's semantics for ARG/ENV
//! scoping, stage references (`FROM <stage>`, `COPY --from`, `RUN --mount from=`), target pruning and
//! ONBUILD triggers (follows `dockerfile2llb/convert.go`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::ast::{Dockerfile, Span};
use super::instructions::{
    self, ArgDecl, Command, CommandLine, ErrorKind, Instruction, InstructionError, MountSpec,
    MountType, SourcesAndDest, TypedDockerfile, point,
};
mod words;

use crate::frontend::suggest::suggest;
use crate::graph::{
    CacheSharing, CopyOptions, ExecOp, FileAction, FileOp, Graph, GraphBuilder, Healthcheck,
    History, ImageConfig, MergeOp, Mount, MountKind, NodeRef, Op, Output, Platform, SourceOp,
};
use crate::slashpath::{clean_path, join_root};

/// Gives a base image's config (env, user, workdir, ONBUILD triggers...). Without one (dry runs),
/// base images are taken as having an empty config.
pub trait ImageResolver: Send + Sync {
    /// `at` is the FROM instruction that names the image, for the caller's messages.
    fn resolve(&self, reference: &str, platform: &Platform, at: Span) -> Option<ImageConfig>;
}

/// What the caller decides about a build.
pub struct LowerOptions<'a> {
    /// The stage to build (`--target`); the last stage when `None`.
    pub target: Option<String>,
    /// `--build-arg KEY=VALUE`.
    pub build_args: BTreeMap<String, String>,
    pub target_platform: Platform,
    pub build_platform: Platform,
    /// The name the build context is known by in the graph (never its host path).
    pub context_name: String,
    /// The `.dockerignore` patterns in force, in order.
    pub dockerignore: Vec<String>,
    /// `--add-host`, as `NAME=IP`: in every RUN step's `/etc/hosts`, and in its cache key.
    pub extra_hosts: Vec<String>,
    /// `--ulimit`, in docker's form: set in every RUN step, and in its cache key.
    pub ulimits: Vec<String>,
    /// `--shm-size` in bytes: every RUN step's /dev/shm, and in its cache key.
    pub shm_size: Option<u64>,
    /// `--build-context NAME=...`: what `FROM NAME`, `COPY --from=NAME` and `--mount from=NAME`
    /// read instead of an image of that name.
    pub named_contexts: BTreeMap<String, NamedContext>,
    pub resolver: Option<&'a dyn ImageResolver>,
}

/// A `--build-context` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: that image in place of the name.
    Image(String),
    /// A directory, known to the graph by the context's name (never its host path).
    Local,
}

impl Default for LowerOptions<'_> {
    fn default() -> Self {
        LowerOptions {
            target: None,
            build_args: BTreeMap::new(),
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            context_name: "context".into(),
            dockerignore: Vec::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
            named_contexts: BTreeMap::new(),
            resolver: None,
        }
    }
}

/// The lowered build.
#[derive(Debug)]
pub struct Lowered {
    pub graph: Graph,
    /// The target stage's name (`stage-N` for unnamed stages).
    pub target: String,
    /// Non-fatal findings, e.g. build arguments no ARG consumed.
    pub warnings: Vec<String>,
}

/// A lowering error, located when it is about a place in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct LowerError {
    pub kind: Box<LowerErrorKind>,
    pub span: Option<Span>,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerErrorKind {
    #[error(transparent)]
    Instruction(ErrorKind),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    #[error("target stage {0:?} could not be found")]
    TargetNotFound(String),
    #[error("base name ({0}) should not be blank")]
    BlankBaseName(String),
    #[error("failed to parse platform {0:?}")]
    Platform(String),
    #[error("{0}")]
    Expansion(String),
    #[error(
        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
    )]
    CopyFromVariable,
    #[error("invalid stage index {0}")]
    StageIndex(usize),
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {stage:?}"
    )]
    CopyFromLaterStage { from: String, stage: String },
    #[error(
        "cannot mount from stage {from:?} to {target:?}, stage needs to be defined before current command"
    )]
    MountFromLaterStage { from: String, target: String },
    #[error("invalid --mount: {0}")]
    Mount(String),
    #[error("parsing produced an invalid run command: {0}")]
    InvalidRun(String),
    /// A NUL byte in a RUN command: no process argument can carry one (BuildKit's step fails
    /// when it starts; forge's runner would have dropped it and run another command).
    #[error("the command holds a NUL byte, which no process argument can carry")]
    NulInRun,
    #[error("invalid mount target {0:?}")]
    MountTarget(String),
    #[error("{0}")]
    Chmod(String),
    #[error("{0}")]
    Checksum(String),
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Port(String),
    #[error("invalid signal: {0}")]
    Signal(String),
    #[error("onbuild trigger {trigger:?} of base image {image}: {reason}")]
    Trigger {
        image: String,
        trigger: String,
        reason: String,
    },
}

impl From<InstructionError> for LowerError {
    fn from(e: InstructionError) -> Self {
        LowerError {
            kind: Box::new(LowerErrorKind::Instruction(*e.kind)),
            span: Some(e.span),
            hint: e.hint,
        }
    }
}

fn err(kind: LowerErrorKind, span: Span) -> LowerError {
    LowerError {
        kind: Box::new(kind),
        span: Some(span),
        hint: None,
    }
}

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Whether a `# syntax=` value names the Dockerfile frontend forge implements itself:
/// `docker/dockerfile` (optionally on docker.io, with any tag such as `1`, `1.7`, `1-labs` or
/// `labs`, and any digest) and its `-upstream` builds.
fn builtin_frontend(value: &str) -> bool {
    let name = value.split('@').next().unwrap_or("");
    let name = name
        .strip_prefix("docker.io/")
        .unwrap_or(name)
        .split(':')
        .next()
        .unwrap_or("");
    matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream")
}

/// Build arguments Docker accepts without an ARG and never warns about, besides the proxy ones
/// ([`crate::graph::PROXY_ARGS`]).
const BUILTIN_ARGS: &[&str] = &["BUILDKIT_SYNTAX", "SOURCE_DATE_EPOCH"];

/// An ordered environment where setting a key moves it to the end (LLB's `AddOrReplace`), with
/// its names in a set, so that setting a new name (a Dockerfile of many ENV lines) does not
/// search the list.
#[derive(Debug, Clone, Default)]
struct EnvList(Vec<(String, String)>, HashSet<String>);

impl EnvList {
    /// Sets `k` to `v`, moving it last (BuildKit's `AddOrReplace`). Names are unique in the
    /// list, so the search stops at the first.
    fn set(&mut self, k: &str, v: &str) {
        if self.1.contains(k) {
            if let Some(i) = self.0.iter().position(|(key, _)| key == k) {
                self.0.remove(i);
            }
        } else {
            self.1.insert(k.to_string());
        }
        self.0.push((k.to_string(), v.to_string()));
    }

    fn contains(&self, k: &str) -> bool {
        self.1.contains(k)
    }

    fn get(&self, k: &str) -> Option<&str> {
        if !self.contains(k) {
            return None;
        }
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let mut s = String::with_capacity(k.len() + 1 + v.len());
                s.push_str(k);
                s.push('=');
                s.push_str(v);
                s
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    Stage(usize),
    Image(String),
    Scratch,
}

/// Where a COPY --from / mount from= points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dep {
    Stage(usize),
    Image(String),
    /// A directory given with `--build-context NAME=PATH`.
    Local(String),
}

#[derive(Debug, Clone)]
struct PlannedCommand {
    command: Command,
    /// For COPY --from: the source; for RUN: one per mount (`None`: build context or scratch).
    sources: Vec<Option<Dep>>,
}

struct StagePlan {
    name: String,
    base: Base,
    platform: Option<Platform>,
    span: Span,
    commands: Vec<PlannedCommand>,
    base_config: Option<ImageConfig>,
}

struct Ctx<'a> {
    escape: char,
    opts: &'a LowerOptions<'a>,
    global: EnvList,
    names: HashMap<String, usize>,
}

impl Ctx<'_> {
    fn dep_for(&self, from: &str) -> Dep {
        match self.names.get(&from.to_ascii_lowercase()) {
            Some(i) => Dep::Stage(*i),
            None => match self.opts.named_contexts.get(from) {
                Some(NamedContext::Image(r)) => Dep::Image(r.clone()),
                Some(NamedContext::Local) => Dep::Local(from.to_string()),
                None => Dep::Image(from.to_string()),
            },
        }
    }

    fn plan_command(
        &self,
        command: Command,
        stage_count: usize,
    ) -> Result<PlannedCommand, LowerError> {
        let mut sources = Vec::new();
        match &command.instruction {
            Instruction::Copy(c) => {
                if let Some(from) = &c.from {
                    let unexpanded =
                        words::expand_word(self.escape, from, &EnvList::default().0)
                            .map_err(|e| err(LowerErrorKind::Expansion(e), command.span))?;
                    if &unexpanded != from {
                        return Err(err(LowerErrorKind::CopyFromVariable, command.span));
                    }
                    let dep = match from.parse::<usize>() {
                        Ok(i) if i < stage_count => Dep::Stage(i),
                        Ok(i) => return Err(err(LowerErrorKind::StageIndex(i), command.span)),
                        Err(_) => self.dep_for(from),
                    };
                    sources.push(Some(dep));
                }
            }
            Instruction::Run(r) => {
                for m in &r.mounts {
                    let from = mount_from(&m.text);
                    sources.push((!from.is_empty()).then(|| self.dep_for(&from)));
                }
            }
            _ => {}
        }
        Ok(PlannedCommand { command, sources })
    }
}

/// The raw `from=` of a mount (it is never expanded; see `check_mount_from`).
fn mount_from(text: &str) -> String {
    instructions::csv_fields(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| {
            f.split_once('=')
                .filter(|(k, _)| k.eq_ignore_ascii_case("from"))
                .map(|(_, v)| v.to_string())
        })
        .next_back()
        .unwrap_or_default()
}

/// The automatic platform ARGs (BuildKit's `defaultArgs`), build-arg overrides applied.
fn default_args(opts: &LowerOptions<'_>, target: &str) -> EnvList {
    let bp = &opts.build_platform;
    let tp = &opts.target_platform;
    let mut env = EnvList::default();
    let pairs = [
        ("BUILDPLATFORM", bp.to_string()),
        ("BUILDOS", bp.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", bp.architecture.clone()),
        ("BUILDVARIANT", bp.variant.clone()),
        ("TARGETPLATFORM", tp.to_string()),
        ("TARGETOS", tp.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", tp.architecture.clone()),
        ("TARGETVARIANT", tp.variant.clone()),
        (
            "TARGETSTAGE",
            if target.is_empty() {
                "default".into()
            } else {
                target.to_string()
            },
        ),
    ];
    for (k, v) in pairs {
        let v = opts.build_args.get(k).cloned().unwrap_or(v);
        env.set(k, &v);
    }
    env
}

/// Lowers a parsed Dockerfile to a graph whose single output is the target stage.
pub fn lower(df: &Dockerfile, opts: &LowerOptions<'_>) -> Result<Lowered, LowerError> {
    let typed = instructions::parse_dockerfile(df)?;
    let mut lowered = lower_typed(&typed, opts)?;
    lowered.warnings.extend(
        df.directives
            .iter()
            .filter(|d| d.name == "syntax" && !builtin_frontend(&d.value))
            .map(|d| {
                format!(
                    "line {}: `# syntax={}` names a frontend forge does not run; forge \
                         builds with its own Dockerfile frontend (BuildKit's syntax, as \
                         docker/dockerfile:1)",
                    d.span.start.line, d.value
                )
            }),
    );
    Ok(lowered)
}

/// [`lower`] for an already typed Dockerfile.
pub fn lower_typed(
    typed: &TypedDockerfile,
    opts: &LowerOptions<'_>,
) -> Result<Lowered, LowerError> {
    if typed.stages.is_empty() {
        return Err(LowerError {
            kind: Box::new(LowerErrorKind::NoStages),
            span: None,
            hint: Some("add a FROM instruction".into()),
        });
    }
    let target_name = opts
        .target
        .clone()
        .or_else(|| typed.stages.last().and_then(|s| s.from.name.clone()))
        .unwrap_or_default();
    let mut global = default_args(opts, &target_name);
    let mut declared: BTreeSet<String> = BTreeSet::new();
    for (args, span) in &typed.meta_args {
        for a in args {
            declared.insert(a.key.clone());
            let value = match opts.build_args.get(&a.key) {
                Some(v) => Some(v.clone()),
                None => match &a.default {
                    Some(d) => Some(
                        words::expand_word(typed.escape, d, &global.0)
                            .map_err(|e| err(LowerErrorKind::Expansion(e), *span))?,
                    ),
                    None => None,
                },
            };
            if let Some(v) = value {
                global.set(&a.key, &v);
            }
        }
    }

    let mut ctx = Ctx {
        escape: typed.escape,
        opts,
        global,
        names: HashMap::new(),
    };

    // Stages: base names and platforms expanded with the global scope only.
    let mut plans = Vec::new();
    for (i, st) in typed.stages.iter().enumerate() {
        let base = words::expand_word(ctx.escape, &st.from.base, &ctx.global.0)
            .map_err(|e| err(LowerErrorKind::Expansion(e), st.span))?;
        if base.is_empty() {
            return Err(err(
                LowerErrorKind::BlankBaseName(st.from.base.clone()),
                st.span,
            ));
        }
        let platform = match &st.from.platform {
            None => None,
            Some(p) => {
                let v = words::expand_word(ctx.escape, p, &ctx.global.0)
                    .map_err(|e| err(LowerErrorKind::Expansion(e), st.span))?;
                Some(
                    Platform::parse(&v)
                        .ok_or_else(|| err(LowerErrorKind::Platform(v.clone()), st.span))?,
                )
            }
        };
        let base = if let Some(j) = ctx.names.get(&base) {
            Base::Stage(*j)
        } else if let Some(nc) = ctx.opts.named_contexts.get(&base) {
            match nc {
                NamedContext::Image(r) => Base::Image(r.clone()),
                NamedContext::Local => {
                    return Err(err(
                        LowerErrorKind::Source(format!(
                            "FROM {base}: the build context {base:?} is a directory; forge builds \
                             FROM an image or a stage only (read the directory with COPY \
                             --from={base})"
                        )),
                        st.span,
                    ));
                }
            }
        } else if base == "scratch" {
            Base::Scratch
        } else {
            Base::Image(base)
        };
        // The base is pulled for this machine's platform, the only one built: another one asked
        // of an image would give this machine's files under the other's name (a stage reference
        // ignores `--platform`, as in BuildKit).
        if let (Base::Image(_), Some(p)) = (&base, &platform)
            && !ctx.opts.build_platform.matches(p)
        {
            return Err(err(
                LowerErrorKind::Source(format!(
                    "FROM --platform={p}: only this machine's platform ({}) can be built for \
                     now, and its base pulled",
                    ctx.opts.build_platform
                )),
                st.span,
            ));
        }
        if let Some(n) = &st.from.name
            && ctx.opts.named_contexts.contains_key(n)
        {
            return Err(err(
                LowerErrorKind::Source(format!(
                    "stage {n:?} has the name of a --build-context; forge does not replace a \
                     stage with a build context (rename one of them)"
                )),
                st.span,
            ));
        }
        if let Some(n) = &st.from.name {
            ctx.names.insert(n.clone(), i);
        }
        plans.push(StagePlan {
            name: st.from.name.clone().unwrap_or_else(|| format!("stage-{i}")),
            base,
            platform,
            span: st.span,
            commands: Vec::new(),
            base_config: None,
        });
    }
    let target = match &opts.target {
        None => plans.len() - 1,
        Some(t) => *ctx
            .names
            .get(&t.to_ascii_lowercase())
            .ok_or_else(|| LowerError {
                kind: Box::new(LowerErrorKind::TargetNotFound(t.clone())),
                span: None,
                hint: suggest(t, ctx.names.keys().map(String::as_str))
                    .map(|s| format!("did you mean {s}?")),
            })?,
    };
    let count = plans.len();
    for (i, st) in typed.stages.iter().enumerate() {
        for c in &st.commands {
            let planned = ctx.plan_command(c.clone(), count)?;
            plans[i].commands.push(planned);
        }
    }
    // ONBUILD of a base stage runs first in each stage built on it.
    for i in 0..count {
        if let Base::Stage(b) = plans[i].base {
            let triggers: Vec<PlannedCommand> = plans[b]
                .commands
                .iter()
                .filter_map(|c| match &c.command.instruction {
                    Instruction::Onbuild(o) => Some(o.trigger.as_ref().clone()),
                    _ => None,
                })
                .map(|mut trigger| {
                    trigger.span = plans[i].span;
                    ctx.plan_command(trigger, count)
                })
                .collect::<Result<_, _>>()?;
            plans[i].commands.splice(0..0, triggers);
        }
    }

    // Reachable stages; resolving base images may add ONBUILD triggers and so new dependencies.
    let mut resolved = vec![false; count];
    let reachable = loop {
        let reachable = reachable_from(&plans, target);
        let mut changed = false;
        for i in 0..count {
            if !reachable[i] || resolved[i] {
                continue;
            }
            resolved[i] = true;
            let Base::Image(reference) = plans[i].base.clone() else {
                continue;
            };
            let platform = plans[i]
                .platform
                .clone()
                .unwrap_or(opts.target_platform.clone());
            let Some(config) = opts
                .resolver
                .and_then(|r| r.resolve(&reference, &platform, plans[i].span))
            else {
                continue;
            };
            let mut triggers = Vec::new();
            for t in &config.onbuild {
                let trigger_err = |reason: String| {
                    err(
                        LowerErrorKind::Trigger {
                            image: reference.clone(),
                            trigger: t.clone(),
                            reason,
                        },
                        plans[i].span,
                    )
                };
                let trigger_df = super::parser::parse(t).map_err(|e| trigger_err(e.message()))?;
                let [node] = trigger_df.children.as_slice() else {
                    return Err(trigger_err(
                        "onbuild trigger should be a single expression".into(),
                    ));
                };
                let mut cmd =
                    instructions::parse_node(node).map_err(|e| trigger_err(e.kind.to_string()))?;
                cmd.span = plans[i].span;
                let planned = ctx.plan_command(cmd, count)?;
                changed |= planned.sources.iter().any(Option::is_some);
                triggers.push(planned);
            }
            plans[i].commands.splice(0..0, triggers);
            plans[i].base_config = Some(config);
        }
        if !changed {
            break reachable;
        }
    };

    // Two passes: the first learns which context paths the build reads, the second builds the graph
    // with the context source restricted to them.
    let first = Dispatcher::new(&ctx, &plans, None).run(&reachable)?;
    let include = normalize_context_paths(&first.ctx_paths);
    let mut d = Dispatcher::new(&ctx, &plans, Some(include));
    let states = d.run_states(&reachable)?;
    let st = states[target].as_ref().expect("the target is reachable");
    let root = match st.root {
        Some(r) => r,
        None => d.g.add(Op::Source(SourceOp::Scratch), "scratch", None),
    };
    d.g.add_output(Output {
        name: plans[target].name.clone(),
        root,
        image: st.image.clone(),
        gates: Vec::new(),
    });

    // Build args no ARG declared (in the global scope or a built stage) were not consumed.
    for s in states.iter().flatten() {
        declared.extend(s.declared_args.iter().cloned());
    }
    let defaults = default_args(opts, "");
    let warnings = opts
        .build_args
        .keys()
        .filter(|k| {
            !declared.contains(*k)
                && !BUILTIN_ARGS.contains(&k.as_str())
                && !crate::graph::PROXY_ARGS.contains(&k.as_str())
                && defaults.get(k).is_none()
        })
        .map(|k| format!("build argument {k:?} was not consumed by any ARG"))
        .collect();
    Ok(Lowered {
        graph: d.g.finish(),
        target: plans[target].name.clone(),
        warnings,
    })
}

fn reachable_from(plans: &[StagePlan], target: usize) -> Vec<bool> {
    let mut seen = vec![false; plans.len()];
    let mut stack = vec![target];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if let Base::Stage(b) = plans[i].base {
            stack.push(b);
        }
        for c in &plans[i].commands {
            for s in c.sources.iter().flatten() {
                if let Dep::Stage(j) = s {
                    stack.push(*j);
                }
            }
        }
    }
    seen
}

/// BuildKit's `normalizeContextPaths`: sorted relative paths, or nothing when `/` is needed.
fn normalize_context_paths(paths: &BTreeSet<String>) -> Vec<String> {
    if paths.contains("/") {
        return Vec::new();
    }
    paths
        .iter()
        .map(|p| p.trim_start_matches('/').to_string())
        .collect()
}

/// A destination relative to the working directory, keeping a trailing slash (it means "into").
fn dest_path(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let keep_slash = dest.ends_with('/') || dest.ends_with("/.");
    let joined = if dest.starts_with('/') {
        clean_path(dest)
    } else {
        clean_path(&format!("{workdir}/{dest}"))
    };
    if keep_slash && !joined.ends_with('/') {
        format!("{joined}/")
    } else {
        joined
    }
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String` for non-negative durations.
fn go_duration(ns: u64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", trim_float(ns as f64 / div as f64));
    }
    let h = ns / 3_600_000_000_000;
    let m = (ns / 60_000_000_000) % 60;
    let s = (ns % 60_000_000_000) as f64 / 1e9;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_float(s)));
    out
}

fn trim_float(f: f64) -> String {
    let s = format!("{f:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn healthcheck_history(h: &Healthcheck) -> String {
    format!(
        "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        h.test.join(" "),
        go_duration(h.interval_ns),
        go_duration(h.timeout_ns),
        go_duration(h.start_period_ns),
        go_duration(h.start_interval_ns),
        h.retries
    )
}

fn is_http(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// A git source as ADD accepts it: `git@host:repo`, `git://`, `ssh://`, or an http(s) URL whose path
/// ends in `.git`; `#ref[:subdir]` selects a revision and directory.
fn git_source(src: &str) -> Option<(String, String, String)> {
    let (remote, fragment) = src.split_once('#').unwrap_or((src, ""));
    let is_git = remote.starts_with("git@")
        || remote.starts_with("git://")
        || remote.starts_with("ssh://")
        || (is_http(remote) && remote.trim_end_matches('/').ends_with(".git"));
    if !is_git {
        return None;
    }
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    Some((
        remote.to_string(),
        reference.to_string(),
        subdir.to_string(),
    ))
}

/// The state of a stage while its commands are dispatched.
#[derive(Debug, Clone)]
struct StageState {
    root: Option<NodeRef>,
    image: ImageConfig,
    env: EnvList,
    workdir: String,
    user: String,
    platform: Platform,
    build_args: Vec<(String, Option<String>)>,
    declared_args: BTreeSet<String>,
    cmd_set: bool,
}

struct Dispatched {
    ctx_paths: BTreeSet<String>,
}

struct Dispatcher<'c, 'a> {
    ctx: &'c Ctx<'a>,
    plans: &'c [StagePlan],
    g: GraphBuilder,
    context_include: Option<Vec<String>>,
    context: Option<NodeRef>,
    ctx_paths: BTreeSet<String>,
}

impl<'c, 'a> Dispatcher<'c, 'a> {
    fn new(ctx: &'c Ctx<'a>, plans: &'c [StagePlan], context_include: Option<Vec<String>>) -> Self {
        Dispatcher {
            ctx,
            plans,
            g: GraphBuilder::new(),
            context_include,
            context: None,
            ctx_paths: BTreeSet::new(),
        }
    }

    fn run(mut self, reachable: &[bool]) -> Result<Dispatched, LowerError> {
        self.run_states(reachable)?;
        Ok(Dispatched {
            ctx_paths: self.ctx_paths,
        })
    }

    fn context(&mut self) -> NodeRef {
        if let Some(c) = self.context {
            return c;
        }
        let c = self.g.add(
            Op::Source(SourceOp::Local {
                name: self.ctx.opts.context_name.clone(),
                include_patterns: self.context_include.clone().unwrap_or_default(),
                exclude_patterns: self.ctx.opts.dockerignore.clone(),
            }),
            format!(
                "[internal] load build context {}",
                self.ctx.opts.context_name
            ),
            None,
        );
        self.context = Some(c);
        c
    }

    /// The directory given as `--build-context NAME=PATH`, whole (one source per name).
    fn named_context(&mut self, name: &str) -> NodeRef {
        self.g.add(
            Op::Source(SourceOp::Local {
                name: name.to_string(),
                include_patterns: Vec::new(),
                exclude_patterns: Vec::new(),
            }),
            format!("[internal] load build context {name}"),
            None,
        )
    }

    fn image_source(
        &mut self,
        reference: &str,
        platform: &Platform,
        line: Option<usize>,
    ) -> NodeRef {
        self.g.add(
            Op::Source(SourceOp::Image {
                reference: reference.to_string(),
                platform: platform.clone(),
            }),
            format!("[internal] load image {reference}"),
            line,
        )
    }

    fn run_states(&mut self, reachable: &[bool]) -> Result<Vec<Option<StageState>>, LowerError> {
        let mut states: Vec<Option<StageState>> = vec![None; self.plans.len()];
        for i in 0..self.plans.len() {
            if !reachable[i] {
                continue;
            }
            let st = self.dispatch_stage(i, &states)?;
            states[i] = Some(st);
        }
        Ok(states)
    }

    fn dispatch_stage(
        &mut self,
        i: usize,
        states: &[Option<StageState>],
    ) -> Result<StageState, LowerError> {
        let plan = &self.plans[i];
        let opts = self.ctx.opts;
        let line = Some(plan.span.start.line);
        let mut st = match &plan.base {
            Base::Stage(b) => {
                // Everything, the platform included, comes from the base stage: BuildKit ignores
                // `FROM --platform` on a stage reference.
                let mut s = states[*b]
                    .clone()
                    .expect("a base stage is reachable and earlier");
                s.image.onbuild.clear();
                s.cmd_set = false;
                s
            }
            Base::Scratch | Base::Image(_) => {
                let platform = plan
                    .platform
                    .clone()
                    .unwrap_or(opts.target_platform.clone());
                let mut image = plan.base_config.clone().unwrap_or_default();
                image.os = platform.os.clone();
                image.architecture = platform.architecture.clone();
                image.variant = platform.variant.clone();
                // Triggers of the base image were planned as commands; they do not carry over.
                image.onbuild.clear();
                let root = match &plan.base {
                    Base::Image(r) => Some(self.image_source(r, &platform, line)),
                    _ => None,
                };
                if !image.env.iter().any(|e| e.starts_with("PATH=")) {
                    image.env.push(format!("PATH={DEFAULT_PATH}"));
                }
                // BuildKit's empty image (dockerfile2llb's emptyImage) says WorkingDir "/"; an
                // image's own config is kept as it is, an empty WorkingDir included.
                if matches!(plan.base, Base::Scratch) && image.working_dir.is_empty() {
                    image.working_dir = "/".into();
                }
                let mut env = EnvList::default();
                for e in &image.env {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    env.set(k, v);
                }
                StageState {
                    root,
                    workdir: if image.working_dir.is_empty() {
                        "/".into()
                    } else {
                        image.working_dir.clone()
                    },
                    user: image.user.clone(),
                    image,
                    env,
                    platform,
                    build_args: Vec::new(),
                    declared_args: BTreeSet::new(),
                    cmd_set: false,
                }
            }
        };
        for pc in &plan.commands {
            self.dispatch(i, &mut st, pc, states)?;
        }
        Ok(st)
    }

    fn expand(&self, st: &StageState, word: &str, span: Span) -> Result<String, LowerError> {
        words::expand_word(self.ctx.escape, word, &st.env.0)
            .map_err(|e| err(LowerErrorKind::Expansion(e), span))
    }

    fn history(st: &mut StageState, created_by: String, layer: bool) {
        st.image.history.push(History {
            created: None,
            created_by,
            comment: HISTORY_COMMENT.into(),
            empty_layer: !layer,
        });
    }

    /// Adds a vertex that is one of stage `i`'s own steps (not an `[internal]` helper).
    fn add_step(&mut self, i: usize, op: Op, description: String, line: Option<usize>) -> NodeRef {
        let stage = self.plans[i].name.clone();
        self.g.add_in_stage(stage, op, description, line)
    }

    fn describe(&self, i: usize, c: &Command) -> String {
        let text = c.original.trim();
        let text = if text.is_empty() {
            c.instruction.name()
        } else {
            text
        };
        format!("[{}] {}", self.plans[i].name, text)
    }

    fn dispatch(
        &mut self,
        i: usize,
        st: &mut StageState,
        pc: &PlannedCommand,
        states: &[Option<StageState>],
    ) -> Result<(), LowerError> {
        let c = &pc.command;
        let span = c.span;
        let aspan = point(c.args_pos);
        match &c.instruction {
            Instruction::From(_) => {}
            Instruction::Env(kvs) => {
                let mut msg = String::from("ENV");
                let expanded: Vec<(String, String)> = kvs
                    .iter()
                    .map(|kv| {
                        Ok((
                            self.expand(st, &kv.key, aspan)?,
                            self.expand(st, &kv.value, aspan)?,
                        ))
                    })
                    .collect::<Result<_, LowerError>>()?;
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    // The image's names are among the stage's (which has its ARGs too): a name
                    // new to the stage is new to the image, and is added without a search.
                    let known = st.env.contains(&k);
                    st.env.set(&k, &v);
                    // `k=...` (or a bare `k`), tested without searching each entry for its `=`.
                    let names = |e: &String| {
                        e.strip_prefix(k.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
                    };
                    let slot = if known {
                        st.image.env.iter_mut().find(|e| names(e))
                    } else {
                        None
                    };
                    match slot {
                        Some(e) => *e = format!("{k}={v}"),
                        None => st.image.env.push(format!("{k}={v}")),
                    }
                }
                Self::history(st, msg, false);
            }
            Instruction::Label(kvs) => {
                let mut msg = String::from("LABEL");
                let expanded: Vec<(String, String)> = kvs
                    .iter()
                    .map(|kv| {
                        Ok((
                            self.expand(st, &kv.key, aspan)?,
                            self.expand(st, &kv.value, aspan)?,
                        ))
                    })
                    .collect::<Result<_, LowerError>>()?;
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    st.image.labels.insert(k, v);
                }
                Self::history(st, msg, false);
            }
            Instruction::Maintainer(m) => {
                st.image.author = m.clone();
                Self::history(st, format!("MAINTAINER {m}"), false);
            }
            Instruction::Arg(args) => self.dispatch_arg(st, args, aspan)?,
            Instruction::Workdir(p) => {
                let p = self.expand(st, p, aspan)?;
                let wd = if p.starts_with('/') {
                    clean_path(&p)
                } else {
                    clean_path(&format!("{}/{}", st.workdir, p))
                };
                st.workdir = wd.clone();
                st.image.working_dir = wd.clone();
                let layer = wd != "/";
                if layer {
                    let op = Op::File(FileOp {
                        base: st.root,
                        platform: st.platform.clone(),
                        actions: vec![FileAction::Mkdir {
                            path: wd.clone(),
                            mode: 0o755,
                            make_parents: true,
                            owner: (!st.user.is_empty()).then(|| st.user.clone()),
                        }],
                    });
                    st.root =
                        Some(self.add_step(i, op, self.describe(i, c), Some(span.start.line)));
                }
                Self::history(st, format!("WORKDIR {wd}"), layer);
            }
            Instruction::User(u) => {
                let u = self.expand(st, u, aspan)?;
                st.user = u.clone();
                st.image.user = u.clone();
                Self::history(st, format!("USER {u}"), false);
            }
            Instruction::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.expand(st, v, aspan)?;
                    if v.is_empty() {
                        return Err(err(
                            LowerErrorKind::Instruction(ErrorKind::EmptyVolume),
                            aspan,
                        ));
                    }
                    st.image.volumes.insert(v.clone());
                    out.push(v);
                }
                Self::history(st, format!("VOLUME [{}]", out.join(" ")), false);
            }
            Instruction::StopSignal(s) => {
                let s = self.expand(st, s, aspan)?;
                if !instructions::valid_signal(&s) {
                    return Err(err(LowerErrorKind::Signal(s), aspan));
                }
                st.image.stop_signal = s.clone();
                Self::history(st, format!("STOPSIGNAL {s}"), false);
            }
            Instruction::Expose(ports) => {
                let mut all = Vec::new();
                for p in ports {
                    let words = words::expand_words(self.ctx.escape, p, &st.env.0)
                        .map_err(|e| err(LowerErrorKind::Expansion(e), aspan))?;
                    for w in words {
                        let specs = instructions::parse_port(&w)
                            .map_err(|e| err(LowerErrorKind::Port(e), aspan))?;
                        all.extend(specs);
                    }
                }
                st.image.exposed_ports.extend(all.iter().cloned());
                Self::history(st, format!("EXPOSE [{}]", all.join(" ")), false);
            }
            Instruction::Shell(s) => {
                st.image.shell = s.clone();
                Self::history(st, format!("SHELL [{}]", s.join(" ")), false);
            }
            Instruction::Onbuild(o) => st.image.onbuild.push(o.expression.clone()),
            Instruction::Healthcheck(h) => {
                st.image.healthcheck = Some(h.clone());
                Self::history(st, healthcheck_history(h), false);
            }
            Instruction::Cmd(cl) => {
                let args = self.with_shell(st, cl);
                st.image.cmd = Some(args.clone());
                st.image.args_escaped = true;
                st.cmd_set = true;
                Self::history(st, format!("CMD {}", go_quoted_list(&args)), false);
            }
            Instruction::Entrypoint(cl) => {
                // As BuildKit: an empty shell form still runs the shell (with an empty command).
                let args = self.with_shell(st, cl);
                st.image.entrypoint = Some(args.clone());
                if !st.cmd_set {
                    st.image.cmd = None;
                }
                Self::history(st, format!("ENTRYPOINT {}", go_quoted_list(&args)), false);
            }
            Instruction::Run(r) => self.dispatch_run(i, st, pc, r, states)?,
            Instruction::Copy(cp) => {
                let source = match pc.sources.first().cloned().flatten() {
                    None => None,
                    Some(Dep::Stage(j)) => {
                        let Some(src) = states[j].as_ref().filter(|_| j < i) else {
                            return Err(err(
                                LowerErrorKind::CopyFromLaterStage {
                                    from: cp.from.clone().unwrap_or_default(),
                                    stage: self.plans[i].name.clone(),
                                },
                                span,
                            ));
                        };
                        Some(src.root)
                    }
                    Some(Dep::Image(r)) => {
                        let platform = st.platform.clone();
                        Some(Some(self.image_source(
                            &r,
                            &platform,
                            Some(span.start.line),
                        )))
                    }
                    Some(Dep::Local(name)) => Some(Some(self.named_context(&name))),
                };
                let paths = self.expand_paths(st, &cp.paths, aspan)?;
                let chown = self.expand(st, &cp.chown, aspan)?;
                let chmod = self.expand(st, &cp.chmod, aspan)?;
                let cfg = CopyConfig {
                    add: false,
                    paths: &paths,
                    source,
                    chown,
                    chmod,
                    link: cp.link,
                    parents: cp.parents,
                    exclude: &cp.exclude,
                    keep_git_dir: None,
                    checksum: String::new(),
                    unpack: None,
                };
                self.dispatch_copy(i, st, c, cfg)?;
                if pc.sources.first().cloned().flatten().is_none() {
                    for s in &paths.sources {
                        self.ctx_paths.insert(join_root(s));
                    }
                }
            }
            Instruction::Add(a) => {
                let paths = self.expand_paths(st, &a.paths, aspan)?;
                let cfg = CopyConfig {
                    add: true,
                    paths: &paths,
                    source: None,
                    chown: self.expand(st, &a.chown, aspan)?,
                    chmod: self.expand(st, &a.chmod, aspan)?,
                    link: a.link,
                    parents: false,
                    exclude: &a.exclude,
                    keep_git_dir: a.keep_git_dir,
                    checksum: self.expand(st, &a.checksum, aspan)?,
                    unpack: a.unpack,
                };
                self.dispatch_copy(i, st, c, cfg)?;
                for s in &paths.sources {
                    if !is_http(s) && git_source(s).is_none() {
                        self.ctx_paths.insert(join_root(s));
                    }
                }
            }
        }
        Ok(())
    }

    fn with_shell(&self, st: &StageState, cl: &CommandLine) -> Vec<String> {
        if !cl.prepend_shell {
            return cl.args.clone();
        }
        let mut shell = if st.image.shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            st.image.shell.clone()
        };
        shell.push(cl.args.join(" "));
        shell
    }

    fn dispatch_arg(
        &mut self,
        st: &mut StageState,
        args: &[ArgDecl],
        span: Span,
    ) -> Result<(), LowerError> {
        let opts = self.ctx.opts;
        let mut parts = Vec::new();
        for a in args {
            st.declared_args.insert(a.key.clone());
            let value = if let Some(v) = opts.build_args.get(&a.key) {
                Some(v.clone())
            } else if let Some(d) = &a.default {
                Some(self.expand(st, d, span)?)
            } else {
                self.ctx.global.get(&a.key).map(String::from)
            };
            if let Some(v) = &value {
                st.env.set(&a.key, v);
            }
            st.build_args.push((a.key.clone(), value.clone()));
            parts.push(match &value {
                Some(v) => format!("{}={v}", a.key),
                None => a.key.clone(),
            });
        }
        Self::history(st, format!("ARG {}", parts.join(" ")), false);
        Ok(())
    }

    fn expand_paths(
        &self,
        st: &StageState,
        p: &SourcesAndDest,
        span: Span,
    ) -> Result<SourcesAndDest, LowerError> {
        let mut out = p.clone();
        for s in &mut out.sources {
            *s = self.expand(st, s, span)?;
        }
        out.dest = self.expand(st, &p.dest, span)?;
        for c in &mut out.contents {
            if c.expand {
                // BuildKit expands heredoc bodies with a `\` escape and quotes kept as written.
                c.data = words::expand_raw(&c.data, &st.env.0)
                    .map_err(|e| err(LowerErrorKind::Expansion(e), span))?;
            }
        }
        Ok(out)
    }

    fn dispatch_run(
        &mut self,
        i: usize,
        st: &mut StageState,
        pc: &PlannedCommand,
        r: &instructions::Run,
        states: &[Option<StageState>],
    ) -> Result<(), LowerError> {
        let c = &pc.command;
        let line = Some(c.span.start.line);
        let mut mounts = vec![Mount {
            target: "/".into(),
            kind: MountKind::Bind {
                input: st.root,
                source_path: "/".into(),
                readonly: false,
                output: true,
            },
        }];
        // Heredocs: a lone `<<EOF` runs its body (as a script when it has a shebang); anything else
        // hands the reconstituted text to the shell.
        let mut args = r.command.args.clone();
        if args.iter().any(|a| a.contains('\0')) {
            return Err(err(LowerErrorKind::NulInRun, c.span));
        }
        if !r.command.files.is_empty() && (args.len() != 1 || !r.command.prepend_shell) {
            return Err(err(LowerErrorKind::InvalidRun(format!("{args:?}")), c.span));
        }
        if !r.command.files.is_empty() {
            // BuildKit's simple case: one heredoc and nothing else on the line. `RUN <<EOT sh -c
            // '...'` is a command whose standard input is the body, run by the shell as written.
            let lone = args.len() == 1
                && r.command.files.len() == 1
                && r.command.prepend_shell
                && instructions::heredoc_marker(&args[0]).is_some();
            if lone {
                let file = &r.command.files[0];
                if file.data.starts_with("#!") {
                    let script = self.g.add(
                        Op::File(FileOp {
                            base: None,
                            platform: st.platform.clone(),
                            actions: vec![FileAction::Mkfile {
                                path: format!("/{}", file.name),
                                mode: 0o755,
                                data: file.data.clone(),
                                owner: None,
                            }],
                        }),
                        "[internal] preparing inline document",
                        line,
                    );
                    mounts.push(Mount {
                        target: "/dev/pipes/".into(),
                        kind: MountKind::Bind {
                            input: Some(script),
                            source_path: "/".into(),
                            readonly: true,
                            output: false,
                        },
                    });
                    args = vec![format!("/dev/pipes/{}", file.name)];
                } else {
                    args = vec![file.data.clone()];
                }
            } else if r.command.prepend_shell && args.len() == 1 {
                let mut text = args[0].clone();
                for f in &r.command.files {
                    text.push('\n');
                    text.push_str(&f.data);
                    text.push_str(&f.name);
                }
                args = vec![text];
            }
        }
        let args = self.with_shell(
            st,
            &CommandLine {
                args,
                prepend_shell: r.command.prepend_shell,
                files: Vec::new(),
            },
        );

        for (m, source) in r.mounts.iter().zip(&pc.sources) {
            let env = &st.env.0;
            let escape = self.ctx.escape;
            let spec =
                instructions::parse_mount(&m.text, &mut |w| words::expand_word(escape, w, env))
                    .map_err(|(msg, hint)| LowerError {
                        kind: Box::new(LowerErrorKind::Mount(msg)),
                        span: Some(m.span),
                        hint,
                    })?;
            let input = match source {
                None => None,
                Some(Dep::Stage(j)) => match states[*j].as_ref().filter(|_| *j < i) {
                    Some(s) => s.root,
                    None => {
                        return Err(err(
                            LowerErrorKind::MountFromLaterStage {
                                from: spec.from.clone(),
                                target: spec.target.clone(),
                            },
                            m.span,
                        ));
                    }
                },
                Some(Dep::Image(reference)) => {
                    let platform = st.platform.clone();
                    Some(self.image_source(reference, &platform, line))
                }
                Some(Dep::Local(name)) => Some(self.named_context(name)),
            };
            mounts.push(self.mount(st, &spec, source.is_some(), input, m.span, line)?);
        }

        let exec = ExecOp {
            args: args.clone(),
            env: st.env.to_strings(),
            cwd: st.workdir.clone(),
            user: st.user.clone(),
            network: r.network,
            security: r.security,
            platform: st.platform.clone(),
            mounts,
            test: None,
            extra_hosts: self.ctx.opts.extra_hosts.clone(),
            ulimits: self.ctx.opts.ulimits.clone(),
            shm_size: self.ctx.opts.shm_size,
        };
        st.root = Some(self.add_step(i, Op::Exec(exec), self.describe(i, c), line));

        // History shows the build args in force, as `|N K=V ... cmd` (each name once, first place).
        let mut order: Vec<&str> = Vec::new();
        let mut values: HashMap<&str, &str> = HashMap::new();
        for (k, v) in &st.build_args {
            let v = st.env.get(k).or(v.as_deref()).unwrap_or_default();
            if values.insert(k, v).is_none() {
                order.push(k);
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if !order.is_empty() {
            parts.push(format!("|{}", order.len()));
            parts.extend(order.iter().map(|k| format!("{k}={}", values[k])));
        }
        parts.extend(args);
        Self::history(st, format!("RUN {} # buildkit", parts.join(" ")), true);
        Ok(())
    }

    fn mount(
        &mut self,
        st: &StageState,
        m: &MountSpec,
        has_from: bool,
        from_input: Option<NodeRef>,
        span: Span,
        line: Option<usize>,
    ) -> Result<Mount, LowerError> {
        let target_of = |t: &str| {
            if t.starts_with('/') {
                clean_path(t)
            } else {
                clean_path(&format!("/{}/{}", st.workdir, t))
            }
        };
        let kind = match m.kind {
            MountType::Secret => {
                let mut id = if m.source.is_empty() {
                    m.id.clone()
                } else {
                    m.source.clone()
                };
                if id.is_empty() {
                    id = basename(&m.target);
                }
                let target = if m.env.is_none() && m.target.is_empty() {
                    format!("/run/secrets/{}", basename(&id))
                } else {
                    m.target.clone()
                };
                return Ok(Mount {
                    target,
                    kind: MountKind::Secret {
                        id,
                        env: m.env.clone(),
                        required: m.required,
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                        mode: m.mode.unwrap_or(0o400),
                    },
                });
            }
            MountType::Ssh => {
                if !m.source.is_empty() {
                    return Err(err(
                        LowerErrorKind::Mount("ssh does not support source".into()),
                        span,
                    ));
                }
                let id = if m.id.is_empty() {
                    "default".to_string()
                } else {
                    m.id.clone()
                };
                let target = if m.target.is_empty() {
                    // BuildKit's default agent socket path.
                    "/run/buildkit/ssh_agent.0".to_string()
                } else {
                    m.target.clone()
                };
                return Ok(Mount {
                    target,
                    kind: MountKind::Ssh {
                        id,
                        required: m.required,
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                        mode: m.mode.unwrap_or(0o600),
                    },
                });
            }
            MountType::Tmpfs => MountKind::Tmpfs {
                size_bytes: m.size_bytes,
                readonly: m.readonly,
            },
            MountType::Bind | MountType::Cache => {
                let mut input = if has_from { from_input } else { None };
                if !has_from && m.kind == MountType::Bind {
                    input = Some(self.context());
                    self.ctx_paths.insert(join_root(&m.source));
                }
                let mut source_path = join_root(&m.source);
                if source_path == "/" && (m.uid.is_some() || m.gid.is_some() || m.mode.is_some()) {
                    // The cache starts as a directory with the requested owner and mode.
                    let owner = format!("{}:{}", m.uid.unwrap_or(0), m.gid.unwrap_or(0));
                    input = Some(self.g.add(
                        Op::File(FileOp {
                            base: input,
                            platform: st.platform.clone(),
                            actions: vec![FileAction::Mkdir {
                                path: "/cache".into(),
                                mode: m.mode.unwrap_or(0o755),
                                make_parents: false,
                                owner: Some(owner),
                            }],
                        }),
                        "[internal] setting cache mount permissions",
                        line,
                    ));
                    source_path = "/cache".into();
                }
                if m.kind == MountType::Cache {
                    let id = if m.id.is_empty() {
                        clean_path(&m.target)
                    } else {
                        m.id.clone()
                    };
                    MountKind::Cache {
                        id,
                        sharing: m.sharing.unwrap_or(CacheSharing::Shared),
                        input,
                        source_path,
                        readonly: m.readonly,
                    }
                } else {
                    MountKind::Bind {
                        input,
                        source_path,
                        readonly: m.readonly,
                        output: false,
                    }
                }
            }
        };
        let target = target_of(&m.target);
        if target == "/" {
            return Err(err(LowerErrorKind::MountTarget(target), span));
        }
        Ok(Mount { target, kind })
    }

    fn dispatch_copy(
        &mut self,
        i: usize,
        st: &mut StageState,
        c: &Command,
        cfg: CopyConfig<'_>,
    ) -> Result<(), LowerError> {
        let span = c.span;
        let line = Some(span.start.line);
        let dest = dest_path(&st.workdir, &cfg.paths.dest);
        let mode = if cfg.chmod.is_empty() {
            None
        } else {
            Some(
                instructions::parse_chmod(&cfg.chmod)
                    .map_err(|e| err(LowerErrorKind::Chmod(e), span))?,
            )
        };
        if !cfg.checksum.is_empty() {
            let msg = if !cfg.add {
                Some("checksum can't be specified for COPY")
            } else if cfg.paths.sources.len() != 1 {
                Some("checksum can't be specified for multiple sources")
            } else if !is_http(&cfg.paths.sources[0]) && git_source(&cfg.paths.sources[0]).is_none()
            {
                Some("checksum requires HTTP(S) or Git sources")
            } else {
                None
            };
            if let Some(m) = msg {
                return Err(err(LowerErrorKind::Checksum(m.into()), span));
            }
        }
        let owner = (!cfg.chown.is_empty()).then(|| cfg.chown.clone());
        let base_options = CopyOptions {
            owner: owner.clone(),
            mode: mode.clone(),
            exclude_patterns: cfg.exclude.to_vec(),
            create_dest_path: true,
            ..CopyOptions::default()
        };
        let mut msg = String::from(if cfg.add { "ADD" } else { "COPY" });
        if cfg.parents {
            msg.push_str(" --parents");
        }
        if !cfg.chown.is_empty() {
            msg.push_str(&format!(" --chown={}", cfg.chown));
        }
        if !cfg.chmod.is_empty() {
            msg.push_str(&format!(" --chmod={}", cfg.chmod));
        }
        let mut actions = Vec::new();
        for src in &cfg.paths.sources {
            msg.push_str(&format!(" {src}"));
            let git = if cfg.source.is_none() {
                git_source(src)
            } else {
                None
            };
            if let Some((remote, reference, subdir)) = git {
                if !cfg.add {
                    return Err(err(
                        LowerErrorKind::Source("source can't be a git ref for COPY".into()),
                        span,
                    ));
                }
                let g = self.g.add(
                    Op::Source(SourceOp::Git {
                        remote,
                        reference,
                        subdir,
                        keep_git_dir: cfg.keep_git_dir.unwrap_or(false),
                        checksum: (!cfg.checksum.is_empty()).then(|| cfg.checksum.clone()),
                    }),
                    format!("[internal] load git source {src}"),
                    line,
                );
                actions.push(FileAction::Copy {
                    from: Some(g),
                    src: "/".into(),
                    dest: dest.clone(),
                    options: base_options.clone(),
                });
            } else if cfg.source.is_none() && is_http(src) {
                if !cfg.add {
                    return Err(err(
                        LowerErrorKind::Source("source can't be a URL for COPY".into()),
                        span,
                    ));
                }
                let path = src.split(['?', '#']).next().unwrap_or(src);
                let path = path.splitn(4, '/').nth(3).unwrap_or("");
                let base = basename(path);
                let filename = if base.is_empty() || base == "." || base == "/" {
                    "__unnamed__".to_string()
                } else {
                    base
                };
                let h = self.g.add(
                    Op::Source(SourceOp::Http {
                        url: src.clone(),
                        filename: filename.clone(),
                        checksum: (!cfg.checksum.is_empty()).then(|| cfg.checksum.clone()),
                    }),
                    format!("[internal] load remote file {src}"),
                    line,
                );
                actions.push(FileAction::Copy {
                    from: Some(h),
                    src: filename,
                    dest: dest.clone(),
                    options: CopyOptions {
                        attempt_unpack: cfg.unpack.unwrap_or(false),
                        ..base_options.clone()
                    },
                });
            } else {
                let mut src_path = src.clone();
                let mut include = Vec::new();
                let mut required = Vec::new();
                if cfg.parents {
                    let (parent, pattern) = match src.split_once("/./") {
                        Some((p, pat)) => (p.to_string(), pat.to_string()),
                        None => ("/".to_string(), src.clone()),
                    };
                    let pattern = join_root(&pattern);
                    let wildcard = |s: &str| s.contains(['*', '?', '[']);
                    if !wildcard(&parent) && !wildcard(&pattern) {
                        required.push(join_root(&format!("{parent}/{pattern}")));
                    }
                    include.push(pattern.trim_start_matches('/').to_string());
                    src_path = parent;
                }
                let from = match cfg.source {
                    Some(root) => root,
                    None => Some(self.context()),
                };
                actions.push(FileAction::Copy {
                    from,
                    src: join_root(&src_path),
                    dest: dest.clone(),
                    options: CopyOptions {
                        follow_symlinks: true,
                        copy_dir_contents_only: true,
                        include_patterns: include,
                        required_paths: required,
                        attempt_unpack: cfg.unpack.unwrap_or(cfg.add),
                        allow_wildcard: true,
                        allow_empty_wildcard: true,
                        ..base_options.clone()
                    },
                });
            }
        }
        for content in &cfg.paths.contents {
            msg.push_str(&format!(" <<{}", content.path));
            let doc = self.g.add(
                Op::File(FileOp {
                    base: None,
                    platform: st.platform.clone(),
                    actions: vec![FileAction::Mkfile {
                        path: join_root(&content.path),
                        mode: 0o644,
                        data: content.data.clone(),
                        owner: None,
                    }],
                }),
                "[internal] preparing inline document",
                line,
            );
            actions.push(FileAction::Copy {
                from: Some(doc),
                src: join_root(&content.path),
                dest: dest.clone(),
                options: base_options.clone(),
            });
        }
        msg.push_str(&format!(" {} # buildkit", cfg.paths.dest));
        let description = self.describe(i, c);
        if cfg.link && cfg.chmod.is_empty() {
            // --link: the copy is built on scratch and layered on top, so it does not depend on
            // (and is cached independently of) the previous layers.
            let layer = self.add_step(
                i,
                Op::File(FileOp {
                    base: None,
                    platform: st.platform.clone(),
                    actions,
                }),
                description.clone(),
                line,
            );
            st.root = Some(self.add_step(
                i,
                Op::Merge(MergeOp {
                    inputs: vec![st.root, Some(layer)],
                }),
                format!("{description} (link)"),
                line,
            ));
        } else {
            st.root = Some(self.add_step(
                i,
                Op::File(FileOp {
                    base: st.root,
                    platform: st.platform.clone(),
                    actions,
                }),
                description,
                line,
            ));
        }
        Self::history(st, msg, true);
        Ok(())
    }
}

struct CopyConfig<'p> {
    add: bool,
    paths: &'p SourcesAndDest,
    /// `Some(root)` when copying from a stage or image (`Some(None)`: a scratch stage).
    source: Option<Option<NodeRef>>,
    chown: String,
    chmod: String,
    link: bool,
    parents: bool,
    exclude: &'p [String],
    keep_git_dir: Option<bool>,
    checksum: String,
    unpack: Option<bool>,
}

fn basename(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return if p.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

#[cfg(test)]
mod syntax_tests {
    use super::builtin_frontend;

    #[test]
    fn the_dockerfile_frontend_is_built_in_and_others_are_not() {
        for v in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7-labs",
            "docker.io/docker/dockerfile:labs",
            "docker/dockerfile@sha256:ac85f380a63b13dfcefa89046420e1781752bab202122f8f50032edf31be0021",
            "docker/dockerfile",
            "docker/dockerfile-upstream:master",
        ] {
            assert!(builtin_frontend(v), "{v}");
        }
        for v in [
            "tonistiigi/dockerfile:runmount",
            "example.com/my/frontend:2",
            "",
        ] {
            assert!(!builtin_frontend(v), "{v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(dest_path("/app", "."), "/app/");
        assert_eq!(dest_path("/app", "sub/"), "/app/sub/");
        assert_eq!(dest_path("/app", "/etc/x"), "/etc/x");
        assert_eq!(dest_path("/", "x"), "/x");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn git_sources_are_recognised() {
        assert_eq!(
            git_source("https://github.com/a/b.git#v1:docs"),
            Some((
                "https://github.com/a/b.git".into(),
                "v1".into(),
                "docs".into()
            ))
        );
        assert!(git_source("git@github.com:a/b").is_some());
        assert!(git_source("https://example.com/file.tar.gz").is_none());
        assert!(git_source("src/").is_none());
    }
}
