//! `forge serve`'s pages in a real browser: Debian's chromium, headless, reads each page's DOM
//! and follows a running build's log; screenshots are kept as CI artifacts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::*;
use serde_json::Value;

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
    let s = start_server(&config, &root, forge_testsupport::free_port(), &server_log);
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
    // The browser starts before the slow build does: on a loaded machine chromium's start
    // alone once outlasted the build's ticks, and the page then found it ended.
    let shots = artifacts("serve-pages");
    let mut browser = Browser::start();
    let slow = repo.commit_paced("ok", 50, "0.2", "slow");
    let n = start(&slow);
    wait_for_log(&s, "app", n, "tick 1", "the build never ticked");
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
                    && log.contains("tick 50")
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
