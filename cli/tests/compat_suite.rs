//! The `docker build` compatibility suite (issue 14): one folder per case under
//! `testdata/compat/`, each a `context/` (with its Dockerfile), optional files fed on standard input,
//! and a `case.yaml` saying what it pins, which BuildKit version's behaviour that is, the flags, and
//! what forge must give: the exit status, text in its output, files of the built filesystem, values
//! of the image's config. Every case runs; the test fails listing each case that did not hold.
//!
//! A Dockerfile that builds on an image starts with `ARG BASE` / `FROM ${BASE}`: the suite passes
//! the busybox test image (or the Debian one, `base: debian`) as `--build-arg BASE=...`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::printed;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case pins, in a sentence.
    about: String,
    /// The BuildKit release whose behaviour is the reference.
    buildkit: String,
    /// `busybox` (the default) or `debian`.
    #[serde(default)]
    base: Option<String>,
    /// `forge build` flags, `{case}` standing for the case's folder; the context (or `context`) is
    /// appended.
    #[serde(default)]
    args: Vec<String>,
    /// The context argument instead of the case's `context/` directory (`-`).
    #[serde(default)]
    context: Option<String>,
    /// A file of the case fed on standard input.
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    status: i32,
    /// Text that must appear in what forge printed.
    #[serde(default)]
    output: Vec<String>,
    /// Text that must not.
    #[serde(default)]
    output_absent: Vec<String>,
    /// Files of the built filesystem (read with `-o type=local`) and their whole content.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Files of the built filesystem and text each must contain.
    #[serde(default)]
    contains: BTreeMap<String, Vec<String>>,
    /// Values in `forge inspect`'s JSON, by JSON pointer.
    #[serde(default)]
    config: BTreeMap<String, serde_json::Value>,
    /// Text that must not appear anywhere in `forge inspect`'s JSON.
    #[serde(default)]
    config_absent: Vec<String>,
}

fn cases() -> Vec<(String, PathBuf)> {
    let dir = forge_testsupport::workspace_root().join("testdata/compat");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().join("case.yaml").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

fn run(args: &[String], root: &Path, stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge"));
    cmd.args(args).arg("--root").arg(root);
    match stdin {
        Some(f) => cmd.stdin(Stdio::from(std::fs::File::open(f).unwrap())),
        None => cmd.stdin(Stdio::null()),
    };
    cmd.output().expect("run forge")
}

/// Runs one case; the reasons it did not hold.
fn check(name: &str, dir: &Path, images: &BTreeMap<&str, String>, scratch: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("case.yaml")).unwrap();
    let case: Case = match serde_saphyr::from_str(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("case.yaml: {e}")],
    };
    assert!(
        !case.about.is_empty() && case.buildkit.starts_with('v'),
        "{name}: say what the case pins and which BuildKit version (v0.x)"
    );
    let base = case.base.as_deref().unwrap_or("busybox");
    let Some(image) = images.get(base) else {
        return vec![format!("unknown base {base:?}")];
    };
    let root = scratch.join(name).join("store");
    let out = scratch.join(name).join("out");
    let context = case
        .context
        .clone()
        .unwrap_or_else(|| dir.join("context").to_string_lossy().into_owned());
    let stdin = case.stdin.as_ref().map(|f| dir.join(f));
    let mut args: Vec<String> = vec!["build".into(), "--progress=plain".into()];
    args.extend(["--build-arg".into(), format!("BASE={image}")]);
    let here = dir.to_string_lossy();
    args.extend(case.args.iter().map(|a| a.replace("{case}", &here)));
    let e = &case.expect;
    let wants_files = !e.files.is_empty() || !e.contains.is_empty();
    if wants_files {
        args.extend(["-o".into(), format!("type=local,dest={}", out.display())]);
    }
    let tag = format!("compat/{name}:test");
    if !e.config.is_empty() || !e.config_absent.is_empty() {
        args.extend(["-t".into(), tag.clone()]);
    }
    args.push(context.clone());
    let o = run(&args, &root, stdin.as_deref());
    let shown = printed(&o);
    let mut failed = Vec::new();
    if o.status.code() != Some(e.status) {
        failed.push(format!(
            "exit status {:?}, want {}:\n{shown}",
            o.status.code(),
            e.status
        ));
        return failed;
    }
    for t in &e.output {
        if !shown.contains(t.as_str()) {
            failed.push(format!("{t:?} not in the output:\n{shown}"));
        }
    }
    for t in &e.output_absent {
        if shown.contains(t.as_str()) {
            failed.push(format!("{t:?} is in the output:\n{shown}"));
        }
    }
    for (path, want) in &e.files {
        match std::fs::read_to_string(out.join(path)) {
            Ok(got) if &got == want => {}
            Ok(got) => failed.push(format!("{path}: {got:?}, want {want:?}")),
            Err(err) => failed.push(format!("{path}: {err}")),
        }
    }
    for (path, wants) in &e.contains {
        let got = std::fs::read_to_string(out.join(path)).unwrap_or_default();
        for w in wants {
            if !got.contains(w.as_str()) {
                failed.push(format!("{path}: {w:?} not in {got:?}"));
            }
        }
    }
    if !e.config.is_empty() || !e.config_absent.is_empty() {
        let inspected = run(&["inspect".into(), tag], &root, None);
        let doc: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap_or_default();
        for (pointer, want) in &e.config {
            match doc.pointer(pointer) {
                Some(got) if got == want => {}
                got => failed.push(format!("{pointer}: {got:?}, want {want}")),
            }
        }
        let whole = doc.to_string();
        for t in &e.config_absent {
            if whole.contains(t.as_str()) {
                failed.push(format!("{t:?} is in the image's record"));
            }
        }
    }
    failed
}

#[test]
fn every_compat_case_holds() {
    if !forge_testsupport::root_and_busybox("compat cases build with RUN steps") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(debian) = forge_testsupport::debian_image() else {
        return;
    };
    let images = BTreeMap::from([("busybox", busybox), ("debian", debian)]);
    let scratch = forge_testsupport::scratch("forge-compat-");
    let cases = cases();
    assert!(cases.len() >= 10, "the suite lost its cases: {cases:?}");
    let mut report = Vec::new();
    for (name, dir) in &cases {
        for why in check(name, dir, &images, scratch.path()) {
            report.push(format!("{name}: {why}"));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} cases failed:\n{}",
        report.len(),
        cases.len(),
        report.join("\n")
    );
}
