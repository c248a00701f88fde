//! One step through containerd: a container with the step's OCI spec, a task started by the runc shim on
//! the step's rootfs mounts (or a containerd snapshot), output streamed from FIFOs, the exit status from
//! Wait, and everything (task, container, host scratch state, mount stubs) taken down afterwards, also
//! when the step is cancelled.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use forge_snapshotter::Mount;
use prost_types::Any;
use tokio_util::sync::CancellationToken;

use super::io::StepIo;
use super::mounts::{self, PreparedMounts, Stubs};
use super::rootfs::{RootfsView, resolve_user};
use super::snapshots::to_proto_mounts;
use super::spec::{SpecInput, build, environment};
use super::{
    Connection, ContainerdConfig, ContainerdContent, ContainerdError, ContainerdSnapshots, Lease,
};
use crate::network::{self, Namespace};
use crate::spec::OutputSink;
use crate::spec::{NetworkMode, StepOutcome, StepSpec};

/// containerd's type URL for an OCI runtime spec carried as JSON in an `Any`.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// A lease outlives a crashed forge by at most this long.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// After the process exits, output still missing after this long is given up on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long containerd has to answer the connection and the lease's creation.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// How long a killed task gets to report its exit before the backend deletes it anyway.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;
/// Lines kept for [`StepOutcome::tail`].
const TAIL_LINES: usize = 30;

/// The containerd backend. Holds one lease for its lifetime (a build): every snapshot and blob made
/// through it stays until [`close`](Self::close).
#[derive(Debug)]
pub struct ContainerdRunner {
    config: ContainerdConfig,
    conn: Connection,
    lease: Lease,
}

/// Step ids are unique within the process even across runners (tests run several at once).
static STEPS: AtomicU64 = AtomicU64::new(0);

impl ContainerdRunner {
    /// Connects, checks that containerd answers, and takes the build's lease.
    pub async fn connect(config: ContainerdConfig) -> Result<Self, ContainerdError> {
        // A socket that takes the connection and never answers held the build for ever (and
        // what answers without being containerd, dockerd's socket, gave an error naming no
        // socket): its first answers come within a deadline, as `ctr`'s do.
        let no_answer = |what: String| ContainerdError::NoAnswer {
            address: config.address.clone(),
            what,
        };
        let silent = || {
            no_answer(format!(
                "did not answer within {} s",
                CONNECT_DEADLINE.as_secs()
            ))
        };
        let conn = tokio::time::timeout(
            CONNECT_DEADLINE,
            Connection::connect(&config.address, &config.namespace),
        )
        .await
        .map_err(|_| silent())??;
        let lease_id = format!("forge-{}-{}", std::process::id(), unique_suffix());
        let lease = tokio::time::timeout(CONNECT_DEADLINE, conn.create_lease(&lease_id, LEASE_TTL))
            .await
            .map_err(|_| silent())?
            .map_err(|e| match e {
                ContainerdError::Rpc { status, .. } => {
                    no_answer(format!("refused to make a lease ({})", status.message()))
                }
                e => e,
            })?;
        sweep_orphans(&conn, &config.state_dir).await;
        let conn = conn.with_lease(&lease);
        Ok(ContainerdRunner {
            config,
            conn,
            lease,
        })
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// The connection carrying this runner's namespace and lease.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn snapshots(&self) -> ContainerdSnapshots {
        ContainerdSnapshots::new(self.conn.clone(), self.config.snapshotter.clone())
    }

    pub fn content(&self) -> ContainerdContent {
        ContainerdContent::new(self.conn.clone())
    }

    /// Deletes the lease; snapshots and content only it held become garbage for containerd's GC.
    pub async fn close(&self) -> Result<(), ContainerdError> {
        self.conn.delete_lease(self.lease.clone(), false).await
    }

    /// Runs `spec` on its `rootfs` mounts, which the shim mounts as the container's root.
    ///
    /// The same contract as [`crate::Runner::run`]: output lines go to `output` as they come. Cancelling `cancel` kills the whole process tree
    /// (SIGKILL to every process of the task), removes task and container and returns
    /// [`ContainerdError::Cancelled`]. Dropping the future instead also cleans up, from a task
    /// spawned on the current runtime.
    pub async fn run(
        &self,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ContainerdError> {
        self.run_on(spec, spec.rootfs.clone(), None, output, cancel)
            .await
    }

    /// Runs `spec` on the active containerd snapshot `key` (made with
    /// [`ContainerdSnapshots::prepare`]) instead of `spec.rootfs`; the step's changes stay in it.
    pub async fn run_in_snapshot(
        &self,
        key: &str,
        spec: &StepSpec,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ContainerdError> {
        let rootfs = self.snapshots().mounts(key).await?;
        self.run_on(spec, rootfs, Some(key), output, cancel).await
    }

    async fn run_on(
        &self,
        spec: &StepSpec,
        rootfs: Vec<Mount>,
        snapshot_key: Option<&str>,
        output: &mut OutputSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ContainerdError> {
        let started = Instant::now();
        let n = STEPS.fetch_add(1, Ordering::Relaxed);
        let id = format!("forge-{}-{n}-{}", std::process::id(), unique_suffix());
        let step_dir = self.config.state_dir.join(&id);
        mounts::private_dir(&self.config.state_dir)?;
        mounts::create_dir(&step_dir, 0o711)?;
        let live = step_dir.join(LIVE_LOCK);
        let live = forge_snapshotter::lock::FileLock::acquire(
            &live,
            forge_snapshotter::lock::LockMode::Exclusive,
        )
        .map_err(|e| ContainerdError::io("cannot lock", &live, e))?;
        let mut step = StepResources {
            conn: self.conn.clone(),
            id: id.clone(),
            step_dir: step_dir.clone(),
            container_created: false,
            task_created: false,
            mounts: None,
            stubs: None,
            done: false,
            live: Some(live),
        };
        let result = async {
            let view = RootfsView::from_mounts(&rootfs);
            let rootfs_kind = rootfs.first().map(|m| m.kind.as_str()).unwrap_or("none");
            let user = resolve_user(view.as_ref(), &spec.user, rootfs_kind)?;
            let prepared = mounts::prepare(
                &step_dir,
                &self.config.cache_root,
                spec.hostname(),
                spec.network_mode(),
                spec.join_network.as_ref(),
                &spec.extra_hosts,
                &spec.mounts,
                cancel,
            )
            .await?;
            let oci_mounts = prepared.oci.clone();
            let mut step_env: Vec<(String, String)> =
                spec.env.iter().chain(&spec.secret_env).cloned().collect();
            prepared.resolved.apply_env(&mut step_env);
            if spec.network_mode() == NetworkMode::Sandbox {
                network::add_proxy_env(&mut step_env);
            }
            step.mounts = Some(prepared);
            // Held until the task is gone: runc joins it by this process's descriptor, and
            // dropping it stops the step's proxy.
            let netns = network::for_spec(
                spec.join_network.as_ref(),
                spec.network,
                spec.proxy_upstream.as_ref(),
            )
            .await?;
            let env = environment(&step_env, &[], &user.home);
            let runtime_spec = build(SpecInput {
                argv: spec.command.argv(),
                env,
                cwd: spec.cwd.clone(),
                user: &user,
                hostname: spec.hostname(),
                netns: netns.as_deref().map(Namespace::path),
                security: spec.security,
                mounts: oci_mounts,
                // One fixed parent: runc removes the step's cgroup but never its parent, so a parent
                // per namespace would leave an empty directory behind for every namespace used.
                cgroups_path: format!("/forge/{id}"),
                limits: spec.limits,
                ulimits: &spec.ulimits,
                shm_size: spec.shm_size(),
            })?;
            if let Some(view) = &view {
                let destinations: Vec<PathBuf> = runtime_spec
                    .mounts()
                    .iter()
                    .flatten()
                    .map(|m| m.destination().clone())
                    .collect();
                step.stubs = Stubs::find(view, destinations.iter().map(PathBuf::as_path));
            }
            let spec_json = serde_json::to_vec(&runtime_spec)
                .map_err(|e| ContainerdError::Spec(format!("serializing: {e}")))?;

            let mut containers = ContainersClient::new(self.conn.channel());
            containers
                .create(
                    self.conn.request(CreateContainerRequest {
                        container: Some(Container {
                            id: id.clone(),
                            runtime: Some(Runtime {
                                name: self.config.runtime.clone(),
                                options: None,
                            }),
                            spec: Some(Any {
                                type_url: SPEC_TYPE_URL.to_string(),
                                value: spec_json,
                            }),
                            snapshotter: snapshot_key
                                .map(|_| self.config.snapshotter.clone())
                                .unwrap_or_default(),
                            snapshot_key: snapshot_key.unwrap_or_default().to_string(),
                            ..Default::default()
                        }),
                    }),
                )
                .await
                .map_err(|s| ContainerdError::rpc(format!("create container {id}"), s))?;
            step.container_created = true;

            let io = StepIo::create(&step_dir)?;
            let mut tasks = TasksClient::new(self.conn.channel());
            tasks
                .create(self.conn.request(CreateTaskRequest {
                    container_id: id.clone(),
                    rootfs: to_proto_mounts(&rootfs),
                    stdout: io.stdout.to_string_lossy().into_owned(),
                    stderr: io.stderr.to_string_lossy().into_owned(),
                    ..Default::default()
                }))
                .await
                .map_err(|s| ContainerdError::rpc(format!("create task {id}"), s))?;
            step.task_created = true;
            let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
            let readers = io.spawn(&line_tx);
            drop(line_tx);
            let mut tail = VecDeque::with_capacity(TAIL_LINES);
            let mut forward = |stream, line: String| {
                output(stream, &line);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            };

            if cancel.is_cancelled() {
                return Err(ContainerdError::Cancelled);
            }
            tasks
                .start(self.conn.request(StartRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(|s| ContainerdError::rpc(format!("start task {id}"), s))?;

            let wait = tasks.wait(self.conn.request(WaitRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }));
            tokio::pin!(wait);
            let exit_status = loop {
                tokio::select! {
                    waited = &mut wait => break waited
                        .map_err(|s| ContainerdError::rpc(format!("wait for task {id}"), s))?
                        .into_inner()
                        .exit_status,
                    Some((stream, line)) = lines.recv() => forward(stream, line),
                    _ = cancel.cancelled() => {
                        step.kill_and_wait().await;
                        for reader in &readers {
                            reader.abort();
                        }
                        return Err(ContainerdError::Cancelled);
                    }
                }
            };
            // The shim flushes and closes the FIFOs after the exit; take what is still coming, bounded
            // so that a shim that never closes them cannot hang the build.
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            while let Ok(Some((stream, line))) =
                tokio::time::timeout_at(deadline, lines.recv()).await
            {
                forward(stream, line);
            }
            for reader in &readers {
                reader.abort();
            }
            let tail = tail.into_iter().collect();
            Ok(StepOutcome {
                exit_code: exit_status as i32,
                duration: started.elapsed(),
                tail,
                // Read before teardown: deleting the task removes the cgroup.
                memory_limit_hit: crate::limits::runc_oom_killed(
                    &format!("/forge/{id}"),
                    spec.limits,
                ),
            })
        }
        .await;
        let teardown = step.teardown().await;
        match (result, teardown) {
            (Ok(outcome), Ok(())) => Ok(outcome),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    }
}

/// Everything one step created, taken down in reverse: the task (killed if it still runs), the
/// container, host-side mount state, the stubs runc left in the rootfs, and the step directory.
struct StepResources {
    conn: Connection,
    id: String,
    step_dir: PathBuf,
    container_created: bool,
    task_created: bool,
    mounts: Option<PreparedMounts>,
    stubs: Option<Stubs>,
    done: bool,
    /// Held while the step's container may exist: its step directory's `live.lock`, which says to
    /// every forge sharing the store (whatever its PID namespace) that the container is not left
    /// over.
    live: Option<forge_snapshotter::lock::FileLock>,
}

impl StepResources {
    /// SIGKILL to every process of the task, then wait (bounded) until containerd has seen it exit.
    async fn kill_and_wait(&mut self) {
        if !self.task_created {
            return;
        }
        let mut tasks = TasksClient::new(self.conn.channel());
        let _ = tasks
            .kill(self.conn.request(KillRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
                signal: SIGKILL,
                all: true,
            }))
            .await;
        let wait = tasks.wait(self.conn.request(WaitRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
        }));
        let _ = tokio::time::timeout(KILL_TIMEOUT, wait).await;
    }

    async fn teardown(&mut self) -> Result<(), ContainerdError> {
        self.done = true;
        let mut first_error = None;
        if self.task_created {
            let mut tasks = TasksClient::new(self.conn.channel());
            let mut deleted = false;
            for attempt in 0..2 {
                match tasks
                    .delete(self.conn.request(DeleteTaskRequest {
                        container_id: self.id.clone(),
                    }))
                    .await
                {
                    Ok(_) => {
                        deleted = true;
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        deleted = true;
                        break;
                    }
                    // Still running: a dropped run or a failure between Start and Wait.
                    Err(s) if attempt == 0 && s.code() == tonic::Code::FailedPrecondition => {
                        self.kill_and_wait().await;
                    }
                    Err(s) => {
                        first_error.get_or_insert(ContainerdError::rpc(
                            format!("delete task {}", self.id),
                            s,
                        ));
                        break;
                    }
                }
            }
            self.task_created = !deleted;
        }
        if self.container_created && !self.task_created {
            let mut containers = ContainersClient::new(self.conn.channel());
            match containers
                .delete(self.conn.request(DeleteContainerRequest {
                    id: self.id.clone(),
                }))
                .await
            {
                Ok(_) => self.container_created = false,
                Err(s) if s.code() == tonic::Code::NotFound => self.container_created = false,
                Err(s) => {
                    first_error.get_or_insert(ContainerdError::rpc(
                        format!("delete container {}", self.id),
                        s,
                    ));
                }
            }
        }
        if let Some(mut prepared) = self.mounts.take()
            && let Err(e) = prepared.release()
        {
            first_error.get_or_insert(e);
        }
        // Only once the shim has unmounted the rootfs (task deleted) may the upper dir be edited.
        if !self.task_created
            && let Some(stubs) = self.stubs.take()
            && let Err(e) = stubs.remove()
        {
            first_error.get_or_insert(e);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.step_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_error.get_or_insert(ContainerdError::io(
                "cannot remove step directory",
                &self.step_dir,
                e,
            ));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for StepResources {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        // The run future was dropped mid-step: finish the teardown on the runtime, since a container
        // left running would outlive forge.
        let mut rest = StepResources {
            conn: self.conn.clone(),
            id: std::mem::take(&mut self.id),
            step_dir: std::mem::take(&mut self.step_dir),
            container_created: self.container_created,
            task_created: self.task_created,
            mounts: self.mounts.take(),
            stubs: self.stubs.take(),
            done: false,
            // The teardown still owns the container: it keeps the lock until it is done.
            live: self.live.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    rest.kill_and_wait().await;
                    let _ = rest.teardown().await;
                });
            }
            Err(_) => {
                rest.done = true;
                let _ = std::fs::remove_dir_all(&rest.step_dir);
            }
        }
    }
}

/// The lock a step's directory holds while its forge process runs the step.
const LIVE_LOCK: &str = "live.lock";

/// Takes down the step containers a forge process that is gone left behind (killed with SIGKILL
/// mid-step, so no teardown ran: its task would run or sit stopped in containerd for good, its
/// rootfs mount still pointing into the store), as that teardown would have: task killed and
/// deleted, container deleted, step directory removed. A container is this store's when its step
/// directory is in `state_dir`, and left over when nobody holds that directory's lock: a process
/// id said nothing to a forge in another PID namespace (a CI container sharing the host's
/// containerd killed a running build's step). Containers of another store, of any program, and
/// names not forge's own are left alone. Best effort: a build does not fail on it.
async fn sweep_orphans(conn: &Connection, state_dir: &std::path::Path) {
    let Ok(list) = ContainersClient::new(conn.channel())
        .list(conn.request(ListContainersRequest { filters: vec![] }))
        .await
    else {
        return;
    };
    for container in list.into_inner().containers {
        if orphan_pid(&container.id).is_none() {
            continue;
        }
        let step_dir = state_dir.join(&container.id);
        if !step_dir.is_dir()
            || forge_snapshotter::lock::FileLock::is_held(&step_dir.join(LIVE_LOCK))
        {
            continue;
        }
        let mut left = StepResources {
            conn: conn.clone(),
            step_dir,
            id: container.id,
            container_created: true,
            task_created: true,
            mounts: None,
            stubs: None,
            done: false,
            live: None,
        };
        left.kill_and_wait().await;
        let _ = left.teardown().await;
    }
}

/// The process id in a step container's name, `forge-PID-N-SUFFIX` (see `run_on`).
fn orphan_pid(id: &str) -> Option<u32> {
    let mut parts = id.strip_prefix("forge-")?.split('-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    let suffix = parts.next()?;
    (parts.next().is_none() && u64::from_str_radix(suffix, 16).is_ok()).then_some(pid)
}

/// Unique enough among concurrent forge processes on one host, together with the pid.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}", nanos & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_step_container_names_carry_a_pid() {
        assert_eq!(super::orphan_pid("forge-4242-7-1a2b3c"), Some(4242));
        for other in [
            "forge-ingest-sha256",
            "forge-4242-1a2b3c",
            "app-1-2-3",
            "forge-x-1-2",
        ] {
            assert_eq!(super::orphan_pid(other), None, "{other}");
        }
    }
}
