//! The small subset of Go's regexp syntax that Docker's translation of a `.dockerignore` pattern
//! produces (and what a user's `[...]` or `\x` passes through verbatim): parsed into nodes and
//! matched by backtracking, with quick checks first.

/// A translated pattern, with what any path it matches must have, checked first: most entries of a
/// context fail a pattern such as `*.log` on its last characters or on its depth, before the
/// backtracking matcher (which wants the path as characters) is run.
#[derive(Debug, Clone)]
pub(super) struct Regex {
    nodes: Vec<Node>,
    /// The characters every match ends with (the literals the pattern ends with).
    suffix: String,
    /// How many `/` every match holds, when the pattern fixes that: no `**`, no `.`, no class that
    /// takes a `/`, only single literals and classes that never do (as `[^/]*` from `*`).
    slashes: Option<usize>,
}

impl Regex {
    /// The Go regexp `re` (Docker's translation of a pattern).
    pub(super) fn parse(re: &str) -> Result<Regex, String> {
        let nodes = ReParser {
            s: re.chars().collect(),
            i: 0,
        }
        .parse()?;
        Ok(Regex::new(nodes))
    }

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

    pub(super) fn matches(&self, path: &str) -> bool {
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
    use super::super::{Kind, compile};
    use super::*;

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
}
