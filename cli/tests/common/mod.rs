//! What the CLI's integration tests share: running the `forge` binary built for them (only this
//! crate's tests know its path) and reading what it printed.
// Each test file uses what it needs of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `forge ARGS --root ROOT` and waits for it.
pub fn forge(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run forge")
}

/// Runs `forge ARGS --root ROOT` with `input` on its standard input and waits for it.
pub fn forge_with_stdin(root: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run forge");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // forge may stop reading early (a refused entry); a broken pipe then is not the test's concern.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().expect("wait for forge")
}

/// Everything a run printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
