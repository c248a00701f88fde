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

/// Everything a run printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
