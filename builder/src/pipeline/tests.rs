//! The pipeline frontend end to end on the testdata files: the full example checks, and each bad
//! file fails at its place (the CLI snapshots in cli/tests/pipeline_file.rs show the renderings).

use std::path::PathBuf;

use super::*;

fn testdata(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pipelines")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(src: &str) -> PipelineErrors {
    load("forge.yaml", src, &CheckOptions::default()).expect_err("should fail")
}

#[test]
fn the_full_example_checks() {
    let p = match load(
        "forge.yaml",
        &testdata("forge.yaml"),
        &CheckOptions::default(),
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    eprintln!("{p:#?}");
}

#[test]
fn debug_errors() {
    for src in [
        "jobs:\n  a:\n    scrpt: [x]\n",
        "jobs:\n  a:\n    image: x\n    script: [x]\n    when: sometimes\n",
        "jobs:\n  a:\n    image: x\n    script: [x]\n    timeout: 10\n",
        "jobs: [\n",
        "jobs:\n  a:\n    image: x\n    script: [x]\n    rules:\n      - if: '$A == main'\n",
        "jobs:\n  a:\n    image: x\n    script: 3\n",
        "jobs:\n  a:\n    image: x\n",
    ] {
        eprintln!("{}\n", errors(src));
    }
    let deep = format!("jobs: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    eprintln!("{}\n", errors(&deep));
    let deep = format!(
        "jobs:{}",
        (1..2000)
            .map(|i| format!("\n{}a:", " ".repeat(i)))
            .collect::<String>()
    );
    eprintln!("{}\n", errors(&deep));
}
