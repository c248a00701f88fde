//! Secrets kept out of what a build shows and keeps: step output, job logs, `forge serve`'s logs.

/// The most a secret may hold, as BuildKit allows (500 KiB): a secret is a token, a key or a
/// certificate bundle, and each of its lines is masked in every output line.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Refuses a secret larger than [`MAX_SECRET_BYTES`], naming it.
pub fn check_size(id: &str, value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret {id}: more than the {} KiB a secret may hold (BuildKit's limit)",
            MAX_SECRET_BYTES / 1024
        ));
    }
    Ok(())
}

/// A secret's file, read no further than one byte past [`MAX_SECRET_BYTES`] (enough for
/// [`check_size`] to refuse it): `/dev/zero` given as a secret is refused, not read until memory
/// runs out.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut value = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut value)?;
    Ok(value)
}

/// What is masked in a step's output: each secret whole and, since output arrives one line at a
/// time, each of its lines (a PEM key printed by `cat` would otherwise show in full). Matched
/// leftmost-longest, so a line inside a longer mask does not break it up, in one pass over each
/// output line whatever the number of masks (a secret of a million lines stays linear). Very
/// short strings are left alone, as masking them would garble unrelated output.
pub enum Masks {
    None,
    One(aho_corasick::AhoCorasick),
    /// Past what one automaton holds (billions of states): each mask in turn, longest first;
    /// slow, never a secret shown.
    Each(Vec<String>),
}

impl Masks {
    pub fn of(values: &[Vec<u8>]) -> Masks {
        let mut unique = std::collections::HashSet::new();
        for v in values {
            let text = String::from_utf8_lossy(v);
            for m in std::iter::once(text.trim()).chain(text.lines().map(str::trim)) {
                if m.len() >= 3 && !unique.contains(m) {
                    unique.insert(m.to_string());
                }
            }
        }
        // Leftmost-longest matching does not depend on the order of the masks.
        let mut masks: Vec<String> = unique.into_iter().collect();
        if masks.is_empty() {
            return Masks::None;
        }
        match aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&masks)
        {
            Ok(matcher) => Masks::One(matcher),
            Err(_) => {
                masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
                Masks::Each(masks)
            }
        }
    }

    /// `line` with every mask replaced by `****`.
    pub fn mask(&self, line: &str) -> String {
        match self {
            Masks::None => line.to_string(),
            Masks::One(matcher) => {
                let mut out = String::with_capacity(line.len());
                matcher.replace_all_with(line, &mut out, |_, _, out| {
                    out.push_str("****");
                    true
                });
                out
            }
            Masks::Each(masks) => {
                let mut line = line.to_string();
                for m in masks {
                    if line.contains(m.as_str()) {
                        line = line.replace(m.as_str(), "****");
                    }
                }
                line
            }
        }
    }
}

impl Masks {
    /// The length in bytes of the longest mask (0 without masks).
    fn longest(&self) -> usize {
        match self {
            Masks::None => 0,
            Masks::One(matcher) => matcher.max_pattern_len(),
            Masks::Each(masks) => masks.first().map_or(0, String::len),
        }
    }

    /// Where in `text` output may stop for now, at `at` or after it: past the end of every
    /// mask that starts before `at`, so none is cut there.
    fn reach(&self, text: &str, at: usize) -> usize {
        match self {
            Masks::None => at,
            Masks::One(matcher) => matcher
                .find_iter(text)
                .take_while(|m| m.start() < at)
                .map(|m| m.end())
                .fold(at, usize::max),
            Masks::Each(masks) => masks
                .iter()
                .flat_map(|m| {
                    text.match_indices(m.as_str())
                        .take_while(|(i, _)| *i < at)
                        .map(|(i, m)| i + m.len())
                })
                .fold(at, usize::max),
        }
    }
}

/// Masks one stream of output lines of which a long line comes in pieces (the runner hands on
/// a few bytes short of `MAX_LINE` bytes of a line at once, cut between characters, so that a
/// line without end does not fill memory): a
/// secret that straddles a cut would be in neither piece whole and shown in two halves. A piece
/// that may continue keeps back its last bytes (fewer than the longest mask, and never the
/// middle of a mask) and shows them with the next piece, so what is held stays bounded by the
/// longest mask whatever the line's length.
///
/// The runner does not say which pieces continue: a piece of at least `cut` bytes may (a cut
/// piece is at least `cut` bytes, `forge_runner::MIN_PIECE`, before its text is decoded, and
/// decoding never shortens it). A whole line that long only moves its last bytes to the start of
/// the next line shown.
pub struct Pieces {
    masks: std::sync::Arc<Masks>,
    cut: usize,
    held: String,
}

impl Pieces {
    pub fn new(masks: std::sync::Arc<Masks>, cut: usize) -> Pieces {
        Pieces {
            masks,
            cut,
            held: String::new(),
        }
    }

    /// The masked text to show for the output line (or piece) `line`, or `None` when all of it
    /// is held until the next piece.
    pub fn push(&mut self, line: &str) -> Option<String> {
        let may_continue = line.len() >= self.cut;
        if self.held.is_empty() && !may_continue {
            return Some(self.masks.mask(line));
        }
        let mut text = std::mem::take(&mut self.held);
        text.push_str(line);
        let keep = self.masks.longest().saturating_sub(1);
        if !may_continue || keep == 0 {
            return Some(self.masks.mask(&text));
        }
        let mut at = text.len().saturating_sub(keep);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        // A mask that starts before `at` ends inside `text` (it is at most `keep + 1` bytes),
        // so what comes next cannot change how the text up to its end is masked.
        let end = self.masks.reach(&text, at);
        self.held = text.split_off(end);
        (!text.is_empty()).then(|| self.masks.mask(&text))
    }

    /// What is still held when the stream ends.
    pub fn finish(&mut self) -> Option<String> {
        let held = std::mem::take(&mut self.held);
        (!held.is_empty()).then(|| self.masks.mask(&held))
    }
}

#[cfg(test)]
mod tests {
    use super::Masks;

    #[test]
    fn whole_secrets_and_their_lines_longest_first() {
        let masks = Masks::of(&[
            b"-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----\n".to_vec(),
            b"hunter2".to_vec(),
            b"AAAABBBBCCCC".to_vec(),
            b"ab".to_vec(),
        ]);
        assert_eq!(masks.mask("pw=hunter2!"), "pw=****!");
        assert_eq!(masks.mask("key AAAABBBBCCCC end"), "key **** end");
        assert_eq!(masks.mask("line AAAABBBB"), "line ****");
        assert_eq!(masks.mask("-----END KEY-----"), "****");
        assert_eq!(
            masks.mask("ab is too short to mask"),
            "ab is too short to mask"
        );
        assert_eq!(Masks::of(&[]).mask("nothing"), "nothing");
    }

    #[test]
    fn a_secret_past_the_limit_is_refused_by_name() {
        assert!(super::check_size("tok", &vec![0; super::MAX_SECRET_BYTES]).is_ok());
        let e = super::check_size("tok", &vec![0; super::MAX_SECRET_BYTES + 1]).unwrap_err();
        assert!(e.starts_with("secret tok: more than the 500 KiB"), "{e}");
        // A file without end is read no further than the limit allows, then refused.
        let endless = super::read_secret_file(std::path::Path::new("/dev/zero")).unwrap();
        assert_eq!(endless.len(), super::MAX_SECRET_BYTES + 1);
        assert!(super::check_size("tok", &endless).is_err());
    }

    /// A secret of many lines costs one pass per output line, not one per mask: 200,000 masks
    /// over 1,000 lines would be 200 million substring searches the old way.
    #[test]
    fn a_secret_of_many_lines_masks_every_one() {
        let secret: String = (0..200_000).map(|i| format!("line-{i:08}\n")).collect();
        let masks = Masks::of(&[secret.into_bytes()]);
        assert!(matches!(masks, Masks::One(_)));
        for i in (0..200_000).step_by(200) {
            let line = format!("got line-{i:08} here");
            assert_eq!(masks.mask(&line), "got **** here");
        }
        assert_eq!(masks.mask("line-x"), "line-x");
    }

    /// Regression (S3): the runner cuts a line at 64 KiB, and a secret across the cut was shown
    /// in two unmasked halves. At every cut position around the secret, the pieces shown mask it
    /// and, joined, give back the whole line masked.
    #[test]
    fn a_secret_across_a_cut_line_is_masked() {
        use std::sync::Arc;
        let secret = "tokvalue-ABCDEFG-123";
        let masks = Arc::new(Masks::of(&[secret.as_bytes().to_vec(), b"tok".to_vec()]));
        let cut = 64;
        for before in cut - secret.len() - 2..=cut + 2 {
            let line = format!("{}{secret}tail", "y".repeat(before));
            let mut pieces = super::Pieces::new(masks.clone(), cut);
            let mut shown = Vec::new();
            let bytes = line.as_bytes();
            for piece in bytes.chunks(cut) {
                shown.extend(pieces.push(std::str::from_utf8(piece).unwrap()));
            }
            shown.extend(pieces.finish());
            for s in &shown {
                assert!(
                    !s.contains("ABC") && !s.contains("-123"),
                    "{before}: {shown:?}"
                );
            }
            assert_eq!(shown.concat(), masks.mask(&line), "{before}");
        }
    }

    /// What a piece holds back stays below the longest mask, and lines that are whole (shorter
    /// than the cut) pass through as they are.
    #[test]
    fn pieces_hold_back_less_than_the_longest_mask() {
        use std::sync::Arc;
        let masks = Arc::new(Masks::of(&[b"0123456789".to_vec()]));
        let mut pieces = super::Pieces::new(masks, 32);
        assert_eq!(
            pieces.push("short 0123456789").as_deref(),
            Some("short ****")
        );
        let long = "x".repeat(1000);
        let shown = pieces.push(&long).unwrap();
        assert_eq!(shown.len(), 1000 - 9);
        assert_eq!(pieces.push("end").as_deref(), Some("xxxxxxxxxend"));
        assert_eq!(pieces.finish(), None);
    }
}
