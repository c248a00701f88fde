//! Prerequisite checks: each one answers whether the machine has what a test needs, and when it does
//! not, says so on a `SKIP:` line (or fails the test under FORGE_E2E=require). The reasons name the
//! `.ci/setup.d` script that provides the missing part.

use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host's static busybox (Debian busybox-static), the shell of every `FROM scratch` test build.
pub const BUSYBOX: &str = "/bin/busybox";

const REGISTRY_SETUP: &str = ".ci/setup.d/20-registry.sh";
const IMAGES_SETUP: &str = ".ci/setup.d/20-registry.sh and 30-base-images.sh";
const USER_SETUP: &str = ".ci/setup.d/40-rootless-user.sh";
const CONTAINERD_SETUP: &str = ".ci/setup.d/50-containerd.sh";
const DOCKER_SETUP: &str = ".ci/setup.d/60-dockerd.sh";

/// Whether a missing prerequisite fails the test (`FORGE_E2E=require`, as CI sets it) rather than
/// skipping it.
pub fn required() -> bool {
    std::env::var("FORGE_E2E").as_deref() == Ok("require")
}

/// Says that a prerequisite is missing: prints `SKIP: <why>`, or panics under FORGE_E2E=require.
/// The test returns right after.
#[track_caller]
pub fn missing(why: impl Display) {
    if required() {
        panic!("FORGE_E2E=require, but {why}");
    }
    eprintln!("SKIP: {why}");
}

/// `true` when `ok`; otherwise [`missing`] and `false`.
#[track_caller]
pub fn prerequisite(ok: bool, why: impl Display) -> bool {
    if !ok {
        missing(why);
    }
    ok
}

/// Always `None`, after [`missing`]: for checks that return what they found.
#[track_caller]
pub fn skip<T>(why: impl Display) -> Option<T> {
    missing(why);
    None
}

/// Whether the tests run as root (no SKIP line: for tests that only do more as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root, or `false` after `SKIP: needs root (<purpose>)`.
#[track_caller]
pub fn root(purpose: &str) -> bool {
    prerequisite(is_root(), format_args!("needs root ({purpose})"))
}

/// The static busybox at [`BUSYBOX`], or `false` after a SKIP line.
#[track_caller]
pub fn busybox() -> bool {
    prerequisite(
        Path::new(BUSYBOX).is_file(),
        format_args!("needs {BUSYBOX} (Debian busybox-static)"),
    )
}

/// Root and the static busybox: what every test that runs steps on a `FROM scratch` busybox needs.
#[track_caller]
pub fn root_and_busybox(purpose: &str) -> bool {
    root(purpose) && busybox()
}

/// `tool` on PATH, without a SKIP line.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `tool` on PATH, or `None` after `SKIP: <tool> is not installed`.
#[track_caller]
pub fn tool(tool: &str) -> Option<PathBuf> {
    match on_path(tool) {
        Some(path) => Some(path),
        None => skip(format_args!("{tool} is not installed")),
    }
}

/// Runs a judge tool (found with [`tool`]) and returns its stdout; a failure shows the command, its
/// status and its stderr.
#[track_caller]
pub fn run(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether a registry answers `GET /v2/` at `addr` (host:port, plain HTTP as the test registry
/// speaks): 200, or 401 from one that wants credentials. The error says what happened instead.
pub fn registry_answers(addr: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(2);
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    // One write: a server that answers the first bytes and closes must not reset a second one.
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending GET /v2/: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer to GET /v2/: {e}")),
        }
    }
    let status = String::from_utf8_lossy(&head);
    let status = status.lines().next().unwrap_or_default().trim();
    let code = status.split_whitespace().nth(1);
    if status.starts_with("HTTP/") && matches!(code, Some("200" | "401")) {
        Ok(())
    } else {
        Err(format!("GET /v2/ answered {status:?}"))
    }
}

/// The test registry (`$FORGE_TEST_REGISTRY`, host:port) once it answers `/v2/`, or `None` after a
/// SKIP line.
#[track_caller]
pub fn registry() -> Option<String> {
    let Ok(addr) = std::env::var("FORGE_TEST_REGISTRY") else {
        return skip(format_args!(
            "FORGE_TEST_REGISTRY is not set (run {REGISTRY_SETUP})"
        ));
    };
    match registry_answers(&addr) {
        Ok(()) => Some(addr),
        Err(e) => skip(format_args!(
            "no registry at {addr}: {e} (run {REGISTRY_SETUP})"
        )),
    }
}

/// The image reference in `var` (one CI pushed to the test registry), once that registry answers, or
/// `None` after a SKIP line.
#[track_caller]
pub fn image_from_env(var: &str) -> Option<String> {
    let Ok(image) = std::env::var(var) else {
        return skip(format_args!("{var} is not set (run {IMAGES_SETUP})"));
    };
    // Only a reference that names its registry is checked: the first component holds a '.' or ':'.
    let first = image.split('/').next().unwrap_or_default();
    let names_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if names_registry && let Err(e) = registry_answers(first) {
        return skip(format_args!(
            "no registry at {first} for {var}: {e} (run {REGISTRY_SETUP})"
        ));
    }
    Some(image)
}

/// The busybox base image (`$FORGE_TEST_BUSYBOX`), or `None` after a SKIP line.
#[track_caller]
pub fn busybox_image() -> Option<String> {
    image_from_env("FORGE_TEST_BUSYBOX")
}

/// The Debian base image (`$FORGE_TEST_DEBIAN`), or `None` after a SKIP line.
#[track_caller]
pub fn debian_image() -> Option<String> {
    image_from_env("FORGE_TEST_DEBIAN")
}

/// The containerd socket (`$CONTAINERD_ADDRESS`) once it accepts a connection, or `None` after a SKIP
/// line. Connecting needs the socket's permissions, root in CI.
#[track_caller]
pub fn containerd() -> Option<PathBuf> {
    let Some(address) = std::env::var_os("CONTAINERD_ADDRESS") else {
        return skip(format_args!(
            "CONTAINERD_ADDRESS is not set (run {CONTAINERD_SETUP})"
        ));
    };
    let address = PathBuf::from(address);
    match std::os::unix::net::UnixStream::connect(&address) {
        Ok(_) => Some(address),
        Err(e) => skip(format_args!(
            "no containerd at {}: {e} (run {CONTAINERD_SETUP})",
            address.display()
        )),
    }
}

/// A range of subordinate ids from /etc/subuid or /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

impl IdRange {
    /// The first range of `user` (by login name or numeric uid: /etc/subgid is keyed by user too)
    /// in `file`, as `newuidmap` and `newgidmap` read it.
    pub fn of(file: &Path, user: &str, uid: u32) -> Option<IdRange> {
        let text = std::fs::read_to_string(file).ok()?;
        let uid = uid.to_string();
        text.lines().find_map(|line| {
            let mut f = line.trim().split(':');
            let owner = f.next()?;
            let start = f.next()?.parse().ok()?;
            let count = f.next()?.parse().ok()?;
            (owner == user || owner == uid).then_some(IdRange { start, count })
        })
    }
}

/// The unprivileged user the rootless tests switch to, with its subordinate id ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub subuid: IdRange,
    pub subgid: IdRange,
}

impl TestUser {
    /// `name` from /etc/passwd with its ranges from /etc/subuid and /etc/subgid; the error says what
    /// is missing.
    pub fn lookup(name: &str) -> Result<TestUser, String> {
        let (uid, gid) = user_ids(name).ok_or_else(|| format!("user {name} does not exist"))?;
        let range = |file: &str| {
            IdRange::of(Path::new(file), name, uid)
                .ok_or_else(|| format!("user {name} has no range in {file}"))
        };
        Ok(TestUser {
            name: name.to_string(),
            uid,
            gid,
            subuid: range("/etc/subuid")?,
            subgid: range("/etc/subgid")?,
        })
    }

    /// The host uid that uid `id` of the user's namespace is: 0 is the user itself, 1.. are its
    /// subordinate ids (the mapping rootless podman and forge set up).
    pub fn host_uid(&self, id: u32) -> u32 {
        if id == 0 {
            self.uid
        } else {
            self.subuid.start + id - 1
        }
    }

    /// As [`TestUser::host_uid`], for groups.
    pub fn host_gid(&self, id: u32) -> u32 {
        if id == 0 {
            self.gid
        } else {
            self.subgid.start + id - 1
        }
    }
}

/// The uid and primary gid of user `name` in /etc/passwd.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The rootless test user (`$FORGE_TEST_USER`, with subordinate ids), or `None` after a SKIP line.
#[track_caller]
pub fn test_user() -> Option<TestUser> {
    let Ok(name) = std::env::var("FORGE_TEST_USER") else {
        return skip(format_args!(
            "FORGE_TEST_USER is not set (run {USER_SETUP})"
        ));
    };
    match TestUser::lookup(&name) {
        Ok(user) => Some(user),
        Err(e) => skip(format_args!(
            "FORGE_TEST_USER={name}: {e} (run {USER_SETUP})"
        )),
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testsupport sits in the workspace")
        .to_path_buf()
}

/// `<shared>/conformance/buildkit/<rel>`, the BuildKit test data read from the shared copy (never
/// vendored): `$FORGE_SHARED_DIR`, else a `shared` directory beside the workspace or one of its
/// ancestors (a worktree sits deeper than the main checkout). `None` after a SKIP line.
#[track_caller]
pub fn conformance(rel: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("FORGE_SHARED_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(
        workspace_root()
            .ancestors()
            .skip(1)
            .map(|a| a.join("shared")),
    );
    let found = candidates
        .iter()
        .map(|shared| shared.join("conformance/buildkit").join(rel))
        .find(|dir| dir.is_dir());
    match found {
        Some(dir) => Some(dir),
        None => skip(format_args!(
            "shared/conformance/buildkit/{rel} not found (set FORGE_SHARED_DIR)"
        )),
    }
}

/// A docker client for the private dockerd of `$FORGE_TEST_DOCKER_HOST`, with a client config of its
/// own (no credentials or plugins of the host's user).
pub struct Docker {
    host: String,
    config: tempfile::TempDir,
}

impl Docker {
    /// `docker ARGS` against the test daemon: Debian's client (`/usr/bin/docker`) where installed.
    pub fn cmd(&self) -> std::process::Command {
        let client = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        let mut c = std::process::Command::new(client);
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.config.path());
        c
    }

    /// `docker pull IMAGE`, which must succeed.
    #[track_caller]
    pub fn pull(&self, image: &str) {
        let o = self
            .cmd()
            .args(["pull", "-q", image])
            .output()
            .expect("run docker");
        assert!(
            o.status.success(),
            "docker pull {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `docker run --rm --network none IMAGE` (its default command), which must succeed; what it
    /// printed on standard output.
    #[track_caller]
    pub fn run_offline(&self, image: &str) -> String {
        let o = self
            .cmd()
            .args(["run", "--rm", "--network", "none", image])
            .output()
            .expect("run docker");
        assert!(
            o.status.success(),
            "docker run {image}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The test dockerd (`$FORGE_TEST_DOCKER_HOST`) once `docker version` answers, or `None` after a
/// SKIP line.
#[track_caller]
pub fn docker() -> Option<Docker> {
    let Ok(host) = std::env::var("FORGE_TEST_DOCKER_HOST") else {
        return skip(format_args!(
            "FORGE_TEST_DOCKER_HOST is not set (run {DOCKER_SETUP})"
        ));
    };
    let config = tempfile::tempdir().expect("a client config directory");
    std::fs::write(config.path().join("config.json"), "{}").expect("write the client config");
    let docker = Docker { host, config };
    match docker.cmd().arg("version").output() {
        Ok(o) if o.status.success() => Some(docker),
        Ok(o) => skip(format_args!(
            "dockerd at {} does not answer: {} (run {DOCKER_SETUP})",
            docker.host,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => skip(format_args!("no docker client: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subuid");
        std::fs::write(
            &file,
            "other:100000:65536\n1500:300000:1000\nme:200000:65536\n",
        )
        .unwrap();
        assert_eq!(
            IdRange::of(&file, "me", 1000),
            Some(IdRange {
                start: 200_000,
                count: 65536
            })
        );
        assert_eq!(
            IdRange::of(&file, "byid", 1500),
            Some(IdRange {
                start: 300_000,
                count: 1000
            })
        );
        assert_eq!(IdRange::of(&file, "nobody", 9), None);
    }

    #[test]
    fn namespace_ids_map_through_the_ranges() {
        let user = TestUser {
            name: "u".into(),
            uid: 1001,
            gid: 1002,
            subuid: IdRange {
                start: 200_000,
                count: 65536,
            },
            subgid: IdRange {
                start: 300_000,
                count: 65536,
            },
        };
        assert_eq!((user.host_uid(0), user.host_gid(0)), (1001, 1002));
        assert_eq!(
            (user.host_uid(1000), user.host_gid(1000)),
            (200_999, 300_999)
        );
    }

    #[test]
    fn a_registry_must_speak_http() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 200 OK\r\n\r\n{}", "SSH-2.0-OpenSSH\r\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert_ne!(n, 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                }
                assert!(request.starts_with(b"GET /v2/ HTTP/1.0\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(registry_answers(&addr), Ok(()));
        let err = registry_answers(&addr).unwrap_err();
        assert!(err.contains("SSH-2.0"), "{err}");
        server.join().unwrap();
    }
}
