//! `.dockerignore` with Docker's semantics: which files of the build context are sent to the build.
//! Reading follows moby's `ignorefile.ReadAll`, matching follows `moby/patternmatcher` (its regexp
//! translation included) as fsutil's context walker applies it, parent-directory results and all.
//!
//! Unlike `.gitignore`, every pattern is anchored at the context root: `foo` excludes `foo` and
//! everything under it, never `sub/foo`. `**` spans any number of directories, `!` re-includes, and
//! the last rule that matches decides.

use std::path::{Path, PathBuf};

use crate::slashpath::clean_path;

mod regexp;
use regexp::Regex;

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
        T::Regex => Kind::Regex(Regex::parse(&re)?),
    })
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
