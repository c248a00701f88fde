//! Word expansion as the lowering needs it, over an ordered `(name, value)` environment.
//!
//! Interim: a small expander covering quotes, escapes, `$V`, `${V}` and the `-`/`+`/`?` modifiers,
//! until the BuildKit-exact lexer of `shell.rs` lands; then these functions delegate to it.

pub(crate) type Env = [(String, String)];

fn lookup<'e>(env: &'e Env, k: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: &'a Env,
    raw_quotes: bool,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }

    /// Words (with field splitting on unquoted whitespace when `split`), each flagged as seen.
    fn words(&mut self, split: bool) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        while let Some(c) = self.next() {
            match c {
                c if split && c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                '\'' if !self.raw_quotes => {
                    in_word = true;
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(c) => cur.push(c),
                            None => return Err("unexpected end of statement while looking for matching single-quote".into()),
                        }
                    }
                }
                '"' if !self.raw_quotes => {
                    in_word = true;
                    loop {
                        match self.next() {
                            Some('"') => break,
                            Some('$') => cur.push_str(&self.dollar()?),
                            Some(e) if e == self.escape => match self.peek() {
                                Some(n @ ('"' | '$')) => {
                                    self.pos += 1;
                                    cur.push(n);
                                }
                                Some(n) if n == self.escape => {
                                    self.pos += 1;
                                    cur.push(n);
                                }
                                _ => cur.push(e),
                            },
                            Some(c) => cur.push(c),
                            None => return Err("unexpected end of statement while looking for matching double-quote".into()),
                        }
                    }
                }
                '$' => {
                    in_word = true;
                    let v = self.dollar()?;
                    if split {
                        let mut parts = v.split_whitespace().peekable();
                        let starts_ws = v.starts_with(char::is_whitespace);
                        if starts_ws && !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                        }
                        while let Some(p) = parts.next() {
                            cur.push_str(p);
                            if parts.peek().is_some() {
                                words.push(std::mem::take(&mut cur));
                            }
                        }
                        if v.ends_with(char::is_whitespace) && !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                            in_word = false;
                        }
                    } else {
                        cur.push_str(&v);
                    }
                }
                e if e == self.escape => {
                    in_word = true;
                    match self.next() {
                        Some(n) if self.raw_quotes && n != '$' && n != self.escape => {
                            cur.push(e);
                            cur.push(n);
                        }
                        Some(n) => cur.push(n),
                        None => cur.push(e),
                    }
                }
                c => {
                    in_word = true;
                    cur.push(c);
                }
            }
        }
        if in_word || !cur.is_empty() {
            words.push(cur);
        }
        Ok(words)
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                n.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        n
    }

    fn dollar(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err("bad substitution".into());
                }
                let value = lookup(self.env, &name);
                match self.next() {
                    Some('}') => Ok(value.unwrap_or("").to_string()),
                    Some(':') | Some('-') | Some('+') | Some('?') => {
                        self.pos -= 1;
                        let colon = self.peek() == Some(':');
                        if colon {
                            self.pos += 1;
                        }
                        let op = self.next().ok_or("bad substitution")?;
                        let word = self.until_brace()?;
                        let set = if colon {
                            value.is_some_and(|v| !v.is_empty())
                        } else {
                            value.is_some()
                        };
                        match op {
                            '-' => Ok(if set {
                                value.unwrap_or("").to_string()
                            } else {
                                word
                            }),
                            '+' => Ok(if set { word } else { String::new() }),
                            '?' if set => Ok(value.unwrap_or("").to_string()),
                            '?' => Err(format!(
                                "{name}: {}",
                                if word.is_empty() {
                                    "is not allowed to be unset"
                                } else {
                                    &word
                                }
                            )),
                            _ => Err(format!("unsupported modifier ({op}) in substitution")),
                        }
                    }
                    _ => Err(format!("unsupported modifier in substitution of {name}")),
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                Ok(lookup(self.env, &name).unwrap_or("").to_string())
            }
            _ => Ok("$".to_string()),
        }
    }

    fn until_brace(&mut self) -> Result<String, String> {
        let mut depth = 0;
        let start = self.pos;
        while let Some(c) = self.next() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    let inner: String = self.chars[start..self.pos - 1].iter().collect();
                    let mut sub = Lexer {
                        chars: inner.chars().collect(),
                        pos: 0,
                        escape: self.escape,
                        env: self.env,
                        raw_quotes: self.raw_quotes,
                    };
                    return Ok(sub.words(false)?.concat());
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        Err("syntax error: missing '}'".into())
    }
}

/// Expands one word (no field splitting), removing quotes and escapes.
pub(crate) fn expand_word(escape: char, word: &str, env: &Env) -> Result<String, String> {
    let mut l = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        env,
        raw_quotes: false,
    };
    Ok(l.words(false)?.concat())
}

/// Expands and splits into fields.
pub(crate) fn expand_words(escape: char, word: &str, env: &Env) -> Result<Vec<String>, String> {
    let mut l = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        env,
        raw_quotes: false,
    };
    l.words(true)
}

/// Expands variables in a heredoc body, keeping quotes as written.
pub(crate) fn expand_raw(data: &str, env: &Env) -> Result<String, String> {
    let mut l = Lexer {
        chars: data.chars().collect(),
        pos: 0,
        escape: '\\',
        env,
        raw_quotes: true,
    };
    Ok(l.words(false)?.concat())
}
