//! The network of a step, the same for every backend (issue 11.4).
//!
//! A step does not share the host's network by default: it gets a private network namespace with
//! loopback up ([`NetworkMode::Sandbox`]), where the only way out is forge's own HTTP(S) proxy
//! ([`proxy`]). Its listener is bound inside the namespace, on 127.0.0.1:[`PROXY_PORT`] (fixed: the
//! namespace is the step's alone), and served by a task of forge, which lives in the host's
//! network; the step finds it through the standard `*_PROXY` variables. Nothing else crosses: the
//! host's loopback services and abstract unix sockets stay out of reach, and the proxy refuses
//! destinations on the host itself. slirp4netns or pasta would give a full user-mode network, but
//! need a /dev/net/tun the user may open, which many build machines do not grant.
//!
//! The namespace is made on a short-lived thread of its own (unshare changes the calling thread),
//! and held by a descriptor: the embedded backend's step thread joins it with setns before forking
//! the step's init, and runc joins it by path (`/proc/<forge>/fd/<n>`).

pub(crate) mod proxy;

pub use proxy::Upstream;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use nix::sched::{CloneFlags, unshare};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Network mode of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// The default: a private network namespace with loopback up, where the only way out is
    /// forge's HTTP(S) proxy, announced in `HTTP_PROXY`/`HTTPS_PROXY`, which refuses the host's
    /// own addresses. A step reaches package mirrors but not the services of the machine it builds
    /// on (issue 11.4); slirp4netns would need /dev/net/tun, which many build users cannot open.
    #[default]
    Sandbox,
    /// The host's network, loopback services included; the builder runs such a step only when the
    /// build grants `--allow network.host`.
    Host,
    /// A fresh network namespace with only loopback up, and no proxy.
    None,
}

/// Where the proxy listens inside every sandboxed step's namespace.
pub const PROXY_PORT: u16 = 3128;

/// What a sandboxed step's `*_PROXY` variables say.
pub const PROXY_URL: &str = "http://127.0.0.1:3128";

/// What `NO_PROXY` says: the step's own loopback is its own, never the proxy's business.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// Setting up a step's network namespace failed.
#[derive(Debug, thiserror::Error)]
#[error("step network: {what}: {source}")]
pub struct NetworkError {
    what: &'static str,
    #[source]
    source: io::Error,
}

fn net_err(what: &'static str) -> impl FnOnce(io::Error) -> NetworkError {
    move |source| NetworkError { what, source }
}

/// A step's private network namespace, alive while this holds a descriptor of it; for a sandboxed
/// step, the proxy serving it stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Namespace {
    file: File,
    _proxy: Option<DropGuard>,
}

impl Namespace {
    /// The namespace a step of `mode` runs in: `None` for the host's network. Called from a task of
    /// the runtime that is to serve the proxy.
    pub(crate) async fn for_step(
        mode: NetworkMode,
        upstream: Option<Arc<proxy::Upstream>>,
    ) -> Result<Option<Namespace>, NetworkError> {
        let proxy = match mode {
            NetworkMode::Host => return Ok(None),
            NetworkMode::None => false,
            NetworkMode::Sandbox => true,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own, ended right after: unshare changes the calling thread for good.
        std::thread::Builder::new()
            .name("forge-netns".into())
            .spawn(move || {
                let _ = tx.send(make(proxy));
            })
            .map_err(net_err("spawn a thread to make the namespace"))?;
        let (file, listener) = rx.await.map_err(|_| NetworkError {
            what: "make the namespace",
            source: io::Error::other("the namespace thread ended without an answer"),
        })??;
        let proxy = match listener {
            Some(listener) => {
                let stop = CancellationToken::new();
                tokio::spawn(proxy::serve(listener, stop.clone(), upstream));
                Some(stop.drop_guard())
            }
            None => None,
        };
        Ok(Some(Namespace {
            file,
            _proxy: proxy,
        }))
    }

    /// A path runc can open to join the namespace while this value lives.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// A second descriptor of the namespace, for a thread that joins it with setns.
    pub(crate) fn try_clone(&self) -> Result<File, NetworkError> {
        self.file
            .try_clone()
            .map_err(net_err("duplicate the namespace descriptor"))
    }
}

/// A sandbox network namespace (loopback up, forge's proxy on 127.0.0.1:[`PROXY_PORT`]) that
/// several steps join at once ([`crate::spec::StepSpec::join_network`]): a CI job and its services reach each
/// other on 127.0.0.1, and two jobs, each in its own, may listen on the same port. Cheap to clone;
/// the namespace and its proxy live while any clone does (and while a step that joined it runs).
/// Two handles are equal when they are clones of one namespace. Names given with
/// [`SharedNetwork::with_names`] (a job's services) are in the `/etc/hosts` of every step that
/// joins it, as `127.0.0.1`: they all listen on the one loopback.
#[derive(Debug, Clone)]
pub struct SharedNetwork(Arc<Namespace>, Arc<Vec<String>>);

impl SharedNetwork {
    /// A new namespace with the proxy, served by a task of the calling runtime.
    pub async fn new() -> Result<SharedNetwork, NetworkError> {
        match Namespace::for_step(NetworkMode::Sandbox, None).await? {
            Some(ns) => Ok(SharedNetwork(Arc::new(ns), Arc::new(Vec::new()))),
            None => unreachable!("a sandbox always has a namespace"),
        }
    }

    /// The same namespace, with `names` resolving to its loopback in every step that joins it.
    pub fn with_names(self, names: Vec<String>) -> SharedNetwork {
        SharedNetwork(self.0, Arc::new(names))
    }

    /// The names that resolve to the namespace's loopback.
    pub fn names(&self) -> &[String] {
        &self.1
    }

    /// Waits until each of `ports` accepts a TCP connection on the namespace's 127.0.0.1 (a
    /// service listening), trying every 100 ms until `deadline` or `cancel`; returns the ports
    /// that never did. The tries are made from a thread of forge's own that joins the namespace
    /// (setns changes the calling thread only, so no thread of a pool is lent to it).
    pub async fn wait_tcp(
        &self,
        ports: &[u16],
        deadline: std::time::Instant,
        cancel: &CancellationToken,
    ) -> Result<Vec<u16>, NetworkError> {
        let file = self.0.try_clone()?;
        let ports = ports.to_vec();
        // Cancelled with `cancel`, or when this call returns: the thread then stops trying.
        let stop = cancel.child_token();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("forge-wait-tcp".into())
            .spawn(move || {
                let answer = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError {
                        what: "join the service's network namespace",
                        source: io::Error::from(e),
                    })
                    .map(|()| {
                        let mut left = ports;
                        loop {
                            left.retain(|p| {
                                let at = std::net::SocketAddr::from(([127, 0, 0, 1], *p));
                                std::net::TcpStream::connect_timeout(
                                    &at,
                                    std::time::Duration::from_millis(500),
                                )
                                .is_err()
                            });
                            let now = std::time::Instant::now();
                            if left.is_empty() || now >= deadline || stopped.is_cancelled() {
                                break left;
                            }
                            std::thread::sleep(
                                std::time::Duration::from_millis(100).min(deadline - now),
                            );
                        }
                    });
                let _ = tx.send(answer);
            })
            .map_err(net_err("start a thread"))?;
        let _stop_on_return = stop.drop_guard();
        tokio::select! {
            answer = rx => answer.map_err(|_| NetworkError {
                what: "wait for the service's ports",
                source: io::Error::other("the waiting thread ended without an answer"),
            })?,
            () = cancel.cancelled() => Ok(Vec::new()),
        }
    }

    /// The namespace's inode, as `/proc/<pid>/ns/net` of a process in it shows (`net:[N]`).
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.0.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }
}

impl PartialEq for SharedNetwork {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedNetwork {}

/// A step's `/etc/hosts`: localhost and its hostname, the names of the network it joins, then the
/// names given with `--add-host`.
pub(crate) fn hosts_file(
    hostname: &str,
    join: Option<&SharedNetwork>,
    extra: &[(String, std::net::IpAddr)],
) -> String {
    let mut names = vec!["localhost".to_string(), hostname.to_string()];
    for n in join.map(SharedNetwork::names).unwrap_or_default() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut out = format!(
        "127.0.0.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        names.join(" ")
    );
    for (name, ip) in extra {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

/// The namespace a step runs in, held by the caller until the step is over: the shared one it
/// joins, else one of its own for its mode (`None`: the host's network).
pub(crate) async fn for_spec(
    join: Option<&SharedNetwork>,
    mode: NetworkMode,
    upstream: Option<&proxy::Upstream>,
) -> Result<Option<Arc<Namespace>>, NetworkError> {
    if let Some(shared) = join {
        return Ok(Some(Arc::clone(&shared.0)));
    }
    Ok(Namespace::for_step(mode, upstream.cloned().map(Arc::new))
        .await?
        .map(Arc::new))
}

/// On the calling thread, which is never used again: a new network namespace with loopback up, a
/// descriptor of it, and with `proxy` the proxy's listener bound inside it.
fn make(proxy: bool) -> Result<(File, Option<std::net::TcpListener>), NetworkError> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| net_err("unshare the network namespace")(e.into()))?;
    loopback_up().map_err(net_err("bring loopback up"))?;
    let listener = proxy
        .then(|| {
            std::net::TcpListener::bind(("127.0.0.1", PROXY_PORT))
                .map_err(net_err("bind the proxy's listener on 127.0.0.1:3128"))
        })
        .transpose()?;
    let file =
        File::open("/proc/thread-self/ns/net").map_err(net_err("open /proc/thread-self/ns/net"))?;
    Ok((file, listener))
}

/// Adds the proxy variables to a sandboxed step's environment, each pair (`HTTP_PROXY` and
/// `http_proxy`, ...) only when the step sets neither spelling: a value from the Dockerfile or a
/// build argument is the user's choice. Runtime only: the variables never reach the image config or
/// a cache key, which the builder computes from the step's own environment.
pub(crate) fn add_proxy_env(env: &mut Vec<(String, String)>) {
    for (upper, lower, value) in [
        ("HTTP_PROXY", "http_proxy", PROXY_URL),
        ("HTTPS_PROXY", "https_proxy", PROXY_URL),
        ("NO_PROXY", "no_proxy", NO_PROXY),
    ] {
        if !env.iter().any(|(k, _)| k == upper || k == lower) {
            env.push((upper.into(), value.into()));
            env.push((lower.into(), value.into()));
        }
    }
}

/// The step's /etc/resolv.conf: the host's resolvers on the host's network. In a private namespace
/// no resolver is reachable; a file without one makes a lookup fail at once (the resolver's default,
/// 127.0.0.1, answers nothing) instead of after a timeout, and the proxy resolves names on the host.
pub(crate) fn resolv_conf(mode: NetworkMode) -> Vec<u8> {
    match mode {
        NetworkMode::Host => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        NetworkMode::Sandbox => b"# forge: no resolver in the step's network; names are resolved \
              by forge's proxy ($HTTP_PROXY)\n"
            .to_vec(),
        NetworkMode::None => b"# forge: this step has no network\n".to_vec(),
    }
}

/// Brings the loopback interface of the current network namespace up (SIOCSIFFLAGS), without `ip`.
pub(crate) fn loopback_up() -> io::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: a plain socket used only for the ioctls below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, closed by OwnedFd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as RawFd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: req is a valid ifreq-sized buffer for both ioctls.
    unsafe {
        if libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as _,
            &mut req as *mut IfReq,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS as _,
            &req as *const IfReq,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn proxy_env_is_added_only_where_the_step_sets_none() {
        let mut env = kv(&[("PATH", "/bin")]);
        add_proxy_env(&mut env);
        assert_eq!(
            env,
            kv(&[
                ("PATH", "/bin"),
                ("HTTP_PROXY", PROXY_URL),
                ("http_proxy", PROXY_URL),
                ("HTTPS_PROXY", PROXY_URL),
                ("https_proxy", PROXY_URL),
                ("NO_PROXY", NO_PROXY),
                ("no_proxy", NO_PROXY),
            ])
        );
        // The user's value wins, in either spelling, and its pair is left alone.
        let mut env = kv(&[("https_proxy", "http://mine:8080"), ("NO_PROXY", "corp")]);
        add_proxy_env(&mut env);
        assert_eq!(
            env,
            kv(&[
                ("https_proxy", "http://mine:8080"),
                ("NO_PROXY", "corp"),
                ("HTTP_PROXY", PROXY_URL),
                ("http_proxy", PROXY_URL),
            ])
        );
    }
}
