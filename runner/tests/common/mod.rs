//! Shared fixture for the embedded backend's integration tests: a busybox rootfs as the lower layer of
//! an overlay (its upper dir stands for the committed snapshot), and the `forge-runner-step` binary run
//! as root or as the unprivileged $FORGE_TEST_USER.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use forge_testsupport::IdRange;

pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nwheel:x:10:tester\ntester:x:1000:\n";

/// How the step binary is launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Root,
    /// As this user, which enters its own user namespace (subuid range when it has one).
    Rootless {
        user: String,
        uid: u32,
        gid: u32,
        /// The first subordinate uid and gid, from /etc/subuid and /etc/subgid; `None` without a
        /// range (then the namespace maps the user's own ids alone).
        subids: Option<(u32, u32)>,
    },
}

impl Mode {
    pub fn name(&self) -> String {
        match self {
            Mode::Root => "root".into(),
            Mode::Rootless { user, .. } => format!("rootless({user})"),
        }
    }
}

pub use forge_testsupport::missing as skip;

/// A rootless mode for an existing user, if there is one, with its subordinate ranges if it has them.
pub fn user_mode(user: &str) -> Option<Mode> {
    let (uid, gid) = forge_testsupport::user_ids(user)?;
    Some(Mode::Rootless {
        user: user.to_string(),
        uid,
        gid,
        subids: subids(user, uid),
    })
}

/// The first subordinate uid and gid of a user (both files are keyed by the user's name or uid).
fn subids(user: &str, uid: u32) -> Option<(u32, u32)> {
    let first = |file: &str| IdRange::of(Path::new(file), user, uid).map(|r| r.start);
    first("/etc/subuid").zip(first("/etc/subgid"))
}

/// The modes this machine can run: root when the tests run as root, and the unprivileged user.
pub fn modes() -> Vec<Mode> {
    if !forge_testsupport::busybox() {
        return Vec::new();
    }
    if !forge_testsupport::is_root() {
        skip("tests are not running as root: root runs skipped");
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let user = std::env::var("USER").unwrap_or_else(|_| uid.to_string());
        let subids = subids(&user, uid);
        return vec![Mode::Rootless {
            user,
            uid,
            gid,
            subids,
        }];
    }
    let mut modes = vec![Mode::Root];
    if let Some(user) = forge_testsupport::test_user() {
        modes.push(Mode::Rootless {
            user: user.name,
            uid: user.uid,
            gid: user.gid,
            subids: Some((user.subuid.start, user.subgid.start)),
        });
    }
    modes
}

pub struct StepResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl StepResult {
    fn from(out: Output) -> Self {
        StepResult {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "code={}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub struct Fixture {
    pub mode: Mode,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    for entry in walk(root) {
        std::os::unix::fs::lchown(&entry, Some(uid), Some(gid)).unwrap();
    }
}

pub use forge_testsupport::walk;

impl Fixture {
    pub fn new(mode: &Mode) -> Self {
        // Under /tmp, world-traversable, so the unprivileged user reaches it.
        let dir = forge_testsupport::shared_scratch("forge-runner-test-", None);
        let lower = dir.path().join("lower");
        for d in ["etc", "root", "home/tester", "tmp"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::set_permissions(lower.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        forge_testsupport::install_busybox(&lower);
        fs::write(lower.join("etc/passwd"), PASSWD).unwrap();
        fs::write(lower.join("etc/group"), GROUP).unwrap();
        for d in ["upper", "work", "state", "cache", "host"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        let bin = forge_testsupport::copy_exe(env!("CARGO_BIN_EXE_forge-runner-step"), dir.path());
        if let Mode::Rootless { uid, gid, .. } = mode
            && nix::unistd::geteuid().is_root()
        {
            // A rootless snapshotter unpacks layers inside the user namespace: the image's root-owned
            // files belong to the user's own uid on the host.
            chown_tree(dir.path(), *uid, *gid);
            std::os::unix::fs::lchown(&bin, Some(0), Some(0)).unwrap();
        }
        let fixture = Fixture {
            mode: mode.clone(),
            dir,
            bin,
        };
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = (fixture.host_id(1000), fixture.host_gid(1000));
            std::os::unix::fs::chown(lower.join("home/tester"), Some(uid), Some(gid)).unwrap();
        }
        fixture
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn upper(&self) -> PathBuf {
        self.path("upper")
    }

    /// The host uid a container uid shows up as in the upper dir: 0 is the user, the rest its
    /// subordinate ids; without a range every id is the user's own.
    pub fn host_id(&self, container_id: u32) -> u32 {
        self.host_ids(container_id).0
    }

    /// As [`Fixture::host_id`], for a group.
    pub fn host_gid(&self, container_id: u32) -> u32 {
        self.host_ids(container_id).1
    }

    /// The host (uid, gid) of container id `id` taken as a uid and as a gid.
    fn host_ids(&self, id: u32) -> (u32, u32) {
        match &self.mode {
            Mode::Root => (id, id),
            Mode::Rootless {
                uid, gid, subids, ..
            } => match subids {
                Some((subuid, subgid)) if id != 0 => (subuid + id - 1, subgid + id - 1),
                _ => (*uid, *gid),
            },
        }
    }

    pub fn command(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut cmd = match &self.mode {
            Mode::Rootless { uid, gid, .. } if nix::unistd::geteuid().is_root() => {
                let mut c = Command::new("setpriv");
                let (uid, gid) = (uid.to_string(), gid.to_string());
                c.args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--"]);
                c.arg(&self.bin);
                c
            }
            _ => Command::new(&self.bin),
        };
        let overlay = format!(
            "{}:{}:{}",
            self.path("lower").display(),
            self.path("upper").display(),
            self.path("work").display()
        );
        cmd.arg("--state-dir")
            .arg(self.path("state"))
            .arg("--cache-root")
            .arg(self.path("cache"))
            .arg("--overlay")
            .arg(overlay)
            .args(flags)
            .arg("--")
            .args(argv)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, flags: &[&str], argv: &[&str]) -> StepResult {
        StepResult::from(retry_busy(|| self.command(flags, argv).output()))
    }

    pub fn sh(&self, flags: &[&str], script: &str) -> StepResult {
        self.run(flags, &["/bin/sh", "-c", script])
    }

    pub fn spawn(&self, flags: &[&str], argv: &[&str]) -> Child {
        retry_busy(|| {
            self.command(flags, argv)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
    }

    /// Makes a file in the fixture readable by the step binary's user.
    pub fn give(&self, path: &Path) {
        if let Mode::Rootless { uid, gid, .. } = &self.mode
            && nix::unistd::geteuid().is_root()
        {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).unwrap();
        }
    }

    /// Paths under the upper dir, relative, sorted.
    pub fn upper_paths(&self) -> Vec<String> {
        let upper = self.upper();
        let mut v: Vec<String> = walk(&upper)
            .iter()
            .filter_map(|p| {
                let rel = p.strip_prefix(&upper).ok()?.to_string_lossy().into_owned();
                (!rel.is_empty()).then_some(rel)
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Run as a user, the test cannot delete what steps chowned to subordinate ids: the step
        // binary removes the tree from inside its user namespace.
        if !nix::unistd::geteuid().is_root() {
            let _ = Command::new(&self.bin)
                .arg("--remove-tree")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Tests run in parallel threads: a child forked by one test can briefly hold the write descriptor of
/// the binary another test just copied, and exec then fails with ETXTBSY until that child execs.
fn retry_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    for _ in 0..50 {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    f().unwrap()
}

/// Pids of processes whose argv equals `argv` (read from /proc).
pub fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read(e.path().join("cmdline")).ok().as_deref() == Some(&want[..]) {
            out.push(pid);
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The rootfs of the containerd and contract tests: busybox with every applet linked; root, and
/// tester (1000:1000, also in group extra 2000); root is also in wheel (10). /proc, /dev and /sys
/// exist, /run does not (mounts under it need stubs); /old/file is there to be deleted.
pub fn build_busybox_rootfs(root: &Path) {
    for dir in [
        "etc",
        "proc",
        "dev",
        "sys",
        "tmp",
        "root",
        "home/tester",
        "old",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    forge_testsupport::install_busybox(root);
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\nwheel:x:10:root\ntester:x:1000:\nextra:x:2000:tester\n",
    )
    .unwrap();
    fs::write(root.join("old/file"), "from the lower layer\n").unwrap();
    std::os::unix::fs::chown(root.join("home/tester"), Some(1000), Some(1000)).unwrap();
}

/// A network the test makes for itself (as root), standing for "the outside world" without
/// leaving the machine: a network namespace `forge-net-test-<random>` joined to the host by a veth
/// pair on an unused 10.231.X.0/30, and busybox httpd serving `files` on NS_ADDR:8080 inside it.
/// Everything is removed on drop, also when the test fails.
pub struct TestNet {
    pub ns: String,
    /// The host's end of the veth: an address of the host's own interfaces while the net exists.
    pub host_addr: String,
    /// The namespace's end, where httpd listens.
    pub ns_addr: String,
    host_if: String,
    httpd: Option<Child>,
    _files: tempfile::TempDir,
}

impl TestNet {
    pub const PORT: u16 = 8080;

    pub fn new(files: &[(&str, &str)]) -> TestNet {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            ^ std::process::id().rotate_left(16);
        // A subnet no interface or route of the host uses yet.
        let used = ip(&["-o", "addr"]) + &ip(&["route"]);
        let x = (0..254)
            .map(|i| (seed.wrapping_add(i) % 254) + 1)
            .find(|x| !used.contains(&format!("10.231.{x}.")))
            .expect("a free 10.231.X.0/30");
        let tag = format!("{:06x}", seed & 0xff_ffff);
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        let mut net = TestNet {
            ns: format!("forge-net-test-{tag}"),
            host_addr: format!("10.231.{x}.1"),
            ns_addr: format!("10.231.{x}.2"),
            host_if: format!("fnt{tag}h"),
            httpd: None,
            _files: dir,
        };
        // From here on, drop removes whatever was made.
        let ns_if = format!("fnt{tag}n");
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &net.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.host_addr),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", net.ns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", net.ns_addr),
            "dev",
            &ns_if,
        ]);
        in_ns(&["ip", "link", "set", &ns_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        net.httpd = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &net.ns,
                    forge_testsupport::BUSYBOX,
                    "httpd",
                    "-f",
                ])
                .arg("-p")
                .arg(Self::PORT.to_string())
                .arg("-h")
                .arg(net._files.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start busybox httpd in the test namespace"),
        );
        let addr: std::net::SocketAddr = format!("{}:{}", net.ns_addr, Self::PORT).parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "httpd in {} does not answer on {addr}",
                net.ns
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        net
    }

    /// `http://NS_ADDR:8080/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}/{path}", self.ns_addr, Self::PORT)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Some(mut httpd) = self.httpd.take() {
            let _ = httpd.kill();
            let _ = httpd.wait();
        }
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// The proxy's raw answer to `request` (with `\r\n` line ends written as `\r\n` escapes for the
/// step's printf), as a shell command for a busybox step.
pub fn via_proxy(request: &str) -> String {
    format!(
        "printf '{request}' | nc -w 5 127.0.0.1 {}",
        forge_runner::network::PROXY_PORT
    )
}
