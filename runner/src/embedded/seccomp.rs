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

fn rules<'a>(
    rules: impl Iterator<Item = &'a crate::confine::seccomp::Rule>,
    arch: TargetArch,
) -> Vec<Value> {
    let mut out = Vec::new();
    for r in rules {
        for name in r.names.iter().filter(|n| known(n, arch)) {
            let mut rule = json!({"syscall": name});
            if !r.args.is_empty() {
                rule["args"] = r.args.iter().map(condition).collect();
            }
            out.push(rule);
        }
    }
    out
}

/// Compiles `profile` for this machine.
pub(crate) fn compile(profile: &Profile) -> Result<Filters, String> {
    let arch = arch()?;
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
            "filter": rules(allowed.collect::<Vec<_>>().iter(), arch),
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
                "filter": rules(these, arch),
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
}
