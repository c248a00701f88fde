//! `forge serve` end to end (issue 17) with real parts: a git repository served by `git daemon` on
//! loopback (git serves; forge fetches with gix), the busybox test image, the embedded runner as
//! root, webhook payloads in GitHub's, GitLab's, Gitea's and Gitee's documented shapes
//! (testdata/serve/hooks) re-pointed at this repository's commits and signed with openssl (an
//! independent HMAC), curl as the client, a local webhook receiver and SMTP sink for the
//! notifications. One server goes through: signed pushes of three forges, a wrong signature and a
//! replay, a keyword-less push, a tag, the API, two projects at once, a followed log, broken and
//! fixed notifications, and a `kill -9` in the middle of a build. The browser and the load have
//! files of their own (`serve_browser.rs`, `serve_load.rs`); what they share is
//! `common/serve.rs`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::*;
use serde_json::Value;

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
    // A git host in an outage: it accepts connections and never answers.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in mute.incoming().flatten() {
            held.push(stream);
        }
    });

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

    let port = forge_testsupport::free_port();
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
  - name: mute
    repo: git://127.0.0.1:{mute_port}/app.git
    dockerfile: Dockerfile
    triggers: [api]
  - name: pushonly
    repo: git://127.0.0.1:{git_port}/app.git
    triggers: [push]
    webhook_secret: {SECRET}
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
    wait_for_log(&s, "app", n6, "tick 1", "the long build never started");
    // A second server on the same root is refused, and leaves the running build's checkout be.
    let work = root.join("serve/work");
    let checkouts = || -> Vec<std::path::PathBuf> { walk_dirs(&work, 2) };
    let before = checkouts();
    assert!(!before.is_empty(), "no checkout under {}", work.display());
    let second = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", forge_testsupport::free_port()),
        ])
        .arg("--root")
        .arg(&root)
        .env("DEPLOY_TOKEN_VALUE", "tok-3141592653")
        .output()
        .unwrap();
    assert!(
        !second.status.success(),
        "a second server started on the same root"
    );
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("serve.redb"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        checkouts(),
        before,
        "the second server touched the running build's checkout"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = start_server(&config, &root, port, &server_log);
    let interrupted = build_of(&s, "app", n6);
    assert_eq!(interrupted["status"], "interrupted");
    // Its job that was running ended with it, and the log says why it stops there.
    assert!(
        interrupted["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["result"] != "running"),
        "{interrupted}"
    );
    assert!(
        build_log(&s, "app", n6).contains("the server stopped while this build ran"),
        "{}",
        build_log(&s, "app", n6)
    );
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
    wait_for_log(&s, "app", again, "tick 1", "the requeued build never ran");
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
    // A fetch from a remote that never answers is abandoned by a cancel.
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/mute/builds"),
        &[],
        Some(format!(r#"{{"secret_key": "{API}", "branch": "main"}}"#).as_bytes()),
    );
    let m1 = created_number(code, &reply);
    wait_for_log(&s, "mute", m1, "fetching", "the mute build never started");
    let (code, reply) = curl(
        "POST",
        &s.url(&format!("/api/v1/projects/mute/builds/{m1}/cancel")),
        &[("Authorization", format!("Bearer {API}"))],
        None,
    );
    assert_eq!(code, 202, "{reply}");
    let mute_build = ended(&s, "mute", m1, &server_log);
    assert_eq!(mute_build["status"], "cancelled", "{mute_build}");

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
    // A project whose api trigger is off is closed to the button too, as to the API.
    let (code, page) = curl(
        "POST",
        &s.url("/p/pushonly/rebuild"),
        &[],
        Some(form(API).as_bytes()),
    );
    assert_eq!(code, 403, "{page}");
    let (code, listed) = curl("GET", &s.url("/api/v1/projects/pushonly/builds"), &[], None);
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed.trim(), "[]", "the button started a build");
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
    assert!(!badge.contains(">unknown<"), "{badge}");
    // A branch's badge is of that branch's builds only: none here of one never built.
    let (code, main) = curl("GET", &s.url("/p/app/badge.svg?branch=main"), &[], None);
    assert_eq!(code, 200);
    assert!(!main.contains(">unknown<"), "{main}");
    let (code, other) = curl(
        "GET",
        &s.url("/p/app/badge.svg?branch=never-built"),
        &[],
        None,
    );
    assert_eq!(code, 200);
    assert!(other.contains(">unknown<"), "{other}");
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
    let s = start(forge, &config, &root, forge_testsupport::free_port(), &log);
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

/// The directories `depth` levels below `dir` (sorted), or none when it does not exist.
fn walk_dirs(dir: &Path, depth: usize) -> Vec<std::path::PathBuf> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..depth {
        let mut next: Vec<std::path::PathBuf> = level
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        next.sort();
        level = next;
    }
    level
}

/// A commit's forge.yaml is a link out of the checkout: to a file of the server's (the tester's
/// `/etc/shadow` and the server's own serve.yaml), or to a FIFO (the tester's `/proc/self/fd/N`,
/// which blocked a runtime worker for ever). The build fails saying why, the target's text shows
/// nowhere, the server keeps answering, and the server's API secret (here in a commit message) is
/// masked in the log, on the page and in the API though it is no secret of the project.
#[test]
fn a_pipeline_file_linked_out_of_the_checkout_is_refused_unread() {
    let Some(busybox) = prerequisites(&["git", "curl"]) else {
        return;
    };
    let tmp = forge_testsupport::scratch("forge-serve-link-");
    let app = new_repo(&tmp.path().join("repos"), "app", &busybox);
    app.commit("ok", 0, "first");
    let private = tmp.path().join("private.txt");
    std::fs::write(&private, "root:$6$hash-of-the-server:20228:0:99999:7:::\n").unwrap();
    let fifo = tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (branch, target) in [("file", &private), ("fifo", &fifo)] {
        app.git(&["checkout", "-q", "-b", branch, "main"]);
        std::fs::remove_file(app.dir.join("forge.yaml")).unwrap();
        std::os::unix::fs::symlink(target, app.dir.join("forge.yaml")).unwrap();
        app.git(&["add", "."]);
        app.git(&["commit", "-q", "-m", &format!("link to {API}")]);
    }
    let port = forge_testsupport::free_port();
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "api_secret: {API}\nprojects:\n  - name: file\n    repo: file://{dir}\n    \
             triggers: [api]\n  - name: fifo\n    repo: file://{dir}\n    triggers: [api]\n",
            dir = app.dir.display()
        ),
    )
    .unwrap();
    let server_log = tmp.path().join("serve.log");
    let s = start_server(&config, &tmp.path().join("root"), port, &server_log);
    let mut numbers = Vec::new();
    for project in ["fifo", "file"] {
        let (code, reply) = curl(
            "POST",
            &s.url(&format!("/api/v1/projects/{project}/builds")),
            &[("Authorization", format!("Bearer {API}"))],
            Some(format!(r#"{{"branch": "{project}"}}"#).as_bytes()),
        );
        numbers.push((project, created_number(code, &reply)));
    }
    for (project, n) in numbers {
        let started = Instant::now();
        let b = loop {
            let b = build_of(&s, project, n);
            if !matches!(b["status"].as_str(), Some("queued" | "running")) {
                break b;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{project} #{n} still {}: the read of its forge.yaml blocks\n{}",
                b["status"],
                std::fs::read_to_string(&server_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(b["status"], "failed", "{b}");
        let error = b["error"].as_str().unwrap_or_default();
        assert!(error.contains("forge.yaml in the repository"), "{error}");
        let (_, page) = curl("GET", &s.url(&format!("/p/{project}/{n}")), &[], None);
        let log = build_log(&s, project, n);
        assert!(log.contains("link to ****") && !log.contains(API), "{log}");
        // The commit message is shown on the page and in the API too.
        for shown in [b.to_string(), page, log] {
            assert!(!shown.contains("hash-of-the-server"), "{shown}");
            assert!(!shown.contains(API), "{shown}");
        }
    }
    let (code, _) = curl("GET", &s.url("/"), &[], None);
    assert_eq!(code, 200);
}

/// A server in `dir` with one project, `app`, whose webhook builds `main` only: pushes of `old`
/// start nothing, so no git server is needed where what is refused is refused before that.
fn serve_without_git(dir: &Path) -> (Served, u16) {
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "projects:\n  - name: app\n    repo: git://127.0.0.1:9/app.git\n    \
             branches: [main]\n    webhook_secret: {SECRET}\n"
        ),
    )
    .unwrap();
    let port = forge_testsupport::free_port();
    let s = start_server(&config, &dir.join("root"), port, &dir.join("serve.log"));
    (s, port)
}

/// The delivery id is not signed, the body is: a captured signed push sent again without its
/// `X-GitHub-Delivery`, or with another one, is the same delivery and a 409, as the same id is;
/// a new body is taken.
#[test]
fn a_signed_body_replayed_under_another_delivery_id_is_refused() {
    for tool in ["curl", "openssl"] {
        if forge_testsupport::tool(tool).is_none() {
            return;
        }
    }
    let tmp = forge_testsupport::scratch("forge-serve-replay-");
    let (s, port) = serve_without_git(tmp.path());
    let send = |body: &[u8], delivery: Option<&str>| {
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("User-Agent", "GitHub-Hookshot/a1b2c3d".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(SECRET, body)),
            ),
        ];
        headers.extend(delivery.map(|d| ("X-GitHub-Delivery", d.to_string())));
        curl("POST", &s.url("/hooks/app/github"), &headers, Some(body))
    };
    let push = |commit: &str| {
        payload(
            "github_push.json",
            "refs/heads/old",
            &"0".repeat(40),
            commit,
            "old",
        )
    };
    let captured = push(&"1".repeat(40));
    let (code, reply) = send(&captured, Some("orig-guid-1"));
    assert_eq!(code, 200, "{reply}");
    for delivery in [Some("orig-guid-1"), None, Some("other-guid"), None] {
        let (code, reply) = send(&captured, delivery);
        assert_eq!(code, 409, "{delivery:?}: {reply}");
    }
    let (code, reply) = send(&push(&"2".repeat(40)), None);
    assert_eq!(code, 200, "{reply}");
    // A delivery refused as malformed is not taken: its id is free for the good one.
    let (code, reply) = send(b"{\"ref\": 7}", Some("fixed-guid"));
    assert_eq!(code, 400, "{reply}");
    let (code, reply) = send(&push(&"3".repeat(40)), Some("fixed-guid"));
    assert_eq!(code, 200, "{reply}");

    // DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1 has its
    // visitor's browser send `Host: attacker.example`; the server answers only to its own names.
    for host in ["attacker.example", &format!("attacker.example:{port}")] {
        let (code, reply) = curl("GET", &s.url("/"), &[("Host", host.to_string())], None);
        assert_eq!(code, 421, "{host}: {reply}");
        assert!(reply.contains("does not answer to the name"), "{reply}");
        let (code, _) = curl(
            "GET",
            &s.url("/api/v1/projects/app/builds"),
            &[("Host", host.to_string())],
            None,
        );
        assert_eq!(code, 421, "{host}: the API answered");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (code, reply) = curl("GET", &s.url("/"), &[("Host", host.clone())], None);
        assert_eq!(code, 200, "{host}: {reply}");
    }
}

/// GitLab signs nothing and its push bodies carry nothing that changes from one push to the next:
/// a tag deleted and pushed again at its commit sends the same bytes under a new
/// `Idempotency-Key`, and is taken; a retry (the same key) is a 409. A body declared larger than
/// the server takes is refused with JSON before it is sent, even to a client that waits for
/// `100 Continue`.
#[test]
fn gitlab_pushes_are_told_apart_by_their_key_and_an_oversized_body_is_refused_unsent() {
    if forge_testsupport::tool("curl").is_none() {
        return;
    }
    let tmp = forge_testsupport::scratch("forge-serve-gitlab-key-");
    let (s, port) = serve_without_git(tmp.path());
    let send = |body: &[u8], key: Option<&str>| {
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", SECRET.to_string()),
        ];
        headers.extend(key.map(|k| ("Idempotency-Key", k.to_string())));
        curl("POST", &s.url("/hooks/app/gitlab"), &headers, Some(body))
    };
    let body = payload(
        "gitlab_push.json",
        "refs/heads/old",
        &"0".repeat(40),
        &"4".repeat(40),
        "old",
    );
    let (code, reply) = send(&body, Some("5f0d3c0e-6b1a-4d53-9f57-2a1f0b7e9c11"));
    assert_eq!(code, 200, "{reply}");
    let (code, reply) = send(&body, Some("5f0d3c0e-6b1a-4d53-9f57-2a1f0b7e9c11"));
    assert_eq!(code, 409, "a retry was taken: {reply}");
    let (code, reply) = send(&body, Some("0b8e7a52-93c4-4e0f-a1d6-7c5b3e2f4a90"));
    assert_eq!(code, 200, "the same push sent again was refused: {reply}");
    // An older GitLab sends no key: the body is all there is to tell a retry by.
    let (code, reply) = send(&body, None);
    assert_eq!(code, 200, "{reply}");
    let (code, reply) = send(&body, None);
    assert_eq!(code, 409, "{reply}");

    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "POST /hooks/app/gitlab HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nX-Gitlab-Event: Push Hook\r\n\
         X-Gitlab-Token: {SECRET}\r\nContent-Length: 52428800\r\n\
         Expect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"the request body is larger than 4 MiB"}"#),
        "{answer}"
    );
}

/// Credentials in a repository URL (`https://user:token@host/...`) are shown nowhere: not on the
/// open pages, in the API, the build's log and error, nor in `--check`'s listing.
#[test]
fn credentials_in_a_repository_url_are_shown_nowhere() {
    if forge_testsupport::tool("curl").is_none() {
        return;
    }
    const TOKEN: &str = "ghp_PRIVATEtoken12345";
    let tmp = forge_testsupport::scratch("forge-serve-userinfo-");
    let config = tmp.path().join("serve.yaml");
    // Nothing listens on port 9: the fetch fails, and its error is what is shown.
    std::fs::write(
        &config,
        format!(
            "api_secret: {API}\nprojects:\n  - name: priv\n    \
             repo: https://ci-bot:{TOKEN}@127.0.0.1:9/team/app.git\n    triggers: [api]\n"
        ),
    )
    .unwrap();
    let o = check(&config);
    let listed = common::printed(&o);
    assert!(o.status.success(), "{listed}");
    assert!(
        listed.contains("https://****@127.0.0.1:9/team/app.git") && !listed.contains(TOKEN),
        "{listed}"
    );
    let server_log = tmp.path().join("serve.log");
    let port = forge_testsupport::free_port();
    let s = start_server(&config, &tmp.path().join("root"), port, &server_log);
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/priv/builds"),
        &[("Authorization", format!("Bearer {API}"))],
        None,
    );
    let n = created_number(code, &reply);
    let b = ended(&s, "priv", n, &server_log);
    assert_eq!(b["status"], "failed", "{b}");
    let shown = [
        b.to_string(),
        build_log(&s, "priv", n),
        curl("GET", &s.url("/"), &[], None).1,
        curl("GET", &s.url("/p/priv"), &[], None).1,
        curl("GET", &s.url(&format!("/p/priv/{n}")), &[], None).1,
    ];
    assert!(
        shown[1].contains("fetching https://****@127.0.0.1:9/team/app.git"),
        "{}",
        shown[1]
    );
    for text in shown {
        assert!(!text.contains(TOKEN) && !text.contains("ci-bot"), "{text}");
    }
}

/// A manual job has a "Run" button on its build's page (GitLab's play): with the secret it queues
/// a build of the same commit that runs the job and what it needs (served by their recorded
/// verdicts), and the API takes `jobs` for the same. A wrong secret, or a job that is not a
/// manual one of that build, starts nothing.
#[test]
fn a_manual_job_runs_from_its_build_page_and_from_the_api() {
    let Some(busybox) = prerequisites(&["git", "curl"]) else {
        return;
    };
    let tmp = forge_testsupport::scratch("forge-serve-manual-");
    let repo = new_repo(&tmp.path().join("repos"), "app", &busybox);
    std::fs::write(
        repo.dir.join("forge.yaml"),
        r#"images:
  app:
    context: .
stages: [test, deploy]
jobs:
  test:
    image: app
    script: [echo unit tests ran]
  deploy:
    stage: deploy
    image: app
    needs: [test]
    when: manual
    script: ['echo "deployed $FORGE_GIT_SHA"']
"#,
    )
    .unwrap();
    let commit = repo.commit("ok", 0, "first");
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "api_secret: {API}\nprojects:\n  - name: app\n    repo: file://{}\n    triggers: [api]\n",
            repo.dir.display()
        ),
    )
    .unwrap();
    let server_log = tmp.path().join("serve.log");
    let port = forge_testsupport::free_port();
    let s = start_server(&config, &tmp.path().join("root"), port, &server_log);
    let auth = [("Authorization", format!("Bearer {API}"))];
    let (code, reply) = curl("POST", &s.url("/api/v1/projects/app/builds"), &auth, None);
    let n1 = created_number(code, &reply);
    let b1 = ended(&s, "app", n1, &server_log);
    assert_eq!(b1["status"], "passed", "{b1}\n{}", build_log(&s, "app", n1));
    let deploy = b1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "deploy")
        .unwrap()
        .clone();
    assert_eq!(
        (&deploy["result"], &deploy["manual"]),
        (&"skipped".into(), &true.into()),
        "{b1}"
    );
    let (code, page) = curl("GET", &s.url(&format!("/p/app/{n1}")), &[], None);
    assert_eq!(code, 200);
    assert!(
        page.contains(&format!(
            "<form class=\"play\" method=\"post\" action=\"/p/app/{n1}/play\">"
        )) && page.contains("<input type=\"hidden\" name=\"job\" value=\"deploy\">"),
        "{page}"
    );

    let play = |job: &str, secret: &str| {
        curl(
            "POST",
            &s.url(&format!("/p/app/{n1}/play")),
            &[],
            Some(format!("job={job}&secret={secret}").as_bytes()),
        )
    };
    assert_eq!(play("deploy", "nope").0, 401);
    assert_eq!(play("test", API).0, 400, "test is no manual job");
    let (code, _) = play("deploy", API);
    assert_eq!(code, 303);
    let n2 = n1 + 1;
    let b2 = ended(&s, "app", n2, &server_log);
    let log = build_log(&s, "app", n2);
    assert_eq!(b2["status"], "passed", "{b2}\n{log}");
    assert_eq!(
        (&b2["trigger"], &b2["commit"]),
        (&"manual".into(), &commit.as_str().into()),
        "{b2}"
    );
    assert_eq!(b2["only"], serde_json::json!(["deploy"]), "{b2}");
    assert!(
        log.contains(&format!("[deploy] deployed {commit}")),
        "{log}"
    );
    assert!(log.contains("job test: passed (cached, not run)"), "{log}");
    let (_, page) = curl("GET", &s.url(&format!("/p/app/{n2}")), &[], None);
    assert!(
        page.contains("<dd id=\"only\">deploy, and what they need</dd>"),
        "{page}"
    );
    assert!(!page.contains("class=\"play\""), "deploy ran: {page}");
    // Nothing else was queued by the refused presses.
    let (_, listed) = curl("GET", &s.url("/api/v1/projects/app/builds"), &[], None);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // The API's `jobs` does the same, and a manual job asked for again runs again (the play
    // button pressed twice deploys twice): its verdict is never served from the cache, while
    // `test`'s is.
    let (code, reply) = curl(
        "POST",
        &s.url("/api/v1/projects/app/builds"),
        &auth,
        Some(br#"{"jobs": ["deploy"]}"#),
    );
    let n3 = created_number(code, &reply);
    let b3 = ended(&s, "app", n3, &server_log);
    assert_eq!(b3["status"], "passed", "{b3}");
    let log = build_log(&s, "app", n3);
    assert!(
        log.contains(&format!("[deploy] deployed {commit}")),
        "{log}"
    );
    assert!(!log.contains("[deploy] (cached)"), "{log}");
    assert!(log.contains("job test: passed (cached, not run)"), "{log}");
}

/// Regression (serve sweep 09): refusals axum made itself (a build number that is no number, a
/// bad query, an unknown API path, a method a path does not take) were plain text or empty,
/// though every refusal of the API is JSON; a page's was text, not the error page.
#[test]
fn every_refusal_of_the_api_is_json_and_of_a_page_an_error_page() {
    if forge_testsupport::tool("curl").is_none() {
        return;
    }
    let tmp = forge_testsupport::scratch("forge-serve-refusals-");
    let (s, _) = serve_without_git(tmp.path());
    for (method, path, status) in [
        ("GET", "/api/v1/projects/app/builds/abc", 400),
        ("GET", "/api/v1/projects/app/builds?limit=many", 400),
        ("GET", "/api/v1/nothing/here", 404),
        ("DELETE", "/api/v1/projects/app/builds", 405),
    ] {
        let (code, body) = curl(method, &s.url(path), &[], None);
        assert_eq!(code, status, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {body}"
        );
    }
    let (code, body) = curl("GET", &s.url("/p/app/abc"), &[], None);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("<html") || body.contains("<!DOCTYPE"),
        "{body}"
    );
}

/// Regression (serve sweep 08): the Cancel button of a build that had ended, or did not exist,
/// answered a redirect back as if it had cancelled something; the Rebuild form's refusal of a
/// branch the project does not build showed the browser the API's raw JSON.
#[test]
fn a_forms_refusal_is_said_on_a_page() {
    if forge_testsupport::tool("curl").is_none() {
        return;
    }
    let tmp = forge_testsupport::scratch("forge-serve-form-refusals-");
    let config = tmp.path().join("serve.yaml");
    std::fs::write(
        &config,
        "api_secret: s3cret\nprojects:\n  - name: app\n    repo: git://127.0.0.1:9/app.git\n    \
         branches: [main]\n    triggers: [api]\n",
    )
    .unwrap();
    let port = forge_testsupport::free_port();
    let s = start_server(
        &config,
        &tmp.path().join("root"),
        port,
        &tmp.path().join("serve.log"),
    );
    let form = [(
        "Content-Type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    let (code, body) = curl(
        "POST",
        &s.url("/p/app/42/cancel"),
        &form,
        Some(b"secret=s3cret"),
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("has no build 42") && body.contains("<html"),
        "{body}"
    );
    let (code, body) = curl(
        "POST",
        &s.url("/p/app/rebuild"),
        &form,
        Some(b"secret=s3cret&branch=not-built"),
    );
    assert!(code >= 400, "{code}: {body}");
    assert!(body.contains("<html") && !body.starts_with('{'), "{body}");
}

/// A project's history past one page is reached: the API's `?before=N&limit=M` with a
/// `Link: <...>; rel="next"` header (as GitHub's and GitLab's APIs page) until the first build,
/// each build once; the project page's 50 newest with an "Older builds" link, and that page's
/// way back to the newest.
#[test]
fn a_history_longer_than_a_page_is_reached_through_the_api_and_the_pages() {
    for tool in ["curl", "openssl"] {
        if forge_testsupport::tool(tool).is_none() {
            return;
        }
    }
    let tmp = forge_testsupport::scratch("forge-serve-pages-");
    let (s, _) = serve_without_git(tmp.path());
    // 51 pushes of `main`, each a build (whose checkout fails: nothing listens at the repo's port).
    for i in 0..51u32 {
        let body = payload(
            "github_push.json",
            "refs/heads/main",
            &"0".repeat(40),
            &format!("{:040x}", i + 1),
            "main",
        );
        let headers = [
            ("Content-Type", "application/json".to_string()),
            ("User-Agent", "GitHub-Hookshot/a1b2c3d".to_string()),
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", format!("pages-{i}")),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(SECRET, &body)),
            ),
        ];
        let (code, reply) = curl("POST", &s.url("/hooks/app/github"), &headers, Some(&body));
        assert_eq!(code, 201, "push {i}: {reply}");
    }
    let numbers = |body: &str| -> Vec<u64> {
        let rows: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        rows.as_array()
            .unwrap()
            .iter()
            .map(|b| b["number"].as_u64().unwrap())
            .collect()
    };
    let (code, body) = curl(
        "GET",
        &s.url("/api/v1/projects/app/builds?limit=1000"),
        &[],
        None,
    );
    assert_eq!(code, 200, "{body}");
    let all = numbers(&body);
    assert_eq!(all.len(), 51, "{all:?}");

    // The API, 20 at a time, following each answer's `Link` header.
    let mut next = Some("/api/v1/projects/app/builds?limit=20".to_string());
    let (mut walked, mut pages) = (Vec::new(), 0);
    while let Some(path) = next.take() {
        let o = Command::new("curl")
            .args(["-sS", "-D", "-", &s.url(&path)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let page = numbers(body);
        assert!(page.len() <= 20 && !page.is_empty(), "{path}: {page:?}");
        walked.extend(page);
        pages += 1;
        next = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("link")
                    .then(|| value.trim().to_string())
            })
            .map(|link| {
                let (target, rel) = link.split_once(">;").unwrap_or_else(|| panic!("{link}"));
                assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
                target.trim_start_matches('<').to_string()
            });
        assert!(pages <= 3, "a fourth page: {walked:?}");
    }
    assert_eq!((walked, pages), (all.clone(), 3));

    // The page: the 50 newest, and a link to the one older build.
    let (code, newest) = curl("GET", &s.url("/p/app"), &[], None);
    assert_eq!(code, 200, "{newest}");
    assert_eq!(
        newest.matches("<tr class=\"build\"").count(),
        50,
        "{newest}"
    );
    let older_href = format!("/p/app?before={}", all[49]);
    assert!(
        newest.contains(&format!("id=\"older-builds\" href=\"{older_href}\"")),
        "{newest}"
    );
    let (code, older) = curl("GET", &s.url(&older_href), &[], None);
    assert_eq!(code, 200, "{older}");
    let shown: Vec<&str> = older.matches("<tr class=\"build\"").collect();
    assert_eq!(shown.len(), 1, "{older}");
    assert!(
        older.contains(&format!("data-number=\"{}\"", all[50])),
        "{older}"
    );
    assert!(
        older.contains("id=\"newest-builds\" href=\"/p/app\""),
        "{older}"
    );
    assert!(!older.contains("older-builds"), "{older}");

    // A `before` that is not a build number is refused in the kind of what asked.
    let (code, reply) = curl(
        "GET",
        &s.url("/api/v1/projects/app/builds?before=newest"),
        &[],
        None,
    );
    assert_eq!(code, 400, "{reply}");
    assert!(serde_json::from_str::<Value>(&reply).is_ok(), "{reply}");
    let (code, reply) = curl("GET", &s.url("/p/app?before=-1"), &[], None);
    assert_eq!(code, 400, "{reply}");
    assert!(reply.starts_with("<!DOCTYPE html>"), "{reply}");
}
