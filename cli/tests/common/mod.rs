//! What the CLI's integration tests share: running the `forge` binary built for them (only this
//! crate's tests know its path) and reading what it printed.
// Each test file uses what it needs of this module.
#![allow(dead_code)]

pub mod pipeline;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// What the rootless tests need, or `None` (the test is skipped, saying why) when the machine
/// lacks it: root (`why` says what for), the busybox test image and the test user.
pub fn rootless_prerequisites(why: &str) -> Option<(String, forge_testsupport::TestUser)> {
    if !forge_testsupport::root(why) {
        return None;
    }
    let busybox = forge_testsupport::busybox_image()?;
    let user = forge_testsupport::test_user()?;
    Some((busybox, user))
}

/// Makes `user` own everything under `dir` (the user's own files, as in a checkout).
pub fn chown_tree(dir: &Path, user: &forge_testsupport::TestUser) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

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

/// The OCI manifest `repository:tag` of the registry at `addr` (plain http), read with curl (an
/// independent client).
pub fn registry_manifest(addr: &str, repository: &str, tag: &str) -> Value {
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{addr}/v2/{repository}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", printed(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Everything a run printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One vertex as `--progress json` reported it.
#[derive(Debug)]
pub struct Vertex {
    pub name: String,
    /// What its events said, in order: `cached`, `started`, `done`, ... (`type` without `vertex.`).
    pub statuses: Vec<String>,
}

/// The vertices of a successful build's `--progress json` log, by graph index. Every line must be
/// one event record (`build`, `time`, `type`), all of one build.
pub fn vertices(stderr: &str) -> BTreeMap<u64, Vertex> {
    let mut out: BTreeMap<u64, Vertex> = BTreeMap::new();
    let mut builds = BTreeSet::new();
    for line in stderr.lines() {
        // The user namespace may be a single id: main warns before the build starts.
        if line.starts_with("warning: ") {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a json event ({e}): {line}\n{stderr}"));
        let (Some(build), Some(_), Some(kind)) =
            (v["build"].as_str(), v["time"].as_str(), v["type"].as_str())
        else {
            panic!("an event without build, time or type: {line}");
        };
        builds.insert(build.to_string());
        let (Some(n), Some(status)) = (v["vertex"].as_u64(), kind.strip_prefix("vertex.")) else {
            continue;
        };
        let entry = out.entry(n).or_insert_with(|| Vertex {
            name: String::new(),
            statuses: Vec::new(),
        });
        if let Some(name) = v["description"].as_str() {
            entry.name = name.to_string();
        }
        entry.statuses.push(status.to_string());
    }
    assert_eq!(builds.len(), 1, "events of {builds:?} in one build's log");
    out
}

/// Names of the vertices that ran (started or done) and of those found cached.
pub fn ran_and_cached(log: &BTreeMap<u64, Vertex>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut ran = BTreeSet::new();
    let mut cached = BTreeSet::new();
    for v in log.values() {
        if v.statuses.iter().any(|s| s == "started" || s == "done") {
            ran.insert(v.name.clone());
        }
        if v.statuses.iter().any(|s| s == "cached") {
            cached.insert(v.name.clone());
        }
    }
    (ran, cached)
}
