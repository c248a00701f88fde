//! Secrets kept out of what a build shows and keeps: step output, job logs, `forge serve`'s logs.

/// The most a secret may hold, as BuildKit allows (500 KiB): a secret is a token, a key or a
/// certificate bundle, and each of its lines is masked in every output line.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Refuses a secret larger than [`MAX_SECRET_BYTES`], naming it.
pub fn check_size(id: &str, value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret {id}: {} bytes, more than the {} KiB a secret may hold (BuildKit's limit)",
            value.len(),
            MAX_SECRET_BYTES / 1024
        ));
    }
    Ok(())
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
        assert!(
            e.starts_with("secret tok: 512001 bytes, more than the 500 KiB"),
            "{e}"
        );
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
}
