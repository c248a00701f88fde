//! `forge serve` under a bounded load (loopback): 200 signed deliveries, each built once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::*;
use serde_json::Value;

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
    let port = forge_testsupport::free_port();
    let s = start_server(&config_path, &root, port, &server_log);
    let pid = s.child.id();
    // Each delivery its own body, as a sender's are: the server refuses a body it took before.
    let signed: Vec<(String, std::path::PathBuf)> = (0..DELIVERIES)
        .map(|i| {
            let body = payload(
                "github_push.json",
                "refs/heads/main",
                &"0".repeat(40),
                &commit,
                &format!("steady {i}"),
            );
            let file = tmp.path().join(format!("push-{i}.json"));
            std::fs::write(&file, &body).unwrap();
            (format!("sha256={}", hmac_hex(SECRET, &body)), file)
        })
        .collect();

    let sent = Instant::now();
    let answers: Vec<(usize, u16, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (s, signed) = (&s, &signed);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for i in (w..DELIVERIES).step_by(8) {
                        let (sig, body_file) = &signed[i];
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
