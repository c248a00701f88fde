//! What the pipeline tests share: the real parts they need, `forge run` in a workspace, and a
//! small workspace of one image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Machine {
    pub registry: String,
    pub busybox: String,
}

pub fn machine() -> Option<Machine> {
    if !forge_testsupport::root("pipeline runs use the embedded runner as root") {
        return None;
    }
    let registry = forge_testsupport::registry()?;
    let busybox = forge_testsupport::busybox_image()?;
    forge_testsupport::tool("skopeo")?;
    Some(Machine { registry, busybox })
}

/// `forge run ARGS` in `dir` with the store at `root` and `env` added.
pub fn forge_run(dir: &Path, root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("run forge")
}

/// What `forge run ARGS` printed, after asserting it passed.
pub fn run_ok(dir: &Path, root: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = forge_run(dir, root, args, env);
    let out = super::printed(&o);
    assert!(o.status.success(), "{out}");
    out
}

/// The lines of `out` that start with `prefix`, in order.
pub fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// A scratch workspace whose `forge.yaml` is `pipeline` with one image, `app` (busybox, working
/// directory /w): its temporary directory, the repository and the store.
pub fn small_workspace(
    m: &Machine,
    name: &str,
    pipeline: &str,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let ws = forge_testsupport::scratch(name);
    let dir = ws.path().join("repo");
    let root = ws.path().join("store");
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(
        dir.join("app/Dockerfile"),
        format!("FROM {}\nWORKDIR /w\n", m.busybox),
    )
    .unwrap();
    fs::write(
        dir.join("forge.yaml"),
        format!("images:\n  app: {{context: app}}\n{pipeline}"),
    )
    .unwrap();
    (ws, dir, root)
}

/// What `forge logs 1 JOB` prints for the workspace `dir`.
pub fn stored_log(dir: &Path, root: &Path, job: &str) -> String {
    let file = dir.join("forge.yaml");
    let o = super::forge(root, &["logs", "1", job, "-f", &file.to_string_lossy()]);
    let text = super::printed(&o);
    assert!(o.status.success(), "{text}");
    text
}

/// `git ARGS` in `dir` (the judge and fixture maker; forge reads the repository with gix): what
/// it printed, trimmed.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = forge_testsupport::run(
        Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1"),
    );
    String::from_utf8_lossy(&out).trim().to_string()
}
