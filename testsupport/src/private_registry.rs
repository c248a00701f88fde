//! A registry of the test's own: Debian's Distribution (`docker-registry`) on a free loopback port
//! with its storage in a temporary directory, plain http. With htpasswd auth, for tests of refused,
//! missing and stored credentials (Distribution 2.8 takes Basic auth without TLS); without, for
//! tests that read what the registry served from its access log or damage what it stores.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The one user the registry knows.
pub const AUTH_USER: &str = "forge";
/// Its password (the htpasswd line below is its bcrypt hash, cost 5).
pub const AUTH_PASSWORD: &str = "right-password";
const HTPASSWD: &str = "forge:$2b$05$abcdefghijklmnopqrstuuBO.kmgTJhdt40M5ZyHgFmcpBdUb9aS.\n";

/// A running registry; stopped (and its storage removed) when dropped.
pub struct PrivateRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    dir: TempDir,
}

/// The registry with htpasswd auth.
pub type AuthRegistry = PrivateRegistry;

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

impl PrivateRegistry {
    /// Every request the registry answered so far, in order, from its access log (Distribution
    /// writes one combined-log line per request: `ip - - [time] "GET /v2/... HTTP/1.1" 200 123 ...`).
    pub fn served(&self) -> Vec<Served> {
        log(self.dir.path())
            .lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("] \"")?;
                let (request, rest) = rest.split_once('"')?;
                let mut r = request.split(' ');
                let (method, path) = (r.next()?, r.next()?);
                let mut f = rest.split_whitespace();
                let status = f.next()?.parse().ok()?;
                let bytes = f.next()?.parse().unwrap_or(0);
                Some(Served {
                    method: method.to_string(),
                    path: path.to_string(),
                    status,
                    bytes,
                })
            })
            .collect()
    }

    /// What the registry wrote to its log (access lines and errors).
    pub fn log(&self) -> String {
        log(self.dir.path())
    }

    /// The upload sessions open in `repository`. Distribution keeps each under `_uploads/<id>`
    /// in the repository's storage (its `data`, `startedat` and `hashstates`): a commit removes
    /// the directory, a `DELETE` removes the data and `startedat` but leaves the hash states
    /// (Distribution 2.8), so an open session is one whose `startedat` is still there.
    pub fn open_uploads(&self, repository: &str) -> Vec<String> {
        let dir = self
            .dir
            .path()
            .join("storage/docker/registry/v2/repositories")
            .join(repository)
            .join("_uploads");
        match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap())
                .filter(|e| e.path().join("startedat").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}: {e}", dir.display()),
        }
    }

    /// Where blob `digest` (`sha256:...`) lies in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// Starts one with htpasswd auth, or `None` after a SKIP line when `docker-registry` is not
/// installed.
#[track_caller]
pub fn auth_registry() -> Option<AuthRegistry> {
    start(true)
}

/// Starts one open to anyone, or `None` after a SKIP line when `docker-registry` is not installed.
#[track_caller]
pub fn private_registry() -> Option<PrivateRegistry> {
    start(false)
}

#[track_caller]
fn start(auth: bool) -> Option<PrivateRegistry> {
    let bin = crate::check::tool("docker-registry")?;
    let dir = crate::fixture::scratch("forge-private-registry-");
    let port = crate::net::free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    let mut text = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        dir.path().join("storage").display(),
    );
    if auth {
        std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
        text.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: forge-test\n    path: {}\n",
            dir.path().join("htpasswd").display()
        ));
    }
    std::fs::write(&config, text).unwrap();
    // Distribution writes its access log to standard output and everything else to standard
    // error: both go to one file.
    let log_file = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let mut registry = PrivateRegistry { addr, child, dir };
    let started = Instant::now();
    while std::net::TcpStream::connect(&registry.addr).is_err() {
        if let Ok(Some(status)) = registry.child.try_wait() {
            panic!(
                "the registry exited ({status}): {}",
                log(registry.dir.path())
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the registry did not listen on {} within 20 s",
            registry.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(registry)
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
}
