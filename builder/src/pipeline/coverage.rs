//! GitLab's `coverage:`: a regular expression, written between slashes, that finds a job's
//! coverage in its log. As GitLab reads it: the last line with a match that holds a number
//! counts, and there the first number of the last capture group (or of the whole match, without
//! groups), so `/TOTAL.+ (\d+%)$/` on `TOTAL  120  12  90%` gives 90.

use regex::Regex;

use super::error::PipelineError;
use super::file::{Sp, pos_of};

/// The pattern of `coverage: /RE/`, checked; an error at its place when it is not written between
/// slashes or does not compile.
pub(super) fn pattern(written: &Sp<String>, errors: &mut Vec<PipelineError>) -> Option<String> {
    let text = written.value.trim();
    let inner = text
        .strip_prefix('/')
        .and_then(|t| t.strip_suffix('/'))
        .filter(|t| !t.is_empty());
    let Some(inner) = inner else {
        errors.push(
            PipelineError::new(
                pos_of(written),
                "`coverage:` is a regular expression between slashes",
            )
            .with_hint(Some(
                "as in GitLab: `coverage: '/Coverage: \\d+\\.\\d+%/'`".into(),
            )),
        );
        return None;
    };
    match Regex::new(inner) {
        Ok(_) => Some(inner.to_string()),
        Err(e) => {
            errors.push(PipelineError::new(
                pos_of(written),
                format!(
                    "`coverage:` does not compile: {}",
                    last_line(&e.to_string())
                ),
            ));
            None
        }
    }
}

/// The regex crate's error ends with what is wrong; the lines above draw the pattern.
fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s)
}

/// Follows a job's lines for its coverage.
pub struct Coverage {
    re: Regex,
    number: Regex,
    found: Option<String>,
}

impl Coverage {
    /// `pattern` as [`pattern`] checked it.
    pub fn new(pattern: &str) -> Option<Coverage> {
        Some(Coverage {
            re: Regex::new(pattern).ok()?,
            number: Regex::new(r"\d+(?:\.\d+)?").expect("a valid pattern"),
            found: None,
        })
    }

    /// Reads one line of the log: a number found replaces what an earlier line gave. As GitLab
    /// reads a line: of its last match, the last capture group (or, without groups, the whole
    /// match), and the first number in that.
    pub fn line(&mut self, line: &str) {
        let Some(last) = self.re.captures_iter(line).last() else {
            return;
        };
        let text = last.get(last.len() - 1).map(|m| m.as_str());
        if let Some(n) = text.and_then(|t| self.number.find(t)) {
            self.found = Some(n.as_str().to_string());
        }
    }

    /// The coverage the log gave, as written there (`87.5`).
    pub fn found(&self) -> Option<&str> {
        self.found.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cover(pattern: &str, lines: &[&str]) -> Option<String> {
        let mut c = Coverage::new(pattern).unwrap();
        for l in lines {
            c.line(l);
        }
        c.found().map(str::to_string)
    }

    #[test]
    fn the_last_matching_line_and_the_first_number_in_its_match_count() {
        assert_eq!(
            cover(
                r"TOTAL.+ (\d+%)$",
                &["a 1", "TOTAL  120  12  90%", "done 3"]
            ),
            Some("90".into()),
            "the last capture group's number"
        );
        assert_eq!(
            cover(r"TOTAL.+ \d+%$", &["TOTAL  120  12  90%"]),
            Some("120".into()),
            "without groups, the first number of the whole match, as GitLab takes it"
        );
        assert_eq!(
            cover(r"(\d+)% (\d+)%", &["10% 20% 30% 40%"]),
            Some("40".into()),
            "the last match's last group"
        );
        assert_eq!(
            cover(r"\d+(?:\.\d+)?%$", &["TOTAL  120  12  90%"]),
            Some("90".into())
        );
        assert_eq!(
            cover(
                r"Coverage: \d+\.\d+",
                &["Coverage: 71.3", "x", "Coverage: 80.25 (final)"]
            ),
            Some("80.25".into())
        );
        assert_eq!(cover(r"Coverage: \d+", &["nothing here"]), None);
    }

    #[test]
    fn a_pattern_is_written_between_slashes_and_must_compile() {
        let unknown = serde_saphyr::Location::UNKNOWN;
        let sp = |s: &str| Sp::new(s.to_string(), unknown, unknown);
        let mut errors = Vec::new();
        assert_eq!(pattern(&sp(r"/\d+%/"), &mut errors), Some(r"\d+%".into()));
        assert!(errors.is_empty());
        assert_eq!(pattern(&sp(r"\d+%"), &mut errors), None);
        assert_eq!(pattern(&sp("//"), &mut errors), None);
        assert_eq!(pattern(&sp("/(unclosed/"), &mut errors), None);
        assert_eq!(errors.len(), 3);
        assert!(
            errors[2]
                .message
                .contains("does not compile: error: unclosed group"),
            "{:?}",
            errors[2]
        );
    }
}
