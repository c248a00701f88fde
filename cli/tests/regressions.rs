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
