//! A build's source: the commit a trigger names, fetched with gix (no git program) one commit
//! deep into the build's own work folder. A `file://` repository is read in place: its commit's
//! tree is written out, since gix's file transport would run git's upload-pack.

use std::path::Path;

use forge_builder::pipeline::git::is_commit_id;

use crate::store::Request;

/// What was checked out.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The commit, 40 hex digits.
    pub commit: String,
    /// Its message's first line.
    pub message: String,
    /// The branch the repository's HEAD names, when the request named no branch, tag or commit
    /// (a build of the default branch): the build is that branch's.
    pub default_branch: Option<String>,
}

/// Fetches what `r` names from `url` into `dest` (which must not exist yet). Blocking.
pub fn fetch(url: &str, r: &Request, dest: &Path) -> Result<Checkout, String> {
    if let Some(path) = url.strip_prefix("file://") {
        return write_tree(Path::new(path), r, dest);
    }
    let reference = r
        .tag
        .as_ref()
        .map(|t| format!("refs/tags/{t}"))
        .or_else(|| r.branch.as_ref().map(|b| format!("refs/heads/{b}")));
    let wanted = r.commit.as_deref().filter(|c| is_commit_id(c));
    let mut first = clone(url, reference.as_deref(), None, dest);
    if reference.is_none()
        && wanted.is_none()
        && let Ok(head) = &mut first
    {
        head.default_branch = head_branch(dest);
    }
    let head = match first {
        Ok(head) => head,
        Err(e) if wanted.is_none() || reference.is_none() => return Err(e),
        // The ref may be gone (a deleted branch): ask for the commit itself.
        Err(_) => {
            let _ = std::fs::remove_dir_all(dest);
            return clone(url, None, wanted, dest);
        }
    };
    match wanted {
        Some(c) if !head.commit.eq_ignore_ascii_case(c) => {
            // The branch moved on since the trigger: the build is of the commit it named.
            std::fs::remove_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            clone(url, None, Some(c), dest).map_err(|e| {
                format!(
                    "{} now points at {}, and fetching {c} by its id failed: {e}",
                    reference.as_deref().unwrap_or("HEAD"),
                    head.commit
                )
            })
        }
        _ => Ok(head),
    }
}

fn clone(
    url: &str,
    reference: Option<&str>,
    commit: Option<&str>,
    dest: &Path,
) -> Result<Checkout, String> {
    let wanted = commit.or(reference).unwrap_or("");
    forge_builder::pipeline::git::clone_shallow(url, wanted, dest)?;
    let repo = gix::open_opts(dest, gix::open::Options::isolated())
        .map_err(|e| format!("opening the clone: {e}"))?;
    let head = repo
        .head_commit()
        .map_err(|e| format!("reading the checked out commit: {e}"))?;
    Ok(Checkout {
        commit: head.id.to_string(),
        message: first_line(&head),
        default_branch: None,
    })
}

/// The branch the HEAD of the repository at `repo` names (`None`: detached, or no repository).
fn head_branch(repo: &Path) -> Option<String> {
    let repo = gix::open_opts(repo, gix::open::Options::isolated()).ok()?;
    let name = repo.head_name().ok()??;
    name.as_bstr()
        .to_string()
        .strip_prefix("refs/heads/")
        .map(str::to_string)
}

fn first_line(c: &gix::Commit<'_>) -> String {
    c.message_raw_sloppy()
        .to_string()
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Writes the tree of the commit `r` names in the repository at `repo` (a bare one or a
/// checkout's) into `dest`.
fn write_tree(repo: &Path, r: &Request, dest: &Path) -> Result<Checkout, String> {
    let repo = gix::open_opts(repo, gix::open::Options::isolated())
        .map_err(|e| format!("opening {}: {e}", repo.display()))?;
    let spec = match (&r.commit, &r.tag, &r.branch) {
        (Some(c), _, _) => c.clone(),
        (None, Some(t), _) => format!("refs/tags/{t}"),
        (None, None, Some(b)) => format!("refs/heads/{b}"),
        (None, None, None) => "HEAD".to_string(),
    };
    let id = repo
        .rev_parse_single(spec.as_str())
        .map_err(|e| format!("{spec}: {e}"))?;
    let commit = id
        .object()
        .map_err(|e| e.to_string())?
        .peel_to_commit()
        .map_err(|e| format!("{spec} is not a commit: {e}"))?;
    let tree = commit.tree().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    write_entries(&repo, &tree, dest)?;
    let default_branch = match (&r.commit, &r.tag, &r.branch) {
        (None, None, None) => head_branch(repo.git_dir()),
        _ => None,
    };
    Ok(Checkout {
        commit: commit.id.to_string(),
        message: first_line(&commit),
        default_branch,
    })
}

fn write_entries(repo: &gix::Repository, tree: &gix::Tree<'_>, dir: &Path) -> Result<(), String> {
    use gix::object::tree::EntryKind;
    use std::os::unix::fs::PermissionsExt;
    let decoded = tree.decode().map_err(|e| e.to_string())?;
    for entry in &decoded.entries {
        let name = entry.filename.to_string();
        // Tree entries are single path components; refuse any that would leave `dir`.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name == ".git" {
            continue;
        }
        let path = dir.join(&name);
        let object = || {
            repo.find_object(entry.oid)
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        match entry.mode.kind() {
            EntryKind::Tree => {
                std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let sub = object()?.into_tree();
                write_entries(repo, &sub, &path)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let blob = object()?;
                std::fs::write(&path, &blob.data)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let mode = if entry.mode.kind() == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            EntryKind::Link => {
                let blob = object()?;
                let target = String::from_utf8_lossy(&blob.data).into_owned();
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            // A submodule's commit is not in this repository.
            EntryKind::Commit => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `git` as the fixture maker, with a fixed identity and no user config.
    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}");
    }

    /// Regression (serve sweep 04): a build of the default branch (the page's Rebuild, an API
    /// build naming no branch) ran with an empty FORGE_GIT_BRANCH and recorded no branch, so
    /// `only: [main]` jobs were skipped and the branch's badge never saw it.
    #[test]
    fn a_build_naming_no_branch_is_the_default_branchs() {
        if forge_testsupport::tool("git").is_none() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "trunk"]);
        std::fs::write(repo.join("a.txt"), "a\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        git(&repo, &["branch", "other"]);
        let url = format!("file://{}", repo.display());
        let none = Request {
            branch: None,
            tag: None,
            commit: None,
            message: None,
            jobs: Vec::new(),
        };
        let c = fetch(&url, &none, &tmp.path().join("w1")).unwrap();
        assert_eq!(c.default_branch.as_deref(), Some("trunk"));
        assert_eq!(c.message, "one");
        let named = Request {
            branch: Some("other".into()),
            ..none
        };
        let c = fetch(&url, &named, &tmp.path().join("w2")).unwrap();
        assert_eq!(c.default_branch, None);
    }
}
