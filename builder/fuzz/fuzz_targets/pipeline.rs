//! Fuzz target for the forge.yaml frontend: any input must parse and check or fail cleanly (no
//! panic, no stack overflow on deep nesting), every reported error must lie inside the input (a
//! line of it, at most one column past its end), its rendering must name that line and column,
//! and a plan's rendering in Debug must not panic either.
#![no_main]

use forge_builder::pipeline::{CheckOptions, Pos, load, normalize_breaks};
use libfuzzer_sys::fuzz_target;

fn inside(pos: Pos, src: &str) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    if lines.is_empty() {
        return pos.line == 1 && pos.column == 1;
    }
    lines
        .get(pos.line.wrapping_sub(1))
        .is_some_and(|l| pos.column >= 1 && pos.column <= l.chars().count() + 1)
}

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    // Half the runs with a branch and changed paths, so that rules evaluate both ways.
    let mut options = CheckOptions::default();
    if data.first().is_some_and(|b| b & 1 == 1) {
        options
            .builtins
            .insert("FORGE_GIT_BRANCH".into(), "main".into());
        options.changed = Some(vec!["src/main.rs".into(), "Cargo.toml".into()]);
    }
    match load("forge.yaml", &source, &options) {
        Ok(plan) => {
            let _ = format!("{plan:?}");
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error report with no errors");
            for e in &errors.errors {
                // Positions refer to the text with YAML's line breaks (a lone CR is one) as LF.
                assert!(inside(e.pos, &normalize_breaks(&source)), "{e:?} outside the input");
                let located = format!("forge.yaml:{}:{}: ", e.pos.line, e.pos.column);
                assert!(errors.render(e).starts_with(&located));
            }
            let _ = errors.to_string();
        }
    }
});
