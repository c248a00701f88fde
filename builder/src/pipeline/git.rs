//! What a pipeline knows of the git repository it runs in, read with gitoxide (never the git
//! binary): the built-in variables `FORGE_GIT_SHA`, `FORGE_GIT_SHORT_SHA`, `FORGE_GIT_BRANCH` and
//! `FORGE_GIT_TAG`, and the files changed between a revision and `HEAD` for `rules: changes:`.
//!
//! Outside a repository every variable is empty, as the issue that defines them asks. Images are
//! built from the work tree, not from `HEAD`'s tree, so the files `changes:` sees are those
//! changed between the revision and `HEAD` ([`changed_since`]) and those that differ between
//! `HEAD` and the work tree ([`work_tree_changes`]): an uncommitted edit is a change too.

use std::path::Path;

/// The built-in git variables of a pipeline run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitInfo {
    /// `HEAD`'s commit, 40 hex digits; empty outside a repository or before the first commit.
    pub sha: String,
    /// Its first 8 digits (as GitLab's `CI_COMMIT_SHORT_SHA`).
    pub short_sha: String,
    /// The branch `HEAD` is on (`main`, `feature/x`); empty when `HEAD` is detached.
    pub branch: String,
    /// A tag pointing at `HEAD`'s commit; the last by name when there are several, empty when none.
    pub tag: String,
}

impl GitInfo {
    /// The variables, by name, in the order a job's environment gets them.
    pub fn variables(&self) -> [(&'static str, &str); 4] {
        [
            ("FORGE_GIT_SHA", &self.sha),
            ("FORGE_GIT_SHORT_SHA", &self.short_sha),
            ("FORGE_GIT_BRANCH", &self.branch),
            ("FORGE_GIT_TAG", &self.tag),
        ]
    }
}

/// A repository that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git repository at {dir}: {message}")]
    Repository { dir: String, message: String },
    #[error("git repository at {dir}: revision {rev:?}: {message}")]
    Revision {
        dir: String,
        rev: String,
        message: String,
    },
    /// The revision is not in the history this clone holds, and the clone is shallow: the commit
    /// may well exist, beyond the cut.
    #[error(
        "git repository at {dir}: revision {rev:?} is not in this shallow clone's history: {message}"
    )]
    Shallow {
        dir: String,
        rev: String,
        message: String,
    },
}

/// A full (40 hex digits) commit id.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Clones `url` one commit deep into `checkout` (blocking: gix's network client) and checks it
/// out: at `reference`, a branch or tag (`main`, `refs/tags/v1`), or a full commit id fetched as
/// that revision; the remote's HEAD when empty. The git program and the machine's git
/// configuration are never consulted (a `file://` URL would make gix run git's upload-pack: the
/// callers refuse or read those themselves).
pub fn clone_shallow(url: &str, reference: &str, checkout: &Path) -> Result<(), String> {
    use std::num::NonZeroU32;
    use std::sync::atomic::AtomicBool;
    // gix's http transport is a reqwest client without a provider of its own.
    forge_snapshotter::registry::roots::install_crypto_provider();
    let mut prepare = gix::clone::PrepareFetch::new(
        url,
        checkout,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| e.to_string())?
    // A remote that wants credentials it was not given fails the clone: gix would ask for them
    // on the terminal (as git does without GIT_TERMINAL_PROMPT=0), and a server's build waited
    // there until its deadline.
    .with_in_memory_config_overrides(["gitoxide.credentials.terminalPrompt=false"])
    .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
        NonZeroU32::new(1).expect("1 is not 0"),
    ));
    if is_commit_id(reference) {
        prepare = prepare
            .with_revision(Some(reference))
            .map_err(|e| e.to_string())?;
    } else if !reference.is_empty() {
        prepare = prepare
            .with_ref_name(Some(reference))
            .map_err(|e| e.to_string())?;
    }
    let interrupt = AtomicBool::new(false);
    // gix's outer error says only "Transport handshake failed": the cause (refused, not a git
    // server, authentication) is in its sources.
    let (mut checkout_step, _) = prepare
        .fetch_then_checkout(gix::progress::Discard, &interrupt)
        .map_err(|e| {
            let chain = crate::api::render_chain(&e);
            if chain.contains("obtain credentials") {
                format!(
                    "the remote wants credentials it was not given or refused (HTTP 401): give \
                     the URL a token that may read it (https://USER:TOKEN@HOST/...); {chain}"
                )
            } else {
                chain
            }
        })?;
    checkout_step
        .main_worktree(gix::progress::Discard, &interrupt)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The repository holding `dir`, or `None` when `dir` is in none.
fn open(dir: &Path) -> Result<Option<gix::Repository>, GitError> {
    let err = |message: String| GitError::Repository {
        dir: dir.display().to_string(),
        message,
    };
    use gix::discover::upwards::Error as Upwards;
    if let Err(e) = gix::discover::upwards(dir) {
        return match e.downcast_any_ref::<Upwards>() {
            Some(
                Upwards::NoGitRepository { .. }
                | Upwards::NoGitRepositoryWithinCeiling { .. }
                | Upwards::NoGitRepositoryWithinFs { .. },
            ) => Ok(None),
            _ => Err(err(e.to_string())),
        };
    }
    gix::discover(dir).map(Some).map_err(|e| err(e.to_string()))
}

/// The top of the work tree of the repository holding `dir`; `None` outside a repository (or in a
/// bare one).
pub fn work_tree(dir: &Path) -> Result<Option<std::path::PathBuf>, GitError> {
    Ok(open(dir)?.and_then(|repo| repo.workdir().map(Path::to_path_buf)))
}

/// The git variables for a pipeline run from `dir`.
pub fn describe(dir: &Path) -> Result<GitInfo, GitError> {
    let Some(repo) = open(dir)? else {
        return Ok(GitInfo::default());
    };
    let err = |message: String| GitError::Repository {
        dir: dir.display().to_string(),
        message,
    };
    // An unborn HEAD (a repository without commits yet) has no commit to name.
    let Some(head) = repo.head_id().ok().map(|id| id.detach()) else {
        return Ok(GitInfo::default());
    };
    let sha = head.to_string();
    let branch = repo
        .head_name()
        .map_err(|e| err(e.to_string()))?
        .filter(|name| name.category() == Some(gix::reference::Category::LocalBranch))
        .map(|name| name.shorten().to_string())
        .unwrap_or_default();
    let mut tags = Vec::new();
    let platform = repo.references().map_err(|e| err(e.to_string()))?;
    for r in platform.tags().map_err(|e| err(e.to_string()))? {
        let mut r = r.map_err(|e| err(e.to_string()))?;
        let name = r.name().shorten().to_string();
        // Annotated tags point at a tag object: peel to the commit.
        let Ok(id) = r.peel_to_id() else { continue };
        if id.detach() == head {
            tags.push(name);
        }
    }
    tags.sort();
    Ok(GitInfo {
        short_sha: sha[..8].to_string(),
        sha,
        branch,
        tag: tags.pop().unwrap_or_default(),
    })
}

/// Where [`changed_since`] compares `HEAD` from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// The revision's own tree: every difference from a state that was tested (a run's baseline,
    /// which a rewritten history may have left off `HEAD`'s line).
    Tree,
    /// The best common ancestor of the revision and `HEAD` (`git diff REV...HEAD`): what this
    /// line changed since it left REV, as GitLab compares a merge request's branch with its target.
    /// A revision with no common ancestor, or that names no commit, is compared as a tree.
    MergeBase,
}

/// Paths (relative to the repository's top, `/`-separated, sorted) that differ between `rev`
/// (anything `git rev-parse` takes: a branch, a tag, a sha, `HEAD~3`), compared as `compare`
/// says, and `HEAD`'s tree; a rename names both its paths. `None` outside a repository.
pub fn changed_since(
    dir: &Path,
    rev: &str,
    compare: Compare,
) -> Result<Option<Vec<String>>, GitError> {
    let Some(repo) = open(dir)? else {
        return Ok(None);
    };
    let rev_err = |rev: &str, message: String| GitError::Revision {
        dir: dir.display().to_string(),
        rev: rev.to_string(),
        message,
    };
    let tree_of = |spec: &str| {
        repo.rev_parse_single(spec)
            .map_err(|e| rev_err(spec, e.to_string()))?
            .object()
            .map_err(|e| rev_err(spec, e.to_string()))?
            .peel_to_tree()
            .map_err(|e| rev_err(spec, e.to_string()))
    };
    let new = tree_of("HEAD")?;
    let shallow = |e: GitError| match e {
        GitError::Revision { dir, rev, message } if repo.is_shallow().unwrap_or(false) => {
            GitError::Shallow { dir, rev, message }
        }
        e => e,
    };
    // In a shallow clone a revision beyond the cut (`HEAD~1` of a depth-1 clone, an older sha)
    // fails deep in gix's traversal or as "couldn't parse": whatever the reason, it is a commit
    // this clone may not have, not a mistake in the name.
    let old = tree_of(rev).map_err(shallow)?;
    let old = match compare {
        Compare::Tree => old,
        Compare::MergeBase => {
            let commit_of = |spec: &str| {
                repo.rev_parse_single(spec)
                    .ok()
                    .and_then(|id| id.object().ok())
                    .and_then(|o| o.peel_to_commit().ok())
                    .map(|c| c.id)
            };
            match (commit_of(rev), commit_of("HEAD")) {
                (Some(one), Some(two)) => match repo.merge_base(one, two) {
                    Ok(Some(base)) => {
                        let base_err =
                            |e: String| rev_err(rev, format!("its merge base with HEAD: {e}"));
                        base.object()
                            .map_err(|e| base_err(e.to_string()))?
                            .peel_to_tree()
                            .map_err(|e| base_err(e.to_string()))?
                    }
                    Ok(None) => old,
                    Err(e) => {
                        return Err(shallow(rev_err(
                            rev,
                            format!("finding its merge base with HEAD: {e}"),
                        )));
                    }
                },
                _ => old,
            }
        }
    };
    let changes = repo
        .diff_tree_to_tree(&old, &new, None)
        .map_err(|e| rev_err(rev, e.to_string()))?;
    let mut paths = Vec::new();
    for change in &changes {
        if change.entry_mode().is_tree() {
            continue;
        }
        paths.push(change.location().to_string());
        let source = change.source_location().to_string();
        if source.as_str() != change.location() {
            paths.push(source);
        }
    }
    paths.sort();
    paths.dedup();
    Ok(Some(paths))
}

/// Paths (relative to the repository's top, `/`-separated, sorted) where the work tree differs
/// from `HEAD`'s tree: modified, added, deleted (staged or not), and untracked files that no
/// ignore rule covers, each file named (an untracked directory is not collapsed). Paths at or
/// below `leave_out` (forge's own outputs: the artifacts directory, the metadata file), when they
/// lie in the work tree, are not changes. `None` outside a repository, in a bare one, or before
/// the first commit.
pub fn work_tree_changes(
    dir: &Path,
    leave_out: &[std::path::PathBuf],
) -> Result<Option<Vec<String>>, GitError> {
    use gix::status::index_worktree::Item as Worktree;
    let Some(repo) = open(dir)? else {
        return Ok(None);
    };
    let Some(top) = repo.workdir().map(Path::to_path_buf) else {
        return Ok(None);
    };
    if repo.head_id().is_err() {
        return Ok(None);
    }
    let err = |message: String| GitError::Repository {
        dir: dir.display().to_string(),
        message: format!("comparing the work tree with HEAD: {message}"),
    };
    // Renames are tracked on neither side: each is a deletion and an addition, which names both
    // paths without a similarity computation.
    let items = repo
        .status(gix::progress::Discard)
        .map_err(|e| err(e.to_string()))?
        .untracked_files(gix::status::UntrackedFiles::Files)
        .index_worktree_rewrites(None)
        .tree_index_track_renames(gix::status::tree_index::TrackRenames::Disabled)
        .into_iter(Vec::<gix::bstr::BString>::new())
        .map_err(|e| err(e.to_string()))?;
    let canonical = |p: &Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        // An output that does not exist yet: its parent's real path, and its name.
        match (
            p.canonicalize(),
            p.parent().map(Path::canonicalize),
            p.file_name(),
        ) {
            (Ok(c), _, _) => c,
            (Err(_), Some(Ok(parent)), Some(name)) => parent.join(name),
            _ => p,
        }
    };
    let top = canonical(&top);
    let left_out: Vec<std::path::PathBuf> = leave_out
        .iter()
        .filter_map(|p| {
            let rel = canonical(p).strip_prefix(&top).ok()?.to_path_buf();
            (!rel.as_os_str().is_empty()).then_some(rel)
        })
        .collect();
    let mut paths = Vec::new();
    for item in items {
        let item = item.map_err(|e| err(e.to_string()))?;
        let changed = match &item {
            gix::status::Item::TreeIndex(_) => true,
            gix::status::Item::IndexWorktree(Worktree::Modification { status, .. }) => {
                // Only the file's stat changed (a touch, a fresh checkout): same content.
                !matches!(
                    status,
                    gix::status::plumbing::index_as_worktree::EntryStatus::NeedsUpdate(_)
                )
            }
            gix::status::Item::IndexWorktree(Worktree::DirectoryContents { entry, .. }) => {
                entry.status == gix::dir::entry::Status::Untracked
            }
            gix::status::Item::IndexWorktree(Worktree::Rewrite { source, .. }) => {
                paths.push(source.rela_path().to_string());
                true
            }
        };
        if changed {
            paths.push(item.location().to_string());
        }
    }
    paths.retain(|p| !left_out.iter().any(|o| Path::new(p).starts_with(o)));
    paths.sort();
    paths.dedup();
    Ok(Some(paths))
}

/// The files of the work tree of the repository holding `dir` that git sees (`HEAD`'s files
/// as changed, added or deleted since, and untracked files no ignore rule covers), relative to
/// its top, `/`-separated, sorted: what GitLab's `rules: exists:` globs are matched against.
/// `None` outside a repository, in a bare one, or before the first commit.
pub fn files(dir: &Path) -> Result<Option<Vec<String>>, GitError> {
    let Some(repo) = open(dir)? else {
        return Ok(None);
    };
    let Some(top) = repo.workdir().map(Path::to_path_buf) else {
        return Ok(None);
    };
    let err = |message: String| GitError::Repository {
        dir: dir.display().to_string(),
        message: format!("listing HEAD's files: {message}"),
    };
    let Ok(commit) = repo.head_commit() else {
        return Ok(None);
    };
    let tree = commit.tree().map_err(|e| err(e.to_string()))?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| err(e.to_string()))?;
    let mut paths: Vec<String> = recorder
        .records
        .into_iter()
        .filter(|e| !e.mode.is_tree())
        .map(|e| e.filepath.to_string())
        .collect();
    paths.extend(work_tree_changes(dir, &[])?.unwrap_or_default());
    // What was deleted since is in neither list's sense of "there".
    paths.retain(|p| std::fs::symlink_metadata(top.join(p)).is_ok());
    paths.sort();
    paths.dedup();
    Ok(Some(paths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `git` as an independent judge and a fixture maker, with a fixed identity and no user config.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "forge test")
            .env("GIT_AUTHOR_EMAIL", "test@forge.invalid")
            .env("GIT_COMMITTER_NAME", "forge test")
            .env("GIT_COMMITTER_EMAIL", "test@forge.invalid")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn have_git() -> bool {
        forge_testsupport::tool("git").is_some()
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn outside_a_repository_everything_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(describe(tmp.path()).unwrap(), GitInfo::default());
        assert_eq!(
            changed_since(tmp.path(), "HEAD", Compare::Tree).unwrap(),
            None
        );
    }

    #[test]
    fn the_variables_match_what_git_says() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q", "-b", "main"]);
        // Unborn: no commit yet.
        assert_eq!(describe(d).unwrap(), GitInfo::default());
        write(d, "a.txt", "a\n");
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "one"]);
        git(d, &["tag", "-a", "v1.0", "-m", "release"]);
        git(d, &["tag", "v0.9"]);
        let info = describe(&d.join(".")).unwrap();
        assert_eq!(info.sha, git(d, &["rev-parse", "HEAD"]));
        assert_eq!(info.short_sha, git(d, &["rev-parse", "--short=8", "HEAD"]));
        assert_eq!(info.branch, "main");
        assert_eq!(info.tag, "v1.0");
        // From a subdirectory, on another branch, then detached.
        write(d, "sub/b.txt", "b\n");
        git(d, &["checkout", "-q", "-b", "feature/x"]);
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "two"]);
        let info = describe(&d.join("sub")).unwrap();
        assert_eq!(info.branch, "feature/x");
        assert_eq!(info.tag, "");
        git(d, &["checkout", "-q", "--detach", "HEAD~1"]);
        let info = describe(d).unwrap();
        assert_eq!(info.branch, "");
        assert_eq!(info.tag, "v1.0");
    }

    #[test]
    fn changed_files_match_git_diff_name_only() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q", "-b", "main"]);
        write(d, "services/api/main.go", "package main\n");
        write(d, "services/web/index.js", "1\n");
        write(d, "README.md", "hi\n");
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "base"]);
        let base = git(d, &["rev-parse", "HEAD"]);
        write(d, "services/api/main.go", "package main // changed\n");
        write(d, "services/api/new/handler.go", "package new\n");
        std::fs::remove_file(d.join("README.md")).unwrap();
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "change api"]);
        // Uncommitted edits do not count.
        write(d, "services/web/index.js", "2\n");
        let got = changed_since(d, &base, Compare::Tree).unwrap().unwrap();
        let judge: Vec<String> = git(d, &["diff", "--name-only", &base, "HEAD"])
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(got, judge);
        assert_eq!(
            got,
            [
                "README.md",
                "services/api/main.go",
                "services/api/new/handler.go"
            ]
        );
        assert_eq!(
            changed_since(d, "HEAD", Compare::Tree).unwrap().unwrap(),
            Vec::<String>::new()
        );
        let e = changed_since(d, "no-such-branch", Compare::Tree).unwrap_err();
        assert!(e.to_string().contains("revision \"no-such-branch\""), "{e}");
    }

    /// C9: an uncommitted edit rebuilt an image while `changes:` (HEAD against the last passed
    /// run's commit) saw nothing, and its gating job was skipped.
    #[test]
    fn the_files_are_what_git_ls_files_shows_of_the_work_tree() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q", "-b", "main"]);
        assert_eq!(files(d).unwrap(), None, "no commit yet");
        write(d, ".gitignore", "build/\n");
        write(d, "Dockerfile", "FROM x\n");
        write(d, "gone.txt", "g\n");
        write(d, "svc/api/go.mod", "module api\n");
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "base"]);
        std::fs::remove_file(d.join("gone.txt")).unwrap();
        write(d, "svc/web/package.json", "{}\n");
        write(d, "build/out.bin", "ignored\n");
        let got = files(&d.join("svc")).unwrap().unwrap();
        // git's own list of the same: tracked and untracked-not-ignored files that are there.
        let judge = git(
            d,
            &["ls-files", "--cached", "--others", "--exclude-standard"],
        );
        let mut judged: Vec<&str> = judge.lines().filter(|l| d.join(l).exists()).collect();
        judged.sort();
        assert_eq!(got, judged);
        assert_eq!(
            got,
            [
                ".gitignore",
                "Dockerfile",
                "svc/api/go.mod",
                "svc/web/package.json"
            ]
        );
        assert_eq!(files(tempfile::tempdir().unwrap().path()).unwrap(), None);
    }

    #[test]
    fn work_tree_changes_are_what_git_status_shows() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q", "-b", "main"]);
        assert_eq!(work_tree_changes(d, &[]).unwrap(), None, "no commit yet");
        write(d, ".gitignore", "build/\n");
        write(d, "a/main.txt", "a\n");
        write(d, "b/main.txt", "b\n");
        write(d, "c/gone.txt", "c\n");
        write(d, "d/staged.txt", "d\n");
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "base"]);
        assert_eq!(
            work_tree_changes(d, &[]).unwrap().unwrap(),
            Vec::<String>::new()
        );
        write(d, "a/main.txt", "a, edited\n");
        std::fs::remove_file(d.join("c/gone.txt")).unwrap();
        write(d, "d/staged.txt", "d, staged\n");
        git(d, &["add", "d/staged.txt"]);
        write(d, "new/deep/file.txt", "untracked\n");
        write(d, "build/out.bin", "ignored\n");
        write(d, "forge-artifacts/job/x", "forge's own output\n");
        // A file only touched is no change.
        let f = std::fs::File::options()
            .append(true)
            .open(d.join("b/main.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let got = work_tree_changes(&d.join("a"), &[d.join("forge-artifacts")])
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            [
                "a/main.txt",
                "c/gone.txt",
                "d/staged.txt",
                "new/deep/file.txt"
            ]
        );
        // The judge: git's own list (untracked files one by one, forge's output aside).
        let mut judge: Vec<String> = git(d, &["status", "--porcelain", "-uall"])
            .lines()
            // `git` trims the output, and with it the first line's leading blank.
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .filter(|p| !p.starts_with("forge-artifacts/"))
            .collect();
        judge.sort();
        assert_eq!(got, judge);
    }

    /// C9: `--changed-since HEAD~1` in a depth-1 clone failed with gix's traversal error.
    #[test]
    fn a_revision_beyond_a_shallow_clones_cut_says_so() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        write(&origin, "a.txt", "1\n");
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-q", "-m", "one"]);
        let first = git(&origin, &["rev-parse", "HEAD"]);
        write(&origin, "a.txt", "2\n");
        git(&origin, &["commit", "-q", "-am", "two"]);
        let url = format!("file://{}", origin.display());
        git(
            tmp.path(),
            &["clone", "-q", "--depth", "1", &url, "shallow"],
        );
        let d = tmp.path().join("shallow");
        for rev in ["HEAD~1", first.as_str()] {
            let e = changed_since(&d, rev, Compare::MergeBase).unwrap_err();
            assert!(matches!(e, GitError::Shallow { .. }), "{rev}: {e}");
            assert!(e.to_string().contains("shallow clone"), "{e}");
        }
        assert_eq!(
            changed_since(&d, "HEAD", Compare::Tree).unwrap().unwrap(),
            Vec::<String>::new()
        );
        // In the full history the same names are revisions, and a wrong one is an error.
        assert_eq!(
            changed_since(&origin, "HEAD~1", Compare::MergeBase)
                .unwrap()
                .unwrap(),
            ["a.txt"]
        );
        let e = changed_since(&origin, "HEAD~5", Compare::MergeBase).unwrap_err();
        assert!(matches!(e, GitError::Revision { .. }), "{e}");
    }

    /// Regression (serve sweep 02): a remote answering 401 made gix ask for a user name and
    /// password on the terminal (a server's build waited there until its deadline), or fail
    /// naming /dev/tty. The clone fails at once, saying what the remote wants.
    #[test]
    fn a_remote_that_wants_credentials_fails_the_clone_without_asking() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}/team/app.git");
        let (tx, rx) = std::sync::mpsc::channel();
        let dest = tmp.path().join("w");
        std::thread::spawn(move || {
            let _ = tx.send(clone_shallow(&url, "", &dest));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the clone ends without an answer from a terminal")
            .unwrap_err();
        assert!(e.contains("HTTP 401"), "{e}");
        assert!(!e.contains("/dev/tty"), "{e}");
    }

    /// Regression (monorepo sweep 08): `--changed-since main` on a feature branch compared the
    /// two tips, so everything main changed after the branch left it counted as the branch's
    /// change (and its jobs ran). From the merge base it is what the branch changed, as
    /// `git diff main...HEAD` says; a baseline is still compared as a tree.
    #[test]
    fn a_branch_is_compared_from_its_merge_base_with_the_revision() {
        if !have_git() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        git(d, &["init", "-q", "-b", "main"]);
        write(d, "a.txt", "1\n");
        write(d, "b.txt", "1\n");
        git(d, &["add", "."]);
        git(d, &["commit", "-q", "-m", "one"]);
        git(d, &["checkout", "-q", "-b", "feature"]);
        write(d, "a.txt", "feature\n");
        git(d, &["commit", "-q", "-am", "feature"]);
        git(d, &["checkout", "-q", "main"]);
        write(d, "b.txt", "main moved on\n");
        git(d, &["commit", "-q", "-am", "main"]);
        git(d, &["checkout", "-q", "feature"]);
        let judge =
            |args: &[&str]| -> Vec<String> { git(d, args).lines().map(str::to_string).collect() };
        let from_base = changed_since(d, "main", Compare::MergeBase)
            .unwrap()
            .unwrap();
        assert_eq!(from_base, ["a.txt"]);
        assert_eq!(from_base, judge(&["diff", "--name-only", "main...HEAD"]));
        let tips = changed_since(d, "main", Compare::Tree).unwrap().unwrap();
        assert_eq!(tips, ["a.txt", "b.txt"]);
        assert_eq!(tips, judge(&["diff", "--name-only", "main", "HEAD"]));
    }
}
