//! A registry that wants a login: Debian's Distribution (`docker-registry`) with htpasswd auth on a
//! free loopback port, for tests of refused, missing and stored credentials. Plain http: Distribution
//! 2.8 takes Basic auth without TLS.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The one user the registry knows.
pub const AUTH_USER: &str = "forge";
/// Its password (the htpasswd line below is its bcrypt hash, cost 5).
pub const AUTH_PASSWORD: &str = "right-password";
const HTPASSWD: &str = "forge:$2b$05$abcdefghijklmnopqrstuuBO.kmgTJhdt40M5ZyHgFmcpBdUb9aS.\n";

/// A running registry with htpasswd auth; stopped (and its storage removed) when dropped.
pub struct AuthRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    _dir: TempDir,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one, or `None` after a SKIP line when `docker-registry` is not installed.
#[track_caller]
pub fn auth_registry() -> Option<AuthRegistry> {
    let bin = crate::check::tool("docker-registry")?;
    let dir = crate::fixture::scratch("forge-auth-registry-");
    std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: forge-test\n    path: {}\n",
            dir.path().join("storage").display(),
            dir.path().join("htpasswd").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("registry.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut registry = AuthRegistry {
        addr,
        child,
        _dir: dir,
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(&registry.addr).is_err() {
        if let Ok(Some(status)) = registry.child.try_wait() {
            panic!(
                "the registry exited ({status}): {}",
                log(registry._dir.path())
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
