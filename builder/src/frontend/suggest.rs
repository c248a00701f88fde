//! "Did you mean" support for error hints: the distance between a mistyped word and the words that
//! were possible there (instructions, flags, stage names), and the one list of instruction names the
//! parser and the typed layer both check against.

/// The instructions BuildKit's parser dispatches, in the order of its documentation, lowercase as
/// the parser matches them (BuildKit lowercases the keyword with Go's `strings.ToLower`).
pub const INSTRUCTIONS: [&str; 18] = [
    "from",
    "run",
    "cmd",
    "label",
    "maintainer",
    "expose",
    "env",
    "add",
    "copy",
    "entrypoint",
    "volume",
    "user",
    "workdir",
    "arg",
    "onbuild",
    "stopsignal",
    "healthcheck",
    "shell",
];

/// Most edits a word may be from a candidate to be suggested: BuildKit's `suggest` package takes a
/// candidate below a distance of 3 ("same as hcl").
const MAX_EDITS: usize = 2;

/// The candidate nearest to `word`, ignoring case, if it is a likely typo of it: one or two edits
/// away (none is not a typo). The first of equally near candidates wins, as in BuildKit.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let w = word.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&w, &c.to_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.filter(|(d, _)| (1..=MAX_EDITS).contains(d))
        .map(|(_, c)| c.to_string())
}

/// The instruction an unknown keyword is likely a typo of, uppercase as Dockerfiles write them.
pub fn suggest_instruction(keyword: &str) -> Option<String> {
    suggest(keyword, INSTRUCTIONS).map(|s| s.to_uppercase())
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions, each one edit
/// (`FORM` -> `FROM` is 1), counted in chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser allowed 1 edit for words of up to 3 chars and 2 above; the typed layer allowed a
    /// third of the word (at least 1), plus 1 above 5 chars. Both are now BuildKit's 2.
    #[test]
    fn up_to_two_edits_whatever_the_length() {
        assert_eq!(suggest_instruction("RUNN").as_deref(), Some("RUN"));
        assert_eq!(suggest_instruction("form").as_deref(), Some("FROM"));
        assert_eq!(suggest_instruction("WORKDR").as_deref(), Some("WORKDIR"));
        assert_eq!(suggest_instruction("EXPOES").as_deref(), Some("EXPOSE"));
        assert_eq!(suggest_instruction("XYZZY"), None);
        // Two edits on a 3-char word: both rules refused this.
        assert_eq!(suggest_instruction("UES").as_deref(), Some("USER"));
        // Two edits on a 4-char word: the typed layer's rule refused this.
        assert_eq!(suggest_instruction("KOPI").as_deref(), Some("COPY"));
        // Three edits are never a typo, however long the word.
        assert_eq!(suggest_instruction("HEALTHCHECKXXX"), None);
        assert_eq!(
            suggest("entrypoynnt", ["entrypoint"]).as_deref(),
            Some("entrypoint")
        );
        assert_eq!(suggest("entrpoynnt", ["entrypoint"]), None);
        // An exact match (in any case) is not a typo; the first nearest candidate wins.
        assert_eq!(suggest("Cache", ["cache"]), None);
        assert_eq!(
            suggest("lcked", ["locked", "lacked"]).as_deref(),
            Some("locked")
        );
    }

    #[test]
    fn transpositions_count_once() {
        assert_eq!(edit_distance("FORM", "FROM"), 1);
        assert_eq!(edit_distance("RUNN", "RUN"), 1);
        assert_eq!(edit_distance("chwon", "chown"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("héllo", "hello"), 1);
    }
}
