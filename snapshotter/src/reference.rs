//! Image references parsed the way Docker parses them (distribution/reference's normalised names):
//! `busybox` is `docker.io/library/busybox:latest`, a first component with a `.` or `:` or named
//! `localhost` is a registry host, tags and `@sha256:` digests may both be given. Pull, push and the
//! store's image records all speak in these.

use std::fmt;
use std::str::FromStr;

/// The registry Docker Hub names normalise to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API actually answers on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A fully normalised image reference: registry, repository path, and a tag, a digest or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a reference was refused; the message names the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: ReferenceErrorKind,
}

/// The rule a reference broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceErrorKind {
    #[error("repository name must have at least one component")]
    Empty,
    #[error("a 64-character hexadecimal string is an image id, not a repository name")]
    HexIdentifier,
    #[error("repository name {0:?} must be lowercase")]
    Uppercase(String),
    #[error("repository name must not be more than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error(
        "invalid reference format (want [registry/]name[:tag][@digest], lowercase name components)"
    )]
    Format,
    #[error("registry {0:?} is not a valid host[:port]")]
    Registry(String),
    #[error("registry {0:?}: the port must be a number from 1 to 65535")]
    Port(String),
    #[error("unsupported digest algorithm {0:?} (sha256, sha384 or sha512)")]
    DigestAlgorithm(String),
    #[error("digest {0:?} has the wrong length for its algorithm")]
    DigestLength(String),
    #[error("digest {0:?} must be lowercase hex")]
    DigestFormat(String),
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does; a reference with neither tag nor
    /// digest gets the tag `latest`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason| ReferenceError {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(fail(ReferenceErrorKind::Empty));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(fail(ReferenceErrorKind::HexIdentifier));
        }
        let (domain, remainder) = split_docker_domain(input);
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(fail(ReferenceErrorKind::Uppercase(remote.to_string())));
        }
        let parsed = parse_canonical(&format!("{domain}/{remainder}")).map_err(fail)?;
        let Some(registry) = parsed.domain else {
            return Err(fail(ReferenceErrorKind::Registry(domain.to_string())));
        };
        // The grammar takes any digits after the colon; no registry listens beyond 65535, and the
        // HTTP client would only fail at push time with an unrelated message.
        let port = match registry.rsplit_once(':') {
            Some((host, p))
                if !host.ends_with(':') && (!host.starts_with('[') || host.ends_with(']')) =>
            {
                Some(p)
            }
            _ => None,
        };
        if let Some(p) = port
            && !p.parse::<u16>().is_ok_and(|n| n != 0)
        {
            return Err(fail(ReferenceErrorKind::Port(registry)));
        }
        let tag = match (&parsed.tag, &parsed.digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => parsed.tag,
        };
        Ok(Reference {
            registry,
            repository: parsed.path,
            tag,
            digest: parsed.digest,
        })
    }

    /// The registry as written in the normalised name: `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host[:port] to send API requests to (Docker Hub's API lives on another host).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written (`sha256:...`), when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest`, keeping the tag for display.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The short form Docker shows: `busybox:latest`, `user/app:1`, `127.0.0.1:5000/x:y`.
    pub fn familiar(&self) -> String {
        let mut name = if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        push_suffix(&mut name, self.tag.as_deref(), self.digest.as_deref());
        name
    }
}

fn push_suffix(out: &mut String, tag: Option<&str>, digest: Option<&str>) {
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        push_suffix(&mut s, self.tag.as_deref(), self.digest.as_deref());
        f.write_str(&s)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Docker's rule for telling a registry host from the first path component: it is a host when it
/// contains `.` or `:`, is `localhost`, or has uppercase letters (which a path never may).
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((first, rest)) = name.split_once('/') else {
        return (DOCKER_HUB, format!("{OFFICIAL_PREFIX}{name}"));
    };
    let (domain, remote) = if first == "localhost" {
        (first, rest.to_string())
    } else if first == LEGACY_DOCKER_HUB {
        (DOCKER_HUB, rest.to_string())
    } else if first.contains(['.', ':']) || first.to_lowercase() != first {
        (first, rest.to_string())
    } else {
        (DOCKER_HUB, name.to_string())
    };
    if domain == DOCKER_HUB && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_PREFIX}{remote}"));
    }
    (domain, remote)
}

struct Parsed {
    domain: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// The grammar `[domain/]path[:tag][@digest]` without normalisation.
fn parse_canonical(s: &str) -> Result<Parsed, ReferenceErrorKind> {
    let result = parse_grammar(s);
    if matches!(result, Err(ReferenceErrorKind::Format)) {
        let lower = s.to_lowercase();
        if lower != s && parse_grammar(&lower).is_ok() {
            let remote = s.rsplit_once('/').map_or(s, |(_, r)| r);
            return Err(ReferenceErrorKind::Uppercase(remote.to_string()));
        }
    }
    result
}

fn parse_grammar(s: &str) -> Result<Parsed, ReferenceErrorKind> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A ':' with no '/' after it can only start the tag: a port is always followed by the path.
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (name_tag, None),
    };
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(ReferenceErrorKind::Format);
    }
    let (domain, path) = match name.split_once('/') {
        Some((d, p)) if is_domain_and_port(d) && is_remote_name(p) => (Some(d), p),
        _ if is_remote_name(name) => (None, name),
        _ => return Err(ReferenceErrorKind::Format),
    };
    if path.len() > MAX_NAME_LEN {
        return Err(ReferenceErrorKind::NameTooLong);
    }
    Ok(Parsed {
        domain: domain.map(str::to_string),
        path: path.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+` runs joined by one `.`, one or two `_`, or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && is_lower_alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn is_remote_name(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(is_path_component)
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

fn is_domain_and_port(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    let host_ok =
        (host.is_empty() && d.starts_with('[')) || host.split('.').all(is_domain_component);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// The digest grammar, then go-digest's checks: a known algorithm and the right length of lowercase hex.
fn check_digest(d: &str) -> Result<(), ReferenceErrorKind> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err(ReferenceErrorKind::Format);
    };
    let alg_ok = algorithm
        .split(['-', '_', '+', '.'])
        .all(|c| c.as_bytes().first().is_some_and(u8::is_ascii_alphabetic))
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'));
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReferenceErrorKind::Format);
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceErrorKind::DigestAlgorithm(algorithm.to_string())),
    };
    if hex.len() != want {
        return Err(ReferenceErrorKind::DigestLength(d.to_string()));
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceErrorKind::DigestFormat(d.to_string()));
    }
    Ok(())
}
