//! The OCI runtime spec a step's container gets: Docker's defaults for a non-privileged container
//! (capabilities, the default seccomp profile, masked and read-only /proc paths from
//! [`crate::confine`], /dev, /sys read-only, a device cgroup that allows only runc's standard nodes),
//! the step's process, user and hostname, and the step's private network namespace
//! ([`crate::network`]) by path unless it runs on the host's network. An insecure step (`RUN --security=insecure`) gets every capability and no filter or masks.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount as OciMount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use super::ContainerdError;
use crate::confine::seccomp::{Action, Cmp, Profile};
use crate::confine::{MASKED_PATHS, READONLY_PATHS, Security};
use crate::user::ResolvedUser;

/// The PATH a step gets when its environment has none (Docker's and BuildKit's default).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set for containers that are not `--privileged`.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What the spec is made of; everything host-side is already prepared.
pub(crate) struct SpecInput<'a> {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub user: &'a ResolvedUser,
    pub hostname: &'a str,
    /// The network namespace to join (made and held by forge); `None`: the host's network.
    pub netns: Option<PathBuf>,
    pub security: Security,
    /// Mounts after the standard ones (generated /etc files, then the step's own mounts), in order.
    pub mounts: Vec<OciMount>,
    pub cgroups_path: String,
    /// `--memory` / `--cpus`, which runc writes into the step's cgroup (v1 or v2).
    pub limits: crate::limits::Limits,
    /// `--ulimit`: the process's rlimits, which runc sets before exec.
    pub ulimits: &'a [crate::limits::Ulimit],
    /// The size of /dev/shm in bytes.
    pub shm_size: u64,
}

/// An OCI mount. A bind's source is made absolute first: runc resolves a relative one inside
/// the task's bundle directory (`--mount=type=bind` of a context given as `.` showed the step
/// its own config.json and rootfs).
pub(crate) fn mount(
    destination: &str,
    kind: &str,
    source: &str,
    options: &[&str],
) -> Result<OciMount, ContainerdError> {
    let source = if kind == "bind" && !source.starts_with('/') {
        std::path::absolute(source)
            .map_err(|e| ContainerdError::Spec(format!("mount {destination}: {source}: {e}")))?
            .to_string_lossy()
            .into_owned()
    } else {
        source.to_string()
    };
    MountBuilder::default()
        .destination(destination)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| ContainerdError::Spec(format!("mount {destination}: {e}")))
}

/// Docker's and BuildKit's (containerd's default spec), /dev/shm sized by `--shm-size`.
fn standard_mounts(shm_size: u64) -> Result<Vec<OciMount>, ContainerdError> {
    let shm_size = format!("size={shm_size}");
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

/// Builds the spec; the rootfs is the bundle's `rootfs` directory, where the shim mounts the task's
/// rootfs mounts. No rlimits but `--ulimit`'s (BuildKit clears the default spec's as well): raising
/// RLIMIT_NOFILE above the shim's own hard limit fails the start (as it does where containerd itself
/// runs in a container), so the step inherits the shim's limits.
pub(crate) fn build(input: SpecInput<'_>) -> Result<Spec, ContainerdError> {
    let err = |what: &str, e: oci_spec::OciSpecError| ContainerdError::Spec(format!("{what}: {e}"));
    let caps = match input.security {
        Security::Sandbox => DEFAULT_CAPABILITIES.into_iter().collect(),
        Security::Insecure => all_capabilities(),
    };
    // Nothing inheritable or ambient, as runc's and BuildKit's specs since CVE-2022-24769 (left
    // unset, oci-spec's defaults would put three capabilities in both, and a non-root step would
    // keep them as ambient ones).
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(|e| err("capabilities", e))?;
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()
        .map_err(|e| err("user", e))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(input.argv)
        .env(input.env)
        .cwd(input.cwd)
        .capabilities(capabilities)
        // As BuildKit: setuid binaries (sudo) work in steps; runc installs the seccomp filter
        // before it drops privileges when no_new_privs is off.
        .no_new_privileges(false)
        .rlimits(
            input
                .ulimits
                .iter()
                .map(|u| {
                    PosixRlimitBuilder::default()
                        .typ(rlimit_type(u))
                        .soft(u.soft)
                        .hard(u.hard)
                        .build()
                        .map_err(|e| err("rlimit", e))
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
        .build()
        .map_err(|e| err("process", e))?;

    let mut namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(|e| err("namespace", e))
    })
    .collect::<Result<Vec<_>, _>>()?;
    // Host networking is the absence of a network namespace. A private one is forge's, with `lo` up
    // and the proxy's listener in it, so that both backends give a step the same network.
    if let Some(path) = input.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
                .map_err(|e| err("namespace", e))?,
        );
    }
    // Deny every device, then runc appends its default allow list (null, zero, full, tty, random...).
    let devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(|e| err("device rule", e))?,
    ];
    let mut resources = LinuxResourcesBuilder::default().devices(devices);
    if let Some(crate::limits::Bytes(bytes)) = input.limits.memory {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // Swap equal to the limit: memory and swap together may not pass it.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .map_err(|e| err("memory limit", e))?,
        );
    }
    if let Some(cpus) = input.limits.cpus {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(i64::try_from(cpus.quota_us()).unwrap_or(i64::MAX))
                .period(crate::limits::CPU_PERIOD_US)
                .build()
                .map_err(|e| err("cpu limit", e))?,
        );
    }
    let resources = resources.build().map_err(|e| err("resources", e))?;
    let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(input.cgroups_path));
    // Set either way: oci-spec's builder starts from its own default lists.
    linux = match input.security {
        Security::Sandbox => linux
            .masked_paths(strings(MASKED_PATHS))
            .readonly_paths(strings(READONLY_PATHS))
            .seccomp(seccomp(&crate::confine::seccomp::DEFAULT)?),
        Security::Insecure => linux.masked_paths(vec![]).readonly_paths(vec![]),
    };
    let linux = linux.build().map_err(|e| err("linux", e))?;

    let mut mounts = standard_mounts(input.shm_size)?;
    mounts.extend(input.mounts);
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(false)
        .build()
        .map_err(|e| err("root", e))?;
    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(root)
        .hostname(input.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(HashMap::new())
        .build()
        .map_err(|e| err("spec", e))
}

fn rlimit_type(u: &crate::limits::Ulimit) -> PosixRlimitType {
    match u.resource() {
        libc::RLIMIT_CORE => PosixRlimitType::RlimitCore,
        libc::RLIMIT_CPU => PosixRlimitType::RlimitCpu,
        libc::RLIMIT_DATA => PosixRlimitType::RlimitData,
        libc::RLIMIT_FSIZE => PosixRlimitType::RlimitFsize,
        libc::RLIMIT_LOCKS => PosixRlimitType::RlimitLocks,
        libc::RLIMIT_MEMLOCK => PosixRlimitType::RlimitMemlock,
        libc::RLIMIT_MSGQUEUE => PosixRlimitType::RlimitMsgqueue,
        libc::RLIMIT_NICE => PosixRlimitType::RlimitNice,
        libc::RLIMIT_NOFILE => PosixRlimitType::RlimitNofile,
        libc::RLIMIT_NPROC => PosixRlimitType::RlimitNproc,
        libc::RLIMIT_RSS => PosixRlimitType::RlimitRss,
        libc::RLIMIT_RTPRIO => PosixRlimitType::RlimitRtprio,
        libc::RLIMIT_RTTIME => PosixRlimitType::RlimitRttime,
        libc::RLIMIT_SIGPENDING => PosixRlimitType::RlimitSigpending,
        _ => PosixRlimitType::RlimitStack,
    }
}

/// The capabilities oci-spec names, indexed by the kernel's numbers (capability.h).
const BY_NUMBER: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// An insecure step's capabilities: those in forge's own bounding set (runc fails the start when asked
/// for one its shim lacks, as where forge and containerd run in a container).
fn all_capabilities() -> std::collections::HashSet<Capability> {
    crate::confine::bounding_set()
        .into_iter()
        .filter_map(|n| BY_NUMBER.get(n as usize).copied())
        .collect()
}

/// The seccomp architectures of this machine and the ABIs it also runs, as Docker lists them.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// `profile` as the OCI spec's `linux.seccomp`, which runc compiles with libseccomp.
pub(crate) fn seccomp(profile: &Profile) -> Result<LinuxSeccomp, ContainerdError> {
    let err = |e: oci_spec::OciSpecError| ContainerdError::Spec(format!("seccomp: {e}"));
    let mut syscalls = Vec::new();
    for rule in profile.host_rules() {
        let mut args = Vec::new();
        for a in rule.args {
            let (op, value, value_two) = match a.cmp {
                Cmp::Eq(v) => (LinuxSeccompOperator::ScmpCmpEq, v, 0),
                Cmp::Ne(v) => (LinuxSeccompOperator::ScmpCmpNe, v, 0),
                Cmp::MaskedEq { mask, value } => {
                    (LinuxSeccompOperator::ScmpCmpMaskedEq, mask, value)
                }
            };
            args.push(
                LinuxSeccompArgBuilder::default()
                    .index(a.index as usize)
                    .value(value)
                    .value_two(value_two)
                    .op(op)
                    .build()
                    .map_err(err)?,
            );
        }
        let mut syscall = LinuxSyscallBuilder::default()
            .names(rule.names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        syscall = match rule.action {
            Action::Allow => syscall.action(LinuxSeccompAction::ScmpActAllow),
            Action::Errno(e) => syscall
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(e),
        };
        if !args.is_empty() {
            syscall = syscall.args(args);
        }
        syscalls.push(syscall.build().map_err(err)?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(profile.default_errno)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(err)
}

/// `KEY=value` strings with later keys overriding earlier ones in place, PATH defaulted and HOME taken
/// from the user's passwd entry when the step sets none (as Docker does).
pub(crate) fn environment(
    env: &[(String, String)],
    secret_env: &[(String, String)],
    home: &str,
) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (key, value) in env.iter().chain(secret_env) {
        match merged.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => merged.push((key.clone(), value.clone())),
        }
    }
    if !merged.iter().any(|(k, _)| k == "PATH") {
        merged.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !merged.iter().any(|(k, _)| k == "HOME") {
        merged.push(("HOME".into(), home.into()));
    }
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults_path_and_later_keys_win() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
            ("A".to_string(), "3".to_string()),
        ];
        let secret = vec![("TOKEN".to_string(), "s3cret".to_string())];
        assert_eq!(
            environment(&env, &secret, "/root"),
            vec![
                format!("PATH={DEFAULT_PATH}"),
                "A=3".into(),
                "B=2".into(),
                "TOKEN=s3cret".into(),
                "HOME=/root".into(),
            ]
        );
        let given = vec![
            ("PATH".to_string(), "/x".to_string()),
            ("HOME".to_string(), "/h".to_string()),
        ];
        assert_eq!(
            environment(&given, &[], "/root"),
            vec!["PATH=/x".to_string(), "HOME=/h".to_string()]
        );
    }

    /// The spec of `true` in /work for `user`, as JSON.
    fn spec_json(
        user: &ResolvedUser,
        netns: Option<PathBuf>,
        security: Security,
    ) -> serde_json::Value {
        spec_json_with(user, netns, security, &[], crate::DEFAULT_SHM_SIZE)
    }

    fn spec_json_with(
        user: &ResolvedUser,
        netns: Option<PathBuf>,
        security: Security,
        ulimits: &[crate::Ulimit],
        shm_size: u64,
    ) -> serde_json::Value {
        let spec = build(SpecInput {
            argv: vec!["true".into()],
            env: vec![],
            cwd: "/work".into(),
            user,
            hostname: crate::DEFAULT_HOSTNAME,
            netns,
            security,
            mounts: vec![],
            cgroups_path: "/forge/x".into(),
            limits: Default::default(),
            ulimits,
            shm_size,
        })
        .unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    /// BuildKit's sandbox: no rlimits unless `--ulimit` (oci-spec's default, nofile 1024, is not
    /// kept), /dev/shm of 64 MiB unless `--shm-size`, /dev/mqueue, hostname buildkitsandbox.
    #[test]
    fn rlimits_shm_and_hostname_as_buildkit_sets_them() {
        let user = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        };
        let shm_options = |v: &serde_json::Value| {
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/dev/shm")
                .map(|m| m["options"].clone())
                .unwrap()
        };
        let plain = spec_json(&user, None, Security::Sandbox);
        assert_eq!(plain["hostname"], "buildkitsandbox");
        let rlimits = plain["process"].get("rlimits");
        assert!(
            rlimits.is_none_or(|r| r.as_array().is_some_and(|a| a.is_empty())),
            "{rlimits:?}"
        );
        assert!(
            shm_options(&plain)
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("size=67108864"))
        );
        assert!(
            plain["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/dev/mqueue" && m["type"] == "mqueue")
        );

        let ulimits: Vec<crate::Ulimit> = ["nofile=1024:2048", "nproc=-1"]
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        let limited = spec_json_with(&user, None, Security::Sandbox, &ulimits, 128 << 20);
        assert_eq!(
            limited["process"]["rlimits"],
            serde_json::json!([
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048},
                {"type": "RLIMIT_NPROC", "soft": u64::MAX, "hard": u64::MAX},
            ])
        );
        assert!(
            shm_options(&limited)
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("size=134217728"))
        );
    }

    #[test]
    fn a_private_network_namespace_is_joined_by_path() {
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![2000],
            home: "/home/tester".into(),
        };
        let spec_for = |netns| spec_json(&user, netns, Security::Sandbox);
        let netns_path = |v: &serde_json::Value| {
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["type"] == "network")
                .map(|n| n["path"].clone())
        };
        let none = spec_for(Some("/proc/1/fd/7".into()));
        let host = spec_for(None);
        assert_eq!(netns_path(&none), Some(serde_json::json!("/proc/1/fd/7")));
        assert_eq!(netns_path(&host), None);
        assert_eq!(
            none["process"]["user"]["additionalGids"],
            serde_json::json!([2000])
        );
        assert_eq!(none["process"]["noNewPrivileges"], false);
        assert_eq!(none["root"]["path"], "rootfs");
        assert_eq!(
            none["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert!(
            none["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("CAP_CHOWN"))
        );
    }

    #[test]
    fn a_sandboxed_step_gets_the_default_profile_and_masks_an_insecure_one_none() {
        let user = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        };
        let spec_for = |security| spec_json(&user, None, security);
        let sandbox = spec_for(Security::Sandbox);
        let seccomp = &sandbox["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        let syscalls = seccomp["syscalls"].as_array().unwrap();
        let rule_for = |name: &str| {
            syscalls
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .collect::<Vec<_>>()
        };
        assert_eq!(rule_for("clone3")[0]["errnoRet"], 38);
        assert_eq!(rule_for("clone")[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(rule_for("clone")[0]["args"][0]["value"], 0x7E02_0000u64);
        assert_eq!(rule_for("personality").len(), 5);
        assert!(rule_for("unshare").is_empty() && rule_for("mount").is_empty());
        let listed = |key: &str| sandbox["linux"][key].as_array().unwrap().len();
        assert_eq!(listed("maskedPaths"), MASKED_PATHS.len());
        assert_eq!(listed("readonlyPaths"), READONLY_PATHS.len());

        let insecure = spec_for(Security::Insecure);
        assert!(insecure["linux"].get("seccomp").is_none());
        for key in ["maskedPaths", "readonlyPaths"] {
            let listed = insecure["linux"].get(key).and_then(|v| v.as_array());
            assert!(listed.is_none_or(|l| l.is_empty()), "{key}: {listed:?}");
        }
        assert!(
            insecure["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("CAP_SYS_ADMIN"))
        );
    }
}
