//! The embedded backend end to end, through the forge-runner-step binary, as root and as the
//! unprivileged $FORGE_TEST_USER: exit codes, env and cwd, users, ownership in the snapshot, network
//! isolation, secret/cache/bind/tmpfs mounts and cancellation.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Fixture, Mode, contains, modes, pids_with_argv};

fn for_each_mode(test: impl Fn(&Fixture)) {
    for mode in modes() {
        eprintln!("--- mode {}", mode.name());
        let fx = Fixture::new(&mode);
        test(&fx);
    }
}

#[test]
fn exit_codes_zero_three_and_signal() {
    for_each_mode(|fx| {
        let r = fx.run(&[], &["true"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("exit=0 "), "{r:?}");
        // A step that changes nothing leaves nothing: no mount stubs, no copied-up parents.
        assert_eq!(fx.upper_paths(), Vec::<String>::new());
        let r = fx.sh(&[], "echo out; echo err >&2; exit 3");
        assert_eq!(r.code, 3, "{r:?}");
        assert!(
            r.stdout.contains("out") && r.stderr.contains("err"),
            "{r:?}"
        );
        // The shell is not pid 1 (forge's init is), so a signal it sends itself is not ignored.
        let r = fx.sh(&[], "kill -TERM $$; sleep 5");
        assert_eq!(r.code, 128 + 15, "{r:?}");
        assert!(r.stderr.contains("exit=143 "), "{r:?}");
    });
}

#[test]
fn env_and_cwd_created_if_missing() {
    for_each_mode(|fx| {
        let r = fx.sh(
            &["--env", "FOO=bar baz", "--env", "FOO=last", "--cwd", "/made/for/step", "--user", "tester"],
            "echo \"foo=$FOO\"; echo \"pwd=$(pwd)\"; echo \"path=$PATH\"; echo \"home=$HOME\"; stat -c '%u:%g' .",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("foo=last\n"), "{r:?}");
        assert!(r.stdout.contains("pwd=/made/for/step\n"), "{r:?}");
        assert!(
            r.stdout
                .contains("path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
            "{r:?}"
        );
        assert!(r.stdout.contains("home=/home/tester\n"), "{r:?}");
        // BuildKit creates a missing working directory owned by the step's user.
        assert!(r.stdout.contains("1000:1000\n"), "{r:?}");
        let made = fx.upper().join("made/for/step");
        let meta = fs::metadata(&made).expect("cwd is in the snapshot");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (fx.host_id(1000), fx.host_gid(1000))
        );
    });
}

#[test]
fn numeric_and_named_users_and_unknown_user() {
    for_each_mode(|fx| {
        let r = fx.sh(
            &["--user", "1000:1000"],
            "echo \"$(id -u):$(id -g)\"; grep CapEff /proc/self/status",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("1000:1000\n"), "{r:?}");
        assert!(r.stdout.contains("CapEff:\t0000000000000000"), "{r:?}");
        let r = fx.sh(&["--user", "tester"], "id");
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout
                .contains("uid=1000(tester) gid=1000(tester) groups=10(wheel)"),
            "{r:?}"
        );
        let r = fx.sh(
            &[],
            "id -u; grep -E 'Cap(Eff|Bnd|Inh|Amb)' /proc/self/status",
        );
        assert_eq!(r.code, 0, "{r:?}");
        // Root gets Docker's default capability set, and nothing else in the bounding set;
        // nothing inheritable or ambient (rootless too), as runc since CVE-2022-24769.
        assert!(r.stdout.starts_with("0\n"), "{r:?}");
        assert!(r.stdout.contains("CapEff:\t00000000a80425fb"), "{r:?}");
        assert!(r.stdout.contains("CapBnd:\t00000000a80425fb"), "{r:?}");
        assert!(r.stdout.contains("CapInh:\t0000000000000000"), "{r:?}");
        assert!(r.stdout.contains("CapAmb:\t0000000000000000"), "{r:?}");
        let r = fx.run(&["--user", "nobody-here"], &["true"]);
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr.contains("nobody-here") && r.stderr.contains("/etc/passwd"),
            "{r:?}"
        );
    });
}

#[test]
fn chowned_files_keep_their_owners_in_the_snapshot() {
    for_each_mode(|fx| {
        let r = fx.sh(
            &[],
            "mkdir /data && touch /data/f /data/g && chown 1000:1000 /data/f && chown 123:456 /data/g && chown 7:8 /data",
        );
        assert_eq!(r.code, 0, "{r:?}");
        let owner = |p: &str| {
            let m = fs::symlink_metadata(fx.upper().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("data/f"), (fx.host_id(1000), fx.host_gid(1000)));
        assert_eq!(owner("data/g"), (fx.host_id(123), fx.host_gid(456)));
        assert_eq!(owner("data"), (fx.host_id(7), fx.host_gid(8)));
        if let Mode::Rootless {
            subids: Some((subuid, subgid)),
            ..
        } = fx.mode
        {
            assert_eq!(
                owner("data/f"),
                (subuid + 999, subgid + 999),
                "subuid-mapped on the host"
            );
        }
        // As seen from inside the namespace again, on the same snapshot.
        let r = fx.sh(&[], "stat -c '%n %u:%g' /data /data/f /data/g");
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout
                .contains("/data 7:8\n/data/f 1000:1000\n/data/g 123:456\n"),
            "{r:?}"
        );
    });
}

#[test]
fn network_none_and_sandbox_cannot_reach_a_host_loopback_port_host_can() {
    for_each_mode(|fx| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = String::new();
            let _ = conn.read_to_string(&mut got);
            got
        });
        let script = format!("echo ping-from-step | nc -w 3 127.0.0.1 {port}");
        let r = fx.sh(&["--network", "host"], &script);
        assert_eq!(r.code, 0, "host network must reach the port: {r:?}");
        assert_eq!(accepted.join().unwrap(), "ping-from-step\n");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let script = format!(
            "ip link show lo | grep -q 'state UNKNOWN\\|UP' && echo lo-up; echo x | nc -w 3 127.0.0.1 {port}"
        );
        let r = fx.sh(&["--network", "none"], &script);
        assert_ne!(r.code, 0, "network none reached the host: {r:?}");
        assert!(
            r.stdout.contains("lo-up"),
            "loopback is up in the new namespace: {r:?}"
        );
        // Issue 11.4: the default (sandbox) reaches neither the port nor, through forge's proxy,
        // the host's loopback; rootless too.
        let r = fx.sh(
            &[],
            &format!(
                "{script}; printf 'GET http://127.0.0.1:{port}/ HTTP/1.0\\r\\n\\r\\n' | \
                 nc -w 5 127.0.0.1 3128"
            ),
        );
        assert!(r.stdout.contains("lo-up"), "{r:?}");
        assert!(r.stdout.contains("403 Forbidden"), "{r:?}");
        assert!(r.stdout.contains("--allow network.host"), "{r:?}");
        assert!(
            listener.accept().is_err(),
            "a connection arrived from a network-none or sandboxed step"
        );
    });
}

#[test]
fn secret_is_readable_and_absent_from_the_snapshot() {
    for_each_mode(|fx| {
        let secret = fx.path("host/token");
        let bytes = "s3cr3t-value-4242";
        fs::write(&secret, bytes).unwrap();
        fx.give(&secret);
        let spec = format!("{}:/run/secrets/token:1000:1000:0400", secret.display());
        let r = fx.sh(
            &["--mount-secret", &spec, "--user", "tester"],
            "cat /run/secrets/token; echo; stat -c '%a %u:%g' /run/secrets/token; echo x > /run/secrets/token || echo read-only",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains(bytes), "{r:?}");
        assert!(r.stdout.contains("400 1000:1000"), "{r:?}");
        assert!(r.stdout.contains("read-only"), "{r:?}");
        assert!(
            !fx.upper().join("run").exists(),
            "mount stubs left: {:?}",
            fx.upper_paths()
        );
        for p in common::walk(&fx.upper()) {
            if p.is_file() {
                assert!(
                    !contains(&fs::read(&p).unwrap(), bytes.as_bytes()),
                    "secret in {}",
                    p.display()
                );
            }
        }
        // Generated /etc files and system mount points are not in the snapshot either.
        let paths = fx.upper_paths();
        for stub in [
            "etc/hosts",
            "etc/resolv.conf",
            "etc/hostname",
            "proc",
            "dev",
            "sys",
        ] {
            assert!(
                !paths.iter().any(|p| p == stub),
                "{stub} in the snapshot: {paths:?}"
            );
        }
    });
}

#[test]
fn cache_mount_keeps_content_across_runs() {
    for_each_mode(|fx| {
        let r = fx.sh(
            &[
                "--mount-cache",
                "pkg-cache:/var/cache/pkg:locked:1000:1000:0750",
                "--user",
                "tester",
            ],
            "echo first-run > /var/cache/pkg/state; stat -c '%a %u:%g' /var/cache/pkg",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("750 1000:1000"), "{r:?}");
        let r = fx.sh(
            &["--mount-cache", "pkg-cache:/var/cache/pkg"],
            "cat /var/cache/pkg/state",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout, "first-run\n", "{r:?}");
        assert!(
            !fx.upper().join("var/cache/pkg/state").exists(),
            "cache content in the snapshot"
        );
    });
}

#[test]
fn bind_is_read_only_by_default_and_tmpfs_is_not_committed() {
    for_each_mode(|fx| {
        let src = fx.path("host/ctx");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("input"), "from-host").unwrap();
        fx.give(&src);
        fx.give(&src.join("input"));
        let bind = format!("{}:/src", src.display());
        let r = fx.sh(
            &["--mount-bind", &bind, "--mount-tmpfs", "/scratch:1048576"],
            "cat /src/input; echo; touch /src/new 2>/dev/null && echo WROTE; echo t > /scratch/t && echo tmpfs-ok",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("from-host") && r.stdout.contains("tmpfs-ok"),
            "{r:?}"
        );
        assert!(
            !r.stdout.contains("WROTE"),
            "read-only bind was writable: {r:?}"
        );
        assert!(!src.join("new").exists());
        let paths = fx.upper_paths();
        assert!(
            !paths
                .iter()
                .any(|p| p.starts_with("scratch") || p.starts_with("src")),
            "{paths:?}"
        );
    });
}

#[test]
fn missing_executable_is_a_clear_error() {
    for_each_mode(|fx| {
        let r = fx.run(&[], &["no-such-tool", "--flag"]);
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr.contains("executable file not found") && r.stderr.contains("no-such-tool"),
            "{r:?}"
        );
    });
}

fn mount_lines_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        if let Ok(text) = fs::read_to_string(e.path().join("mountinfo")) {
            out.extend(
                text.lines()
                    .filter(|l| l.contains(&needle))
                    .map(String::from),
            );
        }
    }
    out
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_nothing_left(fx: &Fixture, argv: &[&str], step_pids: &[i32]) {
    assert!(
        pids_with_argv(argv).is_empty(),
        "step processes left: {:?}",
        pids_with_argv(argv)
    );
    for pid in step_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
    let mounts = mount_lines_mentioning(fx.dir.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let state: Vec<_> = fs::read_dir(fx.path("state")).unwrap().collect();
    assert!(state.is_empty(), "temp dirs left: {state:?}");
}

/// The pid of the running forge-runner-step binary of this fixture.
fn forge_pid(fx: &Fixture) -> i32 {
    let bin = fx.bin.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.starts_with(bin.as_bytes()) && c.get(bin.len()) == Some(&0))
                .unwrap_or(false)
        })
        .expect("the forge-runner-step process")
}

#[test]
fn a_killed_forge_takes_the_step_with_it() {
    for_each_mode(|fx| {
        let argv = ["sleep", "1618"];
        let child = fx.spawn(&[], &["/bin/sh", "-c", "sleep 1618 & sleep 1618; wait"]);
        wait_for("the step's sleeps", Duration::from_secs(10), || {
            pids_with_argv(&argv).len() == 2
        });
        let step_pids = pids_with_argv(&argv);
        let target = forge_pid(fx);
        // SIGKILL: forge gets no chance to clean up; PR_SET_PDEATHSIG must end the step's init.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_ne!(out.status.code(), Some(0));
        wait_for(
            "the step's processes to die",
            Duration::from_secs(10),
            || pids_with_argv(&argv).is_empty(),
        );
        for pid in &step_pids {
            wait_for("pid to vanish", Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
        }
        let mounts = mount_lines_mentioning(fx.dir.path());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    });
}

#[test]
fn sigterm_to_forge_kills_the_step_tree_and_leaves_nothing() {
    for_each_mode(|fx| {
        let argv = ["sleep", "3141"];
        let child = fx.spawn(&[], &["/bin/sh", "-c", "sleep 3141 & sleep 3141; wait"]);
        wait_for("the step's sleeps", Duration::from_secs(10), || {
            pids_with_argv(&argv).len() == 2
        });
        let step_pids = pids_with_argv(&argv);
        // A positive control for the check below: while it runs, the step's processes see its mounts.
        assert!(
            !mount_lines_mentioning(fx.dir.path()).is_empty(),
            "no step mounts seen while running"
        );
        let target = forge_pid(fx);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("cancelled"), "{stderr}");
        assert_nothing_left(fx, &argv, &step_pids);
    });
}

#[test]
fn cancel_token_kills_the_step_and_leaves_nothing() {
    for_each_mode(|fx| {
        let argv = ["sleep", "2718"];
        let start = Instant::now();
        let r = fx.run(&["--cancel-after-ms", "700", "--mount-tmpfs", "/t"], &argv);
        assert_eq!(r.code, 130, "{r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "cancel did not stop the sleep"
        );
        assert_nothing_left(fx, &argv, &[]);
    });
}

#[test]
fn without_a_subuid_range_a_single_id_map_warns_and_chown_fails() {
    if !nix::unistd::geteuid().is_root() {
        common::skip("not root: cannot switch to a user without a subordinate id range");
        return;
    }
    // Debian's `nobody` has no /etc/subuid entry.
    let Some(mode) = common::user_mode("nobody") else {
        common::skip("no `nobody` user on this machine");
        return;
    };
    let fx = Fixture::new(&mode);
    let r = fx.sh(
        &[],
        "id -u; touch /f && chown 1000:1000 /f || echo chown-failed",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("0\n"), "{r:?}");
    assert!(r.stdout.contains("chown-failed"), "{r:?}");
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("/etc/subuid"),
        "{r:?}"
    );
    let r = fx.run(&["--user", "1000"], &["true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("setgid 1000") && r.stderr.contains("mapped in the user namespace"),
        "{r:?}"
    );
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    for_each_mode(|fx| {
        let sock = fx.path("host/agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        fx.give(&sock);
        let spec = format!("{}:/run/ssh/agent", sock.display());
        let r = fx.sh(
            &["--mount-ssh", &spec],
            "echo \"sock=$SSH_AUTH_SOCK\"; test -S \"$SSH_AUTH_SOCK\" && echo is-socket",
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("sock=/run/ssh/agent\n") && r.stdout.contains("is-socket"),
            "{r:?}"
        );
        assert!(
            !fx.upper().join("run").exists(),
            "mount stub left: {:?}",
            fx.upper_paths()
        );
    });
}

// Issue 11.1, as root and rootless: host changes from a RUN step run as root. The same defects as
// the contract's issue11 cases, here through the step binary so the rootless (user namespace) mode
// is covered too.

const PRINTK_RATELIMIT: &str = "/proc/sys/kernel/printk_ratelimit";

#[test]
fn issue11_proc_sys_write_is_refused_and_the_host_value_unchanged() {
    for_each_mode(|fx| {
        let before = fs::read_to_string(PRINTK_RATELIMIT).unwrap();
        let other = before.trim().parse::<u32>().unwrap() + 1;
        let r = fx.sh(
            &[],
            &format!("echo {other} > {PRINTK_RATELIMIT} && echo WROTE; cat {PRINTK_RATELIMIT}"),
        );
        let after = fs::read_to_string(PRINTK_RATELIMIT).unwrap();
        if after != before {
            fs::write(PRINTK_RATELIMIT, &before).unwrap();
        }
        assert_eq!(after, before, "the step changed the host's sysctl: {r:?}");
        assert!(!r.stdout.contains("WROTE"), "{r:?}");
        // Read-only as runc makes it, whatever the mode (rootless, permissions refuse it too).
        assert!(r.stderr.contains("Read-only file system"), "{r:?}");
        assert_eq!(r.stdout.trim(), before.trim(), "{r:?}");
    });
}

#[test]
fn issue11_mknod_of_a_host_device_cannot_be_opened() {
    for_each_mode(|fx| {
        // c 1 11 is /dev/kmsg. Root may make the node (CAP_MKNOD, as in Docker) but every writable
        // mount is nodev; rootless, the user namespace refuses mknod itself.
        let r = fx.sh(
            &["--mount-tmpfs", "/scratch"],
            "for d in / /tmp /dev /dev/shm /scratch; do \
               mknod $d/kmsg c 1 11 && echo forge-issue11-test > $d/kmsg && echo OPENED $d; \
             done; echo null > /dev/null && echo NULL-OK",
        );
        assert!(!r.stdout.contains("OPENED"), "{r:?}");
        assert!(r.stdout.contains("NULL-OK"), "{r:?}");
        let refused = match fx.mode {
            Mode::Root => "Permission denied",
            Mode::Rootless { .. } => "Operation not permitted",
        };
        assert!(r.stderr.contains(refused), "{r:?}");
    });
}

#[test]
fn issue11_a_step_runs_under_the_default_seccomp_profile_unless_insecure() {
    for_each_mode(|fx| {
        // A user namespace needs no capability (even nested in a rootless one): only the filter
        // refuses it.
        let script = "grep '^Seccomp:' /proc/self/status; unshare -U true && echo USERNS; exit 0";
        let r = fx.sh(&[], script);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout, "Seccomp:\t2\n", "{r:?}");
        assert!(r.stderr.contains("Operation not permitted"), "{r:?}");
        let r = fx.sh(&["--security", "insecure"], script);
        assert_eq!(r.stdout, "Seccomp:\t0\nUSERNS\n", "{r:?}");
    });
}

#[test]
fn issue11_masked_kernel_paths_are_empty() {
    for_each_mode(|fx| {
        let r = fx.sh(
            &[],
            "ls -A /proc/acpi /sys/firmware | wc -l; cat /proc/keys /proc/timer_list 2>/dev/null | wc -c",
        );
        assert_eq!(r.code, 0, "{r:?}");
        // Two directory headers and the blank line between them; nothing inside, nothing to read.
        assert_eq!(r.stdout, "3\n0\n", "{r:?}");
    });
}

/// Issue 11, `--memory` as root and rootless: as root a step past its limit is killed and the
/// outcome names the limit; rootless, where this host's cgroups (v1, or v2 without delegation)
/// cannot be written, the step is refused before it runs with an error that says why and what
/// would work, never run without the limit it asked for.
#[test]
fn issue11_a_memory_limit_is_enforced_as_root_and_refused_clearly_rootless() {
    for_each_mode(|fx| {
        let script = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo LEN ${#x}";
        let r = fx.sh(&["--memory", "32m"], script);
        match fx.mode {
            Mode::Root => {
                assert_ne!(r.code, 0, "{r:?}");
                assert!(r.stderr.contains("memory_limit_hit=33554432"), "{r:?}");
                assert!(!r.stdout.contains("LEN"), "{r:?}");
            }
            Mode::Rootless { .. } => {
                assert_eq!(r.code, 125, "{r:?}");
                assert!(
                    r.stderr.contains("need a cgroup forge may write")
                        && r.stderr.contains("run forge as root"),
                    "{r:?}"
                );
                assert!(!r.stdout.contains("LEN"), "the step ran: {r:?}");
            }
        }
    });
}
