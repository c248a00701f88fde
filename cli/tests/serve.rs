//! `forge serve` end to end (issue 17) with real parts: a git repository served by `git daemon` on
//! loopback (git serves; forge fetches with gix), the busybox test image, the embedded runner as
//! root, webhook payloads in GitHub's, GitLab's, Gitea's and Gitee's documented shapes
//! (testdata/serve/hooks) re-pointed at this repository's commits and signed with openssl (an
//! independent HMAC), curl as the client, a local webhook receiver and SMTP sink for the
//! notifications. One server goes through: signed pushes of three forges, a wrong signature and a
//! replay, a keyword-less push, a tag, the API, two projects at once, a followed log, broken and
//! fixed notifications, and a `kill -9` in the middle of a build.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SECRET: &str = "hook-secret-7f3a";
const API: &str = "api-secret-91c2";

struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn git(&self, args: &[&str]) -> String {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", common::printed(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Commits `flag` (the job passes when it is `ok`) and `delay` (seconds the job sleeps, in
    /// ticks it prints) with `message`; the new commit's id.
    fn commit(&self, flag: &str, delay: u32, message: &str) -> String {
        self.commit_paced(flag, delay, "1", message)
    }

    /// As [`Repo::commit`], the job printing a tick every `pace` seconds.
    fn commit_paced(&self, flag: &str, delay: u32, pace: &str, message: &str) -> String {
        std::fs::write(self.dir.join("flag"), format!("{flag}\n")).unwrap();
        std::fs::write(self.dir.join("delay"), format!("{delay}\n")).unwrap();
        std::fs::write(self.dir.join("pace"), format!("{pace}\n")).unwrap();
        self.git(&["add", "."]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

const PIPELINE: &str = r#"images:
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

fn new_repo(base: &Path, name: &str, busybox: &str) -> Repo {
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
fn prerequisites(tools: &[&str]) -> Option<String> {
    if !forge_testsupport::root("builds run with the embedded runner as root") {
        return None;
    }
    let busybox = forge_testsupport::busybox_image()?;
    for tool in tools {
        forge_testsupport::tool(tool)?;
    }
    Some(busybox)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request with curl: the status and the body.
fn curl(method: &str, url: &str, headers: &[(&str, String)], body: Option<&[u8]>) -> (u16, String) {
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
    assert!(o.status.success(), "curl {url}: {}", common::printed(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// HMAC-SHA256 of `body` with `key`, hex, computed by openssl.
fn hmac_hex(key: &str, body: &[u8]) -> String {
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
fn payload(fixture: &str, reference: &str, before: &str, commit: &str, message: &str) -> Vec<u8> {
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

struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(config: &Path, root: &Path, port: u16, log: &Path) -> Served {
    start(
        Command::new(env!("CARGO_BIN_EXE_forge")),
        config,
        root,
        port,
        log,
    )
}

/// `forge serve` run by `forge` (a command naming the binary, its user set up by the caller).
fn start(mut forge: Command, config: &Path, root: &Path, port: u16, log: &Path) -> Served {
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
    wait_listening(port, "forge serve");
    Served { child, port }
}

fn build_of(s: &Served, project: &str, n: u64) -> Value {
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
fn ended(s: &Served, project: &str, n: u64, log: &Path) -> Value {
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

fn created_number(code: u16, body: &str) -> u64 {
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    v["number"].as_u64().unwrap()
}

fn build_log(s: &Served, project: &str, n: u64) -> String {
    curl(
        "GET",
        &s.url(&format!("/api/v1/projects/{project}/builds/{n}/log")),
        &[],
        None,
    )
    .1
}

#[test]
fn webhooks_the_api_and_a_restart_drive_builds_with_history_logs_and_notifications() {
    let Some(busybox) = prerequisites(&["git", "curl", "openssl", "skopeo"]) else {
        return;
    };
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let tmp = forge_testsupport::scratch("forge-serve-");
    let repos = tmp.path().join("repos");
    let app = new_repo(&repos, "app", &busybox);
    let lib = new_repo(&repos, "lib", &busybox);
    let c1 = app.commit("ok", 0, "first");
    let lib1 = lib.commit("ok", 3, "lib first");

    let daemon = forge_testsupport::GitDaemon::serve(&repos);
    let git_port = daemon.port;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, receiver) = rt.block_on(forge_server::notify::testing::WebhookReceiver::start());
    let (smtp_addr, sink) = rt.block_on(forge_server::notify::testing::SmtpSink::start());

    // The busybox test image as a registry names it in notifications: host and repository.
    let busybox_name = busybox
        .split('@')
        .next()
        .unwrap()
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(busybox.as_str(), |(name, _)| name)
        .to_string();
    let (busybox_host, busybox_repo) = busybox_name.split_once('/').unwrap();
    let plain_tag = format!(
        "{registry}/forge-test/serve-plain:{}",
        forge_testsupport::unique()
    );

    let port = free_port();
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            r#"api_secret: {API}
projects:
  - name: app
    repo: git://127.0.0.1:{git_port}/app.git
    branches: [main, "release/*"]
    triggers: [push, tag, api, registry]
    variables:
      GREETING: hello-from-serve
    webhook_secret: {SECRET}
    secrets:
      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE
    notify:
      webhooks: ["{hook}"]
      email:
        smtp: "{smtp_addr}"
        from: forge@example.invalid
        to: [team@example.invalid]
      on_success: change
      on_failure: change
  - name: lib
    repo: git://127.0.0.1:{git_port}/lib.git
    triggers: [keyword, api, registry]
    watch: ["{busybox_host}/forge-test/upstream:2.0"]
    webhook_secret: {SECRET}
    secrets:
      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE
  - name: local
    repo: file://{app_dir}
    triggers: [api]
    secrets:
      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE
  - name: plain
    repo: git://127.0.0.1:{git_port}/app.git
    dockerfile: Dockerfile
    tags: ["{plain_tag}"]
    triggers: [api]
"#,
            hook = receiver.url("/notify"),
            app_dir = app.dir.display(),
        ),
    )
    .unwrap();
    let root = tmp.path().join("root");
    let server_log = tmp.path().join("serve.log");
    let mut s = start_server(&config, &root, port, &server_log);

    // A signed GitHub push of main builds it; the job sees the branch and number, and the secret
    // is masked in the log.
    let body = payload(
        "github_push.json",
        "refs/heads/main",
        &"0".repeat(40),
        &c1,
        "first",
    );
    let gh = |delivery: &str, sig: String| {
        vec![
            ("Content-Type", "application/json".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", sig),
        ]
    };
    let sig = format!("sha256={}", hmac_hex(SECRET, &body));
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/app/github"),
        &gh("d-1", sig.clone()),
        Some(&body),
    );
    let n1 = created_number(code, &reply);
    let b1 = ended(&s, "app", n1, &server_log);
    assert_eq!(b1["status"], "passed", "{b1}\n{}", build_log(&s, "app", n1));
    assert_eq!(b1["commit"], c1.as_str());
    assert_eq!(b1["trigger"], "push");
    assert_eq!(b1["jobs_failed"], 0);
    let log1 = build_log(&s, "app", n1);
    assert!(
        log1.contains(&format!(
            "branch=[main] number=[{n1}] token=[****] greeting=[hello-from-serve]"
        )),
        "{log1}"
    );
    assert!(!log1.contains("tok-3141592653"), "{log1}");

    // The same delivery again is a replay: 409, nothing queued. A wrong signature and none: 401.
    let (code, _) = curl(
        "POST",
        &s.url("/hooks/app/github"),
        &gh("d-1", sig),
        Some(&body),
    );
    assert_eq!(code, 409);
    let wrong = format!("sha256={}", hmac_hex("not-the-secret", &body));
    let (code, _) = curl(
        "POST",
        &s.url("/hooks/app/github"),
        &gh("d-2", wrong),
        Some(&body),
    );
    assert_eq!(code, 401);
    let (code, _) = curl(
        "POST",
        &s.url("/hooks/app/github"),
        &[
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", "d-3".to_string()),
        ],
        Some(&body),
    );
    assert_eq!(code, 401);
    // A body over the limit is refused before anything reads it.
    let huge = vec![b' '; 5 << 20];
    let big_sig = format!("sha256={}", hmac_hex(SECRET, &huge));
    let (code, _) = curl(
        "POST",
        &s.url("/hooks/app/github"),
        &gh("d-4", big_sig),
        Some(&huge),
    );
    assert_eq!(code, 413);
    let (_, list) = curl("GET", &s.url("/api/v1/projects/app/builds"), &[], None);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // GitLab: a push that breaks the job ("broken"), Gitea: one that fixes it ("fixed").
    let c2 = app.commit("bad", 0, "break it");
    let body = payload("gitlab_push.json", "refs/heads/main", &c1, &c2, "break it");
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/app/gitlab"),
        &[
            ("Content-Type", "application/json".to_string()),
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", SECRET.to_string()),
            ("X-Gitlab-Event-UUID", "gl-1".to_string()),
        ],
        Some(&body),
    );
    let n2 = created_number(code, &reply);
    let b2 = ended(&s, "app", n2, &server_log);
    assert_eq!(b2["status"], "failed", "{b2}");
    assert_eq!(b2["jobs_failed"], 1, "{b2}");
    let c3 = app.commit("ok", 0, "fix it");
    let body = payload("gitea_push.json", "refs/heads/main", &c2, &c3, "fix it");
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/app/gitea"),
        &[
            ("Content-Type", "application/json".to_string()),
            ("X-Gitea-Event", "push".to_string()),
            ("X-Gitea-Delivery", "gt-1".to_string()),
            ("X-Gitea-Signature", hmac_hex(SECRET, &body)),
        ],
        Some(&body),
    );
    let n3 = created_number(code, &reply);
    assert_eq!(ended(&s, "app", n3, &server_log)["status"], "passed");
    let hooks = rt.block_on(receiver.wait_for(2, Duration::from_secs(20)));
    let outcomes: Vec<String> = hooks
        .iter()
        .map(|r| r.json()["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(outcomes, ["broken", "fixed"], "{hooks:?}");
    assert!(hooks[0].json()["text"].as_str().unwrap().contains("app"));
    let mails = rt.block_on(sink.wait_for(2, Duration::from_secs(20)));
    assert_eq!(mails.len(), 2);
    assert!(mails[0].data.contains("broken"), "{}", mails[0].data);
    assert!(mails[1].data.contains("fixed"), "{}", mails[1].data);

    // Gitee: a new tag builds a release with FORGE_GIT_TAG. (The tagged commit is new: jobs'
    // recorded results are keyed by their image and script, not by the built-in variables, so a
    // tag on an already tested commit would replay that run's lines.)
    let c4 = app.commit("ok", 1, "release");
    app.git(&["tag", "v1.0.0"]);
    let body = payload(
        "gitee_tag.json",
        "refs/tags/v1.0.0",
        &"0".repeat(40),
        &c4,
        "release",
    );
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/app/gitee"),
        &[
            ("Content-Type", "application/json".to_string()),
            ("X-Gitee-Event", "Tag Push Hook".to_string()),
            ("X-Gitee-Token", SECRET.to_string()),
        ],
        Some(&body),
    );
    let n4 = created_number(code, &reply);
    let b4 = ended(&s, "app", n4, &server_log);
    assert_eq!(b4["status"], "passed", "{b4}");
    assert_eq!(b4["tag"], "v1.0.0");
    let log4 = build_log(&s, "app", n4);
    assert!(log4.contains("tag=[v1.0.0]"), "{log4}");

    // The keyword trigger: a push without @deploy starts nothing, one with it starts a build.
    let lib2 = lib.commit("ok", 0, "tidy up");
    let body = payload(
        "github_push.json",
        "refs/heads/main",
        &lib1,
        &lib2,
        "tidy up",
    );
    let sig = format!("sha256={}", hmac_hex(SECRET, &body));
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/lib/github"),
        &gh("lib-1", sig),
        Some(&body),
    );
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("\"started\":false"), "{reply}");
    let (_, list) = curl("GET", &s.url("/api/v1/projects/lib/builds"), &[], None);
    assert_eq!(list.trim(), "[]");

    // The API (secret_key in the body, and a bearer token) starts builds of both projects; they
    // run at once, and the followed log shows lines as the job prints them.
    let (code, _) = curl(
        "POST",
        &s.url("/api/v1/projects/app/builds"),
        &[],
        Some(br#"{"secret_key": "wrong"}"#),
    );
    assert_eq!(code, 401);
    let slow = app.commit("ok", 4, "slow one");
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/app/builds"),
        &[("Content-Type", "application/json".to_string())],
        Some(
            format!(r#"{{"secret_key": "{API}", "branch": "main", "commit": "{slow}"}}"#)
                .as_bytes(),
        ),
    );
    let n5 = created_number(code, &reply);
    // Not app's 4: the same files would make the same image and job, whose result the store
    // would then serve from whichever ran first.
    let lib3 = lib.commit("ok", 5, "lib slow");
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/lib/builds"),
        &[("Authorization", format!("Bearer {API}"))],
        Some(format!(r#"{{"commit": "{lib3}", "branch": "main"}}"#).as_bytes()),
    );
    let l1 = created_number(code, &reply);
    let mut follow = Command::new("curl")
        .args(["-sS", "-N"])
        .arg(s.url(&format!("/api/v1/projects/app/builds/{n5}/log?follow=1")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut both = false;
    let started = Instant::now();
    while !both && started.elapsed() < Duration::from_secs(120) {
        both = build_of(&s, "app", n5)["status"] == "running"
            && build_of(&s, "lib", l1)["status"] == "running";
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(both, "the two projects' builds never ran at once");
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut seen_tick_while_running = false;
    let mut all = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("tick 2") {
            seen_tick_while_running = build_of(&s, "app", n5)["status"] == "running";
        }
        all.push(line);
    }
    assert!(seen_tick_while_running, "{all:?}");
    assert!(all.iter().any(|l| l == "build passed"), "{all:?}");
    follow.wait().unwrap();
    let lib_build = ended(&s, "lib", l1, &server_log);
    assert_eq!(
        lib_build["status"],
        "passed",
        "{lib_build}\n{}",
        build_log(&s, "lib", l1)
    );

    // kill -9 in the middle of a build, then a restart: the build is marked interrupted and
    // queued again; every finished build is still there.
    let long = app.commit("ok", 60, "long one");
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/app/builds"),
        &[],
        Some(
            format!(r#"{{"secret_key": "{API}", "commit": "{long}", "branch": "main"}}"#)
                .as_bytes(),
        ),
    );
    let n6 = created_number(code, &reply);
    let started = Instant::now();
    while !build_log(&s, "app", n6).contains("tick 1") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the long build never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = start_server(&config, &root, port, &server_log);
    assert_eq!(build_of(&s, "app", n6)["status"], "interrupted");
    let again = n6 + 1;
    let b7 = build_of(&s, "app", again);
    assert_eq!(b7["trigger"], "restart", "{b7}");
    assert_eq!(b7["commit"], long.as_str());
    for (n, status) in [
        (n1, "passed"),
        (n2, "failed"),
        (n3, "passed"),
        (n4, "passed"),
        (n5, "passed"),
    ] {
        assert_eq!(build_of(&s, "app", n)["status"], status, "build {n}");
    }
    // Cancelling the requeued build while its job runs stops it and records it as cancelled.
    let started = Instant::now();
    while !build_log(&s, "app", again).contains("tick 1") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the requeued build never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, reply) = curl(
        "POST",
        &s.url(&format!("/api/v1/projects/app/builds/{again}/cancel")),
        &[("Authorization", format!("Bearer {API}"))],
        None,
    );
    assert_eq!(code, 202, "{reply}");
    assert_eq!(ended(&s, "app", again, &server_log)["status"], "cancelled");
    // Its job was stopped, not left to finish its 60 ticks.
    assert!(!build_log(&s, "app", again).contains("tick 60"));

    // A registry's notification of a new busybox manifest rebuilds the project whose Dockerfile
    // builds FROM it (its last build recorded that); the layer and config pushes and the pull in
    // the same envelope start nothing more. The fixture's events are re-pointed at the busybox
    // test image's registry and repository.
    let quick = app.commit("ok", 0, "quick again");
    let mut envelope: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testdata/serve/hooks/distribution_events.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for e in envelope["events"].as_array_mut().unwrap() {
        if e["target"]["repository"] == "forge-test/busybox" {
            e["target"]["repository"] = Value::from(busybox_repo);
            e["request"]["host"] = Value::from(busybox_host);
        }
    }
    // lib watches the tag 2.0 of another repository: a push of its tag 1.0 starts nothing, one of
    // 2.0 starts a build.
    let upstream = |tag: &str| {
        let mut e = envelope.clone();
        for ev in e["events"].as_array_mut().unwrap() {
            ev["target"]["repository"] = Value::from("forge-test/upstream");
            if ev["target"].get("tag").is_some() {
                ev["target"]["tag"] = Value::from(tag);
            }
        }
        serde_json::to_vec(&e).unwrap()
    };
    let bearer = [("Authorization", format!("Bearer {SECRET}"))];
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/lib/registry"),
        &bearer,
        Some(&upstream("1.0")),
    );
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains("\"started\":false"), "{reply}");
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/lib/registry"),
        &bearer,
        Some(&upstream("2.0")),
    );
    let l2 = created_number(code, &reply);
    assert_eq!(ended(&s, "lib", l2, &server_log)["trigger"], "registry");
    let envelope = serde_json::to_vec(&envelope).unwrap();
    let (code, _) = curl(
        "POST",
        &s.url("/hooks/app/registry"),
        &[("Authorization", "Bearer wrong".to_string())],
        Some(&envelope),
    );
    assert_eq!(code, 401);
    let (code, reply) = curl(
        "POST",
        &s.url("/hooks/app/registry"),
        &[
            (
                "Content-Type",
                "application/vnd.docker.distribution.events.v1+json".to_string(),
            ),
            ("Authorization", format!("Bearer {SECRET}")),
        ],
        Some(&envelope),
    );
    let n8 = created_number(code, &reply);
    let b8 = ended(&s, "app", n8, &server_log);
    assert_eq!(
        (b8["trigger"].as_str(), b8["status"].as_str()),
        (Some("registry"), Some("passed")),
        "{b8}"
    );
    assert_eq!(
        b8["commit"],
        quick.as_str(),
        "a registry build builds the default branch's head"
    );

    // A plain Dockerfile build (no forge.yaml) tags and pushes its image; the build's record
    // names the pushed reference and digest, which the registry serves.
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/plain/builds"),
        &[("Authorization", format!("Bearer {API}"))],
        None,
    );
    let p1 = created_number(code, &reply);
    let plain = ended(&s, "plain", p1, &server_log);
    assert_eq!(
        plain["status"],
        "passed",
        "{plain}\n{}",
        build_log(&s, "plain", p1)
    );
    let pushed = plain["pushed"][0].as_str().unwrap_or_default().to_string();
    let (reference, digest) = pushed.split_once('@').expect("reference@digest");
    assert_eq!(reference, plain_tag);
    let o = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{plain_tag}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::printed(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), digest);

    // A file:// repository is read in place (gix would hand its transport to git): the branch's
    // head, built without a git server.
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/local/builds"),
        &[("Authorization", format!("Bearer {API}"))],
        Some(br#"{"branch": "main"}"#),
    );
    let f1 = created_number(code, &reply);
    let local = ended(&s, "local", f1, &server_log);
    assert_eq!(
        local["status"],
        "passed",
        "{local}\n{}",
        build_log(&s, "local", f1)
    );
    assert_eq!(local["commit"], quick.as_str());

    // The page's rebuild form (no JavaScript: a form POST) with a wrong secret starts nothing; with
    // the right one it starts a build and sends the browser to its page.
    let form = |secret: &str| format!("branch=main&other_branch=&secret={secret}");
    let (code, _) = curl(
        "POST",
        &s.url("/p/app/rebuild"),
        &[],
        Some(form("nope").as_bytes()),
    );
    assert_eq!(code, 401);
    let (code, _) = curl(
        "POST",
        &s.url("/p/app/rebuild"),
        &[],
        Some(form(API).as_bytes()),
    );
    assert_eq!(code, 303);
    let n9 = n8 + 1;
    assert_eq!(build_of(&s, "app", n9)["trigger"], "manual");
    let (code, _) = curl(
        "POST",
        &s.url(&format!("/p/app/{n9}/cancel")),
        &[],
        Some(format!("secret={API}").as_bytes()),
    );
    assert_eq!(code, 303);
    let b9 = ended(&s, "app", n9, &server_log);
    assert!(
        matches!(b9["status"].as_str(), Some("cancelled" | "passed")),
        "{b9}"
    );

    // The pages render from the same records.
    let (code, html) = curl("GET", &s.url("/p/app"), &[], None);
    assert_eq!(code, 200);
    assert!(html.contains(&format!("data-number=\"{n2}\"")), "{html}");
    let (code, badge) = curl("GET", &s.url("/p/app/badge.svg"), &[], None);
    assert_eq!(code, 200);
    assert!(badge.contains("<svg"), "{badge}");
    drop(s);
    drop(daemon);
}

/// `forge serve --check --config CONFIG`.
fn check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["serve", "--check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A bad serve.yaml is refused at start with its file, line and column, and the caret under it.
#[test]
fn a_bad_configuration_names_its_line_and_column() {
    let tmp = forge_testsupport::scratch("forge-serve-config-");
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        "projects:\n  - name: app\n    repo: git://127.0.0.1/app.git\n    triggers: [push, tagg]\n",
    )
    .unwrap();
    let o = check(&config);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:4:", config.display())) && err.contains("unknown value `tagg`"),
        "{err}"
    );
    assert!(err.contains("did you mean `tag`?"), "{err}");
    std::fs::write(
        &config,
        "projects:\n  - name: app\n    repo: git://127.0.0.1/app.git\n",
    )
    .unwrap();
    let o = check(&config);
    assert!(o.status.success(), "{}", common::printed(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("listening on 127.0.0.1:8420"), "{out}");
    assert!(
        out.contains("project app: git://127.0.0.1/app.git (push, tag, api)"),
        "{out}"
    );
}

/// Resident and peak memory of process `pid`, in KiB (VmRSS, VmHWM).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A load figure (bounded, loopback): 200 signed push deliveries over four projects from eight
/// concurrent clients. Every one is answered 201 with its own number, none is lost or doubled
/// (each project ends with exactly its 50 builds, numbered 1..=50, all passed), the queue drains,
/// and the server's memory is printed (resident after the first builds and at the end, and the
/// peak).
#[test]
fn two_hundred_deliveries_are_each_built_once_and_the_queue_drains() {
    let Some(busybox) = prerequisites(&["git", "curl", "openssl"]) else {
        return;
    };
    const PROJECTS: usize = 4;
    const DELIVERIES: usize = 200;
    let tmp = forge_testsupport::scratch("forge-serve-load-");
    let repos = tmp.path().join("repos");
    let repo = new_repo(&repos, "app", &busybox);
    let commit = repo.commit("ok", 0, "steady");
    let daemon = forge_testsupport::GitDaemon::serve(&repos);
    let git_port = daemon.port;
    let mut config = String::from("projects:\n");
    for p in 0..PROJECTS {
        config.push_str(&format!(
            "  - name: p{p}\n    repo: git://127.0.0.1:{git_port}/app.git\n    \
             webhook_secret: {SECRET}\n    secrets:\n      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE\n"
        ));
    }
    let config_path = tmp.path().join("serve.yaml");
    std::fs::write(&config_path, config).unwrap();
    let root = tmp.path().join("root");
    let server_log = tmp.path().join("serve.log");
    let port = free_port();
    let s = start_server(&config_path, &root, port, &server_log);
    let pid = s.child.id();
    let body = payload(
        "github_push.json",
        "refs/heads/main",
        &"0".repeat(40),
        &commit,
        "steady",
    );
    let sig = format!("sha256={}", hmac_hex(SECRET, &body));
    let body_file = tmp.path().join("push.json");
    std::fs::write(&body_file, &body).unwrap();

    let sent = Instant::now();
    let answers: Vec<(usize, u16, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (s, sig, body_file) = (&s, &sig, &body_file);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for i in (w..DELIVERIES).step_by(8) {
                        let o = Command::new("curl")
                            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
                            .arg(s.url(&format!("/hooks/p{}/github", i % PROJECTS)))
                            .args(["-H", "Content-Type: application/json"])
                            .args(["-H", "X-GitHub-Event: push"])
                            .arg("-H")
                            .arg(format!("X-GitHub-Delivery: load-{i}"))
                            .arg("-H")
                            .arg(format!("X-Hub-Signature-256: {sig}"))
                            .arg("--data-binary")
                            .arg(format!("@{}", body_file.display()))
                            .output()
                            .unwrap();
                        let text = String::from_utf8_lossy(&o.stdout).into_owned();
                        let (reply, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
                        out.push((i, code.trim().parse().unwrap_or(0), reply.to_string()));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let sending = sent.elapsed();
    assert_eq!(answers.len(), DELIVERIES);
    let mut numbers = vec![Vec::new(); PROJECTS];
    for (i, code, reply) in &answers {
        assert_eq!(*code, 201, "delivery {i}: {reply}");
        let v: Value = serde_json::from_str(reply).unwrap();
        numbers[i % PROJECTS].push(v["number"].as_u64().unwrap());
    }
    for n in &mut numbers {
        n.sort_unstable();
        assert_eq!(*n, (1..=(DELIVERIES / PROJECTS) as u64).collect::<Vec<_>>());
    }
    let mut early_rss = 0;
    let drained = Instant::now();
    loop {
        let mut open = 0;
        let mut ended_total = 0;
        for p in 0..PROJECTS {
            let (_, list) = curl(
                "GET",
                &s.url(&format!("/api/v1/projects/p{p}/builds?limit=1000")),
                &[],
                None,
            );
            let list: Value = serde_json::from_str(&list).unwrap();
            let list = list.as_array().unwrap();
            assert_eq!(list.len(), DELIVERIES / PROJECTS, "p{p}: {list:?}");
            for b in list {
                match b["status"].as_str().unwrap() {
                    "queued" | "running" => open += 1,
                    "passed" => ended_total += 1,
                    other => panic!(
                        "p{p} #{}: {other}\n{}",
                        b["number"],
                        build_log(&s, &format!("p{p}"), b["number"].as_u64().unwrap())
                    ),
                }
            }
        }
        if early_rss == 0 && ended_total >= 20 {
            early_rss = memory_kib(pid).0;
        }
        if open == 0 {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(600),
            "{open} builds still open after 600 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (rss, peak) = memory_kib(pid);
    eprintln!(
        "load: {DELIVERIES} deliveries sent in {:.2} s, every build ended {:.1} s later; server \
         memory: {} MiB after the first 20 builds, {} MiB at the end, peak {} MiB",
        sending.as_secs_f64(),
        drained.elapsed().as_secs_f64(),
        early_rss / 1024,
        rss / 1024,
        peak / 1024
    );
    drop(s);
    drop(daemon);
}

/// Where a test keeps what CI should keep (screenshots): `$FORGE_TEST_ARTIFACTS/<what>`, else
/// `target/test-artifacts/<what>` in the workspace.
fn artifacts(what: &str) -> PathBuf {
    let base = std::env::var_os("FORGE_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"));
    let dir = base.join(what);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's chromium, headless, driven through the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages, NUL-terminated, on descriptors 3 and 4), so a test
/// reads a page's DOM at the moment it chooses, as it is then, scripts and all.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = forge_testsupport::scratch("forge-chromium-");
        // Commands go down `cmd`, answers come up `out`.
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (cmd_read, cmd_write) = nix::unistd::pipe2(cloexec).unwrap();
        let (out_read, out_write) = nix::unistd::pipe2(cloexec).unwrap();
        let (cr, ow) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.path().join("stderr")).unwrap());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Either end may already sit on 3 or 4: move both out of the way first.
                let (cr2, ow2) = (libc::dup2(cr, 100), libc::dup2(ow, 101));
                if cr2 < 0 || ow2 < 0 || libc::dup2(cr2, 3) < 0 || libc::dup2(ow2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(cr2);
                libc::close(ow2);
                Ok(())
            });
        }
        let child = command.spawn().expect("run chromium");
        drop(cmd_read);
        drop(out_write);
        Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from: BufReader::new(std::fs::File::from(out_read)),
            next_id: 1,
            _profile: profile,
        }
    }

    /// Sends `method` (to `session` when given) and waits for its answer's `result`.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::from(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(
                n > 0,
                "chromium closed its pipe during {method}: {}",
                std::fs::read_to_string(self._profile.path().join("stderr")).unwrap_or_default()
            );
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab; the tab's session.
    fn open(&mut self, url: &str) -> String {
        let target = self.call(
            None,
            "Target.createTarget",
            serde_json::json!({ "url": url }),
        );
        let attached = self.call(
            None,
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_string();
        // Until the document is parsed and its inline scripts ran.
        let started = Instant::now();
        loop {
            let state = self.eval(
                &session,
                &format!(
                    "document.readyState + ' ' + (location.href === {})",
                    serde_json::to_string(url).unwrap()
                ),
            );
            if state == "complete true" {
                return session;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{url} never loaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of a JavaScript `expression` in the tab, as a string.
    fn eval(&mut self, session: &str, expression: &str) -> String {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        match &r["result"]["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// The tab's DOM as it is now.
    fn dom(&mut self, session: &str) -> String {
        self.eval(session, "document.documentElement.outerHTML")
    }

    /// A PNG of the tab, written to `path`.
    fn screenshot(&mut self, session: &str, path: &Path) {
        use base64::Engine as _;
        let r = self.call(
            Some(session),
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real browser (Debian's chromium, headless) loads every page: the index, the project page
/// with its chart, a build page with its jobs, the badge; screenshots are kept as artifacts. The
/// build page opened while its build runs shows, without a reload, the log lines that arrived
/// after it loaded: its status still reads "running" (as rendered at load) while its log ends
/// with the build's last lines.
#[test]
fn a_browser_renders_the_pages_and_follows_a_running_build_s_log() {
    let Some(busybox) = prerequisites(&["git", "curl", "chromium"]) else {
        return;
    };
    let tmp = forge_testsupport::scratch("forge-serve-browser-");
    let repos = tmp.path().join("repos");
    let repo = new_repo(&repos, "app", &busybox);
    let quick = repo.commit("ok", 0, "quick <b>bold</b> & sure");
    let daemon = forge_testsupport::GitDaemon::serve(&repos);
    let git_port = daemon.port;
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "projects:\n  - name: app\n    repo: git://127.0.0.1:{git_port}/app.git\n    \
             api_secret: {API}\n    secrets:\n      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE\n"
        ),
    )
    .unwrap();
    let root = tmp.path().join("root");
    let server_log = tmp.path().join("serve.log");
    let s = start_server(&config, &root, free_port(), &server_log);
    let start = |commit: &str| {
        let (code, reply) = curl(
            "POST",
            &s.url("/api/v1/projects/app/builds"),
            &[("Authorization", format!("Bearer {API}"))],
            Some(format!(r#"{{"commit": "{commit}", "branch": "main"}}"#).as_bytes()),
        );
        created_number(code, &reply)
    };
    let first = start(&quick);
    assert_eq!(ended(&s, "app", first, &server_log)["status"], "passed");

    // Ticks five times a second: headless chromium holds its virtual clock for a streamed
    // response only while data keeps coming.
    let slow = repo.commit_paced("ok", 30, "0.2", "slow");
    let n = start(&slow);
    let started = Instant::now();
    while !build_log(&s, "app", n).contains("tick 1") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the build never ticked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = artifacts("serve-pages");
    let mut browser = Browser::start();
    let tab = browser.open(&s.url(&format!("/p/app/{n}")));
    let at_load = browser.eval(&tab, "document.getElementById('log').textContent");
    assert!(at_load.contains("tick 1"), "{at_load}");
    // Its job shows as running before the build ends.
    assert_eq!(
        browser.eval(
            &tab,
            "document.querySelector('tr.job[data-job=\"test\"]').getAttribute('data-result')"
        ),
        "running"
    );
    // While the build runs, lines arrive in the page that was not reloaded: more ticks than
    // when it loaded, the status still as rendered.
    std::thread::sleep(Duration::from_secs(2));
    let live = browser.eval(&tab, "document.getElementById('log').textContent");
    let ticks = |t: &str| t.lines().filter(|l| l.contains("] tick ")).count();
    assert!(
        ticks(&live) > ticks(&at_load),
        "no line came after load:\n{at_load}\n---\n{live}"
    );
    assert_eq!(
        browser.eval(&tab, "document.getElementById('status').textContent"),
        "running"
    );
    browser.screenshot(&tab, &shots.join("live-log.png"));
    ended(&s, "app", n, &server_log);
    let started = Instant::now();
    loop {
        let dom = browser.dom(&tab);
        if dom.contains("data-status=\"passed\"") {
            let log = dom.split("id=\"log\"").nth(1).unwrap_or("");
            assert!(
                log.contains("data-follow=")
                    && log.contains("tick 30")
                    && log.contains("build passed"),
                "{dom}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page never saw the end:\n{dom}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let tab = browser.open(&s.url("/"));
    let index = browser.dom(&tab);
    browser.screenshot(&tab, &shots.join("index.png"));
    assert!(index.contains("id=\"projects\""), "{index}");
    assert!(index.contains("data-project=\"app\""), "{index}");
    let tab = browser.open(&s.url("/p/app"));
    let project = browser.dom(&tab);
    browser.screenshot(&tab, &shots.join("project.png"));
    for n in [first, n] {
        assert!(
            project.contains(&format!("data-number=\"{n}\"")),
            "build {n} missing:\n{project}"
        );
    }
    assert!(project.contains("id=\"chart\""), "{project}");
    assert!(project.contains("id=\"rebuild\""), "{project}");
    assert!(
        project.contains("quick &lt;b&gt;bold&lt;/b&gt; &amp; sure"),
        "a commit message must show as text:\n{project}"
    );
    let tab = browser.open(&s.url(&format!("/p/app/{first}")));
    let build = browser.dom(&tab);
    browser.screenshot(&tab, &shots.join("build.png"));
    assert!(build.contains("data-job=\"test\""), "{build}");
    assert!(build.contains("data-result=\"passed\""), "{build}");
    assert!(
        !build.contains("id=\"cancel\""),
        "an ended build has no cancel form"
    );
    let tab = browser.open(&s.url("/p/app/badge.svg"));
    browser.screenshot(&tab, &shots.join("badge.png"));
    assert_eq!(
        browser.eval(
            &tab,
            "document.documentElement.textContent.includes('passing')"
        ),
        "true"
    );
    drop(browser);
    eprintln!("screenshots: {}", shots.display());
    drop(s);
    drop(daemon);
}

/// Rootless: `forge serve` started as the unprivileged test user (its subordinate ids mapped, no
/// root anywhere) fetches, builds and runs a job, and records the build in the user's own store;
/// the server process is the user's.
#[test]
fn an_ordinary_user_serves_builds_rootless() {
    let Some(busybox) = prerequisites(&["git", "curl"]) else {
        return;
    };
    let Some(user) = forge_testsupport::test_user() else {
        return;
    };
    let ws = forge_testsupport::shared_scratch("forge-serve-rootless-", Some(&user));
    let repos = ws.path().join("repos");
    let repo = new_repo(&repos, "app", &busybox);
    std::fs::write(
        repo.dir.join("Dockerfile"),
        format!("FROM {busybox}\nWORKDIR /app\nRUN id -u > /app/uid\nCOPY flag delay pace /app/\n"),
    )
    .unwrap();
    let commit = repo.commit("ok", 0, "rootless");
    let daemon = forge_testsupport::GitDaemon::serve(&repos);
    let config = ws.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "projects:\n  - name: app\n    repo: git://127.0.0.1:{}/app.git\n    \
             api_secret: {API}\n    secrets:\n      DEPLOY_TOKEN: env:DEPLOY_TOKEN_VALUE\n",
            daemon.port
        ),
    )
    .unwrap();
    // The repositories stay root's (git daemon, running as root, serves only those); the folder is
    // the user's, so the store and the checkouts are made by the user.
    let exe = forge_testsupport::install_exe(env!("CARGO_BIN_EXE_forge"), ws.path());
    let mut forge = Command::new(&exe);
    forge.env("HOME", ws.path()).current_dir(ws.path());
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        forge.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let root = ws.path().join("store");
    let log = ws.path().join("serve.log");
    let s = start(forge, &config, &root, free_port(), &log);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let server_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap();
    assert_eq!(server_uid, user.uid.to_string(), "{status}");
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/app/builds"),
        &[("Authorization", format!("Bearer {API}"))],
        Some(format!(r#"{{"commit": "{commit}", "branch": "main"}}"#).as_bytes()),
    );
    let n = created_number(code, &reply);
    let b = ended(&s, "app", n, &log);
    assert_eq!(b["status"], "passed", "{b}\n{}", build_log(&s, "app", n));
    assert!(build_log(&s, "app", n).contains("token=[****]"));
    // The history is in the user's store, written by the user.
    let db = root.join("serve/serve.redb");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&db).unwrap());
    assert_eq!(owner, user.uid);
    drop(s);
    drop(daemon);
}
