//! Registry mirrors as podman, buildah and CRI-O configure them: `registries.conf` (version 2,
//! TOML), `[[registry]]` tables with a `prefix` (or `location`), an optional `location` that
//! replaces it, `blocked`, `insecure`, and `[[registry.mirror]]` tables tried first, in order. A pull
//! of an image under a prefix tries each mirror, then the registry itself (unless
//! `mirror-by-digest-only` and the reference has no digest). The file is
//! `$FORGE_REGISTRIES_CONF`, else `$XDG_CONFIG_HOME/containers/registries.conf` (or
//! `~/.config/...`) when it exists, else `/etc/containers/registries.conf`; a file that does not
//! exist means no mirrors. Short-name settings (`unqualified-search-registries`, aliases) are not
//! read: forge resolves short names as docker does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reference::Reference;

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    registry: Vec<RegistryTable>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Debug, Deserialize)]
struct MirrorTable {
    location: String,
    #[serde(default)]
    insecure: bool,
}

/// One `[[registry]]` entry, as used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `host[:port][/path]` the reference's name must start with (at a `/` boundary).
    prefix: String,
    /// What replaces the prefix for the registry itself.
    location: String,
    insecure: bool,
    blocked: bool,
    by_digest_only: bool,
    mirrors: Vec<(String, bool)>,
}

/// Where a pull of one reference may go, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub reference: Reference,
    /// A mirror (not the registry itself).
    pub mirror: bool,
}

/// The mirrors and registry rewrites a `registries.conf` sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors {
    entries: Vec<Entry>,
    /// The file they came from (`None`: no file).
    pub source: Option<PathBuf>,
}

impl Mirrors {
    /// None at all.
    pub fn none() -> Mirrors {
        Mirrors::default()
    }

    /// The file the environment names (see the module docs); no file is no mirrors.
    pub fn from_env() -> Result<Mirrors, String> {
        let var = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(f) = var("FORGE_REGISTRIES_CONF") {
            return Mirrors::load(&f);
        }
        let user = var("XDG_CONFIG_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".config")))
            .map(|d| d.join("containers/registries.conf"));
        match user.filter(|f| f.is_file()) {
            Some(f) => Mirrors::load(&f),
            None => Mirrors::load(Path::new("/etc/containers/registries.conf")),
        }
    }

    /// Reads `path`; a file that does not exist is no mirrors, one that does not parse is an error
    /// naming it.
    pub fn load(path: &Path) -> Result<Mirrors, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Mirrors::none()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut m = Mirrors::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        m.source = Some(path.to_path_buf());
        Ok(m)
    }

    pub fn parse(text: &str) -> Result<Mirrors, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for r in file.registry {
            let prefix = r
                .prefix
                .clone()
                .or_else(|| r.location.clone())
                .ok_or("a [[registry]] has neither prefix nor location")?;
            if prefix.starts_with("*.") {
                // Wildcard prefixes match host names only, which mirrors rarely use; say so.
                return Err(format!(
                    "prefix {prefix:?}: wildcard prefixes are not supported by forge"
                ));
            }
            entries.push(Entry {
                location: r.location.unwrap_or_else(|| prefix.clone()),
                prefix,
                insecure: r.insecure,
                blocked: r.blocked,
                by_digest_only: r.mirror_by_digest_only,
                mirrors: r
                    .mirror
                    .into_iter()
                    .map(|m| (m.location, m.insecure))
                    .collect(),
            });
        }
        // The longest prefix wins, as in containers/image.
        entries.sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
        Ok(Mirrors {
            entries,
            source: None,
        })
    }

    /// Each registry prefix with mirrors (or blocked), and its mirrors' locations, in the order
    /// they are tried.
    pub fn summary(&self) -> Vec<(String, Vec<String>, bool)> {
        self.entries
            .iter()
            .filter(|e| !e.mirrors.is_empty() || e.blocked || e.location != e.prefix)
            .map(|e| {
                (
                    e.prefix.clone(),
                    e.mirrors.iter().map(|m| m.0.clone()).collect(),
                    e.blocked,
                )
            })
            .collect()
    }

    /// Registries (host[:port]) the file marks insecure, the mirrors' included.
    pub fn insecure_hosts(&self) -> Vec<String> {
        let host = |loc: &str| loc.split('/').next().unwrap_or(loc).to_string();
        let mut out = Vec::new();
        for e in &self.entries {
            if e.insecure {
                out.push(host(&e.location));
            }
            out.extend(e.mirrors.iter().filter(|m| m.1).map(|m| host(&m.0)));
        }
        out
    }

    fn entry_for(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            name == e.prefix
                || name
                    .strip_prefix(e.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Where to pull `reference` from, in order: its mirrors, then the registry (under its
    /// `location`). Empty when the registry is blocked and has no mirror.
    pub fn candidates(&self, reference: &Reference) -> Vec<Candidate> {
        let name = reference.name();
        let Some(e) = self.entry_for(&name) else {
            return vec![Candidate {
                reference: reference.clone(),
                mirror: false,
            }];
        };
        let rest = &name[e.prefix.len()..];
        let rewrite = |location: &str| -> Option<Reference> {
            let mut s = format!("{location}{rest}");
            match (reference.tag(), reference.digest()) {
                (_, Some(d)) => s.push_str(&format!("@{d}")),
                (Some(t), None) => s.push_str(&format!(":{t}")),
                (None, None) => {}
            }
            Reference::parse(&s).ok()
        };
        let mut out = Vec::new();
        if !e.by_digest_only || reference.digest().is_some() {
            for (location, _) in &e.mirrors {
                if let Some(r) = rewrite(location) {
                    out.push(Candidate {
                        reference: r,
                        mirror: true,
                    });
                }
            }
        }
        if !e.blocked
            && let Some(r) = rewrite(&e.location)
        {
            out.push(Candidate {
                reference: r,
                mirror: false,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"

[[registry.mirror]]
location = "127.0.0.1:5000/hub"
insecure = true

[[registry.mirror]]
location = "mirror.example:443"

[[registry]]
prefix = "quay.io/team"
location = "quay.io/team"
blocked = true

[[registry.mirror]]
location = "127.0.0.1:5000/quay-team"
"#;

    fn names(m: &Mirrors, r: &str) -> Vec<(String, bool)> {
        m.candidates(&Reference::parse(r).unwrap())
            .into_iter()
            .map(|c| (c.reference.to_string(), c.mirror))
            .collect()
    }

    #[test]
    fn mirrors_come_first_then_the_registry_under_its_location() {
        let m = Mirrors::parse(CONF).unwrap();
        assert_eq!(
            names(&m, "busybox"),
            [
                ("127.0.0.1:5000/hub/library/busybox:latest".into(), true),
                ("mirror.example:443/library/busybox:latest".into(), true),
                ("registry-1.docker.io/library/busybox:latest".into(), false),
            ]
        );
        // A blocked registry is reached through its mirror only; other repositories of the host
        // are not under the prefix.
        assert_eq!(
            names(&m, "quay.io/team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"),
            [(
                "127.0.0.1:5000/quay-team/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"
                    .into(),
                true
            )]
        );
        assert_eq!(
            names(&m, "quay.io/teamwork/app:1"),
            [("quay.io/teamwork/app:1".into(), false)]
        );
        assert_eq!(m.insecure_hosts(), ["127.0.0.1:5000"]);
    }

    #[test]
    fn a_missing_file_is_no_mirrors_and_a_bad_one_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let none = Mirrors::load(&dir.path().join("absent.conf")).unwrap();
        assert_eq!(none, Mirrors::none());
        let bad = dir.path().join("registries.conf");
        std::fs::write(&bad, "[[registry]]\nprefix = \n").unwrap();
        let err = Mirrors::load(&bad).unwrap_err();
        assert!(err.contains("registries.conf"), "{err}");
        let wild = Mirrors::parse("[[registry]]\nprefix = \"*.example.com\"\n").unwrap_err();
        assert!(wild.contains("wildcard"), "{wild}");
    }
}
