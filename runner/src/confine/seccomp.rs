//! Docker's default seccomp profile (moby `profiles/seccomp/default.json`), resolved for the capability
//! set every step gets (Docker's default set: no CAP_SYS_ADMIN, CAP_SYS_PTRACE, ...; CAP_SYS_CHROOT
//! is in it, so `chroot` is allowed). Kept here once as data: the embedded backend compiles it to BPF
//! (`embedded/seccomp.rs`), the containerd backend writes it into the OCI spec's `linux.seccomp`.
//!
//! Semantics, as in an OCI profile: a call is denied with [`Profile::default_errno`] unless a rule names
//! it; a rule matches when all its argument comparisons hold; several rules for one name match when
//! any of them does. Names the running architecture does not have are ignored, as runc ignores them.

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail the call with this errno.
    Errno(u32),
}

/// A comparison of one argument of the call (its low 32 bits: every argument the profile tests is an
/// `int` or flags that fit in one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq(u64),
    Ne(u64),
    /// `arg & mask == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// Which argument, from 0.
    pub index: u8,
    pub cmp: Cmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub names: &'static [&'static str],
    pub action: Action,
    /// All must hold; empty matches every call of these names.
    pub args: &'static [Arg],
    /// Only on this architecture (`std::env::consts::ARCH`); `None` on every one.
    pub arch: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The errno of a call no rule names.
    pub default_errno: u32,
    pub rules: &'static [Rule],
}

impl Profile {
    /// The rules that apply on the machine this runs on.
    pub fn host_rules(&self) -> impl Iterator<Item = &'static Rule> + use<> {
        self.rules
            .iter()
            .filter(|r| r.arch.is_none_or(|a| a == std::env::consts::ARCH))
    }
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AF_VSOCK: u64 = 40;
/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET: `clone` may not make namespaces without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        args: &[],
        arch: None,
    }
}

const fn allow_on(arch: &'static str, names: &'static [&'static str]) -> Rule {
    Rule {
        arch: Some(arch),
        ..allow(names)
    }
}

const fn allow_if(names: &'static [&'static str], args: &'static [Arg]) -> Rule {
    Rule {
        args,
        ..allow(names)
    }
}

/// Calls any container may make.
const ALWAYS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Docker allows these from kernel 4.8 on, whose seccomp checks run after ptrace's.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // CAP_SYS_CHROOT is in the default capability set.
    "chroot",
];

/// Docker's default profile for its default capability set.
pub const DEFAULT: Profile = Profile {
    default_errno: EPERM,
    rules: &[
        allow(ALWAYS),
        // Every socket family but vsock, which reaches the hypervisor's host.
        allow_if(
            &["socket"],
            &[Arg {
                index: 0,
                cmp: Cmp::Ne(AF_VSOCK),
            }],
        ),
        // The execution domains a program may ask for: Linux, its 32-bit flavour, ADDR_NO_RANDOMIZE
        // with either, and the query.
        allow_if(
            &["personality"],
            &[Arg {
                index: 0,
                cmp: Cmp::Eq(0),
            }],
        ),
        allow_if(
            &["personality"],
            &[Arg {
                index: 0,
                cmp: Cmp::Eq(8),
            }],
        ),
        allow_if(
            &["personality"],
            &[Arg {
                index: 0,
                cmp: Cmp::Eq(0x20000),
            }],
        ),
        allow_if(
            &["personality"],
            &[Arg {
                index: 0,
                cmp: Cmp::Eq(0x20008),
            }],
        ),
        allow_if(
            &["personality"],
            &[Arg {
                index: 0,
                cmp: Cmp::Eq(0xffff_ffff),
            }],
        ),
        allow_on("x86_64", &["arch_prctl", "modify_ldt"]),
        allow_on(
            "aarch64",
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
        ),
        allow_on("riscv64", &["riscv_flush_icache"]),
        // Threads and processes, but no new namespaces (s390's argument order is not supported).
        allow_if(
            &["clone"],
            &[Arg {
                index: 0,
                cmp: Cmp::MaskedEq {
                    mask: CLONE_NAMESPACE_FLAGS,
                    value: 0,
                },
            }],
        ),
        // clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone.
        Rule {
            names: &["clone3"],
            action: Action::Errno(ENOSYS),
            args: &[],
            arch: None,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_unconditionally(name: &str) -> bool {
        DEFAULT
            .host_rules()
            .any(|r| r.action == Action::Allow && r.args.is_empty() && r.names.contains(&name))
    }

    #[test]
    fn the_profile_denies_what_docker_denies_and_allows_what_builds_need() {
        for denied in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "reboot",
            "swapon",
            "syslog",
            "open_tree",
            "move_mount",
            "fsopen",
            "pivot_root",
            "userfaultfd",
        ] {
            assert!(
                !DEFAULT.host_rules().any(|r| r.names.contains(&denied)),
                "{denied} is named by a rule"
            );
        }
        for needed in [
            "execve", "openat", "read", "write", "mknodat", "chroot", "wait4",
        ] {
            assert!(allowed_unconditionally(needed), "{needed} is not allowed");
        }
        assert!(
            !allowed_unconditionally("clone"),
            "clone is filtered by its flags"
        );
        assert!(
            DEFAULT
                .host_rules()
                .any(|r| r.names == ["clone3"] && r.action == Action::Errno(38))
        );
    }

    #[test]
    fn no_name_is_listed_twice_unconditionally() {
        let mut seen = std::collections::HashSet::new();
        for r in DEFAULT.rules.iter().filter(|r| r.args.is_empty()) {
            for n in r.names {
                assert!(seen.insert(*n), "{n} listed twice");
            }
        }
    }
}
