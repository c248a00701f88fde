//! Regression tests for defects found by attacking forge (issue 11), each named after what it pins.
//! RUN steps use the host's static busybox copied into the context; no registry is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BUSYBOX: &str = "/bin/busybox";

/// Root and a static busybox, or `false` after a SKIP line; a panic under FORGE_E2E=require.
fn prerequisites() -> bool {
    let require = std::env::var("FORGE_E2E").as_deref() == Ok("require");
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("needs root (RUN steps with the embedded runner)")
    } else if !Path::new(BUSYBOX).is_file() {
        Some("needs /bin/busybox (Debian busybox-static)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if require => panic!("{why} (FORGE_E2E=require)"),
        Some(why) => {
            eprintln!("SKIP: {why}");
            false
        }
    }
}

/// A context with busybox and `dockerfile` in a fresh directory, and a store beside it.
fn context(dockerfile: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(BUSYBOX, ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let root = tmp.path().join("root");
    (tmp, ctx, root)
}

fn forge(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .arg("build")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("forge runs")
}

/// Issue 11.3: with `-q` or `--progress json`, a failing RUN's `last output:` block printed a
/// mounted secret's value in clear (each line of a multi-line secret too).
#[test]
fn secret_in_a_failed_steps_last_output_is_masked_in_quiet_and_json_modes() {
    if !prerequisites() {
        return;
    }
    let (tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN --mount=type=secret,id=tok [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox cat /run/secrets/tok; exit 1\"]\n",
    );
    let secret = tmp.path().join("tok");
    std::fs::write(&secret, "first-line-s3cr3t\nsecond-line-hush\n").unwrap();
    let spec = format!("id=tok,src={}", secret.display());
    for mode in [
        &["-q"][..],
        &["--progress", "json"][..],
        &["--progress", "plain"][..],
    ] {
        let mut args = vec!["--secret", spec.as_str()];
        args.extend_from_slice(mode);
        let ctx_arg = ctx.to_string_lossy();
        args.push(&ctx_arg);
        let out = forge(&root, &args);
        assert!(!out.status.success(), "{mode:?}: the step exits 1");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("s3cr3t") && !all.contains("second-line-hush"),
            "{mode:?} printed the secret:\n{all}"
        );
        assert!(
            all.contains("****"),
            "{mode:?}: the masked line is shown:\n{all}"
        );
    }
}

/// Issue 11.7: a RUN with a 1 MB argument list printed 4 MB of error.
#[test]
fn a_huge_run_command_line_is_cut_in_the_error() {
    if !prerequisites() {
        return;
    }
    // 20 arguments of 50,000 bytes, one per continuation line (a line may hold 64 KiB).
    let arg = format!("\"{}\"", "x".repeat(50_000));
    let args = vec![arg; 20].join(", \\\n    ");
    let (_tmp, ctx, root) = context(&format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 2\", \\\n    {args}]\n"
    ));
    let out = forge(&root, &["-q", &ctx.to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 2"), "{stderr}");
    assert!(stderr.contains("more bytes)"), "{stderr}");
    assert!(
        out.stderr.len() < 16 * 1024,
        "{} bytes of error for a 1 MB argument",
        out.stderr.len()
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue 11.1: an ADDed tar holding a character device for /dev/kmsg (c 1 11) gave a later RUN the
/// host's kernel log. The node may be unpacked (as BuildKit does), but it cannot be opened: the
/// step's root filesystem is mounted nodev.
#[test]
fn issue11_an_added_tar_with_a_char_device_cannot_reach_the_host_device() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\nADD dev.tar /\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox ls -l /kmsg; echo forge-issue11-test > /kmsg && echo WROTE-$((6*7)); exit 0\"]\n",
    );
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Char);
    header.set_path("kmsg").unwrap();
    header.set_mode(0o666);
    header.set_size(0);
    header.set_device_major(1).unwrap();
    header.set_device_minor(11).unwrap();
    header.set_cksum();
    builder.append(&header, std::io::empty()).unwrap();
    std::fs::write(ctx.join("dev.tar"), builder.into_inner().unwrap()).unwrap();
    let out = forge(
        &root,
        &["--progress", "plain", "--no-cache", &ctx.to_string_lossy()],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The node is there (the step saw it), and opening it was refused.
    assert!(
        all.contains("1,  11"),
        "the device was not unpacked:\n{all}"
    );
    assert!(
        !all.contains("WROTE-42"),
        "the step wrote to the host's /dev/kmsg:\n{all}"
    );
    assert!(all.contains("Permission denied"), "{all}");
}

/// Issue 11.1: `RUN --security=insecure` lifts the seccomp filter only when the build grants
/// `--allow security.insecure`; without it the build is refused before any step runs.
#[test]
fn issue11_run_security_insecure_needs_the_allow_entitlement() {
    if !prerequisites() {
        return;
    }
    let (_tmp, ctx, root) = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox grep Seccomp: /proc/self/status\"]\n\
         RUN --security=insecure [\"/bin/busybox\", \"sh\", \"-c\", \
         \"/bin/busybox grep Seccomp: /proc/self/status\"]\n",
    );
    let ctx_arg = ctx.to_string_lossy();
    let out = forge(&root, &["--progress", "plain", &ctx_arg]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("--allow security.insecure"), "{all}");
    assert_eq!(
        seccomp_modes(&all),
        "",
        "a step ran before the refusal:\n{all}"
    );

    let out = forge(
        &root,
        &[
            "--progress",
            "plain",
            "--allow",
            "security.insecure",
            &ctx_arg,
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The sandboxed step first, then the insecure one.
    assert_eq!(seccomp_modes(&all), "20", "{all}");
}

/// The modes `grep Seccomp: /proc/self/status` printed, in order (the command line, which progress
/// and errors show too, has no digit after the colon).
fn seccomp_modes(output: &str) -> String {
    output
        .match_indices("Seccomp:")
        .filter_map(|(i, m)| {
            output[i + m.len()..]
                .trim_start_matches([' ', '\t'])
                .chars()
                .next()
        })
        .filter(char::is_ascii_digit)
        .collect()
}
