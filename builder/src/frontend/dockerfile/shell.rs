//! BuildKit-compatible shell word processing: quotes, escapes, `$VAR` / `${VAR...}` expansion with every
//! modifier, and field splitting. Used by the instructions BuildKit expands (not RUN/CMD/ENTRYPOINT).
//!
//! API contract (shared by the parser and instructions modules):
//! - `Lexer::new(escape)` builds a lexer for the file's escape character.
//! - `Lexer::process_word(word, env)` expands one word to one string (no field splitting).
//! - `Lexer::process_words(word, env)` expands and splits into fields, as BuildKit's `ProcessWords`.
//! - `Env` looks a variable up; `impl Env for [(String, String)]` and for `BTreeMap<String, String>`.
//!
//! Beyond the contract: [`Lexer::process`] also reports which variables were found and which were not
//! (BuildKit's `ProcessWordWithMatches`, used for lint-style warnings), and the builder methods
//! [`Lexer::raw_quotes`], [`Lexer::raw_escapes`], [`Lexer::skip_unset_env`] and
//! [`Lexer::skip_process_quotes`] select BuildKit's `RawQuotes`, `RawEscapes`, `SkipUnsetEnv` and
//! `SkipProcessQuotes` modes. BuildKit finds heredoc markers with raw quotes, raw escapes and unset
//! variables kept (the parser does so through this lexer, with [`Expansion::word_offsets`] for its
//! spans), names RUN steps with raw quotes and unset variables kept, and expands `COPY <<EOF`
//! bodies with quotes left alone ([`Lexer::process_heredoc_body`]).
//!
//! Quirks of Go's lexer kept so that words split as BuildKit splits them: a leading byte-order mark
//! is skipped (Go's `text/scanner` does), `<<` takes the blanks after it into its word (so `<< EOF`
//! is one word), and the field being built is one buffer shared with nested `${V<op>word}` levels,
//! which reset it (so `a${V:-b}c` splits to `bc`; the unsplit result is `abc`).
//!
//! Patterns in `${V#p}`, `${V%p}` and `${V/p/r}` follow BuildKit exactly: `*`, `?` and `\` escapes of `*`,
//! `?`, `\` (plus `\}` and `\/`, whose backslash is dropped); brackets are literal characters, as in
//! BuildKit, and `*`/`?` do not match a newline (they are Go regexp `.` there).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// A variable lookup for expansion.
///
/// `get` returns `None` for an unset variable, which is distinct from a variable set to the empty
/// string (`${V-x}` and `${V:-x}` tell them apart).
pub trait Env {
    /// The value of `key`, or `None` when it is unset.
    fn get(&self, key: &str) -> Option<String>;
    /// Every variable name this environment defines, each once.
    fn keys(&self) -> Vec<String>;
}

/// A list of `(name, value)` pairs in definition order; a later pair overrides an earlier one, as
/// BuildKit's `EnvsFromSlice` does for `NAME=value` strings.
impl Env for [(String, String)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn keys(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.iter()
            .filter(|(k, _)| seen.insert(k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }

    fn keys(&self) -> Vec<String> {
        Env::keys(self.as_slice())
    }
}

impl<const N: usize> Env for [(String, String); N] {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }

    fn keys(&self) -> Vec<String> {
        Env::keys(self.as_slice())
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }

    fn keys(&self) -> Vec<String> {
        BTreeMap::keys(self).cloned().collect()
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = HashMap::keys(self).cloned().collect();
        keys.sort();
        keys
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, key: &str) -> Option<String> {
        (**self).get(key)
    }

    fn keys(&self) -> Vec<String> {
        (**self).keys()
    }
}

/// An environment with no variables (what BuildKit uses when it lexes heredoc markers).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn get(&self, _key: &str) -> Option<String> {
        None
    }

    fn keys(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellErrorKind {
    /// A `'` was opened and never closed.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` was opened and never closed.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// An inner word ended before its terminator.
    #[error("unexpected end of statement while looking for matching {0}")]
    MissingTerminator(char),
    /// `${` without its closing brace.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${V/pattern` without the `/` that starts the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{...`, `${:...`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// A modifier BuildKit does not know, e.g. `${V:=x}` or `${V.}`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?msg}` with V unset, or `${V:?msg}` with V unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The word after `?`, or BuildKit's default text.
        message: String,
    },
    /// `${V:-${V:-...}}` nested past [`MAX_NESTING`] levels. Go's goroutine stacks grow and ours do
    /// not: where BuildKit would carry on, the word is refused.
    #[error("substitutions nested too deeply")]
    NestedTooDeep,
    /// A word's expansion, or a `${V/p/r}` result, grew past [`MAX_EXPANSION`] bytes (a variable
    /// doubled by `ENV A=$A$A` again and again; nested replacements of an empty pattern multiply a
    /// value's length at every level).
    #[error("substitution result exceeds {limit} bytes")]
    ExpansionTooLarge { limit: usize },
    /// A `#`, `%` or `/` pattern that does not compile.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The pattern as written (after expansion).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A word that could not be expanded, with the offending construct's byte offset in the word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {word:?}: {kind} (at byte {position})")]
pub struct ShellError {
    /// The whole word that was being processed.
    pub word: String,
    /// Byte offset in `word` of the quote or `$` that starts the faulty construct.
    pub position: usize,
    /// What went wrong.
    pub kind: ShellErrorKind,
}

/// The full result of expanding a word (BuildKit's `ProcessWordResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The word expanded without field splitting (what [`Lexer::process_word`] returns).
    pub result: String,
    /// The word expanded and split into fields (what [`Lexer::process_words`] returns).
    pub words: Vec<String>,
    /// Where each of `words` begins in the word processed: the byte offset of the character, quote,
    /// escape or `$` that started it.
    pub word_offsets: Vec<usize>,
    /// Variables that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Variables that were referenced and unset.
    pub unmatched: BTreeSet<String>,
}

/// Expands Dockerfile words the way BuildKit's `shell.Lex` does.
///
/// A `Lexer` is cheap, immutable and may be shared; each call keeps its own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Lexer {
    /// A lexer for the Dockerfile's escape character (`\` by default, `` ` `` with `# escape=``).
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The escape character this lexer was built for.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (BuildKit's `RawQuotes`); quoting still protects the text.
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit's `RawEscapes`); escaping still protects the
    /// next character.
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written, e.g. `$X` or `${X:-y}` (BuildKit's
    /// `SkipUnsetEnv`).
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit's `SkipProcessQuotes`).
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` to one string: quotes removed, escapes applied, variables substituted, spaces
    /// kept (BuildKit's `ProcessWord`).
    pub fn process_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, ShellError> {
        self.process(word, env).map(|e| e.result)
    }

    /// Expands `word` and splits it into fields on unquoted, unescaped whitespace, including
    /// whitespace that came out of a variable (BuildKit's `ProcessWords`).
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, ShellError> {
        self.process(word, env).map(|e| e.words)
    }

    /// Expands a `COPY`/`ADD` heredoc body whose marker was unquoted, as BuildKit's `ExpandRaw` does:
    /// variables are substituted, quotes are ordinary characters (so `'$X'` is expanded too), and
    /// backslash escapes apply (`\$` gives `$`, `\\` gives `\`). BuildKit uses a backslash lexer here
    /// whatever the file's `# escape=` says, so this takes no `self`.
    pub fn process_heredoc_body<E: Env + ?Sized>(
        body: &str,
        env: &E,
    ) -> Result<String, ShellError> {
        Lexer::new('\\')
            .skip_process_quotes(true)
            .process_word(body, env)
    }

    /// Expands `word` and reports everything BuildKit's `ProcessWordWithMatches` does.
    pub fn process<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<Expansion, ShellError> {
        // Go's text/scanner skips a byte-order mark at the start of what it scans.
        let bom = usize::from(word.starts_with('\u{feff}'));
        let mut sw = ShellWord {
            lex: self,
            chars: word.char_indices().skip(bom).collect(),
            len: word.len(),
            at: 0,
            env,
            raw_escapes: self.raw_escapes,
            field: String::new(),
            field_start: None,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            // A word whose variables expand past the limit (`ENV A=$A$A` forty times doubles a
            // value to a terabyte): refused where written, not carried until memory runs out.
            Ok((result, _)) if result.len() > MAX_EXPANSION => Err(ShellError {
                word: word.to_string(),
                position: 0,
                kind: ShellErrorKind::ExpansionTooLarge {
                    limit: MAX_EXPANSION,
                },
            }),
            Ok((result, fields)) => {
                let (words, word_offsets) = fields.into_iter().unzip();
                Ok(Expansion {
                    result,
                    words,
                    word_offsets,
                    matched: sw.matched,
                    unmatched: sw.unmatched,
                })
            }
            Err(fail) => Err(ShellError {
                word: word.to_string(),
                position: fail.position,
                kind: fail.kind,
            }),
        }
    }
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

/// An error before the word it belongs to is attached.
struct Fail {
    position: usize,
    kind: ShellErrorKind,
}

fn fail<T>(position: usize, kind: ShellErrorKind) -> Result<T, Fail> {
    Err(Fail { position, kind })
}

/// Field splitting state of one level, as BuildKit's `wordsStruct`: whitespace from literal text or
/// variables ends a field, while quoted or escaped text never does. The field being built is
/// [`ShellWord::field`], shared by all levels.
#[derive(Default)]
struct Fields {
    /// Finished fields and where each began.
    words: Vec<(String, usize)>,
    in_word: bool,
}

/// Nesting of `${V<op>word}` levels past which a word is refused.
pub const MAX_NESTING: usize = 200;

struct ShellWord<'a, E: ?Sized> {
    lex: &'a Lexer,
    chars: Vec<(usize, char)>,
    len: usize,
    at: usize,
    env: &'a E,
    raw_escapes: bool,
    /// The field being built and the byte offset it began at; one for all levels, as in Go.
    field: String,
    field_start: Option<usize>,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<E: Env + ?Sized> ShellWord<'_, E> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.at += 1;
        }
        c
    }

    /// Byte offset of the next character (the word's length at the end).
    fn offset(&self) -> usize {
        self.chars.get(self.at).map_or(self.len, |&(o, _)| o)
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let v = self.env.get(name);
        if v.is_some() {
            self.matched.insert(name.to_string());
        } else {
            self.unmatched.insert(name.to_string());
        }
        v
    }

    /// Processes until `stop` (consumed) or the end of the word; `raw_escapes` applies to this level
    /// and everything nested in it, as BuildKit toggles it around `${V#...}` and `${V/...}`.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<(String, usize)>), Fail> {
        if self.depth >= MAX_NESTING {
            return fail(self.offset(), ShellErrorKind::NestedTooDeep);
        }
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        self.depth += 1;
        let r = self.stop_on_inner(stop);
        self.depth -= 1;
        self.raw_escapes = saved;
        r
    }

    /// Ends the current field on whitespace, else adds `ch` to it.
    fn add_char(&mut self, fields: &mut Fields, ch: char, at: usize) {
        if ch.is_whitespace() {
            if fields.in_word && !self.field.is_empty() {
                let start = self.field_start.take().unwrap_or(at);
                fields.words.push((std::mem::take(&mut self.field), start));
                fields.in_word = false;
            }
        } else {
            self.add_raw_str(fields, ch.encode_utf8(&mut [0; 4]), at);
        }
    }

    /// Adds `s` to the current field, whitespace included.
    fn add_raw_str(&mut self, fields: &mut Fields, s: &str, at: usize) {
        if self.field.is_empty() && !s.is_empty() {
            self.field_start = Some(at);
        }
        self.field.push_str(s);
        fields.in_word = true;
    }

    fn finish(&mut self, mut fields: Fields) -> Vec<(String, usize)> {
        if !self.field.is_empty() {
            let start = self.field_start.take().unwrap_or(0);
            fields.words.push((std::mem::take(&mut self.field), start));
        }
        fields.words
    }

    fn stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<(String, usize)>), Fail> {
        let mut result = String::new();
        // Go resets the shared field buffer here, dropping what an outer level had begun.
        self.field.clear();
        self.field_start = None;
        let mut fields = Fields::default();
        let quotes = !self.lex.skip_process_quotes;
        while let Some(ch) = self.peek() {
            let at = self.offset();
            if Some(ch) == stop {
                self.next();
                return Ok((result, self.finish(fields)));
            }
            match ch {
                '$' => {
                    let s = self.process_dollar()?;
                    result.push_str(&s);
                    for c in s.chars() {
                        self.add_char(&mut fields, c, at);
                    }
                }
                '<' => {
                    let s = self.process_possible_heredoc();
                    result.push_str(&s);
                    self.add_raw_str(&mut fields, &s, at);
                }
                '\'' if quotes => {
                    let s = self.process_single_quote()?;
                    result.push_str(&s);
                    self.add_raw_str(&mut fields, &s, at);
                }
                '"' if quotes => {
                    let s = self.process_double_quote()?;
                    result.push_str(&s);
                    self.add_raw_str(&mut fields, &s, at);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            self.add_raw_str(&mut fields, ch.encode_utf8(&mut [0; 4]), at);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped, as a line continuation would be.
                        let Some(escaped) = self.next() else { break };
                        self.add_raw_str(&mut fields, escaped.encode_utf8(&mut [0; 4]), at);
                        result.push(escaped);
                    } else {
                        self.add_char(&mut fields, ch, at);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return fail(self.offset(), ShellErrorKind::MissingTerminator(stop));
        }
        Ok((result, self.finish(fields)))
    }

    /// `<` alone, or `<<` with the blanks after it (one word with the delimiter that follows, as
    /// BuildKit's `processPossibleHeredoc` keeps `<< EOF` together).
    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            result.push(c);
            self.next();
        }
        result
    }

    fn process_single_quote(&mut self) -> Result<String, Fail> {
        let start = self.offset();
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return fail(start, ShellErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, Fail> {
        let start = self.offset();
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return fail(start, ShellErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(c) => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            result.push(c);
                        }
                        match self.peek() {
                            // The loop then reports the missing closing quote.
                            None => continue,
                            // Only these are escapable inside double quotes; elsewhere the escape
                            // character stays literal, as in sh.
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.next();
                                result.push(n);
                            }
                            Some(_) => result.push(c),
                        }
                    } else {
                        result.push(c);
                    }
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, Fail> {
        let start = self.offset();
        self.next();

        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.next();
        match self.peek() {
            None => return fail(start, ShellErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return fail(start, ShellErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return fail(start, ShellErrorKind::MissingBrace);
        };
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let (null_is_unset, op, modifier) = if ch == ':' {
                    let op = self.next();
                    let mut m = String::from(":");
                    m.extend(op);
                    (true, op, m)
                } else {
                    (false, Some(ch), ch.to_string())
                };
                let pattern_op = matches!(op, Some('#' | '%'));
                if null_is_unset && pattern_op {
                    return fail(start, ShellErrorKind::UnsupportedModifier(modifier));
                }
                let word = self.stop_on_or(start, '}', pattern_op, ShellErrorKind::MissingBrace)?;

                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset = value.is_none() || (null_is_unset && value.as_deref() == Some(""));
                match op {
                    Some('-') => Ok(if unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if unset { String::new() } else { word }),
                    Some('?') => {
                        let default = if value.is_none() {
                            "is not allowed to be unset"
                        } else if unset {
                            "is not allowed to be empty"
                        } else {
                            return Ok(value.unwrap_or_default());
                        };
                        let message = if word.is_empty() {
                            default.to_string()
                        } else {
                            word
                        };
                        fail(start, ShellErrorKind::Required { name, message })
                    }
                    Some(op @ ('#' | '%')) => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let trimmed = if op == '%' {
                            trim_suffix(pattern, &value, greedy)
                        } else {
                            trim_prefix(pattern, &value, greedy)
                        };
                        trimmed.or_else(|reason| {
                            fail(
                                start,
                                ShellErrorKind::InvalidPattern {
                                    pattern: word.clone(),
                                    reason,
                                },
                            )
                        })
                    }
                    _ => fail(start, ShellErrorKind::UnsupportedModifier(modifier)),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = self.stop_on_or(start, '/', true, ShellErrorKind::MissingSlash)?;
                let replacement =
                    self.stop_on_or(start, '}', true, ShellErrorKind::MissingBrace)?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    // BuildKit writes `${V//p/r}` back with one slash.
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let toks = compile_pattern(&pattern).or_else(|reason| {
                    fail(
                        start,
                        ShellErrorKind::InvalidPattern {
                            pattern: pattern.clone(),
                            reason,
                        },
                    )
                })?;
                replace(&toks, &value, &replacement, replace_all).map_or_else(
                    || {
                        fail(
                            start,
                            ShellErrorKind::ExpansionTooLarge {
                                limit: MAX_EXPANSION,
                            },
                        )
                    },
                    Ok,
                )
            }
            other => fail(
                start,
                ShellErrorKind::UnsupportedModifier(other.to_string()),
            ),
        }
    }

    /// An inner word up to `stop`; running off the end becomes `at_end` reported at the `$`.
    fn stop_on_or(
        &mut self,
        start: usize,
        stop: char,
        raw: bool,
        at_end: ShellErrorKind,
    ) -> Result<String, Fail> {
        match self.process_stop_on(Some(stop), raw) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => fail(start, at_end),
            Err(e) => Err(e),
        }
    }

    /// A variable name: letters, digits and `_`; a run of digits (positional) or one special
    /// parameter character when it starts with one.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return c.to_string();
            }
            if !is_letter(c) && !is_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }
}

/// Go's `unicode.IsDigit`: category Nd.
fn is_digit(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    c.is_ascii_digit() || (!c.is_ascii() && get_general_category(c) == G::DecimalNumber)
}

/// Go's `unicode.IsLetter`: category L (Lu, Ll, Lt, Lm, Lo).
fn is_letter(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    c.is_ascii_alphabetic()
        || (!c.is_ascii()
            && matches!(
                get_general_category(c),
                G::UppercaseLetter
                    | G::LowercaseLetter
                    | G::TitlecaseLetter
                    | G::ModifierLetter
                    | G::OtherLetter
            ))
}

/// One element of a substitution pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatTok {
    /// `*`: any run of characters other than a newline.
    Star,
    /// `?`: one character other than a newline.
    Any,
    /// Itself.
    Lit(char),
}

/// Reads a BuildKit substitution pattern (`convertShellPatternToRegex`).
fn compile_pattern(pattern: &str) -> Result<Vec<PatTok>, String> {
    let mut out = Vec::new();
    let mut it = pattern.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => out.push(PatTok::Star),
            '?' => out.push(PatTok::Any),
            '\\' => {
                // `\}` and `\/` only protect the delimiter of `${...}`; the backslash is not part of
                // the pattern.
                if matches!(it.peek(), Some('}' | '/')) {
                    continue;
                }
                match it.next() {
                    Some(e @ ('*' | '?' | '\\')) => out.push(PatTok::Lit(e)),
                    Some(e) => return Err(format!("invalid escape '\\{e}'")),
                    None => return Err("invalid escape at end of pattern".to_string()),
                }
            }
            c => out.push(PatTok::Lit(c)),
        }
    }
    Ok(out)
}

/// For every start position in `text`, the end of the preferred match of `toks` starting exactly
/// there (`None`: no match), with the preference order of a backtracking (leftmost-first) regex
/// engine, which is what Go's regexp reproduces: greedy stars try the longest run first, lazy ones the
/// shortest.
///
/// Built bottom-up, one row per token from the last, so it costs O(tokens x text) whatever the
/// pattern: a star at `pos` prefers, greedily, whatever the same star prefers from `pos + 1` (the
/// longer runs) before ending at `pos`, and lazily the reverse. (A top-down backtracking matcher
/// took seconds on `${V//*******/x}` over a few hundred characters: found by fuzzing.)
fn match_ends(toks: &[PatTok], text: &[char], greedy: bool) -> Vec<Option<usize>> {
    let n = text.len();
    // After the last token every position matches the empty rest.
    let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
    for tok in toks.iter().rev() {
        let mut row = vec![None; n + 1];
        for pos in (0..=n).rev() {
            row[pos] = match *tok {
                PatTok::Lit(c) => {
                    if text.get(pos) == Some(&c) {
                        next[pos + 1]
                    } else {
                        None
                    }
                }
                PatTok::Any => match text.get(pos) {
                    Some(&c) if c != '\n' => next[pos + 1],
                    _ => None,
                },
                // A star never crosses a newline: at the end of a line it can only be empty.
                PatTok::Star if pos == n || text[pos] == '\n' => next[pos],
                PatTok::Star if greedy => row[pos + 1].or(next[pos]),
                PatTok::Star => next[pos].or(row[pos + 1]),
            };
        }
        next = row;
    }
    next
}

/// `${V#p}` / `${V##p}`: removes the shortest (longest when greedy) prefix matching `pattern`.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let toks = compile_pattern(pattern)?;
    let text: Vec<char> = value.chars().collect();
    Ok(match match_ends(&toks, &text, greedy)[0] {
        Some(end) => text[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// `${V%p}` / `${V%%p}`: BuildKit reverses both the value and the pattern (keeping `\x` pairs in
/// order) so that a suffix search becomes a prefix search.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; p.len()];
    let last = p.len().saturating_sub(1);
    let mut i = 0;
    while i < p.len() {
        let o = last - i;
        if p[i] == '\\' && i != last {
            out[o - 1] = '\\';
            out[o] = p[i + 1];
            i += 2;
        } else {
            out[o] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `${V/p/r}` and `${V//p/r}`: the leftmost greedy match (every non-overlapping one for `//`) is
/// replaced, following Go's `Regexp.ReplaceAllString`, including its `$` template expansion of `r`.
/// The largest result a `${V/p/r}` substitution may produce. Without a bound, a few nested
/// replacements of an empty pattern ("billion laughs", found by the `lex` fuzz target) exhaust memory;
/// no real Dockerfile word comes near it.
pub const MAX_EXPANSION: usize = 4 << 20;

/// `None` when the result would exceed [`MAX_EXPANSION`].
fn replace(toks: &[PatTok], value: &str, replacement: &str, all: bool) -> Option<String> {
    let text: Vec<char> = value.chars().collect();
    let ends = match_ends(toks, &text, true);
    let find = |from: usize| (from..=text.len()).find_map(|s| ends[s].map(|e| (s, e)));
    let slice = |a: usize, b: usize| text[a..b].iter().collect::<String>();
    if !all {
        let out = match find(0) {
            Some((a, b)) => format!("{}{}{}", slice(0, a), replacement, slice(b, text.len())),
            None => value.to_string(),
        };
        return (out.len() <= MAX_EXPANSION).then_some(out);
    }
    let mut out = String::new();
    let mut last = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((a, b)) = find(search) else { break };
        out.push_str(&slice(last, a));
        // An empty match right after a previous match is not replaced again.
        if b > last || a == 0 {
            out.push_str(&expand_template(replacement, &slice(a, b)));
        }
        if out.len() > MAX_EXPANSION {
            return None;
        }
        last = b;
        search = if search + 1 > b { search + 1 } else { b };
    }
    out.push_str(&slice(last, text.len()));
    (out.len() <= MAX_EXPANSION).then_some(out)
}

/// Go's `Regexp.Expand` for a pattern without groups: `$$` is `$`, `$0`/`${0}` the match, any other
/// well-formed reference is empty, and a malformed `$` stays literal.
fn expand_template(template: &str, matched: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let name_len: usize = body
            .chars()
            .take_while(|&c| is_letter(c) || is_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        let closed = !braced || body[name_len..].starts_with('}');
        if name_len == 0 || !closed {
            out.push('$');
            continue;
        }
        let name = &body[..name_len];
        if name == "0" {
            out.push_str(matched);
        }
        rest = &body[name_len + usize::from(braced)..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [
            ("FOO", "xxyy"),
            ("EMPTY", ""),
            ("PWD", "/home"),
            ("SP", "a  b"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn word(w: &str) -> String {
        Lexer::new('\\')
            .process_word(w, &env())
            .unwrap_or_else(|e| panic!("{w}: {e}"))
    }

    fn err(w: &str) -> ShellError {
        Lexer::new('\\').process_word(w, &env()).expect_err(w)
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(word("${NOPE:-d}"), "d");
        assert_eq!(word("${EMPTY:-d}"), "d");
        assert_eq!(word("${EMPTY-d}"), "");
        assert_eq!(word("${NOPE-d}"), "d");
        assert_eq!(word("${FOO:+alt}"), "alt");
        assert_eq!(word("${EMPTY:+alt}"), "");
        assert_eq!(word("${EMPTY+alt}"), "alt");
        assert_eq!(word("${NOPE+alt}"), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(word("${EMPTY?m}"), "");
        let e = err("${NOPE?must be set $PWD}");
        assert_eq!(
            e.kind,
            ShellErrorKind::Required {
                name: "NOPE".into(),
                message: "must be set /home".into()
            }
        );
        assert_eq!(e.position, 0);
        let e = err("ab${EMPTY:?}");
        assert_eq!(e.position, 2);
        assert!(
            e.to_string().contains("EMPTY: is not allowed to be empty"),
            "{e}"
        );
        assert!(
            err("${NOPE:?}")
                .to_string()
                .contains("is not allowed to be unset")
        );
    }

    #[test]
    fn prefix_and_suffix_removal() {
        assert_eq!(word("${FOO#x}"), "xyy");
        assert_eq!(word("${FOO##*x}"), "yy");
        assert_eq!(word("${FOO#*x}"), "xyy");
        assert_eq!(word("${FOO%y}"), "xxy");
        assert_eq!(word("${FOO%%x*}"), "");
        assert_eq!(word("${FOO%x*}"), "x");
        assert_eq!(word("${FOO#?}"), "xyy");
        assert_eq!(word("${FOO#z}"), "xxyy");
        assert_eq!(word("${PWD#/}"), "home");
        // brackets are literal in BuildKit's patterns
        assert_eq!(word("${FOO#[x]}"), "xxyy");
        assert!(
            matches!(err("${FOO:#x}").kind, ShellErrorKind::UnsupportedModifier(m) if m == ":#")
        );
    }

    #[test]
    fn pattern_escapes() {
        let lex = Lexer::new('\\');
        let e = |v: &str| vec![("V".to_string(), v.to_string())];
        assert_eq!(lex.process_word(r"${V%%\**}", &e("xx**")).unwrap(), "xx");
        assert_eq!(lex.process_word(r"${V#?\?}", &e("???y")).unwrap(), "?y");
        assert_eq!(
            lex.process_word(r"${V%%\**\*}", &e("a***yy*")).unwrap(),
            "a"
        );
        assert_eq!(
            lex.process_word(r"${V#()[]{\}^$.\*\?|\\}", &e(r"()[]{}^$.*?|\x"))
                .unwrap(),
            "x"
        );
        assert!(matches!(
            lex.process_word(r"${V#\x}", &e("x")).unwrap_err().kind,
            ShellErrorKind::InvalidPattern { .. }
        ));
        assert_eq!(reverse_pattern(r"a\*c"), r"c\*a");
        assert_eq!(reverse_pattern(r"\\\ab"), r"b\a\\");
        assert_eq!(reverse_pattern(r"ab\"), r"\ba");
    }

    #[test]
    fn stars_do_not_cross_newlines() {
        let e = vec![("V".to_string(), "a\nb".to_string())];
        assert_eq!(Lexer::new('\\').process_word("${V#*}", &e).unwrap(), "a\nb");
        assert_eq!(Lexer::new('\\').process_word("${V##*}", &e).unwrap(), "\nb");
    }

    #[test]
    fn replacement() {
        let lex = Lexer::new('\\');
        let e = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let env1 = e(&[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")]);
        assert_eq!(
            lex.process_word("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", &env1)
                .unwrap(),
            "/foo.*/*.txt - /foo..*.txt"
        );
        let env2 = e(&[("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("R", "/")]);
        assert_eq!(
            lex.process_word("${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}", &env2)
                .unwrap(),
            "/foo/b/c.txt - /foo/c.txt"
        );
        let env3 = e(&[("FOO", "/tmp/foo.txt")]);
        assert_eq!(
            lex.process_word(r"${FOO//\//\/}", &env3).unwrap(),
            r"\/tmp\/foo.txt"
        );
        let env4 = e(&[("FOO", "xxyy"), ("BAR", "")]);
        assert_eq!(lex.process_word("${FOO/$BAR/ww}", &env4).unwrap(), "wwxxyy");
        assert_eq!(
            lex.process_word("${FOO//$BAR/-}", &env4).unwrap(),
            "-x-x-y-y-"
        );
        assert_eq!(lex.process_word("${FOO///}", &env4).unwrap(), "xxyy");
        assert_eq!(lex.process_word("${NOPE///}", &env4).unwrap(), "");
        // `//` goes through Go's template expansion, `/` inserts the replacement as it is.
        let env5 = e(&[("FOO", "xxyy"), ("R", "[$$$0${0}$1$x${y]")]);
        assert_eq!(
            lex.process_word("${FOO//x*/$R}", &env5).unwrap(),
            "[$xxyyxxyy${y]"
        );
        assert_eq!(
            lex.process_word("${FOO/x*/$R}", &env5).unwrap(),
            "[$$$0${0}$1$x${y]"
        );
        let e1 = lex.process_word("${FOO//ww}", &env4).unwrap_err();
        assert_eq!(e1.kind, ShellErrorKind::MissingSlash);
        assert!(lex.process_word("${FOO//}", &env4).is_err());
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(word("${a:-${b:-${PWD}}}"), "/home");
        assert_eq!(word("${a:-${b}}"), "");
        assert_eq!(word("${PWD:+${PWD}:}x"), "/home:x");
        assert_eq!(word(r"${a:-\${PWD}z}"), "${PWDz}");
    }

    #[test]
    fn backtick_escape() {
        let lex = Lexer::new('`');
        let e = env();
        assert_eq!(lex.process_word("a`$PWD", &e).unwrap(), "a$PWD");
        assert_eq!(
            lex.process_word(r"C:\dir\$PWD", &e).unwrap(),
            r"C:\dir\/home"
        );
        assert_eq!(lex.process_word("\"a`\"b\"", &e).unwrap(), "a\"b");
        assert_eq!(lex.process_words("a` b c", &e).unwrap(), vec!["a b", "c"]);
        assert_eq!(lex.process_word("end`", &e).unwrap(), "end");
    }

    #[test]
    fn field_splitting() {
        let lex = Lexer::new('\\');
        let e = env();
        assert_eq!(
            lex.process_words("x $SP y", &e).unwrap(),
            vec!["x", "a", "b", "y"]
        );
        assert_eq!(
            lex.process_words("x \"$SP\" y", &e).unwrap(),
            vec!["x", "a  b", "y"]
        );
        assert_eq!(
            lex.process_words("'' \"\"", &e).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(lex.process_word("x $SP y", &e).unwrap(), "x a  b y");
    }

    #[test]
    fn errors_carry_position() {
        let e = err("ab'cd");
        assert_eq!(
            (e.position, e.kind),
            (2, ShellErrorKind::UnterminatedSingleQuote)
        );
        let e = err("안\"x");
        assert_eq!(
            (e.position, e.kind.clone()),
            (3, ShellErrorKind::UnterminatedDoubleQuote)
        );
        assert_eq!(e.word, "안\"x");
        let e = err("x${PWD");
        assert_eq!((e.position, e.kind), (1, ShellErrorKind::MissingBrace));
        let e = err("x${}");
        assert_eq!((e.position, e.kind), (1, ShellErrorKind::BadSubstitution));
        let e = err("${PWD:=1}");
        assert_eq!(e.kind, ShellErrorKind::UnsupportedModifier(":=".into()));
        assert!(
            e.to_string()
                .starts_with("failed to process \"${PWD:=1}\": unsupported modifier (:=)")
        );
    }

    /// The parser's heredoc finder had its own copy of the lexer with these Go behaviours; they are
    /// this lexer's now, for every caller.
    #[test]
    fn go_lexer_quirks_the_heredoc_finder_relied_on() {
        let lex = Lexer::new('\\')
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true);
        let split = |w: &str| lex.process(w, &EmptyEnv).unwrap();
        // `<<` keeps the blanks after it in its word; a lone `<` is an ordinary character.
        let e = split("cat << EOF <x");
        assert_eq!(e.words, ["cat", "<< EOF", "<x"]);
        assert_eq!(e.word_offsets, [0, 4, 11]);
        assert_eq!(e.result, "cat << EOF <x");
        // A leading byte-order mark is skipped, as Go's text/scanner does.
        assert_eq!(split("\u{feff}<<EOF").words, ["<<EOF"]);
        // The field buffer is shared with a nested `${V<op>word}`, which resets it.
        let e = split("a${X:-b}c d");
        assert_eq!(e.result, "a${X:-b}c d");
        assert_eq!(e.words, ["${X:-b}c", "d"]);
        let env = env();
        let e = Lexer::new('\\')
            .process("he${XXX:-000}xx", env.as_slice())
            .unwrap();
        assert_eq!(
            (e.result.as_str(), e.words.as_slice()),
            ("he000xx", &["000xx".to_string()][..])
        );
        // BuildKit writes an unset `${V//p/r}` back with one slash.
        assert_eq!(split("${X//a/b}").words, ["${X/a/b}"]);
        // Nesting is bounded instead of growing the stack.
        let deep = format!(
            "{}x{}",
            "${X:-".repeat(MAX_NESTING + 1),
            "}".repeat(MAX_NESTING + 1)
        );
        assert_eq!(
            Lexer::new('\\')
                .process_word(&deep, &EmptyEnv)
                .unwrap_err()
                .kind,
            ShellErrorKind::NestedTooDeep
        );
        let fine = format!("{}x{}", "${X:-".repeat(50), "}".repeat(50));
        assert_eq!(
            Lexer::new('\\').process_word(&fine, &EmptyEnv).unwrap(),
            "x"
        );
        // Names take Go's letters and decimal digits only: `²` (No) ends a name.
        let two = vec![("A".to_string(), "v".to_string())];
        assert_eq!(
            Lexer::new('\\')
                .process_word("$A²", two.as_slice())
                .unwrap(),
            "v²"
        );
    }

    #[test]
    fn raw_modes_for_heredocs() {
        let lex = Lexer::new('\\')
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true);
        let words = lex
            .process_words("cat <<\"EOF\" <<-'E2' <<$X \\$Y", &EmptyEnv)
            .unwrap();
        assert_eq!(words, vec!["cat", "<<\"EOF\"", "<<-'E2'", "<<$X", "\\$Y"]);
        let words = lex.process_words("${A:-b} ${C}", &EmptyEnv).unwrap();
        assert_eq!(words, vec!["${A:-b}", "${C}"]);
        let body =
            Lexer::process_heredoc_body("echo \"$PWD\" '$PWD' \\$y \\\\n\\x\n", &env()).unwrap();
        assert_eq!(body, "echo \"/home\" '/home' $y \\nx\n");
        let quoted = Lexer::new('\\').skip_process_quotes(true);
        assert_eq!(quoted.process_word("'$PWD'", &env()).unwrap(), "'/home'");
    }

    #[test]
    fn matches_and_unmatched_are_reported() {
        let mut env = BTreeMap::new();
        env.insert("FOO".to_string(), "xxx".to_string());
        env.insert("BAR".to_string(), String::new());
        let r = Lexer::new('\\')
            .process("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &env)
            .unwrap();
        assert_eq!(r.result, "xxx  ccc");
        assert_eq!(
            r.matched.into_iter().collect::<Vec<_>>(),
            vec!["BAR", "FOO"]
        );
        assert_eq!(r.unmatched.into_iter().collect::<Vec<_>>(), vec!["BAZ"]);
    }

    #[test]
    fn expansion_table_with_matches() {
        // (word, env, expected result or None for an error, matched, unmatched)
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            ("x", &[("DUMMY", "d")], Some("x"), &[], &[]),
            (
                "x ${UNUSED}",
                &[("DUMMY", "d")],
                Some("x "),
                &[],
                &["UNUSED"],
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                &[("FOO", "xxx"), ("BAR", "")],
                Some("xxx bbb ccc"),
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                &[("FOO", "xxx"), ("BAR", "")],
                Some("aaa bbb "),
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                &[("FOO", "xxx"), ("BAR", "")],
                Some("aaa  "),
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            ("${BAR?bbb}", &[("BAR", "")], Some(""), &["BAR"], &[]),
            ("${BAR:?bbb}", &[("BAR", "")], None, &[], &[]),
            ("${FOO=aaa}", &[("FOO", "x")], None, &[], &[]),
            ("${FOO=}", &[], None, &[], &[]),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]),
            ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${FOO#$BAR}",
                &[("FOO", "xxyy"), ("BAR", "x")],
                Some("xyy"),
                &["BAR", "FOO"],
                &[],
            ),
            ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
            (
                "${ABC:-.}${FOO%x}${ABC:-.}",
                &[("FOO", "xxyy")],
                Some(".xxyy."),
                &["FOO"],
                &["ABC"],
            ),
            (
                "${FOO/$N/$R}",
                &[
                    ("FOO", "http://google.de"),
                    ("N", "http://"),
                    ("R", "https://"),
                ],
                Some("https://google.de"),
                &["FOO", "N", "R"],
                &[],
            ),
            (
                "${FOO/$N/} - ${FOO//$N/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("N", "/tmp")],
                Some("/tmp/bar.txt - /bar.txt"),
                &["FOO", "N"],
                &[],
            ),
            (
                "v${V:+-${V}}.tgz",
                &[("V", "v7")],
                Some("v-v7.tgz"),
                &["V"],
                &[],
            ),
            ("v${V:+-${V}}.tgz", &[("V", "")], Some("v.tgz"), &["V"], &[]),
            ("v${V:+-${V}}.tgz", &[], Some("v.tgz"), &[], &["V"]),
        ];
        let lex = Lexer::new('\\');
        for (word, env, want, matched, unmatched) in cases {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let got = lex.process(word, &env);
            match (want, got) {
                (None, Err(_)) => {}
                (None, Ok(r)) => panic!("{word}: expected an error, got {:?}", r.result),
                (Some(_), Err(e)) => panic!("{word}: {e}"),
                (Some(want), Ok(r)) => {
                    assert_eq!(r.result, *want, "{word}");
                    assert_eq!(
                        r.matched.iter().collect::<Vec<_>>(),
                        *matched,
                        "{word}: matched"
                    );
                    assert_eq!(
                        r.unmatched.iter().collect::<Vec<_>>(),
                        *unmatched,
                        "{word}: unmatched"
                    );
                }
            }
        }
    }

    #[test]
    fn env_impls() {
        let list: Vec<(String, String)> = vec![
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("A".into(), "3".into()),
        ];
        assert_eq!(Env::get(&list, "A").as_deref(), Some("3"));
        assert_eq!(Env::keys(&list), vec!["A", "B"]);
        assert_eq!(Env::get(list.as_slice(), "C"), None);
        let map: HashMap<String, String> = list.iter().cloned().collect();
        assert_eq!(Lexer::new('\\').process_word("$B", &map).unwrap(), "2");
        let dynamic: &dyn Env = &list;
        assert_eq!(Lexer::new('\\').process_word("$A", dynamic).unwrap(), "3");
        assert_eq!(Lexer::new('\\').process_word("$A", &list[..]).unwrap(), "3");
    }

    #[test]
    fn special_and_positional_parameters() {
        assert_eq!(word("$1x"), "x");
        assert_eq!(word("$$"), "");
        assert_eq!(word("$@@@"), "@@");
        assert_eq!(word("${#:-n}"), "n");
        assert_eq!(word("$."), "$.");
        assert_eq!(word("a$"), "a$");
    }

    /// Regression (found by the `lex` fuzz target): a replace pattern of many stars over a long value
    /// took seconds with a top-down backtracking matcher; the table matcher is linear in the pattern
    /// times the value, with the same preferences.
    #[test]
    fn many_star_patterns_over_long_values_match_with_regex_preferences() {
        let long = "ab".repeat(2000);
        let env = vec![("V".to_string(), long.clone())];
        let lex = Lexer::new('\\');
        let word = |w: &str| lex.process_word(w, &env).unwrap();
        // Greedy stars swallow everything: the whole value is replaced once.
        assert_eq!(word("${V/*******/x}"), "x");
        // `//` with an all-star pattern: the whole value, then the empty match at the end is not
        // replaced again (Go's ReplaceAllString).
        assert_eq!(word("${V//*******/x}"), "x");
        // A star pattern that must end in a literal: the longest run ending in `b`.
        assert_eq!(word("${V/a***b/-}"), "-");
        // Shortest and longest prefixes and suffixes with many stars.
        assert_eq!(word("${V#*****b}"), "ab".repeat(1999));
        assert_eq!(word("${V##*****a}"), "b");
        assert_eq!(word("${V%a*****}"), "ab".repeat(1999));
        assert_eq!(word("${V%%b*****}"), "a");
        // No match anywhere: the value is kept.
        assert_eq!(word("${V/*****c/x}"), long);
    }

    /// Regression (found by the `lex` fuzz target): nested `//` replacements of an empty pattern
    /// multiply the value's length at every level; past MAX_EXPANSION it is an error, not an OOM.
    #[test]
    fn nested_empty_pattern_replacements_are_bounded() {
        let env = vec![("V".to_string(), "x".repeat(100))];
        let lex = Lexer::new('\\');
        // One level is fine: a `-` before every char and at the end.
        assert_eq!(lex.process_word("${V///-}", &env).unwrap().len(), 201);
        let nested = "${V///${V///${V///${V///${V///$V}}}}}";
        let err = lex.process_word(nested, &env).unwrap_err();
        assert!(
            matches!(err.kind, ShellErrorKind::ExpansionTooLarge { limit } if limit == MAX_EXPANSION),
            "{err}"
        );
    }
}
