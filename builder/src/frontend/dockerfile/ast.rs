//! The Dockerfile syntax tree: one [`Node`] per instruction, close to BuildKit's `parser.Node` so that
//! the AST dump matches BuildKit's byte for byte, but with spans (line and column) on everything an
//! error may need to point at.

use std::fmt;

/// A position in the source: 1-based line and 1-based column (counted in chars, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A range of source text. `end.line` is the last line the range touches (BuildKit's `EndLine`);
/// `end.column` is one past the last char of the range on that line (exclusive, like an editor range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A parser directive (`# syntax=...`, `# escape=...`, `# check=...`) from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lowercased directive name.
    pub name: String,
    pub value: String,
    pub span: Span,
}

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` unless `# escape=` said otherwise).
    pub escape: char,
    /// One node per instruction, in source order.
    pub children: Vec<Node>,
    /// Non-fatal findings (e.g. empty continuation lines), each with where it was seen.
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    pub span: Span,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword, lowercased (`"run"`, `"copy"`, ...).
    pub instruction: String,
    /// Where the keyword stands as written.
    pub keyword_span: Span,
    /// `--name=value` / `--name` flags in order, as written (after the keyword, before the arguments).
    pub flags: Vec<Flag>,
    /// The arguments, shaped by the instruction's parse rule (see [`Args`]).
    pub args: Args,
    /// Where the argument text (after the flags) starts; errors about arguments point here.
    pub args_pos: Pos,
    /// Heredocs attached to this instruction, in the order their `<<NAME` markers appear.
    pub heredocs: Vec<Heredoc>,
    /// The logical line as written, continuations joined (BuildKit's `Original`).
    pub original: String,
    /// From the keyword to the last line of the instruction (heredoc bodies included).
    pub span: Span,
    /// Comment lines directly above this instruction, without the leading `#`.
    pub prev_comment: Vec<String>,
    /// ENV/LABEL written in the legacy `KEY value` form (BuildKit's empty separator, which its dump
    /// prints as `""` and its linter reports). That form always holds exactly one name/value pair.
    pub legacy_key_value: bool,
}

impl Node {
    /// The keyword as written (case kept), e.g. `Run`; [`Node::instruction`] is its lowercase form.
    pub fn keyword(&self) -> &str {
        let line = self.original.trim();
        line.split(['\t', '\u{b}', '\u{c}', '\r', ' '])
            .next()
            .unwrap_or("")
    }

    /// The ONBUILD trigger, when this node is an ONBUILD with one.
    pub fn sub_node(&self) -> Option<&Node> {
        match &self.args {
            Args::Sub(node) => Some(node),
            _ => None,
        }
    }
}

/// A `--name[=value]` flag of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The whole flag, e.g. `--mount=type=cache,target=/root/.cache`, after BuildKit's flag word
    /// processing: quotes removed and escaped characters unescaped (`--x="a b"` gives `--x=a b`).
    pub text: String,
    pub span: Span,
}

impl Flag {
    /// The flag name without the leading `--` (`"mount"`).
    pub fn name(&self) -> &str {
        let body = self.text.trim_start_matches('-');
        body.split_once('=').map_or(body, |(name, _)| name)
    }

    /// The value after `=`, if any.
    pub fn value(&self) -> Option<&str> {
        self.text
            .trim_start_matches('-')
            .split_once('=')
            .map(|(_, v)| v)
    }
}

/// Arguments of an instruction, in the shape BuildKit's per-instruction parse function gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// The instruction has no arguments.
    Empty,
    /// Plain values (BuildKit's `Next` chain): whitespace-delimited words (FROM, EXPOSE, COPY, ADD,
    /// VOLUME), quoted-aware words (ARG), name/value pairs flattened as `[name, value, name, value]`
    /// for ENV and LABEL (see [`Node::legacy_key_value`]), a single raw string (shell form of
    /// RUN/CMD/ENTRYPOINT, and MAINTAINER/USER/WORKDIR/STOPSIGNAL), or for HEALTHCHECK the type
    /// (`CMD`/`NONE`) followed by the shell-form command if any.
    Values(Vec<String>),
    /// JSON array (exec form): BuildKit's `json` attribute. For HEALTHCHECK the first value is the
    /// type (`CMD`) and the JSON array's elements follow, as in BuildKit.
    Json(Vec<String>),
    /// ONBUILD's trigger instruction.
    Sub(Box<Node>),
}

impl Args {
    /// The values, for `Values` and `Json`; empty otherwise.
    pub fn values(&self) -> &[String] {
        match self {
            Args::Values(v) | Args::Json(v) => v,
            Args::Empty | Args::Sub(_) => &[],
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Args::Json(_))
    }
}

/// A heredoc body (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, unquoted (`EOF`).
    pub name: String,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when none was written (saturates at
    /// `u32::MAX` where BuildKit's would overflow).
    pub file_descriptor: u32,
    /// Whether variables are expanded in the body: false when the delimiter was quoted.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines.
    pub chomp: bool,
    /// The body: the lines between the marker line and the terminator, each with its line ending as
    /// written (`\n`, or `\r\n` in a CRLF file); leading tabs already stripped when `chomp`.
    pub content: String,
    /// From the `<<` word on the instruction line to the end of the terminator line.
    pub span: Span,
}
