//! `rules:`: the `if:` expression language and `changes:` globs. An expression is parsed once,
//! with char offsets so an error points at the column inside the expression (the check adds the
//! scalar's place in the file), and evaluated against a job's variables.
//!
//! Grammar (GitLab's subset), `||` binding loosest:
//!
//! ```text
//! expr    := and ('||' and)*
//! and     := cmp ('&&' cmp)*
//! cmp     := operand (('==' | '!=') operand | ('=~' | '!~') regex)? | '(' expr ')'
//! operand := $NAME | ${NAME} | 'text' | "text" | null
//! regex   := /pattern/flags          (flags from i, m, s; `\/` is a slash)
//! ```
//!
//! As in GitLab, an undefined variable is `null`: it equals `null`, never equals a string, never
//! matches a regex, and is false alone; a bare operand is true when it is a non-empty string.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{Regex, RegexBuilder};

use super::error::PipelineError;
use super::file::{Sp, pos_of};

/// Most nested parentheses in one expression: deeper is refused, so parsing never recurses far.
pub const MAX_EXPR_DEPTH: usize = 32;
/// Largest compiled regex (the regex crate's size limit), so a pattern cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parse error inside an expression: `offset` and `width` in chars from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub width: usize,
    pub message: String,
    pub hint: Option<String>,
    /// For an unclosed `(`, the offset where it was opened (the hint names its column).
    pub open: Option<usize>,
}

/// A value in an expression: text or `null` (an undefined variable, or the literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Var(String),
    Str(String),
    Null,
}

/// A parsed `if:` expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Eq {
        lhs: Operand,
        rhs: Operand,
        negate: bool,
    },
    Match {
        lhs: Operand,
        regex: Regex,
        negate: bool,
    },
    /// `=~ $PATTERN`: the regex is the variable's value, written `/pattern/flags` as in GitLab; a
    /// value that is not one matches nothing.
    MatchVar {
        lhs: Operand,
        pattern: String,
        negate: bool,
    },
    Truthy(Operand),
}

impl Operand {
    fn value<'a>(&'a self, vars: &'a BTreeMap<String, String>) -> Option<&'a str> {
        match self {
            Operand::Var(name) => vars.get(name).map(String::as_str),
            Operand::Str(s) => Some(s),
            Operand::Null => None,
        }
    }
}

impl Expr {
    /// Parses an `if:` expression.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut p = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let e = p.or(0)?;
        p.skip_space();
        if p.at < p.chars.len() {
            let hint = (p.chars[p.at] == '=').then_some("compare with ==, !=, =~ or !~");
            return Err(p.error(p.at, 1, "unexpected text after the expression", hint));
        }
        Ok(e)
    }

    /// The variables the expression reads.
    pub fn names(&self) -> Vec<&str> {
        fn var(o: &Operand) -> Option<&str> {
            match o {
                Operand::Var(n) => Some(n.as_str()),
                _ => None,
            }
        }
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                let mut n = a.names();
                n.extend(b.names());
                n
            }
            Expr::Eq { lhs, rhs, .. } => [var(lhs), var(rhs)].into_iter().flatten().collect(),
            Expr::Match { lhs, .. } | Expr::Truthy(lhs) => var(lhs).into_iter().collect(),
            Expr::MatchVar { lhs, pattern, .. } => {
                var(lhs).into_iter().chain([pattern.as_str()]).collect()
            }
        }
    }

    /// Whether the expression holds for `vars` (a missing variable is `null`).
    pub fn eval(&self, vars: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(vars) || b.eval(vars),
            Expr::And(a, b) => a.eval(vars) && b.eval(vars),
            Expr::Eq { lhs, rhs, negate } => (lhs.value(vars) == rhs.value(vars)) != *negate,
            Expr::Match { lhs, regex, negate } => {
                lhs.value(vars).is_some_and(|v| regex.is_match(v)) != *negate
            }
            Expr::MatchVar {
                lhs,
                pattern,
                negate,
            } => {
                let regex = vars.get(pattern).and_then(|p| regex_literal(p).ok());
                let hit = match (lhs.value(vars), regex) {
                    (Some(v), Some(re)) => re.is_match(v),
                    _ => false,
                };
                hit != *negate
            }
            Expr::Truthy(o) => o.value(vars).is_some_and(|v| !v.is_empty()),
        }
    }
}

/// Parses a lone `/pattern/flags`, as GitLab's `only: [/^release-/]` writes one.
pub fn regex_literal(text: &str) -> Result<Regex, ExprError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    let r = p.regex()?;
    p.skip_space();
    if p.at < p.chars.len() {
        return Err(p.error(p.at, 1, "unexpected text after the regex", None));
    }
    Ok(r)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn error(&self, offset: usize, width: usize, msg: &str, hint: Option<&str>) -> ExprError {
        ExprError {
            offset,
            width: width.max(1),
            message: msg.to_string(),
            hint: hint.map(str::to_string),
            open: None,
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    /// Consumes `op` if it comes next (after spaces).
    fn eat(&mut self, op: &str) -> bool {
        self.skip_space();
        let n = op.chars().count();
        let matches = self.chars.len() >= self.at + n
            && self.chars[self.at..self.at + n]
                .iter()
                .copied()
                .eq(op.chars());
        if matches {
            self.at += n;
        }
        matches
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut e = self.and(depth)?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and(depth)?));
        }
        Ok(e)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut e = self.cmp(depth)?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.cmp(depth)?));
        }
        Ok(e)
    }

    fn cmp(&mut self, depth: usize) -> Result<Expr, ExprError> {
        self.skip_space();
        let open = self.at;
        if self.eat("(") {
            if depth + 1 > MAX_EXPR_DEPTH {
                let msg = format!("expression nests parentheses deeper than {MAX_EXPR_DEPTH}");
                return Err(self.error(open, 1, &msg, None));
            }
            let e = self.or(depth + 1)?;
            if !self.eat(")") {
                let at = self.at;
                return Err(self
                    .error(at, 1, "expected `)`", Some("this `(` is not closed"))
                    .with_note(open));
            }
            return Ok(e);
        }
        let lhs = self.operand()?;
        for (op, negate) in [("==", false), ("!=", true)] {
            if self.eat(op) {
                let rhs = self.operand()?;
                return Ok(Expr::Eq { lhs, rhs, negate });
            }
        }
        for (op, negate) in [("=~", false), ("!~", true)] {
            if self.eat(op) {
                self.skip_space();
                if self.chars.get(self.at) == Some(&'$') {
                    let Operand::Var(pattern) = self.operand()? else {
                        unreachable!("an operand starting with `$` is a variable");
                    };
                    return Ok(Expr::MatchVar {
                        lhs,
                        pattern,
                        negate,
                    });
                }
                let regex = self.regex()?;
                return Ok(Expr::Match { lhs, regex, negate });
            }
        }
        Ok(Expr::Truthy(lhs))
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        self.skip_space();
        let start = self.at;
        match self.chars.get(start) {
            None => Err(self.error(start, 1, "expected a variable, a string or null", None)),
            Some('$') => {
                self.at += 1;
                let braced = self.chars.get(self.at) == Some(&'{');
                if braced {
                    self.at += 1;
                }
                let name_start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    self.at += 1;
                }
                if self.at == name_start {
                    return Err(self.error(start, 1, "expected a variable name after `$`", None));
                }
                let name: String = self.chars[name_start..self.at].iter().collect();
                if braced && !self.eat("}") {
                    let at = self.at;
                    return Err(self.error(at, 1, "expected `}` after the variable name", None));
                }
                Ok(Operand::Var(name))
            }
            Some(q @ ('\'' | '"')) => {
                let q = *q;
                let end = self.chars[start + 1..].iter().position(|c| *c == q);
                let Some(len) = end else {
                    let msg = "unterminated string";
                    return Err(self.error(start, 1, msg, Some("close it with the same quote")));
                };
                self.at = start + 1 + len + 1;
                Ok(Operand::Str(
                    self.chars[start + 1..start + 1 + len].iter().collect(),
                ))
            }
            Some(c) if c.is_alphanumeric() || *c == '_' => {
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                if word == "null" {
                    return Ok(Operand::Null);
                }
                let msg = format!("unexpected `{word}`");
                let hint = format!("write a variable as ${word} and a string as \"{word}\"");
                Err(self.error(start, self.at - start, &msg, Some(&hint)))
            }
            Some(c) => {
                let msg = format!("unexpected `{c}`: expected a variable, a string or null");
                Err(self.error(start, 1, &msg, None))
            }
        }
    }

    fn regex(&mut self) -> Result<Regex, ExprError> {
        self.skip_space();
        let start = self.at;
        if self.chars.get(start) != Some(&'/') {
            let hint = Some(
                "write the pattern between slashes, or name a variable holding one: $VAR =~ /^v[0-9]+/",
            );
            return Err(self.error(start, 1, "expected a /regex/ after `=~` or `!~`", hint));
        }
        let mut pattern = String::new();
        let mut i = start + 1;
        loop {
            match self.chars.get(i) {
                None => return Err(self.error(start, 1, "unterminated regex", None)),
                Some('/') => break,
                Some('\\') if self.chars.get(i + 1) == Some(&'/') => {
                    pattern.push('/');
                    i += 2;
                }
                Some(c) => {
                    pattern.push(*c);
                    i += 1;
                }
            }
        }
        i += 1;
        let mut builder = RegexBuilder::new(&pattern);
        builder.size_limit(REGEX_SIZE_LIMIT);
        while let Some(c) = self.chars.get(i).filter(|c| c.is_ascii_alphabetic()) {
            match c {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                _ => {
                    let msg = format!("unknown regex flag `{c}`");
                    return Err(self.error(i, 1, &msg, Some("flags are i, m and s")));
                }
            };
            i += 1;
        }
        self.at = i;
        builder.build().map_err(|e| {
            let msg = format!("invalid regex: {}", first_line(&e.to_string()));
            self.error(start, i - start, &msg, None)
        })
    }
}

impl ExprError {
    /// Remembers where an unclosed `(` was opened.
    fn with_note(mut self, open: usize) -> ExprError {
        self.open = Some(open);
        self
    }
}

/// The regex crate's errors span several lines with their own caret; the last line says what.
fn first_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map_or(s, |l| l.trim_start().trim_start_matches("error:").trim())
}

/// `changes:` globs compiled into one matcher. `*` stops at `/`, `**` crosses it, as GitLab's
/// `File.fnmatch` with `FNM_PATHNAME` does.
#[derive(Debug, Clone)]
pub struct Changes {
    set: GlobSet,
}

impl Changes {
    /// Compiles `globs`; an error gives the index of the bad glob and why.
    pub fn new<'a>(globs: impl IntoIterator<Item = &'a str>) -> Result<Changes, (usize, String)> {
        let mut b = GlobSetBuilder::new();
        for (i, g) in globs.into_iter().enumerate() {
            let glob = GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| (i, format!("invalid glob: {}", e.kind())))?;
            b.add(glob);
        }
        let set = b.build().map_err(|e| (0, format!("invalid glob: {e}")))?;
        Ok(Changes { set })
    }

    /// Whether any of the changed paths (relative to the repository root) matches.
    pub fn matches<S: AsRef<str>>(&self, changed: &[S]) -> bool {
        changed.iter().any(|p| self.set.is_match(p.as_ref()))
    }
}

/// Whether one of the located `globs` (each read through `text`) matches one of `paths`
/// (relative to the repository's top): `changes:` against the changed files, `exists:` against
/// the repository's. `true` when `paths` is not known, as GitLab decides when it cannot tell. A
/// glob that does not compile is an error at its place, and counts as a match (the file is
/// refused anyway).
pub fn located_globs_match(
    globs: &[Sp<String>],
    text: impl Fn(&str) -> &str,
    paths: Option<&[String]>,
    errors: &mut Vec<PipelineError>,
) -> bool {
    match Changes::new(globs.iter().map(|g| text(&g.value))) {
        Ok(c) => paths.is_none_or(|p| c.matches(p)),
        Err((i, msg)) => {
            let at = globs.get(i).map(pos_of).unwrap_or_default();
            errors.push(PipelineError::new(at, msg));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn eval(e: &str, v: &[(&str, &str)]) -> bool {
        Expr::parse(e).expect(e).eval(&vars(v))
    }

    /// GitLab evaluates a variable on the right of `=~`/`!~` as a regex written `/.../flags`;
    /// forge refused `=~ $PATTERN` as a missing regex.
    #[test]
    fn a_regex_may_come_from_a_variable() {
        let v = [
            ("BRANCH", "feature/x"),
            ("PAT", "/^FEATURE\\//i"),
            ("PLAIN", "feature"),
        ];
        assert!(eval("$BRANCH =~ $PAT", &v));
        assert!(!eval("$BRANCH !~ ${PAT}", &v));
        // Not a /regex/, or not defined: nothing matches.
        assert!(!eval("$BRANCH =~ $PLAIN", &v));
        assert!(!eval("$BRANCH =~ $NOPE", &v));
        assert!(eval("$BRANCH !~ $NOPE", &v));
    }

    #[test]
    fn evaluates_gitlab_style_expressions() {
        let main = [("FORGE_GIT_BRANCH", "main"), ("EMPTY", "")];
        assert!(eval("$FORGE_GIT_BRANCH == \"main\"", &main));
        assert!(eval("${FORGE_GIT_BRANCH} != 'dev'", &main));
        assert!(eval("$FORGE_GIT_BRANCH =~ /^ma/", &main));
        assert!(eval("$FORGE_GIT_BRANCH =~ /^MA/i", &main));
        assert!(eval("$FORGE_GIT_BRANCH !~ /^dev/", &main));
        assert!(eval("$UNSET == null && $FORGE_GIT_BRANCH", &main));
        assert!(!eval("$EMPTY", &main));
        assert!(!eval("$EMPTY == null", &main));
        assert!(!eval("$UNSET =~ /.*/", &main));
        assert!(eval("$UNSET !~ /.*/", &main));
        assert!(eval(
            "($A == '1' || $B == '1') && $C == '1'",
            &[("B", "1"), ("C", "1")]
        ));
        assert!(!eval(
            "($A == '1' || $B == '1') && $C == '1'",
            &[("B", "1")]
        ));
        // && binds tighter than ||.
        assert!(eval("$A == '1' || $B == '1' && $C == '1'", &[("A", "1")]));
        assert!(eval("$P =~ /a\\/b/", &[("P", "a/b")]));
    }

    fn err(e: &str) -> ExprError {
        Expr::parse(e).expect_err(e)
    }

    #[test]
    fn errors_point_inside_the_expression() {
        let e = err("$A == main");
        assert_eq!((e.offset, e.width), (6, 4));
        assert_eq!(e.message, "unexpected `main`");
        assert_eq!(err("$A == 'x' &&").offset, 12);
        assert_eq!(err("($A == 'x'").offset, 10);
        assert_eq!(
            err("$A =~ 'x'").message,
            "expected a /regex/ after `=~` or `!~`"
        );
        assert!(err("$A =~ /(/").message.starts_with("invalid regex"));
        assert_eq!(err("$A =~ /x/q").offset, 9);
        assert_eq!(err("$A == 'x' )").offset, 10);
        assert_eq!(err("'open").offset, 0);
        assert_eq!(err("$").offset, 0);
        assert_eq!(err("${A").offset, 3);
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!(
            "{}$A{}",
            "(".repeat(MAX_EXPR_DEPTH),
            ")".repeat(MAX_EXPR_DEPTH)
        );
        assert!(Expr::parse(&ok).is_ok());
        let deep = format!("{}$A{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = err(&deep);
        assert_eq!(e.offset, MAX_EXPR_DEPTH);
        assert!(e.message.contains("deeper than 32"));
    }

    #[test]
    fn changes_globs_match_paths() {
        let c = Changes::new(["src/*.rs", "docs/**", "{a,b}.txt"]).unwrap();
        assert!(c.matches(&["src/main.rs"]));
        assert!(!c.matches(&["src/x/main.rs"]));
        assert!(c.matches(&["docs/a/b/c.md"]));
        assert!(c.matches(&["README", "b.txt"]));
        assert!(!c.matches::<&str>(&[]));
        assert_eq!(Changes::new(["ok", "a[b"]).unwrap_err().0, 1);
    }
}
