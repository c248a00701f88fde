//! `serve.yaml`: the projects `forge serve` builds, what starts their builds, and who hears how
//! they went. Read with forge.yaml's YAML reader, so every error names the file, line and column
//! with the line and a caret under it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use forge_builder::pipeline::file::{Sp, pos_of};
use forge_builder::pipeline::{PipelineError, PipelineErrors, read_yaml};
use serde::Deserialize;

use crate::notify::When;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    /// Where to listen (default 127.0.0.1:8420); `--listen` wins.
    listen: Option<Sp<String>>,
    /// The address people reach the pages at, for links in notifications (default from `listen`).
    base_url: Option<Sp<String>>,
    /// Most builds at once over all projects (default 2); `--max-builds` wins.
    max_builds: Option<Sp<usize>>,
    /// The secret every project's API and buttons accept (besides a project's own).
    api_secret: Option<Sp<String>>,
    #[serde(default)]
    logs: LogsSpec,
    projects: Sp<Vec<ProjectSpec>>,
}

/// How long build logs are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsSpec {
    /// Logs of builds that ended longer ago than this many days are removed.
    max_age_days: Option<u64>,
    /// The oldest logs are removed while all of them take more than this many MiB.
    max_total_mib: Option<u64>,
    /// The most MiB of output a build's log keeps of one job's try, one service or one image
    /// build's steps (default 4; 0: no limit).
    max_job_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectSpec {
    name: Sp<String>,
    /// A git URL: https://, http://, git://, ssh://, git@host:path, or file:// (a repository on
    /// this machine, read directly).
    repo: Sp<String>,
    /// Branch globs a push must match (default every branch).
    branches: Option<Vec<Sp<String>>>,
    /// The pipeline file in the repository (default forge.yaml).
    pipeline: Option<Sp<String>>,
    /// A plain Dockerfile build instead of a pipeline: the Dockerfile's path in the repository.
    dockerfile: Option<Sp<String>>,
    /// For a plain build: the references to tag and push the image as.
    #[serde(default)]
    tags: Vec<Sp<String>>,
    /// What starts builds (default push, tag, api).
    triggers: Option<Vec<Sp<TriggerName>>>,
    /// The word a commit message must hold with the keyword trigger (default `@deploy`).
    keyword: Option<Sp<String>>,
    /// The secret webhooks are signed with (or GitLab's token): the value, `env:NAME` or
    /// `file:PATH`.
    webhook_secret: Option<Sp<String>>,
    /// The project's own API secret, as above.
    api_secret: Option<Sp<String>>,
    /// Variables every build of the project sees, as forge.yaml's `variables:`.
    #[serde(default)]
    variables: BTreeMap<String, String>,
    /// Secrets for the pipeline's jobs: NAME: `env:NAME` or `file:PATH` (or the value).
    #[serde(default)]
    secrets: BTreeMap<String, Sp<String>>,
    /// Repositories whose pushes (registry notifications) rebuild the project, besides the ones
    /// its Dockerfiles were last seen building FROM.
    #[serde(default)]
    watch: Vec<String>,
    #[serde(default)]
    notify: NotifySpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerName {
    /// A push to a matching branch.
    Push,
    /// A new tag: a release build with FORGE_GIT_TAG set.
    Tag,
    /// A push whose commits mention the keyword (without `push`, the only pushes that build).
    Keyword,
    /// The API and the page's rebuild button.
    Api,
    /// A registry push of an image the project builds FROM.
    Registry,
}

impl TriggerName {
    /// The trigger as serve.yaml spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerName::Push => "push",
            TriggerName::Tag => "tag",
            TriggerName::Keyword => "keyword",
            TriggerName::Api => "api",
            TriggerName::Registry => "registry",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifySpec {
    /// URLs a JSON message (with Slack's `text`) is POSTed to.
    #[serde(default)]
    webhooks: Vec<Sp<String>>,
    email: Option<EmailSpec>,
    on_success: Option<When>,
    on_failure: Option<When>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSpec {
    /// `host:port` of the SMTP server.
    smtp: Sp<String>,
    from: String,
    to: Vec<String>,
    username: Option<String>,
    password: Option<Sp<String>>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub base_url: String,
    pub max_builds: usize,
    pub api_secret: Option<Vec<u8>>,
    pub log_max_age_days: Option<u64>,
    pub log_max_total_bytes: Option<u64>,
    /// [`forge_builder::pipeline::run::RunOptions::log_limit`] for every build.
    pub log_limit: Option<u64>,
    pub projects: Vec<Project>,
}

/// One project, checked, its secrets read.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    pub repo: String,
    pub branches: globset::GlobSet,
    /// The branch globs as written, for the rebuild form.
    pub branch_patterns: Vec<String>,
    pub what: What,
    pub triggers: Vec<TriggerName>,
    pub keyword: String,
    pub webhook_secret: Option<Vec<u8>>,
    pub api_secret: Option<Vec<u8>>,
    pub variables: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Vec<u8>>,
    pub watch: Vec<String>,
    pub notify: Notify,
}

/// What a build of the project runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The pipeline file at this path in the repository.
    Pipeline(String),
    /// A plain build of this Dockerfile, tagged (and pushed) as these references.
    Dockerfile { path: String, tags: Vec<String> },
}

/// Who hears about finished builds, and when.
#[derive(Debug, Clone)]
pub struct Notify {
    pub webhooks: Vec<String>,
    pub email: Option<crate::notify::Smtp>,
    pub on_success: When,
    pub on_failure: When,
}

impl Config {
    /// Every secret the server holds: the API secret, each project's secrets, webhook and API
    /// secrets and SMTP password. A build's log and error are open to anyone, and a build that
    /// comes by one of these (a file of the server's it should not have read, an echo of another
    /// project's token) must not publish it, so all of them are masked there, not only its own.
    pub fn masked(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.api_secret.iter().cloned().collect();
        for p in &self.projects {
            out.extend(p.masked());
            out.extend(
                p.notify
                    .email
                    .iter()
                    .filter_map(|e| e.password.clone())
                    .map(String::into_bytes),
            );
        }
        out.retain(|s| s.len() >= 3);
        out.sort();
        out.dedup();
        out
    }
}

impl Project {
    /// Whether `t` starts builds of this project.
    pub fn triggered_by(&self, t: TriggerName) -> bool {
        self.triggers.contains(&t)
    }

    /// The repository URL as pages, the API, logs and errors show it: without its credentials.
    pub fn shown_repo(&self) -> String {
        redact_userinfo(&self.repo)
    }

    /// The secrets whose values are masked in this project's logs.
    pub fn masked(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.secrets.values().cloned().collect();
        out.extend(self.webhook_secret.iter().cloned());
        out.extend(self.api_secret.iter().cloned());
        // The credentials of an `http://user:token@host/...` repository, for the errors that
        // quote the URL as the fetch saw it.
        if let Some(info) = userinfo(&self.repo) {
            out.push(info.as_bytes().to_vec());
            out.extend(info.split_once(':').map(|(_, pw)| pw.as_bytes().to_vec()));
        }
        out.retain(|s| s.len() >= 3);
        out
    }
}

/// The userinfo (`user:token`) of `url`'s authority, when it has one.
fn userinfo(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

/// `url` with the userinfo of its authority replaced by `****`: `http://user:token@host/r.git` is
/// shown as `http://****@host/r.git`. Reading pages and the API is open to anyone, and a token in a
/// repository URL is a credential.
pub fn redact_userinfo(url: &str) -> String {
    match userinfo(url) {
        Some(info) => {
            let start = url.find("://").map_or(0, |i| i + 3);
            format!("{}****{}", &url[..start], &url[start + info.len()..])
        }
        None => url.to_string(),
    }
}

/// Default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

/// Reads and checks `path`. Secrets given as `env:` and `file:` are read now, so a missing one is
/// an error at start, not at the first build.
pub fn load(path: &Path) -> Result<Config, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse(&name, &source, &dir).map_err(|e| e.to_string())
}

/// Parses and checks `source`; `file` is the name errors report, `dir` what `file:` secrets are
/// relative to.
pub fn parse(file: &str, source: &str, dir: &Path) -> Result<Config, PipelineErrors> {
    let parsed: ServeFile = read_yaml(file, source)?;
    let mut errors = Vec::new();
    macro_rules! err {
        ($pos:expr, $msg:expr $(,)?) => {
            errors.push(PipelineError::new($pos, $msg))
        };
    }
    let listen = match &parsed.listen {
        Some(l) => l.value.parse::<SocketAddr>().unwrap_or_else(|e| {
            err!(
                pos_of(l),
                format!("listen: {:?} is not an address and port: {e}", l.value)
            );
            DEFAULT_LISTEN.parse().expect("a valid default")
        }),
        None => DEFAULT_LISTEN.parse().expect("a valid default"),
    };
    let base_url = match &parsed.base_url {
        Some(b) if !(b.value.starts_with("http://") || b.value.starts_with("https://")) => {
            err!(pos_of(b), "base_url must start with http:// or https://");
            String::new()
        }
        Some(b) => b.value.trim_end_matches('/').to_string(),
        None => format!("http://{listen}"),
    };
    let max_builds = match &parsed.max_builds {
        Some(m) if m.value == 0 => {
            err!(pos_of(m), "max_builds must be at least 1");
            1
        }
        Some(m) => m.value,
        None => 2,
    };
    let api_secret = parsed
        .api_secret
        .as_ref()
        .and_then(|s| read_secret(&mut errors, dir, s, "api_secret"));
    let mut projects: Vec<Project> = Vec::new();
    let mut project_errors = Vec::new();
    for p in &parsed.projects.value {
        match project(p, dir) {
            Ok(project) => {
                if projects.iter().any(|q| q.name == project.name) {
                    project_errors.push(PipelineError::new(
                        pos_of(&p.name),
                        format!("a second project named {:?}", project.name),
                    ));
                }
                projects.push(project);
            }
            Err(mut e) => project_errors.append(&mut e),
        }
    }
    if parsed.projects.value.is_empty() {
        project_errors.push(PipelineError::new(
            pos_of(&parsed.projects),
            "projects: the list is empty; name at least one project",
        ));
    }
    errors.append(&mut project_errors);
    if !errors.is_empty() {
        return Err(PipelineErrors::new(file, source, errors));
    }
    Ok(Config {
        listen,
        base_url,
        max_builds,
        api_secret,
        log_max_age_days: parsed.logs.max_age_days,
        log_max_total_bytes: parsed.logs.max_total_mib.map(|m| m << 20),
        log_limit: match parsed.logs.max_job_mib {
            None => Some(forge_builder::pipeline::run::DEFAULT_LOG_LIMIT),
            Some(0) => None,
            Some(m) => Some(m << 20),
        },
        projects,
    })
}

/// A project name is a path segment of every URL: letters, digits, `-`, `_`, `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn project(p: &ProjectSpec, dir: &Path) -> Result<Project, Vec<PipelineError>> {
    let mut errors = Vec::new();
    macro_rules! err {
        ($pos:expr, $msg:expr $(,)?) => {
            errors.push(PipelineError::new($pos, $msg))
        };
    }
    if !valid_name(&p.name.value) {
        err!(
            pos_of(&p.name),
            format!(
                "project name {:?}: use letters, digits, '-', '_' and '.' (it is part of URLs)",
                p.name.value
            ),
        );
    }
    let repo = p.repo.value.trim().to_string();
    if !["https://", "http://", "git://", "ssh://", "file://", "git@"]
        .iter()
        .any(|s| repo.starts_with(s))
    {
        err!(
            pos_of(&p.repo),
            format!(
                "repo {repo:?}: expected a git URL (https://, http://, git://, ssh://, git@host:path \
                 or file://)"
            ),
        );
    }
    // gix will not send credentials in clear text (its error, "Transport handshake failed", came
    // at every build, before any request); say so once, at start.
    if repo.starts_with("http://") && userinfo(&repo).is_some() {
        err!(
            pos_of(&p.repo),
            format!(
                "repo {:?}: credentials in an http:// URL would be sent in clear text, which the \
                 git client refuses: use https://",
                redact_userinfo(&repo)
            ),
        );
    }
    let patterns: Vec<Sp<String>> = p.branches.clone().unwrap_or_default();
    let mut set = globset::GlobSetBuilder::new();
    if patterns.is_empty() {
        set.add(globset::Glob::new("*").expect("a valid glob"));
    }
    for b in &patterns {
        // `*` stops at `/` and `**` crosses it, as in GitHub's and GitLab's branch filters.
        match globset::GlobBuilder::new(&b.value)
            .literal_separator(true)
            .build()
        {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => err!(pos_of(b), format!("branch glob {:?}: {e}", b.value)),
        }
    }
    let branches = set.build().unwrap_or_else(|_| globset::GlobSet::empty());
    let what = match (&p.pipeline, &p.dockerfile) {
        (Some(pl), Some(df)) => {
            err!(
                pos_of(df),
                format!(
                    "a project runs either a pipeline ({}) or a plain Dockerfile build, not both",
                    pl.value
                ),
            );
            What::Pipeline(pl.value.clone())
        }
        (Some(pl), None) => What::Pipeline(pl.value.clone()),
        (None, Some(df)) => What::Dockerfile {
            path: df.value.clone(),
            tags: p.tags.iter().map(|t| t.value.clone()).collect(),
        },
        (None, None) => What::Pipeline("forge.yaml".into()),
    };
    if let (What::Pipeline(_), Some(t)) = (&what, p.tags.first()) {
        err!(
            pos_of(t),
            "tags: only for a plain Dockerfile build; a pipeline tags its images in forge.yaml",
        );
    }
    for rel in [&p.pipeline, &p.dockerfile].into_iter().flatten() {
        if rel.value.starts_with('/') || rel.value.split('/').any(|c| c == "..") {
            err!(
                pos_of(rel),
                format!("{:?} must be a path inside the repository", rel.value),
            );
        }
    }
    let triggers: Vec<TriggerName> = match &p.triggers {
        Some(t) => t.iter().map(|t| t.value).collect(),
        None => vec![TriggerName::Push, TriggerName::Tag, TriggerName::Api],
    };
    let keyword = p
        .keyword
        .as_ref()
        .map_or("@deploy".to_string(), |k| k.value.clone());
    if keyword.trim().is_empty() || keyword.chars().any(char::is_whitespace) {
        let pos = p.keyword.as_ref().map_or(pos_of(&p.name), pos_of);
        err!(pos, format!("keyword {keyword:?} must be one word"));
    }
    let webhook_secret = p
        .webhook_secret
        .as_ref()
        .and_then(|s| read_secret(&mut errors, dir, s, "webhook_secret"));
    let api_secret = p
        .api_secret
        .as_ref()
        .and_then(|s| read_secret(&mut errors, dir, s, "api_secret"));
    let mut secrets = BTreeMap::new();
    for (k, v) in &p.secrets {
        if let Some(value) = read_secret(&mut errors, dir, v, &format!("secret {k}")) {
            secrets.insert(k.clone(), value);
        }
    }
    let email = p.notify.email.as_ref().and_then(|e| {
        let (host, port) = match e.smtp.value.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.is_empty() => {
                (h.to_string(), p.parse::<u16>().expect("checked"))
            }
            _ => {
                err!(
                    pos_of(&e.smtp),
                    format!("smtp {:?}: expected host:port", e.smtp.value),
                );
                return None;
            }
        };
        let password = e
            .password
            .as_ref()
            .and_then(|s| read_secret(&mut errors, dir, s, "password"))
            .map(|p| String::from_utf8_lossy(&p).into_owned());
        Some(crate::notify::Smtp {
            host,
            port,
            from: e.from.clone(),
            to: e.to.clone(),
            username: e.username.clone(),
            password,
        })
    });
    for w in &p.notify.webhooks {
        if !(w.value.starts_with("http://") || w.value.starts_with("https://")) {
            err!(
                pos_of(w),
                format!("webhook {:?}: expected an http:// or https:// URL", w.value),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Project {
        name: p.name.value.clone(),
        repo,
        branches,
        branch_patterns: patterns.iter().map(|b| b.value.clone()).collect(),
        what,
        triggers,
        keyword,
        webhook_secret,
        api_secret,
        variables: p.variables.clone(),
        secrets,
        watch: p.watch.clone(),
        notify: Notify {
            webhooks: p.notify.webhooks.iter().map(|w| w.value.clone()).collect(),
            email,
            on_success: p.notify.on_success.unwrap_or(When::Change),
            on_failure: p.notify.on_failure.unwrap_or(When::Always),
        },
    })
}

/// A secret's value, or an error at its place.
fn read_secret(
    errors: &mut Vec<PipelineError>,
    dir: &Path,
    s: &Sp<String>,
    what: &str,
) -> Option<Vec<u8>> {
    match secret_value(&s.value, dir) {
        Ok(v) if v.is_empty() => {
            errors.push(PipelineError::new(pos_of(s), format!("{what} is empty")));
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(PipelineError::new(pos_of(s), format!("{what}: {e}")));
            None
        }
    }
}

/// A secret as written: `env:NAME` (the environment variable), `file:PATH` (the file, relative to
/// the configuration's directory, a trailing newline dropped), else the value itself.
fn secret_value(spec: &str, dir: &Path) -> Result<Vec<u8>, String> {
    if let Some(name) = spec.strip_prefix("env:") {
        return std::env::var_os(name)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| format!("environment variable {name} is not set"));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        let p: PathBuf = dir.join(path);
        let mut v = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            v.pop();
        }
        return Ok(v);
    }
    Ok(spec.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(src: &str) -> Result<Config, String> {
        parse("serve.yaml", src, Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_small_file_gets_the_defaults() {
        let c = parse_str("projects:\n  - name: app\n    repo: git://127.0.0.1/app.git\n").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8420");
        assert_eq!(c.base_url, "http://127.0.0.1:8420");
        assert_eq!(c.max_builds, 2);
        let p = &c.projects[0];
        assert_eq!(p.what, What::Pipeline("forge.yaml".into()));
        assert_eq!(
            p.triggers,
            vec![TriggerName::Push, TriggerName::Tag, TriggerName::Api]
        );
        assert_eq!(p.keyword, "@deploy");
        assert!(p.branches.is_match("feature/x"));
        assert_eq!(p.notify.on_success, When::Change);
        assert_eq!(p.notify.on_failure, When::Always);
        assert_eq!(c.log_limit, Some(4 << 20));
    }

    #[test]
    fn a_jobs_log_limit_is_in_mib_and_zero_lifts_it() {
        let with = |logs: &str| {
            parse_str(&format!(
                "logs: {logs}\nprojects:\n  - name: app\n    repo: git://127.0.0.1/app.git\n"
            ))
            .unwrap()
            .log_limit
        };
        assert_eq!(with("{max_job_mib: 16}"), Some(16 << 20));
        assert_eq!(with("{max_job_mib: 0}"), None);
        assert_eq!(with("{max_total_mib: 100}"), Some(4 << 20));
    }

    #[test]
    fn credentials_in_a_repository_url_are_not_shown() {
        for (url, shown) in [
            (
                "http://ci-bot:ghp_PRIVATEtoken12345@127.0.0.1:80/team/app.git",
                "http://****@127.0.0.1:80/team/app.git",
            ),
            ("https://tok@h/a.git?x=a@b", "https://****@h/a.git?x=a@b"),
            (
                "git://127.0.0.1:9418/app.git",
                "git://127.0.0.1:9418/app.git",
            ),
            ("file:///srv/a@b/app", "file:///srv/a@b/app"),
        ] {
            assert_eq!(redact_userinfo(url), shown);
        }
        let c = parse_str(
            "projects:\n  - name: priv\n    repo: https://ci-bot:ghp_PRIVATEtoken12345@h/a.git\n",
        )
        .unwrap();
        let masked = c.masked();
        assert!(
            masked.contains(&b"ghp_PRIVATEtoken12345".to_vec()),
            "{masked:?}"
        );
        assert_eq!(c.projects[0].shown_repo(), "https://****@h/a.git");
        let e = parse_str(
            "projects:\n  - name: priv\n    repo: http://ci-bot:ghp_PRIVATEtoken12345@h/a.git\n",
        )
        .unwrap_err();
        // The quoted line is the operator's own, shown only to whoever starts the server.
        assert!(
            e.contains(
                "serve.yaml:3:11: repo \"http://****@h/a.git\": credentials in an http:// URL"
            ),
            "{e}"
        );
    }

    #[test]
    fn branch_globs_and_secrets_from_the_environment_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.txt"), "s3cret-from-file\n").unwrap();
        // SAFETY: no other thread of this test binary reads this variable.
        unsafe { std::env::set_var("FORGE_SERVE_TEST_TOKEN", "tok-from-env") };
        let src = "projects:\n  - name: app\n    repo: https://example.invalid/app.git\n    \
                   branches: [main, 'release/*']\n    webhook_secret: file:hook.txt\n    \
                   secrets:\n      TOKEN: env:FORGE_SERVE_TEST_TOKEN\n    \
                   triggers: [keyword, api]\n    keyword: '@ship'\n";
        let c = parse("serve.yaml", src, dir.path()).unwrap();
        let p = &c.projects[0];
        assert!(p.branches.is_match("main"));
        assert!(p.branches.is_match("release/1.2"));
        assert!(!p.branches.is_match("feature/x"));
        // `*` stops at `/`, as in GitHub's and GitLab's branch filters.
        assert!(!p.branches.is_match("release/1/hotfix"));
        assert_eq!(p.webhook_secret.as_deref(), Some(&b"s3cret-from-file"[..]));
        assert_eq!(p.secrets["TOKEN"], b"tok-from-env");
        assert!(p.triggered_by(TriggerName::Keyword));
        assert!(!p.triggered_by(TriggerName::Push));
        assert_eq!(p.keyword, "@ship");
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let e =
            parse_str("projects:\n  - name: app\n    repo: git://h/a.git\n    trigers: [push]\n")
                .unwrap_err();
        assert!(
            e.starts_with("error: serve.yaml:4:5: unknown key `trigers`"),
            "{e}"
        );
        assert!(e.contains("did you mean `triggers`?"), "{e}");
        let e = parse_str(
            "projects:\n  - name: app\n    repo: git://h/a.git\n    triggers: [push, pull]\n",
        )
        .unwrap_err();
        assert!(e.contains("serve.yaml:4:"), "{e}");
        assert!(e.contains("unknown value `pull`"), "{e}");
        let e = parse_str("projects:\n  - name: a/b\n    repo: /tmp/x\n").unwrap_err();
        assert!(e.contains("serve.yaml:2:11: project name \"a/b\""), "{e}");
        assert!(e.contains("serve.yaml:3:11: repo \"/tmp/x\""), "{e}");
        let e = parse_str(
            "projects:\n  - name: a\n    repo: git://h/a\n  - name: a\n    repo: git://h/b\n",
        )
        .unwrap_err();
        assert!(
            e.contains("serve.yaml:4:11: a second project named \"a\""),
            "{e}"
        );
        let e = parse_str(
            "listen: nowhere\nprojects:\n  - name: a\n    repo: git://h/a\n    \
             webhook_secret: env:FORGE_SERVE_TEST_UNSET_VARIABLE\n",
        )
        .unwrap_err();
        assert!(e.contains("serve.yaml:1:9: listen: \"nowhere\""), "{e}");
        assert!(
            e.contains("serve.yaml:5:21: webhook_secret: environment variable"),
            "{e}"
        );
    }

    #[test]
    fn a_plain_build_and_paths_that_leave_the_repository() {
        let c = parse_str(
            "projects:\n  - name: a\n    repo: git://h/a\n    dockerfile: docker/Dockerfile\n    \
             tags: ['127.0.0.1:5000/a:latest']\n",
        )
        .unwrap();
        assert_eq!(
            c.projects[0].what,
            What::Dockerfile {
                path: "docker/Dockerfile".into(),
                tags: vec!["127.0.0.1:5000/a:latest".into()]
            }
        );
        let e = parse_str("projects:\n  - name: a\n    repo: git://h/a\n    pipeline: ../x.yaml\n")
            .unwrap_err();
        assert!(e.contains("must be a path inside the repository"), "{e}");
    }
}
