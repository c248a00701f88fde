//! Dockerfile parser: source text -> [`Dockerfile`] syntax tree, following BuildKit's
//! `frontend/dockerfile/parser` rule for rule (directives, continuations, per-instruction argument
//! shapes, heredocs) so that its AST dump matches BuildKit's, while keeping line and column spans.
//!
//! Variables are not expanded here; the typed-instruction layer does that with the shell lexer.

// A parse error is built once per failed parse and carries its evidence (file, span, source line,
// hint); boxing it would only make matching on it clumsier.
#![allow(clippy::result_large_err)]

use crate::frontend::suggest::{INSTRUCTIONS, suggest_instruction};
use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use super::ast::{Args, Directive, Dockerfile, Flag, Heredoc, Node, Pos, Span, Warning};

/// The escape character when no `# escape=` directive says otherwise.
pub const DEFAULT_ESCAPE: char = '\\';

/// BuildKit reads lines with Go's `bufio.Scanner`, whose default token limit (64 KiB, newline
/// included) makes any longer line an error.
pub const MAX_LINE_BYTES: usize = 65535;

/// The parser directives BuildKit recognises; any other `# name=value` line is a plain comment.
const DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// What went wrong, without the location (see [`ParseError`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    /// A keyword that is not one of [`INSTRUCTIONS`] (as written).
    #[error("unknown instruction: {0}")]
    UnknownInstruction(String),
    /// A continuation whose joined text is empty (only escapes, blank lines and comments).
    #[error("line continuation with no instruction")]
    EmptyInstruction,
    /// Nothing but blank lines, comments and directives.
    #[error("file with no instructions")]
    NoInstructions,
    /// A parser directive given twice.
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    /// `# escape=` with something else than a backslash or a backtick.
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    /// Legacy `ENV name value` / `LABEL name value` form without a value.
    #[error("{0} must have two arguments")]
    MissingValue(String),
    /// A word without `=` after a `name=value` pair in ENV or LABEL.
    #[error("syntax error - can't find = in {0:?}; must be of the form: name=value")]
    MissingEquals(String),
    /// A JSON array with a non-string element, where the exec form is allowed.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings,
    /// An instruction that only has an exec form (SHELL) written otherwise.
    #[error("{0} requires the arguments to be in JSON form")]
    JsonRequired(String),
    /// `ONBUILD ONBUILD ...`.
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    /// End of file before the heredoc's terminator line.
    #[error("unterminated heredoc {0}")]
    UnterminatedHeredoc(String),
    /// A heredoc marker word that BuildKit's lexer rejects.
    #[error("invalid heredoc {word}: {reason}")]
    InvalidHeredoc {
        /// The marker word as lexed from the line.
        word: String,
        /// The lexer's message.
        reason: String,
    },
    /// A line over [`MAX_LINE_BYTES`] bytes.
    #[error("dockerfile line greater than max allowed size of {MAX_LINE_BYTES}")]
    LineTooLong,
}

/// A parse failure with where it happened: file name, span, the source line and maybe a hint.
///
/// Its `Display` renders a compiler-style report:
///
/// ```text
/// Dockerfile:3:1: unknown instruction: RUNN
///  3 | RUNN echo hi
///    | ^^^^
/// hint: did you mean RUN?
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// The file name given to [`parse_file`] (`Dockerfile` for [`parse`]).
    pub file: String,
    /// Where the problem is; `span.start` gives the reported line and column.
    pub span: Span,
    /// The text of line `span.start.line`, without its line ending; `None` when there is no line
    /// worth showing (an empty file).
    pub source_line: Option<String>,
    /// A suggestion shown after the report (`did you mean RUN?`).
    pub hint: Option<String>,
}

impl ParseError {
    /// 1-based line of the error.
    pub fn line(&self) -> usize {
        self.span.start.line
    }

    /// 1-based column (in chars) of the error.
    pub fn column(&self) -> usize {
        self.span.start.column
    }

    /// The message alone, without location, snippet or hint.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file,
            self.line(),
            self.column(),
            self.kind
        )?;
        if let Some(text) = &self.source_line {
            let number = self.line().to_string();
            let gutter = " ".repeat(number.len());
            write!(f, "\n {number} | {text}\n {gutter} | ")?;
            // Copy tabs from the source so the caret stays under the column in any tab width.
            let mut caret = String::new();
            for ch in text.chars().take(self.column().saturating_sub(1)) {
                caret.push(if ch == '\t' { '\t' } else { ' ' });
            }
            let width = if self.span.end.line == self.span.start.line
                && self.span.end.column > self.span.start.column
            {
                self.span.end.column - self.span.start.column
            } else {
                1
            };
            caret.push_str(&"^".repeat(width));
            f.write_str(&caret)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// Parses a Dockerfile; errors name the file `Dockerfile`.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    parse_file("Dockerfile", source)
}

/// Parses a Dockerfile; `name` is the file name errors report.
pub fn parse_file(name: &str, source: &str) -> Result<Dockerfile, ParseError> {
    Parser::new(name, source).run()
}

/// One physical line: `text` without its line ending (BuildKit trims every trailing `\r`/`\n`),
/// `raw` with it (heredoc bodies keep line endings).
struct Line<'a> {
    raw: &'a str,
    text: &'a str,
}

/// A logical line (continuations joined) and where each of its pieces came from.
#[derive(Default)]
struct Logical {
    text: String,
    /// (byte offset in `text`, source line, 1-based column of the piece's first char), one per
    /// non-empty piece, in order.
    segments: Vec<(usize, usize, usize)>,
    /// First and last source lines of the instruction, and the last one's char count.
    first_line: usize,
    last_line: usize,
    last_line_chars: usize,
}

impl Logical {
    fn push(&mut self, piece: &str, line: usize, column: usize) {
        if !piece.is_empty() {
            self.segments.push((self.text.len(), line, column));
            self.text.push_str(piece);
        }
    }

    /// The largest char boundary at or before `offset`, within the text.
    fn floor(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    /// Position of the char starting at byte `offset` (or just past the text when at its end).
    fn pos(&self, offset: usize) -> Pos {
        let offset = self.floor(offset);
        let index = self.segments.partition_point(|s| s.0 <= offset);
        if index == 0 {
            return Pos {
                line: self.first_line,
                column: 1,
            };
        }
        let (start, line, column) = self.segments[index - 1];
        Pos {
            line,
            column: column + self.text[start..offset].chars().count(),
        }
    }

    /// Span of the bytes `start..end`, end exclusive.
    fn span(&self, start: usize, end: usize) -> Span {
        let (start, end) = (self.floor(start), self.floor(end));
        let start_pos = self.pos(start);
        if end <= start {
            return Span {
                start: start_pos,
                end: start_pos,
            };
        }
        let last = self.text[..end]
            .char_indices()
            .next_back()
            .map_or(start, |(i, _)| i);
        let mut end_pos = self.pos(last);
        end_pos.column += 1;
        Span {
            start: start_pos,
            end: end_pos,
        }
    }
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<Line<'a>>,
    escape: char,
    directives_done: bool,
    seen: BTreeSet<String>,
    directives: Vec<Directive>,
    warnings: Vec<Warning>,
}

/// Go's `unicode.IsSpace`, which is Unicode's White_Space property, as Rust's `is_whitespace`.
fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `reWhitespace`: `[\t\v\f\r ]`.
fn is_re_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go regexp's `\s`: `[\t\n\f\r ]`.
fn is_re_s(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

fn is_comment(text: &str) -> bool {
    text.trim_start_matches(is_go_space).starts_with('#')
}

impl<'a> Parser<'a> {
    fn new(file: &'a str, source: &'a str) -> Self {
        let source = source.strip_prefix('\u{feff}').unwrap_or(source);
        let lines = source
            .split_inclusive('\n')
            .map(|raw| Line {
                raw,
                text: raw.trim_end_matches(['\r', '\n']),
            })
            .collect();
        Parser {
            file,
            lines,
            escape: DEFAULT_ESCAPE,
            directives_done: false,
            seen: BTreeSet::new(),
            directives: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&self, kind: ParseErrorKind, span: Span, hint: Option<String>) -> ParseError {
        let source_line = span
            .start
            .line
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(|l| l.text.to_string());
        ParseError {
            kind,
            file: self.file.to_string(),
            span,
            source_line,
            hint,
        }
    }

    fn line_span(&self, number: usize) -> Span {
        let chars = self.lines[number - 1].text.chars().count();
        Span {
            start: Pos {
                line: number,
                column: 1,
            },
            end: Pos {
                line: number,
                column: chars + 1,
            },
        }
    }

    fn run(mut self) -> Result<Dockerfile, ParseError> {
        if let Some(index) = self
            .lines
            .iter()
            .position(|l| l.raw.strip_suffix('\n').unwrap_or(l.raw).len() > MAX_LINE_BYTES)
        {
            let span = self.line_span(index + 1);
            let mut err = self.error(ParseErrorKind::LineTooLong, span, None);
            err.source_line = None;
            return Err(err);
        }

        let mut children = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.lines.len() {
            let text = self.lines[i].text;
            if is_comment(text) {
                // BuildKit drops the first byte of the line (the `#` unless indented) and trims.
                let mut chars = text.chars();
                chars.next();
                let comment = chars.as_str().trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let stripped = text.trim_start_matches(is_go_space);
            let indent = text.len() - stripped.len();
            let line_no = i + 1;
            if self.possible_directive(stripped, line_no, text[..indent].chars().count() + 1)? {
                comments.pop();
            }
            i += 1;
            let first = if is_comment(stripped) { "" } else { stripped };
            let (first, mut end_of_line) = self.trim_continuation(first);
            if end_of_line && first.is_empty() {
                continue;
            }
            let mut logical = Logical {
                first_line: line_no,
                ..Logical::default()
            };
            logical.push(first, line_no, text[..indent].chars().count() + 1);

            let mut first_empty_line = None;
            while !end_of_line && i < self.lines.len() {
                let text = self.lines[i].text;
                i += 1;
                if is_comment(text) {
                    continue;
                }
                if text.trim_start_matches(is_go_space).is_empty() {
                    first_empty_line.get_or_insert(i);
                    continue;
                }
                let (piece, eol) = self.trim_continuation(text);
                end_of_line = eol;
                logical.push(piece, i, 1);
            }
            logical.last_line = i;
            logical.last_line_chars = self.lines[i - 1].text.chars().count();

            if let Some(empty) = first_empty_line {
                self.warnings.push(Warning {
                    message: format!("empty continuation line found in: {}", logical.text),
                    span: self.line_span(empty),
                });
            }

            let mut node = self.node_from_line(
                &logical,
                0,
                logical.text.len(),
                std::mem::take(&mut comments),
            )?;
            if can_contain_heredoc(&node) && logical.text.contains("<<") {
                i = self.read_heredocs(&logical, &mut node, i)?;
            }
            let end_line = i;
            let end = Pos {
                line: end_line,
                column: self.lines[end_line - 1].text.chars().count() + 1,
            };
            // BuildKit's StartLine is the first physical line, even when it held only an escape.
            node.span.start = Pos {
                line: line_no,
                column: text[..indent].chars().count() + 1,
            };
            node.span.end = end;
            if let Args::Sub(sub) = &mut node.args {
                sub.span.end = end;
            }
            children.push(node);
        }

        if children.is_empty() {
            let line = self.lines.len().max(1);
            let span = Span {
                start: Pos { line, column: 1 },
                end: Pos { line, column: 1 },
            };
            let mut err = self.error(ParseErrorKind::NoInstructions, span, None);
            err.source_line = None;
            return Err(err);
        }

        Ok(Dockerfile {
            directives: self.directives,
            escape: self.escape,
            children,
            warnings: self.warnings,
        })
    }

    /// BuildKit's continuation regex `([^e])e[ \t]*$|^e[ \t]*$`: a trailing escape (spaces and
    /// tabs after it allowed) continues the line, unless the escape is itself escaped.
    fn trim_continuation<'t>(&self, line: &'t str) -> (&'t str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(before) if before.is_empty() || !before.ends_with(self.escape) => (before, false),
            _ => (line, true),
        }
    }

    /// Recognises `# name=value` directives before the first other line; `true` if `line` was one.
    fn possible_directive(
        &mut self,
        line: &str,
        line_no: usize,
        column: usize,
    ) -> Result<bool, ParseError> {
        if self.directives_done {
            return Ok(false);
        }
        let Some((name, value)) = match_directive(line) else {
            self.directives_done = true;
            return Ok(false);
        };
        let name = name.to_ascii_lowercase();
        if !DIRECTIVES.contains(&name.as_str()) {
            self.directives_done = true;
            return Ok(false);
        }
        let span = Span {
            start: Pos {
                line: line_no,
                column,
            },
            end: Pos {
                line: line_no,
                column: column + line.chars().count(),
            },
        };
        if !self.seen.insert(name.clone()) {
            return Err(self.error(
                ParseErrorKind::DuplicateDirective(name),
                span,
                Some("parser directives may appear once each, at the top of the file".into()),
            ));
        }
        if name == "escape" {
            match value {
                "\\" => self.escape = '\\',
                "`" => self.escape = '`',
                _ => {
                    return Err(self.error(
                        ParseErrorKind::InvalidEscape(value.to_string()),
                        span,
                        Some("write `# escape=\\` or `# escape=``".into()),
                    ));
                }
            }
        }
        self.directives.push(Directive {
            name,
            value: value.to_string(),
            span,
        });
        Ok(true)
    }

    /// BuildKit's `newNodeFromLine` on `logical.text[start..end]`.
    fn node_from_line(
        &self,
        logical: &Logical,
        start: usize,
        end: usize,
        prev_comment: Vec<String>,
    ) -> Result<Node, ParseError> {
        let line = &logical.text[start..end];
        let trimmed = line.trim_matches(is_go_space);
        let base = start + (line.len() - line.trim_start_matches(is_go_space).len());
        let keyword_len = trimmed.find(is_re_whitespace).unwrap_or(trimmed.len());
        let keyword = &trimmed[..keyword_len];
        let keyword_span = logical.span(base, base + keyword_len);
        let after = &trimmed[keyword_len..];
        let rest = after.trim_start_matches(is_re_whitespace);
        let rest_base = base + keyword_len + (after.len() - rest.len());

        let (flags, args_start) = if keyword_len < trimmed.len() {
            extract_flags(rest, self.escape)
        } else {
            (Vec::new(), None)
        };
        let flags_end = flags.last().map_or(base + keyword_len, |f| rest_base + f.2);
        let flags: Vec<Flag> = flags
            .into_iter()
            .map(|(text, s, e)| Flag {
                text,
                span: logical.span(rest_base + s, rest_base + e),
            })
            .collect();
        let (args, args_base) = match args_start {
            Some(offset) => {
                let raw = &rest[offset..];
                let args = raw.trim_matches(is_go_space);
                let lead = raw.len() - raw.trim_start_matches(is_go_space).len();
                (args, rest_base + offset + lead)
            }
            None => ("", flags_end),
        };
        let args_pos = logical.pos(args_base);

        let instruction = keyword.to_lowercase();
        if keyword.is_empty() {
            return Err(self.error(ParseErrorKind::EmptyInstruction, keyword_span, None));
        }
        if !INSTRUCTIONS.contains(&instruction.as_str()) {
            let hint = suggest_instruction(keyword).map(|s| format!("did you mean {s}?"));
            return Err(self.error(
                ParseErrorKind::UnknownInstruction(keyword.to_string()),
                keyword_span,
                hint,
            ));
        }

        let args_span = logical.span(args_base, args_base + args.len());
        let mut legacy_key_value = false;
        let parsed = match instruction.as_str() {
            "add" | "copy" | "volume" => parse_maybe_json_to_list(args),
            "arg" => Ok(words_to_args(parse_words(args, self.escape))),
            "cmd" | "entrypoint" | "run" => parse_maybe_json(args),
            "shell" => match parse_maybe_json(args) {
                Ok(Args::Json(v)) => Ok(Args::Json(v)),
                Ok(_) => Err(ParseErrorKind::JsonRequired("SHELL".into())),
                Err(e) => Err(e),
            },
            "env" | "label" => {
                parse_name_val(args, &instruction.to_uppercase(), self.escape).map(|(a, legacy)| {
                    legacy_key_value = legacy;
                    a
                })
            }
            "expose" | "from" => Ok(parse_strings_whitespace_delimited(args)),
            "healthcheck" => parse_health_config(args),
            "maintainer" | "stopsignal" | "user" | "workdir" => Ok(parse_string(args)),
            "onbuild" => {
                let trigger = args.split(is_re_whitespace).next().unwrap_or("");
                if args.is_empty() {
                    Ok(Args::Empty)
                } else if trigger.eq_ignore_ascii_case("onbuild") {
                    // BuildKit rejects this when typing the instruction; doing it here also
                    // bounds the recursion on `ONBUILD ONBUILD ...` lines.
                    Err(ParseErrorKind::OnbuildChain)
                } else {
                    let sub = self.node_from_line(
                        logical,
                        args_base,
                        args_base + args.len(),
                        Vec::new(),
                    )?;
                    Ok(Args::Sub(Box::new(sub)))
                }
            }
            _ => unreachable!("instruction list and dispatch agree"),
        };
        let args = parsed.map_err(|kind| {
            let hint = match &kind {
                ParseErrorKind::MissingValue(k) => Some(format!("write `{k} name=value`")),
                ParseErrorKind::JsonRequired(k) => {
                    Some(format!("write `{k} [\"/bin/sh\", \"-c\"]`"))
                }
                _ => None,
            };
            let span = match &kind {
                ParseErrorKind::MissingValue(_) | ParseErrorKind::JsonRequired(_)
                    if args.is_empty() =>
                {
                    keyword_span
                }
                _ => args_span,
            };
            self.error(kind, span, hint)
        })?;

        Ok(Node {
            instruction,
            keyword_span,
            flags,
            args,
            args_pos,
            heredocs: Vec::new(),
            original: line.to_string(),
            span: Span {
                start: keyword_span.start,
                end: Pos {
                    line: logical.last_line,
                    column: logical.last_line_chars + 1,
                },
            },
            prev_comment,
            legacy_key_value,
        })
    }

    /// Reads the bodies of the heredocs named on the instruction line, from line index `next` on;
    /// returns the index of the first line after the last terminator.
    fn read_heredocs(
        &self,
        logical: &Logical,
        node: &mut Node,
        mut next: usize,
    ) -> Result<usize, ParseError> {
        let markers =
            heredoc::heredocs_from_line(&logical.text).map_err(|(word, offset, reason)| {
                self.error(
                    ParseErrorKind::InvalidHeredoc {
                        word: word.clone(),
                        reason,
                    },
                    logical.span(offset, offset + word.len()),
                    None,
                )
            })?;
        for marker in markers {
            let marker_span = logical.span(marker.offset, marker.offset + marker.word_len);
            let mut content = String::new();
            let mut terminated = false;
            while next < self.lines.len() {
                let line = &self.lines[next];
                next += 1;
                let candidate = if marker.chomp {
                    line.text.trim_start_matches('\t')
                } else {
                    line.text
                };
                if candidate == marker.name {
                    terminated = true;
                    break;
                }
                if marker.chomp {
                    content.push_str(line.raw.trim_start_matches('\t'));
                } else {
                    content.push_str(line.raw);
                }
            }
            if !terminated {
                return Err(self.error(
                    ParseErrorKind::UnterminatedHeredoc(marker.name.clone()),
                    marker_span,
                    Some(format!(
                        "end the heredoc with a line containing only {}",
                        marker.name
                    )),
                ));
            }
            node.heredocs.push(Heredoc {
                name: marker.name,
                file_descriptor: marker.fd,
                expand: marker.expand,
                chomp: marker.chomp,
                content,
                span: Span {
                    start: marker_span.start,
                    end: Pos {
                        line: next,
                        column: self.lines[next - 1].text.chars().count() + 1,
                    },
                },
            });
        }
        Ok(next)
    }
}

/// BuildKit's directive regex `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` after the `#` and any
/// leading white space; returns (name, value).
fn match_directive(line: &str) -> Option<(&str, &str)> {
    let body = line.strip_prefix('#')?.trim_start_matches(is_go_space);
    let name_len = body
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(body.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let name = &body[..name_len];
    let after = body[name_len..]
        .trim_start_matches(is_re_s)
        .strip_prefix('=')?;
    if after.is_empty() {
        return None;
    }
    let lead = after.trim_start_matches(is_re_s);
    let value = if lead.is_empty() {
        // Only white space after `=`: the lazy group still has to take one char, the last one.
        let (i, _) = after.char_indices().next_back()?;
        &after[i..]
    } else {
        lead.trim_end_matches(is_re_s)
    };
    Some((name, value))
}

fn can_contain_heredoc(node: &Node) -> bool {
    let node = match (&node.instruction[..], &node.args) {
        ("onbuild", Args::Sub(sub)) => sub,
        _ => node,
    };
    matches!(&node.instruction[..], "add" | "copy" | "run") && !node.args.is_json()
}

/// BuildKit's `extractBuilderFlags`: leading `--flag` words (quotes removed, escapes applied) up to
/// the first other word or a lone `--`. Returns the flags with their byte ranges in `line`, and where
/// the arguments start (`None` when the line holds only flags).
///
/// BuildKit walks bytes here, which splits or mangles non-ASCII chars inside flags; this walks chars.
fn extract_flags(line: &str, escape: char) -> (Vec<(String, usize, usize)>, Option<usize>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut word_start = 0;
    let mut blank_ok = false;
    let mut k = 0;
    while k <= chars.len() {
        let at_end = k == chars.len();
        let (pos, mut ch) = if at_end { (line.len(), '\0') } else { chars[k] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_go_space(ch) {
                k += 1;
                continue;
            }
            if ch != '-' || chars.get(k + 1).map(|c| c.1) != Some('-') {
                return (words, Some(pos));
            }
            phase = Phase::Word;
            word_start = pos;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push((word, word_start, line.len()));
            }
            break;
        }
        match phase {
            Phase::Word => {
                if is_go_space(ch) {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (words, Some(pos));
                    }
                    if blank_ok || !word.is_empty() {
                        words.push((std::mem::take(&mut word), word_start, pos));
                    }
                    word.clear();
                    blank_ok = false;
                    k += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    k += 1;
                    continue;
                }
                if ch == escape {
                    if k + 1 == chars.len() {
                        k += 1;
                        continue;
                    }
                    k += 1;
                    ch = chars[k].1;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    k += 1;
                    continue;
                }
                if ch == escape {
                    if k + 1 == chars.len() {
                        phase = Phase::Word;
                        k += 1;
                        continue;
                    }
                    k += 1;
                    ch = chars[k].1;
                }
                word.push(ch);
            }
            Phase::Spaces => unreachable!("handled above"),
        }
        k += 1;
    }
    (words, None)
}

/// BuildKit's `parseWords`: splits on white space, keeping quotes and escapes in the words.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq, Clone, Copy)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut k = 0;
    while k <= chars.len() {
        let at_end = k == chars.len();
        let mut ch = if at_end { '\0' } else { chars[k] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_go_space(ch) {
                k += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_go_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                k += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if k + 1 == chars.len() {
                    k += 1;
                    continue;
                }
                word.push(ch);
                k += 1;
                ch = chars[k];
            }
            word.push(ch);
            k += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if k + 1 == chars.len() {
                phase = Phase::Word;
                k += 1;
                continue;
            }
            word.push(ch);
            k += 1;
            ch = chars[k];
        }
        word.push(ch);
        k += 1;
    }
    words
}

fn words_to_args(words: Vec<String>) -> Args {
    if words.is_empty() {
        Args::Empty
    } else {
        Args::Values(words)
    }
}

/// Go's `regexp.Split(s, n)` with BuildKit's `[\t\v\f\r ]+`, for `s` already trimmed.
fn split_re_whitespace(s: &str, n: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if n.is_some_and(|n| out.len() + 1 == n) {
            out.push(rest.to_string());
            break;
        }
        match rest.find(is_re_whitespace) {
            Some(i) => {
                out.push(rest[..i].to_string());
                rest = rest[i..].trim_start_matches(is_re_whitespace);
                if rest.is_empty() {
                    // Go keeps the empty tail after a trailing separator.
                    out.push(String::new());
                    break;
                }
            }
            None => {
                out.push(rest.to_string());
                break;
            }
        }
    }
    out
}

fn parse_strings_whitespace_delimited(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::Empty;
    }
    Args::Values(split_re_whitespace(rest, None))
}

fn parse_string(rest: &str) -> Args {
    if rest.is_empty() {
        Args::Empty
    } else {
        Args::Values(vec![rest.to_string()])
    }
}

/// ENV/LABEL: `name=value ...`, or the legacy `name value` when the first word has no `=`.
/// Returns the args and whether the legacy form was used.
fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<(Args, bool), ParseErrorKind> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok((Args::Empty, false));
    }
    if !words[0].contains('=') {
        let parts = split_re_whitespace(rest, Some(2));
        if parts.len() < 2 {
            return Err(ParseErrorKind::MissingValue(key.to_string()));
        }
        return Ok((Args::Values(parts), true));
    }
    let mut values = Vec::with_capacity(words.len() * 2);
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals(word));
        };
        values.push(name.to_string());
        values.push(value.to_string());
    }
    Ok((Args::Values(values), false))
}

enum JsonError {
    NotArray,
    Invalid,
    NotStrings,
}

fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start_matches(is_go_space);
    if !rest.starts_with('[') {
        return Err(JsonError::NotArray);
    }
    match json::parse_array(rest) {
        None => Err(JsonError::Invalid),
        Some(items) => items
            .into_iter()
            .map(|item| item.ok_or(JsonError::NotStrings))
            .collect(),
    }
}

fn parse_maybe_json(rest: &str) -> Result<Args, ParseErrorKind> {
    if rest.is_empty() {
        return Ok(Args::Empty);
    }
    match parse_json(rest) {
        Ok(values) => Ok(Args::Json(values)),
        Err(JsonError::NotStrings) => Err(ParseErrorKind::JsonNotStrings),
        Err(JsonError::NotArray | JsonError::Invalid) => Ok(Args::Values(vec![rest.to_string()])),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<Args, ParseErrorKind> {
    match parse_json(rest) {
        Ok(values) => Ok(Args::Json(values)),
        Err(JsonError::NotStrings) => Err(ParseErrorKind::JsonNotStrings),
        Err(JsonError::NotArray | JsonError::Invalid) => {
            Ok(parse_strings_whitespace_delimited(rest))
        }
    }
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`) then a maybe-JSON command.
fn parse_health_config(rest: &str) -> Result<Args, ParseErrorKind> {
    let sep = rest.find(is_go_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Args::Empty);
    }
    let typ = rest[..sep].to_string();
    let cmd = rest[sep..].trim_start_matches(is_go_space);
    Ok(match parse_maybe_json(cmd)? {
        Args::Json(values) => Args::Json(std::iter::once(typ).chain(values).collect()),
        Args::Values(values) => Args::Values(std::iter::once(typ).chain(values).collect()),
        Args::Empty | Args::Sub(_) => Args::Values(vec![typ]),
    })
}

/// Go's `encoding/json` as BuildKit uses it: `json.Unmarshal` into `[]any`.
mod json {
    /// Go's decoder nesting limit.
    const MAX_DEPTH: usize = 10000;

    struct Reader<'a> {
        s: &'a [u8],
        text: &'a str,
        i: usize,
    }

    /// Parses a JSON document that must be an array; each element is `Some(string)` or `None` for
    /// any other value. `None` overall for invalid JSON, or for a number Go cannot hold in a float64
    /// (Go reports that as an error, which makes BuildKit fall back to the shell form).
    pub(super) fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
        let mut r = Reader {
            s: text.as_bytes(),
            text,
            i: 0,
        };
        r.ws();
        if r.peek()? != b'[' {
            return None;
        }
        r.i += 1;
        let mut items = Vec::new();
        r.ws();
        if r.peek()? == b']' {
            r.i += 1;
        } else {
            loop {
                r.ws();
                if r.peek()? == b'"' {
                    items.push(Some(r.string()?));
                } else {
                    r.skip_value()?;
                    items.push(None);
                }
                r.ws();
                match r.peek()? {
                    b',' => r.i += 1,
                    b']' => {
                        r.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        r.ws();
        (r.i == r.s.len()).then_some(items)
    }

    impl Reader<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                Some(())
            } else {
                None
            }
        }

        fn hex4(&mut self) -> Option<u32> {
            let digits = self.text.get(self.i..self.i + 4)?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            self.i += 4;
            u32::from_str_radix(digits, 16).ok()
        }

        fn string(&mut self) -> Option<String> {
            self.i += 1;
            let mut out = String::new();
            loop {
                let start = self.i;
                while let Some(b) = self.peek() {
                    if b == b'"' || b == b'\\' || b < 0x20 {
                        break;
                    }
                    self.i += 1;
                }
                out.push_str(&self.text[start..self.i]);
                match self.peek()? {
                    b'"' => {
                        self.i += 1;
                        return Some(out);
                    }
                    b'\\' => {
                        self.i += 1;
                        let e = self.peek()?;
                        self.i += 1;
                        match e {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'u' => {
                                let first = self.hex4()?;
                                if (0xD800..0xE000).contains(&first) {
                                    // Go pairs a surrogate with a following `\uXXXX` when they
                                    // form a valid pair, else yields U+FFFD and leaves the rest.
                                    let save = self.i;
                                    let pair = if self.s[self.i..].starts_with(b"\\u") {
                                        self.i += 2;
                                        self.hex4().and_then(|second| {
                                            ((0xD800..0xDC00).contains(&first)
                                                && (0xDC00..0xE000).contains(&second))
                                            .then(|| {
                                                0x10000
                                                    + ((first - 0xD800) << 10)
                                                    + (second - 0xDC00)
                                            })
                                        })
                                    } else {
                                        None
                                    };
                                    match pair.and_then(char::from_u32) {
                                        Some(c) => out.push(c),
                                        None => {
                                            self.i = save;
                                            out.push('\u{fffd}');
                                        }
                                    }
                                } else {
                                    out.push(char::from_u32(first)?);
                                }
                            }
                            _ => return None,
                        }
                    }
                    _ => return None,
                }
            }
        }

        fn number(&mut self) -> Option<()> {
            let start = self.i;
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            match self.peek()? {
                b'0' => self.i += 1,
                b'1'..=b'9' => {
                    while matches!(self.peek(), Some(b'0'..=b'9')) {
                        self.i += 1;
                    }
                }
                _ => return None,
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if !matches!(self.peek(), Some(b'0'..=b'9')) {
                    return None;
                }
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if !matches!(self.peek(), Some(b'0'..=b'9')) {
                    return None;
                }
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            let value: f64 = self.text[start..self.i].parse().ok()?;
            value.is_finite().then_some(())
        }

        /// Skips any value without recursion (nesting is tracked on a stack).
        fn skip_value(&mut self) -> Option<()> {
            // Depth 1 is the top-level array we are inside of.
            let mut stack: Vec<u8> = Vec::new();
            loop {
                self.ws();
                // A value.
                match self.peek()? {
                    b'"' => {
                        self.string()?;
                    }
                    b'{' | b'[' => {
                        let open = self.peek()?;
                        self.i += 1;
                        if stack.len() + 2 > MAX_DEPTH {
                            return None;
                        }
                        stack.push(open);
                        self.ws();
                        let close = if open == b'{' { b'}' } else { b']' };
                        if self.peek()? == close {
                            self.i += 1;
                            stack.pop();
                        } else {
                            if open == b'{' {
                                self.key()?;
                            }
                            continue;
                        }
                    }
                    b't' => self.literal(b"true")?,
                    b'f' => self.literal(b"false")?,
                    b'n' => self.literal(b"null")?,
                    _ => self.number()?,
                }
                // After a value: close containers or move to the next element.
                loop {
                    let Some(&top) = stack.last() else {
                        return Some(());
                    };
                    self.ws();
                    let close = if top == b'{' { b'}' } else { b']' };
                    match self.peek()? {
                        b',' => {
                            self.i += 1;
                            if top == b'{' {
                                self.ws();
                                self.key()?;
                            }
                            break;
                        }
                        c if c == close => {
                            self.i += 1;
                            stack.pop();
                        }
                        _ => return None,
                    }
                }
            }
        }

        /// An object key and its colon.
        fn key(&mut self) -> Option<()> {
            if self.peek()? != b'"' {
                return None;
            }
            self.string()?;
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            Some(())
        }
    }
}

/// BuildKit's `MustParseHeredoc`: the delimiter when `word` (one argument of an instruction) is
/// a heredoc marker, `<<EOF`, `<<-"EOF"`, `3<<EOF`; `None` otherwise, a word that does not lex
/// included. Only a single word after `<<` is one: `<<EOT sh -c 'cat'` is a command line.
pub fn heredoc_word(word: &str) -> Option<String> {
    heredoc::parse_heredoc(word)
        .ok()
        .flatten()
        .map(|(name, ..)| name)
}

/// Heredoc markers on an instruction line, found the way BuildKit finds them: its shell lexer
/// splits the line into words (raw quotes and escapes, `$` references kept since nothing is set),
/// and each word matching `^(\d*)<<(-?)\s*([^<]*)$` is lexed again to get the delimiter and whether
/// any part of it was quoted. Both passes are `shell.rs`'s lexer with BuildKit's flags.
mod heredoc {
    use crate::frontend::dockerfile::shell::{EmptyEnv, Lexer};

    pub(super) struct Marker {
        pub name: String,
        pub fd: u32,
        pub expand: bool,
        pub chomp: bool,
        /// Byte offset of the word in the line, and its length.
        pub offset: usize,
        pub word_len: usize,
    }

    /// Markers in order; `Err((word, offset, reason))` when a marker word does not lex.
    pub(super) fn heredocs_from_line(line: &str) -> Result<Vec<Marker>, (String, usize, String)> {
        // BuildKit lexes heredocs with a backslash escape whatever the file's `# escape=` says.
        let lexer = Lexer::new('\\')
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true);
        // BuildKit ignores a lexing failure of the whole line: no heredocs then.
        let Ok(expansion) = lexer.process(line, &EmptyEnv) else {
            return Ok(Vec::new());
        };
        let mut markers = Vec::new();
        for (word, offset) in expansion.words.into_iter().zip(expansion.word_offsets) {
            match parse_heredoc(&word) {
                Ok(Some((name, fd, expand, chomp))) => markers.push(Marker {
                    name,
                    fd,
                    expand,
                    chomp,
                    offset,
                    word_len: word.len().min(line.len() - offset),
                }),
                Ok(None) => {}
                Err(reason) => return Err((word, offset, reason)),
            }
        }
        Ok(markers)
    }

    /// BuildKit's `ParseHeredoc`: (name, fd, expand, chomp), `None` when `src` is not a heredoc word.
    pub(super) fn parse_heredoc(src: &str) -> Result<Option<(String, u32, bool, bool)>, String> {
        let digits = src.len() - src.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let Some(after) = src[digits..].strip_prefix("<<") else {
            return Ok(None);
        };
        let (chomp, after) = match after.strip_prefix('-') {
            Some(a) => (true, a),
            None => (false, after),
        };
        let rest = after.trim_start_matches(super::is_re_s);
        if rest.contains('<') || rest.is_empty() {
            return Ok(None);
        }
        // Go's ParseUint error is ignored: empty gives 0, overflow gives the maximum.
        let fd = if digits == 0 {
            0
        } else {
            src[..digits].parse::<u32>().unwrap_or(u32::MAX)
        };
        // Lexed without and then with raw quotes: a quote that only the raw pass keeps was quoting.
        let lexer = Lexer::new('\\').skip_unset_env(true);
        let lex = |lexer: Lexer| {
            lexer
                .process_words(rest, &EmptyEnv)
                .map_err(|e| e.kind.to_string())
        };
        let words = lex(lexer)?;
        if words.len() != 1 {
            return Ok(None);
        }
        let raw = lex(lexer.raw_quotes(true))?;
        if raw.len() != words.len() {
            return Err(format!(
                "internal lexing of heredoc produced inconsistent results: {rest}"
            ));
        }
        let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
        let expand = quotes(&words[0]) == quotes(&raw[0]);
        Ok(Some((words[0].clone(), fd, expand, chomp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        parse_words(s, '\\')
    }

    #[test]
    fn parse_words_matches_buildkit_table() {
        assert_eq!(words("foo"), ["foo"]);
        assert_eq!(words("foo bar"), ["foo", "bar"]);
        assert_eq!(words("foo\\ bar"), ["foo\\ bar"]);
        assert_eq!(words("foo=bar"), ["foo=bar"]);
        assert_eq!(words("foo bar 'abc xyz'"), ["foo", "bar", "'abc xyz'"]);
        assert_eq!(
            words(r#"foo bar "abc xyz""#),
            ["foo", "bar", r#""abc xyz""#]
        );
        assert_eq!(words("àöû"), ["àöû"]);
        assert_eq!(
            words(r#"föo bàr "âbc xÿz""#),
            ["föo", "bàr", r#""âbc xÿz""#]
        );
    }

    #[test]
    fn heredoc_word_helpers_match_buildkit() {
        for src in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            let parsed = heredoc::parse_heredoc(src).unwrap().unwrap();
            assert_eq!(parsed.0, "EOF", "{src}");
        }
        for src in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(heredoc::parse_heredoc(src).is_err(), "{src}");
        }
        for src in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(heredoc::parse_heredoc(src).unwrap(), None, "{src}");
        }
    }

    #[test]
    fn heredocs_from_line_matches_buildkit() {
        let names = |line: &str| -> Vec<String> {
            heredoc::heredocs_from_line(line)
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect()
        };
        assert_eq!(names("RUN <<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<-EOF"), ["EOF"]);
        // Go's lexer splits `<<-` from `EOF` here, so BuildKit finds no heredoc (its own table
        // expects EOF but its loop asserts nothing for an empty result).
        assert!(names("RUN <<- EOF").is_empty());
        assert_eq!(names("RUN << -EOF"), ["-EOF"]);
        assert_eq!(names("RUN <<'EOF'"), ["EOF"]);
        assert_eq!(names("RUN 4<<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert_eq!(names("RUN <<\u{feff}EOF"), ["EOF"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN \"<<EOF\"").is_empty());
        // The shared word buffer drops the `<<EOF` before a `${...}` with a modifier, as in Go.
        assert!(names("RUN <<EOF${x:-y}").is_empty());
    }

    #[test]
    fn directive_regex_edge_cases() {
        assert_eq!(match_directive("# escape=`"), Some(("escape", "`")));
        assert_eq!(match_directive("#syntax = a b  "), Some(("syntax", "a b")));
        assert_eq!(match_directive("# escape=   "), Some(("escape", " ")));
        assert_eq!(match_directive("# escape="), None);
        assert_eq!(match_directive("# 1x=y"), None);
        assert_eq!(match_directive("# a1 x=y"), None);
    }

    #[test]
    fn split_like_go_regexp() {
        assert_eq!(split_re_whitespace("a  b\tc", None), ["a", "b", "c"]);
        assert_eq!(split_re_whitespace("a b c", Some(2)), ["a", "b c"]);
        assert_eq!(split_re_whitespace("a\u{a0}b", None), ["a\u{a0}b"]);
    }

    #[test]
    fn json_like_go() {
        assert_eq!(
            json::parse_array(r#"["a", 1, null, {"k": [1, {}]}]"#),
            Some(vec![Some("a".into()), None, None, None])
        );
        assert_eq!(
            json::parse_array(r#"["\ud83d\ude00", "\ud800x"]"#),
            Some(vec![Some("😀".into()), Some("\u{fffd}x".into())])
        );
        assert_eq!(json::parse_array("[1e999]"), None);
        assert_eq!(json::parse_array("[01]"), None);
        assert_eq!(json::parse_array("[\"a\",]"), None);
        assert_eq!(json::parse_array("[] x"), None);
        assert_eq!(json::parse_array("[\"\t\"]"), None);
        let deep = format!("[{}{}]", "[".repeat(20000), "]".repeat(20000));
        assert_eq!(json::parse_array(&deep), None);
        let ok = format!("[{}{}]", "[".repeat(100), "]".repeat(100));
        assert_eq!(json::parse_array(&ok), Some(vec![None]));
    }
}
