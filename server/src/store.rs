//! The server's records: every build of every project (queued, running, ended) and the webhook
//! deliveries already taken, in one redb database under the store, so a crash loses no finished
//! build and a restart knows what was running. Logs are files beside it (`logs/PROJECT/N.log`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::model::{Build, Status, Trigger};

/// (project, number) -> the build as JSON.
const BUILDS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("builds");
/// (project, number) of every queued build: what the scheduler reads at each wake, without
/// going through the whole history.
const QUEUED: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("queued");
/// project -> the number its next build gets.
const NEXT: TableDefinition<'_, &str, u64> = TableDefinition::new("next");
/// project -> the base images (normalised names, JSON list) its last build's Dockerfiles use.
const BASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("bases");
/// delivery id -> when it arrived (unix seconds).
const DELIVERIES: TableDefinition<'_, &str, u64> = TableDefinition::new("deliveries");

#[derive(Debug, thiserror::Error)]
#[error("the server's database {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

/// What a trigger asks to build.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit: Option<String>,
    pub message: Option<String>,
    /// Run only these jobs and what they need (a manual job's "Run" button); empty: all.
    pub jobs: Vec<String>,
}

impl Request {
    /// What build `b` was asked to build, to build it again.
    pub fn of(b: &Build) -> Request {
        Request {
            branch: b.branch.clone(),
            tag: b.tag.clone(),
            commit: b.commit.clone(),
            message: b.message.clone(),
            jobs: b.only.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    /// The database; replaced by a new handle after an I/O error (see [`Store::reopen`]), `None`
    /// while that fails.
    db: Arc<std::sync::RwLock<Option<Arc<redb::Database>>>>,
    path: PathBuf,
    logs: PathBuf,
    artifacts: PathBuf,
}

/// Now, in unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating) the database in `dir`. Builds the last server left running are marked
    /// interrupted and queued again as new builds; the returned list names them.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Build>), StoreError> {
        let path = dir.join("serve.redb");
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(&path).map_err(|e| err(&e))?;
        let store = Store {
            db: Arc::new(std::sync::RwLock::new(Some(Arc::new(db)))),
            path: path.clone(),
            logs: dir.join("logs"),
            artifacts: dir.join("artifacts"),
        };
        {
            let txn = store.begin_write()?;
            txn.open_table(BUILDS).map_err(|e| err(&e))?;
            txn.open_table(NEXT).map_err(|e| err(&e))?;
            txn.open_table(DELIVERIES).map_err(|e| err(&e))?;
            txn.open_table(BASES).map_err(|e| err(&e))?;
            txn.open_table(QUEUED).map_err(|e| err(&e))?;
            txn.commit().map_err(|e| err(&e))?;
        }
        let requeued = store.recover()?;
        Ok((store, requeued))
    }

    /// The database handle, reopened first when an I/O error closed it.
    fn handle(&self) -> Result<Arc<redb::Database>, StoreError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(db);
        }
        self.reopen(None)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.begin(redb::Database::begin_write)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.begin(redb::Database::begin_read)
    }

    /// A transaction `begin` starts, on a database opened again when an I/O error closed it.
    fn begin<T>(
        &self,
        begin: impl Fn(&redb::Database) -> Result<T, redb::TransactionError>,
    ) -> Result<T, StoreError> {
        let db = self.handle()?;
        match begin(&db) {
            Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {
                begin(&*self.reopen(Some(db))?).map_err(|e| self.err(e))
            }
            other => other.map_err(|e| self.err(e)),
        }
    }

    /// After an I/O error (a full disk) redb refuses every later transaction until the database
    /// is opened again: the server could record nothing more, so a finished build stayed
    /// "running" for ever, even once space was back. The handle `failed` is replaced by a new one
    /// (unless another caller did so already); transactions still open on the old one keep its
    /// file for a moment, so the opening is tried for a few seconds.
    fn reopen(
        &self,
        failed: Option<Arc<redb::Database>>,
    ) -> Result<Arc<redb::Database>, StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        match (&*slot, &failed) {
            (Some(now), Some(failed)) if !Arc::ptr_eq(now, failed) => return Ok(now.clone()),
            (Some(now), None) => return Ok(now.clone()),
            _ => {}
        }
        *slot = None;
        drop(failed);
        let mut tries = 0;
        let db = loop {
            match redb::Database::create(&self.path) {
                Ok(db) => break Arc::new(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(self.err(format!("opening it again after an I/O error: {e}"))),
            }
        };
        *slot = Some(db.clone());
        Ok(db)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// The log file of build `n` of `project`.
    pub fn log_path(&self, project: &str, n: u64) -> PathBuf {
        self.logs.join(project).join(format!("{n}.log"))
    }

    /// Where build `n` of `project` keeps its jobs' artifacts.
    pub fn artifacts_dir(&self, project: &str, n: u64) -> PathBuf {
        self.artifacts.join(project).join(n.to_string())
    }

    /// When the artifacts of build `n` of `project` expire, job by job: lines of `UNIX_SECONDS
    /// DIR`, `DIR` a job's folder under [`Store::artifacts_dir`] (GitLab's `expire_in`).
    pub fn artifacts_expiry_path(&self, project: &str, n: u64) -> PathBuf {
        self.artifacts.join(project).join(format!("{n}.expires"))
    }

    /// The folder of every project's artifacts.
    pub fn artifacts_root(&self) -> &Path {
        &self.artifacts
    }

    fn recover(&self) -> Result<Vec<Build>, StoreError> {
        let all = self.all()?;
        // A database from before the queue had its index: its queued builds are indexed now.
        for b in all.iter().filter(|b| b.status == Status::Queued) {
            self.put(b)?;
        }
        let running: Vec<Build> = all
            .into_iter()
            .filter(|b| b.status == Status::Running)
            .collect();
        let mut again = Vec::new();
        for mut b in running {
            b.status = Status::Interrupted;
            // It ended when the server did, not now: the last time its log was written (the
            // server may have been down for hours, which its duration and chart bar showed as
            // the build's).
            let log = self.log_path(&b.project, b.number);
            let last_written = std::fs::metadata(&log)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            let finished = last_written
                .unwrap_or_else(now)
                .max(b.started_at.unwrap_or_default());
            b.finished_at = Some(finished);
            b.error = Some("the server stopped while this build ran; it was queued again".into());
            // Its jobs that were running ended with it, and its log says so.
            for j in b.jobs.iter_mut().filter(|j| j.result == "running") {
                j.result = "interrupted".into();
            }
            self.put(&b)?;
            if log.exists() {
                use std::io::Write;
                let _ = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| {
                        writeln!(
                            f,
                            "forge serve: the server stopped while this build ran; it was queued again"
                        )
                    });
            }
            again.push(self.enqueue(&b.project, Trigger::Restart, Request::of(&b))?);
        }
        Ok(again)
    }

    /// Queues a build of `project`, numbered after its last.
    pub fn enqueue(
        &self,
        project: &str,
        trigger: Trigger,
        r: Request,
    ) -> Result<Build, StoreError> {
        let txn = self.begin_write()?;
        let build = {
            let mut next = txn.open_table(NEXT).map_err(|e| self.err(e))?;
            let number = next
                .get(project)
                .map_err(|e| self.err(e))?
                .map_or(1, |v| v.value());
            next.insert(project, number + 1).map_err(|e| self.err(e))?;
            let build = Build {
                project: project.to_string(),
                number,
                trigger,
                branch: r.branch,
                tag: r.tag,
                commit: r.commit,
                message: r.message,
                status: Status::Queued,
                queued_at: now(),
                started_at: None,
                finished_at: None,
                duration_ms: None,
                jobs: Vec::new(),
                pushed: Vec::new(),
                error: None,
                only: r.jobs,
            };
            let json = serde_json::to_vec(&build).expect("a build serialises");
            let mut builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
            builds
                .insert((project, number), json.as_slice())
                .map_err(|e| self.err(e))?;
            let mut queued = txn.open_table(QUEUED).map_err(|e| self.err(e))?;
            queued
                .insert((project, number), ())
                .map_err(|e| self.err(e))?;
            build
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(build)
    }

    /// Records `b` as it is now.
    pub fn put(&self, b: &Build) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let json = serde_json::to_vec(b).expect("a build serialises");
            let mut builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
            builds
                .insert((b.project.as_str(), b.number), json.as_slice())
                .map_err(|e| self.err(e))?;
            let key = (b.project.as_str(), b.number);
            let mut queued = txn.open_table(QUEUED).map_err(|e| self.err(e))?;
            if b.status == Status::Queued {
                queued.insert(key, ()).map_err(|e| self.err(e))?;
            } else {
                queued.remove(key).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The queued builds, in the order they were queued.
    pub fn queued(&self) -> Result<Vec<Build>, StoreError> {
        let txn = self.begin_read()?;
        let queued = txn.open_table(QUEUED).map_err(|e| self.err(e))?;
        let builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in queued.iter().map_err(|e| self.err(e))? {
            let (k, _) = entry.map_err(|e| self.err(e))?;
            let (project, n) = k.value();
            if let Some(v) = builds.get((project, n)).map_err(|e| self.err(e))?
                && let Ok(b) = serde_json::from_slice::<Build>(v.value())
            {
                out.push(b);
            }
        }
        out.sort_by_key(|b| (b.queued_at, b.number));
        Ok(out)
    }

    /// Build `n` of `project`.
    pub fn get(&self, project: &str, n: u64) -> Result<Option<Build>, StoreError> {
        let txn = self.begin_read()?;
        let builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
        let v = builds.get((project, n)).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// The builds of `project`, newest first, at most `limit`.
    pub fn list(&self, project: &str, limit: usize) -> Result<Vec<Build>, StoreError> {
        self.list_before(project, None, limit)
    }

    /// The builds of `project` numbered below `before` (all of them for `None`), newest first,
    /// at most `limit`: one page of its history, the next page starting below the last number.
    pub fn list_before(
        &self,
        project: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Build>, StoreError> {
        let txn = self.begin_read()?;
        let builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let range = match before {
            Some(0) => return Ok(out),
            Some(n) => builds.range((project, 0)..=(project, n - 1)),
            None => builds.range((project, 0)..=(project, u64::MAX)),
        };
        for entry in range.map_err(|e| self.err(e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry.map_err(|e| self.err(e))?;
            if let Ok(b) = serde_json::from_slice::<Build>(v.value()) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Every build of every project, by project and number.
    pub fn all(&self) -> Result<Vec<Build>, StoreError> {
        let txn = self.begin_read()?;
        let builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in builds.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            if let Ok(b) = serde_json::from_slice::<Build>(v.value()) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// The result of the last build of `project` before `n` that passed or failed, of the same
    /// branch and tag as `n` (Travis's rule for "fixed" and "broken": a failing release branch
    /// does not make main's next pass a fix).
    pub fn previous_result(&self, project: &str, n: u64) -> Result<Option<Status>, StoreError> {
        let Some(this) = self.get(project, n)? else {
            return Ok(None);
        };
        let txn = self.begin_read()?;
        let builds = txn.open_table(BUILDS).map_err(|e| self.err(e))?;
        for entry in builds
            .range((project, 0)..(project, n))
            .map_err(|e| self.err(e))?
            .rev()
        {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            if let Ok(b) = serde_json::from_slice::<Build>(v.value())
                && matches!(b.status, Status::Passed | Status::Failed)
                && b.branch == this.branch
                && b.tag == this.tag
            {
                return Ok(Some(b.status));
            }
        }
        Ok(None)
    }

    /// Records the base images `project`'s Dockerfiles build FROM now.
    pub fn set_bases(&self, project: &str, bases: &[String]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let json = serde_json::to_vec(bases).expect("names serialise");
            let mut t = txn.open_table(BASES).map_err(|e| self.err(e))?;
            t.insert(project, json.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The base images `project`'s last build read from its Dockerfiles.
    pub fn bases(&self, project: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let t = txn.open_table(BASES).map_err(|e| self.err(e))?;
        let v = t.get(project).map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok())
            .unwrap_or_default())
    }

    /// Records the keys of one delivery (its id, its body's digest); the first of them recorded
    /// before (a replay) when there is one, and then nothing is recorded.
    pub fn first_delivery(&self, keys: &[&str]) -> Result<Option<String>, StoreError> {
        let txn = self.begin_write()?;
        let seen = {
            let mut d = txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
            let mut seen = None;
            for key in keys {
                if d.get(*key).map_err(|e| self.err(e))?.is_some() {
                    seen = Some(key.to_string());
                    break;
                }
            }
            if seen.is_none() {
                for key in keys {
                    d.insert(*key, now()).map_err(|e| self.err(e))?;
                }
            }
            seen
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobRecord;

    /// Regression (serve sweep 01): after one moment of a full disk redb refused every later
    /// transaction ("Previous I/O error occurred"), even once space was back: no build could be
    /// queued or recorded until a restart. The database is opened again.
    #[test]
    fn a_full_disk_for_a_moment_leaves_the_store_writable_once_space_is_back() {
        if !forge_testsupport::root("the test mounts a small tmpfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success());
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let (s, _) = Store::open(dir.path()).unwrap();
        s.enqueue("a", Trigger::Api, Request::default()).unwrap();
        // The disk fills up: writes fail, as they must.
        let filler = dir.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        let mut failed = false;
        for _ in 0..50 {
            if s.enqueue("a", Trigger::Api, Request::default()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a full disk refused no write");
        std::fs::remove_file(&filler).unwrap();
        let b = s
            .enqueue("a", Trigger::Api, Request::default())
            .expect("the store writes again once space is back");
        assert!(s.get("a", b.number).unwrap().is_some());
    }

    #[test]
    fn numbers_are_per_project_and_a_restart_requeues_what_ran() {
        let dir = tempfile::tempdir().unwrap();
        let (s, again) = Store::open(dir.path()).unwrap();
        assert!(again.is_empty());
        let a1 = s.enqueue("a", Trigger::Api, Request::default()).unwrap();
        let a2 = s.enqueue("a", Trigger::Push, Request::default()).unwrap();
        let b1 = s.enqueue("b", Trigger::Api, Request::default()).unwrap();
        assert_eq!((a1.number, a2.number, b1.number), (1, 2, 1));
        let mut done = a1.clone();
        done.status = Status::Failed;
        done.branch = Some("main".into());
        s.put(&done).unwrap();
        let mut running = a2.clone();
        running.status = Status::Running;
        running.branch = Some("main".into());
        let started = now() - 3600;
        running.started_at = Some(started);
        running.jobs = vec![
            JobRecord {
                name: "unit".into(),
                result: "passed".into(),
                duration_ms: 5,
                coverage: Some("87.5".into()),
                manual: false,
            },
            JobRecord {
                name: "e2e".into(),
                result: "running".into(),
                duration_ms: 0,
                coverage: None,
                manual: false,
            },
        ];
        s.put(&running).unwrap();
        let log = s.log_path("a", 2);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "[e2e] tick 10\n").unwrap();
        // Its log was last written 5 s after it started; the server then stayed down an hour.
        std::fs::File::options()
            .append(true)
            .open(&log)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(started + 5))
            .unwrap();
        // A second server on the same directory is refused while the first has it open.
        assert!(Store::open(dir.path()).is_err());
        drop(s);
        let (s, again) = Store::open(dir.path()).unwrap();
        // The job that was running ended with the build; its log says why it stops there.
        let jobs: Vec<(String, String)> = s
            .get("a", 2)
            .unwrap()
            .unwrap()
            .jobs
            .into_iter()
            .map(|j| (j.name, j.result))
            .collect();
        assert_eq!(
            jobs,
            vec![
                ("unit".to_string(), "passed".to_string()),
                ("e2e".to_string(), "interrupted".to_string())
            ]
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("[e2e] tick 10\n")
                && text.contains("the server stopped while this build ran"),
            "{text}"
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].number, 3);
        assert_eq!(again[0].trigger, Trigger::Restart);
        assert_eq!(again[0].branch.as_deref(), Some("main"));
        let interrupted = s.get("a", 2).unwrap().unwrap();
        assert_eq!(interrupted.status, Status::Interrupted);
        // Regression (serve sweep 05): it ended when its log stopped, not when the server came
        // back (its duration and chart bar held the server's downtime).
        assert_eq!(interrupted.finished_at, Some(started + 5));
        assert_eq!(crate::web::build_duration_ms(&interrupted), Some(5_000));
        assert_eq!(s.get("a", 1).unwrap().unwrap().status, Status::Failed);
        let list: Vec<u64> = s.list("a", 10).unwrap().iter().map(|b| b.number).collect();
        assert_eq!(list, vec![3, 2, 1]);
        assert_eq!(s.previous_result("a", 3).unwrap(), Some(Status::Failed));
        // Queued: b's first and a's requeued one; the ended ones are not.
        let queued: Vec<(String, u64)> = s
            .queued()
            .unwrap()
            .into_iter()
            .map(|b| (b.project, b.number))
            .collect();
        assert_eq!(queued.len(), 2);
        assert!(queued.contains(&("b".to_string(), 1)) && queued.contains(&("a".to_string(), 3)));
        assert_eq!(s.previous_result("b", 1).unwrap(), None);
    }

    #[test]
    fn a_delivery_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.first_delivery(&["github:abc", "app:body:1"]).unwrap(),
            None
        );
        assert_eq!(
            s.first_delivery(&["github:abc"]).unwrap().as_deref(),
            Some("github:abc")
        );
        // The same signed body under another id, or none, is the same delivery.
        assert_eq!(
            s.first_delivery(&["github:other", "app:body:1"])
                .unwrap()
                .as_deref(),
            Some("app:body:1")
        );
        assert_eq!(s.first_delivery(&["github:other"]).unwrap(), None);
        drop(s);
        let (s, _) = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.first_delivery(&["app:body:1"]).unwrap().as_deref(),
            Some("app:body:1")
        );
    }

    #[test]
    fn fixed_and_broken_compare_with_the_same_branch_and_a_zero_limit_lists_none() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        let on = |branch: &str, status: Status| {
            let mut b = s
                .enqueue(
                    "m",
                    Trigger::Push,
                    Request {
                        branch: Some(branch.into()),
                        ..Request::default()
                    },
                )
                .unwrap();
            b.status = status;
            s.put(&b).unwrap();
            b.number
        };
        on("release/good", Status::Passed);
        on("release/bad", Status::Failed);
        let good = on("release/good", Status::Passed);
        let bad = on("release/bad", Status::Failed);
        // Each is compared with its own branch's last build: still passing, still failing.
        assert_eq!(s.previous_result("m", good).unwrap(), Some(Status::Passed));
        assert_eq!(s.previous_result("m", bad).unwrap(), Some(Status::Failed));
        let first = on("main", Status::Failed);
        assert_eq!(s.previous_result("m", first).unwrap(), None);
        assert!(s.list("m", 0).unwrap().is_empty());
        assert_eq!(s.list("m", 2).unwrap().len(), 2);
    }

    #[test]
    fn pages_of_a_history_below_a_number_hold_every_build_once_and_no_other_projects() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path()).unwrap();
        for project in ["m", "n", "m", "m", "n", "m", "m"] {
            s.enqueue(project, Trigger::Push, Request::default())
                .unwrap();
        }
        let numbers = |before: Option<u64>, limit: usize| -> Vec<u64> {
            s.list_before("m", before, limit)
                .unwrap()
                .iter()
                .map(|b| b.number)
                .collect()
        };
        let all = numbers(None, 100);
        assert_eq!(all.len(), 5, "{all:?}");
        assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
        // Walking the pages as a client does: each starts below the last number of the one before.
        let mut walked = Vec::new();
        let mut before = None;
        loop {
            let page = numbers(before, 2);
            assert!(page.len() <= 2, "{page:?}");
            let Some(&last) = page.last() else { break };
            walked.extend(page);
            before = Some(last);
        }
        assert_eq!(walked, all);
        assert_eq!(numbers(Some(all[0] + 1000), 100), all);
        assert!(numbers(Some(*all.last().unwrap()), 100).is_empty());
        assert!(numbers(Some(0), 100).is_empty());
    }
}
