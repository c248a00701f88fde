//! One job as a graph: the image it runs on (its layers, then the artifact layers of the jobs it
//! needs) and a test step that runs its script on that filesystem. The solve goes through the
//! build cache like any build's: a job whose image, artifacts, script and non-secret variables are
//! unchanged gets its recorded verdict back (a pass only: failed verdicts are never reused), with
//! its log and artifacts, and does not run.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use forge_snapshotter::store::{Descriptor, ImageRecord};

use crate::api::{BuildError, Session};
use crate::cache_io::LayeredCache;
use crate::events::{BuildEvent, BuildId, Events};
use crate::graph::{
    ExecOp, GraphBuilder, ImageConfig, Mount, MountKind, NetworkMode, Op, Output, Platform,
    SecurityMode, SourceOp, TestStep,
};
use crate::ops::{Artifacts, BuildExecutor, Built, ExecutorConfig, LayerPlan};
use crate::scratch::Scratch;
use crate::solver::{CancellationToken, DiskCache, SolveOptions, Solver};
use crate::source::image::BaseImage;

/// What a job runs on: an image in the store, with the layers laid on top of it (artifacts of
/// the jobs it needs, plain tars).
#[derive(Debug, Clone)]
pub struct JobImage {
    /// How the job's lines name it.
    pub name: String,
    pub base: BaseImage,
    pub config: ImageConfig,
    /// Extra layers, bottom first: uncompressed tars in the store.
    pub extra: Vec<Descriptor>,
}

/// A job ready to solve.
#[derive(Clone)]
pub struct JobSpec {
    pub name: String,
    pub image: JobImage,
    /// Run with the script's shell as its arguments; empty: the shell alone.
    pub entrypoint: Vec<String>,
    /// The script, one shell line each, run by bash or `sh` with `-e` (see [`SHELL_PICK`]).
    pub script: Vec<String>,
    /// Run after the script in a shell of its own, whatever its result (see [`script_program`]).
    pub after_script: Vec<String>,
    /// Non-secret variables, in the order the job sees them (after the image's own).
    pub env: Vec<(String, String)>,
    /// Variables given at run time and hashed into no key (the build number, the commit).
    pub run_env: Vec<(String, String)>,
    /// Secret names: each reaches the job as an environment variable of that name, from
    /// `secrets`, and is masked in every line.
    pub secret_names: Vec<String>,
    pub secrets: HashMap<String, Vec<u8>>,
    /// Every secret value of the run, masked in the job's output too: another job may hand one
    /// on in its artifacts or dotenv report.
    pub masked: Vec<Vec<u8>>,
    /// Absolute paths taken out after the run (artifacts, reports and caches).
    pub artifacts: Vec<String>,
    /// The job's caches, laid on its filesystem when it really runs; in no key.
    pub restore: Vec<crate::ops::TestRestore>,
    /// The keys its caches have in this run, in the plan's order.
    pub cache_keys: Vec<String>,
    pub host_network: bool,
    /// The network the job shares with its services.
    pub network: Option<forge_runner::SharedNetwork>,
    /// What the job's services are (image filesystems and commands): part of the job's key.
    pub services_key: String,
    /// Starts the job's services (in `network`) when the job really runs.
    pub services: Option<crate::ops::BesideStep>,
    pub no_cache: bool,
    pub timeout: Option<Duration>,
    /// The caches the pipeline's images import: the job's verdict may come from one, and its
    /// results are collected for the caches they export.
    pub cache: Option<Arc<super::cache::PipelineCache>>,
}

/// How a job's solve ended.
#[derive(Debug, Clone)]
pub struct JobVerdict {
    /// The script's exit status; `None` when it did not finish (timed out, cancelled).
    pub exit_code: Option<i32>,
    /// Served from the cache: it did not run, and its log was replayed.
    pub cached: bool,
    pub artifacts: Option<Artifacts>,
    /// Why there is no exit status.
    pub error: Option<String>,
}

impl JobVerdict {
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The script as one program for a shell run with `-e` (see [`SHELL_PICK`]): each line is echoed (`$ line`, as CI logs show it) and run.
/// With `after`, the script runs in a subshell whose status the program keeps, then `after` in
/// one of its own (no variable or directory of the script's carries over), whose failure is said
/// and changes nothing; the program ends with the script's status (GitLab's `after_script`).
pub fn script_program(lines: &[String], after: &[String]) -> String {
    format!("{PIPEFAIL}{}", script_body(lines, after))
}

/// What GitLab's runner puts first in a job's script: a pipeline fails with any of its commands
/// (`make test | tee log` fails with `make`), where the shell knows `pipefail` (bash, busybox;
/// Debian's dash before 0.5.13 does not, and runs the script without it). Asked in a subshell, so
/// that a shell that refuses the option (a special builtin's error ends a POSIX shell) goes on.
const PIPEFAIL: &str = "if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n";

/// The program the job's step runs, given the script as `$1`: bash where the image has it, else
/// `/bin/sh`, each with `-e`, as GitLab's runner picks the shell of a job in an image.
pub const SHELL_PICK: &str = "for forge_shell in /usr/local/bin/bash /usr/bin/bash /bin/bash; \
     do if [ -x \"$forge_shell\" ]; then exec \"$forge_shell\" -e -c \"$1\"; fi; done; \
     exec /bin/sh -e -c \"$1\"";

fn script_body(lines: &[String], after: &[String]) -> String {
    let echoed = |lines: &[String]| {
        let mut out = String::new();
        for line in lines {
            out.push_str("printf '%s\\n' ");
            out.push_str(&shell_quote(&format!("$ {}", shown(line))));
            out.push('\n');
            out.push_str(line);
            out.push('\n');
        }
        out
    };
    if after.is_empty() {
        return echoed(lines);
    }
    // Each subshell is a command of its own, with `set -e` inside: within an `&&`/`||` list the
    // shell would ignore `-e` in it, and a failing line would not stop the script. Outside them
    // `-e` is off, so that a failure is a status to keep, not the end of the program.
    // `CI_JOB_STATUS` tells `after_script` how the script ended, as GitLab's runner does.
    format!(
        "set +e\n(\nset -e\n{})\nforge_status=$?\nif [ \"$forge_status\" = 0 ]; then \
         CI_JOB_STATUS=success; else CI_JOB_STATUS=failed; fi\nexport CI_JOB_STATUS\n\
         (\nset -e\n{})\nforge_after=$?\n\
         if [ \"$forge_after\" != 0 ]; then printf '%s\\n' \"forge: after_script exited with \
         $forge_after (the job's result is its script's)\"; fi\nexit $forge_status\n",
        echoed(lines),
        echoed(after)
    )
}

/// A script line as the log shows it, as GitLab's runner shows it: a block scalar's item
/// (`- |`) without its last line break, and one of several lines as its first line, marked
/// `# collapsed multi-line command`. (The whole item runs.)
fn shown(line: &str) -> String {
    let line = line.trim_end_matches('\n');
    match line.split_once('\n') {
        Some((first, _)) => format!("{first} # collapsed multi-line command"),
        None => line.to_string(),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The reference a job's image is known by inside its graph: content-addressed by the
/// filesystem (the image's layer diff_ids, then the extra layers), not by its manifest, whose
/// creation time changes with every build of the same content. What else of the config a job
/// sees (environment, working directory, user) is in the step itself, and hashed there.
/// Whether an image's `USER` (`name`, `uid`, `user:group`; empty is root) is root.
fn runs_as_root(user: &str) -> bool {
    matches!(user.split(':').next().unwrap_or(""), "" | "root" | "0")
}

fn image_key(image: &JobImage, services: &str) -> String {
    let mut h = blake3::Hasher::new();
    if !services.is_empty() {
        h.update(b"services\0");
        h.update(services.as_bytes());
        h.update(b"\0");
    }
    for d in &image.base.diff_ids {
        h.update(d.to_string().as_bytes());
        h.update(b"\0");
    }
    for l in &image.extra {
        h.update(b"+");
        h.update(l.digest.to_string().as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex().to_string()
}

/// The image with its extra layers appended, as the executor reads a base image. Its manifest
/// digest (the cache input of an image source) is replaced by [`image_key`], shaped as a
/// sha256 digest; it names no blob.
fn layered(image: &JobImage, services: &str) -> BaseImage {
    let mut base = image.base.clone();
    let mut record: ImageRecord = base.record.clone();
    for l in &image.extra {
        record.layers.push(l.clone());
        base.diff_ids.push(
            l.digest
                .to_string()
                .parse()
                .expect("a store digest is an OCI digest"),
        );
    }
    if let Ok(d) = format!("sha256:{}", image_key(image, services)).parse() {
        record.manifest.digest = d;
    }
    base.record = record;
    base
}

impl Session {
    /// Solves one job: its test step on its image, through the build cache. Every line it prints
    /// (or, when cached, printed before) goes to `line`, masked.
    pub(crate) async fn solve_job(
        &self,
        job: &JobSpec,
        line: Arc<dyn Fn(&str) + Send + Sync>,
        cancel: CancellationToken,
        replaying: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<JobVerdict, BuildError> {
        let reference = format!(
            "forge-job-image/{}",
            image_key(&job.image, &job.services_key)
        );
        let platform = Platform::host();
        let mut b = GraphBuilder::new();
        let root = b.add(
            Op::Source(SourceOp::Image {
                reference: reference.clone(),
                platform: platform.clone(),
            }),
            format!("[{}] image {}", job.name, job.image.name),
            None,
        );
        let config = &job.image.config;
        let mut env: Vec<String> = config.env.clone();
        for (k, v) in &job.env {
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
            env.push(format!("{k}={v}"));
        }
        let mut mounts = vec![Mount {
            target: "/".into(),
            kind: MountKind::Bind {
                input: Some(root),
                source_path: "/".into(),
                readonly: false,
                output: true,
            },
        }];
        // A job's secret is the job's to read, whatever user its image names: that user may be
        // known only by name in the image's /etc/passwd, so the file is readable by every user
        // of the job's container (which is the job's alone, and whose every process has the
        // secret in its environment anyway). Under root it stays 0400, as `RUN --mount=type=secret`.
        let secret_mode = if runs_as_root(&config.user) {
            0o400
        } else {
            0o444
        };
        for name in &job.secret_names {
            mounts.push(Mount {
                target: format!("/run/secrets/{name}"),
                kind: MountKind::Secret {
                    id: name.clone(),
                    env: Some(name.clone()),
                    required: true,
                    uid: 0,
                    gid: 0,
                    mode: secret_mode,
                },
            });
        }
        let exec = b.add_in_stage(
            job.name.clone(),
            Op::Exec(ExecOp {
                args: job
                    .entrypoint
                    .iter()
                    .cloned()
                    .chain([
                        "/bin/sh".into(),
                        "-c".into(),
                        SHELL_PICK.into(),
                        "sh".into(),
                        script_program(&job.script, &job.after_script),
                    ])
                    .collect(),
                env,
                cwd: if config.working_dir.is_empty() {
                    "/".into()
                } else {
                    config.working_dir.clone()
                },
                user: config.user.clone(),
                network: if job.host_network {
                    NetworkMode::Host
                } else {
                    NetworkMode::Default
                },
                security: SecurityMode::Sandbox,
                platform,
                mounts,
                test: Some(TestStep {
                    artifacts: job.artifacts.clone(),
                }),
                extra_hosts: Vec::new(),
                ulimits: Vec::new(),
                shm_size: None,
            }),
            format!("[{}] script", job.name),
            None,
        );
        b.add_output(Output {
            name: job.name.clone(),
            root,
            image: config.clone(),
            gates: vec![exec],
        });
        let graph = Arc::new(b.finish());

        let build = BuildId::new();
        let scratch = Arc::new(Scratch::create(&self.root, &build).map_err(|e| {
            BuildError::Invalid(format!(
                "scratch space under {}: {e}",
                crate::scratch::tmp_root(&self.root).display()
            ))
        })?);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = Events::new(build, Some(tx));
        let sink = line.clone();
        let forward = tokio::spawn(async move {
            while let Some(rec) = rx.recv().await {
                if let BuildEvent::Output { line, .. } = &rec.event {
                    sink(line);
                }
            }
        });
        let runner = self.runner().await?;
        let executor = BuildExecutor::new(
            ExecutorConfig {
                store: self.store.clone(),
                snapshots: self.snapshots()?.clone(),
                runner: runner.clone(),
                scratch: scratch.clone(),
                locals: HashMap::new(),
                images: HashMap::from([(reference, layered(&job.image, &job.services_key))]),
                secrets: job.secrets.clone(),
                masked: job.masked.clone(),
                ssh: HashMap::new(),
                layers: LayerPlan::default(),
                default_network: forge_runner::spec::NetworkMode::Sandbox,
                allow_network_host: job.host_network,
                allow_insecure: false,
                limits: forge_runner::Limits::default(),
                http: None,
                events: events.clone(),
                run_env: job.run_env.clone(),
                join_network: job.network.clone(),
                beside_step: job.services.clone(),
                proxy_args: Vec::new(),
                remote: job.cache.as_ref().map(|c| c.remote.clone()),
                mount_seeds: None,
                test_restore: job.restore.clone(),
            },
            &graph,
        );
        let executor = match executor {
            Ok(e) => Arc::new(e),
            Err(e) => {
                crate::api::close_runner(runner).await;
                return Err(e.into());
            }
        };
        let local = DiskCache::open(self.root.join("build-cache"))?;
        let cache: Arc<dyn crate::solver::CacheStore> = match &job.cache {
            Some(c) => Arc::new(LayeredCache::new(local, c.imported.clone())),
            None => Arc::new(local),
        };
        let options = SolveOptions {
            no_cache: job.no_cache,
            cancel: cancel.clone(),
            ..SolveOptions::default()
        };
        let solver = Solver::new(executor.clone(), cache, options);
        let solved = {
            let solve = solver.solve(graph.clone(), &[0]);
            tokio::pin!(solve);
            // On a timeout the step is cancelled and waited for, so that its process and scratch state
            // are gone before the job is reported.
            match job.timeout {
                Some(t) => tokio::select! {
                    r = &mut solve => Some(r),
                    _ = tokio::time::sleep(t) => {
                        cancel.cancel();
                        let _ = (&mut solve).await;
                        None
                    }
                },
                None => Some(solve.await),
            }
        };
        drop(solver);
        executor.name_written_snapshots().await;
        drop(executor);
        crate::api::close_runner(runner).await;
        drop(events);
        let _ = forward.await;
        let Some(solved) = solved else {
            return Ok(JobVerdict {
                exit_code: None,
                cached: false,
                artifacts: None,
                error: Some(format!(
                    "timed out after {}s",
                    job.timeout.unwrap_or_default().as_secs()
                )),
            });
        };
        let solution = match solved {
            Ok(s) => s,
            Err(failure) => {
                if cancel.is_cancelled() {
                    return Ok(JobVerdict {
                        exit_code: None,
                        cached: false,
                        artifacts: None,
                        error: Some("cancelled".into()),
                    });
                }
                return Err(failure.error.into());
            }
        };
        let s = solution
            .get(exec)
            .ok_or_else(|| BuildError::Invalid("the job's step was not solved".into()))?;
        if let Some(c) = &job.cache {
            // A verdict from an imported cache: its log and files are fetched to be shown.
            if s.cached {
                c.remote
                    .ensure(&self.store, &s.output.blobs())
                    .await
                    .map_err(|e| {
                        BuildError::Invalid(format!(
                            "the cached verdict of this job names a blob that could not be \
                             fetched ({e}); run again with --no-cache"
                        ))
                    })?;
            }
            c.add_job(crate::cache_io::entries(&graph, &solution));
        }
        let Built::Test {
            exit_code,
            artifacts,
            log,
        } = &s.output
        else {
            return Err(BuildError::Invalid("the job's step gave no verdict".into()));
        };
        if s.cached
            && let Some(log) = log
        {
            replaying.store(true, std::sync::atomic::Ordering::Relaxed);
            let f = self.store.open_blob(&log.digest)?;
            for l in std::io::BufReader::new(f).lines() {
                let l = l.map_err(|e| BuildError::Invalid(format!("reading a cached log: {e}")))?;
                line(&l);
            }
        }
        Ok(JobVerdict {
            exit_code: Some(*exit_code),
            cached: s.cached,
            artifacts: artifacts.clone(),
            error: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SHELL_PICK, script_program};

    /// Runs `program` as a job's step runs it (through [`SHELL_PICK`]: bash here, where the
    /// machine has it), in a scratch directory.
    fn run(program: &str) -> (i32, String) {
        run_in("/bin/sh", &["-c", SHELL_PICK, "sh", program])
    }

    fn run_in(shell: &str, args: &[&str]) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new(shell)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn without_after_script_the_program_is_the_echoed_lines() {
        let p = script_program(&lines(&["echo a", "false", "echo b"]), &[]);
        assert_eq!(
            p,
            "if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n\
             printf '%s\\n' '$ echo a'\necho a\nprintf '%s\\n' '$ false'\nfalse\nprintf '%s\\n' '$ echo b'\necho b\n"
        );
        let (code, out) = run(&p);
        assert_eq!(code, 1);
        assert_eq!(out, "$ echo a\na\n$ false\n");
    }

    #[test]
    fn after_script_runs_after_a_failure_which_stays_the_result() {
        let p = script_program(
            &lines(&[
                "echo a",
                "exit_code_3() { return 3; }; exit_code_3",
                "echo not reached",
            ]),
            &lines(&["echo cleaning up"]),
        );
        let (code, out) = run(&p);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("$ echo cleaning up\ncleaning up\n"), "{out}");
        assert!(!out.contains("not reached\n"), "{out}");
        assert!(!out.contains("after_script exited"), "{out}");
    }

    #[test]
    fn a_failing_after_script_is_said_and_changes_nothing() {
        let p = script_program(
            &lines(&["echo ok"]),
            &lines(&["false", "echo after the failure"]),
        );
        let (code, out) = run(&p);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("forge: after_script exited with 1 (the job's result is its script's)"),
            "{out}"
        );
        assert!(!out.contains("after the failure\n"), "{out}");
    }

    /// GitLab's runner tells `after_script` the script's result in `CI_JOB_STATUS`; notify-on-
    /// failure lines that read it never fired.
    #[test]
    fn after_script_reads_the_scripts_result_in_ci_job_status() {
        let after = lines(&["echo \"status=[$CI_JOB_STATUS]\""]);
        let (code, out) = run(&script_program(&lines(&["true"]), &after));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\nstatus=[success]\n"), "{out}");
        let (code, out) = run(&script_program(&lines(&["exit 4"]), &after));
        assert_eq!(code, 4, "{out}");
        assert!(out.contains("\nstatus=[failed]\n"), "{out}");
    }

    /// A block scalar's item printed an empty line after its echo, and every line of a multi-line
    /// one; GitLab's runner shows its first line, marked collapsed.
    #[test]
    fn a_multi_line_item_is_shown_collapsed_and_runs_whole() {
        let p = script_program(&lines(&["echo one two\n", "echo line1\necho line2\n"]), &[]);
        let (code, out) = run(&p);
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out,
            "$ echo one two\none two\n$ echo line1 # collapsed multi-line command\nline1\nline2\n"
        );
    }

    /// GitLab's runner runs a job in bash where the image has it, with `pipefail` where the shell
    /// knows it: `make test | tee log` passed when `make` failed.
    #[test]
    fn a_failing_command_fails_its_pipeline_where_the_shell_knows_pipefail() {
        let p = script_program(&lines(&["false | cat", "echo not reached"]), &[]);
        // `run` picks bash where the machine has it, as a job's step does in an image.
        if ["/bin/bash", "/usr/bin/bash"]
            .iter()
            .any(|bash| std::path::Path::new(bash).exists())
        {
            let (code, out) = run(&p);
            assert_eq!(code, 1, "{out}");
            assert!(!out.contains("not reached\n"), "{out}");
            let (_, shell) = run("echo \"[${BASH_VERSION:+bash}]\"");
            assert!(shell.ends_with("[bash]\n"), "{shell}");
        }
        // busybox's sh knows it too.
        if std::path::Path::new("/bin/busybox").exists() {
            let (code, out) = run_in("/bin/busybox", &["sh", "-e", "-c", &p]);
            assert_eq!(code, 1, "{out}");
        }
        // A shell that does not (dash before 0.5.13) runs the script without it.
        if std::path::Path::new("/bin/dash").exists() {
            let ok = script_program(&lines(&["false | cat", "echo reached"]), &[]);
            let (code, out) = run_in("/bin/dash", &["-e", "-c", &ok]);
            let knows = run_in("/bin/dash", &["-c", "set -o pipefail"]).0 == 0;
            if !knows {
                assert_eq!(code, 0, "{out}");
                assert!(out.ends_with("reached\n"), "{out}");
            }
        }
    }

    #[test]
    fn after_script_is_a_shell_of_its_own() {
        let p = script_program(
            &lines(&["X=set-by-script", "mkdir sub && cd sub"]),
            &lines(&["echo \"x=[$X] dir=[$(basename \"$PWD\")]\""]),
        );
        let (code, out) = run(&p);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("x=[] dir=["), "{out}");
        assert!(!out.contains("dir=[sub]"), "{out}");
    }
}
