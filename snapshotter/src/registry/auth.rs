//! Registry credentials from the files Docker and podman keep them in: `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, then `$DOCKER_CONFIG/config.json` (or
//! `~/.docker/config.json`); inline `auths`, per-registry `credHelpers` and the `credsStore`, through
//! the `docker-credential-<name>` helper protocol. No credentials means anonymous access, and
//! oci-client then runs the bearer-token dance the registry asks for.
//!
//! `forge login` writes where `docker login` does ([`DockerConfig`]): the helper the file names for
//! the registry, else an inline `auths` entry in Docker's `config.json`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// The key `docker login` writes for Docker Hub, and the server helpers are asked about.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`docker login` against an identity provider).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credential::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
        }
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("read auth file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("auth file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("auth file {path}: entry {key:?} has an undecodable \"auth\" field: {message}")]
    BadAuthField {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("write auth file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("auth file {path} is not a JSON object")]
    NotAnObject { path: PathBuf },
    #[error("credential helper {helper} for {server}: {message}")]
    Helper {
        helper: String,
        server: String,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// An auth file parsed, or `None` when it does not exist.
fn read_auth_file(path: &Path) -> Result<Option<AuthFile>, AuthError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| AuthError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// What one auth file configures ([`AuthResolver::configured`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub file: PathBuf,
    /// Registries (as references name them) with an inline credential or a helper of their own.
    pub registries: Vec<String>,
    /// The helper for every other registry (`credsStore`).
    pub creds_store: Option<String>,
}

/// Finds the credential for a registry in an ordered list of auth files.
#[derive(Debug, Clone, Default)]
pub struct AuthResolver {
    files: Vec<PathBuf>,
    helper_path: Option<OsString>,
}

impl AuthResolver {
    /// No files: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        AuthResolver::default()
    }

    /// The files podman and Docker read, in podman's order (its own files first, Docker's last).
    pub fn from_env() -> Self {
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut files = Vec::new();
        if let Some(f) = env("REGISTRY_AUTH_FILE") {
            files.push(f);
        }
        if let Some(run) = env("XDG_RUNTIME_DIR") {
            files.push(run.join("containers/auth.json"));
        }
        match (env("DOCKER_CONFIG"), env("HOME")) {
            (Some(dir), _) => files.push(dir.join("config.json")),
            (None, Some(home)) => files.push(home.join(".docker/config.json")),
            (None, None) => {}
        }
        AuthResolver {
            files,
            helper_path: None,
        }
    }

    /// Exactly these files, in this order.
    pub fn with_files(files: impl IntoIterator<Item = PathBuf>) -> Self {
        AuthResolver {
            files: files.into_iter().collect(),
            helper_path: None,
        }
    }

    /// Look up `docker-credential-*` helpers in this `PATH`-style list instead of the process's.
    pub fn helper_path(mut self, path: impl Into<OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// The files consulted, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// What each existing file configures, in order, without any secret: the registries it holds
    /// credentials or a helper for, and its default credential store. For `forge info`.
    pub fn configured(&self) -> Result<Vec<Configured>, AuthError> {
        let mut out = Vec::new();
        for path in &self.files {
            let Some(file) = read_auth_file(path)? else {
                continue;
            };
            let mut registries: Vec<String> = file
                .auths
                .keys()
                .chain(file.cred_helpers.keys())
                .map(|k| normalize_key(k))
                .collect();
            registries.sort();
            registries.dedup();
            out.push(Configured {
                file: path.clone(),
                registries,
                creds_store: file.creds_store.filter(|s| !s.is_empty()),
            });
        }
        Ok(out)
    }

    /// The credential for `repository` on `registry` (as normalised references name it,
    /// `docker.io` for Docker Hub), or `None` for anonymous access. Missing files are skipped;
    /// the first file that has something for the registry decides.
    pub fn credential(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, AuthError> {
        for path in &self.files {
            let Some(file) = read_auth_file(path)? else {
                continue;
            };
            if let Some(c) = self.lookup_file(path, &file, registry, repository)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn lookup_file(
        &self,
        path: &Path,
        file: &AuthFile,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credential>, AuthError> {
        let server = if registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            registry
        };
        // Docker's order: a helper named for the registry, then the default store, then inline.
        let helper = file
            .cred_helpers
            .iter()
            .find(|(k, _)| normalize_key(k) == normalize_key(registry))
            .map(|(_, v)| v)
            .or(file.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper
            && let Some(c) = self.run_helper(helper, server)?
        {
            return Ok(Some(c));
        }
        // podman allows keys scoped to a namespace or repository; the longest match wins.
        let mut scopes = vec![normalize_key(registry)];
        let mut prefix = normalize_key(registry);
        for part in repository.split('/') {
            prefix = format!("{prefix}/{part}");
            scopes.push(prefix.clone());
        }
        for scope in scopes.iter().rev() {
            let hit = file.auths.iter().find(|(k, _)| normalize_key(k) == *scope);
            if let Some((key, entry)) = hit
                && let Some(c) = entry_credential(path, key, entry)?
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn run_helper(&self, helper: &str, server: &str) -> Result<Option<Credential>, AuthError> {
        let program = format!("docker-credential-{helper}");
        let fail = |message: String| AuthError::Helper {
            helper: program.clone(),
            server: server.to_string(),
            message,
        };
        let out = call_helper(
            &resolve_helper(self.helper_path.as_ref(), &program),
            "get",
            server.as_bytes(),
        )
        .map_err(&fail)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // The helper protocol's way of saying "nothing stored for this server".
            if stdout.contains("credentials not found") {
                return Ok(None);
            }
            return Err(fail(format!(
                "{}: {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let reply: HelperReply = serde_json::from_slice(&out.stdout)
            .map_err(|e| fail(format!("unreadable reply {:?}: {e}", stdout.trim())))?;
        if reply.username == "<token>" {
            return Ok(Some(Credential::IdentityToken(reply.secret)));
        }
        if reply.username.is_empty() && reply.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential::Basic {
            username: reply.username,
            password: reply.secret,
        }))
    }
}

/// `program` found in `path` (a `PATH`-style list), else the bare name for the process's `PATH`.
fn resolve_helper(path: Option<&OsString>, program: &str) -> PathBuf {
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            let candidate = dir.join(program);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(program)
}

/// Runs a credential helper's `verb` (`get`, `store`, `erase`) with `input` on its standard input.
fn call_helper(program: &Path, verb: &str, input: &[u8]) -> Result<std::process::Output, String> {
    let mut child = Command::new(program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("write request: {e}"))?;
    }
    child.wait_with_output().map_err(|e| format!("wait: {e}"))
}

/// Where a login was stored or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStore {
    /// An inline `auths` entry in this file.
    File(PathBuf),
    /// The `docker-credential-<name>` helper the file names for the registry.
    Helper(String),
}

impl std::fmt::Display for LoginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginStore::File(p) => write!(f, "{}", p.display()),
            LoginStore::Helper(h) => write!(f, "the credential helper docker-credential-{h}"),
        }
    }
}

/// Docker's own credential file, the one `docker login` writes and [`AuthResolver::from_env`] reads
/// last: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. `forge login` and `forge logout`
/// change only the registry's entry; every other key of the file is kept as it was.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    helper_path: Option<OsString>,
}

impl DockerConfig {
    /// The file Docker would use here; `None` when neither `DOCKER_CONFIG` nor `HOME` is set.
    pub fn from_env() -> Option<DockerConfig> {
        let env = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let path = match (env("DOCKER_CONFIG"), env("HOME")) {
            (Some(dir), _) => dir.join("config.json"),
            (None, Some(home)) => home.join(".docker/config.json"),
            (None, None) => return None,
        };
        Some(DockerConfig::at(path))
    }

    /// This file.
    pub fn at(path: PathBuf) -> DockerConfig {
        DockerConfig {
            path,
            helper_path: None,
        }
    }

    /// Look up `docker-credential-*` helpers in this `PATH`-style list instead of the process's.
    pub fn helper_path(mut self, path: impl Into<OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key a login for `registry` (as references name it) is stored under: Docker Hub's
    /// `https://index.docker.io/v1/`, else `host[:port]`, as `docker login` writes them.
    pub fn key(registry: &str) -> &str {
        if registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            registry
        }
    }

    /// The file as a JSON object (empty when it does not exist).
    fn read(&self) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(source) => {
                return Err(AuthError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice(&text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(AuthError::NotAnObject {
                path: self.path.clone(),
            }),
            Err(source) => Err(AuthError::Parse {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the file whole (mode 0600, its directory made 0700 when missing), so that a reader
    /// sees the old file or the new one and a crash leaves no half-written credentials.
    fn write(&self, map: &serde_json::Map<String, serde_json::Value>) -> Result<(), AuthError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let err = |source| AuthError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let mut text = serde_json::to_vec_pretty(map).map_err(|e| err(e.into()))?;
        text.push(b'\n');
        crate::replace::replace_file(
            &self.path,
            |f| {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                f.write_all(&text)
            },
            |_, _, e| e,
        )
        .map_err(err)
    }

    /// The helper the file names for `registry` (`credHelpers`, else `credsStore`), as Docker
    /// chooses it.
    fn helper_for(
        map: &serde_json::Map<String, serde_json::Value>,
        registry: &str,
    ) -> Option<String> {
        let named = map
            .get("credHelpers")
            .and_then(|h| h.as_object())
            .and_then(|h| {
                h.iter()
                    .find(|(k, _)| normalize_key(k) == normalize_key(registry))
                    .and_then(|(_, v)| v.as_str())
            });
        named
            .or_else(|| map.get("credsStore").and_then(|s| s.as_str()))
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Runs `docker-credential-<helper> verb`; `Ok(None)` when the helper says it has nothing for
    /// the server, an error naming the helper, the server and what it said on any other failure.
    fn call(
        &self,
        helper: &str,
        verb: &str,
        server: &str,
        input: &[u8],
    ) -> Result<Option<()>, AuthError> {
        let program = format!("docker-credential-{helper}");
        let fail = |message: String| AuthError::Helper {
            helper: program.clone(),
            server: server.to_string(),
            message,
        };
        let out = call_helper(
            &resolve_helper(self.helper_path.as_ref(), &program),
            verb,
            input,
        )
        .map_err(&fail)?;
        if out.status.success() {
            return Ok(Some(()));
        }
        let said = String::from_utf8_lossy(&out.stdout);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        Err(fail(format!(
            "{verb}: {}: {}{}",
            out.status,
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Stores a login for `registry`: through the helper the file names for it, else as an inline
    /// `auths` entry (base64 of `user:password`, Docker's form), replacing any entry that names the
    /// same registry another way (`http://host`, `https://host/v1/`).
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<LoginStore, AuthError> {
        let mut map = self.read()?;
        let server = DockerConfig::key(registry);
        if let Some(helper) = DockerConfig::helper_for(&map, registry) {
            let request = serde_json::json!({
                "ServerURL": server,
                "Username": username,
                "Secret": password,
            });
            self.call(&helper, "store", server, request.to_string().as_bytes())?;
            return Ok(LoginStore::Helper(helper));
        }
        let auths = map
            .entry("auths")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !auths.is_object() {
            *auths = serde_json::Value::Object(Default::default());
        }
        let auths = auths.as_object_mut().expect("made an object above");
        auths.retain(|k, _| normalize_key(k) != normalize_key(registry));
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        auths.insert(server.to_string(), serde_json::json!({ "auth": encoded }));
        self.write(&map)?;
        Ok(LoginStore::File(self.path.clone()))
    }

    /// Removes the login for `registry` (every inline key naming it, and the helper's entry);
    /// `None` when there was none.
    pub fn erase(&self, registry: &str) -> Result<Option<LoginStore>, AuthError> {
        let mut map = self.read()?;
        let server = DockerConfig::key(registry);
        let mut erased = None;
        if let Some(helper) = DockerConfig::helper_for(&map, registry)
            && self
                .call(&helper, "erase", server, server.as_bytes())?
                .is_some()
        {
            erased = Some(LoginStore::Helper(helper));
        }
        // An inline entry goes too, beside a helper's (docker leaves an empty one there).
        if let Some(auths) = map.get_mut("auths").and_then(|a| a.as_object_mut()) {
            let before = auths.len();
            auths.retain(|k, _| normalize_key(k) != normalize_key(registry));
            if auths.len() != before {
                self.write(&map)?;
                erased = erased.or(Some(LoginStore::File(self.path.clone())));
            }
        }
        Ok(erased)
    }
}

/// The registry a `docker login SERVER` argument or an auth file key names, as references name it:
/// `https://host/v1/` and `http://host` are `host`, Docker Hub's names `docker.io`. A path without
/// a scheme is kept (`host/ns`: podman's repository-scoped keys).
pub fn server_registry(server: &str) -> String {
    normalize_key(server)
}

/// Auth file keys come as `host`, `https://host/v1/`, `http://host`, or podman's `host/ns/repo`;
/// Docker Hub under several names.
fn normalize_key(key: &str) -> String {
    let stripped = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let key = match stripped {
        // With a scheme the path is an API version (`/v1/`), not a repository scope.
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => key.trim_end_matches('/'),
    };
    let (host, scope) = match key.split_once('/') {
        Some((h, s)) => (h, Some(s)),
        None => (key, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    match scope {
        Some(s) => format!("{host}/{s}"),
        None => host.to_string(),
    }
}

fn entry_credential(
    path: &Path,
    key: &str,
    entry: &AuthEntry,
) -> Result<Option<Credential>, AuthError> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let bad = |message: String| AuthError::BadAuthField {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(auth.trim())
            .map_err(|e| bad(format!("not base64: {e}")))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("not UTF-8".into()))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("want base64 of user:password".into()))?;
        return Ok(Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credential::Basic {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_login_replaces_the_registrys_other_keys_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker/config.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"http://reg:5000":{"auth":"b2xkOm9sZA=="},"other:1":{"auth":"eDp5"}},"detachKeys":"ctrl-x"}"#,
        )
        .unwrap();
        let config = DockerConfig::at(path.clone());
        assert_eq!(
            config.store("reg:5000", "me", "pw").unwrap(),
            LoginStore::File(path.clone())
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["auths"]["reg:5000"]["auth"], "bWU6cHc=");
        assert!(doc["auths"].get("http://reg:5000").is_none(), "{doc}");
        assert_eq!(doc["auths"]["other:1"]["auth"], "eDp5");
        assert_eq!(doc["detachKeys"], "ctrl-x");
        // What forge reads back is what it stored.
        let read = AuthResolver::with_files([path.clone()]).credential("reg:5000", "app");
        assert_eq!(
            read.unwrap(),
            Some(Credential::Basic {
                username: "me".into(),
                password: "pw".into()
            })
        );
        // Docker Hub's key is docker's.
        config.store(DOCKER_HUB, "me", "pw").unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(doc["auths"].get(DOCKER_HUB_AUTH_KEY).is_some(), "{doc}");

        assert_eq!(
            config.erase("reg:5000").unwrap(),
            Some(LoginStore::File(path.clone()))
        );
        assert_eq!(config.erase("reg:5000").unwrap(), None);
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["auths"]["other:1"]["auth"], "eDp5");
        // A file that is not an object is refused, not overwritten.
        std::fs::write(&path, "[1]").unwrap();
        assert!(matches!(
            config.store("reg:5000", "me", "pw"),
            Err(AuthError::NotAnObject { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1]");
    }

    #[test]
    fn keys_normalise_to_registry() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("index.docker.io"), "docker.io");
        assert_eq!(normalize_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_key("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_key("quay.io/ns/repo"), "quay.io/ns/repo");
        assert_eq!(normalize_key("quay.io/"), "quay.io");
        assert_eq!(normalize_key("index.docker.io/u/app"), "docker.io/u/app");
    }
}
