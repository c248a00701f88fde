//! `forge run` as a monorepo's CI uses it, where the monorepo sweep found it wrong: a stage
//! image that does not build, artifacts an earlier run left on the host, a store kept in the work
//! tree, and a push that fails part way. Real parts as in `pipeline_run.rs`: the loopback
//! registry, the busybox test image, the embedded runner as root; git as the fixture maker.

mod common;

use std::fs;

use common::pipeline::{forge_run, git_in, machine, small_workspace};
use common::printed;

/// Regression (monorepo sweep 01): the build of a stage image (`app@testenv`) failed, its job was
/// skipped ("its image was not built"), and the run passed with exit 0: CI green with no test
/// run, and that run the next one's `changes:` baseline.
#[test]
fn a_stage_image_that_does_not_build_fails_the_run() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-stage-fails",
        "jobs:\n  unit:\n    image: app@testenv\n    script: [echo UNIT-RAN]\n",
    );
    fs::write(
        dir.join("app/Dockerfile"),
        format!(
            "FROM {} AS base\nFROM base AS testenv\nRUN echo compiling tests; exit 2\nFROM base\n",
            m.busybox
        ),
    )
    .unwrap();
    let o = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("run 1 failed"), "{out}");
    assert!(out.contains("image app: stage testenv: "), "{out}");
    assert!(!out.contains("UNIT-RAN"), "{out}");
}

/// Regression (monorepo sweep 05): `forge-artifacts/JOB/` kept an earlier run's files when the
/// job kept none this time (it failed, or was not run), unmarked, though the README says the
/// directory is replaced by the next run.
#[test]
fn a_job_that_keeps_no_artifacts_this_run_leaves_none_from_an_earlier_one() {
    let Some(m) = machine() else { return };
    let job = |script: &str, when: &str| {
        format!(
            "jobs:\n  build:\n    image: app\n{when}    script: [mkdir -p out, echo v1 > out/built.txt, {script}]\n    artifacts:\n      paths: [out/]\n"
        )
    };
    let (_ws, dir, root) = small_workspace(&m, "forge-pipeline-stale-artifacts", &job("true", ""));
    let kept = dir.join("forge-artifacts/build/out/built.txt");
    let o = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(fs::read_to_string(&kept).unwrap(), "v1\n");
    for (script, when) in [("exit 1", ""), ("true", "    when: manual\n")] {
        fs::write(
            dir.join("forge.yaml"),
            format!("images:\n  app: {{context: app}}\n{}", job(script, when)),
        )
        .unwrap();
        fs::create_dir_all(kept.parent().unwrap()).unwrap();
        fs::write(&kept, "v1\n").unwrap();
        let o = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
        let out = printed(&o);
        assert!(
            !dir.join("forge-artifacts/build").exists(),
            "{script:?} {when:?}: an earlier run's artifacts are still there\n{out}"
        );
    }
}

/// Regression (monorepo sweep 06): with the store in the work tree (`--root .forge`, as the
/// README suggests for a CI workspace) every run counted the store's own files as uncommitted
/// changes, so no run was ever a `changes:` baseline again.
#[test]
fn a_store_inside_the_work_tree_is_not_a_change_of_it() {
    let Some(m) = machine() else { return };
    if forge_testsupport::tool("git").is_none() {
        return;
    }
    let (_ws, dir, _) = small_workspace(
        &m,
        "forge-pipeline-store-in-tree",
        "jobs:\n  unit:\n    image: app\n    script: [echo ok]\n    rules:\n      - changes: [\"app/**/*\"]\n",
    );
    fs::write(dir.join(".gitignore"), "forge-artifacts/\n").unwrap();
    git_in(&dir, &["init", "-q", "-b", "main"]);
    git_in(&dir, &["add", "-A"]);
    git_in(&dir, &["commit", "-q", "-m", "one"]);
    let root = dir.join(".forge");
    let first = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    assert!(first.status.success(), "{}", printed(&first));
    // A commit that does not touch app/: the first run is its baseline, so unit is left out.
    fs::write(dir.join("notes.txt"), "n\n").unwrap();
    git_in(&dir, &["add", "notes.txt"]);
    git_in(&dir, &["commit", "-q", "-m", "two"]);
    let o = forge_run(&dir, &root, &["run", "--progress=plain"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("work tree differs"), "{out}");
    assert!(out.contains("job unit: skipped: no rule matched"), "{out}");
}

/// Regression (monorepo sweep 04): two tags of a registry moved and a third registry was not
/// there; the run said nothing was pushed (summary and `--metadata-file`).
#[test]
fn a_push_that_fails_part_way_reports_the_tags_it_moved() {
    let Some(m) = machine() else { return };
    let repo = format!("part-{}", forge_testsupport::unique());
    let gone = forge_testsupport::free_port();
    let moved = [
        format!("{}/{repo}/app:t1", m.registry),
        format!("{}/{repo}/app:t3", m.registry),
    ];
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-part-push",
        &format!(
            "    tags: [\"{}\", \"127.0.0.1:{gone}/{repo}/app:t2\", \"{}\"]\n    push: true\njobs:\n  unit:\n    image: app\n    script: [echo ok]\n",
            moved[0], moved[1]
        ),
    );
    // The image's map gets its tags: `app: {context: app}` becomes a block.
    let file = fs::read_to_string(dir.join("forge.yaml"))
        .unwrap()
        .replace("  app: {context: app}\n", "  app:\n    context: app\n");
    fs::write(dir.join("forge.yaml"), file).unwrap();
    let o = forge_run(
        &dir,
        &root,
        &["run", "--progress=plain", "--metadata-file", "meta.json"],
        &[],
    );
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
    let pushed: Vec<&str> = meta["images"][0]["pushed"]
        .as_array()
        .unwrap_or_else(|| panic!("{meta}"))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(pushed, moved, "{out}");
    assert!(
        out.contains(&format!("pushed: {}, {}", moved[0], moved[1])),
        "{out}"
    );
    for tag in &moved {
        let (name, t) = tag.rsplit_once(':').unwrap();
        let repository = name.split_once('/').unwrap().1;
        let manifest = common::registry_manifest(&m.registry, repository, t);
        assert!(manifest.get("layers").is_some(), "{tag}: {manifest}");
    }
}
