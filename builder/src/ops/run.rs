//! RUN steps: the graph's exec op turned into the runner's step spec (mounts made from snapshots,
//! the context, caches, secrets and ssh sockets; network, security and limits as the build grants
//! them), run, and its result committed as a layer, or, for a test step, kept as a verdict with its
//! artifacts and log. Secrets are masked in every line a step prints before anything sees it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use forge_runner::backend::Runner;
use forge_runner::spec::{
    CacheSeed, CacheSharing as StepSharing, Command, NetworkMode as StepNetwork, Security,
    StepMount, StepMountKind, StepSpec, Stream, User,
};
use forge_snapshotter::snapshot::Snapshotter;

use super::local::{LocalBind, inside};
use super::{BuildExecutor, Built, ExecError, Layer, Mounted, TestLogWriter};
use crate::events::{BuildEvent, OutputStream};
use crate::graph::{CacheSharing, MountKind, NetworkMode, NodeRef, SecurityMode, Vertex};
use crate::solver::CancellationToken;

impl BuildExecutor {
    pub(super) async fn exec_run(
        &self,
        vertex: &Vertex,
        op: &crate::graph::ExecOp,
        inputs: &[Built],
        cancel: &CancellationToken,
    ) -> Result<Built, ExecError> {
        // Inputs arrive in mount order, for the mounts that have one.
        let mut next = inputs.iter();
        let mut base: Vec<Layer> = Vec::new();
        let mut root_seen = false;
        let mut held: Vec<Mounted> = Vec::new();
        let mut scratch_keys: Vec<String> = Vec::new();
        let mut step_mounts = Vec::new();
        let mut secret_env = Vec::new();
        let mut secret_values: Vec<Vec<u8>> = Vec::new();
        let mut root_mounts = None;
        let key = self.unique("run");
        self.cfg.runner.step_coming();
        let setup = async {
            for m in &op.mounts {
                let target = PathBuf::from(&m.target);
                match &m.kind {
                    MountKind::Bind {
                        input,
                        source_path,
                        readonly,
                        output,
                    } => {
                        let built = match input {
                            Some(_) => Some(next.next().ok_or_else(|| {
                                ExecError::Internal("fewer inputs than mounts".into())
                            })?),
                            None => None,
                        };
                        if *output && !root_seen {
                            root_seen = true;
                            base = match built {
                                None => Vec::new(),
                                Some(b) => b
                                    .layers()
                                    .ok_or_else(|| {
                                        ExecError::Unsupported(
                                            "a local directory as a step's root filesystem".into(),
                                        )
                                    })?
                                    .to_vec(),
                            };
                            let parent = self.ensure_snapshot(&base).await?;
                            root_mounts =
                                Some(self.cfg.snapshots.prepare(&key, parent.as_deref())?);
                            continue;
                        }
                        let source = if let Some(Built::Local { name }) = built {
                            // The context as the build sees it (.dockerignore applied): the host's
                            // own tree only where that is the same (see `local`).
                            match self
                                .local_bind(name, source_path, *readonly, &mut scratch_keys)
                                .await?
                            {
                                LocalBind::InPlace(p) => p,
                                LocalBind::View(m, p) => {
                                    held.push(m);
                                    p
                                }
                            }
                        } else if *readonly {
                            let m = match built {
                                Some(b) => self.mount_readonly(b).await?,
                                None => self.mount_readonly(&Built::Fs { layers: vec![] }).await?,
                            };
                            let p = inside(m.path(), source_path)?;
                            held.push(m);
                            p
                        } else {
                            // A writable bind: changes land in a throwaway snapshot.
                            let layers = match built {
                                None => Vec::new(),
                                Some(b) => b.layers().map(<[Layer]>::to_vec).ok_or_else(|| {
                                    ExecError::Unsupported(
                                        "a writable bind mount of a local directory".into(),
                                    )
                                })?,
                            };
                            let parent = self.ensure_snapshot(&layers).await?;
                            let k = self.unique("bind");
                            let mounts = self.cfg.snapshots.prepare(&k, parent.as_deref())?;
                            scratch_keys.push(k);
                            let m = Mounted::mount(
                                &mounts,
                                self.cfg.scratch.work().join(self.unique("rwb")),
                            )?;
                            let p = inside(m.path(), source_path)?;
                            held.push(m);
                            p
                        };
                        step_mounts.push(StepMount {
                            target,
                            kind: StepMountKind::Bind {
                                source,
                                readonly: *readonly,
                            },
                        });
                    }
                    MountKind::Cache {
                        id,
                        sharing,
                        input,
                        source_path,
                        readonly,
                    } => {
                        // An imported cache's contents for this id, when this machine has none.
                        if let Some(seeds) = &self.cfg.mount_seeds {
                            seeds.seed(id).await;
                        }
                        // A new cache starts as a copy of its base: the `from=` stage at `source=`,
                        // or the directory lowering made for uid/gid/mode. The base stays mounted
                        // until the step ends; the runner copies it only when it creates the cache.
                        let mut seed = None;
                        if input.is_some() {
                            let b = next.next().ok_or_else(|| {
                                ExecError::Internal("fewer inputs than mounts".into())
                            })?;
                            if let Built::Local { name } = b {
                                // As for a bind mount: the context as the build sees it.
                                let (s, view) = self
                                    .local_seed(name, source_path, &mut scratch_keys)
                                    .await?;
                                seed = Some(s);
                                held.extend(view);
                            } else {
                                let m = self.mount_readonly(b).await?;
                                seed = Some(CacheSeed {
                                    root: m.path().to_path_buf(),
                                    path: PathBuf::from(source_path),
                                });
                                held.push(m);
                            }
                        }
                        step_mounts.push(StepMount {
                            target,
                            kind: StepMountKind::Cache {
                                id: id.clone(),
                                sharing: match sharing {
                                    CacheSharing::Shared => StepSharing::Shared,
                                    CacheSharing::Private => StepSharing::Private,
                                    CacheSharing::Locked => StepSharing::Locked,
                                },
                                // Without a base the cache starts as BuildKit's: root's, 0755.
                                uid: 0,
                                gid: 0,
                                mode: 0o755,
                                seed,
                                readonly: *readonly,
                            },
                        });
                    }
                    MountKind::Tmpfs {
                        size_bytes,
                        readonly,
                    } => step_mounts.push(StepMount {
                        target,
                        kind: StepMountKind::Tmpfs {
                            size: *size_bytes,
                            readonly: *readonly,
                        },
                    }),
                    MountKind::Secret {
                        id,
                        env,
                        required,
                        uid,
                        gid,
                        mode,
                    } => {
                        let Some(data) = self.cfg.secrets.get(id) else {
                            if *required {
                                return Err(ExecError::MissingSecret { id: id.clone() });
                            }
                            continue;
                        };
                        secret_values.push(data.clone());
                        if let Some(name) = env {
                            secret_env
                                .push((name.clone(), String::from_utf8_lossy(data).into_owned()));
                        }
                        if env.is_none() || !m.target.is_empty() {
                            step_mounts.push(StepMount {
                                target,
                                kind: StepMountKind::Secret {
                                    data: data.clone(),
                                    uid: *uid,
                                    gid: *gid,
                                    mode: *mode,
                                },
                            });
                        }
                    }
                    MountKind::Ssh {
                        id,
                        required,
                        uid,
                        gid,
                        mode,
                    } => {
                        let Some(sock) = self.cfg.ssh.get(id) else {
                            if *required {
                                return Err(ExecError::MissingSsh { id: id.clone() });
                            }
                            continue;
                        };
                        step_mounts.push(StepMount {
                            target,
                            kind: StepMountKind::Ssh {
                                agent_socket: sock.clone(),
                                uid: *uid,
                                gid: *gid,
                                mode: *mode,
                            },
                        });
                    }
                }
            }
            Ok(())
        }
        .await;
        let cleanup = |held: Vec<Mounted>, scratch: &[String]| {
            drop(held);
            for k in scratch {
                let _ = self.cfg.snapshots.remove(k);
            }
        };
        if let Err(e) = setup {
            cleanup(held, &scratch_keys);
            let _ = self.cfg.snapshots.remove(&key);
            return Err(e);
        }
        let Some(rootfs) = root_mounts else {
            cleanup(held, &scratch_keys);
            return Err(ExecError::Internal("a step without a root mount".into()));
        };
        let network = match op.network {
            NetworkMode::Default => self.cfg.default_network,
            NetworkMode::None => StepNetwork::None,
            NetworkMode::Host => StepNetwork::Host,
        };
        if network == StepNetwork::Host && !self.cfg.allow_network_host {
            cleanup(held, &scratch_keys);
            let _ = self.cfg.snapshots.remove(&key);
            return Err(ExecError::NetworkHostNotAllowed);
        }
        let (user, group) = match op.user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (op.user.clone(), None),
        };
        // The build's proxy arguments (HTTP_PROXY and the rest, given without an ARG): in a
        // sandbox, forge's own proxy goes through them and the step keeps forge's; on the host's
        // network the step gets them as they are. Never in the step's key or the image.
        // Without a network namespace of its own a sandboxed step is on forge's network.
        let proxy_network = match network {
            StepNetwork::Sandbox if !self.cfg.runner.own_network() => StepNetwork::Host,
            other => other,
        };
        let (proxy_upstream, proxy_env) = match proxy_setting(&self.cfg.proxy_args, proxy_network) {
            Ok(p) => p,
            Err(e) => {
                cleanup(held, &scratch_keys);
                let _ = self.cfg.snapshots.remove(&key);
                return Err(ExecError::Unsupported(e));
            }
        };
        let spec = StepSpec {
            command: Command::Exec(op.args.clone()),
            env: op
                .env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                // A proxy variable carrying the build's proxy argument (declared with ARG) would
                // lead a sandboxed step past forge's proxy to an address it cannot reach.
                .filter(|(k, v)| {
                    !(proxy_upstream.is_some()
                        && crate::graph::PROXY_ARGS.contains(&k.as_str())
                        && self
                            .cfg
                            .proxy_args
                            .iter()
                            .any(|(pk, pv)| pk == k && pv == v))
                })
                .filter(|(k, _)| !self.cfg.run_env.iter().any(|(r, _)| r == k))
                .chain(self.cfg.run_env.iter().cloned())
                .chain(proxy_env)
                .collect(),
            cwd: PathBuf::from(if op.cwd.is_empty() { "/" } else { &op.cwd }),
            user: User { user, group },
            // forge_runner::DEFAULT_HOSTNAME, BuildKit's.
            hostname: String::new(),
            network,
            join_network: self.cfg.join_network.clone(),
            proxy_upstream,
            extra_hosts: op
                .extra_hosts
                .iter()
                .filter_map(|h| {
                    let (name, ip) = h.split_once('=')?;
                    Some((name.to_string(), ip.parse().ok()?))
                })
                .collect(),
            rootfs: rootfs.clone(),
            mounts: step_mounts,
            secret_env,
            security: match op.security {
                SecurityMode::Sandbox => Security::Sandbox,
                SecurityMode::Insecure if self.cfg.allow_insecure => Security::Insecure,
                SecurityMode::Insecure => return Err(ExecError::InsecureNotAllowed),
            },
            limits: self.cfg.limits,
            // Written by forge_runner::Ulimit's Display, so it reads back.
            ulimits: op.ulimits.iter().filter_map(|u| u.parse().ok()).collect(),
            shm_size: op.shm_size.map(forge_runner::Bytes),
        };
        let vertex_ref = self.nodes.get(&vertex.id).copied().unwrap_or(NodeRef(0));
        secret_values.extend(self.cfg.masked.iter().cloned());
        let masks = Arc::new(crate::mask::Masks::of(&secret_values));
        let events = self.cfg.events.clone();
        let sink_masks = masks.clone();
        // A test step's output is also kept, as its log (see `Built::Test`).
        let test_log = match &op.test {
            Some(_) => Some(Arc::new(Mutex::new(TestLogWriter::create(
                &self.cfg.store,
            )?))),
            None => None,
        };
        let sink_log = test_log.clone();
        let show = move |stream: Stream, line: String| {
            if let Some(log) = &sink_log {
                log.lock().unwrap_or_else(|e| e.into_inner()).line(&line);
            }
            events.emit(BuildEvent::Output {
                vertex: vertex_ref,
                stream: match stream {
                    Stream::Stdout => OutputStream::Stdout,
                    Stream::Stderr => OutputStream::Stderr,
                },
                line,
            });
        };
        // Each stream masked on its own: the runner hands on a long line in pieces, and a secret
        // across a cut must be masked whole (see `Pieces`).
        let mut pieces = [Stream::Stdout, Stream::Stderr]
            .map(|_| crate::mask::Pieces::new(sink_masks.clone(), forge_runner::MIN_PIECE));
        let index = |stream: Stream| match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut sink = |stream: Stream, line: &str| {
            if let Some(line) = pieces[index(stream)].push(line) {
                show(stream, line);
            }
        };
        // A job's caches, laid on its root now that it really runs.
        if op.test.is_some() {
            for r in &self.cfg.test_restore {
                show(Stream::Stdout, r.say.clone());
                let Some(layer) = r.layer.clone() else {
                    continue;
                };
                let (store, snapshots, root_key) = (
                    self.cfg.store.clone(),
                    self.cfg.snapshots.clone(),
                    key.clone(),
                );
                let laid = super::blocking(move || {
                    let dir = snapshots.writable_dir(&root_key)?;
                    let blob = store.open_blob(&layer.digest)?;
                    let options = forge_snapshotter::unpack::UnpackOptions {
                        whiteouts: snapshots.whiteout_mode(),
                        ..Default::default()
                    };
                    forge_snapshotter::unpack::apply_tar(
                        std::io::BufReader::new(blob),
                        &dir,
                        &options,
                    )
                    .map_err(|e| ExecError::Internal(format!("restoring a cache: {e}")))?;
                    Ok(())
                })
                .await;
                if let Err(e) = laid {
                    cleanup(held, &scratch_keys);
                    let _ = self.cfg.snapshots.remove(&key);
                    return Err(e);
                }
            }
        }
        // What must run beside the step (a job's services) starts now that the step really
        // runs (not when its result comes from the cache), and stops when it ends.
        let beside = match &self.cfg.beside_step {
            Some(start) => match start(cancel.clone()).await {
                Ok(stop) => Some(stop),
                Err(e) => {
                    cleanup(held, &scratch_keys);
                    let _ = self.cfg.snapshots.remove(&key);
                    // A start the run's cancellation (or the job's timeout) ended is that, not
                    // a service's failure.
                    if cancel.is_cancelled() {
                        return Err(ExecError::Cancelled);
                    }
                    return Err(ExecError::Unsupported(e));
                }
            },
            None => None,
        };
        let ran = self.cfg.runner.run(&spec, &mut sink, cancel).await;
        if let Some(stop) = beside {
            stop().await;
        }
        // The sink's borrow of `pieces` ends with the run.
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(line) = pieces[index(stream)].finish() {
                show(stream, line);
            }
        }
        // It holds the test log, which is taken whole below.
        drop(show);
        cleanup(held, &scratch_keys);
        let outcome = match ran {
            Ok(o) => o,
            Err(e) => {
                let _ = self.cfg.snapshots.remove(&key);
                return Err(e.into());
            }
        };
        if let Some(test) = &op.test {
            // A test's verdict is its result: nothing is committed, whatever the exit status.
            let taken = self.take_artifacts(&key, &test.artifacts).await;
            let _ = self.cfg.snapshots.remove(&key);
            let log = match test_log.and_then(Arc::into_inner) {
                Some(l) => l
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .finish(&self.cfg.store)?,
                None => return Err(ExecError::Internal("the test log is still shared".into())),
            };
            return Ok(Built::Test {
                exit_code: outcome.exit_code,
                artifacts: taken?,
                log,
            });
        }
        if !outcome.success() {
            let _ = self.cfg.snapshots.remove(&key);
            return Err(ExecError::Exit {
                argv: op.args.clone(),
                code: outcome.exit_code,
                // The tail is shown again with the error (-q, json, a server's report): masked
                // like every line the step printed.
                tail: outcome.tail.iter().map(|l| masks.mask(l)).collect(),
                memory_limit_hit: outcome.memory_limit_hit,
            });
        }
        let how = self.cfg.layers.for_vertex(&vertex.id);
        let layers = self.commit_layer(key, &base, how, cancel).await?;
        Ok(Built::Fs { layers })
    }
}

/// The upstream of forge's proxy, and variables for the step's environment.
type ProxySetting = (
    Option<forge_runner::network::Upstream>,
    Vec<(String, String)>,
);

/// What the build's proxy arguments mean for a step on `network`: the upstream of forge's proxy in
/// a sandbox (HTTPS_PROXY, else HTTP_PROXY, either spelling, with NO_PROXY), or the variables
/// themselves for a step on the host's network (or none).
fn proxy_setting(args: &[(String, String)], network: StepNetwork) -> Result<ProxySetting, String> {
    if args.is_empty() {
        return Ok((None, Vec::new()));
    }
    if network != StepNetwork::Sandbox {
        return Ok((None, args.to_vec()));
    }
    let get = |names: &[&str]| {
        names.iter().find_map(|n| {
            args.iter()
                .find(|(k, v)| k == n && !v.is_empty())
                .map(|(_, v)| v.clone())
        })
    };
    let Some(url) = get(&["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]) else {
        return Ok((None, Vec::new()));
    };
    let no_proxy = get(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    forge_runner::network::Upstream::parse(&url, &no_proxy)
        .map(|u| (Some(u), Vec::new()))
        .map_err(|e| format!("--build-arg {e}"))
}

/// What [`ExecError::Exit`] adds when the kernel's OOM killer ended the step.
pub(super) fn oom_note(limit: impl std::borrow::Borrow<Option<forge_runner::Bytes>>) -> String {
    limit
        .borrow()
        .map(|l| {
            format!(" (killed by the kernel: the step passed its memory limit of {l}, --memory)")
        })
        .unwrap_or_default()
}

/// An argv as an error shows it: quoted, and cut after 2 KiB so a step with a huge command line
/// does not print megabytes.
pub(super) fn short_argv(argv: &[String]) -> String {
    const MAX: usize = 2048;
    let full = format!("{argv:?}");
    if full.len() <= MAX {
        return full;
    }
    let mut cut = MAX;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} more bytes)", &full[..cut], full.len() - cut)
}
