//! BuildKit's own shell lexer cases (`frontend/dockerfile/shell/envVarTest` and `wordsTest`), read from
//! the shared conformance copy and driven the way BuildKit's `lex_test.go` drives them.

use std::path::PathBuf;

use forge_builder::frontend::dockerfile::shell::{Env, Lexer};

/// `<conformance>/buildkit/shell`, or `None` (after a SKIP line) when the shared copy is absent; a
/// panic when FORGE_E2E=require.
fn shell_dir() -> Option<PathBuf> {
    forge_testsupport::conformance("shell")
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Environment lookups as BuildKit does them on Windows: keys compare case-insensitively
/// (`NormalizeEnvKey` upper-cases them), so `$pwd` finds `PWD`.
struct CaseInsensitive<'a>(&'a [(String, String)]);

impl Env for CaseInsensitive<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    }

    fn keys(&self) -> Vec<String> {
        self.0.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Runs every envVarTest line whose tag is in `tags` through `lex` with `env`; returns (cases run,
/// failure descriptions, lines seen in total).
fn run_env_var_cases(text: &str, tags: &[&str], env: &dyn Env) -> (usize, Vec<String>, usize) {
    let lex = Lexer::new('\\');
    let (mut run, mut seen) = (0, 0);
    let mut failures = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(
            parts.len(),
            3,
            "line {}: expected three |-separated fields: {raw:?}",
            n + 1
        );
        let (platform, source, expected) = (parts[0].trim(), parts[1].trim(), parts[2].trim());
        assert!(
            ["A", "U", "W"].contains(&platform),
            "line {}: unknown platform tag {platform:?}",
            n + 1
        );
        seen += 1;
        if !tags.contains(&platform) {
            continue;
        }
        run += 1;
        let got = lex.process_word(source, env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(word), expected) => expected != "error" && word == expected,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: input {source:?}, expected {expected:?}, got {got:?}",
                n + 1
            ));
        }
    }
    (run, failures, seen)
}

/// BuildKit's TestShellParser4EnvVars: `A` and `U` lines with Unix semantics, `A` and `W` lines with
/// Windows key semantics; together every tagged line of the file runs.
#[test]
fn env_var_test_cases() {
    let Some(dir) = shell_dir() else { return };
    let text = std::fs::read_to_string(dir.join("envVarTest")).expect("read envVarTest");
    let env = pairs(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);

    let (unix_run, unix_failures, seen) = run_env_var_cases(&text, &["A", "U"], &env);
    let (win_run, win_failures, _) = run_env_var_cases(&text, &["A", "W"], &CaseInsensitive(&env));
    // Each tagged line runs at least once: A lines in both passes, U and W lines in their own.
    let covered = seen;
    let failed_lines: std::collections::BTreeSet<&String> =
        unix_failures.iter().chain(&win_failures).collect();
    println!(
        "shell conformance: envVarTest {}/{seen} tagged cases pass (unix semantics {}/{unix_run}, windows key semantics {}/{win_run})",
        covered - failed_lines.len(),
        unix_run - unix_failures.len(),
        win_run - win_failures.len(),
    );
    assert!(
        seen > 200,
        "only {seen} cases found; is envVarTest truncated?"
    );
    assert!(
        unix_failures.is_empty() && win_failures.is_empty(),
        "envVarTest failures:\nunix:\n{}\nwindows:\n{}",
        unix_failures.join("\n"),
        win_failures.join("\n")
    );
}

#[test]
fn words_test_cases() {
    let Some(dir) = shell_dir() else { return };
    let text = std::fs::read_to_string(dir.join("wordsTest")).expect("read wordsTest");
    let lex = Lexer::new('\\');

    let mut env: Vec<(String, String)> = Vec::new();
    let mut run = 0;
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(def) = line.strip_prefix("ENV ") {
            let def = def.trim_start_matches(' ');
            let (k, v) = def.split_once('=').unwrap_or((def, ""));
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(
            parts.len(),
            2,
            "line {}: expected exactly one |: {line:?}",
            n + 1
        );
        let source = parts[0].trim();
        let expected: Vec<&str> = parts[1].trim_start_matches(' ').split(',').collect();
        run += 1;
        let got = match lex.process_words(source, &env) {
            Ok(words) => words,
            Err(_) => vec!["error".to_string()],
        };
        if got != expected {
            failures.push(format!(
                "line {}: input {source:?}, expected {expected:?}, got {got:?}",
                n + 1
            ));
        }
    }
    let passed = run - failures.len();
    println!("shell conformance: wordsTest {passed}/{run} cases pass");
    assert!(run >= 20, "only {run} cases found; is wordsTest truncated?");
    assert!(
        failures.is_empty(),
        "{} wordsTest failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
