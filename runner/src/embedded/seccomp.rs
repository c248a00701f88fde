//! The embedded backend's seccomp: compiles [`crate::confine::seccomp`]'s profile to BPF for this
//! machine with seccompiler before the fork, and installs it in the step's command process as the
//! last thing before execve (after setuid and capset, which the profile would otherwise have to allow
//! the step too).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{Value, json};

use crate::confine::seccomp::{Action, Arg, Cmp, Profile};

/// A profile as BPF programs, installed in order. The kernel runs every installed program and takes
/// the strictest result, so one program allows what the profile names (everything else fails with
/// the default errno) and one per errno fails what a rule gives that errno (everything else passes).
/// An errno rule's names are in the first program too: there they must not take the default errno.
#[derive(Debug, Clone)]
pub(crate) struct Filters(Vec<BpfProgram>);

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        format!(
            "seccomp: no filter compiler for {} (seccompiler supports x86_64, aarch64 and riscv64)",
            std::env::consts::ARCH
        )
    })
}

fn compile_json(filters: &Value, arch: TargetArch) -> Result<BTreeMap<String, BpfProgram>, String> {
    let text = filters.to_string();
    seccompiler::compile_from_json(text.as_bytes(), arch)
        .map(|m| m.into_iter().collect())
        .map_err(|e| format!("seccomp: compile the default profile: {e}"))
}

/// Whether this architecture has a system call of that name (the profile also names other ABIs',
/// such as `chown32`; runc skips those the same way).
fn known(name: &str, arch: TargetArch) -> bool {
    let probe = json!({"probe": {
        "mismatch_action": "allow",
        "match_action": {"errno": 1},
        "filter": [{"syscall": name}],
    }});
    compile_json(&probe, arch).is_ok()
}

fn condition(a: &Arg) -> Value {
    let (op, val) = match a.cmp {
        Cmp::Eq(v) => (json!("eq"), v),
        Cmp::Ne(v) => (json!("ne"), v),
        Cmp::MaskedEq { mask, value } => (json!({"masked_eq": mask}), value),
    };
    json!({"index": a.index, "type": "dword", "op": op, "val": val})
}

/// The names of [`crate::confine::seccomp::DEFAULT`] that seccompiler's table for an architecture
/// lacks (other ABIs' calls, such as `chown32`, and calls the architecture never had), which the
/// filters leave out. [`known`] finds them by compiling each name on its own, one compile per name
/// of the profile (4-5 ms of CPU on x86_64 here, most of it seccompiler building its table anew
/// each time); with them written here the profile compiles in one pass. The test
/// `the_unknown_names_are_what_the_probes_find` keeps them true for the seccompiler in Cargo.lock,
/// on every architecture it compiles for; a profile with a name left out of these lists fails the
/// one pass and is compiled by probing (see [`compile`]).
fn unknown_names(arch: TargetArch) -> &'static [&'static [&'static str]] {
    match arch {
        TargetArch::x86_64 => &[OTHER_ABIS],
        TargetArch::aarch64 => &[OTHER_ABIS, NOT_GENERIC, ARM32],
        TargetArch::riscv64 => &[OTHER_ABIS, NOT_GENERIC, NOT_RISCV64],
    }
}

/// Whether `name` is among the names [`unknown_names`] lists for `arch`.
fn listed_unknown(name: &str, arch: TargetArch) -> bool {
    unknown_names(arch)
        .iter()
        .any(|names| names.contains(&name))
}

/// Calls of 32-bit ABIs (`chown32`, `_llseek`, `socketcall`, ...): in none of the three tables.
const OTHER_ABIS: &[&str] = &[
    "_llseek",
    "_newselect",
    "chown32",
    "clock_adjtime64",
    "clock_getres_time64",
    "clock_gettime64",
    "clock_nanosleep_time64",
    "fadvise64_64",
    "fchown32",
    "fcntl64",
    "fstat64",
    "fstatat64",
    "fstatfs64",
    "ftruncate64",
    "futex_time64",
    "getegid32",
    "geteuid32",
    "getgid32",
    "getgroups32",
    "getresgid32",
    "getresuid32",
    "getuid32",
    "io_pgetevents_time64",
    "ipc",
    "lchown32",
    "lstat64",
    "mmap2",
    "mq_timedreceive_time64",
    "mq_timedsend_time64",
    "ppoll_time64",
    "pselect6_time64",
    "recv",
    "recvmmsg_time64",
    "rt_sigtimedwait_time64",
    "sched_rr_get_interval_time64",
    "semtimedop_time64",
    "send",
    "sendfile64",
    "setfsgid32",
    "setfsuid32",
    "setgid32",
    "setgroups32",
    "setregid32",
    "setresgid32",
    "setresuid32",
    "setreuid32",
    "setuid32",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "stat64",
    "statfs64",
    "timer_gettime64",
    "timer_settime64",
    "timerfd_gettime64",
    "timerfd_settime64",
    "truncate64",
    "ugetrlimit",
    "utimensat_time64",
    "waitpid",
];

/// Calls x86_64 has that the generic table of aarch64 and riscv64 leaves out: older forms (`open`,
/// `fork`, `stat`, ...; `openat`, `clone`, `fstatat` do their work there) and x86's own (such as
/// `set_thread_area`).
const NOT_GENERIC: &[&str] = &[
    "access",
    "alarm",
    "chmod",
    "chown",
    "creat",
    "dup2",
    "epoll_create",
    "epoll_ctl_old",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "fork",
    "futimesat",
    "get_thread_area",
    "getdents",
    "getpgrp",
    "inotify_init",
    "lchown",
    "link",
    "lstat",
    "mkdir",
    "mknod",
    "open",
    "pause",
    "pipe",
    "poll",
    "readlink",
    "rename",
    "rmdir",
    "select",
    "set_thread_area",
    "signalfd",
    "stat",
    "symlink",
    "time",
    "unlink",
    "utime",
    "utimes",
    "vfork",
];

/// 32-bit Arm's own calls, which aarch64 lacks.
const ARM32: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "sync_file_range2",
];

/// What riscv64 lacks besides (`renameat2` does its work).
const NOT_RISCV64: &[&str] = &["renameat"];

fn rules<'a>(
    rules: impl Iterator<Item = &'a crate::confine::seccomp::Rule>,
    keep: &dyn Fn(&str) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    for r in rules {
        for name in r.names.iter().filter(|n| keep(n)) {
            let mut rule = json!({"syscall": name});
            if !r.args.is_empty() {
                rule["args"] = r.args.iter().map(condition).collect();
            }
            out.push(rule);
        }
    }
    out
}

/// Compiles `profile` for this machine: in one pass without the names listed as unknown there
/// ([`unknown_names`]), or, when that fails on a name the list lacks, with each name probed.
pub(crate) fn compile(profile: &Profile) -> Result<Filters, String> {
    let arch = arch()?;
    compile_keeping(profile, arch, &|name| !listed_unknown(name, arch))
        .or_else(|_| compile_keeping(profile, arch, &|name| known(name, arch)))
}

/// Compiles `profile` for `arch` with the names `keep` keeps.
fn compile_keeping(
    profile: &Profile,
    arch: TargetArch,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Filters, String> {
    let host: Vec<_> = profile.host_rules().collect();
    // Errno rules count as allowed in the first program, unconditionally: the later ones decide.
    let allowed = host.iter().map(|r| match r.action {
        Action::Allow => **r,
        Action::Errno(_) => crate::confine::seccomp::Rule { args: &[], ..**r },
    });
    let mut filters = serde_json::Map::new();
    filters.insert(
        "0-allow".into(),
        json!({
            "mismatch_action": {"errno": profile.default_errno},
            "match_action": "allow",
            "filter": rules(allowed.collect::<Vec<_>>().iter(), keep),
        }),
    );
    let mut errnos: Vec<u32> = host
        .iter()
        .filter_map(|r| match r.action {
            Action::Errno(e) => Some(e),
            Action::Allow => None,
        })
        .collect();
    errnos.sort_unstable();
    errnos.dedup();
    for errno in errnos {
        let these = host
            .iter()
            .copied()
            .filter(|r| r.action == Action::Errno(errno));
        filters.insert(
            format!("1-errno-{errno}"),
            json!({
                "mismatch_action": "allow",
                "match_action": {"errno": errno},
                "filter": rules(these, keep),
            }),
        );
    }
    // BTreeMap order: the allow program first.
    Ok(Filters(
        compile_json(&Value::Object(filters), arch)?
            .into_values()
            .collect(),
    ))
}

/// Docker's default profile for this machine, compiled once per process.
pub(crate) fn default_filters() -> Result<&'static Filters, String> {
    static DEFAULT: OnceLock<Result<Filters, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| compile(&crate::confine::seccomp::DEFAULT))
        .as_ref()
        .map_err(Clone::clone)
}

/// Installs the filters in the calling process (sets no_new_privs too). Safe after fork: no
/// allocation on success.
pub(crate) fn install(filters: &Filters) -> Result<(), seccompiler::Error> {
    for f in &filters.0 {
        seccompiler::apply_filter(f)?;
    }
    Ok(())
}

/// Installs the programs without setting no_new_privs (which seccompiler's `apply_filter` does),
/// so setuid binaries keep working in the step, as runc does when no_new_privs is not asked for.
/// The kernel then requires CAP_SYS_ADMIN in the current user namespace: call it while still
/// (namespace) root, before switching to the step's user.
pub(crate) fn install_privileged(filters: &Filters) -> std::io::Result<()> {
    for f in &filters.0 {
        let prog = libc::sock_fprog {
            len: u16::try_from(f.len()).map_err(|_| std::io::Error::other("filter too long"))?,
            // seccompiler's sock_filter has the kernel's layout (it is what apply_filter passes).
            filter: f.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: a valid sock_fprog whose program outlives the call; the kernel copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_for_this_machine_without_names_of_other_abis() {
        let Ok(arch) = arch() else { return };
        let filters = default_filters().unwrap();
        assert_eq!(filters.0.len(), 2, "the allow program and the ENOSYS one");
        assert!(known("openat", arch));
        assert!(!known("chown32", arch) || std::env::consts::ARCH != "x86_64");
        assert!(!known("no_such_call", arch));
    }

    #[test]
    fn the_unknown_names_are_what_the_probes_find() {
        let (mut listed, mut probed) = (BTreeMap::new(), BTreeMap::new());
        for arch_name in ["x86_64", "aarch64", "riscv64"] {
            let arch = TargetArch::try_from(arch_name).unwrap();
            let mut names: Vec<&str> = crate::confine::seccomp::DEFAULT
                .rules
                .iter()
                .filter(|r| r.arch.is_none_or(|a| a == arch_name))
                .flat_map(|r| r.names.iter().copied())
                .filter(|name| !known(name, arch))
                .collect();
            names.sort_unstable();
            names.dedup();
            probed.insert(arch_name, names);
            let mut names = unknown_names(arch).concat();
            names.sort_unstable();
            listed.insert(arch_name, names);
        }
        assert_eq!(
            listed, probed,
            "the names seccompiler lacks, by architecture"
        );
    }

    #[test]
    fn one_pass_compiles_what_probing_each_name_compiles() {
        let Ok(arch) = arch() else { return };
        let profile = &crate::confine::seccomp::DEFAULT;
        let probed = compile_keeping(profile, arch, &|name| known(name, arch)).unwrap();
        let one_pass = compile_keeping(profile, arch, &|name| !listed_unknown(name, arch)).unwrap();
        assert_eq!(one_pass.0, probed.0);
        assert_eq!(compile(profile).unwrap().0, probed.0);
        // A name no list has sends the one pass to the probes, which leave it out.
        use crate::confine::seccomp::Rule;
        const ODD: &[Rule] = &[Rule {
            names: &["openat", "no_such_call"],
            action: Action::Allow,
            args: &[],
            arch: None,
        }];
        const OPENAT: &[Rule] = &[Rule {
            names: &["openat"],
            action: Action::Allow,
            args: &[],
            arch: None,
        }];
        let compiled = compile(&Profile {
            rules: ODD,
            ..*profile
        })
        .unwrap();
        let only_openat = Profile {
            rules: OPENAT,
            ..*profile
        };
        assert_eq!(compiled.0, compile(&only_openat).unwrap().0);
    }
}
