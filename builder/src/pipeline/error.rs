//! One error type for everything wrong with a forge.yaml, from YAML syntax to a cycle among jobs:
//! each names the file, line and column, shows the offending line with a caret under the column,
//! and a hint where one helps, rendered as the Dockerfile parser renders its errors.

use std::fmt;

/// Where a reported thing sits in the file: 1-based line and column (in chars), and how many chars
/// the caret should underline (at least 1, and only within the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in chars.
    pub column: usize,
    /// Chars to underline from `column`.
    pub width: usize,
}

impl Pos {
    /// A position of `width` chars at `line`:`column`.
    pub fn new(line: usize, column: usize, width: usize) -> Pos {
        Pos {
            line: line.max(1),
            column: column.max(1),
            width: width.max(1),
        }
    }

    /// The position `chars` columns to the right, `width` wide: a place inside a scalar that
    /// starts here (a column inside an `if:` expression).
    pub fn shifted(self, chars: usize, width: usize) -> Pos {
        Pos::new(self.line, self.column + chars, width)
    }
}

/// A problem in the file: what, where, and maybe how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineError {
    /// Where the offending text starts.
    pub pos: Pos,
    /// What is wrong, lowercase, without location.
    pub message: String,
    /// A suggestion shown after the report (`did you mean script?`).
    pub hint: Option<String>,
}

impl PipelineError {
    /// An error at `pos` without a hint.
    pub fn new(pos: Pos, message: impl Into<String>) -> PipelineError {
        PipelineError {
            pos,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error with `hint` shown after it, if there is one.
    pub fn with_hint(mut self, hint: Option<String>) -> PipelineError {
        self.hint = hint;
        self
    }
}

/// Every error found in one file, with the file's name and text to render them against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineErrors {
    /// The name errors report (`forge.yaml`, or the path given with `-f`).
    pub file: String,
    /// The file's text, for the source lines under each message.
    pub source: String,
    /// The errors, in the order of their positions.
    pub errors: Vec<PipelineError>,
    /// With `include:`, the files `source` is made of, one after the other: an error is
    /// rendered in the file its line falls in, at its line there. Empty: `source` is one file.
    pub parts: Vec<Part>,
}

/// One file of a pipeline made of several (`include:`): its name, and where its lines are in
/// the text of them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub file: String,
    /// Lines of the whole text before this file's.
    pub first_line: usize,
    /// This file's lines.
    pub lines: usize,
}

impl Part {
    /// Whether the whole text's 1-based `line` is in this file.
    pub fn holds(&self, line: usize) -> bool {
        line > self.first_line && line <= self.first_line + self.lines
    }
}

impl PipelineErrors {
    /// The errors sorted by position (a check may find them in another order), one per place and
    /// message.
    pub fn new(file: &str, source: &str, mut errors: Vec<PipelineError>) -> PipelineErrors {
        errors.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.message.cmp(&b.message)));
        errors.dedup();
        PipelineErrors {
            file: file.to_string(),
            // The text positions refer to (see `normalize_breaks`).
            source: super::normalize_breaks(source).into_owned(),
            errors,
            parts: Vec::new(),
        }
    }

    /// [`PipelineErrors::new`] for the text of several files one after the other (`parts`).
    pub fn of_parts(source: &str, errors: Vec<PipelineError>, parts: Vec<Part>) -> PipelineErrors {
        let file = parts.first().map_or(String::new(), |p| p.file.clone());
        let mut e = PipelineErrors::new(&file, source, errors);
        e.parts = parts;
        e
    }

    /// The file an error at the whole text's `line` is in, and its line there.
    pub fn place(&self, line: usize) -> (&str, usize) {
        match self.parts.iter().find(|p| p.holds(line)) {
            Some(p) => (&p.file, line - p.first_line),
            None => (&self.file, line),
        }
    }

    /// Renders one error: `file:line:col: message`, the line, a caret, the hint.
    pub fn render(&self, e: &PipelineError) -> String {
        let (file, line) = self.place(e.pos.line);
        let mut out = format!("{file}:{line}:{}: {}", e.pos.column, e.message);
        if let Some(text) = self.source.lines().nth(e.pos.line - 1) {
            let number = line.to_string();
            let gutter = " ".repeat(number.len());
            // Copy tabs from the source so the caret stays under the column in any tab width.
            let mut caret: String = text
                .chars()
                .take(e.pos.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let room = text.chars().count().saturating_sub(e.pos.column - 1);
            caret.push_str(&"^".repeat(e.pos.width.min(room).max(1)));
            out.push_str(&format!("\n {number} | {text}\n {gutter} | {caret}"));
        }
        if let Some(hint) = &e.hint {
            out.push_str(&format!("\nhint: {hint}"));
        }
        out
    }
}

impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "error: {}", self.render(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for PipelineErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_dockerfile_parser() {
        let errs = PipelineErrors::new(
            "forge.yaml",
            "jobs:\n  unit:\n    scrpt: [x]\n",
            vec![
                PipelineError::new(Pos::new(3, 5, 5), "unknown key `scrpt`")
                    .with_hint(Some("did you mean script?".into())),
            ],
        );
        assert_eq!(
            errs.to_string(),
            "error: forge.yaml:3:5: unknown key `scrpt`\n 3 |     scrpt: [x]\n   |     ^^^^^\nhint: did you mean script?"
        );
    }

    #[test]
    fn a_caret_never_runs_past_its_line() {
        let errs = PipelineErrors::new(
            "f",
            "ab\n",
            vec![PipelineError::new(Pos::new(1, 2, 40), "m")],
        );
        assert!(errs.to_string().ends_with(" | ab\n   |  ^"));
        // A position past the end of the text renders without a snippet.
        let errs = PipelineErrors::new(
            "f",
            "ab\n",
            vec![PipelineError::new(Pos::new(9, 1, 1), "m")],
        );
        assert_eq!(errs.to_string(), "error: f:9:1: m");
    }
}
