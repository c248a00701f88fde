//! `forge serve`: builds started by webhooks (GitHub, GitLab, Gitea, Gitee, registries), an API
//! with a secret and a page's button, run in this process through the build API with the store's
//! cache, their history and logs kept in the store (`<store>/serve`), shown on pages it serves
//! itself, and told to webhooks and mailboxes when they fail or are fixed.

pub mod builds;
mod checkout;
pub mod config;
pub mod hooks;
mod host;
pub mod http;
pub mod listen;
pub mod model;
pub mod notify;
pub mod store;
pub mod web;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use forge_builder::Session;

/// Serves `config` until the process is stopped: opens the database under `root` (queueing again
/// what the last server left running), listens on `config.listen`, and runs builds.
pub async fn serve(config: config::Config, session: Session, root: &Path) -> Result<(), String> {
    let dir = root.join("serve");
    // The database first: it is locked while a server has it open, so a second server on the
    // same root stops here, before it touches what the first one is building.
    let (store, requeued) = store::Store::open(&dir).map_err(|e| format!("error: {e}"))?;
    // No build runs yet: what is in the work folder was left by a server that stopped.
    let _ = std::fs::remove_dir_all(dir.join("work"));
    for b in &requeued {
        eprintln!(
            "note: {} was running when the server stopped: marked interrupted, queued again as #{}",
            b.project, b.number
        );
    }
    let listen: SocketAddr = config.listen;
    let retention = (config.log_max_age_days, config.log_max_total_bytes);
    let server = builds::Server::new(config, store.clone(), session, dir);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("error: cannot listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("error: {listen}: {e}"))?;
    eprintln!("forge serve: listening on http://{local}");
    for line in describe(&server.config) {
        eprintln!("{line}");
    }
    tokio::spawn(server.clone().schedule());
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                if retention.0.is_some() || retention.1.is_some() {
                    expire_logs(&store, retention.0, retention.1);
                }
                expire_artifacts(&store);
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
    }
    listen::serve(listener, http::router(server), listen::DEADLINES).await
}

/// Where each project's builds can be started from, and what its configuration leaves closed: a
/// webhook trigger without `webhook_secret`, the API without any secret.
pub fn describe(config: &config::Config) -> Vec<String> {
    use config::TriggerName as T;
    let base = &config.base_url;
    let mut out = Vec::new();
    for p in &config.projects {
        let name = &p.name;
        let hooks = [T::Push, T::Tag, T::Keyword]
            .iter()
            .any(|t| p.triggered_by(*t));
        if hooks {
            out.push(match p.webhook_secret {
                Some(_) => format!(
                    "  {name}: webhooks at POST {base}/hooks/{name}/{{github,gitlab,gitea,gitee}}"
                ),
                None => format!(
                    "warning: {name}: it has webhook triggers but no webhook_secret, so every \
                     webhook is refused"
                ),
            });
        }
        if p.triggered_by(T::Registry) {
            out.push(match p.webhook_secret {
                Some(_) => format!(
                    "  {name}: registry notifications at POST {base}/hooks/{name}/registry \
                     (Authorization: Bearer <webhook_secret>)"
                ),
                None => format!(
                    "warning: {name}: the registry trigger needs a webhook_secret; notifications \
                     are refused"
                ),
            });
        }
        if p.triggered_by(T::Api) {
            out.push(if p.api_secret.is_some() || config.api_secret.is_some() {
                format!("  {name}: API at POST {base}/api/v1/projects/{name}/builds")
            } else {
                format!(
                    "warning: {name}: the api trigger needs an api_secret (the project's or \
                         the server's); API calls and the rebuild button are refused"
                )
            });
        }
    }
    out
}

/// Removes the artifacts of jobs whose `expire_in` has passed (recorded when their build ended).
pub fn expire_artifacts(store: &store::Store) {
    let now = store::now();
    let Ok(projects) = std::fs::read_dir(store.artifacts_root()) else {
        return;
    };
    for project in projects.flatten() {
        let Ok(files) = std::fs::read_dir(project.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let Some(n) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".expires"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let build = project.path().join(n);
            let mut left = String::new();
            for line in text.lines() {
                let Some((when, dir)) = line.split_once(' ') else {
                    continue;
                };
                // A job's folder, never a path that leaves the build's.
                let ok = !dir.is_empty() && !dir.contains('/') && dir != "." && dir != "..";
                match when.parse::<u64>() {
                    Ok(t) if ok && t <= now => {
                        let d = build.join(dir);
                        if let Err(e) = std::fs::remove_dir_all(&d)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            eprintln!("error: {}: {e}", d.display());
                            left.push_str(line);
                            left.push('\n');
                        }
                    }
                    Ok(_) if ok => {
                        left.push_str(line);
                        left.push('\n');
                    }
                    _ => {}
                }
            }
            let _ = if left.is_empty() {
                std::fs::remove_file(&path)
            } else if left != text {
                std::fs::write(&path, left)
            } else {
                Ok(())
            };
        }
    }
}

/// Removes the logs of ended builds that ended more than `max_age_days` ago, then the oldest
/// while all take more than `max_total` bytes. A running build's log is never removed.
pub fn expire_logs(store: &store::Store, max_age_days: Option<u64>, max_total: Option<u64>) {
    let Ok(all) = store.all() else { return };
    let now = store::now();
    let mut ended: Vec<(u64, &model::Build, u64)> = all
        .iter()
        .filter(|b| b.status.is_final())
        .filter_map(|b| {
            let size = std::fs::metadata(store.log_path(&b.project, b.number))
                .ok()?
                .len();
            Some((b.finished_at.unwrap_or(0), b, size))
        })
        .collect();
    ended.sort_by_key(|(finished, b, _)| (*finished, b.project.as_str(), b.number));
    let mut total: u64 = ended.iter().map(|e| e.2).sum();
    for (finished, b, size) in ended {
        let too_old = max_age_days.is_some_and(|d| finished + d * 86_400 < now);
        let too_big = max_total.is_some_and(|m| total > m);
        if (too_old || too_big)
            && std::fs::remove_file(store.log_path(&b.project, b.number)).is_ok()
        {
            total -= size;
            // The build's artifacts go with its log.
            let _ = std::fs::remove_dir_all(store.artifacts_dir(&b.project, b.number));
            let _ = std::fs::remove_file(store.artifacts_expiry_path(&b.project, b.number));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, Trigger};
    use crate::store::{Request, Store};

    /// Ends build `b` `days_ago` with a log of `bytes` and an artifacts folder.
    fn ended(store: &Store, days_ago: u64, bytes: usize) -> model::Build {
        let mut b = store
            .enqueue("app", Trigger::Api, Request::default())
            .unwrap();
        b.status = Status::Passed;
        b.finished_at = Some(store::now() - days_ago * 86_400);
        store.put(&b).unwrap();
        let log = store.log_path("app", b.number);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, vec![b'x'; bytes]).unwrap();
        std::fs::create_dir_all(store.artifacts_dir("app", b.number)).unwrap();
        b
    }

    #[test]
    fn the_start_says_where_builds_come_from_and_what_stays_closed() {
        let c = config::parse(
            "serve.yaml",
            "api_secret: s3cret\nprojects:\n  - name: app\n    repo: git://h/a\n    \
             webhook_secret: hook\n    triggers: [push, api, registry]\n  - name: lib\n    \
             repo: git://h/b\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        let lines = describe(&c);
        assert_eq!(
            lines,
            [
                "  app: webhooks at POST http://127.0.0.1:8420/hooks/app/{github,gitlab,gitea,gitee}",
                "  app: registry notifications at POST http://127.0.0.1:8420/hooks/app/registry \
                 (Authorization: Bearer <webhook_secret>)",
                "  app: API at POST http://127.0.0.1:8420/api/v1/projects/app/builds",
                "warning: lib: it has webhook triggers but no webhook_secret, so every webhook is \
                 refused",
                "  lib: API at POST http://127.0.0.1:8420/api/v1/projects/lib/builds",
            ]
        );
    }

    #[test]
    fn old_logs_go_by_age_then_the_oldest_by_size_and_a_running_build_s_never() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let old = ended(&store, 40, 10);
        let mid = ended(&store, 5, 600);
        let new = ended(&store, 1, 600);
        let mut running = store
            .enqueue("app", Trigger::Api, Request::default())
            .unwrap();
        running.status = Status::Running;
        store.put(&running).unwrap();
        std::fs::write(store.log_path("app", running.number), vec![b'y'; 5000]).unwrap();
        expire_logs(&store, Some(30), Some(1000));
        let exists = |n: u64| store.log_path("app", n).exists();
        assert!(!exists(old.number), "older than 30 days");
        assert!(!exists(mid.number), "the oldest while over 1000 bytes");
        assert!(exists(new.number));
        assert!(exists(running.number), "a running build keeps its log");
        let art = |n: u64| store.artifacts_dir("app", n);
        assert!(!art(old.number).exists() && art(new.number).exists());
        // The records stay: only logs and artifacts expire.
        assert_eq!(store.list("app", 10).unwrap().len(), 4);
    }

    #[test]
    fn a_job_s_artifacts_go_when_their_expire_in_has_passed_and_nothing_outside_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let b = ended(&store, 0, 10);
        let build = store.artifacts_dir("app", b.number);
        for job in ["unit", "lint", "docs"] {
            std::fs::create_dir_all(build.join(job)).unwrap();
            std::fs::write(build.join(job).join("out.txt"), job).unwrap();
        }
        let outside = dir.path().join("artifacts/app/keep");
        std::fs::create_dir_all(&outside).unwrap();
        let now = store::now();
        let sidecar = store.artifacts_expiry_path("app", b.number);
        std::fs::write(
            &sidecar,
            format!(
                "{} unit\n{} lint\n{} ../keep\n{} ..\n",
                now - 10,
                now + 3600,
                now - 10,
                now - 10
            ),
        )
        .unwrap();
        expire_artifacts(&store);
        assert!(!build.join("unit").exists(), "expired");
        assert!(build.join("lint").exists(), "not yet");
        assert!(
            build.join("docs").exists(),
            "no expire_in: kept with the log"
        );
        assert!(
            outside.exists() && build.exists(),
            "a line never reaches outside a job's folder"
        );
        assert_eq!(
            std::fs::read_to_string(&sidecar).unwrap(),
            format!("{} lint\n", now + 3600),
            "what is left to expire stays recorded"
        );
        // The build's log expiring takes the rest and the record with it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        expire_logs(&store, Some(0), None);
        assert!(!build.exists() && !sidecar.exists());
    }
}
