//! What the `forge serve` tests share: a git repository with a pipeline whose job prints what it
//! sees, the server started and asked with curl, webhook payloads from the fixtures, signed by
//! openssl.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "hook-secret-7f3a";
pub const API: &str = "api-secret-91c2";

pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn git(&self, args: &[&str]) -> String {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", super::printed(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Commits `flag` (the job passes when it is `ok`) and `delay` (seconds the job sleeps, in
    /// ticks it prints) with `message`; the new commit's id.
    pub fn commit(&self, flag: &str, delay: u32, message: &str) -> String {
        self.commit_paced(flag, delay, "1", message)
    }

    /// As [`Repo::commit`], the job printing a tick every `pace` seconds.
    pub fn commit_paced(&self, flag: &str, delay: u32, pace: &str, message: &str) -> String {
        std::fs::write(self.dir.join("flag"), format!("{flag}\n")).unwrap();
        std::fs::write(self.dir.join("delay"), format!("{delay}\n")).unwrap();
        std::fs::write(self.dir.join("pace"), format!("{pace}\n")).unwrap();
        self.git(&["add", "."]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

pub const PIPELINE: &str = r#"images:
  app:
    context: .
jobs:
  test:
    image: app
    secrets: [DEPLOY_TOKEN]
    script:
      - echo "tag=[$FORGE_GIT_TAG] branch=[$FORGE_GIT_BRANCH] number=[$FORGE_BUILD_NUMBER] token=[$DEPLOY_TOKEN] greeting=[$GREETING]"
      - 'i=0; while [ $i -lt $(cat /app/delay) ]; do i=$((i+1)); echo "tick $i"; sleep $(cat /app/pace); done'
      - test "$(cat /app/flag)" = ok
"#;

pub fn new_repo(base: &Path, name: &str, busybox: &str) -> Repo {
    let dir = base.join(format!("{name}.git"));
    std::fs::create_dir_all(&dir).unwrap();
    let repo = Repo { dir };
    repo.git(&["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.dir.join("Dockerfile"),
        format!("FROM {busybox}\nWORKDIR /app\nCOPY flag delay pace /app/\n"),
    )
    .unwrap();
    std::fs::write(repo.dir.join("forge.yaml"), PIPELINE).unwrap();
    repo
}

/// What every test here needs: root (the embedded runner), the busybox test image (returned)
/// and `tools`.
pub fn prerequisites(tools: &[&str]) -> Option<String> {
    if !forge_testsupport::root("builds run with the embedded runner as root") {
        return None;
    }
    let busybox = forge_testsupport::busybox_image()?;
    for tool in tools {
        forge_testsupport::tool(tool)?;
    }
    Some(busybox)
}

/// A request with curl: the status and the body.
pub fn curl(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(b) = body {
        stdin.write_all(b).unwrap();
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "curl {url}: {}", super::printed(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// HMAC-SHA256 of `body` with `key`, hex, computed by openssl.
pub fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A fixture payload re-pointed at `reference` and `commit` (with `message`): the fields the real
/// senders put the pushed ref and commits in.
pub fn payload(
    fixture: &str,
    reference: &str,
    before: &str,
    commit: &str,
    message: &str,
) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/serve/hooks")
        .join(fixture);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v["ref"] = Value::from(reference);
    v["before"] = Value::from(before);
    v["after"] = Value::from(commit);
    if v.get("checkout_sha").is_some() {
        v["checkout_sha"] = Value::from(commit);
    }
    if let Some(commits) = v.get_mut("commits").and_then(Value::as_array_mut) {
        commits.truncate(1);
        if let Some(c) = commits.first_mut() {
            c["id"] = Value::from(commit);
            c["message"] = Value::from(message);
        }
    }
    if v.get("head_commit").is_some_and(|h| h.is_object()) {
        v["head_commit"]["id"] = Value::from(commit);
        v["head_commit"]["message"] = Value::from(message);
    }
    serde_json::to_vec(&v).unwrap()
}

pub struct Served {
    pub child: Child,
    pub port: u16,
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(config: &Path, root: &Path, port: u16, log: &Path) -> Served {
    start(
        Command::new(env!("CARGO_BIN_EXE_forge")),
        config,
        root,
        port,
        log,
    )
}

/// `forge serve` run by `forge` (a command naming the binary, its user set up by the caller).
pub fn start(mut forge: Command, config: &Path, root: &Path, port: u16, log: &Path) -> Served {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = forge
        .args(["serve", "--config"])
        .arg(config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--max-builds",
            "2",
        ])
        .arg("--root")
        .arg(root)
        .env("DEPLOY_TOKEN_VALUE", "tok-3141592653")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    forge_testsupport::wait_listening(port, "forge serve", Duration::from_secs(30));
    Served { child, port }
}

pub fn build_of(s: &Served, project: &str, n: u64) -> Value {
    let (code, body) = curl(
        "GET",
        &s.url(&format!("/api/v1/projects/{project}/builds/{n}")),
        &[],
        None,
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until build `n` has ended; the build.
pub fn ended(s: &Served, project: &str, n: u64, log: &Path) -> Value {
    let started = Instant::now();
    loop {
        let b = build_of(s, project, n);
        let status = b["status"].as_str().unwrap().to_string();
        if !matches!(status.as_str(), "queued" | "running") {
            return b;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{project} #{n} still {status}; server log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn created_number(code: u16, body: &str) -> u64 {
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    v["number"].as_u64().unwrap()
}

pub fn build_log(s: &Served, project: &str, n: u64) -> String {
    curl(
        "GET",
        &s.url(&format!("/api/v1/projects/{project}/builds/{n}/log")),
        &[],
        None,
    )
    .1
}

/// Waits (up to 120 s) until build `n`'s log holds `line`; panics with `what` when it never does.
pub fn wait_for_log(s: &Served, project: &str, n: u64, line: &str, what: &str) {
    let started = Instant::now();
    while !build_log(s, project, n).contains(line) {
        assert!(started.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
