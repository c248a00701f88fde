//! Typed Dockerfile instructions: each [`ast::Node`] checked against its instruction's rules (argument
//! counts, flags and their values, heredoc sources) as BuildKit's `instructions` package does, and
//! grouped into stages. Variables are not expanded here: that needs the stage's scope, at lowering.

use crate::frontend::suggest::{suggest, suggest_instruction};
use std::collections::BTreeMap;
use std::fmt;

use super::ast::{self, Args, Node, Pos, Span};
use crate::graph::{Chmod, Healthcheck, NetworkMode, SecurityMode};

/// An instruction error, located at the node, flag or argument it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct InstructionError {
    pub kind: Box<ErrorKind>,
    pub span: Span,
    /// A suggestion for the user ("did you mean ...").
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unknown instruction: {0}")]
    UnknownInstruction(String),
    #[error("unknown flag: --{flag} for {instruction}")]
    UnknownFlag { instruction: String, flag: String },
    #[error("duplicate flag specified: --{0}")]
    DuplicateFlag(String),
    #[error("missing a value on flag: --{0}")]
    MissingFlagValue(String),
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    NotABool { flag: String, value: String },
    #[error("arg should start with -- : {0}")]
    FlagWithoutDashes(String),
    #[error("invalid value {value:?} for flag --{flag}: {reason}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(&'static str),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(&'static str),
    #[error(
        "{0} requires at least two arguments, but only one was provided: destination could not be determined"
    )]
    NoDestination(&'static str),
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    InvalidStageName(String),
    #[error("{0} names can not be blank")]
    BlankName(&'static str),
    #[error("bad input to {0}, too many arguments")]
    TooManyArguments(&'static str),
    #[error("{0} cannot accept a heredoc as a destination")]
    HeredocDestination(&'static str),
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    #[error("missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    #[error("unknown type {0:?} in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    #[error("interval --{0} cannot be less than 1ms")]
    IntervalTooShort(String),
    #[error("--retries cannot be negative ({0})")]
    NegativeRetries(i64),
    #[error("{0} requires the arguments to be in JSON form")]
    NotJson(&'static str),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("no build stage in current context: {0} before the first FROM")]
    NoStage(String),
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    MountFromVariable,
    #[error("invalid --mount: {0}")]
    Mount(String),
}

impl InstructionError {
    fn new(kind: ErrorKind, span: Span) -> Self {
        InstructionError {
            kind: Box::new(kind),
            span,
            hint: None,
        }
    }

    fn hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// A point span at `pos`.
pub fn point(pos: Pos) -> Span {
    Span {
        start: pos,
        end: pos,
    }
}

/// A name/value pair of ENV or LABEL; `no_delim` marks the legacy `ENV key value` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub no_delim: bool,
}

/// One `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub key: String,
    pub default: Option<String>,
}

/// A heredoc body attached to RUN/CMD/ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
}

/// The command of RUN, CMD or ENTRYPOINT: exec form (`prepend_shell == false`) or shell form, whose
/// single string is run by the image's SHELL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub args: Vec<String>,
    pub prepend_shell: bool,
    pub files: Vec<InlineFile>,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    pub path: String,
    pub data: String,
    /// Whether variables in `data` are expanded (the delimiter was not quoted).
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    pub dest: String,
    pub sources: Vec<String>,
    pub contents: Vec<SourceContent>,
}

/// A `--mount=...` value of RUN, kept as written: its values are expanded in the stage's scope
/// before [`parse_mount`] types it (BuildKit does the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMount {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: CommandLine,
    pub mounts: Vec<RawMount>,
    pub network: NetworkMode,
    pub security: SecurityMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub paths: SourcesAndDest,
    pub from: Option<String>,
    pub chown: String,
    pub chmod: String,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub paths: SourcesAndDest,
    pub chown: String,
    pub chmod: String,
    pub link: bool,
    pub keep_git_dir: Option<bool>,
    pub checksum: String,
    pub unpack: Option<bool>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The image or stage name as written (expanded with the global ARGs at lowering).
    pub base: String,
    /// Lowercased stage name.
    pub name: Option<String>,
    pub platform: Option<String>,
}

/// `ONBUILD <trigger>`: recorded in the image config, run by stages built on this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onbuild {
    /// The trigger's source text, as stored in the image config.
    pub expression: String,
    /// The trigger, typed.
    pub trigger: Box<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Copy(Copy),
    Add(Add),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<ArgDecl>),
    Onbuild(Onbuild),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
    Maintainer(String),
}

impl Instruction {
    pub fn name(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
            Instruction::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// A typed instruction with where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub instruction: Instruction,
    pub span: Span,
    /// Where its arguments start (for errors found while expanding them).
    pub args_pos: Pos,
    /// The source line as written (continuations joined), for descriptions.
    pub original: String,
}

/// A build stage: its FROM and the commands after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub from: From,
    pub span: Span,
    pub args_pos: Pos,
    pub original: String,
    pub commands: Vec<Command>,
}

/// A typed Dockerfile: the ARGs before the first FROM, and the stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedDockerfile {
    pub escape: char,
    pub meta_args: Vec<(Vec<ArgDecl>, Span)>,
    pub stages: Vec<Stage>,
}

/// Types every instruction and groups them into stages (BuildKit's `instructions.Parse`).
pub fn parse_dockerfile(df: &ast::Dockerfile) -> Result<TypedDockerfile, InstructionError> {
    let mut out = TypedDockerfile {
        escape: df.escape,
        meta_args: Vec::new(),
        stages: Vec::new(),
    };
    for node in &df.children {
        let cmd = parse_node(node)?;
        match cmd.instruction {
            Instruction::From(from) => out.stages.push(Stage {
                from,
                span: cmd.span,
                args_pos: cmd.args_pos,
                original: cmd.original,
                commands: Vec::new(),
            }),
            Instruction::Arg(args) if out.stages.is_empty() => out.meta_args.push((args, cmd.span)),
            other => match out.stages.last_mut() {
                Some(stage) => stage.commands.push(Command {
                    instruction: other,
                    ..cmd
                }),
                None => {
                    return Err(InstructionError::new(
                        ErrorKind::NoStage(other.name().to_string()),
                        node.keyword_span,
                    )
                    .hint(Some(
                        "start the Dockerfile with FROM (only ARG may come before it)".into(),
                    )));
                }
            },
        }
    }
    Ok(out)
}

/// Types one node.
pub fn parse_node(node: &Node) -> Result<Command, InstructionError> {
    let instruction = parse_instruction(node)?;
    Ok(Command {
        instruction,
        span: node.span,
        args_pos: node.args_pos,
        original: node.original.clone(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    Strs,
}

/// Flag values after validation (BuildKit's `BFlags`).
#[derive(Default)]
struct FlagValues {
    strs: BTreeMap<&'static str, Vec<String>>,
    bools: BTreeMap<&'static str, bool>,
    spans: BTreeMap<&'static str, Span>,
}

impl FlagValues {
    fn str(&self, name: &str) -> Option<String> {
        self.strs.get(name).and_then(|v| v.last().cloned())
    }

    fn string(&self, name: &str) -> String {
        self.str(name).unwrap_or_default()
    }

    fn strs(&self, name: &str) -> Vec<String> {
        self.strs.get(name).cloned().unwrap_or_default()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    fn span(&self, name: &str, fallback: Span) -> Span {
        self.spans.get(name).copied().unwrap_or(fallback)
    }
}

fn parse_flags(
    node: &Node,
    instruction: &str,
    defs: &[(&'static str, FlagKind)],
) -> Result<FlagValues, InstructionError> {
    let mut values = FlagValues::default();
    for flag in &node.flags {
        if flag.text == "--" {
            break;
        }
        let Some(body) = flag.text.strip_prefix("--") else {
            return Err(InstructionError::new(
                ErrorKind::FlagWithoutDashes(flag.text.clone()),
                flag.span,
            ));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(&(def_name, kind)) = defs.iter().find(|(n, _)| *n == name) else {
            return Err(InstructionError::new(
                ErrorKind::UnknownFlag {
                    instruction: instruction.to_string(),
                    flag: name.to_string(),
                },
                flag.span,
            )
            .hint(
                suggest(name, defs.iter().map(|(n, _)| *n)).map(|s| format!("did you mean --{s}?")),
            ));
        };
        let seen = values.spans.insert(def_name, flag.span).is_some();
        if seen && kind != FlagKind::Strs {
            return Err(InstructionError::new(
                ErrorKind::DuplicateFlag(name.to_string()),
                flag.span,
            ));
        }
        match kind {
            FlagKind::Bool => {
                let b = match value {
                    Some("") => {
                        return Err(InstructionError::new(
                            ErrorKind::MissingFlagValue(name.to_string()),
                            flag.span,
                        ));
                    }
                    None => true,
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(v) => {
                        return Err(InstructionError::new(
                            ErrorKind::NotABool {
                                flag: name.to_string(),
                                value: v.to_string(),
                            },
                            flag.span,
                        ));
                    }
                };
                values.bools.insert(def_name, b);
            }
            FlagKind::Str | FlagKind::Strs => {
                let Some(v) = value else {
                    return Err(InstructionError::new(
                        ErrorKind::MissingFlagValue(name.to_string()),
                        flag.span,
                    ));
                };
                values.strs.entry(def_name).or_default().push(v.to_string());
            }
        }
    }
    Ok(values)
}

fn args_span(node: &Node) -> Span {
    point(node.args_pos)
}

/// BuildKit's `handleJSONArgs`: exec form as is, shell form joined to one string.
fn cmd_args(args: &Args) -> (Vec<String>, bool) {
    match args {
        Args::Json(v) => (v.clone(), true),
        Args::Values(v) if v.is_empty() => (Vec::new(), false),
        Args::Values(v) => (vec![v.join(" ")], false),
        Args::Empty | Args::Sub(_) => (Vec::new(), false),
    }
}

fn parse_kvps(node: &Node, name: &'static str) -> Result<Vec<KeyValue>, InstructionError> {
    let values = node.args.values();
    if values.is_empty() {
        return Err(InstructionError::new(
            ErrorKind::AtLeastOneArgument(name),
            args_span(node),
        ));
    }
    if !values.len().is_multiple_of(2) {
        return Err(InstructionError::new(
            ErrorKind::TooManyArguments(name),
            args_span(node),
        ));
    }
    let kvs: Vec<KeyValue> = values
        .chunks(2)
        .map(|c| KeyValue {
            key: c[0].clone(),
            value: c[1].clone(),
            no_delim: node.legacy_key_value,
        })
        .collect();
    if kvs.iter().any(|kv| kv.key.is_empty()) {
        return Err(InstructionError::new(
            ErrorKind::BlankName(name),
            args_span(node),
        ));
    }
    Ok(kvs)
}

/// A heredoc marker (`<<EOF`, `<<-"EOF"`, `3<<EOF`) used as an argument: its name.
pub fn heredoc_marker(arg: &str) -> Option<String> {
    super::parser::heredoc_word(arg)
}

fn sources_and_dest(node: &Node, name: &'static str) -> Result<SourcesAndDest, InstructionError> {
    let args = node.args.values();
    let (dest, srcs) = args.split_last().expect("checked: at least two arguments");
    if heredoc_marker(dest).is_some() {
        return Err(InstructionError::new(
            ErrorKind::HeredocDestination(name),
            args_span(node),
        ));
    }
    let mut out = SourcesAndDest {
        dest: dest.clone(),
        sources: Vec::new(),
        contents: Vec::new(),
    };
    for src in srcs {
        match heredoc_marker(src) {
            Some(h) => {
                let doc = node.heredocs.iter().find(|d| d.name == h);
                out.contents.push(SourceContent {
                    path: h,
                    data: doc.map(|d| d.content.clone()).unwrap_or_default(),
                    expand: doc.is_none_or(|d| d.expand),
                });
            }
            None => out.sources.push(src.clone()),
        }
    }
    Ok(out)
}

fn require_two(node: &Node, name: &'static str) -> Result<(), InstructionError> {
    if node.args.values().len() < 2 {
        return Err(InstructionError::new(
            ErrorKind::NoDestination(name),
            args_span(node),
        ));
    }
    Ok(())
}

fn exactly_one(node: &Node, name: &'static str) -> Result<String, InstructionError> {
    match node.args.values() {
        [one] => Ok(one.clone()),
        _ => Err(InstructionError::new(
            ErrorKind::ExactlyOneArgument(name),
            args_span(node),
        )),
    }
}

fn at_least_one(node: &Node, name: &'static str) -> Result<Vec<String>, InstructionError> {
    let v = node.args.values();
    if v.is_empty() {
        return Err(InstructionError::new(
            ErrorKind::AtLeastOneArgument(name),
            args_span(node),
        ));
    }
    Ok(v.to_vec())
}

fn no_flags(node: &Node, name: &str) -> Result<(), InstructionError> {
    parse_flags(node, name, &[]).map(|_| ())
}

fn command_line(node: &Node) -> CommandLine {
    let (args, json) = cmd_args(&node.args);
    CommandLine {
        args,
        prepend_shell: !json,
        files: node
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
            })
            .collect(),
    }
}

fn stage_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_instruction(node: &Node) -> Result<Instruction, InstructionError> {
    use FlagKind::*;
    let keyword = node.instruction.to_ascii_uppercase();
    Ok(match keyword.as_str() {
        "ENV" => {
            no_flags(node, "ENV")?;
            Instruction::Env(parse_kvps(node, "ENV")?)
        }
        "LABEL" => {
            no_flags(node, "LABEL")?;
            Instruction::Label(parse_kvps(node, "LABEL")?)
        }
        "MAINTAINER" => {
            let m = exactly_one(node, "MAINTAINER")?;
            no_flags(node, "MAINTAINER")?;
            Instruction::Maintainer(m)
        }
        "ADD" => {
            require_two(node, "ADD")?;
            let f = parse_flags(
                node,
                "ADD",
                &[
                    ("chown", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("keep-git-dir", Bool),
                    ("checksum", Str),
                    ("unpack", Bool),
                    ("exclude", Strs),
                ],
            )?;
            Instruction::Add(Add {
                paths: sources_and_dest(node, "ADD")?,
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                keep_git_dir: f.bool("keep-git-dir"),
                checksum: f.string("checksum"),
                unpack: f.bool("unpack"),
                exclude: f.strs("exclude"),
            })
        }
        "COPY" => {
            require_two(node, "COPY")?;
            let f = parse_flags(
                node,
                "COPY",
                &[
                    ("chown", Str),
                    ("from", Str),
                    ("chmod", Str),
                    ("link", Bool),
                    ("exclude", Strs),
                    ("parents", Bool),
                ],
            )?;
            Instruction::Copy(Copy {
                paths: sources_and_dest(node, "COPY")?,
                from: f.str("from").filter(|s| !s.is_empty()),
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                parents: f.bool("parents").unwrap_or(false),
                exclude: f.strs("exclude"),
            })
        }
        "FROM" => {
            let args = node.args.values();
            let name = match args {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    if !stage_name_ok(&lower) {
                        return Err(InstructionError::new(
                            ErrorKind::InvalidStageName(name.clone()),
                            args_span(node),
                        ));
                    }
                    Some(lower)
                }
                [_] => None,
                _ => {
                    return Err(
                        InstructionError::new(ErrorKind::FromArguments, args_span(node))
                            .hint(Some("write FROM <image> [AS <name>]".into())),
                    );
                }
            };
            let f = parse_flags(node, "FROM", &[("platform", Str)])?;
            Instruction::From(From {
                base: args[0].clone(),
                name,
                platform: f.str("platform").filter(|p| !p.is_empty()),
            })
        }
        "ONBUILD" => {
            let Args::Sub(sub) = &node.args else {
                return Err(InstructionError::new(
                    ErrorKind::AtLeastOneArgument("ONBUILD"),
                    args_span(node),
                ));
            };
            no_flags(node, "ONBUILD")?;
            let trigger = sub.instruction.to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(InstructionError::new(
                        ErrorKind::OnbuildChain,
                        sub.keyword_span,
                    ));
                }
                "MAINTAINER" | "FROM" => {
                    return Err(InstructionError::new(
                        ErrorKind::OnbuildTrigger(trigger),
                        sub.keyword_span,
                    ));
                }
                _ => {}
            }
            // The trigger must be a valid instruction of its own.
            let trigger = parse_node(sub)?;
            let mut expr = strip_onbuild(&node.original).to_string();
            for h in node.heredocs.iter().chain(&sub.heredocs) {
                expr.push('\n');
                expr.push_str(&h.content);
                expr.push_str(&h.name);
            }
            Instruction::Onbuild(Onbuild {
                expression: expr,
                trigger: Box::new(trigger),
            })
        }
        "WORKDIR" => {
            let p = exactly_one(node, "WORKDIR")?;
            no_flags(node, "WORKDIR")?;
            Instruction::Workdir(p)
        }
        "RUN" => {
            let f = parse_flags(
                node,
                "RUN",
                &[("mount", Strs), ("network", Str), ("security", Str)],
            )?;
            let mut mounts = Vec::new();
            let mount_span = f.span("mount", args_span(node));
            for m in f.strs("mount") {
                let span = node
                    .flags
                    .iter()
                    .find(|fl| fl.value() == Some(m.as_str()) && fl.name() == "mount")
                    .map_or(mount_span, |fl| fl.span);
                check_mount_from(&m, span)?;
                mounts.push(RawMount { text: m, span });
            }
            let network = match f.str("network").as_deref() {
                None | Some("default") => NetworkMode::Default,
                Some("none") => NetworkMode::None,
                Some("host") => NetworkMode::Host,
                Some(other) => {
                    return Err(InstructionError::new(
                        ErrorKind::InvalidFlagValue {
                            flag: "network".into(),
                            value: other.into(),
                            reason: "expected default, none or host".into(),
                        },
                        f.span("network", args_span(node)),
                    )
                    .hint(
                        suggest(other, ["default", "none", "host"])
                            .map(|s| format!("did you mean {s}?")),
                    ));
                }
            };
            let security = match f.str("security").as_deref() {
                None | Some("sandbox") => SecurityMode::Sandbox,
                Some("insecure") => SecurityMode::Insecure,
                Some(other) => {
                    return Err(InstructionError::new(
                        ErrorKind::InvalidFlagValue {
                            flag: "security".into(),
                            value: other.into(),
                            reason: "expected sandbox or insecure".into(),
                        },
                        f.span("security", args_span(node)),
                    ));
                }
            };
            Instruction::Run(Run {
                command: command_line(node),
                mounts,
                network,
                security,
            })
        }
        "CMD" => {
            no_flags(node, "CMD")?;
            Instruction::Cmd(command_line(node))
        }
        "ENTRYPOINT" => {
            no_flags(node, "ENTRYPOINT")?;
            Instruction::Entrypoint(command_line(node))
        }
        "HEALTHCHECK" => parse_healthcheck(node)?,
        "EXPOSE" => {
            let mut ports = at_least_one(node, "EXPOSE")?;
            no_flags(node, "EXPOSE")?;
            ports.sort();
            Instruction::Expose(ports)
        }
        "USER" => {
            let u = exactly_one(node, "USER")?;
            no_flags(node, "USER")?;
            Instruction::User(u)
        }
        "VOLUME" => {
            let vols = at_least_one(node, "VOLUME")?;
            no_flags(node, "VOLUME")?;
            let mut out = Vec::new();
            for v in vols {
                let v = v.trim();
                if v.is_empty() {
                    return Err(InstructionError::new(
                        ErrorKind::EmptyVolume,
                        args_span(node),
                    ));
                }
                out.push(v.to_string());
            }
            Instruction::Volume(out)
        }
        // BuildKit does not validate STOPSIGNAL's flags (it never parses them); the signal itself
        // is checked after expansion.
        "STOPSIGNAL" => Instruction::StopSignal(exactly_one(node, "STOPSIGNAL")?),
        "ARG" => {
            let args = at_least_one(node, "ARG")?;
            no_flags(node, "ARG")?;
            let mut out = Vec::new();
            for a in args {
                match a.split_once('=') {
                    Some(("", _)) => {
                        return Err(InstructionError::new(
                            ErrorKind::BlankName("ARG"),
                            args_span(node),
                        ));
                    }
                    Some((k, v)) => out.push(ArgDecl {
                        key: k.to_string(),
                        default: Some(v.to_string()),
                    }),
                    None => out.push(ArgDecl {
                        key: a,
                        default: None,
                    }),
                }
            }
            Instruction::Arg(out)
        }
        "SHELL" => {
            no_flags(node, "SHELL")?;
            let (args, json) = cmd_args(&node.args);
            if args.is_empty() {
                return Err(InstructionError::new(
                    ErrorKind::AtLeastOneArgument("SHELL"),
                    args_span(node),
                ));
            }
            if !json {
                return Err(
                    InstructionError::new(ErrorKind::NotJson("SHELL"), args_span(node))
                        .hint(Some(r#"write it as SHELL ["/bin/sh", "-c"]"#.into())),
                );
            }
            Instruction::Shell(args)
        }
        _ => {
            return Err(InstructionError::new(
                ErrorKind::UnknownInstruction(keyword.clone()),
                node.keyword_span,
            )
            .hint(suggest_instruction(&keyword).map(|s| format!("did you mean {s}?"))));
        }
    })
}

/// The original text with a leading `ONBUILD` keyword (any case) and the spaces after it removed.
fn strip_onbuild(original: &str) -> &str {
    let t = original.trim_start();
    if t.len() >= 7 && t[..7].eq_ignore_ascii_case("onbuild") {
        t[7..].trim_start()
    } else {
        t
    }
}

fn parse_healthcheck(node: &Node) -> Result<Instruction, InstructionError> {
    use FlagKind::Str;
    let (typ, rest, json) = match &node.args {
        Args::Values(v) if !v.is_empty() => (v[0].to_ascii_uppercase(), v[1..].to_vec(), false),
        Args::Json(v) if !v.is_empty() => (v[0].to_ascii_uppercase(), v[1..].to_vec(), true),
        _ => {
            return Err(InstructionError::new(
                ErrorKind::AtLeastOneArgument("HEALTHCHECK"),
                args_span(node),
            ));
        }
    };
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err(InstructionError::new(
                ErrorKind::HealthcheckNoneArguments,
                args_span(node),
            ));
        }
        return Ok(Instruction::Healthcheck(Healthcheck {
            test: vec!["NONE".into()],
            ..Healthcheck::default()
        }));
    }
    let f = parse_flags(
        node,
        "HEALTHCHECK",
        &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
    )?;
    if typ != "CMD" {
        return Err(InstructionError::new(
            ErrorKind::HealthcheckType(typ),
            args_span(node),
        ));
    }
    // Shell form is one string run by the shell (`CMD-SHELL`).
    let cmd = if json || rest.is_empty() {
        rest
    } else {
        vec![rest.join(" ")]
    };
    if cmd.is_empty() {
        return Err(InstructionError::new(
            ErrorKind::HealthcheckMissingCommand,
            args_span(node),
        ));
    }
    let mut test = vec![if json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(cmd);
    let interval = |name: &str| -> Result<u64, InstructionError> {
        let Some(v) = f.str(name).filter(|v| !v.is_empty()) else {
            return Ok(0);
        };
        let span = f.span(name, args_span(node));
        let ns = parse_go_duration(&v).map_err(|reason| {
            InstructionError::new(
                ErrorKind::InvalidFlagValue {
                    flag: name.into(),
                    value: v.clone(),
                    reason,
                },
                span,
            )
        })?;
        if ns != 0 && ns < 1_000_000 {
            return Err(InstructionError::new(
                ErrorKind::IntervalTooShort(name.into()),
                span,
            ));
        }
        Ok(ns.max(0) as u64)
    };
    let mut hc = Healthcheck {
        test,
        interval_ns: interval("interval")?,
        timeout_ns: interval("timeout")?,
        start_period_ns: interval("start-period")?,
        start_interval_ns: interval("start-interval")?,
        retries: 0,
    };
    if let Some(r) = f.str("retries").filter(|r| !r.is_empty()) {
        let span = f.span("retries", args_span(node));
        let n: i64 = r
            .parse()
            .ok()
            .filter(|n| i32::try_from(*n).is_ok())
            .ok_or_else(|| {
                InstructionError::new(
                    ErrorKind::InvalidFlagValue {
                        flag: "retries".into(),
                        value: r.clone(),
                        reason: "not a 32-bit integer".into(),
                    },
                    span,
                )
            })?;
        if n < 0 {
            return Err(InstructionError::new(ErrorKind::NegativeRetries(n), span));
        }
        hc.retries = n as u32;
    }
    Ok(Instruction::Healthcheck(hc))
}

/// Parses a Go `time.ParseDuration` string (`1h2m3.5s`, `300ms`, `-1s`) to nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let err = || format!("invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let num: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += num * scale;
        rest = &rest[unit_end..];
    }
    if total > i64::MAX as f64 {
        return Err(err());
    }
    let ns = total as i64;
    Ok(if neg { -ns } else { ns })
}

/// At parse time BuildKit checks only that `from=` holds no variable (it names a stage or image).
fn check_mount_from(text: &str, span: Span) -> Result<(), InstructionError> {
    let fields = csv_fields(text).map_err(|e| InstructionError::new(ErrorKind::Mount(e), span))?;
    for field in fields {
        if let Some((k, v)) = field.split_once('=')
            && k.eq_ignore_ascii_case("from")
            && let Some(i) = v.find('$')
            && i != v.len() - 1
        {
            return Err(InstructionError::new(ErrorKind::MountFromVariable, span));
        }
    }
    Ok(())
}

/// Splits a CSV record (RFC 4180 quoting) as `--mount` values are written.
pub fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_start => {
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        Some('"') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated quote in {s:?}")),
                    }
                }
                match chars.peek() {
                    None | Some(',') => {}
                    Some(_) => return Err(format!("extraneous character after quote in {s:?}")),
                }
                at_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
            }
            c => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    fields.push(cur);
    Ok(fields)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        })
    }
}

/// A typed `RUN --mount` (BuildKit's `instructions.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountType,
    pub from: String,
    pub source: String,
    pub target: String,
    pub readonly: bool,
    pub size_bytes: u64,
    pub id: String,
    pub sharing: Option<crate::graph::CacheSharing>,
    pub required: bool,
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

const MOUNT_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Types a `--mount` value, expanding each value with `expand` first.
pub fn parse_mount(
    text: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MountSpec, (String, Option<String>)> {
    use crate::graph::CacheSharing;
    let plain = |m: String| (m, None);
    let fields = csv_fields(text).map_err(|e| plain(format!("failed to parse csv mounts: {e}")))?;
    let mut m = MountSpec {
        kind: MountType::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        readonly: false,
        size_bytes: 0,
        id: String::new(),
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    let parse_bool = |key: &str, v: &str| -> Result<bool, (String, Option<String>)> {
        match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err((format!("invalid value for {key}: {v}"), None)),
        }
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => {
                    return Err(plain(format!(
                        "unexpected key 'required' for mount type '{}'",
                        m.kind
                    )));
                }
                _ => {
                    return Err(plain(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        let value = expand(&value).map_err(plain)?;
        let unexpected = |key: &str, kind: MountType| {
            plain(format!("unexpected key '{key}' for mount type '{kind}'"))
        };
        match key.as_str() {
            "type" => {
                m.kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err((
                            format!("unsupported mount type {value:?}"),
                            suggest(&value, ["bind", "cache", "tmpfs", "secret", "ssh"])
                                .map(|s| format!("did you mean {s}?")),
                        ));
                    }
                }
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    return Err(unexpected(&key, m.kind));
                }
                m.required = parse_bool(&key, &value)?;
            }
            "size" => {
                if m.kind != MountType::Tmpfs {
                    return Err(unexpected(&key, m.kind));
                }
                m.size_bytes = ram_in_bytes(&value)
                    .ok_or_else(|| plain(format!("invalid value for size: {value}")))?;
            }
            "id" => m.id = value,
            "sharing" => {
                m.sharing = Some(match value.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => {
                        return Err((
                            format!("unsupported sharing value {value:?}"),
                            suggest(&value, ["shared", "private", "locked"])
                                .map(|s| format!("did you mean {s}?")),
                        ));
                    }
                })
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&value, 8)
                        .map_err(|_| plain(format!("invalid value {value} for mode")))?,
                )
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| plain(format!("invalid value {value} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| plain(format!("invalid value {value} for gid")))?,
                )
            }
            "env" => m.env = Some(value),
            _ => {
                return Err((
                    format!("unexpected key '{key}' in '{field}'"),
                    suggest(&key, MOUNT_KEYS.iter().copied()).map(|s| format!("did you mean {s}?")),
                ));
            }
        }
    }
    let file_info = matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !file_info {
        for (name, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(plain(format!(
                    "{name} not allowed for \"{}\" type mounts",
                    m.kind
                )));
            }
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    if m.kind == MountType::Secret {
        if !m.from.is_empty() {
            return Err(plain("secret mount should not have a from".into()));
        }
        if m.sharing.is_some() {
            return Err(plain("secret mount should not define sharing".into()));
        }
        if m.source.is_empty() && m.target.is_empty() && m.id.is_empty() {
            return Err(plain(
                "invalid secret mount: one of source, target required".into(),
            ));
        }
        if !m.source.is_empty() && !m.id.is_empty() {
            return Err(plain("both source and id can't be set".into()));
        }
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(plain(format!(
            "invalid cache sharing set for {} mount",
            m.kind
        )));
    }
    Ok(m)
}

/// docker/go-units `RAMInBytes`: `64m`, `1.5GiB`, `100` (binary multiples).
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num: f64 = s[..num_end].parse().ok()?;
    let unit = s[num_end..].trim_start_matches(' ').to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    Some((num * mult) as u64)
}

/// Validates a `--chmod` value as BuildKit does: octal up to 07777, or a symbolic mode.
pub fn parse_chmod(s: &str) -> Result<Chmod, String> {
    let non_octal = || {
        format!("invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777")
    };
    if let Ok(v) = u32::from_str_radix(s, 8) {
        if v > 0o7777 {
            return Err(non_octal());
        }
        return Ok(Chmod::Octal(v));
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err(non_octal());
    }
    // Symbolic: clauses `[ugoa]*[+-=][rwxXst]*` (or a permission copy `u`/`g`/`o`) separated by commas.
    for clause in s.split(',') {
        let who_end = clause
            .find(|c: char| !"ugoa".contains(c))
            .ok_or_else(|| format!("invalid chmod parameter: '{s}'"))?;
        let mut rest = &clause[who_end..];
        if rest.is_empty() {
            return Err(format!("invalid chmod parameter: '{s}'"));
        }
        while !rest.is_empty() {
            let op = rest.as_bytes()[0];
            if !b"+-=".contains(&op) {
                return Err(format!("invalid chmod parameter: '{s}'"));
            }
            rest = &rest[1..];
            let perm_end = rest.find(['+', '-', '=']).unwrap_or(rest.len());
            let perm = &rest[..perm_end];
            let ok = perm.chars().all(|c| "rwxXst".contains(c))
                || (perm.len() == 1 && "ugo".contains(perm));
            if !ok {
                return Err(format!("invalid chmod parameter: '{s}'"));
            }
            rest = &rest[perm_end..];
        }
    }
    Ok(Chmod::Symbolic(s.to_string()))
}

/// Checks a STOPSIGNAL value (a number, or a signal name with or without `SIG`).
pub fn valid_signal(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n != 0 && n <= 64;
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rt) = name.strip_prefix("RTMIN") {
        return rt.is_empty()
            || rt
                .strip_prefix('+')
                .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 15));
    }
    if let Some(rt) = name.strip_prefix("RTMAX") {
        return rt.is_empty()
            || rt
                .strip_prefix('-')
                .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 14));
    }
    NAMES.contains(&name)
}

/// EXPOSE port specs to `port/proto` entries (ranges expanded), as BuildKit's `parsePorts`.
pub fn parse_port(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (host_ip, host_port, container) = match parts.len() {
        1 => ("".to_string(), "", parts[0]),
        2 => ("".to_string(), parts[0], parts[1]),
        n => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("invalid port: {raw:?}: no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        _ => return Err(format!("invalid port: {raw:?}: invalid proto: {proto}")),
    };
    let ip = host_ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(&host_ip);
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let range = |p: &str| -> Option<(u32, u32)> {
        let num = |s: &str| s.parse::<u32>().ok().filter(|n| *n <= 65535);
        match p.split_once('-') {
            None => num(p).map(|n| (n, n)),
            Some((a, b)) if a == b => num(a).map(|n| (n, n)),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                (b >= a).then_some((a, b))
            }
        }
    };
    let (start, end) = range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) = range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}
