//! The runs of a pipeline, kept in the store: each run's number (`FORGE_BUILD_NUMBER` when
//! `--build-number` is not given), commit, branch, result and timing, each job's result, and each
//! job's log compressed with zstd. `forge history` lists them and `forge logs` prints a log.
//!
//! Layout under the store root: `runs/<pipeline>/` holds `counter` (the last number handed out,
//! changed only under `counter.lock`), and one directory per run, `<number>/`, with `run.json`
//! (replaced whole, by rename, at every update) and `logs/<job-file>.log.zst`. A run in progress
//! holds `<number>/live.lock`; a run whose record still says running but whose lock nobody holds
//! was killed, and is listed as interrupted. Logs are stored as the job printed them after secret
//! masking, which the caller does before a line reaches [`LogWriter`].

use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use forge_snapshotter::lock::{FileLock, LockMode};
use serde::{Deserialize, Serialize};

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Running,
    Passed,
    Failed,
    Cancelled,
    /// Its record says running, but the process running it is gone.
    Interrupted,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Passed,
    Failed,
    /// Failed, with `allow_failure: true`: the run goes on and may pass.
    AllowedFailure,
    /// Its recorded result was reused; it did not run.
    Cached,
    /// Not run: a rule or `when:` said so, or what it needs failed.
    Skipped,
    Cancelled,
    /// Started, and not ended yet.
    Running,
    /// Its record says running, but the process running its run is gone (killed): what it
    /// printed until then is its log.
    Interrupted,
}

impl JobResult {
    /// The result as a run's output and logs say it.
    pub fn word(self) -> &'static str {
        match self {
            JobResult::Passed => "passed",
            JobResult::Failed => "failed",
            JobResult::AllowedFailure => "failed (allowed)",
            JobResult::Cached => "passed (cached, not run)",
            JobResult::Skipped => "skipped",
            JobResult::Cancelled => "cancelled",
            JobResult::Running => "running",
            JobResult::Interrupted => "interrupted",
        }
    }
}

/// One job of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    pub result: JobResult,
    pub duration_ms: u64,
    /// The log's file name under `logs/`, when the job printed anything.
    pub log: Option<String>,
    /// What its `coverage:` found in its log, as written there (`87.5`). Records written before
    /// this field read as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub duration_ms: u64,
    pub commit: String,
    pub branch: String,
    pub result: RunResult,
    pub jobs: Vec<JobRecord>,
    /// `forge run JOB...`: the jobs asked for; empty for a run of the whole pipeline. A run of
    /// some jobs tested only those, so it is no baseline for `rules: changes:` (see
    /// [`History::last_passed_commit`]). Records written before this field read as whole runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// The work tree differed from `commit` (uncommitted or untracked files): what was built and
    /// tested is not that commit, so the run is no baseline for `rules: changes:` either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dirty: bool,
    /// `--changed-since REV`: the run's `changes:` rules compared with REV, not with the last
    /// passed run, so the jobs they skipped were not tested at this commit (REV itself may never
    /// have been): no baseline either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_since: Option<String>,
}

impl RunRecord {
    /// Jobs that ran, were served from the cache, and failed: `forge history`'s columns.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(JobResult) -> bool| self.jobs.iter().filter(|j| f(j.result)).count();
        (
            count(|r| {
                matches!(
                    r,
                    JobResult::Passed | JobResult::Failed | JobResult::AllowedFailure
                )
            }),
            count(|r| r == JobResult::Cached),
            count(|r| matches!(r, JobResult::Failed)),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("run history {path}: {what}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("run history {path}: unreadable record: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no run {number} in the history of this pipeline")]
    NoRun { number: u64 },
    #[error("run {number} has no job {job:?}; its jobs: {known}")]
    NoJob {
        number: u64,
        job: String,
        known: String,
    },
    #[error("job {job:?} of run {number} printed nothing")]
    NoLog { number: u64, job: String },
}

/// The names of a run's jobs for an error: the first few, then how many more (a 200-cell matrix
/// made a 200-name line).
fn names_of(jobs: &[JobRecord]) -> String {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    super::first_few(&names, 12)
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HistoryError {
    let path = path.to_path_buf();
    move |source| HistoryError::Io { what, path, source }
}

/// The history of one pipeline.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

impl History {
    /// The history of the pipeline `key` (a stable name for it: the file's path in its repository,
    /// say) in the store at `store_root`.
    pub fn open(store_root: &Path, key: &str) -> Result<History, HistoryError> {
        let hash = blake3::hash(key.as_bytes()).to_hex();
        let dir = store_root.join("runs").join(&hash[..16]);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(History { dir })
    }

    /// Starts run number `number` (from `--build-number`) or the next number of the counter, and
    /// returns it with the handle that records its progress. Numbers never repeat: the counter only
    /// grows, and an explicit number already used is refused. `only`: the jobs `forge run JOB...`
    /// asked for, empty for the whole pipeline.
    pub fn start(
        &self,
        number: Option<u64>,
        commit: &str,
        branch: &str,
        only: &[String],
    ) -> Result<RunHandle, HistoryError> {
        let lock_path = self.dir.join("counter.lock");
        let _counter = FileLock::acquire(&lock_path, LockMode::Exclusive)
            .map_err(io_err("lock", &lock_path))?;
        let counter = self.dir.join("counter");
        let last = match fs::read_to_string(&counter) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &counter)(e)),
        };
        let number = number.unwrap_or(last + 1);
        let dir = self.dir.join(number.to_string());
        // An explicit number may repeat one handed out before: the directory says so.
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => HistoryError::Io {
                what: "a run with this number exists already",
                path: dir.clone(),
                source: e,
            },
            _ => io_err("create", &dir)(e),
        })?;
        if number > last {
            write_atomic(&counter, number.to_string().as_bytes())?;
        }
        let live_path = dir.join("live.lock");
        let live = FileLock::acquire(&live_path, LockMode::Exclusive)
            .map_err(io_err("lock", &live_path))?;
        fs::create_dir(dir.join("logs")).map_err(io_err("create", &dir.join("logs")))?;
        let record = RunRecord {
            number,
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            duration_ms: 0,
            commit: commit.into(),
            branch: branch.into(),
            result: RunResult::Running,
            jobs: Vec::new(),
            only: only.to_vec(),
            dirty: false,
            changed_since: None,
        };
        let handle = RunHandle {
            dir,
            record,
            _live: live,
        };
        handle.save()?;
        Ok(handle)
    }

    /// Every run, oldest first; a run left running by a dead process shows as interrupted.
    pub fn list(&self) -> Result<Vec<RunRecord>, HistoryError> {
        let mut runs = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(runs),
            Err(e) => return Err(io_err("list", &self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let Some(number) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            // A directory without its record yet is a run being started this instant.
            if let Some(run) = self.read(number)? {
                runs.push(run);
            }
        }
        runs.sort_by_key(|r| r.number);
        Ok(runs)
    }

    fn read(&self, number: u64) -> Result<Option<RunRecord>, HistoryError> {
        let dir = self.dir.join(number.to_string());
        let path = dir.join("run.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let mut run: RunRecord =
            serde_json::from_slice(&bytes).map_err(|source| HistoryError::Record {
                path: path.clone(),
                source,
            })?;
        if run.result == RunResult::Running && !FileLock::is_held(&dir.join("live.lock")) {
            run.result = RunResult::Interrupted;
            for job in &mut run.jobs {
                if job.result == JobResult::Running {
                    job.result = JobResult::Interrupted;
                }
            }
        }
        Ok(Some(run))
    }

    /// Run `number`.
    pub fn run(&self, number: u64) -> Result<RunRecord, HistoryError> {
        self.read(number)?.ok_or(HistoryError::NoRun { number })
    }

    /// The commit of the newest run of the whole pipeline that passed: what `rules: changes:`
    /// compares with when no `--changed-since` is given. A passed run of some jobs only
    /// (`forge run JOB`) is passed over: the others were not tested at its commit, and a later
    /// run comparing with it would skip them for changes nobody tested. So is a run on a dirty
    /// work tree: its jobs tested files its commit does not hold, and the jobs its rules skipped
    /// were not tested on the files that were only dirty then; and a `--changed-since` run,
    /// whose rules skipped what did not change since a revision nobody may have tested.
    pub fn last_passed_commit(&self) -> Result<Option<String>, HistoryError> {
        Ok(self
            .list()?
            .into_iter()
            .rev()
            .find(|r| {
                r.result == RunResult::Passed
                    && !r.commit.is_empty()
                    && r.only.is_empty()
                    && !r.dirty
                    && r.changed_since.is_none()
            })
            .map(|r| r.commit))
    }

    /// Writes job `job`'s stored log of run `number` to `out`, line by line.
    pub fn copy_log(
        &self,
        number: u64,
        job: &str,
        out: &mut dyn Write,
    ) -> Result<(), HistoryError> {
        let run = self.run(number)?;
        let Some(record) = run.jobs.iter().find(|j| j.name == job) else {
            // A matrix job's written name (`test`) stands for its cells (`test: [1, a]`), as it
            // does for `forge run test`: each cell's log under a header.
            let prefix = format!("{job}: [");
            let cells: Vec<&JobRecord> = run
                .jobs
                .iter()
                .filter(|j| j.name.starts_with(&prefix) && j.name.ends_with(']'))
                .collect();
            if cells.is_empty() {
                return Err(HistoryError::NoJob {
                    number,
                    job: job.into(),
                    known: names_of(&run.jobs),
                });
            }
            for cell in cells {
                writeln!(out, "== {} ({})", cell.name, cell.result.word())
                    .map_err(io_err("write", Path::new("the output")))?;
                if cell.log.is_some() {
                    self.copy_log(number, &cell.name, out)?;
                }
            }
            return Ok(());
        };
        let Some(file) = &record.log else {
            return Err(HistoryError::NoLog {
                number,
                job: job.into(),
            });
        };
        let path = self.dir.join(number.to_string()).join("logs").join(file);
        // A job still running, or whose run was killed, has a log whose end was never written
        // (or no log yet): what it holds is printed, up to its last complete piece.
        let unfinished = matches!(record.result, JobResult::Running | JobResult::Interrupted);
        let f = match File::open(&path) {
            Err(e) if unfinished && e.kind() == io::ErrorKind::NotFound => return Ok(()),
            f => f.map_err(io_err("open", &path))?,
        };
        let reader = zstd::Decoder::new(f).map_err(io_err("decompress", &path))?;
        for line in io::BufReader::new(reader).lines() {
            let line = match line {
                Ok(line) => line,
                Err(_) if unfinished => break,
                Err(e) => return Err(io_err("decompress", &path)(e)),
            };
            writeln!(out, "{line}").map_err(io_err("write", Path::new("the output")))?;
        }
        Ok(())
    }
}

/// A run being recorded; its live lock is held until this is dropped.
#[derive(Debug)]
pub struct RunHandle {
    dir: PathBuf,
    record: RunRecord,
    _live: FileLock,
}

impl RunHandle {
    pub fn number(&self) -> u64 {
        self.record.number
    }

    pub fn record(&self) -> &RunRecord {
        &self.record
    }

    /// Records why the run is no `changes:` baseline: it builds a work tree that differs from
    /// its commit ([`RunRecord::dirty`]), or its rules compared with a revision it was given
    /// ([`RunRecord::changed_since`]). Nothing is written when neither holds.
    pub fn mark_no_baseline(
        &mut self,
        dirty: bool,
        changed_since: Option<&str>,
    ) -> Result<(), HistoryError> {
        if !dirty && changed_since.is_none() {
            return Ok(());
        }
        self.record.dirty = dirty;
        self.record.changed_since = changed_since.map(str::to_string);
        self.save()
    }

    fn save(&self) -> Result<(), HistoryError> {
        let bytes = serde_json::to_vec_pretty(&self.record).expect("a run record serialises");
        write_atomic(&self.dir.join("run.json"), &bytes)
    }

    /// A log for job `name`, compressed as it is written; [`LogWriter::finish`] ends it.
    pub fn log(&self, name: &str) -> Result<LogWriter, HistoryError> {
        let file_name = log_file_name(name);
        let path = self.dir.join("logs").join(&file_name);
        let f = File::create(&path).map_err(io_err("create", &path))?;
        let encoder = zstd::Encoder::new(f, 3).map_err(io_err("compress", &path))?;
        Ok(LogWriter {
            path,
            file_name,
            encoder,
            lines: 0,
            unflushed: false,
        })
    }

    /// Records that job `name` started: should forge be killed before it ends, the job is
    /// listed as interrupted with the log it printed until then ([`LogWriter::flush`]).
    pub fn job_started(&mut self, name: &str) -> Result<(), HistoryError> {
        self.record.jobs.retain(|j| j.name != name);
        self.record.jobs.push(JobRecord {
            name: name.into(),
            result: JobResult::Running,
            duration_ms: 0,
            log: Some(log_file_name(name)),
            coverage: None,
        });
        self.save()
    }

    /// Records a job's end (replacing an earlier record of the same job).
    pub fn job_done(
        &mut self,
        name: &str,
        result: JobResult,
        duration: Duration,
        log: Option<LogDone>,
        coverage: Option<String>,
    ) -> Result<(), HistoryError> {
        self.record.jobs.retain(|j| j.name != name);
        self.record.jobs.push(JobRecord {
            name: name.into(),
            result,
            duration_ms: duration.as_millis() as u64,
            log: log.filter(|l| l.lines > 0).map(|l| l.file_name),
            coverage,
        });
        self.save()
    }

    /// Records the run's end.
    pub fn finish(
        mut self,
        result: RunResult,
        duration: Duration,
    ) -> Result<RunRecord, HistoryError> {
        self.record.result = result;
        self.record.duration_ms = duration.as_millis() as u64;
        self.save()?;
        Ok(self.record.clone())
    }
}

/// A job's log being written.
pub struct LogWriter {
    path: PathBuf,
    file_name: String,
    encoder: zstd::Encoder<'static, File>,
    lines: u64,
    /// Lines written since the last flush.
    unflushed: bool,
}

/// A finished log, for [`RunHandle::job_done`].
#[derive(Debug)]
pub struct LogDone {
    file_name: String,
    lines: u64,
}

impl LogWriter {
    /// Appends one line (already masked by the caller).
    pub fn line(&mut self, line: &str) -> Result<(), HistoryError> {
        self.lines += 1;
        self.unflushed = true;
        writeln!(self.encoder, "{line}").map_err(io_err("write", &self.path))
    }

    /// Writes out what the compressor holds of the lines so far, as a piece a reader can
    /// decompress without the log's end: a run killed later keeps them. A no-op when nothing
    /// was written since the last flush.
    pub fn flush(&mut self) -> Result<(), HistoryError> {
        if self.unflushed {
            self.unflushed = false;
            self.encoder.flush().map_err(io_err("write", &self.path))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<LogDone, HistoryError> {
        let path = self.path;
        let f = self.encoder.finish().map_err(io_err("compress", &path))?;
        f.sync_all().map_err(io_err("sync", &path))?;
        Ok(LogDone {
            file_name: self.file_name,
            lines: self.lines,
        })
    }
}

/// The file under `logs/` that holds job `name`'s log.
fn log_file_name(name: &str) -> String {
    format!("{}.log.zst", &blake3::hash(name.as_bytes()).to_hex()[..16])
}

/// Replaces `path` whole (see [`crate::replace`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HistoryError> {
    crate::replace::replace_file(
        path,
        |f| f.write_all(bytes).map_err(io_err("write", path)),
        |_, p, e| io_err("write", p)(e),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_numbered_recorded_and_listed_with_their_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "repo/forge.yaml").unwrap();
        assert_eq!(h.list().unwrap(), vec![]);
        let mut run = h.start(None, "abc123", "main", &[]).unwrap();
        assert_eq!(run.number(), 1);
        // Running while its handle lives.
        assert_eq!(h.run(1).unwrap().result, RunResult::Running);
        let mut log = run.log("unit: [1, p]").unwrap();
        log.line("ok 1 - adds").unwrap();
        log.line("not ok 2 - ****").unwrap();
        let done = log.finish().unwrap();
        run.job_done(
            "unit: [1, p]",
            JobResult::Failed,
            Duration::from_millis(1500),
            Some(done),
            Some("87.5".into()),
        )
        .unwrap();
        run.job_done("lint", JobResult::Cached, Duration::ZERO, None, None)
            .unwrap();
        let rec = run
            .finish(RunResult::Failed, Duration::from_secs(3))
            .unwrap();
        assert_eq!(rec.counts(), (1, 1, 1));
        // The coverage is kept, and read back as written.
        let read = h.run(1).unwrap();
        let cov: Vec<Option<&str>> = read.jobs.iter().map(|j| j.coverage.as_deref()).collect();
        assert_eq!(cov, [Some("87.5"), None]);

        let mut out = Vec::new();
        h.copy_log(1, "unit: [1, p]", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok 1 - adds\nnot ok 2 - ****\n"
        );
        let e = h.copy_log(1, "nope", &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("its jobs: unit: [1, p], lint"),
            "{e}"
        );
        assert!(matches!(
            h.copy_log(1, "lint", &mut Vec::new()),
            Err(HistoryError::NoLog { .. })
        ));
        assert!(matches!(h.run(9), Err(HistoryError::NoRun { number: 9 })));
        // C5: the matrix job's written name gives its cells' logs, each under a header.
        let mut out = Vec::new();
        h.copy_log(1, "unit", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "== unit: [1, p] (failed)\nok 1 - adds\nnot ok 2 - ****\n"
        );
        // A name that only starts like a cell's is no job.
        assert!(matches!(
            h.copy_log(1, "uni", &mut Vec::new()),
            Err(HistoryError::NoJob { .. })
        ));

        // The next run takes the next number; an explicit one is used once only.
        let run2 = h.start(None, "def456", "main", &[]).unwrap();
        assert_eq!(run2.number(), 2);
        run2.finish(RunResult::Passed, Duration::from_secs(1))
            .unwrap();
        let run10 = h.start(Some(10), "def456", "main", &[]).unwrap();
        drop(run10);
        assert!(h.start(Some(10), "x", "main", &[]).is_err());
        assert_eq!(h.start(None, "x", "main", &[]).unwrap().number(), 11);
        let numbers: Vec<u64> = h.list().unwrap().iter().map(|r| r.number).collect();
        assert_eq!(numbers, vec![1, 2, 10, 11]);
        // Run 10's handle was dropped without finishing: a killed run.
        assert_eq!(h.run(10).unwrap().result, RunResult::Interrupted);
        assert_eq!(h.last_passed_commit().unwrap().as_deref(), Some("def456"));
    }

    /// C5: a 200-cell matrix listed all 200 names on one line in the error for a wrong name.
    #[test]
    fn a_wrong_job_name_lists_the_first_few_jobs_and_counts_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "p").unwrap();
        let mut run = h.start(None, "abc", "main", &[]).unwrap();
        for i in 0..200 {
            run.job_done(
                &format!("w: [{i}]"),
                JobResult::Passed,
                Duration::ZERO,
                None,
                None,
            )
            .unwrap();
        }
        run.finish(RunResult::Passed, Duration::ZERO).unwrap();
        let e = h
            .copy_log(1, "nope", &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("its jobs: w: [0], w: [1], w: [2], w: [3], w: [4], w: [5], w: [6], w: [7], w: [8], w: [9], w: [10], w: [11] and 188 more"),
            "{e}"
        );
    }

    /// W4: a passed `forge run test-a` at a commit that broke svc-b became the `changes:`
    /// baseline, and the next full run skipped test-b and went green on the broken commit.
    #[test]
    fn a_passed_run_of_some_jobs_is_no_changes_baseline() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "p").unwrap();
        h.start(None, "full1", "main", &[])
            .unwrap()
            .finish(RunResult::Passed, Duration::ZERO)
            .unwrap();
        h.start(None, "broken", "main", &["test-a".to_string()])
            .unwrap()
            .finish(RunResult::Passed, Duration::ZERO)
            .unwrap();
        assert_eq!(h.run(2).unwrap().only, ["test-a"]);
        assert_eq!(h.last_passed_commit().unwrap().as_deref(), Some("full1"));
        h.start(None, "full2", "main", &[])
            .unwrap()
            .finish(RunResult::Passed, Duration::ZERO)
            .unwrap();
        assert_eq!(h.last_passed_commit().unwrap().as_deref(), Some("full2"));
    }

    /// C9: a passed run on a dirty work tree became the baseline, and the next run skipped the
    /// jobs whose inputs had only been dirty then.
    #[test]
    fn a_passed_run_on_a_dirty_work_tree_is_no_changes_baseline() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "p").unwrap();
        h.start(None, "clean", "main", &[])
            .unwrap()
            .finish(RunResult::Passed, Duration::ZERO)
            .unwrap();
        let mut run = h.start(None, "dirty", "main", &[]).unwrap();
        run.mark_no_baseline(true, None).unwrap();
        run.finish(RunResult::Passed, Duration::ZERO).unwrap();
        assert!(h.run(2).unwrap().dirty);
        assert!(!h.run(1).unwrap().dirty);
        assert_eq!(h.last_passed_commit().unwrap().as_deref(), Some("clean"));
    }

    /// Regression (monorepo sweep 03): a passed `forge run --changed-since REV` became the
    /// baseline, and later plain runs skipped the jobs it had skipped, untested at any commit.
    #[test]
    fn a_passed_run_compared_with_a_given_revision_is_no_changes_baseline() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "p").unwrap();
        h.start(None, "full", "main", &[])
            .unwrap()
            .finish(RunResult::Passed, Duration::ZERO)
            .unwrap();
        let mut run = h.start(None, "mr", "feature", &[]).unwrap();
        run.mark_no_baseline(false, Some("origin/main")).unwrap();
        run.finish(RunResult::Passed, Duration::ZERO).unwrap();
        assert_eq!(
            h.run(2).unwrap().changed_since.as_deref(),
            Some("origin/main")
        );
        assert!(!h.run(2).unwrap().dirty);
        assert_eq!(h.last_passed_commit().unwrap().as_deref(), Some("full"));
    }

    /// Regression (monorepo sweep 07): forge killed (SIGKILL) while a job ran lost the job: the
    /// run's record had no such job and its log file was empty (the compressor held the lines).
    /// A started job is recorded as running, its log reaches the file as it is flushed, and a
    /// run nobody holds lists the job as interrupted with what it printed.
    #[test]
    fn a_job_running_when_forge_is_killed_is_listed_interrupted_with_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let h = History::open(tmp.path(), "p").unwrap();
        let mut run = h.start(None, "abc", "main", &[]).unwrap();
        run.job_started("quiet").unwrap();
        run.job_started("slow").unwrap();
        let mut log = run.log("slow").unwrap();
        log.line("slow-start").unwrap();
        log.flush().unwrap();
        log.line("never flushed").unwrap();
        let live = h.run(1).unwrap();
        assert_eq!(live.result, RunResult::Running);
        assert_eq!(live.jobs[1].result, JobResult::Running);
        // Killed: nothing ends the log or the record.
        std::mem::forget(log);
        drop(run);
        let dead = h.run(1).unwrap();
        assert_eq!(dead.result, RunResult::Interrupted);
        let results: Vec<_> = dead
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.result))
            .collect();
        assert_eq!(
            results,
            [
                ("quiet", JobResult::Interrupted),
                ("slow", JobResult::Interrupted)
            ]
        );
        let mut out = Vec::new();
        h.copy_log(1, "slow", &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "slow-start\n");
        // A job that printed nothing before the kill has an empty log, not an error.
        let mut out = Vec::new();
        h.copy_log(1, "quiet", &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn concurrent_starts_never_share_a_number() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let h = History::open(&root, "p").unwrap();
                    (0..5)
                        .map(|_| {
                            let run = h.start(None, "", "", &[]).unwrap();
                            let n = run.number();
                            run.finish(RunResult::Passed, Duration::ZERO).unwrap();
                            n
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (1..=40).collect::<Vec<_>>());
    }
}
