//! Resource limits for a step (`forge build --memory 512m --cpus 1.5`), put in place with the
//! kernel's cgroups: the containerd backend hands them to runc in the spec; the embedded backend
//! makes one cgroup per step itself ([`StepCgroup`]) and the step's init joins it before anything
//! of the step runs.
//!
//! Which cgroups forge may write decides whether limits can be had at all. As real root, forge makes
//! `forge/step-<random>` under the memory and cpu hierarchies (cgroup v1) or under the unified one
//! (v2). In a user namespace (rootless), the host's cgroup files belong to the host's root (a v2
//! subtree that systemd delegates to a user is not used yet), so a step with limits fails before
//! it starts with an error that says so and what would work, rather than running without the
//! limit asked for.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A step's limits; the default is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory (and swap: the two together) in bytes.
    pub memory: Option<Bytes>,
    /// CPU time per wall second, in billionths of a CPU (Docker's NanoCPUs): 1.5 CPUs is 1.5e9.
    pub cpus: Option<NanoCpus>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none()
    }
}

/// A size in bytes, read as Docker reads `--memory`: a number with an optional `b`, `k`, `m` or `g`
/// suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

/// The smallest memory limit accepted; Docker's minimum is 6 MiB, below which even a shell dies.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

impl FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = Bytes::parse_size(s)?;
        if bytes.0 < MIN_MEMORY {
            return Err(format!(
                "{s:?} is below the smallest memory limit, 6m (a step's shell needs more)"
            ));
        }
        Ok(bytes)
    }
}

impl Bytes {
    /// A size as Docker reads `--shm-size` and `--memory`, without `--memory`'s minimum.
    pub fn parse_size(s: &str) -> Result<Bytes, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let (digits, unit) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
            _ => (t, ' '),
        };
        let shift = match unit {
            ' ' => 0,
            'k' => 10,
            'm' => 20,
            'g' => 30,
            't' => 40,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use b, k, m, g or t)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 512m, 2g)"))?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| format!("{s:?} is too large"))?;
        Ok(Bytes(bytes))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// CPUs as Docker's `--cpus` reads them: a decimal number of CPUs, at most 3 decimals used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NanoCpus(pub u64);

/// The CFS period forge uses (runc's and Docker's default): the quota is `cpus * PERIOD`.
pub const CPU_PERIOD_US: u64 = 100_000;

impl NanoCpus {
    /// The CFS quota for [`CPU_PERIOD_US`], at least the kernel's minimum of 1 ms.
    pub fn quota_us(self) -> u64 {
        (self.0 * CPU_PERIOD_US / 1_000_000_000).max(1000)
    }
}

impl FromStr for NanoCpus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let bad = || format!("{s:?} is not a number of CPUs (e.g. 0.5, 2)");
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos: u64 = 0;
        for (i, d) in frac.bytes().take(9).enumerate() {
            nanos += u64::from(d - b'0') * 10u64.pow(8 - i as u32);
        }
        let total = whole
            .checked_mul(1_000_000_000)
            .and_then(|w| w.checked_add(nanos))
            .ok_or_else(|| format!("{s:?} is too many CPUs"))?;
        if total < 10_000_000 {
            return Err(format!("{s:?}: the smallest CPU limit is 0.01"));
        }
        Ok(NanoCpus(total))
    }
}

impl fmt::Display for NanoCpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let s = format!("{frac:09}");
            write!(f, "{whole}.{}", s.trim_end_matches('0'))
        }
    }
}

/// One `--ulimit NAME=SOFT[:HARD]` (docker's syntax and names): a resource limit every RUN step's
/// command gets with setrlimit before it runs. Without any, a step keeps forge's own limits, as
/// BuildKit's steps keep buildkitd's (its executor clears the runtime spec's rlimits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    /// Docker's name (`nofile`, `nproc`, ...), one of [`ULIMIT_NAMES`].
    pub name: &'static str,
    /// `u64::MAX` is unlimited (docker's `-1`, the kernel's RLIM_INFINITY).
    pub soft: u64,
    pub hard: u64,
}

/// The type setrlimit(2) takes its resource as: glibc has a type of its own, musl an int.
#[cfg(target_env = "gnu")]
pub type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub type Resource = libc::c_int;

/// Docker's ulimit names, and the kernel's resource and the OCI spec's name for each.
pub const ULIMIT_NAMES: &[(&str, Resource, &str)] = &[
    ("core", libc::RLIMIT_CORE, "RLIMIT_CORE"),
    ("cpu", libc::RLIMIT_CPU, "RLIMIT_CPU"),
    ("data", libc::RLIMIT_DATA, "RLIMIT_DATA"),
    ("fsize", libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
    ("locks", libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
    ("memlock", libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
    ("msgqueue", libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
    ("nice", libc::RLIMIT_NICE, "RLIMIT_NICE"),
    ("nofile", libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
    ("nproc", libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
    ("rss", libc::RLIMIT_RSS, "RLIMIT_RSS"),
    ("rtprio", libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
    ("rttime", libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    ("sigpending", libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
    ("stack", libc::RLIMIT_STACK, "RLIMIT_STACK"),
];

impl Ulimit {
    /// The kernel's resource number.
    pub fn resource(&self) -> Resource {
        ULIMIT_NAMES
            .iter()
            .find(|(n, _, _)| *n == self.name)
            .map(|(_, r, _)| *r)
            .expect("a Ulimit's name is one of ULIMIT_NAMES")
    }

    /// The OCI runtime spec's name (`RLIMIT_NOFILE`).
    pub fn oci_name(&self) -> &'static str {
        ULIMIT_NAMES
            .iter()
            .find(|(n, _, _)| *n == self.name)
            .map(|(_, _, o)| *o)
            .expect("a Ulimit's name is one of ULIMIT_NAMES")
    }
}

impl FromStr for Ulimit {
    type Err = String;
    /// Docker's rules (go-units' ParseUlimit): a hard limit defaults to the soft one, `-1` is
    /// unlimited, and the soft limit may not pass the hard one.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid ulimit argument: {s} (expected NAME=SOFT[:HARD])"))?;
        let name = ULIMIT_NAMES
            .iter()
            .map(|(n, _, _)| *n)
            .find(|n| *n == name)
            .ok_or_else(|| {
                let names: Vec<&str> = ULIMIT_NAMES.iter().map(|(n, _, _)| *n).collect();
                format!("invalid ulimit type: {name} (one of {})", names.join(", "))
            })?;
        let value = |v: &str| -> Result<u64, String> {
            match v.parse::<i64>() {
                Ok(-1) => Ok(u64::MAX),
                Ok(n) if n >= 0 => Ok(n as u64),
                _ => Err(format!(
                    "invalid ulimit value {v:?} in {s} (a number, or -1 for unlimited)"
                )),
            }
        };
        let (soft, hard) = match values.split(':').collect::<Vec<_>>()[..] {
            [soft] => (value(soft)?, value(soft)?),
            [soft, hard] => (value(soft)?, value(hard)?),
            _ => {
                return Err(format!(
                    "too many limit value arguments - {values}, can only have up to two, `soft[:hard]`"
                ));
            }
        };
        if soft > hard {
            return Err(format!(
                "ulimit soft limit must be less than or equal to hard limit: {} > {}",
                Ulimit::show(soft),
                Ulimit::show(hard)
            ));
        }
        Ok(Ulimit { name, soft, hard })
    }
}

impl Ulimit {
    fn show(v: u64) -> String {
        if v == u64::MAX {
            "-1".into()
        } else {
            v.to_string()
        }
    }
}

/// Docker's form, `nofile=1024:2048`, which reads back as the same limit.
impl fmt::Display for Ulimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}:{}",
            self.name,
            Ulimit::show(self.soft),
            Ulimit::show(self.hard)
        )
    }
}

/// Why limits cannot be put in place.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "--memory and --cpus need a cgroup forge may write, and {path} is not writable ({source}). \
         {advice}"
    )]
    NotWritable {
        path: PathBuf,
        source: io::Error,
        advice: &'static str,
    },
    #[error("cannot set up the step's cgroup: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

const ADVICE_V1: &str = "This host has cgroup v1, whose controllers are never delegated to users: \
     run forge as root (the embedded runner outside a user namespace, or --runner containerd).";
const ADVICE_V2: &str = "forge makes step cgroups under /sys/fs/cgroup/forge, which needs root: run \
     forge as root (the embedded runner outside a user namespace, or --runner containerd). A cgroup \
     that systemd delegates to a user is not used yet.";

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: one tree at `root`.
    Unified { root: PathBuf },
    /// cgroup v1: one tree per controller.
    Legacy { memory: PathBuf, cpu: PathBuf },
}

impl Hierarchy {
    /// Reads the layout under `/sys/fs/cgroup`.
    pub fn detect() -> Option<Hierarchy> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Option<Hierarchy> {
        if base.join("cgroup.controllers").is_file() {
            return Some(Hierarchy::Unified {
                root: base.to_path_buf(),
            });
        }
        let memory = base.join("memory");
        // Some hosts mount cpu and cpuacct together as `cpu,cpuacct` with `cpu` a link to it.
        let cpu = base.join("cpu");
        (memory.join("memory.limit_in_bytes").is_file() && cpu.join("cpu.cfs_quota_us").is_file())
            .then_some(Hierarchy::Legacy { memory, cpu })
    }
}

/// A cgroup made for one step of the embedded backend, removed when dropped. The step's init joins
/// it by writing `0` to the descriptors of [`StepCgroup::join_fds`], opened before the fork.
#[derive(Debug)]
pub struct StepCgroup {
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    v2: bool,
    limits: Limits,
}

impl StepCgroup {
    /// Makes `forge/<name>` with `limits` written; `Ok(None)` when there are no limits.
    pub fn create(limits: Limits, name: &str) -> Result<Option<StepCgroup>, LimitError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let Some(h) = Hierarchy::detect() else {
            return Err(LimitError::NotWritable {
                path: "/sys/fs/cgroup".into(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "no cgroup hierarchy with the memory and cpu controllers is mounted",
                ),
                advice: ADVICE_V2,
            });
        };
        Self::create_in(&h, limits, name)
    }

    fn create_in(
        h: &Hierarchy,
        limits: Limits,
        name: &str,
    ) -> Result<Option<StepCgroup>, LimitError> {
        let mut cg = StepCgroup {
            dirs: Vec::new(),
            memory_dir: None,
            v2: matches!(h, Hierarchy::Unified { .. }),
            limits,
        };
        match h {
            Hierarchy::Unified { root } => {
                let parent = root.join("forge");
                make_parent(&parent, ADVICE_V2)?;
                // Controllers reach a child only through its parent's subtree_control.
                for (file, line) in [
                    (root.join("cgroup.subtree_control"), "+memory +cpu"),
                    (parent.join("cgroup.subtree_control"), "+memory +cpu"),
                ] {
                    write(&file, line, ADVICE_V2)?;
                }
                let dir = cg.make(&parent, name, ADVICE_V2)?;
                if let Some(Bytes(b)) = limits.memory {
                    write(&dir.join("memory.max"), &b.to_string(), ADVICE_V2)?;
                    // Swap would let the step go past its limit; absent without swap accounting.
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0", ADVICE_V2)?;
                    }
                }
                if let Some(c) = limits.cpus {
                    write(
                        &dir.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", c.quota_us()),
                        ADVICE_V2,
                    )?;
                }
                cg.memory_dir = Some(dir);
            }
            Hierarchy::Legacy { memory, cpu } => {
                if let Some(Bytes(b)) = limits.memory {
                    let parent = memory.join("forge");
                    make_parent(&parent, ADVICE_V1)?;
                    let dir = cg.make(&parent, name, ADVICE_V1)?;
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &b.to_string(),
                        ADVICE_V1,
                    )?;
                    // memsw (memory + swap) exists only with swap accounting on.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &b.to_string(), ADVICE_V1)?;
                    }
                    cg.memory_dir = Some(dir);
                }
                if let Some(c) = limits.cpus {
                    let parent = cpu.join("forge");
                    make_parent(&parent, ADVICE_V1)?;
                    let dir = cg.make(&parent, name, ADVICE_V1)?;
                    write(
                        &dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                        ADVICE_V1,
                    )?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &c.quota_us().to_string(),
                        ADVICE_V1,
                    )?;
                }
            }
        }
        Ok(Some(cg))
    }

    fn make(
        &mut self,
        parent: &Path,
        name: &str,
        advice: &'static str,
    ) -> Result<PathBuf, LimitError> {
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(|source| failure("create", &dir, source, advice))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// `cgroup.procs` of every directory, open for writing: the step's init writes `0` to each (the
    /// kernel reads 0 as "the writer"), before its mount namespace or its user change.
    pub fn join_fds(&self) -> Result<Vec<OwnedFd>, LimitError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(|source| LimitError::Io {
                        what: "open",
                        path: p,
                        source,
                    })
            })
            .collect()
    }

    /// The memory limit, when the kernel's OOM killer killed a process of the step for passing it.
    pub fn oom_killed(&self) -> Option<Bytes> {
        let dir = self.memory_dir.as_ref()?;
        let limit = self.limits.memory?;
        oom_kills(dir, self.v2).filter(|n| *n > 0).map(|_| limit)
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The step's processes are gone once its init is reaped, but the kernel may still be
        // tearing the last ones down: rmdir answers EBUSY for a few milliseconds.
        for dir in self.dirs.iter().rev() {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// [`StepCgroup::oom_killed`] for a cgroup runc made at `cgroups_path` (the spec's
/// `linux.cgroupsPath`, cgroupfs driver), read after the task exited and before it is deleted.
pub fn runc_oom_killed(cgroups_path: &str, limits: Limits) -> Option<Bytes> {
    let limit = limits.memory?;
    let rel = cgroups_path.trim_start_matches('/');
    let (dir, v2) = match Hierarchy::detect()? {
        Hierarchy::Unified { root } => (root.join(rel), true),
        Hierarchy::Legacy { memory, .. } => (memory.join(rel), false),
    };
    oom_kills(&dir, v2).filter(|n| *n > 0).map(|_| limit)
}

/// How many times the OOM killer acted in the cgroup at `dir`: `oom_kill` of `memory.events` (v2)
/// or of `memory.oom_control` (v1, Linux 4.13 and later).
pub fn oom_kills(dir: &Path, v2: bool) -> Option<u64> {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = fs::read_to_string(dir.join(file)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

fn make_parent(dir: &Path, advice: &'static str) -> Result<(), LimitError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(failure("create", dir, source, advice)),
    }
}

fn write(path: &Path, text: &str, advice: &'static str) -> Result<(), LimitError> {
    fs::write(path, text).map_err(|source| failure("write", path, source, advice))
}

/// A refusal by permissions is the machine's limit, said with `advice`; anything else is an error.
fn failure(what: &'static str, path: &Path, source: io::Error, advice: &'static str) -> LimitError {
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => LimitError::NotWritable {
            path: path.to_path_buf(),
            source,
            advice,
        },
        _ => LimitError::Io {
            what,
            path: path.to_path_buf(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_read_as_docker_reads_them() {
        let u: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!((u.name, u.soft, u.hard), ("nofile", 1024, 2048));
        assert_eq!(u.resource(), libc::RLIMIT_NOFILE);
        assert_eq!(u.oci_name(), "RLIMIT_NOFILE");
        let u: Ulimit = "nproc=512".parse().unwrap();
        assert_eq!(
            (u.soft, u.hard),
            (512, 512),
            "the hard limit defaults to the soft"
        );
        let u: Ulimit = "core=0:-1".parse().unwrap();
        assert_eq!((u.soft, u.hard), (0, u64::MAX));
        assert_eq!(u.to_string(), "core=0:-1");
        assert_eq!(u.to_string().parse::<Ulimit>(), Ok(u));
        for (bad, why) in [
            ("nofile", "expected NAME=SOFT[:HARD]"),
            ("files=10", "invalid ulimit type: files"),
            (
                "nofile=2048:1024",
                "soft limit must be less than or equal to hard limit",
            ),
            ("nofile=1:2:3", "too many limit value arguments"),
            ("nofile=ten", "invalid ulimit value"),
            ("nofile=-2", "invalid ulimit value"),
        ] {
            let e = bad.parse::<Ulimit>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn shm_sizes_have_no_memory_minimum() {
        assert_eq!(Bytes::parse_size("1m"), Ok(Bytes(1 << 20)));
        assert_eq!(Bytes::parse_size("128m"), Ok(Bytes(128 << 20)));
        assert!("1m".parse::<Bytes>().is_err(), "--memory keeps its minimum");
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!("512m".parse::<Bytes>(), Ok(Bytes(512 << 20)));
        assert_eq!("2G".parse::<Bytes>(), Ok(Bytes(2 << 30)));
        assert_eq!("8388608".parse::<Bytes>(), Ok(Bytes(8 << 20)));
        assert_eq!("64mb".parse::<Bytes>(), Ok(Bytes(64 << 20)));
        assert!("1k".parse::<Bytes>().unwrap_err().contains("smallest"));
        assert!("12x".parse::<Bytes>().unwrap_err().contains("unknown unit"));
        assert!("m".parse::<Bytes>().unwrap_err().contains("not a size"));
        assert!(
            "99999999999g"
                .parse::<Bytes>()
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(Bytes(512 << 20).to_string(), "512 MiB");
    }

    #[test]
    fn cpus_read_as_docker_reads_them() {
        assert_eq!("1.5".parse::<NanoCpus>(), Ok(NanoCpus(1_500_000_000)));
        assert_eq!(".25".parse::<NanoCpus>(), Ok(NanoCpus(250_000_000)));
        assert_eq!("2".parse::<NanoCpus>(), Ok(NanoCpus(2_000_000_000)));
        assert_eq!(NanoCpus(1_500_000_000).quota_us(), 150_000);
        assert_eq!(NanoCpus(10_000_000).quota_us(), 1000);
        assert_eq!(NanoCpus(1_250_000_000).to_string(), "1.25");
        for bad in ["", ".", "-1", "1.2.3", "one", "0.001"] {
            assert!(bad.parse::<NanoCpus>().is_err(), "{bad:?}");
        }
    }

    /// A fake cgroup v2 tree in a temporary directory: the files the kernel would have.
    #[test]
    fn a_v2_step_cgroup_writes_its_limits_and_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let h = Hierarchy::detect_at(root).unwrap();
        assert_eq!(h, Hierarchy::Unified { root: root.into() });
        // The kernel makes these files in a new cgroup; a plain directory does not, so the
        // parent's is made first and the step's written by create_in itself.
        fs::create_dir(root.join("forge")).unwrap();
        fs::write(root.join("forge/cgroup.subtree_control"), "").unwrap();
        let limits = Limits {
            memory: Some(Bytes(64 << 20)),
            cpus: Some(NanoCpus(500_000_000)),
        };
        let cg = StepCgroup::create_in(&h, limits, "step-1")
            .unwrap()
            .unwrap();
        let dir = root.join("forge/step-1");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu"
        );
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_killed(), Some(Bytes(64 << 20)));
        // A real cgroup directory holds only kernel files, which rmdir ignores; here they are
        // plain files, so clear them to see the drop remove the directory.
        for f in ["memory.max", "cpu.max", "memory.events"] {
            fs::remove_file(dir.join(f)).unwrap();
        }
        drop(cg);
        assert!(!dir.exists());
    }

    #[test]
    fn a_v1_step_cgroup_writes_memory_and_cpu_in_their_own_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        for (d, f) in [
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
        ] {
            fs::create_dir(base.join(d)).unwrap();
            fs::write(base.join(d).join(f), "").unwrap();
        }
        let h = Hierarchy::detect_at(base).unwrap();
        let limits = Limits {
            memory: Some(Bytes(32 << 20)),
            cpus: Some(NanoCpus(2_000_000_000)),
        };
        let cg = StepCgroup::create_in(&h, limits, "s").unwrap().unwrap();
        let mem = base.join("memory/forge/s");
        let cpu = base.join("cpu/forge/s");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "33554432"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "200000"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
        assert_eq!(cg.oom_killed(), None);
        fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_killed(), Some(Bytes(32 << 20)));
    }

    #[test]
    fn no_limits_make_no_cgroup() {
        assert!(
            StepCgroup::create(Limits::default(), "x")
                .unwrap()
                .is_none()
        );
    }
}
