//! Services: long-running containers beside a CI job (a database its tests talk to). Each runs in a
//! container of its own image, on a throw-away writable snapshot over the image's layers, in a
//! [`SharedNetwork`] the job's steps join too, so the job reaches it on 127.0.0.1:PORT and two jobs,
//! each with its own network, may run a service on the same port. [`ServiceHandle::stop`] (or
//! dropping the handle) kills the whole container and removes its snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forge_runner::backend::{Backend, RunError, Runner};
use forge_runner::spec::{
    Command, NetworkMode, Security, StepMount, StepMountKind, StepOutcome, StepSpec, Stream, User,
};
use forge_runner::{CancellationToken, SharedNetwork};
use forge_snapshotter::snapshot::{AnySnapshotter, Snapshotter};
use tokio::task::JoinHandle;
use tokio_util::sync::DropGuard;

use super::{BuildError, Session, close_runner};
use crate::export::config::config_from_json;
use crate::graph::ImageConfig;
use crate::ops::{ExecError, ensure_snapshot_in};
use crate::solver::SolveError;
use crate::source::image::BaseImage;

/// Docker's default `PATH`, for an image whose config sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A service to start beside a job.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Its name in the job (`postgres`), used as its hostname and in messages.
    pub name: String,
    /// An image already in the store (see [`crate::source::image::pull_base`]).
    pub image: BaseImage,
    /// Replaces the image's ENTRYPOINT, and its CMD with it (as `docker run --entrypoint`); an
    /// empty first word (GitLab's `[""]`) leaves none.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's CMD, its ENTRYPOINT kept (as `docker run IMAGE ARGS`); empty: the
    /// image's ENTRYPOINT and CMD.
    pub command: Vec<String>,
    /// Added to the image's ENV; a key set in both takes this value.
    pub env: Vec<(String, String)>,
    /// Secrets by name: each in the environment (over `env`) and in `/run/secrets/NAME`,
    /// readable by any user of the service's container (its image may run as one it names).
    pub secrets: Vec<(String, Vec<u8>)>,
    /// The network the service listens in, shared with the job's steps.
    pub network: SharedNetwork,
}

/// A running service. [`ServiceHandle::stop`] ends it; dropping the handle ends it too, without
/// waiting (its container and snapshot go once the runner has killed it).
pub struct ServiceHandle {
    name: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<StepOutcome, RunError>>>,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("name", &self.name)
            .field("running", &self.is_running())
            .finish()
    }
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the service's process still runs (false once it exited on its own or was stopped).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Kills the service's container (every process in it), waits until it is gone and its
    /// snapshot removed. A service that had already exited on its own (or never started: a
    /// command that is not there) is not an error here, the job's steps are what pass or fail;
    /// what happened to it is returned, for the job's log.
    pub async fn stop(mut self) -> Result<Option<String>, BuildError> {
        let ended_first = !self.is_running();
        self.cancel.cancel();
        let Some(task) = self.task.take() else {
            return Ok(None);
        };
        match task.await {
            Ok(Ok(outcome)) if ended_first => {
                let last = outcome.tail.last().map(|l| format!("; its last line: {l}"));
                Ok(Some(format!(
                    "service {} exited on its own, status {}, before the job ended{}",
                    self.name,
                    outcome.exit_code,
                    last.unwrap_or_default()
                )))
            }
            Ok(Ok(_)) | Ok(Err(RunError::Cancelled)) => Ok(None),
            Ok(Err(e)) if ended_first => {
                Ok(Some(format!("service {} did not run: {e}", self.name)))
            }
            Ok(Err(e)) => Err(BuildError::Invalid(format!("service {}: {e}", self.name))),
            Err(e) => Err(BuildError::Invalid(format!(
                "service {}: its task ended abnormally: {e}",
                self.name
            ))),
        }
    }
}

/// A writable snapshot, removed when this is dropped (after the step that used it is over).
struct ScratchSnapshot {
    snapshots: Arc<AnySnapshotter>,
    key: String,
}

impl Drop for ScratchSnapshot {
    fn drop(&mut self) {
        let _ = self.snapshots.remove(&self.key);
    }
}

/// A snapshot key no other service, probe or build uses.
fn unique_key(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{what}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A hostname made of `name` (letters, digits and `-`), `forge` when nothing is left.
fn hostname(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let h = h.trim_matches('-');
    if h.is_empty() {
        "forge".into()
    } else {
        h.into()
    }
}

/// The image's ENV with `extra` over it (a key in both takes `extra`'s value), and a `PATH` when
/// neither sets one.
fn environment(config: &ImageConfig, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = config
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .chain(extra.iter().cloned())
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// The image's USER, split into user and group.
fn user(config: &ImageConfig) -> User {
    match config.user.split_once(':') {
        Some((u, g)) => User {
            user: u.into(),
            group: Some(g.into()),
        },
        None => User {
            user: config.user.clone(),
            group: None,
        },
    }
}

/// The argv of a service: ENTRYPOINT, then `command` or else CMD; an `entrypoint` given replaces
/// the image's and drops its CMD, as `docker run --entrypoint` does.
fn service_argv(
    config: &ImageConfig,
    entrypoint: Option<&[String]>,
    command: &[String],
) -> Vec<String> {
    let (mut argv, cmd) = match entrypoint {
        Some(e) => (
            e.iter().skip_while(|w| w.is_empty()).cloned().collect(),
            Vec::new(),
        ),
        None => (
            config.entrypoint.clone().unwrap_or_default(),
            config.cmd.clone().unwrap_or_default(),
        ),
    };
    argv.extend(if command.is_empty() {
        cmd
    } else {
        command.to_vec()
    });
    argv
}

/// The TCP ports GitLab's runner waits for before a job starts, where the service has no `ready:`
/// probe: `HEALTHCHECK_TCP_PORT` of its variables, else every TCP port its image EXPOSEs (none:
/// nothing to wait for). A port that is no number is said as the error.
pub fn health_ports(service: &ServiceSpec) -> Result<Vec<u16>, BuildError> {
    if let Some((_, v)) = service
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "HEALTHCHECK_TCP_PORT")
    {
        return v.trim().parse::<u16>().map(|p| vec![p]).map_err(|_| {
            BuildError::Invalid(format!(
                "service {}: HEALTHCHECK_TCP_PORT {v:?} is not a port number",
                service.name
            ))
        });
    }
    let config = image_config(&service.image)?;
    Ok(config
        .exposed_ports
        .iter()
        .filter_map(|p| match p.split_once('/') {
            None => p.parse().ok(),
            Some((port, proto)) if proto.eq_ignore_ascii_case("tcp") => port.parse().ok(),
            Some(_) => None,
        })
        .collect())
}

fn image_config(image: &BaseImage) -> Result<ImageConfig, BuildError> {
    config_from_json(&image.config_json).map_err(|e| BuildError::BaseImage {
        reference: image.record.reference.clone(),
        reason: e.to_string(),
    })
}

impl Session {
    /// A fresh writable snapshot over `image`'s layers (unpacked into the snapshotter first when
    /// they are not yet), removed when the returned guard is dropped, and its mounts.
    async fn scratch_rootfs(
        &self,
        image: &BaseImage,
        what: &str,
    ) -> Result<(ScratchSnapshot, Vec<forge_snapshotter::Mount>), BuildError> {
        let snapshots = self.snapshots()?;
        let parent = ensure_snapshot_in(snapshots, &self.store, None, &image.layers()).await?;
        let key = unique_key(what);
        let mounts = snapshots
            .prepare(&key, parent.as_deref())
            .map_err(ExecError::from)?;
        Ok((
            ScratchSnapshot {
                snapshots: snapshots.clone(),
                key,
            },
            mounts,
        ))
    }

    /// A step of `image` (its ENV, WORKDIR and USER) running `argv` in `network`.
    fn service_step(
        config: &ImageConfig,
        argv: Vec<String>,
        env: &[(String, String)],
        secrets: &[(String, Vec<u8>)],
        name: &str,
        network: &SharedNetwork,
        rootfs: Vec<forge_snapshotter::Mount>,
    ) -> StepSpec {
        StepSpec {
            command: Command::Exec(argv),
            env: environment(config, env),
            cwd: if config.working_dir.is_empty() {
                "/".into()
            } else {
                config.working_dir.clone().into()
            },
            user: user(config),
            hostname: hostname(name),
            network: NetworkMode::Sandbox,
            join_network: Some(network.clone()),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
            proxy_upstream: None,
            rootfs,
            mounts: secrets
                .iter()
                .map(|(name, value)| StepMount {
                    target: format!("/run/secrets/{name}").into(),
                    kind: StepMountKind::Secret {
                        data: value.clone(),
                        uid: 0,
                        gid: 0,
                        mode: 0o444,
                    },
                })
                .collect(),
            secret_env: secrets
                .iter()
                .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
                .collect(),
            security: Security::Sandbox,
            limits: Default::default(),
        }
    }

    /// Starts `spec`'s service: its process runs until [`ServiceHandle::stop`] (or until it exits on
    /// its own), each line it prints passed to `line`. Returns once the process is launched, not
    /// once it is ready: see [`Session::wait_ready`].
    pub async fn start_service(
        &self,
        spec: ServiceSpec,
        line: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<ServiceHandle, BuildError> {
        let config = image_config(&spec.image)?;
        let argv = service_argv(&config, spec.entrypoint.as_deref(), &spec.command);
        if argv.is_empty() {
            return Err(BuildError::Invalid(match spec.entrypoint {
                Some(_) => format!(
                    "service {}: its entrypoint is empty (the image's CMD goes with the image's \
                     ENTRYPOINT), and the service has no command",
                    spec.name
                ),
                None => format!(
                    "service {}: the image {} has no ENTRYPOINT or CMD, and the service no command",
                    spec.name, spec.image.record.reference
                ),
            }));
        }
        let (snapshot, rootfs) = self.scratch_rootfs(&spec.image, "service").await?;
        let step = Self::service_step(
            &config,
            argv,
            &spec.env,
            &spec.secrets,
            &spec.name,
            &spec.network,
            rootfs,
        );
        let runner = self.runner().await?;
        let cancel = CancellationToken::new();
        let task_cancel = cancel.clone();
        let task = tokio::spawn(async move {
            let mut sink = move |_: Stream, l: &str| line(l);
            let ran = runner.run(&step, &mut sink, &task_cancel).await;
            close_runner(runner).await;
            // Only now that the container is gone: its writable snapshot.
            drop(snapshot);
            ran
        });
        Ok(ServiceHandle {
            name: spec.name,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            task: Some(task),
        })
    }

    /// Runs `command` (`sh -c`) in a fresh container of `service`'s image in its network (the
    /// image's ENV, WORKDIR and USER, and the service's secrets; its ENTRYPOINT is not used) every
    /// `interval` until it exits 0, for at most `timeout` in all (a probe still running then is
    /// killed). Fails with the last probe's exit status and output when none succeeded.
    pub async fn wait_ready(
        &self,
        service: &ServiceSpec,
        command: &str,
        timeout: Duration,
        interval: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        let config = image_config(&service.image)?;
        let deadline = Instant::now() + timeout;
        let runner = self.runner().await?;
        let result = self
            .probe_until(
                &runner, service, &config, command, deadline, interval, cancel,
            )
            .await;
        close_runner(runner).await;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn probe_until(
        &self,
        runner: &Backend,
        service: &ServiceSpec,
        config: &ImageConfig,
        command: &str,
        deadline: Instant,
        interval: Duration,
        cancelled: &CancellationToken,
    ) -> Result<(), BuildError> {
        let mut attempts = 0u32;
        let values: Vec<Vec<u8>> = service.secrets.iter().map(|(_, v)| v.clone()).collect();
        let masks = crate::mask::Masks::of(&values);
        loop {
            if cancelled.is_cancelled() {
                return Err(BuildError::Solve(SolveError::Cancelled));
            }
            attempts += 1;
            let (snapshot, rootfs) = self.scratch_rootfs(&service.image, "probe").await?;
            let step = Self::service_step(
                config,
                vec!["/bin/sh".into(), "-c".into(), command.into()],
                &[],
                &service.secrets,
                "probe",
                &service.network,
                rootfs,
            );
            // The probe is killed at the deadline, or when the caller is cancelled, through the
            // runner's own cancellation so that it leaves no container behind.
            let cancel = cancelled.child_token();
            let _stop = cancel.clone().drop_guard();
            let timer = {
                let cancel = cancel.clone();
                let at = tokio::time::Instant::from_std(deadline);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    cancel.cancel();
                })
            };
            let mut sink = |_: Stream, _: &str| {};
            let ran = runner.run(&step, &mut sink, &cancel).await;
            timer.abort();
            drop(snapshot);
            let last = match ran {
                Ok(o) if o.success() => return Ok(()),
                Ok(o) if o.tail.is_empty() => format!("exit code {}", o.exit_code),
                // The probe's output, masked as the service's own is.
                Ok(o) => format!(
                    "exit code {}: {}",
                    o.exit_code,
                    masks.mask(&o.tail.join("\n"))
                ),
                Err(RunError::Cancelled) if cancelled.is_cancelled() => {
                    return Err(BuildError::Solve(SolveError::Cancelled));
                }
                Err(RunError::Cancelled) => "the probe was still running".into(),
                Err(e) => return Err(ExecError::from(e).into()),
            };
            let now = Instant::now();
            if now + interval >= deadline {
                return Err(BuildError::Invalid(format!(
                    "not ready after {attempts} probe(s) of {command:?}: last, {last}"
                )));
            }
            tokio::select! {
                () = cancelled.cancelled() => return Err(BuildError::Solve(SolveError::Cancelled)),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageConfig {
            entrypoint: entrypoint.map(v),
            cmd: cmd.map(v),
            env: vec!["PATH=/bin".into(), "PGDATA=/data".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_command_replaces_cmd_and_keeps_the_entrypoint() {
        let c = config(Some(&["docker-entrypoint.sh"]), Some(&["postgres"]));
        assert_eq!(
            service_argv(&c, None, &[]),
            vec!["docker-entrypoint.sh", "postgres"]
        );
        assert_eq!(
            service_argv(
                &c,
                None,
                &["postgres".into(), "-c".into(), "fsync=off".into()]
            ),
            vec!["docker-entrypoint.sh", "postgres", "-c", "fsync=off"]
        );
        assert!(service_argv(&config(None, None), None, &[]).is_empty());
    }

    #[test]
    fn an_entrypoint_replaces_the_image_s_and_its_cmd_as_docker_run_does() {
        let c = config(Some(&["docker-entrypoint.sh"]), Some(&["postgres"]));
        let s = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            service_argv(&c, Some(&s(&["/bin/sh", "-c"])), &s(&["exec httpd -f"])),
            vec!["/bin/sh", "-c", "exec httpd -f"]
        );
        assert_eq!(service_argv(&c, Some(&s(&["tini"])), &[]), vec!["tini"]);
        // GitLab's `[""]`: no entrypoint, and so the command alone.
        assert_eq!(
            service_argv(&c, Some(&s(&[""])), &s(&["redis-server"])),
            vec!["redis-server"]
        );
        assert!(service_argv(&c, Some(&s(&[""])), &[]).is_empty());
    }

    #[test]
    fn the_service_env_wins_over_the_image_env() {
        let c = config(None, None);
        let env = environment(&c, &[("PGDATA".into(), "/tmp/pg".into())]);
        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/bin".to_string()),
                ("PGDATA".to_string(), "/tmp/pg".to_string())
            ]
        );
        let bare = ImageConfig::default();
        assert_eq!(environment(&bare, &[])[0].0, "PATH");
    }

    #[test]
    fn hostnames_are_cleaned() {
        assert_eq!(hostname("postgres"), "postgres");
        assert_eq!(hostname("my_db.1"), "my-db-1");
        assert_eq!(hostname("__"), "forge");
    }
}
