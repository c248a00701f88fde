//! Build checks (`forge build --check`): BuildKit's Dockerfile lint rules, under their names, run
//! on the parsed file without building anything. Each finding names its rule and where it stands;
//! the caller renders them. Rules are skipped with BuildKit's `# check=skip=A,B` directive (or
//! `skip=all`), or the `BUILDKIT_DOCKERFILE_CHECK` build argument in the same form.
//!
//! What needs a base image's environment (`UndefinedVar`) asks the caller for it; where the caller
//! cannot say (an image not in the store), variables are not checked in that stage rather than
//! reported on a guess.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ast::{Dockerfile, Node, Span};
use super::instructions::{Instruction, InstructionError, parse_node};
use super::shell::{Env, Lexer};
use crate::frontend::suggest::suggest;

/// One build check: BuildKit's rule name, what it is about, and the slug of its documentation page.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    slug: &'static str,
}

impl Rule {
    /// The rule's page in Docker's documentation, as BuildKit links it.
    pub fn url(&self) -> String {
        format!("https://docs.docker.com/go/dockerfile/rule/{}/", self.slug)
    }
}

macro_rules! rules {
    ($($id:ident = $name:literal, $slug:literal, $description:literal;)*) => {
        $(pub const $id: Rule = Rule { name: $name, slug: $slug, description: $description };)*
        /// Every rule forge checks, in the order of BuildKit's reference.
        pub const RULES: &[&Rule] = &[$(&$id),*];
    };
}

rules! {
    STAGE_NAME_CASING = "StageNameCasing", "stage-name-casing", "Stage names should be lowercase";
    FROM_AS_CASING = "FromAsCasing", "from-as-casing", "The 'as' keyword should match the case of the 'from' keyword";
    NO_EMPTY_CONTINUATION = "NoEmptyContinuation", "no-empty-continuation", "Empty continuation lines will become errors in a future release";
    CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing", "consistent-instruction-casing", "All instructions of a Dockerfile should be written in one casing (upper or lower)";
    DUPLICATE_STAGE_NAME = "DuplicateStageName", "duplicate-stage-name", "Stage names should be unique";
    RESERVED_STAGE_NAME = "ReservedStageName", "reserved-stage-name", "Reserved words should not be used as stage names";
    JSON_ARGS_RECOMMENDED = "JSONArgsRecommended", "json-args-recommended", "JSON arguments are recommended for ENTRYPOINT and CMD, so that the program gets the container's signals";
    MAINTAINER_DEPRECATED = "MaintainerDeprecated", "maintainer-deprecated", "MAINTAINER is deprecated: name the image's author with a label";
    UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom", "undefined-arg-in-from", "FROM may only use ARGs declared before the first FROM";
    WORKDIR_RELATIVE_PATH = "WorkdirRelativePath", "workdir-relative-path", "A relative WORKDIR with no absolute one before it in the build depends on the base image's";
    UNDEFINED_VAR = "UndefinedVar", "undefined-var", "Variables should be defined before they are used";
    MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed", "multiple-instructions-disallowed", "Only the last CMD, ENTRYPOINT or HEALTHCHECK of a stage counts";
    LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat", "legacy-key-value-format", "The legacy `KEY value` form (whitespace for `=`) should not be used";
    SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env", "Sensitive data should not be passed in ARG or ENV: it stays in the image";
    INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom", "invalid-default-arg-in-from", "The default values of the global ARGs should give FROM a valid image name";
}

/// One rule broken at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static Rule,
    pub message: String,
    pub span: Span,
}

/// What the checks need besides the file.
pub struct CheckOptions<'a> {
    /// `--build-arg`s (`BUILDKIT_DOCKERFILE_CHECK` among them).
    pub build_args: &'a BTreeMap<String, String>,
    /// The names of a base image's environment variables, by the reference FROM names (its ARGs
    /// expanded); `None` when they are not known.
    pub base_env: &'a dyn Fn(&str) -> Option<Vec<String>>,
}

/// The ARGs BuildKit defines before the first FROM without a declaration.
const PLATFORM_ARGS: [&str; 8] = [
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Stage names a Dockerfile may not take: BuildKit's own sources.
const RESERVED_NAMES: [&str; 2] = ["scratch", "context"];

/// What a stage makes known to the stages built on it.
#[derive(Clone)]
struct StageState {
    name: Option<String>,
    /// Variables defined in the stage so far (base image, ENV, ARG); `None` when the base image's
    /// environment is unknown.
    defined: Option<BTreeSet<String>>,
    absolute_workdir: bool,
}

/// Per-stage bookkeeping that does not pass to later stages.
#[derive(Default)]
struct StageScope {
    shell_set: bool,
    last_only: BTreeMap<&'static str, Vec<Span>>,
}

/// Runs every rule the options do not skip on `df`. An instruction that does not parse is the
/// error a build would stop at.
pub fn check(df: &Dockerfile, opts: &CheckOptions<'_>) -> Result<Vec<Finding>, InstructionError> {
    let mut out = Vec::new();
    let lexer = Lexer::new(df.escape);
    casing(df, &mut out);
    for w in &df.warnings {
        if w.message.starts_with("empty continuation line") {
            out.push(Finding {
                rule: &NO_EMPTY_CONTINUATION,
                message: "Empty continuation line".into(),
                span: w.span,
            });
        }
    }

    // Global ARGs: their names and defaults (a build argument overrides a default).
    let mut meta_declared: BTreeSet<String> = PLATFORM_ARGS.iter().map(|s| s.to_string()).collect();
    let mut meta_defaults: HashMap<String, String> = HashMap::new();
    let mut meta_values: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<StageState> = Vec::new();
    let mut scope = StageScope::default();
    for node in &df.children {
        let cmd = parse_node(node)?;
        if let Instruction::Arg(decls) = &cmd.instruction
            && stages.is_empty()
        {
            for d in decls {
                secret_key("ARG", &d.key, node, &mut out);
                meta_declared.insert(d.key.clone());
                if let Some(v) = &d.default {
                    meta_defaults.insert(d.key.clone(), v.clone());
                }
                if let Some(v) = opts.build_args.get(&d.key).or(d.default.as_ref()) {
                    meta_values.insert(d.key.clone(), v.clone());
                }
            }
            continue;
        }
        if let Instruction::From(from) = &cmd.instruction {
            if !stages.is_empty() {
                end_stage(&mut scope, &mut out);
            }
            let base = from_checks(
                node,
                &from.base,
                &lexer,
                &meta_declared,
                &meta_defaults,
                &meta_values,
                &mut out,
            );
            let name = stage_name_checks(node, &stages, &mut out);
            let parent = stages
                .iter()
                .rev()
                .find(|s| s.name.as_deref() == Some(base.to_lowercase().as_str()));
            let state = match parent {
                Some(p) => StageState {
                    name: name.clone(),
                    ..p.clone()
                },
                None => {
                    let env = if base == "scratch" {
                        Some(Vec::new())
                    } else {
                        (opts.base_env)(&base)
                    };
                    StageState {
                        name: name.clone(),
                        // BuildKit gives every stage a PATH when its image has none.
                        defined: env
                            .map(|names| names.into_iter().chain(["PATH".to_string()]).collect()),
                        absolute_workdir: false,
                    }
                }
            };
            stages.push(state);
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            continue;
        };
        stage_checks(node, &cmd.instruction, stage, &mut scope, &lexer, &mut out);
    }
    if !stages.is_empty() {
        end_stage(&mut scope, &mut out);
    }

    let skipped = skipped_rules(df, opts.build_args);
    out.retain(|f| !skipped.contains("all") && !skipped.contains(&f.rule.name.to_lowercase()));
    out.sort_by_key(|f| (f.span.start.line, f.span.start.column));
    Ok(out)
}

/// The `# check=...` directive and the `BUILDKIT_DOCKERFILE_CHECK` build argument, in that order
/// (the argument's settings come last and win).
fn check_settings<'a>(
    df: &'a Dockerfile,
    build_args: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a str> {
    df.directives
        .iter()
        .filter(|d| d.name == "check")
        .map(|d| d.value.as_str())
        .chain(
            build_args
                .get("BUILDKIT_DOCKERFILE_CHECK")
                .map(String::as_str),
        )
}

/// `error=true` in the check settings: a build with findings fails, as BuildKit's does.
pub fn findings_are_errors(df: &Dockerfile, build_args: &BTreeMap<String, String>) -> bool {
    let mut error = false;
    for value in check_settings(df, build_args) {
        for part in value.split(';') {
            if let Some(("error", v)) = part.trim().split_once('=') {
                error = v.trim().eq_ignore_ascii_case("true");
            }
        }
    }
    error
}

/// Rule names (lowercase) skipped by `# check=skip=...` and `BUILDKIT_DOCKERFILE_CHECK`.
fn skipped_rules(df: &Dockerfile, build_args: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for value in check_settings(df, build_args) {
        for part in value.split(';') {
            if let Some(("skip", list)) = part.trim().split_once('=') {
                out.extend(
                    list.split(',')
                        .map(|r| r.trim().to_lowercase())
                        .filter(|r| !r.is_empty()),
                );
            }
        }
    }
    out
}

fn is_upper(s: &str) -> bool {
    s == s.to_uppercase()
}

fn is_lower(s: &str) -> bool {
    s == s.to_lowercase()
}

/// `ConsistentInstructionCasing`: every keyword in the casing most of them use (upper on a tie).
fn casing(df: &Dockerfile, out: &mut Vec<Finding>) {
    let (mut upper, mut lower) = (0, 0);
    for node in &df.children {
        let kw = node.keyword();
        if is_upper(kw) {
            upper += 1;
        } else if is_lower(kw) {
            lower += 1;
        }
    }
    let (majority, fits): (&str, fn(&str) -> bool) = if lower > upper {
        ("lowercase", is_lower)
    } else {
        ("uppercase", is_upper)
    };
    for node in &df.children {
        let kw = node.keyword();
        if !fits(kw) {
            out.push(Finding {
                rule: &CONSISTENT_INSTRUCTION_CASING,
                message: format!(
                    "Command '{kw}' should match the case of the command majority ({majority})"
                ),
                span: node.keyword_span,
            });
        }
    }
}

/// The checks of FROM's image: its ARGs declared, their defaults giving a valid name. Returns the
/// base as the build would expand it.
fn from_checks(
    node: &Node,
    written: &str,
    lexer: &Lexer,
    declared: &BTreeSet<String>,
    defaults: &HashMap<String, String>,
    values: &HashMap<String, String>,
    out: &mut Vec<Finding>,
) -> String {
    let Ok(expanded) = lexer.process(written, values) else {
        return written.to_string();
    };
    for var in &expanded.unmatched {
        if !declared.contains(var) {
            let mut message = format!("FROM argument '{var}' is not declared");
            if let Some(s) = suggest(var, declared.iter().map(String::as_str)) {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            out.push(Finding {
                rule: &UNDEFINED_ARG_IN_FROM,
                message,
                span: node.keyword_span,
            });
        }
    }
    // An undeclared ARG is reported above; the defaults are judged when every ARG is declared.
    let uses_args = !expanded.matched.is_empty() || !expanded.unmatched.is_empty();
    let all_declared = expanded.unmatched.iter().all(|v| declared.contains(v));
    if uses_args
        && all_declared
        && let Ok(by_default) = lexer.process(written, defaults)
    {
        let name = by_default.result.trim();
        let valid = name == "scratch"
            || (!name.is_empty() && forge_snapshotter::reference::Reference::parse(name).is_ok());
        if !valid {
            out.push(Finding {
                rule: &INVALID_DEFAULT_ARG_IN_FROM,
                message: format!(
                    "Default value for ARG {written} results in empty or invalid base image name"
                ),
                span: node.keyword_span,
            });
        }
    }
    expanded.result
}

/// The checks of `FROM ... AS name`: the keyword's casing, the name's casing, reserved and
/// repeated names. Returns the stage's name, lowercased.
fn stage_name_checks(node: &Node, stages: &[StageState], out: &mut Vec<Finding>) -> Option<String> {
    let values = node.args.values();
    let (as_kw, name) = match values {
        [_, as_kw, name, ..] if as_kw.eq_ignore_ascii_case("as") => (as_kw, name),
        _ => return None,
    };
    let from_kw = node.keyword();
    if (is_upper(from_kw) && !is_upper(as_kw)) || (is_lower(from_kw) && !is_lower(as_kw)) {
        out.push(Finding {
            rule: &FROM_AS_CASING,
            message: format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"),
            span: node.keyword_span,
        });
    }
    if !is_lower(name) {
        out.push(Finding {
            rule: &STAGE_NAME_CASING,
            message: format!("Stage name '{name}' should be lowercase"),
            span: node.keyword_span,
        });
    }
    let lower = name.to_lowercase();
    if RESERVED_NAMES.contains(&lower.as_str()) {
        out.push(Finding {
            rule: &RESERVED_STAGE_NAME,
            message: format!(
                "Stage name should not use the same name as reserved stage \"{lower}\""
            ),
            span: node.keyword_span,
        });
    }
    if stages
        .iter()
        .any(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        out.push(Finding {
            rule: &DUPLICATE_STAGE_NAME,
            message: format!("Duplicate stage name \"{lower}\", stage names should be unique"),
            span: node.keyword_span,
        });
    }
    Some(lower)
}

/// `SecretsUsedInArgOrEnv`: a name with a word that says secret (`_`-separated, any case), and no
/// word that says it is not.
fn secret_key(instruction: &str, key: &str, node: &Node, out: &mut Vec<Finding>) {
    const SECRET: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const NOT_SECRET: [&str; 1] = ["public"];
    let words: Vec<String> = key.split(['_', '-']).map(str::to_lowercase).collect();
    if words.iter().any(|w| SECRET.contains(&w.as_str()))
        && !words.iter().any(|w| NOT_SECRET.contains(&w.as_str()))
    {
        out.push(Finding {
            rule: &SECRETS_USED_IN_ARG_OR_ENV,
            message: format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} \"{key}\")"
            ),
            span: node.keyword_span,
        });
    }
}

/// `MultipleInstructionsDisallowed` at the end of a stage: each CMD, ENTRYPOINT or HEALTHCHECK
/// that a later one of the same stage replaces.
fn end_stage(scope: &mut StageScope, out: &mut Vec<Finding>) {
    for (name, spans) in std::mem::take(&mut scope.last_only) {
        for span in &spans[..spans.len().saturating_sub(1)] {
            out.push(Finding {
                rule: &MULTIPLE_INSTRUCTIONS_DISALLOWED,
                message: format!(
                    "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                ),
                span: *span,
            });
        }
    }
    *scope = StageScope::default();
}

/// The checks of one instruction inside a stage.
fn stage_checks(
    node: &Node,
    instruction: &Instruction,
    stage: &mut StageState,
    scope: &mut StageScope,
    lexer: &Lexer,
    out: &mut Vec<Finding>,
) {
    let at = node.keyword_span;
    let mut words: Vec<&str> = Vec::new();
    match instruction {
        Instruction::Maintainer(_) => out.push(Finding {
            rule: &MAINTAINER_DEPRECATED,
            message: "Maintainer instruction is deprecated in favor of using label".into(),
            span: at,
        }),
        Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
            let name = instruction.name();
            scope.last_only.entry(name).or_default().push(at);
            if c.prepend_shell && !scope.shell_set {
                out.push(Finding {
                    rule: &JSON_ARGS_RECOMMENDED,
                    message: format!(
                        "JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"
                    ),
                    span: at,
                });
            }
        }
        Instruction::Healthcheck(_) => scope.last_only.entry("HEALTHCHECK").or_default().push(at),
        Instruction::Shell(_) => scope.shell_set = true,
        Instruction::Workdir(path) => {
            words.push(path);
            if path.starts_with('/') {
                stage.absolute_workdir = true;
            } else if !path.starts_with('$') && !stage.absolute_workdir {
                out.push(Finding {
                    rule: &WORKDIR_RELATIVE_PATH,
                    message: format!(
                        "Relative workdir \"{path}\" can have unexpected results if the base image changes"
                    ),
                    span: at,
                });
            }
        }
        Instruction::Env(kvs) | Instruction::Label(kvs) => {
            let env = matches!(instruction, Instruction::Env(_));
            if node.legacy_key_value {
                let name = instruction.name();
                out.push(Finding {
                    rule: &LEGACY_KEY_VALUE_FORMAT,
                    message: format!(
                        "\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"
                    ),
                    span: at,
                });
            }
            for kv in kvs {
                if env {
                    secret_key("ENV", &kv.key, node, out);
                } else {
                    words.push(&kv.key);
                }
                words.push(&kv.value);
            }
        }
        Instruction::Arg(decls) => {
            for d in decls {
                secret_key("ARG", &d.key, node, out);
                if let Some(v) = &d.default {
                    words.push(v);
                }
            }
        }
        Instruction::Copy(c) => {
            words.extend(c.paths.sources.iter().map(String::as_str));
            words.push(&c.paths.dest);
            words.push(&c.chown);
        }
        Instruction::Add(a) => {
            words.extend(a.paths.sources.iter().map(String::as_str));
            words.push(&a.paths.dest);
            words.push(&a.chown);
        }
        Instruction::Expose(v) | Instruction::Volume(v) => {
            words.extend(v.iter().map(String::as_str))
        }
        Instruction::User(u) | Instruction::StopSignal(u) => words.push(u),
        _ => {}
    }
    undefined_vars(node, &words, stage, lexer, out);
    // What this instruction defines is defined for the instructions after it (an ENV's values are
    // expanded before its own names are set, as BuildKit does).
    if let Some(defined) = &mut stage.defined {
        match instruction {
            Instruction::Env(kvs) => defined.extend(kvs.iter().map(|kv| kv.key.clone())),
            Instruction::Arg(decls) => defined.extend(decls.iter().map(|d| d.key.clone())),
            _ => {}
        }
    }
}

/// The names a stage has defined, as an environment for the lexer: only which names it leaves
/// unmatched matters, so each value is a placeholder. (A map of them made per instruction made a
/// Dockerfile of many ENV lines quadratic.)
struct Defined<'a>(&'a BTreeSet<String>);

impl Env for Defined<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0.contains(key).then(|| "x".to_string())
    }

    fn keys(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

/// `UndefinedVar`: each variable `words` use that the stage has not defined, once per instruction.
fn undefined_vars(
    node: &Node,
    words: &[&str],
    stage: &StageState,
    lexer: &Lexer,
    out: &mut Vec<Finding>,
) {
    let Some(defined) = &stage.defined else {
        return;
    };
    let env = Defined(defined);
    let mut reported = BTreeSet::new();
    for word in words.iter().filter(|w| w.contains('$')) {
        let Ok(expanded) = lexer.process(word, &env) else {
            continue;
        };
        for var in expanded.unmatched {
            if !reported.insert(var.clone()) {
                continue;
            }
            let mut message = format!("Usage of undefined variable '${var}'");
            if let Some(s) = suggest(&var, defined.iter().map(String::as_str)) {
                message.push_str(&format!(" (did you mean ${s}?)"));
            }
            out.push(Finding {
                rule: &UNDEFINED_VAR,
                message,
                span: node.keyword_span,
            });
        }
    }
}
