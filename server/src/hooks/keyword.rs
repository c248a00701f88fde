//! Commit-message keywords such as `@deploy`.

use crate::hooks::Push;

/// Letters, digits and `_` continue a word; anything else (whitespace, punctuation) ends it.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `text` holds `keyword` as a whole word (case-sensitive).
fn holds_word(text: &str, keyword: &str) -> bool {
    if keyword.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(pos) = text[from..].find(keyword) {
        let start = from + pos;
        let end = start + keyword.len();
        let before_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word_char(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word_char(c));
        if before_ok && after_ok {
            return true;
        }
        // Step one character forward so overlapping occurrences are also tried.
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Whether any commit message of the push holds `keyword` as a word ("@deployer" does not hold "@deploy"; "@deploy," does).
pub fn has_keyword(push: &Push, keyword: &str) -> bool {
    push.commits.iter().any(|c| holds_word(&c.message, keyword))
}

/// The markers that ask CI to leave a push alone, as GitHub Actions, GitLab, Gitea and Travis read
/// them (any case).
const SKIP_MARKERS: &[&str] = &["[skip ci]", "[ci skip]", "[no ci]"];

/// Whether the push's head commit (its last when the head is not listed) asks to be skipped with
/// `[skip ci]`, `[ci skip]` or `[no ci]` in its message, as other CI systems honour them.
pub fn skips_ci(push: &Push) -> bool {
    let head = push
        .commits
        .iter()
        .find(|c| c.id == push.after)
        .or(push.commits.last());
    head.is_some_and(|c| {
        let message = c.message.to_lowercase();
        SKIP_MARKERS.iter().any(|m| message.contains(m))
    })
}

#[cfg(test)]
mod tests {
    use super::holds_word;

    #[test]
    fn a_head_commit_asking_to_be_skipped_is() {
        use crate::hooks::{Commit, Push};
        let push = |messages: &[&str]| Push {
            branch: "main".into(),
            clone_urls: Vec::new(),
            after: format!("c{}", messages.len() - 1),
            commits: messages
                .iter()
                .enumerate()
                .map(|(i, m)| Commit {
                    id: format!("c{i}"),
                    message: m.to_string(),
                })
                .collect(),
        };
        assert!(super::skips_ci(&push(&["docs only [skip ci]"])));
        assert!(super::skips_ci(&push(&["fix", "typo\n\n[CI SKIP]"])));
        assert!(super::skips_ci(&push(&["[no ci] wip"])));
        // Only the head commit counts: a later commit without the marker builds.
        assert!(!super::skips_ci(&push(&["[skip ci] docs", "real change"])));
        assert!(!super::skips_ci(&push(&["skip ci"])));
    }

    #[test]
    fn word_boundaries() {
        assert!(holds_word("@deploy", "@deploy"));
        assert!(holds_word("fix build @deploy", "@deploy"));
        assert!(holds_word("@deploy: now", "@deploy"));
        assert!(holds_word("(@deploy)", "@deploy"));
        assert!(holds_word("line one\n@deploy\n", "@deploy"));
        assert!(holds_word("@deployer then @deploy.", "@deploy"));
        assert!(!holds_word("@deployer", "@deploy"));
        assert!(!holds_word("@deploy_now", "@deploy"));
        assert!(!holds_word("me@deploy", "@deploy"));
        assert!(!holds_word("nothing here", "@deploy"));
        assert!(!holds_word("anything", ""));
        assert!(holds_word("é @deploy é", "@deploy"));
        assert!(!holds_word("é@deployé", "@deploy"));
    }
}
