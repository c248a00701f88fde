//! What confines a step beyond its namespaces, as data that both backends apply: Docker's default
//! seccomp profile ([`seccomp`]), the kernel interfaces runc masks or makes read-only, and the
//! [`Security`] mode that lifts them. The embedded backend enforces them itself (its container setup
//! and `embedded/seccomp.rs`); the containerd backend writes them into the OCI spec for runc.

pub mod seccomp;

/// How confined a step is (`RUN --security=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Docker's defaults for a container that is not `--privileged`: its capability set, the default
    /// seccomp profile, [`MASKED_PATHS`] and [`READONLY_PATHS`], and no device but the standard ones.
    #[default]
    Sandbox,
    /// `RUN --security=insecure`, which the build must allow (`--allow security.insecure`): no seccomp
    /// filter, every capability forge itself may hold ([`bounding_set`]), and /proc and /sys as the
    /// kernel shows them (BuildKit's insecure mode). Devices stay confined: host device nodes still
    /// cannot be opened.
    Insecure,
}

/// Kernel interfaces hidden from a step (files show /dev/null, directories an empty read-only tmpfs),
/// as runc hides them for Docker: they leak host state or reach host hardware.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Parts of /proc a step may read but never write: they change the host's kernel, not the step's
/// namespace (`/proc/sys/kernel/core_pattern` names a program the host runs as root).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capabilities in this process's bounding set, by number: what an insecure step gets. Where forge
/// itself runs with fewer than all (in a container), asking for more would fail the step's start.
pub fn bounding_set() -> Vec<u32> {
    (0..64)
        // SAFETY: prctl with integer arguments; -1 (EINVAL) past the last capability the kernel knows.
        .take_while(|&cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } >= 0)
        // SAFETY: as above.
        .filter(|&cap| unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1)
        .collect()
}
