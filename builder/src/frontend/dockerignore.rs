//! `.dockerignore` with Docker's semantics: which files of the build context are sent to the build.
//! Reading follows moby's `ignorefile.ReadAll`, matching follows `moby/patternmatcher` (its regexp
//! translation included) as fsutil's context walker applies it, parent-directory results and all.
//!
//! Unlike `.gitignore`, every pattern is anchored at the context root: `foo` excludes `foo` and
//! everything under it, never `sub/foo`. `**` spans any number of directories, `!` re-includes, and
//! the last rule that matches decides.

use std::path::{Path, PathBuf};

use crate::slashpath::clean_path;

/// A `.dockerignore` that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum DockerignoreError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The ignore file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A line that is only `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    BareExclamation,
    /// A pattern Docker rejects (`filepath.ErrBadPattern` or a regexp that does not compile).
    #[error("syntax error in pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern, normalised.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Walking the context failed.
    #[error("walking {path}: {source}")]
    Walk {
        /// The directory or entry being read.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
}

/// The ignore file that applies to a build: `<Dockerfile>.dockerignore` beside the Dockerfile (for
/// example `app.Dockerfile.dockerignore`, or `Dockerfile.dockerignore`) wins over
/// `<context>/.dockerignore`; `None` when neither exists.
///
/// `dockerfile` is the Dockerfile's path as the user gave it (absolute, or relative to the current
/// directory); `-` (Dockerfile on stdin) only looks in the context. An empty Dockerfile-specific file
/// counts as absent, as in BuildKit's frontend.
pub fn find_ignore_file(context_dir: &Path, dockerfile: &Path) -> Option<PathBuf> {
    if dockerfile != Path::new("-")
        && let Some(name) = dockerfile.file_name()
    {
        let mut specific = name.to_os_string();
        specific.push(".dockerignore");
        let candidate = dockerfile.with_file_name(specific);
        // BuildKit reads this file through the gateway, where an empty file comes back as no data
        // and the frontend falls back to the context's file.
        if candidate.is_file() && candidate.metadata().is_ok_and(|m| m.len() > 0) {
            return Some(candidate);
        }
    }
    let candidate = context_dir.join(".dockerignore");
    candidate.is_file().then_some(candidate)
}

/// The pattern lines of an ignore file, normalised as Docker's `ignorefile.ReadAll` does: a UTF-8
/// BOM dropped, lines starting with `#` skipped (before trimming: ` #x` is a pattern), whitespace
/// trimmed, blank lines skipped, each path cleaned and a leading `/` removed; exceptions keep their
/// `!` in front.
pub fn read_patterns(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Dockerignore {
    lines: Vec<String>,
    patterns: Vec<Pattern>,
}

/// Per-pattern results for a directory, handed to its children (patternmatcher's `MatchInfo`): a
/// pattern that matched a directory matches everything below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchState(Vec<bool>);

impl Dockerignore {
    /// Parses the text of an ignore file.
    pub fn parse(text: &str) -> Result<Self, DockerignoreError> {
        Self::from_patterns(read_patterns(text))
    }

    /// Reads and parses an ignore file.
    pub fn read(path: &Path) -> Result<Self, DockerignoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| DockerignoreError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Builds a matcher from pattern lines as a local source receives them (`!` marks an
    /// exception), with patternmatcher's `New` rules: whitespace trimmed, empty lines ignored, paths
    /// cleaned, syntax checked.
    pub fn from_patterns<I, S>(lines: I) -> Result<Self, DockerignoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut me = Dockerignore::default();
        for line in lines {
            let trimmed = line.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = clean_path(trimmed);
            let (exclusion, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(DockerignoreError::BareExclamation),
                Some(rest) => (true, rest.to_string()),
                None => (false, cleaned.clone()),
            };
            let bad = |reason: String| DockerignoreError::BadPattern {
                pattern: text.clone(),
                reason,
            };
            validate_glob(&text).map_err(bad)?;
            let kind = compile(&text).map_err(bad)?;
            me.patterns.push(Pattern {
                text,
                exclusion,
                kind,
            });
            me.lines.push(cleaned);
        }
        Ok(me)
    }

    /// True when there are no patterns (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Every pattern in order, exceptions prefixed with `!`: the exclude list for the local source
    /// that transfers the context (order matters, the last match wins).
    pub fn patterns(&self) -> &[String] {
        &self.lines
    }

    /// The excluding patterns, in order.
    pub fn excludes(&self) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|p| !p.exclusion)
            .map(|p| p.text.as_str())
            .collect()
    }

    /// The re-including (`!`) patterns, in order, without their `!`.
    pub fn exceptions(&self) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .map(|p| p.text.as_str())
            .collect()
    }

    /// Whether any `!` pattern exists (without one, an excluded directory can be skipped whole).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `rel_path` (slash-separated, relative to the context root) is excluded from the
    /// context. The context root itself never is.
    ///
    /// The answer is the one fsutil's walker reaches when it arrives at the path from the root,
    /// carrying each directory's per-pattern results down to its children.
    pub fn matches(&self, rel_path: &str) -> bool {
        let cleaned = clean_path(rel_path);
        let path = cleaned.trim_start_matches('/');
        if path.is_empty() || path == "." || self.patterns.is_empty() {
            return false;
        }
        let mut state: Option<MatchState> = None;
        let mut end = 0;
        loop {
            end = path[end..].find('/').map_or(path.len(), |i| end + i);
            let (excluded, s) = self.match_with_parent(&path[..end], state.as_ref());
            if end == path.len() {
                return excluded;
            }
            state = Some(s);
            end += 1;
        }
    }

    /// One step of a walk: whether `rel_path` is excluded, given the state its parent directory
    /// produced (`None` for entries at the root, or when the parent's state is unknown: then the
    /// parents are matched afresh). Keep the returned state for the entry's children.
    pub fn match_with_parent(
        &self,
        rel_path: &str,
        parent: Option<&MatchState>,
    ) -> (bool, MatchState) {
        let mut state = vec![false; self.patterns.len()];
        let matched = self.match_step(rel_path, parent, Some(&mut state));
        (matched, MatchState(state))
    }

    /// [`Dockerignore::match_with_parent`] for an entry that has no children (not a directory):
    /// the answer alone, without the state a child would need.
    pub fn excluded_with_parent(&self, rel_path: &str, parent: Option<&MatchState>) -> bool {
        self.match_step(rel_path, parent, None)
    }

    fn match_step(
        &self,
        rel_path: &str,
        parent: Option<&MatchState>,
        mut state: Option<&mut Vec<bool>>,
    ) -> bool {
        let parent = parent.filter(|p| p.0.len() == self.patterns.len());
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut m = parent.is_some_and(|s| s.0[i]);
            if !m {
                // An inclusion cannot change an excluded path, nor an exception an included one.
                if p.exclusion != matched {
                    continue;
                }
                m = p.matches(rel_path);
                if !m && parent.is_none() {
                    m = parent_dirs(rel_path).any(|dir| p.matches(dir));
                }
            }
            if let Some(state) = state.as_deref_mut() {
                state[i] = m;
            }
            if m {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether a `!` pattern could re-include something strictly below `dir`. A walker that finds
    /// `dir` excluded must still descend when this is true, and may skip the whole subtree when it is
    /// false. Conservative: it may answer true when nothing below is actually re-included.
    pub fn may_match_below(&self, dir: &str) -> bool {
        let cleaned = clean_path(dir);
        let dir = cleaned.trim_start_matches('/');
        let comps: Vec<&str> = if dir.is_empty() || dir == "." {
            Vec::new()
        } else {
            dir.split('/').collect()
        };
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| could_reach(&p.text, &comps))
    }

    /// Walks `root` and returns the relative paths (slash-separated, sorted) the context keeps:
    /// every entry not excluded, plus the directories that lead to a re-included entry, as fsutil
    /// sends them. Symlinks are listed, not followed.
    pub fn walk(&self, root: &Path) -> Result<Vec<String>, DockerignoreError> {
        let mut out = Vec::new();
        self.walk_dir(root, "", None, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn walk_dir(
        &self,
        root: &Path,
        rel: &str,
        parent: Option<&MatchState>,
        out: &mut Vec<String>,
    ) -> Result<bool, DockerignoreError> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let walk_err = |source| DockerignoreError::Walk {
            path: dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(walk_err)? {
            let entry = entry.map_err(walk_err)?;
            let is_dir = entry.file_type().map_err(walk_err)?.is_dir();
            names.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
        }
        names.sort();
        let mut kept_any = false;
        for (name, is_dir) in names {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let (excluded, state) = self.match_with_parent(&path, parent);
            if !is_dir {
                if !excluded {
                    out.push(path);
                    kept_any = true;
                }
                continue;
            }
            if excluded && !self.may_match_below(&path) {
                continue;
            }
            let at = out.len();
            let kept_below = self.walk_dir(root, &path, Some(&state), out)?;
            // An excluded directory still appears when something inside it is re-included.
            if !excluded || kept_below {
                out.insert(at, path);
                kept_any = true;
            }
        }
        Ok(kept_any)
    }
}

/// `a/b/c` -> `a`, `a/b` (not the path itself).
fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Could the exception `pattern` match a path strictly below the directory `comps`, directly or by
/// matching one of its ancestors?
fn could_reach(pattern: &str, comps: &[&str]) -> bool {
    // Constructs that can span or hide a separator: give up and descend.
    if pattern.contains("**") || pattern.contains('\\') || pattern.contains('[') {
        return true;
    }
    let segs: Vec<&str> = pattern.split('/').collect();
    let n = segs.len().min(comps.len());
    segs.iter()
        .zip(comps)
        .take(n)
        .all(|(seg, comp)| segment_matches(seg, comp))
}

fn segment_matches(seg: &str, comp: &str) -> bool {
    match compile(seg) {
        Ok(kind) => Pattern {
            text: seg.to_string(),
            exclusion: false,
            kind,
        }
        .matches(comp),
        Err(_) => true,
    }
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    exclusion: bool,
    kind: Kind,
}

/// patternmatcher's match types: it only builds a regexp when it must, and its shortcuts are not
/// equivalent to the regexp (e.g. `**foo` is a plain suffix test that also matches `barfoo`).
#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// The pattern minus its trailing `**`.
    Prefix(String),
    /// The pattern minus its leading `**`.
    Suffix(String),
    Regex(Regex),
}

/// A translated pattern, with what any path it matches must have, checked first: most entries of a
/// context fail a pattern such as `*.log` on its last characters or on its depth, before the
/// backtracking matcher (which wants the path as characters) is run.
#[derive(Debug, Clone)]
struct Regex {
    nodes: Vec<Node>,
    /// The characters every match ends with (the literals the pattern ends with).
    suffix: String,
    /// How many `/` every match holds, when the pattern fixes that: no `**`, no `.`, no class that
    /// takes a `/`, only single literals and classes that never do (as `[^/]*` from `*`).
    slashes: Option<usize>,
}

impl Regex {
    fn new(nodes: Vec<Node>) -> Regex {
        let mut suffix: Vec<char> = nodes
            .iter()
            .rev()
            .map_while(|n| match n.atom {
                Atom::Char(c) if n.rep == Rep::One => Some(c),
                _ => None,
            })
            .collect();
        suffix.reverse();
        let fixed = nodes.iter().all(|n| match &n.atom {
            Atom::Char(_) => n.rep == Rep::One,
            class @ Atom::Class { .. } => class.accepts('/') == Some(false),
            _ => false,
        });
        let slashes = fixed.then(|| {
            nodes
                .iter()
                .filter(|n| matches!(n.atom, Atom::Char('/')))
                .count()
        });
        Regex {
            suffix: suffix.into_iter().collect(),
            slashes,
            nodes,
        }
    }

    fn matches(&self, path: &str) -> bool {
        if !path.ends_with(self.suffix.as_str())
            || self
                .slashes
                .is_some_and(|n| path.bytes().filter(|&b| b == b'/').count() != n)
        {
            return false;
        }
        // Most paths fit on the stack: matching every entry of a context allocates nothing.
        let mut stack = ['\0'; 256];
        let heap: Vec<char>;
        let text: &[char] = if path.len() <= stack.len() {
            let mut n = 0;
            for c in path.chars() {
                stack[n] = c;
                n += 1;
            }
            &stack[..n]
        } else {
            heap = path.chars().collect();
            &heap
        };
        match_seq(&self.nodes, text, 0, &mut |end| end == text.len())
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(regex) => regex.matches(path),
        }
    }
}

/// Checks pattern syntax as Go's `filepath.Match` does (Docker calls it for its error only):
/// a trailing `\`, and an unclosed or malformed `[...]`, are errors.
fn validate_glob(p: &str) -> Result<(), String> {
    let chars: Vec<char> = p.chars().collect();
    let bad = |what: &str| Err(format!("{what} (filepath.ErrBadPattern)"));
    let mut i = 0;
    // One class character (an escape included); it must be followed by more pattern.
    let class_char = |i: &mut usize| -> bool {
        if *i >= chars.len() || chars[*i] == '-' || chars[*i] == ']' {
            return false;
        }
        if chars[*i] == '\\' {
            *i += 1;
            if *i >= chars.len() {
                return false;
            }
        }
        *i += 1;
        *i < chars.len()
    };
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return bad("trailing backslash");
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                let mut ranges = 0;
                loop {
                    if chars.get(i) == Some(&']') && ranges > 0 {
                        i += 1;
                        break;
                    }
                    if !class_char(&mut i) {
                        return bad("malformed character class");
                    }
                    if chars[i] == '-' {
                        i += 1;
                        if !class_char(&mut i) {
                            return bad("malformed character range");
                        }
                    }
                    ranges += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// patternmatcher's `compile`: classify the pattern and, when needed, translate it to the regexp
/// Docker would build (`*` -> `[^/]*`, `?` -> `[^/]`, `**/` -> `(.*/)?`, ...), then parse that regexp.
fn compile(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::new();
    let mut t = T::Exact;
    let mut k = 0;
    let mut iteration = 0;
    while k < chars.len() {
        let ch = chars[k];
        k += 1;
        match ch {
            '*' if chars.get(k) == Some(&'*') => {
                k += 1;
                if chars.get(k) == Some(&'/') {
                    k += 1;
                }
                if k == chars.len() {
                    if t == T::Exact {
                        t = T::Prefix;
                    } else {
                        re.push_str(".*");
                        t = T::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    t = T::Regex;
                }
                if iteration == 0 {
                    t = T::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                t = T::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                t = T::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(k) {
                Some(&next) => {
                    k += 1;
                    re.push('\\');
                    re.push(next);
                    t = T::Regex;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(ch);
                t = T::Regex;
            }
            _ => re.push(ch),
        }
        iteration += 1;
    }
    Ok(match t {
        T::Exact => Kind::Exact,
        T::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        T::Suffix => Kind::Suffix(pattern[2..].to_string()),
        T::Regex => Kind::Regex(Regex::new(
            ReParser {
                s: re.chars().collect(),
                i: 0,
            }
            .parse()?,
        )),
    })
}

/// A node of the (small) Go regexp subset Docker's translation can produce.
#[derive(Debug, Clone)]
struct Node {
    atom: Atom,
    rep: Rep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rep {
    One,
    Opt,
    Star,
    Plus,
}

#[derive(Debug, Clone)]
enum Atom {
    Char(char),
    /// Sorted inclusive ranges; `negated` flips membership.
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    /// `.`: anything but a newline (Go's default flags).
    Dot,
    /// `^` / `\A`.
    Begin,
    /// `\z`.
    End,
    Group(Vec<Node>),
}

impl Atom {
    fn accepts(&self, c: char) -> Option<bool> {
        match self {
            Atom::Char(x) => Some(*x == c),
            Atom::Class { ranges, negated } => {
                Some(ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
            }
            Atom::Dot => Some(c != '\n'),
            _ => None,
        }
    }
}

/// Parses Go regexp syntax (Perl flags, as `regexp.Compile`) far enough for Docker's translations,
/// including what a user's `[...]` or `\x` passes through verbatim.
struct ReParser {
    s: Vec<char>,
    i: usize,
}

impl ReParser {
    fn parse(mut self) -> Result<Vec<Node>, String> {
        let nodes = self.seq()?;
        if self.i < self.s.len() {
            return Err("unexpected )".to_string());
        }
        Ok(nodes)
    }

    fn seq(&mut self) -> Result<Vec<Node>, String> {
        let mut nodes: Vec<Node> = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            let atom = match c {
                ')' => {
                    self.i -= 1;
                    break;
                }
                '(' => {
                    let inner = self.seq()?;
                    if self.s.get(self.i) != Some(&')') {
                        return Err("missing closing )".to_string());
                    }
                    self.i += 1;
                    Atom::Group(inner)
                }
                '[' => self.class()?,
                '.' => Atom::Dot,
                '^' => Atom::Begin,
                '$' => Atom::End,
                '*' | '?' | '+' => {
                    let rep = match c {
                        '*' => Rep::Star,
                        '?' => Rep::Opt,
                        _ => Rep::Plus,
                    };
                    match nodes.last_mut() {
                        Some(n) if n.rep == Rep::One => n.rep = rep,
                        Some(_) => return Err(format!("invalid nested repetition operator: {c}")),
                        None => {
                            return Err(format!("missing argument to repetition operator: {c}"));
                        }
                    }
                    continue;
                }
                '\\' => self.escape(false)?,
                c => Atom::Char(c),
            };
            nodes.push(Node {
                atom,
                rep: Rep::One,
            });
        }
        Ok(nodes)
    }

    /// After a `\`. Inside a class only character escapes and Perl classes are allowed.
    fn escape(&mut self, in_class: bool) -> Result<Atom, String> {
        let Some(&c) = self.s.get(self.i) else {
            return Err("trailing backslash at end of expression".to_string());
        };
        self.i += 1;
        let perl = |ranges: &[(char, char)], negated: bool| Atom::Class {
            ranges: ranges.to_vec(),
            negated,
        };
        const DIGIT: &[(char, char)] = &[('0', '9')];
        const SPACE: &[(char, char)] = &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')];
        const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
        Ok(match c {
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Atom::Char(c),
            'd' => perl(DIGIT, false),
            'D' => perl(DIGIT, true),
            's' => perl(SPACE, false),
            'S' => perl(SPACE, true),
            'w' => perl(WORD, false),
            'W' => perl(WORD, true),
            'A' if !in_class => Atom::Begin,
            'z' if !in_class => Atom::End,
            'a' => Atom::Char('\x07'),
            'f' => Atom::Char('\x0c'),
            'n' => Atom::Char('\n'),
            'r' => Atom::Char('\r'),
            't' => Atom::Char('\t'),
            'v' => Atom::Char('\x0b'),
            '0'..='7' => {
                // Go: `\0` starts an octal escape, `\1`-`\7` only when another octal digit follows
                // (a lone one would be a backreference, which RE2 lacks).
                let more = self.s.get(self.i).is_some_and(|d| ('0'..='7').contains(d));
                if c != '0' && !more {
                    return Err(format!("invalid escape sequence: \\{c}"));
                }
                let mut v = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.s.get(self.i).and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            self.i += 1;
                        }
                        None => break,
                    }
                }
                Atom::Char(char::from_u32(v).unwrap_or('\u{fffd}'))
            }
            'x' => {
                let digits: String = if self.s.get(self.i) == Some(&'{') {
                    let end = self.s[self.i..].iter().position(|&d| d == '}');
                    let Some(end) = end else {
                        return Err("invalid escape sequence: \\x{".to_string());
                    };
                    let d: String = self.s[self.i + 1..self.i + end].iter().collect();
                    self.i += end + 1;
                    d
                } else {
                    let d: String = self.s.iter().skip(self.i).take(2).collect();
                    self.i += 2;
                    d
                };
                let v = u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32);
                match v {
                    Some(ch) if !digits.is_empty() => Atom::Char(ch),
                    _ => return Err(format!("invalid escape sequence: \\x{digits}")),
                }
            }
            // `\b`, `\B`, `\p{..}`, `\Q..\E` and friends are valid Go but not supported here.
            c => return Err(format!("unsupported escape sequence: \\{c}")),
        })
    }

    /// After a `[`: Go's class syntax with Perl flags (`-` allowed anywhere, `]` literal when first).
    fn class(&mut self) -> Result<Atom, String> {
        let mut negated = false;
        if self.s.get(self.i) == Some(&'^') {
            negated = true;
            self.i += 1;
        }
        let mut ranges: Vec<(char, char)> = Vec::new();
        let mut first = true;
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("missing closing ]".to_string());
            };
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            if c == '[' && self.s.get(self.i + 1) == Some(&':') {
                let rest: String = self.s[self.i..].iter().collect();
                if let Some(end) = rest[2..].find(":]") {
                    let name = &rest[2..2 + end];
                    let (neg, name) = match name.strip_prefix('^') {
                        Some(n) => (true, n),
                        None => (false, name),
                    };
                    let set = posix_class(name)
                        .ok_or_else(|| format!("invalid character class range: [:{name}:]"))?;
                    ranges.extend(if neg { complement(set) } else { set.to_vec() });
                    self.i += rest[..2 + end + 2].chars().count();
                    continue;
                }
            }
            let lo = self.class_char(&mut ranges)?;
            let Some(lo) = lo else { continue };
            let mut hi = lo;
            if self.s.get(self.i) == Some(&'-') && self.s.get(self.i + 1).is_some_and(|&n| n != ']')
            {
                self.i += 1;
                match self.class_char(&mut ranges)? {
                    Some(h) => hi = h,
                    None => return Err("invalid character class range".to_string()),
                }
                if hi < lo {
                    return Err(format!("invalid character class range: {lo}-{hi}"));
                }
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        Ok(Atom::Class { ranges, negated })
    }

    /// One class member: a character (returned) or a Perl class (added to `ranges` directly).
    fn class_char(&mut self, ranges: &mut Vec<(char, char)>) -> Result<Option<char>, String> {
        let Some(&c) = self.s.get(self.i) else {
            return Err("missing closing ]".to_string());
        };
        self.i += 1;
        if c != '\\' {
            return Ok(Some(c));
        }
        match self.escape(true)? {
            Atom::Char(ch) => Ok(Some(ch)),
            Atom::Class { ranges: r, negated } => {
                ranges.extend(if negated { complement(&r) } else { r });
                Ok(None)
            }
            _ => Err("invalid escape in character class".to_string()),
        }
    }
}

fn posix_class(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "ascii" => &[('\0', '\x7f')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1f'), ('\x7f', '\x7f')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "word" => &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

/// The complement of sorted, non-overlapping ranges over all of Unicode.
fn complement(ranges: &[(char, char)]) -> Vec<(char, char)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut next: u32 = 0;
    for (lo, hi) in sorted {
        if (lo as u32) > next
            && let (Some(a), Some(b)) = (char::from_u32(next), char::from_u32(lo as u32 - 1))
        {
            out.push((a, b));
        }
        next = next.max(hi as u32 + 1);
    }
    if let Some(a) = char::from_u32(next) {
        out.push((a, char::MAX));
    }
    out
}

/// Backtracking match of `nodes` at `pos`, calling `k` with each end position until it accepts.
fn match_seq(nodes: &[Node], text: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let Some((first, rest)) = nodes.split_first() else {
        return k(pos);
    };
    match &first.atom {
        Atom::Begin => pos == 0 && match_seq(rest, text, pos, k),
        Atom::End => pos == text.len() && match_seq(rest, text, pos, k),
        Atom::Group(group) => {
            let once = |at: usize, k: &mut dyn FnMut(usize) -> bool| {
                let mut cont = |p: usize| match_seq(rest, text, p, k);
                match_seq(group, text, at, &mut cont)
            };
            match first.rep {
                Rep::One => once(pos, k),
                Rep::Opt => once(pos, k) || match_seq(rest, text, pos, k),
                Rep::Star | Rep::Plus => {
                    group_repeat(group, rest, text, pos, first.rep == Rep::Plus, k)
                }
            }
        }
        atom => {
            let mut max = pos;
            let limit = if first.rep == Rep::One || first.rep == Rep::Opt {
                pos + 1
            } else {
                text.len()
            };
            while max < limit.min(text.len()) && atom.accepts(text[max]) == Some(true) {
                max += 1;
            }
            let min = if first.rep == Rep::One || first.rep == Rep::Plus {
                pos + 1
            } else {
                pos
            };
            (min..=max).rev().any(|end| match_seq(rest, text, end, k))
        }
    }
}

/// `(group)*` / `(group)+`: each further iteration must consume something.
fn group_repeat(
    group: &[Node],
    rest: &[Node],
    text: &[char],
    pos: usize,
    at_least_once: bool,
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    let again = {
        let mut cont = |p: usize| p != pos && group_repeat(group, rest, text, p, false, k);
        match_seq(group, text, pos, &mut cont)
    };
    again || (!at_least_once && match_seq(rest, text, pos, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_translation_classifies_like_patternmatcher() {
        assert!(matches!(compile("foo/bar").unwrap(), Kind::Exact));
        assert!(matches!(compile("a.b").unwrap(), Kind::Exact));
        assert!(matches!(compile("dir/**").unwrap(), Kind::Prefix(p) if p == "dir/"));
        assert!(matches!(compile("**/dir").unwrap(), Kind::Suffix(s) if s == "/dir"));
        assert!(matches!(compile("**").unwrap(), Kind::Suffix(s) if s.is_empty()));
        assert!(matches!(compile("**/dir2/*").unwrap(), Kind::Regex(_)));
    }

    /// The checks made before the matcher (the literal end, the number of `/`) never turn away a
    /// path the matcher itself takes, and do turn away what they should.
    #[test]
    fn the_quick_checks_agree_with_the_matcher() {
        let patterns = [
            "*.log",
            "*/*.o",
            "a?c",
            "src/*/x[0-9].rs",
            "**/*.tmp",
            "dir/**/end",
            "[*]",
            "[^a]/b",
            "a\\*b",
            "x/**",
            "*",
            "?/?",
            "[/]x",
            "a[[:digit:]]",
        ];
        let paths = [
            "x.log",
            "d/x.log",
            "d/e/x.log",
            "a.o",
            "d/a.o",
            "d/e/a.o",
            "abc",
            "a/c",
            "src/m/x1.rs",
            "src/m/n/x1.rs",
            "src/x1.rs",
            "t.tmp",
            "a/b/t.tmp",
            "dir/end",
            "dir/a/b/end",
            "]",
            "[^]",
            "b/b",
            "a/b",
            "a*b",
            "x/y",
            "x",
            "/x",
            "a7",
            "",
        ];
        for pattern in patterns {
            let Kind::Regex(regex) = compile(pattern).unwrap() else {
                continue;
            };
            for path in paths {
                let text: Vec<char> = path.chars().collect();
                let full = match_seq(&regex.nodes, &text, 0, &mut |end| end == text.len());
                assert_eq!(regex.matches(path), full, "{pattern} on {path:?}");
            }
        }
        let Kind::Regex(log) = compile("*.log").unwrap() else {
            panic!("*.log needs the matcher");
        };
        assert_eq!((log.suffix.as_str(), log.slashes), (".log", Some(0)));
        let Kind::Regex(deep) = compile("dir/**/end").unwrap() else {
            panic!("dir/**/end needs the matcher");
        };
        assert_eq!((deep.suffix.as_str(), deep.slashes), ("end", None));
    }

    #[test]
    fn go_class_quirks() {
        // `[*]` becomes `[[^/]*]` in Docker's regexp: a class of `[`, `^`, `/` repeated, then `]`.
        let p = |s: &str| Pattern {
            text: s.into(),
            exclusion: false,
            kind: compile(s).unwrap(),
        };
        assert!(p("[*]").matches("]"));
        assert!(p("[*]").matches("[^]"));
        assert!(!p("[*]").matches("*"));
        assert!(p("a[[:digit:]]").matches("a7"));
        assert!(p(r"a\d").matches("a5"));
        // `^` is literal in an exact pattern but a start anchor once the pattern needs a regexp.
        assert!(p("^foo").matches("^foo"));
        assert!(p("^fo?").matches("foo"));
        assert!(!p("^fo?").matches("^fox"));
        assert!(!p("a^b?").matches("a^bc"));
        assert!(compile("[z-a]").is_err());
    }
}
