//! `forge build https://host/repo.git#ref:dir` (and `git://`): a git repository as the build
//! context, as `docker build` takes one. The repository is cloned with gix (no git program), one
//! commit deep, into the store's scratch space: the branch or tag `ref` names (a full commit id is
//! fetched as that revision), else the remote's HEAD. The context is `dir` inside the checkout,
//! which must stay inside it (no `..`, no symlink out); the `.git` directory is not part of it, as
//! BuildKit leaves it out by default. `file://` and local paths are refused: gix would hand those
//! to the git program.

use super::stream::StreamContext;
use super::{BuildError, Session};

/// `URL#ref:dir` split: the repository, the ref (empty: HEAD) and the directory (empty: the root).
pub(super) fn split_git_url(spec: &str) -> (&str, &str, &str) {
    let (url, fragment) = spec.split_once('#').unwrap_or((spec, ""));
    let (reference, dir) = fragment.split_once(':').unwrap_or((fragment, ""));
    (url, reference, dir)
}

fn invalid(spec: &str, why: impl std::fmt::Display) -> BuildError {
    BuildError::Invalid(format!("the git context {spec}: {why}"))
}

impl Session {
    /// Clones the repository `spec` names (`URL#ref:dir`) and makes `dir` of it the context.
    pub async fn context_from_git(&self, spec: &str) -> Result<StreamContext, BuildError> {
        let (url, reference, dir) = split_git_url(spec);
        if url.starts_with("file://") || !url.contains("://") && !url.starts_with("git@") {
            return Err(invalid(
                spec,
                "only remote repositories (https://, http://, git://, ssh://, git@) are read; \
                 give a local checkout as a directory",
            ));
        }
        let (live, _) = self.stream_dir()?;
        let checkout = live.path().join("checkout");
        let (url2, reference2, checkout2) =
            (url.to_string(), reference.to_string(), checkout.clone());
        tokio::task::spawn_blocking(move || {
            crate::pipeline::git::clone_shallow(&url2, &reference2, &checkout2)
        })
        .await
        .map_err(|e| invalid(spec, e))?
        .map_err(|e| {
            invalid(
                spec,
                format!(
                    "cloning {url}{}: {e}",
                    if reference.is_empty() {
                        String::new()
                    } else {
                        format!(" at {reference}")
                    }
                ),
            )
        })?;
        // The directory, resolved inside the checkout: a `..` or a symlink may not lead out.
        let root = checkout
            .canonicalize()
            .map_err(|e| invalid(spec, format!("{}: {e}", checkout.display())))?;
        let chosen = root
            .join(dir.trim_start_matches('/'))
            .canonicalize()
            .map_err(|e| invalid(spec, format!("the directory {dir:?}: {e}")))?;
        if !chosen.starts_with(&root) || !chosen.is_dir() {
            return Err(invalid(
                spec,
                format!("{dir:?} is not a directory inside the repository"),
            ));
        }
        std::fs::remove_dir_all(root.join(".git"))
            .map_err(|e| invalid(spec, format!("removing the clone's .git: {e}")))?;
        let context = live.path().join("context");
        std::fs::rename(&chosen, &context)
            .map_err(|e| invalid(spec, format!("{}: {e}", context.display())))?;
        Ok(StreamContext::from_dir(live, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::git::is_commit_id;

    #[test]
    fn docker_s_fragment_is_a_ref_and_a_directory() {
        assert_eq!(
            split_git_url("https://h/r.git#v1.2:docs/site"),
            ("https://h/r.git", "v1.2", "docs/site")
        );
        assert_eq!(
            split_git_url("git://h/r.git#main"),
            ("git://h/r.git", "main", "")
        );
        assert_eq!(
            split_git_url("git://h/r.git#:sub"),
            ("git://h/r.git", "", "sub")
        );
        assert_eq!(split_git_url("git://h/r.git"), ("git://h/r.git", "", ""));
        assert!(is_commit_id("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_id("main"));
    }
}
